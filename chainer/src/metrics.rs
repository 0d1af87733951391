//! Metric names (Prometheus, via the `metrics` crate); every one is labelled by `partition`,
//! except the transaction counters (a transaction spans partitions).

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
