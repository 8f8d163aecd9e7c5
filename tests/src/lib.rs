//! Shared helpers for the integration tests: the example plugins built once per test binary,
//! a host started on a config written for the test, a goamqp-style client with its own lapin
//! code (names spelled out here, not taken from the host's naming module), and the broker's
//! own view of things through `rabbitmqctl`.
//!
//! Every test uses its own service name, so tests never see each other's queues.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use futures_lite::StreamExt;
use lapin::message::Delivery;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ExchangeKind};
use tokio::sync::mpsc;

pub use warren::amqp::broker::bounded_close;
pub use warren::config::Config;
pub use warren::server::Server;

/// The broker every test talks to (`WARREN_BROKER_URL` overrides it).
pub fn broker_url() -> String {
    std::env::var("WARREN_BROKER_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// How long one clean-up step may take.
pub const CLEANUP: Duration = Duration::from_secs(10);

/// How long a test waits for something that should happen promptly.
pub const DEADLINE: Duration = Duration::from_secs(20);

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// Builds every crate under `<workspace>/<source>` into `<workspace>/target/<out>` once per
/// test binary, with the same code as `warren build` (in its own cargo target folder, so it
/// never waits on the lock of the build running the tests).
fn built_once(cell: &'static OnceLock<PathBuf>, source: &str, out: &str) -> &'static Path {
    cell.get_or_init(|| {
        let root = workspace();
        let out = root.join("target").join(out);
        // Every plugin is required: a missing toolchain fails the tests, it is not skipped.
        warren::tooling::builder::build_plugins(&root.join(source), &out, &root.join("target/plugin-build"), |_| true)
            .unwrap_or_else(|e| panic!("building {source}: {e}"));
        out
    })
}

/// The folder holding the example plugins `echo.wasm`, `greet.wasm` and `chaos.wasm`.
pub fn plugins_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    built_once(&DIR, "plugins", "test-plugins")
}

/// The test fixtures (`tests/fixtures/*`, e.g. `wrongworld.wasm`).
pub fn fixtures_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    built_once(&DIR, "tests/fixtures", "test-fixtures")
}

/// A plugins folder of the test's own (hot reload changes files in it): each
/// `(name, example)` is a copy of the example plugin `example` as `<name>.wasm`.
pub fn private_plugins(service: &str, plugins: &[(&str, &str)]) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("warren-plugins-{service}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for (name, example) in plugins {
        std::fs::copy(plugins_dir().join(format!("{example}.wasm")), dir.join(format!("{name}.wasm"))).unwrap();
    }
    dir
}

/// Deploys a new version of a plugin the way the README says: write a temp file in the same
/// folder, then rename it over the plugin's file.
pub fn deploy_by_rename(dir: &Path, plugin: &str, bytes: &[u8]) {
    let temp = dir.join(format!(".{plugin}.wasm.tmp"));
    std::fs::write(&temp, bytes).unwrap();
    std::fs::rename(&temp, dir.join(format!("{plugin}.wasm"))).unwrap();
}

/// A free TCP address on loopback for a test's own listener.
pub fn free_address() -> std::net::SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

/// `GET path` on `addr` over plain HTTP/1.0: the status code and the body.
pub fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).expect("the metrics endpoint listens");
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response.split(' ').nth(1).and_then(|s| s.parse().ok()).expect("an HTTP status line");
    let body = response.split_once("\r\n\r\n").map_or("", |(_, body)| body).to_string();
    (status, body)
}

/// Waits until `condition` holds, checking every 20 ms; panics with `what` at the deadline.
pub async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let until = tokio::time::Instant::now() + DEADLINE;
    while !condition() {
        assert!(tokio::time::Instant::now() < until, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A service name no other test uses: `t-<what>-<8 hex>`.
pub fn unique_service(what: &str) -> String {
    format!("t-{what}-{}", &uuid::Uuid::new_v4().simple().to_string()[..8])
}

/// A config for `service` with the example plugins; `rest` is appended TOML
/// (`[[request]]` tables, `[limits]`, …).
pub fn config(service: &str, rest: &str) -> Config {
    config_in(service, plugins_dir(), rest)
}

/// A config for `service` with plugins from `plugins`; `rest` starts inside `[broker]`.
pub fn config_in(service: &str, plugins: &Path, rest: &str) -> Config {
    let text = format!(
        "[service]\nname = \"{service}\"\nplugins = \"{}\"\n[broker]\nurl = \"{}\"\n{rest}",
        plugins.display(),
        broker_url()
    );
    Config::parse(Path::new("test.toml"), &text, None).expect("the test config parses")
}

/// `[[request]]` tables serving each `(routing key, plugin)`.
pub fn requests(handlers: &[(&str, &str)]) -> String {
    handlers
        .iter()
        .map(|(key, plugin)| format!("[[request]]\nrouting_key = \"{key}\"\nplugin = \"{plugin}\"\n"))
        .collect()
}

/// The longest any one broker test may run: past it the test fails, naming itself, instead
/// of hanging the suite.
pub const TEST_WATCHDOG: Duration = Duration::from_secs(120);

/// Runs a test body under [`TEST_WATCHDOG`].
pub async fn within<F: std::future::Future<Output = ()>>(test: &str, body: F) {
    if tokio::time::timeout(TEST_WATCHDOG, body).await.is_err() {
        panic!("{test} did not finish within {} s: something it awaits never completed", TEST_WATCHDOG.as_secs());
    }
}

/// Declares an integration test against the real broker: a multi-threaded tokio test whose
/// body runs under [`TEST_WATCHDOG`].
#[macro_export]
macro_rules! broker_test {
    ($(#[$meta:meta])* async fn $name:ident() $body:block) => {
        $(#[$meta])*
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            $crate::within(stringify!($name), async move $body).await
        }
    };
}

/// Sends the host's logs to the test output (shown for failing tests; `RUST_LOG` filters).
pub fn init_logging() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(warren::cli::DEFAULT_LOG_FILTER));
        let _ = tracing_subscriber::fmt().with_env_filter(filter).with_test_writer().try_init();
    });
}

/// Starts a host on `config`; panics with the host's own error message if it cannot.
pub async fn start(config: &Config) -> Server {
    init_logging();
    match Server::start(config).await {
        Ok(server) => server,
        Err(error) => panic!("the host did not start: {error}"),
    }
}

pub async fn connect() -> Connection {
    Connection::connect(&broker_url(), ConnectionProperties::default()).await.expect("connecting to RabbitMQ")
}

fn text_value(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s))
}

/// A string header of a delivery.
pub fn header(delivery: &Delivery, name: &str) -> Option<String> {
    match delivery.properties.headers().as_ref()?.inner().get(name)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).to_string()),
        AMQPValue::ShortString(s) => Some(s.to_string()),
        other => Some(format!("{other:?}")),
    }
}

/// Consumes `queue`, acking each delivery and handing it over on the returned channel.
/// Everything published to `exchange` from now on, through an exclusive queue bound to it
/// with an empty key (what a fanout exchange, like Warren's dead-letter exchange, delivers).
pub async fn collect(connection: &Connection, exchange: &str) -> mpsc::UnboundedReceiver<Delivery> {
    let channel = connection.create_channel().await.unwrap();
    let options = QueueDeclareOptions { exclusive: true, ..Default::default() };
    let queue = channel.queue_declare("".into(), options, FieldTable::default()).await.unwrap();
    channel
        .queue_bind(queue.name().clone(), exchange.into(), "".into(), Default::default(), FieldTable::default())
        .await
        .unwrap();
    consume(&channel, queue.name().as_str()).await
}

pub async fn consume(channel: &Channel, queue: &str) -> mpsc::UnboundedReceiver<Delivery> {
    let mut consumer = channel
        .basic_consume(queue.into(), "".into(), BasicConsumeOptions::default(), FieldTable::default())
        .await
        .unwrap();
    let (tx, deliveries) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(Ok(delivery)) = consumer.next().await {
            // An ack that fails (connection cut) leaves the message to be redelivered.
            if delivery.ack(BasicAckOptions::default()).await.is_err() || tx.send(delivery).is_err() {
                break;
            }
        }
    });
    deliveries
}

/// A client of service `target` as goamqp sets one up: it declares
/// `<target>.headers.exchange.response.queue.<name>`, bound per routing key with
/// `service=<name>`, and publishes requests to `<target>.direct.exchange.request`.
pub struct GoClient {
    pub name: String,
    pub target: String,
    pub connection: Connection,
    publisher: Channel,
    responses: mpsc::UnboundedReceiver<Delivery>,
}

impl GoClient {
    pub async fn new(target: &str, name: &str, routing_keys: &[&str]) -> GoClient {
        let connection = connect().await;
        let channel = connection.create_channel().await.unwrap();
        let response_exchange = format!("{target}.headers.exchange.response");
        let queue = format!("{target}.headers.exchange.response.queue.{name}");
        let durable = ExchangeDeclareOptions { durable: true, ..Default::default() };
        channel
            .exchange_declare(response_exchange.as_str().into(), ExchangeKind::Headers, durable, FieldTable::default())
            .await
            .unwrap();
        let mut arguments = FieldTable::default();
        arguments.insert("x-expires".into(), AMQPValue::LongLongInt(432_000_000));
        channel
            .queue_declare(
                queue.as_str().into(),
                QueueDeclareOptions { durable: true, ..Default::default() },
                arguments,
            )
            .await
            .unwrap();
        for key in routing_keys {
            let mut binding = FieldTable::default();
            binding.insert("service".into(), text_value(name));
            channel
                .queue_bind(
                    queue.as_str().into(),
                    response_exchange.as_str().into(),
                    (*key).into(),
                    QueueBindOptions::default(),
                    binding,
                )
                .await
                .unwrap();
        }
        let responses = consume(&channel, &queue).await;
        let publisher = connection.create_channel().await.unwrap();
        publisher.confirm_select(ConfirmSelectOptions::default()).await.unwrap();
        GoClient { name: name.to_string(), target: target.to_string(), connection, publisher, responses }
    }

    /// Publishes a request as goamqp does (JSON content type, persistent, `service` header),
    /// plus `extra` headers, and waits for the broker's confirm.
    pub async fn request(&self, routing_key: &str, body: &[u8], correlation_id: &str) {
        let mut headers = FieldTable::default();
        headers.insert("service".into(), text_value(&self.name));
        self.publish(
            routing_key,
            body,
            BasicProperties::default().with_headers(headers).with_correlation_id(correlation_id.into()),
        )
        .await;
    }

    /// Publishes raw to `<target>.direct.exchange.request` with exactly these properties.
    pub async fn publish(&self, routing_key: &str, body: &[u8], properties: BasicProperties) {
        let exchange = format!("{}.direct.exchange.request", self.target);
        let properties = properties.with_content_type("application/json".into()).with_delivery_mode(2);
        let confirm = self
            .publisher
            .basic_publish(
                exchange.as_str().into(),
                routing_key.into(),
                BasicPublishOptions::default(),
                body,
                properties,
            )
            .await
            .unwrap()
            .await
            .unwrap();
        assert!(matches!(confirm, Confirmation::Ack(None)), "the broker did not take the request: {confirm:?}");
    }

    /// The next response, or `None` if none comes within `wait`.
    pub async fn response(&mut self, wait: Duration) -> Option<Delivery> {
        tokio::time::timeout(wait, self.responses.recv()).await.ok().flatten()
    }

    /// Deletes the client's response queue.
    pub async fn cleanup(self) {
        let channel = self.connection.create_channel().await.unwrap();
        let queue = format!("{}.headers.exchange.response.queue.{}", self.target, self.name);
        let _ = channel.queue_delete(queue.as_str().into(), QueueDeleteOptions::default()).await;
        bounded_close(self.connection.close(200, "done".into())).await;
    }
}

/// How many messages are ready in `queue` (a passive declare: it must exist).
pub async fn ready_messages(connection: &Connection, queue: &str) -> u32 {
    let channel = connection.create_channel().await.unwrap();
    let declared = channel
        .queue_declare(queue.into(), QueueDeclareOptions { passive: true, ..Default::default() }, FieldTable::default())
        .await
        .unwrap_or_else(|e| panic!("queue {queue} should exist: {e}"));
    bounded_close(channel.close(200, "done".into())).await;
    declared.message_count()
}

/// Messages dead-lettered from `service`'s queues, caught through a broker policy (set with
/// `rabbitmqctl`, so the queue arguments stay exactly goamqp's).
pub struct DeadLetters {
    policy: String,
    queue: String,
    connection: Connection,
    deliveries: mpsc::UnboundedReceiver<Delivery>,
}

impl DeadLetters {
    /// Call before the host declares its queues: policies apply to queues as they appear.
    pub async fn catch(service: &str) -> DeadLetters {
        let exchange = format!("{service}.dlx");
        let queue = format!("{service}.dead-letters");
        let connection = connect().await;
        let channel = connection.create_channel().await.unwrap();
        channel
            .exchange_declare(
                exchange.as_str().into(),
                ExchangeKind::Fanout,
                ExchangeDeclareOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        channel
            .queue_declare(queue.as_str().into(), QueueDeclareOptions::default(), FieldTable::default())
            .await
            .unwrap();
        channel
            .queue_bind(
                queue.as_str().into(),
                exchange.as_str().into(),
                "".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        let policy = format!("{service}-dlx");
        let pattern = format!("^{}\\.direct\\.exchange\\.request\\.queue$", service.replace('-', "\\-"));
        let definition = format!("{{\"dead-letter-exchange\":\"{exchange}\"}}");
        rabbitmqctl(&["set_policy", &policy, &pattern, &definition, "--apply-to", "queues"]);
        let deliveries = consume(&channel, &queue).await;
        DeadLetters { policy, queue, connection, deliveries }
    }

    /// The next dead-lettered message, or `None` within `wait`.
    pub async fn next(&mut self, wait: Duration) -> Option<Delivery> {
        tokio::time::timeout(wait, self.deliveries.recv()).await.ok().flatten()
    }

    /// The `reason` RabbitMQ recorded in the message's `x-death` header (`rejected`, …).
    pub fn death_reason(delivery: &Delivery) -> Option<String> {
        let AMQPValue::FieldArray(deaths) = delivery.properties.headers().as_ref()?.inner().get("x-death")? else {
            return None;
        };
        let AMQPValue::FieldTable(first) = deaths.as_slice().first()? else { return None };
        match first.inner().get("reason")? {
            AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).to_string()),
            _ => None,
        }
    }

    pub async fn cleanup(self) {
        rabbitmqctl(&["clear_policy", &self.policy]);
        let channel = self.connection.create_channel().await.unwrap();
        let _ = channel.queue_delete(self.queue.as_str().into(), QueueDeleteOptions::default()).await;
        bounded_close(self.connection.close(200, "done".into())).await;
    }
}

/// Runs `rabbitmqctl` with `args` (quiet) and returns its stdout; panics if it fails.
pub fn rabbitmqctl(args: &[&str]) -> String {
    let output = std::process::Command::new("rabbitmqctl")
        .args(args)
        .arg("-q")
        .output()
        .expect("running rabbitmqctl (is RabbitMQ installed on this machine?)");
    assert!(output.status.success(), "rabbitmqctl {args:?} failed: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).unwrap()
}

/// The broker's own JSON listing (`rabbitmqctl list_<what> <columns> --formatter json`).
pub fn broker_listing(what: &str, columns: &[&str]) -> Vec<serde_json::Value> {
    let mut args = vec![what];
    args.extend_from_slice(columns);
    args.extend_from_slice(&["--formatter", "json"]);
    serde_json::from_str(&rabbitmqctl(&args)).expect("rabbitmqctl prints JSON")
}

/// Deletes the queues and exchanges a host for `service` declared on the request side.
pub async fn delete_service(service: &str) {
    let connection = connect().await;
    let channel = connection.create_channel().await.unwrap();
    let queue = format!("{service}.direct.exchange.request.queue");
    let _ = channel.queue_delete(queue.as_str().into(), QueueDeleteOptions::default()).await;
    for exchange in [format!("{service}.direct.exchange.request"), format!("{service}.headers.exchange.response")] {
        let _ = channel.exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default()).await;
    }
    bounded_close(connection.close(200, "done".into())).await;
}

/// One request-serving test setup: a host for a fresh service, a goamqp client of it, and a
/// catcher of what the host rejects (dead-lettered through a broker policy).
pub struct Scenario {
    pub service: String,
    pub server: Server,
    pub client: GoClient,
    pub dead: DeadLetters,
}

impl Scenario {
    /// A host for `t-<what>-…` with `[[request]]` handlers and `extra` config, a client
    /// that expects responses for every handler key plus `more_keys`.
    pub async fn start(what: &str, handlers: &[(&str, &str)], extra: &str, more_keys: &[&str]) -> Scenario {
        Scenario::start_in(&unique_service(what), plugins_dir(), handlers, extra, more_keys).await
    }

    /// Like [`Scenario::start`], for a given service name and plugins folder.
    pub async fn start_in(
        service: &str,
        plugins: &Path,
        handlers: &[(&str, &str)],
        extra: &str,
        more_keys: &[&str],
    ) -> Scenario {
        let config = config_in(service, plugins, &format!("{extra}\n{}", requests(handlers)));
        let keys: Vec<&str> = handlers.iter().map(|(key, _)| *key).chain(more_keys.iter().copied()).collect();
        Scenario::from_config(config, &keys).await
    }

    /// A scenario for a ready-made config; the client expects responses for `keys`.
    pub async fn from_config(config: Config, keys: &[&str]) -> Scenario {
        let service = config.service.clone();
        let dead = DeadLetters::catch(&service).await;
        let server = start(&config).await;
        let client = GoClient::new(&service, "go-client", keys).await;
        Scenario { service, server, client, dead }
    }

    /// The host's request queue, spelled out.
    pub fn request_queue(&self) -> String {
        format!("{}.direct.exchange.request.queue", self.service)
    }

    /// Stops the host, checks that every message it got was settled (stopping closes its
    /// channels, so an unacked message would be back in the queue), and removes everything
    /// the test declared.
    pub async fn finish(self) {
        let queue = self.request_queue();
        self.server.stop().await.expect("the host stops cleanly");
        let left = tokio::time::timeout(CLEANUP, ready_messages(&self.client.connection, &queue))
            .await
            .expect("the broker answered a passive declare");
        assert_eq!(left, 0, "{left} message(s) were never acked or rejected");
        // Best effort: a broker that is slow to close must not hang the suite.
        let _ = tokio::time::timeout(CLEANUP, self.client.cleanup()).await;
        let _ = tokio::time::timeout(CLEANUP, self.dead.cleanup()).await;
        let _ = tokio::time::timeout(CLEANUP, delete_service(&self.service)).await;
    }
}
