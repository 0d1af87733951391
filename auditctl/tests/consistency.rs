//! `auditctl consistency` / `check-consistency` / `checkpoints` against the real stores of the
//! local stack (ClickHouse on 8123, SeaweedFS S3 on 8333): a partition with signed whole-tree
//! (v3) checkpoints at sizes 0, 5, 13 and 40; a consistency document between two of them checks
//! offline, and every tampering of the document or of the store between the two is refused
//! with a precise message (exit 1).

mod common;

use std::path::Path;

use common::*;
use integrity::chain::Hash32;
use integrity::checkpoint::{sign, CheckpointFields, SigningKey};
use integrity::merkle;
use integrity::tree::{leaf_hash, root_of};
use schemas::Checkpoint;
use serde_json::Value;

const SIZES: [u64; 3] = [5, 13, 40];
const PARTITIONS: u32 = 2;

/// `n` records of `partition` with v3 checkpoints (whole-tree root signed) at genesis and at
/// each of `sizes`, as the chainer signs them.
fn v3_chain(partition: u32, n: u64, key: &SigningKey, sizes: &[u64]) -> Chain {
    // The records only (one range-only checkpoint at the end, dropped).
    let mut chain = build_chain(partition, n, key, n, BASE_US);
    let links: Vec<Hash32> = chain
        .events
        .iter()
        .map(|e| e.hash.as_slice().try_into().expect("32 bytes"))
        .collect();
    let leaves: Vec<Hash32> = links.iter().map(|l| leaf_hash(l)).collect();
    let mut cps: Vec<Checkpoint> = vec![sign(
        key,
        &CheckpointFields::genesis(CHAIN_ID, partition, BASE_US, PARTITIONS),
    )
    .expect("sign genesis")];
    let mut first = 1u64;
    for &seq in sizes {
        let fields = CheckpointFields {
            chain_id: CHAIN_ID.into(),
            partition,
            first_seq: first,
            seq,
            head_hash: links[seq as usize - 1],
            merkle_root: merkle::root(&links[first as usize - 1..seq as usize]),
            time_us: BASE_US + seq as i64,
            partition_count: PARTITIONS,
            tree_root: Some(root_of(&leaves[..seq as usize])),
        };
        cps.push(sign(key, &fields).expect("sign"));
        first = seq + 1;
    }
    chain.checkpoints = cps;
    chain
}

fn p(path: &Path) -> String {
    path.display().to_string()
}

fn consistency_args(
    store: &[String],
    keyset: &Path,
    partition: u32,
    extra: &[&str],
) -> Vec<String> {
    let mut a = s(&[
        "consistency",
        "--keys",
        &p(keyset),
        "--partition",
        &partition.to_string(),
    ]);
    a.extend(s(extra));
    a.extend(store.iter().cloned());
    a
}

async fn check_doc(doc: &str, keyset: &Path, dir: &Path, name: &str) -> (u8, String) {
    let path = dir.join(name);
    std::fs::write(&path, doc).expect("write doc");
    auditctl(&s(&["check-consistency", &p(&path), "--keys", &p(keyset)])).await
}

fn read_json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).expect("read doc")).expect("json doc")
}

#[tokio::test]
async fn a_consistency_proof_between_signed_checkpoints_checks_offline_and_tampering_fails() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (key, keyset) = test_key(dir.path(), "k1");
    let db = TestDb::new("consistency").await;
    db.insert_chain(&v3_chain(0, 45, &key, &SIZES)).await;
    db.insert_chain(&v3_chain(1, 45, &key, &SIZES)).await;
    let store = [s(&["--source", "clickhouse"]), db.args()].concat();

    // 5 → 40, written to a file; the document checks offline.
    let doc_path = dir.path().join("p0-5-40.json");
    let (code, out) = auditctl(&consistency_args(
        &store,
        &keyset,
        0,
        &["--old", "5", "--new", "40", "--out", &p(&doc_path)],
    ))
    .await;
    assert_eq!(code, 0, "{out}");
    let doc = read_json(&doc_path);
    assert_eq!(doc["origin"], "auditctl-test/partition/0");
    assert_eq!(doc["old"]["size"], 5);
    assert_eq!(doc["new"]["size"], 40);
    assert!(doc["old"]["note"]
        .as_str()
        .expect("note")
        .starts_with("auditctl-test/partition/0\n5\n"));
    let proof = doc["proof"].as_array().expect("proof").clone();
    assert!(!proof.is_empty());
    let (code, out) = auditctl(&s(&[
        "check-consistency",
        &p(&doc_path),
        "--keys",
        &p(&keyset),
    ]))
    .await;
    assert_eq!(code, 0, "{out}");
    assert!(
        out.starts_with("consistent: auditctl-test/partition/0"),
        "{out}"
    );

    // Default --new: the newest valid v3 checkpoint (40), to stdout; from genesis: no proof.
    let (code, out) = auditctl(&consistency_args(&store, &keyset, 0, &["--old", "0"])).await;
    assert_eq!(code, 0, "{out}");
    let genesis: Value = serde_json::from_str(&out).expect("json");
    assert_eq!(genesis["old"]["size"], 0);
    assert_eq!(genesis["new"]["size"], 40);
    assert_eq!(genesis["proof"], serde_json::json!([]));
    let (code, out) = check_doc(&genesis.to_string(), &keyset, dir.path(), "g.json").await;
    assert_eq!(code, 0, "{out}");

    // A size no valid checkpoint signs: usage error, listing the sizes there are.
    let (code, out) = auditctl(&consistency_args(&store, &keyset, 0, &["--old", "6"])).await;
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("sizes [0, 5, 13, 40]"), "{out}");

    // Tampered documents: exit 1 with a precise message.
    let mut flipped = doc.clone();
    let h = proof[0].as_str().expect("b64");
    let other = if h.starts_with('A') { "B" } else { "A" };
    flipped["proof"][0] = Value::from(format!("{other}{}", &h[1..]));
    let (code, out) = check_doc(&flipped.to_string(), &keyset, dir.path(), "f.json").await;
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("consistency FAILED") && out.contains("does not check"),
        "{out}"
    );

    let mut swapped = doc.clone();
    swapped["old"] = doc["new"].clone();
    swapped["new"] = doc["old"].clone();
    let (code, out) = check_doc(&swapped.to_string(), &keyset, dir.path(), "s.json").await;
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("swapped"), "{out}");

    // Partition 1's genuine note of the same size in partition 0's document.
    let p1_path = dir.path().join("p1.json");
    let (code, out) = auditctl(&consistency_args(
        &store,
        &keyset,
        1,
        &["--old", "13", "--out", &p(&p1_path)],
    ))
    .await;
    assert_eq!(code, 0, "{out}");
    let p1 = read_json(&p1_path);
    let mut mixed = doc.clone();
    mixed["new"] = p1["new"].clone();
    let (code, out) = check_doc(&mixed.to_string(), &keyset, dir.path(), "m.json").await;
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("the new note") && out.contains("auditctl-test/partition/1"),
        "{out}"
    );

    // An edited note (its size changed, the signature kept).
    let mut edited = doc.clone();
    let note = doc["old"]["note"]
        .as_str()
        .expect("note")
        .replacen("\n5\n", "\n6\n", 1);
    edited["old"]["note"] = Value::from(note);
    edited["old"]["size"] = Value::from(6);
    let (code, out) = check_doc(&edited.to_string(), &keyset, dir.path(), "e.json").await;
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("the old note") && out.contains("does not verify"),
        "{out}"
    );

    // `checkpoints --vkeys`: each partition's newest note with its vkey, which opens it.
    let (code, out) = auditctl(
        &[
            s(&["checkpoints", "--vkeys", "--keys", &p(&keyset)]),
            store.clone(),
        ]
        .concat(),
    )
    .await;
    assert_eq!(code, 0, "{out}");
    let blocks: Vec<&str> = out.split("\n\n").collect();
    // Each block: vkey line, then the note (whose own blank line splits it once more).
    assert_eq!(blocks.len(), 4, "{out}");
    for (i, part) in [0u32, 1].iter().enumerate() {
        let (vkey, body) = blocks[2 * i].split_once('\n').expect("vkey line");
        let note = format!("{body}\n\n{}\n", blocks[2 * i + 1].trim_end());
        let origin = format!("auditctl-test/partition/{part}");
        let vkey: integrity::note::VerifierKey = vkey.parse().expect("vkey");
        let opened = integrity::tlog::Checkpoint::open(note.as_bytes(), &origin, &[vkey])
            .unwrap_or_else(|e| panic!("{e}: {note:?}"));
        assert_eq!(opened.checkpoint.size(), 40);
    }
    db.drop().await;
}

#[tokio::test]
async fn an_edited_row_between_the_checkpoints_is_a_tree_root_mismatch() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (key, keyset) = test_key(dir.path(), "k1");
    let db = TestDb::new("consistency_edit").await;
    db.insert_chain(&v3_chain(0, 45, &key, &SIZES)).await;
    let store = [s(&["--source", "clickhouse"]), db.args()].concat();
    let args = consistency_args(&store, &keyset, 0, &["--old", "5", "--new", "40"]);
    let (code, out) = auditctl(&args).await;
    assert_eq!(code, 0, "{out}");

    db.mutate("ALTER TABLE audit_events UPDATE actor_id = 'mallory' WHERE chain_partition = 0 AND seq = 20")
        .await;
    let (code, out) = auditctl(&args).await;
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("tree root mismatch at size 40") && out.contains("seq 21"),
        "{out}"
    );
    // Below the old size, the old root is named.
    db.mutate("ALTER TABLE audit_events UPDATE actor_id = 'mallory' WHERE chain_partition = 0 AND seq = 3")
        .await;
    let (code, out) = auditctl(&args).await;
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("tree root mismatch at size 5"), "{out}");
    // A deleted row: the tree cannot be rebuilt.
    db.mutate("ALTER TABLE audit_events DELETE WHERE chain_partition = 0 AND seq = 30")
        .await;
    let (code, out) = auditctl(&args).await;
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("seq 30 is missing"), "{out}");
    db.drop().await;
}

#[tokio::test]
async fn consistency_from_the_archive() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (key, keyset) = test_key(dir.path(), "k1");
    let prefix = unique("consistency");
    let os = s3_store();
    write_archive(os.as_ref(), &prefix, &v3_chain(0, 45, &key, &SIZES), 7).await;
    let store = [s(&["--source", "archive"]), s3_args(&prefix)].concat();
    let doc_path = dir.path().join("a.json");
    let (code, out) = auditctl(&consistency_args(
        &store,
        &keyset,
        0,
        &["--old", "13", "--window", "4", "--out", &p(&doc_path)],
    ))
    .await;
    assert_eq!(code, 0, "{out}");
    let doc = read_json(&doc_path);
    assert_eq!(
        (doc["old"]["size"].as_u64(), doc["new"]["size"].as_u64()),
        (Some(13), Some(40))
    );
    let (code, out) = auditctl(&s(&[
        "check-consistency",
        &p(&doc_path),
        "--keys",
        &p(&keyset),
    ]))
    .await;
    assert_eq!(code, 0, "{out}");

    // The same document from ClickHouse holding the same chain.
    let db = TestDb::new("consistency_same").await;
    db.insert_chain(&v3_chain(0, 45, &key, &SIZES)).await;
    let (code, out) = auditctl(&consistency_args(
        &[s(&["--source", "clickhouse"]), db.args()].concat(),
        &keyset,
        0,
        &["--old", "13"],
    ))
    .await;
    assert_eq!(code, 0, "{out}");
    let from_ch: Value = serde_json::from_str(&out).expect("json");
    assert_eq!(from_ch, doc);
    db.drop().await;
}

/// The auditor's flow: pin the newest note (`checkpoints --partition`), later prove that the
/// grown log extends it (`consistency --old-note`), even after the store lost the pinned
/// checkpoint; a record edited below the pinned size is a root mismatch with the pin.
#[tokio::test]
async fn a_pinned_note_is_extended_by_the_newest_checkpoint() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (key, keyset) = test_key(dir.path(), "k1");
    let db = TestDb::new("consistency_pin").await;
    let chain = v3_chain(0, 45, &key, &SIZES);
    db.insert_events(&chain.events).await;
    // Signed so far: genesis, 5 and 13.
    db.insert_checkpoints(&chain.checkpoints[..3]).await;
    let store = [s(&["--source", "clickhouse"]), db.args()].concat();

    let (code, pin) = auditctl(
        &[
            s(&["checkpoints", "--partition", "0", "--keys", &p(&keyset)]),
            store.clone(),
        ]
        .concat(),
    )
    .await;
    assert_eq!(code, 0, "{pin}");
    assert!(pin.starts_with("auditctl-test/partition/0\n13\n"), "{pin}");
    let pin_path = dir.path().join("pin.note");
    std::fs::write(&pin_path, &pin).expect("write pin");

    // The log grows; the pinned checkpoint is then deleted from the store.
    db.insert_checkpoints(&chain.checkpoints[3..]).await;
    db.mutate("ALTER TABLE audit_checkpoints DELETE WHERE chain_partition = 0 AND seq = 13")
        .await;
    let args = consistency_args(&store, &keyset, 0, &["--old-note", &p(&pin_path)]);
    let (code, out) = auditctl(&args).await;
    assert_eq!(code, 0, "{out}");
    let doc: Value = serde_json::from_str(&out).expect("json");
    assert_eq!(doc["old"]["note"], Value::from(pin.clone()));
    assert_eq!(doc["new"]["size"], 40);
    let (code, out) = check_doc(&doc.to_string(), &keyset, dir.path(), "d.json").await;
    assert_eq!(code, 0, "{out}");

    // An edited pin is refused before the records are read.
    let bad_pin = dir.path().join("bad.note");
    std::fs::write(&bad_pin, pin.replacen("\n13\n", "\n12\n", 1)).expect("write");
    let (code, out) = auditctl(&consistency_args(
        &store,
        &keyset,
        0,
        &["--old-note", &p(&bad_pin)],
    ))
    .await;
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("does not verify"), "{out}");

    // A record below the pinned size rewritten: the store no longer extends the pin.
    db.mutate("ALTER TABLE audit_events UPDATE actor_id = 'mallory' WHERE chain_partition = 0 AND seq = 10")
        .await;
    let (code, out) = auditctl(&args).await;
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("tree root mismatch at size 13"), "{out}");

    // The signer (key stolen, or a bug) signs another root for the pinned size: a fork, named
    // before any record is read.
    let mut forked = integrity::checkpoint::SignedCheckpoint::try_from(&chain.checkpoints[2])
        .expect("checkpoint")
        .fields;
    assert_eq!(forked.seq, 13);
    forked.tree_root = Some([7; 32]);
    forked.time_us += 1_000;
    db.insert_checkpoints(&[sign(&key, &forked).expect("sign")])
        .await;
    let (code, out) = auditctl(&args).await;
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("signed fork"), "{out}");
    // (With --old, once the genuine checkpoint is back next to the other one.)
    db.insert_checkpoints(&chain.checkpoints[2..3]).await;
    let (code, out) = auditctl(&consistency_args(&store, &keyset, 0, &["--old", "13"])).await;
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("signed fork"), "{out}");
    db.drop().await;
}
