//! The broker connection's byte stream: TCP with keepalive, TLS for `amqps://`, and
//! [`frame_repair`](super::frame_repair) on every frame read, so that nothing a publisher can
//! put in a message stops lapin's parser (and with it the connection).
//!
//! lapin reads from the stream its connector returns, typed by its runtime's reactor. Warren
//! gives it a runtime whose reactor is tokio's except for its stream type,
//! [`RepairingStream`]: TCP (and TLS above it) inside, whole repaired frames out. Writes pass
//! through untouched. The stream holds back only the bytes of a frame not yet complete.
//!
//! Repairs of a delivery are remembered in [`RepairedDeliveries`] by consumer and delivery
//! tag, so the consumer can say, on that message's own log line, which fields were changed.

use std::collections::{HashMap, VecDeque};
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use async_rs::traits::Reactor;
use async_rs::util::RuntimeParts;
use async_rs::{Runtime, Tokio};
use futures_lite::Stream;
use futures_lite::io::{AsyncRead, AsyncWrite};
use lapin::tcp::{AsyncTcpStream, OwnedTLSConfig};
use lapin::uri::{AMQPScheme, AMQPUri};

use super::frame_repair::{self, FRAME_HEADER, FrameKind};

/// lapin's runtime with Warren's stream.
pub type RepairingRuntime = Runtime<RuntimeParts<Tokio, RepairingReactor>>;

/// The runtime for a connection made from inside tokio.
pub fn runtime() -> RepairingRuntime {
    Runtime::new(RuntimeParts::new(Tokio::current(), RepairingReactor::default()))
}

/// TCP keepalive on the broker connection: the kernel probes a silent peer after this long,
/// then every [`KEEPALIVE_INTERVAL`], and gives up after [`KEEPALIVE_RETRIES`] unanswered
/// probes — a second watch beside AMQP heartbeats, for a link that dies without a word.
pub const KEEPALIVE_IDLE: Duration = Duration::from_secs(10);
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);
pub const KEEPALIVE_RETRIES: u32 = 3;

/// Opens the TCP (and TLS) connection `uri` names, with keepalive and nodelay, wrapped in a
/// [`RepairingStream`].
pub async fn connect(uri: &AMQPUri, tls: &OwnedTLSConfig) -> io::Result<AsyncTcpStream<RepairingStream>> {
    let address = (uri.authority.host.as_str(), uri.authority.port);
    let tcp = match uri.query.connection_timeout {
        Some(ms) => tokio::time::timeout(Duration::from_millis(ms), tokio::net::TcpStream::connect(address))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, format!("no answer within {ms} ms")))??,
        None => tokio::net::TcpStream::connect(address).await?,
    };
    tcp.set_nodelay(true)?;
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(KEEPALIVE_IDLE)
        .with_interval(KEEPALIVE_INTERVAL)
        .with_retries(KEEPALIVE_RETRIES);
    socket2::SockRef::from(&tcp).set_tcp_keepalive(&keepalive)?;
    let plain = AsyncTcpStream::Plain(async_compat::Compat::new(tcp));
    let stream = match uri.scheme {
        AMQPScheme::AMQP => plain,
        AMQPScheme::AMQPS => plain.into_tls(&uri.authority.host, tls.as_ref()).await?,
    };
    Ok(AsyncTcpStream::Plain(RepairingStream::new(Box::new(stream))))
}

/// A byte stream lapin can read and write.
pub trait ByteStream: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> ByteStream for T {}

/// Tokio's reactor, with [`RepairingStream`] as its stream type.
#[derive(Clone, Debug, Default)]
pub struct RepairingReactor {
    tokio: Tokio,
}

impl Reactor for RepairingReactor {
    type TcpStream = RepairingStream;
    type Sleep = <Tokio as Reactor>::Sleep;

    fn register<H: Read + Write + AsFd + AsRawFd + Send + 'static>(
        &self,
        socket: H,
    ) -> io::Result<impl AsyncRead + AsyncWrite + Send + Unpin + 'static> {
        self.tokio.register(socket)
    }

    fn sleep(&self, duration: Duration) -> Self::Sleep {
        self.tokio.sleep(duration)
    }

    fn interval(&self, duration: Duration) -> impl Stream<Item = Instant> + Send + 'static {
        self.tokio.interval(duration)
    }

    fn tcp_connect_addr(&self, addr: SocketAddr) -> impl Future<Output = io::Result<RepairingStream>> + Send + 'static {
        let connecting = self.tokio.tcp_connect_addr(addr);
        async move { Ok(RepairingStream::new(Box::new(AsyncTcpStream::Plain(connecting.await?)))) }
    }
}

/// Frames larger than this are passed on unread: lapin refuses anything over the negotiated
/// frame size (128 KiB) anyway, so this only bounds what the stream holds back.
const MAX_HELD_FRAME: usize = 16 << 20;
/// How much is read from the socket at a time.
const READ_CHUNK: usize = 64 << 10;

/// A stream that hands lapin whole frames, each repaired by [`frame_repair`].
pub struct RepairingStream {
    inner: Box<dyn ByteStream>,
    /// Bytes read: `[sent..ready)` are repaired frames not yet handed out, `[ready..)` the
    /// start of a frame still arriving.
    buffer: Vec<u8>,
    sent: usize,
    ready: usize,
    /// Past the first bytes: frames, or (a refused protocol version, a frame too large to
    /// hold) everything passed through as read.
    mode: Mode,
    /// The last `basic.deliver` on each channel: its content header follows.
    deliveries: HashMap<u16, frame_repair::DeliverInfo>,
    /// The tokio runtime the stream was made in, entered while it is dropped.
    runtime: Option<tokio::runtime::Handle>,
}

/// lapin drops a lost connection's stream on its I/O thread, outside tokio. The TCP stream
/// inside (tokio's, behind async-compat) then found no runtime, and async-compat started a
/// fallback runtime of its own for the rest of the process: a thread and four file
/// descriptors more after the first reconnect (seen in the soak, `host/examples/soak.rs`).
/// Dropped inside the runtime that made it, it needs none.
impl Drop for RepairingStream {
    fn drop(&mut self) {
        let _inside = self.runtime.as_ref().map(tokio::runtime::Handle::enter);
        drop(std::mem::replace(&mut self.inner, Box::new(futures_lite::io::Cursor::new(Vec::new()))));
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Start,
    Frames,
    PassThrough,
}

impl RepairingStream {
    pub fn new(inner: Box<dyn ByteStream>) -> RepairingStream {
        RepairingStream {
            inner,
            buffer: Vec::with_capacity(READ_CHUNK),
            sent: 0,
            ready: 0,
            mode: Mode::Start,
            deliveries: HashMap::new(),
            runtime: tokio::runtime::Handle::try_current().ok(),
        }
    }

    /// Moves every complete frame after `ready` into the ready part, repairing it.
    fn take_frames(&mut self) {
        if self.mode == Mode::Start && self.buffer.len() >= 4 {
            // A server that refuses our protocol version answers with its own header.
            self.mode = if self.buffer.starts_with(b"AMQP") { Mode::PassThrough } else { Mode::Frames };
        }
        if self.mode == Mode::PassThrough {
            self.ready = self.buffer.len();
            return;
        }
        while self.mode == Mode::Frames && self.buffer.len() - self.ready >= FRAME_HEADER {
            let size = frame_repair::payload_size(&self.buffer[self.ready..]);
            if size > MAX_HELD_FRAME {
                self.mode = Mode::PassThrough;
                self.ready = self.buffer.len();
                return;
            }
            let end = self.ready + FRAME_HEADER + size + 1;
            if self.buffer.len() < end {
                return;
            }
            // Only methods and content headers may need a repair: body and heartbeat frames
            // (the bulk of the bytes) pass without a copy.
            if !matches!(self.buffer[self.ready], 1 | 2) {
                self.ready = end;
                continue;
            }
            let mut frame: Vec<u8> = self.buffer[self.ready..end].to_vec();
            let old_len = frame.len();
            self.repair(&mut frame);
            let new_end = self.ready + frame.len();
            if frame.len() == old_len {
                self.buffer[self.ready..end].copy_from_slice(&frame);
            } else {
                self.buffer.splice(self.ready..end, frame);
            }
            self.ready = new_end;
        }
    }

    /// Repairs one frame; remembers the delivery a repaired frame belongs to.
    fn repair(&mut self, frame: &mut Vec<u8>) {
        let channel = frame_repair::channel_of(frame);
        let (kind, repaired) = frame_repair::repair_frame(frame);
        let delivery = match kind {
            FrameKind::Deliver(info) => {
                self.deliveries.insert(channel, info.clone());
                Some(info)
            }
            FrameKind::ContentHeader => self.deliveries.get(&channel).cloned(),
            FrameKind::Other => {
                // Another method (a basic.return, say): a header after it is not a delivery's.
                self.deliveries.remove(&channel);
                None
            }
        };
        if repaired.any() {
            match delivery {
                Some(info) => RepairedDeliveries::global().record(&info, repaired.fields),
                None => {
                    tracing::warn!(channel, fields = ?repaired.fields, "repaired a frame from the broker whose text was not UTF-8")
                }
            }
        }
    }
}

impl AsyncRead for RepairingStream {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, out: &mut [u8]) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        loop {
            if this.sent < this.ready {
                let n = out.len().min(this.ready - this.sent);
                out[..n].copy_from_slice(&this.buffer[this.sent..this.sent + n]);
                this.sent += n;
                if this.sent == this.ready {
                    this.buffer.drain(..this.ready);
                    (this.sent, this.ready) = (0, 0);
                }
                return Poll::Ready(Ok(n));
            }
            let filled = this.buffer.len();
            this.buffer.resize(filled + READ_CHUNK, 0);
            let read = Pin::new(&mut this.inner).poll_read(cx, &mut this.buffer[filled..]);
            let n = match read {
                Poll::Ready(Ok(n)) => n,
                other => {
                    this.buffer.truncate(filled);
                    return other;
                }
            };
            this.buffer.truncate(filled + n);
            if n == 0 {
                // The peer closed: whatever is held goes out as it is, then the end.
                if this.ready < this.buffer.len() {
                    this.ready = this.buffer.len();
                    continue;
                }
                return Poll::Ready(Ok(0));
            }
            this.take_frames();
        }
    }
}

impl AsyncWrite for RepairingStream {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_close(cx)
    }
}

/// Deliveries whose frames were repaired, by consumer tag and delivery tag, until their
/// consumer asks. Bounded: the oldest are forgotten first (a consumer that never asks, such
/// as a client's reply consumer, cannot make it grow).
pub struct RepairedDeliveries {
    entries: Mutex<VecDeque<Repair>>,
    count: AtomicUsize,
}

/// One repaired delivery: (consumer tag, delivery tag) and the fields repaired.
type Repair = ((String, u64), Vec<&'static str>);

/// How many repaired deliveries are remembered at most.
const REMEMBERED: usize = 1024;

impl RepairedDeliveries {
    /// The process's one record (consumer tags are unique per process).
    pub fn global() -> &'static RepairedDeliveries {
        static RECORD: OnceLock<RepairedDeliveries> = OnceLock::new();
        RECORD.get_or_init(RepairedDeliveries::new)
    }

    fn new() -> RepairedDeliveries {
        RepairedDeliveries { entries: Mutex::default(), count: AtomicUsize::new(0) }
    }

    fn record(&self, info: &frame_repair::DeliverInfo, fields: Vec<&'static str>) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let key = (info.consumer_tag.clone(), info.delivery_tag);
        match entries.iter_mut().find(|(k, _)| *k == key) {
            Some((_, known)) => known.extend(fields.into_iter().filter(|f| !known.contains(f)).collect::<Vec<_>>()),
            None => {
                if entries.len() == REMEMBERED {
                    entries.pop_front();
                }
                entries.push_back((key, fields));
            }
        }
        self.count.store(entries.len(), Ordering::Release);
    }

    /// The fields repaired in delivery `delivery_tag` of consumer `consumer_tag`, forgotten
    /// once asked. Costs an atomic load when nothing was repaired.
    pub fn take(&self, consumer_tag: &str, delivery_tag: u64) -> Option<Vec<&'static str>> {
        if self.count.load(Ordering::Acquire) == 0 {
            return None;
        }
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let at = entries.iter().position(|((c, d), _)| c == consumer_tag && *d == delivery_tag)?;
        let (_, fields) = entries.remove(at)?;
        self.count.store(entries.len(), Ordering::Release);
        Some(fields)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_lite::io::{AsyncReadExt, Cursor};

    /// A reader that gives out its bytes a few at a time.
    struct Trickle(Cursor<Vec<u8>>, usize);
    impl AsyncRead for Trickle {
        fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, out: &mut [u8]) -> Poll<io::Result<usize>> {
            let n = out.len().min(self.1);
            Pin::new(&mut self.0).poll_read(cx, &mut out[..n])
        }
    }
    impl AsyncWrite for Trickle {
        fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
            Poll::Ready(Ok(buf.len()))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    fn frame(kind: u8, channel: u16, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![kind];
        out.extend_from_slice(&channel.to_be_bytes());
        out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        out.extend_from_slice(payload);
        out.push(frame_repair::FRAME_END);
        out
    }

    /// basic.deliver to `consumer`, delivery tag `tag`, routing key `key`.
    fn deliver(consumer: &str, tag: u64, key: &[u8]) -> Vec<u8> {
        let mut p = vec![0, 60, 0, 60, consumer.len() as u8];
        p.extend_from_slice(consumer.as_bytes());
        p.extend_from_slice(&tag.to_be_bytes());
        p.extend_from_slice(&[0, 0, key.len() as u8]);
        p.extend_from_slice(key);
        frame(1, 3, &p)
    }

    /// A content header whose only property is `message_id`.
    fn header_with_message_id(id: &[u8]) -> Vec<u8> {
        let mut p = vec![0, 60, 0, 0];
        p.extend_from_slice(&2u64.to_be_bytes());
        p.extend_from_slice(&0x0080u16.to_be_bytes());
        p.push(id.len() as u8);
        p.extend_from_slice(id);
        frame(2, 3, &p)
    }

    #[test]
    fn a_stream_dropped_outside_tokio_starts_no_runtime_of_its_own() {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let stream = runtime.block_on(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let uri: AMQPUri = format!("amqp://127.0.0.1:{}", listener.local_addr().unwrap().port()).parse().unwrap();
            let tls = OwnedTLSConfig::default();
            let (stream, accepted) = tokio::join!(connect(&uri, &tls), listener.accept());
            accepted.unwrap();
            stream.unwrap()
        });
        // Where lapin drops it: its own I/O thread.
        std::thread::spawn(move || drop(stream)).join().unwrap();
        let threads: Vec<String> = std::fs::read_dir("/proc/self/task")
            .unwrap()
            .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
            .collect();
        assert!(!threads.iter().any(|name| name.starts_with("async-compat")), "{threads:?}");
    }

    #[test]
    fn frames_split_anywhere_come_out_whole_and_repaired_and_the_delivery_is_remembered() {
        let consumer = format!("test-{}", uuid::Uuid::new_v4());
        let mut wire = deliver(&consumer, 41, b"k\xff");
        wire.extend(header_with_message_id(b"id\xfe"));
        wire.extend(frame(3, 3, b"{}"));
        wire.extend(frame(8, 0, b""));
        let mut expected = deliver(&consumer, 41, b"k?");
        expected.extend(header_with_message_id(b"id?"));
        expected.extend(frame(3, 3, b"{}"));
        expected.extend(frame(8, 0, b""));
        for step in [1, 3, 7, 1000] {
            let mut stream = RepairingStream::new(Box::new(Trickle(Cursor::new(wire.clone()), step)));
            let mut got = Vec::new();
            futures_lite::future::block_on(stream.read_to_end(&mut got)).unwrap();
            assert_eq!(got, expected, "read {step} bytes at a time");
            let fields = RepairedDeliveries::global().take(&consumer, 41).expect("the delivery's repairs");
            assert_eq!(fields, vec!["routing key", "message_id"]);
            assert_eq!(RepairedDeliveries::global().take(&consumer, 41), None, "forgotten once asked");
        }
    }

    #[test]
    fn a_refused_protocol_version_passes_through() {
        let wire = b"AMQP\x00\x00\x09\x01".to_vec();
        let mut stream = RepairingStream::new(Box::new(Trickle(Cursor::new(wire.clone()), 3)));
        let mut got = Vec::new();
        futures_lite::future::block_on(stream.read_to_end(&mut got)).unwrap();
        assert_eq!(got, wire);
    }

    #[test]
    fn the_record_is_bounded() {
        let record = RepairedDeliveries::new();
        let consumer = format!("bounded-{}", uuid::Uuid::new_v4());
        for tag in 0..(REMEMBERED as u64 + 10) {
            record.record(&frame_repair::DeliverInfo { consumer_tag: consumer.clone(), delivery_tag: tag }, vec!["x"]);
        }
        assert!(record.entries.lock().unwrap().len() <= REMEMBERED);
        assert_eq!(record.take(&consumer, 0), None, "the oldest was forgotten");
        assert!(record.take(&consumer, REMEMBERED as u64 + 9).is_some());
    }
}
