//! LUKS volumes through libcryptsetup: keyslots, activation, header backup, and clevis
//! bindings wherever the format keeps them (LUKS2 tokens, LUKS1 luksmeta slots).
//!
//! Every function here changes the header in one libcryptsetup call (or one luksmeta
//! write) at most; the verbs in `bind.rs` order those calls so that a volume always keeps
//! a working keyslot.

mod backup;
mod keyring;
mod luks1;
pub mod luksmeta;
pub mod marker;
mod tokens;

use std::path::{Path, PathBuf};

use libcryptsetup_rs::consts::flags::{CryptActivate, CryptPbkdf};
use libcryptsetup_rs::consts::vals::{CryptKdf, EncryptionFormat, KeyslotInfo, KeyslotPriority};
use libcryptsetup_rs::{CryptDevice, CryptInit, LibcryptErr};
use nbde_proto::Jwe;
use zeroize::Zeroizing;

pub use backup::HeaderBackup;
pub use marker::{Marker, ToldServer};

use crate::error::{Error, Result};

/// The key of a clevis binding is high-entropy, so a slow KDF buys nothing but boot time:
/// PBKDF2 at 1000 iterations, as clevis uses.
const BOUND_SLOT_ITERATIONS: u32 = 1000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Luks1,
    Luks2,
}

impl Format {
    fn encryption_format(self) -> EncryptionFormat {
        match self {
            Format::Luks1 => EncryptionFormat::Luks1,
            Format::Luks2 => EncryptionFormat::Luks2,
        }
    }

    /// LUKS1 has 8 keyslots, LUKS2 32.
    pub fn keyslots(self) -> u32 {
        match self {
            Format::Luks1 => 8,
            Format::Luks2 => 32,
        }
    }
}

/// Where a binding's JWE is kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Store {
    /// A LUKS2 token of type `clevis`, by token id.
    Token(u32),
    /// The luksmeta slot of the same number as the keyslot (LUKS1).
    LuksMeta,
}

/// A clevis binding as found in the header: one keyslot and the JWE that recovers its key.
#[derive(Debug)]
pub struct Binding {
    pub slot: u32,
    /// Whether the keyslot holds a key (a binding of an empty slot is an orphan).
    pub active: bool,
    pub store: Store,
    /// The JWE, or why it could not be read (reported, never fatal).
    pub jwe: std::result::Result<Jwe, String>,
}

pub struct Volume {
    device: CryptDevice,
    path: PathBuf,
    format: Format,
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
    /// Loads the LUKS2 or LUKS1 header of `path`.
    pub fn open(path: &Path) -> Result<Volume> {
        for format in [Format::Luks2, Format::Luks1] {
            let mut device = CryptInit::init(path).map_err(|e| Error::Luks {
                step: "open device",
                detail: format!("{}: {e}", path.display()),
            })?;
            let loaded = device
                .context_handle()
                .load::<()>(Some(format.encryption_format()), None);
            if loaded.is_ok() {
                return Ok(Volume {
                    device,
                    path: path.to_owned(),
                    format,
                });
            }
        }
        Err(Error::Luks {
            step: "read header",
            detail: format!("{} is not a LUKS device", path.display()),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn format(&self) -> Format {
        self.format
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
        (0..self.format.keyslots())
            .filter(|&s| self.is_active(s))
            .collect()
    }

    pub fn is_active(&mut self, slot: u32) -> bool {
        matches!(
            self.device.keyslot_handle().status(slot),
            Ok(KeyslotInfo::Active | KeyslotInfo::ActiveLast)
        )
    }

    /// Every clevis binding, by keyslot; bindings of other kinds (systemd tokens, …) are
    /// not clevis bindings and are left alone.
    pub fn bindings(&mut self) -> Vec<Binding> {
        let mut found = match self.format {
            Format::Luks2 => tokens::bindings(&mut self.device),
            Format::Luks1 => luks1::bindings(self),
        };
        for binding in &mut found {
            binding.active = self.is_active(binding.slot);
        }
        found.sort_by_key(|b| b.slot);
        found
    }

    /// The clevis binding of `slot`.
    pub fn binding(&mut self, slot: u32) -> Result<Binding> {
        self.bindings()
            .into_iter()
            .find(|b| b.slot == slot)
            .ok_or_else(|| {
                Error::Config(format!(
                    "keyslot {slot} of {} has no clevis binding",
                    self.path.display()
                ))
            })
    }

    /// A free keyslot that can take a new binding (first one if `wanted` is `None`).
    pub fn free_keyslot(&mut self, wanted: Option<u32>, except: &[u32]) -> Result<u32> {
        let stores_taken = match self.format {
            Format::Luks2 => Vec::new(),
            Format::Luks1 => luks1::taken_slots(self),
        };
        let usable = |volume: &mut Volume, slot: u32| {
            !except.contains(&slot) && !stores_taken.contains(&slot) && !volume.is_active(slot)
        };
        match wanted {
            Some(slot) if slot >= self.format.keyslots() => Err(Error::Config(format!(
                "keyslot {slot} does not exist (0-{} for {:?})",
                self.format.keyslots() - 1,
                self.format
            ))),
            Some(slot) if usable(self, slot) => Ok(slot),
            Some(slot) => Err(Error::Config(format!("keyslot {slot} is in use"))),
            None => (0..self.format.keyslots())
                .find(|&s| usable(self, s))
                .ok_or_else(|| Error::Config(format!("{}: no free keyslot", self.path.display()))),
        }
    }

    /// Whether binding needs a luksmeta header first (a LUKS1 volume without one).
    pub fn needs_luksmeta(&mut self) -> Result<bool> {
        match self.format {
            Format::Luks2 => Ok(false),
            Format::Luks1 => luks1::is_initialized(self).map(|done| !done),
        }
    }

    /// Creates the luksmeta header on a LUKS1 volume (clevis's `luksmeta init`).
    pub fn initialize_luksmeta(&mut self) -> Result<()> {
        luks1::initialize(self)
    }

    /// Fails early, before any header change, if `jwe` cannot be stored.
    pub fn check_room(&mut self, jwe: &Jwe) -> Result<()> {
        match self.format {
            Format::Luks2 => Ok(()),
            Format::Luks1 => luks1::check_room(self, jwe),
        }
    }

    /// Stores `jwe` as the binding of `slot` (in token `token_id` if given, LUKS2 only).
    pub fn add_binding(&mut self, slot: u32, jwe: &Jwe, token_id: Option<u32>) -> Result<()> {
        match self.format {
            Format::Luks2 => tokens::add(&mut self.device, slot, jwe, token_id),
            Format::Luks1 if token_id.is_some() => Err(Error::Config(
                "token ids exist only in LUKS2; this is a LUKS1 device".into(),
            )),
            Format::Luks1 => luks1::save(self, slot, jwe),
        }
    }

    /// Removes `binding` (found before its keyslot was destroyed; the keyslot itself is
    /// not touched here).
    pub fn remove_binding(&mut self, binding: &Binding) -> Result<()> {
        match binding.store {
            Store::Token(token) => tokens::release(&mut self.device, token, binding.slot),
            Store::LuksMeta => luks1::wipe(self, binding.slot),
        }
    }

    /// Bindings whose keyslot holds no key (left by an interrupted bind or unbind, or a
    /// slot killed by hand) are removed, so that their slots can be bound again.
    pub fn remove_orphan_bindings(&mut self) -> Result<()> {
        if self.format == Format::Luks2 {
            tokens::remove_slotless(&mut self.device)?;
        }
        for orphan in self.bindings().into_iter().filter(|b| !b.active) {
            self.remove_binding(&orphan)?;
        }
        Ok(())
    }

    /// The passphrase an existing token provides (clevis's `bind -e`): a `luks2-keyring`
    /// token's key from the kernel keyring.
    pub fn token_passphrase(&mut self, token: u32) -> Result<Zeroizing<Vec<u8>>> {
        if self.format != Format::Luks2 {
            return Err(Error::Config(
                "existing token ids exist only in LUKS2; this is a LUKS1 device".into(),
            ));
        }
        let description = tokens::keyring_description(&mut self.device, token)?;
        keyring::read_user_key(&description)
    }

    /// Checks `key` against `slot` (any slot if `None`) without activating; returns the slot.
    pub fn test_key(&mut self, slot: Option<u32>, key: &[u8]) -> Result<u32> {
        self.device
            .activate_handle()
            .activate_by_passphrase(None, slot, key, CryptActivate::empty())
            .map_err(luks_error("test key"))
    }

    /// Activates the volume as `name` with `key` in `slot` (any slot if `None`, by
    /// priority, as cryptsetup does).
    pub fn activate(
        &mut self,
        name: &str,
        slot: Option<u32>,
        key: &[u8],
        flags: CryptActivate,
    ) -> Result<()> {
        self.device
            .activate_handle()
            .activate_by_passphrase(Some(name), slot, key, flags)
            .map(|_| ())
            .map_err(luks_error("activate"))
    }

    /// Adds `new_key` in `slot`, authorized by `existing_key`, with cheap PBKDF2 and (LUKS2)
    /// priority `prefer`.
    pub fn add_bound_keyslot(
        &mut self,
        slot: u32,
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
            .add_by_passphrase(Some(slot), existing_key, new_key)
            .map_err(luks_error("add keyslot"))?;
        if self.format == Format::Luks2 {
            // Unlockers that try slots in order (systemd-cryptsetup, cryptroot) then try
            // this cheap slot before an Argon2 passphrase slot.
            self.device
                .keyslot_handle()
                .set_priority(slot, KeyslotPriority::Prefer)
                .map_err(luks_error("set keyslot priority"))?;
        }
        Ok(slot)
    }

    pub fn destroy_keyslot(&mut self, slot: u32) -> Result<()> {
        self.device
            .keyslot_handle()
            .destroy(slot)
            .map_err(luks_error("destroy keyslot"))
    }

    /// The header's tokens with their JSON, by id (none on LUKS1).
    pub fn tokens(&mut self) -> Vec<(u32, serde_json::Value)> {
        match self.format {
            Format::Luks2 => tokens::all(&mut self.device),
            Format::Luks1 => Vec::new(),
        }
    }

    /// Writes `json` as token `id` (replacing it) or as a new token; returns its id.
    pub fn write_token(&mut self, id: Option<u32>, json: &serde_json::Value) -> Result<u32> {
        self.require_luks2("tokens")?;
        tokens::write(&mut self.device, id, json)
    }

    pub fn remove_token(&mut self, id: u32) -> Result<()> {
        self.require_luks2("tokens")?;
        tokens::remove(&mut self.device, id)
    }

    fn require_luks2(&self, what: &str) -> Result<()> {
        match self.format {
            Format::Luks2 => Ok(()),
            Format::Luks1 => Err(Error::Config(format!(
                "{}: {what} exist only in LUKS2; this is a LUKS1 device (cryptsetup convert --type luks2 makes it LUKS2)",
                self.path.display()
            ))),
        }
    }

    /// Adds `new_key` in the first free keyslot, authorized by `existing_key`, with a KDF
    /// fit for a key a person types: Argon2id on LUKS2 (PBKDF2 on LUKS1, all it has), cost
    /// found by libcryptsetup's benchmark within `cost`.
    pub fn add_user_keyslot(
        &mut self,
        existing_key: &[u8],
        new_key: &[u8],
        cost: &UserKeyCost,
    ) -> Result<u32> {
        let slot = self.free_keyslot(None, &[])?;
        let pbkdf = libcryptsetup_rs::CryptPbkdfType {
            type_: match self.format {
                Format::Luks2 => CryptKdf::Argon2Id,
                Format::Luks1 => CryptKdf::Pbkdf2,
            },
            hash: Some("sha256".into()),
            time_ms: cost.time_ms,
            iterations: 0,
            max_memory_kb: cost.memory_kib,
            parallel_threads: 4,
            flags: CryptPbkdf::empty(),
        };
        self.device
            .settings_handle()
            .set_pbkdf_type(&pbkdf)
            .map_err(luks_error("set PBKDF"))?;
        self.device
            .keyslot_handle()
            .add_by_passphrase(Some(slot), existing_key, new_key)
            .map_err(luks_error("add keyslot"))
    }

    /// Writes a backup of the header (keyslots included) to `file`, which must not exist.
    pub fn backup_header_to(&mut self, file: &Path) -> Result<()> {
        let format = self.format.encryption_format();
        self.device
            .backup_handle()
            .header_backup(Some(format), file)
            .map_err(luks_error("back up header"))
    }
}

/// What a user keyslot's KDF may cost: cryptsetup's `--iter-time` and `--pbkdf-memory`.
#[derive(Clone, Copy, Debug)]
pub struct UserKeyCost {
    pub time_ms: u32,
    pub memory_kib: u32,
}

impl Default for UserKeyCost {
    /// cryptsetup's defaults for LUKS2.
    fn default() -> Self {
        UserKeyCost {
            time_ms: 2000,
            memory_kib: 1 << 20,
        }
    }
}

/// Puts the LUKS2 header backup `backup` onto `device`, whose own header may be unreadable.
pub fn restore_header(device: &Path, backup: &Path) -> Result<()> {
    let mut target = CryptInit::init(device).map_err(|e| Error::Luks {
        step: "open device",
        detail: format!("{}: {e}", device.display()),
    })?;
    target
        .backup_handle()
        .header_restore(Some(EncryptionFormat::Luks2), backup)
        .map_err(luks_error("restore header"))
}
