//! A group consumer whose offsets are stored by the worker (never automatically) and committed
//! in the background, on rebalance and at shutdown.
//!
//! The context counts assignments per partition ("epochs"), so stateful workers (the chainer,
//! the sinks) notice every re-assignment — even revoke-then-assign between two messages — and
//! rebuild their per-partition state from durable storage instead of trusting memory.

use super::offsets::TopicPartition;
use super::KafkaArgs;
use crate::error::RuntimeError;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::KafkaResult;
use rdkafka::{ClientConfig, ClientContext, TopicPartitionList};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub type AuditConsumer = StreamConsumer<TrackingContext>;

/// Assignment state shared between the consumer's callbacks and the worker.
#[derive(Debug, Default)]
pub struct RebalanceState {
    next_epoch: AtomicU64,
    /// topic → partition → epoch of its current assignment; absent = not assigned. Keyed by
    /// topic first so that the per-record lookup ([`Self::epoch`]) borrows the topic instead of
    /// building a `(String, i32)` key.
    assigned: Mutex<HashMap<String, HashMap<i32, u64>>>,
}

impl RebalanceState {
    /// The epoch of `tp`'s current assignment, or `None` if it is not assigned to us.
    pub fn epoch(&self, topic: &str, partition: i32) -> Option<u64> {
        self.lock().get(topic)?.get(&partition).copied()
    }

    /// Currently assigned partitions with their epochs.
    pub fn assigned(&self) -> Vec<((String, i32), u64)> {
        self.lock()
            .iter()
            .flat_map(|(t, ps)| ps.iter().map(move |(p, e)| ((t.clone(), *p), *e)))
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, HashMap<i32, u64>>> {
        // A poisoned lock only means a callback panicked mid-update; the map is still usable.
        self.assigned.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn on_assign(&self, tpl: &TopicPartitionList) {
        let mut map = self.lock();
        for e in tpl.elements() {
            let epoch = self.next_epoch.fetch_add(1, Ordering::Relaxed) + 1;
            map.entry(e.topic().to_owned())
                .or_default()
                .insert(e.partition(), epoch);
        }
    }

    fn on_revoke(&self, tpl: &TopicPartitionList) {
        let mut map = self.lock();
        for e in tpl.elements() {
            if let Some(ps) = map.get_mut(e.topic()) {
                ps.remove(&e.partition());
                if ps.is_empty() {
                    map.remove(e.topic());
                }
            }
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

/// Stores the next offset of each of `stores`' partitions, in one call (see
/// [`store_next_offset`]).
pub fn store_next_offsets(consumer: &AuditConsumer, stores: &[(TopicPartition, i64)]) {
    let mut tpl = TopicPartitionList::with_capacity(stores.len());
    for ((topic, partition), next_offset) in stores {
        if let Err(e) =
            tpl.add_partition_offset(topic, *partition, rdkafka::Offset::Offset(*next_offset))
        {
            tracing::warn!(%topic, partition, next_offset, error = %e, "cannot build offset list");
            return;
        }
    }
    if tpl.count() == 0 {
        return;
    }
    if let Err(e) = consumer.store_offsets(&tpl) {
        tracing::debug!(?stores, error = %e, "offsets not stored (a partition no longer assigned?)");
    }
}

/// How long a final (or pre-rejoin) commit may wait for the group coordinator. Past it the
/// worker goes on: what is not committed is read again, and the commit itself still finishes
/// in the background if the broker comes back.
pub const COMMIT_BOUND: Duration = Duration::from_secs(15);

/// Commits stored offsets synchronously (shutdown and re-join paths), off the async runtime
/// and for at most [`COMMIT_BOUND`].
pub async fn commit_stored(consumer: &Arc<AuditConsumer>) {
    let c = consumer.clone();
    let result = off_runtime("commit", COMMIT_BOUND, move || {
        c.commit_consumer_state(rdkafka::consumer::CommitMode::Sync)
    })
    .await;
    match result {
        Some(Ok(())) => tracing::info!("final offsets committed"),
        // "No offset stored" is the normal case for an idle consumer.
        Some(Err(e)) => tracing::info!(error = %e, "final commit did not commit anything new"),
        None => tracing::warn!(
            bound = ?COMMIT_BOUND,
            "final commit not confirmed in time (the group coordinator does not answer); \
             what it would have committed is read again"
        ),
    }
}

/// How long a worker's consumer may take to close (leave its group, commit) at shutdown.
pub const CLOSE_BOUND: Duration = Duration::from_secs(10);

/// Closes a consumer, or anything that owns one (`Arc<T>`): librdkafka leaves the group and
/// commits at close, which waits for the group coordinator without a bound (a broker that
/// accepts connections but answers nothing held a worker's exit forever, on a runtime thread,
/// where no timeout can reach it). This waits (within `bound`) until the caller holds the last
/// reference, so that the close happens here, then closes on a thread of its own and waits for
/// it at most what is left of `bound`; after that the worker goes on (or exits) and the thread
/// is left to finish.
pub async fn close<T: Send + Sync + 'static>(holder: Arc<T>, bound: Duration) {
    let deadline = tokio::time::Instant::now() + bound;
    while Arc::strong_count(&holder) > 1 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if Arc::strong_count(&holder) > 1 {
        tracing::warn!(
            ?bound,
            "consumer still shared at close; its last holder closes it"
        );
    }
    close_owned(
        holder,
        deadline.saturating_duration_since(tokio::time::Instant::now()),
    )
    .await;
}

/// Drops `value` (whose drop closes Kafka clients: a consumer, a transactional producer) on a
/// thread of its own and waits for it at most `bound`.
pub async fn close_owned<T: Send + 'static>(value: T, bound: Duration) {
    if off_runtime("close", bound, move || drop(value))
        .await
        .is_none()
    {
        tracing::warn!(
            ?bound,
            "a Kafka client did not close in time (its broker does not answer); leaving it"
        );
    }
}

/// Drops `value` (whose drop may close a Kafka client and wait for its broker) on a thread of
/// its own, without waiting: for clients replaced while the worker runs.
pub fn close_detached<T: Send + 'static>(value: T) {
    if let Err(e) = std::thread::Builder::new()
        .name("kafka-close".into())
        .spawn(move || drop(value))
    {
        tracing::warn!(error = %e, "cannot start a thread to close a Kafka client");
    }
}

/// Runs a librdkafka call that may wait on the broker without a bound on a thread of its own,
/// and waits for its result at most `bound` (`None` past it, or if the call panicked). Not on
/// tokio's blocking pool: a runtime waits for its blocking threads when it shuts down, so a
/// call that never returns would keep the worker's process from ending.
async fn off_runtime<T: Send + 'static>(
    what: &'static str,
    bound: Duration,
    f: impl FnOnce() -> T + Send + 'static,
) -> Option<T> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let spawned = std::thread::Builder::new()
        .name(format!("kafka-{what}"))
        .spawn(move || {
            let _ = tx.send(f());
        });
    if let Err(e) = spawned {
        tracing::warn!(what, error = %e, "cannot start a thread for a Kafka call");
        return None;
    }
    tokio::time::timeout(bound, rx).await.ok()?.ok()
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

#[cfg(test)]
mod rebalance_state_tests {
    use super::*;

    fn tpl(parts: &[(&str, i32)]) -> TopicPartitionList {
        let mut l = TopicPartitionList::new();
        for (t, p) in parts {
            l.add_partition(t, *p);
        }
        l
    }

    #[test]
    fn every_assignment_gets_a_new_epoch_and_a_revoke_forgets_only_its_partitions() {
        let s = RebalanceState::default();
        assert_eq!(s.epoch("a", 0), None);
        s.on_assign(&tpl(&[("a", 0), ("a", 1), ("b", 0)]));
        let (a0, a1, b0) = (s.epoch("a", 0), s.epoch("a", 1), s.epoch("b", 0));
        assert!(a0.is_some() && a1.is_some() && b0.is_some());
        assert_ne!(a0, a1);
        assert_ne!(a1, b0);
        assert_eq!(s.epoch("a", 2), None, "partition not assigned");
        assert_eq!(s.epoch("c", 0), None, "topic not assigned");

        s.on_revoke(&tpl(&[("a", 0)]));
        assert_eq!(s.epoch("a", 0), None);
        assert_eq!(s.epoch("a", 1), a1, "the other partitions keep their epoch");
        assert_eq!(s.epoch("b", 0), b0);

        // Revoke-then-assign of the same partition is a new epoch, above every earlier one.
        s.on_assign(&tpl(&[("a", 0)]));
        let again = s.epoch("a", 0).expect("assigned again");
        assert!(again > a0.max(a1).max(b0).expect("epochs"));

        s.on_revoke(&tpl(&[("b", 0)]));
        let mut assigned = s.assigned();
        assigned.sort();
        assert_eq!(
            assigned,
            vec![
                (("a".to_owned(), 0), again),
                (("a".to_owned(), 1), a1.expect("a1"))
            ]
        );
    }
}
