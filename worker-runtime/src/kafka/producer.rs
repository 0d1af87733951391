//! An idempotent, acks=all producer. Delivery futures resolve only when the broker holds the
//! record durably, which is what lets a worker store its input offset.
//!
//! The delivery deadline is ours, not librdkafka's. When librdkafka times a record out
//! (`message.timeout.ms`) its idempotent producer bumps its producer epoch *locally* (KIP-360,
//! `rd_kafka_idemp_drain_done`) and goes on sending the records still queued under the new
//! epoch. Brokers that do not implement that bump reject or, in tansu 0.6's case, panic in the
//! storage task and stop serving altogether (docs/local-stack.md). So librdkafka's timeout is
//! infinite and [`PendingDelivery`] fails a record after the configured `message.timeout.ms`
//! itself; the worker then drops this producer (which purges whatever it still holds) and
//! makes a fresh one, so no record is ever sent under an epoch the broker did not hand out.
//!
//! Records go through a send gate ([`super::gate`]) unless the producer is transactional: a
//! partition's records wait in the gate while a wave of them is unacknowledged, instead of in
//! librdkafka's queue, where waiting made its broker thread spin. With the gate doing the
//! batching under load, `linger.ms` is 5 ms (50 without it).

use super::ack_producer::{AckFuture, AckProducer};
use super::gate::{empty_message, Gate, GatedRecord, Refused, WaveLimits};
pub use super::gate::{GateStats, HELD_METRIC};
use super::record::OutputRecord;
use super::KafkaArgs;
use crate::error::RuntimeError;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::OwnedHeaders;
use rdkafka::producer::future_producer::OwnedDeliveryResult;
use rdkafka::producer::{FutureRecord, Producer as _};
use std::borrow::Cow;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::{Instant, Sleep};

/// `linger.ms` of a producer with the send gate (it batches while a wave is in flight).
pub const GATED_LINGER_MS: &str = "5";

/// Records of a non-transactional producer go through the send gate: a transaction's commit
/// flushes librdkafka's queue, and records still held in the gate would miss it.
fn gated(cfg: &rdkafka::ClientConfig) -> bool {
    cfg.get("transactional.id")
        .is_none_or(|v| v.trim().is_empty())
}

/// librdkafka's default `message.timeout.ms`; long enough to ride out a broker restart.
pub const DEFAULT_DELIVERY_TIMEOUT: Duration = Duration::from_secs(300);

/// Where a record landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivered {
    pub partition: i32,
    pub offset: i64,
}

#[derive(Clone)]
pub struct Producer {
    inner: AckProducer,
    /// The settings it was made with, to make a fresh one after a fatal error ([`Self::recreate`]).
    /// Shared: a clone of the producer must not copy the settings' map (the chainer takes a
    /// clone per record from its `ProducerSlot`; copying ~20 strings each time was 3.5% of its
    /// CPU under `perf`).
    config: Arc<rdkafka::ClientConfig>,
    /// How long a record may wait for its acknowledgement before it counts as failed.
    delivery_timeout: Duration,
    /// `None`: records go to librdkafka directly (transactional, or made outside a runtime).
    gate: Option<Gate>,
}

impl std::fmt::Debug for Producer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Producer").finish_non_exhaustive()
    }
}

impl Producer {
    pub fn new(args: &KafkaArgs, client_id: &str) -> Result<Self, RuntimeError> {
        let (config, delivery_timeout) = Self::settings(args, client_id);
        Self::from_config(config, delivery_timeout)
    }

    fn from_config(
        config: rdkafka::ClientConfig,
        delivery_timeout: Duration,
    ) -> Result<Self, RuntimeError> {
        let inner = AckProducer::from_config(&config)
            .map_err(|e| RuntimeError::kafka("creating producer", e))?;
        let gate = match tokio::runtime::Handle::try_current() {
            Ok(handle) if gated(&config) => Some(Gate::start(
                inner.clone(),
                WaveLimits::from_config(&config),
                &handle,
            )),
            _ => None,
        };
        Ok(Producer {
            inner,
            config: Arc::new(config),
            delivery_timeout,
            gate,
        })
    }

    /// What the send gate did so far; `None` when records bypass it (transactional).
    pub fn gate_stats(&self) -> Option<GateStats> {
        self.gate.as_ref().map(Gate::stats)
    }

    /// How long a record may wait for its acknowledgement (the configured `message.timeout.ms`).
    pub fn delivery_timeout(&self) -> Duration {
        self.delivery_timeout
    }

    /// Puts this producer's delivery deadline on a future from [`Self::inner`]'s `send_result`.
    pub fn track(&self, delivery: AckFuture) -> PendingDelivery {
        PendingDelivery::new(delivery, self.delivery_timeout)
    }

    /// The fatal error librdkafka raised on this producer, if any: an idempotent producer that
    /// can no longer guarantee order or no-duplicates (e.g. after a broker lost its producer
    /// state in a restart) refuses every further record, and only a new producer can go on.
    pub fn fatal_error(&self) -> Option<(RDKafkaErrorCode, String)> {
        self.inner.client().fatal_error()
    }

    /// A new producer with the same settings (a new producer id, so a fresh idempotence
    /// session). Clones of `self` keep the old one.
    pub fn recreate(&self) -> Result<Self, RuntimeError> {
        Self::from_config((*self.config).clone(), self.delivery_timeout)
    }

    /// The producer settings every worker uses (benchmarks measure their baseline with them).
    pub fn client_config(args: &KafkaArgs, client_id: &str) -> rdkafka::ClientConfig {
        Self::settings(args, client_id).0
    }

    /// The librdkafka settings and our delivery deadline. A `message.timeout.ms` the user sets
    /// becomes the deadline; librdkafka's own is made infinite for the idempotent producer (see
    /// the module docs). A transactional producer keeps it: librdkafka requires it to be at
    /// most `transaction.timeout.ms`, and its epoch bumps go through the coordinator.
    pub fn settings(args: &KafkaArgs, client_id: &str) -> (rdkafka::ClientConfig, Duration) {
        let mut cfg = args.client_config(client_id);
        // Idempotence: broker-side dedup of librdkafka's own retries and per-partition order.
        cfg.set("enable.idempotence", "true")
            .set("acks", "all")
            // 50 ms, not 5 (issue 10): an idempotent producer has at most 5 requests in flight
            // per partition, and while they wait for acks librdkafka's broker thread wakes
            // again at once for every partition whose oldest queued record is older than
            // linger.ms (`rd_kafka_msgq_allow_wakeup_at`), so with 5 ms and a broker slower
            // than ~25 ms per request it spun in poll()/clock_gettime (perf: 60% of ingest's
            // CPU). Bigger batches also mean fewer requests for the broker. Cost: up to 50 ms
            // per hop at low load, and a process's rate is bounded by about its in-flight
            // bound / (linger.ms + ack time), e.g. 1000 / 0.1 s. Without transactions the send
            // gate keeps records out of librdkafka's queue while a wave is unacknowledged, so
            // the spin cannot start and 5 ms is enough (set below, after the user's).
            .set("linger.ms", "50")
            .set("compression.type", "lz4")
            // Long enough to ride out a broker restart; a delivery that still fails is not
            // stored, and the pipeline re-reads it (`pipeline::run_with_liveness`).
            .set("message.timeout.ms", "300000");
        // User properties win over ours.
        let mut user_linger = false;
        for kv in &args.properties {
            if let Some((k, v)) = kv.split_once('=') {
                let k = k.trim();
                user_linger |= k == "linger.ms" || k == "queue.buffering.max.ms";
                cfg.set(k, v.trim());
            }
        }
        if gated(&cfg) && !user_linger {
            cfg.set("linger.ms", GATED_LINGER_MS);
        }
        let deadline = cfg
            .get("message.timeout.ms")
            .and_then(|v| v.parse::<u64>().ok())
            .filter(|ms| *ms > 0)
            .map(Duration::from_millis)
            .unwrap_or(DEFAULT_DELIVERY_TIMEOUT);
        let idempotent = cfg.get("enable.idempotence") == Some("true");
        if idempotent && cfg.get("transactional.id").is_none() {
            cfg.set("message.timeout.ms", "0");
        }
        (cfg, deadline)
    }

    /// Enqueues `record`; waits (without blocking the runtime) while the local queue is full.
    /// The returned future resolves when the broker acknowledged the record, or fails once the
    /// delivery deadline passed.
    pub async fn enqueue(&self, record: &OutputRecord) -> Result<PendingDelivery, RuntimeError> {
        self.enqueue_parts(SendParts {
            topic: &record.topic,
            partition: record.partition,
            key: record.key.as_deref(),
            payload: record.payload.as_deref().map(Cow::Borrowed),
            headers: record.owned_headers(),
            timestamp_ms: None,
        })
        .await
    }

    /// [`Self::enqueue`] of a record the caller is done with: its topic's name and value move
    /// into the send gate instead of being copied there (a gated record must outlive the
    /// caller's borrow).
    pub async fn enqueue_record(
        &self,
        record: OutputRecord,
    ) -> Result<PendingDelivery, RuntimeError> {
        let headers = record.owned_headers();
        if let Some(gate) = &self.gate {
            let rec = GatedRecord {
                topic: record.topic,
                partition: record.partition,
                key: record.key,
                payload: record.payload,
                headers,
                timestamp_ms: None,
            };
            return self.send_gated(gate, rec).await;
        }
        self.enqueue_parts(SendParts {
            topic: &record.topic,
            partition: record.partition,
            key: record.key.as_deref(),
            payload: record.payload.map(Cow::Owned),
            headers,
            timestamp_ms: None,
        })
        .await
    }

    async fn send_gated(
        &self,
        gate: &Gate,
        rec: GatedRecord,
    ) -> Result<PendingDelivery, RuntimeError> {
        match gate.send(rec).await {
            Ok(rx) => Ok(PendingDelivery::gated(rx, self.delivery_timeout)),
            Err(Refused(topic)) => Err(RuntimeError::kafka(
                format!("enqueueing a record for {topic}"),
                KafkaError::Canceled,
            )),
        }
    }

    /// [`Self::enqueue`] from borrowed parts, with librdkafka headers and a timestamp.
    pub async fn enqueue_parts(
        &self,
        parts: SendParts<'_>,
    ) -> Result<PendingDelivery, RuntimeError> {
        if let Some(gate) = &self.gate {
            let rec = GatedRecord {
                topic: parts.topic.to_owned(),
                partition: parts.partition,
                key: parts.key.map(<[u8]>::to_vec),
                payload: parts.payload.map(Cow::into_owned),
                headers: parts.headers,
                timestamp_ms: parts.timestamp_ms,
            };
            return self.send_gated(gate, rec).await;
        }
        loop {
            // Headers are cloned per attempt: a full queue hands the record back.
            let fr = future_record(
                parts.topic,
                parts.partition,
                parts.key,
                parts.payload.as_deref(),
                parts.headers.as_ref(),
                parts.timestamp_ms,
            );
            match self.inner.send_result(fr) {
                Ok(delivery) => return Ok(self.track(delivery)),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Err((e, _)) => {
                    return Err(RuntimeError::kafka(
                        format!("enqueueing a record for {}", parts.topic),
                        e,
                    ))
                }
            }
        }
    }

    /// Enqueues and waits for the broker's acknowledgement.
    pub async fn send(&self, record: &OutputRecord) -> Result<Delivered, RuntimeError> {
        let delivery = self.enqueue(record).await?;
        await_delivery(delivery, &record.topic).await
    }

    /// Waits until every enqueued record is delivered (or `timeout` passes).
    pub async fn flush(&self, timeout: Duration) -> Result<(), RuntimeError> {
        let start = Instant::now();
        if let Some(gate) = &self.gate {
            match tokio::time::timeout(timeout, gate.idle()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => {
                    return Err(RuntimeError::kafka(
                        "flushing producer",
                        KafkaError::Canceled,
                    ))
                }
                Err(_) => {
                    return Err(RuntimeError::kafka(
                        "flushing producer",
                        KafkaError::Flush(RDKafkaErrorCode::OperationTimedOut),
                    ))
                }
            }
        }
        let timeout = timeout.saturating_sub(start.elapsed());
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || inner.flush(timeout))
            .await
            .map_err(|e| RuntimeError::Task {
                task: "producer flush".into(),
                message: e.to_string(),
            })?
            .map_err(|e| RuntimeError::kafka("flushing producer", e))
    }

    pub fn inner(&self) -> &AckProducer {
        &self.inner
    }
}

/// A record's acknowledgement, failed with `MessageTimedOut` once the producer's delivery
/// deadline passed. Resolves like rdkafka's `DeliveryFuture`.
#[must_use = "a delivery does nothing unless awaited"]
pub struct PendingDelivery {
    inner: Ack,
    deadline: Instant,
    /// Armed at the first poll that finds the record unacknowledged (most are by then, and a
    /// timer per record is not free).
    timer: Option<Pin<Box<Sleep>>>,
}

impl std::fmt::Debug for PendingDelivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingDelivery")
            .field("deadline", &self.deadline)
            .finish_non_exhaustive()
    }
}

/// Where the acknowledgement comes from: librdkafka's delivery callback either way, for a gated
/// record on the oneshot its sender handed the gate.
enum Ack {
    Direct(AckFuture),
    Gated(futures::channel::oneshot::Receiver<OwnedDeliveryResult>),
}

impl PendingDelivery {
    pub fn new(inner: AckFuture, timeout: Duration) -> Self {
        PendingDelivery {
            inner: Ack::Direct(inner),
            deadline: Instant::now() + timeout,
            timer: None,
        }
    }

    fn gated(
        rx: futures::channel::oneshot::Receiver<OwnedDeliveryResult>,
        timeout: Duration,
    ) -> Self {
        PendingDelivery {
            inner: Ack::Gated(rx),
            deadline: Instant::now() + timeout,
            timer: None,
        }
    }
}

/// librdkafka's form of a record (the gate's submissions and the direct path build it alike).
pub(crate) fn future_record<'a>(
    topic: &'a str,
    partition: Option<i32>,
    key: Option<&'a [u8]>,
    payload: Option<&'a [u8]>,
    headers: Option<&OwnedHeaders>,
    timestamp_ms: Option<i64>,
) -> FutureRecord<'a, [u8], [u8]> {
    let mut fr: FutureRecord<'a, [u8], [u8]> = FutureRecord::to(topic);
    if let Some(k) = key {
        fr = fr.key(k);
    }
    if let Some(p) = payload {
        fr = fr.payload(p);
    }
    if let Some(p) = partition {
        fr = fr.partition(p);
    }
    if let Some(h) = headers {
        fr = fr.headers(h.clone());
    }
    if let Some(ts) = timestamp_ms {
        fr = fr.timestamp(ts);
    }
    fr
}

/// A record to [`Producer::enqueue_parts`].
#[derive(Debug, Default)]
pub struct SendParts<'a> {
    pub topic: &'a str,
    /// `None` lets the partitioner choose from the key.
    pub partition: Option<i32>,
    pub key: Option<&'a [u8]>,
    /// Owned when the caller is done with it: the send gate then takes it without a copy.
    pub payload: Option<Cow<'a, [u8]>>,
    pub headers: Option<OwnedHeaders>,
    /// The record's timestamp (CreateTime), milliseconds; `None`: now.
    pub timestamp_ms: Option<i64>,
}

impl Future for PendingDelivery {
    type Output = <AckFuture as Future>::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        let acked = match &mut this.inner {
            Ack::Direct(d) => Pin::new(d).poll(cx),
            Ack::Gated(rx) => Pin::new(rx).poll(cx),
        };
        if let Poll::Ready(r) = acked {
            return Poll::Ready(r);
        }
        let deadline = this.deadline;
        let timer = this
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Ok(Err((
                KafkaError::MessageProduction(RDKafkaErrorCode::MessageTimedOut),
                empty_message(),
            )))),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// Resolves a delivery future into where the record landed, or the broker's error.
pub async fn await_delivery(
    delivery: impl Future<Output = <AckFuture as Future>::Output>,
    topic: &str,
) -> Result<Delivered, RuntimeError> {
    match delivery.await {
        Ok(Ok(d)) => Ok(Delivered {
            partition: d.partition,
            offset: d.offset,
        }),
        Ok(Err((e, _))) => Err(RuntimeError::kafka(format!("delivering to {topic}"), e)),
        Err(_) => Err(RuntimeError::kafka(
            format!("delivering to {topic}"),
            KafkaError::Canceled,
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(props: &[&str]) -> KafkaArgs {
        KafkaArgs {
            // Nothing listens there: records are never acknowledged.
            brokers: "127.0.0.1:1".into(),
            properties: props.iter().map(|s| s.to_string()).collect(),
            ..KafkaArgs::default()
        }
    }

    #[test]
    fn librdkafka_never_times_records_out_and_the_users_timeout_becomes_our_deadline() {
        let (cfg, deadline) = Producer::settings(&args(&[]), "t");
        assert_eq!(cfg.get("message.timeout.ms"), Some("0"));
        assert_eq!(deadline, DEFAULT_DELIVERY_TIMEOUT);

        let (cfg, deadline) = Producer::settings(&args(&["message.timeout.ms=1500"]), "t");
        assert_eq!(cfg.get("message.timeout.ms"), Some("0"));
        assert_eq!(deadline, Duration::from_millis(1500));
    }

    #[test]
    fn producers_whose_epoch_bumps_go_through_the_broker_keep_librdkafkas_timeout() {
        // Transactional: librdkafka wants message.timeout.ms <= transaction.timeout.ms.
        let (cfg, _) = Producer::settings(
            &args(&["transactional.id=x", "message.timeout.ms=5000"]),
            "t",
        );
        assert_eq!(cfg.get("message.timeout.ms"), Some("5000"));
        // Not idempotent: no epoch at all.
        let (cfg, _) = Producer::settings(
            &args(&["enable.idempotence=false", "message.timeout.ms=5000"]),
            "t",
        );
        assert_eq!(cfg.get("message.timeout.ms"), Some("5000"));
    }

    #[tokio::test(start_paused = true)]
    async fn an_unacknowledged_record_fails_at_the_deadline_not_before() {
        let p = Producer::new(&args(&["message.timeout.ms=60000"]), "t").expect("producer");
        let rec = OutputRecord {
            topic: "t".into(),
            partition: Some(0),
            key: None,
            payload: Some(b"x".to_vec()),
            headers: Vec::new(),
        };
        let mut d = p.enqueue(&rec).await.expect("enqueue");
        // Paused clock: the runtime jumps to the next timer when idle, so this waits 59 s of
        // virtual time without sleeping.
        let early = tokio::time::timeout(Duration::from_secs(59), &mut d).await;
        assert!(early.is_err(), "resolved before the deadline: {early:?}");
        let err = await_delivery(d, "t")
            .await
            .expect_err("no broker acknowledged it");
        assert!(
            err.to_string().contains("timed out"),
            "expected a message timeout, got {err}"
        );
    }
}
