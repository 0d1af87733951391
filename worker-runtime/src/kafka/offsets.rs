//! In-order offset bookkeeping.
//!
//! Records of one partition are processed concurrently and their outputs acknowledged out of
//! order. An input offset may be stored (and so committed) only when it *and every offset before
//! it* is durable downstream; otherwise a crash after committing offset 10 while offset 7 was
//! still in flight would lose offset 7. The tracker keeps the set of in-flight offsets per
//! partition and yields the next offset to store — the lowest still in flight, or one past the
//! highest done — whenever that point advances.
//!
//! Each partition also carries the assignment epoch it was begun under: after a revoke and a
//! re-assignment, completions from the old assignment are ignored (their partition may now be
//! processed elsewhere, and their offsets would be stale).

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

/// (topic, partition). The topic's name is shared: a record's completion carries it, and a
/// clone per record must not copy the name.
pub type TopicPartition = (Arc<str>, i32);

#[derive(Debug, Default)]
struct PartitionOffsets {
    epoch: u64,
    in_flight: BTreeSet<i64>,
    /// Highest offset completed in this epoch.
    highest_done: Option<i64>,
    /// Last value handed out for storing (the next offset to consume).
    stored: Option<i64>,
}

#[derive(Debug, Default)]
pub struct OffsetTracker {
    partitions: HashMap<TopicPartition, PartitionOffsets>,
}

impl OffsetTracker {
    pub fn new() -> Self {
        Self::default()
    }

    /// Marks `offset` as in flight. Offsets of a partition must be begun in increasing order
    /// (the order the consumer delivers them). A new `epoch` resets the partition.
    pub fn begin(&mut self, tp: &TopicPartition, offset: i64, epoch: u64) {
        // A clone of `tp` shares the topic's name (no copy per record).
        let p = self
            .partitions
            .entry(tp.clone())
            .or_insert_with(|| PartitionOffsets {
                epoch,
                stored: Some(offset),
                ..Default::default()
            });
        if p.epoch != epoch {
            // Nothing is known below the first offset of an assignment: the consumer's
            // position there is already what would be stored.
            *p = PartitionOffsets {
                epoch,
                stored: Some(offset),
                ..Default::default()
            };
        }
        p.in_flight.insert(offset);
    }

    /// Marks `offset` durable downstream. Returns the next offset to store for the partition if
    /// the commit point advanced.
    pub fn complete(&mut self, tp: &TopicPartition, offset: i64, epoch: u64) -> Option<i64> {
        let p = self.partitions.get_mut(tp)?;
        if p.epoch != epoch || !p.in_flight.remove(&offset) {
            return None;
        }
        p.highest_done = Some(p.highest_done.map_or(offset, |h| h.max(offset)));
        let next = match p.in_flight.first() {
            Some(&lowest) => lowest,
            None => p.highest_done? + 1,
        };
        if p.stored.is_some_and(|s| s >= next) {
            return None;
        }
        p.stored = Some(next);
        Some(next)
    }

    /// Number of offsets in flight across all partitions.
    pub fn in_flight(&self) -> usize {
        self.partitions.values().map(|p| p.in_flight.len()).sum()
    }

    /// Forgets a partition (after revoke).
    pub fn forget(&mut self, tp: &TopicPartition) {
        self.partitions.remove(tp);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn tp() -> TopicPartition {
        (Arc::from("t"), 0)
    }

    #[test]
    fn stores_only_contiguous_prefix() {
        let mut t = OffsetTracker::new();
        for o in 5..10 {
            t.begin(&tp(), o, 1);
        }
        assert_eq!(t.complete(&tp(), 7, 1), None, "5 and 6 still in flight");
        assert_eq!(t.complete(&tp(), 5, 1), Some(6));
        assert_eq!(t.complete(&tp(), 6, 1), Some(8), "7 done already");
        assert_eq!(t.complete(&tp(), 9, 1), None);
        assert_eq!(t.complete(&tp(), 8, 1), Some(10));
        assert_eq!(t.in_flight(), 0);
    }

    #[test]
    fn completions_from_an_old_epoch_are_ignored() {
        let mut t = OffsetTracker::new();
        t.begin(&tp(), 1, 1);
        t.begin(&tp(), 100, 2); // re-assigned: reset
        assert_eq!(t.complete(&tp(), 1, 1), None);
        assert_eq!(t.complete(&tp(), 100, 2), Some(101));
    }

    proptest! {
        /// Whatever order completions arrive in, every stored offset is one past a fully
        /// completed prefix, stored offsets only grow, and the last one covers everything.
        #[test]
        fn stored_offset_never_passes_an_incomplete_record(
            start in 0i64..1000,
            order in Just((0..40usize).collect::<Vec<_>>()).prop_shuffle(),
        ) {
            let mut t = OffsetTracker::new();
            let n = order.len() as i64;
            for o in start..start + n {
                t.begin(&tp(), o, 7);
            }
            let mut done = std::collections::HashSet::new();
            let mut last = None;
            for i in order {
                let o = start + i as i64;
                done.insert(o);
                if let Some(next) = t.complete(&tp(), o, 7) {
                    for x in start..next {
                        prop_assert!(done.contains(&x), "stored {next} but {x} not done");
                    }
                    prop_assert!(last.is_none_or(|l| next > l));
                    last = Some(next);
                }
            }
            prop_assert_eq!(last, Some(start + n));
        }
    }
}
