-- The web console: sign-in sessions and passkeys.

-- A browser session, by the SHA-256 of its cookie value (the value itself is never stored).
-- account_id is NULL while a passkey sign-in is under way; a signed-in session is a new
-- row (a fresh cookie), so a value planted before sign-in never becomes signed in.
CREATE TABLE console_sessions (
    hash BLOB PRIMARY KEY,
    account_id INTEGER REFERENCES accounts(id),
    -- The token every form and console POST must carry.
    csrf TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    last_seen_at INTEGER NOT NULL,
    -- A WebAuthn ceremony in progress: webauthn-rs's state, JSON, consumed by its finish.
    ceremony TEXT
);

-- A passkey of an account: webauthn-rs's credential (public key, id, counter), JSON.
CREATE TABLE passkeys (
    id INTEGER PRIMARY KEY,
    account_id INTEGER NOT NULL REFERENCES accounts(id),
    name TEXT NOT NULL,
    credential TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    last_used_at INTEGER
);
CREATE INDEX passkeys_account ON passkeys(account_id);
