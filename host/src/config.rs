//! The TOML config (SPEC §3): parsed, checked and resolved into a [`Config`] before anything
//! touches the broker. Every error names the file, the line and the key, and says what to do.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::amqp::naming::DEFAULT_STREAM;

/// The environment variable that overrides `broker.url` / `broker.urls` (a comma list).
pub const BROKER_URL_ENV: &str = "WARREN_BROKER_URL";
/// The environment variable that gives the broker password when the URL has none.
pub const BROKER_PASSWORD_ENV: &str = "WARREN_BROKER_PASSWORD";
/// The config file used when `--config` is not given.
pub const DEFAULT_CONFIG_FILE: &str = "warren.toml";
/// The local broker, used when neither the config nor the environment names one.
pub const DEFAULT_BROKER_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
const DEFAULT_PLUGINS_DIR: &str = "target/plugins";
/// The environment variable that names the folder of Warren's private state (the compiled-
/// code cache), over `service.state_dir`.
pub const STATE_DIR_ENV: &str = "WARREN_STATE_DIR";

/// A config file that cannot be used, and why.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(
        "cannot read the config file {path}: {source}. Pass --config FILE, or run from the folder that holds warren.toml"
    )]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}:{line}:{column}: {key}: {message}")]
    Invalid { path: PathBuf, line: usize, column: usize, key: String, message: String },
}

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

/// Resource limits applied to every call of a plugin (`[limits]`, overridden per plugin in
/// `[plugin.<name>]`).
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    /// Largest linear memory a plugin instance may grow to.
    pub memory_bytes: usize,
    /// Wall-clock deadline of one call; past it the call is interrupted.
    pub timeout: Duration,
    /// How many times a `retry` error requeues a message before it is rejected.
    pub max_retries: u32,
    /// Instructions (wasmtime fuel) one call of `handle` may use (instantiation not counted); unlimited when `None`.
    pub fuel: Option<u64>,
    /// Calls of this plugin that may run at once; bounded only by prefetch when `None`.
    pub max_concurrency: Option<u32>,
    /// Largest message body handed to a plugin; larger ones are rejected before wasm.
    pub max_body_bytes: usize,
    /// Messages one call may send (events, requests, queue messages); past it a send fails.
    pub max_sends: u32,
    /// Largest body one send or one response may carry.
    pub max_send_bytes: usize,
    /// Delays before each redelivery of a `retry` (then reject); empty: redeliver at once,
    /// up to `max_retries` times.
    pub retry_delays: Vec<Duration>,
    /// Messages one instance may serve in sequence (1: a fresh instance for each).
    pub reuse: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory_bytes: 64 << 20,
            timeout: Duration::from_secs(5),
            max_retries: 5,
            fuel: None,
            max_concurrency: None,
            max_body_bytes: 16 << 20,
            max_sends: 100,
            max_send_bytes: 16 << 20,
            retry_delays: Vec::new(),
            reuse: 1,
        }
    }
}

/// What a plugin may reach beyond its own memory; nothing unless the config grants it
/// (except logging through the host, on unless `log = false`).
#[derive(Debug, Clone, PartialEq)]
pub struct Grants {
    /// Host environment variables passed to the plugin, by name.
    pub env: Vec<String>,
    /// A host folder the plugin may read (never write), and where the plugin sees it.
    pub dir: Option<(PathBuf, String)>,
    /// Streams the plugin may publish events to.
    pub publish: Vec<String>,
    /// Services the plugin may send requests to.
    pub request: Vec<String>,
    /// Queues the plugin may publish to directly (goamqp's queue publisher).
    pub queues: Vec<String>,
    /// Services the plugin may answer later (`publish-response`, goamqp's
    /// `PublishServiceResponse`).
    pub respond: Vec<String>,
    /// Whether the plugin may write to the host's log.
    pub log: bool,
    /// Outbound HTTP: the origins the plugin may call (none by default) and its caps.
    pub http: HttpGrant,
}

impl Default for Grants {
    fn default() -> Self {
        Grants {
            env: Vec::new(),
            dir: None,
            publish: Vec::new(),
            request: Vec::new(),
            queues: Vec::new(),
            respond: Vec::new(),
            log: true,
            http: HttpGrant::default(),
        }
    }
}

/// `[plugin.<name>] http = [...]` and its `http_*` settings: which origins a plugin may call
/// over `wasi:http`, and the caps on it. Nothing is reachable unless granted.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpGrant {
    /// Origins the plugin may call (`https://api.example.com`, `https://*.example.com`,
    /// `http://127.0.0.1:8080`); empty: every request is denied.
    pub origins: Vec<crate::wasm::http::Origin>,
    /// Largest response body one request may read (`http_max_response_kib`, default 1024).
    pub max_response_bytes: usize,
    /// Requests of this plugin in flight at once, across all its calls (`http_max_concurrency`,
    /// default 16); a request waits for a slot until its call's deadline.
    pub max_concurrency: u32,
    /// PEM certificates trusted beside the system roots for `https` (`http_ca_file`).
    pub ca_pem: Option<String>,
}

impl Default for HttpGrant {
    fn default() -> Self {
        HttpGrant { origins: Vec::new(), max_response_bytes: 1024 << 10, max_concurrency: 16, ca_pem: None }
    }
}

/// Everything that applies to one plugin.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PluginSettings {
    pub limits: Limits,
    pub grants: Grants,
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
    /// The AMQP heartbeat asked for (`heartbeat_s`; `None`: [`DEFAULT_HEARTBEAT_S`]; 0: off).
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

/// A secret (a password, a private key): never printed, not even by `{:?}`.
#[derive(Clone, PartialEq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The secret itself, for the one place that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

/// The whole resolved configuration of one Warren host.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The file this config was read from.
    pub source: PathBuf,
    /// `S` in the wire contract.
    pub service: String,
    /// The folder of `.wasm` plugins (already resolved against the config file's folder).
    pub plugins_dir: PathBuf,
    /// This host's private state folder (the compiled-code cache, its key), outside the
    /// plugins folder: `<root>/<service>-<12 hex of the plugins folder's path hash>`, the root
    /// being `WARREN_STATE_DIR`, else `service.state_dir`, else systemd's `$STATE_DIRECTORY`,
    /// else `$XDG_STATE_HOME/warren`, else `~/.local/state/warren`.
    pub state_dir: PathBuf,
    /// Where `/metrics`, `/healthz` and `/readyz` are served; off when `None`.
    pub metrics: Option<std::net::SocketAddr>,
    /// The first broker URL, as written (`WARREN_BROKER_URL` wins over the file): what
    /// one-shot clients use. The host itself connects by [`Config::broker`].
    pub broker_url: String,
    /// Every endpoint, the password and TLS settings.
    pub broker: BrokerConfig,
    pub queue_profile: QueueProfile,
    /// Where rejected messages go, with the reason in headers, when a handler names none.
    pub dead_letter_exchange: Option<String>,
    /// Unacknowledged deliveries per consumer (and so concurrent calls per queue).
    pub prefetch: u16,
    /// Defaults for every plugin (`[limits]`).
    pub limits: Limits,
    /// `[plugin.<name>]`: limits and grants of each plugin, where they differ from defaults.
    pub plugins: BTreeMap<String, PluginSettings>,
    pub requests: Vec<RequestHandler>,
    pub events: Vec<EventHandler>,
    pub responses: Vec<ResponseHandler>,
}

/// `[[request]]`: serve requests with this routing key on `S.direct.exchange.request.queue`.
#[derive(Debug, Clone, PartialEq)]
pub struct RequestHandler {
    pub routing_key: String,
    pub plugin: String,
    /// Where this handler's rejected messages go (else `broker.dead_letter_exchange`).
    pub dead_letter_exchange: Option<String>,
    /// This handler's own `retry_delays_ms`, over its plugin's limits.
    pub retry_delays: Option<Vec<Duration>>,
    /// Whether the handler's result is published as the answer (goamqp's
    /// `RequestResponseHandler`, the default); `false`: goamqp's `ServiceRequestConsumer`,
    /// success acks the request and publishes nothing.
    pub respond: bool,
}

/// `[[event]]`: consume events matching `routing_key` (`*`, `#` allowed) from a stream.
#[derive(Debug, Clone, PartialEq)]
pub struct EventHandler {
    pub stream: String,
    pub routing_key: String,
    pub plugin: String,
    pub transient: bool,
    pub queue_suffix: Option<String>,
    pub dead_letter_exchange: Option<String>,
    /// This handler's own `retry_delays_ms`, over its plugin's limits.
    pub retry_delays: Option<Vec<Duration>>,
}

/// `[[response]]`: consume responses from service `service` to our requests.
#[derive(Debug, Clone, PartialEq)]
pub struct ResponseHandler {
    pub service: String,
    pub routing_key: String,
    pub plugin: String,
    pub dead_letter_exchange: Option<String>,
    /// This handler's own `retry_delays_ms`, over its plugin's limits.
    pub retry_delays: Option<Vec<Duration>>,
}

impl Config {
    /// Reads, parses and resolves the config file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
        let env = BrokerEnv {
            urls: std::env::var(BROKER_URL_ENV).ok(),
            password: std::env::var(BROKER_PASSWORD_ENV).ok().map(Secret::new),
        };
        Config::parse_with_env(path, &text, env)
    }

    /// Parses config `text` as if read from `path`; `broker_url` (a comma list) overrides
    /// `broker.url` and `broker.urls`.
    pub fn parse(path: &Path, text: &str, broker_url: Option<String>) -> Result<Config, ConfigError> {
        Config::parse_with_env(path, text, BrokerEnv { urls: broker_url, password: None })
    }

    /// Parses config `text` as if read from `path`, with what the environment says of the broker.
    pub fn parse_with_env(path: &Path, text: &str, env: BrokerEnv) -> Result<Config, ConfigError> {
        let at = Locator { path, text };
        let raw: RawConfig = toml::from_str(text).map_err(|e| {
            let span = e.span().unwrap_or(0..0);
            let key = text.get(span.clone()).filter(|k| !k.contains('\n')).unwrap_or("config");
            at.error(span.start, key, e.message().trim())
        })?;
        raw.resolve(&at, env)
    }

    /// Every plugin name the handlers use, once each, in a stable order.
    pub fn plugin_names(&self) -> Vec<String> {
        let names = self.requests.iter().map(|h| &h.plugin);
        let names = names.chain(self.events.iter().map(|h| &h.plugin));
        let names = names.chain(self.responses.iter().map(|h| &h.plugin));
        let mut unique: Vec<String> = names.cloned().collect();
        unique.sort();
        unique.dedup();
        unique
    }

    /// The limits and grants of plugin `name`.
    pub fn settings_for(&self, plugin: &str) -> PluginSettings {
        self.plugins
            .get(plugin)
            .cloned()
            .unwrap_or_else(|| PluginSettings { limits: self.limits.clone(), grants: Grants::default() })
    }

    /// The delays before each redelivery of a `retry` from `plugin` in a handler that names
    /// `own` delays or none: the handler's own, else the plugin's limits (else `[limits]`).
    pub fn retry_delays(&self, own: Option<&Vec<Duration>>, plugin: &str) -> Vec<Duration> {
        own.cloned().unwrap_or_else(|| self.settings_for(plugin).limits.retry_delays)
    }

    /// The file a plugin is loaded from: `<plugins>/<name>.wasm`.
    pub fn plugin_path(&self, plugin: &str) -> PathBuf {
        self.plugins_dir.join(format!("{plugin}.wasm"))
    }
}

/// Turns byte offsets in the config text into `file:line:column` errors.
struct Locator<'a> {
    path: &'a Path,
    text: &'a str,
}

impl Locator<'_> {
    fn error(&self, offset: usize, key: &str, message: impl Into<String>) -> ConfigError {
        let before = &self.text[..offset.min(self.text.len())];
        let line = before.matches('\n').count() + 1;
        let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
        ConfigError::Invalid {
            path: self.path.to_path_buf(),
            line,
            column,
            key: key.to_string(),
            message: message.into(),
        }
    }

    fn at<T>(&self, value: &Spanned<T>, key: &str, message: impl Into<String>) -> ConfigError {
        self.error(value.span().start, key, message)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    service: RawService,
    #[serde(default)]
    broker: RawBroker,
    #[serde(default)]
    limits: RawLimits,
    #[serde(default)]
    plugin: BTreeMap<String, Spanned<RawLimits>>,
    #[serde(default)]
    request: Vec<RawRequest>,
    #[serde(default)]
    event: Vec<RawEvent>,
    #[serde(default)]
    response: Vec<RawResponse>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawService {
    name: Spanned<String>,
    plugins: Option<String>,
    metrics: Option<Spanned<String>>,
    state_dir: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawBroker {
    url: Option<Spanned<String>>,
    urls: Option<Spanned<Vec<String>>>,
    password_file: Option<Spanned<String>>,
    tls: Option<Spanned<RawTls>>,
    #[serde(default)]
    queue_profile: QueueProfile,
    prefetch: Option<Spanned<u16>>,
    dead_letter_exchange: Option<Spanned<String>>,
    heartbeat_s: Option<u16>,
}

/// `[broker.tls]`.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawTls {
    ca_file: Option<Spanned<String>>,
    cert_file: Option<Spanned<String>>,
    key_file: Option<Spanned<String>>,
}

/// What the environment says of the broker: `WARREN_BROKER_URL`, `WARREN_BROKER_PASSWORD`.
#[derive(Debug, Clone, Default)]
pub struct BrokerEnv {
    pub urls: Option<String>,
    pub password: Option<Secret>,
}

/// `[limits]` (defaults for every plugin) and `[plugin.<name>]` (one plugin's overrides, and
/// its grants: env, dir, dir_as).
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    memory_mib: Option<Spanned<u32>>,
    timeout_ms: Option<Spanned<u64>>,
    max_retries: Option<u32>,
    fuel: Option<Spanned<u64>>,
    max_concurrency: Option<Spanned<u32>>,
    max_body_kib: Option<Spanned<u32>>,
    max_sends: Option<Spanned<u32>>,
    max_send_kib: Option<Spanned<u32>>,
    retry_delays_ms: Option<Spanned<Vec<u64>>>,
    reuse: Option<Spanned<u32>>,
    env: Option<Spanned<Vec<String>>>,
    dir: Option<Spanned<String>>,
    dir_as: Option<Spanned<String>>,
    publish: Option<Spanned<Vec<String>>>,
    request: Option<Spanned<Vec<String>>>,
    queues: Option<Spanned<Vec<String>>>,
    respond: Option<Spanned<Vec<String>>>,
    log: Option<Spanned<bool>>,
    http: Option<Spanned<Vec<String>>>,
    http_max_response_kib: Option<Spanned<u32>>,
    http_max_concurrency: Option<Spanned<u32>>,
    http_ca_file: Option<Spanned<String>>,
}

impl RawLimits {
    /// The grant keys set in this table, with where they stand (grants are per plugin).
    fn grant_keys(&self) -> Vec<(&'static str, std::ops::Range<usize>)> {
        let spans = [
            ("env", self.env.as_ref().map(Spanned::span)),
            ("dir", self.dir.as_ref().map(Spanned::span)),
            ("dir_as", self.dir_as.as_ref().map(Spanned::span)),
            ("publish", self.publish.as_ref().map(Spanned::span)),
            ("request", self.request.as_ref().map(Spanned::span)),
            ("queues", self.queues.as_ref().map(Spanned::span)),
            ("respond", self.respond.as_ref().map(Spanned::span)),
            ("log", self.log.as_ref().map(Spanned::span)),
            ("http", self.http.as_ref().map(Spanned::span)),
            ("http_max_response_kib", self.http_max_response_kib.as_ref().map(Spanned::span)),
            ("http_max_concurrency", self.http_max_concurrency.as_ref().map(Spanned::span)),
            ("http_ca_file", self.http_ca_file.as_ref().map(Spanned::span)),
        ];
        spans.into_iter().filter_map(|(key, span)| span.map(|s| (key, s))).collect()
    }

    /// These limits over `base`; `at_key` prefixes keys in errors (`limits`, `plugin.x`).
    fn resolve(&self, at: &Locator, at_key: &str, base: &Limits) -> Result<Limits, ConfigError> {
        let positive = |value: &Spanned<u64>, key: &str| {
            if *value.get_ref() == 0 {
                Err(at.at(value, &format!("{at_key}.{key}"), "must be at least 1"))
            } else {
                Ok(*value.get_ref())
            }
        };
        let widen = |v: &Option<Spanned<u32>>| v.as_ref().map(|s| Spanned::new(s.span(), u64::from(*s.get_ref())));
        let mut limits = base.clone();
        if let Some(m) = &self.memory_mib {
            if *m.get_ref() == 0 || *m.get_ref() > 4096 {
                return Err(at.at(m, &format!("{at_key}.memory_mib"), "must be between 1 and 4096"));
            }
            limits.memory_bytes = (*m.get_ref() as usize) << 20;
        }
        if let Some(t) = &self.timeout_ms {
            limits.timeout = Duration::from_millis(positive(t, "timeout_ms")?);
        }
        if let Some(r) = self.max_retries {
            limits.max_retries = r;
        }
        if let Some(f) = &self.fuel {
            limits.fuel = Some(positive(f, "fuel")?);
        }
        if let Some(c) = widen(&self.max_concurrency) {
            limits.max_concurrency = Some(positive(&c, "max_concurrency")? as u32);
        }
        if let Some(b) = widen(&self.max_body_kib) {
            limits.max_body_bytes = (positive(&b, "max_body_kib")? as usize) << 10;
        }
        if let Some(n) = widen(&self.max_sends) {
            limits.max_sends = positive(&n, "max_sends")? as u32;
        }
        if let Some(b) = widen(&self.max_send_kib) {
            limits.max_send_bytes = (positive(&b, "max_send_kib")? as usize) << 10;
        }
        if let Some(reuse) = widen(&self.reuse) {
            limits.reuse = positive(&reuse, "reuse")?.min(u64::from(MAX_REUSE)) as u32;
        }
        if let Some(delays) = &self.retry_delays_ms {
            limits.retry_delays = retry_delays(at, delays, &format!("{at_key}.retry_delays_ms"))?;
        }
        Ok(limits)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRequest {
    routing_key: Spanned<String>,
    plugin: Spanned<String>,
    dead_letter_exchange: Option<Spanned<String>>,
    retry_delays_ms: Option<Spanned<Vec<u64>>>,
    respond: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEvent {
    routing_key: Spanned<String>,
    plugin: Spanned<String>,
    stream: Option<Spanned<String>>,
    #[serde(default)]
    transient: bool,
    queue_suffix: Option<Spanned<String>>,
    dead_letter_exchange: Option<Spanned<String>>,
    retry_delays_ms: Option<Spanned<Vec<u64>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawResponse {
    service: Spanned<String>,
    routing_key: Spanned<String>,
    plugin: Spanned<String>,
    dead_letter_exchange: Option<Spanned<String>>,
    retry_delays_ms: Option<Spanned<Vec<u64>>>,
}

/// Characters goamqp's names and AMQP's short strings can carry safely in a name segment.
fn check_name(at: &Locator, value: &Spanned<String>, key: &str) -> Result<String, ConfigError> {
    let name = value.get_ref();
    if name.is_empty() {
        return Err(at.at(value, key, "must not be empty"));
    }
    if let Some(bad) = name.chars().find(|c| !(c.is_ascii_alphanumeric() || "-_.".contains(*c))) {
        return Err(at.at(value, key, format!("'{name}' contains '{bad}'; use letters, digits, '-', '_' or '.'")));
    }
    Ok(name.clone())
}

/// The most messages one instance may serve (`reuse`); larger values are taken as this.
pub const MAX_REUSE: u32 = 10_000;

/// Longest delay `retry_delays_ms` accepts: one day.
const MAX_RETRY_DELAY_MS: u64 = 24 * 60 * 60 * 1000;
/// Most entries `retry_delays_ms` accepts (each is a queue on the broker).
const MAX_RETRY_DELAYS: usize = 10;

/// `retry_delays_ms`: 1 to 10 delays, each from 1 ms to a day.
fn retry_delays(at: &Locator, value: &Spanned<Vec<u64>>, key: &str) -> Result<Vec<Duration>, ConfigError> {
    let delays = value.get_ref();
    if delays.is_empty() || delays.len() > MAX_RETRY_DELAYS {
        return Err(at.at(value, key, format!("give 1 to {MAX_RETRY_DELAYS} delays in ms, like [100, 1000, 10000]")));
    }
    if let Some(bad) = delays.iter().find(|&&ms| ms == 0 || ms > MAX_RETRY_DELAY_MS) {
        return Err(at.at(value, key, format!("{bad} is not a delay from 1 ms to one day ({MAX_RETRY_DELAY_MS} ms)")));
    }
    Ok(delays.iter().map(|&ms| Duration::from_millis(ms)).collect())
}

fn handler_retry_delays(
    at: &Locator,
    value: &Option<Spanned<Vec<u64>>>,
    table: &str,
) -> Result<Option<Vec<Duration>>, ConfigError> {
    value.as_ref().map(|v| retry_delays(at, v, &format!("{table}.retry_delays_ms"))).transpose()
}

fn dead_letter(at: &Locator, value: &Option<Spanned<String>>, table: &str) -> Result<Option<String>, ConfigError> {
    value.as_ref().map(|v| check_name(at, v, &format!("{table}.dead_letter_exchange"))).transpose()
}

fn check_routing_key(at: &Locator, value: &Spanned<String>, key: &str) -> Result<String, ConfigError> {
    let routing_key = value.get_ref();
    if routing_key.is_empty() || routing_key.len() > 255 {
        return Err(at.at(value, key, "must be 1 to 255 bytes long (an AMQP short string)"));
    }
    Ok(routing_key.clone())
}

fn check_plugin(at: &Locator, value: &Spanned<String>, key: &str) -> Result<String, ConfigError> {
    let plugin = check_name(at, value, key)?;
    if plugin.ends_with(".wasm") {
        return Err(at.at(value, key, format!("name the plugin without '.wasm' (the file is <plugins>/{plugin})")));
    }
    Ok(plugin)
}

impl RawConfig {
    /// Resolution, step by step: names and folders, the broker, default limits, then each
    /// kind of handler, then per-plugin settings (which need to know the handlers).
    fn resolve(self, at: &Locator, env: BrokerEnv) -> Result<Config, ConfigError> {
        let service = check_name(at, &self.service.name, "service.name")?;
        let base = at.path.parent().unwrap_or(Path::new("."));
        let plugins_dir = base.join(self.service.plugins.as_deref().unwrap_or(DEFAULT_PLUGINS_DIR));
        let broker = resolve_broker(at, base, &self.broker, env)?;
        let broker_url = broker.urls[0].clone();
        let prefetch = resolve_prefetch(at, self.broker.prefetch)?;
        let limits = resolve_default_limits(at, &self.limits)?;
        let requests = resolve_requests(at, &self.request)?;
        let events = resolve_events(at, &self.event)?;
        let responses = resolve_responses(at, &self.response)?;
        let used: Vec<&String> = requests
            .iter()
            .map(|h| &h.plugin)
            .chain(events.iter().map(|h| &h.plugin))
            .chain(responses.iter().map(|h| &h.plugin))
            .collect();
        let plugins = resolve_plugins(at, base, &self.plugin, &limits, &used)?;
        let metrics = resolve_metrics(at, self.service.metrics.as_ref())?;
        let state_dir = resolve_state_dir(at, base, self.service.state_dir.as_ref(), &plugins_dir, &service)?;
        Ok(Config {
            source: at.path.to_path_buf(),
            metrics,
            plugins,
            service,
            plugins_dir,
            state_dir,
            broker_url,
            broker,
            queue_profile: self.broker.queue_profile,
            dead_letter_exchange: dead_letter(at, &self.broker.dead_letter_exchange, "broker")?,
            prefetch,
            limits,
            requests,
            events,
            responses,
        })
    }
}

/// `[broker]`'s endpoints, password and TLS: every file read and checked now, so a bad
/// one is one line before anything connects.
fn resolve_broker(at: &Locator, base: &Path, raw: &RawBroker, env: BrokerEnv) -> Result<BrokerConfig, ConfigError> {
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
    let read = |file: &Spanned<String>, key: &str| -> Result<Vec<u8>, ConfigError> {
        let path = base.join(file.get_ref());
        std::fs::read(&path).map_err(|e| at.at(file, key, format!("cannot read {}: {e}", path.display())))
    };
    let ca_pem = match &tls.ca_file {
        Some(file) => {
            let pem = read(file, "broker.tls.ca_file")?;
            let certs = crate::amqp::tls::certificates(&pem);
            if certs.is_none_or(|n| n == 0) {
                return Err(at.at(
                    file,
                    "broker.tls.ca_file",
                    "holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
                ));
            }
            Some(String::from_utf8_lossy(&pem).into_owned())
        }
        None => None,
    };
    let client = match (&tls.cert_file, &tls.key_file) {
        (Some(cert), Some(key)) => {
            let (cert_pem, key_pem) = (read(cert, "broker.tls.cert_file")?, read(key, "broker.tls.key_file")?);
            if let Err(why) = crate::amqp::tls::check_identity(&cert_pem, &key_pem) {
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
fn resolve_prefetch(at: &Locator, prefetch: Option<Spanned<u16>>) -> Result<u16, ConfigError> {
    match prefetch {
        Some(p) if *p.get_ref() == 0 => {
            Err(at.at(&p, "broker.prefetch", "must be at least 1 (0 would mean unlimited)"))
        }
        Some(p) => Ok(p.into_inner()),
        None => Ok(100),
    }
}

/// `[limits]`: the defaults every plugin inherits. Grants are per plugin, never defaults.
fn resolve_default_limits(at: &Locator, raw: &RawLimits) -> Result<Limits, ConfigError> {
    if let Some((key, span)) = raw.grant_keys().into_iter().next() {
        return Err(at.error(
            span.start,
            &format!("limits.{key}"),
            format!("`{key}` is a grant, and grants are per plugin: move it to [plugin.<name>]"),
        ));
    }
    raw.resolve(at, "limits", &Limits::default())
}

/// `[[request]]`: one handler per routing key.
fn resolve_requests(at: &Locator, raw: &[RawRequest]) -> Result<Vec<RequestHandler>, ConfigError> {
    let mut requests = Vec::new();
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for (i, raw) in raw.iter().enumerate() {
        let key = format!("request[{i}].routing_key");
        let routing_key = check_routing_key(at, &raw.routing_key, &key)?;
        if let Some(first) = seen.insert(routing_key.clone(), i) {
            return Err(at.at(
                &raw.routing_key,
                &key,
                format!(
                    "'{routing_key}' is already served by request[{first}]; each request routing key has one handler"
                ),
            ));
        }
        let plugin = check_plugin(at, &raw.plugin, &format!("request[{i}].plugin"))?;
        let dead_letter_exchange = dead_letter(at, &raw.dead_letter_exchange, &format!("request[{i}]"))?;
        let retry_delays = handler_retry_delays(at, &raw.retry_delays_ms, &format!("request[{i}]"))?;
        let respond = raw.respond.unwrap_or(true);
        requests.push(RequestHandler { routing_key, plugin, dead_letter_exchange, retry_delays, respond });
    }
    Ok(requests)
}

/// `[[event]]`: stream, queue suffix and pattern; handlers sharing a queue must not overlap.
fn resolve_events(at: &Locator, raw: &[RawEvent]) -> Result<Vec<EventHandler>, ConfigError> {
    let mut events = Vec::new();
    for (i, raw) in raw.iter().enumerate() {
        let stream = match &raw.stream {
            Some(s) => check_name(at, s, &format!("event[{i}].stream"))?,
            None => DEFAULT_STREAM.to_string(),
        };
        let queue_suffix = match &raw.queue_suffix {
            Some(s) if raw.transient => {
                return Err(at.at(
                    s,
                    &format!("event[{i}].queue_suffix"),
                    "a transient consumer gets a fresh UUID suffix; remove queue_suffix or set transient = false",
                ));
            }
            Some(s) => Some(check_name(at, s, &format!("event[{i}].queue_suffix"))?),
            None => None,
        };
        events.push(EventHandler {
            stream,
            routing_key: check_routing_key(at, &raw.routing_key, &format!("event[{i}].routing_key"))?,
            plugin: check_plugin(at, &raw.plugin, &format!("event[{i}].plugin"))?,
            transient: raw.transient,
            queue_suffix,
            dead_letter_exchange: dead_letter(at, &raw.dead_letter_exchange, &format!("event[{i}]"))?,
            retry_delays: handler_retry_delays(at, &raw.retry_delays_ms, &format!("event[{i}]"))?,
        });
    }
    check_event_overlaps(at, raw, &events)?;
    Ok(events)
}

/// Handlers sharing a queue must not overlap: a delivery could not pick one.
fn check_event_overlaps(at: &Locator, raw: &[RawEvent], events: &[EventHandler]) -> Result<(), ConfigError> {
    for (i, later) in events.iter().enumerate() {
        let same_queue = |e: &EventHandler| {
            e.stream == later.stream && e.transient == later.transient && e.queue_suffix == later.queue_suffix
        };
        if let Some((j, first)) = events[..i]
            .iter()
            .enumerate()
            .find(|(_, e)| same_queue(e) && crate::amqp::routing::patterns_overlap(&e.routing_key, &later.routing_key))
        {
            return Err(at.at(
                &raw[i].routing_key,
                &format!("event[{i}].routing_key"),
                format!(
                    "'{}' overlaps event[{j}]'s '{}' on the same queue, so a delivery could match both; \
                     goamqp refuses this too: make the patterns disjoint, or give one its own queue_suffix",
                    later.routing_key, first.routing_key
                ),
            ));
        }
    }
    Ok(())
}

/// `[[response]]`: responses from another service to our requests.
fn resolve_responses(at: &Locator, raw: &[RawResponse]) -> Result<Vec<ResponseHandler>, ConfigError> {
    raw.iter()
        .enumerate()
        .map(|(i, raw)| {
            Ok(ResponseHandler {
                service: check_name(at, &raw.service, &format!("response[{i}].service"))?,
                routing_key: check_routing_key(at, &raw.routing_key, &format!("response[{i}].routing_key"))?,
                plugin: check_plugin(at, &raw.plugin, &format!("response[{i}].plugin"))?,
                dead_letter_exchange: dead_letter(at, &raw.dead_letter_exchange, &format!("response[{i}]"))?,
                retry_delays: handler_retry_delays(at, &raw.retry_delays_ms, &format!("response[{i}]"))?,
            })
        })
        .collect()
}

/// `[plugin.<name>]`: limits over the defaults, and grants; only for plugins a handler uses.
fn resolve_plugins(
    at: &Locator,
    base: &Path,
    raw: &BTreeMap<String, Spanned<RawLimits>>,
    defaults: &Limits,
    used: &[&String],
) -> Result<BTreeMap<String, PluginSettings>, ConfigError> {
    let mut plugins = BTreeMap::new();
    for (name, spanned) in raw {
        let key = format!("plugin.{name}");
        if !used.contains(&name) {
            return Err(at.at(
                spanned,
                &key,
                format!("no [[request]], [[event]] or [[response]] uses plugin '{name}': a typo?"),
            ));
        }
        let raw = spanned.get_ref();
        let limits = raw.resolve(at, &key, defaults)?;
        let grants = resolve_grants(at, base, &key, raw)?;
        plugins.insert(name.clone(), PluginSettings { limits, grants });
    }
    Ok(plugins)
}

/// One plugin's grants: env, a read-only folder, where it may send, whether it may log.
fn resolve_grants(at: &Locator, base: &Path, key: &str, raw: &RawLimits) -> Result<Grants, ConfigError> {
    let dir = raw.dir.as_ref().map(|d| {
        let guest = raw.dir_as.as_ref().map_or("/data".to_string(), |g| g.get_ref().clone());
        (base.join(d.get_ref()), guest)
    });
    if let Some(dir_as) = &raw.dir_as {
        if raw.dir.is_none() {
            return Err(at.at(dir_as, &format!("{key}.dir_as"), "needs `dir`, the host folder to grant"));
        }
        if !dir_as.get_ref().starts_with('/') {
            return Err(at.at(dir_as, &format!("{key}.dir_as"), "must be an absolute guest path like \"/data\""));
        }
    }
    let sends =
        [("publish", &raw.publish), ("request", &raw.request), ("queues", &raw.queues), ("respond", &raw.respond)];
    for (field, names) in sends {
        for entry in names.iter() {
            for value in entry.get_ref() {
                check_name(at, &Spanned::new(entry.span(), value.clone()), &format!("{key}.{field}"))?;
            }
        }
    }
    let list = |v: &Option<Spanned<Vec<String>>>| v.as_ref().map(|l| l.get_ref().clone()).unwrap_or_default();
    Ok(Grants {
        env: list(&raw.env),
        dir,
        publish: list(&raw.publish),
        request: list(&raw.request),
        queues: list(&raw.queues),
        respond: list(&raw.respond),
        log: raw.log.as_ref().is_none_or(|l| *l.get_ref()),
        http: resolve_http(at, base, key, raw)?,
    })
}

/// `http = [...]` and the `http_*` settings: each origin checked (one line per mistake), the
/// caps at least 1, the CA file read and holding certificates.
fn resolve_http(at: &Locator, base: &Path, key: &str, raw: &RawLimits) -> Result<HttpGrant, ConfigError> {
    let mut grant = HttpGrant::default();
    let Some(origins) = &raw.http else {
        let settings = [
            ("http_max_response_kib", raw.http_max_response_kib.as_ref().map(Spanned::span)),
            ("http_max_concurrency", raw.http_max_concurrency.as_ref().map(Spanned::span)),
            ("http_ca_file", raw.http_ca_file.as_ref().map(Spanned::span)),
        ];
        if let Some((setting, span)) = settings.into_iter().find_map(|(k, s)| s.map(|s| (k, s))) {
            return Err(at.error(span.start, &format!("{key}.{setting}"), "needs `http`, the origins to grant"));
        }
        return Ok(grant);
    };
    for text in origins.get_ref() {
        let origin =
            crate::wasm::http::Origin::parse(text).map_err(|why| at.at(origins, &format!("{key}.http"), why))?;
        if !grant.origins.contains(&origin) {
            grant.origins.push(origin);
        }
    }
    let at_least_one = |value: &Spanned<u32>, setting: &str| {
        if *value.get_ref() == 0 {
            Err(at.at(value, &format!("{key}.{setting}"), "must be at least 1"))
        } else {
            Ok(*value.get_ref())
        }
    };
    if let Some(kib) = &raw.http_max_response_kib {
        grant.max_response_bytes = (at_least_one(kib, "http_max_response_kib")? as usize) << 10;
    }
    if let Some(n) = &raw.http_max_concurrency {
        grant.max_concurrency = at_least_one(n, "http_max_concurrency")?;
    }
    if let Some(file) = &raw.http_ca_file {
        let path = base.join(file.get_ref());
        let setting = format!("{key}.http_ca_file");
        let pem =
            std::fs::read(&path).map_err(|e| at.at(file, &setting, format!("cannot read {}: {e}", path.display())))?;
        if crate::amqp::tls::certificates(&pem).is_none_or(|n| n == 0) {
            return Err(at.at(file, &setting, "holds no PEM certificate (-----BEGIN CERTIFICATE-----)"));
        }
        grant.ca_pem = Some(String::from_utf8_lossy(&pem).into_owned());
    }
    Ok(grant)
}

/// `service.state_dir` (or `WARREN_STATE_DIR`, or the XDG default): this deployment's
/// folder under it, refused inside the plugins folder, where a plugin bundle could bring
/// compiled code and a key of its own.
fn resolve_state_dir(
    at: &Locator,
    base: &Path,
    raw: Option<&Spanned<String>>,
    plugins_dir: &Path,
    service: &str,
) -> Result<PathBuf, ConfigError> {
    let from_env = std::env::var_os(STATE_DIR_ENV).filter(|v| !v.is_empty()).map(PathBuf::from);
    let home = |var: &str, under: &str| std::env::var_os(var).filter(|v| !v.is_empty()).map(|v| Path::new(&v).join(under));
    let root = from_env
        .or_else(|| raw.map(|dir| base.join(dir.get_ref())))
        .or_else(|| home("STATE_DIRECTORY", ""))
        .or_else(|| home("XDG_STATE_HOME", "warren"))
        .or_else(|| home("HOME", ".local/state/warren"))
        .ok_or_else(|| {
            at.error(0, "service.state_dir", format!("no HOME to keep state in: set state_dir in [service] or {STATE_DIR_ENV}"))
        })?;
    let absolute = |path: &Path| std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let plugins = absolute(plugins_dir);
    if absolute(&root).starts_with(&plugins) {
        let offset = raw.map_or(0, |dir| dir.span().start);
        return Err(at.error(
            offset,
            "service.state_dir",
            format!(
                "{} is inside the plugins folder {}, where a plugin bundle could bring compiled code of its own: choose a folder outside it",
                root.display(),
                plugins.display()
            ),
        ));
    }
    let digest = <sha2::Sha256 as sha2::Digest>::digest(plugins.as_os_str().as_encoded_bytes());
    let id: String = digest.iter().take(6).map(|b| format!("{b:02x}")).collect();
    Ok(root.join(format!("{service}-{id}")))
}

/// `service.metrics`: the address of the metrics endpoint, when set.
fn resolve_metrics(
    at: &Locator,
    metrics: Option<&Spanned<String>>,
) -> Result<Option<std::net::SocketAddr>, ConfigError> {
    let Some(addr) = metrics else { return Ok(None) };
    addr.get_ref().parse().map(Some).map_err(|_| {
        at.at(addr, "service.metrics", format!("'{}' is not an address like \"127.0.0.1:9090\"", addr.get_ref()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(Path::new("conf/warren.toml"), text, None)
    }

    fn error(text: &str) -> String {
        parse(text).unwrap_err().to_string()
    }

    #[test]
    fn the_spec_example_resolves() {
        let config = parse(
            r#"
            [service]
            name = "demo"
            plugins = "target/plugins"

            [broker]
            url = "amqp://guest:guest@127.0.0.1:5672/%2f"
            queue_profile = "classic"

            [[request]]
            routing_key = "echo"
            plugin = "echo"

            [[event]]
            routing_key = "order.#"
            plugin = "audit"
            transient = false

            [[response]]
            service = "billing"
            routing_key = "invoice"
            plugin = "orders"
            "#,
        )
        .unwrap();
        assert_eq!(config.service, "demo");
        assert_eq!(config.plugins_dir, Path::new("conf/target/plugins"));
        assert_eq!(config.plugin_path("echo"), Path::new("conf/target/plugins/echo.wasm"));
        assert_eq!(config.queue_profile, QueueProfile::Classic);
        assert_eq!(
            config.requests,
            vec![RequestHandler {
                routing_key: "echo".into(),
                plugin: "echo".into(),
                dead_letter_exchange: None,
                retry_delays: None,
                respond: true
            }]
        );
        assert_eq!(config.events[0].stream, "events");
        assert_eq!(config.responses[0].service, "billing");
        assert_eq!(config.plugin_names(), vec!["audit", "echo", "orders"]);
        assert_eq!(config.prefetch, 100);
    }

    #[test]
    fn the_environment_overrides_the_broker_url() {
        let text = "[service]\nname = \"demo\"\n[broker]\nurl = \"amqp://a\"\n";
        let config = Config::parse(Path::new("w.toml"), text, Some("amqp://b".into())).unwrap();
        assert_eq!(config.broker_url, "amqp://b");
    }

    #[test]
    fn a_typo_names_file_line_and_key() {
        let message = error("[service]\nname = \"demo\"\n\n[[request]]\nrouting_kye = \"echo\"\nplugin = \"echo\"\n");
        assert!(message.starts_with("conf/warren.toml:5:1: routing_kye: unknown field `routing_kye`"), "{message}");
    }

    #[test]
    fn a_missing_service_name_is_reported() {
        let message = error("[service]\nplugins = \"x\"\n");
        assert!(message.contains("missing field `name`"), "{message}");
    }

    #[test]
    fn a_duplicate_request_key_names_both_entries() {
        let message = error(
            "[service]\nname = \"d\"\n[[request]]\nrouting_key = \"a\"\nplugin = \"x\"\n[[request]]\nrouting_key = \"a\"\nplugin = \"y\"\n",
        );
        assert!(
            message.starts_with("conf/warren.toml:7:15: request[1].routing_key: 'a' is already served by request[0]"),
            "{message}"
        );
    }

    #[test]
    fn overlapping_event_patterns_on_one_queue_name_both_entries() {
        let base = "[service]\nname = \"d\"\n";
        let event = |key: &str, extra: &str| format!("[[event]]\nrouting_key = \"{key}\"\nplugin = \"p\"\n{extra}");
        let message = error(&format!("{base}{}{}", event("order.#", ""), event("order.created", "")));
        assert!(message.contains("event[1].routing_key: 'order.created' overlaps event[0]'s 'order.#'"), "{message}");
        // Disjoint patterns, or the same pattern on another queue, are fine.
        parse(&format!("{base}{}{}", event("order.*", ""), event("user.*", ""))).unwrap();
        parse(&format!("{base}{}{}", event("order.#", ""), event("order.created", "queue_suffix = \"x\""))).unwrap();
    }

    #[test]
    fn a_bad_service_name_says_which_character() {
        let message = error("[service]\nname = \"my service\"\n");
        assert!(message.contains("service.name: 'my service' contains ' '"), "{message}");
    }

    #[test]
    fn an_unknown_queue_profile_is_refused() {
        let message = error("[service]\nname = \"d\"\n[broker]\nqueue_profile = \"stream\"\n");
        assert!(message.contains("unknown variant `stream`"), "{message}");
    }

    #[test]
    fn plugin_tables_override_limits_and_grant_env_and_a_folder() {
        let config = parse(
            "[service]\nname = \"d\"\n[limits]\ntimeout_ms = 900\n[[request]]\nrouting_key = \"a\"\nplugin = \"chaos\"\n\
             [[request]]\nrouting_key = \"b\"\nplugin = \"echo\"\n\
             [plugin.chaos]\nmemory_mib = 16\nfuel = 1000\nmax_concurrency = 2\nenv = [\"TZ\"]\ndir = \"data\"\n",
        )
        .unwrap();
        let chaos = config.settings_for("chaos");
        assert_eq!(chaos.limits.memory_bytes, 16 << 20);
        assert_eq!(chaos.limits.timeout, Duration::from_millis(900), "inherited from [limits]");
        assert_eq!(chaos.limits.fuel, Some(1000));
        assert_eq!(chaos.limits.max_concurrency, Some(2));
        assert_eq!(chaos.grants.env, vec!["TZ".to_string()]);
        assert_eq!(chaos.grants.dir, Some((PathBuf::from("conf/data"), "/data".to_string())));
        let echo = config.settings_for("echo");
        assert_eq!(echo.limits.memory_bytes, 64 << 20);
        assert_eq!(echo.grants, Grants::default(), "nothing granted unless configured");
    }

    #[test]
    fn plugin_tables_report_typos_and_unused_names() {
        let base = "[service]\nname = \"d\"\n[[request]]\nrouting_key = \"a\"\nplugin = \"chaos\"\n";
        let unused = error(&format!("{base}[plugin.chaso]\nfuel = 5\n"));
        assert!(
            unused.contains("plugin.chaso: no [[request]], [[event]] or [[response]] uses plugin 'chaso'"),
            "{unused}"
        );
        let typo = error(&format!("{base}[plugin.chaos]\nfule = 5\n"));
        assert!(typo.contains("conf/warren.toml:7:1: fule: unknown field `fule`"), "{typo}");
        let zero = error(&format!("{base}[plugin.chaos]\ntimeout_ms = 0\n"));
        assert!(zero.contains("plugin.chaos.timeout_ms: must be at least 1"), "{zero}");
    }

    #[test]
    fn a_plugin_named_with_its_extension_is_refused() {
        let message = error("[service]\nname = \"d\"\n[[request]]\nrouting_key = \"a\"\nplugin = \"echo.wasm\"\n");
        assert!(message.contains("request[0].plugin: name the plugin without '.wasm'"), "{message}");
    }

    #[test]
    fn grants_in_limits_are_refused_not_ignored() {
        for grant in [
            "publish = [\"events\"]",
            "request = [\"billing\"]",
            "queues = [\"q\"]",
            "respond = [\"billing\"]",
            "log = false",
            "dir_as = \"/x\"",
        ] {
            let message = error(&format!("[service]\nname = \"d\"\n[limits]\n{grant}\n"));
            let key = grant.split(' ').next().unwrap();
            assert!(message.contains(&format!("limits.{key}: `{key}` is a grant")), "{message}");
            assert!(message.starts_with("conf/warren.toml:4:"), "{message}");
        }
    }

    #[test]
    fn a_request_handler_may_answer_nothing_and_a_plugin_may_answer_later() {
        let config = parse(
            "[service]\nname = \"d\"\n[[request]]\nrouting_key = \"charge\"\nplugin = \"billing\"\nrespond = false\n\
             [[request]]\nrouting_key = \"quote\"\nplugin = \"billing\"\n\
             [plugin.billing]\nrespond = [\"orders\", \"shop-2\"]\n",
        )
        .unwrap();
        assert!(!config.requests[0].respond, "respond = false: goamqp's ServiceRequestConsumer");
        assert!(config.requests[1].respond, "answers by default: goamqp's RequestResponseHandler");
        assert_eq!(config.settings_for("billing").grants.respond, ["orders", "shop-2"]);
        let base = "[service]\nname = \"d\"\n[[request]]\nrouting_key = \"a\"\nplugin = \"p\"\n";
        let not_bool = error(&format!("{base}respond = \"no\"\n"));
        assert!(not_bool.starts_with("conf/warren.toml:6:11: "), "{not_bool}");
        assert!(not_bool.contains("expected a boolean"), "{not_bool}");
        let bad_name = error(&format!("{base}[plugin.p]\nrespond = [\"two words\"]\n"));
        assert!(bad_name.contains("plugin.p.respond: 'two words' contains ' '"), "{bad_name}");
        let on_event =
            error("[service]\nname = \"d\"\n[[event]]\nrouting_key = \"a\"\nplugin = \"p\"\nrespond = false\n");
        assert!(on_event.contains("unknown field `respond`"), "{on_event}");
    }

    #[test]
    fn retry_delays_come_from_the_handler_else_the_limits() {
        let config = parse(
            "[service]\nname = \"d\"\n[limits]\nretry_delays_ms = [100, 1000]\n\
             [[request]]\nrouting_key = \"a\"\nplugin = \"x\"\nretry_delays_ms = [5]\n\
             [[request]]\nrouting_key = \"b\"\nplugin = \"y\"\n",
        )
        .unwrap();
        let ms = |d: Vec<Duration>| d.iter().map(|d| d.as_millis() as u64).collect::<Vec<_>>();
        assert_eq!(ms(config.retry_delays(config.requests[0].retry_delays.as_ref(), "x")), vec![5]);
        assert_eq!(ms(config.retry_delays(config.requests[1].retry_delays.as_ref(), "y")), vec![100, 1000]);
        let zero =
            error("[service]\nname = \"d\"\n[[request]]\nrouting_key = \"a\"\nplugin = \"x\"\nretry_delays_ms = [0]\n");
        assert!(zero.contains("request[0].retry_delays_ms: 0 is not a delay"), "{zero}");
        let empty = error("[service]\nname = \"d\"\n[limits]\nretry_delays_ms = []\n");
        assert!(empty.contains("limits.retry_delays_ms: give 1 to 10 delays"), "{empty}");
    }

    #[test]
    fn http_grants_origins_per_plugin_with_its_caps() {
        let base = "[service]\nname = \"d\"\n[[request]]\nrouting_key = \"a\"\nplugin = \"enrich\"\n\
                    [[request]]\nrouting_key = \"b\"\nplugin = \"echo\"\n";
        let config = parse(&format!(
            "{base}[plugin.enrich]\nhttp = [\"https://api.example.com\", \"https://*.example.com\", \"http://127.0.0.1:8080\"]\n\
             http_max_response_kib = 64\nhttp_max_concurrency = 4\n"
        ))
        .unwrap();
        let http = &config.settings_for("enrich").grants.http;
        let shown: Vec<String> = http.origins.iter().map(ToString::to_string).collect();
        assert_eq!(shown, ["https://api.example.com:443", "https://*.example.com:443", "http://127.0.0.1:8080"]);
        assert_eq!((http.max_response_bytes, http.max_concurrency, http.ca_pem.as_deref()), (64 << 10, 4, None));
        let echo = config.settings_for("echo").grants.http;
        assert!(echo.origins.is_empty(), "no origin unless granted");
        assert_eq!((echo.max_response_bytes, echo.max_concurrency), (1024 << 10, 16), "the defaults");
    }

    #[test]
    fn the_state_folder_is_private_to_the_deployment_and_outside_the_plugins() {
        if std::env::var_os(STATE_DIR_ENV).is_some() {
            return; // the environment's folder wins over the file: nothing here to check
        }
        let with = |extra: &str| parse(&format!("[service]\nname = \"d\"\nplugins = \"p\"\n{extra}")).unwrap();
        let state = with("state_dir = \"/var/lib/warren\"\n").state_dir;
        let folder = state.file_name().unwrap().to_str().unwrap().to_string();
        assert!(state.starts_with("/var/lib/warren") && folder.starts_with("d-") && folder.len() == 14, "{state:?}");
        let elsewhere = parse("[service]\nname = \"d\"\nplugins = \"q\"\nstate_dir = \"/var/lib/warren\"\n").unwrap();
        assert_ne!(elsewhere.state_dir, state, "another plugins folder, another cache");
        let inside = error("[service]\nname = \"d\"\nplugins = \"p\"\nstate_dir = \"p/.state\"\n");
        assert!(
            inside.starts_with("conf/warren.toml:4:13: service.state_dir: ") && inside.contains("inside the plugins folder"),
            "{inside}"
        );
        assert!(!with("").state_dir.starts_with("conf/p"), "the default is outside the plugins folder");
    }

    #[test]
    fn http_mistakes_are_one_line_each() {
        let base = "[service]\nname = \"d\"\n[[request]]\nrouting_key = \"a\"\nplugin = \"enrich\"\n[plugin.enrich]\n";
        let bad = error(&format!("{base}http = [\"https://ok.example.com\", \"api.example.com\"]\n"));
        assert!(
            bad.starts_with("conf/warren.toml:7:8: plugin.enrich.http: 'api.example.com' is not an origin"),
            "{bad}"
        );
        assert!(!bad.contains('\n'), "{bad}");
        let path = error(&format!("{base}http = [\"https://api.example.com/v1\"]\n"));
        assert!(path.contains("grant \"https://api.example.com\""), "{path}");
        let orphan = error(&format!("{base}http_max_concurrency = 2\n"));
        assert!(orphan.contains("plugin.enrich.http_max_concurrency: needs `http`"), "{orphan}");
        let zero = error(&format!("{base}http = [\"http://h\"]\nhttp_max_response_kib = 0\n"));
        assert!(zero.contains("plugin.enrich.http_max_response_kib: must be at least 1"), "{zero}");
        let ca = error(&format!("{base}http = [\"https://h\"]\nhttp_ca_file = \"missing-ca.pem\"\n"));
        assert!(ca.contains("plugin.enrich.http_ca_file: cannot read conf/missing-ca.pem"), "{ca}");
        let in_limits = error("[service]\nname = \"d\"\n[limits]\nhttp = [\"https://h\"]\n");
        assert!(in_limits.contains("limits.http: `http` is a grant"), "{in_limits}");
    }

    fn broker_error(broker: &str) -> String {
        error(&format!("[service]\nname = \"d\"\n[broker]\n{broker}\n"))
    }

    #[test]
    fn broker_urls_come_from_the_environment_list_else_urls_else_url() {
        let text = "[service]\nname = \"d\"\n[broker]\nurls = [\"amqp://a/%2f\", \"amqp://b/%2f\"]\n";
        let config = parse(text).unwrap();
        assert_eq!(config.broker.urls, vec!["amqp://a/%2f", "amqp://b/%2f"]);
        assert_eq!(config.broker_url, "amqp://a/%2f");
        let env = Config::parse(Path::new("w.toml"), text, Some("amqp://x/%2f, amqp://y/%2f".into())).unwrap();
        assert_eq!(env.broker.urls, vec!["amqp://x/%2f", "amqp://y/%2f"]);
    }

    #[test]
    fn broker_mistakes_are_one_line_each() {
        assert!(
            broker_error("url = \"amqp://a\"\nurls = [\"amqp://b\"]")
                .contains("set broker.url or broker.urls, not both")
        );
        let bad = broker_error("urls = [\"amqp://ok/%2f\", \"http://nope\"]");
        assert!(bad.contains("broker.urls: 'http://nope' is not an AMQP URL"), "{bad}");
        assert!(broker_error("urls = []").contains("names no broker"));
        let missing = broker_error("url = \"amqp://u@h/%2f\"\npassword_file = \"no-such-file\"");
        assert!(missing.contains("broker.password_file: cannot read conf/no-such-file"), "{missing}");
        let plain = broker_error("url = \"amqp://h/%2f\"\n[broker.tls]\nca_file = \"x.pem\"");
        assert!(plain.contains("cannot read conf/x.pem") || plain.contains("need amqps://"), "{plain}");
        let ca = broker_error("url = \"amqps://h/%2f\"\n[broker.tls]\nca_file = \"missing-ca.pem\"");
        assert!(ca.contains("broker.tls.ca_file: cannot read conf/missing-ca.pem"), "{ca}");
        let half = broker_error("url = \"amqps://h/%2f\"\n[broker.tls]\ncert_file = \"c.pem\"");
        assert!(half.contains("mutual TLS needs both cert_file and key_file"), "{half}");
        assert!(broker_error("[broker.tls]\nca_fil = \"x\"").contains("unknown field `ca_fil`"));
    }

    #[test]
    fn passwords_come_from_a_file_and_are_never_printed() {
        let dir = std::env::temp_dir().join(format!("warren-pw-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("pw"), "s3cret\n").unwrap();
        let text = "[service]\nname = \"d\"\n[broker]\nurl = \"amqp://u@h/%2f\"\npassword_file = \"pw\"\n";
        let config = Config::parse(&dir.join("warren.toml"), text, None).unwrap();
        assert_eq!(config.broker.password.as_ref().map(Secret::expose), Some("s3cret"));
        assert!(!format!("{config:?}").contains("s3cret"), "the password leaks through Debug");
        std::fs::write(dir.join("pw"), "\n").unwrap();
        let empty = Config::parse(&dir.join("warren.toml"), text, None).unwrap_err().to_string();
        assert!(empty.contains("is empty: put the password on its first line"), "{empty}");
        let with_password = text.replace("amqp://u@h", "amqp://u:p@h");
        std::fs::write(dir.join("pw"), "x").unwrap();
        let both = Config::parse(&dir.join("warren.toml"), &with_password, None).unwrap_err().to_string();
        assert!(both.contains("amqp://u:***@h/%2f already has a password") && !both.contains("u:p@"), "{both}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
