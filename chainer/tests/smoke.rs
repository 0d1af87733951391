//! Smoke test against a real Kafka API (the local stack's tansu, or `CHAINER_SMOKE_BROKERS`).
//! Skipped (passes with a note) when no broker answers.
//!
//! Two runs on the same topics and group, with a committed offset pushed ahead of the chain in
//! between: the chain continues without gap, fork or duplicate; duplicates and garbage are
//! handled; checkpoints verify and seal the whole chain after a clean shutdown.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use schemas::checkpoint::{generate_pkcs8, KeySet, SigningKey};
use schemas::framing::{decode_chained, decode_checkpoint, encode_single_object_event};
use schemas::testing::sample_event;
use schemas::verify::{verify_partition, OwnedRecord, VerifyOptions};
use worker_runtime::kafka::admin::{ensure_topics, pipeline_topic_specs};
use worker_runtime::kafka::tail::{scan, ScanStart};
use worker_runtime::kafka::{KafkaArgs, OutputRecord, Producer};
use worker_runtime::Shutdown;

const PARTITIONS: i32 = 2;

fn brokers() -> String {
    std::env::var("CHAINER_SMOKE_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

fn broker_up(brokers: &str) -> bool {
    brokers
        .split(',')
        .filter_map(|b| b.parse::<std::net::SocketAddr>().ok())
        .any(|a| std::net::TcpStream::connect_timeout(&a, Duration::from_secs(1)).is_ok())
}

async fn read_all(args: &KafkaArgs, topic: &str, p: i32) -> Vec<Vec<u8>> {
    let out = Arc::new(Mutex::new(Vec::new()));
    let o = out.clone();
    let _ = scan(
        args,
        topic,
        p,
        ScanStart::Offset(0),
        Duration::from_secs(20),
        move |m| {
            use rdkafka::Message;
            o.lock()
                .unwrap()
                .push(m.payload().unwrap_or_default().to_vec());
        },
    )
    .await
    .unwrap();
    let v = out.lock().unwrap().clone();
    v
}

async fn produce(producer: &Producer, topic: &str, p: i32, payloads: Vec<Vec<u8>>) {
    for (i, v) in payloads.into_iter().enumerate() {
        let rec = OutputRecord::new(topic, Some(format!("k{i}").into_bytes()), v).with_partition(p);
        producer.send(&rec).await.unwrap();
    }
}

fn ev(id: &str) -> Vec<u8> {
    let mut e = sample_event();
    e.event_id = id.to_owned();
    encode_single_object_event(&e).unwrap()
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
    let brokers = brokers();
    if !broker_up(&brokers) {
        eprintln!("SKIPPED: no Kafka broker at {brokers}");
        return;
    }
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let prefix = format!("chainer-smoke-{}-{nanos}.", std::process::id());
    let args = KafkaArgs::local(&brokers, &prefix);
    let topics = args.topics();
    ensure_topics(&args, &pipeline_topic_specs(&args, PARTITIONS), 1)
        .await
        .unwrap();
    let producer = Producer::new(&args, "smoke").unwrap();

    let key_dir = std::env::temp_dir().join(format!("chainer-smoke-{nanos}"));
    std::fs::create_dir_all(&key_dir).unwrap();
    let key_path = key_dir.join("k.pk8");
    let der = generate_pkcs8().unwrap();
    std::fs::write(&key_path, der.expose()).unwrap();
    let mut keys = KeySet::default();
    keys.add(
        SigningKey::from_pkcs8("k1", der.expose())
            .unwrap()
            .public_entry(0, None),
    )
    .unwrap();

    let group = format!("{prefix}chainer");
    let config = chainer::Config::parse_from([
        "chainer",
        "--kafka-brokers",
        &brokers,
        "--topic-prefix",
        &prefix,
        "--health-addr",
        "",
        "--group-id",
        &group,
        "--dedup-window",
        "100",
        "--checkpoint-key-file",
        key_path.to_str().unwrap(),
        "--checkpoint-key-id",
        "k1",
        "--checkpoint-every-events",
        "7",
        "--shutdown-timeout-secs",
        "20",
    ]);

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
    let mut cps = Vec::new();
    for p in 0..PARTITIONS {
        for b in read_all(&args, &topics.checkpoints, p).await {
            cps.push(decode_checkpoint(&b, None).unwrap());
        }
    }
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
            &keys,
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
    let _ = std::fs::remove_dir_all(&key_dir);
}
