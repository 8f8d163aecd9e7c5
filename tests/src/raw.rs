//! A publisher that can send any bytes AMQP 0-9-1 allows — what no Rust AMQP client will:
//! short strings that are not UTF-8 (table keys, `message_id`, the routing key, …), field
//! types lapin does not know, header tables of any size. It speaks the protocol by hand over
//! a plain TCP socket: handshake as guest, one channel, `basic.publish` without confirms (as
//! goamqp publishes), then a `connection.close` whose `close-ok` proves the broker processed
//! every frame before it (RabbitMQ handles a connection's frames in order).
//!
//! The adversary's tool for the tests of what a publisher cannot do to a Warren host.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// A short string: a length octet, then the bytes (any bytes).
pub fn short(bytes: &[u8]) -> Vec<u8> {
    assert!(bytes.len() <= 255, "a short string holds at most 255 bytes");
    let mut out = vec![bytes.len() as u8];
    out.extend_from_slice(bytes);
    out
}

/// A long string (`S` in a table, or a method's long string): a `u32` length, then bytes.
pub fn long(bytes: &[u8]) -> Vec<u8> {
    let mut out = (bytes.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(bytes);
    out
}

/// A field table from raw entries: each is a key (any bytes) and an encoded value (a type
/// octet and its bytes, e.g. [`text`]).
pub fn table(entries: &[(&[u8], Vec<u8>)]) -> Vec<u8> {
    let mut content = Vec::new();
    for (key, value) in entries {
        content.extend(short(key));
        content.extend_from_slice(value);
    }
    long(&content)
}

/// A long-string table value (`S`).
pub fn text(value: &[u8]) -> Vec<u8> {
    let mut out = vec![b'S'];
    out.extend(long(value));
    out
}

/// An array table value (`A`) of encoded values.
pub fn array(values: &[Vec<u8>]) -> Vec<u8> {
    let mut out = vec![b'A'];
    out.extend(long(&values.concat()));
    out
}

/// Basic's content properties, in flag order; each is the raw encoded property or `None`.
#[derive(Default, Clone)]
pub struct Properties {
    pub content_type: Option<Vec<u8>>,
    pub content_encoding: Option<Vec<u8>>,
    /// An encoded field table ([`table`]).
    pub headers: Option<Vec<u8>>,
    pub delivery_mode: Option<u8>,
    pub priority: Option<u8>,
    pub correlation_id: Option<Vec<u8>>,
    pub reply_to: Option<Vec<u8>>,
    pub expiration: Option<Vec<u8>>,
    pub message_id: Option<Vec<u8>>,
    pub timestamp: Option<u64>,
    pub kind: Option<Vec<u8>>,
    pub user_id: Option<Vec<u8>>,
    pub app_id: Option<Vec<u8>>,
    pub cluster_id: Option<Vec<u8>>,
}

impl Properties {
    /// goamqp's properties: JSON, persistent, header `service` = `sender` (plus `extra`
    /// header entries, raw).
    pub fn goamqp(sender: &str, extra: &[(&[u8], Vec<u8>)]) -> Properties {
        let mut entries: Vec<(&[u8], Vec<u8>)> = vec![(b"service", text(sender.as_bytes()))];
        entries.extend(extra.iter().cloned());
        Properties {
            content_type: Some(b"application/json".to_vec()),
            headers: Some(table(&entries)),
            delivery_mode: Some(2),
            ..Properties::default()
        }
    }

    /// The property flags and property bytes of a content header.
    fn encode(&self) -> (u16, Vec<u8>) {
        let mut flags = 0u16;
        let mut out = Vec::new();
        let mut put = |bit: u16, bytes: Option<Vec<u8>>| {
            if let Some(bytes) = bytes {
                flags |= 1 << bit;
                out.extend(bytes);
            }
        };
        let s = |v: &Option<Vec<u8>>| v.as_ref().map(|b| short(b));
        put(15, s(&self.content_type));
        put(14, s(&self.content_encoding));
        put(13, self.headers.clone());
        put(12, self.delivery_mode.map(|m| vec![m]));
        put(11, self.priority.map(|p| vec![p]));
        put(10, s(&self.correlation_id));
        put(9, s(&self.reply_to));
        put(8, s(&self.expiration));
        put(7, s(&self.message_id));
        put(6, self.timestamp.map(|t| t.to_be_bytes().to_vec()));
        put(5, s(&self.kind));
        put(4, s(&self.user_id));
        put(3, s(&self.app_id));
        put(2, s(&self.cluster_id));
        (flags, out)
    }
}

/// One message to publish: exchange and routing key are raw short strings.
#[derive(Clone)]
pub struct Message {
    pub exchange: Vec<u8>,
    pub routing_key: Vec<u8>,
    pub properties: Properties,
    pub body: Vec<u8>,
}

/// A hand-made AMQP connection with one open channel.
pub struct RawPublisher {
    socket: TcpStream,
    frame_max: usize,
}

const METHOD: u8 = 1;
const HEADER: u8 = 2;
const BODY: u8 = 3;

impl RawPublisher {
    /// Connects to the test broker as its URL's user, opens channel 1.
    pub fn connect() -> RawPublisher {
        let uri: lapin::uri::AMQPUri = crate::broker_url().parse().expect("the broker URL parses");
        let address = format!("{}:{}", uri.authority.host, uri.authority.port);
        let socket = TcpStream::connect(&address).unwrap_or_else(|e| panic!("connecting to {address}: {e}"));
        socket.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut publisher = RawPublisher { socket, frame_max: 131_072 };
        publisher.socket.write_all(b"AMQP\x00\x00\x09\x01").unwrap();
        publisher.expect_method(0, (10, 10)); // connection.start
        let user = &uri.authority.userinfo;
        let response = [b"\0", user.username.as_bytes(), b"\0", user.password.as_bytes()].concat();
        let start_ok = [long(&[]), short(b"PLAIN"), long(&response), short(b"en_US")].concat();
        publisher.method(0, (10, 11), &start_ok);
        let tune = publisher.expect_method(0, (10, 30));
        let channel_max = &tune[0..2];
        let frame_max = u32::from_be_bytes(tune[2..6].try_into().unwrap());
        publisher.frame_max = frame_max as usize;
        publisher.method(0, (10, 31), &[channel_max, &frame_max.to_be_bytes(), &[0, 0]].concat());
        let vhost = if uri.vhost.is_empty() { "/".to_string() } else { uri.vhost.clone() };
        publisher.method(0, (10, 40), &[short(vhost.as_bytes()), short(b""), vec![0]].concat());
        publisher.expect_method(0, (10, 41));
        publisher.method(1, (20, 10), &short(b""));
        publisher.expect_method(1, (20, 11));
        publisher
    }

    /// Publishes `message` (not mandatory, no confirm), its body in frames of the
    /// negotiated size.
    pub fn publish(&mut self, message: &Message) {
        let publish = [vec![0, 0], short(&message.exchange), short(&message.routing_key), vec![0]].concat();
        self.method(1, (60, 40), &publish);
        let (flags, properties) = message.properties.encode();
        let header = [
            &60u16.to_be_bytes()[..],
            &[0, 0],
            &(message.body.len() as u64).to_be_bytes(),
            &flags.to_be_bytes(),
            &properties,
        ]
        .concat();
        self.frame(HEADER, 1, &header);
        for chunk in message.body.chunks(self.frame_max - 8) {
            self.frame(BODY, 1, chunk);
        }
    }

    /// Closes the connection, waiting for the broker's `close-ok`: everything published
    /// before was processed. Panics with the broker's reply if it closed the connection or
    /// the channel on us instead (it refused something we sent).
    pub fn close(mut self) {
        self.method(0, (10, 50), &[vec![0, 200], short(b"done"), vec![0, 0, 0, 0]].concat());
        loop {
            let (kind, channel, payload) = self.read_frame();
            if kind != METHOD {
                continue;
            }
            match (channel, class_method(&payload)) {
                (0, (10, 51)) => return,
                (_, (10, 50)) | (_, (20, 40)) => {
                    panic!("the broker refused what was published: {}", reply_text(&payload))
                }
                _ => {}
            }
        }
    }

    fn method(&mut self, channel: u16, (class, method): (u16, u16), arguments: &[u8]) {
        let payload = [&class.to_be_bytes()[..], &method.to_be_bytes(), arguments].concat();
        self.frame(METHOD, channel, &payload);
    }

    fn frame(&mut self, kind: u8, channel: u16, payload: &[u8]) {
        let frame =
            [&[kind][..], &channel.to_be_bytes(), &(payload.len() as u32).to_be_bytes(), payload, &[0xCE]].concat();
        self.socket.write_all(&frame).unwrap_or_else(|e| panic!("writing to the broker: {e}"));
    }

    fn read_frame(&mut self) -> (u8, u16, Vec<u8>) {
        let mut header = [0u8; 7];
        self.socket.read_exact(&mut header).unwrap_or_else(|e| panic!("reading from the broker: {e}"));
        let size = u32::from_be_bytes(header[3..7].try_into().unwrap()) as usize;
        let mut payload = vec![0u8; size + 1];
        self.socket.read_exact(&mut payload).unwrap_or_else(|e| panic!("reading from the broker: {e}"));
        payload.pop();
        (header[0], u16::from_be_bytes([header[1], header[2]]), payload)
    }

    /// The arguments of the next method, which must be `expected` on `channel`.
    fn expect_method(&mut self, channel: u16, expected: (u16, u16)) -> Vec<u8> {
        let (kind, on, payload) = self.read_frame();
        let got = class_method(&payload);
        assert!(
            kind == METHOD && on == channel && got == expected,
            "expected method {expected:?}, got {got:?}: {}",
            reply_text(&payload)
        );
        payload[4..].to_vec()
    }
}

fn class_method(payload: &[u8]) -> (u16, u16) {
    (u16::from_be_bytes([payload[0], payload[1]]), u16::from_be_bytes([payload[2], payload[3]]))
}

/// The reply text of a `close` method, for an error message.
fn reply_text(payload: &[u8]) -> String {
    let len = payload.get(6).copied().unwrap_or(0) as usize;
    String::from_utf8_lossy(payload.get(7..7 + len).unwrap_or_default()).into_owned()
}
