//! `warren request` and `warren topology --mermaid`, black-box with the real binary.
//!
//! `warren request` runs against a goamqp service as goamqp really is (SPEC §1, issue 14): it
//! answers with header `service` = the requester and the request's routing key, and sets no
//! correlation id. Each run has a reply queue of its own, gone when the run ends; parallel
//! runs never take each other's answers. Everything a test declares is removed when it ends,
//! also when it fails.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use futures_lite::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, ExchangeDeclareOptions,
    ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Connection, ConnectionProperties, ExchangeKind};

const BROKER: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

fn warren() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_warren"));
    command.env_remove("WARREN_BROKER_URL").env_remove("RUST_LOG").args(["--log-format", "text"]);
    command
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn unique(what: &str) -> String {
    format!("t-{what}-{}", &uuid::Uuid::new_v4().simple().to_string()[..8])
}

fn stdout_ok(output: Output, what: &str) -> String {
    assert!(output.status.success(), "{what} failed:\n{}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).unwrap()
}

/// The names of the broker's queues that contain `part`.
fn queues_named(part: &str) -> Vec<String> {
    let output = Command::new("rabbitmqctl").args(["list_queues", "name", "-q"]).output().expect("rabbitmqctl");
    assert!(output.status.success(), "rabbitmqctl list_queues: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::trim)
        .filter(|l| l.contains(part))
        .map(String::from)
        .collect()
}

/// A goamqp service `name` answering `key` the way goamqp's `RequestResponseHandler` does:
/// one channel with `basic.qos(20, global)`, no publisher confirms, requests handled one at
/// a time (after `delay`), the body echoed to `name.headers.exchange.response` with the
/// request's routing key and header `service` = the requester — and no correlation id.
/// Dropping it removes its queue and exchanges.
struct GoResponder {
    runtime: tokio::runtime::Runtime,
    name: String,
    connection: Option<Connection>,
}

impl GoResponder {
    fn start(name: &str, key: &str, delay: Duration) -> GoResponder {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let (request_exchange, response_exchange) =
            (format!("{name}.direct.exchange.request"), format!("{name}.headers.exchange.response"));
        let queue = format!("{request_exchange}.queue");
        let key = key.to_string();
        let connection = runtime.block_on(async {
            let connection = Connection::connect(BROKER, ConnectionProperties::default()).await.unwrap();
            let channel = connection.create_channel().await.unwrap();
            channel.basic_qos(20, BasicQosOptions { global: true }).await.unwrap();
            let durable = ExchangeDeclareOptions { durable: true, ..Default::default() };
            for (exchange, kind) in
                [(&response_exchange, ExchangeKind::Headers), (&request_exchange, ExchangeKind::Direct)]
            {
                channel.exchange_declare(exchange.as_str().into(), kind, durable, FieldTable::default()).await.unwrap();
            }
            let mut arguments = FieldTable::default();
            arguments.insert("x-expires".into(), AMQPValue::LongInt(432_000_000));
            let options = QueueDeclareOptions { durable: true, ..Default::default() };
            channel.queue_declare(queue.as_str().into(), options, arguments).await.unwrap();
            channel
                .queue_bind(
                    queue.as_str().into(),
                    request_exchange.as_str().into(),
                    key.as_str().into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await
                .unwrap();
            let mut requests = channel
                .basic_consume(queue.as_str().into(), "".into(), BasicConsumeOptions::default(), FieldTable::default())
                .await
                .unwrap();
            tokio::spawn(async move {
                while let Some(Ok(request)) = requests.next().await {
                    tokio::time::sleep(delay).await;
                    let requester = match request.properties.headers().as_ref().and_then(|h| h.inner().get("service")) {
                        Some(AMQPValue::LongString(s)) => s.clone(),
                        _ => continue, // goamqp nacks it; these tests never send one
                    };
                    let mut headers = FieldTable::default();
                    headers.insert(
                        "service".into(),
                        AMQPValue::LongString(LongString::from(requester.as_bytes().to_vec())),
                    );
                    let properties = BasicProperties::default()
                        .with_content_type("application/json".into())
                        .with_delivery_mode(2)
                        .with_headers(headers);
                    let published = channel
                        .basic_publish(
                            response_exchange.as_str().into(),
                            request.routing_key.clone(),
                            BasicPublishOptions::default(),
                            &request.data,
                            properties,
                        )
                        .await;
                    if published.is_err() || request.ack(BasicAckOptions::default()).await.is_err() {
                        break;
                    }
                }
            });
            connection
        });
        GoResponder { runtime, name: name.to_string(), connection: Some(connection) }
    }
}

impl Drop for GoResponder {
    fn drop(&mut self) {
        let name = self.name.clone();
        let connection = self.connection.take();
        self.runtime.block_on(async move {
            let _ = tokio::time::timeout(Duration::from_secs(10), async {
                if let Some(connection) = connection {
                    let _ = connection.close(200, "done".into()).await;
                }
                let Ok(connection) = Connection::connect(BROKER, ConnectionProperties::default()).await else { return };
                let Ok(channel) = connection.create_channel().await else { return };
                let _ = channel
                    .queue_delete(
                        format!("{name}.direct.exchange.request.queue").as_str().into(),
                        QueueDeleteOptions::default(),
                    )
                    .await;
                for exchange in [format!("{name}.direct.exchange.request"), format!("{name}.headers.exchange.response")]
                {
                    let _ = channel.exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default()).await;
                }
                let _ = connection.close(200, "cleaned up".into()).await;
            })
            .await;
        });
        // Reply queues a failed run may have left (durable ones of a given --client name).
        for queue in queues_named(&format!("{}.headers.exchange.response.queue.", self.name)) {
            let _ = Command::new("rabbitmqctl").args(["delete_queue", &queue, "-q"]).output();
        }
    }
}

#[test]
fn request_takes_the_answer_of_a_goamqp_service_that_sets_no_correlation_id() {
    let service = unique("goreq");
    let _go = GoResponder::start(&service, "echo", Duration::ZERO);
    let answer = warren()
        .args(["request", &service, "echo", r#"{"data":"x","seq":1}"#, "--broker-url", BROKER])
        .output()
        .unwrap();
    assert_eq!(stdout_ok(answer, "warren request"), r#"{"data":"x","seq":1}"#);
    assert_eq!(
        queues_named(&format!("{service}.headers.exchange.response.queue.")),
        Vec::<String>::new(),
        "the run's reply queue is gone"
    );
}

#[test]
fn parallel_request_runs_against_a_slow_handler_each_get_their_own_answer_and_leave_no_queue() {
    let service = unique("goslow");
    let delay = Duration::from_millis(1500);
    let _go = GoResponder::start(&service, "slow", delay);
    let started = Instant::now();
    let runs: Vec<_> = (1..=3)
        .map(|run| {
            let child = warren()
                .args(["request", &service, "slow", &format!(r#"{{"run":{run}}}"#), "--timeout-ms", "15000"])
                .args(["--broker-url", BROKER])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            (run, child)
        })
        .collect();
    // While they wait (the first answer comes after `delay`), each has its own reply queue.
    let until = Instant::now() + Duration::from_secs(20);
    let mut most = 0;
    while Instant::now() < until && most < 3 {
        most = most.max(queues_named(&format!("{service}.headers.exchange.response.queue.warren-cli-")).len());
        std::thread::sleep(Duration::from_millis(50));
    }
    for (run, child) in runs {
        let answer = stdout_ok(child.wait_with_output().unwrap(), &format!("run {run}"));
        assert_eq!(answer, format!(r#"{{"run":{run}}}"#), "run {run} got another run's answer");
    }
    assert!(started.elapsed() >= delay * 3, "the handler answered one request at a time");
    assert_eq!(most, 3, "three runs in flight, three reply queues of their own");
    assert_eq!(
        queues_named(&format!("{service}.headers.exchange.response.queue.")),
        Vec::<String>::new(),
        "every run removed its reply queue"
    );
}

#[test]
fn request_with_a_given_client_name_uses_goamqps_durable_reply_queue() {
    let service = unique("goname");
    let _go = GoResponder::start(&service, "echo", Duration::ZERO);
    let answer = warren()
        .args(["request", &service, "echo", "[1,2]", "--client", "billing-cli", "--broker-url", BROKER])
        .output()
        .unwrap();
    assert_eq!(stdout_ok(answer, "warren request --client"), "[1,2]");
    assert_eq!(
        queues_named(&format!("{service}.headers.exchange.response.queue.")),
        vec![format!("{service}.headers.exchange.response.queue.billing-cli")],
        "a named client's queue is durable and stays, as goamqp's does"
    );
}

#[test]
fn topology_mermaid_prints_the_demo_configs_charts() {
    for name in ["warren.toml", "warren-orders.toml"] {
        let output = warren().arg("topology").arg("--mermaid").arg("--config").arg(repo().join(name)).output().unwrap();
        let chart = stdout_ok(output, "warren topology --mermaid");
        let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/fixtures/mermaid/{name}.mmd"));
        assert_eq!(chart, std::fs::read_to_string(&fixture).unwrap(), "{name} against {}", fixture.display());
    }
    let both = warren().args(["topology", "--mermaid", "--json", "--config"]).arg(repo().join("warren.toml")).output();
    assert!(!both.unwrap().status.success(), "--mermaid and --json exclude each other");
}
