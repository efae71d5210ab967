//! The store's contract for escrow keys, escrowed headers and mode reports, run against
//! every backend through the `Store` interface alone (see `store.rs`).

mod store_contract;

use nbde_proto::{Curve, Jwk};
use nbde_server::api::Mode;
use nbde_server::keys;
use nbde_server::policy::DeviceState;
use nbde_server::store::{EscrowKeyRow, NewEscrowRow};
use store_contract::*;

fn escrow_key_row() -> EscrowKeyRow {
    let jwk = Jwk::from_point(&Curve::P256.random_scalar().unwrap().public_point());
    EscrowKeyRow {
        kid: jwk.thumbprint(nbde_proto::ThumbprintHash::S256).unwrap(),
        jwk: jwk.to_value().to_string(),
    }
}

fn upload<'a>(kid: &'a str, jwe: &'a str) -> NewEscrowRow<'a> {
    NewEscrowRow {
        uuid: "0b9e4a7c-1f2d-4e5a-9c3b-8d7e6f5a4b3c",
        kid,
        jwe,
        by: "alice",
    }
}

#[test]
fn escrow_keys_are_set_replaced_and_missed() {
    for (name, store, _keep) in backends() {
        seeded(&store);
        assert_eq!(store.escrow_key("acme").unwrap(), None, "{name}");
        let (first, second) = (escrow_key_row(), escrow_key_row());
        store.set_escrow_key("acme", &first).unwrap();
        assert_eq!(store.escrow_key("acme").unwrap().as_ref(), Some(&first));
        store.set_escrow_key("acme", &second).unwrap();
        assert_eq!(
            store.escrow_key("acme").unwrap().as_ref(),
            Some(&second),
            "{name}: a second key replaces the first"
        );
        assert!(is_not_found(store.escrow_key("nope")), "{name}");
        assert!(is_not_found(store.set_escrow_key("nope", &first)), "{name}");
    }
}

#[test]
fn escrow_blobs_follow_the_org_key_and_the_device_lifecycle() {
    for (name, store, _keep) in backends() {
        seeded(&store);
        let key = escrow_key_row();
        assert!(
            is_conflict(store.put_escrow("acme", "web1", &upload(&key.kid, "a.b.c.d.e"))),
            "{name}: no escrow key yet"
        );
        store.set_escrow_key("acme", &key).unwrap();
        assert!(
            is_conflict(store.put_escrow("acme", "web1", &upload("old-kid", "a.b.c.d.e"))),
            "{name}: not the org's current key"
        );
        let first = store
            .put_escrow("acme", "web1", &upload(&key.kid, "first.x.y.z.w"))
            .unwrap();
        assert_eq!(
            (first.size, first.uploaded_by.as_str(), first.kid.as_str()),
            (13, "alice", key.kid.as_str()),
            "{name}"
        );
        assert_eq!(store.escrow_info("acme", "web1").unwrap(), Some(first));
        store
            .put_escrow("acme", "web1", &upload(&key.kid, "second.x.y.z"))
            .unwrap();
        let blob = store.escrow("acme", "web1").unwrap().unwrap();
        assert_eq!(blob.jwe, "second.x.y.z", "{name}: replaced");
        assert_eq!(blob.info.size, 12, "{name}");
        assert!(
            is_not_found(store.put_escrow("acme", "nope", &upload(&key.kid, "x"))),
            "{name}"
        );
        store.erase_destroyed().unwrap();

        store.rm_escrow("acme", "web1").unwrap();
        assert_eq!(store.escrow_info("acme", "web1").unwrap(), None, "{name}");
        assert!(store.escrow("acme", "web1").unwrap().is_none(), "{name}");
        assert!(is_not_found(store.rm_escrow("acme", "web1")), "{name}");

        store
            .put_escrow("acme", "web1", &upload(&key.kid, "third"))
            .unwrap();
        store
            .set_device_state("acme", "web1", DeviceState::Retired)
            .unwrap();
        assert_eq!(
            store.escrow_info("acme", "web1").unwrap(),
            None,
            "{name}: retiring deletes the backup"
        );
        assert!(
            is_conflict(store.put_escrow("acme", "web1", &upload(&key.kid, "x"))),
            "{name}: a retired device keeps none"
        );
        store.erase_destroyed().unwrap();
        store.erase_destroyed().unwrap();
    }
}

#[test]
fn mode_reports_are_recorded_and_sovereign_retires() {
    for (name, store, _keep) in backends() {
        seeded(&store);
        assert_eq!(store.device_mode("acme", "web1").unwrap(), None, "{name}");
        store
            .report_mode("acme", "web1", Mode::Managed, "alice")
            .unwrap();
        let reported = store.device_mode("acme", "web1").unwrap().unwrap();
        assert_eq!(
            (reported.mode, reported.reported_by.as_str()),
            (Mode::Managed, "alice")
        );
        assert!(reported.reported_at > 0, "{name}");
        store
            .report_mode("acme", "web1", Mode::ManagedUser, "bob")
            .unwrap();
        assert_eq!(
            store.device_mode("acme", "web1").unwrap().unwrap().mode,
            Mode::ManagedUser,
            "{name}"
        );
        assert_eq!(store.devices().unwrap()[0].state, DeviceState::Active);

        let key = escrow_key_row();
        store.set_escrow_key("acme", &key).unwrap();
        store
            .put_escrow("acme", "web1", &upload(&key.kid, "blob"))
            .unwrap();
        let jwk = keys::generate_exchange_key(Curve::P256).unwrap();
        store.rotate_device("acme", "web1", &jwk).unwrap();
        store
            .report_mode("acme", "web1", Mode::Sovereign, "alice")
            .unwrap();
        let device = &store.devices().unwrap()[0];
        assert_eq!(device.state, DeviceState::Retired, "{name}");
        assert!(device.exchange_keys.is_empty(), "{name}");
        assert_eq!(store.escrow_info("acme", "web1").unwrap(), None, "{name}");
        assert_eq!(
            store.device_mode("acme", "web1").unwrap().unwrap().mode,
            Mode::Sovereign
        );
        // Repeated by the machine: recorded again.
        store
            .report_mode("acme", "web1", Mode::Sovereign, "carol")
            .unwrap();
        assert_eq!(
            store
                .device_mode("acme", "web1")
                .unwrap()
                .unwrap()
                .reported_by,
            "carol",
            "{name}"
        );
        for managed in [Mode::Managed, Mode::ManagedUser] {
            assert!(
                is_conflict(store.report_mode("acme", "web1", managed, "alice")),
                "{name}: a retired device has no managed path"
            );
        }
        assert_eq!(
            store.device_mode("acme", "web1").unwrap().unwrap().mode,
            Mode::Sovereign,
            "{name}: a refused report records nothing"
        );
        assert!(
            is_not_found(store.report_mode("acme", "nope", Mode::Sovereign, "alice")),
            "{name}"
        );
        store.erase_destroyed().unwrap();
    }
}
