//! Ready for a production estate (issue 15): Warren over TLS, on a three-node RabbitMQ cluster
//! with quorum queues while nodes go down, and the bad input an operator can give it.
//!
//! The extra nodes come from `.ci/rabbit-nodes` (`cluster-up`, `tls-up`: idempotent, so each
//! test calls them; `.ci/run` tears them down once at the end). A test that stops a node owns
//! it: a [`NodeDown`] guard starts it again, also when the test fails; the cluster tests take
//! turns (one lock). Every queue and exchange a test declares is swept at the end, on the
//! broker it used, also when the test fails.
//!
//! The cluster tests write their figures to `target/production-figures/<test>.txt` and print
//! them (`cargo test -p warren-tests --test production -- --nocapture`).

#[path = "production/support.rs"]
mod support;

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::*;
use warren::server::Server;

/// The longest a broker test may run (a cluster test stops and starts a node, ~15-25 s here,
/// and may wait for `cluster-up`, ~30 s): past it, the test fails naming itself.
const WATCHDOG: Duration = Duration::from_secs(420);

/// The cluster tests stop nodes: one at a time.
static CLUSTER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn within(test: &str, body: impl std::future::Future<Output = ()>) {
    if tokio::time::timeout(WATCHDOG, body).await.is_err() {
        panic!("{test} did not finish within {} s", WATCHDOG.as_secs());
    }
}

fn unique(what: &str) -> String {
    format!("t-{what}-{}", &uuid::Uuid::new_v4().simple().to_string()[..8])
}

/// `echo` and `greet` (the only plugins these tests serve), built once per test binary into
/// `target/production-plugins`, with the code of `warren build`.
fn plugins() -> &'static Path {
    static DIR: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        use warren::tooling::builder;
        let out = repo().join("target/production-plugins");
        let sources = builder::find_plugins(&repo().join("plugins")).expect("the plugins folder");
        for name in ["echo", "greet"] {
            let source = sources.iter().find(|p| p.name == name).unwrap_or_else(|| panic!("no plugin {name}"));
            builder::build_plugin(source, &out, &repo().join("target/plugin-build"))
                .unwrap_or_else(|e| panic!("building {name}: {e}"));
        }
        out
    })
}

/// A config text for `service`: `broker` is the inside of `[broker]` (and any
/// `[broker.tls]` after it), `service_extra` lines go in `[service]`; serves `echo` and `greet`.
fn config_text(service: &str, service_extra: &str, broker: &str) -> String {
    format!(
        "[service]\nname = \"{service}\"\nplugins = \"{}\"\n{service_extra}\n[broker]\n{broker}\n\n\
         [[request]]\nrouting_key = \"echo\"\nplugin = \"echo\"\n\n\
         [[request]]\nrouting_key = \"greet\"\nplugin = \"greet\"\n",
        plugins().display()
    )
}

/// `urls = [...]` naming cluster nodes `nodes`, in that order.
fn urls(nodes: &[usize]) -> String {
    let list: Vec<String> = nodes.iter().map(|&n| format!("\"{}\"", node_url(n))).collect();
    format!("urls = [{}]", list.join(", "))
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
}

fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

/// Figures of a test, printed and written to `target/production-figures/<test>.txt`.
fn record_figures(test: &str, lines: &[String]) {
    let text = lines.join("\n") + "\n";
    println!("--- {test}\n{text}");
    let dir = repo().join("target/production-figures");
    let _ = std::fs::create_dir_all(&dir);
    let _ = std::fs::write(dir.join(format!("{test}.txt")), text);
}

// ------------------------------------------------------------------------------------------
// Load: a goamqp client sending `{"n":i}` to `echo`, at most IN_FLIGHT unanswered.

const IN_FLIGHT: usize = 100;
/// Requests per second: paced so the load spans a node's stop and start (~15-25 s).
const RATE: f64 = 150.0;

#[derive(Default)]
struct Tally {
    /// Answers per request number.
    counts: Vec<u32>,
    unique: usize,
    duplicates: usize,
    /// Arrival of every answer, in order.
    times: Vec<Instant>,
    /// Answers that were not one of ours.
    strange: usize,
}

struct Load {
    client: Arc<GoClient>,
    tally: Arc<Mutex<Tally>>,
    sent: Arc<AtomicUsize>,
    keep_sending: Arc<AtomicBool>,
    sender: tokio::task::JoinHandle<Result<(), String>>,
}

struct LoadReport {
    sent: usize,
    answered: usize,
    lost: Vec<usize>,
    duplicates: usize,
    strange: usize,
    times: Vec<Instant>,
}

impl Load {
    /// Sends at [`RATE`], never more than [`IN_FLIGHT`] unanswered, at least `min_total`
    /// requests and until [`Load::finish`].
    fn start(mut client: GoClient, min_total: usize) -> Load {
        let mut answers = client.take_answers();
        let client = Arc::new(client);
        let tally = Arc::new(Mutex::new(Tally::default()));
        let record = tally.clone();
        tokio::spawn(async move {
            while let Some(answer) = answers.recv().await {
                let n = serde_json::from_slice::<serde_json::Value>(&answer.body).ok().and_then(|v| v["n"].as_u64());
                let mut tally = record.lock().unwrap();
                tally.times.push(answer.at);
                match n {
                    Some(n) if answer.routing_key == "echo" => {
                        let n = n as usize;
                        if tally.counts.len() <= n {
                            tally.counts.resize(n + 1, 0);
                        }
                        tally.counts[n] += 1;
                        match tally.counts[n] {
                            1 => tally.unique += 1,
                            _ => tally.duplicates += 1,
                        }
                    }
                    _ => tally.strange += 1,
                }
            }
        });
        let sent = Arc::new(AtomicUsize::new(0));
        let keep_sending = Arc::new(AtomicBool::new(true));
        let started = Instant::now();
        let sender = {
            let (client, tally, sent, keep_sending) =
                (client.clone(), tally.clone(), sent.clone(), keep_sending.clone());
            tokio::spawn(async move {
                let mut n = 0usize;
                while n < min_total || keep_sending.load(Ordering::Relaxed) {
                    tokio::time::sleep_until((started + Duration::from_secs_f64(n as f64 / RATE)).into()).await;
                    while n - tally.lock().unwrap().unique >= IN_FLIGHT {
                        tokio::time::sleep(Duration::from_millis(2)).await;
                    }
                    let body = format!("{{\"n\":{n}}}");
                    client.request("echo", body.as_bytes()).await.map_err(|e| format!("request {n}: {e}"))?;
                    n += 1;
                    sent.store(n, Ordering::Relaxed);
                }
                Ok(())
            })
        };
        Load { client, tally, sent, keep_sending, sender }
    }

    fn answered(&self) -> usize {
        self.tally.lock().unwrap().unique
    }

    async fn wait_answered(&self, n: usize) {
        let until = Instant::now() + Duration::from_secs(120);
        while self.answered() < n {
            assert!(Instant::now() < until, "only {} of {n} requests answered", self.answered());
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The last answer that arrived before `at`.
    fn last_answer_before(&self, at: Instant) -> Option<Instant> {
        self.tally.lock().unwrap().times.iter().copied().take_while(|&t| t < at).last()
    }

    /// The first answer that arrived at or after `at`.
    fn first_answer_after(&self, at: Instant) -> Option<Instant> {
        self.tally.lock().unwrap().times.iter().copied().find(|&t| t >= at)
    }

    async fn wait_answer_after(&self, at: Instant) -> Instant {
        let until = Instant::now() + Duration::from_secs(120);
        loop {
            if let Some(t) = self.first_answer_after(at) {
                return t;
            }
            assert!(Instant::now() < until, "no answer came within 120 s after the host reconnected");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Stops sending (once `min_total` went out), waits up to `wait` for every answer, then a
    /// quiet `linger` for late duplicates.
    async fn finish(self, wait: Duration, linger: Duration) -> (LoadReport, GoClient) {
        self.keep_sending.store(false, Ordering::Relaxed);
        let Load { client, tally, sent, sender, .. } = self;
        match sender.await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => panic!("the goamqp client could not send: {error}"),
            Err(join) => panic!("the sender failed: {join}"),
        }
        let sent = sent.load(Ordering::Relaxed);
        let until = Instant::now() + wait;
        while tally.lock().unwrap().unique < sent && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(linger).await;
        let tally = tally.lock().unwrap();
        let lost = (0..sent).filter(|&n| tally.counts.get(n).copied().unwrap_or(0) == 0).collect();
        let report = LoadReport {
            sent,
            answered: tally.unique,
            lost,
            duplicates: tally.duplicates,
            strange: tally.strange,
            times: tally.times.clone(),
        };
        drop(tally);
        let client = Arc::try_unwrap(client).ok().expect("the sender is done with the client");
        (report, client)
    }
}

impl LoadReport {
    /// The longest silence between two answers (or from `from` to the first one) within
    /// `[from, to]`, and when it ended.
    fn longest_silence(&self, from: Instant, to: Instant) -> (Duration, Option<Instant>) {
        let mut last = from;
        let mut longest = (Duration::ZERO, None);
        for &t in self.times.iter().filter(|&&t| t >= from && t <= to) {
            if t - last > longest.0 {
                longest = (t - last, Some(t));
            }
            last = t;
        }
        longest
    }

    fn answers_between(&self, from: Instant, to: Instant) -> usize {
        self.times.iter().filter(|&&t| t >= from && t < to).count()
    }
}

/// The quorum queue's leader node (`list_queues name leader`), if the cluster says.
fn leader_of(queue: &str) -> Option<String> {
    let node = node_name(running_node()?);
    let rows = listing(&node, "list_queues", &["name", "type", "leader"]).ok()?;
    let row = rows.into_iter().find(|r| r["name"] == queue)?;
    assert_eq!(row["type"], "quorum", "queue_profile = \"quorum\" declares {queue} as a quorum queue");
    row["leader"].as_str().map(str::to_string)
}

// ------------------------------------------------------------------------------------------
// Cluster

/// Steady load (100 in flight) while the node Warren is connected to is stopped and started
/// again: every request is answered; duplicates are counted; the time to serve again is
/// measured.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_node_of_the_host_stops_under_load_and_nothing_is_lost() {
    within("cluster_node_of_the_host_stops_under_load_and_nothing_is_lost", async {
        let _turn = CLUSTER.lock().await;
        blocking(cluster_up).await;
        let service = unique("prod-failover");
        let mut sweep = Sweep::new(Target::Cluster, &service);
        let text = config_text(&service, "", &format!("{}\nqueue_profile = \"quorum\"", urls(&[1, 2, 3])));
        let (dir, config) = write_config(&service, &text);
        sweep.dir(&dir);
        let config = config.expect("the config parses");
        let queue = format!("{service}.direct.exchange.request.queue");

        let host = Host::start(&config).await;
        let watch = ReadyWatch::start(&host);
        let (host_node, host_peer) = new_host_connection(&service, &[]).await;
        let client_node = host_node % 3 + 1;
        let client = GoClient::connect(&Endpoint::plain(&node_url(client_node)), &service, "go-client", &["echo"]).await;
        let leader_before = blocking({
            let queue = queue.clone();
            move || leader_of(&queue)
        })
        .await;

        let load = Load::start(client, 3000);
        load.wait_answered(600).await;

        // Stop the host's node.
        let stop_began = Instant::now();
        let mut down = blocking(move || NodeDown::stop(host_node)).await;
        let node_down = Instant::now();
        let until = Instant::now() + Duration::from_secs(120);
        let (lost_at, back_at) = loop {
            match watch.outage_after(stop_began) {
                (Some(lost), Some(back)) => break (lost, back),
                _ => assert!(Instant::now() < until, "the host never reconnected after its node stopped"),
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        let first_after = load.wait_answer_after(back_at).await;
        let last_before = load.last_answer_before(lost_at).unwrap_or(stop_began);
        let (new_node, _) = new_host_connection(&service, &[host_peer]).await;
        assert_ne!(new_node, host_node, "the host reconnected to a node that runs");
        let leader_during = blocking({
            let queue = queue.clone();
            move || leader_of(&queue)
        })
        .await;

        // Start it again; keep the load on a little longer.
        let start_began = Instant::now();
        let (down, started) = blocking(move || {
            let started = down.start();
            (down, started)
        })
        .await;
        started.unwrap_or_else(|e| panic!("{e}"));
        let node_up = Instant::now();
        tokio::time::sleep(Duration::from_secs(2)).await;

        let (report, client) = load.finish(Duration::from_secs(90), Duration::from_secs(3)).await;
        let (silence, silence_end) = report.longest_silence(stop_began - Duration::from_secs(1), node_up);
        let figures = vec![
            format!("requests sent: {}, answered: {}, lost: {}", report.sent, report.answered, report.lost.len()),
            format!("answered twice or more (duplicates): {}", report.duplicates),
            format!("node stopped: warren-c{host_node} (the host's); quorum leader before: {leader_before:?}, while down: {leader_during:?}"),
            format!("`node-stop` took {}", secs(node_down - stop_began)),
            format!("host noticed the loss {} after the stop began", secs(lost_at - stop_began)),
            format!("host reconnected (to warren-c{new_node}) {} after noticing", secs(back_at - lost_at)),
            format!("first answer after reconnecting: {} after the stop began, {} after the loss", secs(first_after - stop_began), secs(first_after - lost_at)),
            format!("client saw no answer for {} around the failover (last answer before the loss to first after the reconnect)", secs(first_after - last_before)),
            format!("longest silence between two answers: {} (ended {} after the stop began)", secs(silence), silence_end.map_or("-".into(), |t| secs(t - stop_began))),
            format!("answers while the node was down: {} in {}", report.answers_between(node_down, start_began), secs(start_began - node_down)),
            format!("`node-start` took {}", secs(node_up - start_began)),
        ];
        record_figures("cluster_node_stop", &figures);

        assert_eq!(report.strange, 0, "answers that were not the client's requests");
        assert!(report.lost.is_empty(), "{} requests never answered (first: {:?})", report.lost.len(), &report.lost[..report.lost.len().min(10)]);
        assert_eq!(report.answered, report.sent);
        host.stop().await.expect("the host stops cleanly");
        client.close().await;
        drop(down);
        let left = sweep.finish();
        assert_eq!(left, (vec![], vec![]), "everything the test declared is gone from the cluster");
    })
    .await;
}

/// Two hosts on different nodes, competing consumers of one service; the node of one of them
/// is stopped: the other keeps serving all along, the first comes back on another node, and
/// every request is answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_two_hosts_on_different_nodes_keep_serving_when_one_node_stops() {
    within("cluster_two_hosts_on_different_nodes_keep_serving_when_one_node_stops", async {
        let _turn = CLUSTER.lock().await;
        blocking(cluster_up).await;
        let service = unique("prod-pair");
        let mut sweep = Sweep::new(Target::Cluster, &service);
        // `urls` are tried in a shuffled order, so an order alone cannot pin a host to a node:
        // host A may use any node; host B names only the two A is not on.
        let (metrics_a, metrics_b) = (free_address(), free_address());
        let text_a = config_text(
            &service,
            &format!("metrics = \"{metrics_a}\""),
            &format!("{}\nqueue_profile = \"quorum\"", urls(&[1, 2, 3])),
        );
        let (dir_a, config_a) = write_config(&format!("{service}-a"), &text_a);
        sweep.dir(&dir_a);
        let host_a = Host::start(&config_a.expect("config A parses")).await;
        let watch_a = ReadyWatch::start(&host_a);
        let (node_a, peer_a) = new_host_connection(&service, &[]).await;
        let others: Vec<usize> = (1..=3).filter(|&n| n != node_a).collect();
        let text_b = config_text(
            &service,
            &format!("metrics = \"{metrics_b}\""),
            &format!("{}\nqueue_profile = \"quorum\"", urls(&[others[1], others[0]])),
        );
        let (dir_b, config_b) = write_config(&format!("{service}-b"), &text_b);
        sweep.dir(&dir_b);
        let host_b = Host::start(&config_b.expect("config B parses")).await;
        let watch_b = ReadyWatch::start(&host_b);
        let (node_b, peer_b) = new_host_connection(&service, &[peer_a]).await;
        assert_ne!(node_a, node_b);
        let client_node = 6 - node_a - node_b;
        let client =
            GoClient::connect(&Endpoint::plain(&node_url(client_node)), &service, "go-client", &["echo"]).await;

        let load = Load::start(client, 2000);
        load.wait_answered(400).await;
        let (a_before, b_before) = (messages_handled(metrics_a, "echo"), messages_handled(metrics_b, "echo"));
        assert!(a_before > 0 && b_before > 0, "both hosts serve the queue (A {a_before}, B {b_before})");

        let stop_began = Instant::now();
        let mut down = blocking(move || NodeDown::stop(node_a)).await;
        let node_down = Instant::now();
        let b_at_stop = messages_handled(metrics_b, "echo");
        tokio::time::sleep(Duration::from_secs(3)).await;
        let b_while_down = messages_handled(metrics_b, "echo") - b_at_stop;
        let (lost_a, back_a) = watch_a.outage_after(stop_began);
        let (new_node_a, _) = new_host_connection(&service, &[peer_a, peer_b]).await;
        assert_ne!(new_node_a, node_a, "host A came back on a node that runs");

        let start_began = Instant::now();
        let (down, started) = blocking(move || {
            let started = down.start();
            (down, started)
        })
        .await;
        started.unwrap_or_else(|e| panic!("{e}"));
        tokio::time::sleep(Duration::from_secs(2)).await;
        let (report, client) = load.finish(Duration::from_secs(90), Duration::from_secs(3)).await;
        let (a_after, b_after) = (messages_handled(metrics_a, "echo"), messages_handled(metrics_b, "echo"));
        let (silence, _) = report.longest_silence(stop_began, start_began);
        let figures = vec![
            format!(
                "host A on warren-c{node_a} (stopped), host B on warren-c{node_b}, client on warren-c{client_node}"
            ),
            format!(
                "requests sent: {}, answered: {}, lost: {}, duplicates: {}",
                report.sent,
                report.answered,
                report.lost.len(),
                report.duplicates
            ),
            format!("handled by A: {a_after}, by B: {b_after} (A {a_before} / B {b_before} before the stop)"),
            format!(
                "handled more than once (answered twice or not): {}",
                (a_after + b_after).saturating_sub(report.sent as u64)
            ),
            format!(
                "B handled {b_while_down} in the 3 s after node-stop returned; B lost its connection: {}",
                watch_b.ever_lost()
            ),
            format!(
                "A lost the broker {} after the stop began, back (on warren-c{new_node_a}) {} later",
                lost_a.map_or("-".into(), |t| secs(t - stop_began)),
                match (lost_a, back_a) {
                    (Some(l), Some(b)) => secs(b - l),
                    _ => "-".into(),
                }
            ),
            format!("longest silence between two answers while the node was down: {}", secs(silence)),
            format!(
                "answers while the node was down: {} in {}",
                report.answers_between(node_down, start_began),
                secs(start_began - node_down)
            ),
        ];
        record_figures("cluster_two_hosts", &figures);

        assert!(!watch_b.ever_lost(), "host B, whose node kept running, never lost the broker");
        assert!(b_while_down > 0, "host B kept serving while A's node was down");
        assert_eq!(report.strange, 0);
        assert!(
            report.lost.is_empty(),
            "{} requests never answered (first: {:?})",
            report.lost.len(),
            &report.lost[..report.lost.len().min(10)]
        );
        host_a.stop().await.expect("host A stops cleanly");
        host_b.stop().await.expect("host B stops cleanly");
        client.close().await;
        drop(down);
        let left = sweep.finish();
        assert_eq!(left, (vec![], vec![]), "everything the test declared is gone from the cluster");
    })
    .await;
}

// ------------------------------------------------------------------------------------------
// TLS

/// `[broker.tls]` lines with absolute paths to the harness's certificates.
fn tls_table(files: &[(&str, &str)]) -> String {
    let mut table = String::from("[broker.tls]\n");
    for (key, file) in files {
        table += &format!("{key} = \"{}\"\n", tls_file(file).display());
    }
    table
}

/// Warren over `amqps://` with `ca_file` serves a request of a goamqp client that is itself
/// connected over TLS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_host_serves_a_goamqp_request_over_amqps() {
    within("tls_host_serves_a_goamqp_request_over_amqps", async {
        blocking(tls_up).await;
        let service = unique("prod-tls");
        let mut sweep = Sweep::new(Target::Tls, &service);
        let broker =
            format!("url = \"amqps://guest:guest@localhost:{TLS_PORT}/%2f\"\n{}", tls_table(&[("ca_file", "ca.pem")]));
        let (dir, config) = write_config(&service, &config_text(&service, "", &broker));
        sweep.dir(&dir);
        let host = Host::start(&config.expect("the config parses")).await;
        let mut client = GoClient::connect(&Endpoint::tls_guest(), &service, "go-client", &["greet"]).await;
        client.request("greet", br#"{"name":"Ada"}"#).await.unwrap();
        let answer = client.answer(Duration::from_secs(20)).await.expect("an answer over TLS");
        assert_eq!(answer.routing_key, "greet");
        assert_eq!(String::from_utf8_lossy(&answer.body), r#"{"greeting":"Hello, Ada!"}"#);
        assert_eq!(answer.properties.correlation_id().as_ref(), None, "goamqp's request had none, the answer has none");

        let connections =
            blocking(|| listing(TLS_NODE, "list_connections", &["client_properties", "ssl", "user"]).unwrap()).await;
        let mine = connections
            .iter()
            .find(|c| is_host_of(c, &service))
            .unwrap_or_else(|| panic!("the host's connection is listed: {connections:?}"));
        assert_eq!(mine["ssl"], true, "the host's connection is TLS: {mine}");

        host.stop().await.expect("the host stops cleanly");
        client.close().await;
        assert_eq!(sweep.finish(), (vec![], vec![]), "everything the test declared is gone");
    })
    .await;
}

/// A broker certificate from a CA the host does not trust: the host refuses at start, naming
/// the host and rustls' reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_host_refuses_a_broker_certificate_from_another_ca() {
    within("tls_host_refuses_a_broker_certificate_from_another_ca", async {
        blocking(tls_up).await;
        let service = unique("prod-tls-ca");
        let mut sweep = Sweep::new(Target::Tls, &service);
        let broker = format!(
            "url = \"amqps://guest:guest@localhost:{TLS_PORT}/%2f\"\n{}",
            tls_table(&[("ca_file", "other-ca.pem")])
        );
        let (dir, config) = write_config(&service, &config_text(&service, "", &broker));
        sweep.dir(&dir);
        init_logging();
        let error = match Server::start(&config.expect("the config parses")).await {
            Ok(_) => panic!("the host connected to a broker whose certificate it cannot verify"),
            Err(error) => error.to_string(),
        };
        assert!(error.contains("TLS with localhost"), "names the host: {error}");
        assert!(error.contains("UnknownIssuer"), "says why: {error}");
        assert!(!error.contains('\n'), "one line: {error}");
        assert!(!error.contains("guest:guest"), "no password: {error}");
        assert_eq!(sweep.finish(), (vec![], vec![]), "nothing was declared");
    })
    .await;
}

/// A client certificate and no password: the host logs in with SASL EXTERNAL as the
/// certificate's CN, and serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_client_certificate_logs_in_with_sasl_external() {
    within("tls_client_certificate_logs_in_with_sasl_external", async {
        blocking(tls_up).await;
        let service = unique("prod-mtls");
        let mut sweep = Sweep::new(Target::Tls, &service);
        let broker = format!(
            "url = \"amqps://localhost:{TLS_PORT}/%2f\"\n{}",
            tls_table(&[("ca_file", "ca.pem"), ("cert_file", "client.pem"), ("key_file", "client.key")])
        );
        let (dir, config) = write_config(&service, &config_text(&service, "", &broker));
        sweep.dir(&dir);
        let host = Host::start(&config.expect("the config parses")).await;

        let connections = blocking(|| {
            listing(TLS_NODE, "list_connections", &["client_properties", "user", "auth_mechanism"]).unwrap()
        })
        .await;
        let mine = connections
            .iter()
            .find(|c| is_host_of(c, &service))
            .unwrap_or_else(|| panic!("the host's connection is listed: {connections:?}"));
        assert_eq!(mine["user"], "warren-client", "logged in as the certificate's CN: {mine}");
        assert_eq!(mine["auth_mechanism"], "EXTERNAL", "{mine}");

        let mut client = GoClient::connect(&Endpoint::tls_guest(), &service, "go-client", &["echo"]).await;
        client.request("echo", br#"{"n":1}"#).await.unwrap();
        let answer = client.answer(Duration::from_secs(20)).await.expect("an answer");
        assert_eq!(answer.body, br#"{"n":1}"#);
        host.stop().await.expect("the host stops cleanly");
        client.close().await;
        assert_eq!(sweep.finish(), (vec![], vec![]), "everything the test declared is gone");
    })
    .await;
}

// ------------------------------------------------------------------------------------------
// Bad input

/// The config error for `broker` (the inside of `[broker]`), as one string.
fn broker_error(name: &str, broker: &str) -> String {
    let (dir, config) = write_config(&unique(name), &config_text("bad-input", "", broker));
    let _ = std::fs::remove_dir_all(&dir);
    match config {
        Ok(_) => panic!("the config was accepted:\n{broker}"),
        Err(error) => error.to_string(),
    }
}

/// One line naming the file, line and key, and saying what to fix.
fn assert_one_line(error: &str, key: &str, says: &str) {
    assert!(!error.contains('\n'), "one line: {error}");
    assert!(error.contains(&format!(": {key}: ")), "names {key}: {error}");
    assert!(error.contains(says), "says '{says}': {error}");
    assert!(error.contains("warren.toml:"), "names the file and line: {error}");
}

#[test]
fn bad_input_a_url_list_with_one_bad_entry_is_one_line() {
    let error = broker_error("badurl", &format!("urls = [\"{}\", \"http://node2:5672\"]", node_url(1)));
    assert_one_line(&error, "broker.urls", "'http://node2:5672' is not an AMQP URL");
    assert!(!error.contains("guest:guest"), "the good URL's password is not printed: {error}");
}

#[test]
fn bad_input_a_missing_ca_file_is_one_line() {
    let error = broker_error(
        "noca",
        "url = \"amqps://guest:guest@localhost:5671/%2f\"\n[broker.tls]\nca_file = \"/nonexistent/ca.pem\"",
    );
    assert_one_line(&error, "broker.tls.ca_file", "cannot read /nonexistent/ca.pem");
}

#[test]
fn bad_input_a_key_that_does_not_match_its_certificate_is_one_line() {
    tls_up(); // the certificates
    let broker = format!(
        "url = \"amqps://localhost:{TLS_PORT}/%2f\"\n{}",
        tls_table(&[("ca_file", "ca.pem"), ("cert_file", "client.pem"), ("key_file", "other-client.key")])
    );
    let error = broker_error("badkey", &broker);
    assert_one_line(&error, "broker.tls.key_file", "does not match the certificate");
}

#[test]
fn bad_input_an_empty_or_unreadable_password_file_is_one_line() {
    let dir = std::env::temp_dir().join(unique("password"));
    std::fs::create_dir_all(dir.join("a-folder")).unwrap();
    std::fs::write(dir.join("empty"), "").unwrap();
    std::fs::write(dir.join("blank-first-line"), "\nsecret\n").unwrap();
    let url = "url = \"amqp://guest@127.0.0.1:5672/%2f\"";
    let cases = [
        ("empty", "is empty: put the password on its first line"),
        ("blank-first-line", "is empty: put the password on its first line"),
        ("a-folder", "cannot read"),
        ("missing", "cannot read"),
    ];
    for (file, says) in cases {
        let path = dir.join(file);
        let error = broker_error("pw", &format!("{url}\npassword_file = \"{}\"", path.display()));
        assert_one_line(&error, "broker.password_file", says);
        assert!(error.contains(&path.display().to_string()), "names the file: {error}");
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// A wrong password: "the broker refused user 'guest'", not "is the broker running?".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_wrong_credentials_say_the_broker_refused_the_user() {
    within("bad_input_wrong_credentials_say_the_broker_refused_the_user", async {
        let service = unique("prod-creds");
        let broker = "url = \"amqp://guest:not-the-password@127.0.0.1:5672/%2f\"";
        let (dir, config) = write_config(&service, &config_text(&service, "", broker));
        init_logging();
        let started = Instant::now();
        let result = Server::start(&config.expect("the config parses")).await;
        let _ = std::fs::remove_dir_all(dir);
        let error = match result {
            Ok(_) => panic!("the broker accepted a wrong password"),
            Err(error) => error.to_string(),
        };
        assert!(error.contains("refused user 'guest'"), "{error}");
        assert!(!error.contains("not-the-password"), "the password is not printed: {error}");
        assert!(!error.contains("Is the broker running"), "no hint that the broker is down: {error}");
        assert!(started.elapsed() < Duration::from_secs(30), "refused at once, not retried");
    })
    .await;
}

/// `broker.password_file` against the real broker (README, "Secrets"): a user of the test's
/// own (`rabbitmqctl add_user`, full rights on `/`, deleted afterwards also when the test
/// fails) whose password is only in a file; the URL names the user and no password. The host
/// logs in (the broker lists its connection under that user) and answers a goamqp request;
/// the same config with a wrong password in the file is refused, naming the user. Fails if the
/// file were not read (RabbitMQ refuses a login without the password) or another identity
/// were used (the connection would be listed under `guest`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_file_logs_in_to_the_real_broker_as_its_user() {
    within("password_file_logs_in_to_the_real_broker_as_its_user", async {
        let service = unique("prod-pwfile");
        let cleanup = warren_tests::Cleanup::new();
        cleanup.service(&service);
        let user = format!("{service}-user");
        let password = uuid::Uuid::new_v4().simple().to_string();
        cleanup.user(&user);
        warren_tests::rabbitmqctl(&["add_user", &user, &password]);
        warren_tests::rabbitmqctl(&["set_permissions", "-p", "/", &user, ".*", ".*", ".*"]);
        let dir = std::env::temp_dir().join(format!("warren-production-{service}"));
        std::fs::create_dir_all(&dir).unwrap();
        cleanup.dir(&dir);
        let config_with = |secret: &str| {
            let file = dir.join("amqp-password");
            std::fs::write(&file, format!("{secret}\n")).unwrap();
            let broker = format!("url = \"amqp://{user}@127.0.0.1:5672/%2f\"\npassword_file = \"{}\"", file.display());
            write_config(&service, &config_text(&service, "", &broker)).1.expect("the config parses")
        };

        init_logging();
        let refused = match Server::start(&config_with("not-the-password")).await {
            Ok(_) => panic!("the broker accepted a wrong password from the file"),
            Err(error) => error.to_string(),
        };
        assert!(refused.contains(&format!("refused user '{user}'")), "{refused}");

        let host = Host::start(&config_with(&password)).await;
        let connections = warren_tests::broker_listing("list_connections", &["user", "client_properties"]);
        let users: Vec<_> = connections.iter().filter(|c| is_host_of(c, &service)).map(|c| c["user"].clone()).collect();
        assert_eq!(users, [serde_json::json!(user)], "the host's connection, by user, on the broker");
        let mut client = warren_tests::GoClient::new(&service, "go-client", &["echo"]).await;
        client.request("echo", b"through the password file").await;
        let answer = client.response(warren_tests::DEADLINE).await.expect("answered");
        assert_eq!(answer.data, b"through the password file");
        host.stop().await.expect("the host stops cleanly");
        client.cleanup().await;
    })
    .await;
}
