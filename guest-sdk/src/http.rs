//! Outbound HTTP from a handler, over `wasi:http/outgoing-handler`: plain blocking calls with
//! JSON in and out.
//!
//! ```no_run
//! use serde::Deserialize;
//! use warren_guest::{HandlerError, http};
//!
//! #[derive(Deserialize)]
//! struct Price { price: f64 }
//!
//! fn price_of(sku: &str) -> Result<f64, HandlerError> {
//!     let price: Price = http::get_json(&format!("https://prices.example.com/price/{sku}"))?;
//!     Ok(price.price)
//! }
//! ```
//!
//! The host sends a request only to an origin granted to the plugin in its config
//! (`[plugin.<name>] http = ["https://prices.example.com"]`); any other fails with
//! [`Error::Denied`]. Each request counts against the call's deadline (`timeout_ms`), and a
//! response body is capped by the host (`http_max_response_kib`). `?` on an [`Error`] in a
//! handler gives the right outcome: denied, a bad URL, an answer over the cap, a 4xx or an
//! answer that is not the JSON expected → `failed`; unreachable, timed out, 5xx or 429 →
//! `retry`.
//!
//! A plugin that never calls these functions does not import `wasi:http` at all, so it
//! loads in hosts without outbound HTTP. (Natively, outside a host, these calls panic.)

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::HandlerError;

#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../wit",
        world: "http-client",
        default_bindings_module: "warren_guest::http::bindings",
        runtime_path: "warren_guest::__private::wit_bindgen::rt",
        generate_all,
    });
}

use bindings::wasi::http::outgoing_handler;
use bindings::wasi::http::types::{
    ErrorCode, Fields, IncomingBody, Method, OutgoingBody, OutgoingRequest, Scheme, http_error_code,
};
use bindings::wasi::io::streams::StreamError;

/// Why a request gave no usable answer.
#[derive(Debug, Clone, PartialEq)]
pub enum Error {
    /// The host does not grant this plugin the origin (`[plugin.<name>] http`): permanent.
    Denied(String),
    /// The URL cannot be requested (not `http://` or `https://`, no host).
    Url(String),
    /// No answer: unreachable, timed out, a broken connection (may pass later).
    Failed(String),
    /// The answer is larger than the host lets a plugin read (`http_max_response_kib`).
    TooLarge(String),
    /// The server answered with an error status.
    Status { status: u16, url: String, body: String },
    /// The answer is not the JSON expected.
    Json(String),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Denied(why) | Error::Url(why) | Error::Failed(why) | Error::TooLarge(why) | Error::Json(why) => {
                f.write_str(why)
            }
            Error::Status { status, url, body } => {
                let body: String = body.chars().take(200).collect();
                write!(f, "{url} answered {status}: {body}")
            }
        }
    }
}

impl std::error::Error for Error {}

impl From<Error> for HandlerError {
    /// What can never pass is `failed`; what may pass later is `retry`.
    fn from(error: Error) -> Self {
        let retry = match &error {
            Error::Failed(_) => true,
            Error::Status { status, .. } => *status >= 500 || *status == 429,
            Error::Denied(_) | Error::Url(_) | Error::TooLarge(_) | Error::Json(_) => false,
        };
        if retry { HandlerError::Retry(error.to_string()) } else { HandlerError::Failed(error.to_string()) }
    }
}

/// An answer: its status, headers and whole body.
#[derive(Debug, Clone, PartialEq)]
pub struct Response {
    pub status: u16,
    /// Header names are lowercase.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// The URL asked, for error messages.
    pub url: String,
}

impl Response {
    /// The first value of header `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// The body as text (invalid UTF-8 replaced).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body parsed as JSON.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, Error> {
        serde_json::from_slice(&self.body)
            .map_err(|e| Error::Json(format!("{} did not answer the JSON expected: {e}", self.url)))
    }

    /// The response itself when its status is 2xx or 3xx, else [`Error::Status`].
    pub fn error_for_status(self) -> Result<Response, Error> {
        if self.status < 400 {
            Ok(self)
        } else {
            let body = self.text();
            Err(Error::Status { status: self.status, url: self.url, body })
        }
    }
}

/// A request to build and [`send`](Request::send).
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    method: String,
    url: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Request {
    /// A request with any method (`"GET"`, `"POST"`, `"PATCH"`, …).
    pub fn new(method: &str, url: &str) -> Request {
        Request { method: method.to_ascii_uppercase(), url: url.to_string(), headers: Vec::new(), body: Vec::new() }
    }

    /// `GET url`.
    pub fn get(url: &str) -> Request {
        Request::new("GET", url)
    }

    /// `POST url`.
    pub fn post(url: &str) -> Request {
        Request::new("POST", url)
    }

    /// Adds a header.
    pub fn header(mut self, name: &str, value: &str) -> Request {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    /// Sets the body.
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Request {
        self.body = body.into();
        self
    }

    /// Sets the body to `value` as JSON, with `content-type: application/json`.
    pub fn json<T: Serialize + ?Sized>(self, value: &T) -> Result<Request, Error> {
        let body = serde_json::to_vec(value).map_err(|e| Error::Json(format!("cannot serialise the request: {e}")))?;
        Ok(self.header("content-type", "application/json").body(body))
    }

    /// Sends the request and reads the whole answer (any status).
    pub fn send(self) -> Result<Response, Error> {
        send(self)
    }
}

/// `GET url`, any status.
pub fn get(url: &str) -> Result<Response, Error> {
    Request::get(url).send()
}

/// `GET url` with `accept: application/json`; a 2xx answer parsed as JSON.
pub fn get_json<T: DeserializeOwned>(url: &str) -> Result<T, Error> {
    Request::get(url).header("accept", "application/json").send()?.error_for_status()?.json()
}

/// `POST url` with `value` as JSON; a 2xx answer parsed as JSON.
pub fn post_json<In: Serialize + ?Sized, Out: DeserializeOwned>(url: &str, value: &In) -> Result<Out, Error> {
    Request::post(url).header("accept", "application/json").json(value)?.send()?.error_for_status()?.json()
}

/// The parts of a URL `wasi:http` takes: scheme, authority, path with query.
fn split_url(url: &str) -> Result<(Scheme, &str, &str), Error> {
    let bad = |why: &str| Error::Url(format!("cannot request '{url}': {why}"));
    let (scheme, rest) = url.split_once("://").ok_or_else(|| bad("write it like https://host/path"))?;
    let scheme = match scheme.to_ascii_lowercase().as_str() {
        "http" => Scheme::Http,
        "https" => Scheme::Https,
        _ => return Err(bad("the scheme must be http or https")),
    };
    let rest = rest.split('#').next().unwrap_or_default();
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(end);
    if authority.is_empty() {
        return Err(bad("no host"));
    }
    Ok((scheme, authority, if path.is_empty() { "/" } else { path }))
}

fn describe(code: &ErrorCode) -> String {
    match code {
        ErrorCode::HttpRequestDenied => "HTTP-request-denied (the host does not grant this origin)".to_string(),
        ErrorCode::ConnectionTimeout | ErrorCode::ConnectionReadTimeout | ErrorCode::HttpResponseTimeout => {
            format!("{code:?} (the call's deadline leaves no more time)")
        }
        ErrorCode::HttpResponseBodySize(size) => {
            format!("HTTP-response-body-size {size:?} (over the host's cap, http_max_response_kib)")
        }
        other => format!("{other:?}"),
    }
}

fn send(request: Request) -> Result<Response, Error> {
    let Request { method, url, headers, body } = request;
    let (scheme, authority, path) = split_url(&url)?;
    let what = format!("{method} {url}");
    let failed = |code: ErrorCode| {
        let why = format!("{what}: {}", describe(&code));
        match code {
            ErrorCode::HttpRequestDenied => Error::Denied(why),
            ErrorCode::HttpResponseBodySize(_) => Error::TooLarge(why),
            _ => Error::Failed(why),
        }
    };

    let fields: Vec<(String, Vec<u8>)> =
        headers.into_iter().map(|(n, v)| (n.to_ascii_lowercase(), v.into_bytes())).collect();
    let fields =
        Fields::from_list(&fields).map_err(|e| Error::Url(format!("{what}: a header is not allowed: {e:?}")))?;
    let outgoing = OutgoingRequest::new(fields);
    let wit_method = match method.as_str() {
        "GET" => Method::Get,
        "HEAD" => Method::Head,
        "POST" => Method::Post,
        "PUT" => Method::Put,
        "DELETE" => Method::Delete,
        "OPTIONS" => Method::Options,
        "PATCH" => Method::Patch,
        other => Method::Other(other.to_string()),
    };
    let invalid = |part: &str| Error::Url(format!("{what}: invalid {part}"));
    outgoing.set_method(&wit_method).map_err(|()| invalid("method"))?;
    outgoing.set_scheme(Some(&scheme)).map_err(|()| invalid("scheme"))?;
    outgoing.set_authority(Some(authority)).map_err(|()| invalid("host"))?;
    outgoing.set_path_with_query(Some(path)).map_err(|()| invalid("path"))?;
    let outgoing_body = outgoing.body().map_err(|()| Error::Failed(format!("{what}: no request body")))?;

    let future = outgoing_handler::handle(outgoing, None).map_err(failed)?;
    // The response, or why there is none (a denied request fails here).
    let answer = || loop {
        match future.get() {
            Some(Ok(result)) => break result.map_err(failed),
            Some(Err(())) => break Err(Error::Failed(format!("{what}: the response was already taken"))),
            None => future.subscribe().block(),
        }
    };
    let written = (|| {
        let stream = outgoing_body.write().map_err(|()| Error::Failed(format!("{what}: cannot write the body")))?;
        for chunk in body.chunks(4096) {
            stream
                .blocking_write_and_flush(chunk)
                .map_err(|e| Error::Failed(format!("{what}: writing the body: {}", stream_error(&e))))?;
        }
        Ok(())
    })();
    if let Err(error) = written {
        // A request the host refused stops reading its body: say why, not the broken pipe.
        drop(outgoing_body);
        return Err(answer().err().unwrap_or(error));
    }
    OutgoingBody::finish(outgoing_body, None).map_err(failed)?;
    let incoming = answer()?;
    let status = incoming.status();
    let headers = incoming
        .headers()
        .entries()
        .into_iter()
        .map(|(name, value)| (name, String::from_utf8_lossy(&value).into_owned()))
        .collect();
    let body_resource = incoming.consume().map_err(|()| Error::Failed(format!("{what}: no response body")))?;
    let mut body = Vec::new();
    {
        let stream = body_resource.stream().map_err(|()| Error::Failed(format!("{what}: no response body")))?;
        loop {
            match stream.blocking_read(64 * 1024) {
                Ok(chunk) => body.extend_from_slice(&chunk),
                Err(StreamError::Closed) => break,
                Err(error) => {
                    return Err(Error::Failed(format!("{what}: reading the answer: {}", stream_error(&error))));
                }
            }
        }
    }
    drop(IncomingBody::finish(body_resource));
    Ok(Response { status, headers, body, url })
}

fn stream_error(error: &StreamError) -> String {
    match error {
        StreamError::Closed => "the stream closed".to_string(),
        StreamError::LastOperationFailed(e) => match http_error_code(e) {
            Some(code) => describe(&code),
            None => e.to_debug_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split_into_what_wasi_http_takes() {
        let (scheme, authority, path) = split_url("https://api.example.com/price/A1?x=1#top").unwrap();
        assert!(matches!(scheme, Scheme::Https));
        assert_eq!((authority, path), ("api.example.com", "/price/A1?x=1"));
        let (scheme, authority, path) = split_url("http://127.0.0.1:8080").unwrap();
        assert!(matches!(scheme, Scheme::Http));
        assert_eq!((authority, path), ("127.0.0.1:8080", "/"));
        assert_eq!(split_url("http://h?q").unwrap().2, "?q");
        assert!(matches!(split_url("ftp://h/x"), Err(Error::Url(_))));
        assert!(matches!(split_url("example.com/x"), Err(Error::Url(_))));
        assert!(matches!(split_url("https:///x"), Err(Error::Url(_))));
    }

    #[test]
    fn errors_become_the_outcome_that_fits() {
        let outcome = |e: Error| match HandlerError::from(e) {
            HandlerError::Retry(_) => "retry",
            HandlerError::Failed(_) => "failed",
            HandlerError::BadRequest(_) => "bad-request",
        };
        assert_eq!(outcome(Error::Denied("x".into())), "failed");
        assert_eq!(outcome(Error::Failed("x".into())), "retry");
        assert_eq!(outcome(Error::Status { status: 503, url: "u".into(), body: String::new() }), "retry");
        assert_eq!(outcome(Error::Status { status: 429, url: "u".into(), body: String::new() }), "retry");
        assert_eq!(outcome(Error::Status { status: 404, url: "u".into(), body: String::new() }), "failed");
        assert_eq!(outcome(Error::Json("x".into())), "failed");
    }
}
