//! `auditctl rehydrate` against the local stack: a signed chain in the S3 archive (SeaweedFS)
//! is loaded back into a fresh ClickHouse database (the sink's migrations) that holds part of
//! it. Loading a range twice yields it once, and the database then verifies on its own.

mod common;

use common::{
    auditctl, build_chain, s, s3_args, s3_store, test_key, unique, write_archive, BASE_US,
};
use schemas::flat::{AuditRow, CheckpointRow};
use schemas::ChainedEvent;
use sink_clickhouse::{migrations, Store, StoreSettings};

async fn fresh_db() -> (Store, String) {
    let name = unique("rehydrate");
    let store = Store::connect(&StoreSettings {
        url: common::clickhouse_url(),
        database: name.clone(),
        user: "default".into(),
        password: Default::default(),
    })
    .await
    .unwrap_or_else(|e| panic!("ClickHouse must be up (deploy/local/stack.sh up): {e}"));
    migrations::apply(&store).await.expect("migrations");
    (store, name)
}

async fn insert(store: &Store, events: &[ChainedEvent]) {
    let mut ins = store
        .client()
        .insert::<AuditRow>("audit_events")
        .await
        .expect("insert");
    for e in events {
        ins.write(&AuditRow::from_chained(e, e.seq - 1))
            .await
            .expect("row");
    }
    ins.end().await.expect("end");
}

/// (rows, distinct seqs) of partition 1 within `first..=last`.
async fn counts(store: &Store, first: i64, last: i64) -> (u64, u64) {
    store
        .client()
        .query(
            "SELECT count(), uniqExact(seq) FROM audit_events \
             WHERE chain_partition = 1 AND seq >= ? AND seq <= ?",
        )
        .bind(first)
        .bind(last)
        .fetch_one()
        .await
        .expect("counts")
}

fn args(db: &str, prefix: &str, keyset: &std::path::Path, extra: &[&str]) -> Vec<String> {
    let mut a = s(&["rehydrate", "--partition", "1", "--json"]);
    a.extend(s(extra));
    a.extend(s(&[
        "--keys",
        keyset.to_str().expect("utf8 path"),
        "--clickhouse-url",
        &common::clickhouse_url(),
        "--clickhouse-database",
        db,
    ]));
    a.extend(s3_args(prefix));
    a
}

fn summary(out: &str) -> auditctl::rehydrate::Summary {
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"))
}

#[tokio::test]
async fn rehydrating_a_range_twice_yields_it_once_and_it_verifies() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (key, keyset) = test_key(dir.path(), "k1");
    let prefix = unique("rehydrate");
    let chain = build_chain(1, 60, &key, 20, BASE_US);
    write_archive(s3_store().as_ref(), &prefix, &chain, 15).await;
    let (store, db) = fresh_db().await;
    // Hot storage kept seqs 1..=10 only.
    insert(&store, &chain.events[..10]).await;

    let (code, out) = auditctl(&args(&db, &prefix, &keyset, &["--seq", "5..40"])).await;
    assert_eq!(code, 0, "{out}");
    let sm = summary(&out);
    assert_eq!((sm.first_seq, sm.last_seq), (5, 40));
    assert_eq!((sm.archived, sm.present, sm.inserted), (36, 6, 30));
    assert_eq!(counts(&store, 1, 60).await, (40, 40));

    // Again: nothing doubled.
    let (code, out) = auditctl(&args(&db, &prefix, &keyset, &["--seq", "5..40"])).await;
    assert_eq!(code, 0, "{out}");
    let sm = summary(&out);
    assert_eq!((sm.archived, sm.present, sm.inserted), (36, 36, 0));
    assert_eq!(counts(&store, 1, 60).await, (40, 40));

    // The rest of the partition, then the database verifies on its own (with its checkpoints).
    let (code, out) = auditctl(&args(&db, &prefix, &keyset, &[])).await;
    assert_eq!(code, 0, "{out}");
    let sm = summary(&out);
    assert_eq!(
        (sm.archived, sm.present, sm.inserted, sm.last_seq),
        (60, 40, 20, 60)
    );
    assert_eq!(counts(&store, 1, 60).await, (60, 60));
    let mut cps = store
        .client()
        .insert::<CheckpointRow>("audit_checkpoints")
        .await
        .expect("insert");
    for (i, c) in chain.checkpoints.iter().enumerate() {
        cps.write(&CheckpointRow::from_checkpoint(c, i as i64))
            .await
            .expect("cp");
    }
    cps.end().await.expect("cp end");
    let mut verify = s(&[
        "verify",
        "--source",
        "clickhouse",
        "--partition",
        "1",
        "--keys",
    ]);
    verify.push(keyset.to_str().expect("utf8").to_owned());
    verify.extend(s(&[
        "--clickhouse-url",
        &common::clickhouse_url(),
        "--clickhouse-database",
        &db,
    ]));
    let (code, out) = auditctl(&verify).await;
    assert_eq!(code, 0, "{out}");
    let _ = store
        .client()
        .query(&format!("DROP DATABASE IF EXISTS {db}"))
        .execute()
        .await;
}

#[tokio::test]
async fn a_fork_or_an_unverifiable_archive_loads_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (key, keyset) = test_key(dir.path(), "k1");
    let prefix = unique("rehydrate_fork");
    let chain = build_chain(1, 30, &key, 10, BASE_US);
    write_archive(s3_store().as_ref(), &prefix, &chain, 10).await;
    let (store, db) = fresh_db().await;
    // ClickHouse holds another record at seq 3 than the archive.
    let mut other = chain.events[2].clone();
    other.hash = vec![0xee; 32];
    insert(&store, &[other]).await;
    let (code, out) = auditctl(&args(&db, &prefix, &keyset, &[])).await;
    assert_eq!(code, auditctl::EXIT_FINDINGS, "{out}");
    assert!(out.contains("seq 3") && out.contains("fork"), "{out}");
    assert_eq!(counts(&store, 1, 30).await, (1, 1));

    // Without a key set (or --no-signatures) it refuses to start: usage.
    let mut no_keys = args(&db, &prefix, &keyset, &[]);
    let i = no_keys.iter().position(|a| a == "--keys").expect("flag");
    no_keys.drain(i..i + 2);
    let (code, out) = auditctl(&no_keys).await;
    assert_eq!(code, auditctl::EXIT_USAGE, "{out}");

    // An archive whose partition does not verify (a segment signed by nobody: the checkpoints
    // are made with another key) loads nothing.
    let other_dir = dir.path().join("other");
    std::fs::create_dir_all(&other_dir).expect("mkdir");
    let (_, other_keys) = test_key(&other_dir, "k1");
    let (code, out) = auditctl(&args(&db, &prefix, &other_keys, &[])).await;
    assert_eq!(code, auditctl::EXIT_FINDINGS, "{out}");
    assert_eq!(counts(&store, 1, 30).await, (1, 1));
    let _ = store
        .client()
        .query(&format!("DROP DATABASE IF EXISTS {db}"))
        .execute()
        .await;
}

#[tokio::test]
async fn a_time_range_loads_exactly_the_events_of_that_time() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (key, keyset) = test_key(dir.path(), "k1");
    let prefix = unique("rehydrate_time");
    // Event i is at BASE_US (2024-06-01T00:00:00Z) + i minutes.
    let chain = build_chain(1, 30, &key, 10, BASE_US);
    write_archive(s3_store().as_ref(), &prefix, &chain, 10).await;
    let (store, db) = fresh_db().await;
    let (code, out) = auditctl(&args(
        &db,
        &prefix,
        &keyset,
        &[
            "--from",
            "2024-06-01 00:10:00",
            "--to",
            "2024-06-01T00:20:00Z",
        ],
    ))
    .await;
    assert_eq!(code, 0, "{out}");
    let sm = summary(&out);
    assert_eq!((sm.archived, sm.present, sm.inserted), (10, 0, 10));
    let seqs: Vec<i64> = store
        .client()
        .query("SELECT seq FROM audit_events ORDER BY seq")
        .fetch_all()
        .await
        .expect("seqs");
    let want: Vec<i64> = chain
        .events
        .iter()
        .filter(|e| {
            (BASE_US + 600_000_000..BASE_US + 1_200_000_000).contains(&e.event.event_time_us)
        })
        .map(|e| e.seq)
        .collect();
    assert_eq!(seqs, want);
    assert_eq!(seqs, (10..20).collect::<Vec<i64>>());
    let _ = store
        .client()
        .query(&format!("DROP DATABASE IF EXISTS {db}"))
        .execute()
        .await;
}

/// `rehydrate --hold` stores its rows flagged `legal_hold = 1` from the first moment (staged
/// in a session's temporary table, then copied flagged): no mutation is involved, so no
/// retention merge can catch a rehydrated row unflagged. Twice: still once each.
#[tokio::test]
async fn held_rows_are_stored_flagged_without_a_mutation() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (key, _) = test_key(dir.path(), "k1");
    let chain = build_chain(1, 12, &key, 10, BASE_US);
    let (store, db) = fresh_db().await;
    let session = auditctl::rehydrate::held_session(store.client());
    let rows: Vec<&ChainedEvent> = chain.events[..8].iter().collect();
    auditctl::rehydrate::insert_held(&session, &rows)
        .await
        .expect("held insert");
    // Another batch in the same session (the staging table is made afresh).
    let rest: Vec<&ChainedEvent> = chain.events[8..].iter().collect();
    auditctl::rehydrate::insert_held(&session, &rest)
        .await
        .expect("held insert");
    let (rows_n, held): (u64, u64) = store
        .client()
        .query("SELECT count(), countIf(legal_hold = 1) FROM audit_events")
        .fetch_one()
        .await
        .expect("counts");
    assert_eq!((rows_n, held), (12, 12));
    assert_eq!(counts(&store, 1, 12).await, (12, 12));
    let mutations: u64 = store
        .client()
        .query("SELECT count() FROM system.mutations WHERE database = ?")
        .bind(&db)
        .fetch_one()
        .await
        .expect("mutations");
    assert_eq!(mutations, 0, "flagged at insert, not by a mutation");
    // The rows are the chain's: the stored partition verifies against its events.
    let stored: Vec<(i64, String)> = store
        .client()
        .query("SELECT seq, hash FROM audit_events ORDER BY seq")
        .fetch_all()
        .await
        .expect("rows");
    let want: Vec<(i64, String)> = chain
        .events
        .iter()
        .map(|e| (e.seq, hex::encode(&e.hash)))
        .collect();
    assert_eq!(stored, want);
    let _ = store
        .client()
        .query(&format!("DROP DATABASE IF EXISTS {db}"))
        .execute()
        .await;
}
