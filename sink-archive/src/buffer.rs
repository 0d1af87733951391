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

//!
//! An open segment is held as it will be written ([`SegmentBuilder`]: records encoded, full
//! blocks compressed), plus a few fixed-size facts per record, so a partition's open segment
//! costs about its compressed size (a fifth of its input here) rather than its decoded records
//! (2–3 KB each: `--segment-max-events` 10,000 × partitions was the sink's memory).

use std::time::{Duration, Instant};

use schemas::chained_row::CanonicalDatum;
use schemas::segment::{day_of, BlockCodec, RawBlock, SegmentBuilder, SegmentError, SegmentKey};
use schemas::{ChainedEvent, EventCategory};
use sha2::{Digest, Sha256};

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_events: usize,
    pub max_bytes: usize,
    pub max_age: Duration,
    /// How the segment's blocks are compressed.
    pub codec: BlockCodec,
}

/// A record offered to a partition's segment. Read from the chained topic, it is nearly always
/// exactly its record's encoding (what the chainer writes), and is appended as it is; any other
/// is decoded, and encoded again when appended. Same segment bytes either way.
#[derive(Debug)]
pub enum Record<'a> {
    Canonical(CanonicalDatum<'a>),
    /// Boxed: the rare case, and ~1.5 KB inline.
    Decoded(Box<ChainedEvent>),
}

impl From<ChainedEvent> for Record<'_> {
    fn from(e: ChainedEvent) -> Self {
        Record::Decoded(Box::new(e))
    }
}

/// What buffering decides on, of either kind of record.
struct Facts<'r> {
    chain_partition: i32,
    seq: i64,
    prev_hash: &'r [u8],
    hash: &'r [u8],
    canonical_version: i32,
    category: EventCategory,
    event_time_us: i64,
    receive_time_us: i64,
}

impl Record<'_> {
    fn facts(&self) -> Facts<'_> {
        match self {
            Record::Canonical(d) => {
                let k = d.keys();
                Facts {
                    chain_partition: k.chain_partition,
                    seq: k.seq,
                    prev_hash: k.prev_hash,
                    hash: k.hash,
                    canonical_version: k.canonical_version,
                    category: k.category,
                    event_time_us: k.event_time_us,
                    receive_time_us: k.receive_time_us,
                }
            }
            Record::Decoded(e) => Facts {
                chain_partition: e.chain_partition,
                seq: e.seq,
                prev_hash: &e.prev_hash,
                hash: &e.hash,
                canonical_version: e.canonical_version,
                category: e.event.category,
                event_time_us: e.event.event_time_us,
                receive_time_us: e.event.receive_time_us,
            },
        }
    }
}

/// What a held record costs besides its compressed bytes: its hash key and times.
const PER_RECORD_BYTES: usize = std::mem::size_of::<[u8; 32]>() + std::mem::size_of::<(i64, i64)>();

/// Records of an open (or just closed) segment.
#[derive(Debug)]
pub struct Segment {
    /// The records, encoded and (block by block) compressed.
    pub records: SegmentBuilder,
    /// Per record: its chain hash (to tell a duplicate from a fork), as a fixed-size key.
    hashes: Vec<[u8; 32]>,
    /// Per record: (event time, receive time), for the stored-latency metric.
    pub times: Vec<(i64, i64)>,
    /// The latest event time of each event class: what the retention lock needs (an end of
    /// retention only grows with the event time, so the latest per class decides).
    pub latest: Vec<(EventCategory, i64)>,
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
    fn new(offset: i64, now: Instant, date: String, codec: BlockCodec) -> Self {
        Segment {
            records: SegmentBuilder::with_codec(codec),
            hashes: Vec::new(),
            times: Vec::new(),
            latest: Vec::new(),
            first_offset: offset,
            last_offset: offset,
            store_offset: offset + 1,
            bytes: 0,
            opened: now,
            date,
        }
    }

    pub fn last_seq(&self) -> Option<i64> {
        self.records.last_seq()
    }

    pub fn len(&self) -> usize {
        self.hashes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.hashes.is_empty()
    }

    fn push(&mut self, rec: &Record<'_>, f: &Facts<'_>) -> Result<(), SegmentError> {
        match rec {
            Record::Canonical(d) => self.records.push_canonical(d)?,
            Record::Decoded(e) => self.records.push(e)?,
        }
        self.hashes.push(hash_key(f.hash));
        self.times.push((f.event_time_us, f.receive_time_us));
        note_latest(&mut self.latest, f.category, f.event_time_us);
        Ok(())
    }

    /// The chain hash key of the buffered record `seq`, if buffered.
    fn hash_of(&self, seq: i64) -> Option<&[u8; 32]> {
        let first = self.records.first_seq()?;
        let i = usize::try_from(seq.checked_sub(first)?).ok()?;
        self.hashes.get(i)
    }
}

/// Keeps in `latest` the latest event time of `ev`'s class.
pub fn note_latest(latest: &mut Vec<(EventCategory, i64)>, class: EventCategory, t: i64) {
    match latest.iter_mut().find(|(c, _)| *c == class) {
        Some((_, l)) => *l = (*l).max(t),
        None => latest.push((class, t)),
    }
}

/// A chain hash as a fixed-size key: itself when it is a SHA-256 (always, from the chainer),
/// else its SHA-256 (a malformed record still compares by content).
fn hash_key(hash: &[u8]) -> [u8; 32] {
    match <[u8; 32]>::try_from(hash) {
        Ok(h) => h,
        Err(_) => Sha256::digest(hash).into(),
    }
}

/// What to do after offering a record.
#[derive(Debug, Default)]
pub struct Offer {
    /// Segments to write now, in order.
    pub closed: Vec<Segment>,
    /// An offset that can be stored at once (the record was skipped and nothing is buffered).
    pub store_now: Option<i64>,
    /// The record was skipped: a seq already held or archived.
    pub skipped: Option<Skipped>,
}

/// A record for a seq already held or archived, kept out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skipped {
    /// The same chain hash: a re-delivery.
    Duplicate,
    /// Another chain hash for that seq: a fork (alarm; the first record stays).
    Fork,
}

/// Why a record was not taken.
#[derive(Debug, thiserror::Error)]
pub enum OfferError {
    /// No segment can hold it (e.g. a seq below 1): dead-letter it, keep going.
    #[error("record cannot be archived: {0}")]
    Unarchivable(String),
    /// The segment refused a record the checks passed: a bug; stop and re-read.
    #[error(transparent)]
    Segment(SegmentError),
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

    /// Bytes the open segment holds (its memory, to within its per-record facts).
    pub fn open_bytes(&self) -> usize {
        self.open
            .as_ref()
            .map_or(0, |s| s.records.held_bytes() + s.len() * PER_RECORD_BYTES)
    }

    fn last_seq_and_hash(&self) -> (Option<i64>, Option<&[u8]>) {
        match self.open.as_ref().filter(|s| !s.is_empty()) {
            Some(s) => (s.records.last_seq(), s.records.last_hash()),
            None => (self.stored_seq, self.stored_hash.as_deref()),
        }
    }

    /// Offers the record read at `offset` (`size` = its payload length).
    pub fn offer<'a>(
        &mut self,
        rec: impl Into<Record<'a>>,
        offset: i64,
        size: usize,
        now: Instant,
        limits: &Limits,
    ) -> Result<Offer, OfferError> {
        let rec = rec.into();
        let ev = rec.facts();
        let p = self.partition;
        let date = day_of(ev.event_time_us);
        // Before any change: a record no segment can hold is refused alone.
        SegmentKey::new(p, &date, ev.seq, ev.seq)
            .map_err(|e| OfferError::Unarchivable(e.to_string()))?;
        if ev.chain_partition != p {
            return Err(OfferError::Unarchivable(format!(
                "chain_partition {} read from partition {p}",
                ev.chain_partition
            )));
        }
        let mut out = Offer::default();
        let (last_seq, last_hash) = self.last_seq_and_hash();
        if let Some(last) = last_seq {
            if ev.seq <= last {
                out.skipped = Some(self.duplicate(&ev));
                match &mut self.open {
                    Some(open) => open.store_offset = offset + 1,
                    None => out.store_now = Some(offset + 1),
                }
                return Ok(out);
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
        if let Some(open) = &self.open {
            let version = open.records.canonical_version();
            if open.date != date || version != Some(ev.canonical_version) {
                out.closed.extend(self.open.take());
            }
        }
        let open = self
            .open
            .get_or_insert_with(|| Segment::new(offset, now, date, limits.codec));
        // Cannot fail for a record that passed the checks above (same partition, a valid
        // seq, the next one, same day and version); if it did, the worker stops and re-reads
        // from the stored offsets, losing nothing.
        open.push(&rec, &ev).map_err(OfferError::Segment)?;
        open.last_offset = offset;
        open.store_offset = offset + 1;
        open.bytes += size;
        if open.len() >= limits.max_events || open.bytes >= limits.max_bytes {
            out.closed.extend(self.open.take());
        }
        Ok(out)
    }

    /// The open segment's block that just filled, if any: to compress on a blocking thread
    /// and put back with [`Self::put_block`] (else the next record compresses it in line).
    pub fn take_full_block(&mut self) -> Option<RawBlock> {
        self.open.as_mut()?.records.take_full_block()
    }

    /// Puts back, compressed, a block from [`Self::take_full_block`] (before the next offer:
    /// the open segment it came from must still be the open one).
    pub fn put_block(
        &mut self,
        block: schemas::segment::CompressedBlock,
    ) -> Result<(), SegmentError> {
        match &mut self.open {
            Some(open) => open.records.put_block(block),
            None => Err(SegmentError::Invalid(
                "no open segment to put a block into".into(),
            )),
        }
    }

    fn duplicate(&self, ev: &Facts<'_>) -> Skipped {
        let p = self.partition;
        let buffered = self.open.as_ref().and_then(|s| s.hash_of(ev.seq));
        let differs = match buffered {
            Some(b) => *b != hash_key(ev.hash),
            None => {
                self.stored_seq == Some(ev.seq)
                    && self.stored_hash.as_ref().is_some_and(|h| h != ev.hash)
            }
        };
        if differs {
            tracing::error!(
                partition = p,
                seq = ev.seq,
                "FORK: a second, different record for an archived seq; keeping the first"
            );
            metrics::counter!("audit_archive_forks_total", "kind" => "record", "partition" => p.to_string()).increment(1);
            Skipped::Fork
        } else {
            metrics::counter!("audit_archive_duplicates_total", "partition" => p.to_string())
                .increment(1);
            Skipped::Duplicate
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
        chained(0, seq, event)
    }

    /// Record `seq` of partition `p`, linked by made-up hashes.
    fn chained(p: i32, seq: i64, event: schemas::AuditEvent) -> ChainedEvent {
        ChainedEvent {
            chain_partition: p,
            seq,
            prev_hash: vec![(seq - 1) as u8; 32],
            hash: vec![seq as u8; 32],
            canonical_version: 1,
            source_topic: "audit.enriched".into(),
            source_partition: p,
            source_offset: seq,
            event,
        }
    }

    fn limits() -> Limits {
        Limits {
            max_events: 3,
            max_bytes: 1_000_000,
            max_age: Duration::from_secs(30),
            codec: BlockCodec::Deflate,
        }
    }

    /// Records offered as they were read (their own encoding) and records offered decoded
    /// make the same segments: same closing, same bytes, same hashes, times and latest times.
    #[test]
    fn records_appended_as_read_make_the_same_segments() {
        let mut rng = schemas::realistic::Rng(5);
        let events: Vec<ChainedEvent> = (1..=7i64)
            .map(|seq| {
                let mut e = schemas::realistic::realistic_event(&mut rng, seq as u64, 0);
                // The fourth record starts a new day: both ways close the segment before it.
                e.event_time_us = if seq < 4 { T0 + seq } else { T0 + DAY + seq };
                chained(0, seq, e)
            })
            .collect();
        let datums: Vec<Vec<u8>> = events
            .iter()
            .map(|e| schemas::avro::encode_chained_datum(e).expect("datum"))
            .collect();
        let now = Instant::now();
        let mut decoded = PartitionState::new(0, 1, None, None);
        let mut as_read = PartitionState::new(0, 1, None, None);
        let (mut a, mut b) = (Vec::new(), Vec::new());
        for (i, (e, d)) in events.iter().zip(&datums).enumerate() {
            let off = i as i64;
            let d = CanonicalDatum::new(d).expect("an encoder's output");
            let oa = decoded
                .offer(e.clone(), off, 1, now, &limits())
                .expect("offer");
            let ob = as_read
                .offer(Record::Canonical(d), off, 1, now, &limits())
                .expect("offer");
            a.extend(oa.closed);
            b.extend(ob.closed);
        }
        a.extend(decoded.take_open());
        b.extend(as_read.take_open());
        assert_eq!(
            a.len(),
            3,
            "closed by the day, by max_events, and the open one"
        );
        assert_eq!(a.len(), b.len());
        for (x, y) in a.into_iter().zip(b) {
            assert_eq!(seqs(&x), seqs(&y));
            assert_eq!(
                (&x.hashes, &x.times, &x.latest),
                (&y.hashes, &y.times, &y.latest)
            );
            let (first, last) = (x.first_offset, x.last_offset);
            let bx = x
                .records
                .finish("audit.chained", first, last, "t/1")
                .expect("finish");
            let by = y
                .records
                .finish("audit.chained", first, last, "t/1")
                .expect("finish");
            assert_eq!(bx, by);
        }
    }

    fn seqs(s: &Segment) -> Vec<i64> {
        match (s.records.first_seq(), s.records.last_seq()) {
            (Some(a), Some(b)) => (a..=b).collect(),
            _ => Vec::new(),
        }
    }

    #[test]
    fn closes_at_max_events() {
        let mut st = PartitionState::new(0, 1, None, None);
        let now = Instant::now();
        assert!(st
            .offer(ev(1, T0), 10, 1, now, &limits())
            .expect("offer")
            .closed
            .is_empty());
        assert!(st
            .offer(ev(2, T0), 11, 1, now, &limits())
            .expect("offer")
            .closed
            .is_empty());
        let o = st.offer(ev(3, T0), 12, 1, now, &limits()).expect("offer");
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
        st.offer(ev(1, T0 + DAY - 1), 0, 1, now, &limits())
            .expect("offer");
        let o = st
            .offer(ev(2, T0 + DAY), 1, 1, now, &limits())
            .expect("offer");
        assert_eq!(o.closed.len(), 1);
        assert_eq!(seqs(&o.closed[0]), vec![1]);
        assert_eq!(
            o.closed[0].store_offset, 1,
            "the new day's record is not covered"
        );
        // A late event (previous day) after that closes again: one segment = one day.
        let o = st.offer(ev(3, T0), 2, 1, now, &limits()).expect("offer");
        assert_eq!(o.closed.len(), 1);
        assert_eq!(seqs(&o.closed[0]), vec![2]);
        assert!(st.has_open());
    }

    #[test]
    fn duplicates_are_skipped_and_their_offsets_covered() {
        let mut st = PartitionState::new(0, 1, Some(5), Some(vec![5; 32]));
        let now = Instant::now();
        let o = st.offer(ev(4, T0), 100, 1, now, &limits()).expect("offer");
        assert!(o.closed.is_empty());
        assert_eq!(o.store_now, Some(101), "nothing buffered: store at once");
        st.offer(ev(6, T0), 101, 1, now, &limits()).expect("offer");
        let o = st.offer(ev(6, T0), 102, 1, now, &limits()).expect("offer");
        assert_eq!(o.store_now, None, "buffered: covered by the open segment");
        let seg = st.take_open().expect("open");
        assert_eq!(seqs(&seg), vec![6]);
        assert_eq!(seg.store_offset, 103);
    }

    #[test]
    fn a_second_record_for_a_held_or_archived_seq_is_a_fork_by_its_hash() {
        let mut st = PartitionState::new(0, 1, Some(5), Some(vec![5; 32]));
        let now = Instant::now();
        let offer = |st: &mut PartitionState, e: ChainedEvent, off| {
            st.offer(e, off, 1, now, &limits()).expect("offer").skipped
        };
        assert_eq!(offer(&mut st, ev(5, T0), 1), Some(Skipped::Duplicate));
        let mut other = ev(5, T0);
        other.hash = vec![9; 32];
        assert_eq!(
            offer(&mut st, other, 2),
            Some(Skipped::Fork),
            "archived seq"
        );
        assert_eq!(offer(&mut st, ev(6, T0), 3), None);
        assert_eq!(offer(&mut st, ev(7, T0), 4), None);
        assert_eq!(offer(&mut st, ev(6, T0), 5), Some(Skipped::Duplicate));
        let mut other = ev(6, T0);
        other.hash = vec![9; 32];
        assert_eq!(offer(&mut st, other, 6), Some(Skipped::Fork), "held seq");
        // A malformed (short) hash still compares by content.
        let mut short = ev(7, T0);
        short.hash = vec![7; 3];
        assert_eq!(offer(&mut st, short, 7), Some(Skipped::Fork));
        let seg = st.take_open().expect("open");
        assert_eq!(seqs(&seg), vec![6, 7]);
        assert_eq!(seg.store_offset, 8);
    }

    #[test]
    fn a_record_no_segment_can_hold_is_refused_alone() {
        let mut st = PartitionState::new(0, 1, None, None);
        let now = Instant::now();
        st.offer(ev(1, T0), 0, 1, now, &limits()).expect("offer");
        let mut zero = ev(0, T0);
        zero.prev_hash = vec![0; 32];
        assert!(matches!(
            st.offer(zero, 1, 1, now, &limits()),
            Err(OfferError::Unarchivable(_))
        ));
        let mut elsewhere = ev(2, T0);
        elsewhere.chain_partition = 3;
        assert!(matches!(
            st.offer(elsewhere, 2, 1, now, &limits()),
            Err(OfferError::Unarchivable(_))
        ));
        // The open segment is untouched and goes on.
        st.offer(ev(2, T0), 3, 1, now, &limits()).expect("offer");
        assert_eq!(seqs(&st.take_open().expect("open")), vec![1, 2]);
    }

    /// The point of holding segments encoded: an open segment of realistic records costs under
    /// a third of their encoded size (decoded they cost more than encoded), and blocks taken
    /// out to compress elsewhere come back in place.
    #[test]
    fn an_open_segment_is_held_compressed() {
        let mut st = PartitionState::new(2, 1, None, None);
        let now = Instant::now();
        let big = Limits {
            max_events: 10_000,
            max_bytes: usize::MAX,
            max_age: Duration::from_secs(30),
            codec: BlockCodec::Zstandard,
        };
        let mut rng = schemas::realistic::Rng(3);
        let mut events = Vec::new();
        let mut input = 0;
        for seq in 1..=4_000i64 {
            let mut event = schemas::realistic::realistic_event(&mut rng, seq as u64, 2);
            event.event_time_us = T0 + seq;
            let e = chained(2, seq, event);
            input += schemas::avro::encode_datum(&e).expect("datum").len();
            events.push(e.clone());
            st.offer(e, seq, 900, now, &big).expect("offer");
            if let Some(block) = st.take_full_block() {
                st.put_block(block.compress().expect("compress"))
                    .expect("put");
            }
        }
        let held = st.open_bytes();
        let seg = st.take_open().expect("open");
        assert_eq!(
            seg.records.codec(),
            BlockCodec::Zstandard,
            "the limits' codec"
        );
        assert_eq!(
            held,
            seg.records.held_bytes() + seg.len() * PER_RECORD_BYTES
        );
        assert!(held * 3 < input, "held {held} B for {input} B of records");
        let (_, bytes) = seg
            .records
            .finish("audit.chained", 1, 4_000, "w")
            .expect("finish");
        let (_, back) = schemas::segment::read_segment(&bytes).expect("read");
        assert_eq!(back.len(), events.len());
        assert!(back == events, "records read back differ");
    }

    #[test]
    fn a_gap_closes_the_segment_and_is_archived() {
        let mut st = PartitionState::new(0, 1, None, None);
        let now = Instant::now();
        st.offer(ev(1, T0), 0, 1, now, &limits()).expect("offer");
        let o = st.offer(ev(5, T0), 1, 1, now, &limits()).expect("offer");
        assert_eq!(o.closed.len(), 1);
        assert_eq!(seqs(&o.closed[0]), vec![1]);
        assert_eq!(seqs(&st.take_open().expect("open")), vec![5]);
    }

    #[test]
    fn age_closes_and_bytes_close() {
        let mut st = PartitionState::new(0, 1, None, None);
        let t = Instant::now();
        st.offer(ev(1, T0), 0, 1, t, &limits()).expect("offer");
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
        let o = st.offer(ev(2, T0), 1, 150, t, &small).expect("offer");
        assert_eq!(o.closed.len(), 1);
    }
}
