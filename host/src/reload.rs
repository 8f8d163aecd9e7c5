//! Hot reload: watches the plugins folder and swaps a plugin when its `.wasm` changes.
//!
//! The folder is watched, not the files: deploying by rename replaces the file's inode.
//! Events are debounced (a `cp` over a file is a truncate and several writes), only
//! `<name>.wasm` files of plugins the config names are considered (dotfiles and temp files are
//! not), a file whose content hash did not change is skipped, and each reload compiles off the
//! async threads, one at a time. The deploy contract: write a temp file, then rename it.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::RecursiveMode;
use notify_debouncer_mini::{DebounceEventResult, Debouncer, new_debouncer};
use tracing::{info, warn};

use crate::builder;
use crate::plugins::Plugins;

/// Quiet time after the last change to a file before it is reloaded.
pub const DEBOUNCE: Duration = Duration::from_millis(250);

/// The plugins folder cannot be watched.
#[derive(Debug, thiserror::Error)]
#[error(
    "cannot watch the plugins folder {dir}: {reason}. Check that it exists and is readable (on Linux, raise fs.inotify.max_user_watches if it is exhausted)"
)]
pub struct WatchError {
    dir: PathBuf,
    reason: String,
}

/// Watches a plugins folder while it lives.
pub struct PluginWatcher {
    _debouncer: Debouncer<notify::RecommendedWatcher>,
}

/// The plugin a changed file would be: `<name>.wasm`, not hidden.
fn plugin_name(path: &Path) -> Option<&str> {
    let file = path.file_name()?.to_str()?;
    file.strip_suffix(".wasm").filter(|name| !name.starts_with('.') && !name.is_empty())
}

impl PluginWatcher {
    /// Starts watching `dir`, reloading each of `plugins` whose file changes. Must be called
    /// inside a tokio runtime.
    pub fn start(dir: &Path, plugins: Arc<Plugins>) -> Result<PluginWatcher, WatchError> {
        let watch_error = |e: notify::Error| WatchError { dir: dir.to_path_buf(), reason: e.to_string() };
        let (tx, mut changed) = tokio::sync::mpsc::unbounded_channel::<PathBuf>();
        let mut debouncer = new_debouncer(DEBOUNCE, move |result: DebounceEventResult| match result {
            Ok(events) => events.into_iter().for_each(|event| {
                let _ = tx.send(event.path);
            }),
            Err(error) => warn!(%error, "plugin folder watch error"),
        })
        .map_err(watch_error)?;
        debouncer.watcher().watch(dir, RecursiveMode::NonRecursive).map_err(watch_error)?;

        tokio::spawn(async move {
            while let Some(path) = changed.recv().await {
                let Some(name) = plugin_name(&path).map(str::to_string) else { continue };
                if plugins.slot(&name).is_none() {
                    continue;
                }
                let plugins = plugins.clone();
                let _ = tokio::task::spawn_blocking(move || plugins.reload_and_log(&name)).await;
            }
        });
        info!(dir = %dir.display(), "watching plugins for hot reload");
        Ok(PluginWatcher { _debouncer: debouncer })
    }
}

/// Reports changes to the config file (its folder is watched: editors replace files).
pub struct ConfigWatcher {
    _debouncer: Debouncer<notify::RecommendedWatcher>,
    changes: tokio::sync::mpsc::UnboundedReceiver<()>,
}

impl ConfigWatcher {
    /// Watches the folder of `file` for changes to `file`.
    pub fn start(file: &Path) -> Result<ConfigWatcher, WatchError> {
        let file = file.canonicalize().unwrap_or_else(|_| file.to_path_buf());
        let dir = match file.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let watch_error = |e: notify::Error| WatchError { dir: dir.clone(), reason: e.to_string() };
        let (tx, changes) = tokio::sync::mpsc::unbounded_channel();
        let name = file.file_name().map(|n| n.to_os_string());
        let mut debouncer = new_debouncer(DEBOUNCE, move |result: DebounceEventResult| {
            if let Ok(events) = result
                && events.iter().any(|event| event.path.file_name().map(|n| n.to_os_string()) == name)
            {
                let _ = tx.send(());
            }
        })
        .map_err(watch_error)?;
        debouncer.watcher().watch(&dir, RecursiveMode::NonRecursive).map_err(watch_error)?;
        Ok(ConfigWatcher { _debouncer: debouncer, changes })
    }

    /// Resolves at the next change of the config file.
    pub async fn next(&mut self) -> Option<()> {
        self.changes.recv().await
    }
}

/// How long plugin sources must be quiet before `warren dev` rebuilds (editors save in bursts).
pub const SOURCE_DEBOUNCE: Duration = Duration::from_millis(500);

/// `warren dev`: rebuilds a plugin crate when a file under it changes. The new `.wasm` is
/// installed by rename and reaches the host through the plugins-folder watch, like any deploy.
pub struct SourceWatcher {
    _debouncer: Debouncer<notify::RecommendedWatcher>,
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
        let (tx, mut changed) = tokio::sync::mpsc::unbounded_channel::<PathBuf>();
        let mut debouncer = new_debouncer(SOURCE_DEBOUNCE, move |result: DebounceEventResult| {
            if let Ok(events) = result {
                events.into_iter().for_each(|event| {
                    let _ = tx.send(event.path);
                });
            }
        })
        .map_err(|e| watch_error(e.to_string()))?;
        debouncer.watcher().watch(source, RecursiveMode::Recursive).map_err(|e| watch_error(e.to_string()))?;

        tokio::spawn(async move {
            while let Some(path) = changed.recv().await {
                let path = path.canonicalize().unwrap_or(path);
                let Some(plugin) = plugins.iter().find(|plugin| path.starts_with(&plugin.dir)) else {
                    continue;
                };
                // Build output, installed packages and editor droppings are not source changes.
                let inside = path.strip_prefix(&plugin.dir).unwrap_or(&path);
                let generated = ["target", "node_modules", "__pycache__"];
                if inside.components().any(|c| generated.iter().any(|g| c.as_os_str() == *g))
                    || plugin_name(&path).is_some()
                {
                    continue;
                }
                let (plugin, out, target) = (plugin.clone(), out_dir.clone(), target_dir.clone());
                info!(plugin = %plugin.name, changed = %path.display(), "source changed: rebuilding");
                let built = tokio::task::spawn_blocking(move || builder::build_plugin(&plugin, &out, &target)).await;
                if let Ok(Err(error)) = built {
                    warn!(%error, "rebuild failed: the running version keeps serving");
                }
            }
        });
        info!(dir = %source.display(), "watching plugin sources: a change rebuilds the plugin");
        Ok(SourceWatcher { _debouncer: debouncer })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_visible_wasm_files_name_plugins() {
        assert_eq!(plugin_name(Path::new("/p/echo.wasm")), Some("echo"));
        assert_eq!(plugin_name(Path::new("/p/.echo.wasm.tmp")), None);
        assert_eq!(plugin_name(Path::new("/p/.echo.wasm")), None);
        assert_eq!(plugin_name(Path::new("/p/echo.wasm~")), None);
        assert_eq!(plugin_name(Path::new("/p/echo.cwasm")), None);
        assert_eq!(plugin_name(Path::new("/p/.wasm")), None);
    }
}
