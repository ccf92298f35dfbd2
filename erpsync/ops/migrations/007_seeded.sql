-- Self-healing stores: the pipeline marks the ops tables as holding its outputs. A database that comes
-- back without this row (restored empty, recreated) is re-seeded from the pipeline's state, without
-- re-reading history (connectors/resilience.py, erpsync/runner.py).
CREATE TABLE IF NOT EXISTS sync.seeded (
    store text PRIMARY KEY,
    token text NOT NULL,
    at timestamptz NOT NULL DEFAULT now()
);
