//! Helpers shared by the chainer's integration tests against a real Kafka API (the local
//! stack's tansu, or `CHAINER_SMOKE_BROKERS`). Each test file uses only some of them.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use integrity::checkpoint::{generate_pkcs8, KeySet, SigningKey};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::FutureRecord;
use schemas::framing::{decode_checkpoint, encode_single_object_event};
use schemas::testing::sample_event;
use schemas::Checkpoint;
use worker_runtime::kafka::tail::{scan, ScanStart};
use worker_runtime::kafka::{KafkaArgs, Producer};

/// The brokers the tests talk to: `CHAINER_SMOKE_BROKERS`, else the local stack's.
pub fn brokers() -> String {
    std::env::var("CHAINER_SMOKE_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

/// Whether any of `brokers` accepts a TCP connection (tests skip with a note when none does).
pub fn broker_up(brokers: &str) -> bool {
    brokers
        .split(',')
        .filter_map(|b| b.parse::<std::net::SocketAddr>().ok())
        .any(|a| std::net::TcpStream::connect_timeout(&a, Duration::from_secs(1)).is_ok())
}

/// The brokers, or `None` after printing the skip note when no broker answers.
pub fn brokers_or_skip() -> Option<String> {
    let brokers = brokers();
    if !broker_up(&brokers) {
        eprintln!("SKIPPED: no Kafka broker at {brokers}");
        return None;
    }
    Some(brokers)
}

/// A topic prefix no other run uses: `{name}-{pid}-{nanos}.`, so that every run of a test gets
/// its own topics and consumer groups on the shared broker.
pub fn fresh_prefix(name: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{name}-{}-{nanos}.", std::process::id())
}

/// A sample event with id `id`, framed as the chainer's input.
pub fn ev(id: &str) -> Vec<u8> {
    let mut e = sample_event();
    e.event_id = id.to_owned();
    encode_single_object_event(&e).unwrap()
}

/// Every payload of `topic`/`p` from offset 0, read until the partition has been idle for
/// `idle` (the scan's end-of-data timeout).
pub async fn read_all(args: &KafkaArgs, topic: &str, p: i32, idle: Duration) -> Vec<Vec<u8>> {
    let out = Arc::new(Mutex::new(Vec::new()));
    let o = out.clone();
    let _ = scan(args, topic, p, ScanStart::Offset(0), idle, move |m| {
        use rdkafka::Message;
        o.lock()
            .unwrap()
            .push(m.payload().unwrap_or_default().to_vec());
    })
    .await
    .unwrap();
    let v = out.lock().unwrap().clone();
    v
}

/// Every checkpoint of partitions `0..partitions` of the checkpoints topic, decoded, in
/// partition order (see [`read_all`] for `idle`).
pub async fn read_checkpoints(
    args: &KafkaArgs,
    partitions: i32,
    idle: Duration,
) -> Vec<Checkpoint> {
    let mut out = Vec::new();
    for p in 0..partitions {
        for b in read_all(args, &args.topics().checkpoints, p, idle).await {
            out.push(decode_checkpoint(&b, None).unwrap());
        }
    }
    out
}

/// Produces `payloads` to `topic`/`p` in order, pipelined (one idempotent producer keeps the
/// order), and waits for every acknowledgement. A full local queue is waited out; any other
/// refusal fails the test.
pub async fn produce_pipelined(producer: &Producer, topic: &str, p: i32, payloads: &[Vec<u8>]) {
    let mut pending = Vec::with_capacity(payloads.len());
    for v in payloads {
        loop {
            let r: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(topic).partition(p).payload(v);
            match producer.inner().send_result(r) {
                Ok(d) => {
                    pending.push(d);
                    break;
                }
                Err((e, _)) => {
                    assert!(
                        matches!(
                            e,
                            rdkafka::error::KafkaError::MessageProduction(
                                rdkafka::types::RDKafkaErrorCode::QueueFull
                            )
                        ),
                        "{e}"
                    );
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        }
    }
    for d in pending {
        d.await.unwrap().unwrap();
    }
}

/// High watermark of `topic`/`p` (cheap to poll, unlike reading the partition), asked by a
/// client named `client`; -1 when the broker does not answer within `timeout` (the callers
/// poll again).
pub async fn high(args: &KafkaArgs, client: &str, topic: &str, p: i32, timeout: Duration) -> i64 {
    let c: BaseConsumer = args
        .client_config(client)
        .set("group.id", format!("{client}-unused"))
        .create()
        .unwrap();
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || c.fetch_watermarks(&topic, p, timeout))
        .await
        .unwrap()
        .map_or(-1, |(_, h)| h)
}

/// Polls `f` every `every` until it holds; fails the test naming `what` after `limit`.
pub async fn until<F, Fut>(what: &str, limit: Duration, every: Duration, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while !f().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(every).await;
    }
}

/// A checkpoint signing key of the test's own: its PKCS#8 file (in a directory the test
/// removes at the end) and the key set that verifies its signatures, under key id "k1".
pub struct TestKey {
    /// Directory holding the key file.
    pub dir: PathBuf,
    /// The PKCS#8 file, for `--checkpoint-key-file`.
    pub path: PathBuf,
    /// The public key, for verifying checkpoints.
    pub keys: KeySet,
}

impl TestKey {
    /// Generates a key and writes it to `dir/k.pk8` (creating `dir`).
    pub fn new(dir: PathBuf) -> TestKey {
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("k.pk8");
        let der = generate_pkcs8().unwrap();
        std::fs::write(&path, der.expose()).unwrap();
        let mut keys = KeySet::default();
        keys.add(
            SigningKey::from_pkcs8("k1", der.expose())
                .unwrap()
                .public_entry(0, None),
        )
        .unwrap();
        TestKey { dir, path, keys }
    }

    /// The chainer options that make it sign checkpoints with this key.
    pub fn args(&self) -> [&str; 4] {
        [
            "--checkpoint-key-file",
            self.path.to_str().unwrap(),
            "--checkpoint-key-id",
            "k1",
        ]
    }

    /// Removes the key's directory (best effort).
    pub fn remove(&self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A chainer config for `brokers`/`prefix` without a health listener, consuming as `group`,
/// plus the test's own options `extra`.
pub fn chainer_config(brokers: &str, prefix: &str, group: &str, extra: &[&str]) -> chainer::Config {
    use clap::Parser;
    let mut args = vec![
        "chainer",
        "--kafka-brokers",
        brokers,
        "--topic-prefix",
        prefix,
        "--health-addr",
        "",
        "--group-id",
        group,
    ];
    args.extend_from_slice(extra);
    chainer::Config::parse_from(args)
}

/// A chainer running in the background: its status (readiness, partitions, restarts), the
/// switch that stops it, and its task.
pub struct RunningChainer {
    pub status: chainer::status::WorkerStatus,
    pub shutdown: worker_runtime::Shutdown,
    pub task: tokio::task::JoinHandle<Result<(), chainer::Error>>,
}

/// Starts `chainer::run_with_status(config)` on a task of its own.
pub fn spawn_chainer(config: chainer::Config) -> RunningChainer {
    let status = chainer::status::WorkerStatus::default();
    let shutdown = worker_runtime::Shutdown::new();
    let task = tokio::spawn(chainer::run_with_status(
        config,
        shutdown.clone(),
        status.clone(),
    ));
    RunningChainer {
        status,
        shutdown,
        task,
    }
}
