-- The signed partition count of a checkpoint (schemas::flat::CheckpointRow::partition_count,
-- Avro checkpoint v2). Without it a v2 checkpoint read back from ClickHouse would not verify
-- (the count is signed). Rows stored before this migration are v1 checkpoints: 0 = none.
--
-- `ADD COLUMN IF NOT EXISTS` is not understood by 18.16: on such servers the migration runner
-- checks system.columns and runs the statement without `IF NOT EXISTS` (see migrations.rs).
ALTER TABLE audit_checkpoints ADD COLUMN IF NOT EXISTS partition_count Int32 DEFAULT 0;
