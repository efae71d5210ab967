-- A serving replica caches each device's policy snapshot (what /rec decides on) while its
-- change listener is connected: every table the snapshot reads tells of its changes on
-- the same channel. The payload (the table's name) tells the listener that only the
-- snapshots are stale, not the key ring.
-- OR REPLACE: a store set back to an older schema version runs this again.
CREATE OR REPLACE TRIGGER device_sources_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON device_sources
    FOR EACH STATEMENT EXECUTE FUNCTION nbde_notify_change();
CREATE OR REPLACE TRIGGER netlist_entries_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON netlist_entries
    FOR EACH STATEMENT EXECUTE FUNCTION nbde_notify_change();
CREATE OR REPLACE TRIGGER device_netlists_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON device_netlists
    FOR EACH STATEMENT EXECUTE FUNCTION nbde_notify_change();
CREATE OR REPLACE TRIGGER device_tags_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON device_tags
    FOR EACH STATEMENT EXECUTE FUNCTION nbde_notify_change();
CREATE OR REPLACE TRIGGER allow_once_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON allow_once
    FOR EACH STATEMENT EXECUTE FUNCTION nbde_notify_change();
CREATE OR REPLACE TRIGGER approval_groups_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON approval_groups
    FOR EACH STATEMENT EXECUTE FUNCTION nbde_notify_change();
CREATE OR REPLACE TRIGGER group_tags_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON group_tags
    FOR EACH STATEMENT EXECUTE FUNCTION nbde_notify_change();
CREATE OR REPLACE TRIGGER unlock_requests_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON unlock_requests
    FOR EACH STATEMENT EXECUTE FUNCTION nbde_notify_change();
