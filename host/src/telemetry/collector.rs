//! The collector spans are POSTed to: its URL (`http://` or `https://`), the headers every
//! export carries (OpenTelemetry's `OTEL_EXPORTER_OTLP_HEADERS` and
//! `OTEL_EXPORTER_OTLP_TRACES_HEADERS`: how hosted backends take an API key), and for
//! `https://` the TLS client settings — the system's roots, plus the CA of
//! `OTEL_EXPORTER_OTLP_CERTIFICATE` / `OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE` when set (rustls,
//! ring). Everything is read and checked once, at start: a bad header or CA stops the start
//! with one line saying what to fix, never each export.

use std::sync::Arc;

use http::{HeaderName, HeaderValue, Uri};
use http_body_util::{BodyExt, Full};

/// Why the collector's settings cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error(
        "OpenTelemetry endpoint '{url}': {why}; give the collector's OTLP/HTTP address, like http://127.0.0.1:4318"
    )]
    Endpoint { url: String, why: String },
    #[error(
        "{variable}: '{entry}' is not a header: write key=value pairs separated by commas (values URL-encoded), like api-key=abc123,team=orders"
    )]
    Header { variable: &'static str, entry: String },
    #[error("{variable}: cannot use CA file {path}: {why}; give a PEM file of the collector's CA")]
    Certificate { variable: &'static str, path: String, why: String },
}

/// Why one export did not arrive.
#[derive(Debug, thiserror::Error)]
pub enum PostError {
    /// No connection could be opened: nothing listens there, or the network is down.
    #[error("{0}")]
    Unreachable(String),
    /// Connected, then TLS, HTTP or the collector's answer failed.
    #[error("{0}")]
    Failed(String),
}

/// Where and how exports go.
#[derive(Clone)]
pub struct Collector {
    /// The full URL, for logs.
    pub url: String,
    host: String,
    port: u16,
    path: String,
    headers: Vec<(HeaderName, HeaderValue)>,
    /// `Some` for `https://`.
    tls: Option<Arc<rustls::ClientConfig>>,
}

impl Collector {
    /// The collector at `url` (the `/v1/traces` URL), with the headers and CA the standard
    /// variables give.
    pub fn from_env(url: &str) -> Result<Collector, TelemetryError> {
        let mut headers = headers_from("OTEL_EXPORTER_OTLP_HEADERS")?;
        headers.extend(headers_from("OTEL_EXPORTER_OTLP_TRACES_HEADERS")?);
        let mut extra_cas = Vec::new();
        for variable in ["OTEL_EXPORTER_OTLP_CERTIFICATE", "OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE"] {
            let Some(path) = std::env::var(variable).ok().filter(|p| !p.trim().is_empty()) else { continue };
            let pem = std::fs::read(&path).map_err(|e| TelemetryError::Certificate {
                variable,
                path: path.clone(),
                why: e.to_string(),
            })?;
            extra_cas.push((variable, path, pem));
        }
        Collector::with(url, headers, &extra_cas)
    }

    /// The collector at `url` sending `headers`, trusting (for `https://`) the system's roots
    /// and the PEM certificates of `extra_cas` (`(variable, path, pem)`, for error lines).
    fn with(
        url: &str,
        headers: Vec<(HeaderName, HeaderValue)>,
        extra_cas: &[(&'static str, String, Vec<u8>)],
    ) -> Result<Collector, TelemetryError> {
        let bad = |why: String| TelemetryError::Endpoint { url: url.to_string(), why };
        let uri: Uri = url.parse().map_err(|e| bad(format!("not a URL ({e})")))?;
        let secure = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => return Err(bad("only http:// and https:// are supported".into())),
        };
        let host = uri.host().filter(|h| !h.is_empty()).ok_or_else(|| bad("no host".into()))?.to_string();
        let port = uri.port_u16().unwrap_or(if secure { 443 } else { 80 });
        let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_string();
        let tls = match secure {
            true => Some(tls_config(url, extra_cas)?),
            false => None,
        };
        Ok(Collector { url: url.to_string(), host, port, path, headers, tls })
    }

    /// One POST of an encoded request.
    pub async fn post(&self, body: Vec<u8>) -> Result<(), PostError> {
        let stream = tokio::net::TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|e| PostError::Unreachable(format!("connecting: {e}")))?;
        let _ = stream.set_nodelay(true);
        self.send_over(stream, body).await.map_err(PostError::Failed)
    }

    /// The request over `stream`, inside TLS for `https://`; `Err` says why in words.
    async fn send_over(&self, stream: tokio::net::TcpStream, body: Vec<u8>) -> Result<(), String> {
        let Some(config) = &self.tls else { return self.send(stream, body).await };
        let name = self.host.trim_start_matches('[').trim_end_matches(']').to_string();
        let name = rustls::pki_types::ServerName::try_from(name).map_err(|e| format!("server name: {e}"))?;
        let stream = tokio_rustls::TlsConnector::from(config.clone())
            .connect(name, stream)
            .await
            .map_err(|e| format!("TLS: {e}"))?;
        self.send(stream, body).await
    }

    /// Whether a connection to the collector can be opened now (within a second).
    pub async fn reachable(&self) -> bool {
        let connect = tokio::net::TcpStream::connect((self.host.as_str(), self.port));
        matches!(tokio::time::timeout(std::time::Duration::from_secs(1), connect).await, Ok(Ok(_)))
    }

    async fn send<S>(&self, stream: S, body: Vec<u8>) -> Result<(), String>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        // hyper's I/O traits over a tokio stream: the adapter wasmtime-wasi-http ships (the
        // host has hyper without hyper-util).
        let io = wasmtime_wasi_http::io::TokioIo::new(stream);
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(io).await.map_err(|e| format!("HTTP handshake: {e}"))?;
        tokio::spawn(connection);
        // On the wire the request line carries the path only; the host is in `Host`.
        let mut request = http::Request::post(self.path.as_str())
            .header(http::header::HOST, format!("{}:{}", self.host, self.port))
            .header(http::header::CONTENT_TYPE, "application/x-protobuf");
        for (name, value) in &self.headers {
            request = request.header(name, value);
        }
        let request = request.body(Full::new(bytes::Bytes::from(body))).map_err(|e| e.to_string())?;
        let response = sender.send_request(request).await.map_err(|e| format!("sending: {e}"))?;
        let status = response.status();
        let _ = response.into_body().collect().await;
        match status.is_success() {
            true => Ok(()),
            false => Err(format!("the collector answered {status}")),
        }
    }
}

/// The headers of `variable` (`key=value,key2=value2`, values URL-encoded, as OpenTelemetry's
/// specification writes them); none when it is unset or empty.
fn headers_from(variable: &'static str) -> Result<Vec<(HeaderName, HeaderValue)>, TelemetryError> {
    let text = std::env::var(variable).unwrap_or_default();
    parse_headers(variable, &text)
}

fn parse_headers(variable: &'static str, text: &str) -> Result<Vec<(HeaderName, HeaderValue)>, TelemetryError> {
    let mut headers = Vec::new();
    for entry in text.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let bad = || TelemetryError::Header { variable, entry: entry.to_string() };
        let (key, value) = entry.split_once('=').ok_or_else(bad)?;
        let name = HeaderName::from_bytes(key.trim().as_bytes()).map_err(|_| bad())?;
        let value = HeaderValue::from_bytes(&percent_decode(value.trim()).ok_or_else(bad)?).map_err(|_| bad())?;
        headers.push((name, value));
    }
    Ok(headers)
}

/// `%XX` escapes decoded; `None` for a broken escape.
fn percent_decode(text: &str) -> Option<Vec<u8>> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Some(out)
}

/// rustls for the collector at `url`: the system's roots, plus the certificates of `extra_cas`.
fn tls_config(
    url: &str,
    extra_cas: &[(&'static str, String, Vec<u8>)],
) -> Result<Arc<rustls::ClientConfig>, TelemetryError> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = crate::tls_roots::system_roots().clone();
    for (variable, path, pem) in extra_cas {
        let bad = |why: String| TelemetryError::Certificate { variable, path: path.clone(), why };
        let mut added = 0;
        for cert in CertificateDer::pem_slice_iter(pem) {
            roots.add(cert.map_err(|e| bad(format!("not PEM: {e}")))?).map_err(|e| bad(e.to_string()))?;
            added += 1;
        }
        if added == 0 {
            return Err(bad("it holds no certificate".into()));
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TelemetryError::Endpoint { url: url.to_string(), why: format!("TLS settings: {e}") })?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// Tests' collectors: one HTTP/1.1 request read from `stream` — its head (lowercased) and
/// body; `None` when the stream ends first.
#[cfg(test)]
pub(super) async fn read_request<S: tokio::io::AsyncRead + Unpin>(stream: &mut S) -> Option<(String, Vec<u8>)> {
    use tokio::io::AsyncReadExt;
    let mut data = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let Ok(n @ 1..) = stream.read(&mut chunk).await else { return None };
        data.extend_from_slice(&chunk[..n]);
        let Some(end) = data.windows(4).position(|w| w == b"\r\n\r\n") else { continue };
        let head = String::from_utf8_lossy(&data[..end]).to_lowercase();
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        if data.len() >= end + 4 + length {
            return Some((head, data[end + 4..end + 4 + length].to_vec()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_are_comma_separated_pairs_with_url_encoded_values() {
        let headers = parse_headers("V", "api-key=abc%3D%3D, x-team = orders ,").unwrap();
        let pairs: Vec<(String, String)> =
            headers.iter().map(|(n, v)| (n.to_string(), v.to_str().unwrap().to_string())).collect();
        assert_eq!(pairs, [("api-key".into(), "abc==".into()), ("x-team".into(), "orders".into())]);
        assert!(parse_headers("V", "").unwrap().is_empty());
    }

    #[test]
    fn a_bad_header_names_the_variable_and_the_entry() {
        for bad in ["novalue", "bad key=1", "k=%zz", "k=line\nbreak"] {
            let error = parse_headers("OTEL_EXPORTER_OTLP_HEADERS", bad).unwrap_err().to_string();
            assert!(error.starts_with("OTEL_EXPORTER_OTLP_HEADERS:") && error.contains("key=value"), "{bad}: {error}");
        }
    }

    #[test]
    fn only_http_and_https_urls_with_a_host_are_collectors() {
        assert!(Collector::with("http://127.0.0.1:4318/v1/traces", Vec::new(), &[]).is_ok());
        let secure = Collector::with("https://collector.example/v1/traces", Vec::new(), &[]).unwrap();
        assert_eq!((secure.port, secure.tls.is_some()), (443, true));
        for bad in ["grpc://127.0.0.1:4317/v1/traces", "127.0.0.1:4318", "http:///v1/traces"] {
            assert!(matches!(Collector::with(bad, Vec::new(), &[]), Err(TelemetryError::Endpoint { .. })), "{bad}");
        }
        let not_pem = [("OTEL_EXPORTER_OTLP_CERTIFICATE", "ca.pem".to_string(), b"hello".to_vec())];
        let error = Collector::with("https://h/v1/traces", Vec::new(), &not_pem).err().unwrap().to_string();
        assert!(error.contains("OTEL_EXPORTER_OTLP_CERTIFICATE: cannot use CA file ca.pem"), "{error}");
    }

    /// An OTLP/HTTP receiver over TLS on 127.0.0.1: each request's head (lowercased) and body.
    async fn tls_receiver(cert: &str, key: &str) -> (u16, tokio::sync::mpsc::UnboundedReceiver<(String, Vec<u8>)>) {
        use tokio::io::AsyncWriteExt;
        let acceptor = tokio_rustls::TlsAcceptor::from(crate::test_tls::server_config(cert, key));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let Ok(mut tls) = acceptor.accept(stream).await else { continue };
                let (head, body) = read_request(&mut tls).await.unwrap_or_default();
                let _ = tls.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n").await;
                let _ = tls.shutdown().await;
                let _ = tx.send((head, body));
            }
        });
        (port, rx)
    }

    #[tokio::test]
    async fn an_https_collector_gets_the_spans_and_the_headers_when_its_ca_is_trusted() {
        let dir = std::env::temp_dir().join(format!("warren-otlp-tls-{}", std::process::id()));
        let made = crate::test_tls::test_certificates(&dir);
        let _ = std::fs::remove_dir_all(&dir);
        let (ca, cert, key) =
            made.expect("this test needs `openssl` on PATH (`apt-get install openssl`; .ci/run installs it)");
        let (port, mut received) = tls_receiver(&cert, &key).await;
        let url = format!("https://127.0.0.1:{port}/v1/traces");
        let headers = parse_headers("OTEL_EXPORTER_OTLP_HEADERS", "api-key=s3cret%2C1").unwrap();
        let trusted = [("OTEL_EXPORTER_OTLP_CERTIFICATE", "ca.pem".to_string(), ca.into_bytes())];

        let collector = Collector::with(&url, headers.clone(), &trusted).unwrap();
        collector.post(b"spans".to_vec()).await.expect("exported");
        let (head, body) = received.recv().await.unwrap();
        assert!(head.starts_with("post /v1/traces http/1.1"), "{head}");
        assert!(
            head.contains("\r\napi-key: s3cret,1") && head.contains("content-type: application/x-protobuf"),
            "{head}"
        );
        assert_eq!(body, b"spans");

        let untrusted = Collector::with(&url, headers, &[]).unwrap();
        let refused = untrusted.post(b"spans".to_vec()).await.unwrap_err().to_string();
        assert!(refused.starts_with("TLS:"), "a collector no trusted root vouches for is refused: {refused}");
    }
}
