//! The exporter: a task that takes finished spans from the tracer's bounded queue, batches
//! them (up to [`BATCH_SPANS`], or what came within [`BATCH_EVERY`]), encodes each batch as an
//! OTLP `ExportTraceServiceRequest` (the `opentelemetry-proto` types, protobuf) and POSTs it to
//! the collector's `/v1/traces`. Each POST is bounded by [`EXPORT_TIMEOUT`]; a batch that
//! fails is counted and dropped (never retried: the queue behind it would only grow), and the
//! failure is logged once a minute at most.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status, span, status};
use prost::Message;
use tokio::sync::mpsc;

use super::collector::Collector;
use super::{FinishedSpan, SpanKind, Value};
use crate::config::TelemetrySettings;

/// The most spans one export carries.
pub const BATCH_SPANS: usize = 512;
/// How long a span waits for its batch at most.
pub const BATCH_EVERY: Duration = Duration::from_secs(1);
/// How long one export may take before it is given up.
pub const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);
/// How often a failing collector is logged at most.
const WARN_EVERY: Duration = Duration::from_secs(60);

/// What became of the spans the host recorded.
#[derive(Debug, Default)]
pub struct Counters {
    exported: AtomicU64,
    dropped: AtomicU64,
    failed: AtomicU64,
}

impl Counters {
    pub(super) fn dropped(&self) {
        self.dropped.fetch_add(1, Ordering::Relaxed);
    }

    /// (exported, dropped because the queue was full, lost in failed exports).
    pub fn snapshot(&self) -> (u64, u64, u64) {
        (
            self.exported.load(Ordering::Relaxed),
            self.dropped.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        )
    }
}

/// The URL spans are POSTed to: `[telemetry] otlp_endpoint` (a base URL, `/v1/traces`
/// appended), else `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` (used as given), else
/// `OTEL_EXPORTER_OTLP_ENDPOINT` (a base URL). `None`: telemetry is off.
pub fn endpoint(settings: &TelemetrySettings) -> Option<String> {
    let env = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
    let base = |url: String| format!("{}/v1/traces", url.trim_end_matches('/'));
    settings
        .otlp_endpoint
        .clone()
        .map(base)
        .or_else(|| env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
        .or_else(|| env("OTEL_EXPORTER_OTLP_ENDPOINT").map(base))
}

/// The exporter task: runs until the tracer (every sender) is gone, then sends what is left.
pub async fn run(
    collector: Collector,
    service: String,
    mut spans: mpsc::Receiver<FinishedSpan>,
    counters: std::sync::Arc<Counters>,
) {
    let mut last_warning: Option<Instant> = None;
    let mut open = true;
    while open {
        let mut batch = Vec::new();
        let deadline = tokio::time::Instant::now() + BATCH_EVERY;
        while batch.len() < BATCH_SPANS {
            match tokio::time::timeout_at(deadline, spans.recv()).await {
                Ok(Some(span)) => batch.push(span),
                Ok(None) => {
                    open = false;
                    break;
                }
                Err(_) => break,
            }
        }
        if batch.is_empty() {
            continue;
        }
        let count = batch.len() as u64;
        let body = encode(&service, batch);
        match tokio::time::timeout(EXPORT_TIMEOUT, collector.post(body)).await {
            Ok(Ok(())) => {
                counters.exported.fetch_add(count, Ordering::Relaxed);
            }
            failed => {
                counters.failed.fetch_add(count, Ordering::Relaxed);
                let why = match failed {
                    Ok(Err(error)) => error,
                    _ => format!("no answer within {} s", EXPORT_TIMEOUT.as_secs()),
                };
                if last_warning.is_none_or(|at| at.elapsed() >= WARN_EVERY) {
                    last_warning = Some(Instant::now());
                    tracing::warn!(endpoint = %collector.url, error = %why, "could not export spans to the collector; they are dropped and counted (warren_telemetry_spans_failed_total); message handling goes on");
                }
            }
        }
    }
}

/// The OTLP request for `spans` of service `service`.
pub fn encode(service: &str, spans: Vec<FinishedSpan>) -> Vec<u8> {
    let resource = Resource {
        attributes: vec![attribute("service.name", Value::Text(service.to_string()))],
        ..Default::default()
    };
    let scope =
        InstrumentationScope { name: "warren".into(), version: env!("CARGO_PKG_VERSION").into(), ..Default::default() };
    let request = ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(resource),
            scope_spans: vec![ScopeSpans {
                scope: Some(scope),
                spans: spans.into_iter().map(otlp_span).collect(),
                ..Default::default()
            }],
            ..Default::default()
        }],
    };
    request.encode_to_vec()
}

fn otlp_span(span: FinishedSpan) -> Span {
    let kind = match span.kind {
        SpanKind::Internal => span::SpanKind::Internal,
        SpanKind::Client => span::SpanKind::Client,
        SpanKind::Producer => span::SpanKind::Producer,
        SpanKind::Consumer => span::SpanKind::Consumer,
    };
    let status = match span.error {
        Some(message) => Status { message, code: status::StatusCode::Error as i32 },
        None => Status { message: String::new(), code: status::StatusCode::Unset as i32 },
    };
    Span {
        trace_id: span.context.trace_id.to_vec(),
        span_id: span.context.span_id.to_vec(),
        parent_span_id: span.parent.map(|p| p.to_vec()).unwrap_or_default(),
        flags: u32::from(span.context.sampled),
        name: span.name,
        kind: kind as i32,
        start_time_unix_nano: span.start_unix_nanos,
        end_time_unix_nano: span.end_unix_nanos,
        attributes: span.attributes.into_iter().map(|(key, value)| attribute(key, value)).collect(),
        status: Some(status),
        ..Default::default()
    }
}

fn attribute(key: &str, value: Value) -> KeyValue {
    let value = match value {
        Value::Text(text) => any_value::Value::StringValue(text),
        Value::Int(n) => any_value::Value::IntValue(n),
        Value::Bool(b) => any_value::Value::BoolValue(b),
    };
    KeyValue { key: key.to_string(), value: Some(AnyValue { value: Some(value) }) }
}
