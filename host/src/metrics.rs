//! What operators see: per-plugin counters, a handling-time histogram, in-flight gauges and
//! the broker connection state, served in Prometheus text format on `/metrics`, with
//! `/healthz` (the process is up) and `/readyz` (connected and consuming) beside it.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::wasm::plugins::{PluginStatus, Plugins};

/// Upper bounds (seconds) of the handling-time histogram buckets.
const BUCKETS: [f64; 12] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0];

#[derive(Default)]
struct Counters {
    /// Settled messages by outcome (acked, rejected, dead_lettered, requeued, retried, faulted).
    outcomes: BTreeMap<&'static str, u64>,
    in_flight: i64,
    buckets: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

/// What went wrong on the broker's side of the host.
#[derive(Default)]
struct BrokerCounters {
    /// Connections re-established after a loss.
    reconnects: u64,
    /// Publish channels reopened after the broker closed them.
    channel_reopens: u64,
    /// Publishes that did not land, by exchange and why (`returned`, `refused`).
    failed_publishes: BTreeMap<(String, &'static str), u64>,
    /// Deliveries whose text was not UTF-8 (or whose header table could not be read),
    /// repaired before lapin parsed them, by queue.
    repaired: BTreeMap<String, u64>,
    /// Messages rejected to the broker after every host-side retry, by queue.
    given_up: BTreeMap<String, u64>,
}

/// The host's counters. Cheap to update from every message task.
#[derive(Default)]
pub struct Metrics {
    /// By plugin name (`-` for messages no handler took).
    by_plugin: Mutex<BTreeMap<String, Counters>>,
    broker: Mutex<BrokerCounters>,
    /// Connected to the broker and consuming.
    pub ready: AtomicBool,
    /// The trace exporter's counters, when telemetry is on.
    telemetry: std::sync::OnceLock<Arc<crate::telemetry::Counters>>,
}

impl Metrics {
    fn with(&self, plugin: &str, update: impl FnOnce(&mut Counters)) {
        let mut all = self.by_plugin.lock().expect("metrics lock");
        update(all.entry(plugin.to_string()).or_default());
    }

    /// A message started being handled by `plugin`: it counts as in flight until the
    /// returned guard is finished or dropped (an aborted task still leaves the gauge).
    pub fn started<'a>(&'a self, plugin: &str) -> InFlight<'a> {
        self.with(plugin, |c| c.in_flight += 1);
        InFlight { metrics: self, plugin: plugin.to_string(), done: false }
    }

    /// The connection to the broker was re-established.
    pub fn reconnected(&self) {
        self.broker.lock().expect("metrics lock").reconnects += 1;
    }

    /// A publish channel the broker closed was reopened.
    pub fn channel_reopened(&self) {
        self.broker.lock().expect("metrics lock").channel_reopens += 1;
    }

    /// A publish to `exchange` did not land: `returned` (no queue bound) or `refused` (the
    /// broker nacked it or closed the channel).
    pub fn publish_failed(&self, exchange: &str, why: &'static str) {
        *self.broker.lock().expect("metrics lock").failed_publishes.entry((exchange.to_string(), why)).or_default() +=
            1;
    }

    /// A delivery from `queue` was repaired on the way in (see `amqp::frame_repair`).
    pub fn message_repaired(&self, queue: &str) {
        *self.broker.lock().expect("metrics lock").repaired.entry(queue.to_string()).or_default() += 1;
    }

    /// Renders the trace exporter's `counters` too.
    pub fn track_telemetry(&self, counters: Arc<crate::telemetry::Counters>) {
        let _ = self.telemetry.set(counters);
    }

    /// A message of `queue` was rejected to the broker after every host-side retry.
    pub fn message_given_up(&self, queue: &str) {
        *self.broker.lock().expect("metrics lock").given_up.entry(queue.to_string()).or_default() += 1;
    }

    /// A message `started` earlier was settled with `outcome` after `took`.
    fn finished(&self, plugin: &str, outcome: &'static str, took: Duration) {
        self.with(plugin, |c| {
            c.in_flight -= 1;
            *c.outcomes.entry(outcome).or_default() += 1;
            let seconds = took.as_secs_f64();
            for (bucket, bound) in c.buckets.iter_mut().zip(BUCKETS) {
                if seconds <= bound {
                    *bucket += 1;
                }
            }
            c.count += 1;
            c.sum += seconds;
        });
    }

    /// Every metric in Prometheus text format.
    pub fn render(&self, plugins: &Plugins) -> String {
        let mut out = String::new();
        let _ =
            writeln!(out, "# HELP warren_ready 1 when connected to RabbitMQ and consuming.\n# TYPE warren_ready gauge");
        let _ = writeln!(out, "warren_ready {}", u8::from(self.ready.load(Ordering::Relaxed)));
        let all = self.by_plugin.lock().expect("metrics lock");
        let _ = writeln!(
            out,
            "# HELP warren_messages_total Messages settled, by plugin and outcome.\n# TYPE warren_messages_total counter"
        );
        for (plugin, c) in all.iter() {
            for (outcome, n) in &c.outcomes {
                let _ = writeln!(out, "warren_messages_total{{plugin=\"{plugin}\",outcome=\"{outcome}\"}} {n}");
            }
        }
        let _ = writeln!(out, "# HELP warren_in_flight Messages being handled now.\n# TYPE warren_in_flight gauge");
        for (plugin, c) in all.iter() {
            let _ = writeln!(out, "warren_in_flight{{plugin=\"{plugin}\"}} {}", c.in_flight);
        }
        let _ = writeln!(
            out,
            "# HELP warren_handle_seconds Time from delivery to settlement.\n# TYPE warren_handle_seconds histogram"
        );
        for (plugin, c) in all.iter() {
            for (n, bound) in c.buckets.iter().zip(BUCKETS) {
                let _ = writeln!(out, "warren_handle_seconds_bucket{{plugin=\"{plugin}\",le=\"{bound}\"}} {n}");
            }
            let _ = writeln!(out, "warren_handle_seconds_bucket{{plugin=\"{plugin}\",le=\"+Inf\"}} {}", c.count);
            let _ = writeln!(out, "warren_handle_seconds_sum{{plugin=\"{plugin}\"}} {}", c.sum);
            let _ = writeln!(out, "warren_handle_seconds_count{{plugin=\"{plugin}\"}} {}", c.count);
        }
        drop(all);
        let broker = self.broker.lock().expect("metrics lock");
        let _ = writeln!(
            out,
            "# HELP warren_reconnects_total Broker connections re-established after a loss.\n# TYPE warren_reconnects_total counter\nwarren_reconnects_total {}",
            broker.reconnects
        );
        let _ = writeln!(
            out,
            "# HELP warren_channel_reopens_total Publish channels reopened after the broker closed them.\n# TYPE warren_channel_reopens_total counter\nwarren_channel_reopens_total {}",
            broker.channel_reopens
        );
        let _ = writeln!(
            out,
            "# HELP warren_publish_failures_total Publishes that did not land, by exchange and reason (returned: no queue bound; refused: nacked or channel closed).\n# TYPE warren_publish_failures_total counter"
        );
        for ((exchange, why), n) in &broker.failed_publishes {
            let _ = writeln!(out, "warren_publish_failures_total{{exchange=\"{exchange}\",reason=\"{why}\"}} {n}");
        }
        let _ = writeln!(
            out,
            "# HELP warren_repaired_messages_total Deliveries with text that was not UTF-8 or an unreadable header table, repaired and handled, by queue.\n# TYPE warren_repaired_messages_total counter"
        );
        for (queue, n) in &broker.repaired {
            let _ = writeln!(out, "warren_repaired_messages_total{{queue=\"{queue}\"}} {n}");
        }
        let _ = writeln!(
            out,
            "# HELP warren_given_up_messages_total Messages rejected to the broker after every host-side retry (dropped unless the queue has a dead-letter policy), by queue.\n# TYPE warren_given_up_messages_total counter"
        );
        for (queue, n) in &broker.given_up {
            let _ = writeln!(out, "warren_given_up_messages_total{{queue=\"{queue}\"}} {n}");
        }
        if let Some(counters) = self.telemetry.get() {
            let (exported, dropped, failed) = counters.snapshot();
            for (name, help, n) in [
                ("warren_telemetry_spans_exported_total", "Spans the collector took.", exported),
                (
                    "warren_telemetry_spans_dropped_total",
                    "Spans dropped because the exporter's queue was full (the collector is down or slow).",
                    dropped,
                ),
                (
                    "warren_telemetry_spans_failed_total",
                    "Spans lost in exports the collector refused or did not answer.",
                    failed,
                ),
            ] {
                let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {n}");
            }
        }
        drop(broker);
        // One gauge per live plugin, from the plugin table.
        let table = plugins.table();
        let plugin_gauge = |out: &mut String, name: &str, help: &str, value: &dyn Fn(&PluginStatus) -> u64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
            for status in &table {
                let _ = writeln!(out, "{name}{{plugin=\"{}\"}} {}", status.name, value(status));
            }
        };
        plugin_gauge(
            &mut out,
            "warren_plugin_generation",
            "Live version of each plugin (1 at start, +1 per swap).",
            &|s| s.generation,
        );
        plugin_gauge(
            &mut out,
            "warren_plugin_code_bytes",
            "Compiled code of each live plugin: its cost while idle.",
            &|s| s.code_bytes as u64,
        );
        plugin_gauge(
            &mut out,
            "warren_plugin_memory_peak_bytes",
            "Largest linear memory one call of the live version used: the cost of one message in flight.",
            &|s| s.peak_memory_bytes as u64,
        );
        let _ = writeln!(
            out,
            "# HELP warren_reload_refusals_total New plugin versions refused by hot reload.\n# TYPE warren_reload_refusals_total counter"
        );
        let _ = writeln!(out, "warren_reload_refusals_total {}", plugins.refusals().len());
        render_http(&mut out);
        render_keyvalue(&mut out);
        out
    }
}

/// The async runtime: tasks alive (message tasks, consumers, timers' owners) and workers. A
/// count that only grows under a steady load is a task leak.
fn render_runtime(out: &mut String, runtime: &tokio::runtime::Handle) {
    let metrics = runtime.metrics();
    let _ = writeln!(
        out,
        "# HELP warren_runtime_tasks Tasks alive in the host's async runtime.\n# TYPE warren_runtime_tasks gauge\nwarren_runtime_tasks {}",
        metrics.num_alive_tasks()
    );
    let _ = writeln!(
        out,
        "# HELP warren_runtime_workers Worker threads of the host's async runtime.\n# TYPE warren_runtime_workers gauge\nwarren_runtime_workers {}",
        metrics.num_workers()
    );
}

/// Outbound HTTP from plugins (`crate::wasm::http`): requests by plugin, origin and status
/// (an HTTP code, or `denied`, `timeout`, `unreachable`, `tls`, `too_large`, `busy`, `error`),
/// and their latency by plugin and origin.
fn render_http(out: &mut String) {
    let stats = crate::wasm::http::stats();
    let _ = writeln!(
        out,
        "# HELP warren_http_requests_total Outbound HTTP requests of plugins, by plugin, origin and status.\n# TYPE warren_http_requests_total counter"
    );
    for ((plugin, origin, status), n) in stats.requests() {
        let _ = writeln!(
            out,
            "warren_http_requests_total{{plugin=\"{plugin}\",origin=\"{origin}\",status=\"{status}\"}} {n}"
        );
    }
    let _ = writeln!(
        out,
        "# HELP warren_http_request_seconds Outbound HTTP request time, sent to body read (or failure).\n# TYPE warren_http_request_seconds histogram"
    );
    for ((plugin, origin), h) in stats.latency() {
        let labels = format!("plugin=\"{plugin}\",origin=\"{origin}\"");
        for (n, bound) in h.buckets.iter().zip(crate::wasm::http::HTTP_BUCKETS) {
            let _ = writeln!(out, "warren_http_request_seconds_bucket{{{labels},le=\"{bound}\"}} {n}");
        }
        let _ = writeln!(out, "warren_http_request_seconds_bucket{{{labels},le=\"+Inf\"}} {}", h.count);
        let _ = writeln!(out, "warren_http_request_seconds_sum{{{labels}}} {}", h.sum);
        let _ = writeln!(out, "warren_http_request_seconds_count{{{labels}}} {}", h.count);
    }
}

/// Plugins' key-value operations (`crate::keyvalue`): by plugin, granted bucket, operation
/// and outcome (`ok`, `error`, `timeout`, `refused`), and their latency.
fn render_keyvalue(out: &mut String) {
    let stats = crate::keyvalue::stats();
    let _ = writeln!(
        out,
        "# HELP warren_keyvalue_operations_total Key-value operations of plugins, by plugin, bucket, operation and outcome.\n# TYPE warren_keyvalue_operations_total counter"
    );
    for ((plugin, bucket, op, outcome), n) in stats.operations() {
        let _ = writeln!(
            out,
            "warren_keyvalue_operations_total{{plugin=\"{plugin}\",bucket=\"{bucket}\",op=\"{op}\",outcome=\"{outcome}\"}} {n}"
        );
    }
    let _ = writeln!(
        out,
        "# HELP warren_keyvalue_operation_seconds Key-value operation time, as the guest waited for it.\n# TYPE warren_keyvalue_operation_seconds histogram"
    );
    for ((plugin, bucket, op), h) in stats.latency() {
        let labels = format!("plugin=\"{plugin}\",bucket=\"{bucket}\",op=\"{op}\"");
        for (n, bound) in h.buckets.iter().zip(crate::keyvalue::KV_BUCKETS) {
            let _ = writeln!(out, "warren_keyvalue_operation_seconds_bucket{{{labels},le=\"{bound}\"}} {n}");
        }
        let _ = writeln!(out, "warren_keyvalue_operation_seconds_bucket{{{labels},le=\"+Inf\"}} {}", h.count);
        let _ = writeln!(out, "warren_keyvalue_operation_seconds_sum{{{labels}}} {}", h.sum);
        let _ = writeln!(out, "warren_keyvalue_operation_seconds_count{{{labels}}} {}", h.count);
    }
}

/// A message in flight: settle it with [`InFlight::finish`]; dropped unsettled (its task
/// aborted or panicked), it still leaves the in-flight gauge, counted as `abandoned`.
pub struct InFlight<'a> {
    metrics: &'a Metrics,
    plugin: String,
    done: bool,
}

impl InFlight<'_> {
    /// The message was settled with `outcome` after `took`.
    pub fn finish(mut self, outcome: &'static str, took: Duration) {
        self.done = true;
        self.metrics.finished(&self.plugin, outcome, took);
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.metrics.finished(&self.plugin, "abandoned", Duration::ZERO);
        }
    }
}

/// The metrics endpoint cannot listen.
#[derive(Debug, thiserror::Error)]
#[error("cannot serve metrics on {addr}: {reason}. Pick a free address for service.metrics, or remove it")]
pub struct MetricsError {
    addr: SocketAddr,
    reason: String,
}

/// The HTTP endpoint; it stops when dropped.
pub struct MetricsServer {
    server: Arc<tiny_http::Server>,
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.server.unblock();
    }
}

impl MetricsServer {
    /// Serves `/metrics`, `/healthz` and `/readyz` on `addr` from a thread of its own.
    pub fn start(
        addr: SocketAddr,
        metrics: Arc<Metrics>,
        plugins: Arc<Plugins>,
    ) -> Result<MetricsServer, MetricsError> {
        let server = tiny_http::Server::http(addr).map_err(|e| MetricsError { addr, reason: e.to_string() })?;
        let server = Arc::new(server);
        let serving = server.clone();
        // The runtime whose tasks `/metrics` counts: the one starting the endpoint, the host's.
        let runtime = tokio::runtime::Handle::try_current().ok();
        std::thread::Builder::new()
            .name("warren-metrics".into())
            .spawn(move || {
                for request in serving.incoming_requests() {
                    let (status, body) = match request.url() {
                        "/metrics" => {
                            let mut body = metrics.render(&plugins);
                            if let Some(runtime) = &runtime {
                                render_runtime(&mut body, runtime);
                            }
                            (200, body)
                        }
                        "/healthz" => (200, "ok\n".to_string()),
                        "/readyz" if metrics.ready.load(Ordering::Relaxed) => (200, "ready\n".to_string()),
                        "/readyz" => (503, "not ready: not connected to RabbitMQ\n".to_string()),
                        _ => (404, "try /metrics, /healthz or /readyz\n".to_string()),
                    };
                    let _ = request.respond(tiny_http::Response::from_string(body).with_status_code(status));
                }
            })
            .map_err(|e| MetricsError { addr, reason: e.to_string() })?;
        tracing::info!(%addr, "serving /metrics, /healthz, /readyz");
        Ok(MetricsServer { server })
    }
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn the_runtime_gauge_counts_the_tasks_alive() {
        let runtime = tokio::runtime::Handle::current();
        let task = tokio::spawn(std::future::pending::<()>());
        let mut out = String::new();
        super::render_runtime(&mut out, &runtime);
        assert!(out.contains("\nwarren_runtime_tasks 1\n"), "{out}");
        task.abort();
        let _ = task.await;
        out.clear();
        super::render_runtime(&mut out, &runtime);
        assert!(out.contains("\nwarren_runtime_tasks 0\n"), "{out}");
        assert!(out.contains("\nwarren_runtime_workers 1\n"), "a current-thread runtime: {out}");
    }
}
