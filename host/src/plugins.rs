//! The live plugins of a host: one swappable slot per plugin name, loaded from the config's
//! plugins folder. A slot is read once per message, so a message finishes on the version
//! that started it; a swap only changes what the next message gets.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use arc_swap::ArcSwap;
use serde::Serialize;
use tracing::{info, warn};

use crate::config::{Config, Limits};
use crate::runtime::{self, CodeSource, Plugin, PluginError, Runtime};

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
}

/// What a reload did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reloaded {
    /// The new version passed every check and now serves.
    Swapped(PluginStatus),
    /// The file's content is what already serves.
    Unchanged,
}

/// Every plugin the config names, by name.
pub struct Plugins {
    runtime: Arc<Runtime>,
    limits: Limits,
    paths: BTreeMap<String, PathBuf>,
    slots: BTreeMap<String, PluginSlot>,
    /// The content hash each plugin's file had when last tried, live or refused: a file
    /// seen again unchanged is not loaded (or refused, or logged) again.
    last_tried: Mutex<BTreeMap<String, String>>,
    refusals: Mutex<Vec<String>>,
}

impl Plugins {
    /// Compiles and checks every plugin the config names (off the async threads), reporting
    /// every failure, not just the first.
    pub async fn load_all(runtime: &Arc<Runtime>, config: &Config) -> Result<Plugins, LoadErrors> {
        let paths: BTreeMap<String, PathBuf> =
            config.plugin_names().into_iter().map(|name| (name.clone(), config.plugin_path(&name))).collect();
        let mut loads = tokio::task::JoinSet::new();
        for (name, path) in &paths {
            let (runtime, name, path, limits) = (runtime.clone(), name.clone(), path.clone(), config.limits.clone());
            loads.spawn_blocking(move || {
                let started = Instant::now();
                let loaded = runtime.load(&name, &path, limits, 1);
                (loaded, started.elapsed())
            });
        }
        let mut slots = BTreeMap::new();
        let mut errors = Vec::new();
        while let Some(joined) = loads.join_next().await {
            match joined.expect("a plugin load panicked") {
                (Ok(plugin), took) => {
                    info!(
                        plugin = plugin.name(),
                        generation = 1,
                        hash = &plugin.hash()[..12],
                        source = ?plugin.source(),
                        ms = took.as_millis() as u64,
                        "plugin loaded"
                    );
                    slots.insert(plugin.name().to_string(), Arc::new(ArcSwap::from_pointee(plugin)));
                }
                (Err(error), _) => errors.push(error),
            }
        }
        if !errors.is_empty() {
            return Err(LoadErrors(errors));
        }
        let last_tried = slots.iter().map(|(name, slot)| (name.clone(), slot.load().hash().to_string())).collect();
        Ok(Plugins {
            runtime: runtime.clone(),
            limits: config.limits.clone(),
            paths,
            slots,
            last_tried: Mutex::new(last_tried),
            refusals: Mutex::default(),
        })
    }

    /// The slot of plugin `name`, if the config names it.
    pub fn slot(&self, name: &str) -> Option<PluginSlot> {
        self.slots.get(name).cloned()
    }

    /// The plugin served from `file`, if any.
    pub fn name_for(&self, file: &std::path::Path) -> Option<&str> {
        self.paths.iter().find(|(_, path)| path.as_path() == file).map(|(name, _)| name.as_str())
    }

    /// Every live plugin: name, generation, hash, where its code came from.
    pub fn table(&self) -> Vec<PluginStatus> {
        self.slots.values().map(|slot| status(&slot.load())).collect()
    }

    /// Loads plugin `name` again from its file; swaps it in only if it passes every check.
    /// Blocking (it compiles): call it off the async threads.
    pub fn reload(&self, name: &str) -> Result<Reloaded, PluginError> {
        let (Some(slot), Some(path)) = (self.slots.get(name), self.paths.get(name)) else {
            return Ok(Reloaded::Unchanged);
        };
        let bytes = runtime::read_plugin(name, path)?;
        let hash = runtime::content_hash(&bytes);
        if self.last_tried.lock().expect("last_tried lock").insert(name.to_string(), hash.clone()).as_ref()
            == Some(&hash)
        {
            return Ok(Reloaded::Unchanged);
        }
        let live = slot.load();
        if hash == live.hash() {
            return Ok(Reloaded::Unchanged);
        }
        let plugin = self.runtime.load_bytes(name, path, &bytes, self.limits.clone(), live.generation() + 1)?;
        let status = status(&plugin);
        slot.store(Arc::new(plugin));
        Ok(Reloaded::Swapped(status))
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
            Err(PluginError::Read { plugin, path, reason }) if !path.exists() => warn!(
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
    }
}
