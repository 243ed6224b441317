//! `make run`: starts the demo gateway (`envoy/gateway.yaml`) and a fleet of two Envoys sharing
//! one limit through a rate limit service (`envoy/rate_limit_global.yaml` and `rls-server`
//! with `envoy/rls/limits.yaml`), and prints requests to try.
//!
//! Uses the harness, so it runs Envoy the same way the tests do: in Docker when a daemon
//! answers (or `ENVOY_MODE=docker`), else the native binary. The example's ports are kept when
//! free and replaced otherwise. Ctrl-C stops Envoy and removes its container.

use filter_tests::envoy::{Envoy, Mode};
use filter_tests::envoy_config::{adapt_example_keeping_free_ports, adapt_example_with_ports};
use filter_tests::rls::{RlsServer, Storage};
use filter_tests::tokens::{demo_claims, demo_key};
use std::sync::mpsc;
use std::time::Duration;

fn main() {
    let mode = Mode::from_env();
    let path = filter_tests::repo_root().join("envoy").join("gateway.yaml");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let (stop_tx, stop_rx) = mpsc::channel();
    ctrlc::set_handler(move || {
        let _ = stop_tx.send(());
    })
    .expect("install the Ctrl-C handler");

    println!(
        "Starting the demo gateway ({mode}, Envoy {})...",
        mode.version()
    );
    let mut envoy = Envoy::start_in(&mode, &adapt_example_keeping_free_ports(&text));
    let gateway = envoy.port("gateway");

    // The fleet: one rate limit service, two Envoys calling it.
    let root = filter_tests::repo_root();
    let read = |path: &str| {
        std::fs::read_to_string(root.join(path))
            .unwrap_or_else(|e| panic!("cannot read {path}: {e}"))
    };
    let rls = RlsServer::start(&read("envoy/rls/limits.yaml"), Storage::Memory);
    let fleet_text = read("envoy/rate_limit_global.yaml");
    let fleet: Vec<Envoy> = (0..2)
        .map(|_| {
            // Each its own listener and admin ports (the example's are remapped to free ones);
            // both with the service's port.
            let text = adapt_example_with_ports(&fleet_text, &[(8081, rls.port())]);
            Envoy::start_in(&mode, &text)
        })
        .collect();
    let (fleet_a, fleet_b) = (fleet[0].port("gateway"), fleet[1].port("gateway"));

    // The demo issuer's key is public on purpose (see envoy/gateway.yaml): demo only.
    let token = demo_key().sign(&demo_claims("demo-user", "read"));
    let admin_token = demo_key().sign(&demo_claims("demo-admin", "read admin"));
    // A user of its own, so the requests above do not spend this one's limit.
    let busy_token = demo_key().sign(&demo_claims("demo-busy-user", "read"));

    println!(
        r#"
The demo gateway is up: jwt_auth -> rate_limit -> circuit_breaker -> retry_policy -> demo upstream.
  gateway   http://127.0.0.1:{gateway}/
  admin     http://127.0.0.1:{admin}/   (stats: /stats?filter=wasmcustom, /stats/prometheus)

With a demo token (EdDSA, valid for an hour, scope "read"):
  curl -i http://127.0.0.1:{gateway}/hello -H 'Authorization: Bearer {token}'
    -> 200 "hello from the demo upstream", with x-demo-user: demo-user (the token's sub,
       set by jwt_auth as x-user-id and echoed by the demo upstream)
Without a token:
  curl -i http://127.0.0.1:{gateway}/hello
    -> 401 with WWW-Authenticate: Bearer realm="api"
The same token on an admin route (needs scope "admin"):
  curl -i http://127.0.0.1:{gateway}/admin/users -H 'Authorization: Bearer {token}'
    -> 403 with WWW-Authenticate: Bearer realm="api", error="insufficient_scope", ..., scope="admin"
  curl -i http://127.0.0.1:{gateway}/admin/users -H 'Authorization: Bearer {admin_token}'
    -> 200
Open route: curl -i http://127.0.0.1:{gateway}/public/hello -> 200 without a token.

rate_limit allows each user (the token's sub) 5 requests per 10 s:
  for i in 1 2 3 4 5 6; do curl -s -o /dev/null -w '%{{http_code}} ' \
    http://127.0.0.1:{gateway}/hello -H 'Authorization: Bearer {busy_token}'; done; echo
    -> 200 200 200 200 200 429
  curl -i http://127.0.0.1:{gateway}/hello -H 'Authorization: Bearer {busy_token}'
    -> 429 with Retry-After, RateLimit-Policy: "per-user";q=5;w=10, "per-ip";q=50;w=1
       and RateLimit: "per-user";r=0;t=..., "per-ip";r=...

retry_policy: the router tries a failing GET 3 times (2 retries), a POST once, and a 503
without Retry-After gets one:
  curl -i http://127.0.0.1:{gateway}/public/flaky
    -> 503 "flaky is down" with Retry-After: 1 or 2 (and 3 attempts upstream:
       curl -s http://127.0.0.1:{admin}/stats | grep demo_upstream.upstream_rq_retry:)

circuit_breaker: /public/flaky always fails upstream; after 5 failures its breaker opens and
answers for it for 10 s, and the upstream is left alone:
  for i in 1 2 3 4 5 6; do curl -s -o /dev/null -w '%{{http_code}} ' \
    http://127.0.0.1:{gateway}/public/flaky; done; echo
    -> 503 503 503 503 503 503 (the last ones from the breaker:)
  curl -i http://127.0.0.1:{gateway}/public/flaky
    -> 503 with x-circuit-breaker: flaky, x-circuit-breaker-state: open, Retry-After
  (metrics: /stats/prometheus shows circuit_breaker_state{{breaker="flaky"}} 1 while open)

A fleet limit: two more Envoys (envoy/rate_limit_global.yaml) on :{fleet_a} and :{fleet_b}
share one rate limit service (rls-server, Limitador's counting, on :{rls_port}), which allows
each user 10 requests a minute however many Envoys ask. Alternate between the two:
  for i in $(seq 1 12); do port=$(( i % 2 ? {fleet_a} : {fleet_b} )); curl -s -o /dev/null \
    -w '%{{http_code}} ' http://127.0.0.1:$port/api/x -H 'x-user-id: fleet-demo'; done; echo
    -> 200 200 200 200 200 200 200 200 200 200 429 429
  curl -i http://127.0.0.1:{fleet_a}/api/x -H 'x-user-id: fleet-demo'
    -> 429 with Retry-After and RateLimit-Policy: "per-user-fleet";q=10;w=60, from the
       service's own count (rate_limit.service.fleet.* in each Envoy's /stats)


Press Ctrl-C to stop."#,
        admin = envoy.admin_port(),
        rls_port = rls.port(),
    );

    loop {
        if stop_rx.recv_timeout(Duration::from_millis(500)).is_ok() {
            println!("\nStopping Envoy...");
            break;
        }
        if envoy.has_exited() {
            eprintln!("Envoy stopped by itself:\n{}", envoy.log());
            break;
        }
    }
    drop(fleet);
    drop(rls);
    drop(envoy);
}
