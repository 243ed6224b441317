//! The filter configurations of the benchmark's allow paths (`make bench`), shared with the
//! host-call count (`make hostcalls`, `tests/host_calls`), so that what is counted is what is
//! measured.

use crate::tokens::{Alg, Key};
use serde_json::{Value, json};

/// The benchmark's token issuer and audience.
pub const ISSUER: &str = "https://issuer.example";
pub const AUDIENCE: &str = "api";

/// The algorithms the benchmark's issuer signs with; its key set holds one key of each, whose
/// `kid` is the algorithm's name.
pub const SIGNING_ALGS: [Alg; 3] = [Alg::RS256, Alg::ES256, Alg::ES512];

/// A fresh key of the benchmark's issuer for `alg`.
pub fn signing_key(alg: Alg) -> Key {
    Key::generate(alg, alg.name())
}

/// The claims of every benchmark token, issued at `now` (seconds), valid for a day; `sub`
/// becomes `x-user-id`.
pub fn claims(now: u64) -> Value {
    json!({
        "iss": ISSUER, "aud": AUDIENCE, "sub": "user-42", "scope": "read write",
        "iat": now, "exp": now + 86_400,
    })
}

/// `passthrough.wasm`'s modes: one header read and one header set, or nothing at all.
pub const PASSTHROUGH_ONE: &str = "one";
pub const PASSTHROUGH_NOOP: &str = "noop";

/// One provider for the benchmark's issuer over an inline key set, required on every path; the
/// verified-token cache holds `cache_size` tokens (0: every request verifies).
pub fn jwt_auth_config(jwks: &str, cache_size: u64) -> Value {
    json!({
        "providers": { "idp": {
            "issuer": ISSUER,
            "audiences": [AUDIENCE],
            "algorithms": ["RS256", "ES256", "ES512"],
            "local_jwks": { "inline": jwks },
            "claim_to_headers": [ { "claim": "sub", "header": "x-user-id" } ],
        } },
        "rules": [ { "match": { "prefix": "/" }, "requires": { "provider": "idp" } } ],
        "token_cache_size": cache_size,
    })
}

/// One rule with `key`, whose limit no benchmark reaches: the limiter runs, never refuses.
pub fn rate_limit_config(key: Value) -> Value {
    json!({ "rules": [ {
        "name": "bench",
        "key": key,
        "limit": { "requests": 1_000_000_000u64, "per": "1s" },
    } ] })
}

/// The key of the hot-key variant: one bucket for every request.
pub fn hot_key() -> Value {
    json!([{ "rule": {} }])
}

/// The key of the per-user variant (and of the gateway's rate limiter): the `x-user-id` header
/// `jwt_auth` writes.
pub fn per_user_key() -> Value {
    json!([{ "header": "x-user-id" }])
}

/// One breaker, closed throughout.
pub fn circuit_breaker_config() -> Value {
    json!({ "breakers": [ { "name": "bench" } ] })
}

/// One retry rule.
pub fn retry_policy_config() -> Value {
    json!({ "rules": [ { "retry_on": ["5xx", "reset"], "num_retries": 2 } ] })
}

/// The four filters' configurations on their allow path, in the gateway's order: a cached JWT
/// whose `sub` becomes `x-user-id`, a limit per user no benchmark reaches, a closed breaker, a
/// retry rule.
pub fn four_configs(jwks: &str) -> [Value; 4] {
    [
        jwt_auth_config(jwks, 1000),
        rate_limit_config(per_user_key()),
        circuit_breaker_config(),
        retry_policy_config(),
    ]
}

/// `gateway.wasm`'s configuration with the same four as members.
pub fn gateway_config(jwks: &str) -> Value {
    let members: serde_json::Map<String, Value> = crate::wasm::FILTERS
        .iter()
        .map(|m| (*m).to_owned())
        .zip(four_configs(jwks))
        .collect();
    Value::Object(members)
}
