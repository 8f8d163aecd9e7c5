//! Retry with backoff, the RabbitMQ way (`retry_delays_ms`): a `retry` parks a copy in the
//! queue's retry queue (a message TTL that dead-letters back to the work queue), so each try
//! waits its delay and re-runs the handler's side effects once per try; after the last delay
//! the message is rejected. Asserted against goamqp-faithful peers and the broker's listings.

use std::time::{Duration, Instant};

use lapin::ExchangeKind;
use warren_tests::*;

/// `chaos` serving `flaky` with `delays`, granted to publish its side effect on `events`.
fn flaky_config(service: &str, delays: &str) -> Config {
    let rest = format!(
        "[[request]]\nrouting_key = \"flaky\"\nplugin = \"chaos\"\nretry_delays_ms = {delays}\n\
         [plugin.chaos]\npublish = [\"events\"]\n"
    );
    config(service, &rest)
}

/// Asserts that `body` was rejected to the dead letters (within `wait`) after exactly `tries`
/// tries of its side effect, and that the client got no answer.
#[allow(clippy::too_many_arguments)]
async fn assert_rejected_after_tries(
    service: &str,
    body: &[u8],
    tries: usize,
    dead: &mut DeadLetters,
    side_effects: &mut Tap,
    client: &mut GoClient,
    wait: Duration,
    expect: &str,
) {
    let rejected = dead.next(wait).await.expect(expect);
    assert_eq!(DeadLetters::death_reason(&rejected).as_deref(), Some("rejected"));
    assert_eq!(rejected.data, body);
    for n in 0..tries {
        side_effects.next_from(service).await.unwrap_or_else(|| panic!("try {n} missing"));
    }
    side_effects.assert_nothing_from(service).await;
    client.assert_no_response(&format!("{service}.direct.exchange.request.queue")).await;
}

broker_test! {
    async fn a_handler_that_fails_twice_is_answered_after_two_delays_with_three_side_effects() {
        let service = unique_service("retry");
        let cleanup = Cleanup::new();
        cleanup.service(&service);
        let config = flaky_config(&service, "[400, 800]");
        let mut tries = Tap::bind("events.topic.exchange", ExchangeKind::Topic, &["chaos.tried"], &cleanup).await;
        let host = start(&config).await;
        let mut client = GoClient::new(&service, &format!("{service}-client"), &["flaky"]).await;

        // The retry queues stand beside goamqp's queue, with the arguments that bring a
        // message back to it when its time is up.
        let request_queue = format!("{service}.direct.exchange.request.queue");
        let listed = broker_listing("list_queues", &["name", "arguments"]);
        for delay in [400, 800] {
            let name = format!("{request_queue}.retry-{delay}ms");
            let queue = listed.iter().find(|q| q["name"] == name.as_str()).unwrap_or_else(|| panic!("no {name}"));
            let arguments = queue["arguments"].to_string();
            // rabbitmqctl lists arguments as [name, type, value]; goamqp's ints are `signedint`.
            assert!(arguments.contains(&format!("[\"x-message-ttl\",\"signedint\",{delay}]")), "{name}: {arguments}");
            assert!(arguments.contains(&format!("[\"x-dead-letter-routing-key\",\"longstr\",\"{request_queue}\"]")), "{arguments}");
        }
        let goamqp_queue = listed.iter().find(|q| q["name"] == request_queue.as_str()).unwrap();
        let goamqp_arguments = goamqp_queue["arguments"].to_string();
        assert_eq!(goamqp_arguments, "[[\"x-expires\",\"signedint\",432000000]]", "goamqp's own arguments, as goamqp sends them");

        let sent = Instant::now();
        client.request("flaky", b"flaky:2").await;
        let answer = client.response(Duration::from_secs(15)).await.expect("answered after its retries");
        let took = sent.elapsed();
        assert_eq!(answer.data, b"done after 2");
        assert!(took >= Duration::from_millis(1200), "answered after {took:?}: the two delays (400 + 800 ms) were not waited");
        assert!(took < Duration::from_secs(10), "answered only after {took:?}");

        // One side effect per try: three, not more.
        for n in 0..3 {
            let tried = tries.next_from(&service).await.unwrap_or_else(|| panic!("side effect {n} missing"));
            assert_eq!(String::from_utf8_lossy(&tried.data), format!("try {n}"));
        }
        wait_until_settled(&request_queue).await;
        tries.assert_nothing_from(&service).await;
        for delay in [400, 800] {
            let retry_queue = format!("{request_queue}.retry-{delay}ms");
            assert_eq!(queue_counts(&retry_queue).await, Some((0, 0)), "{retry_queue} still holds a copy");
        }
        client.cleanup().await;
        host.stop().await.unwrap();
    }
}

broker_test! {
    async fn after_the_last_delay_the_message_is_rejected_to_the_dead_letter_exchange() {
        let service = unique_service("retry-out");
        let cleanup = Cleanup::new();
        cleanup.service(&service);
        let mut dead = DeadLetters::catch(&service).await;
        let config = flaky_config(&service, "[100, 100]");
        let mut tries = Tap::bind("events.topic.exchange", ExchangeKind::Topic, &["chaos.tried"], &cleanup).await;
        let host = start(&config).await;
        let mut client = GoClient::new(&service, &format!("{service}-client"), &["flaky"]).await;

        client.request("flaky", b"flaky:5").await;
        let expect = "rejected after two delayed retries";
        assert_rejected_after_tries(&service, b"flaky:5", 3, &mut dead, &mut tries, &mut client, Duration::from_secs(15), expect).await;
        client.cleanup().await;
        dead.cleanup().await;
        host.stop().await.unwrap();
    }
}

broker_test! {
    async fn a_plugins_own_max_retries_overrides_the_limits_default() {
        let service = unique_service("retry-own");
        let cleanup = Cleanup::new();
        cleanup.service(&service);
        let mut dead = DeadLetters::catch(&service).await;
        // [limits] allows 5 immediate retries (flaky:3 would then be answered); the plugin's
        // own table allows 1: two tries, then the message is rejected.
        let rest = "[limits]\nmax_retries = 5\n[[request]]\nrouting_key = \"flaky\"\nplugin = \"chaos\"\n\
                    [plugin.chaos]\npublish = [\"events\"]\nmax_retries = 1\n";
        let config = config(&service, rest);
        let mut tries = Tap::bind("events.topic.exchange", ExchangeKind::Topic, &["chaos.tried"], &cleanup).await;
        let host = start(&config).await;
        let mut client = GoClient::new(&service, &format!("{service}-client"), &["flaky"]).await;

        client.request("flaky", b"flaky:3").await;
        let expect = "rejected after its one retry";
        assert_rejected_after_tries(&service, b"flaky:3", 2, &mut dead, &mut tries, &mut client, DEADLINE, expect).await;
        client.cleanup().await;
        dead.cleanup().await;
        host.stop().await.unwrap();
    }
}
