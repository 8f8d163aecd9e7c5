//! Runs a host: config → topology → plugins → broker declarations → one consumer per queue,
//! until shutdown. Everything that can be checked (config, plugins) is checked before the
//! broker is touched. A new config can be applied while serving ([`Server::reload`]).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{error, info, warn};

use crate::amqp::broker::{self, BrokerError, Publisher};
use crate::amqp::consumer::{Handler, QueueConsumer, Routing};
use crate::amqp::dead_letters;
use crate::amqp::outbox::BrokerOutbox;
use crate::amqp::routing::RouteTable;
use crate::amqp::topology::{ConsumerSpec, Topology};
use crate::config::{Config, ConfigError, Delivery};
use crate::keyvalue::{KeyValue, KeyValueError};
use crate::metrics::{Metrics, MetricsError, MetricsServer};
use crate::shutdown::{self, ShutdownTrigger};
use crate::telemetry::Tracer;
use crate::wasm::plugins::{LoadErrors, PluginStatus, Plugins};
use crate::wasm::reload::PluginWatcher;
use crate::wasm::{Runtime, RuntimeError};
use crate::watch::{ConfigWatcher, WatchError};

/// First and longest wait between reconnect attempts.
pub const RECONNECT_MIN: Duration = Duration::from_millis(500);
pub const RECONNECT_MAX: Duration = Duration::from_secs(30);

/// How long in-flight messages may take to finish once shutdown starts.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// Why a host could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error("{0}")]
    Plugins(#[from] LoadErrors),
    #[error(transparent)]
    Broker(#[from] BrokerError),
    #[error(transparent)]
    Watch(#[from] WatchError),
    #[error(transparent)]
    Metrics(#[from] MetricsError),
    #[error("{store} cannot serve the key-value buckets granted to {grants}: {source}")]
    KeyValue { store: String, grants: String, source: KeyValueError },
    #[error(transparent)]
    Database(#[from] crate::database::DatabaseError),
    #[error(transparent)]
    Telemetry(#[from] crate::telemetry::TelemetryError),
}

/// Why a new config was refused; the old one keeps serving.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("config not reloaded: {0}")]
    Config(#[from] ConfigError),
    #[error("config not reloaded: changing {key} needs a restart (`warren run` again); nothing was changed")]
    NeedsRestart { key: &'static str },
    #[error("config not reloaded, nothing was changed: {}", .0.0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; "))]
    Plugins(#[from] LoadErrors),
    #[error(
        "config not reloaded, nothing was changed (the previous plugins, routes and grants keep serving; what was declared before the failure stays on the broker): {0}"
    )]
    Declare(BrokerError),
    #[error("config partly applied: {0}")]
    Broker(#[from] BrokerError),
}

/// Routing keys of a consumer whose plugin is not live, and the routes that could be built.
#[derive(thiserror::Error)]
#[error(
    "queue '{queue}': no live plugin for routing key(s) {keys}: their messages are not handled until a config reload names loadable plugins"
)]
struct Unrouted {
    queue: String,
    keys: String,
    routing: Routing,
}

impl std::fmt::Debug for Unrouted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Unrouted").field("queue", &self.queue).field("keys", &self.keys).finish_non_exhaustive()
    }
}

/// A consumer task and the trigger that stops it alone.
struct RunningConsumer {
    consumer: Arc<QueueConsumer>,
    stop: ShutdownTrigger,
    task: JoinHandle<()>,
}

/// Capped exponential backoff with jitter, for the first connection and every reconnect.
struct Backoff {
    delay: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff { delay: RECONNECT_MIN }
    }
}

impl Backoff {
    /// How long to wait before the next try: the current delay, jittered over its upper
    /// half so many hosts do not reconnect in step; the delay then doubles, up to the cap.
    fn next_wait(&mut self) -> Duration {
        let nanos =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().subsec_nanos();
        let wait = self.delay / 2 + self.delay.mul_f64(f64::from(nanos % 1000) / 2000.0);
        self.delay = (self.delay * 2).min(RECONNECT_MAX);
        wait
    }
}

/// The host's first connection: to any of the broker's URLs; when `wait` and no node
/// answers yet, tried again with the reconnect backoff, each try logged.
async fn first_connection(config: &Config, wait: bool) -> Result<lapin::Connection, BrokerError> {
    let mut backoff = Backoff::default();
    for attempt in 1.. {
        match broker::connect_any(&config.broker, &config.service).await {
            Ok((connection, node)) => {
                info!(service = %config.service, broker = %node, "connected");
                return Ok(connection);
            }
            Err(error @ BrokerError::Connect { .. }) if wait => {
                let retry_in = backoff.next_wait();
                warn!(attempt, %error, retry_in_ms = retry_in.as_millis() as u64, "the broker does not answer yet; waiting (--fail-fast exits instead)");
                tokio::time::sleep(retry_in).await;
            }
            Err(error) => return Err(error),
        }
    }
    unreachable!("the loop returns")
}

/// The publisher of answers and of what plugins send: confirmed, or goamqp's way
/// (`service.delivery`). Dead-letter and retry copies always go through a confirmed one.
async fn answers_publisher(connection: &Arc<lapin::Connection>, delivery: Delivery) -> Result<Publisher, BrokerError> {
    match delivery {
        Delivery::Confirmed => Publisher::open(connection).await,
        Delivery::Goamqp => Publisher::open_unconfirmed(connection).await,
    }
}

/// What the start line adds about the delivery guarantee.
fn delivery_note(delivery: Delivery) -> &'static str {
    match delivery {
        Delivery::Confirmed => " (a message is acked only after its answer and sends are confirmed by the broker)",
        Delivery::Goamqp => {
            " (delivery = goamqp: answers and sends are not confirmed; one the broker loses after it was written is lost, as with goamqp)"
        }
    }
}

/// The key-value store, opened before the broker is touched — only when some plugin is granted
/// a bucket (a host without grants leaves no store file behind).
pub async fn open_keyvalue(config: &Config) -> Result<Option<Arc<KeyValue>>, ServerError> {
    if config.bucket_grants().is_empty() {
        return Ok(None);
    }
    let store =
        KeyValue::open(&config.keyvalue, &config.service).await.map_err(|source| keyvalue_error(config, source))?;
    info!(store = %config.keyvalue.describe(), "key-value store open");
    Ok(Some(store))
}

/// `warren check`: whether the store the bucket grants need can serve them, without taking it
/// (a running host keeps its embedded file): the embedded store's folder is writable, Redis
/// answers.
pub async fn check_keyvalue(config: &Config) -> Result<(), ServerError> {
    if config.bucket_grants().is_empty() {
        return Ok(());
    }
    KeyValue::probe(&config.keyvalue, &config.service).await.map_err(|source| keyvalue_error(config, source))
}

/// `source`, naming the store and every plugin granted a bucket in it.
fn keyvalue_error(config: &Config, source: KeyValueError) -> ServerError {
    let grants = config
        .bucket_grants()
        .into_iter()
        .map(|(plugin, buckets)| format!("plugin '{plugin}' ({})", buckets.join(", ")));
    ServerError::KeyValue { store: config.keyvalue.describe(), grants: grants.collect::<Vec<_>>().join(", "), source }
}

/// Instances a host needs at most: concurrent calls are bounded by the prefetch of each
/// consumer, plus a few for loads' smoke tests, plus the warm instances of plugins with
/// `reuse` > 1.
fn instances_needed(config: &Config, topology: &Topology) -> u32 {
    let warm = config.plugin_names().iter().filter(|name| config.settings_for(name).limits.reuse > 1).count();
    topology.consumers.len() as u32 * u32::from(config.prefetch) + 4 + (warm * crate::wasm::plugin::MAX_WARM) as u32
}

/// A running host. Stop it with [`Server::stop`], or let [`Server::serve`] wait for a signal.
pub struct Server {
    config: Config,
    topology: Topology,
    max_instances: u32,
    plugins: Arc<Plugins>,
    _watcher: PluginWatcher,
    connection: Arc<lapin::Connection>,
    publisher: Publisher,
    /// Dead-letter and retry copies, one at a time on a channel of their own.
    must_land: Publisher,
    consumers: BTreeMap<String, RunningConsumer>,
    failures: (mpsc::UnboundedSender<BrokerError>, mpsc::UnboundedReceiver<BrokerError>),
    metrics: Arc<Metrics>,
    _metrics_server: Option<MetricsServer>,
    /// Where spans go (`[telemetry]`); `None`: telemetry is off.
    tracer: Option<Arc<Tracer>>,
}

impl Server {
    /// Loads every plugin, declares the topology and starts one consumer per queue. Returns
    /// once every consumer is consuming.
    /// A broker that cannot be reached is an error at once (`warren run --fail-fast`).
    pub async fn start(config: &Config) -> Result<Server, ServerError> {
        Server::launch(config, BTreeMap::new(), false).await
    }

    /// Like [`Server::start`], but a broker that is not up yet is waited for, with the
    /// reconnect backoff, logging each try (`warren run`). A refused login or certificate
    /// still fails at once: waiting would not fix it.
    pub async fn start_waiting(config: &Config) -> Result<Server, ServerError> {
        Server::launch(config, BTreeMap::new(), true).await
    }

    /// The WebAssembly runtime `config` needs: an instance pool sized by the consumers and
    /// their prefetch, the largest memory limit, fuel counting if any plugin has a budget, and
    /// the compiled-code cache in the private state folder (`warren check` fills it for `run`).
    pub fn runtime_for(config: &Config, topology: &Topology) -> Result<Arc<Runtime>, ServerError> {
        let cache = config.state_dir.clone();
        let settings: Vec<_> = config.plugin_names().iter().map(|name| config.settings_for(name)).collect();
        let max_memory = settings.iter().map(|s| s.limits.memory_bytes).fold(config.limits.memory_bytes, usize::max);
        let fuel = settings.iter().any(|s| s.limits.fuel.is_some());
        Ok(Runtime::new(instances_needed(config, topology), max_memory, fuel, Some(cache))?)
    }

    /// Like [`Server::start`], with some plugin names served by Rust functions linked into
    /// the host instead of components: the benchmark's native baseline, through the same
    /// consume and publish path.
    pub async fn start_with_natives(
        config: &Config,
        natives: BTreeMap<String, crate::wasm::NativeHandler>,
    ) -> Result<Server, ServerError> {
        Server::launch(config, natives, false).await
    }

    async fn launch(
        config: &Config,
        natives: BTreeMap<String, crate::wasm::NativeHandler>,
        wait_for_broker: bool,
    ) -> Result<Server, ServerError> {
        let topology = Topology::for_config(config);
        let max_instances = instances_needed(config, &topology);
        let runtime = Server::runtime_for(config, &topology)?;
        if let Some(store) = open_keyvalue(config).await? {
            runtime.attach_keyvalue(store);
        }
        if !config.databases.is_empty() {
            runtime.attach_databases(crate::database::Databases::open(&config.databases)?);
        }
        let plugins = Arc::new(Plugins::load_all_with_natives(&runtime, config, natives).await?);
        let watcher = PluginWatcher::start(&config.plugins_dir, plugins.clone())?;

        let connection = Arc::new(first_connection(config, wait_for_broker).await?);
        broker::declare(&connection, &topology).await?;
        info!(
            exchanges = topology.exchanges.len(),
            queues = topology.queues.len(),
            bindings = topology.bindings.len(),
            "topology declared"
        );
        let metrics = Arc::new(Metrics::default());
        let tracer = Tracer::start(&config.telemetry, &config.service)?;
        if let Some(tracer) = &tracer {
            metrics.track_telemetry(tracer.counters().clone());
        }
        let publisher = answers_publisher(&connection, config.delivery).await?.with_metrics(metrics.clone());
        let must_land = Publisher::open(&connection).await?.with_metrics(metrics.clone()).one_at_a_time();
        dead_letters::warn_if_unbound(&must_land, &topology).await;
        let metrics_server = match config.metrics {
            Some(addr) => Some(MetricsServer::start(addr, metrics.clone(), plugins.clone())?),
            None => None,
        };
        let mut server = Server {
            config: config.clone(),
            topology: Topology::default(),
            max_instances,
            plugins,
            _watcher: watcher,
            connection,
            publisher,
            must_land,
            consumers: BTreeMap::new(),
            failures: mpsc::unbounded_channel(),
            metrics: metrics.clone(),
            _metrics_server: metrics_server,
            tracer,
        };
        server.topology = topology.clone();
        for spec in &topology.consumers {
            server.start_consumer(spec).await?;
        }
        server.metrics.ready.store(true, std::sync::atomic::Ordering::Relaxed);
        info!(service = %config.service, consumers = server.consumers.len(), delivery = %config.delivery, "serving{}", delivery_note(config.delivery));
        Ok(server)
    }

    /// The routes of one consumer, from the live plugin slots. A route whose plugin is not
    /// live (a config reload is all or nothing, so this should never be) is logged and left
    /// out: the consumer still serves its other keys; nothing on the reconnect path panics.
    fn routing(&self, spec: &ConsumerSpec) -> Routing {
        self.route_table(spec).unwrap_or_else(|unrouted| {
            error!(error = %unrouted, "serving the queue's other routing keys");
            unrouted.routing
        })
    }

    /// The routes of one consumer; `Err` holds the routes that could be built and names
    /// those whose plugin is not live.
    fn route_table(&self, spec: &ConsumerSpec) -> Result<Routing, Unrouted> {
        let mut routes = RouteTable::new(spec.matching);
        let mut missing = Vec::new();
        for route in &spec.routes {
            let Some(plugin) = self.plugins.slot(&route.plugin) else {
                missing.push(format!("'{}' (plugin '{}')", route.routing_key, route.plugin));
                continue;
            };
            routes.add(
                route.routing_key.clone(),
                Handler {
                    plugin,
                    dead_letter_exchange: route.dead_letter_exchange.clone(),
                    retry_delays: route.retry_delays_ms.iter().map(|&ms| Duration::from_millis(ms)).collect(),
                    answers: route.answers,
                },
            );
        }
        let routing = Routing { routes, dead_letter_exchange: spec.dead_letter_exchange.clone() };
        match missing.is_empty() {
            true => Ok(routing),
            false => Err(Unrouted { queue: spec.queue.clone(), keys: missing.join(", "), routing }),
        }
    }

    async fn start_consumer(&mut self, spec: &ConsumerSpec) -> Result<(), BrokerError> {
        let consumer = Arc::new(QueueConsumer {
            queue: spec.queue.clone(),
            kind: spec.kind,
            routing: ArcSwap::from_pointee(self.routing(spec)),
            service: self.config.service.clone(),
            publisher: self.publisher.clone(),
            must_land: self.must_land.clone(),
            outbox: Arc::new(
                BrokerOutbox::new(self.publisher.clone(), self.config.service.clone()).with_tracer(self.tracer.clone()),
            ),
            prefetch: self.config.prefetch,
            tracer: self.tracer.clone(),
            quorum: self.config.queue_profile == crate::config::QueueProfile::Quorum
                && self.topology.queues.iter().any(|q| q.name == spec.queue && q.durable),
            metrics: self.metrics.clone(),
        });
        let channel = broker::open_channel(&self.connection).await?;
        let (stop, stopped) = shutdown::channel();
        let (started_tx, started_rx) = tokio::sync::oneshot::channel();
        let failures = self.failures.0.clone();
        let run = consumer.clone().run(channel, stopped, SHUTDOWN_GRACE, started_tx);
        let task = tokio::spawn(async move {
            if let Err(error) = run.await {
                let _ = failures.send(error);
            }
        });
        // A consumer that fails to start reports why through the failure channel.
        if started_rx.await.is_err() {
            let _ = task.await;
            return Err(self
                .failures
                .1
                .try_recv()
                .unwrap_or_else(|_| BrokerError::Cancelled { queue: spec.queue.clone() }));
        }
        self.consumers.insert(spec.queue.clone(), RunningConsumer { consumer, stop, task });
        Ok(())
    }

    /// What this host declared and consumes.
    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    /// The live plugins: name, generation, content hash, compiled or cached.
    pub fn plugins(&self) -> Vec<PluginStatus> {
        self.plugins.table()
    }

    /// Every plugin version refused by hot reload since start, as logged.
    pub fn refused_reloads(&self) -> Vec<String> {
        self.plugins.refusals()
    }

    /// Applies a new config while serving, in this order: checks what needs a restart, loads
    /// and checks new or changed plugins (none serves yet), declares the new topology (new
    /// bindings and queues before old ones go), swaps the plugins in, swaps each consumer's
    /// routes, starts consumers for new queues, stops those whose queue is gone (their
    /// in-flight messages finish). A failure before the swap changes nothing: the old
    /// plugins, routes and grants keep serving, and the error says so in one line.
    pub async fn reload(&mut self, config: Config) -> Result<(), ReloadError> {
        let old = &self.config;
        let restart_only: [(&'static str, bool); 11] = [
            ("service.delivery", config.delivery != old.delivery),
            ("[telemetry]", config.telemetry != old.telemetry),
            ("service.name", config.service != old.service),
            ("service.plugins", config.plugins_dir != old.plugins_dir),
            ("broker.url / broker.urls / broker.tls / the password", config.broker != old.broker),
            ("broker.queue_profile", config.queue_profile != old.queue_profile),
            ("broker.prefetch", config.prefetch != old.prefetch),
            ("limits.memory_mib (above its value at start)", config.limits.memory_bytes > old.limits.memory_bytes),
            ("[keyvalue] (the store is opened at start)", config.keyvalue != old.keyvalue),
            ("[database.<name>] (the pools are made at start)", config.databases != old.databases),
            (
                "the first keyvalue grant (the store is opened at start when a plugin has one)",
                old.bucket_grants().is_empty() && !config.bucket_grants().is_empty(),
            ),
        ];
        if let Some((key, _)) = restart_only.into_iter().find(|(_, changed)| *changed) {
            return Err(ReloadError::NeedsRestart { key });
        }
        let mut topology = Topology::for_config(&config);
        topology.keep_transient_names(&self.topology);
        if instances_needed(&config, &topology) > self.max_instances {
            return Err(ReloadError::NeedsRestart {
                key: "the number of queues consumed (it sizes the instance pool)",
            });
        }
        // Nothing below changes what serves until every plugin loaded and the broker took the
        // new topology: a failure up to there leaves the old config serving whole.
        let prepared = self.plugins.prepare(&config).await?;
        broker::declare(&self.connection, &topology).await.map_err(ReloadError::Declare)?;
        dead_letters::warn_if_unbound(&self.must_land, &topology).await;
        let stale = self.plugins.commit(prepared);
        self.config = config;
        let old = std::mem::replace(&mut self.topology, topology.clone());
        for spec in &topology.consumers {
            match self.consumers.get(&spec.queue) {
                Some(running) => running.consumer.routing.store(Arc::new(self.routing(spec))),
                None => self.start_consumer(spec).await?,
            }
        }
        let gone: Vec<_> = old.bindings.iter().filter(|b| !topology.bindings.contains(b)).cloned().collect();
        if !gone.is_empty() {
            let channel = broker::open_channel(&self.connection).await?;
            for binding in &gone {
                let unbound = channel
                    .queue_unbind(
                        binding.queue.as_str().into(),
                        binding.exchange.as_str().into(),
                        binding.routing_key.as_str().into(),
                        broker::field_table(&binding.arguments),
                    )
                    .await;
                if let Err(error) = unbound {
                    warn!(queue = %binding.queue, exchange = %binding.exchange, key = %binding.routing_key, %error, "could not remove a binding the config dropped");
                }
            }
            broker::bounded_close(channel.close(200, "unbound".into())).await;
        }
        let queues: Vec<String> =
            self.consumers.keys().filter(|q| !topology.consumers.iter().any(|c| &c.queue == *q)).cloned().collect();
        for queue in queues {
            if let Some(running) = self.consumers.remove(&queue) {
                info!(queue = %queue, "the config no longer consumes this queue: stopping its consumer");
                running.stop.fire();
                // In-flight messages finish in the background.
                drop(running.task);
            }
        }
        info!(
            bindings_added = topology.bindings.iter().filter(|b| !old.bindings.contains(b)).count(),
            bindings_removed = gone.len(),
            consumers = self.consumers.len(),
            "config reloaded"
        );
        // A file that changed while this config's plugins loaded may be newer than what was
        // loaded: load it again, now under the new settings.
        for name in stale {
            let plugins = self.plugins.clone();
            let _ = tokio::task::spawn_blocking(move || plugins.reload_and_log(&name)).await;
        }
        Ok(())
    }

    /// Reads the config file again and applies it, logging the outcome.
    async fn reload_from_file(&mut self) {
        let result = match Config::load(&self.config.source) {
            Ok(config) => self.reload(config).await,
            Err(error) => Err(error.into()),
        };
        if let Err(error) = result {
            error!(%error, "the previous config keeps serving");
        }
    }

    /// Serves until `signal` resolves or a consumer fails, then stops gracefully. The config
    /// file is applied again when it changes or on SIGHUP.
    pub async fn serve(mut self, signal: impl std::future::Future<Output = ()>) -> Result<(), ServerError> {
        let mut config_changes = ConfigWatcher::start(&self.config.source)?;
        let mut hangups = shutdown::hangups();
        tokio::pin!(signal);
        loop {
            tokio::select! {
                _ = &mut signal => break,
                Some(error) = self.failures.1.recv() => {
                    if !self.recover(error, &mut signal).await {
                        break;
                    }
                }
                Some(()) = config_changes.next() => self.reload_from_file().await,
                Some(()) = hangups.recv() => {
                    info!("SIGHUP: reloading the config");
                    self.reload_from_file().await;
                }
            }
        }
        info!("shutting down: no new messages; in-flight messages finish");
        self.stop().await
    }

    /// The host's counters (what `/metrics` serves).
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Whether the host is connected and consuming (false while it recovers).
    pub fn is_ready(&self) -> bool {
        self.metrics.ready.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// After a broker failure: drop every consumer and the connection, then reconnect with
    /// capped exponential backoff and jitter, redeclare the whole topology and resume every
    /// consumer. Unacked messages are redelivered by RabbitMQ. Returns false if `signal`
    /// fired while waiting (then the host shuts down).
    async fn recover(
        &mut self,
        error: BrokerError,
        signal: &mut (impl std::future::Future<Output = ()> + Unpin),
    ) -> bool {
        self.metrics.ready.store(false, std::sync::atomic::Ordering::Relaxed);
        warn!(%error, "lost the broker: reconnecting (in-flight messages are redelivered by RabbitMQ)");
        for (_, running) in std::mem::take(&mut self.consumers) {
            running.stop.fire();
            running.task.abort();
        }
        broker::bounded_close(self.connection.close(200, "recovering".into())).await;
        while self.failures.1.try_recv().is_ok() {}

        let started = std::time::Instant::now();
        let mut backoff = Backoff::default();
        for attempt in 1.. {
            match self.reconnect().await {
                Ok(()) => {
                    self.metrics.ready.store(true, std::sync::atomic::Ordering::Relaxed);
                    self.metrics.reconnected();
                    info!(
                        attempt,
                        ms = started.elapsed().as_millis() as u64,
                        "reconnected: topology declared, consumers resumed"
                    );
                    return true;
                }
                Err(error) => {
                    let wait = backoff.next_wait();
                    warn!(attempt, %error, retry_in_ms = wait.as_millis() as u64, "reconnect failed");
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = &mut *signal => return false,
                    }
                }
            }
        }
        unreachable!("the loop returns")
    }

    async fn reconnect(&mut self) -> Result<(), BrokerError> {
        for (_, running) in std::mem::take(&mut self.consumers) {
            running.task.abort();
        }
        let (connection, node) = broker::connect_any(&self.config.broker, &self.config.service).await?;
        info!(service = %self.config.service, broker = %node, "connected");
        self.connection = Arc::new(connection);
        broker::declare(&self.connection, &self.topology).await?;
        self.publisher =
            answers_publisher(&self.connection, self.config.delivery).await?.with_metrics(self.metrics.clone());
        self.must_land = Publisher::open(&self.connection).await?.with_metrics(self.metrics.clone()).one_at_a_time();
        for spec in self.topology.consumers.clone() {
            self.start_consumer(&spec).await?;
        }
        Ok(())
    }

    /// Stops consuming, lets in-flight messages finish, and closes the connection.
    pub async fn stop(mut self) -> Result<(), ServerError> {
        let consumers = std::mem::take(&mut self.consumers);
        for running in consumers.values() {
            running.stop.fire();
        }
        for running in consumers.into_values() {
            let _ = running.task.await;
        }
        broker::bounded_close(self.connection.close(200, "warren stopped".into())).await;
        info!("stopped");
        match self.failures.1.try_recv() {
            Ok(error) => Err(error.into()),
            Err(_) => Ok(()),
        }
    }
}
