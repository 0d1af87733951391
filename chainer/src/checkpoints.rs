//! Checkpoint ranges: the link hashes acknowledged since the partition's previous checkpoint,
//! folded into an RFC 6962 tree so that a checkpoint signs `(first_seq..=seq, head, root)` and
//! any event of the range can be proven with O(log n) hashes.
//!
//! Pure: the worker feeds hashes in seq order only once the broker acknowledged their records,
//! so a checkpoint never covers a record that is not durable.

use schemas::chain::Hash32;
use schemas::checkpoint::{sign, CheckpointError, CheckpointFields, SigningKey};
use schemas::merkle::MerkleBuilder;
use schemas::Checkpoint;

/// The open range of one partition.
#[derive(Debug, Clone)]
pub struct CheckpointRange {
    partition: u32,
    first_seq: u64,
    tree: MerkleBuilder,
    last: Option<(u64, Hash32)>,
}

impl CheckpointRange {
    /// An empty range whose first leaf will be `first_seq`.
    pub fn starting_at(partition: u32, first_seq: u64) -> Self {
        Self {
            partition,
            first_seq: first_seq.max(1),
            tree: MerkleBuilder::new(),
            last: None,
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
        let want = self.first_seq + self.tree.len();
        if seq != want {
            tracing::error!(
                partition = self.partition,
                seq,
                want,
                "non-contiguous link in checkpoint range; restarting the range"
            );
            *self = Self::starting_at(self.partition, seq);
        }
        self.tree.push(&hash);
        self.last = Some((seq, hash));
    }

    /// Closes the range (if it holds anything) into checkpoint fields and opens the next one.
    pub fn take(&mut self, chain_id: &str, time_us: i64) -> Option<CheckpointFields> {
        let (seq, head_hash) = self.last?;
        let fields = CheckpointFields {
            chain_id: chain_id.to_owned(),
            partition: self.partition,
            first_seq: self.first_seq,
            seq,
            head_hash,
            merkle_root: self.tree.root(),
            time_us,
        };
        *self = Self::starting_at(self.partition, seq + 1);
        Some(fields)
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
}

/// Decides where the range resumes. `tail` holds the last link hashes of the chain in seq order
/// (ending at `head_seq`); `last_cp` is the latest checkpoint of this partition found on the
/// checkpoints topic, as `(seq, head_hash)`.
///
/// A checkpoint beyond the chain's head, or one whose head disagrees with the chain, means the
/// chained topic lost records or was rewritten: continuing would fork the chain, so that is an
/// error for the operator.
pub fn range_start(
    head_seq: u64,
    tail: &[(u64, Hash32)],
    last_cp: Option<(u64, Hash32)>,
) -> Result<RangeStart, String> {
    let covered_through = match last_cp {
        Some((cp_seq, cp_hash)) => {
            if cp_seq > head_seq {
                return Err(format!(
                    "a signed checkpoint covers seq {cp_seq} but the chain ends at seq {head_seq}: \
                     records were lost from the chained topic; refusing to continue (it would fork)"
                ));
            }
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
        });
    }
    match tail.iter().position(|(s, _)| *s == want) {
        // The tail is contiguous from there (the tail reader keeps only contiguous links).
        Some(i) if tail.last().is_some_and(|(s, _)| *s == head_seq) => Ok(RangeStart {
            first_seq: want,
            preload: tail[i..].to_vec(),
            uncovered: None,
        }),
        _ => Ok(RangeStart {
            first_seq: head_seq + 1,
            preload: Vec::new(),
            uncovered: Some((want, head_seq)),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use schemas::merkle;

    fn h(i: u64) -> Hash32 {
        let mut x = [0u8; 32];
        x[..8].copy_from_slice(&i.to_be_bytes());
        x
    }

    #[test]
    fn range_root_is_the_merkle_root_of_its_link_hashes() {
        let mut r = CheckpointRange::starting_at(2, 5);
        assert!(r.take("c", 0).is_none());
        for s in 5..=11 {
            r.push(s, h(s));
        }
        let f = r.take("c", 42).unwrap();
        assert_eq!((f.first_seq, f.seq, f.partition, f.time_us), (5, 11, 2, 42));
        assert_eq!(f.head_hash, h(11));
        let leaves: Vec<Hash32> = (5..=11).map(h).collect();
        assert_eq!(f.merkle_root, merkle::root(&leaves));
        assert_eq!(r.first_seq(), 12);
        assert!(r.is_empty());
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
    fn range_start_refuses_truncated_or_rewritten_chains() {
        let tail: Vec<_> = (90..=100).map(|s| (s, h(s))).collect();
        assert!(range_start(100, &tail, Some((120, h(120))))
            .unwrap_err()
            .contains("lost"));
        assert!(range_start(100, &tail, Some((95, h(7))))
            .unwrap_err()
            .contains("rewritten"));
    }
}
