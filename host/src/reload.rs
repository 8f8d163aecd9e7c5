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

use notify::{RecommendedWatcher, RecursiveMode};
use notify_debouncer_full::{DebounceEventResult, Debouncer, RecommendedCache, new_debouncer};
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

/// A debounced watch that lives as long as this value.
type Watch = Debouncer<RecommendedWatcher, RecommendedCache>;

/// Watches `path` and calls `on_change` with the paths that were created, written, renamed
/// or removed once they have been quiet for `quiet`. Reads are not changes: inotify reports
/// every open, and the host's own reading of a file (to hash or build it) must not look
/// like a deploy, or it would reload it again and again.
fn watch_changes(
    path: &Path,
    mode: RecursiveMode,
    quiet: Duration,
    mut on_change: impl FnMut(Vec<PathBuf>) + Send + 'static,
) -> Result<Watch, notify::Error> {
    let mut debouncer = new_debouncer(quiet, None, move |result: DebounceEventResult| match result {
        Ok(events) => {
            let paths: Vec<PathBuf> = events
                .into_iter()
                .filter(|event| !event.kind.is_access())
                .flat_map(|event| event.event.paths)
                .collect();
            if !paths.is_empty() {
                on_change(paths);
            }
        }
        Err(errors) => errors.iter().for_each(|error| warn!(%error, "file watch error")),
    })?;
    debouncer.watch(path, mode)?;
    Ok(debouncer)
}

/// Watches a plugins folder while it lives.
pub struct PluginWatcher {
    _watch: Watch,
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
        let watch = watch_changes(dir, RecursiveMode::NonRecursive, DEBOUNCE, move |paths| {
            paths.into_iter().for_each(|path| {
                let _ = tx.send(path);
            })
        })
        .map_err(watch_error)?;

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
        Ok(PluginWatcher { _watch: watch })
    }
}

/// Reports changes to the config file (its folder is watched: editors replace files).
pub struct ConfigWatcher {
    _watch: Watch,
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
        let watch = watch_changes(&dir, RecursiveMode::NonRecursive, DEBOUNCE, move |paths| {
            if paths.iter().any(|path| path.file_name().map(|n| n.to_os_string()) == name) {
                let _ = tx.send(());
            }
        })
        .map_err(watch_error)?;
        Ok(ConfigWatcher { _watch: watch, changes })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reading_a_file_is_not_a_change_but_writing_one_is() {
        let dir = std::env::temp_dir().join(format!("warren-watch-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("plugin.wasm"), b"v1").unwrap();
        let (tx, changes) = std::sync::mpsc::channel();
        let _watch = watch_changes(&dir, RecursiveMode::NonRecursive, Duration::from_millis(50), move |paths| {
            let _ = tx.send(paths);
        })
        .unwrap();
        // What the host does on every reload: open and read the plugin to hash it.
        for _ in 0..3 {
            std::fs::read(dir.join("plugin.wasm")).unwrap();
        }
        std::fs::write(dir.join("marker"), b"written").unwrap();
        let mut seen = Vec::new();
        while !seen.iter().any(|p: &PathBuf| p.ends_with("marker")) {
            let batch = changes.recv_timeout(Duration::from_secs(10)).expect("the write is reported");
            seen.extend(batch);
        }
        assert!(!seen.iter().any(|p| p.ends_with("plugin.wasm")), "reads reported as changes: {seen:?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

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
