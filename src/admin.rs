//! The part of nbde-server's admin API a machine uses: telling the server of a mode change
//! and keeping an encrypted header in escrow. A binding's URL names its device
//! (`BASE/o/ORG/d/DEVICE`); the operator's token comes from a flag or `$NBDE_TOKEN` and is
//! never printed.

use serde_json::{Value, json};
use zeroize::Zeroizing;

use crate::error::{Error, Result};
use crate::http::{Client, Timeouts, http_url};

/// Largest admin reply read: an escrowed header (compressed LUKS2 header, base64url).
const MAX_ADMIN_REPLY: u64 = 96 << 20;

/// A device of nbde-server, as a binding's URL names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceUrl {
    /// Scheme, host and any path prefix before `/o/`.
    pub base: String,
    pub org: String,
    pub device: String,
}

impl DeviceUrl {
    /// Reads `BASE/o/ORG/d/DEVICE` (a scheme-less URL is http, as for tang); None for a URL
    /// of another shape (stock tangd, another server).
    pub fn parse(url: &str) -> Option<DeviceUrl> {
        let url = http_url(url).ok()?;
        let trimmed = url.trim_end_matches('/');
        let (rest, device) = trimmed.rsplit_once("/d/")?;
        let (base, org) = rest.rsplit_once("/o/")?;
        let plain = |s: &str| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        };
        let host_part = base.split_once("://").map_or("", |(_, h)| h);
        (plain(org) && plain(device) && !host_part.is_empty()).then(|| DeviceUrl {
            base: base.to_owned(),
            org: org.to_owned(),
            device: device.to_owned(),
        })
    }

    /// The same device reached through another base (`--server`): a binding made for a
    /// guest network names an address the operator's machine may not reach.
    pub fn with_base(&self, base: Option<&str>) -> DeviceUrl {
        match base {
            Some(base) => DeviceUrl {
                base: http_url(base)
                    .map(|b| b.trim_end_matches('/').to_owned())
                    .unwrap_or_else(|_| base.to_owned()),
                ..self.clone()
            },
            None => self.clone(),
        }
    }

    pub fn spec(&self) -> String {
        format!("{}/{}", self.org, self.device)
    }

    pub fn url(&self) -> String {
        format!("{}/o/{}/d/{}", self.base, self.org, self.device)
    }
}

/// The operator token: the flag, else `$NBDE_TOKEN`; None when neither is set.
pub fn operator_token(flag: Option<String>) -> Option<Zeroizing<String>> {
    flag.or_else(|| std::env::var("NBDE_TOKEN").ok())
        .map(|t| Zeroizing::new(t.trim().to_owned()))
        .filter(|t| !t.is_empty())
}

/// A client of one server's admin API.
pub struct Admin {
    http: Client,
    base: String,
    token: Zeroizing<String>,
}

impl Admin {
    pub fn new(base: &str, token: Zeroizing<String>, timeouts: Timeouts) -> Result<Admin> {
        let cacert = std::env::var("NBDE_CACERT").ok();
        Ok(Admin {
            http: Client::new(timeouts, cacert.as_deref(), base)?,
            base: base.trim_end_matches('/').to_owned(),
            token,
        })
    }

    fn call(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Value> {
        let url = format!("{}/admin/v1{path}", self.base);
        let body = body.map(|b| b.to_string().into_bytes());
        let (status, reply) =
            self.http
                .call_json(method, &url, &self.token, body.as_deref(), MAX_ADMIN_REPLY)?;
        let json: Option<Value> = serde_json::from_slice(&reply).ok();
        if (200..300).contains(&status) {
            return json.ok_or_else(|| Error::Reply {
                url,
                detail: "not JSON".into(),
            });
        }
        // The server's problem+json says why in `detail`; it holds no secret of ours.
        let detail = json
            .as_ref()
            .and_then(|j| j.get("detail").or_else(|| j.get("title")))
            .and_then(Value::as_str)
            .unwrap_or("")
            .chars()
            .take(300)
            .collect::<String>();
        Err(Error::Admin {
            url,
            status,
            detail,
        })
    }

    fn device_path(device: &DeviceUrl) -> String {
        format!("/orgs/{}/devices/{}", device.org, device.device)
    }

    /// The device as the server shows it; checks the token and that the device exists.
    pub fn device(&self, device: &DeviceUrl) -> Result<Value> {
        let list = self.call("GET", &format!("/orgs/{}/devices", device.org), None)?;
        list.get("devices")
            .and_then(Value::as_array)
            .and_then(|all| {
                all.iter()
                    .find(|d| d.get("name").and_then(Value::as_str) == Some(&device.device))
            })
            .cloned()
            .ok_or_else(|| Error::Admin {
                url: device.url(),
                status: 404,
                detail: format!("no device {}", device.spec()),
            })
    }

    /// Reports the volume's mode; `sovereign` makes the server destroy the device's keys
    /// and its escrowed header.
    pub fn report_mode(&self, device: &DeviceUrl, mode: &str) -> Result<Value> {
        let path = format!("{}/mode", Self::device_path(device));
        self.call("POST", &path, Some(&json!({ "mode": mode })))
    }

    /// The org's escrow public key (a JWK) and its kid.
    pub fn escrow_key(&self, org: &str) -> Result<Value> {
        self.call("GET", &format!("/orgs/{org}/escrow-key"), None)
    }

    pub fn put_escrow(&self, device: &DeviceUrl, jwe: &str, uuid: &str) -> Result<Value> {
        let path = format!("{}/escrow", Self::device_path(device));
        self.call("POST", &path, Some(&json!({ "jwe": jwe, "uuid": uuid })))
    }

    pub fn escrow(&self, device: &DeviceUrl) -> Result<Value> {
        self.call(
            "GET",
            &format!("{}/escrow", Self::device_path(device)),
            None,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_urls_are_read_from_bindings() {
        let d = DeviceUrl::parse("http://10.0.2.100:7500/o/acme/d/web1").unwrap();
        assert_eq!(d.base, "http://10.0.2.100:7500");
        assert_eq!(d.spec(), "acme/web1");
        let d = DeviceUrl::parse("nbde.example:80/prefix/o/a-b/d/c.d/").unwrap();
        assert_eq!(d.base, "http://nbde.example:80/prefix");
        assert_eq!(
            d.with_base(Some("127.0.0.1:9")).url(),
            "http://127.0.0.1:9/o/a-b/d/c.d"
        );
        assert_eq!(DeviceUrl::parse("http://tang.example"), None);
        assert_eq!(DeviceUrl::parse("http://h/o//d/x"), None);
        assert_eq!(DeviceUrl::parse("http://h/o/a/d/x?y"), None);
    }
}
