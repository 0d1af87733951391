//! Trust anchors against the real stores of the local stack (ClickHouse on 8123, SeaweedFS S3 on
//! 8333): each attack issue 7 lists as passing `verify` (whole partition deleted with its
//! checkpoints; tail deleted with the newest checkpoints; consistent rewrite from genesis) is
//! shown to pass without a pin and to be named precisely with one (`--trusted-checkpoint` from
//! `--save-checkpoints`, a checkpoint copied as JSON, or a witness's state); the witness refuses
//! a rollback and a fork and leaves its state unchanged.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use futures::TryStreamExt;
use integrity::chain::ChainHead;
use integrity::checkpoint::{CheckpointJson, SigningKey};
use object_store::ObjectStore;
use schemas::avro::canonical_bytes;
use schemas::ChainedEvent;
use serde_json::Value;

const SEG: usize = 50;

/// A ClickHouse database holding partition 0 (300 records, checkpoints every 100) and
/// partition 1 (120, every 50), with the key set in `dir`; partition 0's chain and the key.
async fn ch_setup(tag: &str) -> (TestDb, tempfile::TempDir, PathBuf, Chain, SigningKey) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (key, keyset) = test_key(dir.path(), "k1");
    let db = TestDb::new(tag).await;
    let p0 = build_chain(0, 300, &key, 100, BASE_US);
    db.insert_chain(&p0).await;
    db.insert_chain(&build_chain(1, 120, &key, 50, BASE_US))
        .await;
    (db, dir, keyset, p0, key)
}

fn verify_ch(db: &TestDb, keyset: Option<&Path>, extra: &[&str]) -> Vec<String> {
    let mut a = s(&["verify", "--source", "clickhouse", "--json"]);
    match keyset {
        Some(k) => a.extend(s(&["--keys", &k.display().to_string()])),
        None => a.push("--no-signatures".into()),
    }
    a.extend(db.args());
    a.extend(s(extra));
    a
}

fn json(out: &str) -> Value {
    serde_json::from_str(out).unwrap_or_else(|e| panic!("not a JSON report ({e}): {out}"))
}

/// (partition, seq, kind) of the anchor findings at `path` (e.g. `/trusted_checkpoints`).
fn anchor_findings(v: &Value, path: &str) -> Vec<(u64, u64, String)> {
    v.pointer(&format!("{path}/findings"))
        .and_then(Value::as_array)
        .unwrap_or_else(|| panic!("no {path}/findings in {v}"))
        .iter()
        .map(|f| {
            (
                f["partition"].as_u64().expect("partition"),
                f["seq"].as_u64().expect("seq"),
                f["kind"].as_str().expect("kind").to_owned(),
            )
        })
        .collect()
}

/// Every record of `events` chained again from genesis (the attacker's consistent rewrite).
fn rechain(partition: u32, events: &[ChainedEvent]) -> Vec<ChainedEvent> {
    let mut head = ChainHead::genesis(partition);
    events
        .iter()
        .map(|e| {
            let link = head.next(&canonical_bytes(&e.event).expect("canonical"));
            ChainedEvent {
                seq: link.seq as i64,
                prev_hash: link.prev_hash.to_vec(),
                hash: link.hash.to_vec(),
                ..e.clone()
            }
        })
        .collect()
}

fn pins_arg(pins: &Path) -> String {
    pins.display().to_string()
}

/// Pin what the store holds now: a clean run with --save-checkpoints.
async fn save_pins(args: Vec<String>, pins: &Path) {
    let mut a = args;
    a.extend(s(&["--save-checkpoints", &pins_arg(pins)]));
    let (code, out) = auditctl(&a).await;
    assert_eq!(code, 0, "{out}");
    assert!(pins.exists(), "no pin file written: {out}");
}

#[tokio::test]
async fn clickhouse_partition_deleted_with_its_checkpoints_is_trusted_partition_missing() {
    let (db, dir, keyset, _, _) = ch_setup("pin_part").await;
    let pins = dir.path().join("pins.txt");
    save_pins(verify_ch(&db, Some(&keyset), &[]), &pins).await;
    let text = std::fs::read_to_string(&pins).expect("pins");
    assert!(
        text.contains("auditctl-test/partition/0\n300\n")
            && text.contains("auditctl-test/partition/1\n120\n"),
        "{text}"
    );

    db.mutate("ALTER TABLE audit_events DELETE WHERE chain_partition = 1")
        .await;
    db.mutate("ALTER TABLE audit_checkpoints DELETE WHERE chain_partition = 1")
        .await;
    // Today's verify: nothing of partition 1 is left to check, so the store verifies.
    let (code, out) = auditctl(&verify_ch(&db, Some(&keyset), &[])).await;
    assert_eq!(code, 0, "{out}");

    let (code, out) = auditctl(&verify_ch(
        &db,
        Some(&keyset),
        &["--trusted-checkpoint", &pins_arg(&pins)],
    ))
    .await;
    assert_eq!(code, 1, "{out}");
    let v = json(&out);
    assert_eq!(
        anchor_findings(&v, "/trusted_checkpoints"),
        vec![(1, 120, "trusted_partition_missing".to_owned())]
    );
    assert_eq!(v["ok"], false);
    // The human report names it too.
    let mut human = verify_ch(
        &db,
        Some(&keyset),
        &["--trusted-checkpoint", &pins_arg(&pins)],
    );
    human.retain(|a| a != "--json");
    let (code, out) = auditctl(&human).await;
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("partition 1 seq 120: trusted_partition_missing:"),
        "{out}"
    );
    db.drop().await;
}

#[tokio::test]
async fn clickhouse_tail_deleted_with_the_newest_checkpoints_is_rollback_below_trusted() {
    let (db, dir, keyset, p0, _) = ch_setup("pin_tail").await;
    let pins = dir.path().join("pins.txt");
    save_pins(verify_ch(&db, Some(&keyset), &[]), &pins).await;
    // The newest checkpoint as an auditor would copy it from the checkpoints topic (JSON), and
    // the same with its head altered (not what the chainer signed).
    let cp300 = CheckpointJson::from(p0.checkpoints.last().expect("checkpoint"));
    let copied = dir.path().join("cp300.json");
    std::fs::write(&copied, serde_json::to_vec(&cp300).expect("json")).expect("write");
    let mut forged = cp300.clone();
    forged.head_hash = hex::encode([7u8; 32]);
    let forged_path = dir.path().join("forged.json");
    std::fs::write(&forged_path, serde_json::to_vec(&forged).expect("json")).expect("write");

    db.mutate("ALTER TABLE audit_events DELETE WHERE chain_partition = 0 AND seq > 250")
        .await;
    db.mutate("ALTER TABLE audit_checkpoints DELETE WHERE chain_partition = 0 AND seq > 200")
        .await;
    let (code, out) = auditctl(&verify_ch(&db, Some(&keyset), &[])).await;
    assert_eq!(code, 0, "the cut passes without a pin: {out}");

    for file in [&pins, &copied] {
        let (code, out) = auditctl(&verify_ch(
            &db,
            Some(&keyset),
            &["--trusted-checkpoint", &pins_arg(file)],
        ))
        .await;
        assert_eq!(code, 1, "{out}");
        assert_eq!(
            anchor_findings(&json(&out), "/trusted_checkpoints"),
            vec![(0, 300, "rollback_below_trusted".to_owned())],
            "{}",
            file.display()
        );
    }
    // A copied checkpoint that does not verify with --keys is not trusted, and says so.
    let (code, out) = auditctl(&verify_ch(
        &db,
        Some(&keyset),
        &["--trusted-checkpoint", &pins_arg(&forged_path)],
    ))
    .await;
    assert_eq!(code, 1, "{out}");
    assert_eq!(
        anchor_findings(&json(&out), "/trusted_checkpoints"),
        vec![(0, 300, "trusted_checkpoint_invalid".to_owned())]
    );
    db.drop().await;
}

#[tokio::test]
async fn clickhouse_consistent_rewrite_from_genesis_is_trusted_checkpoint_mismatch() {
    let (db, dir, keyset, p0, _) = ch_setup("pin_rewrite").await;
    let pins = dir.path().join("pins.txt");
    // Pinned without keys (an auditor's trust-on-first-use record): pins work without keys.
    save_pins(verify_ch(&db, None, &["--chain-id", CHAIN_ID]), &pins).await;

    // The attacker edits one event and re-chains the whole partition from genesis; the old
    // checkpoints no longer match, so they go too.
    let mut events = p0.events.clone();
    events[4].event.actor.id = "mallory".into();
    let rewritten = rechain(0, &events);
    db.mutate("ALTER TABLE audit_events DELETE WHERE chain_partition = 0")
        .await;
    db.mutate("ALTER TABLE audit_checkpoints DELETE WHERE chain_partition = 0")
        .await;
    db.insert_events(&rewritten).await;

    for keys in [Some(keyset.as_path()), None] {
        let (code, out) = auditctl(&verify_ch(&db, keys, &[])).await;
        assert_eq!(
            code, 0,
            "the rewrite passes without a pin (keys: {keys:?}): {out}"
        );
        let (code, out) = auditctl(&verify_ch(
            &db,
            keys,
            &["--trusted-checkpoint", &pins_arg(&pins)],
        ))
        .await;
        assert_eq!(code, 1, "{out}");
        let v = json(&out);
        assert_eq!(
            anchor_findings(&v, "/trusted_checkpoints"),
            vec![(0, 300, "trusted_checkpoint_mismatch".to_owned())],
            "keys: {keys:?}"
        );
        // The verifier's own report of partition 0 is clean: only the pin can tell.
        let p = &v["partitions"][0];
        assert_eq!(p["partition"], 0);
        assert_eq!(p["findings"].as_array().map(Vec::len), Some(0), "{v}");
    }
    // A failed run never writes pins.
    let before = std::fs::read_to_string(&pins).expect("pins");
    let (code, _) = auditctl(&verify_ch(
        &db,
        Some(&keyset),
        &[
            "--trusted-checkpoint",
            &pins_arg(&pins),
            "--save-checkpoints",
            &pins_arg(&pins),
        ],
    ))
    .await;
    assert_eq!(code, 1);
    assert_eq!(std::fs::read_to_string(&pins).expect("pins"), before);
    db.drop().await;
}

/// Pins name their chain. A partition whose checkpoints belong to another chain (same key, e.g.
/// a second deployment's checkpoints copied in) fails even without pins or --chain-id since
/// `audit-chain/v2`: the records link to this chain's genesis, the checkpoints sign another
/// chain id (`genesis_mismatch` at seq 1); with pins of this chain it is also a
/// `checkpoint_mismatch`.
#[tokio::test]
async fn pins_bind_the_chain_id_of_the_checkpoints() {
    let (db, dir, keyset, p0, key) = ch_setup("pin_chain").await;
    let pins = dir.path().join("pins.txt");
    save_pins(verify_ch(&db, Some(&keyset), &[]), &pins).await;
    // Partition 0's checkpoints replaced by the same ones of chain "other-chain", same key.
    let other: Vec<_> = p0
        .checkpoints
        .iter()
        .map(|c| {
            let mut f = integrity::checkpoint::SignedCheckpoint::try_from(c)
                .expect("checkpoint")
                .fields;
            f.chain_id = "other-chain".into();
            integrity::checkpoint::sign(&key, &f).expect("sign")
        })
        .collect();
    db.mutate("ALTER TABLE audit_checkpoints DELETE WHERE chain_partition = 0")
        .await;
    db.insert_checkpoints(&other).await;
    let (code, out) = auditctl(&verify_ch(&db, Some(&keyset), &[])).await;
    assert_eq!(
        code, 1,
        "another chain's checkpoints pass without --chain-id: {out}"
    );
    let v = json(&out);
    let f = &v["partitions"][0]["findings"][0];
    assert_eq!(
        (&f["kind"], &f["seq"]),
        (&"genesis_mismatch".into(), &1.into()),
        "{out}"
    );
    assert!(
        f["detail"]
            .as_str()
            .is_some_and(|d| d.contains("another chain or partition") && d.contains("other-chain")),
        "{out}"
    );

    let (code, out) = auditctl(&verify_ch(
        &db,
        Some(&keyset),
        &["--trusted-checkpoint", &pins_arg(&pins)],
    ))
    .await;
    assert_eq!(code, 1, "{out}");
    let v = json(&out);
    let p = &v["partitions"][0];
    assert_eq!(p["partition"], 0);
    assert_eq!(p["findings"][0]["kind"], "checkpoint_mismatch", "{out}");
    assert!(
        p["findings"][0]["detail"]
            .as_str()
            .is_some_and(|d| d.contains("other-chain")),
        "{out}"
    );
    // The pins themselves still hold (same records).
    assert_eq!(anchor_findings(&v, "/trusted_checkpoints"), vec![]);
    db.drop().await;
}

// ---- archive (S3) and both stores ------------------------------------------------------------

/// Delete the archive objects of `partition` for which `doomed(seq)` holds: segments and
/// manifests by their first seq, checkpoints by their seq (`doomed = |_| true`: everything).
async fn delete_archive(
    store: &dyn ObjectStore,
    prefix: &str,
    partition: u32,
    doomed: impl Fn(u64) -> bool,
) -> usize {
    let listing: Vec<_> = store
        .list(Some(&object_store::path::Path::from(prefix)))
        .try_collect()
        .await
        .expect("list");
    let tag = format!("chain={partition}/");
    let mut n = 0;
    for o in listing {
        let key = o.location.to_string();
        if !key.contains(&tag) {
            continue;
        }
        let name = key.rsplit('/').next().unwrap_or_default();
        let digits: String = name.chars().take_while(char::is_ascii_digit).collect();
        let seq: u64 = digits.parse().unwrap_or(0);
        if doomed(seq) {
            store.delete(&o.location).await.expect("delete");
            n += 1;
        }
    }
    n
}

fn verify_args(source: &str, keyset: &Path, db: Option<&TestDb>, prefix: &str) -> Vec<String> {
    let mut a = s(&[
        "verify",
        "--source",
        source,
        "--json",
        "--keys",
        &keyset.display().to_string(),
    ]);
    if let Some(db) = db {
        a.extend(db.args());
    }
    a.extend(s3_args(prefix));
    a
}

#[tokio::test]
async fn s3_partition_deleted_and_tail_cut_with_checkpoints_are_caught_by_pins() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (key, keyset) = test_key(dir.path(), "k1");
    let prefix = unique("pin_s3");
    let store = s3_store();
    for (p, n, every) in [(0u32, 300u64, 100u64), (1, 120, 50)] {
        write_archive(
            store.as_ref(),
            &prefix,
            &build_chain(p, n, &key, every, BASE_US),
            SEG,
        )
        .await;
    }
    let args = verify_args("archive", &keyset, None, &prefix);
    let pins = dir.path().join("pins.txt");
    save_pins(args.clone(), &pins).await;

    // Partition 1 deleted whole (segments, manifests, checkpoints); partition 0's last
    // segment and its newest checkpoint deleted.
    assert!(delete_archive(store.as_ref(), &prefix, 1, |_| true).await > 0);
    assert!(delete_archive(store.as_ref(), &prefix, 0, |seq| seq > 250).await > 0);
    let (code, out) = auditctl(&args).await;
    assert_eq!(code, 0, "both cuts pass without a pin: {out}");

    let mut pinned = args.clone();
    pinned.extend(s(&["--trusted-checkpoint", &pins_arg(&pins)]));
    let (code, out) = auditctl(&pinned).await;
    assert_eq!(code, 1, "{out}");
    assert_eq!(
        anchor_findings(&json(&out), "/trusted_checkpoints"),
        vec![
            (0, 300, "rollback_below_trusted".to_owned()),
            (1, 120, "trusted_partition_missing".to_owned()),
        ]
    );
}

/// `--source both`: ClickHouse loses its tail and newest checkpoints while the archive still
/// holds both; the cross-check cannot tell (records only in the archive are not a finding), a
/// pin can.
#[tokio::test]
async fn both_sources_a_tail_cut_from_clickhouse_only_is_rollback_below_trusted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (key, keyset) = test_key(dir.path(), "k1");
    let db = TestDb::new("pin_both").await;
    let prefix = unique("pin_both");
    let store = s3_store();
    let chain = build_chain(0, 300, &key, 100, BASE_US);
    db.insert_chain(&chain).await;
    write_archive(store.as_ref(), &prefix, &chain, SEG).await;
    let args = verify_args("both", &keyset, Some(&db), &prefix);
    let pins = dir.path().join("pins.txt");
    save_pins(args.clone(), &pins).await;

    db.mutate("ALTER TABLE audit_events DELETE WHERE chain_partition = 0 AND seq > 250")
        .await;
    db.mutate("ALTER TABLE audit_checkpoints DELETE WHERE chain_partition = 0 AND seq > 200")
        .await;
    let (code, out) = auditctl(&args).await;
    assert_eq!(code, 0, "passes without a pin: {out}");

    let mut pinned = args.clone();
    pinned.extend(s(&["--trusted-checkpoint", &pins_arg(&pins)]));
    let (code, out) = auditctl(&pinned).await;
    assert_eq!(code, 1, "{out}");
    let v = json(&out);
    assert_eq!(
        anchor_findings(&v, "/trusted_checkpoints/clickhouse"),
        vec![(0, 300, "rollback_below_trusted".to_owned())]
    );
    assert_eq!(anchor_findings(&v, "/trusted_checkpoints/archive"), vec![]);
    db.drop().await;
}

// ---- witness -----------------------------------------------------------------------------------

fn witness_args(state: &Path, keyset: &Path, db: &TestDb) -> Vec<String> {
    let mut a = s(&[
        "witness",
        "--state",
        &state.display().to_string(),
        "--name",
        "witness.test/w1",
        "--json",
        "--keys",
        &keyset.display().to_string(),
    ]);
    a.extend(db.args());
    a
}

/// (partition, status, kind) per partition of a witness run.
fn witness_lines(out: &str) -> Vec<(u64, String, String)> {
    json(out)["partitions"]
        .as_array()
        .unwrap_or_else(|| panic!("no partitions: {out}"))
        .iter()
        .map(|l| {
            (
                l["partition"].as_u64().expect("partition"),
                l["status"].as_str().expect("status").to_owned(),
                l["kind"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

#[tokio::test]
async fn witness_cosigns_growth_and_refuses_rollback_and_fork() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (key, keyset) = test_key(dir.path(), "k1");
    let db = TestDb::new("witness").await;
    let full = build_chain(0, 400, &key, 100, BASE_US);
    // The store first holds seqs 1..=300 with their checkpoints.
    db.insert_events(&full.events[..300]).await;
    db.insert_checkpoints(&full.checkpoints[..3]).await;
    let state = dir.path().join("witness");
    let args = witness_args(&state, &keyset, &db);

    let (code, out) = auditctl(&args).await;
    assert_eq!(code, 0, "{out}");
    assert_eq!(
        witness_lines(&out),
        vec![(0, "cosigned".into(), String::new())]
    );
    let cps = state.join("checkpoints");
    let first = std::fs::read_to_string(&cps).expect("state");
    assert!(
        first.contains("auditctl-test/partition/0\n300\n"),
        "{first}"
    );
    assert!(
        first.contains("— witness.test/w1 "),
        "cosignature line: {first}"
    );

    // The chain grows: cosigned again at 400, extending 300.
    db.insert_events(&full.events[300..]).await;
    db.insert_checkpoints(&full.checkpoints[3..]).await;
    let (code, out) = auditctl(&args).await;
    assert_eq!(code, 0, "{out}");
    let v = json(&out);
    assert_eq!(v["partitions"][0]["seq"], 400, "{out}");
    assert_eq!(v["partitions"][0]["previous_seq"], 300, "{out}");
    let cosigned_400 = std::fs::read_to_string(&cps).expect("state");

    // A verifier using the witness's state (its cosignatures checked with witness.vkey) agrees.
    let mut verify = s(&[
        "verify",
        "--json",
        "--keys",
        &keyset.display().to_string(),
        "--witness-state",
        &state.display().to_string(),
    ]);
    verify.extend(db.args());
    let (code, out) = auditctl(&verify).await;
    assert_eq!(code, 0, "{out}");
    // The same file as --trusted-checkpoint: with the witness's key its cosignatures are
    // checked; with another witness's key it is not trusted.
    let vkey = std::fs::read_to_string(state.join("witness.vkey")).expect("vkey");
    let (other, _) = integrity::note::Signer::generate(
        "witness.test/w1",
        integrity::note::KeyType::CosignatureV1,
    )
    .expect("key");
    for (wkey, code_want, findings) in [
        (vkey.trim().to_owned(), 0, vec![]),
        (
            other.verifier_key().to_string(),
            1,
            vec![(0, 400, "trusted_checkpoint_invalid".to_owned())],
        ),
    ] {
        let mut a = s(&[
            "verify",
            "--json",
            "--keys",
            &keyset.display().to_string(),
            "--trusted-checkpoint",
            &cps.display().to_string(),
            "--witness-key",
            &wkey,
        ]);
        a.extend(db.args());
        let (code, out) = auditctl(&a).await;
        assert_eq!(code, code_want, "{out}");
        assert_eq!(
            anchor_findings(&json(&out), "/trusted_checkpoints"),
            findings
        );
    }

    // Rollback 1: only the newest checkpoint deleted (records kept): the newest checkpoint the
    // store offers is below what was cosigned.
    db.mutate("ALTER TABLE audit_checkpoints DELETE WHERE chain_partition = 0 AND seq > 300")
        .await;
    let (code, out) = auditctl(&args).await;
    assert_eq!(code, 1, "{out}");
    assert_eq!(
        witness_lines(&out),
        vec![(0, "refused".into(), "rollback_below_trusted".into())]
    );
    assert_eq!(std::fs::read_to_string(&cps).expect("state"), cosigned_400);

    // Rollback 2: the tail too.
    db.mutate("ALTER TABLE audit_events DELETE WHERE chain_partition = 0 AND seq > 350")
        .await;
    let (code, out) = auditctl(&args).await;
    assert_eq!(code, 1, "{out}");
    assert_eq!(
        witness_lines(&out),
        vec![(0, "refused".into(), "rollback_below_trusted".into())]
    );
    let (code, out) = auditctl(&verify).await;
    assert_eq!(code, 1, "{out}");
    assert_eq!(
        anchor_findings(&json(&out), "/trusted_checkpoints"),
        vec![(0, 400, "rollback_below_trusted".to_owned())]
    );

    // Fork: the partition rewritten from genesis, longer than before and signed by nobody.
    let mut events = full.events.clone();
    events[9].event.actor.id = "mallory".into();
    db.mutate("ALTER TABLE audit_events DELETE WHERE chain_partition = 0")
        .await;
    db.mutate("ALTER TABLE audit_checkpoints DELETE WHERE chain_partition = 0")
        .await;
    db.insert_events(&rechain(0, &events)).await;
    let mut unsigned = args.clone();
    let k = unsigned.iter().position(|a| a == "--keys").expect("--keys");
    unsigned.drain(k..k + 2);
    unsigned.push("--no-signatures".into());
    let (code, out) = auditctl(&unsigned).await;
    assert_eq!(code, 1, "{out}");
    assert_eq!(
        witness_lines(&out),
        vec![(0, "refused".into(), "trusted_checkpoint_mismatch".into())]
    );
    assert_eq!(std::fs::read_to_string(&cps).expect("state"), cosigned_400);

    // The state entries are the chainer's own notes with the witness's cosignature added: a
    // copy whose log signature line is dropped is not trusted with --keys, even though the
    // witness's cosignature on it still verifies.
    let entries = integrity::pin::parse_file(&cosigned_400).expect("state is a pin file");
    assert!(
        entries.iter().all(|p| p.is_log_checkpoint()),
        "{cosigned_400}"
    );
    let stripped: String = cosigned_400
        .lines()
        .filter(|l| !l.starts_with("\u{2014} auditctl-test/partition/"))
        .map(|l| format!("{l}\n"))
        .collect();
    assert_ne!(stripped, cosigned_400);
    let stripped_file = dir.path().join("stripped.txt");
    std::fs::write(&stripped_file, &stripped).expect("write");
    let mut a = s(&[
        "verify",
        "--json",
        "--keys",
        &keyset.display().to_string(),
        "--trusted-checkpoint",
        &stripped_file.display().to_string(),
        "--witness-key",
        vkey.trim(),
    ]);
    a.extend(db.args());
    let (code, out) = auditctl(&a).await;
    assert_eq!(code, 1, "{out}");
    assert_eq!(
        anchor_findings(&json(&out), "/trusted_checkpoints"),
        vec![(0, 400, "trusted_checkpoint_invalid".to_owned())]
    );

    // A state file edited by someone without the witness key is refused, not trusted.
    std::fs::write(&cps, cosigned_400.replace("\n400\n", "\n399\n")).expect("edit");
    let (code, out) = auditctl(&args).await;
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("not cosigned by this witness"), "{out}");
    db.drop().await;
}

/// With `--keys`, `--save-checkpoints` pins each partition with the chainer's own signed note
/// (the one `auditctl checkpoints` prints), so the pin file no longer has to be trusted: an
/// edited entry is `trusted_checkpoint_invalid`, where an edited unsigned pin would simply be
/// believed. Without `--keys` it still writes head pins (trusted on first use).
#[tokio::test]
async fn saved_pins_are_the_chainers_signed_notes() {
    let (db, dir, keyset, _, _) = ch_setup("pin_notes").await;
    let pins = dir.path().join("pins.txt");
    save_pins(verify_ch(&db, Some(&keyset), &[]), &pins).await;
    let text = std::fs::read_to_string(&pins).expect("pins");
    let read = integrity::pin::parse_file(&text).expect("a pin file");
    assert_eq!(
        read.iter()
            .map(|p| (p.head.partition, p.head.seq, p.is_log_checkpoint()))
            .collect::<Vec<_>>(),
        vec![(0, 300, true), (1, 120, true)],
        "{text}"
    );
    // Byte for byte the notes the chainer signed, as `auditctl checkpoints` prints them.
    let mut cps = s(&[
        "checkpoints",
        "--source",
        "clickhouse",
        "--keys",
        &keyset.display().to_string(),
    ]);
    cps.extend(db.args());
    let (code, printed) = auditctl(&cps).await;
    assert_eq!(code, 0, "{printed}");
    for p in &read {
        assert!(
            printed.contains(&p.to_text()),
            "{}\nnot in\n{printed}",
            p.to_text()
        );
    }
    // Clean store: the pins hold.
    let with_pins = |f: &Path| {
        verify_ch(
            &db,
            Some(&keyset),
            &["--trusted-checkpoint", &f.display().to_string()],
        )
    };
    let (code, out) = auditctl(&with_pins(&pins)).await;
    assert_eq!(code, 0, "{out}");

    // Someone edits the pinned seq of partition 1 down (to hide a later tail cut): the note's
    // signature no longer holds.
    let edited = dir.path().join("edited.txt");
    std::fs::write(
        &edited,
        text.replace(
            "auditctl-test/partition/1\n120\n",
            "auditctl-test/partition/1\n100\n",
        ),
    )
    .expect("edit");
    let (code, out) = auditctl(&with_pins(&edited)).await;
    assert_eq!(code, 1, "{out}");
    assert_eq!(
        anchor_findings(&json(&out), "/trusted_checkpoints"),
        vec![(1, 100, "trusted_checkpoint_invalid".to_owned())]
    );
    // The signed notes need the key set to be checked.
    let (code, out) = auditctl(&verify_ch(
        &db,
        None,
        &["--trusted-checkpoint", &pins_arg(&pins)],
    ))
    .await;
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("give --keys"), "{out}");

    // Without --keys: head pins of the verified heads, as before.
    let heads = dir.path().join("heads.txt");
    save_pins(
        verify_ch(&db, None, &["--chain-id", "auditctl-test"]),
        &heads,
    )
    .await;
    let read = integrity::pin::parse_file(&std::fs::read_to_string(&heads).expect("heads"))
        .expect("a pin file");
    assert!(read.iter().all(|p| !p.is_log_checkpoint()));
    assert_eq!(read.len(), 2);
    db.drop().await;
}
