//! What exporting traces costs, side by side in one run: three hosts serve the `echo`
//! component — traces off, traces exported to a live OTLP/HTTP collector (a sink in this
//! process that takes every batch), and traces aimed at a collector that is gone (nothing
//! listens; every export fails and spans are dropped). A goamqp-style client keeps 100
//! requests in flight against each in turn, three rounds.
//!
//! ```text
//! cargo run -p warren -- build                       # target/plugins/echo.wasm
//! cargo run --release -p warren --example telemetry -- [SECONDS_PER_CELL]
//! ```

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
    println!("| round | traces | req/s (100 in flight) | p50 | p99 | vs off |");
    println!("|---|---|---|---|---|---|");
    for round in 1..=3 {
        let mut off = 0.0;
        for (label, _, _, client, _) in &hosts {
            let load = keep_in_flight(client, "echo", b"{}", 100, seconds).await;
            let rate = load.per_second();
            if *label == "off" {
                off = rate;
            }
            println!(
                "| {round} | {label} | {rate:.0} | {:.0} µs | {:.0} µs | {:.3} |",
                load.percentile_us(0.50),
                load.percentile_us(0.99),
                rate / off
            );
        }
    }
    println!("\nthe live collector took {} KiB of spans", exported.load(Ordering::Relaxed) / 1024);
    for (_, service, server, _, url) in hosts {
        server.stop().await.unwrap();
        remove_service(&url, service).await;
    }
}
