//! `warren new <name> [--lang rust|python|js|go] [--with postgres]`: a plugin that builds and
//! answers at once, with its own unit test, and the config lines and setup steps it needs.

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
    #[error("warren new --with {with} is written in Rust only for now: leave out --lang {language}")]
    Unsupported { with: &'static str, language: &'static str },
}

/// What a scaffolded plugin keeps its state in, besides the default (a key-value bucket that
/// counts greetings): `warren new --with <this>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum With {
    /// A Postgres table, written in the call's transaction (`[database.<db>]`,
    /// `databases = [...]`, `transaction = true`). Rust only.
    Postgres,
}

impl With {
    fn flag(self) -> &'static str {
        match self {
            With::Postgres => "postgres",
        }
    }
}

fn language_flag(language: Language) -> &'static str {
    match language {
        Language::Rust => "rust",
        Language::Python => "python",
        Language::JavaScript => "js",
        Language::Go => "go",
    }
}

/// The database a `--with postgres` plugin is granted (and its config calls it): the plugin's
/// name with `_` for `-`, so it is also a plain SQL name.
fn database_name(name: &str) -> String {
    name.replace('-', "_")
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
pub fn new_plugin(plugins: &Path, name: &str, language: Language, with: &[With]) -> Result<PathBuf, ScaffoldError> {
    if let Some(&with) = with.first()
        && language != Language::Rust
    {
        return Err(ScaffoldError::Unsupported { with: with.flag(), language: language_flag(language) });
    }
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
    let fill = |template: &str| template.replace("{name}", name).replace("{db}", &database_name(name));
    match language {
        Language::Rust => {
            let manifest = if workspace.is_some() {
                fill(CARGO_TOML_IN_WORKSPACE)
            } else {
                fill(CARGO_TOML).replace("{sdk}", &sdk.display().to_string())
            };
            write(dir.join("Cargo.toml"), &manifest)?;
            if with.contains(&With::Postgres) {
                write(dir.join("src/lib.rs"), &fill(LIB_PG_RS))?;
                write(dir.join("schema.sql"), &fill(SCHEMA_SQL))?;
            } else {
                write(dir.join("src/lib.rs"), &fill(LIB_RS))?;
            }
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

/// What to do next with a plugin created by [`new_plugin`] in `dir`: the config entries that
/// serve it (and grant what it uses), and for `--with postgres` how to make its table.
pub fn next_steps(dir: &Path, name: &str, with: &[With]) -> String {
    let mut steps = String::new();
    if with.contains(&With::Postgres) {
        let db = database_name(name);
        let schema = dir.join("schema.sql");
        steps += &format!(
            "create its database and table once:\n  createdb -h 127.0.0.1 -U postgres {db}\n  \
             psql -h 127.0.0.1 -U postgres -d {db} -f {}\n",
            schema.display()
        );
    }
    steps += "add it to warren.toml, then `warren build` (or keep `warren dev` running):\n";
    steps += &format!("  [[request]]\n  routing_key = \"{name}\"\n  plugin = \"{name}\"\n\n");
    if with.contains(&With::Postgres) {
        let db = database_name(name);
        steps += &format!("  [database.{db}]\n  url = \"postgres://postgres@127.0.0.1:5432/{db}\"\n\n");
        steps += &format!(
            "  [plugin.{name}]\n  databases = [\"{db}\"]\n  \
             transaction = true   # its statements commit only if the handler succeeds\n"
        );
    } else {
        steps += &format!("  [plugin.{name}]\n  keyvalue = [\"counters\"]   # the bucket it counts in\n");
    }
    steps
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

const SCHEMA_SQL: &str = r#"-- The table of plugin {name}, in the database its config grants as "{db}". Apply it once
-- (applying it again changes nothing):
--   psql -h 127.0.0.1 -U postgres -d {db} -f schema.sql
CREATE TABLE IF NOT EXISTS greetings (
    id         text PRIMARY KEY,        -- the request's id: a message handled twice is kept once
    name       text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
"#;

const LIB_PG_RS: &str = r#"//! `{name}`: a Warren plugin that keeps what it is sent in Postgres. Each greeting becomes a
//! row of table `greetings` (`schema.sql`), written in the call's transaction, and the answer
//! counts the name's greetings. Build it with `warren build`; create its database and table once:
//!
//! ```sh
//! createdb -h 127.0.0.1 -U postgres {db}
//! psql -h 127.0.0.1 -U postgres -d {db} -f plugins/{name}/schema.sql
//! ```
//!
//! and serve it with these config entries:
//!
//! ```toml
//! [[request]]
//! routing_key = "{name}"
//! plugin = "{name}"
//!
//! [database.{db}]
//! url = "postgres://postgres@127.0.0.1:5432/{db}"
//!
//! [plugin.{name}]
//! databases = ["{db}"]
//! transaction = true   # the call's statements commit only if the handler succeeds
//! ```

use serde::{Deserialize, Serialize};
use warren_guest::{HandlerError, pg};

/// The request body, as JSON. A body that does not parse is rejected as `bad-request`. `id`
/// names the greeting: sent twice (a client's retry, a redelivery), it is kept once.
#[derive(Debug, Deserialize)]
pub struct Input {
    pub id: String,
    pub name: String,
}

/// The response body, as JSON.
#[derive(Debug, Serialize, PartialEq)]
pub struct Output {
    pub message: String,
    /// How many greetings of this name the table holds, this one included.
    pub count: i64,
}

/// Handles one request. With `transaction = true` its statements run in one transaction,
/// committed when this returns `Ok` and rolled back on an error or a trap: a message that
/// failed leaves no row. `?` on a Postgres error is `retry` when it may pass (the database
/// restarting) and `failed` when it cannot (a missing table: apply schema.sql).
pub fn handle(input: Input) -> Result<Output, HandlerError> {
    let db = pg::Connection::open("{db}")?;
    greet(input, |input| {
        db.execute(
            "INSERT INTO greetings (id, name) VALUES ($1, $2) ON CONFLICT (id) DO NOTHING",
            &[pg::text(&input.id), pg::text(&input.name)],
        )?;
        let rows = db.query("SELECT count(*) AS count FROM greetings WHERE name = $1", &[pg::text(&input.name)])?;
        rows.rows
            .first()
            .and_then(|row| pg::value(&rows, row, "count"))
            .and_then(|count| count.as_i64())
            .ok_or_else(|| HandlerError::Failed("count(*) gave no number".into()))
    })
}

/// The logic, with the table passed in (`store` records the greeting and returns the name's
/// count): the unit test keeps greetings in memory.
pub fn greet(input: Input, store: impl FnOnce(&Input) -> Result<i64, HandlerError>) -> Result<Output, HandlerError> {
    if input.name.is_empty() {
        return Err(HandlerError::BadRequest("name is empty".into()));
    }
    let count = store(&input)?;
    Ok(Output { message: format!("Hello from {name}, {}!", input.name), count })
}

warren_guest::export_json!(handle);

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    /// `greetings` in memory: id → name, kept once per id as `ON CONFLICT (id) DO NOTHING` does.
    fn store(table: &mut BTreeMap<String, String>) -> impl FnOnce(&Input) -> Result<i64, HandlerError> + '_ {
        |input| {
            table.entry(input.id.clone()).or_insert_with(|| input.name.clone());
            Ok(table.values().filter(|name| **name == input.name).count() as i64)
        }
    }

    fn input(id: &str, name: &str) -> Input {
        Input { id: id.into(), name: name.into() }
    }

    #[test]
    fn greets_by_name_and_counts_each_greeting_once() {
        let mut table = BTreeMap::new();
        let first = greet(input("g-1", "Ada"), store(&mut table)).unwrap();
        assert_eq!(first, Output { message: "Hello from {name}, Ada!".into(), count: 1 });
        assert_eq!(greet(input("g-2", "Ada"), store(&mut table)).unwrap().count, 2);
        assert_eq!(greet(input("g-2", "Ada"), store(&mut table)).unwrap().count, 2, "g-2 again is kept once");
    }

    #[test]
    fn an_empty_name_is_a_bad_request_and_stores_nothing() {
        let mut table = BTreeMap::new();
        assert!(matches!(greet(input("g-1", ""), store(&mut table)), Err(HandlerError::BadRequest(_))));
        assert!(table.is_empty());
    }
}
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_must_be_crate_names() {
        for bad in ["", "Hello", "1st", "a b", "a_b", "../x"] {
            let created = new_plugin(Path::new("/nonexistent"), bad, Language::Rust, &[]);
            assert!(matches!(created, Err(ScaffoldError::Name(_))), "{bad}");
        }
    }

    #[test]
    fn postgres_is_scaffolded_in_rust_only_and_says_what_to_configure() {
        let refused = new_plugin(Path::new("/nonexistent"), "shop", Language::Python, &[With::Postgres]);
        let said = refused.expect_err("python with postgres").to_string();
        assert_eq!(said, "warren new --with postgres is written in Rust only for now: leave out --lang python");
        let steps = next_steps(Path::new("plugins/my-shop"), "my-shop", &[With::Postgres]);
        for line in [
            "createdb -h 127.0.0.1 -U postgres my_shop",
            "-d my_shop -f plugins/my-shop/schema.sql",
            "[database.my_shop]",
            "url = \"postgres://postgres@127.0.0.1:5432/my_shop\"",
            "[plugin.my-shop]\n  databases = [\"my_shop\"]\n  transaction = true",
        ] {
            assert!(steps.contains(line), "{line} in\n{steps}");
        }
        assert!(next_steps(Path::new("p/x"), "x", &[]).contains("keyvalue = [\"counters\"]"));
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
