//! Outbound HTTP for plugins: `wasi:http/outgoing-handler` behind a per-plugin allowlist.
//!
//! - [`Origin`]: one granted origin, spelled and checked by the config (`config/origin.rs`);
//!   here, whether a request goes to it ([`Origin::allows`]: scheme, port, the host or, for
//!   `*.`, any subdomain of it, never the domain itself nor an IP address).
//! - [`PluginHttp`]: what every call of one loaded plugin shares: its grant, the cap on its
//!   requests in flight, its TLS settings (rustls with the ring provider, the system roots
//!   plus `http_ca_file`).
//! - [`CallHttp`]: one call's `wasi:http` state. A request to an origin not granted fails in
//!   the guest with the standard `HTTP-request-denied` error code (when the guest asks for the
//!   response: the request never leaves the host), and is logged with the plugin and the
//!   origin (at most one warning per plugin every [`WARNING_EVERY`], with a count of the
//!   rest). A granted one is sent by the host itself ([`WasiHttpHooks::send_request`]): a
//!   name is resolved and connected only to public addresses ([`is_internal`]; else the
//!   guest sees `destination-IP-prohibited`; an IP the grant names literally is used as is), `traceparent` added, connect and first-byte
//!   timeouts taken from what is left of the call's deadline, the response body read whole
//!   by the host up to the plugin's cap, and nothing of it outliving the deadline (every wait
//!   is bounded by it, and the exchange is dropped with the call's store).
//! - Per call, what a guest can make the host hold is bounded: each `fields` resource
//!   ([`MAX_FIELDS_BYTES`]), a response head, and the answers read but not yet taken by the
//!   guest ([`UNREAD_ANSWERS_PER_CALL`] answers' worth).
//! - [`HttpStats`]: requests by plugin, origin and status, and their latency, for `/metrics`;
//!   every denied request under the one origin label [`DENIED`].

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body::Body;
use http_body_util::BodyExt;
use tokio::sync::Semaphore;
use wasmtime::component::ResourceTable;
use wasmtime_wasi_http::p2::bindings::http::types::ErrorCode;
use wasmtime_wasi_http::{Error, RequestOptions, WasiBody, WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks};

use crate::config::HttpGrant;
pub use crate::config::Origin;
use crate::telemetry::{self, SpanContext, SpanKind, Tracer, new_traceparent};

/// The `traceparent` header (W3C trace context), sent on every request.
pub const TRACEPARENT: &str = "traceparent";

// --- origins --------------------------------------------------------------------------------

/// The config spells and checks an origin (`crate::config::Origin`); whether a request goes
/// to it is the sandbox's rule.
impl Origin {
    /// Whether a request to `scheme://host:port` is to this origin.
    pub fn allows(&self, scheme: &str, host: &str, port: u16) -> bool {
        if !scheme.eq_ignore_ascii_case(&self.scheme) || port != self.port {
            return false;
        }
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        if self.wildcard {
            ip_literal(&host).is_none() && host.len() > self.host.len() && host.ends_with(&self.host)
        } else {
            host == self.host
        }
    }
}

/// The origin of a request URI, `scheme://host:port` with the scheme's default port filled
/// in: what is checked against the grant, logged and counted.
pub fn request_origin(uri: &http::Uri) -> Option<(String, String, u16)> {
    let scheme = uri.scheme_str()?.to_ascii_lowercase();
    let host = uri.host()?.trim_end_matches('.').to_ascii_lowercase();
    let port = uri.port_u16().or(match scheme.as_str() {
        "http" => Some(80),
        "https" => Some(443),
        _ => None,
    })?;
    Some((scheme, host, port))
}

// --- addresses ----------------------------------------------------------------------------------

/// The IP address a request host spells (`127.0.0.1`, `[::1]`), if it is one.
fn ip_literal(host: &str) -> Option<IpAddr> {
    host.trim_start_matches('[').trim_end_matches(']').parse().ok()
}

/// Whether `ip` belongs to the host's own networks rather than the internet: loopback,
/// link-local (`169.254.0.0/16`, `fe80::/10`), private (`10/8`, `172.16/12`, `192.168/16`,
/// `100.64/10`, `fc00::/7`), unspecified or broadcast, and the IPv6 forms that carry such an
/// IPv4 address (mapped `::ffff:a.b.c.d`, compatible `::a.b.c.d`, NAT64 `64:ff9b::a.b.c.d`).
pub fn is_internal(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => internal_v4(v4),
        IpAddr::V6(v6) => {
            let s = v6.segments();
            let embedded = std::net::Ipv4Addr::from(((s[6] as u32) << 16) | s[7] as u32);
            let compatible = s[..6] == [0; 6];
            let mapped_or_nat64 = s[..6] == [0, 0, 0, 0, 0, 0xffff] || s[..6] == [0x64, 0xff9b, 0, 0, 0, 0];
            compatible
                || (mapped_or_nat64 && internal_v4(embedded))
                || (s[0] & 0xffc0) == 0xfe80
                || (s[0] & 0xfe00) == 0xfc00
        }
    }
}

fn internal_v4(ip: std::net::Ipv4Addr) -> bool {
    let [a, b, ..] = ip.octets();
    ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_broadcast()
        || a == 0
        || (a == 100 && (b & 0xc0) == 64)
}

/// The addresses a granted request may connect to. An IP literal passed the allowlist only
/// because the grant names it as written, so it is used as is. A name is resolved (within
/// `within`) and only its public addresses are kept: a name that resolves to the host's own
/// networks only is refused with the addresses it gave.
async fn addresses(host: &str, port: u16, within: Duration) -> Result<Vec<SocketAddr>, Refusal> {
    if let Some(ip) = ip_literal(host) {
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    let found: Vec<SocketAddr> = match tokio::time::timeout(within, tokio::net::lookup_host((host, port))).await {
        Ok(Ok(found)) => found.collect(),
        Ok(Err(error)) => {
            return Err(Refusal::Failed(Error::DnsError { rcode: Some(error.to_string()), info_code: None }));
        }
        Err(_) => return Err(Refusal::Failed(Error::DnsTimeout)),
    };
    let (internal, public): (Vec<SocketAddr>, Vec<SocketAddr>) = found.into_iter().partition(|a| is_internal(a.ip()));
    if public.is_empty() && !internal.is_empty() {
        let ips: Vec<String> = internal.iter().map(|a| a.ip().to_string()).collect();
        return Err(Refusal::Internal(ips.join(", ")));
    }
    Ok(public)
}

/// Why a granted request was not sent.
enum Refusal {
    /// Its name resolves only to the host's own networks (these addresses).
    Internal(String),
    /// Anything else, as `wasi:http` tells it.
    Failed(Error),
}

// --- what one plugin's calls share ------------------------------------------------------------

/// The outbound HTTP of one loaded plugin: its grant, the cap on requests in flight across
/// all its calls, and its TLS settings (built at the first `https` request).
pub struct PluginHttp {
    grant: HttpGrant,
    in_flight: Arc<Semaphore>,
    tls: OnceLock<Result<Arc<rustls::ClientConfig>, String>>,
}

impl PluginHttp {
    /// The HTTP state of a plugin granted `grant`.
    pub fn new(grant: &HttpGrant) -> Arc<PluginHttp> {
        Arc::new(PluginHttp {
            grant: grant.clone(),
            in_flight: Arc::new(Semaphore::new(grant.max_concurrency.max(1) as usize)),
            tls: OnceLock::new(),
        })
    }

    /// The granted origin a request to `scheme://host:port` falls under, if any.
    fn granted(&self, scheme: &str, host: &str, port: u16) -> bool {
        self.grant.origins.iter().any(|origin| origin.allows(scheme, host, port))
    }

    /// The TLS client settings: ring, the system roots and the plugin's `http_ca_file`.
    fn tls(&self) -> Result<Arc<rustls::ClientConfig>, String> {
        self.tls.get_or_init(|| tls_config(self.grant.ca_pem.as_deref())).clone()
    }
}

fn tls_config(ca_pem: Option<&str>) -> Result<Arc<rustls::ClientConfig>, String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = crate::tls_roots::system_roots().clone();
    if let Some(pem) = ca_pem {
        for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
            let cert = cert.map_err(|e| format!("http_ca_file: {e}"))?;
            roots.add(cert).map_err(|e| format!("http_ca_file: {e}"))?;
        }
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

// --- one call ---------------------------------------------------------------------------------

/// Bytes (roughly: names and values plus the map's own entries) one `fields` resource of a
/// call may hold: request and response headers alike. Wasmtime's default is 128 KiB; 16 KiB is
/// twice what common proxies accept on the wire, and bounds the count of fields too (each
/// costs at least its in-memory entry).
pub const MAX_FIELDS_BYTES: usize = 16 << 10;
/// Header lines a response head may have, and bytes the head may take, before it is refused.
const MAX_RESPONSE_HEADERS: usize = 100;
const MAX_RESPONSE_HEAD_BYTES: usize = 64 << 10;
/// Answers a call may leave unread at once, in units of its `http_max_response_kib`: past
/// that, a new answer is refused until the call reads or drops one.
pub const UNREAD_ANSWERS_PER_CALL: usize = 4;
/// A read answer is handed to the guest in frames of this size: what the guest has begun to
/// read but not finished stays counted, but for one frame.
const FRAME_BYTES: usize = 16 << 10;
/// How often a plugin's outbound HTTP warnings (denials, refusals) reach the log at most;
/// those in between are counted and the count given with the next one.
pub const WARNING_EVERY: Duration = Duration::from_secs(10);
/// The `origin` label of every denied request in `/metrics`: the origin a plugin was denied
/// is its own choice, and must not make a series of its own.
pub const DENIED: &str = "denied";

/// One call's `wasi:http` state, kept in its store.
pub struct CallHttp {
    ctx: WasiHttpCtx,
    hooks: CallHooks,
}

/// What the host needs to send one call's requests: who asks, what it may reach, until when.
struct CallHooks {
    plugin: Arc<str>,
    http: Option<Arc<PluginHttp>>,
    deadline: Instant,
    traceparent: Option<String>,
    tracer: Option<Arc<Tracer>>,
    /// Bytes of answers read by the host and not yet taken by the guest.
    unread: Arc<AtomicUsize>,
}

impl CallHttp {
    /// The state of a call of `plugin` ending at `deadline`; `http` is `None` when nothing is
    /// granted (every request is then denied); `context` gives the trace each request joins.
    /// `unread` counts the answers the guest has not read: an instance that serves several
    /// calls keeps its count (it keeps the answers).
    pub fn new(
        plugin: Arc<str>,
        http: Option<Arc<PluginHttp>>,
        deadline: Instant,
        context: &super::CallContext,
        unread: Arc<AtomicUsize>,
    ) -> Self {
        let mut ctx = WasiHttpCtx::new();
        ctx.set_field_size_limit(MAX_FIELDS_BYTES);
        let (traceparent, tracer) = (context.traceparent.clone(), context.tracer.clone());
        CallHttp { ctx, hooks: CallHooks { plugin, http, deadline, traceparent, tracer, unread } }
    }

    /// The bytes of answers this call's guest holds unread (shared with the next call of the
    /// same instance).
    pub fn unread(&self) -> Arc<AtomicUsize> {
        self.hooks.unread.clone()
    }

    /// The view `wasi:http` works on; requests go through [`CallHooks`]'s allowlist.
    pub fn view<'a>(&'a mut self, table: &'a mut ResourceTable) -> WasiHttpCtxView<'a> {
        WasiHttpCtxView { ctx: &mut self.ctx, table, hooks: &mut self.hooks }
    }
}

/// `scheme://host[:port]` with the port only when it is not the scheme's default: how a
/// user writes the origin in the config.
fn display_origin(scheme: &str, host: &str, port: u16) -> String {
    match (scheme, port) {
        ("http", 80) | ("https", 443) => format!("{scheme}://{host}"),
        _ => format!("{scheme}://{host}:{port}"),
    }
}

type ResponseFuture = Box<dyn Future<Output = Result<(http::Response<WasiBody>, IoFuture), Error>> + Send>;
type IoFuture = Box<dyn Future<Output = Result<(), Error>> + Send>;

impl WasiHttpHooks for CallHooks {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        _fut: Box<dyn Future<Output = Result<(), Error>> + Send>,
    ) -> ResponseFuture {
        // The allowlist, before anything is sent: a denied request fails at once with the
        // standard `HTTP-request-denied` code, and is logged with the plugin and the origin.
        let Some((scheme, host, port)) = request_origin(request.uri()) else {
            return Box::new(async { Err(Error::HttpRequestUriInvalid) });
        };
        let plugin = self.plugin.clone();
        let http = match &self.http {
            Some(http) if http.granted(&scheme, &host, port) => http.clone(),
            _ => {
                let origin = display_origin(&scheme, &host, port);
                warn_limited(&plugin, || {
                    format!(
                        "outbound HTTP denied: plugin '{plugin}' may not call {}; grant it with http = [\"{origin}\"] in [plugin.{plugin}]",
                        super::output::sanitize(&origin)
                    )
                });
                stats().record(&plugin, DENIED, DENIED, None);
                return Box::new(async { Err(Error::HttpRequestDenied) });
            }
        };
        let exchange = Exchange {
            origin: format!("{scheme}://{host}:{port}"),
            tls: scheme == "https",
            host,
            port,
            plugin,
            http,
            deadline: self.deadline,
            traceparent: self.traceparent.clone(),
            tracer: self.tracer.clone(),
            unread: self.unread.clone(),
        };
        Box::new(exchange.run(request, options))
    }

    fn p2_error_from_hyper(&mut self, err: &hyper::Error) -> ErrorCode {
        tracing::debug!(plugin = %self.plugin, "outbound HTTP: {err}");
        ErrorCode::HttpProtocolError
    }

    fn p2_error_from_connect(&mut self, err: &std::io::Error) -> ErrorCode {
        tracing::debug!(plugin = %self.plugin, "outbound HTTP connect: {err}");
        ErrorCode::ConnectionRefused
    }

    fn p2_error_from_tls(&mut self, err: &std::io::Error) -> ErrorCode {
        tracing::debug!(plugin = %self.plugin, "outbound HTTP TLS: {err}");
        ErrorCode::TlsProtocolError
    }
}

/// One granted request, from the address check to the answer handed to the guest.
struct Exchange {
    plugin: Arc<str>,
    http: Arc<PluginHttp>,
    /// `scheme://host:port`, as counted in `/metrics`.
    origin: String,
    tls: bool,
    host: String,
    port: u16,
    deadline: Instant,
    traceparent: Option<String>,
    tracer: Option<Arc<Tracer>>,
    unread: Arc<AtomicUsize>,
}

impl Exchange {
    /// Sends the request and counts it. Nothing outlives the call: past its deadline the
    /// exchange is dropped (and with it the connection), whatever it was waiting for.
    async fn run(
        mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
    ) -> Result<(http::Response<WasiBody>, IoFuture), Error> {
        let started = Instant::now();
        // A CLIENT span, child of the call's: the request carries its traceparent.
        let parent = self.traceparent.as_deref().and_then(SpanContext::parse);
        let mut span = telemetry::span(self.tracer.as_ref(), request.method().as_str(), SpanKind::Client, parent);
        if let Some(span) = &mut span {
            self.traceparent = Some(span.traceparent());
            span.set("http.request.method", request.method().as_str());
            span.set("server.address", self.host.as_str());
            span.set("server.port", i64::from(self.port));
            span.set("url.full", format!("{}{}", self.origin, request.uri().path()));
        }
        let fetched = tokio::time::timeout_at(self.deadline.into(), self.fetch(request, options));
        let result = fetched.await.unwrap_or(Err(Error::HttpResponseTimeout));
        let status = match &result {
            Ok(response) => response.status().as_u16().to_string(),
            Err(error) => error_class(error).to_string(),
        };
        if let Some(span) = &mut span {
            match &result {
                Ok(response) => span.set("http.response.status_code", i64::from(response.status().as_u16())),
                Err(error) => span.fail(error.to_string()),
            }
        }
        stats().record(&self.plugin, &self.origin, &status, Some(started.elapsed()));
        match result {
            Ok(response) => Ok((response, Box::new(async { Ok(()) }) as IoFuture)),
            Err(error) => {
                self.explain(&error);
                Err(error)
            }
        }
    }

    /// The address check, the request, and the answer counted against the call's budget of
    /// unread answers.
    async fn fetch(
        &self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
    ) -> Result<http::Response<WasiBody>, Error> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        let within = options.and_then(|o| o.connect_timeout).map_or(left, |asked| asked.min(left));
        let to = match addresses(&self.host, self.port, within).await {
            Ok(to) => to,
            Err(Refusal::Internal(ips)) => {
                let plugin = &self.plugin;
                warn_limited(plugin, || {
                    format!(
                        "outbound HTTP denied: plugin '{plugin}' asked for {}, which resolves only to addresses of this host's own networks ({ips}); grant the address itself (http = [\"http://<ip>:<port>\"]) if that is meant",
                        self.origin
                    )
                });
                return Err(Error::DestinationIpProhibited);
            }
            Err(Refusal::Failed(error)) => return Err(error),
        };
        let response =
            send(request, options, &self.http, self.deadline, self.traceparent.clone(), self.tls, &self.host, &to)
                .await?;
        let (parts, body) = response.into_parts();
        let body = self.hold(body)?;
        Ok(http::Response::from_parts(parts, body))
    }

    /// The answer's body, counted as unread until the guest takes it; refused when the
    /// call's unread answers would pass their budget.
    fn hold(&self, body: Bytes) -> Result<WasiBody, Error> {
        let budget = self.http.grant.max_response_bytes.saturating_mul(UNREAD_ANSWERS_PER_CALL);
        let held = self.unread.fetch_add(body.len(), Ordering::SeqCst) + body.len();
        if held > budget {
            self.unread.fetch_sub(body.len(), Ordering::SeqCst);
            let plugin = &self.plugin;
            warn_limited(plugin, || {
                format!(
                    "outbound HTTP: plugin '{plugin}' holds {} bytes of answers it has not read; one more would pass the {budget} bytes a call may hold ({UNREAD_ANSWERS_PER_CALL} × http_max_response_kib): refused. Read or drop the answers",
                    held - body.len()
                )
            });
            return Err(Error::HttpResponseBodySize(Some(body.len() as u64)));
        }
        Ok(HeldBody { data: body, unread: self.unread.clone() }.boxed_unsync())
    }

    /// Says why a request failed: an answer over the cap as a warning, the rest at debug.
    fn explain(&self, error: &Error) {
        let (plugin, origin, cap) = (&self.plugin, &self.origin, self.http.grant.max_response_bytes);
        match error {
            Error::HttpResponseBodySize(size) if size.is_none_or(|size| size > cap as u64) => {
                warn_limited(plugin, || {
                    format!(
                        "outbound HTTP: an answer of {} bytes from {origin} is over the {cap} bytes a plugin may read (http_max_response_kib): refused",
                        size.map_or_else(|| "more".to_string(), |s| s.to_string()),
                    )
                })
            }
            error => tracing::debug!(plugin = %plugin, origin = %origin, %error, "outbound HTTP failed"),
        }
    }
}

/// An answer's body read by the host: counted in its call's unread bytes until the guest
/// takes it (frame by frame) or drops it.
struct HeldBody {
    data: Bytes,
    unread: Arc<AtomicUsize>,
}

impl Body for HeldBody {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Error>>> {
        if self.data.is_empty() {
            return std::task::Poll::Ready(None);
        }
        let take = self.data.len().min(FRAME_BYTES);
        let frame = self.data.split_to(take);
        self.unread.fetch_sub(take, Ordering::SeqCst);
        std::task::Poll::Ready(Some(Ok(http_body::Frame::data(frame))))
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_empty()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.data.len() as u64)
    }
}

impl Drop for HeldBody {
    fn drop(&mut self) {
        self.unread.fetch_sub(self.data.len(), Ordering::SeqCst);
    }
}

/// Logs a plugin's outbound HTTP warning unless one was logged less than [`WARNING_EVERY`]
/// ago; the ones held back are counted and the count given with the next.
fn warn_limited(plugin: &str, message: impl FnOnce() -> String) {
    static WARNINGS: OnceLock<WarningGate> = OnceLock::new();
    let gate = WARNINGS.get_or_init(WarningGate::default);
    if let Some(held_back) = gate.admit(plugin, Instant::now()) {
        let note = match held_back {
            0 => String::new(),
            n => format!(" ({n} more such warnings of this plugin held back since the last one)"),
        };
        tracing::warn!(plugin, "{}{note}", message());
    }
}

/// When each plugin's last warning was logged, and how many were held back since.
#[derive(Default)]
struct WarningGate {
    last: Mutex<std::collections::HashMap<String, (Instant, u64)>>,
}

impl WarningGate {
    /// `Some(held back since the last)` when a warning of `plugin` may be logged `now`.
    fn admit(&self, plugin: &str, now: Instant) -> Option<u64> {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        match last.get_mut(plugin) {
            Some((at, held)) if now.saturating_duration_since(*at) < WARNING_EVERY => {
                *held += 1;
                None
            }
            Some(entry) => Some(std::mem::replace(entry, (now, 0)).1),
            None => {
                last.insert(plugin.to_string(), (now, 0));
                Some(0)
            }
        }
    }
}

/// How a failed request is counted.
fn error_class(error: &Error) -> &'static str {
    match error {
        Error::HttpRequestDenied | Error::DestinationIpProhibited => "denied",
        Error::ConnectionTimeout | Error::ConnectionReadTimeout | Error::HttpResponseTimeout | Error::DnsTimeout => {
            "timeout"
        }
        Error::Connect(_) | Error::ConnectionRefused | Error::DnsError { .. } => "unreachable",
        Error::Tls(_) | Error::TlsCertificateError | Error::TlsProtocolError => "tls",
        Error::ConnectionLimitReached => "busy",
        Error::HttpResponseBodySize(_) => "too_large",
        _ => "error",
    }
}

/// Sends one granted request on a connection of its own and reads the whole answer: connect
/// to the checked addresses `to` (TLS for `https`, checked against `host`), write the request with `traceparent`, read the head and then the body
/// up to the plugin's cap. Every wait is bounded by what is left until `deadline` (and by
/// shorter timeouts the guest asked for); the connection is closed when this returns.
///
/// The body is read by the host, not streamed to the guest: a body over the cap is refused
/// with `HTTP-response-body-size` where the guest asks for the response, the same in every
/// guest language, whether its length was declared or not.
#[allow(clippy::too_many_arguments)]
async fn send(
    mut request: http::Request<WasiBody>,
    options: Option<RequestOptions>,
    http: &PluginHttp,
    deadline: Instant,
    traceparent: Option<String>,
    tls: bool,
    host: &str,
    to: &[SocketAddr],
) -> Result<http::Response<Bytes>, Error> {
    let left = || deadline.saturating_duration_since(Instant::now());
    let bounded = |asked: Option<Duration>| asked.map_or_else(left, |asked| asked.min(left()));
    let options = options.unwrap_or_default();

    // The plugin's requests in flight, across all its calls: wait for a slot until the deadline.
    let _slot = tokio::time::timeout(left(), http.in_flight.clone().acquire_owned())
        .await
        .map_err(|_| Error::ConnectionLimitReached)?
        .map_err(|_| Error::ConnectionLimitReached)?;

    let stream = match tokio::time::timeout(bounded(options.connect_timeout), tokio::net::TcpStream::connect(to)).await
    {
        Ok(stream) => stream.map_err(Error::Connect)?,
        Err(_) => return Err(Error::ConnectionTimeout),
    };
    let _ = stream.set_nodelay(true);
    let io: Box<dyn Io> = if tls {
        let config = http.tls().map_err(|reason| Error::InternalError(Some(reason)))?;
        let name = host.trim_start_matches('[').trim_end_matches(']');
        let server = rustls::pki_types::ServerName::try_from(name.to_string())
            .map_err(|e| Error::DnsError { rcode: Some(e.to_string()), info_code: None })?;
        let connector = tokio_rustls::TlsConnector::from(config);
        match tokio::time::timeout(bounded(options.connect_timeout), connector.connect(server, stream)).await {
            Ok(Ok(stream)) => Box::new(stream),
            Ok(Err(error)) => return Err(Error::Tls(error)),
            Err(_) => return Err(Error::ConnectionTimeout),
        }
    } else {
        Box::new(stream)
    };
    let (mut sender, connection) = hyper::client::conn::http1::Builder::new()
        .max_headers(MAX_RESPONSE_HEADERS)
        .max_buf_size(MAX_RESPONSE_HEAD_BYTES)
        .handshake(wasmtime_wasi_http::io::TokioIo::new(io))
        .await
        .map_err(Error::Hyper)?;
    // The connection's I/O is driven in this same task (no task of its own to wake), and
    // closed when this returns.
    let mut connection = Connection { io: Box::pin(connection), closed: false };

    // On the wire the request line carries the path only; the host is in `Host`.
    let path = request.uri().path_and_query().map_or("/", |p| p.as_str()).to_string();
    *request.uri_mut() = http::Uri::builder().path_and_query(path).build().map_err(|_| Error::HttpRequestUriInvalid)?;
    let traceparent = traceparent.or_else(|| request.headers().get(TRACEPARENT).is_none().then(new_traceparent));
    if let Some(value) = traceparent.and_then(|t| http::HeaderValue::from_str(&t).ok()) {
        request.headers_mut().insert(TRACEPARENT, value);
    }

    let first_byte = tokio::time::timeout(bounded(options.first_byte_timeout), sender.send_request(request));
    let response = match connection.drive(first_byte).await {
        Ok(Ok(response)) => response,
        Ok(Err(error)) if error.is_timeout() => return Err(Error::HttpResponseTimeout),
        Ok(Err(error)) => return Err(Error::Hyper(error)),
        Err(_) => return Err(Error::ConnectionReadTimeout),
    };
    let cap = http.grant.max_response_bytes as u64;
    let (parts, mut body) = response.into_parts();
    if let Some(declared) = body.size_hint().exact().filter(|&len| len > cap) {
        return Err(Error::HttpResponseBodySize(Some(declared)));
    }
    let between = options.between_bytes_timeout;
    let read = connection
        .drive(async {
            let mut read = bytes::BytesMut::new();
            loop {
                let frame = match tokio::time::timeout(bounded(between), body.frame()).await {
                    Ok(Some(Ok(frame))) => frame,
                    Ok(Some(Err(error))) if error.is_timeout() => return Err(Error::HttpResponseTimeout),
                    Ok(Some(Err(error))) => return Err(Error::Hyper(error)),
                    Ok(None) => return Ok(read.freeze()),
                    Err(_) => return Err(Error::HttpResponseTimeout),
                };
                if let Ok(data) = frame.into_data() {
                    if read.len() as u64 + data.len() as u64 > cap {
                        return Err(Error::HttpResponseBodySize(Some(read.len() as u64 + data.len() as u64)));
                    }
                    read.extend_from_slice(&data);
                }
            }
        })
        .await?;
    Ok(http::Response::from_parts(parts, read))
}

/// A client connection's I/O (hyper's `Connection` future), polled by whoever waits on it.
struct Connection<C> {
    io: std::pin::Pin<Box<C>>,
    closed: bool,
}

impl<C: Future> Connection<C> {
    /// Runs `work` (a request, a body read) while driving the connection's I/O in the same
    /// task. A connection that ends makes `work` fail or finish on its own.
    async fn drive<T>(&mut self, work: impl Future<Output = T>) -> T {
        let mut work = std::pin::pin!(work);
        std::future::poll_fn(|cx| {
            if let std::task::Poll::Ready(done) = work.as_mut().poll(cx) {
                return std::task::Poll::Ready(done);
            }
            if !self.closed && self.io.as_mut().poll(cx).is_ready() {
                self.closed = true;
                return work.as_mut().poll(cx);
            }
            std::task::Poll::Pending
        })
        .await
    }
}

trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static> Io for T {}

// --- metrics ----------------------------------------------------------------------------------

/// Upper bounds (seconds) of the outbound latency histogram.
pub const HTTP_BUCKETS: [f64; 12] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0];

/// Outbound requests, counted by plugin, origin and status (an HTTP status code, or
/// `denied`, `timeout`, `unreachable`, `tls`, `too_large`, `busy`, `error`), and their
/// latency (request sent to body read, or to the failure) by plugin and origin.
#[derive(Default)]
pub struct HttpStats {
    requests: Mutex<BTreeMap<(String, String, String), u64>>,
    latency: Mutex<BTreeMap<(String, String), Latency>>,
}

/// One latency histogram.
#[derive(Default, Clone)]
pub struct Latency {
    pub buckets: [u64; HTTP_BUCKETS.len()],
    pub count: u64,
    pub sum: f64,
}

impl HttpStats {
    fn record(&self, plugin: &str, origin: &str, status: &str, took: Option<Duration>) {
        let key = (plugin.to_string(), origin.to_string(), status.to_string());
        *self.requests.lock().expect("http stats lock").entry(key).or_default() += 1;
        if let Some(took) = took {
            let seconds = took.as_secs_f64();
            let mut latency = self.latency.lock().expect("http stats lock");
            let entry = latency.entry((plugin.to_string(), origin.to_string())).or_default();
            for (bucket, bound) in entry.buckets.iter_mut().zip(HTTP_BUCKETS) {
                if seconds <= bound {
                    *bucket += 1;
                }
            }
            entry.count += 1;
            entry.sum += seconds;
        }
    }

    /// Requests so far: `((plugin, origin, status), count)`.
    pub fn requests(&self) -> Vec<((String, String, String), u64)> {
        self.requests.lock().expect("http stats lock").iter().map(|(k, v)| (k.clone(), *v)).collect()
    }

    /// Latency histograms so far: `((plugin, origin), histogram)`.
    pub fn latency(&self) -> Vec<((String, String), Latency)> {
        self.latency.lock().expect("http stats lock").iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }
}

/// The process's outbound HTTP numbers (one sandbox per process, like the engine's ticker).
pub fn stats() -> &'static HttpStats {
    static STATS: OnceLock<HttpStats> = OnceLock::new();
    STATS.get_or_init(HttpStats::default)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origin(text: &str) -> Origin {
        Origin::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    #[test]
    fn origins_check_scheme_host_and_port() {
        let api = origin("https://api.example.com");
        assert!(api.allows("https", "api.example.com", 443));
        assert!(api.allows("HTTPS", "API.example.com.", 443), "case and a trailing dot do not matter");
        assert!(!api.allows("http", "api.example.com", 443), "another scheme");
        assert!(!api.allows("https", "api.example.com", 8443), "another port");
        assert!(!api.allows("https", "evil.api.example.com", 443), "a subdomain is another origin");
        assert!(!api.allows("https", "api.example.com.evil.net", 443));

        let local = origin("http://127.0.0.1:8080/");
        assert!(local.allows("http", "127.0.0.1", 8080));
        assert!(!local.allows("http", "127.0.0.1", 80));
        assert!(!local.allows("http", "localhost", 8080), "names are not resolved");
        assert!(origin("http://example.com").allows("http", "example.com", 80), "default port by scheme");
        assert!(origin("http://[::1]:9000").allows("http", "[::1]", 9000));
    }

    #[test]
    fn a_wildcard_opens_subdomains_only() {
        let any = origin("https://*.example.com");
        assert!(any.allows("https", "api.example.com", 443));
        assert!(any.allows("https", "a.b.example.com", 443));
        assert!(!any.allows("https", "example.com", 443), "the domain itself is not a subdomain");
        assert!(!any.allows("https", "badexample.com", 443));
        assert!(!any.allows("http", "api.example.com", 80));
        assert_eq!(any.to_string(), "https://*.example.com:443");
    }

    #[test]
    fn request_origins_fill_in_the_default_port() {
        let origin = |uri: &str| request_origin(&uri.parse().unwrap());
        assert_eq!(origin("https://API.example.com/x?y"), Some(("https".into(), "api.example.com".into(), 443)));
        assert_eq!(origin("http://127.0.0.1:8080/"), Some(("http".into(), "127.0.0.1".into(), 8080)));
        assert_eq!(display_origin("http", "127.0.0.1", 8080), "http://127.0.0.1:8080");
        assert_eq!(display_origin("https", "api.example.com", 443), "https://api.example.com");
    }

    /// An HTTPS server on 127.0.0.1 answering every request with 200 "ok" (one connection at a time).
    async fn tls_server(cert_pem: &str, key_pem: &str) -> u16 {
        use tokio::io::AsyncWriteExt;
        let acceptor = tokio_rustls::TlsAcceptor::from(crate::test_tls::server_config(cert_pem, key_pem));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let Ok(mut tls) = acceptor.accept(stream).await else { continue };
                read_request_head(&mut tls).await;
                let _ = tls.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok").await;
                let _ = tls.shutdown().await;
            }
        });
        port
    }

    fn get(url: &str) -> http::Request<WasiBody> {
        let body = http_body_util::Empty::<Bytes>::new().map_err(|never| match never {}).boxed_unsync();
        http::Request::get(url).body(body).unwrap()
    }

    #[tokio::test]
    async fn https_trusts_the_system_roots_plus_the_plugins_ca_file() {
        let dir = std::env::temp_dir().join(format!("warren-http-tls-{}", std::process::id()));
        let made = crate::test_tls::test_certificates(&dir);
        let _ = std::fs::remove_dir_all(&dir);
        let (ca, cert, key) = made.expect(
            "this test needs `openssl` on PATH to make a test CA (`apt-get install openssl`; .ci/run installs it)",
        );
        let port = tls_server(&cert, &key).await;
        let url = format!("https://127.0.0.1:{port}/price/A1");
        let deadline = Instant::now() + Duration::from_secs(5);
        let origin = Origin::parse(&format!("https://127.0.0.1:{port}")).unwrap();
        let grant =
            |ca_pem: Option<String>| HttpGrant { origins: vec![origin.clone()], ca_pem, ..HttpGrant::default() };

        let private = PluginHttp::new(&grant(Some(ca)));
        let to = [SocketAddr::from(([127, 0, 0, 1], port))];
        let response = send(get(&url), None, &private, deadline, None, true, "127.0.0.1", &to).await.unwrap();
        assert_eq!((response.status().as_u16(), response.body().as_ref()), (200, &b"ok"[..]));

        let system_only = PluginHttp::new(&grant(None));
        let refused = send(get(&url), None, &system_only, deadline, None, true, "127.0.0.1", &to).await;
        assert!(matches!(refused, Err(Error::Tls(_))), "a certificate no root vouches for is refused: {refused:?}");
    }

    #[test]
    fn wildcards_never_cover_ip_addresses() {
        let error = Origin::parse("http://*.0.0.1").unwrap_err();
        assert!(error.contains("numeric labels") && error.contains("grant each address literally"), "{error}");
        assert!(Origin::parse("https://*.168.1.1:8080").is_err());
        let numeric_tail = Origin { scheme: "http".into(), host: ".0.0.1".into(), wildcard: true, port: 80 };
        assert!(!numeric_tail.allows("http", "127.0.0.1", 80), "a wildcard never matches an IP literal");
    }

    #[test]
    fn internal_addresses_are_told_from_public_ones() {
        let internal = [
            "127.0.0.1",
            "127.8.9.10",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "255.255.255.255",
            "::1",
            "::",
            "fe80::1",
            "fc00::1",
            "fd12:3456::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "::ffff:10.0.0.1",
            "::127.0.0.1",
            "64:ff9b::10.0.0.1",
        ];
        for ip in internal {
            assert!(is_internal(ip.parse().unwrap()), "{ip} is internal");
        }
        for ip in ["93.184.216.34", "172.32.0.1", "8.8.8.8", "2606:2800:220:1::1", "::ffff:8.8.8.8", "64:ff9b::8.8.8.8"]
        {
            assert!(!is_internal(ip.parse().unwrap()), "{ip} is public");
        }
    }

    /// Reads a request up to the end of its head; `false` when the client went first.
    async fn read_request_head(stream: &mut (impl tokio::io::AsyncRead + Unpin)) -> bool {
        use tokio::io::AsyncReadExt;
        let mut seen = Vec::new();
        let mut buf = [0u8; 1024];
        while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return false,
                Ok(n) => seen.extend_from_slice(&buf[..n]),
            }
        }
        true
    }

    /// A plain HTTP server on 127.0.0.1 answering every request with `body_len` bytes; counts
    /// the connections it accepted.
    async fn plain_server(body_len: usize) -> (u16, Arc<AtomicUsize>) {
        use tokio::io::AsyncWriteExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = Arc::new(AtomicUsize::new(0));
        let counted = accepted.clone();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                counted.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    if !read_request_head(&mut stream).await {
                        return;
                    }
                    let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {body_len}\r\nconnection: close\r\n\r\n");
                    let _ = stream.write_all(head.as_bytes()).await;
                    let _ = stream.write_all(&vec![b'x'; body_len]).await;
                });
            }
        });
        (port, accepted)
    }

    /// One call's hooks for `plugin`, granted `origins` with answers of at most `max_response_bytes`.
    fn call_hooks(plugin: &str, origins: &[&str], max_response_bytes: usize) -> CallHooks {
        let grant = HttpGrant {
            origins: origins.iter().map(|o| origin(o)).collect(),
            max_response_bytes,
            ..HttpGrant::default()
        };
        let http = (!origins.is_empty()).then(|| PluginHttp::new(&grant));
        let deadline = Instant::now() + Duration::from_secs(5);
        CallHooks { plugin: plugin.into(), http, deadline, traceparent: None, tracer: None, unread: Arc::default() }
    }

    async fn request(hooks: &mut CallHooks, url: &str) -> Result<http::Response<WasiBody>, Error> {
        let sent = hooks.send_request(get(url), None, Box::new(async { Ok(()) }));
        std::pin::Pin::from(sent).await.map(|(response, _io)| response)
    }

    #[tokio::test]
    async fn a_granted_name_that_resolves_to_this_hosts_networks_is_refused() {
        let (port, accepted) = plain_server(2).await;
        let mut hooks = call_hooks("resolver", &[&format!("http://localhost:{port}")], 1024);
        let refused = request(&mut hooks, &format!("http://localhost:{port}/")).await;
        assert!(matches!(refused, Err(Error::DestinationIpProhibited)), "{refused:?}");
        assert!(matches!(addresses("localhost", port, Duration::from_secs(2)).await, Err(Refusal::Internal(_))));

        // The same server granted by its IP, literally: allowed.
        let mut literal = call_hooks("resolver", &[&format!("http://127.0.0.1:{port}")], 1024);
        let response = request(&mut literal, &format!("http://127.0.0.1:{port}/")).await.expect("a literal grant");
        assert_eq!(response.status(), 200);
        assert_eq!(accepted.load(Ordering::SeqCst), 1, "only the literal grant connected");
    }

    #[tokio::test]
    async fn answers_left_unread_are_held_within_the_calls_budget() {
        let (port, _) = plain_server(1024).await;
        let url = format!("http://127.0.0.1:{port}/");
        let mut hooks = call_hooks("hoarder", &[&format!("http://127.0.0.1:{port}")], 1024);
        let mut held = Vec::new();
        for _ in 0..UNREAD_ANSWERS_PER_CALL {
            held.push(request(&mut hooks, &url).await.expect("within the budget"));
        }
        assert_eq!(hooks.unread.load(Ordering::SeqCst), UNREAD_ANSWERS_PER_CALL * 1024);
        let refused = request(&mut hooks, &url).await;
        assert!(matches!(refused, Err(Error::HttpResponseBodySize(Some(1024)))), "{refused:?}");

        // An answer read to its end frees its share; one dropped unread too.
        let read = held.pop().unwrap().into_body().collect().await.unwrap().to_bytes();
        assert_eq!(read.len(), 1024);
        drop(held.pop());
        assert_eq!(hooks.unread.load(Ordering::SeqCst), (UNREAD_ANSWERS_PER_CALL - 2) * 1024);
        request(&mut hooks, &url).await.expect("room again");
    }

    #[tokio::test]
    async fn denied_origins_share_one_metrics_label() {
        let mut hooks = call_hooks("chooser-of-origins", &[], 1024);
        for i in 0..20 {
            let denied = request(&mut hooks, &format!("http://h{i}.example.com:{}/", 1000 + i)).await;
            assert!(matches!(denied, Err(Error::HttpRequestDenied)), "{denied:?}");
        }
        let series: Vec<_> =
            stats().requests().into_iter().filter(|((plugin, ..), _)| plugin == "chooser-of-origins").collect();
        let one = (("chooser-of-origins".to_string(), DENIED.to_string(), DENIED.to_string()), 20);
        assert_eq!(series, [one]);
    }

    #[test]
    fn denial_warnings_are_one_per_plugin_per_period_with_a_count() {
        let gate = WarningGate::default();
        let start = Instant::now();
        assert_eq!(gate.admit("p", start), Some(0));
        for i in 1..1000 {
            assert_eq!(gate.admit("p", start + Duration::from_millis(i)), None, "held back");
        }
        assert_eq!(gate.admit("other", start), Some(0), "each plugin has its own");
        assert_eq!(gate.admit("p", start + WARNING_EVERY), Some(999), "the next says how many were held back");
        assert_eq!(gate.admit("p", start + WARNING_EVERY), None);
    }

    #[test]
    fn fields_are_capped_in_size_and_count() {
        use wasmtime_wasi_http::p2::bindings::http::types::HostFields;
        let mut table = ResourceTable::new();
        let mut http = CallHttp::new("p".into(), None, Instant::now(), &Default::default(), Arc::default());
        let mut view = http.view(&mut table);
        let big = view.from_list(vec![("big".into(), vec![b'x'; 64 << 10])]);
        assert!(big.is_err(), "one 64 KiB field is over the cap");
        let many: Vec<(String, Vec<u8>)> = (0..1000).map(|i| (format!("h{i}"), b"v".to_vec())).collect();
        assert!(view.from_list(many).is_err(), "a thousand small fields are over the cap");
        let fine: Vec<(String, Vec<u8>)> = (0..20).map(|i| (format!("h{i}"), vec![b'v'; 100])).collect();
        assert!(view.from_list(fine).is_ok(), "ordinary headers fit");
    }

    #[test]
    fn traceparents_are_well_formed() {
        let t = new_traceparent();
        let parts: Vec<&str> = t.split('-').collect();
        assert_eq!(parts.len(), 4, "{t}");
        assert_eq!((parts[0], parts[1].len(), parts[2].len(), parts[3]), ("00", 32, 16, "01"));
    }
}
