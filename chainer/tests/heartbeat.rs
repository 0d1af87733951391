//! Heartbeats against a real Kafka API (the local stack's tansu, or `CHAINER_SMOKE_BROKERS`;
//! skipped with a note when no broker answers): an idle partition's last checkpoint is re-signed
//! with a fresh time every heartbeat period, in a first run and after recovery in a second run,
//! without adding a record to the chain; every checkpoint signs the chain's partition count, and
//! the chain with all its repeated-seq checkpoints verifies without a finding.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use schemas::checkpoint::{generate_pkcs8, verify, KeySet, SigningKey};
use schemas::framing::{decode_chained, decode_checkpoint, encode_single_object_event};
use schemas::testing::sample_event;
use schemas::verify::{verify_partition, OwnedRecord, VerifyOptions};
use schemas::Checkpoint;
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

async fn checkpoints(args: &KafkaArgs) -> Vec<Checkpoint> {
    let mut out = Vec::new();
    for p in 0..PARTITIONS {
        for b in read_all(args, &args.topics().checkpoints, p).await {
            out.push(decode_checkpoint(&b, None).unwrap());
        }
    }
    out
}

/// Polls the checkpoints topic until `done` holds for partition 0's checkpoints (deadline 60 s).
async fn wait_checkpoints(args: &KafkaArgs, what: &str, done: impl Fn(&[Checkpoint]) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let cps: Vec<Checkpoint> = checkpoints(args)
            .await
            .into_iter()
            .filter(|c| c.partition == 0)
            .collect();
        if done(&cps) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {cps:?}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_idle_partition_gets_heartbeat_checkpoints_before_and_after_recovery() {
    let brokers = brokers();
    if !broker_up(&brokers) {
        eprintln!("SKIPPED: no Kafka broker at {brokers}");
        return;
    }
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let prefix = format!("chainer-hb-{}-{nanos}.", std::process::id());
    let args = KafkaArgs::local(&brokers, &prefix);
    let topics = args.topics();
    ensure_topics(&args, &pipeline_topic_specs(&args, PARTITIONS), 1)
        .await
        .unwrap();
    let producer = Producer::new(&args, "hb").unwrap();
    let key_dir = std::env::temp_dir().join(format!("chainer-hb-{nanos}"));
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
        "--checkpoint-key-file",
        key_path.to_str().unwrap(),
        "--checkpoint-key-id",
        "k1",
        "--checkpoint-every-events",
        "1000",
        "--checkpoint-interval-secs",
        "1",
        "--checkpoint-heartbeat-secs",
        "1",
        "--shutdown-timeout-secs",
        "20",
    ]);
    for i in 0..3 {
        let mut e = sample_event();
        e.event_id = format!("hb{i}");
        let rec = OutputRecord::new(
            &topics.enriched,
            Some(b"k".to_vec()),
            encode_single_object_event(&e).unwrap(),
        )
        .with_partition(0);
        producer.send(&rec).await.unwrap();
    }

    // Run 1: the checkpoint of seqs 1..=3, then heartbeats of it while partition 0 is idle.
    let shutdown = Shutdown::new();
    let task = tokio::spawn(chainer::run(config.clone(), shutdown.clone()));
    // (Partition 0 may first get its genesis checkpoint, if the chainer took it over before
    // its records arrived.)
    wait_checkpoints(&args, "two heartbeats after the first checkpoint", |cps| {
        let real: Vec<_> = cps.iter().filter(|c| c.seq != 0).collect();
        real.len() >= 3 && real.iter().all(|c| c.seq == 3)
    })
    .await;
    shutdown.trigger();
    task.await.unwrap().unwrap();
    let before = checkpoints(&args).await;
    let newest_before = before.iter().map(|c| c.time_us).max().unwrap();

    // Run 2: recovery finds the last checkpoint and keeps heartbeating it.
    let shutdown = Shutdown::new();
    let task = tokio::spawn(chainer::run(config.clone(), shutdown.clone()));
    wait_checkpoints(&args, "a heartbeat after recovery", |cps| {
        cps.iter().any(|c| c.time_us > newest_before)
    })
    .await;
    shutdown.trigger();
    task.await.unwrap().unwrap();

    let all = checkpoints(&args).await;
    // Partition 1 never had a record: each run signed its genesis checkpoint (size 0, head
    // all zeros), which attests it in the signed partition set.
    let empty: Vec<&Checkpoint> = all.iter().filter(|c| c.partition == 1).collect();
    assert!(empty.len() >= 2, "a genesis per run: {all:?}");
    for c in &empty {
        verify(&keys, c).unwrap();
        assert_eq!(
            (
                c.first_seq,
                c.seq,
                c.head_hash.as_slice(),
                c.partition_count
            ),
            (1, 0, &[0u8; 32][..], PARTITIONS),
            "{c:?}"
        );
    }
    let p0: Vec<Checkpoint> = all.into_iter().filter(|c| c.partition == 0).collect();
    // Time strictly increasing in publication order.
    for w in p0.windows(2) {
        assert!(w[1].time_us > w[0].time_us, "{p0:?}");
    }
    // At most one genesis of partition 0 (run 1, before its records), the others re-sign
    // the same range with the signed partition count.
    assert!(p0.iter().skip(1).all(|c| c.seq != 0), "{p0:?}");
    let cps: Vec<Checkpoint> = p0.iter().filter(|c| c.seq != 0).cloned().collect();
    for c in &cps {
        verify(&keys, c).unwrap();
        assert_eq!(
            (c.first_seq, c.seq, c.partition_count),
            (1, 3, PARTITIONS),
            "{c:?}"
        );
        assert_eq!(
            (&c.head_hash, &c.merkle_root),
            (&cps[0].head_hash, &cps[0].merkle_root)
        );
    }
    // Heartbeats add no record: the chain is still seqs 1..=3, and it verifies with all of
    // them (a repeated seq is no finding).
    let recs: Vec<OwnedRecord> = read_all(&args, &topics.chained, 0)
        .await
        .iter()
        .map(|b| OwnedRecord::from_chained(&decode_chained(b, None).unwrap()).unwrap())
        .collect();
    assert_eq!(
        recs.iter().map(|r| r.seq).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    let report = verify_partition(
        0,
        &keys,
        &p0,
        VerifyOptions {
            chain_id: Some(cps[0].chain_id.clone()),
            ..VerifyOptions::default()
        },
        recs.iter().map(OwnedRecord::as_stored),
    );
    assert!(report.findings.is_empty(), "{:?}", report.findings);
    assert_eq!(report.sealed_through, Some(3));
}
