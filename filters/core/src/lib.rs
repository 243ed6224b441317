//! The host-free core shared by every filter of the workspace.
//!
//! Nothing here knows about proxy-wasm. A filter is a value built once from its validated
//! configuration ([`filter::Filter`]); for each request it receives a [`request::RequestView`],
//! the current time and a [`store::SharedStore`], and returns a [`decision::Decision`]. The
//! host layer (`filters/host`) is the only code that talks to Envoy: it gathers those inputs
//! and applies the decision. So every decision can be unit-tested natively with a fake clock
//! and an in-memory store.
//!
//! Invariants (ARCHITECTURE.md repeats them):
//! 1. Only `filters/host` depends on `proxy-wasm`.
//! 2. Policy code never reads a clock or randomness: both arrive as arguments.
//! 3. Configuration is parsed and validated once; unknown fields are errors; every error names
//!    the field path and the reason ([`config::ConfigError`]).
//! 4. State shared across Envoy workers lives only in a [`store::SharedStore`], updated by a
//!    bounded compare-and-swap loop over a bounded key space.
//! 5. No `unwrap`, `expect`, `panic!`, slice indexing or `unsafe` outside tests: a panic traps
//!    the worker's Wasm VM.
#![forbid(unsafe_code)]

pub use filter_config::config;

pub mod decision;
pub mod filter;
pub mod logging;
pub mod matcher;
pub mod metrics;
pub mod random;
pub mod request;
pub mod signature;
pub mod store;
pub mod time;
