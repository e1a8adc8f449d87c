-- Denied accesses are audited as one row per key, credential and minute:
-- `coalesce_key` names that triple, and a repeat raises the row's count in
-- the same upsert (`ON CONFLICT (coalesce_key)`), exactly, however many
-- arrive at once. Other events leave it NULL (not in the index).
ALTER TABLE audit_events ADD COLUMN coalesce_key TEXT;
CREATE UNIQUE INDEX audit_events_coalesce ON audit_events (coalesce_key) WHERE coalesce_key IS NOT NULL;
