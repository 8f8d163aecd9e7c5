//! Consumes one queue: each delivery is routed to its plugin by routing key, handled in its
//! own task, and settled by the outcome table of SPEC §1. Nothing is acked before its outcome
//! is safe: a request is acked only after its response is confirmed by the broker.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use futures_lite::{FutureExt, StreamExt};
use lapin::message::Delivery;
use lapin::options::{BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions, BasicRejectOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel};
use tokio::task::JoinSet;
use tracing::{debug, error, info, warn};

use super::acks::Acks;
use super::broker::{self, BrokerError, Delivered, Publisher};
use super::copies;
use super::headers::{
    self, Escaped, HOST_FAILURES_HEADER, ORIGINAL_KEY_HEADER, QUEUE_HEADER, QUORUM_DELIVERY_COUNT, REASON_HEADER,
    RETRIES_HEADER, SERVICE_HEADER, TRACEPARENT_HEADER, new_traceparent, valid_traceparent,
};
use super::naming;
use super::routing::RouteTable;
use super::topology::ConsumerKind;
use super::transport::RepairedDeliveries;
use crate::config::Limits;
use crate::metrics::Metrics;
use crate::shutdown::Shutdown;
use crate::telemetry::{self, Span, SpanContext, SpanKind, Tracer};
use crate::wasm::plugins::PluginSlot;
use crate::wasm::{CallContext, HandlerError, Outbox, PluginFault, Request, Response};

/// Everything a queue's consumer needs to handle its deliveries.
pub struct QueueConsumer {
    /// The queue consumed.
    pub queue: String,
    pub kind: ConsumerKind,
    /// Who handles what; swapped whole when the config is reloaded.
    pub routing: ArcSwap<Routing>,
    /// `S`: the sender of every response.
    pub service: String,
    pub publisher: Publisher,
    /// Publishes copies that must land in a queue (dead letters, retry copies) on a channel of
    /// their own, one at a time, so a return is never taken for another publish's.
    pub must_land: Publisher,
    /// Where the plugins' own events and requests go.
    pub outbox: Arc<dyn Outbox>,
    pub prefetch: u16,
    /// Where this host's spans go; `None`: telemetry is off.
    pub tracer: Option<Arc<Tracer>>,
    /// A quorum queue counts deliveries itself (`x-delivery-count`): a retry is a requeue.
    pub quorum: bool,
    pub metrics: Arc<Metrics>,
}

/// The part of a consumer a config reload may change. A delivery reads it once.
pub struct Routing {
    /// Routing key pattern → handler.
    pub routes: RouteTable<Handler>,
    /// Where messages no handler takes are dead-lettered.
    pub dead_letter_exchange: Option<String>,
}

/// What serves one routing key pattern.
pub struct Handler {
    pub plugin: PluginSlot,
    /// Where this handler's rejected messages are dead-lettered.
    pub dead_letter_exchange: Option<String>,
    /// Delays before each redelivery of a `retry` (through the queue's retry queues);
    /// empty: requeued at once, `max_retries` times.
    pub retry_delays: Vec<Duration>,
    /// Whether a success publishes the handler's result to the requester (`[[request]]`,
    /// unless `respond = false`: goamqp's `ServiceRequestConsumer` acks and publishes nothing).
    pub answers: bool,
}

/// How a delivery was settled (logged, and counted by tests and metrics).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Handled; for a request, the response was confirmed first.
    Acked,
    /// Rejected without requeue (dead-lettered when the queue has a DLX).
    Rejected(String),
    /// Requeued for another try.
    Requeued(String),
    /// The plugin trapped, ran out of time or memory: rejected, its instance discarded.
    Faulted(String),
    /// The handler asked for a retry: a copy with a higher retry count was confirmed on the
    /// queue (or its retry queue), and this delivery is acked.
    Retried(u32),
    /// The host could not finish the message (a publish failed, the instance pool stayed
    /// full, a dead-letter did not land, the host panicked): not the message's fault. It goes
    /// back to the queue after a backoff, at most [`HOST_RETRIES`] times, then is rejected.
    Deferred(String),
}

/// How often a message whose handling failed on the host's side is requeued (with a
/// growing backoff) before it is rejected to the broker's own policy.
pub const HOST_RETRIES: u32 = 6;
/// The first backoff before a host-side failure's requeue; doubled each time, up to
/// [`HOST_BACKOFF_MAX`].
pub const HOST_BACKOFF_MIN: Duration = Duration::from_millis(500);
pub const HOST_BACKOFF_MAX: Duration = Duration::from_secs(10);

/// What became of a dead-letter publish.
enum DeadLetter {
    /// No dead-letter exchange is configured for the message.
    NotConfigured,
    /// The broker confirmed the copy and routed it to a queue.
    Landed(String),
    /// It did not land (refused, or no queue bound to the exchange): keep the original.
    Failed(String),
}

impl QueueConsumer {
    /// Consumes until `shutdown` fires, then stops taking deliveries and lets those in
    /// flight finish within `grace`. `started` is told once the broker accepted the consumer.
    pub async fn run(
        self: Arc<Self>,
        channel: Channel,
        mut shutdown: Shutdown,
        grace: Duration,
        started: tokio::sync::oneshot::Sender<()>,
    ) -> Result<(), BrokerError> {
        let channel_error = |doing: &str| {
            let doing = format!("{doing} on queue '{}'", self.queue);
            move |source| BrokerError::Channel { doing, source }
        };
        channel
            .basic_qos(self.prefetch, BasicQosOptions::default())
            .await
            .map_err(channel_error("setting prefetch"))?;
        let tag = format!("warren-{}", uuid::Uuid::new_v4());
        let mut deliveries = channel
            .basic_consume(
                self.queue.as_str().into(),
                tag.as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(channel_error("starting to consume"))?;
        info!(queue = %self.queue, prefetch = self.prefetch, "consuming");
        let _ = started.send(());

        let acks = Acks::start(channel.clone());
        let mut in_flight = JoinSet::new();
        loop {
            tokio::select! {
                _ = shutdown.wait() => break,
                Some(_) = in_flight.join_next(), if !in_flight.is_empty() => {}
                next = deliveries.next() => match next {
                    Some(Ok(delivery)) => {
                        acks.taken(delivery.delivery_tag);
                        let repaired = RepairedDeliveries::global().take(&tag, delivery.delivery_tag);
                        let (consumer, acks) = (self.clone(), acks.clone());
                        in_flight.spawn(async move { consumer.handle(delivery, repaired, &acks).await });
                    }
                    Some(Err(error)) => {
                        warn!(queue = %self.queue, %error, "consumer stopped by a broker error");
                        return Err(channel_error("consuming")(error));
                    }
                    None => {
                        warn!(queue = %self.queue, "the broker cancelled the consumer");
                        return Err(BrokerError::Cancelled { queue: self.queue.clone() });
                    }
                },
            }
        }

        broker::bounded_close(channel.basic_cancel(tag.as_str().into(), BasicCancelOptions::default())).await;
        let pending = in_flight.len();
        if pending > 0 {
            info!(queue = %self.queue, pending, "waiting for in-flight messages");
        }
        if tokio::time::timeout(grace, async { while in_flight.join_next().await.is_some() {} }).await.is_err() {
            warn!(queue = %self.queue, left = in_flight.len(), "grace period over; unfinished messages are redelivered by RabbitMQ");
            in_flight.abort_all();
        }
        broker::bounded_close(channel.close(200, "shutting down".into())).await;
        Ok(())
    }

    /// Handles one delivery end to end and settles it. A panic while deciding is caught and
    /// settled as a host-side failure: no delivery is left unsettled. `repaired` names the
    /// fields [`super::frame_repair`] changed on the way in (text that was not UTF-8).
    pub async fn handle(&self, delivery: Delivery, repaired: Option<Vec<&'static str>>, acks: &Acks) -> Outcome {
        let props = &delivery.properties;
        let table = props.headers().as_ref();
        let routing_key = match (delivery.exchange.as_str(), headers::text(table, ORIGINAL_KEY_HEADER)) {
            ("", Some(original)) => original,
            _ => delivery.routing_key.to_string(),
        };
        let (plugin, generation) = match self.routing.load().routes.find(&routing_key) {
            Some(handler) => {
                let live = handler.plugin.load();
                (live.name().to_string(), live.generation())
            }
            None => ("-".to_string(), 0),
        };
        if let Some(fields) = &repaired {
            let message_id = message_id(&delivery);
            warn!(queue = %self.queue, routing_key = %Escaped(&routing_key), message_id = %Escaped(&message_id), fields = %fields.join(", "),
                "the message had text that is not UTF-8 (each such byte now reads '?') or a header table that could not be read (emptied); it is handled as repaired");
            self.metrics.message_repaired(&self.queue);
        }
        let started = std::time::Instant::now();
        let in_flight = self.metrics.started(&plugin);
        let mut process = self.process_span(&delivery, &routing_key);
        let trace = process.as_ref().map(Span::context);
        let decided = self.decide(&delivery, &routing_key, trace);
        let outcome = match std::panic::AssertUnwindSafe(decided).catch_unwind().await {
            Ok(outcome) => outcome,
            Err(panic) => Outcome::Deferred(format!("the host panicked while handling it: {}", panic_text(&*panic))),
        };
        let seen = Seen { plugin: &plugin, generation, routing_key: &routing_key };
        let (label, result) = self.settle(&delivery, acks, &seen, &outcome).await;
        in_flight.finish(label, started.elapsed());
        if let Some(span) = &mut process {
            span.set("warren.plugin", plugin.as_str());
            span.set("warren.plugin.generation", i64::try_from(generation).unwrap_or(i64::MAX));
            span.set("warren.outcome", label);
            if let Outcome::Rejected(why) | Outcome::Faulted(why) | Outcome::Deferred(why) = &outcome {
                span.fail(why.as_str());
            }
        }
        if let Err(error) = result {
            // The channel is gone: RabbitMQ redelivers the message, nothing is lost.
            warn!(queue = %self.queue, routing_key = %routing_key, %error, "could not settle the message; the broker will redeliver it");
        }
        outcome
    }

    /// Acks, rejects or requeues `delivery` by `outcome`, logging it; returns the metrics
    /// label and the broker's answer.
    async fn settle(
        &self,
        delivery: &Delivery,
        acks: &Acks,
        seen: &Seen<'_>,
        outcome: &Outcome,
    ) -> (&'static str, lapin::Result<()>) {
        let (label, result) = self.settle_by_outcome(delivery, acks, seen, outcome).await;
        match result {
            Settled::Acked(result) => (label, result),
            Settled::Otherwise(result) => {
                acks.settled_otherwise(delivery.delivery_tag);
                (label, result.map(|_| ()))
            }
        }
    }

    async fn settle_by_outcome(
        &self,
        delivery: &Delivery,
        acks: &Acks,
        seen: &Seen<'_>,
        outcome: &Outcome,
    ) -> (&'static str, Settled) {
        let Seen { plugin, generation, routing_key } = *seen;
        let message_id = message_id(delivery);
        // The routing key, message id and reason carry a publisher's text: escaped, so a
        // newline cannot forge a log line.
        let (routing_key_text, message_id) = (Escaped(routing_key), Escaped(&message_id));
        let log = |level: tracing::Level, reason: &str, what: &str| match level {
            tracing::Level::ERROR => {
                error!(service = %self.service, plugin, generation, queue = %self.queue, routing_key = %routing_key_text, message_id = %message_id, reason = %Escaped(reason), "{what}")
            }
            tracing::Level::WARN => {
                warn!(service = %self.service, plugin, generation, queue = %self.queue, routing_key = %routing_key_text, message_id = %message_id, reason = %Escaped(reason), "{what}")
            }
            _ => {
                info!(service = %self.service, plugin, generation, queue = %self.queue, routing_key = %routing_key_text, message_id = %message_id, reason = %Escaped(reason), "{what}")
            }
        };
        let reason = match outcome {
            Outcome::Acked | Outcome::Retried(_) => {
                let label = if matches!(outcome, Outcome::Acked) { "acked" } else { "retried" };
                return (label, Settled::Acked(acks.ack(delivery.delivery_tag).await));
            }
            Outcome::Requeued(reason) => {
                log(tracing::Level::INFO, reason, "message requeued");
                let nacked = delivery.nack(BasicNackOptions { requeue: true, multiple: false }).await;
                return ("requeued", Settled::Otherwise(nacked));
            }
            Outcome::Rejected(reason) | Outcome::Faulted(reason) => {
                let label = if matches!(outcome, Outcome::Faulted(_)) { "faulted" } else { "rejected" };
                match self.dead_letter(delivery, routing_key, reason).await {
                    DeadLetter::NotConfigured => {
                        log(tracing::Level::WARN, reason, "message rejected");
                        let rejected = delivery.reject(BasicRejectOptions { requeue: false }).await;
                        return (label, Settled::Otherwise(rejected));
                    }
                    DeadLetter::Landed(exchange) => {
                        let what = format!("message rejected and dead-lettered to '{exchange}'");
                        log(tracing::Level::WARN, reason, &what);
                        let label = if label == "rejected" { "dead_lettered" } else { label };
                        return (label, Settled::Acked(acks.ack(delivery.delivery_tag).await));
                    }
                    DeadLetter::Failed(why) => format!("{reason}; and it could not be dead-lettered: {why}"),
                }
            }
            Outcome::Deferred(reason) => reason.clone(),
        };
        // A host-side failure: requeue after a backoff, a bounded number of times. The count
        // travels with the message (goamqp sends no message id to count by).
        let failures = header_count(delivery, HOST_FAILURES_HEADER).saturating_add(1);
        if failures > HOST_RETRIES {
            let what = format!(
                "message rejected after {HOST_RETRIES} host-side failures: RabbitMQ drops it unless queue '{}' has a dead-letter policy of its own",
                self.queue
            );
            log(tracing::Level::ERROR, &reason, &what);
            self.metrics.message_given_up(&self.queue);
            let rejected = delivery.reject(BasicRejectOptions { requeue: false }).await;
            return ("rejected_host_failure", Settled::Otherwise(rejected));
        }
        let backoff = HOST_BACKOFF_MIN.saturating_mul(1 << (failures - 1).min(16)).min(HOST_BACKOFF_MAX);
        let what = format!(
            "host-side failure {failures} of at most {HOST_RETRIES}: message requeued after {} ms",
            backoff.as_millis()
        );
        log(tracing::Level::WARN, &reason, &what);
        tokio::time::sleep(backoff).await;
        // A copy carrying the count goes back to the queue, then the original is acked; if the
        // broker does not take the copy, the original is requeued as it is — unless the copy
        // can never be sent (its headers are over a frame): then it is rejected for good.
        let mut table = copies::headers(&delivery.properties);
        table.insert(ShortString::from(HOST_FAILURES_HEADER), AMQPValue::LongLongInt(i64::from(failures)));
        table.insert(ShortString::from(ORIGINAL_KEY_HEADER), AMQPValue::LongString(LongString::from(routing_key)));
        let properties: BasicProperties = copies::properties(&delivery.properties, table);
        let settled = match self.must_land.publish("", &self.queue, &delivery.data, properties).await {
            Ok(Delivered::Routed) => Settled::Acked(acks.ack(delivery.delivery_tag).await),
            Err(error @ BrokerError::HeadersTooLarge { .. }) => {
                log(
                    tracing::Level::WARN,
                    &format!("{reason}; and its requeued copy cannot be sent: {error}"),
                    "message rejected",
                );
                let rejected = delivery.reject(BasicRejectOptions { requeue: false }).await;
                return ("rejected_host_failure", Settled::Otherwise(rejected));
            }
            _ => Settled::Otherwise(delivery.nack(BasicNackOptions { requeue: true, multiple: false }).await),
        };
        ("requeued_host_failure", settled)
    }

    /// Publishes a rejected message to its dead-letter exchange with the reason in headers,
    /// as mandatory: only a copy the broker confirmed and routed to a queue counts.
    async fn dead_letter(&self, delivery: &Delivery, routing_key: &str, reason: &str) -> DeadLetter {
        let routing = self.routing.load();
        let exchange = match routing.routes.find(routing_key) {
            Some(handler) => handler.dead_letter_exchange.clone(),
            None => routing.dead_letter_exchange.clone(),
        };
        let Some(exchange) = exchange else { return DeadLetter::NotConfigured };
        let mut landed = self
            .dead_letter_copy(&exchange, delivery, routing_key, reason, copies::headers(&delivery.properties))
            .await;
        if let Err(BrokerError::HeadersTooLarge { size, .. }) = landed {
            // The publisher's headers do not fit beside the reason: the copy keeps the body
            // and Warren's own headers, and says what was dropped.
            let reason = format!("{reason}; its {size} bytes of headers were dropped from this copy (over a frame)");
            landed = self.dead_letter_copy(&exchange, delivery, routing_key, &reason, FieldTable::default()).await;
        }
        match landed {
            Ok(Delivered::Routed) => DeadLetter::Landed(exchange),
            Ok(Delivered::Unroutable) => DeadLetter::Failed(format!(
                "no queue is bound to dead-letter exchange '{exchange}', so RabbitMQ would drop the copy; bind one"
            )),
            Ok(Delivered::Written) => DeadLetter::Failed(NOT_CONFIRMED_COPY.into()),
            Err(error) => DeadLetter::Failed(error.to_string()),
        }
    }

    /// Publishes one dead-letter copy of `delivery` carrying `table` plus the reason.
    async fn dead_letter_copy(
        &self,
        exchange: &str,
        delivery: &Delivery,
        routing_key: &str,
        reason: &str,
        mut table: FieldTable,
    ) -> Result<Delivered, BrokerError> {
        table.insert(REASON_HEADER.into(), AMQPValue::LongString(LongString::from(reason)));
        table.insert(QUEUE_HEADER.into(), AMQPValue::LongString(LongString::from(self.queue.as_str())));
        let properties = copies::properties(&delivery.properties, table);
        self.must_land.publish(exchange, routing_key, &delivery.data, properties).await
    }

    /// The CONSUMER span of one delivery (OpenTelemetry's messaging conventions), the child
    /// of the `traceparent` it came with; `None` when telemetry is off.
    fn process_span(&self, delivery: &Delivery, routing_key: &str) -> Option<Span> {
        let tracer = self.tracer.as_ref()?;
        let table = delivery.properties.headers().as_ref();
        let parent = headers::text(table, TRACEPARENT_HEADER).and_then(|t| SpanContext::parse(&t));
        let mut span = tracer.span(format!("{} process", self.queue), SpanKind::Consumer, parent);
        span.set("messaging.system", "rabbitmq");
        span.set("messaging.operation.type", "process");
        span.set("messaging.operation.name", "process");
        span.set("messaging.destination.name", delivery.exchange.as_str());
        span.set("messaging.destination.subscription.name", self.queue.as_str());
        span.set("messaging.rabbitmq.destination.routing_key", routing_key);
        span.set("messaging.message.body.size", delivery.data.len());
        if let Some(id) = delivery.properties.message_id() {
            span.set("messaging.message.id", id.as_str());
        }
        Some(span)
    }

    /// The decision for one delivery; `trace` is its process span's context, when recorded.
    async fn decide(&self, delivery: &Delivery, routing_key: &str, trace: Option<SpanContext>) -> Outcome {
        let routing = self.routing.load();
        let Some(Handler { plugin: slot, retry_delays, answers, .. }) = routing.routes.find(routing_key) else {
            return Outcome::Rejected(format!("no handler for routing key '{routing_key}' on this queue"));
        };
        let props = &delivery.properties;
        let table = props.headers().as_ref();
        let requester = headers::text(table, SERVICE_HEADER);
        // A handler that answers nothing needs no requester (goamqp's ServiceRequestConsumer never looks).
        if self.kind == ConsumerKind::Request && *answers && requester.is_none() {
            return Outcome::Rejected("request without a string 'service' header: it can never be answered".into());
        }

        let plugin = slot.load_full();
        let max_body = plugin.limits().max_body_bytes;
        if delivery.data.len() > max_body {
            return Outcome::Rejected(format!(
                "body of {} bytes is over the limit of {max_body} (limits.max_body_kib); not handed to '{}'",
                delivery.data.len(),
                plugin.name()
            ));
        }
        let request = Request {
            routing_key: routing_key.to_string(),
            body: delivery.data.clone(),
            content_type: props.content_type().as_ref().map(|c| c.to_string()),
        };
        let plugin_headers = headers::to_plugin(table, routing_key);
        debug!(queue = %self.queue, routing_key, plugin = plugin.name(), "calling plugin");
        // W3C trace context: carried on, or started here when none came in. Only in W3C's form:
        // anything else (any length a publisher likes) starts a new trace. With telemetry on,
        // what the plugin causes is the child of its `handle` span.
        let mut handling = trace.and_then(|parent| {
            let name = format!("handle {}", plugin.name());
            telemetry::span(self.tracer.as_ref(), name, SpanKind::Internal, Some(parent))
        });
        let traceparent = match &handling {
            Some(span) => span.traceparent(),
            None => {
                headers::text(table, TRACEPARENT_HEADER).and_then(valid_traceparent).unwrap_or_else(new_traceparent)
            }
        };
        let context = CallContext {
            outbox: Some(self.outbox.clone()),
            traceparent: Some(traceparent.clone()),
            tracer: self.tracer.clone(),
        };
        let handled = plugin.handle(&request, &plugin_headers, &context).await;
        if let Some(span) = &mut handling {
            span.set("warren.plugin", plugin.name());
            span.set("warren.plugin.generation", i64::try_from(plugin.generation()).unwrap_or(i64::MAX));
            match &handled {
                Err(fault) => span.fail(fault.to_string()),
                Ok(Err(error)) => span.fail(format!("{error:?}")),
                Ok(Ok(_)) => {}
            }
        }
        drop(handling);
        let traceparent = match trace {
            Some(process) => process.traceparent(),
            None => traceparent,
        };
        match handled {
            Err(fault @ PluginFault::Busy(_)) => Outcome::Deferred(format!(
                "plugin '{}' {fault}: the host is at its instance limit (lower broker.prefetch or raise the plugin's limits.timeout_ms)",
                plugin.name()
            )),
            Err(fault @ PluginFault::Host(_)) => Outcome::Deferred(format!("plugin '{}': {fault}", plugin.name())),
            Err(fault) => Outcome::Faulted(format!("plugin '{}' {fault}; instance discarded", plugin.name())),
            Ok(Err(HandlerError::BadRequest(why))) => {
                Outcome::Rejected(format!("bad-request from '{}': {why}", plugin.name()))
            }
            Ok(Err(HandlerError::Failed(why))) => Outcome::Rejected(format!("failed in '{}': {why}", plugin.name())),
            Ok(Err(HandlerError::Retry(why))) => {
                // The plugin's own `max_retries` (its `[plugin.<name>]` over `[limits]`).
                self.retry(delivery, routing_key, &why, plugin.name(), plugin.limits().max_retries, retry_delays).await
            }
            Ok(Ok(response)) => match (self.kind, requester) {
                (ConsumerKind::Request, Some(requester)) if *answers => {
                    let answer = Answer { requester: &requester, traceparent: &traceparent, trace };
                    self.respond(delivery, routing_key, answer, response, plugin.limits()).await
                }
                _ => Outcome::Acked,
            },
        }
    }

    /// Publishes the response to the requester and waits for the broker's confirm. A
    /// response the broker could not take (too large a header table or body, a header that
    /// would route it elsewhere) is the plugin's fault: the request is rejected.
    async fn respond(
        &self,
        delivery: &Delivery,
        routing_key: &str,
        answer: Answer<'_>,
        response: Response,
        limits: &Limits,
    ) -> Outcome {
        let Answer { requester, traceparent, trace } = answer;
        let mut table = match headers::from_plugin(&response.headers) {
            Ok(table) => table,
            Err(why) => return Outcome::Rejected(format!("the plugin's response was refused: {why}")),
        };
        let exchange = naming::response_exchange(&self.service);
        let mut span = trace.and_then(|parent| {
            telemetry::span(self.tracer.as_ref(), format!("{exchange} publish"), SpanKind::Producer, Some(parent))
        });
        let traceparent = span.as_ref().map_or_else(|| traceparent.to_string(), Span::traceparent);
        if let Some(span) = &mut span {
            publish_attributes(span, &exchange, routing_key, response.body.len());
        }
        table.insert(TRACEPARENT_HEADER.into(), AMQPValue::LongString(LongString::from(traceparent)));
        let (size, max) = (headers::encoded_len(&table), self.publisher.max_header_bytes());
        if size > max {
            return Outcome::Rejected(format!(
                "the plugin's response headers take {size} bytes, over the {max} one frame can carry"
            ));
        }
        if response.body.len() > limits.max_send_bytes {
            return Outcome::Rejected(format!(
                "the plugin's response body of {} bytes is over limits.max_send_kib ({} bytes)",
                response.body.len(),
                limits.max_send_bytes
            ));
        }
        // The response's `service` header names the requester: its queue is bound on it.
        let mut properties = broker::message_properties(requester, table);
        if let Some(id) = delivery.properties.correlation_id() {
            properties = properties.with_correlation_id(id.clone());
        }
        let published = self.publisher.publish(&exchange, routing_key, &response.body, properties).await;
        if let (Some(span), Err(error)) = (&mut span, &published) {
            span.fail(error.to_string());
        }
        match published {
            // Written: `delivery = "goamqp"`, acked once the answer is written, as goamqp does.
            Ok(Delivered::Routed | Delivered::Written) => Outcome::Acked,
            Ok(Delivered::Unroutable) => {
                warn!(exchange = %exchange, routing_key = %Escaped(routing_key), requester = %Escaped(requester), "response unroutable: no queue of the requester is bound for it; the request is acked");
                Outcome::Acked
            }
            Err(error) => Outcome::Deferred(format!("its response was not confirmed ({error})")),
        }
    }

    /// `retry` from a handler. With delays: a copy (its retry count in a header) waits in
    /// the queue's retry queue for the next delay, then RabbitMQ dead-letters it back; after
    /// the last delay the message is rejected. Without: requeued at once (quorum queues count
    /// deliveries themselves) or republished to the queue, `max_retries` times.
    async fn retry(
        &self,
        delivery: &Delivery,
        routing_key: &str,
        why: &str,
        plugin: &str,
        max_retries: u32,
        delays: &[Duration],
    ) -> Outcome {
        let props = &delivery.properties;
        let delayed = !delays.is_empty();
        let count_header = if self.quorum && !delayed { QUORUM_DELIVERY_COUNT } else { RETRIES_HEADER };
        let retries = header_count(delivery, count_header);
        let max_retries = if delayed { delays.len() as u32 } else { max_retries };
        if retries >= max_retries {
            let key = if delayed {
                "the number of retry_delays_ms".to_string()
            } else {
                format!("max_retries = {max_retries} for '{plugin}': [plugin.{plugin}], else [limits]")
            };
            return Outcome::Rejected(format!(
                "retry asked ({why}) but the message was already retried {retries} times ({key})"
            ));
        }
        if self.quorum && !delayed {
            return Outcome::Requeued(format!(
                "retry asked ({why}); delivery {} of at most {}",
                retries + 1,
                max_retries + 1
            ));
        }
        let target = match delays.get(retries as usize) {
            Some(delay) => naming::retry_queue(&self.queue, delay.as_millis() as u64),
            None => self.queue.clone(),
        };
        let mut table = copies::headers(props);
        table.insert(ShortString::from(RETRIES_HEADER), AMQPValue::LongLongInt(i64::from(retries) + 1));
        table.insert(ShortString::from(ORIGINAL_KEY_HEADER), AMQPValue::LongString(LongString::from(routing_key)));
        let properties: BasicProperties = copies::properties(props, table);
        match self.must_land.publish("", &target, &delivery.data, properties).await {
            Ok(Delivered::Routed) => {
                info!(queue = %self.queue, routing_key, retry = retries + 1, max = max_retries, via = %target, reason = why, "retry requested; message requeued");
                Outcome::Retried(retries + 1)
            }
            Ok(Delivered::Unroutable) => Outcome::Deferred(format!(
                "retry asked ({why}); queue '{target}' is gone (deleted by hand?), so the copy was dropped"
            )),
            Err(error @ BrokerError::HeadersTooLarge { .. }) => {
                Outcome::Rejected(format!("retry asked ({why}) but its copy can never be sent: {error}"))
            }
            Ok(Delivered::Written) => Outcome::Deferred(format!("retry asked ({why}); {NOT_CONFIRMED_COPY}")),
            Err(error) => Outcome::Deferred(format!("retry asked ({why}); republish failed ({error})")),
        }
    }
}

/// A copy that must land went out unconfirmed: `must_land` must be a confirming publisher.
const NOT_CONFIRMED_COPY: &str = "the copy was published without a confirm, so whether it landed is not known (a host bug: copies are always confirmed)";

/// Who an answer goes to and the trace it continues.
struct Answer<'a> {
    requester: &'a str,
    /// The `traceparent` the answer carries when telemetry is off.
    traceparent: &'a str,
    /// The delivery's process span, when recorded: the answer's publish span is its child.
    trace: Option<SpanContext>,
}

/// A PRODUCER span's attributes (OpenTelemetry's messaging conventions).
pub fn publish_attributes(span: &mut Span, exchange: &str, routing_key: &str, body_size: usize) {
    span.set("messaging.system", "rabbitmq");
    span.set("messaging.operation.type", "send");
    span.set("messaging.operation.name", "publish");
    span.set("messaging.destination.name", exchange);
    span.set("messaging.rabbitmq.destination.routing_key", routing_key);
    span.set("messaging.message.body.size", body_size);
}

/// How a delivery was settled on the broker: acked (through [`Acks`]) or by its own frame
/// (reject, requeue), with lapin's answer.
enum Settled {
    Acked(lapin::Result<()>),
    Otherwise(lapin::Result<bool>),
}

/// Where a settled message came from, for its log line.
#[derive(Clone, Copy)]
struct Seen<'a> {
    plugin: &'a str,
    generation: u64,
    routing_key: &'a str,
}

/// The integer header `name` of `delivery` (a count Warren keeps on the message), or 0. A
/// publisher may forge it: a negative count reads 0, a huge one saturates at `u32::MAX`.
fn header_count(delivery: &Delivery, name: &str) -> u32 {
    let count = match delivery.properties.headers().as_ref().and_then(|t| t.inner().get(name)) {
        Some(AMQPValue::LongLongInt(n)) => *n,
        Some(AMQPValue::LongInt(n)) => i64::from(*n),
        Some(AMQPValue::LongUInt(n)) => i64::from(*n),
        Some(AMQPValue::ShortInt(n)) => i64::from(*n),
        Some(AMQPValue::ShortUInt(n)) => i64::from(*n),
        Some(AMQPValue::ShortShortInt(n)) => i64::from(*n),
        Some(AMQPValue::ShortShortUInt(n)) => i64::from(*n),
        _ => 0,
    };
    u32::try_from(count.max(0)).unwrap_or(u32::MAX)
}

/// The delivery's message id, or `-`.
fn message_id(delivery: &Delivery) -> String {
    delivery.properties.message_id().as_ref().map_or("-".to_string(), |id| id.to_string())
}

/// A panic's message, when it has one.
fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    match (panic.downcast_ref::<&str>(), panic.downcast_ref::<String>()) {
        (Some(text), _) => text.to_string(),
        (_, Some(text)) => text.clone(),
        _ => "no message".to_string(),
    }
}
