//! The only crate that talks to Envoy.
//!
//! It drives any [`filter_core::filter::Filter`]: reads and validates the plugin configuration
//! once, defines the filter's metrics, and for each request gathers the inputs (headers, time,
//! shared data), calls the filter and applies its decision. It holds no policy.
//!
//! Host calls go through `proxy_wasm::hostcalls`, whose `Result`s are handled here. Some of
//! those functions panic on statuses the ABI reserves for misuse (for example reading request
//! headers after they were forwarded), so each is called only in the callback where Envoy
//! guarantees it is valid.
#![forbid(unsafe_code)]

mod context;
mod host;
mod request;

pub use context::register;
pub use host::{HostMetrics, HostStore};
/// Re-exported so [`export_filter!`] works in crates that do not name `proxy-wasm` themselves.
pub use proxy_wasm;

/// Exports a filter as the Wasm module's entry point: `filter_host::export_filter!(RateLimit);`.
///
/// The expansion contains the SDK's `_initialize` export, which calls the WASI constructors
/// in an `unsafe` block, so the invoking module must allow `unsafe_code` for this line only.
#[macro_export]
macro_rules! export_filter {
    ($filter:ty) => {
        $crate::proxy_wasm::main! {{
            $crate::register::<$filter>();
        }}
    };
}

/// Every module's allocator: dlmalloc in Rust, growing Wasm memory itself. The C library's
/// (wasi-libc's, reached through `posix_memalign` for most of Rust's allocations) cost about
/// a thousand Wasm instructions per allocation in the fake host's profile, a third of a
/// request's instructions in the gateway.
#[cfg(target_arch = "wasm32")]
#[global_allocator]
static ALLOCATOR: dlmalloc::GlobalDlmalloc = dlmalloc::GlobalDlmalloc;
