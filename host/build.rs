//! Embeds the Go package `go.bytecodealliance.org/pkg` that Go plugins' generated bindings
//! import. No Go proxy is needed: the crate `wit-bindgen-go` (a dependency of this one, at
//! the version whose bindings `warren build` generates) carries its source in `src/pkg`.
//! `warren build` writes it into its build folder and points a `replace` at it.

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    // A new wit-bindgen-go (a version bump in the lock file) brings its own package source.
    println!("cargo:rerun-if-changed=../Cargo.lock");
    let pkg = wit_bindgen_go_source().join("src/pkg");
    let mut files = Vec::new();
    collect(&pkg, &pkg, &mut files);
    files.sort();
    let entries: String =
        files.iter().map(|(relative, absolute)| format!("    ({relative:?}, include_str!({absolute:?})),\n")).collect();
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let code = format!(
        "/// `go.bytecodealliance.org/pkg`'s go.mod and Go sources, from wit-bindgen-go.\n\
         pub const GO_RUNTIME_PKG: &[(&str, &str)] = &[\n{entries}];\n"
    );
    std::fs::write(out.join("go_runtime_pkg.rs"), code).expect("writing OUT_DIR/go_runtime_pkg.rs");
}

/// `go.mod` and every file under `wit/` (the Go sources and their empty assembly files).
fn collect(root: &Path, dir: &Path, files: &mut Vec<(String, String)>) {
    for entry in std::fs::read_dir(dir).expect("reading wit-bindgen-go's src/pkg").flatten() {
        let path = entry.path();
        let relative = path.strip_prefix(root).expect("under the root").to_string_lossy().replace('\\', "/");
        if path.is_dir() {
            if relative == "wit" || relative.starts_with("wit/") {
                collect(root, &path, files);
            }
        } else if relative == "go.mod" || relative.starts_with("wit/") {
            files.push((relative, path.to_string_lossy().into_owned()));
        }
    }
}

/// The folder of the wit-bindgen-go crate this build uses, as `cargo metadata` reports it
/// (the registry, a vendor folder or a git checkout alike).
fn wit_bindgen_go_source() -> PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let manifest = Path::new(&std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets it")).join("Cargo.toml");
    let target = std::env::var("TARGET").expect("cargo sets TARGET");
    let metadata = |offline: bool| {
        let mut command = Command::new(&cargo);
        command.args(["metadata", "--format-version", "1", "--filter-platform", &target, "--manifest-path"]);
        command.arg(&manifest);
        if offline {
            command.arg("--offline");
        }
        command.output().expect("running cargo metadata")
    };
    // Offline first (an offline or vendored build must not reach out). cargo metadata
    // resolves the whole workspace, dev-dependencies included, which a `cargo build -p
    // warren` on a fresh machine has not downloaded yet: then it may fetch them.
    let mut output = metadata(true);
    if !output.status.success() {
        output = metadata(false);
    }
    assert!(output.status.success(), "cargo metadata failed: {}", String::from_utf8_lossy(&output.stderr));
    let metadata: serde_json::Value = serde_json::from_slice(&output.stdout).expect("cargo metadata's JSON");
    let manifest_path = metadata["packages"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|package| package["name"] == "wit-bindgen-go")
        .and_then(|package| package["manifest_path"].as_str())
        .expect("wit-bindgen-go among this package's dependencies");
    Path::new(manifest_path).parent().expect("a manifest in a folder").to_path_buf()
}
