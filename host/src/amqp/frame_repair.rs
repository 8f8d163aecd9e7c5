//! Makes every frame the broker sends parseable by lapin, whatever a publisher put in it.
//!
//! AMQP 0-9-1 short strings (table keys, `message_id`, `correlation_id`, `type`, the routing
//! key, …) are bytes on the wire, and RabbitMQ passes any bytes through. lapin's parser
//! (amq-protocol-types) insists on UTF-8 and fails the whole frame otherwise, and lapin then
//! closes the connection: the message comes back at the head of the queue after every
//! reconnect, and the service stops (issue 22). goamqp's client keeps any bytes in a Go string.
//!
//! This module walks one complete frame before lapin sees it and repairs, in place:
//! - each byte of an invalid UTF-8 sequence in a short string becomes `?` (the length and
//!   every valid character are kept, so nothing else in the frame moves);
//! - a field table that cannot be read at all (an unknown field type, an entry that overruns
//!   its table) becomes an empty table — the frame shrinks by the table's bytes.
//!
//! It reads what a frame says (method and content-header layouts of AMQP 0-9-1, with
//! RabbitMQ's field types as amq-protocol reads them) and never recurses: nested tables and
//! arrays are walked with an explicit stack, so a header nested 26,000 deep costs a `Vec`.
//! Body and heartbeat frames pass untouched. [`super::transport`] runs it on every frame read.

/// A frame's 7-byte header: type, channel, payload size.
pub const FRAME_HEADER: usize = 7;
/// The octet that ends every frame.
pub const FRAME_END: u8 = 0xCE;

const METHOD: u8 = 1;
const CONTENT_HEADER: u8 = 2;
const BASIC: u16 = 60;
const BASIC_DELIVER: u16 = 60;

/// What a repair changed in one frame, named for the log line of the message it belongs to.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Repaired {
    /// The fields that had bytes replaced, or a table that was emptied, e.g. `message_id`,
    /// `header key`, `headers (unreadable, emptied)`.
    pub fields: Vec<&'static str>,
}

impl Repaired {
    fn note(&mut self, field: &'static str) {
        if !self.fields.contains(&field) {
            self.fields.push(field);
        }
    }

    /// Whether anything was changed.
    pub fn any(&self) -> bool {
        !self.fields.is_empty()
    }
}

/// A `basic.deliver` method: who it is for, which delivery it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliverInfo {
    pub consumer_tag: String,
    pub delivery_tag: u64,
}

/// What a frame was, as far as a repair needs to know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameKind {
    /// `basic.deliver`, whose content header follows on the same channel.
    Deliver(DeliverInfo),
    /// A content header (properties of the message whose method came before it).
    ContentHeader,
    /// Anything else.
    Other,
}

/// Repairs the complete frame `frame` (header, payload and frame-end) in place. Returns what
/// the frame was and what was changed; a frame too short or oddly shaped is left as it is
/// (lapin will say what is wrong with it).
pub fn repair_frame(frame: &mut Vec<u8>) -> (FrameKind, Repaired) {
    let mut repaired = Repaired::default();
    if frame.len() < FRAME_HEADER + 1 {
        return (FrameKind::Other, repaired);
    }
    let kind = match frame[0] {
        METHOD => repair_method(frame, &mut repaired),
        CONTENT_HEADER => {
            repair_content_header(frame, &mut repaired);
            FrameKind::ContentHeader
        }
        _ => FrameKind::Other,
    };
    (kind, repaired)
}

/// The channel a frame is on.
pub fn channel_of(frame: &[u8]) -> u16 {
    u16::from_be_bytes([frame[1], frame[2]])
}

/// The size a frame declares for its payload.
pub fn payload_size(header: &[u8]) -> usize {
    u32::from_be_bytes([header[3], header[4], header[5], header[6]]) as usize
}

/// One argument of a method, in wire order.
#[derive(Clone, Copy)]
enum Arg {
    Octet,
    Short,
    LongLong,
    /// One or more packed bits: one octet.
    Bits,
    ShortStr(&'static str),
    Table(&'static str),
}

/// The arguments of the methods a server sends, up to the last one that may need a repair.
fn server_method_layout(class: u16, method: u16) -> Option<&'static [Arg]> {
    use Arg::*;
    Some(match (class, method) {
        (10, 10) => &[Octet, Octet, Table("server properties")], // connection.start
        (10, 41) => &[ShortStr("known hosts")],                  // connection.open-ok
        (10, 50) => &[Short, ShortStr("reply text")],            // connection.close
        (10, 60) => &[ShortStr("blocked reason")],               // connection.blocked
        (20, 40) => &[Short, ShortStr("reply text")],            // channel.close
        (50, 11) => &[ShortStr("queue name")],                   // queue.declare-ok
        (60, 21) | (60, 31) => &[ShortStr("consumer tag")],      // basic.consume-ok, cancel-ok
        (60, 30) => &[ShortStr("consumer tag")],                 // basic.cancel (from the server)
        (60, 50) => &[Short, ShortStr("reply text"), ShortStr("exchange"), ShortStr("routing key")], // basic.return
        (60, 60) => &[ShortStr("consumer tag"), LongLong, Bits, ShortStr("exchange"), ShortStr("routing key")], // basic.deliver
        (60, 71) => &[LongLong, Bits, ShortStr("exchange"), ShortStr("routing key")], // basic.get-ok
        (60, 72) => &[ShortStr("cluster id")],                                        // basic.get-empty
        _ => return None,
    })
}

/// The end of the payload (the frame-end octet's index).
fn payload_end(frame: &[u8]) -> usize {
    frame.len() - 1
}

fn repair_method(frame: &mut Vec<u8>, repaired: &mut Repaired) -> FrameKind {
    let start = FRAME_HEADER;
    if payload_end(frame) < start + 4 {
        return FrameKind::Other;
    }
    let class = u16::from_be_bytes([frame[start], frame[start + 1]]);
    let method = u16::from_be_bytes([frame[start + 2], frame[start + 3]]);
    let Some(layout) = server_method_layout(class, method) else { return FrameKind::Other };
    let mut at = start + 4;
    let mut consumer_tag = None;
    let mut delivery_tag = None;
    for arg in layout {
        let next = match *arg {
            Arg::Octet | Arg::Bits => Some(at + 1),
            Arg::Short => Some(at + 2),
            Arg::LongLong => {
                if at + 8 <= payload_end(frame) {
                    delivery_tag = Some(u64::from_be_bytes(frame[at..at + 8].try_into().unwrap_or([0; 8])));
                }
                Some(at + 8)
            }
            Arg::ShortStr(name) => {
                let limit = payload_end(frame);
                let end = repair_short_string(frame, at, limit, name, repaired);
                if let (Some(end), "consumer tag") = (end, name) {
                    consumer_tag = Some(String::from_utf8_lossy(&frame[at + 1..end]).into_owned());
                }
                end
            }
            Arg::Table(name) => Some(repair_table_at(frame, at, name, repaired)),
        };
        match next {
            Some(next) if next <= payload_end(frame) => at = next,
            _ => return FrameKind::Other,
        }
    }
    match ((class, method), consumer_tag, delivery_tag) {
        ((BASIC, BASIC_DELIVER), Some(consumer_tag), Some(delivery_tag)) => {
            FrameKind::Deliver(DeliverInfo { consumer_tag, delivery_tag })
        }
        _ => FrameKind::Other,
    }
}

/// Basic's content properties, in flag order (bit 15 first), as (name, kind).
const BASIC_PROPERTIES: [(&str, Prop); 14] = [
    ("content_type", Prop::ShortStr),
    ("content_encoding", Prop::ShortStr),
    ("headers", Prop::Table),
    ("delivery_mode", Prop::Fixed(1)),
    ("priority", Prop::Fixed(1)),
    ("correlation_id", Prop::ShortStr),
    ("reply_to", Prop::ShortStr),
    ("expiration", Prop::ShortStr),
    ("message_id", Prop::ShortStr),
    ("timestamp", Prop::Fixed(8)),
    ("type", Prop::ShortStr),
    ("user_id", Prop::ShortStr),
    ("app_id", Prop::ShortStr),
    ("cluster_id", Prop::ShortStr),
];

#[derive(Clone, Copy)]
enum Prop {
    ShortStr,
    Table,
    Fixed(usize),
}

fn repair_content_header(frame: &mut Vec<u8>, repaired: &mut Repaired) {
    // class (2), weight (2), body size (8), property flags (2)
    let start = FRAME_HEADER;
    if payload_end(frame) < start + 14 {
        return;
    }
    let class = u16::from_be_bytes([frame[start], frame[start + 1]]);
    let flags = u16::from_be_bytes([frame[start + 12], frame[start + 13]]);
    if class != BASIC || flags & 1 != 0 {
        return; // no other class carries content; a continued flag word is not Basic's
    }
    let mut at = start + 14;
    for (bit, (name, prop)) in BASIC_PROPERTIES.iter().enumerate() {
        if flags & (1 << (15 - bit)) == 0 {
            continue;
        }
        let next = match prop {
            Prop::Fixed(size) => Some(at + size),
            Prop::ShortStr => {
                let limit = payload_end(frame);
                repair_short_string(frame, at, limit, name, repaired)
            }
            Prop::Table => Some(repair_table_at(frame, at, name, repaired)),
        };
        match next {
            Some(next) if next <= payload_end(frame) => at = next,
            _ => return,
        }
    }
}

/// Repairs the short string at `at` (a length octet, then bytes) that must end by `limit`;
/// returns where it ends, or `None` if it overruns.
fn repair_short_string(
    frame: &mut [u8],
    at: usize,
    limit: usize,
    field: &'static str,
    repaired: &mut Repaired,
) -> Option<usize> {
    let len = *frame.get(at)? as usize;
    let end = at + 1 + len;
    if end > limit {
        return None;
    }
    if replace_invalid_utf8(&mut frame[at + 1..end]) {
        repaired.note(field);
    }
    Some(end)
}

/// Replaces every byte of each invalid UTF-8 sequence in `bytes` by `?`; true if any was.
pub fn replace_invalid_utf8(bytes: &mut [u8]) -> bool {
    let mut changed = false;
    let mut from = 0;
    while from < bytes.len() {
        match std::str::from_utf8(&bytes[from..]) {
            Ok(_) => break,
            Err(error) => {
                let bad_start = from + error.valid_up_to();
                let bad_len = error.error_len().unwrap_or(bytes.len() - bad_start);
                bytes[bad_start..bad_start + bad_len].fill(b'?');
                changed = true;
                from = bad_start + bad_len;
            }
        }
    }
    changed
}

/// The end of a `u32`-length-prefixed value at `at`, if it fits before `limit`.
fn long_value_end(frame: &[u8], at: usize, limit: usize) -> Option<usize> {
    let len = u32::from_be_bytes(frame.get(at..at + 4)?.try_into().ok()?) as usize;
    let end = (at + 4).checked_add(len)?;
    (end <= limit).then_some(end)
}

/// Repairs the field table at `at` (a `u32` length, then entries). A table that cannot be
/// read is emptied: its entries are cut out of the frame and the frame's size adjusted.
/// Returns where the (possibly shortened) table ends.
fn repair_table_at(frame: &mut Vec<u8>, at: usize, field: &'static str, repaired: &mut Repaired) -> usize {
    let limit = payload_end(frame);
    let Some(end) = long_value_end(frame, at, limit) else {
        return usize::MAX; // the table overruns the frame: not a frame we can fix
    };
    let mut fixes = Repaired::default();
    if walk_table(frame, at + 4, end, &mut fixes).is_ok() {
        for field in fixes.fields {
            repaired.note(field);
        }
        return end;
    }
    repaired.note(match field {
        "headers" => "headers (unreadable, emptied)",
        _ => "a field table (unreadable, emptied)",
    });
    frame.drain(at + 4..end);
    frame[at..at + 4].copy_from_slice(&0u32.to_be_bytes());
    let payload = (frame.len() - FRAME_HEADER - 1) as u32;
    frame[3..7].copy_from_slice(&payload.to_be_bytes());
    at + 4
}

/// A container being walked: a table (entries of key and value) or an array (values).
struct Open {
    end: usize,
    table: bool,
}

/// The table or array could not be read.
struct Unreadable;

/// Walks the entries of a table whose content spans `from..end`, repairing keys and nested
/// short strings in place. Nested tables and arrays go on an explicit stack.
fn walk_table(frame: &mut [u8], from: usize, end: usize, fixes: &mut Repaired) -> Result<(), Unreadable> {
    let mut stack = vec![Open { end, table: true }];
    let mut at = from;
    while let Some(open) = stack.last() {
        if at == open.end {
            stack.pop();
            continue;
        }
        let (limit, table) = (open.end, open.table);
        if table {
            at = repair_short_string(frame, at, limit, "header key", fixes).ok_or(Unreadable)?;
        }
        let kind = *frame.get(at).filter(|_| at < limit).ok_or(Unreadable)?;
        at += 1;
        let fixed = |size: usize| if at + size <= limit { Ok(at + size) } else { Err(Unreadable) };
        at = match kind {
            b't' | b'b' | b'B' => fixed(1)?,
            b's' | b'U' | b'u' => fixed(2)?,
            b'I' | b'i' | b'f' => fixed(4)?,
            b'L' | b'l' | b'd' | b'T' => fixed(8)?,
            b'D' => fixed(5)?,
            b'V' => at,
            b'S' | b'x' => long_value_end(frame, at, limit).ok_or(Unreadable)?,
            b'F' | b'A' => {
                let inner_end = long_value_end(frame, at, limit).ok_or(Unreadable)?;
                stack.push(Open { end: inner_end, table: kind == b'F' });
                at + 4
            }
            _ => return Err(Unreadable),
        };
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A frame of `kind` on `channel` around `payload`.
    fn frame(kind: u8, channel: u16, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![kind];
        out.extend_from_slice(&channel.to_be_bytes());
        out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        out.extend_from_slice(payload);
        out.push(FRAME_END);
        out
    }

    fn short(s: &[u8]) -> Vec<u8> {
        let mut out = vec![s.len() as u8];
        out.extend_from_slice(s);
        out
    }

    fn table(entries: &[u8]) -> Vec<u8> {
        let mut out = (entries.len() as u32).to_be_bytes().to_vec();
        out.extend_from_slice(entries);
        out
    }

    fn deliver(consumer: &[u8], tag: u64, exchange: &[u8], key: &[u8]) -> Vec<u8> {
        let mut p = vec![0, 60, 0, 60];
        p.extend(short(consumer));
        p.extend_from_slice(&tag.to_be_bytes());
        p.push(0);
        p.extend(short(exchange));
        p.extend(short(key));
        frame(METHOD, 1, &p)
    }

    /// A content header with the given flags and property bytes.
    fn content_header(flags: u16, properties: &[u8]) -> Vec<u8> {
        let mut p = vec![0, 60, 0, 0];
        p.extend_from_slice(&5u64.to_be_bytes());
        p.extend_from_slice(&flags.to_be_bytes());
        p.extend_from_slice(properties);
        frame(CONTENT_HEADER, 1, &p)
    }

    /// What lapin's own parser makes of a frame.
    fn lapin_parses(bytes: &[u8]) -> bool {
        amq_protocol::frame::parse_frame(bytes).is_ok()
    }

    #[test]
    fn invalid_sequences_become_question_marks_and_valid_text_stays() {
        let mut bytes = b"ok \xff\xfe caf\xc3\xa9 \xe2\x82".to_vec();
        assert!(replace_invalid_utf8(&mut bytes));
        assert_eq!(std::str::from_utf8(&bytes).unwrap(), "ok ?? café ??");
        let mut fine = "naïve".as_bytes().to_vec();
        assert!(!replace_invalid_utf8(&mut fine));
    }

    #[test]
    fn a_deliver_with_a_non_utf8_routing_key_is_repaired_in_place() {
        let mut f = deliver(b"warren-1", 7, b"svc.direct.exchange.request", b"gr\xffeet");
        assert!(!lapin_parses(&f), "the broken frame should fail lapin's parser");
        let before = f.len();
        let (kind, repaired) = repair_frame(&mut f);
        assert_eq!(kind, FrameKind::Deliver(DeliverInfo { consumer_tag: "warren-1".into(), delivery_tag: 7 }));
        assert_eq!(repaired.fields, vec!["routing key"]);
        assert_eq!(f.len(), before);
        assert!(lapin_parses(&f));
    }

    #[test]
    fn every_short_string_property_is_repaired() {
        // all fourteen properties, every short string broken
        let mut props = Vec::new();
        for (name, prop) in BASIC_PROPERTIES {
            match prop {
                Prop::ShortStr => props.extend(short(&[b'a', 0xff, b'b'])),
                Prop::Table => props.extend(table(&[short(b"k\xfe").as_slice(), b"S\0\0\0\x01\xff"].concat())),
                Prop::Fixed(size) => props.extend(std::iter::repeat_n(1u8, size)),
            }
            let _ = name;
        }
        let mut f = content_header(0xFFFC, &props);
        assert!(!lapin_parses(&f));
        let (kind, repaired) = repair_frame(&mut f);
        assert_eq!(kind, FrameKind::ContentHeader);
        for field in [
            "content_type",
            "content_encoding",
            "header key",
            "correlation_id",
            "reply_to",
            "expiration",
            "message_id",
            "type",
            "user_id",
            "app_id",
            "cluster_id",
        ] {
            assert!(repaired.fields.contains(&field), "{field} not repaired: {:?}", repaired.fields);
        }
        assert!(lapin_parses(&f));
    }

    #[test]
    fn keys_nested_in_tables_and_arrays_are_repaired_without_recursion() {
        // a table holding an array holding a table with a bad key, then 20,000 nested arrays
        let inner = table(&[short(b"\xffdeep").as_slice(), b"t\x01"].concat());
        let mut array = vec![b'F'];
        array.extend(inner);
        let mut nested = vec![b'V'];
        for _ in 0..20_000 {
            let mut outer = vec![b'A'];
            outer.extend_from_slice(&(nested.len() as u32).to_be_bytes());
            outer.extend(nested);
            nested = outer;
        }
        let entries = [
            short(b"a").as_slice(),
            b"A",
            &(array.len() as u32).to_be_bytes(),
            &array,
            short(b"deep").as_slice(),
            &nested,
        ]
        .concat();
        let mut f = content_header(0x2000, &table(&entries));
        let (_, repaired) = repair_frame(&mut f);
        assert_eq!(repaired.fields, vec!["header key"]);
        let payload = &f[FRAME_HEADER..];
        assert!(payload.windows(5).any(|w| w == b"?deep"));
    }

    #[test]
    fn an_unreadable_header_table_is_emptied_and_the_frame_shrinks() {
        // an unknown field type 'Z', then a message_id after the table
        let bad = table(&[short(b"key").as_slice(), b"Z\x01\x02\x03"].concat());
        let mut props = bad.clone();
        props.extend(short(b"id-1"));
        let mut f = content_header(0x2000 | 0x0080, &props);
        assert!(!lapin_parses(&f));
        let before = f.len();
        let (_, repaired) = repair_frame(&mut f);
        assert_eq!(repaired.fields, vec!["headers (unreadable, emptied)"]);
        assert_eq!(f.len(), before - (bad.len() - 4));
        assert_eq!(payload_size(&f), f.len() - FRAME_HEADER - 1);
        assert!(lapin_parses(&f));
        let (_, header) = amq_protocol::frame::parse_frame(f.as_slice()).unwrap();
        let amq_protocol::frame::AMQPFrame::Header(_, content) = header else { panic!("not a header") };
        assert_eq!(content.properties.message_id().as_ref().map(|s| s.as_str()), Some("id-1"));
    }

    #[test]
    fn a_valid_frame_is_left_byte_for_byte() {
        let props =
            [short(b"application/json"), table(&[short(b"service").as_slice(), b"S\0\0\0\x02go"].concat())].concat();
        let mut f = content_header(0xA000, &props);
        let copy = f.clone();
        let (_, repaired) = repair_frame(&mut f);
        assert!(!repaired.any());
        assert_eq!(f, copy);
    }

    #[test]
    fn truncated_or_odd_frames_are_left_alone_without_panicking() {
        for len in 0..40 {
            let mut f = deliver(b"c", 1, b"e", b"\xff")[..len.min(20)].to_vec();
            let _ = repair_frame(&mut f);
        }
        let mut overrun = content_header(0x2000, &[0, 0, 0, 200, b'x']);
        let copy = overrun.clone();
        repair_frame(&mut overrun);
        assert_eq!(overrun, copy);
    }
}
