//! Hot reload: watches the plugins folder and swaps a plugin when its `.wasm` changes.
//!
//! The folder is watched, not the files: deploying by rename replaces the file's inode.
//! Events are debounced (a `cp` over a file is a truncate and several writes), only
//! `<name>.wasm` files of plugins the config names are considered (dotfiles and temp files are
//! not), a file whose content hash did not change is skipped, and each reload compiles off the
//! async threads, one at a time. The deploy contract: write a temp file, then rename it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use notify::RecursiveMode;
use tracing::info;

use super::plugins::Plugins;
use crate::watch::{DEBOUNCE, Watch, WatchError, watch_changes};

/// Watches a plugins folder while it lives.
pub struct PluginWatcher {
    _watch: Watch,
}

/// The plugin a changed file would be: `<name>.wasm`, not hidden.
pub fn plugin_name(path: &Path) -> Option<&str> {
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
