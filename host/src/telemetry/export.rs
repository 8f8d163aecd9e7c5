//! The exporter: the [`SpanQueue`] finished spans wait in, and a task that takes them every
//! [`BATCH_EVERY`] (or as soon as [`BATCH_SPANS`] are waiting), encodes each batch of up to
//! [`BATCH_SPANS`] as an OTLP `ExportTraceServiceRequest` (the `opentelemetry-proto` types,
//! protobuf) and POSTs it to the collector's `/v1/traces`. Each POST is bounded by
//! [`EXPORT_TIMEOUT`]; a batch that fails is counted and dropped (never retried: the queue
//! behind it would only grow), and the failure is logged once a minute at most.
//!
//! A span joins the queue under a short lock and wakes nobody: waking the exporter for each
//! span (a tokio channel) cost a thread wake-up per span.
//!
//! While the collector cannot be reached (an export failed to connect), spans are not
//! recorded at all — they would only be lost — and are counted as failed; the exporter tries
//! to connect once per [`BATCH_EVERY`] and recording resumes as soon as it can. A dead
//! collector then costs a message no more than a sampled-out trace does.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::trace::v1::{span, status};
use prost::encoding::{self, WireType};
use tokio::sync::Notify;

use super::collector::{Collector, PostError};
use super::{FinishedSpan, QUEUE_SPANS, SpanKind, Value};
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

    /// A span not recorded because the collector cannot be reached.
    pub(super) fn failed(&self) {
        self.failed.fetch_add(1, Ordering::Relaxed);
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

/// Finished spans waiting for the exporter, at most [`QUEUE_SPANS`].
#[derive(Default)]
pub struct SpanQueue {
    spans: Mutex<Vec<FinishedSpan>>,
    batch_ready: Notify,
    closed: AtomicBool,
    collector_unreachable: AtomicBool,
}

impl SpanQueue {
    /// Adds `span` without waiting for anything; `false` when the queue is full (the span is
    /// dropped). Wakes the exporter only when a whole batch is waiting.
    pub fn push(&self, span: FinishedSpan) -> bool {
        let mut spans = self.spans.lock().unwrap_or_else(PoisonError::into_inner);
        if spans.len() >= QUEUE_SPANS {
            return false;
        }
        spans.push(span);
        let batch_ready = spans.len() == BATCH_SPANS;
        drop(spans);
        if batch_ready {
            self.batch_ready.notify_one();
        }
        true
    }

    /// No span comes any more: the exporter sends what is left and ends.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.batch_ready.notify_one();
    }

    /// Whether the last try to reach the collector failed: spans are not worth recording.
    pub fn collector_unreachable(&self) -> bool {
        self.collector_unreachable.load(Ordering::Relaxed)
    }

    fn take(&self) -> Vec<FinishedSpan> {
        let fresh = Vec::with_capacity(BATCH_SPANS);
        std::mem::replace(&mut *self.spans.lock().unwrap_or_else(PoisonError::into_inner), fresh)
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

/// The exporter task: runs until the queue is closed (the tracer is gone), then sends what is
/// left.
pub async fn run(
    collector: Collector,
    service: String,
    queue: std::sync::Arc<SpanQueue>,
    counters: std::sync::Arc<Counters>,
) {
    let mut last_warning: Option<Instant> = None;
    let mut scratch = Vec::new();
    loop {
        let closing = queue.closed.load(Ordering::Acquire);
        if queue.collector_unreachable() && collector.reachable().await {
            queue.collector_unreachable.store(false, Ordering::Relaxed);
            tracing::info!(endpoint = %collector.url, "the trace collector answers again: recording spans");
        }
        let mut spans = queue.take().into_iter().peekable();
        while spans.peek().is_some() {
            let batch: Vec<FinishedSpan> = spans.by_ref().take(BATCH_SPANS).collect();
            let count = batch.len() as u64;
            let body = encode(&service, &batch, &mut scratch);
            drop(batch);
            if let Err(PostError::Unreachable(_)) = export(&collector, body, count, &counters, &mut last_warning).await
            {
                queue.collector_unreachable.store(true, Ordering::Relaxed);
            }
        }
        if closing {
            return;
        }
        tokio::select! {
            () = queue.batch_ready.notified() => {}
            () = tokio::time::sleep(BATCH_EVERY) => {}
        }
    }
}

/// POSTs one encoded batch of `count` spans, counting what became of it (and logging a
/// failure, once a minute at most); the failure is returned for the caller to read.
async fn export(
    collector: &Collector,
    body: Vec<u8>,
    count: u64,
    counters: &Counters,
    last_warning: &mut Option<Instant>,
) -> Result<(), PostError> {
    let failure = match tokio::time::timeout(EXPORT_TIMEOUT, collector.post(body)).await {
        Ok(Ok(())) => {
            counters.exported.fetch_add(count, Ordering::Relaxed);
            return Ok(());
        }
        Ok(Err(failure)) => failure,
        Err(_) => PostError::Failed(format!("no answer within {} s", EXPORT_TIMEOUT.as_secs())),
    };
    counters.failed.fetch_add(count, Ordering::Relaxed);
    if last_warning.is_none_or(|at| at.elapsed() >= WARN_EVERY) {
        *last_warning = Some(Instant::now());
        tracing::warn!(endpoint = %collector.url, error = %failure, "could not export spans to the collector; they are dropped and counted (warren_telemetry_spans_failed_total); message handling goes on");
    }
    Err(failure)
}

/// The OTLP request (`ExportTraceServiceRequest`, protobuf) for `spans` of service `service`.
///
/// Written straight from the finished spans with prost's wire primitives, field by field in
/// OTLP's tag order: building `opentelemetry-proto`'s message types first cost an allocation
/// per id and attribute, and prost's nested length computations, about half of what tracing
/// cost the host. The unit tests hold it to those types: the bytes are the ones prost writes
/// for the same spans, and they decode as the same request.
///
/// The spans are written into `scratch` first (the exporter keeps it from batch to batch, so a
/// batch's hundreds of KiB are not fresh pages each time), then copied once behind the
/// envelope into the request.
pub fn encode(service: &str, spans: &[FinishedSpan], scratch: &mut Vec<u8>) -> Vec<u8> {
    scratch.clear();
    let mut one = Vec::with_capacity(512);
    for span in spans {
        one.clear();
        write_span(&mut one, span);
        bytes_field(scratch, 2, &one); // ScopeSpans.spans
    }
    let mut scope = Vec::with_capacity(32);
    string_field(&mut scope, 1, "warren"); // InstrumentationScope.name
    string_field(&mut scope, 2, env!("CARGO_PKG_VERSION")); // .version
    let mut resource = Vec::with_capacity(service.len() + 32);
    attribute_field(&mut resource, 1, "service.name", &Value::Text(service.to_string())); // Resource.attributes
    let scope_spans_len = field_len(1, scope.len()) + scratch.len();
    let resource_spans_len = field_len(1, resource.len()) + field_len(2, scope_spans_len);
    let mut request = Vec::with_capacity(field_len(1, resource_spans_len));
    length_delimited(&mut request, 1, resource_spans_len); // ExportTraceServiceRequest.resource_spans
    bytes_field(&mut request, 1, &resource); // ResourceSpans.resource
    length_delimited(&mut request, 2, scope_spans_len); // ResourceSpans.scope_spans
    bytes_field(&mut request, 1, &scope); // ScopeSpans.scope
    request.extend_from_slice(scratch); // ScopeSpans.spans
    request
}

/// The bytes a length-delimited field of `len` bytes takes at `tag`, its key and length too.
fn field_len(tag: u32, len: usize) -> usize {
    encoding::key_len(tag) + encoding::encoded_len_varint(len as u64) + len
}

/// The key and length of a length-delimited field whose `len` bytes follow.
fn length_delimited(buf: &mut Vec<u8>, tag: u32, len: usize) {
    encoding::encode_key(tag, WireType::LengthDelimited, buf);
    encoding::encode_varint(len as u64, buf);
}

/// One OTLP `Span`'s fields (trace.proto's tags), defaults left out as proto3 does.
fn write_span(buf: &mut Vec<u8>, span: &FinishedSpan) {
    let kind = match span.kind {
        SpanKind::Internal => span::SpanKind::Internal,
        SpanKind::Client => span::SpanKind::Client,
        SpanKind::Producer => span::SpanKind::Producer,
        SpanKind::Consumer => span::SpanKind::Consumer,
    };
    bytes_field(buf, 1, &span.context.trace_id);
    bytes_field(buf, 2, &span.context.span_id);
    if let Some(parent) = &span.parent {
        bytes_field(buf, 4, parent);
    }
    string_field(buf, 5, &span.name);
    varint_field(buf, 6, kind as u64);
    fixed64_field(buf, 7, span.start_unix_nanos);
    fixed64_field(buf, 8, span.end_unix_nanos);
    for (key, value) in &span.attributes {
        attribute_field(buf, 9, key, value);
    }
    // Status: a message of its own, always written (empty when the span did not fail).
    let (message, code) = match &span.error {
        Some(message) => (message.as_str(), status::StatusCode::Error as u64),
        None => ("", status::StatusCode::Unset as u64),
    };
    length_delimited(buf, 15, string_len(2, message) + varint_len(3, code));
    string_field(buf, 2, message);
    varint_field(buf, 3, code);
    if span.context.sampled {
        encoding::encode_key(16, WireType::ThirtyTwoBit, buf); // Span.flags, fixed32
        buf.extend_from_slice(&1u32.to_le_bytes());
    }
}

/// A `KeyValue` at `tag`: its key and an `AnyValue` (a oneof: written even when empty).
fn attribute_field(buf: &mut Vec<u8>, tag: u32, key: &str, value: &Value) {
    let any_len = match value {
        Value::Text(text) => field_len(1, text.len()),
        Value::Bool(_) => 2,
        Value::Int(n) => 1 + encoding::encoded_len_varint(*n as u64),
    };
    length_delimited(buf, tag, string_len(1, key) + field_len(2, any_len));
    string_field(buf, 1, key);
    length_delimited(buf, 2, any_len);
    match value {
        Value::Text(text) => bytes_field(buf, 1, text.as_bytes()),
        Value::Bool(b) => {
            encoding::encode_key(2, WireType::Varint, buf);
            encoding::encode_varint(u64::from(*b), buf);
        }
        Value::Int(n) => {
            encoding::encode_key(3, WireType::Varint, buf);
            encoding::encode_varint(*n as u64, buf); // int64: two's complement, as protobuf writes it
        }
    }
}

fn bytes_field(buf: &mut Vec<u8>, tag: u32, bytes: &[u8]) {
    length_delimited(buf, tag, bytes.len());
    buf.extend_from_slice(bytes);
}

/// A string field; left out when empty (proto3's default).
fn string_field(buf: &mut Vec<u8>, tag: u32, text: &str) {
    if !text.is_empty() {
        bytes_field(buf, tag, text.as_bytes());
    }
}

/// The bytes [`string_field`] writes.
fn string_len(tag: u32, text: &str) -> usize {
    if text.is_empty() { 0 } else { field_len(tag, text.len()) }
}

/// A varint field; left out when 0.
fn varint_field(buf: &mut Vec<u8>, tag: u32, value: u64) {
    if value != 0 {
        encoding::encode_key(tag, WireType::Varint, buf);
        encoding::encode_varint(value, buf);
    }
}

fn varint_len(tag: u32, value: u64) -> usize {
    match value {
        0 => 0,
        _ => encoding::key_len(tag) + encoding::encoded_len_varint(value),
    }
}

/// A fixed64 field; left out when 0.
fn fixed64_field(buf: &mut Vec<u8>, tag: u32, value: u64) {
    if value != 0 {
        encoding::encode_key(tag, WireType::SixtyFourBit, buf);
        buf.extend_from_slice(&value.to_le_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::SpanContext;

    fn span() -> FinishedSpan {
        FinishedSpan {
            context: SpanContext::new_root(true),
            parent: None,
            name: "q process".into(),
            kind: SpanKind::Consumer,
            start_unix_nanos: 1,
            end_unix_nanos: 2,
            attributes: vec![("messaging.system", Value::from("rabbitmq"))],
            error: None,
        }
    }

    /// What `encode` must equal: the same spans as `opentelemetry-proto`'s message types,
    /// encoded by prost.
    fn encode_with_types(service: &str, spans: Vec<FinishedSpan>) -> Vec<u8> {
        use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
        use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
        use opentelemetry_proto::tonic::resource::v1::Resource;
        use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status};
        use prost::Message;
        let attribute = |key: &str, value: Value| {
            let value = match value {
                Value::Text(text) => any_value::Value::StringValue(text),
                Value::Int(n) => any_value::Value::IntValue(n),
                Value::Bool(b) => any_value::Value::BoolValue(b),
            };
            KeyValue { key: key.to_string(), value: Some(AnyValue { value: Some(value) }) }
        };
        let otlp_span = |span: FinishedSpan| {
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
        };
        let scope = InstrumentationScope {
            name: "warren".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            ..Default::default()
        };
        ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(Resource {
                    attributes: vec![attribute("service.name", Value::Text(service.to_string()))],
                    ..Default::default()
                }),
                scope_spans: vec![ScopeSpans {
                    scope: Some(scope),
                    spans: spans.into_iter().map(otlp_span).collect(),
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
        .encode_to_vec()
    }

    #[test]
    fn spans_are_encoded_as_opentelemetry_protos_types_encode_them() {
        use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
        use prost::Message;
        let mut failed = span();
        failed.error = Some("the plugin trapped: ünïcode \n".into());
        failed.parent = Some([1, 2, 3, 4, 5, 6, 7, 8]);
        failed.kind = SpanKind::Internal;
        let mut unsampled = span();
        unsampled.context.sampled = false;
        unsampled.kind = SpanKind::Producer;
        unsampled.name = String::new();
        unsampled.attributes = vec![
            ("empty", Value::from("")),
            ("zero", Value::Int(0)),
            ("negative", Value::Int(-42)),
            ("max", Value::Int(i64::MAX)),
            ("false", Value::Bool(false)),
            ("true", Value::Bool(true)),
            ("long", Value::Text("x".repeat(300))),
        ];
        let mut client = span();
        client.kind = SpanKind::Client;
        client.start_unix_nanos = 0;
        client.attributes.clear();
        let mut scratch = Vec::new();
        for spans in
            [vec![span()], vec![failed, unsampled, client], Vec::new(), (0..BATCH_SPANS).map(|_| span()).collect()]
        {
            let written = encode("orders-ü", &spans, &mut scratch);
            assert_eq!(written, encode_with_types("orders-ü", spans.clone()), "{} spans", spans.len());
            let decoded = ExportTraceServiceRequest::decode(written.as_slice()).expect("OTLP decodes it");
            let count = decoded.resource_spans[0].scope_spans[0].spans.len();
            assert_eq!(count, spans.len());
        }
    }

    #[test]
    fn a_full_queue_drops_the_span_and_takes_more_once_emptied() {
        let queue = SpanQueue::default();
        for _ in 0..QUEUE_SPANS {
            assert!(queue.push(span()));
        }
        assert!(!queue.push(span()), "span {} must be dropped", QUEUE_SPANS + 1);
        assert_eq!(queue.take().len(), QUEUE_SPANS);
        assert!(queue.push(span()));
    }

    #[test]
    fn the_exporter_is_woken_by_a_whole_batch_not_by_each_span() {
        let queue = SpanQueue::default();
        let woken = |queue: &SpanQueue| {
            let mut context = std::task::Context::from_waker(std::task::Waker::noop());
            std::pin::pin!(queue.batch_ready.notified()).poll(&mut context).is_ready()
        };
        for _ in 1..BATCH_SPANS {
            queue.push(span());
        }
        assert!(!woken(&queue), "{} spans must not wake the exporter", BATCH_SPANS - 1);
        queue.push(span());
        assert!(woken(&queue), "a whole batch must wake the exporter");
        queue.close();
        assert!(woken(&queue), "closing must wake the exporter");
    }
}
