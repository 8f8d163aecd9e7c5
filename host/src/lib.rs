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
//! - [`config`]: the TOML config, resolved and checked before anything starts.
//! - [`server`]: config → plugins → topology → consumers, until shutdown; reconnects and
//!   config reloads. [`shutdown`] stops it.
//! - [`metrics`]: counters and the `/metrics`, `/healthz`, `/readyz` endpoint.
//! - [`watch`]: debounced file watching (plugins folder, config file, plugin sources).
//! - [`cli`]: the `warren` command line.

pub mod amqp;
pub mod cli;
pub mod config;
pub mod metrics;
pub mod server;
pub mod shutdown;
pub mod tooling;
pub mod wasm;
pub mod watch;

#[cfg(test)]
mod layout {
    /// ARCHITECTURE.md's rule: the Wasm wing knows nothing of AMQP.
    #[test]
    fn the_wasm_wing_never_imports_the_amqp_wing() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/wasm");
        let mut checked = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let text = std::fs::read_to_string(&path).unwrap();
            for forbidden in ["crate::amqp", "lapin::", "use lapin"] {
                assert!(!text.contains(forbidden), "{} mentions {forbidden}", path.display());
            }
            checked += 1;
        }
        assert!(checked >= 5, "expected the wasm wing's files in {}", dir.display());
    }
}
