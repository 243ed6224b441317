//! Integration harness: the filters in a real Envoy, with real HTTP, real tokens and real
//! failures. No mocked Envoy here: that is what the unit tests beside the policy code are for.
//!
//! - [`envoy`]: starts Envoy (in Docker, or the native binary) with `--concurrency 2` on free
//!   ports, waits for `/ready`, prints its log when a test fails, and always stops it.
//! - [`envoy_config`]: builds Envoy configurations for tests and adapts the shipped examples.
//! - [`upstream`]: in-process upstream servers with programmable behaviour.
//! - [`client`]: a small HTTP/1.1 client that shows exactly what came back.
//! - [`tokens`]: keys generated at test time and real signed JWTs (RS256, ES256, EdDSA, HS256).
//! - [`wasm`]: where the built modules are, and what they import.

pub mod client;
pub mod envoy;
pub mod envoy_config;
/// Keys generated per run and real signed JWTs (the `testkit` crate).
pub use testkit as tokens;
pub mod upstream;
pub mod wasm;

use std::path::PathBuf;

/// The repository root.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .unwrap_or_default()
}

/// A free TCP port on 127.0.0.1 (the OS picks it; it is released for Envoy to bind).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("cannot find a free port: {e}"))
}
