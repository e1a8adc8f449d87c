-- The events' organizations (see 0026) locked and checked in one query
-- instead of two (a count of the organizations named, then a count of
-- those locked): each organization named is looked up and locked (FOR KEY
-- SHARE) once, and the insert fails (foreign_key_violation) when any is
-- missing. The same guarantee at about half the cost: the trigger ran on
-- every group of gateway uses, inside the commit every call waits for.

CREATE OR REPLACE FUNCTION lock_event_orgs() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (
        SELECT 1 FROM (SELECT DISTINCT org_id FROM new_rows) n
        LEFT JOIN LATERAL (
            SELECT o.id FROM organizations o WHERE o.id = n.org_id FOR KEY SHARE
        ) locked ON true
        WHERE locked.id IS NULL
    ) THEN
        RAISE EXCEPTION 'insert on table "%" names an organization that does not exist', TG_TABLE_NAME
            USING ERRCODE = 'foreign_key_violation';
    END IF;
    RETURN NULL;
END $$;
