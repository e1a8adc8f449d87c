-- A member's listing walks each way they may see credentials in the
-- listing's order (newest first) and stops at the page: organization
-- credentials and their own by (owner, created_at), the team's by
-- credentials_org_team_shared, their grants by (user, created_at). A grant
-- carries its credential's creation time (which never changes) for that.
ALTER TABLE credential_grants ADD COLUMN created_at INTEGER NOT NULL DEFAULT 0;
UPDATE credential_grants SET created_at =
    (SELECT c.created_at FROM credentials c WHERE c.id = credential_grants.credential_id);
DROP INDEX credential_grants_user;
CREATE INDEX credential_grants_user ON credential_grants (org_id, user_id, created_at DESC, credential_id DESC);
DROP INDEX credentials_org_owner;
CREATE INDEX credentials_org_owner ON credentials (org_id, owner, created_at DESC, id DESC);
