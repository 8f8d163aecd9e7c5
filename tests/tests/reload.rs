//! Hot reload on the real broker: swapping a plugin's file while requests flow loses nothing
//! and switches behaviour; a bad file leaves the old version serving; a restart with unchanged
//! plugins loads them from the compiled cache.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use warren::wasm::CodeSource;
use warren_tests::*;

const ECHO_ANSWER: &[u8] = br#"{"name":"Ada"}"#;
const GREET_ANSWER: &[u8] = br#"{"greeting":"Hello, Ada!"}"#;

/// A request naming `id`: echo answers it unchanged, greet with `Hello, <id>!`. goamqp sets
/// no correlation id, so the id travels in the body.
fn named(id: usize) -> Vec<u8> {
    format!(r#"{{"name":"{id}"}}"#).into_bytes()
}

/// The id an answer to [`named`] carries, and whether echo (`true`) or greet answered.
fn answered_id(answer: &[u8]) -> (String, bool) {
    let answer: serde_json::Value = serde_json::from_slice(answer).expect("a JSON answer");
    if let Some(name) = answer["name"].as_str() {
        return (name.to_string(), true);
    }
    let greeting = answer["greeting"].as_str().unwrap_or_else(|| panic!("neither echo's nor greet's answer: {answer}"));
    let id = greeting.strip_prefix("Hello, ").and_then(|g| g.strip_suffix('!')).expect("greet's answer");
    (id.to_string(), false)
}

fn example(name: &str) -> Vec<u8> {
    std::fs::read(plugins_dir().join(format!("{name}.wasm"))).unwrap()
}

fn generation(server: &Server, plugin: &str) -> u64 {
    server.plugins().into_iter().find(|p| p.name == plugin).expect("a live plugin").generation
}

broker_test! {
    async fn swapping_a_plugin_under_load_answers_every_request_exactly_once() {
        let service = unique_service("swap");
        let dir = private_plugins(&service, &[("hello", "echo")]);
        let files = Cleanup::new();
        files.dir(&dir);
        let mut s = Scenario::start_in(&service, &dir, &[("hello", "hello")], "", &[]).await;
        let (echo, greet) = (example("echo"), example("greet"));

        let swaps_done = AtomicBool::new(false);
        let sent = AtomicUsize::new(0);
        let traffic = async {
            // A steady stream with many in flight, until every swap is done (and at least 2000).
            // Paced: goamqp publishes without confirms, so nothing else slows the stream down.
            while !swaps_done.load(Ordering::SeqCst) || sent.load(Ordering::SeqCst) < 2000 {
                let id = sent.fetch_add(1, Ordering::SeqCst);
                s.client.request("hello", &named(id)).await;
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        };
        let swaps = async {
            // By rename (the deploy contract) and by plain copy over the file (truncate + write).
            let plan: [(&[u8], bool); 5] = [(&greet, true), (&echo, false), (&greet, true), (&echo, false), (&greet, false)];
            for (generation_after, (bytes, by_rename)) in (2..).zip(plan) {
                if by_rename {
                    deploy_by_rename(&dir, "hello", bytes);
                } else {
                    std::fs::copy(plugins_dir().join(if bytes == greet.as_slice() { "greet.wasm" } else { "echo.wasm" }), dir.join("hello.wasm")).unwrap();
                }
                eventually("the new version serves", || generation(&s.server, "hello") == generation_after).await;
            }
            swaps_done.store(true, Ordering::SeqCst);
        };
        tokio::join!(traffic, swaps);
        let sent = sent.load(Ordering::SeqCst);

        let mut answers: BTreeMap<String, Vec<bool>> = BTreeMap::new();
        let mut received = 0;
        while received < sent {
            let response = s.client.response(DEADLINE).await.unwrap_or_else(|| panic!("only {received} of {sent} answered"));
            let (id, by_echo) = answered_id(&response.data);
            answers.entry(id).or_default().push(by_echo);
            received += 1;
        }
        // No request is answered twice: the broker holds nothing more for us.
        s.assert_no_response().await;
        assert_eq!(answers.len(), sent, "every request got an answer");
        assert!((0..sent).all(|id| answers.contains_key(&id.to_string())), "the answers name the requests sent");
        let by_echo = answers.values().filter(|a| a[0]).count();
        let by_greet = answers.values().filter(|a| !a[0]).count();
        assert_eq!(by_echo + by_greet, sent, "every answer is echo's or greet's");
        assert!(by_echo > 0 && by_greet > 0, "answers switched between versions ({by_echo} echo, {by_greet} greet)");

        // The last version deployed (greet) answers from now on.
        s.client.request("hello", ECHO_ANSWER).await;
        assert_eq!(s.client.response(DEADLINE).await.expect("answered").data, GREET_ANSWER);
        assert!(s.server.refused_reloads().is_empty(), "{:?}", s.server.refused_reloads());
        s.finish().await;
    }
}

broker_test! {
    async fn a_bad_new_file_is_refused_and_the_old_version_keeps_serving() {
        let service = unique_service("badswap");
        let dir = private_plugins(&service, &[("hello", "echo")]);
        let files = Cleanup::new();
        files.dir(&dir);
        let mut s = Scenario::start_in(&service, &dir, &[("hello", "hello")], "", &[]).await;
        let greet = example("greet");
        let wrong_world = std::fs::read(fixtures_dir().join("wrongworld.wasm")).unwrap();
        let bad_files: [(&[u8], &str); 4] = [
            (&greet[..greet.len() / 3], "is not a valid component"),
            (b"\0asm\x01\0\0\0", "is a core WebAssembly module, not a WebAssembly component"),
            (b"echo 'not wasm'", "not WebAssembly at all"),
            (&wrong_world, "does not fit the warren:plugin/handler@0.1.0 world"),
        ];
        for (i, (bytes, problem)) in bad_files.into_iter().enumerate() {
            deploy_by_rename(&dir, "hello", bytes);
            eventually("the file is refused", || s.server.refused_reloads().len() == i + 1).await;
            let refusal = &s.server.refused_reloads()[i];
            assert!(refusal.contains("plugin 'hello'") && refusal.contains("hello.wasm"), "{refusal}");
            assert!(refusal.contains(problem), "{refusal}");

            s.client.request("hello", b"still echo").await;
            assert_eq!(s.client.response(DEADLINE).await.expect("the old version answers").data, b"still echo");
            assert_eq!(generation(&s.server, "hello"), 1);
        }
        s.finish().await;
    }
}

broker_test! {
    async fn a_restart_with_unchanged_plugins_loads_them_from_the_cache() {
        let service = unique_service("cache");
        let dir = private_plugins(&service, &[("hello", "greet")]);
        let config = config_in(&service, &dir, &requests(&[("hello", "hello")]));
        let cleanup = Cleanup::new();
        cleanup.service(&service).dir(&dir);

        let first = start(&config).await;
        assert_eq!(first.plugins()[0].source, CodeSource::Compiled, "a fresh folder compiles");
        first.stop().await.unwrap();

        let mut s = Scenario::start_in(&service, &dir, &[("hello", "hello")], "", &[]).await;
        assert_eq!(s.server.plugins()[0].source, CodeSource::Cache, "no compile ran on restart");
        s.client.request("hello", ECHO_ANSWER).await;
        assert_eq!(s.client.response(DEADLINE).await.expect("the cached code answers").data, GREET_ANSWER);
        s.finish().await;
    }
}

broker_test! {
    async fn a_config_reload_adds_and_removes_routing_keys_while_traffic_flows() {
        let mut s = Scenario::start("cfgreload", &[("old", "echo"), ("steady", "echo")], "", &["new"]).await;
        let queue = s.request_queue();
        let reloaded = config(&s.service, &requests(&[("steady", "echo"), ("new", "greet")]));

        const N: usize = 600;
        let (server, client) = (&mut s.server, &s.client);
        let traffic = async {
            for id in 0..N {
                client.request("steady", &named(id)).await;
            }
        };
        let (_, applied) = tokio::join!(traffic, server.reload(reloaded));
        applied.expect("the new config applies");

        let mut ids = std::collections::BTreeSet::new();
        for _ in 0..N {
            let response = s.client.response(DEADLINE).await.expect("every request on the steady key is answered");
            let (id, by_echo) = answered_id(&response.data);
            assert!(by_echo, "the steady key stays with echo");
            assert!(ids.insert(id.clone()), "request {id} answered twice");
        }
        assert_eq!(ids.len(), N);

        s.client.request("new", ECHO_ANSWER).await;
        assert_eq!(s.client.response(DEADLINE).await.expect("the added key is served").data, GREET_ANSWER);
        let mut keys: Vec<String> = broker_listing("list_bindings", &["source_name", "destination_name", "routing_key"])
            .into_iter()
            .filter(|b| b["destination_name"] == queue.as_str() && b["source_name"] != "")
            .map(|b| b["routing_key"].as_str().unwrap().to_string())
            .collect();
        keys.sort();
        assert_eq!(keys, ["new", "steady"], "the removed key's binding is gone, the added one is there");

        // A config naming a plugin that does not exist is refused whole; the old one serves.
        let broken = config(&s.service, &requests(&[("steady", "no-such-plugin")]));
        let error = s.server.reload(broken).await.expect_err("refused").to_string();
        assert!(error.contains("plugin 'no-such-plugin'") && error.contains("nothing was changed"), "{error}");
        let renamed = config(&format!("{}-other", s.service), &requests(&[("steady", "echo")]));
        let error = s.server.reload(renamed).await.expect_err("refused").to_string();
        assert!(error.contains("changing service.name needs a restart"), "{error}");
        s.client.request("steady", b"still").await;
        assert_eq!(s.client.response(DEADLINE).await.expect("still served").data, b"still");
        s.finish().await;
    }
}
