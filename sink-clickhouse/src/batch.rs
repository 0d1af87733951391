//! Per-partition batches and the pure part of the exactly-once logic: given what is already
//! stored for a batch's seqs, which rows to insert, which are duplicates and which are forks.
//!
//! The rule (design doc, "The chain"): the first copy of each `(partition, seq)` wins. A later
//! copy with the same hash is a duplicate (a zombie chainer's byte-identical output, or a
//! redelivery) and is dropped; a later copy with a different hash is a fork: it is never
//! written over the stored one, only recorded as an alarm.
//!
//! Batches are per partition (each has its assignment epoch and its offset to commit) but
//! flushed together ([`Batches`]): one budget of rows held over every partition, one age, and
//! the rows of all of them in as few INSERTs as atomicity allows ([`insert_groups`]). Per
//! partition, a sink holding P partitions would hold P × the budget and send P INSERTs (each
//! feeding the report views) where one does.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use schemas::chained_row::ChainedRow;
use schemas::flat::{hex_lower, AuditRow};

use crate::rowbinary::{read_row, write_row, Layout, RowBinaryError};

/// One record of `<prefix>chained` waiting to be stored: what the exactly-once plan needs, and
/// the row itself as `RowBinary` for `audit_events`' columns ([`crate::rowbinary`]), written
/// when the record arrived. Neither the decoded row nor the Kafka payload is held: a fork
/// alarm reads the offered row back from these bytes ([`Entry::row`]), and names its offset in
/// `<prefix>chained`. One exact-size buffer per row: a held `AuditRow` was some 35 heap blocks,
/// and freeing a flushed batch of them was about a third of the sink's CPU.
#[derive(Debug, Clone)]
pub struct Entry {
    pub chain_partition: i32,
    pub seq: i64,
    /// The record's offset in `<prefix>chained`.
    pub chained_offset: i64,
    /// `event_time` (`DateTime` seconds): which table partition (month) the row goes to.
    pub event_time: u32,
    /// Lowercase hex, as stored.
    pub hash: String,
    /// For the stored-latency metrics.
    pub event_time_us: i64,
    pub receive_time_us: i64,
    /// The row, `RowBinary`.
    pub bytes: Box<[u8]>,
}

impl Entry {
    /// Writes `row` for `layout` (through `scratch`, so that the held buffer is exactly the
    /// row's size). An error means the row does not fit the table: nothing is held.
    pub fn new(
        row: AuditRow,
        layout: &Layout,
        scratch: &mut Vec<u8>,
    ) -> Result<Entry, RowBinaryError> {
        scratch.clear();
        write_row(&row, layout, scratch)?;
        Ok(Entry {
            chain_partition: row.chain_partition,
            seq: row.seq,
            chained_offset: row.chained_offset,
            event_time: row.event_time,
            hash: row.hash,
            event_time_us: row.event_time_us,
            receive_time_us: row.receive_time_us,
            bytes: scratch.as_slice().into(),
        })
    }

    /// Writes the row of a chained datum straight from its bytes ([`ChainedRow`]: the same
    /// bytes as decoding it and [`Entry::new`], without the ~45 heap blocks a decoded row is
    /// made of). `None` when the datum does not decode or the row does not fit the table:
    /// nothing is held, and the caller decodes the record to say why.
    pub fn from_datum(
        datum: &[u8],
        chained_offset: i64,
        layout: &Layout,
        scratch: &mut Vec<u8>,
    ) -> Option<Entry> {
        let row = ChainedRow::new(datum, chained_offset)?;
        scratch.clear();
        write_row(&row, layout, scratch).ok()?;
        let k = row.keys()?;
        Some(Entry {
            chain_partition: k.chain_partition,
            seq: k.seq,
            chained_offset,
            event_time: k.event_time,
            hash: hex_lower(k.hash),
            event_time_us: k.event_time_us,
            receive_time_us: k.receive_time_us,
            bytes: scratch.as_slice().into(),
        })
    }

    pub fn seq(&self) -> i64 {
        self.seq
    }
    pub fn offset(&self) -> i64 {
        self.chained_offset
    }

    /// The row back from its bytes.
    pub fn row(&self) -> Result<AuditRow, RowBinaryError> {
        read_row(&self.bytes)
    }
}

/// Records of one partition read in one assignment epoch, not yet stored.
#[derive(Debug)]
pub struct Batch {
    pub epoch: u64,
    pub entries: Vec<Entry>,
    /// Highest input offset covered (rows and dead-lettered records); storing `last + 1` after
    /// the batch is durable is what commits it.
    pub last_offset: Option<i64>,
    started: Option<Instant>,
}

impl Batch {
    pub fn new(epoch: u64) -> Self {
        Batch {
            epoch,
            entries: Vec::new(),
            last_offset: None,
            started: None,
        }
    }

    pub fn push(&mut self, entry: Entry, now: Instant) {
        self.cover(entry.offset(), now);
        self.entries.push(entry);
    }

    /// Covers an offset that produces no row (dead-lettered, or dropped as stale).
    pub fn cover(&mut self, offset: i64, now: Instant) {
        self.last_offset = Some(self.last_offset.map_or(offset, |o| o.max(offset)));
        self.started.get_or_insert(now);
    }

    pub fn is_empty(&self) -> bool {
        self.last_offset.is_none()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the batch must be flushed now.
    pub fn due(&self, now: Instant, max_rows: usize, max_age: Duration) -> bool {
        self.entries.len() >= max_rows
            || self
                .started
                .is_some_and(|t| now.saturating_duration_since(t) >= max_age)
    }

    /// When the first record (or covered offset) of this batch was read.
    pub fn started(&self) -> Option<Instant> {
        self.started
    }

    /// Distinct seqs of the batch, sorted (for the "what is stored already" query).
    pub fn seqs(&self) -> Vec<i64> {
        let mut s: Vec<i64> = self.entries.iter().map(Entry::seq).collect();
        s.sort_unstable();
        s.dedup();
        s
    }
}

/// The open batches of every chained partition, flushed together: when the rows held over all
/// partitions reach `max_rows`, or when the oldest record held is `max_age` old.
#[derive(Debug, Default)]
pub struct Batches {
    by_partition: HashMap<i32, Batch>,
}

impl Batches {
    pub fn get(&self, p: i32) -> Option<&Batch> {
        self.by_partition.get(&p)
    }

    pub fn get_mut(&mut self, p: i32) -> Option<&mut Batch> {
        self.by_partition.get_mut(&p)
    }

    pub fn insert(&mut self, p: i32, batch: Batch) {
        self.by_partition.insert(p, batch);
    }

    pub fn remove(&mut self, p: i32) -> Option<Batch> {
        self.by_partition.remove(&p)
    }

    /// Partitions with an open batch, ascending.
    pub fn partitions(&self) -> Vec<i32> {
        let mut v: Vec<i32> = self.by_partition.keys().copied().collect();
        v.sort_unstable();
        v
    }

    /// Rows held over every partition.
    pub fn rows(&self) -> usize {
        self.by_partition.values().map(Batch::len).sum()
    }

    /// When the oldest batch reaches `max_age` (`None`: nothing held).
    pub fn deadline(&self, max_age: Duration) -> Option<Instant> {
        self.by_partition
            .values()
            .filter_map(Batch::started)
            .min()
            .map(|t| t + max_age)
    }

    /// Whether everything held must be flushed now.
    pub fn due(&self, now: Instant, max_rows: usize, max_age: Duration) -> bool {
        self.rows() >= max_rows || self.deadline(max_age).is_some_and(|d| now >= d)
    }

    /// Takes every non-empty batch out (each partition keeps an empty one of its epoch).
    pub fn take_nonempty(&mut self) -> Vec<(i32, Batch)> {
        let mut out = Vec::new();
        for p in self.partitions() {
            if let Some(b) = self.by_partition.get_mut(&p) {
                if !b.is_empty() {
                    let epoch = b.epoch;
                    out.push((p, std::mem::replace(b, Batch::new(epoch))));
                }
            }
        }
        out
    }

    /// Puts a batch back after a failed store, unless its partition moved on meanwhile (a new
    /// epoch, or records read since): what is not put back is re-read from Kafka.
    pub fn put_back(&mut self, p: i32, batch: Batch) {
        if let Some(b) = self.by_partition.get_mut(&p) {
            if b.epoch == batch.epoch && b.is_empty() {
                *b = batch;
            }
        }
    }
}

/// What to do with each entry of a batch.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Indexes of entries to insert (at most one per seq).
    pub insert: Vec<usize>,
    /// Indexes of entries identical to a stored (or earlier in-batch) copy.
    pub duplicates: Vec<usize>,
    /// (index, hash of the copy that won) of entries that differ from the first copy.
    pub forks: Vec<(usize, String)>,
}

/// Decides, from `stored` (seq → hashes of the copies already in the table), which entries to
/// insert. Pure, so the same rule applies to a first attempt and to a retry after an insert
/// whose outcome is unknown (it may have landed fully, partially or not at all).
pub fn plan(entries: &[Entry], stored: &HashMap<i64, Vec<String>>) -> Plan {
    let mut winner: HashMap<i64, &str> = stored
        .iter()
        .filter_map(|(seq, hashes)| Some((*seq, hashes.first()?.as_str())))
        .collect();
    let mut plan = Plan::default();
    for (i, e) in entries.iter().enumerate() {
        match winner.get(&e.seq()) {
            Some(h) if *h == e.hash => plan.duplicates.push(i),
            Some(h) => plan.forks.push((i, (*h).to_owned())),
            None => {
                winner.insert(e.seq(), e.hash.as_str());
                plan.insert.push(i);
            }
        }
    }
    plan
}

/// ClickHouse's `toYYYYMM` of a `DateTime('UTC')` value (seconds): the month that
/// `audit_events` is partitioned by (`PARTITION BY toYYYYMM(event_time)`).
pub fn month_of(event_time: u32) -> u32 {
    // Days since 1970-01-01 to a civil date (H. Hinnant's `civil_from_days`, proleptic
    // Gregorian, which is what ClickHouse uses for `DateTime`'s range).
    let z = i64::from(event_time / 86_400) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year * 100 + month) as u32
}

/// Splits `rows` (sorted by seq) into maximal runs of consecutive rows of the same month, in
/// order. Each run is one INSERT touching one table partition, which ClickHouse applies whole
/// or not at all; an INSERT touching several partitions writes one part per partition and can
/// land in part (and one touching more than `max_partitions_per_insert_block`, 100, months is
/// refused every time). Inserting the runs in seq order means a failure or crash leaves the
/// stored seqs a contiguous prefix, which is what the resume point relies on.
pub fn month_runs<'a, 'r>(rows: &'a [&'r Entry]) -> Vec<&'a [&'r Entry]> {
    let mut runs = Vec::new();
    let mut start = 0;
    for i in 1..=rows.len() {
        if i == rows.len() || month_of(rows[i].event_time) != month_of(rows[start].event_time) {
            if start < i {
                runs.push(&rows[start..i]);
            }
            start = i;
        }
    }
    runs
}

/// The INSERTs storing the rows of several partitions, each slice sorted by seq: one INSERT
/// per month of the k-th same-month run ([`month_runs`]) of every partition, for k = 1, 2, ….
/// Each INSERT touches one table partition (so it is atomic), and a partition's runs go in
/// in seq order, so a failure part-way leaves every partition's stored seqs a contiguous
/// prefix; in the common case (every row of the same month) this is a single INSERT for all
/// partitions.
pub fn insert_groups<'r>(parts: &[Vec<&'r Entry>]) -> Vec<Vec<&'r Entry>> {
    let runs: Vec<Vec<&[&'r Entry]>> = parts.iter().map(|rows| month_runs(rows)).collect();
    let steps = runs.iter().map(Vec::len).max().unwrap_or(0);
    let mut groups = Vec::new();
    for k in 0..steps {
        // Months of this step in first-seen order, each with its rows.
        let mut by_month: Vec<(u32, Vec<&'r Entry>)> = Vec::new();
        for run in runs.iter().filter_map(|r| r.get(k)) {
            let Some(first) = run.first() else { continue };
            let m = month_of(first.event_time);
            match by_month.iter_mut().find(|(x, _)| *x == m) {
                Some((_, rows)) => rows.extend_from_slice(run),
                None => by_month.push((m, run.to_vec())),
            }
        }
        groups.extend(by_month.into_iter().map(|(_, rows)| rows));
    }
    groups
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::strategy::Strategy;
    use schemas::testing::sample_event;
    use schemas::ChainedEvent;

    /// Everything an entry holds.
    fn parts(e: &Entry) -> (i32, i64, i64, u32, String, i64, i64, Vec<u8>) {
        (
            e.chain_partition,
            e.seq,
            e.chained_offset,
            e.event_time,
            e.hash.clone(),
            e.event_time_us,
            e.receive_time_us,
            e.bytes.to_vec(),
        )
    }

    /// The entry the decoding path makes of a datum, if it makes one.
    fn decoded_entry(datum: &[u8], offset: i64, layout: &Layout) -> Option<Entry> {
        let c = schemas::avro::decode_chained_datum(datum).ok()?;
        Entry::new(
            AuditRow::from_chained_owned(c, offset),
            layout,
            &mut Vec::new(),
        )
        .ok()
    }

    proptest::proptest! {
        /// A row written from the datum's bytes is the decoded row's, byte for byte, with the
        /// same keys.
        #[test]
        fn entries_from_bytes_are_the_decoded_entries(
            c in schemas::testing::arb_chained_event().boxed(),
            offset in proptest::prelude::any::<i64>(),
        ) {
            let layout = crate::rowbinary::migrated_layout();
            let datum = schemas::avro::encode_chained_datum(&c).expect("encodes");
            let want = decoded_entry(&datum, offset, &layout).expect("decodes");
            // A used scratch buffer leaves nothing behind.
            let mut scratch = vec![7u8; 3];
            let got = Entry::from_datum(&datum, offset, &layout, &mut scratch).expect("writes");
            proptest::prop_assert_eq!(parts(&got), parts(&want));
        }

        /// Corrupted bytes give an entry exactly when the decoding path gives one, the same.
        #[test]
        fn corrupted_datums_give_an_entry_exactly_when_decoding_does(
            c in schemas::testing::arb_chained_event().boxed(),
            sets in proptest::collection::vec(
                (proptest::prelude::any::<proptest::sample::Index>(), proptest::prelude::any::<u8>()),
                1..4,
            ),
            cut in proptest::option::of(proptest::prelude::any::<proptest::sample::Index>()),
        ) {
            let layout = crate::rowbinary::migrated_layout();
            let mut datum = schemas::avro::encode_chained_datum(&c).expect("encodes");
            for (i, b) in sets {
                let i = i.index(datum.len());
                datum[i] = b;
            }
            if let Some(cut) = cut {
                datum.truncate(cut.index(datum.len()));
            }
            let want = decoded_entry(&datum, 5, &layout);
            let got = Entry::from_datum(&datum, 5, &layout, &mut Vec::new());
            proptest::prop_assert_eq!(got.as_ref().map(parts), want.as_ref().map(parts));
        }
    }

    /// A table whose column does not take the value: no entry from the bytes, and the decoding
    /// path, which the sink then takes, reports the mismatch.
    #[test]
    fn a_row_that_does_not_fit_the_table_is_left_to_the_decoding_path() {
        let names = AuditRow::COLUMNS;
        let table: Vec<(&str, &str)> = crate::rowbinary::first_migration_columns()
            .into_iter()
            .map(|(n, t)| if n == "seq" { (n, "Int32") } else { (n, t) })
            .collect();
        let layout = Layout::new(names, table.iter().copied()).expect("layout");
        let c = ChainedEvent {
            chain_partition: 1,
            seq: 4,
            prev_hash: vec![0; 32],
            hash: vec![9; 32],
            canonical_version: 1,
            source_topic: "t".into(),
            source_partition: 1,
            source_offset: 4,
            event: sample_event(),
        };
        let datum = schemas::avro::encode_chained_datum(&c).expect("encodes");
        let mut scratch = Vec::new();
        assert!(Entry::from_datum(&datum, 0, &layout, &mut scratch).is_none());
        let err = Entry::new(AuditRow::from_chained_owned(c, 0), &layout, &mut scratch)
            .expect_err("seq is no Int32");
        assert!(err.to_string().contains("`seq`"), "{err}");
        // With the migrations' table the same datum is written.
        let layout = crate::rowbinary::migrated_layout();
        assert!(Entry::from_datum(&datum, 0, &layout, &mut scratch).is_some());
    }

    fn entry(seq: i64, hash_byte: u8, offset: i64) -> Entry {
        entry_of(0, seq, hash_byte, offset)
    }

    fn entry_of(p: i32, seq: i64, hash_byte: u8, offset: i64) -> Entry {
        let c = ChainedEvent {
            chain_partition: p,
            seq,
            prev_hash: vec![0; 32],
            hash: vec![hash_byte; 32],
            canonical_version: 1,
            source_topic: "t".into(),
            source_partition: 0,
            source_offset: seq,
            event: sample_event(),
        };
        let layout = crate::rowbinary::migrated_layout();
        Entry::new(AuditRow::from_chained(&c, offset), &layout, &mut Vec::new()).expect("entry")
    }

    fn h(b: u8) -> String {
        hex::encode([b; 32])
    }

    #[test]
    fn inserts_only_what_is_missing() {
        let entries = vec![entry(5, 5, 10), entry(6, 6, 11), entry(7, 7, 12)];
        // A previous attempt landed 5 and 6 (retry case).
        let stored = HashMap::from([(5, vec![h(5)]), (6, vec![h(6)])]);
        let p = plan(&entries, &stored);
        assert_eq!(p.insert, vec![2]);
        assert_eq!(p.duplicates, vec![0, 1]);
        assert!(p.forks.is_empty());
        // Nothing stored: everything goes in.
        assert_eq!(plan(&entries, &HashMap::new()).insert, vec![0, 1, 2]);
    }

    #[test]
    fn a_different_copy_is_a_fork_and_never_inserted() {
        let entries = vec![entry(5, 0xEE, 10), entry(6, 6, 11)];
        let stored = HashMap::from([(5, vec![h(5)])]);
        let p = plan(&entries, &stored);
        assert_eq!(p.insert, vec![1]);
        assert_eq!(p.forks, vec![(0, h(5))]);
    }

    #[test]
    fn in_batch_copies_first_wins() {
        // A zombie chainer wrote 5, 6 twice: once identical, once different.
        let entries = vec![
            entry(5, 5, 10),
            entry(6, 6, 11),
            entry(5, 5, 12),
            entry(6, 9, 13),
        ];
        let p = plan(&entries, &HashMap::new());
        assert_eq!(p.insert, vec![0, 1]);
        assert_eq!(p.duplicates, vec![2]);
        assert_eq!(p.forks, vec![(3, h(6))]);
    }

    #[test]
    fn month_of_matches_clickhouse_to_yyyymm() {
        // Values checked with `SELECT toYYYYMM(toDateTime(n, 'UTC'))` on the local server.
        assert_eq!(month_of(0), 197001);
        assert_eq!(month_of(1_717_200_000), 202406); // 2024-06-01 00:00:00
        assert_eq!(month_of(1_717_199_999), 202405); // one second before
        assert_eq!(month_of(951_782_400), 200002); // 2000-02-29 (leap day of a 400-year)
        assert_eq!(month_of(951_868_800), 200003); // 2000-03-01
        assert_eq!(month_of(4_107_542_399), 210002); // 2100-02-28 23:59:59
        assert_eq!(month_of(4_107_542_400), 210003); // 2100 is no leap year: March 1st
        assert_eq!(month_of(u32::MAX), 210602); // DateTime's last second, 2106-02-07
    }

    #[test]
    fn runs_split_at_every_month_change_in_seq_order() {
        let month = |m: u32| 1_704_067_200 + m * 31 * 86_400; // 2024-01-01 + m × 31 days
        let rows: Vec<Entry> = [0, 0, 1, 1, 0, 5, 5, 5]
            .iter()
            .enumerate()
            .map(|(i, &m)| {
                let mut r = entry(i as i64 + 1, 1, i as i64);
                r.event_time = month(m);
                r
            })
            .collect();
        let refs: Vec<&Entry> = rows.iter().collect();
        let runs: Vec<Vec<i64>> = month_runs(&refs)
            .iter()
            .map(|r| r.iter().map(|x| x.seq).collect())
            .collect();
        assert_eq!(runs, vec![vec![1, 2], vec![3, 4], vec![5], vec![6, 7, 8]]);
        assert!(month_runs(&[]).is_empty());
    }

    #[test]
    fn due_by_rows_or_age_and_offsets_cover_dead_letters() {
        let t0 = Instant::now();
        let mut b = Batch::new(1);
        assert!(b.is_empty());
        assert!(!b.due(t0, 2, Duration::from_secs(1)));
        b.push(entry(1, 1, 100), t0);
        b.cover(101, t0); // a dead-lettered record
        assert_eq!(b.last_offset, Some(101));
        assert!(!b.due(t0, 2, Duration::from_secs(1)));
        assert!(b.due(t0 + Duration::from_secs(1), 2, Duration::from_secs(1)));
        b.push(entry(2, 2, 102), t0);
        assert!(b.due(t0, 2, Duration::from_secs(1)));
        b.push(entry(1, 1, 103), t0);
        assert_eq!(b.seqs(), vec![1, 2]);
    }

    #[test]
    fn rows_held_over_all_partitions_make_the_batches_due() {
        // Four partitions, each below the budget: together at it. Due per partition, none
        // was, so a sink holding P partitions held P × batch_max_rows rows.
        let t0 = Instant::now();
        let age = Duration::from_secs(60);
        let mut all = Batches::default();
        for p in 0..4 {
            let mut b = Batch::new(1);
            for s in 1..=3 {
                b.push(entry_of(p, s, 1, s), t0);
            }
            assert!(!b.due(t0, 10, age));
            all.insert(p, b);
        }
        assert_eq!(all.rows(), 12);
        assert!(!all.due(t0, 13, age));
        assert!(all.due(t0, 12, age));
        // Taking them leaves each partition an empty batch of its epoch.
        let taken = all.take_nonempty();
        assert_eq!(
            taken.iter().map(|(p, _)| *p).collect::<Vec<_>>(),
            [0, 1, 2, 3]
        );
        assert_eq!(all.rows(), 0);
        assert!(all
            .partitions()
            .iter()
            .all(|p| all.get(*p).is_some_and(Batch::is_empty)));
        // A failed store puts a batch back, unless the partition moved on meanwhile.
        let mut taken = taken.into_iter();
        let (p0, b0) = taken.next().expect("p0");
        all.put_back(p0, b0);
        assert_eq!(all.rows(), 3);
        let (p1, b1) = taken.next().expect("p1");
        all.insert(p1, Batch::new(2));
        all.put_back(p1, b1);
        assert_eq!(
            all.rows(),
            3,
            "a new epoch's batch is not replaced by the old one"
        );
    }

    #[test]
    fn the_deadline_is_the_oldest_record_plus_the_age() {
        let t0 = Instant::now();
        let age = Duration::from_millis(200);
        let mut all = Batches::default();
        assert_eq!(all.deadline(age), None);
        all.insert(0, Batch::new(1));
        assert_eq!(all.deadline(age), None, "an empty batch has no age");
        let mut b = Batch::new(1);
        b.push(entry_of(1, 1, 1, 1), t0 + Duration::from_millis(50));
        all.insert(1, b);
        if let Some(b) = all.get_mut(0) {
            b.cover(7, t0 + Duration::from_millis(80));
            b.push(entry_of(0, 1, 1, 8), t0 + Duration::from_millis(90));
        }
        assert_eq!(all.deadline(age), Some(t0 + Duration::from_millis(250)));
        assert!(!all.due(t0 + Duration::from_millis(249), 100, age));
        assert!(all.due(t0 + Duration::from_millis(250), 100, age));
    }

    #[test]
    fn insert_groups_merge_partitions_per_month_step_by_step() {
        let month = |m: u32| 1_704_067_200 + m * 31 * 86_400; // 2024-01-01 + m × 31 days
        let rows_of = |p: i32, months: &[u32]| -> Vec<Entry> {
            months
                .iter()
                .enumerate()
                .map(|(i, &m)| {
                    let mut r = entry_of(p, i as i64 + 1, 1, i as i64);
                    r.event_time = month(m);
                    r
                })
                .collect()
        };
        let ids = |groups: &[Vec<&Entry>]| -> Vec<Vec<(i32, i64)>> {
            groups
                .iter()
                .map(|g| g.iter().map(|r| (r.chain_partition, r.seq)).collect())
                .collect()
        };
        // The common case: one month, every partition in one INSERT.
        let (a, b) = (rows_of(0, &[0, 0, 0]), rows_of(1, &[0, 0]));
        let parts = vec![a.iter().collect::<Vec<_>>(), b.iter().collect()];
        assert_eq!(
            ids(&insert_groups(&parts)),
            [vec![(0, 1), (0, 2), (0, 3), (1, 1), (1, 2)]]
        );
        // Months 0,0,1 and 1,0: step 1 has runs of months 0 and 1 (two INSERTs), step 2 of
        // 1 and 0 (two more), every INSERT one month, each partition in seq order.
        let (a, b) = (rows_of(0, &[0, 0, 1]), rows_of(1, &[1, 0]));
        let parts = vec![a.iter().collect::<Vec<_>>(), b.iter().collect()];
        let groups = insert_groups(&parts);
        assert_eq!(
            ids(&groups),
            [
                vec![(0, 1), (0, 2)],
                vec![(1, 1)],
                vec![(0, 3)],
                vec![(1, 2)]
            ]
        );
        for g in &groups {
            assert!(g
                .iter()
                .all(|r| month_of(r.event_time) == month_of(g[0].event_time)));
        }
        assert!(insert_groups(&[]).is_empty());
        assert!(insert_groups(&[Vec::new()]).is_empty());
    }
}
