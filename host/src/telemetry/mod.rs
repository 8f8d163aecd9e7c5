//! OpenTelemetry traces out of the host: spans for each message, the plugin call, and every
//! publish and outbound call it makes, exported over OTLP/HTTP (protobuf) to a collector.
//!
//! - [`context`]: the W3C `traceparent`, parsed and written (the one place it is spelled).
//! - [`sampler`]: which traces are recorded (`OTEL_TRACES_SAMPLER`, parent-based by default).
//! - [`export`]: the batching exporter task and its counters.
//! - [`collector`]: where exports go (`http://` or `https://`), with the standard headers and CA.
//!
//! A [`Tracer`] exists only when an endpoint is configured (`[telemetry] otlp_endpoint`, or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` / `OTEL_EXPORTER_OTLP_ENDPOINT`); without one nothing
//! is recorded and the `traceparent` is carried as before. A finished span goes into a bounded
//! queue ([`export::SpanQueue`]) without waiting or waking anyone: a collector that is down,
//! slow or refusing can fill the queue, and then spans are dropped and counted — message
//! handling never waits for it.
//!
//! This module is neutral ground: both wings record spans through it, and it knows neither.

pub mod collector;
pub mod context;
pub mod export;
pub mod sampler;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

pub use collector::TelemetryError;
pub use context::{SpanContext, new_traceparent};
pub use export::Counters;
use sampler::Sampler;

use crate::config::TelemetrySettings;

/// How many finished spans wait for the exporter at most; past it they are dropped.
pub const QUEUE_SPANS: usize = 4096;

/// What a span describes, as OpenTelemetry names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpanKind {
    Internal,
    Client,
    Producer,
    Consumer,
}

/// An attribute's value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Text(String),
    Int(i64),
    Bool(bool),
}

impl From<&str> for Value {
    fn from(value: &str) -> Value {
        Value::Text(value.to_string())
    }
}
impl From<String> for Value {
    fn from(value: String) -> Value {
        Value::Text(value)
    }
}
impl From<i64> for Value {
    fn from(value: i64) -> Value {
        Value::Int(value)
    }
}
impl From<usize> for Value {
    fn from(value: usize) -> Value {
        Value::Int(i64::try_from(value).unwrap_or(i64::MAX))
    }
}
impl From<bool> for Value {
    fn from(value: bool) -> Value {
        Value::Bool(value)
    }
}

/// A span that ended, waiting to be exported.
#[derive(Debug, Clone)]
pub struct FinishedSpan {
    pub context: SpanContext,
    pub parent: Option<[u8; 8]>,
    pub name: String,
    pub kind: SpanKind,
    pub start_unix_nanos: u64,
    pub end_unix_nanos: u64,
    pub attributes: Vec<(&'static str, Value)>,
    /// `Some(message)`: the span ended in error.
    pub error: Option<String>,
}

/// Records spans for one host and hands them to the exporter.
pub struct Tracer {
    queue: Arc<export::SpanQueue>,
    sampler: Sampler,
    counters: Arc<Counters>,
    warned_full: AtomicBool,
}

impl Tracer {
    /// A tracer exporting to the configured endpoint, or `None` when none is configured.
    /// Starts the exporter task on the current tokio runtime. Fails (saying what to fix) when
    /// the endpoint, a header or the CA of the standard variables cannot be used.
    pub fn start(settings: &TelemetrySettings, service: &str) -> Result<Option<Arc<Tracer>>, TelemetryError> {
        let Some(endpoint) = export::endpoint(settings) else { return Ok(None) };
        let collector = collector::Collector::from_env(&endpoint)?;
        let service_name = std::env::var("OTEL_SERVICE_NAME").ok().filter(|s| !s.is_empty());
        let service_name = service_name.unwrap_or_else(|| service.to_string());
        let queue = Arc::new(export::SpanQueue::default());
        let counters = Arc::new(Counters::default());
        tracing::info!(%endpoint, service = %service_name, "exporting traces over OTLP/HTTP");
        tokio::spawn(export::run(collector, service_name, queue.clone(), counters.clone()));
        let tracer = Tracer { queue, sampler: Sampler::from_env(), counters, warned_full: AtomicBool::new(false) };
        Ok(Some(Arc::new(tracer)))
    }

    /// The exporter's counters (exported, dropped, failed), for `/metrics`.
    pub fn counters(&self) -> &Arc<Counters> {
        &self.counters
    }

    /// Starts a span named `name`, the child of `parent` when given (a remote parent from a
    /// message's `traceparent`, or a span of this host), else the root of a new trace.
    pub fn span(self: &Arc<Tracer>, name: impl Into<String>, kind: SpanKind, parent: Option<SpanContext>) -> Span {
        let sampled = self.sampler.sample(parent.as_ref());
        let context = match parent {
            Some(parent) => SpanContext { sampled, ..parent.child() },
            None => SpanContext::new_root(sampled),
        };
        // A collector that cannot be reached would only lose the span: it is counted, not
        // recorded (its context still goes on, sampled, to what the message causes).
        let recorded = sampled && !self.queue.collector_unreachable();
        if sampled && !recorded {
            self.counters.failed();
        }
        Span {
            tracer: recorded.then(|| self.clone()),
            data: FinishedSpan {
                context,
                parent: parent.map(|p| p.span_id),
                name: name.into(),
                kind,
                start_unix_nanos: now_nanos(),
                end_unix_nanos: 0,
                attributes: if recorded { Vec::with_capacity(12) } else { Vec::new() },
                error: None,
            },
        }
    }

    fn finish(&self, span: FinishedSpan) {
        if !self.queue.push(span) {
            self.counters.dropped();
            if !self.warned_full.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    "the trace exporter's queue ({QUEUE_SPANS} spans) is full: the collector is down or slow; spans are dropped and counted (warren_telemetry_spans_dropped_total) until it catches up"
                );
            }
        }
    }
}

impl Drop for Tracer {
    fn drop(&mut self) {
        self.queue.close();
    }
}

/// A span being recorded; it ends when [`Span::end`] is called or it is dropped. Unsampled
/// spans carry a context (for `traceparent`) but record nothing.
pub struct Span {
    tracer: Option<Arc<Tracer>>,
    data: FinishedSpan,
}

impl Span {
    /// This span's place in its trace.
    pub fn context(&self) -> SpanContext {
        self.data.context
    }

    /// The W3C `traceparent` naming this span as the parent of what it causes.
    pub fn traceparent(&self) -> String {
        self.data.context.traceparent()
    }

    /// Sets attribute `key`.
    pub fn set(&mut self, key: &'static str, value: impl Into<Value>) {
        if self.tracer.is_some() {
            self.data.attributes.push((key, value.into()));
        }
    }

    /// Marks the span as failed with `message`.
    pub fn fail(&mut self, message: impl Into<String>) {
        if self.tracer.is_some() {
            self.data.error = Some(message.into());
        }
    }

    /// Ends the span now.
    pub fn end(self) {}
}

impl Drop for Span {
    fn drop(&mut self) {
        if let Some(tracer) = self.tracer.take() {
            let span = FinishedSpan {
                name: std::mem::take(&mut self.data.name),
                attributes: std::mem::take(&mut self.data.attributes),
                error: self.data.error.take(),
                end_unix_nanos: now_nanos(),
                ..self.data
            };
            tracer.finish(span);
        }
    }
}

/// The trace one plugin call's host calls join: the tracer (none: telemetry off) and the
/// call's span as their parent. Cheap to clone; capabilities keep one per call.
#[derive(Clone, Default)]
pub struct CallTrace {
    tracer: Option<Arc<Tracer>>,
    parent: Option<SpanContext>,
}

impl CallTrace {
    /// The trace of a call whose `traceparent` is its handle span's.
    pub fn new(tracer: Option<Arc<Tracer>>, traceparent: Option<&str>) -> CallTrace {
        CallTrace { parent: traceparent.and_then(SpanContext::parse), tracer }
    }

    /// A child span of the call (a key-value or SQL call, say) named by `name` (only called
    /// when telemetry is on); `None` when it is off.
    pub fn span(&self, name: impl FnOnce() -> String, kind: SpanKind) -> Option<Span> {
        let (tracer, parent) = (self.tracer.as_ref()?, self.parent?);
        Some(tracer.span(name(), kind, Some(parent)))
    }
}

/// Starts a span if there is a tracer: the usual call site, where telemetry may be off.
pub fn span(
    tracer: Option<&Arc<Tracer>>,
    name: impl Into<String>,
    kind: SpanKind,
    parent: Option<SpanContext>,
) -> Option<Span> {
    tracer.map(|tracer| tracer.span(name, kind, parent))
}

fn now_nanos() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use prost::Message;
    use tokio::io::AsyncWriteExt;

    use super::*;

    /// Waits (at most 10 s) until `condition` holds.
    async fn until(what: &str, condition: impl Fn() -> bool) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !condition() {
            assert!(std::time::Instant::now() < deadline, "not within 10 s: {what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// An OTLP/HTTP receiver on `port`: answers 200 and hands over each request's body.
    async fn receiver(port: u16) -> tokio::sync::mpsc::UnboundedReceiver<Vec<u8>> {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.expect("the port is free again");
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                if let Some((_, body)) = collector::read_request(&mut stream).await {
                    let _ =
                        stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n").await;
                    let _ = tx.send(body);
                }
            }
        });
        rx
    }

    #[tokio::test]
    async fn while_the_collector_cannot_be_reached_spans_are_counted_not_recorded_and_then_recorded_again() {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port(); // closed again
        let settings = TelemetrySettings { otlp_endpoint: Some(format!("http://127.0.0.1:{port}")) };
        let tracer = Tracer::start(&settings, "svc").unwrap().expect("an endpoint is configured");
        let failed = || tracer.counters().snapshot().2;

        tracer.span("first", SpanKind::Consumer, None).end();
        until("the failed export marks the collector unreachable", || tracer.queue.collector_unreachable()).await;
        assert_eq!(failed(), 1, "the first span was lost in the failed export");
        let unrecorded = tracer.span("second", SpanKind::Consumer, None);
        assert!(unrecorded.tracer.is_none(), "a span is not recorded while the collector is unreachable");
        assert!(unrecorded.context().sampled, "its trace goes on sampled to what the message causes");
        unrecorded.end();
        assert_eq!(failed(), 2, "and it is counted as failed");

        let mut bodies = receiver(port).await;
        until("the exporter finds the collector again", || !tracer.queue.collector_unreachable()).await;
        tracer.span("third", SpanKind::Consumer, None).end();
        let body = tokio::time::timeout(Duration::from_secs(10), bodies.recv()).await.expect("an export").unwrap();
        let request = ExportTraceServiceRequest::decode(body.as_slice()).expect("OTLP protobuf");
        let names: Vec<&str> = request.resource_spans[0].scope_spans[0].spans.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["third"]);
        until("the export is counted", || tracer.counters().snapshot().0 == 1).await;
        assert_eq!(failed(), 2);
    }
}
