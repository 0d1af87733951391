//! Idempotent DDL applied at startup, tracked in `schema_migrations`.
//!
//! - Base migrations (`migrations/NNNN_*.sql`) work on every supported server, including the
//!   local 18.16: they use `CREATE TABLE IF NOT EXISTS` and only old-server types.
//! - Upgrades (`migrations/upgrades/NNNN_*.min-X.Y.sql`) use features 18.16 lacks
//!   (LowCardinality, DateTime64, skip indexes, insert dedup, the retention policy table) and
//!   are applied only when
//!   `SELECT version()` is at least `X.Y`. On an older server they are skipped (logged) and
//!   applied at the first start after the server is upgraded.
//!
//! Every statement is idempotent by itself, so two sinks starting at the same moment both
//! succeed (the version may then be recorded twice, which is harmless).

use std::collections::HashSet;

use clickhouse::Row;
use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::store::{ServerVersion, Store, MIGRATIONS_TABLE};

#[derive(Debug, Clone, Copy)]
pub struct Migration {
    pub version: u32,
    pub name: &'static str,
    /// Oldest server (`major`, `minor`) the statement runs on; `None` = every server.
    pub min_server: Option<(u32, u32)>,
    /// File name under `migrations/` (for the listing test and logs).
    pub file: &'static str,
    pub sql: &'static str,
}

macro_rules! migration {
    ($version:literal, $name:literal, $min:expr, $file:literal) => {
        Migration {
            version: $version,
            name: $name,
            min_server: $min,
            file: $file,
            sql: include_str!(concat!("../migrations/", $file)),
        }
    };
}

/// Every migration, in the order they apply.
pub const MIGRATIONS: &[Migration] = &[
    migration!(1, "audit_events", None, "0001_audit_events.sql"),
    migration!(2, "audit_checkpoints", None, "0002_audit_checkpoints.sql"),
    migration!(3, "audit_forks", None, "0003_audit_forks.sql"),
    migration!(4, "derived_columns", None, "0004_derived_columns.sql"),
    migration!(
        5,
        "checkpoint_partition_count",
        None,
        "0005_checkpoint_partition_count.sql"
    ),
    migration!(
        6,
        "checkpoint_tree_root",
        None,
        "0006_checkpoint_tree_root.sql"
    ),
    migration!(7, "legal_hold", None, "0007_legal_hold.sql"),
    migration!(20, "report_views", None, "0020_report_views.sql"),
    migration!(
        101,
        "low_cardinality",
        Some((21, 8)),
        "upgrades/0101_low_cardinality.min-21.8.sql"
    ),
    migration!(
        102,
        "event_time64",
        Some((21, 8)),
        "upgrades/0102_event_time64.min-21.8.sql"
    ),
    migration!(
        103,
        "skip_indexes",
        Some((21, 8)),
        "upgrades/0103_skip_indexes.min-21.8.sql"
    ),
    migration!(
        104,
        "insert_dedup",
        Some((21, 8)),
        "upgrades/0104_insert_dedup.min-21.8.sql"
    ),
    migration!(
        105,
        "target_metadata_json",
        Some((21, 8)),
        "upgrades/0105_target_metadata_json.min-21.8.sql"
    ),
    migration!(
        106,
        "lookup_indexes",
        Some((21, 8)),
        "upgrades/0106_lookup_indexes.min-21.8.sql"
    ),
    migration!(
        107,
        "retention_policy",
        Some((21, 8)),
        "upgrades/0107_retention_policy.min-21.8.sql"
    ),
];

/// Oldest server that understands `ADD COLUMN IF NOT EXISTS` as far as these migrations rely
/// on it (18.16 does not; 21.8, the upgrades' floor, does).
const ADD_COLUMN_IF_NOT_EXISTS: (u32, u32) = (20, 1);

/// A statement `ALTER TABLE <table> ADD COLUMN IF NOT EXISTS <column> …` (one clause), split
/// into its table, column, and the same statement without `IF NOT EXISTS` for servers that
/// lack it. Anything else: `None` (run as written).
pub fn add_column_guard(stmt: &str) -> Option<(String, String, String)> {
    let words: Vec<&str> = stmt.split_whitespace().collect();
    let upper: Vec<String> = words.iter().map(|w| w.to_ascii_uppercase()).collect();
    let head = ["ALTER", "TABLE"];
    let clause = ["ADD", "COLUMN", "IF", "NOT", "EXISTS"];
    if words.len() < 9 || upper[..2] != head || upper[3..8] != clause {
        return None;
    }
    // One clause only: a second `ADD COLUMN` would need its own check.
    if upper[8..]
        .windows(2)
        .any(|w| w[0].ends_with("ADD") && w[1] == "COLUMN")
    {
        return None;
    }
    let at = stmt.to_ascii_uppercase().find("IF NOT EXISTS")?;
    let stripped = format!(
        "{}{}",
        &stmt[..at],
        stmt[at + "IF NOT EXISTS".len()..].trim_start()
    );
    Some((words[2].to_owned(), words[8].to_owned(), stripped))
}

const CREATE_MIGRATIONS_TABLE: &str = "CREATE TABLE IF NOT EXISTS schema_migrations \
     (version UInt32, name String, server_version String, applied_at DateTime('UTC') DEFAULT now()) \
     ENGINE = MergeTree() ORDER BY version";

#[derive(Debug, Serialize, Deserialize, Row)]
struct AppliedRow {
    version: u32,
    name: String,
    server_version: String,
}

/// What [`apply`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct MigrationReport {
    pub applied: Vec<u32>,
    pub already: Vec<u32>,
    /// Upgrades the server is too old for.
    pub skipped: Vec<u32>,
}

/// The statements of a migration file: comments dropped, split at `;` ending a line.
pub fn statements(sql: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for line in sql.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with("--") || trimmed.is_empty() {
            continue;
        }
        cur.push_str(line);
        cur.push('\n');
        if trimmed.ends_with(';') {
            let stmt = cur.trim().trim_end_matches(';').trim().to_owned();
            if !stmt.is_empty() {
                out.push(stmt);
            }
            cur.clear();
        }
    }
    let rest = cur.trim();
    if !rest.is_empty() {
        out.push(rest.to_owned());
    }
    out
}

/// Whether `m` applies to a server of `version`.
pub fn applicable(m: &Migration, version: &ServerVersion) -> bool {
    m.min_server.is_none_or(|min| version.supports(min))
}

/// Connects to ClickHouse and applies the migrations, retrying transient failures under
/// `policy` until `cancel` fires: a sink started while ClickHouse is away (a restart, an
/// outage) waits for it instead of exiting. Both steps are idempotent, so a failure part-way
/// is retried from the start.
pub async fn connect_and_migrate(
    settings: &crate::store::StoreSettings,
    policy: &worker_runtime::retry::RetryPolicy,
    cancel: &worker_runtime::CancellationToken,
) -> Result<(Store, MigrationReport), Error> {
    worker_runtime::retry::retry("clickhouse connect and migrate", policy, cancel, || async {
        let store = Store::connect(settings).await?;
        let report = apply(&store).await?;
        // The table as migrated: the columns rows are written to, read once for the store.
        store.row_layout().await?;
        Ok((store, report))
    })
    .await
    .map_err(worker_runtime::retry::RetryError::into_inner)
}

/// Applies what is missing; safe to run at every start and concurrently.
pub async fn apply(store: &Store) -> Result<MigrationReport, Error> {
    let client = store.client();
    client
        .query(CREATE_MIGRATIONS_TABLE)
        .execute()
        .await
        .map_err(|e| Error::ch(format!("creating {MIGRATIONS_TABLE}"), e))?;
    let done: Vec<u32> = client
        .query(&format!("SELECT DISTINCT version FROM {MIGRATIONS_TABLE}"))
        .fetch_all()
        .await
        .map_err(|e| Error::ch(format!("reading {MIGRATIONS_TABLE}"), e))?;
    let done: HashSet<u32> = done.into_iter().collect();
    let mut report = MigrationReport::default();
    for m in MIGRATIONS {
        if done.contains(&m.version) {
            report.already.push(m.version);
            continue;
        }
        if !applicable(m, store.version()) {
            tracing::info!(
                version = m.version,
                name = m.name,
                server = %store.version(),
                "optional upgrade skipped: server too old (applies after a server upgrade)"
            );
            report.skipped.push(m.version);
            continue;
        }
        for stmt in statements(m.sql) {
            let stmt = match add_column_guard(&stmt) {
                Some(_) if store.version().supports(ADD_COLUMN_IF_NOT_EXISTS) => stmt,
                Some((table, column, stripped)) => {
                    // Idempotent by hand on old servers: a concurrent or crashed earlier
                    // run may have added the column already.
                    let present: u64 = client
                        .query(
                            "SELECT count() FROM system.columns \
                             WHERE database = currentDatabase() AND table = ? AND name = ?",
                        )
                        .bind(&table)
                        .bind(&column)
                        .fetch_one()
                        .await
                        .map_err(|e| Error::ch(format!("looking up column {table}.{column}"), e))?;
                    if present > 0 {
                        continue;
                    }
                    stripped
                }
                None => stmt,
            };
            client
                .query_raw(&stmt)
                .execute()
                .await
                .map_err(|source| Error::Migration {
                    version: m.version,
                    name: m.name,
                    source,
                })?;
        }
        let mut insert = client
            .insert::<AppliedRow>(MIGRATIONS_TABLE)
            .await
            .map_err(|e| Error::ch(format!("recording migration {}", m.version), e))?;
        insert
            .write(&AppliedRow {
                version: m.version,
                name: m.name.to_owned(),
                server_version: store.version().to_string(),
            })
            .await
            .map_err(|e| Error::ch(format!("recording migration {}", m.version), e))?;
        insert
            .end()
            .await
            .map_err(|e| Error::ch(format!("recording migration {}", m.version), e))?;
        tracing::info!(version = m.version, name = m.name, "migration applied");
        report.applied.push(m.version);
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_file_is_listed_once_and_versions_increase() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
        let mut files = Vec::new();
        for sub in ["", "upgrades"] {
            for entry in std::fs::read_dir(dir.join(sub)).expect("read migrations dir") {
                let path = entry.expect("entry").path();
                if path.extension().is_some_and(|e| e == "sql") {
                    let name = path
                        .file_name()
                        .and_then(|n| n.to_str())
                        .expect("utf8 name");
                    files.push(if sub.is_empty() {
                        name.to_owned()
                    } else {
                        format!("{sub}/{name}")
                    });
                }
            }
        }
        files.sort();
        let mut listed: Vec<String> = MIGRATIONS.iter().map(|m| m.file.to_owned()).collect();
        listed.sort();
        assert_eq!(files, listed);
        assert!(MIGRATIONS.windows(2).all(|w| w[0].version < w[1].version));
        for m in MIGRATIONS {
            let prefix = format!("{:04}_", m.version);
            assert!(
                m.file
                    .rsplit('/')
                    .next()
                    .is_some_and(|f| f.starts_with(&prefix)),
                "{}",
                m.file
            );
            match m.min_server {
                None => assert!(!m.file.starts_with("upgrades/"), "{}", m.file),
                Some((a, b)) => {
                    assert!(m.file.ends_with(&format!(".min-{a}.{b}.sql")), "{}", m.file)
                }
            }
        }
    }

    #[test]
    fn splits_statements() {
        let s = statements(
            "-- c\nCREATE TABLE a (x Int8);\n\n-- d\nALTER TABLE a\n  ADD COLUMN y Int8;\n",
        );
        assert_eq!(
            s,
            vec![
                "CREATE TABLE a (x Int8)",
                "ALTER TABLE a\n  ADD COLUMN y Int8"
            ]
        );
        for m in MIGRATIONS {
            assert!(!statements(m.sql).is_empty(), "{}", m.file);
        }
    }

    #[test]
    fn add_column_guard_strips_if_not_exists() {
        let (t, c, s) = add_column_guard(
            "ALTER TABLE audit_events\n    ADD COLUMN IF NOT EXISTS department Nullable(String) MATERIALIZED x",
        )
        .expect("guarded");
        assert_eq!((t.as_str(), c.as_str()), ("audit_events", "department"));
        assert_eq!(
            s,
            "ALTER TABLE audit_events\n    ADD COLUMN department Nullable(String) MATERIALIZED x"
        );
        assert!(add_column_guard("ALTER TABLE a ADD COLUMN b Int8").is_none());
        assert!(add_column_guard(
            "ALTER TABLE a ADD INDEX IF NOT EXISTS i b TYPE set(1) GRANULARITY 1"
        )
        .is_none());
        assert!(add_column_guard(
            "ALTER TABLE a ADD COLUMN IF NOT EXISTS b Int8, ADD COLUMN IF NOT EXISTS c Int8"
        )
        .is_none());
        // Every base migration that adds a column does it one clause per statement, so the
        // guard covers it on 18.16.
        for m in MIGRATIONS.iter().filter(|m| m.min_server.is_none()) {
            for stmt in statements(m.sql) {
                if stmt.to_ascii_uppercase().contains("ADD COLUMN") {
                    assert!(add_column_guard(&stmt).is_some(), "{}: {stmt}", m.file);
                }
            }
        }
    }

    #[test]
    fn upgrades_are_gated_by_version() {
        let old = ServerVersion::parse("18.16.1").expect("v");
        let new = ServerVersion::parse("24.8.1").expect("v");
        let base: Vec<u32> = MIGRATIONS
            .iter()
            .filter(|m| applicable(m, &old))
            .map(|m| m.version)
            .collect();
        assert_eq!(base, vec![1, 2, 3, 4, 5, 6, 7, 20]);
        assert!(MIGRATIONS.iter().all(|m| applicable(m, &new)));
    }
}
