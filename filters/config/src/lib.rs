//! Configuration reading: a strict, bounded JSON reader ([`json`]) and the typed conversion
//! every filter's configuration goes through ([`config`]), with errors that name the field.
//!
//! A crate of its own so that it can be optimised for size while the request path is
//! optimised for speed (see the release profile in the workspace `Cargo.toml`): it runs once
//! per plugin load, and the JWT header, claims and JWKS reads it also serves are small.
//! `filter-core` re-exports both modules, so filters name them `filter_core::config` and
//! `filter_core::json`.
#![forbid(unsafe_code)]

pub mod config;
pub mod json;
