//! The binary end to end: `serve` on a free port, `call` against it. (Also makes `cargo test`
//! build the binary itself, with the test build's features, for the integration harness.)

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test code: a panic is how a test fails"
)]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

#[test]
fn a_served_status_reaches_the_client() {
    let bin = env!("CARGO_BIN_EXE_grpc-tool");
    let mut server = Command::new(bin)
        .args(["serve", "--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(server.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let address = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("serve printed {line:?}"))
        .to_owned();
    let out = Command::new(bin)
        .args(["call", "--target", &address, "--path", "/t.S/M"])
        .args(["--header", "x-grpc-reply=trailers:14"])
        .output()
        .unwrap();
    server.kill().unwrap();
    server.wait().unwrap();
    let printed = String::from_utf8_lossy(&out.stdout);
    let outcome: serde_json::Value = serde_json::from_str(printed.trim()).unwrap();
    assert_eq!(outcome["code"], 14, "{printed}");
}
