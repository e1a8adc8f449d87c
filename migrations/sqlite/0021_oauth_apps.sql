-- An organization's own OAuth clients: its own app for a provider (app =
-- the provider id), and the registrations credgate made of itself at MCP
-- authorization servers (app = 'mcp:' and the issuer). The client secret is
-- sealed under the organization's data key, bound to the subject
-- 'oauth_app:{org}:{app}'; settings is non-secret JSON (scopes, tenant,
-- the secret's expiry; an MCP server's endpoints).
CREATE TABLE oauth_apps (
    org_id        TEXT NOT NULL REFERENCES organizations(id) ON DELETE CASCADE,
    app           TEXT NOT NULL,
    provider      TEXT NOT NULL,
    client_id     TEXT NOT NULL,
    secret_ct     TEXT NOT NULL,
    key_version   INTEGER NOT NULL,
    settings      TEXT NOT NULL,
    created_by    TEXT NOT NULL,
    created_at    INTEGER NOT NULL,
    updated_at    INTEGER NOT NULL,
    PRIMARY KEY (org_id, app),
    FOREIGN KEY (org_id, key_version) REFERENCES org_keys(org_id, version)
);

-- The app that connected a credential (NULL: the operator's, from the
-- provider file) and the client id it had then: refreshes and revocation
-- go to that app, and an app replaced by another client id is not used
-- with grants it never issued.
ALTER TABLE credentials ADD COLUMN oauth_app TEXT;
ALTER TABLE credentials ADD COLUMN oauth_client_id TEXT;
CREATE INDEX credentials_oauth_app ON credentials (org_id, oauth_app) WHERE oauth_app IS NOT NULL;

-- The row version rises with a change to the new columns too (see 0017).
DROP TRIGGER credentials_row_version;

CREATE TRIGGER credentials_row_version AFTER UPDATE ON credentials
    WHEN NEW.row_version = OLD.row_version AND (
        NEW.id IS NOT OLD.id OR NEW.org_id IS NOT OLD.org_id OR NEW.name IS NOT OLD.name
        OR NEW.provider IS NOT OLD.provider OR NEW.auth_type IS NOT OLD.auth_type
        OR NEW.status IS NOT OLD.status OR NEW.fields IS NOT OLD.fields
        OR NEW.secret_names IS NOT OLD.secret_names OR NEW.secret_ct IS NOT OLD.secret_ct
        OR NEW.key_version IS NOT OLD.key_version OR NEW.secret_version IS NOT OLD.secret_version
        OR NEW.account_id IS NOT OLD.account_id OR NEW.account_email IS NOT OLD.account_email
        OR NEW.account_name IS NOT OLD.account_name OR NEW.scopes IS NOT OLD.scopes
        OR NEW.expires_at IS NOT OLD.expires_at OR NEW.last_refreshed_at IS NOT OLD.last_refreshed_at
        OR NEW.last_tested_at IS NOT OLD.last_tested_at OR NEW.last_error IS NOT OLD.last_error
        OR NEW.refresh_after IS NOT OLD.refresh_after OR NEW.refresh_failures IS NOT OLD.refresh_failures
        OR NEW.created_by IS NOT OLD.created_by OR NEW.created_at IS NOT OLD.created_at
        OR NEW.updated_at IS NOT OLD.updated_at OR NEW.owner IS NOT OLD.owner
        OR NEW.team_access IS NOT OLD.team_access OR NEW.oauth_app IS NOT OLD.oauth_app
        OR NEW.oauth_client_id IS NOT OLD.oauth_client_id)
BEGIN
    UPDATE credentials SET row_version = OLD.row_version + 1 WHERE id = NEW.id;
END;
