//! What operators see, on the real broker: `/metrics` counters that move with real traffic,
//! `/healthz`, `/readyz`, and W3C trace context on every response.

use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable, LongString};
use warren_tests::*;

broker_test! {
    async fn metrics_count_real_messages_by_plugin_and_outcome() {
        let service = unique_service("metrics");
        let addr = free_address();
        let mut config = config(&service, &requests(&[("greet", "greet"), ("chaos", "chaos")]));
        config.metrics = Some(addr);
        let mut s = Scenario::from_config(config, &["greet", "chaos"]).await;

        for i in 0..3 {
            s.client.request("greet", format!(r#"{{"name":"Ada {i}"}}"#).as_bytes()).await;
            s.client.response(DEADLINE).await.expect("answered");
        }
        s.client.request("greet", b"not json").await;
        s.client.request("chaos", b"panic").await;
        s.dead.next(DEADLINE).await.expect("rejected");
        s.dead.next(DEADLINE).await.expect("rejected");

        let expected = [
            "warren_ready 1",
            "warren_messages_total{plugin=\"greet\",outcome=\"acked\"} 3",
            "warren_messages_total{plugin=\"greet\",outcome=\"rejected\"} 1",
            "warren_messages_total{plugin=\"chaos\",outcome=\"faulted\"} 1",
            "warren_handle_seconds_count{plugin=\"greet\"} 4",
            "warren_in_flight{plugin=\"greet\"} 0",
            "warren_plugin_generation{plugin=\"greet\"} 1",
        ];
        let mut last = String::new();
        eventually("the counters match the traffic", || {
            let (status, body) = http_get(addr, "/metrics");
            last = body;
            status == 200 && expected.iter().all(|line| last.lines().any(|l| l == *line))
        })
        .await;
        assert!(last.contains("# TYPE warren_handle_seconds histogram"), "{last}");
        // What a plugin costs: its compiled code while idle, its memory per message in flight.
        let gauge = |name: &str| -> u64 {
            let prefix = format!("{name}{{plugin=\"greet\"}} ");
            last.lines().find_map(|l| l.strip_prefix(prefix.as_str())).and_then(|v| v.parse().ok()).unwrap_or(0)
        };
        assert!(gauge("warren_plugin_code_bytes") > 64 * 1024, "{last}");
        let peak = gauge("warren_plugin_memory_peak_bytes");
        assert!((64 * 1024..64 << 20).contains(&peak), "greet's calls used {peak} bytes of linear memory");
        assert_eq!(http_get(addr, "/healthz").0, 200);
        assert_eq!(http_get(addr, "/readyz"), (200, "ready\n".to_string()));
        s.finish().await;
    }
}

broker_test! {
    async fn trace_context_is_carried_or_started() {
        let mut s = Scenario::start("traces", &[("echo", "echo")], "", &[]).await;
        // None came in: a new one is started for the response.
        s.client.request("echo", b"x").await;
        let response = s.client.response(DEADLINE).await.expect("answered");
        assert_goamqp_message(&response, "go-client", &[]);
        let started = header(&response, "traceparent").expect("a traceparent");
        let parts: Vec<&str> = started.split('-').collect();
        assert_eq!(parts.len(), 4, "{started}");
        assert_eq!((parts[0], parts[1].len(), parts[2].len(), parts[3]), ("00", 32, 16, "01"), "{started}");
        assert!(parts[1].chars().all(|c| c.is_ascii_hexdigit()));

        // One came in: it is carried on unchanged.
        let incoming = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let mut headers = FieldTable::default();
        headers.insert("service".into(), AMQPValue::LongString(LongString::from("go-client")));
        headers.insert("traceparent".into(), AMQPValue::LongString(LongString::from(incoming)));
        s.client.publish("echo", b"y", BasicProperties::default().with_headers(headers)).await;
        assert_eq!(header(&s.client.response(DEADLINE).await.expect("answered"), "traceparent").as_deref(), Some(incoming));
        s.finish().await;
    }
}
