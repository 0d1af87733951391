//! The whole worker against the local stack's Kafka (tansu) with a local-folder archive: records
//! archived into segments with manifests, checkpoints stored, undecodable records dead-lettered,
//! and a second run under a *fresh* consumer group (no committed offset, so it starts at the
//! earliest record) resuming from the archive alone: no overlap, no gap.
//! Needs `deploy/local/stack.sh up`; FAILS when Kafka is down.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use clap::Parser;
use schemas::framing::{encode_single_object_chained, encode_single_object_checkpoint};
use schemas::segment::{self, ObjectKind};
use schemas::{ChainedEvent, Checkpoint};
use sink_archive::Config;
use worker_runtime::kafka::admin::{ensure_topics, pipeline_topic_specs};
use worker_runtime::kafka::dlq::HEADER_REASON_CODE;
use worker_runtime::kafka::{KafkaArgs, OutputRecord, Producer};
use worker_runtime::testing::topic::read_topic;
use worker_runtime::Shutdown;

fn brokers() -> String {
    std::env::var("KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

async fn produce(kafka: &KafkaArgs, topic: &str, payloads: Vec<Vec<u8>>) {
    let producer = Producer::new(kafka, "sink-archive-test").expect("producer");
    for p in payloads {
        producer
            .send(&OutputRecord::new(topic, Some(b"k".to_vec()), p).with_partition(0))
            .await
            .expect("produce (is the stack up? deploy/local/stack.sh up)");
    }
}

fn segment_names(root: &Path, prefix: &str) -> Vec<(segment::SegmentKey, ObjectKind)> {
    let base = root.join(prefix);
    let mut out = Vec::new();
    let mut stack = vec![base.clone()];
    while let Some(dir) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if let Ok(rel) = p.strip_prefix(&base) {
                if let Some(k) = segment::parse_key(&rel.to_string_lossy()) {
                    out.push(k);
                }
            }
        }
    }
    out.sort_by_key(|(k, kind)| (k.first_seq, *kind == ObjectKind::Manifest));
    out
}

/// Runs the worker until `done` holds (or fails after 60 s), then shuts it down.
async fn run_until(config: Config, done: impl Fn() -> bool) {
    let shutdown = Shutdown::new();
    let handle = tokio::spawn(sink_archive::run(config, shutdown.clone()));
    let start = Instant::now();
    while !done() {
        assert!(!handle.is_finished(), "worker stopped early");
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "timed out waiting for the archive"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    shutdown.trigger();
    handle.await.expect("join").expect("worker result");
}

fn config(prefix: &str, group: &str, dir: &Path) -> Config {
    Config::parse_from([
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
        dir.to_str().expect("utf8"),
        "--archive-prefix",
        "a",
        "--segment-max-age-secs",
        "1",
        "--retry-max-attempts",
        "3",
    ])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn archives_and_resumes_from_the_archive_alone() {
    let id = uuid::Uuid::new_v4().simple().to_string();
    let prefix = format!("t-archive-{id}.");
    let kafka = KafkaArgs::local(&brokers(), &prefix);
    ensure_topics(&kafka, &pipeline_topic_specs(&kafka, 1), 1)
        .await
        .expect("topics (is Kafka up?)");
    let topics = kafka.topics();
    let dir = tempfile::tempdir().expect("tempdir");
    let ev: Vec<ChainedEvent> = common::chain(0, 8, |i| common::T0 + i);
    let enc = |e: &ChainedEvent| encode_single_object_chained(e).expect("encode");

    // Run 1: seqs 1..=5, then one undecodable record, one no segment can hold (seq 0), and
    // a checkpoint.
    let mut first: Vec<Vec<u8>> = ev[..5].iter().map(enc).collect();
    first.push(b"not avro".to_vec());
    let mut seq0 = ev[0].clone();
    seq0.seq = 0;
    first.push(enc(&seq0));
    produce(&kafka, &topics.chained, first).await;
    let cp = Checkpoint {
        chain_id: "test".into(),
        partition: 0,
        first_seq: 1,
        seq: 5,
        head_hash: ev[4].hash.clone(),
        merkle_root: vec![0; 32],
        time_us: common::T0,
        partition_count: 0,
        key_id: "k1".into(),
        signature: vec![0; 64],
        tree_root: Vec::new(),
    };
    produce(
        &kafka,
        &topics.checkpoints,
        vec![encode_single_object_checkpoint(&cp).expect("cp")],
    )
    .await;
    let root = dir.path().to_owned();
    let cp_file = root.join("a").join(segment::checkpoint_key(0, 5, "k1"));
    run_until(config(&prefix, &format!("g1-{id}"), &root), || {
        cp_file.is_file()
            && segment_names(&root, "a")
                .iter()
                .any(|(k, _)| k.last_seq == 5)
    })
    .await;

    // Run 2 under a fresh group: starts at offset 0, must seek past what is archived.
    produce(&kafka, &topics.chained, ev[5..].iter().map(enc).collect()).await;
    run_until(config(&prefix, &format!("g2-{id}"), &root), || {
        segment_names(&root, "a")
            .iter()
            .any(|(k, kind)| k.last_seq == 8 && *kind == ObjectKind::Manifest)
    })
    .await;

    let names = segment_names(&root, "a");
    let ranges: Vec<(i64, i64, ObjectKind)> = names
        .iter()
        .map(|(k, kind)| (k.first_seq, k.last_seq, *kind))
        .collect();
    assert_eq!(
        ranges,
        vec![
            (1, 5, ObjectKind::Segment),
            (1, 5, ObjectKind::Manifest),
            (6, 8, ObjectKind::Segment),
            (6, 8, ObjectKind::Manifest),
        ],
        "no gap, no overlap"
    );
    let key = &names[2].0;
    let bytes = std::fs::read(root.join("a").join(key.object_key())).expect("read segment");
    let (meta, stored) = segment::read_segment(&bytes).expect("segment");
    assert_eq!(stored, ev[5..].to_vec());
    assert_eq!(
        (meta.first_offset, meta.last_offset),
        (7, 9),
        "offsets 5 and 6 were dead letters"
    );
    assert_eq!(meta.first_prev_hash, ev[4].hash);
    // Both dead-lettered with their reason, the refused record unchanged.
    let reasons: Vec<(Option<String>, Vec<u8>)> =
        read_topic(&kafka, &topics.rejected, 1, Duration::from_secs(10))
            .await
            .expect("scan the dead letters")
            .into_iter()
            .map(|r| (r.header(HEADER_REASON_CODE), r.payload))
            .collect();
    let codes: Vec<Option<&str>> = reasons.iter().map(|(c, _)| c.as_deref()).collect();
    // Run 2's fresh group resumed at the archive's end, offset 5, so it read both again: a
    // dead letter is sent at least once.
    assert_eq!(
        codes,
        [
            Some("bad_framing"),
            Some("unarchivable"),
            Some("bad_framing"),
            Some("unarchivable")
        ],
    );
    assert_eq!(reasons[1].1, enc(&seq0));
}

fn checkpoint(partition: i32, seq: i64, head: &[u8]) -> Checkpoint {
    Checkpoint {
        chain_id: "test".into(),
        partition,
        first_seq: 1,
        seq,
        head_hash: head.to_vec(),
        merkle_root: vec![0; 32],
        time_us: common::T0,
        partition_count: 0,
        tree_root: Vec::new(),
        key_id: "k1".into(),
        signature: vec![0; 64],
    }
}

/// Polls `done` every 100 ms for up to 60 s (panics after, or if the worker stopped).
async fn wait_until(
    what: &str,
    handle: &tokio::task::JoinHandle<Result<(), sink_archive::Error>>,
    done: impl Fn() -> bool,
) {
    let start = Instant::now();
    while !done() {
        assert!(!handle.is_finished(), "worker stopped early ({what})");
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A checkpoint is archived only once the segments covering its seq are, so that an offline
/// verifier of the archive never sees a signed head beyond the archived events (a false
/// truncation). One waiting checkpoint does not hold back those of other chain partitions, and
/// it survives a restart (the checkpoints topic's offset is stored only up to it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoints_wait_for_the_segments_they_cover() {
    let id = uuid::Uuid::new_v4().simple().to_string();
    let prefix = format!("t-archive-cp-{id}.");
    let kafka = KafkaArgs::local(&brokers(), &prefix);
    ensure_topics(&kafka, &pipeline_topic_specs(&kafka, 1), 1)
        .await
        .expect("topics (is Kafka up?)");
    let topics = kafka.topics();
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().to_owned();
    let ev: Vec<ChainedEvent> = common::chain(0, 8, |i| common::T0 + i);
    let other: Vec<ChainedEvent> = common::chain(5, 3, |i| common::T0 + i);
    let enc = |e: &ChainedEvent| encode_single_object_chained(e).expect("encode");
    let cp_enc = |c: &Checkpoint| encode_single_object_checkpoint(c).expect("cp");
    let cp_file = |p: i32, seq: i64| root.join("a").join(segment::checkpoint_key(p, seq, "k1"));

    // Seqs 1..=5 of chain 0, then checkpoints: chain 0 at 8 (ahead of its events), chain 5 at
    // 3 (a chain partition archived elsewhere: here, by the test), chain 0 at 5.
    produce(&kafka, &topics.chained, ev[..5].iter().map(enc).collect()).await;
    produce(
        &kafka,
        &topics.checkpoints,
        vec![
            cp_enc(&checkpoint(0, 8, &ev[7].hash)),
            cp_enc(&checkpoint(5, 3, &other[2].hash)),
            cp_enc(&checkpoint(0, 5, &ev[4].hash)),
        ],
    )
    .await;
    let group = format!("g-{id}");
    let shutdown = Shutdown::new();
    let handle = tokio::spawn(sink_archive::run(
        config(&prefix, &group, &root),
        shutdown.clone(),
    ));
    wait_until("checkpoint 0@5", &handle, || cp_file(0, 5).is_file()).await;
    // Read after the two others, archived before them: they wait for their segments.
    assert!(
        segment_names(&root, "a")
            .iter()
            .any(|(k, _)| k.last_seq == 5),
        "checkpoint 0@5 stored before its segment"
    );
    assert!(
        !cp_file(0, 8).exists(),
        "checkpoint 0@8 stored before its events"
    );
    assert!(
        !cp_file(5, 3).exists(),
        "checkpoint 5@3 stored before its events"
    );

    // Chain 5's segments appear (another instance's work): its checkpoint follows.
    let store = sink_archive::build_store(&sink_archive::ArchiveStoreArgs {
        archive_local_dir: Some(root.clone()),
        archive_prefix: "a".into(),
        ..Default::default()
    })
    .expect("store");
    common::archive(store)
        .write_events(&other, "elsewhere.chained", 0, 2)
        .await
        .expect("chain 5 segment");
    wait_until("checkpoint 5@3", &handle, || cp_file(5, 3).is_file()).await;
    assert!(!cp_file(0, 8).exists());
    shutdown.trigger();
    handle.await.expect("join").expect("worker result");

    // Restart (same group): 0@8 was not committed past, so it is read again, and archived
    // once seqs 6..=8 are.
    produce(&kafka, &topics.chained, ev[5..].iter().map(enc).collect()).await;
    let shutdown = Shutdown::new();
    let handle = tokio::spawn(sink_archive::run(
        config(&prefix, &group, &root),
        shutdown.clone(),
    ));
    wait_until("checkpoint 0@8", &handle, || cp_file(0, 8).is_file()).await;
    assert!(
        segment_names(&root, "a")
            .iter()
            .any(|(k, kind)| k.partition == 0 && k.last_seq == 8 && *kind == ObjectKind::Segment),
        "checkpoint 0@8 stored before its segment"
    );
    shutdown.trigger();
    handle.await.expect("join").expect("worker result");
}

fn s3_env(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

/// The local stack's S3 (deploy/local/env.sh) at `endpoint`, under `prefix`.
fn s3_args(endpoint: &str, prefix: &str) -> sink_archive::ArchiveStoreArgs {
    sink_archive::ArchiveStoreArgs {
        archive_url: format!("s3://{}", s3_env("S3_BUCKET", "audit-archive")),
        archive_prefix: prefix.to_owned(),
        s3_endpoint: endpoint.to_owned(),
        s3_region: Some(s3_env("S3_REGION", "us-east-1")),
        s3_access_key_id: worker_runtime::Secret::new(s3_env(
            "S3_ACCESS_KEY_ID",
            "audit-local-test-access-key",
        )),
        s3_secret_access_key: worker_runtime::Secret::new(s3_env(
            "S3_SECRET_ACCESS_KEY",
            "audit-local-test-secret-NOT-A-SECRET",
        )),
        s3_allow_http: true,
        s3_request_retry_secs: Some(1),
        ..Default::default()
    }
}

/// S3 goes away three times (the sink reaches SeaweedFS through a proxy the test cuts): at
/// the sink's start, with segments and a checkpoint due (for longer than the consumer's
/// `max.poll.interval.ms`, lowered to 10 s), and with requests in flight. Each
/// time the sink keeps retrying (the proxy counts its refused attempts), then resumes. In the
/// end the archive holds seqs 1..=30 exactly once, in contiguous segments, and the checkpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_outages_are_survived_without_loss_or_overlap() {
    let id = uuid::Uuid::new_v4().simple().to_string();
    let prefix = format!("t-archive-out-{id}.");
    let kafka = KafkaArgs::local(&brokers(), &prefix);
    ensure_topics(&kafka, &pipeline_topic_specs(&kafka, 1), 1)
        .await
        .expect("topics (is Kafka up?)");
    let topics = kafka.topics();
    let endpoint = s3_env("S3_ENDPOINT", "http://127.0.0.1:8333");
    let proxy =
        worker_runtime::testing::proxy::Proxy::start(endpoint.trim_start_matches("http://")).await;
    let key_prefix = format!("test-sink-archive/outage-{id}");
    let direct = common::archive(
        sink_archive::build_store(&s3_args(&endpoint, &key_prefix)).expect("direct store"),
    );
    let ev: Vec<ChainedEvent> = common::chain(0, 30, |i| common::T0 + i);
    let enc = |e: &ChainedEvent| encode_single_object_chained(e).expect("encode");
    let proxied = format!("http://127.0.0.1:{}", proxy.port());
    let args = s3_args(&proxied, &key_prefix);
    let config = Config::parse_from([
        "sink-archive",
        "--health-addr",
        "",
        "--kafka-brokers",
        &brokers(),
        "--topic-prefix",
        &prefix,
        "--group-id",
        &format!("g-{id}"),
        "--archive-url",
        &args.archive_url,
        "--archive-prefix",
        &key_prefix,
        "--s3-endpoint",
        &proxied,
        "--s3-region",
        args.s3_region.as_deref().unwrap_or("us-east-1"),
        "--s3-access-key-id",
        args.s3_access_key_id.expose(),
        "--s3-secret-access-key",
        args.s3_secret_access_key.expose(),
        "--s3-request-retry-secs",
        "1",
        "--segment-max-age-secs",
        "1",
        "--retry-min-delay-ms",
        "20",
        "--retry-max-delay-ms",
        "200",
        // Outage 2 outlasts this, so the sink, blocked retrying, also drops out of its group.
        "--kafka-property",
        "max.poll.interval.ms=10000",
        // The shared bucket has no Object Lock (tests/retention.rs covers locking).
        "--retention-mode",
        "off",
    ]);
    let archived = |direct: &sink_archive::Archive| {
        let direct = direct.clone();
        async move { direct.archived_seq(0).await.expect("list") }
    };
    let wait_archived = |n: i64| {
        let direct = direct.clone();
        async move {
            let start = Instant::now();
            while archived(&direct).await != Some(n) {
                assert!(
                    start.elapsed() < Duration::from_secs(90),
                    "timed out waiting for seq {n} in the archive"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };

    // 1. Away at start.
    proxy.cut();
    produce(&kafka, &topics.chained, ev[..4].iter().map(enc).collect()).await;
    let shutdown = Shutdown::new();
    let handle = tokio::spawn(sink_archive::run(config, shutdown.clone()));
    proxy.wait_refused(0, 5).await;
    assert!(!handle.is_finished(), "the sink stopped during the outage");
    proxy.restore();
    wait_archived(4).await;

    // 2. Away with a segment and a checkpoint due.
    let refused = proxy.refused();
    proxy.cut();
    produce(&kafka, &topics.chained, ev[4..8].iter().map(enc).collect()).await;
    produce(
        &kafka,
        &topics.checkpoints,
        vec![encode_single_object_checkpoint(&checkpoint(0, 8, &ev[7].hash)).expect("cp")],
    )
    .await;
    proxy.wait_refused(refused, 5).await;
    // Longer than max.poll.interval.ms: the sink must still be trying at the end of it.
    tokio::time::sleep(Duration::from_secs(15)).await;
    proxy.wait_refused(proxy.refused(), 3).await;
    assert!(!handle.is_finished(), "the sink stopped during the outage");
    proxy.restore();
    wait_archived(8).await;

    // 3. Cut with requests in flight.
    let refused = proxy.refused();
    produce(&kafka, &topics.chained, ev[8..20].iter().map(enc).collect()).await;
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    proxy.cut();
    produce(&kafka, &topics.chained, ev[20..].iter().map(enc).collect()).await;
    proxy.wait_refused(refused, 5).await;
    proxy.restore();
    wait_archived(30).await;
    let cp_key = segment::checkpoint_key(0, 8, "k1");
    let start = Instant::now();
    while direct.get(&cp_key).await.is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "checkpoint never archived"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(!handle.is_finished(), "the sink stopped");
    shutdown.trigger();
    handle.await.expect("join").expect("worker result");

    // Exactly 1..=30, contiguous, no overlap, every segment with its manifest.
    let names = direct
        .list(&segment::partition_prefix(0))
        .await
        .expect("list");
    let plan = sink_archive::resume::plan_resume(0, names.iter().map(String::as_str));
    assert!(plan.overlaps.is_empty(), "{:?}", plan.overlaps);
    assert!(plan.missing_manifests.is_empty());
    let mut keys: Vec<segment::SegmentKey> = names
        .iter()
        .filter_map(|n| segment::parse_key(n))
        .filter(|(_, kind)| *kind == ObjectKind::Segment)
        .map(|(k, _)| k)
        .collect();
    keys.sort_by_key(|k| k.first_seq);
    let mut stored = Vec::new();
    for k in &keys {
        let bytes = direct.get(&k.object_key()).await.expect("segment");
        stored.extend(segment::read_segment(&bytes).expect("read").1);
    }
    assert_eq!(stored, ev, "every seq once, in order");
}
