//! Whole-tree checkpoints against a real Kafka API (the local stack's tansu, or
//! `CHAINER_SMOKE_BROKERS`; skipped with a note when no broker answers).
//!
//! Every checkpoint the chainer signs carries the RFC 9162 root of the partition's whole tree
//! (leaves: the link hashes of seqs 1..=seq), also across a restart: the second run resumes the
//! tree from the latest checkpoint record's peaks header, so its checkpoints (whose ranges start
//! mid-chain) still sign whole-tree roots. Each checkpoint opens as a C2SP signed note with the
//! independent note code of the `integrity` crate, and consecutive checkpoints are consistent
//! (RFC 9162 consistency proofs verify between every pair).

mod common;

use std::time::{Duration, Instant};

use common::{brokers_or_skip, chainer_config, fresh_prefix, read_checkpoints, TestKey};
use integrity::checkpoint::{verify, SignedCheckpoint};
use integrity::tree::{consistency_proof, leaf_hash, root_of, verify_consistency, MemoryTree};
use schemas::framing::{decode_chained, encode_single_object_event};
use schemas::testing::sample_event;
use schemas::Checkpoint;
use worker_runtime::kafka::admin::{ensure_topics, pipeline_topic_specs};
use worker_runtime::kafka::{KafkaArgs, OutputRecord, Producer};
use worker_runtime::Shutdown;

const PARTITIONS: i32 = 1;
const SCAN_IDLE: Duration = Duration::from_secs(20);

async fn produce(producer: &Producer, topic: &str, ids: std::ops::Range<u32>) {
    for i in ids {
        let mut e = sample_event();
        e.event_id = format!("wt{i}");
        let rec = OutputRecord::new(
            topic,
            Some(b"k".to_vec()),
            encode_single_object_event(&e).unwrap(),
        )
        .with_partition(0);
        producer.send(&rec).await.unwrap();
    }
}

/// Runs the chainer until a checkpoint at `seq` is on the topic (deadline 60 s), then stops it.
async fn run_until_checkpoint(args: &KafkaArgs, config: &chainer::Config, seq: i64) {
    let shutdown = Shutdown::new();
    let task = tokio::spawn(chainer::run(config.clone(), shutdown.clone()));
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let cps = read_checkpoints(args, PARTITIONS, SCAN_IDLE).await;
        if cps.iter().any(|c| c.seq == seq) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no checkpoint at seq {seq}: {cps:?}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    shutdown.trigger();
    task.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn checkpoints_sign_the_whole_tree_across_a_restart_and_are_consistent_c2sp_notes() {
    let Some(brokers) = brokers_or_skip() else {
        return;
    };
    let prefix = fresh_prefix("chainer-wt");
    let args = KafkaArgs::local(&brokers, &prefix);
    let topics = args.topics();
    ensure_topics(&args, &pipeline_topic_specs(&args, PARTITIONS), 1)
        .await
        .unwrap();
    let producer = Producer::new(&args, "wt").unwrap();
    let key = TestKey::new(std::env::temp_dir().join(prefix.trim_end_matches('.')));
    let group = format!("{prefix}chainer");
    let mut extra = key.args().to_vec();
    extra.extend([
        "--checkpoint-every-events",
        "3",
        "--checkpoint-interval-secs",
        "1",
        "--checkpoint-heartbeat-secs",
        "0",
        "--shutdown-timeout-secs",
        "20",
    ]);
    let config = chainer_config(&brokers, &prefix, &group, &extra);

    // Run 1: seqs 1..=7 (checkpoints at 3 and 6 by count, 7 by time or at shutdown).
    produce(&producer, &topics.enriched, 0..7).await;
    run_until_checkpoint(&args, &config, 7).await;
    // Run 2: recovered after the checkpoint at 7, chains 8..=12 (range from 8: the whole tree
    // must come from the peaks header of the checkpoint at 7).
    produce(&producer, &topics.enriched, 7..12).await;
    run_until_checkpoint(&args, &config, 12).await;

    let hashes: Vec<[u8; 32]> = common::read_all(&args, &topics.chained, 0, SCAN_IDLE)
        .await
        .iter()
        .map(|b| {
            let c = decode_chained(b, None).unwrap();
            c.hash.as_slice().try_into().unwrap()
        })
        .collect();
    assert_eq!(hashes.len(), 12, "each event chained once");
    let leaves: Vec<[u8; 32]> = hashes.iter().map(|h| leaf_hash(h)).collect();

    let cps: Vec<Checkpoint> = read_checkpoints(&args, PARTITIONS, SCAN_IDLE)
        .await
        .into_iter()
        .filter(|c| c.seq > 0)
        .collect();
    assert!(
        cps.iter().any(|c| c.first_seq > 7),
        "run 2 signed its own range: {cps:?}"
    );
    let pk: [u8; 32] = integrity::b64::decode(&key.keys.get("k1").unwrap().public_key)
        .unwrap()
        .try_into()
        .unwrap();
    let origin = format!("{}/partition/0", cps[0].chain_id);
    let vkey = integrity::tlog::log_key(&origin, pk).unwrap();
    let mut tree = MemoryTree::new();
    for l in &leaves {
        tree.append(*l);
    }
    for c in &cps {
        verify(&key.keys, c).unwrap();
        let size = c.seq as usize;
        assert_eq!(
            c.tree_root,
            root_of(&leaves[..size]).to_vec(),
            "the whole tree at seq {size} (range {}..={}): {c:?}",
            c.first_seq,
            c.seq
        );
        let note = SignedCheckpoint::try_from(c)
            .unwrap()
            .to_note(pk)
            .expect("a v3 checkpoint has a note form");
        let opened = integrity::tlog::Checkpoint::open(
            note.as_bytes(),
            &origin,
            std::slice::from_ref(&vkey),
        )
        .unwrap();
        assert_eq!(opened.checkpoint.size(), c.seq as u64);
        assert_eq!(opened.checkpoint.root().as_slice(), c.tree_root.as_slice());
    }
    // Every older checkpoint is consistent with every newer one.
    for a in &cps {
        for b in cps.iter().filter(|b| b.seq > a.seq) {
            let (m, n) = (a.seq as u64, b.seq as u64);
            let proof = consistency_proof(&tree, m, n).unwrap();
            let old: [u8; 32] = a.tree_root.as_slice().try_into().unwrap();
            let new: [u8; 32] = b.tree_root.as_slice().try_into().unwrap();
            verify_consistency(m, n, &old, &new, &proof)
                .unwrap_or_else(|e| panic!("{m} -> {n}: {e}"));
        }
    }
    key.remove();
}
