//! LUKS2 volumes through libcryptsetup: Clevis tokens, keyslots, activation, header backup.
//!
//! Every function here changes the header in one libcryptsetup call at most; the verbs in
//! `bind.rs` order those calls so that a volume always keeps a working keyslot.

use std::path::{Path, PathBuf};

use libcryptsetup_rs::consts::flags::{CryptActivate, CryptPbkdf};
use libcryptsetup_rs::consts::vals::{CryptKdf, EncryptionFormat, KeyslotInfo, KeyslotPriority};
use libcryptsetup_rs::{CryptDevice, CryptInit, LibcryptErr, TokenInput};
use nbde_proto::Jwe;
use serde_json::{Value, json};

use crate::error::{Error, Result};

/// LUKS2 has 32 keyslots and 32 tokens.
const LUKS2_SLOTS: u32 = 32;
const LUKS2_TOKENS: u32 = 32;

/// The key of a clevis binding is high-entropy, so a slow KDF buys nothing but boot time:
/// PBKDF2 at 1000 iterations, as clevis uses.
const BOUND_SLOT_ITERATIONS: u32 = 1000;

pub struct Volume {
    device: CryptDevice,
    path: PathBuf,
}

/// A clevis token as found in the header.
#[derive(Debug)]
pub struct ClevisToken {
    pub token: u32,
    pub keyslots: Vec<u32>,
    /// The JWE, or why it could not be read (the token is reported, never fatal).
    pub jwe: std::result::Result<Jwe, String>,
}

fn luks_error(step: &'static str) -> impl FnOnce(LibcryptErr) -> Error {
    move |e| match e {
        LibcryptErr::IOError(io) if io.raw_os_error() == Some(libc::EPERM) => Error::WrongKey,
        other => Error::Luks {
            step,
            detail: other.to_string(),
        },
    }
}

impl Volume {
    /// Loads the LUKS2 header of `path`; LUKS1 and non-LUKS devices get a clear refusal.
    pub fn open(path: &Path) -> Result<Volume> {
        let mut device = CryptInit::init(path).map_err(|e| Error::Luks {
            step: "open device",
            detail: format!("{}: {e}", path.display()),
        })?;
        let loaded = device
            .context_handle()
            .load::<()>(Some(EncryptionFormat::Luks2), None);
        if loaded.is_err() {
            let mut probe = CryptInit::init(path).map_err(luks_error("open device"))?;
            let luks1 = probe
                .context_handle()
                .load::<()>(Some(EncryptionFormat::Luks1), None)
                .is_ok();
            return Err(Error::Luks {
                step: "read header",
                detail: if luks1 {
                    format!(
                        "{}: LUKS1 is not supported yet (convert with cryptsetup convert --type luks2)",
                        path.display()
                    )
                } else {
                    format!("{}: not a LUKS2 device", path.display())
                },
            });
        }
        Ok(Volume {
            device,
            path: path.to_owned(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn uuid(&mut self) -> Result<String> {
        self.device
            .status_handle()
            .get_uuid()
            .map(|u| u.to_string())
            .map_err(luks_error("read UUID"))
    }

    /// Keyslots that hold a key.
    pub fn active_keyslots(&mut self) -> Vec<u32> {
        (0..LUKS2_SLOTS)
            .filter(|&s| {
                matches!(
                    self.device.keyslot_handle().status(s),
                    Ok(KeyslotInfo::Active | KeyslotInfo::ActiveLast)
                )
            })
            .collect()
    }

    /// Every token of type `clevis`; tokens of other types (systemd-tpm2, …) are left alone.
    pub fn clevis_tokens(&mut self) -> Vec<ClevisToken> {
        let mut found = Vec::new();
        for token in 0..LUKS2_TOKENS {
            let Ok(json) = self.device.token_handle().json_get(token) else {
                continue;
            };
            if json.get("type").and_then(Value::as_str) != Some("clevis") {
                continue;
            }
            let keyslots = json
                .get("keyslots")
                .and_then(Value::as_array)
                .map(|list| {
                    list.iter()
                        .filter_map(|s| s.as_str().and_then(|s| s.parse().ok()))
                        .collect()
                })
                .unwrap_or_default();
            let jwe = match json.get("jwe") {
                Some(jwe) => Jwe::from_flattened(jwe).map_err(|e| format!("token {token}: {e}")),
                None => Err(format!("token {token}: no \"jwe\" member")),
            };
            found.push(ClevisToken {
                token,
                keyslots,
                jwe,
            });
        }
        found
    }

    /// The clevis token bound to `slot`.
    pub fn clevis_token_for(&mut self, slot: u32) -> Result<ClevisToken> {
        self.clevis_tokens()
            .into_iter()
            .find(|t| t.keyslots.contains(&slot))
            .ok_or_else(|| Error::Config(format!("slot {slot} has no clevis token")))
    }

    /// Checks `key` against `slot` (any slot if `None`) without activating; returns the slot.
    pub fn test_key(&mut self, slot: Option<u32>, key: &[u8]) -> Result<u32> {
        self.device
            .activate_handle()
            .activate_by_passphrase(None, slot, key, CryptActivate::empty())
            .map_err(luks_error("test key"))
    }

    /// Activates the volume as `name` with `key` in `slot`.
    pub fn activate(&mut self, name: &str, slot: u32, key: &[u8]) -> Result<()> {
        self.device
            .activate_handle()
            .activate_by_passphrase(Some(name), Some(slot), key, CryptActivate::empty())
            .map(|_| ())
            .map_err(luks_error("activate"))
    }

    /// Activates with a typed passphrase in any keyslot (by priority, as cryptsetup does).
    pub fn activate_any(&mut self, name: &str, passphrase: &[u8]) -> Result<()> {
        self.device
            .activate_handle()
            .activate_by_passphrase(Some(name), None, passphrase, CryptActivate::empty())
            .map(|_| ())
            .map_err(luks_error("activate"))
    }

    /// Adds `new_key` in `slot` (first free if `None`), authorized by `existing_key`, with
    /// cheap PBKDF2 and priority `prefer`.
    pub fn add_bound_keyslot(
        &mut self,
        slot: Option<u32>,
        existing_key: &[u8],
        new_key: &[u8],
    ) -> Result<u32> {
        let pbkdf = libcryptsetup_rs::CryptPbkdfType {
            type_: CryptKdf::Pbkdf2,
            hash: Some("sha256".into()),
            time_ms: 0,
            iterations: BOUND_SLOT_ITERATIONS,
            max_memory_kb: 0,
            parallel_threads: 0,
            flags: CryptPbkdf::NO_BENCHMARK,
        };
        self.device
            .settings_handle()
            .set_pbkdf_type(&pbkdf)
            .map_err(luks_error("set PBKDF"))?;
        let slot = self
            .device
            .keyslot_handle()
            .add_by_passphrase(slot, existing_key, new_key)
            .map_err(luks_error("add keyslot"))?;
        // Unlockers that try slots in order (systemd-cryptsetup, cryptroot) then try this
        // cheap slot before an Argon2 passphrase slot.
        self.device
            .keyslot_handle()
            .set_priority(slot, KeyslotPriority::Prefer)
            .map_err(luks_error("set keyslot priority"))?;
        Ok(slot)
    }

    pub fn set_prefer(&mut self, slot: u32) -> Result<()> {
        self.device
            .keyslot_handle()
            .set_priority(slot, KeyslotPriority::Prefer)
            .map_err(luks_error("set keyslot priority"))
    }

    pub fn priority(&mut self, slot: u32) -> Option<KeyslotPriority> {
        self.device.keyslot_handle().get_priority(slot).ok()
    }

    /// Writes the token `{"type":"clevis","keyslots":["N"],"jwe":{…}}`.
    pub fn add_clevis_token(&mut self, slot: u32, jwe: &Jwe) -> Result<u32> {
        let token = json!({
            "type": "clevis",
            "keyslots": [slot.to_string()],
            "jwe": jwe.to_flattened(),
        });
        self.device
            .token_handle()
            .json_set(TokenInput::AddToken(&token))
            .map_err(luks_error("write token"))
    }

    pub fn remove_token(&mut self, token: u32) -> Result<()> {
        self.device
            .token_handle()
            .json_set(TokenInput::RemoveToken(token))
            .map(|_| ())
            .map_err(luks_error("remove token"))
    }

    pub fn destroy_keyslot(&mut self, slot: u32) -> Result<()> {
        self.device
            .keyslot_handle()
            .destroy(slot)
            .map_err(luks_error("destroy keyslot"))
    }

    /// Clevis tokens none of whose keyslots hold a key (left by an interrupted bind or a
    /// slot killed by hand).
    pub fn remove_orphan_tokens(&mut self) -> Result<Vec<u32>> {
        let active = self.active_keyslots();
        let orphans: Vec<u32> = self
            .clevis_tokens()
            .into_iter()
            .filter(|t| !t.keyslots.iter().any(|s| active.contains(s)))
            .map(|t| t.token)
            .collect();
        for &token in &orphans {
            self.remove_token(token)?;
        }
        Ok(orphans)
    }

    pub fn backup_header(&mut self, file: &Path) -> Result<()> {
        self.device
            .backup_handle()
            .header_backup(Some(EncryptionFormat::Luks2), file)
            .map_err(luks_error("back up header"))
    }

    pub fn restore_header(&mut self, file: &Path) -> Result<()> {
        self.device
            .backup_handle()
            .header_restore(Some(EncryptionFormat::Luks2), file)
            .map_err(luks_error("restore header"))
    }
}

/// A header backup in a private directory, removed when dropped.
pub struct HeaderBackup {
    dir: PathBuf,
    file: PathBuf,
}

impl HeaderBackup {
    pub fn take(volume: &mut Volume) -> Result<HeaderBackup> {
        use std::os::unix::fs::DirBuilderExt;
        let base = if Path::new("/run").is_dir() {
            PathBuf::from("/run")
        } else {
            std::env::temp_dir()
        };
        let mut random = [0u8; 8];
        getrandom::fill(&mut random)
            .map_err(|_| Error::Config("random number generator failed".into()))?;
        let dir = base.join(format!("nbde-unlock-{}", nbde_proto::b64::encode(&random)));
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .map_err(Error::io(format!("creating {}", dir.display())))?;
        let file = dir.join("header");
        let backup = HeaderBackup { dir, file };
        volume.backup_header(&backup.file)?;
        Ok(backup)
    }

    pub fn file(&self) -> &Path {
        &self.file
    }
}

impl Drop for HeaderBackup {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.file);
        let _ = std::fs::remove_dir(&self.dir);
    }
}
