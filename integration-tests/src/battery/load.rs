//! The steady load: chunks of demo lifecycle events plus one invalid record each, produced to
//! `<prefix>raw` at a fixed pace until stopped. A chunk that fails (broker down, message
//! timeout) is sent again, byte for byte, as a producer retrying would: the pipeline must
//! deduplicate the valid events, and each invalid record may be dead-lettered once per send.

use crate::demo;
use crate::harness::Pipeline;
use crate::stack;
use anyhow::Context as _;
use rdkafka::producer::FutureProducer;
use rdkafka::ClientConfig;
use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::task::JoinHandle;

/// What was sent (acknowledged) so far.
#[derive(Debug, Clone, Default)]
pub struct Sent {
    /// Valid event ids, each acknowledged at least once.
    pub valid: Vec<String>,
    /// Invalid records by key: their bytes and how many times they were sent.
    pub invalid: BTreeMap<String, (Vec<u8>, u32)>,
    /// Chunks sent again after a failure.
    pub retries: usize,
}

pub struct Load {
    sent: Arc<Mutex<Sent>>,
    stop: Arc<AtomicBool>,
    task: JoinHandle<anyhow::Result<()>>,
}

/// Records that cannot be audit events (the dead-letter topic must hold exactly these): not
/// JSON, no type and time, an unusable time, not UTF-8, not an object. An unknown enum value
/// is not among them (issue 6: it is kept).
const INVALID: [&[u8]; 5] = [
    b"{not json",
    b"{\"event\": {\"id\": \"evt-bad-notype\", \"source\": \"x\", \"category\": \"governance\", \"userId\": \"u\"}}",
    b"{\"event\": {\"id\": \"evt-bad-time\", \"eventType\": \"t\", \"timestamp\": \"yesterday\", \"source\": \"x\", \"category\": \"governance\", \"userId\": \"u\"}}",
    b"\xff\xfe\x00garbage",
    b"[1, 2, 3]",
];

/// How long a chunk may wait for its acknowledgements before it is sent again by a fresh
/// producer, so that a long outage is retried chunk by chunk.
const CHUNK_TIMEOUT: Duration = Duration::from_secs(30);

fn producer(brokers: &str) -> anyhow::Result<FutureProducer> {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        // Never time records out inside librdkafka: its idempotent producer then bumps its epoch
        // locally, which tansu cannot handle (docs/local-stack.md). A chunk fails after
        // CHUNK_TIMEOUT instead, and the producer holding it is dropped (purged), not reused.
        .set("message.timeout.ms", "0")
        .create()
        .context("creating the load producer")
}

impl Load {
    /// Publishes enrich's context records, then starts producing in the background.
    pub async fn start(
        p: &Pipeline,
        chunk: usize,
        every: Duration,
        seed: u64,
    ) -> anyhow::Result<Self> {
        let topics = p.kafka.topics();
        let brokers = p.kafka.brokers.clone();
        let prod = producer(&brokers)?;
        let ctx = |v: Vec<(String, Vec<u8>)>| v.into_iter().map(|(k, v)| (Some(k), v));
        stack::produce_all(&prod, &topics.context_users, ctx(demo::context_users())).await?;
        stack::produce_all(&prod, &topics.context_teams, ctx(demo::context_teams())).await?;
        let sent = Arc::new(Mutex::new(Sent::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (s, st) = (sent.clone(), stop.clone());
        let raw = topics.raw;
        let task = tokio::spawn(async move {
            let mut prod = prod;
            let mut seen: HashSet<String> = HashSet::new();
            let mut pool: Vec<demo::RawEvent> = Vec::new();
            let mut block = 0u64;
            let mut bad = 0usize;
            let start_us = now_us() - 3_600_000_000;
            while !st.load(Ordering::Acquire) {
                while pool.len() < chunk {
                    block += 1;
                    let mut more = demo::lifecycle(50, seed.wrapping_add(block), start_us);
                    more.retain(|e| {
                        e.event_id
                            .as_ref()
                            .is_some_and(|id| seen.insert(id.clone()))
                    });
                    more.reverse();
                    pool.splice(0..0, more);
                }
                let valid: Vec<demo::RawEvent> = pool.split_off(pool.len() - chunk);
                let key = format!("bad-{bad:06}");
                let bytes = INVALID[bad % INVALID.len()].to_vec();
                bad += 1;
                let mut records: Vec<(Option<String>, Vec<u8>)> = valid
                    .iter()
                    .rev()
                    .map(|e| (e.key.clone(), e.value.clone()))
                    .collect();
                records.push((Some(key.clone()), bytes.clone()));
                let mut attempts = 0u32;
                loop {
                    attempts += 1;
                    // Counted before the outcome is known: a failed send may still have landed.
                    if let Ok(mut g) = s.lock() {
                        g.invalid
                            .entry(key.clone())
                            .or_insert_with(|| (bytes.clone(), 0))
                            .1 = attempts;
                    }
                    let sent = tokio::time::timeout(
                        CHUNK_TIMEOUT,
                        stack::produce_all(&prod, &raw, records.clone()),
                    )
                    .await
                    .unwrap_or_else(|_| {
                        Err(anyhow::anyhow!("not acknowledged within {CHUNK_TIMEOUT:?}"))
                    });
                    match sent {
                        Ok(_) => break,
                        Err(e) => {
                            tracing::warn!("load chunk failed (attempt {attempts}): {e:#}");
                            if let Ok(mut g) = s.lock() {
                                g.retries += 1;
                            }
                            tokio::time::sleep(Duration::from_secs(1)).await;
                            // A fresh producer: the old one may be left in a fatal state.
                            prod = producer(&brokers)?;
                        }
                    }
                }
                if let Ok(mut g) = s.lock() {
                    g.valid
                        .extend(valid.iter().filter_map(|e| e.event_id.clone()));
                }
                tokio::time::sleep(every).await;
            }
            Ok(())
        });
        Ok(Load { sent, stop, task })
    }

    /// What was acknowledged so far.
    pub fn snapshot(&self) -> Sent {
        self.sent.lock().map(|g| g.clone()).unwrap_or_default()
    }

    /// Stops after the chunk in flight is acknowledged; returns everything sent.
    pub async fn stop(self) -> anyhow::Result<Sent> {
        self.stop.store(true, Ordering::Release);
        let Load { sent, task, .. } = self;
        task.await.context("the load task panicked")??;
        let sent = sent.lock().map(|g| g.clone()).unwrap_or_default();
        Ok(sent)
    }
}

fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}
