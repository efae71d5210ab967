//! Private keys sealed at rest (see `crate::kek`): what a backend keeps about them, and the
//! `Store` calls that seal on the way in and open on the way out, so a backend only ever
//! sees sealed text.
//!
//! The store records the id of the KEK its keys are sealed under (`key_encryption`). An
//! invariant every change keeps: once an id is recorded, every key in the store is sealed
//! under it. Sealing a store's plain keys (from before keys were sealed) and rekeying are
//! one transaction each, guarded by the id they start from, and both leave an erasure
//! pending, so the old texts leave no copy behind.

use zeroize::{Zeroize, Zeroizing};

use super::{Result, Store, StoreError};
use crate::kek::{Kek, KeySlot, SealError, Sealed};

/// The two families of private keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyFamily {
    Signing,
    Exchange,
}

impl KeyFamily {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyFamily::Signing => "signing",
            KeyFamily::Exchange => "exchange",
        }
    }

    pub fn parse(text: &str) -> Option<KeyFamily> {
        match text {
            "signing" => Some(KeyFamily::Signing),
            "exchange" => Some(KeyFamily::Exchange),
            _ => None,
        }
    }
}

/// A private key as stored (sealed, or plain in a store from before sealing), with its
/// place. The text is wiped when dropped.
#[derive(Debug)]
pub struct StoredKey {
    pub family: KeyFamily,
    /// The row id in its family's table.
    pub row: i64,
    pub org: String,
    /// None for a signing key.
    pub device: Option<String>,
    pub text: String,
}

impl StoredKey {
    pub fn slot(&self) -> KeySlot<'_> {
        match (&self.family, &self.device) {
            (KeyFamily::Exchange, Some(device)) => KeySlot::Exchange {
                org: &self.org,
                device,
            },
            _ => KeySlot::Signing { org: &self.org },
        }
    }
}

impl Drop for StoredKey {
    fn drop(&mut self) {
        self.text.zeroize();
    }
}

/// One key's new text, replacing `old` (the change is refused if the row no longer holds
/// it). Both texts are wiped when dropped.
pub struct Resealed {
    pub family: KeyFamily,
    pub row: i64,
    pub old: String,
    pub new: String,
}

impl Drop for Resealed {
    fn drop(&mut self) {
        self.old.zeroize();
        self.new.zeroize();
    }
}

/// A sealed key on its way into a backend, with the id of the KEK it is sealed under: the
/// backend adds it only if that is still the store's (a rekey since this process started
/// would otherwise leave a key no KEK of the store opens).
#[derive(Clone, Copy, Debug)]
pub struct SealedJwk<'a> {
    pub kek_id: &'a str,
    pub text: &'a str,
}

/// The text every key sealed under `kek_id` starts with.
pub fn sealed_prefix(kek_id: &str) -> String {
    format!("nbde-sealed-v1.{kek_id}.")
}

pub fn other_kek(org: &str) -> StoreError {
    StoreError::Conflict(format!(
        "the store's keys are sealed under another key-encryption key than this server's \
         (rekeyed since it started?): restart it with the current one ({org})"
    ))
}

/// What a backend keeps about sealing.
pub trait SealedKeys {
    /// The id of the KEK the store's keys are sealed under; None before one is recorded.
    fn kek_id(&self) -> Result<Option<String>>;
    /// Every private key, signing keys first.
    fn stored_keys(&self) -> Result<Vec<StoredKey>>;
    /// In one transaction, if the recorded id is still `from`: replaces each key's text
    /// (its row must still hold `old`) and records `to`; then every key must be sealed
    /// under `to`. Conflict if a guard fails (nothing changed). An erasure is left pending
    /// when texts were replaced.
    fn reseal(&self, from: Option<&str>, to: &str, keys: &[Resealed]) -> Result<()>;
    /// Refuses (Conflict, saying how many) while a server serves this store, and keeps
    /// servers from starting to until this process ends: a rekey runs alone.
    fn exclude_servers(&self) -> Result<()>;
}

/// Why a store and a KEK do not go together.
#[derive(Debug)]
pub enum UnlockError {
    /// The store's keys are sealed under the KEK with this id, not the one given.
    OtherKek {
        store: String,
    },
    Store(StoreError),
}

impl From<StoreError> for UnlockError {
    fn from(e: StoreError) -> Self {
        UnlockError::Store(e)
    }
}

impl std::fmt::Display for UnlockError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UnlockError::OtherKek { store } => write!(
                f,
                "the store's keys are sealed under another key-encryption key (id {store})"
            ),
            UnlockError::Store(e) => e.fmt(f),
        }
    }
}

/// Guarded changes that lose a race (another replica sealing at the same time) are tried
/// again this many times.
const ATTEMPTS: usize = 5;

fn sealing_failed(slot: &KeySlot<'_>, e: SealError) -> StoreError {
    StoreError::Unavailable(format!("{slot}: {e}"))
}

impl Store {
    /// The KEK this store was unlocked with.
    pub fn kek(&self) -> Result<&Kek> {
        self.1.get().ok_or_else(|| {
            StoreError::Unavailable("the store is not unlocked (no key-encryption key)".into())
        })
    }

    /// Makes `kek` this store's: records its id in a store that has none, seals keys
    /// stored in plain text (a store from before keys were sealed) in one transaction and
    /// erases the plain texts. Returns how many keys were sealed. `OtherKek` if the store
    /// is sealed under another KEK; nothing is changed then.
    pub fn unlock(&self, kek: Kek) -> std::result::Result<usize, UnlockError> {
        if self.1.get().is_some() {
            return Err(StoreError::Unavailable("the store is unlocked already".into()).into());
        }
        let mut attempt = 0;
        let sealed = loop {
            attempt += 1;
            let recorded = self.0.kek_id()?;
            if let Some(id) = recorded.as_deref().filter(|id| *id != kek.id()) {
                return Err(UnlockError::OtherKek { store: id.into() });
            }
            let mut plain = Vec::new();
            for key in self.0.stored_keys()? {
                match Sealed::parse(&key.text) {
                    Ok(s) if s.kek_id == kek.id() => {}
                    Ok(s) => {
                        return Err(UnlockError::OtherKek {
                            store: s.kek_id.into(),
                        });
                    }
                    Err(SealError::NotSealed) => plain.push(Resealed {
                        family: key.family,
                        row: key.row,
                        new: kek
                            .seal(&key.slot(), &key.text)
                            .map_err(|e| sealing_failed(&key.slot(), e))?,
                        old: key.text.clone(),
                    }),
                    Err(e) => return Err(sealing_failed(&key.slot(), e).into()),
                }
            }
            if recorded.is_some() && plain.is_empty() {
                break 0;
            }
            match self.0.reseal(recorded.as_deref(), kek.id(), &plain) {
                Ok(()) => break plain.len(),
                Err(StoreError::Conflict(_)) if attempt < ATTEMPTS => continue,
                Err(e) => return Err(e.into()),
            }
        };
        if sealed > 0 {
            self.0.erase_destroyed()?;
        }
        let _ = self.1.set(kek);
        Ok(sealed)
    }

    /// `unlock`, for a store just opened.
    pub fn with_kek(self, kek: Kek) -> std::result::Result<Store, UnlockError> {
        self.unlock(kek)?;
        Ok(self)
    }

    /// Seals every key again under `new`, in one transaction that also records `new`'s
    /// id, and erases the old texts. The store stays unlocked with the old KEK in this
    /// process: the caller is done with it. Returns how many keys were resealed.
    pub fn rekey(&self, new: &Kek) -> Result<usize> {
        let old = self.kek()?;
        let mut attempt = 0;
        let count = loop {
            attempt += 1;
            let mut changes = Vec::new();
            for key in self.0.stored_keys()? {
                let slot = key.slot();
                let plain = old
                    .open(&slot, &key.text)
                    .map_err(|e| sealing_failed(&slot, e))?;
                changes.push(Resealed {
                    family: key.family,
                    row: key.row,
                    new: new
                        .seal(&slot, &plain)
                        .map_err(|e| sealing_failed(&slot, e))?,
                    old: key.text.clone(),
                });
            }
            match self.0.reseal(Some(old.id()), new.id(), &changes) {
                Ok(()) => break changes.len(),
                Err(StoreError::Conflict(_)) if attempt < ATTEMPTS => continue,
                Err(e) => return Err(e),
            }
        };
        self.0.erase_destroyed()?;
        Ok(count)
    }

    /// The private JWK text of a stored key, opened with this store's KEK.
    pub fn open_key(&self, slot: &KeySlot<'_>, stored: &str) -> Result<Zeroizing<String>> {
        self.kek()?
            .open(slot, stored)
            .map_err(|e| sealing_failed(slot, e))
    }

    fn seal(&self, slot: &KeySlot<'_>, jwk_text: &str) -> Result<String> {
        self.kek()?
            .seal(slot, jwk_text)
            .map_err(|e| sealing_failed(slot, e))
    }

    /// Adds an organisation with its signing key (private JWK text), sealed.
    pub fn add_org(&self, name: &str, signing_jwk: &str) -> Result<i64> {
        let text = self.seal(&KeySlot::Signing { org: name }, signing_jwk)?;
        let kek_id = self.kek()?.id();
        self.0.add_org(
            name,
            SealedJwk {
                kek_id,
                text: &text,
            },
        )
    }

    /// Adds a device with its exchange key (private JWK text), sealed.
    pub fn add_device(&self, org: &str, name: &str, exchange_jwk: &str) -> Result<i64> {
        let slot = KeySlot::Exchange { org, device: name };
        let text = self.seal(&slot, exchange_jwk)?;
        let kek_id = self.kek()?.id();
        self.0.add_device(
            org,
            name,
            SealedJwk {
                kek_id,
                text: &text,
            },
        )
    }

    /// A new advertised exchange key (private JWK text), sealed.
    pub fn rotate_device(&self, org: &str, name: &str, exchange_jwk: &str) -> Result<()> {
        let slot = KeySlot::Exchange { org, device: name };
        let text = self.seal(&slot, exchange_jwk)?;
        let kek_id = self.kek()?.id();
        self.0.rotate_device(
            org,
            name,
            SealedJwk {
                kek_id,
                text: &text,
            },
        )
    }
}
