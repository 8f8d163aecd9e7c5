//! `[service] delivery = "goamqp"` (issue 26): answers and plugin sends go out without
//! publisher confirms and a request is acked once its answer is written — goamqp's own
//! guarantee, chosen knowingly. These tests show what it does on the wire and exactly what it
//! can lose; `requests.rs` holds the default's promise against the same broker policy.

use std::time::Duration;

use warren::config::Delivery;
use warren_tests::*;

/// The channels of the host's connection (`warren <service>`), as the broker lists them.
fn host_channels(service: &str) -> Vec<serde_json::Value> {
    let name = format!("warren {service}");
    let connection = broker_listing("list_connections", &["pid", "client_properties"])
        .into_iter()
        .find(|c| c["client_properties"].to_string().contains(&format!("\"{name}\"")))
        .unwrap_or_else(|| panic!("no connection named {name}"));
    broker_listing("list_channels", &["connection", "confirm", "consumer_count"])
        .into_iter()
        .filter(|c| c["connection"] == connection["pid"])
        .collect()
}

broker_test! {
    /// In goamqp's mode the host answers on a channel the broker lists without confirms
    /// (dead-letter and retry copies keep a confirmed one of their own), and a request is
    /// answered as usual.
    async fn goamqp_delivery_publishes_answers_without_confirms() {
        let service = unique_service("delivery");
        let mut config = config(&service, &requests(&[("echo", "echo")]));
        config.delivery = Delivery::Goamqp;
        let mut s = Scenario::from_config(config, &["echo"]).await;
        s.client.request("echo", b"hello").await;
        assert_eq!(s.client.response(DEADLINE).await.expect("answered").data, b"hello");
        let channels = host_channels(&service);
        let confirms: Vec<bool> = channels.iter().filter_map(|c| c["confirm"].as_bool()).collect();
        assert!(confirms.contains(&false), "no unconfirmed publish channel: {channels:?}");
        assert!(confirms.contains(&true), "copies lost their confirmed channel: {channels:?}");
        s.finish().await;
    }
}

broker_test! {
    /// What goamqp's guarantee can lose, exactly: the broker refuses an answer (a
    /// `max-length 0` / `reject-publish` policy on the requester's queue nacks it) after the
    /// host wrote it. Without confirms the host cannot know: the request is acked, handled
    /// once, and its answer is gone — where the default (`requests.rs`) keeps the request
    /// and answers it once the broker takes answers again.
    async fn goamqp_delivery_acks_an_answer_the_broker_then_refuses() {
        let service = unique_service("delivery-lost");
        let metrics = free_address();
        let mut config = config(&service, &requests(&[("echo", "echo")]));
        config.metrics = Some(metrics);
        config.delivery = Delivery::Goamqp;
        let mut s = Scenario::from_config(config, &["echo"]).await;
        let policy = s.refuse_answers().await;

        s.client.request("echo", b"lost").await;
        eventually("the request is acked once its answer is written", || messages_total(metrics, "echo", "acked") == 1.0)
            .await;
        wait_until_settled(&s.request_queue()).await;
        rabbitmqctl(&["clear_policy", &policy]);
        assert!(s.client.response(Duration::from_secs(2)).await.is_none(), "the refused answer arrived after all");
        assert_eq!(messages_total(metrics, "echo", "requeued_host_failure"), 0.0, "handled again: that is the default's promise");
        s.finish().await;
    }
}
