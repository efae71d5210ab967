//! The policy snapshots of the devices recovered since the last change, so a storm of
//! recoveries of the same devices reads the database once per device, not per request.
//! Each backend says what counts as a change: SQLite counts every use of its shared
//! connection; PostgreSQL counts what its change listener hears and its own effects.

use std::collections::HashMap;

use crate::policy::Snapshot;

/// The policy snapshots read at one count of changes; a snapshot is served only while the
/// count is still the one it was read at.
#[derive(Default)]
pub struct SnapshotCache {
    changes: u64,
    devices: HashMap<i64, Snapshot>,
}

impl SnapshotCache {
    pub fn get(&self, changes: u64, device_id: i64) -> Option<Snapshot> {
        (self.changes == changes)
            .then(|| self.devices.get(&device_id).cloned())
            .flatten()
    }

    /// Keeps `snapshot`, read at `changes`, unless a newer count has been seen meanwhile.
    pub fn put(&mut self, changes: u64, device_id: i64, snapshot: Snapshot) {
        if changes > self.changes {
            self.devices.clear();
            self.changes = changes;
        }
        if changes == self.changes {
            self.devices.insert(device_id, snapshot);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::DeviceState;

    fn snapshot(state: DeviceState) -> Snapshot {
        Snapshot {
            state,
            require_source: false,
            sources: Vec::new(),
            allow_once: None,
            needs_approval: false,
            latest_request: None,
            now: 0,
        }
    }

    #[test]
    fn a_cached_snapshot_is_good_only_at_the_count_it_was_read_at() {
        let mut cache = SnapshotCache::default();
        cache.put(5, 1, snapshot(DeviceState::Active));
        assert!(cache.get(5, 1).is_some());
        assert!(cache.get(6, 1).is_none(), "a change since");
        assert!(cache.get(5, 2).is_none(), "another device");
        // Read before a change another request has already seen: not kept.
        cache.put(4, 1, snapshot(DeviceState::Disabled));
        assert_eq!(cache.get(5, 1).unwrap().state, DeviceState::Active);
        // A newer count drops everything read before it.
        cache.put(6, 2, snapshot(DeviceState::Active));
        assert!(cache.get(6, 1).is_none());
        assert!(cache.get(6, 2).is_some());
    }
}
