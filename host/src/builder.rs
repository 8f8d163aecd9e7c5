//! `warren build`: builds every plugin crate under a source folder for `wasm32-wasip2` and
//! drops each `<name>.wasm` into the plugins folder (written to a temp file and renamed, so
//! a running host never sees half a file).

use std::path::{Path, PathBuf};
use std::process::Command;

use tracing::info;

/// The Rust target plugins are built for.
pub const WASM_TARGET: &str = "wasm32-wasip2";

/// A plugin build that failed, and what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("cannot read the plugin source folder {path}: {reason}. Pass --source DIR (default: plugins/)")]
    Source { path: PathBuf, reason: String },
    #[error("{manifest}: {reason}")]
    Manifest { manifest: PathBuf, reason: String },
    #[error(
        "the {target} Rust target is not installed and `rustup target add {target}` failed: {reason}. Install it by hand",
        target = WASM_TARGET
    )]
    Target { reason: String },
    #[error("cannot run cargo: {0}. Is Rust installed (https://rustup.rs) and cargo on PATH?")]
    Cargo(String),
    #[error("building plugin '{plugin}' failed (cargo's errors are above). Fix them, then run `warren build` again")]
    Compile { plugin: String },
    #[error("cannot write {path}: {reason}")]
    Write { path: PathBuf, reason: String },
}

/// A plugin that was built and dropped into the plugins folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Built {
    /// The crate's package name, which is the plugin's name in the config.
    pub plugin: String,
    /// `<plugins>/<plugin>.wasm`.
    pub wasm: PathBuf,
}

/// The plugin crates under `source`: each folder with a `Cargo.toml`, by package name.
pub fn find_plugins(source: &Path) -> Result<Vec<(String, PathBuf)>, BuildError> {
    let entries = std::fs::read_dir(source)
        .map_err(|e| BuildError::Source { path: source.to_path_buf(), reason: e.to_string() })?;
    let mut plugins = Vec::new();
    for entry in entries.flatten() {
        let manifest = entry.path().join("Cargo.toml");
        if !manifest.is_file() {
            continue;
        }
        let text = std::fs::read_to_string(&manifest)
            .map_err(|e| BuildError::Manifest { manifest: manifest.clone(), reason: e.to_string() })?;
        let parsed: toml::Table = toml::from_str(&text)
            .map_err(|e| BuildError::Manifest { manifest: manifest.clone(), reason: e.message().to_string() })?;
        let name =
            parsed.get("package").and_then(|p| p.get("name")).and_then(|n| n.as_str()).ok_or_else(|| {
                BuildError::Manifest { manifest: manifest.clone(), reason: "no [package] name".into() }
            })?;
        plugins.push((name.to_string(), manifest));
    }
    plugins.sort();
    Ok(plugins)
}

/// Makes sure the wasm target is installed, installing it with rustup when it is missing.
pub fn ensure_target() -> Result<(), BuildError> {
    let installed = Command::new("rustup").args(["target", "list", "--installed"]).output();
    match installed {
        Ok(out) if String::from_utf8_lossy(&out.stdout).lines().any(|l| l.trim() == WASM_TARGET) => Ok(()),
        // Without rustup, let cargo report a missing target itself.
        Err(_) => Ok(()),
        Ok(_) => {
            info!(target = WASM_TARGET, "installing the Rust target (rustup target add)");
            let status = Command::new("rustup").args(["target", "add", WASM_TARGET]).status();
            match status {
                Ok(s) if s.success() => Ok(()),
                Ok(s) => Err(BuildError::Target { reason: format!("rustup exited with {s}") }),
                Err(e) => Err(BuildError::Target { reason: e.to_string() }),
            }
        }
    }
}

/// Builds every plugin crate under `source` in release mode into `target_dir`, and copies
/// each component to `<out_dir>/<package name>.wasm`.
pub fn build_plugins(source: &Path, out_dir: &Path, target_dir: &Path) -> Result<Vec<Built>, BuildError> {
    let plugins = find_plugins(source)?;
    ensure_target()?;
    plugins.into_iter().map(|(plugin, manifest)| build_plugin(&plugin, &manifest, out_dir, target_dir)).collect()
}

/// Builds one plugin crate (its `Cargo.toml` is `manifest`) and installs `<out_dir>/<plugin>.wasm`.
pub fn build_plugin(plugin: &str, manifest: &Path, out_dir: &Path, target_dir: &Path) -> Result<Built, BuildError> {
    info!(plugin, "building");
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["build", "--release", "--target", WASM_TARGET, "--manifest-path"])
        .arg(manifest)
        .arg("--target-dir")
        .arg(target_dir)
        .status()
        .map_err(|e| BuildError::Cargo(e.to_string()))?;
    if !status.success() {
        return Err(BuildError::Compile { plugin: plugin.to_string() });
    }
    // A library (cdylib) is named with underscores, a binary keeps the package's dashes.
    let release = target_dir.join(WASM_TARGET).join("release");
    let library = release.join(format!("{}.wasm", plugin.replace('-', "_")));
    let artifact = if library.is_file() { library } else { release.join(format!("{plugin}.wasm")) };
    std::fs::create_dir_all(out_dir)
        .map_err(|e| BuildError::Write { path: out_dir.to_path_buf(), reason: e.to_string() })?;
    let wasm = out_dir.join(format!("{plugin}.wasm"));
    install(&artifact, &wasm)?;
    info!(plugin, wasm = %wasm.display(), "built");
    Ok(Built { plugin: plugin.to_string(), wasm })
}

/// Copies `from` to `to` through a dotfile in the same folder and a rename, so a watcher
/// never sees a partial file.
fn install(from: &Path, to: &Path) -> Result<(), BuildError> {
    let name = to.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
    let temp = to.with_file_name(format!(".{name}.tmp"));
    let write_error = |e: std::io::Error| BuildError::Write { path: to.to_path_buf(), reason: e.to_string() };
    std::fs::copy(from, &temp).map_err(write_error)?;
    std::fs::rename(&temp, to).map_err(write_error)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_example_plugins_by_package_name() {
        let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugins");
        let names: Vec<String> = find_plugins(&source).unwrap().into_iter().map(|(n, _)| n).collect();
        for expected in ["chaos", "echo", "greet"] {
            assert!(names.contains(&expected.to_string()), "{names:?}");
        }
    }

    #[test]
    fn a_missing_source_folder_says_how_to_point_at_one() {
        let error = find_plugins(Path::new("/no/such/folder")).unwrap_err().to_string();
        assert!(error.contains("--source DIR"), "{error}");
    }
}
