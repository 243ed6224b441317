//! The integration suite: every filter module in a real Envoy (`--concurrency 2`), real HTTP,
//! real upstream failures. One test binary; each test starts the Envoy it needs.

mod circuit_breaker;
mod examples;
mod harness;
mod jwt_auth;
mod modules;
mod rate_limit;
mod retry_policy;
