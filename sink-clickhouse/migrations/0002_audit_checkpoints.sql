-- Signed checkpoints from <prefix>checkpoints (schemas::flat::CheckpointRow), every field kept
-- (bytes as lowercase hex) so that auditctl can check signatures from ClickHouse alone. The sink
-- inserts each (chain_partition, seq, key_id) once.
CREATE TABLE IF NOT EXISTS audit_checkpoints
(
    chain_id String,
    chain_partition Int32,
    first_seq Int64,
    seq Int64,
    head_hash String,
    merkle_root String,
    time_us Int64,
    time DateTime('UTC'),
    key_id String,
    signature String,
    checkpoint_offset Int64,
    inserted_at DateTime('UTC') DEFAULT now()
)
ENGINE = MergeTree()
PARTITION BY toYYYYMM(time)
ORDER BY (chain_partition, seq, key_id);
