//! `[broker]` and `[broker.tls]`: the endpoints (URLs, or the environment's list), the
//! password, TLS files, heartbeat, prefetch, the queue profile and the broker-wide dead-letter
//! exchange; and [`redact_url`], so a password never reaches a log.

use std::path::Path;

use serde::Deserialize;
use toml::Spanned;

use super::ConfigError;
use super::files::{Secret, check_identity, read_beside, read_certificates};
use super::locate::Locator;

/// The environment variable that overrides `broker.url` / `broker.urls` (a comma list).
pub const BROKER_URL_ENV: &str = "WARREN_BROKER_URL";
/// The environment variable that gives the broker password when the URL has none.
pub const BROKER_PASSWORD_ENV: &str = "WARREN_BROKER_PASSWORD";
/// The local broker, used when neither the config nor the environment names one.
pub const DEFAULT_BROKER_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// Which kind of queue durable queues are declared as (SPEC §1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QueueProfile {
    /// goamqp's own declaration: classic queues with `x-expires`. Byte-compatible with goamqp.
    #[default]
    Classic,
    /// `x-queue-type = quorum` plus the same `x-expires`, for durable queues only.
    Quorum,
}

/// How to reach the broker: its endpoints, the password and TLS (`[broker]`).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct BrokerConfig {
    /// `amqp://` or `amqps://` URLs, one per node; the host connects to the first that
    /// answers, in shuffled order.
    pub urls: Vec<String>,
    /// The password, for URLs that carry none (`password_file` or `WARREN_BROKER_PASSWORD`).
    pub password: Option<Secret>,
    /// Certificates for `amqps://` URLs.
    pub tls: TlsConfig,
    /// The AMQP heartbeat asked for (`heartbeat_s`; `None`: [`DEFAULT_HEARTBEAT_S`]; 0: the
    /// broker's own, RabbitMQ's 60 s — AMQP lets the lower non-zero value win).
    /// A link that goes silent is given up after two missed beats.
    pub heartbeat_s: Option<u16>,
}

/// The AMQP heartbeat Warren asks for unless told otherwise: amqp091-go's (goamqp's) default.
pub const DEFAULT_HEARTBEAT_S: u16 = 10;

/// `[broker.tls]`, with the files already read and checked.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct TlsConfig {
    /// PEM certificates to trust beside the system roots (`ca_file`).
    pub ca_pem: Option<String>,
    /// A client certificate and its key (PEM), for mutual TLS; without a password the
    /// host then authenticates with SASL EXTERNAL.
    pub client: Option<ClientIdentity>,
}

/// A client certificate chain and its private key, both PEM.
#[derive(Clone, PartialEq)]
pub struct ClientIdentity {
    pub cert_pem: Vec<u8>,
    pub key_pem: Secret,
}

impl std::fmt::Debug for ClientIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientIdentity").field("cert_pem", &format!("{} bytes", self.cert_pem.len())).finish()
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBroker {
    pub(super) url: Option<Spanned<String>>,
    pub(super) urls: Option<Spanned<Vec<String>>>,
    pub(super) password_file: Option<Spanned<String>>,
    pub(super) tls: Option<Spanned<RawTls>>,
    #[serde(default)]
    pub(super) queue_profile: QueueProfile,
    pub(super) prefetch: Option<Spanned<u16>>,
    pub(super) dead_letter_exchange: Option<Spanned<String>>,
    pub(super) heartbeat_s: Option<u16>,
}

/// `[broker.tls]`.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTls {
    pub(super) ca_file: Option<Spanned<String>>,
    pub(super) cert_file: Option<Spanned<String>>,
    pub(super) key_file: Option<Spanned<String>>,
}

/// What the environment says of the broker: `WARREN_BROKER_URL`, `WARREN_BROKER_PASSWORD`.
#[derive(Debug, Clone, Default)]
pub struct BrokerEnv {
    pub urls: Option<String>,
    pub password: Option<Secret>,
}

/// `[broker]`'s endpoints, password and TLS: every file read and checked now, so a bad
/// one is one line before anything connects.
pub(super) fn resolve_broker(
    at: &Locator,
    base: &Path,
    raw: &RawBroker,
    env: BrokerEnv,
) -> Result<BrokerConfig, ConfigError> {
    let urls = broker_urls(at, raw, env.urls)?;
    let password = match (&raw.password_file, env.password) {
        (Some(file), _) => Some(read_password(at, base, file)?),
        (None, password) => password,
    };
    if let (Some(_), Some(with)) = (&password, urls.iter().find(|url| url_has_password(url))) {
        let span = raw.password_file.as_ref().map_or(0, |f| f.span().start);
        return Err(at.error(
            span,
            "broker.password_file",
            format!("{} already has a password: remove it from the URL or drop the password file", redact_url(with)),
        ));
    }
    let tls = match &raw.tls {
        Some(tls) => resolve_tls(at, base, tls)?,
        None => TlsConfig::default(),
    };
    if let (Some(tls_table), false) = (&raw.tls, urls.iter().any(|u| u.starts_with("amqps://"))) {
        return Err(at.at(tls_table, "broker.tls", "TLS settings need amqps:// URLs; change the URLs' scheme"));
    }
    Ok(BrokerConfig { urls, password, tls, heartbeat_s: raw.heartbeat_s })
}

/// The broker URLs: the environment's comma list, else `urls`, else `url`, else the local broker.
fn broker_urls(at: &Locator, raw: &RawBroker, env: Option<String>) -> Result<Vec<String>, ConfigError> {
    if let (Some(url), Some(_)) = (&raw.url, &raw.urls) {
        return Err(at.at(url, "broker.url", "set broker.url or broker.urls, not both"));
    }
    let (urls, key, span) = match (env, &raw.urls, &raw.url) {
        (Some(list), _, _) => {
            let urls = list.split(',').map(str::trim).filter(|u| !u.is_empty()).map(str::to_string).collect();
            (urls, BROKER_URL_ENV, 0)
        }
        (None, Some(list), _) => (list.get_ref().clone(), "broker.urls", list.span().start),
        (None, None, Some(url)) => (vec![url.get_ref().clone()], "broker.url", url.span().start),
        (None, None, None) => (vec![DEFAULT_BROKER_URL.to_string()], "broker.url", 0),
    };
    if urls.is_empty() {
        return Err(at.error(span, key, "names no broker: give at least one amqp:// or amqps:// URL"));
    }
    for url in &urls {
        if let Err(why) = url.parse::<lapin::uri::AMQPUri>() {
            let hint = "write it like amqp://user@host:5672/%2f";
            return Err(at.error(span, key, format!("'{}' is not an AMQP URL ({why}); {hint}", redact_url(url))));
        }
    }
    Ok(urls)
}

/// Reads `password_file` (relative to the config's folder): its first line, which must not be empty.
fn read_password(at: &Locator, base: &Path, file: &Spanned<String>) -> Result<Secret, ConfigError> {
    let path = base.join(file.get_ref());
    let text = std::fs::read_to_string(&path).map_err(|e| {
        at.at(
            file,
            "broker.password_file",
            format!("cannot read {}: {e}; check the path and its permissions", path.display()),
        )
    })?;
    let password = text.lines().next().unwrap_or_default().trim_end_matches('\r');
    if password.is_empty() {
        return Err(at.at(
            file,
            "broker.password_file",
            format!("{} is empty: put the password on its first line", path.display()),
        ));
    }
    Ok(Secret::new(password))
}

/// `[broker.tls]`: the CA and the client certificate and key, read and checked to match.
fn resolve_tls(at: &Locator, base: &Path, raw: &Spanned<RawTls>) -> Result<TlsConfig, ConfigError> {
    let tls = raw.get_ref();
    let ca_pem =
        tls.ca_file.as_ref().map(|file| read_certificates(at, base, file, "broker.tls.ca_file")).transpose()?;
    let client = match (&tls.cert_file, &tls.key_file) {
        (Some(cert), Some(key)) => {
            let cert_pem = read_beside(at, base, cert, "broker.tls.cert_file")?;
            let key_pem = read_beside(at, base, key, "broker.tls.key_file")?;
            if let Err(why) = check_identity(&cert_pem, &key_pem) {
                return Err(at.at(key, "broker.tls.key_file", why));
            }
            Some(ClientIdentity { cert_pem, key_pem: Secret::new(String::from_utf8_lossy(&key_pem)) })
        }
        (Some(file), None) | (None, Some(file)) => {
            return Err(at.at(file, "broker.tls", "mutual TLS needs both cert_file and key_file"));
        }
        (None, None) => None,
    };
    Ok(TlsConfig { ca_pem, client })
}

/// Whether an AMQP URL carries a password (`user:password@`).
pub fn url_has_password(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = rest.split('/').next().unwrap_or_default();
    authority.rsplit_once('@').is_some_and(|(userinfo, _)| userinfo.contains(':'))
}

/// `amqp://user:secret@host` → `amqp://user:***@host`, for logs and errors.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => match url[scheme + 3..at].find(':') {
            Some(colon) => format!("{}:***{}", &url[..scheme + 3 + colon], &url[at..]),
            None => url.to_string(),
        },
        _ => url.to_string(),
    }
}

/// `broker.prefetch`: at least 1; 100 when not set (measured: see the README).
pub(super) fn resolve_prefetch(at: &Locator, prefetch: Option<Spanned<u16>>) -> Result<u16, ConfigError> {
    match prefetch {
        Some(p) if *p.get_ref() == 0 => {
            Err(at.at(&p, "broker.prefetch", "must be at least 1 (0 would mean unlimited)"))
        }
        Some(p) => Ok(p.into_inner()),
        None => Ok(100),
    }
}
