-- When servers began checking liveness without a gap: a device's silence is counted from
-- no earlier than that, so a time with no server running (nobody could be asked) is not
-- counted as the devices' silence. One row; checked_at is the newest check.
CREATE TABLE liveness_watch (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    since INTEGER NOT NULL,
    checked_at INTEGER NOT NULL
);
