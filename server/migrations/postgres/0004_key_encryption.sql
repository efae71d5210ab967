-- The key-encryption key the private keys are sealed under, by its id (SQLite's
-- 0006_key_encryption.sql). Signing keys join exchange keys out of pg_statistic: ANALYZE
-- must sample no stored key, sealed or (before sealing) plain.
CREATE TABLE key_encryption (
    id BIGINT PRIMARY KEY CHECK (id = 1),
    kek_id TEXT NOT NULL
);
ALTER TABLE signing_keys ALTER COLUMN jwk SET STATISTICS 0;
