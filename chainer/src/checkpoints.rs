//! Checkpoint ranges: the link hashes acknowledged since the partition's previous checkpoint,
//! folded into an RFC 6962 tree so that a checkpoint signs `(first_seq..=seq, head, root)` and
//! any event of the range can be proven with O(log n) hashes.
//!
//! Each range also carries the partition's whole tree (an O(log n) [`CompactRange`] of every
//! link hash from seq 1), so every checkpoint signs the root of the whole partition so far
//! (v3, a C2SP tlog-checkpoint: consecutive checkpoints are then provably consistent trees).
//! Recovery restores the whole tree from the latest checkpoint record's
//! [`HEADER_TREE_PEAKS`] (checked against its signed root) plus the chained tail.
//!
//! Pure: the worker feeds hashes in seq order only once the broker acknowledged their records,
//! so a checkpoint never covers a record that is not durable.

use integrity::chain::{ChainRule, Hash32};
use integrity::checkpoint::{sign, CheckpointError, CheckpointFields, SigningKey};
use integrity::merkle::{leaf_hash, MerkleBuilder};
use integrity::tree::CompactRange;
use schemas::Checkpoint;

/// Header of a checkpoint record: the peaks of the partition's whole tree at the checkpoint's
/// seq (the roots of its perfect subtrees, largest first, 32 bytes each, concatenated). Not
/// signed and not needed to verify: recovery checks them against the signed `tree_root` and
/// resumes the whole tree from them instead of re-reading the partition from seq 1.
pub const HEADER_TREE_PEAKS: &str = "audit.tree_peaks";

/// Header of a checkpoint record: the link rule of the partition's chain (`1` or `2`, see
/// `integrity::chain::ChainRule`). Not signed: recovery reads it only when the chained partition
/// was emptied (retention) and the chain must resume from the checkpoint alone, under the rule
/// its records used (a wrong one would only make every later link fail verification).
pub const HEADER_CHAIN_RULE: &str = "audit.chain_rule";

/// What a checkpoint record carries besides its payload (its headers; see
/// [`HEADER_TREE_PEAKS`], [`HEADER_CHAIN_RULE`] and `task::HEADER_NEXT_SOURCE_OFFSET`).
#[derive(Debug, Clone, Copy)]
pub struct CheckpointMeta<'a> {
    /// The input offset after the last link the checkpoint covers.
    pub next_source: Option<i64>,
    pub tree_peaks: Option<&'a [u8]>,
    pub chain_rule: ChainRule,
}

impl CheckpointMeta<'_> {
    /// The record headers (name, value).
    pub fn headers(&self) -> Vec<(String, Vec<u8>)> {
        let mut h = vec![(
            HEADER_CHAIN_RULE.to_owned(),
            self.chain_rule.number().to_string().into_bytes(),
        )];
        if let Some(next) = self.next_source {
            h.push((
                crate::task::HEADER_NEXT_SOURCE_OFFSET.to_owned(),
                next.to_string().into_bytes(),
            ));
        }
        if let Some(peaks) = self.tree_peaks {
            h.push((HEADER_TREE_PEAKS.to_owned(), peaks.to_vec()));
        }
        h
    }
}

/// The [`HEADER_TREE_PEAKS`] value of a tree.
pub fn encode_peaks(tree: &CompactRange) -> Vec<u8> {
    tree.peaks().concat()
}

/// The whole tree of a checkpoint from its [`HEADER_TREE_PEAKS`] value, only if the peaks fit
/// its size and fold to its signed `tree_root`.
pub fn decode_peaks(fields: &CheckpointFields, peaks: &[u8]) -> Option<CompactRange> {
    let root = fields.tree_root?;
    if peaks.len() % 32 != 0 {
        return None;
    }
    let list = peaks
        .chunks_exact(32)
        .map(|c| <Hash32>::try_from(c).ok())
        .collect::<Option<Vec<_>>>()?;
    let tree = CompactRange::from_parts(fields.seq, list).ok()?;
    (tree.root() == root).then_some(tree)
}

/// Checkpoints of chain partition `p` go to one fixed partition of the checkpoints topic, so
/// recovery reads exactly one partition's tail. (Same rule as `worker::checkpoint_partition`,
/// kept here so that recovery does not depend on the worker's module.)
pub fn checkpoint_partition(p: i32, checkpoint_partitions: i32) -> i32 {
    p.rem_euclid(checkpoint_partitions.max(1))
}

/// The open range of one partition.
#[derive(Debug, Clone)]
pub struct CheckpointRange {
    partition: u32,
    first_seq: u64,
    tree: MerkleBuilder,
    /// The partition's whole tree through the last pushed seq (through `first_seq - 1` while
    /// the range is empty); `None` when unknown (recovered without it): checkpoints are then
    /// range-only (no `tree_root`).
    whole: Option<CompactRange>,
    last: Option<(u64, Hash32)>,
    /// The last range signed (by this task or, after recovery, the latest checkpoint found):
    /// what a heartbeat re-signs while the partition is idle.
    signed: Option<CheckpointFields>,
    /// The whole tree's peaks at `signed` (its record's [`HEADER_TREE_PEAKS`]).
    signed_peaks: Option<Vec<u8>>,
    /// The partition holds nothing chained and no checkpoint: the next heartbeat signs its
    /// genesis checkpoint ([`CheckpointFields::genesis`]), published without waiting for the
    /// heartbeat period.
    genesis_due: bool,
    /// The partition chain's link rule (its genesis checkpoint's head and the records'
    /// [`HEADER_CHAIN_RULE`]).
    rule: ChainRule,
}

impl CheckpointRange {
    /// An empty range whose first leaf will be `first_seq`.
    pub fn starting_at(partition: u32, first_seq: u64) -> Self {
        Self {
            partition,
            first_seq: first_seq.max(1),
            tree: MerkleBuilder::new(),
            // At the start of the chain the whole tree is the empty tree; later it comes from
            // recovery ([`Self::set_whole_tree`]).
            whole: (first_seq <= 1).then(CompactRange::new),
            last: None,
            signed: None,
            signed_peaks: None,
            genesis_due: false,
            rule: ChainRule::V1,
        }
    }

    /// The partition chain's link rule (set by recovery; v1 until then).
    pub fn set_rule(&mut self, rule: ChainRule) {
        self.rule = rule;
    }

    pub fn rule(&self) -> ChainRule {
        self.rule
    }

    /// After recovery: the whole tree through `first_seq - 1` (from the latest checkpoint's
    /// peaks). Ignored unless the range is empty and the tree ends right before it.
    pub fn set_whole_tree(&mut self, tree: CompactRange) {
        if self.is_empty()
            && self.last.is_none()
            && tree.size().checked_add(1) == Some(self.first_seq)
        {
            self.whole = Some(tree);
        }
    }

    /// Whether checkpoints of this range sign the whole tree's root (v3).
    pub fn has_whole_tree(&self) -> bool {
        self.whole.is_some()
    }

    /// The [`HEADER_TREE_PEAKS`] of the checkpoint last returned by [`Self::take`] or
    /// [`Self::heartbeat`] (`None` for a range-only one).
    pub fn signed_peaks(&self) -> Option<&[u8]> {
        self.signed_peaks.as_deref()
    }

    /// After recovery of a partition with nothing chained: its genesis checkpoint is due (only
    /// for a range at the very start of the chain with nothing signed).
    pub fn expect_genesis(&mut self, rule: ChainRule) {
        self.rule = rule;
        self.genesis_due =
            self.first_seq == 1 && self.is_empty() && self.last.is_none() && self.signed.is_none();
    }

    /// Whether the genesis checkpoint is still to be signed (see [`Self::expect_genesis`]).
    pub fn genesis_due(&self) -> bool {
        self.genesis_due
    }

    /// After recovery: the latest signed checkpoint ends exactly where this (empty) range
    /// starts, so an idle partition's heartbeats can re-sign it. Anything else is ignored
    /// (the next range's checkpoint comes first).
    pub fn seed_signed(&mut self, fields: CheckpointFields, peaks: Option<Vec<u8>>) {
        if self.is_empty() && self.last.is_none() && fields.seq + 1 == self.first_seq {
            self.signed_peaks = peaks.filter(|_| fields.tree_root.is_some());
            self.signed = Some(fields);
        }
    }

    pub fn first_seq(&self) -> u64 {
        self.first_seq
    }

    /// Leaves not yet covered by a checkpoint.
    pub fn len(&self) -> u64 {
        self.tree.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tree.is_empty()
    }

    /// Appends the link hash of `seq`. The chain is contiguous, so `seq` must be the next one;
    /// if it is not (a bug upstream of here), the range restarts at `seq` rather than sign a
    /// root a verifier could not reproduce.
    pub fn push(&mut self, seq: u64, hash: Hash32) {
        // Links: the range's own checkpoint will attest the partition.
        self.genesis_due = false;
        let want = self.first_seq + self.tree.len();
        if seq != want {
            tracing::error!(
                partition = self.partition,
                seq,
                want,
                "non-contiguous link in checkpoint range; restarting the range"
            );
            let signed = self.signed.take();
            let peaks = self.signed_peaks.take();
            let rule = self.rule;
            // The whole tree cannot skip seqs either: unknown from here (range-only).
            *self = Self::starting_at(self.partition, seq);
            self.rule = rule;
            if seq > 1 {
                self.whole = None;
            }
            // Not re-signed while the range is non-empty anyway; kept for clarity of state.
            self.signed = signed;
            self.signed_peaks = peaks;
        }
        if let Some(w) = self.whole.as_mut() {
            if w.size().checked_add(1) != Some(seq) || w.append(leaf_hash(&hash)).is_err() {
                self.whole = None;
            }
        }
        self.tree.push(&hash);
        self.last = Some((seq, hash));
    }

    /// Closes the range (if it holds anything) into checkpoint fields and opens the next one.
    /// `partition_count` is the signed partition set (0: none, the v1 signing input).
    pub fn take(
        &mut self,
        chain_id: &str,
        time_us: i64,
        partition_count: u32,
    ) -> Option<CheckpointFields> {
        let (seq, head_hash) = self.last?;
        let whole = self.whole.take().filter(|w| w.size() == seq);
        let fields = CheckpointFields {
            chain_id: chain_id.to_owned(),
            partition: self.partition,
            first_seq: self.first_seq,
            seq,
            head_hash,
            merkle_root: self.tree.root(),
            time_us,
            partition_count,
            tree_root: whole.as_ref().map(CompactRange::root),
        };
        let rule = self.rule;
        *self = Self::starting_at(self.partition, seq + 1);
        self.rule = rule;
        self.signed_peaks = whole.as_ref().map(encode_peaks);
        self.whole = whole;
        self.signed = Some(fields.clone());
        Some(fields)
    }

    /// A heartbeat: while nothing new was acknowledged since the last checkpoint, the same
    /// range (`first_seq..=seq`, head, root) signed again at `time_us`, so a verifier can tell
    /// an idle partition from one whose newest records and checkpoints were cut. It covers
    /// only what the last checkpoint covered, so it never signs a record the broker has not
    /// acknowledged. `None` if the range holds links (a real checkpoint is due instead) or
    /// nothing was signed yet. A time not after the last one is moved just past it, so
    /// checkpoint times never go backwards with size.
    ///
    /// While [`Self::genesis_due`], the heartbeat is the genesis checkpoint of `chain_id`
    /// instead (and later heartbeats re-sign it).
    pub fn heartbeat(
        &mut self,
        chain_id: &str,
        time_us: i64,
        partition_count: u32,
    ) -> Option<CheckpointFields> {
        if !self.is_empty() {
            return None;
        }
        if std::mem::take(&mut self.genesis_due) {
            let g = CheckpointFields::genesis_of(
                self.rule,
                chain_id,
                self.partition,
                time_us,
                partition_count,
            );
            self.signed = Some(g.clone());
            self.signed_peaks = Some(Vec::new());
            return Some(g);
        }
        let last = self.signed.as_mut()?;
        last.time_us = time_us.max(last.time_us.saturating_add(1));
        last.partition_count = partition_count;
        Some(last.clone())
    }
}

/// The checkpoint policy and key.
#[derive(Debug)]
pub struct Signer {
    pub key: SigningKey,
    pub chain_id: String,
    /// Checkpoint after this many events…
    pub every_events: u64,
    /// …or this long after the previous checkpoint of the partition, if anything was chained.
    pub interval: std::time::Duration,
    /// An idle partition's last checkpoint is re-signed this long after the previous one
    /// (zero: no heartbeats).
    pub heartbeat: std::time::Duration,
    /// The number of chain partitions (the input topic's partitions, each chained into the
    /// same partition number), signed into every checkpoint; 0 = not signed (v1 checkpoints).
    pub partition_count: u32,
}

impl Signer {
    pub fn sign(&self, fields: &CheckpointFields) -> Result<Checkpoint, CheckpointError> {
        sign(&self.key, fields)
    }
}

/// Where the next checkpoint range of a recovered partition starts, and the link hashes (from
/// the chained tail) it already holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RangeStart {
    pub first_seq: u64,
    pub preload: Vec<(u64, Hash32)>,
    /// Seqs between the last checkpoint and the recovery point that no range will cover,
    /// because their hashes were no longer in the scanned tail.
    pub uncovered: Option<(u64, u64)>,
    /// The latest checkpoint covers this seq, beyond the chain's head: the chained topic lost
    /// records (truncation). The range then restarts after the head, and the operator is told.
    pub checkpoint_ahead: Option<u64>,
}

/// Decides where the range resumes. `tail` holds the last link hashes of the chain in seq order
/// (ending at `head_seq`); `last_cp` is the latest checkpoint of this partition found on the
/// checkpoints topic, as `(seq, head_hash)`.
///
/// A checkpoint whose head disagrees with a record of the tail means the chained topic was
/// rewritten: that is an error (continuing would extend a forged chain). A checkpoint beyond the
/// chain's head means records after the head were lost from the chained topic: the caller has
/// already re-read the tail, so it is reported ([`RangeStart::checkpoint_ahead`]) and the range
/// restarts after the head rather than stopping the worker for good.
pub fn range_start(
    head_seq: u64,
    tail: &[(u64, Hash32)],
    last_cp: Option<(u64, Hash32)>,
) -> Result<RangeStart, String> {
    let covered_through = match last_cp {
        Some((cp_seq, cp_hash)) => {
            if let Some((_, h)) = tail.iter().find(|(s, _)| *s == cp_seq) {
                if *h != cp_hash {
                    return Err(format!(
                        "the signed checkpoint at seq {cp_seq} has head {} but the chain has {}: \
                         the chained topic was rewritten; refusing to continue",
                        hex::encode(cp_hash),
                        hex::encode(h)
                    ));
                }
            }
            if cp_seq > head_seq {
                return Ok(RangeStart {
                    first_seq: head_seq + 1,
                    preload: Vec::new(),
                    uncovered: None,
                    checkpoint_ahead: Some(cp_seq),
                });
            }
            cp_seq
        }
        None => 0,
    };
    let want = covered_through + 1;
    if want > head_seq {
        return Ok(RangeStart {
            first_seq: want,
            preload: Vec::new(),
            uncovered: None,
            checkpoint_ahead: None,
        });
    }
    match tail.iter().position(|(s, _)| *s == want) {
        // The tail is contiguous from there (the tail reader keeps only contiguous links).
        Some(i) if tail.last().is_some_and(|(s, _)| *s == head_seq) => Ok(RangeStart {
            first_seq: want,
            preload: tail[i..].to_vec(),
            uncovered: None,
            checkpoint_ahead: None,
        }),
        _ => Ok(RangeStart {
            first_seq: head_seq + 1,
            preload: Vec::new(),
            uncovered: Some((want, head_seq)),
            checkpoint_ahead: None,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use integrity::merkle;

    fn h(i: u64) -> Hash32 {
        let mut x = [0u8; 32];
        x[..8].copy_from_slice(&i.to_be_bytes());
        x
    }

    #[test]
    fn range_root_is_the_merkle_root_of_its_link_hashes() {
        let mut r = CheckpointRange::starting_at(2, 5);
        assert!(r.take("c", 0, 4).is_none());
        for s in 5..=11 {
            r.push(s, h(s));
        }
        let f = r.take("c", 42, 4).unwrap();
        assert_eq!((f.first_seq, f.seq, f.partition, f.time_us), (5, 11, 2, 42));
        assert_eq!(f.partition_count, 4);
        assert_eq!(f.head_hash, h(11));
        let leaves: Vec<Hash32> = (5..=11).map(h).collect();
        assert_eq!(f.merkle_root, merkle::root(&leaves));
        assert_eq!(r.first_seq(), 12);
        assert!(r.is_empty());
    }

    #[test]
    fn heartbeat_re_signs_the_last_range_only_while_idle() {
        let mut r = CheckpointRange::starting_at(0, 1);
        // Nothing signed yet: no heartbeat.
        assert!(r.heartbeat("c", 10, 2).is_none());
        for s in 1..=3 {
            r.push(s, h(s));
        }
        // Links waiting: a real checkpoint is due, not a heartbeat.
        assert!(r.heartbeat("c", 10, 2).is_none());
        let first = r.take("c", 100, 2).unwrap();
        let hb = r.heartbeat("c", 200, 2).unwrap();
        assert_eq!(
            hb,
            CheckpointFields {
                time_us: 200,
                ..first.clone()
            }
        );
        // A clock that went back still gives a later time than the last signature.
        assert_eq!(r.heartbeat("c", 150, 2).unwrap().time_us, 201);
        // The next range follows the last checkpoint, unchanged by heartbeats.
        r.push(4, h(4));
        assert!(r.heartbeat("c", 300, 2).is_none());
        let next = r.take("c", 300, 2).unwrap();
        assert_eq!((next.first_seq, next.seq), (4, 4));
        assert_eq!(r.heartbeat("c", 400, 2).unwrap().seq, 4);
    }

    #[test]
    fn an_empty_partition_signs_its_genesis_once_then_heartbeats_it() {
        let mut r = CheckpointRange::starting_at(2, 1);
        assert!(!r.genesis_due());
        r.expect_genesis(ChainRule::V1);
        assert!(r.genesis_due());
        let g = r.heartbeat("c", 10, 4).expect("the genesis checkpoint");
        assert_eq!(g, CheckpointFields::genesis("c", 2, 10, 4));
        assert!(!r.genesis_due());
        // Later heartbeats re-sign it; the first real range starts at seq 1.
        assert_eq!(r.heartbeat("c", 20, 4).expect("heartbeat").seq, 0);
        r.push(1, h(1));
        let f = r.take("c", 30, 4).expect("range");
        assert_eq!((f.first_seq, f.seq), (1, 1));

        // Not for a range that does not start the chain, nor once links arrived.
        let mut later = CheckpointRange::starting_at(2, 7);
        later.expect_genesis(ChainRule::V1);
        assert!(!later.genesis_due());
        let mut busy = CheckpointRange::starting_at(2, 1);
        busy.expect_genesis(ChainRule::V1);
        busy.push(1, h(1));
        assert!(!busy.genesis_due());
        assert!(busy.heartbeat("c", 10, 4).is_none());
    }

    #[test]
    fn a_recovered_range_heartbeats_the_latest_checkpoint_it_follows() {
        let mut cp = CheckpointRange::starting_at(1, 5);
        for s in 5..=9 {
            cp.push(s, h(s));
        }
        let last = cp.take("c", 50, 3).unwrap();
        // Recovery: the range starts right after the checkpoint.
        let mut r = CheckpointRange::starting_at(1, 10);
        r.seed_signed(last.clone(), None);
        assert_eq!(
            r.heartbeat("c", 60, 3).unwrap().merkle_root,
            last.merkle_root
        );
        // A checkpoint that does not end where the range starts is not re-signed.
        let mut r = CheckpointRange::starting_at(1, 12);
        r.seed_signed(last, None);
        assert!(r.heartbeat("c", 60, 3).is_none());
    }

    /// Every checkpoint signs the root of the whole partition so far (RFC 9162 over the link
    /// hashes from seq 1), through genesis, count- and time-triggered ranges and heartbeats;
    /// a recovered range resumes the tree from the checkpoint's peaks and signs the same roots
    /// as one that never stopped.
    #[test]
    fn checkpoints_sign_the_whole_tree_and_recovery_resumes_it_from_the_peaks() {
        let whole = |n: u64| {
            let leaves: Vec<Hash32> = (1..=n).map(|s| leaf_hash(&h(s))).collect();
            integrity::tree::root_of(&leaves)
        };
        let mut r = CheckpointRange::starting_at(0, 1);
        r.expect_genesis(ChainRule::V1);
        let g = r.heartbeat("c", 1, 2).unwrap();
        assert_eq!(g.tree_root, Some(whole(0)));
        assert_eq!(r.signed_peaks(), Some(&[][..]));
        let mut signed = Vec::new();
        for s in 1..=13 {
            r.push(s, h(s));
            if s % 5 == 0 || s == 13 {
                signed.push(r.take("c", 10 + s as i64, 2).unwrap());
                let f = signed.last().unwrap();
                assert_eq!(f.tree_root, Some(whole(s)), "seq {s}");
                // The header peaks are the tree at the checkpoint, checked against its root.
                let tree = decode_peaks(f, r.signed_peaks().unwrap()).unwrap();
                assert_eq!((tree.size(), tree.root()), (s, whole(s)));
            }
        }
        // A heartbeat re-signs the same tree.
        let hb = r.heartbeat("c", 99, 2).unwrap();
        assert_eq!(hb.tree_root, Some(whole(13)));

        // Recovery after the checkpoint at seq 10, with seqs 11..=12 in the tail.
        let at10 = &signed[1];
        assert_eq!(at10.seq, 10);
        let mut fresh = CheckpointRange::starting_at(0, 1);
        for s in 1..=10 {
            fresh.push(s, h(s));
        }
        fresh.take("c", 20, 2).unwrap();
        let peaks = fresh.signed_peaks().unwrap().to_vec();
        let mut back = CheckpointRange::starting_at(0, 11);
        assert!(!back.has_whole_tree());
        back.set_whole_tree(decode_peaks(at10, &peaks).unwrap());
        assert!(back.has_whole_tree());
        for s in 11..=12 {
            back.push(s, h(s));
        }
        assert_eq!(back.take("c", 30, 2).unwrap().tree_root, Some(whole(12)));

        // Peaks that do not fold to the signed root, or of the wrong size, are refused.
        let mut wrong = peaks.clone();
        wrong[0] ^= 1;
        assert!(decode_peaks(at10, &wrong).is_none());
        assert!(decode_peaks(at10, &peaks[..32]).is_none());
        assert!(decode_peaks(at10, &peaks[..31]).is_none());
        // A tree that does not end right before the range is not taken; without it the range
        // signs range-only checkpoints.
        let mut off = CheckpointRange::starting_at(0, 12);
        off.set_whole_tree(decode_peaks(at10, &peaks).unwrap());
        assert!(!off.has_whole_tree());
        off.push(12, h(12));
        let f = off.take("c", 40, 2).unwrap();
        assert_eq!(f.tree_root, None);
        assert!(off.signed_peaks().is_none());
    }

    #[test]
    fn range_start_continues_after_the_last_checkpoint() {
        let tail: Vec<_> = (90..=100).map(|s| (s, h(s))).collect();
        let s = range_start(100, &tail, Some((95, h(95)))).unwrap();
        assert_eq!(s.first_seq, 96);
        assert_eq!(s.preload, (96..=100).map(|s| (s, h(s))).collect::<Vec<_>>());
        // Checkpoint at the head: nothing to preload.
        let s = range_start(100, &tail, Some((100, h(100)))).unwrap();
        assert_eq!((s.first_seq, s.preload.len()), (101, 0));
        // No checkpoint and the whole chain is in the tail: the range starts at 1.
        let all: Vec<_> = (1..=10).map(|s| (s, h(s))).collect();
        assert_eq!(range_start(10, &all, None).unwrap().first_seq, 1);
        // Last checkpoint older than the tail: the gap is reported, the range restarts.
        let s = range_start(100, &tail, Some((50, h(50)))).unwrap();
        assert_eq!(s.first_seq, 101);
        assert_eq!(s.uncovered, Some((51, 100)));
        // Empty chain.
        assert_eq!(range_start(0, &[], None).unwrap().first_seq, 1);
    }

    #[test]
    fn range_start_reports_truncation_and_refuses_rewritten_chains() {
        let tail: Vec<_> = (90..=100).map(|s| (s, h(s))).collect();
        // Truncated: the checkpoint is ahead of the head; resume after the head, reported.
        let s = range_start(100, &tail, Some((120, h(120)))).unwrap();
        assert_eq!((s.first_seq, s.checkpoint_ahead), (101, Some(120)));
        assert!(s.preload.is_empty());
        assert!(range_start(100, &tail, Some((95, h(7))))
            .unwrap_err()
            .contains("rewritten"));
    }
}
