//! The Kafka loop of the default (non-transactional) path: it only polls and routes records
//! to one [`task`](crate::task) per assigned partition, so poll, heartbeat and rebalance go on
//! whatever a partition is doing (a 30 s tail scan included).
//!
//! - Tasks are started on assignment (seen through the consumer's assignment epochs) and
//!   stopped when their epoch is no longer current; a partition's new task waits for its
//!   previous one to finish (its writes must be in the tail the new one reads).
//! - Each task has a bounded queue. When it is full the router keeps the record and stops
//!   receiving until the queue takes it: plain back-pressure, which leaves librdkafka's
//!   prefetched records where they are. Only a partition that makes no room for
//!   [`PAUSE_AFTER`] (its task recovering from a long tail scan, say) is paused in the
//!   consumer, so the other partitions keep flowing; it resumes once its queue took the records
//!   kept for it and is half empty. A pause is not free: librdkafka saves the position of the
//!   last delivered record and drops what it had prefetched for the partition (nothing is lost
//!   or repeated, but the broker serves it again). Pausing at every full queue made the broker
//!   serve the enriched topic about five times over (worker-bench, 120,000 records: the
//!   chainer at 0.20 of its raw path's rate, the broker's CPU 5× the raw path's).
//! - Every probe it measures lag (watermarks, the group's committed offsets) and asks
//!   [`Liveness`] whether the worker is ready, or stuck badly enough to recreate its consumer.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use futures::StreamExt;
use rdkafka::consumer::Consumer;
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::mpsc::{self, error::TrySendError, OwnedPermit};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use worker_runtime::health::Readiness;
use worker_runtime::kafka::consumer::{
    assign_static, close, close_detached, commit_stored, subscribe, ConsumerSettings, CLOSE_BOUND,
};
use worker_runtime::kafka::liveness::{heal_ghost_leader, HealTarget};
use worker_runtime::kafka::pipeline::is_fatal;
use worker_runtime::kafka::{InputRecord, KafkaArgs, Producer};
use worker_runtime::{RuntimeError, Shutdown};

use crate::checkpoints::Signer;
use crate::error::Error;
use crate::liveness::{Liveness, Observation, Verdict};
use crate::metrics as m;
use crate::status::{PartitionView, WorkerStatus};
use crate::task::{self, Control, TaskSpec, TaskStatus};
use crate::worker::{KafkaIo, ProducerSlot, Settings};

/// How long a partition task's full queue may hold the router (which stops receiving
/// meanwhile) before the partition is paused and the others flow again: a task that makes no
/// room this long is not merely busy (a delivery stuck on its leader, a back-off).
pub const PAUSE_AFTER: Duration = Duration::from_secs(1);

/// How the chainer gets its partitions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Assignment {
    /// Consumer group membership (`subscribe`).
    Group,
    /// These partitions of the enriched topic, by `assign()`.
    Static(Vec<i32>),
}

/// Everything the router needs besides the producer.
#[derive(Debug, Clone)]
pub struct RouterConfig {
    /// Client settings of the consumer.
    pub consumer_args: KafkaArgs,
    pub consumer_settings: ConsumerSettings,
    pub assignment: Assignment,
    pub enriched_partitions: i32,
    pub signer: Option<Arc<Signer>>,
    pub checkpoint_partitions: i32,
    pub settings: Settings,
    /// Bound of each partition task's queue.
    pub queue: usize,
    pub stall_timeout: Duration,
    /// Whether stored offsets are committed (at shutdown too).
    pub commit_offsets: bool,
    /// Fault injection: partition → extra recovery time.
    pub recovery_delays: HashMap<i32, Duration>,
    /// Client settings and id of the producer: a producer librdkafka declares fatal is
    /// recreated with them.
    pub producer_args: KafkaArgs,
    pub producer_client_id: String,
}

struct Entry {
    epoch: u64,
    tx: mpsc::Sender<InputRecord>,
    stop: Shutdown,
    status: Arc<TaskStatus>,
    /// Records received while its queue was full (the partition is then paused or holds the
    /// router), in order.
    stash: VecDeque<InputRecord>,
    paused: bool,
}

/// The partition whose full queue holds the router (which stops receiving), since when.
#[derive(Debug, Clone, Copy)]
struct Hold {
    partition: i32,
    epoch: u64,
    since: Instant,
}

type PermitFuture = BoxFuture<'static, (i32, u64, Option<OwnedPermit<InputRecord>>)>;

/// Lag measures of one probe, per partition of the enriched topic.
#[derive(Debug, Clone, Default)]
struct Probe {
    low: Vec<i64>,
    high: Vec<i64>,
    committed: Vec<Option<i64>>,
}

pub struct Router {
    cfg: RouterConfig,
    producer: Arc<ProducerSlot>,
    io: Arc<KafkaIo>,
    tasks: HashMap<i32, Entry>,
    /// Per partition: closed once its latest task ended.
    done: HashMap<i32, watch::Receiver<()>>,
    joins: JoinSet<(i32, u64, Result<(), Error>)>,
    permits: FuturesUnordered<PermitFuture>,
    hold: Option<Hold>,
    finish: Shutdown,
    progress: Arc<AtomicU64>,
    received: u64,
    liveness: Liveness,
    probe: Option<JoinHandle<Result<Probe, RuntimeError>>>,
    last_probe: Option<Instant>,
    probe_failures: u32,
    /// Replaced consumers, dropped (off the runtime) once their tasks let go of them.
    retired: Vec<Arc<KafkaIo>>,
    status: WorkerStatus,
    ready: Readiness,
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Router")
            .field("assignment", &self.cfg.assignment)
            .field("partitions", &self.tasks.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl Router {
    pub fn new(
        cfg: RouterConfig,
        producer: Producer,
        ready: Readiness,
        status: WorkerStatus,
    ) -> Result<Self, Error> {
        let producer = Arc::new(ProducerSlot::new(
            cfg.producer_args.clone(),
            &cfg.producer_client_id,
            producer,
        ));
        let io = Arc::new(new_io(&cfg, &producer)?);
        let stall = cfg.stall_timeout;
        Ok(Self {
            cfg,
            producer,
            io,
            tasks: HashMap::new(),
            done: HashMap::new(),
            joins: JoinSet::new(),
            permits: FuturesUnordered::new(),
            hold: None,
            finish: Shutdown::new(),
            progress: Arc::new(AtomicU64::new(0)),
            received: 0,
            liveness: Liveness::new(stall, Instant::now()),
            probe: None,
            last_probe: None,
            probe_failures: 0,
            retired: Vec::new(),
            status,
            ready,
        })
    }

    fn probe_every(&self) -> Duration {
        (self.cfg.stall_timeout / 10).clamp(Duration::from_secs(1), Duration::from_secs(5))
    }

    /// Runs until shutdown (then the tasks drain, checkpoint and store; offsets are committed)
    /// or a fatal error of a task or of the consumer.
    pub async fn run(mut self, shutdown: Shutdown) -> Result<(), Error> {
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        self.set_ready(false, "starting");
        let result: Result<(), Error> = loop {
            let consumer = self.io.consumer.clone();
            let receiving = !self.holding();
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break Ok(()),
                Some(j) = self.joins.join_next(), if !self.joins.is_empty() => {
                    if let Err(e) = self.task_ended(j) { break Err(e); }
                }
                Some((p, epoch, permit)) = self.permits.next(), if !self.permits.is_empty() => {
                    self.refill(p, epoch, permit);
                }
                Some(probe) = join_opt(&mut self.probe) => {
                    self.probe = None;
                    match probe {
                        Ok(Ok(probe)) => {
                            self.probe_failures = 0;
                            if let Some(why) = self.evaluate(&probe) {
                                if let Err(e) = self.restart(&why).await { break Err(e); }
                            }
                        }
                        Ok(Err(e)) => self.probe_failed(&e.to_string()),
                        Err(e) => self.probe_failed(&e.to_string()),
                    }
                }
                _ = tick.tick() => self.on_tick(),
                msg = consumer.recv(), if receiving => match msg {
                    Ok(m) => {
                        let rec = InputRecord::from_message(&m);
                        drop(m);
                        self.received += 1;
                        self.route(rec);
                    }
                    Err(e) if is_fatal(&e) => break Err(RuntimeError::kafka("consuming", e).into()),
                    Err(e) => tracing::warn!(error = %e, "consumer error (librdkafka retries)"),
                },
            }
        };
        self.set_ready(false, "stopping");
        self.shut(result.is_ok()).await;
        // Consumers are closed here, bounded, not wherever their last reference is dropped.
        for old in std::mem::take(&mut self.retired) {
            close_detached(old);
        }
        close(self.io, CLOSE_BOUND).await;
        result
    }

    /// Stops every task (cleanly after a normal stop; publishing nothing after a failure),
    /// waits for them within the drain timeout, and commits.
    async fn shut(&mut self, clean: bool) {
        if clean {
            self.finish.trigger();
        } else {
            for e in self.tasks.values() {
                e.stop.trigger();
            }
        }
        self.tasks.clear();
        self.permits = FuturesUnordered::new();
        if let Some(h) = self.probe.take() {
            h.abort();
        }
        let joins = &mut self.joins;
        let wait = async {
            while let Some(j) = joins.join_next().await {
                match j {
                    Ok((p, _, Err(e))) => {
                        tracing::warn!(partition = p, error = %e, "partition task failed while stopping")
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "partition task panicked or was cancelled")
                    }
                    Ok(_) => {}
                }
            }
        };
        if tokio::time::timeout(self.cfg.settings.drain_timeout, wait)
            .await
            .is_err()
        {
            tracing::warn!("partition tasks did not stop within the drain timeout; abandoning them (their inputs are re-read and re-chained identically)");
            self.joins.abort_all();
        }
        if self.cfg.commit_offsets {
            commit_stored(&self.io.consumer).await;
        }
    }

    fn task_ended(
        &mut self,
        j: Result<(i32, u64, Result<(), Error>), tokio::task::JoinError>,
    ) -> Result<(), Error> {
        let (p, epoch, result) = j.map_err(|e| RuntimeError::Task {
            task: "partition task".into(),
            message: e.to_string(),
        })?;
        result?;
        // Ended by itself (revoked): forget it, so a new epoch gets a new task.
        if self.tasks.get(&p).is_some_and(|e| e.epoch == epoch) {
            self.tasks.remove(&p);
            self.resume(p);
        }
        Ok(())
    }

    /// Whether a partition's full queue holds the router: its kept record not yet taken, the
    /// partition not paused, its task still the current one.
    fn holding(&self) -> bool {
        self.hold.is_some_and(|h| {
            self.tasks
                .get(&h.partition)
                .is_some_and(|e| e.epoch == h.epoch && !e.paused && !e.stash.is_empty())
        })
    }

    /// A partition that held the router for [`PAUSE_AFTER`] is paused; the router receives
    /// again.
    fn pause_if_held(&mut self) {
        let Some(h) = self.hold else {
            return;
        };
        if !self.holding() {
            self.hold = None;
        } else if h.since.elapsed() >= PAUSE_AFTER {
            self.hold = None;
            tracing::info!(
                partition = h.partition,
                "partition task made no room for a second: pausing the partition"
            );
            self.pause_kept(h.partition);
        }
    }

    fn on_tick(&mut self) {
        self.sync_tasks();
        self.pause_if_held();
        let paused: Vec<i32> = self
            .tasks
            .iter()
            .filter(|(_, e)| e.paused && e.stash.is_empty())
            .map(|(p, _)| *p)
            .collect();
        for p in paused {
            self.resume_if_drained(p);
        }
        let recovering: Vec<i32> = self
            .tasks
            .iter()
            .filter(|(_, e)| e.status.recovering())
            .map(|(p, _)| *p)
            .collect();
        metrics::gauge!(m::RECOVERING).set(recovering.len() as f64);
        metrics::gauge!(m::HELD).set(self.tasks.len() as f64);
        if !recovering.is_empty() {
            // Without waiting for the next probe; with the broker error that holds them up, if
            // any (a broker away, a delivery that failed).
            let why: Vec<String> = recovering
                .iter()
                .filter_map(|p| self.tasks.get(p))
                .map(|e| e.status.reason())
                .filter(|r| !r.is_empty())
                .collect();
            let mut reason = format!("partitions {recovering:?} recovering");
            if !why.is_empty() {
                reason = format!("{reason}: {}", why.join("; "));
            }
            self.set_ready(false, &reason);
        }
        self.status.set_partitions(
            self.tasks
                .iter()
                .map(|(p, e)| {
                    (
                        *p,
                        PartitionView {
                            epoch: e.epoch,
                            recovering: e.status.recovering(),
                            next_offset: e.status.next_offset(),
                        },
                    )
                })
                .collect::<BTreeMap<_, _>>(),
        );
        if self.probe.is_none()
            && self
                .last_probe
                .is_none_or(|t| t.elapsed() >= self.probe_every())
        {
            self.last_probe = Some(Instant::now());
            self.probe = Some(self.start_probe());
        }
        self.retired.retain(|io| {
            if Arc::strong_count(io) > 1 {
                return true;
            }
            // Closing a consumer blocks, maybe without end: neither on the runtime nor on its
            // blocking pool, which the runtime waits for when it shuts down.
            close_detached(io.clone());
            false
        });
    }

    /// Starts a task for every newly assigned partition and stops those no longer current.
    fn sync_tasks(&mut self) {
        let topic = &self.io.topics.enriched;
        let assigned: HashMap<i32, u64> = self
            .io
            .rebalance
            .assigned()
            .into_iter()
            .filter(|((t, _), _)| t == topic)
            .map(|((_, p), e)| (p, e))
            .collect();
        let gone: Vec<i32> = self
            .tasks
            .iter()
            .filter(|(p, e)| assigned.get(p) != Some(&e.epoch))
            .map(|(p, _)| *p)
            .collect();
        for p in gone {
            if let Some(e) = self.tasks.remove(&p) {
                tracing::info!(
                    partition = p,
                    epoch = e.epoch,
                    "partition revoked; stopping its task"
                );
                e.stop.trigger();
            }
        }
        for (p, epoch) in assigned {
            if !self.tasks.contains_key(&p) {
                self.spawn_task(p, epoch);
            }
        }
    }

    fn spawn_task(&mut self, p: i32, epoch: u64) {
        let (tx, rx) = mpsc::channel(self.cfg.queue.max(1));
        let (done_tx, done_rx) = watch::channel(());
        let after = self.done.insert(p, done_rx);
        let stop = Shutdown::new();
        let status = Arc::new(TaskStatus::for_worker(self.status.clone()));
        let control = Control {
            stop: stop.clone(),
            finish: self.finish.clone(),
            after,
            progress: self.progress.clone(),
        };
        let spec = TaskSpec {
            partition: p,
            epoch,
            signer: self.cfg.signer.clone(),
            max_in_flight: self.cfg.settings.max_in_flight,
            drain_timeout: self.cfg.settings.drain_timeout,
        };
        let io = self.io.clone();
        let st = status.clone();
        self.joins.spawn(async move {
            let r = task::run(io, spec, rx, control, st, done_tx).await;
            (p, epoch, r)
        });
        tracing::info!(partition = p, epoch, "partition task started");
        self.tasks.insert(
            p,
            Entry {
                epoch,
                tx,
                stop,
                status,
                stash: VecDeque::new(),
                paused: false,
            },
        );
        // A pause left from an earlier assignment of p would hold the new one forever.
        self.resume(p);
    }

    fn route(&mut self, rec: InputRecord) {
        let p = rec.partition;
        let Some(epoch) = self.io.rebalance.epoch(&rec.topic, p) else {
            return; // revoked since fetched: its new owner reads it again
        };
        if self.tasks.get(&p).map(|e| e.epoch) != Some(epoch) {
            self.sync_tasks();
        }
        let Some(entry) = self.tasks.get_mut(&p).filter(|e| e.epoch == epoch) else {
            return;
        };
        if !entry.stash.is_empty() {
            entry.stash.push_back(rec);
            return;
        }
        match entry.tx.try_send(rec) {
            Ok(()) => {}
            Err(TrySendError::Full(rec)) => {
                entry.stash.push_back(rec);
                let tx = entry.tx.clone();
                self.permits.push(Box::pin(async move {
                    (p, epoch, tx.reserve_owned().await.ok())
                }));
                // Unless paused (this one was fetched before the pause took effect), the
                // partition holds the router until its queue takes the record, or is paused
                // after a second of that (a task recovering from a long tail scan, say).
                if !entry.paused {
                    self.status.held();
                    self.hold = Some(Hold {
                        partition: p,
                        epoch,
                        since: Instant::now(),
                    });
                }
            }
            // The task ended; its result arrives through the join set.
            Err(TrySendError::Closed(_)) => {}
        }
    }

    /// The queue of `p` has room: hand it the oldest stashed record; resume once all went.
    fn refill(&mut self, p: i32, epoch: u64, permit: Option<OwnedPermit<InputRecord>>) {
        let Some(entry) = self.tasks.get_mut(&p).filter(|e| e.epoch == epoch) else {
            return;
        };
        let Some(permit) = permit else {
            return; // the task ended
        };
        if let Some(rec) = entry.stash.pop_front() {
            permit.send(rec);
        }
        if entry.stash.is_empty() {
            self.resume_if_drained(p);
        } else {
            let tx = entry.tx.clone();
            self.permits.push(Box::pin(async move {
                (p, epoch, tx.reserve_owned().await.ok())
            }));
        }
    }

    /// Resumes a paused partition once its queue is at most half full: every pause drops what
    /// librdkafka had prefetched for it, so resuming at the first free slot would refetch over
    /// and over. (Checked again on every tick.)
    fn resume_if_drained(&mut self, p: i32) {
        let Some(entry) = self.tasks.get_mut(&p) else {
            return;
        };
        if entry.paused
            && entry.stash.is_empty()
            && entry.tx.capacity() * 2 >= entry.tx.max_capacity()
        {
            entry.paused = false;
            self.resume(p);
        }
    }

    /// Pauses `p`, whose queue is full, in the consumer; the records kept for it go to its
    /// queue as it makes room.
    fn pause_kept(&mut self, p: i32) {
        let Some(entry) = self.tasks.get_mut(&p) else {
            return;
        };
        if !entry.paused {
            entry.paused = true;
            metrics::counter!(m::PAUSES, "partition" => p.to_string()).increment(1);
            self.status.paused();
            self.pause_resume(p, true);
        }
    }

    fn resume(&self, p: i32) {
        self.pause_resume(p, false);
    }

    fn pause_resume(&self, p: i32, pause: bool) {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(&self.io.topics.enriched, p);
        let r = if pause {
            self.io.consumer.pause(&tpl)
        } else {
            self.io.consumer.resume(&tpl)
        };
        if let Err(e) = r {
            tracing::warn!(partition = p, pause, error = %e, "pause/resume failed");
        }
    }

    /// Watermarks of every partition of the enriched topic and the group's committed offsets,
    /// on a blocking thread.
    fn start_probe(&self) -> JoinHandle<Result<Probe, RuntimeError>> {
        let consumer = self.io.consumer.clone();
        let topic = self.io.topics.enriched.clone();
        let n = self.cfg.enriched_partitions;
        let group = self.cfg.assignment == Assignment::Group;
        tokio::task::spawn_blocking(move || {
            let timeout = Duration::from_secs(5);
            let mut probe = Probe::default();
            for p in 0..n {
                let (low, high) = consumer
                    .fetch_watermarks(&topic, p, timeout)
                    .map_err(|e| RuntimeError::kafka(format!("watermarks of {topic}/{p}"), e))?;
                probe.low.push(low.max(0));
                probe.high.push(high.max(0));
            }
            probe.committed = vec![None; n.max(0) as usize];
            if group {
                let mut tpl = TopicPartitionList::new();
                for p in 0..n {
                    tpl.add_partition(&topic, p);
                }
                let committed = consumer
                    .committed_offsets(tpl, timeout)
                    .map_err(|e| RuntimeError::kafka(format!("committed offsets of {topic}"), e))?;
                for e in committed.elements() {
                    if let (Offset::Offset(o), Ok(i)) = (e.offset(), usize::try_from(e.partition()))
                    {
                        if let Some(slot) = probe.committed.get_mut(i) {
                            *slot = Some(o);
                        }
                    }
                }
            }
            Ok(probe)
        })
    }

    /// Readiness from a probe; `Some(reason)` when the consumer must be recreated.
    fn evaluate(&mut self, probe: &Probe) -> Option<String> {
        let group_mode = self.cfg.assignment == Assignment::Group;
        let mut o = Observation {
            now: Instant::now(),
            group_mode,
            held: self.tasks.len(),
            recovering: Vec::new(),
            lag_held: 0,
            lag_unheld: 0,
            committed_unheld: 0,
            progress: self.progress.load(std::sync::atomic::Ordering::Relaxed),
            received: self.received,
        };
        for (i, (&low, &high)) in probe.low.iter().zip(&probe.high).enumerate() {
            let p = i as i32;
            match self.tasks.get(&p) {
                Some(e) if e.status.recovering() => o.recovering.push(p),
                Some(e) => {
                    if let Some(next) = e.status.next_offset() {
                        o.lag_held += (high - next).max(0);
                    }
                }
                None if group_mode => {
                    let c = probe.committed.get(i).copied().flatten().unwrap_or(low);
                    o.lag_unheld += (high - c).max(0);
                    o.committed_unheld += c;
                }
                None => {}
            }
        }
        o.recovering.sort_unstable();
        metrics::gauge!(m::LAG).set((o.lag_held + o.lag_unheld) as f64);
        match self.liveness.observe(&o) {
            Verdict::Ready => {
                self.set_ready(true, "");
                None
            }
            Verdict::NotReady(why) => {
                if self.ready.get() {
                    tracing::warn!(reason = %why, "not ready");
                }
                self.set_ready(false, &why);
                None
            }
            Verdict::Restart(why) => {
                self.set_ready(false, &why);
                Some(why)
            }
        }
    }

    /// Replaces the consumer: the old one's tasks stop (they are no longer current, so they
    /// publish and store nothing more), it leaves its group, and a new one joins or assigns.
    async fn restart(&mut self, why: &str) -> Result<(), Error> {
        tracing::warn!(reason = %why, "recreating the consumer");
        metrics::counter!(m::CONSUMER_RESTARTS).increment(1);
        self.status.restarted();
        // Holding nothing in group mode: the coordinator may be stuck with a leader that is no
        // longer a member (tansu 0.6.0, docs/local-stack.md), and no re-join alone gets out of
        // that. Heal the group first; on a sound coordinator this costs one extra rebalance,
        // and the restart re-joins anyway.
        if self.cfg.assignment == Assignment::Group && self.tasks.is_empty() {
            let s = &self.cfg.consumer_settings;
            if let Some(target) =
                HealTarget::for_group(&self.cfg.consumer_args, &s.group_id, s.session_timeout_ms)
            {
                heal_group(target).await;
            }
        }
        self.io.retire();
        for (_, e) in self.tasks.drain() {
            e.stop.trigger();
        }
        self.permits = FuturesUnordered::new();
        if let Some(h) = self.probe.take() {
            h.abort();
        }
        let old = self.io.clone();
        if self.cfg.assignment == Assignment::Group {
            let c = old.consumer.clone();
            let leave = tokio::task::spawn_blocking(move || c.unsubscribe());
            if tokio::time::timeout(Duration::from_secs(10), leave)
                .await
                .is_err()
            {
                tracing::warn!("unsubscribing the old consumer did not finish within 10 s");
            }
        }
        self.retired.push(old);
        self.io = Arc::new(new_io(&self.cfg, &self.producer)?);
        self.liveness.restarted(Instant::now());
        self.last_probe = Some(Instant::now());
        Ok(())
    }

    /// A broker that does not answer the lag probe three times in a row cannot be chaining
    /// either: not ready until it answers.
    fn probe_failed(&mut self, error: &str) {
        tracing::warn!(%error, "lag probe failed");
        self.probe_failures += 1;
        if self.probe_failures >= 3 {
            self.set_ready(false, &format!("the broker does not answer: {error}"));
        }
    }

    fn set_ready(&self, ready: bool, reason: &str) {
        self.ready.set(ready);
        self.status.set_ready(ready, reason);
        metrics::gauge!(m::READY).set(if ready { 1.0 } else { 0.0 });
    }
}

/// Clears a group stuck with a leader that is no longer a member ([`heal_ghost_leader`]).
async fn heal_group(target: HealTarget) {
    let group = target.group_id.clone();
    let heal =
        tokio::task::spawn_blocking(move || heal_ghost_leader(&target, Duration::from_secs(10)));
    match heal.await {
        Ok(Ok(outcome)) => tracing::warn!(%group, ?outcome, "group healed before re-joining"),
        Ok(Err(e)) => tracing::warn!(%group, error = %e, "group heal failed"),
        Err(e) => tracing::warn!(%group, error = %e, "group heal task failed"),
    }
}

/// A consumer (group member or static assignment) and the Kafka side of its tasks.
fn new_io(cfg: &RouterConfig, producer: &Arc<ProducerSlot>) -> Result<KafkaIo, Error> {
    let topic = cfg.consumer_args.topics().enriched;
    let (consumer, rebalance) = match &cfg.assignment {
        Assignment::Group => subscribe(&cfg.consumer_args, &cfg.consumer_settings)?,
        Assignment::Static(parts) => {
            assign_static(&cfg.consumer_args, &cfg.consumer_settings, &topic, parts)?
        }
    };
    Ok(KafkaIo::new(
        cfg.consumer_args.clone(),
        consumer,
        rebalance,
        producer.clone(),
        cfg.signer.clone(),
        cfg.checkpoint_partitions,
        cfg.settings.clone(),
    )
    .with_recovery_delays(cfg.recovery_delays.clone()))
}

/// Awaits an optional join handle (pending forever without one).
async fn join_opt<T>(h: &mut Option<JoinHandle<T>>) -> Option<Result<T, tokio::task::JoinError>> {
    match h {
        Some(h) => Some(h.await),
        None => std::future::pending().await,
    }
}
