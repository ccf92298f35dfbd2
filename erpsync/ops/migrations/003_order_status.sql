-- Order status as channels were told it (order-status.<channel>), one row per channel order.
CREATE TABLE IF NOT EXISTS sync.order_status (
    channel            text NOT NULL,
    external_order_id  text NOT NULL,
    order_id           bigint,
    status             text NOT NULL,
    reasons            text[] NOT NULL DEFAULT '{}',
    lines              jsonb NOT NULL,
    carriers           text[] NOT NULL DEFAULT '{}',
    tracking_numbers   text[] NOT NULL DEFAULT '{}',
    last_fact_ms       bigint NOT NULL,
    version            bigint NOT NULL,
    written_at         timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (channel, external_order_id)
);
CREATE INDEX IF NOT EXISTS order_status_status ON sync.order_status (status);
