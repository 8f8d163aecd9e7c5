//! Consumes one queue: each delivery is routed to its plugin by routing key, handled in its
//! own task, and settled by the outcome table of SPEC §1. Nothing is acked before its outcome
//! is safe: a request is acked only after its response is confirmed by the broker.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use futures_lite::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions, BasicRejectOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel};
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use super::broker::{self, BrokerError, Delivered, Publisher};
use super::headers::{
    self, ORIGINAL_KEY_HEADER, QUEUE_HEADER, QUORUM_DELIVERY_COUNT, REASON_HEADER, RETRIES_HEADER, SERVICE_HEADER,
    TRACEPARENT_HEADER, new_traceparent,
};
use super::naming;
use super::routing::RouteTable;
use super::topology::ConsumerKind;
use crate::metrics::Metrics;
use crate::shutdown::Shutdown;
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
    /// Where the plugins' own events and requests go.
    pub outbox: Arc<dyn Outbox>,
    pub prefetch: u16,
    /// A quorum queue counts deliveries itself (`x-delivery-count`): a retry is a requeue.
    pub quorum: bool,
    pub metrics: Arc<Metrics>,
}

/// The part of a consumer a config reload may change. A delivery reads it once.
pub struct Routing {
    /// Routing key pattern → handler.
    pub routes: RouteTable<Handler>,
    /// How many times `retry` requeues a message before it is rejected.
    pub max_retries: u32,
    /// Where messages no handler takes are dead-lettered.
    pub dead_letter_exchange: Option<String>,
}

/// What serves one routing key pattern.
pub struct Handler {
    pub plugin: PluginSlot,
    /// Where this handler's rejected messages are dead-lettered.
    pub dead_letter_exchange: Option<String>,
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
    /// queue, and this delivery is acked.
    Retried(u32),
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

        let mut in_flight = JoinSet::new();
        loop {
            tokio::select! {
                _ = shutdown.wait() => break,
                Some(_) = in_flight.join_next(), if !in_flight.is_empty() => {}
                next = deliveries.next() => match next {
                    Some(Ok(delivery)) => {
                        let consumer = self.clone();
                        in_flight.spawn(async move { consumer.handle(delivery).await });
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

    /// Handles one delivery end to end and settles it.
    pub async fn handle(&self, delivery: Delivery) -> Outcome {
        let props = &delivery.properties;
        let table = props.headers().as_ref();
        let routing_key = match (delivery.exchange.as_str(), headers::text(table, ORIGINAL_KEY_HEADER)) {
            ("", Some(original)) => original,
            _ => delivery.routing_key.to_string(),
        };
        let message_id = props.message_id().as_ref().map_or("-".to_string(), |id| id.to_string());
        let (plugin, generation) = match self.routing.load().routes.find(&routing_key) {
            Some(handler) => {
                let live = handler.plugin.load();
                (live.name().to_string(), live.generation())
            }
            None => ("-".to_string(), 0),
        };
        let started = std::time::Instant::now();
        self.metrics.started(&plugin);
        let outcome = self.decide(&delivery, &routing_key).await;
        let mut label = match &outcome {
            Outcome::Acked => "acked",
            Outcome::Retried(_) => "retried",
            Outcome::Requeued(_) => "requeued",
            Outcome::Rejected(_) => "rejected",
            Outcome::Faulted(_) => "faulted",
        };
        let result = match &outcome {
            Outcome::Acked | Outcome::Retried(_) => delivery.ack(BasicAckOptions::default()).await,
            Outcome::Rejected(reason) | Outcome::Faulted(reason) => {
                match self.dead_letter(&delivery, &routing_key, reason).await {
                    Some(exchange) => {
                        if label == "rejected" {
                            label = "dead_lettered";
                        }
                        warn!(service = %self.service, plugin = %plugin, generation, queue = %self.queue, routing_key = %routing_key, message_id = %message_id, reason = %reason, dead_letter_exchange = %exchange, "message rejected and dead-lettered");
                        delivery.ack(BasicAckOptions::default()).await
                    }
                    None => {
                        warn!(service = %self.service, plugin = %plugin, generation, queue = %self.queue, routing_key = %routing_key, message_id = %message_id, reason = %reason, "message rejected");
                        delivery.reject(BasicRejectOptions { requeue: false }).await
                    }
                }
            }
            Outcome::Requeued(reason) => {
                info!(service = %self.service, plugin = %plugin, generation, queue = %self.queue, routing_key = %routing_key, message_id = %message_id, reason = %reason, "message requeued");
                delivery.nack(BasicNackOptions { requeue: true, multiple: false }).await
            }
        };
        self.metrics.finished(&plugin, label, started.elapsed());
        if let Err(error) = result {
            // The channel is gone: RabbitMQ redelivers the message, nothing is lost.
            warn!(queue = %self.queue, routing_key = %routing_key, %error, "could not settle the message; the broker will redeliver it");
        }
        outcome
    }

    /// Publishes a rejected message to its dead-letter exchange with the reason in headers;
    /// returns the exchange once the broker confirmed it (then the original is acked).
    async fn dead_letter(&self, delivery: &Delivery, routing_key: &str, reason: &str) -> Option<String> {
        let routing = self.routing.load();
        let exchange = match routing.routes.find(routing_key) {
            Some(handler) => handler.dead_letter_exchange.clone(),
            None => routing.dead_letter_exchange.clone(),
        }?;
        let mut table = delivery.properties.headers().clone().unwrap_or_default();
        table.insert(REASON_HEADER.into(), AMQPValue::LongString(LongString::from(reason)));
        table.insert(QUEUE_HEADER.into(), AMQPValue::LongString(LongString::from(self.queue.as_str())));
        let properties = delivery.properties.clone().with_headers(table);
        match self.publisher.publish(&exchange, routing_key, &delivery.data, properties).await {
            Ok(_) => Some(exchange),
            Err(error) => {
                warn!(queue = %self.queue, %error, "could not dead-letter; rejecting instead");
                None
            }
        }
    }

    async fn decide(&self, delivery: &Delivery, routing_key: &str) -> Outcome {
        let routing = self.routing.load();
        let Some(Handler { plugin: slot, .. }) = routing.routes.find(routing_key) else {
            return Outcome::Rejected(format!("no handler for routing key '{routing_key}' on this queue"));
        };
        let props = &delivery.properties;
        let table = props.headers().as_ref();
        let requester = headers::text(table, SERVICE_HEADER);
        if self.kind == ConsumerKind::Request && requester.is_none() {
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
        // W3C trace context: carried on, or started here when none came in.
        let traceparent = headers::text(table, TRACEPARENT_HEADER).unwrap_or_else(new_traceparent);
        let context = CallContext { outbox: Some(self.outbox.clone()), traceparent: Some(traceparent.clone()) };
        match plugin.handle(&request, &plugin_headers, &context).await {
            Err(fault @ PluginFault::Busy(_)) => Outcome::Requeued(format!(
                "plugin '{}' {fault}: the host is at its instance limit (lower broker.prefetch or raise the plugin's limits.timeout_ms)",
                plugin.name()
            )),
            Err(fault) => Outcome::Faulted(format!("plugin '{}' {fault}; instance discarded", plugin.name())),
            Ok(Err(HandlerError::BadRequest(why))) => {
                Outcome::Rejected(format!("bad-request from '{}': {why}", plugin.name()))
            }
            Ok(Err(HandlerError::Failed(why))) => Outcome::Rejected(format!("failed in '{}': {why}", plugin.name())),
            Ok(Err(HandlerError::Retry(why))) => self.retry(delivery, routing_key, &why, routing.max_retries).await,
            Ok(Ok(response)) => match (self.kind, requester) {
                (ConsumerKind::Request, Some(requester)) => {
                    self.respond(delivery, routing_key, &requester, response, &traceparent).await
                }
                _ => Outcome::Acked,
            },
        }
    }

    /// Publishes the response to the requester and waits for the broker's confirm.
    async fn respond(
        &self,
        delivery: &Delivery,
        routing_key: &str,
        requester: &str,
        response: Response,
        traceparent: &str,
    ) -> Outcome {
        let mut table = FieldTable::default();
        for header in &response.headers {
            if header.name != SERVICE_HEADER {
                table.insert(header.name.as_str().into(), headers::from_plugin_value(&header.value));
            }
        }
        table.insert(TRACEPARENT_HEADER.into(), AMQPValue::LongString(LongString::from(traceparent)));
        // The response's `service` header names the requester: its queue is bound on it.
        let mut properties = broker::message_properties(requester, table);
        if let Some(id) = delivery.properties.correlation_id() {
            properties = properties.with_correlation_id(id.clone());
        }
        let exchange = naming::response_exchange(&self.service);
        match self.publisher.publish(&exchange, routing_key, &response.body, properties).await {
            Ok(Delivered::Routed) => Outcome::Acked,
            Ok(Delivered::Unroutable) => {
                warn!(exchange = %exchange, routing_key, requester, "response unroutable: no queue of '{requester}' is bound for it; the request is acked");
                Outcome::Acked
            }
            Err(error) => {
                Outcome::Requeued(format!("response not confirmed ({error}); the request will be handled again"))
            }
        }
    }

    /// `retry` from a handler: republish the message to this queue with a retry count, or
    /// reject it once the count reaches `max_retries`.
    async fn retry(&self, delivery: &Delivery, routing_key: &str, why: &str, max_retries: u32) -> Outcome {
        let props = &delivery.properties;
        let count_header = if self.quorum { QUORUM_DELIVERY_COUNT } else { RETRIES_HEADER };
        let retries = match props.headers().as_ref().and_then(|t| t.inner().get(count_header)) {
            Some(AMQPValue::LongLongInt(n)) => u32::try_from(*n).unwrap_or(u32::MAX),
            Some(AMQPValue::LongInt(n)) => u32::try_from(*n).unwrap_or(u32::MAX),
            _ => 0,
        };
        if retries >= max_retries {
            return Outcome::Rejected(format!(
                "retry asked ({why}) but the message was already retried {retries} times (limits.max_retries)"
            ));
        }
        if self.quorum {
            return Outcome::Requeued(format!(
                "retry asked ({why}); delivery {} of at most {}",
                retries + 1,
                max_retries + 1
            ));
        }
        let mut table = props.headers().clone().unwrap_or_default();
        table.insert(ShortString::from(RETRIES_HEADER), AMQPValue::LongLongInt(i64::from(retries) + 1));
        table.insert(ShortString::from(ORIGINAL_KEY_HEADER), AMQPValue::LongString(LongString::from(routing_key)));
        let properties: BasicProperties = props.clone().with_headers(table);
        match self.publisher.publish("", &self.queue, &delivery.data, properties).await {
            Ok(_) => {
                info!(queue = %self.queue, routing_key, retry = retries + 1, max = max_retries, reason = why, "retry requested; message requeued");
                Outcome::Retried(retries + 1)
            }
            Err(error) => Outcome::Requeued(format!("retry asked ({why}); republish failed ({error})")),
        }
    }
}
