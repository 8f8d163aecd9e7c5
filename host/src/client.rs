//! A goamqp client in a few calls: send one request to a service and wait for its response,
//! exactly as a Go service using goamqp would (`warren request`).

use std::time::Duration;

use futures_lite::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions};
use lapin::types::FieldTable;

use crate::broker::{self, BrokerError, Delivered, Publisher};
use crate::naming;
use crate::routing::KeyMatch;
use crate::topology::{
    ArgValue, Binding, ConsumerKind, ConsumerSpec, Exchange, ExchangeKind, QUEUE_EXPIRES_MS, Queue, Route, Topology,
};

/// The client's own service name when none is given.
pub const DEFAULT_CLIENT_NAME: &str = "warren-cli";

/// A request that got no answer.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(transparent)]
    Broker(#[from] BrokerError),
    #[error(
        "no queue is bound for routing key '{routing_key}' on {exchange}: is service '{service}' running with a [[request]] handler for '{routing_key}'?"
    )]
    Unroutable { service: String, routing_key: String, exchange: String },
    #[error(
        "no response from '{service}' within {} ms. The handler may have rejected the request (see the host's log), or it is still busy",
        .timeout.as_millis()
    )]
    Timeout { service: String, timeout: Duration },
}

/// One request to send.
#[derive(Debug, Clone)]
pub struct Call {
    /// `T`: the service asked.
    pub service: String,
    pub routing_key: String,
    pub body: Vec<u8>,
    /// This client's own service name (goamqp's `S`).
    pub client: String,
    pub timeout: Duration,
}

/// The answer to a [`Call`].
#[derive(Debug, Clone)]
pub struct Reply {
    pub body: Vec<u8>,
    pub routing_key: String,
    pub headers: FieldTable,
}

/// What a goamqp client of `service` declares to receive responses for `routing_key`.
pub fn client_topology(service: &str, client: &str, routing_key: &str) -> Topology {
    let response_exchange = naming::response_exchange(service);
    let queue = naming::response_queue(service, client);
    Topology {
        exchanges: vec![
            Exchange { name: naming::request_exchange(service), kind: ExchangeKind::Direct },
            Exchange { name: response_exchange.clone(), kind: ExchangeKind::Headers },
        ],
        queues: vec![Queue {
            name: queue.clone(),
            durable: true,
            arguments: [("x-expires".to_string(), ArgValue::Int(QUEUE_EXPIRES_MS))].into(),
        }],
        bindings: vec![Binding {
            queue: queue.clone(),
            exchange: response_exchange,
            routing_key: routing_key.to_string(),
            arguments: [("service".to_string(), ArgValue::Text(client.to_string()))].into(),
        }],
        consumers: vec![ConsumerSpec {
            queue,
            kind: ConsumerKind::Event,
            matching: KeyMatch::Exact,
            routes: vec![Route { routing_key: routing_key.to_string(), plugin: String::new() }],
        }],
    }
}

/// Sends `call` over a connection to `broker_url` and waits for the response.
pub async fn request(broker_url: &str, call: &Call) -> Result<Reply, ClientError> {
    let connection = broker::connect(broker_url, &call.client).await?;
    let result = request_on(&connection, call).await;
    broker::bounded_close(connection.close(200, "done".into())).await;
    result
}

/// Sends `call` on an open connection and waits for the response.
pub async fn request_on(connection: &lapin::Connection, call: &Call) -> Result<Reply, ClientError> {
    let topology = client_topology(&call.service, &call.client, &call.routing_key);
    broker::declare(connection, &topology).await?;
    let queue = &topology.queues[0].name;

    let channel = broker::open_channel(connection).await?;
    let tag = format!("{}-{}", call.client, uuid::Uuid::new_v4());
    let mut responses = channel
        .basic_consume(
            queue.as_str().into(),
            tag.as_str().into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(|source| BrokerError::Channel { doing: format!("consuming {queue}"), source })?;

    let correlation_id = uuid::Uuid::new_v4().to_string();
    let properties = broker::message_properties(&call.client, FieldTable::default())
        .with_correlation_id(correlation_id.as_str().into())
        .with_message_id(uuid::Uuid::new_v4().to_string().into());
    let exchange = naming::request_exchange(&call.service);
    let publisher = Publisher::open(connection).await?;
    if publisher.publish(&exchange, &call.routing_key, &call.body, properties).await? == Delivered::Unroutable {
        return Err(ClientError::Unroutable {
            service: call.service.clone(),
            routing_key: call.routing_key.clone(),
            exchange,
        });
    }

    let wait = async {
        while let Some(Ok(delivery)) = responses.next().await {
            let _ = delivery.ack(BasicAckOptions::default()).await;
            let matches =
                delivery.properties.correlation_id().as_ref().map(|id| id.as_str()) == Some(correlation_id.as_str());
            if matches {
                return Some(Reply {
                    body: delivery.data,
                    routing_key: delivery.routing_key.to_string(),
                    headers: delivery.properties.headers().clone().unwrap_or_default(),
                });
            }
            // A response to an earlier request whose client gave up: nobody waits for it.
            tracing::debug!(queue = %queue, "discarding a stale response");
        }
        None
    };
    let timeout = || ClientError::Timeout { service: call.service.clone(), timeout: call.timeout };
    let reply = tokio::time::timeout(call.timeout, wait).await.map_err(|_| timeout())?.ok_or_else(timeout);
    broker::bounded_close(channel.basic_cancel(tag.as_str().into(), lapin::options::BasicCancelOptions::default()))
        .await;
    broker::bounded_close(channel.close(200, "done".into())).await;
    reply
}
