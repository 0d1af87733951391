//! Feeding stored records into `integrity::verify`, whatever the store: one
//! [`PartitionVerifier`] per partition, plus findings the verifier cannot make itself because
//! they happen before a record exists (an unreadable row, a segment object whose digest does not
//! match its manifest, a malformed checkpoint row).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use integrity::checkpoint::KeySet;
use integrity::verify::{
    Finding, FindingKind, OwnedRecord, PartitionReport, PartitionVerifier, Report, StoredRecord,
    VerifyOptions,
};
use schemas::{ChainedEvent, Checkpoint};

/// Settings shared by every partition of one verification run.
#[derive(Debug, Clone)]
pub struct CollectOptions {
    pub keys: KeySet,
    /// `false` when no key set was given: checkpoints are then not fed to the verifier.
    pub check_checkpoints: bool,
    pub chain_id: Option<String>,
    /// See `VerifyOptions::clock_skew_us`.
    pub clock_skew_us: i64,
    pub max_findings: usize,
    /// Only these partitions (empty = all).
    pub partitions: BTreeSet<u32>,
    /// Keep (partition, seq, stored hash) of every record for the cross-store check.
    pub keep_hashes: bool,
    pub progress: bool,
    /// Label of the store in the progress line.
    pub label: &'static str,
    /// Keep the stored hash of these (partition → seqs): the seqs of trusted checkpoints
    /// (pins), checked against the store after the run (`crate::anchors`).
    pub capture: BTreeMap<u32, BTreeSet<u64>>,
    /// Also keep the stored hash at every checkpoint's seq (the witness cosigns the newest
    /// checkpoint that matched, and needs its head).
    pub capture_checkpoint_seqs: bool,
}

/// What a run learned beyond the report: the stored hash at each captured (partition, seq)
/// (first copy), and the chain ids the store's checkpoints name.
#[derive(Debug, Clone, Default)]
pub struct Captured {
    pub hashes: BTreeMap<(u32, u64), Vec<u8>>,
    pub chain_ids: BTreeSet<String>,
    /// The store's whole-tree (v3) checkpoint records by (partition, seq), as read (not yet
    /// checked): `verify --save-checkpoints` and `auditctl witness` pin the chainer's own
    /// signed note at the seq the verifier sealed, after checking it with the key set.
    pub v3: BTreeMap<(u32, u64), Vec<Checkpoint>>,
}

/// A stored record rebuilt into what the verifier takes: the canonical re-encoding of its
/// event, or why it cannot be rebuilt (with the chain fields that could still be read). This is
/// the costly per-record step of a store that keeps decoded events (ClickHouse rows), so it is
/// made apart from the [`Collector`] (on other threads, ahead of it) and fed in store order
/// with [`Collector::push_prepared`].
#[derive(Debug, Clone)]
pub enum Prepared {
    Record {
        partition: i32,
        rec: OwnedRecord,
        receive_time_us: i64,
    },
    Unreadable {
        partition: i32,
        seq: i64,
        prev_hash: Vec<u8>,
        hash: Vec<u8>,
        event_id: String,
        why: String,
    },
}

impl Prepared {
    /// Re-encode a `ChainedEvent` as the store gave it back (its hashes and id moved, not
    /// copied).
    pub fn from_chained(c: ChainedEvent) -> Self {
        let mut canonical = Vec::with_capacity(512);
        let encoded = schemas::avro::canonical_bytes_version_into(
            &c.event,
            c.canonical_version,
            &mut canonical,
        );
        match encoded {
            Ok(()) => Prepared::Record {
                partition: c.chain_partition,
                receive_time_us: c.event.receive_time_us,
                rec: OwnedRecord {
                    seq: c.seq,
                    prev_hash: c.prev_hash,
                    hash: c.hash,
                    canonical,
                    canonical_version: c.canonical_version,
                    event_id: c.event.event_id,
                    copy: None,
                },
            },
            Err(e) => Prepared::Unreadable {
                partition: c.chain_partition,
                seq: c.seq,
                prev_hash: c.prev_hash,
                hash: c.hash,
                event_id: c.event.event_id,
                why: format!("cannot re-encode the event: {e}"),
            },
        }
    }

    /// The seq the store gave this record.
    pub fn seq(&self) -> i64 {
        match self {
            Prepared::Record { rec, .. } => rec.seq,
            Prepared::Unreadable { seq, .. } => *seq,
        }
    }
}

/// One stored (partition, seq) and the hash the store holds for it.
pub type StoredHash = (i32, i64, Vec<u8>);

#[derive(Debug)]
pub struct Collector {
    opts: CollectOptions,
    checkpoints: BTreeMap<u32, Vec<Checkpoint>>,
    verifiers: BTreeMap<u32, PartitionVerifier>,
    /// Findings from outside the verifier, by partition; listed before the verifier's own
    /// findings at the same seq (they say why the record looks the way it does).
    extra: BTreeMap<i32, Vec<Finding>>,
    hashes: Vec<StoredHash>,
    captured: Captured,
    events: u64,
    progress: Progress,
    /// Set on a collector made by [`Collector::split`]: the one partition it verifies.
    only: Option<u32>,
    /// A split collector was handed a record of another partition (see [`Collector::join`]).
    foreign: bool,
}

/// A finding made outside the verifier.
pub fn finding(
    partition: i32,
    seq: i64,
    kind: FindingKind,
    event_id: Option<&str>,
    detail: String,
) -> Finding {
    Finding {
        partition,
        seq,
        kind,
        severity: kind.severity(),
        event_id: event_id.filter(|s| !s.is_empty()).map(str::to_owned),
        detail,
    }
}

impl Collector {
    pub fn new(mut opts: CollectOptions, checkpoints: Vec<Checkpoint>) -> Self {
        let mut by_partition: BTreeMap<u32, Vec<Checkpoint>> = BTreeMap::new();
        let mut extra: BTreeMap<i32, Vec<Finding>> = BTreeMap::new();
        let mut captured = Captured::default();
        if opts.check_checkpoints {
            for cp in checkpoints {
                captured.chain_ids.insert(cp.chain_id.clone());
                if let (false, Ok(p), Ok(seq)) = (
                    cp.tree_root.is_empty(),
                    u32::try_from(cp.partition),
                    u64::try_from(cp.seq),
                ) {
                    captured.v3.entry((p, seq)).or_default().push(cp.clone());
                }
                if let (true, Ok(p), Ok(seq)) = (
                    opts.capture_checkpoint_seqs,
                    u32::try_from(cp.partition),
                    u64::try_from(cp.seq),
                ) {
                    opts.capture.entry(p).or_default().insert(seq);
                }
                match u32::try_from(cp.partition) {
                    Ok(p) => by_partition.entry(p).or_default().push(cp),
                    Err(_) => extra.entry(cp.partition).or_default().push(finding(
                        cp.partition,
                        cp.seq,
                        FindingKind::MalformedCheckpoint,
                        None,
                        format!("checkpoint with negative partition {}", cp.partition),
                    )),
                }
            }
        }
        let progress = Progress::owned(if opts.progress {
            let pb = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
            pb.set_style(spinner_style());
            pb.set_message(format!("verifying {}", opts.label));
            // Keeps the spinner and rate moving while a slow query or download is waiting.
            pb.enable_steady_tick(Duration::from_millis(200));
            pb
        } else {
            ProgressBar::hidden()
        });
        let mut c = Self {
            opts,
            checkpoints: by_partition,
            verifiers: BTreeMap::new(),
            extra,
            hashes: Vec::new(),
            captured,
            events: 0,
            progress,
            only: None,
            foreign: false,
        };
        // Partitions that have checkpoints but no records at all must still be reported
        // (everything was deleted: a truncated tail).
        let with_cps: Vec<u32> = c.checkpoints.keys().copied().collect();
        for p in with_cps {
            if c.wanted(p) {
                c.verifier(p);
            }
        }
        c
    }

    /// How many records the store holds for this run (as far as it can tell cheaply): turns
    /// the spinner into a bar with an ETA.
    pub fn set_total(&mut self, total: u64) {
        if total > 0 && !self.progress.0.is_hidden() {
            self.progress.0.set_style(bar_style());
            self.progress.0.set_length(total);
        }
    }

    /// What is being read now (e.g. `partition 3`), shown after the store's label.
    pub fn set_stage(&mut self, stage: &str) {
        if !self.progress.0.is_hidden() {
            self.progress
                .0
                .set_message(format!("verifying {} {stage}", self.opts.label));
        }
    }

    /// Bring the progress line up to date (after a window or segment; records only move it
    /// every 256).
    pub fn sync_progress(&self) {
        // A split collector counts only its own records: the whole run's position is set
        // when it is joined.
        if self.only.is_none() {
            self.progress.0.set_position(self.events);
        }
    }

    /// A collector for one partition alone, to be verified apart (on another core) and then
    /// [`Self::join`]ed back: it takes the partition's verifier (if there is one yet) and its
    /// checkpoints, and keeps its own findings, stored hashes and captures. Partitions are
    /// independent chains, so verifying them apart and joining them in partition order gives
    /// what feeding them one after the other gives, as long as each is fed only its own
    /// records (else [`Self::join`] says so).
    pub fn split(&mut self, partition: u32) -> Collector {
        let mut opts = self.opts.clone();
        opts.capture = self
            .opts
            .capture
            .get(&partition)
            .map(|s| BTreeMap::from([(partition, s.clone())]))
            .unwrap_or_default();
        Collector {
            opts,
            checkpoints: self
                .checkpoints
                .get(&partition)
                .map(|c| BTreeMap::from([(partition, c.clone())]))
                .unwrap_or_default(),
            verifiers: self
                .verifiers
                .remove(&partition)
                .map(|v| BTreeMap::from([(partition, v)]))
                .unwrap_or_default(),
            extra: BTreeMap::new(),
            hashes: Vec::new(),
            captured: Captured::default(),
            events: 0,
            progress: Progress::shared(&self.progress),
            only: Some(partition),
            foreign: false,
        }
    }

    /// Takes back a collector made by [`Self::split`] (join them in partition order, the
    /// order a sequential run reads them). `false` if it was handed a record of another
    /// partition: where that record falls among the other partition's own records depends on
    /// the order of reading, so the run must be made again without splitting (what it has
    /// joined so far is then meaningless).
    #[must_use]
    pub fn join(&mut self, part: Collector) -> bool {
        if part.foreign {
            return false;
        }
        self.verifiers.extend(part.verifiers);
        for (p, mut found) in part.extra {
            // A finding about another partition only needs that partition reported; its
            // findings stay in reading order (the partitions' own ones are joined in order).
            if let Ok(q) = u32::try_from(p) {
                if self.wanted(q) {
                    self.verifier(q);
                }
            }
            self.extra.entry(p).or_default().append(&mut found);
        }
        self.hashes.extend(part.hashes);
        for (k, h) in part.captured.hashes {
            self.captured.hashes.entry(k).or_insert(h);
        }
        self.events += part.events;
        self.sync_progress();
        true
    }

    fn wanted(&self, partition: u32) -> bool {
        self.opts.partitions.is_empty() || self.opts.partitions.contains(&partition)
    }

    fn verifier(&mut self, partition: u32) -> &mut PartitionVerifier {
        let opts = VerifyOptions {
            chain_id: self.opts.chain_id.clone(),
            max_findings: self.opts.max_findings,
            clock_skew_us: self.opts.clock_skew_us,
            ..VerifyOptions::default()
        };
        let keys = &self.opts.keys;
        let cps = self
            .checkpoints
            .get(&partition)
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        self.verifiers
            .entry(partition)
            .or_insert_with(|| PartitionVerifier::new(partition, keys, cps, opts))
    }

    /// Record a finding about `partition` that the verifier cannot see.
    pub fn add_finding(&mut self, f: Finding) {
        if let Ok(p) = u32::try_from(f.partition) {
            if !self.wanted(p) {
                return;
            }
            // Make sure the partition is reported even if no record of it is ever pushed
            // (another partition's verifier is not a split collector's: `join` sees to it).
            if self.only.is_none_or(|o| o == p) {
                self.verifier(p);
            }
        }
        self.extra.entry(f.partition).or_default().push(f);
    }

    /// Feed one stored record (in store order).
    pub fn push(&mut self, partition: i32, r: &StoredRecord<'_>) {
        self.push_timed(partition, r, None);
    }

    /// [`Self::push`] with the event's `receive_time_us`, which the checkpoint covering it
    /// must not predate (`checkpoint_backdated`).
    pub fn push_timed(
        &mut self,
        partition: i32,
        r: &StoredRecord<'_>,
        receive_time_us: Option<i64>,
    ) {
        let Ok(p) = u32::try_from(partition) else {
            self.add_finding(finding(
                partition,
                r.seq,
                FindingKind::MalformedRecord,
                Some(r.event_id),
                format!("record with negative partition {partition}"),
            ));
            return;
        };
        if !self.wanted(p) {
            return;
        }
        if self.only.is_some_and(|o| o != p) {
            self.foreign = true;
            return;
        }
        self.events += 1;
        if self.events % 256 == 0 {
            if self.only.is_none() {
                self.progress.0.set_position(self.events);
            } else {
                self.progress.0.inc(256);
            }
        }
        if self.opts.keep_hashes {
            self.hashes.push((partition, r.seq, r.hash.to_vec()));
        }
        if let Ok(seq) = u64::try_from(r.seq) {
            if self.opts.capture.get(&p).is_some_and(|s| s.contains(&seq)) {
                self.captured
                    .hashes
                    .entry((p, seq))
                    .or_insert_with(|| r.hash.to_vec());
            }
        }
        self.verifier(p).push_timed(r, receive_time_us);
    }

    /// Feed a record rebuilt ahead of time (see [`Prepared`]).
    pub fn push_prepared(&mut self, p: &Prepared) {
        match p {
            Prepared::Record {
                partition,
                rec,
                receive_time_us,
            } => self.push_timed(*partition, &rec.as_stored(), Some(*receive_time_us)),
            Prepared::Unreadable {
                partition,
                seq,
                prev_hash,
                hash,
                event_id,
                why,
            } => self.push_unreadable(*partition, *seq, prev_hash, hash, event_id, why.clone()),
        }
    }

    /// A record read as stored bytes (an archive segment, `schemas::raw_segment`): its event's
    /// canonical bytes are hashed as they are, with no decode and re-encode.
    pub fn push_raw(&mut self, r: &schemas::raw_segment::RawChained) {
        self.push_raw_ref(&r.as_raw_ref());
    }

    /// [`Self::push_raw`] of a record borrowed from its block.
    pub fn push_raw_ref(&mut self, r: &schemas::raw_segment::RawRef<'_>) {
        let rec = StoredRecord {
            seq: r.seq,
            prev_hash: r.prev_hash,
            hash: r.hash,
            canonical: r.canonical,
            canonical_version: r.canonical_version,
            event_id: r.event_id,
            copy: None,
        };
        self.push_timed(r.chain_partition, &rec, Some(r.receive_time_us));
    }

    /// A record whose event cannot be rebuilt: reported as malformed, and fed to the verifier
    /// with no content so that the chain around it is still judged.
    pub fn push_unreadable(
        &mut self,
        partition: i32,
        seq: i64,
        prev_hash: &[u8],
        hash: &[u8],
        event_id: &str,
        why: String,
    ) {
        self.add_finding(finding(
            partition,
            seq,
            FindingKind::MalformedRecord,
            Some(event_id),
            why,
        ));
        let r = StoredRecord {
            seq,
            prev_hash,
            hash,
            canonical: &[],
            event_id,
            copy: None,
            canonical_version: schemas::avro::CANONICAL_VERSION,
        };
        self.push(partition, &r);
    }

    pub fn events(&self) -> u64 {
        self.events
    }

    /// What was captured so far (see [`CollectOptions::capture`]); call before [`Self::finish`].
    pub fn take_captured(&mut self) -> Captured {
        std::mem::take(&mut self.captured)
    }

    /// Judge the last records and build the report (partitions in ascending order).
    pub fn finish(self) -> (Report, Vec<StoredHash>) {
        self.progress.0.finish_and_clear();
        let mut extra = self.extra;
        let mut parts: Vec<PartitionReport> = Vec::new();
        for (p, v) in self.verifiers {
            let mut rep = v.finish();
            if let Some(mut ex) = extra.remove(&(p as i32)) {
                merge(&mut rep, &mut ex);
            }
            parts.push(rep);
        }
        // Partitions that exist only through findings (negative partition numbers).
        for (p, mut ex) in extra {
            let mut rep = PartitionReport {
                partition: p,
                first_seq: None,
                last_seq: None,
                events: 0,
                head_seq: 0,
                head: hex::encode([0u8; 32]),
                sealed_through: None,
                findings: Vec::new(),
                findings_dropped: 0,
                ok: true,
            };
            merge(&mut rep, &mut ex);
            parts.push(rep);
        }
        parts.sort_by_key(|r| r.partition);
        (Report::new(parts), self.hashes)
    }
}

/// The progress line on stderr; cleared however the run ends (also on an error), so that
/// the error message is not glued to a half-drawn bar. A split collector shares its parent's
/// line and leaves it alone when it is dropped.
#[derive(Debug)]
struct Progress(ProgressBar, bool);

impl Progress {
    fn owned(bar: ProgressBar) -> Self {
        Self(bar, true)
    }

    fn shared(parent: &Progress) -> Self {
        Self(parent.0.clone(), false)
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if self.1 {
            self.0.finish_and_clear();
        }
    }
}

fn spinner_style() -> ProgressStyle {
    ProgressStyle::with_template("{spinner} {msg}: {human_pos} records ({per_sec}, {elapsed})")
        .unwrap_or_else(|_| ProgressStyle::default_spinner())
}

fn bar_style() -> ProgressStyle {
    ProgressStyle::with_template(
        "{spinner} {msg} [{wide_bar}] {human_pos}/{human_len} records ({per_sec}, eta {eta})",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar())
}

fn merge(rep: &mut PartitionReport, extra: &mut Vec<Finding>) {
    if extra
        .iter()
        .any(|f| f.severity == integrity::verify::Severity::Error)
    {
        rep.ok = false;
    }
    let mut all = std::mem::take(extra);
    all.append(&mut rep.findings);
    // Stable: at equal seq, the outside finding (the cause) comes first.
    all.sort_by_key(|f| f.seq);
    rep.findings = all;
}
