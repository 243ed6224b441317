//! The documentation is tested like code, without Envoy (so these run in the fast loop too):
//! - [`links`]: every relative link in every Markdown file of the repository leads to a file
//!   that exists, and every `#fragment` to a heading of it;
//! - [`examples`]: every fenced block says what it is, and every configuration example is
//!   parsed and validated by its filter's own code; YAML excerpts match the files in `envoy/`
//!   they quote (those files are validated and started by the integration suite).
//!
//! The conventions the examples follow are in CONTRIBUTING.md ("Documentation").

mod examples;
mod links;
mod markdown;
