//! Configuration reading ([`config`]): serde_json into each filter's raw configuration type,
//! with errors that name the field path, plus the small types configurations share
//! (durations with a unit, free-name maps).
//!
//! A crate of its own so that it can be optimised for size while the request path is
//! optimised for speed (see the release profile in the workspace `Cargo.toml`): it runs once
//! per plugin load. [`json`] is the strict reader jwt_auth's token and key-set parsing still
//! uses until it moves to serde_json too. `filter-core` re-exports both modules, so filters
//! name them `filter_core::config` and `filter_core::json`.
#![forbid(unsafe_code)]

pub mod config;
pub mod json;
