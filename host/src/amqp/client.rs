//! A goamqp client in a few calls: send requests to a service and wait for their responses,
//! exactly as a Go service using goamqp would (`warren request`, the benchmarks).
//!
//! # How an answer finds its call
//!
//! goamqp sets no `correlation_id` — not on requests, not on answers (SPEC §1). What ties an
//! answer to its request is where it arrives: the responder publishes it to
//! `T.headers.exchange.response` with header `service` = the requester's name and the
//! request's routing key, and only the requester's own queue
//! (`T.headers.exchange.response.queue.<name>`, bound with `service = <name>`) receives it.
//! So this client matches an answer in two ways:
//!
//! - **With a correlation id** (a Warren host copies the request's across): the call that sent
//!   that id gets it. An id nobody waits for belongs to a call that gave up: it is dropped,
//!   never handed to another call.
//! - **Without one** (every goamqp service): the oldest waiting call with the answer's
//!   routing key gets it, as goamqp itself would take it. Calls are registered in the order
//!   their requests go on the wire (one channel, registered and sent under one lock), and a
//!   goamqp service answers one queue's requests in order, so each call gets its own answer.
//!   Only a responder that answers out of order (several consumers, or work done in parallel)
//!   can hand calls on one key each other's bodies — goamqp has no way to tell either. For
//!   the same reason, an answer without an id that comes after its call gave up (timed out)
//!   goes to the next call waiting on that key.
//!
//! **Decision:** the client still *sends* a fresh correlation id on each request by default.
//! goamqp ignores it; a Warren host copies it back, which makes matching exact when many
//! calls share a key. The client never *needs* it: [`ClientOptions::correlation_ids`] = false
//! makes the requests byte-for-byte goamqp's (no `correlation_id`, no `message_id`).
//!
//! # The reply queue
//!
//! A client named `name` receives answers on goamqp's queue
//! `T.headers.exchange.response.queue.<name>`, bound to `T.headers.exchange.response` per
//! routing key with `service = <name>` (no `x-match`). [`Client::connect`] declares it durable,
//! as a goamqp service does ([`ReplyQueue::Durable`]). Two processes using one name share that
//! queue and take each other's answers; so `warren request` without `--client` runs as a name
//! of its own, `warren-cli-<8 random hex>` ([`generated_client_name`]), with a
//! [`ReplyQueue::Transient`] queue (exclusive, auto-delete, the same `x-expires`), deleted
//! explicitly when the client closes and by the broker when its connection goes.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_lite::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions,
    QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{Channel, Confirmation};
use tokio::sync::oneshot;

use super::broker::{self, BrokerError};
use super::naming;
use super::topology::{ArgValue, Binding, Exchange, ExchangeKind, QUEUE_EXPIRES_MS, Queue, Topology};

/// The client's own service name when none is given, and the prefix of a generated one.
pub const DEFAULT_CLIENT_NAME: &str = "warren-cli";

/// A client name of its own for one run: `warren-cli-<8 random hex>`.
pub fn generated_client_name() -> String {
    format!("{DEFAULT_CLIENT_NAME}-{}", &uuid::Uuid::new_v4().simple().to_string()[..8])
}

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
    #[error(
        "the connection to RabbitMQ was lost while waiting for a response from '{service}'; the request may still be answered to queue '{queue}'"
    )]
    Disconnected { service: String, queue: String },
}

/// One request to send.
#[derive(Debug, Clone)]
pub struct Call {
    /// `T`: the service asked.
    pub service: String,
    pub routing_key: String,
    pub body: Vec<u8>,
    /// This client's own service name (goamqp's `S`), with goamqp's durable reply queue;
    /// `None`: a generated name with a transient reply queue of its own.
    pub client: Option<String>,
    pub timeout: Duration,
}

/// The answer to a [`Call`].
#[derive(Debug, Clone)]
pub struct Reply {
    pub body: Vec<u8>,
    pub routing_key: String,
    pub headers: FieldTable,
    /// The answer's correlation id, when the responder set one (goamqp never does).
    pub correlation_id: Option<String>,
}

/// How the client's reply queue is declared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReplyQueue {
    /// durable, as a goamqp service declares it: it outlives the client (until `x-expires`).
    #[default]
    Durable,
    /// exclusive and auto-delete: only this connection reads it, and it goes with the client.
    Transient,
}

/// How a [`Client`] behaves beyond goamqp's conventions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientOptions {
    pub reply_queue: ReplyQueue,
    /// Send a fresh `correlation_id` (and `message_id`) on each request. goamqp sends none
    /// and ignores them; a Warren host copies the correlation id back, making matching exact.
    pub correlation_ids: bool,
    pub publishing: Publishing,
}

impl Default for ClientOptions {
    fn default() -> ClientOptions {
        ClientOptions { reply_queue: ReplyQueue::Durable, correlation_ids: true, publishing: Publishing::Confirmed }
    }
}

impl ClientOptions {
    /// A client whose every frame is goamqp's: no correlation id, one channel with
    /// `basic.qos(prefetch, global)`, no confirms; a transient reply queue of its own.
    pub fn goamqp(prefetch: u16) -> ClientOptions {
        ClientOptions {
            reply_queue: ReplyQueue::Transient,
            correlation_ids: false,
            publishing: Publishing::Goamqp { prefetch },
        }
    }
}

/// How requests go out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Publishing {
    /// As mandatory on a channel of their own in confirm mode: a request no queue takes
    /// fails at once ("is the service running?") instead of timing out (`warren request`).
    Confirmed,
    /// goamqp's way (SPEC §1): requests and answers share one channel with
    /// `basic.qos(prefetch, global)`; no confirms, not mandatory (`warren bench`).
    Goamqp {
        /// goamqp's default is 20 (`WithPrefetchLimit` changes it).
        prefetch: u16,
    },
}

/// goamqp's prefetch unless a service sets `WithPrefetchLimit`.
pub const GOAMQP_PREFETCH: u16 = 20;

/// What a goamqp client `client` of `service` declares to receive responses for
/// `routing_keys`: both of the service's exchanges, its reply queue, one binding per key.
pub fn client_topology(service: &str, client: &str, routing_keys: &[&str], reply_queue: ReplyQueue) -> Topology {
    let response_exchange = naming::response_exchange(service);
    let queue = naming::response_queue(service, client);
    let binding = |key: &str| Binding {
        queue: queue.clone(),
        exchange: response_exchange.clone(),
        routing_key: key.to_string(),
        arguments: [("service".to_string(), ArgValue::Text(client.to_string()))].into(),
    };
    Topology {
        exchanges: vec![
            Exchange { name: naming::request_exchange(service), kind: ExchangeKind::Direct },
            Exchange { name: response_exchange.clone(), kind: ExchangeKind::Headers },
        ],
        queues: vec![Queue {
            name: queue.clone(),
            durable: reply_queue == ReplyQueue::Durable,
            arguments: [("x-expires".to_string(), ArgValue::Int(QUEUE_EXPIRES_MS))].into(),
        }],
        bindings: routing_keys.iter().map(|key| binding(key)).collect(),
        consumers: Vec::new(),
    }
}

/// One call waiting for its answer.
struct Waiter<T> {
    id: u64,
    correlation_id: Option<String>,
    routing_key: String,
    answer: T,
}

/// The calls waiting for answers, oldest first.
struct Waiting<T> {
    next_id: u64,
    calls: VecDeque<Waiter<T>>,
    /// The reply consumer ended (connection lost, queue deleted): nothing will be answered.
    closed: bool,
}

impl<T> Default for Waiting<T> {
    fn default() -> Waiting<T> {
        Waiting { next_id: 0, calls: VecDeque::new(), closed: false }
    }
}

impl<T> Waiting<T> {
    /// Registers a call; returns its id for [`Waiting::forget`].
    fn insert(&mut self, correlation_id: Option<String>, routing_key: &str, answer: T) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        self.calls.push_back(Waiter { id, correlation_id, routing_key: routing_key.to_string(), answer });
        id
    }

    /// The call an answer belongs to: by correlation id when the answer has one, else the
    /// oldest call with the answer's routing key (goamqp's own semantics).
    fn take(&mut self, correlation_id: Option<&str>, routing_key: &str) -> Option<T> {
        let position = match correlation_id.filter(|id| !id.is_empty()) {
            Some(id) => self.calls.iter().position(|w| w.correlation_id.as_deref() == Some(id)),
            None => self.calls.iter().position(|w| w.routing_key == routing_key),
        }?;
        self.calls.remove(position).map(|w| w.answer)
    }

    /// Removes a call that gave up.
    fn forget(&mut self, id: u64) {
        self.calls.retain(|w| w.id != id);
    }

    /// No answer will come any more: every waiting call is told (its sender is dropped).
    fn close(&mut self) {
        self.closed = true;
        self.calls.clear();
    }
}

type Pending = Arc<Mutex<Waiting<oneshot::Sender<Reply>>>>;

/// A connected goamqp client of one service: declares its reply queue once, then sends any
/// number of requests, concurrently; answers are matched as the module doc says.
pub struct Client {
    connection: Arc<lapin::Connection>,
    /// The channel requests go out on (see [`Publishing`]).
    requests: Channel,
    /// Held while a call is registered and its request handed to the channel: calls wait in
    /// the order their requests go out.
    sending: tokio::sync::Mutex<()>,
    service: String,
    name: String,
    reply_queue: String,
    options: ClientOptions,
    pending: Pending,
}

impl Client {
    /// Connects as client `name` of `service` with goamqp's durable reply queue, ready for
    /// responses to `routing_keys`.
    pub async fn connect(
        broker_url: &str,
        service: &str,
        name: &str,
        routing_keys: &[&str],
    ) -> Result<Client, ClientError> {
        Client::connect_with(broker_url, service, name, routing_keys, ClientOptions::default()).await
    }

    /// Connects under a generated name ([`generated_client_name`]) with a transient reply
    /// queue of its own: parallel clients never take each other's answers.
    pub async fn connect_transient(
        broker_url: &str,
        service: &str,
        routing_keys: &[&str],
    ) -> Result<Client, ClientError> {
        let options = ClientOptions { reply_queue: ReplyQueue::Transient, ..ClientOptions::default() };
        Client::connect_with(broker_url, service, &generated_client_name(), routing_keys, options).await
    }

    /// Connects as client `name` of `service`, ready for responses to `routing_keys`.
    pub async fn connect_with(
        broker_url: &str,
        service: &str,
        name: &str,
        routing_keys: &[&str],
        options: ClientOptions,
    ) -> Result<Client, ClientError> {
        let connection = Arc::new(broker::connect(broker_url, name).await?);
        let topology = client_topology(service, name, routing_keys, options.reply_queue);
        broker::declare(&connection, &topology).await?;
        let queue = topology.queues[0].name.clone();
        let channel = broker::open_channel(&connection).await?;
        if let Publishing::Goamqp { prefetch } = options.publishing {
            channel
                .basic_qos(prefetch, BasicQosOptions { global: true })
                .await
                .map_err(|source| BrokerError::Channel { doing: "setting the prefetch".into(), source })?;
        }
        let mut responses = channel
            .basic_consume(queue.as_str().into(), "".into(), BasicConsumeOptions::default(), FieldTable::default())
            .await
            .map_err(|source| BrokerError::Channel { doing: format!("consuming {queue}"), source })?;
        let pending: Pending = Arc::default();
        let waiting = pending.clone();
        let reply_queue = queue.clone();
        tokio::spawn(async move {
            while let Some(Ok(delivery)) = responses.next().await {
                let _ = delivery.ack(BasicAckOptions::default()).await;
                let correlation_id = delivery.properties.correlation_id().as_ref().map(|id| id.to_string());
                let routing_key = delivery.routing_key.to_string();
                let caller = waiting.lock().expect("pending lock").take(correlation_id.as_deref(), &routing_key);
                match caller {
                    Some(caller) => {
                        let _ = caller.send(Reply {
                            body: delivery.data,
                            routing_key,
                            headers: delivery.properties.headers().clone().unwrap_or_default(),
                            correlation_id,
                        });
                    }
                    // An answer to a call that gave up: nobody waits for it.
                    None => tracing::debug!(
                        queue = %queue,
                        routing_key = %routing_key,
                        correlation_id = correlation_id.as_deref().unwrap_or(""),
                        "discarding a response nobody waits for"
                    ),
                }
            }
            waiting.lock().expect("pending lock").close();
        });
        let requests = match options.publishing {
            Publishing::Goamqp { .. } => channel,
            Publishing::Confirmed => {
                let requests = broker::open_channel(&connection).await?;
                requests
                    .confirm_select(ConfirmSelectOptions::default())
                    .await
                    .map_err(|source| BrokerError::Channel { doing: "enabling publisher confirms".into(), source })?;
                requests
            }
        };
        Ok(Client {
            connection,
            requests,
            sending: tokio::sync::Mutex::new(()),
            service: service.to_string(),
            name: name.to_string(),
            reply_queue,
            options,
            pending,
        })
    }

    /// This client's service name: the `service` header of its requests.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The queue its answers arrive on.
    pub fn reply_queue(&self) -> &str {
        &self.reply_queue
    }

    /// Sends one request and waits up to `timeout` for its response.
    pub async fn call(&self, routing_key: &str, body: &[u8], timeout: Duration) -> Result<Reply, ClientError> {
        let correlation_id = self.options.correlation_ids.then(|| uuid::Uuid::new_v4().to_string());
        let mut properties = broker::message_properties(&self.name, FieldTable::default());
        if let Some(correlation_id) = &correlation_id {
            properties = properties
                .with_correlation_id(correlation_id.as_str().into())
                .with_message_id(uuid::Uuid::new_v4().to_string().into());
        }
        let exchange = naming::request_exchange(&self.service);
        let not_confirmed = |reason: String| {
            ClientError::Broker(BrokerError::NotConfirmed {
                exchange: exchange.clone(),
                routing_key: routing_key.to_string(),
                reason,
            })
        };
        let (tx, rx) = oneshot::channel();
        let options =
            BasicPublishOptions { mandatory: self.options.publishing == Publishing::Confirmed, ..Default::default() };
        let (id, sent) = {
            let _in_order = self.sending.lock().await;
            let id = {
                let mut pending = self.pending.lock().expect("pending lock");
                if pending.closed {
                    return Err(self.disconnected());
                }
                pending.insert(correlation_id, routing_key, tx)
            };
            let sent = self
                .requests
                .basic_publish(exchange.as_str().into(), routing_key.into(), options, body, properties)
                .await;
            (id, sent)
        };
        let forget = || self.pending.lock().expect("pending lock").forget(id);
        let confirmed = match sent {
            Ok(confirm) => confirm.await,
            Err(error) => Err(error),
        };
        match confirmed {
            Ok(Confirmation::Ack(None)) => {}
            Ok(Confirmation::Ack(Some(_returned))) => {
                forget();
                return Err(ClientError::Unroutable {
                    service: self.service.clone(),
                    routing_key: routing_key.to_string(),
                    exchange,
                });
            }
            Ok(Confirmation::Nack(_)) => {
                forget();
                return Err(not_confirmed("the broker nacked it".into()));
            }
            Ok(Confirmation::NotRequested) => {}
            Err(error) => {
                forget();
                return Err(not_confirmed(error.to_string()));
            }
        }
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(_)) => Err(self.disconnected()),
            Err(_) => {
                forget();
                Err(ClientError::Timeout { service: self.service.clone(), timeout })
            }
        }
    }

    fn disconnected(&self) -> ClientError {
        ClientError::Disconnected { service: self.service.clone(), queue: self.reply_queue.clone() }
    }

    /// Closes the connection; a transient reply queue is deleted first (the broker would
    /// also drop it with the connection, being exclusive).
    pub async fn close(self) {
        if self.options.reply_queue == ReplyQueue::Transient
            && let Ok(channel) = broker::open_channel(&self.connection).await
        {
            let delete = channel.queue_delete(self.reply_queue.as_str().into(), QueueDeleteOptions::default());
            if let Ok(Err(error)) = tokio::time::timeout(broker::CLOSE_TIMEOUT, delete).await {
                tracing::warn!(queue = %self.reply_queue, %error, "could not delete the reply queue");
            }
        }
        broker::bounded_close(self.connection.close(200, "done".into())).await;
    }
}

/// Sends one `call` over a new connection to `broker_url` and waits for the response. With
/// `call.client` unset, the client runs under a generated name with a transient reply queue
/// of its own, deleted before this returns.
pub async fn request(broker_url: &str, call: &Call) -> Result<Reply, ClientError> {
    let keys = [call.routing_key.as_str()];
    let client = match &call.client {
        Some(name) => Client::connect(broker_url, &call.service, name, &keys).await?,
        None => Client::connect_transient(broker_url, &call.service, &keys).await?,
    };
    let reply = client.call(&call.routing_key, &call.body, call.timeout).await;
    client.close().await;
    reply
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_with_a_correlation_id_goes_to_the_call_that_sent_it() {
        let mut waiting = Waiting::default();
        waiting.insert(Some("a".into()), "echo", 1);
        waiting.insert(Some("b".into()), "echo", 2);
        assert_eq!(waiting.take(Some("b"), "echo"), Some(2));
        assert_eq!(waiting.take(Some("a"), "echo"), Some(1));
    }

    #[test]
    fn an_answer_without_a_correlation_id_goes_to_the_oldest_call_with_its_key() {
        let mut waiting = Waiting::default();
        waiting.insert(Some("a".into()), "greet", 1);
        waiting.insert(None, "echo", 2);
        waiting.insert(Some("c".into()), "echo", 3);
        assert_eq!(waiting.take(None, "echo"), Some(2));
        assert_eq!(waiting.take(Some(""), "echo"), Some(3), "an empty id is no id");
        assert_eq!(waiting.take(None, "echo"), None);
        assert_eq!(waiting.take(None, "greet"), Some(1));
    }

    #[test]
    fn a_late_answer_to_a_call_that_gave_up_is_never_handed_to_another() {
        let mut waiting = Waiting::default();
        let gave_up = waiting.insert(Some("old".into()), "echo", 1);
        waiting.insert(Some("new".into()), "echo", 2);
        waiting.forget(gave_up);
        assert_eq!(waiting.take(Some("old"), "echo"), None, "matched by id: the old id has no caller");
        assert_eq!(waiting.take(Some("new"), "echo"), Some(2));
    }

    #[test]
    fn a_closed_consumer_fails_every_waiting_call() {
        let mut waiting = Waiting::default();
        waiting.insert(None, "echo", 1);
        waiting.close();
        assert!(waiting.closed);
        assert_eq!(waiting.take(None, "echo"), None);
    }

    #[test]
    fn the_reply_queue_is_goamqps_bound_with_service_per_key() {
        let t = client_topology("billing", "warren-cli-0a1b2c3d", &["invoice", "refund"], ReplyQueue::Transient);
        assert_eq!(t.queues[0].name, "billing.headers.exchange.response.queue.warren-cli-0a1b2c3d");
        assert!(!t.queues[0].durable, "transient: exclusive and auto-delete");
        assert_eq!(t.queues[0].arguments["x-expires"], ArgValue::Int(432_000_000));
        let keys: Vec<&str> = t.bindings.iter().map(|b| b.routing_key.as_str()).collect();
        assert_eq!(keys, ["invoice", "refund"]);
        for binding in &t.bindings {
            assert_eq!(binding.exchange, "billing.headers.exchange.response");
            assert_eq!(binding.arguments, [("service".into(), ArgValue::Text("warren-cli-0a1b2c3d".into()))].into());
        }
        assert!(client_topology("billing", "me", &["k"], ReplyQueue::Durable).queues[0].durable);
    }

    #[test]
    fn generated_names_are_warren_cli_and_eight_hex_digits() {
        let name = generated_client_name();
        let suffix = name.strip_prefix("warren-cli-").expect(&name);
        assert_eq!(suffix.len(), 8);
        assert!(suffix.chars().all(|c| c.is_ascii_hexdigit()), "{name}");
        assert_ne!(name, generated_client_name());
    }
}
