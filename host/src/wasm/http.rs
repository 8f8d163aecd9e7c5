//! Outbound HTTP for plugins: `wasi:http/outgoing-handler` behind a per-plugin allowlist.
//!
//! - [`Origin`]: one granted origin (`https://api.example.com`, `https://*.example.com`,
//!   `http://127.0.0.1:8080`), as Spin's `allowed_outbound_hosts` spells them: the scheme and
//!   the port are checked (the default port by scheme when none is written), `*.` stands
//!   for any subdomain (never the domain itself). A pure rule, used by the config too.
//! - [`PluginHttp`]: what every call of one loaded plugin shares: its grant, the cap on its
//!   requests in flight, its TLS settings (rustls with the ring provider, the system roots
//!   plus `http_ca_file`).
//! - [`CallHttp`]: one call's `wasi:http` state. A request to an origin not granted fails in
//!   the guest with the standard `HTTP-request-denied` error code (when the guest asks for the response: the
//!   request never leaves the host), and is logged
//!   with the plugin and the origin. A granted one is sent by the host itself
//!   ([`WasiHttpHooks::send_request`]): `traceparent` added, connect and first-byte timeouts
//!   taken from what is left of the call's deadline, the response body read whole by the
//!   host up to the plugin's cap, and nothing of it outliving the deadline (every wait is
//!   bounded by it, and the exchange is dropped with the call's store).
//! - [`HttpStats`]: requests by plugin, origin and status, and their latency, for `/metrics`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body::Body;
use http_body_util::{BodyExt, Full};
use tokio::sync::Semaphore;
use wasmtime::component::ResourceTable;
use wasmtime_wasi_http::p2::bindings::http::types::ErrorCode;
use wasmtime_wasi_http::{Error, RequestOptions, WasiBody, WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks};

use crate::config::HttpGrant;

/// The `traceparent` header (W3C trace context), sent on every request.
pub const TRACEPARENT: &str = "traceparent";

// --- origins --------------------------------------------------------------------------------

/// One origin a plugin may call: a scheme, a host (or every subdomain of a domain) and a port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// `http` or `https`.
    pub scheme: String,
    /// The host, lowercase; for `*.example.com`, `.example.com`.
    host: String,
    /// Whether `host` is a `*.` suffix.
    wildcard: bool,
    /// The port, written or the scheme's default.
    pub port: u16,
}

impl Origin {
    /// Parses an origin as written in `http = [...]`; the error says what is wrong in one
    /// line, with the fix.
    pub fn parse(text: &str) -> Result<Origin, String> {
        let Some((scheme, rest)) = text.split_once("://") else {
            return Err(format!("'{text}' is not an origin: write it like \"https://api.example.com\""));
        };
        let scheme = scheme.to_ascii_lowercase();
        let default_port = match scheme.as_str() {
            "http" => 80,
            "https" => 443,
            _ => return Err(format!("'{text}': the scheme must be http or https")),
        };
        let authority = rest.strip_suffix('/').unwrap_or(rest);
        if authority.contains(['/', '?', '#']) {
            return Err(format!(
                "'{text}': an origin has no path or query; grant \"{scheme}://{}\"",
                authority.split(['/', '?', '#']).next().unwrap_or_default()
            ));
        }
        if authority.contains('@') {
            return Err(format!("'{text}': an origin carries no user or password"));
        }
        let (host, port) =
            split_host_port(authority).ok_or_else(|| format!("'{text}': the port must be 1 to 65535"))?;
        let port = port.unwrap_or(default_port);
        let host = host.to_ascii_lowercase();
        if host.is_empty() {
            return Err(format!("'{text}' names no host"));
        }
        let (host, wildcard) = match host.strip_prefix("*.") {
            Some(domain) => (format!(".{domain}"), true),
            None => (host, false),
        };
        let name = host.trim_start_matches('.');
        if host.contains('*') || name.is_empty() {
            return Err(format!(
                "'{text}': '*' may only open the host, as \"{scheme}://*.example.com\" (every subdomain); grant origins one by one"
            ));
        }
        let ip_literal = name.starts_with('[') && name.ends_with(']');
        if !ip_literal
            && !name
                .split('.')
                .all(|label| !label.is_empty() && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'))
        {
            return Err(format!("'{text}': '{name}' is not a host name or an IP address"));
        }
        if wildcard && ip_literal {
            return Err(format!("'{text}': '*.' applies to domain names, not IP addresses"));
        }
        Ok(Origin { scheme, host, wildcard, port })
    }

    /// Whether a request to `scheme://host:port` is to this origin.
    pub fn allows(&self, scheme: &str, host: &str, port: u16) -> bool {
        if !scheme.eq_ignore_ascii_case(&self.scheme) || port != self.port {
            return false;
        }
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        if self.wildcard { host.len() > self.host.len() && host.ends_with(&self.host) } else { host == self.host }
    }
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let star = if self.wildcard { "*" } else { "" };
        write!(f, "{}://{star}{}:{}", self.scheme, self.host, self.port)
    }
}

/// `host[:port]` (IPv6 literals in brackets) → the host and the port, if one is written;
/// `None` for a port that is not 1..=65535.
fn split_host_port(authority: &str) -> Option<(&str, Option<u16>)> {
    let (host, port) = match authority.rfind(':') {
        Some(i) if !authority[i..].contains(']') => (&authority[..i], Some(&authority[i + 1..])),
        _ => (authority, None),
    };
    match port {
        None => Some((host, None)),
        Some(port) => port.parse::<u16>().ok().filter(|p| *p != 0).map(|p| (host, Some(p))),
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

/// The system's trusted roots, read once per process.
fn system_roots() -> &'static rustls::RootCertStore {
    static ROOTS: OnceLock<rustls::RootCertStore> = OnceLock::new();
    ROOTS.get_or_init(|| {
        let found = rustls_native_certs::load_native_certs();
        for error in &found.errors {
            tracing::warn!(%error, "outbound HTTP: a system root certificate could not be read");
        }
        let mut roots = rustls::RootCertStore::empty();
        let (added, ignored) = roots.add_parsable_certificates(found.certs);
        tracing::debug!(added, ignored, "outbound HTTP: system root certificates loaded");
        roots
    })
}

fn tls_config(ca_pem: Option<&str>) -> Result<Arc<rustls::ClientConfig>, String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = system_roots().clone();
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
}

impl CallHttp {
    /// The state of a call of `plugin` ending at `deadline`; `http` is `None` when nothing is
    /// granted (every request is then denied).
    pub fn new(
        plugin: Arc<str>,
        http: Option<Arc<PluginHttp>>,
        deadline: Instant,
        traceparent: Option<String>,
    ) -> Self {
        CallHttp { ctx: WasiHttpCtx::new(), hooks: CallHooks { plugin, http, deadline, traceparent } }
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
        let (plugin, deadline) = (self.plugin.clone(), self.deadline);
        // The allowlist, before anything is sent: a denied request fails at once with the
        // standard `HTTP-request-denied` code, and is logged with the plugin and the origin.
        let Some((scheme, host, port)) = request_origin(request.uri()) else {
            return Box::new(async { Err(Error::HttpRequestUriInvalid) });
        };
        let origin = format!("{scheme}://{host}:{port}");
        let http = match &self.http {
            Some(http) if http.granted(&scheme, &host, port) => http.clone(),
            _ => {
                tracing::warn!(
                    plugin = %plugin,
                    origin = %origin,
                    "outbound HTTP denied: plugin '{plugin}' may not call {origin}; grant it with http = [\"{}\"] in [plugin.{plugin}]",
                    display_origin(&scheme, &host, port)
                );
                stats().record(&plugin, &origin, "denied", None);
                return Box::new(async { Err(Error::HttpRequestDenied) });
            }
        };
        let traceparent = self.traceparent.clone();
        Box::new(async move {
            let started = Instant::now();
            let exchange = send(request, options, &http, deadline, traceparent, scheme == "https", &host, port);
            // Nothing outlives the call: past its deadline the exchange is dropped (and with
            // it the connection), whatever it was waiting for.
            let result =
                tokio::time::timeout_at(deadline.into(), exchange).await.unwrap_or(Err(Error::HttpResponseTimeout));
            let status = match &result {
                Ok(response) => response.status().as_u16().to_string(),
                Err(error) => error_class(error).to_string(),
            };
            stats().record(&plugin, &origin, &status, Some(started.elapsed()));
            match result {
                Ok(response) => {
                    let response = response.map(|body| Full::new(body).map_err(|never| match never {}).boxed_unsync());
                    Ok((response, Box::new(async { Ok(()) }) as IoFuture))
                }
                Err(error) => {
                    match &error {
                        Error::HttpResponseBodySize(size) => tracing::warn!(
                            plugin = %plugin,
                            origin = %origin,
                            "outbound HTTP: an answer of {} bytes is over the {} bytes a plugin may read (http_max_response_kib): refused",
                            size.map_or_else(|| "more".to_string(), |s| s.to_string()),
                            http.grant.max_response_bytes
                        ),
                        error => tracing::debug!(plugin = %plugin, origin = %origin, %error, "outbound HTTP failed"),
                    }
                    Err(error)
                }
            }
        })
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

/// How a failed request is counted.
fn error_class(error: &Error) -> &'static str {
    match error {
        Error::HttpRequestDenied => "denied",
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
/// (TLS for `https`), write the request with `traceparent`, read the head and then the body
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
    port: u16,
) -> Result<http::Response<Bytes>, Error> {
    let left = || deadline.saturating_duration_since(Instant::now());
    let bounded = |asked: Option<Duration>| asked.map_or_else(left, |asked| asked.min(left()));
    let options = options.unwrap_or_default();

    // The plugin's requests in flight, across all its calls: wait for a slot until the deadline.
    let _slot = tokio::time::timeout(left(), http.in_flight.clone().acquire_owned())
        .await
        .map_err(|_| Error::ConnectionLimitReached)?
        .map_err(|_| Error::ConnectionLimitReached)?;

    let address = if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    let stream =
        match tokio::time::timeout(bounded(options.connect_timeout), tokio::net::TcpStream::connect(&address)).await {
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
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(wasmtime_wasi_http::io::TokioIo::new(io)).await.map_err(Error::Hyper)?;
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

/// A fresh W3C `traceparent` (version 00, sampled) for a request whose message had none.
fn new_traceparent() -> String {
    let trace = uuid::Uuid::new_v4().simple().to_string();
    let span = &uuid::Uuid::new_v4().simple().to_string()[..16];
    format!("00-{trace}-{span}-01")
}

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
    fn bad_origins_say_what_is_wrong() {
        let error = |text: &str| Origin::parse(text).unwrap_err();
        assert!(error("api.example.com").contains("write it like \"https://api.example.com\""));
        assert!(error("ftp://example.com").contains("scheme must be http or https"));
        assert!(error("https://example.com/v1").contains("grant \"https://example.com\""));
        assert!(error("https://example.com:0").contains("port must be 1 to 65535"));
        assert!(error("https://example.com:99999").contains("port must be 1 to 65535"));
        assert!(error("https://*").contains("grant origins one by one"));
        assert!(error("https://api.*.com").contains("'*' may only open the host"));
        assert!(error("https://user:pw@example.com").contains("no user or password"));
        assert!(error("https://exa mple.com").contains("not a host name"));
        assert!(error("https://").contains("names no host"));
        assert!(error("https://*.[::1]").contains("not IP addresses"));
    }

    #[test]
    fn request_origins_fill_in_the_default_port() {
        let origin = |uri: &str| request_origin(&uri.parse().unwrap());
        assert_eq!(origin("https://API.example.com/x?y"), Some(("https".into(), "api.example.com".into(), 443)));
        assert_eq!(origin("http://127.0.0.1:8080/"), Some(("http".into(), "127.0.0.1".into(), 8080)));
        assert_eq!(display_origin("http", "127.0.0.1", 8080), "http://127.0.0.1:8080");
        assert_eq!(display_origin("https", "api.example.com", 443), "https://api.example.com");
    }

    /// A CA and a server certificate for 127.0.0.1 made with `openssl` in `dir`: `(ca.pem,
    /// server.pem, server.key)`; `None` without openssl.
    fn test_certificates(dir: &std::path::Path) -> Option<(String, String, String)> {
        let openssl = |args: &[&str]| {
            std::process::Command::new("openssl")
                .args(args)
                .current_dir(dir)
                .stderr(std::process::Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        };
        std::fs::create_dir_all(dir).ok()?;
        std::fs::write(dir.join("san.cnf"), "subjectAltName = IP:127.0.0.1\n").ok()?;
        let made = openssl(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-sha256",
            "-days",
            "2",
            "-subj",
            "/CN=warren test CA",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
        ]) && openssl(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-sha256",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
        ]) && openssl(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-sha256",
            "-extfile",
            "san.cnf",
            "-out",
            "server.pem",
        ]);
        let read = |f: &str| std::fs::read_to_string(dir.join(f)).ok();
        if made { Some((read("ca.pem")?, read("server.pem")?, read("server.key")?)) } else { None }
    }

    /// An HTTPS server on 127.0.0.1 answering every request with 200 "ok" (one connection at a time).
    async fn tls_server(cert_pem: &str, key_pem: &str) -> u16 {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let certs: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(cert_pem.as_bytes()).collect::<Result<_, _>>().unwrap();
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).unwrap();
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let Ok(mut tls) = acceptor.accept(stream).await else { continue };
                let mut seen = Vec::new();
                let mut buf = [0u8; 1024];
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tls.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
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
        let Some((ca, cert, key)) = test_certificates(&dir) else {
            eprintln!("skipped: no openssl to make a test CA");
            return;
        };
        let _ = std::fs::remove_dir_all(&dir);
        let port = tls_server(&cert, &key).await;
        let url = format!("https://127.0.0.1:{port}/price/A1");
        let deadline = Instant::now() + Duration::from_secs(5);
        let origin = Origin::parse(&format!("https://127.0.0.1:{port}")).unwrap();
        let grant =
            |ca_pem: Option<String>| HttpGrant { origins: vec![origin.clone()], ca_pem, ..HttpGrant::default() };

        let private = PluginHttp::new(&grant(Some(ca)));
        let response = send(get(&url), None, &private, deadline, None, true, "127.0.0.1", port).await.unwrap();
        assert_eq!((response.status().as_u16(), response.body().as_ref()), (200, &b"ok"[..]));

        let system_only = PluginHttp::new(&grant(None));
        let refused = send(get(&url), None, &system_only, deadline, None, true, "127.0.0.1", port).await;
        assert!(matches!(refused, Err(Error::Tls(_))), "a certificate no root vouches for is refused: {refused:?}");
    }

    #[test]
    fn traceparents_are_well_formed() {
        let t = new_traceparent();
        let parts: Vec<&str> = t.split('-').collect();
        assert_eq!(parts.len(), 4, "{t}");
        assert_eq!((parts[0], parts[1].len(), parts[2].len(), parts[3]), ("00", 32, 16, "01"));
    }
}
