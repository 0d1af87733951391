//! Checkpoints inside verification: each is checked against the key set up front, then against
//! the recomputed head (and Merkle root) when the chain reaches its seq.

use crate::chain::Hash32;
use crate::checkpoint::{verify_signed, CheckpointError, KeySet, SignedCheckpoint};
use crate::merkle::{leaf_hash, MerkleBuilder};
use schemas::checkpoint_record::Checkpoint;

use super::finding::{short, FindingKind};
use super::partition::PartitionVerifier;

/// A checkpoint that passed the key set, waiting for the chain to reach its seq.
#[derive(Debug, Clone)]
pub(super) struct CpCheck {
    pub(super) first_seq: u64,
    pub(super) head: Hash32,
    pub(super) root: Hash32,
    /// v3: the signed root of the partition's whole tree at this seq.
    pub(super) tree_root: Option<Hash32>,
    pub(super) key_id: String,
}

/// A valid checkpoint's range and signed time (coverage and backdating checks).
#[derive(Debug, Clone)]
pub(super) struct CpTime {
    pub(super) first_seq: u64,
    pub(super) time_us: i64,
    pub(super) key_id: String,
}

/// The Merkle tree over one checkpoint range's link hashes, fed as the chain is accepted;
/// `broken` once a leaf is missing (the root can then not be recomputed).
#[derive(Debug, Clone)]
pub(super) struct RangeTree {
    pub(super) last_seq: u64,
    pub(super) tree: MerkleBuilder,
    pub(super) broken: bool,
}

impl PartitionVerifier {
    pub(super) fn add_checkpoint(&mut self, rec: &Checkpoint, keys: &KeySet) {
        let valid = self.check_checkpoint(rec, keys);
        if let (Ok(first), Ok(seq)) = (u64::try_from(rec.first_seq), u64::try_from(rec.seq)) {
            // An invalid checkpoint is a finding of its own, and the range it claims proves
            // nothing: it is taken to close any gap before it, so that one tampered checkpoint
            // is one finding, not also a missing one.
            let first = if valid { first.min(seq) } else { 0 };
            let e = self.cp_cover.entry(seq).or_insert(first);
            *e = (*e).min(first);
        }
    }

    /// Check one checkpoint against the key set and this verification; `true` if valid (it is
    /// then registered for the head, Merkle root and time checks).
    fn check_checkpoint(&mut self, rec: &Checkpoint, keys: &KeySet) -> bool {
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
                return false;
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
            return false;
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
            return false;
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
                return false;
            }
        }
        self.cp_chain_ids.insert(f.chain_id.clone());
        let start = self.opts.start;
        if f.seq <= start.seq {
            // Before this store's range: only the boundary one can be checked. A genesis
            // checkpoint from the start of the chain names the rule's genesis, which `validate`
            // already tied to its (checked) chain id and partition.
            let from_genesis = start.seq == 0 && start.prev_hash == crate::chain::GENESIS;
            if f.seq == start.seq && f.head_hash != start.prev_hash && !from_genesis {
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
                return false;
            }
            return true;
        }
        self.cp_times.entry(f.seq).or_default().push(CpTime {
            first_seq: f.first_seq,
            time_us: f.time_us,
            key_id: cp.key_id.clone(),
        });
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
            tree_root: f.tree_root,
            key_id: cp.key_id.clone(),
        });
        true
    }

    /// At the end of the records: the valid checkpoints must cover contiguous ranges from the
    /// start of the store (a gap is a deleted checkpoint: `MissingCheckpoint`), and each must
    /// be signed no earlier than the newest receive time it covers and than every earlier
    /// checkpoint (`CheckpointBackdated`). Neither can be faked by the signer afterwards: the
    /// receive times are inside the chained events, and the earlier checkpoints are signed.
    /// So a retired (or leaked old) key cannot seal new records by setting the time back into
    /// its validity window.
    pub(super) fn check_checkpoint_coverage_and_times(&mut self) {
        let skew = self.opts.clock_skew_us.max(0);
        let label = |s: u64| i64::try_from(s).unwrap_or(i64::MAX);
        let cover = std::mem::take(&mut self.cp_cover);
        let mut expected = self.opts.start.seq.saturating_add(1);
        for (&seq, &first) in cover.range(expected..) {
            if first > expected {
                let n = first - expected;
                self.finding(
                    label(expected),
                    FindingKind::MissingCheckpoint,
                    None,
                    format!(
                        "no checkpoint covers seq {expected}..={} ({n} seqs): the next checkpoint (seq {seq}) starts at seq {first}; a checkpoint was deleted",
                        first - 1
                    ),
                );
            }
            expected = expected.max(seq.saturating_add(1));
        }
        let cps = std::mem::take(&mut self.cp_times);
        // Newest signed time among the checkpoints of lower seq, and its seq.
        let mut newest: Option<(i64, u64)> = None;
        for (&seq, list) in &cps {
            for c in list {
                if let Some(&r) = self.recv_max.get(&seq) {
                    if c.time_us.saturating_add(skew) < r {
                        self.finding(
                            label(seq),
                            FindingKind::CheckpointBackdated,
                            None,
                            format!(
                                "checkpoint (key {}, seq {}..={seq}) is signed at time_us {}, before receive_time_us {r} of an event it covers",
                                c.key_id, c.first_seq, c.time_us
                            ),
                        );
                    }
                }
                if let Some((t, s)) = newest {
                    if c.time_us.saturating_add(skew) < t {
                        self.finding(
                            label(seq),
                            FindingKind::CheckpointBackdated,
                            None,
                            format!(
                                "checkpoint (key {}, seq {}..={seq}) is signed at time_us {}, before the checkpoint at seq {s} (time_us {t})",
                                c.key_id, c.first_seq, c.time_us
                            ),
                        );
                    }
                }
            }
            if let Some(t) = list.iter().map(|c| c.time_us).max() {
                if newest.is_none_or(|(n, _)| t > n) {
                    newest = Some((t, seq));
                }
            }
        }
    }

    pub(super) fn mark_from(&self, from: u64) -> u64 {
        let a = self.cps.range(from..).next().map(|(k, _)| *k);
        let b = self.trees.range(from..).next().map(|(k, _)| *k);
        match (a, b) {
            (Some(a), Some(b)) => a.min(b),
            (Some(x), None) | (None, Some(x)) => x,
            (None, None) => u64::MAX,
        }
    }

    /// The chain's hash at true seq `t` is `h`: advance, feed Merkle trees, check checkpoints.
    pub(super) fn accept(&mut self, t: u64, h: Hash32) {
        self.head = h;
        self.resolved_seq = t;
        let mut leaf = None;
        if self.opts.check_merkle_roots {
            // The whole tree grows with every accepted link; a hole (reported elsewhere) ends
            // it, since no later root could be recomputed.
            if let Some(w) = self.whole.as_mut() {
                let l = leaf_hash(&h);
                leaf = Some(l);
                if w.size().checked_add(1) != Some(t) || w.append(l).is_err() {
                    self.whole = None;
                }
            }
        }
        if t < self.next_mark && self.active.is_empty() {
            return;
        }
        if self.trees.contains_key(&t) {
            self.active.push(t);
        }
        if !self.active.is_empty() {
            let leaf = leaf.unwrap_or_else(|| leaf_hash(&h));
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
                // The whole tree is known only when verifying from seq 1 with no hole.
                let whole = self.whole.as_ref().filter(|w| w.size() == t);
                let tree_ok = match (c.tree_root, whole) {
                    (Some(signed), Some(w)) => w.root() == signed,
                    _ => true,
                };
                if head_ok && root_ok && !tree_ok {
                    problems.push(format!(
                        "checkpoint (key {}, seq {}..={t}) signs tree root {} for the partition's {t} links, recomputed {}",
                        c.key_id,
                        c.first_seq,
                        short(&c.tree_root.unwrap_or_default()),
                        whole.map_or_else(String::new, |w| short(&w.root())),
                    ));
                } else if head_ok && root_ok {
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
}
