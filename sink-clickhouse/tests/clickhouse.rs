//! Smoke tests against a real ClickHouse server (`AUDIT_CLICKHOUSE_URL`, default
//! http://127.0.0.1:8123; start it with `deploy/local/stack.sh up`). They FAIL when the server
//! is absent: a skipped storage test would pass a broken sink. Each test uses its own database.

mod common;

use std::collections::HashMap;

use common::{count, drop_db, month_us, settings};

use integrity::verify::OwnedRecord;
use proptest::strategy::{Strategy, ValueTree};
use proptest::test_runner::{Config as PtConfig, RngAlgorithm, TestRng, TestRunner};
use schemas::flat::{AuditRow, CheckpointRow};
use schemas::testing::{arb_chained_event, sample_event};
use schemas::{ChainedEvent, Checkpoint, Outcome};
use sink_clickhouse::batch::Entry;
use sink_clickhouse::migrations::{self, MIGRATIONS};
use sink_clickhouse::queries::{self, Param, RECIPES};
use sink_clickhouse::rowbinary::Layout;
use sink_clickhouse::store::Store;
use sink_clickhouse::writer::store_batch;
use worker_runtime::retry::RetryPolicy;
use worker_runtime::CancellationToken;

/// A fresh, migrated database of its own (each test drops it at the end).
async fn fresh(tag: &str) -> (Store, String) {
    let db = format!("audit_test_{tag}_{}", uuid::Uuid::new_v4().simple());
    let store = Store::connect(&settings(&db)).await.unwrap_or_else(|e| {
        panic!("ClickHouse must be running for these tests (deploy/local/stack.sh up): {e}")
    });
    migrations::apply(&store).await.expect("migrate");
    // Every test database is migrated the same way: the first layout read serves them all.
    let layout = store.row_layout().await.expect("audit_events' columns");
    LAYOUT.get_or_init(|| layout);
    (store, db)
}

/// `audit_events`' columns as the server reports them (set by `fresh`).
static LAYOUT: std::sync::OnceLock<std::sync::Arc<Layout>> = std::sync::OnceLock::new();

fn fast_retry() -> RetryPolicy {
    RetryPolicy {
        min_delay_ms: 10,
        max_delay_ms: 50,
        max_attempts: 3,
    }
}

fn chained(p: i32, seq: i64, hash_byte: u8) -> ChainedEvent {
    ChainedEvent {
        chain_partition: p,
        seq,
        prev_hash: vec![hash_byte.wrapping_sub(1); 32],
        hash: vec![hash_byte; 32],
        canonical_version: 1,
        source_topic: "audit.enriched".into(),
        source_partition: p,
        source_offset: seq * 10,
        event: sample_event(),
    }
}

fn entry(c: &ChainedEvent, offset: i64) -> Entry {
    let layout = LAYOUT.get().expect("call `fresh` first");
    Entry::new(AuditRow::from_chained(c, offset), layout, &mut Vec::new()).expect("entry")
}

/// Entries of partition `p` for `seqs`, each hashed with its seq's byte, at chained offset
/// 100 + seq.
fn entries(p: i32, seqs: std::ops::RangeInclusive<i64>) -> Vec<Entry> {
    seqs.map(|s| entry(&chained(p, s, s as u8), 100 + s))
        .collect()
}

#[tokio::test]
async fn migrations_apply_twice_idempotently() {
    let (store, db) = fresh("mig").await;
    // `fresh` applied once; a second (and third) run changes nothing.
    let again = migrations::apply(&store).await.expect("second apply");
    assert!(again.applied.is_empty(), "{again:?}");
    let applicable: Vec<u32> = MIGRATIONS
        .iter()
        .filter(|m| migrations::applicable(m, store.version()))
        .map(|m| m.version)
        .collect();
    assert_eq!(again.already, applicable);
    assert_eq!(again.already.len() + again.skipped.len(), MIGRATIONS.len());
    migrations::apply(&store).await.expect("third apply");
    let tables = count(
        &store,
        &format!(
            "SELECT count() FROM system.tables WHERE database = '{db}' AND name IN \
             ('audit_events', 'audit_checkpoints', 'audit_forks', 'schema_migrations')"
        ),
    )
    .await;
    assert_eq!(tables, 4);
    let recorded = count(&store, "SELECT uniqExact(version) FROM schema_migrations").await;
    assert_eq!(recorded as usize, applicable.len());
    // The engine is plain MergeTree (a different second copy must stay visible).
    let engine: String = store
        .client()
        .query_raw(&format!(
            "SELECT engine FROM system.tables WHERE database = '{db}' AND name = 'audit_events'"
        ))
        .fetch_one()
        .await
        .expect("engine");
    assert_eq!(engine, "MergeTree");
    drop_db(&store, &db).await;
}

/// Arbitrary chained events (any Unicode, any integers, optional sub-records present or not)
/// survive insert + select + `to_chained` exactly, and so do their canonical bytes.
#[tokio::test]
async fn insert_read_back_roundtrip_is_exact() {
    let (store, db) = fresh("rt").await;
    // The strategy is deep: generate on a thread with a big stack, deterministically.
    let originals: Vec<ChainedEvent> = std::thread::Builder::new()
        .stack_size(256 << 20)
        .spawn(|| {
            let mut runner = TestRunner::new_with_rng(
                PtConfig::default(),
                TestRng::from_seed(RngAlgorithm::ChaCha, &[7; 32]),
            );
            let strategy = arb_chained_event();
            (0..200)
                .map(|i| {
                    let mut c = strategy.new_tree(&mut runner).expect("value").current();
                    c.chain_partition = 2;
                    c.seq = i + 1;
                    c.canonical_version = schemas::avro::CANONICAL_VERSION;
                    c
                })
                .collect()
        })
        .expect("spawn")
        .join()
        .expect("generate");
    let entries: Vec<Entry> = originals
        .iter()
        .enumerate()
        .map(|(i, c)| entry(c, 1000 + i as i64))
        .collect();
    let out = store_batch(
        &store,
        2,
        &entries,
        &fast_retry(),
        &CancellationToken::new(),
    )
    .await
    .expect("store");
    assert_eq!(out.inserted, 200);
    let rows = store
        .fetch_events("WHERE chain_partition = 2 ORDER BY seq")
        .await
        .expect("read back");
    assert_eq!(rows.len(), originals.len());
    for (row, original) in rows.iter().zip(&originals) {
        assert_eq!(row, &AuditRow::from_chained(original, row.chained_offset));
        let back = row.to_chained().expect("to_chained");
        assert_eq!(&back, original);
        // What the verifier recomputes from the stored columns is the exact canonical bytes.
        assert_eq!(
            OwnedRecord::from_chained(&back).expect("canonical"),
            OwnedRecord::from_chained(original).expect("canonical")
        );
    }
    drop_db(&store, &db).await;
}

#[tokio::test]
async fn existing_seqs_are_skipped_and_forks_recorded_never_overwritten() {
    let (store, db) = fresh("skip").await;
    let cancel = CancellationToken::new();
    let p = 1;
    let first: Vec<Entry> = entries(p, 1..=5);
    let out = store_batch(&store, p, &first, &fast_retry(), &cancel)
        .await
        .expect("first");
    assert_eq!((out.inserted, out.duplicates), (5, 0));

    // Re-delivery overlapping what is stored (a crash after insert, before commit).
    let second: Vec<Entry> = entries(p, 3..=8);
    let out = store_batch(&store, p, &second, &fast_retry(), &cancel)
        .await
        .expect("second");
    assert_eq!((out.inserted, out.duplicates), (3, 3));

    // A previous attempt landed partially (9 and 10), then the retry sends 9..=12.
    let partial: Vec<Entry> = entries(p, 9..=10);
    let rows: Vec<&Entry> = partial.iter().collect();
    store.insert_events(&rows).await.expect("partial landing");
    let retry: Vec<Entry> = entries(p, 9..=12);
    let out = store_batch(&store, p, &retry, &fast_retry(), &cancel)
        .await
        .expect("retry");
    assert_eq!((out.inserted, out.duplicates), (2, 2));

    // A different copy of seq 4 (a zombie chainer): a fork, recorded, the stored row kept.
    let offered = chained(p, 4, 0xEE);
    let fork = vec![entry(&offered, 500)];
    let out = store_batch(&store, p, &fork, &fast_retry(), &cancel)
        .await
        .expect("fork");
    assert_eq!(out.inserted, 0);
    assert_eq!(out.forks.len(), 1);
    assert_eq!(out.forks[0].stored_hash, hex::encode([4u8; 32]));
    assert_eq!(out.forks[0].offered_hash, hex::encode([0xEEu8; 32]));
    // The offered copy is recorded whole (re-encoded from its row: the chainer's own
    // single-object bytes), so the investigation needs no Kafka.
    let payload = hex::decode(&out.forks[0].offered_payload_hex).expect("hex");
    assert_eq!(
        payload,
        schemas::framing::encode_single_object_chained(&offered).expect("encode")
    );
    assert_eq!(
        schemas::framing::decode_chained(&payload, None).expect("decode"),
        offered
    );
    // Offered again (re-read after a restart): not recorded twice.
    store_batch(&store, p, &fork, &fast_retry(), &cancel)
        .await
        .expect("fork again");
    assert_eq!(count(&store, "SELECT count() FROM audit_forks").await, 1);

    // Exactly one row per seq, the first copies.
    assert_eq!(count(&store, "SELECT count() FROM audit_events").await, 12);
    assert_eq!(
        count(&store, "SELECT uniqExact(seq) FROM audit_events").await,
        12
    );
    let stored4 = store
        .fetch_events("WHERE chain_partition = 1 AND seq = 4")
        .await
        .expect("seq 4");
    assert_eq!(stored4.len(), 1);
    assert_eq!(stored4[0].hash, hex::encode([4u8; 32]));

    // The resume point is the chained offset of the highest seq.
    let head = store.stored_head(p).await.expect("head").expect("some");
    assert_eq!((head.seq, head.chained_offset), (12, 112));
    assert_eq!(store.stored_head(99).await.expect("head"), None);
    drop_db(&store, &db).await;
}

#[tokio::test]
async fn checkpoints_roundtrip_and_are_idempotent() {
    let (store, db) = fresh("cp").await;
    let cp = Checkpoint {
        chain_id: "audit-local".into(),
        partition: 3,
        first_seq: 1,
        seq: 42,
        head_hash: vec![0xAB; 32],
        merkle_root: vec![0xCD; 32],
        time_us: 1_717_200_000_123_456,
        partition_count: 0,
        key_id: "k1".into(),
        signature: vec![0x5A; 64],
        tree_root: Vec::new(),
    };
    let row = CheckpointRow::from_checkpoint(&cp, 7);
    assert!(!store.checkpoint_exists(&row).await.expect("exists"));
    store.insert_checkpoint(&row).await.expect("insert");
    assert!(store.checkpoint_exists(&row).await.expect("exists"));
    let back: Vec<CheckpointRow> = store
        .client()
        .query(&CheckpointRow::select_sql("audit_checkpoints"))
        .fetch_all()
        .await
        .expect("select");
    assert_eq!(back, vec![row]);
    assert_eq!(back[0].to_checkpoint().expect("to_checkpoint"), cp);
    drop_db(&store, &db).await;
}

/// Every analyst recipe runs on the real server and returns what the data says.
#[tokio::test]
async fn query_recipes_run_against_the_server() {
    let (store, db) = fresh("q").await;
    let mut entries = Vec::new();
    for s in 1..=6i64 {
        let mut c = chained(0, s, s as u8);
        c.event.event_id = format!("evt-{s}");
        c.event.event_time_us = 1_717_200_000_000_000 + s * 3_600_000_000; // 2024-06-01, hourly
        c.event.trace.trace_id = Some(if s <= 3 {
            "trace-A".into()
        } else {
            "trace-B".into()
        });
        if s == 5 {
            c.event.outcome = Outcome::Denied;
            c.event.event_type = "policy_evaluated".into();
        }
        entries.push(entry(&c, s));
    }
    store_batch(
        &store,
        0,
        &entries,
        &fast_retry(),
        &CancellationToken::new(),
    )
    .await
    .expect("store");
    let cp = Checkpoint {
        chain_id: "c".into(),
        partition: 0,
        first_seq: 1,
        seq: 6,
        head_hash: vec![6; 32],
        merkle_root: vec![0; 32],
        time_us: 1_717_300_000_000_000,
        partition_count: 0,
        key_id: "k".into(),
        signature: vec![1; 64],
        tree_root: Vec::new(),
    };
    store
        .insert_checkpoint(&CheckpointRow::from_checkpoint(&cp, 0))
        .await
        .expect("cp");

    let params: HashMap<&str, Param> = HashMap::from([
        ("from", Param::Str("2024-06-01 00:00:00".into())),
        ("to", Param::Str("2024-06-02 00:00:00".into())),
        ("trace_id", Param::Str("trace-A".into())),
        ("actor_id", Param::Str("user-123".into())),
        ("limit", Param::UInt(100)),
    ]);
    let expected_rows: HashMap<&str, u64> = HashMap::from([
        ("counts_by_type", 2),      // infrastructure_request, policy_evaluated
        ("trace_timeline", 3),      // seqs 1..=3
        ("user_activity", 6),       // every sample event is user-123's
        ("policy_denials", 1),      // seq 5
        ("team_events_per_day", 1), // team-456 on 2024-06-01
        ("chain_heads", 1),         // partition 0
        // one row per label and value: category, severity, actor type, outcome SUCCESS + DENIED
        ("original_labels", 5),
    ]);
    // The recipes named here; every recipe is checked against an independent answer in
    // auditctl/tests/query_recipes.rs.
    for r in RECIPES
        .iter()
        .filter(|r| expected_rows.contains_key(r.name))
    {
        let names = queries::parameters(r.sql);
        let given: Vec<(&str, Param)> = names
            .iter()
            .map(|n| {
                (
                    n.as_str(),
                    params.get(n.as_str()).cloned().expect("param known"),
                )
            })
            .collect();
        let sql = queries::render(r.sql, &given).expect("render");
        let body = sql
            .lines()
            .filter(|l| !l.trim_start().starts_with("--"))
            .collect::<Vec<_>>()
            .join("\n");
        let n = count(&store, &format!("SELECT count() FROM ({body})")).await;
        assert_eq!(Some(&n), expected_rows.get(r.name), "recipe {}", r.name);
    }
    // The chain-heads recipe reports the head and the checkpoint.
    let body =
        queries::render(queries::recipe("chain_heads").expect("recipe").sql, &[]).expect("render");
    let (head, missing, cp_seq): (i64, i64, i64) = store
        .client()
        .query_raw(&format!(
            "SELECT head_seq, missing_seqs, checkpoint_seq FROM ({body})"
        ))
        .fetch_one()
        .await
        .expect("chain heads");
    assert_eq!((head, missing, cp_seq), (6, 0, 6));
    drop_db(&store, &db).await;
}

/// A batch whose events span 150 months (more than the server's
/// `max_partitions_per_insert_block`, 100, which refuses the whole INSERT every time: it was
/// retried forever) is stored: one INSERT per run of same-month rows.
#[tokio::test]
async fn a_batch_spanning_more_than_100_months_is_stored() {
    let (store, db) = fresh("months").await;
    let p = 0;
    // Seqs 1..=150 one month apart, then 151..=160 alternating between two months.
    let entries: Vec<Entry> = (1..=160)
        .map(|s| {
            let mut c = chained(p, s, s as u8);
            c.event.event_time_us = if s <= 150 {
                month_us(s)
            } else {
                month_us(s % 2)
            };
            entry(&c, 1000 + s)
        })
        .collect();
    let out = store_batch(
        &store,
        p,
        &entries,
        &fast_retry(),
        &CancellationToken::new(),
    )
    .await
    .expect("a batch over 150 months is stored");
    assert_eq!((out.inserted, out.duplicates), (160, 0));
    assert_eq!(count(&store, "SELECT count() FROM audit_events").await, 160);
    assert!(
        count(
            &store,
            "SELECT uniqExact(toYYYYMM(event_time)) FROM audit_events"
        )
        .await
            > 100
    );
    let head = store.stored_head(p).await.expect("head").expect("some");
    assert_eq!((head.seq, head.chained_offset), (160, 1160));
    drop_db(&store, &db).await;
}

/// The batches of several partitions go in together: one "what is stored" query and one
/// INSERT per month for all of them (each was one query and one INSERT per partition, each
/// INSERT also feeding every report view), with each partition's duplicates skipped.
#[tokio::test]
async fn the_batches_of_several_partitions_are_stored_in_one_insert() {
    let (store, db) = fresh("multi").await;
    let marker = (1u64 << 41) + u64::from(uuid::Uuid::new_v4().as_fields().0);
    let logged = store
        .clone()
        .with_setting("log_queries", "1")
        .with_setting("max_result_rows", &marker.to_string());
    let cancel = CancellationToken::new();
    // Partition 2 has 1..=3 stored already (a redelivery after a crash before the commit).
    store_batch(&store, 2, &entries(2, 1..=3), &fast_retry(), &cancel)
        .await
        .expect("first");
    let (a, b, c) = (entries(0, 1..=4), entries(1, 1..=5), entries(2, 1..=6));
    let out = sink_clickhouse::writer::store_batches_reporting(
        &logged,
        &[(0, &a), (1, &b), (2, &c)],
        &fast_retry(),
        &cancel,
        None,
    )
    .await
    .expect("store");
    let got: Vec<(usize, usize, Option<i64>)> = out
        .iter()
        .map(|o| (o.inserted, o.duplicates, o.max_seq))
        .collect();
    assert_eq!(got, [(4, 0, Some(4)), (5, 0, Some(5)), (3, 3, Some(6))]);
    for (p, n) in [(0, 4), (1, 5), (2, 6)] {
        let sql = format!("SELECT uniqExact(seq) FROM audit_events WHERE chain_partition = {p}");
        assert_eq!(count(&store, &sql).await, n);
        assert_eq!(
            store.stored_head(p).await.expect("head").map(|h| h.seq),
            Some(n as i64)
        );
    }
    assert_eq!(count(&store, "SELECT count() FROM audit_events").await, 15);
    let sql = format!(
        "SELECT written_rows FROM system.query_log \
         WHERE arrayExists((n, v) -> n = 'max_result_rows' AND v = '{marker}', \
         Settings.Names, Settings.Values) \
         AND type = 2 AND query LIKE 'INSERT INTO `audit_events`%'"
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let written: Vec<u64> = loop {
        store
            .client()
            .query("SYSTEM FLUSH LOGS")
            .execute()
            .await
            .expect("flush logs");
        let w: Vec<u64> = store.client().query(&sql).fetch_all().await.expect("log");
        if w.iter().sum::<u64>() >= 12 || std::time::Instant::now() > deadline {
            break w;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    assert_eq!(written, vec![12], "rows per INSERT");
    drop_db(&store, &db).await;
}

/// Every INSERT touches one table partition (one month), so ClickHouse applies it whole or
/// not at all: an INSERT over several months is written one part per month and can land in
/// part, leaving later seqs stored and earlier ones missing. Seen in `system.query_log`.
#[tokio::test]
async fn each_insert_touches_one_month_in_seq_order() {
    let (store, db) = fresh("runs").await;
    // A harmless setting with a value of its own marks this test's queries in the log.
    let marker = (1u64 << 40) + u64::from(uuid::Uuid::new_v4().as_fields().0);
    let logged = store
        .clone()
        .with_setting("log_queries", "1")
        .with_setting("max_result_rows", &marker.to_string());
    // Seqs 1..=7 over months 0, 0, 1, 1, 1, 2, 0: four runs.
    let entries: Vec<Entry> = [0, 0, 1, 1, 1, 2, 0]
        .iter()
        .enumerate()
        .map(|(i, &m)| {
            let s = i as i64 + 1;
            let mut c = chained(0, s, s as u8);
            c.event.event_time_us = month_us(m);
            entry(&c, 100 + s)
        })
        .collect();
    store_batch(
        &logged,
        0,
        &entries,
        &fast_retry(),
        &CancellationToken::new(),
    )
    .await
    .expect("store");
    let sql = format!(
        "SELECT written_rows FROM system.query_log \
         WHERE arrayExists((n, v) -> n = 'max_result_rows' AND v = '{marker}', \
         Settings.Names, Settings.Values) \
         AND type = 2 AND query LIKE 'INSERT INTO `audit_events`%' \
         ORDER BY query_start_time, written_rows"
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let written: Vec<u64> = loop {
        store
            .client()
            .query("SYSTEM FLUSH LOGS")
            .execute()
            .await
            .expect("flush logs");
        let w: Vec<u64> = store.client().query(&sql).fetch_all().await.expect("log");
        if w.iter().sum::<u64>() >= 7 || std::time::Instant::now() > deadline {
            break w;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    let mut sorted = written.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, vec![1, 1, 2, 3], "rows per INSERT: {written:?}");
    drop_db(&store, &db).await;
}

/// The resume point is the end of the contiguous stored prefix, not the highest stored seq:
/// rows of later months stored while earlier ones are missing (one INSERT over several
/// partitions of an older sink, partly applied) must be refilled, not skipped forever.
#[tokio::test]
async fn stored_head_is_the_end_of_the_contiguous_prefix() {
    let (store, db) = fresh("prefix").await;
    let p = 4;
    let insert = |seqs: Vec<i64>| {
        let rows: Vec<Entry> = seqs
            .iter()
            .map(|&s| entry(&chained(p, s, s as u8), 100 + s))
            .collect();
        let store = store.clone();
        async move {
            let refs: Vec<&Entry> = rows.iter().collect();
            store.insert_events(&refs).await.expect("insert");
        }
    };
    // The later months landed, seqs 1..=3 did not.
    insert((4..=9).collect()).await;
    assert_eq!(store.stored_head(p).await.expect("head"), None);
    insert(vec![1, 2]).await;
    let head = store.stored_head(p).await.expect("head").expect("some");
    assert_eq!((head.seq, head.chained_offset), (2, 102));
    // An identical second copy of 2 (a zombie's) at a later offset: the earliest counts.
    store
        .insert_events(&[&entry(&chained(p, 2, 2), 150)])
        .await
        .expect("copy");
    let head = store.stored_head(p).await.expect("head").expect("some");
    assert_eq!((head.seq, head.chained_offset), (2, 102));
    insert(vec![3, 11]).await;
    let head = store.stored_head(p).await.expect("head").expect("some");
    assert_eq!((head.seq, head.chained_offset), (9, 109));
    insert(vec![10]).await;
    assert_eq!(
        store.stored_head(p).await.expect("head").map(|h| h.seq),
        Some(11)
    );
    drop_db(&store, &db).await;
}

/// A table the rows do not fit (a column's type changed by hand) is found when the layout is
/// read: the sink refuses to write, with the column named, instead of sending bytes the
/// server would read as other values. And a row type whose columns are not all in the table
/// is refused the same way.
#[tokio::test]
async fn a_table_the_rows_do_not_fit_is_refused_before_any_insert() {
    let (migrated, db) = fresh("layout").await;
    migrated
        .client()
        .query("ALTER TABLE audit_events MODIFY COLUMN source_offset Int32")
        .execute()
        .await
        .expect("alter");
    // A new store reads the table as it is now.
    let store = Store::connect(&settings(&db)).await.expect("connect");
    let layout = store.row_layout().await.expect("layout");
    let row = AuditRow::from_chained(&chained(1, 1, 1), 100);
    let err = Entry::new(row, &layout, &mut Vec::new()).expect_err("does not fit");
    assert_eq!(
        err,
        sink_clickhouse::rowbinary::RowBinaryError::Mismatch {
            column: "source_offset",
            table_type: "Int32".into(),
            value: "i64",
        }
    );
    migrated
        .client()
        .query("ALTER TABLE audit_events DROP COLUMN perf_resource_count")
        .execute()
        .await
        .expect("drop column");
    let store = Store::connect(&settings(&db)).await.expect("connect");
    let err = store.row_layout().await.expect_err("a column is missing");
    assert!(
        err.to_string().contains("no column `perf_resource_count`"),
        "{err}"
    );
    assert_eq!(
        count(&migrated, "SELECT count() FROM audit_events").await,
        0
    );
    drop_db(&migrated, &db).await;
}
