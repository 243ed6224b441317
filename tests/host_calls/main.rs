//! The host calls each filter makes on the benchmark's allow paths, per phase, fixed.
//!
//! Every host call crosses from Wasm into Envoy and back, and most of a filter's cost in
//! Envoy goes there (issue #21). These tests run the built modules in the fake host
//! (`filter_tests::fake_host`) with the benchmark's configurations and fix, for the second
//! request of each (the first may fill caches and shared data), the exact list of calls per
//! phase. A change that adds, removes or reorders a call fails here: update the list below and
//! say in the commit why the call is worth its cost. `make hostcalls` prints the same runs with
//! allocations and Wasm instructions.
//!
//! Needs `make build` (the modules are not built by `cargo test`); a missing module fails.

use filter_tests::fake_host::{Action, Callback, Process, RequestRun, Status, Vm, WasmModule};
use filter_tests::host_calls::{self, Issuer, RowRun};

/// The host calls of one request, per callback.
#[derive(Debug, Clone, Copy)]
struct Calls {
    create: &'static [&'static str],
    request_headers: &'static [&'static str],
    response_headers: &'static [&'static str],
    log: &'static [&'static str],
    done: &'static [&'static str],
    delete: &'static [&'static str],
}

/// No host call at all.
const QUIET: Calls = Calls {
    create: &[],
    request_headers: &[],
    response_headers: &[],
    log: &[],
    done: &[],
    delete: &[],
};

// ---- The expected calls (issue #21: gateway 21 -> 18, rate_limit 6 -> 4, circuit_breaker 8 -> 7, retry_policy 8 -> 6) ----------------------------------------

/// The bare-SDK floor: one header read, one header write.
const PASSTHROUGH_ONE: Calls = Calls {
    request_headers: &["get_header(x-tenant-id)"],
    response_headers: &["set_response_header(x-wasm)"],
    ..QUIET
};

const PASSTHROUGH_NOOP: Calls = QUIET;

/// A token verified before: the clock, the token, then moving its `sub` into `x-user-id`.
const JWT_AUTH_CACHED: Calls = Calls {
    request_headers: &[
        "now",
        "get_header(authorization)",
        "remove_header(authorization)",
        "set_header(x-user-id)",
    ],
    ..QUIET
};

/// One bucket for all, compare-and-swapped with the token this worker remembers from its last
/// write (no read: nobody else wrote it); the `ratelimit` header fields at the response, which
/// needs no clock.
const RATE_LIMIT_HOT_KEY: Calls = Calls {
    request_headers: &["now", "set_shared(rl1/bench/10692)"],
    response_headers: &[
        "set_response_header(ratelimit-policy)",
        "set_response_header(ratelimit)",
    ],
    ..QUIET
};

/// A bucket per user: the key header, then as the hot key.
const RATE_LIMIT_PER_USER: Calls = Calls {
    request_headers: &["get_header(x-user-id)", "now", "set_shared(rl1/bench/8364)"],
    response_headers: &[
        "set_response_header(ratelimit-policy)",
        "set_response_header(ratelimit)",
    ],
    ..QUIET
};

/// A permit from the breaker's record at the request (a gRPC call is judged differently, hence
/// `content-type`); the outcome written back at the response with the token of the request's
/// read (Envoy's own replies are told from the upstream's by `response.code_details`).
const CIRCUIT_BREAKER_CLOSED: Calls = Calls {
    request_headers: &["now", "get_shared(cb2/bench)", "get_header(content-type)"],
    response_headers: &[
        "get_response_header(:status)",
        "get_property(response.code_details)",
        "now",
        "set_shared(cb2/bench)",
    ],
    ..QUIET
};

/// The retry headers written for Envoy's router (a client's are removed only from requests
/// Envoy calls internal); the attempt count read at the response. Without a budget, no clock.
/// Alone, the filter cannot know whether a breaker before it left `circuit_breaker.state`.
const RETRY_POLICY_ONE_RULE: Calls = Calls {
    request_headers: &[
        "get_header(:method)",
        "get_property(circuit_breaker.state)",
        "get_header(x-envoy-internal)",
        "set_header(x-envoy-retry-on)",
        "set_header(x-envoy-max-retries)",
    ],
    response_headers: &["get_property(upstream.request_attempt_count)"],
    ..QUIET
};

/// The four in one module: their reads in chain order, the header edits merged at the end.
/// One clock read per phase; the breaker's state comes from the gateway's own edits.
const GATEWAY_FOUR: Calls = Calls {
    request_headers: &[
        "now",
        "get_header(authorization)",
        "set_shared(rl1/bench/8364)",
        "get_shared(cb2/bench)",
        "get_header(content-type)",
        "get_header(:method)",
        "get_header(x-envoy-internal)",
        "remove_header(authorization)",
        "set_header(x-user-id)",
        "set_header(x-envoy-retry-on)",
        "set_header(x-envoy-max-retries)",
    ],
    response_headers: &[
        "get_property(upstream.request_attempt_count)",
        "get_response_header(:status)",
        "get_property(response.code_details)",
        "now",
        "set_shared(cb2/bench)",
        "set_response_header(ratelimit-policy)",
        "set_response_header(ratelimit)",
    ],
    ..QUIET
};

// ---- The checks ---------------------------------------------------------------------------

fn run(name: &str) -> RowRun {
    // Only the rows that carry a token pay for the keys (RSA-2048).
    let needs_token = host_calls::rows("")
        .iter()
        .any(|r| r.name == name && r.with_token);
    let issuer = if needs_token {
        Issuer::generate()
    } else {
        Issuer {
            jwks: String::new(),
            token: String::new(),
        }
    };
    let row = host_calls::row(&issuer.jwks, name);
    host_calls::run(&row, &issuer.token).unwrap_or_else(|e| panic!("{e:#}"))
}

fn labels(run: &RequestRun, callback: Callback) -> Vec<String> {
    run.phase(callback)
        .calls
        .iter()
        .map(|c| c.label.clone())
        .collect()
}

/// Fails listing every phase whose calls differ, with the new list ready to paste.
fn check(name: &str, expected: Calls) {
    let run = run(name);
    let phases = [
        (Callback::Create, "create", expected.create),
        (
            Callback::RequestHeaders,
            "request_headers",
            expected.request_headers,
        ),
        (
            Callback::ResponseHeaders,
            "response_headers",
            expected.response_headers,
        ),
        (Callback::Log, "log", expected.log),
        (Callback::Done, "done", expected.done),
        (Callback::Delete, "delete", expected.delete),
    ];
    let mut wrong = Vec::new();
    for (callback, field, want) in phases {
        let got = labels(&run.second, callback);
        if got != want {
            wrong.push(format!(
                "  {field}:\n    expected {want:?}\n    got      {got:?}"
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "{name}: the host calls of the second request changed. If the change is meant, update \
         the list in tests/host_calls/main.rs and say in the commit why the calls are worth \
         their cost.\n{}",
        wrong.join("\n")
    );
}

#[test]
fn passthrough_one() {
    check(host_calls::PASSTHROUGH_ONE_ROW, PASSTHROUGH_ONE);
}

#[test]
fn passthrough_noop() {
    check(host_calls::PASSTHROUGH_NOOP_ROW, PASSTHROUGH_NOOP);
}

#[test]
fn jwt_auth_cached() {
    check(host_calls::JWT_AUTH_ROW, JWT_AUTH_CACHED);
}

#[test]
fn rate_limit_hot_key() {
    check(host_calls::RATE_LIMIT_HOT_ROW, RATE_LIMIT_HOT_KEY);
}

#[test]
fn rate_limit_per_user() {
    check(host_calls::RATE_LIMIT_USER_ROW, RATE_LIMIT_PER_USER);
}

#[test]
fn circuit_breaker_closed() {
    check(host_calls::CIRCUIT_BREAKER_ROW, CIRCUIT_BREAKER_CLOSED);
}

#[test]
fn retry_policy_one_rule() {
    check(host_calls::RETRY_POLICY_ROW, RETRY_POLICY_ONE_RULE);
}

#[test]
fn gateway_four() {
    check(host_calls::GATEWAY_ROW, GATEWAY_FOUR);
}

/// The first request of a cached-token row verifies the token, in Wasm (the fake host, like
/// an Envoy without `verify_signature`, answers the foreign function NotFound); the second
/// does not: the cache is what the count above measures.
#[test]
fn the_first_request_verifies_and_the_second_hits_the_cache() {
    let run = run(host_calls::JWT_AUTH_ROW);
    let first = labels(&run.first, Callback::RequestHeaders);
    assert!(
        first
            .iter()
            .any(|c| c == "call_foreign_function(verify_signature)"),
        "{first:?}"
    );
    let second = run.second.phase(Callback::RequestHeaders);
    assert!(
        second.fuel * 10 < run.first.phase(Callback::RequestHeaders).fuel,
        "a cache hit should execute a small fraction of a verification: {} against {}",
        second.fuel,
        run.first.phase(Callback::RequestHeaders).fuel
    );
}

/// The fake host refuses to count without the built module, and says how to build it.
#[test]
fn a_missing_module_fails_saying_to_build() {
    let error = WasmModule::built("no_such_module").expect_err("no such module");
    assert!(error.to_string().contains("run `make build`"), "{error}");
}

/// A local reply is seen: a request without a token through jwt_auth is refused, not counted
/// as let through.
#[test]
fn a_refusal_is_not_counted_as_an_allow_path() {
    let issuer = Issuer::generate();
    let mut row = host_calls::row(&issuer.jwks, host_calls::JWT_AUTH_ROW);
    row.with_token = false;
    let error = host_calls::run(&row, "").expect_err("a request without a token is refused");
    assert!(format!("{error:#}").contains("answered 401"), "{error:#}");
}

fn rate_limit_vm(process: &Process, requests_per_minute: u32) -> Vm {
    let module = WasmModule::built("rate_limit").unwrap_or_else(|e| panic!("{e:#}"));
    let config = serde_json::json!({ "rules": [ {
        "name": "shared",
        "key": [{ "rule": {} }],
        "limit": { "requests": requests_per_minute, "per": "1m" },
    } ] });
    Vm::start(process, &module, config.to_string().as_bytes()).unwrap_or_else(|e| panic!("{e:#}"))
}

fn send(vm: &mut Vm) -> RequestRun {
    let request = host_calls::request_headers(None);
    let request: Vec<(&str, &str)> = request
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let response = host_calls::response_headers();
    let response: Vec<(&str, &str)> = response
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    vm.request(&request, &response)
        .unwrap_or_else(|e| panic!("{e:#}"))
}

/// Two workers of one process share one store: the one request a minute the first worker
/// spent is gone for the second.
#[test]
fn two_workers_share_one_store() {
    let process = Process::new();
    let mut first = rate_limit_vm(&process, 1);
    let mut second = rate_limit_vm(&process, 1);
    let allowed = send(&mut first);
    assert_eq!(allowed.request_action, Action::Continue);
    assert!(allowed.stream.local_response.is_none());
    let refused = send(&mut second);
    let reply = refused.stream.local_response.as_ref().map(|r| r.status);
    assert_eq!(reply, Some(429), "{:?}", second.logs());
}

/// Another worker's write between the module's read and its write: the module's CAS is stale,
/// Envoy refuses the write, and the module reads again and writes again.
#[test]
fn a_racing_write_makes_the_module_retry() {
    let process = Process::new();
    let mut vm = rate_limit_vm(&process, 1000);
    send(&mut vm);
    // Once: write the stored value back, as another worker's update would, with a fresh CAS.
    let mut raced = false;
    process
        .shared_data()
        .set_write_hook(Some(Box::new(move |store, vm_id, key| {
            if !raced {
                raced = true;
                let (value, _) = store.get(vm_id, key).expect("the bucket exists");
                assert_eq!(store.set(vm_id, key, &value, 0), Status::Ok);
            }
        })));
    let run = send(&mut vm);
    let statuses: Vec<(String, Status)> = run
        .phase(Callback::RequestHeaders)
        .calls
        .iter()
        .filter(|c| c.label.contains("_shared("))
        .map(|c| (c.label.split('(').next().unwrap_or("").to_owned(), c.status))
        .collect();
    // The worker remembers the bucket from its last write and writes without reading; the
    // race makes that write fail, so it reads the fresh value and writes again.
    let expected = [
        ("set_shared", Status::CasMismatch),
        ("get_shared", Status::Ok),
        ("set_shared", Status::Ok),
    ]
    .map(|(l, s)| (l.to_owned(), s));
    assert_eq!(statuses, expected);
    assert!(run.stream.local_response.is_none());
}
