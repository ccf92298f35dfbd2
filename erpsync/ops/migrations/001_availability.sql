-- What each channel was told about each SKU. Rows are written only by a newer source position
-- (per system), so a replayed or reordered update never overwrites a newer one.
CREATE SCHEMA IF NOT EXISTS sync;

CREATE TABLE IF NOT EXISTS sync.availability (
    channel          text    NOT NULL,
    sku              text    NOT NULL,
    ats              bigint  NOT NULL,
    on_hand          bigint  NOT NULL,
    allocated        bigint  NOT NULL,
    in_transit       bigint  NOT NULL,
    committed_open   bigint  NOT NULL,
    intake_reserved  bigint  NOT NULL,
    safety_stock     bigint  NOT NULL,
    network          bigint  NOT NULL,
    status           text    NOT NULL,
    pos_erp          text    NOT NULL DEFAULT '',
    pos_wms          text    NOT NULL DEFAULT '',
    pos_commerce     text    NOT NULL DEFAULT '',
    pos_clock        text    NOT NULL DEFAULT '',
    event_time_ms    bigint  NOT NULL,
    published_at_ms  bigint  NOT NULL,
    written_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (channel, sku)
);
