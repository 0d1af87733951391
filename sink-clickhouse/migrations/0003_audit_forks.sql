-- Fork alarms: a chained record whose (chain_partition, seq) is already stored with a DIFFERENT
-- hash (two chainer instances disagreed). The stored row is never overwritten; the offered copy
-- is kept here whole (its Kafka payload as hex) for the investigation, and the sink raises
-- audit_sink_forks_total and logs an error. Identical second copies are not forks (they are
-- counted in audit_sink_duplicates_total and dropped).
CREATE TABLE IF NOT EXISTS audit_forks
(
    chain_partition Int32,
    seq Int64,
    stored_hash String,
    offered_hash String,
    offered_chained_offset Int64,
    offered_payload_hex String,
    detected_at DateTime('UTC') DEFAULT now()
)
ENGINE = MergeTree()
ORDER BY (chain_partition, seq);
