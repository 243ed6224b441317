//! Remote JWKS: keys fetched from a key server through an Envoy cluster, shared by all workers.
//!
//! Fetching never happens on the request path. Each worker's root context ticks (every 100 ms)
//! and, per remote provider:
//! 1. copies the shared key set if another worker fetched a newer one (a small metadata record
//!    is read each tick; the document only when its generation changed);
//! 2. starts a fetch when one is needed (no keys yet, the refresh time has come, or a request met
//!    an unknown `kid`) and nobody else is fetching: a lease taken by compare-and-swap in shared
//!    data makes one fetch serve every worker.
//!
//! A good answer replaces the shared document and bumps its generation (which also retires the
//! verified-token cache entries made under the old keys). After a failed fetch the next try
//! depends on what still serves:
//! - stale keys (the last good ones, for up to [`MAX_STALE`] past their expiry): tokens are still
//!   verified, so the key server is spared with a doubling backoff (2 s up to [`MAX_BACKOFF`]);
//! - no usable key: every token the provider should verify is refused, so the next try comes
//!   after the provider's `failed_refetch_duration` (1 s by default, as Envoy's), never doubled.
//!
//! Either way at most one fetch runs at a time per provider across all workers (the lease), and
//! the wait after a failure is kept in the shared record, so adding workers adds no fetches.
//!
//! The key server is *known to be failing* from a failed fetch until the next good one (a fetch
//! under way changes nothing). Meanwhile nothing is held for a fetch that is unlikely to help: a
//! token of a provider without keys gets its 503, and one whose `kid` is unknown its 401, at once.
//!
//! Key rotation: a token whose `kid` no provider key matches asks for a refetch, at most once per
//! [`KID_MISS_COOLDOWN`] per provider, so a flood of random `kid`s causes no fetch storm (J8).
//!
//! Shared data keys (one small fixed set per provider, so memory stays bounded):
//! `jwt_auth.jwks.<provider>.meta`, `.doc` and `.fetch`.

use crate::config::{Provider, Remote};
use crate::jwks::{self, KeySet};
use filter_core::decision::{Callout, CalloutResult};
use filter_core::store::{self, SharedStore};
use filter_core::time::Time;
use std::rc::Rc;
use std::time::Duration;

/// How often each worker checks on its remote providers (and re-decides held requests).
pub const TICK: Duration = Duration::from_millis(100);
/// At most one `kid`-miss refetch per provider in this window.
pub const KID_MISS_COOLDOWN: Duration = Duration::from_secs(30);
/// Bounds on a key server's `Cache-Control: max-age`.
pub const MIN_TTL: Duration = Duration::from_secs(30);
/// See [`MIN_TTL`].
pub const MAX_TTL: Duration = Duration::from_secs(86_400);
/// How long past their expiry the last good keys keep serving while the key server fails.
pub const MAX_STALE: Duration = Duration::from_secs(86_400);
/// Longest wait between failed fetches (while stale keys still serve).
pub const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// Compare-and-swap attempts on the small control records.
const CAS_ATTEMPTS: u32 = 8;

/// A worker's copy of a provider's remote keys.
#[derive(Debug, Clone)]
pub struct WorkerKeys {
    /// The parsed keys.
    pub keys: Rc<KeySet>,
    /// Changes whenever the shared document does.
    pub generation: u64,
    /// When the keys should be refreshed.
    pub refresh_at: Time,
    /// When the keys expire (they still serve for [`MAX_STALE`] after, if fetches fail).
    pub expires_at: Time,
}

impl WorkerKeys {
    /// Whether these keys may still verify tokens at `now`.
    pub fn usable(&self, now: Time) -> bool {
        now < self.expires_at.plus(MAX_STALE)
    }
}

/// The shared record describing the current document.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Meta {
    generation: u64,
    refresh_at: u64,
    expires_at: u64,
}

/// The shared record coordinating fetches (times in nanoseconds, 0 for none).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Control {
    /// A fetch is under way until then (or until its answer).
    lease_until: u64,
    /// The next try while stale keys serve: the doubling backoff.
    next_attempt: u64,
    /// Failed fetches since the last good one.
    failures: u64,
    /// A request met an unknown `kid`: fetch without waiting for the refresh time.
    wanted: u64,
    last_kid_refetch: u64,
    /// When the latest fetch failed; 0 once one succeeds. Non-zero means the key server is
    /// known to be failing. Last in the record, so a record written before it existed reads 0.
    failed_at: u64,
}

fn numbers<const N: usize>(bytes: Option<&[u8]>) -> [u64; N] {
    let mut out = [0u64; N];
    if let Some(text) = bytes.and_then(|b| std::str::from_utf8(b).ok()) {
        for (slot, word) in out.iter_mut().zip(text.split(' ')) {
            *slot = word.parse().unwrap_or(0);
        }
    }
    out
}

impl Meta {
    fn decode(bytes: Option<&[u8]>) -> Self {
        let [generation, refresh_at, expires_at] = numbers::<3>(bytes);
        Self {
            generation,
            refresh_at,
            expires_at,
        }
    }
    fn encode(&self) -> Vec<u8> {
        format!(
            "{} {} {}",
            self.generation, self.refresh_at, self.expires_at
        )
        .into_bytes()
    }
}

impl Control {
    fn decode(bytes: Option<&[u8]>) -> Self {
        let [
            lease_until,
            next_attempt,
            failures,
            wanted,
            last_kid_refetch,
            failed_at,
        ] = numbers::<6>(bytes);
        Self {
            lease_until,
            next_attempt,
            failures,
            wanted,
            last_kid_refetch,
            failed_at,
        }
    }
    fn encode(&self) -> Vec<u8> {
        format!(
            "{} {} {} {} {} {}",
            self.lease_until,
            self.next_attempt,
            self.failures,
            self.wanted,
            self.last_kid_refetch,
            self.failed_at
        )
        .into_bytes()
    }

    /// When the next fetch may start after failures: while keys serve, the doubling backoff;
    /// without them, `failed_refetch` after the latest failure.
    fn retry_at(&self, serving: bool, failed_refetch: Duration) -> u64 {
        if serving || self.failed_at == 0 {
            self.next_attempt
        } else {
            self.failed_at.saturating_add(nanos(failed_refetch))
        }
    }
}

fn key(provider: &Provider, part: &str) -> String {
    format!("jwt_auth.jwks.{}.{part}", provider.name)
}

fn read<T>(store: &dyn SharedStore, key: &str, decode: fn(Option<&[u8]>) -> T) -> T {
    let value = store.get(key).ok().flatten();
    decode(value.as_ref().map(|(bytes, _)| bytes.as_slice()))
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// One tick for one remote provider: refreshes the worker's copy from shared data, and returns
/// the fetch to start, if this worker should start one now.
pub fn tick(
    provider: &Provider,
    remote: &Remote,
    index: usize,
    copy: &mut Option<WorkerKeys>,
    store: &dyn SharedStore,
    now: Time,
) -> Option<Callout> {
    let meta = read(store, &key(provider, "meta"), Meta::decode);
    if meta.generation > 0 && copy.as_ref().is_none_or(|c| c.generation < meta.generation) {
        let doc = store.get(&key(provider, "doc")).ok().flatten();
        if let Some(Ok(keys)) = doc.map(|(bytes, _)| usable_keys(provider, &bytes)) {
            *copy = Some(WorkerKeys {
                keys: Rc::new(keys),
                generation: meta.generation,
                refresh_at: Time::from_nanos(meta.refresh_at),
                expires_at: Time::from_nanos(meta.expires_at),
            });
        }
    }
    let control = read(store, &key(provider, "fetch"), Control::decode);
    let needed = copy.as_ref().is_none_or(|c| now >= c.refresh_at) || control.wanted != 0;
    let serving = copy.as_ref().is_some_and(|c| c.usable(now));
    let now_ns = now.as_nanos();
    let retry_at = control.retry_at(serving, remote.failed_refetch_duration);
    if !needed || now_ns < control.lease_until || now_ns < retry_at {
        return None;
    }
    let lease = now
        .plus(remote.timeout)
        .plus(Duration::from_secs(1))
        .as_nanos();
    let won = store::update(store, &key(provider, "fetch"), CAS_ATTEMPTS, |current| {
        let mut c = Control::decode(current);
        if now_ns < c.lease_until {
            return (None, false);
        }
        c.lease_until = lease;
        (Some(c.encode()), true)
    });
    if won != Ok(true) {
        return None;
    }
    Some(Callout {
        tag: u64::try_from(index).unwrap_or(u64::MAX),
        cluster: remote.cluster.clone(),
        authority: remote.authority.clone(),
        path: remote.path.clone(),
        timeout: remote.timeout,
    })
}

/// A key set from a JWKS document, if it holds a key this provider can use; otherwise why not.
fn usable_keys(provider: &Provider, doc: &[u8]) -> Result<KeySet, String> {
    let keys = jwks::parse_jwks(doc).map_err(|e| e.to_string())?;
    let fits = keys.keys.iter().any(|jwk| {
        provider
            .algorithms
            .iter()
            .any(|alg| jwk.key.fits(*alg) && jwk.alg.is_none_or(|a| a == *alg))
    });
    if fits {
        Ok(keys)
    } else {
        Err(format!(
            "no key in the set fits the provider's algorithms ({} usable, {} skipped)",
            keys.keys.len(),
            keys.ignored.len()
        ))
    }
}

/// The `kid`s of a key set, for the log (`-` for a key without one).
fn kids(keys: &KeySet) -> String {
    let kids: Vec<&str> = keys
        .keys
        .iter()
        .map(|jwk| jwk.kid.as_deref().unwrap_or("-"))
        .collect();
    kids.join(", ")
}

/// What a good fetch changed, for the operator's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyChange {
    /// The provider's first keys: their `kid`s.
    Loaded(String),
    /// A key set different from the one before: the new `kid`s.
    Rotated(String),
    /// The same document as before.
    Unchanged,
}

/// `Cache-Control: max-age=N`, clamped to [[`MIN_TTL`], [`MAX_TTL`]].
fn max_age(headers: &[(String, String)]) -> Option<Duration> {
    let value = headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("cache-control"))
        .map(|(_, v)| v.as_str())?;
    let seconds: u64 = value.split(',').find_map(|directive| {
        let (name, n) = directive.trim().split_once('=')?;
        name.trim()
            .eq_ignore_ascii_case("max-age")
            .then(|| n.trim().parse().ok())?
    })?;
    Some(Duration::from_secs(seconds).clamp(MIN_TTL, MAX_TTL))
}

/// The keys in a fetch's answer, with the answer's body and `max-age`; or why the fetch failed
/// (for the operator's log: the status, the transport's error, or what is wrong with the body).
fn answer<'a>(
    provider: &Provider,
    result: &'a CalloutResult,
) -> Result<(KeySet, &'a [u8], Option<Duration>), String> {
    match result {
        CalloutResult::Failed(why) => Err(why.clone()),
        CalloutResult::Response {
            status: Some(200),
            headers,
            body,
        } => {
            if body.len() > jwks::MAX_JWKS_BYTES {
                return Err(format!(
                    "the body ({} bytes) is larger than {} bytes",
                    body.len(),
                    jwks::MAX_JWKS_BYTES
                ));
            }
            let keys = usable_keys(provider, body)?;
            Ok((keys, body, max_age(headers)))
        }
        CalloutResult::Response {
            status: Some(status),
            ..
        } => Err(format!("the key server answered {status}")),
        CalloutResult::Response { status: None, .. } => {
            Err("the key server's answer has no status".to_owned())
        }
    }
}

/// Handles the answer to a fetch: on success the document is shared under a new generation and
/// becomes this worker's copy; on failure the old keys stay and the next try backs off. Returns
/// what changed, or why the fetch failed.
pub fn fetched(
    provider: &Provider,
    remote: &Remote,
    copy: &mut Option<WorkerKeys>,
    result: CalloutResult,
    store: &dyn SharedStore,
    now: Time,
) -> Result<KeyChange, String> {
    let good = answer(provider, &result);
    let control_key = key(provider, "fetch");
    let (keys, body, ttl) = match good {
        Ok(good) => good,
        Err(why) => {
            let _ = store::update(store, &control_key, CAS_ATTEMPTS, |current| {
                let mut c = Control::decode(current);
                c.failures = c.failures.saturating_add(1);
                let backoff = Duration::from_secs(1u64 << c.failures.min(9)).min(MAX_BACKOFF);
                c.next_attempt = now.plus(backoff).as_nanos();
                // Never 0, which means "not failing".
                c.failed_at = now.as_nanos().max(1);
                c.lease_until = 0;
                c.wanted = 0;
                (Some(c.encode()), ())
            });
            return Err(why);
        }
    };
    let ttl = ttl.unwrap_or(remote.cache_duration);
    let before = store.get(&key(provider, "doc")).ok().flatten();
    let change = match before {
        None => KeyChange::Loaded(kids(&keys)),
        Some((old, _)) if old == body => KeyChange::Unchanged,
        Some(_) => KeyChange::Rotated(kids(&keys)),
    };
    // The document first, then the record naming its generation: a worker that sees the new
    // generation always finds the new (or an even newer) document.
    if let Err(e) = store.set(&key(provider, "doc"), body, None) {
        return Err(format!("cannot share the keys with the other workers: {e}"));
    }
    let refresh_at = now.plus(ttl.saturating_mul(4) / 5);
    let expires_at = now.plus(ttl);
    let meta = store::update(store, &key(provider, "meta"), CAS_ATTEMPTS, |current| {
        let next = Meta {
            generation: Meta::decode(current).generation.saturating_add(1),
            refresh_at: refresh_at.as_nanos(),
            expires_at: expires_at.as_nanos(),
        };
        (Some(next.encode()), next)
    });
    let _ = store::update(store, &control_key, CAS_ATTEMPTS, |current| {
        let mut c = Control::decode(current);
        c.lease_until = 0;
        c.next_attempt = 0;
        c.failures = 0;
        c.wanted = 0;
        c.failed_at = 0;
        (Some(c.encode()), ())
    });
    if let Ok(meta) = meta {
        *copy = Some(WorkerKeys {
            keys: Rc::new(keys),
            generation: meta.generation,
            refresh_at,
            expires_at,
        });
    }
    Ok(change)
}

/// Whether `provider`'s key server is known to be failing: its latest fetch failed and none
/// has succeeded since (a fetch under way does not count until it answers).
pub fn failing(provider: &Provider, store: &dyn SharedStore) -> bool {
    read(store, &key(provider, "fetch"), Control::decode).failed_at != 0
}

/// What asking for a refetch after an unknown `kid` gave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refetch {
    /// A refetch was asked for: wait for the next generation.
    Requested,
    /// One is already asked for or under way: wait for it too.
    InProgress,
    /// Too soon after the last one: the `kid` is unknown, answer now.
    Cooldown,
    /// The key server is known to be failing: answer now rather than hold the request for a
    /// fetch that will most likely fail too. (A refetch may still have been asked for, for the
    /// next try the backoff allows.)
    Failing,
}

/// Asks for a refetch of a provider's keys because a token named a `kid` they lack.
pub fn request_refetch(provider: &Provider, store: &dyn SharedStore, now: Time) -> Refetch {
    let now_ns = now.as_nanos();
    let cooldown = nanos(KID_MISS_COOLDOWN);
    store::update(store, &key(provider, "fetch"), CAS_ATTEMPTS, |current| {
        let mut c = Control::decode(current);
        let failing = c.failed_at != 0;
        if c.wanted != 0 || now_ns < c.lease_until {
            let wait = if failing {
                Refetch::Failing
            } else {
                Refetch::InProgress
            };
            return (None, wait);
        }
        if c.last_kid_refetch != 0 && now_ns.saturating_sub(c.last_kid_refetch) < cooldown {
            return (None, Refetch::Cooldown);
        }
        c.wanted = 1;
        c.last_kid_refetch = now_ns;
        let asked = if failing {
            Refetch::Failing
        } else {
            Refetch::Requested
        };
        (Some(c.encode()), asked)
    })
    .unwrap_or(Refetch::Cooldown)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Compiled, JwtAuthConfig, KeySource};
    use filter_core::config::parse;
    use filter_core::store::MemStore;
    use serde_json::json;

    const T0: u64 = 1_767_225_600;

    fn compiled() -> Compiled {
        compiled_with(json!({}))
    }

    /// The test provider with more `remote_jwks` members.
    fn compiled_with(extra: serde_json::Value) -> Compiled {
        let mut remote = json!({ "cluster": "keys", "path": "/jwks.json", "cache_duration": "10m", "timeout": "2s" });
        remote
            .as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        let config = json!({ "providers": { "idp": {
            "issuer": "https://issuer.example", "algorithms": ["EdDSA"], "remote_jwks": remote,
        } } });
        parse::<JwtAuthConfig>(config.to_string().as_bytes())
            .unwrap()
            .compile()
            .unwrap()
    }

    fn remote(c: &Compiled) -> (&Provider, &Remote) {
        let p = &c.providers[0];
        match &p.keys {
            KeySource::Remote(r) => (p, r),
            KeySource::Local(_) => panic!("expected a remote provider"),
        }
    }

    fn jwks_response(kid: &str, cache_control: Option<&str>) -> CalloutResult {
        let key = testkit::Key::generate(testkit::Alg::EdDSA, kid);
        CalloutResult::Response {
            status: Some(200),
            headers: cache_control
                .map(|v| vec![("cache-control".to_owned(), v.to_owned())])
                .unwrap_or_default(),
            body: testkit::jwks(&[&key]).into_bytes(),
        }
    }

    fn at(secs: u64) -> Time {
        Time::from_secs(secs)
    }

    fn at_ms(millis: u64) -> Time {
        Time::from_nanos(millis * 1_000_000)
    }

    fn garbage() -> CalloutResult {
        CalloutResult::Response {
            status: Some(200),
            headers: vec![],
            body: b"<html>not a key set</html>".to_vec(),
        }
    }

    /// The times (ms) at which a worker ticking every `step` ms from `from` until `until`
    /// starts fetches, the key server answering each with `answer(n)` (n counting fetches
    /// from 0) at once. A second worker ticks too, and must never start a fetch of its own.
    fn fetch_times(
        p: &Provider,
        r: &Remote,
        store: &MemStore,
        copy: &mut Option<WorkerKeys>,
        (from, until, step): (u64, u64, usize),
        answer: impl Fn(usize) -> CalloutResult,
    ) -> Vec<u64> {
        let mut other = copy.clone();
        let mut times = Vec::new();
        for t in (from..until).step_by(step) {
            if tick(p, r, 0, copy, store, at_ms(t)).is_some() {
                assert!(tick(p, r, 0, &mut other, store, at_ms(t)).is_none());
                let _ = fetched(p, r, copy, answer(times.len()), store, at_ms(t));
                times.push(t);
            }
            assert!(tick(p, r, 0, &mut other, store, at_ms(t)).is_none());
        }
        times
    }

    #[test]
    fn without_keys_a_failed_fetch_is_retried_after_failed_refetch_duration_never_doubled() {
        let start = T0 * 1000;
        for (extra, interval) in [
            (json!({}), 1000),
            (json!({ "failed_refetch_duration": "250ms" }), 300),
            (json!({ "failed_refetch_duration": "100ms" }), 100),
            (json!({ "failed_refetch_duration": "5m" }), 300_000),
        ] {
            let c = compiled_with(extra.clone());
            let (p, r) = remote(&c);
            let store = MemStore::new();
            let mut copy = None;
            // Fifteen minutes of garbage: a doubling backoff would have reached its 5 min cap.
            let until = start + 900_000;
            let times = fetch_times(p, r, &store, &mut copy, (start, until, 100), |_| garbage());
            let gaps: Vec<u64> = times.windows(2).map(|w| w[1] - w[0]).collect();
            assert_eq!(times.first(), Some(&start), "{extra}");
            // (250 ms on a 100 ms tick is 300 ms: the first tick at or after the time.)
            assert!(gaps.iter().all(|g| *g == interval), "{extra}: {gaps:?}");
            assert_eq!(
                times.len() as u64,
                900_000_u64.div_ceil(interval),
                "{extra}"
            );
            assert!(copy.is_none() && failing(p, &store));
        }
    }

    #[test]
    fn failed_refetch_duration_is_bounded() {
        for (value, ok) in [
            ("99ms", false),
            ("100ms", true),
            ("5m", true),
            ("301s", false),
        ] {
            let config = json!({ "providers": { "idp": {
                "issuer": "i", "algorithms": ["EdDSA"],
                "remote_jwks": { "cluster": "keys", "path": "/jwks.json", "failed_refetch_duration": value },
            } } });
            let compiled = parse::<JwtAuthConfig>(config.to_string().as_bytes())
                .unwrap()
                .compile();
            match compiled {
                Ok(_) => assert!(ok, "{value}"),
                Err(e) => {
                    assert!(!ok, "{value}");
                    assert_eq!(
                        e.to_string(),
                        "providers.idp.remote_jwks.failed_refetch_duration: must be between 100ms and 5m"
                    );
                }
            }
        }
        let c = compiled();
        assert_eq!(
            remote(&c).1.failed_refetch_duration,
            Duration::from_secs(1),
            "the default, as Envoy's"
        );
    }

    #[test]
    fn stale_keys_back_off_doubling_until_they_are_too_old_to_serve() {
        let start = T0 * 1000;
        let c = compiled();
        let (p, r) = remote(&c);
        let store = MemStore::new();
        let mut copy = None;
        // Keys for 30 s (refreshed at 24 s); then the key server fails for good.
        let good = |n: usize| {
            if n == 0 {
                jwks_response("k1", Some("max-age=30"))
            } else {
                garbage()
            }
        };
        let until = start + 3_600_000;
        let times = fetch_times(p, r, &store, &mut copy, (start, until, 100), good);
        let gaps: Vec<u64> = times.windows(2).map(|w| w[1] - w[0]).collect();
        let mut expected = vec![24_000];
        expected.extend([2, 4, 8, 16, 32, 64, 128, 256].map(|s| s * 1000));
        assert_eq!(gaps[..9], expected[..], "{gaps:?}");
        assert!(gaps[9..].iter().all(|g| *g == 300_000), "{gaps:?}");
        assert!(
            copy.as_ref().unwrap().usable(at_ms(until)),
            "stale keys serve"
        );
        // A day past their expiry they no longer serve: from then on, 1 s between tries, without
        // waiting for the rest of the backoff (the last failure 90 s before would have waited
        // 5 min).
        let expired = start + 30_000 + 86_400_000;
        let before = fetch_times(p, r, &store, &mut copy, (until, expired, 10_000), |_| {
            garbage()
        });
        let last = *before.last().unwrap();
        assert_eq!(expired - last, 90_000);
        let times = fetch_times(
            p,
            r,
            &store,
            &mut copy,
            (expired, expired + 10_000, 100),
            |_| garbage(),
        );
        assert!(!copy.as_ref().unwrap().usable(at_ms(expired)));
        assert_eq!(times[0], expired);
        let gaps: Vec<u64> = times.windows(2).map(|w| w[1] - w[0]).collect();
        assert!(
            gaps.len() == 9 && gaps.iter().all(|g| *g == 1000),
            "{gaps:?}"
        );
    }

    #[test]
    fn the_key_server_is_known_to_fail_from_a_failed_fetch_until_a_good_one() {
        let c = compiled();
        let (p, r) = remote(&c);
        let store = MemStore::new();
        let mut copy = None;
        assert!(!failing(p, &store), "nothing tried yet");
        assert!(tick(p, r, 0, &mut copy, &store, at(T0)).is_some());
        assert!(!failing(p, &store), "a fetch under way is no failure");
        assert!(fetched(p, r, &mut copy, garbage(), &store, at(T0)).is_err());
        assert!(failing(p, &store));
        assert!(tick(p, r, 0, &mut copy, &store, at(T0 + 1)).is_some());
        assert!(
            failing(p, &store),
            "still, while the next fetch is under way"
        );
        assert!(
            fetched(
                p,
                r,
                &mut copy,
                jwks_response("k1", None),
                &store,
                at(T0 + 1)
            )
            .is_ok()
        );
        assert!(!failing(p, &store), "a good fetch ends it at once");
        // With keys: a kid miss refetches, and the refetch fails.
        assert_eq!(request_refetch(p, &store, at(T0 + 2)), Refetch::Requested);
        assert!(tick(p, r, 0, &mut copy, &store, at(T0 + 2)).is_some());
        assert!(fetched(p, r, &mut copy, garbage(), &store, at(T0 + 2)).is_err());
        assert!(failing(p, &store));
        // Within the cooldown: answered at once, as always.
        assert_eq!(request_refetch(p, &store, at(T0 + 3)), Refetch::Cooldown);
        // After it: still answered at once, the key server failing; but a refetch is asked
        // for, for the next try the backoff allows (2 s after the failure: long past).
        assert_eq!(request_refetch(p, &store, at(T0 + 40)), Refetch::Failing);
        assert_eq!(
            request_refetch(p, &store, at(T0 + 40)),
            Refetch::Failing,
            "asked"
        );
        assert!(tick(p, r, 0, &mut copy, &store, at(T0 + 40)).is_some());
        assert_eq!(
            request_refetch(p, &store, at(T0 + 40)),
            Refetch::Failing,
            "under way"
        );
        assert!(
            fetched(
                p,
                r,
                &mut copy,
                jwks_response("k2", None),
                &store,
                at(T0 + 40)
            )
            .is_ok()
        );
        assert!(!failing(p, &store));
        assert_eq!(copy.as_ref().map(|k| k.generation), Some(2));
        // Back to normal at once: the next kid miss (after the cooldown) waits for a refetch.
        assert_eq!(request_refetch(p, &store, at(T0 + 80)), Refetch::Requested);
    }

    #[test]
    fn one_fetch_serves_every_worker() {
        let c = compiled();
        let (p, r) = remote(&c);
        let store = MemStore::new();
        let (mut a, mut b) = (None, None);
        let callout = tick(p, r, 0, &mut a, &store, at(T0)).expect("cold start fetches");
        assert_eq!(
            (
                callout.cluster.as_str(),
                callout.path.as_str(),
                callout.authority.as_str()
            ),
            ("keys", "/jwks.json", "keys")
        );
        // The other worker sees the lease: no second fetch.
        assert!(tick(p, r, 0, &mut b, &store, at(T0)).is_none());
        assert!(fetched(p, r, &mut a, jwks_response("k1", None), &store, at(T0)).is_ok());
        assert_eq!(a.as_ref().map(|k| k.generation), Some(1));
        // Worker b copies the shared keys on its next tick, without fetching.
        assert!(tick(p, r, 0, &mut b, &store, at(T0)).is_none());
        assert_eq!(b.as_ref().map(|k| k.generation), Some(1));
        assert!(
            b.as_ref()
                .unwrap()
                .keys
                .candidates(crate::alg::Alg::EdDSA, Some("k1"))
                .next()
                .is_some()
        );
        // Refresh at 80% of the cache duration (10m): 480 s.
        assert!(tick(p, r, 0, &mut b, &store, at(T0 + 479)).is_none());
        assert!(tick(p, r, 0, &mut b, &store, at(T0 + 480)).is_some());
    }

    #[test]
    fn max_age_is_honoured_within_bounds() {
        let c = compiled();
        let (p, r) = remote(&c);
        for (header, ttl) in [
            ("public, max-age=100", 100),
            ("max-age=5", 30),
            ("max-age=999999", 86_400),
        ] {
            let store = MemStore::new();
            let mut copy = None;
            let _ = tick(p, r, 0, &mut copy, &store, at(T0));
            assert!(
                fetched(
                    p,
                    r,
                    &mut copy,
                    jwks_response("k", Some(header)),
                    &store,
                    at(T0)
                )
                .is_ok()
            );
            assert_eq!(copy.unwrap().expires_at, at(T0 + ttl), "{header}");
        }
    }

    #[test]
    fn failures_keep_the_old_keys_and_back_off() {
        let c = compiled();
        let (p, r) = remote(&c);
        let store = MemStore::new();
        let mut copy = None;
        let _ = tick(p, r, 0, &mut copy, &store, at(T0));
        assert!(fetched(p, r, &mut copy, jwks_response("k1", None), &store, at(T0)).is_ok());
        let refresh = T0 + 480;
        assert!(tick(p, r, 0, &mut copy, &store, at(refresh)).is_some());
        // Each failure says why, for the operator's log.
        let bad = [
            (
                CalloutResult::Failed("no response (timed out, reset or refused)".into()),
                "no response (timed out, reset or refused)",
            ),
            (
                CalloutResult::Response {
                    status: Some(503),
                    headers: vec![],
                    body: vec![],
                },
                "the key server answered 503",
            ),
            (
                CalloutResult::Response {
                    status: Some(200),
                    headers: vec![],
                    body: b"not json".to_vec(),
                },
                "JWKS is not valid JSON",
            ),
            (
                CalloutResult::Response {
                    status: Some(200),
                    headers: vec![],
                    body: br#"{"keys":[]}"#.to_vec(),
                },
                "no key in the set fits the provider's algorithms (0 usable, 0 skipped)",
            ),
        ];
        for (i, (result, why)) in bad.into_iter().enumerate() {
            let now = refresh + 1000 * i as u64;
            let _ = tick(p, r, 0, &mut copy, &store, at(now));
            assert_eq!(
                fetched(p, r, &mut copy, result, &store, at(now)),
                Err(why.to_owned())
            );
            assert_eq!(
                copy.as_ref().map(|k| k.generation),
                Some(1),
                "old keys stay"
            );
        }
        // Four failures: the next try waits 16 s.
        let last = refresh + 3000;
        assert!(tick(p, r, 0, &mut copy, &store, at(last + 15)).is_none());
        assert!(tick(p, r, 0, &mut copy, &store, at(last + 16)).is_some());
        // Stale keys serve until a day past their expiry.
        let keys = copy.unwrap();
        assert!(keys.usable(at(T0 + 600 + 86_399)));
        assert!(!keys.usable(at(T0 + 600 + 86_400)));
    }

    #[test]
    fn kid_misses_refetch_at_most_once_per_cooldown() {
        let c = compiled();
        let (p, r) = remote(&c);
        let store = MemStore::new();
        let mut copy = None;
        let _ = tick(p, r, 0, &mut copy, &store, at(T0));
        assert!(fetched(p, r, &mut copy, jwks_response("k1", None), &store, at(T0)).is_ok());
        assert_eq!(request_refetch(p, &store, at(T0 + 1)), Refetch::Requested);
        assert_eq!(request_refetch(p, &store, at(T0 + 1)), Refetch::InProgress);
        assert!(
            tick(p, r, 0, &mut copy, &store, at(T0 + 1)).is_some(),
            "wanted: fetch now"
        );
        assert_eq!(
            request_refetch(p, &store, at(T0 + 1)),
            Refetch::InProgress,
            "leased"
        );
        assert!(
            fetched(
                p,
                r,
                &mut copy,
                jwks_response("k2", None),
                &store,
                at(T0 + 2)
            )
            .is_ok()
        );
        assert_eq!(copy.as_ref().map(|k| k.generation), Some(2));
        // A flood of unknown kids right after: no fetch storm.
        for s in 3..31 {
            assert_eq!(request_refetch(p, &store, at(T0 + s)), Refetch::Cooldown);
        }
        assert_eq!(request_refetch(p, &store, at(T0 + 31)), Refetch::Requested);
    }

    #[test]
    fn a_good_fetch_says_whether_the_key_set_changed() {
        let c = compiled();
        let (p, r) = remote(&c);
        let store = MemStore::new();
        let mut copy = None;
        let first = jwks_response("k1", None);
        assert_eq!(
            fetched(p, r, &mut copy, first.clone(), &store, at(T0)),
            Ok(KeyChange::Loaded("k1".to_owned()))
        );
        assert_eq!(
            fetched(p, r, &mut copy, first, &store, at(T0 + 480)),
            Ok(KeyChange::Unchanged)
        );
        assert_eq!(
            fetched(
                p,
                r,
                &mut copy,
                jwks_response("k2", None),
                &store,
                at(T0 + 960)
            ),
            Ok(KeyChange::Rotated("k2".to_owned()))
        );
        let oversized = CalloutResult::Response {
            status: Some(200),
            headers: vec![],
            body: vec![b' '; jwks::MAX_JWKS_BYTES + 1],
        };
        assert_eq!(
            fetched(p, r, &mut copy, oversized, &store, at(T0 + 970)),
            Err(format!(
                "the body ({} bytes) is larger than {} bytes",
                jwks::MAX_JWKS_BYTES + 1,
                jwks::MAX_JWKS_BYTES
            ))
        );
    }

    #[test]
    fn hostile_shared_records_decode_to_defaults() {
        for junk in [
            &b""[..],
            b"x y z",
            b"1 2",
            "\u{ff}".as_bytes(),
            b"99999999999999999999999 1 1",
        ] {
            let _ = Meta::decode(Some(junk));
            let _ = Control::decode(Some(junk));
        }
        assert_eq!(
            Meta::decode(Some(b"3 4 5")),
            Meta {
                generation: 3,
                refresh_at: 4,
                expires_at: 5
            }
        );
    }
}
