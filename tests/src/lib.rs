//! Shared helpers for the integration tests: the example plugins built once per test binary,
//! a host started on a config written for the test, goamqp peers with their own lapin code
//! (names spelled out here, not taken from the host's naming module), the broker's own view of
//! things through `rabbitmqctl`, and [`Cleanup`] guards that remove what a test declared even
//! when it fails.
//!
//! # The goamqp peers
//! [`GoClient`] and [`GoService`] behave as a Go service built on goamqp does on the wire
//! (`../shared/SPEC.md` §1): one channel for publishing and consuming, `basic.qos(20,
//! global)`, manual acks, no publisher confirms, no `correlation_id`, `message_id` or
//! `reply_to`, header `service` only, content type `application/json`, delivery mode 2. A
//! goamqp client never matches an answer to its request: whatever arrives on its response
//! queue for a routing key is handed to that key's handler. Tests therefore tell answers apart
//! by their routing key and body, never by a correlation id.
//!
//! Every test uses its own service name ([`unique_service`]), so tests never see each other's
//! queues, and holds a [`Cleanup`] that removes them.

pub mod pg_server;
pub mod postgres;
pub mod raw;
pub mod relay;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use futures_lite::StreamExt;
use lapin::message::Delivery;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use tokio::sync::mpsc;

pub use warren::amqp::broker::bounded_close;
pub use warren::config::Config;
pub use warren::server::Server;

pub use postgres::TestDb;

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
        let started = std::time::Instant::now();
        let _counted = BuildTime(started);
        let root = workspace();
        let out = root.join("target").join(out);
        // Every plugin is required: a missing toolchain fails the tests, it is not skipped.
        warren::tooling::builder::build_plugins(&root.join(source), &out, &root.join("target/plugin-build"), |_| true)
            .unwrap_or_else(|e| panic!("building {source}: {e}"));
        out
    })
}

/// Milliseconds spent building plugins in this test binary: [`within`] does not count them
/// against a test's watchdog (a cold Python or JavaScript build on a busy machine takes minutes).
static BUILD_MS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Adds the time since its start to [`BUILD_MS`] when dropped (also if the build panics).
struct BuildTime(std::time::Instant);

impl Drop for BuildTime {
    fn drop(&mut self) {
        BUILD_MS.fetch_add(self.0.elapsed().as_millis() as u64, std::sync::atomic::Ordering::SeqCst);
    }
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

/// One fixture, `tests/fixtures/<name>`, built alone (as `warren build` builds it) once per
/// test binary, for a test that needs no other: the path of its `<name>.wasm`.
pub fn fixture(name: &str) -> PathBuf {
    static BUILT: std::sync::Mutex<Vec<(String, PathBuf)>> = std::sync::Mutex::new(Vec::new());
    let mut built = BUILT.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((_, wasm)) = built.iter().find(|(n, _)| n == name) {
        return wasm.clone();
    }
    let _counted = BuildTime(std::time::Instant::now());
    let root = workspace();
    let sources = warren::tooling::builder::find_plugins(&root.join("tests/fixtures")).expect("tests/fixtures");
    let source = sources.into_iter().find(|p| p.name == name).unwrap_or_else(|| panic!("no fixture {name}"));
    warren::tooling::builder::ensure_target().expect("the wasm32-wasip2 target");
    let out = root.join("target/test-fixtures");
    let wasm = warren::tooling::builder::build_plugin(&source, &out, &root.join("target/plugin-build"))
        .unwrap_or_else(|e| panic!("building the fixture {name}: {e}"))
        .wasm;
    built.push((name.to_string(), wasm.clone()));
    wasm
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

/// `warren_messages_total{plugin, outcome}` on the host's `/metrics` at `addr` (0 if absent).
pub fn messages_total(addr: std::net::SocketAddr, plugin: &str, outcome: &str) -> f64 {
    let (status, text) = http_get(addr, "/metrics");
    assert_eq!(status, 200, "/metrics: {text}");
    let sample = format!("warren_messages_total{{plugin=\"{plugin}\",outcome=\"{outcome}\"}} ");
    text.lines().find_map(|line| line.strip_prefix(&sample)?.parse().ok()).unwrap_or(0.0)
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

/// Where the tests' hosts keep their private state (the code cache): one folder per service
/// and plugins folder under it, never the user's own `~/.local/state/warren`.
pub fn test_state_root() -> PathBuf {
    std::env::temp_dir().join("warren-test-state")
}

/// A config for `service` with plugins from `plugins`; `rest` starts inside `[broker]`.
pub fn config_in(service: &str, plugins: &Path, rest: &str) -> Config {
    let text = format!(
        "[service]\nname = \"{service}\"\nplugins = \"{}\"\nstate_dir = \"{}\"\n[broker]\nurl = \"{}\"\n{rest}",
        plugins.display(),
        test_state_root().display(),
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
/// of hanging the suite. Generous: a cold Cranelift compile of an 18 MiB Python component takes
/// 45 s on a 2-core machine that also runs other test binaries, and two such tests run at once.
pub const TEST_WATCHDOG: Duration = Duration::from_secs(300);

/// Runs a test body under [`TEST_WATCHDOG`], not counting time spent building plugins.
pub async fn within<F: std::future::Future<Output = ()>>(test: &str, body: F) {
    let started = tokio::time::Instant::now();
    let built_before = BUILD_MS.load(std::sync::atomic::Ordering::SeqCst);
    let mut body = std::pin::pin!(body);
    loop {
        let building = Duration::from_millis(BUILD_MS.load(std::sync::atomic::Ordering::SeqCst) - built_before);
        let Some(left) = (TEST_WATCHDOG + building).checked_sub(started.elapsed()).filter(|l| !l.is_zero()) else {
            panic!(
                "{test} did not finish within {} s (plus {} s of plugin builds): something it awaits never completed",
                TEST_WATCHDOG.as_secs(),
                building.as_secs()
            );
        };
        if tokio::time::timeout(left, body.as_mut()).await.is_ok() {
            return;
        }
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

static CAPTURED: std::sync::Mutex<String> = std::sync::Mutex::new(String::new());

/// Writes the host's log into [`CAPTURED`].
struct Capture;

impl std::io::Write for Capture {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        CAPTURED.lock().unwrap_or_else(|p| p.into_inner()).push_str(&String::from_utf8_lossy(bytes));
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Installs, once per test binary, a log subscriber (`filter`, no colours) that writes the
/// host's log both to the test output and to what [`captured_log`] returns. Call it first in
/// every test of a binary that reads the log, so it is in place before any host starts
/// ([`start`] then finds it).
pub fn capture_logs(filter: &str) {
    use tracing_subscriber::fmt::writer::MakeWriterExt;
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        let filter = tracing_subscriber::EnvFilter::new(filter);
        let writer = tracing_subscriber::fmt::TestWriter::default().and(|| Capture);
        let _ = tracing_subscriber::fmt().with_env_filter(filter).with_ansi(false).with_writer(writer).try_init();
    });
}

/// Everything the host logged so far in this test binary (after [`capture_logs`]).
pub fn captured_log() -> String {
    CAPTURED.lock().unwrap_or_else(|p| p.into_inner()).clone()
}

/// Starts a host on `config`; panics with the host's own error message if it cannot.
pub async fn start(config: &Config) -> Server {
    init_logging();
    match Server::start(config).await {
        Ok(server) => server,
        Err(error) => panic!("the host did not start: {error}"),
    }
}

/// A new connection to the test broker.
pub async fn connect() -> Connection {
    Connection::connect(&broker_url(), ConnectionProperties::default()).await.expect("connecting to RabbitMQ")
}

fn text_value(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s))
}

/// A string header of a delivery.
pub fn header(delivery: &Delivery, name: &str) -> Option<String> {
    properties_header(&delivery.properties, name)
}

/// A string header in message properties (other types are shown as debug text).
pub fn properties_header(properties: &BasicProperties, name: &str) -> Option<String> {
    match properties.headers().as_ref()?.inner().get(name)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).to_string()),
        AMQPValue::ShortString(s) => Some(s.to_string()),
        other => Some(format!("{other:?}")),
    }
}

/// The names of a message's headers, sorted.
pub fn header_names(properties: &BasicProperties) -> Vec<String> {
    let mut names: Vec<String> =
        properties.headers().as_ref().map(|t| t.inner().keys().map(|k| k.to_string()).collect()).unwrap_or_default();
    names.sort();
    names
}

/// Asserts that a message Warren sent carries what goamqp sends and nothing goamqp does not:
/// content type `application/json`, delivery mode 2, header `service` = `service`, no
/// `correlation_id`, `message_id`, `reply_to` or other property, and headers exactly
/// `service` and `traceparent` (Warren's trace context, allowed by SPEC §1) plus
/// `plugin_headers`, the names the plugin set itself.
pub fn assert_goamqp_message(delivery: &Delivery, service: &str, plugin_headers: &[&str]) {
    assert_goamqp_message_with(delivery, service, None, plugin_headers);
}

/// Like [`assert_goamqp_message`] for an answer to a request that carried `correlation_id`:
/// Warren copies it across (SPEC §1 allows it; goamqp ignores it). `None`: the request had
/// none, and the answer must have none either.
pub fn assert_goamqp_message_with(
    delivery: &Delivery,
    service: &str,
    correlation_id: Option<&str>,
    plugin_headers: &[&str],
) {
    let what = format!("message on '{}' with key '{}'", delivery.exchange, delivery.routing_key);
    assert_goamqp_properties(&delivery.properties, &what, service, correlation_id, plugin_headers);
}

/// The checks of [`assert_goamqp_message_with`] on a message's properties; `what` names the
/// message in a failure.
pub fn assert_goamqp_properties(
    props: &BasicProperties,
    what: &str,
    service: &str,
    correlation_id: Option<&str>,
    plugin_headers: &[&str],
) {
    assert_eq!(properties_header(props, "service").as_deref(), Some(service), "{what}: header service");
    assert_eq!(props.content_type().as_ref().map(|c| c.as_str()), Some("application/json"), "{what}: content type");
    assert_eq!(*props.delivery_mode(), Some(2), "{what}: delivery mode (persistent)");
    assert_eq!(props.correlation_id().as_ref().map(|c| c.as_str()), correlation_id, "{what}: correlation_id");
    assert_eq!(*props.message_id(), None, "{what}: goamqp sets no message_id");
    assert_eq!(*props.reply_to(), None, "{what}: goamqp sets no reply_to");
    assert_eq!(*props.content_encoding(), None, "{what}: content encoding");
    assert_eq!(*props.priority(), None, "{what}: priority");
    assert_eq!(*props.expiration(), None, "{what}: expiration");
    assert_eq!(*props.timestamp(), None, "{what}: timestamp");
    assert_eq!(*props.kind(), None, "{what}: type");
    assert_eq!(*props.user_id(), None, "{what}: user_id");
    assert_eq!(*props.app_id(), None, "{what}: app_id");
    let mut expected: Vec<String> =
        ["service", "traceparent"].iter().chain(plugin_headers).map(|h| h.to_string()).collect();
    expected.sort();
    expected.dedup();
    assert_eq!(header_names(props), expected, "{what}: headers");
}

/// Consumes `queue` on `channel` with manual acks and hands each delivery over on the returned
/// receiver, then acks it (as goamqp acks once its handler returned): a delivery is always
/// either on the broker (ready or unacked) or in the receiver, never in between.
pub async fn consume(channel: &Channel, queue: &str) -> mpsc::UnboundedReceiver<Delivery> {
    let mut consumer = channel
        .basic_consume(queue.into(), "".into(), BasicConsumeOptions::default(), FieldTable::default())
        .await
        .unwrap();
    let (tx, deliveries) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(Ok(delivery)) = consumer.next().await {
            let acker = delivery.acker.clone();
            // The host's start-time check that a dead-letter exchange has a queue bound
            // (`x-warren-probe`, expiration 0) reaches a consumer waiting on that queue: it is
            // no message of the test's.
            let probe = delivery.properties.headers().as_ref().is_some_and(|t| t.contains_key("x-warren-probe"));
            if probe {
                if acker.ack(BasicAckOptions::default()).await.is_err() {
                    break;
                }
                continue;
            }
            if tx.send(delivery).is_err() {
                break; // nobody listens: leave it unacked, it goes back when the channel closes
            }
            // An ack that fails (connection cut) leaves the message to be redelivered.
            if acker.ack(BasicAckOptions::default()).await.is_err() {
                break;
            }
        }
    });
    deliveries
}

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

/// goamqp's queue arguments: `x-expires` = 5 days in ms (shown as `signedint` by RabbitMQ).
fn goamqp_queue_arguments() -> FieldTable {
    let mut arguments = FieldTable::default();
    // goamqp's `int(432000000)`: the Go client encodes an `int` as a 32-bit signed integer.
    arguments.insert("x-expires".into(), AMQPValue::LongInt(432_000_000));
    arguments
}

/// A durable, non-auto-delete exchange with no arguments, as goamqp declares every exchange.
async fn goamqp_exchange(channel: &Channel, name: &str, kind: ExchangeKind) {
    let durable = ExchangeDeclareOptions { durable: true, ..Default::default() };
    channel
        .exchange_declare(name.into(), kind, durable, FieldTable::default())
        .await
        .unwrap_or_else(|e| panic!("declaring exchange {name}: {e}"));
}

/// A durable queue with goamqp's arguments.
async fn goamqp_queue(channel: &Channel, name: &str) {
    let durable = QueueDeclareOptions { durable: true, ..Default::default() };
    channel
        .queue_declare(name.into(), durable, goamqp_queue_arguments())
        .await
        .unwrap_or_else(|e| panic!("declaring queue {name}: {e}"));
}

/// goamqp's one channel: opened first, then `basic.qos(20, global)` (goamqp's `Start`).
async fn goamqp_channel(connection: &Connection) -> Channel {
    let channel = connection.create_channel().await.unwrap();
    channel.basic_qos(20, BasicQosOptions { global: true }).await.unwrap();
    channel
}

/// Publishes as goamqp's `publishMessage` does: not mandatory, no confirm awaited (the
/// channel has none), content type JSON, delivery mode 2, the given headers.
async fn goamqp_publish(
    channel: &Channel,
    exchange: &str,
    routing_key: &str,
    body: &[u8],
    properties: BasicProperties,
) -> Result<(), lapin::Error> {
    let properties = properties.with_content_type("application/json".into()).with_delivery_mode(2);
    // Without confirms the returned future resolves to `NotRequested` at once: nothing to wait for.
    channel
        .basic_publish(exchange.into(), routing_key.into(), BasicPublishOptions::default(), body, properties)
        .await
        .map(drop)
}

/// A client of service `target`, as goamqp sets one up with `ServicePublisher(target)` and
/// `ServiceResponseListener(target, key, …)` for each of `routing_keys`:
///
/// - one connection, one channel with `basic.qos(20, global)`, no publisher confirms;
/// - declares `<target>.direct.exchange.request` (direct) and
///   `<target>.headers.exchange.response` (headers), durable;
/// - declares `<target>.headers.exchange.response.queue.<name>` (durable, `x-expires`
///   432000000), bound per routing key with the argument `service=<name>`, and consumes it with
///   manual acks;
/// - [`GoClient::request`] publishes to `<target>.direct.exchange.request` with content type
///   JSON, delivery mode 2 and header `service=<name>`, and nothing else: no correlation id.
///
/// Answers are not matched to requests (goamqp never does): [`GoClient::response`] yields them
/// in arrival order, and a test tells them apart by routing key and body. The response queue
/// is deleted when the client is dropped, also when the test fails.
pub struct GoClient {
    pub name: String,
    pub target: String,
    /// The client's connection (free for a test's own extra channels).
    pub connection: Connection,
    channel: Channel,
    queue: String,
    responses: mpsc::UnboundedReceiver<Delivery>,
    _cleanup: Cleanup,
}

impl GoClient {
    /// Connects as service `name`, a client of `target` expecting answers for `routing_keys`.
    pub async fn new(target: &str, name: &str, routing_keys: &[&str]) -> GoClient {
        let connection = connect().await;
        let channel = goamqp_channel(&connection).await;
        let request_exchange = format!("{target}.direct.exchange.request");
        let response_exchange = format!("{target}.headers.exchange.response");
        let queue = format!("{target}.headers.exchange.response.queue.{name}");
        goamqp_exchange(&channel, &request_exchange, ExchangeKind::Direct).await;
        for key in routing_keys {
            goamqp_exchange(&channel, &response_exchange, ExchangeKind::Headers).await;
            goamqp_queue(&channel, &queue).await;
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
        if routing_keys.is_empty() {
            goamqp_exchange(&channel, &response_exchange, ExchangeKind::Headers).await;
            goamqp_queue(&channel, &queue).await;
        }
        let responses = consume(&channel, &queue).await;
        // Made last: a `new` cancelled half-way (a timeout) deletes nothing someone else uses.
        let cleanup = Cleanup::new();
        cleanup.queue(&queue).shared_exchange(&request_exchange).shared_exchange(&response_exchange);
        GoClient {
            name: name.to_string(),
            target: target.to_string(),
            connection,
            channel,
            queue,
            responses,
            _cleanup: cleanup,
        }
    }

    /// The client's response queue, `<target>.headers.exchange.response.queue.<name>`.
    pub fn response_queue(&self) -> &str {
        &self.queue
    }

    /// Sends a request as goamqp's `Publisher.Publish` does: `body` as given (goamqp sends
    /// `json.Marshal` of a message; [`GoClient::request_json`] does that), header `service` =
    /// this client's name, and no other property.
    pub async fn request(&self, routing_key: &str, body: &[u8]) {
        let mut headers = FieldTable::default();
        headers.insert("service".into(), text_value(&self.name));
        self.publish(routing_key, body, BasicProperties::default().with_headers(headers)).await;
    }

    /// Sends `message` encoded as JSON, as goamqp does.
    pub async fn request_json(&self, routing_key: &str, message: &serde_json::Value) {
        self.request(routing_key, &serde_json::to_vec(message).unwrap()).await;
    }

    /// Publishes to `<target>.direct.exchange.request` with exactly `properties` plus content
    /// type JSON and delivery mode 2, on the client's one channel, without a confirm. For
    /// requests goamqp could not send (no `service` header, extra headers, a correlation id).
    pub async fn publish(&self, routing_key: &str, body: &[u8], properties: BasicProperties) {
        let exchange = format!("{}.direct.exchange.request", self.target);
        goamqp_publish(&self.channel, &exchange, routing_key, body, properties)
            .await
            .unwrap_or_else(|e| panic!("publishing to {exchange}: {e}"));
    }

    /// Returns once the broker has routed everything this client published so far (a
    /// synchronous method on the same channel: RabbitMQ handles a channel's frames in order).
    pub async fn sync(&self) {
        let passive = QueueDeclareOptions { passive: true, ..Default::default() };
        self.channel.queue_declare(self.queue.as_str().into(), passive, FieldTable::default()).await.unwrap();
    }

    /// The next answer, in arrival order, or `None` if none comes within `wait`.
    pub async fn response(&mut self, wait: Duration) -> Option<Delivery> {
        tokio::time::timeout(wait, self.responses.recv()).await.ok().flatten()
    }

    /// Asserts, from the broker's own state, that no answer came for anything sent so far:
    /// waits until `queue` (the host's request queue) holds no message ready or unacked —
    /// the host publishes an answer, confirmed, before it settles the request — then checks
    /// that this client's response queue holds nothing ready or unacked and that no answer
    /// was handed over.
    pub async fn assert_no_response(&mut self, queue: &str) {
        self.sync().await;
        wait_until_settled(queue).await;
        let (ready, unacked) = queue_counts(&self.queue).await.unwrap_or_else(|| panic!("no queue {}", self.queue));
        assert_eq!((ready, unacked), (0, 0), "answers are waiting in {} (ready, unacked)", self.queue);
        if let Ok(answer) = self.responses.try_recv() {
            panic!(
                "an answer came (key {}): {}",
                answer.routing_key,
                String::from_utf8_lossy(&answer.data[..answer.data.len().min(200)])
            );
        }
    }

    /// Closes the connection; the response queue goes when the client is dropped.
    pub async fn cleanup(self) {
        bounded_close(self.connection.close(200, "done".into())).await;
    }
}

/// A request a [`GoService`] received.
#[derive(Debug, Clone)]
pub struct Seen {
    pub routing_key: String,
    pub body: Vec<u8>,
    pub properties: BasicProperties,
}

impl Seen {
    /// [`assert_goamqp_properties`] for this request: sent by `service`, no correlation id,
    /// headers `service`, `traceparent` and `plugin_headers`.
    pub fn assert_goamqp(&self, service: &str, plugin_headers: &[&str]) {
        let what = format!("request with key '{}'", self.routing_key);
        assert_goamqp_properties(&self.properties, &what, service, None, plugin_headers);
    }
}

/// A goamqp service `name` answering requests with `RequestResponseHandler` for each of its
/// routing keys, as goamqp does it, line by line (SPEC §1):
///
/// - one connection, one channel with `basic.qos(20, global)`, no publisher confirms;
/// - declares `<name>.headers.exchange.response` (headers), `<name>.direct.exchange.request`
///   (direct), both durable, and `<name>.direct.exchange.request.queue` (durable, `x-expires`
///   432000000), bound with each key; consumes it with manual acks, one delivery at a time;
/// - a key it has no handler for, or a body that is not JSON: reject without requeue;
/// - otherwise calls `handler(routing_key, body)`, re-encodes the JSON it returns (as
///   `json.Marshal` would; a handler must return JSON), publishes it to
///   `<name>.headers.exchange.response` with the request's routing key, header `service` =
///   the request's `service` header and nothing else (no correlation id), then acks;
/// - a request whose `service` header is missing or not a string is nacked with requeue, as
///   goamqp's handler error is (it comes back, forever).
///
/// Its request queue is deleted when it stops or is dropped; its exchanges go with the last
/// [`Cleanup`] of the test binary if nothing else still uses them.
pub struct GoService {
    pub name: String,
    connection: Connection,
    seen: std::sync::Arc<std::sync::Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
    _cleanup: Cleanup,
}

impl GoService {
    /// Starts service `name` answering `keys` with `handler(routing key, body) -> answer`.
    pub async fn start(
        name: &str,
        keys: &[&str],
        handler: impl Fn(&str, &[u8]) -> Vec<u8> + Send + Sync + 'static,
    ) -> GoService {
        let request_exchange = format!("{name}.direct.exchange.request");
        let response_exchange = format!("{name}.headers.exchange.response");
        let queue = format!("{name}.direct.exchange.request.queue");
        let cleanup = Cleanup::new();
        cleanup.queue(&queue).shared_exchange(&request_exchange).shared_exchange(&response_exchange);

        let connection = connect().await;
        let channel = goamqp_channel(&connection).await;
        for key in keys {
            // ServiceRequestListener: the response exchange, then exchange, queue and binding.
            goamqp_exchange(&channel, &response_exchange, ExchangeKind::Headers).await;
            goamqp_exchange(&channel, &request_exchange, ExchangeKind::Direct).await;
            goamqp_queue(&channel, &queue).await;
            channel
                .queue_bind(
                    queue.as_str().into(),
                    request_exchange.as_str().into(),
                    (*key).into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await
                .unwrap();
        }
        let mut consumer = channel
            .basic_consume(queue.as_str().into(), "".into(), BasicConsumeOptions::default(), FieldTable::default())
            .await
            .unwrap();
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let keys: Vec<String> = keys.iter().map(|k| k.to_string()).collect();
        let record = seen.clone();
        let task = tokio::spawn(async move {
            while let Some(Ok(delivery)) = consumer.next().await {
                let key = delivery.routing_key.to_string();
                let settled = if !keys.contains(&key)
                    || serde_json::from_slice::<serde_json::Value>(&delivery.data).is_err()
                {
                    delivery.reject(BasicRejectOptions { requeue: false }).await
                } else {
                    record.lock().unwrap().push(Seen {
                        routing_key: key.clone(),
                        body: delivery.data.clone(),
                        properties: delivery.properties.clone(),
                    });
                    let answer = handler(&key, &delivery.data);
                    let answer: serde_json::Value = serde_json::from_slice(&answer).unwrap_or_else(|e| {
                        panic!("GoService handler for '{key}' returned no JSON ({e}): goamqp can only send JSON")
                    });
                    // goamqp's `SendingService`: a string header, or a handler error.
                    let requester = match delivery.properties.headers().as_ref().and_then(|t| t.inner().get("service"))
                    {
                        Some(AMQPValue::LongString(s)) => Some(String::from_utf8_lossy(s.as_bytes()).to_string()),
                        Some(AMQPValue::ShortString(s)) => Some(s.to_string()),
                        _ => None,
                    };
                    match requester {
                        None => delivery.nack(BasicNackOptions { requeue: true, multiple: false }).await,
                        Some(requester) => {
                            let mut headers = FieldTable::default();
                            headers.insert("service".into(), text_value(&requester));
                            let body = serde_json::to_vec(&answer).unwrap();
                            let properties = BasicProperties::default().with_headers(headers);
                            if let Err(error) =
                                goamqp_publish(&channel, &response_exchange, &key, &body, properties).await
                            {
                                eprintln!("GoService: publishing the answer failed: {error}");
                                break;
                            }
                            delivery.ack(BasicAckOptions::default()).await
                        }
                    }
                };
                if settled.is_err() {
                    break;
                }
            }
        });
        GoService { name: name.to_string(), connection, seen, task, _cleanup: cleanup }
    }

    /// Every request handed to the handler so far, in arrival order.
    pub fn requests_seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// Waits up to [`DEADLINE`] until at least `n` requests were handled; returns them all.
    pub async fn wait_for_requests(&self, n: usize) -> Vec<Seen> {
        let until = tokio::time::Instant::now() + DEADLINE;
        loop {
            let seen = self.requests_seen();
            if seen.len() >= n {
                return seen;
            }
            assert!(tokio::time::Instant::now() < until, "{} got {} of {n} requests", self.name, seen.len());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops consuming and closes the connection; the request queue is deleted.
    pub async fn stop(self) {
        self.task.abort();
        bounded_close(self.connection.close(200, "done".into())).await;
        // Dropping `self` deletes the request queue.
    }
}

impl Drop for GoService {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A queue of the test's own, bound to `exchange` with `keys`; yields what arrives. The
/// queue (auto-delete) is removed by `cleanup` by name — an exclusive one would live on with
/// its connection until the test's runtime ends, keeping the exchange in use. The exchange is
/// declared as goamqp does and, being shared with other tests, removed by the last [`Cleanup`]
/// if unused.
pub struct Tap {
    _connection: Connection,
    queue: String,
    deliveries: mpsc::UnboundedReceiver<Delivery>,
}

impl Tap {
    pub async fn bind(exchange: &str, kind: ExchangeKind, keys: &[&str], cleanup: &Cleanup) -> Tap {
        let queue = format!("tap.{exchange}.{}", uuid::Uuid::new_v4().simple());
        cleanup.shared_exchange(exchange).queue(&queue);
        let connection = connect().await;
        let channel = connection.create_channel().await.unwrap();
        goamqp_exchange(&channel, exchange, kind).await;
        channel
            .queue_declare(
                queue.as_str().into(),
                QueueDeclareOptions { auto_delete: true, ..Default::default() },
                FieldTable::default(),
            )
            .await
            .unwrap();
        for key in keys {
            channel
                .queue_bind(
                    queue.as_str().into(),
                    exchange.into(),
                    (*key).into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await
                .unwrap();
        }
        let deliveries = consume(&channel, &queue).await;
        Tap { _connection: connection, queue, deliveries }
    }

    /// The next message sent by `service` within [`DEADLINE`] (others on a shared stream are
    /// skipped).
    pub async fn next_from(&mut self, service: &str) -> Option<Delivery> {
        let until = tokio::time::Instant::now() + DEADLINE;
        loop {
            let delivery = tokio::time::timeout_at(until, self.deliveries.recv()).await.ok().flatten()?;
            if header(&delivery, "service").as_deref() == Some(service) {
                return Some(delivery);
            }
        }
    }

    /// Asserts from the broker's state that nothing from `service` reached this tap: the tap's
    /// queue holds nothing ready or unacked, and nothing handed over came from `service`.
    /// Call it once whatever could have published is settled.
    pub async fn assert_nothing_from(&mut self, service: &str) {
        wait_until_settled(&self.queue).await;
        while let Ok(delivery) = self.deliveries.try_recv() {
            assert_ne!(
                header(&delivery, "service").as_deref(),
                Some(service),
                "{service} published {} to {}",
                delivery.routing_key,
                delivery.exchange
            );
        }
    }
}

/// The broker's `(messages_ready, messages_unacknowledged)` of `queue`, or `None` if there is
/// no such queue (from `rabbitmqctl list_queues`, the queue's own count).
pub async fn queue_counts(queue: &str) -> Option<(u64, u64)> {
    let queue = queue.to_string();
    tokio::task::spawn_blocking(move || {
        broker_listing("list_queues", &["name", "messages_ready", "messages_unacknowledged"])
            .into_iter()
            .find(|q| q["name"] == queue.as_str())
            .map(|q| (q["messages_ready"].as_u64().unwrap_or(0), q["messages_unacknowledged"].as_u64().unwrap_or(0)))
    })
    .await
    .unwrap()
}

/// Waits until `queue` holds no message ready or unacknowledged, on the broker's own count.
pub async fn wait_until_settled(queue: &str) {
    let until = tokio::time::Instant::now() + DEADLINE;
    loop {
        let counts = queue_counts(queue).await;
        match counts {
            Some((0, 0)) => return,
            None => panic!("no queue {queue} on the broker"),
            Some(counts) => {
                assert!(tokio::time::Instant::now() < until, "{queue} never settled: (ready, unacked) = {counts:?}")
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
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

/// Messages dead-lettered from `service`'s request queue, caught through a broker policy (set
/// with `rabbitmqctl`, so the queue arguments stay exactly goamqp's). The policy, exchange
/// `<service>.dlx` and queue `<service>.dead-letters` are removed when this is dropped.
pub struct DeadLetters {
    connection: Connection,
    deliveries: mpsc::UnboundedReceiver<Delivery>,
    _cleanup: Cleanup,
}

impl DeadLetters {
    /// Call before the host declares its queues: policies apply to queues as they appear.
    pub async fn catch(service: &str) -> DeadLetters {
        DeadLetters::catch_as(service, "dlx", "dead-letters").await
    }

    /// Like [`DeadLetters::catch`], through exchange `<service>.<exchange>` into queue
    /// `<service>.<queue>` (policy `<service>-<exchange>`): for a test whose host dead-letters
    /// to `<service>.dlx` itself.
    pub async fn catch_as(service: &str, exchange: &str, queue: &str) -> DeadLetters {
        let policy = format!("{service}-{exchange}");
        let exchange = format!("{service}.{exchange}");
        let queue = format!("{service}.{queue}");
        let cleanup = Cleanup::new();
        cleanup.queue(&queue).exchange(&exchange).policy(&policy);
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
        let pattern = format!("^{}\\.direct\\.exchange\\.request\\.queue$", service.replace('-', "\\-"));
        let definition = format!("{{\"dead-letter-exchange\":\"{exchange}\"}}");
        rabbitmqctl(&["set_policy", &policy, &pattern, &definition, "--apply-to", "queues"]);
        let deliveries = consume(&channel, &queue).await;
        DeadLetters { connection, deliveries, _cleanup: cleanup }
    }

    /// The next dead-lettered message, or `None` within `wait`.
    pub async fn next(&mut self, wait: Duration) -> Option<Delivery> {
        tokio::time::timeout(wait, self.deliveries.recv()).await.ok().flatten()
    }

    /// A dead-lettered message that already arrived, without waiting.
    pub fn try_next(&mut self) -> Option<Delivery> {
        self.deliveries.try_recv().ok()
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

    /// Closes the connection; the policy, queue and exchange go when this is dropped.
    pub async fn cleanup(self) {
        bounded_close(self.connection.close(200, "done".into())).await;
    }
}

/// The host's connection(s) as the broker lists them: the pid of each connection whose
/// client-given name is `warren <service>`.
pub async fn host_connections(service: &str) -> Vec<String> {
    let name = format!("warren {service}");
    tokio::task::spawn_blocking(move || {
        broker_listing("list_connections", &["pid", "client_properties"])
            .into_iter()
            .filter(|c| c["client_properties"].to_string().contains(&format!("\"{name}\"")))
            .map(|c| c["pid"].to_string())
            .collect()
    })
    .await
    .unwrap()
}

/// Runs `rabbitmqctl` with `args` (quiet) and returns its stdout; panics if it fails.
pub fn rabbitmqctl(args: &[&str]) -> String {
    try_rabbitmqctl(args).unwrap_or_else(|e| panic!("{e}"))
}

/// Runs `rabbitmqctl` with `args` (quiet): its stdout, or what went wrong.
pub fn try_rabbitmqctl(args: &[&str]) -> Result<String, String> {
    let output = std::process::Command::new("rabbitmqctl")
        .args(args)
        .arg("-q")
        .output()
        .map_err(|e| format!("running rabbitmqctl (is RabbitMQ installed on this machine?): {e}"))?;
    if !output.status.success() {
        return Err(format!("rabbitmqctl {args:?} failed: {}", String::from_utf8_lossy(&output.stderr)));
    }
    String::from_utf8(output.stdout).map_err(|e| e.to_string())
}

/// The broker's own JSON listing (`rabbitmqctl list_<what> <columns> --formatter json`).
pub fn broker_listing(what: &str, columns: &[&str]) -> Vec<serde_json::Value> {
    try_broker_listing(what, columns).unwrap_or_else(|e| panic!("{e}"))
}

fn try_broker_listing(what: &str, columns: &[&str]) -> Result<Vec<serde_json::Value>, String> {
    let mut args = vec![what];
    args.extend_from_slice(columns);
    args.extend_from_slice(&["--formatter", "json"]);
    serde_json::from_str(&try_rabbitmqctl(&args)?).map_err(|e| format!("rabbitmqctl {what} printed no JSON: {e}"))
}

/// What one [`Cleanup`] removes.
#[derive(Default)]
struct Declared {
    services: Vec<String>,
    queues: Vec<String>,
    exchanges: Vec<String>,
    policies: Vec<String>,
    users: Vec<String>,
    dirs: Vec<PathBuf>,
}

/// Exchanges several tests may use at once (`events.topic.exchange`, `billing.*`): removed,
/// if unused, when the last [`Cleanup`] alive in this test binary is dropped.
struct Shared {
    guards: usize,
    exchanges: std::collections::BTreeSet<String>,
}

static SHARED: std::sync::Mutex<Shared> =
    std::sync::Mutex::new(Shared { guards: 0, exchanges: std::collections::BTreeSet::new() });

fn shared() -> std::sync::MutexGuard<'static, Shared> {
    SHARED.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Removes what a test declared on the broker when it is dropped — also when the test panics.
/// Make one before declaring anything and keep it to the end of the test.
///
/// - [`Cleanup::service`]: every queue and exchange whose name contains the (unique) service
///   name, found in the broker's own listing: what the host declared, dead-letter exchanges,
///   retry queues, the queues of its clients, transient queues.
/// - [`Cleanup::queue`], [`Cleanup::exchange`], [`Cleanup::policy`], [`Cleanup::user`],
///   [`Cleanup::dir`]: by name.
/// - [`Cleanup::shared_exchange`]: an exchange other tests may use too; deleted with
///   `if-unused` once no `Cleanup` of this test binary is alive.
///
/// `Drop` cannot await: the work runs on a thread of its own with a small tokio runtime and a
/// fresh connection, and never panics (a failure is printed).
pub struct Cleanup {
    declared: std::sync::Mutex<Declared>,
}

impl Default for Cleanup {
    fn default() -> Self {
        Cleanup::new()
    }
}

impl Cleanup {
    pub fn new() -> Cleanup {
        shared().guards += 1;
        Cleanup { declared: std::sync::Mutex::new(Declared::default()) }
    }

    fn with(&self, f: impl FnOnce(&mut Declared)) -> &Cleanup {
        f(&mut self.declared.lock().unwrap_or_else(|p| p.into_inner()));
        self
    }

    /// Everything whose name contains `service`.
    pub fn service(&self, service: &str) -> &Cleanup {
        self.with(|d| d.services.push(service.to_string()))
    }

    pub fn queue(&self, queue: &str) -> &Cleanup {
        self.with(|d| d.queues.push(queue.to_string()))
    }

    pub fn exchange(&self, exchange: &str) -> &Cleanup {
        self.with(|d| d.exchanges.push(exchange.to_string()))
    }

    pub fn shared_exchange(&self, exchange: &str) -> &Cleanup {
        shared().exchanges.insert(exchange.to_string());
        self
    }

    pub fn policy(&self, policy: &str) -> &Cleanup {
        self.with(|d| d.policies.push(policy.to_string()))
    }

    /// A broker user a test made (`rabbitmqctl add_user`): deleted with `delete_user`.
    pub fn user(&self, user: &str) -> &Cleanup {
        self.with(|d| d.users.push(user.to_string()))
    }

    pub fn dir(&self, dir: &Path) -> &Cleanup {
        self.with(|d| d.dirs.push(dir.to_path_buf()))
    }

    /// What a host on `config` declares: its queues by name, its exchanges as shared (those
    /// named after a service of this cleanup go with the service sweep anyway).
    pub fn topology_of(&self, config: &Config) -> &Cleanup {
        let topology = warren::amqp::topology::Topology::for_config(config);
        for queue in &topology.queues {
            self.queue(&queue.name);
        }
        for exchange in &topology.exchanges {
            self.shared_exchange(&exchange.name);
        }
        self
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let declared = std::mem::take(&mut *self.declared.lock().unwrap_or_else(|p| p.into_inner()));
        for policy in &declared.policies {
            if let Err(error) = try_rabbitmqctl(&["clear_policy", policy]) {
                eprintln!("cleanup: {error}");
            }
        }
        for user in &declared.users {
            if let Err(error) = try_rabbitmqctl(&["delete_user", user]) {
                eprintln!("cleanup: {error}");
            }
        }
        let mut queues = declared.queues;
        let mut exchanges: Vec<(String, bool)> = declared.exchanges.into_iter().map(|e| (e, false)).collect();
        if !declared.services.is_empty() {
            let mine = |name: &str| declared.services.iter().any(|s| name.contains(s.as_str()));
            let names = |what: &'static str| std::thread::spawn(move || try_broker_listing(what, &["name"]));
            let (listed_queues, listed_exchanges) = (names("list_queues"), names("list_exchanges"));
            for (listing, into_exchanges) in [(listed_queues, false), (listed_exchanges, true)] {
                match listing.join().unwrap_or_else(|_| Err("the listing thread panicked".into())) {
                    Ok(rows) => {
                        for name in rows.iter().filter_map(|r| r["name"].as_str()).filter(|n| mine(n)) {
                            if into_exchanges {
                                exchanges.push((name.to_string(), false));
                            } else {
                                queues.push(name.to_string());
                            }
                        }
                    }
                    Err(error) => eprintln!("cleanup: {error}"),
                }
            }
        }
        delete_on_broker(queues, exchanges);
        for dir in &declared.dirs {
            let _ = std::fs::remove_dir_all(dir).or_else(|_| std::fs::remove_file(dir));
        }
        // The services' private state folders (`<service>-<hash>` under the tests' root).
        if let Ok(states) = std::fs::read_dir(test_state_root()) {
            let theirs = |name: &str| declared.services.iter().any(|s| name.starts_with(&format!("{s}-")));
            for state in states.flatten().filter(|e| e.file_name().to_str().is_some_and(theirs)) {
                let _ = std::fs::remove_dir_all(state.path());
            }
        }

        let mut shared = shared();
        shared.guards -= 1;
        if shared.guards == 0 && !shared.exchanges.is_empty() {
            // Held locked: no test of this binary declares anything until they are gone.
            let exchanges = std::mem::take(&mut shared.exchanges).into_iter().map(|e| (e, true)).collect();
            delete_on_broker(Vec::new(), exchanges);
        }
    }
}

/// Deletes `queues` and `exchanges` (`(name, if_unused)`) over a fresh connection, on a thread
/// of its own (callable from `Drop`, inside or outside a tokio runtime). Never panics.
fn delete_on_broker(queues: Vec<String>, exchanges: Vec<(String, bool)>) {
    if queues.is_empty() && exchanges.is_empty() {
        return;
    }
    let (done, finished) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(runtime) => runtime,
            Err(error) => return eprintln!("cleanup: no runtime: {error}"),
        };
        runtime.block_on(async {
            let connection = match tokio::time::timeout(
                CLEANUP,
                Connection::connect(&broker_url(), ConnectionProperties::default()),
            )
            .await
            {
                Ok(Ok(connection)) => connection,
                Ok(Err(error)) => return eprintln!("cleanup: cannot connect: {error}; left {queues:?} {exchanges:?}"),
                Err(_) => return eprintln!("cleanup: connecting timed out; left {queues:?} {exchanges:?}"),
            };
            // A failed method closes its channel: one channel per deletion.
            for queue in &queues {
                let deleted = tokio::time::timeout(CLEANUP, async {
                    let channel = connection.create_channel().await?;
                    channel.queue_delete(queue.as_str().into(), QueueDeleteOptions::default()).await?;
                    channel.close(200, "done".into()).await
                })
                .await;
                match deleted {
                    Ok(Ok(())) => {}
                    // An exclusive queue of a connection still open: it goes with it.
                    Ok(Err(error)) if error.to_string().contains("RESOURCE_LOCKED") => {}
                    Ok(Err(error)) => eprintln!("cleanup: queue {queue}: {error}"),
                    Err(_) => eprintln!("cleanup: deleting queue {queue} timed out"),
                }
            }
            for (exchange, if_unused) in &exchanges {
                let deleted = tokio::time::timeout(CLEANUP, async {
                    let channel = connection.create_channel().await?;
                    let options = ExchangeDeleteOptions { if_unused: *if_unused, ..Default::default() };
                    channel.exchange_delete(exchange.as_str().into(), options).await?;
                    channel.close(200, "done".into()).await
                })
                .await;
                match deleted {
                    Ok(Ok(())) => {}
                    // In use by someone else (if_unused): theirs to remove.
                    Ok(Err(_)) if *if_unused => {}
                    Ok(Err(error)) => eprintln!("cleanup: exchange {exchange}: {error}"),
                    Err(_) => eprintln!("cleanup: deleting exchange {exchange} timed out"),
                }
            }
            bounded_close(connection.close(200, "cleaned up".into())).await;
        });
        let _ = done.send(());
    });
    if finished.recv_timeout(Duration::from_secs(120)).is_err() {
        eprintln!("cleanup: the broker clean-up did not finish within 120 s");
    }
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

/// While alive, the broker application is stopped (`rabbitmqctl stop_app`); dropping it —
/// also when the test panics — starts it again and waits until it is up.
pub struct BrokerStopped {
    /// Set only once `start_app` and `await_startup` both succeeded: a start that failed is
    /// tried again (by [`Drop`]), never taken for done.
    started: bool,
}

impl BrokerStopped {
    pub fn stop_app() -> BrokerStopped {
        let guard = BrokerStopped { started: false };
        rabbitmqctl(&["stop_app"]);
        guard
    }

    /// Starts the broker again now; panics (and `Drop` tries again) if it does not come up.
    pub fn start_app(mut self) {
        if let Err(error) = self.start() {
            panic!("restarting the broker: {error}");
        }
    }

    fn start(&mut self) -> Result<(), String> {
        if !self.started {
            try_rabbitmqctl(&["start_app"])?;
            try_rabbitmqctl(&["await_startup"])?;
            self.started = true;
        }
        Ok(())
    }
}

impl Drop for BrokerStopped {
    /// Starts the broker unless a start already succeeded; a failed start is tried once more.
    fn drop(&mut self) {
        for attempt in 1..=2 {
            match self.start() {
                Ok(()) => return,
                Err(error) => eprintln!("restarting the broker (attempt {attempt} of 2): {error}"),
            }
        }
    }
}

/// One request-serving test setup: a host for a fresh service, a goamqp client of it, a
/// catcher of what the host rejects (dead-lettered through a broker policy), and a
/// [`Cleanup`] of everything named after the service.
pub struct Scenario {
    pub service: String,
    pub server: Server,
    pub client: GoClient,
    pub dead: DeadLetters,
    /// Dropped last: the host, the client and the catcher are gone by then.
    pub cleanup: Cleanup,
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
        let cleanup = Cleanup::new();
        cleanup.service(&service).topology_of(&config);
        let dead = DeadLetters::catch(&service).await;
        let server = start(&config).await;
        let client = GoClient::new(&service, "go-client", keys).await;
        Scenario { service, server, client, dead, cleanup }
    }

    /// Makes RabbitMQ nack every answer routed to the client's response queue (a policy of
    /// `max-length` 0, `overflow` `reject-publish`), and waits until the broker applies it.
    /// Returns the policy's name (removed by the scenario's cleanup, or by `clear_policy`).
    pub async fn refuse_answers(&mut self) -> String {
        let policy = format!("{}-reject-answers", self.service);
        self.cleanup.policy(&policy);
        let answers = self.client.response_queue().to_string();
        let pattern = format!("^{}$", answers.replace('.', "\\.").replace('-', "\\-"));
        let definition = r#"{"max-length":0,"overflow":"reject-publish"}"#;
        rabbitmqctl(&["set_policy", &policy, &pattern, definition, "--apply-to", "queues", "--priority", "10"]);
        let applied = || {
            broker_listing("list_queues", &["name", "policy"])
                .iter()
                .any(|q| q["name"] == answers.as_str() && q["policy"] == policy.as_str())
        };
        eventually("the broker applies the policy to the response queue", applied).await;
        policy
    }

    /// The host's request queue, spelled out.
    pub fn request_queue(&self) -> String {
        format!("{}.direct.exchange.request.queue", self.service)
    }

    /// Asserts from the broker's state that the client got no answer to anything sent so far
    /// (see [`GoClient::assert_no_response`]).
    pub async fn assert_no_response(&mut self) {
        let queue = self.request_queue();
        self.client.assert_no_response(&queue).await;
    }

    /// Stops the host, checks that every message it got was settled (stopping closes its
    /// channels, so an unacked message would be back in the queue), and removes everything
    /// the test declared (which dropping the scenario does too, also on failure).
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
        // `self.cleanup` is dropped here.
    }
}
