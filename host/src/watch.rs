//! Debounced file watching, shared by plugin hot reload, config reload and `warren dev`:
//! only creates, writes, renames and removes count as changes, never reads.

use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::{RecommendedWatcher, RecursiveMode};
use notify_debouncer_full::{DebounceEventResult, Debouncer, RecommendedCache, new_debouncer};
use tracing::warn;

/// Quiet time after the last change to a file before it is acted on.
pub const DEBOUNCE: Duration = Duration::from_millis(250);

/// The plugins folder cannot be watched.
#[derive(Debug, thiserror::Error)]
#[error(
    "cannot watch the plugins folder {dir}: {reason}. Check that it exists and is readable (on Linux, raise fs.inotify.max_user_watches if it is exhausted)"
)]
pub struct WatchError {
    pub dir: PathBuf,
    pub reason: String,
}

/// A debounced watch that lives as long as this value.
pub type Watch = Debouncer<RecommendedWatcher, RecommendedCache>;

/// Watches `path` and calls `on_change` with the paths that were created, written, renamed
/// or removed once they have been quiet for `quiet`. Reads are not changes: inotify reports
/// every open, and the host's own reading of a file (to hash or build it) must not look
/// like a deploy, or it would reload it again and again.
pub fn watch_changes(
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
}
