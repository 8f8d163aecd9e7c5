//! `warren dev`'s source watcher: rebuilds a plugin when a file under its source folder
//! changes; the new `.wasm` reaches the host through the plugins-folder watch like any deploy.

use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::RecursiveMode;
use tracing::{info, warn};

use super::builder;
use crate::wasm::reload::plugin_name;
use crate::watch::{Watch, WatchError, watch_changes};

/// How long plugin sources must be quiet before `warren dev` rebuilds (editors save in bursts).
pub const SOURCE_DEBOUNCE: Duration = Duration::from_millis(500);

/// `warren dev`: rebuilds a plugin crate when a file under it changes. The new `.wasm` is
/// installed by rename and reaches the host through the plugins-folder watch, like any deploy.
pub struct SourceWatcher {
    _watch: Watch,
}

impl SourceWatcher {
    /// Watches every plugin crate under `source`; rebuilds into `out_dir` with `target_dir`.
    pub fn start(source: &Path, out_dir: PathBuf, target_dir: PathBuf) -> Result<SourceWatcher, WatchError> {
        let watch_error = |reason: String| WatchError { dir: source.to_path_buf(), reason };
        let plugins = builder::find_plugins(source).map_err(|e| watch_error(e.to_string()))?;
        let plugins: Vec<builder::PluginSource> = plugins
            .into_iter()
            .map(|plugin| builder::PluginSource {
                dir: plugin.dir.canonicalize().unwrap_or(plugin.dir.clone()),
                ..plugin
            })
            .collect();
        let (tx, mut changed) = tokio::sync::mpsc::unbounded_channel::<Vec<PathBuf>>();
        let watch = watch_changes(source, RecursiveMode::Recursive, SOURCE_DEBOUNCE, move |paths| {
            let _ = tx.send(paths);
        })
        .map_err(|e| watch_error(e.to_string()))?;

        tokio::spawn(async move {
            while let Some(paths) = changed.recv().await {
                // Each plugin a batch of changes touched is rebuilt once.
                let mut touched: Vec<(&builder::PluginSource, PathBuf)> = Vec::new();
                for path in paths {
                    let path = path.canonicalize().unwrap_or(path);
                    let Some(plugin) = plugins.iter().find(|plugin| path.starts_with(&plugin.dir)) else {
                        continue;
                    };
                    // Build output, installed packages and editor droppings are not source changes.
                    let inside = path.strip_prefix(&plugin.dir).unwrap_or(&path);
                    let is_generated =
                        inside.components().any(|c| builder::GENERATED_FOLDERS.iter().any(|g| c.as_os_str() == *g));
                    if !is_generated
                        && plugin_name(&path).is_none()
                        && !touched.iter().any(|(p, _)| p.name == plugin.name)
                    {
                        touched.push((plugin, path));
                    }
                }
                for (plugin, path) in touched {
                    let (plugin, out, target) = (plugin.clone(), out_dir.clone(), target_dir.clone());
                    info!(plugin = %plugin.name, changed = %path.display(), "source changed: rebuilding");
                    let built =
                        tokio::task::spawn_blocking(move || builder::build_plugin(&plugin, &out, &target)).await;
                    if let Ok(Err(error)) = built {
                        warn!(%error, "rebuild failed: the running version keeps serving");
                    }
                }
            }
        });
        info!(dir = %source.display(), "watching plugin sources: a change rebuilds the plugin");
        Ok(SourceWatcher { _watch: watch })
    }
}
