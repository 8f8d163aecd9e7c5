//! `[keyvalue]` and `[keyvalue.tls]`: where every plugin's buckets live — the embedded file
//! (the default, at `path`, relative to the config's folder) or Redis (`url`, with
//! `password_file` and a CA for `rediss://`). Plain data; `crate::keyvalue` opens it.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

use super::ConfigError;
use super::files::{Secret, read_beside};
use super::locate::Locator;

/// The embedded store's file when `[keyvalue] path` is not given, beside the config.
pub const DEFAULT_KEYVALUE_PATH: &str = "warren-kv";

/// `[keyvalue]`, resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyValueSettings {
    pub backend: KeyValueBackend,
}

/// Which store holds the buckets.
#[derive(Debug, Clone, PartialEq)]
pub enum KeyValueBackend {
    /// A `redb` file for this host alone.
    Embedded { path: PathBuf },
    /// Redis, shared by every host of the service.
    Redis { url: String, password: Option<Secret>, ca_file: Option<PathBuf> },
}

impl KeyValueSettings {
    /// The store in words, for log lines and errors (never a password).
    pub fn describe(&self) -> String {
        match &self.backend {
            KeyValueBackend::Embedded { path } => format!("the embedded store {}", path.display()),
            KeyValueBackend::Redis { url, .. } => format!("Redis at {}", super::redact_url(url)),
        }
    }

    /// The default: the embedded store at `warren-kv` beside the config file.
    pub fn beside(config: &Path) -> KeyValueSettings {
        let base = config.parent().unwrap_or(Path::new("."));
        KeyValueSettings { backend: KeyValueBackend::Embedded { path: base.join(DEFAULT_KEYVALUE_PATH) } }
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawKeyValue {
    url: Option<Spanned<String>>,
    path: Option<Spanned<String>>,
    password_file: Option<Spanned<String>>,
    tls: Option<Spanned<RawKeyValueTls>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKeyValueTls {
    ca_file: Option<Spanned<String>>,
}

/// Resolves `[keyvalue]`: a URL must be `redis://` or `rediss://` and parse; `path` and `url`
/// exclude each other; `password_file` and `tls` go with a URL.
pub(super) fn resolve_keyvalue(at: &Locator, base: &Path, raw: &RawKeyValue) -> Result<KeyValueSettings, ConfigError> {
    let Some(url) = &raw.url else {
        if let Some(file) = &raw.password_file {
            return Err(at.at(
                file,
                "keyvalue.password_file",
                "goes with keyvalue.url (Redis); the embedded store has no password",
            ));
        }
        if let Some(tls) = &raw.tls {
            return Err(at.at(tls, "keyvalue.tls", "goes with a rediss:// keyvalue.url"));
        }
        let path = raw.path.as_ref().map_or(DEFAULT_KEYVALUE_PATH, |p| p.get_ref().as_str());
        return Ok(KeyValueSettings { backend: KeyValueBackend::Embedded { path: base.join(path) } });
    };
    if let Some(path) = &raw.path {
        return Err(at.at(
            path,
            "keyvalue.path",
            "names the embedded store, which keyvalue.url replaces: keep one of the two",
        ));
    }
    let text = url.get_ref();
    let tls = text.starts_with("rediss://");
    if !tls && !text.starts_with("redis://") {
        return Err(at.at(
            url,
            "keyvalue.url",
            "must start with redis:// or rediss://, like \"redis://127.0.0.1:6379/0\"",
        ));
    }
    if let Err(e) = redis::IntoConnectionInfo::into_connection_info(text.as_str()) {
        return Err(at.at(
            url,
            "keyvalue.url",
            format!("does not parse ({e}); write it like \"redis://127.0.0.1:6379/0\""),
        ));
    }
    let password = match &raw.password_file {
        Some(file) => {
            let bytes = read_beside(at, base, file, "keyvalue.password_file")?;
            Some(Secret::new(String::from_utf8_lossy(&bytes).trim_end_matches(['\r', '\n']).to_string()))
        }
        None => None,
    };
    let ca_file = match raw.tls.as_ref().and_then(|t| t.get_ref().ca_file.as_ref()) {
        Some(file) if !tls => return Err(at.at(file, "keyvalue.tls.ca_file", "is for a rediss:// URL")),
        Some(file) => {
            super::files::read_certificates(at, base, file, "keyvalue.tls.ca_file")?;
            Some(base.join(file.get_ref()))
        }
        None => None,
    };
    Ok(KeyValueSettings { backend: KeyValueBackend::Redis { url: text.clone(), password, ca_file } })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve(text: &str) -> Result<KeyValueSettings, String> {
        let raw: RawKeyValue = toml::from_str(text).map_err(|e| e.to_string())?;
        let at = Locator { path: Path::new("/etc/warren/warren.toml"), text };
        resolve_keyvalue(&at, Path::new("/etc/warren"), &raw).map_err(|e| e.to_string())
    }

    #[test]
    fn the_embedded_store_is_the_default_beside_the_config() {
        let embedded = |path: &str| KeyValueBackend::Embedded { path: PathBuf::from(path) };
        assert_eq!(resolve("").unwrap().backend, embedded("/etc/warren/warren-kv"));
        assert_eq!(resolve("path = \"state/kv\"").unwrap().backend, embedded("/etc/warren/state/kv"));
    }

    #[test]
    fn a_redis_url_is_checked_and_named_in_errors() {
        let redis = resolve("url = \"redis://127.0.0.1:6379/0\"").unwrap();
        assert!(matches!(redis.backend, KeyValueBackend::Redis { ref url, .. } if url == "redis://127.0.0.1:6379/0"));
        assert!(resolve("url = \"http://x\"").unwrap_err().contains("keyvalue.url: must start with redis://"));
        assert!(resolve("url = \"redis://h:99999999/0\"").unwrap_err().contains("does not parse"));
        assert!(resolve("url = \"redis://h\"\npath = \"kv\"").unwrap_err().contains("keep one of the two"));
        assert!(resolve("password_file = \"p\"").unwrap_err().contains("goes with keyvalue.url"));
        let ca = "url = \"redis://h\"\n[tls]\nca_file = \"ca.pem\"";
        assert!(resolve(ca).unwrap_err().contains("is for a rediss:// URL"));
    }
}
