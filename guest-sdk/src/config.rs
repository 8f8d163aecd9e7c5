//! Configuration values through the standard `wasi:config/store`: what the host's config
//! gives this plugin in `[plugin.<name>.config]` (plain values) and
//! `[plugin.<name>.config_files]` (values read from files, for secrets).
//!
//! ```no_run
//! use warren_guest::{HandlerError, config};
//!
//! fn greeting() -> Result<String, HandlerError> {
//!     Ok(config::get("greeting")?.unwrap_or_else(|| "Hello".to_string()))
//! }
//!
//! fn api_key() -> Result<String, HandlerError> {
//!     config::require("api_key")
//! }
//! ```
//!
//! A plugin sees only its own values. A value from a file is read when the host loads the
//! plugin and again on every config reload. A plugin that never calls these functions does
//! not import `wasi:config` at all. (Natively, outside a host, these calls panic.)

use crate::HandlerError;
use crate::bindings::wasi::config::store;

pub use store::Error;

impl From<Error> for HandlerError {
    /// The host could not give the value (it never fails for the values of its own config):
    /// `retry`.
    fn from(error: Error) -> Self {
        match error {
            Error::Upstream(why) | Error::Io(why) => HandlerError::Retry(format!("config value: {why}")),
        }
    }
}

/// The value of `key`, or `None` when the config gives this plugin no such key.
pub fn get(key: &str) -> Result<Option<String>, Error> {
    store::get(key)
}

/// Every key this plugin has, with its value, in key order.
pub fn get_all() -> Result<Vec<(String, String)>, Error> {
    store::get_all()
}

/// The value of `key`; a missing key is [`HandlerError::Failed`] naming where to set it.
pub fn require(key: &str) -> Result<String, HandlerError> {
    get(key)?.ok_or_else(|| {
        HandlerError::Failed(format!(
            "no config value '{key}': set it under [plugin.<name>.config] (or config_files) in the host's config"
        ))
    })
}
