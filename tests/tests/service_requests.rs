//! goamqp's second way to serve a request, on the real broker with goamqp-faithful peers
//! (issue 27): `ServiceRequestConsumer` (`[[request]] respond = false`: the same queue and
//! bindings as `RequestResponseHandler`, success acks and publishes nothing) and
//! `PublishServiceResponse` (the host import `publish-response`: a late answer on this
//! service's own `S.headers.exchange.response`, routing key and header `service` = the
//! requester, granted by `[plugin.<name>] respond = [...]`). Names are spelled out, not computed.
//!
//! | what | test |
//! |---|---|
//! | a command gets no answer: nothing reaches the response exchange, no requester needed | [`a_command_to_a_handler_that_answers_nothing_publishes_nothing`] |
//! | an event handler answers an earlier request, into goamqp's response binding | [`an_event_handler_answers_an_earlier_request_by_service_name`] |
//! | an ungranted target is `denied`; an unbound one `failed` | [`a_late_answer_to_an_ungranted_service_is_denied`] |
//! | the Python, JavaScript and Go helpers | [`python_answers_later`], [`javascript_answers_later`], [`go_answers_later`] |

use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, ExchangeKind, options::BasicPublishOptions};
use warren_tests::*;

/// `[[request]]` tables for `(routing key, plugin)` that answer nothing (`respond = false`).
fn commands(handlers: &[(&str, &str)]) -> String {
    handlers
        .iter()
        .map(|(key, plugin)| format!("[[request]]\nrouting_key = \"{key}\"\nplugin = \"{plugin}\"\nrespond = false\n"))
        .collect()
}

/// A text header table, as goamqp's `Headers` map carries strings.
fn text_headers(pairs: &[(&str, &str)]) -> BasicProperties {
    let mut headers = FieldTable::default();
    for (name, value) in pairs {
        headers.insert((*name).into(), AMQPValue::LongString(LongString::from(*value)));
    }
    BasicProperties::default().with_headers(headers)
}

broker_test! {
    async fn a_command_to_a_handler_that_answers_nothing_publishes_nothing() {
        let service = unique_service("command");
        // `charge` is a command (ServiceRequestConsumer); `quote` on the same queue answers
        // (RequestResponseHandler), to show the client and the tap would see an answer.
        let text = format!("{}{}", commands(&[("charge", "echo")]), requests(&[("quote", "echo")]));
        let config = config(&service, &text);
        assert!(!config.requests[0].respond && config.requests[1].respond);
        let mut s = Scenario::from_config(config, &["charge", "quote"]).await;
        // Everything published to the host's response exchange, whoever it names (a headers
        // binding without arguments matches every message).
        let exchange = format!("{service}.headers.exchange.response");
        let mut answers = Tap::bind(&exchange, ExchangeKind::Headers, &[""], &s.cleanup).await;

        // A goamqp ServicePublisher's command, and one without a `service` header: goamqp's
        // ServiceRequestConsumer never looks for a requester, so both are handled and acked.
        s.client.request("charge", br#"{"amount":42}"#).await;
        s.client.publish("charge", br#"{"amount":7}"#, BasicProperties::default()).await;
        s.client.request("quote", br#"{"amount":1}"#).await;
        let quote = s.client.response(DEADLINE).await.expect("quote is answered");
        assert_eq!((quote.routing_key.as_str(), quote.data.as_slice()), ("quote", &br#"{"amount":1}"#[..]));
        let tapped = answers.next_from("go-client").await.expect("the tap sees quote's answer");
        assert_eq!(tapped.routing_key.as_str(), "quote");

        // From the broker: the request queue settled, no answer waits for the client, nothing
        // else reached the response exchange (so no publish could have been unroutable), and
        // nothing was rejected.
        s.assert_no_response().await;
        answers.assert_nothing_from("go-client").await;
        assert!(s.dead.try_next().is_none(), "a command is acked, not rejected");
        s.finish().await;
    }
}

broker_test! {
    async fn an_event_handler_answers_an_earlier_request_by_service_name() {
        let service = unique_service("saga");
        let stream = format!("{service}-saga");
        let text = format!(
            "{}[[event]]\nstream = \"{stream}\"\nrouting_key = \"saga.done\"\nplugin = \"chaos\"\n\
             [plugin.chaos]\nrespond = [\"go-client\"]\n",
            commands(&[("charge", "echo")])
        );
        let mut s = Scenario::from_config(config(&service, &text), &["charge"]).await;

        // The command is taken and acked without an answer…
        s.client.request("charge", br#"{"order":"o-1"}"#).await;
        s.assert_no_response().await;
        // …and answered once the saga finishes: an event whose handler publishes the answer.
        let channel = s.client.connection.create_channel().await.unwrap();
        let done = text_headers(&[("service", "saga-runner")]).with_content_type("application/json".into());
        channel
            .basic_publish(format!("{stream}.topic.exchange").as_str().into(), "saga.done".into(), BasicPublishOptions::default(), b"answer:go-client:charge", done)
            .await
            .unwrap();
        let answer = s.client.response(DEADLINE).await.expect("the late answer reaches the requester's response queue");
        assert_eq!(answer.exchange.as_str(), format!("{service}.headers.exchange.response"));
        assert_eq!(answer.routing_key.as_str(), "charge", "goamqp's binding: the routing key…");
        assert_goamqp_message(&answer, "go-client", &[]); // …and header service = the requester
        assert_eq!(answer.data, b"answered");
        wait_until_settled(&format!("{stream}.topic.exchange.queue.{service}")).await;
        s.finish().await;
    }
}

broker_test! {
    async fn a_late_answer_to_an_ungranted_service_is_denied() {
        let service = unique_service("nodeny");
        let text = format!("{}[plugin.chaos]\nrespond = [\"go-client\", \"ghost\"]\n", requests(&[("chaos", "chaos")]));
        let mut s = Scenario::from_config(config(&service, &text), &["chaos"]).await;

        // Granted, but the requester has no response queue bound (a headers exchange routes on
        // the `service` header alone): `failed`, never dropped silently.
        s.client.request("chaos", b"answer:ghost:charge").await;
        let failed = String::from_utf8(s.client.response(DEADLINE).await.expect("answered").data).unwrap();
        assert!(failed.starts_with("refused: SendError::Failed") && failed.contains("no queue of 'ghost' is bound to"), "{failed}");

        // Not granted: `denied`, and nothing reaches the response exchange (a tap bound without
        // arguments would take anything published there).
        let exchange = format!("{service}.headers.exchange.response");
        let mut answers = Tap::bind(&exchange, ExchangeKind::Headers, &[""], &s.cleanup).await;
        s.client.request("chaos", b"answer:billing:charge").await;
        let refused = String::from_utf8(s.client.response(DEADLINE).await.expect("answered").data).unwrap();
        assert!(refused.starts_with("refused: SendError::Denied"), "{refused}");
        assert!(refused.contains("may not answer service 'billing'") && refused.contains("respond = [\\\"billing\\\"]"), "{refused}");
        answers.assert_nothing_from("billing").await;
        s.finish().await;
    }
}

/// A `respond = false` handler in `fixture` (Python, JavaScript or Go) answers the requester
/// named in header `answer-to` through its SDK's helper: granted, the answer arrives on the
/// client's binding with the plugin's typed headers; not granted, the send is `denied` and the
/// message refused for good.
async fn answers_later(fixture: &str) {
    let service = unique_service(fixture);
    let text = format!("{}[plugin.{fixture}]\nrespond = [\"go-client\"]\n", commands(&[("answer", fixture)]));
    let config = config_in(&service, fixtures_dir(), &text);
    let mut s = Scenario::from_config(config, &["answered"]).await;
    let mut properties = text_headers(&[("service", "go-client"), ("answer-to", "go-client")]);
    let mut headers = properties.headers().clone().unwrap();
    headers.insert("attempt".into(), AMQPValue::LongLongInt(3));
    properties = properties.with_headers(headers);
    s.client.publish("answer", br#"{"id":1}"#, properties).await;
    let answer = s.client.response(DEADLINE).await.expect("the late answer");
    assert_eq!((answer.routing_key.as_str(), answer.data.as_slice()), ("answered", &br#"{"id":1}"#[..]));
    assert_eq!(answer.properties.headers().as_ref().unwrap().inner().get("attempt"), Some(&AMQPValue::LongLongInt(3)));
    assert_goamqp_message(&answer, "go-client", &["attempt"]);

    s.client
        .publish("answer", br#"{"id":2}"#, text_headers(&[("service", "go-client"), ("answer-to", "billing")]))
        .await;
    let dead = s.dead.next(DEADLINE).await.expect("the denied send refuses the message");
    assert_eq!(dead.data, br#"{"id":2}"#);
    assert_eq!(DeadLetters::death_reason(&dead).as_deref(), Some("rejected"), "denied: for good, not retried");
    s.assert_no_response().await;
    s.finish().await;
}

broker_test! {
    async fn python_answers_later() {
        answers_later("headers-py").await;
    }
}

broker_test! {
    async fn javascript_answers_later() {
        answers_later("headers-js").await;
    }
}

broker_test! {
    async fn go_answers_later() {
        answers_later("headers-go").await;
    }
}
