//! Warren's goamqp client (`warren::amqp::client`, behind `warren request` and the
//! benchmarks) against goamqp as it really is: a [`GoService`] that answers with header
//! `service` = the requester and the request's routing key, and never a correlation id
//! (SPEC §1, issue 14). The binary itself is tested the same way in `host/tests/cli_request.rs`.
//!
//! Each test removes every queue and exchange it declared, also when it fails ([`Cleanup`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use warren::amqp::client::{self, Call, Client, ClientOptions, GOAMQP_PREFETCH};
use warren_tests::*;

/// The reply queues of clients of `service` that are still on the broker.
fn reply_queues(service: &str) -> Vec<String> {
    let prefix = format!("{service}.headers.exchange.response.queue.");
    broker_listing("list_queues", &["name"])
        .iter()
        .filter_map(|row| row["name"].as_str())
        .filter(|name| name.starts_with(&prefix))
        .map(str::to_string)
        .collect()
}

fn call(service: &str, key: &str, body: &str) -> Call {
    Call {
        service: service.to_string(),
        routing_key: key.to_string(),
        body: body.as_bytes().to_vec(),
        client: None,
        timeout: DEADLINE,
    }
}

/// A goamqp service `t-<what>-…` (its name returned) echoing on key `echo`, and Warren's
/// client of it speaking goamqp's frames (`ClientOptions::goamqp`); the `Cleanup` removes the
/// service's topology.
async fn go_echo_and_goamqp_client(what: &str) -> (Cleanup, GoService, String, Client) {
    let service = unique_service(what);
    let cleanup = Cleanup::new();
    cleanup.service(&service);
    let go = GoService::start(&service, &["echo"], |_, body| body.to_vec()).await;
    let name = format!("{service}-client");
    let options = ClientOptions::goamqp(GOAMQP_PREFETCH);
    let client = Client::connect_with(&broker_url(), &service, &name, &["echo"], options).await.unwrap();
    (cleanup, go, service, client)
}

/// What a goamqp service sees of a request from Warren's client: `service` = the client,
/// JSON, persistent; with `ids`, Warren's correlation and message ids (goamqp ignores them).
fn assert_request_as_goamqp_sends_it(seen: &Seen, client: &str, ids: bool) {
    let props = &seen.properties;
    assert_eq!(properties_header(props, "service").as_deref(), Some(client), "header service");
    assert_eq!(header_names(props), ["service"], "no header but service");
    assert_eq!(props.content_type().as_ref().map(|c| c.as_str()), Some("application/json"));
    assert_eq!(*props.delivery_mode(), Some(2));
    assert_eq!(props.correlation_id().is_some(), ids, "correlation_id");
    assert_eq!(props.message_id().is_some(), ids, "message_id");
    assert_eq!(*props.reply_to(), None, "reply_to");
}

broker_test! {
    /// `warren request`'s call: a goamqp answer (no correlation id) is taken as the answer, the
    /// client ran under a name of its own, and its reply queue is gone afterwards.
    async fn request_takes_a_goamqp_answer_that_has_no_correlation_id() {
        let service = unique_service("interop");
        let cleanup = Cleanup::new();
        cleanup.service(&service);
        let go = GoService::start(&service, &["echo"], |_, body| body.to_vec()).await;

        let reply = client::request(&broker_url(), &call(&service, "echo", r#"{"data":"x","seq":1}"#))
            .await
            .expect("the goamqp service's answer");
        assert_eq!(reply.body, br#"{"data":"x","seq":1}"#);
        assert_eq!(reply.correlation_id, None, "goamqp answers carry no correlation id");
        assert_eq!(reply.routing_key, "echo", "goamqp answers on the request's routing key");

        let seen = go.requests_seen();
        assert_eq!(seen.len(), 1);
        let requester = properties_header(&seen[0].properties, "service").unwrap();
        let suffix = requester.strip_prefix("warren-cli-").unwrap_or_else(|| panic!("client name {requester}"));
        assert!(suffix.len() == 8 && suffix.chars().all(|c| c.is_ascii_hexdigit()), "client name {requester}");
        assert_request_as_goamqp_sends_it(&seen[0], &requester, true);
        assert_eq!(reply_queues(&service), Vec::<String>::new(), "the reply queue went with the call");
        go.stop().await;
    }
}

broker_test! {
    /// Parallel `warren request` calls against a slow goamqp handler: each runs under its own
    /// name with its own reply queue, and each gets its own answer.
    async fn parallel_requests_to_a_slow_goamqp_handler_each_get_their_own_answer() {
        let service = unique_service("interop-slow");
        let cleanup = Cleanup::new();
        cleanup.service(&service);
        let delay = Duration::from_millis(300);
        let go = GoService::start(&service, &["slow"], move |_, body| {
            std::thread::sleep(delay);
            body.to_vec()
        })
        .await;

        let started = Instant::now();
        let mut calls = tokio::task::JoinSet::new();
        for run in 0..4 {
            let call = call(&service, "slow", &format!(r#"{{"run":{run}}}"#));
            calls.spawn(async move { (run, client::request(&broker_url(), &call).await) });
        }
        while let Some(done) = calls.join_next().await {
            let (run, reply) = done.unwrap();
            let reply = reply.unwrap_or_else(|e| panic!("run {run}: {e}"));
            assert_eq!(String::from_utf8(reply.body).unwrap(), format!(r#"{{"run":{run}}}"#), "run {run}'s answer");
        }
        assert!(started.elapsed() >= delay * 4, "the handler took the requests one at a time");
        let requesters: std::collections::BTreeSet<String> =
            go.requests_seen().iter().filter_map(|s| properties_header(&s.properties, "service")).collect();
        assert_eq!(requesters.len(), 4, "four calls, four client names: {requesters:?}");
        assert_eq!(reply_queues(&service), Vec::<String>::new(), "every call removed its reply queue");
        go.stop().await;
    }
}

broker_test! {
    /// One client, many calls in flight on one key, no correlation ids at all (requests byte
    /// for byte goamqp's): the goamqp service answers in order and each call gets its own body.
    async fn calls_in_flight_on_one_key_are_matched_without_correlation_ids() {
        let (_cleanup, go, service, client) = go_echo_and_goamqp_client("interop-fifo").await;
        let name = client.name().to_string();
        let client = Arc::new(client);

        let mut calls = tokio::task::JoinSet::new();
        for n in 0..40 {
            let client = client.clone();
            calls.spawn(async move { (n, client.call("echo", format!(r#"{{"n":{n}}}"#).as_bytes(), DEADLINE).await) });
        }
        while let Some(done) = calls.join_next().await {
            let (n, reply) = done.unwrap();
            let reply = reply.unwrap_or_else(|e| panic!("call {n}: {e}"));
            assert_eq!(String::from_utf8(reply.body).unwrap(), format!(r#"{{"n":{n}}}"#), "call {n}'s answer");
        }
        for seen in go.requests_seen() {
            assert_request_as_goamqp_sends_it(&seen, &name, false);
        }
        Arc::into_inner(client).unwrap().close().await;
        assert_eq!(reply_queues(&service), Vec::<String>::new(), "the transient reply queue is gone");
        go.stop().await;
    }
}

broker_test! {
    /// The reply queue's flags, as the broker has them: a generated client's is exclusive and
    /// auto-delete (with goamqp's `x-expires`); a named client's is goamqp's durable queue.
    async fn reply_queues_are_transient_for_generated_names_and_durable_for_given_ones() {
        let service = unique_service("interop-flags");
        let cleanup = Cleanup::new();
        cleanup.service(&service);
        let go = GoService::start(&service, &["echo"], |_, body| body.to_vec()).await;
        let flags = |queue: &str| {
            broker_listing("list_queues", &["name", "durable", "exclusive", "auto_delete", "arguments"])
                .into_iter()
                .find(|row| row["name"] == queue)
                .unwrap_or_else(|| panic!("no queue {queue}"))
        };

        let transient = Client::connect_transient(&broker_url(), &service, &["echo"]).await.unwrap();
        assert!(transient.name().starts_with("warren-cli-"), "{}", transient.name());
        let queue = transient.reply_queue().to_string();
        assert_eq!(queue, format!("{service}.headers.exchange.response.queue.{}", transient.name()));
        let row = flags(&queue);
        assert_eq!((&row["durable"], &row["exclusive"], &row["auto_delete"]), (&false.into(), &true.into(), &true.into()), "{row}");
        // rabbitmqctl lists arguments as [name, type, value].
        let expires = row["arguments"].as_array().and_then(|a| a.iter().find(|arg| arg[0] == "x-expires")).cloned();
        assert_eq!(expires.map(|arg| arg[2].clone()), Some(432_000_000.into()), "{row}");
        transient.call("echo", b"1", DEADLINE).await.unwrap();
        transient.close().await;
        assert_eq!(reply_queues(&service), Vec::<String>::new());

        let named = Client::connect(&broker_url(), &service, "billing", &["echo"]).await.unwrap();
        named.call("echo", b"2", DEADLINE).await.unwrap();
        named.close().await;
        let row = flags(&format!("{service}.headers.exchange.response.queue.billing"));
        assert_eq!((&row["durable"], &row["exclusive"], &row["auto_delete"]), (&true.into(), &false.into(), &false.into()), "{row}");
        go.stop().await;
    }
}

broker_test! {
    /// A Warren host answers a client that sends no correlation id (it copies none across)
    /// and one that does (it copies it): the client needs neither.
    async fn a_warren_host_answers_with_and_without_correlation_ids() {
        let service = unique_service("interop-host");
        let cleanup = Cleanup::new();
        cleanup.service(&service);
        let config = config(&service, &requests(&[("echo", "echo")]));
        cleanup.topology_of(&config);
        let server = start(&config).await;
        for correlation_ids in [false, true] {
            let options = ClientOptions { correlation_ids, ..ClientOptions::goamqp(GOAMQP_PREFETCH) };
            let client = Client::connect_with(&broker_url(), &service, &format!("{service}-c"), &["echo"], options)
                .await
                .unwrap();
            let reply = client.call("echo", b"[1]", DEADLINE).await.unwrap();
            assert_eq!(reply.body, b"[1]");
            assert_eq!(reply.correlation_id.is_some(), correlation_ids, "the host copies an id only when sent one");
            client.close().await;
        }
        server.stop().await.expect("the host stops cleanly");
    }
}

/// The channels of the connection named `connection_name`, as the broker lists them.
fn channels_of(connection_name: &str) -> Vec<serde_json::Value> {
    let named = |c: &serde_json::Value| {
        c["client_properties"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|p| p[0] == "connection_name" && p[2] == connection_name)
    };
    let connection = broker_listing("list_connections", &["pid", "client_properties"])
        .into_iter()
        .find(named)
        .unwrap_or_else(|| panic!("no connection named {connection_name}"));
    broker_listing(
        "list_channels",
        &["connection", "global_prefetch_count", "prefetch_count", "confirm", "consumer_count"],
    )
    .into_iter()
    .filter(|c| c["connection"] == connection["pid"])
    .collect()
}

broker_test! {
    /// `warren bench` loads a service as a goamqp client would: its requests are goamqp's
    /// byte for byte, and the broker sees goamqp's one channel with `basic.qos(20, global)`,
    /// the reply consumer on it, and no publisher confirms.
    async fn the_bench_client_is_goamqp_on_the_wire_and_on_the_broker() {
        let (_cleanup, go, _service, client) = go_echo_and_goamqp_client("interop-bench").await;
        let name = client.name().to_string();
        let reply = client.call("echo", b"[7]", DEADLINE).await.expect("answered");
        assert_eq!(reply.body, b"[7]");
        assert_request_as_goamqp_sends_it(&go.wait_for_requests(1).await[0], &name, false);

        let channels = tokio::task::spawn_blocking(move || channels_of(&format!("warren {name}"))).await.unwrap();
        assert_eq!(channels.len(), 1, "one channel, as goamqp: {channels:?}");
        let channel = &channels[0];
        assert_eq!(channel["global_prefetch_count"], 20, "basic.qos(20, global): {channel}");
        assert_eq!(channel["confirm"], false, "no publisher confirms: {channel}");
        assert_eq!(channel["consumer_count"], 1, "the reply consumer shares it: {channel}");
        client.close().await;
        go.stop().await;
    }
}
