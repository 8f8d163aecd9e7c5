//! The Wasm wing: everything about running plugins in the sandbox, and nothing about AMQP.
//!
//! - [`engine`]: the wasmtime engine, instance pool and epoch ticker; turns a `.wasm` file
//!   into a checked [`Plugin`].
//! - [`cache`]: the compiled-code cache in the host's private state folder, each entry
//!   authenticated with a host-local key.
//! - [`plugin`]: a loaded plugin and one message's call on a fresh instance; the faults that
//!   end a call ([`PluginFault`]).
//! - [`call`]: one call's store state and the host imports a guest sees (grant checks, then
//!   the [`Outbox`] the host wired in).
//! - [`http`]: outbound HTTP (`wasi:http/outgoing-handler`) behind each plugin's allowlist.
//! - [`output`]: a guest's stdout/stderr, streamed to the host log within a budget.
//! - [`plugins`]: the live plugin set, one swappable slot per name.
//! - [`reload`]: hot reload — watches the plugins folder and swaps a changed plugin.
//!
//! The plugin contract's types (WIT `warren:plugin`) are re-exported here: they are what the
//! AMQP wing converts deliveries to and from. This wing never imports the AMQP wing.

pub mod cache;
pub mod call;
pub mod engine;
pub mod http;
pub mod output;
pub mod plugin;
pub mod plugins;
pub mod reload;

/// Host-side bindings of the WIT world in `wit/`.
pub mod bindings {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "handler",
        imports: { default: async | trappable },
        exports: { default: async },
        additional_derives: [PartialEq],
        // Standard interfaces the world imports are served by modules of their own.
        with: {
            "wasi:config/store@0.2.0-draft": crate::wasi_config::draft::store,
            "wasi:keyvalue": crate::keyvalue::bindings::wasi::keyvalue,
            "warren:plugin/keyvalue-cas": crate::keyvalue::bindings::warren::plugin::keyvalue_cas,
            "spin:postgres/postgres": crate::database::bindings::spin::postgres::postgres,
        },
    });
}

pub use bindings::warren::plugin::host::{LogLevel, SendError};
pub use bindings::warren::plugin::types::{HandlerError, Header, HeaderValue, Request, Response};
pub use call::{CallContext, Destination, Outbox};
pub use engine::{PluginError, Runtime, RuntimeError, content_hash, read_plugin};
pub use plugin::{CodeSource, NativeHandler, Plugin, PluginFault};
pub use plugins::{LoadErrors, PluginSlot, PluginStatus, Plugins};

/// The WIT world every plugin must export, as plugin authors see it.
pub const WORLD: &str = "warren:plugin/handler@0.1.0";
