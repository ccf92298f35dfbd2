-- The exception queue (spec section 9): one row per problem, whatever its number of occurrences.
-- id is deterministic (kind | entity | business key), so repeated occurrences update one row.
CREATE TABLE IF NOT EXISTS sync.exceptions (
    id             text PRIMARY KEY,
    kind           text NOT NULL,
    severity       text NOT NULL,
    entity         text NOT NULL,
    business_key   text NOT NULL,
    reason         text NOT NULL,
    detail         jsonb NOT NULL DEFAULT '{}',
    source         jsonb,                 -- source coordinates (system, table, position, topic/partition/offset)
    first_seen_ms  bigint NOT NULL,       -- event time
    last_seen_ms   bigint NOT NULL,
    occurrences    bigint NOT NULL DEFAULT 1,
    state          text NOT NULL DEFAULT 'open' CHECK (state IN ('open', 'resolved', 'replayed')),
    note           text,                  -- what the person who resolved it wrote
    state_changed_at timestamptz NOT NULL DEFAULT now(),
    written_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS exceptions_kind_state ON sync.exceptions (kind, state);
CREATE INDEX IF NOT EXISTS exceptions_last_seen ON sync.exceptions (last_seen_ms);
