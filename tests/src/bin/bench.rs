//! `make bench`: what each filter costs Envoy per request, beside Envoy's native filters.
//!
//! One native Envoy, `--concurrency 1`, pinned to one core; the load generators pinned to the
//! other. One listener per variant, all in the same process, so every variant runs in the same
//! minutes on the same machine. Rounds interleave the variants (A B C ..., then ... C B A), and
//! each variant's figure is the median over rounds; this machine drifts by half within
//! minutes, so only ratios taken inside one run mean anything.
//!
//! Per variant and round: a warm-up; closed-loop throughput (`wrk`, 16 connections), during
//! which Envoy's CPU time is read from `/proc/<pid>/stat`: CPU per request = CPU time /
//! requests answered; then a fixed request rate below saturation (`oha`, latency-corrected)
//! for latency. CPU per request is taken while Envoy is saturated because that figure held
//! within ±0.5 µs between rounds, even with a compiler running beside it; at a fixed low rate
//! each request also pays for waking Envoy up, and the same figure swung by ±30 %. (The round
//! lines still print the fixed-rate figure, for the curious.)
//!
//! Then a second Envoy, `--concurrency 2` with every module loaded, is flooded with distinct
//! rate-limit keys to show that its memory stays bounded.
//!
//! `bench --smoke` does the same in seconds, with one round, and judges nothing (`make test`
//! runs it). Every variant is first checked to answer as its config says (a JWT filter that
//! refused the token would be measured doing the wrong thing).

use filter_tests::bench_config::{
    self, AUDIENCE, ISSUER, PASSTHROUGH_NOOP, PASSTHROUGH_ONE, circuit_breaker_config,
    four_configs, gateway_config, hot_key, jwt_auth_config, rate_limit_config, retry_policy_config,
};
use filter_tests::client;
use filter_tests::envoy::{Envoy, Launch, Mode};
use filter_tests::rls::{RlsServer, Storage};
use filter_tests::tokens::{self, Alg, Key};
use serde_json::{Value, json};
use std::fmt::Write as _;
use std::process::Command;

/// How long each phase runs, and how often.
#[derive(Debug, Clone)]
struct Plan {
    rounds: usize,
    warmup_secs: u32,
    closed_secs: u32,
    fixed_secs: u32,
    /// The fixed request rate (per second): below the slowest variant's saturation.
    rate: u32,
    smoke: bool,
    /// Also the variants measured for earlier issues.
    extras: bool,
    /// Only the variants whose names contain one of these (all when empty); `none` always runs.
    only: Vec<String>,
}

impl Plan {
    fn from_args() -> Plan {
        let mut plan = Plan {
            rounds: 3,
            warmup_secs: 1,
            closed_secs: 3,
            fixed_secs: 2,
            rate: 2000,
            smoke: false,
            extras: false,
            only: Vec::new(),
        };
        let mut args = std::env::args().skip(1);
        while let Some(arg) = args.next() {
            let mut value = |name: &str| -> u32 {
                args.next()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or_else(|| fail(&format!("{name} needs a number")))
            };
            match arg.as_str() {
                "--smoke" => {
                    plan = Plan {
                        rounds: 1,
                        warmup_secs: 1,
                        closed_secs: 1,
                        fixed_secs: 1,
                        rate: 200,
                        smoke: true,
                        extras: plan.extras,
                        only: plan.only,
                    }
                }
                "--extras" => plan.extras = true,
                "--rounds" => plan.rounds = value("--rounds") as usize,
                "--rate" => plan.rate = value("--rate"),
                "--seconds" => plan.fixed_secs = value("--seconds"),
                "--only" => plan.only.extend(args.next()),
                other => fail(&format!(
                    "unknown argument {other:?}; use --smoke, --extras, --rounds N, --rate R, \
                     --seconds S, --only NAME-PART"
                )),
            }
        }
        plan
    }
}

fn fail(why: &str) -> ! {
    eprintln!("bench: {why}");
    std::process::exit(2)
}

/// The filters of one listener, and what it is compared with.
#[derive(Debug, Clone)]
struct Variant {
    name: &'static str,
    /// `http_filters` entries, before the router.
    filters: Vec<Value>,
    /// The native variant doing the same job, for the ratio column.
    native_peer: Option<&'static str>,
    /// The status a request without a token gets (401 where a JWT filter guards the route).
    status_without_token: u16,
    /// The key that signs the token every request of this variant carries.
    signer: Signer,
    /// Whether its route goes to a cluster (a second listener of the same Envoy that answers
    /// directly) rather than answering itself: Envoy's `ratelimit` filter does nothing on a
    /// route without a cluster.
    routed: bool,
}

/// The keys of the benchmark's token issuer; every variant's key set holds all of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Signer {
    Rs256,
    Es256,
    Es512,
}

impl Signer {
    const ALL: [Signer; 3] = [Signer::Rs256, Signer::Es256, Signer::Es512];

    fn alg(self) -> Alg {
        match self {
            Signer::Rs256 => Alg::RS256,
            Signer::Es256 => Alg::ES256,
            Signer::Es512 => Alg::ES512,
        }
    }
}

fn wasm_filter(module: &str, config: &Value) -> Value {
    let path = filter_tests::wasm::module(module);
    json!({
        "name": module,
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
            "config": {
                "name": module,
                "configuration": {
                    "@type": "type.googleapis.com/google.protobuf.StringValue",
                    "value": match config {
                        Value::String(text) => text.clone(),
                        other => other.to_string(),
                    },
                },
                "failure_policy": "FAIL_CLOSED",
                // One VM per module, shared by every listener that loads it, as in a gateway.
                "vm_config": {
                    "vm_id": module,
                    "runtime": "envoy.wasm.runtime.v8",
                    "code": { "local": { "filename": path.display().to_string() } },
                },
            },
        },
    })
}

/// The host calls `jwt_auth` makes for a request whose token it has verified before (its
/// metrics are handed to Envoy once a second, not per request), as `tests/host_calls` fixes
/// them.
const JWT_HIT_CALLS: &str = "now,get=authorization,remove=authorization,set=x-user-id";

/// The host calls `gateway.wasm` makes for a request all four policies let through (cached
/// token), as `tests/host_calls` fixes them: at request headers, the time, jwt_auth's token,
/// rate_limit's compare-and-swap write (the bucket remembered from this worker's last write),
/// circuit_breaker's record and the request's `content-type`, retry_policy's method and
/// internal-client reads, then the merged edits; at response headers, the attempt count, the
/// status and details, the time, the breaker's write (with the token of its read) and
/// rate_limit's two header fields.
const GATEWAY_CALLS: &str = "now,get=authorization,sset=rl1/bench/8364,sget=cb2/bench,\
    get=content-type,get=:method,get=x-envoy-internal,\
    remove=authorization,set=x-user-id,set=x-envoy-retry-on,set=x-envoy-max-retries\
    |prop=upstream/request_attempt_count,get=:status,prop=response/code_details,now,\
    sset=cb2/bench,set=ratelimit-policy,set=ratelimit";

/// The bare-SDK fixture making exactly these host calls (see `filters/passthrough`).
fn ops(calls: &str) -> Value {
    wasm_filter("passthrough", &json!(format!("ops:{calls}")))
}

fn jwt_auth(jwks: &str, cache_size: u64) -> Value {
    wasm_filter("jwt_auth", &jwt_auth_config(jwks, cache_size))
}

fn native_jwt_authn(jwks: &str, cached: bool) -> Value {
    let mut provider = json!({
        "issuer": ISSUER,
        "audiences": [AUDIENCE],
        "local_jwks": { "inline_string": jwks },
        "claim_to_headers": [ { "claim_name": "sub", "header_name": "x-user-id" } ],
    });
    if cached {
        provider["jwt_cache_config"] = json!({ "jwt_cache_size": 1000 });
    }
    json!({
        "name": "envoy.filters.http.jwt_authn",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication",
            "providers": { "idp": provider },
            "rules": [ { "match": { "prefix": "/" }, "requires": { "provider_name": "idp" } } ],
        },
    })
}

/// One rule with `key`, whose limit no benchmark reaches: the limiter runs, never refuses.
fn rate_limit(key: Value) -> Value {
    wasm_filter("rate_limit", &rate_limit_config(key))
}

fn native_local_ratelimit() -> Value {
    let percent = json!({ "default_value": { "numerator": 100, "denominator": "HUNDRED" } });
    json!({
        "name": "envoy.filters.http.local_ratelimit",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit",
            "stat_prefix": "bench",
            // A bucket no benchmark can empty: the limiter runs but never limits.
            "token_bucket": { "max_tokens": 1_000_000_000u64, "tokens_per_fill": 1_000_000_000u64,
                              "fill_interval": "1s" },
            "filter_enabled": percent,
            "filter_enforced": percent,
        },
    })
}

/// The rate limit service's cluster, and the domains the two global variants use (each its own,
/// so the service's log shows that both called it).
const RLS_CLUSTER: &str = "rls";
const NATIVE_DOMAIN: &str = "bench-native";
const WASM_DOMAIN: &str = "bench-wasm";

/// Limitador limits no benchmark reaches, per user, in both domains.
fn rls_limits() -> String {
    [NATIVE_DOMAIN, WASM_DOMAIN]
        .iter()
        .map(|domain| {
            format!(
                "- namespace: {domain}\n  max_value: 1000000000000\n  seconds: 60\n  \
                 conditions: []\n  variables: [\"descriptors[0].user\"]\n"
            )
        })
        .collect()
}

/// A global rule for one user (a fixed descriptor, as the benchmark's requests carry no user
/// header), counted by the service on loopback; 1 s timeout, so a slow
/// moment of this machine is measured rather than failed open.
fn rate_limit_global() -> Value {
    wasm_filter(
        "rate_limit",
        &json!({
            "services": { "rls": { "cluster": RLS_CLUSTER, "domain": WASM_DOMAIN, "timeout": "1s" } },
            // Like for like: Envoy's filter adds no header fields unless asked.
            "headers": "none",
            "rules": [ { "name": "bench", "global": {
                "descriptor": [ { "key": "user", "value": { "literal": "user-42" } } ],
            } } ],
        }),
    )
}

/// Envoy's `ratelimit` filter with the same descriptor, against the same service.
fn native_ratelimit() -> Value {
    json!({
        "name": "envoy.filters.http.ratelimit",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.ratelimit.v3.RateLimit",
            "domain": NATIVE_DOMAIN,
            "timeout": "1s",
            "rate_limit_service": {
                "transport_api_version": "V3",
                "grpc_service": { "envoy_grpc": { "cluster_name": RLS_CLUSTER } },
            },
            // Filter-level descriptors: the benchmark's routes answer directly, and
            // route-level rate_limits live on a route to a cluster.
            "rate_limits": [ { "actions": [ {
                "generic_key": { "descriptor_key": "user", "descriptor_value": "user-42" },
            } ] } ],
        },
    })
}

/// The four filters, in the gateway's order.
const FOUR: [&str; 4] = filter_tests::wasm::FILTERS;

/// `gateway.wasm` with the same four configurations as members.
fn gateway(jwks: &str) -> Value {
    wasm_filter("gateway", &gateway_config(jwks))
}

/// `variant`, routed through a cluster (see [`Variant::routed`]).
fn routed(variant: Variant) -> Variant {
    Variant {
        routed: true,
        ..variant
    }
}

/// The variants the performance targets are judged on and a few that explain them; `extras`
/// adds ones measured for earlier issues.
fn variants(jwks: &str, extras: bool) -> Vec<Variant> {
    let v = |name, filters, native_peer, status_without_token| Variant {
        name,
        filters,
        native_peer,
        status_without_token,
        signer: Signer::Rs256,
        routed: false,
    };
    // Uncached elliptic-curve tokens beside native jwt_authn verifying the same tokens.
    let signed = |signer, name, filters, native_peer| Variant {
        signer,
        ..v(name, filters, native_peer, 401)
    };
    let mut all = vec![
        v("none", vec![], None, 200),
        v(
            "passthrough (bare SDK: 1 header read, 1 set)",
            vec![wasm_filter("passthrough", &json!(PASSTHROUGH_ONE))],
            None,
            200,
        ),
        v(
            "wasm no-op (bare SDK)",
            vec![wasm_filter("passthrough", &json!(PASSTHROUGH_NOOP))],
            None,
            200,
        ),
        // jwt_auth's host calls on a cache hit, alone: what the calls cost, apart from the
        // filter's own work (the gateway's are priced the same way below).
        v(
            "calls of jwt_auth cached (bare SDK)",
            vec![ops(JWT_HIT_CALLS)],
            None,
            200,
        ),
        v(
            "our host layer, empty policy",
            // A rate limiter without rules: our host layer around a policy that does nothing.
            vec![wasm_filter("rate_limit", &json!({}))],
            None,
            200,
        ),
        v(
            "jwt_auth RS256, cached",
            vec![jwt_auth(jwks, 1000)],
            Some("native jwt_authn, cached"),
            401,
        ),
        v(
            "jwt_auth RS256, uncached",
            vec![jwt_auth(jwks, 0)],
            Some("native jwt_authn, uncached"),
            401,
        ),
        v(
            "native jwt_authn, cached",
            vec![native_jwt_authn(jwks, true)],
            None,
            401,
        ),
        v(
            "native jwt_authn, uncached",
            vec![native_jwt_authn(jwks, false)],
            None,
            401,
        ),
        signed(
            Signer::Es256,
            "jwt_auth ES256, uncached",
            vec![jwt_auth(jwks, 0)],
            Some("native jwt_authn ES256, uncached"),
        ),
        signed(
            Signer::Es256,
            "native jwt_authn ES256, uncached",
            vec![native_jwt_authn(jwks, false)],
            None,
        ),
        signed(
            Signer::Es512,
            "jwt_auth ES512, uncached",
            vec![jwt_auth(jwks, 0)],
            Some("native jwt_authn ES512, uncached"),
        ),
        signed(
            Signer::Es512,
            "native jwt_authn ES512, uncached",
            vec![native_jwt_authn(jwks, false)],
            None,
        ),
        v(
            "rate_limit, hot key (one bucket for all)",
            vec![rate_limit(hot_key())],
            Some("native local_ratelimit"),
            200,
        ),
        v(
            "circuit_breaker, closed",
            vec![wasm_filter("circuit_breaker", &circuit_breaker_config())],
            None,
            200,
        ),
        v(
            "retry_policy, one rule",
            vec![wasm_filter("retry_policy", &retry_policy_config())],
            None,
            200,
        ),
        v(
            "the four filters chained (four entries)",
            FOUR.iter()
                .zip(four_configs(jwks))
                .map(|(module, config)| wasm_filter(module, &config))
                .collect(),
            Some("native jwt_authn, cached + local_ratelimit"),
            401,
        ),
        v(
            "gateway.wasm, the four in one entry",
            vec![gateway(jwks)],
            Some("native jwt_authn, cached + local_ratelimit"),
            401,
        ),
        v(
            "calls of gateway.wasm (bare SDK)",
            vec![ops(GATEWAY_CALLS)],
            None,
            200,
        ),
        v(
            "native jwt_authn, cached + local_ratelimit",
            vec![native_jwt_authn(jwks, true), native_local_ratelimit()],
            None,
            401,
        ),
        v(
            "native local_ratelimit",
            vec![native_local_ratelimit()],
            None,
            200,
        ),
        routed(v("routed, no filter", vec![], None, 200)),
        routed(v(
            "rate_limit, global rule (routed; service on loopback)",
            vec![rate_limit_global()],
            Some("native ratelimit (routed; service on loopback)"),
            200,
        )),
        routed(v(
            "rls call (bare SDK; routed; service on loopback)",
            vec![wasm_filter(
                "passthrough",
                &json!(format!("rls:{RLS_CLUSTER}")),
            )],
            None,
            200,
        )),
        routed(v(
            "native ratelimit (routed; service on loopback)",
            vec![native_ratelimit()],
            None,
            200,
        )),
    ];
    if extras {
        all.extend([
            v(
                "rate_limit, per client address",
                vec![rate_limit(json!([{ "client_ip": {} }]))],
                Some("native local_ratelimit"),
                200,
            ),
            v(
                "retry_policy, rule + budget + retry_after",
                vec![wasm_filter(
                    "retry_policy",
                    &json!({
                        "rules": [ { "retry_on": ["5xx", "reset"], "num_retries": 2 } ],
                        "budget": { "retry_ratio": 0.2 },
                        "retry_after": {},
                    }),
                )],
                None,
                200,
            ),
        ]);
    }
    all
}

/// The cluster routed variants go to, and the listener behind it.
const SINK: &str = "sink";

fn listener(index: usize, variant: &Variant) -> Value {
    let mut route = json!({ "match": { "prefix": "/" } });
    if variant.routed {
        route["route"] = json!({ "cluster": SINK });
    } else {
        route["direct_response"] = json!({ "status": 200, "body": { "inline_string": "ok" } });
    }
    let mut filters = variant.filters.clone();
    filters.push(json!({
        "name": "envoy.filters.http.router",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router",
            "dynamic_stats": false,
        },
    }));
    json!({
        "name": format!("v{index}"),
        "address": { "socket_address": { "address": "127.0.0.1", "port_value": 0 } },
        "filter_chains": [ { "filters": [ {
            "name": "envoy.filters.network.http_connection_manager",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                "stat_prefix": format!("v{index}"),
                "generate_request_id": false,
                "route_config": { "virtual_hosts": [ {
                    "name": "all",
                    "domains": ["*"],
                    "routes": [ route ],
                } ] },
                "http_filters": filters,
            },
        } ] } ],
    })
}

/// A static cluster of one endpoint on 127.0.0.1.
fn cluster(name: &str, port: u16) -> Value {
    json!({
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [ { "lb_endpoints": [ { "endpoint": { "address": {
                "socket_address": { "address": "127.0.0.1", "port_value": port },
            } } } ] } ],
        },
    })
}

/// Envoy's configuration as JSON (which Envoy reads as YAML), with the rate limit service's
/// cluster (HTTP/2) at `rls_port`, and the sink routed variants go to.
fn envoy_config(variants: &[Variant], rls_port: u16) -> String {
    let sink_port = filter_tests::free_port();
    let sink = Variant {
        name: SINK,
        filters: Vec::new(),
        native_peer: None,
        status_without_token: 200,
        signer: Signer::Rs256,
        routed: false,
    };
    let mut sink_listener = listener(variants.len(), &sink);
    sink_listener["name"] = json!(SINK);
    sink_listener["address"]["socket_address"]["port_value"] = json!(sink_port);
    let mut listeners: Vec<Value> = variants
        .iter()
        .enumerate()
        .map(|(i, v)| listener(i, v))
        .collect();
    listeners.push(sink_listener);
    json!({
        "admin": { "address": { "socket_address": { "address": "127.0.0.1", "port_value": 0 } } },
        "static_resources": {
            "listeners": listeners,
            "clusters": [ cluster(SINK, sink_port), {
                "name": RLS_CLUSTER,
                "type": "STATIC",
                "connect_timeout": "1s",
                "typed_extension_protocol_options": {
                    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                        "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                        "explicit_http_config": { "http2_protocol_options": {} },
                    },
                },
                "load_assignment": {
                    "cluster_name": RLS_CLUSTER,
                    "endpoints": [ { "lb_endpoints": [ { "endpoint": { "address": {
                        "socket_address": { "address": "127.0.0.1", "port_value": rls_port },
                    } } } ] } ],
                },
            } ],
        },
    })
    .to_string()
}

/// Envoy's CPU time so far (user + system, all threads), in microseconds.
fn cpu_micros(pid: u32, ticks_per_sec: u64) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .unwrap_or_else(|e| fail(&format!("cannot read /proc/{pid}/stat: {e}")));
    // Fields after the command name (which may hold spaces) start at field 3, state.
    let after_name = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<u64> = after_name
        .split_whitespace()
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    let (utime, stime) = (fields[11], fields[12]); // fields 14 and 15 of the whole line
    (utime + stime) * 1_000_000 / ticks_per_sec
}

fn resident_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status.lines().find_map(|line| {
                line.strip_prefix("VmRSS:")
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            })
        })
        .unwrap_or(0)
}

fn ticks_per_sec() -> u64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100)
}

/// The tools, found or the run fails saying how to get them.
struct Tools {
    wrk: String,
    oha: String,
}

fn find_tool(env: &str, name: &str) -> String {
    let candidate = std::env::var(env).unwrap_or_else(|_| name.to_owned());
    let runs = Command::new(&candidate)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success() || !o.stdout.is_empty() || !o.stderr.is_empty());
    if !runs {
        fail(&format!(
            "{name} not found ({env}={candidate}): run `make bench`, which installs it"
        ));
    }
    candidate
}

/// Which cores Envoy and the load generator use: different ones when there are two.
fn cores() -> (String, String) {
    let n = std::thread::available_parallelism().map_or(1, |n| n.get());
    if n >= 2 {
        ("1".to_owned(), "0".to_owned())
    } else {
        ("0".to_owned(), "0".to_owned())
    }
}

#[derive(Debug, Clone, Default)]
struct Sample {
    /// Envoy's CPU per request while saturated (closed loop): steady, caches warm.
    busy_cpu_us_per_request: f64,
    /// Envoy's CPU per request at the fixed rate: mostly idle, so each request also pays for
    /// waking up; too noisy on a shared VM to compare variants by (printed, not reported).
    cpu_us_per_request: f64,
    closed_rps: f64,
    fixed_rps: f64,
    p50_us: f64,
    p99_us: f64,
}

/// Runs `wrk` (closed loop); returns (requests per second, requests answered).
fn run_wrk(tools: &Tools, core: &str, secs: u32, port: u16, auth: &str) -> (f64, f64) {
    let out = Command::new("taskset")
        .args(["-c", core, &tools.wrk, "-t1", "-c16"])
        .arg(format!("-d{secs}s"))
        .args(["-H", auth])
        .arg(format!("http://127.0.0.1:{port}/"))
        .output()
        .unwrap_or_else(|e| fail(&format!("cannot run wrk: {e}")));
    let text = String::from_utf8_lossy(&out.stdout);
    if text.contains("Non-2xx") {
        fail(&format!("wrk saw non-2xx answers on port {port}:\n{text}"));
    }
    let rps = text
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok());
    // "  123456 requests in 4.00s, ..."
    let requests = text
        .lines()
        .find_map(|l| l.split_once(" requests in "))
        .and_then(|(n, _)| n.trim().parse().ok());
    match (rps, requests) {
        (Some(rps), Some(requests)) => (rps, requests),
        _ => fail(&format!("unexpected wrk output:\n{text}")),
    }
}

/// Runs `oha` at a fixed rate; returns (achieved rps, requests, p50 µs, p99 µs).
fn run_oha(tools: &Tools, core: &str, plan: &Plan, port: u16, auth: &str) -> (f64, f64, f64, f64) {
    let out = Command::new("taskset")
        .args([
            "-c",
            core,
            &tools.oha,
            "--no-tui",
            "--output-format",
            "json",
        ])
        .args(["--latency-correction", "-c", "8"])
        .args(["-q", &plan.rate.to_string()])
        .args(["-z", &format!("{}s", plan.fixed_secs)])
        .args(["-H", auth])
        .arg(format!("http://127.0.0.1:{port}/"))
        .output()
        .unwrap_or_else(|e| fail(&format!("cannot run oha: {e}")));
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        fail(&format!(
            "unexpected oha output ({e}):\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    });
    let statuses = &doc["statusCodeDistribution"];
    let answered: f64 = statuses
        .as_object()
        .map(|m| m.values().filter_map(Value::as_f64).sum())
        .unwrap_or(0.0);
    let ok = statuses["200"].as_f64().unwrap_or(0.0);
    if answered == 0.0 || ok < answered {
        fail(&format!(
            "oha on port {port}: {ok} of {answered} answers were 200: {statuses}"
        ));
    }
    let rps = doc["summary"]["requestsPerSec"].as_f64().unwrap_or(0.0);
    let p = |q: &str| doc["latencyPercentiles"][q].as_f64().unwrap_or(f64::NAN) * 1e6;
    (rps, answered, p("p50"), p("p99"))
}

/// Envoy's resident memory at `--concurrency 2` with every module loaded, idle and after
/// floods of distinct rate-limit keys through `rate_limit.wasm` and `gateway.wasm` (each rule
/// tracks at most its `max_keys`, 100,000 by default, so the second flood must not grow it).
fn memory_flood(plan: &Plan, jwks: &str) -> String {
    let flood: u32 = if plan.smoke { 2_000 } else { 100_000 };
    let per_client = || rate_limit_config(json!([{ "header": "x-client" }]));
    let [_, _, breaker, retry] = four_configs(jwks);
    let open_jwt = json!({ "providers": {}, "rules": [] });
    let gateway = json!({
        "jwt_auth": open_jwt, "rate_limit": per_client(),
        "circuit_breaker": breaker, "retry_policy": retry,
    });
    let loaded = |name, filters| Variant {
        name,
        filters,
        native_peer: None,
        status_without_token: 200,
        signer: Signer::Rs256,
        routed: false,
    };
    let variants = [
        loaded("rate_limit", vec![wasm_filter("rate_limit", &per_client())]),
        loaded("gateway", vec![wasm_filter("gateway", &gateway)]),
        loaded(
            "the other three",
            vec![
                jwt_auth(jwks, 1000),
                wasm_filter("circuit_breaker", &breaker),
                wasm_filter("retry_policy", &retry),
            ],
        ),
    ];
    let launch = Launch {
        concurrency: 2,
        cpus: None,
        log_level: "error",
    };
    // The rate limit service the global variants call, on the load generator's side.
    let rls = RlsServer::start(&rls_limits(), Storage::Memory);
    let envoy = Envoy::start_with(
        &Mode::native(),
        &envoy_config(&variants, rls.port()),
        &launch,
    );
    let pid = envoy
        .pid()
        .unwrap_or_else(|| fail("Envoy's process id is unknown"));
    let (limiter, gateway) = (envoy.port("v0"), envoy.port("v1"));
    client::send_distinct_keys(limiter, "x-client", 0..100);
    client::send_distinct_keys(gateway, "x-client", 0..100);
    // Resident memory, and what Envoy's allocator has handed out (shared data lives there).
    let measure = || {
        std::thread::sleep(std::time::Duration::from_secs(2));
        let allocated: u64 = envoy.admin("/memory").json()["allocated"]
            .as_str()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        (
            resident_kib(pid) as f64 / 1024.0,
            allocated as f64 / 1_048_576.0,
        )
    };
    let mut rows = vec![("idle".to_owned(), measure())];
    let started = std::time::Instant::now();
    for n in 1..=3u32 {
        let keys = 100 + (n - 1) * flood..100 + n * flood;
        client::send_distinct_keys(limiter, "x-client", keys.clone());
        client::send_distinct_keys(gateway, "x-client", keys);
        rows.push((format!("after {} keys through each", n * flood), measure()));
    }
    eprintln!(
        "memory: {} requests in {:.1} s",
        6 * flood,
        started.elapsed().as_secs_f64()
    );
    let mut table = "Memory: a second Envoy at `--concurrency 2` with all five modules loaded; \
         distinct rate-limit keys (`x-client: client-<n>`) sent through `rate_limit.wasm` and \
         `gateway.wasm` (each rule keeps at most `max_keys`, 100,000 by default).\n\n\
         | When | Envoy resident MiB | Envoy allocator MiB |\n|---|---:|---:|\n"
        .to_owned();
    for (when, (resident, allocated)) in rows {
        let _ = writeln!(table, "| {when} | {resident:.1} | {allocated:.1} |");
    }
    table
}

/// #21's targets, each a ratio of added CPU within this run: every single filter at most 1.4x
/// the passthrough's, the gateway at most 2.0x, uncached RS256 at most 1.5x native jwt_authn.
fn ratio_targets(
    variants: &[Variant],
    med: &dyn Fn(usize, fn(&Sample) -> f64) -> f64,
    none_cpu: f64,
    passthrough_added: Option<f64>,
) -> String {
    let added = |name: &str| {
        variants
            .iter()
            .position(|v| v.name.starts_with(name))
            .map(|i| med(i, |s| s.busy_cpu_us_per_request) - none_cpu)
    };
    let mut lines = String::new();
    let mut judge = |what: &str, ratio: Option<f64>, bound: f64| {
        if let Some(ratio) = ratio {
            let verdict = if ratio <= bound { "met" } else { "missed" };
            let _ = writeln!(
                lines,
                "- {what}: {ratio:.2}x (target: at most {bound:.1}x; {verdict})"
            );
        }
    };
    let over_passthrough = |name: &str| added(name).zip(passthrough_added).map(|(a, p)| a / p);
    judge(
        "gateway.wasm over passthrough",
        over_passthrough("gateway.wasm, the four"),
        2.0,
    );
    for single in [
        "jwt_auth RS256, cached",
        "rate_limit, hot key",
        "circuit_breaker, closed",
        "retry_policy, one rule",
    ] {
        judge(
            &format!("{single} over passthrough"),
            over_passthrough(single),
            1.4,
        );
    }
    let uncached = added("jwt_auth RS256, uncached")
        .zip(added("native jwt_authn, uncached"))
        .filter(|(_, native)| *native > 0.0)
        .map(|(ours, native)| ours / native);
    judge(
        "jwt_auth RS256 uncached over native jwt_authn",
        uncached,
        1.5,
    );
    if lines.is_empty() {
        return lines;
    }
    format!("Added CPU as ratios (issue #21):\n\n{lines}\n")
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    match xs.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => xs[n / 2],
        n => (xs[n / 2 - 1] + xs[n / 2]) / 2.0,
    }
}

fn main() {
    let plan = Plan::from_args();
    let tools = Tools {
        wrk: find_tool("WRK", "wrk"),
        oha: find_tool("OHA", "oha"),
    };
    let (envoy_core, load_core) = cores();
    let ticks = ticks_per_sec();

    let keys: Vec<(Signer, Key)> = Signer::ALL
        .into_iter()
        .map(|signer| (signer, bench_config::signing_key(signer.alg())))
        .collect();
    let claims = bench_config::claims(tokens::now_secs());
    let auth_of: Vec<(Signer, String)> = keys
        .iter()
        .map(|(signer, key)| {
            (
                *signer,
                format!("authorization: Bearer {}", key.sign(&claims)),
            )
        })
        .collect();
    let auth = |signer: Signer| -> &str {
        auth_of
            .iter()
            .find(|(s, _)| *s == signer)
            .map_or("", |(_, header)| header.as_str())
    };
    let jwks = tokens::jwks(&keys.iter().map(|(_, key)| key).collect::<Vec<_>>());
    let variants: Vec<Variant> = variants(&jwks, plan.extras)
        .into_iter()
        .filter(|v| {
            v.name == "none" || plan.only.is_empty() || plan.only.iter().any(|o| v.name.contains(o))
        })
        .collect();

    let launch = Launch {
        concurrency: 1,
        cpus: Some(envoy_core.clone()),
        log_level: "error",
    };
    // The rate limit service the global variants call, on the load generator's side.
    let rls = RlsServer::start(&rls_limits(), Storage::Memory);
    let envoy = Envoy::start_with(
        &Mode::native(),
        &envoy_config(&variants, rls.port()),
        &launch,
    );
    let pid = envoy
        .pid()
        .unwrap_or_else(|| fail("Envoy's process id is unknown"));
    let version = Mode::native().version();
    let port = |i: usize| envoy.port(&format!("v{i}"));

    // Each variant must do what it is configured to do before it is timed.
    for (i, v) in variants.iter().enumerate() {
        let token = auth(v.signer).trim_start_matches("authorization: Bearer ");
        let with = client::get("/").header("authorization", &format!("Bearer {token}"));
        let status = with.send(port(i)).status;
        let without = client::get("/").send(port(i)).status;
        if status != 200 || without != v.status_without_token {
            fail(&format!(
                "{}: {status} with the token and {without} without it (expected 200 and {})",
                v.name, v.status_without_token
            ));
        }
    }

    // And the global variants must really call the service (the native filter skips a route
    // it finds no descriptors for).
    let log = rls.log();
    for (variant, domain) in [
        ("rate_limit, global rule", WASM_DOMAIN),
        ("rls call (bare SDK", WASM_DOMAIN),
        ("native ratelimit", NATIVE_DOMAIN),
    ] {
        let selected = variants.iter().any(|v| v.name.starts_with(variant));
        if selected && !log.contains(&format!("domain={domain} [user=user-42]")) {
            fail(&format!(
                "{variant}: the rate limit service saw no call:\n{log}"
            ));
        }
    }

    let idle_rss_kib = resident_kib(pid);
    let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); variants.len()];
    for round in 0..plan.rounds {
        let mut order: Vec<usize> = (0..variants.len()).collect();
        if round % 2 == 1 {
            order.reverse();
        }
        for i in order {
            let auth = auth(variants[i].signer);
            run_wrk(&tools, &load_core, plan.warmup_secs, port(i), auth);
            let busy_before = cpu_micros(pid, ticks);
            let (closed_rps, closed_requests) =
                run_wrk(&tools, &load_core, plan.closed_secs, port(i), auth);
            let busy_after = cpu_micros(pid, ticks);
            let before = cpu_micros(pid, ticks);
            let (fixed_rps, requests, p50_us, p99_us) =
                run_oha(&tools, &load_core, &plan, port(i), auth);
            let after = cpu_micros(pid, ticks);
            let sample = Sample {
                busy_cpu_us_per_request: (busy_after - busy_before) as f64 / closed_requests,
                cpu_us_per_request: (after - before) as f64 / requests,
                closed_rps,
                fixed_rps,
                p50_us,
                p99_us,
            };
            eprintln!(
                "round {}/{}: {:<60} {:>5.1} µs/req busy {:>5.1} at rate {:>6.0} rps  p50 {:>4.0} µs  p99 {:>4.0} µs",
                round + 1,
                plan.rounds,
                variants[i].name,
                sample.busy_cpu_us_per_request,
                sample.cpu_us_per_request,
                sample.closed_rps,
                sample.p50_us,
                sample.p99_us
            );
            if !plan.smoke && sample.fixed_rps < f64::from(plan.rate) * 0.95 {
                eprintln!(
                    "  warning: reached {:.0} of {} rps; lower --rate",
                    sample.fixed_rps, plan.rate
                );
            }
            samples[i].push(sample);
        }
    }
    let loaded_rss_kib = resident_kib(pid);
    drop(envoy);

    let med = |i: usize, f: fn(&Sample) -> f64| median(samples[i].iter().map(f).collect());
    let index_of = |name: &str| variants.iter().position(|v| v.name == name);
    // Per measure: each variant's figure, its difference to `none` (always first), and that
    // difference over its native peer's.
    let columns = |f: fn(&Sample) -> f64| -> Vec<[String; 3]> {
        let cpu: Vec<f64> = (0..variants.len()).map(|i| med(i, f)).collect();
        let none = cpu.first().copied().unwrap_or(f64::NAN);
        variants
            .iter()
            .enumerate()
            .map(|(i, v)| {
                let delta = cpu[i] - none;
                // A native filter can cost less than this VM's noise (local_ratelimit reads
                // +0.0 on a fast day); a ratio over that would be a number from nothing.
                let native = v
                    .native_peer
                    .and_then(index_of)
                    .map(|n| cpu[n] - none)
                    .map(|native| {
                        if native < 1.0 {
                            format!("native {native:+.1}")
                        } else {
                            format!("{:.1}", delta / native)
                        }
                    })
                    .unwrap_or_default();
                let delta = if i == 0 {
                    String::new()
                } else {
                    format!("{delta:+.1}")
                };
                [format!("{:.1}", cpu[i]), delta, native]
            })
            .collect()
    };
    let busy = columns(|s| s.busy_cpu_us_per_request);
    let at_rate = columns(|s| s.cpu_us_per_request);
    // The targets for single filters are stated over the pass-through fixture.
    let none_cpu = med(0, |s| s.busy_cpu_us_per_request);
    let passthrough_added = variants
        .iter()
        .position(|v| v.name.starts_with("passthrough"))
        .map(|p| med(p, |s| s.busy_cpu_us_per_request) - none_cpu)
        .filter(|added| *added > 0.0);
    let none_rps = med(0, |s| s.closed_rps);

    let mut table = String::new();
    let _ = writeln!(
        table,
        "| Variant | CPU µs/req | Δ vs none | × passthrough Δ | × native Δ | closed-loop rps | × none's rps | p50 µs at {rate} rps | p99 µs | CPU µs/req at {rate} rps (Δ) |",
        rate = plan.rate
    );
    let _ = writeln!(table, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (i, v) in variants.iter().enumerate() {
        let [b, bd, bn] = &busy[i];
        let [r, rd, _] = &at_rate[i];
        let at_rate = if rd.is_empty() {
            r.clone()
        } else {
            format!("{r} ({rd})")
        };
        // #21's targets are ratios to what the bare-SDK passthrough adds in the same run.
        let over_passthrough = match passthrough_added {
            Some(p) if i > 1 && !v.name.contains("native") => {
                format!(
                    "{:.2}",
                    (med(i, |s| s.busy_cpu_us_per_request) - none_cpu) / p
                )
            }
            _ => String::new(),
        };
        let rps = med(i, |s| s.closed_rps);
        let _ = writeln!(
            table,
            "| {} | {b} | {bd} | {over_passthrough} | {bn} | {rps:.0} | {:.2} | {:.0} | {:.0} | {at_rate} |",
            v.name,
            rps / none_rps,
            med(i, |s| s.p50_us),
            med(i, |s| s.p99_us),
        );
    }
    let mut sizes = String::new();
    for module in FOUR.into_iter().chain(["gateway", "passthrough"]) {
        let path = filter_tests::wasm::module(module);
        let bytes = std::fs::metadata(&path).map_or(0, |m| m.len());
        let _ = writeln!(sizes, "| `{module}.wasm` | {bytes} |");
    }
    // #18's target: the global rule costs at most native ratelimit's CPU + 15 µs.
    let global_target = match (
        variants
            .iter()
            .position(|v| v.name.starts_with("rate_limit, global rule")),
        variants
            .iter()
            .position(|v| v.name.starts_with("native ratelimit")),
    ) {
        (Some(ours), Some(native)) => {
            let gap = med(ours, |s| s.busy_cpu_us_per_request)
                - med(native, |s| s.busy_cpu_us_per_request);
            let p99 = |i: usize| med(i, |s| s.p99_us);
            format!(
                "Global rule over native `ratelimit`, same service: {gap:+.1} µs CPU per request \
                 (target: at most +15.0; {}); p99 {:.0} µs against {:.0} µs.\n\n",
                if gap <= 15.0 { "met" } else { "missed" },
                p99(ours),
                p99(native)
            )
        }
        _ => String::new(),
    };
    let ratio_targets = ratio_targets(&variants, &med, none_cpu, passthrough_added);
    let memory = memory_flood(&plan, &jwks);
    let smoke = if plan.smoke {
        " **Smoke run: the figures mean nothing.**"
    } else {
        ""
    };
    let report = format!(
        "Envoy {version}, `--concurrency 1` on core {envoy_core}, load on core {load_core}; \
         {rounds} round(s); closed loop, 16 connections, for {closed} s (CPU, rps); fixed \
         rate {rate} rps for {fixed} s (p50, p99); medians.{smoke}\n\n{table}\n{ratio_targets}{global_target}\
         Envoy resident memory with every variant loaded: {idle} MiB idle, {loaded} MiB after \
         the run.\n\n{memory}\n\n| Module | Bytes |\n|---|---:|\n{sizes}",
        rounds = plan.rounds,
        closed = plan.closed_secs,
        rate = plan.rate,
        fixed = plan.fixed_secs,
        idle = idle_rss_kib / 1024,
        loaded = loaded_rss_kib / 1024,
    );
    println!("{report}");
    let file = if plan.smoke {
        "bench-smoke.md"
    } else {
        "bench.md"
    };
    let out = filter_tests::repo_root().join("target").join(file);
    if let Err(e) = std::fs::write(&out, &report) {
        eprintln!("cannot write {}: {e}", out.display());
    }
}
