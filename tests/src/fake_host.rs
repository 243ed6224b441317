//! A fake proxy-wasm host: runs a built module in the pure-Rust interpreter wasmi the way Envoy
//! drives it (ABI 0.2.1), and records every host call the module makes, per callback, with
//! the Wasm instructions it executed (wasmi fuel) and how often the host re-entered the VM to
//! allocate memory for an answer.
//!
//! It answers the questions a real Envoy cannot: which host calls a filter makes per request
//! and phase, and how much of its own code runs. It is not a replacement for the integration
//! suite: nothing here is Envoy's code.
//!
//! What it emulates (as proxy-wasm-cpp-host and Envoy do):
//! - the start sequence: `_initialize` (the modules are WASI reactors), then
//!   `proxy_on_context_create(root, 0)`, `proxy_on_vm_start`, `proxy_on_configure`; per stream
//!   `proxy_on_context_create(id, root)`, `proxy_on_request_headers`,
//!   `proxy_on_response_headers`, `proxy_on_log`, `proxy_on_done`, `proxy_on_delete`;
//! - answers that carry data: the host allocates in the VM through the module's exported
//!   `proxy_on_memory_allocate` (or `malloc`), writes the bytes and then the pointer and the
//!   length into the out-parameters; an empty answer allocates nothing (pointer 0, length 0);
//! - header maps: get (the first value), get all (serialized as proxy-wasm does: the count,
//!   the lengths, then names and values each ended by a NUL), set all, replace (the first
//!   entry's value, others of that name removed, appended if absent), add, remove; names are
//!   matched lowercased; a map that does not exist yet answers BadArgument (NotFound in the
//!   log phase);
//! - properties ([`Properties`], NUL-separated paths), and filter state: what
//!   `proxy_set_property` writes, `proxy_get_property` reads back under the same path (Envoy's
//!   `wasm.`-prefixed filter state); the root context has no stream properties;
//! - shared data with Envoy's CAS rules ([`SharedData`]), keyed per VM id, shared by every
//!   [`Vm`] started on the same [`Process`] (Envoy's workers);
//! - metrics (ids from `proxy_define_metric`, increment, record, get), the log level (info),
//!   `proxy_log` lines with their level, the tick period, local replies (recorded on the stream);
//! - a settable clock ([`Process::set_time_nanos`]) behind `proxy_get_current_time_nanoseconds`
//!   and WASI `clock_time_get`; deterministic WASI `random_get`; WASI `fd_write` recorded as
//!   log lines; an empty environment; `proc_exit` ends the callback with an error;
//! - `proxy_call_foreign_function` answers NotFound for every function (so modules verify
//!   signatures in Wasm rather than through Envoy's `verify_signature`).
//!
//! What it does not:
//! - callouts: `proxy_http_call` and `proxy_grpc_call` are recorded and given a token, but no
//!   answer ever arrives; ticks run only when a test calls [`Vm::on_tick`];
//! - bodies, trailers, shared queues, gRPC streams, connection (L4) callbacks; imports it does
//!   not emulate are stubbed (recorded, answering Unimplemented, or ENOSYS for WASI);
//! - a local reply's own pass through the response phase (the stream ends at the reply);
//! - Envoy's memory checks: a pointer outside the module's memory ends the callback with an
//!   error naming the call (Envoy answers InvalidMemoryAccess, which the SDK turns into a trap);
//! - cost: fuel counts Wasm operators as wasmi's default table prices them (1 each; block,
//!   loop, end, else, nop, drop and return free; bulk memory operations 1 per 64 bytes), not
//!   time, and says nothing about the host side of a call (Envoy's work in C++).

use anyhow::{Context as _, Result, anyhow, bail};
use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use wasmi::{
    Caller, CompilationMode, Config, Engine, Error, ExternType, Linker, Memory, Store, TypedFunc,
    Val, ValType,
};

/// The root context's id (Envoy numbers contexts from 1; the root is created first).
pub const ROOT_ID: u32 = 1;

/// Fuel given to each callback: far more than any callback needs, so running out means a
/// runaway loop.
const FUEL_BUDGET: u64 = 1 << 40;

/// A proxy-wasm status (Envoy's `WasmResult`) as the host returns it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Ok = 0,
    NotFound = 1,
    BadArgument = 2,
    SerializationFailure = 3,
    ParseFailure = 4,
    InvalidMemoryAccess = 6,
    Empty = 7,
    CasMismatch = 8,
    InternalFailure = 10,
    Unimplemented = 12,
}

impl Status {
    fn word(self) -> i32 {
        self as i32
    }
}

/// What a callback returned, for the header callbacks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Continue,
    Pause,
    /// Neither 0 nor 1: a module bug.
    Other(i32),
}

impl Action {
    fn from_word(word: i32) -> Action {
        match word {
            0 => Action::Continue,
            1 => Action::Pause,
            other => Action::Other(other),
        }
    }
}

/// The entry points the host calls, as the cost tables name them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Callback {
    Initialize,
    RootCreate,
    VmStart,
    Configure,
    Tick,
    Create,
    RequestHeaders,
    ResponseHeaders,
    Log,
    Done,
    Delete,
}

impl fmt::Display for Callback {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Callback::Initialize => "_initialize",
            Callback::RootCreate => "root context create",
            Callback::VmStart => "vm start",
            Callback::Configure => "configure",
            Callback::Tick => "tick",
            Callback::Create => "context create",
            Callback::RequestHeaders => "request headers",
            Callback::ResponseHeaders => "response headers",
            Callback::Log => "log",
            Callback::Done => "done",
            Callback::Delete => "delete",
        })
    }
}

/// One host call: what it was (`get_header(authorization)`, `now`, `set_shared(key)`, ...)
/// and what the host answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostCall {
    pub label: String,
    pub status: Status,
    /// The fuel the callback had executed when the module made this call: the differences
    /// between calls show where in a phase the instructions go.
    pub fuel: u64,
}

impl fmt::Display for HostCall {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.label)
    }
}

/// What one callback cost.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CallbackCost {
    /// The host calls, in order (allocations are not host calls: see `allocations`).
    pub calls: Vec<HostCall>,
    /// How often the host called back into the VM to allocate memory for an answer.
    pub allocations: u32,
    /// Fuel (Wasm operators) the callback executed, allocations included.
    pub fuel: u64,
    /// Of `fuel`, what the allocations executed.
    pub allocation_fuel: u64,
}

impl CallbackCost {
    /// The call labels, in order.
    pub fn labels(&self) -> Vec<&str> {
        self.calls.iter().map(|c| c.label.as_str()).collect()
    }
}

/// A log line the module wrote (`proxy_log`, or WASI `fd_write` to stdout/stderr).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    /// `trace`, `debug`, `info`, `warn`, `error`, `critical`; `stdout`/`stderr` for WASI.
    pub level: &'static str,
    pub message: String,
}

/// A local reply a module sent (`proxy_send_local_response`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalResponse {
    pub status: u32,
    pub details: String,
    pub body: Vec<u8>,
    pub headers: Vec<(String, String)>,
    pub grpc_status: i32,
}

/// A compiled module, ready to start VMs from.
#[derive(Debug, Clone)]
pub struct WasmModule {
    name: String,
    engine: Engine,
    module: wasmi::Module,
}

impl WasmModule {
    /// Compiles the module at `path` (eagerly, so that no callback's fuel pays for it).
    pub fn load(path: &Path) -> Result<WasmModule> {
        let bytes =
            std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        let mut config = Config::default();
        config
            .consume_fuel(true)
            .compilation_mode(CompilationMode::Eager);
        let engine = Engine::new(&config);
        let module = wasmi::Module::new(&engine, &bytes)
            .map_err(|e| anyhow!("{} does not compile in wasmi: {e}", path.display()))?;
        let name = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        Ok(WasmModule {
            name,
            engine,
            module,
        })
    }

    /// One of the modules `make build` writes (`jwt_auth`, `gateway`, ...); an error saying to
    /// run `make build` if it is missing.
    pub fn built(name: &str) -> Result<WasmModule> {
        let path = crate::wasm::module_dir().join(format!("{name}.wasm"));
        if !path.is_file() {
            bail!(
                "{} is missing: run `make build` (the fake host runs the built modules)",
                path.display()
            );
        }
        WasmModule::load(&path)
    }

    /// The module's name (its file name without `.wasm`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The `(module, name)` pairs the module imports.
    pub fn imports(&self) -> Vec<(String, String)> {
        self.module
            .imports()
            .map(|i| (i.module().to_owned(), i.name().to_owned()))
            .collect()
    }
}

/// One Envoy process: the shared data and the clock its workers share. Start one [`Vm`] per
/// worker on it.
#[derive(Debug, Clone)]
pub struct Process {
    shared: SharedData,
    clock: Arc<AtomicU64>,
    workers: Arc<AtomicU64>,
    properties: Properties,
}

impl Default for Process {
    fn default() -> Self {
        Process::new()
    }
}

impl Process {
    /// A process whose clock reads the real time now (so that tokens signed now are valid),
    /// and then stands still until set or advanced.
    pub fn new() -> Process {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
        Process {
            shared: SharedData::default(),
            clock: Arc::new(AtomicU64::new(now)),
            workers: Arc::new(AtomicU64::new(0)),
            properties: Properties::default(),
        }
    }

    /// The shared data every worker of this process sees.
    pub fn shared_data(&self) -> &SharedData {
        &self.shared
    }

    /// The properties the streams of VMs started from now on will answer.
    pub fn set_properties(&mut self, properties: Properties) {
        self.properties = properties;
    }

    /// The wall clock, in nanoseconds since the Unix epoch.
    pub fn time_nanos(&self) -> u64 {
        self.clock.load(Ordering::SeqCst)
    }

    pub fn set_time_nanos(&self, nanos: u64) {
        self.clock.store(nanos, Ordering::SeqCst);
    }

    pub fn advance(&self, by: Duration) {
        let by = u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
        self.clock.fetch_add(by, Ordering::SeqCst);
    }
}

/// The stream properties the host answers `proxy_get_property` with, by dotted path
/// (`source.address`); values are bytes as Envoy serializes them (strings as they are,
/// integers as 8 bytes little-endian).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Properties(pub Vec<(String, Vec<u8>)>);

impl Default for Properties {
    /// A request on a direct-response route of a listener on loopback, answered 200.
    fn default() -> Self {
        let text = |path: &str, value: &str| (path.to_owned(), value.as_bytes().to_vec());
        let int = |path: &str, value: u64| (path.to_owned(), value.to_le_bytes().to_vec());
        Properties(vec![
            text("source.address", "127.0.0.1:5555"),
            int("upstream.request_attempt_count", 1),
            text("response.code_details", "via_upstream"),
            int("response.flags", 0),
            text("xds.cluster_name", "bench"),
            text("xds.route_name", "bench"),
        ])
    }
}

impl Properties {
    fn get(&self, path: &str) -> Option<&[u8]> {
        self.0
            .iter()
            .find(|(p, _)| p == path)
            .map(|(_, v)| v.as_slice())
    }
}

/// Called before each shared-data write a module makes, with the store, the VM id and the
/// key: a test writes from here to play another worker racing the module.
pub type WriteHook = Box<dyn FnMut(&SharedData, &str, &[u8]) + Send>;

/// Envoy's shared data (proxy-wasm-cpp-host's `SharedData`): one map per VM id, and one
/// process-wide CAS counter. Clones share the same store.
///
/// The rules: every write, insert or update, takes a fresh CAS from the one counter (starting
/// at 1, skipping 0); a write with a non-zero CAS to an existing key succeeds only if it
/// equals the key's current CAS (CasMismatch otherwise); a write to a missing key always
/// succeeds, whatever its CAS; a get of a missing key answers NotFound. Keys are never deleted.
#[derive(Clone, Default)]
pub struct SharedData {
    inner: Arc<Mutex<SharedInner>>,
    hook: Arc<Mutex<Option<WriteHook>>>,
}

impl fmt::Debug for SharedData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = self.lock();
        f.debug_struct("SharedData")
            .field("entries", &inner.entries.len())
            .field("next_cas", &inner.next_cas)
            .finish()
    }
}

#[derive(Debug)]
struct SharedInner {
    next_cas: u32,
    entries: HashMap<(String, Vec<u8>), (Vec<u8>, u32)>,
}

impl Default for SharedInner {
    fn default() -> Self {
        SharedInner {
            next_cas: 1,
            entries: HashMap::new(),
        }
    }
}

impl SharedData {
    fn lock(&self) -> std::sync::MutexGuard<'_, SharedInner> {
        // A poisoned lock only means another test thread panicked; the map is still whole.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The value and CAS of `key` in `vm_id`'s map.
    pub fn get(&self, vm_id: &str, key: &[u8]) -> Option<(Vec<u8>, u32)> {
        self.lock()
            .entries
            .get(&(vm_id.to_owned(), key.to_vec()))
            .cloned()
    }

    /// Writes as Envoy does: Ok, or CasMismatch.
    pub fn set(&self, vm_id: &str, key: &[u8], value: &[u8], cas: u32) -> Status {
        let mut inner = self.lock();
        let next = inner.next_cas;
        let entry_key = (vm_id.to_owned(), key.to_vec());
        if let Some((_, current)) = inner.entries.get(&entry_key)
            && cas != 0
            && cas != *current
        {
            return Status::CasMismatch;
        }
        inner.entries.insert(entry_key, (value.to_vec(), next));
        inner.next_cas = match next.wrapping_add(1) {
            0 => 1,
            n => n,
        };
        Status::Ok
    }

    /// The keys of `vm_id`'s map, sorted.
    pub fn keys(&self, vm_id: &str) -> Vec<Vec<u8>> {
        let mut keys: Vec<Vec<u8>> = self
            .lock()
            .entries
            .keys()
            .filter(|(vm, _)| vm == vm_id)
            .map(|(_, k)| k.clone())
            .collect();
        keys.sort();
        keys
    }

    /// Sets (or with `None` removes) the hook run before each write a module makes.
    pub fn set_write_hook(&self, hook: Option<WriteHook>) {
        *self.hook.lock().unwrap_or_else(|e| e.into_inner()) = hook;
    }

    fn run_write_hook(&self, vm_id: &str, key: &[u8]) {
        // Taken out while it runs, so that it may write to the store (and not run itself).
        let taken = self.hook.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(mut hook) = taken {
            hook(self, vm_id, key);
            let mut slot = self.hook.lock().unwrap_or_else(|e| e.into_inner());
            if slot.is_none() {
                *slot = Some(hook);
            }
        }
    }
}

/// A header map as Envoy keeps it: ordered, names lowercased.
pub type Headers = Vec<(String, String)>;

/// One HTTP stream's state on the host side.
#[derive(Debug, Clone, Default)]
pub struct Stream {
    pub request_headers: Option<Headers>,
    pub response_headers: Option<Headers>,
    /// What `proxy_set_property` wrote, by raw (NUL-separated) path.
    pub filter_state: Vec<(Vec<u8>, Vec<u8>)>,
    pub local_response: Option<LocalResponse>,
    /// `proxy_continue_stream` calls (0 request, 1 response).
    pub continued: Vec<i32>,
    pub closed: Vec<i32>,
    in_log_phase: bool,
}

#[derive(Debug, Clone)]
struct Metric {
    kind: i32,
    name: String,
    value: u64,
}

/// A callout a module dispatched (never answered).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Callout {
    pub token: u32,
    /// The cluster (HTTP) or `cluster/service/method` (gRPC).
    pub target: String,
}

/// The host's state inside the wasmi store.
struct HostState {
    vm_id: String,
    memory: Option<Memory>,
    malloc: Option<TypedFunc<i32, i32>>,
    shared: SharedData,
    clock: Arc<AtomicU64>,
    properties: Properties,
    random: u64,
    configuration: Vec<u8>,
    /// Which configuration buffer Envoy would hand out now (6 VM, 7 plugin).
    readable_buffer: Option<i32>,
    streams: HashMap<u32, Stream>,
    current: u32,
    metrics: Vec<Metric>,
    tick_period_ms: Option<u32>,
    logs: Vec<LogLine>,
    callouts: Vec<Callout>,
    next_token: u32,
    recording: CallbackCost,
    /// The callback's fuel so far when the current host call came in.
    fuel_at_call: u64,
}

impl HostState {
    fn record(&mut self, label: String, status: Status) -> i32 {
        let fuel = self.fuel_at_call;
        self.recording.calls.push(HostCall {
            label,
            status,
            fuel,
        });
        status.word()
    }

    fn stream(&mut self) -> Option<&mut Stream> {
        let current = self.current;
        self.streams.get_mut(&current)
    }
}

/// One worker's VM: a module instance started with a configuration, on a [`Process`].
pub struct Vm {
    module_name: String,
    store: Store<HostState>,
    entry: Entry,
    next_context_id: u32,
    startup: Vec<(Callback, CallbackCost)>,
}

impl fmt::Debug for Vm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Vm")
            .field("module", &self.module_name)
            .field("next_context_id", &self.next_context_id)
            .finish()
    }
}

/// The exported entry points the host calls.
struct Entry {
    on_context_create: TypedFunc<(i32, i32), ()>,
    on_vm_start: TypedFunc<(i32, i32), i32>,
    on_configure: TypedFunc<(i32, i32), i32>,
    on_request_headers: TypedFunc<(i32, i32, i32), i32>,
    on_response_headers: TypedFunc<(i32, i32, i32), i32>,
    on_log: TypedFunc<i32, ()>,
    on_done: TypedFunc<i32, i32>,
    on_delete: TypedFunc<i32, ()>,
    on_tick: Option<TypedFunc<i32, ()>>,
}

/// One request through one stream, each callback's cost in order.
#[derive(Debug, Clone)]
pub struct RequestRun {
    pub phases: Vec<(Callback, CallbackCost)>,
    pub request_action: Action,
    /// `None` when the stream ended before the response (a local reply, or a pause).
    pub response_action: Option<Action>,
    /// The stream as it ended: headers after the module's edits, its local reply, its filter
    /// state.
    pub stream: Stream,
}

impl RequestRun {
    /// The cost of one phase (empty if the phase did not run).
    pub fn phase(&self, callback: Callback) -> CallbackCost {
        self.phases
            .iter()
            .find(|(c, _)| *c == callback)
            .map(|(_, cost)| cost.clone())
            .unwrap_or_default()
    }
}

impl Vm {
    /// Instantiates `module` on `process` with the plugin `configuration`, and starts it as
    /// Envoy does: `_initialize`, the root context, `proxy_on_vm_start` (empty VM
    /// configuration), `proxy_on_configure`. The VM id (the shared-data namespace) is the
    /// module's name.
    pub fn start(process: &Process, module: &WasmModule, configuration: &[u8]) -> Result<Vm> {
        Vm::start_with_vm_id(process, module, configuration, module.name())
    }

    /// [`Vm::start`] with another VM id.
    pub fn start_with_vm_id(
        process: &Process,
        module: &WasmModule,
        configuration: &[u8],
        vm_id: &str,
    ) -> Result<Vm> {
        let worker = process.workers.fetch_add(1, Ordering::SeqCst);
        let state = HostState {
            vm_id: vm_id.to_owned(),
            memory: None,
            malloc: None,
            shared: process.shared.clone(),
            clock: process.clock.clone(),
            properties: process.properties.clone(),
            random: 0x9e37_79b9_7f4a_7c15 ^ worker,
            configuration: configuration.to_vec(),
            readable_buffer: None,
            streams: HashMap::new(),
            current: ROOT_ID,
            metrics: Vec::new(),
            tick_period_ms: None,
            logs: Vec::new(),
            callouts: Vec::new(),
            next_token: 1,
            recording: CallbackCost::default(),
            fuel_at_call: 0,
        };
        let mut store = Store::new(&module.engine, state);
        let linker = linker(&module.engine, &module.module)
            .with_context(|| format!("cannot link {}", module.name))?;
        let instance = linker
            .instantiate_and_start(&mut store, &module.module)
            .map_err(|e| anyhow!("cannot instantiate {}: {e}", module.name))?;
        let name = &module.name;
        if instance
            .get_func(&store, "proxy_abi_version_0_2_1")
            .is_none()
        {
            bail!("{name} does not export proxy_abi_version_0_2_1 (Envoy would refuse it)");
        }
        let memory = instance
            .get_memory(&store, "memory")
            .ok_or_else(|| anyhow!("{name} exports no memory"))?;
        let malloc = instance
            .get_typed_func::<i32, i32>(&store, "proxy_on_memory_allocate")
            .or_else(|_| instance.get_typed_func::<i32, i32>(&store, "malloc"))
            .map_err(|e| anyhow!("{name} exports no proxy_on_memory_allocate nor malloc: {e}"))?;
        store.data_mut().memory = Some(memory);
        store.data_mut().malloc = Some(malloc);
        macro_rules! export {
            ($name:literal) => {
                instance
                    .get_typed_func(&store, $name)
                    .map_err(|e| anyhow!("{name}: export {}: {e}", $name))?
            };
        }
        let entry = Entry {
            on_context_create: export!("proxy_on_context_create"),
            on_vm_start: export!("proxy_on_vm_start"),
            on_configure: export!("proxy_on_configure"),
            on_request_headers: export!("proxy_on_request_headers"),
            on_response_headers: export!("proxy_on_response_headers"),
            on_log: export!("proxy_on_log"),
            on_done: export!("proxy_on_done"),
            on_delete: export!("proxy_on_delete"),
            on_tick: instance.get_typed_func(&store, "proxy_on_tick").ok(),
        };
        let initialize = instance
            .get_typed_func::<(), ()>(&store, "_initialize")
            .ok();
        let mut vm = Vm {
            module_name: module.name.clone(),
            store,
            entry,
            next_context_id: ROOT_ID + 1,
            startup: Vec::new(),
        };
        if let Some(initialize) = initialize {
            let ((), cost) = vm.callback(Callback::Initialize, ROOT_ID, initialize, ())?;
            vm.startup.push((Callback::Initialize, cost));
        }
        let create = vm.entry.on_context_create;
        let ((), cost) = vm.callback(Callback::RootCreate, ROOT_ID, create, (ROOT_ID as i32, 0))?;
        vm.startup.push((Callback::RootCreate, cost));
        vm.store.data_mut().readable_buffer = Some(6);
        let vm_start = vm.entry.on_vm_start;
        let (ok, cost) = vm.callback(Callback::VmStart, ROOT_ID, vm_start, (ROOT_ID as i32, 0))?;
        vm.startup.push((Callback::VmStart, cost));
        if ok == 0 {
            bail!("{name}: proxy_on_vm_start returned false{}", vm.log_tail());
        }
        vm.store.data_mut().readable_buffer = Some(7);
        let size = i32::try_from(configuration.len()).context("configuration too large")?;
        let on_configure = vm.entry.on_configure;
        let result = vm.callback(
            Callback::Configure,
            ROOT_ID,
            on_configure,
            (ROOT_ID as i32, size),
        );
        vm.store.data_mut().readable_buffer = None;
        let (ok, cost) = result?;
        vm.startup.push((Callback::Configure, cost));
        if ok == 0 {
            bail!(
                "{name}: proxy_on_configure returned false (the configuration was refused){}",
                vm.log_tail()
            );
        }
        Ok(vm)
    }

    /// What each start callback cost.
    pub fn startup(&self) -> &[(Callback, CallbackCost)] {
        &self.startup
    }

    /// The module's log lines so far.
    pub fn logs(&self) -> &[LogLine] {
        &self.store.data().logs
    }

    /// The metrics defined so far, by name, with their values.
    pub fn metrics(&self) -> Vec<(String, u64)> {
        self.store
            .data()
            .metrics
            .iter()
            .map(|m| (m.name.clone(), m.value))
            .collect()
    }

    /// The tick period the module asked for, if any.
    pub fn tick_period_ms(&self) -> Option<u32> {
        self.store.data().tick_period_ms
    }

    /// The callouts dispatched so far.
    pub fn callouts(&self) -> &[Callout] {
        &self.store.data().callouts
    }

    /// A stream's state (headers after edits, local reply, filter state).
    pub fn stream(&self, id: u32) -> Option<&Stream> {
        self.store.data().streams.get(&id)
    }

    /// A new HTTP stream: `proxy_on_context_create(id, root)`.
    pub fn create_stream(&mut self) -> Result<(u32, CallbackCost)> {
        let id = self.next_context_id;
        self.next_context_id += 1;
        self.store.data_mut().streams.insert(id, Stream::default());
        let create = self.entry.on_context_create;
        let ((), cost) =
            self.callback(Callback::Create, id, create, (id as i32, ROOT_ID as i32))?;
        Ok((id, cost))
    }

    /// `proxy_on_request_headers(id, n, end_of_stream)` with these request headers.
    pub fn on_request_headers(
        &mut self,
        id: u32,
        headers: &[(&str, &str)],
        end_of_stream: bool,
    ) -> Result<(Action, CallbackCost)> {
        let n = self.set_map(id, headers, true)?;
        let f = self.entry.on_request_headers;
        let (action, cost) = self.callback(
            Callback::RequestHeaders,
            id,
            f,
            (id as i32, n, i32::from(end_of_stream)),
        )?;
        Ok((Action::from_word(action), cost))
    }

    /// `proxy_on_response_headers(id, n, end_of_stream)` with these response headers.
    pub fn on_response_headers(
        &mut self,
        id: u32,
        headers: &[(&str, &str)],
        end_of_stream: bool,
    ) -> Result<(Action, CallbackCost)> {
        let n = self.set_map(id, headers, false)?;
        let f = self.entry.on_response_headers;
        let (action, cost) = self.callback(
            Callback::ResponseHeaders,
            id,
            f,
            (id as i32, n, i32::from(end_of_stream)),
        )?;
        Ok((Action::from_word(action), cost))
    }

    fn set_map(&mut self, id: u32, headers: &[(&str, &str)], request: bool) -> Result<i32> {
        let stream = self
            .store
            .data_mut()
            .streams
            .get_mut(&id)
            .ok_or_else(|| anyhow!("no stream {id}"))?;
        let map: Headers = headers
            .iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), (*v).to_owned()))
            .collect();
        if request {
            stream.request_headers = Some(map);
        } else {
            stream.response_headers = Some(map);
        }
        i32::try_from(headers.len()).context("too many headers")
    }

    /// `proxy_on_log(id)`.
    pub fn on_log(&mut self, id: u32) -> Result<CallbackCost> {
        if let Some(stream) = self.store.data_mut().streams.get_mut(&id) {
            stream.in_log_phase = true;
        }
        let f = self.entry.on_log;
        let ((), cost) = self.callback(Callback::Log, id, f, id as i32)?;
        Ok(cost)
    }

    /// `proxy_on_done(id)`: whether the module is done with the stream.
    pub fn on_done(&mut self, id: u32) -> Result<(bool, CallbackCost)> {
        let f = self.entry.on_done;
        let (done, cost) = self.callback(Callback::Done, id, f, id as i32)?;
        Ok((done != 0, cost))
    }

    /// `proxy_on_delete(id)`; the host forgets the stream (returned as it ended).
    pub fn on_delete(&mut self, id: u32) -> Result<(Stream, CallbackCost)> {
        let f = self.entry.on_delete;
        let ((), cost) = self.callback(Callback::Delete, id, f, id as i32)?;
        let stream = self
            .store
            .data_mut()
            .streams
            .remove(&id)
            .unwrap_or_default();
        Ok((stream, cost))
    }

    /// `proxy_on_tick(root)`.
    pub fn on_tick(&mut self) -> Result<CallbackCost> {
        let f = self
            .entry
            .on_tick
            .ok_or_else(|| anyhow!("{} exports no proxy_on_tick", self.module_name))?;
        let ((), cost) = self.callback(Callback::Tick, ROOT_ID, f, ROOT_ID as i32)?;
        Ok(cost)
    }

    /// One whole request: create, request headers (end of stream), response headers (end of
    /// stream) unless the request was answered locally or paused, log, done, delete.
    pub fn request(
        &mut self,
        request_headers: &[(&str, &str)],
        response_headers: &[(&str, &str)],
    ) -> Result<RequestRun> {
        let mut phases = Vec::new();
        let (id, cost) = self.create_stream()?;
        phases.push((Callback::Create, cost));
        let (request_action, cost) = self.on_request_headers(id, request_headers, true)?;
        phases.push((Callback::RequestHeaders, cost));
        let answered_locally = self.stream(id).is_some_and(|s| s.local_response.is_some());
        let response_action = if request_action == Action::Continue && !answered_locally {
            let (action, cost) = self.on_response_headers(id, response_headers, true)?;
            phases.push((Callback::ResponseHeaders, cost));
            Some(action)
        } else {
            None
        };
        phases.push((Callback::Log, self.on_log(id)?));
        let (_, cost) = self.on_done(id)?;
        phases.push((Callback::Done, cost));
        let (stream, cost) = self.on_delete(id)?;
        phases.push((Callback::Delete, cost));
        Ok(RequestRun {
            phases,
            request_action,
            response_action,
            stream,
        })
    }

    /// Runs one exported function as a callback of `context`, metering it.
    fn callback<P, R>(
        &mut self,
        which: Callback,
        context: u32,
        f: TypedFunc<P, R>,
        params: P,
    ) -> Result<(R, CallbackCost)>
    where
        P: wasmi::WasmParams,
        R: wasmi::WasmResults,
    {
        let state = self.store.data_mut();
        state.current = context;
        state.recording = CallbackCost::default();
        self.store
            .set_fuel(FUEL_BUDGET)
            .map_err(|e| anyhow!("cannot set fuel: {e}"))?;
        let result = f.call(&mut self.store, params);
        let left = self.store.get_fuel().unwrap_or(0);
        let mut cost = std::mem::take(&mut self.store.data_mut().recording);
        cost.fuel = FUEL_BUDGET.saturating_sub(left);
        match result {
            Ok(value) => Ok((value, cost)),
            Err(e) => Err(anyhow!(
                "{which} of {} (context {context}) failed: {e}\n  host calls before: [{}]{}",
                self.module_name,
                cost.labels().join(", "),
                self.log_tail()
            )),
        }
    }

    /// The last log lines, to explain a failure.
    fn log_tail(&self) -> String {
        let logs = &self.store.data().logs;
        let tail: Vec<String> = logs
            .iter()
            .skip(logs.len().saturating_sub(5))
            .map(|l| format!("  [{}] {}", l.level, l.message))
            .collect();
        if tail.is_empty() {
            String::new()
        } else {
            format!("\n  last log lines:\n{}", tail.join("\n"))
        }
    }
}

// ---- Host functions ----------------------------------------------------------------------

type C<'a> = Caller<'a, HostState>;

fn host_error(call: &str, what: impl fmt::Display) -> Error {
    Error::new(format!("host call {call}: {what}"))
}

fn memory(caller: &C<'_>, call: &str) -> Result<Memory, Error> {
    caller
        .data()
        .memory
        .ok_or_else(|| host_error(call, "the module's memory is not known yet"))
}

fn read(caller: &C<'_>, call: &str, ptr: i32, len: i32) -> Result<Vec<u8>, Error> {
    let memory = memory(caller, call)?;
    let (start, len) = (ptr as u32 as usize, len as u32 as usize);
    let data = memory.data(caller);
    start
        .checked_add(len)
        .and_then(|end| data.get(start..end))
        .map(<[u8]>::to_vec)
        .ok_or_else(|| {
            host_error(
                call,
                format!(
                    "reads {len} bytes at {start}, outside the module's memory ({} bytes)",
                    data.len()
                ),
            )
        })
}

fn read_text(caller: &C<'_>, call: &str, ptr: i32, len: i32) -> Result<String, Error> {
    Ok(String::from_utf8_lossy(&read(caller, call, ptr, len)?).into_owned())
}

fn write(caller: &mut C<'_>, call: &str, ptr: i32, bytes: &[u8]) -> Result<(), Error> {
    let memory = memory(caller, call)?;
    let start = ptr as u32 as usize;
    let data = memory.data_mut(&mut *caller);
    let size = data.len();
    start
        .checked_add(bytes.len())
        .and_then(|end| data.get_mut(start..end))
        .map(|slot| slot.copy_from_slice(bytes))
        .ok_or_else(|| {
            host_error(
                call,
                format!(
                    "writes {} bytes at {start}, outside the module's memory ({size} bytes)",
                    bytes.len()
                ),
            )
        })
}

fn write_u32(caller: &mut C<'_>, call: &str, ptr: i32, value: u32) -> Result<(), Error> {
    write(caller, call, ptr, &value.to_le_bytes())
}

fn write_u64(caller: &mut C<'_>, call: &str, ptr: i32, value: u64) -> Result<(), Error> {
    write(caller, call, ptr, &value.to_le_bytes())
}

/// Hands `bytes` to the module as Envoy's `copyToPointerSize` does: allocates in the VM
/// (counted), copies, writes pointer and size; nothing allocated for an empty answer.
fn answer(
    caller: &mut C<'_>,
    call: &str,
    bytes: &[u8],
    ptr_ptr: i32,
    size_ptr: i32,
) -> Result<(), Error> {
    let size = u32::try_from(bytes.len()).map_err(|_| host_error(call, "answer too large"))?;
    let mut pointer = 0;
    if size > 0 {
        let malloc = caller
            .data()
            .malloc
            .ok_or_else(|| host_error(call, "no allocator"))?;
        let before = caller.get_fuel().unwrap_or(0);
        let allocated = malloc.call(&mut *caller, size as i32).map_err(|e| {
            host_error(
                call,
                format!("proxy_on_memory_allocate({size}) failed: {e}"),
            )
        })?;
        let after = caller.get_fuel().unwrap_or(0);
        let recording = &mut caller.data_mut().recording;
        recording.allocations += 1;
        recording.allocation_fuel += before.saturating_sub(after);
        if allocated == 0 {
            return Err(host_error(
                call,
                format!("proxy_on_memory_allocate({size}) returned 0"),
            ));
        }
        pointer = allocated as u32;
        write(caller, call, allocated, bytes)?;
    }
    write_u32(caller, call, ptr_ptr, pointer)?;
    write_u32(caller, call, size_ptr, size)
}

fn map_name(map: i32) -> String {
    match map {
        0 => "header".to_owned(),
        1 => "request_trailer".to_owned(),
        2 => "response_header".to_owned(),
        3 => "response_trailer".to_owned(),
        other => format!("map{other}_entry"),
    }
}

/// The stream's header map `map`, or the status Envoy answers when it has none.
fn header_map(state: &mut HostState, map: i32) -> Result<&mut Headers, Status> {
    let stream = state.stream().ok_or(Status::BadArgument)?;
    let log_phase = stream.in_log_phase;
    let found = match map {
        0 => stream.request_headers.as_mut(),
        2 => stream.response_headers.as_mut(),
        _ => None,
    };
    found.ok_or(if log_phase {
        Status::NotFound
    } else {
        Status::BadArgument
    })
}

/// proxy-wasm's serialized map: count, (name length, value length) per pair, then each name
/// and value followed by a NUL.
pub fn serialize_pairs(pairs: &[(String, String)]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&(pairs.len() as u32).to_le_bytes());
    for (k, v) in pairs {
        out.extend_from_slice(&(k.len() as u32).to_le_bytes());
        out.extend_from_slice(&(v.len() as u32).to_le_bytes());
    }
    for (k, v) in pairs {
        out.extend_from_slice(k.as_bytes());
        out.push(0);
        out.extend_from_slice(v.as_bytes());
        out.push(0);
    }
    out
}

/// Reads a serialized map; `None` if it is malformed.
pub fn deserialize_pairs(bytes: &[u8]) -> Option<Vec<(String, String)>> {
    if bytes.is_empty() {
        return Some(Vec::new());
    }
    let word = |at: usize| -> Option<usize> {
        let b: [u8; 4] = bytes.get(at..at + 4)?.try_into().ok()?;
        Some(u32::from_le_bytes(b) as usize)
    };
    let count = word(0)?;
    let mut lengths = Vec::new();
    for i in 0..count {
        lengths.push((word(4 + i * 8)?, word(8 + i * 8)?));
    }
    let mut at = 4 + count.checked_mul(8)?;
    let mut take = |len: usize| -> Option<String> {
        let text = bytes.get(at..at.checked_add(len)?)?;
        at += len + 1; // and the NUL
        Some(String::from_utf8_lossy(text).into_owned())
    };
    lengths
        .into_iter()
        .map(|(k, v)| Some((take(k)?, take(v)?)))
        .collect()
}

/// A shared-data key or a path as a label: printable ASCII as is, other bytes escaped.
fn printable(bytes: &[u8]) -> String {
    bytes.escape_ascii().to_string()
}

fn property_label(path: &[u8]) -> String {
    path.split(|b| *b == 0)
        .map(printable)
        .collect::<Vec<_>>()
        .join(".")
}

fn log_level_name(level: i32) -> &'static str {
    match level {
        0 => "trace",
        1 => "debug",
        2 => "info",
        3 => "warn",
        4 => "error",
        5 => "critical",
        _ => "invalid",
    }
}

fn proxy_log(mut caller: C<'_>, level: i32, ptr: i32, len: i32) -> Result<i32, Error> {
    let message = read_text(&caller, "proxy_log", ptr, len)?;
    let level = log_level_name(level);
    let state = caller.data_mut();
    state.logs.push(LogLine { level, message });
    Ok(state.record(format!("log({level})"), Status::Ok))
}

fn proxy_get_log_level(mut caller: C<'_>, ptr: i32) -> Result<i32, Error> {
    write_u32(&mut caller, "proxy_get_log_level", ptr, 2)?;
    Ok(caller
        .data_mut()
        .record("get_log_level".to_owned(), Status::Ok))
}

fn proxy_get_current_time_nanoseconds(mut caller: C<'_>, ptr: i32) -> Result<i32, Error> {
    let now = caller.data().clock.load(Ordering::SeqCst);
    write_u64(&mut caller, "proxy_get_current_time_nanoseconds", ptr, now)?;
    Ok(caller.data_mut().record("now".to_owned(), Status::Ok))
}

fn proxy_set_tick_period_milliseconds(mut caller: C<'_>, period: i32) -> Result<i32, Error> {
    let state = caller.data_mut();
    state.tick_period_ms = Some(period as u32);
    Ok(state.record(format!("set_tick_period({})", period as u32), Status::Ok))
}

fn proxy_get_buffer_bytes(
    mut caller: C<'_>,
    kind: i32,
    start: i32,
    length: i32,
    ptr_ptr: i32,
    size_ptr: i32,
) -> Result<i32, Error> {
    let call = "proxy_get_buffer_bytes";
    let label = match kind {
        6 => "get_buffer(vm_configuration)".to_owned(),
        7 => "get_buffer(plugin_configuration)".to_owned(),
        other => format!("get_buffer({other})"),
    };
    let state = caller.data();
    let buffer: Option<Vec<u8>> = match (kind, state.readable_buffer) {
        (6, Some(6)) => Some(Vec::new()),
        (7, Some(7)) => Some(state.configuration.clone()),
        _ => None,
    };
    let Some(buffer) = buffer else {
        return Ok(caller.data_mut().record(label, Status::NotFound));
    };
    let (start, mut length) = (u64::from(start as u32), u64::from(length as u32));
    let size = buffer.len() as u64;
    if start > size {
        return Ok(caller.data_mut().record(label, Status::BadArgument));
    }
    if start + length > size {
        length = size - start;
    }
    if length > 0 {
        let slice = buffer
            .get(start as usize..(start + length) as usize)
            .unwrap_or_default();
        answer(&mut caller, call, slice, ptr_ptr, size_ptr)?;
    }
    Ok(caller.data_mut().record(label, Status::Ok))
}

fn proxy_get_header_map_value(
    mut caller: C<'_>,
    map: i32,
    key_ptr: i32,
    key_len: i32,
    ptr_ptr: i32,
    size_ptr: i32,
) -> Result<i32, Error> {
    let call = "proxy_get_header_map_value";
    let key = read_text(&caller, call, key_ptr, key_len)?;
    let label = format!("get_{}({key})", map_name(map));
    let lower = key.to_ascii_lowercase();
    let found = match header_map(caller.data_mut(), map) {
        Ok(headers) => headers
            .iter()
            .find(|(k, _)| *k == lower)
            .map(|(_, v)| v.clone())
            .ok_or(Status::NotFound),
        Err(status) => Err(status),
    };
    match found {
        Ok(value) => {
            answer(&mut caller, call, value.as_bytes(), ptr_ptr, size_ptr)?;
            Ok(caller.data_mut().record(label, Status::Ok))
        }
        Err(status) => Ok(caller.data_mut().record(label, status)),
    }
}

fn proxy_get_header_map_pairs(
    mut caller: C<'_>,
    map: i32,
    ptr_ptr: i32,
    size_ptr: i32,
) -> Result<i32, Error> {
    let call = "proxy_get_header_map_pairs";
    let label = format!("get_{}s", map_name(map));
    let pairs = match header_map(caller.data_mut(), map) {
        Ok(headers) => headers.clone(),
        Err(status) => return Ok(caller.data_mut().record(label, status)),
    };
    let bytes = if pairs.is_empty() {
        Vec::new()
    } else {
        serialize_pairs(&pairs)
    };
    answer(&mut caller, call, &bytes, ptr_ptr, size_ptr)?;
    Ok(caller.data_mut().record(label, Status::Ok))
}

fn proxy_set_header_map_pairs(
    mut caller: C<'_>,
    map: i32,
    ptr: i32,
    len: i32,
) -> Result<i32, Error> {
    let call = "proxy_set_header_map_pairs";
    let bytes = read(&caller, call, ptr, len)?;
    let label = format!("set_{}s", map_name(map));
    let Some(pairs) = deserialize_pairs(&bytes) else {
        return Ok(caller.data_mut().record(label, Status::BadArgument));
    };
    let status = match header_map(caller.data_mut(), map) {
        Ok(headers) => {
            *headers = pairs
                .into_iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), v))
                .collect();
            Status::Ok
        }
        Err(status) => status,
    };
    Ok(caller.data_mut().record(label, status))
}

#[derive(Clone, Copy)]
enum Edit {
    Replace,
    Add,
}

fn edit_header(
    mut caller: C<'_>,
    call: &str,
    edit: Edit,
    map: i32,
    key: (i32, i32),
    value: (i32, i32),
) -> Result<i32, Error> {
    let name = read_text(&caller, call, key.0, key.1)?;
    let value = read_text(&caller, call, value.0, value.1)?;
    let verb = match edit {
        Edit::Replace => "set",
        Edit::Add => "add",
    };
    let label = format!("{verb}_{}({name})", map_name(map));
    let lower = name.to_ascii_lowercase();
    let status = match header_map(caller.data_mut(), map) {
        Ok(headers) => {
            match edit {
                Edit::Replace => {
                    if let Some(first) = headers.iter().position(|(k, _)| *k == lower) {
                        let mut index = 0;
                        headers.retain(|(k, _)| {
                            let keep = *k != lower || index == first;
                            index += 1;
                            keep
                        });
                        if let Some(entry) = headers.get_mut(first) {
                            entry.1 = value;
                        }
                    } else {
                        headers.push((lower, value));
                    }
                }
                Edit::Add => headers.push((lower, value)),
            }
            Status::Ok
        }
        Err(status) => status,
    };
    Ok(caller.data_mut().record(label, status))
}

fn proxy_remove_header_map_value(
    mut caller: C<'_>,
    map: i32,
    key_ptr: i32,
    key_len: i32,
) -> Result<i32, Error> {
    let name = read_text(&caller, "proxy_remove_header_map_value", key_ptr, key_len)?;
    let label = format!("remove_{}({name})", map_name(map));
    let lower = name.to_ascii_lowercase();
    let status = match header_map(caller.data_mut(), map) {
        Ok(headers) => {
            headers.retain(|(k, _)| *k != lower);
            Status::Ok
        }
        Err(status) => status,
    };
    Ok(caller.data_mut().record(label, status))
}

fn proxy_get_property(
    mut caller: C<'_>,
    path_ptr: i32,
    path_len: i32,
    ptr_ptr: i32,
    size_ptr: i32,
) -> Result<i32, Error> {
    let call = "proxy_get_property";
    let path = read(&caller, call, path_ptr, path_len)?;
    let label = format!("get_property({})", property_label(&path));
    let dotted = property_label(&path);
    let state = caller.data();
    let value = state.streams.get(&state.current).and_then(|stream| {
        stream
            .filter_state
            .iter()
            .find(|(p, _)| *p == path)
            .map(|(_, v)| v.clone())
            .or_else(|| state.properties.get(&dotted).map(<[u8]>::to_vec))
    });
    match value {
        Some(value) => {
            answer(&mut caller, call, &value, ptr_ptr, size_ptr)?;
            Ok(caller.data_mut().record(label, Status::Ok))
        }
        None => Ok(caller.data_mut().record(label, Status::NotFound)),
    }
}

fn proxy_set_property(
    mut caller: C<'_>,
    path_ptr: i32,
    path_len: i32,
    value_ptr: i32,
    value_len: i32,
) -> Result<i32, Error> {
    let call = "proxy_set_property";
    let path = read(&caller, call, path_ptr, path_len)?;
    let value = read(&caller, call, value_ptr, value_len)?;
    let label = format!("set_property({})", property_label(&path));
    let state = caller.data_mut();
    let status = match state.stream() {
        Some(stream) => {
            stream.filter_state.retain(|(p, _)| *p != path);
            stream.filter_state.push((path, value));
            Status::Ok
        }
        None => Status::NotFound,
    };
    Ok(state.record(label, status))
}

fn proxy_get_shared_data(
    mut caller: C<'_>,
    key_ptr: i32,
    key_len: i32,
    ptr_ptr: i32,
    size_ptr: i32,
    cas_ptr: i32,
) -> Result<i32, Error> {
    let call = "proxy_get_shared_data";
    let key = read(&caller, call, key_ptr, key_len)?;
    let label = format!("get_shared({})", printable(&key));
    let state = caller.data();
    match state.shared.get(&state.vm_id, &key) {
        Some((value, cas)) => {
            answer(&mut caller, call, &value, ptr_ptr, size_ptr)?;
            write_u32(&mut caller, call, cas_ptr, cas)?;
            Ok(caller.data_mut().record(label, Status::Ok))
        }
        None => Ok(caller.data_mut().record(label, Status::NotFound)),
    }
}

fn proxy_set_shared_data(
    mut caller: C<'_>,
    key_ptr: i32,
    key_len: i32,
    value_ptr: i32,
    value_len: i32,
    cas: i32,
) -> Result<i32, Error> {
    let call = "proxy_set_shared_data";
    let key = read(&caller, call, key_ptr, key_len)?;
    let value = read(&caller, call, value_ptr, value_len)?;
    let label = format!("set_shared({})", printable(&key));
    let state = caller.data_mut();
    state.shared.run_write_hook(&state.vm_id, &key);
    let status = state.shared.set(&state.vm_id, &key, &value, cas as u32);
    Ok(state.record(label, status))
}

fn proxy_define_metric(
    mut caller: C<'_>,
    kind: i32,
    name_ptr: i32,
    name_len: i32,
    id_ptr: i32,
) -> Result<i32, Error> {
    let call = "proxy_define_metric";
    let name = read_text(&caller, call, name_ptr, name_len)?;
    let label = format!("define_metric({name})");
    if !(0..=2).contains(&kind) {
        return Ok(caller.data_mut().record(label, Status::BadArgument));
    }
    let metrics = &mut caller.data_mut().metrics;
    let index = match metrics
        .iter()
        .position(|m| m.name == name && m.kind == kind)
    {
        Some(index) => index,
        None => {
            metrics.push(Metric {
                kind,
                name,
                value: 0,
            });
            metrics.len() - 1
        }
    };
    // Ids start at 1: a module may take 0 for "none".
    write_u32(&mut caller, call, id_ptr, index as u32 + 1)?;
    Ok(caller.data_mut().record(label, Status::Ok))
}

fn metric(state: &mut HostState, id: i32) -> Option<&mut Metric> {
    let index = (id as u32 as usize).checked_sub(1)?;
    state.metrics.get_mut(index)
}

fn proxy_increment_metric(mut caller: C<'_>, id: i32, offset: i64) -> Result<i32, Error> {
    let state = caller.data_mut();
    let (label, status) = match metric(state, id) {
        Some(m) => {
            m.value = m.value.wrapping_add_signed(offset);
            (format!("increment_metric({})", m.name), Status::Ok)
        }
        None => (format!("increment_metric(#{id})"), Status::NotFound),
    };
    Ok(state.record(label, status))
}

fn proxy_record_metric(mut caller: C<'_>, id: i32, value: i64) -> Result<i32, Error> {
    let state = caller.data_mut();
    let (label, status) = match metric(state, id) {
        Some(m) => {
            m.value = value as u64;
            (format!("record_metric({})", m.name), Status::Ok)
        }
        None => (format!("record_metric(#{id})"), Status::NotFound),
    };
    Ok(state.record(label, status))
}

fn proxy_get_metric(mut caller: C<'_>, id: i32, ptr: i32) -> Result<i32, Error> {
    let found = metric(caller.data_mut(), id).map(|m| (m.name.clone(), m.value));
    match found {
        Some((name, value)) => {
            write_u64(&mut caller, "proxy_get_metric", ptr, value)?;
            Ok(caller
                .data_mut()
                .record(format!("get_metric({name})"), Status::Ok))
        }
        None => Ok(caller
            .data_mut()
            .record(format!("get_metric(#{id})"), Status::NotFound)),
    }
}

#[allow(clippy::too_many_arguments)]
fn proxy_send_local_response(
    mut caller: C<'_>,
    status: i32,
    details_ptr: i32,
    details_len: i32,
    body_ptr: i32,
    body_len: i32,
    headers_ptr: i32,
    headers_len: i32,
    grpc_status: i32,
) -> Result<i32, Error> {
    let call = "proxy_send_local_response";
    let details = read_text(&caller, call, details_ptr, details_len)?;
    let body = read(&caller, call, body_ptr, body_len)?;
    let headers = read(&caller, call, headers_ptr, headers_len)?;
    let label = format!("send_local_response({})", status as u32);
    let Some(headers) = deserialize_pairs(&headers) else {
        return Ok(caller.data_mut().record(label, Status::BadArgument));
    };
    let state = caller.data_mut();
    let result = match state.stream() {
        Some(stream) => {
            stream.local_response = Some(LocalResponse {
                status: status as u32,
                details,
                body,
                headers,
                grpc_status,
            });
            Status::Ok
        }
        None => Status::NotFound,
    };
    Ok(state.record(label, result))
}

#[allow(clippy::too_many_arguments)]
fn proxy_http_call(
    mut caller: C<'_>,
    upstream_ptr: i32,
    upstream_len: i32,
    _headers_ptr: i32,
    _headers_len: i32,
    _body_ptr: i32,
    _body_len: i32,
    _trailers_ptr: i32,
    _trailers_len: i32,
    _timeout: i32,
    token_ptr: i32,
) -> Result<i32, Error> {
    let call = "proxy_http_call";
    let upstream = read_text(&caller, call, upstream_ptr, upstream_len)?;
    let token = caller.data().next_token;
    write_u32(&mut caller, call, token_ptr, token)?;
    let state = caller.data_mut();
    state.next_token += 1;
    state.callouts.push(Callout {
        token,
        target: upstream.clone(),
    });
    Ok(state.record(format!("http_call({upstream})"), Status::Ok))
}

#[allow(clippy::too_many_arguments)]
fn proxy_grpc_call(
    mut caller: C<'_>,
    service_ptr: i32,
    service_len: i32,
    name_ptr: i32,
    name_len: i32,
    method_ptr: i32,
    method_len: i32,
    _metadata_ptr: i32,
    _metadata_len: i32,
    _message_ptr: i32,
    _message_len: i32,
    _timeout: i32,
    token_ptr: i32,
) -> Result<i32, Error> {
    let call = "proxy_grpc_call";
    let service = read_text(&caller, call, service_ptr, service_len)?;
    let name = read_text(&caller, call, name_ptr, name_len)?;
    let method = read_text(&caller, call, method_ptr, method_len)?;
    let target = format!("{service}/{name}/{method}");
    let token = caller.data().next_token;
    write_u32(&mut caller, call, token_ptr, token)?;
    let state = caller.data_mut();
    state.next_token += 1;
    state.callouts.push(Callout {
        token,
        target: target.clone(),
    });
    Ok(state.record(format!("grpc_call({target})"), Status::Ok))
}

fn proxy_call_foreign_function(
    mut caller: C<'_>,
    name_ptr: i32,
    name_len: i32,
    _args_ptr: i32,
    _args_len: i32,
    _ptr_ptr: i32,
    _size_ptr: i32,
) -> Result<i32, Error> {
    let name = read_text(&caller, "proxy_call_foreign_function", name_ptr, name_len)?;
    Ok(caller
        .data_mut()
        .record(format!("call_foreign_function({name})"), Status::NotFound))
}

fn proxy_set_effective_context(mut caller: C<'_>, id: i32) -> Result<i32, Error> {
    let state = caller.data_mut();
    let id = id as u32;
    let status = if id == ROOT_ID || state.streams.contains_key(&id) {
        state.current = id;
        Status::Ok
    } else {
        Status::BadArgument
    };
    Ok(state.record(format!("set_effective_context({id})"), status))
}

fn stream_name(kind: i32) -> String {
    match kind {
        0 => "request".to_owned(),
        1 => "response".to_owned(),
        other => other.to_string(),
    }
}

fn proxy_continue_stream(mut caller: C<'_>, kind: i32) -> Result<i32, Error> {
    let state = caller.data_mut();
    let status = match state.stream() {
        Some(stream) => {
            stream.continued.push(kind);
            Status::Ok
        }
        None => Status::NotFound,
    };
    Ok(state.record(format!("continue_stream({})", stream_name(kind)), status))
}

fn proxy_close_stream(mut caller: C<'_>, kind: i32) -> Result<i32, Error> {
    let state = caller.data_mut();
    let status = match state.stream() {
        Some(stream) => {
            stream.closed.push(kind);
            Status::Ok
        }
        None => Status::NotFound,
    };
    Ok(state.record(format!("close_stream({})", stream_name(kind)), status))
}

fn proxy_done(mut caller: C<'_>) -> Result<i32, Error> {
    Ok(caller.data_mut().record("done".to_owned(), Status::Ok))
}

fn proxy_get_status(
    mut caller: C<'_>,
    code_ptr: i32,
    ptr_ptr: i32,
    size_ptr: i32,
) -> Result<i32, Error> {
    // No callout ever answers here, so there is never a status to report but "OK".
    write_u32(&mut caller, "proxy_get_status", code_ptr, 0)?;
    answer(&mut caller, "proxy_get_status", &[], ptr_ptr, size_ptr)?;
    Ok(caller
        .data_mut()
        .record("get_status".to_owned(), Status::Ok))
}

// WASI: errno 0 is success, 52 ENOSYS.

fn fd_write(
    mut caller: C<'_>,
    fd: i32,
    iovs: i32,
    iovs_len: i32,
    written_ptr: i32,
) -> Result<i32, Error> {
    let call = "fd_write";
    let mut bytes = Vec::new();
    for i in 0..iovs_len.max(0) {
        let iov = read(&caller, call, iovs.wrapping_add(i * 8), 8)?;
        let word = |at: usize| -> i32 {
            let b: [u8; 4] = iov
                .get(at..at + 4)
                .and_then(|s| s.try_into().ok())
                .unwrap_or_default();
            i32::from_le_bytes(b)
        };
        bytes.extend(read(&caller, call, word(0), word(4))?);
    }
    write_u32(&mut caller, call, written_ptr, bytes.len() as u32)?;
    let level = if fd == 2 { "stderr" } else { "stdout" };
    let state = caller.data_mut();
    state.logs.push(LogLine {
        level,
        message: String::from_utf8_lossy(&bytes).trim_end().to_owned(),
    });
    state.record(format!("fd_write({fd})"), Status::Ok);
    Ok(0)
}

fn random_get(mut caller: C<'_>, ptr: i32, len: i32) -> Result<i32, Error> {
    let mut bytes = Vec::with_capacity(len as u32 as usize);
    let state = caller.data_mut();
    while bytes.len() < len as u32 as usize {
        // SplitMix64: deterministic per worker, different between workers.
        state.random = state.random.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state.random;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        bytes.extend_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
    bytes.truncate(len as u32 as usize);
    write(&mut caller, "random_get", ptr, &bytes)?;
    caller
        .data_mut()
        .record(format!("random_get({})", len as u32), Status::Ok);
    Ok(0)
}

fn environ_sizes_get(mut caller: C<'_>, count_ptr: i32, size_ptr: i32) -> Result<i32, Error> {
    write_u32(&mut caller, "environ_sizes_get", count_ptr, 0)?;
    write_u32(&mut caller, "environ_sizes_get", size_ptr, 0)?;
    caller
        .data_mut()
        .record("environ_sizes_get".to_owned(), Status::Ok);
    Ok(0)
}

fn environ_get(mut caller: C<'_>, _environ: i32, _buf: i32) -> Result<i32, Error> {
    caller
        .data_mut()
        .record("environ_get".to_owned(), Status::Ok);
    Ok(0)
}

fn clock_time_get(mut caller: C<'_>, _clock: i32, _precision: i64, ptr: i32) -> Result<i32, Error> {
    let now = caller.data().clock.load(Ordering::SeqCst);
    write_u64(&mut caller, "clock_time_get", ptr, now)?;
    caller
        .data_mut()
        .record("clock_time_get".to_owned(), Status::Ok);
    Ok(0)
}

fn proc_exit(mut caller: C<'_>, code: i32) -> Result<(), Error> {
    caller
        .data_mut()
        .record(format!("proc_exit({code})"), Status::Ok);
    Err(Error::i32_exit(code))
}

/// Notes how much the callback had executed when a host call came in (see [`HostCall::fuel`]).
fn mark(caller: &mut C<'_>) {
    let used = FUEL_BUDGET.saturating_sub(caller.get_fuel().unwrap_or(FUEL_BUDGET));
    caller.data_mut().fuel_at_call = used;
}

fn proxy_replace_header_map_value(
    c: C<'_>,
    map: i32,
    kp: i32,
    kl: i32,
    vp: i32,
    vl: i32,
) -> Result<i32, Error> {
    let call = "proxy_replace_header_map_value";
    edit_header(c, call, Edit::Replace, map, (kp, kl), (vp, vl))
}

fn proxy_add_header_map_value(
    c: C<'_>,
    map: i32,
    kp: i32,
    kl: i32,
    vp: i32,
    vl: i32,
) -> Result<i32, Error> {
    let call = "proxy_add_header_map_value";
    edit_header(c, call, Edit::Add, map, (kp, kl), (vp, vl))
}

/// A linker with every host function the fake host emulates, and a recording stub for each
/// other import of `module`.
fn linker(engine: &Engine, module: &wasmi::Module) -> Result<Linker<HostState>> {
    let mut linker = Linker::<HostState>::new(engine);
    let mut emulated: Vec<(&str, &str)> = Vec::new();
    // Each import with its Wasm signature; every call first notes the fuel so far.
    macro_rules! host {
        ($module:literal $f:ident($($arg:ident: $ty:ty),*)) => {
            linker
                .func_wrap($module, stringify!($f), |mut caller: C<'_>, $($arg: $ty),*| {
                    mark(&mut caller);
                    $f(caller, $($arg),*)
                })
                .map_err(|e| anyhow!("defining {}.{}: {e}", $module, stringify!($f)))?;
            emulated.push(($module, stringify!($f)));
        };
    }
    host!("env" proxy_log(level: i32, ptr: i32, len: i32));
    host!("env" proxy_get_log_level(ptr: i32));
    host!("env" proxy_get_current_time_nanoseconds(ptr: i32));
    host!("env" proxy_set_tick_period_milliseconds(period: i32));
    host!("env" proxy_get_buffer_bytes(kind: i32, at: i32, len: i32, pp: i32, sp: i32));
    host!("env" proxy_get_header_map_value(map: i32, kp: i32, kl: i32, pp: i32, sp: i32));
    host!("env" proxy_get_header_map_pairs(map: i32, pp: i32, sp: i32));
    host!("env" proxy_set_header_map_pairs(map: i32, ptr: i32, len: i32));
    host!("env" proxy_replace_header_map_value(map: i32, kp: i32, kl: i32, vp: i32, vl: i32));
    host!("env" proxy_add_header_map_value(map: i32, kp: i32, kl: i32, vp: i32, vl: i32));
    host!("env" proxy_remove_header_map_value(map: i32, kp: i32, kl: i32));
    host!("env" proxy_get_property(path: i32, len: i32, pp: i32, sp: i32));
    host!("env" proxy_set_property(path: i32, len: i32, vp: i32, vl: i32));
    host!("env" proxy_get_shared_data(kp: i32, kl: i32, pp: i32, sp: i32, cas_ptr: i32));
    host!("env" proxy_set_shared_data(kp: i32, kl: i32, vp: i32, vl: i32, cas: i32));
    host!("env" proxy_define_metric(kind: i32, np: i32, nl: i32, id_ptr: i32));
    host!("env" proxy_increment_metric(id: i32, offset: i64));
    host!("env" proxy_record_metric(id: i32, value: i64));
    host!("env" proxy_get_metric(id: i32, ptr: i32));
    host!("env" proxy_send_local_response(
        status: i32, dp: i32, dl: i32, bp: i32, bl: i32, hp: i32, hl: i32, grpc: i32
    ));
    host!("env" proxy_http_call(
        up: i32, ul: i32, hp: i32, hl: i32, bp: i32, bl: i32, tp: i32, tl: i32, timeout: i32,
        token_ptr: i32
    ));
    host!("env" proxy_grpc_call(
        sp: i32, sl: i32, np: i32, nl: i32, mp: i32, ml: i32, dp: i32, dl: i32, bp: i32,
        bl: i32, timeout: i32, token_ptr: i32
    ));
    host!("env" proxy_call_foreign_function(np: i32, nl: i32, ap: i32, al: i32, pp: i32, sp: i32));
    host!("env" proxy_set_effective_context(id: i32));
    host!("env" proxy_continue_stream(kind: i32));
    host!("env" proxy_close_stream(kind: i32));
    host!("env" proxy_done());
    host!("env" proxy_get_status(code_ptr: i32, pp: i32, sp: i32));
    host!("wasi_snapshot_preview1" fd_write(fd: i32, iovs: i32, n: i32, written_ptr: i32));
    host!("wasi_snapshot_preview1" random_get(ptr: i32, len: i32));
    host!("wasi_snapshot_preview1" environ_sizes_get(count_ptr: i32, size_ptr: i32));
    host!("wasi_snapshot_preview1" environ_get(environ: i32, buf: i32));
    host!("wasi_snapshot_preview1" clock_time_get(clock: i32, precision: i64, ptr: i32));
    host!("wasi_snapshot_preview1" proc_exit(code: i32));
    for import in module.imports() {
        let (from, name) = (import.module(), import.name());
        if emulated.contains(&(from, name)) {
            continue;
        }
        let ExternType::Func(ty) = import.ty() else {
            bail!("{from}.{name}: only function imports are provided");
        };
        let answers: Option<Val> = match ty.results() {
            [] => None,
            [ValType::I32] if from == "wasi_snapshot_preview1" => Some(Val::I32(52)),
            [ValType::I32] => Some(Val::I32(Status::Unimplemented.word())),
            other => bail!("{from}.{name}: cannot stub a function returning {other:?}"),
        };
        let label = format!("unemulated({from}.{name})");
        linker
            .func_new(
                from,
                name,
                ty.clone(),
                move |mut caller, params, results| {
                    mark(&mut caller);
                    // The arguments too: `wasm-opt --log-execution` passes the id of the
                    // function or loop entered (see `hostcalls --profile`).
                    let label = match params {
                        [] => label.clone(),
                        params => format!("{label}{params:?}"),
                    };
                    caller.data_mut().record(label, Status::Unimplemented);
                    if let (Some(answer), Some(slot)) = (&answers, results.first_mut()) {
                        *slot = answer.clone();
                    }
                    Ok(())
                },
            )
            .map_err(|e| anyhow!("stubbing {from}.{name}: {e}"))?;
    }
    Ok(linker)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cas_follows_envoys_rules() {
        let shared = SharedData::default();
        // A missing key: any CAS inserts, and the insert takes CAS 1.
        assert_eq!(shared.set("vm", b"a", b"1", 77), Status::Ok);
        assert_eq!(shared.get("vm", b"a"), Some((b"1".to_vec(), 1)));
        // One counter for every key and VM.
        assert_eq!(shared.set("other", b"b", b"x", 0), Status::Ok);
        assert_eq!(shared.get("other", b"b").map(|(_, cas)| cas), Some(2));
        // A stale CAS fails and changes nothing; the current one succeeds with a fresh CAS.
        assert_eq!(shared.set("vm", b"a", b"2", 2), Status::CasMismatch);
        assert_eq!(shared.get("vm", b"a"), Some((b"1".to_vec(), 1)));
        assert_eq!(shared.set("vm", b"a", b"2", 1), Status::Ok);
        assert_eq!(shared.get("vm", b"a"), Some((b"2".to_vec(), 3)));
        // CAS 0 always overwrites.
        assert_eq!(shared.set("vm", b"a", b"3", 0), Status::Ok);
        assert_eq!(shared.get("vm", b"a"), Some((b"3".to_vec(), 4)));
        // Maps are per VM id.
        assert_eq!(shared.get("vm", b"b"), None);
    }

    #[test]
    fn cas_counter_skips_zero() {
        let shared = SharedData::default();
        shared.lock().next_cas = u32::MAX;
        assert_eq!(shared.set("vm", b"a", b"", 0), Status::Ok);
        assert_eq!(shared.set("vm", b"b", b"", 0), Status::Ok);
        assert_eq!(shared.get("vm", b"a").map(|(_, c)| c), Some(u32::MAX));
        assert_eq!(shared.get("vm", b"b").map(|(_, c)| c), Some(1));
    }

    #[test]
    fn write_hook_can_race_the_module() {
        let shared = SharedData::default();
        shared.set_write_hook(Some(Box::new(
            |store: &SharedData, vm: &str, key: &[u8]| {
                assert_eq!(store.set(vm, key, b"racer", 0), Status::Ok);
            },
        )));
        shared.run_write_hook("vm", b"k");
        assert_eq!(shared.get("vm", b"k"), Some((b"racer".to_vec(), 1)));
    }

    #[test]
    fn pairs_round_trip_in_proxy_wasm_layout() {
        let pairs = vec![
            (":status".to_owned(), "200".to_owned()),
            ("x".to_owned(), String::new()),
        ];
        let bytes = serialize_pairs(&pairs);
        let mut expected = Vec::new();
        for word in [2u32, 7, 3, 1, 0] {
            expected.extend_from_slice(&word.to_le_bytes());
        }
        expected.extend_from_slice(b":status\x00200\x00x\x00\x00");
        assert_eq!(bytes, expected);
        assert_eq!(deserialize_pairs(&bytes), Some(pairs));
        assert_eq!(deserialize_pairs(&bytes[..bytes.len() - 3]), None);
    }

    #[test]
    fn labels_escape_binary_keys_and_join_paths() {
        assert_eq!(
            property_label(b"upstream\0request_attempt_count"),
            "upstream.request_attempt_count"
        );
        assert_eq!(printable(b"rl1/\x00\xff"), "rl1/\\x00\\xff");
    }
}
