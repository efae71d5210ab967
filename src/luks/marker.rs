//! The sovereign marker: a LUKS2 token of our own type, bound to no keyslot, saying that
//! the managed unlock path was taken away on purpose. Every unlock path looks for it first
//! and makes no network request when it is there. It remembers the servers the volume was
//! bound to and whether each was told to destroy the device's keys, so a later run can
//! finish telling them.

use serde_json::{Value, json};

use super::Volume;
use crate::error::Result;

/// The token type; libcryptsetup ignores types it has no handler for.
pub const TOKEN_TYPE: &str = "nbde-sovereign";

/// A server the volume was bound to when it became sovereign.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ToldServer {
    /// The device URL of the binding (`…/o/ORG/d/DEVICE` for nbde-server).
    pub url: String,
    /// Whether the server confirmed that the device's keys are destroyed.
    pub told: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Marker {
    /// The token id it is stored in (None until written).
    pub token: Option<u32>,
    /// When the volume became sovereign, Unix seconds.
    pub since: i64,
    pub servers: Vec<ToldServer>,
}

impl Marker {
    pub fn new(since: i64, urls: Vec<String>) -> Marker {
        Marker {
            token: None,
            since,
            servers: urls
                .into_iter()
                .map(|url| ToldServer { url, told: false })
                .collect(),
        }
    }

    /// Reads a marker token. Any token of the type is a marker, however damaged the rest:
    /// refusing automatic unlock is the safe reading.
    fn from_token(token: u32, json: &Value) -> Marker {
        let servers = json
            .get("servers")
            .and_then(Value::as_array)
            .map(|list| {
                list.iter()
                    .filter_map(|s| {
                        Some(ToldServer {
                            url: s.get("url")?.as_str()?.to_owned(),
                            told: s.get("told").and_then(Value::as_bool).unwrap_or(false),
                        })
                    })
                    .collect()
            })
            .unwrap_or_default();
        Marker {
            token: Some(token),
            since: json.get("since").and_then(Value::as_i64).unwrap_or(0),
            servers,
        }
    }

    fn to_token(&self) -> Value {
        json!({
            "type": TOKEN_TYPE,
            "keyslots": [],
            "since": self.since,
            "servers": self.servers.iter()
                .map(|s| json!({"url": s.url, "told": s.told}))
                .collect::<Vec<_>>(),
        })
    }

    /// Whether every server it names was told.
    pub fn all_told(&self) -> bool {
        self.servers.iter().all(|s| s.told)
    }
}

impl Volume {
    /// The sovereign marker, if the header has one (LUKS1 headers have no tokens).
    pub fn marker(&mut self) -> Option<Marker> {
        self.tokens()
            .into_iter()
            .find(|(_, json)| json.get("type").and_then(Value::as_str) == Some(TOKEN_TYPE))
            .map(|(id, json)| Marker::from_token(id, &json))
    }

    /// Writes `marker` (in its own token if it has one); returns it with its token id.
    pub fn write_marker(&mut self, marker: &Marker) -> Result<Marker> {
        let id = self.write_token(marker.token, &marker.to_token())?;
        Ok(Marker {
            token: Some(id),
            ..marker.clone()
        })
    }

    /// Removes every marker token.
    pub fn remove_markers(&mut self) -> Result<()> {
        while let Some(Marker {
            token: Some(id), ..
        }) = self.marker()
        {
            self.remove_token(id)?;
        }
        Ok(())
    }

    /// Fails with `Error::Sovereign` when the volume carries the marker: nothing may then
    /// recover a key automatically.
    pub fn refuse_if_sovereign(&mut self) -> Result<()> {
        match self.marker() {
            Some(_) => Err(crate::error::Error::Sovereign(
                self.path().display().to_string(),
            )),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marker_token_round_trips_and_a_damaged_one_still_counts() {
        let mut m = Marker::new(1_700_000_000, vec!["http://s/o/a/d/b".into()]);
        m.servers[0].told = true;
        let token = m.to_token();
        assert_eq!(token["keyslots"], json!([]));
        let back = Marker::from_token(3, &token);
        assert_eq!(back.servers, m.servers);
        assert_eq!(back.since, m.since);
        let damaged = Marker::from_token(0, &json!({"type": TOKEN_TYPE, "servers": 7}));
        assert!(damaged.servers.is_empty() && damaged.all_told());
    }
}
