//! The embedded key-value store under `warren run` (issue 23), black-box with the real binary
//! and the `counter` plugin: a count survives a SIGKILL that lands while increments are being
//! written (every count answered before the kill is kept; the store opens again, not torn), and
//! a second host on the same store file is refused with words that say what to do.
//!
//! Each test has a folder and a service of its own; the queues it leaves expire with goamqp's
//! `x-expires` and are deleted at the end.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::Running;
use warren::amqp::client::Client;

const BROKER: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// `counter.wasm`, built once per test binary.
fn counter_wasm() -> &'static Path {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT.get_or_init(|| {
        let repo = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        let out = repo.join("target/test-plugins-kv");
        let plugins = warren::tooling::builder::find_plugins(&repo.join("plugins")).unwrap();
        let counter = plugins.iter().find(|p| p.name == "counter").expect("plugins/counter");
        warren::tooling::builder::build_plugin(counter, &out, &repo.join("target/plugin-build")).unwrap();
        out.join("counter.wasm")
    })
}

/// A folder with a `warren.toml` serving `count` with `counter`, granted bucket `counters`
/// in the embedded store (the default path, beside the config).
struct Project {
    dir: PathBuf,
    service: String,
}

impl Project {
    fn new(what: &str) -> Project {
        let service = format!("t-{what}-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
        let dir = std::env::temp_dir().join(format!("warren-cli-kv-{service}"));
        std::fs::create_dir_all(dir.join("plugins")).unwrap();
        std::fs::copy(counter_wasm(), dir.join("plugins/counter.wasm")).unwrap();
        let config = format!(
            "[service]\nname = \"{service}\"\nplugins = \"plugins\"\n[broker]\nprefetch = 50\n\
             [[request]]\nrouting_key = \"count\"\nplugin = \"counter\"\n\
             [plugin.counter]\nkeyvalue = [\"counters\"]\n"
        );
        std::fs::write(dir.join("warren.toml"), config).unwrap();
        Project { dir, service }
    }

    fn run(&self) -> Running {
        Running::spawn(
            Command::new(env!("CARGO_BIN_EXE_warren"))
                .args(["--log-format", "text", "run", "--config"])
                .arg(self.dir.join("warren.toml"))
                .env_remove("RUST_LOG")
                .env("WARREN_BROKER_URL", BROKER)
                .env("WARREN_STATE_DIR", self.dir.join("state"))
                .stdout(Stdio::null()),
        )
    }
}

impl Drop for Project {
    /// Removes the folder and what the host declared on the broker (its request queue and
    /// both exchanges), also when the test failed.
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
        let service = self.service.clone();
        let removed = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().ok()?;
            runtime.block_on(async {
                let connection = lapin::Connection::connect(BROKER, Default::default()).await.ok()?;
                let channel = connection.create_channel().await.ok()?;
                let queue = format!("{service}.direct.exchange.request.queue");
                let _ = channel.queue_delete(queue.as_str().into(), Default::default()).await;
                for exchange in
                    [format!("{service}.direct.exchange.request"), format!("{service}.headers.exchange.response")]
                {
                    let _ = channel.exchange_delete(exchange.as_str().into(), Default::default()).await;
                }
                let _ = connection.close(200, "done".into()).await;
                Some(())
            })
        });
        let _ = removed.join();
    }
}

/// SIGKILL, and wait until it is gone.
fn kill(mut host: Running) {
    host.child.kill().unwrap();
    host.child.wait().unwrap();
}

/// SIGTERM (a clean stop), and wait until it is gone.
fn stop(host: Running) {
    let _ = Command::new("kill").arg("-TERM").arg(host.child.id().to_string()).status();
    let (status, _) = host.exit(Duration::from_secs(40));
    assert!(status.success(), "warren run stopped cleanly on SIGTERM: {status}");
}

/// How long a host may take to start (a first compile of the plugin is slow).
const START: Duration = Duration::from_secs(120);

/// The count `counter` answers for `name`.
async fn count(client: &Client, name: &str) -> u64 {
    let body = serde_json::to_vec(&serde_json::json!({"name": name})).unwrap();
    let reply = client.call("count", &body, Duration::from_secs(20)).await.expect("an answer");
    let counted: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
    counted["count"].as_u64().unwrap_or_else(|| panic!("not a count: {counted}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_count_survives_a_restart_and_a_sigkill_mid_write() {
    let project = Project::new("kv-kill");
    let mut host = project.run();
    host.wait_for("serving", START);
    let client = std::sync::Arc::new(Client::connect_transient(BROKER, &project.service, &["count"]).await.unwrap());
    for expected in 1..=5 {
        assert_eq!(count(&client, "n").await, expected);
    }
    // A clean restart keeps the count.
    stop(host);
    let mut host = project.run();
    host.wait_for("serving", START);
    assert_eq!(count(&client, "n").await, 6, "the count survived a restart");

    // Increments in flight from 20 callers; the host is killed while they are being written.
    let answered = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(6));
    let callers: Vec<_> = (0..20)
        .map(|_| {
            let (client, answered) = (client.clone(), answered.clone());
            tokio::spawn(async move {
                let body = serde_json::to_vec(&serde_json::json!({"name": "n"})).unwrap();
                while let Ok(reply) = client.call("count", &body, Duration::from_secs(2)).await {
                    let counted: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
                    answered.fetch_max(counted["count"].as_u64().unwrap(), std::sync::atomic::Ordering::SeqCst);
                }
            })
        })
        .collect();
    let until = Instant::now() + Duration::from_secs(20);
    while answered.load(std::sync::atomic::Ordering::SeqCst) < 100 {
        assert!(Instant::now() < until, "the callers' counts did not reach 100");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    kill(host);
    let highest = answered.load(std::sync::atomic::Ordering::SeqCst);
    for caller in callers {
        caller.abort();
    }

    // The store opens again (no torn write), and no count answered before the kill is lost.
    let mut host = project.run();
    host.wait_for("serving", START);
    let after = count(&client, "n").await;
    assert!(after > highest, "every answered count was kept: {highest} answered before the kill, {after} after");
    stop(host);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_host_on_the_same_store_file_is_told_what_to_do() {
    let project = Project::new("kv-locked");
    let mut first = project.run();
    first.wait_for("serving", START);
    let mut second = project.run();
    let refused = second.wait_for("open in another process", START);
    assert!(refused.contains("redis://") && refused.contains("[keyvalue] path"), "{refused}");
    assert!(refused.contains("plugin 'counter' (counters)"), "the grant is named: {refused}");
    stop(first);
}
