-- A use of a credential (its `last_used_at`, rewritten at most once a
-- minute by resolves) no longer raises its row version, nor does a refresh
-- lease being taken or given back (`lease_owner`, `lease_until`: not listed).
-- A listing page read before checks its rows' uses apart (the sum of their
-- `last_used_at`, which only rises): a page whose rows were only used since
-- is served again with their use times read anew, not read whole again.
-- A change to any other column still raises the row's version: each is
-- named here (a column added later must be added here too; a test reads
-- this trigger against the table's columns).
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
        OR NEW.team_access IS NOT OLD.team_access)
BEGIN
    UPDATE credentials SET row_version = OLD.row_version + 1 WHERE id = NEW.id;
END;
