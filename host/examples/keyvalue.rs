//! The cost of a key-value operation through Warren against the same operation from native
//! Rust, side by side in one run (issue 23).
//!
//! ```text
//! cargo run -p warren -- build                 # target/plugins/counter.wasm
//! cargo run --release -p warren --example keyvalue -- [SECONDS_PER_CELL]
//! ```
//!
//! Through Warren: the `counter` plugin, called as the host calls it (a fresh instance, its
//! deadline), asked to do `get` or `increment` [`OPS_PER_CALL`] times in one call
//! (`{"read": true, "times": N}`), so the time per operation is the guest's `wasi:keyvalue`
//! call, the host's checks and the store's answer (the instance's start is spread over N).
//! Native: the `redis` crate's connection manager (the client Warren itself uses) doing the
//! same `GET` / `INCRBY`. Each at 1 and at 100 operations in flight. Then the embedded store
//! (`redb`): `get` through Warren and straight from its backend. Redis must answer at
//! 127.0.0.1:6379 (`REDIS_URL` overrides it).

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use redis::AsyncCommands;
use warren::config::{KeyValueBackend, KeyValueSettings, PluginSettings};
use warren::keyvalue::KeyValue;
use warren::wasm::{CallContext, Plugin, Request, Runtime};

/// Operations one plugin call makes.
const OPS_PER_CALL: u32 = 200;

/// Runs `one` (which does `ops` operations) from `in_flight` tasks for `seconds`; operations
/// per second.
async fn measure<F, Fut>(in_flight: usize, seconds: f64, ops: u32, one: F) -> f64
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let one = Arc::new(one);
    let done = Arc::new(AtomicU64::new(0));
    let until = Instant::now() + Duration::from_secs_f64(seconds);
    let started = Instant::now();
    let tasks: Vec<_> = (0..in_flight)
        .map(|_| {
            let (one, done) = (one.clone(), done.clone());
            tokio::spawn(async move {
                while Instant::now() < until {
                    one().await;
                    done.fetch_add(u64::from(ops), Ordering::Relaxed);
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("a load task");
    }
    done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64()
}

/// The counter plugin on `store`, granted its bucket.
fn counter(runtime: &Runtime, store: Arc<KeyValue>) -> Arc<Plugin> {
    runtime.attach_keyvalue(store);
    let mut settings = PluginSettings::default();
    settings.grants.keyvalue = vec!["counters".into()];
    settings.limits.keyvalue_max_ops = OPS_PER_CALL;
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/plugins/counter.wasm");
    Arc::new(runtime.load("counter", &path, settings, 1).unwrap_or_else(|e| panic!("{e} (run `warren build` first)")))
}

/// One plugin call doing `op` [`OPS_PER_CALL`] times on key `bench`.
async fn through_warren(plugin: &Plugin, read: bool) {
    let body = serde_json::json!({"name": "bench", "read": read, "times": OPS_PER_CALL});
    let request = Request { routing_key: "count".into(), body: serde_json::to_vec(&body).unwrap(), content_type: None };
    match plugin.handle(&request, &[], &CallContext::default()).await {
        Ok(Ok(_)) => {}
        other => panic!("the counter failed: {other:?}"),
    }
}

fn row(what: &str, in_flight: usize, per_second: f64, native: Option<f64>) {
    let per_op = 1e6 / per_second * in_flight as f64;
    let ratio = native.map_or(String::new(), |n| format!("{:.2}×", n / per_second));
    println!("| {what:<34} | {in_flight:>3} | {per_second:>10.0} | {per_op:>8.1} | {ratio:>6} |");
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let seconds: f64 = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(3.0);
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/0".into());
    let service = format!("kvbench-{}", std::process::id());
    let settings =
        KeyValueSettings { backend: KeyValueBackend::Redis { url: url.clone(), password: None, ca_file: None } };
    let store = KeyValue::open(&settings, &service).await.unwrap_or_else(|e| panic!("{e}"));
    let runtime = Runtime::new(128, 64 << 20, false, None).expect("engine");
    let plugin = counter(&runtime, store);
    let native = redis::aio::ConnectionManager::new(redis::Client::open(url.as_str()).unwrap()).await.unwrap();
    let key = format!("{service}:counters:bench");

    println!("| operation                          | in flight | ops/s | µs per op (per task) | Warren/native |");
    println!("|---|---:|---:|---:|---:|");
    for in_flight in [1, 100] {
        for (name, read) in [("get", true), ("increment", false)] {
            let (conn, key) = (native.clone(), key.clone());
            let native_rate = measure(in_flight, seconds, OPS_PER_CALL, move || {
                let (mut conn, key) = (conn.clone(), key.clone());
                async move {
                    for _ in 0..OPS_PER_CALL {
                        if read {
                            let _: Option<Vec<u8>> = conn.get(&key).await.unwrap();
                        } else {
                            let _: i64 = conn.incr(&key, 1).await.unwrap();
                        }
                    }
                }
            })
            .await;
            let p = plugin.clone();
            let warren_rate = measure(in_flight, seconds, OPS_PER_CALL, move || {
                let p = p.clone();
                async move { through_warren(&p, read).await }
            })
            .await;
            row(&format!("Redis {name}, native (redis crate)"), in_flight, native_rate, None);
            row(&format!("Redis {name}, through Warren"), in_flight, warren_rate, Some(native_rate));
        }
    }
    let _: () = native.clone().del(&key).await.unwrap_or(());

    // The embedded store, in a file of its own.
    let path = std::env::temp_dir().join(format!("warren-kvbench-{}", std::process::id()));
    let embedded = KeyValue::open_embedded(&path).unwrap_or_else(|e| panic!("{e}"));
    embedded.backend().set("counters", "bench".into(), b"1".to_vec()).await.unwrap();
    let runtime = Runtime::new(8, 64 << 20, false, None).expect("engine");
    let plugin = counter(&runtime, embedded.clone());
    let store = embedded.clone();
    let direct = measure(1, seconds, OPS_PER_CALL, move || {
        let store = store.clone();
        async move {
            for _ in 0..OPS_PER_CALL {
                store.backend().get("counters", "bench").await.unwrap();
            }
        }
    })
    .await;
    let p = plugin.clone();
    let through = measure(1, seconds, OPS_PER_CALL, move || {
        let p = p.clone();
        async move { through_warren(&p, true).await }
    })
    .await;
    row("embedded get, its backend directly", 1, direct, None);
    row("embedded get, through Warren", 1, through, Some(direct));
    drop((plugin, runtime, embedded));
    let _ = std::fs::remove_file(path);
}
