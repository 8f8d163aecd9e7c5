//! Round-trip benchmark: a Warren host serving the `echo` plugin in this process, and a
//! goamqp-style client on its own connection, against the local broker.
//!
//! ```text
//! cargo run -p warren -- build            # target/plugins/echo.wasm
//! cargo run --release -p warren --example roundtrip -- [SEQUENTIAL] [TOTAL] [IN_FLIGHT] [BYTES] [PROFILE]
//! ```
//!
//! Prints the latency percentiles of SEQUENTIAL (default 1000) one-at-a-time requests, then
//! the throughput of TOTAL (default 20000) requests with IN_FLIGHT (default 100) in flight.
//! PROFILE is the queue profile, `classic` (default) or `quorum`.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use warren::amqp::client::Client;
use warren::config::Config;
use warren::server::Server;

fn arg(n: usize, default: usize) -> usize {
    std::env::args().nth(n).and_then(|a| a.parse().ok()).unwrap_or(default)
}

/// A duration as whole microseconds.
fn us(d: Duration) -> String {
    format!("{:.0} µs", micros(d))
}

#[tokio::main]
async fn main() {
    let (sequential, total, in_flight, bytes) = (arg(1, 1000), arg(2, 20_000), arg(3, 100), arg(4, 256));
    let profile = std::env::args().nth(5).unwrap_or_else(|| "classic".into());
    // A fixed name per profile: reruns reuse the same queue instead of leaving new ones behind.
    let service = format!("warren-bench-{profile}");
    let plugins = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/plugins");
    let text = format!(
        "[service]\nname = \"{service}\"\nplugins = \"{}\"\n[broker]\nqueue_profile = \"{profile}\"\n\
         [[request]]\nrouting_key = \"echo\"\nplugin = \"echo\"\n",
        plugins.display()
    );
    let config = Config::parse(Path::new("bench.toml"), &text, std::env::var("WARREN_BROKER_URL").ok()).unwrap();
    let server = Server::start(&config).await.unwrap_or_else(|e| panic!("{e}"));
    let client = Arc::new(Client::connect_transient(&config.broker_url, &service, &["echo"]).await.unwrap());
    let body = vec![b'x'; bytes];
    let timeout = Duration::from_secs(30);

    // Warm up: connections, the instance pool, caches.
    for _ in 0..200 {
        client.call("echo", &body, timeout).await.unwrap();
    }

    let mut latencies = Vec::with_capacity(sequential);
    for _ in 0..sequential {
        let start = Instant::now();
        client.call("echo", &body, timeout).await.unwrap();
        latencies.push(start.elapsed());
    }
    latencies.sort();
    println!("sequential round trips: n={sequential}, body={bytes} B, {profile} queues");
    println!(
        "  p50 {}   p90 {}   p99 {}   max {}",
        us(percentile(&latencies, 0.50)),
        us(percentile(&latencies, 0.90)),
        us(percentile(&latencies, 0.99)),
        us(*latencies.last().unwrap())
    );

    let start = Instant::now();
    let semaphore = Arc::new(tokio::sync::Semaphore::new(in_flight));
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..total {
        let permit = semaphore.clone().acquire_owned().await.unwrap();
        let (client, body) = (client.clone(), body.clone());
        calls.spawn(async move {
            let started = Instant::now();
            client.call("echo", &body, timeout).await.unwrap();
            drop(permit);
            started.elapsed()
        });
    }
    let mut latencies: Vec<Duration> = calls.join_all().await;
    let elapsed = start.elapsed();
    latencies.sort();
    println!("throughput: n={total}, in flight={in_flight}, body={bytes} B");
    println!(
        "  {:.0} req/s   p50 {}   p99 {}",
        total as f64 / elapsed.as_secs_f64(),
        us(percentile(&latencies, 0.50)),
        us(percentile(&latencies, 0.99))
    );

    Arc::into_inner(client).expect("all calls done").close().await;
    server.stop().await.unwrap();
    remove_service(&config.broker_url, &service).await;
}
