//! The store contract tests' shared part: a fresh store of every backend and the seed
//! data. Each test file uses only some of it.
#![allow(dead_code)]

use nbde_proto::Curve;
use nbde_server::kek::Kek;
use nbde_server::keys;
use nbde_server::store::history::Entry;
use nbde_server::store::{Location, Store, StoreError};

/// What keeps a backend's store alive, held for its Drop: the data directory or the
/// throwaway cluster.
pub type Keep = Box<dyn std::any::Any>;

/// A fresh, empty store of each backend, with what keeps it alive (dropped after the
/// store, as tuple fields drop in order).
pub fn backends() -> Vec<(&'static str, Store, Keep)> {
    let dir = tempfile::tempdir().unwrap();
    let sqlite = Store::open(dir.path())
        .unwrap()
        .with_kek(Kek::generate().unwrap())
        .unwrap();
    let cluster = testkit::Postgres::start();
    let location = Location::database(&cluster.create_database()).unwrap();
    let postgres = Store::open_location(&location)
        .unwrap()
        .with_kek(Kek::generate().unwrap())
        .unwrap();
    vec![
        ("sqlite", sqlite, Box::new(dir)),
        ("postgres", postgres, Box::new(cluster)),
    ]
}

/// Org "acme" with device "web1"; its id.
pub fn seeded(store: &Store) -> i64 {
    store
        .add_org("acme", &keys::generate_signing_key().unwrap())
        .unwrap();
    let exchange = keys::generate_exchange_key(Curve::P256).unwrap();
    store.add_device("acme", "web1", &exchange).unwrap()
}

pub fn entry(decision: &'static str) -> Entry {
    Entry {
        org: Some("acme".into()),
        device: Some("web1".into()),
        peer: "192.0.2.1".into(),
        kid: None,
        decision,
        reason: "test".into(),
    }
}

pub fn is_conflict<T: std::fmt::Debug>(r: Result<T, StoreError>) -> bool {
    matches!(r, Err(StoreError::Conflict(_)))
}

pub fn is_not_found<T: std::fmt::Debug>(r: Result<T, StoreError>) -> bool {
    matches!(r, Err(StoreError::NotFound(_)))
}
