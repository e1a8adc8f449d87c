-- Credentials without a person (oauth2_client_credentials, service_account)
-- hold access tokens that credgate mints again before they expire, claimed
-- by the same worker as OAuth refreshes: the due index covers them too.
DROP INDEX credentials_refresh_due;
CREATE INDEX credentials_refresh_due ON credentials (expires_at)
    WHERE auth_type IN ('oauth2', 'oauth2_client_credentials', 'service_account');
