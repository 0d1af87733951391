//! rdkafka's `FutureProducer`, polled without its busy wait.
//!
//! rdkafka's `FutureProducer` is a `ThreadedProducer` whose thread calls `BaseProducer::poll`
//! with 100 ms again and again. That `poll` loops until its deadline and hands librdkafka the
//! time left in whole milliseconds, truncated, so librdkafka's wait ends up to 1 ms before the
//! deadline and the rest of the call is a loop of zero-timeout polls (librdkafka fixed the same
//! truncation in its own threads: confluentinc/librdkafka#4684). That is about 1% of a core per
//! producer, idle or not: measured on every worker here, 0.17–0.18 s of CPU in 20 idle seconds,
//! most of an idle worker's CPU and ~1.3 µs per event at 7,000 events/s.
//!
//! [`AckProducer`] is the same `BaseProducer` with the same acknowledgements (a oneshot per
//! record, [`OwnedDeliveryResult`], as `FutureProducer` gives them), polled by a thread of its
//! own that waits [`POLL_WAIT`] per call: the spin is then at most 1 ms per [`POLL_WAIT`].
//! Acknowledgements wake the wait at once, so they are not delayed.
//!
//! Dropping the last clone purges what the producer still holds (queued and in flight, as
//! rdkafka's drop does: their acknowledgements fail) and tells the thread to stop; the thread
//! ends at its next wake, at most [`POLL_WAIT`] later, and destroys the client there, so a drop
//! never blocks the async runtime (rdkafka's joined its thread and flushed for up to 500 ms).

use futures::channel::oneshot;
use rdkafka::client::Client;
use rdkafka::consumer::ConsumerGroupMetadata;
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::message::{DeliveryResult, Message as _};
use rdkafka::producer::future_producer::{Delivery, OwnedDeliveryResult};
use rdkafka::producer::{
    BaseProducer, BaseRecord, FutureRecord, Producer, ProducerContext, PurgeConfig,
};
use rdkafka::util::Timeout;
use rdkafka::{ClientConfig, ClientContext, TopicPartitionList};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

/// How long the polling thread waits per call: an acknowledgement ends the wait at once, so this
/// only bounds how late the thread notices a drop.
pub const POLL_WAIT: Duration = Duration::from_secs(1);

/// Hands each record's delivery report to the oneshot the record was sent with.
#[derive(Debug, Clone, Copy, Default)]
pub struct AckContext;

impl ClientContext for AckContext {}

/// Where a record's acknowledgement goes: the oneshot its sender waits on and, for a record of
/// the send gate, the gate's notice that the record's lane has one record fewer in flight.
#[derive(Debug)]
pub struct AckReply {
    tx: oneshot::Sender<OwnedDeliveryResult>,
    notice: Option<AckNotice>,
}

/// Tells the send gate that a record of lane `lane` left librdkafka (acknowledged, failed or
/// dropped unreported), exactly once: when it is dropped. The delivery callback answers the
/// record's sender directly and then drops this, so an acknowledgement takes one hop to its
/// sender, not two through the gate's task.
#[derive(Debug)]
pub(crate) struct AckNotice {
    lane: usize,
    tx: Option<tokio::sync::mpsc::UnboundedSender<usize>>,
}

impl AckNotice {
    pub(crate) fn new(lane: usize, tx: tokio::sync::mpsc::UnboundedSender<usize>) -> Self {
        AckNotice { lane, tx: Some(tx) }
    }
}

impl AckReply {
    /// A reply that answers `tx` and then gives the gate its `notice`.
    pub(crate) fn noticed(
        tx: oneshot::Sender<OwnedDeliveryResult>,
        notice: AckNotice,
    ) -> Box<AckReply> {
        Box::new(AckReply {
            tx,
            notice: Some(notice),
        })
    }

    /// For a record librdkafka refused: its sender gets `error`, and the gate no notice (the
    /// record was never in flight).
    pub(crate) fn refuse(self, error: OwnedDeliveryResult) {
        let AckReply { tx, notice } = self;
        if let Some(mut notice) = notice {
            notice.tx = None;
        }
        let _ = tx.send(error);
    }
}

impl Drop for AckNotice {
    fn drop(&mut self) {
        if let Some(tx) = self.tx.take() {
            // The gate is gone when its producer is being dropped: nobody counts any more.
            let _ = tx.send(self.lane);
        }
    }
}

impl ProducerContext for AckContext {
    type DeliveryOpaque = Box<AckReply>;

    fn delivery(&self, result: &DeliveryResult<'_>, reply: Self::DeliveryOpaque) {
        let owned = match result {
            Ok(m) => Ok(Delivery {
                partition: m.partition(),
                offset: m.offset(),
                timestamp: m.timestamp(),
            }),
            Err((e, m)) => Err((e.clone(), m.detach())),
        };
        let AckReply { tx, notice } = *reply;
        // The receiver is gone when nobody waits for this record any more (a purge at drop).
        let _ = tx.send(owned);
        // Only after the sender has its answer: the gate's flush (`idle`) then implies it.
        drop(notice);
    }
}

/// An idempotent or transactional producer whose records resolve to [`AckFuture`]s.
#[derive(Clone)]
pub struct AckProducer {
    shared: Arc<Shared>,
}

struct Shared {
    base: Arc<BaseProducer<AckContext>>,
    stop: Arc<AtomicBool>,
}

impl Drop for Shared {
    fn drop(&mut self) {
        // Nothing this producer holds is sent after it is dropped (a replaced idempotent
        // producer must not go on under its old epoch); the polling thread serves the
        // purged records' failed acknowledgements, then ends and destroys the client.
        self.base.purge(PurgeConfig::default().queue().inflight());
        self.stop.store(true, Ordering::Release);
    }
}

impl std::fmt::Debug for AckProducer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AckProducer").finish_non_exhaustive()
    }
}

impl AckProducer {
    /// A producer with `config`, and its polling thread.
    pub fn from_config(config: &ClientConfig) -> KafkaResult<Self> {
        let base: Arc<BaseProducer<AckContext>> = Arc::new(config.create_with_context(AckContext)?);
        let stop = Arc::new(AtomicBool::new(false));
        let polled = base.clone();
        let stopped = stop.clone();
        std::thread::Builder::new()
            .name("producer-poll".into())
            .spawn(move || {
                while !stopped.load(Ordering::Acquire) {
                    polled.poll(POLL_WAIT);
                }
            })
            .map_err(|e| KafkaError::ClientCreation(format!("producer polling thread: {e}")))?;
        Ok(AckProducer {
            shared: Arc::new(Shared { base, stop }),
        })
    }

    /// Enqueues `record`; its future resolves with the broker's acknowledgement (or the error).
    /// A full queue hands the record back, as `FutureProducer::send_result` does.
    #[allow(clippy::result_large_err)]
    pub fn send_result<'a, K, P>(
        &self,
        record: FutureRecord<'a, K, P>,
    ) -> Result<AckFuture, (KafkaError, FutureRecord<'a, K, P>)>
    where
        K: rdkafka::message::ToBytes + ?Sized,
        P: rdkafka::message::ToBytes + ?Sized,
    {
        let (tx, rx) = oneshot::channel();
        let reply = Box::new(AckReply { tx, notice: None });
        match self.send_with(record, reply) {
            Ok(()) => Ok(AckFuture { rx }),
            Err((e, back, _)) => Err((e, back)),
        }
    }

    /// Enqueues `record`, its acknowledgement going to `reply` (the send gate's records: see
    /// [`AckReply::noticed`]). A refused record hands `reply` back with it, for another try or
    /// for [`AckReply::refuse`].
    #[allow(clippy::result_large_err, clippy::type_complexity)]
    pub(crate) fn send_with<'a, K, P>(
        &self,
        record: FutureRecord<'a, K, P>,
        reply: Box<AckReply>,
    ) -> Result<(), (KafkaError, FutureRecord<'a, K, P>, Box<AckReply>)>
    where
        K: rdkafka::message::ToBytes + ?Sized,
        P: rdkafka::message::ToBytes + ?Sized,
    {
        let base = BaseRecord {
            topic: record.topic,
            partition: record.partition,
            payload: record.payload,
            key: record.key,
            timestamp: record.timestamp,
            headers: record.headers,
            delivery_opaque: reply,
        };
        match self.shared.base.send(base) {
            Ok(()) => Ok(()),
            Err((e, back)) => Err((
                e,
                FutureRecord {
                    topic: back.topic,
                    partition: back.partition,
                    payload: back.payload,
                    key: back.key,
                    timestamp: back.timestamp,
                    headers: back.headers,
                },
                back.delivery_opaque,
            )),
        }
    }
}

impl Producer<AckContext> for AckProducer {
    fn client(&self) -> &Client<AckContext> {
        self.shared.base.client()
    }

    fn in_flight_count(&self) -> i32 {
        self.shared.base.in_flight_count()
    }

    fn flush<T: Into<Timeout>>(&self, timeout: T) -> KafkaResult<()> {
        self.shared.base.flush(timeout)
    }

    fn purge(&self, flags: PurgeConfig) {
        self.shared.base.purge(flags)
    }

    fn init_transactions<T: Into<Timeout>>(&self, timeout: T) -> KafkaResult<()> {
        self.shared.base.init_transactions(timeout)
    }

    fn begin_transaction(&self) -> KafkaResult<()> {
        self.shared.base.begin_transaction()
    }

    fn send_offsets_to_transaction<T: Into<Timeout>>(
        &self,
        offsets: &TopicPartitionList,
        cgm: &ConsumerGroupMetadata,
        timeout: T,
    ) -> KafkaResult<()> {
        self.shared
            .base
            .send_offsets_to_transaction(offsets, cgm, timeout)
    }

    fn commit_transaction<T: Into<Timeout>>(&self, timeout: T) -> KafkaResult<()> {
        self.shared.base.commit_transaction(timeout)
    }

    fn abort_transaction<T: Into<Timeout>>(&self, timeout: T) -> KafkaResult<()> {
        self.shared.base.abort_transaction(timeout)
    }
}

/// A record's acknowledgement: resolves like rdkafka's `DeliveryFuture` (`Err(Canceled)` when
/// the producer went away without a report).
#[must_use = "an acknowledgement does nothing unless awaited"]
#[derive(Debug)]
pub struct AckFuture {
    rx: oneshot::Receiver<OwnedDeliveryResult>,
}

impl Future for AckFuture {
    type Output = Result<OwnedDeliveryResult, oneshot::Canceled>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.rx).poll(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::types::RDKafkaErrorCode;
    use std::time::Instant;

    fn unreachable_broker() -> ClientConfig {
        let mut cfg = ClientConfig::new();
        // Nothing listens there: records are never acknowledged.
        cfg.set("bootstrap.servers", "127.0.0.1:1")
            .set("message.timeout.ms", "0");
        cfg
    }

    /// Waits (bounded) until `done` holds.
    async fn until(what: &str, done: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !done() {
            assert!(Instant::now() < deadline, "timed out waiting until {what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn dropping_the_last_clone_fails_what_it_holds_and_ends_the_polling_thread() {
        let producer = AckProducer::from_config(&unreachable_broker()).expect("producer");
        let client = Arc::downgrade(&producer.shared.base);
        let ack = producer
            .send_result(FutureRecord::<[u8], [u8]>::to("t").payload(b"x".as_slice()))
            .expect("enqueued");
        let clone = producer.clone();
        drop(producer);
        assert!(client.upgrade().is_some(), "a clone still holds it");
        drop(clone);
        match ack.await {
            Ok(Err((KafkaError::MessageProduction(code), m))) => {
                assert_eq!(code, RDKafkaErrorCode::PurgeQueue);
                assert_eq!(m.payload(), Some(b"x".as_slice()), "the record comes back");
            }
            other => panic!("expected the purge's failure, got {other:?}"),
        }
        // The thread notices within POLL_WAIT and destroys the client.
        until("the polling thread let go of the client", || {
            client.upgrade().is_none()
        })
        .await;
    }

    #[tokio::test]
    async fn a_full_queue_hands_the_record_back() {
        let mut cfg = unreachable_broker();
        cfg.set("queue.buffering.max.messages", "1");
        let producer = AckProducer::from_config(&cfg).expect("producer");
        let _first = producer
            .send_result(FutureRecord::<[u8], [u8]>::to("t").payload(b"1".as_slice()))
            .expect("room for one");
        match producer.send_result(
            FutureRecord::<[u8], [u8]>::to("t")
                .payload(b"2".as_slice())
                .key(b"k".as_slice())
                .partition(3),
        ) {
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                assert_eq!(back.topic, "t");
                assert_eq!(back.payload, Some(b"2".as_slice()));
                assert_eq!(back.key, Some(b"k".as_slice()));
                assert_eq!(back.partition, Some(3));
            }
            other => panic!("expected QueueFull with the record, got {:?}", other.err()),
        }
    }

    #[tokio::test]
    async fn a_gated_record_notices_its_lane_once_and_a_refused_one_never() {
        let mut cfg = unreachable_broker();
        cfg.set("queue.buffering.max.messages", "1");
        let producer = AckProducer::from_config(&cfg).expect("producer");
        let (notices, mut noticed) = tokio::sync::mpsc::unbounded_channel();
        let (tx, first) = oneshot::channel();
        let reply = AckReply::noticed(tx, AckNotice::new(7, notices.clone()));
        producer
            .send_with(
                FutureRecord::<[u8], [u8]>::to("t").payload(b"1".as_slice()),
                reply,
            )
            .expect("room for one");
        // The queue is full: the second comes back with its reply, which is refused.
        let (tx, second) = oneshot::channel();
        let reply = AckReply::noticed(tx, AckNotice::new(8, notices.clone()));
        let back = match producer.send_with(
            FutureRecord::<[u8], [u8]>::to("t").payload(b"2".as_slice()),
            reply,
        ) {
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _, back)) => back,
            other => panic!("expected QueueFull, got {:?}", other.err().map(|e| e.0)),
        };
        back.refuse(Err((
            KafkaError::Canceled,
            crate::kafka::gate::empty_message(),
        )));
        assert!(matches!(second.await, Ok(Err((KafkaError::Canceled, _)))));
        assert!(
            noticed.try_recv().is_err(),
            "a refused record is never in flight"
        );
        // The first is purged when the producer goes: its sender hears first, then the gate.
        drop(producer);
        match first.await {
            Ok(Err((KafkaError::MessageProduction(code), _))) => {
                assert_eq!(code, RDKafkaErrorCode::PurgeQueue)
            }
            other => panic!("expected the purge's failure, got {other:?}"),
        }
        assert_eq!(noticed.recv().await, Some(7));
        drop(notices);
        assert_eq!(noticed.recv().await, None, "one notice per record");
    }
}
