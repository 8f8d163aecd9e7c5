//! Property tests for the header conversion (SPEC §2, `amqp::headers`): AMQP → plugin → AMQP
//! and plugin → AMQP → plugin keep every value, or turn it into the documented equivalent;
//! nested tables and arrays survive their trip through JSON text; a plugin cannot make the
//! host panic with a header; nesting past a cap is a clear error, never a stack overflow.
//!
//! The documented equivalences, AMQP → plugin → AMQP:
//! - every integer type comes back as a signed 64-bit `l` (`LongLongInt`), same value;
//! - `f` (`Float`) comes back as `d` (`Double`), same value;
//! - a decimal comes back as its text (`12.34`), a short string as a long string;
//! - a long string that is not UTF-8 comes back as a byte array (its bytes).
//!
//! Inside a table or an array (carried as JSON text) also:
//! - bytes (a byte array, or a long string that is not UTF-8) come back as an array of
//!   integers; a timestamp as an integer (a double past `i64::MAX`);
//! - a non-finite float (NaN, ±∞: JSON has none) comes back as void.

use std::collections::BTreeMap;

use lapin::types::{AMQPValue, DecimalValue, FieldArray, FieldTable, LongString, ShortString};
use proptest::prelude::*;
use serde_json::Value as Json;
use warren::amqp::headers::{from_plugin, from_plugin_value, to_plugin};
use warren::wasm::{Header, HeaderValue};

/// The nesting depth a header value may have: tables and arrays inside tables and arrays.
/// The cap this file asks of `headers.rs` (see [`nesting_past_the_cap_is_a_clear_error`]).
const DEPTH_CAP: usize = 16;

// ---------------------------------------------------------------------------------------
// Generators
// ---------------------------------------------------------------------------------------

/// Any AMQP field name: up to 255 bytes of UTF-8 (`ShortString`'s limit).
fn short_string() -> impl Strategy<Value = String> {
    ".{0,40}".prop_map(|s: String| {
        s.chars()
            .scan(0, |len, c| {
                *len += c.len_utf8();
                (*len <= 255).then_some(c)
            })
            .collect()
    })
}

/// Any AMQP value without nesting.
fn amqp_scalar() -> impl Strategy<Value = AMQPValue> {
    prop_oneof![
        any::<bool>().prop_map(AMQPValue::Boolean),
        any::<i8>().prop_map(AMQPValue::ShortShortInt),
        any::<u8>().prop_map(AMQPValue::ShortShortUInt),
        any::<i16>().prop_map(AMQPValue::ShortInt),
        any::<u16>().prop_map(AMQPValue::ShortUInt),
        any::<i32>().prop_map(AMQPValue::LongInt),
        any::<u32>().prop_map(AMQPValue::LongUInt),
        any::<i64>().prop_map(AMQPValue::LongLongInt),
        any::<f32>().prop_map(AMQPValue::Float),
        any::<f64>().prop_map(AMQPValue::Double),
        (any::<u8>(), any::<u32>()).prop_map(|(scale, value)| AMQPValue::DecimalValue(DecimalValue { scale, value })),
        short_string().prop_map(|s| AMQPValue::ShortString(ShortString::from(s))),
        ".{0,40}".prop_map(|s: String| AMQPValue::LongString(LongString::from(s))),
        // Long strings are bytes on the wire: not every one is UTF-8.
        proptest::collection::vec(any::<u8>(), 0..40).prop_map(|b| AMQPValue::LongString(LongString::from(b))),
        proptest::collection::vec(any::<u8>(), 0..40).prop_map(|b| AMQPValue::ByteArray(b.into())),
        any::<u64>().prop_map(AMQPValue::Timestamp),
        Just(AMQPValue::Void),
    ]
}

/// Any AMQP value, tables and arrays nested up to four levels.
fn amqp_value() -> impl Strategy<Value = AMQPValue> {
    amqp_scalar().prop_recursive(4, 64, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(|items| AMQPValue::FieldArray(items.into())),
            proptest::collection::btree_map(short_string(), inner, 0..6).prop_map(|entries| {
                let table: BTreeMap<ShortString, AMQPValue> =
                    entries.into_iter().map(|(k, v)| (ShortString::from(k), v)).collect();
                AMQPValue::FieldTable(table.into())
            }),
        ]
    })
}

/// Any JSON value a plugin may put in a `table` or `array` header (numbers within `i64` or
/// finite `f64`: what AMQP can carry back).
fn json_value() -> impl Strategy<Value = Json> {
    let leaf = prop_oneof![
        Just(Json::Null),
        any::<bool>().prop_map(Json::Bool),
        any::<i64>().prop_map(Json::from),
        any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(Json::from),
        ".{0,30}".prop_map(Json::String),
    ];
    leaf.prop_recursive(4, 64, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Json::Array),
            proptest::collection::btree_map(short_string(), inner, 0..6)
                .prop_map(|m| Json::Object(m.into_iter().collect())),
        ]
    })
}

/// Any plugin header value without nesting.
fn plugin_scalar() -> impl Strategy<Value = HeaderValue> {
    prop_oneof![
        ".{0,40}".prop_map(HeaderValue::Text),
        any::<i64>().prop_map(HeaderValue::Integer),
        any::<f64>().prop_map(HeaderValue::Float),
        any::<bool>().prop_map(HeaderValue::Boolean),
        proptest::collection::vec(any::<u8>(), 0..40).prop_map(HeaderValue::Bytes),
        any::<u64>().prop_map(HeaderValue::Timestamp),
        Just(HeaderValue::Void),
    ]
}

// ---------------------------------------------------------------------------------------
// The documented equivalences, spelled independently of headers.rs
// ---------------------------------------------------------------------------------------

fn decimal_text(d: &DecimalValue) -> String {
    let digits = d.value.to_string();
    let scale = usize::from(d.scale);
    if scale == 0 {
        return digits;
    }
    let padded = format!("{digits:0>width$}", width = scale + 1);
    let (whole, fraction) = padded.split_at(padded.len() - scale);
    format!("{whole}.{fraction}")
}

fn integers(bytes: &[u8]) -> AMQPValue {
    AMQPValue::FieldArray(bytes.iter().map(|&b| AMQPValue::LongLongInt(i64::from(b))).collect::<Vec<_>>().into())
}

/// What `value` comes back as after AMQP → plugin → AMQP; `nested`: inside a table or array.
fn equivalent(value: &AMQPValue, nested: bool) -> AMQPValue {
    let float = |f: f64| if nested && !f.is_finite() { AMQPValue::Void } else { AMQPValue::Double(f) };
    match value {
        AMQPValue::Boolean(b) => AMQPValue::Boolean(*b),
        AMQPValue::ShortShortInt(i) => AMQPValue::LongLongInt(i64::from(*i)),
        AMQPValue::ShortShortUInt(i) => AMQPValue::LongLongInt(i64::from(*i)),
        AMQPValue::ShortInt(i) => AMQPValue::LongLongInt(i64::from(*i)),
        AMQPValue::ShortUInt(i) => AMQPValue::LongLongInt(i64::from(*i)),
        AMQPValue::LongInt(i) => AMQPValue::LongLongInt(i64::from(*i)),
        AMQPValue::LongUInt(i) => AMQPValue::LongLongInt(i64::from(*i)),
        AMQPValue::LongLongInt(i) => AMQPValue::LongLongInt(*i),
        AMQPValue::Float(f) => float(f64::from(*f)),
        AMQPValue::Double(f) => float(*f),
        AMQPValue::DecimalValue(d) => AMQPValue::LongString(decimal_text(d).into()),
        AMQPValue::ShortString(s) => AMQPValue::LongString(s.as_str().into()),
        AMQPValue::LongString(s) => match (std::str::from_utf8(s.as_bytes()), nested) {
            (Ok(text), _) => AMQPValue::LongString(text.into()),
            (Err(_), false) => AMQPValue::ByteArray(s.as_bytes().to_vec().into()),
            (Err(_), true) => integers(s.as_bytes()),
        },
        AMQPValue::ByteArray(b) if nested => integers(b.as_slice()),
        AMQPValue::ByteArray(b) => AMQPValue::ByteArray(b.clone()),
        AMQPValue::Timestamp(t) if nested => match i64::try_from(*t) {
            Ok(i) => AMQPValue::LongLongInt(i),
            Err(_) => AMQPValue::Double(*t as f64),
        },
        AMQPValue::Timestamp(t) => AMQPValue::Timestamp(*t),
        AMQPValue::Void => AMQPValue::Void,
        AMQPValue::FieldArray(a) => {
            AMQPValue::FieldArray(a.as_slice().iter().map(|v| equivalent(v, true)).collect::<Vec<_>>().into())
        }
        AMQPValue::FieldTable(t) => {
            let mut table = FieldTable::default();
            for (k, v) in t.inner() {
                table.insert(k.clone(), equivalent(v, true));
            }
            AMQPValue::FieldTable(table)
        }
    }
}

/// Equality where a float equals itself bit for bit (NaN included).
fn same(a: &AMQPValue, b: &AMQPValue) -> bool {
    match (a, b) {
        (AMQPValue::Double(x), AMQPValue::Double(y)) => x.to_bits() == y.to_bits() || (x.is_nan() && y.is_nan()),
        (AMQPValue::FieldArray(x), AMQPValue::FieldArray(y)) => {
            x.as_slice().len() == y.as_slice().len() && x.as_slice().iter().zip(y.as_slice()).all(|(x, y)| same(x, y))
        }
        (AMQPValue::FieldTable(x), AMQPValue::FieldTable(y)) => {
            x.inner().len() == y.inner().len()
                && x.inner().iter().zip(y.inner()).all(|((kx, vx), (ky, vy))| kx == ky && same(vx, vy))
        }
        _ => a == b,
    }
}

fn same_plugin(a: &HeaderValue, b: &HeaderValue) -> bool {
    match (a, b) {
        (HeaderValue::Float(x), HeaderValue::Float(y)) => x.to_bits() == y.to_bits() || (x.is_nan() && y.is_nan()),
        _ => a == b,
    }
}

/// The plugin's view of one AMQP header value.
fn to_plugin_value(value: &AMQPValue) -> HeaderValue {
    let mut table = FieldTable::default();
    table.insert("h".into(), value.clone());
    let headers = to_plugin(Some(&table), "k");
    headers.into_iter().find(|h| h.name == "h").expect("the header reaches the plugin").value
}

// ---------------------------------------------------------------------------------------
// Properties
// ---------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]

    /// Every AMQP value, nested or not, comes back equal or as its documented equivalent.
    #[test]
    fn amqp_values_round_trip_through_the_plugin_view(value in amqp_value()) {
        let seen = to_plugin_value(&value);
        let back = from_plugin_value(&seen);
        let expected = equivalent(&value, false);
        prop_assert!(same(&back, &expected), "{value:?}\n→ plugin {seen:?}\n→ AMQP {back:?}\nexpected {expected:?}");
    }

    /// The plugin sees a nested value's kind: a table as `table`, an array as `array`, and
    /// the text is JSON.
    #[test]
    fn nested_values_reach_the_plugin_as_json_of_their_kind(value in amqp_value()) {
        match (&value, to_plugin_value(&value)) {
            (AMQPValue::FieldTable(_), HeaderValue::Table(json)) => {
                prop_assert!(serde_json::from_str::<Json>(&json).is_ok_and(|j| j.is_object()), "{json}");
            }
            (AMQPValue::FieldArray(_), HeaderValue::Array(json)) => {
                prop_assert!(serde_json::from_str::<Json>(&json).is_ok_and(|j| j.is_array()), "{json}");
            }
            (AMQPValue::FieldTable(_) | AMQPValue::FieldArray(_), other) => {
                prop_assert!(false, "{value:?} reached the plugin as {other:?}");
            }
            _ => {}
        }
    }

    /// Every plugin scalar is published as an AMQP value that a plugin sees again unchanged.
    #[test]
    fn plugin_scalars_round_trip_through_amqp(value in plugin_scalar()) {
        let published = from_plugin_value(&value);
        let seen = to_plugin_value(&published);
        prop_assert!(same_plugin(&seen, &value), "{value:?} → {published:?} → {seen:?}");
    }

    /// A table or array a plugin sets comes back as the same JSON (as a value: spacing and
    /// key order are JSON's business).
    #[test]
    fn plugin_json_round_trips_through_amqp_tables_and_arrays(json in json_value()) {
        let value = match &json {
            Json::Object(_) => HeaderValue::Table(json.to_string()),
            Json::Array(_) => HeaderValue::Array(json.to_string()),
            _ => return Ok(()),
        };
        let seen = to_plugin_value(&from_plugin_value(&value));
        let text = match (&value, &seen) {
            (HeaderValue::Table(_), HeaderValue::Table(text)) | (HeaderValue::Array(_), HeaderValue::Array(text)) => text,
            _ => { prop_assert!(false, "{value:?} came back as {seen:?}"); unreachable!() }
        };
        let back: Json = serde_json::from_str(text).unwrap();
        prop_assert_eq!(back, json);
    }

    /// A plugin's JSON that does not parse is published as the text it gave.
    #[test]
    fn unparseable_plugin_json_is_kept_as_text(text in "[^\\[{]{0,1}[a-z ]{0,20}") {
        prop_assume!(serde_json::from_str::<Json>(&text).is_err());
        prop_assert_eq!(from_plugin_value(&HeaderValue::Table(text.clone())), AMQPValue::LongString(text.as_str().into()));
    }

    /// Whatever headers a plugin sets, the host gets a table or a reason, never a panic — and
    /// which one is decided by the names: the first name past AMQP's 255 bytes (many of these
    /// are: up to 300 characters of any script) refuses the whole table, naming its size and
    /// the limit; otherwise every header is in the table (`service` aside: the host sets it),
    /// the last of a repeated name winning, with the value its JSON converts to. Fails if a
    /// long name were cut, dropped or passed on (RabbitMQ would refuse the frame), or a short
    /// one refused.
    #[test]
    fn plugin_headers_never_panic_the_host(
        headers in proptest::collection::vec((".{0,300}", json_value()), 0..4)
    ) {
        let headers: Vec<Header> = headers
            .into_iter()
            .map(|(name, json)| Header { name, value: HeaderValue::Table(json.to_string()) })
            .collect();
        prop_assume!(!headers.iter().any(|h| h.name.eq_ignore_ascii_case("CC") || h.name.eq_ignore_ascii_case("BCC")));
        let result = from_plugin(&headers);
        match headers.iter().find(|h| h.name.len() > 255) {
            Some(long) => {
                let error = result.expect_err("a header name past 255 bytes is refused");
                prop_assert!(
                    error.contains(&format!("is {} bytes, over AMQP's 255", long.name.len())),
                    "{} bytes: {error}",
                    long.name.len()
                );
            }
            None => {
                let table = result.map_err(|e| TestCaseError::fail(format!("refused: {e}")))?;
                let mut expected = BTreeMap::new();
                for header in headers.iter().filter(|h| h.name != "service") {
                    expected.insert(header.name.clone(), from_plugin_value(&header.value));
                }
                let got: BTreeMap<String, AMQPValue> =
                    table.inner().iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
                prop_assert_eq!(got.keys().collect::<Vec<_>>(), expected.keys().collect::<Vec<_>>());
                for (name, value) in &expected {
                    prop_assert!(same(&got[name], value), "{name}: {:?} against {value:?}", got[name]);
                }
            }
        }
    }
}

/// A plugin header name past AMQP's 255 bytes is refused with a reason (today:
/// `ShortString::from` panics inside `from_plugin` — in `from_json` for a key inside a table too).
#[test]
fn names_past_255_bytes_are_refused_not_a_panic() {
    let long = "n".repeat(256);
    let named = from_plugin(&[Header { name: long.clone(), value: HeaderValue::Integer(1) }]);
    assert!(named.is_err_and(|e| e.contains("255")), "a 256-byte header name");
    let keyed = from_plugin(&[Header { name: "t".into(), value: HeaderValue::Table(format!("{{\"{long}\":1}}")) }]);
    assert!(keyed.is_err_and(|e| e.contains("255")), "a 256-byte key inside a table");
}

// ---------------------------------------------------------------------------------------
// Nesting depth
// ---------------------------------------------------------------------------------------

/// An AMQP value with `depth` levels of arrays and tables around an integer.
fn deep_amqp(depth: usize) -> AMQPValue {
    let mut value = AMQPValue::LongLongInt(1);
    for level in 0..depth {
        value = if level % 2 == 0 {
            AMQPValue::FieldArray(FieldArray::from(vec![value]))
        } else {
            let mut table = FieldTable::default();
            table.insert("n".into(), value);
            AMQPValue::FieldTable(table)
        };
    }
    value
}

/// JSON text with `depth` levels of arrays and objects around an integer.
fn deep_json(depth: usize) -> String {
    let (mut open, mut close) = (String::new(), String::new());
    for level in 0..depth {
        if level % 2 == 0 {
            open.insert(0, '[');
            close.push(']');
        } else {
            open.insert_str(0, "{\"n\":");
            close.push('}');
        }
    }
    format!("{open}1{close}")
}

/// Adapts the result of a conversion, whether it can fail (the cap's API) or not (today's):
/// did it refuse the value, saying that it nests too deep?
trait RefusedForDepth {
    fn refused_for_depth(&self) -> bool;
}

impl RefusedForDepth for Vec<Header> {
    /// Infallible: a too-deep header that reaches the plugin as text saying so counts.
    fn refused_for_depth(&self) -> bool {
        self.iter().any(|h| matches!(&h.value, HeaderValue::Text(t) if says_too_deep(t)))
    }
}

impl<T, E: std::fmt::Display> RefusedForDepth for Result<T, E> {
    fn refused_for_depth(&self) -> bool {
        matches!(self, Err(e) if says_too_deep(&e.to_string()))
    }
}

fn says_too_deep(text: &str) -> bool {
    let text = text.to_lowercase();
    (text.contains("deep") || text.contains("nest")) && text.contains(&DEPTH_CAP.to_string())
}

/// Runs `work` on a thread with a 2 MiB stack (a tokio worker's): a stack overflow aborts
/// the whole process, so the deep cases run in a child process (this test binary, filtered
/// to one test) and the parent checks how it ended.
fn in_child(test: &str, work: impl FnOnce() + Send + 'static) {
    if std::env::var_os("WARREN_DEPTH_CHILD").is_some() {
        std::thread::Builder::new().stack_size(2 << 20).spawn(work).unwrap().join().unwrap();
        return;
    }
    let output = std::process::Command::new(std::env::current_exe().unwrap())
        .args([test, "--exact", "--nocapture", "--include-ignored", "--test-threads=1"])
        .env("WARREN_DEPTH_CHILD", "1")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "{test} failed in its child process ({}):\n{stderr}",
        if stderr.contains("overflow") { "a stack overflow" } else { "see below" },
    );
}

/// Within the cap, nesting converts both ways.
#[test]
fn nesting_within_the_cap_converts_both_ways() {
    let value = deep_amqp(DEPTH_CAP);
    assert!(same(&from_plugin_value(&to_plugin_value(&value)), &equivalent(&value, false)));
    let json = deep_json(DEPTH_CAP);
    let published = from_plugin(&[Header { name: "deep".into(), value: HeaderValue::Array(json) }]);
    assert!(published.is_ok(), "{published:?}");
}

/// Past the cap, both directions refuse the header in words (naming the cap), whether the
/// nesting is one level too deep or far deeper — never a stack overflow. (Today `to_plugin`
/// overflows a 2 MiB stack at about 5,000 levels. lapin's own frame parser overflows its
/// `lapin-io-loop` thread at about 110 levels, which no cap here can prevent: see the report.)
#[test]
fn nesting_past_the_cap_is_a_clear_error() {
    in_child("nesting_past_the_cap_is_a_clear_error", || {
        for depth in [DEPTH_CAP + 1, 5_000] {
            let deep = deep_amqp(depth);
            let mut table = FieldTable::default();
            table.insert("deep".into(), deep);
            assert!(to_plugin(Some(&table), "k").refused_for_depth(), "AMQP → plugin, {depth} levels");
            // Dropping a deep value recurses too: leak it (the child process ends anyway).
            std::mem::forget(table);

            let json = deep_json(depth);
            let published = from_plugin(&[Header { name: "deep".into(), value: HeaderValue::Array(json) }]);
            assert!(published.refused_for_depth(), "plugin → AMQP, {depth} levels: {:?}", published.err());
        }
    });
}
