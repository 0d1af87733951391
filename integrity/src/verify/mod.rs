//! The streaming chain verifier behind `auditctl verify`, independent of where records are
//! stored (ClickHouse rows rebuilt into events, archive segments, the `audit.chained` topic).
//!
//! Feed one partition's records in the order the store returns them (normally sorted by seq)
//! with [`PartitionVerifier::push`] (or [`PartitionVerifier::push_timed`] with the event's
//! receive time, for the backdating check), then [`PartitionVerifier::finish`]. Nothing stored is
//! trusted: every link is recomputed from the event's canonical bytes and the *recomputed*
//! predecessor, and checkpoints are checked against the key set and then against the recomputed
//! head and Merkle root at their seq.
//!
//! # How findings are classified
//!
//! One mutation of stored data should give one finding that names what happened, not a cascade.
//! So a record's verdict waits for its successor (one record of lookahead, no buffering of
//! bytes): the successor's `prev_hash` tells which hash the chain continued from.
//!
//! | stored data | successor / context | finding |
//! |---|---|---|
//! | content ≠ its stored hash | successor links to the stored hash | `ModifiedEvent` |
//! | content ≠ its stored hash | successor links to the recomputed hash | `ModifiedHash` |
//! | content and hash both rewritten consistently | successor links to the old hash | `ModifiedEvent` |
//! | `prev_hash` ≠ predecessor, hash recomputes from the true predecessor | — | `BrokenLink` |
//! | seq numbers skip | (also after a bounded wait for late records) | `MissingSeq` |
//! | a record hashes as the next seq's from the stored prev (deleted, rest renumbered down) | | `MissingSeq` |
//! | a record whose successor links to (and hashes after) its predecessor (rest renumbered up) | | `InsertedEvent` |
//! | records arrive with seq going backwards (reported at the late record's seq) | | `Reordered` |
//! | two adjacent records traded seq numbers | successor is the partner | `Reordered` |
//! | same seq twice, identical | | `DuplicateSeq` (warning) |
//! | same seq twice, different | | `Fork` |
//! | store ends before the latest valid checkpoint (or the expected last seq) | | `TruncatedTail` |
//! | checkpoint's head or Merkle root ≠ recomputed | | `CheckpointMismatch` |
//! | checkpoint signature bad / key unknown / key not valid then / fields malformed | | `BadCheckpointSignature` / `UnknownKey` / `KeyNotValidAt` / `MalformedCheckpoint` |
//! | first record doesn't start where expected (seq or prev hash) | | `GenesisMismatch` |
//! | seq < 1, or past the range's expected last seq | | `MalformedRecord` / `InsertedEvent` |
//! | checkpoint ranges leave a gap (`first_seq` > previous `seq` + 1, or the first > start + 1) | | `MissingCheckpoint` (at the first uncovered seq) |
//! | checkpoint signed before a receive time it covers, or before an earlier checkpoint | | `CheckpointBackdated` |
//!
//! Findings about stored objects rather than records are made by the reader of the store, not
//! by this verifier, but use the same kinds so that one report names everything: an archive
//! segment that is not what was written (`SegmentReplaced`), a segment without its manifest
//! (`SegmentWithoutManifest`, a warning), an unreadable manifest (`MalformedManifest`), and a
//! later different copy of a `(partition, seq)` that a sink refused and recorded (`Fork`).
//!
//! After a finding, verification continues from the hash the rest of the chain committed to
//! (reported above), so later damage is still found and reported separately. What a hash chain
//! cannot detect without a signature: a consistent rewrite of everything after the latest valid
//! checkpoint (including appending or dropping records there). [`PartitionReport::sealed_through`]
//! says up to which seq the data is covered by a checkpoint that matched.
//!
//! Records whose seq arrives out of order are held in a bounded reorder buffer (only while seq
//! jumps forward; the normal path copies nothing) so that a swap of two records in an archive
//! segment is one `Reordered` finding rather than a gap plus a late record.

mod arrival;
mod checkpoints;
mod finding;
mod options;
mod partition;
mod pending;
mod record;
mod report;
mod verdict;

#[cfg(test)]
mod tests;

pub use finding::{Finding, FindingKind, Severity};
pub use options::{ExpectedStart, VerifyOptions};
pub use partition::{verify_partition, PartitionVerifier};
pub use record::{OwnedRecord, StoredRecord};
pub use report::{PartitionReport, Report};
