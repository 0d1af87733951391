//! The write-once anchor (`--anchor-url`), with the whole worker against the local stack's
//! Kafka (tansu) and SeaweedFS S3: every checkpoint lands in the archive and in the anchor (a
//! second bucket with its own settings, or a `file://` folder, read-only files); a re-read of
//! every record (a fresh consumer group) writes nothing twice and raises no fork; and an
//! unreachable anchor holds the checkpoint's offset back, so a later run writes it there.
//! Needs `deploy/local/stack.sh up` (and `source deploy/local/env.sh` for another stack).

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use clap::Parser;
use futures::TryStreamExt;
use integrity::checkpoint::CheckpointJson;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use schemas::framing::{encode_single_object_chained, encode_single_object_checkpoint};
use schemas::segment;
use schemas::{ChainedEvent, Checkpoint};
use sink_archive::{Anchor, Config};
use worker_runtime::kafka::admin::{ensure_topics, pipeline_topic_specs};
use worker_runtime::kafka::{KafkaArgs, OutputRecord, Producer};
use worker_runtime::retry::RetryPolicy;
use worker_runtime::{CancellationToken, Shutdown};

/// The anchor bucket of these tests: not the archive's (`S3_BUCKET`). The local SeaweedFS takes
/// it with the stack's test keys; a production anchor bucket has credentials of its own.
const ANCHOR_BUCKET: &str = "audit-anchor-test";

fn env(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

fn brokers() -> String {
    env("KAFKA_BROKERS", "127.0.0.1:9092")
}

fn s3_endpoint() -> String {
    env("S3_ENDPOINT", "http://127.0.0.1:8333")
}

fn s3_keys() -> (String, String) {
    (
        env("S3_ACCESS_KEY_ID", "audit-local-test-access-key"),
        env(
            "S3_SECRET_ACCESS_KEY",
            "audit-local-test-secret-NOT-A-SECRET",
        ),
    )
}

/// Creates the anchor bucket (200, or 409 when it exists) with a SigV4-signed `PUT /bucket`
/// (object_store cannot create buckets); keys go through curl's stdin, not its argv.
fn ensure_anchor_bucket() {
    use std::io::Write;
    let (id, secret) = s3_keys();
    let mut child = std::process::Command::new("curl")
        .args([
            "-K",
            "-",
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "10",
            "--aws-sigv4",
            &format!("aws:amz:{}:s3", env("S3_REGION", "us-east-1")),
            "-X",
            "PUT",
            &format!("{}/{ANCHOR_BUCKET}", s3_endpoint()),
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("curl");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(format!("user = \"{id}:{secret}\"\n").as_bytes())
        .expect("curl config");
    let out = child.wait_with_output().expect("curl");
    let code = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        code == "200" || code == "409",
        "creating bucket {ANCHOR_BUCKET}: HTTP {code} (is the stack up?)"
    );
}

async fn produce(kafka: &KafkaArgs, topic: &str, payloads: Vec<Vec<u8>>) {
    let producer = Producer::new(kafka, "sink-archive-anchor-test").expect("producer");
    for p in payloads {
        producer
            .send(&OutputRecord::new(topic, Some(b"k".to_vec()), p).with_partition(0))
            .await
            .expect("produce (is the stack up? deploy/local/stack.sh up)");
    }
}

/// The group's committed offset of `topic` partition 0 (`None`: nothing committed).
fn committed(kafka: &KafkaArgs, group: &str, topic: &str) -> Option<i64> {
    let mut cfg = kafka.client_config("sink-archive-anchor-offsets");
    cfg.set("group.id", group);
    let consumer: BaseConsumer = cfg.create().expect("offsets client");
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(topic, 0);
    let got = consumer
        .committed_offsets(tpl, Duration::from_secs(10))
        .expect("committed offsets");
    got.elements().first().and_then(|e| match e.offset() {
        Offset::Offset(o) => Some(o),
        _ => None,
    })
}

fn checkpoint(seq: i64, head: &[u8], time_us: i64) -> Checkpoint {
    Checkpoint {
        chain_id: "anchor-test".into(),
        partition: 0,
        first_seq: 1,
        seq,
        head_hash: head.to_vec(),
        merkle_root: vec![0; 32],
        time_us,
        partition_count: 1,
        tree_root: vec![seq as u8; 32],
        key_id: "k1".into(),
        signature: vec![seq as u8; 64],
    }
}

/// Where the anchor of a run is.
enum Place {
    /// `s3://audit-anchor-test/<prefix>` at this endpoint.
    S3 { prefix: String },
    /// `file://<dir>`.
    Folder(std::path::PathBuf),
}

impl Place {
    fn url(&self) -> String {
        match self {
            Place::S3 { prefix } => format!("s3://{ANCHOR_BUCKET}/{prefix}"),
            Place::Folder(dir) => format!("file://{}", dir.display()),
        }
    }

    /// The anchor's flags, reaching S3 at `endpoint`.
    fn args(&self, endpoint: &str) -> Vec<String> {
        let mut a = vec!["--anchor-url".to_owned(), self.url()];
        if let Place::S3 { .. } = self {
            let (id, secret) = s3_keys();
            a.extend([
                "--anchor-s3-endpoint".to_owned(),
                endpoint.to_owned(),
                "--anchor-s3-access-key-id".to_owned(),
                id,
                "--anchor-s3-secret-access-key".to_owned(),
                secret,
                "--anchor-s3-request-retry-secs".to_owned(),
                "1".to_owned(),
            ]);
        }
        a
    }

    /// A reader of the anchor (the test's own, straight to S3).
    fn reader(&self) -> Anchor {
        let mut argv = vec![
            "sink-archive".to_owned(),
            "--health-addr".to_owned(),
            String::new(),
        ];
        argv.extend(self.args(&s3_endpoint()));
        let c = Config::parse_from(argv);
        Anchor::build(
            &c.anchor,
            &c.archive,
            RetryPolicy {
                max_attempts: 3,
                ..Default::default()
            },
            CancellationToken::new(),
        )
        .expect("anchor")
        .expect("configured")
    }
}

/// Every anchored object: name → parsed checkpoint.
async fn anchored(anchor: &Anchor) -> Vec<(String, CheckpointJson)> {
    let names: Vec<String> = match anchor
        .store()
        .list(Some(&object_store::path::Path::from("anchor")))
        .map_ok(|m| m.location.to_string())
        .try_collect()
        .await
    {
        Ok(v) => v,
        Err(object_store::Error::NotFound { .. }) => Vec::new(),
        Err(e) => panic!("listing the anchor: {e}"),
    };
    let mut out = Vec::new();
    for n in names {
        let bytes = anchor
            .store()
            .get(&object_store::path::Path::from(n.as_str()))
            .await
            .expect("get")
            .bytes()
            .await
            .expect("bytes");
        out.push((n, serde_json::from_slice(&bytes).expect("anchored JSON")));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

fn config(prefix: &str, group: &str, archive: &Path, anchor: &[String]) -> Config {
    let mut argv: Vec<String> = [
        "sink-archive",
        "--health-addr",
        "",
        "--kafka-brokers",
        &brokers(),
        "--topic-prefix",
        prefix,
        "--group-id",
        group,
        "--archive-local-dir",
        archive.to_str().expect("utf8"),
        "--segment-max-age-secs",
        "1",
        "--retry-min-delay-ms",
        "20",
        "--retry-max-delay-ms",
        "200",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    argv.extend(anchor.iter().cloned());
    Config::parse_from(argv)
}

/// Polls `done` every 100 ms for up to 60 s (panics after, or if the worker stopped).
async fn wait_until<F: std::future::Future<Output = bool>>(
    what: &str,
    handle: &tokio::task::JoinHandle<Result<(), sink_archive::Error>>,
    done: impl Fn() -> F,
) {
    let start = Instant::now();
    while !done().await {
        assert!(!handle.is_finished(), "worker stopped early ({what})");
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn topics(tag: &str) -> (String, String, KafkaArgs) {
    let id = uuid::Uuid::new_v4().simple().to_string();
    let prefix = format!("t-anchor-{tag}-{id}.");
    let kafka = KafkaArgs::local(&brokers(), &prefix);
    ensure_topics(&kafka, &pipeline_topic_specs(&kafka, 1), 1)
        .await
        .expect("topics (is Kafka up?)");
    (id, prefix, kafka)
}

/// Checkpoints 5, 8 and a heartbeat of 8 reach both the archive and `place`; a second run under
/// a fresh group re-reads every record and changes nothing.
async fn both_copies_once(place: Place, tag: &str) {
    let (id, prefix, kafka) = topics(tag).await;
    let t = kafka.topics();
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().to_owned();
    let ev: Vec<ChainedEvent> = common::chain(0, 8, |i| common::T0 + i);
    let enc = |e: &ChainedEvent| encode_single_object_chained(e).expect("encode");
    let cps = [
        checkpoint(5, &ev[4].hash, common::T0 + 5),
        checkpoint(8, &ev[7].hash, common::T0 + 8),
        checkpoint(8, &ev[7].hash, common::T0 + 60_000_000), // heartbeat
    ];
    produce(&kafka, &t.chained, ev.iter().map(enc).collect()).await;
    produce(
        &kafka,
        &t.checkpoints,
        cps.iter()
            .map(|c| encode_single_object_checkpoint(c).expect("cp"))
            .collect(),
    )
    .await;
    let reader = place.reader();
    let anchor_args = place.args(&s3_endpoint());
    let expected: Vec<(String, CheckpointJson)> = cps
        .iter()
        .map(|c| {
            (
                segment::anchor_key(&c.chain_id, c.partition, c.seq, &c.key_id, c.time_us),
                CheckpointJson::from(c),
            )
        })
        .collect();
    let archived = |c: &Checkpoint| {
        let plain = root.join(segment::checkpoint_key(0, c.seq, "k1"));
        let hb = root.join(segment::checkpoint_heartbeat_key(0, c.seq, "k1", c.time_us));
        let plain_is_it = plain.is_file()
            && serde_json::from_slice::<CheckpointJson>(&std::fs::read(&plain).expect("read"))
                .is_ok_and(|j| j == CheckpointJson::from(c));
        plain_is_it || hb.is_file()
    };

    for (run, group) in [(1, format!("g1-{id}")), (2, format!("g2-{id}"))] {
        let shutdown = Shutdown::new();
        let handle = tokio::spawn(sink_archive::run(
            config(&prefix, &group, &root, &anchor_args),
            shutdown.clone(),
        ));
        // Run 2 (fresh group) starts at offset 0: done once it committed past every record.
        wait_until(&format!("run {run}"), &handle, || {
            let (reader, expected) = (&reader, &expected);
            let (kafka, group, topic) = (&kafka, &group, &t.checkpoints);
            async move {
                anchored(reader).await == *expected
                    && (run == 1 || committed(kafka, group, topic) == Some(3))
            }
        })
        .await;
        shutdown.trigger();
        handle.await.expect("join").expect("worker result");
        assert!(
            cps.iter().all(archived),
            "run {run}: the archive holds each checkpoint"
        );
        assert_eq!(
            committed(&kafka, &group, &t.checkpoints),
            Some(3),
            "run {run}: every checkpoint committed"
        );
        // Exactly the three, unchanged: the second run's puts found identical objects.
        assert_eq!(anchored(&reader).await, expected, "run {run}");
        if let Place::Folder(dir) = &place {
            for (key, _) in &expected {
                let meta = std::fs::metadata(dir.join(key)).expect("anchored file");
                use std::os::unix::fs::PermissionsExt;
                assert_eq!(meta.permissions().mode() & 0o777, 0o444, "{key}");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoints_reach_an_s3_anchor_once() {
    ensure_anchor_bucket();
    let prefix = format!("test-anchor/{}", uuid::Uuid::new_v4().simple());
    both_copies_once(Place::S3 { prefix }, "s3").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoints_reach_a_folder_anchor_once_read_only() {
    let dir = tempfile::tempdir().expect("tempdir");
    both_copies_once(Place::Folder(dir.path().join("anchor-root")), "dir").await;
}

/// The anchor is unreachable from the start (the sink reaches it through a proxy the test has
/// cut): the checkpoint gets into the archive, but its offset is not committed, and the sink
/// keeps trying. The next run, with the anchor reachable, writes it there and commits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_anchor_holds_the_checkpoint_offset_back() {
    ensure_anchor_bucket();
    let (id, prefix, kafka) = topics("down").await;
    let t = kafka.topics();
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().to_owned();
    let place = Place::S3 {
        prefix: format!("test-anchor/{id}"),
    };
    let reader = place.reader();
    let endpoint = s3_endpoint();
    let proxy =
        worker_runtime::testing::proxy::Proxy::start(endpoint.trim_start_matches("http://")).await;
    proxy.cut();
    let ev: Vec<ChainedEvent> = common::chain(0, 5, |i| common::T0 + i);
    let enc = |e: &ChainedEvent| encode_single_object_chained(e).expect("encode");
    let cp = checkpoint(5, &ev[4].hash, common::T0 + 5);
    produce(&kafka, &t.chained, ev.iter().map(enc).collect()).await;
    produce(
        &kafka,
        &t.checkpoints,
        vec![encode_single_object_checkpoint(&cp).expect("cp")],
    )
    .await;
    let group = format!("g-{id}");
    let archived = root.join(segment::checkpoint_key(0, 5, "k1"));

    // Run 1: the anchor is away.
    let shutdown = Shutdown::new();
    let proxied = format!("http://127.0.0.1:{}", proxy.port());
    let handle = tokio::spawn(sink_archive::run(
        config(&prefix, &group, &root, &place.args(&proxied)),
        shutdown.clone(),
    ));
    wait_until("the archive's copy", &handle, || {
        let archived = archived.clone();
        async move { archived.is_file() }
    })
    .await;
    // The sink keeps trying the anchor (each refused connection is one attempt).
    proxy.wait_refused(0, 3).await;
    assert!(!handle.is_finished(), "the sink stopped during the outage");
    assert!(anchored(&reader).await.is_empty());
    shutdown.trigger();
    handle.await.expect("join").expect("worker result");
    // The checkpoint is at offset 0: the group may commit up to it (0 = read it next), never
    // past it.
    let held = committed(&kafka, &group, &t.checkpoints);
    assert!(
        held.is_none_or(|o| o <= 0),
        "the checkpoint's offset must not be committed while the anchor lacks it: {held:?}"
    );
    assert_eq!(
        committed(&kafka, &group, &t.chained),
        Some(5),
        "the segments were stored"
    );

    // Run 2, same group, the anchor's right address: the checkpoint is read again and anchored.
    let shutdown = Shutdown::new();
    let handle = tokio::spawn(sink_archive::run(
        config(&prefix, &group, &root, &place.args(&endpoint)),
        shutdown.clone(),
    ));
    let expected = vec![(
        segment::anchor_key("anchor-test", 0, 5, "k1", cp.time_us),
        CheckpointJson::from(&cp),
    )];
    wait_until("the anchor's copy", &handle, || {
        let (reader, expected) = (&reader, &expected);
        async move { anchored(reader).await == *expected }
    })
    .await;
    shutdown.trigger();
    handle.await.expect("join").expect("worker result");
    assert_eq!(committed(&kafka, &group, &t.checkpoints), Some(1));
}
