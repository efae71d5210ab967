//! Whether the server takes part in a recovery: a pure function of the device and the
//! facts of the request, so it can be tested by tables. The HTTP layer calls it; the
//! history records what it said.

use std::net::IpAddr;

use crate::keys::DeviceKeys;
use crate::store::DeviceState;

/// What is known about a request when the policy runs.
#[derive(Clone, Debug)]
pub struct Facts {
    /// The observed peer address (or the hop after the last trusted proxy).
    pub peer: IpAddr,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    Allow {
        reason: String,
    },
    Refuse {
        /// The problem type the client sees: `denied`, `disabled`, `pending-approval`.
        kind: &'static str,
        reason: String,
        retry_after: Option<u64>,
    },
}

impl Decision {
    pub fn label(&self) -> &'static str {
        match self {
            Decision::Allow { .. } => "allowed",
            Decision::Refuse { kind, .. } => kind,
        }
    }

    pub fn reason(&self) -> &str {
        match self {
            Decision::Allow { reason } | Decision::Refuse { reason, .. } => reason,
        }
    }
}

pub fn decide(device: &DeviceKeys, _facts: &Facts) -> Decision {
    match device.state {
        DeviceState::Active => Decision::Allow {
            reason: "device active".into(),
        },
        DeviceState::Disabled => Decision::Refuse {
            kind: "disabled",
            reason: "device disabled".into(),
            retry_after: None,
        },
        // A retired device has no keys; the routes answer not-found before asking.
        DeviceState::Retired => Decision::Refuse {
            kind: "denied",
            reason: "device retired".into(),
            retry_after: None,
        },
    }
}
