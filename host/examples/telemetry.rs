//! What exporting traces costs, side by side in one run: three hosts serve the `echo`
//! component — traces off, traces exported to a live OTLP/HTTP collector (a sink in this
//! process that takes every batch), and traces aimed at a collector that is gone (nothing
//! listens; every export fails and spans are dropped). A goamqp-style client keeps 100
//! requests in flight against each in turn, ROUNDS rounds (each round starts with a different
//! host, so none always runs first).
//!
//! ```text
//! cargo run -p warren -- build                       # target/plugins/echo.wasm
//! cargo run --release -p warren --example telemetry -- [SECONDS_PER_CELL] [ROUNDS]
//! ```
//!
//! Two measures per cell: throughput, and this process's CPU per answered request (host,
//! client and sink together; only one host is loaded at a time). On a busy machine the
//! throughput of a cell swings with the neighbours; CPU per request much less, so the summary
//! gives the median of each and the median of the per-round ratios against `off`.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use common::*;
use warren::amqp::client::Client;
use warren::config::Config;
use warren::server::Server;

/// An OTLP/HTTP sink: answers 200 to every POST and counts the bytes it took.
fn sink() -> (String, Arc<AtomicU64>) {
    let server = tiny_http::Server::http("127.0.0.1:0").expect("the sink listens");
    let url = format!("http://{}", server.server_addr().to_ip().expect("an IP address"));
    let bytes = Arc::new(AtomicU64::new(0));
    let counted = bytes.clone();
    std::thread::spawn(move || {
        for mut request in server.incoming_requests() {
            let mut body = Vec::new();
            let _ = std::io::Read::read_to_end(request.as_reader(), &mut body);
            counted.fetch_add(body.len() as u64, Ordering::Relaxed);
            let _ = request.respond(tiny_http::Response::empty(200));
        }
    });
    (url, bytes)
}

async fn host(service: &str, telemetry: &str) -> (Server, Arc<Client>, String) {
    let plugins = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/plugins");
    let text = format!(
        "[service]\nname = \"{service}\"\nplugins = \"{}\"\n[[request]]\nrouting_key = \"echo\"\nplugin = \"echo\"\n{telemetry}",
        plugins.display()
    );
    let config = Config::parse(Path::new("bench.toml"), &text, std::env::var("WARREN_BROKER_URL").ok()).unwrap();
    let server = Server::start(&config).await.unwrap_or_else(|e| panic!("{e}"));
    let client = Arc::new(Client::connect_transient(&config.broker_url, service, &["echo"]).await.unwrap());
    (server, client, config.broker_url.clone())
}

#[tokio::main]
async fn main() {
    let seconds: f64 = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(5.0);
    let (live, exported) = sink();
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap(); // closed on drop
    let variants = [
        ("off", "warren-otel-off", String::new()),
        ("exported", "warren-otel-on", format!("[telemetry]\notlp_endpoint = \"{live}\"\n")),
        ("collector gone", "warren-otel-dead", format!("[telemetry]\notlp_endpoint = \"http://{dead}\"\n")),
    ];
    let mut hosts = Vec::new();
    for (label, service, telemetry) in &variants {
        let (server, client, url) = host(service, telemetry).await;
        keep_in_flight(&client, "echo", b"{}", 100, 1.0).await; // warm up
        hosts.push((*label, *service, server, client, url));
    }
    let rounds: usize = std::env::args().nth(2).and_then(|a| a.parse().ok()).unwrap_or(10);
    // Per variant, per round: (req/s, CPU µs per request).
    let mut cells: Vec<Vec<(f64, f64)>> = vec![Vec::new(); hosts.len()];
    for round in 0..rounds {
        for i in (0..hosts.len()).map(|k| (k + round) % hosts.len()) {
            let client = &hosts[i].3;
            let cpu_before = cpu_seconds("self");
            let load = keep_in_flight(client, "echo", b"{}", 100, seconds).await;
            let cpu = cpu_seconds("self") - cpu_before;
            let answered = load.latencies.len().max(1) as f64;
            cells[i].push((load.per_second(), cpu * 1e6 / answered));
        }
        let line: Vec<String> = hosts
            .iter()
            .zip(&cells)
            .map(|(h, c)| format!("{} {:.0} req/s {:.1} µs", h.0, c[round].0, c[round].1))
            .collect();
        println!("round {:>2}: {}", round + 1, line.join(" · "));
    }
    println!(
        "\n| traces | req/s (median) | vs off (median of rounds) | CPU µs/request (median) | vs off (median of rounds) |"
    );
    println!("|---|---|---|---|---|");
    for (i, (label, ..)) in hosts.iter().enumerate() {
        let rates: Vec<f64> = cells[i].iter().map(|c| c.0).collect();
        let cpus: Vec<f64> = cells[i].iter().map(|c| c.1).collect();
        let rate_ratios: Vec<f64> = cells[i].iter().zip(&cells[0]).map(|(c, off)| c.0 / off.0).collect();
        let cpu_ratios: Vec<f64> = cells[i].iter().zip(&cells[0]).map(|(c, off)| c.1 / off.1).collect();
        println!(
            "| {label} | {:.0} | {:.3} | {:.1} | {:.3} |",
            median(rates),
            median(rate_ratios),
            median(cpus),
            median(cpu_ratios)
        );
    }
    println!("\nthe live collector took {} KiB of spans", exported.load(Ordering::Relaxed) / 1024);
    for (_, service, server, _, url) in hosts {
        server.stop().await.unwrap();
        remove_service(&url, service).await;
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}
