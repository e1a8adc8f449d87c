-- A number per credential that every update of its row raises by one, so a
-- listing page read before can be reused exactly: while the organization's
-- listing version (0012: which rows a listing shows, in which order) and
-- the sum of its rows' row versions are what they were when it was read,
-- nothing on it has changed, on any replica. Each row's number only rises,
-- so the sum over the same rows rises with any change to one of them. The
-- trigger runs on the row being updated (which the update has locked
-- already): it takes no other lock, so it adds no lock order to mind.
ALTER TABLE credentials ADD COLUMN row_version BIGINT NOT NULL DEFAULT 0;

CREATE FUNCTION raise_row_version() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.row_version := OLD.row_version + 1;
    RETURN NEW;
END $$;

CREATE TRIGGER credentials_row_version BEFORE UPDATE ON credentials
    FOR EACH ROW EXECUTE FUNCTION raise_row_version();
