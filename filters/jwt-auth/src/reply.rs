//! The one table from a refusal to an HTTP answer (RFC 6750 §3).
//!
//! | Denial | Status | `WWW-Authenticate` |
//! |---|---|---|
//! | no token | 401 | `Bearer realm="api"` (no error code: the client may not know it needs one) |
//! | malformed request (two tokens, junk credential) | 400 | `Bearer realm="api", error="invalid_request", ...` |
//! | invalid token (any verification failure) | 401 | `Bearer realm="api", error="invalid_token", ...` |
//! | valid token, missing scope or claim | 403 | `Bearer realm="api", error="insufficient_scope", scope="..."` |
//!
//! Descriptions are generic on purpose: telling a client *which* check failed makes the
//! filter an oracle. The specific reason goes to Envoy's debug log. Every reply carries
//! `cache-control: no-store` and a small JSON body with the same stable error code.
//!
//! Each refusal also sets filter state `jwt_auth.decision` for the access log
//! (`%FILTER_STATE(wasm.jwt_auth.decision:PLAIN)%`): `missing`, `invalid_request`,
//! `invalid_token:<reason>` (a fixed code, [`crate::verify::Failure::reason`]),
//! `insufficient_scope` or `unavailable`. A request let through sets nothing.

use crate::rules::Denial;
use filter_core::decision::LocalResponse;

/// The filter state holding the decision, read as `wasm.jwt_auth.decision`.
pub const DECISION: &str = "jwt_auth.decision";

/// What `jwt_auth.decision` says of a refusal: fixed words, never the token or a claim.
pub fn decision(denial: &Denial) -> String {
    match denial {
        Denial::Missing => "missing".to_owned(),
        Denial::InvalidRequest => "invalid_request".to_owned(),
        Denial::InvalidToken(failure) => format!("invalid_token:{}", failure.reason),
        Denial::InsufficientScope { .. } => "insufficient_scope".to_owned(),
        Denial::KeysUnavailable { .. } => "unavailable".to_owned(),
    }
}

/// The response for a refusal.
pub fn reply(denial: &Denial, realm: &str) -> LocalResponse {
    table(denial, realm).filter_state(DECISION, decision(denial))
}

fn table(denial: &Denial, realm: &str) -> LocalResponse {
    let (status, code, description, scope, detail) = match denial {
        Denial::Missing => (401, None, None, None, "no token".to_owned()),
        Denial::InvalidRequest => (
            400,
            Some("invalid_request"),
            Some("the request must carry exactly one bearer token"),
            None,
            "token in several places, or not one token".to_owned(),
        ),
        Denial::InvalidToken(failure) => (
            401,
            Some("invalid_token"),
            Some("the access token is invalid"),
            None,
            failure.detail.clone(),
        ),
        Denial::KeysUnavailable {
            detail,
            retry_after,
        } => {
            // The key server has not answered yet: not the client's fault; the next fetch is
            // due after the provider's failed_refetch_duration (whole seconds, at least 1).
            let seconds = retry_after.as_nanos().div_ceil(1_000_000_000).max(1);
            return LocalResponse::new(503)
                .header("retry-after", seconds.to_string())
                .header("content-type", "application/json")
                .body("{\"error\":\"temporarily_unavailable\"}")
                .detail(detail.clone());
        }
        Denial::InsufficientScope { scopes, detail } => (
            403,
            Some("insufficient_scope"),
            Some("the access token does not grant access to this resource"),
            (!scopes.is_empty()).then(|| scopes.join(" ")),
            detail.clone(),
        ),
    };
    let mut challenge = format!("Bearer realm=\"{realm}\"");
    if let Some(code) = code {
        challenge.push_str(&format!(", error=\"{code}\""));
    }
    if let Some(description) = description {
        challenge.push_str(&format!(", error_description=\"{description}\""));
    }
    if let Some(scope) = &scope {
        challenge.push_str(&format!(", scope=\"{scope}\""));
    }
    LocalResponse::new(status)
        .header("www-authenticate", challenge)
        .header("content-type", "application/json")
        .body(format!(
            "{{\"error\":\"{}\"}}",
            code.unwrap_or("unauthorized")
        ))
        .detail(detail)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::TokenFailure;

    fn challenge(r: &LocalResponse) -> &str {
        r.headers
            .iter()
            .find(|(n, _)| n == "www-authenticate")
            .map(|(_, v)| v.as_str())
            .unwrap()
    }

    #[test]
    fn the_table() {
        let missing = reply(&Denial::Missing, "api");
        assert_eq!(missing.status, 401);
        assert_eq!(challenge(&missing), "Bearer realm=\"api\"");
        assert_eq!(missing.body, "{\"error\":\"unauthorized\"}");

        let invalid = reply(
            &Denial::InvalidToken(TokenFailure::new("expired", "provider demo: expired")),
            "api",
        );
        assert_eq!(invalid.status, 401);
        assert_eq!(
            challenge(&invalid),
            "Bearer realm=\"api\", error=\"invalid_token\", error_description=\"the access token is invalid\""
        );
        assert!(
            !invalid.body.contains("expired"),
            "the reason must not reach the client"
        );
        assert_eq!(invalid.detail, "provider demo: expired");

        let forbidden = reply(
            &Denial::InsufficientScope {
                scopes: vec!["admin".into(), "write".into()],
                detail: String::new(),
            },
            "api",
        );
        assert_eq!(forbidden.status, 403);
        assert!(challenge(&forbidden).ends_with(", scope=\"admin write\""));

        let bad_request = reply(&Denial::InvalidRequest, "api");
        assert_eq!(bad_request.status, 400);
        assert!(challenge(&bad_request).contains("error=\"invalid_request\""));

        assert_eq!(missing.filter_state_value(DECISION), Some("missing"));
        assert_eq!(
            invalid.filter_state_value(DECISION),
            Some("invalid_token:expired")
        );
        assert_eq!(
            forbidden.filter_state_value(DECISION),
            Some("insufficient_scope")
        );
        assert_eq!(
            bad_request.filter_state_value(DECISION),
            Some("invalid_request")
        );
        let unavailable = reply(
            &Denial::KeysUnavailable {
                detail: "provider demo: no keys yet".into(),
                retry_after: std::time::Duration::from_secs(5),
            },
            "api",
        );
        assert_eq!(
            unavailable.filter_state_value(DECISION),
            Some("unavailable")
        );
        assert_eq!(unavailable.filter_state.len(), 1);

        for r in [missing, invalid, forbidden, bad_request] {
            assert!(
                r.headers
                    .contains(&("cache-control".into(), "no-store".into()))
            );
        }
    }
}
