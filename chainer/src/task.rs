//! One task per assigned partition (Kafka Streams style). The task owns the partition's
//! [`PartitionChain`], its [`AckQueue`], its open checkpoint range and checkpoint publishing,
//! and its recovery; the Kafka loop ([`crate::router`]) only routes records to it through a
//! bounded channel, so polling, heartbeats and rebalances go on during a long tail scan.
//!
//! Life of a task (one partition, one assignment epoch):
//!
//! ```text
//!   wait for the previous task of the partition (its writes must land before we read the tail)
//!     → recover from the chained tail (records queue up meanwhile; once the queue has
//!       been full for a second the router pauses the partition)
//!     → take records in order: chain / dead-letter / drop duplicate / skip / seek back
//!     → on acknowledgement: store the next offset, feed links to the checkpoint range,
//!       publish count- and time-triggered checkpoints
//!     → while idle: every heartbeat period, re-sign the last checkpoint with a fresh time
//!   delivery failed (a record or checkpoint the broker did not take, a broker error):
//!           stop publishing and storing, drain what is in flight, recreate the producer,
//!           back off, recover again from the chained tail, seek the consumer back → chain on
//!   stop:   revoked (epoch no longer current) or the worker failed → drain what is in flight,
//!           publish nothing, store nothing after revocation
//!   finish: clean shutdown → drain, store offsets, a last checkpoint if still current
//! ```
//!
//! Broker errors never end a task, however long the broker is away: recovery retries them with
//! back-off (up to [`MAX_BACKOFF`]) until it succeeds, the task is stopped or the worker shuts
//! down, reporting the error as the partition's not-ready reason. Only what durable state or
//! the configuration says is fatal (a contradicting tail, an unknown schema, a signing fault).
//!
//! A checkpoint is published only while the task's epoch is current: checked before every
//! publish, count- or time-triggered or a heartbeat, so a revoked task or a zombie never signs.
//!
//! The Kafka side is behind [`TaskIo`], so the task is tested with a fake.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use futures::StreamExt;
use schemas::framing::encode_single_object_checkpoint;
use tokio::sync::{mpsc, watch};
use worker_runtime::kafka::InputRecord;
use worker_runtime::{RuntimeError, Shutdown};

use crate::acks::AckQueue;
use crate::checkpoints::{CheckpointMeta, CheckpointRange, Signer};
use crate::error::Error;
use crate::metrics as m;
use crate::partition::{Decision, Input, PartitionChain};
use crate::recovery::Recovered;
use crate::status::WorkerStatus;
use crate::worker::now_us;

/// After recovery, a first record this far below the chain's resume point makes the task seek
/// the consumer forward instead of skipping record by record (e.g. static assignment starting
/// from an old or absent committed offset).
pub const FAR_BEHIND: i64 = 10_000;

/// Header of a checkpoint record: the enriched-topic offset after the last link it covers.
/// Recovery resumes there when retention (or an operator) emptied the chained partition: the
/// group's committed offset may lag it (offsets are committed asynchronously), and events
/// between the two would otherwise be chained a second time under new seqs.
pub const HEADER_NEXT_SOURCE_OFFSET: &str = "audit.next_source_offset";

/// Longest back-off between attempts after a broker error (recovery, or a partition's chaining
/// after a delivery failure): 1 s, 2 s, 4 s … then this, for as long as the broker is away.
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Back-off before attempt `attempt + 1` (attempt 0 is the first retry).
pub fn backoff(attempt: u32) -> Duration {
    Duration::from_secs(1u64 << attempt.min(5)).min(MAX_BACKOFF)
}

/// Broker errors and timeouts, as opposed to what the durable state says.
pub fn is_transient(e: &Error) -> bool {
    matches!(
        e,
        Error::Runtime(RuntimeError::Kafka { .. } | RuntimeError::Timeout { .. })
    )
}

/// Failures of a running partition task after which it stops, lets its in-flight deliveries
/// drain and recovers again from the chained tail, instead of stopping the worker: a record or
/// checkpoint the broker did not take (or that could not even be enqueued, e.g. on a producer
/// librdkafka declared fatal), a seek the consumer refused, any broker error or timeout. The
/// partition's in-memory head may then be ahead of the log; the log is the truth, and recovery
/// resumes from its contiguous prefix, so what was lost is re-chained with identical bytes.
/// Not retried: what the durable chain or the configuration says (unknown schema, a signing
/// failure, a contradicting tail).
pub fn is_recoverable(e: &Error) -> bool {
    is_transient(e) || matches!(e, Error::Delivery { .. } | Error::Seek { .. })
}

/// Resolves when the broker acknowledged a record.
pub type Ack = BoxFuture<'static, Result<(), RuntimeError>>;

/// What a partition task needs from Kafka.
pub trait TaskIo: Send + Sync + 'static {
    /// Whether partition `p` is still assigned to us at `epoch` (on a live consumer).
    fn is_current(&self, p: i32, epoch: u64) -> bool;
    /// Rebuilds the partition from durable state.
    fn recover(&self, p: i32, epoch: u64) -> BoxFuture<'_, Result<Recovered, Error>>;
    /// Seeks the consumer of `p` to `to`.
    fn seek(&self, p: i32, epoch: u64, to: i64) -> BoxFuture<'_, Result<(), Error>>;
    fn send_chained<'a>(
        &'a self,
        p: i32,
        input: &'a InputRecord,
        payload: Vec<u8>,
    ) -> BoxFuture<'a, Result<Ack, Error>>;
    fn send_dead_letter<'a>(
        &'a self,
        input: &'a InputRecord,
        code: &'static str,
        message: &'a str,
    ) -> BoxFuture<'a, Result<Ack, Error>>;
    /// `meta`: the record's headers for recovery (not signed: where the chainer resumes and
    /// how, not a claim about the chain; see [`CheckpointMeta`]).
    fn send_checkpoint<'a>(
        &'a self,
        p: i32,
        payload: &'a [u8],
        meta: CheckpointMeta<'a>,
    ) -> BoxFuture<'a, Result<Ack, Error>>;
    /// Stores the next input offset to commit.
    fn store_offset(&self, p: i32, next: i64);
    /// Generation of the producer the sends go to (see [`Self::delivery_failed`]).
    fn producer_generation(&self) -> u64 {
        0
    }
    /// A delivery through producer generation `generation` failed: recreate the producer,
    /// unless another task already did.
    fn delivery_failed(&self, _generation: u64) {}
}

/// What the router and the readiness check see of a task.
#[derive(Debug)]
pub struct TaskStatus {
    recovering: AtomicBool,
    /// Next source offset the chain expects (-1 until recovered).
    next_offset: AtomicI64,
    /// Why the last attempt failed while (re)recovering; empty otherwise.
    reason: Mutex<String>,
    /// Times the partition was recovered again after a delivery failure.
    rerecoveries: AtomicU64,
    /// The worker's status, which counts those for all partitions.
    worker: Option<WorkerStatus>,
}

impl Default for TaskStatus {
    fn default() -> Self {
        Self {
            recovering: AtomicBool::new(true),
            next_offset: AtomicI64::new(-1),
            reason: Mutex::new(String::new()),
            rerecoveries: AtomicU64::new(0),
            worker: None,
        }
    }
}

impl TaskStatus {
    /// A task status that also counts into the worker's.
    pub fn for_worker(worker: WorkerStatus) -> Self {
        Self {
            worker: Some(worker),
            ..Self::default()
        }
    }
    fn rerecovered(&self) {
        self.rerecoveries.fetch_add(1, Ordering::AcqRel);
        if let Some(w) = &self.worker {
            w.rerecovered();
        }
    }
    pub fn recovering(&self) -> bool {
        self.recovering.load(Ordering::Acquire)
    }
    /// Why the partition is not chaining (the last broker error), empty when nothing failed.
    pub fn reason(&self) -> String {
        self.reason
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
    /// Times the partition was recovered again after a delivery failure.
    pub fn rerecoveries(&self) -> u64 {
        self.rerecoveries.load(Ordering::Acquire)
    }
    fn set_reason(&self, why: String) {
        *self.reason.lock().unwrap_or_else(|e| e.into_inner()) = why;
    }
    /// `None` until recovered.
    pub fn next_offset(&self) -> Option<i64> {
        Some(self.next_offset.load(Ordering::Acquire)).filter(|o| *o >= 0)
    }
}

/// How the router controls a task.
#[derive(Debug, Clone)]
pub struct Control {
    /// Revoked, or the worker failed: drain and go, publishing nothing.
    pub stop: Shutdown,
    /// Clean shutdown: drain, store, a last checkpoint.
    pub finish: Shutdown,
    /// Closed (sender dropped) when the previous task of this partition has finished.
    pub after: Option<watch::Receiver<()>>,
    /// Incremented on every acknowledged input (all tasks share it: the worker's progress).
    pub progress: Arc<AtomicU64>,
}

/// The fixed parameters of a task.
#[derive(Debug, Clone)]
pub struct TaskSpec {
    pub partition: i32,
    pub epoch: u64,
    pub signer: Option<Arc<Signer>>,
    pub max_in_flight: usize,
    pub drain_timeout: Duration,
}

enum Completion {
    Input {
        offset: i64,
        result: Result<(), RuntimeError>,
    },
    Checkpoint {
        seq: u64,
        result: Result<(), RuntimeError>,
    },
}

/// Runs one partition task to its end. `done` is dropped when the task ends (its successor
/// waits for that). An error is fatal for the worker; broker errors and delivery failures are
/// not (see [`is_recoverable`]): the task drains and recovers the partition again, with back-off,
/// for as long as it takes.
pub async fn run<I: TaskIo>(
    io: Arc<I>,
    spec: TaskSpec,
    mut rx: mpsc::Receiver<InputRecord>,
    control: Control,
    status: Arc<TaskStatus>,
    done: watch::Sender<()>,
) -> Result<(), Error> {
    let _done = done;
    let (p, epoch) = (spec.partition, spec.epoch);
    if let Some(mut prev) = control.after.clone() {
        let wait = async { while prev.changed().await.is_ok() {} };
        tokio::select! {
            _ = wait => {}
            _ = control.stop.cancelled() => return Ok(()),
            _ = control.finish.cancelled() => return Ok(()),
        }
    }
    // Delivery failures in a row without an acknowledgement in between.
    let mut failures = 0u32;
    loop {
        status.recovering.store(true, Ordering::Release);
        let Some(recovered) = recover(&*io, p, epoch, &control, &status).await? else {
            return Ok(());
        };
        status
            .next_offset
            .store(recovered.chain.expected(), Ordering::Release);
        if !io.is_current(p, epoch) {
            return Ok(());
        }
        if failures > 0 {
            // The consumer went on past what reached the log: send it back to the chain's
            // resume point. Records still queued from before are told apart by the state
            // machine (a fresh chain seeks back on the first one above it and discards the
            // rest until the consumer delivers from there).
            let to = recovered.chain.expected();
            tracing::info!(
                partition = p,
                epoch,
                to,
                "re-recovered after a delivery failure; seeking the consumer back"
            );
            if let Err(e) = io.seek(p, epoch, to).await {
                if !is_recoverable(&e) {
                    return Err(e);
                }
                status.set_reason(format!("partition {p}: seeking back failed: {e}"));
                failures += 1;
                if !pause(backoff(failures - 1), &control).await {
                    return Ok(());
                }
                continue;
            }
        }
        status.recovering.store(false, Ordering::Release);
        status.set_reason(String::new());
        let generation = io.producer_generation();
        let mut task = Task {
            io: io.clone(),
            p,
            epoch,
            signer: spec.signer.clone(),
            chain: recovered.chain,
            acks: AckQueue::default(),
            range: recovered.range,
            next_source: Some(recovered.next_source),
            last_checkpoint: Instant::now(),
            last_taken: None,
            sought_forward: false,
            stopped: false,
            acked: 0,
            in_flight: FuturesUnordered::new(),
            status: status.clone(),
            progress: control.progress.clone(),
            chained: metrics::counter!(m::CHAINED, "partition" => p.to_string()),
            head_seq: metrics::gauge!(m::HEAD_SEQ, "partition" => p.to_string()),
            label: p.to_string(),
        };
        let result = task
            .chain_records(&mut rx, &control, spec.max_in_flight)
            .await;
        let e = match result {
            Ok(clean) => {
                task.stopped = !clean;
                task.finish(spec.drain_timeout).await;
                return Ok(());
            }
            Err(e) if is_recoverable(&e) => e,
            Err(e) => return Err(e),
        };
        // Publish and store nothing more from this head: it may be ahead of the log.
        task.stopped = true;
        status.recovering.store(true, Ordering::Release);
        failures = if task.acked > 0 { 1 } else { failures + 1 };
        metrics::counter!(m::DELIVERY_FAILURES, "partition" => task.label.clone()).increment(1);
        tracing::warn!(partition = p, epoch, error = %e, failures,
            "delivery failed; stopping the partition, draining and recovering it again from the chained tail");
        status.set_reason(format!("partition {p}: {e}"));
        // A new producer (a new producer id) for whatever comes next: a fatal idempotent
        // producer never delivers again, and one that timed out records bumps its epoch by
        // itself, which tansu 0.6 does not survive (its SQLite engine panics on the first
        // produce of the bumped epoch and stops serving: measured by tests/broker_outage.rs).
        // Replacing it also purges (fails) what it still held, so the drain below ends
        // promptly; every partition with records in it recovers again too.
        io.delivery_failed(generation);
        let drained = tokio::select! {
            _ = task.drain_logged() => true,
            _ = control.stop.cancelled() => false,
            _ = control.finish.cancelled() => false,
        };
        if !drained {
            task.finish(spec.drain_timeout).await;
            return Ok(());
        }
        drop(task);
        status.rerecovered();
        if !pause(backoff(failures - 1), &control).await {
            return Ok(());
        }
    }
}

/// Sleeps `d` unless the task is stopped or finished first (then `false`).
async fn pause(d: Duration, control: &Control) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => true,
        _ = control.stop.cancelled() => false,
        _ = control.finish.cancelled() => false,
    }
}

/// Recovers the partition, retrying broker errors with back-off for as long as it takes (a
/// broker restarting or away), reporting why in `status`. `None`: stopped or revoked meanwhile.
/// What durable state says is never retried.
async fn recover<I: TaskIo>(
    io: &I,
    p: i32,
    epoch: u64,
    control: &Control,
    status: &TaskStatus,
) -> Result<Option<Recovered>, Error> {
    let mut attempt = 0u32;
    loop {
        let r = tokio::select! {
            r = io.recover(p, epoch) => r,
            _ = control.stop.cancelled() => return Ok(None),
            _ = control.finish.cancelled() => return Ok(None),
        };
        match r {
            Ok(r) => return Ok(Some(r)),
            // Revoked while recovering: the new owner recovers it; our failure is moot.
            Err(e) if !io.is_current(p, epoch) => {
                tracing::info!(partition = p, epoch, error = %e, "recovery ended after revocation");
                return Ok(None);
            }
            Err(e) if is_transient(&e) => {
                let wait = backoff(attempt);
                attempt = attempt.saturating_add(1);
                tracing::warn!(partition = p, epoch, attempt, error = %e, backoff = ?wait,
                    "recovery failed on a broker error; retrying");
                status.set_reason(format!("partition {p}: recovery failed: {e}"));
                if !pause(wait, control).await {
                    return Ok(None);
                }
            }
            Err(e) => return Err(e),
        }
    }
}

struct Task<I: TaskIo> {
    io: Arc<I>,
    p: i32,
    epoch: u64,
    signer: Option<Arc<Signer>>,
    chain: PartitionChain,
    acks: AckQueue,
    range: Option<CheckpointRange>,
    /// The input offset after the last link pushed to `range` (what a checkpoint of it tells
    /// recovery when retention emptied the chained partition).
    next_source: Option<i64>,
    last_checkpoint: Instant,
    /// Highest offset queued in `acks` (a re-delivered record below it is ignored).
    last_taken: Option<i64>,
    sought_forward: bool,
    /// Stopped (revoked, the worker failed, or a delivery failed): never publish again.
    stopped: bool,
    /// Inputs acknowledged in this life of the task.
    acked: u64,
    in_flight: FuturesUnordered<BoxFuture<'static, Completion>>,
    status: Arc<TaskStatus>,
    progress: Arc<AtomicU64>,
    /// The two metrics every record moves, registered once: a `counter!` call builds its labels
    /// and looks the metric up in the registry each time.
    chained: metrics::Counter,
    head_seq: metrics::Gauge,
    label: String,
}

impl<I: TaskIo> Task<I> {
    fn current(&self) -> bool {
        self.io.is_current(self.p, self.epoch)
    }

    /// Takes records until stopped (`Ok(false)`), finished (`Ok(true)`) or an error.
    async fn chain_records(
        &mut self,
        rx: &mut mpsc::Receiver<InputRecord>,
        control: &Control,
        max_in_flight: usize,
    ) -> Result<bool, Error> {
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let max = max_in_flight.max(1);
        loop {
            tokio::select! {
                biased;
                Some(done) = self.in_flight.next(), if !self.in_flight.is_empty() => {
                    self.complete(done).await?;
                }
                _ = control.stop.cancelled() => return Ok(false),
                _ = control.finish.cancelled() => return Ok(true),
                _ = tick.tick() => {
                    if !self.current() { return Ok(false); }
                    self.timed_checkpoint().await?;
                }
                rec = rx.recv(), if self.in_flight.len() < max => match rec {
                    Some(r) => self.handle(r).await?,
                    // The router let go of us without saying why: treat as a stop.
                    None => return Ok(false),
                },
            }
        }
    }

    fn queue(&mut self, offset: i64, link: Option<(u64, integrity::chain::Hash32)>, done: bool) {
        self.acks.push(offset, link, done);
        self.last_taken = Some(offset);
    }

    async fn handle(&mut self, input: InputRecord) -> Result<(), Error> {
        let (p, offset) = (self.p, input.offset);
        let decision = self
            .chain
            .process(Input {
                offset,
                payload: input.payload.as_deref(),
            })
            .map_err(|source| Error::Chain {
                partition: p,
                source,
            })?;
        self.status
            .next_offset
            .store(self.chain.expected(), Ordering::Release);
        match decision {
            Decision::Chain(c) => {
                let link = (c.seq, c.hash);
                let ack = self.io.send_chained(p, &input, c.payload).await?;
                self.queue(offset, Some(link), false);
                self.chained.increment(1);
                self.in_flight.push(Box::pin(async move {
                    Completion::Input {
                        offset,
                        result: ack.await,
                    }
                }));
            }
            Decision::DeadLetter { code, message } => {
                tracing::error!(partition = p, offset, code, %message,
                    "undecodable record on the enriched topic; dead-lettering it (not chained)");
                let ack = self.io.send_dead_letter(&input, code, &message).await?;
                self.queue(offset, None, false);
                metrics::counter!(m::DEAD_LETTERED, "partition" => self.label.clone()).increment(1);
                self.in_flight.push(Box::pin(async move {
                    Completion::Input {
                        offset,
                        result: ack.await,
                    }
                }));
            }
            Decision::Duplicate { event_id } => {
                tracing::debug!(partition = p, offset, %event_id, "duplicate event dropped");
                metrics::counter!(m::DUPLICATES, "partition" => self.label.clone()).increment(1);
                self.queue(offset, None, true);
                self.release().await?;
            }
            Decision::Skip => {
                metrics::counter!(m::SKIPPED, "partition" => self.label.clone()).increment(1);
                // A record delivered again (after a seek or a pause) is already queued.
                if self.last_taken.is_none_or(|l| offset > l) {
                    self.queue(offset, None, true);
                    self.release().await?;
                }
                let to = self.chain.expected();
                if !self.sought_forward && to - offset > FAR_BEHIND {
                    self.sought_forward = true;
                    tracing::info!(
                        partition = p,
                        offset,
                        to,
                        "consumer far behind the chain; seeking forward"
                    );
                    self.io.seek(p, self.epoch, to).await?;
                }
            }
            Decision::Seek { to } => {
                tracing::warn!(
                    partition = p,
                    offset,
                    to,
                    "input offset is ahead of the chain (committed offset ran ahead); seeking back"
                );
                metrics::counter!(m::SEEKS, "partition" => self.label.clone()).increment(1);
                self.io.seek(p, self.epoch, to).await?;
            }
            Decision::Discard => {}
        }
        Ok(())
    }

    async fn complete(&mut self, done: Completion) -> Result<(), Error> {
        match done {
            Completion::Input { offset, result } => {
                result.map_err(|source| Error::Delivery {
                    what: format!("the output of input partition {}@{offset}", self.p),
                    source: Box::new(source),
                })?;
                self.acks.ack(offset);
                self.acked += 1;
                self.release().await
            }
            Completion::Checkpoint { seq, result } => {
                result.map_err(|source| Error::Delivery {
                    what: format!("the checkpoint of partition {} at seq {seq}", self.p),
                    source: Box::new(source),
                })?;
                metrics::counter!(m::CHECKPOINTS, "partition" => self.label.clone()).increment(1);
                tracing::debug!(partition = self.p, seq, "checkpoint published");
                Ok(())
            }
        }
    }

    /// Stores the offset of the acknowledged prefix (while current) and feeds its links to the
    /// checkpoint range, publishing count-triggered checkpoints.
    async fn release(&mut self) -> Result<(), Error> {
        let released = self.acks.release();
        if let Some(next) = released.next_offset {
            self.progress.fetch_add(1, Ordering::Relaxed);
            if self.current() {
                self.io.store_offset(self.p, next);
            }
        }
        if let Some(&(seq, _)) = released.links.last() {
            self.head_seq.set(seq as f64);
        }
        let every = self.signer.as_ref().map_or(0, |s| s.every_events);
        for ((seq, hash), offset) in released.links.into_iter().zip(released.link_offsets) {
            let Some(range) = self.range.as_mut() else {
                break;
            };
            range.push(seq, hash);
            self.next_source = Some(offset + 1);
            if every > 0 && range.len() >= every {
                // Exactly N leaves per count-triggered checkpoint.
                self.publish_checkpoint().await?;
            }
        }
        Ok(())
    }

    /// A time-triggered checkpoint of the open range, or, while the partition is idle (the
    /// range is empty), a heartbeat re-signing the last one; a partition with nothing chained
    /// gets its genesis checkpoint at once.
    async fn timed_checkpoint(&mut self) -> Result<(), Error> {
        let Some((interval, heartbeat)) = self.signer.as_ref().map(|s| (s.interval, s.heartbeat))
        else {
            return Ok(());
        };
        let idle = self.range.as_ref().is_none_or(|r| r.is_empty());
        let elapsed = self.last_checkpoint.elapsed();
        if !idle && !interval.is_zero() && elapsed >= interval {
            return self.publish_checkpoint().await;
        }
        let genesis = self.range.as_ref().is_some_and(|r| r.genesis_due());
        if idle && (genesis || (!heartbeat.is_zero() && elapsed >= heartbeat)) {
            return self.publish_heartbeat().await;
        }
        Ok(())
    }

    /// Signs and publishes the open range, only while this task's epoch is current.
    async fn publish_checkpoint(&mut self) -> Result<(), Error> {
        self.publish(false).await
    }

    /// Re-signs the last checkpoint with a fresh time (see [`CheckpointRange::heartbeat`]),
    /// under the same rules as any checkpoint: only while this task's epoch is current and it
    /// was not stopped, so a revoked task or a zombie never heartbeats either.
    async fn publish_heartbeat(&mut self) -> Result<(), Error> {
        self.publish(true).await
    }

    async fn publish(&mut self, heartbeat: bool) -> Result<(), Error> {
        if self.stopped || !self.current() {
            return Ok(());
        }
        let (Some(signer), Some(range)) = (self.signer.clone(), self.range.as_mut()) else {
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
        self.last_checkpoint = Instant::now();
        let (p, seq) = (self.p, fields.seq);
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
        let peaks = range.signed_peaks().map(<[u8]>::to_vec);
        let meta = CheckpointMeta {
            next_source: self.next_source,
            tree_peaks: peaks.as_deref(),
            chain_rule: range.rule(),
        };
        let ack = self.io.send_checkpoint(p, &payload, meta).await?;
        if heartbeat {
            tracing::debug!(partition = p, seq, "heartbeat checkpoint signed");
        } else {
            tracing::info!(
                partition = p,
                first_seq = fields.first_seq,
                seq,
                "checkpoint signed"
            );
        }
        self.in_flight.push(Box::pin(async move {
            Completion::Checkpoint {
                seq,
                result: ack.await,
            }
        }));
        Ok(())
    }

    /// Drains what is in flight (storing offsets of what got acknowledged while current), and
    /// after a clean finish publishes a last checkpoint.
    async fn finish(&mut self, timeout: Duration) {
        let work = async {
            self.drain_logged().await;
            if !self.stopped {
                if let Err(e) = self.publish_checkpoint().await {
                    tracing::warn!(partition = self.p, error = %e, "final checkpoint not published");
                }
                self.drain_logged().await;
            }
        };
        if tokio::time::timeout(timeout, work).await.is_err() {
            tracing::warn!(
                partition = self.p,
                "drain timed out; unacknowledged inputs will be re-read and re-chained identically"
            );
        }
    }

    async fn drain_logged(&mut self) {
        let mut failed = 0u64;
        while let Some(done) = self.in_flight.next().await {
            if let Err(e) = self.complete(done).await {
                // One line, not one per record: after a broker outage thousands fail together.
                if failed == 0 {
                    tracing::warn!(partition = self.p, error = %e, "delivery failed while draining; its input is not committed");
                }
                failed += 1;
                self.stopped = true;
            }
        }
        if failed > 1 {
            tracing::warn!(
                partition = self.p,
                failed,
                "deliveries failed while draining; their inputs are not committed"
            );
        }
    }
}

#[cfg(test)]
mod tests;
