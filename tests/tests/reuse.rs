//! `reuse = N`: one instance may serve up to N messages in sequence (what an interpreted
//! plugin needs to skip its interpreter's start per message). What the guest keeps in memory
//! survives between those messages — that is what reuse gives up — but an instance that
//! trapped is never used again, and with the default (`reuse = 1`) every message gets a
//! fresh one. `chaos`'s `count` answers how many messages its instance has handled.

use warren_tests::*;

/// The bodies that make `chaos` trap under the limits these tests set (`memory_mib = 32`,
/// `timeout_ms = 1000` where they are used): a panic, a loop past its deadline, an allocation
/// past its memory limit.
const TRAPS: [&str; 3] = ["panic", "loop", "alloc:64"];

/// Sends `bodies` one at a time to `chaos` and returns the answers. A trap's message gets no
/// answer: it is rejected, and the next message goes out only once the rejection reached
/// `rejects` (sent earlier, it could overtake the trap: the host serves deliveries at once).
async fn ask_in_turn(client: &mut GoClient, bodies: &[&str], mut rejects: Option<&mut DeadLetters>) -> Vec<String> {
    let mut answers = Vec::new();
    for body in bodies {
        client.request("chaos", body.as_bytes()).await;
        if TRAPS.contains(body) {
            let rejects = rejects.as_deref_mut().expect("a test that traps catches rejects");
            let dead = rejects.next(DEADLINE).await.unwrap_or_else(|| panic!("the message {body} is rejected"));
            assert_eq!(dead.data, body.as_bytes());
            continue;
        }
        let answer = client.response(DEADLINE).await.unwrap_or_else(|| panic!("no answer to {body}"));
        answers.push(String::from_utf8_lossy(&answer.data).to_string());
    }
    answers
}

async fn serve_chaos(what: &str, plugin_table: &str) -> (String, Server, GoClient, Cleanup) {
    serve_chaos_as(&unique_service(what), plugin_table).await
}

async fn serve_chaos_as(service: &str, plugin_table: &str) -> (String, Server, GoClient, Cleanup) {
    let service = service.to_string();
    let cleanup = Cleanup::new();
    cleanup.service(&service);
    let config = config(&service, &format!("{}{plugin_table}", requests(&[("chaos", "chaos")])));
    let host = start(&config).await;
    let client = GoClient::new(&service, &format!("{service}-client"), &["chaos"]).await;
    (service, host, client, cleanup)
}

broker_test! {
    async fn a_reused_instance_serves_n_messages_then_a_fresh_one_takes_over() {
        let (_, host, mut client, _cleanup) = serve_chaos("reuse", "[plugin.chaos]\nreuse = 3\n").await;
        let answers = ask_in_turn(&mut client, &["count"; 7], None).await;
        assert_eq!(answers, ["1", "2", "3", "1", "2", "3", "1"], "three messages per instance, then a fresh one");
        client.cleanup().await;
        host.stop().await.unwrap();
    }
}

broker_test! {
    async fn an_instance_that_trapped_is_never_reused() {
        let service = unique_service("reuse-trap");
        let mut rejects = DeadLetters::catch(&service).await;
        let (service, host, mut client, _cleanup) = serve_chaos_as(&service, "[plugin.chaos]\nreuse = 100\n").await;
        let answers = ask_in_turn(&mut client, &["count", "count", "panic", "count", "count"], Some(&mut rejects)).await;
        assert_eq!(answers, ["1", "2", "1", "2"], "the instance that panicked was dropped");
        wait_until_settled(&format!("{service}.direct.exchange.request.queue")).await;
        client.cleanup().await;
        rejects.cleanup().await;
        host.stop().await.unwrap();
    }
}

broker_test! {
    /// README, `reuse`: an instance that ran out of time or memory is never used again. With
    /// `reuse = 100`, `count` answers 1, 2; then a `loop` is stopped at its 1 s deadline, and
    /// the next `count` answers 1 again (a fresh instance); then an allocation past the 32 MiB
    /// limit traps, and again the next `count` answers 1. Fails if either instance went back
    /// to the pool: `count` would go on from 3.
    async fn an_instance_that_hit_its_deadline_or_memory_limit_is_never_reused() {
        let service = unique_service("reuse-limits");
        let mut rejects = DeadLetters::catch(&service).await;
        let table = "[plugin.chaos]\nreuse = 100\ntimeout_ms = 1000\nmemory_mib = 32\n";
        let (service, host, mut client, _cleanup) = serve_chaos_as(&service, table).await;
        let bodies = ["count", "count", "loop", "count", "count", "alloc:64", "count"];
        let answers = ask_in_turn(&mut client, &bodies, Some(&mut rejects)).await;
        assert_eq!(answers, ["1", "2", "1", "2", "1"], "an instance that hit its deadline or memory limit was reused");
        wait_until_settled(&format!("{service}.direct.exchange.request.queue")).await;
        client.cleanup().await;
        rejects.cleanup().await;
        host.stop().await.unwrap();
    }
}

broker_test! {
    async fn without_reuse_every_message_gets_a_fresh_instance() {
        let (_, host, mut client, _cleanup) = serve_chaos("no-reuse", "").await;
        let answers = ask_in_turn(&mut client, &["count"; 4], None).await;
        assert_eq!(answers, ["1", "1", "1", "1"]);
        client.cleanup().await;
        host.stop().await.unwrap();
    }
}
