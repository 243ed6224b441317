//! JWT validation (`jwt_auth.wasm`): authentication and claim/scope authorization at the
//! front door, stricter than Envoy's `jwt_authn` by default.
//!
//! Pipeline per request (each step in its module): the first matching rule ([`rules`]) names
//! the providers whose tokens it needs; each provider's token is found ([`extract`]), parsed
//! strictly ([`token`], [`json`]), checked against the provider's algorithms, `typ`, issuer and
//! keys ([`verify`], [`jwks`], [`crypto`]) and claims ([`claims`]); a refusal becomes a response
//! in one table ([`reply`]). Every header the filter may write is removed from every incoming
//! request first, so a client can never forge an identity header.
#![deny(unsafe_code)]

pub mod alg;
pub mod cache;
pub mod claims;
pub mod config;
pub mod crypto;
pub mod extract;
pub mod json;
pub mod jwks;
pub mod reply;
pub mod rules;
pub mod token;
pub mod verify;

use crate::cache::TokenCache;
use crate::config::{Compiled, JwtAuthConfig};
use crate::rules::{CacheStats, Denial, Passed};
use filter_core::config::ConfigError;
use filter_core::decision::{Decision, HeaderEdits};
use filter_core::filter::{Env, Filter};
use filter_core::metrics::{MetricDef, MetricId, MetricKind};
use filter_core::request::RequestView;
use std::cell::RefCell;

/// The filter, as compiled from its configuration.
#[derive(Debug)]
pub struct JwtAuth {
    config: Compiled,
    /// This worker's verified tokens (each worker's VM has its own).
    cache: RefCell<TokenCache>,
}

const fn counter(name: &'static str) -> MetricDef {
    MetricDef {
        name,
        kind: MetricKind::Counter,
    }
}

const ALLOWED: MetricId = MetricId(0);
const DENIED_MISSING: MetricId = MetricId(1);
const DENIED_INVALID_REQUEST: MetricId = MetricId(2);
const DENIED_INVALID_TOKEN: MetricId = MetricId(3);
const DENIED_INSUFFICIENT_SCOPE: MetricId = MetricId(4);
const CACHE_HITS: MetricId = MetricId(5);
const CACHE_MISSES: MetricId = MetricId(6);

impl JwtAuth {
    /// Applies the decision for a request that may pass: identity headers cleared, then the
    /// verified tokens' headers set and (unless forwarded) the tokens removed.
    fn pass(&self, request: &dyn RequestView, passed: &[Passed]) -> HeaderEdits {
        let mut edits = HeaderEdits::default();
        for header in &self.config.written_headers {
            edits = edits.remove(header.clone());
        }
        for p in passed {
            let Some(provider) = self.config.providers.get(p.provider) else {
                continue;
            };
            if !provider.forward {
                edits = extract::removal(request, &p.source, edits);
            }
            if let Some(header) = &provider.payload_header {
                edits = edits.set(header.clone(), p.verified.payload_b64.clone());
            }
            for (path, header) in &provider.claim_headers {
                if let Some(value) =
                    claims::lookup(&p.verified.claims, path).and_then(claims::header_value)
                {
                    edits = edits.set(header.clone(), value);
                }
            }
        }
        edits
    }
}

impl Filter for JwtAuth {
    const NAME: &'static str = "jwt_auth";
    type Config = JwtAuthConfig;
    type Stream = ();
    const METRICS: &'static [MetricDef] = &[
        counter("allowed"),
        counter("denied_missing"),
        counter("denied_invalid_request"),
        counter("denied_invalid_token"),
        counter("denied_insufficient_scope"),
        counter("cache_hits"),
        counter("cache_misses"),
    ];

    fn new(config: JwtAuthConfig) -> Result<Self, ConfigError> {
        let config = config.compile()?;
        let cache = RefCell::new(TokenCache::new(config.token_cache_size));
        Ok(JwtAuth { config, cache })
    }

    fn on_request(&self, _stream: &mut (), request: &dyn RequestView, env: &Env<'_>) -> Decision {
        let mut stats = CacheStats::default();
        // Callbacks of one worker never overlap, so the cache is always free here; if it ever
        // were not, deciding without it is still correct, only slower.
        let decided = match self.cache.try_borrow_mut() {
            Ok(mut cache) => rules::decide(&self.config, request, env.now, &mut cache, &mut stats),
            Err(_) => rules::decide(
                &self.config,
                request,
                env.now,
                &mut TokenCache::new(0),
                &mut stats,
            ),
        };
        if stats.hits > 0 {
            env.metrics.add(CACHE_HITS, i64::from(stats.hits));
        }
        if stats.misses > 0 {
            env.metrics.add(CACHE_MISSES, i64::from(stats.misses));
        }
        match decided {
            Ok(passed) => {
                env.metrics.add(ALLOWED, 1);
                Decision::Continue(self.pass(request, &passed))
            }
            Err(denial) => {
                let metric = match denial {
                    Denial::Missing => DENIED_MISSING,
                    Denial::InvalidRequest => DENIED_INVALID_REQUEST,
                    Denial::InvalidToken(_) => DENIED_INVALID_TOKEN,
                    Denial::InsufficientScope { .. } => DENIED_INSUFFICIENT_SCOPE,
                };
                env.metrics.add(metric, 1);
                Decision::Respond(reply::reply(&denial, &self.config.realm))
            }
        }
    }
}

#[cfg(all(target_arch = "wasm32", feature = "export"))]
#[allow(
    unsafe_code,
    reason = "proxy_wasm::main! expands to the WASI constructor call"
)]
mod export {
    filter_host::export_filter!(super::JwtAuth);
}
