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

const MAIN_GO: &str = r#"// {name}: a Warren plugin in Go that greets by name and counts the greetings.
// {"name": "Ada"} -> {"count": 1, "greeting": "Hello, Ada!"}. Serve it with a config entry:
//
//	[[request]]
//	routing_key = "{name}"
//	plugin = "{name}"
//
//	[plugin.{name}]
//	keyvalue = ["counters"]   # the bucket it counts in (the host's embedded store by default)
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
//
// Read a config value ([plugin.{name}.config] greeting = "Hi"):
//
//	greeting, ok, err := warren.ConfigGet("greeting")
func handle(request *Request, headers warren.Headers) (any, error) {
	counters, err := warren.OpenBucket("counters")
	if err != nil {
		return nil, err
	}
	defer counters.Close()
	return greet(request, counters)
}

// Counter is what greet counts with: the host's bucket, or a map in the unit test.
type Counter interface {
	Increment(key string, delta uint64) (uint64, error)
}

// greet is the logic: counts this name's greetings (atomically, kept across messages and
// restarts by the host) and greets.
func greet(request *Request, counter Counter) (any, error) {
	if request.Name == "" {
		return nil, warren.BadRequest("name is required")
	}
	count, err := counter.Increment(request.Name, 1)
	if err != nil {
		return nil, err
	}
	return map[string]any{"greeting": "Hello, " + request.Name + "!", "count": count}, nil
}

// A plugin is a library the host calls: main never runs.
func main() {}
"#;

const MAIN_TEST_GO: &str = r#"package main

import (
	"testing"

	warren "warren/guest"
)

// counts is a Counter in memory.
type counts map[string]uint64

func (c counts) Increment(key string, delta uint64) (uint64, error) {
	c[key] += delta
	return c[key], nil
}

func TestGreetsByNameAndCounts(t *testing.T) {
	counter := counts{}
	handler := warren.JSON(func(request *Request, headers warren.Headers) (any, error) {
		return greet(request, counter)
	})
	for _, want := range []string{`{"count":1,"greeting":"Hello, Ada!"}`, `{"count":2,"greeting":"Hello, Ada!"}`} {
		response, refused := warren.Call(handler, warren.Message{Body: []byte(`{"name":"Ada"}`)})
		if refused != nil {
			t.Fatal(refused)
		}
		if got := string(response.Body); got != want {
			t.Fatalf("got %s, want %s", got, want)
		}
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

const APP_PY: &str = r#""""`{name}`: a Warren plugin that greets by name and counts the greetings. Build it
with `warren build`, serve it with a config entry:

    [[request]]
    routing_key = "{name}"
    plugin = "{name}"

    [plugin.{name}]
    keyvalue = ["counters"]   # the bucket it counts in (the host's embedded store by default)
"""

from dataclasses import dataclass
from typing import Callable

import warren_guest as warren


@dataclass
class Input:
    """The request body, as JSON. A body that does not fit is rejected as `bad-request`."""

    name: str


@warren.json_handler
def handle(request: Input) -> dict:
    """Handles one request: counts this name's greetings in the bucket `counters` (atomic,
    kept by the host across messages and restarts). Raise warren.Retry for a passing failure,
    warren.Failed for a permanent one.

    To call an HTTP service: set `http = true` under [tool.warren] in pyproject.toml, grant
    the origin in the host's config (`[plugin.{name}] http = ["https://api.example.com"]`), then
        from warren_guest import http
        price = http.get("https://api.example.com/price/A1").raise_for_status().json()
    A config value (`[plugin.{name}.config] greeting = "Hi"`): `warren.config_get("greeting")`.
    """
    return greet(request, warren.Bucket.open("counters").increment)


def greet(request: Input, count: Callable[[str], int]) -> dict:
    """The logic, with the counter passed in: the unit test counts in memory."""
    return {"message": f"Hello from {name}, {request.name}!", "count": count(request.name)}


WitWorld = warren.WitWorld
"#;

const TEST_APP_PY: &str = r#"import unittest
from collections import Counter

from app import Input, greet


class GreetTest(unittest.TestCase):
    def test_greets_by_name_and_counts(self):
        counts = Counter()

        def count(name):
            counts[name] += 1
            return counts[name]

        self.assertEqual(greet(Input(name="Ada"), count), {"message": "Hello from {name}, Ada!", "count": 1})
        self.assertEqual(greet(Input(name="Ada"), count)["count"], 2)


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

const HANDLER_JS: &str = r#"// `{name}`: a Warren plugin that greets by name and counts the greetings. Build it with
// `warren build`, serve it with a config entry:
//
//   [[request]]
//   routing_key = "{name}"
//   plugin = "{name}"
//
//   [plugin.{name}]
//   keyvalue = ["counters"]   # the bucket it counts in (the host's embedded store by default)
//
// The logic is a plain function (tested with `node --test`); app.js exports it with the
// host's bucket as its counter (warren-guest's Bucket.open("counters").increment).
// A config value ([plugin.{name}.config] greeting = "Hi"): warren-guest's configGet("greeting").
//
// To call an HTTP service, use plain `fetch` from an async handler: set "warren": {"http": true}
// in package.json, grant the origin in the host's config
// ([plugin.{name}] http = ["https://api.example.com"]), then
//   const price = await (await fetch("https://api.example.com/price/A1")).json();
// (warren-guest's httpError(e, status) turns a failed request into Retry or Failed).

/**
 * Handles one request body (parsed JSON): `count(name)` adds one to this name's greetings and
 * returns the new count. Throw BadRequest, Retry or Failed to refuse it.
 */
export function handle(input, { BadRequest }, count) {
  if (typeof input?.name !== "string") throw new BadRequest('expected {"name": <string>}');
  return { message: `Hello from {name}, ${input.name}!`, count: count(input.name) };
}
"#;

const APP_JS: &str = r#"// The component's export: the JSON handler from handler.js.
import * as warren from "warren-guest";
import { handle as logic } from "./handler.js";

export const handle = warren.jsonHandler((input) =>
  logic(input, warren, (name) => warren.Bucket.open("counters").increment(name)),
);
"#;

const HANDLER_TEST_JS: &str = r#"import { test } from "node:test";
import assert from "node:assert/strict";
import { handle } from "./handler.js";

class BadRequest extends Error {}

/** A counter in memory. */
function counter() {
  const counts = new Map();
  return (name) => {
    counts.set(name, (counts.get(name) ?? 0) + 1);
    return counts.get(name);
  };
}

test("greets by name and counts", () => {
  const count = counter();
  assert.deepEqual(handle({ name: "Ada" }, { BadRequest }, count), { message: "Hello from {name}, Ada!", count: 1 });
  assert.equal(handle({ name: "Ada" }, { BadRequest }, count).count, 2);
});

test("refuses a body without a name", () => {
  assert.throws(() => handle({}, { BadRequest }, counter()), BadRequest);
});
"#;

const LIB_RS: &str = r#"//! `{name}`: a Warren plugin that greets by name and counts the greetings. Build it with
//! `warren build`, serve it with a config entry:
//!
//! ```toml
//! [[request]]
//! routing_key = "{name}"
//! plugin = "{name}"
//!
//! [plugin.{name}]
//! keyvalue = ["counters"]   # the bucket it counts in (the host's embedded store by default)
//! ```

use serde::{Deserialize, Serialize};
use warren_guest::{HandlerError, kv};

/// The request body, as JSON. A body that does not parse is rejected as `bad-request`.
#[derive(Debug, Deserialize)]
pub struct Input {
    pub name: String,
}

/// The response body, as JSON.
#[derive(Debug, Serialize, PartialEq)]
pub struct Output {
    pub message: String,
    /// How many times this name was greeted, this time included.
    pub count: u64,
}

/// Handles one request: counts this name's greetings in the bucket `counters` (atomic, kept
/// by the host across messages and restarts) and greets. Return `HandlerError::Retry` for a
/// passing failure, `Failed` for a permanent one (`?` on a key-value error picks one).
///
/// To call an HTTP service, grant its origin in the host's config (`[plugin.{name}] http =
/// ["https://api.example.com"]`), then, JSON in and out (`?` picks `retry` or `failed`):
/// `let price: serde_json::Value = warren_guest::http::get_json("https://api.example.com/price/A1")?;`
/// A config value (`[plugin.{name}.config] greeting = "Hi"`):
/// `let greeting = warren_guest::config::get("greeting")?;`
pub fn handle(input: Input) -> Result<Output, HandlerError> {
    let counters = kv::Bucket::open("counters")?;
    greet(input, |name| Ok(counters.increment(name, 1)?))
}

/// The logic, with the counter passed in: the unit test counts in memory.
pub fn greet(input: Input, count: impl FnOnce(&str) -> Result<u64, HandlerError>) -> Result<Output, HandlerError> {
    let count = count(&input.name)?;
    Ok(Output { message: format!("Hello from {name}, {}!", input.name), count })
}

warren_guest::export_json!(handle);

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn greets_by_name_and_counts() {
        let mut counts = HashMap::new();
        let mut greet_ada = || {
            greet(Input { name: "Ada".into() }, |name| {
                let count = counts.entry(name.to_string()).or_insert(0);
                *count += 1;
                Ok(*count)
            })
            .unwrap()
        };
        assert_eq!(greet_ada(), Output { message: "Hello from {name}, Ada!".into(), count: 1 });
        assert_eq!(greet_ada().count, 2);
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
