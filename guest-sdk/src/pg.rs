//! Postgres through Spin's `spin:postgres/postgres@4.0.0`, on the databases the host's config
//! grants this plugin (`[plugin.<name>] databases = ["orders"]`).
//!
//! ```no_run
//! use warren_guest::{HandlerError, pg};
//!
//! fn store(id: &str, amount: i64) -> Result<u64, HandlerError> {
//!     let db = pg::Connection::open("orders")?;
//!     let inserted = db.execute(
//!         "INSERT INTO orders (id, amount) VALUES ($1, $2) ON CONFLICT (id) DO NOTHING",
//!         &[pg::text(id), pg::ParameterValue::Int64(amount)],
//!     )?;
//!     Ok(inserted)
//! }
//! ```
//!
//! `open` takes the NAME of a granted database, never a URL: the host holds the URL and the
//! password. Parameters are always bound (`$1`, `$2`, …), never spliced into the statement.
//! Every statement counts against the call's deadline (one still running at the deadline is
//! cancelled on the server) and the host's caps on rows and bytes read per call.
//!
//! With `transaction = true` in the plugin's config, every statement of a call runs in one
//! transaction, committed only when the handler returns `Ok` — before the host answers or acks
//! the message — and rolled back on any error or trap. A message can still be handled twice
//! (committed, then the host stops before the ack): make the handler idempotent, for example
//! with a unique key and `ON CONFLICT DO NOTHING` in the same transaction.
//!
//! A component built with Spin's own SDK or bindings of this interface runs unchanged; these
//! helpers only add `?` into [`HandlerError`] and a few shortcuts. (Natively, outside a host,
//! these calls panic.)

pub use crate::bindings::spin::postgres::postgres::{
    Column, Connection, DbDataType, DbError, DbValue, Error, ParameterValue, QueryError, RowSet,
};

use crate::HandlerError;

impl From<Error> for HandlerError {
    /// A failure that may pass (the database unreachable or restarting, a serialization
    /// conflict, the deadline near) is `retry`; a statement or value that can never succeed is
    /// `failed`.
    fn from(error: Error) -> Self {
        let passing = match &error {
            Error::ConnectionFailed(why) => !why.contains("may not open database"),
            Error::QueryFailed(QueryError::DbError(db)) => {
                // 08 connection, 40 rollback (serialization, deadlock), 53 resources, 57 operator
                // (shutdown, cancel), 55P03 lock not available.
                ["08", "40", "53", "57"].iter().any(|class| db.code.starts_with(class)) || db.code == "55P03"
            }
            Error::QueryFailed(QueryError::Text(why)) => why.contains("deadline"),
            Error::BadParameter(_) | Error::ValueConversionFailed(_) => false,
            Error::Other(_) => true,
        };
        let why = describe(&error);
        if passing { HandlerError::Retry(why) } else { HandlerError::Failed(why) }
    }
}

/// The error in words, with Postgres's SQLSTATE when it sent one.
pub fn describe(error: &Error) -> String {
    match error {
        Error::QueryFailed(QueryError::DbError(db)) => format!("{} (SQLSTATE {})", db.message, db.code),
        Error::QueryFailed(QueryError::Text(why))
        | Error::ConnectionFailed(why)
        | Error::BadParameter(why)
        | Error::ValueConversionFailed(why)
        | Error::Other(why) => why.clone(),
    }
}

/// The SQLSTATE of a Postgres error (`"23505"` for a unique violation), if it is one.
pub fn sqlstate(error: &Error) -> Option<&str> {
    match error {
        Error::QueryFailed(QueryError::DbError(db)) => Some(&db.code),
        _ => None,
    }
}

/// A text parameter.
pub fn text(value: &str) -> ParameterValue {
    ParameterValue::Str(value.to_string())
}

/// A JSON parameter (for `json` and `jsonb` columns).
pub fn json<T: serde::Serialize>(value: &T) -> Result<ParameterValue, HandlerError> {
    serde_json::to_vec(value)
        .map(ParameterValue::Jsonb)
        .map_err(|e| HandlerError::Failed(format!("cannot serialise a JSON parameter: {e}")))
}

/// The value of column `name` in `row` of `rows`.
pub fn value<'a>(rows: &'a RowSet, row: &'a [DbValue], name: &str) -> Option<&'a DbValue> {
    rows.columns.iter().position(|c| c.name == name).and_then(|i| row.get(i))
}

impl DbValue {
    /// Any integer column as an `i64`.
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            DbValue::Int8(v) => Some(v.into()),
            DbValue::Int16(v) => Some(v.into()),
            DbValue::Int32(v) => Some(v.into()),
            DbValue::Int64(v) => Some(v),
            _ => None,
        }
    }

    /// A text, uuid or decimal column as text.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            DbValue::Str(v) | DbValue::Uuid(v) | DbValue::Decimal(v) => Some(v),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db_error(code: &str) -> Error {
        Error::QueryFailed(QueryError::DbError(DbError {
            as_text: String::new(),
            severity: "ERROR".into(),
            code: code.into(),
            message: "m".into(),
            detail: None,
            extras: Vec::new(),
        }))
    }

    #[test]
    fn passing_failures_are_retried_and_the_rest_fail() {
        assert!(matches!(HandlerError::from(db_error("40001")), HandlerError::Retry(_)));
        assert!(matches!(HandlerError::from(db_error("23505")), HandlerError::Failed(_)));
        assert!(matches!(HandlerError::from(Error::ConnectionFailed("down".into())), HandlerError::Retry(_)));
        let denied = Error::ConnectionFailed("plugin 'x' may not open database 'y'".into());
        assert!(matches!(HandlerError::from(denied), HandlerError::Failed(_)));
        assert_eq!(sqlstate(&db_error("23505")), Some("23505"));
    }

    #[test]
    fn integers_and_text_read_back() {
        assert_eq!(DbValue::Int16(7).as_i64(), Some(7));
        assert_eq!(DbValue::Decimal("1.5".into()).as_str(), Some("1.5"));
        assert_eq!(DbValue::Boolean(true).as_i64(), None);
    }
}
