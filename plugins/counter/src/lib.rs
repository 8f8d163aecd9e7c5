//! `counter`: counts in the key-value bucket `counters` and answers the count.
//!
//! `{"name": "ada"}` → `{"name": "ada", "count": 3}`: the third time `ada` was counted. With no
//! `name` (or an empty body), the message's routing key is counted. The count lives in the
//! host's store (`[keyvalue]`): it survives restarts, and on Redis it is shared by every host
//! of the service. Grant the bucket with `[plugin.counter] keyvalue = ["counters"]`.
//!
//! `{"name": "ada", "swap": true}` counts the same way with compare-and-swap (read, then swap
//! the old count for the new one, again if another call came first): the path a plugin takes
//! for any read-modify-write that is not a plain increment.
//!
//! `{"name": "ada", "read": true}` answers the count without counting (a `get`). `"times": N`
//! repeats the operation N times in one call (default 1): what the benchmark
//! (`host/examples/keyvalue.rs`) measures a store operation with.
//!
//! A store failure (Redis down, the deadline near) is a `retry`; the bucket not granted is
//! `failed`.

use serde::{Deserialize, Serialize};
use warren_guest::{HandlerError, Message, Response, kv};

/// The bucket counts live in.
pub const BUCKET: &str = "counters";

#[derive(Debug, Default, Deserialize)]
pub struct Count {
    #[serde(default)]
    pub name: Option<String>,
    /// Count with compare-and-swap instead of `increment`.
    #[serde(default)]
    pub swap: bool,
    /// Only read the count.
    #[serde(default)]
    pub read: bool,
    /// How many times to do the operation in this call (0 or absent: once).
    #[serde(default)]
    pub times: u32,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct Counted {
    pub name: String,
    pub count: u64,
}

/// What to count (the body's `name`, else the routing key) and how.
pub fn parse(message: &Message) -> Result<Count, HandlerError> {
    let input: Count = if message.body.iter().all(u8::is_ascii_whitespace) {
        Count::default()
    } else {
        serde_json::from_slice(&message.body)
            .map_err(|e| HandlerError::BadRequest(format!("expected {{\"name\": \"...\"}} or an empty body: {e}")))?
    };
    let name = input.name.filter(|n| !n.is_empty()).unwrap_or_else(|| message.routing_key.clone());
    Ok(Count { name: Some(name), ..input })
}

/// Counts one more for the message's name (or reads the count) and answers the count.
pub fn count(message: Message) -> Result<Response, HandlerError> {
    let input = parse(&message)?;
    let name = input.name.unwrap_or_default();
    let bucket = kv::Bucket::open(BUCKET)?;
    let mut count = 0;
    for _ in 0..input.times.max(1) {
        count = match (input.read, input.swap) {
            (true, _) => read_count(&bucket, &name)?.0,
            (false, true) => count_by_swapping(&bucket, &name)?,
            (false, false) => bucket.increment(&name, 1)?,
        };
    }
    Response::json(&Counted { name, count })
}

/// The count under `name` (0 when none) and its stored text.
fn read_count(bucket: &kv::Bucket, name: &str) -> Result<(u64, Option<Vec<u8>>), HandlerError> {
    let current = bucket.get(name)?;
    let count = match &current {
        None => 0,
        Some(text) => std::str::from_utf8(text)
            .ok()
            .and_then(|t| t.parse::<u64>().ok())
            .ok_or_else(|| HandlerError::Failed(format!("the count of '{name}' is not a number")))?,
    };
    Ok((count, current))
}

/// Adds one to the count under `name` with compare-and-swap, trying again while other calls
/// change it first.
fn count_by_swapping(bucket: &kv::Bucket, name: &str) -> Result<u64, HandlerError> {
    loop {
        let (count, current) = read_count(bucket, name)?;
        let next = count + 1;
        if bucket.compare_and_swap(name, current.as_deref(), next.to_string().as_bytes())? {
            return Ok(next);
        }
    }
}

warren_guest::export!(count);

#[cfg(test)]
mod tests {
    use super::*;

    fn message(body: &[u8]) -> Message {
        Message { routing_key: "count".into(), body: body.to_vec(), content_type: None, headers: vec![] }
    }

    #[test]
    fn counts_the_name_else_the_routing_key() {
        let named = |body: &[u8]| parse(&message(body)).map(|c| (c.name.unwrap(), c.swap, c.read, c.times)).unwrap();
        assert_eq!(named(br#"{"name":"ada"}"#), ("ada".into(), false, false, 0));
        assert_eq!(named(br#"{"name":"ada","swap":true,"times":3}"#), ("ada".into(), true, false, 3));
        assert_eq!(named(br#"{"read":true}"#), ("count".into(), false, true, 0));
        assert_eq!(named(b""), ("count".into(), false, false, 0));
        assert!(matches!(parse(&message(b"nope")), Err(HandlerError::BadRequest(_))));
    }
}
