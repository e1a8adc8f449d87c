-- Hosted-page sessions: opened by a platform's backend for one of its users.
-- The URL's one-time token and the browser cookie are stored as SHA-256
-- hashes only; the URL opens once (opened_at), the cookie lasts until
-- expires_at (at most an hour after creation).
CREATE TABLE page_sessions (
    id              TEXT PRIMARY KEY,
    org_id          TEXT NOT NULL REFERENCES organizations(id) ON DELETE CASCADE,
    user_id         TEXT NOT NULL,
    purpose         TEXT NOT NULL,
    providers       TEXT,
    credential_id   TEXT,
    return_to       TEXT,
    url_token_hash  TEXT NOT NULL UNIQUE,
    cookie_hash     TEXT UNIQUE,
    csrf_token      TEXT NOT NULL,
    created_by      TEXT NOT NULL,
    created_at      BIGINT NOT NULL,
    expires_at      BIGINT NOT NULL,
    opened_at       BIGINT
);
CREATE INDEX page_sessions_org_expiry ON page_sessions (org_id, expires_at);
CREATE INDEX page_sessions_expiry ON page_sessions (expires_at);
