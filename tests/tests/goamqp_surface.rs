//! The rest of goamqp's surface on the real broker, with peers written here in plain lapin:
//! event streams (durable, suffixed, transient), responses to a plugin's own requests, events
//! published by plugins, grants, and header fidelity. Names are spelled out, not computed.

use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, ExchangeKind, options::*};
use serde_json::{Value, json};
use warren_tests::*;

fn json_body(delivery: &lapin::message::Delivery) -> Value {
    serde_json::from_slice(&delivery.data).unwrap()
}

/// The orders example's config beside its `[[request]]`: billing's answers, audit's events,
/// `[database.orders]` on `db`, and `grants` for the orders plugin besides its database (one
/// transaction per call, as `warren-orders.toml` has it).
fn orders_config(db: &TestDb, grants: &str) -> String {
    format!(
        "[[response]]\nservice = \"billing\"\nrouting_key = \"invoice.create\"\nplugin = \"orders\"\n\
         [[event]]\nrouting_key = \"order.#\"\nplugin = \"audit\"\n\
         [database.orders]\nurl = \"{}\"\nmax_connections = 2\n\
         [plugin.orders]\ndatabases = [\"orders\"]\ntransaction = true\n{grants}\n\
         [plugin.audit]\npublish = [\"audit\"]\n",
        db.url()
    )
}

/// A database of the test's own holding the orders plugin's table, made by the same
/// `plugins/orders/schema.sql` the demo's users apply.
async fn orders_database(what: &str) -> TestDb {
    let db = TestDb::new(what).await;
    let schema = include_str!("../../plugins/orders/schema.sql");
    db.client().await.batch_execute(schema).await.expect("plugins/orders/schema.sql applies");
    db
}

/// Postgres's own view of the orders table: `(id, amount)` by id.
async fn stored_orders(db: &TestDb) -> Vec<(String, i64)> {
    let rows = db.client().await.query("SELECT id, amount FROM orders ORDER BY id", &[]).await.expect("the orders");
    rows.iter().map(|row| (row.get(0), row.get(1))).collect()
}

broker_test! {
    async fn the_orders_example_talks_goamqp_in_both_directions() {
        let service = unique_service("orders");
        let cleanup = Cleanup::new();
        // A goamqp "billing" service (the name the orders plugin asks): it answers
        // invoice.create from billing.direct.exchange.request.queue, as goamqp declares it.
        let billing = GoService::start("billing", &["invoice.create"], |_, body| {
            let request: Value = serde_json::from_slice(body).unwrap();
            serde_json::to_vec(&json!({"order": request["order"], "invoice": "inv-7"})).unwrap()
        })
        .await;
        let mut events = Tap::bind("events.topic.exchange", lapin::ExchangeKind::Topic, &["order.*"], &cleanup).await;
        let mut audit = Tap::bind("audit.topic.exchange", lapin::ExchangeKind::Topic, &["audit.recorded"], &cleanup).await;

        let db = orders_database("orders").await;
        let plugins = private_plugins(&service, &[("orders", "orders"), ("audit", "audit")]);
        cleanup.dir(&plugins);
        let config = orders_config(&db, "publish = [\"events\"]\nrequest = [\"billing\"]");
        let mut s = Scenario::start_in(&service, &plugins, &[("order.create", "orders")], &config, &[]).await;
        let traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let mut headers = FieldTable::default();
        headers.insert("service".into(), AMQPValue::LongString(LongString::from("go-client")));
        headers.insert("traceparent".into(), AMQPValue::LongString(LongString::from(traceparent)));
        s.client.publish("order.create", br#"{"id":"o-1","amount":42}"#, BasicProperties::default().with_headers(headers)).await;

        let response = s.client.response(DEADLINE).await.expect("orders answers");
        assert_eq!(json_body(&response), json!({"id": "o-1", "status": "created"}));
        assert_goamqp_message(&response, "go-client", &[]);
        assert_eq!(stored_orders(&db).await, [("o-1".to_string(), 42)], "the order was committed before the answer");

        let created = events.next_from(&service).await.expect("order.created is published");
        assert_eq!(created.routing_key.as_str(), "order.created");
        assert_eq!(json_body(&created), json!({"id": "o-1", "amount": 42}));
        assert_goamqp_message(&created, &service, &[]);
        assert_eq!(header(&created, "traceparent").as_deref(), Some(traceparent), "trace context travels on");

        // Billing got a goamqp request from the plugin (no correlation id, nothing goamqp does
        // not send) and answered it the goamqp way: no correlation id either.
        let requests = billing.wait_for_requests(1).await;
        assert_eq!(requests.len(), 1);
        assert_eq!(requests[0].routing_key, "invoice.create");
        assert_eq!(serde_json::from_slice::<Value>(&requests[0].body).unwrap(), json!({"order": "o-1", "amount": 42}));
        requests[0].assert_goamqp(&service, &[]);

        let invoiced = events.next_from(&service).await.expect("the response handler publishes order.invoiced");
        assert_eq!(invoiced.routing_key.as_str(), "order.invoiced");
        assert_eq!(json_body(&invoiced), json!({"order": "o-1", "invoice": "inv-7"}));
        assert_goamqp_message(&invoiced, &service, &[]);

        // audit consumed both order events from the stream and recorded them.
        let mut recorded = vec![json_body(&audit.next_from(&service).await.expect("audited")), json_body(&audit.next_from(&service).await.expect("audited"))];
        recorded.sort_by_key(|r| r["key"].as_str().unwrap().to_string());
        assert_eq!(recorded, [json!({"key": "order.created", "bytes": 24, "service": service}), json!({"key": "order.invoiced", "bytes": 33, "service": service})]);

        // Billing's answer was taken and acked: nothing waits in the orders host's response queue.
        wait_until_settled(&format!("billing.headers.exchange.response.queue.{service}")).await;

        // The same order again (a client's retry, or a redelivery after the commit): its row is
        // there, so it is answered as the first time and nothing is announced or billed twice.
        s.client.request("order.create", br#"{"id":"o-1","amount":42}"#).await;
        let again = s.client.response(DEADLINE).await.expect("orders answers the repeated order");
        assert_eq!(json_body(&again), json!({"id": "o-1", "status": "created"}));
        assert_eq!(stored_orders(&db).await, [("o-1".to_string(), 42)]);
        wait_until_settled("billing.direct.exchange.request.queue").await;
        assert_eq!(billing.requests_seen().len(), 1, "the repeated order was billed again");
        events.assert_nothing_from(&service).await;
        s.finish().await;
        billing.stop().await;
    }
}

/// Sends `order` to an orders host granted its database and `grants` (besides), whose handler
/// then fails after its insert: checks that the order was rejected (dead-lettered, not retried),
/// not answered, and left no row. Returns what the test checks further (a tap on the `events`
/// stream, bound before the order was sent) and the guards of what it made.
async fn refused_order(what: &str, grants: &str, order: &[u8]) -> (Scenario, Tap, TestDb, Cleanup) {
    let service = unique_service(what);
    let cleanup = Cleanup::new();
    let db = orders_database(what).await;
    let plugins = private_plugins(&service, &[("orders", "orders"), ("audit", "audit")]);
    cleanup.dir(&plugins);
    let events = Tap::bind("events.topic.exchange", lapin::ExchangeKind::Topic, &["order.*"], &cleanup).await;
    let config = orders_config(&db, grants);
    let mut s = Scenario::start_in(&service, &plugins, &[("order.create", "orders")], &config, &[]).await;
    s.client.request("order.create", order).await;
    let rejected = s.dead.next(DEADLINE).await.expect("the failed order is rejected (dead-lettered)");
    assert_eq!(rejected.data, order);
    assert_eq!(DeadLetters::death_reason(&rejected).as_deref(), Some("rejected"), "rejected, not retried");
    // Settled, so whatever the call published was confirmed before: the broker holds no answer.
    s.assert_no_response().await;
    assert_eq!(stored_orders(&db).await, [], "the failed call's insert was rolled back");
    (s, events, db, cleanup)
}

broker_test! {
    async fn a_plugin_without_a_grant_cannot_publish() {
        // Granted only its database: the insert runs, publishing order.created is denied.
        let (s, mut events, _db, _cleanup) = refused_order("nogrant", "", br#"{"id":"o-2","amount":1}"#).await;
        events.assert_nothing_from(&s.service).await;
        s.finish().await;
    }
}

broker_test! {
    async fn an_order_whose_billing_request_is_refused_leaves_no_row_and_is_rejected() {
        // Granted its stream but not billing: the order is inserted and announced, then asking
        // billing is denied, the handler fails (`failed`) and the host rolls the insert back.
        let grants = "publish = [\"events\"]";
        let (s, mut events, _db, _cleanup) = refused_order("nobill", grants, br#"{"id":"o-3","amount":5}"#).await;
        // The README's window, as documented: an event is confirmed before the commit, so the
        // announcement of an order whose call then failed was still sent.
        let created = events.next_from(&s.service).await.expect("order.created went out before the failure");
        assert_eq!(json_body(&created), json!({"id": "o-3", "amount": 5}));
        s.finish().await;
    }
}

broker_test! {
    async fn event_queues_durable_suffixed_and_transient_are_declared_as_goamqp_does() {
        let service = unique_service("streams");
        let config_text = "[[event]]\nrouting_key = \"order.#\"\nplugin = \"echo\"\n\
            [[event]]\nrouting_key = \"user.*\"\nplugin = \"echo\"\n\
            [[event]]\nstream = \"audit\"\nrouting_key = \"x.y\"\nplugin = \"echo\"\nqueue_suffix = \"replay\"\n\
            [[event]]\nrouting_key = \"ping\"\nplugin = \"echo\"\ntransient = true\n\
            [[response]]\nservice = \"billing\"\nrouting_key = \"invoice.create\"\nplugin = \"echo\"\n";
        let config = config(&service, config_text);
        let cleanup = Cleanup::new();
        cleanup.service(&service).topology_of(&config);
        let server = start(&config).await;
        let mine = |name: &str| name.ends_with(&service) || name.contains(&format!("{service}-"));
        let queues: Vec<Value> = broker_listing("list_queues", &["name", "durable", "auto_delete", "exclusive", "arguments"])
            .into_iter()
            .filter(|q| mine(q["name"].as_str().unwrap()))
            .collect();
        let find = |name: &str| queues.iter().find(|q| q["name"] == name).unwrap_or_else(|| panic!("no queue {name} in {queues:?}")).clone();
        let expires = json!([["x-expires", "signedint", 432000000]]);
        assert_eq!(find(&format!("events.topic.exchange.queue.{service}")), json!({"name": format!("events.topic.exchange.queue.{service}"), "durable": true, "auto_delete": false, "exclusive": false, "arguments": expires}));
        assert_eq!(find(&format!("audit.topic.exchange.queue.{service}-replay"))["durable"], true);
        assert_eq!(find(&format!("billing.headers.exchange.response.queue.{service}"))["arguments"], expires);
        let transient: Vec<&Value> = queues.iter().filter(|q| q["name"].as_str().unwrap().starts_with(&format!("events.topic.exchange.queue.{service}-"))).collect();
        assert_eq!(transient.len(), 1);
        let uuid = transient[0]["name"].as_str().unwrap().rsplit_once(&format!("{service}-")).unwrap().1;
        assert_eq!(uuid.len(), 36, "a UUID suffix: {uuid}");
        assert_eq!((transient[0]["durable"].clone(), transient[0]["auto_delete"].clone(), transient[0]["exclusive"].clone()), (json!(false), json!(true), json!(true)));
        assert_eq!(transient[0]["arguments"], expires);
        assert_eq!(queues.len(), 4);

        let bindings: Vec<Value> = broker_listing("list_bindings", &["source_name", "destination_name", "routing_key", "arguments"])
            .into_iter()
            .filter(|b| mine(b["destination_name"].as_str().unwrap()) && b["source_name"] != "")
            .collect();
        let durable_keys: Vec<&str> = bindings.iter().filter(|b| b["destination_name"] == format!("events.topic.exchange.queue.{service}")).map(|b| b["routing_key"].as_str().unwrap()).collect();
        assert_eq!(durable_keys.len(), 2);
        assert!(durable_keys.contains(&"order.#") && durable_keys.contains(&"user.*"), "{durable_keys:?}");
        let response = bindings.iter().find(|b| b["source_name"] == "billing.headers.exchange.response").expect("response binding");
        assert_eq!(response["routing_key"], "invoice.create");
        assert_eq!(response["arguments"], json!([["service", "longstr", service]]), "service=S and no x-match");
        assert_eq!(bindings.len(), 5);

        server.stop().await.unwrap();
        assert!(
            !broker_listing("list_queues", &["name"]).iter().any(|q| q["name"].as_str().unwrap().starts_with(&format!("events.topic.exchange.queue.{service}-"))),
            "the transient queue went with its connection"
        );
    }
}

/// Sends one message carrying every AMQP header type to `plugin` (from `plugins`), which
/// copies its headers onto its answer, and checks each came back with its type and value.
async fn every_header_type_round_trips(plugins: &std::path::Path, plugin: &str, body: &[u8]) {
    let service = unique_service(plugin);
    let mut s = Scenario::start_in(&service, plugins, &[("headers", plugin)], "", &[]).await;
    let mut nested = FieldTable::default();
    nested.insert("n".into(), AMQPValue::LongLongInt(1));
    nested.insert("s".into(), AMQPValue::LongString(LongString::from("x")));
    let sent: Vec<(&str, AMQPValue)> = vec![
        ("text", AMQPValue::LongString(LongString::from("hello"))),
        ("integer", AMQPValue::LongLongInt(-42)),
        ("float", AMQPValue::Double(2.5)),
        ("flag", AMQPValue::Boolean(true)),
        ("bytes", AMQPValue::ByteArray(vec![0u8, 1, 255].into())),
        ("when", AMQPValue::Timestamp(1_700_000_000)),
        ("nothing", AMQPValue::Void),
        ("table", AMQPValue::FieldTable(nested)),
        ("array", AMQPValue::FieldArray(vec![AMQPValue::LongLongInt(1), AMQPValue::Boolean(false)].into())),
    ];
    let mut headers = FieldTable::default();
    headers.insert("service".into(), AMQPValue::LongString(LongString::from("go-client")));
    for (name, value) in &sent {
        headers.insert((*name).into(), value.clone());
    }
    s.client.publish("headers", body, BasicProperties::default().with_headers(headers)).await;
    let response = s.client.response(DEADLINE).await.expect("answered");
    let got = response.properties.headers().as_ref().unwrap().inner();
    for (name, value) in &sent {
        assert_eq!(got.get(*name), Some(value), "header {name} through {plugin}");
    }
    // The plugin set exactly the headers it copied; Warren added service and traceparent.
    let names: Vec<&str> = sent.iter().map(|(name, _)| *name).collect();
    assert_goamqp_message(&response, "go-client", &names);
    s.finish().await;
}

broker_test! {
    async fn every_header_type_round_trips_through_a_plugin() {
        every_header_type_round_trips(plugins_dir(), "chaos", b"headers").await;
    }
}

broker_test! {
    async fn every_header_type_round_trips_through_a_python_plugin() {
        every_header_type_round_trips(fixtures_dir(), "headers-py", b"").await;
    }
}

broker_test! {
    async fn every_header_type_round_trips_through_a_javascript_plugin() {
        every_header_type_round_trips(fixtures_dir(), "headers-js", b"").await;
    }
}

broker_test! {
    async fn every_header_type_round_trips_through_a_go_plugin() {
        every_header_type_round_trips(fixtures_dir(), "headers-go", b"").await;
    }
}

broker_test! {
    async fn a_go_panic_costs_only_its_message() {
        let service = unique_service("gopanic");
        let handlers = [("panic", "headers-go"), ("headers", "headers-go")];
        let mut s = Scenario::start_in(&service, fixtures_dir(), &handlers, "", &[]).await;
        s.client.request("panic", b"boom").await;
        let dead = s.dead.next(DEADLINE).await.expect("the panicking message is rejected");
        assert_eq!(dead.data, b"boom");
        assert_eq!(DeadLetters::death_reason(&dead).as_deref(), Some("rejected"));
        s.client.request("headers", b"after").await;
        let answer = s.client.response(DEADLINE).await.expect("the next message is answered");
        assert_eq!(answer.data, b"after");
        s.finish().await;
    }
}

broker_test! {
    async fn a_go_plugin_publishes_typed_headers_where_granted_and_is_refused_elsewhere() {
        let service = unique_service("gopub");
        let stream = format!("{service}-stream");
        let exchange = format!("{stream}.topic.exchange");
        let grant = format!("[plugin.headers-go]\npublish = [\"{stream}\"]");
        let mut s = Scenario::start_in(&service, fixtures_dir(), &[("publish", "headers-go")], &grant, &[]).await;
        let mut events = Tap::bind(&exchange, ExchangeKind::Topic, &["#"], &s.cleanup).await;

        let headers = |to: &str| {
            let mut headers = FieldTable::default();
            headers.insert("service".into(), AMQPValue::LongString(LongString::from("go-client")));
            headers.insert("stream".into(), AMQPValue::LongString(LongString::from(to)));
            headers.insert("attempt".into(), AMQPValue::LongLongInt(3));
            headers.insert("urgent".into(), AMQPValue::Boolean(true));
            BasicProperties::default().with_headers(headers)
        };
        s.client.publish("publish", br#"{"id":1}"#, headers(&stream)).await;
        let answer = s.client.response(DEADLINE).await.expect("answered once the event is confirmed");
        assert_eq!(answer.data, br#"{"id":1}"#);
        let event = events.next_from(&service).await.expect("the event");
        assert_eq!(event.data, br#"{"id":1}"#);
        assert_eq!(event.routing_key.as_str(), "fixture.published");
        let got = event.properties.headers().as_ref().unwrap().inner();
        assert_eq!(got.get("attempt"), Some(&AMQPValue::LongLongInt(3)), "an int64 stays an integer");
        assert_eq!(got.get("urgent"), Some(&AMQPValue::Boolean(true)));
        assert_goamqp_message(&event, &service, &["attempt", "urgent"]);

        // A stream the config does not grant: the send is denied, the message refused for good.
        s.client.publish("publish", br#"{"id":2}"#, headers("not-granted")).await;
        let dead = s.dead.next(DEADLINE).await.expect("the refused message is dead-lettered");
        assert_eq!(dead.data, br#"{"id":2}"#);
        assert_eq!(DeadLetters::death_reason(&dead).as_deref(), Some("rejected"), "rejected, not requeued");
        events.assert_nothing_from(&service).await;
        s.assert_no_response().await;
        s.finish().await;
    }
}

broker_test! {
    async fn a_plugin_publishes_to_a_queue_as_goamqps_queue_publisher_does() {
        let service = unique_service("qpub");
        let target = format!("{service}-inbox");
        let cleanup = Cleanup::new();
        cleanup.service(&service);
        let connection = connect().await;
        let channel = connection.create_channel().await.unwrap();
        channel.queue_declare(target.as_str().into(), QueueDeclareOptions { exclusive: true, ..Default::default() }, FieldTable::default()).await.unwrap();
        let mut inbox = consume(&channel, &target).await;

        let grant = format!("[plugin.chaos]\nqueues = [\"{target}\"]");
        let mut s = Scenario::start_in(&service, plugins_dir(), &[("chaos", "chaos")], &grant, &[]).await;
        s.client.request("chaos", format!("queue:{target}").as_bytes()).await;
        assert_eq!(s.client.response(DEADLINE).await.expect("answered").data, b"sent");
        let queued = tokio::time::timeout(DEADLINE, inbox.recv()).await.unwrap().expect("the queue got it");
        assert_eq!(queued.data, b"queued");
        assert_eq!(queued.exchange.as_str(), "", "the default exchange");
        assert_eq!(queued.routing_key.as_str(), "chaos", "routing key = the message key");
        let cc = queued.properties.headers().as_ref().unwrap().inner().get("CC").cloned();
        assert_eq!(cc, Some(AMQPValue::FieldArray(vec![AMQPValue::LongString(LongString::from(target.as_str()))].into())));
        assert_goamqp_message(&queued, &service, &["CC"]);

        // Without the grant the plugin is refused and nothing is sent.
        s.client.request("chaos", b"queue:somewhere-else").await;
        let refused = String::from_utf8(s.client.response(DEADLINE).await.expect("answered").data).unwrap();
        assert!(refused.starts_with("refused: SendError::Denied") && refused.contains("may not publish to queue"), "{refused}");
        s.finish().await;
        bounded_close(connection.close(200, "done".into())).await;
    }
}
