//! Kubernetes resources checked against a CustomResourceDefinition's structural schema, the
//! way the API server does with strict field validation (`kubectl apply --validate=strict`):
//! types, required fields, enums, patterns, lengths, bounds, counts, and unknown fields
//! refused unless the schema preserves them. CEL rules (`x-kubernetes-validations`) are not
//! evaluated (see `tests/vendor/istio/README.md`).

use serde_json::Value;
use std::path::Path;

/// A CustomResourceDefinition: its group, kind, and the schema of each served version.
#[derive(Debug, Clone)]
pub struct Crd {
    group: String,
    kind: String,
    versions: Vec<(String, Value)>,
}

impl Crd {
    /// Reads a CRD from a YAML file.
    pub fn load(path: &Path) -> Crd {
        let text = std::fs::read_to_string(path)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
        let doc: Value = serde_yaml_ng::from_str(&text)
            .unwrap_or_else(|e| panic!("{} is not YAML: {e}", path.display()));
        let text_at = |pointer: &str| {
            doc.pointer(pointer)
                .and_then(Value::as_str)
                .unwrap_or_else(|| panic!("{}: no {pointer}", path.display()))
                .to_owned()
        };
        let versions = doc
            .pointer("/spec/versions")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter(|v| v["served"] == true)
            .filter_map(|v| {
                let schema = v.pointer("/schema/openAPIV3Schema")?.clone();
                Some((v["name"].as_str()?.to_owned(), schema))
            })
            .collect();
        Crd {
            group: text_at("/spec/group"),
            kind: text_at("/spec/names/kind"),
            versions,
        }
    }

    /// `group/version` and kind this CRD serves for `api_version`, if it does.
    pub fn serves(&self, api_version: &str, kind: &str) -> bool {
        self.schema_for(api_version, kind).is_some()
    }

    fn schema_for(&self, api_version: &str, kind: &str) -> Option<&Value> {
        let (group, version) = api_version.split_once('/')?;
        if group != self.group || kind != self.kind {
            return None;
        }
        self.versions
            .iter()
            .find(|(v, _)| v == version)
            .map(|(_, s)| s)
    }

    /// Every violation in `resource` (empty when the API server would accept it). The
    /// object's `apiVersion`, `kind` and `metadata` are checked as Kubernetes does for every
    /// object; the rest against the version's schema.
    pub fn violations(&self, resource: &Value) -> Vec<String> {
        let api_version = resource["apiVersion"].as_str().unwrap_or_default();
        let kind = resource["kind"].as_str().unwrap_or_default();
        let Some(schema) = self.schema_for(api_version, kind) else {
            return vec![format!(
                "{api_version} {kind} is not served by this CRD ({} {})",
                self.group, self.kind
            )];
        };
        let mut found = Vec::new();
        let Some(object) = resource.as_object() else {
            return vec!["a resource must be an object".to_owned()];
        };
        let name = resource.pointer("/metadata/name").and_then(Value::as_str);
        match name {
            Some(name) if is_dns_subdomain(name) => {}
            Some(name) => found.push(format!(
                "metadata.name: {name:?} is not a DNS subdomain name"
            )),
            None => found.push("metadata.name: required".to_owned()),
        }
        if let Some(metadata) = resource["metadata"].as_object() {
            for key in metadata.keys() {
                if !METADATA_FIELDS.contains(&key.as_str()) {
                    found.push(format!("metadata.{key}: unknown field"));
                }
            }
        }
        let mut body = serde_json::Map::new();
        for (key, value) in object {
            if !["apiVersion", "kind", "metadata"].contains(&key.as_str()) {
                body.insert(key.clone(), value.clone());
            }
        }
        check(schema, &Value::Object(body), "", &mut found);
        found
    }
}

/// The metadata fields a client may set.
const METADATA_FIELDS: &[&str] = &[
    "name",
    "namespace",
    "labels",
    "annotations",
    "generateName",
    "finalizers",
    "ownerReferences",
];

fn is_dns_subdomain(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

fn join(at: &str, key: &str) -> String {
    if at.is_empty() {
        key.to_owned()
    } else {
        format!("{at}.{key}")
    }
}

fn check(schema: &Value, value: &Value, at: &str, found: &mut Vec<String>) {
    let here = if at.is_empty() { "(root)" } else { at };
    if value.is_null() {
        if schema["nullable"] != true {
            found.push(format!("{here}: null is not allowed"));
        }
        return;
    }
    if schema["x-kubernetes-int-or-string"] == true {
        if !(value.is_i64() || value.is_u64() || value.is_string()) {
            found.push(format!("{here}: must be an integer or a string"));
        }
        return;
    }
    if let Some(options) = schema["anyOf"].as_array() {
        let fits = options.iter().any(|option| {
            let mut errors = Vec::new();
            check(option, value, at, &mut errors);
            errors.is_empty()
        });
        if !fits {
            found.push(format!("{here}: matches none of anyOf"));
        }
    }
    if let Some(options) = schema["oneOf"].as_array() {
        let fitting = options
            .iter()
            .filter(|option| {
                let mut errors = Vec::new();
                check(option, value, at, &mut errors);
                errors.is_empty()
            })
            .count();
        if fitting != 1 {
            found.push(format!(
                "{here}: matches {fitting} of oneOf, not exactly one"
            ));
        }
    }
    if let Some(allowed) = schema["enum"].as_array()
        && !allowed.contains(value)
    {
        found.push(format!(
            "{here}: {value} is not one of {}",
            Value::from(allowed.clone())
        ));
    }
    match schema["type"].as_str() {
        Some("object") => check_object(schema, value, at, found),
        Some("array") => check_array(schema, value, at, found),
        Some("string") => check_string(schema, value, here, found),
        Some("integer") => check_integer(schema, value, here, found),
        Some("number") if !value.is_number() => {
            found.push(format!("{here}: must be a number"));
        }
        Some("boolean") if !value.is_boolean() => {
            found.push(format!("{here}: must be a boolean"));
        }
        Some("number" | "boolean") | None => {}
        Some(other) => found.push(format!("{here}: schema type {other} is not supported")),
    }
}

fn check_object(schema: &Value, value: &Value, at: &str, found: &mut Vec<String>) {
    let here = if at.is_empty() { "(root)" } else { at };
    let Some(object) = value.as_object() else {
        found.push(format!("{here}: must be an object"));
        return;
    };
    for required in schema["required"].as_array().into_iter().flatten() {
        if let Some(name) = required.as_str()
            && !object.contains_key(name)
        {
            found.push(format!("{}: required", join(at, name)));
        }
    }
    if let Some(max) = schema["maxProperties"].as_u64()
        && object.len() as u64 > max
    {
        found.push(format!("{here}: more than {max} properties"));
    }
    let properties = schema["properties"].as_object();
    let preserve = schema["x-kubernetes-preserve-unknown-fields"] == true;
    for (key, item) in object {
        let path = join(at, key);
        if let Some(property) = properties.and_then(|p| p.get(key)) {
            check(property, item, &path, found);
        } else if let Some(additional) = schema.get("additionalProperties")
            && additional.is_object()
        {
            check(additional, item, &path, found);
        } else if !preserve {
            found.push(format!("{path}: unknown field"));
        }
    }
}

fn check_array(schema: &Value, value: &Value, at: &str, found: &mut Vec<String>) {
    let Some(items) = value.as_array() else {
        found.push(format!("{at}: must be a list"));
        return;
    };
    if let Some(max) = schema["maxItems"].as_u64()
        && items.len() as u64 > max
    {
        found.push(format!("{at}: more than {max} items"));
    }
    if let Some(min) = schema["minItems"].as_u64()
        && (items.len() as u64) < min
    {
        found.push(format!("{at}: fewer than {min} items"));
    }
    if let Some(item_schema) = schema.get("items") {
        for (i, item) in items.iter().enumerate() {
            check(item_schema, item, &format!("{at}[{i}]"), found);
        }
    }
}

fn check_string(schema: &Value, value: &Value, here: &str, found: &mut Vec<String>) {
    let Some(text) = value.as_str() else {
        found.push(format!("{here}: must be a string"));
        return;
    };
    let length = text.chars().count() as u64;
    if let Some(min) = schema["minLength"].as_u64()
        && length < min
    {
        found.push(format!("{here}: shorter than {min}"));
    }
    if let Some(max) = schema["maxLength"].as_u64()
        && length > max
    {
        found.push(format!("{here}: longer than {max}"));
    }
    if let Some(pattern) = schema["pattern"].as_str() {
        match regex::Regex::new(pattern) {
            Ok(re) if re.is_match(text) => {}
            Ok(_) => found.push(format!("{here}: {text:?} does not match {pattern}")),
            Err(e) => found.push(format!(
                "{here}: the schema's pattern does not compile: {e}"
            )),
        }
    }
}

fn check_integer(schema: &Value, value: &Value, here: &str, found: &mut Vec<String>) {
    let Some(number) = value.as_i64() else {
        found.push(format!("{here}: must be an integer"));
        return;
    };
    if schema["format"] == "int32" && i32::try_from(number).is_err() {
        found.push(format!("{here}: {number} is out of int32 range"));
    }
    if let Some(min) = schema["minimum"].as_i64()
        && number < min
    {
        found.push(format!("{here}: {number} is below {min}"));
    }
    if let Some(max) = schema["maximum"].as_i64()
        && number > max
    {
        found.push(format!("{here}: {number} is above {max}"));
    }
}

/// Every document of a multi-document YAML file, as JSON values (empty documents skipped).
pub fn documents(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|doc| {
            <Value as serde::Deserialize>::deserialize(doc)
                .unwrap_or_else(|e| panic!("{} is not valid YAML: {e}", path.display()))
        })
        .filter(|doc| !doc.is_null())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wasm_plugin_crd() -> Crd {
        Crd::load(&crate::repo_root().join("tests/vendor/istio/wasmplugin-crd.yaml"))
    }

    fn plugin(spec: Value) -> Value {
        serde_json::json!({
            "apiVersion": "extensions.istio.io/v1alpha1",
            "kind": "WasmPlugin",
            "metadata": { "name": "jwt-auth", "namespace": "istio-system" },
            "spec": spec,
        })
    }

    #[test]
    fn a_well_formed_plugin_passes() {
        let ok = plugin(serde_json::json!({
            "url": "oci://registry.example.com/filters/jwt_auth:0.1.0",
            "phase": "AUTHN",
            "priority": 10,
            "failStrategy": "FAIL_CLOSE",
            "selector": { "matchLabels": { "istio": "ingressgateway" } },
            "pluginConfig": { "anything": { "goes": [1, 2] } },
        }));
        assert_eq!(wasm_plugin_crd().violations(&ok), Vec::<String>::new());
    }

    #[test]
    fn what_the_api_server_refuses_is_refused_with_its_path() {
        let crd = wasm_plugin_crd();
        let cases = [
            (
                serde_json::json!({ "url": "x", "phase": "AUTHENTICATION" }),
                "spec.phase",
            ),
            (
                serde_json::json!({ "url": "x", "phaze": "AUTHN" }),
                "spec.phaze: unknown field",
            ),
            (
                serde_json::json!({ "phase": "AUTHN" }),
                "spec.url: required",
            ),
            (
                serde_json::json!({ "url": "x", "sha256": "ABC" }),
                "spec.sha256",
            ),
            (
                serde_json::json!({ "url": "x", "priority": 3_000_000_000u64 }),
                "int32",
            ),
            (
                serde_json::json!({ "url": "x", "priority": "high" }),
                "spec.priority",
            ),
            (serde_json::json!({ "url": "" }), "spec.url: shorter than 1"),
            (
                serde_json::json!({ "url": "x", "match": [{ "ports": [{ "number": 0 }] }] }),
                "spec.match[0].ports[0].number",
            ),
            (
                serde_json::json!({ "url": "x", "selector": { "labels": {} } }),
                "spec.selector.labels: unknown field",
            ),
        ];
        for (spec, expected) in cases {
            let errors = crd.violations(&plugin(spec.clone()));
            assert!(
                errors.iter().any(|e| e.contains(expected)),
                "{spec}: expected an error with {expected:?}, got {errors:?}"
            );
        }
        let mut unnamed = plugin(serde_json::json!({ "url": "x" }));
        unnamed["metadata"]["name"] = Value::from("Not_A_Name");
        assert!(!crd.violations(&unnamed).is_empty());
        let mut wrong_version = plugin(serde_json::json!({ "url": "x" }));
        wrong_version["apiVersion"] = Value::from("extensions.istio.io/v1");
        assert!(!crd.violations(&wrong_version).is_empty());
    }
}
