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
}

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
        plugins.update(config).await?;
        Ok(plugins)
    }

    /// Makes the live set match `config`: loads plugins it adds, reloads those whose file or
    /// limits changed (as a new generation of the same slot), drops those it no longer names.
    /// All or nothing: if any plugin fails, nothing changes.
    pub async fn update(&self, config: &Config) -> Result<(), LoadErrors> {
        let to_load: Vec<(String, PathBuf, PluginSettings, u64)> = {
            let live = self.lock();
            config
                .plugin_names()
                .into_iter()
                .filter(|name| !self.natives.contains_key(name))
                .filter_map(|name| {
                    let (path, settings) = (config.plugin_path(&name), config.settings_for(&name));
                    match live.entries.get(&name) {
                        Some(entry) if entry.path == path && entry.settings == settings => None,
                        Some(entry) => Some((name, path, settings, entry.slot.load().generation() + 1)),
                        None => Some((name, path, settings, 1)),
                    }
                })
                .collect()
        };

        let mut loads = tokio::task::JoinSet::new();
        for (name, path, settings, generation) in to_load {
            let runtime = self.runtime.clone();
            loads.spawn_blocking(move || {
                let started = Instant::now();
                let loaded = runtime.load(&name, &path, settings.clone(), generation);
                (loaded.map(|plugin| (plugin, settings)), started.elapsed())
            });
        }
        let mut loaded = Vec::new();
        let mut errors = Vec::new();
        while let Some(joined) = loads.join_next().await {
            match joined.expect("a plugin load panicked") {
                (Ok((plugin, settings)), took) => {
                    info!(
                        plugin = plugin.name(),
                        generation = plugin.generation(),
                        hash = &plugin.hash()[..12],
                        source = ?plugin.source(),
                        ms = took.as_millis() as u64,
                        "plugin loaded"
                    );
                    loaded.push((plugin, settings));
                }
                (Err(error), _) => errors.push(error),
            }
        }
        if !errors.is_empty() {
            return Err(LoadErrors(errors));
        }

        let mut live = self.lock();
        let names = config.plugin_names();
        live.entries.retain(|name, _| names.contains(name));
        for (name, handler) in self.natives.iter().filter(|(name, _)| names.contains(name)) {
            if !live.entries.contains_key(name) {
                let plugin = self.runtime.native(name, *handler);
                let path = plugin.path().to_path_buf();
                let slot = Arc::new(ArcSwap::from_pointee(plugin));
                live.entries.insert(
                    name.clone(),
                    Entry { path, settings: config.settings_for(name), slot, last_tried: String::new() },
                );
            }
        }
        for (plugin, settings) in loaded {
            let (name, path, hash) =
                (plugin.name().to_string(), plugin.path().to_path_buf(), plugin.hash().to_string());
            match live.entries.get_mut(&name) {
                Some(entry) => {
                    entry.slot.store(Arc::new(plugin));
                    (entry.path, entry.settings, entry.last_tried) = (path, settings, hash);
                }
                None => {
                    let slot = Arc::new(ArcSwap::from_pointee(plugin));
                    live.entries.insert(name, Entry { path, settings, slot, last_tried: hash });
                }
            }
        }
        Ok(())
    }

    fn lock(&self) -> MutexGuard<'_, Live> {
        self.live.lock().expect("plugins lock")
    }

    /// The slot of plugin `name`, if the config names it.
    pub fn slot(&self, name: &str) -> Option<PluginSlot> {
        self.lock().entries.get(name).map(|entry| entry.slot.clone())
    }

    /// Every live plugin: name, generation, hash, where its code came from.
    pub fn table(&self) -> Vec<PluginStatus> {
        self.lock().entries.values().map(|entry| status(&entry.slot.load())).collect()
    }

    /// Loads plugin `name` again from its file; swaps it in only if it passes every check.
    /// Blocking (it compiles): call it off the async threads.
    pub fn reload(&self, name: &str) -> Result<Reloaded, PluginError> {
        let Some((path, slot, settings)) = self.tried(name, |_| true) else {
            return Ok(Reloaded::Unchanged);
        };
        let bytes = read_plugin(name, &path)?;
        let hash = content_hash(&bytes);
        if self.tried(name, |entry| std::mem::replace(&mut entry.last_tried, hash.clone()) != hash).is_none() {
            return Ok(Reloaded::Unchanged);
        }
        let live = slot.load();
        if hash == live.hash() {
            return Ok(Reloaded::Unchanged);
        }
        let plugin = self.runtime.load_bytes(name, &path, &bytes, settings, live.generation() + 1)?;
        let status = status(&plugin);
        slot.store(Arc::new(plugin));
        Ok(Reloaded::Swapped(status))
    }

    /// The path, slot and settings of plugin `name` if it is live and `check` on its entry
    /// (which may update it) holds.
    fn tried(
        &self,
        name: &str,
        check: impl FnOnce(&mut Entry) -> bool,
    ) -> Option<(PathBuf, PluginSlot, PluginSettings)> {
        let mut live = self.lock();
        let entry = live.entries.get_mut(name)?;
        check(entry).then(|| (entry.path.clone(), entry.slot.clone(), entry.settings.clone()))
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
            Err(PluginError::Read { plugin, path, reason }) if !Path::new(&path).exists() => warn!(
                plugin = %plugin,
                file = %path.display(),
                %reason,
                "plugin file deleted: the last good version keeps serving until the config drops it"
            ),
            Err(error) => {
                warn!(plugin = name, %error, "new version refused: the previous version keeps serving");
                self.refusals.lock().expect("refusals lock").push(error.to_string());
            }
        }
    }

    /// Every new version refused since start, each as the line that was logged.
    pub fn refusals(&self) -> Vec<String> {
        self.refusals.lock().expect("refusals lock").clone()
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
