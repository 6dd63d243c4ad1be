//! TLS for every client of the marketplace: RabbitMQ (`amqps://`), PostgreSQL (`sslmode=` in
//! `DATABASE_URL`) and the OTLP exporters (`https://`), all with rustls and its ring
//! provider. Each trusts the system's root certificates (`SSL_CERT_FILE` / `SSL_CERT_DIR`
//! point elsewhere), plus the CA file `TLS_CA_FILE` names, for a broker, a database or a
//! collector whose certificate a private CA signed.
//!
//! The CA travels in the URL each client already reads: `cacertfile=` in `AMQP_URL` (the
//! query parameter RabbitMQ's URI specification gives it) and `sslrootcert=` in
//! `DATABASE_URL` (libpq's), so that one connection string says everything about its
//! connection, for the services and the audit alike. `TLS_CA_FILE` fills either in where it
//! is absent (see [`crate::config::Config::from_lookup`]).

use std::{fmt, sync::Once};

use rustls::pki_types::{CertificateDer, pem::PemObject};

/// Installs ring as the process's default rustls provider, once. Every client here picks
/// ring itself, but rustls panics at the first handshake of a client that asks for the
/// process default when two providers are compiled in and none is installed; this makes
/// that impossible whatever a dependency enables later.
pub fn install_crypto_provider() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // An error means a provider is installed already, which serves as well.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// A CA file: its path and PEM text, checked to hold at least one certificate.
#[derive(Clone, PartialEq, Eq)]
pub struct CaFile {
    pub path: String,
    pub pem: Vec<u8>,
}

impl fmt::Debug for CaFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CaFile({})", self.path)
    }
}

impl CaFile {
    /// Reads `path`; the error (without the path, which the caller names) says why it
    /// cannot serve as a CA file.
    pub fn read(path: &str) -> Result<CaFile, String> {
        let pem = std::fs::read(path).map_err(|e| format!("cannot be read: {e}"))?;
        let mut certificates = 0;
        for cert in CertificateDer::pem_slice_iter(&pem) {
            cert.map_err(|e| format!("holds a certificate that cannot be parsed: {e}"))?;
            certificates += 1;
        }
        if certificates == 0 {
            return Err(
                "holds no certificate (expected PEM: -----BEGIN CERTIFICATE-----)".to_string(),
            );
        }
        Ok(CaFile {
            path: path.to_string(),
            pem,
        })
    }
}

/// The value of the query parameter `key` in `url`, percent-decoded.
pub fn query_param(url: &str, key: &str) -> Option<String> {
    let query = url.split_once('?')?.1;
    let query = query.split('#').next().unwrap_or(query);
    url::form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.into_owned())
}

/// `url` with `key=value` added to its query (no check that `key` is absent).
fn with_param(url: &str, key: &str, value: &str) -> String {
    let (base, fragment) = match url.split_once('#') {
        Some((b, f)) => (b, Some(f)),
        None => (url, None),
    };
    let separator = match base.split_once('?') {
        None => "?",
        Some((_, q)) if q.is_empty() || q.ends_with('&') => "",
        Some(_) => "&",
    };
    let value: String = url::form_urlencoded::byte_serialize(value.as_bytes()).collect();
    let mut out = format!("{base}{separator}{key}={value}");
    if let Some(f) = fragment {
        out.push('#');
        out.push_str(f);
    }
    out
}

/// The RabbitMQ URI query parameter that names a CA file.
pub const AMQP_CA_PARAM: &str = "cacertfile";

/// `AMQP_URL` trusting `ca` too: `cacertfile=` added to an `amqps://` URL that names none.
pub fn amqp_url_with_ca(url: &str, ca: &str) -> String {
    if !url.starts_with("amqps://") || query_param(url, AMQP_CA_PARAM).is_some() {
        return url.to_string();
    }
    with_param(url, AMQP_CA_PARAM, ca)
}

/// `DATABASE_URL` trusting `ca`: `sslrootcert=` added unless the URL names one. It takes
/// effect where `sslmode` verifies (`verify-ca`, `verify-full`); `require` encrypts without
/// checking the certificate, `prefer` (the default) encrypts if the server offers TLS.
pub fn postgres_url_with_ca(url: &str, ca: &str) -> String {
    if query_param(url, "sslrootcert").is_some() {
        return url.to_string();
    }
    with_param(url, "sslrootcert", ca)
}

/// The CA file a URL names in `param`, checked like `TLS_CA_FILE` (Err: why not). Inline
/// PEM, which sqlx accepts in `sslrootcert`, is checked as it stands.
pub fn check_url_ca(url: &str, param: &str) -> Result<(), String> {
    let Some(value) = query_param(url, param) else {
        return Ok(());
    };
    if value.trim_start().starts_with("-----BEGIN") {
        return Ok(());
    }
    CaFile::read(&value)
        .map(|_| ())
        .map_err(|problem| format!("{param}={value} {problem}"))
}

/// `e` with what was trusted and how to trust more, when it is the refusal of a server's
/// certificate (`ca`: the CA file the connection trusted beside the system's roots).
pub fn explain_certificate_error(
    e: anyhow::Error,
    server: &str,
    ca: Option<String>,
) -> anyhow::Error {
    let text = format!("{e:#}");
    if !text.contains("certificate") && !text.contains("Certificate") {
        return e;
    }
    let trusted = match ca {
        Some(ca) => format!("the system's root certificates and {ca}"),
        None => "the system's root certificates (set TLS_CA_FILE for a private CA)".into(),
    };
    e.context(format!(
        "TLS: {server}'s certificate is not trusted by {trusted}"
    ))
}

/// The TLS settings of a connection to `url`: the certificates of its `cacertfile`, trusted
/// beside the system's roots. Only `amqps://` URLs use them.
pub fn amqp_tls_config(url: &str) -> anyhow::Result<lapin::tcp::OwnedTLSConfig> {
    install_crypto_provider();
    let cert_chain = match query_param(url, AMQP_CA_PARAM) {
        Some(path) if url.starts_with("amqps://") => {
            let ca = CaFile::read(&path)
                .map_err(|problem| anyhow::anyhow!("{AMQP_CA_PARAM}={path} {problem}"))?;
            Some(String::from_utf8_lossy(&ca.pem).into_owned())
        }
        _ => None,
    };
    Ok(lapin::tcp::OwnedTLSConfig {
        identity: None,
        cert_chain,
    })
}

#[cfg(test)]
mod tests;
