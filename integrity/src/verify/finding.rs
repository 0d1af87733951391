//! Finding kinds and severities: the stable names reports and exit codes are built on (other
//! readers of the store, e.g. the archive checks, report with the same kinds).

use serde::Serialize;

use crate::chain::Hash32;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FindingKind {
    /// The event's content does not match the hash the chain committed to.
    ModifiedEvent,
    /// The stored hash field was altered (the content and the next link agree with each other).
    ModifiedHash,
    /// The stored `prev_hash` does not match the previous record's hash.
    BrokenLink,
    /// Seqs missing from the store (deleted records).
    MissingSeq,
    /// A record that is not part of the chain.
    InsertedEvent,
    /// Records out of seq order.
    Reordered,
    /// A second identical copy of a record (harmless; sinks may briefly hold duplicates).
    DuplicateSeq,
    /// Two different records at the same seq.
    Fork,
    /// The store ends before the latest valid checkpoint (or the expected last seq).
    TruncatedTail,
    /// A valid checkpoint disagrees with the recomputed head or Merkle root.
    CheckpointMismatch,
    BadCheckpointSignature,
    UnknownKey,
    /// A checkpoint correctly signed by a key outside that key's validity window.
    KeyNotValidAt,
    MalformedCheckpoint,
    /// A record that cannot be checked at all (seq out of range, undecodable).
    MalformedRecord,
    /// The stored range does not begin where expected (seq 1 / the given start).
    GenesisMismatch,
    /// An archive segment object is not the one that was written: its size or SHA-256 differs
    /// from its manifest, its metadata names another segment than its object key, or its
    /// records disagree with its metadata. Reported at the segment's first seq; records whose
    /// content changed are also reported one by one (`ModifiedEvent`, …) by the chain check.
    SegmentReplaced,
    /// An archive segment object without its manifest, so its digest cannot be checked (its
    /// records are still verified). Normal for a moment after a writer crash between the two
    /// puts (the sink writes the missing manifest when it resumes), hence a warning.
    SegmentWithoutManifest,
    /// An archive manifest that cannot be read, or that describes another segment than the one
    /// its name says.
    MalformedManifest,
    /// The valid checkpoints of a partition do not cover contiguous ranges: seqs between one
    /// checkpoint and the next (or before the first) are signed by none. Checkpoints cover
    /// `first_seq ..= seq` with `first_seq` = the previous checkpoint's `seq` + 1, so a gap
    /// means a checkpoint was deleted from the store (or the chainer lost a range on recovery).
    MissingCheckpoint,
    /// A valid checkpoint whose signed time is before the newest `receive_time_us` of the
    /// events it covers, or before the time of an earlier checkpoint of the partition: its
    /// time was set back (e.g. into the validity window of a retired key).
    CheckpointBackdated,
    /// `--source both`: the two stores disagree (a different hash at the same (partition,
    /// seq), or a partition present in one store and absent from the other).
    StoreDisagreement,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Error,
    Warning,
}

impl FindingKind {
    pub fn severity(self) -> Severity {
        match self {
            FindingKind::DuplicateSeq | FindingKind::SegmentWithoutManifest => Severity::Warning,
            _ => Severity::Error,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub partition: i32,
    /// Stored seq the finding is about (for missing records: the first missing seq).
    pub seq: i64,
    pub kind: FindingKind,
    pub severity: Severity,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event_id: Option<String>,
    pub detail: String,
}

/// Short hex of a hash, for finding details.
pub(super) fn short(h: &Hash32) -> String {
    hex::encode(&h[..8])
}

/// [`short`], for a stored field that may not be 32 bytes.
pub(super) fn short_opt(h: &Option<Hash32>) -> String {
    h.as_ref()
        .map_or_else(|| "(not 32 bytes)".to_owned(), short)
}
