-- Ownership no flow can cross.
--
-- An external account is connected once per owner, not once per
-- organization: another user connecting the same account gets a credential
-- of their own (an organization credential's owner is NULL, one per
-- account too, hence the COALESCE).
DROP INDEX credentials_org_account_key;
CREATE UNIQUE INDEX credentials_org_owner_account_key
    ON credentials (org_id, provider, COALESCE(owner, ''), account_id) WHERE account_id IS NOT NULL;

-- A pending authorization names the user who started it, so removing that
-- user ends it; an ended flow is kept (with why) until it expires, so its
-- callback can still tell the person and their return_to what happened.
-- A callback takes its state (taken_at: single use) and deletes it in the
-- transaction that stores the grant, only if it was not ended meanwhile.
ALTER TABLE oauth_states ADD COLUMN user_id TEXT;
ALTER TABLE oauth_states ADD COLUMN ended TEXT;
ALTER TABLE oauth_states ADD COLUMN taken_at BIGINT;
CREATE INDEX oauth_states_user ON oauth_states (org_id, user_id);

-- A page session names the API key that opened it: revoking the key ends it.
ALTER TABLE page_sessions ADD COLUMN api_key_id TEXT;
CREATE INDEX page_sessions_api_key ON page_sessions (api_key_id);

-- Keys made from now on carry a checksum (token_format 'v2'); NULL marks
-- the keys made before, whose tokens have none.
ALTER TABLE api_keys ADD COLUMN token_format TEXT;

-- Values made once per installation and shared by every replica: the key
-- of the API tokens' checksum. It gates only whether a token is looked up
-- at all, so knowing it grants nothing.
CREATE TABLE install_values (
    name        TEXT PRIMARY KEY,
    value       TEXT NOT NULL,
    created_at  BIGINT NOT NULL
);
