//! Retry with backoff, the RabbitMQ way (`retry_delays_ms`): a `retry` parks a copy in the
//! queue's retry queue (a message TTL that dead-letters back to the work queue), so each try
//! waits its delay and re-runs the handler's side effects once per try; after the last delay
//! the message is rejected; a copy parked there survives a lost connection, and every kind of
//! consumer resumes after one. Asserted against goamqp-faithful peers and the broker's listings.

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

/// Serves `flaky` with `chaos` on `config` (delays 400 and 800 ms, wherever the config sets
/// them) and checks the promise of `retry_delays_ms`: a retry queue per delay beside goamqp's
/// queue, with the arguments that bring a message back; a handler that fails twice answered
/// only after both delays, with one side effect per try; nothing left in any queue.
async fn assert_answered_after_two_delays(service: &str, config: &Config, cleanup: &Cleanup) {
    let mut tries = Tap::bind("events.topic.exchange", ExchangeKind::Topic, &["chaos.tried"], cleanup).await;
    let host = start(config).await;
    let mut client = GoClient::new(service, &format!("{service}-client"), &["flaky"]).await;

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
        assert!(
            arguments.contains(&format!("[\"x-dead-letter-routing-key\",\"longstr\",\"{request_queue}\"]")),
            "{arguments}"
        );
    }
    let goamqp_queue = listed.iter().find(|q| q["name"] == request_queue.as_str()).unwrap();
    let goamqp_arguments = goamqp_queue["arguments"].to_string();
    assert_eq!(
        goamqp_arguments, "[[\"x-expires\",\"signedint\",432000000]]",
        "goamqp's own arguments, as goamqp sends them"
    );

    let sent = Instant::now();
    client.request("flaky", b"flaky:2").await;
    let answer = client.response(Duration::from_secs(15)).await.expect("answered after its retries");
    let took = sent.elapsed();
    assert_eq!(answer.data, b"done after 2");
    assert!(
        took >= Duration::from_millis(1200),
        "answered after {took:?}: the two delays (400 + 800 ms) were not waited"
    );
    assert!(took < Duration::from_secs(10), "answered only after {took:?}");

    // One side effect per try: three, not more.
    for n in 0..3 {
        let tried = tries.next_from(service).await.unwrap_or_else(|| panic!("side effect {n} missing"));
        assert_eq!(String::from_utf8_lossy(&tried.data), format!("try {n}"));
    }
    wait_until_settled(&request_queue).await;
    tries.assert_nothing_from(service).await;
    for delay in [400, 800] {
        let retry_queue = format!("{request_queue}.retry-{delay}ms");
        assert_eq!(queue_counts(&retry_queue).await, Some((0, 0)), "{retry_queue} still holds a copy");
    }
    client.cleanup().await;
    host.stop().await.unwrap();
}

broker_test! {
    async fn a_handler_that_fails_twice_is_answered_after_two_delays_with_three_side_effects() {
        let service = unique_service("retry");
        let cleanup = Cleanup::new();
        cleanup.service(&service);
        assert_answered_after_two_delays(&service, &flaky_config(&service, "[400, 800]"), &cleanup).await;
    }
}

broker_test! {
    /// README: `retry_delays_ms` in `[limits]` applies to every handler, not only when the
    /// handler or the plugin sets it. Here only `[limits]` names the delays. Fails if they were
    /// ignored there: no retry queues would be declared, and the immediate retries
    /// (`max_retries`) would answer within milliseconds instead of after 1.2 s.
    async fn retry_delays_from_limits_apply_to_every_handler() {
        let service = unique_service("retry-limits");
        let cleanup = Cleanup::new();
        cleanup.service(&service);
        let rest = "[limits]\nretry_delays_ms = [400, 800]\n\
                    [[request]]\nrouting_key = \"flaky\"\nplugin = \"chaos\"\n\
                    [plugin.chaos]\npublish = [\"events\"]\n";
        assert_answered_after_two_delays(&service, &config(&service, rest), &cleanup).await;
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

/// The broker's pid of the connection of the host of `service` (it names its connection
/// `warren <service>`), as `rabbitmqctl close_connection` takes it (the table output: the JSON
/// one prints pids in a form `close_connection` refuses).
fn host_connection(service: &str) -> Option<String> {
    let name = format!("warren {service}");
    rabbitmqctl(&["list_connections", "pid", "client_properties"])
        .lines()
        .find(|line| line.contains(&name))
        .and_then(|line| line.split('\t').next())
        .map(str::to_string)
}

/// Publishes `body` with header `service` = `service`, as goamqp publishes an event (the
/// sender's name) or an answer (the requester's name): no confirm, JSON, persistent.
async fn publish_as(connection: &lapin::Connection, service: &str, exchange: &str, key: &str, body: &[u8]) {
    let channel = connection.create_channel().await.unwrap();
    let mut headers = lapin::types::FieldTable::default();
    headers.insert("service".into(), lapin::types::AMQPValue::LongString(service.into()));
    let properties = lapin::BasicProperties::default()
        .with_headers(headers)
        .with_content_type("application/json".into())
        .with_delivery_mode(2);
    channel.basic_publish(exchange.into(), key.into(), Default::default(), body, properties).await.unwrap();
    bounded_close(channel.close(200, "published".into())).await;
}

broker_test! {
    /// README, "Reliability": after a lost connection the host reconnects, redeclares and
    /// resumes every consumer — not only the request queue's. One host serves a request with a
    /// 2 s retry delay, an event stream of the test's own and responses from a peer service;
    /// the event and response handlers leave a mark in a queue of the test's (`chaos`
    /// `queue:`). A `flaky:1` request is parked in the retry queue, then the broker closes the
    /// host's connection (`rabbitmqctl close_connection`, that connection only); an event and
    /// a response are published while it is gone. The host comes back on a new connection,
    /// the parked copy returns from the retry queue and is answered (`done after 1`), the
    /// event and the response each leave their mark, and every queue settles on the broker.
    /// Fails if any consumer stayed down (its queue keeps the message, no mark), or the retry
    /// copy were lost with the connection (no answer).
    async fn after_a_reconnect_event_response_consumers_and_retry_queues_resume() {
        let service = unique_service("resume");
        let cleanup = Cleanup::new();
        cleanup.service(&service).shared_exchange("events.topic.exchange");
        let (stream, peer, marks) = (format!("{service}-s"), format!("{service}-peer"), format!("{service}-marks"));
        let rest = format!(
            "[[request]]\nrouting_key = \"flaky\"\nplugin = \"chaos\"\nretry_delays_ms = [2000]\n\
             [[event]]\nrouting_key = \"thing.#\"\nplugin = \"chaos\"\nstream = \"{stream}\"\n\
             [[response]]\nservice = \"{peer}\"\nrouting_key = \"answer\"\nplugin = \"chaos\"\n\
             [plugin.chaos]\npublish = [\"events\"]\nqueues = [\"{marks}\"]\n"
        );
        let config = config(&service, &rest);
        let host = start(&config).await;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let serving = tokio::spawn(host.serve(async move {
            let _ = stopped.await;
        }));
        let mut client = GoClient::new(&service, &format!("{service}-client"), &["flaky"]).await;
        let setup = client.connection.create_channel().await.unwrap();
        let durable = lapin::options::QueueDeclareOptions { durable: true, ..Default::default() };
        setup.queue_declare(marks.as_str().into(), durable, Default::default()).await.unwrap();
        let (event_exchange, response_exchange) =
            (format!("{stream}.topic.exchange"), format!("{peer}.headers.exchange.response"));
        let mark = format!("queue:{marks}");
        let marked = async |n: u64| {
            let until = Instant::now() + DEADLINE;
            while queue_counts(&marks).await != Some((n, 0)) {
                assert!(Instant::now() < until, "{marks} holds {:?}, not {n} marks", queue_counts(&marks).await);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        };

        // Before the cut: each consumer works.
        publish_as(&client.connection, "someone", &event_exchange, "thing.created", mark.as_bytes()).await;
        publish_as(&client.connection, &service, &response_exchange, "answer", mark.as_bytes()).await;
        marked(2).await;

        // A request parked in the retry queue for 2 s, then the host's connection closed.
        let request_queue = format!("{service}.direct.exchange.request.queue");
        let retry_queue = format!("{request_queue}.retry-2000ms");
        client.request("flaky", b"flaky:1").await;
        let until = Instant::now() + DEADLINE;
        while queue_counts(&retry_queue).await != Some((1, 0)) {
            assert!(Instant::now() < until, "the retry copy never reached {retry_queue}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let first = host_connection(&service).expect("the host's connection");
        rabbitmqctl(&["close_connection", &first, "warren test: a lost connection"]);
        publish_as(&client.connection, "someone", &event_exchange, "thing.updated", mark.as_bytes()).await;
        publish_as(&client.connection, &service, &response_exchange, "answer", mark.as_bytes()).await;

        eventually("the host is back on a new connection", || host_connection(&service).is_some_and(|c| c != first)).await;
        let answer = client.response(DEADLINE).await.expect("the parked copy came back and was answered");
        assert_eq!(answer.data, b"done after 1");
        marked(4).await;
        let event_queue = format!("{stream}.topic.exchange.queue.{service}");
        let response_queue = format!("{peer}.headers.exchange.response.queue.{service}");
        for queue in [&request_queue, &retry_queue, &event_queue, &response_queue] {
            wait_until_settled(queue).await;
        }
        let _ = setup.queue_delete(marks.as_str().into(), Default::default()).await;
        client.cleanup().await;
        stop.send(()).unwrap();
        tokio::time::timeout(DEADLINE, serving).await.expect("serve returns after the signal").unwrap().expect("a clean stop");
    }
}
