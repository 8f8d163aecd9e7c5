//! The live plugins of a host: one swappable slot per plugin name, loaded from the config's
//! plugins folder. A slot is read once per message, so a message finishes on the version
//! that started it; a swap only changes what the next message gets.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use arc_swap::ArcSwap;
use serde::Serialize;
use tracing::{info, warn};

use super::{CodeSource, NativeHandler, Plugin, PluginError, Runtime, content_hash, read_plugin};
use crate::config::{Config, PluginSettings};

/// A plugin that can be replaced while messages flow.
pub type PluginSlot = Arc<ArcSwap<Plugin>>;

/// One or more plugins could not be loaded; each line says which and why.
#[derive(Debug, thiserror::Error)]
#[error("{}", .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("\n"))]
pub struct LoadErrors(pub Vec<PluginError>);

/// One live plugin, as `warren run` lists them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PluginStatus {
    pub name: String,
    pub generation: u64,
    /// SHA-256 of the `.wasm`, hex.
    pub hash: String,
    pub source: CodeSource,
    pub path: PathBuf,
    /// Size of the compiled code: what the plugin costs while idle.
    pub code_bytes: usize,
    /// The largest linear memory one call of this version has used so far.
    pub peak_memory_bytes: usize,
}

/// What a reload did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reloaded {
    /// The new version passed every check and now serves.
    Swapped(PluginStatus),
    /// The file's content is what already serves.
    Unchanged,
    /// While this version compiled, a config reload changed the plugin's settings (and
    /// loaded the file itself with them), or a newer file began loading: that one serves.
    Superseded,
}

/// How often a file reload loads again when a config reload supersedes it while it compiles
/// (each attempt after the first only loads if the file differs from what the config loaded).
const RELOAD_ATTEMPTS: usize = 3;

/// A live plugin: where it is loaded from, its slot, and the content hash its file had when
/// last tried (live or refused: a file seen again unchanged is not loaded again).
struct Entry {
    path: PathBuf,
    settings: PluginSettings,
    slot: PluginSlot,
    last_tried: String,
}

/// Every plugin the config names, by name.
pub struct Plugins {
    runtime: Arc<Runtime>,
    /// Plugin names served by Rust functions instead of files (the benchmark's baseline).
    natives: BTreeMap<String, NativeHandler>,
    live: Mutex<Live>,
    refusals: Mutex<Vec<String>>,
}

struct Live {
    entries: BTreeMap<String, Entry>,
}

/// The plugins a new config needs, loaded and checked but not serving yet: made by
/// [`Plugins::prepare`], swapped in by [`Plugins::commit`]. Dropping it changes nothing.
pub struct Prepared {
    /// Every plugin name the config routes to, with its settings.
    wanted: BTreeMap<String, PluginSettings>,
    loads: Vec<PreparedPlugin>,
}

struct PreparedPlugin {
    /// Loaded with generation 0: the generation is given at commit, under the lock.
    plugin: Plugin,
    settings: PluginSettings,
    /// The generation that served when the load began (`None`: a plugin new to the host).
    seen: Option<u64>,
    took: std::time::Duration,
}

impl Prepared {
    /// The names of the plugins that were loaded (new, or whose file or settings changed).
    pub fn loaded(&self) -> Vec<&str> {
        self.loads.iter().map(|load| load.plugin.name()).collect()
    }
}

/// One file reload under way: what it read, and the entry's state it read it under.
struct Attempt {
    name: String,
    path: PathBuf,
    settings: PluginSettings,
    bytes: Vec<u8>,
    hash: String,
}

impl Plugins {
    /// Compiles and checks every plugin the config names (off the async threads), reporting
    /// every failure, not just the first.
    pub async fn load_all(runtime: &Arc<Runtime>, config: &Config) -> Result<Plugins, LoadErrors> {
        Plugins::load_all_with_natives(runtime, config, BTreeMap::new()).await
    }

    /// Like [`Plugins::load_all`], with some plugin names served by Rust functions.
    pub async fn load_all_with_natives(
        runtime: &Arc<Runtime>,
        config: &Config,
        natives: BTreeMap<String, NativeHandler>,
    ) -> Result<Plugins, LoadErrors> {
        let plugins = Plugins {
            runtime: runtime.clone(),
            natives,
            live: Mutex::new(Live { entries: BTreeMap::new() }),
            refusals: Mutex::default(),
        };
        let prepared = plugins.prepare(config).await?;
        plugins.commit(prepared);
        Ok(plugins)
    }

    /// The first half of making the live set match `config`: loads and checks (off the async
    /// threads) every plugin it adds and every one whose file or limits changed. Nothing
    /// serves differently until [`Plugins::commit`]; if any plugin fails, every failure is
    /// reported and nothing is kept.
    pub async fn prepare(&self, config: &Config) -> Result<Prepared, LoadErrors> {
        let wanted: BTreeMap<String, PluginSettings> = config
            .plugin_names()
            .into_iter()
            .map(|name| {
                let settings = config.settings_for(&name);
                (name, settings)
            })
            .collect();
        let to_load: Vec<(String, PathBuf, PluginSettings, Option<u64>)> = {
            let live = self.lock();
            wanted
                .iter()
                .filter(|(name, _)| !self.natives.contains_key(*name))
                .filter_map(|(name, settings)| {
                    let path = config.plugin_path(name);
                    match live.entries.get(name) {
                        Some(entry) if entry.path == path && &entry.settings == settings => None,
                        entry => Some((
                            name.clone(),
                            path,
                            settings.clone(),
                            entry.map(|entry| entry.slot.load().generation()),
                        )),
                    }
                })
                .collect()
        };

        let mut loads = tokio::task::JoinSet::new();
        let mut loading = BTreeMap::new();
        for (name, path, settings, seen) in to_load {
            let runtime = self.runtime.clone();
            let what = (name.clone(), path.clone());
            let handle = loads.spawn_blocking(move || {
                let started = Instant::now();
                let loaded = runtime.load(&name, &path, settings.clone(), 0);
                loaded.map(|plugin| PreparedPlugin { plugin, settings, seen, took: started.elapsed() })
            });
            loading.insert(handle.id(), what);
        }
        let mut prepared = Prepared { wanted, loads: Vec::new() };
        let mut errors = Vec::new();
        while let Some(joined) = loads.join_next_with_id().await {
            match joined {
                Ok((_, Ok(load))) => prepared.loads.push(load),
                Ok((_, Err(error))) => errors.push(error),
                Err(panicked) => {
                    let (plugin, path) = loading.remove(&panicked.id()).unwrap_or_default();
                    errors.push(PluginError::Invalid {
                        plugin,
                        path,
                        reason: format!("loading it failed: {panicked}"),
                    });
                }
            }
        }
        if !errors.is_empty() {
            return Err(LoadErrors(errors));
        }
        Ok(prepared)
    }

    /// The second half: swaps in what [`Plugins::prepare`] loaded (each as the next
    /// generation of its slot, numbered here under the lock), drops the plugins the config no
    /// longer names and adds its native ones. Cannot fail.
    ///
    /// Returns the plugins whose slot a file reload swapped, with other content, while this
    /// was prepared: their file may be newer than what was loaded; reload them (with
    /// [`Plugins::reload_and_log`]) to catch up, now under the new settings.
    pub fn commit(&self, prepared: Prepared) -> Vec<String> {
        let Prepared { wanted, loads } = prepared;
        let mut stale = Vec::new();
        let mut swapped = Vec::new();
        {
            let mut live = self.lock();
            live.entries.retain(|name, _| wanted.contains_key(name));
            for (name, handler) in self.natives.iter().filter(|(name, _)| wanted.contains_key(*name)) {
                if !live.entries.contains_key(name) {
                    let plugin = self.runtime.native(name, *handler);
                    let path = plugin.path().to_path_buf();
                    let slot = Arc::new(ArcSwap::from_pointee(plugin));
                    let settings = wanted[name].clone();
                    live.entries.insert(name.clone(), Entry { path, settings, slot, last_tried: String::new() });
                }
            }
            for PreparedPlugin { mut plugin, settings, seen, took } in loads {
                let (path, hash) = (plugin.path().to_path_buf(), plugin.hash().to_string());
                match live.entries.get_mut(plugin.name()) {
                    Some(entry) => {
                        let serving = entry.slot.load();
                        if Some(serving.generation()) != seen && serving.hash() != hash {
                            stale.push(plugin.name().to_string());
                        }
                        plugin.generation = serving.generation() + 1;
                        swapped.push((status(&plugin), took));
                        entry.slot.store(Arc::new(plugin));
                        (entry.path, entry.settings, entry.last_tried) = (path, settings, hash);
                    }
                    None => {
                        plugin.generation = 1;
                        swapped.push((status(&plugin), took));
                        let name = plugin.name().to_string();
                        let slot = Arc::new(ArcSwap::from_pointee(plugin));
                        live.entries.insert(name, Entry { path, settings, slot, last_tried: hash });
                    }
                }
            }
        }
        for (s, took) in swapped {
            info!(
                plugin = %s.name,
                generation = s.generation,
                hash = &s.hash[..12],
                source = ?s.source,
                ms = took.as_millis() as u64,
                "plugin loaded"
            );
            self.prune_cache(&s);
        }
        stale
    }

    fn lock(&self) -> MutexGuard<'_, Live> {
        // A panic while the lock was held (none is expected) must not stop every later
        // reload and reconnect: each entry is replaced whole, so the set stays usable.
        self.live.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The slot of plugin `name`, if the config names it.
    pub fn slot(&self, name: &str) -> Option<PluginSlot> {
        self.lock().entries.get(name).map(|entry| entry.slot.clone())
    }

    /// Every live plugin: name, generation, hash, where its code came from.
    pub fn table(&self) -> Vec<PluginStatus> {
        self.lock().entries.values().map(|entry| status(&entry.slot.load())).collect()
    }

    /// Loads plugin `name` again from its file; swaps it in only if it passes every check
    /// and is still the newest attempt under the plugin's current settings when it is done.
    /// Blocking (it compiles): call it off the async threads.
    pub fn reload(&self, name: &str) -> Result<Reloaded, PluginError> {
        let mut superseded = false;
        for _ in 0..RELOAD_ATTEMPTS {
            let Some(attempt) = self.begin_reload(name)? else { break };
            let plugin = self.runtime.load_bytes(name, &attempt.path, &attempt.bytes, attempt.settings.clone(), 0)?;
            match self.finish_reload(&attempt, plugin) {
                Some(status) => {
                    self.prune_cache(&status);
                    return Ok(Reloaded::Swapped(status));
                }
                // Loaded under settings that are no longer the plugin's: try again, which
                // loads only if the file differs from what the config reload loaded.
                None => superseded = true,
            }
        }
        Ok(if superseded { Reloaded::Superseded } else { Reloaded::Unchanged })
    }

    /// Reads plugin `name`'s file; `None` if the plugin is not live or the file is what was
    /// last tried or what serves. Marks the file's content as tried.
    fn begin_reload(&self, name: &str) -> Result<Option<Attempt>, PluginError> {
        let Some(path) = self.lock().entries.get(name).map(|entry| entry.path.clone()) else {
            return Ok(None);
        };
        let bytes = read_plugin(name, &path)?;
        let hash = content_hash(&bytes);
        let mut live = self.lock();
        let Some(entry) = live.entries.get_mut(name) else { return Ok(None) };
        let new = std::mem::replace(&mut entry.last_tried, hash.clone()) != hash && entry.slot.load().hash() != hash;
        let settings = entry.settings.clone();
        Ok(new.then(|| Attempt { name: name.to_string(), path, settings, bytes, hash }))
    }

    /// Swaps in `plugin`, loaded for `attempt`, as the next generation — unless, while it
    /// loaded, a config reload changed the plugin's path or settings or dropped it, or a newer
    /// attempt began (`None`: superseded, nothing changes).
    fn finish_reload(&self, attempt: &Attempt, mut plugin: Plugin) -> Option<PluginStatus> {
        let mut live = self.lock();
        let entry = live.entries.get_mut(&attempt.name)?;
        if entry.path != attempt.path || entry.settings != attempt.settings || entry.last_tried != attempt.hash {
            return None;
        }
        plugin.generation = entry.slot.load().generation() + 1;
        let status = status(&plugin);
        entry.slot.store(Arc::new(plugin));
        Some(status)
    }

    /// Deletes the compiled code of `live`'s plugin that no live version uses.
    fn prune_cache(&self, live: &PluginStatus) {
        if live.source != CodeSource::Native {
            self.runtime.prune_cache(&live.name, &live.hash);
        }
    }

    /// Reloads `name` and logs the outcome in one line; the old version keeps serving on
    /// any failure.
    pub fn reload_and_log(&self, name: &str) {
        let started = Instant::now();
        match self.reload(name) {
            Ok(Reloaded::Swapped(s)) => info!(
                plugin = %s.name,
                generation = s.generation,
                hash = &s.hash[..12],
                source = ?s.source,
                ms = started.elapsed().as_millis() as u64,
                "plugin swapped: new messages use the new version"
            ),
            Ok(Reloaded::Unchanged) => {}
            Ok(Reloaded::Superseded) => info!(
                plugin = name,
                "plugin reload superseded: a config reload changed this plugin's settings while it compiled (and loaded the file with them), or a newer file began loading; the newer version serves"
            ),
            Err(PluginError::Read { plugin, path, reason }) if !Path::new(&path).exists() => warn!(
                plugin = %plugin,
                file = %path.display(),
                %reason,
                "plugin file deleted: the last good version keeps serving until the config drops it"
            ),
            Err(error) => {
                warn!(plugin = name, %error, "new version refused: the previous version keeps serving");
                self.refusals.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).push(error.to_string());
            }
        }
    }

    /// Every new version refused since start, each as the line that was logged.
    pub fn refusals(&self) -> Vec<String> {
        self.refusals.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clone()
    }
}

fn status(plugin: &Plugin) -> PluginStatus {
    PluginStatus {
        name: plugin.name().to_string(),
        generation: plugin.generation(),
        hash: plugin.hash().to_string(),
        source: plugin.source(),
        path: plugin.path().to_path_buf(),
        code_bytes: plugin.code_size_bytes(),
        peak_memory_bytes: plugin.peak_memory_bytes(),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::wasm::{HandlerError, Header, Request, Response};

    fn answer(_: &Request, _: &[Header]) -> Result<Response, HandlerError> {
        Ok(Response { body: Vec::new(), headers: Vec::new() })
    }

    /// A plugins folder of the test's own, with `hello.wasm` holding `bytes`.
    fn folder(test: &str, bytes: &[u8]) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("warren-unit-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("hello.wasm"), bytes).unwrap();
        dir
    }

    fn config(dir: &Path, rest: &str) -> Config {
        let text = format!(
            "[service]\nname = \"t\"\nplugins = \"{}\"\n[broker]\nurl = \"amqp://127.0.0.1:5672\"\n\
             [[request]]\nrouting_key = \"k\"\nplugin = \"hello\"\n{rest}",
            dir.display()
        );
        Config::parse(Path::new("test.toml"), &text, None).expect("the test config parses")
    }

    fn timeout(ms: u64) -> PluginSettings {
        let mut settings = PluginSettings::default();
        settings.limits.timeout = Duration::from_millis(ms);
        settings
    }

    /// A set with no plugin yet, on an engine without a code cache.
    fn empty() -> Plugins {
        Plugins {
            runtime: Runtime::new(4, 16 << 20, false, None).unwrap(),
            natives: BTreeMap::new(),
            live: Mutex::new(Live { entries: BTreeMap::new() }),
            refusals: Mutex::default(),
        }
    }

    /// A loaded version of plugin `hello` (a Rust function standing in for a component):
    /// what a load of a file with content hash `hash` under `settings` gives.
    fn version(plugins: &Plugins, dir: &Path, hash: &str, settings: &PluginSettings) -> Plugin {
        let mut plugin = plugins.runtime.native("hello", answer);
        plugin.path = dir.join("hello.wasm");
        plugin.hash = hash.to_string();
        plugin.source = CodeSource::Compiled;
        plugin.grants = Arc::new(settings.grants.clone());
        plugin.settings = settings.clone();
        plugin.generation = 0;
        plugin
    }

    /// What a config reload prepares for `hello` alone: one version, seen over `seen`.
    fn prepared(plugin: Plugin, settings: &PluginSettings, seen: Option<u64>) -> Prepared {
        Prepared {
            wanted: BTreeMap::from([("hello".to_string(), settings.clone())]),
            loads: vec![PreparedPlugin { plugin, settings: settings.clone(), seen, took: Duration::ZERO }],
        }
    }

    fn serving(plugins: &Plugins) -> Arc<Plugin> {
        plugins.slot("hello").expect("hello is live").load_full()
    }

    #[tokio::test]
    async fn a_prepare_that_fails_changes_nothing_and_reports_every_plugin() {
        let dir = folder("prepfail", b"not wasm at all");
        let plugins = empty();
        let old = PluginSettings::default();
        let stale = plugins.commit(prepared(version(&plugins, &dir, &"a".repeat(64), &old), &old, None));
        assert!(stale.is_empty());

        // New limits for hello (so it loads again: its file is not a component) and a plugin
        // whose file is missing.
        let new =
            config(&dir, "[[request]]\nrouting_key = \"m\"\nplugin = \"missing\"\n[plugin.hello]\ntimeout_ms = 100\n");
        let Err(LoadErrors(errors)) = plugins.prepare(&new).await else { panic!("the prepare fails") };
        let mut errors: Vec<String> = errors.iter().map(ToString::to_string).collect();
        errors.sort();
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(errors[0].contains("plugin 'hello'") && errors[0].contains("not WebAssembly"), "{errors:?}");
        assert!(errors[1].contains("plugin 'missing'") && errors[1].contains("cannot read"), "{errors:?}");

        let live = serving(&plugins);
        assert_eq!((live.generation(), live.hash()), (1, "a".repeat(64).as_str()));
        assert_eq!(live.limits().timeout, old.limits.timeout, "the old limits serve");
        assert_eq!(plugins.table().len(), 1, "nothing was added");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn a_prepare_swaps_and_drops_nothing_until_commit() {
        let dir = folder("prepcommit", b"v1");
        let plugins = empty();
        let new = config(&dir, "");
        let settings = new.settings_for("hello");
        let load = |plugin| PreparedPlugin { plugin, settings: settings.clone(), seen: None, took: Duration::ZERO };
        let hello = version(&plugins, &dir, &content_hash(b"v1"), &settings);
        let old = Plugin { name: "old".into(), ..version(&plugins, &dir, &"b".repeat(64), &settings) };
        plugins.commit(Prepared {
            wanted: BTreeMap::from([("hello".into(), settings.clone()), ("old".into(), settings.clone())]),
            loads: vec![load(hello), load(old)],
        });
        assert_eq!(plugins.table().len(), 2);

        // The new config names hello only, unchanged.
        let prepared = plugins.prepare(&new).await.expect("nothing to load");
        assert!(prepared.loaded().is_empty(), "hello's file and settings did not change");
        assert_eq!(plugins.table().len(), 2, "a prepare drops nothing");
        plugins.commit(prepared);
        let table = plugins.table();
        assert_eq!(table.iter().map(|s| (s.name.as_str(), s.generation)).collect::<Vec<_>>(), [("hello", 1)]);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_commit_numbers_each_swap_the_next_generation_of_its_slot() {
        let dir = folder("commitgen", b"v1");
        let plugins = empty();
        let settings = PluginSettings::default();
        plugins.commit(prepared(version(&plugins, &dir, &"a".repeat(64), &settings), &settings, None));
        let newer = timeout(100);
        plugins.commit(prepared(version(&plugins, &dir, &"b".repeat(64), &newer), &newer, Some(1)));
        let live = serving(&plugins);
        assert_eq!((live.generation(), live.hash()), (2, "b".repeat(64).as_str()));
        assert_eq!(live.limits().timeout, Duration::from_millis(100));
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_file_reload_loaded_under_old_settings_is_superseded_by_the_config_reload() {
        let dir = folder("superseded", b"v2");
        let plugins = empty();
        let old = PluginSettings::default();
        plugins.commit(prepared(version(&plugins, &dir, &content_hash(b"v1"), &old), &old, None));

        // The file changed: a reload begins under the old settings…
        let attempt = plugins.begin_reload("hello").unwrap().expect("a new file");
        assert_eq!(attempt.settings, old);
        // …while a config reload gives hello new limits and loads the same file with them.
        let new = timeout(100);
        let stale = plugins.commit(prepared(version(&plugins, &dir, &content_hash(b"v2"), &new), &new, Some(1)));
        assert!(stale.is_empty(), "no file reload swapped meanwhile");
        // The reload's build has the old settings: refused, and nothing changes.
        let built = version(&plugins, &dir, &attempt.hash, &attempt.settings);
        assert!(plugins.finish_reload(&attempt, built).is_none(), "superseded");
        let live = serving(&plugins);
        assert_eq!(live.generation(), 2);
        assert_eq!(live.limits().timeout, Duration::from_millis(100), "the new settings serve");
        // Trying again loads nothing: the config reload loaded this very file.
        assert_eq!(plugins.reload("hello").unwrap(), Reloaded::Unchanged);
        assert_eq!(serving(&plugins).generation(), 2);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn an_older_file_reload_never_replaces_a_newer_one() {
        let dir = folder("older", b"v2");
        let plugins = empty();
        let settings = PluginSettings::default();
        plugins.commit(prepared(version(&plugins, &dir, &content_hash(b"v1"), &settings), &settings, None));
        let first = plugins.begin_reload("hello").unwrap().expect("v2 is new");
        std::fs::write(dir.join("hello.wasm"), b"v3").unwrap();
        let second = plugins.begin_reload("hello").unwrap().expect("v3 is new");

        let done = plugins.finish_reload(&second, version(&plugins, &dir, &second.hash, &settings)).unwrap();
        assert_eq!(done.generation, 2);
        assert!(plugins.finish_reload(&first, version(&plugins, &dir, &first.hash, &settings)).is_none());
        let live = serving(&plugins);
        assert_eq!((live.generation(), live.hash()), (2, content_hash(b"v3").as_str()));
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_config_commit_names_a_plugin_a_file_reload_swapped_while_it_was_prepared() {
        let dir = folder("stale", b"v2");
        let plugins = empty();
        let old = PluginSettings::default();
        plugins.commit(prepared(version(&plugins, &dir, &content_hash(b"v1"), &old), &old, None));
        // The config reload loaded v1 with new settings (seen over generation 1); meanwhile a
        // file reload swapped v2 in with the old ones.
        let new = timeout(100);
        let config_version = prepared(version(&plugins, &dir, &content_hash(b"v1"), &new), &new, Some(1));
        let attempt = plugins.begin_reload("hello").unwrap().unwrap();
        plugins.finish_reload(&attempt, version(&plugins, &dir, &attempt.hash, &old)).unwrap();

        assert_eq!(plugins.commit(config_version), ["hello"], "v2 must be loaded again under the new settings");
        let live = serving(&plugins);
        assert_eq!((live.generation(), live.limits().timeout), (3, Duration::from_millis(100)));
        let again = plugins.begin_reload("hello").unwrap().expect("v2 is not what serves");
        assert_eq!(again.settings, new);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn concurrent_swaps_of_one_plugin_never_share_a_generation() {
        let dir = folder("concurrent", b"v1");
        let plugins = empty();
        let settings = PluginSettings::default();
        let hash = content_hash(b"v1");
        plugins.commit(prepared(version(&plugins, &dir, &hash, &settings), &settings, None));

        const THREADS: usize = 8;
        const ROUNDS: usize = 25;
        let start = std::sync::Barrier::new(THREADS);
        let reloaded: Vec<u64> = std::thread::scope(|scope| {
            let workers: Vec<_> = (0..THREADS)
                .map(|thread| {
                    let (plugins, dir, settings, hash, start) = (&plugins, &dir, &settings, &hash, &start);
                    scope.spawn(move || {
                        start.wait();
                        let mut generations = Vec::new();
                        for _ in 0..ROUNDS {
                            let built = version(plugins, dir, hash, settings);
                            if thread % 2 == 0 {
                                // A file reload of the file as last tried.
                                let attempt = Attempt {
                                    name: "hello".into(),
                                    path: dir.join("hello.wasm"),
                                    settings: settings.clone(),
                                    bytes: Vec::new(),
                                    hash: hash.clone(),
                                };
                                generations.push(plugins.finish_reload(&attempt, built).expect("current").generation);
                            } else {
                                // A config reload that loaded it.
                                plugins.commit(prepared(built, settings, Some(1)));
                            }
                        }
                        generations
                    })
                })
                .collect();
            workers.into_iter().flat_map(|worker| worker.join().unwrap()).collect()
        });
        let unique: std::collections::BTreeSet<u64> = reloaded.iter().copied().collect();
        assert_eq!(unique.len(), reloaded.len(), "two reloads got the same generation");
        assert_eq!(serving(&plugins).generation(), 1 + (THREADS * ROUNDS) as u64, "every swap counted once");
        let _ = std::fs::remove_dir_all(dir);
    }
}
