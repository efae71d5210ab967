//! The verbs that change a header: bind, unbind, rebind (regen and edit). Each runs under a
//! header backup that is restored if a later step fails, and the steps are ordered so that
//! a kill at any point leaves a working key: the user's, and a working binding wherever
//! there was one before.

use nbde_proto::{Jwe, b64};
use serde_json::Value;
use zeroize::Zeroizing;

use crate::boot;
use crate::error::{Error, Result};
use crate::inspect;
use crate::luks::{HeaderBackup, Store, Volume};
use crate::pin::{self, Context};
use crate::private;

/// Bytes of randomness in a bound key; base64url of it is the passphrase (as clevis ≥ 20).
const BOUND_KEY_BYTES: usize = 40;

/// A fresh passphrase for a bound keyslot: 40 random bytes, base64url (54 characters).
pub fn new_bound_key() -> Result<Zeroizing<Vec<u8>>> {
    let mut raw = Zeroizing::new([0u8; BOUND_KEY_BYTES]);
    private::fill_random(&mut raw[..])?;
    Ok(Zeroizing::new(b64::encode(&raw[..]).into_bytes()))
}

/// Runs `change` on the header; if it fails, puts the header back as it was.
pub(crate) fn with_backup<T>(
    volume: &mut Volume,
    change: impl FnOnce(&mut Volume) -> Result<T>,
) -> Result<T> {
    let backup = HeaderBackup::take(volume)?;
    match change(volume) {
        Ok(value) => Ok(value),
        Err(error) => match backup.restore(volume) {
            Ok(()) => Err(error),
            Err(restore) => Err(Error::Luks {
                step: "restore header after a failed change",
                detail: format!("{error}; then: {restore}"),
            }),
        },
    }
}

/// What to bind and where.
pub struct BindRequest<'a> {
    /// The keyslot (default: the first free one).
    pub slot: Option<u32>,
    /// The LUKS2 token id for the binding (default: the first free one).
    pub token: Option<u32>,
    pub pin: &'a str,
    pub config: &'a Value,
}

/// Binds `request.pin` to a new keyslot; `existing_key` (or, if it does not open the
/// volume, a key recovered through an existing binding, as clevis does) authorizes it.
pub fn bind(
    volume: &mut Volume,
    request: &BindRequest,
    existing_key: &[u8],
    ctx: &Context,
) -> Result<u32> {
    if let Some(slot) = request.slot
        && volume.is_active(slot)
    {
        return Err(Error::Config(format!("keyslot {slot} is in use")));
    }
    // Check the existing key first: a wrong one should fail before any network or header work.
    let recovered;
    let authorization = match volume.test_key(None, existing_key) {
        Ok(_) => existing_key,
        Err(Error::WrongKey) => {
            recovered = recover_any(volume, ctx).map_err(|_| Error::WrongKey)?.1;
            &recovered[..]
        }
        Err(other) => return Err(other),
    };
    let key = new_bound_key()?;
    // The network part, before the header is touched.
    let jwe = pin::encrypt(request.pin, request.config, &key, ctx)?;
    volume.check_room(&jwe)?;
    with_backup(volume, |volume| {
        volume.remove_orphan_bindings()?;
        let slot = volume.free_keyslot(request.slot, &[])?;
        volume.add_bound_keyslot(slot, authorization, &key)?;
        volume.add_binding(slot, &jwe, request.token)?;
        verify(volume, slot, &key, &jwe)?;
        Ok(slot)
    })
}

/// Reads back what a later unlock will read: the key opens `slot`, the binding is `jwe`.
fn verify(volume: &mut Volume, slot: u32, key: &[u8], jwe: &Jwe) -> Result<()> {
    volume.test_key(Some(slot), key)?;
    match volume.binding(slot)?.jwe {
        Ok(stored) if stored == *jwe => Ok(()),
        _ => Err(Error::Luks {
            step: "verify binding",
            detail: "the binding read back differs from the one written".into(),
        }),
    }
}

/// Removes the binding of `slot`: its keyslot and its token (or luksmeta slot). Refuses a
/// keyslot that no clevis binding holds (a passphrase, a systemd token's slot: the user's
/// own keys), and the last keyslot that opens the volume.
pub fn unbind(volume: &mut Volume, slot: u32) -> Result<()> {
    let binding = volume.binding(slot)?;
    if binding.active && volume.active_keyslots() == [slot] {
        return Err(Error::Config(format!(
            "keyslot {slot} is the last one that opens {}; add another key first",
            volume.path().display()
        )));
    }
    with_backup(volume, |volume| {
        // Slot first: a kill after it leaves an orphan binding, which the next bind removes.
        if binding.active {
            volume.destroy_keyslot(slot)?;
        }
        volume.remove_binding(&binding)
    })
}

/// Recovers the key of `slot`'s binding and checks that it opens the slot.
pub fn recover_slot_key(
    volume: &mut Volume,
    slot: u32,
    ctx: &Context,
) -> Result<Zeroizing<Vec<u8>>> {
    volume.refuse_if_sovereign()?;
    let jwe = volume.binding(slot)?.jwe.map_err(Error::Config)?;
    let key = pin::decrypt(&jwe, ctx)?;
    volume.test_key(Some(slot), &key)?;
    Ok(key)
}

/// Recovers any clevis binding of an active keyslot, all at once (the boot modes' round);
/// the first key that opens its own keyslot wins. Returns that keyslot and key.
pub fn recover_any(volume: &mut Volume, ctx: &Context) -> Result<(u32, Zeroizing<Vec<u8>>)> {
    volume.refuse_if_sovereign()?;
    let (bindings, mut failures) = boot::usable_bindings(volume);
    if bindings.is_empty() && failures.is_empty() {
        return Err(Error::Config(format!(
            "{}: no clevis binding",
            volume.path().display()
        )));
    }
    let opens = |slots: &[u32], key: &[u8]| volume.test_key(Some(slots[0]), key).map(drop);
    match boot::recover_once(&bindings, ctx, opens) {
        Ok((slots, key)) => Ok((slots[0], key)),
        Err(round) => {
            failures.extend(round);
            Err(Error::Threshold {
                needed: 1,
                succeeded: 0,
                failures,
            })
        }
    }
}

/// A key that opens the volume for a rebind: any binding's (the slot's own among them,
/// all asked at once), else the one `fallback` supplies (the user's passphrase), as clevis
/// regen and edit authorize.
pub fn authorize(
    volume: &mut Volume,
    ctx: &Context,
    fallback: impl FnOnce() -> Result<Zeroizing<Vec<u8>>>,
) -> Result<Zeroizing<Vec<u8>>> {
    if let Ok((_, key)) = recover_any(volume, ctx) {
        return Ok(key);
    }
    let key = fallback()?;
    volume.test_key(None, &key)?;
    Ok(key)
}

/// Rebinds `slot` to `pin`/`config` in place: the slot number stays (crypttab and scripts
/// name it). A binding works at every moment: the new key goes into a spare slot first,
/// then the old slot is replaced, then the spare goes.
pub fn rebind(
    volume: &mut Volume,
    slot: u32,
    pin_name: &str,
    config: &Value,
    authorization: &[u8],
    ctx: &Context,
) -> Result<()> {
    volume.binding(slot)?;
    let key = new_bound_key()?;
    let jwe = pin::encrypt(pin_name, config, &key, ctx)?;
    rebind_jwe(volume, slot, authorization, &key, &jwe)
}

fn rebind_jwe(
    volume: &mut Volume,
    slot: u32,
    authorization: &[u8],
    key: &[u8],
    jwe: &Jwe,
) -> Result<()> {
    volume.check_room(jwe)?;
    with_backup(volume, |volume| {
        volume.remove_orphan_bindings()?;
        let spare = volume.free_keyslot(None, &[slot]).map_err(|_| {
            Error::Config(format!(
                "{}: no free keyslot to rebind keyslot {slot} safely; remove one first",
                volume.path().display()
            ))
        })?;
        // 1. The new binding in the spare slot; the old one still works.
        volume.add_bound_keyslot(spare, authorization, key)?;
        volume.add_binding(spare, jwe, None)?;
        verify(volume, spare, key, jwe)?;
        // 2. The old binding goes; the spare works.
        let old = volume.binding(slot)?;
        volume.destroy_keyslot(slot)?;
        volume.remove_binding(&old)?;
        // 3. The new key in the old slot, with a binding of its own (in the old token id, as
        //    clevis keeps it): a tool that finds a slot's token by its first keyslot (stock
        //    clevis does) finds it; both slots work.
        volume.add_bound_keyslot(slot, key, key)?;
        let token = match old.store {
            Store::Token(id) => Some(id),
            Store::LuksMeta => None,
        };
        volume.add_binding(slot, jwe, token)?;
        // 4. The spare goes: slot first, so a kill leaves an orphan, not an unbound key.
        let spare_binding = volume.binding(spare)?;
        volume.destroy_keyslot(spare)?;
        volume.remove_binding(&spare_binding)?;
        verify(volume, slot, key, jwe)
    })
}

/// The outcome of a regen: whether the servers' current keys were trusted anew.
pub struct Regenerated {
    pub trusted_anew: bool,
}

/// Rebinds `slot` with the config that made it, to the servers' current keys. The signing
/// key trusted at bind time must vouch for the new advertisement; if it no longer can
/// (its server dropped it), `trust_anew` trusts the current advertisement as stock clevis
/// regen always does.
pub fn regen(
    volume: &mut Volume,
    slot: u32,
    authorization: &[u8],
    trust_anew: bool,
    ctx: &Context,
) -> Result<Regenerated> {
    let old = pin::parse(volume.binding(slot)?.jwe.map_err(Error::Config)?)?;
    let (pin_name, pinned) = inspect::config_of(&old, true)?;
    let key = new_bound_key()?;
    let (jwe, trusted_anew) = match pin::encrypt(&pin_name, &pinned, &key, ctx) {
        Ok(jwe) => (jwe, false),
        Err(first) if trust_anew => {
            let (_, open) = inspect::config_of(&old, false)?;
            let anew = Context {
                assume_yes: true,
                ..*ctx
            };
            let jwe = pin::encrypt(&pin_name, &open, &key, &anew).map_err(|_| first)?;
            (jwe, true)
        }
        Err(first) => return Err(first),
    };
    rebind_jwe(volume, slot, authorization, &key, &jwe)?;
    Ok(Regenerated { trusted_anew })
}
