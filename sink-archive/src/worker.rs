//! The consume loop.
//!
//! One group consumer reads `<prefix>chained` and `<prefix>checkpoints`. Segment writes happen
//! inline, one at a time, so per partition they are in order, and an input offset is stored
//! only after the segment (and manifest) holding its record is durable.
//!
//! On every (re)assignment of a chained partition (a new `RebalanceState::epoch`), its state is
//! rebuilt from the archive — never from memory or the committed offset: the highest stored
//! `last_seq` and its chained offset, then a seek to that offset + 1. Records with a seq at or
//! below the stored one are skipped, so a crash anywhere leaves neither a gap nor an overlap.
//! On revoke, an open segment is dropped unwritten (the new owner re-reads it).
//!
//! A checkpoint is archived only once the segments covering its seq are ([`crate::pending`]):
//! until then it waits in memory and holds back the checkpoints topic's stored offset.
//! With `--anchor-url` it is then written to the anchor too, and only once both hold it is it
//! done: an anchor outage stalls the loop (retried, `/readyz` names `anchor_store`) and never
//! lets the offset pass a checkpoint the anchor lacks.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::Consumer;
use rdkafka::Offset;
use schemas::avro::RecordKind;
use schemas::chained_row::CanonicalDatum;
use schemas::{framing, SchemaError};
use worker_runtime::health::Readiness;
use worker_runtime::kafka::consumer::{
    close, commit_stored, store_next_offset, subscribe, CLOSE_BOUND,
};
use worker_runtime::kafka::trace_context::{self, BatchLinks, KeyValue};
use worker_runtime::kafka::{
    dlq, pipeline, AuditConsumer, ConsumerSettings, InputRecord, Producer, RebalanceState, Topics,
};
use worker_runtime::Shutdown;

use crate::anchor::Anchor;
use crate::archive::Archive;
use crate::buffer::{Limits, OfferError, PartitionState, Record, Segment};
use crate::pending::PendingCheckpoints;
use crate::{Config, Error, STAGE};

pub struct Worker {
    consumer: Arc<AuditConsumer>,
    rebalance: Arc<RebalanceState>,
    producer: Producer,
    archive: Archive,
    /// The write-once anchor (`--anchor-url`), if any.
    anchor: Option<Anchor>,
    topics: Topics,
    limits: Limits,
    states: HashMap<i32, PartitionState>,
    /// Partition → (epoch, offset sought to): older records still in flight are dropped.
    seeks: HashMap<i32, (u64, i64)>,
    /// Checkpoints read, waiting for the segments they cover.
    pending: PendingCheckpoints,
    /// Chain partition not assigned here → (when listed, its archived `last_seq`): for the
    /// checkpoints of chain partitions another instance archives.
    remote_archived: HashMap<i32, (Instant, Option<i64>)>,
    /// When the last "checkpoints still waiting" warning was logged.
    waiting_warned: Option<Instant>,
    /// Chain partition → the record spans of its open segment, for the put span's links
    /// (empty while tracing is off).
    trace_links: HashMap<i32, BatchLinks>,
}

/// How often the archive is listed for a chain partition archived by another instance while
/// one of its checkpoints waits.
const REMOTE_REFRESH: Duration = Duration::from_secs(5);
/// A checkpoint waiting longer than this is worth a warning (its events are late or missing).
const WAIT_WARN: Duration = Duration::from_secs(300);

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("topics", &self.topics)
            .field("partitions", &self.states.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// A decode error that no dead letter can fix: the worker lacks a schema registry or id.
fn is_config_problem(e: &SchemaError) -> bool {
    matches!(
        e,
        SchemaError::NoResolver { .. }
            | SchemaError::UnknownSchemaId { .. }
            | SchemaError::CatalogSchema { .. }
    )
}

impl Worker {
    /// The group consumer, for the liveness watchdog (which re-joins it when stuck).
    pub fn consumer(&self) -> Arc<AuditConsumer> {
        self.consumer.clone()
    }

    /// The consumer's settings (group, client id, topics).
    pub fn consumer_settings(config: &Config) -> ConsumerSettings {
        let topics = config.kafka.topics();
        ConsumerSettings::new(
            config.group_id.clone(),
            "sink-archive",
            vec![topics.chained.clone(), topics.checkpoints.clone()],
        )
    }

    pub fn new(config: &Config, archive: Archive, anchor: Option<Anchor>) -> Result<Self, Error> {
        let topics = config.kafka.topics();
        let settings = Self::consumer_settings(config);
        let (consumer, rebalance) = subscribe(&config.kafka, &settings)?;
        let producer = Producer::new(&config.kafka, "sink-archive-dlq")?;
        // A warning, not a refusal: the operator may have reasons; the check must not delay
        // the start either.
        tokio::spawn(worker_runtime::kafka::admin::warn_on_finite_retention(
            config.kafka.clone(),
        ));
        Ok(Worker {
            consumer,
            rebalance,
            producer,
            archive,
            anchor,
            topics,
            limits: config.limits(),
            states: HashMap::new(),
            seeks: HashMap::new(),
            pending: PendingCheckpoints::default(),
            remote_archived: HashMap::new(),
            waiting_warned: None,
            trace_links: HashMap::new(),
        })
    }

    pub async fn run(mut self, ready: Readiness, shutdown: Shutdown) -> Result<(), Error> {
        let tick_every =
            (self.limits.max_age / 4).clamp(Duration::from_millis(100), Duration::from_secs(1));
        let mut tick = tokio::time::interval(tick_every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ready.set(true);
        let result = loop {
            let step = tokio::select! {
                biased;
                _ = shutdown.cancelled() => break Ok(()),
                _ = tick.tick() => self.on_tick().await,
                msg = self.consumer.recv() => match msg {
                    Ok(m) => {
                        let input = InputRecord::from_message(&m);
                        drop(m);
                        self.on_record(input).await
                    }
                    Err(e) if pipeline::is_fatal(&e) => Err(worker_runtime::RuntimeError::kafka("consuming", e).into()),
                    Err(e) => {
                        tracing::warn!(error = %e, "consumer error (librdkafka retries)");
                        Ok(())
                    }
                },
            };
            match step {
                Ok(()) => {}
                Err(Error::Cancelled { what, .. }) => {
                    tracing::warn!(%what, "shutdown during a store operation; its records will be re-read");
                    break Ok(());
                }
                Err(e) => break Err(e),
            }
        };
        ready.set(false);
        if result.is_ok() {
            self.flush_all().await;
            if let Err(e) = self.drain_checkpoints(false).await {
                tracing::warn!(error = %e, "could not archive the covered checkpoints at shutdown; they will be re-read");
            }
        }
        commit_stored(&self.consumer).await;
        // Closed here, bounded, not wherever the last reference happens to be dropped.
        close(self.consumer, CLOSE_BOUND).await;
        result
    }

    /// Closes aged segments; forgets partitions no longer assigned to us.
    async fn on_tick(&mut self) -> Result<(), Error> {
        let now = Instant::now();
        let parts: Vec<i32> = self.states.keys().copied().collect();
        for p in parts {
            if !self.is_current(p) {
                self.forget(p);
                continue;
            }
            let closed = self
                .states
                .get_mut(&p)
                .and_then(|s| s.poll_age(now, &self.limits));
            if let Some(seg) = closed {
                self.write(p, seg).await?;
            }
        }
        self.drain_checkpoints(true).await
    }

    /// Shutdown: write what is open, so a restart does not re-read it (best effort).
    async fn flush_all(&mut self) {
        let parts: Vec<i32> = self.states.keys().copied().collect();
        for p in parts {
            if !self.is_current(p) {
                continue;
            }
            let open = self.states.get_mut(&p).and_then(PartitionState::take_open);
            if let Some(seg) = open {
                if let Err(e) = self.write(p, seg).await {
                    tracing::warn!(partition = p, error = %e, "could not flush the open segment at shutdown; it will be re-read");
                }
            }
        }
    }

    fn is_current(&self, p: i32) -> bool {
        let epoch = self.rebalance.epoch(&self.topics.chained, p);
        epoch.is_some() && self.states.get(&p).map(|s| s.epoch) == epoch
    }

    fn forget(&mut self, p: i32) {
        if let Some(s) = self.states.remove(&p) {
            if s.has_open() {
                tracing::info!(
                    partition = p,
                    "partition revoked: dropping its open segment (the new owner re-reads it)"
                );
            }
        }
        self.seeks.remove(&p);
        self.trace_links.remove(&p);
    }

    async fn on_record(&mut self, input: InputRecord) -> Result<(), Error> {
        if input.topic == self.topics.chained {
            self.on_chained(input).await
        } else if input.topic == self.topics.checkpoints {
            self.on_checkpoint(input).await
        } else {
            Ok(())
        }
    }

    async fn on_chained(&mut self, input: InputRecord) -> Result<(), Error> {
        let p = input.partition;
        let Some(epoch) = self.rebalance.epoch(&input.topic, p) else {
            return Ok(()); // revoked since fetched: the new owner reads it
        };
        if self.states.get(&p).map(|s| s.epoch) != Some(epoch) {
            self.forget(p);
            let resume = self.archive.resume(p, &self.topics.chained).await?;
            tracing::info!(
                partition = p,
                epoch,
                ?resume,
                "partition assigned: resuming from the archive"
            );
            let (seq, hash, next) = match resume {
                Some(r) => (Some(r.last_seq), r.last_hash, r.next_offset),
                None => (None, None, None),
            };
            self.states
                .insert(p, PartitionState::new(p, epoch, seq, hash));
            if let Some(next) = next {
                if next != input.offset {
                    self.seek(p, next).await?;
                    self.seeks.insert(p, (epoch, next));
                    return Ok(());
                }
            }
        }
        if let Some(&(e, target)) = self.seeks.get(&p) {
            if e == epoch && input.offset < target {
                return Ok(()); // fetched before the seek
            }
            self.seeks.remove(&p);
        }
        let payload = input.payload.as_deref().unwrap_or_default();
        // What the chainer wrote is its record's own encoding, appended as it is; anything else
        // (or any problem with it) is decoded, which says why.
        let canonical = framing::current_datum(payload, RecordKind::ChainedEvent, None)
            .and_then(CanonicalDatum::new)
            .filter(|d| d.keys().chain_partition == p);
        let record = match canonical {
            Some(d) => Record::Canonical(d),
            None => match framing::decode_chained(payload, None) {
                Ok(ev) if ev.chain_partition == p => Record::from(ev),
                Ok(ev) => {
                    let msg = format!(
                        "chain_partition {} read from partition {p}",
                        ev.chain_partition
                    );
                    return self.reject(&input, "wrong_partition", &msg).await;
                }
                Err(e) if is_config_problem(&e) => {
                    return Err(Error::Schema {
                        what: format!("{}/{p}@{}", input.topic, input.offset),
                        source: e,
                    })
                }
                Err(e) => return self.reject(&input, e.code(), &e.to_string()).await,
            },
        };
        let Some(state) = self.states.get_mut(&p) else {
            return Ok(());
        };
        let offer = match state.offer(
            record,
            input.offset,
            payload.len(),
            Instant::now(),
            &self.limits,
        ) {
            Ok(offer) => offer,
            Err(OfferError::Unarchivable(msg)) => {
                return self.reject(&input, "unarchivable", &msg).await
            }
            Err(OfferError::Segment(e)) => return Err(e.into()),
        };
        // A block of the open segment that just filled is compressed off the async threads.
        if let Some(block) = state.take_full_block() {
            let block = tokio::task::spawn_blocking(move || block.compress())
                .await
                .map_err(|e| Error::Task(format!("compressing a segment block: {e}")))??;
            if let Some(state) = self.states.get_mut(&p) {
                state.put_block(block)?;
                metrics::gauge!("audit_archive_open_segment_bytes", "partition" => p.to_string())
                    .set(state.open_bytes() as f64);
            }
        }
        // This record's step of its event's trace; the put span of the segment that holds it
        // links to it.
        let span = trace_context::process_span(STAGE, &input);
        span.end();
        let in_closed = span.context().is_some()
            && offer
                .closed
                .iter()
                .any(|s| (s.first_offset..=s.last_offset).contains(&input.offset));
        if in_closed {
            self.trace_links.entry(p).or_default().add(&span);
        }
        for seg in offer.closed {
            self.write(p, seg).await?;
        }
        if span.context().is_some() && !in_closed {
            self.trace_links.entry(p).or_default().add(&span);
        }
        if let Some(next) = offer.store_now {
            store_next_offset(&self.consumer, &input.topic, p, next);
        }
        Ok(())
    }

    async fn on_checkpoint(&mut self, input: InputRecord) -> Result<(), Error> {
        let Some(epoch) = self.rebalance.epoch(&input.topic, input.partition) else {
            return Ok(());
        };
        let payload = input.payload.as_deref().unwrap_or_default();
        match framing::decode_checkpoint(payload, None) {
            // seq 0: a genesis checkpoint (an empty partition's attestation).
            Ok(cp) if cp.partition >= 0 && cp.seq >= 0 => {
                self.pending.offer(
                    input.partition,
                    epoch,
                    input.offset,
                    Some(cp),
                    Instant::now(),
                );
            }
            Ok(cp) => {
                let msg = format!("checkpoint with partition {} seq {}", cp.partition, cp.seq);
                return self.reject(&input, "invalid_checkpoint", &msg).await;
            }
            Err(e) if is_config_problem(&e) => {
                return Err(Error::Schema {
                    what: format!("{}/{}@{}", input.topic, input.partition, input.offset),
                    source: e,
                })
            }
            Err(e) => return self.reject(&input, e.code(), &e.to_string()).await,
        }
        self.drain_checkpoints(false).await
    }

    /// Archives the waiting checkpoints whose segments are archived, then stores the
    /// checkpoints topic's offsets up to the oldest one still waiting. With `refresh`, first
    /// lists the archive for waiting chain partitions another instance archives (at most every
    /// [`REMOTE_REFRESH`] each).
    async fn drain_checkpoints(&mut self, refresh: bool) -> Result<(), Error> {
        let (rebalance, topic) = (self.rebalance.clone(), self.topics.checkpoints.clone());
        self.pending
            .retain(|q, epoch| rebalance.epoch(&topic, q) == Some(epoch));
        if refresh {
            let now = Instant::now();
            for p in self.pending.waiting_chains() {
                let fresh = self
                    .remote_archived
                    .get(&p)
                    .is_some_and(|(t, _)| now.saturating_duration_since(*t) < REMOTE_REFRESH);
                if self.is_current(p) || fresh {
                    continue;
                }
                let seq = self.archive.archived_seq(p).await?;
                self.remote_archived.insert(p, (now, seq));
            }
        }
        let ready = self.pending.ready(|p| {
            if self.is_current(p) {
                self.states.get(&p).and_then(PartitionState::stored_seq)
            } else {
                self.remote_archived.get(&p).and_then(|(_, seq)| *seq)
            }
        });
        for r in ready {
            self.archive.store_checkpoint(&r.checkpoint).await?;
            // Both copies before `done`: the offset passes it only once the anchor holds it.
            if let Some(anchor) = &self.anchor {
                anchor.store_checkpoint(&r.checkpoint).await?;
            }
            tracing::debug!(
                chain_partition = r.checkpoint.partition,
                seq = r.checkpoint.seq,
                "checkpoint archived after its segments"
            );
            self.pending.done(r.partition, r.offset);
        }
        self.store_checkpoint_offsets();
        let (waiting, oldest) = self.pending.oldest();
        metrics::gauge!("audit_archive_checkpoints_waiting").set(waiting as f64);
        if let Some((since, p, seq)) = oldest {
            let now = Instant::now();
            let waited = now.saturating_duration_since(since);
            let warned_lately = self
                .waiting_warned
                .is_some_and(|t| now.saturating_duration_since(t) < Duration::from_secs(60));
            if waited >= WAIT_WARN && !warned_lately {
                self.waiting_warned = Some(now);
                tracing::warn!(
                    waiting,
                    chain_partition = p,
                    seq,
                    ?waited,
                    "checkpoints still waiting for the segments they cover (events late or missing)"
                );
            }
        }
        Ok(())
    }

    fn store_checkpoint_offsets(&mut self) {
        for (q, next) in self.pending.commit_points() {
            store_next_offset(&self.consumer, &self.topics.checkpoints, q, next);
        }
    }

    /// Dead-letters `input` (waits for the broker's ack), then lets its offset be stored in
    /// order with the partition's segments.
    async fn reject(
        &mut self,
        input: &InputRecord,
        code: &str,
        message: &str,
    ) -> Result<(), Error> {
        tracing::warn!(topic = %input.topic, partition = input.partition, offset = input.offset, code, message, "rejecting an undecodable record");
        let record = dlq::dead_letter(&self.topics.rejected, input, STAGE, code, message);
        self.producer.send(&record).await?;
        metrics::counter!("audit_records_rejected_total", "stage" => STAGE, "reason" => code.to_owned()).increment(1);
        let next = input.offset + 1;
        if input.topic == self.topics.checkpoints {
            // In order with the checkpoints still waiting before it.
            if let Some(epoch) = self.rebalance.epoch(&input.topic, input.partition) {
                self.pending
                    .offer(input.partition, epoch, input.offset, None, Instant::now());
            }
            self.store_checkpoint_offsets();
            return Ok(());
        }
        match self.states.get_mut(&input.partition) {
            Some(s) if input.topic == self.topics.chained && s.has_open() => s.cover(next),
            _ => store_next_offset(&self.consumer, &input.topic, input.partition, next),
        }
        Ok(())
    }

    /// Writes a closed segment of partition `p`, then stores the offset after it.
    async fn write(&mut self, p: i32, seg: Segment) -> Result<(), Error> {
        if !self.is_current(p) {
            self.forget(p);
            return Ok(());
        }
        let store_offset = seg.store_offset;
        let span = trace_context::batch_span(
            STAGE,
            "archive put",
            self.trace_links.remove(&p).unwrap_or_default(),
            vec![
                KeyValue::new("audit.archive.events", seg.len() as i64),
                KeyValue::new("messaging.destination.partition.id", p.to_string()),
                KeyValue::new("messaging.kafka.offset", seg.first_offset),
            ],
        );
        let started = Instant::now();
        let stored = self
            .archive
            .write_segment(
                seg.records,
                &seg.latest,
                &self.topics.chained,
                seg.first_offset,
                seg.last_offset,
            )
            .await;
        span.end_with(&stored);
        let stored = stored?;
        metrics::histogram!("audit_sink_flush_seconds", "stage" => STAGE)
            .record(started.elapsed().as_secs_f64());
        metrics::histogram!("audit_sink_batch_records", "stage" => STAGE)
            .record(seg.times.len() as f64);
        let now = worker_runtime::telemetry::now_us();
        let latency = worker_runtime::telemetry::StoredLatency::new("archive");
        for (event_time, receive_time) in seg.times {
            latency.record(event_time, receive_time, now);
        }
        if let Some(state) = self.states.get_mut(&p) {
            state.stored(stored.key.last_seq, stored.meta.map(|m| m.last_hash));
            metrics::gauge!("audit_archive_open_segment_bytes", "partition" => p.to_string())
                .set(state.open_bytes() as f64);
        }
        if self.is_current(p) {
            store_next_offset(&self.consumer, &self.topics.chained, p, store_offset);
        }
        self.drain_checkpoints(false).await
    }

    async fn seek(&self, p: i32, offset: i64) -> Result<(), Error> {
        let consumer = self.consumer.clone();
        let topic = self.topics.chained.clone();
        tokio::task::spawn_blocking(move || {
            consumer.seek(&topic, p, Offset::Offset(offset), Duration::from_secs(10))
        })
        .await
        .map_err(|e| Error::Task(format!("seek task: {e}")))?
        .map_err(|e| {
            worker_runtime::RuntimeError::kafka(
                format!("seeking partition {p} to offset {offset}"),
                e,
            )
        })?;
        tracing::info!(partition = p, offset, "seeked to the archive's end");
        Ok(())
    }
}
