//! The streaming chain verifier behind `auditctl verify`, independent of where records are
//! stored (ClickHouse rows rebuilt into events, archive segments, the `audit.chained` topic).
//!
//! Feed one partition's records in the order the store returns them (normally sorted by seq)
//! with [`PartitionVerifier::push`], then [`PartitionVerifier::finish`]. Nothing stored is
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

use std::collections::BTreeMap;

use serde::Serialize;

use crate::chain::{link_hash, Hash32, GENESIS};
use crate::checkpoint::KeySet;
use crate::checkpoint::{verify_signed, CheckpointError, SignedCheckpoint};
use crate::checkpoint_record::Checkpoint;
use crate::merkle::{leaf_hash, MerkleBuilder};

/// One stored record, borrowed from whatever the store handed back.
#[derive(Debug, Clone, Copy)]
pub struct StoredRecord<'a> {
    pub seq: i64,
    pub prev_hash: &'a [u8],
    pub hash: &'a [u8],
    /// Canonical bytes recomputed from the stored event fields (never a stored copy of them,
    /// unless the store keeps the Avro bytes themselves).
    pub canonical: &'a [u8],
    pub event_id: &'a str,
    /// Which copy this is when the store keeps duplicates (e.g. ClickHouse before merges).
    pub copy: Option<u32>,
}

/// An owned [`StoredRecord`] (reorder buffer, tests, callers that rebuild records).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnedRecord {
    pub seq: i64,
    pub prev_hash: Vec<u8>,
    pub hash: Vec<u8>,
    pub canonical: Vec<u8>,
    pub event_id: String,
    pub copy: Option<u32>,
}

impl OwnedRecord {
    pub fn as_stored(&self) -> StoredRecord<'_> {
        StoredRecord {
            seq: self.seq,
            prev_hash: &self.prev_hash,
            hash: &self.hash,
            canonical: &self.canonical,
            event_id: &self.event_id,
            copy: self.copy,
        }
    }

    pub fn from_stored(r: &StoredRecord<'_>) -> Self {
        Self {
            seq: r.seq,
            prev_hash: r.prev_hash.to_vec(),
            hash: r.hash.to_vec(),
            canonical: r.canonical.to_vec(),
            event_id: r.event_id.to_owned(),
            copy: r.copy,
        }
    }

    /// Rebuild from a `ChainedEvent` as a store returns it, re-encoding the event under the
    /// canonical version the chainer recorded.
    pub fn from_chained(ev: &crate::event::ChainedEvent) -> Result<Self, crate::SchemaError> {
        let mut canonical = Vec::with_capacity(512);
        crate::avro::canonical_bytes_version_into(&ev.event, ev.canonical_version, &mut canonical)?;
        Ok(Self {
            seq: ev.seq,
            prev_hash: ev.prev_hash.clone(),
            hash: ev.hash.clone(),
            canonical,
            event_id: ev.event.event_id.clone(),
            copy: None,
        })
    }
}

/// Where the stored range is expected to begin: after `seq` (0 = genesis), whose hash is
/// `prev_hash`. A whole-chain store uses [`ExpectedStart::GENESIS`]; one archive segment uses the
/// previous segment's last (seq, hash), e.g. from its manifest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExpectedStart {
    pub seq: u64,
    pub prev_hash: Hash32,
}

impl ExpectedStart {
    pub const GENESIS: Self = Self {
        seq: 0,
        prev_hash: GENESIS,
    };

    pub fn after(seq: u64, hash: Hash32) -> Self {
        Self {
            seq,
            prev_hash: hash,
        }
    }
}

#[derive(Debug, Clone)]
pub struct VerifyOptions {
    pub start: ExpectedStart,
    /// The range must end exactly here (e.g. an archive manifest's last seq). Checkpoints past
    /// it are then not expected in this store.
    pub expected_last_seq: Option<u64>,
    /// Checkpoints of another chain id are reported as mismatches.
    pub chain_id: Option<String>,
    /// Findings kept per partition (the rest are counted in `findings_dropped`).
    pub max_findings: usize,
    /// Out-of-order records held while waiting for a missing seq before declaring it missing.
    pub reorder_window: usize,
    /// Also recompute each checkpoint's Merkle root. Tamper detection does not need it (a
    /// matching head commits to every link before it); it proves the signed roots are right,
    /// i.e. that inclusion proofs for these ranges will check. Costs about three small SHA-256
    /// compressions per record.
    pub check_merkle_roots: bool,
}

impl Default for VerifyOptions {
    fn default() -> Self {
        Self {
            start: ExpectedStart::GENESIS,
            expected_last_seq: None,
            chain_id: None,
            max_findings: 1000,
            reorder_window: 1024,
            check_merkle_roots: true,
        }
    }
}

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

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PartitionReport {
    pub partition: i32,
    /// Lowest and highest stored seq seen.
    pub first_seq: Option<i64>,
    pub last_seq: Option<i64>,
    /// Records read (including duplicates).
    pub events: u64,
    /// Seq of the verified head and its hash (hex): what the next record must link to.
    pub head_seq: i64,
    pub head: String,
    /// Highest seq at which a valid checkpoint matched the recomputed chain.
    pub sealed_through: Option<i64>,
    pub findings: Vec<Finding>,
    pub findings_dropped: u64,
    pub ok: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Report {
    pub partitions: Vec<PartitionReport>,
    pub ok: bool,
}

impl Report {
    pub fn new(partitions: Vec<PartitionReport>) -> Self {
        let ok = partitions.iter().all(|p| p.ok);
        Self { partitions, ok }
    }
}

/// A record being judged; its verdict waits for the next record (see the module docs).
#[derive(Debug, Clone)]
struct Pending {
    /// True seq (stored seq minus the renumbering offset).
    t: u64,
    /// Stored seq.
    s: i64,
    stored_prev: Option<Hash32>,
    stored_hash: Option<Hash32>,
    /// The hash this record should link to.
    head_before: Hash32,
    /// link_hash(t, head_before, content).
    recomputed: Hash32,
    link_ok: bool,
    hash_ok: bool,
    /// Only computed on the anomaly path: content+hash agree with the *stored* prev at t...
    self_consistent: bool,
    /// ...or at t + 1 (the record belongs one seq later: renumbered or swapped).
    as_next: bool,
    is_first: bool,
    copy: Option<u32>,
    /// Stored hash of a different copy at the same seq (a fork already reported): if the
    /// successor links to it, the chain continued through that copy.
    alt: Option<Hash32>,
}

impl Pending {
    fn good(&self) -> bool {
        self.link_ok && self.hash_ok
    }
}

#[derive(Debug, Clone)]
struct CpCheck {
    first_seq: u64,
    head: Hash32,
    root: Hash32,
    key_id: String,
}

#[derive(Debug, Clone)]
struct RangeTree {
    last_seq: u64,
    tree: MerkleBuilder,
    broken: bool,
}

fn to_h(b: &[u8]) -> Option<Hash32> {
    b.try_into().ok()
}

fn short(h: &Hash32) -> String {
    hex::encode(&h[..8])
}

fn short_opt(h: &Option<Hash32>) -> String {
    h.as_ref()
        .map_or_else(|| "(not 32 bytes)".to_owned(), short)
}

/// Verifies one partition. See the module docs.
#[derive(Debug)]
pub struct PartitionVerifier {
    partition: u32,
    partition_i32: i32,
    opts: VerifyOptions,
    /// Committed hash of `resolved_seq`.
    head: Hash32,
    resolved_seq: u64,
    /// stored seq − true seq, after detected renumbering.
    offset: i64,
    pending: Option<Pending>,
    pending_id: String,
    max_seen: Option<i64>,
    buffer: BTreeMap<(i64, u64), OwnedRecord>,
    arrivals: u64,
    events: u64,
    first_seq: Option<i64>,
    last_seq: Option<i64>,
    cps: BTreeMap<u64, Vec<CpCheck>>,
    trees: BTreeMap<u64, RangeTree>,
    active: Vec<u64>,
    /// Smallest seq ≥ the current one at which a checkpoint ends or a tree starts.
    next_mark: u64,
    latest_valid_cp: Option<u64>,
    sealed_through: Option<u64>,
    findings: Vec<Finding>,
    dropped: u64,
    dropped_errors: bool,
}

impl PartitionVerifier {
    /// `checkpoints`: every checkpoint known for this partition (wire records, any order).
    pub fn new(
        partition: u32,
        keys: &KeySet,
        checkpoints: &[Checkpoint],
        opts: VerifyOptions,
    ) -> Self {
        let mut v = Self {
            partition,
            partition_i32: i32::try_from(partition).unwrap_or(i32::MAX),
            head: opts.start.prev_hash,
            resolved_seq: opts.start.seq,
            opts,
            offset: 0,
            pending: None,
            pending_id: String::new(),
            max_seen: None,
            buffer: BTreeMap::new(),
            arrivals: 0,
            events: 0,
            first_seq: None,
            last_seq: None,
            cps: BTreeMap::new(),
            trees: BTreeMap::new(),
            active: Vec::new(),
            next_mark: 0,
            latest_valid_cp: None,
            sealed_through: None,
            findings: Vec::new(),
            dropped: 0,
            dropped_errors: false,
        };
        for cp in checkpoints {
            v.add_checkpoint(cp, keys);
        }
        v.next_mark = v.mark_from(v.resolved_seq.saturating_add(1));
        v
    }

    fn add_checkpoint(&mut self, rec: &Checkpoint, keys: &KeySet) {
        let seq_label = rec.seq;
        let cp = match SignedCheckpoint::try_from(rec) {
            Ok(cp) => cp,
            Err(e) => {
                self.finding(
                    seq_label,
                    FindingKind::MalformedCheckpoint,
                    None,
                    e.to_string(),
                );
                return;
            }
        };
        if let Err(e) = verify_signed(keys, &cp) {
            let kind = match e {
                CheckpointError::UnknownKey { .. } => FindingKind::UnknownKey,
                CheckpointError::KeyNotValidAt { .. } => FindingKind::KeyNotValidAt,
                CheckpointError::BadSignature { .. } => FindingKind::BadCheckpointSignature,
                _ => FindingKind::MalformedCheckpoint,
            };
            self.finding(
                seq_label,
                kind,
                None,
                format!("checkpoint at seq {seq_label}: {e}"),
            );
            return;
        }
        let f = &cp.fields;
        if f.partition != self.partition {
            self.finding(
                seq_label,
                FindingKind::CheckpointMismatch,
                None,
                format!(
                    "checkpoint for partition {} given for partition {}",
                    f.partition, self.partition
                ),
            );
            return;
        }
        if let Some(want) = &self.opts.chain_id {
            if *want != f.chain_id {
                self.finding(
                    seq_label,
                    FindingKind::CheckpointMismatch,
                    None,
                    format!(
                        "checkpoint of chain {:?}, expected chain {want:?}",
                        f.chain_id
                    ),
                );
                return;
            }
        }
        let start = self.opts.start;
        if f.seq <= start.seq {
            // Before this store's range: only the boundary one can be checked.
            if f.seq == start.seq && f.head_hash != start.prev_hash {
                self.finding(
                    seq_label,
                    FindingKind::CheckpointMismatch,
                    None,
                    format!(
                        "expected start hash {} at seq {} differs from the signed head {}",
                        short(&start.prev_hash),
                        start.seq,
                        short(&f.head_hash)
                    ),
                );
            }
            return;
        }
        if self.opts.expected_last_seq.is_none_or(|e| f.seq <= e) {
            self.latest_valid_cp = self.latest_valid_cp.max(Some(f.seq));
        }
        if self.opts.check_merkle_roots {
            let t = self.trees.entry(f.first_seq).or_insert_with(|| RangeTree {
                last_seq: 0,
                tree: MerkleBuilder::new(),
                broken: false,
            });
            t.last_seq = t.last_seq.max(f.seq);
        }
        self.cps.entry(f.seq).or_default().push(CpCheck {
            first_seq: f.first_seq,
            head: f.head_hash,
            root: f.merkle_root,
            key_id: cp.key_id.clone(),
        });
    }

    fn mark_from(&self, from: u64) -> u64 {
        let a = self.cps.range(from..).next().map(|(k, _)| *k);
        let b = self.trees.range(from..).next().map(|(k, _)| *k);
        match (a, b) {
            (Some(a), Some(b)) => a.min(b),
            (Some(x), None) | (None, Some(x)) => x,
            (None, None) => u64::MAX,
        }
    }

    fn finding(&mut self, seq: i64, kind: FindingKind, event_id: Option<&str>, detail: String) {
        if self.findings.len() >= self.opts.max_findings {
            self.dropped += 1;
            self.dropped_errors |= kind.severity() == Severity::Error;
            return;
        }
        self.findings.push(Finding {
            partition: self.partition_i32,
            seq,
            kind,
            severity: kind.severity(),
            event_id: event_id.filter(|s| !s.is_empty()).map(str::to_owned),
            detail,
        });
    }

    /// A finding about the pending record (uses its event id).
    fn pending_finding(&mut self, seq: i64, kind: FindingKind, detail: String) {
        let id = std::mem::take(&mut self.pending_id);
        self.finding(seq, kind, Some(&id), detail);
        self.pending_id = id;
    }

    /// Stored label of true seq `t`.
    fn stored(&self, t: u64) -> i64 {
        let v = i128::from(t) + i128::from(self.offset);
        i64::try_from(v).unwrap_or(if v < 0 { i64::MIN } else { i64::MAX })
    }

    fn true_seq(&self, s: i64) -> Option<u64> {
        let v = i128::from(s) - i128::from(self.offset);
        u64::try_from(v)
            .ok()
            .filter(|&t| t >= 1 && t <= i64::MAX as u64)
    }

    fn expected_stored(&self) -> i64 {
        match &self.pending {
            Some(p) => p.s.saturating_add(1),
            None => self.stored(self.resolved_seq.saturating_add(1)),
        }
    }

    /// Feed the next record in store order.
    pub fn push(&mut self, r: &StoredRecord<'_>) {
        self.events += 1;
        self.first_seq = Some(self.first_seq.map_or(r.seq, |f| f.min(r.seq)));
        self.last_seq = Some(self.last_seq.map_or(r.seq, |l| l.max(r.seq)));
        let late = self.max_seen.is_some_and(|m| r.seq < m);
        if late {
            let m = self.max_seen.unwrap_or(r.seq);
            self.finding(
                r.seq,
                FindingKind::Reordered,
                Some(r.event_id),
                format!("seq {} is stored after seq {m}", r.seq),
            );
        }
        self.max_seen = Some(self.max_seen.map_or(r.seq, |m| m.max(r.seq)));
        let exp = self.expected_stored();
        if r.seq > exp {
            self.arrivals += 1;
            self.buffer
                .insert((r.seq, self.arrivals), OwnedRecord::from_stored(r));
            while self.buffer.len() > self.opts.reorder_window {
                self.pop_buffered();
                self.drain();
            }
            return;
        }
        if late && r.seq < exp {
            // Behind what was already judged; reported as reordered above.
            return;
        }
        self.process(r);
        self.drain();
    }

    fn pop_buffered(&mut self) {
        if let Some((_, rec)) = self.buffer.pop_first() {
            self.process(&rec.as_stored());
        }
    }

    fn drain(&mut self) {
        while let Some((&(s, _), _)) = self.buffer.first_key_value() {
            if s > self.expected_stored() {
                break;
            }
            self.pop_buffered();
        }
    }

    fn analyze(
        &self,
        r: &StoredRecord<'_>,
        t: u64,
        head_before: Hash32,
        is_first: bool,
        resync: bool,
    ) -> Pending {
        let stored_prev = to_h(r.prev_hash);
        let stored_hash = to_h(r.hash);
        let recomputed = link_hash(self.partition, t, &head_before, r.canonical);
        let link_ok = resync || stored_prev == Some(head_before);
        let hash_ok = stored_hash == Some(recomputed);
        let (mut self_consistent, mut as_next) = (false, false);
        if !link_ok && !hash_ok {
            if let (Some(sp), Some(sh)) = (stored_prev, stored_hash) {
                self_consistent = link_hash(self.partition, t, &sp, r.canonical) == sh;
                if !self_consistent {
                    as_next =
                        link_hash(self.partition, t.saturating_add(1), &sp, r.canonical) == sh;
                }
            }
        }
        Pending {
            t,
            s: r.seq,
            stored_prev,
            stored_hash,
            head_before,
            recomputed,
            link_ok,
            hash_ok,
            self_consistent,
            as_next,
            is_first,
            copy: r.copy,
            alt: None,
        }
    }

    fn set_pending(&mut self, p: Pending, event_id: &str) {
        self.pending = Some(p);
        self.pending_id.clear();
        self.pending_id.push_str(event_id);
    }

    fn process(&mut self, r: &StoredRecord<'_>) {
        let Some(t) = self.true_seq(r.seq) else {
            self.finding(
                r.seq,
                FindingKind::MalformedRecord,
                Some(r.event_id),
                format!("seq {} is outside 1..=i64::MAX", r.seq),
            );
            return;
        };
        if let Some(e) = self.opts.expected_last_seq {
            if t > e {
                self.finding(
                    r.seq,
                    FindingKind::InsertedEvent,
                    Some(r.event_id),
                    format!("record beyond the expected last seq {e} of this range"),
                );
                return;
            }
        }
        let Some(p) = self.pending.take() else {
            self.first(r, t);
            return;
        };
        if t == p.t {
            self.duplicate(p, r);
        } else if t < p.t {
            self.pending = Some(p);
            self.finding(
                r.seq,
                FindingKind::Reordered,
                Some(r.event_id),
                format!(
                    "seq {} comes after seq {}",
                    r.seq,
                    self.expected_stored() - 1
                ),
            );
        } else if t > p.t + 1 {
            let from = p.t + 1;
            self.resolve(p, None);
            let (a, b) = (self.stored(from), self.stored(t - 1));
            let n = t - from;
            self.finding(
                a,
                FindingKind::MissingSeq,
                None,
                if n == 1 {
                    format!("seq {a} is missing")
                } else {
                    format!("seqs {a}..={b} are missing ({n} records)")
                },
            );
            // Unverifiable across the gap: continue from what the next record links to.
            let head = to_h(r.prev_hash).unwrap_or(self.head);
            let np = self.analyze(r, t, head, false, true);
            self.set_pending(np, r.event_id);
        } else {
            self.successor(p, r, t);
        }
    }

    fn first(&mut self, r: &StoredRecord<'_>, t: u64) {
        let expected = self.resolved_seq + 1;
        if t < expected {
            self.finding(
                r.seq,
                FindingKind::GenesisMismatch,
                Some(r.event_id),
                format!(
                    "record at seq {} precedes the expected start seq {expected}",
                    r.seq
                ),
            );
            return;
        }
        if t > expected {
            let (a, b) = (self.stored(expected), self.stored(t - 1));
            self.finding(
                a,
                FindingKind::GenesisMismatch,
                None,
                format!(
                    "the store starts at seq {} instead of {a}: seqs {a}..={b} are missing",
                    r.seq
                ),
            );
            let head = to_h(r.prev_hash).unwrap_or(self.head);
            let np = self.analyze(r, t, head, false, true);
            self.set_pending(np, r.event_id);
            return;
        }
        // A first record that belongs one seq later (seq 1 deleted and the rest renumbered, or
        // seqs 1 and 2 swapped) is told apart by its successor, in `successor`.
        let np = self.analyze(r, t, self.head, true, false);
        self.set_pending(np, r.event_id);
    }

    fn duplicate(&mut self, p: Pending, r: &StoredRecord<'_>) {
        let sp = to_h(r.prev_hash);
        let sh = to_h(r.hash);
        let rr = link_hash(self.partition, p.t, &p.head_before, r.canonical);
        let copies = format!(
            "copies {} and {}",
            p.copy.map_or_else(|| "first".to_owned(), |c| c.to_string()),
            r.copy.map_or_else(|| "next".to_owned(), |c| c.to_string())
        );
        if rr == p.recomputed && sp == p.stored_prev && sh == p.stored_hash {
            self.finding(
                r.seq,
                FindingKind::DuplicateSeq,
                Some(r.event_id),
                format!("identical duplicate of seq {} ({copies})", r.seq),
            );
            self.pending = Some(p);
            return;
        }
        let n_good = sp == Some(p.head_before) && sh == Some(rr);
        let p_good = p.good();
        let detail = format!(
            "two different records at seq {} ({copies}; event ids {:?} and {:?}); the first {} the chain, the second {}",
            r.seq,
            self.pending_id,
            r.event_id,
            if p_good { "fits" } else { "does not fit" },
            if n_good { "fits" } else { "does not fit" },
        );
        self.finding(r.seq, FindingKind::Fork, Some(r.event_id), detail);
        if n_good && !p_good {
            let mut np = self.analyze(r, p.t, p.head_before, p.is_first, false);
            np.alt = p.stored_hash;
            self.set_pending(np, r.event_id);
        } else {
            let mut p = p;
            p.alt = sh.filter(|h| Some(*h) != p.stored_hash).or(p.alt);
            self.pending = Some(p);
        }
    }

    fn successor(&mut self, p: Pending, r: &StoredRecord<'_>, t: u64) {
        let x = to_h(r.prev_hash);
        if p.good() && x == Some(p.recomputed) {
            self.accept(p.t, p.recomputed);
            let np = self.analyze(r, t, p.recomputed, false, false);
            self.set_pending(np, r.event_id);
            return;
        }
        if x.is_some() && x == p.alt {
            // Forked seq (already reported): the chain went on through the other copy.
            self.accept(p.t, p.alt.unwrap_or(p.recomputed));
            let np = self.analyze(r, t, self.head, false, false);
            self.set_pending(np, r.event_id);
            return;
        }
        let part = self.partition;
        let shn = to_h(r.hash);
        // Does the successor's content belong at p's seq, after p's predecessor?
        let n_at_p = x == Some(p.head_before)
            && shn.is_some_and(|h| link_hash(part, p.t, &p.head_before, r.canonical) == h);
        if n_at_p && p.as_next && p.stored_prev == shn {
            if let (Some(shn), Some(psh)) = (shn, p.stored_hash) {
                self.pending_finding(
                    p.s,
                    FindingKind::Reordered,
                    format!(
                        "the records stored at seq {} and {} are each other's (their seqs were swapped)",
                        p.s, r.seq
                    ),
                );
                self.accept(p.t, shn);
                // `p`'s content is the record of seq t; it links to `shn` and hashes to psh.
                let swapped = Pending {
                    t,
                    s: r.seq,
                    stored_prev: Some(shn),
                    stored_hash: Some(psh),
                    head_before: shn,
                    recomputed: psh,
                    link_ok: true,
                    hash_ok: true,
                    self_consistent: false,
                    as_next: false,
                    is_first: false,
                    copy: p.copy,
                    alt: None,
                };
                self.pending = Some(swapped);
                return;
            }
        }
        if n_at_p {
            self.pending_finding(
                p.s,
                FindingKind::InsertedEvent,
                format!(
                    "not part of the chain: the next record (stored as seq {}) is the real seq {} and links to seq {}; later records are renumbered up by one",
                    r.seq,
                    p.s,
                    p.s - 1
                ),
            );
            self.offset += 1;
            let np = self.analyze(r, p.t, p.head_before, p.is_first, false);
            self.set_pending(np, r.event_id);
            return;
        }
        if p.as_next {
            // Not a swap (ruled out above): p's own seq was deleted and it was renumbered down.
            let moved = self.renumbered_down(p);
            match self.true_seq(r.seq) {
                Some(t2) if t2 == moved.t + 1 => self.successor(moved, r, t2),
                _ => {
                    // Whatever follows no longer fits after the shift: judge it afresh.
                    self.pending = Some(moved);
                    self.process(r);
                }
            }
            return;
        }
        if p.good() {
            if let (Some(xv), Some(shn)) = (x, shn) {
                if link_hash(part, t, &xv, r.canonical) == shn {
                    self.pending_finding(
                        p.s,
                        FindingKind::ModifiedEvent,
                        format!(
                            "event and its stored hash were rewritten consistently; the next record still links to the original hash {}",
                            short(&xv)
                        ),
                    );
                    self.accept(p.t, xv);
                    let np = self.analyze(r, t, xv, false, false);
                    self.set_pending(np, r.event_id);
                    return;
                }
            }
        }
        self.resolve(p, Some(x));
        let np = self.analyze(r, t, self.head, false, false);
        self.set_pending(np, r.event_id);
    }

    /// `p` hashes correctly as the record one seq later: its seq was deleted and the records
    /// from it on were renumbered down by one. Report it and shift.
    fn renumbered_down(&mut self, p: Pending) -> Pending {
        let kind = if p.is_first {
            FindingKind::GenesisMismatch
        } else {
            FindingKind::MissingSeq
        };
        self.pending_finding(
            p.s,
            kind,
            format!(
                "seq {} is missing: the record stored there is seq {}'s, and the records after it are renumbered down by one",
                p.s,
                p.s.saturating_add(1)
            ),
        );
        self.offset -= 1;
        Pending {
            t: p.t + 1,
            head_before: p.stored_prev.unwrap_or(p.head_before),
            recomputed: p.stored_hash.unwrap_or(p.recomputed),
            link_ok: true,
            hash_ok: true,
            self_consistent: false,
            as_next: false,
            is_first: false,
            ..p
        }
    }

    /// Give `p` its verdict and accept the hash the chain continues from. `next_prev` is the
    /// successor's stored prev_hash (`Some(None)` if it is not 32 bytes), `None` if there is no
    /// successor to ask.
    fn resolve(&mut self, p: Pending, next_prev: Option<Option<Hash32>>) {
        let cp_says = |v: &Self, t: u64, h: &Hash32| {
            v.cps
                .get(&t)
                .is_some_and(|l| l.iter().any(|c| c.head == *h))
        };
        if p.good() {
            // A fork with no successor to ask: a checkpoint may say which copy is the chain's.
            let h = match p.alt {
                Some(alt) if cp_says(self, p.t, &alt) && !cp_says(self, p.t, &p.recomputed) => alt,
                _ => p.recomputed,
            };
            self.accept(p.t, h);
            return;
        }
        if p.as_next && next_prev.is_none() {
            let moved = self.renumbered_down(p);
            self.accept(moved.t, moved.recomputed);
            return;
        }
        let stored_or_re = p.stored_hash.unwrap_or(p.recomputed);
        if p.link_ok {
            // Content and stored hash disagree: which one did the chain continue from?
            let cp_says = |h: &Hash32| cp_says(self, p.t, h);
            let (kind, committed, why) = match next_prev {
                Some(Some(x)) if x == p.recomputed => (
                    FindingKind::ModifiedHash,
                    p.recomputed,
                    "the next record links to the recomputed hash: the stored hash field was altered",
                ),
                Some(Some(x)) if Some(x) == p.stored_hash => (
                    FindingKind::ModifiedEvent,
                    stored_or_re,
                    "the next record links to the stored hash: the event was altered after chaining",
                ),
                Some(_) => (
                    FindingKind::ModifiedEvent,
                    stored_or_re,
                    "and the next record links to neither",
                ),
                None if cp_says(&p.recomputed) => (
                    FindingKind::ModifiedHash,
                    p.recomputed,
                    "a signed checkpoint confirms the recomputed hash: the stored hash field was altered",
                ),
                None if p.stored_hash.as_ref().is_some_and(cp_says) => (
                    FindingKind::ModifiedEvent,
                    stored_or_re,
                    "a signed checkpoint confirms the stored hash: the event was altered after chaining",
                ),
                None => (
                    FindingKind::ModifiedEvent,
                    stored_or_re,
                    "no later record or checkpoint tells whether the event or the stored hash was altered",
                ),
            };
            let detail = format!(
                "event content hashes to {}, stored hash is {}; {why}",
                short(&p.recomputed),
                short_opt(&p.stored_hash)
            );
            self.pending_finding(p.s, kind, detail);
            self.accept(p.t, committed);
            return;
        }
        let kind = if p.is_first {
            FindingKind::GenesisMismatch
        } else {
            FindingKind::BrokenLink
        };
        let (committed, why) = if p.hash_ok {
            (p.recomputed, "the event hashes correctly from the true predecessor: the prev_hash field was altered")
        } else if p.self_consistent {
            (stored_or_re, "the record is consistent with a different predecessor (its predecessor was replaced)")
        } else {
            (
                stored_or_re,
                "and the event does not match its stored hash either",
            )
        };
        let detail = format!(
            "stored prev_hash {} ≠ hash of seq {} {}; {why}",
            short_opt(&p.stored_prev),
            self.stored(p.t - 1),
            short(&p.head_before)
        );
        self.pending_finding(p.s, kind, detail);
        self.accept(p.t, committed);
    }

    /// The chain's hash at true seq `t` is `h`: advance, feed Merkle trees, check checkpoints.
    fn accept(&mut self, t: u64, h: Hash32) {
        self.head = h;
        self.resolved_seq = t;
        if t < self.next_mark && self.active.is_empty() {
            return;
        }
        if self.trees.contains_key(&t) {
            self.active.push(t);
        }
        if !self.active.is_empty() {
            let leaf = leaf_hash(&h);
            for fs in &self.active {
                if let Some(rt) = self.trees.get_mut(fs) {
                    if !rt.broken && rt.tree.len() == t - fs {
                        rt.tree.push_leaf_hash(leaf);
                    } else {
                        rt.broken = true;
                    }
                }
            }
        }
        if let Some(list) = self.cps.get(&t) {
            let mut problems = Vec::new();
            let mut matched = false;
            for c in list {
                let root = self
                    .trees
                    .get(&c.first_seq)
                    .filter(|rt| !rt.broken && rt.tree.len() == t - c.first_seq + 1);
                let head_ok = c.head == h;
                let root_ok = root.is_none_or(|rt| rt.tree.root() == c.root);
                if head_ok && root_ok {
                    matched = true;
                } else {
                    problems.push(format!(
                        "checkpoint (key {}, seq {}..={t}) signs {} {}, recomputed {}",
                        c.key_id,
                        c.first_seq,
                        if head_ok { "Merkle root" } else { "head" },
                        short(if head_ok { &c.root } else { &c.head }),
                        if head_ok {
                            root.map_or_else(String::new, |rt| short(&rt.tree.root()))
                        } else {
                            short(&h)
                        }
                    ));
                }
            }
            if matched && problems.is_empty() {
                self.sealed_through = Some(t);
            }
            let label = self.stored(t);
            for d in problems {
                self.finding(label, FindingKind::CheckpointMismatch, None, d);
            }
        }
        let trees = &mut self.trees;
        self.active.retain(|fs| {
            let keep = trees.get(fs).is_some_and(|rt| rt.last_seq > t);
            if !keep {
                trees.remove(fs);
            }
            keep
        });
        if t >= self.next_mark {
            self.next_mark = self.mark_from(t.saturating_add(1));
        }
    }

    /// End of the store's records: judge the last record, check the tail, and report.
    pub fn finish(mut self) -> PartitionReport {
        while !self.buffer.is_empty() {
            self.pop_buffered();
            self.drain();
        }
        if let Some(p) = self.pending.take() {
            self.resolve(p, None);
        }
        let last = self.resolved_seq;
        let target = match (self.latest_valid_cp, self.opts.expected_last_seq) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        if let Some(target) = target.filter(|&t| t > last) {
            let a = self.stored(last + 1);
            let why = if self.latest_valid_cp == Some(target) {
                "a valid signed checkpoint covers seq"
            } else {
                "the range is expected to end at seq"
            };
            self.finding(
                a,
                FindingKind::TruncatedTail,
                None,
                format!(
                    "the store ends at seq {} but {why} {target}",
                    self.stored(last)
                ),
            );
        }
        let ok =
            !self.dropped_errors && !self.findings.iter().any(|f| f.severity == Severity::Error);
        PartitionReport {
            partition: self.partition_i32,
            first_seq: self.first_seq,
            last_seq: self.last_seq,
            events: self.events,
            head_seq: self.stored(self.resolved_seq),
            head: hex::encode(self.head),
            sealed_through: self.sealed_through.map(|s| self.stored(s)),
            findings: self.findings,
            findings_dropped: self.dropped,
            ok,
        }
    }
}

/// Verify one partition's records (store order) against its checkpoints.
pub fn verify_partition<'a, I>(
    partition: u32,
    keys: &KeySet,
    checkpoints: &[Checkpoint],
    opts: VerifyOptions,
    records: I,
) -> PartitionReport
where
    I: IntoIterator<Item = StoredRecord<'a>>,
{
    let mut v = PartitionVerifier::new(partition, keys, checkpoints, opts);
    for r in records {
        v.push(&r);
    }
    v.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chain::ChainHead;
    use crate::event::ChainedEvent;
    use crate::testing::sample_event;

    #[test]
    fn archive_finding_kinds_have_stable_names_and_severities() {
        let name = |k: FindingKind| serde_json::to_value(k).unwrap();
        assert_eq!(name(FindingKind::SegmentReplaced), "segment_replaced");
        assert_eq!(
            name(FindingKind::SegmentWithoutManifest),
            "segment_without_manifest"
        );
        assert_eq!(name(FindingKind::MalformedManifest), "malformed_manifest");
        assert_eq!(FindingKind::SegmentReplaced.severity(), Severity::Error);
        assert_eq!(FindingKind::MalformedManifest.severity(), Severity::Error);
        assert_eq!(
            FindingKind::SegmentWithoutManifest.severity(),
            Severity::Warning
        );
        assert_eq!(FindingKind::Fork.severity(), Severity::Error);
    }

    /// End to end with real events: chain with the canonical Avro bytes, rebuild records the way
    /// a store would hand them back, verify; then alter one stored field.
    #[test]
    fn real_events_verify_and_a_changed_field_is_named() {
        let mut head = ChainHead::genesis(2);
        let mut buf = Vec::new();
        let chained: Vec<ChainedEvent> = (0..5)
            .map(|i| {
                let mut ev = sample_event();
                ev.event_id = format!("evt-{i}");
                let l = head.next_event(&ev, &mut buf).unwrap();
                ChainedEvent {
                    chain_partition: 2,
                    seq: l.seq as i64,
                    prev_hash: l.prev_hash.to_vec(),
                    hash: l.hash.to_vec(),
                    canonical_version: crate::avro::CANONICAL_VERSION,
                    source_topic: "audit.enriched".into(),
                    source_partition: 2,
                    source_offset: i,
                    event: ev,
                }
            })
            .collect();
        let verify = |evs: &[ChainedEvent]| {
            let recs: Vec<OwnedRecord> = evs
                .iter()
                .map(|c| OwnedRecord::from_chained(c).unwrap())
                .collect();
            verify_partition(
                2,
                &KeySet::default(),
                &[],
                VerifyOptions::default(),
                recs.iter().map(OwnedRecord::as_stored),
            )
        };
        let r = verify(&chained);
        assert!(r.ok && r.findings.is_empty(), "{:?}", r.findings);
        assert_eq!(r.head, hex::encode(head.head));

        let mut tampered = chained.clone();
        tampered[2].event.actor.id = "someone-else".into();
        let r = verify(&tampered);
        let got: Vec<_> = r.findings.iter().map(|f| (f.kind, f.seq)).collect();
        assert_eq!(got, vec![(FindingKind::ModifiedEvent, 3)]);
        assert_eq!(r.findings[0].event_id.as_deref(), Some("evt-2"));
    }
}
