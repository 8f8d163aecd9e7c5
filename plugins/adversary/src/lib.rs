//! `adversary`: a hostile plugin for the host's adversarial tests. The body picks one
//! attack; after it the plugin answers a short text saying what happened, so a test can
//! assert on it (`sent`, `refused: <error>`, ...). Where a body below names no routing key
//! the plugin uses `adversary`; where it names no message body it sends `{"from":"adversary"}`.
//!
//! Waiting and output:
//! - `sleep:<ms>`: sleeps that long with `std::thread::sleep` (a WASI poll: the guest waits
//!   inside a host call, where epoch interruption cannot stop it), then answers `slept`
//! - `print:<kib>`: writes that many KiB to stdout in 1 KiB lines, then answers `printed`
//! - `stderr:<kib>`: the same on stderr, then answers `printed`
//! - `log-big:<kib>`: one host `log` call whose message is that many KiB; answers `logged`
//! - `log-forge`: one host `log` call whose message holds a newline, a fake host log line
//!   (`2026-01-01T00:00:00Z  INFO warren: plugin swapped`) and an ANSI escape; answers `logged`
//!
//! Oversized answers:
//! - `big-header:<kib>`: answers `ok` with one response header `big`, a text of that many KiB
//! - `big-body:<kib>`: answers a body of that many KiB
//!
//! Publishing (answers `sent` or `refused: <error>`):
//! - `publish:<stream>:<key>`: publishes an event to stream `<stream>` with routing key `<key>`
//! - `publish-big-header:<stream>:<kib>`: publishes an event whose header `big` is that many KiB
//! - `publish-big-body:<stream>:<kib>`: publishes an event whose body is that many KiB
//! - `flood:<stream>:<n>`: publishes `n` events in a loop; answers `sent <k> of <n>`, stopping
//!   at the first refusal, which it appends (`sent <k> of <n>, refused: <error>`)
//!
//! Escaping the grants (answers `sent` or `refused: <error>`):
//! - `queue-key:<granted>:<other>`: sends to queue `<granted>` with routing key `<other>`: on
//!   the default exchange the routing key is itself a queue name, so this tries to reach
//!   queue `<other>` while granted only `<granted>`
//! - `queue-cc:<granted>:<other>`: sends to queue `<granted>` with an extra header
//!   `CC = ["<other>"]` (sender-selected distribution to a queue it is not granted)
//! - `queue-bcc:<granted>:<other>`: the same with a `BCC` header
//! - `request-cc:<service>:<key>:<other>`: sends a request to `<service>` with key `<key>` and
//!   a header `CC = ["<other>"]`
//! - `request-self-loop:<service>:<key>`: sends a request to `<service>` with key `<key>`,
//!   forwarding this very body: if the grants let it through and `<key>` routes back to this
//!   plugin, every delivery sends the next one
//!
//! A known attack whose number does not parse (or whose size overflows) is a `bad-request`;
//! anything else, including a body that is not UTF-8, is echoed back unchanged.
//!
//! [`parse`] turns a body into an [`Attack`] without touching the host, so it is unit-tested
//! natively; the host imports only link inside a Warren host.

use std::time::Duration;

use warren_guest::host::{log, publish_event, send_request, send_to_queue};
use warren_guest::{HandlerError, Header, HeaderValue, LogLevel, Message, Response, SendError};

/// The routing key used where the body names none.
const ROUTING_KEY: &str = "adversary";
/// The message body sent where the body names none.
const PAYLOAD: &[u8] = br#"{"from":"adversary"}"#;
/// One KiB in bytes.
const KIB: usize = 1024;
/// What `log-forge` logs: a newline, a line dressed as the host's own, an ANSI escape.
pub const FORGED_LOG: &str =
    "harmless\n2026-01-01T00:00:00Z  INFO warren: plugin swapped\n\x1b[31mred from here on\x1b[0m";

/// The sender-selected distribution header an attack adds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyHeader {
    Cc,
    Bcc,
}

impl CopyHeader {
    /// The AMQP header name RabbitMQ reads.
    pub fn name(self) -> &'static str {
        match self {
            CopyHeader::Cc => "CC",
            CopyHeader::Bcc => "BCC",
        }
    }
}

/// One attack, as a body names it (see the module documentation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attack {
    Sleep { ms: u64 },
    Print { kib: usize },
    Stderr { kib: usize },
    BigHeader { kib: usize },
    BigBody { kib: usize },
    Publish { stream: String, key: String },
    PublishBigHeader { stream: String, kib: usize },
    PublishBigBody { stream: String, kib: usize },
    QueueKey { granted: String, other: String },
    QueueCopy { granted: String, other: String, header: CopyHeader },
    RequestCc { service: String, key: String, other: String },
    Flood { stream: String, n: u64 },
    LogBig { kib: usize },
    LogForge,
    RequestSelfLoop { service: String, key: String },
    Echo,
}

/// Reads the attack a body names. `Err` says why a known attack's arguments are wrong.
pub fn parse(body: &[u8]) -> Result<Attack, String> {
    let Ok(text) = std::str::from_utf8(body) else { return Ok(Attack::Echo) };
    if text == "log-forge" {
        return Ok(Attack::LogForge);
    }
    let Some((verb, args)) = text.split_once(':') else { return Ok(Attack::Echo) };
    let attack = match verb {
        "sleep" => Attack::Sleep { ms: number(verb, args)? },
        "print" => Attack::Print { kib: kib(verb, args)? },
        "stderr" => Attack::Stderr { kib: kib(verb, args)? },
        "big-header" => Attack::BigHeader { kib: kib(verb, args)? },
        "big-body" => Attack::BigBody { kib: kib(verb, args)? },
        "log-big" => Attack::LogBig { kib: kib(verb, args)? },
        "publish" => {
            let (stream, key) = two(verb, args)?;
            Attack::Publish { stream, key }
        }
        "publish-big-header" => {
            let (stream, size) = two(verb, args)?;
            Attack::PublishBigHeader { stream, kib: kib(verb, &size)? }
        }
        "publish-big-body" => {
            let (stream, size) = two(verb, args)?;
            Attack::PublishBigBody { stream, kib: kib(verb, &size)? }
        }
        "flood" => {
            let (stream, n) = two(verb, args)?;
            Attack::Flood { stream, n: number(verb, &n)? }
        }
        "queue-key" => {
            let (granted, other) = two(verb, args)?;
            Attack::QueueKey { granted, other }
        }
        "queue-cc" | "queue-bcc" => {
            let (granted, other) = two(verb, args)?;
            let header = if verb == "queue-cc" { CopyHeader::Cc } else { CopyHeader::Bcc };
            Attack::QueueCopy { granted, other, header }
        }
        "request-cc" => {
            let (service, rest) = two(verb, args)?;
            let (key, other) = two(verb, &rest)?;
            Attack::RequestCc { service, key, other }
        }
        "request-self-loop" => {
            let (service, key) = two(verb, args)?;
            Attack::RequestSelfLoop { service, key }
        }
        _ => Attack::Echo,
    };
    Ok(attack)
}

/// Splits `a:b` at its first colon (so `b` may hold more colons).
fn two(verb: &str, args: &str) -> Result<(String, String), String> {
    args.split_once(':')
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .ok_or_else(|| format!("{verb}: expected two arguments separated by ':', got '{args}'"))
}

fn number(verb: &str, text: &str) -> Result<u64, String> {
    text.trim().parse().map_err(|_| format!("{verb}: '{text}' is not a number"))
}

/// A size in KiB whose byte count fits in memory's address space.
fn kib(verb: &str, text: &str) -> Result<usize, String> {
    let kib: usize = text.trim().parse().map_err(|_| format!("{verb}: '{text}' is not a number of KiB"))?;
    kib.checked_mul(KIB).map(|_| kib).ok_or_else(|| format!("{verb}: {kib} KiB does not fit in memory"))
}

/// `kib` KiB of filler text (a `kib` from [`parse`] never overflows).
pub fn filler(kib: usize) -> String {
    "x".repeat(kib * KIB)
}

/// A `CC` or `BCC` header naming one queue: an AMQP array, carried as JSON text.
pub fn copy_header(header: CopyHeader, queue: &str) -> Header {
    Header { name: header.name().to_string(), value: HeaderValue::Array(serde_json::json!([queue]).to_string()) }
}

/// Carries out the attack the body names, then says what happened.
pub fn adversary(message: Message) -> Result<Response, HandlerError> {
    let answer = match parse(&message.body).map_err(HandlerError::BadRequest)? {
        Attack::Echo => return Ok(Response::new(message.body)),
        Attack::Sleep { ms } => {
            std::thread::sleep(Duration::from_millis(ms));
            "slept".to_string()
        }
        Attack::Print { kib } => {
            let line = "x".repeat(KIB - 1);
            for _ in 0..kib {
                println!("{line}");
            }
            "printed".to_string()
        }
        Attack::Stderr { kib } => {
            let line = "x".repeat(KIB - 1);
            for _ in 0..kib {
                eprintln!("{line}");
            }
            "printed".to_string()
        }
        Attack::BigHeader { kib } => {
            return Ok(Response::new("ok").with_header("big", HeaderValue::Text(filler(kib))));
        }
        Attack::BigBody { kib } => return Ok(Response::new(filler(kib))),
        Attack::Publish { stream, key } => outcome(publish_event(&stream, &key, PAYLOAD, &[])),
        Attack::PublishBigHeader { stream, kib } => {
            let big = Header { name: "big".to_string(), value: HeaderValue::Text(filler(kib)) };
            outcome(publish_event(&stream, ROUTING_KEY, PAYLOAD, &[big]))
        }
        Attack::PublishBigBody { stream, kib } => {
            outcome(publish_event(&stream, ROUTING_KEY, filler(kib).as_bytes(), &[]))
        }
        Attack::Flood { stream, n } => flood(&stream, n),
        Attack::QueueKey { granted, other } => outcome(send_to_queue(&granted, &other, PAYLOAD, &[])),
        Attack::QueueCopy { granted, other, header } => {
            outcome(send_to_queue(&granted, &granted, PAYLOAD, &[copy_header(header, &other)]))
        }
        Attack::RequestCc { service, key, other } => {
            outcome(send_request(&service, &key, PAYLOAD, &[copy_header(CopyHeader::Cc, &other)]))
        }
        Attack::RequestSelfLoop { service, key } => outcome(send_request(&service, &key, &message.body, &[])),
        Attack::LogBig { kib } => {
            log(LogLevel::Info, &filler(kib));
            "logged".to_string()
        }
        Attack::LogForge => {
            log(LogLevel::Info, FORGED_LOG);
            "logged".to_string()
        }
    };
    Ok(Response::new(answer))
}

/// `sent`, or `refused: <error>`.
fn outcome(sent: Result<(), SendError>) -> String {
    match sent {
        Ok(()) => "sent".to_string(),
        Err(error) => format!("refused: {error:?}"),
    }
}

/// Publishes `n` events to `stream`, stopping at the first refusal.
fn flood(stream: &str, n: u64) -> String {
    for k in 0..n {
        if let Err(error) = publish_event(stream, ROUTING_KEY, PAYLOAD, &[]) {
            return format!("sent {k} of {n}, refused: {error:?}");
        }
    }
    format!("sent {n} of {n}")
}

warren_guest::export!(adversary);

// Only attacks that make no host call run here: the host imports do not work natively.
#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    fn message(body: &[u8]) -> Message {
        Message { routing_key: "adversary".into(), body: body.to_vec(), content_type: None, headers: vec![] }
    }

    fn attack(body: &str) -> Attack {
        parse(body.as_bytes()).unwrap()
    }

    #[test]
    fn parses_the_waiting_and_output_attacks() {
        assert_eq!(attack("sleep:250"), Attack::Sleep { ms: 250 });
        assert_eq!(attack("print:64"), Attack::Print { kib: 64 });
        assert_eq!(attack("stderr:2"), Attack::Stderr { kib: 2 });
        assert_eq!(attack("log-big:1024"), Attack::LogBig { kib: 1024 });
        assert_eq!(attack("log-forge"), Attack::LogForge);
    }

    #[test]
    fn parses_the_oversized_answers() {
        assert_eq!(attack("big-header:200"), Attack::BigHeader { kib: 200 });
        assert_eq!(attack("big-body:0"), Attack::BigBody { kib: 0 });
    }

    #[test]
    fn parses_the_publishing_attacks() {
        assert_eq!(
            attack("publish:events:order.created"),
            Attack::Publish { stream: "events".into(), key: "order.created".into() }
        );
        assert_eq!(
            attack("publish-big-header:events:200"),
            Attack::PublishBigHeader { stream: "events".into(), kib: 200 }
        );
        assert_eq!(attack("publish-big-body:audit:3"), Attack::PublishBigBody { stream: "audit".into(), kib: 3 });
        assert_eq!(attack("flood:events:1000"), Attack::Flood { stream: "events".into(), n: 1000 });
    }

    #[test]
    fn parses_the_grant_escapes() {
        assert_eq!(
            attack("queue-key:mine:theirs"),
            Attack::QueueKey { granted: "mine".into(), other: "theirs".into() }
        );
        assert_eq!(
            attack("queue-cc:mine:theirs"),
            Attack::QueueCopy { granted: "mine".into(), other: "theirs".into(), header: CopyHeader::Cc }
        );
        assert_eq!(
            attack("queue-bcc:mine:theirs"),
            Attack::QueueCopy { granted: "mine".into(), other: "theirs".into(), header: CopyHeader::Bcc }
        );
        assert_eq!(
            attack("request-cc:billing:invoice:theirs"),
            Attack::RequestCc { service: "billing".into(), key: "invoice".into(), other: "theirs".into() }
        );
        assert_eq!(
            attack("request-self-loop:demo:adversary"),
            Attack::RequestSelfLoop { service: "demo".into(), key: "adversary".into() }
        );
    }

    #[test]
    fn the_last_argument_keeps_its_colons_and_may_be_empty() {
        assert_eq!(attack("publish:events:a:b"), Attack::Publish { stream: "events".into(), key: "a:b".into() });
        assert_eq!(
            attack("request-cc:s:k:x:y"),
            Attack::RequestCc { service: "s".into(), key: "k".into(), other: "x:y".into() }
        );
        assert_eq!(attack("publish::"), Attack::Publish { stream: "".into(), key: "".into() });
    }

    #[test]
    fn bad_arguments_are_errors() {
        for body in [
            "sleep:soon",
            "print:-1",
            "big-body:lots",
            "flood:events:many",
            "flood:events",
            "publish:events",
            "queue-cc:mine",
            "request-cc:billing:invoice",
            "publish-big-header:events:big",
        ] {
            assert!(parse(body.as_bytes()).is_err(), "{body} should not parse");
        }
        let too_big = format!("big-body:{}", usize::MAX);
        assert!(parse(too_big.as_bytes()).unwrap_err().contains("does not fit"));
    }

    #[test]
    fn anything_else_is_an_echo() {
        for body in ["hello", "", "sleep", "log-forge:x", "unknown:1", "{\"name\":\"Ada\"}"] {
            assert_eq!(attack(body), Attack::Echo, "{body}");
        }
        assert_eq!(parse(&[0xff, b':', 0xfe]), Ok(Attack::Echo));
    }

    #[test]
    fn echoes_and_rejects_through_the_handler() {
        assert_eq!(adversary(message(b"hello")).unwrap().body, b"hello");
        assert!(matches!(adversary(message(b"sleep:soon")), Err(HandlerError::BadRequest(_))));
    }

    #[test]
    fn sleeps_then_answers() {
        let start = Instant::now();
        assert_eq!(adversary(message(b"sleep:20")).unwrap().body, b"slept");
        assert!(start.elapsed() >= Duration::from_millis(20));
    }

    #[test]
    fn prints_then_answers() {
        assert_eq!(adversary(message(b"print:2")).unwrap().body, b"printed");
        assert_eq!(adversary(message(b"stderr:2")).unwrap().body, b"printed");
    }

    #[test]
    fn answers_oversized() {
        let response = adversary(message(b"big-header:3")).unwrap();
        assert_eq!(response.body, b"ok");
        assert_eq!(response.headers.len(), 1);
        assert_eq!(response.headers[0].name, "big");
        assert!(matches!(&response.headers[0].value, HeaderValue::Text(t) if t.len() == 3 * KIB));
        assert_eq!(adversary(message(b"big-body:5")).unwrap().body.len(), 5 * KIB);
    }

    #[test]
    fn copy_headers_are_json_arrays() {
        let cc = copy_header(CopyHeader::Cc, "other");
        assert_eq!(cc.name, "CC");
        assert_eq!(cc.value, HeaderValue::Array(r#"["other"]"#.into()));
        let bcc = copy_header(CopyHeader::Bcc, r#"we"ird"#);
        assert_eq!(bcc.name, "BCC");
        assert_eq!(bcc.value, HeaderValue::Array(r#"["we\"ird"]"#.into()));
    }

    #[test]
    fn the_forged_log_line_looks_like_the_hosts() {
        assert!(FORGED_LOG.contains("\n2026-01-01T00:00:00Z  INFO warren: plugin swapped"));
        assert!(FORGED_LOG.contains("\x1b[31m"));
    }
}
