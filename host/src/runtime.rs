//! The WebAssembly side: one wasmtime [`Engine`] for the host, plugins compiled and checked
//! against the `warren:plugin/handler` world, and one fresh, sandboxed instance per call.
//!
//! Each call gets its own store (nothing leaks between messages), a memory limit, and a
//! wall-clock deadline enforced by epoch interruption. Between epoch ticks (10 ms) a running
//! guest yields to the async executor, so one spinning handler cannot starve the others.
//! A trap, a deadline or a memory-limit hit discards the instance and comes back as a
//! [`PluginFault`]; the host keeps serving.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;
use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::{
    Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store, StoreLimits, StoreLimitsBuilder, Trap,
    UpdateDeadline,
};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use crate::config::{Grants, Limits, PluginSettings};

/// Host-side bindings of the WIT world in `wit/`.
pub mod bindings {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "handler",
        imports: { default: async | trappable },
        exports: { default: async },
        additional_derives: [PartialEq],
    });
}

pub use bindings::warren::plugin::host::{LogLevel, SendError};

/// Where a plugin's outgoing message goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    /// An event on stream `X` (exchange `X.topic.exchange`).
    Event(String),
    /// A request to service `T` (exchange `T.direct.exchange.request`).
    Request(String),
    /// Straight to a queue, as goamqp's queue publisher does.
    Queue(String),
}

/// The host's way out for plugins: publishes with broker confirms. Implemented next to the
/// publisher ([`crate::outbox`]); the runtime only checks grants and forwards.
pub trait Outbox: Send + Sync {
    /// Publishes one message and resolves once the broker confirmed it.
    fn send<'a>(
        &'a self,
        to: Destination,
        routing_key: &'a str,
        body: &'a [u8],
        headers: &'a [Header],
        traceparent: Option<&'a str>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send + 'a>>;
}

/// What one call may send out, beside its answer.
#[derive(Clone, Default)]
pub struct CallContext {
    /// Where outgoing messages go; without one, every send fails.
    pub outbox: Option<Arc<dyn Outbox>>,
    /// The W3C trace context of the message being handled, carried into what it sends.
    pub traceparent: Option<String>,
}

pub use bindings::warren::plugin::types::{HandlerError, Header, HeaderValue, Request, Response};

/// The WIT world every plugin must export, as plugin authors see it.
pub const WORLD: &str = "warren:plugin/handler@0.1.0";

/// How often the epoch advances: the granularity of deadlines and of guest yields
/// (1 ms: a deadline is met within about a millisecond; see the README's isolation figures).
const EPOCH_TICK: Duration = Duration::from_millis(1);

/// How much of a guest's stdout/stderr is kept to explain a failure.
const GUEST_OUTPUT_CAPACITY: usize = 16 * 1024;

/// The engine could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error(
        "cannot create the WebAssembly engine: {0}. The pooling allocator reserves virtual memory per instance; lower broker.prefetch or check `ulimit -v`"
    )]
    Engine(String),
}

/// A plugin file that cannot be served, and why.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    #[error(
        "plugin '{plugin}': cannot read {path}: {reason}. Run `warren build`, or copy {plugin}.wasm into the plugins folder"
    )]
    Read { plugin: String, path: PathBuf, reason: String },
    #[error(
        "plugin '{plugin}': {path} is {what}, not a WebAssembly component. Build the plugin with `cargo build --release --target wasm32-wasip2` (or `warren build`)"
    )]
    NotAComponent { plugin: String, path: PathBuf, what: String },
    #[error(
        "plugin '{plugin}': {path} is not a valid component: {reason}. Rebuild it; if it was copied, the copy may be incomplete"
    )]
    Invalid { plugin: String, path: PathBuf, reason: String },
    #[error("plugin '{plugin}': {path} does not fit the {world} world: {reason}. Rebuild it against this host's guest-sdk (wit/)", world = WORLD)]
    WrongWorld { plugin: String, path: PathBuf, reason: String },
    #[error("plugin '{plugin}': {path} failed its first instantiation: {reason}")]
    Smoke { plugin: String, path: PathBuf, reason: String },
    #[error("plugin '{plugin}': {reason}")]
    Grant { plugin: String, reason: String },
}

/// The values of the environment variables granted to a plugin, read once at load.
fn resolve_env(plugin: &str, names: &[String]) -> Result<Vec<(String, String)>, PluginError> {
    names
        .iter()
        .map(|name| match std::env::var(name) {
            Ok(value) => Ok((name.clone(), value)),
            Err(_) => Err(PluginError::Grant {
                plugin: plugin.to_string(),
                reason: format!("the config grants environment variable {name}, but the host has no such variable: set it or remove it from env"),
            }),
        })
        .collect()
}

/// Why a call did not return: the instance is discarded, the message rejected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PluginFault {
    /// The call ran past its deadline and was interrupted.
    Deadline(Duration),
    /// The guest trapped (a panic, `unreachable`, a memory-limit hit, …).
    Trap(String),
    /// No instance could be made before the deadline: the host's instance pool stayed full.
    /// The message is not at fault.
    Busy(String),
}

impl std::fmt::Display for PluginFault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PluginFault::Deadline(limit) => write!(f, "deadline of {} ms exceeded", limit.as_millis()),
            PluginFault::Trap(reason) => write!(f, "trap: {reason}"),
            PluginFault::Busy(reason) => write!(f, "could not start: {reason} until the deadline"),
        }
    }
}

/// Where a plugin's machine code came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CodeSource {
    /// Compiled from the `.wasm` by Cranelift (and written to the cache).
    Compiled,
    /// Loaded from a `.cwasm` this host wrote earlier for the same bytes and engine.
    Cache,
    /// Not WebAssembly: a Rust function linked into the host (the benchmark's baseline).
    Native,
}

/// Core instances the pool keeps per concurrent call. One component instance is made of
/// several core ones: 3 for a Rust plugin, 4 for componentize-js, 14 for componentize-py
/// (measured with the pooling allocator's metrics). A call that finds the pool full waits.
const CORE_INSTANCES_PER_CALL: u32 = 16;

/// The shared WebAssembly engine and linker.
pub struct Runtime {
    engine: Engine,
    linker: Linker<CallState>,
    cache_dir: Option<PathBuf>,
    /// Identifies the engine's code format in cache keys: other versions or settings miss.
    engine_key: String,
    /// Whether the engine counts fuel.
    fuel: bool,
}

impl Runtime {
    /// Creates the engine, sized for at most `max_instances` concurrent calls whose memory
    /// is at most `max_memory` bytes, and starts its epoch ticker. Compiled plugins are kept
    /// in `cache_dir` when given.
    /// `fuel` turns on instruction counting (needed by any plugin with a fuel limit).
    pub fn new(
        max_instances: u32,
        max_memory: usize,
        fuel: bool,
        cache_dir: Option<PathBuf>,
    ) -> Result<Arc<Runtime>, RuntimeError> {
        let instances = max_instances.max(1);
        let mut pool = PoolingAllocationConfig::new();
        pool.total_component_instances(instances)
            .total_core_instances(instances * CORE_INSTANCES_PER_CALL)
            .total_memories(instances * 2)
            .total_tables(instances * 4)
            .total_stacks(instances)
            .max_memory_size(max_memory)
            // Keeping the first pages resident avoids a madvise (and TLB shootdown) per call.
            .linear_memory_keep_resident(2 << 20)
            .table_keep_resident(64 << 10)
            .pagemap_scan(wasmtime::Enabled::Auto);

        let mut config = wasmtime::Config::new();
        config
            .wasm_component_model(true)
            .epoch_interruption(true)
            .consume_fuel(fuel)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let engine = Engine::new(&config).map_err(|e| RuntimeError::Engine(format!("{e:#}")))?;

        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(|e| RuntimeError::Engine(format!("{e:#}")))?;
        bindings::Handler::add_to_linker::<_, wasmtime::component::HasSelf<_>>(&mut linker, |state| state)
            .map_err(|e| RuntimeError::Engine(format!("{e:#}")))?;

        spawn_epoch_ticker(&engine);
        let engine_key = {
            use std::hash::{Hash, Hasher};
            let mut hasher = std::collections::hash_map::DefaultHasher::new();
            engine.precompile_compatibility_hash().hash(&mut hasher);
            env!("CARGO_PKG_VERSION").hash(&mut hasher);
            format!("{:016x}", hasher.finish())
        };
        Ok(Arc::new(Runtime { engine, linker, cache_dir, engine_key, fuel }))
    }

    /// Compiles the plugin at `path`, checks that it exports the handler world and needs no
    /// import the host does not give, and instantiates it once as a smoke test.
    ///
    /// This is CPU-heavy (tens of ms): call it off the async threads.
    pub fn load(
        &self,
        plugin: &str,
        path: &Path,
        settings: PluginSettings,
        generation: u64,
    ) -> Result<Plugin, PluginError> {
        let bytes = read_plugin(plugin, path)?;
        self.load_bytes(plugin, path, &bytes, settings, generation)
    }

    /// Like [`Runtime::load`], for bytes already read from `path`.
    pub fn load_bytes(
        &self,
        plugin: &str,
        path: &Path,
        bytes: &[u8],
        settings: PluginSettings,
        generation: u64,
    ) -> Result<Plugin, PluginError> {
        let (name, file) = (plugin.to_string(), path.to_path_buf());
        if let Some(what) = not_a_component(bytes) {
            return Err(PluginError::NotAComponent { plugin: name, path: file, what });
        }
        if settings.limits.fuel.is_some() && !self.fuel {
            return Err(PluginError::Grant {
                plugin: name,
                reason: "a fuel limit needs fuel counting, which is chosen at start: restart the host".into(),
            });
        }
        let env = resolve_env(&name, &settings.grants.env)?;
        let hash = content_hash(bytes);
        let (component, source) = self.component(plugin, bytes, &hash).map_err(|e| PluginError::Invalid {
            plugin: name.clone(),
            path: file.clone(),
            reason: format!("{e:#}"),
        })?;
        let wrong_world = |e: wasmtime::Error| PluginError::WrongWorld {
            plugin: name.clone(),
            path: file.clone(),
            reason: format!("{e:#}"),
        };
        let instance_pre = self.linker.instantiate_pre(&component).map_err(wrong_world)?;
        let pre = bindings::HandlerPre::new(instance_pre).map_err(wrong_world)?;
        let plugin = Plugin {
            name: name.clone(),
            path: file.clone(),
            hash,
            generation,
            source,
            code: Code::Wasm(pre.clone()),
            permits: settings.limits.max_concurrency.map(|n| Arc::new(Semaphore::new(n as usize))),
            grants: Arc::new(settings.grants.clone()),
            env,
            settings,
            fuel_counting: self.fuel,
            engine: self.engine.clone(),
            peak_memory: Arc::default(),
            code_size: {
                let image = component.image_range();
                image.end as usize - image.start as usize
            },
        };

        // Instantiate once now, so a plugin that cannot start is refused at load time.
        let smoke = |e: wasmtime::Error| PluginError::Smoke {
            plugin: name.clone(),
            path: file.clone(),
            reason: format!("{e:#}"),
        };
        let output = MemoryOutputPipe::new(GUEST_OUTPUT_CAPACITY);
        let mut store = plugin.new_store(output, CallContext::default()).map_err(smoke)?;
        // Instantiation awaits nothing from the host, so a local executor is enough.
        futures_lite::future::block_on(pre.instantiate_async(&mut store)).map_err(smoke)?;
        Ok(plugin)
    }

    /// A plugin whose code is `handler`, a Rust function of the host's own, run with no
    /// sandbox: the native baseline of the benchmark.
    pub fn native(&self, name: &str, handler: NativeHandler) -> Plugin {
        let settings = PluginSettings::default();
        Plugin {
            name: name.to_string(),
            path: PathBuf::from(format!("native:{name}")),
            hash: "0".repeat(64),
            generation: 1,
            source: CodeSource::Native,
            code: Code::Native(handler),
            permits: None,
            grants: Arc::new(settings.grants.clone()),
            env: Vec::new(),
            settings,
            fuel_counting: self.fuel,
            engine: self.engine.clone(),
            peak_memory: Arc::default(),
            code_size: 0,
        }
    }
}

impl Runtime {
    /// The compiled component for `bytes`: from the cache when this host already compiled
    /// the same bytes with the same engine, else compiled now (and cached).
    fn component(&self, plugin: &str, bytes: &[u8], hash: &str) -> Result<(Component, CodeSource), wasmtime::Error> {
        let Some(dir) = &self.cache_dir else {
            return Ok((Component::new(&self.engine, bytes)?, CodeSource::Compiled));
        };
        let cached = dir.join(format!("{plugin}-{}-{}.cwasm", &hash[..32], self.engine_key));
        if cached.is_file() {
            // SAFETY: the file is named by the SHA-256 of the very bytes we were given and by
            // this engine's compatibility hash, and only this function writes such names (in
            // a folder that must be writable only by the host's user, like the plugins folder).
            match unsafe { Component::deserialize_file(&self.engine, &cached) } {
                Ok(component) => return Ok((component, CodeSource::Cache)),
                Err(error) => tracing::warn!(file = %cached.display(), %error, "unusable cache entry; compiling again"),
            }
        }
        let component = Component::new(&self.engine, bytes)?;
        if let Err(error) = write_cache(dir, &cached, &component) {
            tracing::warn!(file = %cached.display(), %error, "could not write the compiled plugin to the cache");
        }
        Ok((component, CodeSource::Compiled))
    }
}

/// Writes a compiled component through a temp file and a rename (never a partial entry).
fn write_cache(dir: &Path, file: &Path, component: &Component) -> Result<(), wasmtime::Error> {
    std::fs::create_dir_all(dir)?;
    let temp = file.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&temp, component.serialize()?)?;
    std::fs::rename(&temp, file)?;
    Ok(())
}

/// Reads a plugin file, naming the plugin and the file when it cannot.
pub fn read_plugin(plugin: &str, path: &Path) -> Result<Vec<u8>, PluginError> {
    std::fs::read(path).map_err(|e| PluginError::Read {
        plugin: plugin.to_string(),
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

/// The SHA-256 of a plugin file, as hex: its identity for reloads and the cache.
pub fn content_hash(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// What the first bytes of a file say it is, when it is not a component.
fn not_a_component(bytes: &[u8]) -> Option<String> {
    match bytes {
        [0, b'a', b's', b'm', 1, 0, 0, 0, ..] => Some("a core WebAssembly module".to_string()),
        [0, b'a', b's', b'm', _, _, 1, 0, ..] => None,
        [] => Some("an empty file".to_string()),
        _ if bytes.len() < 8 => Some(format!("a {}-byte file (truncated?)", bytes.len())),
        _ => Some("not WebAssembly at all (no \\0asm header)".to_string()),
    }
}

fn spawn_epoch_ticker(engine: &Engine) {
    let engine = engine.weak();
    std::thread::Builder::new()
        .name("warren-epoch".into())
        .spawn(move || {
            while let Some(engine) = engine.upgrade() {
                engine.increment_epoch();
                drop(engine);
                std::thread::sleep(EPOCH_TICK);
            }
        })
        .expect("spawning the epoch thread");
}

/// The state of one call's store: a WASI context that grants nothing, the call's limits,
/// and what it may send out.
pub struct CallState {
    wasi: WasiCtx,
    table: ResourceTable,
    limits: MemoryLimiter,
    deadline: Instant,
    plugin: Arc<str>,
    grants: Arc<Grants>,
    context: CallContext,
}

/// The store's memory limit, remembering the largest linear memory the call asked for.
struct MemoryLimiter {
    limits: StoreLimits,
    peak: usize,
}

impl wasmtime::ResourceLimiter for MemoryLimiter {
    fn memory_growing(&mut self, current: usize, desired: usize, maximum: Option<usize>) -> wasmtime::Result<bool> {
        let allowed = self.limits.memory_growing(current, desired, maximum)?;
        if allowed {
            self.peak = self.peak.max(desired);
        }
        Ok(allowed)
    }

    fn table_growing(&mut self, current: usize, desired: usize, maximum: Option<usize>) -> wasmtime::Result<bool> {
        self.limits.table_growing(current, desired, maximum)
    }
}

impl CallState {
    /// Checks the grant and sends through the outbox. The future owns what it needs: the
    /// store's state is not `Sync` and must not be borrowed across the broker's confirm.
    fn send(
        &self,
        to: Destination,
        routing_key: String,
        body: Vec<u8>,
        headers: Vec<Header>,
    ) -> impl std::future::Future<Output = Result<(), SendError>> + Send + 'static {
        let (plugin, grants, context) = (self.plugin.clone(), self.grants.clone(), self.context.clone());
        async move {
            let (granted, what, key) = match &to {
                Destination::Event(stream) => (
                    grants.publish.contains(stream),
                    format!("publish to stream '{stream}'"),
                    format!("publish = [\"{stream}\"]"),
                ),
                Destination::Request(service) => (
                    grants.request.contains(service),
                    format!("send requests to service '{service}'"),
                    format!("request = [\"{service}\"]"),
                ),
                Destination::Queue(queue) => (
                    grants.queues.contains(queue),
                    format!("publish to queue '{queue}'"),
                    format!("queues = [\"{queue}\"]"),
                ),
            };
            if !granted {
                let refusal = format!("plugin '{plugin}' may not {what}: grant it with {key} in [plugin.{plugin}]");
                tracing::warn!(plugin = %plugin, "{refusal}");
                return Err(SendError::Denied(refusal));
            }
            let Some(outbox) = &context.outbox else {
                return Err(SendError::Failed("this host has no broker connection to send with".to_string()));
            };
            outbox
                .send(to, &routing_key, &body, &headers, context.traceparent.as_deref())
                .await
                .map_err(SendError::Failed)
        }
    }
}

impl bindings::warren::plugin::types::Host for CallState {}

impl bindings::warren::plugin::host::Host for CallState {
    async fn publish_event(
        &mut self,
        stream: String,
        routing_key: String,
        body: Vec<u8>,
        headers: Vec<Header>,
    ) -> wasmtime::Result<Result<(), SendError>> {
        Ok(self.send(Destination::Event(stream), routing_key, body, headers).await)
    }

    async fn send_request(
        &mut self,
        service: String,
        routing_key: String,
        body: Vec<u8>,
        headers: Vec<Header>,
    ) -> wasmtime::Result<Result<(), SendError>> {
        Ok(self.send(Destination::Request(service), routing_key, body, headers).await)
    }

    async fn send_to_queue(
        &mut self,
        queue: String,
        routing_key: String,
        body: Vec<u8>,
        headers: Vec<Header>,
    ) -> wasmtime::Result<Result<(), SendError>> {
        Ok(self.send(Destination::Queue(queue), routing_key, body, headers).await)
    }

    async fn log(&mut self, level: LogLevel, message: String) -> wasmtime::Result<()> {
        if self.grants.log {
            let plugin = &*self.plugin;
            match level {
                LogLevel::Trace => tracing::trace!(plugin, "{message}"),
                LogLevel::Debug => tracing::debug!(plugin, "{message}"),
                LogLevel::Info => tracing::info!(plugin, "{message}"),
                LogLevel::Warn => tracing::warn!(plugin, "{message}"),
                LogLevel::Error => tracing::error!(plugin, "{message}"),
            }
        }
        Ok(())
    }
}

impl WasiView for CallState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

/// A handler written in Rust and linked into the host: the native baseline the benchmark
/// compares components with, served through exactly the same consume and publish path.
pub type NativeHandler = fn(&Request, &[Header]) -> Result<Response, HandlerError>;

/// What runs when a plugin handles a message.
enum Code {
    /// A checked component, instantiated fresh for each call.
    Wasm(bindings::HandlerPre<CallState>),
    /// A function of the host's own (benchmarks).
    Native(NativeHandler),
}

/// A compiled, checked plugin, ready to handle messages.
pub struct Plugin {
    name: String,
    path: PathBuf,
    hash: String,
    generation: u64,
    source: CodeSource,
    code: Code,
    settings: PluginSettings,
    /// Granted environment variables with their values.
    env: Vec<(String, String)>,
    /// Bounds concurrent calls when `max_concurrency` is set.
    permits: Option<Arc<Semaphore>>,
    /// What calls may send out (shared by every call's store).
    grants: Arc<Grants>,
    /// Whether the engine counts fuel (then every store needs some).
    fuel_counting: bool,
    engine: Engine,
    /// The largest linear memory (bytes) any call of this version has used.
    peak_memory: Arc<std::sync::atomic::AtomicUsize>,
    /// The size of the compiled code (bytes), which stays mapped while the plugin is loaded.
    code_size: usize,
}

impl Plugin {
    /// The largest linear memory, in bytes, that a call of this version has used so far
    /// (a fresh instance per call: this is the memory one in-flight message costs).
    pub fn peak_memory_bytes(&self) -> usize {
        self.peak_memory.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The size in bytes of this version's compiled code: what the plugin costs while idle.
    pub fn code_size_bytes(&self) -> usize {
        self.code_size
    }

    /// SHA-256 of the `.wasm` this version was loaded from.
    pub fn hash(&self) -> &str {
        &self.hash
    }

    /// 1 for the version loaded at start, +1 for each version swapped in since.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Whether this version was compiled or loaded from the cache.
    pub fn source(&self) -> CodeSource {
        self.source
    }

    /// The limits every call of this version runs under.
    pub fn limits(&self) -> &Limits {
        &self.settings.limits
    }

    /// The plugin's name in the config.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The file it was loaded from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Makes a fresh instance and drops it without calling it: what every message pays
    /// before `handle` runs (the benchmark's instantiate time). Native plugins cost nothing.
    pub async fn instantiate(&self) -> Result<(), PluginFault> {
        let Code::Wasm(pre) = &self.code else { return Ok(()) };
        let output = MemoryOutputPipe::new(GUEST_OUTPUT_CAPACITY);
        let mut store = self.new_store(output.clone(), CallContext::default()).map_err(|e| self.fault(e, &output))?;
        self.instance(pre, &mut store, &output).await.map(drop)
    }

    /// A fresh instance in `store`. A full instance pool is the host's limit, not the
    /// message's fault: wait for a call to finish and free its slots, until the deadline.
    async fn instance(
        &self,
        pre: &bindings::HandlerPre<CallState>,
        store: &mut Store<CallState>,
        output: &MemoryOutputPipe,
    ) -> Result<bindings::Handler, PluginFault> {
        loop {
            match pre.instantiate_async(&mut *store).await {
                Ok(handler) => return Ok(handler),
                Err(e) if e.is::<wasmtime::PoolConcurrencyLimitError>() => {
                    if Instant::now() >= store.data().deadline {
                        return Err(PluginFault::Busy(e.to_string()));
                    }
                    tokio::time::sleep(EPOCH_TICK).await;
                }
                Err(e) => return Err(self.fault(e, output)),
            }
        }
    }

    /// Calls `handle` on a fresh instance. `Ok` carries the handler's own answer; `Err` a
    /// fault after which the instance is gone.
    pub async fn handle(
        &self,
        request: &Request,
        headers: &[Header],
        context: &CallContext,
    ) -> Result<Result<Response, HandlerError>, PluginFault> {
        let _permit = match &self.permits {
            Some(permits) => Some(permits.acquire().await.expect("the semaphore is never closed")),
            None => None,
        };
        let pre = match &self.code {
            Code::Native(handler) => return Ok(handler(request, headers)),
            Code::Wasm(pre) => pre,
        };
        let output = MemoryOutputPipe::new(GUEST_OUTPUT_CAPACITY);
        let mut store = self.new_store(output.clone(), context.clone()).map_err(|e| self.fault(e, &output))?;
        let handler = self.instance(pre, &mut store, &output).await?;
        let result = async {
            // The fuel limit budgets the handler's own work, not the language runtime's
            // start-up (instantiation stays bounded by the deadline).
            if let Some(fuel) = self.limits().fuel.filter(|_| self.fuel_counting) {
                store.set_fuel(fuel)?;
            }
            handler.call_handle(&mut store, request, headers).await
        }
        .await;
        self.peak_memory.fetch_max(store.data().limits.peak, std::sync::atomic::Ordering::Relaxed);
        match result {
            Ok(answer) => {
                let said = output.contents();
                if !said.is_empty() {
                    let said = String::from_utf8_lossy(&said);
                    tracing::info!(plugin = %self.name, output = %said.trim_end(), "plugin wrote to stdout/stderr");
                }
                Ok(answer)
            }
            Err(error) => Err(self.fault(error, &output)),
        }
    }

    fn new_store(&self, output: MemoryOutputPipe, context: CallContext) -> Result<Store<CallState>, wasmtime::Error> {
        let mut wasi = WasiCtxBuilder::new();
        wasi.stdout(output.clone()).stderr(output).envs(&self.env);
        if let Some((host, guest)) = &self.settings.grants.dir {
            wasi.preopened_dir(host, guest, wasmtime_wasi::FsPerms::ReadOnly)?;
        }
        let limits = self.limits();
        let state = CallState {
            wasi: wasi.build(),
            table: ResourceTable::new(),
            limits: MemoryLimiter {
                limits: StoreLimitsBuilder::new().memory_size(limits.memory_bytes).trap_on_grow_failure(true).build(),
                peak: 0,
            },
            deadline: Instant::now() + limits.timeout,
            plugin: self.name.as_str().into(),
            grants: self.grants.clone(),
            context,
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|state| &mut state.limits);
        if self.fuel_counting {
            store.set_fuel(u64::MAX)?;
        }
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(|store| {
            Ok(if Instant::now() >= store.data().deadline {
                UpdateDeadline::Interrupt
            } else {
                UpdateDeadline::Yield(1)
            })
        });
        Ok(store)
    }

    fn fault(&self, error: wasmtime::Error, output: &MemoryOutputPipe) -> PluginFault {
        if let Some(Trap::Interrupt) = error.downcast_ref::<Trap>() {
            return PluginFault::Deadline(self.limits().timeout);
        }
        let mut reason = match error.downcast_ref::<Trap>() {
            Some(trap) => trap.to_string(),
            None => error.root_cause().to_string(),
        };
        let said = String::from_utf8_lossy(&output.contents()).trim().to_string();
        if !said.is_empty() {
            reason = format!("{reason}; the plugin wrote: {}", said.replace('\n', " | "));
        }
        PluginFault::Trap(reason)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_that_are_not_components_are_named_for_what_they_are() {
        assert_eq!(not_a_component(b""), Some("an empty file".into()));
        assert_eq!(not_a_component(b"\0asm\x01\0\0\0rest"), Some("a core WebAssembly module".into()));
        assert!(not_a_component(b"\0asm\x0d\0\x01\0rest").is_none());
        assert!(not_a_component(b"#!/bin/sh\necho hi\n").unwrap().contains("no \\0asm header"));
        assert!(not_a_component(b"\0as").unwrap().contains("truncated"));
    }
}
