//! A client of the admin API: one call per verb, the bodies of `crate::api` in and out.
//! The `nbde-server` admin verbs are this plus printing.

use std::path::PathBuf;
use std::sync::Arc;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::api::*;
use crate::config;
use crate::policy::Verdict;

pub struct Client {
    base: String,
    token: String,
    agent: ureq::Agent,
}

/// The CA file given (flag or $NBDE_CACERT), else the system bundle.
fn roots(cacert: Option<PathBuf>) -> Result<Vec<ureq::tls::Certificate<'static>>, String> {
    let named = cacert.or_else(|| std::env::var_os("NBDE_CACERT").map(PathBuf::from));
    let pem = match &named {
        Some(path) => std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?,
        None => std::fs::read("/etc/ssl/certs/ca-certificates.crt").unwrap_or_default(),
    };
    Ok(ureq::tls::parse_pem(&pem)
        .filter_map(|item| match item {
            Ok(ureq::tls::PemItem::Certificate(c)) => Some(c),
            _ => None,
        })
        .collect())
}

impl Client {
    /// The server from `server` or $NBDE_SERVER (else the default listen address), the
    /// token from $NBDE_TOKEN, HTTPS roots from `cacert` or $NBDE_CACERT.
    pub fn from_env(server: Option<String>, cacert: Option<PathBuf>) -> Result<Client, String> {
        let base = server
            .or_else(|| std::env::var("NBDE_SERVER").ok())
            .unwrap_or_else(|| format!("http://{}", config::DEFAULT_LISTEN));
        let token = std::env::var("NBDE_TOKEN")
            .map_err(|_| "set NBDE_TOKEN to an admin token".to_string())?;
        Client::new(&base, token, cacert)
    }

    pub fn new(base: &str, token: String, cacert: Option<PathBuf>) -> Result<Client, String> {
        let tls = ureq::tls::TlsConfig::builder()
            .provider(ureq::tls::TlsProvider::Rustls)
            .unversioned_rustls_crypto_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .root_certs(ureq::tls::RootCerts::Specific(Arc::new(roots(cacert)?)))
            .build();
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(std::time::Duration::from_secs(30)))
            .tls_config(tls)
            .build()
            .into();
        Ok(Client {
            base: base.trim_end_matches('/').to_owned(),
            token,
            agent,
        })
    }

    fn read<T: DeserializeOwned>(
        url: &str,
        result: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> Result<T, String> {
        let mut response = result.map_err(|e| format!("{url}: {e}"))?;
        let status = response.status().as_u16();
        // Room for a header backup (ureq's own limit is 10 MB).
        let text = response
            .body_mut()
            .with_config()
            .limit(MAX_ESCROW_BODY as u64 + (1 << 20))
            .read_to_string()
            .unwrap_or_default();
        if !(200..300).contains(&status) {
            // A problem document says what was wrong in `detail`, else in `type`.
            let problem: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
            let detail = problem
                .get("detail")
                .and_then(|v| v.as_str())
                .or_else(|| problem.get("type").and_then(|v| v.as_str()))
                .unwrap_or(text.trim());
            return Err(format!("HTTP {status}: {detail}"));
        }
        serde_json::from_str(&text).map_err(|e| format!("{url}: unexpected answer: {e}"))
    }

    fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, String> {
        let url = format!("{}/admin/v1{path}", self.base);
        let auth = format!("Bearer {}", self.token);
        Self::read(
            &url,
            self.agent.get(&url).header("Authorization", &auth).call(),
        )
    }

    fn post<T: DeserializeOwned>(
        &self,
        path: &str,
        body: Option<&impl Serialize>,
    ) -> Result<T, String> {
        let url = format!("{}/admin/v1{path}", self.base);
        let auth = format!("Bearer {}", self.token);
        let request = self.agent.post(&url).header("Authorization", &auth);
        let result = match body {
            Some(body) => {
                let json = serde_json::to_vec(body).map_err(|e| e.to_string())?;
                request
                    .header("Content-Type", "application/json")
                    .send(&json[..])
            }
            None => request.send_empty(),
        };
        Self::read(&url, result)
    }

    fn post_empty<T: DeserializeOwned>(&self, path: &str) -> Result<T, String> {
        self.post(path, None::<&()>)
    }

    // ---- organisations and devices ----

    pub fn add_org(&self, name: &str) -> Result<OrgCreated, String> {
        self.post("/orgs", Some(&NewOrg { name: name.into() }))
    }

    pub fn orgs(&self) -> Result<OrgList, String> {
        self.get("/orgs")
    }

    pub fn set_org(&self, org: &str, settings: &OrgSettings) -> Result<Org, String> {
        self.post(&format!("/orgs/{org}/settings"), Some(settings))
    }

    pub fn set_org_liveness(&self, org: &str, setting: &MaxSilence) -> Result<OrgLiveness, String> {
        self.post(&format!("/orgs/{org}/liveness"), Some(setting))
    }

    pub fn set_device_liveness(
        &self,
        org: &str,
        device: &str,
        setting: &MaxSilence,
    ) -> Result<Device, String> {
        self.post(
            &format!("/orgs/{org}/devices/{device}/liveness"),
            Some(setting),
        )
    }

    pub fn add_device(&self, org: &str, device: &NewDevice) -> Result<Device, String> {
        self.post(&format!("/orgs/{org}/devices"), Some(device))
    }

    pub fn devices(&self, org: &str) -> Result<DeviceList, String> {
        self.get(&format!("/orgs/{org}/devices"))
    }

    pub fn device(&self, org: &str, device: &str) -> Result<Device, String> {
        self.get(&format!("/orgs/{org}/devices/{device}"))
    }

    /// disable, enable, rotate, retire or allow-once on `org/device`.
    pub fn device_verb(&self, org: &str, device: &str, verb: &str) -> Result<Device, String> {
        self.post_empty(&format!("/orgs/{org}/devices/{device}/{verb}"))
    }

    // ---- volume modes and header escrow ----

    pub fn report_mode(&self, org: &str, device: &str, mode: Mode) -> Result<Device, String> {
        let report = ModeReport {
            mode: mode.as_str().into(),
        };
        self.post(&format!("/orgs/{org}/devices/{device}/mode"), Some(&report))
    }

    pub fn set_escrow_key(&self, org: &str, key: &NewEscrowKey) -> Result<EscrowKey, String> {
        self.post(&format!("/orgs/{org}/escrow-key"), Some(key))
    }

    pub fn escrow_key(&self, org: &str) -> Result<EscrowKey, String> {
        self.get(&format!("/orgs/{org}/escrow-key"))
    }

    /// What the machine does: its header backup, encrypted there to the org's escrow key.
    pub fn put_escrow(
        &self,
        org: &str,
        device: &str,
        upload: &NewEscrow,
    ) -> Result<EscrowInfo, String> {
        self.post(
            &format!("/orgs/{org}/devices/{device}/escrow"),
            Some(upload),
        )
    }

    pub fn escrow(&self, org: &str, device: &str) -> Result<EscrowBlob, String> {
        self.get(&format!("/orgs/{org}/devices/{device}/escrow"))
    }

    pub fn rm_escrow(&self, org: &str, device: &str) -> Result<Removed, String> {
        self.post_empty(&format!("/orgs/{org}/devices/{device}/escrow/rm"))
    }

    // ---- where a device may unlock from ----

    pub fn tag(&self, org: &str, device: &str, tags: &Tags) -> Result<Device, String> {
        self.post(&format!("/orgs/{org}/devices/{device}/tags"), Some(tags))
    }

    pub fn sources(
        &self,
        org: &str,
        device: &str,
        change: &SourceChange,
    ) -> Result<Device, String> {
        self.post(
            &format!("/orgs/{org}/devices/{device}/sources"),
            Some(change),
        )
    }

    pub fn netlist_attach(
        &self,
        org: &str,
        device: &str,
        name: &str,
        attach: bool,
    ) -> Result<Device, String> {
        let verb = if attach { "attach" } else { "detach" };
        self.post_empty(&format!(
            "/orgs/{org}/devices/{device}/netlists/{name}/{verb}"
        ))
    }

    pub fn add_netlist(&self, org: &str, list: &Netlist) -> Result<Named, String> {
        self.post(&format!("/orgs/{org}/netlists"), Some(list))
    }

    pub fn add_webhook(&self, org: &str, url: &str) -> Result<WebhookCreated, String> {
        let body = NewWebhook {
            url: url.to_owned(),
        };
        self.post(&format!("/orgs/{org}/webhooks"), Some(&body))
    }

    pub fn webhooks(&self, org: &str) -> Result<WebhookList, String> {
        self.get(&format!("/orgs/{org}/webhooks"))
    }

    pub fn rm_webhook(&self, org: &str, id: i64) -> Result<Removed, String> {
        self.post_empty(&format!("/orgs/{org}/webhooks/{id}/rm"))
    }

    pub fn rm_netlist(&self, org: &str, name: &str) -> Result<Removed, String> {
        self.post_empty(&format!("/orgs/{org}/netlists/{name}/rm"))
    }

    pub fn netlists(&self, org: &str) -> Result<NetlistList, String> {
        self.get(&format!("/orgs/{org}/netlists"))
    }

    // ---- approvals ----

    pub fn add_group(&self, org: &str, group: &NewGroup) -> Result<GroupCreated, String> {
        self.post(&format!("/orgs/{org}/groups"), Some(group))
    }

    pub fn rm_group(&self, org: &str, name: &str) -> Result<Removed, String> {
        self.post_empty(&format!("/orgs/{org}/groups/{name}/rm"))
    }

    pub fn groups(&self, org: &str) -> Result<GroupList, String> {
        self.get(&format!("/orgs/{org}/groups"))
    }

    pub fn requests(&self, query: &RequestQuery) -> Result<RequestList, String> {
        let mut path = String::from("/requests?");
        if let Some(org) = &query.org {
            path.push_str(&format!("org={org}&"));
        }
        if query.all {
            path.push_str("all=true");
        }
        self.get(&path)
    }

    pub fn decide(&self, id: i64, verdict: Verdict) -> Result<Decided, String> {
        self.post_empty(&format!("/requests/{id}/{}", verdict.as_str()))
    }

    // ---- accounts and tokens ----

    pub fn add_account(&self, org: &str, account: &NewAccount) -> Result<AccountCreated, String> {
        self.post(&format!("/orgs/{org}/accounts"), Some(account))
    }

    pub fn add_token(&self) -> Result<TokenCreated, String> {
        self.post_empty("/tokens")
    }

    pub fn revoke_token(&self, id: i64) -> Result<Revoked, String> {
        self.post_empty(&format!("/tokens/{id}/revoke"))
    }

    // ---- history and audit ----

    pub fn history(&self, query: &HistoryQuery) -> Result<HistoryList, String> {
        let mut path = format!("/history?limit={}", query.limit.unwrap_or(100));
        if let Some(org) = &query.org {
            path.push_str(&format!("&org={org}"));
        }
        if let Some(device) = &query.device {
            path.push_str(&format!("&device={device}"));
        }
        self.get(&path)
    }

    pub fn audit(&self, query: &AuditQuery) -> Result<AuditList, String> {
        match &query.org {
            Some(org) => self.get(&format!("/audit?org={org}")),
            None => self.get("/audit"),
        }
    }
}
