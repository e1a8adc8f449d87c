-- How many credentials each organization has of each provider. A create
-- checks the limit and counts itself in one statement on this row, instead
-- of locking the whole organization and counting credentials.
CREATE TABLE credential_counts (
    org_id    TEXT NOT NULL REFERENCES organizations(id) ON DELETE CASCADE,
    provider  TEXT NOT NULL,
    count     BIGINT NOT NULL,
    PRIMARY KEY (org_id, provider)
);
INSERT INTO credential_counts (org_id, provider, count)
    SELECT org_id, provider, COUNT(*) FROM credentials GROUP BY org_id, provider;
