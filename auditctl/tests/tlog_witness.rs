//! `auditctl tlog-witness` against consistency documents of a real ClickHouse store (local
//! stack): a partition with signed whole-tree (v3) checkpoints at sizes 5, 13, 40 and 45 is
//! witnessed from 0 → 5 → 13 → 40 with no store access, each cosignature verifying with the
//! witness's key; a rollback, a validly signed fork, a tampered proof, a conflicting old size,
//! a key outside the key set, a retired key and another chain's origin are refused (exit 1, the reason named)
//! with the state file byte for byte unchanged; the honest 40 → 45 still goes through after.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use integrity::chain::Hash32;
use integrity::checkpoint::{sign, sign_fields, CheckpointFields, KeySet, SigningKey};
use integrity::cosignature;
use integrity::merkle;
use integrity::note::{Note, VerifierKey};
use integrity::tree::{leaf_hash, root_of};
use schemas::Checkpoint;
use serde_json::Value;

const SIZES: [u64; 4] = [5, 13, 40, 45];
const PARTITIONS: u32 = 2;
const ORIGIN: &str = "auditctl-test/partition/0";

/// The link hashes of `chain`, in seq order.
fn links(chain: &Chain) -> Vec<Hash32> {
    chain
        .events
        .iter()
        .map(|e| e.hash.as_slice().try_into().expect("32 bytes"))
        .collect()
}

/// The v3 fields (whole-tree root signed) of `partition` at `seq`, as the chainer signs them,
/// over `links` (leaf `i` = link hash of seq `i + 1`).
fn v3_fields(partition: u32, links: &[Hash32], first: u64, seq: u64) -> CheckpointFields {
    let leaves: Vec<Hash32> = links.iter().map(|l| leaf_hash(l)).collect();
    CheckpointFields {
        chain_id: CHAIN_ID.into(),
        partition,
        first_seq: first,
        seq,
        head_hash: links[seq as usize - 1],
        merkle_root: merkle::root(&links[first as usize - 1..seq as usize]),
        time_us: BASE_US + seq as i64,
        partition_count: PARTITIONS,
        tree_root: Some(root_of(&leaves[..seq as usize])),
    }
}

/// `n` records of `partition` with v3 checkpoints at genesis and at each of `sizes`.
fn v3_chain(partition: u32, n: u64, key: &SigningKey, sizes: &[u64]) -> Chain {
    let mut chain = build_chain(partition, n, key, n, BASE_US);
    let links = links(&chain);
    let mut cps: Vec<Checkpoint> = vec![sign(
        key,
        &CheckpointFields::genesis(CHAIN_ID, partition, BASE_US, PARTITIONS),
    )
    .expect("sign genesis")];
    let mut first = 1u64;
    for &seq in sizes {
        cps.push(sign(key, &v3_fields(partition, &links, first, seq)).expect("sign"));
        first = seq + 1;
    }
    chain.checkpoints = cps;
    chain
}

fn p(path: &Path) -> String {
    path.display().to_string()
}

struct Fixture {
    dir: tempfile::TempDir,
    keyset: PathBuf,
    key: SigningKey,
    chain: Chain,
    store: Vec<String>,
    state: PathBuf,
    db: TestDb,
}

impl Fixture {
    async fn new(tag: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let (key, keyset) = test_key(dir.path(), "k1");
        let db = TestDb::new(tag).await;
        let chain = v3_chain(0, 45, &key, &SIZES);
        db.insert_chain(&chain).await;
        db.insert_chain(&v3_chain(1, 45, &key, &SIZES)).await;
        let store = [s(&["--source", "clickhouse"]), db.args()].concat();
        let state = dir.path().join("witness-state");
        Fixture {
            dir,
            keyset,
            key,
            chain,
            store,
            state,
            db,
        }
    }

    /// `auditctl consistency` (in-process, from the store) for `old → new` of `partition`,
    /// written to a file; its path.
    async fn document(&self, partition: u32, old: u64, new: u64) -> PathBuf {
        let path = self
            .dir
            .path()
            .join(format!("doc-p{partition}-{old}-{new}.json"));
        let mut a = s(&[
            "consistency",
            "--keys",
            &p(&self.keyset),
            "--partition",
            &partition.to_string(),
            "--old",
            &old.to_string(),
            "--new",
            &new.to_string(),
            "--out",
            &p(&path),
        ]);
        a.extend(self.store.iter().cloned());
        let (code, out) = auditctl(&a).await;
        assert_eq!(code, 0, "consistency {old} -> {new}: {out}");
        path
    }

    /// `tlog-witness request` on a document (checked with the key set first): the body.
    async fn request(&self, doc: &Path) -> String {
        let (code, out) = auditctl(&s(&[
            "tlog-witness",
            "request",
            &p(doc),
            "--keys",
            &p(&self.keyset),
        ]))
        .await;
        assert_eq!(code, 0, "{out}");
        out
    }

    async fn add(&self, body: &str, extra: &[&str]) -> (u8, String) {
        self.add_with_keys(body, &self.keyset, extra).await
    }

    async fn add_with_keys(&self, body: &str, keyset: &Path, extra: &[&str]) -> (u8, String) {
        let path = self.dir.path().join("request.txt");
        std::fs::write(&path, body).expect("write request");
        let mut a = s(&[
            "tlog-witness",
            "add-checkpoint",
            &p(&path),
            "--state",
            &p(&self.state),
            "--keys",
            &p(keyset),
            "--name",
            "test-witness",
        ]);
        a.extend(s(extra));
        auditctl(&a).await
    }

    fn state_bytes(&self) -> Vec<u8> {
        std::fs::read(self.state.join("tlog-witness.json")).expect("state file")
    }

    fn witness_key(&self) -> VerifierKey {
        std::fs::read_to_string(self.state.join("witness.vkey"))
            .expect("witness.vkey")
            .trim()
            .parse()
            .expect("verifier key")
    }

    /// A v3 note of partition 0 signed by `key` (its public key given) over `fields`.
    fn note(&self, key: &SigningKey, pk: [u8; 32], fields: &CheckpointFields) -> String {
        sign_fields(key, fields)
            .expect("sign")
            .to_note(pk)
            .expect("a v3 note")
    }
}

fn doc_json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).expect("read doc")).expect("json")
}

/// The cosignature line `out` verifies, with the witness key, over the body of `note`: its
/// timestamp.
fn assert_cosigns(out: &str, note: &str, wkey: &VerifierKey) -> u64 {
    assert!(
        out.starts_with(&format!("— {} ", wkey.name())) && out.ends_with('\n'),
        "{out}"
    );
    let cosigned = Note::parse(format!("{note}{out}").as_bytes()).expect("note + cosignature");
    let sig = cosigned
        .signatures()
        .iter()
        .find(|s| s.name == wkey.name() && s.key_id == wkey.key_id())
        .expect("the witness's signature line");
    cosignature::verify(wkey, cosigned.text(), sig).expect("the cosignature verifies")
}

/// Expect a refusal of `kind` mentioning `needle`, the state file unchanged.
async fn assert_refused(f: &Fixture, body: &str, extra: &[&str], kind: &str, needle: &str) {
    let before = f.state_bytes();
    let (code, out) = f.add(body, extra).await;
    assert_eq!(code, 1, "{kind}: {out}");
    assert!(
        out.starts_with("REFUSED (") && out.contains(kind) && out.contains(needle),
        "{kind} / {needle}: {out}"
    );
    assert!(!out.contains("— "), "no cosignature on a refusal: {out}");
    assert_eq!(f.state_bytes(), before, "{kind}: the state file changed");
}

#[tokio::test]
async fn the_witness_cosigns_growth_from_consistency_documents_only() {
    let f = Fixture::new("tlog_witness").await;

    // 0 → 5 → 13 → 40, each from a consistency document of the real store.
    let mut cosigned_notes = Vec::new();
    for (old, new) in [(0, 5), (5, 13), (13, 40)] {
        let doc = f.document(0, old, new).await;
        let body = f.request(&doc).await;
        assert!(body.starts_with(&format!("old {old}\n")), "{body}");
        let note = doc_json(&doc)["new"]["note"]
            .as_str()
            .expect("note")
            .to_owned();
        assert!(body.ends_with(&format!("\n\n{note}")), "{body}");
        let (code, out) = f.add(&body, &[]).await;
        assert_eq!(code, 0, "{old} -> {new}: {out}");
        assert_cosigns(&out, &note, &f.witness_key());
        cosigned_notes.push(note);
    }
    let state: Value = serde_json::from_slice(&f.state_bytes()).expect("state json");
    assert_eq!(state[ORIGIN]["size"], 40, "{state}");
    assert_eq!(
        state[ORIGIN]["root"],
        doc_json(&f.dir.path().join("doc-p0-13-40.json"))["new"]["root"],
    );

    // The same checkpoint again (old 40, no proof): cosigned again, state still 40.
    let again = format!("old 40\n\n{}", cosigned_notes[2]);
    let (code, out) = f.add(&again, &[]).await;
    assert_eq!(code, 0, "{out}");
    assert_cosigns(&out, &cosigned_notes[2], &f.witness_key());

    // A second log (partition 1) is followed independently.
    let doc = f.document(1, 0, 13).await;
    let (code, out) = f.add(&f.request(&doc).await, &[]).await;
    assert_eq!(code, 0, "{out}");
    let (code, out) = auditctl(&s(&[
        "tlog-witness",
        "status",
        "--state",
        &p(&f.state),
        "--json",
    ]))
    .await;
    assert_eq!(code, 0, "{out}");
    let status: Value = serde_json::from_str(&out).expect("status json");
    assert_eq!(status["witness"], f.witness_key().to_string());
    assert_eq!(status["logs"][0]["origin"], ORIGIN);
    assert_eq!(status["logs"][0]["size"], 40);
    assert_eq!(status["logs"][1]["origin"], "auditctl-test/partition/1");
    assert_eq!(status["logs"][1]["size"], 13);
    f.db.drop().await;
}

#[tokio::test]
async fn rollback_fork_bad_proof_conflict_and_untrusted_keys_are_refused_state_unchanged() {
    let f = Fixture::new("tlog_witness_refusals").await;
    for (old, new) in [(0, 5), (5, 40)] {
        let doc = f.document(0, old, new).await;
        let (code, out) = f.add(&f.request(&doc).await, &[]).await;
        assert_eq!(code, 0, "{old} -> {new}: {out}");
    }

    // Rollback: the genuine checkpoint of size 13 after 40 was cosigned.
    let doc13 = doc_json(&f.document(0, 5, 13).await);
    let note13 = doc13["new"]["note"].as_str().expect("note");
    assert_refused(
        &f,
        &format!("old 40\n\n{note13}"),
        &[],
        "409 rollback",
        "size 13 is below the cosigned size 40",
    )
    .await;

    // A fork: a validly signed (test key) different root at the cosigned size 40.
    let mut forged_links = links(&f.chain);
    forged_links[20][0] ^= 1;
    let pk = KeySet::load(&f.keyset)
        .expect("keyset")
        .public_key("k1")
        .expect("k1");
    let fork = f.note(&f.key, pk, &v3_fields(0, &forged_links, 14, 40));
    assert_refused(
        &f,
        &format!("old 40\n\n{fork}"),
        &[],
        "409 fork",
        "a different root at the cosigned size 40",
    )
    .await;

    // The honest 40 → 45 with one proof hash flipped.
    let doc45 = f.document(0, 40, 45).await;
    let honest = f.request(&doc45).await;
    let (head, note45) = honest.split_once("\n\n").expect("blank line");
    let mut lines: Vec<String> = head.lines().map(str::to_owned).collect();
    assert!(lines.len() > 1, "a proof from 40 to 45: {honest}");
    let first = &lines[1];
    let flipped = if first.starts_with('A') { "B" } else { "A" };
    lines[1] = format!("{flipped}{}", &first[1..]);
    assert_refused(
        &f,
        &format!("{}\n\n{note45}", lines.join("\n")),
        &[],
        "422 inconsistent_proof",
        "not consistent with the cosigned head",
    )
    .await;

    // Conflict: the client believes the witness is at 5; the reply names the cosigned 40.
    let stale = f.request(&f.document(0, 5, 45).await).await;
    let before = f.state_bytes();
    let (code, out) = f.add(&stale, &[]).await;
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("409 conflict") && out.contains("cosigned size: 40"),
        "{out}"
    );
    assert_eq!(f.state_bytes(), before);

    // A key outside the key set signs the honest size-45 tree.
    let other_dir = f.dir.path().join("other");
    std::fs::create_dir_all(&other_dir).expect("mkdir");
    let (other, other_keyset) = test_key(&other_dir, "intruder");
    let other_pk = KeySet::load(&other_keyset)
        .expect("keyset")
        .public_key("intruder")
        .expect("pk");
    let intruder = f.note(&other, other_pk, &v3_fields(0, &links(&f.chain), 41, 45));
    assert_refused(
        &f,
        &format!("{head}\n\n{intruder}"),
        &[],
        "403 untrusted_checkpoint",
        "\"intruder\", which is not in the key set",
    )
    .await;

    // The same honest request, but k1 retired before the size-45 checkpoint's signed time:
    // a retired (or stolen old) key cannot get a cosignature.
    let mut retired = KeySet::load(&f.keyset).expect("keyset");
    retired.retire("k1", BASE_US + 41).expect("retire");
    let retired_path = f.dir.path().join("retired.json");
    std::fs::write(&retired_path, retired.to_json_pretty()).expect("write keyset");
    let before = f.state_bytes();
    let (code, out) = f.add_with_keys(&honest, &retired_path, &[]).await;
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("403 untrusted_checkpoint") && out.contains("is not valid at time_us"),
        "{out}"
    );
    assert_eq!(f.state_bytes(), before);

    // Another chain's log is not followed.
    assert_refused(
        &f,
        &honest,
        &["--chain-id", "some-other-chain"],
        "404 unknown_origin",
        ORIGIN,
    )
    .await;

    // After all that, the honest extension is cosigned.
    let (code, out) = f.add(&honest, &[]).await;
    assert_eq!(code, 0, "{out}");
    assert_cosigns(&out, note45, &f.witness_key());
    let state: Value = serde_json::from_slice(&f.state_bytes()).expect("state json");
    assert_eq!(state[ORIGIN]["size"], 45);
    f.db.drop().await;
}
