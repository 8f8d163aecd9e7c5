//! The WebAssembly engine: one wasmtime [`Engine`] and linker for the host, its instance
//! pool and epoch ticker, and turning a `.wasm` file into a checked [`Plugin`] — compiled
//! or loaded from the code cache, checked against the `warren:plugin/handler` world, and
//! instantiated once as a smoke test.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::sync::Semaphore;
use wasmtime::component::{Component, Linker};
use wasmtime::{Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use super::WORLD;
use super::bindings;
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
            http: None,
            env: Vec::new(),
            settings,
            fuel_counting: self.fuel,
            engine: self.engine.clone(),
            peak_memory: Arc::default(),
            code_size: 0,
            warm: Default::default(),
        }
    }
}

impl Runtime {
    /// The compiled component for `bytes`: from the cache when this host already compiled
    /// the same bytes with the same engine, else compiled now (and cached). A cache folder or
    /// file that another user could have written is never loaded: compiled instead, and said.
    fn component(&self, plugin: &str, bytes: &[u8], hash: &str) -> Result<(Component, CodeSource), wasmtime::Error> {
        let Some(dir) = self.cache_dir.as_deref().filter(|dir| trusted_cache_dir(dir)) else {
            return Ok((compile(&self.engine, plugin, bytes, "no code cache")?, CodeSource::Compiled));
        };
        let cached = dir.join(cache_file_name(plugin, hash, &self.engine_key));
        if let Ok(metadata) = std::fs::metadata(&cached) {
            match cache_problem(&metadata, host_uid(), false) {
                Some(problem) => warn_untrusted(&cached, &problem),
                // SAFETY: the file is named by the SHA-256 of the very bytes we were given and
                // by this engine's compatibility hash, only this function writes such names,
                // and the file and its folder are the host user's and writable by no one else.
                None => match unsafe { Component::deserialize_file(&self.engine, &cached) } {
                    Ok(component) => return Ok((component, CodeSource::Cache)),
                    Err(error) => {
                        tracing::warn!(file = %cached.display(), %error, "unusable cache entry; compiling again")
                    }
                },
            }
        }
        let component = compile(&self.engine, plugin, bytes, "first start only: the result is cached")?;
        if let Err(error) = write_cache(dir, &cached, &component) {
            tracing::warn!(file = %cached.display(), %error, "could not write the compiled plugin to the cache");
        }
        Ok((component, CodeSource::Compiled))
    }

    /// Deletes the cache entries of `plugin` whose `.wasm` hash is not `live_hash` (the
    /// version that serves): every save of a plugin under `warren dev` would otherwise leave
    /// its compiled code behind. Entries of other plugins are left alone.
    pub fn prune_cache(&self, plugin: &str, live_hash: &str) {
        let Some(dir) = self.cache_dir.as_deref().filter(|dir| dir.is_dir()) else { return };
        if cache_dir_problem(dir).is_some() {
            return;
        }
        match prune_cache_entries(dir, plugin, live_hash) {
            Ok((0, _)) => {}
            Ok((files, bytes)) => tracing::debug!(plugin, files, bytes, "pruned compiled code no live version uses"),
            Err(error) => tracing::warn!(plugin, dir = %dir.display(), %error, "could not prune the code cache"),
        }
    }
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

/// `<plugin>-<first 32 hex of the .wasm hash>-<engine key>.cwasm`.
fn cache_file_name(plugin: &str, hash: &str, engine_key: &str) -> String {
    format!("{plugin}-{}-{engine_key}.cwasm", &hash[..32.min(hash.len())])
}

/// The plugin and wasm-hash prefix a cache file name stands for.
fn parse_cache_file_name(file: &str) -> Option<(&str, &str)> {
    let stem = file.strip_suffix(".cwasm")?;
    let mut parts = stem.rsplitn(3, '-');
    let (_engine_key, hash, plugin) = (parts.next()?, parts.next()?, parts.next()?);
    (hash.len() == 32 && !plugin.is_empty()).then_some((plugin, hash))
}

/// Deletes `<plugin>-*.cwasm` files in `dir` whose hash is not `live_hash`'s; returns how
/// many files and bytes went.
fn prune_cache_entries(dir: &Path, plugin: &str, live_hash: &str) -> std::io::Result<(usize, u64)> {
    let keep = &live_hash[..32.min(live_hash.len())];
    let (mut files, mut bytes) = (0, 0);
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some((owner, hash)) = name.to_str().and_then(parse_cache_file_name) else { continue };
        if owner != plugin || hash == keep {
            continue;
        }
        let size = entry.metadata().map(|m| m.len()).unwrap_or(0);
        match std::fs::remove_file(entry.path()) {
            Ok(()) => (files, bytes) = (files + 1, bytes + size),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => return Err(error),
        }
    }
    Ok((files, bytes))
}

/// Whether the cache folder may be used: created (mode 0700) when missing, else owned by the
/// host's user and writable by no one else. Says why not in one warning.
fn trusted_cache_dir(dir: &Path) -> bool {
    if !dir.exists()
        && let Err(error) = create_cache_dir(dir)
    {
        tracing::warn!(dir = %dir.display(), %error, "cannot create the code cache folder: compiling every plugin");
        return false;
    }
    match cache_dir_problem(dir) {
        Some(problem) => {
            warn_untrusted(dir, &problem);
            false
        }
        None => true,
    }
}

/// Creates the cache folder readable and writable by the host's user only.
fn create_cache_dir(dir: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)
    }
    #[cfg(not(unix))]
    std::fs::create_dir_all(dir)
}

/// Why the cache folder must not be trusted, if it must not.
fn cache_dir_problem(dir: &Path) -> Option<String> {
    match std::fs::metadata(dir) {
        Ok(metadata) => cache_problem(&metadata, host_uid(), true),
        Err(error) => Some(format!("it cannot be inspected ({error})")),
    }
}

fn warn_untrusted(path: &Path, problem: &str) {
    tracing::warn!(
        path = %path.display(),
        "code cache not trusted: {problem}; it is not loaded as native code, plugins are compiled instead"
    );
}

/// Why a cache folder (`dir`) or file with this metadata must not be loaded as native code:
/// it is not the host user's (`host_uid`; `None` when it cannot be told), or group or others
/// may write it. Each reason names the fix.
#[cfg(unix)]
fn cache_problem(metadata: &std::fs::Metadata, host_uid: Option<u32>, dir: bool) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let what = if dir { "folder" } else { "file" };
    if (dir && !metadata.is_dir()) || (!dir && !metadata.is_file()) {
        return Some(format!("it is not a {what}: remove it"));
    }
    let Some(host_uid) = host_uid else {
        return Some("this host's user id cannot be told".to_string());
    };
    if metadata.uid() != host_uid {
        let recursive = if dir { "-R " } else { "" };
        return Some(format!(
            "the {what} is owned by uid {}, not by this host's user (uid {host_uid}): `chown {recursive}{host_uid}` it, or delete it",
            metadata.uid()
        ));
    }
    let mode = metadata.mode() & 0o7777;
    if mode & 0o022 != 0 {
        let recursive = if dir { "-R " } else { "" };
        return Some(format!(
            "the {what} is writable by group or others (mode {mode:04o}): `chmod {recursive}go-w` it"
        ));
    }
    None
}

#[cfg(not(unix))]
fn cache_problem(_: &std::fs::Metadata, _: Option<u32>, _: bool) -> Option<String> {
    None
}

/// The effective user id of this process, read once: from `/proc/self/status`, else (no
/// procfs) the owner of a file it creates.
fn host_uid() -> Option<u32> {
    static UID: std::sync::OnceLock<Option<u32>> = std::sync::OnceLock::new();
    *UID.get_or_init(|| {
        let from_proc = || {
            // "Uid:\t<real>\t<effective>\t<saved>\t<filesystem>"
            let status = std::fs::read_to_string("/proc/self/status").ok()?;
            let uids = status.lines().find_map(|line| line.strip_prefix("Uid:"))?;
            uids.split_whitespace().nth(1)?.parse().ok()
        };
        #[cfg(unix)]
        let from_probe = || {
            use std::os::unix::fs::MetadataExt;
            let probe = std::env::temp_dir().join(format!(".warren-uid-{}", std::process::id()));
            std::fs::write(&probe, b"").ok()?;
            let uid = std::fs::metadata(&probe).map(|m| m.uid()).ok();
            let _ = std::fs::remove_file(&probe);
            uid
        };
        #[cfg(not(unix))]
        let from_probe = || None;
        from_proc().or_else(from_probe)
    })
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

/// Writes a compiled component through a temp file and a rename (never a partial entry),
/// readable and writable by the host's user only.
fn write_cache(dir: &Path, file: &Path, component: &Component) -> Result<(), wasmtime::Error> {
    if !dir.is_dir() {
        create_cache_dir(dir)?;
    }
    let temp = file.with_extension(format!("tmp{}", std::process::id()));
    let written = (|| {
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut out = options.open(&temp)?;
        #[cfg(unix)]
        out.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
        std::io::Write::write_all(&mut out, &component.serialize()?)?;
        std::fs::rename(&temp, file)?;
        Ok::<_, wasmtime::Error>(())
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    written
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

    fn temp_folder(test: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("warren-unit-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn cache_file_names_say_their_plugin_and_hash() {
        let hash = content_hash(b"some wasm");
        let name = cache_file_name("my-plugin", &hash, "0123456789abcdef");
        assert_eq!(parse_cache_file_name(&name), Some(("my-plugin", &hash[..32])));
        assert_eq!(parse_cache_file_name("my-plugin.wasm"), None);
        assert_eq!(parse_cache_file_name("x-short-0123456789abcdef.cwasm"), None);
        assert_eq!(parse_cache_file_name(&format!("{name}.tmp42")), None);
    }

    #[test]
    fn pruning_keeps_the_live_version_and_other_plugins() {
        let dir = temp_folder("prune");
        let (live, old, older) = (content_hash(b"v3"), content_hash(b"v2"), content_hash(b"v1"));
        let file = |plugin: &str, hash: &str, key: &str| dir.join(cache_file_name(plugin, hash, key));
        let keep = [
            file("hello", &live, "0123456789abcdef"),
            file("hello", &live, "fedcba9876543210"),
            file("hello-world", &old, "0123456789abcdef"),
            file("other", &older, "0123456789abcdef"),
            dir.join("notes.txt"),
        ];
        let go = [file("hello", &old, "0123456789abcdef"), file("hello", &older, "fedcba9876543210")];
        for path in keep.iter().chain(&go) {
            std::fs::write(path, b"12345").unwrap();
        }
        assert_eq!(prune_cache_entries(&dir, "hello", &live).unwrap(), (2, 10));
        for path in &keep {
            assert!(path.exists(), "{} was kept", path.display());
        }
        for path in &go {
            assert!(!path.exists(), "{} was pruned", path.display());
        }
        assert_eq!(prune_cache_entries(&dir, "hello", &live).unwrap(), (0, 0));
        let _ = std::fs::remove_dir_all(dir);
    }

    #[cfg(unix)]
    #[test]
    fn a_cache_others_could_write_is_refused_naming_the_fix() {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let chmod = |path: &Path, mode| std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
        let root = temp_folder("cacheperm");
        let dir = root.join(".warren-cache");
        assert!(trusted_cache_dir(&dir), "a missing folder is created");
        assert_eq!(std::fs::metadata(&dir).unwrap().mode() & 0o777, 0o700, "for the host's user alone");
        assert_eq!(cache_dir_problem(&dir), None);

        chmod(&dir, 0o775);
        let problem = cache_dir_problem(&dir).expect("group-writable");
        assert!(
            problem.contains("writable by group or others (mode 0775)") && problem.contains("chmod -R go-w"),
            "{problem}"
        );
        assert!(!trusted_cache_dir(&dir));
        chmod(&dir, 0o757);
        assert!(cache_dir_problem(&dir).is_some(), "others may write");
        chmod(&dir, 0o755);
        assert_eq!(cache_dir_problem(&dir), None, "readable by others is fine");

        let file = dir.join("x.cwasm");
        std::fs::write(&file, b"code").unwrap();
        chmod(&file, 0o666);
        let metadata = std::fs::metadata(&file).unwrap();
        let problem = cache_problem(&metadata, host_uid(), false).expect("world-writable");
        assert!(problem.contains("file is writable") && problem.contains("`chmod go-w`"), "{problem}");
        chmod(&file, 0o600);
        let metadata = std::fs::metadata(&file).unwrap();
        assert_eq!(cache_problem(&metadata, host_uid(), false), None);
        assert_eq!(host_uid(), Some(metadata.uid()), "the host owns what it creates");

        let stranger = metadata.uid() + 1;
        let problem = cache_problem(&metadata, Some(stranger), false).expect("another user's");
        assert!(
            problem.contains(&format!("owned by uid {}, not by this host's user (uid {stranger})", metadata.uid()))
                && problem.contains(&format!("`chown {stranger}`")),
            "{problem}"
        );
        assert!(cache_problem(&metadata, None, false).is_some(), "an unknown user is not trusted");
        assert!(cache_problem(&metadata, host_uid(), true).unwrap().contains("not a folder"));
        let _ = std::fs::remove_dir_all(root);
    }
}
