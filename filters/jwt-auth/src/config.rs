//! The `jwt_auth` configuration: providers (who issues tokens and with which keys) and rules
//! (which routes need which tokens). Parsed strictly, then compiled once into [`Compiled`].

use crate::alg::Alg;
use crate::crypto::PublicKey;
use crate::jwks::{KeySet, parse_jwks};
use filter_core::config::{ConfigDuration, ConfigError, FieldPath, NamedMap, null_default, quoted};
use filter_core::matcher::{RouteMatchConfig, RouteMatcher};
use serde::Deserialize;
use std::rc::Rc;
use std::time::Duration;

/// The whole configuration as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtAuthConfig {
    /// Token issuers, by name. Rules refer to them by name.
    #[serde(default, deserialize_with = "null_default")]
    pub providers: NamedMap<ProviderConfig>,
    /// Tried in order; the first whose `match` fits decides.
    #[serde(default, deserialize_with = "null_default")]
    pub rules: Vec<RuleConfig>,
    /// The `realm` of `WWW-Authenticate` challenges. Default `api`.
    pub realm: Option<String>,
    /// How many verified tokens each Envoy worker remembers (0 turns the cache off). Default 1000.
    pub token_cache_size: Option<u64>,
}

/// One token issuer.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderConfig {
    /// Required. Compared byte for byte with the token's `iss`.
    pub issuer: String,
    /// Accepted `aud` values; when non-empty, a token without a matching `aud` is refused.
    #[serde(default, deserialize_with = "null_default")]
    pub audiences: Vec<String>,
    /// Required allowlist of signature algorithms.
    pub algorithms: Vec<String>,
    /// Keys given in the configuration.
    pub local_jwks: Option<LocalJwksConfig>,
    /// Keys fetched from a key server through an Envoy cluster.
    pub remote_jwks: Option<RemoteJwksConfig>,
    /// Headers carrying the token. Default: `authorization` with `Bearer `.
    pub from_headers: Option<Vec<HeaderSourceConfig>>,
    /// Query parameters carrying the token. Default: none.
    #[serde(default, deserialize_with = "null_default")]
    pub from_params: Vec<String>,
    /// Cookies carrying the token. Default: none.
    #[serde(default, deserialize_with = "null_default")]
    pub from_cookies: Vec<String>,
    /// Keep the token in the request sent upstream. Default false: it is removed.
    #[serde(default, deserialize_with = "null_default")]
    pub forward: bool,
    /// A request header to receive the token's payload (base64url JSON).
    pub forward_payload_header: Option<String>,
    /// Claims copied into request headers.
    #[serde(default, deserialize_with = "null_default")]
    pub claim_to_headers: Vec<ClaimToHeaderConfig>,
    /// Leeway for `exp`, `nbf` and `iat`. Default 60s, at most 300s.
    pub clock_skew: Option<ConfigDuration>,
    /// Refuse tokens without `exp`. Default true.
    pub require_expiration: Option<bool>,
    /// Longest token accepted, in bytes. Default 8192.
    pub max_token_bytes: Option<u64>,
    /// Required `typ` header, e.g. `at+jwt` (RFC 9068 access tokens). Default: none.
    pub require_typ: Option<String>,
}

/// Keys in the configuration.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalJwksConfig {
    /// A JWKS document (JSON text).
    pub inline: String,
}

/// A key server reached through an Envoy cluster.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoteJwksConfig {
    /// The Envoy cluster of the key server.
    pub cluster: String,
    /// The `:authority` of the fetch. Default: the cluster name.
    pub authority: Option<String>,
    /// The path of the JWKS document.
    pub path: String,
    /// How long fetched keys are kept. Default 10m.
    pub cache_duration: Option<ConfigDuration>,
    /// Fetch timeout. Default 2s.
    pub timeout: Option<ConfigDuration>,
    /// Wait after a failed fetch while no usable key is held. Default 1s (as Envoy's
    /// `failed_refetch_duration`), 100ms to 5m.
    pub failed_refetch_duration: Option<ConfigDuration>,
}

/// A header that carries the token after a prefix.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderSourceConfig {
    /// Header name.
    pub name: String,
    /// Text before the token, matched case-insensitively (`Bearer `). Default: none.
    pub value_prefix: Option<String>,
}

/// Copy a claim into a request header.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClaimToHeaderConfig {
    /// Claim name; `a.b` reaches into nested objects.
    pub claim: String,
    /// Header name.
    pub header: String,
}

/// One rule.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// Which requests the rule is for.
    #[serde(rename = "match")]
    pub route: RouteMatchConfig,
    /// What they need; absent: nothing (the request passes unauthenticated).
    pub requires: Option<RequirementConfig>,
}

/// A requirement: one provider (with optional scopes and claims), or any/all of others.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequirementConfig {
    /// A valid token from this provider.
    pub provider: Option<String>,
    /// Scopes the token must grant (all of them).
    #[serde(default, deserialize_with = "null_default")]
    pub scopes: Vec<String>,
    /// Claims the token must carry: `{"role": ["admin", "ops"]}`.
    #[serde(default, deserialize_with = "null_default")]
    pub claims: NamedMap<Vec<String>>,
    /// Let requests without a token through (a bad token is still refused).
    #[serde(default, deserialize_with = "null_default")]
    pub allow_missing: bool,
    /// Any one of these requirements.
    pub any: Option<Vec<RequirementConfig>>,
    /// All of these requirements.
    pub all: Option<Vec<RequirementConfig>>,
}

// === compiled form ===

/// Where a provider looks for its token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A header, after a case-insensitive prefix.
    Header {
        /// Lower-case header name.
        name: String,
        /// Prefix before the token (may be empty).
        prefix: String,
    },
    /// A query parameter.
    Param(String),
    /// A cookie.
    Cookie(String),
}

/// A compiled provider.
#[derive(Debug)]
pub struct Provider {
    /// Its name in the configuration.
    pub name: String,
    /// Required `iss`.
    pub issuer: String,
    /// Accepted `aud` values (empty: `aud` is not checked).
    pub audiences: Vec<String>,
    /// Allowed algorithms.
    pub algorithms: Vec<Alg>,
    /// Where its keys come from.
    pub keys: KeySource,
    /// Where its token may be.
    pub sources: Vec<Source>,
    /// Keep the token upstream.
    pub forward: bool,
    /// Header receiving the payload.
    pub payload_header: Option<String>,
    /// `(claim path, header)` pairs.
    pub claim_headers: Vec<(Vec<String>, String)>,
    /// Leeway for time claims.
    pub clock_skew: Duration,
    /// Whether `exp` is required.
    pub require_expiration: bool,
    /// Longest token accepted.
    pub max_token_bytes: usize,
    /// Required `typ`, normalised (lower case, without `application/`).
    pub require_typ: Option<String>,
}

/// Where a provider's keys come from.
#[derive(Debug)]
pub enum KeySource {
    /// Keys in the configuration: fixed for the life of the configuration.
    Local(Rc<KeySet>),
    /// Keys fetched from a key server (see [`crate::remote`]).
    Remote(Remote),
}

/// A key server reached through an Envoy cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Remote {
    /// The Envoy cluster.
    pub cluster: String,
    /// `:authority` of the fetch.
    pub authority: String,
    /// `:path` of the fetch.
    pub path: String,
    /// How long fetched keys are kept when the server sends no `Cache-Control: max-age`.
    pub cache_duration: Duration,
    /// Fetch timeout.
    pub timeout: Duration,
    /// Wait after a failed fetch while the provider holds no usable key (every token it should
    /// verify is refused meanwhile, so the wait stays short and never doubles).
    pub failed_refetch_duration: Duration,
}

/// A compiled requirement; providers are indexes into [`Compiled::providers`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Requirement {
    /// A valid token from one provider.
    Provider {
        /// Index of the provider.
        provider: usize,
        /// Required scopes.
        scopes: Vec<String>,
        /// Required claims: `(claim, accepted values)`.
        claims: Vec<(String, Vec<String>)>,
        /// No token is fine; a bad one is not.
        allow_missing: bool,
    },
    /// Any one of these.
    Any(Vec<Requirement>),
    /// All of these.
    All(Vec<Requirement>),
}

/// A compiled rule.
#[derive(Debug)]
pub struct Rule {
    /// Which requests.
    pub matcher: RouteMatcher,
    /// What they need (`None`: nothing).
    pub requires: Option<Requirement>,
}

/// The validated configuration.
#[derive(Debug)]
pub struct Compiled {
    /// Providers, in name order.
    pub providers: Vec<Provider>,
    /// Rules, in order.
    pub rules: Vec<Rule>,
    /// Challenge realm.
    pub realm: String,
    /// Every header this filter may write: removed from every incoming request (anti-spoofing).
    pub written_headers: Vec<String>,
    /// Capacity of each worker's verified-token cache.
    pub token_cache_size: usize,
}

const DEFAULT_SKEW: Duration = Duration::from_secs(60);
const MAX_SKEW: Duration = Duration::from_secs(300);
const DEFAULT_MAX_TOKEN_BYTES: u64 = 8192;
const MAX_MAX_TOKEN_BYTES: u64 = 65536;
const DEFAULT_TOKEN_CACHE_SIZE: u64 = 1000;
const MAX_TOKEN_CACHE_SIZE: u64 = 100_000;

impl JwtAuthConfig {
    /// Validates and compiles the configuration.
    pub fn compile(self) -> Result<Compiled, ConfigError> {
        let root = FieldPath::root();
        let realm = self.realm.unwrap_or_else(|| "api".to_owned());
        if realm.is_empty() || !realm.bytes().all(fits_quoted_string) {
            return Err(root.field("realm").error(
                "must be non-empty printable ASCII without '\"' or '\\' (it is sent in WWW-Authenticate)",
            ));
        }
        let token_cache_size = self.token_cache_size.unwrap_or(DEFAULT_TOKEN_CACHE_SIZE);
        if token_cache_size > MAX_TOKEN_CACHE_SIZE {
            return Err(root.field("token_cache_size").error(format!(
                "must be at most {MAX_TOKEN_CACHE_SIZE}, got {token_cache_size}"
            )));
        }
        let mut providers = Vec::with_capacity(self.providers.len());
        let mut names = Vec::with_capacity(self.providers.len());
        for (name, config) in self.providers {
            let at = root.field("providers").field(&name);
            providers.push(compile_provider(&name, config, &at)?);
            names.push(name);
        }
        let mut rules = Vec::with_capacity(self.rules.len());
        for (i, rule) in self.rules.iter().enumerate() {
            let at = root.field("rules").index(i);
            let matcher = RouteMatcher::compile(&rule.route, &at.field("match"))?;
            let requires = match &rule.requires {
                Some(r) => Some(compile_requirement(r, &names, &at.field("requires"))?),
                None => None,
            };
            rules.push(Rule { matcher, requires });
        }
        let mut written_headers: Vec<String> = Vec::new();
        for provider in &providers {
            let written = provider.claim_headers.iter().map(|(_, h)| h);
            for header in written.chain(&provider.payload_header) {
                if !written_headers.contains(header) {
                    written_headers.push(header.clone());
                }
            }
        }
        Ok(Compiled {
            providers,
            rules,
            realm,
            written_headers,
            token_cache_size: usize::try_from(token_cache_size).unwrap_or(usize::MAX),
        })
    }
}

/// RFC 6750 §3: auth-param values are `%x20-21 / %x23-5B / %x5D-7E`.
fn fits_quoted_string(b: u8) -> bool {
    matches!(b, 0x20..=0x21 | 0x23..=0x5B | 0x5D..=0x7E)
}

fn header_name(name: &str, at: &FieldPath) -> Result<String, ConfigError> {
    let lower = name.to_ascii_lowercase();
    if !filter_core::matcher::is_token(&lower) {
        return Err(at.error(format!("{} is not a header name", quoted(name))));
    }
    if matches!(
        lower.as_str(),
        "host" | "content-length" | "transfer-encoding" | "connection"
    ) {
        return Err(at.error(format!("{} cannot be used here", quoted(name))));
    }
    Ok(lower)
}

fn compile_provider(
    name: &str,
    c: ProviderConfig,
    at: &FieldPath,
) -> Result<Provider, ConfigError> {
    if c.issuer.is_empty() {
        return Err(at.field("issuer").error("must not be empty"));
    }
    if c.algorithms.is_empty() {
        return Err(at
            .field("algorithms")
            .error("must list at least one algorithm"));
    }
    let mut algorithms = Vec::with_capacity(c.algorithms.len());
    for (i, alg) in c.algorithms.iter().enumerate() {
        let Some(parsed) = Alg::from_name(alg) else {
            let known: Vec<&str> = Alg::ALL.iter().map(|a| a.name()).collect();
            return Err(at.field("algorithms").index(i).error(format!(
                "unknown algorithm {} (`none` is never allowed); use one of {}",
                quoted(alg),
                known.join(", ")
            )));
        };
        algorithms.push(parsed);
    }
    for (i, audience) in c.audiences.iter().enumerate() {
        if audience.is_empty() {
            return Err(at.field("audiences").index(i).error("must not be empty"));
        }
    }
    let keys = match (&c.local_jwks, &c.remote_jwks) {
        (Some(local), None) => KeySource::Local(Rc::new(local_keys(
            local,
            &algorithms,
            &at.field("local_jwks"),
        )?)),
        (None, Some(remote)) => {
            if let Some(i) = algorithms.iter().position(|a| a.is_hmac()) {
                return Err(at.field("algorithms").index(i).error(
                    "HMAC algorithms need a shared secret, which belongs in local_jwks, never on a key server",
                ));
            }
            KeySource::Remote(compile_remote(remote, &at.field("remote_jwks"))?)
        }
        _ => return Err(at.error("give exactly one of `local_jwks` and `remote_jwks`")),
    };
    let sources = compile_sources(&c, at)?;
    let clock_skew = c.clock_skew.map_or(DEFAULT_SKEW, ConfigDuration::get);
    if clock_skew > MAX_SKEW {
        return Err(at.field("clock_skew").error("must be at most 300s"));
    }
    let max_token_bytes = c.max_token_bytes.unwrap_or(DEFAULT_MAX_TOKEN_BYTES);
    if !(1..=MAX_MAX_TOKEN_BYTES).contains(&max_token_bytes) {
        return Err(at.field("max_token_bytes").error(format!(
            "must be between 1 and {MAX_MAX_TOKEN_BYTES}, got {max_token_bytes}"
        )));
    }
    let payload_header = match &c.forward_payload_header {
        Some(h) => Some(header_name(h, &at.field("forward_payload_header"))?),
        None => None,
    };
    let mut claim_headers = Vec::with_capacity(c.claim_to_headers.len());
    for (i, mapping) in c.claim_to_headers.iter().enumerate() {
        let at = at.field("claim_to_headers").index(i);
        let path: Vec<String> = mapping.claim.split('.').map(str::to_owned).collect();
        if path.iter().any(String::is_empty) {
            return Err(at
                .field("claim")
                .error(format!("{} is not a claim name", quoted(&mapping.claim))));
        }
        claim_headers.push((path, header_name(&mapping.header, &at.field("header"))?));
    }
    let require_typ = match c.require_typ.as_deref() {
        None => None,
        Some("") => return Err(at.field("require_typ").error("must not be empty")),
        Some(typ) => Some(crate::token::normalise_typ(typ)),
    };
    Ok(Provider {
        name: name.to_owned(),
        issuer: c.issuer,
        audiences: c.audiences,
        algorithms,
        keys,
        sources,
        forward: c.forward,
        payload_header,
        claim_headers,
        clock_skew,
        require_expiration: c.require_expiration.unwrap_or(true),
        max_token_bytes: usize::try_from(max_token_bytes).unwrap_or(usize::MAX),
        require_typ,
    })
}

fn local_keys(
    local: &LocalJwksConfig,
    algorithms: &[Alg],
    at: &FieldPath,
) -> Result<KeySet, ConfigError> {
    let at = at.field("inline");
    let keys = parse_jwks(local.inline.as_bytes()).map_err(|e| at.error(e.to_string()))?;
    // A short HMAC secret can be brute-forced offline (RFC 8725 §3.5, J9): refuse the
    // configuration rather than merely skipping the key or failing its tokens at run time.
    if let Some(bad) = keys.ignored.iter().find(|k| k.is_secret) {
        return Err(at.error(format!(
            "key {} ({}): {}",
            bad.index,
            bad.kid.as_deref().unwrap_or("no kid"),
            bad.reason
        )));
    }
    for (i, jwk) in keys.keys.iter().enumerate() {
        if let PublicKey::Hmac(secret) = &jwk.key {
            let hmac_algs = algorithms
                .iter()
                .filter(|a| a.is_hmac() && jwk.alg.is_none_or(|k| k == **a));
            for alg in hmac_algs {
                if secret.len() < alg.hash_len() {
                    return Err(at.error(format!(
                        "key {} ({}): HMAC secret is {} bytes, shorter than the {} bytes {alg} needs",
                        i,
                        jwk.kid.as_deref().unwrap_or("no kid"),
                        secret.len(),
                        alg.hash_len()
                    )));
                }
            }
        }
    }
    let usable = keys.keys.iter().any(|jwk| {
        algorithms
            .iter()
            .any(|alg| jwk.key.fits(*alg) && jwk.alg.is_none_or(|a| a == *alg))
    });
    if !usable {
        let why: Vec<String> = keys
            .ignored
            .iter()
            .map(|k| format!("key {}: {}", k.index, k.reason))
            .collect();
        return Err(at.error(format!(
            "no key can verify any of the configured algorithms{}{}",
            if why.is_empty() { "" } else { "; ignored: " },
            why.join("; ")
        )));
    }
    Ok(keys)
}

const DEFAULT_CACHE_DURATION: Duration = Duration::from_secs(600);
const DEFAULT_FETCH_TIMEOUT: Duration = Duration::from_secs(2);
const DEFAULT_FAILED_REFETCH: Duration = Duration::from_secs(1);

fn compile_remote(r: &RemoteJwksConfig, at: &FieldPath) -> Result<Remote, ConfigError> {
    if r.cluster.is_empty() {
        return Err(at.field("cluster").error("must name an Envoy cluster"));
    }
    if !r.path.starts_with('/') {
        return Err(at
            .field("path")
            .error(format!("must start with '/', got {}", quoted(&r.path))));
    }
    let cache_duration = r
        .cache_duration
        .map_or(DEFAULT_CACHE_DURATION, ConfigDuration::get);
    if !(Duration::from_secs(1)..=Duration::from_secs(86_400)).contains(&cache_duration) {
        return Err(at
            .field("cache_duration")
            .error("must be between 1s and 24h"));
    }
    let timeout = r.timeout.map_or(DEFAULT_FETCH_TIMEOUT, ConfigDuration::get);
    if !(Duration::from_millis(10)..=Duration::from_secs(60)).contains(&timeout) {
        return Err(at.field("timeout").error("must be between 10ms and 60s"));
    }
    let failed_refetch_duration = r
        .failed_refetch_duration
        .map_or(DEFAULT_FAILED_REFETCH, ConfigDuration::get);
    // Below the 100 ms tick it would not be honoured; above the longest backoff it would make a
    // provider without keys retry more slowly than one whose stale keys still serve.
    if !(crate::remote::TICK..=crate::remote::MAX_BACKOFF).contains(&failed_refetch_duration) {
        return Err(at
            .field("failed_refetch_duration")
            .error("must be between 100ms and 5m"));
    }
    Ok(Remote {
        cluster: r.cluster.clone(),
        authority: r.authority.clone().unwrap_or_else(|| r.cluster.clone()),
        path: r.path.clone(),
        cache_duration,
        timeout,
        failed_refetch_duration,
    })
}

fn compile_sources(c: &ProviderConfig, at: &FieldPath) -> Result<Vec<Source>, ConfigError> {
    let mut sources = Vec::new();
    match &c.from_headers {
        None => sources.push(Source::Header {
            name: "authorization".to_owned(),
            prefix: "Bearer ".to_owned(),
        }),
        Some(headers) => {
            for (i, h) in headers.iter().enumerate() {
                let at = at.field("from_headers").index(i);
                sources.push(Source::Header {
                    name: header_name(&h.name, &at.field("name"))?,
                    prefix: h.value_prefix.clone().unwrap_or_default(),
                });
            }
        }
    }
    for (i, p) in c.from_params.iter().enumerate() {
        if p.is_empty() || p.contains(['&', '=', '#', '?']) {
            return Err(at
                .field("from_params")
                .index(i)
                .error(format!("{} is not a parameter name", quoted(p))));
        }
        sources.push(Source::Param(p.clone()));
    }
    for (i, name) in c.from_cookies.iter().enumerate() {
        if name.is_empty() || name.contains([';', '=', ' ', ',']) {
            return Err(at
                .field("from_cookies")
                .index(i)
                .error(format!("{} is not a cookie name", quoted(name))));
        }
        sources.push(Source::Cookie(name.clone()));
    }
    if sources.is_empty() {
        return Err(at
            .field("from_headers")
            .error("the provider has nowhere to find a token"));
    }
    Ok(sources)
}

fn compile_requirement(
    r: &RequirementConfig,
    providers: &[String],
    at: &FieldPath,
) -> Result<Requirement, ConfigError> {
    let kinds = usize::from(r.provider.is_some())
        + usize::from(r.any.is_some())
        + usize::from(r.all.is_some());
    if kinds != 1 {
        return Err(at.error("give exactly one of `provider`, `any` and `all`"));
    }
    let provider_only = !r.scopes.is_empty() || !r.claims.is_empty() || r.allow_missing;
    if let Some(name) = &r.provider {
        let Some(index) = providers.iter().position(|p| p == name) else {
            return Err(at.field("provider").error(format!(
                "no provider named {} (providers: {})",
                quoted(name),
                providers.join(", ")
            )));
        };
        for (i, scope) in r.scopes.iter().enumerate() {
            if scope.is_empty() || !scope.bytes().all(|b| fits_quoted_string(b) && b != b' ') {
                return Err(at
                    .field("scopes")
                    .index(i)
                    .error(format!("{} is not a scope", quoted(scope))));
            }
        }
        let mut claims = Vec::with_capacity(r.claims.len());
        for (claim, values) in r.claims.iter() {
            if values.is_empty() {
                return Err(at
                    .field("claims")
                    .field(claim)
                    .error("must list at least one accepted value"));
            }
            claims.push((claim.to_owned(), values.clone()));
        }
        return Ok(Requirement::Provider {
            provider: index,
            scopes: r.scopes.clone(),
            claims,
            allow_missing: r.allow_missing,
        });
    }
    if provider_only {
        return Err(at.error("`scopes`, `claims` and `allow_missing` go with `provider`"));
    }
    let (list, field) = match (&r.any, &r.all) {
        (Some(any), _) => (any, "any"),
        (_, Some(all)) => (all, "all"),
        _ => return Err(at.error("give exactly one of `provider`, `any` and `all`")),
    };
    if list.is_empty() {
        return Err(at.field(field).error("must list at least one requirement"));
    }
    let mut compiled = Vec::with_capacity(list.len());
    for (i, item) in list.iter().enumerate() {
        compiled.push(compile_requirement(
            item,
            providers,
            &at.field(field).index(i),
        )?);
    }
    Ok(if field == "any" {
        Requirement::Any(compiled)
    } else {
        Requirement::All(compiled)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use filter_core::config::parse;

    fn compile(json: &str) -> Result<Compiled, ConfigError> {
        parse::<JwtAuthConfig>(json.as_bytes())?.compile()
    }

    fn error(json: &str) -> String {
        compile(json).unwrap_err().to_string()
    }

    /// A provider whose keys come from a key server, so no key material is needed.
    const REMOTE: &str = r#""issuer": "i", "algorithms": ["RS256"],
        "remote_jwks": {"cluster": "idp", "path": "/keys"}"#;

    fn with_provider(members: &str) -> String {
        format!(r#"{{"providers": {{"idp": {{{REMOTE}{members}}}}}}}"#)
    }

    #[test]
    fn a_remote_provider_compiles_with_its_defaults() {
        let c = compile(&with_provider("")).unwrap();
        let p = &c.providers[0];
        assert_eq!((p.name.as_str(), p.clock_skew), ("idp", DEFAULT_SKEW));
        assert!(p.require_expiration && !p.forward);
        assert_eq!(c.realm, "api");
    }

    #[test]
    fn errors_name_the_field_through_maps_and_arrays() {
        assert_eq!(
            error(&with_provider(
                r#", "claim_to_headers": [{"claim": "sub", "header": "x-user"}, {"claim": "a", "headr": "x"}]"#
            )),
            "providers.idp.claim_to_headers[1].headr: unknown field `headr`, expected `claim` or `header`"
        );
        assert_eq!(
            error(&with_provider(r#", "max_token_bytes": 1.5"#)),
            "providers.idp.max_token_bytes: invalid type: floating point `1.5`, expected u64"
        );
        assert_eq!(
            error(&with_provider(r#", "clock_skew": "60""#)),
            "providers.idp.clock_skew: invalid duration \"60\": missing unit (ns, us, ms, s, m or h)"
        );
        assert_eq!(
            error(&with_provider(
                r#", "from_headers": [{"name": "x-token", "value_prefix": 1}]"#
            )),
            "providers.idp.from_headers[0].value_prefix: invalid type: integer `1`, expected a string"
        );
        let rule = |requires: &str| {
            error(&format!(
                r#"{{"providers": {{"idp": {{{REMOTE}}}}}, "rules": [{{"match": {{}}}}, {{"match": {{}}, "requires": {requires}}}]}}"#
            ))
        };
        assert_eq!(
            rule(
                r#"{"any": [{"provider": "idp"}, {"all": [{"provider": "idp", "claims": {"role": "admin"}}]}]}"#
            ),
            "rules[1].requires.any[1].all[0].claims.role: invalid type: string \"admin\", expected a sequence"
        );
        assert_eq!(
            rule(r#"{"provider": "idp", "claims": {"role": []}}"#),
            "rules[1].requires.claims.role: must list at least one accepted value"
        );
        assert_eq!(
            error(r#"{"rules": [{"requires": null}]}"#),
            "rules[0]: missing field `match`"
        );
    }

    #[test]
    fn a_name_given_twice_is_refused_in_free_name_maps_too() {
        let twice = format!(r#"{{"providers": {{"idp": {{{REMOTE}}}, "idp": {{{REMOTE}}}}}}}"#);
        assert_eq!(
            error(&twice),
            "providers.idp: appears twice; each member may appear once"
        );
        let claims = format!(
            r#"{{"providers": {{"idp": {{{REMOTE}}}}}, "rules": [{{"match": {{}},
                "requires": {{"provider": "idp", "claims": {{"role": ["a"], "role": ["b"]}}}}}}]}}"#
        );
        assert_eq!(
            error(&claims),
            "rules[0].requires.claims.role: appears twice; each member may appear once"
        );
        assert_eq!(
            error(&with_provider(r#", "issuer": "j""#)),
            "providers.idp.issuer: appears twice; each member may appear once"
        );
    }

    #[test]
    fn providers_keep_their_document_order() {
        let c = compile(&format!(
            r#"{{"providers": {{"zeta": {{{REMOTE}}}, "alpha": {{{REMOTE}}}}}}}"#
        ))
        .unwrap();
        let names: Vec<&str> = c.providers.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["zeta", "alpha"]);
    }

    #[test]
    fn null_means_the_default() {
        let c = compile(&with_provider(
            r#", "audiences": null, "local_jwks": null, "from_headers": null, "from_params": null,
               "from_cookies": null, "forward": null, "forward_payload_header": null,
               "claim_to_headers": null, "clock_skew": null, "require_expiration": null,
               "max_token_bytes": null, "require_typ": null"#,
        ))
        .unwrap();
        let p = &c.providers[0];
        assert!(p.require_expiration && !p.forward && p.audiences.is_empty());
        assert_eq!(p.max_token_bytes, 8192);
        assert_eq!(p.sources.len(), 1);
        let c = compile(&format!(
            r#"{{"providers": {{"idp": {{{REMOTE}}}}}, "realm": null, "token_cache_size": null,
                "rules": [{{"match": {{}}, "requires": {{"provider": "idp", "scopes": null,
                "claims": null, "allow_missing": null, "any": null, "all": null}}}}]}}"#
        ))
        .unwrap();
        assert_eq!((c.realm.as_str(), c.token_cache_size), ("api", 1000));
        assert!(compile(r#"{"providers": null, "rules": null}"#).is_ok());
    }

    proptest::proptest! {
        /// No configuration text makes the parser or the compiler panic.
        #[test]
        fn hostile_config_never_panics(text in ".{0,200}") {
            if let Ok(c) = parse::<JwtAuthConfig>(text.as_bytes()) {
                let _ = c.compile();
            }
        }

        /// Well-formed JSON with hostile values: refused with a field path, or compiled.
        #[test]
        fn hostile_values_never_panic(
            name in ".{0,12}",
            text in ".{0,12}",
            number in proptest::num::i64::ANY,
            depth in 0usize..80,
        ) {
            let requirement = format!(
                "{}{}{}",
                r#"{"any": ["#.repeat(depth),
                serde_json::json!({ "provider": name, "claims": { text.clone(): [text.clone()] } }),
                "]}".repeat(depth)
            );
            let config = format!(
                r#"{{"providers": {{{}: {{"issuer": {}, "algorithms": [{}], "max_token_bytes": {number},
                    "remote_jwks": {{"cluster": {}, "path": {}, "timeout": {}}}}}}},
                    "rules": [{{"match": {{}}, "requires": {requirement}}}]}}"#,
                serde_json::json!(name),
                serde_json::json!(text),
                serde_json::json!(text),
                serde_json::json!(name),
                serde_json::json!(text),
                serde_json::json!(text),
            );
            if let Err(e) = compile(&config) {
                proptest::prop_assert!(!e.path().is_empty() || e.reason().contains("recursion"), "{}", e);
            }
        }
    }
}
