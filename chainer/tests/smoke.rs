//! Smoke test against a real Kafka API (the local stack's tansu, or `CHAINER_SMOKE_BROKERS`).
//! Skipped (passes with a note) when no broker answers.
//!
//! Two runs on the same topics and group, with a committed offset pushed ahead of the chain in
//! between: the chain continues without gap, fork or duplicate; duplicates and garbage are
//! handled; checkpoints verify and seal the whole chain after a clean shutdown.

mod common;

use std::time::{Duration, Instant};

use common::{brokers_or_skip, chainer_config, ev, fresh_prefix, read_checkpoints, TestKey};
use integrity::verify::{verify_partition, OwnedRecord, VerifyOptions};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use schemas::framing::decode_chained;
use worker_runtime::kafka::admin::{ensure_topics, pipeline_topic_specs};
use worker_runtime::kafka::{KafkaArgs, OutputRecord, Producer};
use worker_runtime::Shutdown;

const PARTITIONS: i32 = 2;
/// How long a read of a partition waits for more records.
const SCAN_IDLE: Duration = Duration::from_secs(20);

async fn read_all(args: &KafkaArgs, topic: &str, p: i32) -> Vec<Vec<u8>> {
    common::read_all(args, topic, p, SCAN_IDLE).await
}

async fn produce(producer: &Producer, topic: &str, p: i32, payloads: Vec<Vec<u8>>) {
    for (i, v) in payloads.into_iter().enumerate() {
        let rec = OutputRecord::new(topic, Some(format!("k{i}").into_bytes()), v).with_partition(p);
        producer.send(&rec).await.unwrap();
    }
}

async fn wait_for(args: &KafkaArgs, topic: &str, want: &[usize]) {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let mut counts = Vec::new();
        for p in 0..PARTITIONS {
            counts.push(read_all(args, topic, p).await.len());
        }
        if counts == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{topic}: have {counts:?}, want {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn run_once(config: &chainer::Config, args: &KafkaArgs, want: &[usize]) {
    let shutdown = Shutdown::new();
    let task = tokio::spawn(chainer::run(config.clone(), shutdown.clone()));
    wait_for(args, &args.topics().chained, want).await;
    shutdown.trigger();
    task.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_runs_continue_the_chain_exactly_once() {
    let Some(brokers) = brokers_or_skip() else {
        return;
    };
    let prefix = fresh_prefix("chainer-smoke");
    let args = KafkaArgs::local(&brokers, &prefix);
    let topics = args.topics();
    ensure_topics(&args, &pipeline_topic_specs(&args, PARTITIONS), 1)
        .await
        .unwrap();
    let producer = Producer::new(&args, "smoke").unwrap();

    let key = TestKey::new(std::env::temp_dir().join(prefix.trim_end_matches('.')));
    let keys = &key.keys;

    let group = format!("{prefix}chainer");
    let mut extra = vec!["--dedup-window", "100"];
    extra.extend(key.args());
    extra.extend([
        "--checkpoint-every-events",
        "7",
        "--shutdown-timeout-secs",
        "20",
    ]);
    let config = chainer_config(&brokers, &prefix, &group, &extra);

    // Phase 1: p0 = 20 events + a duplicate + garbage; p1 = 5 events.
    let mut p0: Vec<Vec<u8>> = (0..20).map(|i| ev(&format!("a{i}"))).collect();
    p0.push(ev("a3"));
    p0.push(b"garbage".to_vec());
    produce(&producer, &topics.enriched, 0, p0).await;
    produce(
        &producer,
        &topics.enriched,
        1,
        (0..5).map(|i| ev(&format!("b{i}"))).collect(),
    )
    .await;
    run_once(&config, &args, &[20, 5]).await;

    // Between runs: new events (one repeating an id chained in run 1), and the group's
    // committed offset of p0 pushed past them, as if offsets had run ahead of the chain.
    let mut more: Vec<Vec<u8>> = (20..30).map(|i| ev(&format!("a{i}"))).collect();
    more.push(ev("a7"));
    produce(&producer, &topics.enriched, 0, more).await;
    produce(
        &producer,
        &topics.enriched,
        1,
        (5..8).map(|i| ev(&format!("b{i}"))).collect(),
    )
    .await;
    {
        let c: BaseConsumer = args
            .client_config("smoke-commit")
            .set("group.id", &group)
            .create()
            .unwrap();
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&topics.enriched, 0, Offset::Offset(31))
            .unwrap();
        c.commit(&tpl, CommitMode::Sync).unwrap();
    }
    run_once(&config, &args, &[30, 8]).await;

    // Every partition: seqs 1..=n exactly once, chain and checkpoints verify, sealed to the end.
    let cps = read_checkpoints(&args, PARTITIONS, SCAN_IDLE).await;
    for (p, n) in [(0, 30i64), (1, 8)] {
        let recs: Vec<_> = read_all(&args, &topics.chained, p)
            .await
            .iter()
            .map(|b| decode_chained(b, None).unwrap())
            .collect();
        let seqs: Vec<i64> = recs.iter().map(|r| r.seq).collect();
        assert_eq!(seqs, (1..=n).collect::<Vec<_>>(), "partition {p}");
        let ids: std::collections::HashSet<_> =
            recs.iter().map(|r| r.event.event_id.clone()).collect();
        assert_eq!(ids.len() as i64, n, "no event chained twice");
        let owned: Vec<OwnedRecord> = recs
            .iter()
            .map(|r| OwnedRecord::from_chained(r).unwrap())
            .collect();
        let mine: Vec<_> = cps.iter().filter(|c| c.partition == p).cloned().collect();
        assert!(!mine.is_empty());
        let opts = VerifyOptions {
            chain_id: Some(topics.chained.clone()),
            ..Default::default()
        };
        let report = verify_partition(
            p as u32,
            keys,
            &mine,
            opts,
            owned.iter().map(|r| r.as_stored()),
        );
        assert!(report.ok, "{report:#?}");
        assert_eq!(report.sealed_through, Some(n), "partition {p}: {mine:#?}");
    }
    // The garbage record went to the dead-letter topic once: run 2 read it again (it sought
    // back from the committed offset 31 to the chain's offset 20), but below the committed
    // offset a dead letter is known to be sent already.
    let mut rejected = 0;
    for p in 0..PARTITIONS {
        rejected += read_all(&args, &topics.rejected, p).await.len();
    }
    assert_eq!(rejected, 1);
    key.remove();
}
