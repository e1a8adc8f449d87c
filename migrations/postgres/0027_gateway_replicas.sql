-- The replicas serving the gateway, each kept by its own heartbeat: the
-- cap on a credential's calls in flight is shared among the live ones, so
-- that together they keep to it. A replica not seen for a while is gone
-- (a crash leaves its row behind until then).
CREATE TABLE gateway_replicas (
    id       TEXT PRIMARY KEY,
    seen_at  BIGINT NOT NULL
);
