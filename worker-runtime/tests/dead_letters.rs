//! Dead letters survive a crash without duplicates, against the local stack's broker (tansu on
//! 127.0.0.1:9092, or `KAFKA_BROKERS`; `deploy/local/stack.sh up`). FAILS when the broker is
//! absent.
//!
//! A first pipeline dead-letters the invalid inputs and is then dropped mid-flight without
//! committing anything (a SIGKILL as far as Kafka can tell). A second one re-reads every input
//! from the start: the rejected topic must still hold each invalid input exactly once.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::message::Headers;
use rdkafka::Message;
use worker_runtime::health::Readiness;
use worker_runtime::kafka::admin::{ensure_topics, TopicSpec};
use worker_runtime::kafka::consumer::{subscribe, ConsumerSettings};
use worker_runtime::kafka::dlq::{dead_letter, source_offset_of};
use worker_runtime::kafka::liveness::LivenessSettings;
use worker_runtime::kafka::pipeline::{run_with_liveness, PipelineSettings, Processor};
use worker_runtime::kafka::tail::{scan, ScanStart};
use worker_runtime::kafka::{InputRecord, KafkaArgs, OutputRecord, Producer};
use worker_runtime::{RuntimeError, Shutdown};

const STAGE: &str = "t-dlq";

fn brokers() -> String {
    std::env::var("KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

fn unique() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{}-{nanos}", std::process::id())
}

/// Copies payloads starting with `ok` to the output, dead-letters the rest.
struct Judge {
    out: String,
    rejected: String,
    seen: Arc<AtomicUsize>,
}

impl Processor for Judge {
    async fn process(&self, input: &InputRecord) -> Result<Vec<OutputRecord>, RuntimeError> {
        self.seen.fetch_add(1, Ordering::SeqCst);
        if input
            .payload
            .as_deref()
            .is_some_and(|p| p.starts_with(b"ok"))
        {
            return Ok(vec![OutputRecord {
                topic: self.out.clone(),
                key: input.key.clone(),
                payload: input.payload.clone(),
                ..Default::default()
            }]);
        }
        Ok(vec![dead_letter(
            &self.rejected,
            input,
            STAGE,
            "bad",
            "not ok",
        )])
    }
}

async fn wait_for<F: FnMut() -> bool>(what: &str, within: Duration, mut f: F) {
    let deadline = Instant::now() + within;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// (source partition, source offset) → how many dead letters of ours the rejected topic holds.
async fn dead_letters(
    args: &KafkaArgs,
    rejected: &str,
    partitions: i32,
    source: &str,
) -> HashMap<(i32, i64), usize> {
    let counts = Arc::new(Mutex::new(HashMap::new()));
    for rp in 0..partitions {
        let c = counts.clone();
        let source = source.to_owned();
        let _ = scan(
            args,
            rejected,
            rp,
            ScanStart::Offset(0),
            Duration::from_secs(20),
            move |m| {
                let Some(h) = m.headers() else { return };
                for sp in 0..16 {
                    let pairs = h.iter().map(|h| (h.key, h.value.unwrap_or_default()));
                    if let Some(o) = source_offset_of(pairs, STAGE, &source, sp) {
                        *c.lock().expect("lock").entry((sp, o)).or_insert(0) += 1;
                    }
                }
            },
        )
        .await
        .expect("scan rejected");
    }
    let out = counts.lock().expect("lock").clone();
    out
}

struct Setup {
    args: KafkaArgs,
    input: String,
    output: String,
    rejected: String,
    group: String,
}

fn settings(args: &KafkaArgs) -> PipelineSettings {
    PipelineSettings {
        stage: STAGE,
        max_in_flight: 100,
        drain_timeout: Duration::from_secs(10),
        kafka: args.clone(),
        dead_letter_scan_records: 10_000,
    }
}

fn start(
    s: &Setup,
    args: &KafkaArgs,
    seen: Arc<AtomicUsize>,
    shutdown: &Shutdown,
) -> tokio::task::JoinHandle<Result<(), RuntimeError>> {
    let cs = ConsumerSettings::new(s.group.clone(), "t-dlq-worker", vec![s.input.clone()]);
    let (consumer, rebalance) = subscribe(args, &cs).expect("subscribe");
    let producer = Producer::new(args, "t-dlq-worker").expect("producer");
    tokio::spawn(run_with_liveness(
        consumer,
        rebalance,
        producer,
        Arc::new(Judge {
            out: s.output.clone(),
            rejected: s.rejected.clone(),
            seen,
        }),
        settings(args),
        LivenessSettings {
            stall_after: Duration::from_secs(600),
            ..LivenessSettings::default()
        },
        Readiness::default(),
        shutdown.clone(),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_not_repeated_after_a_crash_before_the_commit() {
    const N: usize = 120;
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let id = unique();
    let prefix = format!("t-dlq-{id}.");
    let args = KafkaArgs::local(&brokers(), &prefix);
    let s = Setup {
        input: format!("{prefix}in"),
        output: format!("{prefix}out"),
        rejected: args.topics().rejected,
        group: format!("t-dlq-{id}"),
        args: args.clone(),
    };
    let specs: Vec<TopicSpec> = [(&s.input, 3), (&s.output, 1), (&s.rejected, 2)]
        .iter()
        .map(|(t, partitions)| TopicSpec {
            name: (*t).clone(),
            partitions: *partitions,
            compacted: false,
        })
        .collect();
    ensure_topics(&s.args, &specs, 1)
        .await
        .expect("topics (is Kafka up? deploy/local/stack.sh up)");
    let producer = Producer::new(&s.args, "t-dlq-producer").expect("producer");
    let mut invalid = 0;
    for i in 0..N {
        let payload = if i % 4 == 0 {
            format!("ok{i}")
        } else {
            format!("bad{i}")
        };
        invalid += usize::from(i % 4 != 0);
        let rec = OutputRecord {
            topic: s.input.clone(),
            key: Some(format!("k{i}").into_bytes()),
            payload: Some(payload.into_bytes()),
            partition: Some((i % 3) as i32),
            ..Default::default()
        };
        producer.send(&rec).await.expect("produce input");
    }

    // First run: never commits (no auto-commit, dropped before its final commit).
    let mut no_commit = s.args.clone();
    no_commit
        .properties
        .push("enable.auto.commit=false".to_owned());
    let seen_a = Arc::new(AtomicUsize::new(0));
    let shutdown_a = Shutdown::new();
    let a = start(&s, &no_commit, seen_a.clone(), &shutdown_a);
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let n: usize = dead_letters(&s.args, &s.rejected, 2, &s.input)
            .await
            .values()
            .sum();
        if n >= invalid {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "first run dead-lettered {n} of {invalid}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    a.abort();
    let _ = a.await;
    // The watchdog task holds the first run's consumer too; stopping it closes that consumer,
    // which leaves the group without committing.
    shutdown_a.trigger();

    // Second run: re-reads everything, and must not write those dead letters again.
    let seen_b = Arc::new(AtomicUsize::new(0));
    let shutdown_b = Shutdown::new();
    let b = start(&s, &s.args, seen_b.clone(), &shutdown_b);
    wait_for(
        "the second run to re-read every input",
        Duration::from_secs(120),
        || seen_b.load(Ordering::SeqCst) >= N,
    )
    .await;
    shutdown_b.trigger();
    b.await.expect("join").expect("second run");

    let counts = dead_letters(&s.args, &s.rejected, 2, &s.input).await;
    let repeated: Vec<_> = counts.iter().filter(|(_, n)| **n != 1).collect();
    assert!(
        repeated.is_empty(),
        "dead letters written more than once: {repeated:?}"
    );
    assert_eq!(counts.len(), invalid, "every invalid input dead-lettered");
}
