//! What `production.rs` needs beside the default broker: the extra RabbitMQ nodes of
//! `.ci/rabbit-nodes` (a three-node cluster, a TLS node), a goamqp-faithful client that
//! connects to any of them (over TLS too), a host run with its recovery loop, a guard that
//! brings a stopped node back, and a sweep that removes what a test declared on those nodes.
//! Every guard works in `Drop` too, so a failing test leaves nothing behind.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures_lite::StreamExt;
use lapin::options::*;
use lapin::tcp::OwnedTLSConfig;
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use tokio::sync::mpsc;

use warren::config::Config;
use warren::server::Server;

/// AMQP ports of warren-c1..3@localhost.
pub const CLUSTER_PORTS: [u16; 3] = [5681, 5682, 5683];
/// The TLS node and its AMQPS port.
pub const TLS_NODE: &str = "warren-tls@localhost";
pub const TLS_PORT: u16 = 5671;

/// How long one clean-up or harness step may take before it is given up.
const STEP: Duration = Duration::from_secs(20);

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// Where the harness keeps its nodes' data and the TLS certificates.
fn nodes_dir() -> PathBuf {
    std::env::var_os("WARREN_NODES_DIR").map(PathBuf::from).unwrap_or_else(|| repo().join("target/rabbit-nodes"))
}

/// The test certificates `tls-up` wrote (ca.pem, client.pem/key, other-ca.pem, other-client.*).
pub fn tls_file(name: &str) -> PathBuf {
    nodes_dir().join("tls").join(name)
}

/// Runs `.ci/rabbit-nodes ARGS`: its output, or everything it printed when it failed.
pub fn harness(args: &[&str]) -> Result<String, String> {
    let script = repo().join(".ci/rabbit-nodes");
    let output = std::process::Command::new(&script)
        .args(args)
        .output()
        .map_err(|e| format!("running {} {args:?}: {e}", script.display()))?;
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    match output.status.success() {
        true => Ok(text),
        false => Err(format!(".ci/rabbit-nodes {} failed ({}):\n{text}", args.join(" "), output.status)),
    }
}

/// Starts the three-node cluster unless it runs (idempotent, ~30 s from nothing, ~1 s when up).
pub fn cluster_up() {
    if let Err(error) = harness(&["cluster-up"]) {
        panic!("{error}");
    }
}

/// Starts the TLS node unless it runs (idempotent).
pub fn tls_up() {
    if let Err(error) = harness(&["tls-up"]) {
        panic!("{error}");
    }
}

pub fn node_name(n: usize) -> String {
    format!("warren-c{n}@localhost")
}

pub fn node_port(n: usize) -> u16 {
    CLUSTER_PORTS[n - 1]
}

/// `amqp://guest:guest@127.0.0.1:<port of node n>/%2f`.
pub fn node_url(n: usize) -> String {
    format!("amqp://guest:guest@127.0.0.1:{}/%2f", node_port(n))
}

pub fn port_open(port: u16) -> bool {
    let address = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    std::net::TcpStream::connect_timeout(&address, Duration::from_millis(500)).is_ok()
}

/// `rabbitmqctl -n NODE -q ARGS`: its stdout, or why it failed.
pub fn ctl(node: &str, args: &[&str]) -> Result<String, String> {
    let output = std::process::Command::new("rabbitmqctl")
        .args(["-n", node, "-q"])
        .args(args)
        .output()
        .map_err(|e| format!("running rabbitmqctl: {e}"))?;
    match output.status.success() {
        true => String::from_utf8(output.stdout).map_err(|e| e.to_string()),
        false => Err(format!("rabbitmqctl -n {node} {args:?} failed: {}", String::from_utf8_lossy(&output.stderr))),
    }
}

/// A JSON listing (`list_queues name`, …) from `node`.
pub fn listing(node: &str, what: &str, columns: &[&str]) -> Result<Vec<serde_json::Value>, String> {
    let mut args = vec![what];
    args.extend_from_slice(columns);
    args.extend_from_slice(&["--formatter", "json"]);
    serde_json::from_str(&ctl(node, &args)?).map_err(|e| format!("{what} on {node} printed no JSON: {e}"))
}

/// A cluster node whose AMQP port answers.
pub fn running_node() -> Option<usize> {
    (1..=3).find(|&n| port_open(node_port(n)))
}

/// Whether a `list_connections` row (with `client_properties`) is the connection of a host
/// of `service`: the host names its connection `warren <service>` (the client-provided
/// `connection_name`; RabbitMQ's own `name` column is the address pair).
pub fn is_host_of(row: &serde_json::Value, service: &str) -> bool {
    row["client_properties"].to_string().contains(&format!("\"warren {service}\""))
}

/// The host connections of `service` on the cluster, as `(node number, peer port)`; the
/// server port tells the node.
pub fn host_connections(service: &str) -> Vec<(usize, u64)> {
    let Some(n) = running_node() else { return Vec::new() };
    let columns = ["client_properties", "port", "peer_port"];
    let rows = listing(&node_name(n), "list_connections", &columns).unwrap_or_default();
    rows.iter()
        .filter(|row| is_host_of(row, service))
        .filter_map(|row| {
            let port = row["port"].as_u64()?;
            let node = CLUSTER_PORTS.iter().position(|&p| u64::from(p) == port)? + 1;
            Some((node, row["peer_port"].as_u64()?))
        })
        .collect()
}

/// Waits until `service` has a host connection on the cluster whose peer port is not in
/// `known`; returns it (node number, peer port).
pub async fn new_host_connection(service: &str, known: &[u64]) -> (usize, u64) {
    let until = Instant::now() + Duration::from_secs(60);
    loop {
        let name = service.to_string();
        let found = tokio::task::spawn_blocking(move || host_connections(&name)).await.unwrap();
        if let Some(found) = found.into_iter().find(|(_, peer)| !known.contains(peer)) {
            return found;
        }
        assert!(Instant::now() < until, "no new connection 'warren {service}' appeared on the cluster");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A cluster node stopped with `node-stop` while this lives; dropping it, also when the test
/// fails, starts the node again and waits until it is back in the cluster.
pub struct NodeDown {
    n: usize,
    up: bool,
}

impl NodeDown {
    /// Stops node `n` (`rabbitmqctl stop`: its clients get CONNECTION_FORCED).
    pub fn stop(n: usize) -> NodeDown {
        let guard = NodeDown { n, up: false }; // made first: a half-done stop is undone too
        if let Err(error) = harness(&["node-stop", &n.to_string()]) {
            panic!("{error}");
        }
        guard
    }

    /// Starts the node again now; `Err` says what the harness printed. The node counts as up
    /// only once `node-start` succeeded: after a failure, [`Drop`] tries again.
    pub fn start(&mut self) -> Result<(), String> {
        if self.up {
            return Ok(());
        }
        harness(&["node-start", &self.n.to_string()])?;
        self.up = true;
        Ok(())
    }
}

impl Drop for NodeDown {
    /// Starts the node unless a start already succeeded; a failed start is tried once more.
    fn drop(&mut self) {
        for attempt in 1..=2 {
            match self.start() {
                Ok(()) => return,
                Err(error) => eprintln!("bringing node {} back (attempt {attempt} of 2): {error}", self.n),
            }
        }
    }
}

/// Which extra broker a [`Sweep`] cleans.
#[derive(Clone)]
pub enum Target {
    Cluster,
    Tls,
}

impl Target {
    /// A node to ask with rabbitmqctl, and an endpoint to delete through.
    fn reach(&self) -> Option<(String, Endpoint)> {
        match self {
            Target::Cluster => running_node().map(|n| (node_name(n), Endpoint::plain(&node_url(n)))),
            Target::Tls => Some((TLS_NODE.to_string(), Endpoint::tls_guest())),
        }
    }
}

/// Removes, when dropped (also when the test fails), every queue and exchange whose name
/// holds one of its service names from a cluster or the TLS node, and its temp folders.
/// Make it first in a test, so it is dropped last (after the hosts and node guards).
pub struct Sweep {
    target: Target,
    services: Vec<String>,
    dirs: Vec<PathBuf>,
    done: bool,
}

impl Sweep {
    pub fn new(target: Target, service: &str) -> Sweep {
        Sweep { target, services: vec![service.to_string()], dirs: Vec::new(), done: false }
    }

    /// Removes everything now and returns what is still there afterwards (should be nothing).
    pub fn finish(mut self) -> (Vec<String>, Vec<String>) {
        self.sweep();
        self.done = true;
        self.leftovers().unwrap_or_else(|e| panic!("{e}"))
    }

    pub fn dir(&mut self, dir: &Path) {
        self.dirs.push(dir.to_path_buf());
    }

    /// What is left on the broker that this sweep would remove: `(queues, exchanges)`.
    pub fn leftovers(&self) -> Result<(Vec<String>, Vec<String>), String> {
        let (node, _) = self.target.reach().ok_or("no node of the target runs")?;
        let mine = |rows: Vec<serde_json::Value>| -> Vec<String> {
            rows.iter()
                .filter_map(|r| r["name"].as_str())
                .filter(|name| self.services.iter().any(|s| name.contains(s.as_str())))
                .map(str::to_string)
                .collect()
        };
        let queues = mine(listing(&node, "list_queues", &["name"])?);
        let exchanges = mine(listing(&node, "list_exchanges", &["name"])?);
        Ok((queues, exchanges))
    }
}

impl Drop for Sweep {
    fn drop(&mut self) {
        if !self.done {
            self.sweep();
        }
    }
}

impl Sweep {
    fn sweep(&mut self) {
        for dir in &self.dirs {
            let _ = std::fs::remove_dir_all(dir);
        }
        let (queues, exchanges) = match self.leftovers() {
            Ok(found) => found,
            Err(error) => return eprintln!("sweep: cannot list what is left: {error}"),
        };
        if queues.is_empty() && exchanges.is_empty() {
            return;
        }
        let Some((_, endpoint)) = self.target.reach() else { return };
        // Drop cannot await: a thread with a runtime of its own does the deleting.
        let worker = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(async {
                let connection = match tokio::time::timeout(STEP, endpoint.connect("warren-tests sweep")).await {
                    Ok(Ok(connection)) => connection,
                    _ => return eprintln!("sweep: cannot connect; left {queues:?} {exchanges:?}"),
                };
                for queue in &queues {
                    let deleted = tokio::time::timeout(STEP, async {
                        let channel = connection.create_channel().await?;
                        channel.queue_delete(queue.as_str().into(), QueueDeleteOptions::default()).await?;
                        channel.close(200, "done".into()).await
                    })
                    .await;
                    if !matches!(deleted, Ok(Ok(()))) {
                        eprintln!("sweep: queue {queue} not deleted: {deleted:?}");
                    }
                }
                for exchange in &exchanges {
                    let deleted = tokio::time::timeout(STEP, async {
                        let channel = connection.create_channel().await?;
                        channel.exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default()).await?;
                        channel.close(200, "done".into()).await
                    })
                    .await;
                    if !matches!(deleted, Ok(Ok(()))) {
                        eprintln!("sweep: exchange {exchange} not deleted: {deleted:?}");
                    }
                }
                warren::amqp::broker::bounded_close(connection.close(200, "swept".into())).await;
            });
        });
        let _ = worker.join();
    }
}

/// How a test's own client reaches a broker: a URL and the TLS settings.
#[derive(Clone)]
pub struct Endpoint {
    pub url: String,
    pub tls: OwnedTLSConfig,
}

impl Endpoint {
    pub fn plain(url: &str) -> Endpoint {
        Endpoint { url: url.to_string(), tls: OwnedTLSConfig::default() }
    }

    /// guest/guest over TLS to the TLS node, trusting the test CA.
    pub fn tls_guest() -> Endpoint {
        let ca = std::fs::read_to_string(tls_file("ca.pem")).unwrap_or_default();
        Endpoint {
            url: format!("amqps://guest:guest@localhost:{TLS_PORT}/%2f"),
            tls: OwnedTLSConfig { cert_chain: Some(ca), identity: None },
        }
    }

    pub async fn connect(&self, name: &str) -> Result<Connection, lapin::Error> {
        let properties = ConnectionProperties::default().with_connection_name(name.into());
        let runtime = lapin::runtime::default_runtime()?;
        Connection::connect_with_config(&self.url, properties, self.tls.clone(), runtime).await
    }
}

fn text(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s))
}

/// An answer as the client got it, with when it arrived.
pub struct Answer {
    pub routing_key: String,
    pub body: Vec<u8>,
    pub properties: BasicProperties,
    pub at: Instant,
}

/// A goamqp client of service `target` on any endpoint, set up as goamqp's
/// `ServicePublisher(target)` + `ServiceResponseListener(target, key, …)` do (SPEC §1): one
/// connection, one channel with `basic.qos(20, global)`, no publisher confirms; the request
/// exchange (direct) and response exchange (headers) declared durable; its response queue
/// `<target>.headers.exchange.response.queue.<name>` durable with `x-expires` (32-bit, as Go
/// sends an int), bound per key with `service=<name>`, consumed with manual acks (acked once
/// handed over, as goamqp acks after its handler). Requests carry header `service` only:
/// no correlation id, message id or reply-to. Answers are not matched to requests.
pub struct GoClient {
    pub connection: Connection,
    channel: Channel,
    target: String,
    name: String,
    /// Answers in arrival order; [`GoClient::take_answers`] hands them to a load loop.
    answers: Option<mpsc::UnboundedReceiver<Answer>>,
}

impl GoClient {
    pub async fn connect(endpoint: &Endpoint, target: &str, name: &str, keys: &[&str]) -> GoClient {
        let connection = endpoint
            .connect(&format!("goamqp {name}"))
            .await
            .unwrap_or_else(|e| panic!("the goamqp client could not connect to {}: {e}", endpoint.url));
        let channel = connection.create_channel().await.unwrap();
        channel.basic_qos(20, BasicQosOptions { global: true }).await.unwrap();
        let request_exchange = format!("{target}.direct.exchange.request");
        let response_exchange = format!("{target}.headers.exchange.response");
        let queue = format!("{target}.headers.exchange.response.queue.{name}");
        let durable = ExchangeDeclareOptions { durable: true, ..Default::default() };
        channel
            .exchange_declare(request_exchange.as_str().into(), ExchangeKind::Direct, durable, FieldTable::default())
            .await
            .unwrap();
        channel
            .exchange_declare(response_exchange.as_str().into(), ExchangeKind::Headers, durable, FieldTable::default())
            .await
            .unwrap();
        let mut arguments = FieldTable::default();
        arguments.insert("x-expires".into(), AMQPValue::LongInt(432_000_000));
        let options = QueueDeclareOptions { durable: true, ..Default::default() };
        channel.queue_declare(queue.as_str().into(), options, arguments).await.unwrap();
        for key in keys {
            let mut binding = FieldTable::default();
            binding.insert("service".into(), text(name));
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
        let mut consumer = channel
            .basic_consume(queue.as_str().into(), "".into(), BasicConsumeOptions::default(), FieldTable::default())
            .await
            .unwrap();
        let (tx, answers) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Some(Ok(delivery)) = consumer.next().await {
                let answer = Answer {
                    routing_key: delivery.routing_key.to_string(),
                    body: delivery.data.clone(),
                    properties: delivery.properties.clone(),
                    at: Instant::now(),
                };
                if tx.send(answer).is_err() || delivery.ack(BasicAckOptions::default()).await.is_err() {
                    break;
                }
            }
        });
        GoClient { connection, channel, target: target.to_string(), name: name.to_string(), answers: Some(answers) }
    }

    /// Publishes a request as goamqp's `Publisher.Publish` does: to
    /// `<target>.direct.exchange.request`, content type JSON, delivery mode 2, header
    /// `service` = this client's name, nothing else; no confirm (goamqp has none).
    pub async fn request(&self, routing_key: &str, body: &[u8]) -> Result<(), lapin::Error> {
        let mut headers = FieldTable::default();
        headers.insert("service".into(), text(&self.name));
        let properties = BasicProperties::default()
            .with_headers(headers)
            .with_content_type("application/json".into())
            .with_delivery_mode(2);
        let exchange = format!("{}.direct.exchange.request", self.target);
        self.channel
            .basic_publish(
                exchange.as_str().into(),
                routing_key.into(),
                BasicPublishOptions::default(),
                body,
                properties,
            )
            .await
            .map(drop)
    }

    /// The next answer within `wait`.
    pub async fn answer(&mut self, wait: Duration) -> Option<Answer> {
        let answers = self.answers.as_mut().expect("answers not taken by a load");
        tokio::time::timeout(wait, answers.recv()).await.ok().flatten()
    }

    pub fn take_answers(&mut self) -> mpsc::UnboundedReceiver<Answer> {
        self.answers.take().expect("answers taken once")
    }

    pub async fn close(self) {
        warren::amqp::broker::bounded_close(self.connection.close(200, "done".into())).await;
    }
}

/// Host logs to the test output (shown for failing tests, or with `--nocapture`).
pub fn init_logging() {
    static ONCE: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    ONCE.get_or_init(|| {
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(warren::cli::DEFAULT_LOG_FILTER));
        let _ = tracing_subscriber::fmt().with_env_filter(filter).with_test_writer().try_init();
    });
}

/// A test folder `<tmp>/warren-production-<service>` holding `warren.toml` with `text`;
/// the config parsed from it (the environment is not consulted).
pub fn write_config(service: &str, text: &str) -> (PathBuf, Result<Config, warren::config::ConfigError>) {
    let dir = std::env::temp_dir().join(format!("warren-production-{service}"));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("warren.toml");
    std::fs::write(&path, text).unwrap();
    let config = Config::parse(&path, text, None);
    (dir, config)
}

/// A host serving with its recovery loop (`Server::serve`), as `warren run` does.
pub struct Host {
    pub metrics: Arc<warren::metrics::Metrics>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<(), warren::server::ServerError>>>,
}

impl Host {
    pub async fn start(config: &Config) -> Host {
        init_logging();
        let server = match Server::start(config).await {
            Ok(server) => server,
            Err(error) => panic!("the host did not start: {error}"),
        };
        let metrics = server.metrics().clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(server.serve(async move {
            let _ = stopped.await;
        }));
        Host { metrics, stop: Some(stop), task: Some(task) }
    }

    /// Stops serving (in-flight messages finish) and returns what `serve` returned.
    pub async fn stop(mut self) -> Result<(), String> {
        let _ = self.stop.take().unwrap().send(());
        let task = self.task.take().unwrap();
        match tokio::time::timeout(Duration::from_secs(60), task).await {
            Ok(Ok(result)) => result.map_err(|e| e.to_string()),
            Ok(Err(join)) => Err(format!("the host task failed: {join}")),
            Err(_) => Err("the host did not stop within 60 s".into()),
        }
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        // A failed test: ask the host to stop, give it a moment (the sweep comes next).
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
            let until = Instant::now() + Duration::from_secs(5);
            while self.task.as_ref().is_some_and(|t| !t.is_finished()) && Instant::now() < until {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

/// Records the moments a host lost and regained the broker (its `ready` flag, polled every
/// 2 ms) until dropped.
pub struct ReadyWatch {
    pub changes: Arc<std::sync::Mutex<Vec<(Instant, bool)>>>,
    done: Arc<AtomicBool>,
}

impl ReadyWatch {
    pub fn start(host: &Host) -> ReadyWatch {
        let metrics = host.metrics.clone();
        let changes = Arc::new(std::sync::Mutex::new(Vec::new()));
        let done = Arc::new(AtomicBool::new(false));
        let (record, finished) = (changes.clone(), done.clone());
        tokio::spawn(async move {
            let mut last = true;
            while !finished.load(Ordering::Relaxed) {
                let now = metrics.ready.load(Ordering::Relaxed);
                if now != last {
                    record.lock().unwrap().push((Instant::now(), now));
                    last = now;
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        });
        ReadyWatch { changes, done }
    }

    /// The first loss at or after `since`, and the return after it.
    pub fn outage_after(&self, since: Instant) -> (Option<Instant>, Option<Instant>) {
        let changes = self.changes.lock().unwrap();
        let lost = changes.iter().find(|(at, ready)| *at >= since && !ready).map(|(at, _)| *at);
        let back = lost.and_then(|lost| changes.iter().find(|(at, ready)| *at > lost && *ready).map(|(at, _)| *at));
        (lost, back)
    }

    pub fn ever_lost(&self) -> bool {
        self.changes.lock().unwrap().iter().any(|(_, ready)| !ready)
    }
}

impl Drop for ReadyWatch {
    fn drop(&mut self) {
        self.done.store(true, Ordering::Relaxed);
    }
}

/// `GET /metrics` on a host's metrics address: the sum of `warren_messages_total` for `plugin`.
pub fn messages_handled(addr: std::net::SocketAddr, plugin: &str) -> u64 {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)) else { return 0 };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = write!(stream, "GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n");
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    let label = format!("plugin=\"{plugin}\"");
    response
        .lines()
        .filter(|line| line.starts_with("warren_messages_total{") && line.contains(&label))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// A free loopback address.
pub fn free_address() -> std::net::SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}
