//! A goamqp client (its own lapin code) sends requests to a Warren host serving real plugin
//! components, on the real broker: answers, and every rejection in SPEC §1's outcome table.

use std::time::Duration;

use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable, LongString};
use warren_tests::*;

const NO_RESPONSE_WAIT: Duration = Duration::from_millis(1500);

broker_test! {
    async fn greet_answers_a_goamqp_request_and_acks_it() {
        let mut s = Scenario::start("greet", &[("greet", "greet")], "", &[]).await;
        s.client.request("greet", br#"{"name":"Ada"}"#, "corr-1").await;
        let response = s.client.response(DEADLINE).await.expect("a response");

        assert_eq!(response.data, br#"{"greeting":"Hello, Ada!"}"#);
        assert_eq!(response.exchange.as_str(), format!("{}.headers.exchange.response", s.service));
        assert_eq!(response.routing_key.as_str(), "greet", "a response carries the request's routing key");
        assert_eq!(header(&response, "service").as_deref(), Some("go-client"), "service = the requester");
        let props = &response.properties;
        assert_eq!(props.correlation_id().as_ref().map(|c| c.as_str()), Some("corr-1"));
        assert_eq!(props.content_type().as_ref().map(|c| c.as_str()), Some("application/json"));
        assert_eq!(*props.delivery_mode(), Some(2), "persistent");
        s.finish().await; // the request was acked: nothing is left in the queue
    }
}

broker_test! {
    async fn echo_returns_a_one_mib_body_byte_for_byte() {
        let mut s = Scenario::start("echo", &[("echo", "echo")], "", &[]).await;
        let body: Vec<u8> = (0..1024 * 1024).map(|i| (i * 7 % 251) as u8).collect();
        s.client.request("echo", &body, "big").await;
        let response = s.client.response(DEADLINE).await.expect("a response");
        assert_eq!(response.data.len(), body.len());
        assert!(response.data == body, "the body came back changed");
        s.finish().await;
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
        s.client.request("stray", b"lost?", "c1").await;

        let rejected = s.dead.next(DEADLINE).await.expect("the stray message is dead-lettered");
        assert_eq!(rejected.routing_key.as_str(), "stray");
        assert_eq!(DeadLetters::death_reason(&rejected).as_deref(), Some("rejected"));
        assert!(s.client.response(NO_RESPONSE_WAIT).await.is_none(), "no response to an unhandled key");

        s.client.request("echo", b"still here", "c2").await;
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

        s.client.request("echo", b"answered", "c").await;
        assert_eq!(s.client.response(DEADLINE).await.expect("a response").data, b"answered");
        s.finish().await;
    }
}

broker_test! {
    async fn a_body_greet_cannot_parse_is_a_bad_request_rejected_without_answer() {
        let mut s = Scenario::start("badreq", &[("greet", "greet")], "", &[]).await;
        s.client.request("greet", b"this is not json", "c1").await;
        let rejected = s.dead.next(DEADLINE).await.expect("the bad request is dead-lettered");
        assert_eq!(rejected.data, b"this is not json");
        assert_eq!(DeadLetters::death_reason(&rejected).as_deref(), Some("rejected"));
        assert!(s.client.response(NO_RESPONSE_WAIT).await.is_none(), "a bad request gets no response");
        s.finish().await;
    }
}

broker_test! {
    async fn a_panicking_plugin_traps_is_rejected_and_the_next_request_is_answered() {
        let mut s = Scenario::start("panic", &[("chaos", "chaos")], "", &[]).await;
        s.client.request("chaos", b"panic", "boom").await;
        let rejected = s.dead.next(DEADLINE).await.expect("the trapping request is dead-lettered");
        assert_eq!(rejected.data, b"panic");
        assert_eq!(DeadLetters::death_reason(&rejected).as_deref(), Some("rejected"));

        s.client.request("chaos", b"after the panic", "next").await;
        let response = s.client.response(DEADLINE).await.expect("the host still answers");
        assert_eq!(response.data, b"after the panic");
        assert_eq!(response.properties.correlation_id().as_ref().map(|c| c.as_str()), Some("next"));
        s.finish().await;
    }
}

broker_test! {
    async fn a_looping_plugin_hits_its_deadline_and_others_are_served_meanwhile() {
        let handlers = [("chaos", "chaos"), ("echo", "echo")];
        let mut s = Scenario::start("loop", &handlers, "[limits]\ntimeout_ms = 1500", &[]).await;
        s.client.request("chaos", b"loop", "spin").await;
        // While the loop spins, other requests are answered: the guest yields every tick.
        for i in 0..5 {
            let body = format!("meanwhile {i}");
            s.client.request("echo", body.as_bytes(), "m").await;
            assert_eq!(s.client.response(DEADLINE).await.expect("answered during the loop").data, body.as_bytes());
        }
        let rejected = s.dead.next(DEADLINE).await.expect("the loop is stopped at its deadline and rejected");
        assert_eq!(rejected.data, b"loop");
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
        assert_eq!(header(&response, "service").as_deref(), Some("go-client"));
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

        s.client.request("greet", b"not json", "bad").await;
        let dead = tokio::time::timeout(DEADLINE, rejects.recv()).await.unwrap().expect("dead-lettered by Warren");
        assert_eq!(dead.data, b"not json");
        assert_eq!(dead.routing_key.as_str(), "greet");
        let reason = header(&dead, "x-warren-reason").unwrap();
        assert!(reason.starts_with("bad-request from 'greet'"), "{reason}");
        assert_eq!(header(&dead, "x-warren-queue"), Some(s.request_queue()));
        assert_eq!(header(&dead, "service").as_deref(), Some("go-client"), "the original headers are kept");
        assert!(s.dead.next(Duration::from_millis(500)).await.is_none(), "acked after dead-lettering, not rejected");
        s.finish().await;
    }
}
