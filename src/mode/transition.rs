//! Changing a volume's mode. Each change runs under a header backup (restored if a step
//! fails) and orders its writes so that a kill at any of them leaves a volume that opens
//! with its user key, and with its old network binding until the sovereign marker lands:
//! the marker is written before any binding is removed, and removed only after a new
//! binding works.

use serde_json::{Value, json};
use zeroize::Zeroizing;

use super::{Mode, SlotKind, Survey, recovery_key};
use crate::admin::{Admin, DeviceUrl};
use crate::bind::{self, BindRequest, with_backup};
use crate::boot;
use crate::error::{Error, Result};
use crate::http::Timeouts;
use crate::luks::{Marker, UserKeyCost, Volume};
use crate::pin::Context;

/// Checks that `key` opens a keyslot no clevis token binds; returns that slot.
pub fn prove_user_key(volume: &mut Volume, key: &[u8]) -> Result<u32> {
    let survey = Survey::of(volume);
    for slot in survey.user_slots() {
        match volume.test_key(Some(slot), key) {
            Ok(slot) => return Ok(slot),
            Err(Error::WrongKey) => continue,
            Err(other) => return Err(other),
        }
    }
    if survey.user_slots().is_empty() {
        return Err(Error::Config(format!(
            "{} has no user key: enrol one first (`mode managed+user`)",
            volume.path().display()
        )));
    }
    Err(Error::WrongKey)
}

/// A key recovered through a network binding, now: proof that the managed path works.
pub fn recover_through_network(volume: &mut Volume, ctx: &Context) -> Result<Zeroizing<Vec<u8>>> {
    let (bindings, mut failures) = boot::usable_bindings(volume);
    let network: Vec<boot::Binding> = bindings
        .into_iter()
        .filter(|b| b.pin.requires_network())
        .collect();
    if network.is_empty() {
        return Err(failures.pop().unwrap_or_else(|| {
            Error::Config(format!(
                "{} has no network binding",
                volume.path().display()
            ))
        }));
    }
    let opens = |slots: &[u32], key: &[u8]| volume.test_key(Some(slots[0]), key).map(drop);
    boot::recover_once(&network, ctx, opens)
        .map(|(_, key)| key)
        .map_err(|round| Error::Threshold {
            needed: 1,
            succeeded: 0,
            failures: round,
        })
}

/// A new user key: a passphrase the user chose, or a generated recovery key.
pub enum NewUserKey {
    Passphrase(Zeroizing<Vec<u8>>),
    RecoveryKey(Zeroizing<String>),
}

impl NewUserKey {
    pub fn recovery() -> Result<NewUserKey> {
        Ok(NewUserKey::RecoveryKey(recovery_key::generate()?))
    }

    fn bytes(&self) -> &[u8] {
        match self {
            NewUserKey::Passphrase(p) => p,
            NewUserKey::RecoveryKey(k) => k.as_bytes(),
        }
    }
}

/// Enrols `new_key` in a new keyslot (Argon2id), authorized by a key the network
/// recovers now, and proves it opens the volume. Returns the keyslot.
pub fn enrol_user_key(
    volume: &mut Volume,
    new_key: &NewUserKey,
    cost: &UserKeyCost,
    ctx: &Context,
) -> Result<u32> {
    volume.refuse_if_sovereign()?;
    let authorization = recover_through_network(volume, ctx)?;
    with_backup(volume, |volume| {
        let slot = volume.add_user_keyslot(&authorization, new_key.bytes(), cost)?;
        if matches!(new_key, NewUserKey::RecoveryKey(_)) {
            let token = json!({"type": recovery_key::TOKEN_TYPE, "keyslots": [slot.to_string()]});
            volume.write_token(None, &token)?;
        }
        volume.test_key(Some(slot), new_key.bytes())?;
        Ok(slot)
    })
}

/// Binds the volume to the network again (or for the first time), authorized by the user
/// key, and only then removes the sovereign marker. Returns the new binding's keyslot.
pub fn bind_network(
    volume: &mut Volume,
    user_key: &[u8],
    pin: &str,
    config: &Value,
    ctx: &Context,
) -> Result<u32> {
    prove_user_key(volume, user_key)?;
    let request = BindRequest {
        slot: None,
        token: None,
        pin,
        config,
    };
    // The marker stays through the bind: a kill leaves a sovereign volume with a spare
    // binding, which the next run of this verb finds and keeps.
    let slot = bind::bind(volume, &request, user_key, ctx)?;
    match Survey::of(volume).keyslots.iter().find(|(s, _)| *s == slot) {
        Some((_, SlotKind::Network { .. })) => {}
        _ => {
            bind::unbind(volume, slot)?;
            return Err(Error::Config(format!(
                "a {pin} binding needs no network: it is not a managed path"
            )));
        }
    }
    volume.remove_markers()?;
    Ok(slot)
}

/// Removes every clevis binding after placing the marker. `user_key` must open a user
/// keyslot. Returns the marker as written (its servers not yet told).
pub fn become_sovereign(volume: &mut Volume, user_key: &[u8], now: i64) -> Result<Marker> {
    prove_user_key(volume, user_key)?;
    let urls = Survey::of(volume).network_servers();
    let marker = match volume.marker() {
        // A run that was interrupted, or a second one: keep what the first one recorded.
        Some(mut existing) => {
            for url in urls {
                if !existing.servers.iter().any(|s| s.url == url) {
                    existing
                        .servers
                        .push(crate::luks::ToldServer { url, told: false });
                }
            }
            existing
        }
        None => Marker::new(now, urls),
    };
    with_backup(volume, |volume| {
        let marker = volume.write_marker(&marker)?;
        // Slot first, then its binding, as unbind does: a kill leaves an orphan token.
        for binding in volume.bindings() {
            if binding.active {
                volume.destroy_keyslot(binding.slot)?;
            }
            volume.remove_binding(&binding)?;
        }
        volume.remove_orphan_bindings()?;
        Ok(marker)
    })
}

/// Removes the user keys (and the systemd tokens that named them), after proving that a
/// network binding opens the volume now. Returns the keyslots removed.
pub fn remove_user_keys(volume: &mut Volume, ctx: &Context) -> Result<Vec<u32>> {
    volume.refuse_if_sovereign()?;
    recover_through_network(volume, ctx)?;
    let users = Survey::of(volume).user_slots();
    let named: Vec<u32> = volume
        .tokens()
        .into_iter()
        .filter(|(_, json)| {
            let slots = json.get("keyslots").and_then(Value::as_array);
            let is_clevis = json.get("type").and_then(Value::as_str) == Some("clevis");
            !is_clevis
                && slots.is_some_and(|l| {
                    !l.is_empty()
                        && l.iter()
                            .filter_map(|s| s.as_str()?.parse::<u32>().ok())
                            .all(|s| users.contains(&s))
                })
        })
        .map(|(id, _)| id)
        .collect();
    with_backup(volume, |volume| {
        for &slot in &users {
            volume.destroy_keyslot(slot)?;
        }
        for &token in &named {
            volume.remove_token(token)?;
        }
        Ok(users.clone())
    })
}

/// What became of telling one server.
#[derive(Debug)]
pub enum Told {
    /// The server confirmed (the device's keys destroyed, for sovereign).
    Done,
    /// Not an nbde-server device URL: a stock tang server keeps no per-device keys.
    NotNbde,
    /// No operator token: the command to run instead.
    NoToken {
        command: String,
    },
    Failed(Error),
}

/// Where to reach the admin API of `url` (`server` replacing the binding's base).
pub fn device_of(url: &str, server: Option<&str>) -> Option<DeviceUrl> {
    DeviceUrl::parse(url).map(|d| d.with_base(server))
}

/// The command an operator runs to tell the server by hand.
pub fn server_command(device: &DeviceUrl, mode: Mode) -> String {
    format!(
        "NBDE_SERVER={} NBDE_TOKEN=… nbde-server device mode {} {}",
        device.base,
        device.spec(),
        mode.as_str()
    )
}

/// Reports `mode` to the nbde-server behind each of `urls`.
pub fn tell(
    urls: &[String],
    mode: Mode,
    token: Option<&Zeroizing<String>>,
    server: Option<&str>,
    timeouts: Timeouts,
) -> Vec<(String, Told)> {
    urls.iter()
        .map(|url| {
            let told = match (device_of(url, server), token) {
                (None, _) => Told::NotNbde,
                (Some(device), None) => Told::NoToken {
                    command: server_command(&device, mode),
                },
                (Some(device), Some(token)) => {
                    match Admin::new(&device.base, token.clone(), timeouts)
                        .and_then(|admin| admin.report_mode(&device, mode.as_str()))
                    {
                        Ok(_) => Told::Done,
                        Err(e) => Told::Failed(e),
                    }
                }
            };
            (url.clone(), told)
        })
        .collect()
}

/// Before a sovereign change with a token: every nbde-server bound must answer for its
/// device now, so a server that is down refuses the change before the header is touched.
pub fn check_servers(
    urls: &[String],
    token: &Zeroizing<String>,
    server: Option<&str>,
    timeouts: Timeouts,
) -> Result<()> {
    for device in urls.iter().filter_map(|u| device_of(u, server)) {
        Admin::new(&device.base, token.clone(), timeouts)
            .and_then(|admin| admin.device(&device))
            .map_err(|e| {
                Error::Config(format!(
                    "cannot reach the server of {} to destroy its keys, nothing changed: {e}",
                    device.spec()
                ))
            })?;
    }
    Ok(())
}

/// Records in the marker which servers confirmed.
pub fn record_told(volume: &mut Volume, told: &[(String, Told)]) -> Result<Marker> {
    let mut marker = volume
        .marker()
        .ok_or_else(|| Error::Config("the sovereign marker is gone".into()))?;
    let mut changed = false;
    for server in &mut marker.servers {
        let done = told
            .iter()
            .any(|(url, t)| *url == server.url && matches!(t, Told::Done | Told::NotNbde));
        if done && !server.told {
            server.told = true;
            changed = true;
        }
    }
    if changed {
        marker = volume.write_marker(&marker)?;
    }
    Ok(marker)
}
