//! The limits file: a YAML list of limits in Limitador's own format, read with Limitador's
//! own `Limit` type and its serde implementation.

use limitador::limit::Limit;
use serde_yaml_ng::Value;
use std::path::Path;

/// The keys a limit may have. Limitador's serde ignores any other key, and quietly takes a
/// missing `max_value` as 0 (a limit that refuses everything): both are mistakes an operator
/// should hear about, so they are refused here before Limitador reads the file.
const KNOWN_KEYS: [&str; 7] = [
    "id",
    "name",
    "namespace",
    "max_value",
    "seconds",
    "conditions",
    "variables",
];

/// Reads and parses the limits file.
pub(crate) fn load(path: &Path) -> Result<Vec<Limit>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read the limits file {}: {e}", path.display()))?;
    parse(&text).map_err(|e| format!("limits file {}: {e}", path.display()))
}

/// Parses limits from YAML text. Errors name the limit (`[index]`) and the field at fault.
pub(crate) fn parse(text: &str) -> Result<Vec<Limit>, String> {
    check_keys(text)?;
    // serde_yaml_ng's errors start with the path of the field at fault (`.[1].conditions: `);
    // the leading dot goes, for the same form as the errors above.
    let limits: Vec<Limit> = serde_yaml_ng::from_str(text).map_err(|e| {
        let e = e.to_string();
        e.strip_prefix('.').map(str::to_owned).unwrap_or(e)
    })?;
    for (index, limit) in limits.iter().enumerate() {
        // A window of 0 seconds would expire every counter as it is made: no limit at all.
        if limit.seconds() == 0 {
            return Err(format!("[{index}].seconds: must be at least 1"));
        }
    }
    Ok(limits)
}

/// The checks Limitador's serde does not make: a list of maps, each with `namespace`,
/// `max_value` and `seconds`, and no key Limitador would ignore.
fn check_keys(text: &str) -> Result<(), String> {
    let document: Value = serde_yaml_ng::from_str(text).map_err(|e| e.to_string())?;
    let Value::Sequence(limits) = document else {
        return Err("expected a list of limits".to_owned());
    };
    for (index, limit) in limits.iter().enumerate() {
        let Value::Mapping(fields) = limit else {
            return Err(format!("[{index}]: expected a map (a limit)"));
        };
        for key in fields.keys() {
            let known = key.as_str().is_some_and(|k| KNOWN_KEYS.contains(&k));
            if !known {
                let key = serde_yaml_ng::to_string(key).unwrap_or_default();
                return Err(format!(
                    "[{index}]: unknown field `{}`, expected one of {}",
                    key.trim_end(),
                    KNOWN_KEYS.join(", ")
                ));
            }
        }
        for required in ["namespace", "max_value", "seconds"] {
            if !fields.contains_key(required) {
                return Err(format!("[{index}]: missing field `{required}`"));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn reads_limitador_format() {
        let limits = parse(
            "- namespace: gateway\n  max_value: 10\n  seconds: 60\n  name: per-user\n  \
             conditions: [\"descriptors[0].user != ''\"]\n  variables: [\"descriptors[0].user\"]\n\
             - namespace: gateway\n  max_value: 5\n  seconds: 10\n  conditions: []\n  variables: []\n",
        )
        .unwrap();
        assert_eq!(limits.len(), 2);
        assert_eq!(limits[0].name(), Some("per-user"));
        assert_eq!(limits[0].max_value(), 10);
        assert_eq!(limits[0].seconds(), 60);
        assert_eq!(limits[1].name(), None);
    }

    #[test]
    fn the_sample_file_is_valid() {
        let limits = parse(include_str!("../../../envoy/rls/limits.yaml")).unwrap();
        let names: Vec<_> = limits.iter().map(|l| l.name()).collect();
        assert_eq!(names, [Some("per-user"), Some("per-client-ip")]);
    }

    #[test]
    fn an_empty_list_is_no_limits() {
        assert!(parse("[]").unwrap().is_empty());
    }

    #[track_caller]
    fn refused(text: &str) -> String {
        parse(text).expect_err("the file should be refused")
    }

    #[test]
    fn errors_name_the_limit_and_the_field() {
        let ok =
            "- namespace: a\n  max_value: 1\n  seconds: 1\n  conditions: []\n  variables: []\n";

        let e = refused(&format!(
            "{ok}- namespace: a\n  max_values: 1\n  seconds: 1\n"
        ));
        assert!(e.starts_with("[1]: unknown field `max_values`"), "{e}");

        let e = refused(&format!("{ok}- namespace: a\n  seconds: 1\n"));
        assert_eq!(e, "[1]: missing field `max_value`");

        let e = refused(&format!(
            "{ok}- namespace: a\n  max_value: 1\n  seconds: 1\n  conditions: [\"descriptors[0].x ==\"]\n  variables: []\n"
        ));
        assert!(e.starts_with("[1].conditions"), "{e}");

        let e = refused(
            "- namespace: a\n  max_value: ten\n  seconds: 1\n  conditions: []\n  variables: []\n",
        );
        assert!(e.starts_with("[0].max_value: invalid type"), "{e}");

        let e = refused(
            "- namespace: a\n  max_value: 1\n  seconds: 0\n  conditions: []\n  variables: []\n",
        );
        assert_eq!(e, "[0].seconds: must be at least 1");

        let e = refused("namespace: a\n");
        assert_eq!(e, "expected a list of limits");

        let e = refused("- [1, 2]\n");
        assert_eq!(e, "[0]: expected a map (a limit)");

        let e = refused("- namespace: a\n  max_value: [\n");
        assert!(e.contains(" at line 3 column 1"), "{e}");
    }
}
