//! What plugins send (events, requests, queue messages, late answers), published the goamqp
//! way and confirmed by the broker before the plugin's call returns.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lapin::types::{AMQPValue, FieldArray, LongString};

use super::broker::{self, Delivered, Publisher};
use super::headers::{self, CC_HEADER, TRACEPARENT_HEADER};
use super::naming;
use crate::telemetry::{self, Span, SpanContext, SpanKind, Tracer};
use crate::wasm::{Destination, Header, Outbox, SendError};

/// Publishes plugins' messages as service `service`.
pub struct BrokerOutbox {
    pub publisher: Publisher,
    pub service: String,
    /// Which routing keys name a queue on the broker, as last checked (see [`BrokerOutbox::names_a_queue`]).
    known_queues: Mutex<HashMap<String, (bool, Instant)>>,
    /// Where each send's PRODUCER span goes; `None`: telemetry is off.
    tracer: Option<Arc<Tracer>>,
}

/// How long a check that a routing key names (or does not name) a queue is trusted.
const QUEUE_CHECK_TTL: Duration = Duration::from_secs(5);

impl BrokerOutbox {
    pub fn new(publisher: Publisher, service: String) -> BrokerOutbox {
        BrokerOutbox { publisher, service, known_queues: Mutex::default(), tracer: None }
    }

    /// This outbox, recording a span for each send in `tracer`.
    pub fn with_tracer(mut self, tracer: Option<Arc<Tracer>>) -> BrokerOutbox {
        self.tracer = tracer;
        self
    }

    /// A queue publish goes to the default exchange, which also delivers it to the queue
    /// named by its routing key: a plugin granted one queue could reach any other by naming
    /// it as the key. Whether `routing_key` names a queue is asked of the broker (passively)
    /// and remembered for a few seconds.
    async fn names_a_queue(&self, routing_key: &str) -> Result<bool, SendError> {
        let now = Instant::now();
        if let Some((exists, at)) = self.known_queues.lock().expect("queue checks lock").get(routing_key)
            && now.duration_since(*at) < QUEUE_CHECK_TTL
        {
            return Ok(*exists);
        }
        let exists = self.publisher.queue_exists(routing_key).await.map_err(|e| SendError::Failed(e.to_string()))?;
        let mut known = self.known_queues.lock().expect("queue checks lock");
        if known.len() > 1024 {
            known.clear();
        }
        known.insert(routing_key.to_string(), (exists, now));
        Ok(exists)
    }
}

impl Outbox for BrokerOutbox {
    fn send<'a>(
        &'a self,
        to: Destination,
        routing_key: &'a str,
        body: &'a [u8],
        plugin_headers: &'a [Header],
        traceparent: Option<&'a str>,
    ) -> Pin<Box<dyn Future<Output = Result<(), SendError>> + Send + 'a>> {
        Box::pin(async move {
            let mut table = headers::from_plugin(plugin_headers).map_err(SendError::Denied)?;
            let plugin_traceparent = table.contains_key(TRACEPARENT_HEADER);
            // goamqp's `service` header names the sender, except on an answer: there it names
            // the requester, whose response queue is bound on it (`PublishServiceResponse`).
            let mut service_header = self.service.as_str();
            let exchange = match &to {
                Destination::Event(stream) => naming::event_exchange(stream),
                Destination::Request(service) => naming::request_exchange(service),
                Destination::Response(requester) => {
                    service_header = requester;
                    naming::response_exchange(&self.service)
                }
                Destination::Queue(queue) => {
                    if routing_key != queue && self.names_a_queue(routing_key).await? {
                        return Err(SendError::Denied(format!(
                            "routing key '{routing_key}' names another queue, which a queue publish would also reach; \
                             only queue '{queue}' is granted: use another routing key"
                        )));
                    }
                    let cc = FieldArray::from(vec![AMQPValue::LongString(LongString::from(queue.as_str()))]);
                    table.insert(CC_HEADER.into(), AMQPValue::FieldArray(cc));
                    String::new()
                }
            };
            // A PRODUCER span, child of the call's: the message carries its traceparent.
            let parent = traceparent.and_then(SpanContext::parse);
            let mut span = parent.and_then(|parent| {
                telemetry::span(self.tracer.as_ref(), format!("{exchange} publish"), SpanKind::Producer, Some(parent))
            });
            let traceparent = span.as_ref().map(Span::traceparent).or_else(|| traceparent.map(str::to_string));
            if let Some(traceparent) = traceparent.filter(|_| !plugin_traceparent) {
                table.insert(TRACEPARENT_HEADER.into(), AMQPValue::LongString(LongString::from(traceparent)));
            }
            let properties = broker::message_properties(service_header, table);
            let published = self.publisher.publish(&exchange, routing_key, body, properties).await;
            if let Some(span) = &mut span {
                super::consumer::publish_attributes(span, &exchange, routing_key, body.len());
                if let Err(error) = &published {
                    span.fail(error.to_string());
                }
            }
            drop(span);
            match published {
                Ok(Delivered::Routed | Delivered::Written) => Ok(()),
                // Nobody subscribed to this event (yet): that is not the publisher's problem.
                Ok(Delivered::Unroutable) if matches!(to, Destination::Event(_)) => Ok(()),
                Ok(Delivered::Unroutable) => Err(SendError::Failed(match &to {
                    Destination::Response(requester) => format!(
                        "no queue of '{requester}' is bound to '{exchange}' (header service = '{requester}'), \
                         so the answer to '{routing_key}' would be dropped: is '{requester}' consuming responses \
                         from this service (goamqp's ServiceResponseConsumer)?"
                    ),
                    _ => format!(
                        "no queue takes '{routing_key}' on exchange '{exchange}': is the receiving service running?"
                    ),
                })),
                Err(error) => Err(SendError::Failed(error.to_string())),
            }
        })
    }
}
