//! What a plugin's language costs: `greet` in Rust, Python (componentize-py), JavaScript
//! (componentize-js) and Go (wit-bindgen-go), beside a native Rust greet linked into the host.
//!
//! ```text
//! cargo run -p warren -- build                       # target/plugins/greet{,-py,-js,-go}.wasm
//! cargo run --release -p warren --example languages -- [SECONDS_PER_CELL]
//! ```
//!
//! Per language: file and compiled-code size (what an idle plugin costs), cold compile and
//! cached load time, instantiation alone, the cost of one message in the sandbox (fresh instance + call, measured
//! in-process without the broker; and with `reuse = 100`, one instance serving 100 messages in turn), the peak
//! linear memory of a call, and the round trip through RabbitMQ at 1 and 100 requests in
//! flight, for Python, JavaScript and Go also with `reuse = 100`.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use common::*;
use warren::amqp::client::Client;
use warren::config::{Config, PluginSettings};
use warren::server::Server;
use warren::wasm::{CallContext, HandlerError, Header, Request, Response, Runtime};

const LANGUAGES: [(&str, &str); 4] =
    [("rust", "greet"), ("python", "greet-py"), ("javascript", "greet-js"), ("go", "greet-go")];
const BODY: &[u8] = br#"{"name":"Ada"}"#;

fn native_greet(request: &Request, _headers: &[Header]) -> Result<Response, HandlerError> {
    let input: serde_json::Value =
        serde_json::from_slice(&request.body).map_err(|e| HandlerError::BadRequest(e.to_string()))?;
    let name = input["name"].as_str().ok_or_else(|| HandlerError::BadRequest("no name".into()))?;
    let body = serde_json::json!({ "greeting": format!("Hello, {name}!") }).to_string().into_bytes();
    Ok(Response { body, headers: Vec::new() })
}

struct Sandbox {
    wasm_kib: usize,
    code_kib: usize,
    compile_ms: f64,
    cached_load_ms: f64,
    instantiate_p50_us: f64,
    message_p50_us: f64,
    message_p99_us: f64,
    reuse_p50_us: f64,
    peak_memory_kib: usize,
}

/// Instances serve this many messages in turn in the `reuse` measurements.
const REUSE: u32 = 100;

fn reuse_settings() -> PluginSettings {
    let mut settings = PluginSettings::default();
    settings.limits.reuse = REUSE;
    settings
}

/// The p50 of `calls` calls of `plugin` answering `request`.
async fn message_times(plugin: &warren::wasm::Plugin, request: &Request, calls: usize) -> Vec<std::time::Duration> {
    let mut times = Vec::with_capacity(calls);
    for _ in 0..calls {
        let started = Instant::now();
        let answer = plugin.handle(request, &[], &CallContext::default()).await.expect("no fault");
        times.push(started.elapsed());
        assert_eq!(answer.expect("answered").body, br#"{"greeting":"Hello, Ada!"}"#);
    }
    times.sort();
    times
}

/// Loads `plugin` cold and from a cache, then calls it `calls` times in-process.
async fn sandbox(path: &Path, plugin: &str, calls: usize) -> Sandbox {
    let cache = std::env::temp_dir().join(format!("warren-languages-cache-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&cache);
    let runtime = Runtime::new(8, 64 << 20, false, Some(cache.clone())).unwrap();
    let started = Instant::now();
    runtime.load(plugin, path, PluginSettings::default(), 1).unwrap_or_else(|e| panic!("{e}"));
    let compile_ms = started.elapsed().as_secs_f64() * 1e3;
    let started = Instant::now();
    let loaded = runtime.load(plugin, path, PluginSettings::default(), 1).unwrap();
    let cached_load_ms = started.elapsed().as_secs_f64() * 1e3;

    let mut instantiations = Vec::with_capacity(calls);
    for _ in 0..calls {
        let started = Instant::now();
        loaded.instantiate().await.expect("instantiates");
        instantiations.push(started.elapsed());
    }
    instantiations.sort();

    let request = Request { routing_key: "greet".into(), body: BODY.to_vec(), content_type: None };
    let times = message_times(&loaded, &request, calls).await;
    let reused = runtime.load(plugin, path, reuse_settings(), 1).unwrap();
    let reuse_times = message_times(&reused, &request, calls).await;
    let _ = std::fs::remove_dir_all(&cache);
    Sandbox {
        wasm_kib: std::fs::metadata(path).map_or(0, |m| m.len() as usize) / 1024,
        code_kib: loaded.code_size_bytes() / 1024,
        compile_ms,
        cached_load_ms,
        instantiate_p50_us: micros(percentile(&instantiations, 0.5)),
        message_p50_us: micros(percentile(&times, 0.5)),
        message_p99_us: micros(percentile(&times, 0.99)),
        reuse_p50_us: micros(percentile(&reuse_times, 0.5)),
        peak_memory_kib: loaded.peak_memory_bytes() / 1024,
    }
}

/// Requests on `key` with `in_flight` outstanding for `seconds`: (req/s, p50 µs, p99 µs, host CPU µs/req).
async fn round_trips(client: &Arc<Client>, key: &'static str, in_flight: usize, seconds: f64) -> (f64, f64, f64, f64) {
    let cpu_before = cpu_seconds("self");
    let load = keep_in_flight(client, key, BODY, in_flight, seconds).await;
    let cpu_us = (cpu_seconds("self") - cpu_before) / load.latencies.len().max(1) as f64 * 1e6;
    (load.per_second(), load.percentile_us(0.5), load.percentile_us(0.99), cpu_us)
}

#[tokio::main]
async fn main() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into());
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    let seconds: f64 = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(3.0);
    let plugins = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/plugins");

    println!(
        "| language | .wasm | compiled code | compile | cached load | instantiate (p50) | one message (p50 / p99) | one message, reuse = {REUSE} (p50) | peak memory |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for (language, plugin) in LANGUAGES {
        let s = sandbox(&plugins.join(format!("{plugin}.wasm")), plugin, 2000).await;
        println!(
            "| {language} | {} KiB | {} KiB | {:.0} ms | {:.1} ms | {:.0} µs | {:.0} µs / {:.0} µs | {:.0} µs | {} KiB |",
            s.wasm_kib,
            s.code_kib,
            s.compile_ms,
            s.cached_load_ms,
            s.instantiate_p50_us,
            s.message_p50_us,
            s.message_p99_us,
            s.reuse_p50_us,
            s.peak_memory_kib
        );
    }

    let mut text = format!(
        "[service]\nname = \"warren-bench-languages\"\nplugins = \"{}\"\n\
         [[request]]\nrouting_key = \"native\"\nplugin = \"native-greet\"\n",
        plugins.display()
    );
    for (language, plugin) in LANGUAGES {
        text += &format!("[[request]]\nrouting_key = \"{language}\"\nplugin = \"{plugin}\"\n");
    }
    // The interpreted (and Go's runtime-starting) plugins again, as plugins of their own whose instances serve REUSE messages.
    for (language, plugin) in &LANGUAGES[1..] {
        std::fs::copy(plugins.join(format!("{plugin}.wasm")), plugins.join(format!("{plugin}-reuse.wasm"))).unwrap();
        text += &format!("[[request]]\nrouting_key = \"{language}-reuse\"\nplugin = \"{plugin}-reuse\"\n");
        text += &format!("[plugin.{plugin}-reuse]\nreuse = {REUSE}\n");
    }
    let config = Config::parse(Path::new("bench.toml"), &text, std::env::var("WARREN_BROKER_URL").ok()).unwrap();
    let natives = BTreeMap::from([("native-greet".to_string(), native_greet as warren::wasm::NativeHandler)]);
    let server = Server::start_with_natives(&config, natives).await.unwrap_or_else(|e| panic!("{e}"));
    let keys = ["native", "rust", "python", "javascript", "go", "python-reuse", "javascript-reuse", "go-reuse"];
    let client = Arc::new(Client::connect_transient(&config.broker_url, &config.service, &keys).await.unwrap());

    println!();
    println!("| handler | 1 in flight: p50 | 100 in flight: req/s | p50 | p99 | host CPU/req |");
    println!("|---|---|---|---|---|---|");
    for key in keys {
        round_trips(&client, key, 100, 1.0).await; // warm up
        let (_, sequential_p50, _, _) = round_trips(&client, key, 1, seconds).await;
        let (per_second, p50, p99, cpu) = round_trips(&client, key, 100, seconds).await;
        println!(
            "| {key} | {sequential_p50:.0} µs | {per_second:.0} | {:.1} ms | {:.1} ms | {cpu:.0} µs |",
            p50 / 1e3,
            p99 / 1e3
        );
    }
    Arc::into_inner(client).expect("all calls done").close().await;
    server.stop().await.unwrap();
    remove_service(&config.broker_url, &config.service).await;
}
