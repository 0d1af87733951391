//! The send gate: records reach librdkafka one wave per lane (topic and partition) at a time.
//!
//! Why (issue 10, measured with `perf` and `strace` on the chainer): an idempotent librdkafka
//! producer (2.12) lets a partition have a new ProduceRequest only while fewer than five
//! *messages* of it are in flight (`rd_kafka_toppar_producer_serve` compares
//! `rktp_msgs_inflight` with `RD_KAFKA_IDEMP_MAX_INFLIGHT`), so under load each partition has
//! one request in flight and the rest queued. While that request waits for its ack,
//! `rd_kafka_msgq_allow_wakeup_at` sets the broker thread's next wake-up to *now* as soon as the
//! oldest queued record is older than `linger.ms`, and the thread calls `poll(…, 0)` in a loop
//! until the ack comes (3,000 polls a second under strace; 65% of the chainer's samples, 12–17
//! µs of system time per event), taking a core from the broker on a small machine. A larger
//! `linger.ms` hides it only for acks faster than the linger, and costs that linger on every hop.
//!
//! So the records wait here instead, where waiting costs nothing: a lane with records in
//! librdkafka holds new ones back until all of those are acknowledged, then hands over
//! everything it held at once (one request's worth of batching, as librdkafka would have made,
//! without the spin). Records that arrive within `linger.ms` of a wave's first record still join
//! it (librdkafka has not sent that wave yet). A wave is at most what librdkafka puts in one
//! request (`batch.size` bytes, `batch.num.messages` records): a larger one would leave its
//! tail queued in librdkafka behind the first request, and the spin would be back (seen: 400
//! ms acks of 1 MB chained batches on tansu). Order per lane is kept: one task submits, in
//! arrival order, and a held record is submitted only after every earlier one of its lane. A
//! lane is a topic partition for records with an explicit partition, and a topic for keyed
//! records (the partitioner picks their partition later): a topic written both ways (no worker
//! does) keeps no order between its keyed and its explicitly partitioned records.
//!
//! An acknowledgement goes from librdkafka's delivery callback straight to the record's sender;
//! the gate hears of it by a notice carrying the lane's index ([`AckNotice`], sent when the
//! callback drops it), so its task only does the counting. (Before, each acknowledgement went
//! through a future of the gate's own and a second oneshot: two allocations, a task wake-up and
//! a poll per record, for nothing the sender needed.)
//!
//! Not used with transactions: a transaction's commit flushes librdkafka's queue, and records
//! held here would miss it (`Producer` bypasses the gate when `transactional.id` is set).

use super::ack_producer::{AckNotice, AckProducer, AckReply};
use futures::channel::oneshot;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Headers as _, OwnedHeaders, OwnedMessage, Timestamp};
use rdkafka::producer::future_producer::OwnedDeliveryResult;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::producer::future_record;

/// Records that waited in a producer's send gate for the wave before them (counter).
pub const HELD_METRIC: &str = "audit_producer_gate_held_records_total";

/// Commands waiting for the gate's task; callers wait (async) when it is full.
const CHANNEL: usize = 4096;
/// Commands taken from the channel per wake-up.
const RECV_BATCH: usize = 256;
/// librdkafka's queue is full: try again after this long.
const QUEUE_FULL_BACKOFF: Duration = Duration::from_millis(5);

/// A record the gate owns until it submits it.
#[derive(Debug)]
pub(crate) struct GatedRecord {
    pub topic: String,
    pub partition: Option<i32>,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
    pub headers: Option<OwnedHeaders>,
    pub timestamp_ms: Option<i64>,
}

impl GatedRecord {
    /// What librdkafka counts against `batch.size` for it, about: key, value, headers and the
    /// record's framing (varints, attributes, offsets and timestamps deltas: under 40 bytes).
    fn batch_bytes(&self) -> usize {
        const FRAMING: usize = 40;
        let headers = self.headers.as_ref().map_or(0, |h| {
            h.iter()
                .map(|h| h.key.len() + h.value.map_or(0, <[u8]>::len) + 10)
                .sum()
        });
        FRAMING
            + self.key.as_ref().map_or(0, Vec::len)
            + self.payload.as_ref().map_or(0, Vec::len)
            + headers
    }
}

/// How large a wave may grow: librdkafka's `linger.ms` (records arriving within it of the
/// wave's first still join it), `batch.size` and `batch.num.messages` (one request's worth).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct WaveLimits {
    pub window: Duration,
    pub max_bytes: usize,
    pub max_records: usize,
}

impl WaveLimits {
    /// From the producer's settings; librdkafka's defaults where they are not set.
    pub fn from_config(cfg: &rdkafka::ClientConfig) -> WaveLimits {
        let num = |keys: &[&str], default: f64| {
            keys.iter()
                .find_map(|k| cfg.get(k))
                .and_then(|v| v.trim().parse::<f64>().ok())
                .filter(|v| v.is_finite() && *v >= 0.0)
                .unwrap_or(default)
        };
        let linger_ms = num(&["linger.ms", "queue.buffering.max.ms"], 5.0);
        // A tenth below the limit: our byte count is an estimate of librdkafka's.
        let batch_size = num(&["batch.size"], 1_000_000.0) * 0.9;
        let batch_num = num(&["batch.num.messages"], 10_000.0);
        WaveLimits {
            window: Duration::from_secs_f64(linger_ms / 1e3),
            max_bytes: (batch_size as usize).max(1),
            max_records: (batch_num as usize).max(1),
        }
    }
}

enum Cmd {
    Send(GatedRecord, oneshot::Sender<OwnedDeliveryResult>),
    /// Answered once nothing is held or unacknowledged.
    Idle(oneshot::Sender<()>),
}

/// The handle the producer's clones share; the gate's task ends when the last one is dropped.
#[derive(Clone)]
pub(crate) struct Gate {
    tx: mpsc::Sender<Cmd>,
    stats: Arc<Counters>,
}

/// What the gate did so far (for tests and the bench; also exported as metrics).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GateStats {
    /// Waves handed to librdkafka (a lane's records submitted together).
    pub waves: u64,
    /// Records that waited in the gate for the wave before them to be acknowledged.
    pub held: u64,
    /// Records submitted to librdkafka.
    pub submitted: u64,
}

#[derive(Default)]
struct Counters {
    waves: AtomicU64,
    held: AtomicU64,
    submitted: AtomicU64,
}

/// The gate's task is gone (the runtime is shutting down).
#[derive(Debug)]
pub(crate) struct Closed;

/// A record the gate could not take (its task is gone): the record's topic.
#[derive(Debug)]
pub(crate) struct Refused(pub String);

impl Gate {
    /// Starts the gate's task on the current runtime.
    pub fn start(
        producer: AckProducer,
        limits: WaveLimits,
        handle: &tokio::runtime::Handle,
    ) -> Gate {
        let (tx, rx) = mpsc::channel(CHANNEL);
        let stats = Arc::new(Counters::default());
        handle.spawn(run(producer, limits, rx, stats.clone()));
        Gate { tx, stats }
    }

    pub fn stats(&self) -> GateStats {
        GateStats {
            waves: self.stats.waves.load(Ordering::Relaxed),
            held: self.stats.held.load(Ordering::Relaxed),
            submitted: self.stats.submitted.load(Ordering::Relaxed),
        }
    }

    /// Hands `record` to the gate; the receiver gets librdkafka's delivery result.
    pub async fn send(
        &self,
        record: GatedRecord,
    ) -> Result<oneshot::Receiver<OwnedDeliveryResult>, Refused> {
        let (reply, rx) = oneshot::channel();
        match self.tx.send(Cmd::Send(record, reply)).await {
            Ok(()) => Ok(rx),
            Err(mpsc::error::SendError(Cmd::Send(record, _))) => Err(Refused(record.topic)),
            Err(mpsc::error::SendError(Cmd::Idle(_))) => Err(Refused(String::new())),
        }
    }

    /// Resolves once every record handed over so far is acknowledged (or failed).
    pub async fn idle(&self) -> Result<(), Closed> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Cmd::Idle(reply)).await.map_err(|_| Closed)?;
        rx.await.map_err(|_| Closed)
    }
}

/// The records of one topic partition; `partition: None`: the records of that topic whose
/// partition librdkafka's partitioner chooses (one lane for all of them).
struct LaneState {
    topic: String,
    partition: Option<i32>,
    /// Submitted to librdkafka, not yet acknowledged.
    unacked: usize,
    /// When the wave in librdkafka began (its first record's submission).
    wave_start: Option<Instant>,
    /// The current wave's records and their bytes (see [`GatedRecord::batch_bytes`]).
    wave_records: usize,
    wave_bytes: usize,
    held: VecDeque<(GatedRecord, oneshot::Sender<OwnedDeliveryResult>)>,
}

impl LaneState {
    fn idle(&self) -> bool {
        self.unacked == 0 && self.held.is_empty()
    }
}

struct State {
    producer: AckProducer,
    stats: Arc<Counters>,
    /// [`HELD_METRIC`], registered once (a `counter!` per held record looked it up each time).
    held_metric: metrics::Counter,
    limits: WaveLimits,
    /// Every lane written so far, found by its index in the acknowledgements' notices. A
    /// worker writes a few topics' partitions, so a lane is found by a linear search on
    /// arrival, which needs no key made per record, and kept once made.
    lanes: Vec<LaneState>,
    /// Each submitted record's reply notifies this of its lane when librdkafka is done with
    /// the record ([`AckNotice`]); the reply itself goes straight to the record's sender.
    notices: mpsc::UnboundedSender<usize>,
    idle_waiters: Vec<oneshot::Sender<()>>,
}

async fn run(
    producer: AckProducer,
    limits: WaveLimits,
    mut rx: mpsc::Receiver<Cmd>,
    stats: Arc<Counters>,
) {
    let (notices, mut done) = mpsc::unbounded_channel();
    let mut st = State {
        producer,
        stats,
        held_metric: metrics::counter!(HELD_METRIC),
        limits,
        lanes: Vec::new(),
        notices,
        idle_waiters: Vec::new(),
    };
    let mut cmds = Vec::with_capacity(RECV_BATCH);
    let mut acked = Vec::with_capacity(RECV_BATCH);
    loop {
        tokio::select! {
            // Acks first: they release held records, which keeps waves large and order simple.
            biased;
            // Never 0: `st` holds a sender.
            _ = done.recv_many(&mut acked, RECV_BATCH) => {
                for lane in acked.drain(..) {
                    st.acked(lane).await;
                }
            }
            n = rx.recv_many(&mut cmds, RECV_BATCH) => {
                if n == 0 {
                    break;
                }
                for cmd in cmds.drain(..) {
                    match cmd {
                        Cmd::Send(rec, reply) => st.arrive(rec, reply).await,
                        Cmd::Idle(reply) => st.idle_waiters.push(reply),
                    }
                }
            }
        }
        if !st.idle_waiters.is_empty() && st.lanes.iter().all(LaneState::idle) {
            for w in st.idle_waiters.drain(..) {
                let _ = w.send(());
            }
        }
    }
    // Every handle is gone: what is held fails (`Canceled`) for its caller, as a dropped
    // producer's queue does, and dropping the producer purges what is in librdkafka (failing
    // it for its sender). The drop does not block (`AckProducer`: its polling thread destroys
    // the client).
    drop(st.lanes);
    drop(st.producer);
}

impl State {
    async fn arrive(&mut self, rec: GatedRecord, reply: oneshot::Sender<OwnedDeliveryResult>) {
        let id = match self
            .lanes
            .iter()
            .position(|l| l.partition == rec.partition && l.topic == rec.topic)
        {
            Some(id) => id,
            None => {
                self.lanes.push(LaneState {
                    topic: rec.topic.clone(),
                    partition: rec.partition,
                    unacked: 0,
                    wave_start: None,
                    wave_records: 0,
                    wave_bytes: 0,
                    held: VecDeque::new(),
                });
                self.lanes.len() - 1
            }
        };
        let now = Instant::now();
        let bytes = rec.batch_bytes();
        let limits = self.limits;
        let ls = &mut self.lanes[id];
        // Starts a wave, or joins the one librdkafka has not sent yet while it has room;
        // otherwise waits for the wave in flight to be acknowledged.
        let starts = ls.idle();
        let joins = !starts
            && ls.held.is_empty()
            && ls.wave_start.is_some_and(|s| now < s + limits.window)
            && ls.wave_records < limits.max_records
            && ls.wave_bytes + bytes <= limits.max_bytes;
        if starts {
            ls.wave_start = Some(now);
            ls.wave_records = 0;
            ls.wave_bytes = 0;
            self.stats.waves.fetch_add(1, Ordering::Relaxed);
        }
        if starts || joins {
            ls.wave_records += 1;
            ls.wave_bytes += bytes;
            self.submit(id, rec, reply).await;
        } else {
            ls.held.push_back((rec, reply));
            self.stats.held.fetch_add(1, Ordering::Relaxed);
            self.held_metric.increment(1);
        }
    }

    /// librdkafka is done with a record of lane `id`.
    async fn acked(&mut self, id: usize) {
        let Some(ls) = self.lanes.get_mut(id) else {
            return;
        };
        ls.unacked = ls.unacked.saturating_sub(1);
        if ls.unacked > 0 {
            return;
        }
        // A wave's round trip and what waited behind it: a hop's share of end-to-end latency
        // that is the broker's acknowledgement, not ours.
        tracing::debug!(
            topic = %ls.topic,
            partition = ?ls.partition,
            records = ls.wave_records,
            ack_ms = ls.wave_start.map_or(0, |s| s.elapsed().as_millis() as u64),
            held = ls.held.len(),
            "wave acknowledged"
        );
        if ls.held.is_empty() {
            ls.wave_start = None;
            return;
        }
        // The next wave: as many held records as one request takes (at least one), in order.
        ls.wave_start = Some(Instant::now());
        self.stats.waves.fetch_add(1, Ordering::Relaxed);
        let (mut records, mut bytes, mut wave) = (0usize, 0usize, Vec::new());
        while let Some((rec, _)) = ls.held.front() {
            let b = rec.batch_bytes();
            if records > 0
                && (records >= self.limits.max_records || bytes + b > self.limits.max_bytes)
            {
                break;
            }
            records += 1;
            bytes += b;
            if let Some(next) = ls.held.pop_front() {
                wave.push(next);
            }
        }
        ls.wave_records = records;
        ls.wave_bytes = bytes;
        for (rec, reply) in wave {
            self.submit(id, rec, reply).await;
        }
    }

    /// Into librdkafka's queue, the acknowledgement going straight to `reply` and a notice to
    /// the gate; a record librdkafka refuses gets its error at once.
    async fn submit(
        &mut self,
        id: usize,
        rec: GatedRecord,
        reply: oneshot::Sender<OwnedDeliveryResult>,
    ) {
        let mut reply = AckReply::noticed(reply, AckNotice::new(id, self.notices.clone()));
        loop {
            let fr = future_record(
                &rec.topic,
                rec.partition,
                rec.key.as_deref(),
                rec.payload.as_deref(),
                rec.headers.as_ref(),
                rec.timestamp_ms,
            );
            match self.producer.send_with(fr, reply) {
                Ok(()) => {
                    let ls = &mut self.lanes[id];
                    ls.unacked += 1;
                    ls.wave_start.get_or_insert_with(Instant::now);
                    self.stats.submitted.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _, back)) => {
                    reply = back;
                    tokio::time::sleep(QUEUE_FULL_BACKOFF).await;
                }
                Err((e, _, back)) => {
                    (*back).refuse(Err((e, empty_message())));
                    return;
                }
            }
        }
    }
}

/// The message half of a delivery error that has no record to hand back (refused, timed out,
/// cancelled).
pub(crate) fn empty_message() -> OwnedMessage {
    OwnedMessage::new(
        None,
        None,
        String::new(),
        Timestamp::NotAvailable,
        -1,
        -1,
        None,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(props: &[(&str, &str)]) -> rdkafka::ClientConfig {
        let mut c = rdkafka::ClientConfig::new();
        for (k, v) in props {
            c.set(*k, *v);
        }
        c
    }

    #[test]
    fn wave_limits_follow_the_producer_settings() {
        let l = WaveLimits::from_config(&cfg(&[
            ("linger.ms", "20"),
            ("batch.size", "100000"),
            ("batch.num.messages", "500"),
        ]));
        assert_eq!(l.window, Duration::from_millis(20));
        assert_eq!(l.max_bytes, 90_000, "a tenth below batch.size");
        assert_eq!(l.max_records, 500);
        // librdkafka's defaults, and its older name for linger.
        let l = WaveLimits::from_config(&cfg(&[("queue.buffering.max.ms", "7")]));
        assert_eq!(l.window, Duration::from_millis(7));
        assert_eq!((l.max_bytes, l.max_records), (900_000, 10_000));
        // Nonsense falls back to the defaults rather than to a zero-sized wave.
        let l = WaveLimits::from_config(&cfg(&[("batch.num.messages", "-3"), ("batch.size", "x")]));
        assert_eq!((l.max_bytes, l.max_records), (900_000, 10_000));
    }

    #[test]
    fn a_records_batch_bytes_count_key_value_and_headers() {
        let r = GatedRecord {
            topic: "t".to_owned(),
            partition: Some(0),
            key: Some(vec![0; 10]),
            payload: Some(vec![0; 1000]),
            headers: Some(OwnedHeaders::new().insert(rdkafka::message::Header {
                key: "traceparent",
                value: Some(&[0u8; 55][..]),
            })),
            timestamp_ms: None,
        };
        assert_eq!(r.batch_bytes(), 40 + 10 + 1000 + (11 + 55 + 10));
    }
}
