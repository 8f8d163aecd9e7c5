//! A loaded plugin: its compiled code, settings and grants, and how one message is handled —
//! a fresh instance per call, under the call's limits — and the faults that end a call.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;
use wasmtime::component::ResourceTable;
use wasmtime::{Engine, Store, StoreLimitsBuilder, Trap, UpdateDeadline};
use wasmtime_wasi::WasiCtxBuilder;

use super::bindings;
use super::call::{CallContext, CallState, EPOCH_TICK, MemoryLimiter, SendBudget};
use super::http::{CallHttp, PluginHttp};
use super::output::GuestOutput;
use super::{HandlerError, Header, Request, Response};
use crate::config::{Grants, Limits, PluginSettings};
use crate::database::{CallDatabase, DatabaseLimits};
use crate::keyvalue::{CallKeyValue, KeyValue, KeyValueLimits};

/// Why a call did not return: the instance is discarded, the message rejected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PluginFault {
    /// The call ran past its deadline and was interrupted.
    Deadline(Duration),
    /// The guest trapped (a panic, `unreachable`, a memory-limit hit, …).
    Trap(String),
    /// No instance could be made before the deadline: the host's instance pool stayed full.
    /// The message is not at fault.
    Busy(String),
    /// The host failed to set up the call (a granted folder cannot be opened, …). The
    /// message is not at fault.
    Host(String),
}

impl std::fmt::Display for PluginFault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PluginFault::Deadline(limit) => write!(f, "deadline of {} ms exceeded", limit.as_millis()),
            PluginFault::Trap(reason) => write!(f, "trap: {reason}"),
            PluginFault::Busy(reason) => write!(f, "could not start: {reason} until the deadline"),
            PluginFault::Host(reason) => write!(f, "{reason}"),
        }
    }
}

/// Where a plugin's machine code came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CodeSource {
    /// Compiled from the `.wasm` by Cranelift (and written to the cache).
    Compiled,
    /// Loaded from a `.cwasm` this host wrote earlier for the same bytes and engine.
    Cache,
    /// Not WebAssembly: a Rust function linked into the host (the benchmark's baseline).
    Native,
}

/// A handler written in Rust and linked into the host: the native baseline the benchmark
/// compares components with, served through exactly the same consume and publish path.
pub type NativeHandler = fn(&Request, &[Header]) -> Result<Response, HandlerError>;

/// What runs when a plugin handles a message.
pub(super) enum Code {
    /// A checked component, instantiated fresh for each call.
    Wasm(bindings::HandlerPre<CallState>),
    /// A function of the host's own (benchmarks).
    Native(NativeHandler),
}

/// A compiled, checked plugin, ready to handle messages.
pub struct Plugin {
    pub(super) name: String,
    pub(super) path: PathBuf,
    pub(super) hash: String,
    pub(super) generation: u64,
    pub(super) source: CodeSource,
    pub(super) code: Code,
    pub(super) settings: PluginSettings,
    /// Granted environment variables with their values.
    pub(super) env: Vec<(String, String)>,
    /// Bounds concurrent calls when `max_concurrency` is set.
    pub(super) permits: Option<Arc<Semaphore>>,
    /// What calls may send out (shared by every call's store).
    pub(super) grants: Arc<Grants>,
    /// Whether the engine counts fuel (then every store needs some).
    pub(super) fuel_counting: bool,
    pub(super) engine: Engine,
    /// The largest linear memory (bytes) any call of this version has used.
    pub(super) peak_memory: Arc<std::sync::atomic::AtomicUsize>,
    /// The size of the compiled code (bytes), which stays mapped while the plugin is loaded.
    pub(super) code_size: usize,
    /// Outbound HTTP shared by every call (the in-flight cap, TLS); `None` when the config
    /// grants no origin, and then every request is denied.
    pub(super) http: Option<Arc<PluginHttp>>,
    /// Idle instances that may serve more messages (`reuse` > 1), newest last.
    pub(super) warm: std::sync::Mutex<Vec<Warm>>,
    /// The `wasi:config` values of this version (its config's, files read at load).
    pub(super) config: crate::wasi_config::PluginConfig,
    /// The host's key-value store (`None`: every `open` fails) and the buckets granted.
    pub(super) keyvalue: Option<Arc<KeyValue>>,
    pub(super) buckets: Arc<[String]>,
    /// The host's database pools (`None`: every `open` fails).
    pub(super) databases: Option<Arc<crate::database::Databases>>,
}

/// Warm instances one plugin version keeps idle at most (each holds its linear memory and
/// an instance slot of the pool).
pub const MAX_WARM: usize = 4;

/// An instance that served `uses` messages and may serve more (`reuse`).
pub(super) struct Warm {
    store: Store<CallState>,
    handler: bindings::Handler,
    uses: u32,
    output: GuestOutput,
}

impl Plugin {
    /// The largest linear memory, in bytes, that a call of this version has used so far
    /// (a fresh instance per call: this is the memory one in-flight message costs).
    pub fn peak_memory_bytes(&self) -> usize {
        self.peak_memory.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The size in bytes of this version's compiled code: what the plugin costs while idle.
    pub fn code_size_bytes(&self) -> usize {
        self.code_size
    }

    /// SHA-256 of the `.wasm` this version was loaded from.
    pub fn hash(&self) -> &str {
        &self.hash
    }

    /// 1 for the version loaded at start, +1 for each version swapped in since.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Whether this version was compiled or loaded from the cache.
    pub fn source(&self) -> CodeSource {
        self.source
    }

    /// The limits every call of this version runs under.
    pub fn limits(&self) -> &Limits {
        &self.settings.limits
    }

    /// The plugin's name in the config.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The file it was loaded from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Makes a fresh instance and drops it without calling it: what every message pays
    /// before `handle` runs (the benchmark's instantiate time). Native plugins cost nothing.
    pub async fn instantiate(&self) -> Result<(), PluginFault> {
        let Code::Wasm(pre) = &self.code else { return Ok(()) };
        let output = GuestOutput::new(self.name.as_str().into());
        let deadline = Instant::now() + self.limits().timeout;
        let mut store = self.new_store(&output, CallContext::default(), deadline).map_err(host_fault)?;
        self.instance(pre, &mut store, &output).await.map(drop)
    }

    /// A fresh instance in `store`. A full instance pool is the host's limit, not the
    /// message's fault: wait for a call to finish and free its slots, until the deadline.
    async fn instance(
        &self,
        pre: &bindings::HandlerPre<CallState>,
        store: &mut Store<CallState>,
        output: &GuestOutput,
    ) -> Result<bindings::Handler, PluginFault> {
        loop {
            match pre.instantiate_async(&mut *store).await {
                Ok(handler) => return Ok(handler),
                Err(e) if e.is::<wasmtime::PoolConcurrencyLimitError>() => {
                    if Instant::now() >= store.data().deadline {
                        return Err(PluginFault::Busy(e.to_string()));
                    }
                    tokio::time::sleep(EPOCH_TICK).await;
                }
                Err(e) => return Err(self.fault(e, output)),
            }
        }
    }

    /// Calls `handle` on a fresh instance. `Ok` carries the handler's own answer; `Err` a
    /// fault after which the instance is gone.
    ///
    /// The whole call — instantiating, running, and every host call the guest makes (a WASI
    /// sleep, a publish awaiting its confirm) — ends at the deadline: epoch interruption stops
    /// running wasm, and a timer drops the call wherever it waits. Waiting for a
    /// `max_concurrency` slot is bounded by the same timeout, before the call's own starts.
    pub async fn handle(
        &self,
        request: &Request,
        headers: &[Header],
        context: &CallContext,
    ) -> Result<Result<Response, HandlerError>, PluginFault> {
        let timeout = self.limits().timeout;
        // Waiting for a `max_concurrency` slot is bounded by the timeout too, but it is the
        // host's queueing, not the call: a message that never got a slot is requeued (Busy),
        // and the call's own deadline starts once it may run.
        let slot_deadline = Instant::now() + timeout;
        let _permit = match &self.permits {
            Some(permits) => match tokio::time::timeout_at(slot_deadline.into(), permits.acquire()).await {
                Ok(Ok(permit)) => Some(permit),
                Ok(Err(_closed)) => return Err(PluginFault::Busy("its max_concurrency permits are closed".into())),
                Err(_) => {
                    return Err(PluginFault::Busy(format!(
                        "all {} max_concurrency permits stayed taken",
                        self.limits().max_concurrency.unwrap_or_default()
                    )));
                }
            },
            None => None,
        };
        let deadline = Instant::now() + timeout;
        let pre = match &self.code {
            Code::Native(handler) => return Ok(handler(request, headers)),
            Code::Wasm(pre) => pre,
        };
        // With `reuse`, a warm instance that served earlier messages (and never failed) is
        // taken first; its output sink comes with it.
        let warm = self.take_warm();
        let output = warm.as_ref().map_or_else(|| GuestOutput::new(self.name.as_str().into()), |w| w.output.clone());
        output.begin_call();
        let call = self.call(pre, warm, request, headers, context, deadline, &output);
        let result = match tokio::time::timeout_at(deadline.into(), call).await {
            Ok(result) => result,
            Err(_) => Err(PluginFault::Deadline(timeout)),
        };
        output.finish();
        result
    }

    /// One call on `warm` or a fresh instance, unbounded in time: [`Plugin::handle`] bounds
    /// it. An instance whose call returned (with an answer or a handler error) goes back to
    /// the warm set while it has uses left; one that trapped, ran out of time or was dropped
    /// mid-call never does.
    #[allow(clippy::too_many_arguments)]
    async fn call(
        &self,
        pre: &bindings::HandlerPre<CallState>,
        warm: Option<Warm>,
        request: &Request,
        headers: &[Header],
        context: &CallContext,
        deadline: Instant,
        output: &GuestOutput,
    ) -> Result<Result<Response, HandlerError>, PluginFault> {
        let (mut store, handler, uses) = match warm {
            Some(Warm { mut store, handler, uses, .. }) => {
                self.begin_call(&mut store, context, deadline);
                (store, handler, uses)
            }
            None => {
                let mut store = self.new_store(output, context.clone(), deadline).map_err(host_fault)?;
                let handler = self.instance(pre, &mut store, output).await?;
                (store, handler, 0)
            }
        };
        let result = async {
            // The fuel limit budgets the handler's own work, not the language runtime's
            // start-up (instantiation stays bounded by the deadline).
            if let Some(fuel) = self.limits().fuel.filter(|_| self.fuel_counting) {
                store.set_fuel(fuel)?;
            }
            handler.call_handle(&mut store, request, headers).await
        }
        .await;
        self.peak_memory.fetch_max(store.data().limits.peak, std::sync::atomic::Ordering::Relaxed);
        match result {
            Ok(answer) => {
                // The call's transaction ends with the handler's answer, before the consumer
                // settles anything: committed only on success, rolled back on its errors.
                if let Err(e) = store.data_mut().database.finish(answer.is_ok()).await {
                    return Err(PluginFault::Host(e.to_string()));
                }
                self.keep_warm(Warm { store, handler, uses: uses + 1, output: output.clone() });
                Ok(answer)
            }
            Err(error) => Err(self.fault(error, output)),
        }
    }

    /// A warm instance, if `reuse` allows them and one is idle.
    fn take_warm(&self) -> Option<Warm> {
        if self.limits().reuse <= 1 {
            return None;
        }
        self.warm.lock().unwrap_or_else(|e| e.into_inner()).pop()
    }

    /// Keeps `warm` for a later message while it has uses left and the warm set has room.
    fn keep_warm(&self, warm: Warm) {
        if warm.uses >= self.limits().reuse {
            return;
        }
        let mut idle = self.warm.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < MAX_WARM {
            idle.push(warm);
        }
    }

    /// Makes a warm instance's store ready for this call: its context, deadline and send
    /// budget; memory and what the guest keeps in it stay (that is what reuse gives up).
    fn begin_call(&self, store: &mut Store<CallState>, context: &CallContext, deadline: Instant) {
        let limits = self.limits();
        let state = store.data_mut();
        state.context = context.clone();
        state.deadline = deadline;
        state.sends = SendBudget { sent: 0, max_sends: limits.max_sends, max_body_bytes: limits.max_send_bytes };
        let unread = state.http.unread();
        state.http = CallHttp::new(self.name.as_str().into(), self.http.clone(), deadline, context, unread);
        state.keyvalue.begin_call(deadline);
        state.database.begin_call(deadline);
        state.trace_host_calls(context);
        store.set_epoch_deadline(1);
    }

    /// A store for one call: WASI granting only what the config grants, the memory limit,
    /// and an epoch callback that yields every tick and interrupts at `deadline`.
    pub(super) fn new_store(
        &self,
        output: &GuestOutput,
        context: CallContext,
        deadline: Instant,
    ) -> Result<Store<CallState>, wasmtime::Error> {
        let mut wasi = WasiCtxBuilder::new();
        wasi.stdout(output.clone()).stderr(output.stderr()).envs(&self.env);
        if let Some((host, guest)) = &self.settings.grants.dir {
            wasi.preopened_dir(host, guest, wasmtime_wasi::FsPerms::ReadOnly)?;
        }
        let limits = self.limits();
        let http = CallHttp::new(self.name.as_str().into(), self.http.clone(), deadline, &context, Arc::default());
        let state = CallState {
            wasi: wasi.build(),
            table: resource_table(),
            limits: MemoryLimiter {
                limits: StoreLimitsBuilder::new().memory_size(limits.memory_bytes).trap_on_grow_failure(true).build(),
                peak: 0,
            },
            deadline,
            plugin: self.name.as_str().into(),
            grants: self.grants.clone(),
            context,
            sends: SendBudget { sent: 0, max_sends: limits.max_sends, max_body_bytes: limits.max_send_bytes },
            http,
            output: output.clone(),
            config: self.config.call(),
            keyvalue: self.call_keyvalue(deadline),
            database: self.call_database(deadline),
        };
        let mut store = Store::new(&self.engine, state);
        let context = store.data().context.clone();
        store.data_mut().trace_host_calls(&context);
        store.limiter(|state| &mut state.limits);
        if self.fuel_counting {
            store.set_fuel(u64::MAX)?;
        }
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(|store| {
            Ok(if Instant::now() >= store.data().deadline {
                UpdateDeadline::Interrupt
            } else {
                UpdateDeadline::Yield(1)
            })
        });
        Ok(store)
    }

    /// One call's key-value state: the granted buckets and the `[limits] keyvalue_*` caps.
    fn call_keyvalue(&self, deadline: Instant) -> CallKeyValue {
        let limits = self.limits();
        let caps = KeyValueLimits {
            max_value_bytes: limits.keyvalue_max_value_bytes,
            page_keys: limits.keyvalue_page_keys,
            max_ops: limits.keyvalue_max_ops,
        };
        CallKeyValue::new(self.keyvalue.clone(), self.name.as_str().into(), self.buckets.clone(), caps, deadline)
    }

    /// One call's database state: the granted databases, `transaction`, the `[limits]
    /// database_*` caps.
    fn call_database(&self, deadline: Instant) -> CallDatabase {
        let (limits, grants) = (self.limits(), &self.settings.grants);
        let caps = DatabaseLimits { max_rows: limits.database_max_rows, max_bytes: limits.database_max_bytes };
        let granted = grants.databases.clone().into();
        CallDatabase::new(
            self.databases.clone(),
            self.name.as_str().into(),
            granted,
            grants.transaction,
            caps,
            deadline,
        )
    }

    fn fault(&self, error: wasmtime::Error, output: &GuestOutput) -> PluginFault {
        if let Some(Trap::Interrupt) = error.downcast_ref::<Trap>() {
            return PluginFault::Deadline(self.limits().timeout);
        }
        let mut reason = match error.downcast_ref::<Trap>() {
            Some(trap) => trap.to_string(),
            None => error.root_cause().to_string(),
        };
        let said = output.tail();
        if !said.is_empty() {
            reason = format!("{reason}; the plugin wrote: {said}");
        }
        PluginFault::Trap(reason)
    }
}

/// Resources (streams, pollables, `wasi:http` requests, fields, bodies, …) one instance may
/// hold at once in its store's table. Wasmtime's default is a million, each host memory
/// outside `memory_mib`; a Python plugin uses a few dozen.
pub const MAX_TABLE_ENTRIES: usize = 1024;

/// A store's resource table, capped at [`MAX_TABLE_ENTRIES`]: past it a new resource fails
/// in the guest (a trap or an error, as the import says), never a host allocation.
fn resource_table() -> ResourceTable {
    let mut table = ResourceTable::new();
    table.set_max_capacity(MAX_TABLE_ENTRIES);
    table
}

/// The host could not set up a call's sandbox (e.g. a granted folder cannot be opened): not
/// the message's fault.
fn host_fault(error: wasmtime::Error) -> PluginFault {
    PluginFault::Host(format!("could not set up the sandbox: {:#}", error))
}

/// The outbound HTTP state a plugin granted `settings` shares between its calls; `None` when
/// it is granted no origin.
pub(super) fn plugin_http(settings: &PluginSettings) -> Option<Arc<PluginHttp>> {
    (!settings.grants.http.origins.is_empty()).then(|| PluginHttp::new(&settings.grants.http))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_calls_resource_table_is_capped() {
        let mut table = resource_table();
        for i in 0..MAX_TABLE_ENTRIES {
            table.push(i).unwrap_or_else(|e| panic!("entry {i}: {e}"));
        }
        assert!(table.push(0usize).is_err(), "entry {} is over the cap", MAX_TABLE_ENTRIES + 1);
    }
}
