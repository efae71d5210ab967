//! What the admin verbs print: the answer as JSON with `--json`, else lines for people
//! (tab-separated where scripts may cut them).

use nbde_server::api::{
    AuditList, Device, EscrowInfo, EscrowKey, GroupList, HistoryList, NetlistList, RequestList, utc,
};
use serde::Serialize;

pub fn print_json(value: &impl Serialize) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).unwrap_or_default()
    );
}

/// Prints `value` as JSON, or the text `describe` makes of it (nothing if that is empty).
pub fn output<T: Serialize>(value: &T, json: bool, describe: impl Fn(&T) -> String) {
    if json {
        print_json(value);
    } else {
        let text = describe(value);
        if !text.is_empty() {
            println!("{text}");
        }
    }
}

/// A JSON number as `serde_json` prints it, `null` when absent.
pub fn number(n: Option<i64>) -> String {
    n.map_or_else(|| "null".into(), |n| n.to_string())
}

pub fn device_line(d: &Device) -> String {
    format!(
        "{}/{}\t{}\t{}\tthp={}\tsource: {}",
        d.org,
        d.name,
        d.state.as_str(),
        d.url,
        d.thp.as_deref().unwrap_or(""),
        d.source,
    )
}

/// One device with its reported mode and header backup, a line each.
pub fn device_detail(d: &Device) -> String {
    let mode = match &d.mode {
        Some(m) => format!(
            "mode: {} (reported {} by {})",
            m.mode.as_str(),
            utc(m.reported_at),
            m.reported_by
        ),
        None => "mode: not reported".into(),
    };
    let escrow = match &d.escrow {
        Some(e) => format!("escrow: {}", escrow_line(e)),
        None => "escrow: none".into(),
    };
    let liveness = match d.max_silence {
        Some(s) => format!("max_silence: {}", nbde_server::liveness::human(s)),
        None => "max_silence: none".into(),
    };
    format!("{}\n{mode}\n{escrow}\n{liveness}", device_line(d))
}

pub fn escrow_line(e: &EscrowInfo) -> String {
    format!(
        "uuid={}\tkid={}\tsize={}\tuploaded {} by {}",
        e.uuid,
        e.kid,
        e.size,
        utc(e.uploaded_at),
        e.uploaded_by
    )
}

pub fn escrow_key(k: &EscrowKey) -> String {
    format!("{}\tkid={}\t{}", k.org, k.kid, json_text(&k.jwk))
}

fn json_text(value: &impl Serialize) -> String {
    serde_json::to_string(value).unwrap_or_default()
}

pub fn netlists(v: &NetlistList) -> String {
    v.netlists
        .iter()
        .map(|l| format!("{}\t{}", l.name, json_text(&l.cidrs)))
        .collect::<Vec<_>>()
        .join("\n")
}

pub fn groups(v: &GroupList) -> String {
    v.groups
        .iter()
        .map(|g| {
            format!(
                "{}\ttags={}\tapprovers={}",
                g.name,
                json_text(&g.tags),
                json_text(&g.approvers)
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

pub fn requests(v: &RequestList) -> String {
    v.requests
        .iter()
        .map(|r| {
            format!(
                "{}\t{}/{}\t{}\t{}",
                r.id,
                r.org,
                r.device,
                r.peer,
                r.state.as_str()
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

pub fn audit(v: &AuditList) -> String {
    v.audit
        .iter()
        .map(|r| format!("{}\t{}\t{}\t{}", utc(r.at), r.account, r.action, r.target))
        .collect::<Vec<_>>()
        .join("\n")
}

pub fn history(v: &HistoryList) -> String {
    v.history
        .iter()
        .map(|r| {
            format!(
                "{}\t{}/{}\t{}\t{}\t{}",
                utc(r.at),
                r.org.as_deref().unwrap_or("-"),
                r.device.as_deref().unwrap_or("-"),
                r.peer,
                r.decision,
                r.reason,
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::utc;

    #[test]
    fn utc_formats_known_instants() {
        assert_eq!(utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(utc(1_795_353_946), "2026-11-22T13:25:46Z");
    }
}
