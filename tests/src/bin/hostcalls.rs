//! `make hostcalls`: the host calls, allocations and Wasm instructions of each filter's allow
//! path per request and phase, counted by the fake host; the table goes to stdout and to
//! `target/hostcalls.md`.

use filter_tests::host_calls::{self, Issuer};

fn main() {
    let issuer = Issuer::generate();
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let [flag, module, row] = args.as_slice()
        && flag == "--profile"
    {
        profile(&issuer, module, row);
        return;
    }
    let mut runs = Vec::new();
    for row in host_calls::rows(&issuer.jwks) {
        match host_calls::run(&row, &issuer.token) {
            Ok(run) => runs.push(run),
            Err(e) => {
                eprintln!("hostcalls: {e:#}");
                std::process::exit(1);
            }
        }
    }
    let report = host_calls::markdown(&runs);
    println!("{report}");
    let out = filter_tests::repo_root()
        .join("target")
        .join("hostcalls.md");
    if let Err(e) = std::fs::write(&out, &report) {
        eprintln!("hostcalls: cannot write {}: {e}", out.display());
        std::process::exit(1);
    }
}

/// `--profile MODULE ROW`: runs `row` on `MODULE`, a build instrumented by `wasm-opt
/// --log-execution` (each function entry and loop header calls `env.log_execution(id)`), and
/// prints each such call of the second request with the fuel executed so far in its callback:
/// `scripts/wasm-profile.py` turns that into a profile by function.
fn profile(issuer: &Issuer, module: &str, row: &str) {
    let result = filter_tests::fake_host::WasmModule::load(std::path::Path::new(module)).and_then(
        |module| {
            let row = host_calls::row(&issuer.jwks, row);
            host_calls::run_module(&row, &issuer.token, &module)
        },
    );
    match result {
        Ok(run) => {
            for (callback, cost) in &run.second.phases {
                for call in &cost.calls {
                    println!("{callback:?}\t{}\t{}", call.label, call.fuel);
                }
                println!("{callback:?}\tend\t{}", cost.fuel);
            }
        }
        Err(e) => {
            eprintln!("hostcalls: {e:#}");
            std::process::exit(1);
        }
    }
}
