//! The transactions-mode Kafka loop (`--transactional-id`, [`crate::txn`]): one loop for all
//! partitions, because one transaction spans them. Consume, recover on every new assignment
//! epoch, produce in order inside the open transaction, send offsets into the transaction when
//! it commits, publish checkpoints in the transaction, and recover an aborted transaction's
//! partitions from the tail.
//!
//! Unlike the default path ([`crate::router`] + [`crate::task`]), recovery here runs inside the
//! loop: a long tail scan delays polling (heartbeats continue on librdkafka's own thread, the
//! poll interval is `max.poll.interval.ms`). Transactions are for brokers that have them
//! (Apache Kafka, Redpanda, MSK), whose group coordinators re-assign reliably; the
//! non-blocking per-partition structure is the default path.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use futures::StreamExt;
use rdkafka::consumer::Consumer;
use rdkafka::Offset;
use schemas::framing::encode_single_object_checkpoint;
use worker_runtime::health::Readiness;
use worker_runtime::kafka::consumer::{close_owned, commit_stored, store_next_offset, CLOSE_BOUND};
use worker_runtime::kafka::dlq::dead_letter;
use worker_runtime::kafka::pipeline::is_fatal;
use worker_runtime::kafka::producer::await_delivery;
use worker_runtime::kafka::Topics;
use worker_runtime::kafka::{AuditConsumer, InputRecord, KafkaArgs, Producer, RebalanceState};
use worker_runtime::{RuntimeError, Shutdown};

use crate::acks::AckQueue;
use crate::checkpoints::{CheckpointMeta, CheckpointRange, Signer};
use crate::error::Error;
use crate::metrics as m;
use crate::partition::{Decision, Input, PartitionChain};
use crate::recovery::{recover_partition, RecoverArgs};
use crate::txn::{CommitError, KafkaTransactions, NextOffset, OffsetPath, Outgoing, Transactor};
use crate::worker::{
    checkpoint_partition, now_us, owned_headers, send, send_with_headers, Settings, SEEK_TIMEOUT,
    STAGE,
};

/// One assigned partition.
#[derive(Debug)]
struct Slot {
    epoch: u64,
    chain: PartitionChain,
    acks: AckQueue,
    range: Option<CheckpointRange>,
    last_checkpoint: Instant,
}

enum Completion {
    Input {
        partition: i32,
        epoch: u64,
        offset: i64,
        result: Result<(), RuntimeError>,
    },
    Checkpoint {
        partition: i32,
        seq: u64,
        result: Result<(), RuntimeError>,
    },
}

/// What the loop only reads (kept apart from the in-flight set, which is not `Sync`, so that
/// recovery can borrow it across awaits).
struct Ctx {
    kafka: KafkaArgs,
    topics: Topics,
    consumer: Arc<AuditConsumer>,
    rebalance: Arc<RebalanceState>,
    producer: Producer,
    signer: Option<Arc<Signer>>,
    checkpoint_partitions: i32,
    settings: Settings,
}

pub struct Worker {
    ctx: Ctx,
    slots: HashMap<i32, Slot>,
    in_flight: FuturesUnordered<BoxFuture<'static, Completion>>,
    /// Set after a fatal error: no more checkpoints (offsets of acknowledged work are still
    /// stored while draining, which is always safe).
    failed: bool,
    /// Transactions mode (`None`: the default, non-transactional path).
    txn: Option<Transactor<KafkaTransactions>>,
    offsets: OffsetPath,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("topics", &self.ctx.topics)
            .field("partitions", &self.slots.keys().collect::<Vec<_>>())
            .field("in_flight", &self.in_flight.len())
            .finish_non_exhaustive()
    }
}

impl Worker {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        kafka: KafkaArgs,
        consumer: Arc<AuditConsumer>,
        rebalance: Arc<RebalanceState>,
        producer: Producer,
        signer: Option<Arc<Signer>>,
        checkpoint_partitions: i32,
        settings: Settings,
        txn: Transactor<KafkaTransactions>,
    ) -> Self {
        let offsets = OffsetPath::of(Some(txn.settings()));
        let txn = Some(txn);
        Self {
            ctx: Ctx {
                topics: kafka.topics(),
                kafka,
                consumer,
                rebalance,
                producer,
                signer,
                checkpoint_partitions,
                settings,
            },
            slots: HashMap::new(),
            in_flight: FuturesUnordered::new(),
            failed: false,
            txn,
            offsets,
        }
    }

    /// Runs until shutdown (then drains, checkpoints and commits) or a fatal error.
    pub async fn run(mut self, ready: Readiness, shutdown: Shutdown) -> Result<(), Error> {
        let consumer = self.ctx.consumer.clone();
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        ready.set(true);
        let result: Result<(), Error> = loop {
            let txn_deadline = self.txn.as_ref().and_then(|t| t.deadline());
            tokio::select! {
                biased;
                Some(done) = self.in_flight.next(), if !self.in_flight.is_empty() => {
                    if let Err(e) = self.complete(done).await {
                        if let Err(e) = self.on_failed_delivery(e).await { break Err(e); }
                    }
                }
                _ = shutdown.cancelled() => break Ok(()),
                _ = sleep_until(txn_deadline), if txn_deadline.is_some() => {
                    if let Err(e) = self.settle_txn(true).await { break Err(e); }
                }
                _ = tick.tick() => {
                    if let Err(e) = self.timed_checkpoints().await { break Err(e); }
                }
                msg = consumer.recv(), if self.in_flight.len() < self.ctx.settings.max_in_flight => {
                    let input = match msg {
                        Ok(m) => InputRecord::from_message(&m),
                        Err(e) if is_fatal(&e) => break Err(RuntimeError::kafka("consuming", e).into()),
                        Err(e) => {
                            tracing::warn!(error = %e, "consumer error (librdkafka retries)");
                            continue;
                        }
                    };
                    if let Err(e) = self.handle(input).await { break Err(e); }
                    if self.txn.as_ref().is_some_and(|t| t.due(Instant::now())) {
                        if let Err(e) = self.settle_txn(true).await { break Err(e); }
                    }
                }
            }
        };
        ready.set(false);
        if result.is_err() {
            self.failed = true;
        }
        if self.txn.is_some() {
            self.finish_txn().await;
        } else {
            self.finish().await;
        }
        drop(consumer);
        // The worker's Kafka clients close on a thread of their own, bounded: a consumer's
        // close waits for its group coordinator, and a transactional producer in a failed
        // state may block in its destructor; neither may hold a runtime thread.
        close_owned(self, CLOSE_BOUND).await;
        result
    }

    /// Shutdown in transactions mode: drain, final checkpoints into the open transaction and
    /// commit it after a clean stop; abort it after a failure. Offsets are never committed
    /// outside a transaction.
    async fn finish_txn(&mut self) {
        let timeout = self.ctx.settings.drain_timeout;
        let work = async {
            if !self.failed {
                if let Err(e) = self.drain_txn().await {
                    tracing::warn!(error = %e, "delivery failed while draining");
                    self.failed = true;
                }
            }
            if !self.failed && self.ctx.signer.is_some() {
                let parts: Vec<i32> = self.slots.keys().copied().collect();
                for p in parts {
                    if !self.failed && self.is_current(p) {
                        if let Err(e) = self.publish_checkpoint(p).await {
                            tracing::warn!(partition = p, error = %e, "final checkpoint not published");
                        }
                    }
                }
            }
            let settled = if self.failed {
                self.abort_txn("the worker is stopping after an error", false)
                    .await
            } else {
                self.settle_txn(false).await
            };
            if let Err(e) = settled {
                tracing::warn!(error = %e, "last transaction not committed; its inputs will be re-read and re-chained identically");
            }
        };
        if tokio::time::timeout(timeout, work).await.is_err() {
            tracing::warn!("drain timed out; the open transaction is left to the broker's transaction timeout (it aborts)");
        }
    }

    /// Ends the open transaction: commits it if every delivery landed and every partition it
    /// touched is still ours at the same epoch, else aborts it. After an abort, the touched
    /// partitions still assigned are recovered from the tail if `recover`.
    async fn settle_txn(&mut self, recover: bool) -> Result<(), Error> {
        if !self.txn.as_ref().is_some_and(|t| t.is_open()) {
            return Ok(());
        }
        if let Err(e) = self.drain_txn().await {
            return self
                .abort_txn(&format!("a delivery failed: {e}"), recover)
                .await;
        }
        let touched = self.txn.as_ref().map(|t| t.touched()).unwrap_or_default();
        let mut offsets = Vec::with_capacity(touched.len());
        for &p in &touched {
            match self.slots.get(&p) {
                Some(slot) if self.is_current(p) => offsets.push(NextOffset {
                    topic: self.ctx.topics.enriched.clone(),
                    partition: p,
                    // Every input taken is acknowledged (drained), so this is the next offset
                    // after the chain's last source offset.
                    offset: slot.chain.expected(),
                }),
                _ => {
                    return self
                        .abort_txn(
                            &format!("partition {p} was revoked or re-assigned"),
                            recover,
                        )
                        .await
                }
            }
        }
        let Some(txn) = self.txn.as_mut() else {
            return Ok(());
        };
        match txn.commit(offsets).await {
            Ok(()) => Ok(()),
            Err(CommitError::Fatal(e)) => Err(e),
            Err(CommitError::Aborted { partitions, cause }) => {
                tracing::warn!(error = %cause, "transaction aborted");
                self.after_abort(partitions.into_iter().collect(), recover)
                    .await
            }
        }
    }

    async fn abort_txn(&mut self, reason: &str, recover: bool) -> Result<(), Error> {
        let Some(txn) = self.txn.as_mut() else {
            return Ok(());
        };
        let partitions = txn.abort(reason).await?;
        self.after_abort(partitions.into_iter().collect(), recover)
            .await
    }

    /// After an abort nothing of the transaction is visible, but the touched partitions'
    /// state ran ahead: forget it, and rebuild it from the tail, seeking the consumer back to
    /// the recovered position.
    async fn after_abort(&mut self, partitions: Vec<i32>, recover: bool) -> Result<(), Error> {
        // The abort purged what was still queued; those completions belong to the aborted
        // transaction and must not acknowledge anything.
        let purge = async { while self.in_flight.next().await.is_some() {} };
        if tokio::time::timeout(self.ctx.settings.drain_timeout, purge)
            .await
            .is_err()
        {
            return Err(Error::Recovery {
                topic: self.ctx.topics.chained.clone(),
                partition: partitions.first().copied().unwrap_or(-1),
                detail: "deliveries of an aborted transaction did not resolve".into(),
            });
        }
        for p in &partitions {
            self.slots.remove(p);
        }
        if !recover {
            return Ok(());
        }
        for p in partitions {
            let Some(epoch) = self.ctx.rebalance.epoch(&self.ctx.topics.enriched, p) else {
                continue; // revoked: its new owner recovers it
            };
            let slot = self.recover_slot(p, epoch).await?;
            let to = slot.chain.expected();
            self.slots.insert(p, slot);
            self.ctx.seek(p, epoch, to).await?;
        }
        Ok(())
    }

    /// In transactions mode a delivery failure aborts the transaction; otherwise it is fatal.
    async fn on_failed_delivery(&mut self, e: Error) -> Result<(), Error> {
        match e {
            Error::Delivery { .. } if self.txn.is_some() => {
                self.abort_txn(&format!("a delivery failed: {e}"), true)
                    .await
            }
            e => Err(e),
        }
    }

    /// Waits for every in-flight delivery (transactions mode); returns the first delivery
    /// failure, if any (other errors are returned as they are fatal anyway).
    async fn drain_txn(&mut self) -> Result<(), Error> {
        let mut first = None;
        while let Some(done) = self.in_flight.next().await {
            match self.complete(done).await {
                Ok(()) => {}
                Err(e @ Error::Delivery { .. }) => {
                    first.get_or_insert(e);
                }
                Err(e) => return Err(e),
            }
        }
        first.map_or(Ok(()), Err)
    }

    /// [`Ctx::recover_after`] with what this instance committed to `p` in transactions mode.
    /// (Not an `async fn`: the future must borrow only the `Sync` context.)
    fn recover_slot(
        &self,
        p: i32,
        epoch: u64,
    ) -> impl std::future::Future<Output = Result<Slot, Error>> + Send + '_ {
        let ours = self.txn.as_ref().and_then(|t| t.committed_source(p));
        self.ctx.recover_after(p, epoch, ours)
    }

    /// Drains what is in flight (storing offsets of what got acknowledged), publishes a last
    /// checkpoint per partition after a clean stop, and commits.
    async fn finish(&mut self) {
        let timeout = self.ctx.settings.drain_timeout;
        let drain = async {
            self.drain_logged().await;
            if !self.failed && self.ctx.signer.is_some() {
                let parts: Vec<i32> = self.slots.keys().copied().collect();
                for p in parts {
                    if self.is_current(p) {
                        if let Err(e) = self.publish_checkpoint(p).await {
                            tracing::warn!(partition = p, error = %e, "final checkpoint not published");
                        }
                    }
                }
                self.drain_logged().await;
            }
        };
        if tokio::time::timeout(timeout, drain).await.is_err() {
            tracing::warn!(
                "drain timed out; unacknowledged inputs will be re-read and re-chained identically"
            );
        }
        commit_stored(&self.ctx.consumer).await;
    }

    async fn drain_logged(&mut self) {
        while let Some(done) = self.in_flight.next().await {
            if let Err(e) = self.complete(done).await {
                tracing::warn!(error = %e, "delivery failed while draining; its input is not committed");
                self.failed = true;
            }
        }
    }

    /// Waits for every in-flight delivery; any failure is fatal.
    async fn drain(&mut self) -> Result<(), Error> {
        while let Some(done) = self.in_flight.next().await {
            self.complete(done).await?;
        }
        Ok(())
    }

    fn is_current(&self, p: i32) -> bool {
        let epoch = self.ctx.rebalance.epoch(&self.ctx.topics.enriched, p);
        self.slots.get(&p).is_some_and(|s| Some(s.epoch) == epoch)
    }

    async fn handle(&mut self, input: InputRecord) -> Result<(), Error> {
        let p = input.partition;
        let Some(epoch) = self.ctx.rebalance.epoch(&input.topic, p) else {
            return Ok(()); // revoked since fetched: its new owner reads it again
        };
        if self.slots.get(&p).map(|s| s.epoch) != Some(epoch) {
            // New assignment: let our own writes land first so the tail we read includes them,
            // then rebuild the partition from durable state (even if we had state for it).
            // With transactions, "land" means the open transaction is committed or aborted.
            self.settle_txn(true).await?;
            self.drain().await?;
            let enriched = self.ctx.topics.enriched.clone();
            self.slots
                .retain(|q, s| self.ctx.rebalance.epoch(&enriched, *q) == Some(s.epoch));
            // (An abort in `settle_txn` may have recovered `p` at this epoch already.)
            if self.slots.get(&p).map(|s| s.epoch) != Some(epoch) {
                let slot = self.recover_slot(p, epoch).await?;
                self.slots.insert(p, slot);
            }
        }
        let Some(slot) = self.slots.get_mut(&p) else {
            return Ok(());
        };
        let offset = input.offset;
        let decision = slot
            .chain
            .process(Input {
                offset,
                payload: input.payload.as_deref(),
            })
            .map_err(|source| Error::Chain {
                partition: p,
                source,
            })?;
        if let Some(txn) = self.txn.as_mut() {
            if !matches!(decision, Decision::Seek { .. } | Decision::Discard) {
                txn.took_input(p)?;
            }
        }
        let label = p.to_string();
        match decision {
            Decision::Chain(c) => {
                let delivery = match self.txn.as_mut() {
                    Some(txn) => {
                        let d = txn
                            .produce(
                                p,
                                Outgoing {
                                    topic: &self.ctx.topics.chained,
                                    partition: Some(p),
                                    key: input.key.as_deref(),
                                    payload: Some(&c.payload),
                                    timestamp_ms: input.timestamp_ms,
                                    headers: &[],
                                },
                            )
                            .await?;
                        txn.chained(p, offset);
                        self.ctx.producer.track(d)
                    }
                    None => {
                        send(
                            &self.ctx.producer,
                            &self.ctx.topics.chained,
                            p,
                            input.key.as_deref(),
                            &c.payload,
                            input.timestamp_ms,
                        )
                        .await?
                    }
                };
                slot.acks.push(offset, Some((c.seq, c.hash)), false);
                metrics::counter!(m::CHAINED, "partition" => label).increment(1);
                let topic = self.ctx.topics.chained.clone();
                self.in_flight.push(Box::pin(async move {
                    let result = await_delivery(delivery, &topic).await.map(|_| ());
                    Completion::Input {
                        partition: p,
                        epoch,
                        offset,
                        result,
                    }
                }));
            }
            Decision::DeadLetter { code, message } => {
                tracing::error!(partition = p, offset, code, %message,
                    "undecodable record on the enriched topic; dead-lettering it (not chained)");
                let rec = dead_letter(&self.ctx.topics.rejected, &input, STAGE, code, &message);
                let delivery = match self.txn.as_mut() {
                    Some(txn) => txn
                        .produce(
                            p,
                            Outgoing {
                                topic: &rec.topic,
                                partition: rec.partition,
                                key: rec.key.as_deref(),
                                payload: rec.payload.as_deref(),
                                timestamp_ms: None,
                                headers: &rec.headers,
                            },
                        )
                        .await
                        .map(|d| self.ctx.producer.track(d))?,
                    None => self.ctx.producer.enqueue(&rec).await?,
                };
                slot.acks.push(offset, None, false);
                metrics::counter!(m::DEAD_LETTERED, "partition" => label).increment(1);
                let topic = self.ctx.topics.rejected.clone();
                self.in_flight.push(Box::pin(async move {
                    let result = await_delivery(delivery, &topic).await.map(|_| ());
                    Completion::Input {
                        partition: p,
                        epoch,
                        offset,
                        result,
                    }
                }));
            }
            Decision::Duplicate { event_id } => {
                tracing::debug!(partition = p, offset, %event_id, "duplicate event dropped");
                metrics::counter!(m::DUPLICATES, "partition" => label).increment(1);
                slot.acks.push(offset, None, true);
                self.release(p).await?;
            }
            Decision::Skip => {
                metrics::counter!(m::SKIPPED, "partition" => label).increment(1);
                slot.acks.push(offset, None, true);
                self.release(p).await?;
            }
            Decision::Seek { to } => {
                tracing::warn!(
                    partition = p,
                    offset,
                    to,
                    "input offset is ahead of the chain (committed offset ran ahead); seeking back"
                );
                metrics::counter!(m::SEEKS, "partition" => label).increment(1);
                self.ctx.seek(p, epoch, to).await?;
            }
            Decision::Discard => {}
        }
        Ok(())
    }

    async fn complete(&mut self, done: Completion) -> Result<(), Error> {
        match done {
            Completion::Input {
                partition,
                epoch,
                offset,
                result,
            } => {
                result.map_err(|source| Error::Delivery {
                    what: format!(
                        "the output of {}/{partition}@{offset}",
                        self.ctx.topics.enriched
                    ),
                    source: Box::new(source),
                })?;
                match self.slots.get_mut(&partition) {
                    Some(slot) if slot.epoch == epoch => slot.acks.ack(offset),
                    _ => return Ok(()), // from an earlier assignment
                }
                self.release(partition).await
            }
            Completion::Checkpoint {
                partition,
                seq,
                result,
            } => {
                result.map_err(|source| Error::Delivery {
                    what: format!("the checkpoint of partition {partition} at seq {seq}"),
                    source: Box::new(source),
                })?;
                metrics::counter!(m::CHECKPOINTS, "partition" => partition.to_string())
                    .increment(1);
                tracing::debug!(partition, seq, "checkpoint published");
                Ok(())
            }
        }
    }

    /// Stores the offset of the acknowledged prefix and feeds its links to the checkpoint range.
    async fn release(&mut self, p: i32) -> Result<(), Error> {
        let Some(slot) = self.slots.get_mut(&p) else {
            return Ok(());
        };
        let released = slot.acks.release();
        if let Some(next) = released
            .next_offset
            .filter(|_| self.offsets.stores_offsets())
        {
            store_next_offset(&self.ctx.consumer, &self.ctx.topics.enriched, p, next);
        }
        if let Some(&(seq, _)) = released.links.last() {
            metrics::gauge!(m::HEAD_SEQ, "partition" => p.to_string()).set(seq as f64);
        }
        let every = self.ctx.signer.as_ref().map_or(0, |s| s.every_events);
        for (seq, hash) in released.links {
            let full = match self.slots.get_mut(&p).and_then(|s| s.range.as_mut()) {
                Some(range) => {
                    range.push(seq, hash);
                    every > 0 && range.len() >= every
                }
                None => break,
            };
            if full {
                // Exactly N leaves per count-triggered checkpoint.
                self.publish_checkpoint(p).await?;
            }
        }
        Ok(())
    }

    /// Time-triggered checkpoints of non-empty ranges, and heartbeats (the last checkpoint
    /// re-signed with a fresh time) of idle partitions: both go into the open transaction,
    /// only for partitions this worker currently owns.
    async fn timed_checkpoints(&mut self) -> Result<(), Error> {
        let Some((interval, heartbeat)) =
            self.ctx.signer.as_ref().map(|s| (s.interval, s.heartbeat))
        else {
            return Ok(());
        };
        let due: Vec<(i32, bool)> = self
            .slots
            .iter()
            .filter_map(|(p, s)| {
                let idle = s.range.as_ref().is_none_or(|r| r.is_empty());
                let genesis = s.range.as_ref().is_some_and(|r| r.genesis_due());
                let elapsed = s.last_checkpoint.elapsed();
                if !idle && !interval.is_zero() && elapsed >= interval {
                    Some((*p, false))
                } else if idle && (genesis || (!heartbeat.is_zero() && elapsed >= heartbeat)) {
                    Some((*p, true))
                } else {
                    None
                }
            })
            .collect();
        for (p, heartbeat) in due {
            if self.is_current(p) {
                self.publish(p, heartbeat).await?;
            }
        }
        Ok(())
    }

    async fn publish_checkpoint(&mut self, p: i32) -> Result<(), Error> {
        self.publish(p, false).await
    }

    async fn publish(&mut self, p: i32, heartbeat: bool) -> Result<(), Error> {
        if self.failed {
            return Ok(());
        }
        let (Some(signer), Some(slot)) = (self.ctx.signer.clone(), self.slots.get_mut(&p)) else {
            return Ok(());
        };
        let Some(range) = slot.range.as_mut() else {
            return Ok(());
        };
        let fields = if heartbeat {
            range.heartbeat(&signer.chain_id, now_us(), signer.partition_count)
        } else {
            range.take(&signer.chain_id, now_us(), signer.partition_count)
        };
        let Some(fields) = fields else {
            return Ok(());
        };
        slot.last_checkpoint = Instant::now();
        let seq = fields.seq;
        let cp = signer.sign(&fields).map_err(|source| Error::Sign {
            partition: p,
            seq,
            source,
        })?;
        let payload =
            encode_single_object_checkpoint(&cp).map_err(|source| Error::EncodeCheckpoint {
                partition: p,
                source,
            })?;
        let key = p.to_string();
        let cp_partition = checkpoint_partition(p, self.ctx.checkpoint_partitions);
        let headers = CheckpointMeta {
            next_source: None,
            tree_peaks: range.signed_peaks(),
            chain_rule: range.rule(),
        }
        .headers();
        // With transactions the checkpoint commits atomically with the links it covers.
        let delivery = match self.txn.as_mut() {
            Some(txn) => txn
                .produce(
                    p,
                    Outgoing {
                        topic: &self.ctx.topics.checkpoints,
                        partition: Some(cp_partition),
                        key: Some(key.as_bytes()),
                        payload: Some(&payload),
                        timestamp_ms: None,
                        headers: &headers,
                    },
                )
                .await
                .map(|d| self.ctx.producer.track(d))?,
            None => {
                send_with_headers(
                    &self.ctx.producer,
                    &self.ctx.topics.checkpoints,
                    cp_partition,
                    Some(key.as_bytes()),
                    payload.as_slice().into(),
                    None,
                    owned_headers(&headers),
                )
                .await?
            }
        };
        tracing::info!(
            partition = p,
            first_seq = fields.first_seq,
            seq,
            "checkpoint signed"
        );
        let topic = self.ctx.topics.checkpoints.clone();
        self.in_flight.push(Box::pin(async move {
            let result = await_delivery(delivery, &topic).await.map(|_| ());
            Completion::Checkpoint {
                partition: p,
                seq,
                result,
            }
        }));
        Ok(())
    }
}

impl Ctx {
    /// [`Ctx::recover`], and in transactions mode: the commit markers of our own last
    /// transaction are written by the coordinator after `commit_transaction` returns, so a
    /// read_committed tail may briefly end before records we know are committed (`ours`: the
    /// source offset of the last one). Re-read until it includes them (bounded by the scan
    /// timeout).
    async fn recover_after(&self, p: i32, epoch: u64, ours: Option<i64>) -> Result<Slot, Error> {
        let mut slot = self.recover(p, epoch).await?;
        let Some(ours) = ours else {
            return Ok(slot);
        };
        let deadline = Instant::now() + self.settings.scan_idle_timeout;
        while slot.chain.expected() <= ours {
            if Instant::now() >= deadline {
                tracing::warn!(partition = p, tail_next = slot.chain.expected(), committed_source = ours,
                    "the chained tail still ends before records this instance committed; resuming from the tail");
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
            slot = self.recover(p, epoch).await?;
        }
        Ok(slot)
    }

    async fn seek(&self, p: i32, epoch: u64, to: i64) -> Result<(), Error> {
        let consumer = self.consumer.clone();
        let topic = self.topics.enriched.clone();
        let t = topic.clone();
        let res = tokio::task::spawn_blocking(move || {
            consumer.seek(&t, p, Offset::Offset(to), SEEK_TIMEOUT)
        })
        .await
        .map_err(|e| RuntimeError::Task {
            task: "seek".into(),
            message: e.to_string(),
        })?;
        match res {
            Ok(()) => Ok(()),
            // Revoked meanwhile: the next owner recovers the partition itself.
            Err(_) if self.rebalance.epoch(&topic, p) != Some(epoch) => Ok(()),
            Err(source) => Err(Error::Seek {
                topic,
                partition: p,
                offset: to,
                source: Box::new(source),
            }),
        }
    }

    /// Rebuilds partition `p` from durable state ([`recover_partition`]).
    async fn recover(&self, p: i32, epoch: u64) -> Result<Slot, Error> {
        let recovered = recover_partition(RecoverArgs {
            chain_id: &self.settings.chain_id,
            kafka: &self.kafka,
            topics: &self.topics,
            consumer: &self.consumer,
            signer: self.signer.as_deref(),
            checkpoint_partitions: self.checkpoint_partitions,
            window: self.settings.window,
            max_in_flight: self.settings.max_in_flight,
            scan_idle_timeout: self.settings.scan_idle_timeout,
            checkpoint_scan_records: self.settings.checkpoint_scan_records,
            partition: p,
            epoch,
        })
        .await?;
        Ok(Slot {
            epoch,
            chain: recovered.chain,
            acks: AckQueue::default(),
            range: recovered.range,
            last_checkpoint: Instant::now(),
        })
    }
}

/// Sleeps until `deadline` (forever without one; the select arm is disabled then anyway).
async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d.into()).await,
        None => std::future::pending().await,
    }
}
