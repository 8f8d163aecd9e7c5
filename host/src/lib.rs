//! Warren: run message handlers as WebAssembly components on RabbitMQ, wire-compatible with
//! services built on goamqp.
//!
//! Warren joins two worlds, and each has a wing of its own (ARCHITECTURE.md maps them):
//!
//! - [`amqp`]: the goamqp wire — names, topology, the broker connection, consumers,
//!   headers, what plugins send, and a goamqp-style client.
//! - [`wasm`]: the sandbox — the engine, a plugin and one call's state with the host imports
//!   a guest sees, the live plugin set and hot reload. It knows nothing of AMQP.
//! - [`tooling`]: `warren build`, `warren new` and `warren dev`'s source watcher.
//!
//! What wires them together stays at the top:
//!
//! - [`config`]: the TOML config, resolved and checked before anything starts: a file per
//!   section (`service`, `broker`, `limits`, `handlers`, `plugins`) in `config/`, parsed into
//!   plain data. It imports neither wing; both read it.
//! - [`server`]: config → plugins → topology → consumers, until shutdown; reconnects and
//!   config reloads. [`shutdown`] stops it.
//! - [`metrics`]: counters and the `/metrics`, `/healthz`, `/readyz` endpoint.
//! - [`wasi_config`]: `wasi:config/store` (both versions) serving each plugin its own
//!   `[plugin.<name>.config]` and `config_files` values; needs nothing from either wing.
//! - [`keyvalue`]: `wasi:keyvalue` (store, atomics, batch) and compare-and-swap on each
//!   plugin's granted buckets, in the embedded `redb` file or Redis; needs nothing from
//!   either wing.
//! - [`telemetry`]: OpenTelemetry spans and their OTLP/HTTP exporter; neutral ground both
//!   wings record through.
//! - [`tls_roots`]: the system's trusted root certificates, read once for every TLS client
//!   (outbound HTTP, the trace collector).
//! - [`watch`]: debounced file watching (plugins folder, config file, plugin sources).
//! - [`cli`]: the `warren` command line.

pub mod amqp;
pub mod cli;
pub mod config;
pub mod database;
pub mod keyvalue;
pub mod metrics;
pub mod server;
pub mod shutdown;
pub mod telemetry;
#[cfg(test)]
mod test_tls;
pub mod tls_roots;
pub mod tooling;
pub mod wasi_config;
pub mod wasm;
pub mod watch;

#[cfg(test)]
mod layout {
    /// ARCHITECTURE.md's rule: the key-value capability needs nothing from either wing.
    #[test]
    fn the_keyvalue_module_never_imports_a_wing() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/keyvalue");
        let files: Vec<_> = std::fs::read_dir(&dir).expect("src/keyvalue").flatten().collect();
        assert!(files.len() >= 3, "expected the key-value files in {}", dir.display());
        for file in files {
            let text = std::fs::read_to_string(file.path()).expect("a source file");
            for forbidden in ["crate::amqp", "crate::wasm", "super::amqp", "super::wasm", "lapin"] {
                assert!(!text.contains(forbidden), "{} imports {forbidden}", file.path().display());
            }
        }
    }

    /// ARCHITECTURE.md's rule: `wasi:config` needs nothing from either wing (the store data
    /// reaches it through `WasiConfigView`).
    #[test]
    fn the_wasi_config_module_never_imports_a_wing() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/wasi_config.rs");
        let text = std::fs::read_to_string(&path).expect("src/wasi_config.rs");
        for forbidden in ["crate::amqp", "crate::wasm", "super::amqp", "super::wasm", "lapin"] {
            assert!(!text.contains(forbidden), "{} imports {forbidden}", path.display());
        }
    }

    /// Asserts that no file in `src/<folder>` mentions any of `forbidden`.
    fn never_mentions(folder: &str, forbidden: &[&str]) {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src").join(folder);
        let mut checked = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let text = std::fs::read_to_string(&path).unwrap();
            for forbidden in forbidden {
                assert!(!text.contains(forbidden), "{} mentions {forbidden}", path.display());
            }
            checked += 1;
        }
        assert!(checked >= 5, "expected the files of {}", dir.display());
    }

    /// ARCHITECTURE.md's rule: the Wasm wing knows nothing of AMQP.
    #[test]
    fn the_wasm_wing_never_imports_the_amqp_wing() {
        never_mentions("wasm", &["crate::amqp", "lapin::", "use lapin"]);
    }

    /// ARCHITECTURE.md's rule: the config is plain data, and depends on neither wing.
    #[test]
    fn the_config_never_imports_a_wing() {
        never_mentions("config", &["crate::amqp", "crate::wasm", "super::amqp", "super::wasm"]);
    }
}
