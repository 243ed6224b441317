//! `make hostcalls`: the host calls, allocations and Wasm instructions of each filter's allow
//! path per request and phase, counted by the fake host; the table goes to stdout and to
//! `target/hostcalls.md`.

use filter_tests::host_calls::{self, Issuer};

fn main() {
    let issuer = Issuer::generate();
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
