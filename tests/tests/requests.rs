//! A goamqp client (its own lapin code, faithful to goamqp: no correlation id, no confirms)
//! sends requests to a Warren host serving real plugin components, on the real broker:
//! answers, and every rejection in SPEC §1's outcome table. Absence of an answer is read from
//! the broker's own queue counts, never from a client timeout.

use std::time::{Duration, Instant};

use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable, LongString};
use warren_tests::*;

broker_test! {
    async fn greet_answers_a_goamqp_request_and_acks_it() {
        let mut s = Scenario::start("greet", &[("greet", "greet")], "", &[]).await;
        s.client.request("greet", br#"{"name":"Ada"}"#).await;
        let response = s.client.response(DEADLINE).await.expect("a response");

        assert_eq!(response.data, br#"{"greeting":"Hello, Ada!"}"#);
        assert_eq!(response.exchange.as_str(), format!("{}.headers.exchange.response", s.service));
        assert_eq!(response.routing_key.as_str(), "greet", "a response carries the request's routing key");
        // service = the requester; no correlation id (the request had none), no message id,
        // no reply-to; headers service and traceparent only.
        assert_goamqp_message(&response, "go-client", &[]);
        s.finish().await; // the request was acked: nothing is left in the queue
    }
}

broker_test! {
    async fn a_correlation_id_on_a_request_is_copied_to_its_answer() {
        // goamqp never sends one; other AMQP clients do, and SPEC §1 says Warren copies it.
        let mut s = Scenario::start("corr", &[("echo", "echo")], "", &[]).await;
        let mut headers = FieldTable::default();
        headers.insert("service".into(), AMQPValue::LongString(LongString::from("go-client")));
        let props = BasicProperties::default().with_headers(headers).with_correlation_id("corr-1".into());
        s.client.publish("echo", br#"{"n":1}"#, props).await;
        let response = s.client.response(DEADLINE).await.expect("a response");
        assert_eq!(response.data, br#"{"n":1}"#);
        assert_goamqp_message_with(&response, "go-client", Some("corr-1"), &[]);
        s.finish().await;
    }
}

broker_test! {
    async fn echo_returns_a_one_mib_body_byte_for_byte() {
        let mut s = Scenario::start("echo", &[("echo", "echo")], "", &[]).await;
        let body: Vec<u8> = (0..1024 * 1024).map(|i| (i * 7 % 251) as u8).collect();
        s.client.request("echo", &body).await;
        let response = s.client.response(DEADLINE).await.expect("a response");
        assert_eq!(response.data.len(), body.len());
        assert!(response.data == body, "the body came back changed");
        s.finish().await;
    }
}

broker_test! {
    async fn two_slow_requests_are_served_at_once() {
        // A host that handled one message at a time would take 1 s for these two.
        let mut s = Scenario::start("overlap", &[("chaos", "chaos")], "", &[]).await;
        let started = Instant::now();
        s.client.request("chaos", b"slow:500").await;
        s.client.request("chaos", b"slow:500 ").await; // chaos trims the number: also 500 ms
        let mut answers = vec![
            s.client.response(DEADLINE).await.expect("answered").data,
            s.client.response(DEADLINE).await.expect("answered").data,
        ];
        let took = started.elapsed();
        answers.sort();
        assert_eq!(answers, [&b"slow:500"[..], &b"slow:500 "[..]]);
        assert!(took < Duration::from_millis(900), "two 500 ms calls took {} ms: they did not overlap", took.as_millis());
        s.finish().await;
    }
}

broker_test! {
    async fn a_slow_message_holds_back_no_other_ack_and_no_ack_covers_it() {
        // Acks that are ready together go in one `multiple` frame. Such a frame must never
        // cover a message still being handled, and a slow message must not hold back the
        // acks of the faster ones after it: the broker's own count shows both.
        let mut s = Scenario::start("acks", &[("chaos", "chaos")], "[limits]\ntimeout_ms = 10000\n", &[]).await;
        let slow_sent = Instant::now();
        s.client.request("chaos", b"slow:4000").await;
        for i in 0..20 {
            s.client.request("chaos", format!("fast {i}").as_bytes()).await;
        }
        for _ in 0..20 {
            let answer = s.client.response(DEADLINE).await.expect("each fast request is answered");
            assert!(answer.data.starts_with(b"fast"), "the slow one cannot be done yet: {:?}", answer.data);
        }
        // The slow call runs for 4 s after its delivery: until then exactly it is unacked.
        loop {
            let counts = queue_counts(&s.request_queue()).await;
            if counts == Some((0, 1)) {
                break;
            }
            assert!(
                slow_sent.elapsed() < Duration::from_millis(3500),
                "(ready, unacked) = {counts:?} while the slow message runs; want (0, 1): the 20 fast ones acked, the slow one not"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(s.client.response(DEADLINE).await.expect("the slow one is answered").data, b"slow:4000");
        s.finish().await; // and then it is acked too
    }
}

broker_test! {
    async fn an_unknown_routing_key_is_rejected_and_the_consumer_keeps_serving() {
        let mut s = Scenario::start("unknown", &[("echo", "echo")], "", &["stray"]).await;
        // Another service bound a key to our queue that no handler of ours serves.
        let channel = s.client.connection.create_channel().await.unwrap();
        let exchange = format!("{}.direct.exchange.request", s.service);
        channel
            .queue_bind(s.request_queue().as_str().into(), exchange.as_str().into(), "stray".into(), Default::default(), FieldTable::default())
            .await
            .unwrap();
        s.client.request("stray", b"lost?").await;

        let rejected = s.dead.next(DEADLINE).await.expect("the stray message is dead-lettered");
        assert_eq!(rejected.routing_key.as_str(), "stray");
        assert_eq!(DeadLetters::death_reason(&rejected).as_deref(), Some("rejected"));
        s.assert_no_response().await;

        s.client.request("echo", b"still here").await;
        assert_eq!(s.client.response(DEADLINE).await.expect("the next request is answered").data, b"still here");
        s.finish().await;
    }
}

broker_test! {
    async fn a_request_without_a_service_header_is_rejected() {
        let mut s = Scenario::start("nosvc", &[("echo", "echo")], "", &[]).await;
        s.client.publish("echo", b"who asks?", BasicProperties::default()).await;
        let rejected = s.dead.next(DEADLINE).await.expect("the request is dead-lettered");
        assert_eq!(rejected.data, b"who asks?");
        assert_eq!(DeadLetters::death_reason(&rejected).as_deref(), Some("rejected"));

        // A non-string service header can never be answered either.
        let mut headers = FieldTable::default();
        headers.insert("service".into(), AMQPValue::LongInt(42));
        s.client.publish("echo", b"numeric", BasicProperties::default().with_headers(headers)).await;
        assert_eq!(s.dead.next(DEADLINE).await.expect("dead-lettered").data, b"numeric");
        s.assert_no_response().await;

        s.client.request("echo", b"answered").await;
        assert_eq!(s.client.response(DEADLINE).await.expect("a response").data, b"answered");
        s.finish().await;
    }
}

broker_test! {
    async fn a_body_greet_cannot_parse_is_a_bad_request_rejected_without_answer() {
        let mut s = Scenario::start("badreq", &[("greet", "greet")], "", &[]).await;
        s.client.request("greet", b"this is not json").await;
        let rejected = s.dead.next(DEADLINE).await.expect("the bad request is dead-lettered");
        assert_eq!(rejected.data, b"this is not json");
        assert_eq!(DeadLetters::death_reason(&rejected).as_deref(), Some("rejected"));
        s.assert_no_response().await;
        s.finish().await;
    }
}

broker_test! {
    async fn a_panicking_plugin_traps_is_rejected_and_the_next_request_is_answered() {
        let mut s = Scenario::start("panic", &[("chaos", "chaos")], "", &[]).await;
        s.client.request("chaos", b"panic").await;
        let rejected = s.dead.next(DEADLINE).await.expect("the trapping request is dead-lettered");
        assert_eq!(rejected.data, b"panic");
        assert_eq!(DeadLetters::death_reason(&rejected).as_deref(), Some("rejected"));
        s.assert_no_response().await;

        s.client.request("chaos", b"after the panic").await;
        let response = s.client.response(DEADLINE).await.expect("the host still answers");
        assert_eq!(response.data, b"after the panic");
        assert_goamqp_message(&response, "go-client", &[]);
        s.finish().await;
    }
}

broker_test! {
    async fn a_looping_plugin_hits_its_deadline_and_others_are_served_meanwhile() {
        let handlers = [("chaos", "chaos"), ("echo", "echo")];
        let timeout = Duration::from_millis(5000);
        let limits = format!("[limits]\ntimeout_ms = {}", timeout.as_millis());
        let mut s = Scenario::start("loop", &handlers, &limits, &[]).await;
        let sent = Instant::now();
        s.client.request("chaos", b"loop").await;
        // The broker's own count: the loop is taken (unacked), nothing waits.
        let queue = s.request_queue();
        let until = Instant::now() + DEADLINE;
        while queue_counts(&queue).await != Some((0, 1)) {
            assert!(Instant::now() < until, "the host never took the loop");
        }
        // While the loop spins, other requests are answered: the guest yields every tick.
        for i in 0..5 {
            let body = format!("meanwhile {i}");
            s.client.request("echo", body.as_bytes()).await;
            assert_eq!(s.client.response(DEADLINE).await.expect("answered during the loop").data, body.as_bytes());
            assert!(s.dead.try_next().is_none(), "answer {i} came only after the loop was stopped: nothing overlapped");
        }
        assert!(sent.elapsed() < timeout, "the answers took {} ms: longer than the loop's deadline", sent.elapsed().as_millis());
        let rejected = s.dead.next(DEADLINE).await.expect("the loop is stopped at its deadline and rejected");
        assert_eq!(rejected.data, b"loop");
        assert!(sent.elapsed() >= timeout - Duration::from_millis(100), "the loop was stopped before its deadline");
        s.finish().await;
    }
}

broker_test! {
    async fn the_requests_traceparent_is_copied_to_the_response() {
        let mut s = Scenario::start("trace", &[("echo", "echo")], "", &[]).await;
        let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let mut headers = FieldTable::default();
        headers.insert("service".into(), AMQPValue::LongString(LongString::from("go-client")));
        headers.insert("traceparent".into(), AMQPValue::LongString(LongString::from(traceparent)));
        s.client.publish("echo", b"traced", BasicProperties::default().with_headers(headers)).await;

        let response = s.client.response(DEADLINE).await.expect("a response");
        assert_eq!(header(&response, "traceparent").as_deref(), Some(traceparent));
        assert_goamqp_message(&response, "go-client", &[]);
        s.finish().await;
    }
}

broker_test! {
    async fn a_dead_letter_exchange_gets_rejected_messages_with_the_reason() {
        let service = unique_service("dlx");
        let exchange = format!("{service}.rejects");
        let extra = format!("dead_letter_exchange = \"{exchange}\"");
        let mut s = Scenario::start_in(&service, plugins_dir(), &[("greet", "greet")], &extra, &["stray"]).await;
        // The host declared the exchange; a queue of ours collects what lands there.
        let mut rejects = collect(&s.client.connection, &exchange).await;

        s.client.request("greet", b"not json").await;
        let dead = tokio::time::timeout(DEADLINE, rejects.recv()).await.unwrap().expect("dead-lettered by Warren");
        assert_eq!(dead.data, b"not json");
        assert_eq!(dead.routing_key.as_str(), "greet");
        let reason = header(&dead, "x-warren-reason").unwrap();
        assert!(reason.starts_with("bad-request from 'greet'"), "{reason}");
        assert_eq!(header(&dead, "x-warren-queue"), Some(s.request_queue()));
        assert_eq!(header(&dead, "service").as_deref(), Some("go-client"), "the original headers are kept");
        // Acked after dead-lettering, not rejected: the policy's dead-letter queue stays empty.
        s.assert_no_response().await;
        assert_eq!(queue_counts(&format!("{service}.dead-letters")).await, Some((0, 0)));
        assert!(s.dead.try_next().is_none(), "acked after dead-lettering, not rejected");
        s.finish().await;
    }
}

broker_test! {
    /// README, "Reliability": a response the broker does not confirm makes Warren nack the
    /// request with requeue, so it is handled again. A broker policy on the requester's
    /// response queue (`max-length` 0, `overflow` `reject-publish`) makes RabbitMQ nack every
    /// answer routed there. While it holds, the request stays on the broker and is handled
    /// again and again (host-side requeues), never acked, rejected or answered; once the
    /// policy is cleared the next try is answered, once, and the request settles. Fails if a
    /// nack were taken for a confirm (the request acked at once, its answer lost: no requeue,
    /// no answer ever) or for a refusal (a dead letter).
    async fn a_response_the_broker_nacks_leaves_the_request_requeued_until_it_is_answered() {
        let service = unique_service("nacked");
        let metrics = free_address();
        let mut config = config(&service, &requests(&[("echo", "echo")]));
        config.metrics = Some(metrics);
        let mut s = Scenario::from_config(config, &["echo"]).await;
        let policy = s.refuse_answers().await;
        let answers = s.client.response_queue().to_string();

        s.client.request("echo", b"held").await;
        let until = Instant::now() + DEADLINE;
        while messages_total(metrics, "echo", "requeued_host_failure") < 2.0 {
            // A requeue publishes the copy before it acks the original: never 0 in between.
            let (ready, unacked) = queue_counts(&s.request_queue()).await.expect("the request queue");
            assert!(ready + unacked >= 1, "the request whose answer was nacked left the broker");
            assert!(Instant::now() < until, "the request was not handled twice with its answer nacked");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(messages_total(metrics, "echo", "acked"), 0.0, "acked although its answer was nacked");
        assert!(s.dead.try_next().is_none(), "rejected instead of requeued");
        assert_eq!(queue_counts(&answers).await, Some((0, 0)), "an answer got past the policy");

        rabbitmqctl(&["clear_policy", &policy]);
        let answer = s.client.response(Duration::from_secs(30)).await.expect("answered once the broker takes answers");
        assert_eq!(answer.data, b"held");
        s.assert_no_response().await; // one answer, and the request settled
        eventually("the answered request counted as acked", || messages_total(metrics, "echo", "acked") == 1.0).await;
        assert!(s.dead.try_next().is_none(), "dead-lettered as well as answered");
        s.finish().await;
    }
}
