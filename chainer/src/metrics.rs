//! Metric names (Prometheus, via the `metrics` crate); every one is labelled by `partition`,
//! except the transaction counters (a transaction spans partitions) and the worker-wide
//! liveness gauges and counters at the end.

/// Events appended to a chain (enqueued to the chained topic).
pub const CHAINED: &str = "audit_chainer_events_chained_total";
/// Events dropped because their id is in the partition's dedup window.
pub const DUPLICATES: &str = "audit_chainer_duplicates_dropped_total";
/// Undecodable input records sent to the rejected topic.
pub const DEAD_LETTERED: &str = "audit_chainer_dead_lettered_total";
/// Input records below the chain's resume point (already chained), skipped.
pub const SKIPPED: &str = "audit_chainer_already_chained_skipped_total";
/// Seeks back to the chain's resume point (the committed offset was ahead of it).
pub const SEEKS: &str = "audit_chainer_seeks_total";
/// Partition recoveries from the chained tail (one per assignment).
pub const RECOVERIES: &str = "audit_chainer_recoveries_total";
/// Checkpoints acknowledged by the broker.
pub const CHECKPOINTS: &str = "audit_chainer_checkpoints_published_total";
/// Seq of the latest chained record the broker acknowledged (at recovery: the recovered head).
pub const HEAD_SEQ: &str = "audit_chainer_head_seq";
/// Transactions committed (only with `--transactional-id`).
pub const TXN_COMMITTED: &str = "audit_chainer_transactions_committed_total";
/// Transactions aborted (their partitions are then recovered from the chained tail).
pub const TXN_ABORTED: &str = "audit_chainer_transactions_aborted_total";
/// Events whose scoped id was in the dedup window with different content: chained anyway
/// (never dropped) and alarmed.
pub const ID_CONFLICTS: &str = "audit_chainer_id_conflicts_total";
/// Dead letters below the committed offset seen again on a replay after recovery: not sent
/// to the rejected topic a second time.
pub const DEAD_LETTERS_REPLAYED: &str = "audit_chainer_dead_letters_replayed_total";
/// Recoveries that resumed from the latest signed checkpoint because the chained partition's
/// records were gone (retention).
pub const RESUMED_FROM_CHECKPOINT: &str = "audit_chainer_resumed_from_checkpoint_total";
/// Recoveries whose chained tail ended before a signed checkpoint (truncated chained topic).
pub const TAIL_BEHIND_CHECKPOINT: &str = "audit_chainer_tail_behind_checkpoint_total";
/// Recoveries after which the partition's checkpoints sign ranges only (no whole-tree root):
/// the latest checkpoint had no usable tree peaks, or link hashes were missing.
pub const RANGE_ONLY_CHECKPOINTS: &str = "audit_chainer_range_only_checkpoints_total";
/// Recoveries that found a gap in the chained tail and resumed before it.
pub const TAIL_GAPS: &str = "audit_chainer_tail_gaps_total";
/// Partitions held by this instance (one task each).
pub const HELD: &str = "audit_chainer_partitions_held";
/// Held partitions still recovering from the chained tail.
pub const RECOVERING: &str = "audit_chainer_partitions_recovering";
/// Records of the enriched topic not yet chained: held partitions from their chain position,
/// unheld ones (group mode) from the group's committed offset.
pub const LAG: &str = "audit_chainer_input_lag";
/// 1 when `/readyz` says ready.
pub const READY: &str = "audit_chainer_ready";
/// Consumers recreated because the worker held no partition, or received nothing, while its
/// input had lag for longer than `--consumer-stall-timeout-secs`.
pub const CONSUMER_RESTARTS: &str = "audit_chainer_consumer_restarts_total";
/// Times a partition was paused because its task's queue had been full for a second
/// (`router::PAUSE_AFTER`; labelled by partition).
pub const PAUSES: &str = "audit_chainer_partition_pauses_total";
/// Delivery failures (of a chained record, dead letter or checkpoint) after which the partition
/// stopped and was recovered again from the chained tail (labelled by partition).
pub const DELIVERY_FAILURES: &str = "audit_chainer_delivery_failures_total";
/// Producers recreated because librdkafka declared the idempotent producer fatal (or it kept
/// failing every delivery).
pub const PRODUCER_RESTARTS: &str = "audit_chainer_producer_restarts_total";
/// Unix time (seconds) when the newest checkpoint of a chain partition was acknowledged by the
/// broker (labelled by partition); the dashboards show `time() -` this as checkpoint age.
pub const CHECKPOINT_TIMESTAMP: &str = "audit_chainer_checkpoint_timestamp_seconds";
