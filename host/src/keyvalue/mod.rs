//! Plugin state: `wasi:keyvalue@0.2.0-draft` (`store`, `atomics`, `batch`) and Warren's
//! `keyvalue-cas`, on the buckets the config grants each plugin
//! (`[plugin.<name>] keyvalue = ["<bucket>"]`).
//!
//! Shaped like a Spin factor, so it needs nothing from either wing:
//! - shared state: [`KeyValue`], the opened backend — [`embedded`] (a `redb` file, the
//!   default: one host) or [`redis`] (a fleet of hosts of one service) — opened once at start,
//!   before the broker is touched;
//! - per-call state: [`CallKeyValue`], the plugin's granted buckets, its caps, the operations
//!   it has made and the call's deadline;
//! - linker setup: [`add_to_linker`], for any store data that implements [`KeyValueView`].
//!
//! Every operation runs under what is left of the call's deadline (a little kept back so the
//! guest sees the error before the call itself is stopped); the operations one call may make,
//! a value's size and a `list-keys` page are capped (`[limits] keyvalue_*`). Operations are
//! counted in [`stats`] by plugin, granted bucket, operation and outcome.

pub mod embedded;
pub mod redis;
mod stats;

use std::collections::HashSet;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use wasmtime::component::{HasData, Linker, Resource, ResourceTable};

pub use stats::{KV_BUCKETS, KeyValueStats, stats};

use crate::config::{KeyValueBackend, KeyValueSettings};
use crate::telemetry::{CallTrace, SpanKind};
use bindings::wasi::keyvalue::store::{Error, KeyResponse};

/// Host bindings of `warren:plugin/keyvalue` (`wit/handler.wit`, the standard WIT vendored in
/// `wit/deps/keyvalue/`). `wasm::bindings` maps the `handler` world's imports here.
pub mod bindings {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "warren:plugin/keyvalue",
        imports: { default: async | trappable },
        with: { "wasi:keyvalue/store.bucket": super::Bucket },
    });
}

/// The store could not be opened, or an operation failed. Each says what to do.
#[derive(Debug, thiserror::Error)]
pub enum KeyValueError {
    #[error(
        "the embedded key-value store {path} is open in another process (it serves one host): stop the other warren, give this one its own [keyvalue] path, or share state between hosts with [keyvalue] url = \"redis://…\""
    )]
    Locked { path: String },
    #[error(
        "cannot open the embedded key-value store {path}: {reason}. Check the folder exists and is writable, or set [keyvalue] path"
    )]
    Open { path: String, reason: String },
    #[error(
        "the embedded key-value store {path} cannot be created: {reason}. Create its folder, or set [keyvalue] path"
    )]
    Folder { path: String, reason: String },
    #[error("the key-value store {path} failed: {reason}. Check the disk (space, permissions)")]
    Embedded { path: String, reason: String },
    #[error("[keyvalue] url: {reason}. Write it like \"redis://127.0.0.1:6379/0\" (rediss:// for TLS)")]
    RedisUrl { reason: String },
    #[error("Redis at {url} did not answer: {reason}. Start it, or fix [keyvalue] url (and password_file, tls)")]
    RedisConnect { url: String, reason: String },
    #[error("Redis failed: {reason}. Warren reconnects by itself; check that Redis is up")]
    Redis { reason: String },
    #[error("the value of '{key}' is not a decimal integer, so it cannot be incremented")]
    NotANumber { key: String },
    #[error("incrementing '{key}' would leave the range of a signed 64-bit integer")]
    Overflow { key: String },
}

/// An opened bucket, as the guest holds it: only a granted name is ever opened.
pub struct Bucket {
    name: Arc<str>,
}

/// The opened backend every plugin's buckets live in.
pub enum Backend {
    Embedded(embedded::Embedded),
    Redis(redis::RedisStore),
}

/// Calls the same operation on whichever backend is open.
macro_rules! dispatch {
    ($self:ident . $op:ident ( $($arg:expr),* )) => {
        match $self {
            Backend::Embedded(store) => store.$op($($arg),*).await,
            Backend::Redis(store) => store.$op($($arg),*).await,
        }
    };
}

/// The operations of both backends, on a bucket by name. Counters are decimal text (as Redis
/// keeps them), so `get` of a counter reads `b"42"` on either.
impl Backend {
    pub async fn get(&self, bucket: &str, key: &str) -> Result<Option<Vec<u8>>, KeyValueError> {
        dispatch!(self.get(bucket, key))
    }

    pub async fn set(&self, bucket: &str, key: String, value: Vec<u8>) -> Result<(), KeyValueError> {
        dispatch!(self.set_many(bucket, vec![(key, value)]))
    }

    pub async fn exists(&self, bucket: &str, key: &str) -> Result<bool, KeyValueError> {
        dispatch!(self.exists(bucket, key))
    }

    /// One page of at most `page` keys from `cursor` (`None`: the start); the next cursor, if
    /// there are more.
    pub async fn list_keys(
        &self,
        bucket: &str,
        cursor: Option<u64>,
        page: u32,
    ) -> Result<(Vec<String>, Option<u64>), KeyValueError> {
        dispatch!(self.list_keys(bucket, cursor, page))
    }

    pub async fn increment(&self, bucket: &str, key: String, delta: u64) -> Result<u64, KeyValueError> {
        dispatch!(self.increment(bucket, key, delta))
    }

    pub async fn compare_and_swap(
        &self,
        bucket: &str,
        key: String,
        expected: Option<Vec<u8>>,
        value: Vec<u8>,
    ) -> Result<bool, KeyValueError> {
        dispatch!(self.compare_and_swap(bucket, key, expected, value))
    }

    pub async fn get_many(
        &self,
        bucket: &str,
        keys: Vec<String>,
    ) -> Result<Vec<Option<(String, Vec<u8>)>>, KeyValueError> {
        dispatch!(self.get_many(bucket, keys))
    }

    pub async fn set_many(&self, bucket: &str, pairs: Vec<(String, Vec<u8>)>) -> Result<(), KeyValueError> {
        dispatch!(self.set_many(bucket, pairs))
    }

    pub async fn delete_many(&self, bucket: &str, keys: Vec<String>) -> Result<(), KeyValueError> {
        dispatch!(self.delete_many(bucket, keys))
    }
}

/// The new value of a counter at `current` (decimal text, or none) after adding `delta`.
fn incremented(key: &str, current: Option<&[u8]>, delta: u64) -> Result<u64, KeyValueError> {
    let not_a_number = || KeyValueError::NotANumber { key: key.to_string() };
    let current = match current {
        None => 0i64,
        Some(bytes) => std::str::from_utf8(bytes).ok().and_then(|t| t.parse::<i64>().ok()).ok_or_else(not_a_number)?,
    };
    let overflow = || KeyValueError::Overflow { key: key.to_string() };
    let delta = i64::try_from(delta).map_err(|_| overflow())?;
    let next = current.checked_add(delta).ok_or_else(overflow)?;
    u64::try_from(next).map_err(|_| overflow())
}

/// The shared state: the backend, and the denials already logged (once per plugin and bucket).
pub struct KeyValue {
    backend: Backend,
    denied: Mutex<HashSet<(Arc<str>, String)>>,
}

impl KeyValue {
    /// The store's kind, as OpenTelemetry's `db.system.name` names it.
    pub fn system(&self) -> &'static str {
        match self.backend {
            Backend::Embedded(_) => "redb",
            Backend::Redis(_) => "redis",
        }
    }
}

/// What a call may do with its buckets: the `[limits] keyvalue_*` caps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyValueLimits {
    /// The largest value one `set` (or swap) may write, in bytes (`keyvalue_max_value_kib`).
    pub max_value_bytes: usize,
    /// The most keys one `list-keys` page returns (`keyvalue_page_keys`).
    pub page_keys: u32,
    /// The most operations one call may make; a batch counts one per key (`keyvalue_max_ops`).
    pub max_ops: u32,
}

impl Default for KeyValueLimits {
    fn default() -> Self {
        KeyValueLimits { max_value_bytes: 1 << 20, page_keys: 1000, max_ops: 1000 }
    }
}

impl KeyValue {
    /// Opens the backend the settings name: the embedded file (taking its lock), or a
    /// connection to Redis. `service` namespaces Redis keys (`<service>:<bucket>:<key>`).
    pub async fn open(settings: &KeyValueSettings, service: &str) -> Result<Arc<KeyValue>, KeyValueError> {
        let backend = match &settings.backend {
            KeyValueBackend::Embedded { path } => {
                let path = path.clone();
                let opened = tokio::task::spawn_blocking(move || embedded::Embedded::open(&path)).await;
                Backend::Embedded(
                    opened.map_err(|e| KeyValueError::Open { path: settings.describe(), reason: e.to_string() })??,
                )
            }
            KeyValueBackend::Redis { url, password, ca_file } => Backend::Redis(
                redis::RedisStore::connect(url, password.as_ref().map(|p| p.expose()), ca_file.as_deref(), service)
                    .await?,
            ),
        };
        Ok(Arc::new(KeyValue { backend, denied: Mutex::default() }))
    }

    /// Whether the store could serve, without opening it for good (`warren check`, while a
    /// host may hold the embedded file): the embedded file's folder is a writable folder;
    /// Redis answers a connection.
    pub async fn probe(settings: &KeyValueSettings, service: &str) -> Result<(), KeyValueError> {
        match &settings.backend {
            KeyValueBackend::Embedded { path } => embedded::probe(path),
            KeyValueBackend::Redis { url, password, ca_file } => {
                let password = password.as_ref().map(|p| p.expose());
                redis::RedisStore::connect(url, password, ca_file.as_deref(), service).await.map(drop)
            }
        }
    }

    /// Opens the embedded store at `path` alone (benchmarks and tools).
    pub fn open_embedded(path: &std::path::Path) -> Result<Arc<KeyValue>, KeyValueError> {
        let backend = Backend::Embedded(embedded::Embedded::open(path)?);
        Ok(Arc::new(KeyValue { backend, denied: Mutex::default() }))
    }

    /// The backend, for callers outside a plugin call (tools, benchmarks).
    pub fn backend(&self) -> &Backend {
        &self.backend
    }

    /// Logs a refused `open` the first time this plugin asks for this bucket.
    fn log_denied(&self, plugin: &Arc<str>, bucket: &str) {
        let mut seen = self.denied.lock().unwrap_or_else(|e| e.into_inner());
        if seen.insert((plugin.clone(), bucket.to_string())) {
            tracing::warn!(
                plugin = %plugin,
                bucket,
                "plugin '{plugin}' may not open key-value bucket '{bucket}': grant it with keyvalue = [\"{bucket}\"] in [plugin.{plugin}] (logged once)"
            );
        }
    }
}

/// One call's key-value state: the plugin's grants and caps, the operations made so far and
/// the deadline every operation ends by.
pub struct CallKeyValue {
    store: Option<Arc<KeyValue>>,
    plugin: Arc<str>,
    buckets: Arc<[String]>,
    limits: KeyValueLimits,
    ops: u32,
    deadline: Instant,
    /// The trace each operation's span joins.
    trace: CallTrace,
}

impl CallKeyValue {
    /// The state of a call of `plugin`, granted `buckets` in `store` (none: every `open` fails).
    pub fn new(
        store: Option<Arc<KeyValue>>,
        plugin: Arc<str>,
        buckets: Arc<[String]>,
        limits: KeyValueLimits,
        deadline: Instant,
    ) -> CallKeyValue {
        CallKeyValue { store, plugin, buckets, limits, ops: 0, deadline, trace: CallTrace::default() }
    }

    /// Records each operation of this call as a CLIENT span in `trace`.
    pub fn trace(&mut self, trace: CallTrace) {
        self.trace = trace;
    }

    /// Starts a new call on the same instance (`reuse`): operations count from zero again.
    pub fn begin_call(&mut self, deadline: Instant) {
        self.ops = 0;
        self.deadline = deadline;
    }
}

/// What a store's data gives this module: the call's key-value state and the resource table
/// buckets live in (as `WasiView` does for WASI).
pub trait KeyValueView: Send {
    fn keyvalue(&mut self) -> KeyValueCtx<'_>;
}

/// A view on one call's key-value state and its resource table.
pub struct KeyValueCtx<'a> {
    pub call: &'a mut CallKeyValue,
    pub table: &'a mut ResourceTable,
}

struct HasKeyValue;

impl HasData for HasKeyValue {
    type Data<'a> = KeyValueCtx<'a>;
}

/// Adds `wasi:keyvalue/{store,atomics,batch}@0.2.0-draft` and `warren:plugin/keyvalue-cas` to
/// the linker. A component that does not import them links as before.
pub fn add_to_linker<T: KeyValueView + 'static>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
    use bindings::warren::plugin::keyvalue_cas;
    use bindings::wasi::keyvalue::{atomics, batch, store};
    store::add_to_linker::<T, HasKeyValue>(linker, T::keyvalue)?;
    atomics::add_to_linker::<T, HasKeyValue>(linker, T::keyvalue)?;
    batch::add_to_linker::<T, HasKeyValue>(linker, T::keyvalue)?;
    keyvalue_cas::add_to_linker::<T, HasKeyValue>(linker, T::keyvalue)
}

/// The time an operation keeps back from the call's deadline, so that the guest gets an error
/// (and can answer with it) before the whole call is stopped.
fn reserve(left: Duration) -> Duration {
    (left / 10).min(Duration::from_millis(50))
}

/// One operation, checked and ready to run: the backend, the bucket and when it must end.
struct Ready {
    store: Arc<KeyValue>,
    plugin: Arc<str>,
    bucket: Arc<str>,
    op: &'static str,
    until: Instant,
    trace: CallTrace,
}

impl Ready {
    /// Runs `work` until the deadline, counts it, and turns a failure into the WIT's error.
    async fn run<V>(&self, work: impl Future<Output = Result<V, KeyValueError>>) -> Result<V, Error> {
        let started = Instant::now();
        let mut span = self.trace.span(|| format!("{} {}", self.op, self.bucket), SpanKind::Client);
        if let Some(span) = &mut span {
            span.set("db.system.name", self.store.system());
            span.set("db.operation.name", self.op);
            span.set("db.collection.name", &*self.bucket);
        }
        let result = match tokio::time::timeout_at(self.until.into(), work).await {
            Ok(result) => result.map_err(|e| e.to_string()),
            Err(_) => Err(format!(
                "the key-value store did not answer within the call's deadline ({} ms were left)",
                self.until.saturating_duration_since(started).as_millis()
            )),
        };
        let outcome = match &result {
            Ok(_) => "ok",
            Err(e) if e.contains("deadline") => "timeout",
            Err(_) => "error",
        };
        stats().record(&self.plugin, &self.bucket, self.op, outcome, started.elapsed());
        if let (Some(span), Err(reason)) = (&mut span, &result) {
            span.fail(reason.as_str());
        }
        result.map_err(|reason| {
            tracing::debug!(plugin = %self.plugin, bucket = %self.bucket, op = self.op, "{reason}");
            Error::Other(reason)
        })
    }
}

impl KeyValueCtx<'_> {
    /// Checks an operation of `count` steps on `bucket`: the call's operation cap, then the
    /// bucket's name. The error is the guest's.
    fn begin(
        &mut self,
        bucket: &Resource<Bucket>,
        op: &'static str,
        count: usize,
    ) -> wasmtime::Result<Result<Ready, Error>> {
        let name = self.table.get(bucket)?.name.clone();
        let call = &mut *self.call;
        let Some(store) = call.store.clone() else {
            return Ok(Err(Error::Other("this host has no key-value store".into())));
        };
        call.ops = call.ops.saturating_add(u32::try_from(count).unwrap_or(u32::MAX).max(1));
        if call.ops > call.limits.max_ops {
            stats().record(&call.plugin, &name, op, "refused", Duration::ZERO);
            return Ok(Err(Error::Other(format!(
                "more than {} key-value operations in one call (limits.keyvalue_max_ops): not done",
                call.limits.max_ops
            ))));
        }
        let left = call.deadline.saturating_duration_since(Instant::now());
        let until = Instant::now() + left.saturating_sub(reserve(left));
        Ok(Ok(Ready { store, plugin: call.plugin.clone(), bucket: name, op, until, trace: call.trace.clone() }))
    }

    /// The value-size cap: `Some(error)` when `len` bytes are over it.
    fn too_large(&self, len: usize) -> Option<Error> {
        let max = self.call.limits.max_value_bytes;
        (len > max).then(|| {
            Error::Other(format!(
                "a value of {len} bytes is over the {max} bytes one key may hold (limits.keyvalue_max_value_kib): not written"
            ))
        })
    }
}

/// `?` for the guest's error inside a host function: returns `Ok(Err(e))`.
macro_rules! guest_try {
    ($e:expr) => {
        match $e? {
            Ok(v) => v,
            Err(e) => return Ok(Err(e)),
        }
    };
}

impl bindings::wasi::keyvalue::store::Host for KeyValueCtx<'_> {
    async fn open(&mut self, identifier: String) -> wasmtime::Result<Result<Resource<Bucket>, Error>> {
        let call = &*self.call;
        let Some(store) = &call.store else {
            return Ok(Err(Error::NoSuchStore));
        };
        if !call.buckets.contains(&identifier) {
            store.log_denied(&call.plugin, &identifier);
            return Ok(Err(Error::AccessDenied));
        }
        let bucket = self.table.push(Bucket { name: identifier.into() })?;
        Ok(Ok(bucket))
    }
}

impl bindings::wasi::keyvalue::store::HostBucket for KeyValueCtx<'_> {
    async fn get(&mut self, bucket: Resource<Bucket>, key: String) -> wasmtime::Result<Result<Option<Vec<u8>>, Error>> {
        let ready = guest_try!(self.begin(&bucket, "get", 1));
        Ok(ready.run(ready.store.backend.get(&ready.bucket, &key)).await)
    }

    async fn set(
        &mut self,
        bucket: Resource<Bucket>,
        key: String,
        value: Vec<u8>,
    ) -> wasmtime::Result<Result<(), Error>> {
        if let Some(error) = self.too_large(value.len()) {
            return Ok(Err(error));
        }
        let ready = guest_try!(self.begin(&bucket, "set", 1));
        Ok(ready.run(ready.store.backend.set(&ready.bucket, key, value)).await)
    }

    async fn delete(&mut self, bucket: Resource<Bucket>, key: String) -> wasmtime::Result<Result<(), Error>> {
        let ready = guest_try!(self.begin(&bucket, "delete", 1));
        Ok(ready.run(ready.store.backend.delete_many(&ready.bucket, vec![key])).await)
    }

    async fn exists(&mut self, bucket: Resource<Bucket>, key: String) -> wasmtime::Result<Result<bool, Error>> {
        let ready = guest_try!(self.begin(&bucket, "exists", 1));
        Ok(ready.run(ready.store.backend.exists(&ready.bucket, &key)).await)
    }

    async fn list_keys(
        &mut self,
        bucket: Resource<Bucket>,
        cursor: Option<u64>,
    ) -> wasmtime::Result<Result<KeyResponse, Error>> {
        let page = self.call.limits.page_keys;
        let ready = guest_try!(self.begin(&bucket, "list_keys", 1));
        let listed = ready.run(ready.store.backend.list_keys(&ready.bucket, cursor, page)).await;
        Ok(listed.map(|(keys, cursor)| KeyResponse { keys, cursor }))
    }

    async fn drop(&mut self, bucket: Resource<Bucket>) -> wasmtime::Result<()> {
        self.table.delete(bucket)?;
        Ok(())
    }
}

impl bindings::wasi::keyvalue::atomics::Host for KeyValueCtx<'_> {
    async fn increment(
        &mut self,
        bucket: Resource<Bucket>,
        key: String,
        delta: u64,
    ) -> wasmtime::Result<Result<u64, Error>> {
        let ready = guest_try!(self.begin(&bucket, "increment", 1));
        Ok(ready.run(ready.store.backend.increment(&ready.bucket, key, delta)).await)
    }
}

impl bindings::warren::plugin::keyvalue_cas::Host for KeyValueCtx<'_> {
    async fn compare_and_swap(
        &mut self,
        bucket: Resource<Bucket>,
        key: String,
        expected: Option<Vec<u8>>,
        value: Vec<u8>,
    ) -> wasmtime::Result<Result<bool, Error>> {
        if let Some(error) = self.too_large(value.len()) {
            return Ok(Err(error));
        }
        let ready = guest_try!(self.begin(&bucket, "compare_and_swap", 1));
        Ok(ready.run(ready.store.backend.compare_and_swap(&ready.bucket, key, expected, value)).await)
    }
}

impl bindings::wasi::keyvalue::batch::Host for KeyValueCtx<'_> {
    async fn get_many(
        &mut self,
        bucket: Resource<Bucket>,
        keys: Vec<String>,
    ) -> wasmtime::Result<Result<Vec<Option<(String, Vec<u8>)>>, Error>> {
        let ready = guest_try!(self.begin(&bucket, "get_many", keys.len()));
        Ok(ready.run(ready.store.backend.get_many(&ready.bucket, keys)).await)
    }

    async fn set_many(
        &mut self,
        bucket: Resource<Bucket>,
        key_values: Vec<(String, Vec<u8>)>,
    ) -> wasmtime::Result<Result<(), Error>> {
        if let Some(error) = key_values.iter().find_map(|(_, v)| self.too_large(v.len())) {
            return Ok(Err(error));
        }
        let ready = guest_try!(self.begin(&bucket, "set_many", key_values.len()));
        Ok(ready.run(ready.store.backend.set_many(&ready.bucket, key_values)).await)
    }

    async fn delete_many(
        &mut self,
        bucket: Resource<Bucket>,
        keys: Vec<String>,
    ) -> wasmtime::Result<Result<(), Error>> {
        let ready = guest_try!(self.begin(&bucket, "delete_many", keys.len()));
        Ok(ready.run(ready.store.backend.delete_many(&ready.bucket, keys)).await)
    }
}
