//! Runs a host: config → topology → plugins → broker declarations → one consumer per queue,
//! until shutdown. Everything that can be checked (config, plugins) is checked before the
//! broker is touched.

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;
use tracing::{error, info};

use crate::broker::{self, BrokerError, Publisher};
use crate::config::Config;
use crate::consumer::QueueConsumer;
use crate::plugins::{LoadErrors, PluginStatus, Plugins};
use crate::reload::{PluginWatcher, WatchError};
use crate::routing::RouteTable;
use crate::runtime::{Runtime, RuntimeError};
use crate::shutdown::{self, ShutdownTrigger};
use crate::topology::Topology;

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
}

/// The folder, inside the plugins folder, where compiled plugins are cached.
pub const CACHE_DIR: &str = ".warren-cache";

/// A running host. Stop it with [`Server::stop`], or let [`Server::serve`] wait for a signal.
pub struct Server {
    topology: Topology,
    plugins: Arc<Plugins>,
    _watcher: PluginWatcher,
    connection: lapin::Connection,
    trigger: ShutdownTrigger,
    consumers: JoinSet<Result<(), BrokerError>>,
}

impl Server {
    /// Loads every plugin, declares the topology and starts one consumer per queue. Returns
    /// once every consumer is consuming.
    pub async fn start(config: &Config) -> Result<Server, ServerError> {
        let topology = Topology::for_config(config);
        // Concurrent calls are bounded by prefetch per queue (+1 for a load's smoke test).
        let max_instances = topology.consumers.len() as u32 * u32::from(config.prefetch) + 4;
        let cache = config.plugins_dir.join(CACHE_DIR);
        let runtime = Runtime::new(max_instances, config.limits.memory_bytes, Some(cache))?;
        let plugins = Arc::new(Plugins::load_all(&runtime, config).await?);
        let watcher = PluginWatcher::start(&config.plugins_dir, plugins.clone())?;

        let connection = broker::connect(&config.broker_url, &config.service).await?;
        info!(service = %config.service, broker = %broker::redact(&config.broker_url), "connected");
        broker::declare(&connection, &topology).await?;
        info!(
            exchanges = topology.exchanges.len(),
            queues = topology.queues.len(),
            bindings = topology.bindings.len(),
            "topology declared"
        );
        let publisher = Publisher::open(&connection).await?;

        let (trigger, shutdown) = shutdown::channel();
        let mut consumers = JoinSet::new();
        for spec in &topology.consumers {
            let mut routes = RouteTable::new(spec.matching);
            for route in &spec.routes {
                let slot = plugins.slot(&route.plugin).expect("every routed plugin was loaded");
                routes.add(route.routing_key.clone(), slot);
            }
            let consumer = Arc::new(QueueConsumer {
                queue: spec.queue.clone(),
                kind: spec.kind,
                routes,
                service: config.service.clone(),
                publisher: publisher.clone(),
                prefetch: config.prefetch,
                max_retries: config.limits.max_retries,
            });
            let channel = broker::open_channel(&connection).await?;
            let (started_tx, started_rx) = tokio::sync::oneshot::channel();
            consumers.spawn(consumer.run(channel, shutdown.clone(), SHUTDOWN_GRACE, started_tx));
            // A consumer that fails to start reports why through its task.
            if started_rx.await.is_err() {
                let failure = consumers.join_next().await.expect("the consumer task").expect("consumer task panicked");
                return Err(failure.err().map(ServerError::Broker).expect("a consumer that did not start failed"));
            }
        }
        info!(service = %config.service, consumers = topology.consumers.len(), "serving");
        Ok(Server { topology, plugins, _watcher: watcher, connection, trigger, consumers })
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

    /// Serves until `signal` resolves or a consumer fails, then stops gracefully.
    pub async fn serve(mut self, signal: impl std::future::Future<Output = ()>) -> Result<(), ServerError> {
        let failure = tokio::select! {
            _ = signal => None,
            Some(joined) = self.consumers.join_next() => joined.expect("consumer task panicked").err(),
        };
        info!("shutting down: no new messages; in-flight messages finish");
        let stopped = self.stop().await;
        match failure {
            Some(error) => {
                error!(%error, "a consumer failed");
                Err(error.into())
            }
            None => stopped,
        }
    }

    /// Stops consuming, lets in-flight messages finish, and closes the connection.
    pub async fn stop(mut self) -> Result<(), ServerError> {
        self.trigger.fire();
        let mut first_error = None;
        while let Some(joined) = self.consumers.join_next().await {
            if let Err(error) = joined.expect("consumer task panicked") {
                first_error.get_or_insert(error);
            }
        }
        broker::bounded_close(self.connection.close(200, "warren stopped".into())).await;
        info!("stopped");
        first_error.map_or(Ok(()), |e| Err(e.into()))
    }
}
