//! The built filter modules.

use std::path::PathBuf;

/// The four filter modules, by artifact name.
pub const FILTERS: [&str; 4] = ["jwt_auth", "rate_limit", "circuit_breaker", "retry_policy"];

/// The folder `cargo build --release --target wasm32-wasip1` writes modules to.
pub fn module_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| crate::repo_root().join("target"));
    let target = if target.is_absolute() {
        target
    } else {
        crate::repo_root().join(target)
    };
    target.join("wasm32-wasip1").join("release")
}

/// The path of a built module; fails the test, saying how to build it, if it is missing.
pub fn module(name: &str) -> PathBuf {
    let path = module_dir().join(format!("{name}.wasm"));
    assert!(
        path.is_file(),
        "{} is missing: build the filters first (`make build`, or \
         `cargo build --release --target wasm32-wasip1`)",
        path.display()
    );
    path
}

/// The `(module, name)` pairs a module imports.
pub fn imports(path: &std::path::Path) -> Vec<(String, String)> {
    let mut found = Vec::new();
    for_each_section(path, |payload| {
        if let wasmparser::Payload::ImportSection(reader) = payload {
            for import in reader.into_imports() {
                let import =
                    import.unwrap_or_else(|e| panic!("bad import in {}: {e}", path.display()));
                found.push((import.module.to_owned(), import.name.to_owned()));
            }
        }
    });
    found
}

/// The names a module exports.
pub fn exports(path: &std::path::Path) -> Vec<String> {
    let mut found = Vec::new();
    for_each_section(path, |payload| {
        if let wasmparser::Payload::ExportSection(reader) = payload {
            for export in reader {
                let export =
                    export.unwrap_or_else(|e| panic!("bad export in {}: {e}", path.display()));
                found.push(export.name.to_owned());
            }
        }
    });
    found
}

/// Reads a module and hands each of its sections to `visit`; fails the test on bad wasm.
fn for_each_section(path: &std::path::Path, mut visit: impl FnMut(wasmparser::Payload<'_>)) {
    let bytes =
        std::fs::read(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    for payload in wasmparser::Parser::new(0).parse_all(&bytes) {
        visit(payload.unwrap_or_else(|e| panic!("{} is not valid wasm: {e}", path.display())));
    }
}

/// The WASI functions Envoy's proxy-wasm host registers (proxy-wasm-cpp-host,
/// `FOR_ALL_WASI_FUNCTIONS`). A module importing anything else fails at load time, not at
/// build time, so the import check refuses it first.
pub const ENVOY_WASI: &[&str] = &[
    "args_get",
    "args_sizes_get",
    "clock_time_get",
    "environ_get",
    "environ_sizes_get",
    "fd_close",
    "fd_fdstat_get",
    "fd_prestat_dir_name",
    "fd_prestat_get",
    "fd_read",
    "fd_seek",
    "fd_write",
    "path_open",
    "proc_exit",
    "random_get",
];

/// Whether Envoy can satisfy this import.
pub fn import_allowed(module: &str, name: &str) -> bool {
    match module {
        "env" => name.starts_with("proxy_"),
        "wasi_snapshot_preview1" => ENVOY_WASI.contains(&name),
        _ => false,
    }
}
