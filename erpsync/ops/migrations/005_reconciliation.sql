-- Reconciliation runs (`erpsync reconcile`, spec section 9): the KPIs of each run and every
-- difference it found between the systems of record and what channels were told.
CREATE TABLE IF NOT EXISTS sync.reconciliation_runs (
    id            bigserial PRIMARY KEY,
    started_at    timestamptz NOT NULL,
    finished_at   timestamptz NOT NULL,
    scope         jsonb NOT NULL,          -- {"skus": LIKE pattern | null, "orders": ..., "since_ms": ..., ...}
    kpis          jsonb NOT NULL,
    accuracy      numeric(7,4),            -- inventory accuracy in percent; NULL: no SKU x channel in scope
    min_accuracy  numeric(7,4),            -- the threshold the run was held to, if any
    passed        boolean NOT NULL         -- accuracy >= min_accuracy (true when no threshold was given)
);
CREATE INDEX IF NOT EXISTS reconciliation_runs_started ON sync.reconciliation_runs (started_at);

CREATE TABLE IF NOT EXISTS sync.reconciliation_findings (
    run_id        bigint NOT NULL REFERENCES sync.reconciliation_runs (id) ON DELETE CASCADE,
    seq           integer NOT NULL,        -- order of the finding within its run
    kind          text NOT NULL,           -- ats_mismatch_redis, order_status_mismatch, invoice_discrepancy, ...
    entity        text NOT NULL,           -- availability | order
    business_key  text NOT NULL,           -- "<channel>/<sku>" or "<channel>/<external_order_id>"
    expected      jsonb,                   -- what the systems of record say
    actual        jsonb,                   -- what channels were told (or the other system of record)
    detail        jsonb NOT NULL DEFAULT '{}',
    PRIMARY KEY (run_id, seq)
);
CREATE INDEX IF NOT EXISTS reconciliation_findings_kind ON sync.reconciliation_findings (kind, run_id);
CREATE INDEX IF NOT EXISTS reconciliation_findings_key ON sync.reconciliation_findings (business_key);
