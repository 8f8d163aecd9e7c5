//! Outbound HTTP from plugins (issue 17): `enrich` asks a price service, started by this test
//! binary on 127.0.0.1, for the price of a line before it answers.
//!
//! - the same contract for the Rust, Python and JavaScript versions (`plugins/enrich`,
//!   `tests/fixtures/enrich-py`, `tests/fixtures/enrich-js`): a granted origin's answer is
//!   used (and got the message's `traceparent`); an origin not granted is denied and the
//!   message refused as `failed`; a 10 MiB answer over the cap is refused, whether its length
//!   is declared or streamed; a server that never answers ends the call at its deadline while
//!   the host keeps answering echo requests;
//! - the metrics count requests by plugin, origin and status, with a latency histogram;
//! - without a broker: a plugin's requests in flight wait for `http_max_concurrency`.
//!
//! Every queue and exchange a test declares is named after its service and removed by its
//! `Cleanup`, also on failure.

use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use warren_tests::*;

/// The price service: one per test binary.
struct Prices {
    addr: SocketAddr,
    /// Each request's path and `traceparent` header, in arrival order.
    seen: Mutex<Vec<(String, Option<String>)>>,
}

impl Prices {
    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn traceparent_of(&self, path: &str) -> Vec<Option<String>> {
        self.seen.lock().unwrap().iter().filter(|(p, _)| p == path).map(|(_, t)| t.clone()).collect()
    }
}

/// Bodies of this size are over every cap the tests set (10 MiB).
const HUGE: usize = 10 << 20;

/// Starts the price service once: `/price/A1` → 2.5, `/price/B2` → 4.0, `/price/sleepy` → 1.0
/// after 300 ms, `/price/slow…` never answers (in time), `/price/big` is 10 MiB with a
/// `content-length`, `/price/bigchunked` 10 MiB chunked; anything else is 404.
fn prices() -> &'static Prices {
    static PRICES: OnceLock<&'static Prices> = OnceLock::new();
    PRICES.get_or_init(|| {
        let server = tiny_http::Server::http("127.0.0.1:0").expect("the price service listens");
        let addr = server.server_addr().to_ip().expect("an IP address");
        let prices: &'static Prices = Box::leak(Box::new(Prices { addr, seen: Mutex::new(Vec::new()) }));
        std::thread::spawn(move || {
            for request in server.incoming_requests() {
                let path = request.url().to_string();
                let traceparent =
                    request.headers().iter().find(|h| h.field.equiv("traceparent")).map(|h| h.value.to_string());
                prices.seen.lock().unwrap().push((path.clone(), traceparent));
                std::thread::spawn(move || answer(request, &path));
            }
        });
        prices
    })
}

fn answer(request: tiny_http::Request, path: &str) {
    let json = |sku: &str, price: f64| {
        let header = tiny_http::Header::from_bytes("content-type", "application/json").unwrap();
        tiny_http::Response::from_string(format!(r#"{{"sku":"{sku}","price":{price}}}"#)).with_header(header)
    };
    let _ = match path {
        "/price/A1" => request.respond(json("A1", 2.5)),
        "/price/B2" => request.respond(json("B2", 4.0)),
        "/price/sleepy" => {
            std::thread::sleep(Duration::from_millis(300));
            request.respond(json("sleepy", 1.0))
        }
        slow if slow.starts_with("/price/slow") => {
            std::thread::sleep(Duration::from_secs(60));
            request.respond(json("slow", 1.0))
        }
        // tiny_http streams large bodies chunked unless told otherwise: this one says its length.
        "/price/big" => {
            request.respond(tiny_http::Response::from_data(vec![b' '; HUGE]).with_chunked_threshold(usize::MAX))
        }
        "/price/bigchunked" => {
            let body = std::io::repeat(b' ').take(HUGE as u64);
            request.respond(tiny_http::Response::new(200.into(), Vec::new(), body, None, None))
        }
        _ => request.respond(tiny_http::Response::from_string("no such sku").with_status_code(404)),
    };
}

/// A plugins folder of the test's own holding `(name, file)` copies: `echo` and `enrich` from
/// `plugins/`, the Python and JavaScript versions from `tests/fixtures/`.
fn plugins_folder(service: &str, plugins: &[&str]) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("warren-plugins-{service}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for plugin in plugins {
        let from = if matches!(*plugin, "echo" | "enrich") { plugins_dir() } else { fixtures_dir() };
        std::fs::copy(from.join(format!("{plugin}.wasm")), dir.join(format!("{plugin}.wasm")))
            .unwrap_or_else(|e| panic!("copying {plugin}.wasm: {e}"));
    }
    dir
}

/// The config of a host serving `enrich` with `plugin` (granted the price service) and
/// `echo`; `extra` goes in `[plugin.<plugin>]`.
fn enrich_config(service: &str, plugins: &Path, plugin: &str, extra: &str, metrics: Option<SocketAddr>) -> Config {
    let metrics = metrics.map(|addr| format!("metrics = \"{addr}\"\n")).unwrap_or_default();
    let text = format!(
        "[service]\nname = \"{service}\"\nplugins = \"{}\"\n{metrics}\
         [broker]\nurl = \"{}\"\ndead_letter_exchange = \"{service}.rejects\"\n\
         [limits]\nmax_retries = 0\n\
         [plugin.{plugin}]\nhttp = [\"{}\"]\n{extra}\n{}",
        plugins.display(),
        broker_url(),
        prices().url(),
        requests(&[("enrich", plugin), ("echo", "echo")]),
    );
    let state = format!("state_dir = \"{}\"\n", test_state_root().display());
    let text = text.replacen("[broker]\n", &format!("{state}[broker]\n"), 1);
    Config::parse(Path::new("test.toml"), &text, None).expect("the test config parses")
}

fn line(sku: &str, catalogue: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({ "sku": sku, "qty": 2, "catalogue": catalogue })).unwrap()
}

/// How a plugin refuses a message whose request failed: Rust and Python see the `wasi:http`
/// error code (`failed`, naming it); JavaScript's `fetch` only says "NetworkError", as the
/// Fetch standard wants, and the plugin asks for a `retry` (rejected: `max_retries = 0`).
struct Refusals {
    /// How the reason starts.
    starts: String,
    /// What the reason says of a denied request, and of an answer over the cap.
    denied: &'static [&'static str],
    too_large: &'static [&'static str],
}

fn refusals(plugin: &str) -> Refusals {
    if plugin.ends_with("-js") {
        let network: &[&str] = &["networkerror"];
        Refusals { starts: "retry asked (HTTP request failed".into(), denied: network, too_large: network }
    } else {
        Refusals {
            starts: format!("failed in '{plugin}'"),
            denied: &["http-request-denied"],
            too_large: &["http-response-body-size"],
        }
    }
}

/// The `enrich` contract, for `plugin` (`enrich`, `enrich-py` or `enrich-js`).
async fn enrich_contract(plugin: &str) {
    let expect = refusals(plugin);
    let prices = prices();
    let service = unique_service(plugin);
    let plugins = plugins_folder(&service, &[plugin, "echo"]);
    let files = Cleanup::new();
    files.dir(&plugins);
    // 3 s: a Python or JavaScript call is well within it; the slow server is not.
    let config = enrich_config(&service, &plugins, plugin, "timeout_ms = 3000", None);
    let mut s = Scenario::from_config(config, &["enrich", "echo"]).await;
    let mut rejects = collect(&s.client.connection, &format!("{service}.rejects")).await;
    let mut next_reject = async || tokio::time::timeout(DEADLINE, rejects.recv()).await.ok().flatten();
    let catalogue = prices.url();

    // A granted origin: its answer is used, and it got the message's trace context.
    s.client.request("enrich", &line("A1", &catalogue)).await;
    let response = s.client.response(DEADLINE).await.expect("an answer");
    let priced: serde_json::Value = serde_json::from_slice(&response.data).expect("JSON");
    assert_eq!(priced["sku"], "A1", "{priced}");
    assert_eq!(priced["unit_price"].as_f64(), Some(2.5), "{priced}");
    assert_eq!(priced["total"].as_f64(), Some(5.0), "{priced}");
    let traceparent = header(&response, "traceparent").expect("the answer carries the trace context");
    assert!(
        prices.traceparent_of("/price/A1").contains(&Some(traceparent.clone())),
        "the price service got traceparent {traceparent}"
    );

    // An origin not granted (a listener of this test's own): denied before anything is sent,
    // the message refused as `failed`.
    let decoy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    decoy.set_nonblocking(true).unwrap();
    s.client.request("enrich", &line("B2", &format!("http://{}", decoy.local_addr().unwrap()))).await;
    let dead = next_reject().await.expect("a denied request's message is dead-lettered");
    let reason = header(&dead, "x-warren-reason").unwrap_or_default();
    assert!(reason.starts_with(&expect.starts), "{reason}");
    assert!(expect.denied.iter().all(|word| reason.to_lowercase().contains(word)), "{reason}");
    assert!(
        matches!(decoy.accept(), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "a denied request never connects"
    );

    // An answer over the cap (1 MiB by default): refused, declared or streamed.
    for sku in ["big", "bigchunked"] {
        s.client.request("enrich", &line(sku, &catalogue)).await;
        let dead = next_reject().await.expect("an answer over the cap refuses the message");
        let reason = header(&dead, "x-warren-reason").unwrap_or_default();
        assert!(reason.starts_with(&expect.starts), "{sku}: {reason}");
        assert!(expect.too_large.iter().all(|word| reason.to_lowercase().contains(word)), "{sku}: {reason}");
    }

    // A server that never answers: the call ends at its deadline; echo is answered while
    // the slow request is in flight (the price service has it).
    let slow = format!("slow-{service}");
    let started = Instant::now();
    s.client.request("enrich", &line(&slow, &catalogue)).await;
    let path = format!("/price/{slow}");
    eventually("the slow request reached the price service", || !prices.traceparent_of(&path).is_empty()).await;
    for i in 0..3 {
        s.client.request("echo", format!("ping {i}").as_bytes()).await;
        let echo = s.client.response(Duration::from_secs(2)).await.expect("echo answers while a call waits");
        assert_eq!(echo.data, format!("ping {i}").as_bytes());
    }
    let dead = next_reject().await.expect("the slow call's message is dead-lettered");
    let took = started.elapsed();
    let reason = header(&dead, "x-warren-reason").unwrap_or_default();
    assert!(reason.contains("deadline of 3000 ms exceeded"), "{reason}");
    assert!(took >= Duration::from_millis(2900) && took < Duration::from_millis(5000), "ended after {took:?}");

    // Still serving.
    s.client.request("enrich", &line("B2", &catalogue)).await;
    let response = s.client.response(DEADLINE).await.expect("an answer after all that");
    let priced: serde_json::Value = serde_json::from_slice(&response.data).unwrap();
    assert_eq!(priced["total"].as_f64(), Some(8.0), "{priced}");
    s.assert_no_response().await;
    s.finish().await;
}

broker_test! {
    async fn enrich_in_rust_keeps_the_http_contract() {
        enrich_contract("enrich").await;
    }
}

broker_test! {
    async fn enrich_in_python_keeps_the_http_contract() {
        enrich_contract("enrich-py").await;
    }
}

broker_test! {
    async fn enrich_in_javascript_keeps_the_http_contract() {
        enrich_contract("enrich-js").await;
    }
}

broker_test! {
    async fn outbound_requests_are_counted_by_plugin_origin_and_status() {
        let prices = prices();
        let service = unique_service("http-metrics");
        let plugins = plugins_folder(&service, &["enrich", "echo"]);
        let files = Cleanup::new();
        files.dir(&plugins);
        let metrics = free_address();
        let config = enrich_config(&service, &plugins, "enrich", "", Some(metrics));
        let mut s = Scenario::from_config(config, &["enrich", "echo"]).await;
        let mut rejects = collect(&s.client.connection, &format!("{service}.rejects")).await;

        s.client.request("enrich", &line("A1", &prices.url())).await;
        s.client.response(DEADLINE).await.expect("an answer");
        s.client.request("enrich", &line("A1", "http://127.0.0.1:9")).await;
        s.client.request("enrich", &line("nosuch", &prices.url())).await;
        for _ in 0..2 {
            tokio::time::timeout(DEADLINE, rejects.recv()).await.ok().flatten().expect("refused");
        }
        let (status, text) = http_get(metrics, "/metrics");
        assert_eq!(status, 200);
        let origin = format!("http://{}", prices.addr);
        let count = |line: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(line).and_then(|n| n.trim().parse::<u64>().ok()))
                .unwrap_or_else(|| panic!("no `{line}` in\n{text}"))
        };
        assert!(count(&format!("warren_http_requests_total{{plugin=\"enrich\",origin=\"{origin}\",status=\"200\"}}")) >= 1);
        assert!(count(&format!("warren_http_requests_total{{plugin=\"enrich\",origin=\"{origin}\",status=\"404\"}}")) >= 1);
        // Denied origins are the plugin's choice: all of them count under one label.
        assert!(count("warren_http_requests_total{plugin=\"enrich\",origin=\"denied\",status=\"denied\"}") >= 1);
        assert!(!text.contains("127.0.0.1:9\""), "a denied origin made a series of its own:\n{text}");
        assert!(count(&format!("warren_http_request_seconds_count{{plugin=\"enrich\",origin=\"{origin}\"}}")) >= 2);
        assert!(text.contains("# TYPE warren_http_request_seconds histogram"), "{text}");
        s.finish().await;
    }
}

/// Without a broker: two calls of a plugin allowed one request in flight take turns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_in_flight_wait_for_http_max_concurrency() {
    let prices = prices();
    let service = unique_service("http-cap");
    let plugins = plugins_folder(&service, &["enrich", "echo"]);
    let files = Cleanup::new();
    files.dir(&plugins);
    let config = enrich_config(&service, &plugins, "enrich", "http_max_concurrency = 1", None);
    let settings = config.settings_for("enrich");
    assert_eq!(settings.grants.http.max_concurrency, 1);
    let runtime = warren::wasm::Runtime::new(4, 64 << 20, false, None).unwrap();
    let path = config.plugin_path("enrich");
    let plugin = tokio::task::spawn_blocking(move || runtime.load("enrich", &path, settings, 1))
        .await
        .unwrap()
        .expect("enrich loads");
    let call = || async {
        let request = warren::wasm::Request {
            routing_key: "enrich".into(),
            body: line("sleepy", &prices.url()),
            content_type: None,
        };
        plugin.handle(&request, &[], &warren::wasm::CallContext::default()).await
    };
    let started = Instant::now();
    let (a, b) = tokio::join!(call(), call());
    let took = started.elapsed();
    for result in [a, b] {
        let response = result.expect("no fault").expect("an answer");
        let priced: serde_json::Value = serde_json::from_slice(&response.body).unwrap();
        assert_eq!(priced["total"].as_f64(), Some(2.0), "{priced}");
    }
    assert!(took >= Duration::from_millis(600), "two 300 ms requests overlapped: {took:?}");
}

/// Without a broker: a plugin that imports `wasi:http` is refused at load when its config
/// grants it no origin, in one line naming the plugin and the fix (`warren check`,
/// `warren run` and a hot reload all load through here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_importing_wasi_http_without_a_grant_is_refused_at_load() {
    let service = unique_service("http-nogrant");
    let plugins = plugins_folder(&service, &["enrich", "echo"]);
    let files = Cleanup::new();
    files.dir(&plugins).service(&service);
    let text = format!(
        "[service]\nname = \"{service}\"\nplugins = \"{}\"\nstate_dir = \"{}\"\n{}",
        plugins.display(),
        test_state_root().display(),
        requests(&[("enrich", "enrich"), ("echo", "echo")]),
    );
    let config = Config::parse(Path::new("test.toml"), &text, None).expect("the test config parses");
    let runtime = warren::wasm::Runtime::new(4, 64 << 20, false, None).unwrap();
    let load = |plugin: &'static str| {
        let (runtime, settings, path) = (runtime.clone(), config.settings_for(plugin), config.plugin_path(plugin));
        tokio::task::spawn_blocking(move || runtime.load(plugin, &path, settings, 1))
    };
    let refused = load("enrich").await.unwrap().err().expect("enrich imports wasi:http and is granted nothing");
    let said = refused.to_string();
    assert!(!said.contains('\n'), "one line: {said}");
    assert!(said.starts_with("plugin 'enrich': it imports wasi:http/"), "{said}");
    assert!(said.contains("add http = [") && said.contains("[plugin.enrich]"), "{said}");
    load("echo").await.unwrap().expect("a plugin without wasi:http needs no grant");
}
