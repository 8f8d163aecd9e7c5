//! A component built with another ecosystem's bindings runs on Warren unmodified:
//! `tests/fixtures/counter-wasmcloud` uses wasmCloud's `wasmcloud-component` crate (its
//! `wasi:keyvalue` `store.open`, `atomics.increment`, `bucket.get` and `wasi:config/store`
//! at 0.2.0-draft), not Warren's SDK, and exports only Warren's `handle`.
//!
//! - two hosts of one service count in one Redis bucket: every count from 1 to N once, both
//!   hosts served some (each host's config value `host` comes back in its answers), Redis
//!   holds N under the service's own key;
//! - one host without Redis (the embedded store) remembers the count across a restart.
//!
//! Each test uses a service of its own, so its own Redis keys (`<service>:<bucket>:<key>`),
//! and deletes them when it ends, also when it fails.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use warren_tests::*;

const REDIS: &str = "redis://127.0.0.1:6379/0";

/// Deletes every Redis key of `service` when dropped.
struct RedisKeys(String);

impl Drop for RedisKeys {
    fn drop(&mut self) {
        let Ok(client) = redis::Client::open(REDIS) else { return };
        let Ok(mut connection) = client.get_connection_with_timeout(Duration::from_secs(2)) else { return };
        let keys: Vec<String> =
            redis::cmd("KEYS").arg(format!("{}:*", self.0)).query(&mut connection).unwrap_or_default();
        if !keys.is_empty() {
            let _: redis::RedisResult<()> = redis::cmd("DEL").arg(keys).query(&mut connection);
        }
    }
}

/// A plugins folder of the test's own holding the wasmCloud-built counter as `counter`.
fn plugins(service: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("warren-plugins-{service}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(fixture("counter-wasmcloud"), dir.join("counter.wasm")).unwrap();
    dir
}

/// The config of one host: `counter` on routing key `count`, granted the bucket `counters`,
/// its config value `host` = `host`, the store `store` (the lines of `[keyvalue]`).
fn host_config(service: &str, plugins: &Path, host: &str, store: &str) -> Config {
    let rest = format!(
        "prefetch = 10\n{}[plugin.counter]\nkeyvalue = [\"counters\"]\n[plugin.counter.config]\nhost = \"{host}\"\n[keyvalue]\n{store}\n",
        requests(&[("count", "counter")])
    );
    config_in(service, plugins, &rest)
}

/// Sends `n` increments of `key` and returns every answer.
async fn increments(client: &mut GoClient, n: usize, key: &str) -> Vec<serde_json::Value> {
    for _ in 0..n {
        client.request_json("count", &serde_json::json!({ "key": key })).await;
    }
    let mut answers = Vec::with_capacity(n);
    while answers.len() < n {
        let answer = client.response(DEADLINE).await.unwrap_or_else(|| panic!("only {} of {n} answers", answers.len()));
        answers.push(serde_json::from_slice(&answer.data).expect("a JSON answer"));
    }
    answers
}

/// Starts a host on `config` once the embedded store of the host stopped before it is free:
/// the file's lock goes with the last plugin version holding the store, dropped a moment after
/// `stop` returns (a real restart is a new process, whose lock is free at once).
async fn restart(config: &Config) -> Server {
    let until = tokio::time::Instant::now() + DEADLINE;
    loop {
        match Server::start(config).await {
            Ok(server) => return server,
            Err(error) if error.to_string().contains("open in another process") => {
                assert!(tokio::time::Instant::now() < until, "the stopped host never freed its store: {error}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(error) => panic!("the host did not restart: {error}"),
        }
    }
}

fn count(answer: &serde_json::Value) -> u64 {
    answer["count"].as_u64().unwrap_or_else(|| panic!("no count in {answer}"))
}

broker_test! {
    /// 400 increments of one key, spread by RabbitMQ over two hosts of one service on one
    /// Redis: the counts answered are 1 to 400, each once (`atomics.increment` is atomic
    /// across hosts), `bucket.get` read back a value at least the count, both hosts served
    /// some, and Redis holds "400" under `<service>:counters:hits`.
    async fn two_hosts_count_in_one_redis_bucket() {
        let service = unique_service("wasmcloud-redis");
        let _keys = RedisKeys(service.clone());
        let cleanup = Cleanup::new();
        cleanup.service(&service);
        let dir = plugins(&service);
        cleanup.dir(&dir);
        let store = format!("url = \"{REDIS}\"");
        let first = start(&host_config(&service, &dir, "a", &store)).await;
        let second = start(&host_config(&service, &dir, "b", &store)).await;
        let mut client = GoClient::new(&service, &format!("{service}-client"), &["count"]).await;

        const N: usize = 400;
        let answers = increments(&mut client, N, "hits").await;
        let counts: BTreeSet<u64> = answers.iter().map(count).collect();
        assert_eq!(counts, (1..=N as u64).collect::<BTreeSet<_>>(), "every count from 1 to {N}, once each");
        for answer in &answers {
            let stored: u64 = answer["stored"].as_str().and_then(|s| s.parse().ok()).unwrap_or(0);
            assert!(stored >= count(answer), "bucket.get after the increment read {stored}: {answer}");
        }
        let served_by: BTreeSet<&str> = answers.iter().filter_map(|a| a["config"]["host"].as_str()).collect();
        assert_eq!(served_by, BTreeSet::from(["a", "b"]), "both hosts served");

        let mut redis = redis::Client::open(REDIS).unwrap().get_connection().expect("Redis answers at 127.0.0.1:6379");
        let stored: Option<String> = redis::cmd("GET").arg(format!("{service}:counters:hits")).query(&mut redis).unwrap();
        assert_eq!(stored.as_deref(), Some("400"), "Redis holds the final count under the service's own key");

        client.cleanup().await;
        first.stop().await.unwrap();
        second.stop().await.unwrap();
    }
}

broker_test! {
    /// One host without Redis (the embedded store at `[keyvalue] path`): three increments
    /// count 1, 2, 3; after the host stops and a new one starts on the same file, the next
    /// counts 4.
    async fn one_host_remembers_in_the_embedded_store_across_a_restart() {
        let service = unique_service("wasmcloud-embedded");
        let cleanup = Cleanup::new();
        cleanup.service(&service);
        let dir = plugins(&service);
        cleanup.dir(&dir);
        let state = std::env::temp_dir().join(format!("warren-kv-{service}"));
        std::fs::create_dir_all(&state).unwrap();
        cleanup.dir(&state);
        let store = format!("path = \"{}\"", state.join("kv").display());
        let config = host_config(&service, &dir, "a", &store);

        let host = start(&config).await;
        let mut client = GoClient::new(&service, &format!("{service}-client"), &["count"]).await;
        let before: Vec<u64> = increments(&mut client, 3, "visits").await.iter().map(count).collect();
        assert_eq!(before, [1, 2, 3]);
        host.stop().await.unwrap();

        let host = restart(&config).await;
        let after = increments(&mut client, 1, "visits").await;
        assert_eq!(count(&after[0]), 4, "the restarted host counts on: {}", after[0]);
        client.cleanup().await;
        host.stop().await.unwrap();
    }
}
