//! Soak: a `warren run` process under steady load for a given time, with a plugin swap every
//! 15 s, a config reload every 20 s, panicking and looping requests mixed in and one broker
//! restart; each minute it prints the host's resident memory, open files, threads and async
//! tasks, and what was sent, answered and lost.
//!
//! ```text
//! cargo run -p warren -- build                  # target/plugins/{echo,greet,chaos}.wasm
//! cargo build --release -p warren --bin warren --example soak
//! target/release/examples/soak [MINUTES] [IN_FLIGHT]      # default 30 minutes, 100 in flight
//! ```
//!
//! Run as root (`.ci/rabbit-nodes` needs it): the host talks to a private RabbitMQ node
//! (`.ci/rabbit-nodes dev-up`, data in `/var/tmp/warren-soak-<pid>`, a free port in
//! 5790–5799), so the restart never touches the default broker. The host is
//! `target/release/warren run` in a process of its own, read from `/proc/<pid>` (RSS, open
//! file descriptors, threads) and its `/metrics` (`warren_runtime_tasks`). Everything it made
//! (the node and its data, the temp folder with config, plugins and compiled-code cache) is
//! removed at the end, after a failure and on Ctrl-C.
//!
//! The load: `IN_FLIGHT` workers each send a `hello` request (`hello.wasm`, alternately `echo`
//! and `greet`) and wait for its answer before the next; beside them `chaos` gets a `panic`
//! every 2 s and a `loop` every 10 s (deadline 300 ms), whose outcome is a dead letter (the
//! config's `dead_letter_exchange`, a queue the soak reads). Requests carry the sequence number
//! as correlation id and the answers and dead letters are tallied by it, over any number of
//! reconnections (the crate's `Client` forgets calls across a lost connection, so the soak
//! keeps its own tally, on the crate's topology and message properties).
//!
//! - **sent**: the broker confirmed the request (so it was in the durable request queue). A
//!   request the broker did not take (down, restarting) is not sent: its worker tries again.
//! - **answered** / **dead-lettered**: a sent request whose answer (or dead-letter copy)
//!   arrived, counted once (a second answer, possible after a broker restart, is a duplicate).
//! - **open**: sent, neither answered nor dead-lettered yet. **lost**: open at the end, after
//!   the load stopped and up to 60 s of waiting for stragglers.
//!
//! Verdict: resident memory and open files grow ≤ 10 % from minute 5 to the end (minute 5 is
//! after warm-up: pools, caches and the first swaps), and nothing is lost.

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_lite::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Confirmation};
use tokio::sync::oneshot;
use warren::amqp::broker;
use warren::amqp::client::{ReplyQueue, client_topology};
use warren::amqp::naming;
use warren::amqp::topology::{Binding, Exchange, ExchangeKind, Queue};

const SERVICE: &str = "warren-soak";
const CLIENT: &str = "warren-soak-client";
const DLX: &str = "warren-soak.dlx";
const DLQ: &str = "warren-soak.dead-letters";
const HELLO: &[u8] = br#"{"name":"Ada"}"#;
const SWAP_EVERY: Duration = Duration::from_secs(15);
const RELOAD_EVERY: Duration = Duration::from_secs(20);
const PANIC_EVERY: Duration = Duration::from_secs(2);
const LOOP_EVERY: Duration = Duration::from_secs(10);
/// How long a worker waits for one answer before it sends the next (the request stays open).
const ANSWER_WAIT: Duration = Duration::from_secs(30);
/// After the load stops: how long open requests may still be answered.
const DRAIN: Duration = Duration::from_secs(60);
/// The minute the verdict measures growth from.
const BASELINE_MINUTE: f64 = 5.0;

// Tally flags, one byte per request.
const CHAOS: u8 = 1;
const SENT: u8 = 2;
const ANSWERED: u8 = 4;
const DEAD: u8 = 8;

fn arg<T: std::str::FromStr>(n: usize, default: T) -> T {
    std::env::args().nth(n).and_then(|a| a.parse().ok()).unwrap_or(default)
}

/// Every request's fate, by sequence number (its correlation id).
#[derive(Default)]
struct Tally {
    flags: Mutex<Vec<u8>>,
    waiting: Mutex<HashMap<u64, oneshot::Sender<()>>>,
    duplicates: AtomicU64,
    /// Publishes the broker did not take (down or restarting): not sent.
    refused: AtomicU64,
    /// Answers or dead letters without a correlation id of ours.
    foreign: AtomicU64,
}

#[derive(Debug, Default, Clone, Copy)]
struct Counts {
    sent: u64,
    answered: u64,
    dead: u64,
    open: u64,
    /// A `hello` dead-lettered or a `chaos` request answered.
    unexpected: u64,
}

impl Tally {
    fn next(&self, chaos: bool) -> (u64, oneshot::Receiver<()>) {
        let seq = {
            let mut flags = self.flags.lock().unwrap();
            flags.push(if chaos { CHAOS } else { 0 });
            flags.len() as u64 - 1
        };
        let (tx, rx) = oneshot::channel();
        self.waiting.lock().unwrap().insert(seq, tx);
        (seq, rx)
    }

    fn mark(&self, seq: u64, flag: u8) {
        let mut flags = self.flags.lock().unwrap();
        let Some(f) = flags.get_mut(seq as usize) else {
            self.foreign.fetch_add(1, Ordering::Relaxed);
            return;
        };
        if flag != SENT && *f & (ANSWERED | DEAD) != 0 {
            self.duplicates.fetch_add(1, Ordering::Relaxed);
        }
        *f |= flag;
        drop(flags);
        if flag != SENT
            && let Some(waiter) = self.waiting.lock().unwrap().remove(&seq)
        {
            let _ = waiter.send(());
        }
    }

    fn forget(&self, seq: u64) {
        self.waiting.lock().unwrap().remove(&seq);
    }

    fn counts(&self) -> Counts {
        let mut c = Counts::default();
        for &f in self.flags.lock().unwrap().iter().filter(|&&f| f & SENT != 0) {
            c.sent += 1;
            c.answered += u64::from(f & ANSWERED != 0);
            c.dead += u64::from(f & DEAD != 0);
            c.open += u64::from(f & (ANSWERED | DEAD) == 0);
            c.unexpected += u64::from(if f & CHAOS != 0 { f & ANSWERED != 0 } else { f & DEAD != 0 });
        }
        c
    }
}

/// The client's side of the broker: a confirm channel for requests while connected.
#[derive(Default)]
struct Link {
    requests: Mutex<Option<Channel>>,
}

/// Connects, declares the client's topology (goamqp's durable reply queue, the dead-letter
/// exchange and a queue on it), and tallies answers and dead letters until the connection
/// goes; then again, until `stop`.
async fn keep_linked(url: String, link: Arc<Link>, tally: Arc<Tally>, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::Relaxed) {
        match connect(&url).await {
            Ok((connection, requests, replies, dead)) => {
                *link.requests.lock().unwrap() = Some(requests);
                let (t1, t2) = (tally.clone(), tally.clone());
                let replies = tokio::spawn(consume(replies, move |seq| t1.mark(seq, ANSWERED), None));
                let dead = tokio::spawn(consume(dead, move |seq| t2.mark(seq, DEAD), Some(DLQ)));
                let (replies_abort, dead_abort) = (replies.abort_handle(), dead.abort_handle());
                let _ = futures_lite::future::race(replies, dead).await;
                replies_abort.abort();
                dead_abort.abort();
                *link.requests.lock().unwrap() = None;
                let _ = connection.close(200, "reconnecting".into()).await;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
}

async fn connect(url: &str) -> Result<(lapin::Connection, Channel, lapin::Consumer, lapin::Consumer), String> {
    let connection = broker::connect(url, CLIENT).await.map_err(|e| e.to_string())?;
    let mut topology = client_topology(SERVICE, CLIENT, &["hello", "chaos"], ReplyQueue::Durable);
    topology.exchanges.push(Exchange { name: DLX.into(), kind: ExchangeKind::Fanout });
    topology.queues.push(Queue { name: DLQ.into(), durable: true, arguments: Default::default() });
    topology.bindings.push(Binding {
        queue: DLQ.into(),
        exchange: DLX.into(),
        routing_key: String::new(),
        arguments: Default::default(),
    });
    broker::declare(&connection, &topology).await.map_err(|e| e.to_string())?;
    let consumer = |queue: String| {
        let connection = &connection;
        async move {
            let channel = broker::open_channel(connection).await.map_err(|e| e.to_string())?;
            channel
                .basic_consume(queue.as_str().into(), "".into(), BasicConsumeOptions::default(), FieldTable::default())
                .await
                .map_err(|e| e.to_string())
        }
    };
    let replies = consumer(naming::response_queue(SERVICE, CLIENT)).await?;
    let dead = consumer(DLQ.into()).await?;
    let requests = broker::open_channel(&connection).await.map_err(|e| e.to_string())?;
    requests.confirm_select(ConfirmSelectOptions::default()).await.map_err(|e| e.to_string())?;
    Ok((connection, requests, replies, dead))
}

/// Acks every delivery and hands its correlation id on; `skip_probes`: the host's dead-letter
/// probe (header `x-warren-probe`) is no request of ours.
async fn consume(mut deliveries: lapin::Consumer, on_id: impl Fn(u64), skip_probes: Option<&str>) {
    while let Some(Ok(delivery)) = deliveries.next().await {
        let _ = delivery.ack(BasicAckOptions::default()).await;
        let probe = skip_probes.is_some()
            && delivery.properties.headers().as_ref().is_some_and(|h| h.inner().contains_key("x-warren-probe"));
        if probe {
            continue;
        }
        match delivery.properties.correlation_id().as_ref().and_then(|id| id.as_str().parse().ok()) {
            Some(seq) => on_id(seq),
            None => on_id(u64::MAX),
        }
    }
}

/// Sends one request; true when the broker confirmed it (it is then `SENT`).
async fn send(link: &Link, tally: &Tally, seq: u64, key: &str, body: &[u8]) -> bool {
    let Some(channel) = link.requests.lock().unwrap().clone() else { return false };
    let properties =
        broker::message_properties(CLIENT, FieldTable::default()).with_correlation_id(seq.to_string().into());
    let options = BasicPublishOptions { mandatory: true, ..Default::default() };
    let exchange = naming::request_exchange(SERVICE);
    let confirmed = match channel.basic_publish(exchange.as_str().into(), key.into(), options, body, properties).await {
        Ok(confirm) => confirm.await,
        Err(error) => Err(error),
    };
    let sent = matches!(confirmed, Ok(Confirmation::Ack(None)));
    if sent {
        tally.mark(seq, SENT);
    }
    sent
}

/// Sends `body` to `key`, one request at a time: waits for each answer (up to
/// [`ANSWER_WAIT`]), then `pause`, then the next.
async fn worker(link: Arc<Link>, tally: Arc<Tally>, stop: Arc<AtomicBool>, key: &str, body: &[u8], pause: Duration) {
    while !stop.load(Ordering::Relaxed) {
        let (seq, answered) = tally.next(key == "chaos");
        if !send(&link, &tally, seq, key, body).await {
            tally.forget(seq);
            tally.refused.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        }
        if tokio::time::timeout(ANSWER_WAIT, answered).await.is_err() {
            tally.forget(seq);
        }
        tokio::time::sleep(pause).await;
    }
}

/// Writes `bytes` to `path` by a temp file and a rename, as a deploy would.
fn replace(path: &Path, bytes: &[u8]) {
    let temp = path.with_extension("soak-tmp");
    std::fs::write(&temp, bytes).unwrap();
    std::fs::rename(&temp, path).unwrap();
}

fn config_text(broker_port: u16, metrics_port: u16, max_retries: u32) -> String {
    format!(
        "# written by host/examples/soak.rs; max_retries toggles every 20 s (a config reload)\n\
         [service]\nname = \"{SERVICE}\"\nplugins = \"plugins\"\nmetrics = \"127.0.0.1:{metrics_port}\"\n\
         [broker]\nurl = \"amqp://guest:guest@127.0.0.1:{broker_port}/%2f\"\ndead_letter_exchange = \"{DLX}\"\n\
         [[request]]\nrouting_key = \"hello\"\nplugin = \"hello\"\n\
         [[request]]\nrouting_key = \"chaos\"\nplugin = \"chaos\"\n\
         [plugin.chaos]\ntimeout_ms = 300\nmax_retries = {max_retries}\n"
    )
}

/// What `/proc` and `/metrics` say of the host at one moment.
#[derive(Debug, Clone, Copy)]
struct Sample {
    minute: f64,
    rss_kib: u64,
    anon_kib: u64,
    fds: u64,
    threads: u64,
    tasks: Option<u64>,
    generation: Option<u64>,
    cpu: f64,
    counts: Counts,
}

fn status_field(status: &str, name: &str) -> u64 {
    status
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// `GET path` on the host's metrics endpoint: status and body.
fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).ok()?;
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, text.split_once("\r\n\r\n").map_or("", |(_, body)| body).to_string()))
}

fn metric(text: &str, name: &str) -> Option<u64> {
    text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse::<f64>().ok()).map(|v| v as u64)
}

fn sample(pid: u32, metrics_port: u16, minute: f64, tally: &Tally) -> Sample {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count() as u64);
    let metrics = http_get(metrics_port, "/metrics").map(|(_, body)| body).unwrap_or_default();
    Sample {
        minute,
        rss_kib: status_field(&status, "VmRSS"),
        anon_kib: status_field(&status, "RssAnon"),
        fds,
        threads: status_field(&status, "Threads"),
        tasks: metric(&metrics, "warren_runtime_tasks"),
        generation: metric(&metrics, "warren_plugin_generation{plugin=\"hello\"}"),
        cpu: common::cpu_seconds(&pid.to_string()),
        counts: tally.counts(),
    }
}

fn opt(v: Option<u64>) -> String {
    v.map_or("-".into(), |v| v.to_string())
}

fn print_row(s: &Sample, previous: Option<&Sample>) {
    let (cpu, rate) = match previous {
        Some(p) => {
            let seconds = ((s.minute - p.minute) * 60.0).max(1.0);
            let cpu = format!("{:.0} %", (s.cpu - p.cpu) / seconds * 100.0);
            (cpu, format!("{:.0}", (s.counts.answered - p.counts.answered) as f64 / seconds))
        }
        None => ("-".into(), "-".into()),
    };
    println!(
        "| {:>5.1} | {:>6.1} | {:>6.1} | {:>4} | {:>7} | {:>5} | {:>4} | {:>5} | {:>6} | {:>10} | {:>10} | {:>6} | {:>4} |",
        s.minute,
        s.rss_kib as f64 / 1024.0,
        s.anon_kib as f64 / 1024.0,
        s.fds,
        s.threads,
        opt(s.tasks),
        opt(s.generation),
        cpu,
        rate,
        s.counts.sent,
        s.counts.answered,
        s.counts.dead,
        s.counts.open,
    );
}

/// What the soak made; removed when dropped (the end, a panic, Ctrl-C).
struct Made {
    repo: PathBuf,
    temp: PathBuf,
    broker_dir: PathBuf,
    broker_up: bool,
    host: Option<Child>,
}

impl Made {
    fn rabbit_nodes(&self, args: &[&str]) -> Result<(), String> {
        let out = Command::new(self.repo.join(".ci/rabbit-nodes"))
            .args(args)
            .output()
            .map_err(|e| format!(".ci/rabbit-nodes: {e}"))?;
        match out.status.success() {
            true => Ok(()),
            false => Err(format!(
                ".ci/rabbit-nodes {}: {}{}",
                args.join(" "),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )),
        }
    }
}

impl Drop for Made {
    fn drop(&mut self) {
        if let Some(mut host) = self.host.take() {
            let _ = Command::new("kill").arg("-TERM").arg(host.id().to_string()).status();
            let deadline = Instant::now() + Duration::from_secs(40);
            while host.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = host.kill();
            let _ = host.wait();
        }
        if self.broker_up {
            let dir = self.broker_dir.display().to_string();
            if let Err(e) = self.rabbit_nodes(&["dev-down", &dir, "--purge"]) {
                eprintln!("soak: could not stop the private broker: {e}");
            }
        }
        let _ = std::fs::remove_dir_all(&self.broker_dir);
        let _ = std::fs::remove_dir_all(&self.temp);
    }
}

/// The first of `candidates` free on 127.0.0.1, with `offset` above it free too (a node's
/// Erlang distribution port).
fn free_port(candidates: impl IntoIterator<Item = u16>, offset: u16) -> u16 {
    let free = |p: u16| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok();
    candidates.into_iter().find(|&p| free(p) && free(p + offset)).expect("no free port for the soak's broker")
}

#[tokio::main]
async fn main() {
    let (minutes, in_flight): (f64, usize) = (arg(1, 30.0), arg(2, 100));
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").canonicalize().unwrap();
    let binary = repo.join("target/release/warren");
    assert!(binary.exists(), "{} is missing: cargo build --release -p warren --bin warren", binary.display());
    let read_plugin = |name: &str| {
        let path = repo.join("target/plugins").join(format!("{name}.wasm"));
        std::fs::read(&path)
            .unwrap_or_else(|e| panic!("{}: {e} (build the plugins: cargo run -p warren -- build)", path.display()))
    };
    let (echo, greet, chaos) = (read_plugin("echo"), read_plugin("greet"), read_plugin("chaos"));

    let pid = std::process::id();
    let temp = std::env::temp_dir().join(format!("warren-soak-{pid}"));
    let mut made = Made {
        repo: repo.clone(),
        temp: temp.clone(),
        broker_dir: PathBuf::from(format!("/var/tmp/warren-soak-{pid}")),
        broker_up: false,
        host: None,
    };
    let plugins = temp.join("plugins");
    std::fs::create_dir_all(&plugins).unwrap();
    let broker_port = free_port(5790..5800, 20000);
    // A port the kernel picks: two soaks at once never pick the same one.
    let metrics_port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let broker_url = format!("amqp://guest:guest@127.0.0.1:{broker_port}/%2f");
    let broker_dir = made.broker_dir.display().to_string();

    let t = Instant::now();
    made.broker_up = true;
    made.rabbit_nodes(&["dev-up", &broker_dir, &broker_port.to_string()]).unwrap_or_else(|e| panic!("{e}"));
    println!("private broker on 127.0.0.1:{broker_port} in {:.1} s (data in {broker_dir})", t.elapsed().as_secs_f64());

    // The client's side first: the dead-letter queue must be bound before the host probes it.
    let (tally, link, stop) = (Arc::new(Tally::default()), Arc::new(Link::default()), Arc::new(AtomicBool::new(false)));
    let linked = tokio::spawn(keep_linked(broker_url.clone(), link.clone(), tally.clone(), stop.clone()));
    while link.requests.lock().unwrap().is_none() {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    replace(&plugins.join("hello.wasm"), &echo);
    replace(&plugins.join("chaos.wasm"), &chaos);
    let config = temp.join("warren.toml");
    replace(&config, config_text(broker_port, metrics_port, 5).as_bytes());
    let log_path = temp.join("host.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let host = Command::new(&binary)
        .args(["run", "--config"])
        .arg(&config)
        .env("WARREN_STATE_DIR", temp.join("state"))
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .stdin(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("{}: {e}", binary.display()));
    let host_pid = host.id();
    made.host = Some(host);
    let t = Instant::now();
    loop {
        let ready = http_get(metrics_port, "/readyz").map(|(status, _)| status) == Some(200);
        // After /readyz: a host that exited meanwhile is not taken for ready.
        if let Some(exit) = made.host.as_mut().unwrap().try_wait().unwrap() {
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            panic!("the host exited ({exit}) before it was ready:\n{log}");
        }
        if ready {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(120),
            "the host was not ready after 120 s: see {}",
            log_path.display()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "host pid {host_pid} ready in {:.1} s; {minutes} min, {in_flight} in flight, swap every {} s, config reload every {} s, panic every {} s, loop every {} s",
        t.elapsed().as_secs_f64(),
        SWAP_EVERY.as_secs(),
        RELOAD_EVERY.as_secs(),
        PANIC_EVERY.as_secs(),
        LOOP_EVERY.as_secs()
    );

    let start = Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..in_flight {
        workers.spawn(worker(link.clone(), tally.clone(), stop.clone(), "hello", HELLO, Duration::ZERO));
    }
    workers.spawn(worker(link.clone(), tally.clone(), stop.clone(), "chaos", b"panic", PANIC_EVERY));
    workers.spawn(worker(link.clone(), tally.clone(), stop.clone(), "chaos", b"loop", LOOP_EVERY));
    let mut chores = tokio::task::JoinSet::new();
    let hello = plugins.join("hello.wasm");
    chores.spawn(async move {
        for swap in 1u64.. {
            tokio::time::sleep(SWAP_EVERY).await;
            replace(&hello, if swap % 2 == 1 { &greet } else { &echo });
        }
    });
    let config_path = config.clone();
    chores.spawn(async move {
        for reload in 1u32.. {
            tokio::time::sleep(RELOAD_EVERY).await;
            replace(&config_path, config_text(broker_port, metrics_port, 5 - reload % 2).as_bytes());
        }
    });
    let restart_at = Duration::from_secs_f64(minutes * 60.0 / 3.0);
    let (restart_repo, restart_dir) = (repo.clone(), broker_dir.clone());
    chores.spawn(async move {
        tokio::time::sleep(restart_at).await;
        let run = |args: Vec<String>| {
            let script = restart_repo.join(".ci/rabbit-nodes");
            async move { tokio::process::Command::new(script).args(args).output().await.map(|o| o.status.success()) }
        };
        let t = Instant::now();
        let down = run(vec!["dev-down".into(), restart_dir.clone()]).await;
        let stopped = t.elapsed();
        let up = run(vec!["dev-up".into(), restart_dir, broker_port.to_string()]).await;
        println!(
            "  broker restarted at {:.1} min: dev-down {:?} in {:.1} s, dev-up {:?} in {:.1} s",
            restart_at.as_secs_f64() / 60.0,
            down,
            stopped.as_secs_f64(),
            up,
            (t.elapsed() - stopped).as_secs_f64()
        );
    });

    println!(
        "| min | RSS MiB | anon MiB | FDs | threads | tasks | gen | CPU | ans/s | sent | answered | dead-l. | open |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mut samples = vec![sample(host_pid, metrics_port, 0.0, &tally)];
    print_row(&samples[0], None);
    let end = start + Duration::from_secs_f64(minutes * 60.0);
    let mut next = start + Duration::from_secs(60);
    let mut failure: Option<String> = None;
    while Instant::now() < end {
        tokio::select! {
            _ = tokio::time::sleep_until(next.min(end).into()) => {}
            _ = tokio::signal::ctrl_c() => { failure = Some("interrupted".into()); break; }
        }
        if let Some(exit) = made.host.as_mut().unwrap().try_wait().unwrap() {
            failure = Some(format!("the host exited: {exit}"));
            break;
        }
        if Instant::now() >= next.min(end) {
            let s = sample(host_pid, metrics_port, start.elapsed().as_secs_f64() / 60.0, &tally);
            print_row(&s, samples.last());
            samples.push(s);
            next += Duration::from_secs(60);
        }
    }
    stop.store(true, Ordering::Relaxed);
    chores.abort_all();
    if failure.is_none() {
        workers.join_all().await;
        let drained = Instant::now();
        while tally.counts().open > 0 && drained.elapsed() < DRAIN {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let s = sample(host_pid, metrics_port, start.elapsed().as_secs_f64() / 60.0, &tally);
        println!("after the load stopped and {:.1} s of waiting for open requests:", drained.elapsed().as_secs_f64());
        print_row(&s, None);
        samples.push(s);
    }
    linked.abort();

    let last = *samples.last().unwrap();
    let c = last.counts;
    println!(
        "sent {} (confirmed by the broker), answered {}, dead-lettered {}, lost {} (sent, neither answered nor dead-lettered at the end); \
         duplicates {}, unexpected outcomes {}, not sent (broker down) {}, foreign {}",
        c.sent,
        c.answered,
        c.dead,
        c.open,
        tally.duplicates.load(Ordering::Relaxed),
        c.unexpected,
        tally.refused.load(Ordering::Relaxed),
        tally.foreign.load(Ordering::Relaxed)
    );
    let baseline_minute = BASELINE_MINUTE.min(minutes / 2.0);
    let base = samples.iter().find(|s| s.minute >= baseline_minute - 0.01).copied().unwrap_or(samples[0]);
    let growth = |a: u64, b: u64| (b as f64 - a as f64) / (a.max(1) as f64) * 100.0;
    let (rss, fds) = (growth(base.rss_kib, last.rss_kib), growth(base.fds, last.fds));
    let peak = samples.iter().map(|s| s.rss_kib).max().unwrap_or(0);
    println!(
        "from minute {:.1} to {:.1}: RSS {:.1} → {:.1} MiB ({rss:+.1} %, peak {:.1}), open files {} → {} ({fds:+.1} %), threads {} → {}, tasks {} → {}",
        base.minute,
        last.minute,
        base.rss_kib as f64 / 1024.0,
        last.rss_kib as f64 / 1024.0,
        peak as f64 / 1024.0,
        base.fds,
        last.fds,
        base.threads,
        last.threads,
        opt(base.tasks),
        opt(last.tasks)
    );
    let flat = rss <= 10.0 && fds <= 10.0;
    let ok = failure.is_none() && flat && c.open == 0 && c.unexpected == 0;
    println!(
        "verdict: {} (goal: RSS and open files ≤ +10 % from minute {baseline_minute} to the end, 0 lost){}",
        if ok { "PASS" } else { "FAIL" },
        failure.map(|f| format!(": {f}")).unwrap_or_default()
    );
    if !ok {
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(20).collect();
        println!("host log, last lines:\n{}", tail.into_iter().rev().collect::<Vec<_>>().join("\n"));
    }
    drop(made);
    std::process::exit(if ok { 0 } else { 1 });
}
