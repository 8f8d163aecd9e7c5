//! The RabbitMQ connection: connecting, declaring a [`Topology`], and publishing with
//! publisher confirms. A refused declaration (406 PRECONDITION_FAILED) is explained in words.

use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::uri::{AMQPUri, SASLMechanism};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ExchangeKind as LapinKind};

use super::topology::{ArgValue, ExchangeKind, Topology};
use super::transport;
use crate::config::{BrokerConfig, DEFAULT_HEARTBEAT_S, redact_url, url_has_password};
use crate::metrics::Metrics;
use std::sync::Arc;

use arc_swap::ArcSwap;

/// The frame size Warren asks for unless the URL names one (`?frame_max=`): RabbitMQ's default.
pub const FRAME_MAX: u32 = 131_072;

/// The stack the `warren` binary gives threads spawned without an explicit size (it sets
/// `RUST_MIN_STACK` before any thread exists, unless the user set it). lapin parses each
/// incoming frame on such a thread, recursively: an AMQP array header nested as deep as one
/// [`FRAME_MAX`] frame allows (≈ 26,000 levels, 5 bytes each) needs ≈ 40 MiB there, and
/// overflowed the default 2 MiB at ≈ 1,500 levels — one hostile message aborted the host.
/// The stack is reserved, not committed: pages are touched only as deep as a frame goes.
pub const IO_THREAD_STACK: usize = 64 << 20;

/// Content type of everything Warren publishes (goamqp bodies are JSON).
pub const CONTENT_TYPE: &str = "application/json";
/// AMQP delivery mode 2: persistent.
pub const PERSISTENT: u8 = 2;

/// A broker operation that failed, and what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error(
        "cannot connect to RabbitMQ at {url}: {reason}. Is the broker running (`rabbitmq-server -detached`)? Set broker.url or WARREN_BROKER_URL to its address"
    )]
    Connect { url: String, reason: String },
    #[error(
        "the broker at {url} refused user '{user}': check the user and password (the URL, broker.password_file or WARREN_BROKER_PASSWORD) or the client certificate. Broker said: {reason}"
    )]
    Credentials { url: String, user: String, reason: String },
    #[error(
        "TLS with {host} ({url}) failed: {reason}. Check that the broker's certificate is issued for {host} by a CA the host trusts (broker.tls.ca_file, else the system roots)"
    )]
    Tls { host: String, url: String, reason: String },
    #[error("{0}")]
    Refused(String),
    #[error("RabbitMQ channel error while {doing}: {source}")]
    Channel { doing: String, source: lapin::Error },
    #[error("RabbitMQ cancelled the consumer of queue '{queue}' (was the queue deleted?)")]
    Cancelled { queue: String },
    #[error("RabbitMQ did not confirm the publish to exchange '{exchange}' (routing key '{routing_key}'): {reason}")]
    NotConfirmed { exchange: String, routing_key: String, reason: String },
    /// Refused before sending, for good: sending it again cannot help.
    #[error(
        "a message to exchange '{exchange}' was not sent: its header table is {size} bytes, over the {max} bytes one frame can carry (RabbitMQ would close the connection)"
    )]
    HeadersTooLarge { exchange: String, size: usize, max: usize },
}

/// Opens a connection to `url` alone, with only what the URL says (clients, tools).
pub async fn connect(url: &str, service: &str) -> Result<Connection, BrokerError> {
    let broker = BrokerConfig { urls: vec![url.to_string()], ..BrokerConfig::default() };
    connect_to(&broker, url, service).await
}

/// Connects to the first of `broker.urls` that answers, trying them in a shuffled order so
/// many hosts spread over a cluster's nodes. Returns the connection and the (redacted) URL
/// it reached. A refused login or certificate is final; an unreachable node is not.
pub async fn connect_any(broker: &BrokerConfig, service: &str) -> Result<(Connection, String), BrokerError> {
    let mut urls: Vec<&String> = broker.urls.iter().collect();
    let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().subsec_nanos();
    let turn = seed as usize % urls.len().max(1);
    urls.rotate_left(turn);
    let mut unreachable = Vec::new();
    for url in urls {
        match connect_to(broker, url, service).await {
            Ok(connection) => return Ok((connection, redact_url(url))),
            Err(BrokerError::Connect { url, reason }) => unreachable.push((url, reason)),
            Err(final_error) => return Err(final_error),
        }
    }
    match unreachable.as_slice() {
        [(url, reason)] => Err(BrokerError::Connect { url: url.clone(), reason: reason.clone() }),
        tried => Err(BrokerError::Connect {
            url: tried.iter().map(|(url, _)| url.as_str()).collect::<Vec<_>>().join(", "),
            reason: tried.iter().map(|(url, reason)| format!("{url}: {reason}")).collect::<Vec<_>>().join("; "),
        }),
    }
}

/// Opens a connection to `url` with `broker`'s password and TLS settings, named after the
/// service so `rabbitmqctl list_connections` shows it.
pub async fn connect_to(broker: &BrokerConfig, url: &str, service: &str) -> Result<Connection, BrokerError> {
    let shown = redact_url(url);
    let mut uri: AMQPUri = url
        .parse()
        .map_err(|reason| BrokerError::Connect { url: shown.clone(), reason: format!("not an AMQP URL: {reason}") })?;
    let password = broker.password.as_ref().filter(|_| !url_has_password(url));
    if let Some(password) = password {
        uri.authority.userinfo.password = password.expose().to_string();
    }
    if broker.tls.client.is_some() && password.is_none() && !url_has_password(url) && uri.query.auth_mechanism.is_none()
    {
        // The client certificate is the credential: RabbitMQ's rabbitmq_auth_mechanism_ssl.
        uri.query.auth_mechanism = Some(SASLMechanism::External);
    }
    if uri.query.frame_max.is_none() {
        // RabbitMQ's default, asked for explicitly: a broker configured for larger frames
        // would otherwise let one header frame carry deeper nesting than the I/O thread's
        // stack is sized for (see `IO_THREAD_STACK`).
        uri.query.frame_max = Some(FRAME_MAX);
    }
    if uri.query.heartbeat.is_none() {
        // A link that goes silent is given up after two missed beats: 20 s by default, not the
        // broker's 60 s (which left deliveries stuck in a dead socket for minutes).
        uri.query.heartbeat = Some(broker.heartbeat_s.unwrap_or(DEFAULT_HEARTBEAT_S));
    }
    let user = uri.authority.userinfo.username.clone();
    let host = uri.authority.host.clone();
    let properties = ConnectionProperties::default().with_connection_name(format!("warren {service}").into());
    let tls = super::tls::lapin_config(&broker.tls);
    let connect = async move |uri: AMQPUri, _runtime| transport::connect(&uri, &tls).await.map_err(lapin::Error::from);
    Connection::connector(uri, transport::runtime(), connect, properties)
        .await
        .map_err(|e| classify_connect_error(e, &shown, &user, &host))
}

/// A failed connection attempt, in words: a refused login or certificate is the operator's
/// to fix (and final); anything else may pass (the broker is not up yet).
fn classify_connect_error(error: lapin::Error, url: &str, user: &str, host: &str) -> BrokerError {
    let reason = error.to_string();
    let lower = reason.to_lowercase();
    if lower.contains("access_refused") || lower.contains("access refused") || lower.contains("login was refused") {
        return BrokerError::Credentials { url: url.to_string(), user: user.to_string(), reason };
    }
    if lower.contains("certificate") || lower.contains("tls") || lower.contains("handshake") {
        return BrokerError::Tls { host: host.to_string(), url: url.to_string(), reason };
    }
    BrokerError::Connect { url: url.to_string(), reason }
}

/// Queue or binding arguments as an AMQP table.
pub fn field_table(arguments: &std::collections::BTreeMap<String, ArgValue>) -> FieldTable {
    let mut table = FieldTable::default();
    for (name, value) in arguments {
        let value = match value {
            // goamqp sends Go ints as AMQP's signed 32-bit `I` (x-expires, x-message-ttl).
            ArgValue::Int(i) => match i32::try_from(*i) {
                Ok(small) => AMQPValue::LongInt(small),
                Err(_) => AMQPValue::LongLongInt(*i),
            },
            ArgValue::Text(s) => AMQPValue::LongString(LongString::from(s.as_str())),
        };
        table.insert(ShortString::from(name.as_str()), value);
    }
    table
}

/// Declares every exchange, queue and binding of `topology`, idempotently.
///
/// Uses its own channel: a refused declaration closes the channel it was made on.
pub async fn declare(connection: &Connection, topology: &Topology) -> Result<(), BrokerError> {
    let channel = open_channel(connection).await?;
    for exchange in &topology.exchanges {
        let kind = match exchange.kind {
            ExchangeKind::Direct => LapinKind::Direct,
            ExchangeKind::Headers => LapinKind::Headers,
            ExchangeKind::Topic => LapinKind::Topic,
            ExchangeKind::Fanout => LapinKind::Fanout,
        };
        let options =
            ExchangeDeclareOptions { durable: true, auto_delete: false, internal: false, ..Default::default() };
        channel
            .exchange_declare(exchange.name.as_str().into(), kind, options, FieldTable::default())
            .await
            .map_err(|e| refused(&format!("exchange '{}'", exchange.name), e))?;
    }
    for queue in &topology.queues {
        let options = QueueDeclareOptions {
            durable: queue.durable,
            exclusive: !queue.durable,
            auto_delete: !queue.durable,
            ..Default::default()
        };
        channel
            .queue_declare(queue.name.as_str().into(), options, field_table(&queue.arguments))
            .await
            .map_err(|e| refused(&format!("queue '{}'", queue.name), e))?;
    }
    for binding in &topology.bindings {
        channel
            .queue_bind(
                binding.queue.as_str().into(),
                binding.exchange.as_str().into(),
                binding.routing_key.as_str().into(),
                QueueBindOptions::default(),
                field_table(&binding.arguments),
            )
            .await
            .map_err(|e| {
                refused(
                    &format!("binding of '{}' to '{}' ({})", binding.queue, binding.exchange, binding.routing_key),
                    e,
                )
            })?;
    }
    bounded_close(channel.close(200, "declared".into())).await;
    Ok(())
}

/// How long a close or cancel may take before Warren stops waiting for the broker.
pub const CLOSE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Runs a close-like broker call, giving up after [`CLOSE_TIMEOUT`]: shutting down must not
/// hang on a broker that stopped answering. Errors are moot at that point and dropped.
pub async fn bounded_close<T, E>(call: impl std::future::Future<Output = Result<T, E>>) {
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, call).await;
}

/// Opens a plain channel.
pub async fn open_channel(connection: &Connection) -> Result<Channel, BrokerError> {
    connection
        .create_channel()
        .await
        .map_err(|source| BrokerError::Channel { doing: "opening a channel".into(), source })
}

/// Turns a declaration error into words; RabbitMQ's 406 names the argument that differs.
fn refused(what: &str, error: lapin::Error) -> BrokerError {
    let text = error.to_string();
    if !text.contains("PRECONDITION_FAILED") {
        return BrokerError::Channel { doing: format!("declaring {what}"), source: error };
    }
    // e.g. "inequivalent arg 'x-expires' for queue 'q' in vhost '/': received the value
    // '432000000' of type 'long' but current is none"
    let quoted: Vec<&str> = text.split('\'').skip(1).step_by(2).collect();
    let advice = match (text.contains("inequivalent arg"), quoted.first()) {
        (true, Some(argument)) => {
            let asked = text.split("received ").nth(1).and_then(|r| r.split(" but current is ").next()).unwrap_or("?");
            let has = text.split(" but current is ").nth(1).unwrap_or("?");
            format!(
                "it already exists on the broker with argument '{argument}' = {has}, but Warren declares {asked}. \
                 Another client declared it differently: make the declarations agree (queue_profile, x-expires), \
                 or delete it (`rabbitmqctl delete_queue <name>`; its messages are lost) and start again"
            )
        }
        _ => "it already exists on the broker with different flags or arguments. \
              Make the declarations agree, or delete it and start again"
            .to_string(),
    };
    BrokerError::Refused(format!(
        "RabbitMQ refused to declare {what} (406 PRECONDITION_FAILED): {advice}. Broker said: {text}"
    ))
}

/// What became of a confirmed publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivered {
    /// The broker took the message and routed it to at least one queue.
    Routed,
    /// The broker took the message but no queue was bound for it (returned as unroutable).
    Unroutable,
    /// Written to the connection, not confirmed: a publisher in goamqp's mode
    /// ([`Publisher::open_unconfirmed`], `[service] delivery = "goamqp"`). Whether the broker
    /// took it, and routed it, is not known.
    Written,
}

/// A channel in confirm mode: every publish waits for the broker's ack. When the broker
/// closes the channel (a publish to a deleted exchange, a frame it refuses), the next publish
/// opens a fresh one: one bad publish never turns into every later one failing.
#[derive(Clone)]
pub struct Publisher {
    connection: Arc<Connection>,
    channel: Arc<ArcSwap<Channel>>,
    /// Held while a closed channel is replaced, so concurrent publishes open one, not many.
    reopening: Arc<tokio::sync::Mutex<()>>,
    metrics: Option<Arc<Metrics>>,
    /// The largest header table a message may carry: the negotiated frame size, less room
    /// for the other properties (RabbitMQ closes the connection on a larger frame).
    max_header_bytes: usize,
    /// Held from publish to confirm when only one publish may be in flight (see
    /// [`Publisher::one_at_a_time`]).
    turn: Option<Arc<tokio::sync::Mutex<()>>>,
    /// Whether the channel is in confirm mode (the default) or publishes as goamqp does.
    confirmed: bool,
}

/// Room left in a content-header frame for the properties beside the header table.
const PROPERTIES_RESERVE: usize = 4096;

impl Publisher {
    /// Opens a channel on `connection` and turns publisher confirms on.
    pub async fn open(connection: &Arc<Connection>) -> Result<Publisher, BrokerError> {
        Publisher::open_with(connection, true).await
    }

    /// Opens a channel on `connection` that publishes as goamqp does: no confirms, not
    /// mandatory; a publish returns once its frames are written ([`Delivered::Written`]).
    pub async fn open_unconfirmed(connection: &Arc<Connection>) -> Result<Publisher, BrokerError> {
        Publisher::open_with(connection, false).await
    }

    async fn open_with(connection: &Arc<Connection>, confirmed: bool) -> Result<Publisher, BrokerError> {
        let channel = match confirmed {
            true => confirm_channel(connection).await?,
            false => open_channel(connection).await?,
        };
        let frame_max = connection.configuration().frame_max() as usize;
        Ok(Publisher {
            connection: connection.clone(),
            channel: Arc::new(ArcSwap::from_pointee(channel)),
            reopening: Arc::default(),
            metrics: None,
            max_header_bytes: frame_max.saturating_sub(PROPERTIES_RESERVE).max(PROPERTIES_RESERVE),
            turn: None,
            confirmed,
        })
    }

    /// Whether publishes wait for the broker's confirm.
    pub fn is_confirmed(&self) -> bool {
        self.confirmed
    }

    /// This publisher with one publish in flight at a time, for publishes whose return
    /// matters (a dead-letter or retry copy must land in a queue): with several publishes in
    /// flight on one channel, lapin hands a returned message to whichever confirm completes
    /// next, so a return could be taken for another publish's and a lost copy for a landed one.
    pub fn one_at_a_time(mut self) -> Publisher {
        self.turn = Some(Arc::default());
        self
    }

    /// Counts reopened channels and failed publishes in `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Publisher {
        self.metrics = Some(metrics);
        self
    }

    /// This publisher without its metrics: for probes, which are not failed publishes.
    pub fn unmetered(&self) -> Publisher {
        Publisher { metrics: None, ..self.clone() }
    }

    /// The largest header table, in encoded bytes, that one message may carry.
    pub fn max_header_bytes(&self) -> usize {
        self.max_header_bytes
    }

    /// Whether a queue named `name` exists, asked passively on a channel of its own (the
    /// broker closes a channel on which a passive declare finds nothing).
    pub async fn queue_exists(&self, name: &str) -> Result<bool, BrokerError> {
        let channel = open_channel(&self.connection).await?;
        let options = QueueDeclareOptions { passive: true, ..Default::default() };
        let exists = match channel.queue_declare(name.into(), options, FieldTable::default()).await {
            Ok(_) => true,
            Err(error) if error.to_string().contains("NOT_FOUND") => false,
            Err(source) => return Err(BrokerError::Channel { doing: format!("checking for queue '{name}'"), source }),
        };
        if channel.status().connected() {
            bounded_close(channel.close(200, "checked".into())).await;
        }
        Ok(exists)
    }

    /// The live channel, reopened first if the broker closed it.
    async fn channel(&self) -> Result<Channel, BrokerError> {
        let current = self.channel.load_full();
        if current.status().connected() {
            return Ok((*current).clone());
        }
        let _one_at_a_time = self.reopening.lock().await;
        let current = self.channel.load_full();
        if current.status().connected() {
            return Ok((*current).clone());
        }
        let fresh = match self.confirmed {
            true => confirm_channel(&self.connection).await?,
            false => open_channel(&self.connection).await?,
        };
        tracing::warn!("the broker closed the publish channel; opened a new one");
        if let Some(metrics) = &self.metrics {
            metrics.channel_reopened();
        }
        self.channel.store(Arc::new(fresh.clone()));
        Ok(fresh)
    }

    /// Publishes `body` as mandatory and waits until the broker confirms it.
    pub async fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        properties: BasicProperties,
    ) -> Result<Delivered, BrokerError> {
        let result = self.publish_once(exchange, routing_key, body, properties).await;
        if let Some(metrics) = &self.metrics {
            match &result {
                Ok(Delivered::Unroutable) => metrics.publish_failed(exchange, "returned"),
                Err(_) => metrics.publish_failed(exchange, "refused"),
                Ok(Delivered::Routed | Delivered::Written) => {}
            }
        }
        result
    }

    async fn publish_once(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        properties: BasicProperties,
    ) -> Result<Delivered, BrokerError> {
        let not_confirmed = |reason: String| BrokerError::NotConfirmed {
            exchange: exchange.to_string(),
            routing_key: routing_key.to_string(),
            reason,
        };
        if let Some(table) = properties.headers() {
            let size = super::headers::encoded_len(table);
            if size > self.max_header_bytes {
                return Err(BrokerError::HeadersTooLarge {
                    exchange: exchange.to_string(),
                    size,
                    max: self.max_header_bytes,
                });
            }
        }
        let _turn = match &self.turn {
            Some(turn) => Some(turn.lock().await),
            None => None,
        };
        let channel = self.channel().await?;
        let options = BasicPublishOptions { mandatory: self.confirmed, ..Default::default() };
        let published = channel
            .basic_publish(exchange.into(), routing_key.into(), options, body, properties)
            .await
            .map_err(|e| not_confirmed(e.to_string()))?;
        if !self.confirmed {
            return Ok(Delivered::Written);
        }
        let confirm = published.await.map_err(|e| not_confirmed(e.to_string()))?;
        match confirm {
            Confirmation::Ack(None) => Ok(Delivered::Routed),
            Confirmation::Ack(Some(_returned)) => Ok(Delivered::Unroutable),
            Confirmation::Nack(_) => Err(not_confirmed("the broker nacked it".into())),
            Confirmation::NotRequested => Err(not_confirmed("confirms are not on for this channel".into())),
        }
    }
}

/// A new channel with publisher confirms on.
async fn confirm_channel(connection: &Connection) -> Result<Channel, BrokerError> {
    let channel = open_channel(connection).await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .map_err(|source| BrokerError::Channel { doing: "enabling publisher confirms".into(), source })?;
    Ok(channel)
}

/// Properties goamqp gives every message: JSON, persistent, `service` = the sender.
pub fn message_properties(sender: &str, mut headers: FieldTable) -> BasicProperties {
    headers.insert(super::headers::SERVICE_HEADER.into(), AMQPValue::LongString(LongString::from(sender)));
    BasicProperties::default()
        .with_content_type(CONTENT_TYPE.into())
        .with_delivery_mode(PERSISTENT)
        .with_headers(headers)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(redact_url("amqp://guest:guest@127.0.0.1:5672/%2f"), "amqp://guest:***@127.0.0.1:5672/%2f");
        assert_eq!(redact_url("amqp://127.0.0.1"), "amqp://127.0.0.1");
        assert!(url_has_password("amqp://u:p@h/%2f") && !url_has_password("amqp://u@h/%2f"));
        assert!(!url_has_password("amqp://h:5672/x@y"), "an @ in the vhost is not userinfo");
    }
}
