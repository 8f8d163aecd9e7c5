//! `warren new <name>`: a plugin crate that builds and answers at once, with its own test.

use std::path::{Path, PathBuf};

/// A plugin crate that could not be created.
#[derive(Debug, thiserror::Error)]
pub enum ScaffoldError {
    #[error("'{0}' is not a usable plugin name: use lowercase letters, digits and '-', starting with a letter")]
    Name(String),
    #[error("{0} already exists: pick another name or remove it")]
    Exists(PathBuf),
    #[error("cannot write {path}: {reason}")]
    Write { path: PathBuf, reason: String },
}

/// Where the guest SDK of this build lives, for crates created outside this workspace.
const GUEST_SDK: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../guest-sdk");

/// Creates `<plugins>/<name>/` with a JSON handler and its unit test. Inside a workspace
/// that provides `warren-guest` (like this repository) the crate inherits its settings;
/// elsewhere it depends on the guest SDK by path.
pub fn new_plugin(plugins: &Path, name: &str) -> Result<PathBuf, ScaffoldError> {
    let valid = name.chars().next().is_some_and(|c| c.is_ascii_lowercase())
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if !valid {
        return Err(ScaffoldError::Name(name.to_string()));
    }
    let dir = plugins.join(name);
    if dir.exists() {
        return Err(ScaffoldError::Exists(dir));
    }
    let in_workspace = plugins
        .parent()
        .map(|root| root.join("Cargo.toml"))
        .and_then(|manifest| std::fs::read_to_string(manifest).ok())
        .is_some_and(|text| text.contains("[workspace.dependencies]") && text.contains("warren-guest"));
    let manifest = if in_workspace {
        format!(
            "[package]\nname = \"{name}\"\nedition.workspace = true\nrust-version.workspace = true\nversion.workspace = true\npublish = false\n\n\
             [lib]\ncrate-type = [\"cdylib\", \"rlib\"]\n\n[dependencies]\nwarren-guest.workspace = true\nserde.workspace = true\n"
        )
    } else {
        let sdk = Path::new(GUEST_SDK).canonicalize().unwrap_or_else(|_| PathBuf::from(GUEST_SDK));
        format!(
            "[package]\nname = \"{name}\"\nedition = \"2024\"\nversion = \"0.1.0\"\npublish = false\n\n\
             [lib]\ncrate-type = [\"cdylib\", \"rlib\"]\n\n[dependencies]\nwarren-guest = {{ path = \"{}\" }}\n\
             serde = {{ version = \"1\", features = [\"derive\"] }}\n\n\
             # A crate of its own, not a member of an enclosing workspace.\n[workspace]\n\n\
             [profile.release]\nstrip = \"debuginfo\"\n",
            sdk.display()
        )
    };
    let source = LIB_RS.replace("{name}", name);
    let write = |path: PathBuf, text: &str| {
        std::fs::create_dir_all(path.parent().expect("a file in a folder"))
            .and_then(|()| std::fs::write(&path, text))
            .map_err(|e| ScaffoldError::Write { path, reason: e.to_string() })
    };
    write(dir.join("Cargo.toml"), &manifest)?;
    write(dir.join("src/lib.rs"), &source)?;
    Ok(dir)
}

const LIB_RS: &str = r#"//! `{name}`: a Warren plugin. Build it with `warren build`, serve it with a config entry:
//!
//! ```toml
//! [[request]]
//! routing_key = "{name}"
//! plugin = "{name}"
//! ```

use serde::{Deserialize, Serialize};
use warren_guest::HandlerError;

/// The request body, as JSON. A body that does not parse is rejected as `bad-request`.
#[derive(Debug, Deserialize)]
pub struct Input {
    pub name: String,
}

/// The response body, as JSON.
#[derive(Debug, Serialize, PartialEq)]
pub struct Output {
    pub message: String,
}

/// Handles one request. Return `HandlerError::Retry` for a passing failure, `Failed` for a
/// permanent one.
pub fn handle(input: Input) -> Result<Output, HandlerError> {
    Ok(Output { message: format!("Hello from {name}, {}!", input.name) })
}

warren_guest::export_json!(handle);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_by_name() {
        let output = handle(Input { name: "Ada".into() }).unwrap();
        assert_eq!(output.message, "Hello from {name}, Ada!");
    }
}
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_must_be_crate_names() {
        for bad in ["", "Hello", "1st", "a b", "a_b", "../x"] {
            assert!(matches!(new_plugin(Path::new("/nonexistent"), bad), Err(ScaffoldError::Name(_))), "{bad}");
        }
    }
}
