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

/// Every module's allocator: TLSF (rlsf), constant time per allocation, growing Wasm memory
/// itself. wasi-libc's `malloc` (which Rust's allocations otherwise reach through
/// `posix_memalign`) cost about a thousand Wasm instructions per allocation in the fake host's
/// profile; with dlmalloc-rs a gateway request took 120k instructions, with TLSF 94k (it
/// allocates about 60 times). The default options keep in-place reallocation and join
/// consecutive pages into one pool, so a large buffer (a key set, a configuration) does not
/// strand the rest of a page.
#[cfg(target_arch = "wasm32")]
#[global_allocator]
static ALLOCATOR: rlsf::GlobalTlsf = rlsf::GlobalTlsf::new();
