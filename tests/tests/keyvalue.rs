//! Plugin state over `wasi:keyvalue` (issue 23), against the real stores: the `counter` plugin
//! on Redis at 127.0.0.1:6379 (`.ci/run` starts one) and on the embedded file.
//!
//! - two hosts of one service share a counter: 1,000 increments spread over both give 1,000
//!   distinct counts and a final 1,000 (and both hosts served some);
//! - compare-and-swap under contention: 300 read-then-swap counts from two hosts give 300
//!   distinct counts, none lost;
//! - a bucket not granted is refused (`access-denied`), the messages rejected as `failed`,
//!   the refusal logged once (naming the grant to add), and nothing is written;
//! - a Redis paused with `CLIENT PAUSE` gives the guest an error before the call's deadline
//!   (counted as a key-value `timeout`, not a deadline fault), and the next message is served;
//! - the embedded store keeps a count across a host's restart.
//!
//! Each test uses a service of its own (so its own Redis keys, `<service>:<bucket>:<key>`) and
//! deletes them when it ends, also when it fails.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use warren_tests::*;

const REDIS: &str = "redis://127.0.0.1:6379/0";

/// Deletes every Redis key of `service` when dropped.
struct RedisKeys {
    service: String,
}

impl Drop for RedisKeys {
    fn drop(&mut self) {
        let Ok(client) = redis::Client::open(REDIS) else { return };
        let Ok(mut connection) = client.get_connection_with_timeout(Duration::from_secs(2)) else { return };
        let keys: Vec<String> =
            redis::cmd("KEYS").arg(format!("{}:*", self.service)).query(&mut connection).unwrap_or_default();
        if !keys.is_empty() {
            let _: redis::RedisResult<()> = redis::cmd("DEL").arg(keys).query(&mut connection);
        }
    }
}

fn redis_get(key: &str) -> Option<String> {
    let mut connection = redis::Client::open(REDIS).unwrap().get_connection().expect("Redis answers at 127.0.0.1:6379");
    redis::cmd("GET").arg(key).query(&mut connection).unwrap()
}

/// A config serving `count` with `counter`, granted `buckets`, its store `store` (TOML lines of
/// `[keyvalue]`), metrics at `metrics`.
fn counter_config(service: &str, buckets: &str, store: &str, limits: &str, metrics: SocketAddr) -> Config {
    // Every test of this binary makes its config first: the log is captured from the start.
    capture_logs(warren::cli::DEFAULT_LOG_FILTER);
    let rest = format!(
        "prefetch = 20\n{}[plugin.counter]\nkeyvalue = [{buckets}]\n{limits}\n[keyvalue]\n{store}\n",
        requests(&[("count", "counter")])
    );
    let mut config = config(service, &rest);
    config.metrics = Some(metrics);
    config
}

/// `name = value` samples of `/metrics` at `addr` whose line starts with `prefix`, summed.
fn metric_sum(addr: SocketAddr, prefix: &str) -> f64 {
    let (_, text) = http_get(addr, "/metrics");
    text.lines()
        .filter(|line| line.starts_with(prefix))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Sends `n` requests with `body` and returns the counts answered, smallest first.
async fn counts(client: &mut GoClient, n: usize, body: &serde_json::Value) -> Vec<u64> {
    for _ in 0..n {
        client.request_json("count", body).await;
    }
    let mut counts = Vec::with_capacity(n);
    while counts.len() < n {
        let answer =
            client.response(DEADLINE).await.unwrap_or_else(|| panic!("only {} of {n} answers came", counts.len()));
        let counted: serde_json::Value = serde_json::from_slice(&answer.data).unwrap();
        counts.push(counted["count"].as_u64().unwrap_or_else(|| panic!("not a count: {counted}")));
    }
    counts.sort_unstable();
    counts
}

/// Two hosts of `service` on Redis answer `n` requests with `body`; returns the counts and
/// the increments each host made.
async fn two_hosts_count(what: &str, n: usize, body: serde_json::Value) -> (Vec<u64>, String, [f64; 2]) {
    let service = unique_service(what);
    let cleanup = Cleanup::new();
    cleanup.service(&service);
    let _keys = RedisKeys { service: service.clone() };
    let store = format!("url = \"{REDIS}\"");
    let (a, b) = (free_address(), free_address());
    let host_a = start(&counter_config(&service, "\"counters\"", &store, "", a)).await;
    let host_b = start(&counter_config(&service, "\"counters\"", &store, "", b)).await;
    let mut client = GoClient::new(&service, "kv-client", &["count"]).await;
    let counted = counts(&mut client, n, &body).await;
    let ops = |addr| metric_sum(addr, "warren_keyvalue_operations_total{plugin=\"counter\",bucket=\"counters\"");
    let per_host = [ops(a), ops(b)];
    let name = body["name"].as_str().unwrap().to_string();
    let stored = redis_get(&format!("{service}:counters:{name}")).unwrap_or_default();
    client.cleanup().await;
    host_a.stop().await.expect("the host stops cleanly");
    host_b.stop().await.expect("the host stops cleanly");
    (counted, stored, per_host)
}

broker_test! {
    async fn two_hosts_of_one_service_share_a_counter_over_redis() {
        let (counted, stored, per_host) = two_hosts_count("kv-shared", 1000, serde_json::json!({"name": "shared"})).await;
        let distinct: BTreeSet<u64> = counted.iter().copied().collect();
        assert_eq!(distinct.len(), 1000, "every increment got a count of its own");
        assert_eq!((distinct.first(), distinct.last()), (Some(&1), Some(&1000)));
        assert_eq!(stored, "1000", "the final count in Redis");
        assert!(per_host.iter().all(|&n| n > 0.0), "both hosts counted: {per_host:?}");
    }
}

broker_test! {
    async fn compare_and_swap_under_contention_loses_no_count() {
        let body = serde_json::json!({"name": "swapped", "swap": true});
        let (counted, stored, per_host) = two_hosts_count("kv-swap", 300, body).await;
        let distinct: BTreeSet<u64> = counted.iter().copied().collect();
        assert_eq!(distinct, (1..=300).collect(), "300 swaps, 300 distinct counts");
        assert_eq!(stored, "300");
        assert!(per_host.iter().all(|&n| n > 0.0), "both hosts swapped: {per_host:?}");
    }
}

broker_test! {
    async fn a_bucket_not_granted_is_refused() {
        let service = unique_service("kv-denied");
        let cleanup = Cleanup::new();
        cleanup.service(&service);
        let _keys = RedisKeys { service: service.clone() };
        let metrics = free_address();
        let config = counter_config(&service, "\"elsewhere\"", &format!("url = \"{REDIS}\""), "", metrics);
        let host = start(&config).await;
        let client = GoClient::new(&service, "kv-client", &["count"]).await;
        for _ in 0..2 {
            client.request_json("count", &serde_json::json!({"name": "x"})).await;
        }
        eventually("both requests are rejected", || messages_total(metrics, "counter", "rejected") >= 2.0).await;
        let denial = "plugin 'counter' may not open key-value bucket 'counters': grant it with keyvalue = [\"counters\"]";
        let said = captured_log().lines().filter(|line| line.contains(denial)).count();
        assert_eq!(said, 1, "the refusal is logged once per plugin and bucket:\n{}", captured_log());
        assert_eq!(redis_get(&format!("{service}:counters:x")), None, "nothing was written");
        client.cleanup().await;
        host.stop().await.expect("the host stops cleanly");
    }
}

broker_test! {
    async fn a_paused_redis_is_an_error_before_the_deadline_and_the_next_message_is_served() {
        let service = unique_service("kv-paused");
        let cleanup = Cleanup::new();
        cleanup.service(&service);
        let _keys = RedisKeys { service: service.clone() };
        let metrics = free_address();
        let limits = "timeout_ms = 500\nmax_retries = 0";
        let host = start(&counter_config(&service, "\"counters\"", &format!("url = \"{REDIS}\""), limits, metrics)).await;
        let mut client = GoClient::new(&service, "kv-client", &["count"]).await;
        assert_eq!(counts(&mut client, 1, &serde_json::json!({"name": "p"})).await, [1]);

        let mut admin = redis::Client::open(REDIS).unwrap().get_connection().unwrap();
        let _: () = redis::cmd("CLIENT").arg("PAUSE").arg(1500).arg("ALL").query(&mut admin).unwrap();
        let paused = std::time::Instant::now();
        client.request_json("count", &serde_json::json!({"name": "p"})).await;
        eventually("the guest got the store's error", || {
            metric_sum(metrics, "warren_keyvalue_operations_total{plugin=\"counter\",bucket=\"counters\",op=\"increment\",outcome=\"timeout\"}") >= 1.0
        })
        .await;
        assert!(paused.elapsed() < Duration::from_millis(1400), "the error came within the call's deadline, not after the pause");
        assert_eq!(messages_total(metrics, "counter", "faulted"), 0.0, "the guest answered; no deadline fault");

        // Once Redis answers again, the next message is served (the paused one was not counted
        // by this host's call: it may have landed after the pause, so the next count is 2 or 3).
        tokio::time::sleep(Duration::from_millis(1600).saturating_sub(paused.elapsed())).await;
        let next = counts(&mut client, 1, &serde_json::json!({"name": "p"})).await;
        assert!(matches!(next[..], [2 | 3]), "the next message was served: {next:?}");
        client.cleanup().await;
        host.stop().await.expect("the host stops cleanly");
    }
}

/// Starts a host on `config`, trying again for up to 5 s while the store file is still held
/// by a host this process just stopped.
async fn start_when_free(config: &Config) -> Server {
    for _ in 0..50 {
        match Server::start(config).await {
            Ok(server) => return server,
            Err(e) if e.to_string().contains("open in another process") => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("the host did not start: {e}"),
        }
    }
    panic!("the stopped host still held the store file after 5 s")
}

broker_test! {
    async fn the_embedded_store_keeps_a_count_across_a_restart() {
        let service = unique_service("kv-embedded");
        let cleanup = Cleanup::new();
        cleanup.service(&service);
        let path = std::env::temp_dir().join(format!("warren-kv-{service}"));
        struct Remove(std::path::PathBuf);
        impl Drop for Remove {
            fn drop(&mut self) {
                let _ = std::fs::remove_file(&self.0);
            }
        }
        let _remove = Remove(path.clone());
        let store = format!("path = \"{}\"", path.display());
        let mut config = counter_config(&service, "\"counters\"", &store, "", free_address());
        // No metrics endpoint: its thread may outlive `stop` for a moment, holding the store.
        config.metrics = None;
        let body = serde_json::json!({"name": "kept"});
        let host = start(&config).await;
        let mut client = GoClient::new(&service, "kv-client", &["count"]).await;
        assert_eq!(counts(&mut client, 3, &body).await, [1, 2, 3]);
        host.stop().await.expect("the host stops cleanly");

        // The stopped host's last threads (the plugin watcher's) let go of the store file
        // within moments; a new process would not wait at all.
        let again = start_when_free(&config).await;
        assert_eq!(counts(&mut client, 1, &body).await, [4], "the count survived the restart");
        client.cleanup().await;
        again.stop().await.expect("the host stops cleanly");
    }
}
