//! A tangd key directory served as tangd serves it: `*.jwk` advertised, `.*.jwk` (rotated
//! by `tangd-rotate-keys`) hidden but still answering `/rec/{kid}` and signing `/adv/{kid}`.
//! The directory is re-read when its modification time changes, so rotation needs no restart.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use nbde_proto::Jwk;

use crate::error::{ApiError, Result};
use crate::keys::{advertised_form, sign_adv};

pub struct TangKeys {
    /// (key, hidden)
    keys: Vec<(Jwk, bool)>,
    /// The default advertisement, signed by the visible signing keys.
    adv: String,
}

impl TangKeys {
    fn load(dir: &Path) -> Result<TangKeys> {
        let mut keys = Vec::new();
        let entries = std::fs::read_dir(dir)
            .map_err(|e| ApiError::Internal(format!("tang dir {}: {e}", dir.display())))?;
        let mut names: Vec<_> = entries
            .filter_map(|e| e.ok())
            .map(|e| e.file_name())
            .collect();
        names.sort();
        for name in names {
            let name = name.to_string_lossy().into_owned();
            if !name.ends_with(".jwk") {
                continue;
            }
            let text = std::fs::read_to_string(dir.join(&name))
                .map_err(|e| ApiError::Internal(format!("tang key {name}: {e}")))?;
            let jwk = serde_json::from_str(&text)
                .ok()
                .and_then(|v| Jwk::from_value(v).ok())
                .ok_or_else(|| ApiError::Internal(format!("tang key {name}: not a JWK")))?;
            keys.push((jwk, name.starts_with('.')));
        }
        let advertised: Vec<Jwk> = keys
            .iter()
            .filter(|(k, hidden)| !hidden && (k.allows("sign") || k.allows("deriveKey")))
            .map(|(k, _)| advertised_form(k))
            .collect();
        let signers: Vec<&Jwk> = keys
            .iter()
            .filter(|(k, hidden)| !hidden && k.allows("sign"))
            .map(|(k, _)| k)
            .collect();
        let adv = sign_adv(&advertised, &signers)?;
        Ok(TangKeys { keys, adv })
    }

    pub fn adv(&self) -> &str {
        &self.adv
    }

    /// `/adv/{kid}`: the advertisement also signed by the signing key `kid`, hidden or not.
    pub fn adv_for(&self, kid: &str) -> Result<Option<String>> {
        let Some((extra, hidden)) = self
            .keys
            .iter()
            .find(|(k, _)| k.allows("sign") && k.matches_thumbprint(kid))
        else {
            return Ok(None);
        };
        if !hidden {
            return Ok(Some(self.adv.clone()));
        }
        let advertised: Vec<Jwk> = self
            .keys
            .iter()
            .filter(|(k, h)| !h && (k.allows("sign") || k.allows("deriveKey")))
            .map(|(k, _)| advertised_form(k))
            .collect();
        let mut signers: Vec<&Jwk> = self
            .keys
            .iter()
            .filter(|(k, h)| !h && k.allows("sign"))
            .map(|(k, _)| k)
            .collect();
        signers.push(extra);
        sign_adv(&advertised, &signers).map(Some)
    }

    /// The exchange key (hidden or not) named by `kid`.
    pub fn exchange_key(&self, kid: &str) -> Option<&Jwk> {
        self.keys
            .iter()
            .map(|(k, _)| k)
            .find(|k| k.allows("deriveKey") && k.matches_thumbprint(kid))
    }
}

pub struct TangDir {
    dir: PathBuf,
    cached: Mutex<Option<(SystemTime, Arc<TangKeys>)>>,
}

impl TangDir {
    pub fn new(dir: PathBuf) -> Result<TangDir> {
        let tang = TangDir {
            dir,
            cached: Mutex::new(None),
        };
        tang.keys()?;
        Ok(tang)
    }

    pub fn keys(&self) -> Result<Arc<TangKeys>> {
        let modified = std::fs::metadata(&self.dir)
            .and_then(|m| m.modified())
            .map_err(|e| ApiError::Internal(format!("tang dir {}: {e}", self.dir.display())))?;
        let mut cached = self
            .cached
            .lock()
            .map_err(|_| ApiError::Internal("tang dir lock poisoned".into()))?;
        if let Some((at, keys)) = cached.as_ref()
            && *at == modified
        {
            return Ok(keys.clone());
        }
        let keys = Arc::new(TangKeys::load(&self.dir)?);
        *cached = Some((modified, keys.clone()));
        Ok(keys)
    }
}
