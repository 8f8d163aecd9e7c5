//! A config reload is all or nothing: when the broker refuses the new topology, the old
//! plugins, routes and grants keep serving, and the error says so in one line. The compiled
//! code cache lives in the host's private state folder, outside the plugins folder; an entry
//! is loaded only when its MAC says this host wrote it and no other user could have written
//! it, and the cache keeps only what a live plugin uses.

use std::path::Path;

use lapin::options::QueueDeclareOptions;
use lapin::types::{AMQPValue, FieldTable};
use warren::wasm::plugins::{Plugins, Reloaded};
use warren::wasm::{CodeSource, Runtime};
use warren_tests::*;

const ECHO_ANSWER: &[u8] = br#"{"name":"Ada"}"#;
const GREET_ANSWER: &[u8] = br#"{"greeting":"Hello, Ada!"}"#;

/// Where [`private_plugins`] puts the test's plugins folder.
fn plugins_folder(service: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("warren-plugins-{service}"))
}

fn live(server: &Server) -> Vec<(String, u64, String)> {
    server.plugins().into_iter().map(|p| (p.name, p.generation, p.hash)).collect()
}

/// The routing keys bound to `queue` from a named exchange, sorted.
fn bound_keys(queue: &str) -> Vec<String> {
    let mut keys: Vec<String> = broker_listing("list_bindings", &["source_name", "destination_name", "routing_key"])
        .into_iter()
        .filter(|b| b["destination_name"] == queue && b["source_name"] != "")
        .map(|b| b["routing_key"].as_str().unwrap().to_string())
        .collect();
    keys.sort();
    keys
}

broker_test! {
    async fn a_reload_the_broker_refuses_leaves_the_old_plugins_routes_and_grants_serving() {
        let service = unique_service("atomic");
        // Everything named after the service, and the plugins folder, go when this is dropped,
        // also when the test fails.
        let cleanup = Cleanup::new();
        cleanup.service(&service).dir(&plugins_folder(&service));
        let dir = private_plugins(&service, &[("hello", "echo"), ("greet", "greet")]);
        // hello serves one key and consumes a stream; the new config moves it to another one
        // (a reload may not add a queue: the instance pool is sized at start).
        let (old_stream, stream) = (format!("{service}-a"), format!("{service}-b"));
        let event = |stream: &str| format!("[[event]]\nrouting_key = \"thing.#\"\nplugin = \"hello\"\nstream = \"{stream}\"\n");
        let config = config_in(&service, &dir, &format!("{}{}", requests(&[("hello", "hello")]), event(&old_stream)));
        let mut s = Scenario::from_config(config, &["hello", "new"]).await;
        let queue = s.request_queue();
        let before = live(&s.server);
        assert_eq!(before.iter().map(|(name, generation, _)| (name.as_str(), *generation)).collect::<Vec<_>>(), [("hello", 1)]);

        // Someone else already declared the event queue the new config needs, with another
        // x-expires: RabbitMQ answers the host's declaration with 406.
        let event_queue = format!("{stream}.topic.exchange.queue.{service}");
        let channel = s.client.connection.create_channel().await.unwrap();
        let mut arguments = FieldTable::default();
        arguments.insert("x-expires".into(), AMQPValue::LongInt(60_000));
        let durable = QueueDeclareOptions { durable: true, ..Default::default() };
        channel.queue_declare(event_queue.as_str().into(), durable, arguments).await.unwrap();
        bounded_close(channel.close(200, "declared".into())).await;

        // The new config: the old key goes to another plugin, a new key is added, hello gets
        // a new grant (so it is loaded again) and consumes the conflicting event queue.
        let new = config_in(
            &service,
            &dir,
            &format!(
                "{}{}[plugin.hello]\npublish = [\"{stream}\"]\n",
                requests(&[("hello", "greet"), ("new", "greet")]),
                event(&stream)
            ),
        );
        let consumed = |s: &Scenario| -> Vec<String> {
            s.server.topology().consumers.iter().map(|c| c.queue.clone()).collect::<Vec<_>>()
        };
        let consumed_before = consumed(&s);
        assert_eq!(consumed_before.len(), 2);
        let error = s.server.reload(new.clone()).await.expect_err("the broker refuses the new topology").to_string();
        assert!(!error.contains('\n'), "the error is one line: {error}");
        assert!(error.starts_with("config not reloaded, nothing was changed"), "{error}");
        assert!(error.contains(&format!("queue '{event_queue}'")) && error.contains("406"), "{error}");
        assert!(error.contains("x-expires"), "the error names the argument that differs: {error}");

        // The old plugin set, with the old grants (the same version, not a new generation)…
        assert_eq!(live(&s.server), before, "no plugin was swapped, added or dropped");
        assert_eq!(consumed(&s), consumed_before, "the same queues are consumed");
        // …and the old routes: the old key is still answered by the old plugin…
        s.client.request("hello", ECHO_ANSWER).await;
        let answer = s.client.response(DEADLINE).await.expect("the old key is answered");
        assert_eq!((answer.routing_key.as_str(), answer.data.as_slice()), ("hello", ECHO_ANSWER), "by echo, not greet");
        // …and the new key is not served (nor bound).
        assert_eq!(bound_keys(&queue), ["hello"]);
        s.client.request("new", ECHO_ANSWER).await;
        s.assert_no_response().await;

        // Once the conflict is gone, the same config applies whole.
        let channel = s.client.connection.create_channel().await.unwrap();
        channel.queue_delete(event_queue.as_str().into(), Default::default()).await.unwrap();
        bounded_close(channel.close(200, "deleted".into())).await;
        s.server.reload(new).await.expect("the new config applies");
        let after = live(&s.server);
        let names: Vec<(&str, u64)> = after.iter().map(|(name, generation, _)| (name.as_str(), *generation)).collect();
        assert_eq!(names, [("greet", 1), ("hello", 2)], "greet added, hello reloaded with its new grant");
        for key in ["hello", "new"] {
            s.client.request(key, ECHO_ANSWER).await;
            let answer = s.client.response(DEADLINE).await.unwrap_or_else(|| panic!("key {key} is answered"));
            assert_eq!((answer.routing_key.as_str(), answer.data.as_slice()), (key, GREET_ANSWER));
        }
        assert_eq!(bound_keys(&queue), ["hello", "new"]);
        s.finish().await;
    }
}

/// The compiled entries in `config`'s private state folder.
fn cache_entries(config: &Config) -> Vec<String> {
    let mut files: Vec<String> = std::fs::read_dir(config.state_dir.join("code"))
        .map(|entries| entries.filter_map(|e| e.ok()?.file_name().into_string().ok()).collect())
        .unwrap_or_default();
    files.sort();
    files
}

fn source(plugins: &Plugins) -> CodeSource {
    plugins.table()[0].source
}

/// A host start as far as its plugins: a fresh engine on the folder's code cache.
async fn load(config: &Config) -> Plugins {
    init_logging();
    let runtime = Runtime::new(4, 64 << 20, false, Some(config.state_dir.clone())).unwrap();
    Plugins::load_all(&runtime, config).await.unwrap_or_else(|e| panic!("the plugins load: {e}"))
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cache_others_could_write_is_compiled_over_and_unused_entries_are_pruned() {
    use std::os::unix::fs::PermissionsExt;
    let chmod = |path: &Path, mode| std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    let service = unique_service("cacheperm");
    let cleanup = Cleanup::new();
    cleanup.dir(&plugins_folder(&service));
    let dir = private_plugins(&service, &[("hello", "echo")]);
    let config = config_in(&service, &dir, &requests(&[("hello", "hello")]));
    cleanup.dir(&config.state_dir);
    let cache = config.state_dir.join("code");
    assert!(!config.state_dir.starts_with(&dir), "the cache lives outside the plugins folder");

    let first = load(&config).await;
    assert_eq!(source(&first), CodeSource::Compiled, "a fresh folder compiles");
    let mode = std::fs::metadata(&cache).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700, "the cache folder is the host user's alone");
    let entries = cache_entries(&config);
    assert_eq!(entries.len(), 1, "{entries:?}");
    let entry = cache.join(&entries[0]);
    assert_eq!(std::fs::metadata(&entry).unwrap().permissions().mode() & 0o777, 0o600);
    assert_eq!(source(&load(&config).await), CodeSource::Cache, "a restart loads the cached code");

    // An entry this host did not write (here: its MAC no longer fits its bytes, as with a
    // .cwasm copied in from a bundle or another host): compiled over, never loaded.
    let mut bytes = std::fs::read(&entry).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&entry, &bytes).unwrap();
    assert_eq!(source(&load(&config).await), CodeSource::Compiled, "an entry that fails its MAC is compiled over");
    assert_eq!(source(&load(&config).await), CodeSource::Cache, "and rewritten authenticated");

    // A folder others may write: its code is never loaded; the plugin is compiled instead.
    chmod(&cache, 0o777);
    assert_eq!(source(&load(&config).await), CodeSource::Compiled, "a world-writable folder is not trusted");
    chmod(&cache, 0o700);
    // A file others may write: compiled instead, and the entry rewritten as the host's alone.
    chmod(&entry, 0o666);
    assert_eq!(source(&load(&config).await), CodeSource::Compiled, "a world-writable file is not trusted");
    assert_eq!(std::fs::metadata(&entry).unwrap().permissions().mode() & 0o777, 0o600, "rewritten");
    assert_eq!(source(&load(&config).await), CodeSource::Cache);

    // A new version swapped in: the old version's compiled code goes.
    deploy_by_rename(&dir, "hello", &std::fs::read(plugins_dir().join("greet.wasm")).unwrap());
    let plugins = std::sync::Arc::new(first);
    let reloading = plugins.clone();
    let reloaded = tokio::task::spawn_blocking(move || reloading.reload("hello")).await.unwrap().unwrap();
    let Reloaded::Swapped(status) = reloaded else { panic!("the new version serves: {reloaded:?}") };
    let entries = cache_entries(&config);
    assert_eq!(entries.len(), 1, "only the live version's code is kept: {entries:?}");
    assert!(entries[0].starts_with(&format!("hello-{}-", &status.hash[..32])), "{entries:?}");
}
