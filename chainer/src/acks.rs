//! In-order acknowledgement of one partition's inputs.
//!
//! Each input offset taken by the state machine is queued with the link it produced (if any).
//! Acknowledgements (chained record or dead letter delivered) may be observed out of order; the
//! queue releases only its fully acknowledged prefix, which gives both the next input offset to
//! store and the links, in seq order, that checkpoints may now cover.

use std::collections::VecDeque;

use integrity::chain::Hash32;

#[derive(Debug, Clone, Copy)]
struct Entry {
    offset: i64,
    link: Option<(u64, Hash32)>,
    done: bool,
}

#[derive(Debug, Default)]
pub struct AckQueue {
    entries: VecDeque<Entry>,
}

/// What an acknowledgement released.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Released {
    /// Next input offset to store, if the prefix advanced.
    pub next_offset: Option<i64>,
    /// Links now durable, in seq order.
    pub links: Vec<(u64, Hash32)>,
    /// The input offset each of `links` was chained from (same order).
    pub link_offsets: Vec<i64>,
}

impl AckQueue {
    /// Queues `offset` (offsets must be pushed in increasing order). `done` for inputs that
    /// need no delivery (duplicates, already-chained records).
    pub fn push(&mut self, offset: i64, link: Option<(u64, Hash32)>, done: bool) {
        self.entries.push_back(Entry { offset, link, done });
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Marks `offset` acknowledged (unknown offsets are ignored).
    pub fn ack(&mut self, offset: i64) {
        let i = self.entries.partition_point(|e| e.offset < offset);
        if let Some(e) = self.entries.get_mut(i).filter(|e| e.offset == offset) {
            e.done = true;
        }
    }

    /// Pops the acknowledged prefix.
    pub fn release(&mut self) -> Released {
        let mut out = Released::default();
        while let Some(e) = self.entries.front().filter(|e| e.done).copied() {
            self.entries.pop_front();
            out.next_offset = Some(e.offset + 1);
            if let Some(l) = e.link {
                out.links.push(l);
                out.link_offsets.push(e.offset);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn releases_only_the_acknowledged_prefix_in_order() {
        let mut q = AckQueue::default();
        q.push(10, Some((1, [1; 32])), false);
        q.push(11, None, true); // duplicate: done at once
        q.push(12, Some((2, [2; 32])), false);
        q.push(14, Some((3, [3; 32])), false); // 13 was a hole in the log
        q.ack(12);
        assert_eq!(q.release(), Released::default(), "10 still in flight");
        q.ack(10);
        let r = q.release();
        assert_eq!(r.next_offset, Some(13));
        assert_eq!(r.links, vec![(1, [1; 32]), (2, [2; 32])]);
        assert_eq!(r.link_offsets.len(), 2);
        q.ack(99); // unknown: ignored
        q.ack(14);
        assert_eq!(q.release().next_offset, Some(15));
        assert!(q.is_empty());
    }
}
