-- The whole-tree root of a checkpoint (schemas::flat::CheckpointRow::tree_root, Avro
-- checkpoint v3, hex). Signed, so without it a v3 checkpoint read back from ClickHouse would
-- not verify. Rows stored before this migration are range-only checkpoints: '' = none.
--
-- `ADD COLUMN IF NOT EXISTS` is not understood by 18.16: on such servers the migration runner
-- checks system.columns and runs the statement without `IF NOT EXISTS` (see migrations.rs).
ALTER TABLE audit_checkpoints ADD COLUMN IF NOT EXISTS tree_root String DEFAULT '';
