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
    key_version   BIGINT NOT NULL,
    settings      TEXT NOT NULL,
    created_by    TEXT NOT NULL,
    created_at    BIGINT NOT NULL,
    updated_at    BIGINT NOT NULL,
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
