//! The WebAssembly engine: one wasmtime [`Engine`] and linker for the host, its instance
//! pool and epoch ticker, and turning a `.wasm` file into a checked [`Plugin`] — compiled
//! or loaded from the code cache ([`super::cache`]), checked against the
//! `warren:plugin/handler` world and the plugin's grants (`wasi:http` only with an `http`
//! grant), and instantiated once as a smoke test.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::sync::Semaphore;
use wasmtime::component::{Component, Linker};
use wasmtime::{Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use super::WORLD;
use super::bindings;
use super::cache::{CodeCache, cache_file_name, trusted_cache_dir};
use super::call::{CallContext, CallState, EPOCH_TICK};
use super::output::GuestOutput;
use super::plugin::{Code, CodeSource, NativeHandler, Plugin};
use crate::config::PluginSettings;

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

/// Core instances the pool keeps per concurrent call. One component instance is made of
/// several core ones: 3 for a Rust plugin, 4 for componentize-js, 14 for componentize-py
/// (measured with the pooling allocator's metrics). A call that finds the pool full waits.
const CORE_INSTANCES_PER_CALL: u32 = 16;

/// The shared WebAssembly engine and linker.
pub struct Runtime {
    engine: Engine,
    linker: Linker<CallState>,
    /// Compiled plugins, in the private state folder; `None`: every plugin is compiled.
    cache: Option<CodeCache>,
    /// Identifies the engine's code format in cache keys: other versions or settings miss.
    engine_key: String,
    /// Whether the engine counts fuel.
    fuel: bool,
    /// The key-value store plugins' buckets live in, once the host opened it.
    keyvalue: std::sync::OnceLock<Arc<crate::keyvalue::KeyValue>>,
    /// The pools of every `[database.<name>]`, once the host made them.
    databases: std::sync::OnceLock<Arc<crate::database::Databases>>,
}

impl Runtime {
    /// Creates the engine, sized for at most `max_instances` concurrent calls whose memory
    /// is at most `max_memory` bytes, and starts its epoch ticker. Compiled plugins are kept
    /// in the private state folder `state_dir` when given (see [`super::cache`]); one that
    /// cannot be used is said in a warning, and plugins are compiled instead.
    /// `fuel` turns on instruction counting (needed by any plugin with a fuel limit).
    pub fn new(
        max_instances: u32,
        max_memory: usize,
        fuel: bool,
        state_dir: Option<PathBuf>,
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
        // The world's own interfaces one by one (not `Handler::add_to_linker`): each standard
        // interface it imports is linked by the module that serves it, below.
        type Own = wasmtime::component::HasSelf<CallState>;
        bindings::warren::plugin::types::add_to_linker::<_, Own>(&mut linker, |state| state)
            .map_err(|e| RuntimeError::Engine(format!("{e:#}")))?;
        bindings::warren::plugin::host::add_to_linker::<_, Own>(&mut linker, |state| state)
            .map_err(|e| RuntimeError::Engine(format!("{e:#}")))?;
        // wasi:config/store at 0.2.0-draft and 0.2.0-rc.1: each plugin's own values.
        crate::wasi_config::add_to_linker(&mut linker).map_err(|e| RuntimeError::Engine(format!("{e:#}")))?;
        // wasi:keyvalue (store, atomics, batch) and keyvalue-cas on each plugin's granted buckets.
        crate::keyvalue::add_to_linker(&mut linker).map_err(|e| RuntimeError::Engine(format!("{e:#}")))?;
        // spin:postgres@4.0.0 on each plugin's granted databases.
        crate::database::add_to_linker(&mut linker).map_err(|e| RuntimeError::Engine(format!("{e:#}")))?;
        // wasi:http/outgoing-handler behind each plugin's allowlist (SPEC §3 `http = [...]`);
        // a plugin that does not import it links as before.
        super::call::add_http_to_linker(&mut linker).map_err(|e| RuntimeError::Engine(format!("{e:#}")))?;

        spawn_epoch_ticker(&engine);
        let engine_key = {
            use std::hash::{Hash, Hasher};
            let mut hasher = std::collections::hash_map::DefaultHasher::new();
            engine.precompile_compatibility_hash().hash(&mut hasher);
            env!("CARGO_PKG_VERSION").hash(&mut hasher);
            format!("{:016x}", hasher.finish())
        };
        let cache = state_dir.and_then(|dir| {
            CodeCache::open(&dir)
                .inspect_err(|problem| {
                    tracing::warn!("code cache not used: {problem}; every plugin is compiled at each start")
                })
                .ok()
        });
        Ok(Arc::new(Runtime {
            engine,
            linker,
            cache,
            engine_key,
            fuel,
            keyvalue: Default::default(),
            databases: Default::default(),
        }))
    }

    /// Gives every plugin loaded from now on the key-value store `store` (opened once, at
    /// start; a second call changes nothing).
    pub fn attach_keyvalue(&self, store: Arc<crate::keyvalue::KeyValue>) {
        let _ = self.keyvalue.set(store);
    }

    /// Gives every plugin loaded from now on the database pools `databases` (made once, at
    /// start; a second call changes nothing).
    pub fn attach_databases(&self, databases: Arc<crate::database::Databases>) {
        let _ = self.databases.set(databases);
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
        if settings.grants.http.origins.is_empty()
            && let Some(import) = http_import(&component, &self.engine)
        {
            return Err(PluginError::Grant {
                plugin: name.clone(),
                reason: format!(
                    "it imports {import} (outbound HTTP) but the config grants it no origin: add http = [\"https://api.example.com\"] (the origins it calls) to [plugin.{name}], or rebuild it without HTTP"
                ),
            });
        }
        let wrong_world = |e: wasmtime::Error| PluginError::WrongWorld {
            plugin: name.clone(),
            path: file.clone(),
            reason: format!("{e:#}"),
        };
        let instance_pre = self.linker.instantiate_pre(&component).map_err(wrong_world)?;
        let pre = bindings::HandlerPre::new(instance_pre).map_err(wrong_world)?;
        // Its wasi:config values (config_files were read with the config: again on a reload).
        let values = &settings.grants.config;
        let config = crate::wasi_config::PluginConfig::new(&values.plain, &values.files);
        let plugin = Plugin {
            name: name.clone(),
            path: file.clone(),
            hash,
            generation,
            source,
            code: Code::Wasm(pre.clone()),
            permits: settings.limits.max_concurrency.map(|n| Arc::new(Semaphore::new(n as usize))),
            grants: Arc::new(settings.grants.clone()),
            keyvalue: self.keyvalue.get().cloned(),
            buckets: settings.grants.keyvalue.clone().into(),
            databases: self.databases.get().cloned(),
            http: super::plugin::plugin_http(&settings),
            env,
            settings,
            fuel_counting: self.fuel,
            engine: self.engine.clone(),
            peak_memory: Arc::default(),
            code_size: {
                let image = component.image_range();
                image.end as usize - image.start as usize
            },
            warm: Default::default(),
            config,
        };

        // Instantiate once now, so a plugin that cannot start is refused at load time.
        let smoke = |e: wasmtime::Error| PluginError::Smoke {
            plugin: name.clone(),
            path: file.clone(),
            reason: format!("{e:#}"),
        };
        let output = GuestOutput::new(name.as_str().into());
        let timeout = plugin.limits().timeout;
        let mut store =
            plugin.new_store(&output, CallContext::default(), std::time::Instant::now() + timeout).map_err(smoke)?;
        // Bounded like a call: epoch interruption stops a spinning start, and a timer one that
        // waits in a host call (a WASI sleep), so a hanging plugin never blocks a reload.
        let started = smoke_within(timeout, pre.instantiate_async(&mut store));
        output.finish();
        match started {
            Some(result) => result.map_err(smoke)?,
            None => {
                return Err(PluginError::Smoke {
                    plugin: name,
                    path: file,
                    reason: format!("it did not start within its timeout_ms ({} ms)", timeout.as_millis()),
                });
            }
        };
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
            keyvalue: None,
            buckets: Arc::from([]),
            databases: None,
            http: None,
            env: Vec::new(),
            settings,
            fuel_counting: self.fuel,
            engine: self.engine.clone(),
            peak_memory: Arc::default(),
            code_size: 0,
            warm: Default::default(),
            config: crate::wasi_config::PluginConfig::default(),
        }
    }
}

impl Runtime {
    /// The compiled component for `bytes`: from the cache when this host already compiled
    /// the same bytes with the same engine (and the entry's MAC says so), else compiled now
    /// (and cached).
    fn component(&self, plugin: &str, bytes: &[u8], hash: &str) -> Result<(Component, CodeSource), wasmtime::Error> {
        let Some(cache) = self.cache.as_ref().filter(|cache| trusted_cache_dir(cache.dir())) else {
            let component = compile(&self.engine, plugin, bytes, "no code cache");
            release_freed_memory();
            return Ok((component?, CodeSource::Compiled));
        };
        let name = cache_file_name(plugin, hash, &self.engine_key);
        if let Some(component) = cache.load(&self.engine, &name) {
            return Ok((component, CodeSource::Cache));
        }
        let component = compile(&self.engine, plugin, bytes, "first start only: the result is cached");
        if let Ok(component) = &component {
            cache.store(&name, component);
        }
        release_freed_memory();
        Ok((component?, CodeSource::Compiled))
    }

    /// Deletes the cache entries of `plugin` whose `.wasm` hash is not `live_hash` (the
    /// version that serves): every save of a plugin under `warren dev` would otherwise leave
    /// its compiled code behind. Entries of other plugins are left alone.
    pub fn prune_cache(&self, plugin: &str, live_hash: &str) {
        if let Some(cache) = &self.cache {
            cache.prune(plugin, live_hash);
        }
    }
}

/// The first `wasi:http` interface `component` imports, if any: only a plugin granted
/// origins may have outbound HTTP.
fn http_import(component: &Component, engine: &Engine) -> Option<String> {
    let ty = component.component_type();
    let found = ty.imports(engine).map(|(name, _)| name).find(|name| name.starts_with("wasi:http/"));
    found.map(str::to_string)
}

/// Compiles `bytes` with Cranelift, saying so before (a Python or JavaScript plugin takes
/// seconds) and how long it took after: a first start is never silent.
fn compile(engine: &Engine, plugin: &str, bytes: &[u8], note: &str) -> Result<Component, wasmtime::Error> {
    let size = format!("{:.1} MiB", bytes.len() as f64 / (1024.0 * 1024.0));
    tracing::info!(plugin, size = %size, "compiling {plugin} ({size}), {note}");
    let started = std::time::Instant::now();
    let component = Component::new(engine, bytes)?;
    tracing::info!(plugin, ms = started.elapsed().as_millis() as u64, "compiled {plugin}");
    Ok(component)
}

/// Hands back to the system the memory a compilation (and its cache entry) allocated and
/// freed. Cranelift works on rayon's threads, each with a glibc malloc arena of its own, and
/// what it frees stays in those arenas, fragmented: every hot reload left the host's resident memory ≈ 55 KiB
/// larger (100 swaps: +5 MiB, all of it given back by `malloc_trim`). Trimming after each
/// compile (a few ms, off the serving threads) keeps a host that reloads for days flat.
/// Other allocators and platforms: nothing to do.
fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        unsafe extern "C" {
            fn malloc_trim(pad: usize) -> std::ffi::c_int;
        }
        // SAFETY: glibc's malloc_trim takes no pointer; it only returns free pages.
        unsafe { malloc_trim(0) };
    }
}

/// Runs a smoke instantiation to completion on this (blocking) thread, giving up after
/// `timeout`; `None` when it did not finish in time. Instantiation awaits nothing from the
/// host but WASI's own timers, which need the tokio runtime when one is running.
fn smoke_within<T>(timeout: std::time::Duration, start: impl std::future::Future<Output = T>) -> Option<T> {
    match tokio::runtime::Handle::try_current() {
        Ok(handle) => {
            let _entered = handle.enter();
            futures_lite::future::block_on(async { tokio::time::timeout(timeout, start).await.ok() })
        }
        Err(_) => Some(futures_lite::future::block_on(start)),
    }
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
