//! JWT validation (`jwt_auth.wasm`): authentication and claim/scope authorization at the
//! front door, stricter than Envoy's `jwt_authn` by default.
//!
//! Pipeline per request (each step in its module): the first matching rule ([`rules`]) names
//! the providers whose tokens it needs; each provider's token is found ([`extract`]), parsed
//! strictly ([`token`], [`json`]), checked against the provider's algorithms, `typ`, issuer and
//! keys ([`verify`], [`jwks`], [`crypto`]) and claims ([`claims`]); a refusal becomes a response
//! in one table ([`reply`]). Every header the filter may write is removed from every incoming
//! request first, so a client can never forge an identity header. Verified tokens are
//! remembered per worker ([`cache`]); keys from a key server are fetched in the background and
//! shared by all workers ([`remote`]).
#![deny(unsafe_code)]

pub mod alg;
pub mod base64url;
pub mod cache;
pub mod claims;
pub mod config;
pub mod crypto;
pub mod der;
pub mod ecdsa;
pub mod extract;
pub mod json;
pub mod jwks;
pub mod remote;
pub mod reply;
pub mod rsa_verify;
pub mod rules;
pub mod token;
pub mod verify;

use crate::cache::TokenCache;
use crate::config::{Compiled, JwtAuthConfig, KeySource};
use crate::remote::{KeyChange, Refetch, WorkerKeys};
use crate::rules::{Denial, KeySnapshot, Notes, Passed};
use filter_core::config::ConfigError;
use filter_core::decision::{Callout, CalloutResult, Decision, HeaderEdits};
use filter_core::filter::{Env, Filter};
use filter_core::logging::{self, Throttle};
use filter_core::metrics::{MetricDef, MetricId, MetricKind, MetricName, PerItem};
use filter_core::request::RequestView;
use filter_core::time::Time;
use std::cell::RefCell;
use std::time::Duration;

/// The filter, as compiled from its configuration.
#[derive(Debug)]
pub struct JwtAuth {
    config: Compiled,
    /// This worker's verified tokens, one cache per provider (each worker's VM has its own).
    cache: RefCell<Vec<TokenCache>>,
    /// This worker's copy of each remote provider's keys (by provider index).
    remote_keys: RefCell<Vec<Option<WorkerKeys>>>,
    /// The keys every provider can verify with now. Rebuilt only when they can change (on a
    /// tick and on a fetch's answer), so a request borrows it instead of assembling it.
    keys: RefCell<KeySnapshot>,
    /// The "fetch failed" warning of each provider (by index): retries back off, but several
    /// workers and providers failing together must not flood the log.
    fetch_failure_lines: Vec<Throttle>,
}

/// At most one "fetch failed" line per provider and worker in this interval.
const FETCH_FAILURE_LINE_INTERVAL: Duration = Duration::from_secs(60);

/// Per-request state, kept while a request waits for keys.
#[derive(Debug, Default)]
pub struct JwtStream {
    /// When the request started waiting for keys.
    waiting_since: Option<Time>,
    /// The provider and key generation a `kid`-miss refetch was asked for: once the generation
    /// moves on, the token is judged with the new keys, without waiting again.
    refetch: Option<(usize, u64)>,
}

const ALLOWED: MetricId = MetricId(0);
const DENIED_MISSING: MetricId = MetricId(1);
const DENIED_INVALID_REQUEST: MetricId = MetricId(2);
const DENIED_INVALID_TOKEN: MetricId = MetricId(3);
const DENIED_INSUFFICIENT_SCOPE: MetricId = MetricId(4);
const DENIED_UNAVAILABLE: MetricId = MetricId(5);
const CACHE_HITS: MetricId = MetricId(6);
const CACHE_MISSES: MetricId = MetricId(7);

/// The metrics each provider has, labelled `provider="<name>"` (after the filter's own).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProviderMetric {
    /// Key-server fetches that gave a usable key set.
    FetchSuccess,
    /// Key-server fetches that failed.
    FetchFailure,
}

impl PerItem for ProviderMetric {
    const ITEM_LABEL: &'static str = "provider";
    const ALL: &'static [Self] = &[ProviderMetric::FetchSuccess, ProviderMetric::FetchFailure];

    fn family(self) -> &'static str {
        "jwks_fetches_total"
    }

    fn label(self) -> Option<(&'static str, &'static str)> {
        match self {
            ProviderMetric::FetchSuccess => Some(("outcome", "success")),
            ProviderMetric::FetchFailure => Some(("outcome", "failure")),
        }
    }

    fn kind(self) -> MetricKind {
        MetricKind::Counter
    }
}

impl ProviderMetric {
    /// Its id for the `provider`-th provider.
    pub fn of(self, provider: usize) -> MetricId {
        MetricId(JwtAuth::METRICS.len().saturating_add(self.id(provider).0))
    }
}

/// How long a request may wait for a remote provider's keys beyond the fetch timeout.
const WAIT_MARGIN: Duration = Duration::from_secs(1);

/// The keys every provider has: local keys always, remote ones once fetched and while usable.
fn snapshot(config: &Compiled, copies: &[Option<WorkerKeys>], now: Time) -> KeySnapshot {
    config
        .providers
        .iter()
        .enumerate()
        .map(|(i, p)| match &p.keys {
            KeySource::Local(keys) => Some((keys.clone(), 0)),
            KeySource::Remote(_) => copies
                .get(i)
                .and_then(Option::as_ref)
                .filter(|k| k.usable(now))
                .map(|k| (k.keys.clone(), k.generation)),
        })
        .collect()
}

impl JwtAuth {
    /// Rebuilds the key snapshot from the local keys and this worker's remote copies (those
    /// still usable at `now`).
    fn refresh_keys(&self, copies: &[Option<WorkerKeys>], now: Time) {
        let snapshot = snapshot(&self.config, copies, now);
        if let Ok(mut keys) = self.keys.try_borrow_mut() {
            *keys = snapshot;
        }
    }

    /// How long a request may wait for `provider`'s keys.
    fn wait_limit(&self, provider: usize) -> Duration {
        match self.config.providers.get(provider).map(|p| &p.keys) {
            Some(KeySource::Remote(r)) => r.timeout + WAIT_MARGIN,
            _ => Duration::ZERO,
        }
    }

    /// Whether `provider`'s key server is known to be failing (see [`remote::failing`]).
    fn failing(&self, provider: usize, env: &Env<'_>) -> bool {
        self.config
            .providers
            .get(provider)
            .is_some_and(|p| remote::failing(p, env.store))
    }

    /// Whether a refused request should rather wait for keys: none yet, or a refetch after an
    /// unknown `kid` (key rotation) that has not completed. Asks for that refetch if needed.
    /// Nothing waits on a key server known to be failing: the answer would only come later.
    fn should_wait(
        &self,
        stream: &mut JwtStream,
        denial: &Denial,
        notes: &Notes,
        keys: &KeySnapshot,
        env: &Env<'_>,
    ) -> bool {
        let waited = |limit: Duration| {
            stream
                .waiting_since
                .is_some_and(|since| env.now().since(since) >= limit)
        };
        if let Denial::KeysUnavailable { .. } = denial {
            let limit = notes
                .needs_keys
                .iter()
                .map(|p| self.wait_limit(*p))
                .max()
                .unwrap_or_default();
            // Worth waiting while one of the providers without keys may still get them soon.
            let hope = notes.needs_keys.iter().any(|p| !self.failing(*p, env));
            return hope && !waited(limit);
        }
        let generation = |p: usize| keys.get(p).cloned().flatten().map_or(0, |(_, g)| g);
        if let Some((provider, asked_at)) = stream.refetch {
            // Waiting for a refetch: until the keys change, the fetch fails, or the wait is too
            // long.
            return generation(provider) == asked_at
                && !waited(self.wait_limit(provider))
                && !self.failing(provider, env);
        }
        if !matches!(denial, Denial::InvalidToken(_)) {
            return false;
        }
        for &p in &notes.unknown_key {
            let Some(provider) = self.config.providers.get(p) else {
                continue;
            };
            if !matches!(provider.keys, KeySource::Remote(_)) {
                continue;
            }
            match remote::request_refetch(provider, env.store, env.now()) {
                Refetch::Requested | Refetch::InProgress => {
                    stream.refetch = Some((p, generation(p)));
                    return true;
                }
                Refetch::Cooldown | Refetch::Failing => {}
            }
        }
        false
    }

    /// Applies the decision for a request that may pass: identity headers cleared, then the
    /// verified tokens' headers set and (unless forwarded) the tokens removed.
    fn pass(&self, request: &dyn RequestView, passed: &[Passed]) -> HeaderEdits {
        let mut edits = HeaderEdits::default();
        for p in passed {
            let Some(provider) = self.config.providers.get(p.provider) else {
                continue;
            };
            if let (false, Some(source)) = (provider.forward, provider.sources.get(p.source)) {
                edits = extract::removal(request, source, edits);
            }
            if let Some(header) = &provider.payload_header {
                edits = edits.set(header.clone(), p.verified.payload_b64.clone());
            }
            for (path, header) in &provider.claim_headers {
                if let Some(value) =
                    claims::lookup(&p.verified.claims, path.iter().map(String::as_str))
                        .and_then(claims::header_value)
                {
                    edits = edits.set(header.clone(), value);
                }
            }
        }
        // Every header the filter writes is cleared of what the client sent: a set replaces
        // it already; the others are removed, and only when present, since checking and
        // removing each cost a host call (~1 µs).
        for header in &self.config.written_headers {
            let set = edits.set.iter().any(|(name, _)| name == header);
            if !set && request.header(header).is_some() {
                edits = edits.remove(header.clone());
            }
        }
        edits
    }
}

impl Filter for JwtAuth {
    const NAME: &'static str = "jwt_auth";
    type Config = JwtAuthConfig;
    type Stream = JwtStream;
    const METRICS: &'static [MetricDef] = &[
        MetricDef::counter_with("requests_total", "outcome", "allowed"),
        MetricDef::counter_with("requests_total", "outcome", "missing"),
        MetricDef::counter_with("requests_total", "outcome", "invalid_request"),
        MetricDef::counter_with("requests_total", "outcome", "invalid_token"),
        MetricDef::counter_with("requests_total", "outcome", "insufficient_scope"),
        MetricDef::counter_with("requests_total", "outcome", "unavailable"),
        MetricDef::counter_with("cache_lookups_total", "outcome", "hit"),
        MetricDef::counter_with("cache_lookups_total", "outcome", "miss"),
    ];

    fn config_metrics(&self) -> Vec<(MetricName, MetricKind)> {
        ProviderMetric::defs(self.config.providers.iter().map(|p| p.name.as_str()))
    }

    fn new(config: JwtAuthConfig) -> Result<Self, ConfigError> {
        let config = config.compile()?;
        let cache = RefCell::new(
            (0..config.providers.len())
                .map(|_| TokenCache::new(config.token_cache_size))
                .collect(),
        );
        let copies = vec![None; config.providers.len()];
        let keys = RefCell::new(snapshot(&config, &copies, Time::default()));
        let fetch_failure_lines = config
            .providers
            .iter()
            .map(|_| Throttle::new(FETCH_FAILURE_LINE_INTERVAL))
            .collect();
        Ok(JwtAuth {
            config,
            cache,
            remote_keys: RefCell::new(copies),
            keys,
            fetch_failure_lines,
        })
    }

    fn on_request(
        &self,
        stream: &mut JwtStream,
        request: &dyn RequestView,
        env: &Env<'_>,
    ) -> Decision {
        let no_keys = KeySnapshot::new();
        let borrowed = self.keys.try_borrow();
        let keys = borrowed.as_deref().unwrap_or(&no_keys);
        let mut notes = Notes::default();
        // Callbacks of one worker never overlap, so the cache is always free here; if it ever
        // were not, deciding without it is still correct, only slower.
        let mut borrowed_cache = self.cache.try_borrow_mut();
        let cache: &mut [TokenCache] = match &mut borrowed_cache {
            Ok(cache) => cache,
            Err(_) => &mut [],
        };
        let decided = rules::decide(
            &self.config,
            request,
            env.now(),
            keys,
            cache,
            env.verifier,
            &mut notes,
        );
        if notes.hits > 0 {
            env.metrics.add(CACHE_HITS, i64::from(notes.hits));
        }
        if notes.misses > 0 {
            env.metrics.add(CACHE_MISSES, i64::from(notes.misses));
        }
        match decided {
            Ok(passed) => {
                env.metrics.add(ALLOWED, 1);
                Decision::forward(self.pass(request, &passed))
            }
            Err(denial) => {
                if self.should_wait(stream, &denial, &notes, keys, env) {
                    stream.waiting_since.get_or_insert(env.now());
                    return Decision::Wait;
                }
                let metric = match denial {
                    Denial::Missing => DENIED_MISSING,
                    Denial::InvalidRequest => DENIED_INVALID_REQUEST,
                    Denial::InvalidToken(_) => DENIED_INVALID_TOKEN,
                    Denial::InsufficientScope { .. } => DENIED_INSUFFICIENT_SCOPE,
                    Denial::KeysUnavailable { .. } => DENIED_UNAVAILABLE,
                };
                env.metrics.add(metric, 1);
                let reply = reply::reply(&denial, &self.config.realm);
                logging::refused(Self::NAME, &reply);
                Decision::Respond(reply)
            }
        }
    }

    fn tick_period(&self) -> Option<Duration> {
        let any_remote = self
            .config
            .providers
            .iter()
            .any(|p| matches!(p.keys, KeySource::Remote(_)));
        any_remote.then_some(remote::TICK)
    }

    fn on_tick(&self, env: &Env<'_>) -> Vec<Callout> {
        let Ok(mut copies) = self.remote_keys.try_borrow_mut() else {
            return Vec::new();
        };
        let mut callouts = Vec::new();
        for (index, provider) in self.config.providers.iter().enumerate() {
            if let (KeySource::Remote(r), Some(copy)) = (&provider.keys, copies.get_mut(index))
                && let Some(callout) = remote::tick(provider, r, index, copy, env.store, env.now())
            {
                callouts.push(callout);
            }
        }
        self.refresh_keys(&copies, env.now());
        callouts
    }

    fn on_callout_response(&self, tag: u64, result: CalloutResult, env: &Env<'_>) {
        let index = usize::try_from(tag).unwrap_or(usize::MAX);
        let (Some(provider), Ok(mut copies)) = (
            self.config.providers.get(index),
            self.remote_keys.try_borrow_mut(),
        ) else {
            return;
        };
        if let (KeySource::Remote(r), Some(copy)) = (&provider.keys, copies.get_mut(index)) {
            let fetched = remote::fetched(provider, r, copy, result, env.store, env.now());
            self.refresh_keys(&copies, env.now());
            let name = &provider.name;
            match fetched {
                Ok(change) => {
                    env.metrics.add(ProviderMetric::FetchSuccess.of(index), 1);
                    // Only the worker that fetched logs: one line per change for the Envoy.
                    match change {
                        KeyChange::Loaded(kids) => {
                            log::info!("{}: provider {name}: keys loaded (kid {kids})", Self::NAME);
                        }
                        KeyChange::Rotated(kids) => {
                            log::info!(
                                "{}: provider {name}: key set rotated (kid now {kids})",
                                Self::NAME
                            );
                        }
                        KeyChange::Unchanged => {}
                    }
                }
                Err(why) => {
                    env.metrics.add(ProviderMetric::FetchFailure.of(index), 1);
                    if let Some(dropped) = self
                        .fetch_failure_lines
                        .get(index)
                        .and_then(|t| t.admit(env.now()))
                    {
                        log::warn!(
                            "{}: provider {name}: fetching keys from cluster {} failed: \
                             {why}{dropped}",
                            Self::NAME,
                            r.cluster
                        );
                    }
                }
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
