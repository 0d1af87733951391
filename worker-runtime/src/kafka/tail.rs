//! Reading a partition directly (no consumer group): the tail of `audit.chained` for the
//! chainer's recovery, a whole compacted topic for enrich's caches, a range for the verifier.
//!
//! Runs a blocking `BaseConsumer` on a blocking thread and hands each record to a closure, so
//! a million-record scan never holds a million records in memory.

use super::KafkaArgs;
use crate::error::RuntimeError;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::BorrowedMessage;
use rdkafka::{Message, Offset, TopicPartitionList};
use std::time::{Duration, Instant};

/// Where a scan starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScanStart {
    /// The last `n` records before the high watermark.
    LastN(i64),
    /// This offset (clamped to the low watermark).
    Offset(i64),
    /// The records in `[from, until)` (clamped to the watermarks).
    Range { from: i64, until: i64 },
}

/// The partition's offsets when the scan started: records in `[low, high)` exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Watermarks {
    pub low: i64,
    pub high: i64,
}

/// Reads `topic/partition` from `start` up to the high watermark seen at the start, calling
/// `f` for each record in offset order. Gives up if no record arrives for `idle_timeout`.
/// Transaction markers and aborted records are never delivered (read_committed), and the scan
/// stops at end-of-partition, so a marker at `high - 1` does not stall it.
pub async fn scan<F>(
    args: &KafkaArgs,
    topic: &str,
    partition: i32,
    start: ScanStart,
    idle_timeout: Duration,
    f: F,
) -> Result<(F, Watermarks), RuntimeError>
where
    F: FnMut(&BorrowedMessage<'_>) + Send + 'static,
{
    let mut cfg = args.client_config("audit-scan");
    cfg.set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .set("isolation.level", "read_committed")
        .set("group.id", "audit-scan-unused");
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || {
        scan_blocking(cfg, &topic, partition, start, idle_timeout, f)
    })
    .await
    .map_err(|e| RuntimeError::Task {
        task: "partition scan".into(),
        message: e.to_string(),
    })?
}

fn scan_blocking<F>(
    cfg: rdkafka::ClientConfig,
    topic: &str,
    partition: i32,
    start: ScanStart,
    idle_timeout: Duration,
    mut f: F,
) -> Result<(F, Watermarks), RuntimeError>
where
    F: FnMut(&BorrowedMessage<'_>),
{
    let ctx = |what: &str| format!("{what} {topic}/{partition}");
    let consumer: BaseConsumer = cfg
        .create()
        .map_err(|e| RuntimeError::kafka(ctx("creating scan consumer for"), e))?;
    let (low, high) = consumer
        .fetch_watermarks(topic, partition, Duration::from_secs(10))
        .map_err(|e| RuntimeError::kafka(ctx("fetching watermarks of"), e))?;
    let marks = Watermarks { low, high };
    let (from, end) = match start {
        ScanStart::LastN(n) => ((high - n.max(0)).max(low), high),
        ScanStart::Offset(o) => (o.max(low), high),
        ScanStart::Range { from, until } => (from.max(low), until.min(high)),
    };
    if from >= end {
        return Ok((f, marks));
    }
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, partition, Offset::Offset(from))
        .map_err(|e| RuntimeError::kafka(ctx("assigning"), e))?;
    consumer
        .assign(&tpl)
        .map_err(|e| RuntimeError::kafka(ctx("assigning"), e))?;
    let mut last_progress = Instant::now();
    loop {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                last_progress = Instant::now();
                let offset = m.offset();
                if offset >= end {
                    break;
                }
                f(&m);
                if offset >= end - 1 {
                    break;
                }
            }
            Some(Err(KafkaError::PartitionEOF(_))) => break,
            Some(Err(e)) => {
                tracing::warn!(%topic, partition, error = %e, "error while scanning; continuing");
            }
            None => {}
        }
        if last_progress.elapsed() > idle_timeout {
            return Err(RuntimeError::Timeout {
                context: ctx("scanning"),
                after: idle_timeout,
            });
        }
    }
    Ok((f, marks))
}
