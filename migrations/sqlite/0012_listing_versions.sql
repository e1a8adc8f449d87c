-- A number per organization that changes whenever the answer to "how many
-- credentials does this listing show" may change: a credential added or
-- deleted, renamed, its status, owner or team sharing changed, a user grant
-- added, changed or removed. A listing's total is counted once per version
-- (and filter) and then reused, so a page never counts 10,000 rows while
-- nothing changed. The triggers keep it, so no write path can forget it
-- (SQLite has one writer at a time: no lock order to mind).
CREATE TABLE listing_versions (
    org_id   TEXT PRIMARY KEY REFERENCES organizations(id) ON DELETE CASCADE,
    version  INTEGER NOT NULL
);

CREATE TRIGGER credentials_listing_added AFTER INSERT ON credentials BEGIN
    INSERT INTO listing_versions (org_id, version) VALUES (NEW.org_id, 1)
        ON CONFLICT (org_id) DO UPDATE SET version = version + 1;
END;
CREATE TRIGGER credentials_listing_deleted AFTER DELETE ON credentials BEGIN
    INSERT INTO listing_versions (org_id, version) VALUES (OLD.org_id, 1)
        ON CONFLICT (org_id) DO UPDATE SET version = version + 1;
END;
CREATE TRIGGER credentials_listing_changed AFTER UPDATE ON credentials
    WHEN OLD.status IS NOT NEW.status OR OLD.name IS NOT NEW.name OR OLD.owner IS NOT NEW.owner
      OR OLD.team_access IS NOT NEW.team_access OR OLD.provider IS NOT NEW.provider
      OR OLD.org_id IS NOT NEW.org_id
BEGIN
    INSERT INTO listing_versions (org_id, version) VALUES (NEW.org_id, 1)
        ON CONFLICT (org_id) DO UPDATE SET version = version + 1;
END;
CREATE TRIGGER credential_grants_listing_added AFTER INSERT ON credential_grants BEGIN
    INSERT INTO listing_versions (org_id, version) VALUES (NEW.org_id, 1)
        ON CONFLICT (org_id) DO UPDATE SET version = version + 1;
END;
CREATE TRIGGER credential_grants_listing_changed AFTER UPDATE ON credential_grants BEGIN
    INSERT INTO listing_versions (org_id, version) VALUES (NEW.org_id, 1)
        ON CONFLICT (org_id) DO UPDATE SET version = version + 1;
END;
CREATE TRIGGER credential_grants_listing_deleted AFTER DELETE ON credential_grants BEGIN
    INSERT INTO listing_versions (org_id, version) VALUES (OLD.org_id, 1)
        ON CONFLICT (org_id) DO UPDATE SET version = version + 1;
END;
