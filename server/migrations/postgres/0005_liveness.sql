-- The liveness check (SQLite's 0007_liveness.sql).
ALTER TABLE orgs ADD COLUMN max_silence BIGINT;
ALTER TABLE devices ADD COLUMN max_silence BIGINT;
ALTER TABLE devices ADD COLUMN alive_since BIGINT;
