//! `[[request]]`, `[[event]]` and `[[response]]`: which plugin handles what, on which queue
//! (the queues' names are the AMQP wing's), with per-handler dead-lettering and retry delays;
//! and the rule that handlers sharing a queue have disjoint routing-key patterns.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::ConfigError;
use super::limits::retry_delays;
use super::locate::Locator;
use super::names::{check_name, dead_letter};

/// The stream `[[event]]` handlers consume when they name none: goamqp's default stream
/// (the AMQP wing turns it into exchange and queue names).
pub const DEFAULT_STREAM: &str = "events";

/// `[[request]]`: serve requests with this routing key on `S.direct.exchange.request.queue`.
#[derive(Debug, Clone, PartialEq)]
pub struct RequestHandler {
    pub routing_key: String,
    pub plugin: String,
    /// Where this handler's rejected messages go (else `broker.dead_letter_exchange`).
    pub dead_letter_exchange: Option<String>,
    /// This handler's own `retry_delays_ms`, over its plugin's limits.
    pub retry_delays: Option<Vec<Duration>>,
    /// Whether the handler's result is published as the answer (goamqp's
    /// `RequestResponseHandler`, the default); `false`: goamqp's `ServiceRequestConsumer`,
    /// success acks the request and publishes nothing.
    pub respond: bool,
}

/// `[[event]]`: consume events matching `routing_key` (`*`, `#` allowed) from a stream.
#[derive(Debug, Clone, PartialEq)]
pub struct EventHandler {
    pub stream: String,
    pub routing_key: String,
    pub plugin: String,
    pub transient: bool,
    pub queue_suffix: Option<String>,
    pub dead_letter_exchange: Option<String>,
    /// This handler's own `retry_delays_ms`, over its plugin's limits.
    pub retry_delays: Option<Vec<Duration>>,
}

/// `[[response]]`: consume responses from service `service` to our requests.
#[derive(Debug, Clone, PartialEq)]
pub struct ResponseHandler {
    pub service: String,
    pub routing_key: String,
    pub plugin: String,
    pub dead_letter_exchange: Option<String>,
    /// This handler's own `retry_delays_ms`, over its plugin's limits.
    pub retry_delays: Option<Vec<Duration>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRequest {
    pub(super) routing_key: Spanned<String>,
    pub(super) plugin: Spanned<String>,
    pub(super) dead_letter_exchange: Option<Spanned<String>>,
    pub(super) retry_delays_ms: Option<Spanned<Vec<u64>>>,
    pub(super) respond: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawEvent {
    pub(super) routing_key: Spanned<String>,
    pub(super) plugin: Spanned<String>,
    pub(super) stream: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) transient: bool,
    pub(super) queue_suffix: Option<Spanned<String>>,
    pub(super) dead_letter_exchange: Option<Spanned<String>>,
    pub(super) retry_delays_ms: Option<Spanned<Vec<u64>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawResponse {
    pub(super) service: Spanned<String>,
    pub(super) routing_key: Spanned<String>,
    pub(super) plugin: Spanned<String>,
    pub(super) dead_letter_exchange: Option<Spanned<String>>,
    pub(super) retry_delays_ms: Option<Spanned<Vec<u64>>>,
}

fn handler_retry_delays(
    at: &Locator,
    value: &Option<Spanned<Vec<u64>>>,
    table: &str,
) -> Result<Option<Vec<Duration>>, ConfigError> {
    value.as_ref().map(|v| retry_delays(at, v, &format!("{table}.retry_delays_ms"))).transpose()
}

fn check_routing_key(at: &Locator, value: &Spanned<String>, key: &str) -> Result<String, ConfigError> {
    let routing_key = value.get_ref();
    if routing_key.is_empty() || routing_key.len() > 255 {
        return Err(at.at(value, key, "must be 1 to 255 bytes long (an AMQP short string)"));
    }
    Ok(routing_key.clone())
}

fn check_plugin(at: &Locator, value: &Spanned<String>, key: &str) -> Result<String, ConfigError> {
    let plugin = check_name(at, value, key)?;
    if plugin.ends_with(".wasm") {
        return Err(at.at(value, key, format!("name the plugin without '.wasm' (the file is <plugins>/{plugin})")));
    }
    Ok(plugin)
}

/// `[[request]]`: one handler per routing key.
pub(super) fn resolve_requests(at: &Locator, raw: &[RawRequest]) -> Result<Vec<RequestHandler>, ConfigError> {
    let mut requests = Vec::new();
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for (i, raw) in raw.iter().enumerate() {
        let key = format!("request[{i}].routing_key");
        let routing_key = check_routing_key(at, &raw.routing_key, &key)?;
        if let Some(first) = seen.insert(routing_key.clone(), i) {
            return Err(at.at(
                &raw.routing_key,
                &key,
                format!(
                    "'{routing_key}' is already served by request[{first}]; each request routing key has one handler"
                ),
            ));
        }
        let plugin = check_plugin(at, &raw.plugin, &format!("request[{i}].plugin"))?;
        let dead_letter_exchange = dead_letter(at, &raw.dead_letter_exchange, &format!("request[{i}]"))?;
        let retry_delays = handler_retry_delays(at, &raw.retry_delays_ms, &format!("request[{i}]"))?;
        let respond = raw.respond.unwrap_or(true);
        requests.push(RequestHandler { routing_key, plugin, dead_letter_exchange, retry_delays, respond });
    }
    Ok(requests)
}

/// `[[event]]`: stream, queue suffix and pattern; handlers sharing a queue must not overlap.
pub(super) fn resolve_events(at: &Locator, raw: &[RawEvent]) -> Result<Vec<EventHandler>, ConfigError> {
    let mut events = Vec::new();
    for (i, raw) in raw.iter().enumerate() {
        let stream = match &raw.stream {
            Some(s) => check_name(at, s, &format!("event[{i}].stream"))?,
            None => DEFAULT_STREAM.to_string(),
        };
        let queue_suffix = match &raw.queue_suffix {
            Some(s) if raw.transient => {
                return Err(at.at(
                    s,
                    &format!("event[{i}].queue_suffix"),
                    "a transient consumer gets a fresh UUID suffix; remove queue_suffix or set transient = false",
                ));
            }
            Some(s) => Some(check_name(at, s, &format!("event[{i}].queue_suffix"))?),
            None => None,
        };
        events.push(EventHandler {
            stream,
            routing_key: check_routing_key(at, &raw.routing_key, &format!("event[{i}].routing_key"))?,
            plugin: check_plugin(at, &raw.plugin, &format!("event[{i}].plugin"))?,
            transient: raw.transient,
            queue_suffix,
            dead_letter_exchange: dead_letter(at, &raw.dead_letter_exchange, &format!("event[{i}]"))?,
            retry_delays: handler_retry_delays(at, &raw.retry_delays_ms, &format!("event[{i}]"))?,
        });
    }
    check_event_overlaps(at, raw, &events)?;
    Ok(events)
}

/// Handlers sharing a queue must not overlap: a delivery could not pick one.
fn check_event_overlaps(at: &Locator, raw: &[RawEvent], events: &[EventHandler]) -> Result<(), ConfigError> {
    for (i, later) in events.iter().enumerate() {
        let same_queue = |e: &EventHandler| {
            e.stream == later.stream && e.transient == later.transient && e.queue_suffix == later.queue_suffix
        };
        if let Some((j, first)) = events[..i]
            .iter()
            .enumerate()
            .find(|(_, e)| same_queue(e) && patterns_overlap(&e.routing_key, &later.routing_key))
        {
            return Err(at.at(
                &raw[i].routing_key,
                &format!("event[{i}].routing_key"),
                format!(
                    "'{}' overlaps event[{j}]'s '{}' on the same queue, so a delivery could match both; \
                     goamqp refuses this too: make the patterns disjoint, or give one its own queue_suffix",
                    later.routing_key, first.routing_key
                ),
            ));
        }
    }
    Ok(())
}

/// `[[response]]`: responses from another service to our requests.
pub(super) fn resolve_responses(at: &Locator, raw: &[RawResponse]) -> Result<Vec<ResponseHandler>, ConfigError> {
    raw.iter()
        .enumerate()
        .map(|(i, raw)| {
            Ok(ResponseHandler {
                service: check_name(at, &raw.service, &format!("response[{i}].service"))?,
                routing_key: check_routing_key(at, &raw.routing_key, &format!("response[{i}].routing_key"))?,
                plugin: check_plugin(at, &raw.plugin, &format!("response[{i}].plugin"))?,
                dead_letter_exchange: dead_letter(at, &raw.dead_letter_exchange, &format!("response[{i}]"))?,
                retry_delays: handler_retry_delays(at, &raw.retry_delays_ms, &format!("response[{i}]"))?,
            })
        })
        .collect()
}

/// Whether some routing key matches both topic patterns `a` and `b` (`*` = one word, `#` =
/// zero or more; goamqp refuses two handlers on one queue whose patterns overlap: the
/// delivery could not pick one).
fn patterns_overlap(a: &str, b: &str) -> bool {
    fn overlap(a: &[&str], b: &[&str]) -> bool {
        match (a.split_first(), b.split_first()) {
            (None, None) => true,
            (None, Some(_)) => b.iter().all(|w| *w == "#"),
            (Some(_), None) => a.iter().all(|w| *w == "#"),
            (Some((&"#", a_rest)), _) => overlap(a_rest, b) || overlap(a, &b[1..]),
            (_, Some((&"#", b_rest))) => overlap(a, b_rest) || overlap(&a[1..], b),
            (Some((x, a_rest)), Some((y, b_rest))) => (*x == "*" || *y == "*" || x == y) && overlap(a_rest, b_rest),
        }
    }
    let a: Vec<&str> = a.split('.').collect();
    let b: Vec<&str> = b.split('.').collect();
    overlap(&a, &b)
}

#[cfg(test)]
mod tests {
    use super::patterns_overlap;

    #[test]
    fn overlapping_patterns_share_a_key() {
        assert!(patterns_overlap("order.#", "order.created"));
        assert!(patterns_overlap("order.*", "order.#"));
        assert!(patterns_overlap("*.created", "order.*"));
        assert!(patterns_overlap("#", "anything"));
        assert!(patterns_overlap("a.#.z", "a.b.#"));
        assert!(!patterns_overlap("order.*", "user.*"));
        assert!(!patterns_overlap("order.created", "order.deleted"));
        assert!(!patterns_overlap("order.*", "order.created.eu"));
        assert!(!patterns_overlap("a.*.c", "a.b"));
    }
}
