//! A rate limit service for tests and the demo: Envoy's gRPC protocol
//! (`envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit`) over Kuadrant's
//! [`limitador`] crate. It is glue only: Limitador decides and counts.
//!
//! ```text
//! rls-server --limits FILE [--listen 127.0.0.1:0] [--redis redis://127.0.0.1:PORT]
//!            [--delay-ms N] [--verbose]
//! ```
//!
//! - `--limits FILE`: the limits, a YAML list in Limitador's own format (`namespace`,
//!   `max_value`, `seconds`, `conditions`, `variables`, optional `name` and `id`), read with
//!   Limitador's own types. A key Limitador does not know, a missing `max_value` (Limitador
//!   would take 0) and `seconds: 0` are refused. Errors name the limit and field
//!   (`limits file F: [1].conditions: ...`) and the server exits with status 1.
//! - `--listen ADDR`: where to listen (default `127.0.0.1:0`; port 0 picks a free port).
//!   Once listening, the server prints exactly one line to stdout, `listening on ADDR:PORT`.
//! - `--redis URL`: counters in Redis (Limitador's `AsyncRedisStorage`: every check goes to
//!   Redis, so servers on one Redis share their counters; Redis must answer within 5 s of the
//!   start, or the server exits with status 1). Without it, counters are in memory (exact,
//!   this process only).
//! - `--delay-ms N`: answer every call N ms late (tests of a slow service).
//! - `--verbose`: one line per request on stderr.
//!
//! SIGTERM and SIGKILL just stop it; there is no state to save.
//!
//! # Semantics of one request
//!
//! - The request's `domain` is Limitador's namespace.
//! - Each descriptor is checked on its own: the context Limitador sees for descriptor *i* is
//!   that descriptor alone, as `descriptors[0]`, so conditions and variables say
//!   `descriptors[0].<key>`, as for Limitador's own server (a key given twice keeps its last
//!   value).
//! - Hits: the descriptor's `hits_addend` when set, else the request's `hits_addend`; 0 counts
//!   as 1 (Envoy's rule for the request's field, applied to both).
//! - Descriptors are checked and updated one after another, each with Limitador's
//!   `check_rate_limited_and_update` (for one descriptor, all its counters are charged or
//!   none). Each descriptor is charged whether or not another descriptor of the request is
//!   over its limit, as in Envoy's own rate limit service. A limit that applies to two
//!   descriptors of one request is charged twice. The answer is `OVER_LIMIT` when any
//!   descriptor is over.
//! - `statuses` has one entry per descriptor, in order: `code` (`OK` or `OVER_LIMIT`), and from
//!   the counter closest to its limit (fewest remaining; of those, the longest until reset):
//!   `current_limit` (`name` = the limit's `name` or empty, `requests_per_unit` = `max_value`,
//!   `unit` = SECOND, MINUTE, HOUR or DAY when `seconds` is exactly 1, 60, 3600 or 86400, else
//!   UNKNOWN with `max_value` unchanged, since rescaling would state a different limit),
//!   `limit_remaining` (after this request's hits when admitted; unchanged when over) and
//!   `duration_until_reset` (the counter's expiry). A descriptor no limit applies to (or an
//!   unknown domain) gets `OK` with no `current_limit`.
//! - Not supported: a descriptor's `limit` override is ignored (the file's limits apply);
//!   `is_negative_hits` gets `INVALID_ARGUMENT` before anything is charged.
//! - Errors: a Redis failure gets `UNAVAILABLE`; a limit whose condition or variable cannot be
//!   evaluated for the descriptor (a condition that yields no boolean, say) `INTERNAL`. The
//!   descriptors before the failing one stay charged.
//!
//! # Which Limitador
//!
//! limitador 0.14.0 (the newest), `default-features = false` with `redis_storage`, patched:
//! every published version with `redis_storage` (0.11.0 to 0.14.0) gates the module
//! `storage::keys::bin`, which the Redis storage uses, on `disk_storage`, so they build only
//! with `disk_storage`, that is with RocksDB, whose C++ build from source takes far too long
//! on a small machine. No feature combination avoids it, and the versions before 0.11 (0.7.0
//! and older) have their own condition language instead of CEL's `descriptors[0].<key>`. So
//! the workspace `[patch]`es limitador with its published 0.14.0 source, in
//! `tests/vendor/limitador`, with those gates widened to `redis_storage` (three lines,
//! `tests/vendor/limitador/PATCHED.md`).

mod limits;
mod service;

use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_server::RateLimitServiceServer;
use limitador::storage::redis::AsyncRedisStorage;
use limitador::{AsyncRateLimiter, RateLimiter};
use service::{Conditions, Limiter, MEMORY_COUNTERS, Service};
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;

const USAGE: &str = "usage: rls-server --limits FILE [--listen 127.0.0.1:0] \
                     [--redis redis://127.0.0.1:PORT] [--delay-ms N] [--verbose]";

/// How long the server waits for Redis at start.
const REDIS_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug)]
struct Options {
    limits: PathBuf,
    listen: SocketAddr,
    redis: Option<String>,
    delay: Duration,
    verbose: bool,
}

fn options(mut args: impl Iterator<Item = String>) -> Result<Options, String> {
    let mut limits = None;
    let mut listen = SocketAddr::from(([127, 0, 0, 1], 0));
    let mut redis = None;
    let mut delay = Duration::ZERO;
    let mut verbose = false;
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or(format!("{arg} needs a value"));
        match arg.as_str() {
            "--limits" => limits = Some(PathBuf::from(value()?)),
            "--listen" => {
                let text = value()?;
                listen = text
                    .parse()
                    .map_err(|e| format!("--listen {text}: {e} (expected IP:PORT)"))?;
            }
            "--redis" => redis = Some(value()?),
            "--delay-ms" => {
                let text = value()?;
                let ms = text
                    .parse()
                    .map_err(|e| format!("--delay-ms {text}: {e}"))?;
                delay = Duration::from_millis(ms);
            }
            "--verbose" => verbose = true,
            other => return Err(format!("unknown argument {other}")),
        }
    }
    let limits = limits.ok_or("--limits FILE is required")?;
    Ok(Options {
        limits,
        listen,
        redis,
        delay,
        verbose,
    })
}

#[tokio::main]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--help" || a == "-h") {
        println!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    let options = match options(args.into_iter()) {
        Ok(options) => options,
        Err(e) => {
            eprintln!("rls-server: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(options).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rls-server: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(options: Options) -> Result<(), String> {
    let limits = limits::load(&options.limits)?;
    let conditions = Conditions::of(&limits);
    let limiter = match &options.redis {
        None => Limiter::Memory(RateLimiter::new(MEMORY_COUNTERS)),
        Some(url) => {
            // The connection manager retries an unreachable Redis forever: a server that
            // cannot count should say so and stop, not wait silently.
            let storage = tokio::time::timeout(REDIS_CONNECT_TIMEOUT, AsyncRedisStorage::new(url))
                .await
                .map_err(|_| {
                    format!(
                        "cannot use Redis at {url}: no connection within {} s",
                        REDIS_CONNECT_TIMEOUT.as_secs()
                    )
                })?
                .map_err(|e| format!("cannot use Redis at {url}: {e}"))?;
            Limiter::Redis(AsyncRateLimiter::new_with_storage(Box::new(storage)))
        }
    };
    limiter
        .configure(limits)
        .await
        .map_err(|e| format!("cannot load the limits: {e}"))?;

    let listener = tokio::net::TcpListener::bind(options.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", options.listen))?;
    let address = listener
        .local_addr()
        .map_err(|e| format!("cannot read the listening address: {e}"))?;
    // The one line tests wait for to learn the port; flushed, since stdout is a pipe there.
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "listening on {address}")
        .and_then(|()| stdout.flush())
        .map_err(|e| format!("cannot write to stdout: {e}"))?;
    drop(stdout);

    let service = Service {
        limiter,
        conditions,
        delay: options.delay,
        verbose: options.verbose,
    };
    Server::builder()
        .add_service(RateLimitServiceServer::new(service))
        .serve_with_incoming(TcpIncoming::from(listener).with_nodelay(Some(true)))
        .await
        .map_err(|e| format!("serving: {e}"))
}

#[cfg(test)]
mod tests {
    use super::options;

    fn parse(args: &[&str]) -> Result<super::Options, String> {
        options(args.iter().map(|a| (*a).to_owned()))
    }

    #[test]
    fn flags() {
        let o = parse(&["--limits", "l.yaml"]).unwrap();
        assert_eq!(o.listen.to_string(), "127.0.0.1:0");
        assert_eq!(o.redis, None);
        assert!(o.delay.is_zero() && !o.verbose);

        let o = parse(&[
            "--listen",
            "127.0.0.1:7000",
            "--limits",
            "l.yaml",
            "--redis",
            "redis://127.0.0.1:6400",
            "--delay-ms",
            "2000",
            "--verbose",
        ])
        .unwrap();
        assert_eq!(o.listen.port(), 7000);
        assert_eq!(o.redis.as_deref(), Some("redis://127.0.0.1:6400"));
        assert_eq!(o.delay.as_millis(), 2000);
        assert!(o.verbose);

        assert_eq!(parse(&[]).unwrap_err(), "--limits FILE is required");
        assert_eq!(parse(&["--limits"]).unwrap_err(), "--limits needs a value");
        assert!(parse(&["--limits", "l", "--port", "1"]).is_err());
        assert!(parse(&["--limits", "l", "--listen", "localhost:1"]).is_err());
        assert!(parse(&["--limits", "l", "--delay-ms", "-1"]).is_err());
    }
}
