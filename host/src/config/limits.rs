//! `[limits]`: what every call of a plugin may use (memory, time, fuel, sends, body sizes,
//! retries, instance reuse), the defaults every plugin inherits; `[plugin.<name>]` overrides
//! them with the same keys (its grants are `plugins.rs`'s).

use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::ConfigError;
use super::locate::Locator;

/// Resource limits applied to every call of a plugin (`[limits]`, overridden per plugin in
/// `[plugin.<name>]`).
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    /// Largest linear memory a plugin instance may grow to.
    pub memory_bytes: usize,
    /// Wall-clock deadline of one call; past it the call is interrupted.
    pub timeout: Duration,
    /// How many times a `retry` error requeues a message before it is rejected.
    pub max_retries: u32,
    /// Instructions (wasmtime fuel) one call of `handle` may use (instantiation not counted); unlimited when `None`.
    pub fuel: Option<u64>,
    /// Calls of this plugin that may run at once; bounded only by prefetch when `None`.
    pub max_concurrency: Option<u32>,
    /// Largest message body handed to a plugin; larger ones are rejected before wasm.
    pub max_body_bytes: usize,
    /// Messages one call may send (events, requests, queue messages); past it a send fails.
    pub max_sends: u32,
    /// Largest body one send or one response may carry.
    pub max_send_bytes: usize,
    /// Delays before each redelivery of a `retry` (then reject); empty: redeliver at once,
    /// up to `max_retries` times.
    pub retry_delays: Vec<Duration>,
    /// Messages one instance may serve in sequence (1: a fresh instance for each).
    pub reuse: u32,
    /// Rows one call may read from its databases, over all its statements.
    pub database_max_rows: u64,
    /// Bytes one call may read from its databases (values as the server sent them).
    pub database_max_bytes: u64,
    /// Largest value one key-value write may carry (`keyvalue_max_value_kib`, default 1 MiB).
    pub keyvalue_max_value_bytes: usize,
    /// Most keys one `list-keys` page returns (`keyvalue_page_keys`, default 1000).
    pub keyvalue_page_keys: u32,
    /// Key-value operations one call may make, a batch counting one per key
    /// (`keyvalue_max_ops`, default 1000).
    pub keyvalue_max_ops: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory_bytes: 64 << 20,
            timeout: Duration::from_secs(5),
            max_retries: 5,
            fuel: None,
            max_concurrency: None,
            max_body_bytes: 16 << 20,
            max_sends: 100,
            max_send_bytes: 16 << 20,
            retry_delays: Vec::new(),
            reuse: 1,
            database_max_rows: 10_000,
            database_max_bytes: 16 << 20,
            keyvalue_max_value_bytes: 1 << 20,
            keyvalue_page_keys: 1000,
            keyvalue_max_ops: 1000,
        }
    }
}

/// `[limits]` (defaults for every plugin) and `[plugin.<name>]` (one plugin's overrides, and
/// its grants: env, dir, dir_as).
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLimits {
    pub(super) memory_mib: Option<Spanned<u32>>,
    pub(super) timeout_ms: Option<Spanned<u64>>,
    pub(super) max_retries: Option<u32>,
    pub(super) fuel: Option<Spanned<u64>>,
    pub(super) max_concurrency: Option<Spanned<u32>>,
    pub(super) max_body_kib: Option<Spanned<u32>>,
    pub(super) max_sends: Option<Spanned<u32>>,
    pub(super) max_send_kib: Option<Spanned<u32>>,
    pub(super) retry_delays_ms: Option<Spanned<Vec<u64>>>,
    pub(super) reuse: Option<Spanned<u32>>,
    pub(super) database_max_rows: Option<Spanned<u64>>,
    pub(super) database_max_kib: Option<Spanned<u64>>,
    pub(super) keyvalue_max_value_kib: Option<Spanned<u32>>,
    pub(super) keyvalue_page_keys: Option<Spanned<u32>>,
    pub(super) keyvalue_max_ops: Option<Spanned<u32>>,
    pub(super) env: Option<Spanned<Vec<String>>>,
    pub(super) dir: Option<Spanned<String>>,
    pub(super) dir_as: Option<Spanned<String>>,
    pub(super) publish: Option<Spanned<Vec<String>>>,
    pub(super) request: Option<Spanned<Vec<String>>>,
    pub(super) queues: Option<Spanned<Vec<String>>>,
    pub(super) respond: Option<Spanned<Vec<String>>>,
    pub(super) log: Option<Spanned<bool>>,
    pub(super) http: Option<Spanned<Vec<String>>>,
    pub(super) http_max_response_kib: Option<Spanned<u32>>,
    pub(super) http_max_concurrency: Option<Spanned<u32>>,
    pub(super) http_ca_file: Option<Spanned<String>>,
    /// `[plugin.<name>.config]`: wasi:config values (strings).
    pub(super) config: Option<Spanned<super::values::RawValues>>,
    /// `[plugin.<name>.config_files]`: wasi:config values read from files (secrets).
    pub(super) config_files: Option<Spanned<super::values::RawFiles>>,
    pub(super) databases: Option<Spanned<Vec<String>>>,
    pub(super) transaction: Option<Spanned<bool>>,
    /// Key-value buckets granted (`keyvalue = ["counters"]`).
    pub(super) keyvalue: Option<Spanned<Vec<String>>>,
}

impl RawLimits {
    /// These limits over `base`; `at_key` prefixes keys in errors (`limits`, `plugin.x`).
    pub(super) fn resolve(&self, at: &Locator, at_key: &str, base: &Limits) -> Result<Limits, ConfigError> {
        let positive = |value: &Spanned<u64>, key: &str| {
            if *value.get_ref() == 0 {
                Err(at.at(value, &format!("{at_key}.{key}"), "must be at least 1"))
            } else {
                Ok(*value.get_ref())
            }
        };
        let widen = |v: &Option<Spanned<u32>>| v.as_ref().map(|s| Spanned::new(s.span(), u64::from(*s.get_ref())));
        let mut limits = base.clone();
        if let Some(m) = &self.memory_mib {
            if *m.get_ref() == 0 || *m.get_ref() > 4096 {
                return Err(at.at(m, &format!("{at_key}.memory_mib"), "must be between 1 and 4096"));
            }
            limits.memory_bytes = (*m.get_ref() as usize) << 20;
        }
        if let Some(t) = &self.timeout_ms {
            limits.timeout = Duration::from_millis(positive(t, "timeout_ms")?);
        }
        if let Some(r) = self.max_retries {
            limits.max_retries = r;
        }
        if let Some(f) = &self.fuel {
            limits.fuel = Some(positive(f, "fuel")?);
        }
        if let Some(c) = widen(&self.max_concurrency) {
            limits.max_concurrency = Some(positive(&c, "max_concurrency")? as u32);
        }
        if let Some(b) = widen(&self.max_body_kib) {
            limits.max_body_bytes = (positive(&b, "max_body_kib")? as usize) << 10;
        }
        if let Some(n) = widen(&self.max_sends) {
            limits.max_sends = positive(&n, "max_sends")? as u32;
        }
        if let Some(b) = widen(&self.max_send_kib) {
            limits.max_send_bytes = (positive(&b, "max_send_kib")? as usize) << 10;
        }
        if let Some(reuse) = widen(&self.reuse) {
            limits.reuse = positive(&reuse, "reuse")?.min(u64::from(MAX_REUSE)) as u32;
        }
        if let Some(rows) = &self.database_max_rows {
            limits.database_max_rows = positive(rows, "database_max_rows")?;
        }
        if let Some(kib) = &self.database_max_kib {
            limits.database_max_bytes = positive(kib, "database_max_kib")?.saturating_mul(1 << 10);
        }
        if let Some(kib) = widen(&self.keyvalue_max_value_kib) {
            limits.keyvalue_max_value_bytes = (positive(&kib, "keyvalue_max_value_kib")? as usize) << 10;
        }
        if let Some(keys) = widen(&self.keyvalue_page_keys) {
            limits.keyvalue_page_keys = positive(&keys, "keyvalue_page_keys")? as u32;
        }
        if let Some(ops) = widen(&self.keyvalue_max_ops) {
            limits.keyvalue_max_ops = positive(&ops, "keyvalue_max_ops")? as u32;
        }
        if let Some(delays) = &self.retry_delays_ms {
            limits.retry_delays = retry_delays(at, delays, &format!("{at_key}.retry_delays_ms"))?;
        }
        Ok(limits)
    }
}

/// The most messages one instance may serve (`reuse`); larger values are taken as this.
pub const MAX_REUSE: u32 = 10_000;

/// Longest delay `retry_delays_ms` accepts: one day.
const MAX_RETRY_DELAY_MS: u64 = 24 * 60 * 60 * 1000;
/// Most entries `retry_delays_ms` accepts (each is a queue on the broker).
const MAX_RETRY_DELAYS: usize = 10;

/// `retry_delays_ms`: 1 to 10 delays, each from 1 ms to a day.
pub(super) fn retry_delays(at: &Locator, value: &Spanned<Vec<u64>>, key: &str) -> Result<Vec<Duration>, ConfigError> {
    let delays = value.get_ref();
    if delays.is_empty() || delays.len() > MAX_RETRY_DELAYS {
        return Err(at.at(value, key, format!("give 1 to {MAX_RETRY_DELAYS} delays in ms, like [100, 1000, 10000]")));
    }
    if let Some(bad) = delays.iter().find(|&&ms| ms == 0 || ms > MAX_RETRY_DELAY_MS) {
        return Err(at.at(value, key, format!("{bad} is not a delay from 1 ms to one day ({MAX_RETRY_DELAY_MS} ms)")));
    }
    Ok(delays.iter().map(|&ms| Duration::from_millis(ms)).collect())
}

/// `[limits]`: the defaults every plugin inherits. Grants are per plugin, never defaults.
pub(super) fn resolve_default_limits(at: &Locator, raw: &RawLimits) -> Result<Limits, ConfigError> {
    if let Some((key, span)) = raw.grant_keys().into_iter().next() {
        return Err(at.error(
            span.start,
            &format!("limits.{key}"),
            format!("`{key}` is a grant, and grants are per plugin: move it to [plugin.<name>]"),
        ));
    }
    raw.resolve(at, "limits", &Limits::default())
}
