//! ClickHouse access: connection (with the server-version check that decides the validation of
//! rows read), the table's columns that rows are written for, and the few statements the sink
//! needs. Every statement names its table through the
//! constants here and its columns through `schemas::flat`, the same definitions auditctl uses.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::Arc;

use clickhouse::Client;
use schemas::flat::{AuditRow, CheckpointRow};
use serde::{Deserialize, Serialize};

use crate::batch::Entry;
use crate::error::Error;
use crate::rowbinary::Layout;

pub const EVENTS_TABLE: &str = "audit_events";
pub const CHECKPOINTS_TABLE: &str = "audit_checkpoints";
pub const FORKS_TABLE: &str = "audit_forks";
pub const MIGRATIONS_TABLE: &str = "schema_migrations";

/// A ClickHouse server version, `major.minor` (patch and build are kept for display).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ServerVersion {
    pub major: u32,
    pub minor: u32,
    pub rest: String,
}

impl ServerVersion {
    pub fn parse(text: &str) -> Result<Self, Error> {
        let text = text.trim();
        let mut parts = text.splitn(3, '.');
        let num = |p: Option<&str>| p.and_then(|s| s.parse::<u32>().ok());
        match (num(parts.next()), num(parts.next())) {
            (Some(major), Some(minor)) => Ok(ServerVersion {
                major,
                minor,
                rest: parts.next().unwrap_or("").to_owned(),
            }),
            _ => Err(Error::ServerVersion(text.to_owned())),
        }
    }

    pub fn supports(&self, min: (u32, u32)) -> bool {
        (self.major, self.minor) >= min
    }
}

impl fmt::Display for ServerVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.rest.is_empty() {
            write!(f, "{}.{}", self.major, self.minor)
        } else {
            write!(f, "{}.{}.{}", self.major, self.minor, self.rest)
        }
    }
}

/// Oldest server the `clickhouse` crate's row validation (`RowBinaryWithNamesAndTypes` +
/// `DESCRIBE`) is used against for the rows the sink reads; older servers (the local 18.16)
/// get plain `RowBinary`, whose column order is pinned by `AuditRow::COLUMNS` and the smoke
/// tests instead. Rows written are checked against the table on every server
/// ([`Store::row_layout`]).
/// Bytes of rows sent per chunk of an INSERT's body (the `clickhouse` crate's own `Insert`
/// uses the same).
const INSERT_BUFFER: usize = 256 * 1024;

pub const VALIDATION_MIN_VERSION: (u32, u32) = (24, 8);

/// Where and how to reach ClickHouse.
#[derive(Debug, Clone)]
pub struct StoreSettings {
    pub url: String,
    pub database: String,
    pub user: String,
    pub password: worker_runtime::Secret,
}

/// `database` must be a plain identifier: it is put into DDL unquoted.
pub fn check_identifier(name: &str) -> Result<(), Error> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !name.starts_with(|c: char| c.is_ascii_digit());
    if ok {
        Ok(())
    } else {
        Err(Error::Config(format!(
            "database name {name:?} must match [A-Za-z_][A-Za-z0-9_]*"
        )))
    }
}

/// Where a partition's stored chain ends without a hole (see [`Store::stored_head`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoredHead {
    pub seq: i64,
    /// Offset in `<prefix>chained` of the record stored at `seq`.
    pub chained_offset: i64,
}

/// One fork alarm (`audit_forks`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, clickhouse::Row)]
pub struct ForkRow {
    pub chain_partition: i32,
    pub seq: i64,
    pub stored_hash: String,
    pub offered_hash: String,
    pub offered_chained_offset: i64,
    pub offered_payload_hex: String,
}

#[derive(Debug, Deserialize, clickhouse::Row)]
struct SeqSpan {
    n: u64,
    min_seq: i64,
    max_seq: i64,
}

#[derive(Debug, Deserialize, clickhouse::Row)]
struct PartSeqHash {
    chain_partition: i32,
    seq: i64,
    hash: String,
}

#[derive(Debug, Deserialize, clickhouse::Row)]
struct SeqHash {
    seq: i64,
    hash: String,
}

/// A connected ClickHouse database (cheap to clone).
#[derive(Clone)]
pub struct Store {
    client: Client,
    version: ServerVersion,
    database: String,
    /// `audit_events`' columns for `AuditRow`, read once (after the migrations) and shared
    /// by the clones.
    layout: Arc<tokio::sync::OnceCell<Arc<Layout>>>,
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store")
            .field("database", &self.database)
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

fn base_client(s: &StoreSettings) -> Client {
    let mut c = Client::default().with_url(&s.url).with_user(&s.user);
    if !s.password.is_empty() {
        c = c.with_password(s.password.expose());
    }
    c
}

impl Store {
    /// Asks the server's version, creates the database if missing, and picks the format of the
    /// rows it reads: validated (`RowBinaryWithNamesAndTypes`) on servers the crate supports,
    /// plain `RowBinary` on older ones.
    pub async fn connect(s: &StoreSettings) -> Result<Self, Error> {
        check_identifier(&s.database)?;
        let root = base_client(s).with_validation(false);
        let version: String = root
            .query("SELECT version()")
            .fetch_one()
            .await
            .map_err(|e| Error::ch(format!("asking the server version at {}", s.url), e))?;
        let version = ServerVersion::parse(&version)?;
        root.query(&format!("CREATE DATABASE IF NOT EXISTS {}", s.database))
            .execute()
            .await
            .map_err(|e| Error::ch(format!("creating database {}", s.database), e))?;
        let validation = version.supports(VALIDATION_MIN_VERSION);
        tracing::info!(url = %s.url, database = %s.database, %version, validation, "connected to ClickHouse");
        Ok(Store {
            client: base_client(s)
                .with_database(&s.database)
                .with_validation(validation),
            version,
            database: s.database.clone(),
            layout: Arc::default(),
        })
    }

    /// The columns `AuditRow`s are written to, with `audit_events`' types as the server reports
    /// them (`system.columns`), so that each row is checked against the table as it is written
    /// ([`crate::rowbinary`]). Read on first use; call it after the migrations.
    pub async fn row_layout(&self) -> Result<Arc<Layout>, Error> {
        self.layout
            .get_or_try_init(|| async {
                #[derive(Deserialize, clickhouse::Row)]
                struct NameType {
                    name: String,
                    #[serde(rename = "type")]
                    ty: String,
                }
                let what = || format!("reading the columns of {EVENTS_TABLE}");
                let columns: Vec<NameType> = self
                    .client
                    .query(
                        "SELECT name, type FROM system.columns \
                         WHERE database = currentDatabase() AND table = ?",
                    )
                    .bind(EVENTS_TABLE)
                    .fetch_all()
                    .await
                    .map_err(|e| Error::ch(what(), e))?;
                let layout = Layout::new(
                    <AuditRow as clickhouse::Row>::COLUMN_NAMES,
                    columns.iter().map(|c| (c.name.as_str(), c.ty.as_str())),
                )?;
                Ok(Arc::new(layout))
            })
            .await
            .cloned()
    }

    /// The same store with a ClickHouse setting sent with every request (e.g. `log_queries`:
    /// the tests read `system.query_log` to see each INSERT).
    pub fn with_setting(mut self, name: &str, value: &str) -> Self {
        self.client = self.client.with_setting(name, value);
        self
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    pub fn version(&self) -> &ServerVersion {
        &self.version
    }

    pub fn database(&self) -> &str {
        &self.database
    }

    /// The end of partition `p`'s contiguous stored prefix: the highest `s` such that every
    /// seq in `1..=s` is stored, and the chained offset of the record at `s` (the earliest
    /// copy's, if a zombie's identical copy is stored too). `None` = seq 1 is not stored.
    ///
    /// Not simply `max(seq)`: rows written by an older sink (one INSERT spanning several
    /// months, i.e. several table partitions, can land in part) or inserted by hand may leave a
    /// hole below the maximum, and resuming after the maximum would leave that hole forever.
    /// Resuming at the hole re-reads what follows it; the check before every insert skips the
    /// rows already there. The common case (no hole) costs one query; a hole is located by
    /// binary search over `uniqExact(seq)` of seq ranges (the table is ordered by
    /// `(chain_partition, seq)`, so each probe reads an index range).
    pub async fn stored_head(&self, p: i32) -> Result<Option<StoredHead>, Error> {
        let sql = format!(
            "SELECT uniqExact(seq) AS n, min(seq) AS min_seq, max(seq) AS max_seq \
             FROM {EVENTS_TABLE} WHERE chain_partition = ? AND seq >= 1"
        );
        let row: SeqSpan = self
            .client
            .query(&sql)
            .bind(p)
            .fetch_one()
            .await
            .map_err(|e| Error::ch(format!("reading the stored seqs of partition {p}"), e))?;
        if row.n == 0 {
            return Ok(None);
        }
        let head = if row.min_seq == 1 && row.n == row.max_seq as u64 {
            row.max_seq
        } else {
            let head = self.contiguous_prefix(p, row.max_seq).await?;
            tracing::warn!(
                partition = p,
                contiguous_to = head,
                max_stored_seq = row.max_seq,
                stored_seqs = row.n,
                "stored seqs have a hole: resuming at the first missing seq, not after the highest"
            );
            metrics::counter!("audit_sink_stored_gaps_total", "stage" => "sink-clickhouse")
                .increment(1);
            head
        };
        if head == 0 {
            return Ok(None);
        }
        let sql = format!(
            "SELECT min(chained_offset) FROM {EVENTS_TABLE} WHERE chain_partition = ? AND seq = ?"
        );
        let chained_offset: i64 = self
            .client
            .query(&sql)
            .bind(p)
            .bind(head)
            .fetch_one()
            .await
            .map_err(|e| {
                Error::ch(
                    format!("reading the chained offset of partition {p} seq {head}"),
                    e,
                )
            })?;
        Ok(Some(StoredHead {
            seq: head,
            chained_offset,
        }))
    }

    /// Largest `s` in `0..=max` with every seq of `1..=s` stored (0: seq 1 is missing).
    async fn contiguous_prefix(&self, p: i32, max: i64) -> Result<i64, Error> {
        let sql = format!(
            "SELECT uniqExact(seq) FROM {EVENTS_TABLE} \
             WHERE chain_partition = ? AND seq >= 1 AND seq <= ?"
        );
        // Invariant: prefix(lo) holds, prefix(hi + 1) does not (or hi = max).
        let (mut lo, mut hi) = (0i64, max);
        while lo < hi {
            let mid = lo + (hi - lo + 1) / 2;
            let n: u64 = self
                .client
                .query(&sql)
                .bind(p)
                .bind(mid)
                .fetch_one()
                .await
                .map_err(|e| {
                    Error::ch(
                        format!("counting the stored seqs 1..={mid} of partition {p}"),
                        e,
                    )
                })?;
            if n == mid as u64 {
                lo = mid;
            } else {
                hi = mid - 1;
            }
        }
        Ok(lo)
    }

    /// Stored hashes of the given seqs of partition `p` (every stored copy).
    pub async fn stored_hashes(
        &self,
        p: i32,
        seqs: &[i64],
    ) -> Result<HashMap<i64, Vec<String>>, Error> {
        let mut all = self.stored_hashes_of(&[(p, seqs.to_vec())]).await?;
        Ok(all.remove(&p).unwrap_or_default())
    }

    /// [`Store::stored_hashes`] of several partitions in one query: partition → seq → hashes.
    pub async fn stored_hashes_of(
        &self,
        wanted: &[(i32, Vec<i64>)],
    ) -> Result<HashMap<i32, HashMap<i64, Vec<String>>>, Error> {
        let mut out: HashMap<i32, HashMap<i64, Vec<String>>> = HashMap::new();
        // Each clause reads one index range (the table is ordered by (chain_partition, seq)).
        let clauses: Vec<String> = wanted
            .iter()
            .filter(|(_, seqs)| !seqs.is_empty())
            .map(|(p, seqs)| format!("(chain_partition = {p} AND seq IN ({}))", int_list(seqs)))
            .collect();
        if clauses.is_empty() {
            return Ok(out);
        }
        let sql = format!(
            "SELECT chain_partition, seq, hash FROM {EVENTS_TABLE} WHERE {}",
            clauses.join(" OR ")
        );
        let rows: Vec<PartSeqHash> = self.client.query(&sql).fetch_all().await.map_err(|e| {
            let n: usize = wanted.iter().map(|(_, s)| s.len()).sum();
            Error::ch(
                format!(
                    "reading stored hashes of partitions {:?} ({n} seqs)",
                    wanted.iter().map(|(p, _)| *p).collect::<Vec<_>>()
                ),
                e,
            )
        })?;
        for r in rows {
            out.entry(r.chain_partition)
                .or_default()
                .entry(r.seq)
                .or_default()
                .push(r.hash);
        }
        Ok(out)
    }

    /// One `INSERT … FORMAT RowBinary` of `rows`. Atomic only when the rows share one table
    /// partition (one month, [`crate::batch::month_runs`]) and stay below the server's
    /// `max_insert_block_size`; otherwise ClickHouse writes one part per partition and block,
    /// and a failure can leave some of them stored.
    pub async fn insert_events(&self, rows: &[&Entry]) -> Result<(), Error> {
        if rows.is_empty() {
            return Ok(());
        }
        let layout = self.row_layout().await?;
        let what = || format!("inserting {} rows into {EVENTS_TABLE}", rows.len());
        let mut insert = self
            .client
            .insert_formatted_with(format!(
                "INSERT INTO `{EVENTS_TABLE}`({}) FORMAT RowBinary",
                layout.column_list()
            ))
            .buffered_with_capacity(INSERT_BUFFER);
        for row in rows {
            let mut rest: &[u8] = &row.bytes;
            while !rest.is_empty() {
                let n = insert.write(rest).await.map_err(|e| Error::ch(what(), e))?;
                rest = &rest[n..];
            }
        }
        insert.end().await.map_err(|e| Error::ch(what(), e))
    }

    /// Fork alarms already recorded for these seqs of `p`: (seq, offered hash).
    pub async fn recorded_forks(
        &self,
        p: i32,
        seqs: &[i64],
    ) -> Result<HashSet<(i64, String)>, Error> {
        if seqs.is_empty() {
            return Ok(HashSet::new());
        }
        let sql = format!(
            "SELECT seq, offered_hash AS hash FROM {FORKS_TABLE} WHERE chain_partition = ? AND seq IN ({})",
            int_list(seqs)
        );
        let rows: Vec<SeqHash> = self
            .client
            .query(&sql)
            .bind(p)
            .fetch_all()
            .await
            .map_err(|e| Error::ch(format!("reading recorded forks of partition {p}"), e))?;
        Ok(rows.into_iter().map(|r| (r.seq, r.hash)).collect())
    }

    pub async fn insert_forks(&self, rows: &[ForkRow]) -> Result<(), Error> {
        if rows.is_empty() {
            return Ok(());
        }
        let what = || format!("inserting {} rows into {FORKS_TABLE}", rows.len());
        let mut insert = self
            .client
            .insert::<ForkRow>(FORKS_TABLE)
            .await
            .map_err(|e| Error::ch(what(), e))?;
        for row in rows {
            insert.write(row).await.map_err(|e| Error::ch(what(), e))?;
        }
        insert.end().await.map_err(|e| Error::ch(what(), e))
    }

    /// Whether this checkpoint is stored already: same (partition, seq, key) **and** signing
    /// time. A heartbeat re-signs the same seq with a fresh time, and must be stored too (it
    /// is what tells a verifier the partition was alive then); a redelivered record has the
    /// same time and is not stored twice.
    pub async fn checkpoint_exists(&self, row: &CheckpointRow) -> Result<bool, Error> {
        let sql = format!(
            "SELECT count() FROM {CHECKPOINTS_TABLE} WHERE chain_partition = ? AND seq = ? AND key_id = ? AND time_us = ?"
        );
        let n: u64 = self
            .client
            .query(&sql)
            .bind(row.chain_partition)
            .bind(row.seq)
            .bind(&row.key_id)
            .bind(row.time_us)
            .fetch_one()
            .await
            .map_err(|e| {
                Error::ch(
                    format!(
                        "looking up checkpoint p{} seq {} key {}",
                        row.chain_partition, row.seq, row.key_id
                    ),
                    e,
                )
            })?;
        Ok(n > 0)
    }

    pub async fn insert_checkpoint(&self, row: &CheckpointRow) -> Result<(), Error> {
        let what = || {
            format!(
                "inserting checkpoint p{} seq {} key {}",
                row.chain_partition, row.seq, row.key_id
            )
        };
        let mut insert = self
            .client
            .insert::<CheckpointRow>(CHECKPOINTS_TABLE)
            .await
            .map_err(|e| Error::ch(what(), e))?;
        insert.write(row).await.map_err(|e| Error::ch(what(), e))?;
        insert.end().await.map_err(|e| Error::ch(what(), e))
    }

    /// Reads `audit_events` rows back (tests, tools): `where_order` is appended to the select.
    pub async fn fetch_events(&self, where_order: &str) -> Result<Vec<AuditRow>, Error> {
        let sql = format!("{} {where_order}", AuditRow::select_sql(EVENTS_TABLE));
        self.client
            .query(&sql)
            .fetch_all()
            .await
            .map_err(|e| Error::ch(format!("reading {EVENTS_TABLE} {where_order}"), e))
    }
}

/// `1, 2, 3` (integers only, so nothing to escape).
fn int_list(v: &[i64]) -> String {
    let mut s = String::with_capacity(v.len() * 8);
    for (i, x) in v.iter().enumerate() {
        if i > 0 {
            s.push_str(", ");
        }
        s.push_str(&x.to_string());
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_versions() {
        let v = ServerVersion::parse("18.16.1").expect("v");
        assert_eq!((v.major, v.minor), (18, 16));
        assert!(!v.supports(VALIDATION_MIN_VERSION));
        assert!(ServerVersion::parse("25.3.2.39")
            .expect("v")
            .supports((21, 8)));
        assert!(ServerVersion::parse("x").is_err());
    }

    #[test]
    fn identifiers() {
        assert!(check_identifier("audit").is_ok());
        assert!(check_identifier("audit_t_01").is_ok());
        assert!(check_identifier("a; DROP").is_err());
        assert!(check_identifier("1x").is_err());
        assert!(check_identifier("").is_err());
    }

    #[test]
    fn row_column_order_matches_the_shared_definition() {
        use clickhouse::Row;
        assert_eq!(AuditRow::COLUMN_NAMES, AuditRow::COLUMNS);
        assert_eq!(CheckpointRow::COLUMN_NAMES, CheckpointRow::COLUMNS);
    }
}
