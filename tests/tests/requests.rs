//! A goamqp client (its own lapin code) sends requests to a Warren host serving real plugin
//! components, on the real broker: answers, and every rejection in SPEC §1's outcome table.

use std::time::Duration;

use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable, LongString};
use warren_tests::*;

const NO_RESPONSE_WAIT: Duration = Duration::from_millis(1500);

broker_test! {
async fn greet_answers_a_goamqp_request_and_acks_it() {
    let service = unique_service("greet");
    let server = start(&config(&service, &requests(&[("greet", "greet")]))).await;
    let mut client = GoClient::new(&service, "go-client", &["greet"]).await;

    client.request("greet", br#"{"name":"Ada"}"#, "corr-1").await;
    let response = client.response(DEADLINE).await.expect("a response");

    assert_eq!(response.data, br#"{"greeting":"Hello, Ada!"}"#);
    assert_eq!(response.exchange.as_str(), format!("{service}.headers.exchange.response"));
    assert_eq!(response.routing_key.as_str(), "greet", "a response carries the request's routing key");
    assert_eq!(header(&response, "service").as_deref(), Some("go-client"), "service = the requester");
    let props = &response.properties;
    assert_eq!(props.correlation_id().as_ref().map(|c| c.as_str()), Some("corr-1"));
    assert_eq!(props.content_type().as_ref().map(|c| c.as_str()), Some("application/json"));
    assert_eq!(*props.delivery_mode(), Some(2), "persistent");

    // Stopping the host closes its channels: an unacked request would be requeued.
    server.stop().await.unwrap();
    let queue = format!("{service}.direct.exchange.request.queue");
    assert_eq!(ready_messages(&client.connection, &queue).await, 0, "the request was acked");
    client.cleanup().await;
    delete_service(&service).await;
}
}

broker_test! {
async fn echo_returns_a_one_mib_body_byte_for_byte() {
    let service = unique_service("echo");
    let server = start(&config(&service, &requests(&[("echo", "echo")]))).await;
    let mut client = GoClient::new(&service, "go-client", &["echo"]).await;

    let body: Vec<u8> = (0..1024 * 1024).map(|i| (i * 7 % 251) as u8).collect();
    client.request("echo", &body, "big").await;
    let response = client.response(DEADLINE).await.expect("a response");
    assert_eq!(response.data.len(), body.len());
    assert!(response.data == body, "the body came back changed");

    server.stop().await.unwrap();
    client.cleanup().await;
    delete_service(&service).await;
}
}

broker_test! {
async fn an_unknown_routing_key_is_rejected_and_the_consumer_keeps_serving() {
    let service = unique_service("unknown");
    let mut dead = DeadLetters::catch(&service).await;
    let server = start(&config(&service, &requests(&[("echo", "echo")]))).await;
    let mut client = GoClient::new(&service, "go-client", &["echo", "stray"]).await;

    // Another service bound a key to our queue that no handler of ours serves.
    let channel = client.connection.create_channel().await.unwrap();
    channel
        .queue_bind(
            format!("{service}.direct.exchange.request.queue").as_str().into(),
            format!("{service}.direct.exchange.request").as_str().into(),
            "stray".into(),
            Default::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    client.request("stray", b"lost?", "c1").await;

    let rejected = dead.next(DEADLINE).await.expect("the stray message is dead-lettered");
    assert_eq!(rejected.routing_key.as_str(), "stray");
    assert_eq!(DeadLetters::death_reason(&rejected).as_deref(), Some("rejected"));
    assert!(client.response(NO_RESPONSE_WAIT).await.is_none(), "no response to an unhandled key");

    client.request("echo", b"still here", "c2").await;
    assert_eq!(client.response(DEADLINE).await.expect("the next request is answered").data, b"still here");

    server.stop().await.unwrap();
    client.cleanup().await;
    dead.cleanup().await;
    delete_service(&service).await;
}
}

broker_test! {
async fn a_request_without_a_service_header_is_rejected() {
    let service = unique_service("nosvc");
    let mut dead = DeadLetters::catch(&service).await;
    let server = start(&config(&service, &requests(&[("echo", "echo")]))).await;
    let mut client = GoClient::new(&service, "go-client", &["echo"]).await;

    client.publish("echo", b"who asks?", BasicProperties::default()).await;
    let rejected = dead.next(DEADLINE).await.expect("the request is dead-lettered");
    assert_eq!(rejected.data, b"who asks?");
    assert_eq!(DeadLetters::death_reason(&rejected).as_deref(), Some("rejected"));

    // A non-string service header can never be answered either.
    let mut headers = FieldTable::default();
    headers.insert("service".into(), AMQPValue::LongInt(42));
    client.publish("echo", b"numeric", BasicProperties::default().with_headers(headers)).await;
    assert_eq!(dead.next(DEADLINE).await.expect("dead-lettered").data, b"numeric");

    client.request("echo", b"answered", "c").await;
    assert_eq!(client.response(DEADLINE).await.expect("a response").data, b"answered");

    server.stop().await.unwrap();
    client.cleanup().await;
    dead.cleanup().await;
    delete_service(&service).await;
}
}

broker_test! {
async fn a_body_greet_cannot_parse_is_a_bad_request_rejected_without_answer() {
    let service = unique_service("badreq");
    let mut dead = DeadLetters::catch(&service).await;
    let server = start(&config(&service, &requests(&[("greet", "greet")]))).await;
    let mut client = GoClient::new(&service, "go-client", &["greet"]).await;

    client.request("greet", b"this is not json", "c1").await;
    let rejected = dead.next(DEADLINE).await.expect("the bad request is dead-lettered");
    assert_eq!(rejected.data, b"this is not json");
    assert_eq!(DeadLetters::death_reason(&rejected).as_deref(), Some("rejected"));
    assert!(client.response(NO_RESPONSE_WAIT).await.is_none(), "a bad request gets no response");

    server.stop().await.unwrap();
    client.cleanup().await;
    dead.cleanup().await;
    delete_service(&service).await;
}
}

broker_test! {
async fn a_panicking_plugin_traps_is_rejected_and_the_next_request_is_answered() {
    let service = unique_service("panic");
    let mut dead = DeadLetters::catch(&service).await;
    let server = start(&config(&service, &requests(&[("chaos", "chaos")]))).await;
    let mut client = GoClient::new(&service, "go-client", &["chaos"]).await;

    client.request("chaos", b"panic", "boom").await;
    let rejected = dead.next(DEADLINE).await.expect("the trapping request is dead-lettered");
    assert_eq!(rejected.data, b"panic");
    assert_eq!(DeadLetters::death_reason(&rejected).as_deref(), Some("rejected"));

    client.request("chaos", b"after the panic", "next").await;
    let response = client.response(DEADLINE).await.expect("the host still answers");
    assert_eq!(response.data, b"after the panic");
    assert_eq!(response.properties.correlation_id().as_ref().map(|c| c.as_str()), Some("next"));

    server.stop().await.unwrap();
    client.cleanup().await;
    dead.cleanup().await;
    delete_service(&service).await;
}
}

broker_test! {
async fn a_looping_plugin_hits_its_deadline_and_others_are_served_meanwhile() {
    let service = unique_service("loop");
    let mut dead = DeadLetters::catch(&service).await;
    let limits = "[limits]\ntimeout_ms = 1500\n";
    let server = start(&config(&service, &format!("{limits}{}", requests(&[("chaos", "chaos"), ("echo", "echo")])))).await;
    let mut client = GoClient::new(&service, "go-client", &["chaos", "echo"]).await;

    client.request("chaos", b"loop", "spin").await;
    // While the loop spins, other requests are answered: the guest yields every tick.
    for i in 0..5 {
        let body = format!("meanwhile {i}");
        client.request("echo", body.as_bytes(), "m").await;
        assert_eq!(client.response(DEADLINE).await.expect("answered during the loop").data, body.as_bytes());
    }
    let rejected = dead.next(DEADLINE).await.expect("the loop is stopped at its deadline and rejected");
    assert_eq!(rejected.data, b"loop");

    server.stop().await.unwrap();
    client.cleanup().await;
    dead.cleanup().await;
    delete_service(&service).await;
}
}

broker_test! {
async fn the_requests_traceparent_is_copied_to_the_response() {
    let service = unique_service("trace");
    let server = start(&config(&service, &requests(&[("echo", "echo")]))).await;
    let mut client = GoClient::new(&service, "go-client", &["echo"]).await;

    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let mut headers = FieldTable::default();
    headers.insert("service".into(), AMQPValue::LongString(LongString::from("go-client")));
    headers.insert("traceparent".into(), AMQPValue::LongString(LongString::from(traceparent)));
    client.publish("echo", b"traced", BasicProperties::default().with_headers(headers)).await;

    let response = client.response(DEADLINE).await.expect("a response");
    assert_eq!(header(&response, "traceparent").as_deref(), Some(traceparent));
    assert_eq!(header(&response, "service").as_deref(), Some("go-client"));

    server.stop().await.unwrap();
    client.cleanup().await;
    delete_service(&service).await;
}
}
