//! Postgres from Python, JavaScript and Go: the guest SDKs' helpers (`warren_guest.pg`,
//! `Database`, `warren.OpenDatabase`) in a real component each (`tests/fixtures/pg-py`,
//! `pg-js`, `pg-go`, built once as `warren build` builds them), served over the broker and
//! run against the real Postgres at 127.0.0.1:5432, each test on a database of its own
//! ([`TestDb`], dropped also when the test fails).
//!
//! One contract for the three: an order inserted with every value a bound parameter reads back
//! as the language's own values and is in Postgres's own table; a unique violation reaches the
//! handler with its SQLSTATE; left uncaught it refuses the message (`failed`), and a database
//! that cannot be reached asks for a retry.

use serde_json::{Value, json};
use warren_tests::*;

/// 2026-12-06T12:00:00Z.
const PLACED: i64 = 1_796_558_400;
const NOTE: &str = "it's'); DROP TABLE orders; --";

/// What the fixture `fixture` must answer and leave in Postgres, `types` being the names its
/// language gives the values read back (id, amount, price, paid, note, blob, nothing, placed,
/// total).
async fn orders_contract(fixture: &str, types: [&str; 9]) {
    let db = TestDb::new(&fixture.replace('-', "_")).await;
    let watcher = db.client().await;
    watcher
        .batch_execute(
            "CREATE TABLE orders (id text PRIMARY KEY, amount int8 NOT NULL, price float8, paid bool, note text, \
             blob bytea, nothing text, placed timestamptz, total numeric(10, 2))",
        )
        .await
        .expect("the orders table");
    let service = unique_service(fixture);
    let plugins = std::env::temp_dir().join(format!("warren-plugins-{service}"));
    std::fs::create_dir_all(&plugins).expect("the plugins folder");
    let files = Cleanup::new();
    files.dir(&plugins);
    std::fs::copy(warren_tests::fixture(fixture), plugins.join(format!("{fixture}.wasm"))).expect("the fixture");

    let rejects_exchange = format!("{service}.rejects");
    let extra = format!(
        "dead_letter_exchange = \"{rejects_exchange}\"\n\
         [plugin.{fixture}]\ndatabases = [\"app\", \"down\"]\nmax_retries = 0\n\
         [database.app]\nurl = \"{}\"\nmax_connections = 2\n\
         [database.down]\nurl = \"postgres://postgres@127.0.0.1:1/nothing\"\n",
        db.url()
    );
    let handlers = [("store", fixture), ("duplicate", fixture), ("down", fixture)];
    let mut s = Scenario::start_in(&service, &plugins, &handlers, &extra, &[]).await;
    let mut rejects = collect(&s.client.connection, &rejects_exchange).await;
    let mut next_reject = async || tokio::time::timeout(DEADLINE, rejects.recv()).await.ok().flatten();
    let order = json!({"id": "o-1", "amount": 42, "price": 12.5, "paid": true, "note": NOTE, "total": "12.50", "placed": PLACED});

    s.client.request_json("store", &order).await;
    let response = s.client.response(DEADLINE).await.expect("the stored order's answer");
    let answer: Value = serde_json::from_slice(&response.data).expect("a JSON answer");
    assert_eq!(answer["affected"], 1, "{answer}");
    let columns = ["id", "amount", "price", "paid", "note", "blob", "nothing", "placed", "total"];
    assert_eq!(answer["columns"], json!(columns), "{answer}");
    assert_eq!(answer["row"], json!(["o-1", 42, 12.5, true, NOTE, NOTE, null, PLACED, "12.50"]), "{answer}");
    assert_eq!(answer["types"], json!(types), "{fixture} reads back its language's own values");

    // Postgres's own view: every value as bound, nothing spliced into the statement.
    let row = watcher
        .query_one(
            "SELECT amount, price, paid, note, blob, nothing, extract(epoch FROM placed)::int8, total::text \
             FROM orders WHERE id = 'o-1'",
            &[],
        )
        .await
        .expect("the row is in Postgres");
    assert_eq!(row.get::<_, i64>(0), 42);
    assert_eq!(row.get::<_, f64>(1), 12.5);
    assert!(row.get::<_, bool>(2));
    assert_eq!(row.get::<_, String>(3), NOTE);
    assert_eq!(row.get::<_, Vec<u8>>(4), NOTE.as_bytes());
    assert_eq!(row.get::<_, Option<String>>(5), None);
    assert_eq!(row.get::<_, i64>(6), PLACED);
    assert_eq!(row.get::<_, String>(7), "12.50");

    // The same id again, caught: the SQLSTATE reaches the handler, and it would not retry.
    s.client.request_json("duplicate", &order).await;
    let response = s.client.response(DEADLINE).await.expect("the duplicate's answer");
    let answer: Value = serde_json::from_slice(&response.data).expect("a JSON answer");
    assert_eq!(answer, json!({"kind": "query-failed", "sqlstate": "23505", "retryable": false}));

    // Uncaught, the same error refuses the message for good.
    s.client.request_json("store", &order).await;
    let dead = next_reject().await.expect("the duplicate store is dead-lettered");
    let reason = header(&dead, "x-warren-reason").unwrap_or_default();
    assert!(reason.starts_with(&format!("failed in '{fixture}'")) && reason.contains("23505"), "{reason}");

    // A database nothing answers for: a retry (max_retries = 0, so rejected at once, saying so).
    s.client.request_json("down", &order).await;
    let dead = next_reject().await.expect("the unreachable database's message is dead-lettered");
    let reason = header(&dead, "x-warren-reason").unwrap_or_default();
    assert!(reason.starts_with("retry asked (") && reason.contains("down"), "{reason}");

    let count: i64 = watcher.query_one("SELECT count(*) FROM orders", &[]).await.expect("count").get(0);
    assert_eq!(count, 1, "only the first store left a row");
    s.assert_no_response().await;
    s.finish().await;
}

broker_test! {
    async fn python_stores_and_reads_back_through_warren_guest_pg() {
        let types = ["str", "int", "float", "bool", "str", "bytes", "NoneType", "datetime", "Decimal"];
        orders_contract("pg-py", types).await;
    }
}

broker_test! {
    async fn javascript_stores_and_reads_back_through_database() {
        let types = ["String", "Number", "Number", "Boolean", "String", "Uint8Array", "null", "Date", "String"];
        orders_contract("pg-js", types).await;
    }
}

broker_test! {
    async fn go_stores_and_reads_back_through_open_database() {
        let types = ["string", "int64", "float64", "bool", "string", "[]uint8", "<nil>", "time.Time", "string"];
        orders_contract("pg-go", types).await;
    }
}
