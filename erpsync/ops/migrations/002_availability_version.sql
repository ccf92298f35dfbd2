-- The SKU state's version joins the fence: it orders updates whose source positions did not move.
ALTER TABLE sync.availability ADD COLUMN IF NOT EXISTS version bigint NOT NULL DEFAULT 0;
