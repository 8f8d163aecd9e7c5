//! Postgres through Warren against native tokio-postgres, in the same run, on the same server:
//! a one-row select by primary key and a one-row insert, one at a time.
//!
//! Warren: the test fixture `tests/fixtures/pg-spin` (bindings from Spin's WIT) called through
//! `Plugin::handle` — a fresh instance per call, JSON in, the row set formatted out, the pool's
//! connection, the statement prepared once per connection — with no broker in the way. Native:
//! one tokio-postgres connection, the statement prepared once, the same parameters.
//!
//! ```text
//! cargo run --release -p warren --example postgres [CALLS]     # default 2000 of each
//! ```
//! Needs Postgres at 127.0.0.1:5432 (`WARREN_POSTGRES_URL`, trust auth, user postgres); makes
//! a database of its own and drops it.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::json;
use warren::config::{DatabaseSettings, Grants, Limits, PluginSettings};
use warren::database::Databases;
use warren::wasm::{Plugin, Request, Runtime};

fn admin_url() -> String {
    std::env::var("WARREN_POSTGRES_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await.unwrap_or_else(|e| {
        eprintln!("Postgres does not answer at {url}: {e}");
        std::process::exit(1);
    });
    tokio::spawn(connection);
    client
}

/// Mean and median of `samples`, in microseconds.
fn summary(samples: &mut [Duration]) -> (f64, f64) {
    samples.sort();
    let mean = samples.iter().sum::<Duration>().as_secs_f64() * 1e6 / samples.len() as f64;
    (mean, samples[samples.len() / 2].as_secs_f64() * 1e6)
}

async fn warren_plugin(url: &str) -> Plugin {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap_or(Path::new(".")).to_path_buf();
    let out = root.join("target/test-fixtures-pg");
    let source = warren::tooling::builder::find_plugins(&root.join("tests/fixtures"))
        .expect("the fixtures folder")
        .into_iter()
        .find(|p| p.name == "pg-spin")
        .expect("tests/fixtures/pg-spin");
    warren::tooling::builder::build_plugin(&source, &out, &root.join("target/plugin-build")).expect("pg-spin builds");
    let runtime = Runtime::new(8, 64 << 20, false, None).expect("runtime");
    let settings = DatabaseSettings { url: url.to_string(), password: None, ca_pem: None, max_connections: 2 };
    runtime.attach_databases(Databases::open(&BTreeMap::from([("bench".to_string(), settings)])).expect("pool"));
    let settings = PluginSettings {
        limits: Limits::default(),
        grants: Grants { databases: vec!["bench".into()], ..Grants::default() },
    };
    runtime.load("pgspin", &out.join("pg-spin.wasm"), settings, 1).expect("the fixture loads")
}

async fn through_warren(plugin: &Plugin, sql: &str, params: serde_json::Value, query: bool) -> Duration {
    let body = json!({"db": "bench", "steps": [{"sql": sql, "params": params, "query": query}]});
    let request = Request { routing_key: "pg".into(), body: body.to_string().into_bytes(), content_type: None };
    let started = Instant::now();
    let answer = plugin.handle(&request, &[], &Default::default()).await;
    let took = started.elapsed();
    match answer {
        Ok(Ok(response)) if !response.body.starts_with(b"error") => took,
        other => panic!("the Warren call failed: {other:?}"),
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let calls: usize = std::env::args().nth(1).and_then(|n| n.parse().ok()).unwrap_or(2000);
    let name = format!("warren_bench_{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let admin = connect(&admin_url()).await;
    admin.batch_execute(&format!("CREATE DATABASE {name}")).await.expect("create the bench database");
    let url = format!("{}/{name}", admin_url().rsplit_once('/').map_or("", |(base, _)| base));
    let native = connect(&url).await;
    native
        .batch_execute(
            "CREATE TABLE items (id int4 PRIMARY KEY, name text); INSERT INTO items VALUES (1, 'one'); \
             CREATE TABLE log (n int4, at timestamptz DEFAULT now())",
        )
        .await
        .expect("tables");
    let plugin = warren_plugin(&url).await;

    let select = "SELECT id, name FROM items WHERE id = $1";
    let insert = "INSERT INTO log (n) VALUES ($1)";
    let prepared_select = native.prepare(select).await.expect("prepare");
    let prepared_insert = native.prepare(insert).await.expect("prepare");
    // Warm both paths (connections, prepared statements, compiled code).
    for i in 0..100 {
        through_warren(&plugin, select, json!([{"int32": 1}]), true).await;
        native.query_one(&prepared_select, &[&1i32]).await.expect("select");
        let _ = i;
    }
    let mut rows = Vec::new();
    for (what, sql, query) in [("select one row", select, true), ("insert one row", insert, false)] {
        let (mut warren, mut direct) = (Vec::with_capacity(calls), Vec::with_capacity(calls));
        for i in 0..calls {
            // Interleaved, so both see the same server and machine load.
            warren.push(through_warren(&plugin, sql, json!([{"int32": 1}]), query).await);
            let started = Instant::now();
            if query {
                native.query_one(&prepared_select, &[&1i32]).await.expect("select");
            } else {
                native.execute(&prepared_insert, &[&(i as i32)]).await.expect("insert");
            }
            direct.push(started.elapsed());
        }
        let (w, n) = (summary(&mut warren), summary(&mut direct));
        rows.push(format!(
            "| {what} | {:.0} µs | {:.0} µs | {:.0} µs | {:.0} µs | {:.2}× |",
            w.0,
            w.1,
            n.0,
            n.1,
            w.1 / n.1
        ));
    }
    println!("{calls} calls of each, one at a time\n");
    println!("| statement | Warren mean | Warren median | native mean | native median | median ratio |");
    println!("|---|---|---|---|---|---|");
    for row in rows {
        println!("{row}");
    }
    drop(plugin);
    drop(native);
    let _ = admin.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).await;
}
