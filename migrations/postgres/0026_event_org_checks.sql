-- The audit log's and the gateway outcomes' organization, checked once per
-- statement instead of once per row. A foreign key runs its check (a
-- query locking the organization's row) for every row inserted: with a
-- use and an outcome per gateway call, a fifth of PostgreSQL's time.
-- These triggers keep exactly what the keys guaranteed: an insert for an
-- organization that does not exist fails (foreign_key_violation), the
-- organization's row is locked (FOR KEY SHARE) until the insert commits,
-- so a deletion waits for it, and deleting an organization deletes its
-- events and outcomes with it, inserts that committed meanwhile included.
-- SQLite keeps its foreign keys: its writes are serial, and a check there
-- is an in-process index probe.

CREATE FUNCTION lock_event_orgs() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    wanted BIGINT;
    locked BIGINT;
BEGIN
    SELECT COUNT(DISTINCT org_id) INTO wanted FROM new_rows;
    SELECT COUNT(*) INTO locked FROM (
        SELECT 1 FROM organizations o
        WHERE o.id IN (SELECT DISTINCT org_id FROM new_rows)
        FOR KEY SHARE OF o
    ) l;
    IF locked < wanted THEN
        RAISE EXCEPTION 'insert on table "%" names an organization that does not exist', TG_TABLE_NAME
            USING ERRCODE = 'foreign_key_violation';
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER audit_events_org AFTER INSERT ON audit_events
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION lock_event_orgs();
CREATE TRIGGER use_outcomes_org AFTER INSERT ON use_outcomes
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION lock_event_orgs();

CREATE FUNCTION delete_event_orgs_rows() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM use_outcomes WHERE org_id IN (SELECT id FROM gone);
    DELETE FROM audit_events WHERE org_id IN (SELECT id FROM gone);
    RETURN NULL;
END $$;

CREATE TRIGGER organizations_events AFTER DELETE ON organizations
    REFERENCING OLD TABLE AS gone FOR EACH STATEMENT EXECUTE FUNCTION delete_event_orgs_rows();

ALTER TABLE audit_events DROP CONSTRAINT audit_events_org_id_fkey;
ALTER TABLE use_outcomes DROP CONSTRAINT use_outcomes_org_id_fkey;
