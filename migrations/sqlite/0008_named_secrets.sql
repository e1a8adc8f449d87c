-- Secrets by name: one value per organization and name, write-only (only
-- the engine's resolve opens it). The value is sealed under the
-- organization's data key, bound to the subject `secret:{org}:{name}`, so a
-- ciphertext copied to another name or organization never decrypts. Uses are
-- audited in audit_events with credential_id NULL and the name in detail.
CREATE TABLE named_secrets (
    org_id        TEXT NOT NULL REFERENCES organizations(id) ON DELETE CASCADE,
    name          TEXT NOT NULL,
    value_ct      TEXT NOT NULL,
    key_version   INTEGER NOT NULL,
    created_by    TEXT NOT NULL,
    created_at    INTEGER NOT NULL,
    updated_at    INTEGER NOT NULL,
    last_used_at  INTEGER,
    PRIMARY KEY (org_id, name),
    FOREIGN KEY (org_id, key_version) REFERENCES org_keys(org_id, version)
);
