-- The unlock policy: source allowlists, shared network-access lists, tags, allow-once,
-- approval groups and manual unlock requests.
CREATE TABLE device_sources (
    device_id INTEGER NOT NULL REFERENCES devices(id),
    cidr TEXT NOT NULL,
    PRIMARY KEY (device_id, cidr)
);

CREATE TABLE netlists (
    id INTEGER PRIMARY KEY,
    org_id INTEGER NOT NULL REFERENCES orgs(id),
    name TEXT NOT NULL,
    UNIQUE (org_id, name)
);

CREATE TABLE netlist_entries (
    netlist_id INTEGER NOT NULL REFERENCES netlists(id) ON DELETE CASCADE,
    cidr TEXT NOT NULL,
    PRIMARY KEY (netlist_id, cidr)
);

CREATE TABLE device_netlists (
    device_id INTEGER NOT NULL REFERENCES devices(id),
    netlist_id INTEGER NOT NULL REFERENCES netlists(id) ON DELETE CASCADE,
    PRIMARY KEY (device_id, netlist_id)
);

CREATE TABLE device_tags (
    device_id INTEGER NOT NULL REFERENCES devices(id),
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (device_id, key)
);

-- A single-use allowance; used_at is set by exactly one request.
CREATE TABLE allow_once (
    id INTEGER PRIMARY KEY,
    device_id INTEGER NOT NULL REFERENCES devices(id),
    created_at INTEGER NOT NULL,
    created_by TEXT NOT NULL,
    used_at INTEGER
);
CREATE INDEX allow_once_unused ON allow_once(device_id) WHERE used_at IS NULL;

CREATE TABLE approval_groups (
    id INTEGER PRIMARY KEY,
    org_id INTEGER NOT NULL REFERENCES orgs(id),
    name TEXT NOT NULL,
    window_seconds INTEGER NOT NULL DEFAULT 900,
    UNIQUE (org_id, name)
);

CREATE TABLE group_tags (
    group_id INTEGER NOT NULL REFERENCES approval_groups(id) ON DELETE CASCADE,
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (group_id, key)
);

CREATE TABLE group_approvers (
    group_id INTEGER NOT NULL REFERENCES approval_groups(id) ON DELETE CASCADE,
    account_id INTEGER NOT NULL REFERENCES accounts(id),
    PRIMARY KEY (group_id, account_id)
);

-- Manual unlock requests: pending until an approver decides; an approval is good for one
-- unlock until expires_at; a denial sticks.
CREATE TABLE unlock_requests (
    id INTEGER PRIMARY KEY,
    device_id INTEGER NOT NULL REFERENCES devices(id),
    peer TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('pending', 'approved', 'denied', 'used')),
    decided_by TEXT,
    decided_at INTEGER,
    expires_at INTEGER
);
CREATE INDEX unlock_requests_device ON unlock_requests(device_id, id);

ALTER TABLE audit ADD COLUMN org TEXT;
