//! Per-partition buffering into segments: pure (no I/O), so the closing rules are unit-tested.
//!
//! A segment closes when it reaches `max_events` or `max_bytes`, after `max_age`, and *before*
//! a record that would make it span two UTC days (by event time), two canonical versions, or a
//! seq gap. So every segment is contiguous, one day, one canonical version.
//!
//! Gaps (`seq > expected + 1`): logged as an error with the metric `audit_archive_gaps_total`
//! and archived anyway, starting a new segment. Stopping would not make the missing records
//! appear (the chain topic is the only source), would stall archiving of everything after them,
//! and would let retention delete more; the verifier reports the gap from the segment names.

use std::time::{Duration, Instant};

use schemas::segment::day_of;
use schemas::ChainedEvent;

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_events: usize,
    pub max_bytes: usize,
    pub max_age: Duration,
}

/// Records of an open (or just closed) segment.
#[derive(Debug, Clone)]
pub struct Segment {
    pub events: Vec<ChainedEvent>,
    pub first_offset: i64,
    pub last_offset: i64,
    /// The next input offset to store once this segment is durable (covers skipped records
    /// read after its last one).
    pub store_offset: i64,
    bytes: usize,
    opened: Instant,
    date: String,
}

impl Segment {
    pub fn last_seq(&self) -> Option<i64> {
        self.events.last().map(|e| e.seq)
    }
}

/// What to do after offering a record.
#[derive(Debug, Default)]
pub struct Offer {
    /// Segments to write now, in order.
    pub closed: Vec<Segment>,
    /// An offset that can be stored at once (the record was skipped and nothing is buffered).
    pub store_now: Option<i64>,
}

/// One partition's archive state for one assignment epoch.
#[derive(Debug)]
pub struct PartitionState {
    pub partition: i32,
    pub epoch: u64,
    /// Last seq durably archived, and its hash (when known).
    stored_seq: Option<i64>,
    stored_hash: Option<Vec<u8>>,
    open: Option<Segment>,
}

impl PartitionState {
    pub fn new(
        partition: i32,
        epoch: u64,
        stored_seq: Option<i64>,
        stored_hash: Option<Vec<u8>>,
    ) -> Self {
        PartitionState {
            partition,
            epoch,
            stored_seq,
            stored_hash,
            open: None,
        }
    }

    pub fn stored_seq(&self) -> Option<i64> {
        self.stored_seq
    }

    pub fn has_open(&self) -> bool {
        self.open.is_some()
    }

    fn last_seq_and_hash(&self) -> (Option<i64>, Option<&[u8]>) {
        match self.open.as_ref().and_then(|s| s.events.last()) {
            Some(e) => (Some(e.seq), Some(&e.hash)),
            None => (self.stored_seq, self.stored_hash.as_deref()),
        }
    }

    /// Offers the record read at `offset` (`size` = its payload length).
    pub fn offer(
        &mut self,
        ev: ChainedEvent,
        offset: i64,
        size: usize,
        now: Instant,
        limits: &Limits,
    ) -> Offer {
        let mut out = Offer::default();
        let p = self.partition;
        let (last_seq, last_hash) = self.last_seq_and_hash();
        if let Some(last) = last_seq {
            if ev.seq <= last {
                self.duplicate(&ev);
                match &mut self.open {
                    Some(open) => open.store_offset = offset + 1,
                    None => out.store_now = Some(offset + 1),
                }
                return out;
            }
            if ev.seq > last + 1 {
                tracing::error!(partition = p, expected = last + 1, got = ev.seq, offset, "GAP in the chained topic: seqs missing; archiving from the new seq (the verifier will report it)");
                metrics::counter!("audit_archive_gaps_total", "partition" => p.to_string())
                    .increment(1);
                out.closed.extend(self.open.take());
            } else if let Some(h) = last_hash {
                if ev.prev_hash != h {
                    tracing::error!(partition = p, seq = ev.seq, "chain link broken: prev_hash differs from the previous record's hash; archiving as read");
                    metrics::counter!("audit_archive_chain_breaks_total", "partition" => p.to_string()).increment(1);
                }
            }
        }
        let date = day_of(ev.event.event_time_us);
        if let Some(open) = &self.open {
            let first_version = open.events.first().map(|e| e.canonical_version);
            if open.date != date || first_version != Some(ev.canonical_version) {
                out.closed.extend(self.open.take());
            }
        }
        let open = self.open.get_or_insert_with(|| Segment {
            events: Vec::new(),
            first_offset: offset,
            last_offset: offset,
            store_offset: offset + 1,
            bytes: 0,
            opened: now,
            date,
        });
        open.events.push(ev);
        open.last_offset = offset;
        open.store_offset = offset + 1;
        open.bytes += size;
        if open.events.len() >= limits.max_events || open.bytes >= limits.max_bytes {
            out.closed.extend(self.open.take());
        }
        out
    }

    fn duplicate(&self, ev: &ChainedEvent) {
        let p = self.partition;
        let buffered = self
            .open
            .as_ref()
            .and_then(|s| s.events.iter().find(|e| e.seq == ev.seq));
        let differs = match buffered {
            Some(b) => b != ev,
            None => {
                self.stored_seq == Some(ev.seq)
                    && self.stored_hash.as_ref().is_some_and(|h| *h != ev.hash)
            }
        };
        if differs {
            tracing::error!(
                partition = p,
                seq = ev.seq,
                "FORK: a second, different record for an archived seq; keeping the first"
            );
            metrics::counter!("audit_archive_forks_total", "kind" => "record", "partition" => p.to_string()).increment(1);
        } else {
            metrics::counter!("audit_archive_duplicates_total", "partition" => p.to_string())
                .increment(1);
        }
    }

    /// A record that is not archived (dead-lettered) at `next - 1`: its offset is stored with
    /// the open segment.
    pub fn cover(&mut self, next: i64) {
        if let Some(open) = &mut self.open {
            open.store_offset = open.store_offset.max(next);
        }
    }

    /// Closes the open segment if it is older than `max_age`.
    pub fn poll_age(&mut self, now: Instant, limits: &Limits) -> Option<Segment> {
        if self
            .open
            .as_ref()
            .is_some_and(|s| now.duration_since(s.opened) >= limits.max_age)
        {
            return self.open.take();
        }
        None
    }

    /// Closes the open segment whatever its size (shutdown).
    pub fn take_open(&mut self) -> Option<Segment> {
        self.open.take()
    }

    /// Records that a segment ending at `last_seq` with `last_hash` is durable.
    pub fn stored(&mut self, last_seq: i64, last_hash: Option<Vec<u8>>) {
        if self.stored_seq.is_none_or(|s| last_seq >= s) {
            self.stored_seq = Some(last_seq);
            self.stored_hash = last_hash;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 86_400_000_000;
    const T0: i64 = 1_717_200_000_000_000; // 2024-06-01T00:00:00Z

    fn ev(seq: i64, time_us: i64) -> ChainedEvent {
        let mut event = schemas::testing::sample_event();
        event.event_time_us = time_us;
        ChainedEvent {
            chain_partition: 0,
            seq,
            prev_hash: vec![(seq - 1) as u8; 32],
            hash: vec![seq as u8; 32],
            canonical_version: 1,
            source_topic: "audit.enriched".into(),
            source_partition: 0,
            source_offset: seq,
            event,
        }
    }

    fn limits() -> Limits {
        Limits {
            max_events: 3,
            max_bytes: 1_000_000,
            max_age: Duration::from_secs(30),
        }
    }

    fn seqs(s: &Segment) -> Vec<i64> {
        s.events.iter().map(|e| e.seq).collect()
    }

    #[test]
    fn closes_at_max_events() {
        let mut st = PartitionState::new(0, 1, None, None);
        let now = Instant::now();
        assert!(st.offer(ev(1, T0), 10, 1, now, &limits()).closed.is_empty());
        assert!(st.offer(ev(2, T0), 11, 1, now, &limits()).closed.is_empty());
        let o = st.offer(ev(3, T0), 12, 1, now, &limits());
        assert_eq!(o.closed.len(), 1);
        assert_eq!(seqs(&o.closed[0]), vec![1, 2, 3]);
        assert_eq!(
            (
                o.closed[0].first_offset,
                o.closed[0].last_offset,
                o.closed[0].store_offset
            ),
            (10, 12, 13)
        );
        assert!(!st.has_open());
    }

    #[test]
    fn a_new_day_closes_the_segment_before_the_record() {
        let mut st = PartitionState::new(0, 1, None, None);
        let now = Instant::now();
        st.offer(ev(1, T0 + DAY - 1), 0, 1, now, &limits());
        let o = st.offer(ev(2, T0 + DAY), 1, 1, now, &limits());
        assert_eq!(o.closed.len(), 1);
        assert_eq!(seqs(&o.closed[0]), vec![1]);
        assert_eq!(
            o.closed[0].store_offset, 1,
            "the new day's record is not covered"
        );
        // A late event (previous day) after that closes again: one segment = one day.
        let o = st.offer(ev(3, T0), 2, 1, now, &limits());
        assert_eq!(o.closed.len(), 1);
        assert_eq!(seqs(&o.closed[0]), vec![2]);
        assert!(st.has_open());
    }

    #[test]
    fn duplicates_are_skipped_and_their_offsets_covered() {
        let mut st = PartitionState::new(0, 1, Some(5), Some(vec![5; 32]));
        let now = Instant::now();
        let o = st.offer(ev(4, T0), 100, 1, now, &limits());
        assert!(o.closed.is_empty());
        assert_eq!(o.store_now, Some(101), "nothing buffered: store at once");
        st.offer(ev(6, T0), 101, 1, now, &limits());
        let o = st.offer(ev(6, T0), 102, 1, now, &limits());
        assert_eq!(o.store_now, None, "buffered: covered by the open segment");
        let seg = st.take_open().expect("open");
        assert_eq!(seqs(&seg), vec![6]);
        assert_eq!(seg.store_offset, 103);
    }

    #[test]
    fn a_gap_closes_the_segment_and_is_archived() {
        let mut st = PartitionState::new(0, 1, None, None);
        let now = Instant::now();
        st.offer(ev(1, T0), 0, 1, now, &limits());
        let o = st.offer(ev(5, T0), 1, 1, now, &limits());
        assert_eq!(o.closed.len(), 1);
        assert_eq!(seqs(&o.closed[0]), vec![1]);
        assert_eq!(seqs(&st.take_open().expect("open")), vec![5]);
    }

    #[test]
    fn age_closes_and_bytes_close() {
        let mut st = PartitionState::new(0, 1, None, None);
        let t = Instant::now();
        st.offer(ev(1, T0), 0, 1, t, &limits());
        assert!(st
            .poll_age(t + Duration::from_secs(29), &limits())
            .is_none());
        assert!(st
            .poll_age(t + Duration::from_secs(30), &limits())
            .is_some());
        let small = Limits {
            max_bytes: 100,
            ..limits()
        };
        let o = st.offer(ev(2, T0), 1, 150, t, &small);
        assert_eq!(o.closed.len(), 1);
    }
}
