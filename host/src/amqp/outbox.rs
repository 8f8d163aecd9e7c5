//! What plugins send (events, requests, queue messages), published the goamqp way and
//! confirmed by the broker before the plugin's call returns.

use std::future::Future;
use std::pin::Pin;

use lapin::types::{AMQPValue, FieldArray, FieldTable, LongString};

use super::broker::{self, Delivered, Publisher};
use super::headers::{self, CC_HEADER, SERVICE_HEADER, TRACEPARENT_HEADER};
use super::naming;
use crate::wasm::{Destination, Header, Outbox};

/// Publishes plugins' messages as service `service`.
pub struct BrokerOutbox {
    pub publisher: Publisher,
    pub service: String,
}

impl Outbox for BrokerOutbox {
    fn send<'a>(
        &'a self,
        to: Destination,
        routing_key: &'a str,
        body: &'a [u8],
        plugin_headers: &'a [Header],
        traceparent: Option<&'a str>,
    ) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + 'a>> {
        Box::pin(async move {
            let mut table = FieldTable::default();
            for header in plugin_headers.iter().filter(|h| h.name != SERVICE_HEADER) {
                table.insert(header.name.as_str().into(), headers::from_plugin_value(&header.value));
            }
            if let Some(traceparent) = traceparent.filter(|_| !table.contains_key(TRACEPARENT_HEADER)) {
                table.insert(TRACEPARENT_HEADER.into(), AMQPValue::LongString(LongString::from(traceparent)));
            }
            let exchange = match &to {
                Destination::Event(stream) => naming::event_exchange(stream),
                Destination::Request(service) => naming::request_exchange(service),
                Destination::Queue(queue) => {
                    let cc = FieldArray::from(vec![AMQPValue::LongString(LongString::from(queue.as_str()))]);
                    table.insert(CC_HEADER.into(), AMQPValue::FieldArray(cc));
                    String::new()
                }
            };
            let properties = broker::message_properties(&self.service, table);
            match self.publisher.publish(&exchange, routing_key, body, properties).await {
                Ok(Delivered::Routed) => Ok(()),
                // Nobody subscribed to this event (yet): that is not the publisher's problem.
                Ok(Delivered::Unroutable) if matches!(to, Destination::Event(_)) => Ok(()),
                Ok(Delivered::Unroutable) => Err(format!(
                    "no queue takes '{routing_key}' on exchange '{exchange}': is the receiving service running?"
                )),
                Err(error) => Err(error.to_string()),
            }
        })
    }
}
