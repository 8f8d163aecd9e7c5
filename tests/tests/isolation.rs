//! A handler can't take the host down: with the real `chaos` plugin on the real broker, each
//! misbehaviour costs only its own message (rejected, dead-lettered), and everything else is
//! still served. Limits, retries and grants come from the config.

use std::time::Duration;

use lapin::types::AMQPValue;
use warren_tests::*;

broker_test! {
    async fn chaos_costs_only_its_own_messages_while_echo_keeps_answering() {
        let handlers = [("chaos", "chaos"), ("echo", "echo")];
        let limits = "[limits]\ntimeout_ms = 3000\nmemory_mib = 64";
        let mut s = Scenario::start("chaos", &handlers, limits, &[]).await;
        let misbehaviours = ["loop", "alloc:1024", "panic", "slow:5000"];
        for body in misbehaviours {
            s.client.request("chaos", body.as_bytes()).await;
        }
        for i in 0..50 {
            s.client.request("echo", format!("normal {i}").as_bytes()).await;
        }
        let mut answered = std::collections::BTreeSet::new();
        while answered.len() < 50 {
            let response = s.client.response(DEADLINE).await.expect("every normal request is answered");
            assert!(response.data.starts_with(b"normal "), "only normal requests are answered");
            answered.insert(response.data);
        }
        // Served while the loop and the slow call still held their instances: neither has hit
        // its 3 s deadline yet. A host serving one message at a time answers only after both.
        let mut rejected = Vec::new();
        while let Some(dead) = s.dead.try_next() {
            rejected.push(String::from_utf8(dead.data).unwrap());
        }
        assert!(
            !rejected.iter().any(|r| r == "loop" || r == "slow:5000"),
            "echo was answered only after {rejected:?} were stopped: nothing overlapped"
        );
        while rejected.len() < misbehaviours.len() {
            let dead = s.dead.next(DEADLINE).await.expect("each misbehaving request is dead-lettered");
            assert_eq!(DeadLetters::death_reason(&dead).as_deref(), Some("rejected"));
            rejected.push(String::from_utf8(dead.data).unwrap());
        }
        rejected.sort();
        assert_eq!(rejected, ["alloc:1024", "loop", "panic", "slow:5000"]);
        s.assert_no_response().await; // and none of them got an answer

        // Within its limits the same plugin serves, and the next message gets a fresh instance.
        s.client.request("chaos", b"alloc:8").await;
        assert_eq!(s.client.response(DEADLINE).await.expect("answered").data, b"allocated 8 MiB (2048 pages)");
        s.finish().await;
    }
}

broker_test! {
    async fn retry_requeues_a_bounded_number_of_times_then_rejects() {
        let mut s = Scenario::start("retry", &[("chaos", "chaos")], "[limits]\nmax_retries = 3", &[]).await;
        s.client.request("chaos", b"retry").await;
        let dead = s.dead.next(DEADLINE).await.expect("rejected once the retries are used up");
        assert_eq!(dead.data, b"retry");
        assert_eq!(dead.routing_key.as_str(), s.request_queue(), "retries go straight back to the queue");
        let headers = dead.properties.headers().as_ref().unwrap().inner();
        assert_eq!(headers.get("x-warren-retries"), Some(&AMQPValue::LongLongInt(3)), "requeued exactly 3 times");
        assert_eq!(header(&dead, "x-warren-routing-key").as_deref(), Some("chaos"), "the original key is kept");
        s.assert_no_response().await;
        s.finish().await;
    }
}

broker_test! {
    async fn per_plugin_limits_reject_oversized_bodies_and_runaway_computation() {
        let handlers = [("chaos", "chaos"), ("echo", "echo")];
        let limits = "[plugin.echo]\nmax_body_kib = 1\n[plugin.chaos]\nfuel = 2000000\ntimeout_ms = 60000";
        let mut s = Scenario::start("limits", &handlers, limits, &[]).await;

        s.client.request("echo", &[b'x'; 2048]).await;
        let dead = s.dead.next(DEADLINE).await.expect("an oversized body is rejected before wasm");
        assert_eq!(dead.data.len(), 2048);
        s.client.request("echo", &[b'y'; 512]).await;
        assert_eq!(s.client.response(DEADLINE).await.expect("a small body is served").data, [b'y'; 512]);

        // slow:50000 would run 50 s; its fuel runs out long before the deadline.
        s.client.request("chaos", b"slow:50000").await;
        assert_eq!(s.dead.next(DEADLINE).await.expect("stopped by fuel").data, b"slow:50000");
        s.client.request("chaos", b"cheap").await;
        assert_eq!(s.client.response(DEADLINE).await.expect("within its fuel").data, b"cheap");
        s.finish().await;
    }
}

/// A folder of the test's own to grant, `warren-data-<service>` holding `greeting.txt` =
/// `granted file`; `files` removes it.
fn data_folder(service: &str, files: &Cleanup) -> std::path::PathBuf {
    let data = std::env::temp_dir().join(format!("warren-data-{service}"));
    std::fs::create_dir_all(&data).unwrap();
    files.dir(&data);
    std::fs::write(data.join("greeting.txt"), "granted file").unwrap();
    data
}

broker_test! {
    async fn plugins_reach_only_the_env_and_folder_the_config_grants() {
        let service = unique_service("grants");
        let files = Cleanup::new();
        let data = data_folder(&service, &files);
        let outside = data.with_extension("outside");
        std::fs::write(&outside, "secret").unwrap();

        let plugins = private_plugins(&service, &[("open", "chaos"), ("closed", "chaos")]);
        files.dir(&outside).dir(&plugins);
        let grants = format!("[plugin.open]\nenv = [\"CARGO_MANIFEST_DIR\"]\ndir = \"{}\"\ndir_as = \"/data\"", data.display());
        let handlers = [("open", "open"), ("closed", "closed")];
        let mut s = Scenario::start_in(&service, &plugins, &handlers, &grants, &[]).await;
        let mut ask = async |key: &str, body: &str| {
            s.client.request(key, body.as_bytes()).await;
            String::from_utf8(s.client.response(DEADLINE).await.expect("answered").data).unwrap()
        };

        assert_eq!(ask("open", "env:CARGO_MANIFEST_DIR").await, env!("CARGO_MANIFEST_DIR"));
        assert_eq!(ask("open", "env:PATH").await, "unset", "only the granted variable");
        assert_eq!(ask("open", "read:/data/greeting.txt").await, "granted file");
        assert!(ask("open", &format!("read:{}", outside.display())).await.starts_with("denied"));
        assert_eq!(ask("closed", "env:CARGO_MANIFEST_DIR").await, "unset", "nothing granted by default");
        assert!(ask("closed", "read:/data/greeting.txt").await.starts_with("denied"));
        s.finish().await;
    }
}

broker_test! {
    /// README: a granted `dir` is read-only to the plugin. `chaos` granted a folder as `/data`
    /// reads a file in it (the grant works), then tries to overwrite that file, create a new
    /// one and remove the file: each is refused with a WASI error in the plugin, and the host's
    /// folder is unchanged (the file's content, no new file). Fails if the folder were
    /// preopened writable: the plugin would answer `wrote` / `removed` and the folder change.
    async fn a_granted_folder_is_read_only_to_the_plugin() {
        let service = unique_service("dir-ro");
        let files = Cleanup::new();
        let data = data_folder(&service, &files);
        let grant = format!("[plugin.chaos]\ndir = \"{}\"\ndir_as = \"/data\"", data.display());
        let mut s = Scenario::start_in(&service, plugins_dir(), &[("chaos", "chaos")], &grant, &[]).await;
        let mut ask = async |body: &str| {
            s.client.request("chaos", body.as_bytes()).await;
            String::from_utf8(s.client.response(DEADLINE).await.expect("answered").data).unwrap()
        };

        assert_eq!(ask("read:/data/greeting.txt").await, "granted file", "the grant lets the plugin read");
        for attempt in ["write:/data/greeting.txt", "write:/data/new.txt", "remove:/data/greeting.txt"] {
            let answer = ask(attempt).await;
            assert!(answer.starts_with("denied: "), "{attempt}: the plugin saw {answer}");
        }
        assert_eq!(std::fs::read_to_string(data.join("greeting.txt")).unwrap(), "granted file", "the file changed");
        let mut names: Vec<_> = std::fs::read_dir(&data).unwrap().map(|e| e.unwrap().file_name()).collect();
        names.sort();
        assert_eq!(names, ["greeting.txt"], "the folder changed");
        s.finish().await;
    }
}

broker_test! {
    async fn the_quorum_profile_bounds_retries_with_the_brokers_delivery_count() {
        let extra = "queue_profile = \"quorum\"\n[limits]\nmax_retries = 2";
        let mut s = Scenario::start("quorum", &[("chaos", "chaos")], extra, &[]).await;
        let queues = broker_listing("list_queues", &["name", "type", "arguments"]);
        let queue = queues.iter().find(|q| q["name"] == s.request_queue().as_str()).expect("the request queue");
        assert_eq!(queue["type"], "quorum");

        s.client.request("chaos", b"retry").await;
        let dead = s.dead.next(DEADLINE).await.expect("rejected once the deliveries are used up");
        assert_eq!(dead.data, b"retry", "retries end in a dead letter instead of looping forever");
        assert_eq!(DeadLetters::death_reason(&dead).as_deref(), Some("rejected"));
        s.finish().await;
    }
}

/// Two calls at once on a host sized for one: the second waits for the first's instance to
/// be freed instead of failing its message (no broker: this is the runtime's own promise).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_that_finds_the_instance_pool_full_waits_for_a_free_slot() {
    use std::sync::Arc;
    use warren::config::PluginSettings;
    use warren::wasm::{CallContext, Request, Runtime};

    let runtime = Runtime::new(1, 64 << 20, false, None).unwrap();
    let chaos = runtime.load("chaos", &plugins_dir().join("chaos.wasm"), PluginSettings::default(), 1).unwrap();
    let chaos = Arc::new(chaos);
    let call = |body: &'static [u8]| {
        let chaos = chaos.clone();
        tokio::spawn(async move {
            let request = Request { routing_key: "chaos".into(), body: body.to_vec(), content_type: None };
            let result = chaos.handle(&request, &[], &CallContext::default()).await;
            (result, std::time::Instant::now())
        })
    };
    // The slow call takes the only instance slot for 300 ms; the other starts meanwhile and
    // can only finish after the slow one gave its slot back.
    let slow = call(b"slow:300");
    tokio::time::sleep(Duration::from_millis(50)).await;
    let quick_sent = std::time::Instant::now();
    let quick = call(b"quick");
    let (quick, quick_done) = quick.await.unwrap();
    let quick = quick.expect("waited for a slot instead of faulting").expect("answered");
    assert_eq!(quick.body, b"quick");
    let (slow, _) = slow.await.unwrap();
    assert!(slow.expect("no fault").is_ok());
    let waited = quick_done - quick_sent;
    assert!(
        waited >= Duration::from_millis(200),
        "the quick call finished after {waited:?}, while the slow one held the only slot"
    );
}
