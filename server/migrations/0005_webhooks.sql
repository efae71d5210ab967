-- Webhooks: where an organisation is told that an unlock request waits for approval.
-- The secret signs each notification (HMAC-SHA256); shown once when the hook is added.
CREATE TABLE webhooks (
    id INTEGER PRIMARY KEY,
    org_id INTEGER NOT NULL REFERENCES orgs(id),
    url TEXT NOT NULL,
    secret TEXT NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE INDEX webhooks_org ON webhooks(org_id);
