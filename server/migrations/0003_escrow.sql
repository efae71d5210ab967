-- Volume modes and header escrow.

-- An organisation's escrow public key (ECDH-ES). Machines encrypt their LUKS header backups
-- to it; the customer keeps the private half offline, so the server holds blobs it cannot open.
CREATE TABLE escrow_keys (
    org_id INTEGER PRIMARY KEY REFERENCES orgs(id),
    -- RFC 7638 S256 thumbprint: the `kid` an upload's protected header must name.
    kid TEXT NOT NULL,
    jwk TEXT NOT NULL,
    created_at INTEGER NOT NULL
);

-- A device's encrypted header backup, at most one. The jwe comes last so reading the
-- other columns never touches its overflow pages.
CREATE TABLE device_escrow (
    device_id INTEGER PRIMARY KEY REFERENCES devices(id),
    uuid TEXT NOT NULL,
    kid TEXT NOT NULL,
    size INTEGER NOT NULL,
    uploaded_at INTEGER NOT NULL,
    uploaded_by TEXT NOT NULL,
    jwe TEXT NOT NULL
);

-- The volume's mode as its machine last reported it (NULL: never reported).
ALTER TABLE devices ADD COLUMN mode TEXT CHECK (mode IN ('managed', 'managed+user', 'sovereign'));
ALTER TABLE devices ADD COLUMN mode_reported_at INTEGER;
ALTER TABLE devices ADD COLUMN mode_reported_by TEXT;

-- Set in the transaction that deletes exchange keys or an escrow blob; cleared once the
-- freed copies are erased from every file (VACUUM, then a truncating checkpoint). A store
-- opened with it set erases before anything else.
CREATE TABLE erasure_pending (
    id INTEGER PRIMARY KEY CHECK (id = 1)
);
