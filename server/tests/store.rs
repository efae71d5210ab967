//! The store's contract, run against every backend through the `Store` interface alone. A
//! new backend joins by adding itself to `backends()` (in `store_contract/`).

use nbde_proto::Curve;
use nbde_server::api::Role;
use nbde_server::keys;
use nbde_server::policy::{DeviceState, Effect, RequestState, Verdict};
use nbde_server::store::history::Entry;

mod store_contract;

use store_contract::*;

#[test]
fn names_are_unique_and_misses_are_not_found() {
    for (name, store, _keep) in backends() {
        seeded(&store);
        let key = keys::generate_signing_key().unwrap();
        assert!(is_conflict(store.add_org("acme", &key)), "{name}");
        let exchange = keys::generate_exchange_key(Curve::P256).unwrap();
        assert!(
            is_conflict(store.add_device("acme", "web1", &exchange)),
            "{name}"
        );
        assert!(
            is_not_found(store.add_device("nope", "web1", &exchange)),
            "{name}"
        );
        store.add_account("alice", false).unwrap();
        assert!(is_conflict(store.add_account("alice", false)), "{name}");
        store.group_add("acme", "g", &[], &[], 900).unwrap();
        assert!(
            is_conflict(store.group_add("acme", "g", &[], &[], 900)),
            "{name}"
        );
        assert!(
            is_not_found(store.group_add("acme", "h", &[], &["bob".into()], 900)),
            "{name}"
        );
        assert!(is_not_found(store.org_id("nope")), "{name}");
        assert!(is_not_found(store.netlist_rm("acme", "nope")), "{name}");
        assert!(is_not_found(store.group_rm("acme", "nope")), "{name}");
        assert!(is_not_found(store.revoke_token(999, None)), "{name}");
        assert!(is_not_found(store.request_scope(999)), "{name}");
        assert!(is_not_found(store.tags("acme", "nope")), "{name}");
        assert!(
            is_not_found(store.netlist_attach("acme", "web1", "nope", true)),
            "{name}"
        );
    }
}

#[test]
fn lifecycle_retire_deletes_keys_and_sticks() {
    for (name, store, _keep) in backends() {
        seeded(&store);
        let jwk = keys::generate_exchange_key(Curve::P256).unwrap();
        store.rotate_device("acme", "web1", &jwk).unwrap();
        let devices = store.devices().unwrap();
        assert_eq!(devices[0].exchange_keys.len(), 2, "{name}");
        assert_eq!(
            devices[0]
                .exchange_keys
                .iter()
                .map(|(_, a)| *a)
                .collect::<Vec<_>>(),
            [false, true],
            "{name}: only the newest is advertised"
        );
        store
            .set_device_state("acme", "web1", DeviceState::Disabled)
            .unwrap();
        assert_eq!(store.devices().unwrap()[0].state, DeviceState::Disabled);
        store
            .set_device_state("acme", "web1", DeviceState::Retired)
            .unwrap();
        let device = &store.devices().unwrap()[0];
        assert_eq!(device.state, DeviceState::Retired, "{name}");
        assert!(device.exchange_keys.is_empty(), "{name}");
        assert!(is_conflict(store.set_device_state(
            "acme",
            "web1",
            DeviceState::Active
        )));
        assert!(
            is_conflict(store.rotate_device("acme", "web1", &jwk)),
            "{name}"
        );
    }
}

#[test]
fn sources_netlists_and_tags_reach_the_snapshot() {
    for (name, store, _keep) in backends() {
        let id = seeded(&store);
        let cidr = |s: &str| s.parse().unwrap();
        store
            .change_sources("acme", "web1", &[cidr("192.0.2.0/24"), cidr("::1")], true)
            .unwrap();
        store
            .change_sources("acme", "web1", &[cidr("::1")], false)
            .unwrap();
        store
            .netlist_add("acme", "lab", &[cidr("10.0.0.0/8")])
            .unwrap();
        store.netlist_attach("acme", "web1", "lab", true).unwrap();
        store
            .set_tags("acme", "web1", &[("tier".into(), "db".into())])
            .unwrap();
        store
            .set_tags("acme", "web1", &[("tier".into(), "web".into())])
            .unwrap();
        assert_eq!(
            store.sources("acme", "web1").unwrap(),
            (vec!["192.0.2.0/24".to_owned()], vec!["lab".to_owned()]),
            "{name}"
        );
        assert_eq!(
            store.tags("acme", "web1").unwrap(),
            [("tier".to_owned(), "web".to_owned())]
        );
        assert_eq!(
            store.netlists("acme").unwrap(),
            [("lab".to_owned(), vec!["10.0.0.0/8".to_owned()])]
        );
        store.set_require_source("acme", true).unwrap();
        let snapshot = store.snapshot(id).unwrap().unwrap();
        assert!(snapshot.require_source, "{name}");
        let mut sources: Vec<String> = snapshot.sources.iter().map(|c| c.to_string()).collect();
        sources.sort();
        assert_eq!(sources, ["10.0.0.0/8", "192.0.2.0/24"], "{name}");
        assert!(!snapshot.needs_approval, "{name}");
        // A group requiring the device's tag makes it need approval; removing the list
        // takes its entries out of the snapshot.
        store
            .group_add("acme", "webs", &[("tier".into(), "web".into())], &[], 60)
            .unwrap();
        store.netlist_rm("acme", "lab").unwrap();
        let snapshot = store.snapshot(id).unwrap().unwrap();
        assert!(snapshot.needs_approval, "{name}");
        assert_eq!(snapshot.sources.len(), 1, "{name}");
        assert!(store.snapshot(id + 1000).unwrap().is_none(), "{name}");
    }
}

#[test]
fn effects_are_guarded_so_one_request_wins() {
    for (name, store, _keep) in backends() {
        let id = seeded(&store);
        let once = store.allow_once("acme", "web1", "owner").unwrap();
        let snapshot = store.snapshot(id).unwrap().unwrap();
        assert_eq!(snapshot.allow_once, Some(once), "{name}");
        let effect = Effect::UseAllowOnce(once);
        assert!(
            store.apply(id, &effect, &entry("allowed")).unwrap(),
            "{name}"
        );
        assert!(
            !store.apply(id, &effect, &entry("allowed")).unwrap(),
            "{name}"
        );
        assert_eq!(store.snapshot(id).unwrap().unwrap().allow_once, None);
        // Repeated polls attach to one pending request.
        for _ in 0..3 {
            assert!(
                store
                    .apply(id, &Effect::CreateRequest, &entry("pending-approval"))
                    .unwrap()
            );
        }
        let requests = store.requests(None, true).unwrap();
        assert_eq!(requests.len(), 1, "{name}");
        assert_eq!(requests[0].state, RequestState::Pending, "{name}");
        // The winning effect and the losing one: only rows of applied effects are written.
        let history = store.history(Some("acme"), Some("web1"), 100).unwrap();
        assert_eq!(history.len(), 4, "{name}");
        assert_eq!(
            history[0].decision, "pending-approval",
            "{name}: newest first"
        );
    }
}

#[test]
fn request_decisions_follow_their_states() {
    for (name, store, _keep) in backends() {
        let id = seeded(&store);
        let alice = store.add_account("alice", false).unwrap();
        store
            .set_tags("acme", "web1", &[("tier".into(), "db".into())])
            .unwrap();
        store
            .group_add(
                "acme",
                "dbas",
                &[("tier".into(), "db".into())],
                &["alice".into()],
                60,
            )
            .unwrap();
        store
            .apply(id, &Effect::CreateRequest, &entry("pending-approval"))
            .unwrap();
        let request = store.requests(Some(&["acme".into()]), true).unwrap()[0].id;
        let scope = store.request_scope(request).unwrap();
        assert_eq!((scope.org.as_str(), scope.window), ("acme", 60), "{name}");
        assert_eq!(scope.approvers, [alice], "{name}");
        assert!(
            store
                .requests(Some(&["other".into()]), false)
                .unwrap()
                .is_empty()
        );

        store
            .decide_request(request, Verdict::Defer, "alice", 60)
            .unwrap();
        store
            .decide_request(request, Verdict::Approve, "alice", 60)
            .unwrap();
        assert!(is_conflict(store.decide_request(
            request,
            Verdict::Defer,
            "alice",
            60
        )));
        let snapshot = store.snapshot(id).unwrap().unwrap();
        let latest = snapshot.latest_request.unwrap();
        assert_eq!(latest.state, RequestState::Approved, "{name}");
        assert!(latest.expires_at.unwrap() > snapshot.now, "{name}");
        assert!(
            store
                .apply(id, &Effect::UseApproval(request), &entry("allowed"))
                .unwrap()
        );
        assert!(
            !store
                .apply(id, &Effect::UseApproval(request), &entry("allowed"))
                .unwrap()
        );
        assert!(is_conflict(store.decide_request(
            request,
            Verdict::Deny,
            "alice",
            60
        )));
        let all = store.requests(None, false).unwrap();
        assert_eq!(all[0].state, RequestState::Used, "{name}");
        assert_eq!(all[0].decided_by.as_deref(), Some("alice"), "{name}");
    }
}

#[test]
fn accounts_tokens_and_roles() {
    for (name, store, _keep) in backends() {
        seeded(&store);
        assert_eq!(store.account_count().unwrap(), 0, "{name}");
        let bob = store.add_account("bob", false).unwrap();
        assert_eq!(store.account_id("bob").unwrap(), bob, "{name}");
        let token = store.add_token(bob, b"hash-1").unwrap();
        assert_eq!(
            store.account_by_token(b"hash-1").unwrap().unwrap().name,
            "bob"
        );
        assert!(
            store.account_by_token(b"hash-2").unwrap().is_none(),
            "{name}"
        );
        store.add_member(bob, "acme", Role::Viewer).unwrap();
        store.add_member(bob, "acme", Role::Approver).unwrap();
        assert_eq!(
            store.memberships(bob).unwrap(),
            [("acme".to_owned(), Role::Approver)],
            "{name}: a second role replaces the first"
        );
        // Revoking is for the token's own account (or anyone's, with None).
        assert!(
            is_not_found(store.revoke_token(token, Some(bob + 1))),
            "{name}"
        );
        store.revoke_token(token, Some(bob)).unwrap();
        assert!(
            store.account_by_token(b"hash-1").unwrap().is_none(),
            "{name}"
        );
        assert!(is_not_found(store.revoke_token(token, None)), "{name}");
    }
}

#[test]
fn audit_listing_filters_before_it_limits() {
    for (name, store, _keep) in backends() {
        seeded(&store);
        store.audit_in(Some("acme"), "owner", "first", "x").unwrap();
        store.audit("owner", "server-wide", "y").unwrap();
        for i in 0..20 {
            store
                .audit_in(Some("other"), "owner", "noise", &i.to_string())
                .unwrap();
        }
        let visible = store.audit_log(Some(&["acme".into()]), 5).unwrap();
        assert_eq!(visible.len(), 1, "{name}");
        assert_eq!(visible[0].action, "first", "{name}");
        let all = store.audit_log(None, 5).unwrap();
        assert_eq!(all.len(), 5, "{name}");
        assert_eq!(all[0].target, "19", "{name}: newest first");
        let both = store
            .audit_log(Some(&["acme".into(), "other".into()]), 100)
            .unwrap();
        assert_eq!(
            both.len(),
            21,
            "{name}: rows of no org are for administrators only"
        );
    }
}

#[test]
fn the_history_sink_commits_batches() {
    for (name, store, _keep) in backends() {
        seeded(&store);
        let mut sink = store.history_sink().unwrap();
        let (a, b) = (entry("allowed"), entry("denied"));
        // A row of the tang-dir route: no org, no device; and one with a kid.
        let tang_dir = Entry {
            org: None,
            device: None,
            kid: Some("kid-1".into()),
            peer: "2001:db8::1".into(),
            reason: "tang-dir, 'quoted', {braced}".into(),
            ..entry("allowed")
        };
        sink.write(&[&a, &b, &tang_dir]).unwrap();
        let mut rows: Vec<_> = store
            .history(None, None, 10)
            .unwrap()
            .into_iter()
            .map(|r| (r.org, r.device, r.peer, r.kid, r.decision, r.reason))
            .collect();
        rows.sort();
        let mut written: Vec<_> = [&a, &b, &tang_dir]
            .iter()
            .map(|e| {
                let e = (*e).clone();
                (
                    e.org,
                    e.device,
                    e.peer,
                    e.kid,
                    e.decision.to_owned(),
                    e.reason,
                )
            })
            .collect();
        written.sort();
        assert_eq!(rows, written, "{name}: every column as written");
        sink.write(&[&b]).unwrap();
        let rows = store.history(None, None, 10).unwrap();
        assert_eq!(rows.len(), 4, "{name}");
        assert_eq!(store.history(Some("other"), None, 10).unwrap().len(), 0);
        assert_eq!(store.history(None, None, 1).unwrap().len(), 1, "{name}");
        assert!(store.healthy(), "{name}");
    }
}

/// An escrow key row for a fresh public key (the store keeps what the API checked).
#[test]
fn console_sessions_and_passkeys() {
    for (name, store, _keep) in backends() {
        let alice = store.add_account("alice", false).unwrap();
        let (anonymous, signed) = ([1u8; 32], [2u8; 32]);
        store.session_add(&anonymous, None, "token-1").unwrap();
        store.session_add(&signed, Some(alice), "token-2").unwrap();
        let a = store.session(&anonymous).unwrap().unwrap();
        assert!(a.account.is_none(), "{name}");
        assert_eq!(a.csrf, "token-1", "{name}");
        let s = store.session(&signed).unwrap().unwrap();
        assert_eq!(s.account.unwrap().name, "alice", "{name}");
        assert!(store.session(&[3u8; 32]).unwrap().is_none(), "{name}");

        // A ceremony is taken once: a replayed finish finds nothing.
        assert_eq!(store.session_ceremony(&anonymous, Some("c")).unwrap(), None);
        assert_eq!(
            store.session_ceremony(&anonymous, None).unwrap().as_deref(),
            Some("c"),
            "{name}"
        );
        assert_eq!(
            store.session_ceremony(&anonymous, None).unwrap(),
            None,
            "{name}"
        );

        store.session_rm(&anonymous).unwrap();
        assert!(store.session(&anonymous).unwrap().is_none(), "{name}");
        let t = nbde_server::store::now();
        assert_eq!(
            store.sessions_expire(t - 3600, t - 3600).unwrap(),
            0,
            "{name}"
        );
        assert_eq!(
            store.sessions_expire(t + 10, t - 3600).unwrap(),
            1,
            "{name}"
        );
        assert!(store.session(&signed).unwrap().is_none(), "{name}");

        let first = store.passkey_add(alice, "laptop", r#"{"v":1}"#).unwrap();
        store.passkey_add(alice, "phone", r#"{"v":2}"#).unwrap();
        store.passkey_used(first, r#"{"v":3}"#).unwrap();
        let keys = store.passkeys(alice).unwrap();
        let names: Vec<&str> = keys.iter().map(|k| k.name.as_str()).collect();
        assert_eq!(names, ["laptop", "phone"], "{name}");
        assert_eq!(keys[0].credential, r#"{"v":3}"#, "{name}");
        assert!(keys[0].last_used_at.is_some() && keys[1].last_used_at.is_none());
        assert!(is_not_found(store.passkey_used(999, "{}")), "{name}");
        assert_eq!(store.account_by_id(alice).unwrap().unwrap().name, "alice");
        assert!(store.account_by_id(999).unwrap().is_none(), "{name}");
        seeded(&store);
        store.add_member(alice, "acme", Role::Approver).unwrap();
        assert_eq!(
            store.members("acme").unwrap(),
            [("alice".to_owned(), Role::Approver)],
            "{name}"
        );
    }
}

#[test]
fn webhooks_are_per_org_and_removed_by_id() {
    for (name, store, _keep) in backends() {
        seeded(&store);
        let id = store
            .webhook_add("acme", "https://hooks.example/a", "s1")
            .unwrap();
        store
            .webhook_add("acme", "https://hooks.example/b", "s2")
            .unwrap();
        let hooks = store.webhooks("acme").unwrap();
        assert_eq!(hooks.len(), 2, "{name}");
        assert_eq!(
            (hooks[0].url.as_str(), hooks[0].secret.as_str()),
            ("https://hooks.example/a", "s1")
        );
        assert!(is_not_found(store.webhooks("nope")), "{name}");
        assert!(is_not_found(store.webhook_rm("nope", id)), "{name}");
        store.webhook_rm("acme", id).unwrap();
        assert!(is_not_found(store.webhook_rm("acme", id)), "{name}");
        assert_eq!(store.webhooks("acme").unwrap().len(), 1, "{name}");
    }
}

#[test]
fn liveness_counts_silence_only_while_servers_watch() {
    for (name, store, _keep) in backends() {
        seeded(&store);
        store.set_org_max_silence("acme", Some(100)).unwrap();
        // By the clock web1 has been silent since its creation, 1,000 s before the first
        // check; but no server watched then.
        let t0 = nbde_server::store::now() + 1_000;
        let check = |at: i64| {
            let since = store.watched_since(at, 10).unwrap();
            (since, store.disable_silent(at, since).unwrap())
        };
        assert_eq!(check(t0), (t0, vec![]), "{name}: the first check");
        for at in (t0 + 10..=t0 + 100).step_by(10) {
            assert_eq!(
                check(at),
                (t0, vec![]),
                "{name}: watched without a gap at {at}"
            );
        }
        // No check for 100 s (no server ran): the watch starts again.
        let t1 = t0 + 200;
        assert_eq!(check(t1), (t1, vec![]), "{name}: after a gap");
        for at in (t1 + 10..=t1 + 100).step_by(10) {
            assert_eq!(check(at), (t1, vec![]), "{name}: {at}");
        }
        let (since, silenced) = check(t1 + 101);
        assert_eq!(since, t1, "{name}");
        assert_eq!(silenced.len(), 1, "{name}");
        assert_eq!(
            silenced[0].reason(),
            "disabled: silent for 101s (max_silence 100s)",
            "{name}"
        );
    }
}
