-- Notifications, written in the same transaction as the change they report,
-- delivered from here (at least once, retried over a day), read back by
-- GET /integrations/events.
CREATE TABLE outbox (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id         TEXT NOT NULL UNIQUE,
    org_id           TEXT NOT NULL,
    kind             TEXT NOT NULL,
    credential_id    TEXT,
    payload          TEXT NOT NULL,
    created_at       INTEGER NOT NULL,
    attempts         INTEGER NOT NULL DEFAULT 0,
    next_attempt_at  INTEGER,
    delivered_at     INTEGER,
    failed_at        INTEGER,
    last_error       TEXT,
    lease_owner      TEXT,
    lease_until      INTEGER
);
CREATE INDEX outbox_due ON outbox (next_attempt_at) WHERE next_attempt_at IS NOT NULL;
CREATE INDEX outbox_org ON outbox (org_id, id);
CREATE INDEX outbox_created ON outbox (created_at);
