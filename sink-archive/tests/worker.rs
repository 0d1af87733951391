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
use worker_runtime::kafka::{KafkaArgs, OutputRecord, Producer};
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

    // Run 1: seqs 1..=5, then one undecodable record, and a checkpoint.
    let mut first: Vec<Vec<u8>> = ev[..5].iter().map(enc).collect();
    first.push(b"not avro".to_vec());
    produce(&kafka, &topics.chained, first).await;
    let cp = Checkpoint {
        chain_id: "test".into(),
        partition: 0,
        first_seq: 1,
        seq: 5,
        head_hash: ev[4].hash.clone(),
        merkle_root: vec![0; 32],
        time_us: common::T0,
        key_id: "k1".into(),
        signature: vec![0; 64],
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
        (6, 8),
        "offset 5 was the dead letter"
    );
    assert_eq!(meta.first_prev_hash, ev[4].hash);
}
