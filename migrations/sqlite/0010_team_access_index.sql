-- Serves the team arm of the listing's access predicate,
-- `x.org_id = $1 AND x.team_access IS NOT NULL` in Store::list_credentials
-- (what every member, and a key without a user, may use because it is shared
-- with the team); the owner and grant arms have credentials_org_owner and
-- credential_grants_user, and the planner takes the union of the three.
-- Only team-shared credentials are in it, in the listing's order.
CREATE INDEX credentials_org_team_shared ON credentials (org_id, created_at DESC, id DESC)
    WHERE team_access IS NOT NULL;
