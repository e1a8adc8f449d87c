-- Listing orders by (created_at DESC, id DESC): an index in that exact order
-- lets a page be read without sorting the organization's credentials.
DROP INDEX IF EXISTS credentials_org_created;
CREATE INDEX credentials_org_created_id ON credentials (org_id, created_at DESC, id DESC);
