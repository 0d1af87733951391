//! The local stack as the tests and the demo see it: endpoints from the environment
//! (`deploy/local/env.sh` exports them; the defaults match it), unique names per test, and
//! small helpers to produce, count and wait.

use anyhow::{bail, Context as _};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use std::future::Future;
use std::time::{Duration, Instant};
use worker_runtime::kafka::admin::{ensure_topics, pipeline_topic_specs};
use worker_runtime::kafka::tail::{scan, ScanStart};
use worker_runtime::kafka::KafkaArgs;

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name)
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| default.to_owned())
}

pub fn brokers() -> String {
    env_or("AUDIT_KAFKA_BROKERS", "127.0.0.1:9092")
}
pub fn clickhouse_url() -> String {
    env_or("CLICKHOUSE_URL", "http://127.0.0.1:8123")
}
pub fn s3_endpoint() -> String {
    env_or("S3_ENDPOINT", "http://127.0.0.1:8333")
}
pub fn s3_bucket() -> String {
    env_or("S3_BUCKET", "audit-archive")
}

/// A name no other test (or earlier run) uses: `<test>_<pid>_<nanos>`, ClickHouse-safe.
pub fn unique(test: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() % 1_000_000_000_000)
        .unwrap_or(0);
    format!("{test}_{}_{nanos}", std::process::id())
}

/// Kafka settings with a topic prefix of its own, and the pipeline topics created.
pub async fn fresh_topics(test: &str, partitions: i32) -> anyhow::Result<KafkaArgs> {
    let kafka = KafkaArgs::local(&brokers(), &format!("{}.", unique(test)));
    ensure_topics(&kafka, &pipeline_topic_specs(&kafka, partitions), 1)
        .await
        .context("creating the test's topics (is the stack up? deploy/local/stack.sh up)")?;
    Ok(kafka)
}

pub fn producer(brokers: &str) -> anyhow::Result<FutureProducer> {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .create()
        .context("creating test producer")
}

/// Produces `records` (key, value) to `topic` and waits for every acknowledgement.
pub async fn produce_all(
    producer: &FutureProducer,
    topic: &str,
    records: impl IntoIterator<Item = (Option<String>, Vec<u8>)>,
) -> anyhow::Result<usize> {
    let mut pending = Vec::new();
    for (key, value) in records {
        loop {
            let mut r: FutureRecord<'_, str, [u8]> = FutureRecord::to(topic).payload(&value);
            if let Some(k) = key.as_deref() {
                r = r.key(k);
            }
            match producer.send_result(r) {
                Ok(f) => {
                    pending.push(f);
                    break;
                }
                Err((
                    rdkafka::error::KafkaError::MessageProduction(
                        rdkafka::types::RDKafkaErrorCode::QueueFull,
                    ),
                    _,
                )) => tokio::time::sleep(Duration::from_millis(5)).await,
                Err((e, _)) => bail!("producing to {topic}: {e}"),
            }
        }
    }
    let n = pending.len();
    for f in futures::future::join_all(pending).await {
        match f {
            Ok(Ok(_)) => {}
            Ok(Err((e, _))) => bail!("delivery to {topic} failed: {e}"),
            Err(_) => bail!("delivery to {topic} cancelled"),
        }
    }
    Ok(n)
}

/// Every record of `topic` (all partitions), read directly from the log.
pub async fn read_all(
    kafka: &KafkaArgs,
    topic: &str,
) -> anyhow::Result<Vec<worker_runtime::kafka::InputRecord>> {
    let partitions =
        worker_runtime::kafka::admin::partition_count(kafka, topic, &Default::default()).await?;
    let sink = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    for p in 0..partitions {
        let out = sink.clone();
        let (_reader, _marks) = scan(
            kafka,
            topic,
            p,
            ScanStart::Offset(0),
            Duration::from_secs(20),
            move |m: &rdkafka::message::BorrowedMessage<'_>| {
                if let Ok(mut v) = out.lock() {
                    v.push(worker_runtime::kafka::InputRecord::from_message(m));
                }
            },
        )
        .await
        .with_context(|| format!("reading {topic}/{p}"))?;
    }
    let records = std::mem::take(&mut *sink.lock().map_err(|_| anyhow::anyhow!("poisoned"))?);
    Ok(records)
}

/// Polls `check` until it returns `Some`, or fails after `deadline` with the last state seen.
pub async fn poll_until<T, S, F, Fut>(
    what: &str,
    deadline: Duration,
    mut check: F,
) -> anyhow::Result<T>
where
    S: std::fmt::Debug,
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Result<T, S>>>,
{
    let start = Instant::now();
    let mut last: Option<String>;
    loop {
        match check().await {
            Ok(Ok(v)) => return Ok(v),
            Ok(Err(state)) => last = Some(format!("{state:?}")),
            Err(e) => last = Some(format!("error: {e:#}")),
        }
        if start.elapsed() > deadline {
            bail!(
                "timed out after {deadline:?} waiting for {what}; last state: {}",
                last.unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
