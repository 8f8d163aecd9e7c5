//! One call's state: the store data a guest's instance lives in — its WASI context, memory
//! limit and deadline — and the host imports the guest sees (`warren:plugin/host`): grant
//! checks, then hand-off to the [`Outbox`] the host wired in — and its `wasi:http` state
//! (outbound HTTP behind the plugin's allowlist, see [`super::http`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use wasmtime::StoreLimits;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::bindings;
use super::http::CallHttp;
use super::output::GuestOutput;
use super::{Header, LogLevel, SendError};
use crate::config::Grants;
use crate::database::{CallDatabase, DatabaseCtx, DatabaseView};
use crate::keyvalue::{CallKeyValue, KeyValueCtx, KeyValueView};
use crate::wasi_config::{CallConfig, WasiConfigView};

/// How often the epoch advances: the granularity of deadlines and of guest yields
/// (1 ms: a deadline is met within about a millisecond; see the README's isolation figures).
pub const EPOCH_TICK: Duration = Duration::from_millis(1);

/// Where a plugin's outgoing message goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    /// An event on stream `X` (exchange `X.topic.exchange`).
    Event(String),
    /// A request to service `T` (exchange `T.direct.exchange.request`).
    Request(String),
    /// Straight to a queue, as goamqp's queue publisher does.
    Queue(String),
    /// A late answer to service `T` (goamqp's `PublishServiceResponse`): this service's own
    /// response exchange, header `service` = `T`.
    Response(String),
}

/// The host's way out for plugins: publishes with broker confirms. Implemented next to the
/// publisher, in the AMQP wing; this wing only checks grants and forwards.
pub trait Outbox: Send + Sync {
    /// Publishes one message and resolves once the broker confirmed it.
    fn send<'a>(
        &'a self,
        to: Destination,
        routing_key: &'a str,
        body: &'a [u8],
        headers: &'a [Header],
        traceparent: Option<&'a str>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), SendError>> + Send + 'a>>;
}

/// What one call may send out, beside its answer.
#[derive(Clone, Default)]
pub struct CallContext {
    /// Where outgoing messages go; without one, every send fails.
    pub outbox: Option<Arc<dyn Outbox>>,
    /// The W3C trace context of the message being handled, carried into what it sends.
    pub traceparent: Option<String>,
    /// Where the call's outbound spans go (HTTP calls); `None`: telemetry is off.
    pub tracer: Option<Arc<crate::telemetry::Tracer>>,
}

/// The state of one call's store: a WASI context that grants nothing, the call's limits,
/// and what it may send out.
pub struct CallState {
    pub(super) wasi: WasiCtx,
    pub(super) table: ResourceTable,
    pub(super) limits: MemoryLimiter,
    pub(super) deadline: Instant,
    pub(super) plugin: Arc<str>,
    pub(super) grants: Arc<Grants>,
    pub(super) context: CallContext,
    /// Messages this call has asked to send so far, and the caps on them.
    pub(super) sends: SendBudget,
    /// Outbound HTTP: the allowlist, the deadline, the `traceparent` it sends.
    pub(super) http: CallHttp,
    /// The call's output sink: stdout, stderr and the `log` import share its budget.
    pub(super) output: GuestOutput,
    /// The plugin's `wasi:config` values.
    pub(super) config: CallConfig,
    /// `wasi:keyvalue`: the plugin's granted buckets, caps and this call's operations.
    pub(super) keyvalue: CallKeyValue,
    /// `spin:postgres`: the granted databases, this call's connections and its transaction.
    pub(super) database: CallDatabase,
}

/// What one call may send: how many messages, and how large each body.
pub(super) struct SendBudget {
    pub(super) sent: u32,
    pub(super) max_sends: u32,
    pub(super) max_body_bytes: usize,
}

/// The store's memory limit, remembering the largest linear memory the call asked for.
pub(super) struct MemoryLimiter {
    pub(super) limits: StoreLimits,
    pub(super) peak: usize,
}

impl wasmtime::ResourceLimiter for MemoryLimiter {
    fn memory_growing(&mut self, current: usize, desired: usize, maximum: Option<usize>) -> wasmtime::Result<bool> {
        let allowed = self.limits.memory_growing(current, desired, maximum)?;
        if allowed {
            self.peak = self.peak.max(desired);
        }
        Ok(allowed)
    }

    fn table_growing(&mut self, current: usize, desired: usize, maximum: Option<usize>) -> wasmtime::Result<bool> {
        self.limits.table_growing(current, desired, maximum)
    }
}

impl CallState {
    /// Makes the call's key-value operations and SQL statements spans of `context`'s trace.
    pub(super) fn trace_host_calls(&mut self, context: &CallContext) {
        let trace = crate::telemetry::CallTrace::new(context.tracer.clone(), context.traceparent.as_deref());
        self.keyvalue.trace(trace.clone());
        self.database.trace(trace);
    }

    /// Checks the grant and sends through the outbox. The future owns what it needs: the
    /// store's state is not `Sync` and must not be borrowed across the broker's confirm.
    fn send(
        &mut self,
        to: Destination,
        routing_key: String,
        body: Vec<u8>,
        headers: Vec<Header>,
    ) -> impl std::future::Future<Output = Result<(), SendError>> + Send + 'static {
        let (plugin, grants, context) = (self.plugin.clone(), self.grants.clone(), self.context.clone());
        let over_budget = self.sends.refuse(body.len());
        async move {
            if let Some(reason) = over_budget {
                tracing::warn!(plugin = %plugin, "{reason}");
                return Err(SendError::Failed(reason));
            }
            let (granted, what, key) = match &to {
                Destination::Event(stream) => (
                    grants.publish.contains(stream),
                    format!("publish to stream '{stream}'"),
                    format!("publish = [\"{stream}\"]"),
                ),
                Destination::Request(service) => (
                    grants.request.contains(service),
                    format!("send requests to service '{service}'"),
                    format!("request = [\"{service}\"]"),
                ),
                Destination::Queue(queue) => (
                    grants.queues.contains(queue),
                    format!("publish to queue '{queue}'"),
                    format!("queues = [\"{queue}\"]"),
                ),
                Destination::Response(service) => (
                    grants.respond.contains(service),
                    format!("answer service '{service}'"),
                    format!("respond = [\"{service}\"]"),
                ),
            };
            if !granted {
                let refusal = format!("plugin '{plugin}' may not {what}: grant it with {key} in [plugin.{plugin}]");
                tracing::warn!(plugin = %plugin, "{refusal}");
                return Err(SendError::Denied(refusal));
            }
            let Some(outbox) = &context.outbox else {
                return Err(SendError::Failed("this host has no broker connection to send with".to_string()));
            };
            outbox.send(to, &routing_key, &body, &headers, context.traceparent.as_deref()).await
        }
    }
}

impl SendBudget {
    /// Counts one more send of a `body_len`-byte body; says why when it is over a cap.
    fn refuse(&mut self, body_len: usize) -> Option<String> {
        self.sent += 1;
        if self.sent > self.max_sends {
            return Some(format!(
                "more than {} sends in one call (limits.max_sends): this one was not sent",
                self.max_sends
            ));
        }
        (body_len > self.max_body_bytes).then(|| {
            format!(
                "a body of {body_len} bytes is over the {} bytes one send may carry (limits.max_send_kib): not sent",
                self.max_body_bytes
            )
        })
    }
}

impl bindings::warren::plugin::types::Host for CallState {}

impl bindings::warren::plugin::host::Host for CallState {
    async fn publish_event(
        &mut self,
        stream: String,
        routing_key: String,
        body: Vec<u8>,
        headers: Vec<Header>,
    ) -> wasmtime::Result<Result<(), SendError>> {
        Ok(self.send(Destination::Event(stream), routing_key, body, headers).await)
    }

    async fn send_request(
        &mut self,
        service: String,
        routing_key: String,
        body: Vec<u8>,
        headers: Vec<Header>,
    ) -> wasmtime::Result<Result<(), SendError>> {
        Ok(self.send(Destination::Request(service), routing_key, body, headers).await)
    }

    async fn send_to_queue(
        &mut self,
        queue: String,
        routing_key: String,
        body: Vec<u8>,
        headers: Vec<Header>,
    ) -> wasmtime::Result<Result<(), SendError>> {
        Ok(self.send(Destination::Queue(queue), routing_key, body, headers).await)
    }

    async fn publish_response(
        &mut self,
        service: String,
        routing_key: String,
        body: Vec<u8>,
        headers: Vec<Header>,
    ) -> wasmtime::Result<Result<(), SendError>> {
        Ok(self.send(Destination::Response(service), routing_key, body, headers).await)
    }

    async fn log(&mut self, level: LogLevel, message: String) -> wasmtime::Result<()> {
        if self.grants.log {
            self.output.host_log(level, &message);
        }
        Ok(())
    }
}

impl WasiView for CallState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

impl KeyValueView for CallState {
    fn keyvalue(&mut self) -> KeyValueCtx<'_> {
        KeyValueCtx { call: &mut self.keyvalue, table: &mut self.table }
    }
}

impl DatabaseView for CallState {
    fn database(&mut self) -> DatabaseCtx<'_> {
        DatabaseCtx { call: &mut self.database, table: &mut self.table }
    }
}

impl WasiConfigView for CallState {
    fn wasi_config(&mut self) -> &mut CallConfig {
        &mut self.config
    }
}

impl wasmtime_wasi_http::WasiHttpView for CallState {
    fn http(&mut self) -> wasmtime_wasi_http::WasiHttpCtxView<'_> {
        self.http.view(&mut self.table)
    }
}

/// Adds `wasi:http` (`types` and `outgoing-handler`) to the linker; every request goes through
/// the call's allowlist in [`super::http`]. Components that do not import it are not affected.
pub(super) fn add_http_to_linker(linker: &mut wasmtime::component::Linker<CallState>) -> wasmtime::Result<()> {
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(linker)
}
