//! keygen → sign checkpoints → prove → check-proof, from ClickHouse and from the archive.

mod common;

use std::sync::Arc;

use common::*;
use integrity::checkpoint::{InclusionProof, KeySet, SigningKey};
use object_store::local::LocalFileSystem;
use object_store::ObjectStore;
use serde_json::Value;

/// Two keys through the CLI: k1 from 2024-01-01, then k2 from 2024-06-02 (a rotation).
async fn keygen_two(dir: &std::path::Path) -> (SigningKey, std::path::PathBuf) {
    let keyset = dir.join("keyset.json");
    let ks = keyset.display().to_string();
    let k1 = dir.join("k1.pk8");
    let (code, out) = auditctl(&s(&[
        "keygen",
        "--key-id",
        "k1",
        "--out",
        &k1.display().to_string(),
        "--keyset",
        &ks,
        "--not-before",
        "2024-01-01T00:00:00Z",
    ]))
    .await;
    assert_eq!(code, 0, "{out}");
    let v: Value = serde_json::from_str(&out).expect("keygen prints JSON");
    assert_eq!(v["public_key"]["key_id"], "k1");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&k1)
            .expect("key file")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "private key must be owner-only");
    }
    // Never overwrites a key.
    let (code, _) = auditctl(&s(&[
        "keygen",
        "--key-id",
        "k9",
        "--out",
        &k1.display().to_string(),
    ]))
    .await;
    assert_eq!(code, 2);

    let k2 = dir.join("k2.pk8");
    let (code, out) = auditctl(&s(&[
        "keygen",
        "--key-id",
        "k2",
        "--out",
        &k2.display().to_string(),
        "--keyset",
        &ks,
        "--not-before",
        "2024-06-02T00:00:00Z",
    ]))
    .await;
    assert_eq!(code, 0, "{out}");
    let set = KeySet::load(&keyset).expect("keyset");
    let e1 = set.get("k1").expect("k1 kept");
    let e2 = set.get("k2").expect("k2 added");
    assert_eq!(
        e1.not_after_us,
        Some(e2.not_before_us),
        "k1 retired when k2 starts"
    );
    assert_eq!(e2.not_after_us, None);
    // A key id is never reused; rotation never goes back in time.
    let (code, _) = auditctl(&s(&[
        "keygen",
        "--key-id",
        "k2",
        "--out",
        &dir.join("x.pk8").display().to_string(),
        "--keyset",
        &ks,
    ]))
    .await;
    assert_eq!(code, 2);
    assert!(
        !dir.join("x.pk8").exists(),
        "a refused rotation leaves no key file"
    );

    let key = SigningKey::from_pkcs8_file("k1", &k1).expect("load k1");
    (key, keyset)
}

/// One way of altering a proof file.
type Tamper = Box<dyn Fn(&mut InclusionProof)>;

async fn prove_and_check(
    source_args: Vec<String>,
    keyset: &std::path::Path,
    dir: &std::path::Path,
    event_id: &str,
) {
    let proof = dir.join(format!("{event_id}.proof.json"));
    let mut args = s(&[
        "prove",
        event_id,
        "--keys",
        &keyset.display().to_string(),
        "--out",
        &proof.display().to_string(),
    ]);
    args.extend(source_args);
    let (code, out) = auditctl(&args).await;
    assert_eq!(code, 0, "{out}");
    let check = s(&[
        "check-proof",
        &proof.display().to_string(),
        "--keys",
        &keyset.display().to_string(),
    ]);
    let (code, out) = auditctl(&check).await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("proof OK: event content of"), "{out}");

    let good: InclusionProof =
        serde_json::from_str(&std::fs::read_to_string(&proof).expect("read")).expect("proof json");
    let tamper = |f: &dyn Fn(&mut InclusionProof)| {
        let mut p = good.clone();
        f(&mut p);
        std::fs::write(&proof, serde_json::to_string_pretty(&p).expect("json")).expect("write");
    };
    let cases: Vec<(&str, Tamper)> = vec![
        ("event hash", Box::new(|p| p.event_hash = "00".repeat(32))),
        (
            "merkle path",
            Box::new(|p| {
                if let Some(h) = p.merkle_path.first_mut() {
                    *h = "11".repeat(32);
                }
            }),
        ),
        ("signed time", Box::new(|p| p.checkpoint.time_us += 1)),
        (
            "event id",
            Box::new(|p| p.event_id = "evt-someone-else".into()),
        ),
        (
            // Without the bytes, nothing ties the hash to an id: relabelling is refused.
            "event id, with the event bytes left out",
            Box::new(|p| {
                p.event = None;
                p.event_id = "evt-someone-else".into();
            }),
        ),
        ("event bytes left out", Box::new(|p| p.event = None)),
        (
            "event bytes",
            Box::new(|p| {
                if let Some(ev) = &mut p.event {
                    ev.canonical = ev.canonical.replacen('A', "B", 1);
                }
            }),
        ),
    ];
    for (what, f) in cases {
        tamper(&*f);
        let (code, out) = auditctl(&check).await;
        assert_eq!(code, 1, "tampered {what} must fail: {out}");
        assert!(out.contains("proof FAILED"), "{out}");
    }
    // --hash-only accepts a proof without bytes, and says the id is not proven.
    tamper(&|p: &mut InclusionProof| {
        p.event = None;
        p.event_id = "evt-someone-else".into();
    });
    let mut hash_only = check.clone();
    hash_only.push("--hash-only".into());
    let (code, out) = auditctl(&hash_only).await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("proof OK: event hash"), "{out}");
    assert!(
        out.contains("the event id \"evt-someone-else\" is NOT proven"),
        "{out}"
    );
    // ... but never accepts a relabelled proof that carries the bytes.
    tamper(&|p: &mut InclusionProof| p.event_id = "evt-someone-else".into());
    let (code, out) = auditctl(&hash_only).await;
    assert_eq!(code, 1, "{out}");
    std::fs::write(&proof, "{ not json").expect("write");
    let (code, _) = auditctl(&check).await;
    assert_eq!(code, 1);
}

#[tokio::test]
async fn keygen_sign_prove_check_from_clickhouse() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (key, keyset) = keygen_two(dir.path()).await;
    let db = TestDb::new("prove").await;
    // Checkpoints signed by k1 at 2024-06-01 (k1's window), every 64 seqs.
    let chain = build_chain(3, 200, &key, 64, BASE_US);
    db.insert_chain(&chain).await;
    let mut verify = s(&["verify", "--keys", &keyset.display().to_string()]);
    verify.extend(db.args());
    let (code, out) = auditctl(&verify).await;
    assert_eq!(code, 0, "{out}");

    prove_and_check(db.args(), &keyset, dir.path(), "evt-p3-00100").await;
    prove_and_check(db.args(), &keyset, dir.path(), "evt-p3-00200").await;

    // Unknown event: usage error.
    let mut args = s(&["prove", "evt-nope"]);
    args.extend(db.args());
    let (code, _) = auditctl(&args).await;
    assert_eq!(code, 2);

    // A modified event inside the checkpoint's range: no proof is produced (exit 1).
    db.mutate("ALTER TABLE audit_events UPDATE actor_id = 'mallory' WHERE chain_partition = 3 AND seq = 70")
        .await;
    let mut args = s(&[
        "prove",
        "evt-p3-00100",
        "--keys",
        &keyset.display().to_string(),
    ]);
    args.extend(db.args());
    let (code, out) = auditctl(&args).await;
    assert_eq!(code, 1, "{out}");
    db.drop().await;
}

#[tokio::test]
async fn prove_from_a_local_archive() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (key, keyset) = keygen_two(dir.path()).await;
    let root = dir.path().join("archive");
    std::fs::create_dir_all(&root).expect("mkdir");
    let store: Arc<dyn ObjectStore> =
        Arc::new(LocalFileSystem::new_with_prefix(&root).expect("store"));
    let chain = build_chain(0, 120, &key, 50, BASE_US);
    write_archive(store.as_ref(), "", &chain, 30).await;
    let args = s(&[
        "--source",
        "archive",
        "--archive-url",
        &root.display().to_string(),
    ]);
    prove_and_check(args, &keyset, dir.path(), "evt-p0-00077").await;
}
