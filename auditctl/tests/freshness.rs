//! The signed partition set and checkpoint freshness against the real ClickHouse of the local
//! stack: a partition deleted whole with its checkpoints is `partition_missing_from_signed_set`
//! without any pin once checkpoints sign the partition count (and still passes with the old v1
//! checkpoints, which keep verifying); a tail cut together with its newest checkpoints and
//! heartbeats is `checkpoint_stale` under `--max-checkpoint-age`, while a heartbeat (a repeated
//! seq) keeps an idle partition fresh and is no finding; a partition deleted but for its
//! genesis checkpoints is `genesis_checkpoint_superseded` (by default, `--max-partition-lag`),
//! while an empty partition whose genesis is heartbeated is no finding.

mod common;

use std::path::Path;

use common::*;
use integrity::checkpoint::{sign, CheckpointFields, SignedCheckpoint};
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
    findings_at(out, "/freshness/findings")
}

/// The `(partition, kind)` of the freshness findings at `pointer` of a `--json` report.
fn findings_at(out: &str, pointer: &str) -> Vec<(u64, String)> {
    let v: Value = serde_json::from_str(out).unwrap_or_else(|e| panic!("{e}: {out}"));
    v.pointer(pointer)
        .and_then(Value::as_array)
        .unwrap_or_else(|| panic!("no {pointer} in {out}"))
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

const HOUR_US: i64 = 3_600_000_000;

fn superseded(p: u64) -> Vec<(u64, String)> {
    vec![(p, "genesis_checkpoint_superseded".to_owned())]
}

/// The genesis-kept deletion: both partitions were taken over empty (genesis checkpoints),
/// then received events sealed an hour later. The attacker deletes partition 1's records and
/// every checkpoint of it but the genesis one: the partition now looks like one that never
/// received an event (no `partition_missing_from_signed_set`), but its genesis is an hour
/// behind partition 0's newest checkpoint, and heartbeats would have kept an empty partition's
/// genesis within `--max-partition-lag` (10m by default) of it.
#[tokio::test]
async fn partition_deleted_but_for_its_genesis_checkpoint_is_superseded() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (key, keyset) = test_key(dir.path(), "k1");
    let db = TestDb::new("gen_kept").await;
    for p in 0..2 {
        let g = sign(&key, &CheckpointFields::genesis(CHAIN_ID, p, BASE_US, 2)).expect("sign");
        db.insert_checkpoints(&[g]).await;
        db.insert_chain(&build_chain_counted(p, 30, &key, 10, BASE_US + HOUR_US, 2))
            .await;
    }
    let (code, out) = auditctl(&verify_ch(&db, &keyset, &[])).await;
    assert_eq!(code, 0, "{out}");
    assert!(freshness_findings(&out).is_empty(), "{out}");

    db.mutate("ALTER TABLE audit_events DELETE WHERE chain_partition = 1")
        .await;
    db.mutate("ALTER TABLE audit_checkpoints DELETE WHERE chain_partition = 1 AND seq > 0")
        .await;
    let (code, out) = auditctl(&verify_ch(&db, &keyset, &[])).await;
    assert_eq!(code, 1, "{out}");
    assert_eq!(freshness_findings(&out), superseded(1), "{out}");
    let v: Value = serde_json::from_str(&out).expect("json");
    assert_eq!(v["ok"], false);
    assert_eq!(v["freshness"]["max_partition_lag_secs"], 600);
    let f = &v["freshness"]["findings"][0];
    assert_eq!(
        (f["seq"].as_u64(), f["error"].as_bool()),
        (Some(0), Some(true))
    );
    let detail = f["detail"].as_str().expect("detail");
    assert!(
        detail.contains(&format!("time_us {BASE_US}"))
            && detail.contains("partition 0's newest valid checkpoint (seq 30")
            && detail.contains("--max-partition-lag 600s"),
        "{detail}"
    );
    // The human report says it too.
    let mut human = verify_ch(&db, &keyset, &[]);
    human.retain(|a| a != "--json");
    let (code, out) = auditctl(&human).await;
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("max partition lag 600s"), "{out}");
    assert!(
        out.contains("partition 1 seq 0: genesis_checkpoint_superseded:"),
        "{out}"
    );
    // A lag above the one measured (an hour), or the check off: the deletion goes unseen,
    // as before this check.
    for lag in ["2h", "off", "0"] {
        let (code, out) = auditctl(&verify_ch(&db, &keyset, &["--max-partition-lag", lag])).await;
        assert_eq!(code, 0, "{lag}: {out}");
        assert!(freshness_findings(&out).is_empty(), "{lag}: {out}");
    }
    db.drop().await;
}

/// An empty partition whose chainer heartbeats: its genesis is re-signed every period, so its
/// newest genesis keeps up with the other partitions' checkpoints, even though its first one
/// is hours older.
#[tokio::test]
async fn an_empty_partition_with_a_heartbeated_genesis_is_no_finding() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (key, keyset) = test_key(dir.path(), "k1");
    let db = TestDb::new("gen_beat").await;
    let later = BASE_US + 3 * HOUR_US;
    db.insert_chain(&build_chain_counted(0, 30, &key, 10, later, 2))
        .await;
    let beats: Vec<_> = [BASE_US, later - 120_000_000, later - 60_000_000]
        .into_iter()
        .map(|t| sign(&key, &CheckpointFields::genesis(CHAIN_ID, 1, t, 2)).expect("sign"))
        .collect();
    db.insert_checkpoints(&beats).await;
    let (code, out) = auditctl(&verify_ch(&db, &keyset, &[])).await;
    assert_eq!(code, 0, "{out}");
    assert!(freshness_findings(&out).is_empty(), "{out}");
    let v: Value = serde_json::from_str(&out).expect("json");
    let p1 = &v["freshness"]["partitions"][1];
    assert_eq!(
        (
            p1["partition"].as_u64(),
            p1["newest_checkpoint_seq"].as_u64()
        ),
        (Some(1), Some(0))
    );
    assert_eq!(p1["newest_checkpoint_time_us"], later - 60_000_000);
    db.drop().await;
}

/// `--source both`: each store gets its own freshness list, and the flag reaches both.
#[tokio::test]
async fn genesis_superseded_is_checked_in_each_store_with_source_both() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (key, keyset) = test_key(dir.path(), "k1");
    let db = TestDb::new("gen_both").await;
    let prefix = unique("gen_both");
    let store = s3_store();
    let chain = build_chain_counted(0, 30, &key, 10, BASE_US + HOUR_US, 2);
    let genesis = sign(&key, &CheckpointFields::genesis(CHAIN_ID, 1, BASE_US, 2)).expect("sign");
    db.insert_chain(&chain).await;
    db.insert_checkpoints(std::slice::from_ref(&genesis)).await;
    write_archive(store.as_ref(), &prefix, &chain, 20).await;
    put(
        store.as_ref(),
        &prefix,
        &schemas::segment::checkpoint_key(1, 0, &genesis.key_id),
        serde_json::to_vec_pretty(&integrity::checkpoint::CheckpointJson::from(&genesis))
            .expect("json"),
    )
    .await;
    let both = |extra: &[&str]| {
        let mut a = s(&[
            "verify",
            "--source",
            "both",
            "--json",
            "--keys",
            &keyset.display().to_string(),
        ]);
        a.extend(db.args());
        a.extend(s3_args(&prefix));
        a.extend(s(extra));
        a
    };
    let (code, out) = auditctl(&both(&[])).await;
    assert_eq!(code, 1, "{out}");
    assert_eq!(
        findings_at(&out, "/freshness/clickhouse/findings"),
        superseded(1)
    );
    assert_eq!(
        findings_at(&out, "/freshness/archive/findings"),
        superseded(1)
    );
    let (code, out) = auditctl(&both(&["--max-partition-lag", "off"])).await;
    assert_eq!(code, 0, "{out}");
    assert!(
        findings_at(&out, "/freshness/clickhouse/findings").is_empty(),
        "{out}"
    );
    assert!(
        findings_at(&out, "/freshness/archive/findings").is_empty(),
        "{out}"
    );
    db.drop().await;
}

/// A rollback of one partition: its tail deleted together with every checkpoint that sealed it
/// (and the heartbeats re-signing its head). What is left verifies, and no pin was taken; but
/// the partition's newest remaining checkpoint is an hour behind partition 0's newest, while
/// heartbeats would have kept it within `--max-partition-lag`: `checkpoint_superseded`.
#[tokio::test]
async fn one_partitions_tail_cut_with_its_newest_checkpoints_is_superseded() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (key, keyset) = test_key(dir.path(), "k1");
    let db = TestDb::new("tail_superseded").await;
    // Partition 0 busy until an hour later; partition 1 got 30 events early (checkpoints at
    // 10, 20, 30 then) and was idle since: its chainer re-signed its head every period.
    db.insert_chain(&build_chain_counted(0, 30, &key, 10, BASE_US + HOUR_US, 2))
        .await;
    let p1 = build_chain_counted(1, 30, &key, 10, BASE_US, 2);
    db.insert_chain(&p1).await;
    let last =
        SignedCheckpoint::try_from(p1.checkpoints.last().expect("checkpoint")).expect("checkpoint");
    let beat = CheckpointFields {
        time_us: BASE_US + HOUR_US,
        ..last.fields
    };
    db.insert_checkpoints(&[sign(&key, &beat).expect("sign")])
        .await;
    let (code, out) = auditctl(&verify_ch(&db, &keyset, &[])).await;
    assert_eq!(code, 0, "{out}");
    assert!(freshness_findings(&out).is_empty(), "{out}");

    db.mutate("ALTER TABLE audit_events DELETE WHERE chain_partition = 1 AND seq > 20")
        .await;
    db.mutate("ALTER TABLE audit_checkpoints DELETE WHERE chain_partition = 1 AND seq > 20")
        .await;
    let (code, out) = auditctl(&verify_ch(&db, &keyset, &[])).await;
    assert_eq!(code, 1, "{out}");
    assert_eq!(
        freshness_findings(&out),
        vec![(1, "checkpoint_superseded".to_owned())],
        "{out}"
    );
    let v: Value = serde_json::from_str(&out).expect("json");
    let f = &v["freshness"]["findings"][0];
    assert_eq!(f["seq"].as_u64(), Some(20), "{f}");
    assert!(
        f["detail"]
            .as_str()
            .is_some_and(|d| d.contains("partition 0's newest valid checkpoint (seq 30")),
        "{f}"
    );
    // The chain itself verifies: without this check the rollback is unseen.
    let (code, out) = auditctl(&verify_ch(&db, &keyset, &["--max-partition-lag", "off"])).await;
    assert_eq!(code, 0, "{out}");
    db.drop().await;
}
