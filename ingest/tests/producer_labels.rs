//! Real producers' labels against the real broker (Kafka API on 127.0.0.1:9092;
//! `deploy/local/stack.sh up`; FAILS when it is absent): events in seed 000 §3.2's structure,
//! published with the confluent-kafka Python client (`publish_seed_events.py`), whose category
//! is one the producers use but the enum lacks (`ai_processing`, `policy_decision`, `approval`,
//! `deployment`) or a random string, some with unknown severities, outcomes and actor types.
//!
//! Issue 6 measured 800 of 1000 such events dead-lettered `invalid_value`. Here ingest's `run`,
//! in-process, must put every one on the validated topic with the producer's originals
//! recoverable, and none on the dead-letter topic; with `--strict-labels` exactly those with an
//! unknown label are dead-lettered `invalid_value` (the old behaviour, kept as configuration).

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use rdkafka::message::{BorrowedMessage, Headers};
use rdkafka::Message;
use schemas::json::labels::{self, LabelKind, LabelMatch};
use schemas::AuditEvent;
use worker_runtime::kafka::admin::{ensure_topics, TopicSpec};
use worker_runtime::kafka::dlq::HEADER_REASON_CODE;
use worker_runtime::kafka::tail::{scan, ScanStart};
use worker_runtime::kafka::KafkaArgs;
use worker_runtime::Shutdown;

const BROKERS: &str = "127.0.0.1:9092";
const PARTITIONS: i32 = 2;

/// What the Python producer says it sent, one per event.
#[derive(Debug, Clone)]
struct Sent {
    category: String,
    severity: Option<String>,
    outcome: Option<String>,
    actor_type: Option<String>,
}

impl Sent {
    fn labels(&self) -> [(LabelKind, Option<&str>); 4] {
        [
            (LabelKind::Category, Some(self.category.as_str())),
            (LabelKind::Severity, self.severity.as_deref()),
            (LabelKind::Outcome, self.outcome.as_deref()),
            (LabelKind::ActorType, self.actor_type.as_deref()),
        ]
    }

    fn has_unknown_label(&self) -> bool {
        self.labels()
            .into_iter()
            .any(|(k, t)| t.is_some_and(|t| k.classify(t) == LabelMatch::Unknown))
    }
}

/// Runs the Python publisher; returns what it sent, by request id.
async fn publish(topic: &str, count: usize, seed: u32) -> HashMap<String, Sent> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/publish_seed_events.py");
    let args = [
        script.display().to_string(),
        BROKERS.to_owned(),
        topic.to_owned(),
        count.to_string(),
        seed.to_string(),
    ];
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("python3").args(args).output()
    })
    .await
    .expect("join")
    .expect("python3 runs (confluent-kafka: deploy/local/stack.sh install)");
    assert!(
        out.status.success(),
        "publisher failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).expect("utf-8 manifest");
    let mut sent = HashMap::new();
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line).expect("manifest line");
        let s = |k: &str| v[k].as_str().map(str::to_owned);
        let request_id = s("requestId").expect("requestId");
        sent.insert(
            request_id,
            Sent {
                category: s("category").expect("category"),
                severity: s("severity"),
                outcome: s("outcome"),
                actor_type: s("actorType"),
            },
        );
    }
    assert_eq!(sent.len(), count, "one manifest line per event");
    sent
}

/// Every record of `topic` (all partitions): payload and the dead-letter reason header.
async fn read_all(kafka: &KafkaArgs, topic: &str) -> Vec<(Vec<u8>, Option<String>)> {
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
                let reason = m.headers().and_then(|h| {
                    h.iter()
                        .find(|x| x.key == HEADER_REASON_CODE)
                        .and_then(|x| x.value)
                        .map(|v| String::from_utf8_lossy(v).into_owned())
                });
                let payload = m.payload().unwrap_or_default().to_vec();
                sink.lock().expect("lock").push((payload, reason));
            },
        )
        .await
        .unwrap_or_else(|e| panic!("scanning {topic}/{p}: {e}"));
    }
    let mut all = all.lock().expect("lock");
    std::mem::take(&mut *all)
}

/// Waits until `validated + rejected` hold `want` records (ingest writes exactly one output per
/// input), polling with a deadline instead of sleeping a guessed time.
async fn wait_for_outputs(kafka: &KafkaArgs, want: i64) {
    let topics = kafka.topics();
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let counts = match (
            common::try_count(kafka, &topics.validated).await,
            common::try_count(kafka, &topics.rejected).await,
        ) {
            (Ok(v), Ok(r)) if v + r >= want => return,
            (Ok(v), Ok(r)) => format!("ingest produced {v} validated + {r} rejected of {want}"),
            (Err(e), _) | (_, Err(e)) => e,
        };
        assert!(Instant::now() < deadline, "{counts}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// A fresh prefix with its raw/validated/rejected topics; ingest running on them.
async fn start_ingest(
    strict: bool,
) -> (
    KafkaArgs,
    Shutdown,
    tokio::task::JoinHandle<Result<(), ingest::Error>>,
) {
    let id = uuid::Uuid::new_v4().simple().to_string();
    let prefix = format!("t{}.", &id[..12]);
    let kafka = KafkaArgs::local(BROKERS, &prefix);
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
    let config = ingest::Config::parse_from([
        "ingest",
        "--health-addr",
        "",
        "--kafka-brokers",
        BROKERS,
        "--topic-prefix",
        &prefix,
        "--group-id",
        &format!("g-{id}"),
        // Explicit, so an AUDIT_INGEST_STRICT_LABELS in the environment cannot flip the test.
        &format!("--strict-labels={strict}"),
    ]);
    let shutdown = Shutdown::new();
    let handle = tokio::spawn(ingest::run(config, shutdown.clone()));
    (kafka, shutdown, handle)
}

fn request_id(e: &AuditEvent) -> &str {
    e.request_id
        .as_deref()
        .expect("the publisher sets requestId")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn producers_labels_are_all_kept_with_their_originals() {
    const N: usize = 1000;
    let (kafka, shutdown, handle) = start_ingest(false).await;
    let topics = kafka.topics();
    let sent = publish(&topics.raw, N, 6).await;
    let unknown = sent.values().filter(|s| s.has_unknown_label()).count();
    assert!(
        unknown >= 800,
        "the input is mostly unknown labels ({unknown})"
    );

    wait_for_outputs(&kafka, N as i64).await;
    shutdown.trigger();
    handle.await.expect("join").expect("clean stop");

    let rejected = read_all(&kafka, &topics.rejected).await;
    let reasons: std::collections::BTreeSet<Option<String>> =
        rejected.iter().map(|(_, r)| r.clone()).collect();
    assert!(
        rejected.is_empty(),
        "0 dead letters, got {} of {N} (reasons {reasons:?}; {unknown} events had an unknown label)",
        rejected.len()
    );
    let validated = read_all(&kafka, &topics.validated).await;
    assert_eq!(validated.len(), N);
    let mut seen = HashMap::new();
    for (payload, _) in &validated {
        let e = schemas::framing::decode_event(payload, None).expect("validated Avro");
        let s = sent
            .get(request_id(&e))
            .unwrap_or_else(|| panic!("unexpected event {}", request_id(&e)));
        for (kind, text) in s.labels() {
            let Some(text) = text else { continue };
            assert_eq!(
                kind.name_in(&e),
                kind.normalized_name(text),
                "{kind:?} {text:?}"
            );
            if kind.classify(text) != LabelMatch::Name {
                assert_eq!(
                    labels::producer_text(&e, kind),
                    text,
                    "{kind:?}: the original is kept"
                );
            }
        }
        assert!(!e.event_id.is_empty());
        *seen.entry(request_id(&e).to_owned()).or_insert(0) += 1;
    }
    assert_eq!(seen.len(), N, "every event once");
    assert!(seen.values().all(|n| *n == 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_labels_dead_letter_exactly_the_unknown_labels() {
    const N: usize = 200;
    let (kafka, shutdown, handle) = start_ingest(true).await;
    let topics = kafka.topics();
    let sent = publish(&topics.raw, N, 7).await;
    let unknown = sent.values().filter(|s| s.has_unknown_label()).count();

    wait_for_outputs(&kafka, N as i64).await;
    shutdown.trigger();
    handle.await.expect("join").expect("clean stop");

    let rejected = read_all(&kafka, &topics.rejected).await;
    assert_eq!(rejected.len(), unknown);
    for (payload, reason) in &rejected {
        assert_eq!(reason.as_deref(), Some("invalid_value"));
        let v: serde_json::Value = serde_json::from_slice(payload).expect("original bytes");
        let rid = v["event"]["requestId"].as_str().expect("requestId");
        assert!(sent[rid].has_unknown_label(), "{rid} had only known labels");
    }
    assert_eq!(read_all(&kafka, &topics.validated).await.len(), N - unknown);
}
