-- What became of each gateway call (its service's status, latency or
-- error), known only once the service has answered, after its use's audit
-- event was written. Kept beside the event, not written over it: the audit
-- log stays append-only (an update per call left a dead row and, off the
-- event's page, new entries in every index of audit_events). Readers take
-- outcome and detail from here when a row exists.
CREATE TABLE use_outcomes (
    event_id  BIGINT PRIMARY KEY,
    org_id    TEXT NOT NULL REFERENCES organizations(id) ON DELETE CASCADE,
    outcome   TEXT NOT NULL,
    detail    TEXT NOT NULL
);
