//! The server's settings: a TOML file, overridden by command-line flags.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::net::Cidr;
use crate::ratelimit::RateLimits;
use crate::store::Location;

pub const DEFAULT_LISTEN: &str = "127.0.0.1:7500";
pub const DEFAULT_DATA: &str = "./nbde-data";

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub listen: Option<SocketAddr>,
    pub data: Option<PathBuf>,
    /// A PostgreSQL URL, instead of the SQLite data directory; it may hold a password.
    pub database: Option<String>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    #[serde(default)]
    pub insecure_http: bool,
    /// Proxies whose `X-Forwarded-For`/`Forwarded` are believed; nobody's by default.
    #[serde(default)]
    pub trusted_proxies: Vec<Cidr>,
    pub public_url: Option<String>,
    /// The web console's origin as browsers reach it (passkeys are bound to its host);
    /// the public URL if unset.
    pub console_origin: Option<String>,
    pub tang_dir: Option<PathBuf>,
    /// The key-encryption key the private keys are sealed under (see `kek::file` for
    /// where it is looked for when unset).
    pub kek_file: Option<PathBuf>,
    /// Token buckets on `/rec` per source address and per device.
    #[serde(default)]
    pub rate_limit: RateLimits,
}

impl Config {
    pub fn load(path: Option<&Path>) -> Result<Config, String> {
        let Some(path) = path else {
            return Ok(Config::default());
        };
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    pub fn listen(&self) -> SocketAddr {
        self.listen
            .unwrap_or_else(|| DEFAULT_LISTEN.parse().expect("valid default"))
    }

    pub fn data(&self) -> PathBuf {
        self.data
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA))
    }

    /// Where the store lives: the database if one is given, else the data directory.
    pub fn location(&self) -> Result<Location, String> {
        match (&self.data, &self.database) {
            (Some(_), Some(_)) => Err("give a data directory or a database, not both".into()),
            (None, Some(url)) => Location::database(url),
            _ => Ok(Location::Sqlite(self.data())),
        }
    }

    /// Plain HTTP is for loopback, unless the operator says otherwise.
    pub fn check_transport(&self) -> Result<(), String> {
        let tls = self.tls_cert.is_some() || self.tls_key.is_some();
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return Err("--tls-cert and --tls-key go together".into());
        }
        if !tls && !self.listen().ip().is_loopback() && !self.insecure_http {
            return Err(format!(
                "{} is not a loopback address: give --tls-cert and --tls-key, or --insecure-http",
                self.listen()
            ));
        }
        Ok(())
    }
}
