//! `make run`: starts the demo gateway (`envoy/gateway.yaml`) and prints requests to try.
//!
//! Uses the harness, so it runs Envoy the same way the tests do: in Docker when a daemon
//! answers (or `ENVOY_MODE=docker`), else the native binary. The example's ports are kept when
//! free and replaced otherwise. Ctrl-C stops Envoy and removes its container.

use filter_tests::envoy::{Envoy, Mode};
use filter_tests::envoy_config::adapt_example_keeping_free_ports;
use filter_tests::tokens::{Alg, Key, now_secs};
use serde_json::json;
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

    let key = Key::generate(Alg::RS256, "demo");
    let token = key.sign(&json!({
        "iss": "https://issuer.example", "aud": "api", "sub": "demo-user",
        "scope": "read", "iat": now_secs(), "exp": now_secs() + 3600,
    }));

    println!(
        r#"
The demo gateway is up: jwt_auth -> rate_limit -> retry_policy -> circuit_breaker -> demo upstream.
  gateway   http://127.0.0.1:{gateway}/
  admin     http://127.0.0.1:{admin}/   (stats: /stats?filter=wasmcustom, /stats/prometheus)

With a demo token (RS256, valid for an hour):
  curl -i http://127.0.0.1:{gateway}/hello -H 'Authorization: Bearer {token}'
Without a token:
  curl -i http://127.0.0.1:{gateway}/hello

What each should answer today: both 200 "hello from the demo upstream". The four filters
are loaded and count requests (wasmcustom.<filter>.requests), but their policies are not
implemented yet, so no token is required. Once JWT validation lands, the first answers 200
and the second 401 with `WWW-Authenticate: Bearer`.

Press Ctrl-C to stop."#,
        admin = envoy.admin_port(),
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
    drop(envoy);
}
