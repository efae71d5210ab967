-- SQLite's 0008_liveness_watch.sql: since when servers have checked liveness without a gap.
CREATE TABLE liveness_watch (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    since BIGINT NOT NULL,
    checked_at BIGINT NOT NULL
);
