//! `reuse = N`: one instance may serve up to N messages in sequence (what an interpreted
//! plugin needs to skip its interpreter's start per message). What the guest keeps in memory
//! survives between those messages — that is what reuse gives up — but an instance that
//! trapped is never used again, and with the default (`reuse = 1`) every message gets a
//! fresh one. `chaos`'s `count` answers how many messages its instance has handled.

use warren_tests::*;

/// Sends `bodies` one at a time to `chaos` and returns the answers (a panic's answer is
/// none: it is rejected).
async fn ask_in_turn(client: &mut GoClient, bodies: &[&str]) -> Vec<String> {
    let mut answers = Vec::new();
    for body in bodies {
        client.request("chaos", body.as_bytes()).await;
        if *body == "panic" {
            continue;
        }
        let answer = client.response(DEADLINE).await.unwrap_or_else(|| panic!("no answer to {body}"));
        answers.push(String::from_utf8_lossy(&answer.data).to_string());
    }
    answers
}

async fn serve_chaos(what: &str, plugin_table: &str) -> (String, Server, GoClient, Cleanup) {
    let service = unique_service(what);
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
        let answers = ask_in_turn(&mut client, &["count"; 7]).await;
        assert_eq!(answers, ["1", "2", "3", "1", "2", "3", "1"], "three messages per instance, then a fresh one");
        client.cleanup().await;
        host.stop().await.unwrap();
    }
}

broker_test! {
    async fn an_instance_that_trapped_is_never_reused() {
        let (service, host, mut client, _cleanup) = serve_chaos("reuse-trap", "[plugin.chaos]\nreuse = 100\n").await;
        let answers = ask_in_turn(&mut client, &["count", "count", "panic", "count", "count"]).await;
        assert_eq!(answers, ["1", "2", "1", "2"], "the instance that panicked was dropped");
        wait_until_settled(&format!("{service}.direct.exchange.request.queue")).await;
        client.cleanup().await;
        host.stop().await.unwrap();
    }
}

broker_test! {
    async fn without_reuse_every_message_gets_a_fresh_instance() {
        let (_, host, mut client, _cleanup) = serve_chaos("no-reuse", "").await;
        let answers = ask_in_turn(&mut client, &["count"; 4]).await;
        assert_eq!(answers, ["1", "1", "1", "1"]);
        client.cleanup().await;
        host.stop().await.unwrap();
    }
}
