//! The same contract over `greet` written in Rust, Python (componentize-py), JavaScript
//! (componentize-js) and Go (wit-bindgen-go, `go build` for wasip1): a goamqp request is answered exactly alike, a body that is not the
//! expected JSON is a `bad-request`, and a trap costs only its own message.

use warren_tests::*;

/// Runs the `greet` contract against plugin `greet` (the example named `example`).
async fn greet_contract(example: &str) {
    // The same component twice: as itself, and starved of fuel so that every call traps.
    let service = unique_service(example);
    let starved = format!("{example}-starved");
    let plugins = private_plugins(&service, &[(example, example), (&starved, example)]);
    let files = Cleanup::new();
    files.dir(&plugins);
    let rejects_exchange = format!("{service}.rejects");
    let extra = format!("dead_letter_exchange = \"{rejects_exchange}\"\n\n[plugin.{starved}]\nfuel = 1000\n");
    let handlers = [("greet", example), ("starved", starved.as_str())];
    let mut s = Scenario::start_in(&service, &plugins, &handlers, &extra, &[]).await;
    let mut rejects = collect(&s.client.connection, &rejects_exchange).await;
    let mut next_reject = async || tokio::time::timeout(DEADLINE, rejects.recv()).await.ok().flatten();

    s.client.request("greet", br#"{"name":"Ada"}"#).await;
    let response = s.client.response(DEADLINE).await.expect("a response");
    assert_eq!(String::from_utf8_lossy(&response.data), r#"{"greeting":"Hello, Ada!"}"#);
    assert_eq!(response.routing_key.as_str(), "greet", "a response carries the request's routing key");
    // service = the requester, JSON, persistent, no correlation id: nothing goamqp does not send.
    assert_goamqp_message(&response, "go-client", &[]);

    // Keys the handler does not know are ignored, as serde does.
    s.client.request("greet", br#"{"name":"Lin","team":"billing"}"#).await;
    let response = s.client.response(DEADLINE).await.expect("a response");
    assert_eq!(String::from_utf8_lossy(&response.data), r#"{"greeting":"Hello, Lin!"}"#);

    for bad in [&b"this is not json"[..], br#"{"nom":"Ada"}"#, br#"{"name":42}"#, b"[1]", br#"{"name":null}"#] {
        s.client.request("greet", bad).await;
        let dead = next_reject().await.expect("a bad request is dead-lettered");
        assert_eq!(dead.data, bad);
        let reason = header(&dead, "x-warren-reason").unwrap_or_default();
        assert!(reason.starts_with(&format!("bad-request from '{example}'")), "{reason}");
    }

    s.client.request("starved", br#"{"name":"Ada"}"#).await;
    let dead = next_reject().await.expect("the trapping call's message is dead-lettered");
    let reason = header(&dead, "x-warren-reason").unwrap_or_default();
    assert!(reason.contains(&starved) && reason.contains("fuel"), "{reason}");

    s.client.request("greet", br#"{"name":"Grace"}"#).await;
    let response = s.client.response(DEADLINE).await.expect("the host still answers after a trap");
    assert_eq!(String::from_utf8_lossy(&response.data), r#"{"greeting":"Hello, Grace!"}"#);
    s.assert_no_response().await; // refusals got no answer
    s.finish().await;
}

broker_test! {
    async fn greet_in_rust_keeps_the_contract() {
        greet_contract("greet").await;
    }
}

broker_test! {
    async fn greet_in_python_keeps_the_contract() {
        greet_contract("greet-py").await;
    }
}

broker_test! {
    async fn greet_in_javascript_keeps_the_contract() {
        greet_contract("greet-js").await;
    }
}

broker_test! {
    async fn greet_in_go_keeps_the_contract() {
        greet_contract("greet-go").await;
    }
}
