-- Organisations, each with its own signing key so one `thp` covers all its devices.
CREATE TABLE orgs (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    require_source INTEGER NOT NULL DEFAULT 0,
    created_at INTEGER NOT NULL
);

CREATE TABLE signing_keys (
    id INTEGER PRIMARY KEY,
    org_id INTEGER NOT NULL REFERENCES orgs(id),
    jwk TEXT NOT NULL,
    created_at INTEGER NOT NULL
);

CREATE TABLE devices (
    id INTEGER PRIMARY KEY,
    org_id INTEGER NOT NULL REFERENCES orgs(id),
    name TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('active', 'disabled', 'retired')),
    created_at INTEGER NOT NULL,
    UNIQUE (org_id, name)
);

-- Exchange keys: the newest advertised one is what new bindings use; older ones keep
-- answering /rec until the device is retired, when every row of it is deleted.
CREATE TABLE exchange_keys (
    id INTEGER PRIMARY KEY,
    device_id INTEGER NOT NULL REFERENCES devices(id),
    jwk TEXT NOT NULL,
    advertised INTEGER NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE INDEX exchange_keys_device ON exchange_keys(device_id);

-- One row per /rec request, committed before the answer leaves.
CREATE TABLE history (
    id INTEGER PRIMARY KEY,
    at INTEGER NOT NULL,
    org TEXT,
    device TEXT,
    peer TEXT NOT NULL,
    kid TEXT,
    decision TEXT NOT NULL,
    reason TEXT NOT NULL
);
CREATE INDEX history_device ON history(org, device, id);

CREATE TABLE accounts (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    -- A server administrator acts as owner of every organisation and may create them.
    is_admin INTEGER NOT NULL DEFAULT 0,
    created_at INTEGER NOT NULL
);

CREATE TABLE memberships (
    account_id INTEGER NOT NULL REFERENCES accounts(id),
    org_id INTEGER NOT NULL REFERENCES orgs(id),
    role TEXT NOT NULL CHECK (role IN ('owner', 'approver', 'viewer')),
    PRIMARY KEY (account_id, org_id)
);

-- Bearer tokens, stored as SHA-256 of the token.
CREATE TABLE tokens (
    id INTEGER PRIMARY KEY,
    account_id INTEGER NOT NULL REFERENCES accounts(id),
    hash BLOB NOT NULL UNIQUE,
    created_at INTEGER NOT NULL,
    revoked_at INTEGER
);

-- Who changed what, next to the decision history.
CREATE TABLE audit (
    id INTEGER PRIMARY KEY,
    at INTEGER NOT NULL,
    account TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL
);
