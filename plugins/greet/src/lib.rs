//! `greet`: `{"name": "Ada"}` → `{"greeting": "Hello, Ada!"}`; anything else is `bad-request`.

use serde::{Deserialize, Serialize};
use warren_guest::HandlerError;

#[derive(Debug, Deserialize)]
pub struct Greet {
    pub name: String,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct Greeting {
    pub greeting: String,
}

/// Greets the person named in the request.
pub fn greet(input: Greet) -> Result<Greeting, HandlerError> {
    Ok(Greeting { greeting: format!("Hello, {}!", input.name) })
}

warren_guest::export_json!(greet);

#[cfg(test)]
mod tests {
    use super::*;
    use warren_guest::{Message, call_json};

    fn message(body: &[u8]) -> Message {
        Message { routing_key: "greet".into(), body: body.to_vec(), content_type: None, headers: vec![] }
    }

    #[test]
    fn greets_by_name() {
        let response = call_json(greet, message(br#"{"name":"Ada"}"#)).unwrap();
        assert_eq!(response.body, br#"{"greeting":"Hello, Ada!"}"#);
    }

    #[test]
    fn a_body_that_is_not_such_json_is_a_bad_request() {
        for body in [&b"hello"[..], br#"{"nom":"Ada"}"#, b""] {
            assert!(matches!(call_json(greet, message(body)), Err(HandlerError::BadRequest(_))));
        }
    }
}
