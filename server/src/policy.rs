//! Whether the server takes part in a recovery: a pure function of a snapshot of the
//! device's policy and the facts of the request, so it can be tested by tables. The store
//! takes the snapshot and applies the decision's effect atomically; the history records
//! the reason.
//!
//! Order: lifecycle, source, allow-once, approval groups, otherwise take part.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::net::Cidr;

/// A device's lifecycle: active devices take part, disabled ones refuse (an allow-once
/// still works), retired ones have no keys left.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceState {
    Active,
    Disabled,
    Retired,
}

impl DeviceState {
    pub fn as_str(self) -> &'static str {
        match self {
            DeviceState::Active => "active",
            DeviceState::Disabled => "disabled",
            DeviceState::Retired => "retired",
        }
    }

    pub fn parse(s: &str) -> Option<DeviceState> {
        match s {
            "active" => Some(DeviceState::Active),
            "disabled" => Some(DeviceState::Disabled),
            "retired" => Some(DeviceState::Retired),
            _ => None,
        }
    }
}

/// A manual unlock request: pending until an approver decides; an approval is good for one
/// unlock within its window (then used); a denial sticks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RequestState {
    Pending,
    Approved,
    Denied,
    Used,
}

impl RequestState {
    pub fn as_str(self) -> &'static str {
        match self {
            RequestState::Pending => "pending",
            RequestState::Approved => "approved",
            RequestState::Denied => "denied",
            RequestState::Used => "used",
        }
    }

    pub fn parse(s: &str) -> Option<RequestState> {
        match s {
            "pending" => Some(RequestState::Pending),
            "approved" => Some(RequestState::Approved),
            "denied" => Some(RequestState::Denied),
            "used" => Some(RequestState::Used),
            _ => None,
        }
    }
}

/// An approver's decision on a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// Good for one unlock within the group's window.
    Approve,
    /// Sticks: the device stays refused.
    Deny,
    /// Look later: the request stays pending.
    Defer,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Approve => "approve",
            Verdict::Deny => "deny",
            Verdict::Defer => "defer",
        }
    }
}

/// Seconds a client should wait before polling a pending request again.
pub const PENDING_RETRY_SECONDS: u64 = 10;

/// The latest manual unlock request of a device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestView {
    pub id: i64,
    pub state: RequestState,
    pub expires_at: Option<i64>,
    /// Who approved or denied it, for the history's reason.
    pub decided_by: Option<String>,
}

/// Everything the policy looks at, read in one go.
#[derive(Clone, Debug)]
pub struct Snapshot {
    pub state: DeviceState,
    pub require_source: bool,
    /// The device's own allowlist plus the entries of its attached network-access lists.
    pub sources: Vec<Cidr>,
    /// An unused allow-once allowance.
    pub allow_once: Option<i64>,
    /// Whether the device's tags match all required tags of some approval group.
    pub needs_approval: bool,
    pub latest_request: Option<RequestView>,
    pub now: i64,
}

/// What the store must do for the decision to hold; each is applied with a guard so that
/// exactly one request wins a race.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Effect {
    None,
    UseAllowOnce(i64),
    UseApproval(i64),
    CreateRequest,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Allow,
    /// `kind` is the problem type the client sees: denied, disabled, pending-approval.
    Refuse {
        kind: &'static str,
        retry_after: Option<u64>,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    pub outcome: Outcome,
    pub effect: Effect,
    /// Each step's finding, for the history.
    pub reason: String,
}

impl Decision {
    pub fn label(&self) -> &'static str {
        match self.outcome {
            Outcome::Allow => "allowed",
            Outcome::Refuse { kind, .. } => kind,
        }
    }
}

fn refuse(
    kind: &'static str,
    retry_after: Option<u64>,
    effect: Effect,
    steps: Vec<String>,
) -> Decision {
    Decision {
        outcome: Outcome::Refuse { kind, retry_after },
        effect,
        reason: steps.join("; "),
    }
}

fn allow(effect: Effect, steps: Vec<String>) -> Decision {
    Decision {
        outcome: Outcome::Allow,
        effect,
        reason: steps.join("; "),
    }
}

pub fn decide(snapshot: &Snapshot, peer: IpAddr) -> Decision {
    let mut steps = Vec::new();
    // 1. Lifecycle. An allow-once works for a disabled device too.
    match snapshot.state {
        DeviceState::Active => steps.push("active".to_owned()),
        DeviceState::Disabled if snapshot.allow_once.is_some() => {
            steps.push("disabled, allow-once pending".to_owned())
        }
        DeviceState::Disabled => {
            steps.push("device disabled".to_owned());
            return refuse("disabled", None, Effect::None, steps);
        }
        DeviceState::Retired => {
            steps.push("device retired".to_owned());
            return refuse("denied", None, Effect::None, steps);
        }
    }
    // 2. Source: the observed peer (or the hop after the last trusted proxy).
    if snapshot.sources.is_empty() {
        if snapshot.require_source {
            steps.push(format!(
                "source {peer}: no allowlist and the organisation requires one"
            ));
            return refuse("denied", None, Effect::None, steps);
        }
        steps.push("any source".to_owned());
    } else if let Some(rule) = snapshot.sources.iter().find(|c| c.contains(peer)) {
        steps.push(format!("source {peer} in {rule}"));
    } else {
        steps.push(format!("source {peer} not allowed"));
        return refuse("denied", None, Effect::None, steps);
    }
    // 3. Allow-once: takes part, skipping approval.
    if let Some(id) = snapshot.allow_once {
        steps.push(format!("allow-once #{id} used"));
        return allow(Effect::UseAllowOnce(id), steps);
    }
    // 4. Approval groups.
    if snapshot.needs_approval {
        let pending = Some(PENDING_RETRY_SECONDS);
        match &snapshot.latest_request {
            Some(r)
                if r.state == RequestState::Approved
                    && r.expires_at.is_some_and(|t| t > snapshot.now) =>
            {
                let by = r.decided_by.as_deref().unwrap_or("?");
                steps.push(format!("request #{} approved by {by}", r.id));
                return allow(Effect::UseApproval(r.id), steps);
            }
            Some(r) if r.state == RequestState::Pending => {
                steps.push(format!("request #{} pending", r.id));
                return refuse("pending-approval", pending, Effect::None, steps);
            }
            Some(r) if r.state == RequestState::Denied => {
                steps.push(format!("request #{} denied", r.id));
                return refuse("denied", None, Effect::None, steps);
            }
            _ => {
                steps.push("approval requested".to_owned());
                return refuse("pending-approval", pending, Effect::CreateRequest, steps);
            }
        }
    }
    allow(Effect::None, steps)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidrs(list: &[&str]) -> Vec<Cidr> {
        list.iter().map(|c| c.parse().unwrap()).collect()
    }

    fn base() -> Snapshot {
        Snapshot {
            state: DeviceState::Active,
            require_source: false,
            sources: vec![],
            allow_once: None,
            needs_approval: false,
            latest_request: None,
            now: 1000,
        }
    }

    fn request(state: &str, expires_at: Option<i64>) -> Option<RequestView> {
        Some(RequestView {
            id: 7,
            state: RequestState::parse(state).unwrap(),
            expires_at,
            decided_by: Some("alice".into()),
        })
    }

    #[test]
    fn each_step_alone_and_combined() {
        let v4: IpAddr = "192.0.2.10".parse().unwrap();
        let v6: IpAddr = "2001:db8::10".parse().unwrap();
        type Case = (
            &'static str,
            fn(&mut Snapshot),
            IpAddr,
            &'static str,
            Effect,
        );
        let cases: Vec<Case> = vec![
            ("active, any source", |_| {}, v4, "allowed", Effect::None),
            (
                "disabled",
                |s| s.state = DeviceState::Disabled,
                v4,
                "disabled",
                Effect::None,
            ),
            (
                "retired",
                |s| s.state = DeviceState::Retired,
                v4,
                "denied",
                Effect::None,
            ),
            (
                "require source, none",
                |s| s.require_source = true,
                v4,
                "denied",
                Effect::None,
            ),
            (
                "v4 in /24",
                |s| s.sources = cidrs(&["192.0.2.0/24"]),
                v4,
                "allowed",
                Effect::None,
            ),
            (
                "v4 at /32 edge",
                |s| s.sources = cidrs(&["192.0.2.10/32"]),
                v4,
                "allowed",
                Effect::None,
            ),
            (
                "v4 just outside",
                |s| s.sources = cidrs(&["192.0.2.11/32", "192.0.2.0/29"]),
                v4,
                "denied",
                Effect::None,
            ),
            (
                "v6 in /64",
                |s| s.sources = cidrs(&["2001:db8::/64"]),
                v6,
                "allowed",
                Effect::None,
            ),
            (
                "v6 vs v4 list",
                |s| s.sources = cidrs(&["0.0.0.0/0"]),
                v6,
                "denied",
                Effect::None,
            ),
            (
                "v4 vs v6 list",
                |s| s.sources = cidrs(&["::/0"]),
                v4,
                "denied",
                Effect::None,
            ),
            (
                "require source, has one",
                |s| {
                    s.require_source = true;
                    s.sources = cidrs(&["192.0.2.0/24"]);
                },
                v4,
                "allowed",
                Effect::None,
            ),
            (
                "allow-once",
                |s| s.allow_once = Some(3),
                v4,
                "allowed",
                Effect::UseAllowOnce(3),
            ),
            (
                "allow-once on disabled",
                |s| {
                    s.state = DeviceState::Disabled;
                    s.allow_once = Some(3);
                },
                v4,
                "allowed",
                Effect::UseAllowOnce(3),
            ),
            (
                "allow-once, wrong source",
                |s| {
                    s.allow_once = Some(3);
                    s.sources = cidrs(&["198.51.100.0/24"]);
                },
                v4,
                "denied",
                Effect::None,
            ),
            (
                "allow-once skips approval",
                |s| {
                    s.allow_once = Some(3);
                    s.needs_approval = true;
                },
                v4,
                "allowed",
                Effect::UseAllowOnce(3),
            ),
            (
                "approval, no request",
                |s| s.needs_approval = true,
                v4,
                "pending-approval",
                Effect::CreateRequest,
            ),
            (
                "approval, pending",
                |s| {
                    s.needs_approval = true;
                    s.latest_request = request("pending", None);
                },
                v4,
                "pending-approval",
                Effect::None,
            ),
            (
                "approval, approved",
                |s| {
                    s.needs_approval = true;
                    s.latest_request = request("approved", Some(1001));
                },
                v4,
                "allowed",
                Effect::UseApproval(7),
            ),
            (
                "approval, approved but expired",
                |s| {
                    s.needs_approval = true;
                    s.latest_request = request("approved", Some(1000));
                },
                v4,
                "pending-approval",
                Effect::CreateRequest,
            ),
            (
                "approval, used",
                |s| {
                    s.needs_approval = true;
                    s.latest_request = request("used", Some(5000));
                },
                v4,
                "pending-approval",
                Effect::CreateRequest,
            ),
            (
                "approval, denied sticks",
                |s| {
                    s.needs_approval = true;
                    s.latest_request = request("denied", None);
                },
                v4,
                "denied",
                Effect::None,
            ),
            (
                "approval, but source refused first",
                |s| {
                    s.needs_approval = true;
                    s.sources = cidrs(&["10.0.0.0/8"]);
                },
                v4,
                "denied",
                Effect::None,
            ),
            (
                "disabled before source",
                |s| {
                    s.state = DeviceState::Disabled;
                    s.sources = cidrs(&["10.0.0.0/8"]);
                },
                v4,
                "disabled",
                Effect::None,
            ),
        ];
        for (name, setup, peer, label, effect) in cases {
            let mut snapshot = base();
            setup(&mut snapshot);
            let decision = decide(&snapshot, peer);
            assert_eq!(decision.label(), label, "{name}: {}", decision.reason);
            assert_eq!(decision.effect, effect, "{name}");
            assert!(!decision.reason.is_empty(), "{name}");
        }
    }

    #[test]
    fn pending_answers_carry_retry_after() {
        let mut s = base();
        s.needs_approval = true;
        let d = decide(&s, "192.0.2.1".parse().unwrap());
        assert_eq!(
            d.outcome,
            Outcome::Refuse {
                kind: "pending-approval",
                retry_after: Some(PENDING_RETRY_SECONDS)
            }
        );
    }
}
