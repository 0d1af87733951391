//! Checkpoints waiting for the segments they cover.
//!
//! A checkpoint of chain partition `p` at seq `s` is archived only once the archive holds
//! `p`'s segments up to `s` (archived `last_seq >= s`). Stored earlier, an offline verifier
//! of the archive would see a signed head beyond the archived events: a false truncation
//! finding. The chainer publishes checkpoints right after the events they cover, and this sink
//! reads the small checkpoints topic far ahead of the segments it is still filling, so
//! without the wait that is the normal case, not a race.
//!
//! Waiting checkpoints are kept in memory, per checkpoints-topic partition, and the input
//! offset of that partition is stored only up to the oldest one still waiting: after a
//! restart or a rebalance they are read again from the topic, so none is lost. Checkpoints of
//! different chain partitions do not wait for each other.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Instant;

use schemas::Checkpoint;

#[derive(Debug)]
struct Waiting {
    checkpoint: Checkpoint,
    since: Instant,
}

#[derive(Debug)]
struct Part {
    epoch: u64,
    /// Offset → checkpoint, for those not archived yet.
    waiting: BTreeMap<i64, Waiting>,
    /// Highest offset read + 1.
    next: Option<i64>,
    /// The last offset handed out by [`PendingCheckpoints::commit_points`].
    committed: Option<i64>,
}

/// The checkpoints read and not yet archived, for every checkpoints-topic partition.
#[derive(Debug, Default)]
pub struct PendingCheckpoints {
    parts: HashMap<i32, Part>,
}

/// A checkpoint that can be archived now.
#[derive(Debug, Clone, PartialEq)]
pub struct Ready {
    /// Its checkpoints-topic partition and offset (for [`PendingCheckpoints::done`]).
    pub partition: i32,
    pub offset: i64,
    pub checkpoint: Checkpoint,
}

impl PendingCheckpoints {
    fn part(&mut self, partition: i32, epoch: u64) -> &mut Part {
        let part = self.parts.entry(partition).or_insert_with(|| Part {
            epoch,
            waiting: BTreeMap::new(),
            next: None,
            committed: None,
        });
        if part.epoch != epoch {
            // Re-assigned: the consumer restarts from the committed offset, which is at or
            // before the oldest checkpoint still waiting, so everything is read again.
            *part = Part {
                epoch,
                waiting: BTreeMap::new(),
                next: None,
                committed: None,
            };
        }
        part
    }

    /// A record of checkpoints-topic `partition` (assignment `epoch`) at `offset`: a
    /// checkpoint to archive, or `None` for a record that needs nothing more (dead-lettered).
    pub fn offer(
        &mut self,
        partition: i32,
        epoch: u64,
        offset: i64,
        checkpoint: Option<Checkpoint>,
        now: Instant,
    ) {
        let part = self.part(partition, epoch);
        part.next = Some(part.next.map_or(offset + 1, |n| n.max(offset + 1)));
        if let Some(checkpoint) = checkpoint {
            part.waiting.insert(
                offset,
                Waiting {
                    checkpoint,
                    since: now,
                },
            );
        }
    }

    /// The waiting checkpoints whose chain partition is archived up to their seq, by
    /// `archived(chain partition)` (its highest archived `last_seq`, if known).
    pub fn ready(&self, archived: impl Fn(i32) -> Option<i64>) -> Vec<Ready> {
        let mut out = Vec::new();
        for (&partition, part) in &self.parts {
            for (&offset, w) in &part.waiting {
                // A genesis checkpoint (seq 0) covers no record: nothing to wait for.
                if w.checkpoint.seq == 0
                    || archived(w.checkpoint.partition).is_some_and(|s| s >= w.checkpoint.seq)
                {
                    out.push(Ready {
                        partition,
                        offset,
                        checkpoint: w.checkpoint.clone(),
                    });
                }
            }
        }
        out.sort_by_key(|r| (r.partition, r.offset));
        out
    }

    /// The checkpoint at `offset` of `partition` is archived.
    pub fn done(&mut self, partition: i32, offset: i64) {
        if let Some(part) = self.parts.get_mut(&partition) {
            part.waiting.remove(&offset);
        }
    }

    /// Chain partitions with at least one checkpoint waiting.
    pub fn waiting_chains(&self) -> BTreeSet<i32> {
        self.parts
            .values()
            .flat_map(|p| p.waiting.values().map(|w| w.checkpoint.partition))
            .collect()
    }

    /// Number of checkpoints waiting, and the longest wait's start with its (chain partition,
    /// seq).
    pub fn oldest(&self) -> (usize, Option<(Instant, i32, i64)>) {
        let n = self.parts.values().map(|p| p.waiting.len()).sum();
        let oldest = self
            .parts
            .values()
            .flat_map(|p| p.waiting.values())
            .min_by_key(|w| w.since)
            .map(|w| (w.since, w.checkpoint.partition, w.checkpoint.seq));
        (n, oldest)
    }

    /// For each checkpoints-topic partition whose safe commit point advanced since the last
    /// call: (partition, next offset to store). The point is the oldest waiting checkpoint's
    /// offset, or past everything read when none waits.
    pub fn commit_points(&mut self) -> Vec<(i32, i64)> {
        let mut out = Vec::new();
        for (&partition, part) in &mut self.parts {
            let point = match part.waiting.keys().next() {
                Some(&oldest) => Some(oldest),
                None => part.next,
            };
            if let Some(point) = point {
                if part.committed.is_none_or(|c| point > c) {
                    part.committed = Some(point);
                    out.push((partition, point));
                }
            }
        }
        out.sort_unstable();
        out
    }

    /// Forgets the partitions `current(partition, epoch)` says are no longer ours.
    pub fn retain(&mut self, current: impl Fn(i32, u64) -> bool) {
        self.parts.retain(|&p, part| current(p, part.epoch));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cp(partition: i32, seq: i64) -> Checkpoint {
        Checkpoint {
            chain_id: "c".into(),
            partition,
            first_seq: 1,
            seq,
            head_hash: vec![seq as u8; 32],
            merkle_root: vec![0; 32],
            time_us: 0,
            partition_count: 0,
            tree_root: Vec::new(),
            key_id: "k".into(),
            signature: vec![0; 64],
        }
    }

    #[test]
    fn a_genesis_checkpoint_waits_for_nothing() {
        let mut p = PendingCheckpoints::default();
        p.offer(0, 1, 5, Some(cp(3, 0)), Instant::now());
        // Partition 3 has no archived segment at all.
        let ready = p.ready(|_| None);
        assert_eq!(ready.len(), 1);
        assert_eq!((ready[0].offset, ready[0].checkpoint.seq), (5, 0));
    }

    #[test]
    fn a_checkpoint_waits_for_its_segments_and_holds_back_the_offset() {
        let now = Instant::now();
        let mut p = PendingCheckpoints::default();
        // Checkpoints partition 0: p0@8 (offset 10), p1@3 (11), a dead letter (12), p0@4 (13).
        p.offer(0, 1, 10, Some(cp(0, 8)), now);
        p.offer(0, 1, 11, Some(cp(1, 3)), now);
        p.offer(0, 1, 12, None, now);
        p.offer(0, 1, 13, Some(cp(0, 4)), now);
        assert_eq!(p.commit_points(), vec![(0, 10)]);
        assert_eq!(p.waiting_chains(), BTreeSet::from([0, 1]));

        // p0 archived up to 5, p1 unknown: only p0@4 is ready; the offset stays at 10.
        let archived = |c: i32| (c == 0).then_some(5);
        let ready = p.ready(archived);
        assert_eq!(ready.len(), 1);
        assert_eq!((ready[0].offset, ready[0].checkpoint.seq), (13, 4));
        p.done(0, 13);
        assert!(
            p.commit_points().is_empty(),
            "10 is still the oldest waiting"
        );

        // p0 reaches 8: p0@8 goes, the point moves to p1@3's offset.
        let ready = p.ready(|c| (c == 0).then_some(8));
        assert_eq!(ready.iter().map(|r| r.offset).collect::<Vec<_>>(), vec![10]);
        p.done(0, 10);
        assert_eq!(p.commit_points(), vec![(0, 11)]);
        assert_eq!(p.oldest().0, 1);

        // p1 reaches 3: nothing waits, the point is past everything read.
        let ready = p.ready(|c| Some(if c == 1 { 3 } else { 8 }));
        assert_eq!(ready.len(), 1);
        p.done(0, 11);
        assert_eq!(p.commit_points(), vec![(0, 14)]);
        assert!(p.commit_points().is_empty(), "only advances are reported");
        assert!(p.waiting_chains().is_empty());
    }

    #[test]
    fn a_new_epoch_starts_over_and_revoked_partitions_are_forgotten() {
        let now = Instant::now();
        let mut p = PendingCheckpoints::default();
        p.offer(0, 1, 10, Some(cp(0, 8)), now);
        p.offer(1, 1, 3, Some(cp(1, 8)), now);
        assert_eq!(p.commit_points(), vec![(0, 10), (1, 3)]);
        // Partition 0 re-assigned: re-read from the committed offset (10).
        p.offer(0, 2, 10, Some(cp(0, 8)), now);
        assert_eq!(p.oldest().0, 2);
        assert_eq!(p.commit_points(), vec![(0, 10)]);
        p.retain(|q, _| q == 0);
        assert_eq!(p.waiting_chains(), BTreeSet::from([0]));
        assert!(p.ready(|_| Some(7)).is_empty());
        assert_eq!(p.ready(|_| Some(8)).len(), 1);
    }
}
