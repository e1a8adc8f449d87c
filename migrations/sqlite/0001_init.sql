-- credgate schema, SQLite dialect. Ids are UUID text, times are unix seconds.
CREATE TABLE organizations (
    id           TEXT PRIMARY KEY,
    name         TEXT NOT NULL,
    key_version  INTEGER NOT NULL,
    write_seq    INTEGER NOT NULL DEFAULT 0,
    created_at   INTEGER NOT NULL
);

CREATE TABLE org_keys (
    org_id       TEXT NOT NULL REFERENCES organizations(id) ON DELETE CASCADE,
    version      INTEGER NOT NULL,
    wrapped_key  TEXT NOT NULL,
    master_kid   TEXT NOT NULL,
    created_at   INTEGER NOT NULL,
    PRIMARY KEY (org_id, version)
);

CREATE TABLE org_limits (
    org_id       TEXT NOT NULL REFERENCES organizations(id) ON DELETE CASCADE,
    provider     TEXT NOT NULL,
    max_count    INTEGER NOT NULL,
    PRIMARY KEY (org_id, provider)
);

CREATE TABLE api_keys (
    id           TEXT PRIMARY KEY,
    org_id       TEXT NOT NULL REFERENCES organizations(id) ON DELETE CASCADE,
    token_hash   TEXT NOT NULL UNIQUE,
    role         TEXT NOT NULL,
    user_id      TEXT,
    label        TEXT,
    created_at   INTEGER NOT NULL
);

CREATE TABLE credentials (
    id                  TEXT PRIMARY KEY,
    org_id              TEXT NOT NULL REFERENCES organizations(id) ON DELETE CASCADE,
    name                TEXT NOT NULL,
    provider            TEXT NOT NULL,
    auth_type           TEXT NOT NULL,
    status              TEXT NOT NULL,
    fields              TEXT NOT NULL,
    secret_names        TEXT NOT NULL,
    secret_ct           TEXT NOT NULL,
    key_version         INTEGER NOT NULL,
    account_id          TEXT,
    account_email       TEXT,
    account_name        TEXT,
    scopes              TEXT,
    expires_at          INTEGER,
    last_refreshed_at   INTEGER,
    last_used_at        INTEGER,
    last_tested_at      INTEGER,
    last_error          TEXT,
    refresh_after       INTEGER,
    refresh_failures    INTEGER NOT NULL DEFAULT 0,
    lease_owner         TEXT,
    lease_until         INTEGER,
    created_by          TEXT NOT NULL,
    created_at          INTEGER NOT NULL,
    updated_at          INTEGER NOT NULL,
    FOREIGN KEY (org_id, key_version) REFERENCES org_keys(org_id, version)
);
CREATE INDEX credentials_org_provider ON credentials (org_id, provider);
CREATE INDEX credentials_org_created ON credentials (org_id, created_at DESC, id);
CREATE UNIQUE INDEX credentials_org_account_key
    ON credentials (org_id, provider, account_id) WHERE account_id IS NOT NULL;
CREATE INDEX credentials_refresh_due ON credentials (expires_at) WHERE auth_type = 'oauth2';

CREATE TABLE audit_events (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    org_id         TEXT NOT NULL REFERENCES organizations(id) ON DELETE CASCADE,
    credential_id  TEXT,
    action         TEXT NOT NULL,
    outcome        TEXT NOT NULL,
    actor          TEXT NOT NULL,
    detail         TEXT,
    at             INTEGER NOT NULL
);
CREATE INDEX audit_events_credential ON audit_events (org_id, credential_id, id DESC);

CREATE TABLE oauth_states (
    state_hash     TEXT PRIMARY KEY,
    org_id         TEXT NOT NULL REFERENCES organizations(id) ON DELETE CASCADE,
    provider       TEXT NOT NULL,
    payload_ct     TEXT NOT NULL,
    key_version    INTEGER NOT NULL,
    expires_at     INTEGER NOT NULL,
    created_at     INTEGER NOT NULL
);
CREATE INDEX oauth_states_expiry ON oauth_states (expires_at);
