//! What both Kafka loops share: settings, the Kafka side of a partition task ([`KafkaIo`]:
//! recover, seek, produce, store offsets, "is this partition still ours"), and small helpers.
//!
//! The default path is [`crate::router`] (routing only) + [`crate::task`] (one task per
//! assigned partition); with `--transactional-id` it is [`crate::txn_worker`] (one loop, since
//! one transaction spans partitions).

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use rdkafka::consumer::Consumer;
use rdkafka::error::KafkaError;
use rdkafka::producer::Producer as _;
use rdkafka::Offset;
use worker_runtime::kafka::consumer::store_next_offset;
use worker_runtime::kafka::dlq::dead_letter;
use worker_runtime::kafka::producer::{await_delivery, PendingDelivery, SendParts};
use worker_runtime::kafka::trace_context::{self, KeyValue};
use worker_runtime::kafka::Topics;
use worker_runtime::kafka::{AuditConsumer, InputRecord, KafkaArgs, Producer, RebalanceState};
use worker_runtime::RuntimeError;

use crate::checkpoints::CheckpointMeta;
use crate::checkpoints::Signer;
use crate::error::Error;
use crate::recovery::{recover_partition, RecoverArgs, Recovered};
use crate::task::{Ack, TaskIo};

pub const STAGE: &str = "chainer";
pub(crate) const SEEK_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
pub struct Settings {
    /// The chain id (new partitions' `audit-chain/v2` genesis is bound to it).
    pub chain_id: String,
    pub window: usize,
    /// Per partition task (transactions mode: for the whole loop).
    pub max_in_flight: usize,
    pub scan_idle_timeout: Duration,
    pub checkpoint_scan_records: i64,
    pub drain_timeout: Duration,
}

/// The producer every partition task shares, replaceable: after a delivery failure the
/// idempotent producer is either fatal in librdkafka's eyes (a gap it cannot close, e.g.
/// `message.timeout.ms` ran out during a broker outage under `enable.gapless.guarantee`, or a
/// broker that lost the producer's state in a restart) and never delivers again, or it bumped
/// its epoch by itself, which tansu 0.6 does not survive; the worker must go on without an
/// orchestrator's restart either way. Each replacement is a new generation; a task names the
/// generation it saw fail so that several tasks failing together replace it once.
pub struct ProducerSlot {
    args: KafkaArgs,
    client_id: String,
    current: Mutex<(u64, Producer)>,
}

impl std::fmt::Debug for ProducerSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProducerSlot")
            .field("client_id", &self.client_id)
            .field("generation", &self.get().0)
            .finish_non_exhaustive()
    }
}

impl ProducerSlot {
    /// `producer` was created from `args` and `client_id` (replacements are too).
    pub fn new(args: KafkaArgs, client_id: &str, producer: Producer) -> Self {
        Self {
            args,
            client_id: client_id.to_owned(),
            current: Mutex::new((0, producer)),
        }
    }

    /// The current producer and its generation.
    pub fn get(&self) -> (u64, Producer) {
        let g = lock(&self.current);
        (g.0, g.1.clone())
    }

    /// After a delivery failure seen on generation `generation`: replaces the producer unless
    /// another task already did (it is no longer that generation). Returns whether it did. The
    /// old producer is dropped off the runtime (dropping purges its queue, which fails what
    /// other tasks still had in it: they recover again too).
    pub fn replace(&self, generation: u64) -> bool {
        let mut g = lock(&self.current);
        if g.0 != generation {
            return false;
        }
        let fatal = g.1.inner().client().fatal_error();
        let fresh = match Producer::new(&self.args, &self.client_id) {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(error = %e, "could not recreate the producer; keeping the old one");
                return false;
            }
        };
        tracing::warn!(
            generation,
            ?fatal,
            "recreating the producer after a delivery failure"
        );
        metrics::counter!(crate::metrics::PRODUCER_RESTARTS).increment(1);
        let old = std::mem::replace(&mut *g, (generation + 1, fresh));
        drop(g);
        match tokio::runtime::Handle::try_current() {
            Ok(h) => {
                h.spawn_blocking(move || drop(old));
            }
            Err(_) => drop(old),
        }
        true
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Poisoning only means a panic elsewhere while swapping a value.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The Kafka side of the partition tasks of one consumer ("generation": a recreated consumer
/// gets a new one, and the old one is retired so that its tasks stop counting as current).
pub struct KafkaIo {
    pub kafka: KafkaArgs,
    pub topics: Topics,
    pub consumer: Arc<AuditConsumer>,
    pub rebalance: Arc<RebalanceState>,
    pub producer: Arc<ProducerSlot>,
    pub signer: Option<Arc<Signer>>,
    pub checkpoint_partitions: i32,
    pub settings: Settings,
    retired: AtomicBool,
    /// Fault injection (`--fault-recovery-delay`): partition → extra time its recovery takes.
    recovery_delays: HashMap<i32, Duration>,
}

impl std::fmt::Debug for KafkaIo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaIo")
            .field("topics", &self.topics)
            .field("retired", &self.retired)
            .finish_non_exhaustive()
    }
}

impl KafkaIo {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        kafka: KafkaArgs,
        consumer: Arc<AuditConsumer>,
        rebalance: Arc<RebalanceState>,
        producer: Arc<ProducerSlot>,
        signer: Option<Arc<Signer>>,
        checkpoint_partitions: i32,
        settings: Settings,
    ) -> Self {
        Self {
            topics: kafka.topics(),
            kafka,
            consumer,
            rebalance,
            producer,
            signer,
            checkpoint_partitions,
            settings,
            retired: AtomicBool::new(false),
            recovery_delays: HashMap::new(),
        }
    }

    /// Makes the recovery of these partitions take this much longer (fault injection).
    pub fn with_recovery_delays(mut self, delays: HashMap<i32, Duration>) -> Self {
        self.recovery_delays = delays;
        self
    }

    /// From now on no task of this consumer is current (the consumer is being replaced).
    pub fn retire(&self) {
        self.retired.store(true, Ordering::Release);
    }
}

impl TaskIo for KafkaIo {
    fn is_current(&self, p: i32, epoch: u64) -> bool {
        !self.retired.load(Ordering::Acquire)
            && self.rebalance.epoch(&self.topics.enriched, p) == Some(epoch)
    }

    fn recover(&self, p: i32, epoch: u64) -> BoxFuture<'_, Result<Recovered, Error>> {
        let delay = self.recovery_delays.get(&p).copied();
        let recover = recover_partition(RecoverArgs {
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
        });
        let span = trace_context::internal_span(
            STAGE,
            format!("{} recover", self.topics.chained),
            None,
            vec![
                KeyValue::new("messaging.destination.name", self.topics.chained.clone()),
                KeyValue::new("messaging.destination.partition.id", p.to_string()),
                KeyValue::new(
                    "audit.chainer.epoch",
                    i64::try_from(epoch).unwrap_or(i64::MAX),
                ),
            ],
        );
        Box::pin(async move {
            if let Some(d) = delay {
                tracing::warn!(
                    partition = p,
                    delay_ms = d.as_millis() as u64,
                    "fault injection: delaying recovery"
                );
                tokio::time::sleep(d).await;
            }
            let r = recover.await;
            if let Ok(rec) = &r {
                span.set_attribute(|| {
                    KeyValue::new("audit.chain.next_offset", rec.chain.expected())
                });
            }
            span.end_with(&r);
            r
        })
    }

    fn seek(&self, p: i32, epoch: u64, to: i64) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(async move {
            let res = seek_blocking(&self.consumer, &self.topics.enriched, p, to).await?;
            match res {
                Ok(()) => Ok(()),
                // Revoked meanwhile: the next owner recovers the partition itself.
                Err(_) if !self.is_current(p, epoch) => Ok(()),
                Err(source) => Err(Error::Seek {
                    topic: self.topics.enriched.clone(),
                    partition: p,
                    offset: to,
                    source: Box::new(source),
                }),
            }
        })
    }

    fn send_chained<'a>(
        &'a self,
        p: i32,
        input: &'a InputRecord,
        payload: Vec<u8>,
    ) -> BoxFuture<'a, Result<Ack, Error>> {
        Box::pin(async move {
            // The chained record carries its input's trace context: a `send` span's (child
            // of this record's `process` span) while tracing is on, else the input's headers
            // as they came. Headers are not hashed: the record's value stays deterministic.
            let process = trace_context::process_span(STAGE, input);
            let publish = trace_context::send_span(STAGE, &process, &self.topics.chained, Some(p));
            let headers = trace_headers(&publish, input);
            let d = send_with_headers(
                &self.producer.get().1,
                &self.topics.chained,
                p,
                input.key.as_deref(),
                payload.into(),
                input.timestamp_ms,
                headers,
            )
            .await;
            publish.end_with(&d);
            process.end();
            Ok(ack(d?, self.topics.chained.clone()))
        })
    }

    fn send_dead_letter<'a>(
        &'a self,
        input: &'a InputRecord,
        code: &'static str,
        message: &'a str,
    ) -> BoxFuture<'a, Result<Ack, Error>> {
        Box::pin(async move {
            let mut rec = dead_letter(&self.topics.rejected, input, STAGE, code, message);
            let process = trace_context::process_span(STAGE, input);
            let publish =
                trace_context::send_span(STAGE, &process, &self.topics.rejected, rec.partition);
            publish.inject(&mut rec.headers);
            let d = self.producer.get().1.enqueue(&rec).await;
            publish.end_with(&d);
            process.end();
            Ok(ack(d?, self.topics.rejected.clone()))
        })
    }

    fn send_checkpoint<'a>(
        &'a self,
        p: i32,
        payload: &'a [u8],
        meta: CheckpointMeta<'a>,
    ) -> BoxFuture<'a, Result<Ack, Error>> {
        Box::pin(async move {
            let key = p.to_string();
            let q = checkpoint_partition(p, self.checkpoint_partitions);
            // A checkpoint's publication is its own trace (it covers many events).
            let publish = trace_context::send_span(
                STAGE,
                &trace_context::RecordSpan::none(),
                &self.topics.checkpoints,
                Some(q),
            );
            publish.set_attribute(|| KeyValue::new("audit.chain.partition", i64::from(p)));
            let mut headers = meta.headers();
            publish.inject(&mut headers);
            let d = send_with_headers(
                &self.producer.get().1,
                &self.topics.checkpoints,
                q,
                Some(key.as_bytes()),
                payload.into(),
                None,
                owned_headers(&headers),
            )
            .await;
            let d = match d {
                Ok(d) => d,
                Err(e) => {
                    publish.end_with(&Err::<(), _>(&e));
                    return Err(e);
                }
            };
            let topic = self.topics.checkpoints.clone();
            // Acknowledged: the partition's newest checkpoint is this one (its age on the
            // dashboards is `time() - audit_chainer_checkpoint_timestamp_seconds`).
            Ok(Box::pin(async move {
                let r = await_delivery(d, &topic).await.map(|_| ());
                publish.end_with(&r);
                if r.is_ok() {
                    metrics::gauge!(
                        crate::metrics::CHECKPOINT_TIMESTAMP,
                        "partition" => p.to_string()
                    )
                    .set(now_us() as f64 / 1e6);
                }
                r
            }) as Ack)
        })
    }

    fn store_offset(&self, p: i32, next: i64) {
        store_next_offset(&self.consumer, &self.topics.enriched, p, next);
    }

    fn producer_generation(&self) -> u64 {
        self.producer.get().0
    }

    fn delivery_failed(&self, generation: u64) {
        self.producer.replace(generation);
    }
}

fn ack(d: PendingDelivery, topic: String) -> Ack {
    Box::pin(async move { await_delivery(d, &topic).await.map(|_| ()) })
}

/// `consumer.seek` off the runtime (it may wait up to [`SEEK_TIMEOUT`]).
pub(crate) async fn seek_blocking(
    consumer: &Arc<AuditConsumer>,
    topic: &str,
    p: i32,
    to: i64,
) -> Result<Result<(), KafkaError>, Error> {
    let consumer = consumer.clone();
    let t = topic.to_owned();
    let res =
        tokio::task::spawn_blocking(move || consumer.seek(&t, p, Offset::Offset(to), SEEK_TIMEOUT))
            .await
            .map_err(|e| RuntimeError::Task {
                task: "seek".into(),
                message: e.to_string(),
            })?;
    Ok(res)
}

/// Checkpoints of chain partition `p` go to one fixed partition of the checkpoints topic, so
/// recovery reads exactly one partition's tail.
pub fn checkpoint_partition(p: i32, checkpoint_partitions: i32) -> i32 {
    p.rem_euclid(checkpoint_partitions.max(1))
}

/// Enqueues a record to an explicit partition. The record timestamp is the input's, so a
/// chained record is byte-identical whichever instance writes it (value, key *and* timestamp).
pub(crate) async fn send(
    producer: &Producer,
    topic: &str,
    partition: i32,
    key: Option<&[u8]>,
    payload: &[u8],
    timestamp_ms: Option<i64>,
) -> Result<PendingDelivery, Error> {
    send_with_headers(
        producer,
        topic,
        partition,
        key,
        payload.into(),
        timestamp_ms,
        None,
    )
    .await
}

/// The headers a chained record carries: `publish`'s trace context while tracing is on, else
/// the input's own `traceparent` / `tracestate` unchanged (so a producer's trace id still
/// reaches the sinks' readers).
fn trace_headers(
    publish: &trace_context::RecordSpan,
    input: &InputRecord,
) -> Option<rdkafka::message::OwnedHeaders> {
    let mut headers = Vec::new();
    if publish.context().is_some() {
        publish.inject(&mut headers);
    } else {
        for name in [trace_context::TRACEPARENT, trace_context::TRACESTATE] {
            if let Some(v) = input.header(name) {
                headers.push((name.to_owned(), v.to_vec()));
            }
        }
    }
    owned_headers(&headers)
}

pub(crate) fn owned_headers(
    headers: &[(String, Vec<u8>)],
) -> Option<rdkafka::message::OwnedHeaders> {
    if headers.is_empty() {
        return None;
    }
    let mut h = rdkafka::message::OwnedHeaders::new_with_capacity(headers.len());
    for (k, v) in headers {
        h = h.insert(rdkafka::message::Header {
            key: k,
            value: Some(v),
        });
    }
    Some(h)
}

/// [`send`] with record headers (trace context).
#[allow(clippy::too_many_arguments)]
pub(crate) async fn send_with_headers(
    producer: &Producer,
    topic: &str,
    partition: i32,
    key: Option<&[u8]>,
    payload: Cow<'_, [u8]>,
    timestamp_ms: Option<i64>,
    headers: Option<rdkafka::message::OwnedHeaders>,
) -> Result<PendingDelivery, Error> {
    // Through the producer's send gate (unless transactional): see worker_runtime's gate.
    Ok(producer
        .enqueue_parts(SendParts {
            topic,
            partition: Some(partition),
            key,
            payload: Some(payload),
            headers,
            timestamp_ms,
        })
        .await?)
}

pub(crate) fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}
