//! Wasm against native, side by side in one run, through the same consume and publish path:
//! one host serves routing key `native` with a Rust echo function linked into it, and `wasm`
//! with the `echo` component (a fresh sandboxed instance per message).
//!
//! ```text
//! cargo run -p warren -- build                       # target/plugins/echo.wasm
//! cargo run --release -p warren --example bench -- [SECONDS_PER_CELL] [--json]
//! ```
//!
//! For 256 B and 64 KiB bodies and 1, 100 and 1000 requests in flight: throughput, latency
//! percentiles, CPU per request of this process (host and client together) and of the broker,
//! and the wasm/native throughput ratio.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use common::*;
use warren::amqp::client::Client;
use warren::config::Config;
use warren::server::Server;
use warren::wasm::{HandlerError, Header, Request, Response};

fn native_echo(request: &Request, _headers: &[Header]) -> Result<Response, HandlerError> {
    Ok(Response { body: request.body.clone(), headers: Vec::new() })
}

/// The pids of the RabbitMQ server (Erlang's beam) on this machine.
fn broker_pids() -> Vec<String> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .flatten()
        .filter_map(|e| {
            let pid = e.file_name().to_string_lossy().to_string();
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
            comm.trim().starts_with("beam").then_some(pid)
        })
        .collect()
}

struct Cell {
    variant: &'static str,
    bytes: usize,
    in_flight: usize,
    requests: usize,
    per_second: f64,
    p50_us: f64,
    p99_us: f64,
    p999_us: f64,
    host_cpu_us: f64,
    broker_cpu_us: f64,
}

async fn run(client: &Arc<Client>, key: &'static str, bytes: usize, in_flight: usize, seconds: f64) -> Cell {
    let broker = broker_pids();
    let broker_cpu = || broker.iter().map(|p| cpu_seconds(p)).sum::<f64>();
    let (host_before, broker_before) = (cpu_seconds("self"), broker_cpu());
    let load = keep_in_flight(client, key, &vec![b'x'; bytes], in_flight, seconds).await;
    let n = load.latencies.len().max(1) as f64;
    Cell {
        variant: key,
        bytes,
        in_flight,
        requests: load.latencies.len(),
        per_second: load.per_second(),
        p50_us: load.percentile_us(0.50),
        p99_us: load.percentile_us(0.99),
        p999_us: load.percentile_us(0.999),
        host_cpu_us: (cpu_seconds("self") - host_before) / n * 1e6,
        broker_cpu_us: (broker_cpu() - broker_before) / n * 1e6,
    }
}

#[tokio::main]
async fn main() {
    let json = std::env::args().any(|a| a == "--json");
    let seconds: f64 = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(3.0);
    let plugins = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/plugins");
    let text = format!(
        "[service]\nname = \"warren-bench-compare\"\nplugins = \"{}\"\n\
         [[request]]\nrouting_key = \"native\"\nplugin = \"native-echo\"\n\
         [[request]]\nrouting_key = \"wasm\"\nplugin = \"echo\"\n",
        plugins.display()
    );
    let config = Config::parse(Path::new("bench.toml"), &text, std::env::var("WARREN_BROKER_URL").ok()).unwrap();
    let natives = BTreeMap::from([("native-echo".to_string(), native_echo as warren::wasm::NativeHandler)]);
    let server = Server::start_with_natives(&config, natives).await.unwrap_or_else(|e| panic!("{e}"));
    let client = Arc::new(
        Client::connect_transient(&config.broker_url, "warren-bench-compare", &["native", "wasm"]).await.unwrap(),
    );
    run(&client, "wasm", 256, 100, 1.0).await; // warm up both paths
    run(&client, "native", 256, 100, 1.0).await;

    let mut cells = Vec::new();
    for bytes in [256, 64 * 1024] {
        for in_flight in [1, 100, 1000] {
            for key in ["native", "wasm"] {
                cells.push(run(&client, key, bytes, in_flight, seconds).await);
            }
        }
    }

    if json {
        let rows: Vec<String> = cells
            .iter()
            .map(|c| {
                format!(
                    "{{\"variant\":\"{}\",\"bytes\":{},\"in_flight\":{},\"requests\":{},\"per_second\":{:.0},\"p50_us\":{:.0},\"p99_us\":{:.0},\"p999_us\":{:.0},\"host_cpu_us\":{:.1},\"broker_cpu_us\":{:.1}}}",
                    c.variant, c.bytes, c.in_flight, c.requests, c.per_second, c.p50_us, c.p99_us, c.p999_us, c.host_cpu_us, c.broker_cpu_us
                )
            })
            .collect();
        println!("[{}]", rows.join(",\n "));
    } else {
        println!(
            "| body | in flight | handler | req/s | p50 | p99 | p99.9 | host CPU/req | broker CPU/req | wasm/native |"
        );
        println!("|---|---|---|---|---|---|---|---|---|---|");
        for pair in cells.chunks(2) {
            let ratio = pair[1].per_second / pair[0].per_second * 100.0;
            for c in pair {
                let ratio = if c.variant == "wasm" { format!("{ratio:.0} %") } else { String::new() };
                println!(
                    "| {} | {} | {} | {:.0} | {:.0} µs | {:.0} µs | {:.0} µs | {:.0} µs | {:.0} µs | {} |",
                    if c.bytes >= 1024 { format!("{} KiB", c.bytes / 1024) } else { format!("{} B", c.bytes) },
                    c.in_flight,
                    c.variant,
                    c.per_second,
                    c.p50_us,
                    c.p99_us,
                    c.p999_us,
                    c.host_cpu_us,
                    c.broker_cpu_us,
                    ratio
                );
            }
        }
    }
    Arc::into_inner(client).expect("all calls done").close().await;
    server.stop().await.unwrap();
    remove_service(&config.broker_url, "warren-bench-compare").await;
}
