-- Exceptions resolve themselves (spec section 9): when the sources no longer show a problem the
-- pipeline marks it resolved, naming the fact that cleared it; a problem that holds again reopens.
-- resolved_by: 'erpsync' (the pipeline) or the note's author (`erpsync exceptions resolve`).
ALTER TABLE sync.exceptions ADD COLUMN IF NOT EXISTS resolved_by text;
ALTER TABLE sync.exceptions ADD COLUMN IF NOT EXISTS cleared_by jsonb;  -- source coordinates of the clearing fact
