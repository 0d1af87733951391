//! `auditctl verify --source clickhouse` against the local ClickHouse (fresh database per test).

mod common;

use common::*;
use serde_json::Value;

async fn setup(tag: &str) -> (TestDb, tempfile::TempDir, Vec<String>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (key, keyset) = test_key(dir.path(), "k1");
    let db = TestDb::new(tag).await;
    db.insert_chain(&build_chain(0, 300, &key, 100, BASE_US))
        .await;
    db.insert_chain(&build_chain(1, 120, &key, 50, BASE_US))
        .await;
    let mut args = s(&["verify", "--source", "clickhouse", "--keys"]);
    args.push(keyset.display().to_string());
    args.extend(db.args());
    (db, dir, args)
}

fn json_args(args: &[String]) -> Vec<String> {
    let mut a = args.to_vec();
    a.push("--json".into());
    a
}

fn first_finding(out: &str, partition: i64) -> Value {
    let v: Value = serde_json::from_str(out).expect("json report");
    let p = v["partitions"]
        .as_array()
        .expect("partitions")
        .iter()
        .find(|p| p["partition"] == partition)
        .expect("partition reported")
        .clone();
    p["findings"][0].clone()
}

#[tokio::test]
async fn intact_chain_verifies_and_a_modified_row_is_named() {
    let (db, _dir, args) = setup("modified").await;
    let (code, out) = auditctl(&args).await;
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("partition 0: seq 1..=300, 300 records"),
        "{out}"
    );
    assert!(out.contains("sealed through seq 300: OK"), "{out}");
    assert!(
        out.contains("partition 1: seq 1..=120, 120 records"),
        "{out}"
    );
    assert!(out.contains("result: OK"), "{out}");

    db.mutate("ALTER TABLE audit_events UPDATE actor_id = 'mallory' WHERE chain_partition = 0 AND seq = 17")
        .await;
    let (code, out) = auditctl(&args).await;
    assert_eq!(code, 1, "{out}");
    println!("{out}");
    assert!(out.contains("partition 0 seq 17: modified_event:"), "{out}");
    assert!(
        out.contains("partition 1: seq 1..=120, 120 records"),
        "{out}"
    );

    let (code, out) = auditctl(&json_args(&args)).await;
    assert_eq!(code, 1);
    let f = first_finding(&out, 0);
    assert_eq!(f["kind"], "modified_event", "{out}");
    assert_eq!(f["seq"], 17);
    assert_eq!(f["event_id"], "evt-p0-00017");

    // --partition restricts the run: partition 1 alone is intact.
    let mut only1 = args.clone();
    only1.extend(s(&["--partition", "1"]));
    let (code, out) = auditctl(&only1).await;
    assert_eq!(code, 0, "{out}");
    assert!(!out.contains("partition 0"), "{out}");
    db.drop().await;
}

/// A window is rebuilt 1,024 rows at a time as it is read: 2,600 rows in one window (three
/// chunks, the last one partial) verify, and a row changed in a later chunk, or one deleted
/// right at a chunk's edge, is named at its seq.
#[tokio::test]
async fn a_window_of_several_chunks_verifies_row_by_row() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (key, keyset) = test_key(dir.path(), "k1");
    let db = TestDb::new("chunks").await;
    db.insert_chain(&build_chain(0, 2600, &key, 500, BASE_US))
        .await;
    let mut args = s(&["verify", "--source", "clickhouse", "--keys"]);
    args.push(keyset.display().to_string());
    args.extend(db.args());
    let (code, out) = auditctl(&args).await;
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("partition 0: seq 1..=2600, 2600 records"),
        "{out}"
    );

    db.mutate("ALTER TABLE audit_events UPDATE actor_id = 'mallory' WHERE chain_partition = 0 AND seq = 2100")
        .await;
    db.mutate("ALTER TABLE audit_events DELETE WHERE chain_partition = 0 AND seq = 1025")
        .await;
    let (code, out) = auditctl(&json_args(&args)).await;
    assert_eq!(code, 1, "{out}");
    let v: Value = serde_json::from_str(&out).expect("json report");
    let findings: Vec<(String, i64)> = v["partitions"][0]["findings"]
        .as_array()
        .expect("findings")
        .iter()
        .map(|f| {
            (
                f["kind"].as_str().unwrap_or("").to_owned(),
                f["seq"].as_i64().unwrap_or(-1),
            )
        })
        .collect();
    assert!(
        findings.contains(&("missing_seq".to_owned(), 1025)),
        "{findings:?}"
    );
    assert!(
        findings.contains(&("modified_event".to_owned(), 2100)),
        "{findings:?}"
    );
    db.drop().await;
}

#[tokio::test]
async fn a_deleted_row_is_a_gap_at_its_seq() {
    let (db, _dir, args) = setup("gap").await;
    db.mutate("ALTER TABLE audit_events DELETE WHERE chain_partition = 0 AND seq = 40")
        .await;
    let (code, out) = auditctl(&args).await;
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("partition 0 seq 40: missing_seq:"), "{out}");
    let (_, out) = auditctl(&json_args(&args)).await;
    let f = first_finding(&out, 0);
    assert_eq!(f["kind"], "missing_seq");
    assert_eq!(f["seq"], 40);
    // Small read windows (several per partition, one boundary right at the gap) change nothing.
    for w in ["7", "39", "40"] {
        let mut a = args.clone();
        a.extend(s(&["--window", w]));
        let (code, out) = auditctl(&a).await;
        assert_eq!(code, 1, "{out}");
        assert!(
            out.contains("partition 0 seq 40: missing_seq:"),
            "window {w}: {out}"
        );
        assert!(
            out.contains("partition 1: seq 1..=120, 120 records"),
            "window {w}: {out}"
        );
    }
    db.drop().await;
}

#[tokio::test]
async fn a_truncated_tail_is_caught_by_the_latest_checkpoint() {
    let (db, _dir, args) = setup("truncated").await;
    db.mutate("ALTER TABLE audit_events DELETE WHERE chain_partition = 0 AND seq > 250")
        .await;
    let (code, out) = auditctl(&args).await;
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("partition 0 seq 251: truncated_tail:"),
        "{out}"
    );

    // Without the key set, nothing signed is checked: the truncation is invisible, so the run
    // is "unsealed" (exit 4) unless --no-signatures accepts that (exit 0 documents the limit).
    let no_keys: Vec<String> = {
        let mut a = s(&["verify"]);
        a.extend(db.args());
        a
    };
    let (code, out) = auditctl(&no_keys).await;
    assert_eq!(code, 4, "{out}");
    assert!(out.contains("unsealed"), "{out}");
    let mut accepted = no_keys.clone();
    accepted.push("--no-signatures".into());
    let (code, out) = auditctl(&accepted).await;
    assert_eq!(code, 0, "{out}");
    // Findings still take precedence over "unsealed".
    db.mutate("ALTER TABLE audit_events UPDATE actor_id = 'mallory' WHERE chain_partition = 1 AND seq = 5")
        .await;
    let (code, out) = auditctl(&no_keys).await;
    assert_eq!(code, 1, "{out}");
    db.drop().await;
}

#[tokio::test]
async fn an_unreadable_row_is_a_finding_not_an_error() {
    let (db, _dir, args) = setup("unreadable").await;
    // `enriched` must be 0 or 1: a row with 7 cannot be read back into an event.
    db.mutate("ALTER TABLE audit_events UPDATE enriched = 7 WHERE chain_partition = 1 AND seq = 9")
        .await;
    let (code, out) = auditctl(&args).await;
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("partition 1 seq 9: malformed_record:"),
        "{out}"
    );
    db.drop().await;
}

/// A fork the ClickHouse sink refused (a later, different copy of a stored (partition, seq))
/// is in `audit_forks`: each row is a `fork` finding, even though the stored chain is intact.
#[tokio::test]
async fn forks_recorded_by_the_sink_are_findings() {
    let (db, _dir, args) = setup("forks").await;
    db.exec(&format!(
        "INSERT INTO audit_forks (chain_partition, seq, stored_hash, offered_hash, offered_chained_offset, offered_payload_hex) VALUES (1, 42, '{}', '{}', 4242, 'c301')",
        "aa".repeat(32),
        "bb".repeat(32)
    ))
    .await;
    let (code, out) = auditctl(&args).await;
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("partition 1 seq 42: fork:"), "{out}");
    assert!(out.contains("offset 4242"), "{out}");
    assert!(
        out.contains("partition 0: seq 1..=300, 300 records"),
        "{out}"
    );
    let (code, out) = auditctl(&json_args(&args)).await;
    assert_eq!(code, 1);
    let f = first_finding(&out, 1);
    assert_eq!(f["kind"], "fork", "{out}");
    assert_eq!(f["seq"], 42);
    assert_eq!(f["severity"], "error");

    // --partition filters forks too.
    let mut only0 = args.clone();
    only0.extend(s(&["--partition", "0"]));
    let (code, out) = auditctl(&only0).await;
    assert_eq!(code, 0, "{out}");

    // A database without the table (older than migration 0003): a warning, not an error.
    db.exec("DROP TABLE audit_forks").await;
    let (code, out) = auditctl(&args).await;
    assert_eq!(code, 0, "{out}");
    db.drop().await;
}

/// The binary's exit codes: 0 ok, 1 finding, 2 usage, 3 store unreadable.
#[tokio::test]
async fn binary_exit_codes() {
    let (db, _dir, args) = setup("exitcodes").await;
    let bin = env!("CARGO_BIN_EXE_auditctl");
    let run = |a: &[String]| {
        std::process::Command::new(bin)
            .args(a)
            .env_remove("AUDIT_KEYSET")
            .env_remove("AUDIT_SINK_ARCHIVE_URL")
            .env_remove("AUDIT_SINK_ARCHIVE_LOCAL_DIR")
            .output()
            .expect("run auditctl")
    };
    let out = run(&args);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    db.mutate("ALTER TABLE audit_events UPDATE actor_id = 'mallory' WHERE chain_partition = 0 AND seq = 17")
        .await;
    let out = run(&args);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("partition 0 seq 17: modified_event"));

    let out = run(&s(&["verify", "--source", "nowhere"]));
    assert_eq!(out.status.code(), Some(2));

    let out = run(&s(&["verify", "--source", "archive"]));
    assert_eq!(
        out.status.code(),
        Some(2),
        "archive without --archive-url is a usage error"
    );

    let mut missing_db = s(&["verify", "--clickhouse-database", "auditctl_no_such_db_x"]);
    missing_db.extend(s(&["--clickhouse-url", &clickhouse_url()]));
    let out = run(&missing_db);
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let out = run(&s(&[
        "verify",
        "--clickhouse-url",
        "http://127.0.0.1:1",
        "--clickhouse-password",
        "hunter2",
    ]));
    assert_eq!(out.status.code(), Some(3));
    assert!(!String::from_utf8_lossy(&out.stderr).contains("hunter2"));

    // No key set: unsealed (exit 4), unless --no-signatures.
    let mut unsealed = s(&["verify", "--partition", "1"]);
    unsealed.extend(db.args());
    let out = run(&unsealed);
    assert_eq!(out.status.code(), Some(4));
    unsealed.push("--no-signatures".into());
    let out = run(&unsealed);
    assert_eq!(out.status.code(), Some(0));

    let out = run(&s(&["--help"]));
    assert!(String::from_utf8_lossy(&out.stdout).contains("EXIT CODES"));
    db.drop().await;
}

/// One row inserted at a seq near `i64::MAX`: the reader follows the rows (an empty window jumps
/// to the next stored seq), so the run ends promptly instead of walking 10^15 empty windows;
/// the row is still a finding (everything between the real tail and it is missing).
#[tokio::test]
async fn a_row_inserted_at_a_huge_seq_is_found_without_walking_the_seq_space() {
    let (db, _dir, args) = setup("hugeseq").await;
    // The same (deterministic) events as partition 1 of `setup`; the key only signs.
    let other = tempfile::tempdir().expect("tempdir");
    let chain = build_chain(1, 120, &test_key(other.path(), "unused").0, 50, BASE_US);
    let mut forged = chain.events[119].clone();
    forged.seq = i64::MAX - 5;
    forged.event.event_id = "evt-forged".into();
    db.insert_events(&[forged]).await;
    // Generous: the fixed reader needs a few queries; the old one ran for hours.
    let json = json_args(&args);
    let run = tokio::time::timeout(std::time::Duration::from_secs(120), auditctl(&json));
    let (code, out) = run
        .await
        .expect("verify must not walk the seq space up to i64::MAX");
    assert_eq!(code, 1, "{out}");
    let f = first_finding(&out, 1);
    assert_eq!(f["kind"], "missing_seq", "{out}");
    assert_eq!(f["seq"], 121, "{out}");
    let detail = f["detail"].as_str().unwrap_or_default();
    assert!(detail.contains(&(i64::MAX - 6).to_string()), "{detail}");
    // Partition 0 is untouched, and the reader did not lose rows around the jump.
    let v: Value = serde_json::from_str(&out).expect("json");
    assert_eq!(v["partitions"][0]["ok"], true, "{out}");
    assert_eq!(v["partitions"][1]["events"], 121, "{out}");
    assert_eq!(v["partitions"][1]["last_seq"], i64::MAX - 5, "{out}");
    db.drop().await;
}

/// Checkpoints of a partition cover contiguous ranges: deleting a middle checkpoint row leaves
/// a gap, `missing_checkpoint` at its first uncovered seq.
#[tokio::test]
async fn a_deleted_middle_checkpoint_row_is_a_missing_checkpoint() {
    let (db, _dir, args) = setup("midcp").await;
    db.mutate("ALTER TABLE audit_checkpoints DELETE WHERE chain_partition = 0 AND seq = 200")
        .await;
    let (code, out) = auditctl(&json_args(&args)).await;
    assert_eq!(code, 1, "{out}");
    let f = first_finding(&out, 0);
    assert_eq!(f["kind"], "missing_checkpoint", "{out}");
    assert_eq!(f["seq"], 101, "{out}");
    let v: Value = serde_json::from_str(&out).expect("json");
    assert_eq!(
        v["partitions"][0]["findings"].as_array().map(Vec::len),
        Some(1),
        "{out}"
    );
    assert_eq!(v["partitions"][1]["ok"], true, "{out}");
    db.drop().await;
}

/// The holder of a retired key replaces the newest checkpoint with one signed by that key, its
/// time set back into the key's validity window: the signature and key window check, but the
/// time is before the events it covers were received and before the previous checkpoint.
#[tokio::test]
async fn a_checkpoint_backdated_into_a_retired_keys_window_is_found() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Retired two hours before BASE_US, i.e. before any event of the chain was received.
    let retired_at = BASE_US - 7_200_000_000;
    let (old, new, keyset) = rotated_keys(dir.path(), retired_at);
    let db = TestDb::new("backdated").await;
    let chain = build_chain(0, 300, &new, 100, BASE_US);
    db.insert_chain(&chain).await;
    let mut args = s(&["verify", "--json", "--keys", &keyset.display().to_string()]);
    args.extend(db.args());
    let (code, out) = auditctl(&args).await;
    assert_eq!(code, 0, "{out}");

    db.mutate("ALTER TABLE audit_checkpoints DELETE WHERE chain_partition = 0 AND seq = 300")
        .await;
    let forged = forge_checkpoint(&chain, &old, 201, 300, retired_at - 1);
    db.insert_checkpoints(&[forged]).await;
    let (code, out) = auditctl(&args).await;
    assert_eq!(code, 1, "{out}");
    let v: Value = serde_json::from_str(&out).expect("json");
    let findings = v["partitions"][0]["findings"]
        .as_array()
        .expect("findings")
        .clone();
    assert!(!findings.is_empty(), "{out}");
    for f in &findings {
        assert_eq!(f["kind"], "checkpoint_backdated", "{out}");
        assert_eq!(f["seq"], 300, "{out}");
    }
    // A tolerance for clock skew larger than the backdating hides it (that is its cost).
    let mut lax = args.clone();
    lax.extend(s(&["--clock-skew-ms", "86400000"]));
    let (code, out) = auditctl(&lax).await;
    assert_eq!(code, 0, "{out}");
    db.drop().await;
}

/// The windows are read without a server-side `ORDER BY` and put in seq order by the verifier:
/// rows stored in many parts, newest seqs first and never merged, come back out of order
/// (checked here, so the test cannot pass without the case it covers) and still verify.
#[tokio::test]
async fn rows_stored_in_reverse_in_unmerged_parts_verify() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (key, keyset) = test_key(dir.path(), "k1");
    let db = TestDb::new("reverse_parts").await;
    db.exec("SYSTEM STOP MERGES audit_events").await;
    let chain = build_chain(0, 60, &key, 20, BASE_US);
    for part in chain.events.chunks(5).rev() {
        db.insert_events(part).await;
    }
    db.insert_checkpoints(&chain.checkpoints).await;
    let seqs: Vec<i64> = db
        .client
        .query("SELECT seq FROM audit_events WHERE chain_partition = 0")
        .fetch_all()
        .await
        .expect("seqs");
    assert_eq!(seqs.len(), 60);
    assert!(
        !seqs.is_sorted(),
        "ClickHouse returned the unmerged parts in seq order; the test needs them out of order"
    );
    let mut args = s(&["verify", "--source", "clickhouse", "--keys"]);
    args.push(keyset.display().to_string());
    args.extend(db.args());
    for w in ["10000", "7"] {
        let mut a = args.clone();
        a.extend(s(&["--window", w]));
        let (code, out) = auditctl(&a).await;
        assert_eq!(code, 0, "window {w}: {out}");
        assert!(
            out.contains("partition 0: seq 1..=60, 60 records"),
            "window {w}: {out}"
        );
    }
    db.exec("SYSTEM START MERGES audit_events").await;
    db.drop().await;
}
