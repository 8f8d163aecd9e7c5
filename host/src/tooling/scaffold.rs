//! `warren new <name> [--lang rust|python|js|go]`: a plugin that builds and answers at once,
//! with its own unit test.

use std::path::{Path, PathBuf};

use crate::tooling::builder::Language;

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

/// Where the guest SDK of this build lives, for plugins created outside this workspace.
fn guest_sdk() -> PathBuf {
    const GUEST_SDK: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../guest-sdk");
    Path::new(GUEST_SDK).canonicalize().unwrap_or_else(|_| PathBuf::from(GUEST_SDK))
}

/// Creates `<plugins>/<name>/` in `language`: a JSON handler and its unit test.
///
/// Inside a workspace that provides `warren-guest` (like this repository) a Rust crate
/// inherits its settings and a Python or JavaScript plugin is added to the workspace's
/// `exclude` list (it has no `Cargo.toml`); elsewhere the plugin points at this build's
/// guest SDK by path.
pub fn new_plugin(plugins: &Path, name: &str, language: Language) -> Result<PathBuf, ScaffoldError> {
    let valid = name.chars().next().is_some_and(|c| c.is_ascii_lowercase())
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if !valid {
        return Err(ScaffoldError::Name(name.to_string()));
    }
    let dir = plugins.join(name);
    if dir.exists() {
        return Err(ScaffoldError::Exists(dir));
    }
    let root_manifest = plugins.parent().map(|root| root.join("Cargo.toml"));
    let workspace = root_manifest
        .as_ref()
        .and_then(|manifest| std::fs::read_to_string(manifest).ok())
        .filter(|text| text.contains("[workspace.dependencies]") && text.contains("warren-guest"));
    let sdk = guest_sdk();
    let write = |path: PathBuf, text: &str| {
        std::fs::create_dir_all(path.parent().expect("a file in a folder"))
            .and_then(|()| std::fs::write(&path, text))
            .map_err(|e| ScaffoldError::Write { path, reason: e.to_string() })
    };
    let fill = |template: &str| template.replace("{name}", name);
    match language {
        Language::Rust => {
            let manifest = if workspace.is_some() {
                fill(CARGO_TOML_IN_WORKSPACE)
            } else {
                fill(CARGO_TOML).replace("{sdk}", &sdk.display().to_string())
            };
            write(dir.join("Cargo.toml"), &manifest)?;
            write(dir.join("src/lib.rs"), &fill(LIB_RS))?;
        }
        Language::Python => {
            write(dir.join("pyproject.toml"), &fill(PYPROJECT_TOML))?;
            write(dir.join("app.py"), &fill(APP_PY))?;
            write(dir.join("test_app.py"), &fill(TEST_APP_PY))?;
        }
        Language::JavaScript => {
            let js_sdk =
                if workspace.is_some() { "../../guest-sdk/js".into() } else { sdk.join("js").display().to_string() };
            write(dir.join("package.json"), &fill(PACKAGE_JSON).replace("{sdk}", &js_sdk))?;
            write(dir.join("handler.js"), &fill(HANDLER_JS))?;
            write(dir.join("app.js"), APP_JS)?;
            write(dir.join("handler.test.js"), &fill(HANDLER_TEST_JS))?;
        }
        Language::Go => {
            let go_sdk =
                if workspace.is_some() { "../../guest-sdk/go".into() } else { sdk.join("go").display().to_string() };
            write(dir.join("go.mod"), &fill(GO_MOD).replace("{sdk}", &go_sdk))?;
            write(dir.join("main.go"), &fill(MAIN_GO))?;
            write(dir.join("main_test.go"), &fill(MAIN_TEST_GO))?;
        }
    }
    if let (Some(text), Some(manifest), false) = (&workspace, &root_manifest, language == Language::Rust) {
        let folder = plugins.file_name().map(|f| f.to_string_lossy().to_string()).unwrap_or_default();
        if let Some(excluded) = exclude_from_workspace(text, &format!("{folder}/{name}")) {
            write(manifest.clone(), &excluded)?;
        }
    }
    Ok(dir)
}

/// How to run the unit test of a plugin created by [`new_plugin`].
pub fn test_command(dir: &Path, language: Language) -> String {
    let sdk = guest_sdk();
    match language {
        Language::Rust => format!("cargo test --manifest-path {}", dir.join("Cargo.toml").display()),
        Language::Python => {
            format!("cd {} && PYTHONPATH={} python3 -m unittest", dir.display(), sdk.join("python").display())
        }
        Language::JavaScript => format!("cd {} && node --test", dir.display()),
        Language::Go => format!("cd {} && go test ./...", dir.display()),
    }
}

/// `text` (a workspace `Cargo.toml`) with `path` added to `[workspace] exclude`, creating
/// the list when there is none; `None` when it is already there.
fn exclude_from_workspace(text: &str, path: &str) -> Option<String> {
    let entry = format!("\"{path}\"");
    if text.contains(&entry) {
        return None;
    }
    Some(match text.find("exclude = [") {
        Some(at) => {
            let insert = at + "exclude = [".len();
            format!("{}{entry}, {}", &text[..insert], &text[insert..])
        }
        None => text.replacen("[workspace]\n", &format!("[workspace]\nexclude = [{entry}]\n"), 1),
    })
}

const GO_MOD: &str = r#"// A Warren plugin in Go: `warren build` compiles this module into {name}.wasm (with Go
// 1.27.1 or newer, installed from PyPI when missing). The component bindings are generated
// in the build folder; `warren/guest` is the guest SDK (the replace serves `go test`).
module {name}

go 1.24

require warren/guest v0.0.0

replace warren/guest => {sdk}
"#;

const MAIN_GO: &str = r#"// {name}: a Warren plugin in Go. {"name": "Ada"} -> {"greeting": "Hello, Ada!"}.
package main

import warren "warren/guest"

// Request is what the handler expects in the body (unknown keys are ignored).
type Request struct {
	Name string `json:"name"`
}

func init() { warren.HandleJSON(handle) }

// handle answers one message. Return warren.BadRequest (never retried) or warren.Failed
// to refuse it; any other error retries it, as goamqp requeues it.
//
// Publish an event, if the config grants the stream (`publish = ["orders"]`):
//
//	err := warren.PublishJSON("orders", "Order.Created", map[string]any{"id": 42}, nil)
func handle(request *Request, headers warren.Headers) (any, error) {
	if request.Name == "" {
		return nil, warren.BadRequest("name is required")
	}
	return map[string]string{"greeting": "Hello, " + request.Name + "!"}, nil
}

// A plugin is a library the host calls: main never runs.
func main() {}
"#;

const MAIN_TEST_GO: &str = r#"package main

import (
	"testing"

	warren "warren/guest"
)

func TestGreetsByName(t *testing.T) {
	response, refused := warren.Call(warren.JSON(handle), warren.Message{Body: []byte(`{"name":"Ada"}`)})
	if refused != nil {
		t.Fatal(refused)
	}
	if got := string(response.Body); got != `{"greeting":"Hello, Ada!"}` {
		t.Fatalf("got %s", got)
	}
}

func TestABodyThatIsNotJSONIsABadRequest(t *testing.T) {
	_, refused := warren.Call(warren.JSON(handle), warren.Message{Body: []byte("hello")})
	if refused == nil || refused.Kind != warren.KindBadRequest {
		t.Fatalf("want a bad-request, got %v", refused)
	}
}
"#;

const CARGO_TOML_IN_WORKSPACE: &str = r#"[package]
name = "{name}"
edition.workspace = true
rust-version.workspace = true
version.workspace = true
publish = false

[lib]
crate-type = ["cdylib", "rlib"]

[dependencies]
warren-guest.workspace = true
serde.workspace = true
"#;

const CARGO_TOML: &str = r#"[package]
name = "{name}"
edition = "2024"
version = "0.1.0"
publish = false

[lib]
crate-type = ["cdylib", "rlib"]

[dependencies]
warren-guest = { path = "{sdk}" }
serde = { version = "1", features = ["derive"] }

# A crate of its own, not a member of an enclosing workspace.
[workspace]

[profile.release]
strip = "debuginfo"
"#;

const PYPROJECT_TOML: &str = r#"# A Warren plugin in Python: `warren build` turns app.py into {name}.wasm with
# componentize-py (it installs that itself the first time).
[project]
name = "{name}"
version = "0.1.0"
requires-python = ">=3.10"

[tool.warren]
# The module that assigns `WitWorld`.
module = "app"
# Outbound HTTP (warren_guest.http): build against the world that imports wasi:http.
# http = true
"#;

const APP_PY: &str = r#""""`{name}`: a Warren plugin. Build it with `warren build`, serve it with a config entry:

    [[request]]
    routing_key = "{name}"
    plugin = "{name}"
"""

from dataclasses import dataclass

import warren_guest as warren


@dataclass
class Input:
    """The request body, as JSON. A body that does not fit is rejected as `bad-request`."""

    name: str


@warren.json_handler
def handle(request: Input) -> dict:
    """Handles one request. Raise warren.Retry for a passing failure, warren.Failed for a
    permanent one.

    To call an HTTP service: set `http = true` under [tool.warren] in pyproject.toml, grant
    the origin in the host's config (`[plugin.{name}] http = ["https://api.example.com"]`), then
        from warren_guest import http
        price = http.get("https://api.example.com/price/A1").raise_for_status().json()
    """
    return {"message": f"Hello from {name}, {request.name}!"}


WitWorld = warren.WitWorld
"#;

const TEST_APP_PY: &str = r#"import unittest

from app import Input, handle


class HandleTest(unittest.TestCase):
    def test_answers_by_name(self):
        self.assertEqual(handle(Input(name="Ada")), {"message": "Hello from {name}, Ada!"})


if __name__ == "__main__":
    unittest.main()
"#;

const PACKAGE_JSON: &str = r#"{
  "name": "{name}",
  "version": "0.1.0",
  "type": "module",
  "main": "app.js",
  "private": true,
  "scripts": {
    "test": "node --test"
  },
  "dependencies": {
    "warren-guest": "file:{sdk}"
  },
  "devDependencies": {
    "@bytecodealliance/componentize-js": "0.23.0",
    "@bytecodealliance/preview2-shim": "0.25.0",
    "rolldown": "1.3.2"
  }
}
"#;

const HANDLER_JS: &str = r#"// `{name}`: a Warren plugin. Build it with `warren build`, serve it with a config entry:
//
//   [[request]]
//   routing_key = "{name}"
//   plugin = "{name}"
//
// The logic is a plain function (tested with `node --test`); app.js exports it.
//
// To call an HTTP service, use plain `fetch` from an async handler: set "warren": {"http": true}
// in package.json, grant the origin in the host's config
// ([plugin.{name}] http = ["https://api.example.com"]), then
//   const price = await (await fetch("https://api.example.com/price/A1")).json();
// (warren-guest's httpError(e, status) turns a failed request into Retry or Failed).

/** Handles one request body (parsed JSON). Throw BadRequest, Retry or Failed to refuse it. */
export function handle(input, { BadRequest }) {
  if (typeof input?.name !== "string") throw new BadRequest('expected {"name": <string>}');
  return { message: `Hello from {name}, ${input.name}!` };
}
"#;

const APP_JS: &str = r#"// The component's export: the JSON handler from handler.js.
import * as warren from "warren-guest";
import { handle as logic } from "./handler.js";

export const handle = warren.jsonHandler((input) => logic(input, warren));
"#;

const HANDLER_TEST_JS: &str = r#"import { test } from "node:test";
import assert from "node:assert/strict";
import { handle } from "./handler.js";

class BadRequest extends Error {}

test("answers by name", () => {
  assert.deepEqual(handle({ name: "Ada" }, { BadRequest }), { message: "Hello from {name}, Ada!" });
});

test("refuses a body without a name", () => {
  assert.throws(() => handle({}, { BadRequest }), BadRequest);
});
"#;

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
///
/// To call an HTTP service, grant its origin in the host's config (`[plugin.{name}] http =
/// ["https://api.example.com"]`), then, JSON in and out (`?` picks `retry` or `failed`):
/// `let price: serde_json::Value = warren_guest::http::get_json("https://api.example.com/price/A1")?;`
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
            let created = new_plugin(Path::new("/nonexistent"), bad, Language::Rust);
            assert!(matches!(created, Err(ScaffoldError::Name(_))), "{bad}");
        }
    }

    #[test]
    fn other_languages_join_the_workspace_exclude_list() {
        let text = "[workspace]\nmembers = [\"plugins/*\"]\nexclude = [\"plugins/a\"]\n";
        let added = exclude_from_workspace(text, "plugins/b").unwrap();
        assert!(added.contains("exclude = [\"plugins/b\", \"plugins/a\"]"), "{added}");
        assert_eq!(exclude_from_workspace(&added, "plugins/b"), None);
        let without = "[workspace]\nmembers = [\"plugins/*\"]\n";
        assert!(exclude_from_workspace(without, "plugins/c").unwrap().contains("exclude = [\"plugins/c\"]"));
    }
}
