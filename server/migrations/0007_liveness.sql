-- The liveness check: a device silent (no /rec request) for longer than its max_silence,
-- else its org's, is disabled. NULL: no check. alive_since is when an owner last enabled
-- the device: the silence is counted from the latest of it, the device's creation and its
-- newest history row.
ALTER TABLE orgs ADD COLUMN max_silence INTEGER;
ALTER TABLE devices ADD COLUMN max_silence INTEGER;
ALTER TABLE devices ADD COLUMN alive_since INTEGER;
