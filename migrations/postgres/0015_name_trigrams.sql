-- `q=` (a part of the name, any case) is `LOWER(name) LIKE '%…%'`: no
-- b-tree serves it, so a filtered page read every credential of the table
-- (12 ms for 10,000). A trigram index on LOWER(name) lets Postgres read only
-- the rows that can match. pg_trgm ships with Postgres (contrib) and is a
-- trusted extension; where it is missing or may not be created, the index
-- is left out and `q=` still works, by scanning.
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'pg_trgm') THEN
        CREATE EXTENSION IF NOT EXISTS pg_trgm;
        CREATE INDEX credentials_name_trigrams ON credentials USING gin (LOWER(name) gin_trgm_ops);
    ELSE
        RAISE NOTICE 'pg_trgm is not available: name searches scan';
    END IF;
EXCEPTION WHEN insufficient_privilege THEN
    RAISE NOTICE 'pg_trgm may not be created here: name searches scan';
END
$$;
