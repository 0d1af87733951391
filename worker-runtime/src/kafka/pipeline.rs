//! The at-least-once consume → transform → produce loop used by stateless stages (ingest's
//! Kafka path, enrich).
//!
//! For each input record the processor returns the records to produce (its outputs, or a
//! dead-letter record). They are enqueued on the idempotent producer at once, and the input
//! offset is stored only after the broker acknowledged *all* of them *and* every earlier input
//! offset of the partition ([`OffsetTracker`]). A delivery that fails even after librdkafka's
//! retries stops the worker without storing the offset, so the input is redelivered on restart:
//! duplicates are possible (the chainer removes them by event id), loss is not.
//!
//! In-flight records are bounded, so a slow broker slows consumption instead of growing memory.

use super::consumer::{commit_stored, store_next_offset, AuditConsumer, RebalanceState};
use super::offsets::{OffsetTracker, TopicPartition};
use super::producer::{await_delivery, Producer};
use super::record::{InputRecord, OutputRecord};
use crate::error::RuntimeError;
use crate::health::Readiness;
use crate::shutdown::Shutdown;
use futures::stream::FuturesUnordered;
use futures::StreamExt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

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
}

type Completion = (TopicPartition, i64, u64, Result<(), RuntimeError>);

/// Runs until shutdown (then drains and commits) or until a fatal error.
pub async fn run<P: Processor>(
    consumer: Arc<AuditConsumer>,
    rebalance: Arc<RebalanceState>,
    producer: Producer,
    processor: Arc<P>,
    settings: PipelineSettings,
    ready: Readiness,
    shutdown: Shutdown,
) -> Result<(), RuntimeError> {
    let mut tracker = OffsetTracker::new();
    let mut in_flight = FuturesUnordered::new();
    let stage = settings.stage;
    ready.set(true);
    let result: Result<(), RuntimeError> = loop {
        tokio::select! {
            biased;
            Some(done) = in_flight.next(), if !in_flight.is_empty() => {
                if let Err(e) = complete(&consumer, &mut tracker, done, stage) {
                    break Err(e);
                }
            }
            _ = shutdown.cancelled() => break Ok(()),
            msg = consumer.recv(), if in_flight.len() < settings.max_in_flight => {
                let input = match msg {
                    Ok(m) => InputRecord::from_message(&m),
                    Err(e) => {
                        // librdkafka reports transient broker/network errors here and keeps
                        // retrying by itself; only fatal errors end the loop.
                        if is_fatal(&e) {
                            break Err(RuntimeError::kafka("consuming", e));
                        }
                        tracing::warn!(stage, error = %e, "consumer error (retrying)");
                        continue;
                    }
                };
                let tp = (input.topic.clone(), input.partition);
                let Some(epoch) = rebalance.epoch(&input.topic, input.partition) else {
                    // A record of a partition revoked since it was fetched: its new owner
                    // will read it again.
                    continue;
                };
                tracker.begin(&tp, input.offset, epoch);
                let outputs = match processor.process(&input).await {
                    Ok(o) => o,
                    Err(e) => break Err(e),
                };
                let mut deliveries = Vec::with_capacity(outputs.len());
                let mut enqueue_error = None;
                for out in &outputs {
                    match producer.enqueue(out).await {
                        Ok(d) => deliveries.push((d, out.topic.clone())),
                        Err(e) => { enqueue_error = Some(e); break; }
                    }
                }
                if let Some(e) = enqueue_error {
                    break Err(e);
                }
                metrics::counter!("audit_records_in_total", "stage" => stage).increment(1);
                let offset = input.offset;
                in_flight.push(async move {
                    let mut result = Ok(());
                    for (d, topic) in deliveries {
                        if let Err(e) = await_delivery(d, &topic).await {
                            result = Err(e);
                            break;
                        }
                    }
                    (tp, offset, epoch, result)
                });
            }
        }
    };
    ready.set(false);
    // Drain: what is already enqueued gets its chance to be acknowledged and stored.
    let drain = async {
        while let Some(done) = in_flight.next().await {
            if let Err(e) = complete(&consumer, &mut tracker, done, stage) {
                tracing::warn!(stage, error = %e, "delivery failed while draining; its input will be redelivered");
            }
        }
    };
    if tokio::time::timeout(settings.drain_timeout, drain)
        .await
        .is_err()
    {
        tracing::warn!(
            stage,
            "drain timed out; undelivered inputs will be redelivered"
        );
    }
    commit_stored(&consumer).await;
    result
}

fn complete(
    consumer: &AuditConsumer,
    tracker: &mut OffsetTracker,
    (tp, offset, epoch, result): Completion,
    stage: &'static str,
) -> Result<(), RuntimeError> {
    result?;
    metrics::counter!("audit_records_done_total", "stage" => stage).increment(1);
    if let Some(next) = tracker.complete(&tp, offset, epoch) {
        store_next_offset(consumer, &tp.0, tp.1, next);
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
