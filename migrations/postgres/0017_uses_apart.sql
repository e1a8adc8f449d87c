-- A use of a credential (its `last_used_at`, rewritten at most once a
-- minute by resolves) no longer raises its row version, nor does a refresh
-- lease being taken or given back (`lease_owner`, `lease_until`: not listed).
-- A listing page read before checks its rows' uses apart (the sum of their
-- `last_used_at`, which only rises): a page whose rows were only used since
-- is served again with their use times read anew, not read whole again.
-- Any other change to a row still raises its version.
CREATE OR REPLACE FUNCTION raise_row_version() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    same credentials;
BEGIN
    -- The old row with what is left out taken from the new one: equal to
    -- the new row when nothing else changed.
    same := OLD;
    same.last_used_at := NEW.last_used_at;
    same.lease_owner := NEW.lease_owner;
    same.lease_until := NEW.lease_until;
    same.row_version := NEW.row_version;
    IF same IS DISTINCT FROM NEW THEN
        NEW.row_version := OLD.row_version + 1;
    ELSE
        NEW.row_version := OLD.row_version;
    END IF;
    RETURN NEW;
END $$;
