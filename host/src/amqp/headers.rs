//! AMQP headers ↔ plugin headers (SPEC §2): every AMQP field type keeps its meaning — text,
//! integer, float, boolean, bytes, timestamp, void; nested tables and arrays travel as JSON
//! text — so nothing is silently dropped or stringified.

use lapin::types::{AMQPValue, FieldArray, FieldTable, LongString, ShortString};
use serde_json::Value as Json;

use crate::wasm::{Header, HeaderValue};

/// Header counting how often a `retry` has requeued a message (classic queues have no
/// delivery count of their own).
pub const RETRIES_HEADER: &str = "x-warren-retries";
/// Header counting a message's host-side failures (a publish the broker did not take, a
/// full instance pool), each of which requeued a copy of it after a backoff.
pub const HOST_FAILURES_HEADER: &str = "x-warren-host-failures";
/// Header keeping a retried message's original routing key (a retry is republished through
/// the default exchange straight to the queue, which replaces the routing key).
pub const ORIGINAL_KEY_HEADER: &str = "x-warren-routing-key";
/// The delivery count RabbitMQ's quorum queues put on redelivered messages.
pub const QUORUM_DELIVERY_COUNT: &str = "x-delivery-count";
/// W3C trace context, copied from a request to its response.
pub const TRACEPARENT_HEADER: &str = "traceparent";

/// A new W3C `traceparent` (version 00, random trace and span ids, sampled).
pub use crate::telemetry::new_traceparent;

/// `value` if it is a W3C `traceparent` (`00-<32 hex>-<16 hex>-<2 hex>`, lowercase, ids not
/// all zero); a later version is taken by its first 55 characters, as W3C asks. Anything else
/// is `None`: a publisher's header of any length is never copied into every send.
pub fn valid_traceparent(value: String) -> Option<String> {
    crate::telemetry::SpanContext::parse(&value).map(|_| value[..55].to_string())
}

/// Text from outside (a publisher's routing key, message id, a reason quoting them) for a log
/// line: control characters escaped, so a newline cannot forge a line in the text format.
pub struct Escaped<'a>(pub &'a str);

impl std::fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use std::fmt::Write;
        for c in self.0.chars() {
            match c {
                c if c.is_control() || c == '\u{2028}' || c == '\u{2029}' => write!(f, "{}", c.escape_default())?,
                c => f.write_char(c)?,
            }
        }
        Ok(())
    }
}

/// Header naming why Warren dead-lettered a message.
pub const REASON_HEADER: &str = "x-warren-reason";
/// Header naming the queue a dead-lettered message was taken from.
pub const QUEUE_HEADER: &str = "x-warren-queue";

/// goamqp's queue publisher names its target queue in this header. RabbitMQ also routes a
/// message to every queue named in `CC` and `BCC` (sender-selected distribution), so only
/// the host may set them.
pub const CC_HEADER: &str = "CC";
/// Like `CC`, but removed by the broker before delivery.
pub const BCC_HEADER: &str = "BCC";

/// The header goamqp adds to every delivery it hands a handler.
pub const ROUTING_KEY_HEADER: &str = "routing-key";
/// The header that names the sending service.
pub const SERVICE_HEADER: &str = "service";

/// The headers a handler sees: the delivery's AMQP headers plus `routing-key`.
pub fn to_plugin(table: Option<&FieldTable>, routing_key: &str) -> Vec<Header> {
    let mut headers: Vec<Header> = table
        .map(|t| t.inner())
        .into_iter()
        .flatten()
        .filter(|(name, _)| name.as_str() != ROUTING_KEY_HEADER)
        .map(|(name, value)| {
            let value = match nests_too_deep(value) {
                true => HeaderValue::Text(too_deep(name.as_str())),
                false => to_plugin_value(value),
            };
            Header { name: name.to_string(), value }
        })
        .collect();
    headers.push(Header { name: ROUTING_KEY_HEADER.to_string(), value: HeaderValue::Text(routing_key.to_string()) });
    headers
}

/// A string header's value, if present and a string.
pub fn text(table: Option<&FieldTable>, name: &str) -> Option<String> {
    match table?.inner().get(name)? {
        AMQPValue::LongString(s) => std::str::from_utf8(s.as_bytes()).ok().map(str::to_string),
        AMQPValue::ShortString(s) => Some(s.to_string()),
        _ => None,
    }
}

/// The AMQP header table for headers a plugin set on a message it sends or answers with.
/// `service` is the host's to set and is dropped; `CC` and `BCC` would route the message to
/// queues the plugin was never granted, so a message carrying them is refused.
pub fn from_plugin(headers: &[Header]) -> Result<FieldTable, String> {
    let mut table = FieldTable::default();
    for header in headers {
        if header.name.eq_ignore_ascii_case(CC_HEADER) || header.name.eq_ignore_ascii_case(BCC_HEADER) {
            return Err(format!(
                "header '{}' is reserved: it would route the message to queues not granted to the plugin",
                header.name
            ));
        }
        if header.name.len() > MAX_NAME_BYTES {
            return Err(format!(
                "header name '{}…' is {} bytes, over AMQP's {MAX_NAME_BYTES}",
                header.name.chars().take(32).collect::<String>(),
                header.name.len()
            ));
        }
        if header.name == SERVICE_HEADER {
            continue;
        }
        let value = match &header.value {
            HeaderValue::Table(json) | HeaderValue::Array(json) => match serde_json::from_str::<Json>(json) {
                Ok(parsed) => {
                    check_json(&header.name, &parsed)?;
                    from_json(&parsed)
                }
                Err(e) if e.to_string().contains("recursion limit") => return Err(too_deep(&header.name)),
                // JSON that does not parse is kept as the text the plugin gave.
                Err(_) => AMQPValue::LongString(LongString::from(json.as_str())),
            },
            other => from_plugin_value(other),
        };
        table.insert(header.name.as_str().into(), value);
    }
    Ok(table)
}

/// How deeply a header's tables and arrays may nest, either way: a deeper one is refused in
/// words (a plugin's send fails, an incoming header reaches the plugin as text saying so)
/// rather than risking the host's stack.
pub const MAX_NESTING: usize = 16;
/// AMQP's limit on a header name or table key (a short string).
pub const MAX_NAME_BYTES: usize = 255;

fn too_deep(name: &str) -> String {
    format!("header '{name}' nests tables and arrays deeper than {MAX_NESTING} levels")
}

/// A plugin's JSON table or array: nested at most [`MAX_NESTING`] deep, keys short strings.
/// Walked with a stack of its own, never by recursion.
fn check_json(name: &str, value: &Json) -> Result<(), String> {
    let mut pending = vec![(value, 1usize)];
    while let Some((value, depth)) = pending.pop() {
        let children: Vec<&Json> = match value {
            Json::Array(items) => items.iter().collect(),
            Json::Object(map) => {
                if let Some(key) = map.keys().find(|k| k.len() > MAX_NAME_BYTES) {
                    return Err(format!(
                        "header '{name}' has a table key of {} bytes, over AMQP's {MAX_NAME_BYTES}",
                        key.len()
                    ));
                }
                map.values().collect()
            }
            _ => continue,
        };
        if depth > MAX_NESTING {
            return Err(too_deep(name));
        }
        pending.extend(children.into_iter().map(|child| (child, depth + 1)));
    }
    Ok(())
}

/// Whether an AMQP value's tables and arrays nest deeper than [`MAX_NESTING`] (walked with a
/// stack of its own).
fn nests_too_deep(value: &AMQPValue) -> bool {
    let mut pending = vec![(value, 1usize)];
    while let Some((value, depth)) = pending.pop() {
        let children: Vec<&AMQPValue> = match value {
            AMQPValue::FieldArray(items) => items.as_slice().iter().collect(),
            AMQPValue::FieldTable(table) => table.inner().values().collect(),
            _ => continue,
        };
        if depth > MAX_NESTING {
            return true;
        }
        pending.extend(children.into_iter().map(|child| (child, depth + 1)));
    }
    false
}

/// The size of `table` as AMQP encodes it on the wire (a content-header frame must hold it).
pub fn encoded_len(table: &FieldTable) -> usize {
    4 + table.inner().iter().map(|(name, value)| 1 + name.as_str().len() + value_len(value)).sum::<usize>()
}

/// One field value's encoded size: its type tag and payload.
fn value_len(value: &AMQPValue) -> usize {
    1 + match value {
        AMQPValue::Boolean(_) | AMQPValue::ShortShortInt(_) | AMQPValue::ShortShortUInt(_) => 1,
        AMQPValue::ShortInt(_) | AMQPValue::ShortUInt(_) => 2,
        AMQPValue::LongInt(_) | AMQPValue::LongUInt(_) | AMQPValue::Float(_) => 4,
        AMQPValue::LongLongInt(_) | AMQPValue::Double(_) | AMQPValue::Timestamp(_) => 8,
        AMQPValue::DecimalValue(_) => 5,
        AMQPValue::ShortString(s) => 1 + s.as_str().len(),
        AMQPValue::LongString(s) => 4 + s.as_bytes().len(),
        AMQPValue::ByteArray(b) => 4 + b.as_slice().len(),
        AMQPValue::FieldArray(a) => 4 + a.as_slice().iter().map(value_len).sum::<usize>(),
        AMQPValue::FieldTable(t) => encoded_len(t),
        AMQPValue::Void => 0,
    }
}

fn to_plugin_value(value: &AMQPValue) -> HeaderValue {
    match value {
        AMQPValue::Boolean(b) => HeaderValue::Boolean(*b),
        AMQPValue::ShortShortInt(i) => HeaderValue::Integer(i64::from(*i)),
        AMQPValue::ShortShortUInt(i) => HeaderValue::Integer(i64::from(*i)),
        AMQPValue::ShortInt(i) => HeaderValue::Integer(i64::from(*i)),
        AMQPValue::ShortUInt(i) => HeaderValue::Integer(i64::from(*i)),
        AMQPValue::LongInt(i) => HeaderValue::Integer(i64::from(*i)),
        AMQPValue::LongUInt(i) => HeaderValue::Integer(i64::from(*i)),
        AMQPValue::LongLongInt(i) => HeaderValue::Integer(*i),
        AMQPValue::Float(f) => HeaderValue::Float(f64::from(*f)),
        AMQPValue::Double(f) => HeaderValue::Float(*f),
        AMQPValue::DecimalValue(d) => HeaderValue::Text(decimal_text(d.value, d.scale)),
        AMQPValue::ShortString(s) => HeaderValue::Text(s.to_string()),
        AMQPValue::LongString(s) => match std::str::from_utf8(s.as_bytes()) {
            Ok(text) => HeaderValue::Text(text.to_string()),
            Err(_) => HeaderValue::Bytes(s.as_bytes().to_vec()),
        },
        AMQPValue::ByteArray(b) => HeaderValue::Bytes(b.as_slice().to_vec()),
        AMQPValue::Timestamp(t) => HeaderValue::Timestamp(*t),
        AMQPValue::Void => HeaderValue::Void,
        AMQPValue::FieldTable(_) => HeaderValue::Table(to_json(value).to_string()),
        AMQPValue::FieldArray(_) => HeaderValue::Array(to_json(value).to_string()),
    }
}

fn decimal_text(value: u32, scale: u8) -> String {
    let digits = value.to_string();
    let scale = usize::from(scale);
    if scale == 0 {
        return digits;
    }
    let padded = format!("{digits:0>width$}", width = scale + 1);
    let (whole, fraction) = padded.split_at(padded.len() - scale);
    format!("{whole}.{fraction}")
}

/// A nested AMQP value as JSON (tables → objects, arrays → arrays, bytes → arrays of numbers).
fn to_json(value: &AMQPValue) -> Json {
    match value {
        AMQPValue::FieldTable(t) => Json::Object(t.inner().iter().map(|(k, v)| (k.to_string(), to_json(v))).collect()),
        AMQPValue::FieldArray(a) => Json::Array(a.as_slice().iter().map(to_json).collect()),
        AMQPValue::ByteArray(b) => Json::Array(b.as_slice().iter().map(|&x| Json::from(x)).collect()),
        other => match to_plugin_value(other) {
            HeaderValue::Text(s) => Json::String(s),
            HeaderValue::Integer(i) => Json::from(i),
            HeaderValue::Float(f) => serde_json::Number::from_f64(f).map_or(Json::Null, Json::Number),
            HeaderValue::Boolean(b) => Json::Bool(b),
            HeaderValue::Bytes(b) => Json::Array(b.into_iter().map(Json::from).collect()),
            HeaderValue::Timestamp(t) => Json::from(t),
            HeaderValue::Void | HeaderValue::Table(_) | HeaderValue::Array(_) => Json::Null,
        },
    }
}

fn from_json(value: &Json) -> AMQPValue {
    match value {
        Json::Null => AMQPValue::Void,
        Json::Bool(b) => AMQPValue::Boolean(*b),
        Json::Number(n) => match n.as_i64() {
            Some(i) => AMQPValue::LongLongInt(i),
            None => AMQPValue::Double(n.as_f64().unwrap_or(f64::NAN)),
        },
        Json::String(s) => AMQPValue::LongString(LongString::from(s.as_str())),
        Json::Array(items) => AMQPValue::FieldArray(FieldArray::from(items.iter().map(from_json).collect::<Vec<_>>())),
        Json::Object(map) => {
            let mut table = FieldTable::default();
            for (k, v) in map {
                table.insert(ShortString::from(k.as_str()), from_json(v));
            }
            AMQPValue::FieldTable(table)
        }
    }
}

/// The AMQP value a plugin's header value is published as.
pub fn from_plugin_value(value: &HeaderValue) -> AMQPValue {
    match value {
        HeaderValue::Text(s) => AMQPValue::LongString(LongString::from(s.as_str())),
        HeaderValue::Integer(i) => AMQPValue::LongLongInt(*i),
        HeaderValue::Float(f) => AMQPValue::Double(*f),
        HeaderValue::Boolean(b) => AMQPValue::Boolean(*b),
        HeaderValue::Bytes(b) => AMQPValue::ByteArray(b.clone().into()),
        HeaderValue::Timestamp(t) => AMQPValue::Timestamp(*t),
        HeaderValue::Void => AMQPValue::Void,
        // JSON that does not parse is kept as the text the plugin gave.
        HeaderValue::Table(json) | HeaderValue::Array(json) => match serde_json::from_str::<Json>(json) {
            Ok(parsed) => from_json(&parsed),
            Err(_) => AMQPValue::LongString(LongString::from(json.as_str())),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(entries: &[(&str, AMQPValue)]) -> FieldTable {
        let mut t = FieldTable::default();
        for (k, v) in entries {
            t.insert(ShortString::from(*k), v.clone());
        }
        t
    }

    fn value<'a>(headers: &'a [Header], name: &str) -> &'a HeaderValue {
        &headers.iter().find(|h| h.name == name).unwrap().value
    }

    #[test]
    fn only_w3c_traceparents_are_carried() {
        let good = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(valid_traceparent(good.into()).as_deref(), Some(good));
        let later = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra";
        assert_eq!(valid_traceparent(later.into()).as_deref(), Some(&later[..55]));
        for bad in [
            "",
            "garbage",
            &format!("{good}-more"),                                   // version 00 is exactly 55
            &good.to_uppercase(),                                      // lowercase only
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", // forbidden version
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01", // zero trace id
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01", // zero span id
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0\n",
            &"x".repeat(100_000),
        ] {
            assert_eq!(valid_traceparent(bad.to_string()), None, "{bad:.60}");
        }
    }

    #[test]
    fn escaped_text_cannot_forge_a_log_line() {
        let forged = "id-1\n2026-12-06T00:00:00Z  INFO forged line\r\u{2028}ok é";
        let shown = Escaped(forged).to_string();
        assert!(!shown.contains('\n') && !shown.contains('\r') && !shown.contains('\u{2028}'));
        assert_eq!(shown, "id-1\\n2026-12-06T00:00:00Z  INFO forged line\\r\\u{2028}ok é");
    }

    #[test]
    fn handlers_see_routing_key_added_like_goamqp() {
        let t = table(&[("routing-key", AMQPValue::LongString("spoofed".into()))]);
        let headers = to_plugin(Some(&t), "order.created");
        assert_eq!(headers.len(), 1);
        assert_eq!(value(&headers, "routing-key"), &HeaderValue::Text("order.created".into()));
    }

    #[test]
    fn every_amqp_type_keeps_its_kind() {
        let nested = table(&[("a", AMQPValue::LongInt(1)), ("b", AMQPValue::LongString("x".into()))]);
        let t = table(&[
            ("s", AMQPValue::LongString("text".into())),
            ("i", AMQPValue::ShortInt(-3)),
            ("u", AMQPValue::LongUInt(7)),
            ("f", AMQPValue::Double(1.5)),
            ("b", AMQPValue::Boolean(true)),
            ("bytes", AMQPValue::ByteArray(vec![0u8, 255].into())),
            ("ts", AMQPValue::Timestamp(1_700_000_000)),
            ("v", AMQPValue::Void),
            ("d", AMQPValue::DecimalValue(lapin::types::DecimalValue { scale: 2, value: 1234 })),
            ("t", AMQPValue::FieldTable(nested)),
            ("arr", AMQPValue::FieldArray(vec![AMQPValue::Boolean(false), AMQPValue::LongLongInt(9)].into())),
        ]);
        let h = to_plugin(Some(&t), "k");
        assert_eq!(value(&h, "s"), &HeaderValue::Text("text".into()));
        assert_eq!(value(&h, "i"), &HeaderValue::Integer(-3));
        assert_eq!(value(&h, "u"), &HeaderValue::Integer(7));
        assert_eq!(value(&h, "f"), &HeaderValue::Float(1.5));
        assert_eq!(value(&h, "b"), &HeaderValue::Boolean(true));
        assert_eq!(value(&h, "bytes"), &HeaderValue::Bytes(vec![0, 255]));
        assert_eq!(value(&h, "ts"), &HeaderValue::Timestamp(1_700_000_000));
        assert_eq!(value(&h, "v"), &HeaderValue::Void);
        assert_eq!(value(&h, "d"), &HeaderValue::Text("12.34".into()));
        assert_eq!(value(&h, "t"), &HeaderValue::Table(r#"{"a":1,"b":"x"}"#.into()));
        assert_eq!(value(&h, "arr"), &HeaderValue::Array("[false,9]".into()));
    }

    #[test]
    fn plugin_values_publish_as_their_amqp_kinds() {
        assert_eq!(from_plugin_value(&HeaderValue::Integer(5)), AMQPValue::LongLongInt(5));
        assert_eq!(from_plugin_value(&HeaderValue::Bytes(vec![1])), AMQPValue::ByteArray(vec![1u8].into()));
        let AMQPValue::FieldTable(t) = from_plugin_value(&HeaderValue::Table(r#"{"a":[1,"x"]}"#.into())) else {
            panic!("a table")
        };
        assert_eq!(
            t.inner()["a"],
            AMQPValue::FieldArray(vec![AMQPValue::LongLongInt(1), AMQPValue::LongString("x".into())].into())
        );
        assert_eq!(from_plugin_value(&HeaderValue::Table("not json".into())), AMQPValue::LongString("not json".into()));
    }

    #[test]
    fn decimals_print_with_their_scale() {
        assert_eq!(decimal_text(5, 3), "0.005");
        assert_eq!(decimal_text(120, 0), "120");
    }

    #[test]
    fn text_reads_string_headers_only() {
        let t = table(&[("service", AMQPValue::LongString("orders".into())), ("n", AMQPValue::LongInt(1))]);
        assert_eq!(text(Some(&t), "service").as_deref(), Some("orders"));
        assert_eq!(text(Some(&t), "n"), None);
        assert_eq!(text(None, "service"), None);
    }

    #[test]
    fn plugins_cannot_set_routing_headers() {
        let header = |name: &str| Header { name: name.into(), value: HeaderValue::Array(r#"["victim-q"]"#.into()) };
        for name in ["CC", "BCC", "cc"] {
            let refused = from_plugin(&[header(name)]).unwrap_err();
            assert!(refused.contains("reserved"), "{refused}");
        }
        let service = Header { name: "service".into(), value: HeaderValue::Text("spoofed".into()) };
        let kept = Header { name: "x-tenant".into(), value: HeaderValue::Integer(7) };
        let table = from_plugin(&[service, kept]).unwrap();
        assert_eq!(table.inner().len(), 1);
        assert_eq!(table.inner()["x-tenant"], AMQPValue::LongLongInt(7));
    }

    #[test]
    fn encoded_length_counts_what_goes_on_the_wire() {
        assert_eq!(encoded_len(&FieldTable::default()), 4);
        // name "s" (1 + 1) + tag (1) + long string (4 + 3)
        assert_eq!(encoded_len(&table(&[("s", AMQPValue::LongString("abc".into()))])), 4 + 2 + 1 + 7);
        let nested = table(&[("t", AMQPValue::FieldTable(table(&[("i", AMQPValue::LongInt(1))])))]);
        assert_eq!(encoded_len(&nested), 4 + 2 + 1 + (4 + 2 + 1 + 4));
    }
}
