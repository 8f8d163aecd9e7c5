//! Warren: run message handlers as WebAssembly components on RabbitMQ, wire-compatible with
//! services built on goamqp.
//!
//! Data flows one way, one module per step:
//!
//! - [`config`]: the TOML config, resolved and checked before anything starts.
//! - [`naming`]: goamqp's exchange and queue names (the wire contract, SPEC §1).
//! - [`topology`]: what a config declares — exchanges, queues, bindings, routes.
//! - [`broker`]: the RabbitMQ connection: declare, confirmed publish.
//! - [`consumer`]: one queue's deliveries → handler → outcome (ack, reject, respond).
//! - [`routing`]: which handler a routing key goes to (exact or topic patterns).
//! - [`runtime`]: wasmtime: compile, check and call plugin components, sandboxed.
//! - [`outbox`]: what plugins send (events, requests, queue messages), confirmed.
//! - [`plugins`]: the live plugin of each name, swappable; [`reload`] swaps them when
//!   their files change.
//! - [`headers`]: AMQP headers ↔ the plugin's typed headers.
//! - [`server`]: wires the above into a running host; [`shutdown`] stops it;
//!   [`metrics`]: counters and the `/metrics`, `/healthz`, `/readyz` endpoint.
//! - [`client`]: a goamqp-style client (`warren request`); [`builder`]: `warren build`;
//!   [`scaffold`]: `warren new`.
//! - [`cli`]: the `warren` command line.

pub mod broker;
pub mod builder;
pub mod cli;
pub mod client;
pub mod config;
pub mod consumer;
pub mod headers;
pub mod metrics;
pub mod naming;
pub mod outbox;
pub mod plugins;
pub mod reload;
pub mod routing;
pub mod runtime;
pub mod scaffold;
pub mod server;
pub mod shutdown;
pub mod topology;
