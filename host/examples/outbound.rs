//! What one outbound HTTP call adds to a message: `enrich` (one `GET /price/<sku>` per
//! message, over wasi:http) against the same call made by native Rust linked into the host
//! (a plain `std::net::TcpStream`, no HTTP client crate), each beside the same handler without
//! the call. In-process, through `Plugin::handle` (fresh instance per message), without the
//! broker; one message at a time; the price service runs in a child process so that its CPU
//! is not counted.
//!
//! ```text
//! cargo run -p warren -- build       # target/plugins/{enrich,greet}.wasm (or run the tests:
//!                                    # target/test-plugins, target/test-fixtures are used too)
//! cargo run --release -p warren --example outbound -- [MESSAGES]     # default 2000
//! ```
//!
//! Columns: p50 and p99 of one message's handling, and the host's CPU per message (user +
//! system of this process over the run, divided by the messages). Both sides open a fresh
//! TCP connection per call (the host keeps no pool), send `traceparent` and read the whole
//! answer.

mod common;

use std::io::{BufRead, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Instant;

use common::*;
use warren::config::PluginSettings;
use warren::wasm::http::Origin;
use warren::wasm::{CallContext, HandlerError, Header, Plugin, Request, Response, Runtime};

const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// The price service's address, for the native handlers (plain `fn`s).
static PRICES: OnceLock<String> = OnceLock::new();

fn serve() {
    let server = tiny_http::Server::http("127.0.0.1:0").expect("listen");
    println!("{}", server.server_addr().to_ip().expect("an IP address"));
    std::io::stdout().flush().unwrap();
    for request in server.incoming_requests() {
        let sku = request.url().strip_prefix("/price/").unwrap_or_default().to_string();
        let json = tiny_http::Header::from_bytes("content-type", "application/json").unwrap();
        let _ = request
            .respond(tiny_http::Response::from_string(format!(r#"{{"sku":"{sku}","price":2.5}}"#)).with_header(json));
    }
}

#[derive(serde::Deserialize)]
struct Line {
    sku: String,
    qty: u32,
}

fn priced(line: &Line, price: f64) -> Response {
    let total = (price * f64::from(line.qty) * 100.0).round() / 100.0;
    let body = serde_json::json!({ "sku": line.sku, "qty": line.qty, "unit_price": price, "total": total });
    Response { body: body.to_string().into_bytes(), headers: Vec::new() }
}

fn parse(request: &Request) -> Result<Line, HandlerError> {
    serde_json::from_slice(&request.body).map_err(|e| HandlerError::BadRequest(e.to_string()))
}

/// The native handler without the call: a fixed price.
fn native_offline(request: &Request, _: &[Header]) -> Result<Response, HandlerError> {
    let line = parse(request)?;
    Ok(priced(&line, 2.5))
}

/// The native handler with the call: `GET /price/<sku>` over a fresh `TcpStream`.
fn native_http(request: &Request, _: &[Header]) -> Result<Response, HandlerError> {
    let line = parse(request)?;
    let addr = PRICES.get().expect("the price service runs");
    let fail = |e: std::io::Error| HandlerError::Retry(e.to_string());
    let mut stream = std::net::TcpStream::connect(addr).map_err(fail)?;
    stream.set_nodelay(true).map_err(fail)?;
    write!(
        stream,
        "GET /price/{} HTTP/1.1\r\nhost: {addr}\r\naccept: application/json\r\ntraceparent: {TRACEPARENT}\r\nconnection: close\r\n\r\n",
        line.sku
    )
    .map_err(fail)?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).map_err(fail)?;
    let split =
        answer.windows(4).position(|w| w == b"\r\n\r\n").ok_or_else(|| HandlerError::Retry("no head".into()))?;
    if !answer.starts_with(b"HTTP/1.1 200") {
        return Err(HandlerError::Failed("not 200".into()));
    }
    let price: serde_json::Value =
        serde_json::from_slice(&answer[split + 4..]).map_err(|e| HandlerError::Failed(e.to_string()))?;
    Ok(priced(&line, price["price"].as_f64().unwrap_or_default()))
}

struct Row {
    what: String,
    p50_us: f64,
    p99_us: f64,
    cpu_us: f64,
}

async fn measure(what: &str, plugin: &Plugin, body: &[u8], messages: usize) -> Row {
    let request = Request { routing_key: "line.price".into(), body: body.to_vec(), content_type: None };
    let context = CallContext { outbox: None, traceparent: Some(TRACEPARENT.into()), tracer: None };
    let call = || async {
        let answer = plugin.handle(&request, &[], &context).await.expect("no fault").expect("an answer");
        assert!(answer.body.starts_with(b"{"), "{}", String::from_utf8_lossy(&answer.body));
    };
    for _ in 0..messages / 10 {
        call().await;
    }
    let mut latencies = Vec::with_capacity(messages);
    let cpu = cpu_seconds("self");
    for _ in 0..messages {
        let start = Instant::now();
        call().await;
        latencies.push(start.elapsed());
    }
    let cpu_us = (cpu_seconds("self") - cpu) * 1e6 / messages as f64;
    latencies.sort();
    Row {
        what: what.to_string(),
        p50_us: micros(percentile(&latencies, 0.5)),
        p99_us: micros(percentile(&latencies, 0.99)),
        cpu_us,
    }
}

/// `<name>.wasm` from the first folder that has it.
fn find(name: &str) -> Option<PathBuf> {
    ["target/plugins", "target/test-plugins", "target/test-fixtures"]
        .iter()
        .map(|dir| Path::new(dir).join(format!("{name}.wasm")))
        .find(|path| path.is_file())
}

fn main() {
    if std::env::args().nth(1).as_deref() == Some("--serve") {
        return serve();
    }
    let messages: usize = std::env::args().nth(1).and_then(|n| n.parse().ok()).unwrap_or(2000);
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .arg("--serve")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("the price service starts");
    let mut addr = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut addr).unwrap();
    let addr = addr.trim().to_string();
    PRICES.set(addr.clone()).unwrap();
    let url = format!("http://{addr}");

    let tokio = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let rows = tokio.block_on(async {
        let runtime = Runtime::new(8, 64 << 20, false, None).expect("engine");
        let mut granted = PluginSettings::default();
        granted.grants.http.origins = vec![Origin::parse(&url).unwrap()];
        let load = |name: &str, settings: PluginSettings| {
            let path = find(name)?;
            Some(runtime.load(name, &path, settings, 1).unwrap_or_else(|e| panic!("{e}")))
        };
        let line = format!(r#"{{"sku":"A1","qty":2,"catalogue":"{url}"}}"#);
        let mut rows = Vec::new();
        rows.push(
            measure("native, no call", &runtime.native("native", native_offline), line.as_bytes(), messages).await,
        );
        rows.push(
            measure("native + GET (TcpStream)", &runtime.native("native-http", native_http), line.as_bytes(), messages)
                .await,
        );
        if let Some(greet) = load("greet", PluginSettings::default()) {
            rows.push(measure("wasm greet (Rust), no call", &greet, br#"{"name":"Ada"}"#, messages).await);
        }
        for (name, what) in [
            ("enrich", "wasm enrich (Rust) + GET"),
            ("enrich-py", "wasm enrich-py + GET"),
            ("enrich-js", "wasm enrich-js + GET"),
        ] {
            match load(name, granted.clone()) {
                Some(plugin) => rows.push(measure(what, &plugin, line.as_bytes(), messages).await),
                None => eprintln!("{name}.wasm not found: skipped"),
            }
        }
        rows
    });
    let _ = child.kill();
    let _ = child.wait();

    println!("{messages} messages each, one at a time, price service at {url} (another process)\n");
    println!("| handler | p50 µs | p99 µs | host CPU µs/msg |");
    println!("|---|---:|---:|---:|");
    for row in &rows {
        println!("| {} | {:.0} | {:.0} | {:.0} |", row.what, row.p50_us, row.p99_us, row.cpu_us);
    }
    let get = |what: &str| rows.iter().find(|r| r.what.starts_with(what));
    if let (Some(native), Some(native_http), Some(greet), Some(enrich)) =
        (get("native, no call"), get("native + GET"), get("wasm greet"), get("wasm enrich (Rust)"))
    {
        println!();
        println!(
            "one outbound call adds: native {:.0} µs p50 / {:.0} µs CPU; wasm {:.0} µs p50 / {:.0} µs CPU",
            native_http.p50_us - native.p50_us,
            native_http.cpu_us - native.cpu_us,
            enrich.p50_us - greet.p50_us,
            enrich.cpu_us - greet.cpu_us
        );
        println!(
            "wasm enrich against native with the same call: +{:.0} µs p50, +{:.0} µs CPU per message",
            enrich.p50_us - native_http.p50_us,
            enrich.cpu_us - native_http.cpu_us
        );
    }
}
