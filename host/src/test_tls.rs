//! Test support (compiled into unit tests only): a throwaway CA and a server certificate for
//! 127.0.0.1 made with the `openssl` command, and the rustls server settings for them — for
//! the tests of every TLS client the host has (outbound HTTP, the trace exporter).

use std::sync::Arc;

/// A CA and a server certificate for 127.0.0.1 made with `openssl` in `dir`: `(ca.pem,
/// server.pem, server.key)`; `None` without openssl.
pub(crate) fn test_certificates(dir: &std::path::Path) -> Option<(String, String, String)> {
    let openssl = |args: &[&str]| {
        std::process::Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    std::fs::create_dir_all(dir).ok()?;
    std::fs::write(dir.join("san.cnf"), "subjectAltName = IP:127.0.0.1\n").ok()?;
    let made = openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-sha256",
        "-days",
        "2",
        "-subj",
        "/CN=warren test CA",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
    ]) && openssl(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-sha256",
        "-subj",
        "/CN=127.0.0.1",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
    ]) && openssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-sha256",
        "-extfile",
        "san.cnf",
        "-out",
        "server.pem",
    ]);
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).ok();
    if made { Some((read("ca.pem")?, read("server.pem")?, read("server.key")?)) } else { None }
}

/// rustls server settings (ring) presenting `cert_pem` with `key_pem`.
pub(crate) fn server_config(cert_pem: &str, key_pem: &str) -> Arc<rustls::ServerConfig> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(cert_pem.as_bytes()).collect::<Result<_, _>>().unwrap();
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    Arc::new(config)
}
