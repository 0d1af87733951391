//! Follows one compacted context topic into its cache, forever.
//!
//! Every enrich instance needs the *whole* context, so the topic is read with `assign` (all
//! partitions, from the beginning), never through a consumer group, and no offset is committed.
//! The loader reports when it has caught up with the end each partition had when it started —
//! it applied the record at that end − 1, or its fetch position passed that end (compaction or a
//! transaction marker may leave the last offset without a readable record) — then keeps
//! applying new records. Partition EOF events are not used: librdkafka reports each one as a
//! global error, which would log an error every time a context partition is read to its end.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::{Message, Offset, TopicPartitionList};
use tokio::sync::watch;
use worker_runtime::kafka::pipeline::is_fatal;
use worker_runtime::kafka::KafkaArgs;
use worker_runtime::{RuntimeError, Shutdown};

use crate::context::{ContextCaches, ContextKind};
use crate::Error;

/// How often fetch positions are checked while catching up.
const POSITION_INTERVAL: Duration = Duration::from_secs(1);
/// How often progress is logged while catching up (and gauges refreshed afterwards).
const PROGRESS_INTERVAL: Duration = Duration::from_secs(5);
const METADATA_TIMEOUT: Duration = Duration::from_secs(10);

/// Reads `topic` into `caches` until shutdown. Sends `true` on `caught_up` once the start-time
/// end of every partition has been applied.
pub async fn follow(
    kafka: KafkaArgs,
    topic: String,
    kind: ContextKind,
    caches: ContextCaches,
    caught_up: watch::Sender<bool>,
    shutdown: Shutdown,
) -> Result<(), Error> {
    let consumer = Arc::new(create_consumer(&kafka, kind)?);
    let partitions = partitions_and_ends(consumer.clone(), topic.clone()).await?;
    let mut tpl = TopicPartitionList::new();
    for (p, _, _) in &partitions {
        tpl.add_partition_offset(&topic, *p, Offset::Beginning)
            .map_err(|e| RuntimeError::kafka(format!("assigning {topic}/{p}"), e))?;
    }
    consumer
        .assign(&tpl)
        .map_err(|e| RuntimeError::kafka(format!("assigning {topic}"), e))?;

    // Partition → offset that must be applied (start-time high watermark − 1); empty ones are
    // caught up already.
    let mut pending: HashMap<i32, i64> = partitions
        .iter()
        .filter(|(_, low, high)| high > low)
        .map(|(p, _, high)| (*p, high - 1))
        .collect();
    let total: i64 = partitions.iter().map(|(_, low, high)| high - low).sum();
    tracing::info!(%topic, partitions = partitions.len(), records = total,
        "loading context topic from the beginning");
    let started = Instant::now();
    let mut applied: u64 = 0;
    let mut done = false;
    let mut last_progress = Instant::now();
    let mut ticker = tokio::time::interval(POSITION_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    loop {
        if !done && pending.is_empty() {
            done = true;
            caches.sync().await;
            caches.publish_gauges();
            tracing::info!(%topic, applied, elapsed_ms = started.elapsed().as_millis() as u64,
                "context topic loaded; following new records");
            caught_up.send_replace(true);
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = ticker.tick() => {
                if !done {
                    drop_passed_partitions(&consumer, &topic, &mut pending);
                }
                if last_progress.elapsed() >= PROGRESS_INTERVAL {
                    last_progress = Instant::now();
                    caches.publish_gauges();
                    if !done {
                        tracing::info!(%topic, applied, of_about = total,
                            pending_partitions = ?pending.keys().collect::<Vec<_>>(),
                            "still loading context topic");
                    }
                }
            }
            msg = consumer.recv() => {
                // Copy out what is needed so no borrow of the consumer is held across awaits.
                let (partition, offset, key, value) = match msg {
                    Ok(m) => (
                        m.partition(),
                        m.offset(),
                        m.key().map(<[u8]>::to_vec),
                        m.payload().map(<[u8]>::to_vec),
                    ),
                    Err(e) if is_fatal(&e) => {
                        return Err(RuntimeError::kafka(format!("reading {topic}"), e).into());
                    }
                    Err(e) => {
                        tracing::warn!(%topic, error = %e, "context consumer error (retrying)");
                        continue;
                    }
                };
                caches.apply(kind, key.as_deref(), value.as_deref()).await;
                applied += 1;
                if pending.get(&partition).is_some_and(|last| offset >= *last) {
                    pending.remove(&partition);
                }
            }
        }
    }
}

/// Removes the pending partitions whose fetch position is past their target offset (a local
/// lookup in librdkafka, no broker round trip).
fn drop_passed_partitions(consumer: &StreamConsumer, topic: &str, pending: &mut HashMap<i32, i64>) {
    let Ok(positions) = consumer.position() else {
        return;
    };
    for e in positions.elements_for_topic(topic) {
        if let Offset::Offset(next) = e.offset() {
            if pending.get(&e.partition()).is_some_and(|last| next > *last) {
                pending.remove(&e.partition());
            }
        }
    }
}

fn create_consumer(kafka: &KafkaArgs, kind: ContextKind) -> Result<StreamConsumer, Error> {
    let mut cfg = kafka.client_config(&format!("audit-enrich-context-{}", kind.name()));
    // librdkafka wants a group id even for assign-only consumers; it is never joined or
    // committed to (no subscribe, auto commit off).
    cfg.set("group.id", "audit-enrich-context-unused")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "false")
        .set("isolation.level", "read_committed");
    for kv in &kafka.properties {
        if let Some((k, v)) = kv.split_once('=') {
            cfg.set(k.trim(), v.trim());
        }
    }
    cfg.create()
        .map_err(|e| RuntimeError::kafka("creating context consumer", e).into())
}

/// (partition, low watermark, high watermark) of every partition of `topic`, off the runtime.
async fn partitions_and_ends(
    consumer: Arc<StreamConsumer>,
    topic: String,
) -> Result<Vec<(i32, i64, i64)>, Error> {
    tokio::task::spawn_blocking(move || {
        let md = consumer
            .fetch_metadata(Some(&topic), METADATA_TIMEOUT)
            .map_err(|e| RuntimeError::kafka(format!("fetching metadata of {topic}"), e))?;
        let ids: Vec<i32> = md
            .topics()
            .iter()
            .find(|t| t.name() == topic && t.error().is_none())
            .map(|t| t.partitions().iter().map(|p| p.id()).collect())
            .unwrap_or_default();
        if ids.is_empty() {
            return Err(Error::ContextTopicMissing { topic });
        }
        ids.into_iter()
            .map(|p| {
                let (low, high) = consumer
                    .fetch_watermarks(&topic, p, METADATA_TIMEOUT)
                    .map_err(|e| {
                        RuntimeError::kafka(format!("fetching watermarks of {topic}/{p}"), e)
                    })?;
                Ok((p, low, high))
            })
            .collect()
    })
    .await
    .map_err(|e| {
        Error::from(RuntimeError::Task {
            task: "context metadata".into(),
            message: e.to_string(),
        })
    })?
}
