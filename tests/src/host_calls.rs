//! The benchmark's allow paths run in the fake host ([`crate::fake_host`]): which host calls
//! each filter makes per request and phase, how often the host allocates in the VM, and the
//! Wasm instructions (fuel) each phase executes. `make hostcalls` prints the table;
//! `tests/host_calls` fixes the calls.

use crate::bench_config::{self, PASSTHROUGH_NOOP, PASSTHROUGH_ONE};
use crate::fake_host::{Callback, CallbackCost, Process, RequestRun, Vm, WasmModule};
use crate::tokens;
use anyhow::{Context as _, Result, bail};
use serde_json::Value;
use std::fmt::Write as _;

/// One configuration of the benchmark, as the fake host runs it.
#[derive(Debug, Clone)]
pub struct Row {
    pub name: &'static str,
    pub module: &'static str,
    pub config: Value,
    /// Whether requests carry the issuer's RS256 token.
    pub with_token: bool,
    /// Headers a filter in front would have added (the per-user limiter's `x-user-id`, which
    /// `jwt_auth` writes in the benchmark's chained variant).
    pub added_headers: Vec<(String, String)>,
}

/// The issuer's key set and an RS256 token, as the benchmark makes them.
#[derive(Debug, Clone)]
pub struct Issuer {
    pub jwks: String,
    pub token: String,
}

impl Issuer {
    /// Fresh keys (RSA-2048 among them: a second or so), a token valid for a day from now.
    pub fn generate() -> Issuer {
        let keys: Vec<_> = bench_config::SIGNING_ALGS
            .into_iter()
            .map(bench_config::signing_key)
            .collect();
        let jwks = tokens::jwks(&keys.iter().collect::<Vec<_>>());
        let rs256 = keys
            .iter()
            .find(|k| k.alg() == tokens::Alg::RS256)
            .map(|k| k.sign(&bench_config::claims(tokens::now_secs())))
            .unwrap_or_default();
        Issuer { jwks, token: rs256 }
    }
}

/// The names of the rows, in table order.
pub const PASSTHROUGH_ONE_ROW: &str = "passthrough one";
pub const PASSTHROUGH_NOOP_ROW: &str = "passthrough noop";
pub const JWT_AUTH_ROW: &str = "jwt_auth RS256, cached";
pub const RATE_LIMIT_HOT_ROW: &str = "rate_limit, hot key";
pub const RATE_LIMIT_USER_ROW: &str = "rate_limit, per x-user-id";
pub const CIRCUIT_BREAKER_ROW: &str = "circuit_breaker, closed";
pub const RETRY_POLICY_ROW: &str = "retry_policy, one rule";
pub const GATEWAY_ROW: &str = "gateway.wasm, the four (cached token)";

/// Every row: the benchmark's allow paths. The JWKS only matters to rows with a token.
pub fn rows(jwks: &str) -> Vec<Row> {
    let row = |name, module, config, with_token| Row {
        name,
        module,
        config,
        with_token,
        added_headers: Vec::new(),
    };
    vec![
        row(
            PASSTHROUGH_ONE_ROW,
            "passthrough",
            Value::from(PASSTHROUGH_ONE),
            false,
        ),
        row(
            PASSTHROUGH_NOOP_ROW,
            "passthrough",
            Value::from(PASSTHROUGH_NOOP),
            false,
        ),
        row(
            JWT_AUTH_ROW,
            "jwt_auth",
            bench_config::jwt_auth_config(jwks, 1000),
            true,
        ),
        row(
            RATE_LIMIT_HOT_ROW,
            "rate_limit",
            bench_config::rate_limit_config(bench_config::hot_key()),
            false,
        ),
        Row {
            added_headers: vec![("x-user-id".to_owned(), "user-42".to_owned())],
            ..row(
                RATE_LIMIT_USER_ROW,
                "rate_limit",
                bench_config::rate_limit_config(bench_config::per_user_key()),
                false,
            )
        },
        row(
            CIRCUIT_BREAKER_ROW,
            "circuit_breaker",
            bench_config::circuit_breaker_config(),
            false,
        ),
        row(
            RETRY_POLICY_ROW,
            "retry_policy",
            bench_config::retry_policy_config(),
            false,
        ),
        row(
            GATEWAY_ROW,
            "gateway",
            bench_config::gateway_config(jwks),
            true,
        ),
    ]
}

/// The row named `name`.
pub fn row(jwks: &str, name: &str) -> Row {
    rows(jwks)
        .into_iter()
        .find(|r| r.name == name)
        .unwrap_or_else(|| panic!("no row {name:?}"))
}

/// The request headers Envoy hands a filter for the benchmark's direct-response route (wrk's
/// request, as the connection manager completes it), with the token if given.
pub fn request_headers(token: Option<&str>) -> Vec<(String, String)> {
    let mut headers: Vec<(String, String)> = [
        (":method", "GET"),
        (":path", "/"),
        (":authority", "127.0.0.1:10000"),
        (":scheme", "http"),
        ("user-agent", "wrk"),
        ("accept", "*/*"),
        ("x-forwarded-proto", "http"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    if let Some(token) = token {
        headers.push(("authorization".to_owned(), format!("Bearer {token}")));
    }
    headers
}

/// The route's direct response (`200`, body `ok`).
pub fn response_headers() -> Vec<(String, String)> {
    [
        (":status", "200"),
        ("content-type", "text/plain"),
        ("content-length", "2"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

/// One row run: its start, and its first two requests (the second is the steady state: the
/// first may fill caches and shared data).
#[derive(Debug, Clone)]
pub struct RowRun {
    pub name: &'static str,
    pub startup: Vec<(Callback, CallbackCost)>,
    pub first: RequestRun,
    pub second: RequestRun,
}

/// Starts `row`'s module on a fresh process and sends it two requests, each of which must be
/// let through (a filter that refused would be counted doing the wrong thing).
pub fn run(row: &Row, token: &str) -> Result<RowRun> {
    run_module(row, token, &WasmModule::built(row.module)?)
}

/// [`run`] with another build of the row's module (`make profile-wasm`: one instrumented to
/// report every function it enters).
pub fn run_module(row: &Row, token: &str, module: &WasmModule) -> Result<RowRun> {
    let process = Process::new();
    let config = match &row.config {
        Value::String(text) => text.clone(),
        other => other.to_string(),
    };
    let mut vm = Vm::start(&process, module, config.as_bytes())
        .with_context(|| format!("starting {}", row.name))?;
    let mut request = request_headers(row.with_token.then_some(token));
    request.extend(row.added_headers.iter().cloned());
    let request: Vec<(&str, &str)> = request
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let response = response_headers();
    let response: Vec<(&str, &str)> = response
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let mut send = |which: &str| -> Result<RequestRun> {
        let run = vm
            .request(&request, &response)
            .with_context(|| format!("{}: {which} request", row.name))?;
        if let Some(reply) = &run.stream.local_response {
            bail!(
                "{}: the {which} request was answered {} by the filter, not let through: {}\n{:?}",
                row.name,
                reply.status,
                String::from_utf8_lossy(&reply.body),
                vm.logs()
            );
        }
        if run.request_action != crate::fake_host::Action::Continue {
            bail!(
                "{}: the {which} request was not continued ({:?})",
                row.name,
                run.request_action
            );
        }
        Ok(run)
    };
    let first = send("first")?;
    let second = send("second")?;
    Ok(RowRun {
        name: row.name,
        startup: vm.startup().to_vec(),
        first,
        second,
    })
}

/// The phases the table shows, each the callbacks it sums.
pub const PHASES: [(&str, &[Callback]); 5] = [
    ("context create", &[Callback::Create]),
    ("request headers", &[Callback::RequestHeaders]),
    ("response headers", &[Callback::ResponseHeaders]),
    ("log", &[Callback::Log]),
    ("done/delete", &[Callback::Done, Callback::Delete]),
];

/// The cost of a table phase of `run`: its callbacks' calls in order, summed counts.
pub fn phase_cost(run: &RequestRun, callbacks: &[Callback]) -> CallbackCost {
    let mut total = CallbackCost::default();
    for callback in callbacks {
        let cost = run.phase(*callback);
        total.calls.extend(cost.calls);
        total.allocations += cost.allocations;
        total.fuel += cost.fuel;
        total.allocation_fuel += cost.allocation_fuel;
    }
    total
}

/// Consecutive repeats folded: `a, b, b, b` is `a, b ×3`.
pub fn fold_calls(labels: &[&str]) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while let Some(label) = labels.get(i) {
        let n = labels.iter().skip(i).take_while(|l| *l == label).count();
        out.push(if n > 1 {
            format!("{label} ×{n}")
        } else {
            (*label).to_owned()
        });
        i += n;
    }
    out.join(", ")
}

fn table(out: &mut String, runs: &[RowRun], pick: fn(&RowRun) -> &RequestRun) {
    let _ = writeln!(
        out,
        "| Row | Phase | Calls | Host calls | Allocations | Fuel | of which allocating |"
    );
    let _ = writeln!(out, "|---|---|---:|---|---:|---:|---:|");
    for run in runs {
        let request = pick(run);
        let mut total = CallbackCost::default();
        for (phase, callbacks) in PHASES {
            let cost = phase_cost(request, callbacks);
            if cost.calls.is_empty() && cost.fuel == 0 {
                continue;
            }
            let _ = writeln!(
                out,
                "| {} | {phase} | {} | {} | {} | {} | {} |",
                run.name,
                cost.calls.len(),
                fold_calls(&cost.labels()).replace('|', "\\|"),
                cost.allocations,
                cost.fuel,
                cost.allocation_fuel,
            );
            total.calls.extend(cost.calls);
            total.allocations += cost.allocations;
            total.fuel += cost.fuel;
            total.allocation_fuel += cost.allocation_fuel;
        }
        let _ = writeln!(
            out,
            "| **{}** | **per request** | **{}** | | **{}** | **{}** | **{}** |",
            run.name,
            total.calls.len(),
            total.allocations,
            total.fuel,
            total.allocation_fuel,
        );
    }
}

/// A callback as the instructions between its host calls: `120 · now · 900 · get_header(x)
/// · 40 end` (allocations made for a call count in the segment after it).
pub fn fuel_between_calls(cost: &CallbackCost) -> String {
    let mut out = String::new();
    let mut at = 0;
    for call in &cost.calls {
        let _ = write!(
            out,
            "{} · `{}` · ",
            call.fuel.saturating_sub(at),
            call.label
        );
        at = call.fuel;
    }
    let _ = write!(out, "{} end", cost.fuel.saturating_sub(at));
    out
}

/// The Markdown report of `make hostcalls`.
pub fn markdown(runs: &[RowRun]) -> String {
    let mut out = String::new();
    out.push_str(
        "Host calls per request and phase, counted by the fake proxy-wasm host \
         (`tests/src/fake_host.rs`: the built modules in wasmi, driven as Envoy drives them). \
         Fuel is the Wasm operators the module executed (wasmi's default costs: 1 per \
         operator, control markers free), allocations included; allocations are the host's \
         calls into `proxy_on_memory_allocate` to hand the module an answer. A phase without \
         calls and fuel is left out.\n\n\
         ## Second request (steady state)\n\n",
    );
    table(&mut out, runs, |r| &r.second);
    out.push_str(
        "\n## Where the instructions go (second request)\n\n\
         Fuel executed before each host call, between calls, and after the last, per callback \
         with host calls.\n\n| Row | Callback | Fuel between host calls |\n|---|---|---|\n",
    );
    for run in runs {
        for (callback, cost) in &run.second.phases {
            if !cost.calls.is_empty() {
                let _ = writeln!(
                    out,
                    "| {} | {callback} | {} |",
                    run.name,
                    fuel_between_calls(cost).replace('|', "\\|")
                );
            }
        }
    }
    out.push_str("\n## First request (caches and shared data empty)\n\n");
    table(&mut out, runs, |r| &r.first);
    out.push_str("\n## Start (once per worker VM)\n\n");
    let _ = writeln!(
        out,
        "| Row | Callback | Calls | Host calls | Allocations | Fuel |"
    );
    let _ = writeln!(out, "|---|---|---:|---|---:|---:|");
    for run in runs {
        for (callback, cost) in &run.startup {
            let _ = writeln!(
                out,
                "| {} | {callback} | {} | {} | {} | {} |",
                run.name,
                cost.calls.len(),
                fold_calls(&cost.labels()).replace('|', "\\|"),
                cost.allocations,
                cost.fuel
            );
        }
    }
    out
}
