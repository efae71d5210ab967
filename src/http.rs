//! The HTTP(S) client the tang pin uses: ureq over rustls with the ring provider, bounded
//! in time and size, trusting the system CA bundle or one CA file.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use ureq::tls::{Certificate, PemItem, RootCerts, TlsConfig, TlsProvider};
use ureq::unversioned::resolver::DefaultResolver;
use ureq::unversioned::transport::{ConnectionDetails, Connector, DefaultConnector, Transport};

use crate::error::{Error, Result};

/// Largest reply body we read. A Tang advertisement is a few KiB, a recovery reply a few
/// hundred bytes; a server sending more is not a Tang server.
pub const MAX_REPLY_LEN: u64 = 1 << 20;

/// CA bundles of the common distributions, first one present wins.
const SYSTEM_CA_BUNDLES: [&str; 4] = [
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/ca-bundle.pem",
    "/etc/ssl/cert.pem",
];

#[derive(Clone, Copy, Debug)]
pub struct Timeouts {
    pub connect: Duration,
    pub total: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(5),
            total: Duration::from_secs(15),
        }
    }
}

pub struct Client {
    agent: ureq::Agent,
}

/// A tang URL as clevis reads it: curl takes a URL without a scheme (`"host:port"`, as
/// clevis's own tests bind) as http, and stock clevis stores such URLs in its JWEs, so a
/// machine bound that way must unlock. Any scheme but http and https is refused.
pub fn http_url(url: &str) -> Result<std::borrow::Cow<'_, str>> {
    if url.is_empty() || url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(Error::Config(format!("tang: url {url:?} is not a URL")));
    }
    if url.starts_with("http://") || url.starts_with("https://") {
        return Ok(url.into());
    }
    if url.contains("://") {
        return Err(Error::Config(format!("tang: url {url:?} is not http(s)")));
    }
    Ok(format!("http://{url}").into())
}

/// The certificates of a `cacert`: PEM text itself (the CA travels inside the binding,
/// into any initramfs and the token plugin), or the path of a PEM file.
fn load_certificates(cacert: &str) -> Result<Vec<Certificate<'static>>> {
    let (pem, what) = if cacert.trim_start().starts_with("-----BEGIN") {
        (
            cacert.as_bytes().to_vec(),
            "the CA in the binding".to_owned(),
        )
    } else {
        let pem = std::fs::read(cacert).map_err(Error::io(format!("CA file {cacert}")))?;
        (pem, format!("CA file {cacert}"))
    };
    let mut certs = Vec::new();
    for item in ureq::tls::parse_pem(&pem) {
        if let Ok(PemItem::Certificate(cert)) = item {
            certs.push(cert);
        }
    }
    if certs.is_empty() {
        return Err(Error::Config(format!("{what} holds no certificate")));
    }
    Ok(certs)
}

/// The trusted roots for `cacert` (or the system bundle), read once per process: boot
/// retries every few seconds, and parsing a system bundle costs more than a recovery.
fn roots(cacert: Option<&str>) -> Result<Arc<Vec<Certificate<'static>>>> {
    type Cache = Mutex<HashMap<Option<String>, Arc<Vec<Certificate<'static>>>>>;
    static CACHE: OnceLock<Cache> = OnceLock::new();
    let cache = CACHE.get_or_init(Cache::default);
    let key = cacert.map(str::to_owned);
    if let Some(found) = cache.lock().unwrap_or_else(|e| e.into_inner()).get(&key) {
        return Ok(Arc::clone(found));
    }
    let certs = match cacert {
        Some(path) => load_certificates(path)?,
        None => SYSTEM_CA_BUNDLES
            .iter()
            .find(|p| std::path::Path::new(p).exists())
            .map(|p| load_certificates(p))
            .transpose()?
            .unwrap_or_default(),
    };
    let certs = Arc::new(certs);
    cache
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(key, Arc::clone(&certs));
    Ok(certs)
}

impl Client {
    /// A client for `url`, trusting `cacert` if given, else the system bundle (none found
    /// means HTTPS fails: we never fall back to an unverified connection). The roots are
    /// read only for an https URL: parsing the system bundle costs more than a loopback
    /// recovery.
    pub fn new(timeouts: Timeouts, cacert: Option<&str>, url: &str) -> Result<Client> {
        let certs = if url.starts_with("https://") {
            roots(cacert)?
        } else {
            Arc::new(Vec::new())
        };
        let tls = TlsConfig::builder()
            .provider(TlsProvider::Rustls)
            .root_certs(RootCerts::Specific(certs))
            .unversioned_rustls_crypto_provider(Arc::new(crate::tls::provider()))
            .build();
        let config = ureq::Agent::config_builder()
            .timeout_connect(Some(timeouts.connect))
            .timeout_global(Some(timeouts.total))
            .http_status_as_error(false)
            .max_redirects(0)
            .user_agent(concat!("nbde-unlock/", env!("CARGO_PKG_VERSION")))
            .tls_config(tls)
            .build();
        Ok(Client {
            agent: ureq::Agent::with_parts(
                config,
                EveryAddress(DefaultConnector::new()),
                DefaultResolver::default(),
            ),
        })
    }

    pub fn get(&self, url: &str) -> Result<Vec<u8>> {
        let response = self.agent.get(url).call().map_err(|e| network(url, e))?;
        read_reply(url, response)
    }

    pub fn post(&self, url: &str, content_type: &str, body: &[u8]) -> Result<Vec<u8>> {
        let response = self
            .agent
            .post(url)
            .header("Content-Type", content_type)
            .send(body)
            .map_err(|e| network(url, e))?;
        read_reply(url, response)
    }
}

impl Client {
    /// A JSON request with a bearer token (the admin API of nbde-server); the status and
    /// up to `limit` bytes of the body, whatever the status, for the caller to read.
    pub fn call_json(
        &self,
        method: &str,
        url: &str,
        bearer: &str,
        body: Option<&[u8]>,
        limit: u64,
    ) -> Result<(u16, Vec<u8>)> {
        let auth = format!("Bearer {bearer}");
        let sent = match (method, body) {
            ("GET", _) => self.agent.get(url).header("Authorization", &auth).call(),
            (_, body) => self
                .agent
                .post(url)
                .header("Authorization", &auth)
                .header("Content-Type", "application/json")
                .send(body.unwrap_or(b"{}")),
        };
        let mut response = sent.map_err(|e| network(url, e))?;
        let status = response.status().as_u16();
        let body = response
            .body_mut()
            .with_config()
            .limit(limit)
            .read_to_vec()
            .map_err(|e| Error::Reply {
                url: url.to_owned(),
                detail: e.to_string(),
            })?;
        Ok((status, body))
    }
}

/// ureq's own connector (TLS, proxies, timeouts untouched), but a failure on every address
/// of a host says so. ureq 3 already tries each resolved address in getaddrinfo's order
/// (`try_connect_with` in its `unversioned/transport/tcp.rs`), sharing the connect timeout
/// among them, yet reports only the last address's error: with replicas behind one name,
/// an operator must see that all of them were tried, and which.
#[derive(Debug)]
struct EveryAddress(DefaultConnector);

impl Connector for EveryAddress {
    type Out = Box<dyn Transport>;

    fn connect(
        &self,
        details: &ConnectionDetails,
        chained: Option<()>,
    ) -> std::result::Result<Option<Self::Out>, ureq::Error> {
        self.0
            .connect(details, chained)
            .map_err(|error| every_address_failed(details, error))
    }
}

fn every_address_failed(details: &ConnectionDetails, error: ureq::Error) -> ureq::Error {
    use std::io::ErrorKind as Kind;
    let ureq::Error::Io(io) = error else {
        return error;
    };
    // ureq moves on to the next address past exactly these kinds, so one of them at the
    // end means every address failed; any other kind stopped at the address that raised
    // it. Through a proxy, the proxy's own connection is the one that reports it.
    let moved_on = matches!(
        io.kind(),
        Kind::ConnectionRefused
            | Kind::HostUnreachable
            | Kind::NetworkUnreachable
            | Kind::AddrNotAvailable
    );
    if !moved_on || details.config.proxy().is_some() {
        return ureq::Error::Io(io);
    }
    let host = details.uri.host().unwrap_or_default();
    let tried: Vec<String> = details.addrs.iter().map(ToString::to_string).collect();
    ureq::Error::Io(std::io::Error::new(
        io.kind(),
        format!(
            "every address of {host} failed to connect ({}): {io}",
            tried.join(", ")
        ),
    ))
}

fn network(url: &str, error: ureq::Error) -> Error {
    let detail = certificate_error(&error)
        .and_then(clock_problem)
        .unwrap_or_else(|| error.to_string());
    let no_route = matches!(
        &error,
        ureq::Error::Io(io) if io.kind() == std::io::ErrorKind::NetworkUnreachable
    );
    Error::Network {
        url: url.to_owned(),
        detail,
        no_route,
    }
}

/// The certificate error inside a ureq error, wherever ureq carried it (its own variant,
/// or an I/O error from the TLS stream).
fn certificate_error(error: &ureq::Error) -> Option<&rustls::CertificateError> {
    let tls = match error {
        ureq::Error::Rustls(tls) => tls,
        ureq::Error::Io(io) => io.get_ref()?.downcast_ref::<rustls::Error>()?,
        _ => return None,
    };
    match tls {
        rustls::Error::InvalidCertificate(cert) => Some(cert),
        _ => None,
    }
}

/// A certificate outside its validity at this machine's clock, in words that name the
/// clock: at boot a machine whose RTC is years off fails here, and the operator must see
/// that the clock, not the server, is the problem.
fn clock_problem(cert: &rustls::CertificateError) -> Option<String> {
    use rustls::CertificateError as C;
    let (time, bound, word) = match cert {
        C::NotValidYetContext { time, not_before } => (*time, *not_before, "not valid before"),
        C::ExpiredContext { time, not_after } => (*time, *not_after, "expired at"),
        C::NotValidYet | C::Expired => {
            return Some(
                "the server's certificate is not valid at this machine's clock: \
                 check the clock (RTC) or the certificate"
                    .into(),
            );
        }
        _ => return None,
    };
    Some(format!(
        "the server's certificate is {word} {}, but this machine's clock says {}: \
         check the clock (RTC) or the certificate",
        utc(bound.as_secs()),
        utc(time.as_secs()),
    ))
}

/// Seconds since the epoch as RFC 3339 UTC, e.g. `2015-01-01T00:00:00Z`.
fn utc(seconds: u64) -> String {
    let time = std::time::UNIX_EPOCH + Duration::from_secs(seconds);
    humantime::format_rfc3339_seconds(time).to_string()
}

fn read_reply(url: &str, mut response: ureq::http::Response<ureq::Body>) -> Result<Vec<u8>> {
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok());
    let body = response
        .body_mut()
        .with_config()
        .limit(MAX_REPLY_LEN)
        .read_to_vec();
    if !(200..300).contains(&status) {
        // A problem+json body names why (our server says denied, pending-approval, …);
        // only its `type` is shown, never the raw body.
        let problem = body
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .and_then(|v| v.get("type").and_then(|t| t.as_str()).map(str::to_owned));
        return Err(Error::Server {
            url: url.to_owned(),
            status,
            problem,
            retry_after,
        });
    }
    body.map_err(|e| Error::Reply {
        url: url.to_owned(),
        detail: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::UnixTime;

    #[test]
    fn a_certificate_outside_its_validity_names_the_clock() {
        let at = |s| UnixTime::since_unix_epoch(Duration::from_secs(s));
        let early = rustls::CertificateError::NotValidYetContext {
            time: at(1_420_070_400),
            not_before: at(1_767_225_600),
        };
        let text = clock_problem(&early).unwrap();
        assert!(text.contains("clock says 2015-01-01T00:00:00Z"), "{text}");
        assert!(
            text.contains("not valid before 2026-01-01T00:00:00Z"),
            "{text}"
        );
        let wrapped = ureq::Error::Rustls(rustls::Error::InvalidCertificate(early));
        let Error::Network { detail, .. } = network("https://s/", wrapped) else {
            panic!("not a network error");
        };
        assert!(detail.contains("check the clock (RTC)"), "{detail}");
        let other = rustls::CertificateError::UnknownIssuer;
        assert_eq!(clock_problem(&other), None);
    }
}
