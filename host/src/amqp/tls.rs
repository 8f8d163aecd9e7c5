//! TLS for `amqps://` brokers, with rustls and the `ring` provider (no C toolchain beyond
//! what `ring` needs, and the lighter build on small machines): the system roots plus an
//! optional CA and an optional client certificate for mutual TLS, as the config read and
//! checked them (`config/files.rs`: a bad file is reported at config time, not at the first
//! handshake).

use lapin::tcp::{OwnedIdentity, OwnedTLSConfig};

use crate::config::TlsConfig;

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
