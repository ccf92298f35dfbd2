-- The worked example's new ERP table (schemas/mappings/README.md). In a real ERP it already exists;
-- for the reference ERP it would be added to reference/erp.postgres.sql.
CREATE TABLE erp.suppliers (
    supplier_id     text PRIMARY KEY,
    name            text NOT NULL,
    lead_time_days  integer NOT NULL DEFAULT 0 CHECK (lead_time_days >= 0),
    min_order_value numeric(12,2),
    status          text NOT NULL DEFAULT 'active' CHECK (status IN ('active','blocked')),
    updated_at      timestamptz NOT NULL DEFAULT now()
);
