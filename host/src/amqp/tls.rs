//! TLS for `amqps://` brokers, with rustls and the `ring` provider (no C toolchain beyond
//! what `ring` needs, and the lighter build on small machines): the system roots plus an
//! optional CA, an optional client certificate for mutual TLS, and the checks that let a
//! bad file be reported at config time rather than at the first handshake.

use lapin::tcp::{OwnedIdentity, OwnedTLSConfig};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::TlsConfig;

/// How many PEM certificates `pem` holds; `None` when it does not parse.
pub fn certificates(pem: &[u8]) -> Option<usize> {
    CertificateDer::pem_slice_iter(pem).collect::<Result<Vec<_>, _>>().ok().map(|certs| certs.len())
}

/// Checks that `key_pem` is a private key for the first certificate of `cert_pem`.
pub fn check_identity(cert_pem: &[u8], key_pem: &[u8]) -> Result<(), String> {
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

/// lapin's TLS settings for `tls`: extra trusted CAs and the client identity.
pub fn lapin_config(tls: &TlsConfig) -> OwnedTLSConfig {
    OwnedTLSConfig {
        cert_chain: tls.ca_pem.clone(),
        identity: tls.client.as_ref().map(|client| OwnedIdentity::PKCS8 {
            pem: client.cert_pem.clone(),
            key: client.key_pem.expose().as_bytes().to_vec(),
        }),
    }
}
