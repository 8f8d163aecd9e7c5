//! A Postgres database of a test's own on the server at 127.0.0.1:5432 (`WARREN_POSTGRES_URL`
//! overrides it; trust auth, user postgres): made by [`TestDb::new`], dropped — connections and
//! all — when the guard goes, also when the test fails.

use std::collections::BTreeMap;
use std::sync::Arc;

use warren::config::DatabaseSettings;
use warren::database::Databases;

/// The server every test talks to, as an admin (creates and drops the tests' databases).
fn admin_url() -> String {
    std::env::var("WARREN_POSTGRES_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// A database of the test's own, dropped (connections and all) when the guard goes, also
/// when the test fails.
pub struct TestDb {
    pub name: String,
}

impl TestDb {
    /// A fresh database named `warren_<what>_<8 hex>`.
    pub async fn new(what: &str) -> TestDb {
        let name = format!("warren_{what}_{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
        admin(&format!("CREATE DATABASE {name}")).await;
        TestDb { name }
    }

    /// The URL a host uses for this database.
    pub fn url(&self) -> String {
        let admin = admin_url();
        let base = admin.rsplit_once('/').map_or(admin.as_str(), |(base, _)| base);
        format!("{base}/{}", self.name)
    }

    /// A client of the test's own on this database.
    pub async fn client(&self) -> tokio_postgres::Client {
        let (client, connection) = tokio_postgres::connect(&self.url(), tokio_postgres::NoTls).await.expect("connect");
        tokio::spawn(connection);
        client
    }

    /// `[database.<name>]` for this database, pooled at `max_connections`.
    pub fn databases(&self, name: &str, max_connections: usize) -> Arc<Databases> {
        let settings = DatabaseSettings { url: self.url(), password: None, ca_pem: None, max_connections };
        Databases::open(&BTreeMap::from([(name.to_string(), settings)])).expect("pools")
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        // Its own thread and runtime: a Drop cannot await, and may run outside any runtime.
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            runtime.block_on(admin(&sql));
        })
        .join();
    }
}

async fn admin(sql: &str) {
    let (client, connection) =
        tokio_postgres::connect(&admin_url(), tokio_postgres::NoTls).await.expect("Postgres answers at 127.0.0.1:5432");
    tokio::spawn(connection);
    client.batch_execute(sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
}
