//! W3C trace context: the `traceparent` a message or request carries, parsed, checked and
//! written. The one place its format is spelled.

/// A span's place in a trace: trace id, span id and whether the trace is sampled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpanContext {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub sampled: bool,
}

impl SpanContext {
    /// `traceparent` in W3C's form (`00-<32 hex>-<16 hex>-<2 hex>`, lowercase, ids not all
    /// zero); a later version is read by its first 55 characters, as W3C asks. Anything else
    /// is `None`: a publisher's header of any length never becomes a parent.
    pub fn parse(traceparent: &str) -> Option<SpanContext> {
        let head = traceparent.get(..55)?;
        let parts: Vec<&str> = head.split('-').collect();
        let [version, trace, span, flags] = parts.as_slice() else { return None };
        let later_version_ok =
            traceparent.len() == 55 || (*version != "00" && traceparent.as_bytes().get(55) == Some(&b'-'));
        if *version == "ff" || !later_version_ok || !lower_hex(version, 2) || !lower_hex(flags, 2) {
            return None;
        }
        let trace_id: [u8; 16] = decode(trace)?;
        let span_id: [u8; 8] = decode(span)?;
        let flags: [u8; 1] = decode(flags)?;
        let zero = |bytes: &[u8]| bytes.iter().all(|b| *b == 0);
        (!zero(&trace_id) && !zero(&span_id)).then_some(SpanContext { trace_id, span_id, sampled: flags[0] & 1 == 1 })
    }

    /// A new trace's first span.
    pub fn new_root(sampled: bool) -> SpanContext {
        let trace = uuid::Uuid::new_v4();
        SpanContext { trace_id: *trace.as_bytes(), span_id: new_span_id(), sampled }
    }

    /// A new span in this span's trace (its child).
    pub fn child(&self) -> SpanContext {
        SpanContext { span_id: new_span_id(), ..*self }
    }

    /// The W3C `traceparent` of this span (version 00).
    pub fn traceparent(&self) -> String {
        let mut text = String::with_capacity(55);
        text.push_str("00-");
        push_hex(&mut text, &self.trace_id);
        text.push('-');
        push_hex(&mut text, &self.span_id);
        text.push_str(if self.sampled { "-01" } else { "-00" });
        text
    }
}

/// A new W3C `traceparent` (a new trace, sampled), for a message that came without one.
pub fn new_traceparent() -> String {
    SpanContext::new_root(true).traceparent()
}

fn new_span_id() -> [u8; 8] {
    let random = uuid::Uuid::new_v4();
    let mut id = [0u8; 8];
    id.copy_from_slice(&random.as_bytes()[..8]);
    if id == [0; 8] {
        id[7] = 1;
    }
    id
}

fn lower_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn decode<const N: usize>(s: &str) -> Option<[u8; N]> {
    if !lower_hex(s, 2 * N) {
        return None;
    }
    let mut out = [0u8; N];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// Appends the lowercase hex of `bytes` to `text` (one allocation per `traceparent`, not one
/// per byte: it is written for every span and send).
fn push_hex(text: &mut String, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for byte in bytes {
        text.push(char::from(DIGITS[usize::from(byte >> 4)]));
        text.push(char::from(DIGITS[usize::from(byte & 0x0f)]));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_traceparent_round_trips_and_children_keep_the_trace() {
        let text = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let parsed = SpanContext::parse(text).unwrap();
        assert_eq!(parsed.traceparent(), text);
        assert!(parsed.sampled);
        let child = parsed.child();
        assert_eq!(child.trace_id, parsed.trace_id);
        assert_ne!(child.span_id, parsed.span_id);
        let unsampled = SpanContext::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00").unwrap();
        assert!(!unsampled.sampled);
        assert!(SpanContext::parse(&new_traceparent()).is_some());
    }
}
