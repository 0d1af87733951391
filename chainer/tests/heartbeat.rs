//! Heartbeats against a real Kafka API (the local stack's tansu, or `CHAINER_SMOKE_BROKERS`;
//! skipped with a note when no broker answers): an idle partition's last checkpoint is re-signed
//! with a fresh time every heartbeat period, in a first run and after recovery in a second run,
//! without adding a record to the chain; every checkpoint signs the chain's partition count, and
//! the chain with all its repeated-seq checkpoints verifies without a finding.

mod common;

use std::time::{Duration, Instant};

use common::{brokers_or_skip, chainer_config, fresh_prefix, read_checkpoints, TestKey};
use integrity::checkpoint::verify;
use integrity::verify::{verify_partition, OwnedRecord, VerifyOptions};
use schemas::framing::{decode_chained, encode_single_object_event};
use schemas::testing::sample_event;
use schemas::Checkpoint;
use worker_runtime::kafka::admin::{ensure_topics, pipeline_topic_specs};
use worker_runtime::kafka::{KafkaArgs, OutputRecord, Producer};
use worker_runtime::Shutdown;

const PARTITIONS: i32 = 2;
/// How long a read of a partition waits for more records.
const SCAN_IDLE: Duration = Duration::from_secs(20);

async fn checkpoints(args: &KafkaArgs) -> Vec<Checkpoint> {
    read_checkpoints(args, PARTITIONS, SCAN_IDLE).await
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
    let Some(brokers) = brokers_or_skip() else {
        return;
    };
    let prefix = fresh_prefix("chainer-hb");
    let args = KafkaArgs::local(&brokers, &prefix);
    let topics = args.topics();
    ensure_topics(&args, &pipeline_topic_specs(&args, PARTITIONS), 1)
        .await
        .unwrap();
    let producer = Producer::new(&args, "hb").unwrap();
    let key = TestKey::new(std::env::temp_dir().join(prefix.trim_end_matches('.')));
    let keys = &key.keys;
    let group = format!("{prefix}chainer");
    let mut extra = key.args().to_vec();
    extra.extend([
        "--checkpoint-every-events",
        "1000",
        "--checkpoint-interval-secs",
        "1",
        "--checkpoint-heartbeat-secs",
        "1",
        "--shutdown-timeout-secs",
        "20",
    ]);
    let config = chainer_config(&brokers, &prefix, &group, &extra);
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
    // the audit-chain/v2 genesis of this chain id and partition), which attests it in the
    // signed partition set.
    let empty: Vec<&Checkpoint> = all.iter().filter(|c| c.partition == 1).collect();
    assert!(empty.len() >= 2, "a genesis per run: {all:?}");
    for c in &empty {
        verify(keys, c).unwrap();
        let genesis = integrity::chain::genesis_v2(&c.chain_id, 1);
        assert_eq!(
            (
                c.first_seq,
                c.seq,
                c.head_hash.as_slice(),
                c.partition_count
            ),
            (1, 0, &genesis[..], PARTITIONS),
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
        verify(keys, c).unwrap();
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
    let recs: Vec<OwnedRecord> = common::read_all(&args, &topics.chained, 0, SCAN_IDLE)
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
        keys,
        &p0,
        VerifyOptions {
            chain_id: Some(cps[0].chain_id.clone()),
            ..VerifyOptions::default()
        },
        recs.iter().map(OwnedRecord::as_stored),
    );
    assert!(report.findings.is_empty(), "{:?}", report.findings);
    assert_eq!(report.sealed_through, Some(3));
    key.remove();
}
