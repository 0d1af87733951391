//! The signed partition set and checkpoint freshness against the real ClickHouse of the local
//! stack: a partition deleted whole with its checkpoints is `partition_missing_from_signed_set`
//! without any pin once checkpoints sign the partition count (and still passes with the old v1
//! checkpoints, which keep verifying); a tail cut together with its newest checkpoints and
//! heartbeats is `checkpoint_stale` under `--max-checkpoint-age`, while a heartbeat (a repeated
//! seq) keeps an idle partition fresh and is no finding.

mod common;

use std::path::Path;

use common::*;
use schemas::checkpoint::{sign, CheckpointFields, SignedCheckpoint};
use serde_json::Value;

fn verify_ch(db: &TestDb, keyset: &Path, extra: &[&str]) -> Vec<String> {
    let mut a = s(&[
        "verify",
        "--source",
        "clickhouse",
        "--json",
        "--keys",
        &keyset.display().to_string(),
    ]);
    a.extend(db.args());
    a.extend(s(extra));
    a
}

fn freshness_findings(out: &str) -> Vec<(u64, String)> {
    let v: Value = serde_json::from_str(out).unwrap_or_else(|e| panic!("{e}: {out}"));
    v.pointer("/freshness/findings")
        .and_then(Value::as_array)
        .unwrap_or_else(|| panic!("no freshness findings in {out}"))
        .iter()
        .map(|f| {
            (
                f["partition"].as_u64().expect("partition"),
                f["kind"].as_str().expect("kind").to_owned(),
            )
        })
        .collect()
}

fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_micros() as i64
}

#[tokio::test]
async fn partition_deleted_with_its_checkpoints_is_missing_from_the_signed_set() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (key, keyset) = test_key(dir.path(), "k1");
    for (count, tag) in [(3u32, "set_v2"), (0, "set_v1")] {
        let db = TestDb::new(tag).await;
        for p in 0..3 {
            db.insert_chain(&build_chain_counted(p, 40, &key, 10, BASE_US, count))
                .await;
        }
        let (code, out) = auditctl(&verify_ch(&db, &keyset, &[])).await;
        assert_eq!(code, 0, "count {count}: {out}");
        db.mutate("ALTER TABLE audit_events DELETE WHERE chain_partition = 1")
            .await;
        db.mutate("ALTER TABLE audit_checkpoints DELETE WHERE chain_partition = 1")
            .await;
        let (code, out) = auditctl(&verify_ch(&db, &keyset, &[])).await;
        if count == 0 {
            // v1 checkpoints (signed before the count existed) still verify, and sign no set:
            // the deletion goes unseen, as before this change.
            assert_eq!(code, 0, "{out}");
            assert!(freshness_findings(&out).is_empty(), "{out}");
        } else {
            assert_eq!(code, 1, "{out}");
            assert_eq!(
                freshness_findings(&out),
                vec![(1, "partition_missing_from_signed_set".to_owned())]
            );
            let v: Value = serde_json::from_str(&out).expect("json");
            assert_eq!(v["ok"], false);
            assert_eq!(v["freshness"]["signed_partition_count"], 3);
            // For stores from chainers before genesis checkpoints: reported, not failing.
            let (code, out) =
                auditctl(&verify_ch(&db, &keyset, &["--allow-unattested-partitions"])).await;
            assert_eq!(code, 0, "{out}");
            assert_eq!(
                freshness_findings(&out),
                vec![(1, "partition_missing_from_signed_set".to_owned())]
            );
        }
        db.drop().await;
    }
}

/// A partition that never received an event is attested by its genesis checkpoint (size 0),
/// which the chainer signs when it takes the partition over: the store verifies. Deleting that
/// checkpoint too (the whole partition, as far as the store can show) is the finding.
#[tokio::test]
async fn an_empty_partition_is_attested_by_its_genesis_checkpoint() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (key, keyset) = test_key(dir.path(), "k1");
    let db = TestDb::new("genesis").await;
    for p in [0, 2] {
        db.insert_chain(&build_chain_counted(p, 25, &key, 10, BASE_US, 3))
            .await;
    }
    let genesis = sign(&key, &CheckpointFields::genesis(CHAIN_ID, 1, BASE_US, 3)).expect("sign");
    db.insert_checkpoints(&[genesis]).await;
    let (code, out) = auditctl(&verify_ch(&db, &keyset, &[])).await;
    assert_eq!(code, 0, "{out}");
    assert!(freshness_findings(&out).is_empty(), "{out}");

    db.mutate("ALTER TABLE audit_checkpoints DELETE WHERE chain_partition = 1")
        .await;
    let (code, out) = auditctl(&verify_ch(&db, &keyset, &[])).await;
    assert_eq!(code, 1, "{out}");
    assert_eq!(
        freshness_findings(&out),
        vec![(1, "partition_missing_from_signed_set".to_owned())]
    );
    db.drop().await;
}

#[tokio::test]
async fn tail_cut_with_its_newest_checkpoints_is_stale_and_heartbeats_keep_it_fresh() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (key, keyset) = test_key(dir.path(), "k1");
    let db = TestDb::new("stale").await;
    // Checkpoints every 10 seqs signed three hours ago, then heartbeats of the last one.
    let t = now_us() - 3 * 3_600_000_000;
    let chain = build_chain_counted(0, 30, &key, 10, t, 1);
    db.insert_chain(&chain).await;
    let last = SignedCheckpoint::try_from(chain.checkpoints.last().expect("cp")).expect("cp");
    let beat = |time_us| {
        sign(
            &key,
            &CheckpointFields {
                time_us,
                ..last.fields.clone()
            },
        )
        .expect("sign")
    };
    db.insert_checkpoints(&[beat(now_us() - 120_000_000), beat(now_us())])
        .await;
    // Fresh thanks to the heartbeats; the repeated seq 30 is no finding.
    let (code, out) = auditctl(&verify_ch(&db, &keyset, &["--max-checkpoint-age", "1h"])).await;
    assert_eq!(code, 0, "{out}");
    let v: Value = serde_json::from_str(&out).expect("json");
    assert_eq!(v["freshness"]["partitions"][0]["newest_checkpoint_seq"], 30);
    assert_eq!(v["freshness"]["partitions"][0]["unsealed_records"], 0);

    // The attack: the tail from seq 21 deleted with every checkpoint above seq 20.
    db.mutate("ALTER TABLE audit_events DELETE WHERE seq > 20")
        .await;
    db.mutate("ALTER TABLE audit_checkpoints DELETE WHERE seq > 20")
        .await;
    let (code, out) = auditctl(&verify_ch(&db, &keyset, &[])).await;
    assert_eq!(
        code, 0,
        "without an age limit the cut store verifies: {out}"
    );
    let (code, out) = auditctl(&verify_ch(&db, &keyset, &["--max-checkpoint-age", "1h"])).await;
    assert_eq!(code, 1, "{out}");
    assert_eq!(
        freshness_findings(&out),
        vec![(0, "checkpoint_stale".to_owned())]
    );
    // The human report says it too.
    let mut human = verify_ch(&db, &keyset, &["--max-checkpoint-age", "1h"]);
    human.retain(|a| a != "--json");
    let (code, out) = auditctl(&human).await;
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("partition 0 seq 20: checkpoint_stale:"),
        "{out}"
    );
    db.drop().await;
}
