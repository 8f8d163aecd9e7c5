//! Postgres for plugins (`spin:postgres@4.0.0`) against the real Postgres at 127.0.0.1:5432
//! (`WARREN_POSTGRES_URL` overrides it; trust auth, user postgres). Each test makes a database
//! of its own and drops it, also when it fails ([`TestDb`], from `tests/src/postgres.rs`).
//!
//! The plugin is `tests/fixtures/pg-spin`, built with bindings generated straight from Spin's
//! WIT (not Warren's SDK): every test here is also a test that a component of another
//! ecosystem's bindings runs unmodified.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use serde_json::json;
use warren::config::{Grants, Limits, PluginSettings};
use warren::database::Databases;
use warren::wasm::{HandlerError, Plugin, PluginFault, Request, Runtime};
use warren_tests::*;

/// The fixture, built once per test binary (only it, not every fixture).
fn fixture() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf();
        let out = root.join("target/test-fixtures-pg");
        let source = warren::tooling::builder::find_plugins(&root.join("tests/fixtures"))
            .expect("fixtures")
            .into_iter()
            .find(|p| p.name == "pg-spin")
            .expect("tests/fixtures/pg-spin");
        warren::tooling::builder::build_plugin(&source, &out, &root.join("target/plugin-build"))
            .unwrap_or_else(|e| panic!("building pg-spin: {e}"));
        out.join("pg-spin.wasm")
    })
}

/// The fixture loaded with `databases` granted (by name) over the pools of `attached`.
async fn load(attached: Arc<Databases>, databases: &[&str], transaction: bool, timeout: Duration) -> Arc<Plugin> {
    let runtime = Runtime::new(64, 64 << 20, false, None).expect("runtime");
    runtime.attach_databases(attached);
    let settings = PluginSettings {
        limits: Limits { timeout, ..Limits::default() },
        grants: Grants {
            databases: databases.iter().map(|d| d.to_string()).collect(),
            transaction,
            ..Grants::default()
        },
    };
    let path = fixture().to_path_buf();
    let plugin = tokio::task::spawn_blocking(move || runtime.load("pgspin", &path, settings, 1))
        .await
        .expect("load task")
        .unwrap_or_else(|e| panic!("{e}"));
    Arc::new(plugin)
}

/// Calls the fixture with `body`: the answer text, or the handler's error or the fault.
async fn call(plugin: &Plugin, body: serde_json::Value) -> Result<Result<String, HandlerError>, PluginFault> {
    let request = Request { routing_key: "pg".into(), body: body.to_string().into_bytes(), content_type: None };
    let answer = plugin.handle(&request, &[], &Default::default()).await?;
    Ok(answer.map(|r| String::from_utf8_lossy(&r.body).into_owned()))
}

fn step(sql: &str, params: serde_json::Value, query: bool) -> serde_json::Value {
    json!({"sql": sql, "params": params, "query": query})
}

async fn count(client: &tokio_postgres::Client, table: &str) -> i64 {
    client.query_one(&format!("SELECT count(*) FROM {table}"), &[]).await.expect("count").get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_type_round_trips_through_a_table() {
    let db = TestDb::new("types").await;
    db.client()
        .await
        .batch_execute(
            "CREATE TABLE t (i2 int2, i4 int4, i8 int8, f4 float4, f8 float8, n numeric, s text, v varchar(10), \
             b bool, by bytea, u uuid, j jsonb, js json, d date, tm time, ts timestamp, tz timestamptz, \
             ai int4[], al int8[], an numeric[], at text[], iv interval, nul text, big int8)",
        )
        .await
        .unwrap();
    let plugin = load(db.databases("app", 2), &["app"], false, Duration::from_secs(5)).await;
    let params = json!([
        {"int16": -7}, {"int32": 2147483647}, {"int64": -9223372036854775807i64}, {"floating32": 1.5},
        {"floating64": 0.1}, {"decimal": "-12345678901234567890.000123"}, {"str": "héllo"}, {"str": "short"},
        {"boolean": true}, {"binary": [0, 1, 255]}, {"uuid": "67e55044-10b1-426f-9247-bb680e5fe0c8"},
        {"jsonb": "{\"a\": [1, 2]}"}, {"jsonb": "{\"b\":1}"}, {"date": [2026, 12, 6]}, {"time": [23, 59, 58, 123456000]},
        {"datetime": [1999, 1, 2, 3, 4, 5, 6000]}, {"timestamp": 1700000000},
        {"array-int32": [1, null, 3]}, {"array-int64": [9007199254740993i64]}, {"array-decimal": ["1.50", null]},
        {"array-str": ["a", null, "ß"]}, {"interval": [1500000, 2, 3]}, "null", {"int32": 5}
    ]);
    let placeholders = (1..=24).map(|i| format!("${i}")).collect::<Vec<_>>().join(", ");
    let body = json!({"db": "app", "steps": [
        step(&format!("INSERT INTO t VALUES ({placeholders})"), params, false),
        step("SELECT * FROM t", json!([]), true),
    ]});
    let answer = call(&plugin, body).await.expect("no fault").expect("answered");
    let mut lines = answer.lines();
    assert_eq!(lines.next(), Some("affected 1"));
    let rows = lines.next().expect("the select's line");
    for value in [
        "Int16(-7)",
        "Int32(2147483647)",
        "Int64(-9223372036854775807)",
        "Floating32(1.5)",
        "Floating64(0.1)",
        "Decimal(\"-12345678901234567890.000123\")",
        "Str(\"héllo\")",
        "Str(\"short\")",
        "Boolean(true)",
        "Binary([0, 1, 255])",
        "Uuid(\"67e55044-10b1-426f-9247-bb680e5fe0c8\")",
        "Date((2026, 12, 6))",
        "Time((23, 59, 58, 123456000))",
        "Datetime((1999, 1, 2, 3, 4, 5, 6000))",
        "Datetime((2023, 11, 14, 22, 13, 20, 0))",
        "ArrayInt32([Some(1), None, Some(3)])",
        "ArrayInt64([Some(9007199254740993)])",
        "ArrayDecimal([Some(\"1.50\"), None])",
        "ArrayStr([Some(\"a\"), None, Some(\"ß\")])",
        "Interval(Interval { micros: 1500000, days: 2, months: 3 })",
        "DbNull",
        "Int64(5)",
    ] {
        assert!(rows.contains(value), "{value} is not in {rows}");
    }
    // jsonb comes back as Postgres normalised it; json byte for byte.
    let jsonb: Vec<u8> = br#"{"a": [1, 2]}"#.to_vec();
    assert!(rows.contains(&format!("Jsonb({jsonb:?})")), "jsonb in {rows}");
    assert!(rows.contains(&format!("Jsonb({:?})", br#"{"b":1}"#.to_vec())), "json in {rows}");
    for column in ["Int16", "Decimal", "Jsonb", "ArrayDecimal", "Datetime", "Interval", "Uuid"] {
        assert!(rows.contains(&format!("data-type: DbDataType::{column}")), "column type {column} in {rows}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_carry_the_sqlstate_and_bad_parameters_say_why() {
    let db = TestDb::new("errors").await;
    db.client().await.batch_execute("CREATE TABLE u (id int4 PRIMARY KEY)").await.unwrap();
    let plugin = load(db.databases("app", 2), &["app"], false, Duration::from_secs(5)).await;
    let body = json!({"db": "app", "steps": [
        step("INSERT INTO u VALUES ($1)", json!([{"int32": 1}]), false),
        step("INSERT INTO u VALUES ($1)", json!([{"int32": 1}]), false),
        step("INSERT INTO u VALUES ($1)", json!([{"int64": 99999999999i64}]), false),
        step("SELECT * FROM nowhere", json!([]), true),
        // A parameter is bound, never spliced into the statement.
        step("SELECT $1::text", json!([{"str": "'); DROP TABLE u; --"}]), true),
    ]});
    let answer = call(&plugin, body).await.expect("no fault").expect("answered");
    let lines: Vec<&str> = answer.lines().collect();
    assert_eq!(lines[0], "affected 1");
    assert!(lines[1].contains("code: \"23505\""), "unique violation's SQLSTATE: {}", lines[1]);
    assert!(lines[2].contains("BadParameter(\"99999999999 does not fit a value of type int4"), "{}", lines[2]);
    assert!(lines[3].contains("code: \"42P01\""), "undefined table: {}", lines[3]);
    assert!(lines[4].contains("DROP TABLE u"), "{}", lines[4]);
    assert_eq!(count(&db.client().await, "u").await, 1, "the table is still there, with its one row");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ungranted_database_or_a_url_is_refused() {
    let db = TestDb::new("grants").await;
    let plugin = load(db.databases("app", 2), &["other"], false, Duration::from_secs(5)).await;
    for address in ["app", db.url().as_str()] {
        let body = json!({"db": address, "steps": [step("SELECT 1", json!([]), true)]});
        let answer = call(&plugin, body).await.expect("no fault").expect("answered");
        assert!(
            answer.starts_with("open error: Error::ConnectionFailed(\"plugin 'pgspin' may not open database"),
            "{answer}"
        );
        assert!(answer.contains("grant it with databases = "), "{answer}");
    }
    // Granted but not configured: open succeeds by name, the statement says what is missing.
    let body = json!({"db": "other", "steps": [step("SELECT 1", json!([]), true)]});
    let answer = call(&plugin, body).await.expect("no fault").expect("answered");
    assert!(answer.contains("this host has no [database.other]"), "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statement_past_the_deadline_is_cancelled_on_the_server() {
    let db = TestDb::new("deadline").await;
    let plugin = load(db.databases("app", 2), &["app"], false, Duration::from_secs(1)).await;
    let started = Instant::now();
    let body = json!({"db": "app", "steps": [step("SELECT pg_sleep(10)", json!([]), true)]});
    let answer = call(&plugin, body).await.expect("the guest got its error before the deadline").expect("answered");
    assert!(started.elapsed() < Duration::from_millis(1500), "the call took {:?}", started.elapsed());
    assert!(answer.contains("ran past the call's deadline and was cancelled on the server"), "{answer}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let watcher = db.client().await;
    let running: i64 = watcher
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND query LIKE '%pg_sleep(10)%' \
             AND state = 'active' AND pid <> pg_backend_pid()",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(running, 0, "pg_sleep(10) still runs on the server a second after the deadline");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_call_leaves_no_row_with_transaction_true() {
    let db = TestDb::new("rollback").await;
    let client = db.client().await;
    client.batch_execute("CREATE TABLE orders (id text PRIMARY KEY)").await.unwrap();
    let plugin = load(db.databases("app", 2), &["app"], true, Duration::from_secs(5)).await;
    let insert = |id: &str, then: &str| json!({"db": "app", "then": then, "steps": [step("INSERT INTO orders VALUES ($1)", json!([{"str": id}]), false)]});
    let trapped = call(&plugin, insert("trap", "trap")).await;
    assert!(matches!(trapped, Err(PluginFault::Trap(_))), "{trapped:?}");
    for then in ["failed", "retry"] {
        let answer = call(&plugin, insert(then, then)).await.expect("no fault");
        assert!(answer.is_err(), "{then}: {answer:?}");
    }
    assert_eq!(count(&client, "orders").await, 0, "a trap, failed or retry left a row behind");
    let answer = call(&plugin, insert("kept", "ok")).await.expect("no fault").expect("answered");
    assert_eq!(answer, "affected 1");
    assert_eq!(count(&client, "orders").await, 1, "the successful call's row is committed");
    // Without transaction = true each statement commits on its own: the trap keeps its row.
    let plain = load(db.databases("app", 2), &["app"], false, Duration::from_secs(5)).await;
    assert!(matches!(call(&plain, insert("plain", "trap")).await, Err(PluginFault::Trap(_))));
    assert_eq!(count(&client, "orders").await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_of_two_serves_fifty_concurrent_calls_within_their_deadlines() {
    let db = TestDb::new("pool").await;
    let timeout = Duration::from_secs(5);
    let databases = db.databases("app", 2);
    let plugin = load(databases.clone(), &["app"], false, timeout).await;
    let started = Instant::now();
    let calls = (0..50).map(|i| {
        let plugin = plugin.clone();
        tokio::spawn(async move {
            let begun = Instant::now();
            let body =
                json!({"db": "app", "steps": [step("SELECT pg_sleep(0.02), $1::int4", json!([{"int32": i}]), true)]});
            (call(&plugin, body).await, begun.elapsed())
        })
    });
    let results = join_all(calls.collect()).await;
    for (i, (answer, took)) in results.into_iter().enumerate() {
        let answer = answer.expect("no fault").expect("answered");
        assert!(answer.contains(&format!("Int32({i})")), "call {i}: {answer}");
        assert!(took < timeout, "call {i} took {took:?}");
    }
    // 50 × 20 ms on 2 connections: at least half a second, and well within one deadline.
    let all = started.elapsed();
    assert!(all >= Duration::from_millis(500) && all < timeout, "50 calls took {all:?}");
    let (open, idle) = databases.pool("app").expect("the pool").status();
    assert!(open <= 2 && idle == open, "{open} connections open ({idle} idle) with max_connections = 2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_lost_on_the_server_give_errors_then_recovery() {
    let db = TestDb::new("restart").await;
    let plugin = load(db.databases("app", 2), &["app"], false, Duration::from_secs(5)).await;
    let select = json!({"db": "app", "steps": [step("SELECT 1::int4", json!([]), true)]});
    assert!(call(&plugin, select.clone()).await.unwrap().unwrap().contains("Int32(1)"));
    // What a Postgres restart does to the pool: every connection of the host is gone.
    db.client()
        .await
        .batch_execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'warren' AND datname = current_database()")
        .await
        .unwrap();
    let mut answers = Vec::new();
    for _ in 0..3 {
        answers.push(call(&plugin, select.clone()).await.unwrap().unwrap());
    }
    assert!(answers.last().is_some_and(|a| a.contains("Int32(1)")), "no recovery: {answers:?}");
}

/// Awaits every task, in order.
async fn join_all<T: Send + 'static>(tasks: Vec<tokio::task::JoinHandle<T>>) -> Vec<T> {
    let mut out = Vec::new();
    for task in tasks {
        out.push(task.await.expect("task"));
    }
    out
}

broker_test! {
    async fn a_committed_transaction_and_its_response_both_arrive() {
        let db = TestDb::new("answer").await;
        let watcher = db.client().await;
        watcher.batch_execute("CREATE TABLE orders (id text PRIMARY KEY)").await.unwrap();
        let service = unique_service("pg");
        let cleanup = Cleanup::new();
        cleanup.service(&service);
        let dir = std::env::temp_dir().join(format!("warren-plugins-{service}"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::copy(fixture(), dir.join("pgspin.wasm")).unwrap();
        let rest = format!(
            "{}[plugin.pgspin]\ndatabases = [\"app\"]\ntransaction = true\n[database.app]\nurl = \"{}\"\nmax_connections = 2\n",
            requests(&[("store", "pgspin")]),
            db.url()
        );
        let server = start(&config_in(&service, &dir, &rest)).await;
        let mut client = GoClient::new(&service, "go-client", &["store"]).await;
        let insert = |id: &str, then: &str| {
            json!({"db": "app", "then": then, "steps": [step("INSERT INTO orders VALUES ($1)", json!([{"str": id}]), false)]})
        };

        client.request_json("store", &insert("o-1", "ok")).await;
        let response = client.response(DEADLINE).await.expect("the response of the committed call");
        assert_eq!(response.data, b"affected 1");
        assert_eq!(count(&watcher, "orders").await, 1, "the row committed before the response was published");

        // A handler that fails after its insert: rejected, no response, no row.
        client.request_json("store", &insert("o-2", "failed")).await;
        wait_until_settled(&format!("{service}.direct.exchange.request.queue")).await;
        assert_eq!(count(&watcher, "orders").await, 1, "the failed call's insert was rolled back");
        client.assert_no_response(&format!("{service}.direct.exchange.request.queue")).await;

        server.stop().await.expect("the host stops");
        client.cleanup().await;
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// A real restart, of a server of the test's own (the default one is never stopped): while it
/// is down a call fails at once as connection-failed (a `retry` in the SDKs), not at its
/// deadline; once it is back, calls succeed on the same host and plugin, nothing reloaded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_restart_gives_errors_then_recovery_without_restarting_the_host() {
    let server = tokio::task::spawn_blocking(warren_tests::pg_server::PgServer::start).await.expect("initdb and start");
    let settings = warren::config::DatabaseSettings {
        url: server.url("postgres"),
        password: None,
        ca_pem: None,
        max_connections: 2,
    };
    let databases = Databases::open(&std::collections::BTreeMap::from([("app".to_string(), settings)])).expect("pools");
    let timeout = Duration::from_secs(5);
    let plugin = load(databases, &["app"], false, timeout).await;
    let select = json!({"db": "app", "steps": [step("SELECT 1::int4", json!([]), true)]});
    assert!(call(&plugin, select.clone()).await.unwrap().unwrap().contains("Int32(1)"));

    let server = tokio::task::spawn_blocking(move || {
        server.stop();
        server
    })
    .await
    .expect("pg_ctl stop");
    let started = Instant::now();
    let down = call(&plugin, select.clone()).await.expect("no fault").expect("the fixture answers with the error");
    assert!(down.contains("ConnectionFailed"), "with the server down: {down}");
    assert!(started.elapsed() < timeout / 2, "a down server failed the call only after {:?}", started.elapsed());

    let server = tokio::task::spawn_blocking(move || {
        server.start_again();
        server
    })
    .await
    .expect("pg_ctl start");
    // The pool may still hold a connection the restart closed: that call fails and the
    // connection is dropped; the next ones connect afresh.
    let mut answers = Vec::new();
    for _ in 0..3 {
        answers.push(call(&plugin, select.clone()).await.unwrap().unwrap());
        if answers.last().is_some_and(|a| a.contains("Int32(1)")) {
            break;
        }
    }
    assert!(answers.last().is_some_and(|a| a.contains("Int32(1)")), "no recovery after the restart: {answers:?}");
    drop(server);
}
