//! Partitions verified at once (one per core, each into a split of the collector) give the
//! report a sequential run gives: the same findings in the same order, in every partition,
//! the same stored hashes and captures. A segment holding a record of another partition makes
//! the parallel run give up (the caller then runs sequentially). Needs the local stack
//! (deploy/local/stack.sh up); fails without it.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use auditctl::archive::ArchiveStore;
use auditctl::cli::{Cli, Command};
use auditctl::clickhouse::ClickHouseStore;
use auditctl::collect::{CollectOptions, Collector};
use auditctl::reads::Reads;
use clap::Parser;
use integrity::checkpoint::KeySet;
use object_store::path::Path as ObjPath;
use object_store::ObjectStore;
use schemas::segment::{write_segment, SegmentMeta};
use serde_json::Value;

fn options(keys: &KeySet) -> CollectOptions {
    CollectOptions {
        keys: keys.clone(),
        check_checkpoints: true,
        chain_id: Some(common::CHAIN_ID.to_owned()),
        clock_skew_us: 300_000_000,
        max_findings: 1000,
        partitions: BTreeSet::new(),
        keep_hashes: true,
        progress: false,
        label: "test",
        capture: BTreeMap::new(),
        capture_checkpoint_seqs: true,
    }
}

/// What one run gave: whether it completed split, the report, the stored hashes in the order
/// the collector kept them, and the captured hashes.
type Run = (
    bool,
    Value,
    Vec<(i32, i64, Vec<u8>)>,
    BTreeMap<(u32, u64), Vec<u8>>,
);

async fn archive_run(archive: &ArchiveStore, keys: &KeySet, workers: usize) -> Run {
    let all = BTreeSet::new();
    let (cps, bad) = archive.checkpoints(&all).await.expect("checkpoints");
    let mut c = Collector::new(options(keys), cps);
    for f in bad {
        c.add_finding(f);
    }
    let split = archive
        .stream_into(&all, &mut c, workers)
        .await
        .expect("archive read");
    let captured = c.take_captured();
    let (report, hashes) = c.finish();
    let report = serde_json::to_value(&report).expect("json");
    (split, report, hashes, captured.hashes)
}

fn findings(report: &Value, partition: i64) -> Vec<Value> {
    report["partitions"]
        .as_array()
        .expect("partitions")
        .iter()
        .find(|p| p["partition"] == partition)
        .expect("partition reported")["findings"]
        .as_array()
        .expect("findings")
        .clone()
}

fn has(found: &[Value], kind: &str, seq: i64) -> bool {
    found.iter().any(|f| f["kind"] == kind && f["seq"] == seq)
}

/// Tampering in partitions 1 and 2 (of 0..=3): an altered record, a deleted segment. Split
/// over 3 workers and read sequentially, the reports are the same.
#[tokio::test]
async fn archive_split_by_partition_reports_what_a_sequential_run_reports() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (key, keyset) = common::test_key(dir.path(), "k1");
    let keys = KeySet::load(&keyset).expect("keys");
    let store = common::s3_store();
    let prefix = common::unique("parallel-archive");
    for p in 0..4u32 {
        let mut chain = common::build_chain(p, 300, &key, 100, common::BASE_US);
        if p == 1 {
            // Content changed after chaining (the segment and its manifest agree).
            chain.events[149].event.actor.id = "mallory".into();
        }
        let keys = common::write_archive(store.as_ref(), &prefix, &chain, 100).await;
        if p == 2 {
            let gone = ObjPath::from(format!("{prefix}/{}", keys[1]));
            store.delete(&gone).await.expect("delete segment");
        }
    }
    let archive = ArchiveStore::from_store(store, &prefix, "test archive");
    let sequential = archive_run(&archive, &keys, 1).await;
    let split = archive_run(&archive, &keys, 3).await;
    assert!(sequential.0 && split.0, "no record of another partition");
    assert_eq!(sequential.1, split.1, "same report");
    assert_eq!(sequential.2, split.2, "same stored hashes, same order");
    assert_eq!(sequential.3, split.3, "same captures");
    let report = &split.1;
    assert_eq!(report["ok"], false);
    assert!(findings(report, 0).is_empty(), "{report}");
    assert!(has(&findings(report, 1), "modified_event", 150), "{report}");
    assert!(has(&findings(report, 2), "missing_seq", 101), "{report}");
    assert!(findings(report, 3).is_empty(), "{report}");
}

/// A segment of partition 2 holding a record of partition 0: the split run says it cannot
/// place it, and the sequential run reports it.
#[tokio::test]
async fn archive_split_gives_up_on_a_record_of_another_partition() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (key, keyset) = common::test_key(dir.path(), "k1");
    let keys = KeySet::load(&keyset).expect("keys");
    let store = common::s3_store();
    let prefix = common::unique("parallel-foreign");
    let chains: Vec<common::Chain> = (0..3u32)
        .map(|p| common::build_chain(p, 200, &key, 100, common::BASE_US))
        .collect();
    for c in &chains {
        common::write_archive(store.as_ref(), &prefix, c, 100).await;
    }
    // Partition 2's first segment object replaced by partition 0's (its records say
    // partition 0).
    let seg_of = |c: &common::Chain| {
        SegmentMeta::for_events(&c.events[..100], "audit.chained", 0, 99, "auditctl-test/1")
            .expect("meta")
    };
    let (meta0, meta2) = (seg_of(&chains[0]), seg_of(&chains[2]));
    let bytes = write_segment(&meta0, &chains[0].events[..100]).expect("segment");
    let key2 = meta2.key().expect("key");
    assert_eq!(key2.partition, 2);
    common::put(store.as_ref(), &prefix, &key2.object_key(), bytes).await;

    let archive = ArchiveStore::from_store(store, &prefix, "test archive");
    let split = archive_run(&archive, &keys, 3).await;
    assert!(!split.0, "the split run must give up");
    let sequential = archive_run(&archive, &keys, 1).await;
    assert!(sequential.0);
    let report = &sequential.1;
    assert_eq!(report["ok"], false);
    assert!(!findings(report, 2).is_empty(), "{report}");
}

/// ClickHouse: a row altered in partition 2 and one deleted in partition 1 (of 0..=2); split
/// over 3 workers and read sequentially, the reports are the same.
#[tokio::test]
async fn clickhouse_split_by_partition_reports_what_a_sequential_run_reports() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (key, keyset) = common::test_key(dir.path(), "k1");
    let keys = KeySet::load(&keyset).expect("keys");
    let db = common::TestDb::new("parallel_ch").await;
    for p in 0..3u32 {
        db.insert_chain(&common::build_chain(p, 300, &key, 100, common::BASE_US))
            .await;
    }
    db.mutate("ALTER TABLE audit_events UPDATE actor_id = 'mallory' WHERE chain_partition = 2 AND seq = 170")
        .await;
    db.mutate("ALTER TABLE audit_events DELETE WHERE chain_partition = 1 AND seq = 40")
        .await;
    let argv = ["auditctl", "verify", "--source", "clickhouse"]
        .into_iter()
        .map(str::to_owned)
        .chain(db.args());
    let Command::Verify(args) = Cli::try_parse_from(argv).expect("arguments").command else {
        panic!("not verify");
    };
    let store = ClickHouseStore::new(&args.clickhouse, Reads::default()).expect("store");
    let run = |workers: usize| {
        let (store, keys) = (&store, &keys);
        async move {
            let (cps, bad) = store.checkpoints(&[]).await.expect("checkpoints");
            let mut c = Collector::new(options(keys), cps);
            for f in bad {
                c.add_finding(f);
            }
            let split = store
                .stream_into(&[], 100, &mut c, workers)
                .await
                .expect("read");
            let captured = c.take_captured();
            let (report, hashes) = c.finish();
            let report = serde_json::to_value(&report).expect("json");
            (split, report, hashes, captured.hashes)
        }
    };
    let sequential = run(1).await;
    let split = run(3).await;
    assert!(sequential.0 && split.0);
    assert_eq!(sequential.1, split.1, "same report");
    assert_eq!(sequential.2, split.2, "same stored hashes, same order");
    assert_eq!(sequential.3, split.3, "same captures");
    let report = &split.1;
    assert!(findings(report, 0).is_empty(), "{report}");
    assert!(has(&findings(report, 1), "missing_seq", 40), "{report}");
    assert!(has(&findings(report, 2), "modified_event", 170), "{report}");
    db.drop().await;
}
