-- An organization's own webhook endpoints. The signing secret ('whsec_…')
-- is sealed under the organization's data key, bound to the subject
-- 'webhook:{org}:{id}'; after a rotation the sealed map also holds the
-- previous secret, which signs too until previous_until. events is
-- ',type,type,' ('' for every type).
CREATE TABLE webhook_endpoints (
    id              TEXT PRIMARY KEY,
    org_id          TEXT NOT NULL REFERENCES organizations(id) ON DELETE CASCADE,
    url             TEXT NOT NULL,
    events          TEXT NOT NULL,
    description     TEXT NOT NULL,
    secret_ct       TEXT NOT NULL,
    key_version     BIGINT NOT NULL,
    previous_until  BIGINT,
    created_by      TEXT NOT NULL,
    created_at      BIGINT NOT NULL,
    FOREIGN KEY (org_id, key_version) REFERENCES org_keys(org_id, version)
);
CREATE INDEX webhook_endpoints_org ON webhook_endpoints (org_id, created_at);

-- One notification to one endpoint, written in the transaction that wrote
-- the notification (or by a test delivery); delivered in id order per
-- endpoint, at least once, one holder at a time (a lease).
CREATE TABLE webhook_deliveries (
    id               BIGSERIAL PRIMARY KEY,
    endpoint_id      TEXT NOT NULL REFERENCES webhook_endpoints(id) ON DELETE CASCADE,
    org_id           TEXT NOT NULL,
    event_id         TEXT NOT NULL,
    kind             TEXT NOT NULL,
    payload          TEXT NOT NULL,
    created_at       BIGINT NOT NULL,
    attempts         BIGINT NOT NULL DEFAULT 0,
    next_attempt_at  BIGINT,
    delivered_at     BIGINT,
    failed_at        BIGINT,
    last_status      BIGINT,
    last_error       TEXT,
    lease_owner      TEXT,
    lease_until      BIGINT
);
CREATE INDEX webhook_deliveries_pending ON webhook_deliveries (endpoint_id, id) WHERE next_attempt_at IS NOT NULL;
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at) WHERE next_attempt_at IS NOT NULL;
CREATE INDEX webhook_deliveries_endpoint ON webhook_deliveries (endpoint_id, id);
CREATE INDEX webhook_deliveries_org ON webhook_deliveries (org_id);
CREATE INDEX webhook_deliveries_created ON webhook_deliveries (created_at);
