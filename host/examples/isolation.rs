//! Isolation benchmark: what a misbehaving plugin costs everyone else.
//!
//! ```text
//! cargo run -p warren -- build            # target/plugins/{echo,chaos}.wasm
//! cargo run --release -p warren --example isolation -- [TIMEOUT_MS] [SECONDS] [LOOPS]
//! ```
//!
//! 1. How long a looping call holds its worker before the deadline stops it.
//! 2. `echo` throughput (100 in flight) for SECONDS alone, then with LOOPS (default 1)
//!    `loop` requests always running beside it (each replaced as soon as its deadline
//!    rejects it).

mod common;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::remove_service;
use warren::amqp::client::Client;
use warren::config::Config;
use warren::server::Server;
use warren::wasm::{Request, Runtime};

fn arg(n: usize, default: u64) -> u64 {
    std::env::args().nth(n).and_then(|a| a.parse().ok()).unwrap_or(default)
}

async fn echo_throughput(client: &Arc<Client>, seconds: u64, loops: usize) -> f64 {
    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicU64::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..100 + loops {
        let (client, stop, answered) = (client.clone(), stop.clone(), answered.clone());
        tasks.spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                if i < loops {
                    // Rejected at its deadline: no answer comes, the call times out after it.
                    let _ = client.call("chaos", b"loop", Duration::from_millis(1500)).await;
                } else if client.call("echo", b"ping", Duration::from_secs(30)).await.is_ok() {
                    answered.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
    }
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let counted = answered.load(Ordering::Relaxed);
    tasks.join_all().await;
    counted as f64 / seconds as f64
}

#[tokio::main]
async fn main() {
    let (timeout_ms, seconds, loops) = (arg(1, 1000), arg(2, 10), arg(3, 1) as usize);
    let plugins = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/plugins");
    let text = format!(
        "[service]\nname = \"warren-isolation-bench\"\nplugins = \"{}\"\n[limits]\ntimeout_ms = {timeout_ms}\n\
         [[request]]\nrouting_key = \"echo\"\nplugin = \"echo\"\n[[request]]\nrouting_key = \"chaos\"\nplugin = \"chaos\"\n",
        plugins.display()
    );
    let config = Config::parse(Path::new("bench.toml"), &text, std::env::var("WARREN_BROKER_URL").ok()).unwrap();

    // 1. A loop, called directly: the time until the deadline frees the worker.
    let runtime = Runtime::new(4, 64 << 20, false, None).unwrap();
    let chaos = runtime.load("chaos", &config.plugin_path("chaos"), config.settings_for("chaos"), 1).unwrap();
    let request = Request { routing_key: "chaos".into(), body: b"loop".to_vec(), content_type: None };
    let mut held = Vec::new();
    for _ in 0..5 {
        let start = Instant::now();
        let fault = chaos.handle(&request, &[], &Default::default()).await.expect_err("a loop never returns");
        held.push(start.elapsed());
        assert!(fault.to_string().contains("deadline"), "{fault}");
    }
    let worst = held.iter().max().unwrap();
    let mean = held.iter().sum::<Duration>() / held.len() as u32;
    println!(
        "looping call with a {timeout_ms} ms deadline: worker freed after {:.1} ms on average, {:.1} ms at worst",
        mean.as_secs_f64() * 1e3,
        worst.as_secs_f64() * 1e3
    );

    // 2. Normal traffic with and without loops beside it.
    let server = Server::start(&config).await.unwrap_or_else(|e| panic!("{e}"));
    let client = Arc::new(
        Client::connect_transient(&config.broker_url, "warren-isolation-bench", &["echo", "chaos"]).await.unwrap(),
    );
    let alone = echo_throughput(&client, seconds, 0).await;
    let beside = echo_throughput(&client, seconds, loops).await;
    println!(
        "echo, 100 in flight, {seconds} s each: {alone:.0} req/s alone, {beside:.0} req/s with {loops} loop(s) always running ({:.0} %)",
        beside / alone * 100.0
    );

    Arc::into_inner(client).expect("all calls done").close().await;
    server.stop().await.unwrap();
    remove_service(&config.broker_url, "warren-isolation-bench").await;
}
