//! An idempotent, acks=all producer. Delivery futures resolve only when the broker holds the
//! record durably, which is what lets a worker store its input offset.

use super::record::OutputRecord;
use super::KafkaArgs;
use crate::error::RuntimeError;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer as _};
use std::time::Duration;

/// Where a record landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivered {
    pub partition: i32,
    pub offset: i64,
}

#[derive(Clone)]
pub struct Producer {
    inner: FutureProducer,
    /// The settings it was made with, to make a fresh one after a fatal error ([`Self::recreate`]).
    config: rdkafka::ClientConfig,
}

impl std::fmt::Debug for Producer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Producer").finish_non_exhaustive()
    }
}

impl Producer {
    pub fn new(args: &KafkaArgs, client_id: &str) -> Result<Self, RuntimeError> {
        let cfg = Self::client_config(args, client_id);
        Self::from_config(cfg)
    }

    fn from_config(config: rdkafka::ClientConfig) -> Result<Self, RuntimeError> {
        let inner: FutureProducer = config
            .create()
            .map_err(|e| RuntimeError::kafka("creating producer", e))?;
        Ok(Producer { inner, config })
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
        Self::from_config(self.config.clone())
    }

    /// The producer settings every worker uses (benchmarks measure their baseline with them).
    pub fn client_config(args: &KafkaArgs, client_id: &str) -> rdkafka::ClientConfig {
        let mut cfg = args.client_config(client_id);
        // Idempotence: broker-side dedup of librdkafka's own retries and per-partition order.
        cfg.set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "5")
            .set("compression.type", "lz4")
            // Long enough to ride out a broker restart; a delivery that still fails is not
            // stored, and the pipeline re-reads it (`pipeline::run_with_liveness`).
            .set("message.timeout.ms", "300000");
        // User properties win over ours.
        for kv in &args.properties {
            if let Some((k, v)) = kv.split_once('=') {
                cfg.set(k.trim(), v.trim());
            }
        }
        cfg
    }

    /// Enqueues `record`; waits (without blocking the runtime) while the local queue is full.
    /// The returned future resolves when the broker acknowledged the record.
    pub async fn enqueue(&self, record: &OutputRecord) -> Result<DeliveryFuture, RuntimeError> {
        loop {
            let mut fr: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(&record.topic);
            if let Some(k) = record.key.as_deref() {
                fr = fr.key(k);
            }
            if let Some(p) = record.payload.as_deref() {
                fr = fr.payload(p);
            }
            if let Some(p) = record.partition {
                fr = fr.partition(p);
            }
            if let Some(h) = record.owned_headers() {
                fr = fr.headers(h);
            }
            match self.inner.send_result(fr) {
                Ok(delivery) => return Ok(delivery),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Err((e, _)) => {
                    return Err(RuntimeError::kafka(
                        format!("enqueueing a record for {}", record.topic),
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
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || inner.flush(timeout))
            .await
            .map_err(|e| RuntimeError::Task {
                task: "producer flush".into(),
                message: e.to_string(),
            })?
            .map_err(|e| RuntimeError::kafka("flushing producer", e))
    }

    pub fn inner(&self) -> &FutureProducer {
        &self.inner
    }
}

/// Resolves a delivery future into where the record landed, or the broker's error.
pub async fn await_delivery(
    delivery: DeliveryFuture,
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
