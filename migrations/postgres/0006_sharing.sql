-- Personal and shared credentials. A credential's owner is a user id, or
-- NULL for an organization credential (every credential before this
-- migration). team_access shares it with everyone in the organization;
-- credential_grants share it with named users. Levels: use < view < manage.
ALTER TABLE credentials ADD COLUMN owner TEXT;
ALTER TABLE credentials ADD COLUMN team_access TEXT;
CREATE INDEX credentials_org_owner ON credentials (org_id, owner);

CREATE TABLE credential_grants (
    credential_id  TEXT NOT NULL REFERENCES credentials(id) ON DELETE CASCADE,
    org_id         TEXT NOT NULL,
    user_id        TEXT NOT NULL,
    access         TEXT NOT NULL,
    PRIMARY KEY (credential_id, user_id)
);
CREATE INDEX credential_grants_user ON credential_grants (org_id, user_id, credential_id);

-- Uses name the workflow and run they were for.
ALTER TABLE audit_events ADD COLUMN workflow_id TEXT;
ALTER TABLE audit_events ADD COLUMN run_id TEXT;
CREATE INDEX audit_events_usage ON audit_events (credential_id, action, workflow_id);
