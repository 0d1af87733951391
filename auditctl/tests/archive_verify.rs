//! `auditctl verify --source archive|both`: a local folder and the local S3 (SeaweedFS).

mod common;

use std::sync::Arc;

use common::*;
use object_store::local::LocalFileSystem;
use object_store::ObjectStore;
use schemas::segment::{write_segment, SegmentMeta};
use serde_json::Value;

/// Replace the segment holding `seq` with a re-encoded copy whose event at `seq` has another
/// actor (what an attacker with write access to the bucket would do). Its manifest is kept.
async fn replace_segment(
    store: &dyn ObjectStore,
    prefix: &str,
    chain: &Chain,
    size: usize,
    seq: i64,
) {
    let idx = ((seq - 1) as usize / size) * size;
    let mut seg: Vec<_> = chain.events[idx..(idx + size).min(chain.events.len())].to_vec();
    for e in &mut seg {
        if e.seq == seq {
            e.event.actor.id = "mallory".into();
        }
    }
    let meta = SegmentMeta::for_events(
        &seg,
        "audit.chained",
        idx as i64,
        (idx + seg.len()) as i64 - 1,
        "auditctl-test/1",
    )
    .expect("meta");
    let bytes = write_segment(&meta, &seg).expect("segment");
    put(store, prefix, &meta.key().expect("key").object_key(), bytes).await;
}

fn verify_args(keyset: &std::path::Path, archive: Vec<String>) -> Vec<String> {
    let mut a = s(&[
        "verify",
        "--source",
        "archive",
        "--keys",
        &keyset.display().to_string(),
    ]);
    a.extend(archive);
    a
}

#[tokio::test]
async fn local_folder_archive_verifies_and_a_replaced_segment_is_found() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (key, keyset) = test_key(dir.path(), "k1");
    let root = dir.path().join("archive");
    std::fs::create_dir_all(&root).expect("mkdir");
    let store: Arc<dyn ObjectStore> =
        Arc::new(LocalFileSystem::new_with_prefix(&root).expect("local store"));
    let chain0 = build_chain(0, 230, &key, 100, BASE_US);
    let chain2 = build_chain(2, 60, &key, 25, BASE_US);
    write_archive(store.as_ref(), "", &chain0, 50).await;
    write_archive(store.as_ref(), "", &chain2, 50).await;

    let args = verify_args(&keyset, s(&["--archive-url", &root.display().to_string()]));
    let (code, out) = auditctl(&args).await;
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("partition 0: seq 1..=230, 230 records"),
        "{out}"
    );
    assert!(out.contains("partition 2: seq 1..=60, 60 records"), "{out}");

    replace_segment(store.as_ref(), "", &chain0, 50, 77).await;
    let (code, out) = auditctl(&args).await;
    assert_eq!(code, 1, "{out}");
    // The object no longer matches its manifest (reported at the segment's first seq), and the
    // recomputed chain names the altered record.
    assert!(
        out.contains("partition 0 seq 51: modified_event: segment object replaced"),
        "{out}"
    );
    let mut json = args.clone();
    json.push("--json".into());
    let (_, out) = auditctl(&json).await;
    let v: Value = serde_json::from_str(&out).expect("json");
    let findings = v["partitions"][0]["findings"]
        .as_array()
        .expect("findings")
        .clone();
    assert!(
        findings
            .iter()
            .any(|f| f["seq"] == 77 && f["kind"] == "modified_event"),
        "{findings:#?}"
    );
    assert_eq!(v["partitions"][1]["ok"], true);

    // A missing segment object is a gap.
    std::fs::remove_file(
        root.join(
            schemas::segment::SegmentKey::new(2, "2024-06-01", 1, 50)
                .expect("key")
                .object_key(),
        ),
    )
    .expect("rm");
    let (code, out) = auditctl(&args).await;
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("partition 2 seq 1: missing_seq"), "{out}");
}

#[tokio::test]
async fn s3_archive_verifies_and_a_replaced_segment_is_found() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (key, keyset) = test_key(dir.path(), "k1");
    let prefix = unique("s3");
    let store = s3_store();
    let chain = build_chain(1, 200, &key, 100, BASE_US);
    write_archive(store.as_ref(), &prefix, &chain, 40).await;

    let args = verify_args(&keyset, s3_args(&prefix));
    let (code, out) = auditctl(&args).await;
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("partition 1: seq 1..=200, 200 records"),
        "{out}"
    );
    assert!(out.contains("sealed through seq 200: OK"), "{out}");

    replace_segment(store.as_ref(), &prefix, &chain, 40, 130).await;
    let (code, out) = auditctl(&args).await;
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("partition 1 seq 121: modified_event: segment object replaced"),
        "{out}"
    );

    // Wrong credentials: the store cannot be read (exit 3), and the secret is not printed.
    let mut bad = verify_args(&keyset, s3_args(&prefix));
    let i = bad
        .iter()
        .position(|a| a == "--s3-secret-access-key")
        .expect("flag");
    bad[i + 1] = "wrong-secret-xyz".into();
    let (code, out) = auditctl(&bad).await;
    assert_eq!(code, 3, "{out}");
    assert!(!out.contains("wrong-secret-xyz"), "{out}");
}

#[tokio::test]
async fn both_sources_are_verified_and_cross_checked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (key, keyset) = test_key(dir.path(), "k1");
    let chain = build_chain(0, 150, &key, 50, BASE_US);
    let db = TestDb::new("both").await;
    db.insert_chain(&chain).await;
    let prefix = unique("both");
    write_archive(s3_store().as_ref(), &prefix, &chain, 60).await;

    let mut args = s(&[
        "verify",
        "--source",
        "both",
        "--keys",
        &keyset.display().to_string(),
    ]);
    args.extend(db.args());
    args.extend(s3_args(&prefix));
    let (code, out) = auditctl(&args).await;
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("cross-check: 150 seqs in both stores"),
        "{out}"
    );

    // A consistent rewrite of the stored hash in ClickHouse alone: the chain check reports it,
    // and the cross-check names the first (partition, seq) where the stores disagree.
    db.mutate(&format!(
        "ALTER TABLE audit_events UPDATE hash = '{}' WHERE chain_partition = 0 AND seq = 33",
        "ab".repeat(32)
    ))
    .await;
    let (code, out) = auditctl(&args).await;
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("partition 0 seq 33: store_disagreement"),
        "{out}"
    );
    let mut json = args.clone();
    json.push("--json".into());
    let (_, out) = auditctl(&json).await;
    let v: Value = serde_json::from_str(&out).expect("json");
    assert_eq!(v["cross_check"]["first_disagreement"]["seq"], 33, "{out}");
    assert_eq!(v["archive"]["ok"], true);
    assert_eq!(v["ok"], false);
    db.drop().await;
}
