//! Volume modes. `managed`: only network bindings open the volume. `managed+user`: a user
//! key (a keyslot no clevis token binds: a passphrase, a recovery key, a systemd token's
//! slot) opens it too. `sovereign`: the network bindings are gone, the server destroyed
//! the device's keys, and a marker in the header stops every automatic unlock. This
//! module reads which one a header is in; `transition` changes it.

pub mod recovery_key;
pub mod transition;

use serde_json::{Value, json};

use crate::luks::{Format, Marker, Volume};
use nbde_proto::ClevisJwe;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Managed,
    ManagedUser,
    Sovereign,
    /// No network binding and no marker: a plain LUKS volume as far as we are concerned.
    Unmanaged,
}

impl Mode {
    pub fn parse(text: &str) -> Option<Mode> {
        match text {
            "managed" => Some(Mode::Managed),
            "managed+user" => Some(Mode::ManagedUser),
            "sovereign" => Some(Mode::Sovereign),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Managed => "managed",
            Mode::ManagedUser => "managed+user",
            Mode::Sovereign => "sovereign",
            Mode::Unmanaged => "unmanaged",
        }
    }
}

/// What one active keyslot is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SlotKind {
    /// A clevis binding that cannot open without a tang server (tang, or an sss whose
    /// threshold needs a tang child, such as sss(tang, tpm2) with t=2): part of the
    /// managed path.
    Network { pin: String, servers: Vec<String> },
    /// A clevis binding that opens without any server (a lone tpm2, null, an sss whose
    /// local children reach its threshold): a key local to the machine, neither managed
    /// nor the user's.
    Local { pin: String },
    /// A clevis token whose JWE cannot be read.
    Unreadable { reason: String },
    /// No clevis token binds it: a passphrase, or what a systemd token (`systemd-recovery`,
    /// `systemd-fido2`, …) names.
    User { token_type: Option<String> },
}

impl SlotKind {
    pub fn is_user_key(&self) -> bool {
        matches!(self, SlotKind::User { .. })
    }

    fn describe(&self) -> String {
        match self {
            SlotKind::Network { pin, servers } => {
                format!("network binding ({pin}: {})", servers.join(", "))
            }
            SlotKind::Local { pin } => {
                format!("local clevis binding ({pin}: opens without any server)")
            }
            SlotKind::Unreadable { reason } => format!("unreadable clevis binding ({reason})"),
            SlotKind::User { token_type: None } => "user key (passphrase)".into(),
            SlotKind::User {
                token_type: Some(t),
            } if t == recovery_key::TOKEN_TYPE => "user key (recovery key)".into(),
            SlotKind::User {
                token_type: Some(t),
            } => format!("user key ({t} token)"),
        }
    }

    fn to_json(&self) -> Value {
        match self {
            SlotKind::Network { pin, servers } => {
                json!({"kind": "network", "pin": pin, "servers": servers})
            }
            SlotKind::Local { pin } => json!({"kind": "local", "pin": pin}),
            SlotKind::Unreadable { reason } => json!({"kind": "unreadable", "reason": reason}),
            SlotKind::User { token_type } => json!({"kind": "user", "token": token_type}),
        }
    }
}

/// `items` without repeats, in first-seen order.
pub fn unique<T: PartialEq>(items: Vec<T>) -> Vec<T> {
    let mut kept = Vec::with_capacity(items.len());
    for item in items {
        if !kept.contains(&item) {
            kept.push(item);
        }
    }
    kept
}

/// Every tang URL a pin asks, sss children included.
pub fn servers_of(pin: &ClevisJwe) -> Vec<String> {
    pin.tang_pins().iter().map(|t| t.url.clone()).collect()
}

/// A volume's mode and what each of its active keyslots is.
pub struct Survey {
    pub format: Format,
    pub mode: Mode,
    pub keyslots: Vec<(u32, SlotKind)>,
    pub marker: Option<Marker>,
}

impl Survey {
    pub fn of(volume: &mut Volume) -> Survey {
        let bindings = volume.bindings();
        let token_of_slot: Vec<(u32, String)> = volume
            .tokens()
            .into_iter()
            .flat_map(|(_, json)| {
                let kind = json.get("type").and_then(Value::as_str).unwrap_or("");
                let kind = kind.to_owned();
                let slots: Vec<u32> = json
                    .get("keyslots")
                    .and_then(Value::as_array)
                    .map(|l| l.iter().filter_map(|s| s.as_str()?.parse().ok()).collect())
                    .unwrap_or_default();
                slots.into_iter().map(move |s| (s, kind.clone()))
            })
            .collect();
        let keyslots: Vec<(u32, SlotKind)> = volume
            .active_keyslots()
            .into_iter()
            .map(|slot| {
                let kind = match bindings.iter().find(|b| b.slot == slot) {
                    Some(b) => match b.jwe.clone().map(ClevisJwe::parse) {
                        Ok(Ok(pin)) if pin.requires_network() => SlotKind::Network {
                            pin: pin.name().to_owned(),
                            servers: servers_of(&pin),
                        },
                        Ok(Ok(pin)) => SlotKind::Local {
                            pin: pin.name().to_owned(),
                        },
                        Ok(Err(e)) => SlotKind::Unreadable {
                            reason: e.to_string(),
                        },
                        Err(reason) => SlotKind::Unreadable { reason },
                    },
                    None => SlotKind::User {
                        token_type: token_of_slot
                            .iter()
                            .find(|(s, _)| *s == slot)
                            .map(|(_, t)| t.clone()),
                    },
                };
                (slot, kind)
            })
            .collect();
        let marker = volume.marker();
        let network = keyslots
            .iter()
            .any(|(_, k)| matches!(k, SlotKind::Network { .. }));
        let user = keyslots.iter().any(|(_, k)| k.is_user_key());
        let mode = match (&marker, network, user) {
            (Some(_), _, _) => Mode::Sovereign,
            (None, true, false) => Mode::Managed,
            (None, true, true) => Mode::ManagedUser,
            (None, false, _) => Mode::Unmanaged,
        };
        Survey {
            format: volume.format(),
            mode,
            keyslots,
            marker,
        }
    }

    /// Every server the network bindings ask, without repeats.
    pub fn network_servers(&self) -> Vec<String> {
        let all = self.keyslots.iter().flat_map(|(_, kind)| match kind {
            SlotKind::Network { servers, .. } => servers.clone(),
            _ => Vec::new(),
        });
        unique(all.collect())
    }

    pub fn user_slots(&self) -> Vec<u32> {
        self.keyslots
            .iter()
            .filter(|(_, k)| k.is_user_key())
            .map(|(s, _)| *s)
            .collect()
    }

    /// Lines for a person: the mode, each keyslot, the marker.
    pub fn describe(&self) -> Vec<String> {
        let mut lines = vec![format!("mode: {}", self.mode.as_str())];
        if let Some(marker) = &self.marker {
            lines.push(format!(
                "marker: token {}, since {}, {}",
                marker.token.map_or("?".into(), |t| t.to_string()),
                marker.since,
                if marker.all_told() {
                    "server told".to_owned()
                } else {
                    "server not told".to_owned()
                }
            ));
            for s in &marker.servers {
                let told = if s.told { "told" } else { "not told" };
                lines.push(format!("  was bound to {} ({told})", s.url));
            }
        }
        for (slot, kind) in &self.keyslots {
            lines.push(format!("keyslot {slot}: {}", kind.describe()));
        }
        lines
    }

    pub fn to_json(&self) -> Value {
        json!({
            "format": match self.format { Format::Luks1 => "LUKS1", Format::Luks2 => "LUKS2" },
            "mode": self.mode.as_str(),
            "keyslots": self.keyslots.iter().map(|(slot, kind)| {
                let mut v = kind.to_json();
                v["slot"] = json!(slot);
                v
            }).collect::<Vec<_>>(),
            "marker": self.marker.as_ref().map(|m| json!({
                "token": m.token,
                "since": m.since,
                "servers": m.servers.iter()
                    .map(|s| json!({"url": s.url, "told": s.told}))
                    .collect::<Vec<_>>(),
            })),
        })
    }
}
