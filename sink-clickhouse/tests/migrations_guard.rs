//! Migrations that add columns stay idempotent on a server without `ADD COLUMN IF NOT EXISTS`
//! (the local 18.16): a run that added a column and crashed before recording its version is
//! retried without error, and the derived columns compute from the chained ones. Real server
//! (`AUDIT_CLICKHOUSE_URL`, default http://127.0.0.1:8123); FAILS when it is absent.

mod common;

use std::time::{Duration, Instant};

use common::settings;
use sink_clickhouse::migrations;
use sink_clickhouse::store::Store;

async fn exec(store: &Store, sql: &str) {
    store
        .client()
        .query_raw(sql)
        .execute()
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

#[tokio::test]
async fn a_column_migration_interrupted_before_it_was_recorded_applies_again() {
    let db = format!("audit_test_mguard_{}", uuid::Uuid::new_v4().simple());
    let store = Store::connect(&settings(&db))
        .await
        .unwrap_or_else(|e| panic!("ClickHouse must be up (deploy/local/stack.sh up): {e}"));
    let first = migrations::apply(&store).await.expect("first run");
    assert!(first.applied.contains(&4), "{first:?}");
    // The crash: the columns exist, the version is not recorded.
    exec(
        &store,
        "ALTER TABLE schema_migrations DELETE WHERE version IN (4, 20)",
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let pending: u64 = store
            .client()
            .query("SELECT count() FROM schema_migrations WHERE version IN (4, 20)")
            .fetch_one()
            .await
            .expect("count");
        if pending == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "mutation not applied in 60 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let again = migrations::apply(&store).await.expect("retried run");
    assert!(
        again.applied.contains(&4) && again.applied.contains(&20),
        "{again:?}"
    );
    let third = migrations::apply(&store).await.expect("third run");
    assert!(third.applied.is_empty(), "{third:?}");

    // The derived columns compute from the chained columns.
    exec(
        &store,
        "INSERT INTO audit_events (chain_partition, seq, metadata_json, attribute_keys, \
         attribute_values) VALUES (0, 1, '{\"_unmapped\":{\"target\":{\"metadata\":{\"r\":\"eu\"}}}}', \
         ['audit.enrich.department'], ['eng']), (0, 2, NULL, [], [])",
    )
    .await;
    let rows: Vec<(Option<String>, Option<String>)> = store
        .client()
        .query("SELECT target_metadata, department FROM audit_events ORDER BY seq")
        .fetch_all()
        .await
        .expect("derived columns");
    assert_eq!(
        rows,
        vec![
            (Some("{\"r\":\"eu\"}".to_owned()), Some("eng".to_owned())),
            (None, None)
        ]
    );
    exec(&store, &format!("DROP DATABASE IF EXISTS {db}")).await;
}
