//! goamqp's naming conventions (SPEC §1): the one place that turns service and stream names
//! into exchange and queue names. Other teams' Go services depend on these exact strings.

/// The stream consumed by `[[event]]` handlers that name none (the config's default for
/// `stream`, which the config resolves before this wing is used).
pub use crate::config::DEFAULT_STREAM;

/// `S.direct.exchange.request`: the direct exchange that carries requests to service `S`.
pub fn request_exchange(service: &str) -> String {
    format!("{service}.direct.exchange.request")
}

/// `S.headers.exchange.response`: the headers exchange that carries responses from `S`.
pub fn response_exchange(service: &str) -> String {
    format!("{service}.headers.exchange.response")
}

/// `S.direct.exchange.request.queue`: the queue `S`'s request handlers consume.
pub fn request_queue(service: &str) -> String {
    format!("{}.queue", request_exchange(service))
}

/// `T.headers.exchange.response.queue.S`: where `S` receives responses from service `T`.
pub fn response_queue(target: &str, service: &str) -> String {
    format!("{}.queue.{service}", response_exchange(target))
}

/// `X.topic.exchange`: the topic exchange of event stream `X`.
pub fn event_exchange(stream: &str) -> String {
    format!("{stream}.topic.exchange")
}

/// `X.topic.exchange.queue.S`: `S`'s durable queue on stream `X`.
pub fn event_queue(stream: &str, service: &str) -> String {
    format!("{}.queue.{service}", event_exchange(stream))
}

/// `X.topic.exchange.queue.S-<suffix>`: a durable queue with a suffix, or a transient
/// queue when the suffix is a fresh UUID v4.
pub fn event_queue_with_suffix(stream: &str, service: &str, suffix: &str) -> String {
    format!("{}-{suffix}", event_queue(stream, service))
}

/// A fresh name for a transient consumer of stream `X`: `X.topic.exchange.queue.S-<uuid v4>`.
pub fn transient_event_queue(stream: &str, service: &str) -> String {
    event_queue_with_suffix(stream, service, &uuid::Uuid::new_v4().to_string())
}

/// `<queue>.retry-<ms>ms`: where Warren parks a retried message of `queue` for `delay_ms`
/// before RabbitMQ dead-letters it back (Warren's own addition beside goamqp's names).
pub fn retry_queue(queue: &str, delay_ms: u64) -> String {
    format!("{queue}.retry-{delay_ms}ms")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_exchange_is_service_direct_exchange_request() {
        assert_eq!(request_exchange("billing"), "billing.direct.exchange.request");
    }

    #[test]
    fn response_exchange_is_service_headers_exchange_response() {
        assert_eq!(response_exchange("billing"), "billing.headers.exchange.response");
    }

    #[test]
    fn request_queue_is_request_exchange_dot_queue() {
        assert_eq!(request_queue("billing"), "billing.direct.exchange.request.queue");
    }

    #[test]
    fn response_queue_names_target_then_receiver() {
        assert_eq!(response_queue("billing", "orders"), "billing.headers.exchange.response.queue.orders");
    }

    #[test]
    fn default_stream_is_events_topic_exchange() {
        assert_eq!(event_exchange(DEFAULT_STREAM), "events.topic.exchange");
        assert_eq!(event_exchange("audit"), "audit.topic.exchange");
    }

    #[test]
    fn durable_event_queue_is_exchange_queue_service() {
        assert_eq!(event_queue("events", "orders"), "events.topic.exchange.queue.orders");
    }

    #[test]
    fn suffixed_event_queue_appends_dash_suffix() {
        assert_eq!(event_queue_with_suffix("events", "orders", "replay"), "events.topic.exchange.queue.orders-replay");
    }

    #[test]
    fn transient_event_queue_appends_a_uuid_v4() {
        let name = transient_event_queue("events", "orders");
        let uuid = name.strip_prefix("events.topic.exchange.queue.orders-").expect(&name);
        let parsed = uuid::Uuid::parse_str(uuid).expect(uuid);
        assert_eq!(parsed.get_version_num(), 4);
        assert_ne!(name, transient_event_queue("events", "orders"), "each transient queue is new");
    }

    #[test]
    fn retry_queue_is_the_queue_with_its_delay() {
        assert_eq!(
            retry_queue("billing.direct.exchange.request.queue", 1000),
            "billing.direct.exchange.request.queue.retry-1000ms"
        );
    }
}
