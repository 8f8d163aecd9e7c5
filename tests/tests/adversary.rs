//! Every promise of the host against a hostile plugin (`plugins/adversary`, and `chaos`), on
//! the real broker (issue 13). Each test starts its own host (unique service name, metrics
//! endpoint on), runs a steady stream of `echo` requests beside the attack through a goamqp
//! client and requires every one of them answered, and asserts what the broker holds
//! afterwards: the request queue settled (nothing ready or unacked), dead-letter queue
//! contents, the queues the plugin could or could not reach, the host's connection.
//!
//! | promise | test |
//! |---|---|
//! | 1. the deadline covers the whole call | [`a_call_waiting_in_a_host_call_ends_at_its_deadline`], [`max_concurrency_waits_at_most_the_deadline`] |
//! | 2. a failed publish is no hot loop | [`a_publish_to_a_deleted_exchange_costs_one_send_not_the_host`] |
//! | 3. caps on what a plugin sends | [`oversized_answers_and_sends_are_refused_on_the_same_connection`], [`output_and_log_lines_are_bounded_and_escaped`] |
//! | 4. nothing acked the broker did not take | [`a_dead_letter_that_lands_nowhere_keeps_the_message`], [`a_returned_dead_letter_is_never_taken_for_landed_under_load`] |
//! | 5. grants cannot be bypassed | [`a_queue_grant_reaches_only_its_queue`] |
//! | 6. output never fails a message | [`output_and_log_lines_are_bounded_and_escaped`] |
//! | 7. in-flight returns to 0, nothing abandoned | every test, in [`Arena::finish`] |
//!
//! The host's log is captured in-process (a tracing subscriber of this test binary) so a test
//! can assert what the host said; it is also shown for failing tests.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use lapin::message::Delivery;
use lapin::options::{ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Connection, ExchangeKind};
use tokio::sync::mpsc;
use warren_tests::*;

// ---------------------------------------------------------------------------------------------
// 1. The deadline covers the whole call.
// ---------------------------------------------------------------------------------------------

broker_test! {
    /// `sleep:5000` waits inside a WASI poll, where epoch interruption cannot reach: with
    /// `timeout_ms = 1000` the call still ends at about 1 s, the message is dead-lettered as a
    /// fault, and the plugin serves the next message.
    async fn a_call_waiting_in_a_host_call_ends_at_its_deadline() {
        let service = unique_service("adv-deadline");
        let tail = format!(
            "dead_letter_exchange = \"{service}.dlx\"\n\
             [plugin.adversary]\ntimeout_ms = 1000\n\
             {}",
            requests(&[("adversary", "adversary")])
        );
        let mut arena = Arena::start(&service, &tail, &["adversary"], true).await;

        let sent = Instant::now();
        for _ in 0..3 {
            arena.attacker.request("adversary", b"sleep:5000").await;
        }
        let mut took = Vec::new();
        for _ in 0..3 {
            let dead = arena.dead_letter().await.expect("each sleeper is dead-lettered");
            took.push(sent.elapsed());
            assert_eq!(dead.data, b"sleep:5000");
            let reason = header(&dead, "x-warren-reason").unwrap_or_default();
            assert!(reason.contains("deadline of 1000 ms exceeded"), "dead-letter reason: {reason}");
        }
        println!("sleep:5000 with timeout_ms = 1000 dead-lettered after {took:?}");
        let slowest = *took.iter().max().unwrap();
        assert!(slowest >= Duration::from_millis(950), "ended before its deadline: {took:?}");
        assert!(slowest < Duration::from_millis(2500), "a call waiting in a host call ran past its deadline: {took:?}");

        // No "slept" answer ever came; the plugin serves the next message.
        arena.attacker.request("adversary", b"still here").await;
        assert_eq!(arena.answer().await, "still here");

        arena.wait_for("3 faulted, 1 acked", |m| m.outcome("adversary", "faulted") == 3.0 && m.outcome("adversary", "acked") == 1.0).await;
        arena.finish().await;
    }
}

broker_test! {
    /// `max_concurrency = 1`, `timeout_ms = 1000`: one `sleep:5000` holds the only permit for
    /// its whole deadline, and six short calls (`sleep:10`…`sleep:15`, 2 ms apart) queue for
    /// the permit right behind it. The sleeper is ended at its deadline and dead-lettered.
    /// Each waiter waits at most its own deadline for the permit; waiting is the host's limit,
    /// not the message's fault: a waiter either runs once it has the permit or goes back to
    /// the broker (`Busy`, a host-side requeue with backoff) and runs later. Every waiter is
    /// answered `slept`, none is dead-lettered, and no message is held near the 5 s sleep.
    async fn max_concurrency_waits_at_most_the_deadline() {
        let service = unique_service("adv-permit");
        let tail = format!(
            "dead_letter_exchange = \"{service}.dlx\"\n\
             [plugin.adversary]\ntimeout_ms = 1000\nmax_concurrency = 1\n\
             {}",
            requests(&[("adversary", "adversary")])
        );
        let mut arena = Arena::start(&service, &tail, &["adversary"], true).await;

        const WAITING: usize = 6;
        let sent = Instant::now();
        arena.attacker.request("adversary", b"sleep:5000").await;
        for i in 0..WAITING {
            tokio::time::sleep(Duration::from_millis(2)).await;
            arena.attacker.request("adversary", format!("sleep:{}", 10 + i).as_bytes()).await;
        }
        let mut answers = Vec::new();
        let mut dead = Vec::new();
        let until = Instant::now() + DEADLINE;
        while answers.len() + dead.len() < 1 + WAITING && Instant::now() < until {
            if let Some(answer) = arena.attacker.response(Duration::from_millis(20)).await {
                answers.push((String::from_utf8_lossy(&answer.data).to_string(), sent.elapsed()));
            }
            if let Some(letter) = arena.dead_letter_within(Duration::from_millis(20)).await {
                let reason = header(&letter, "x-warren-reason").unwrap_or_default();
                dead.push((String::from_utf8_lossy(&letter.data).to_string(), reason, sent.elapsed()));
            }
        }
        println!("answered: {answers:?}");
        println!("dead-lettered: {dead:?}");
        let m = arena.scrape().await;
        println!("Busy requeues: {}", m.outcome("adversary", "requeued_host_failure"));
        let wrongly_dead: Vec<_> = dead.iter().filter(|(body, _, _)| body != "sleep:5000").collect();
        assert!(
            wrongly_dead.is_empty(),
            "requests that only waited for the max_concurrency permit were dead-lettered as the plugin's fault: {wrongly_dead:#?}"
        );
        assert_eq!(dead.len(), 1, "the sleeper is dead-lettered: {dead:?}");
        assert!(dead[0].1.contains("deadline of 1000 ms exceeded"), "{dead:?}");
        assert!(dead[0].2 < Duration::from_millis(2500), "the sleeper held the permit past its deadline: {dead:?}");
        assert_eq!(answers.len(), WAITING, "{answers:?}");
        assert!(answers.iter().all(|(a, _)| a == "slept"), "{answers:?}");
        // The waiters' own times: none ran before the sleeper gave the permit back at its 1 s
        // deadline (max_concurrency held), and none was held anywhere near the 5 s sleep: each
        // waited at most its own 1 s deadline, plus a 0.5 s host-side requeue if it ran out,
        // plus the few ms each short call takes in turn (3 s leaves room for a busy machine).
        let (first, last) = (answers.iter().map(|a| a.1).min().unwrap(), answers.iter().map(|a| a.1).max().unwrap());
        assert!(first >= Duration::from_millis(900), "a waiter ran while the sleeper held the only permit: {answers:?}");
        assert!(last < Duration::from_secs(3), "a waiter was held past its deadline and one requeue: {answers:?}");
        assert_eq!(m.outcome("adversary", "rejected_host_failure"), 0.0, "{}", m.text);
        // No settlement took as long as the sleep: every one is in the 5 s bucket.
        assert_eq!(
            m.get("warren_handle_seconds_bucket{plugin=\"adversary\",le=\"5\"}"),
            m.get("warren_handle_seconds_count{plugin=\"adversary\"}"),
            "a message was held past 5 s:\n{}",
            m.text
        );
        arena.finish().await;
    }
}

// ---------------------------------------------------------------------------------------------
// 2. A failed publish never becomes a hot loop or a dead host.
// ---------------------------------------------------------------------------------------------

broker_test! {
    /// The plugin may publish to stream `<S>-gone`; an operator deletes
    /// `<S>-gone.topic.exchange` by hand. The next publish fails (the broker closes the publish
    /// channel, 404): the plugin sees `failed`, the channel is reopened, echo keeps being
    /// answered, and nothing loops.
    async fn a_publish_to_a_deleted_exchange_costs_one_send_not_the_host() {
        let service = unique_service("adv-gone");
        let stream = format!("{service}-gone");
        let exchange = format!("{stream}.topic.exchange");
        let tail = format!(
            "dead_letter_exchange = \"{service}.dlx\"\n\
             [plugin.adversary]\npublish = [\"{stream}\"]\n\
             {}",
            requests(&[("adversary", "adversary")])
        );
        let mut arena = Arena::start(&service, &tail, &["adversary"], true).await;
        let attack = format!("publish:{stream}:order.created");

        arena.attacker.request("adversary", attack.as_bytes()).await;
        assert_eq!(arena.answer().await, "sent", "the granted stream's exchange was declared by the host");

        let channel = arena.connection.create_channel().await.unwrap();
        channel.exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default()).await.unwrap();
        bounded_close(channel.close(200, "deleted".into())).await;

        for round in 0..2 {
            arena.attacker.request("adversary", attack.as_bytes()).await;
            let answer = arena.answer().await;
            assert!(refused(&answer, "Failed"), "round {round}: the plugin saw: {answer}");
            println!("round {round}: {answer}");
            // Echo goes on being answered after each failure.
            arena.echo_round_trip(&format!("after-{round}")).await;
        }

        arena.wait_for("3 acked", |m| m.outcome("adversary", "acked") == 3.0).await;
        let m = arena.scrape().await;
        assert!(m.get("warren_channel_reopens_total") >= 1.0, "the publish channel was not reopened:\n{}", m.text);
        assert_eq!(
            m.get(&format!("warren_publish_failures_total{{exchange=\"{exchange}\",reason=\"refused\"}}")),
            2.0,
            "{}",
            m.text
        );
        assert_eq!(m.get("warren_reconnects_total"), 0.0, "{}", m.text);
        assert_eq!(m.outcome("adversary", "acked"), 3.0, "{}", m.text);
        // No immediate requeue loop: nothing was nacked straight back, and the host-side
        // requeues (echo answers caught on the closing channel) are few and bounded.
        let (requeued, deferred) = (m.outcome_total("requeued"), m.outcome_total("requeued_host_failure"));
        println!("requeued: {requeued}, requeued_host_failure: {deferred}");
        assert_eq!(requeued, 0.0, "{}", m.text);
        assert!(deferred <= 10.0, "{}", m.text);
        assert_eq!(m.outcome_total("rejected_host_failure"), 0.0, "{}", m.text);

        // Settled on the broker, and quiet: with the echo stream stopped nothing moves.
        let report = arena.stop_echo().await;
        report.assert_all_answered(true);
        wait_until_settled(&arena.request_queue()).await;
        let before = arena.scrape().await.settled_total();
        tokio::time::sleep(Duration::from_secs(1)).await;
        let after = arena.scrape().await.settled_total();
        assert_eq!(before, after, "messages are still being settled with no traffic: a requeue loop");
        arena.finish().await;
    }
}

// ---------------------------------------------------------------------------------------------
// 3. Caps on what a plugin sends.
// ---------------------------------------------------------------------------------------------

broker_test! {
    /// A 200 KiB response header (one frame is 128 KiB), a response body over `max_send_kib`,
    /// an event with a 200 KiB header or a body over `max_send_kib`, and 500 sends with
    /// `max_sends = 100`: each is refused before it reaches the wire. The host keeps the very
    /// same connection (RabbitMQ closes a connection on an oversized frame) and its publish
    /// channel, and the stream got exactly what was allowed.
    async fn oversized_answers_and_sends_are_refused_on_the_same_connection() {
        let service = unique_service("adv-caps");
        let stream = format!("{service}-events");
        let tail = format!(
            "dead_letter_exchange = \"{service}.dlx\"\n\
             [plugin.adversary]\npublish = [\"{stream}\"]\nmax_sends = 100\nmax_send_kib = 64\n\
             {}",
            requests(&[("adversary", "adversary")])
        );
        // What reaches the stream: a queue of the test's own, bound to everything.
        let watch = format!("{stream}-watch");
        let setup = connect().await;
        let channel = setup.create_channel().await.unwrap();
        goamqp_exchange(&channel, &format!("{stream}.topic.exchange"), ExchangeKind::Topic).await;
        goamqp_queue(&channel, &watch).await;
        channel
            .queue_bind(
                watch.as_str().into(),
                format!("{stream}.topic.exchange").as_str().into(),
                "#".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        let mut arena = Arena::start(&service, &tail, &["adversary"], true).await;
        let connections = host_connections(&service).await;
        assert_eq!(connections.len(), 1, "one connection of the host: {connections:?}");

        // Answers the host must not publish: rejected, dead-lettered with the reason.
        for (body, why) in [("big-header:200", "one frame can carry"), ("big-body:100", "max_send_kib")] {
            arena.attacker.request("adversary", body.as_bytes()).await;
            let dead = arena.dead_letter().await.expect("the oversized answer's request is dead-lettered");
            assert_eq!(String::from_utf8_lossy(&dead.data), body);
            let reason = header(&dead, "x-warren-reason").unwrap_or_default();
            assert!(reason.contains(why), "{body}: reason {reason}");
            println!("{body}: {reason}");
        }

        // Sends the host must not publish: the plugin is told, and answers.
        let sends = [
            (format!("publish-big-header:{stream}:200"), "refused: ", "one frame can carry"),
            (format!("publish-big-body:{stream}:100"), "refused: ", "max_send_kib"),
            (format!("flood:{stream}:500"), "sent 100 of 500, refused: ", "max_sends"),
            (format!("publish:{stream}:fits"), "sent", ""),
        ];
        for (body, expected, why) in &sends {
            arena.attacker.request("adversary", body.as_bytes()).await;
            let answer = arena.answer().await;
            println!("{body}: {answer}");
            assert!(answer.starts_with(expected) && answer.contains(why), "{body}: the plugin saw {answer}");
            if expected.contains("refused") {
                assert!(answer.contains("Failed("), "{body}: a cap is a `failed` send: {answer}");
            }
        }

        // The broker: the stream holds the 100 flooded events and the one that fits, nothing
        // else; the host still has its one connection, never reconnected, never lost its channel.
        let (ready, _) = queue_counts(&watch).await.expect("the watch queue exists");
        assert_eq!(ready, 101, "events on the stream");
        assert_eq!(host_connections(&service).await, connections, "the host's connection changed");
        arena.wait_for("all settled", |m| m.outcome("adversary", "acked") == sends.len() as f64).await;
        let m = arena.scrape().await;
        assert_eq!(m.get("warren_reconnects_total"), 0.0, "{}", m.text);
        assert_eq!(m.get("warren_channel_reopens_total"), 0.0, "{}", m.text);
        assert_eq!(m.outcome("adversary", "dead_lettered"), 2.0, "{}", m.text);
        arena.finish().await;
        let channel = setup.create_channel().await.unwrap();
        let _ = channel.queue_delete(watch.as_str().into(), Default::default()).await;
        bounded_close(setup.close(200, "done".into())).await;
    }
}

// ---------------------------------------------------------------------------------------------
// 4. Nothing is acked that the broker did not take.
// ---------------------------------------------------------------------------------------------

broker_test! {
    /// `dead_letter_exchange = "<S>.dlx"` with no queue bound to it: a dead-letter copy would
    /// be dropped by RabbitMQ, so a faulting request must stay on the broker: requeued with a
    /// backoff (0.5 s, 1 s, 2 s, 4 s, 8 s, 10 s) at most 6 times, then rejected; never logged
    /// or counted as dead-lettered. Three such requests: two identical `chaos` panics (goamqp
    /// sends no message id, so identical messages are common) and one `adversary` sleep past
    /// its deadline. Each gets its own 6 requeues, so none is rejected before ~25 s.
    async fn a_dead_letter_that_lands_nowhere_keeps_the_message() {
        let service = unique_service("adv-nodlq");
        let dlx = format!("{service}.dlx");
        let tail = format!(
            "[plugin.adversary]\ntimeout_ms = 500\n\
             [[request]]\nrouting_key = \"chaos\"\nplugin = \"chaos\"\ndead_letter_exchange = \"{dlx}\"\n\
             [[request]]\nrouting_key = \"adversary\"\nplugin = \"adversary\"\ndead_letter_exchange = \"{dlx}\"\n"
        );
        let arena = Arena::start(&service, &tail, &["chaos", "adversary"], false).await;
        let queue = arena.request_queue();

        let sent = Instant::now();
        arena.attacker.request("chaos", b"panic").await;
        arena.attacker.request("chaos", b"panic").await;
        arena.attacker.request("adversary", b"sleep:3000").await;
        arena
            .wait_for("all faulted once and were kept", |m| {
                m.outcome("chaos", "requeued_host_failure") >= 2.0 && m.outcome("adversary", "requeued_host_failure") >= 1.0
            })
            .await;
        // The broker still holds all three, after the first failure and seconds later (the
        // echo stream, which shares the queue, paused and caught up while the broker counts).
        for _ in 0..2 {
            arena.pause_echo().await;
            let (ready, unacked) = queue_counts(&queue).await.expect("the request queue exists");
            arena.resume_echo();
            println!("{queue} after {:?}: ready {ready}, unacked {unacked}", sent.elapsed());
            assert_eq!(ready + unacked, 3, "a faulted request is not on the broker any more");
            tokio::time::sleep(Duration::from_millis(1500)).await;
        }
        let m = arena.scrape().await;
        for plugin in ["chaos", "adversary"] {
            for outcome in ["dead_lettered", "faulted", "rejected", "acked", "rejected_host_failure"] {
                assert_eq!(m.outcome(plugin, outcome), 0.0, "{plugin} {outcome}:\n{}", m.text);
            }
        }

        // Bounded: after its 6 requeues (25.5 s of backoff) each is rejected, and not before.
        arena
            .wait_for_within("a first rejection", Duration::from_secs(45), |m| m.outcome_total("rejected_host_failure") >= 1.0)
            .await;
        let first = sent.elapsed();
        println!("first rejection after {first:?}");
        arena
            .wait_for_within("all three rejected", Duration::from_secs(45), |m| {
                m.outcome("chaos", "rejected_host_failure") == 2.0 && m.outcome("adversary", "rejected_host_failure") == 1.0
            })
            .await;
        println!("all rejected after {:?}", sent.elapsed());
        let m = arena.scrape().await;
        assert_eq!(m.outcome("chaos", "requeued_host_failure"), 12.0, "{}", m.text);
        assert_eq!(m.outcome("adversary", "requeued_host_failure"), 6.0, "{}", m.text);
        for plugin in ["chaos", "adversary"] {
            assert_eq!(m.outcome(plugin, "dead_lettered"), 0.0, "{plugin}:\n{}", m.text);
            assert_eq!(m.outcome(plugin, "faulted"), 0.0, "{plugin}:\n{}", m.text);
        }
        assert_eq!(
            m.get(&format!("warren_publish_failures_total{{exchange=\"{dlx}\",reason=\"returned\"}}")),
            21.0,
            "every dead-letter attempt was returned:\n{}",
            m.text
        );
        let response_exchange = format!("{service}.headers.exchange.response");
        assert_eq!(
            m.get(&format!("warren_publish_failures_total{{exchange=\"{response_exchange}\",reason=\"returned\"}}")),
            0.0,
            "echo answers (their client's queue is bound) were counted as returned:\n{}",
            m.text
        );
        assert_eq!(
            m.get(&format!("warren_given_up_messages_total{{queue=\"{queue}\"}}")),
            3.0,
            "each message given up is counted:\n{}",
            m.text
        );
        let lines = log_lines(&service);
        let warned = format!("dead-letter exchange '{dlx}' has no queue bound");
        assert_eq!(lines.iter().filter(|l| l.contains(&warned)).count(), 1, "one warning at start: {warned}");
        let given_up: Vec<_> = lines.iter().filter(|l| l.contains("ERROR") && l.contains("RabbitMQ drops it unless")).collect();
        assert_eq!(given_up.len(), 3, "each message given up is logged at ERROR: {given_up:?}");
        let claimed: Vec<_> = lines.iter().filter(|l| l.contains("dead-lettered to")).collect();
        assert!(claimed.is_empty(), "the log claims a dead-letter that did not land: {claimed:?}");
        let kept = lines.iter().filter(|l| l.contains("could not be dead-lettered")).count();
        assert!(kept >= 21, "{kept} log lines say the dead-letter did not land");
        assert!(
            first >= Duration::from_secs(24),
            "a message was rejected after {first:?}, before its own 6 requeues (25.5 s of backoff) were used"
        );
        arena.finish().await;
    }
}

broker_test! {
    /// The same promise under load: 3 × 10 requests whose answers are refused
    /// (`big-header:<n>`, rejected), each behind a storm of 100 echo requests and beside a flood of them (one
    /// every 2 ms), so their dead-letter copies are published among echo answers being
    /// confirmed on the same publish channel, with
    /// `dead_letter_exchange = "<S>.dlx"` and nothing bound to it. Every dead-letter copy is
    /// returned by the broker; none may be taken for landed (the message would be acked and
    /// lost), and no echo answer may be taken for returned. Once the host stops, the broker
    /// holds all thirty: in the request queue, or — for one that used up its 6 host-side
    /// requeues (≈ 25 s) on a slow run — rejected into the queue of a broker dead-letter
    /// policy the test set. Counted, not timed: the test holds however long the run takes.
    async fn a_returned_dead_letter_is_never_taken_for_landed_under_load() {
        let service = unique_service("adv-return");
        let dlx = format!("{service}.dlx");
        let tail = format!(
            "[[request]]\nrouting_key = \"adversary\"\nplugin = \"adversary\"\ndead_letter_exchange = \"{dlx}\"\n"
        );
        // What the host rejects for good (after its host-side requeues) lands here, by the
        // broker's own policy: the host's `<S>.dlx` keeps nothing bound.
        let mut rejected_for_good = DeadLetters::catch_as(&service, "final", "final-letters").await;
        let mut arena = Arena::start(&service, &tail, &["adversary", "echo"], false).await;
        let flood = EchoStream::start_as(&service, "flood", Duration::from_millis(2)).await;
        const ROUNDS: usize = 3;
        const REFUSED: usize = 10;
        const STORM: usize = 100;
        for round in 0..ROUNDS {
            for i in 0..REFUSED {
                for j in 0..STORM {
                    arena.attacker.request("echo", format!("storm-{round}-{i}-{j}").as_bytes()).await;
                }
                arena.attacker.request("adversary", format!("big-header:{}", 200 + round * REFUSED + i).as_bytes()).await;
            }
            for _ in 0..REFUSED * STORM {
                let answer = arena.attacker.response(DEADLINE).await.expect("every storm echo is answered");
                assert!(answer.data.starts_with(b"storm-"), "{}", String::from_utf8_lossy(&answer.data));
            }
        }
        let refused = ROUNDS * REFUSED;
        arena
            .wait_for("each refused request failed once", |m| {
                m.outcome("adversary", "requeued_host_failure") + m.outcome("adversary", "dead_lettered") >= refused as f64
            })
            .await;
        flood.stop().await.assert_all_answered(false);
        let m = arena.scrape().await;
        let response_exchange = format!("{service}.headers.exchange.response");
        let landed = m.outcome("adversary", "dead_lettered");
        let echo_returned =
            m.get(&format!("warren_publish_failures_total{{exchange=\"{response_exchange}\",reason=\"returned\"}}"));
        println!("dead-letters taken for landed: {landed}; echo answers taken for returned: {echo_returned}");
        let claimed: Vec<_> = log_lines(&service).into_iter().filter(|l| l.contains("dead-lettered to")).collect();
        arena.stop_echo().await.assert_all_answered(false);
        arena.server.take().unwrap().stop().await.expect("the host stops cleanly");
        let kept = queue_counts(&arena.request_queue()).await.expect("the request queue exists");
        // The policy's queue is consumed by the test: what reached it is in the receiver.
        let final_queue = format!("{service}.final-letters");
        wait_until_settled(&final_queue).await;
        let mut finally_rejected = Vec::new();
        while let Some(letter) = rejected_for_good.try_next() {
            finally_rejected.push(String::from_utf8_lossy(&letter.data).to_string());
        }
        println!("after the host stopped, the broker holds (ready, unacked) = {kept:?}; rejected for good: {finally_rejected:?}");
        assert_eq!(landed, 0.0, "dead-letter copies the broker returned were taken for landed:\n{claimed:#?}\n{}", m.text);
        assert_eq!(echo_returned, 0.0, "echo answers that reached their queue were taken for returned:\n{}", m.text);
        assert!(finally_rejected.iter().all(|b| b.starts_with("big-header:")), "{finally_rejected:?}");
        assert_eq!(kept.1, 0, "unacked after the host stopped");
        assert_eq!(
            kept.0 + finally_rejected.len() as u64,
            refused as u64,
            "requests lost: acked although their dead-letter copy was dropped"
        );
        rejected_for_good.cleanup().await;
        // They are left on purpose; the cleanup removes the queue.
    }
}

// ---------------------------------------------------------------------------------------------
// 5. Grants cannot be bypassed.
// ---------------------------------------------------------------------------------------------

broker_test! {
    /// Granted only `<S>-granted-q` (and requests to itself): a routing key naming another
    /// queue, a `CC` or `BCC` header on a queue send, a `CC` header on a request — each is
    /// refused (`Denied`) and `<S>-victim-q` stays empty; the granted queue gets exactly the
    /// one legitimate send.
    async fn a_queue_grant_reaches_only_its_queue() {
        let service = unique_service("adv-grant");
        let (granted, victim) = (format!("{service}-granted-q"), format!("{service}-victim-q"));
        let tail = format!(
            "dead_letter_exchange = \"{service}.dlx\"\n\
             [plugin.adversary]\nqueues = [\"{granted}\"]\nrequest = [\"{service}\"]\n\
             {}",
            requests(&[("adversary", "adversary")])
        );
        let setup = connect().await;
        let channel = setup.create_channel().await.unwrap();
        goamqp_queue(&channel, &granted).await;
        goamqp_queue(&channel, &victim).await;
        let mut arena = Arena::start(&service, &tail, &["adversary"], true).await;

        for attack in [
            format!("queue-key:{granted}:{victim}"),
            format!("queue-cc:{granted}:{victim}"),
            format!("queue-bcc:{granted}:{victim}"),
            format!("request-cc:{service}:echo:{victim}"),
        ] {
            arena.attacker.request("adversary", attack.as_bytes()).await;
            let answer = arena.answer().await;
            println!("{attack}: {answer}");
            assert!(refused(&answer, "Denied"), "{attack}: the plugin saw {answer}");
        }
        arena.attacker.request("adversary", format!("queue-key:{granted}:{granted}").as_bytes()).await;
        assert_eq!(arena.answer().await, "sent", "the granted queue is reachable");

        assert_eq!(queue_counts(&victim).await, Some((0, 0)), "the victim queue was reached");
        assert_eq!(queue_counts(&granted).await, Some((1, 0)), "the granted queue got its one message");
        arena.wait_for("5 acked", |m| m.outcome("adversary", "acked") == 5.0).await;
        arena.finish().await;
        for queue in [&granted, &victim] {
            let _ = channel.queue_delete(queue.as_str().into(), Default::default()).await;
        }
        bounded_close(setup.close(200, "done".into())).await;
    }
}

// ---------------------------------------------------------------------------------------------
// 6. Output, and log lines (3).
// ---------------------------------------------------------------------------------------------

broker_test! {
    /// 64 KiB on stdout and on stderr in 1 KiB lines, 256 KiB on stdout (past the per-call
    /// budget), one 64 KiB log line and a log line forging a host line with a newline and an
    /// ANSI escape: every call succeeds; the host log carries the output up to its budget,
    /// cuts the long line, and escapes the forgery.
    async fn output_and_log_lines_are_bounded_and_escaped() {
        let service = unique_service("adv-output");
        let tail = format!(
            "dead_letter_exchange = \"{service}.dlx\"\n{}",
            requests(&[("adversary", "adversary")])
        );
        let mut arena = Arena::start(&service, &tail, &["adversary"], true).await;
        for (attack, expected) in [
            ("print:64", "printed"),
            ("stderr:64", "printed"),
            ("print:256", "printed"),
            ("log-big:64", "logged"),
            ("log-forge", "logged"),
        ] {
            arena.attacker.request("adversary", attack.as_bytes()).await;
            assert_eq!(arena.answer().await, expected, "{attack}");
        }
        arena.wait_for("5 acked", |m| m.outcome("adversary", "acked") == 5.0).await;
        assert_eq!(arena.scrape().await.outcome("adversary", "faulted"), 0.0);

        let log = captured_log();
        let line_1k = "x".repeat(1023);
        // A line of the plugin's own: exactly one 1023-byte run of `x` (log-big's cut line is
        // a 4 KiB run).
        let output_lines = |stream: &str| {
            log.lines().filter(|l| l.contains(stream) && l.split(|c| c != 'x').any(|run| run.len() == line_1k.len())).count()
        };
        assert_eq!(output_lines("stderr"), 64, "stderr lines in the host log");
        // print:64 fits its 64 KiB budget (64 lines of 1 KiB); print:256 gets the same 64 lines
        // logged and its other 192 (196,608 bytes) dropped with one note.
        assert_eq!(output_lines("stdout"), 64 + 64, "stdout lines in the host log (print:64, then print:256 cut at its budget)");
        let notes: Vec<_> = log.lines().filter(|l| l.contains("plugin output over its budget for one call")).collect();
        assert_eq!(notes.len(), 1, "one note of dropped output, for print:256: {notes:?}");
        assert!(notes[0].contains("dropped_bytes=196608"), "print:256 dropped 192 lines of 1 KiB: {}", notes[0]);
        // log-big: one line, cut at 4 KiB with a note.
        let longest_run = log.lines().map(|l| l.split(|c| c != 'x').map(str::len).max().unwrap_or(0)).max().unwrap_or(0);
        assert!(longest_run <= 4096, "a plugin wrote a {longest_run}-byte run into one host log line");
        assert!(log.contains("[…line cut]"), "the long log line carries no cut note");
        // log-forge: the newline and the escape are shown, not obeyed.
        assert!(log.contains("harmless\\n2026-01-01T00:00:00Z  INFO warren: plugin swapped"), "forged line not escaped");
        let forged: Vec<_> = log.lines().filter(|l| l.starts_with("2026-01-01T00:00:00Z  INFO warren: plugin swapped")).collect();
        assert!(forged.is_empty(), "a plugin forged a host log line: {forged:?}");
        assert!(!log.contains('\x1b'), "a plugin put an ANSI escape into the host log");
        arena.finish().await;
    }
}

// ---------------------------------------------------------------------------------------------
// The arena: a host, an attacker, an echo stream, a dead-letter queue, the host's metrics.
// ---------------------------------------------------------------------------------------------

/// How often the echo stream sends a request.
const ECHO_EVERY: Duration = Duration::from_millis(20);

/// One test's host for `service` with handler `echo` plus the test's own, a goamqp client
/// `attacker` for the test's keys, an [`EchoStream`], and (optionally) a queue bound to
/// `<service>.dlx`. Everything named after the service is removed when it is dropped.
struct Arena {
    service: String,
    server: Option<Server>,
    metrics_at: SocketAddr,
    attacker: GoClient,
    last_answer: String,
    echo: Option<EchoStream>,
    dead: Option<mpsc::UnboundedReceiver<Delivery>>,
    /// The test's own connection (raw broker operations, the dead-letter consumer).
    connection: Connection,
    _dead_channel: Option<lapin::Channel>,
    /// Dropped last.
    _cleanup: Cleanup,
}

impl Arena {
    /// `tail` is config text that starts inside `[broker]`; `dead_letters`: declare
    /// `<service>.dlx` (as the host does) and a queue bound to it, consumed by the test.
    async fn start(service: &str, tail: &str, attack_keys: &[&str], dead_letters: bool) -> Arena {
        capture_logs(warren::cli::DEFAULT_LOG_FILTER);
        let cleanup = Cleanup::new();
        cleanup.service(service);
        let metrics_at = free_address();
        let mut config = config(service, &format!("{tail}\n{}", requests(&[("echo", "echo")])));
        config.metrics = Some(metrics_at);
        let connection = connect().await;
        let (dead, dead_channel) = match dead_letters {
            false => (None, None),
            true => {
                let channel = connection.create_channel().await.unwrap();
                let exchange = format!("{service}.dlx");
                let queue = format!("{service}.dead-letters");
                goamqp_exchange(&channel, &exchange, ExchangeKind::Fanout).await;
                goamqp_queue(&channel, &queue).await;
                channel
                    .queue_bind(
                        queue.as_str().into(),
                        exchange.as_str().into(),
                        "".into(),
                        QueueBindOptions::default(),
                        FieldTable::default(),
                    )
                    .await
                    .unwrap();
                (Some(consume(&channel, &queue).await), Some(channel))
            }
        };
        let server = start(&config).await;
        let attacker = GoClient::new(service, "attacker", attack_keys).await;
        let echo = EchoStream::start(service).await;
        Arena {
            service: service.to_string(),
            server: Some(server),
            metrics_at,
            attacker,
            last_answer: String::new(),
            echo: Some(echo),
            dead,
            connection,
            _dead_channel: dead_channel,
            _cleanup: cleanup,
        }
    }

    fn request_queue(&self) -> String {
        format!("{}.direct.exchange.request.queue", self.service)
    }

    /// The attacker's next answer, as text (panics if none comes within [`DEADLINE`]).
    async fn answer(&mut self) -> String {
        let answer = self.attacker.response(DEADLINE).await.expect("the attack was answered");
        self.last_answer = String::from_utf8_lossy(&answer.data).to_string();
        self.last_answer.clone()
    }

    /// The next message on the dead-letter queue, within [`DEADLINE`].
    async fn dead_letter(&mut self) -> Option<Delivery> {
        self.dead_letter_within(DEADLINE).await
    }

    async fn dead_letter_within(&mut self, wait: Duration) -> Option<Delivery> {
        let dead = self.dead.as_mut().expect("this arena has a dead-letter queue");
        tokio::time::timeout(wait, dead.recv()).await.ok().flatten()
    }

    /// Waits until the echo stream has had an answer to everything sent so far.
    async fn echo_round_trip(&self, what: &str) {
        self.echo.as_ref().expect("the echo stream runs").caught_up(what).await;
    }

    async fn scrape(&self) -> Scrape {
        let at = self.metrics_at;
        let (status, text) = tokio::task::spawn_blocking(move || http_get(at, "/metrics")).await.unwrap();
        assert_eq!(status, 200, "/metrics: {text}");
        Scrape::parse(text)
    }

    async fn wait_for(&self, what: &str, condition: impl Fn(&Scrape) -> bool) {
        self.wait_for_within(what, DEADLINE, condition).await
    }

    async fn wait_for_within(&self, what: &str, within: Duration, condition: impl Fn(&Scrape) -> bool) {
        let until = Instant::now() + within;
        loop {
            let m = self.scrape().await;
            if condition(&m) {
                return;
            }
            assert!(Instant::now() < until, "timed out waiting until {what}:\n{}", m.text);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Stops sending echo requests until [`Arena::resume_echo`]; returns once everything sent
    /// so far was answered (the request queue then holds no echo).
    async fn pause_echo(&self) {
        let echo = self.echo.as_ref().expect("the echo stream runs");
        echo.paused.store(true, Ordering::Relaxed);
        echo.caught_up("pausing").await;
    }

    fn resume_echo(&self) {
        self.echo.as_ref().expect("the echo stream runs").paused.store(false, Ordering::Relaxed);
    }

    async fn stop_echo(&mut self) -> EchoReport {
        self.echo.take().expect("the echo stream runs").stop().await
    }

    /// Checks what every test promises and removes what it declared: every echo answered, the
    /// request queue settled on the broker, nothing in flight or abandoned in the host, nothing
    /// unexpected on the dead-letter queue, the host stopped cleanly, and no queue or exchange
    /// named after the service left on the broker.
    async fn finish(mut self) {
        if let Some(echo) = self.echo.take() {
            echo.stop().await.assert_all_answered(false);
        }
        wait_until_settled(&self.request_queue()).await;
        let m = self.scrape().await;
        let in_flight: Vec<_> =
            m.values.iter().filter(|(k, v)| k.starts_with("warren_in_flight{") && **v != 0.0).collect();
        assert!(in_flight.is_empty(), "messages still in flight: {in_flight:?}");
        assert_eq!(m.outcome_total("abandoned"), 0.0, "abandoned messages:\n{}", m.text);
        if let Some(dead) = self.dead.as_mut() {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if let Ok(extra) = dead.try_recv() {
                panic!(
                    "unexpected dead letter: {} ({:?})",
                    String::from_utf8_lossy(&extra.data),
                    header(&extra, "x-warren-reason")
                );
            }
        }
        self.server.take().unwrap().stop().await.expect("the host stops cleanly");
        let Arena { service, attacker, connection, _cleanup, .. } = self;
        attacker.cleanup().await;
        bounded_close(connection.close(200, "done".into())).await;
        drop(_cleanup);
        let left: Vec<String> = ["list_queues", "list_exchanges"]
            .iter()
            .flat_map(|what| broker_listing(what, &["name"]))
            .filter_map(|row| row["name"].as_str().map(str::to_string))
            .filter(|name| name.contains(&service))
            .collect();
        assert!(left.is_empty(), "left on the broker: {left:?}");
    }
}

/// Whether the plugin's answer says its send was refused with `SendError::<kind>`.
fn refused(answer: &str, kind: &str) -> bool {
    answer.starts_with("refused: ")
        && (answer.contains(&format!("SendError::{kind}(")) || answer.contains(&format!(" {kind}(")))
}

/// A durable exchange, as goamqp (and the host) declares it.
async fn goamqp_exchange(channel: &lapin::Channel, name: &str, kind: ExchangeKind) {
    let durable = ExchangeDeclareOptions { durable: true, ..Default::default() };
    channel.exchange_declare(name.into(), kind, durable, FieldTable::default()).await.unwrap();
}

/// A durable queue with goamqp's `x-expires` (5 days, a 32-bit int as Go sends it).
async fn goamqp_queue(channel: &lapin::Channel, name: &str) {
    let mut arguments = FieldTable::default();
    arguments.insert("x-expires".into(), AMQPValue::LongInt(432_000_000));
    let durable = QueueDeclareOptions { durable: true, ..Default::default() };
    channel.queue_declare(name.into(), durable, arguments).await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// The echo stream.
// ---------------------------------------------------------------------------------------------

/// A goamqp client `echo-stream` sending `echo-<n>` to the host every [`ECHO_EVERY`] and
/// matching answers by body (goamqp sets no correlation id).
struct EchoStream {
    stop: Arc<AtomicBool>,
    /// While set, no new request is sent.
    paused: Arc<AtomicBool>,
    /// How many were sent so far, and the number of the oldest one not answered yet
    /// (`sent + 1` when all were).
    progress: Arc<std::sync::Mutex<(usize, usize)>>,
    task: tokio::task::JoinHandle<EchoReport>,
}

#[derive(Debug)]
struct EchoReport {
    sent: usize,
    /// Sent and never answered.
    missing: Vec<String>,
    /// Answered more than once.
    duplicates: Vec<String>,
    /// Answers to nothing this stream sent.
    strangers: Vec<String>,
    slowest: Duration,
}

impl EchoReport {
    /// Every echo was answered; once only unless `allow_duplicates` (a response whose confirm
    /// was lost when the broker closed the channel is sent again: at least once).
    fn assert_all_answered(&self, allow_duplicates: bool) {
        println!(
            "echo stream: {} sent, {} missing, {} duplicates, slowest answer {:?}",
            self.sent,
            self.missing.len(),
            self.duplicates.len(),
            self.slowest
        );
        assert!(self.sent > 0);
        assert!(self.missing.is_empty(), "echo requests never answered: {:?}", self.missing);
        assert!(self.strangers.is_empty(), "answers nobody asked for: {:?}", self.strangers);
        if !allow_duplicates {
            assert!(self.duplicates.is_empty(), "echo requests answered twice: {:?}", self.duplicates);
        }
    }
}

impl EchoStream {
    async fn start(service: &str) -> EchoStream {
        EchoStream::start_as(service, "echo-stream", ECHO_EVERY).await
    }

    /// A stream from client `name`, one request every `every`.
    async fn start_as(service: &str, name: &str, every: Duration) -> EchoStream {
        let client = GoClient::new(service, name, &["echo"]).await;
        let (stop, paused) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(false)));
        let progress = Arc::new(std::sync::Mutex::new((0, 1)));
        let task = tokio::spawn(EchoStream::run(client, every, stop.clone(), paused.clone(), progress.clone()));
        EchoStream { stop, paused, progress, task }
    }

    async fn run(
        mut client: GoClient,
        every: Duration,
        stop: Arc<AtomicBool>,
        paused: Arc<AtomicBool>,
        progress: Arc<std::sync::Mutex<(usize, usize)>>,
    ) -> EchoReport {
        let mut pending: HashMap<String, Instant> = HashMap::new();
        let mut answered: HashMap<String, usize> = HashMap::new();
        let mut strangers = Vec::new();
        let mut slowest = Duration::ZERO;
        let mut sent = 0;
        let mut record = |delivery: Delivery, pending: &mut HashMap<String, Instant>| {
            let body = String::from_utf8_lossy(&delivery.data).to_string();
            match pending.remove(&body) {
                Some(at) => {
                    slowest = slowest.max(at.elapsed());
                    answered.insert(body, 1);
                }
                None => match answered.get_mut(&body) {
                    Some(n) => *n += 1,
                    None => strangers.push(body),
                },
            }
        };
        let mut tick = tokio::time::interval(every);
        while !stop.load(Ordering::Relaxed) {
            tick.tick().await;
            if !paused.load(Ordering::Relaxed) {
                sent += 1;
                let body = format!("echo-{sent}");
                client.request("echo", body.as_bytes()).await;
                pending.insert(body, Instant::now());
            }
            while let Some(delivery) = client.response(Duration::ZERO).await {
                record(delivery, &mut pending);
            }
            let oldest = pending.keys().filter_map(|b| b.strip_prefix("echo-")?.parse().ok()).min();
            *progress.lock().unwrap() = (sent, oldest.unwrap_or(sent + 1));
        }
        let until = Instant::now() + DEADLINE;
        while !pending.is_empty() && Instant::now() < until {
            if let Some(delivery) = client.response(until - Instant::now()).await {
                record(delivery, &mut pending);
            }
        }
        // Late duplicates of the last answers.
        while let Some(delivery) = client.response(Duration::from_millis(100)).await {
            record(delivery, &mut pending);
        }
        let mut missing: Vec<String> = pending.into_keys().collect();
        missing.sort();
        let duplicates = answered.into_iter().filter(|(_, n)| *n > 1).map(|(body, _)| body).collect();
        client.cleanup().await;
        EchoReport { sent, missing, duplicates, strangers, slowest }
    }

    /// Waits until everything sent before this call was answered.
    async fn caught_up(&self, what: &str) {
        let (target, _) = *self.progress.lock().unwrap();
        let until = Instant::now() + DEADLINE;
        loop {
            let (sent, oldest) = *self.progress.lock().unwrap();
            if oldest > target {
                return;
            }
            assert!(Instant::now() < until, "{what}: echo-{oldest} not answered ({sent} sent)");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn stop(mut self) -> EchoReport {
        self.stop.store(true, Ordering::Relaxed);
        match (&mut self.task).await {
            Ok(report) => report,
            Err(error) => std::panic::resume_unwind(error.into_panic()),
        }
    }
}

/// A test that failed mid-way: stop sending before the cleanup removes the exchange.
impl Drop for EchoStream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

// ---------------------------------------------------------------------------------------------
// Metrics and the captured host log.
// ---------------------------------------------------------------------------------------------

/// One scrape of `/metrics`: each sample by its name and labels, as written.
struct Scrape {
    text: String,
    values: BTreeMap<String, f64>,
}

impl Scrape {
    fn parse(text: String) -> Scrape {
        let values = text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.rsplit_once(' '))
            .filter_map(|(key, value)| value.parse().ok().map(|v| (key.to_string(), v)))
            .collect();
        Scrape { text, values }
    }

    /// A sample, 0 when absent.
    fn get(&self, key: &str) -> f64 {
        self.values.get(key).copied().unwrap_or(0.0)
    }

    /// `warren_messages_total` of `plugin` settled with `outcome`.
    fn outcome(&self, plugin: &str, outcome: &str) -> f64 {
        self.get(&format!("warren_messages_total{{plugin=\"{plugin}\",outcome=\"{outcome}\"}}"))
    }

    /// Messages settled with `outcome`, all plugins.
    fn outcome_total(&self, outcome: &str) -> f64 {
        let suffix = format!(",outcome=\"{outcome}\"}}");
        self.values
            .iter()
            .filter(|(k, _)| k.starts_with("warren_messages_total{") && k.ends_with(&suffix))
            .map(|(_, v)| v)
            .sum::<f64>()
            + 0.0
    }

    /// Messages settled, all plugins and outcomes.
    fn settled_total(&self) -> f64 {
        self.values.iter().filter(|(k, _)| k.starts_with("warren_messages_total{")).map(|(_, v)| v).sum()
    }
}

/// The captured log lines that mention `text` (a service name).
fn log_lines(text: &str) -> Vec<String> {
    captured_log().lines().filter(|l| l.contains(text)).map(str::to_string).collect()
}
