//! A group consumer whose offsets are stored by the worker (never automatically) and committed
//! in the background, on rebalance and at shutdown.
//!
//! The context counts assignments per partition ("epochs"), so stateful workers (the chainer,
//! the sinks) notice every re-assignment — even revoke-then-assign between two messages — and
//! rebuild their per-partition state from durable storage instead of trusting memory.

use super::KafkaArgs;
use crate::error::RuntimeError;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::KafkaResult;
use rdkafka::{ClientConfig, ClientContext, TopicPartitionList};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

pub type AuditConsumer = StreamConsumer<TrackingContext>;

/// Assignment state shared between the consumer's callbacks and the worker.
#[derive(Debug, Default)]
pub struct RebalanceState {
    next_epoch: AtomicU64,
    /// (topic, partition) → epoch of its current assignment; absent = not assigned.
    assigned: Mutex<HashMap<(String, i32), u64>>,
}

impl RebalanceState {
    /// The epoch of `tp`'s current assignment, or `None` if it is not assigned to us.
    pub fn epoch(&self, topic: &str, partition: i32) -> Option<u64> {
        self.lock().get(&(topic.to_owned(), partition)).copied()
    }

    /// Currently assigned partitions with their epochs.
    pub fn assigned(&self) -> Vec<((String, i32), u64)> {
        self.lock().iter().map(|(k, v)| (k.clone(), *v)).collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, i32), u64>> {
        // A poisoned lock only means a callback panicked mid-update; the map is still usable.
        self.assigned.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn on_assign(&self, tpl: &TopicPartitionList) {
        let mut map = self.lock();
        for e in tpl.elements() {
            let epoch = self.next_epoch.fetch_add(1, Ordering::Relaxed) + 1;
            map.insert((e.topic().to_owned(), e.partition()), epoch);
        }
    }

    fn on_revoke(&self, tpl: &TopicPartitionList) {
        let mut map = self.lock();
        for e in tpl.elements() {
            map.remove(&(e.topic().to_owned(), e.partition()));
        }
    }
}

/// Logs rebalances and commits, and tracks assignment epochs.
#[derive(Debug, Clone)]
pub struct TrackingContext {
    pub name: String,
    pub state: Arc<RebalanceState>,
}

impl ClientContext for TrackingContext {}

impl ConsumerContext for TrackingContext {
    fn pre_rebalance(&self, _c: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            tracing::info!(consumer = %self.name, partitions = ?tpl_list(tpl), "partitions revoked");
            self.state.on_revoke(tpl);
        }
    }

    fn post_rebalance(&self, _c: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                tracing::info!(consumer = %self.name, partitions = ?tpl_list(tpl), "partitions assigned");
                self.state.on_assign(tpl);
            }
            Rebalance::Revoke(_) => {}
            Rebalance::Error(e) => {
                tracing::warn!(consumer = %self.name, error = %e, "rebalance error")
            }
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, offsets: &TopicPartitionList) {
        match result {
            Ok(()) => {
                tracing::debug!(consumer = %self.name, offsets = ?tpl_list(offsets), "offsets committed")
            }
            Err(e) => {
                tracing::warn!(consumer = %self.name, error = %e, "offset commit failed (retried on next commit)")
            }
        }
    }
}

fn tpl_list(tpl: &TopicPartitionList) -> Vec<String> {
    tpl.elements()
        .iter()
        .map(|e| format!("{}/{}@{:?}", e.topic(), e.partition(), e.offset()))
        .collect()
}

/// How a worker's group consumer is set up.
#[derive(Debug, Clone)]
pub struct ConsumerSettings {
    pub group_id: String,
    pub client_id: String,
    pub topics: Vec<String>,
    /// Where a group with no committed offset starts: `earliest` (audit data must not be
    /// skipped) unless the operator says otherwise.
    pub auto_offset_reset: String,
    pub session_timeout_ms: u32,
}

/// How long the broker may hold a fetch that finds nothing new (librdkafka's default is 500).
/// Kafka answers as soon as a record arrives, so there this only paces an idle consumer's
/// requests; brokers that answer only when the wait expires (tansu 0.6 does) add it to every
/// hop. Measured with `worker-bench --latency` at 400 events/s: 340–440 ms p50 per hop at 500,
/// 78–219 ms at 50. 100 keeps an idle consumer at ten requests a second per broker.
/// `--kafka-property fetch.wait.max.ms=…` overrides it.
pub const FETCH_WAIT_MAX_MS: &str = "100";

impl ConsumerSettings {
    pub fn new(
        group_id: impl Into<String>,
        client_id: impl Into<String>,
        topics: Vec<String>,
    ) -> Self {
        ConsumerSettings {
            group_id: group_id.into(),
            client_id: client_id.into(),
            topics,
            auto_offset_reset: "earliest".into(),
            session_timeout_ms: 10_000,
        }
    }
}

/// librdkafka's pre-fetch queue per consumer unless `--kafka-property` sets it: 16 MB instead
/// of its default 64 MB, which a worker fills on a deep backlog (worker-bench, 60,000 records
/// backlog: ingest, enrich and the chainer peaked at 73–76 MB, their raw paths at 65–67).
/// 16 MB is ~18,000 demo records, more than a second of any worker's rate here.
pub const QUEUED_MAX_KBYTES: &str = "16384";

/// Most one fetch response may carry (all partitions together) unless `--kafka-property` sets
/// it: 2 MB. Otherwise librdkafka lowers its 50 MB default only to the queue cap: a whole
/// response is received, then its lz4 batches are decompressed into buffers that live until
/// their last record is read (sink-clickhouse under heaptrack: `rd_kafka_lz4_decompress` the
/// largest consumer, 18 MB at its peak, 9.7 MB with 2 MB; its peak RSS 69–71 → 59–62 MB,
/// events/s and CPU per event within noise). 1 MB was ~30% slower; 4 MB saved nothing.
pub const FETCH_MAX_BYTES: u64 = 2 * 1024 * 1024;

/// Every consumer's settings before the operator's `--kafka-property` (which override them).
fn consumer_config(args: &KafkaArgs, settings: &ConsumerSettings) -> ClientConfig {
    let mut cfg = args.client_config(&settings.client_id);
    // librdkafka refuses a `fetch.max.bytes` below `message.max.bytes` (default 1 MB).
    let message_max = args
        .property("message.max.bytes")
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    cfg.set("group.id", &settings.group_id)
        .set("enable.auto.commit", "true")
        .set("auto.commit.interval.ms", "1000")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", &settings.auto_offset_reset)
        .set("isolation.level", "read_committed")
        .set("enable.partition.eof", "false")
        .set("fetch.wait.max.ms", FETCH_WAIT_MAX_MS)
        .set("queued.max.messages.kbytes", QUEUED_MAX_KBYTES)
        .set(
            "fetch.max.bytes",
            FETCH_MAX_BYTES.max(message_max).to_string(),
        );
    cfg
}

/// A consumer's context and the rebalance state it keeps.
fn tracking(settings: &ConsumerSettings) -> (TrackingContext, Arc<RebalanceState>) {
    let state = Arc::new(RebalanceState::default());
    let context = TrackingContext {
        name: settings.client_id.clone(),
        state: state.clone(),
    };
    (context, state)
}

/// The operator's `--kafka-property` settings, last, so that they win.
fn apply_properties(cfg: &mut ClientConfig, args: &KafkaArgs) {
    for kv in &args.properties {
        if let Some((k, v)) = kv.split_once('=') {
            cfg.set(k.trim(), v.trim());
        }
    }
}

/// Creates and subscribes a consumer. Offsets are stored explicitly by the worker
/// (`enable.auto.offset.store=false`) and committed by librdkafka every second, on rebalance,
/// and at close.
pub fn subscribe(
    args: &KafkaArgs,
    settings: &ConsumerSettings,
) -> Result<(Arc<AuditConsumer>, Arc<RebalanceState>), RuntimeError> {
    let (context, state) = tracking(settings);
    let mut cfg = consumer_config(args, settings);
    cfg.set(
        "session.timeout.ms",
        settings.session_timeout_ms.to_string(),
    );
    apply_properties(&mut cfg, args);
    let consumer: AuditConsumer = cfg.create_with_context(context).map_err(|e| {
        RuntimeError::kafka(
            format!("creating consumer for group {}", settings.group_id),
            e,
        )
    })?;
    let topics: Vec<&str> = settings.topics.iter().map(String::as_str).collect();
    consumer
        .subscribe(&topics)
        .map_err(|e| RuntimeError::kafka(format!("subscribing to {topics:?}"), e))?;
    Ok((Arc::new(consumer), state))
}

/// Stores `next_offset` (the next offset to consume) for a partition, to be committed.
/// A partition that was revoked meanwhile cannot be stored to; that is expected and harmless
/// (its new owner re-reads from the last commit), so it is only logged.
pub fn store_next_offset(consumer: &AuditConsumer, topic: &str, partition: i32, next_offset: i64) {
    let mut tpl = TopicPartitionList::new();
    if let Err(e) = tpl.add_partition_offset(topic, partition, rdkafka::Offset::Offset(next_offset))
    {
        tracing::warn!(%topic, partition, next_offset, error = %e, "cannot build offset list");
        return;
    }
    if let Err(e) = consumer.store_offsets(&tpl) {
        tracing::debug!(%topic, partition, next_offset, error = %e, "offset not stored (partition no longer assigned?)");
    }
}

/// Commits stored offsets synchronously (shutdown path), off the async runtime.
pub async fn commit_stored(consumer: &Arc<AuditConsumer>) {
    let c = consumer.clone();
    let result = tokio::task::spawn_blocking(move || {
        c.commit_consumer_state(rdkafka::consumer::CommitMode::Sync)
    })
    .await;
    match result {
        Ok(Ok(())) => tracing::info!("final offsets committed"),
        // "No offset stored" is the normal case for an idle consumer.
        Ok(Err(e)) => tracing::info!(error = %e, "final commit did not commit anything new"),
        Err(e) => tracing::warn!(error = %e, "final commit task failed"),
    }
}

/// Creates a consumer that reads `partitions` of `topic` by explicit assignment (`assign()`),
/// with no group membership: no join, no session, no rebalance, so no group coordinator can
/// strand it. For workers whose exactly-once does not rest on the group (the chainer resumes
/// from its output's tail). Each partition starts at the group's committed offset (else
/// `auto.offset.reset`); `group.id` stays set so that stored offsets can still be committed
/// for lag monitoring where the broker accepts commits from a non-member.
///
/// The returned state reports one epoch per assigned partition, fixed for the consumer's life
/// (a new consumer is a new assignment, with new epochs).
pub fn assign_static(
    args: &KafkaArgs,
    settings: &ConsumerSettings,
    topic: &str,
    partitions: &[i32],
) -> Result<(Arc<AuditConsumer>, Arc<RebalanceState>), RuntimeError> {
    let (context, state) = tracking(settings);
    let mut cfg = consumer_config(args, settings);
    apply_properties(&mut cfg, args);
    let consumer: AuditConsumer = cfg.create_with_context(context).map_err(|e| {
        RuntimeError::kafka(
            format!("creating consumer for {topic} partitions {partitions:?}"),
            e,
        )
    })?;
    let mut tpl = TopicPartitionList::new();
    for &p in partitions {
        tpl.add_partition_offset(topic, p, rdkafka::Offset::Stored)
            .map_err(|e| RuntimeError::kafka(format!("assigning {topic}/{p}"), e))?;
    }
    consumer
        .assign(&tpl)
        .map_err(|e| RuntimeError::kafka(format!("assigning {topic} {partitions:?}"), e))?;
    tracing::info!(consumer = %settings.client_id, %topic, ?partitions, "partitions assigned statically (no consumer group membership)");
    state.on_assign(&tpl);
    Ok((Arc::new(consumer), state))
}

#[cfg(test)]
mod memory_caps_tests {
    use super::*;

    fn settings() -> ConsumerSettings {
        ConsumerSettings::new("g", "c", vec!["t".into()])
    }

    fn built(args: &KafkaArgs) -> ClientConfig {
        let mut cfg = consumer_config(args, &settings());
        apply_properties(&mut cfg, args);
        cfg
    }

    #[test]
    fn the_prefetch_is_capped_unless_the_operator_says_otherwise() {
        let mut args = KafkaArgs::local("127.0.0.1:9092", "x.");
        let cfg = built(&args);
        assert_eq!(
            cfg.get("queued.max.messages.kbytes"),
            Some(QUEUED_MAX_KBYTES)
        );
        assert_eq!(
            cfg.get("fetch.max.bytes"),
            Some(FETCH_MAX_BYTES.to_string().as_str())
        );
        // Never below message.max.bytes, which librdkafka would refuse.
        args.properties.push("message.max.bytes=5000000".into());
        assert_eq!(built(&args).get("fetch.max.bytes"), Some("5000000"));
        // The operator's values win.
        args.properties
            .push(" queued.max.messages.kbytes = 1024".into());
        args.properties.push("fetch.max.bytes = 9000000".into());
        args.properties.push("fetch.wait.max.ms=7".into());
        let cfg = built(&args);
        assert_eq!(cfg.get("queued.max.messages.kbytes"), Some("1024"));
        assert_eq!(cfg.get("fetch.max.bytes"), Some("9000000"));
        assert_eq!(cfg.get("fetch.wait.max.ms"), Some("7"));
        assert_eq!(args.property("fetch.max.bytes"), Some("9000000"));
        assert_eq!(args.property("nope"), None);
    }
}
