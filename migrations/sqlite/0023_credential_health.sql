-- Credential health: when a credential's grant or secret itself ends.
-- refresh_expires_at: the refresh token's (or grant's) end, from the token
-- response's refresh_token_expires_in or the provider file's declared
-- lifetime; secret_expires_at: an API key's own end, entered as expires_at.
ALTER TABLE credentials ADD COLUMN refresh_expires_at INTEGER;
ALTER TABLE credentials ADD COLUMN secret_expires_at INTEGER;
-- The end the last expiry notification was about, and its threshold in
-- days (0: the end passed): each threshold is notified once per end.
ALTER TABLE credentials ADD COLUMN expiry_warned_end INTEGER;
ALTER TABLE credentials ADD COLUMN expiry_warned_days INTEGER;
CREATE INDEX credentials_refresh_ends ON credentials (refresh_expires_at) WHERE refresh_expires_at IS NOT NULL;
CREATE INDEX credentials_secret_ends ON credentials (secret_expires_at) WHERE secret_expires_at IS NOT NULL;

-- An organization's own OAuth app's client secret end (as its admin
-- entered it; also kept in settings) and the expiry notification sent.
ALTER TABLE oauth_apps ADD COLUMN secret_expires_at INTEGER;
ALTER TABLE oauth_apps ADD COLUMN expiry_warned_end INTEGER;
ALTER TABLE oauth_apps ADD COLUMN expiry_warned_days INTEGER;

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
        OR NEW.oauth_client_id IS NOT OLD.oauth_client_id
        OR NEW.refresh_expires_at IS NOT OLD.refresh_expires_at
        OR NEW.secret_expires_at IS NOT OLD.secret_expires_at
        OR NEW.expiry_warned_end IS NOT OLD.expiry_warned_end
        OR NEW.expiry_warned_days IS NOT OLD.expiry_warned_days)
BEGIN
    UPDATE credentials SET row_version = OLD.row_version + 1 WHERE id = NEW.id;
END;
