//! The partition task against a fake Kafka side: acknowledgements are released by the test,
//! revocation is a flag.

use std::sync::atomic::AtomicBool;
use std::sync::Mutex;

use integrity::checkpoint::{generate_pkcs8, SigningKey};
use schemas::framing::{decode_checkpoint, encode_single_object_event};
use schemas::testing::sample_event;
use tokio::sync::Semaphore;

use super::*;
use crate::checkpoints::CheckpointRange;

struct Fake {
    revoked: AtomicBool,
    /// Acknowledgements wait for a permit each.
    acks: Arc<Semaphore>,
    chained: Mutex<Vec<i64>>,
    checkpoints: Mutex<Vec<(u64, u64)>>,
    stored: Mutex<Vec<i64>>,
    seeks: Mutex<Vec<i64>>,
    /// Recovery waits for a permit.
    recovery: Arc<Semaphore>,
    recovered_at: i64,
    /// Offsets whose chained record the "broker" refuses (once each).
    failing: Mutex<std::collections::HashSet<i64>>,
    /// Producer generations reported failed.
    failed_generations: Mutex<Vec<u64>>,
}

impl Fake {
    /// `acks`, `recovery`: permits available at once (`None`: unlimited).
    fn new(acks: Option<usize>, recovery: Option<usize>, recovered_at: i64) -> Self {
        let sem = |n: Option<usize>| Arc::new(Semaphore::new(n.unwrap_or(Semaphore::MAX_PERMITS)));
        Fake {
            revoked: AtomicBool::new(false),
            acks: sem(acks),
            chained: Mutex::default(),
            checkpoints: Mutex::default(),
            stored: Mutex::default(),
            seeks: Mutex::default(),
            recovery: sem(recovery),
            recovered_at,
            failing: Mutex::default(),
            failed_generations: Mutex::default(),
        }
    }

    fn held_acks(&self) -> Ack {
        let s = self.acks.clone();
        Box::pin(async move {
            let _ = s.acquire_owned().await.map(|p| p.forget());
            Ok(())
        })
    }
    fn checkpoints(&self) -> Vec<(u64, u64)> {
        self.checkpoints.lock().unwrap().clone()
    }
}

impl TaskIo for Fake {
    fn is_current(&self, _p: i32, _epoch: u64) -> bool {
        !self.revoked.load(Ordering::SeqCst)
    }
    fn recover(&self, p: i32, _epoch: u64) -> BoxFuture<'_, Result<Recovered, Error>> {
        Box::pin(async move {
            let _ = self.recovery.acquire().await.map(|p| p.forget());
            let chain = PartitionChain::genesis(p, "t.enriched", 100, self.recovered_at).map_err(
                |source| Error::Chain {
                    partition: p,
                    source,
                },
            )?;
            Ok(Recovered {
                chain,
                range: Some(CheckpointRange::starting_at(p as u32, 1)),
                next_source: 0,
            })
        })
    }
    fn seek(&self, _p: i32, _epoch: u64, to: i64) -> BoxFuture<'_, Result<(), Error>> {
        self.seeks.lock().unwrap().push(to);
        Box::pin(async { Ok(()) })
    }
    fn send_chained<'a>(
        &'a self,
        _p: i32,
        input: &'a InputRecord,
        _payload: Vec<u8>,
    ) -> BoxFuture<'a, Result<Ack, Error>> {
        self.chained.lock().unwrap().push(input.offset);
        if self.failing.lock().unwrap().remove(&input.offset) {
            let e = rdkafka::error::KafkaError::MessageProduction(
                rdkafka::types::RDKafkaErrorCode::MessageTimedOut,
            );
            let ack: Ack = Box::pin(async move { Err(RuntimeError::kafka("delivering", e)) });
            return Box::pin(async move { Ok(ack) });
        }
        let ack = self.held_acks();
        Box::pin(async move { Ok(ack) })
    }
    fn send_dead_letter<'a>(
        &'a self,
        _input: &'a InputRecord,
        _code: &'static str,
        _message: &'a str,
    ) -> BoxFuture<'a, Result<Ack, Error>> {
        let ack = self.held_acks();
        Box::pin(async move { Ok(ack) })
    }
    fn send_checkpoint<'a>(
        &'a self,
        _p: i32,
        payload: &'a [u8],
        _meta: crate::checkpoints::CheckpointMeta<'a>,
    ) -> BoxFuture<'a, Result<Ack, Error>> {
        let cp = decode_checkpoint(payload, None).expect("a checkpoint");
        self.checkpoints
            .lock()
            .unwrap()
            .push((cp.first_seq as u64, cp.seq as u64));
        Box::pin(async { Ok(Box::pin(async { Ok(()) }) as Ack) })
    }
    fn store_offset(&self, _p: i32, next: i64) {
        self.stored.lock().unwrap().push(next);
    }
    fn delivery_failed(&self, generation: u64) {
        self.failed_generations.lock().unwrap().push(generation);
    }
}

fn signer(every: u64, interval: Duration) -> Arc<Signer> {
    let key = SigningKey::from_pkcs8("k1", generate_pkcs8().unwrap().expose()).unwrap();
    Arc::new(Signer {
        key,
        chain_id: "t.chained".into(),
        every_events: every,
        interval,
        heartbeat: Duration::ZERO,
        partition_count: 1,
    })
}

fn record(offset: i64) -> InputRecord {
    let mut e = sample_event();
    e.event_id = format!("e{offset}");
    InputRecord {
        topic: "t.enriched".into(),
        partition: 0,
        offset,
        key: None,
        payload: Some(encode_single_object_event(&e).unwrap()),
        headers: Vec::new(),
        timestamp_ms: None,
    }
}

struct Running {
    fake: Arc<Fake>,
    tx: mpsc::Sender<InputRecord>,
    control: Control,
    status: Arc<TaskStatus>,
    handle: tokio::task::JoinHandle<Result<(), Error>>,
    progress: Arc<AtomicU64>,
}

fn start(fake: Fake, signer: Arc<Signer>, after: Option<watch::Receiver<()>>) -> Running {
    let fake = Arc::new(fake);
    let (tx, rx) = mpsc::channel(16);
    let progress = Arc::new(AtomicU64::new(0));
    let control = Control {
        stop: Shutdown::new(),
        finish: Shutdown::new(),
        after,
        progress: progress.clone(),
    };
    let status = Arc::new(TaskStatus::default());
    let (done, _) = watch::channel(());
    let spec = TaskSpec {
        partition: 0,
        epoch: 1,
        signer: Some(signer),
        max_in_flight: 100,
        drain_timeout: Duration::from_secs(5),
    };
    let handle = tokio::spawn(run(
        fake.clone(),
        spec,
        rx,
        control.clone(),
        status.clone(),
        done,
    ));
    Running {
        fake,
        tx,
        control,
        status,
        handle,
        progress,
    }
}

async fn until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn count_triggered_checkpoints_are_published_while_current() {
    let r = start(
        Fake::new(None, None, 0),
        signer(3, Duration::from_secs(3600)),
        None,
    );
    for o in 0..7 {
        r.tx.send(record(o)).await.unwrap();
    }
    until("two checkpoints", || r.fake.checkpoints().len() == 2).await;
    assert_eq!(r.fake.checkpoints(), vec![(1, 3), (4, 6)]);
    until("offsets stored", || {
        r.fake.stored.lock().unwrap().last() == Some(&7)
    })
    .await;
    // A clean finish seals the rest.
    r.control.finish.trigger();
    r.handle.await.unwrap().unwrap();
    assert_eq!(r.fake.checkpoints(), vec![(1, 3), (4, 6), (7, 7)]);
    assert!(r.progress.load(Ordering::Relaxed) > 0);
}

/// Acknowledgements that arrive after the partition was revoked complete a count-triggered
/// range, and a time-triggered one is due: the revoked task publishes neither, stores no
/// offset, and its drain publishes no final checkpoint.
#[tokio::test]
async fn a_revoked_task_publishes_no_checkpoint_and_stores_no_offset() {
    let r = start(
        Fake::new(Some(0), None, 0),
        signer(3, Duration::from_millis(1)),
        None,
    );
    for o in 0..3 {
        r.tx.send(record(o)).await.unwrap();
    }
    until("three records chained", || {
        r.fake.chained.lock().unwrap().len() == 3
    })
    .await;
    r.fake.revoked.store(true, Ordering::SeqCst);
    r.fake.acks.add_permits(3);
    r.handle.await.unwrap().unwrap();
    assert_eq!(
        r.fake.checkpoints(),
        vec![],
        "a revoked task signed a checkpoint"
    );
    assert_eq!(*r.fake.stored.lock().unwrap(), Vec::<i64>::new());
}

/// Stopped by the router (revoked or the worker failed) with deliveries in flight: the drain
/// acknowledges them, but no checkpoint follows.
#[tokio::test]
async fn a_stopped_task_drains_without_checkpointing() {
    let r = start(
        Fake::new(Some(0), None, 0),
        signer(2, Duration::from_secs(3600)),
        None,
    );
    for o in 0..2 {
        r.tx.send(record(o)).await.unwrap();
    }
    until("two records chained", || {
        r.fake.chained.lock().unwrap().len() == 2
    })
    .await;
    r.control.stop.trigger();
    r.fake.revoked.store(true, Ordering::SeqCst);
    r.fake.acks.add_permits(2);
    r.handle.await.unwrap().unwrap();
    assert_eq!(r.fake.checkpoints(), vec![]);
}

/// While recovering the task reports it, takes no record, and waits for its predecessor.
#[tokio::test]
async fn recovery_waits_for_the_previous_task_and_is_reported() {
    let (prev_done, prev) = watch::channel(());
    let r = start(
        Fake::new(None, Some(0), 5),
        signer(100, Duration::from_secs(3600)),
        Some(prev),
    );
    r.tx.send(record(5)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(r.status.recovering());
    assert_eq!(r.status.next_offset(), None);
    // The predecessor ends, then the recovery itself completes.
    drop(prev_done);
    r.fake.recovery.add_permits(1);
    until("the record chained", || {
        r.fake.chained.lock().unwrap().len() == 1
    })
    .await;
    assert!(!r.status.recovering());
    assert_eq!(r.status.next_offset(), Some(6));
    r.control.finish.trigger();
    r.handle.await.unwrap().unwrap();
}

/// A consumer positioned far below the recovered chain (static assignment from an old
/// committed offset) is sought forward once instead of skipping record by record.
#[tokio::test]
async fn a_consumer_far_behind_the_chain_is_sought_forward_once() {
    let at = FAR_BEHIND + 500;
    let r = start(
        Fake::new(None, None, at),
        signer(100, Duration::from_secs(3600)),
        None,
    );
    for o in 0..3 {
        r.tx.send(record(o)).await.unwrap();
    }
    r.tx.send(record(at)).await.unwrap();
    // Re-delivered after the seek: ignored.
    r.tx.send(record(at)).await.unwrap();
    r.tx.send(record(at + 1)).await.unwrap();
    until("chained", || r.fake.chained.lock().unwrap().len() == 2).await;
    assert_eq!(*r.fake.seeks.lock().unwrap(), vec![at]);
    assert_eq!(*r.fake.chained.lock().unwrap(), vec![at, at + 1]);
    r.control.finish.trigger();
    r.handle.await.unwrap().unwrap();
}

#[test]
fn broker_errors_are_transient_but_durable_state_is_not() {
    let kafka = Error::Runtime(RuntimeError::kafka(
        "watermarks",
        rdkafka::error::KafkaError::MetadataFetch(
            rdkafka::types::RDKafkaErrorCode::OperationTimedOut,
        ),
    ));
    assert!(is_transient(&kafka));
    assert!(is_transient(&Error::Runtime(RuntimeError::Timeout {
        context: "scanning".into(),
        after: Duration::from_secs(1),
    })));
    assert!(!is_transient(&Error::Recovery {
        topic: "t".into(),
        partition: 0,
        detail: "a signed checkpoint covers seq 9 but the chain ends at seq 3".into(),
    }));
}

/// A refused delivery stops the partition (nothing stored past it), recovers it again from the
/// log, seeks the consumer back and chains on: the task does not end and the worker does not
/// stop.
#[tokio::test]
async fn a_failed_delivery_recovers_the_partition_instead_of_stopping_the_worker() {
    let fake = Fake::new(None, None, 0);
    fake.failing.lock().unwrap().insert(2);
    let r = start(fake, signer(0, Duration::ZERO), None);
    for o in 0..5 {
        r.tx.send(record(o)).await.unwrap();
    }
    until("recovered again", || r.status.rerecoveries() == 1).await;
    until("sought back", || r.fake.seeks.lock().unwrap().contains(&0)).await;
    assert_eq!(*r.fake.failed_generations.lock().unwrap(), vec![0]);
    assert!(!r.handle.is_finished());
    // Nothing at or after the refused record was stored.
    assert!(r.fake.stored.lock().unwrap().iter().all(|&n| n <= 2));
    // The consumer delivers again from the chain's resume point.
    for o in 0..5 {
        r.tx.send(record(o)).await.unwrap();
    }
    until("chained on", || r.fake.stored.lock().unwrap().contains(&5)).await;
    assert!(!r.status.recovering());
    assert!(r.status.reason().is_empty());
    r.control.finish.trigger();
    r.handle.await.unwrap().unwrap();
}
