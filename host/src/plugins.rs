//! The live plugins of a host: one swappable slot per plugin name, loaded from the config's
//! plugins folder. A slot is read once per message, so a message finishes on the version
//! that started it.

use std::collections::BTreeMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use tracing::info;

use crate::config::Config;
use crate::runtime::{Plugin, PluginError, Runtime};

/// A plugin that can be replaced while messages flow.
pub type PluginSlot = Arc<ArcSwap<Plugin>>;

/// One or more plugins could not be loaded; each line says which and why.
#[derive(Debug, thiserror::Error)]
#[error("{}", .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("\n"))]
pub struct LoadErrors(pub Vec<PluginError>);

/// Every plugin the config names, by name.
pub struct Plugins {
    slots: BTreeMap<String, PluginSlot>,
}

impl Plugins {
    /// Compiles and checks every plugin the config names (off the async threads), reporting
    /// every failure, not just the first.
    pub async fn load_all(runtime: &Arc<Runtime>, config: &Config) -> Result<Plugins, LoadErrors> {
        let mut loads = tokio::task::JoinSet::new();
        for name in config.plugin_names() {
            let runtime = runtime.clone();
            let path = config.plugin_path(&name);
            let limits = config.limits.clone();
            loads.spawn_blocking(move || {
                let started = std::time::Instant::now();
                let loaded = runtime.load(&name, &path, limits);
                (name, loaded, started.elapsed())
            });
        }
        let mut slots = BTreeMap::new();
        let mut errors = Vec::new();
        while let Some(joined) = loads.join_next().await {
            let (name, loaded, took) = joined.expect("a plugin load panicked");
            match loaded {
                Ok(plugin) => {
                    info!(plugin = %name, path = %plugin.path().display(), ms = took.as_millis() as u64, "plugin loaded");
                    slots.insert(name, Arc::new(ArcSwap::from_pointee(plugin)));
                }
                Err(error) => errors.push(error),
            }
        }
        if errors.is_empty() { Ok(Plugins { slots }) } else { Err(LoadErrors(errors)) }
    }

    /// The slot of plugin `name`, if the config names it.
    pub fn slot(&self, name: &str) -> Option<PluginSlot> {
        self.slots.get(name).cloned()
    }
}
