//! The broker drops every connection mid-stream: the host reconnects, redeclares, resumes,
//! and every request is answered at least once. This file holds one test on purpose: it closes
//! all connections on the broker and stops the broker app, and cargo runs test binaries one
//! at a time.

use std::collections::BTreeMap;
use std::time::Duration;

use warren_tests::*;

/// `slow:20` tagged with `id` in trailing whitespace: chaos trims the number, so every request
/// still takes 20 ms, and answers it with the same body. goamqp sets no correlation id: the
/// body is what tells the answers apart.
fn tagged(id: usize) -> Vec<u8> {
    let mut body = b"slow:20".to_vec();
    let mut rest = id;
    loop {
        body.push(b" \t\n\r"[rest % 4]);
        rest /= 4;
        if rest == 0 {
            return body;
        }
    }
}

fn id_of(body: &[u8]) -> usize {
    let tag = body.strip_prefix(b"slow:20").unwrap_or_else(|| panic!("not a tagged answer: {body:?}"));
    tag.iter().rev().fold(0, |id, c| id * 4 + b" \t\n\r".iter().position(|w| w == c).unwrap())
}

broker_test! {
    async fn after_the_broker_drops_all_connections_every_request_is_answered() {
        assert_eq!((0..5000).map(|id| id_of(&tagged(id))).collect::<Vec<_>>(), (0..5000).collect::<Vec<_>>());
        let service = unique_service("recover");
        let cleanup = Cleanup::new();
        cleanup.service(&service);
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
            client.request("slow", &tagged(id)).await;
        }
        client.sync().await;
        let server = start(&config).await;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let serving = tokio::spawn(server.serve(async move {
            let _ = stopped.await;
        }));

        let mut answers: BTreeMap<usize, usize> = BTreeMap::new();
        let record = |answers: &mut BTreeMap<usize, usize>, response: lapin::message::Delivery| {
            *answers.entry(id_of(&response.data)).or_default() += 1;
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
        assert!((0..N).all(|id| answers.contains_key(&id)));

        // The broker itself stops and comes back: /readyz follows, and the host serves again.
        // If anything in between fails, dropping the guard starts the broker again.
        let broker = BrokerStopped::stop_app();
        eventually("/readyz reports the outage", || http_get(metrics, "/readyz").0 == 503).await;
        assert_eq!(http_get(metrics, "/healthz").0, 200, "the process stays up");
        broker.start_app();
        let back = std::time::Instant::now();
        eventually("/readyz reports ready again", || http_get(metrics, "/readyz").0 == 200).await;
        println!("serving again {} ms after the broker was back", back.elapsed().as_millis());
        let mut client = GoClient::new(&service, "go-client", &["slow"]).await;
        client.request("slow", b"after the restart").await;
        assert_eq!(client.response(DEADLINE).await.expect("answered after the restart").data, b"after the restart");

        stop.send(()).unwrap();
        tokio::time::timeout(DEADLINE, serving).await.expect("serve returns after the signal").unwrap().expect("a clean stop");
        client.cleanup().await;
    }
}
