//! `[service]`: the service's name (`S` in goamqp's names), the plugins folder, the private
//! state folder (the compiled-code cache, outside the plugins folder), the metrics address
//! and the delivery guarantee (`delivery`).

use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

use super::ConfigError;
use super::locate::Locator;

const DEFAULT_PLUGINS_DIR: &str = "target/plugins";
/// The environment variable that names the folder of Warren's private state (the compiled-
/// code cache), over `service.state_dir`.
pub const STATE_DIR_ENV: &str = "WARREN_STATE_DIR";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawService {
    pub(super) name: Spanned<String>,
    pub(super) plugins: Option<String>,
    pub(super) metrics: Option<Spanned<String>>,
    pub(super) state_dir: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) delivery: Delivery,
}

/// `service.delivery`: what Warren waits for before it acks a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Delivery {
    /// A message is acked only after its answer and everything its handler sent were
    /// confirmed by the broker (publisher confirms): nothing is lost when the broker fails.
    #[default]
    Confirmed,
    /// goamqp's own guarantee: answers and sends are published without confirms, and a
    /// message is acked as soon as they are written to the connection.
    Goamqp,
}

impl std::fmt::Display for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Delivery::Confirmed => "confirmed",
            Delivery::Goamqp => "goamqp",
        })
    }
}

/// `service.plugins`, relative to the config's folder `base` (default `target/plugins`).
pub(super) fn resolve_plugins_dir(base: &Path, raw: &RawService) -> PathBuf {
    base.join(raw.plugins.as_deref().unwrap_or(DEFAULT_PLUGINS_DIR))
}

/// `service.state_dir` (or `WARREN_STATE_DIR`, or the XDG default): this deployment's
/// folder under it, refused inside the plugins folder, where a plugin bundle could bring
/// compiled code and a key of its own.
pub(super) fn resolve_state_dir(
    at: &Locator,
    base: &Path,
    raw: Option<&Spanned<String>>,
    plugins_dir: &Path,
    service: &str,
) -> Result<PathBuf, ConfigError> {
    let from_env = std::env::var_os(STATE_DIR_ENV).filter(|v| !v.is_empty()).map(PathBuf::from);
    let home =
        |var: &str, under: &str| std::env::var_os(var).filter(|v| !v.is_empty()).map(|v| Path::new(&v).join(under));
    let root = from_env
        .or_else(|| raw.map(|dir| base.join(dir.get_ref())))
        .or_else(|| home("STATE_DIRECTORY", ""))
        .or_else(|| home("XDG_STATE_HOME", "warren"))
        .or_else(|| home("HOME", ".local/state/warren"))
        .ok_or_else(|| {
            at.error(
                0,
                "service.state_dir",
                format!("no HOME to keep state in: set state_dir in [service] or {STATE_DIR_ENV}"),
            )
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
pub(super) fn resolve_metrics(
    at: &Locator,
    metrics: Option<&Spanned<String>>,
) -> Result<Option<std::net::SocketAddr>, ConfigError> {
    let Some(addr) = metrics else { return Ok(None) };
    addr.get_ref().parse().map(Some).map_err(|_| {
        at.at(addr, "service.metrics", format!("'{}' is not an address like \"127.0.0.1:9090\"", addr.get_ref()))
    })
}
