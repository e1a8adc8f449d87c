-- Idempotency keys of creates (the Idempotency-Key header), kept 24 hours
-- per organization and written in the create's own transaction, so a retry
-- after a lost answer (or a 503 whose commit landed) finds the first result.
-- The request's SHA-256 is sealed under the organization's data key
-- (request_ct): its fields hold secrets, and a bare hash of a weak password
-- could be guessed offline by whoever reads the database.
CREATE TABLE idempotency_keys (
    org_id         TEXT NOT NULL REFERENCES organizations(id) ON DELETE CASCADE,
    idem_key       TEXT NOT NULL,
    request_ct     TEXT NOT NULL,
    key_version    BIGINT NOT NULL,
    credential_id  TEXT NOT NULL,
    created_at     BIGINT NOT NULL,
    PRIMARY KEY (org_id, idem_key)
);
CREATE INDEX idempotency_keys_created ON idempotency_keys (created_at);
