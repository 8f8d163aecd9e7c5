//! The system's trusted root certificates, read once per process. Every TLS client of the host
//! that trusts the system (outbound HTTP from plugins, the trace collector) starts from this
//! store and adds the CA its own setting names. Neutral ground: it knows neither wing.

use std::sync::OnceLock;

/// The system's roots (`rustls-native-certs`); a certificate that cannot be read is logged
/// once, at the first use, and left out.
pub fn system_roots() -> &'static rustls::RootCertStore {
    static ROOTS: OnceLock<rustls::RootCertStore> = OnceLock::new();
    ROOTS.get_or_init(|| {
        let found = rustls_native_certs::load_native_certs();
        for error in &found.errors {
            tracing::warn!(%error, "a system root certificate could not be read; TLS connections will not trust it");
        }
        let mut roots = rustls::RootCertStore::empty();
        let (added, ignored) = roots.add_parsable_certificates(found.certs);
        tracing::debug!(added, ignored, "system root certificates loaded");
        roots
    })
}
