-- HTTP push channels (spec section 12, connectors.http_channels).
-- What each push channel acknowledged, per key: the fence (source positions and version) of the
-- newest value the platform accepted, and of a value it rejected (4xx) that must not be re-sent
-- until the exception is replayed. What is owed is re-derived from sync.availability and
-- sync.order_status against these fences, so nothing owed is lost in a restart and nothing older
-- is re-sent over a newer value.
CREATE TABLE IF NOT EXISTS sync.channel_deliveries (
    channel                text   NOT NULL,
    kind                   text   NOT NULL CHECK (kind IN ('availability', 'order_status')),
    key                    text   NOT NULL,   -- sku, or external order id
    acked_pos_erp          text,
    acked_pos_wms          text,
    acked_version          bigint,            -- NULL: nothing acknowledged yet
    acked_value            jsonb,             -- order status: what the platform shows (status, tracking)
    acked_ats              bigint,            -- availability: the ATS the platform holds (reconcile)
    acked_idempotency_key  text,
    acked_at               timestamptz,
    rejected_pos_erp       text,
    rejected_pos_wms       text,
    rejected_version       bigint,            -- NULL: no rejection outstanding
    rejected_exception     text,              -- the channel_rejected exception id
    rejected_at            timestamptz,
    PRIMARY KEY (channel, kind, key)
);
CREATE INDEX IF NOT EXISTS channel_deliveries_rejected ON sync.channel_deliveries (rejected_exception)
    WHERE rejected_exception IS NOT NULL;

-- The delivery engine's live figures per channel, refreshed every few seconds by `erpsync run`
-- (read by `erpsync channels status`).
CREATE TABLE IF NOT EXISTS sync.channel_status (
    channel          text PRIMARY KEY,
    breaker          text NOT NULL,             -- closed | open | half_open
    pending          bigint NOT NULL,           -- keys owed, not in flight
    in_flight        bigint NOT NULL,
    delivered        bigint NOT NULL,           -- values acknowledged since the engine started
    last_position    jsonb,                     -- source positions of the newest acknowledged value
    latency_p50_ms   double precision,          -- handed to delivery -> acknowledged, last minute
    latency_p99_ms   double precision,
    requests_per_s   double precision,          -- last 10 s
    errors           jsonb NOT NULL DEFAULT '{}',   -- by kind, since the engine started
    started_at       timestamptz NOT NULL,
    updated_at       timestamptz NOT NULL DEFAULT now()
);
