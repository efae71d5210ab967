-- The key-encryption key the private keys (signing_keys.jwk, exchange_keys.jwk) are
-- sealed under, by its id: the key itself lives outside the store. One row once recorded.
CREATE TABLE key_encryption (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    kek_id TEXT NOT NULL
);
