//! `echo`: answers every request with its body unchanged.

use warren_guest::{HandlerError, Message, Response};

/// Returns the request body as the response body, byte for byte.
pub fn echo(message: Message) -> Result<Response, HandlerError> {
    Ok(Response::new(message.body))
}

warren_guest::export!(echo);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_with_the_body_unchanged() {
        let message =
            Message { routing_key: "echo".into(), body: vec![0, 159, 255, b'a'], content_type: None, headers: vec![] };
        assert_eq!(echo(message).unwrap().body, vec![0, 159, 255, b'a']);
    }
}
