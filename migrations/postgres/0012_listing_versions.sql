-- A number per organization that changes whenever the answer to "how many
-- credentials does this listing show" may change: a credential added or
-- deleted, renamed, its status, owner or team sharing changed, a user grant
-- added, changed or removed. A listing's total is counted once per version
-- (and filter) and then reused, so a page never counts 10,000 rows while
-- nothing changed. The triggers keep it, so no write path can forget it;
-- they run at commit (deferred), so the row is locked only for the commit
-- and always after any other row a writer locks.
CREATE TABLE listing_versions (
    org_id   TEXT PRIMARY KEY REFERENCES organizations(id) ON DELETE CASCADE,
    version  BIGINT NOT NULL
);

CREATE FUNCTION bump_listing_version() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    org TEXT := CASE WHEN TG_OP = 'DELETE' THEN OLD.org_id ELSE NEW.org_id END;
BEGIN
    -- An organization deleted in the same transaction has nothing to list.
    INSERT INTO listing_versions (org_id, version)
        SELECT org, 1 WHERE EXISTS (SELECT 1 FROM organizations WHERE id = org)
        ON CONFLICT (org_id) DO UPDATE SET version = listing_versions.version + 1;
    RETURN NULL;
END $$;

CREATE CONSTRAINT TRIGGER credentials_listing_added AFTER INSERT OR DELETE ON credentials
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION bump_listing_version();
CREATE CONSTRAINT TRIGGER credentials_listing_changed AFTER UPDATE ON credentials
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW
    WHEN (OLD.status IS DISTINCT FROM NEW.status OR OLD.name IS DISTINCT FROM NEW.name
          OR OLD.owner IS DISTINCT FROM NEW.owner OR OLD.team_access IS DISTINCT FROM NEW.team_access
          OR OLD.provider IS DISTINCT FROM NEW.provider OR OLD.org_id IS DISTINCT FROM NEW.org_id)
    EXECUTE FUNCTION bump_listing_version();
CREATE CONSTRAINT TRIGGER credential_grants_listing AFTER INSERT OR UPDATE OR DELETE ON credential_grants
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION bump_listing_version();
