//! `[database.<name>]` and `[database.<name>.tls]`: the Postgres databases plugins may be
//! granted by name (`[plugin.<name>] databases = ["<name>"]`): the URL, the password (from a
//! file, never logged), the CA to trust and the pool size. Plain data; `crate::database` makes
//! the pools.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;
use toml::Spanned;

use super::ConfigError;
use super::files::{Secret, read_beside, read_certificates};
use super::limits::RawLimits;
use super::locate::Locator;
use super::names::check_name;
use super::plugins::PluginSettings;

/// The pool size when `max_connections` is not given.
pub const DEFAULT_MAX_CONNECTIONS: usize = 8;
/// The largest pool one database may have (Postgres's own default allows 100 connections).
pub const MAX_CONNECTIONS: usize = 1000;

/// One `[database.<name>]`, resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct DatabaseSettings {
    /// `postgres://user@host:port/dbname` (key=value connection strings work too).
    pub url: String,
    /// The password, from `password_file`, when the URL has none.
    pub password: Option<Secret>,
    /// The PEM text of `[database.<name>.tls] ca_file`: TLS is required and only this CA trusted.
    pub ca_pem: Option<String>,
    /// The pool's size: the most connections this host opens to the database.
    pub max_connections: usize,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDatabase {
    url: Spanned<String>,
    password_file: Option<Spanned<String>>,
    max_connections: Option<Spanned<i64>>,
    tls: Option<RawDatabaseTls>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDatabaseTls {
    ca_file: Spanned<String>,
}

/// Resolves every `[database.<name>]`: a name by the shared rule, a URL that parses, a
/// password in the URL or in `password_file` (not both), a CA file that holds a certificate,
/// a pool of 1 to [`MAX_CONNECTIONS`].
pub(super) fn resolve_databases(
    at: &Locator,
    base: &Path,
    raw: &BTreeMap<Spanned<String>, RawDatabase>,
) -> Result<BTreeMap<String, DatabaseSettings>, ConfigError> {
    let mut databases = BTreeMap::new();
    for (name, database) in raw {
        let name = check_name(at, name, "database")?;
        let key = |field: &str| format!("database.{name}.{field}");
        let url = database.url.get_ref();
        let parsed: tokio_postgres::Config = url.parse().map_err(|e| {
            at.at(
                &database.url,
                &key("url"),
                format!("does not parse ({e}); write it like \"postgres://warren@127.0.0.1:5432/{name}\""),
            )
        })?;
        let password = match &database.password_file {
            Some(file) if parsed.get_password().is_some() => {
                return Err(at.at(
                    file,
                    &key("password_file"),
                    "the url already holds a password: keep it in one place (the file)",
                ));
            }
            Some(file) => {
                let bytes = read_beside(at, base, file, &key("password_file"))?;
                Some(Secret::new(String::from_utf8_lossy(&bytes).trim_end_matches(['\r', '\n']).to_string()))
            }
            None => None,
        };
        let ca_pem = match &database.tls {
            Some(tls) => Some(read_certificates(at, base, &tls.ca_file, &key("tls.ca_file"))?),
            None => None,
        };
        let max_connections = match &database.max_connections {
            None => DEFAULT_MAX_CONNECTIONS,
            Some(n) => match usize::try_from(*n.get_ref()) {
                Ok(n @ 1..=MAX_CONNECTIONS) => n,
                _ => return Err(at.at(n, &key("max_connections"), format!("must be 1 to {MAX_CONNECTIONS}"))),
            },
        };
        databases.insert(name, DatabaseSettings { url: url.clone(), password, ca_pem, max_connections });
    }
    Ok(databases)
}

/// Every plugin's `databases` names a `[database.<name>]`, and `transaction = true` comes with
/// exactly one database (one transaction per call: two databases could not commit together).
pub(super) fn check_grants(
    at: &Locator,
    raw: &BTreeMap<String, Spanned<RawLimits>>,
    plugins: &BTreeMap<String, PluginSettings>,
    databases: &BTreeMap<String, DatabaseSettings>,
) -> Result<(), ConfigError> {
    for (name, settings) in plugins {
        let Some(raw) = raw.get(name).map(Spanned::get_ref) else { continue };
        let key = |field: &str| format!("plugin.{name}.{field}");
        if let Some(granted) = &raw.databases
            && let Some(missing) = settings.grants.databases.iter().find(|d| !databases.contains_key(*d))
        {
            return Err(at.at(
                granted,
                &key("databases"),
                format!("there is no [database.{missing}]: add one (url, max_connections) or fix the name"),
            ));
        }
        if let Some(transaction) = raw.transaction.as_ref().filter(|t| *t.get_ref())
            && settings.grants.databases.len() != 1
        {
            return Err(at.at(
                transaction,
                &key("transaction"),
                "needs exactly one database in `databases` (a call's transaction lives on one database)",
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve(text: &str) -> Result<BTreeMap<String, DatabaseSettings>, String> {
        let raw: BTreeMap<Spanned<String>, RawDatabase> = toml::from_str(text).map_err(|e| e.to_string())?;
        let at = Locator { path: Path::new("/etc/warren/warren.toml"), text };
        resolve_databases(&at, Path::new("/etc/warren"), &raw).map_err(|e| e.to_string())
    }

    #[test]
    fn a_database_has_a_url_and_a_pool_size() {
        let dbs = resolve("[orders]\nurl = \"postgres://warren@127.0.0.1:5432/orders\"").unwrap();
        assert_eq!(dbs["orders"].max_connections, DEFAULT_MAX_CONNECTIONS);
        assert_eq!(dbs["orders"].password, None);
        let two = resolve("[orders]\nurl = \"postgres://h/orders\"\nmax_connections = 2").unwrap();
        assert_eq!(two["orders"].max_connections, 2);
    }

    #[test]
    fn mistakes_are_named_with_their_key() {
        let err = resolve("[orders]\nurl = \"postgres://h/o\"\nmax_connections = 0").unwrap_err();
        assert!(err.contains("database.orders.max_connections: must be 1 to"), "{err}");
        let err = resolve("[orders]\nurl = \"postgres://h:notaport/o\"").unwrap_err();
        assert!(err.contains("database.orders.url: does not parse"), "{err}");
        let err = resolve("[orders]\nurl = \"postgres://u:pw@h/o\"\npassword_file = \"pw\"").unwrap_err();
        assert!(err.contains("keep it in one place"), "{err}");
        let err = resolve("[orders]\nurl = \"postgres://h/o\"\npassword_file = \"/nonexistent/pw\"").unwrap_err();
        assert!(err.contains("database.orders.password_file: cannot read"), "{err}");
        assert!(resolve("[orders]\nurl = \"postgres://h/o\"\nhost = \"x\"").unwrap_err().contains("unknown field"));
    }
}
