//! `audit`: consumes `order.#` events, logs each through the host, and publishes an
//! `audit.recorded` record (routing key, size, sending service) on the `audit` stream.

use serde::Serialize;
use warren_guest::{HandlerError, Message, Response, host};

#[derive(Debug, Serialize, PartialEq)]
pub struct Recorded {
    pub key: String,
    pub bytes: usize,
    pub service: Option<String>,
}

/// The record kept for one event.
pub fn record(message: &Message) -> Recorded {
    Recorded {
        key: message.routing_key.clone(),
        bytes: message.body.len(),
        service: message.text_header("service").map(str::to_string),
    }
}

pub fn audit(message: Message) -> Result<Response, HandlerError> {
    let recorded = record(&message);
    host::info(&format!("audit: {} ({} bytes) from {:?}", recorded.key, recorded.bytes, recorded.service));
    host::publish_json("audit", "audit.recorded", &recorded)?;
    Ok(Response::new(Vec::new()))
}

warren_guest::export!(audit);

#[cfg(test)]
mod tests {
    use super::*;
    use warren_guest::{Header, HeaderValue};

    #[test]
    fn records_key_size_and_sender() {
        let message = Message {
            routing_key: "order.created".into(),
            body: b"{}".to_vec(),
            content_type: None,
            headers: vec![Header { name: "service".into(), value: HeaderValue::Text("orders".into()) }],
        };
        let expected = Recorded { key: "order.created".into(), bytes: 2, service: Some("orders".into()) };
        assert_eq!(record(&message), expected);
    }
}
