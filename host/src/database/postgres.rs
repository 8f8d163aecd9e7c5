//! One database's pool and one call's session on it: a pooled connection taken within the
//! call's deadline, statements prepared once per connection and always bound (never
//! interpolated), the server-side cancel of a statement still running at the deadline, and the
//! call's transaction (BEGIN before its first statement, COMMIT or ROLLBACK at its end).
//!
//! A connection that cannot be trusted — a statement was cut at the deadline, the call ended
//! mid-transaction or mid-statement, COMMIT or ROLLBACK failed — is closed, never returned to
//! the pool: the server rolls back whatever it held. The pool checks each connection it hands
//! out (`RecyclingMethod::Fast`: a closed one is replaced), so after a Postgres restart the
//! first statements fail and the next ones run on fresh connections.

use std::sync::Arc;
use std::time::{Duration, Instant};

use deadpool_postgres::{Manager, ManagerConfig, Object, RecyclingMethod};
use futures_lite::StreamExt;
use tokio_postgres::types::ToSql;
use tokio_postgres::{CancelToken, NoTls};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::bindings::spin::postgres::postgres::{DbError as WitDbError, Error, ParameterValue, QueryError, RowSet};
use super::values::{Param, ParamError, column, row_values};
use super::{Budget, DatabaseError};
use crate::config::DatabaseSettings;

/// How long a new connection may take to open, at most (the call's deadline may cut it sooner).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long COMMIT, ROLLBACK and a cancel request may take at the end of a call.
const END_TIMEOUT: Duration = Duration::from_secs(5);

/// How the pool's connections (and their cancel requests) reach the server.
#[derive(Clone)]
enum Tls {
    None,
    Rustls(MakeRustlsConnect),
}

/// One `[database.<name>]`: its pool, sized by `max_connections`.
pub struct Pool {
    name: Arc<str>,
    pool: deadpool_postgres::Pool,
    tls: Tls,
}

impl Pool {
    /// The pool of one database. Connects nothing: connections are opened on demand.
    pub fn new(name: &str, settings: &DatabaseSettings) -> Result<Pool, DatabaseError> {
        let mut config: tokio_postgres::Config =
            settings.url.parse().map_err(|e| DatabaseError::Url { name: name.into(), reason: format!("{e}") })?;
        if let Some(password) = &settings.password {
            config.password(password.expose());
        }
        if config.get_application_name().is_none() {
            config.application_name("warren");
        }
        config.connect_timeout(CONNECT_TIMEOUT);
        let manager_config = ManagerConfig { recycling_method: RecyclingMethod::Fast };
        let tls = match &settings.ca_pem {
            None => Tls::None,
            Some(pem) => {
                config.ssl_mode(tokio_postgres::config::SslMode::Require);
                Tls::Rustls(rustls_connector(pem).map_err(|reason| DatabaseError::Tls { name: name.into(), reason })?)
            }
        };
        let manager = match &tls {
            Tls::None => Manager::from_config(config, NoTls, manager_config),
            Tls::Rustls(connect) => Manager::from_config(config, connect.clone(), manager_config),
        };
        let pool = deadpool_postgres::Pool::builder(manager)
            .max_size(settings.max_connections)
            .build()
            .map_err(|e| DatabaseError::Pool { name: name.into(), reason: e.to_string() })?;
        Ok(Pool { name: name.into(), pool, tls })
    }

    /// The database's name in the config.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Connections open now, and how many of them are idle in the pool.
    pub fn status(&self) -> (usize, usize) {
        let status = self.pool.status();
        (status.size, status.available)
    }
}

/// TLS to the server, trusting only the CA of `[database.<name>.tls] ca_file` (rustls, ring).
fn rustls_connector(pem: &str) -> Result<MakeRustlsConnect, String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
        let cert = cert.map_err(|e| format!("ca_file is not PEM: {e}"))?;
        roots.add(cert).map_err(|e| format!("ca_file holds a certificate rustls refuses: {e}"))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(MakeRustlsConnect::new(config))
}

/// One call's use of one database: its pooled connection (taken by the first statement) and,
/// with `transaction = true`, the transaction all its statements run in.
pub struct Session {
    pool: Arc<Pool>,
    conn: Option<Object>,
    transaction: bool,
    /// BEGIN was sent: the connection holds an open transaction.
    in_transaction: bool,
    /// A statement in the transaction failed: COMMIT would only roll back.
    failed: bool,
    /// A statement did not end normally (cut at the deadline, or its call was dropped while
    /// it ran): the connection is closed at the end, never reused.
    poisoned: bool,
}

impl Session {
    pub fn new(pool: Arc<Pool>, transaction: bool) -> Session {
        Session { pool, conn: None, transaction, in_transaction: false, failed: false, poisoned: false }
    }

    pub fn name(&self) -> &str {
        &self.pool.name
    }

    /// Runs a query; every row read counts against the call's `budget`.
    pub async fn query(
        &mut self,
        until: Instant,
        statement: &str,
        params: Vec<ParameterValue>,
        budget: &mut Budget,
    ) -> Result<RowSet, Error> {
        self.ready(until).await?;
        let params: Vec<Param> = params.into_iter().map(Param).collect();
        let result = self.bounded(until, |conn| async move { read_rows(conn, statement, &params, budget).await }).await;
        self.note(result)
    }

    /// Runs a statement and returns how many rows it affected.
    pub async fn execute(
        &mut self,
        until: Instant,
        statement: &str,
        params: Vec<ParameterValue>,
    ) -> Result<u64, Error> {
        self.ready(until).await?;
        let params: Vec<Param> = params.into_iter().map(Param).collect();
        let result = self
            .bounded(until, |conn| async move {
                let prepared = conn.prepare_cached(statement).await.map_err(pg_error)?;
                conn.execute_raw(&prepared, params.iter().map(|p| p as &dyn ToSql)).await.map_err(pg_error)
            })
            .await;
        self.note(result)
    }

    /// Commits the call's transaction (nothing to do without one) and gives the connection back.
    pub async fn commit(&mut self) -> Result<(), DatabaseError> {
        if !self.in_transaction {
            return Ok(());
        }
        let name = self.pool.name.to_string();
        let fail = |reason: String| DatabaseError::Commit { name: name.clone(), reason };
        if self.failed {
            self.rollback().await;
            return Err(fail("a statement in it failed, and the handler returned success anyway".into()));
        }
        match self.end("COMMIT").await {
            Ok(()) => Ok(()),
            Err(reason) => Err(fail(reason)),
        }
    }

    /// Rolls the call's transaction back (nothing to do without one).
    pub async fn rollback(&mut self) {
        if self.in_transaction
            && let Err(reason) = self.end("ROLLBACK").await
        {
            tracing::warn!(database = %self.pool.name, "ROLLBACK failed ({reason}): the connection was closed, so the server rolled back");
        }
    }

    /// Sends COMMIT or ROLLBACK; a failure closes the connection (the server then rolls back).
    async fn end(&mut self, command: &str) -> Result<(), String> {
        let Some(conn) = &self.conn else { return Ok(()) };
        let result = match tokio::time::timeout(END_TIMEOUT, conn.batch_execute(command)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("Postgres did not answer {command} within {} s", END_TIMEOUT.as_secs())),
        };
        self.in_transaction = false;
        if result.is_err() {
            self.poisoned = true;
        }
        result
    }

    /// Takes a connection from the pool within the deadline, and opens the transaction.
    async fn ready(&mut self, until: Instant) -> Result<(), Error> {
        if self.poisoned {
            return Err(Error::ConnectionFailed(
                "an earlier statement of this call was cut at the deadline: this connection is closed".into(),
            ));
        }
        if self.conn.is_none() {
            let got = tokio::time::timeout_at(until.into(), self.pool.pool.get()).await;
            self.conn = Some(match got {
                Ok(Ok(conn)) => conn,
                Ok(Err(e)) => return Err(Error::ConnectionFailed(format!("database '{}': {e}", self.pool.name))),
                Err(_) => {
                    return Err(Error::ConnectionFailed(format!(
                        "no connection to database '{}' came free before the call's deadline (its max_connections are all in use, or it does not answer)",
                        self.pool.name
                    )));
                }
            });
        }
        if self.transaction && !self.in_transaction {
            self.in_transaction = true;
            let begin = self.bounded(until, |conn| async move { conn.batch_execute("BEGIN").await.map_err(pg_error) });
            if let Err(e) = begin.await {
                self.in_transaction = false;
                return Err(e);
            }
        }
        Ok(())
    }

    /// Runs `work` on the connection until `until`. Past it, the statement is cancelled on
    /// the server (Postgres's cancel request, on a connection of its own) and this connection
    /// is poisoned. If the call is dropped while `work` runs, the guard cancels it too.
    async fn bounded<'s, T, F, Fut>(&'s mut self, until: Instant, work: F) -> Result<T, Error>
    where
        F: FnOnce(&'s Object) -> Fut,
        Fut: std::future::Future<Output = Result<T, Error>> + 's,
    {
        let Some(conn) = &self.conn else {
            return Err(Error::ConnectionFailed("no connection".into()));
        };
        let mut guard = CancelGuard { token: Some(conn.cancel_token()), tls: self.pool.tls.clone() };
        self.poisoned = true;
        let outcome = tokio::time::timeout_at(until.into(), work(conn)).await;
        match outcome {
            Ok(result) => {
                guard.token = None;
                self.poisoned = false;
                result
            }
            Err(_) => Err(Error::QueryFailed(QueryError::Text(
                "the statement ran past the call's deadline and was cancelled on the server".into(),
            ))),
        }
    }

    /// Remembers a failed statement inside the transaction (COMMIT would only roll back).
    fn note<T>(&mut self, result: Result<T, Error>) -> Result<T, Error> {
        if result.is_err() && self.in_transaction {
            self.failed = true;
        }
        result
    }
}

impl Drop for Session {
    /// A connection that holds a transaction, or that a statement did not end on, is closed
    /// (the server rolls back); any other goes back to the pool.
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take()
            && (self.in_transaction || self.poisoned)
        {
            drop(Object::take(conn));
        }
    }
}

/// Sends Postgres's cancel request for a statement when dropped while armed.
struct CancelGuard {
    token: Option<CancelToken>,
    tls: Tls,
}

impl Drop for CancelGuard {
    fn drop(&mut self) {
        let Some(token) = self.token.take() else { return };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        let tls = self.tls.clone();
        runtime.spawn(async move {
            let sent = match tls {
                Tls::None => tokio::time::timeout(END_TIMEOUT, token.cancel_query(NoTls)).await,
                Tls::Rustls(connect) => tokio::time::timeout(END_TIMEOUT, token.cancel_query(connect)).await,
            };
            if !matches!(sent, Ok(Ok(()))) {
                tracing::warn!("a statement past its call's deadline could not be cancelled on the server: it runs on until it ends");
            }
        });
    }
}

/// Prepares (once per connection), binds and reads the rows, within the call's budget.
async fn read_rows(conn: &Object, statement: &str, params: &[Param], budget: &mut Budget) -> Result<RowSet, Error> {
    let prepared = conn.prepare_cached(statement).await.map_err(pg_error)?;
    let columns = prepared.columns().iter().map(column).collect();
    let stream = conn.query_raw(&prepared, params.iter().map(|p| p as &dyn ToSql)).await.map_err(pg_error)?;
    let mut stream = std::pin::pin!(stream);
    let mut rows = Vec::new();
    while let Some(row) = stream.next().await {
        let row = row.map_err(pg_error)?;
        let (values, bytes) = row_values(&row).map_err(Error::ValueConversionFailed)?;
        budget.take_row(bytes).map_err(Error::Other)?;
        rows.push(values);
    }
    Ok(RowSet { columns, rows })
}

/// A driver error as the guest sees it: Postgres's own (with its SQLSTATE), a parameter that
/// does not fit its column, or a connection that failed.
pub fn pg_error(error: tokio_postgres::Error) -> Error {
    if let Some(db) = error.as_db_error() {
        return Error::QueryFailed(QueryError::DbError(db_error(db)));
    }
    if let Some(param) = std::error::Error::source(&error).and_then(|s| s.downcast_ref::<ParamError>()) {
        return Error::BadParameter(param.to_string());
    }
    if error.is_closed() || std::error::Error::source(&error).is_some_and(|s| s.is::<std::io::Error>()) {
        return Error::ConnectionFailed(format!("{error}: the next statement takes a fresh connection"));
    }
    Error::QueryFailed(QueryError::Text(error.to_string()))
}

fn db_error(db: &tokio_postgres::error::DbError) -> WitDbError {
    let mut extras = Vec::new();
    let mut extra = |key: &str, value: Option<&str>| {
        if let Some(value) = value {
            extras.push((key.to_string(), value.to_string()));
        }
    };
    extra("hint", db.hint());
    extra("where", db.where_());
    extra("schema", db.schema());
    extra("table", db.table());
    extra("column", db.column());
    extra("datatype", db.datatype());
    extra("constraint", db.constraint());
    WitDbError {
        as_text: db.to_string(),
        severity: db.severity().to_string(),
        code: db.code().code().to_string(),
        message: db.message().to_string(),
        detail: db.detail().map(str::to_string),
        extras,
    }
}
