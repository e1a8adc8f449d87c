-- A number per credential that every update of its row raises by one, so a
-- listing page read before can be reused exactly: while the organization's
-- listing version (0012: which rows a listing shows, in which order) and
-- the sum of its rows' row versions are what they were when it was read,
-- nothing on it has changed. Each row's number only rises, so the sum over
-- the same rows rises with any change to one of them. (An update that sets
-- row_version itself, as this trigger's does, does not fire it again.)
ALTER TABLE credentials ADD COLUMN row_version INTEGER NOT NULL DEFAULT 0;

CREATE TRIGGER credentials_row_version AFTER UPDATE ON credentials
    WHEN NEW.row_version = OLD.row_version
BEGIN
    UPDATE credentials SET row_version = OLD.row_version + 1 WHERE id = NEW.id;
END;
