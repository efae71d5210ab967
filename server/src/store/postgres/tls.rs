//! TLS to PostgreSQL, as libpq users write it in the URL: `sslmode=require` turns it on,
//! and then it is always verified (rustls with ring): the server's chain against
//! `sslrootcert=FILE` (PEM) if given, else the system bundle, and its name against the
//! host. Stronger than libpq's `require`, which does not verify: a replica's database is
//! reached over networks, and an unverified TLS session protects nothing from a
//! man-in-the-middle.
//!
//! Without `sslmode=require` the connection is plain TCP as before; `prefer` (the default)
//! is taken as `disable`, since a verifying connector would otherwise fail on servers
//! that offer TLS with a certificate nobody can verify (Debian's snakeoil) where a plain
//! connection worked.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use postgres::config::SslMode;
use postgres::{Client, Config};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::redact;
use crate::store::{Result, StoreError};

/// How every connection of the backend is made: the settings and the TLS connector.
#[derive(Clone)]
pub struct Connect {
    pub config: Config,
    pub tls: MakeRustlsConnect,
}

impl Connect {
    pub fn connect(&self) -> std::result::Result<Client, postgres::Error> {
        self.config.connect(self.tls.clone())
    }
}

/// `url` without `sslrootcert` (tokio-postgres does not know it), and that file.
fn take_root_cert(url: &str) -> (String, Option<PathBuf>) {
    let is_key = |pair: &str| pair.trim_start().starts_with("sslrootcert=");
    let value = |pair: &str| PathBuf::from(pair.trim().trim_start_matches("sslrootcert="));
    if let Some((base, query)) = url.split_once('?') {
        let (ours, rest): (Vec<&str>, Vec<&str>) = query.split('&').partition(|p| is_key(p));
        let url = if rest.is_empty() {
            base.to_owned()
        } else {
            format!("{base}?{}", rest.join("&"))
        };
        (url, ours.last().map(|p| value(p)))
    } else if url.contains("://") {
        (url.to_owned(), None)
    } else {
        // key=value form
        let (ours, rest): (Vec<&str>, Vec<&str>) = url.split_whitespace().partition(|p| is_key(p));
        (rest.join(" "), ours.last().map(|p| value(p)))
    }
}

fn roots(ca: Option<&Path>) -> Result<rustls::RootCertStore> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let path = ca.unwrap_or(Path::new("/etc/ssl/certs/ca-certificates.crt"));
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect())
        .map_err(|e| StoreError::Unavailable(format!("database CA {}: {e}", path.display())))?;
    let mut store = rustls::RootCertStore::empty();
    let (added, _ignored) = store.add_parsable_certificates(certs);
    if added == 0 {
        return Err(StoreError::Unavailable(format!(
            "database CA {}: no certificate in it",
            path.display()
        )));
    }
    Ok(store)
}

/// Parses `url` into the settings and the connector every connection uses.
pub fn connect(url: &str) -> Result<Connect> {
    let (cleaned, ca) = take_root_cert(url);
    let mut config = Config::from_str(&cleaned)
        .map_err(|e| StoreError::Unavailable(format!("database URL {}: {e}", redact(url))))?;
    if config.get_ssl_mode() == SslMode::Prefer {
        config.ssl_mode(SslMode::Disable);
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls_config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| StoreError::Unavailable(format!("database TLS: {e}")))?;
    let tls_config = if config.get_ssl_mode() == SslMode::Require {
        tls_config.with_root_certificates(roots(ca.as_deref())?)
    } else {
        // Never used: tokio-postgres asks the connector only when TLS is wanted.
        tls_config.with_root_certificates(rustls::RootCertStore::empty())
    };
    Ok(Connect {
        config,
        tls: MakeRustlsConnect::new(tls_config.with_no_client_auth()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sslrootcert_is_taken_out_of_either_form() {
        let (url, ca) =
            take_root_cert("postgres://u:p@h:5/db?sslmode=require&sslrootcert=/etc/ca.pem");
        assert_eq!(url, "postgres://u:p@h:5/db?sslmode=require");
        assert_eq!(ca.as_deref(), Some(Path::new("/etc/ca.pem")));
        let (url, ca) = take_root_cert("postgres://h/db?sslrootcert=/ca.pem");
        assert_eq!((url.as_str(), ca.is_some()), ("postgres://h/db", true));
        let (url, ca) = take_root_cert("host=h sslrootcert=/ca.pem sslmode=require");
        assert_eq!(url, "host=h sslmode=require");
        assert_eq!(ca.as_deref(), Some(Path::new("/ca.pem")));
        assert_eq!(take_root_cert("postgres://h/db").1, None);
    }

    #[test]
    fn prefer_is_plain_and_require_needs_roots() {
        let c = connect("postgres://h/db").unwrap();
        assert_eq!(c.config.get_ssl_mode(), SslMode::Disable);
        let c = connect("postgres://h/db?sslmode=require").unwrap();
        assert_eq!(c.config.get_ssl_mode(), SslMode::Require);
        let missing = connect("postgres://h/db?sslmode=require&sslrootcert=/nonexistent");
        assert!(matches!(missing, Err(StoreError::Unavailable(m)) if m.contains("/nonexistent")));
    }
}
