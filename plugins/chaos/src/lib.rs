//! `chaos`: the body picks a misbehaviour, to show (and test) what the host survives.
//!
//! - `loop`: spins forever (the host's deadline stops it)
//! - `alloc:<MiB>`: allocates and touches that many MiB (the host's memory limit stops it)
//! - `panic`: panics (a trap)
//! - `slow:<ms>`: busy-waits that many milliseconds, then answers `slow:<ms>`
//! - `count`: answers how many messages this instance has handled, itself included (`1`
//!   unless the host reuses instances: `reuse` in `[plugin.chaos]`)
//! - `retry`: asks the host to retry the message later (`retry` error)
//! - `flaky:<n>`: publishes event `chaos.tried` (stream `events`, needs the grant
//!   `publish = ["events"]`) as its side effect, then asks for a retry until the message has
//!   been retried `n` times (the host's `x-warren-retries` header), then answers `done after <n>`
//! - `headers`: answers with every request header copied onto the response (a fidelity check)
//! - `queue:<name>`: publishes `queued` to queue `<name>` through the host (needs the grant
//!   `queues = ["<name>"]`), then answers `sent` or the refusal
//! - `answer:<service>:<key>`: answers service `<service>` later, as goamqp's
//!   `PublishServiceResponse` does (`answered`, routing key `<key>`; needs the grant
//!   `respond = ["<service>"]`), then answers `sent` or the refusal
//! - `env:<NAME>`: answers the environment variable's value, or `unset` (nothing is granted
//!   unless the config says so)
//! - `read:<path>`: answers the file's content, or `denied: <error>` (no folder is granted
//!   unless the config says so)
//! - `write:<path>`: writes `written by chaos` to the file (creating or replacing it), then
//!   answers `wrote`, or `denied: <error>` (a granted folder is read-only)
//! - `remove:<path>`: removes the file, then answers `removed`, or `denied: <error>`
//! - anything else: echoed back unchanged

use std::time::{Duration, Instant};
use warren_guest::{HandlerError, Message, Response};

/// Misbehaves as the body asks.
pub fn chaos(message: Message) -> Result<Response, HandlerError> {
    let text = String::from_utf8_lossy(&message.body);
    if text == "loop" {
        let mut spins: u64 = 0;
        loop {
            spins = std::hint::black_box(spins.wrapping_add(1));
        }
    } else if let Some(name) = text.strip_prefix("env:") {
        return Ok(Response::new(std::env::var(name).unwrap_or_else(|_| "unset".into())));
    } else if let Some(path) = text.strip_prefix("read:") {
        return Ok(Response::new(std::fs::read(path).unwrap_or_else(|e| format!("denied: {e}").into_bytes())));
    } else if let Some(path) = text.strip_prefix("write:") {
        return Ok(Response::new(outcome(std::fs::write(path, b"written by chaos"), "wrote")));
    } else if let Some(path) = text.strip_prefix("remove:") {
        return Ok(Response::new(outcome(std::fs::remove_file(path), "removed")));
    } else if let Some(queue) = text.strip_prefix("queue:") {
        return Ok(told(warren_guest::host::send_to_queue(queue, "chaos", b"queued", &[])));
    } else if let Some((service, key)) = text.strip_prefix("answer:").and_then(|rest| rest.split_once(':')) {
        return Ok(told(warren_guest::host::publish_response(service, key, b"answered", &[])));
    } else if text == "headers" {
        let mut response = Response::new(message.body.clone());
        response.headers =
            message.headers.into_iter().filter(|h| h.name != "routing-key" && h.name != "service").collect();
        return Ok(response);
    } else if text == "count" {
        static HANDLED: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let handled = HANDLED.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        return Ok(Response::new(handled.to_string()));
    } else if let Some(n) = text.strip_prefix("flaky:") {
        let n: i64 = n.trim().parse().map_err(|_| bad("flaky:<n> needs a number"))?;
        let tries = message
            .headers
            .iter()
            .find(|h| h.name == "x-warren-retries")
            .and_then(|h| match h.value {
                warren_guest::HeaderValue::Integer(i) => Some(i),
                _ => None,
            })
            .unwrap_or(0);
        warren_guest::host::publish_event("events", "chaos.tried", format!("try {tries}").as_bytes(), &[])
            .map_err(|e| HandlerError::Failed(format!("side effect not sent: {e:?}")))?;
        if tries < n {
            return Err(HandlerError::Retry(format!("flaky: try {tries} of {n}")));
        }
        return Ok(Response::new(format!("done after {tries}")));
    } else if text == "retry" {
        return Err(HandlerError::Retry("chaos: asked to retry".into()));
    } else if text == "panic" {
        panic!("chaos: asked to panic");
    } else if let Some(mib) = text.strip_prefix("alloc:") {
        let mib: usize = mib.trim().parse().map_err(|_| bad("alloc:<MiB> needs a number"))?;
        let block = vec![1u8; mib * 1024 * 1024];
        let touched = std::hint::black_box(&block).iter().step_by(4096).map(|b| *b as usize).sum::<usize>();
        return Ok(Response::new(format!("allocated {mib} MiB ({touched} pages)")));
    } else if let Some(ms) = text.strip_prefix("slow:") {
        let ms: u64 = ms.trim().parse().map_err(|_| bad("slow:<ms> needs a number"))?;
        let until = Instant::now() + Duration::from_millis(ms);
        while Instant::now() < until {
            std::hint::spin_loop();
        }
    }
    Ok(Response::new(message.body))
}

/// `sent`, or the host's refusal as it came.
fn told(sent: Result<(), warren_guest::SendError>) -> Response {
    Response::new(match sent {
        Ok(()) => "sent".to_string(),
        Err(error) => format!("refused: {error:?}"),
    })
}

/// `done` if a file operation succeeded, else `denied: <error>`.
fn outcome(result: std::io::Result<()>, done: &str) -> String {
    result.map_or_else(|e| format!("denied: {e}"), |()| done.to_string())
}

fn bad(why: &str) -> HandlerError {
    HandlerError::BadRequest(why.to_string())
}

warren_guest::export!(chaos);

#[cfg(test)]
mod tests {
    use super::*;

    fn message(body: &str) -> Message {
        Message { routing_key: "chaos".into(), body: body.into(), content_type: None, headers: vec![] }
    }

    #[test]
    fn echoes_what_it_does_not_know() {
        assert_eq!(chaos(message("hello")).unwrap().body, b"hello");
    }

    #[test]
    fn slow_waits_then_answers() {
        let start = Instant::now();
        assert_eq!(chaos(message("slow:20")).unwrap().body, b"slow:20");
        assert!(start.elapsed() >= Duration::from_millis(20));
    }

    #[test]
    fn retry_asks_for_a_retry() {
        assert!(matches!(chaos(message("retry")), Err(HandlerError::Retry(_))));
    }

    #[test]
    fn bad_numbers_are_bad_requests() {
        assert!(matches!(chaos(message("alloc:many")), Err(HandlerError::BadRequest(_))));
    }
}
