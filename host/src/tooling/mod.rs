//! The build tooling behind `warren build`, `warren new` and `warren dev`: it turns plugin
//! sources (Rust, Python, JavaScript, Go) into components and never touches a broker.
//!
//! - [`builder`]: `warren build` — tells a plugin's language by its manifest and builds it.
//! - [`golang`]: how a Go plugin becomes a component (bindings, `go build`, the adapter).
//! - [`scaffold`]: `warren new` — a plugin that builds and answers at once, with its test.
//! - [`dev`]: `warren dev`'s source watcher, rebuilding a plugin when its sources change.
//! - [`devbroker`]: a private RabbitMQ node for `warren dev` when no broker answers.

pub mod builder;
pub mod dev;
pub mod devbroker;
pub mod golang;
pub mod scaffold;
