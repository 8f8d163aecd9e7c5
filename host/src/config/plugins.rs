//! `[plugin.<name>]`: one plugin's limits over `[limits]`, and its grants — env, a read-only
//! folder (`dir`, `dir_as`), where it may send (`publish`, `request`, `queues`, `respond`),
//! `log`, outbound HTTP (`http` origins and the `http_*` caps), and the `wasi:config` values
//! (`[plugin.<name>.config]`, `config_files`: `values.rs`). Nothing is granted unless
//! written here; a table for a plugin no handler uses is refused.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use toml::Spanned;

use super::ConfigError;
use super::files::read_certificates;
use super::limits::{Limits, RawLimits};
use super::locate::Locator;
use super::names::check_name;
use super::origin::Origin;
use super::values::{ConfigValues, resolve_values};

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
    /// What `wasi:config/store` gives the plugin (`[plugin.<name>.config]` and `config_files`).
    pub config: ConfigValues,
    /// `[database.<name>]`s the plugin may open (`spin:postgres` `connection.open(name)`).
    pub databases: Vec<String>,
    /// Whether a call's statements run in one transaction, committed only if it succeeds.
    pub transaction: bool,
    /// Key-value buckets the plugin may open (`keyvalue = ["counters"]`).
    pub keyvalue: Vec<String>,
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
            config: ConfigValues::default(),
            databases: Vec::new(),
            transaction: false,
            keyvalue: Vec::new(),
        }
    }
}

/// `[plugin.<name>] http = [...]` and its `http_*` settings: which origins a plugin may call
/// over `wasi:http`, and the caps on it. Nothing is reachable unless granted.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpGrant {
    /// Origins the plugin may call (`https://api.example.com`, `https://*.example.com`,
    /// `http://127.0.0.1:8080`); empty: every request is denied.
    pub origins: Vec<Origin>,
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

impl RawLimits {
    /// The grant keys set in this table, with where they stand (grants are per plugin).
    pub(super) fn grant_keys(&self) -> Vec<(&'static str, std::ops::Range<usize>)> {
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
            ("config", self.config.as_ref().map(Spanned::span)),
            ("config_files", self.config_files.as_ref().map(Spanned::span)),
            ("databases", self.databases.as_ref().map(Spanned::span)),
            ("transaction", self.transaction.as_ref().map(Spanned::span)),
            ("keyvalue", self.keyvalue.as_ref().map(Spanned::span)),
        ];
        spans.into_iter().filter_map(|(key, span)| span.map(|s| (key, s))).collect()
    }
}

/// `[plugin.<name>]`: limits over the defaults, and grants; only for plugins a handler uses.
pub(super) fn resolve_plugins(
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
    let sends = [
        ("publish", &raw.publish),
        ("request", &raw.request),
        ("queues", &raw.queues),
        ("respond", &raw.respond),
        ("keyvalue", &raw.keyvalue),
    ];
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
        config: resolve_values(
            at,
            base,
            key,
            raw.config.as_ref().map(Spanned::get_ref),
            raw.config_files.as_ref().map(Spanned::get_ref),
        )?,
        databases: list(&raw.databases),
        transaction: raw.transaction.as_ref().is_some_and(|t| *t.get_ref()),
        keyvalue: list(&raw.keyvalue),
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
        let origin = Origin::parse(text).map_err(|why| at.at(origins, &format!("{key}.http"), why))?;
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
        grant.ca_pem = Some(read_certificates(at, base, file, &format!("{key}.http_ca_file"))?);
    }
    Ok(grant)
}
