//! Postgres for plugins: Spin's `spin:postgres/postgres@4.0.0`, served unchanged so a
//! component built for Spin runs here, on the databases the config grants each plugin
//! (`[plugin.<name>] databases = ["<name>"]`). `connection.open(address)` takes the NAME of a
//! granted database, never a URL: the host alone holds `[database.<name>] url` and its password.
//!
//! Shaped like a Spin factor, so it needs nothing from either wing:
//! - shared state: [`Databases`], one pool per `[database.<name>]` ([`postgres::Pool`]), made
//!   at start without touching the network;
//! - per-call state: [`CallDatabase`], the plugin's granted names, `[limits] database_*` caps,
//!   the call's deadline and one [`postgres::Session`] per database it used (a pooled
//!   connection, and the call's transaction when `transaction = true`);
//! - linker setup: [`add_to_linker`], for any store data that implements [`DatabaseView`].
//!
//! The commit point is part of the call: [`CallDatabase::finish`] commits when the handler
//! succeeded and rolls back otherwise, and the Wasm wing calls it before `handle` returns, so
//! the consumer's settlement (the response, then the ack) only ever follows a commit. A call
//! that ends any other way (trap, deadline, a dropped instance) drops its sessions: each closes
//! its connection instead of returning it to the pool, and the server rolls back.

// The guest's `error` is Spin's WIT type, returned as it is (a large variant, by design).
#![allow(clippy::result_large_err)]

pub mod postgres;
pub mod values;

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use wasmtime::component::{HasData, Linker, Resource, ResourceTable};

use crate::config::DatabaseSettings;
use crate::telemetry::{CallTrace, SpanKind};
use bindings::spin::postgres::postgres::{Error, ParameterValue, RowSet};

/// Host bindings of `warren:plugin/postgres` (`wit/handler.wit`; Spin's WIT vendored in
/// `wit/deps/spin-postgres@4.0.0/`). `wasm::bindings` maps the `handler` world's import here.
pub mod bindings {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "warren:plugin/postgres",
        imports: { default: async | trappable },
        with: { "spin:postgres/postgres.connection": super::Connection },
    });
}

/// A database could not be set up, or a call's transaction could not end. Each says what to do.
#[derive(Debug, thiserror::Error)]
pub enum DatabaseError {
    #[error("[database.{name}] url: {reason}. Write it like \"postgres://warren@127.0.0.1:5432/orders\"")]
    Url { name: String, reason: String },
    #[error(
        "[database.{name}.tls]: {reason}. Check ca_file holds the PEM certificate of the CA that signed the server's"
    )]
    Tls { name: String, reason: String },
    #[error("[database.{name}]: cannot make its pool: {reason}. Check max_connections (1 or more)")]
    Pool { name: String, reason: String },
    #[error(
        "the transaction on database '{name}' did not commit: {reason}. Nothing of this call was kept; the message is handled again"
    )]
    Commit { name: String, reason: String },
}

/// A connection as the guest holds it: only the name of a granted database. The pooled
/// connection lives in the call's [`CallDatabase`], so a warm instance keeping its handle
/// across messages gets a connection of the new call's own.
pub struct Connection {
    name: Arc<str>,
}

/// Every `[database.<name>]` of the config, each with its pool.
pub struct Databases {
    pools: BTreeMap<String, Arc<postgres::Pool>>,
    /// (plugin, database) pairs already warned about, so a refusal is logged once.
    denied: Mutex<HashSet<(Arc<str>, String)>>,
}

impl Databases {
    /// One pool per configured database. Nothing connects yet: a database that is down at
    /// start fails the statements that need it, and serves once it is back.
    pub fn open(settings: &BTreeMap<String, DatabaseSettings>) -> Result<Arc<Databases>, DatabaseError> {
        let mut pools = BTreeMap::new();
        for (name, database) in settings {
            pools.insert(name.clone(), Arc::new(postgres::Pool::new(name, database)?));
        }
        Ok(Arc::new(Databases { pools, denied: Mutex::default() }))
    }

    /// The pool of database `name`, if the config has one.
    pub fn pool(&self, name: &str) -> Option<&Arc<postgres::Pool>> {
        self.pools.get(name)
    }

    fn log_denied(&self, plugin: &Arc<str>, name: &str) {
        let mut seen = self.denied.lock().unwrap_or_else(|e| e.into_inner());
        if seen.insert((plugin.clone(), name.to_string())) {
            tracing::warn!(
                plugin = %plugin,
                database = name,
                "plugin '{plugin}' may not open database '{name}': grant it with databases = [\"{name}\"] in [plugin.{plugin}] (logged once)"
            );
        }
    }
}

/// What one call may read back from its databases (`[limits] database_max_rows`,
/// `database_max_kib`), over all its statements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DatabaseLimits {
    pub max_rows: u64,
    pub max_bytes: u64,
}

impl Default for DatabaseLimits {
    fn default() -> Self {
        DatabaseLimits { max_rows: 10_000, max_bytes: 16 << 20 }
    }
}

/// Rows and bytes a call has read so far, against its [`DatabaseLimits`].
#[derive(Debug, Default)]
pub struct Budget {
    pub limits: DatabaseLimits,
    pub rows: u64,
    pub bytes: u64,
}

impl Budget {
    /// Counts one more row of `bytes`; says why when the call is over a cap.
    pub fn take_row(&mut self, bytes: usize) -> Result<(), String> {
        self.rows += 1;
        self.bytes = self.bytes.saturating_add(bytes as u64);
        if self.rows > self.limits.max_rows {
            return Err(format!(
                "more than {} rows read in one call (limits.database_max_rows): add a LIMIT, or page through the rows over several messages",
                self.limits.max_rows
            ));
        }
        if self.bytes > self.limits.max_bytes {
            return Err(format!(
                "more than {} KiB read in one call (limits.database_max_kib): select fewer or smaller columns",
                self.limits.max_bytes >> 10
            ));
        }
        Ok(())
    }
}

/// One call's database state: what it may open, its caps and deadline, and the sessions
/// (pooled connections, transactions) it holds until [`CallDatabase::finish`].
pub struct CallDatabase {
    databases: Option<Arc<Databases>>,
    plugin: Arc<str>,
    granted: Arc<[String]>,
    transaction: bool,
    budget: Budget,
    deadline: Instant,
    sessions: Vec<postgres::Session>,
    /// The trace each statement's span joins.
    trace: CallTrace,
}

impl CallDatabase {
    pub fn new(
        databases: Option<Arc<Databases>>,
        plugin: Arc<str>,
        granted: Arc<[String]>,
        transaction: bool,
        limits: DatabaseLimits,
        deadline: Instant,
    ) -> CallDatabase {
        let budget = Budget { limits, ..Budget::default() };
        let trace = CallTrace::default();
        CallDatabase { databases, plugin, granted, transaction, budget, deadline, sessions: Vec::new(), trace }
    }

    /// Records each statement of this call as a CLIENT span in `trace`.
    pub fn trace(&mut self, trace: CallTrace) {
        self.trace = trace;
    }

    /// Makes a warm instance's state ready for another call: fresh caps and deadline. The
    /// last call's sessions were ended by its `finish`.
    pub fn begin_call(&mut self, deadline: Instant) {
        self.deadline = deadline;
        self.budget = Budget { limits: self.budget.limits, ..Budget::default() };
        self.sessions.clear();
    }

    /// Ends the call's use of its databases: when `succeeded`, commits each open transaction
    /// (the first failure is returned and the rest roll back); otherwise rolls back. Every
    /// connection goes back to its pool, or is closed when it cannot be trusted.
    pub async fn finish(&mut self, succeeded: bool) -> Result<(), DatabaseError> {
        let mut outcome = Ok(());
        for mut session in self.sessions.drain(..) {
            if succeeded && outcome.is_ok() {
                outcome = session.commit().await;
            } else {
                session.rollback().await;
            }
        }
        outcome
    }

    /// Whether this call holds any session (for tests and the benchmark).
    pub fn is_idle(&self) -> bool {
        self.sessions.is_empty()
    }

    /// Where the session of database `name` is, made on first use (a connection is taken
    /// from the pool lazily, by the first statement).
    fn session(&mut self, name: &Arc<str>) -> Result<usize, Error> {
        if let Some(at) = self.sessions.iter().position(|s| s.name() == &**name) {
            return Ok(at);
        }
        let pool = self.databases.as_ref().and_then(|d| d.pool(name)).cloned().ok_or_else(|| {
            Error::ConnectionFailed(format!("this host has no [database.{name}]: add it to the config"))
        })?;
        self.sessions.push(postgres::Session::new(pool, self.transaction));
        Ok(self.sessions.len() - 1)
    }

    /// The moment a statement must have ended by: the call's deadline less a little, so the
    /// guest sees the error before the call itself is stopped.
    fn until(&self) -> Instant {
        let left = self.deadline.saturating_duration_since(Instant::now());
        Instant::now() + left.saturating_sub((left / 10).min(Duration::from_millis(50)))
    }
}

/// Implemented by a store's data to serve `spin:postgres` from its [`CallDatabase`].
pub trait DatabaseView: Send {
    fn database(&mut self) -> DatabaseCtx<'_>;
}

/// The call's database state and the store's resource table, borrowed for one host call.
pub struct DatabaseCtx<'a> {
    pub call: &'a mut CallDatabase,
    pub table: &'a mut ResourceTable,
}

struct HasDatabase;

impl HasData for HasDatabase {
    type Data<'a> = DatabaseCtx<'a>;
}

/// Adds `spin:postgres/postgres@4.0.0` to `linker`.
pub fn add_to_linker<T: DatabaseView + 'static>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
    bindings::spin::postgres::postgres::add_to_linker::<T, HasDatabase>(linker, T::database)
}

impl DatabaseCtx<'_> {
    /// Runs a statement on the session of `connection`'s database.
    async fn run(
        &mut self,
        connection: &Resource<Connection>,
        statement: &str,
        params: Vec<ParameterValue>,
        query: bool,
    ) -> wasmtime::Result<Result<Outcome, Error>> {
        let name = self.table.get(connection)?.name.clone();
        let until = self.call.until();
        let verb = if query { "query" } else { "execute" };
        let mut span = self.call.trace.span(|| format!("{verb} {name}"), SpanKind::Client);
        if let Some(span) = &mut span {
            span.set("db.system.name", "postgresql");
            span.set("db.namespace", &*name);
            span.set("db.query.text", statement);
        }
        let call = &mut *self.call;
        let session = match call.session(&name) {
            Ok(at) => &mut call.sessions[at],
            Err(e) => return Ok(Err(e)),
        };
        let result = if query {
            session.query(until, statement, params, &mut call.budget).await.map(Outcome::Rows)
        } else {
            session.execute(until, statement, params).await.map(Outcome::Count)
        };
        if let Err(e) = &result {
            tracing::debug!(plugin = %call.plugin, database = %name, "statement failed: {e:?}");
            if let Some(span) = &mut span {
                span.fail(format!("{e:?}"));
            }
        }
        Ok(result)
    }
}

enum Outcome {
    Rows(RowSet),
    Count(u64),
}

impl bindings::spin::postgres::postgres::Host for DatabaseCtx<'_> {}

impl bindings::spin::postgres::postgres::HostConnection for DatabaseCtx<'_> {
    async fn open(&mut self, address: String) -> wasmtime::Result<Result<Resource<Connection>, Error>> {
        let call = &*self.call;
        let Some(databases) = &call.databases else {
            return Ok(Err(Error::ConnectionFailed("this host has no [database.<name>] in its config".into())));
        };
        if !call.granted.contains(&address) {
            databases.log_denied(&call.plugin, &address);
            let plugin = &call.plugin;
            return Ok(Err(Error::ConnectionFailed(format!(
                "plugin '{plugin}' may not open database '{address}' (open takes the name of a granted database, never a URL): grant it with databases = [\"{address}\"] in [plugin.{plugin}]"
            ))));
        }
        Ok(Ok(self.table.push(Connection { name: address.into() })?))
    }

    async fn query(
        &mut self,
        connection: Resource<Connection>,
        statement: String,
        params: Vec<ParameterValue>,
    ) -> wasmtime::Result<Result<RowSet, Error>> {
        Ok(self.run(&connection, &statement, params, true).await?.map(|outcome| match outcome {
            Outcome::Rows(rows) => rows,
            Outcome::Count(_) => RowSet { columns: Vec::new(), rows: Vec::new() },
        }))
    }

    async fn execute(
        &mut self,
        connection: Resource<Connection>,
        statement: String,
        params: Vec<ParameterValue>,
    ) -> wasmtime::Result<Result<u64, Error>> {
        Ok(self.run(&connection, &statement, params, false).await?.map(|outcome| match outcome {
            Outcome::Count(n) => n,
            Outcome::Rows(rows) => rows.rows.len() as u64,
        }))
    }

    async fn drop(&mut self, connection: Resource<Connection>) -> wasmtime::Result<()> {
        self.table.delete(connection)?;
        Ok(())
    }
}
