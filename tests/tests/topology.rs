//! After a host starts, the broker's own listings (`rabbitmqctl`) hold exactly the entities
//! SPEC §1 names for a request-serving service — names written out here, not computed by the
//! host's naming module.

use serde_json::{Value, json};
use warren_tests::*;

fn only_named(rows: Vec<Value>, field: &str, prefix: &str) -> Vec<Value> {
    rows.into_iter().filter(|r| r[field].as_str().is_some_and(|n| n.starts_with(prefix))).collect()
}

broker_test! {
async fn a_request_service_declares_goamqps_exchanges_queue_and_bindings() {
    let service = unique_service("topo");
    let cleanup = Cleanup::new();
    cleanup.service(&service);
    let server = start(&config(&service, &requests(&[("echo", "echo"), ("greet", "greet")]))).await;
    let prefix = format!("{service}.");

    let mut exchanges = only_named(
        broker_listing("list_exchanges", &["name", "type", "durable", "auto_delete", "internal", "arguments"]),
        "name",
        &prefix,
    );
    exchanges.sort_by_key(|e| e["name"].as_str().unwrap().to_string());
    assert_eq!(
        exchanges,
        vec![
            json!({"name": format!("{service}.direct.exchange.request"), "type": "direct",
                   "durable": true, "auto_delete": false, "internal": false, "arguments": []}),
            json!({"name": format!("{service}.headers.exchange.response"), "type": "headers",
                   "durable": true, "auto_delete": false, "internal": false, "arguments": []}),
        ]
    );

    let queues = only_named(
        broker_listing("list_queues", &["name", "durable", "auto_delete", "exclusive", "arguments"]),
        "name",
        &prefix,
    );
    assert_eq!(
        queues,
        vec![json!({"name": format!("{service}.direct.exchange.request.queue"), "durable": true,
                    "auto_delete": false, "exclusive": false,
                    "arguments": [["x-expires", "signedint", 432000000]]})]
    );

    let mut bindings: Vec<Value> = only_named(
        broker_listing("list_bindings", &["source_name", "destination_name", "routing_key", "arguments"]),
        "destination_name",
        &prefix,
    )
    .into_iter()
    .filter(|b| b["source_name"] != "") // the default exchange binds every queue by name
    .collect();
    bindings.sort_by_key(|b| b["routing_key"].as_str().unwrap().to_string());
    let request_exchange = format!("{service}.direct.exchange.request");
    let queue = format!("{service}.direct.exchange.request.queue");
    assert_eq!(
        bindings,
        vec![
            json!({"source_name": request_exchange, "destination_name": queue, "routing_key": "echo", "arguments": []}),
            json!({"source_name": request_exchange, "destination_name": queue, "routing_key": "greet", "arguments": []}),
        ]
    );

    server.stop().await.unwrap();
}
}

broker_test! {
async fn a_queue_declared_with_other_arguments_is_refused_in_words() {
    let service = unique_service("conflict");
    let cleanup = Cleanup::new();
    cleanup.service(&service);
    // Someone declared our request queue without goamqp's x-expires.
    let connection = connect().await;
    let channel = connection.create_channel().await.unwrap();
    let queue = format!("{service}.direct.exchange.request.queue");
    channel
        .queue_declare(
            queue.as_str().into(),
            lapin::options::QueueDeclareOptions { durable: true, ..Default::default() },
            Default::default(),
        )
        .await
        .unwrap();

    let error = match Server::start(&config(&service, &requests(&[("echo", "echo")]))).await {
        Ok(_) => panic!("the host started on a queue with conflicting arguments"),
        Err(error) => error.to_string(),
    };
    assert!(error.contains(&format!("queue '{queue}'")), "{error}");
    assert!(error.contains("'x-expires'"), "{error}");
    assert!(error.contains("432000000"), "{error}");
    assert!(error.contains("delete it"), "{error}");

    bounded_close(connection.close(200, "done".into())).await;
}
}

/// What `warren topology` prints for a config is what the broker holds after `run`. The
/// demo's own service name (`demo`, `orders`) is swapped for a unique one: a host run by a
/// test must not leave a queue under a name a real deployment uses, collecting its events.
async fn assert_broker_holds(config_file: &str) {
    let mut config =
        Config::load(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(config_file)).unwrap();
    config.plugins_dir = plugins_dir().to_path_buf();
    config.service = unique_service(&config.service);
    let cleanup = Cleanup::new();
    cleanup.service(&config.service).topology_of(&config);
    // The demos' plugins are among the examples the tests build.
    let server = start(&config).await;
    let topology = server.topology().clone();
    let exchanges = broker_listing("list_exchanges", &["name", "type", "durable"]);
    for exchange in &topology.exchanges {
        let kind = serde_json::to_value(exchange.kind).unwrap();
        assert!(
            exchanges.iter().any(|e| e["name"] == exchange.name.as_str() && e["type"] == kind && e["durable"] == true),
            "{config_file}: exchange {} ({kind}) is not on the broker",
            exchange.name
        );
    }
    let queues = broker_listing("list_queues", &["name", "durable", "arguments"]);
    for queue in &topology.queues {
        let listed = queues
            .iter()
            .find(|q| q["name"] == queue.name.as_str())
            .unwrap_or_else(|| panic!("{config_file}: no queue {}", queue.name));
        assert_eq!(listed["durable"], queue.durable);
        let arguments: Vec<(String, Value)> = listed["arguments"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| (a[0].as_str().unwrap().to_string(), a[2].clone()))
            .collect();
        let expected: Vec<(String, Value)> =
            queue.arguments.iter().map(|(k, v)| (k.clone(), serde_json::to_value(v).unwrap())).collect();
        assert_eq!(arguments, expected, "{config_file}: arguments of {}", queue.name);
    }
    let bindings = broker_listing("list_bindings", &["source_name", "destination_name", "routing_key"]);
    for binding in &topology.bindings {
        assert!(
            bindings.iter().any(|b| b["source_name"] == binding.exchange.as_str()
                && b["destination_name"] == binding.queue.as_str()
                && b["routing_key"] == binding.routing_key.as_str()),
            "{config_file}: binding {} -> {} ({}) is not on the broker",
            binding.exchange,
            binding.queue,
            binding.routing_key
        );
    }
    server.stop().await.unwrap();
}

broker_test! {
    async fn the_demo_configs_topology_is_what_the_broker_holds() {
        assert_broker_holds("warren.toml").await;
        assert_broker_holds("warren-orders.toml").await;
    }
}
