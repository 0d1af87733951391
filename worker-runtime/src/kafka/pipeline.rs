//! The at-least-once consume → transform → produce loop used by stateless stages (ingest's
//! Kafka path, enrich).
//!
//! For each input record the processor returns the records to produce (its outputs, or a
//! dead-letter record). They are enqueued on the idempotent producer at once, and the input
//! offset is stored only after the broker acknowledged *all* of them *and* every earlier input
//! offset of the partition ([`OffsetTracker`]). A delivery that fails even after librdkafka's
//! retries (broker restart, outage longer than `message.timeout.ms`) is not stored: the loop
//! drains, commits the durable prefix, takes a new producer, waits for the broker and re-reads
//! from the committed offsets, by itself ([`run_with_liveness`]). Valid outputs may then be
//! duplicated (the chainer removes them by event id); nothing is lost.
//!
//! Dead letters are written exactly once: those of input partition `p` go to one partition of
//! the rejected topic, whose tail is read before the first dead letter of each assignment of
//! `p`, and inputs found there are acknowledged without writing them again. Limits (each gives
//! a duplicate dead letter at worst, never a loss): a dead letter further back than
//! `dead_letter_scan_records` records whose input offset was not committed; a rebalance that
//! moves `p` to another live worker while the old owner still has its dead letters in flight;
//! a change of the rejected topic's partition count.
//!
//! In-flight records are bounded, so a slow broker slows consumption instead of growing memory.
//!
//! A consumer watchdog ([`super::liveness`]) runs beside the loop: when the consumer holds no
//! partition while the input has lag nobody consumes, or its partitions stop moving, `/readyz`
//! says why, and the loop drains what is in flight, commits what is durable, and leaves and
//! re-joins its group (a broker's coordinator can leave a group with no working assignment;
//! see docs/local-stack.md).

use super::admin;
use super::consumer::{
    close, commit_stored, store_next_offsets, AuditConsumer, RebalanceState, CLOSE_BOUND,
};
use super::dlq;
use super::liveness::{self, ConsumerProbe, LivenessSettings};
use super::offsets::{OffsetTracker, TopicPartition};
use super::producer::{await_delivery, Producer};
use super::record::{InputRecord, OutputRecord};
use super::trace_context;
use super::KafkaArgs;
use crate::error::RuntimeError;
use crate::health::Readiness;
use crate::shutdown::Shutdown;
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use futures::StreamExt;
use opentelemetry::KeyValue;
use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

/// A stage's transformation of one input record.
pub trait Processor: Send + Sync + 'static {
    /// The records to produce for `input` (possibly none, possibly a dead-letter record).
    /// An `Err` is a fault of the worker itself (not of the input) and stops it.
    fn process(
        &self,
        input: &InputRecord,
    ) -> impl Future<Output = Result<Vec<OutputRecord>, RuntimeError>> + Send;
}

#[derive(Debug, Clone)]
pub struct PipelineSettings {
    /// Stage name for logs and metrics (`ingest`, `enrich`).
    pub stage: &'static str,
    /// Input records whose outputs are not yet acknowledged, at most.
    pub max_in_flight: usize,
    /// How long shutdown waits for in-flight deliveries before giving up on them (their input
    /// offsets are then not stored, so they are redelivered).
    pub drain_timeout: Duration,
    /// The worker's Kafka settings: the rejected topic's name, and the client the dead-letter
    /// scans and the broker probe use.
    pub kafka: KafkaArgs,
    /// How many records at the tail of a rejected partition are read, on each (re)assignment
    /// of an input partition, to find its dead letters already written
    /// ([`dlq::already_dead_lettered`]). A dead letter further back whose input offset was not
    /// committed is written again (a duplicate, never a loss).
    pub dead_letter_scan_records: i64,
}

/// Default of [`PipelineSettings::dead_letter_scan_records`].
pub const DEFAULT_DEAD_LETTER_SCAN_RECORDS: i64 = 10_000;

/// The `/readyz` condition that fails while deliveries fail (broker restart or outage) and the
/// loop is re-reading from its committed offsets.
pub const CHECK_DELIVERY: &str = "kafka_delivery";

/// Longest wait between two attempts while the broker is unreachable.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How long a dead-letter scan waits for the next record before giving up (then retried).
const SCAN_IDLE_TIMEOUT: Duration = Duration::from_secs(10);

type Completion = (TopicPartition, i64, u64, Result<(), RuntimeError>);

/// Why a step of the loop failed.
enum Fault {
    /// The worker cannot go on (a processor fault, a configuration fault).
    Fatal(RuntimeError),
    /// Kafka could not take or confirm a record (broker restart, outage, timeout): the loop
    /// recovers by itself ([`recover`]).
    Transient(RuntimeError),
}

impl From<RuntimeError> for Fault {
    /// Kafka errors are transient unless they say the configuration is wrong: those would fail
    /// the same way forever.
    fn from(e: RuntimeError) -> Self {
        match &e {
            RuntimeError::Kafka { source, .. } if is_config_fault(source) => Fault::Fatal(e),
            RuntimeError::Kafka { .. } | RuntimeError::Timeout { .. } => Fault::Transient(e),
            _ => Fault::Fatal(e),
        }
    }
}

/// Whether a producing/scanning error says the configuration (credentials, permissions,
/// sizes) is wrong: retrying cannot help, so the worker stops and says why. A missing topic is
/// not among them: the topics were checked at start, and a restarting broker may briefly
/// report them unknown.
pub fn is_config_fault(e: &rdkafka::error::KafkaError) -> bool {
    use rdkafka::error::KafkaError;
    use rdkafka::types::RDKafkaErrorCode as C;
    match e {
        KafkaError::ClientConfig(..) | KafkaError::ClientCreation(_) => true,
        _ => matches!(
            e.rdkafka_error_code(),
            Some(
                C::TopicAuthorizationFailed
                    | C::ClusterAuthorizationFailed
                    | C::SaslAuthenticationFailed
                    | C::Authentication
                    | C::InvalidMessageSize
                    | C::MessageSizeTooLarge
                    | C::InvalidTopic
                    | C::InvalidRecord
                    | C::InvalidArgument
            )
        ),
    }
}

/// Runs until shutdown (then drains and commits) or until a fatal error, with the consumer
/// watchdog at its default stall timeout ([`LivenessSettings::default`]).
pub async fn run<P: Processor>(
    consumer: Arc<AuditConsumer>,
    rebalance: Arc<RebalanceState>,
    producer: Producer,
    processor: Arc<P>,
    settings: PipelineSettings,
    ready: Readiness,
    shutdown: Shutdown,
) -> Result<(), RuntimeError> {
    run_with_liveness(
        consumer,
        rebalance,
        producer,
        processor,
        settings,
        LivenessSettings::default(),
        ready,
        shutdown,
    )
    .await
}

/// The dead letters already in the rejected topic, per input partition and assignment epoch.
struct DeadLetters {
    rejected: String,
    /// Partition count of the rejected topic (read once, at the first dead letter).
    partitions: Option<i32>,
    /// (input partition) → (epoch it was read for, source offsets already dead-lettered).
    known: HashMap<TopicPartition, (u64, HashSet<i64>)>,
}

type InFlight = BoxFuture<'static, Completion>;

/// The loop's per-record counters, registered once: a `counter!` call builds its labels and
/// looks the counter up in the registry every time, and these two run for every record.
struct Counters {
    stage: &'static str,
    records_in: metrics::Counter,
    records_done: metrics::Counter,
}

impl Counters {
    fn new(stage: &'static str) -> Self {
        Counters {
            stage,
            records_in: metrics::counter!("audit_records_in_total", "stage" => stage),
            records_done: metrics::counter!("audit_records_done_total", "stage" => stage),
        }
    }
}

/// State of the loop that the recovery path resets.
struct Loop {
    counters: Counters,
    tracker: OffsetTracker,
    in_flight: FuturesUnordered<InFlight>,
    producer: Producer,
    dead_letters: DeadLetters,
    /// Current wait between recovery attempts; doubles while the broker stays away.
    backoff: Duration,
    /// A delivery failed and no delivery has succeeded since.
    degraded: bool,
    /// The names of the topics read so far, shared by the records' [`TopicPartition`]s.
    topics: Vec<Arc<str>>,
}

impl Loop {
    /// `input`'s partition, its topic's name shared rather than copied (a worker reads one or
    /// two topics; a linear search beats hashing the name).
    fn topic_partition(&mut self, input: &InputRecord) -> TopicPartition {
        let topic = match self.topics.iter().find(|t| ***t == *input.topic) {
            Some(t) => t.clone(),
            None => {
                let t: Arc<str> = Arc::from(input.topic.as_str());
                self.topics.push(t.clone());
                t
            }
        };
        (topic, input.partition)
    }
}

/// [`run`] with explicit watchdog settings: `LivenessSettings::for_consumer(&config.kafka,
/// &consumer_settings)` (stall timeout from the options, and the group to heal).
///
/// A delivery failure (broker restart, outage longer than `message.timeout.ms`) does not stop
/// the loop: it drains what is in flight, commits the durable prefix, replaces the producer
/// (librdkafka may have declared it fatal, or the broker may refuse its sequence), waits (with backoff) until the broker answers, and re-reads
/// from the committed offsets, with `/readyz` not ready ([`CHECK_DELIVERY`]) meanwhile. Only
/// processor faults and configuration faults ([`is_config_fault`]) end it.
///
/// Dead letters of input partition `p` go to partition `p mod n` of the rejected topic; before
/// the first dead letter of each assignment of `p`, the tail of that partition is read and the
/// inputs already dead-lettered are acknowledged without producing them again, so a restart
/// (crash, rebalance, recovery) does not duplicate them.
#[allow(clippy::too_many_arguments)]
pub async fn run_with_liveness<P: Processor>(
    consumer: Arc<AuditConsumer>,
    rebalance: Arc<RebalanceState>,
    producer: Producer,
    processor: Arc<P>,
    settings: PipelineSettings,
    liveness: LivenessSettings,
    ready: Readiness,
    shutdown: Shutdown,
) -> Result<(), RuntimeError> {
    let stage = settings.stage;
    let mut st = Loop {
        counters: Counters::new(stage),
        tracker: OffsetTracker::new(),
        in_flight: FuturesUnordered::new(),
        producer,
        dead_letters: DeadLetters {
            rejected: settings.kafka.topics().rejected,
            partitions: None,
            known: HashMap::new(),
        },
        backoff: Duration::from_secs(1),
        degraded: false,
        topics: Vec::new(),
    };
    let restart = Arc::new(Notify::new());
    let watchdog_stop = shutdown.child();
    let probe_timeout = liveness.probe_timeout;
    let watchdog = {
        let probe = ConsumerProbe::new(
            consumer.clone(),
            liveness::subscription(&consumer)?,
            liveness.probe_timeout,
        );
        let restart = restart.clone();
        tokio::spawn(liveness::watch(
            probe,
            stage,
            liveness,
            ready.clone(),
            move |_reason| restart.notify_one(),
            watchdog_stop.clone(),
        ))
    };
    ready.set(true);
    let result: Result<(), RuntimeError> = loop {
        let step: Result<(), Fault> = tokio::select! {
            biased;
            Some(done) = st.in_flight.next(), if !st.in_flight.is_empty() => {
                let (delivered, r) = complete_ready(&consumer, &mut st, done);
                let r = r.map_err(Fault::from);
                if delivered && st.degraded {
                    st.degraded = false;
                    st.backoff = Duration::from_secs(1);
                    ready.set_check(CHECK_DELIVERY, true, "deliveries succeed");
                    tracing::info!(stage, "deliveries succeed again");
                }
                r
            }
            _ = shutdown.cancelled() => break Ok(()),
            _ = restart.notified() => {
                // Keep what is done: drain, store, commit; then leave and re-join the group.
                // Whatever does not finish in time is not stored and is redelivered.
                let drained = drain(
                    &consumer, &mut st.tracker, &mut st.in_flight, &st.counters,
                    settings.drain_timeout,
                )
                .await;
                commit_stored(&consumer).await;
                match drained {
                    Err(e) => Err(Fault::from(e)),
                    Ok(()) => liveness::resubscribe(&consumer, stage).await.map_err(Fault::from),
                }
            }
            msg = consumer.recv(), if st.in_flight.len() < settings.max_in_flight => {
                match msg {
                    Ok(m) => {
                        let input = InputRecord::from_message(&m);
                        drop(m);
                        handle(&consumer, &rebalance, &*processor, &settings, &mut st, input).await
                    }
                    // librdkafka reports transient broker/network errors here and keeps
                    // retrying by itself; only fatal errors end the loop.
                    Err(e) if is_fatal(&e) => Err(Fault::Fatal(RuntimeError::kafka("consuming", e))),
                    Err(e) => {
                        tracing::warn!(stage, error = %e, "consumer error (retrying)");
                        Ok(())
                    }
                }
            }
        };
        match step {
            Ok(()) => {}
            Err(Fault::Fatal(e)) => break Err(e),
            Err(Fault::Transient(e)) => {
                match recover(&consumer, &settings, &mut st, &ready, &shutdown, e).await {
                    Ok(()) => {}
                    Err(e) => break Err(e),
                }
            }
        }
    };
    ready.set(false);
    watchdog_stop.trigger();
    // Drain: what is already enqueued gets its chance to be acknowledged and stored.
    if let Err(e) = drain(
        &consumer,
        &mut st.tracker,
        &mut st.in_flight,
        &st.counters,
        settings.drain_timeout,
    )
    .await
    {
        tracing::warn!(stage, error = %e, "delivery failed while draining; its input will be redelivered");
    }
    commit_stored(&consumer).await;
    release_watchdog(watchdog, &consumer, probe_timeout).await;
    close(consumer, CLOSE_BOUND).await;
    result
}

/// Stops the watchdog and waits (bounded) until it and any measurement it started have let go
/// of the consumer, so that the consumer is closed (bounded) when this function ends, while
/// the broker is most likely still there. Otherwise the last clone could be dropped later by
/// whichever thread cancels the aborted task or ends the measurement, even during runtime
/// shutdown: librdkafka's close then waited for a broker that had gone (seen in the
/// broker-outage test, whose runtime never finished dropping). Not awaited without a bound: a
/// measurement in progress may wait up to `probe_timeout` for broker answers.
async fn release_watchdog<T>(
    watchdog: tokio::task::JoinHandle<T>,
    consumer: &Arc<AuditConsumer>,
    probe_timeout: Duration,
) {
    watchdog.abort();
    let released = async {
        let _ = watchdog.await;
        while Arc::strong_count(consumer) > 1 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    if tokio::time::timeout(probe_timeout + Duration::from_secs(1), released)
        .await
        .is_err()
    {
        tracing::debug!("the consumer is still shared after the watchdog stopped");
    }
}

/// Processes one input and enqueues its outputs.
async fn handle<P: Processor>(
    consumer: &Arc<AuditConsumer>,
    rebalance: &RebalanceState,
    processor: &P,
    settings: &PipelineSettings,
    st: &mut Loop,
    input: InputRecord,
) -> Result<(), Fault> {
    let stage = settings.stage;
    let tp = st.topic_partition(&input);
    let Some(epoch) = rebalance.epoch(&input.topic, input.partition) else {
        // A record of a partition revoked since it was fetched: its new owner will read it
        // again.
        return Ok(());
    };
    st.tracker.begin(&tp, input.offset, epoch);
    // The processor runs inside the record's `process` span, so it can link the span to
    // trace ids the event itself carries (`trace_context::link_current`).
    let span = trace_context::process_span(stage, &input);
    let processed = trace_context::in_span(&span, processor.process(&input)).await;
    span.end_with(&processed);
    let mut outputs = processed.map_err(Fault::Fatal)?;
    if outputs.iter().any(|o| o.topic == st.dead_letters.rejected) {
        let skip = dead_letter_seen(consumer, settings, st, &input, epoch).await?;
        let rejected = st.dead_letters.rejected.clone();
        if skip {
            metrics::counter!("audit_dead_letters_skipped_total", "stage" => stage).increment(1);
            tracing::debug!(stage, topic = %input.topic, partition = input.partition,
                offset = input.offset, "dead letter already written; not writing it again");
            outputs.retain(|o| o.topic != rejected);
        }
        let n = st.dead_letters.partitions.unwrap_or(1);
        for o in outputs.iter_mut().filter(|o| o.topic == rejected) {
            o.partition = Some(dlq::rejected_partition(input.partition, n));
        }
    }
    let mut deliveries = Vec::with_capacity(outputs.len());
    for mut out in outputs {
        // Each output (dead letters too) carries its own `send` span's context, replacing the
        // input's header the processor copied.
        let send = trace_context::send_span(stage, &span, &out.topic, out.partition);
        send.inject(&mut out.headers);
        let topic = out.topic.clone();
        // An enqueue failure leaves the input begun and never completed: its offset (and every
        // later one of the partition) is not stored until it is read and delivered again.
        let d = match st.producer.enqueue_record(out).await {
            Ok(d) => d,
            Err(e) => {
                send.set_error(&e);
                send.end();
                return Err(Fault::from(e));
            }
        };
        deliveries.push((d, topic, send));
    }
    st.counters.records_in.increment(1);
    let offset = input.offset;
    st.in_flight.push(Box::pin(async move {
        let mut result = Ok(());
        for (d, topic, send) in deliveries {
            if result.is_err() {
                // Not awaited (as before tracing): the input is redelivered anyway.
                send.set_error("an earlier output of the same input failed");
                send.end();
                continue;
            }
            match await_delivery(d, &topic).await {
                Ok(at) => {
                    send.set_attribute(|| {
                        KeyValue::new(
                            "messaging.destination.partition.id",
                            at.partition.to_string(),
                        )
                    });
                    send.set_attribute(|| KeyValue::new("messaging.kafka.offset", at.offset));
                    send.end();
                }
                Err(e) => {
                    send.set_error(&e);
                    send.end();
                    result = Err(e);
                }
            }
        }
        (tp, offset, epoch, result)
    }));
    Ok(())
}

/// Whether `input` (whose outputs include a dead letter) was already dead-lettered by an
/// earlier run. The first time per assignment epoch of its partition, reads the tail of its
/// rejected partition — after draining what is in flight, so that no dead letter of ours is
/// still on its way and missed by the read.
async fn dead_letter_seen(
    consumer: &Arc<AuditConsumer>,
    settings: &PipelineSettings,
    st: &mut Loop,
    input: &InputRecord,
    epoch: u64,
) -> Result<bool, Fault> {
    let tp = st.topic_partition(input);
    let fresh = st
        .dead_letters
        .known
        .get(&tp)
        .is_some_and(|(e, _)| *e == epoch);
    if !fresh {
        drain(
            consumer,
            &mut st.tracker,
            &mut st.in_flight,
            &st.counters,
            settings.drain_timeout,
        )
        .await?;
        if !st.in_flight.is_empty() {
            return Err(Fault::Transient(RuntimeError::Timeout {
                context: "waiting for deliveries before reading the dead letters".into(),
                after: settings.drain_timeout,
            }));
        }
        let n = match st.dead_letters.partitions {
            Some(n) => n,
            None => {
                // Mid-run, on the record path: a failure here is a transient fault the loop
                // retries with its own back-off and shutdown check.
                let n = admin::partition_count(
                    &settings.kafka,
                    &st.dead_letters.rejected,
                    &tokio_util::sync::CancellationToken::new(),
                )
                .await?;
                st.dead_letters.partitions = Some(n);
                n
            }
        };
        let found = dlq::already_dead_lettered(
            &settings.kafka,
            &st.dead_letters.rejected,
            dlq::rejected_partition(input.partition, n),
            settings.stage,
            &input.topic,
            input.partition,
            settings.dead_letter_scan_records,
            SCAN_IDLE_TIMEOUT,
        )
        .await?;
        st.dead_letters.known.insert(tp.clone(), (epoch, found));
    }
    Ok(st
        .dead_letters
        .known
        .get(&tp)
        .is_some_and(|(_, seen)| seen.contains(&input.offset)))
}

/// Rides out a delivery failure: drains what is in flight and commits the durable prefix,
/// replaces the producer, waits (backing off) until the broker
/// answers, then leaves and re-joins the group so that every partition is read again from its
/// committed offset. `/readyz` says why meanwhile. Errs only on a fatal fault.
async fn recover(
    consumer: &Arc<AuditConsumer>,
    settings: &PipelineSettings,
    st: &mut Loop,
    ready: &Readiness,
    shutdown: &Shutdown,
    cause: RuntimeError,
) -> Result<(), RuntimeError> {
    let stage = settings.stage;
    metrics::counter!("audit_delivery_failures_total", "stage" => stage).increment(1);
    tracing::warn!(stage, error = %cause, "delivery failed; re-reading from the committed offsets");
    ready.set_check(
        CHECK_DELIVERY,
        false,
        format!("{cause}; re-reading from the committed offsets"),
    );
    st.degraded = true;
    if let Err(e) = drain(
        consumer,
        &mut st.tracker,
        &mut st.in_flight,
        &st.counters,
        settings.drain_timeout,
    )
    .await
    {
        tracing::warn!(stage, error = %e, "more deliveries failed while draining");
    }
    // What did not complete is dropped: not stored, so read again.
    st.in_flight = FuturesUnordered::new();
    st.tracker = OffsetTracker::new();
    st.dead_letters.known.clear();
    commit_stored(consumer).await;
    // A fresh producer (new producer id) after every failure, not only after a fatal one:
    // once records timed out, the idempotent producer's sequence numbers may no longer match
    // what the broker expects, and tansu then refuses every later batch of that producer
    // ("Unknown broker error") without librdkafka declaring it fatal.
    match st.producer.fatal_error() {
        Some((code, reason)) => {
            tracing::warn!(stage, ?code, %reason, "producer hit a fatal error; making a new one")
        }
        None => tracing::info!(stage, "making a new producer after the failed deliveries"),
    }
    st.producer = st.producer.recreate()?;
    // Back off until the broker answers a metadata request for the rejected topic (it also
    // refreshes that topic's partition count).
    loop {
        let wait = st.backoff;
        st.backoff = (st.backoff * 2).min(MAX_BACKOFF);
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tokio::time::sleep(wait) => {}
        }
        match admin::partition_count(&settings.kafka, &st.dead_letters.rejected, shutdown.token())
            .await
        {
            Ok(n) => {
                st.dead_letters.partitions = Some(n);
                break;
            }
            Err(e) => {
                if let Fault::Fatal(e) = Fault::from(e) {
                    return Err(e);
                }
                ready.set_check(
                    CHECK_DELIVERY,
                    false,
                    format!(
                        "{cause}; broker not answering, retrying in {:?}",
                        st.backoff
                    ),
                );
            }
        }
    }
    ready.set_check(
        CHECK_DELIVERY,
        false,
        format!("{cause}; broker answers again, re-reading from the committed offsets"),
    );
    match liveness::resubscribe(consumer, stage).await {
        Ok(()) => Ok(()),
        Err(e) => match Fault::from(e) {
            Fault::Fatal(e) => Err(e),
            Fault::Transient(e) => {
                tracing::warn!(stage, error = %e, "restarting the consumer failed; retrying");
                Box::pin(recover(consumer, settings, st, ready, shutdown, e)).await
            }
        },
    }
}
/// Waits (at most `timeout`) for the in-flight deliveries and stores the offsets they complete.
/// Returns the first delivery failure (after draining the rest); a timeout is only logged:
/// what is not delivered is not stored, so it is redelivered.
async fn drain<F: Future<Output = Completion>>(
    consumer: &AuditConsumer,
    tracker: &mut OffsetTracker,
    in_flight: &mut FuturesUnordered<F>,
    counters: &Counters,
    timeout: Duration,
) -> Result<(), RuntimeError> {
    let stage = counters.stage;
    let mut first_error = None;
    let all = async {
        while let Some(done) = in_flight.next().await {
            if let Err(e) = complete(consumer, tracker, done, counters) {
                first_error.get_or_insert(e);
            }
        }
    };
    if tokio::time::timeout(timeout, all).await.is_err() {
        tracing::warn!(
            stage,
            "drain timed out; undelivered inputs will be redelivered"
        );
    }
    first_error.map_or(Ok(()), Err)
}

fn complete(
    consumer: &AuditConsumer,
    tracker: &mut OffsetTracker,
    done: Completion,
    counters: &Counters,
) -> Result<(), RuntimeError> {
    let mut stores = Vec::new();
    let r = complete_deferred(tracker, done, counters, &mut stores);
    store_next_offsets(consumer, &stores);
    r
}

/// Most completions taken in one go by [`complete_ready`] before the loop looks at its other
/// branches again.
const COMPLETIONS_PER_STORE: usize = 256;

/// `first` and every other completion ready now (up to [`COMPLETIONS_PER_STORE`]), with one
/// offset store per partition for all of them: a store builds a partition list and takes
/// librdkafka's partition lock, 3% of enrich's CPU when done for every record. Stops at the
/// first failed delivery (what completed before it is stored, as one by one). Returns whether
/// any was delivered, and the first failure.
fn complete_ready(
    consumer: &AuditConsumer,
    st: &mut Loop,
    first: Completion,
) -> (bool, Result<(), RuntimeError>) {
    use futures::FutureExt as _;
    let mut stores = Vec::new();
    let mut delivered = false;
    let mut result = Ok(());
    let mut next = Some(first);
    let mut taken = 0;
    while let Some(done) = next.take() {
        delivered |= done.3.is_ok();
        if let Err(e) = complete_deferred(&mut st.tracker, done, &st.counters, &mut stores) {
            result = Err(e);
            break;
        }
        taken += 1;
        if taken < COMPLETIONS_PER_STORE {
            // Polled without a waker of this task's: the loop's `select!` polls the set again
            // (with its own) before it waits.
            next = st.in_flight.next().now_or_never().flatten();
        }
    }
    store_next_offsets(consumer, &stores);
    (delivered, result)
}

/// Marks one completion done in `tracker`; where its partition's commit point advanced, notes
/// the offset to store in `stores` (one entry per partition, the latest).
fn complete_deferred(
    tracker: &mut OffsetTracker,
    (tp, offset, epoch, result): Completion,
    counters: &Counters,
    stores: &mut Vec<(TopicPartition, i64)>,
) -> Result<(), RuntimeError> {
    result?;
    counters.records_done.increment(1);
    if let Some(next) = tracker.complete(&tp, offset, epoch) {
        match stores.iter_mut().find(|(t, _)| *t == tp) {
            Some(entry) => entry.1 = next,
            None => stores.push((tp, next)),
        }
    }
    Ok(())
}

/// Whether a consumer error means the consumer cannot continue.
pub fn is_fatal(e: &rdkafka::error::KafkaError) -> bool {
    use rdkafka::error::KafkaError;
    match e {
        KafkaError::MessageConsumptionFatal(_) => true,
        KafkaError::MessageConsumption(code) => matches!(
            code,
            rdkafka::types::RDKafkaErrorCode::Fatal
                | rdkafka::types::RDKafkaErrorCode::UnknownTopicOrPartition
                | rdkafka::types::RDKafkaErrorCode::TopicAuthorizationFailed
                | rdkafka::types::RDKafkaErrorCode::GroupAuthorizationFailed
        ),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn done(tp: &TopicPartition, offset: i64, ok: bool) -> Completion {
        let result = if ok {
            Ok(())
        } else {
            Err(RuntimeError::Task {
                task: "delivery".into(),
                message: "refused".into(),
            })
        };
        (tp.clone(), offset, 1, result)
    }

    #[test]
    fn completions_taken_together_store_each_partitions_latest_prefix_once() {
        let (a, b): (TopicPartition, TopicPartition) = ((Arc::from("t"), 0), (Arc::from("t"), 1));
        let mut tracker = OffsetTracker::new();
        for o in 10..15 {
            tracker.begin(&a, o, 1);
            tracker.begin(&b, o, 1);
        }
        let counters = Counters::new("test");
        let mut stores = Vec::new();
        // Out of order: 11 completes before 10, so a's prefix moves only with 10.
        for (tp, o) in [(&a, 11), (&b, 10), (&a, 10), (&b, 11), (&a, 12), (&b, 13)] {
            complete_deferred(&mut tracker, done(tp, o, true), &counters, &mut stores).unwrap();
        }
        // In the order the partitions first advanced: b with its 10, a with its 10 after 11.
        assert_eq!(stores, vec![(b.clone(), 12), (a.clone(), 13)]);

        // A failed delivery is returned and stores nothing for its partition.
        let mut stores = Vec::new();
        let r = complete_deferred(&mut tracker, done(&b, 12, false), &counters, &mut stores);
        assert!(r.is_err());
        assert!(stores.is_empty());
        // What completes after it is not stored past the failed offset.
        complete_deferred(&mut tracker, done(&b, 14, true), &counters, &mut stores).unwrap();
        assert!(stores.is_empty(), "{stores:?}");
    }
}
