-- Optional upgrade (server >= 21.8): read target_metadata with the exact JSON path instead of
-- 0004's visitParam approximation (new parts; old parts keep their values until
-- `ALTER TABLE audit_events MATERIALIZE COLUMN target_metadata`).
ALTER TABLE audit_events
    MODIFY COLUMN target_metadata Nullable(String) MATERIALIZED nullIf(JSONExtractRaw(ifNull(metadata_json, ''), '_unmapped', 'target', 'metadata'), '');
