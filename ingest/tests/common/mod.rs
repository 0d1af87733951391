//! Helpers of the HTTP door tests: fresh topics on the real broker (127.0.0.1:9092,
//! `deploy/local/stack.sh up`, or a test's own: `private_broker`), ingest in-process with its
//! HTTP door, reading a topic back; malformed inputs of every kind (`malformed`).
#![allow(dead_code)] // each test file uses a part

pub mod malformed;
pub mod private_broker;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use rdkafka::message::BorrowedMessage;
use rdkafka::Message;
use schemas::AuditEvent;
use worker_runtime::kafka::admin::{ensure_topics, TopicSpec};
use worker_runtime::kafka::tail::{scan, ScanStart};
use worker_runtime::kafka::KafkaArgs;
use worker_runtime::Shutdown;

pub const BROKERS: &str = "127.0.0.1:9092";
pub const PARTITIONS: i32 = 2;

/// A token and the `sha256:<hex> tenant [teams]` entry that admits it.
pub fn token_entry(token: &str, tenant: &str, teams: &str) -> String {
    format!(
        "sha256:{} {tenant} {teams}",
        hex::encode(ingest::http::token_hash(token))
    )
}

/// A fresh topic prefix with raw/validated/rejected created.
pub async fn fresh_topics() -> (KafkaArgs, String) {
    fresh_topics_on(BROKERS).await
}

/// [`fresh_topics`] on the broker at `brokers` (e.g. a [`private_broker::PrivateBroker`]).
pub async fn fresh_topics_on(brokers: &str) -> (KafkaArgs, String) {
    let id = uuid::Uuid::new_v4().simple().to_string();
    let prefix = format!("h{}.", &id[..12]);
    let kafka = KafkaArgs::local(brokers, &prefix);
    let topics = kafka.topics();
    let specs: Vec<TopicSpec> = [&topics.raw, &topics.validated, &topics.rejected]
        .into_iter()
        .map(|t| TopicSpec {
            name: t.clone(),
            partitions: PARTITIONS,
            compacted: false,
        })
        .collect();
    ensure_topics(&kafka, &specs, 1)
        .await
        .expect("Kafka must be running (deploy/local/stack.sh up)");
    (kafka, id)
}

/// A free local port (bound and released; the door binds it right after).
pub fn free_addr() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    l.local_addr().expect("local addr").to_string()
}

pub struct Running {
    pub kafka: KafkaArgs,
    pub base: String,
    pub shutdown: Shutdown,
    pub handle: tokio::task::JoinHandle<Result<(), ingest::Error>>,
}

impl Running {
    pub async fn stop(self) {
        self.shutdown.trigger();
        self.handle.await.expect("join").expect("clean stop");
    }
}

/// Ingest on fresh topics with its HTTP door on a free port and `extra` flags (give
/// `--strict-labels=…` explicitly, so the environment cannot flip a test); returns once the door
/// answers.
pub async fn start_ingest(tokens: &str, extra: &[&str]) -> Running {
    start_ingest_on(BROKERS, tokens, extra).await
}

/// [`start_ingest`] on the broker at `brokers`.
pub async fn start_ingest_on(brokers: &str, tokens: &str, extra: &[&str]) -> Running {
    let (kafka, id) = fresh_topics_on(brokers).await;
    let addr = free_addr();
    let group = format!("g-{id}");
    let mut args = vec![
        "ingest",
        "--health-addr",
        "",
        "--kafka-brokers",
        brokers,
        "--topic-prefix",
        &kafka.topic_prefix,
        "--group-id",
        &group,
        "--http-addr",
        &addr,
        "--http-tokens",
        tokens,
    ];
    args.extend_from_slice(extra);
    let config = ingest::Config::parse_from(args);
    let shutdown = Shutdown::new();
    let handle = tokio::spawn(ingest::run(config, shutdown.clone()));
    let base = format!("http://{addr}");
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        // Any answer means the listener is up (readiness is the pipeline's, checked elsewhere).
        if client.get(format!("{base}/v1/health")).send().await.is_ok() {
            break;
        }
        assert!(!handle.is_finished(), "ingest stopped during start");
        assert!(Instant::now() < deadline, "the HTTP door never answered");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Running {
        kafka,
        base,
        shutdown,
        handle,
    }
}

/// Every record of `topic` (all partitions): payloads.
pub async fn read_all(kafka: &KafkaArgs, topic: &str) -> Vec<Vec<u8>> {
    let all = Arc::new(Mutex::new(Vec::new()));
    for p in 0..PARTITIONS {
        let sink = Arc::clone(&all);
        let _ = scan(
            kafka,
            topic,
            p,
            ScanStart::Offset(0),
            Duration::from_secs(20),
            move |m: &BorrowedMessage<'_>| {
                sink.lock()
                    .expect("lock")
                    .push(m.payload().unwrap_or_default().to_vec());
            },
        )
        .await
        .unwrap_or_else(|e| panic!("scanning {topic}/{p}: {e}"));
    }
    let mut all = all.lock().expect("lock");
    std::mem::take(&mut *all)
}

/// Record count of `topic` (sum of high − low watermarks); `Err` when the broker did not
/// answer in time (a loaded local broker can miss a metadata deadline: pollers ask again).
pub async fn try_count(kafka: &KafkaArgs, topic: &str) -> Result<i64, String> {
    let mut n = 0;
    for p in 0..PARTITIONS {
        let (_, marks) = scan(
            kafka,
            topic,
            p,
            ScanStart::LastN(0),
            Duration::from_secs(10),
            |_: &BorrowedMessage<'_>| {},
        )
        .await
        .map_err(|e| format!("watermarks of {topic}/{p}: {e}"))?;
        n += marks.high - marks.low;
    }
    Ok(n)
}

/// [`try_count`], or a panic.
pub async fn count(kafka: &KafkaArgs, topic: &str) -> i64 {
    try_count(kafka, topic)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

pub async fn validated_events(kafka: &KafkaArgs) -> Vec<AuditEvent> {
    read_all(kafka, &kafka.topics().validated)
        .await
        .iter()
        .map(|p| schemas::framing::decode_event(p, None).expect("validated Avro"))
        .collect()
}

/// A valid event in seed 000's envelope, with `fields` merged into the event object.
pub fn seed_event(fields: serde_json::Value) -> serde_json::Value {
    let mut e = serde_json::json!({
        "eventType": "infrastructure_request",
        "timestamp": "2024-01-15T10:30:00Z",
        "userId": "user-123",
        "sessionId": "session-789",
        "source": "natural_language_interface",
        "category": "user_interaction",
        "action": "create_api_server",
        "data": {"naturalLanguageRequest": "I need a new API server"},
        "result": {"status": "success"},
        "traceId": "trace-0a1b",
        "spanId": "span-2c3d",
    });
    if let (Some(m), serde_json::Value::Object(f)) = (e.as_object_mut(), fields) {
        m.extend(f);
    }
    serde_json::json!({ "event": e })
}
