//! The broker drops every connection mid-stream: the host reconnects, redeclares, resumes,
//! and every request is answered at least once. This file holds one test on purpose: it closes
//! all connections on the broker, and cargo runs test binaries one at a time.

use std::collections::BTreeMap;
use std::time::Duration;

use warren_tests::*;

broker_test! {
    async fn after_the_broker_drops_all_connections_every_request_is_answered() {
        let service = unique_service("recover");
        // Each request takes 20 ms and 10 run at once: 2000 take about 4 s, so the cut lands
        // mid-stream.
        let mut config = config(&service, &format!("prefetch = 10\n{}", requests(&[("slow", "chaos")])));
        let metrics = free_address();
        config.metrics = Some(metrics);
        const N: usize = 2000;

        // Queue every request first (the host declares the queue, then steps aside).
        let mut declaring = config.clone();
        declaring.metrics = None;
        start(&declaring).await.stop().await.unwrap();
        let mut client = GoClient::new(&service, "go-client", &["slow"]).await;
        for id in 0..N {
            client.request("slow", b"slow:20", &id.to_string()).await;
        }
        let server = start(&config).await;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let serving = tokio::spawn(server.serve(async move {
            let _ = stopped.await;
        }));

        let mut answers: BTreeMap<String, usize> = BTreeMap::new();
        let record = |answers: &mut BTreeMap<String, usize>, response: lapin::message::Delivery| {
            let id = response.properties.correlation_id().as_ref().expect("correlation id copied").to_string();
            *answers.entry(id).or_default() += 1;
        };
        for _ in 0..N / 10 {
            record(&mut answers, client.response(DEADLINE).await.expect("answers before the cut"));
        }
        rabbitmqctl(&["close_all_connections", "warren test: broker-side cut"]);
        // What the first connection received (and acked) before the cut still counts.
        while let Some(response) = client.response(Duration::from_millis(200)).await {
            record(&mut answers, response);
        }
        let before = answers.len();

        // Responses routed meanwhile wait in our durable response queue.
        let mut client = loop {
            if let Ok(client) = tokio::time::timeout(Duration::from_secs(5), GoClient::new(&service, "go-client", &["slow"])).await {
                break client;
            }
        };
        while answers.len() < N {
            let Some(response) = client.response(Duration::from_secs(60)).await else {
                panic!("only {} of {N} requests were answered after the cut", answers.len());
            };
            record(&mut answers, response);
        }
        let duplicates: usize = answers.values().map(|n| n - 1).sum();
        println!("{N} requests: {before} answered before the cut, all {N} in the end; {duplicates} answered twice (the at-least-once window)");
        assert!(before < N, "the cut came after everything was answered: the test proved nothing");
        assert!((0..N).all(|id| answers.contains_key(&id.to_string())));

        // The broker itself stops and comes back: /readyz follows, and the host serves again.
        rabbitmqctl(&["stop_app"]);
        eventually("/readyz reports the outage", || http_get(metrics, "/readyz").0 == 503).await;
        assert_eq!(http_get(metrics, "/healthz").0, 200, "the process stays up");
        rabbitmqctl(&["start_app"]);
        rabbitmqctl(&["await_startup"]);
        let back = std::time::Instant::now();
        eventually("/readyz reports ready again", || http_get(metrics, "/readyz").0 == 200).await;
        println!("serving again {} ms after the broker was back", back.elapsed().as_millis());
        let mut client = GoClient::new(&service, "go-client", &["slow"]).await;
        client.request("slow", b"after the restart", "last").await;
        assert_eq!(client.response(DEADLINE).await.expect("answered after the restart").data, b"after the restart");

        stop.send(()).unwrap();
        tokio::time::timeout(DEADLINE, serving).await.expect("serve returns after the signal").unwrap().expect("a clean stop");
        client.cleanup().await;
        delete_service(&service).await;
    }
}
