//! `verify --anchor`: the write-once anchor sink-archive copies every checkpoint to (a folder
//! here, as `--anchor-url file://…` writes it, and an S3 prefix), against a real ClickHouse
//! store of the local stack. An attacker who deletes the tail together with the newest
//! checkpoints, or a partition whole, from ClickHouse passes `verify` without the anchor and is
//! named with it; an anchored checkpoint edited in place is `trusted_checkpoint_invalid`.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use integrity::checkpoint::CheckpointJson;
use schemas::segment;
use schemas::Checkpoint;
use serde_json::Value;

/// A ClickHouse database holding partition 0 (300 records, checkpoints every 100) and partition
/// 1 (120, every 50); the key set; and an anchor folder holding every checkpoint of both.
async fn setup(tag: &str) -> (TestDb, tempfile::TempDir, PathBuf, PathBuf, Vec<Checkpoint>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (key, keyset) = test_key(dir.path(), "k1");
    let db = TestDb::new(tag).await;
    let p0 = build_chain(0, 300, &key, 100, BASE_US);
    let p1 = build_chain(1, 120, &key, 50, BASE_US);
    db.insert_chain(&p0).await;
    db.insert_chain(&p1).await;
    let anchor = dir.path().join("anchor-root");
    let cps: Vec<Checkpoint> = p0
        .checkpoints
        .iter()
        .chain(&p1.checkpoints)
        .cloned()
        .collect();
    for c in &cps {
        write_anchored(&anchor, c);
    }
    (db, dir, keyset, anchor, cps)
}

/// Where sink-archive's anchor puts `c`.
fn anchored_path(anchor: &Path, c: &Checkpoint) -> PathBuf {
    anchor.join(segment::anchor_key(
        &c.chain_id,
        c.partition,
        c.seq,
        &c.key_id,
        c.time_us,
    ))
}

/// `c` as sink-archive's anchor writes it (pretty `CheckpointJson`, read-only file).
fn write_anchored(anchor: &Path, c: &Checkpoint) {
    let path = anchored_path(anchor, c);
    std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    let mut body = serde_json::to_vec_pretty(&CheckpointJson::from(c)).expect("json");
    body.push(b'\n');
    std::fs::write(&path, body).expect("write");
    set_mode(&path, 0o444);
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

fn verify(db: &TestDb, keyset: &Path, extra: &[&str]) -> Vec<String> {
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

fn anchor_arg(anchor: &Path) -> String {
    format!("file://{}", anchor.display())
}

fn json(out: &str) -> Value {
    serde_json::from_str(out).unwrap_or_else(|e| panic!("not a JSON report ({e}): {out}"))
}

/// (partition, seq, kind) of the trusted-checkpoint findings, and how many pins were checked.
fn anchor_findings(out: &str) -> (u64, Vec<(u64, u64, String)>) {
    let v = json(out);
    let t = v
        .pointer("/trusted_checkpoints")
        .unwrap_or_else(|| panic!("no trusted_checkpoints in {v}"));
    let findings = t["findings"]
        .as_array()
        .expect("findings")
        .iter()
        .map(|f| {
            (
                f["partition"].as_u64().expect("partition"),
                f["seq"].as_u64().expect("seq"),
                f["kind"].as_str().expect("kind").to_owned(),
            )
        })
        .collect();
    (t["checked"].as_u64().expect("checked"), findings)
}

#[tokio::test]
async fn a_tail_cut_with_its_newest_checkpoints_is_rollback_below_the_anchor() {
    let (db, _dir, keyset, anchor, _) = setup("anchor_tail").await;
    let (code, out) = auditctl(&verify(&db, &keyset, &["--anchor", &anchor_arg(&anchor)])).await;
    assert_eq!(code, 0, "{out}");
    assert_eq!(anchor_findings(&out), (2, vec![]), "one pin per partition");

    db.mutate("ALTER TABLE audit_events DELETE WHERE chain_partition = 0 AND seq > 250")
        .await;
    db.mutate("ALTER TABLE audit_checkpoints DELETE WHERE chain_partition = 0 AND seq > 200")
        .await;
    let (code, out) = auditctl(&verify(&db, &keyset, &[])).await;
    assert_eq!(code, 0, "the cut passes without the anchor: {out}");
    let (code, out) = auditctl(&verify(&db, &keyset, &["--anchor", &anchor_arg(&anchor)])).await;
    assert_eq!(code, 1, "{out}");
    assert_eq!(
        anchor_findings(&out).1,
        vec![(0, 300, "rollback_below_trusted".to_owned())]
    );
    // A bare folder path works too.
    let (code, _) = auditctl(&verify(
        &db,
        &keyset,
        &["--anchor", &anchor.display().to_string()],
    ))
    .await;
    assert_eq!(code, 1);
    db.drop().await;
}

#[tokio::test]
async fn a_partition_deleted_whole_is_missing_while_the_anchor_holds_it() {
    let (db, _dir, keyset, anchor, _) = setup("anchor_part").await;
    db.mutate("ALTER TABLE audit_events DELETE WHERE chain_partition = 1")
        .await;
    db.mutate("ALTER TABLE audit_checkpoints DELETE WHERE chain_partition = 1")
        .await;
    let (code, out) = auditctl(&verify(&db, &keyset, &[])).await;
    assert_eq!(code, 0, "the deletion passes without the anchor: {out}");
    let (code, out) = auditctl(&verify(&db, &keyset, &["--anchor", &anchor_arg(&anchor)])).await;
    assert_eq!(code, 1, "{out}");
    assert_eq!(
        anchor_findings(&out).1,
        vec![(1, 120, "trusted_partition_missing".to_owned())]
    );
    db.drop().await;
}

#[tokio::test]
async fn an_edited_anchored_checkpoint_is_invalid_and_not_pinned() {
    let (db, _dir, keyset, anchor, cps) = setup("anchor_edit").await;
    // The newest checkpoint of partition 0, its head changed in place (someone with access to
    // the folder, past its read-only mode).
    let newest = cps
        .iter()
        .filter(|c| c.partition == 0)
        .max_by_key(|c| c.seq)
        .expect("checkpoint");
    assert_eq!(newest.seq, 300);
    let path = anchored_path(&anchor, newest);
    let mut j: CheckpointJson =
        serde_json::from_slice(&std::fs::read(&path).expect("read")).expect("json");
    j.head_hash = hex::encode([7u8; 32]);
    set_mode(&path, 0o644);
    std::fs::write(&path, serde_json::to_vec_pretty(&j).expect("json")).expect("edit");
    let (code, out) = auditctl(&verify(&db, &keyset, &["--anchor", &anchor_arg(&anchor)])).await;
    assert_eq!(code, 1, "{out}");
    let (checked, findings) = anchor_findings(&out);
    assert_eq!(
        findings,
        vec![(0, 300, "trusted_checkpoint_invalid".to_owned())]
    );
    assert!(out.contains("does not verify with --keys"), "{out}");
    // Partition 0 is pinned at its newest valid anchored checkpoint (seq 200) instead.
    assert_eq!(checked, 2);
    db.drop().await;
}

#[tokio::test]
async fn the_anchor_needs_keys_and_must_hold_checkpoints() {
    let (db, dir, keyset, anchor, _) = setup("anchor_usage").await;
    let mut a = s(&[
        "verify",
        "--source",
        "clickhouse",
        "--no-signatures",
        "--anchor",
        &anchor_arg(&anchor),
    ]);
    a.extend(db.args());
    let (code, out) = auditctl(&a).await;
    assert_eq!(code, EXIT_USAGE_CODE, "{out}");
    assert!(out.contains("--anchor needs --keys"), "{out}");
    let empty = dir.path().join("empty-anchor");
    std::fs::create_dir_all(&empty).expect("mkdir");
    let (code, out) = auditctl(&verify(&db, &keyset, &["--anchor", &anchor_arg(&empty)])).await;
    assert_eq!(code, EXIT_USAGE_CODE, "{out}");
    assert!(out.contains("holds no checkpoint"), "{out}");
    db.drop().await;
}

const EXIT_USAGE_CODE: u8 = auditctl::EXIT_USAGE;

/// The same anchor in S3 (read with the anchor's own `--anchor-s3-*` settings, not the
/// archive's): a clean store verifies, the cut tail is named.
#[tokio::test]
async fn an_s3_anchor_is_read_with_its_own_settings() {
    let (db, _dir, keyset, _anchor, cps) = setup("anchor_s3").await;
    let prefix = format!("test-auditctl-anchor/{}", unique("a"));
    let store = s3_store();
    for c in &cps {
        let mut body = serde_json::to_vec_pretty(&CheckpointJson::from(c)).expect("json");
        body.push(b'\n');
        let key = segment::anchor_key(&c.chain_id, c.partition, c.seq, &c.key_id, c.time_us);
        put(store.as_ref(), &prefix, &key, body).await;
    }
    let url = format!("s3://{}/{prefix}", env_or("S3_BUCKET", "audit-archive"));
    let endpoint = env_or("S3_ENDPOINT", "http://127.0.0.1:8333");
    let id = env_or("S3_ACCESS_KEY_ID", "audit-local-test-access-key");
    let secret = env_or(
        "S3_SECRET_ACCESS_KEY",
        "audit-local-test-secret-NOT-A-SECRET",
    );
    let region = env_or("S3_REGION", "us-east-1");
    let flags = [
        "--anchor",
        url.as_str(),
        "--anchor-s3-endpoint",
        endpoint.as_str(),
        "--anchor-s3-region",
        region.as_str(),
        "--anchor-s3-access-key-id",
        id.as_str(),
        "--anchor-s3-secret-access-key",
        secret.as_str(),
    ];
    let (code, out) = auditctl(&verify(&db, &keyset, &flags)).await;
    assert_eq!(code, 0, "{out}");
    assert_eq!(anchor_findings(&out), (2, vec![]));
    db.mutate("ALTER TABLE audit_events DELETE WHERE chain_partition = 0 AND seq > 250")
        .await;
    db.mutate("ALTER TABLE audit_checkpoints DELETE WHERE chain_partition = 0 AND seq > 200")
        .await;
    let (code, out) = auditctl(&verify(&db, &keyset, &flags)).await;
    assert_eq!(code, 1, "{out}");
    assert_eq!(
        anchor_findings(&out).1,
        vec![(0, 300, "rollback_below_trusted".to_owned())]
    );
    db.drop().await;
}

/// The chainer's own signed notes, as `auditctl checkpoints --vkeys` prints them (what an
/// auditor keeps, or hands to any transparency-log tool), pin the heads they sign: a tail cut
/// with its newest checkpoints is `rollback_below_trusted`; an edited note is
/// `trusted_checkpoint_invalid`; without --keys the file is refused.
#[tokio::test]
async fn the_chainers_signed_notes_are_trusted_checkpoints() {
    let (db, dir, keyset, _anchor, _) = setup("anchor_notes").await;
    let ks = keyset.display().to_string();
    let mut a = s(&[
        "checkpoints",
        "--source",
        "clickhouse",
        "--keys",
        &ks,
        "--vkeys",
    ]);
    a.extend(db.args());
    let (code, notes) = auditctl(&a).await;
    assert_eq!(code, 0, "{notes}");
    let notes = notes.trim_end_matches(|c: char| c != '\n').to_owned();
    let file = dir.path().join("notes.txt");
    std::fs::write(&file, &notes).expect("notes");
    let pin = file.display().to_string();
    let (code, out) = auditctl(&verify(&db, &keyset, &["--trusted-checkpoint", &pin])).await;
    assert_eq!(code, 0, "{out}");
    assert_eq!(anchor_findings(&out), (2, vec![]), "one pin per partition");

    db.mutate("ALTER TABLE audit_events DELETE WHERE chain_partition = 0 AND seq > 250")
        .await;
    db.mutate("ALTER TABLE audit_checkpoints DELETE WHERE chain_partition = 0 AND seq > 200")
        .await;
    let (code, out) = auditctl(&verify(&db, &keyset, &["--trusted-checkpoint", &pin])).await;
    assert_eq!(code, 1, "{out}");
    assert_eq!(
        anchor_findings(&out).1,
        vec![(0, 300, "rollback_below_trusted".to_owned())]
    );

    // One note edited (its size): invalid, named at the size it claims.
    let edited = notes.replacen("/partition/1\n120\n", "/partition/1\n121\n", 1);
    assert_ne!(edited, notes, "partition 1's note is in the file: {notes}");
    std::fs::write(&file, &edited).expect("notes");
    let (code, out) = auditctl(&verify(&db, &keyset, &["--trusted-checkpoint", &pin])).await;
    assert_eq!(code, 1, "{out}");
    assert!(
        anchor_findings(&out)
            .1
            .contains(&(1, 121, "trusted_checkpoint_invalid".to_owned())),
        "{out}"
    );
    // The notes need the key set.
    let mut no_keys = s(&[
        "verify",
        "--source",
        "clickhouse",
        "--json",
        "--no-signatures",
    ]);
    no_keys.extend(db.args());
    no_keys.extend(s(&["--trusted-checkpoint", &pin]));
    let (code, out) = auditctl(&no_keys).await;
    assert_eq!(code, 2, "{out}");
    db.drop().await;
}
