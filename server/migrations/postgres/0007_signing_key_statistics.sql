-- Before 0004 the signing keys' column had the default statistics target, so ANALYZE
-- (autovacuum's included) may have copied sampled keys into pg_statistic, where 0004's
-- target of 0 leaves them. A column's statistics go with any change of its type: to the
-- same type here, which rewrites nothing and needs only the table's owner (deleting from
-- pg_statistic needs a superuser). The target stays 0, so nothing is sampled again.
ALTER TABLE signing_keys ALTER COLUMN jwk SET STATISTICS 0, ALTER COLUMN jwk TYPE TEXT;
