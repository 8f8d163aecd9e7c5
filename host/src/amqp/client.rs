//! A goamqp client in a few calls: send one request to a service and wait for its response,
//! exactly as a Go service using goamqp would (`warren request`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_lite::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions};
use lapin::types::FieldTable;
use tokio::sync::oneshot;

use super::broker::{self, BrokerError, Delivered, Publisher};
use super::naming;
use super::topology::{ArgValue, Binding, Exchange, ExchangeKind, QUEUE_EXPIRES_MS, Queue, Topology};

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
        consumers: Vec::new(),
    }
}

type Pending = Arc<Mutex<HashMap<String, oneshot::Sender<Reply>>>>;

/// A connected goamqp client of one service: declares its response queue once, then sends
/// any number of requests, concurrently; responses are matched by correlation id.
pub struct Client {
    connection: Arc<lapin::Connection>,
    publisher: Publisher,
    service: String,
    name: String,
    pending: Pending,
}

impl Client {
    /// Connects as client `name` of `service`, ready for responses to `routing_keys`.
    pub async fn connect(
        broker_url: &str,
        service: &str,
        name: &str,
        routing_keys: &[&str],
    ) -> Result<Client, ClientError> {
        let connection = Arc::new(broker::connect(broker_url, name).await?);
        let mut topology = client_topology(service, name, routing_keys.first().copied().unwrap_or_default());
        for key in routing_keys.iter().skip(1) {
            let mut binding = topology.bindings[0].clone();
            binding.routing_key = key.to_string();
            topology.bindings.push(binding);
        }
        broker::declare(&connection, &topology).await?;
        let queue = topology.queues[0].name.clone();
        let channel = broker::open_channel(&connection).await?;
        let mut responses = channel
            .basic_consume(queue.as_str().into(), "".into(), BasicConsumeOptions::default(), FieldTable::default())
            .await
            .map_err(|source| BrokerError::Channel { doing: format!("consuming {queue}"), source })?;
        let pending: Pending = Arc::default();
        let waiting = pending.clone();
        tokio::spawn(async move {
            while let Some(Ok(delivery)) = responses.next().await {
                let _ = delivery.ack(BasicAckOptions::default()).await;
                let id = delivery.properties.correlation_id().as_ref().map(|id| id.to_string()).unwrap_or_default();
                match waiting.lock().expect("pending lock").remove(&id) {
                    Some(caller) => {
                        let _ = caller.send(Reply {
                            body: delivery.data,
                            routing_key: delivery.routing_key.to_string(),
                            headers: delivery.properties.headers().clone().unwrap_or_default(),
                        });
                    }
                    // A response to an earlier request whose client gave up: nobody waits for it.
                    None => tracing::debug!(queue = %queue, "discarding a response nobody waits for"),
                }
            }
        });
        let publisher = Publisher::open(&connection).await?;
        Ok(Client { connection, publisher, service: service.to_string(), name: name.to_string(), pending })
    }

    /// Sends one request and waits up to `timeout` for its response.
    pub async fn call(&self, routing_key: &str, body: &[u8], timeout: Duration) -> Result<Reply, ClientError> {
        let correlation_id = uuid::Uuid::new_v4().to_string();
        let (tx, rx) = oneshot::channel();
        self.pending.lock().expect("pending lock").insert(correlation_id.clone(), tx);
        let forget = || self.pending.lock().expect("pending lock").remove(&correlation_id);

        let properties = broker::message_properties(&self.name, FieldTable::default())
            .with_correlation_id(correlation_id.as_str().into())
            .with_message_id(uuid::Uuid::new_v4().to_string().into());
        let exchange = naming::request_exchange(&self.service);
        let published = self.publisher.publish(&exchange, routing_key, body, properties).await;
        if published.as_ref().is_ok_and(|d| *d == Delivered::Unroutable) {
            forget();
            return Err(ClientError::Unroutable {
                service: self.service.clone(),
                routing_key: routing_key.to_string(),
                exchange,
            });
        }
        if let Err(error) = published {
            forget();
            return Err(error.into());
        }
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(reply)) => Ok(reply),
            _ => {
                forget();
                Err(ClientError::Timeout { service: self.service.clone(), timeout })
            }
        }
    }

    /// Closes the connection.
    pub async fn close(self) {
        broker::bounded_close(self.connection.close(200, "done".into())).await;
    }
}

/// Sends one `call` over a new connection to `broker_url` and waits for the response.
pub async fn request(broker_url: &str, call: &Call) -> Result<Reply, ClientError> {
    let client = Client::connect(broker_url, &call.service, &call.client, &[call.routing_key.as_str()]).await?;
    let reply = client.call(&call.routing_key, &call.body, call.timeout).await;
    client.close().await;
    reply
}
