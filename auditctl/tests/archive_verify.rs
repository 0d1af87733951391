//! `auditctl verify --source archive|both`: a local folder and the local S3 (SeaweedFS).

mod common;

use std::sync::Arc;

use common::*;
use object_store::local::LocalFileSystem;
use object_store::ObjectStore;
use schemas::segment::{write_segment, write_segment_with, BlockCodec, Manifest, SegmentMeta};
use schemas::ChainedEvent;
use serde_json::Value;

/// Replace the segment holding `seq` with a re-encoded copy (compressed with `codec`) whose
/// event at `seq` has another actor (what an attacker with write access to the bucket would
/// do). Its manifest is kept.
async fn replace_segment(
    store: &dyn ObjectStore,
    prefix: &str,
    chain: &Chain,
    size: usize,
    seq: i64,
    codec: BlockCodec,
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
    let bytes = write_segment_with(&meta, &seg, codec).expect("segment");
    put(store, prefix, &meta.key().expect("key").object_key(), bytes).await;
}

/// Store `events` (contiguous, one partition and day) as one more segment, with its manifest
/// unless `manifest` is false: what a second writer would leave.
async fn put_segment(
    store: &dyn ObjectStore,
    prefix: &str,
    events: &[ChainedEvent],
    manifest: bool,
) {
    let meta = SegmentMeta::for_events(
        events,
        "audit.chained",
        1000,
        1000 + events.len() as i64 - 1,
        "other-writer/1",
    )
    .expect("meta");
    let bytes = write_segment(&meta, events).expect("segment");
    let key = meta.key().expect("key");
    if manifest {
        let m = Manifest::for_segment(&meta, &bytes, "2024-06-02T00:00:00Z").expect("manifest");
        put(store, prefix, &key.manifest_key(), m.to_json()).await;
    }
    put(store, prefix, &key.object_key(), bytes).await;
}

fn findings_of(out: &str, partition: i64) -> Vec<Value> {
    let v: Value = serde_json::from_str(out).expect("json");
    v["partitions"]
        .as_array()
        .expect("partitions")
        .iter()
        .find(|p| p["partition"] == partition)
        .expect("partition reported")["findings"]
        .as_array()
        .expect("findings")
        .clone()
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

    replace_segment(store.as_ref(), "", &chain0, 50, 77, BlockCodec::Deflate).await;
    let (code, out) = auditctl(&args).await;
    assert_eq!(code, 1, "{out}");
    // The object no longer matches its manifest (reported at the segment's first seq), and the
    // recomputed chain names the altered record.
    assert!(
        out.contains("partition 0 seq 51: segment_replaced: segment object"),
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
    // Both: the object is not the one written, and the record whose content changed.
    assert!(
        findings
            .iter()
            .any(|f| f["seq"] == 51 && f["kind"] == "segment_replaced"),
        "{findings:#?}"
    );
    assert!(
        findings
            .iter()
            .any(|f| f["seq"] == 77 && f["kind"] == "modified_event"),
        "{findings:#?}"
    );
    assert!(
        !findings
            .iter()
            .any(|f| f["kind"] == "modified_event" && f["seq"] != 77),
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

    // Segments alternate deflate and zstandard (`write_archive`); 121..=160 is the fourth.
    replace_segment(
        store.as_ref(),
        &prefix,
        &chain,
        40,
        130,
        BlockCodec::Zstandard,
    )
    .await;
    let (code, out) = auditctl(&args).await;
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("partition 1 seq 121: segment_replaced: segment object"),
        "{out}"
    );
    // The altered record inside the zstandard segment is named too (`--json` lists every
    // finding).
    let mut json = args.clone();
    json.push("--json".into());
    let (_, out) = auditctl(&json).await;
    let findings = findings_of(&out, 1);
    assert!(
        findings
            .iter()
            .any(|f| f["seq"] == 130 && f["kind"] == "modified_event"),
        "{findings:#?}"
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

/// Overlapping segments (two writers) on S3: identical copies are tolerated (a warning), a
/// different copy of a (partition, seq) is a fork at that seq, and the first copy is the one
/// verified.
#[tokio::test]
async fn s3_overlapping_segments_identical_are_tolerated_different_are_forks() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (key, keyset) = test_key(dir.path(), "k1");
    let prefix = unique("overlap");
    let store = s3_store();
    let chain = build_chain(3, 120, &key, 40, BASE_US);
    write_archive(store.as_ref(), &prefix, &chain, 50).await;
    let args = verify_args(&keyset, s3_args(&prefix));
    let mut json = args.clone();
    json.push("--json".into());

    // 41..=60 again, byte-for-byte the same records: overlaps 1-50 and 51-100.
    put_segment(store.as_ref(), &prefix, &chain.events[40..60], true).await;
    let (code, out) = auditctl(&args).await;
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("partition 3: seq 1..=120, 120 records"),
        "{out}"
    );
    // One warning per segment that repeats records: 41-60 repeats 41..=50 of 1-50, and 51-100
    // repeats 51..=60 of 41-60.
    assert!(out.contains("OK (2 warnings)"), "{out}");
    let (code, out) = auditctl(&json).await;
    assert_eq!(code, 0, "{out}");
    let f = findings_of(&out, 3);
    let got: Vec<_> = f
        .iter()
        .map(|f| (f["kind"].clone(), f["severity"].clone(), f["seq"].clone()))
        .collect();
    assert_eq!(
        got,
        vec![
            ("duplicate_seq".into(), "warning".into(), 41.into()),
            ("duplicate_seq".into(), "warning".into(), 51.into()),
        ],
        "{f:#?}"
    );

    // 61..=70 again, but seq 65 differs: a fork at 65, nothing else.
    let mut other: Vec<ChainedEvent> = chain.events[60..70].to_vec();
    other[4].event.actor.id = "mallory".into();
    put_segment(store.as_ref(), &prefix, &other, true).await;
    let (code, out) = auditctl(&args).await;
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("partition 3 seq 65: fork:"), "{out}");
    let (_, out) = auditctl(&json).await;
    let f = findings_of(&out, 3);
    let errors: Vec<_> = f.iter().filter(|f| f["severity"] == "error").collect();
    assert_eq!(errors.len(), 1, "{f:#?}");
    assert_eq!(errors[0]["kind"], "fork");
    assert_eq!(errors[0]["seq"], 65);
    assert_eq!(errors[0]["event_id"], "evt-p3-00065");
}

/// A segment whose manifest is gone is a warning (a writer crash between the two puts leaves
/// one until the sink resumes); its records are still verified.
#[tokio::test]
async fn a_segment_without_manifest_is_a_warning_and_still_verified() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (key, keyset) = test_key(dir.path(), "k1");
    let root = dir.path().join("archive");
    std::fs::create_dir_all(&root).expect("mkdir");
    let store: Arc<dyn ObjectStore> =
        Arc::new(LocalFileSystem::new_with_prefix(&root).expect("local store"));
    let chain = build_chain(0, 100, &key, 100, BASE_US);
    write_archive(store.as_ref(), "", &chain, 50).await;
    let k = schemas::segment::SegmentKey::new(0, "2024-06-01", 51, 100).expect("key");
    std::fs::remove_file(root.join(k.manifest_key())).expect("rm manifest");
    let args = verify_args(&keyset, s(&["--archive-url", &root.display().to_string()]));
    let mut json = args.clone();
    json.push("--json".into());
    let (code, out) = auditctl(&json).await;
    assert_eq!(code, 0, "{out}");
    let f = findings_of(&out, 0);
    assert_eq!(f.len(), 1, "{f:#?}");
    assert_eq!(f[0]["kind"], "segment_without_manifest");
    assert_eq!(f[0]["seq"], 51);

    // ... and altered content in it is still found by the chain check.
    let mut seg = chain.events[50..100].to_vec();
    seg[9].event.actor.id = "mallory".into();
    put_segment(store.as_ref(), "", &seg, false).await;
    let (code, out) = auditctl(&json).await;
    assert_eq!(code, 1, "{out}");
    let f = findings_of(&out, 0);
    assert!(
        f.iter()
            .any(|f| f["kind"] == "modified_event" && f["seq"] == 60),
        "{f:#?}"
    );
}

/// One environment file configures the sinks and auditctl: the sinks' variable names are read,
/// and S3 credentials fall back to the standard AWS_* variables.
#[tokio::test]
async fn the_binary_reads_the_sinks_env_names_and_falls_back_to_aws_credentials() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (key, keyset) = test_key(dir.path(), "k1");
    let prefix = unique("env");
    let chain = build_chain(0, 30, &key, 10, BASE_US);
    write_archive(s3_store().as_ref(), &prefix, &chain, 20).await;
    let bucket = env_or("S3_BUCKET", "audit-archive");
    let endpoint = env_or("S3_ENDPOINT", "http://127.0.0.1:8333");
    let access = env_or("S3_ACCESS_KEY_ID", "audit-local-test-access-key");
    let secret = env_or(
        "S3_SECRET_ACCESS_KEY",
        "audit-local-test-secret-NOT-A-SECRET",
    );
    let run = |envs: &[(&str, &str)], args: &[&str]| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_auditctl"));
        for (k, _) in std::env::vars() {
            if k.starts_with("AUDIT_") || k.starts_with("AWS_") || k.starts_with("AUDITCTL_") {
                cmd.env_remove(k);
            }
        }
        cmd.args(["verify", "--source", "archive", "--keys"])
            .arg(&keyset)
            .args(args)
            .envs(envs.iter().copied())
            .output()
            .expect("run auditctl")
    };
    let archive_url = format!("s3://{bucket}/{prefix}");
    // Everything from the sinks' names.
    let out = run(
        &[
            ("AUDIT_SINK_ARCHIVE_URL", &archive_url),
            ("AUDIT_S3_ENDPOINT", &endpoint),
            ("AUDIT_S3_ACCESS_KEY_ID", &access),
            ("AUDIT_S3_SECRET_ACCESS_KEY", &secret),
        ],
        &[],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("partition 0: seq 1..=30, 30 records"),
        "{text}"
    );
    // Bucket in AUDIT_SINK_ARCHIVE_URL, prefix in AUDIT_SINK_ARCHIVE_PREFIX, keys from AWS_*.
    let out = run(
        &[
            ("AUDIT_SINK_ARCHIVE_URL", &format!("s3://{bucket}")),
            ("AUDIT_SINK_ARCHIVE_PREFIX", &prefix),
            ("AUDIT_S3_ENDPOINT", &endpoint),
            ("AWS_ACCESS_KEY_ID", &access),
            ("AWS_SECRET_ACCESS_KEY", &secret),
        ],
        &[],
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Explicit settings win over AWS_*: a wrong secret is refused (exit 3), never printed.
    let out = run(
        &[
            ("AWS_ACCESS_KEY_ID", &access),
            ("AWS_SECRET_ACCESS_KEY", &secret),
            ("AUDIT_S3_SECRET_ACCESS_KEY", "wrong-secret-xyz"),
        ],
        &["--archive-url", &archive_url, "--s3-endpoint", &endpoint],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(!err.contains("wrong-secret-xyz"), "{err}");
}

/// Checkpoints cover contiguous ranges: the checkpoint object of a middle range deleted from
/// S3 leaves a gap, `missing_checkpoint` at its first uncovered seq.
#[tokio::test]
async fn s3_a_deleted_middle_checkpoint_object_is_a_missing_checkpoint() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (key, keyset) = test_key(dir.path(), "k1");
    let prefix = unique("midcp");
    let store = s3_store();
    let chain = build_chain(4, 150, &key, 50, BASE_US);
    write_archive(store.as_ref(), &prefix, &chain, 40).await;
    let mut args = verify_args(&keyset, s3_args(&prefix));
    args.push("--json".into());
    let (code, out) = auditctl(&args).await;
    assert_eq!(code, 0, "{out}");
    let victim = schemas::segment::checkpoint_key(4, 100, "k1");
    store
        .delete(&object_store::path::Path::from(format!(
            "{prefix}/{victim}"
        )))
        .await
        .expect("delete checkpoint object");
    let (code, out) = auditctl(&args).await;
    assert_eq!(code, 1, "{out}");
    let f = findings_of(&out, 4);
    let got: Vec<_> = f
        .iter()
        .map(|f| (f["kind"].clone(), f["seq"].clone()))
        .collect();
    assert_eq!(
        got,
        vec![("missing_checkpoint".into(), 51.into())],
        "{f:#?}"
    );
}

/// `--source both`: a partition deleted whole from ClickHouse (rows and checkpoints) leaves
/// ClickHouse's own report clean, but the archive still holds it: `store_disagreement`.
#[tokio::test]
async fn both_sources_a_partition_deleted_from_one_store_is_a_disagreement() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (key, keyset) = test_key(dir.path(), "k1");
    let db = TestDb::new("bothpart").await;
    let prefix = unique("bothpart");
    let store = s3_store();
    for p in [0, 1] {
        let chain = build_chain(p, 80, &key, 40, BASE_US);
        db.insert_chain(&chain).await;
        write_archive(store.as_ref(), &prefix, &chain, 50).await;
    }
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

    db.mutate("ALTER TABLE audit_events DELETE WHERE chain_partition = 1")
        .await;
    db.mutate("ALTER TABLE audit_checkpoints DELETE WHERE chain_partition = 1")
        .await;
    let (code, out) = auditctl(&args).await;
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("partition 1 seq 0: store_disagreement: partition 1 is in the archive"),
        "{out}"
    );
    let mut json = args.clone();
    json.push("--json".into());
    let (code, out) = auditctl(&json).await;
    assert_eq!(code, 1, "{out}");
    let v: Value = serde_json::from_str(&out).expect("json");
    // Each store on its own is clean: only the comparison can tell.
    assert_eq!(v["clickhouse"]["ok"], true, "{out}");
    assert_eq!(v["archive"]["ok"], true, "{out}");
    let f = v["cross_check"]["findings"].as_array().expect("findings");
    assert_eq!(f.len(), 1, "{out}");
    assert_eq!(f[0]["kind"], "store_disagreement");
    assert_eq!(f[0]["partition"], 1);
    db.drop().await;
}
