//! Recovery of a partition from durable state, on every (re)assignment.
//!
//! Order matters: the latest signed checkpoint of the partition is read **first**, then the
//! tail of `chained`/p. A checkpoint covers only records the broker had acknowledged before it
//! was published, so one read before the tail can never legitimately be ahead of it; read the
//! other way round, a checkpoint published in between (by a zombie or the previous owner still
//! draining) would look like truncation.
//!
//! The tail gives the head `(seq, hash)`, its source offset and the dedup window:
//! - **Gaps.** The idempotent producer can lose in-flight records when they time out (seqs
//!   1, 4, 5 in the log). The head is the end of the contiguous prefix (seq 1 there): records
//!   after a gap are re-chained with identical bytes (sinks keep first copies), and the window
//!   and link hashes hold only records of the prefix. Records that repeat an earlier seq (a
//!   paused zombie's identical copies) are harmless: the first copy of each seq counts.
//! - **W distinct records.** The window is the last W distinct chained seqs, not the last W
//!   offsets: zombie copies would otherwise make a recovered instance and a live one decide
//!   differently. The tail is read backwards in growing chunks until W distinct seqs of the
//!   prefix (or the log start) are covered.
//! - **Retention.** A chained partition emptied by retention (log start > 0, or no record but a
//!   signed checkpoint of it) resumes from the latest signed checkpoint `(seq, head hash)`,
//!   with the next source offset from the chainer group's committed offset on the enriched
//!   partition.
//! - **Replays.** The committed offset is also handed to the state machine, so dead letters
//!   below it (already on the rejected topic) are not sent again.
//!
//! [`TailReader`] and [`CheckpointFinder`] are pure (fed record by record), so they are
//! unit-tested without a broker; [`read_tail`] and [`scan_checkpoints`] do the reading.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use integrity::chain::{hash32, schema_fingerprint, seq_u64, ChainHead, ChainRule, Hash32};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::{Message, Offset, TopicPartitionList};
use schemas::dedup::{DedupWindow, IdDigest};
use schemas::framing::{decode_chained, decode_checkpoint};
use schemas::identity::{content_digest, dedup_key, ContentDigest};
use schemas::Checkpoint;
use worker_runtime::kafka::tail::{scan, ScanStart, Watermarks};
use worker_runtime::kafka::{AuditConsumer, KafkaArgs, Topics};
use worker_runtime::RuntimeError;

use crate::checkpoints::{checkpoint_partition, range_start, CheckpointRange, Signer};
use crate::error::Error;
use crate::metrics as m;
use crate::partition::{PartitionChain, Resume};

/// The last chained record of a partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TailHead {
    pub seq: u64,
    pub hash: Hash32,
    pub source_offset: i64,
}

/// What the tail of `chained`/p says.
#[derive(Debug, Clone)]
pub struct TailSummary {
    /// The end of the contiguous prefix (`None`: resume at genesis).
    pub head: Option<TailHead>,
    pub dedup: DedupWindow,
    /// The last link hashes, contiguous, in seq order, ending at the head.
    pub hashes: Vec<(u64, Hash32)>,
    /// Repeated seqs (zombie copies), differing copies of one seq, broken links and gaps: not
    /// fatal here (the verifier reports them), but logged.
    pub anomalies: u64,
    /// Highest seq in the tail, when a gap made the head stop below it: the records above the
    /// head are re-chained.
    pub beyond_gap: Option<u64>,
    pub records: u64,
    /// The link rule the partition's records use (`None`: no record read recomputed under
    /// either rule, e.g. an empty partition).
    pub rule: Option<ChainRule>,
}

/// One distinct chained seq, as recovery needs it.
#[derive(Debug, Clone, Copy)]
struct TailEntry {
    offset: i64,
    hash: Hash32,
    prev: Hash32,
    source_offset: i64,
    key: IdDigest,
    content: ContentDigest,
}

/// Where the tail's head is, given what was read so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolution {
    /// Resume after this seq (`None`: at genesis).
    Head(Option<u64>),
    /// The records read cannot decide (a hole whose missing seq may sit before the region read,
    /// or fewer than W distinct seqs): read further back.
    NeedMore,
}

/// Folds records of `chained`/p, in any order of chunks (offset order inside a chunk), keeping
/// the first copy (lowest offset) of each seq.
#[derive(Debug)]
pub struct TailReader {
    partition: i32,
    window: usize,
    keep_hashes: usize,
    /// Seq of the latest signed checkpoint (0: none): hashes are kept back to it as far as the
    /// scan read, whatever `keep_hashes` says.
    checkpointed_through: u64,
    max_burst: u64,
    entries: BTreeMap<u64, TailEntry>,
    repeats: u64,
    forks: u64,
    records: u64,
    error: Option<String>,
    /// The partition's link rule, from the first record that recomputes under one.
    rule: Option<ChainRule>,
}

/// Default for [`TailReader::max_burst`]: the chainer's default `max_in_flight` up to the
/// twentieth session (2,000 since), so a tail written by an older chainer reads the same.
pub const DEFAULT_MAX_BURST: u64 = 10_000;

impl TailReader {
    /// `window`: dedup window size W; `keep_hashes`: how many trailing link hashes to keep for
    /// the checkpoint range.
    pub fn new(partition: i32, window: usize, keep_hashes: usize) -> Self {
        Self {
            partition,
            window,
            keep_hashes,
            checkpointed_through: 0,
            max_burst: DEFAULT_MAX_BURST,
            entries: BTreeMap::new(),
            repeats: 0,
            forks: 0,
            records: 0,
            error: None,
            rule: None,
        }
    }

    /// The most records a writer can have landed after a lost one (its in-flight limit): a run
    /// longer than this above a hole did not follow a lost write, so the hole is not a gap of
    /// the current chain (it is before the region read, or an old anomaly the verifier reports).
    pub fn max_burst(mut self, n: u64) -> Self {
        self.max_burst = n.max(1);
        self
    }

    /// The latest signed checkpoint's seq: [`TailSummary::hashes`] then reach back to the seq
    /// after it when the scan read that far, so that the next checkpoint range covers every seq
    /// since. `keep_hashes` (a checkpoint interval plus the in-flight limit) is what an
    /// unacknowledged tail spans, but checkpoints in flight when the broker went away add to
    /// it: a broker-outage test saw 1,600 seqs after the last landed checkpoint with 1,066 kept,
    /// and the range restarted after the head, leaving those seqs under no checkpoint's root.
    pub fn checkpointed_through(mut self, seq: u64) -> Self {
        self.checkpointed_through = seq;
        self
    }

    /// How many distinct seqs the window and hashes need.
    fn need(&self) -> u64 {
        self.window.max(self.keep_hashes).max(1) as u64
    }

    pub fn push(&mut self, offset: i64, payload: Option<&[u8]>) {
        if self.error.is_some() {
            return;
        }
        self.records += 1;
        if let Err(e) = self.try_push(offset, payload) {
            self.error = Some(format!("chained record at offset {offset}: {e}"));
        }
    }

    fn try_push(&mut self, offset: i64, payload: Option<&[u8]>) -> Result<(), String> {
        // Only the chainer writes this topic, in one framing; a record it cannot read means the
        // topic is not what we think it is, and guessing a head from it could fork the chain.
        let bytes = payload.ok_or("no value")?;
        let rec = decode_chained(bytes, None).map_err(|e| e.to_string())?;
        if rec.chain_partition != self.partition {
            return Err(format!(
                "belongs to chain partition {}, not {}",
                rec.chain_partition, self.partition
            ));
        }
        let seq = seq_u64(rec.seq).map_err(|e| e.to_string())?;
        let hash = hash32("hash", &rec.hash).map_err(|e| e.to_string())?;
        let prev = hash32("prev_hash", &rec.prev_hash).map_err(|e| e.to_string())?;
        if self.rule.is_none() {
            // A partition keeps the rule it was started with: the chain resumes under the rule
            // its records recompute under (one record decides; a tampered one decides nothing).
            let mut canonical = Vec::with_capacity(1024);
            if schemas::avro::canonical_bytes_version_into(
                &rec.event,
                rec.canonical_version,
                &mut canonical,
            )
            .is_ok()
            {
                if let Some(fp) = schema_fingerprint(rec.canonical_version) {
                    let p = u32::try_from(self.partition).unwrap_or_default();
                    self.rule = ChainRule::detect(p, seq, fp, &prev, &canonical, &hash);
                }
            }
        }
        let entry = TailEntry {
            offset,
            hash,
            prev,
            source_offset: rec.source_offset,
            key: dedup_key(&rec.event),
            content: content_digest(&rec.event).map_err(|e| e.to_string())?,
        };
        match self.entries.get_mut(&seq) {
            None => {
                self.entries.insert(seq, entry);
            }
            Some(have) => {
                if have.hash == hash {
                    self.repeats += 1;
                    tracing::warn!(
                        partition = self.partition,
                        offset,
                        seq,
                        "chained record repeats an earlier seq (zombie copy?); keeping the first"
                    );
                } else {
                    self.forks += 1;
                    tracing::error!(
                        partition = self.partition,
                        offset,
                        seq,
                        other = have.offset,
                        "two different chained records with one seq (fork); keeping the first"
                    );
                }
                if offset < have.offset {
                    *have = entry;
                }
            }
        }
        Ok(())
    }

    /// Whether `seq`'s record links to `seq - 1`'s (both read).
    fn linked(&self, seq: u64) -> bool {
        match (
            self.entries.get(&seq),
            seq.checked_sub(1).and_then(|s| self.entries.get(&s)),
        ) {
            (Some(e), Some(p)) => e.prev == p.hash,
            _ => false,
        }
    }

    /// The lowest seq of the contiguous, linked run that ends at `top`.
    fn run_start(&self, top: u64) -> u64 {
        let mut b = top;
        while b > 1 && self.linked(b) {
            b -= 1;
        }
        b
    }

    /// Decides the head from what was read. `at_log_start`: the records read reach the first
    /// offset of the partition, whose low watermark is `low`. `durable_through`: the latest
    /// signed checkpoint's seq (0: none); every seq up to it was acknowledged by the broker, so
    /// a hole there is never a lost write.
    pub fn resolve(&self, at_log_start: bool, low: i64, durable_through: u64) -> Resolution {
        let Some((&max, _)) = self.entries.last_key_value() else {
            return Resolution::Head(None);
        };
        let mut top = max;
        let head = loop {
            let b = self.run_start(top);
            if b == 1 || top - b + 1 > self.max_burst || b - 1 <= durable_through {
                break top;
            }
            if self.entries.contains_key(&(b - 1)) {
                // Both present but not linked: a fork, reported as an anomaly; the chain as
                // read continues from the top.
                break top;
            }
            // A hole at b - 1 right below a short run: lost write, or a record before the
            // region read?
            match self.entries.range(..b - 1).next_back().map(|(&s, _)| s) {
                None if at_log_start && low == 0 => {
                    // The log never held b - 1: the chain's first records were lost.
                    return Resolution::Head(None);
                }
                // Older records were deleted by retention: nothing more to know.
                None if at_log_start => break top,
                None => return Resolution::NeedMore,
                Some(below) => {
                    let lower_run = below - self.run_start(below) + 1;
                    if at_log_start || lower_run > self.max_burst {
                        // A long run below the hole: records of the same writer, whose next
                        // ones were lost. Resume after them.
                        top = below;
                        continue;
                    }
                    return Resolution::NeedMore;
                }
            }
        };
        let distinct = self.entries.range(..=head).count() as u64;
        if at_log_start || distinct >= self.need() {
            Resolution::Head(Some(head))
        } else {
            Resolution::NeedMore
        }
    }

    /// `Some(detail)` if the checkpoint `(seq, hash)` contradicts a record read: the chained
    /// topic was rewritten.
    pub fn contradicts(&self, checkpoint: Option<(u64, Hash32)>) -> Option<String> {
        let (seq, hash) = checkpoint?;
        let e = self.entries.get(&seq)?;
        (e.hash != hash).then(|| {
            format!(
                "the signed checkpoint at seq {seq} has head {} but the chained record at offset \
                 {} has {}: the chained topic was rewritten; refusing to continue",
                hex::encode(hash),
                e.offset,
                hex::encode(e.hash)
            )
        })
    }

    /// The summary for a log read from its start, without checkpoints (tests, tools).
    pub fn finish(self) -> Result<TailSummary, String> {
        let head = match self.resolve(true, 0, 0) {
            Resolution::Head(h) => h,
            Resolution::NeedMore => self.entries.last_key_value().map(|(&s, _)| s),
        };
        self.finish_at(head)
    }

    /// The summary resuming after `head` (from [`TailReader::resolve`]).
    pub fn finish_at(self, head: Option<u64>) -> Result<TailSummary, String> {
        if let Some(e) = self.error {
            return Err(e);
        }
        let top = self.entries.last_key_value().map(|(&s, _)| s);
        let head_entry = head.and_then(|h| self.entries.get(&h).map(|e| (h, e)));
        let mut dedup = DedupWindow::new(self.window);
        let mut hashes = Vec::new();
        if let Some((h, _)) = head_entry {
            // The window: the last W distinct seqs of the prefix, oldest first, as the live
            // instance recorded them.
            let window: Vec<_> = self
                .entries
                .range(..=h)
                .rev()
                .take(self.window)
                .map(|(_, e)| (e.key, e.content))
                .collect();
            for (k, c) in window.into_iter().rev() {
                dedup.record(k, c);
            }
            if self.keep_hashes > 0 {
                let mut keep_from = h.saturating_sub(self.keep_hashes as u64 - 1);
                if self.checkpointed_through > 0 {
                    keep_from = keep_from.min(self.checkpointed_through + 1);
                }
                let from = self.run_start(h).max(keep_from);
                hashes = self
                    .entries
                    .range(from..=h)
                    .map(|(&s, e)| (s, e.hash))
                    .collect();
            }
        }
        let beyond_gap = top.filter(|&t| Some(t) != head);
        let broken = self
            .entries
            .keys()
            .filter(|&&s| s > 1 && !self.linked(s) && self.entries.contains_key(&(s - 1)))
            .count() as u64;
        Ok(TailSummary {
            head: head_entry.map(|(seq, e)| TailHead {
                seq,
                hash: e.hash,
                source_offset: e.source_offset,
            }),
            dedup,
            hashes,
            anomalies: self.repeats + self.forks + broken + u64::from(beyond_gap.is_some()),
            beyond_gap,
            records: self.records,
            rule: self.rule,
        })
    }
}

impl TailSummary {
    /// The chain head to resume from.
    pub fn chain_head(
        &self,
        partition: i32,
        chain_id: &str,
    ) -> Result<ChainHead, integrity::chain::ChainError> {
        let p = integrity::chain::partition_u32(partition)?;
        let rule = self.resume_rule();
        match self.head {
            Some(h) => ChainHead::resume_with(rule, p, h.seq, h.hash),
            None => Ok(ChainHead::genesis_with(rule, chain_id, p)),
        }
    }

    /// The rule the chain goes on with: its records' rule; `audit-chain/v2` for a new chain.
    /// Records that recompute under neither rule (only a tampered tail) resume under v1, the
    /// rule of every chain written before v2, and the verifier reports them.
    pub fn resume_rule(&self) -> ChainRule {
        match (self.rule, self.records) {
            (Some(r), _) => r,
            (None, 0) => ChainRule::V2,
            (None, _) => ChainRule::V1,
        }
    }
}

/// Keeps the latest checkpoint (highest seq) of one partition of one chain.
#[derive(Debug)]
pub struct CheckpointFinder {
    chain_id: String,
    partition: i32,
    best: Option<(u64, Hash32)>,
    /// The whole record of `best` (its newest signature): what heartbeats re-sign.
    best_record: Option<Checkpoint>,
    /// The input offset after `best`'s last link, from its record's header (chainers before
    /// this header did not write it).
    best_next_source: Option<i64>,
    /// `best`'s [`HEADER_TREE_PEAKS`](crate::checkpoints::HEADER_TREE_PEAKS), if any.
    best_peaks: Option<Vec<u8>>,
    /// `best`'s [`HEADER_CHAIN_RULE`](crate::checkpoints::HEADER_CHAIN_RULE), if any.
    best_rule: Option<ChainRule>,
    unreadable: u64,
}

impl CheckpointFinder {
    pub fn new(chain_id: &str, partition: i32) -> Self {
        Self {
            chain_id: chain_id.to_owned(),
            partition,
            best: None,
            best_record: None,
            best_next_source: None,
            best_peaks: None,
            best_rule: None,
            unreadable: 0,
        }
    }

    /// One record of the checkpoints topic: its payload and its
    /// [`HEADER_NEXT_SOURCE_OFFSET`](crate::task::HEADER_NEXT_SOURCE_OFFSET) header, if any.
    pub fn push(&mut self, payload: Option<&[u8]>, next_source: Option<i64>) {
        self.push_with_peaks(payload, next_source, None, None);
    }

    /// [`Self::push`], with the record's
    /// [`HEADER_TREE_PEAKS`](crate::checkpoints::HEADER_TREE_PEAKS) header, if any.
    pub fn push_with_peaks(
        &mut self,
        payload: Option<&[u8]>,
        next_source: Option<i64>,
        peaks: Option<&[u8]>,
        rule: Option<ChainRule>,
    ) {
        let Some(cp) = payload.and_then(|b| decode_checkpoint(b, None).ok()) else {
            self.unreadable += 1;
            return;
        };
        if cp.chain_id != self.chain_id || cp.partition != self.partition {
            return;
        }
        let (Ok(seq), Ok(head)) = (seq_u64(cp.seq), hash32("head_hash", &cp.head_hash)) else {
            self.unreadable += 1;
            return;
        };
        if self.best.is_none_or(|(s, _)| seq > s) {
            self.best = Some((seq, head));
            self.best_record = Some(cp);
            self.best_next_source = next_source;
            self.best_peaks = peaks.map(<[u8]>::to_vec);
            self.best_rule = rule;
        } else if self.best == Some((seq, head)) {
            // A heartbeat of the same head, read later (newer): keep its time.
            self.best_record = Some(cp);
            self.best_next_source = next_source.or(self.best_next_source);
            if let Some(p) = peaks {
                self.best_peaks = Some(p.to_vec());
            }
            self.best_rule = rule.or(self.best_rule);
        }
    }

    /// The latest checkpoint's fields (as signed), if it is well-formed.
    pub fn latest_fields(&self) -> Option<integrity::checkpoint::CheckpointFields> {
        let cp = self.best_record.as_ref()?;
        integrity::checkpoint::SignedCheckpoint::try_from(cp)
            .ok()
            .map(|s| s.fields)
    }

    pub fn latest(&self) -> Option<(u64, Hash32)> {
        self.best
    }

    /// The link rule of the chain at the latest checkpoint, from its record's header.
    pub fn latest_rule(&self) -> Option<ChainRule> {
        self.best_rule
    }

    /// The latest checkpoint's header peaks, as recorded (see [`Self::latest_whole_tree`]).
    pub fn latest_peaks(&self) -> Option<Vec<u8>> {
        self.best_peaks.clone()
    }

    /// The partition's whole tree at the latest checkpoint: its header peaks, only if they
    /// fold to the root the checkpoint signs (a v3 checkpoint; range-only ones have none).
    pub fn latest_whole_tree(&self) -> Option<integrity::tree::CompactRange> {
        let fields = self.latest_fields()?;
        crate::checkpoints::decode_peaks(&fields, self.best_peaks.as_deref()?)
    }

    /// Where the input resumes after the latest checkpoint's last link, if its record says.
    pub fn latest_next_source(&self) -> Option<i64> {
        self.best_next_source
    }

    pub fn unreadable(&self) -> u64 {
        self.unreadable
    }
}

/// How [`read_tail`] reads.
#[derive(Debug, Clone, Copy)]
pub struct TailScan {
    /// Give up if no record arrives for this long while a chunk is being read.
    pub idle_timeout: Duration,
    /// Seq of the latest signed checkpoint (0: none), see [`TailReader::resolve`].
    pub durable_through: u64,
}

/// Reads `chained`/p backwards in growing chunks until `reader` can resolve the head; returns
/// the reader, the resolution and the partition's watermarks at the start.
pub async fn read_tail(
    args: &KafkaArgs,
    topic: &str,
    partition: i32,
    reader: TailReader,
    how: TailScan,
) -> Result<(TailReader, Resolution, Watermarks), Error> {
    let mut cfg = args.client_config("audit-tail");
    cfg.set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .set("isolation.level", "read_committed")
        .set("group.id", "audit-scan-unused");
    let t = topic.to_owned();
    tokio::task::spawn_blocking(move || read_tail_blocking(cfg, &t, partition, reader, how))
        .await
        .map_err(|e| RuntimeError::Task {
            task: "chained tail scan".into(),
            message: e.to_string(),
        })?
}

fn read_tail_blocking(
    cfg: rdkafka::ClientConfig,
    topic: &str,
    partition: i32,
    mut reader: TailReader,
    how: TailScan,
) -> Result<(TailReader, Resolution, Watermarks), Error> {
    let ctx = |what: &str| format!("{what} {topic}/{partition}");
    let consumer: BaseConsumer = cfg
        .create()
        .map_err(|e| RuntimeError::kafka(ctx("creating tail consumer for"), e))?;
    let (low, high) = consumer
        .fetch_watermarks(topic, partition, Duration::from_secs(10))
        .map_err(|e| RuntimeError::kafka(ctx("fetching watermarks of"), e))?;
    let marks = Watermarks { low, high };
    if high <= low {
        return Ok((reader, Resolution::Head(None), marks));
    }
    let need = reader.need() as i64;
    let mut chunk = need.max(1);
    let mut to = high;
    let mut from = (high - chunk).max(low);
    loop {
        read_range(
            &consumer,
            topic,
            partition,
            from,
            to,
            how.idle_timeout,
            &mut reader,
        )?;
        if let Some(e) = &reader.error {
            return Err(Error::Recovery {
                topic: topic.to_owned(),
                partition,
                detail: e.clone(),
            });
        }
        let r = reader.resolve(from <= low, low, how.durable_through);
        if r != Resolution::NeedMore || from <= low {
            return Ok((reader, r, marks));
        }
        // Growing chunks: each one at least as long as everything read so far, so the total
        // read is at most twice what the answer needs.
        chunk = chunk.saturating_mul(2);
        to = from;
        from = (from - chunk).max(low);
    }
}

/// Feeds the records of `[from, to)` to `reader`, in offset order.
fn read_range(
    consumer: &BaseConsumer,
    topic: &str,
    partition: i32,
    from: i64,
    to: i64,
    idle_timeout: Duration,
    reader: &mut TailReader,
) -> Result<(), Error> {
    let ctx = |what: &str| format!("{what} {topic}/{partition}");
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, partition, Offset::Offset(from))
        .map_err(|e| RuntimeError::kafka(ctx("assigning"), e))?;
    consumer
        .assign(&tpl)
        .map_err(|e| RuntimeError::kafka(ctx("assigning"), e))?;
    let mut last_progress = Instant::now();
    loop {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(msg)) => {
                last_progress = Instant::now();
                let offset = msg.offset();
                if offset >= to {
                    break; // the next chunk up was read already
                }
                reader.push(offset, msg.payload());
                if offset >= to - 1 {
                    break;
                }
            }
            Some(Err(KafkaError::PartitionEOF(_))) => break,
            Some(Err(e)) => {
                tracing::warn!(%topic, partition, error = %e, "error while reading the chained tail; continuing");
            }
            None => {}
        }
        if last_progress.elapsed() > idle_timeout {
            return Err(RuntimeError::Timeout {
                context: ctx("reading the chained tail of"),
                after: idle_timeout,
            }
            .into());
        }
    }
    Ok(())
}

/// Reads the last `scan_len` records of the checkpoints partition `cp_partition`.
/// The [`HEADER_NEXT_SOURCE_OFFSET`](crate::task::HEADER_NEXT_SOURCE_OFFSET) of a checkpoint
/// record, if present and well-formed.
fn next_source_header(msg: &rdkafka::message::BorrowedMessage<'_>) -> Option<i64> {
    use rdkafka::message::{Headers, Message};
    let headers = msg.headers()?;
    headers
        .iter()
        .find(|h| h.key == crate::task::HEADER_NEXT_SOURCE_OFFSET)
        .and_then(|h| h.value)
        .and_then(|v| std::str::from_utf8(v).ok())
        .and_then(|v| v.parse::<i64>().ok())
        .filter(|o| *o >= 0)
}

/// The [`HEADER_TREE_PEAKS`](crate::checkpoints::HEADER_TREE_PEAKS) of a checkpoint record.
fn tree_peaks_header<'m>(msg: &'m rdkafka::message::BorrowedMessage<'_>) -> Option<&'m [u8]> {
    use rdkafka::message::{Headers, Message};
    msg.headers()?
        .iter()
        .find(|h| h.key == crate::checkpoints::HEADER_TREE_PEAKS)
        .and_then(|h| h.value)
}

/// The [`HEADER_CHAIN_RULE`](crate::checkpoints::HEADER_CHAIN_RULE) of a checkpoint record.
fn chain_rule_header(msg: &rdkafka::message::BorrowedMessage<'_>) -> Option<ChainRule> {
    use rdkafka::message::{Headers, Message};
    msg.headers()?
        .iter()
        .find(|h| h.key == crate::checkpoints::HEADER_CHAIN_RULE)
        .and_then(|h| h.value)
        .and_then(|v| std::str::from_utf8(v).ok())
        .and_then(|v| v.parse::<u8>().ok())
        .and_then(ChainRule::from_number)
}

pub async fn scan_checkpoints(
    args: &KafkaArgs,
    topic: &str,
    cp_partition: i32,
    finder: CheckpointFinder,
    scan_len: i64,
    idle_timeout: Duration,
) -> Result<CheckpointFinder, Error> {
    let shared = Arc::new(Mutex::new(Some(finder)));
    let inner = shared.clone();
    // (The scan's closure runs on a blocking thread; the finder is shared with it through a
    // mutex that is never contended.)
    let (closure, _) = scan(
        args,
        topic,
        cp_partition,
        ScanStart::LastN(scan_len),
        idle_timeout,
        move |msg| {
            if let Some(f) = inner.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
                f.push_with_peaks(
                    msg.payload(),
                    next_source_header(msg),
                    tree_peaks_header(msg),
                    chain_rule_header(msg),
                );
            }
        },
    )
    .await?;
    drop(closure);
    let finder = shared.lock().unwrap_or_else(|e| e.into_inner()).take();
    finder.ok_or_else(|| Error::Recovery {
        topic: topic.to_owned(),
        partition: cp_partition,
        detail: "scan state lost".into(),
    })
}

/// What [`recover_partition`] needs: the clients, the topics and the recovery settings.
pub struct RecoverArgs<'a> {
    /// The chain id (a new partition's `audit-chain/v2` genesis is bound to it).
    pub chain_id: &'a str,
    pub kafka: &'a KafkaArgs,
    pub topics: &'a Topics,
    /// The group consumer of the enriched topic: its committed offset of the partition is
    /// where a replay ends (and where to resume when retention emptied the chained partition).
    pub consumer: &'a Arc<AuditConsumer>,
    pub signer: Option<&'a Signer>,
    pub checkpoint_partitions: i32,
    pub window: usize,
    pub max_in_flight: usize,
    pub scan_idle_timeout: Duration,
    pub checkpoint_scan_records: i64,
    pub partition: i32,
    pub epoch: u64,
}

impl std::fmt::Debug for RecoverArgs<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecoverArgs")
            .field("partition", &self.partition)
            .field("epoch", &self.epoch)
            .field("window", &self.window)
            .finish_non_exhaustive()
    }
}

/// A partition's state rebuilt from durable storage.
#[derive(Debug)]
pub struct Recovered {
    pub chain: PartitionChain,
    /// The open checkpoint range (`None` without a signing key).
    pub range: Option<CheckpointRange>,
    /// The next input offset the chain resumes at.
    pub next_source: i64,
}

/// Rebuilds partition `p` from the latest checkpoint and the tail of `chained`/p.
pub async fn recover_partition(a: RecoverArgs<'_>) -> Result<Recovered, Error> {
    let p = a.partition;
    let epoch = a.epoch;
    let started = Instant::now();
    let recovery_err = |detail: String| Error::Recovery {
        topic: a.topics.chained.clone(),
        partition: p,
        detail,
    };
    // 1. Checkpoints first (see the module doc).
    let finder = match a.signer {
        None => None,
        Some(signer) => Some(
            scan_checkpoints(
                a.kafka,
                &a.topics.checkpoints,
                checkpoint_partition(p, a.checkpoint_partitions),
                CheckpointFinder::new(&signer.chain_id, p),
                a.checkpoint_scan_records,
                a.scan_idle_timeout,
            )
            .await?,
        ),
    };
    // A genesis checkpoint (seq 0) says only that the partition was empty: for where the chain
    // resumes it is no checkpoint at all.
    let checkpoint = finder
        .as_ref()
        .and_then(CheckpointFinder::latest)
        .filter(|(seq, _)| *seq > 0);
    let checkpoint_next_source = finder
        .as_ref()
        .and_then(CheckpointFinder::latest_next_source);
    let committed = committed_offset(a.consumer, &a.topics.enriched, p).await;
    // 2. The tail; re-read once if it ends before the checkpoint.
    let keep_hashes = a.signer.map_or(0, |sg| {
        (sg.every_events as usize)
            .saturating_add(a.max_in_flight)
            .saturating_add(16)
    });
    let how = TailScan {
        idle_timeout: a.scan_idle_timeout,
        durable_through: checkpoint.map_or(0, |(s, _)| s),
    };
    // At least the default: the previous owner may have run with a larger in-flight limit, and
    // a larger bound only costs reading further back when the tail is ambiguous.
    let max_burst = (a.max_in_flight as u64).max(DEFAULT_MAX_BURST);
    let new_reader = || {
        TailReader::new(p, a.window, keep_hashes)
            .max_burst(max_burst)
            .checkpointed_through(how.durable_through)
    };
    let mut read = read_tail(a.kafka, &a.topics.chained, p, new_reader(), how).await?;
    let behind = |r: &Resolution| match (r, checkpoint) {
        (Resolution::Head(h), Some((cp, _))) => h.unwrap_or(0) < cp,
        _ => false,
    };
    if behind(&read.1) {
        tracing::warn!(
            partition = p,
            checkpoint = how.durable_through,
            "the chained tail ends before the latest checkpoint; reading it again"
        );
        read = read_tail(a.kafka, &a.topics.chained, p, new_reader(), how).await?;
    }
    let (reader, resolution, marks) = read;
    if let Some(detail) = reader.contradicts(checkpoint) {
        return Err(recovery_err(detail));
    }
    let head_seq = match resolution {
        Resolution::Head(h) => h,
        // read_tail only stops undecided at the log start, where resolve always decides.
        Resolution::NeedMore => return Err(recovery_err("the chained tail is undecidable".into())),
    };
    let mut tail = reader.finish_at(head_seq).map_err(recovery_err)?;
    if tail.anomalies > 0 {
        tracing::error!(partition = p, anomalies = tail.anomalies,
            "the chained tail has repeated, missing or unlinked records; `auditctl verify` will report them");
    }
    if let (Some(top), Some(h)) = (tail.beyond_gap, tail.head) {
        tracing::error!(
            partition = p,
            head = h.seq,
            top,
            next_offset = h.source_offset + 1,
            "gap in the chained tail: resuming after the contiguous prefix; the records after the \
             gap are chained again with identical bytes (sinks keep the first copy)"
        );
        metrics::counter!(m::TAIL_GAPS, "partition" => p.to_string()).increment(1);
    }
    let p32 = integrity::chain::partition_u32(p).map_err(|source| Error::Chain {
        partition: p,
        source,
    })?;
    // 3. Where the chain resumes.
    let (head, expected) = match (tail.head, tail.beyond_gap) {
        (Some(h), _) => (
            ChainHead::resume_with(tail.resume_rule(), p32, h.seq, h.hash).map_err(|source| {
                Error::Chain {
                    partition: p,
                    source,
                }
            })?,
            h.source_offset + 1,
        ),
        // Retention emptied the partition (Kafka: log start > 0; a broker that reports an
        // emptied partition as never written, like tansu: a signed checkpoint exists): the
        // latest signed checkpoint is the head. Genesis would fork the chain.
        (None, None) if marks.low > 0 || checkpoint.is_some() => {
            let Some((cp_seq, cp_hash)) = checkpoint else {
                return Err(recovery_err(format!(
                    "the partition holds no record but its log starts at offset {}: its records \
                     were deleted (retention?) and no signed checkpoint of it was found; refusing \
                     to restart the chain at genesis",
                    marks.low
                )));
            };
            // The checkpoint says where its last link's input ended; the committed offset may
            // lag that (asynchronous commits), and events in between would be chained again
            // under new seqs. Older checkpoints lack it: the committed offset then.
            let Some(next) = checkpoint_next_source.or(committed) else {
                return Err(recovery_err(format!(
                    "the partition's records were deleted (log starts at {}) and neither the \
                     latest checkpoint nor the chainer group's committed offset on {}/{p} says \
                     where to resume",
                    marks.low, a.topics.enriched
                )));
            };
            tracing::error!(
                partition = p,
                log_start = marks.low,
                checkpoint_seq = cp_seq,
                next_offset = next,
                committed = ?committed,
                from_checkpoint_header = checkpoint_next_source.is_some(),
                "the chained partition is empty (retention deleted its records): resuming from \
                 the latest signed checkpoint (at the input offset its record names, else the \
                 committed offset); check the chained topic's retention (it must be infinite)"
            );
            metrics::counter!(m::RESUMED_FROM_CHECKPOINT, "partition" => p.to_string())
                .increment(1);
            // The chained records that held the dedup window are gone: rebuild it from the
            // inputs before `next`, which are what was chained (a redelivered copy of one of
            // them arriving later must still be dropped).
            rebuild_window_from_input(&a, p, next, &mut tail.dedup).await?;
            // The chain's rule is in the checkpoint record's header (older chainers: v1).
            let rule = finder
                .as_ref()
                .and_then(CheckpointFinder::latest_rule)
                .unwrap_or(ChainRule::V1);
            (
                ChainHead::resume_with(rule, p32, cp_seq, cp_hash).map_err(|source| {
                    Error::Chain {
                        partition: p,
                        source,
                    }
                })?,
                next,
            )
        }
        // Nothing chained yet (or its first records were lost): everything still in the input
        // must be chained.
        // (Records above a lost seq 1 are chained again with identical bytes, so under their
        // rule; a new chain is v2, bound to the chain id.)
        (None, _) => (
            ChainHead::genesis_with(tail.resume_rule(), a.chain_id, p32),
            low_watermark(a.consumer, &a.topics.enriched, p).await?,
        ),
    };
    let range =
        match a.signer {
            None => None,
            Some(_) => {
                let start =
                    range_start(head.seq, &tail.hashes, checkpoint).map_err(recovery_err)?;
                if let Some(cp) = start.checkpoint_ahead {
                    tracing::error!(partition = p, head = head.seq, checkpoint = cp,
                    "a signed checkpoint covers seq {cp} but the chained topic ends at seq {}: \
                     records were deleted from it (truncation). Resuming from the tail; the new \
                     links after seq {} will not match the checkpoint, and `auditctl verify` \
                     reports the truncation", head.seq, head.seq);
                    metrics::counter!(m::TAIL_BEHIND_CHECKPOINT, "partition" => p.to_string())
                        .increment(1);
                }
                if let Some((from, to)) = start.uncovered {
                    tracing::warn!(
                        partition = p,
                        from,
                        to,
                        "link hashes since the last checkpoint are older than the scanned tail; \
                     seqs {from}..={to} stay chained but no checkpoint's Merkle root covers them"
                    );
                }
                let mut range = CheckpointRange::starting_at(head.partition, start.first_seq);
                range.set_rule(head.rule);
                // The whole tree resumes at the latest checkpoint (from its record's peaks);
                // from seq 1 it is the empty tree anyway.
                if let Some(tree) = finder
                    .as_ref()
                    .filter(|_| checkpoint.is_some())
                    .and_then(CheckpointFinder::latest_whole_tree)
                {
                    range.set_whole_tree(tree);
                }
                for (seq, hash) in start.preload {
                    range.push(seq, hash);
                }
                if !range.has_whole_tree() {
                    tracing::warn!(
                        partition = p,
                        first_seq = start.first_seq,
                        "the partition's whole Merkle tree cannot be resumed (the latest \
                         checkpoint has no tree peaks, or link hashes are missing): its \
                         checkpoints sign ranges only (no tree_root) from here"
                    );
                    metrics::counter!(m::RANGE_ONLY_CHECKPOINTS, "partition" => p.to_string())
                        .increment(1);
                }
                // An idle partition's heartbeats re-sign the checkpoint the range follows.
                if let Some(f) = finder.as_ref().and_then(CheckpointFinder::latest_fields) {
                    if checkpoint.is_some_and(|(s, h)| s == f.seq && h == f.head_hash) {
                        let peaks = finder.as_ref().and_then(CheckpointFinder::latest_peaks);
                        range.seed_signed(f, peaks);
                    }
                }
                // Nothing chained: sign the partition's genesis (again, with a fresh time, if
                // an earlier owner did), so that its presence in the signed set is attested.
                if head.seq == 0 {
                    range.expect_genesis(head.rule);
                }
                Some(range)
            }
        };
    tracing::info!(
        partition = p,
        epoch,
        seq = head.seq,
        head = %hex::encode(head.head),
        next_offset = expected,
        committed = committed,
        window = tail.dedup.len(),
        scanned = tail.records,
        checkpoint_range_from = range.as_ref().map(|r| r.first_seq()),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "partition recovered"
    );
    metrics::counter!(m::RECOVERIES, "partition" => p.to_string()).increment(1);
    metrics::gauge!(m::HEAD_SEQ, "partition" => p.to_string()).set(head.seq as f64);
    let chain = PartitionChain::new(
        p,
        a.topics.enriched.clone(),
        Resume {
            head,
            dedup: tail.dedup,
            expected,
        },
    )
    .replay_below(committed);
    Ok(Recovered {
        chain,
        range,
        next_source: expected,
    })
}

/// Refills `window` with the inputs of enriched/`p` before `next` (up to twice its capacity of
/// them, oldest first), as the live chainer would have recorded them: new and conflicting keys
/// recorded, duplicates and undecodable records (dead letters) skipped.
async fn rebuild_window_from_input(
    a: &RecoverArgs<'_>,
    p: i32,
    next: i64,
    window: &mut DedupWindow,
) -> Result<(), Error> {
    let cap = window.capacity() as i64;
    if cap == 0 || next <= 0 {
        return Ok(());
    }
    let from = next.saturating_sub(cap.saturating_mul(2));
    let keys: Arc<Mutex<Vec<(IdDigest, ContentDigest)>>> = Arc::default();
    let sink = keys.clone();
    let (_reader, _marks) = scan(
        a.kafka,
        &a.topics.enriched,
        p,
        ScanStart::Range { from, until: next },
        a.scan_idle_timeout,
        move |msg| {
            let Some(event) = msg
                .payload()
                .and_then(|b| schemas::framing::decode_event(b, None).ok())
            else {
                return;
            };
            if let Ok(content) = content_digest(&event) {
                sink.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push((dedup_key(&event), content));
            }
        },
    )
    .await?;
    let keys = std::mem::take(&mut *keys.lock().unwrap_or_else(|e| e.into_inner()));
    let n = keys.len();
    for (key, content) in keys {
        if window.check(&key, &content) != schemas::dedup::Seen::Duplicate {
            window.record(key, content);
        }
    }
    tracing::info!(
        partition = p,
        from,
        until = next,
        inputs = n,
        window = window.len(),
        "dedup window rebuilt from the input before the resume offset"
    );
    Ok(())
}

/// The chainer group's committed offset of `topic`/p (the next offset to read), if any. A
/// failure to fetch it is not fatal here: it only decides whether replayed dead letters are
/// sent again (and the retention case, which then stops with its own error).
async fn committed_offset(consumer: &Arc<AuditConsumer>, topic: &str, p: i32) -> Option<i64> {
    let consumer = consumer.clone();
    let t = topic.to_owned();
    let res = tokio::task::spawn_blocking(move || {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(&t, p);
        consumer
            .committed_offsets(tpl, Duration::from_secs(10))
            .map(|tpl| match tpl.find_partition(&t, p).map(|e| e.offset()) {
                Some(Offset::Offset(o)) if o >= 0 => Some(o),
                _ => None,
            })
    })
    .await;
    match res {
        Ok(Ok(o)) => o,
        Ok(Err(e)) => {
            tracing::warn!(partition = p, error = %e, "committed offset not fetched; dead letters of a replay may be sent again");
            None
        }
        Err(e) => {
            tracing::warn!(partition = p, error = %e, "committed offset task failed");
            None
        }
    }
}

/// The first offset still in `topic`/p.
async fn low_watermark(consumer: &Arc<AuditConsumer>, topic: &str, p: i32) -> Result<i64, Error> {
    let consumer = consumer.clone();
    let topic = topic.to_owned();
    let (low, _) = tokio::task::spawn_blocking(move || {
        consumer
            .fetch_watermarks(&topic, p, Duration::from_secs(10))
            .map_err(|e| RuntimeError::kafka(format!("fetching watermarks of {topic}/{p}"), e))
    })
    .await
    .map_err(|e| RuntimeError::Task {
        task: "watermarks".into(),
        message: e.to_string(),
    })??;
    Ok(low.max(0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::partition::{Decision, Input};
    use schemas::framing::encode_single_object_event;
    use schemas::testing::sample_event;

    const P: i32 = 2;

    fn event_bytes(i: i64) -> Vec<u8> {
        let mut e = sample_event();
        e.event_id = format!("e{i}");
        e.event_time_us += i;
        encode_single_object_event(&e).unwrap()
    }

    /// The chained records (seq 1..=n) an uninterrupted chainer writes for `n` events at source
    /// offsets 0..n, and the input.
    fn chain_of(n: i64, window: usize) -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
        let input: Vec<Vec<u8>> = (0..n).map(event_bytes).collect();
        let mut m = PartitionChain::genesis(P, "t.enriched", window, 0).unwrap();
        let out = input
            .iter()
            .enumerate()
            .map(|(o, b)| {
                match m.process(Input {
                    offset: o as i64,
                    payload: Some(b),
                }) {
                    Ok(Decision::Chain(c)) => c.payload,
                    other => panic!("{other:?}"),
                }
            })
            .collect();
        (out, input)
    }

    fn reader(window: usize, records: &[&Vec<u8>], first_offset: i64) -> TailReader {
        let mut r = TailReader::new(P, window, 8).max_burst(4);
        for (i, rec) in records.iter().enumerate() {
            r.push(first_offset + i as i64, Some(rec));
        }
        r
    }

    #[test]
    fn hashes_reach_back_to_the_latest_checkpoint_when_the_scan_read_that_far() {
        let (chained, _) = chain_of(40, 100);
        let all: Vec<&Vec<u8>> = chained.iter().collect();
        let hash_of =
            |t: &TailSummary, seq: u64| t.hashes.iter().find(|(s, _)| *s == seq).map(|x| x.1);
        // 8 trailing hashes, the latest checkpoint at seq 20: 21..=40 are kept all the same,
        // and the next range starts right after the checkpoint.
        let t = reader(100, &all, 0)
            .checkpointed_through(20)
            .finish()
            .unwrap();
        assert_eq!(t.hashes.first().map(|(s, _)| *s), Some(21));
        assert_eq!(t.hashes.last().map(|(s, _)| *s), Some(40));
        let cp_hash = {
            let whole = reader(100, &all, 0).finish().unwrap();
            let r = reader(100, &all[..20], 0).finish().unwrap();
            assert!(
                hash_of(&whole, 20).is_none(),
                "8 kept without the checkpoint"
            );
            r.head.unwrap().hash
        };
        let start = range_start(40, &t.hashes, Some((20, cp_hash))).unwrap();
        assert_eq!((start.first_seq, start.uncovered), (21, None));
        assert_eq!(start.preload.len(), 20);
        // Without the checkpoint's seq the reader keeps 8, and the range would restart after
        // the head with 21..=32 uncovered.
        let t = reader(100, &all, 0).finish().unwrap();
        assert_eq!(t.hashes.len(), 8);
        let start = range_start(40, &t.hashes, Some((20, cp_hash))).unwrap();
        assert_eq!(start.uncovered, Some((21, 40)));
        // A checkpoint closer than the 8 changes nothing; one before what was read keeps what
        // was read (here from seq 11, the first read).
        let t = reader(100, &all, 0)
            .checkpointed_through(38)
            .finish()
            .unwrap();
        assert_eq!(t.hashes.first().map(|(s, _)| *s), Some(33));
        let t = reader(100, &all[10..], 10)
            .checkpointed_through(5)
            .finish()
            .unwrap();
        assert_eq!(t.hashes.first().map(|(s, _)| *s), Some(11));
    }

    #[test]
    fn recovery_resumes_after_the_contiguous_prefix_when_the_tail_has_a_gap() {
        let (chained, input) = chain_of(5, 10);
        // Seqs 2 and 3 timed out in the producer; 4 and 5 landed: the log holds 1, 4, 5.
        let r = reader(10, &[&chained[0], &chained[3], &chained[4]], 0);
        assert_eq!(r.resolve(true, 0, 0), Resolution::Head(Some(1)));
        let t = r.finish().unwrap();
        let h = t.head.unwrap();
        assert_eq!((h.seq, h.source_offset), (1, 0));
        assert_eq!(t.beyond_gap, Some(5));
        assert_eq!(t.hashes.len(), 1, "only the prefix's link hashes");
        assert_eq!(t.dedup.len(), 1, "only the prefix's records in the window");
        // Resuming there re-chains 2..=5 with the bytes already in the log for 4 and 5.
        let mut m = PartitionChain::new(
            P,
            "t.enriched",
            Resume {
                head: t.chain_head(P, "c").unwrap(),
                dedup: t.dedup.clone(),
                expected: h.source_offset + 1,
            },
        );
        for (o, b) in input.iter().enumerate().skip(1) {
            let Ok(Decision::Chain(c)) = m.process(Input {
                offset: o as i64,
                payload: Some(b),
            }) else {
                panic!("offset {o} not chained")
            };
            assert_eq!(c.payload, chained[o], "seq {}", o + 1);
        }
        // 1, 3, 5: the prefix still ends at 1.
        let r = reader(10, &[&chained[0], &chained[2], &chained[4]], 0);
        assert_eq!(r.resolve(true, 0, 0), Resolution::Head(Some(1)));
        // The first record lost (2, 3 only, in a log that was never trimmed): genesis.
        let r = reader(10, &[&chained[1], &chained[2]], 0);
        assert_eq!(r.resolve(true, 0, 0), Resolution::Head(None));
        // …but with a checkpoint through seq 1, the hole is a deleted record, not a lost write.
        assert_eq!(r.resolve(true, 0, 1), Resolution::Head(Some(3)));
    }

    #[test]
    fn a_gap_is_not_guessed_from_a_region_that_may_not_reach_the_missing_record() {
        let (chained, _) = chain_of(30, 10);
        // Read from offset 20 of a longer log: a zombie's old copies of seqs 12, 13 land at the
        // start of the region, then seqs 17..=30 (14..=16 sit before the region).
        let mut recs: Vec<&Vec<u8>> = vec![&chained[11], &chained[12]];
        recs.extend(chained[16..].iter());
        let r = reader(10, &recs, 20);
        // The run above the hole is long (14 > max_burst 4): no lost write can explain the hole.
        assert_eq!(r.resolve(false, 0, 0), Resolution::Head(Some(30)));
        // With a short run above it the region cannot decide: read further back.
        let recs: Vec<&Vec<u8>> = vec![&chained[11], &chained[12], &chained[15], &chained[16]];
        let r = reader(10, &recs, 20);
        assert_eq!(r.resolve(false, 0, 0), Resolution::NeedMore);
        // A checkpoint through seq 15 vouches for the hole: not a gap. Still fewer than W=10
        // distinct seqs, so read further back for the window.
        assert_eq!(r.resolve(false, 0, 15), Resolution::NeedMore);
        let mut r = reader(4, &recs, 20);
        r.window = 4;
        r.keep_hashes = 0;
        assert_eq!(r.resolve(false, 0, 15), Resolution::Head(Some(17)));
        // A checkpoint through 14 only: 15 may be a lost write; undecided.
        assert_eq!(r.resolve(false, 0, 14), Resolution::NeedMore);
    }

    #[test]
    fn the_window_is_w_distinct_records_not_w_offsets() {
        let (chained, _) = chain_of(6, 4);
        // Offsets 0..=5: seqs 1..=6; offsets 6..=8: a zombie's copies of 4, 5, 6.
        let mut log: Vec<&Vec<u8>> = chained.iter().collect();
        log.extend([&chained[3], &chained[4], &chained[5]]);
        // The last W=4 offsets hold only 3 distinct seqs: read further back.
        let mut r = TailReader::new(P, 4, 0);
        for (o, rec) in log.iter().enumerate().skip(5) {
            r.push(o as i64, Some(rec));
        }
        assert_eq!(r.resolve(false, 0, 0), Resolution::NeedMore);
        for (o, rec) in log.iter().enumerate().take(5) {
            r.push(o as i64, Some(rec));
        }
        assert_eq!(r.resolve(true, 0, 0), Resolution::Head(Some(6)));
        let t = r.finish_at(Some(6)).unwrap();
        assert_eq!(t.dedup.len(), 4);
        assert_eq!(t.anomalies, 3);
        // The live instance's window is seqs 3..=6: the event of seq 3 is a duplicate for both.
        let mut m = PartitionChain::new(
            P,
            "t.enriched",
            Resume {
                head: t.chain_head(P, "c").unwrap(),
                dedup: t.dedup,
                expected: 6,
            },
        );
        let d = m
            .process(Input {
                offset: 6,
                payload: Some(&event_bytes(2)),
            })
            .unwrap();
        assert!(matches!(d, Decision::Duplicate { .. }), "{d:?}");
    }

    #[test]
    fn a_checkpoint_that_contradicts_a_record_is_reported() {
        let (chained, _) = chain_of(3, 10);
        let r = reader(10, &[&chained[0], &chained[1], &chained[2]], 0);
        let rec = decode_chained(&chained[1], None).unwrap();
        let h = hash32("hash", &rec.hash).unwrap();
        assert_eq!(r.contradicts(Some((2, h))), None);
        assert_eq!(
            r.contradicts(Some((9, [1; 32]))),
            None,
            "not read: no verdict"
        );
        assert!(r
            .contradicts(Some((2, [1; 32])))
            .unwrap()
            .contains("rewritten"));
    }
}
