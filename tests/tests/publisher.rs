//! What a publisher cannot do to a Warren host, and what a dead link cannot do (issue 22):
//! every test here sends what a publisher allowed only to publish to `S.direct.exchange.request`
//! (or to a stream) can send — any bytes AMQP allows, through the hand-made
//! [`RawPublisher`](warren_tests::raw::RawPublisher) — or cuts the host's link without closing
//! it, and asserts on the broker's own state that the bad message cost only itself.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldArray, FieldTable, LongString};
use warren_tests::raw::{self, Message, Properties, RawPublisher};
use warren_tests::relay::Relay;
use warren_tests::*;

/// A change to a message's properties, boxed so a list can hold several.
type Change<'a> = Box<dyn FnOnce(&mut Properties) + 'a>;

/// Publishes `messages` as a raw publisher would and waits until the broker processed them.
async fn publish_raw(messages: Vec<Message>) {
    tokio::task::spawn_blocking(move || {
        let mut publisher = RawPublisher::connect();
        for message in &messages {
            publisher.publish(message);
        }
        publisher.close();
    })
    .await
    .unwrap();
}

/// A request to `service`'s `key` from `sender`, with goamqp's properties changed by `change`.
fn request(service: &str, key: &[u8], sender: &str, body: &str, change: impl FnOnce(&mut Properties)) -> Message {
    let mut properties = Properties::goamqp(sender, &[]);
    change(&mut properties);
    Message {
        exchange: format!("{service}.direct.exchange.request").into_bytes(),
        routing_key: key.to_vec(),
        properties,
        body: body.as_bytes().to_vec(),
    }
}

/// The answers `client` gets within `wait`, by body.
async fn answers(client: &mut GoClient, expected: usize, wait: Duration) -> Vec<lapin::message::Delivery> {
    let until = Instant::now() + wait;
    let mut got = Vec::new();
    while got.len() < expected {
        let Some(left) = until.checked_duration_since(Instant::now()) else { break };
        match client.response(left).await {
            Some(answer) => got.push(answer),
            None => break,
        }
    }
    got
}

fn bodies(deliveries: &[lapin::message::Delivery]) -> BTreeSet<String> {
    deliveries.iter().map(|d| String::from_utf8_lossy(&d.data).into_owned()).collect()
}

broker_test! {
    /// Every short string a publisher can fill with bytes that are not UTF-8 — a header key
    /// (also one nested in a table), `message_id`, `correlation_id`, `type`, `app_id`,
    /// `reply_to`, `content_type`, `content_encoding`, `cluster_id` — reaches the handler
    /// repaired and is answered, on the host's one connection. Before the frame repair, lapin
    /// failed each such frame and closed the connection: the message stayed at the head of the
    /// queue and the host reconnected thousands of times a minute, answering nothing.
    async fn short_strings_that_are_not_utf8_cost_nothing() {
        let service = unique_service("utf8");
        let cleanup = Cleanup::new();
        cleanup.service(&service);
        let host = start(&config(&service, &requests(&[("echo", "echo")]))).await;
        let client_name = format!("{service}-client");
        let mut client = GoClient::new(&service, &client_name, &["echo"]).await;
        let connections = host_connections(&service).await;
        assert_eq!(connections.len(), 1, "the host's connections: {connections:?}");

        let bad = b"\xff\xfe".to_vec();
        let nested = raw::table(&[(b"\xffinner", raw::text(b"v"))]);
        let cases: Vec<(&str, Change)> = vec![
            ("header-key", Box::new(|p| p.headers = Some(raw::table(&[(b"service", raw::text(client_name.as_bytes())), (b"\xff\xfekey", raw::text(b"v"))])))),
            ("nested-key", Box::new(|p| p.headers = Some(raw::table(&[(b"service", raw::text(client_name.as_bytes())), (b"t", [vec![b'F'], nested].concat())])))),
            ("message-id", Box::new({ let bad = bad.clone(); |p| p.message_id = Some(bad) })),
            ("correlation-id", Box::new({ let bad = bad.clone(); |p| p.correlation_id = Some([b"c-".to_vec(), bad].concat()) })),
            ("type", Box::new({ let bad = bad.clone(); |p| p.kind = Some(bad) })),
            ("app-id", Box::new({ let bad = bad.clone(); |p| p.app_id = Some(bad) })),
            ("reply-to", Box::new({ let bad = bad.clone(); |p| p.reply_to = Some(bad) })),
            ("content-type", Box::new({ let bad = bad.clone(); |p| p.content_type = Some([b"application/".to_vec(), bad].concat()) })),
            ("content-encoding", Box::new({ let bad = bad.clone(); |p| p.content_encoding = Some(bad) })),
            ("cluster-id", Box::new({ let bad = bad.clone(); |p| p.cluster_id = Some(bad) })),
        ];
        let expected: BTreeSet<String> = cases.iter().map(|(body, _)| body.to_string()).collect();
        let messages = cases.into_iter().map(|(body, change)| request(&service, b"echo", &client_name, body, change)).collect();
        publish_raw(messages).await;

        let got = answers(&mut client, expected.len(), DEADLINE).await;
        assert_eq!(bodies(&got), expected, "every message answered");
        let with_correlation = got.iter().find(|d| d.data == b"correlation-id").unwrap();
        assert_eq!(
            with_correlation.properties.correlation_id().as_ref().map(|c| c.as_str()),
            Some("c-??"),
            "the repaired correlation id, copied to the answer"
        );
        wait_until_settled(&format!("{service}.direct.exchange.request.queue")).await;
        assert_eq!(host_connections(&service).await, connections, "the host kept its one connection");

        client.request("echo", b"after").await;
        let after = client.response(DEADLINE).await.expect("a well-formed request after them is answered");
        assert_eq!(after.data, b"after");
        client.cleanup().await;
        host.stop().await.unwrap();
    }
}

broker_test! {
    /// An event whose routing key is not UTF-8 matches a topic pattern (`order.*` takes
    /// `order.\xff`): the handler gets it as `order.?`, and it is acked — the stream queue
    /// settles and the host keeps its connection.
    async fn a_routing_key_that_is_not_utf8_is_handled_as_repaired() {
        let service = unique_service("utf8key");
        let cleanup = Cleanup::new();
        cleanup.service(&service).shared_exchange("events.topic.exchange");
        let addr = free_address();
        let mut config = config(&service, "[[event]]\nrouting_key = \"order.*\"\nplugin = \"echo\"\n");
        config.metrics = Some(addr);
        let host = start(&config).await;
        let connections = host_connections(&service).await;
        let event = |key: &[u8]| Message {
            exchange: b"events.topic.exchange".to_vec(),
            routing_key: key.to_vec(),
            properties: Properties::goamqp("publisher", &[]),
            body: b"{}".to_vec(),
        };
        publish_raw(vec![event(b"order.\xff"), event(b"order.ok")]).await;
        eventually("both events are acked by the echo handler", || messages_total(addr, "echo", "acked") == 2.0).await;
        let (_, metrics) = http_get(addr, "/metrics");
        assert!(metrics.contains(&format!("warren_repaired_messages_total{{queue=\"events.topic.exchange.queue.{service}\"}} 1")), "{metrics}");
        wait_until_settled(&format!("events.topic.exchange.queue.{service}")).await;
        assert_eq!(host_connections(&service).await, connections, "the host kept its one connection");
        host.stop().await.unwrap();
    }
}

broker_test! {
    /// A request carrying `CC` (goamqp's own queue publisher sets it) to a handler that asks
    /// for `retry`: the retry copies go out with Warren's permissions, so they must not carry
    /// the publisher's `CC` — before, each copy also landed in the queue `CC` named (a queue the
    /// publisher may not write to) and, with retry delays, in the request queue at once,
    /// doubling each round. Now: the victim queue stays empty and exactly one copy is
    /// rejected to the dead letters at the end.
    async fn cc_on_a_retried_request_reaches_no_other_queue() {
        let service = unique_service("cc");
        let cleanup = Cleanup::new();
        cleanup.service(&service);
        let mut dead = DeadLetters::catch(&service).await;
        let victim = format!("{service}.victim");
        let request_queue = format!("{service}.direct.exchange.request.queue");
        let rest = "[[request]]\nrouting_key = \"retry\"\nplugin = \"chaos\"\nretry_delays_ms = [100, 200]\n";
        let host = start(&config(&service, rest)).await;
        let connection = connect().await;
        let channel = connection.create_channel().await.unwrap();
        channel
            .queue_declare(victim.as_str().into(), lapin::options::QueueDeclareOptions::default(), FieldTable::default())
            .await
            .unwrap();
        let client = GoClient::new(&service, &format!("{service}-client"), &["retry"]).await;
        let mut headers = FieldTable::default();
        headers.insert("service".into(), AMQPValue::LongString(LongString::from(client.name.as_str())));
        let cc = [victim.as_str(), request_queue.as_str()].map(|q| AMQPValue::LongString(LongString::from(q)));
        headers.insert("CC".into(), AMQPValue::FieldArray(FieldArray::from(cc.to_vec())));
        client.publish("retry", b"retry", BasicProperties::default().with_headers(headers)).await;

        let rejected = dead.next(DEADLINE).await.expect("rejected after its two delayed retries");
        assert_eq!(rejected.data, b"retry");
        wait_until_settled(&request_queue).await;
        for delay in [100, 200] {
            wait_until_settled(&format!("{request_queue}.retry-{delay}ms")).await;
        }
        assert!(dead.next(Duration::from_millis(500)).await.is_none(), "a second copy was dead-lettered: CC doubled it");
        assert_eq!(queue_counts(&victim).await, Some((0, 0)), "a retry copy landed in the queue CC named");
        client.cleanup().await;
        bounded_close(connection.close(200, "done".into())).await;
        dead.cleanup().await;
        host.stop().await.unwrap();
    }
}

/// A header value of `bytes` bytes: with the other headers, the retry copy's table is over
/// what one frame can carry, while the original (as the publisher sent it) still fits.
fn big_header(bytes: usize) -> AMQPValue {
    AMQPValue::LongString(LongString::from(vec![b'x'; bytes]))
}

broker_test! {
    /// A request with a 126 KiB header table, answered with `retry`: its copy cannot be sent
    /// (over a frame with the retry count added), so the original is rejected for good at once —
    /// before, it was requeued unchanged every 0.5 s, forever, holding a prefetch slot. With
    /// Warren's own dead-letter exchange the copy lands without the publisher's headers, saying
    /// so; the next request is answered on the same connection.
    async fn a_copy_that_can_never_be_sent_rejects_its_original() {
        let service = unique_service("bigcopy");
        let cleanup = Cleanup::new();
        cleanup.service(&service);
        // Warren's own dead-letter exchange `<service>.dlx` (declared as the host declares
        // it), and a queue bound to it.
        let connection = connect().await;
        let channel = connection.create_channel().await.unwrap();
        let (exchange, queue) = (format!("{service}.dlx"), format!("{service}.dead-letters"));
        let durable = lapin::options::ExchangeDeclareOptions { durable: true, ..Default::default() };
        channel.exchange_declare(exchange.as_str().into(), lapin::ExchangeKind::Fanout, durable, FieldTable::default()).await.unwrap();
        channel.queue_declare(queue.as_str().into(), Default::default(), FieldTable::default()).await.unwrap();
        channel.queue_bind(queue.as_str().into(), exchange.as_str().into(), "".into(), Default::default(), FieldTable::default()).await.unwrap();
        let mut dead = consume(&channel, &queue).await;
        let rest = format!(
            "dead_letter_exchange = \"{service}.dlx\"\n{}[[request]]\nrouting_key = \"retry\"\nplugin = \"chaos\"\n",
            requests(&[("echo", "echo")])
        );
        let host = start(&config(&service, &rest)).await;
        let connections = host_connections(&service).await;
        let mut client = GoClient::new(&service, &format!("{service}-client"), &["echo", "retry"]).await;
        let mut headers = FieldTable::default();
        headers.insert("service".into(), AMQPValue::LongString(LongString::from(client.name.as_str())));
        headers.insert("big".into(), big_header(126 << 10));
        client.publish("retry", b"retry", BasicProperties::default().with_headers(headers)).await;

        let copy = tokio::time::timeout(DEADLINE, dead.recv()).await.ok().flatten();
        let copy = copy.expect("the message is dead-lettered, not requeued in a loop");
        assert_eq!(copy.data, b"retry");
        let reason = header(&copy, "x-warren-reason").expect("a reason");
        assert!(reason.contains("can never be sent") && reason.contains("headers were dropped"), "{reason}");
        assert!(header(&copy, "big").is_none());
        wait_until_settled(&format!("{service}.direct.exchange.request.queue")).await;
        client.request("echo", b"next").await;
        assert_eq!(client.response(DEADLINE).await.expect("answered").data, b"next");
        assert_eq!(host_connections(&service).await, connections, "the host kept its one connection");
        client.cleanup().await;
        bounded_close(connection.close(200, "done".into())).await;
        host.stop().await.unwrap();
    }
}

broker_test! {
    /// The host's TCP link goes silent without closing (a relay stops passing bytes both ways):
    /// AMQP heartbeats (10 s by default, as goamqp's client) notice it within two beats, the
    /// host reconnects, and every request sent after the link died is answered — none lost.
    /// Before, the broker's 60 s heartbeat left them waiting about 180 s.
    ///
    /// The requests the broker had pushed into the dead connection come back only when
    /// RabbitMQ gives up on it: it checks every heartbeat and gives up after two silent checks,
    /// 20–30 s after the link's last byte. So the bound is three heartbeats (30 s) plus 3 s
    /// for the reconnect and the answers; measured here: 28.7 s.
    async fn a_silently_dead_link_is_noticed_and_nothing_is_lost() {
        let service = unique_service("blackhole");
        let cleanup = Cleanup::new();
        cleanup.service(&service);
        let relay = Relay::start().await;
        let mut config = config(&service, &requests(&[("echo", "echo")]));
        config.broker.urls = vec![relay.url.clone()];
        config.broker_url = relay.url.clone();
        let host = start(&config).await;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let serving = tokio::spawn(host.serve(async move {
            let _ = stopped.await;
        }));
        let mut client = GoClient::new(&service, &format!("{service}-client"), &["echo"]).await;
        client.request("echo", b"before").await;
        assert_eq!(client.response(DEADLINE).await.expect("answered through the relay").data, b"before");
        let before = host_connections(&service).await;

        relay.black_hole();
        let cut = Instant::now();
        let sent: BTreeSet<String> = (0..20).map(|n| format!("after-{n}")).collect();
        for body in &sent {
            client.request("echo", body.as_bytes()).await;
        }
        let got = answers(&mut client, sent.len(), Duration::from_secs(33)).await;
        let took = cut.elapsed();
        assert_eq!(bodies(&got), sent, "answered within 33 s of the cut (got {} in {took:?})", got.len());
        assert!(relay.connections() >= 2, "the host reconnected through the relay");
        let after = host_connections(&service).await;
        assert!(after.iter().all(|pid| !before.contains(pid)), "the dead connection is gone: {before:?} → {after:?}");
        println!("all 20 answered {took:?} after the link went silent");
        client.cleanup().await;
        stop.send(()).unwrap();
        tokio::time::timeout(DEADLINE, serving).await.expect("serve returns after the signal").unwrap().expect("a clean stop");
    }
}

broker_test! {
    /// Warren's own counters travel on the message, so a publisher can forge them: a request
    /// whose handler faults, with a dead-letter exchange nothing is bound to (a host-side
    /// failure: the message is kept and requeued with its count in `x-warren-host-failures`),
    /// carrying the count `-1` or `i64::MAX`. Before, `-1` read as `u32::MAX` and the `+ 1`
    /// overflowed outside the code that catches panics: the message was never settled. Now `-1`
    /// reads 0 (requeued, counted from there) and a huge count saturates (given up at once);
    /// the host answers the next request.
    async fn forged_counters_saturate() {
        let service = unique_service("counters");
        let cleanup = Cleanup::new();
        cleanup.service(&service);
        let addr = free_address();
        let rest = format!(
            "dead_letter_exchange = \"{service}.dlx\"\n{}[[request]]\nrouting_key = \"chaos\"\nplugin = \"chaos\"\n",
            requests(&[("echo", "echo")])
        );
        let mut config = config(&service, &rest);
        config.metrics = Some(addr);
        let host = start(&config).await;
        let mut client = GoClient::new(&service, &format!("{service}-client"), &["echo", "chaos"]).await;
        let forged = |count: i64| {
            let mut headers = FieldTable::default();
            headers.insert("service".into(), AMQPValue::LongString(LongString::from(client.name.as_str())));
            headers.insert("x-warren-host-failures".into(), AMQPValue::LongLongInt(count));
            BasicProperties::default().with_headers(headers)
        };
        client.publish("chaos", b"panic", forged(i64::MAX)).await;
        eventually("a huge forged count is given up at once", || {
            messages_total(addr, "chaos", "rejected_host_failure") == 1.0
        })
        .await;
        assert_eq!(messages_total(addr, "chaos", "requeued_host_failure"), 0.0);
        client.publish("chaos", b"panic", forged(-1)).await;
        eventually("a negative forged count reads 0: requeued", || {
            messages_total(addr, "chaos", "requeued_host_failure") >= 1.0
        })
        .await;
        client.request("echo", b"still here").await;
        assert_eq!(client.response(DEADLINE).await.expect("the next request is answered").data, b"still here");
        client.cleanup().await;
        host.stop().await.unwrap();
    }
}

broker_test! {
    /// A `traceparent` is copied into the answer and into everything the handler sends, so a
    /// publisher's header of any length would be too. Only W3C's form is carried: a 10,000-byte
    /// one, or one with a zero trace id, starts a new trace; a valid one goes through unchanged.
    async fn only_a_w3c_traceparent_is_carried() {
        let service = unique_service("traceparent");
        let cleanup = Cleanup::new();
        cleanup.service(&service);
        let host = start(&config(&service, &requests(&[("echo", "echo")]))).await;
        let mut client = GoClient::new(&service, &format!("{service}-client"), &["echo"]).await;
        let valid = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let zero = "00-00000000000000000000000000000000-00f067aa0ba902b7-01";
        let long = "x".repeat(10_000);
        for (body, sent) in [("valid", valid), ("zero", zero), ("long", long.as_str())] {
            let mut headers = FieldTable::default();
            headers.insert("service".into(), AMQPValue::LongString(LongString::from(client.name.as_str())));
            headers.insert("traceparent".into(), AMQPValue::LongString(LongString::from(sent)));
            client.publish("echo", body.as_bytes(), BasicProperties::default().with_headers(headers)).await;
            let answer = client.response(DEADLINE).await.expect("answered");
            assert_eq!(answer.data, body.as_bytes());
            let carried = header(&answer, "traceparent").expect("the answer carries a traceparent");
            match body {
                "valid" => assert_eq!(carried, valid),
                _ => {
                    assert_ne!(carried, sent);
                    let well_formed = carried.len() == 55
                        && carried.starts_with("00-")
                        && carried.bytes().all(|b| b == b'-' || b.is_ascii_hexdigit());
                    assert!(well_formed, "a new W3C traceparent instead of {body}: {carried}");
                }
            }
        }
        client.cleanup().await;
        host.stop().await.unwrap();
    }
}
