//! Recovery of a partition from durable state, on every (re)assignment:
//! the tail of `chained`/p gives the head `(seq, hash)`, its source offset and the dedup window;
//! the tail of the checkpoints topic gives where the next checkpoint range starts.
//!
//! [`TailReader`] and [`CheckpointFinder`] are pure (fed record by record by the scan), so they
//! are unit-tested without a broker; [`scan_chained`] and [`scan_checkpoints`] do the reading.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::Message;
use schemas::chain::{hash32, seq_u64, ChainHead, DedupWindow, Hash32};
use schemas::framing::{decode_chained, decode_checkpoint};
use worker_runtime::kafka::tail::{scan, ScanStart, Watermarks};
use worker_runtime::kafka::KafkaArgs;

use crate::error::Error;

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
    pub head: Option<TailHead>,
    pub dedup: DedupWindow,
    /// The last link hashes, contiguous, in seq order, ending at the head.
    pub hashes: Vec<(u64, Hash32)>,
    /// Records that repeat or go back in seq (e.g. a paused zombie's identical copies), gaps and
    /// broken links: not fatal here (the verifier reports them), but logged.
    pub anomalies: u64,
    pub records: u64,
}

/// Folds the tail of `chained`/p, record by record, in offset order.
#[derive(Debug)]
pub struct TailReader {
    partition: i32,
    head: Option<TailHead>,
    dedup: DedupWindow,
    hashes: VecDeque<(u64, Hash32)>,
    keep_hashes: usize,
    anomalies: u64,
    records: u64,
    error: Option<String>,
}

impl TailReader {
    /// `window`: dedup window size W; `keep_hashes`: how many trailing link hashes to keep for
    /// the checkpoint range.
    pub fn new(partition: i32, window: usize, keep_hashes: usize) -> Self {
        Self {
            partition,
            head: None,
            dedup: DedupWindow::new(window),
            hashes: VecDeque::new(),
            keep_hashes,
            anomalies: 0,
            records: 0,
            error: None,
        }
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
        if let Some(h) = self.head {
            if seq <= h.seq {
                self.anomalies += 1;
                tracing::warn!(
                    partition = self.partition,
                    offset,
                    seq,
                    head = h.seq,
                    "chained record repeats an earlier seq (zombie copy?); keeping the first"
                );
                return Ok(());
            }
            if seq != h.seq + 1 || prev != h.hash {
                self.anomalies += 1;
                tracing::error!(partition = self.partition, offset, seq, head = h.seq,
                    "chained tail is not contiguous (gap or broken link); resuming from the highest seq");
                self.hashes.clear();
            }
        }
        self.head = Some(TailHead {
            seq,
            hash,
            source_offset: rec.source_offset,
        });
        self.dedup.insert(&rec.event.event_id);
        if self.keep_hashes > 0 {
            if self.hashes.len() == self.keep_hashes {
                self.hashes.pop_front();
            }
            self.hashes.push_back((seq, hash));
        }
        Ok(())
    }

    pub fn finish(self) -> Result<TailSummary, String> {
        if let Some(e) = self.error {
            return Err(e);
        }
        Ok(TailSummary {
            head: self.head,
            dedup: self.dedup,
            hashes: self.hashes.into(),
            anomalies: self.anomalies,
            records: self.records,
        })
    }
}

impl TailSummary {
    /// The chain head to resume from.
    pub fn chain_head(&self, partition: i32) -> Result<ChainHead, schemas::chain::ChainError> {
        let p = schemas::chain::partition_u32(partition)?;
        match self.head {
            Some(h) => ChainHead::resume(p, h.seq, h.hash),
            None => Ok(ChainHead::genesis(p)),
        }
    }
}

/// Keeps the latest checkpoint (highest seq) of one partition of one chain.
#[derive(Debug)]
pub struct CheckpointFinder {
    chain_id: String,
    partition: i32,
    best: Option<(u64, Hash32)>,
    unreadable: u64,
}

impl CheckpointFinder {
    pub fn new(chain_id: &str, partition: i32) -> Self {
        Self {
            chain_id: chain_id.to_owned(),
            partition,
            best: None,
            unreadable: 0,
        }
    }

    pub fn push(&mut self, payload: Option<&[u8]>) {
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
        }
    }

    pub fn latest(&self) -> Option<(u64, Hash32)> {
        self.best
    }

    pub fn unreadable(&self) -> u64 {
        self.unreadable
    }
}

/// Reads the last `scan_len` records of `chained`/p.
pub async fn scan_chained(
    args: &KafkaArgs,
    topic: &str,
    partition: i32,
    reader: TailReader,
    scan_len: i64,
    idle_timeout: Duration,
) -> Result<(TailSummary, Watermarks), Error> {
    let (reader, marks) = scan_with(
        args,
        topic,
        partition,
        scan_len,
        idle_timeout,
        reader,
        |r, m| r.push(m.offset(), m.payload()),
    )
    .await?;
    let summary = reader.finish().map_err(|detail| Error::Recovery {
        topic: topic.to_owned(),
        partition,
        detail,
    })?;
    Ok((summary, marks))
}

/// Reads the last `scan_len` records of the checkpoints partition `cp_partition`.
pub async fn scan_checkpoints(
    args: &KafkaArgs,
    topic: &str,
    cp_partition: i32,
    finder: CheckpointFinder,
    scan_len: i64,
    idle_timeout: Duration,
) -> Result<CheckpointFinder, Error> {
    let (finder, _) = scan_with(
        args,
        topic,
        cp_partition,
        scan_len,
        idle_timeout,
        finder,
        |f, m| f.push(m.payload()),
    )
    .await?;
    Ok(finder)
}

/// [`scan`] folding into `state`, which is handed back afterwards. (The scan's closure runs on
/// a blocking thread; the state is shared with it through a mutex that is never contended.)
async fn scan_with<S, G>(
    args: &KafkaArgs,
    topic: &str,
    partition: i32,
    scan_len: i64,
    idle_timeout: Duration,
    state: S,
    mut fold: G,
) -> Result<(S, Watermarks), Error>
where
    S: Send + 'static,
    G: FnMut(&mut S, &rdkafka::message::BorrowedMessage<'_>) + Send + 'static,
{
    let shared = Arc::new(Mutex::new(Some(state)));
    let inner = shared.clone();
    let (closure, marks) = scan(
        args,
        topic,
        partition,
        ScanStart::LastN(scan_len),
        idle_timeout,
        move |m| {
            if let Some(s) = inner.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
                fold(s, m);
            }
        },
    )
    .await?;
    drop(closure);
    let state = shared.lock().unwrap_or_else(|e| e.into_inner()).take();
    state.map(|s| (s, marks)).ok_or_else(|| Error::Recovery {
        topic: topic.to_owned(),
        partition,
        detail: "scan state lost".into(),
    })
}
