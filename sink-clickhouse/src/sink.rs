//! The consume loop: `<prefix>chained` → `audit_events`, `<prefix>checkpoints` →
//! `audit_checkpoints`, one group consumer for both topics.
//!
//! # Exactly once per (partition, seq)
//!
//! 1. **Resume from ClickHouse, not from the committed offset.** On every (re)assignment of a
//!    chained partition `p` (a new `RebalanceState::epoch`), the sink finds the end of `p`'s
//!    contiguous stored prefix (the highest `s` with every seq `1..=s` stored,
//!    `Store::stored_head`) and seeks the consumer to the chained offset of `s` + 1 (the
//!    beginning if seq 1 is not stored), whatever the committed offset says: a crash between
//!    insert and commit does not re-read, a hole left below the highest stored seq is
//!    refilled, and a table restored from an older backup is refilled.
//! 2. **One table partition per INSERT, in seq order.** `audit_events` is partitioned by
//!    month; a batch is inserted as runs of same-month rows in seq order, so every INSERT is
//!    atomic and a crash part-way through a batch leaves a contiguous prefix stored.
//! 3. **Check before every insert attempt.** Before inserting a batch (and again before each
//!    retry), the sink asks which of the batch's seqs are stored and inserts only the missing
//!    ones; stored identical copies are duplicates (dropped, counted), stored different copies
//!    are forks (kept out of `audit_events`, recorded in `audit_forks`, metric + error log).
//! 4. **Offsets after durability, in order.** Records of a partition are batched in read order;
//!    the input offset `last + 1` is stored only after the batch's insert succeeded. The
//!    batches of all partitions are flushed together ([`crate::batch::Batches`]): when the
//!    rows held reach `batch_max_rows` or the oldest is `batch_max_age` old (a timer set to
//!    that instant, not a periodic check), in one "what is stored" query and, within a month,
//!    one INSERT.
//!    Undecodable records are dead-lettered (acknowledged by the broker) before their offset
//!    can be covered.
//!
//! Residual race: a sink instance paused longer than the group's session (a "zombie") may
//! insert a batch after its partition moved; step 3 on the other instance narrows this to the
//! time between its check and its insert. An identical duplicate row is then reported by
//! `auditctl verify` as `DuplicateSeq` (a warning), and the analyst recipes count distinct
//! `(chain_partition, seq)`.
//!
//! Checkpoints are inserted once per `(chain_partition, seq, key_id, time_us)` (a heartbeat
//! re-signs the same seq at a later time and is kept), and only once the
//! events they cover are stored (or after `checkpoint_max_defer_secs`), so that a verifier
//! reading ClickHouse does not see a checkpoint ahead of the events (a false truncation alarm).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::Consumer;
use rdkafka::Offset;
use schemas::avro::RecordKind;
use schemas::flat::{AuditRow, CheckpointRow};
use schemas::framing::{self, CatalogIdResolver};
use worker_runtime::health::Readiness;
use worker_runtime::kafka::consumer::{close, commit_stored, store_next_offset, CLOSE_BOUND};
use worker_runtime::kafka::dlq::dead_letter;
use worker_runtime::kafka::pipeline::is_fatal;
use worker_runtime::kafka::trace_context::{self, BatchLinks, KeyValue};
use worker_runtime::kafka::{AuditConsumer, InputRecord, Producer, RebalanceState, Topics};
use worker_runtime::retry::{retry_reporting, DependencyCheck, RetryError, RetryPolicy};
use worker_runtime::telemetry;
use worker_runtime::Shutdown;

use crate::batch::{Batch, Batches, Entry};
use crate::error::Error;
use crate::rowbinary::Layout;
use crate::store::Store;
use crate::writer::store_batches_reporting;

pub const STAGE: &str = "sink-clickhouse";
/// The readiness condition naming ClickHouse: false while a call to it is being retried.
pub const CHECK_CLICKHOUSE: &str = "clickhouse";

/// Tunables of the loop (from the worker's config).
#[derive(Debug, Clone)]
pub struct LoopSettings {
    pub batch_max_rows: usize,
    pub batch_max_age: Duration,
    pub checkpoint_max_defer: Duration,
    pub retry: RetryPolicy,
}

struct Pending {
    offset: i64,
    row: Option<CheckpointRow>,
    received: Instant,
}

struct CheckpointQueue {
    epoch: u64,
    queue: VecDeque<Pending>,
}

pub struct SinkLoop {
    store: Store,
    consumer: Arc<AuditConsumer>,
    rebalance: Arc<RebalanceState>,
    producer: Producer,
    topics: Topics,
    resolver: CatalogIdResolver,
    settings: LoopSettings,
    shutdown: Shutdown,
    /// Chained partition → its open batch (and the epoch it belongs to).
    batches: Batches,
    /// Checkpoints partition → checkpoints waiting for their events.
    checkpoints: HashMap<i32, CheckpointQueue>,
    /// Highest stored seq per chain partition, as far as this instance knows.
    stored_high: HashMap<i32, i64>,
    /// `audit_events`' columns, which each row is written for as it arrives.
    layout: Arc<Layout>,
    /// Where each row is written before its exact-size copy is held.
    scratch: Vec<u8>,
    /// ClickHouse's readiness condition, kept by every retry loop that calls it.
    clickhouse: Option<DependencyCheck>,
    /// The record spans of the open batches, for the insert span's links (empty while tracing
    /// is off). One set for all partitions, as they are stored by one insert; after a
    /// reassignment it may also link records that are re-read (tracing only).
    trace_links: BatchLinks,
}

impl std::fmt::Debug for SinkLoop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SinkLoop")
            .field("store", &self.store)
            .field("topics", &self.topics)
            .finish_non_exhaustive()
    }
}

impl SinkLoop {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        store: Store,
        layout: Arc<Layout>,
        consumer: Arc<AuditConsumer>,
        rebalance: Arc<RebalanceState>,
        producer: Producer,
        topics: Topics,
        resolver: CatalogIdResolver,
        settings: LoopSettings,
        shutdown: Shutdown,
    ) -> Self {
        SinkLoop {
            store,
            consumer,
            rebalance,
            producer,
            topics,
            resolver,
            settings,
            shutdown,
            batches: Batches::default(),
            checkpoints: HashMap::new(),
            stored_high: HashMap::new(),
            layout,
            scratch: Vec::new(),
            clickhouse: None,
            trace_links: BatchLinks::default(),
        }
    }

    /// Runs until shutdown (then flushes what it holds, once, and commits) or a fatal error.
    pub async fn run(mut self, ready: Readiness) -> Result<(), Error> {
        // Checkpoints waiting for their events (and for `checkpoint_max_defer`) are looked at
        // on this tick; batches are flushed by their own deadline below.
        let tick_every = (self.settings.batch_max_age / 2)
            .clamp(Duration::from_millis(10), Duration::from_millis(250));
        let mut tick = tokio::time::interval(tick_every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Fires when the oldest record held reaches `batch_max_age`. A periodic check instead
        // flushed up to one period late, and each partition at a different time.
        let flush_at = tokio::time::sleep(Duration::ZERO);
        tokio::pin!(flush_at);
        let mut armed: Option<Instant> = None;
        self.clickhouse = Some(DependencyCheck::new(ready.clone(), CHECK_CLICKHOUSE));
        ready.set(true);
        let consumer = self.consumer.clone();
        let result: Result<(), Error> = loop {
            let deadline = self.batches.deadline(self.settings.batch_max_age);
            if deadline != armed {
                if let Some(d) = deadline {
                    flush_at.as_mut().reset(d.into());
                }
                armed = deadline;
            }
            tokio::select! {
                biased;
                _ = self.shutdown.cancelled() => break Ok(()),
                _ = &mut flush_at, if armed.is_some() => {
                    armed = None;
                    if let Err(e) = self.on_tick().await {
                        break Err(e);
                    }
                }
                _ = tick.tick() => {
                    if let Err(e) = self.on_tick().await {
                        break Err(e);
                    }
                }
                msg = consumer.recv() => {
                    let input = match msg {
                        Ok(m) => InputRecord::from_message(&m),
                        Err(e) if is_fatal(&e) => {
                            break Err(worker_runtime::RuntimeError::kafka("consuming", e).into())
                        }
                        Err(e) => {
                            tracing::warn!(stage = STAGE, error = %e, "consumer error (retrying)");
                            continue;
                        }
                    };
                    if let Err(e) = self.on_record(input).await {
                        break Err(e);
                    }
                }
            }
        };
        ready.set(false);
        // Graceful stop: one more attempt at what is held (retries stop at once, the shutdown
        // having fired); what does not make it is re-read after restart.
        if let Err(e) = self.flush().await {
            tracing::warn!(stage = STAGE, error = %e, "final flush failed; those records will be re-read");
        }
        if let Err(e) = self.drain_checkpoints(true).await {
            tracing::warn!(stage = STAGE, error = %e, "final checkpoint flush failed; they will be re-read");
        }
        commit_stored(&self.consumer).await;
        // Closed here, bounded, not wherever the last reference happens to be dropped.
        drop(consumer);
        close(self.consumer, CLOSE_BOUND).await;
        result
    }

    async fn on_tick(&mut self) -> Result<(), Error> {
        if self.batches.due(
            Instant::now(),
            self.settings.batch_max_rows,
            self.settings.batch_max_age,
        ) {
            self.flush().await?;
        }
        self.drain_checkpoints(false).await
    }

    async fn on_record(&mut self, input: InputRecord) -> Result<(), Error> {
        let Some(epoch) = self.rebalance.epoch(&input.topic, input.partition) else {
            // Revoked since it was fetched: its new owner reads it.
            return Ok(());
        };
        if input.topic == self.topics.chained {
            self.on_chained(input, epoch).await
        } else if input.topic == self.topics.checkpoints {
            self.on_checkpoint(input, epoch).await
        } else {
            tracing::warn!(topic = %input.topic, "record of an unexpected topic ignored");
            Ok(())
        }
    }

    // ---- chained events ------------------------------------------------------------------------

    async fn on_chained(&mut self, input: InputRecord, epoch: u64) -> Result<(), Error> {
        let p = input.partition;
        if self.batches.get(p).map(|b| b.epoch) != Some(epoch) {
            // A new assignment of p: forget what the old one held (it was not stored, so it is
            // re-read) and resume after the contiguous prefix stored in ClickHouse.
            self.batches.insert(p, Batch::new(epoch));
            let store = self.store.clone();
            let head = retry_reporting(
                "clickhouse stored head",
                &self.settings.retry,
                self.shutdown.token(),
                self.clickhouse.as_ref(),
                || store.stored_head(p),
            )
            .await
            .map_err(RetryError::into_inner)?;
            let target = head.map(|h| h.chained_offset + 1);
            if let Some(h) = head {
                self.stored_high.insert(p, h.seq);
            }
            tracing::info!(
                stage = STAGE,
                partition = p,
                epoch,
                stored_seq = head.map(|h| h.seq),
                resume_offset = ?target,
                record_offset = input.offset,
                "partition assigned: resuming after the contiguous stored prefix"
            );
            metrics::counter!("audit_sink_resumes_total", "stage" => STAGE).increment(1);
            if target != Some(input.offset) {
                self.seek(
                    &input.topic,
                    p,
                    target.map_or(Offset::Beginning, Offset::Offset),
                )
                .await?;
                // This record is re-read after the seek if it is at or after the target.
                return Ok(());
            }
        }
        let now = Instant::now();
        // This record's step of its event's trace; the insert span links to it.
        let span = trace_context::process_span(STAGE, &input);
        span.end();
        // The common case, a record of the current chained schema on its own partition, is
        // written from its bytes; anything else (or any problem) is decoded, which says why.
        let direct = framing::current_datum(
            input.payload.as_deref().unwrap_or_default(),
            RecordKind::ChainedEvent,
            Some(&self.resolver),
        )
        .and_then(|datum| Entry::from_datum(datum, input.offset, &self.layout, &mut self.scratch))
        .filter(|e| e.chain_partition == p);
        let decoded = match direct {
            Some(entry) => Ok(Ok(entry)),
            None => self.decode_chained(&input).map(|row| {
                // A row that does not fit the table stops the sink (nothing is committed):
                // the table is not what the migrations made, which no record can fix.
                Entry::new(row, &self.layout, &mut self.scratch)
            }),
        };
        match decoded {
            Ok(entry) => {
                let entry = entry?;
                if span.context().is_some() {
                    self.trace_links.add(&span);
                }
                if let Some(b) = self.batches.get_mut(p) {
                    b.push(entry, now);
                }
            }
            Err((code, message)) => {
                self.dead_letter(&input, code, &message).await?;
                if let Some(b) = self.batches.get_mut(p) {
                    b.cover(input.offset, now);
                }
            }
        }
        if self.batches.rows() >= self.settings.batch_max_rows {
            self.flush().await?;
        }
        Ok(())
    }

    fn decode_chained(&self, input: &InputRecord) -> Result<AuditRow, (&'static str, String)> {
        let Some(payload) = input.payload.as_deref() else {
            return Err(("empty_payload", "chained record without a value".to_owned()));
        };
        let chained = framing::decode_chained(payload, Some(&self.resolver))
            .map_err(|e| (e.code(), e.to_string()))?;
        if chained.chain_partition != input.partition {
            // The chain of partition p lives on partition p; anything else would corrupt the
            // resume point. Dead-lettered (the verifier then reports the gap), never dropped.
            return Err((
                "partition_mismatch",
                format!(
                    "record of chain partition {} on {}/{}",
                    chained.chain_partition, input.topic, input.partition
                ),
            ));
        }
        Ok(AuditRow::from_chained_owned(chained, input.offset))
    }

    async fn seek(&self, topic: &str, partition: i32, offset: Offset) -> Result<(), Error> {
        let consumer = self.consumer.clone();
        let t = topic.to_owned();
        let result = tokio::task::spawn_blocking(move || {
            consumer.seek(&t, partition, offset, Duration::from_secs(10))
        })
        .await
        .map_err(|e| worker_runtime::RuntimeError::Task {
            task: "seek".into(),
            message: e.to_string(),
        })?;
        result.map_err(|source| Error::Seek {
            topic: topic.to_owned(),
            partition,
            offset: format!("{offset:?}"),
            source: Box::new(source),
        })
    }

    /// Stores every open batch (all partitions together), then each one's input offset.
    async fn flush(&mut self) -> Result<(), Error> {
        let mut held = Vec::new();
        for (p, batch) in self.batches.take_nonempty() {
            if self.rebalance.epoch(&self.topics.chained, p) != Some(batch.epoch) {
                // Revoked meanwhile: the new owner resumes from ClickHouse; storing offsets for
                // a partition we no longer hold is not possible anyway.
                tracing::debug!(partition = p, "dropping the batch of a revoked partition");
                self.batches.remove(p);
                continue;
            }
            held.push((p, batch));
        }
        if held.is_empty() {
            return Ok(());
        }
        let rows: usize = held.iter().map(|(_, b)| b.len()).sum();
        let oldest = held.iter().filter_map(|(_, b)| b.started()).min();
        let started = Instant::now();
        let span = trace_context::batch_span(
            STAGE,
            "INSERT audit_events",
            std::mem::take(&mut self.trace_links),
            vec![
                KeyValue::new("db.system.name", "clickhouse"),
                KeyValue::new("db.operation.name", "INSERT"),
                KeyValue::new("db.collection.name", "audit_events"),
                KeyValue::new("db.operation.batch.size", rows as i64),
                KeyValue::new(
                    "messaging.destination.partition.id",
                    held.iter()
                        .map(|(p, _)| p.to_string())
                        .collect::<Vec<_>>()
                        .join(","),
                ),
            ],
        );
        let parts: Vec<(i32, &[Entry])> = held
            .iter()
            .map(|(p, b)| (*p, b.entries.as_slice()))
            .collect();
        let outcome = store_batches_reporting(
            &self.store,
            &parts,
            &self.settings.retry,
            self.shutdown.token(),
            self.clickhouse.as_ref(),
        )
        .await;
        span.end_with(&outcome);
        let outcomes = match outcome {
            Ok(o) => o,
            Err(e) => {
                // Put them back so a final flush can try once more; offsets stay unstored.
                for (p, b) in held {
                    self.batches.put_back(p, b);
                }
                return Err(e);
            }
        };
        let took = started.elapsed();
        tracing::debug!(
            stage = STAGE,
            partitions = held.len(),
            rows,
            oldest_age_ms = oldest.map(|t| started.saturating_duration_since(t).as_millis() as u64),
            took_ms = took.as_millis() as u64,
            "batches stored"
        );
        metrics::histogram!("audit_sink_flush_seconds", "stage" => STAGE)
            .record(took.as_secs_f64());
        metrics::histogram!("audit_sink_batch_records", "stage" => STAGE).record(rows as f64);
        let now = telemetry::now_us();
        let latency = telemetry::StoredLatency::new("clickhouse");
        for ((p, full), outcome) in held.iter().zip(outcomes) {
            for e in &full.entries {
                latency.record(e.event_time_us, e.receive_time_us, now);
            }
            if let Some(seq) = outcome.max_seq {
                let high = self.stored_high.entry(*p).or_insert(seq);
                *high = (*high).max(seq);
            }
            if let Some(last) = full.last_offset {
                store_next_offset(&self.consumer, &self.topics.chained, *p, last + 1);
            }
        }
        Ok(())
    }

    async fn dead_letter(
        &self,
        input: &InputRecord,
        code: &str,
        message: &str,
    ) -> Result<(), Error> {
        tracing::warn!(
            stage = STAGE,
            topic = %input.topic,
            partition = input.partition,
            offset = input.offset,
            code,
            message,
            "undecodable record dead-lettered"
        );
        metrics::counter!("audit_sink_dead_letters_total", "stage" => STAGE, "reason" => code.to_owned())
            .increment(1);
        let record = dead_letter(&self.topics.rejected, input, STAGE, code, message);
        self.producer.send(&record).await?;
        Ok(())
    }

    // ---- checkpoints ---------------------------------------------------------------------------

    async fn on_checkpoint(&mut self, input: InputRecord, epoch: u64) -> Result<(), Error> {
        let q = input.partition;
        let entry = self
            .checkpoints
            .entry(q)
            .or_insert_with(|| CheckpointQueue {
                epoch,
                queue: VecDeque::new(),
            });
        if entry.epoch != epoch {
            // Re-assigned: the consumer restarts from the committed offset.
            *entry = CheckpointQueue {
                epoch,
                queue: VecDeque::new(),
            };
        }
        let decoded = match input.payload.as_deref() {
            None => Err((
                "empty_payload",
                "checkpoint record without a value".to_owned(),
            )),
            Some(bytes) => framing::decode_checkpoint(bytes, Some(&self.resolver))
                .map_err(|e| (e.code(), e.to_string())),
        };
        let row = match decoded {
            Ok(cp) => Some(CheckpointRow::from_checkpoint(&cp, input.offset)),
            Err((code, message)) => {
                self.dead_letter(&input, code, &message).await?;
                None
            }
        };
        if let Some(qu) = self.checkpoints.get_mut(&q) {
            qu.queue.push_back(Pending {
                offset: input.offset,
                row,
                received: Instant::now(),
            });
        }
        self.drain_checkpoints(false).await
    }

    /// Inserts the checkpoints whose events are stored (or that waited too long), in order per
    /// checkpoints partition, storing each one's offset after it. `force` (shutdown) does not
    /// wait for events.
    async fn drain_checkpoints(&mut self, force: bool) -> Result<(), Error> {
        let parts: Vec<i32> = self.checkpoints.keys().copied().collect();
        let mut refreshed: HashMap<i32, ()> = HashMap::new();
        for q in parts {
            while let Some(front) = self.checkpoints.get(&q).and_then(|c| c.queue.front()) {
                let offset = front.offset;
                let Some(row) = front.row.clone() else {
                    self.pop_checkpoint(q, offset);
                    continue;
                };
                let waited = front.received.elapsed();
                let p = row.chain_partition;
                // A genesis checkpoint (seq 0) covers no event: nothing to wait for.
                let mut covered =
                    row.seq == 0 || self.stored_high.get(&p).is_some_and(|&h| h >= row.seq);
                // While this instance holds chained partition p, its own flushes keep
                // `stored_high` current: asking ClickHouse (a count over the whole partition)
                // on every tick until the covering batch is stored would tell nothing new.
                let held = self.batches.get(p).is_some_and(|b| {
                    self.rebalance.epoch(&self.topics.chained, p) == Some(b.epoch)
                });
                if !covered && !held && !refreshed.contains_key(&p) {
                    refreshed.insert(p, ());
                    let store = self.store.clone();
                    let head = retry_reporting(
                        "clickhouse stored head",
                        &self.settings.retry,
                        self.shutdown.token(),
                        self.clickhouse.as_ref(),
                        || store.stored_head(p),
                    )
                    .await
                    .map_err(RetryError::into_inner)?;
                    if let Some(h) = head {
                        self.stored_high.insert(p, h.seq);
                        covered = h.seq >= row.seq;
                    }
                }
                if !covered && !force && waited < self.settings.checkpoint_max_defer {
                    break;
                }
                if !covered {
                    tracing::warn!(
                        chain_partition = p,
                        seq = row.seq,
                        ?waited,
                        "storing a checkpoint ahead of its events (they are late or missing)"
                    );
                }
                let store = self.store.clone();
                let inserted = retry_reporting(
                    "clickhouse store checkpoint",
                    &self.settings.retry,
                    self.shutdown.token(),
                    self.clickhouse.as_ref(),
                    || {
                        let store = store.clone();
                        let row = row.clone();
                        async move {
                            if store.checkpoint_exists(&row).await? {
                                return Ok(false);
                            }
                            store.insert_checkpoint(&row).await.map(|()| true)
                        }
                    },
                )
                .await
                .map_err(RetryError::into_inner)?;
                if inserted {
                    metrics::counter!("audit_sink_checkpoints_inserted_total", "stage" => STAGE)
                        .increment(1);
                    tracing::debug!(chain_partition = p, seq = row.seq, key_id = %row.key_id, "checkpoint stored");
                }
                self.pop_checkpoint(q, offset);
            }
        }
        Ok(())
    }

    fn pop_checkpoint(&mut self, q: i32, offset: i64) {
        if let Some(c) = self.checkpoints.get_mut(&q) {
            c.queue.pop_front();
        }
        store_next_offset(&self.consumer, &self.topics.checkpoints, q, offset + 1);
    }
}
