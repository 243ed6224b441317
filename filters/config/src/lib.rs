//! Configuration reading ([`config`]): serde_json into each filter's raw configuration type,
//! with errors that name the field path, plus the small types configurations share
//! (durations with a unit, free-name maps).
//!
//! A crate of its own because it runs once per plugin load, apart from the request path.
//! `filter-core` re-exports it, so filters name it `filter_core::config`.
#![forbid(unsafe_code)]

pub mod config;
