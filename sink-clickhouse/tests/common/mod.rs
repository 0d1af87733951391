//! Helpers shared by the sink's tests against the local ClickHouse (`AUDIT_CLICKHOUSE_URL`,
//! default http://127.0.0.1:8123). Each test file uses only some of them.
#![allow(dead_code)]

use std::time::Duration;

use sink_clickhouse::store::{Store, StoreSettings};
use worker_runtime::Secret;

/// The ClickHouse HTTP endpoint the tests use.
pub fn ch_url() -> String {
    std::env::var("AUDIT_CLICKHOUSE_URL").unwrap_or_else(|_| "http://127.0.0.1:8123".into())
}

/// Connection settings for `database` on [`ch_url`], with the user and password of
/// `AUDIT_CLICKHOUSE_USER`/`AUDIT_CLICKHOUSE_PASSWORD` (default: `default`, no password).
pub fn settings(database: &str) -> StoreSettings {
    StoreSettings {
        url: ch_url(),
        database: database.into(),
        user: std::env::var("AUDIT_CLICKHOUSE_USER").unwrap_or_else(|_| "default".into()),
        password: Secret::new(std::env::var("AUDIT_CLICKHOUSE_PASSWORD").unwrap_or_default()),
    }
}

/// Connects to `database` once it exists (the worker under test creates it), retrying every
/// 200 ms.
pub async fn connect_when_created(database: &str) -> Store {
    loop {
        if let Ok(store) = Store::connect(&settings(database)).await {
            return store;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The single number `sql` returns (a `count()`, a `uniqExact(...)`); fails the test naming
/// the query when it fails.
pub async fn count(store: &Store, sql: &str) -> u64 {
    store
        .client()
        .query_raw(sql)
        .fetch_one::<u64>()
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

/// Drops a test's own database (best effort: the test's verdict is already known).
pub async fn drop_db(store: &Store, db: &str) {
    let _ = store
        .client()
        .query(&format!("DROP DATABASE IF EXISTS {db}"))
        .execute()
        .await;
}

/// `event_time_us` of 2024-01-01 plus `m` × 31 days: month `m` after January 2024.
pub fn month_us(m: i64) -> i64 {
    1_704_067_200_000_000 + m * 31 * 86_400_000_000
}
