//! The TOML config (SPEC §3): parsed, checked and resolved into a [`Config`] before anything
//! touches the broker. Every error names the file, the line and the key, and says what to do.
//!
//! Each section has a file of its own, which owns its raw TOML shape (unknown keys refused),
//! its plain resolved data and the steps that turn one into the other:
//!
//! - `service.rs` — `[service]`: name, plugins folder, private state folder, metrics address.
//! - `broker.rs` — `[broker]`, `[broker.tls]`: URLs, password, TLS files, heartbeat,
//!   prefetch, queue profile, the broker-wide dead-letter exchange.
//! - `limits.rs` — `[limits]`: what one call may use; the defaults every plugin inherits.
//! - `keyvalue.rs` — `[keyvalue]`, `[keyvalue.tls]`: where plugins' buckets live (the
//!   embedded file beside the config, or a Redis URL with its password and CA).
//! - `handlers.rs` — `[[request]]`, `[[event]]`, `[[response]]`.
//! - `telemetry.rs` — `[telemetry]`: the OTLP/HTTP collector traces go to.
//! - `plugins.rs` — `[plugin.<name>]`: a plugin's limits and grants; `origin.rs` — the
//!   syntax of an `http` origin.
//! - `names.rs` (the name rule every section shares), `files.rs` (files read beside the
//!   config, PEM checks, [`Secret`]), `locate.rs` (`file:line:column` errors).
//!
//! This module holds [`Config`], the one error type and the resolution, step by step. The
//! config is plain data and depends on neither wing: the AMQP and Wasm wings read it,
//! never the other way round (a test in `lib.rs` checks this).

mod broker;
mod database;
mod files;
mod handlers;
mod keyvalue;
mod limits;
mod locate;
mod names;
mod origin;
mod plugins;
mod service;
mod telemetry;
#[cfg(test)]
mod tests;
mod values;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

pub use broker::{
    BROKER_PASSWORD_ENV, BROKER_URL_ENV, BrokerConfig, BrokerEnv, ClientIdentity, DEFAULT_BROKER_URL,
    DEFAULT_HEARTBEAT_S, QueueProfile, TlsConfig, redact_url, url_has_password,
};
pub use database::{DEFAULT_MAX_CONNECTIONS, DatabaseSettings};
pub use files::Secret;
pub use handlers::{DEFAULT_STREAM, EventHandler, RequestHandler, ResponseHandler};
pub use keyvalue::{DEFAULT_KEYVALUE_PATH, KeyValueBackend, KeyValueSettings};
pub use limits::{Limits, MAX_REUSE};
pub use origin::Origin;
pub use plugins::{Grants, HttpGrant, PluginSettings};
pub use service::{Delivery, STATE_DIR_ENV};
pub use telemetry::TelemetrySettings;
pub use values::{ConfigValues, MAX_CONFIG_FILE_BYTES};

use broker::{RawBroker, resolve_broker, resolve_prefetch};
use handlers::{RawEvent, RawRequest, RawResponse, resolve_events, resolve_requests, resolve_responses};
use limits::{RawLimits, resolve_default_limits};
use locate::Locator;
use names::{check_name, dead_letter};
use plugins::resolve_plugins;
use service::{RawService, resolve_metrics, resolve_plugins_dir, resolve_state_dir};
use telemetry::{RawTelemetry, resolve_telemetry};

/// The config file used when `--config` is not given.
pub const DEFAULT_CONFIG_FILE: &str = "warren.toml";

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
    /// What a message waits for before it is acked (`service.delivery`).
    pub delivery: Delivery,
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
    /// `[database.<name>]`: the Postgres databases plugins may be granted, by name.
    pub databases: BTreeMap<String, DatabaseSettings>,
    /// `[keyvalue]`: where plugins' buckets live (the embedded file by default).
    pub keyvalue: KeyValueSettings,
    /// `[telemetry]`: where traces go (off unless an endpoint is set here or in the environment).
    pub telemetry: TelemetrySettings,
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

    /// Plugins granted key-value buckets, with their buckets: the store is opened only then.
    pub fn bucket_grants(&self) -> Vec<(&str, &[String])> {
        let grants = self.plugins.iter().filter(|(_, s)| !s.grants.keyvalue.is_empty());
        grants.map(|(name, s)| (name.as_str(), s.grants.keyvalue.as_slice())).collect()
    }

    /// The file a plugin is loaded from: `<plugins>/<name>.wasm`.
    pub fn plugin_path(&self, plugin: &str) -> PathBuf {
        self.plugins_dir.join(format!("{plugin}.wasm"))
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
    #[serde(default)]
    database: BTreeMap<Spanned<String>, database::RawDatabase>,
    #[serde(default)]
    keyvalue: keyvalue::RawKeyValue,
    #[serde(default)]
    telemetry: RawTelemetry,
}

impl RawConfig {
    /// Resolution, step by step: names and folders, the broker, default limits, then each
    /// kind of handler, then per-plugin settings (which need to know the handlers).
    fn resolve(self, at: &Locator, env: BrokerEnv) -> Result<Config, ConfigError> {
        let service = check_name(at, &self.service.name, "service.name")?;
        let base = at.path.parent().unwrap_or(Path::new("."));
        let plugins_dir = resolve_plugins_dir(base, &self.service);
        let broker = resolve_broker(at, base, &self.broker, env)?;
        let prefetch = resolve_prefetch(at, self.broker.prefetch)?;
        let limits = resolve_default_limits(at, &self.limits)?;
        let requests = resolve_requests(at, &self.request)?;
        let events = resolve_events(at, &self.event)?;
        let responses = resolve_responses(at, &self.response)?;
        let used = plugins_in_use(&requests, &events, &responses);
        let plugins = resolve_plugins(at, base, &self.plugin, &limits, &used)?;
        let databases = database::resolve_databases(at, base, &self.database)?;
        database::check_grants(at, &self.plugin, &plugins, &databases)?;
        let keyvalue = keyvalue::resolve_keyvalue(at, base, &self.keyvalue)?;
        let metrics = resolve_metrics(at, self.service.metrics.as_ref())?;
        let state_dir = resolve_state_dir(at, base, self.service.state_dir.as_ref(), &plugins_dir, &service)?;
        Ok(Config {
            source: at.path.to_path_buf(),
            metrics,
            delivery: self.service.delivery,
            plugins,
            service,
            plugins_dir,
            state_dir,
            broker_url: broker.urls[0].clone(),
            broker,
            queue_profile: self.broker.queue_profile,
            dead_letter_exchange: dead_letter(at, &self.broker.dead_letter_exchange, "broker")?,
            prefetch,
            limits,
            requests,
            events,
            responses,
            databases,
            keyvalue,
            telemetry: resolve_telemetry(at, &self.telemetry)?,
        })
    }
}

/// The plugin names the handlers use (a `[plugin.<name>]` table must name one of them).
fn plugins_in_use<'a>(
    requests: &'a [RequestHandler],
    events: &'a [EventHandler],
    responses: &'a [ResponseHandler],
) -> Vec<&'a String> {
    let names = requests.iter().map(|h| &h.plugin);
    names.chain(events.iter().map(|h| &h.plugin)).chain(responses.iter().map(|h| &h.plugin)).collect()
}
