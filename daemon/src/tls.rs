//! The TLS listener's policy: libvirt's PKI files, mandatory client
//! certificates checked against the CA, an optional allow-list of client
//! distinguished names, and the one-byte "go ahead" libvirt clients wait for.

use std::path::Path;
use std::sync::Arc;

use tokio_rustls::rustls::{self, server::WebPkiClientVerifier, RootCertStore};
use x509_parser::prelude::{FromDer, X509Certificate};

use qemud_config::wildcard_match;

fn read(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

fn certs(path: &Path) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, String> {
    let data = read(path)?;
    let certs = rustls_pemfile::certs(&mut data.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("cannot parse {}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("no certificate in {}", path.display()));
    }
    Ok(certs)
}

/// Refuses a private key others can read: whoever can read it can pose as
/// this server, so serving with it would hide a compromise the operator
/// must fix (as sshd refuses an unprotected key). Group read is allowed,
/// with a warning: Debian's `ssl-cert` group gives services keys that way.
pub fn check_key_mode(key: &Path) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(key).map_err(|e| format!("cannot read {}: {e}", key.display()))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o007 != 0 {
        return Err(format!(
            "TLS private key {} is accessible by other users (mode {mode:04o}); refusing to use it. \
             Anyone who read it can impersonate this server: replace the key and make it \
             readable by its owner only (chmod 600)",
            key.display()
        ));
    }
    if mode & 0o070 != 0 {
        tracing::warn!(
            key = %key.display(),
            "TLS private key is readable by its group (mode {mode:04o}); make sure only trusted users are in it"
        );
    }
    Ok(())
}

/// Builds the server configuration from the CA, certificate and key files.
pub fn server_config(
    ca: &Path,
    cert: &Path,
    key: &Path,
) -> Result<Arc<rustls::ServerConfig>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    for c in certs(ca)? {
        roots
            .add(c)
            .map_err(|e| format!("bad CA certificate {}: {e}", ca.display()))?;
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| format!("cannot build client verifier: {e}"))?;
    check_key_mode(key)?;
    let key_data = read(key)?;
    let key = rustls_pemfile::private_key(&mut key_data.as_slice())
        .map_err(|e| format!("cannot parse {}: {e}", key.display()))?
        .ok_or_else(|| format!("no private key in {}", key.display()))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs(cert)?, key)
        .map_err(|e| format!("bad server certificate or key: {e}"))?;
    // libvirt clients read the one-byte confirmation right after the
    // handshake; a TLS 1.3 session ticket arriving first makes GnuTLS
    // report EAGAIN and the client give up. No tickets, then.
    config.send_tls13_tickets = 0;
    Ok(Arc::new(config))
}

/// The subject DN of a DER certificate as libvirt writes it:
/// `C=GB,ST=London,L=London,O=Red Hat,CN=client`.
pub fn subject_dn(der: &[u8]) -> Result<String, String> {
    let (_, cert) = X509Certificate::from_der(der)
        .map_err(|e| format!("cannot parse client certificate: {e}"))?;
    let mut parts = Vec::new();
    for rdn in cert.subject().iter() {
        for attr in rdn.iter() {
            let oid = attr.attr_type();
            let key = x509_parser::objects::oid2abbrev(oid, x509_parser::objects::oid_registry())
                .map(str::to_owned)
                .unwrap_or_else(|_| oid.to_id_string());
            let value = attr
                .as_str()
                .map(str::to_owned)
                .unwrap_or_else(|_| "?".into());
            parts.push(format!("{key}={value}"));
        }
    }
    Ok(parts.join(","))
}

/// Whether a DN passes the allow-list (an empty list allows everyone).
pub fn dn_allowed(allowed: &[String], dn: &str) -> bool {
    allowed.is_empty() || allowed.iter().any(|p| wildcard_match(p, dn))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards() {
        assert!(wildcard_match(
            "C=GB,O=Red Hat,CN=*",
            "C=GB,O=Red Hat,CN=client1"
        ));
        assert!(!wildcard_match(
            "C=GB,O=Red Hat,CN=*",
            "C=US,O=Red Hat,CN=client1"
        ));
        assert!(wildcard_match("*CN=client?", "O=x,CN=client7"));
        assert!(!wildcard_match("*CN=client?", "O=x,CN=client77"));
        assert!(wildcard_match("*", ""));
        assert!(dn_allowed(&[], "anything"));
        assert!(!dn_allowed(&["CN=a".into()], "CN=b"));
    }
}
