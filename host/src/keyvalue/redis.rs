//! The Redis backend (`[keyvalue] url = "redis://…"` or `rediss://…`): the buckets of every
//! host of one service, shared.
//!
//! Keys are namespaced by service and bucket: `<service>:<bucket>:<key>` (a service's hosts
//! share them; another service never sees them). Counters are Redis integers (`INCRBY`:
//! atomic across hosts); compare-and-swap is one Lua script (atomic across hosts). `list-keys`
//! is `SCAN … MATCH <service>:<bucket>:*` with the page size as its `COUNT` (Redis's cursor;
//! a page may hold a few more or fewer keys than asked).
//!
//! One [`ConnectionManager`] multiplexes every call's operations over a connection and
//! reconnects by itself after a failure; the caller bounds each operation by its call's
//! deadline, so a Redis that is down or paused costs the guest an error, never a hang.

use std::path::Path;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{AsyncCommands, IntoConnectionInfo};

use super::KeyValueError;

/// How long connecting (and each reconnect attempt) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Sets `KEYS[1]` to `ARGV[3]` if its value is `ARGV[2]` (`ARGV[1]` = "1"), or if it does not
/// exist (`ARGV[1]` = "0"); 1 when it did.
const COMPARE_AND_SWAP: &str = r"
local current = redis.call('GET', KEYS[1])
local matches
if ARGV[1] == '0' then matches = (current == false) else matches = (current == ARGV[2]) end
if matches then
  redis.call('SET', KEYS[1], ARGV[3])
  return 1
end
return 0
";

/// A connection to Redis, and the namespace of this service's keys.
pub struct RedisStore {
    manager: ConnectionManager,
    /// `<service>:`
    prefix: String,
    swap: redis::Script,
}

fn failed(e: redis::RedisError) -> KeyValueError {
    KeyValueError::Redis { reason: e.to_string() }
}

/// The client for `url`, with the password and CA the config gives (neither is ever logged).
pub fn client(url: &str, password: Option<&str>, ca_file: Option<&Path>) -> Result<redis::Client, KeyValueError> {
    let bad_url = |e: redis::RedisError| KeyValueError::RedisUrl { reason: e.to_string() };
    let mut info = url.into_connection_info().map_err(bad_url)?;
    if let Some(password) = password {
        let settings = info.redis_settings().clone().set_password(password);
        info = info.set_redis_settings(settings);
    }
    match ca_file {
        None => redis::Client::open(info).map_err(bad_url),
        Some(ca) => {
            let pem = std::fs::read(ca).map_err(|e| KeyValueError::RedisUrl {
                reason: format!("cannot read [keyvalue.tls] ca_file {}: {e}", ca.display()),
            })?;
            let certificates = redis::TlsCertificates { client_tls: None, root_cert: Some(pem) };
            redis::Client::build_with_tls(info, certificates).map_err(bad_url)
        }
    }
}

impl RedisStore {
    /// Connects to `url` (failing within a few seconds when nobody answers).
    pub async fn connect(
        url: &str,
        password: Option<&str>,
        ca_file: Option<&Path>,
        service: &str,
    ) -> Result<RedisStore, KeyValueError> {
        let client = client(url, password, ca_file)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            // Each operation is bounded by its call's deadline instead.
            .set_response_timeout(None)
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_secs(1));
        let shown = crate::config::redact_url(url);
        let connecting = ConnectionManager::new_with_config(client, config);
        let manager = match tokio::time::timeout(CONNECT_TIMEOUT * 3, connecting).await {
            Ok(Ok(manager)) => manager,
            Ok(Err(e)) => return Err(KeyValueError::RedisConnect { url: shown, reason: e.to_string() }),
            Err(_) => return Err(KeyValueError::RedisConnect { url: shown, reason: "timed out".into() }),
        };
        Ok(RedisStore { manager, prefix: format!("{service}:"), swap: redis::Script::new(COMPARE_AND_SWAP) })
    }

    /// `<service>:<bucket>:<key>`.
    fn key(&self, bucket: &str, key: &str) -> String {
        format!("{}{bucket}:{key}", self.prefix)
    }

    pub async fn get(&self, bucket: &str, key: &str) -> Result<Option<Vec<u8>>, KeyValueError> {
        self.manager.clone().get(self.key(bucket, key)).await.map_err(failed)
    }

    pub async fn exists(&self, bucket: &str, key: &str) -> Result<bool, KeyValueError> {
        self.manager.clone().exists(self.key(bucket, key)).await.map_err(failed)
    }

    pub async fn get_many(
        &self,
        bucket: &str,
        keys: Vec<String>,
    ) -> Result<Vec<Option<(String, Vec<u8>)>>, KeyValueError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let full: Vec<String> = keys.iter().map(|k| self.key(bucket, k)).collect();
        let values: Vec<Option<Vec<u8>>> =
            redis::cmd("MGET").arg(&full).query_async(&mut self.manager.clone()).await.map_err(failed)?;
        Ok(keys.into_iter().zip(values).map(|(k, v)| v.map(|v| (k, v))).collect())
    }

    pub async fn set_many(&self, bucket: &str, pairs: Vec<(String, Vec<u8>)>) -> Result<(), KeyValueError> {
        if pairs.is_empty() {
            return Ok(());
        }
        let full: Vec<(String, Vec<u8>)> = pairs.into_iter().map(|(k, v)| (self.key(bucket, &k), v)).collect();
        redis::cmd("MSET").arg(&full).query_async(&mut self.manager.clone()).await.map_err(failed)
    }

    pub async fn delete_many(&self, bucket: &str, keys: Vec<String>) -> Result<(), KeyValueError> {
        if keys.is_empty() {
            return Ok(());
        }
        let full: Vec<String> = keys.iter().map(|k| self.key(bucket, k)).collect();
        self.manager.clone().del::<_, ()>(full).await.map_err(failed)
    }

    pub async fn increment(&self, bucket: &str, key: String, delta: u64) -> Result<u64, KeyValueError> {
        let overflow = || KeyValueError::Overflow { key: key.clone() };
        let delta = i64::try_from(delta).map_err(|_| overflow())?;
        let next: Result<i64, _> = self.manager.clone().incr(self.key(bucket, &key), delta).await;
        match next {
            Ok(next) => u64::try_from(next).map_err(|_| overflow()),
            Err(e) if e.to_string().contains("not an integer") => Err(KeyValueError::NotANumber { key }),
            Err(e) => Err(failed(e)),
        }
    }

    pub async fn compare_and_swap(
        &self,
        bucket: &str,
        key: String,
        expected: Option<Vec<u8>>,
        value: Vec<u8>,
    ) -> Result<bool, KeyValueError> {
        let mut invocation = self.swap.key(self.key(bucket, &key));
        match &expected {
            None => invocation.arg("0").arg(""),
            Some(old) => invocation.arg("1").arg(old.as_slice()),
        };
        let swapped: i64 = invocation.arg(value).invoke_async(&mut self.manager.clone()).await.map_err(failed)?;
        Ok(swapped == 1)
    }

    pub async fn list_keys(
        &self,
        bucket: &str,
        cursor: Option<u64>,
        page: u32,
    ) -> Result<(Vec<String>, Option<u64>), KeyValueError> {
        let prefix = self.key(bucket, "");
        let pattern = format!("{}*", glob_escape(&prefix));
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor.unwrap_or(0))
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(page.max(1))
            .query_async(&mut self.manager.clone())
            .await
            .map_err(failed)?;
        let keys = keys.into_iter().filter_map(|k| k.strip_prefix(&prefix).map(str::to_string)).collect();
        Ok((keys, (next != 0).then_some(next)))
    }
}

/// `text` with Redis's glob characters escaped, for `SCAN MATCH`.
fn glob_escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_are_escaped() {
        assert_eq!(glob_escape("svc:a*b?:"), "svc:a\\*b\\?:");
    }
}
