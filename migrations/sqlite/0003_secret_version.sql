-- Every write of new secret content bumps secret_version; writers make their
-- write conditional on the version they read (compare-and-swap).
ALTER TABLE credentials ADD COLUMN secret_version INTEGER NOT NULL DEFAULT 0;
