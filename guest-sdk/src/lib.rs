//! Write Warren message handlers in plain Rust.
//!
//! A Warren plugin is a WebAssembly component built for `wasm32-wasip2` that exports the
//! `warren:plugin/handler` world (see `wit/handler.wit`). This crate hides the generated
//! bindings: you write one function and export it with one macro.
//!
//! # A JSON handler
//!
//! The body is parsed into your input type; a body that does not parse becomes
//! [`HandlerError::BadRequest`] (the host rejects it, it is never retried). Your output is
//! serialised as the response body.
//!
//! ```
//! use serde::{Deserialize, Serialize};
//! use warren_guest::HandlerError;
//!
//! #[derive(Deserialize)]
//! struct Greet { name: String }
//!
//! #[derive(Serialize)]
//! struct Greeting { greeting: String }
//!
//! fn greet(input: Greet) -> Result<Greeting, HandlerError> {
//!     Ok(Greeting { greeting: format!("Hello, {}!", input.name) })
//! }
//!
//! warren_guest::export_json!(greet);
//! # fn main() {}
//! ```
//!
//! # A bytes handler
//!
//! For full control, take the whole [`Message`] (routing key, body, content type, typed
//! headers) and return a [`Response`]:
//!
//! ```
//! use warren_guest::{HandlerError, Message, Response};
//!
//! fn echo(message: Message) -> Result<Response, HandlerError> {
//!     Ok(Response::new(message.body))
//! }
//!
//! warren_guest::export!(echo);
//! # fn main() {}
//! ```
//!
//! Build with `cargo build --release --target wasm32-wasip2` (or `warren build`) and drop
//! the `.wasm` into the host's plugins folder. Handlers are plain functions, so they can be
//! unit-tested natively with `cargo test`.
//!
//! # Calling HTTP services
//!
//! [`http`] sends requests over `wasi:http` to the origins the host's config grants the
//! plugin (`[plugin.<name>] http = ["https://api.example.com"]`), JSON in and out:
//! `let price: Price = warren_guest::http::get_json(&url)?;`.
//!
//! # Config values
//!
//! [`config`] reads what the host's config gives this plugin (`[plugin.<name>.config]`, and
//! `config_files` for secrets) through the standard `wasi:config/store`:
//! `let key = warren_guest::config::require("api_key")?;`.
//!
//! # Postgres
//!
//! [`pg`] runs SQL through Spin's `spin:postgres@4.0.0` on the databases the host's config
//! grants the plugin, by name (`[plugin.<name>] databases = ["orders"]`):
//! `pg::Connection::open("orders")?.execute("INSERT …", &[pg::text(id)])?`. With
//! `transaction = true` the call's statements commit only when the handler succeeds.

// Lets the generated bindings name this crate the way plugin crates do.
extern crate self as warren_guest;

#[doc(hidden)]
// The generated glue of spin:postgres takes a datetime as its seven flattened fields.
#[allow(clippy::too_many_arguments)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../wit",
        world: "handler",
        pub_export_macro: true,
        export_macro_name: "__export_handler_world",
        default_bindings_module: "warren_guest::bindings",
        runtime_path: "warren_guest::__private::wit_bindgen::rt",
        additional_derives: [PartialEq],
        // The standard interfaces the world imports (wasi:keyvalue, wasi:config) are
        // generated here too; a plugin imports only those it calls.
        generate_all,
    });
}

pub use bindings::warren::plugin::host::{LogLevel, SendError};
pub use bindings::warren::plugin::types::{HandlerError, Header, HeaderValue, Response};

/// The delivery handed to a bytes handler.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    /// The delivery's routing key.
    pub routing_key: String,
    /// The body, byte for byte as published.
    pub body: Vec<u8>,
    /// The AMQP content type, when the publisher set one.
    pub content_type: Option<String>,
    /// Every AMQP header with its type, plus `routing-key` as goamqp adds it.
    pub headers: Vec<Header>,
}

impl Message {
    /// The value of the header `name`, if present.
    pub fn header(&self, name: &str) -> Option<&HeaderValue> {
        self.headers.iter().find(|h| h.name == name).map(|h| &h.value)
    }

    /// The value of the header `name` when it is a string.
    pub fn text_header(&self, name: &str) -> Option<&str> {
        match self.header(name) {
            Some(HeaderValue::Text(text)) => Some(text),
            _ => None,
        }
    }
}

impl Response {
    /// A response with this body and no extra headers.
    pub fn new(body: impl Into<Vec<u8>>) -> Self {
        Response { body: body.into(), headers: Vec::new() }
    }

    /// Adds a header to the response (the host sets `service` itself and ignores it here).
    pub fn with_header(mut self, name: impl Into<String>, value: HeaderValue) -> Self {
        self.headers.push(Header { name: name.into(), value });
        self
    }

    /// A response whose body is `value` serialised as JSON.
    pub fn json<T: serde::Serialize>(value: &T) -> Result<Self, HandlerError> {
        serde_json::to_vec(value)
            .map(Response::new)
            .map_err(|e| HandlerError::Failed(format!("cannot serialise the response: {e}")))
    }
}

/// Runs a JSON handler on a message: parse, call, serialise.
///
/// A body that does not parse as `In` becomes [`HandlerError::BadRequest`]. This is what
/// [`export_json!`] calls; it is public so handlers can be tested natively.
pub fn call_json<In, Out>(
    handler: impl FnOnce(In) -> Result<Out, HandlerError>,
    message: Message,
) -> Result<Response, HandlerError>
where
    In: serde::de::DeserializeOwned,
    Out: serde::Serialize,
{
    let input: In = serde_json::from_slice(&message.body).map_err(|e| {
        HandlerError::BadRequest(format!(
            "the body of '{}' is not the JSON this handler expects: {e}",
            message.routing_key
        ))
    })?;
    Response::json(&handler(input)?)
}

pub mod config;
pub mod http;
pub mod kv;
pub mod pg;

/// Publishing, requests and logging through the host. Each destination must be granted to
/// the plugin in the host's config (`[plugin.<name>]`: `publish`, `request`, `queues`,
/// `respond`);
/// everything sent is confirmed by the broker before the call returns, so it is safe before
/// the message being handled is acked. (Natively, outside a host, these calls panic.)
pub mod host {
    use super::bindings::warren::plugin::host as imports;
    use super::{HandlerError, Header, LogLevel, SendError};

    impl From<SendError> for HandlerError {
        /// Not granted: the message can never succeed (`failed`). Not delivered: try again
        /// later (`retry`).
        fn from(error: SendError) -> Self {
            match error {
                SendError::Denied(why) => HandlerError::Failed(why),
                SendError::Failed(why) => HandlerError::Retry(why),
            }
        }
    }

    fn json<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, HandlerError> {
        serde_json::to_vec(value).map_err(|e| HandlerError::Failed(format!("cannot serialise the message: {e}")))
    }

    /// Publishes an event to `stream` (exchange `<stream>.topic.exchange`).
    pub fn publish_event(stream: &str, routing_key: &str, body: &[u8], headers: &[Header]) -> Result<(), SendError> {
        imports::publish_event(stream, routing_key, body, headers)
    }

    /// Publishes `event` as JSON to `stream`; `?` turns a failure into the right outcome.
    pub fn publish_json<T: serde::Serialize>(stream: &str, routing_key: &str, event: &T) -> Result<(), HandlerError> {
        Ok(publish_event(stream, routing_key, &json(event)?, &[])?)
    }

    /// Sends a request to `service`; its response comes to this service's `[[response]]`
    /// handler for that service and routing key.
    pub fn send_request(service: &str, routing_key: &str, body: &[u8], headers: &[Header]) -> Result<(), SendError> {
        imports::send_request(service, routing_key, body, headers)
    }

    /// Sends `request` as JSON to `service`.
    pub fn send_request_json<T: serde::Serialize>(
        service: &str,
        routing_key: &str,
        request: &T,
    ) -> Result<(), HandlerError> {
        Ok(send_request(service, routing_key, &json(request)?, &[])?)
    }

    /// Publishes to `queue` as goamqp's queue publisher does.
    pub fn send_to_queue(queue: &str, routing_key: &str, body: &[u8], headers: &[Header]) -> Result<(), SendError> {
        imports::send_to_queue(queue, routing_key, body, headers)
    }

    /// Answers `service` later, as goamqp's `PublishServiceResponse` does: this service's own
    /// `<S>.headers.exchange.response`, routing key `routing_key`, header `service` =
    /// `service`, where that service's response queue is bound (grant `respond`).
    pub fn publish_response(
        service: &str,
        routing_key: &str,
        body: &[u8],
        headers: &[Header],
    ) -> Result<(), SendError> {
        imports::publish_response(service, routing_key, body, headers)
    }

    /// Answers `service` later with `response` as JSON.
    pub fn publish_response_json<T: serde::Serialize>(
        service: &str,
        routing_key: &str,
        response: &T,
    ) -> Result<(), HandlerError> {
        Ok(publish_response(service, routing_key, &json(response)?, &[])?)
    }

    /// Writes `message` to the host's log, tagged with this plugin's name.
    pub fn log(level: LogLevel, message: &str) {
        imports::log(level, message)
    }

    /// [`log`] at info level.
    pub fn info(message: &str) {
        log(LogLevel::Info, message)
    }

    /// [`log`] at warn level.
    pub fn warn(message: &str) {
        log(LogLevel::Warn, message)
    }
}

#[doc(hidden)]
pub mod __private {
    pub use wit_bindgen;

    use crate::bindings::warren::plugin::types::Request;
    use crate::{Header, Message};

    /// Joins the two halves of the WIT call into one [`Message`].
    pub fn message(request: Request, headers: Vec<Header>) -> Message {
        Message { routing_key: request.routing_key, body: request.body, content_type: request.content_type, headers }
    }
}

/// Exports `handler: fn(Message) -> Result<Response, HandlerError>` as this plugin's handler.
///
/// Use it once per plugin crate, at the crate root.
#[macro_export]
macro_rules! export {
    ($handler:path) => {
        #[doc(hidden)]
        pub struct __WarrenHandler;

        impl $crate::bindings::Guest for __WarrenHandler {
            fn handle(
                request: $crate::bindings::warren::plugin::types::Request,
                headers: ::std::vec::Vec<$crate::Header>,
            ) -> ::std::result::Result<$crate::Response, $crate::HandlerError> {
                $handler($crate::__private::message(request, headers))
            }
        }

        $crate::bindings::__export_handler_world!(__WarrenHandler with_types_in $crate::bindings);
    };
}

/// Exports `handler: fn(In) -> Result<Out, HandlerError>` as a JSON handler: `In` is parsed
/// from the body (a parse failure is `bad-request`), `Out` is serialised as the response.
///
/// Use it once per plugin crate, at the crate root.
#[macro_export]
macro_rules! export_json {
    ($handler:path) => {
        fn __warren_json_handler(
            message: $crate::Message,
        ) -> ::std::result::Result<$crate::Response, $crate::HandlerError> {
            $crate::call_json($handler, message)
        }
        $crate::export!(__warren_json_handler);
    };
}
