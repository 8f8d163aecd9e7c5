//! OpenTelemetry traces out of the host (issue 25), caught by a real OTLP/HTTP collector the
//! test starts on 127.0.0.1 and decoded with OpenTelemetry's own protobuf types: one request
//! through a plugin that calls out over HTTP and publishes an event is one connected trace,
//! continuing the requester's `traceparent`; a collector that is gone costs the service
//! nothing but the spans, which are counted.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable, LongString};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::Span;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use prost::Message;
use warren_tests::*;

/// A collector: every span POSTed to `/v1/traces`, with its resource's `service.name`.
struct Collector {
    addr: SocketAddr,
    spans: Arc<Mutex<Vec<(String, Span)>>>,
}

impl Collector {
    fn start() -> Collector {
        let server = tiny_http::Server::http("127.0.0.1:0").expect("the collector listens");
        let addr = server.server_addr().to_ip().expect("an IP address");
        let spans: Arc<Mutex<Vec<(String, Span)>>> = Arc::default();
        let caught = spans.clone();
        std::thread::spawn(move || {
            for mut request in server.incoming_requests() {
                let mut body = Vec::new();
                let _ = request.as_reader().read_to_end(&mut body);
                let path_ok = request.url() == "/v1/traces";
                let typed = request
                    .headers()
                    .iter()
                    .any(|h| h.field.equiv("content-type") && h.value.as_str() == "application/x-protobuf");
                if let (true, true, Ok(export)) = (path_ok, typed, ExportTraceServiceRequest::decode(body.as_slice())) {
                    for resource_spans in export.resource_spans {
                        let service = resource_spans
                            .resource
                            .iter()
                            .flat_map(|r| r.attributes.iter())
                            .find(|a| a.key == "service.name")
                            .and_then(|a| match a.value.as_ref()?.value.as_ref()? {
                                Value::StringValue(s) => Some(s.clone()),
                                _ => None,
                            })
                            .unwrap_or_default();
                        for scope in resource_spans.scope_spans {
                            caught.lock().unwrap().extend(scope.spans.into_iter().map(|s| (service.clone(), s)));
                        }
                    }
                    let _ = request.respond(tiny_http::Response::empty(200));
                } else {
                    let _ = request.respond(tiny_http::Response::empty(400));
                }
            }
        });
        Collector { addr, spans }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The spans of trace `trace_id` caught so far.
    fn trace(&self, trace_id: &[u8]) -> Vec<(String, Span)> {
        self.spans.lock().unwrap().iter().filter(|(_, s)| s.trace_id == trace_id).cloned().collect()
    }
}

/// A price service answering `/price/A1` with 2.5, recording each request's traceparent.
fn price_service() -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    let server = tiny_http::Server::http("127.0.0.1:0").expect("the price service listens");
    let addr = server.server_addr().to_ip().expect("an IP address");
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let record = seen.clone();
    std::thread::spawn(move || {
        for request in server.incoming_requests() {
            let traceparent = request.headers().iter().find(|h| h.field.equiv("traceparent"));
            record.lock().unwrap().push(traceparent.map(|h| h.value.to_string()).unwrap_or_default());
            let _ = request.respond(tiny_http::Response::from_string(r#"{"price": 2.5}"#));
        }
    });
    (addr, seen)
}

fn text(span: &Span, key: &str) -> Option<String> {
    span.attributes.iter().find(|a| a.key == key).and_then(|a| match a.value.as_ref()?.value.as_ref()? {
        Value::StringValue(s) => Some(s.clone()),
        Value::IntValue(n) => Some(n.to_string()),
        _ => None,
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The span id in a `traceparent`.
fn span_id_of(traceparent: &str) -> String {
    traceparent.split('-').nth(2).unwrap_or_default().to_string()
}

broker_test! {
    /// A goamqp-style client sends a request with its own `traceparent`; `enrich` asks the
    /// price service and publishes `line.priced`; the answer goes back. The collector gets one
    /// trace, the client's, shaped: process (CONSUMER, child of the client's span) → handle
    /// (INTERNAL) → the HTTP call (CLIENT) and the event's publish (PRODUCER); and the answer's
    /// publish (PRODUCER, child of process). Each outgoing message or request carries the
    /// `traceparent` of its own span, so the next hop joins the trace where it belongs.
    async fn one_request_is_one_connected_trace() {
        let service = unique_service("otel");
        let collector = Collector::start();
        let (prices, seen) = price_service();
        let cleanup = Cleanup::new();
        cleanup.service(&service).shared_exchange("events.topic.exchange");
        let mut events =
            Tap::bind("events.topic.exchange", lapin::ExchangeKind::Topic, &["line.priced"], &cleanup).await;
        let rest = format!(
            "{}[plugin.enrich]\nhttp = [\"http://{prices}\"]\npublish = [\"events\"]\n[telemetry]\notlp_endpoint = \"{}\"\n",
            requests(&[("enrich", "enrich")]),
            collector.url()
        );
        let host = start(&config(&service, &rest)).await;
        let mut client = GoClient::new(&service, &format!("{service}-client"), &["enrich"]).await;

        let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
        let client_span = "00f067aa0ba902b7";
        let mut headers = FieldTable::default();
        headers.insert("service".into(), AMQPValue::LongString(LongString::from(client.name.as_str())));
        let traceparent = format!("00-{trace_id}-{client_span}-01");
        headers.insert("traceparent".into(), AMQPValue::LongString(LongString::from(traceparent.as_str())));
        let line = format!(r#"{{"sku":"A1","qty":2,"catalogue":"http://{prices}","announce":true}}"#);
        client.publish("enrich", line.as_bytes(), BasicProperties::default().with_headers(headers)).await;
        let answer = client.response(DEADLINE).await.expect("answered");
        assert!(String::from_utf8_lossy(&answer.data).contains("\"total\":5.0"), "{:?}", answer.data);
        let event = events.next_from(&service).await.expect("the event was published");

        let trace_bytes: Vec<u8> = (0..16).map(|i| u8::from_str_radix(&trace_id[2 * i..2 * i + 2], 16).unwrap()).collect();
        eventually("the collector has the trace's five spans", || collector.trace(&trace_bytes).len() >= 5).await;
        let spans = collector.trace(&trace_bytes);
        assert_eq!(spans.len(), 5, "{spans:#?}");
        assert!(spans.iter().all(|(name, _)| *name == service), "resource service.name is the service");
        let by_kind = |kind: SpanKind, name_part: &str| {
            spans
                .iter()
                .map(|(_, s)| s)
                .find(|s| s.kind == kind as i32 && s.name.contains(name_part))
                .unwrap_or_else(|| panic!("no {kind:?} span named *{name_part}*: {spans:#?}"))
                .clone()
        };
        let process = by_kind(SpanKind::Consumer, "process");
        let handle = by_kind(SpanKind::Internal, "handle enrich");
        let http = by_kind(SpanKind::Client, "GET");
        let event_publish = by_kind(SpanKind::Producer, "events.topic.exchange");
        let answer_publish = by_kind(SpanKind::Producer, "headers.exchange.response");
        assert_eq!(hex(&process.parent_span_id), client_span, "process continues the client's span");
        assert_eq!(handle.parent_span_id, process.span_id);
        assert_eq!(http.parent_span_id, handle.span_id);
        assert_eq!(event_publish.parent_span_id, handle.span_id);
        assert_eq!(answer_publish.parent_span_id, process.span_id);
        assert_eq!(text(&process, "messaging.system").as_deref(), Some("rabbitmq"));
        assert_eq!(text(&process, "messaging.rabbitmq.destination.routing_key").as_deref(), Some("enrich"));
        assert_eq!(text(&process, "warren.plugin").as_deref(), Some("enrich"));
        assert_eq!(text(&process, "warren.outcome").as_deref(), Some("acked"));
        assert_eq!(text(&event_publish, "messaging.rabbitmq.destination.routing_key").as_deref(), Some("line.priced"));
        assert_eq!(text(&http, "http.response.status_code").as_deref(), Some("200"));
        // Each hop carries its own span's context.
        assert_eq!(span_id_of(&seen.lock().unwrap()[0]), hex(&http.span_id), "the price service's traceparent");
        let carried = |delivery: &lapin::message::Delivery| span_id_of(&header(delivery, "traceparent").unwrap());
        assert_eq!(carried(&event), hex(&event_publish.span_id), "the event's traceparent");
        assert_eq!(carried(&answer), hex(&answer_publish.span_id), "the answer's traceparent");
        assert!(header(&answer, "traceparent").unwrap().contains(trace_id), "the answer stays in the client's trace");
        client.cleanup().await;
        host.stop().await.unwrap();
    }
}

broker_test! {
    /// The collector is gone (nothing listens at the endpoint): 2,000 requests, 100 in flight,
    /// are all answered; the spans that could not be exported are counted on `/metrics`
    /// (failed exports, and drops once the exporter's queue is full) — none made a message
    /// wait. The rate with and without a collector is the benchmark's to compare, not this test's.
    async fn a_dead_collector_costs_the_service_nothing_but_spans() {
        let service = unique_service("otel-dead");
        let cleanup = Cleanup::new();
        cleanup.service(&service);
        let gone = free_address();
        let metrics = free_address();
        let rest = format!("{}[telemetry]\notlp_endpoint = \"http://{gone}\"\n", requests(&[("echo", "echo")]));
        let mut config = config(&service, &rest);
        config.metrics = Some(metrics);
        let host = start(&config).await;
        let mut client = GoClient::new(&service, &format!("{service}-client"), &["echo"]).await;
        let mut answered: BTreeMap<Vec<u8>, usize> = BTreeMap::new();
        for round in 0..20 {
            for n in 0..100 {
                client.request("echo", format!("{round}-{n}").as_bytes()).await;
            }
            for _ in 0..100 {
                let answer = client.response(DEADLINE).await.expect("every request is answered");
                *answered.entry(answer.data).or_default() += 1;
            }
        }
        assert_eq!(answered.len(), 2000);
        let lost = || {
            let (_, text) = http_get(metrics, "/metrics");
            let value = |name: &str| {
                text.lines().find_map(|l| l.strip_prefix(&format!("{name} "))?.parse::<f64>().ok()).unwrap_or(0.0)
            };
            value("warren_telemetry_spans_failed_total") + value("warren_telemetry_spans_dropped_total")
        };
        eventually("the spans that could not be exported are counted", || lost() >= 1.0).await;
        let (_, text) = http_get(metrics, "/metrics");
        assert!(text.contains("warren_telemetry_spans_exported_total 0"), "{text}");
        tokio::time::sleep(Duration::from_millis(10)).await;
        client.cleanup().await;
        host.stop().await.unwrap();
    }
}

broker_test! {
    /// A key-value call is a span of the plugin call that made it: `counter` increments its
    /// count in the embedded store, and the trace holds process → handle counter → the
    /// `increment counters` CLIENT span (`db.system.name = redb`).
    async fn a_key_value_call_is_a_span_of_its_plugin_call() {
        let service = unique_service("otel-kv");
        let collector = Collector::start();
        let cleanup = Cleanup::new();
        cleanup.service(&service);
        let store = std::env::temp_dir().join(format!("warren-kv-{service}"));
        cleanup.dir(&store);
        let rest = format!(
            "{}[plugin.counter]\nkeyvalue = [\"counters\"]\n[keyvalue]\npath = \"{}\"\n[telemetry]\notlp_endpoint = \"{}\"\n",
            requests(&[("count", "counter")]),
            store.join("kv").display(),
            collector.url()
        );
        std::fs::create_dir_all(&store).unwrap();
        let host = start(&config(&service, &rest)).await;
        let mut client = GoClient::new(&service, &format!("{service}-client"), &["count"]).await;
        client.request("count", br#"{"name":"ada"}"#).await;
        let answer = client.response(DEADLINE).await.expect("answered");
        assert!(String::from_utf8_lossy(&answer.data).contains("\"count\":1"), "{:?}", answer.data);
        let traceparent = header(&answer, "traceparent").expect("a traceparent");
        let trace_hex = traceparent.split('-').nth(1).unwrap().to_string();
        let trace_id: Vec<u8> = (0..16).map(|i| u8::from_str_radix(&trace_hex[2 * i..2 * i + 2], 16).unwrap()).collect();
        let find = |kind: SpanKind, part: &str| {
            collector.trace(&trace_id).into_iter().map(|(_, s)| s).find(|s| s.kind == kind as i32 && s.name.contains(part))
        };
        eventually("the key-value span arrives", || find(SpanKind::Client, "increment counters").is_some()).await;
        let kv = find(SpanKind::Client, "increment counters").unwrap();
        let handle = find(SpanKind::Internal, "handle counter").expect("the handle span");
        assert_eq!(kv.parent_span_id, handle.span_id, "the key-value call is the plugin call's child");
        assert_eq!(text(&kv, "db.system.name").as_deref(), Some("redb"));
        assert_eq!(text(&kv, "db.collection.name").as_deref(), Some("counters"));
        client.cleanup().await;
        host.stop().await.unwrap();
    }
}
