//! The AMQP wing: everything Warren says on the goamqp wire, and nothing about running wasm
//! beyond handing a delivery to a plugin and reading its answer.
//!
//! - [`naming`]: goamqp's exchange and queue names (SPEC §1), each rule with its example.
//! - [`topology`]: what a config declares — exchanges, queues, bindings, who consumes what.
//! - [`broker`]: the RabbitMQ connection: connect, declare, confirmed publish.
//! - [`transport`]: the connection's byte stream — TCP keepalive, TLS, and every frame read
//!   repaired by [`frame_repair`] so that no publisher's bytes can stop lapin's parser.
//! - [`consumer`]: one queue's deliveries → handler → outcome (ack, reject, respond, retry).
//! - [`dead_letters`]: the check that each dead-letter exchange has a queue bound.
//! - [`copies`]: the retry, dead-letter and host-failure copies of a delivery, cleaned of
//!   what would route them elsewhere (`CC`, `BCC`) or be refused (`user_id`).
//! - [`acks`]: a consumer channel's acks, several in one `multiple` frame when they are ready
//!   together.
//! - [`routing`]: which handler a routing key goes to (exact or topic patterns).
//! - [`headers`]: AMQP headers ↔ the plugin's typed headers, and the header names Warren uses.
//! - [`outbox`]: what plugins send (events, requests, queue messages), published the goamqp
//!   way and confirmed.
//! - [`tls`]: rustls for `amqps://` brokers: CA, client certificate, checks at config time.
//! - [`client`]: a goamqp-style client (`warren request`).
//! - [`bench`]: `warren bench`, a goamqp-faithful load client comparing two services.
//!
//! This wing may use the plugin contract's types and call a [`crate::wasm::Plugin`]; the Wasm
//! wing never imports this one.

pub mod acks;
pub mod bench;
pub mod broker;
pub mod client;
pub mod consumer;
pub mod copies;
pub mod dead_letters;
pub mod frame_repair;
pub mod headers;
pub mod naming;
pub mod outbox;
pub mod routing;
pub mod tls;
pub mod topology;
pub mod transport;
