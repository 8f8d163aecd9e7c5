//! What the config reads besides itself: files named relative to its folder (certificates,
//! CA bundles), checked when the config is read so a bad one is one line before anything
//! connects, and [`Secret`], for what must never be printed.

use std::path::Path;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use toml::Spanned;

use super::ConfigError;
use super::locate::Locator;

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

/// Reads `file` (relative to the config's folder `base`); `key` names it in the error.
pub(super) fn read_beside(
    at: &Locator,
    base: &Path,
    file: &Spanned<String>,
    key: &str,
) -> Result<Vec<u8>, ConfigError> {
    let path = base.join(file.get_ref());
    std::fs::read(&path).map_err(|e| at.at(file, key, format!("cannot read {}: {e}", path.display())))
}

/// Reads a CA file (`ca_file`, `http_ca_file`): PEM text that holds at least one certificate.
pub(super) fn read_certificates(
    at: &Locator,
    base: &Path,
    file: &Spanned<String>,
    key: &str,
) -> Result<String, ConfigError> {
    let pem = read_beside(at, base, file, key)?;
    if certificates(&pem).is_none_or(|n| n == 0) {
        return Err(at.at(file, key, "holds no PEM certificate (-----BEGIN CERTIFICATE-----)"));
    }
    Ok(String::from_utf8_lossy(&pem).into_owned())
}

/// How many PEM certificates `pem` holds; `None` when it does not parse.
fn certificates(pem: &[u8]) -> Option<usize> {
    CertificateDer::pem_slice_iter(pem).collect::<Result<Vec<_>, _>>().ok().map(|certs| certs.len())
}

/// Checks that `key_pem` is a private key for the first certificate of `cert_pem`.
pub(super) fn check_identity(cert_pem: &[u8], key_pem: &[u8]) -> Result<(), String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("the certificate file does not parse as PEM: {e}"))?;
    if certs.is_empty() {
        return Err("the certificate file holds no PEM certificate".into());
    }
    let key =
        PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| format!("the key file holds no PEM private key ({e})"))?;
    let provider = rustls::crypto::ring::default_provider();
    rustls::sign::CertifiedKey::from_der(certs, key, &provider).map(drop).map_err(|e| {
        format!("the key does not match the certificate ({e}): give the key the certificate was issued for")
    })
}
