-- Credential health: when a credential's grant or secret itself ends.
-- refresh_expires_at: the refresh token's (or grant's) end, from the token
-- response's refresh_token_expires_in or the provider file's declared
-- lifetime; secret_expires_at: an API key's own end, entered as expires_at.
ALTER TABLE credentials ADD COLUMN refresh_expires_at BIGINT;
ALTER TABLE credentials ADD COLUMN secret_expires_at BIGINT;
-- The end the last expiry notification was about, and its threshold in
-- days (0: the end passed): each threshold is notified once per end.
ALTER TABLE credentials ADD COLUMN expiry_warned_end BIGINT;
ALTER TABLE credentials ADD COLUMN expiry_warned_days BIGINT;
CREATE INDEX credentials_refresh_ends ON credentials (refresh_expires_at) WHERE refresh_expires_at IS NOT NULL;
CREATE INDEX credentials_secret_ends ON credentials (secret_expires_at) WHERE secret_expires_at IS NOT NULL;

-- An organization's own OAuth app's client secret end (as its admin
-- entered it; also kept in settings) and the expiry notification sent.
ALTER TABLE oauth_apps ADD COLUMN secret_expires_at BIGINT;
ALTER TABLE oauth_apps ADD COLUMN expiry_warned_end BIGINT;
ALTER TABLE oauth_apps ADD COLUMN expiry_warned_days BIGINT;
