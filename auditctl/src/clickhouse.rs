//! Reading the chain back from ClickHouse: `audit_events` rows (see `schemas::flat::AuditRow`)
//! streamed in (chain_partition, seq) order, and `audit_checkpoints`.
//!
//! The server here is 18.16, which lacks `RowBinaryWithNamesAndTypes`: the client runs with
//! validation off, i.e. plain `RowBinary` with the column list from `AuditRow::COLUMNS`, which
//! is the struct's field order (one definition shared with the sink).

use clickhouse::Client;
use futures::StreamExt;
use integrity::verify::FindingKind;
use schemas::flat::{AuditRow, CheckpointRow};
use schemas::Checkpoint;
use serde::Deserialize;

use crate::cli::ClickHouseArgs;
use std::collections::VecDeque;

use crate::archive::AbortOnDrop;
use crate::collect::{finding, Collector, Prepared};
use crate::error::Error;
use crate::reads::Reads;

#[derive(Debug, Clone)]
pub struct ClickHouseStore {
    client: Client,
    url: String,
    database: String,
    events: String,
    checkpoints: String,
    forks: String,
    reads: Reads,
}

/// Table names are interpolated into SQL: only plain identifiers are accepted.
fn identifier(what: &str, s: &str) -> Result<String, Error> {
    let ok = !s.is_empty()
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !s.starts_with(|c: char| c.is_ascii_digit());
    if ok {
        Ok(s.to_owned())
    } else {
        Err(Error::Usage(format!(
            "{what} {s:?} is not a plain identifier"
        )))
    }
}

fn in_list(partitions: &[u32]) -> String {
    if partitions.is_empty() {
        String::new()
    } else {
        let list: Vec<String> = partitions.iter().map(u32::to_string).collect();
        format!(" WHERE chain_partition IN ({})", list.join(", "))
    }
}

#[derive(Debug, clickhouse::Row, Deserialize)]
struct PartitionRows {
    chain_partition: i32,
    n: u64,
    lo: i64,
}

/// A row of the sink's `audit_forks` (migration 0003), minus the offered payload.
#[derive(Debug, clickhouse::Row, Deserialize)]
struct ForkRow {
    chain_partition: i32,
    seq: i64,
    stored_hash: String,
    offered_hash: String,
    offered_chained_offset: i64,
    /// `DateTime` is seconds since the epoch in RowBinary.
    detected_at: u32,
}

#[derive(Debug, clickhouse::Row, Deserialize)]
struct Located {
    chain_partition: i32,
    seq: i64,
}

impl ClickHouseStore {
    pub fn new(args: &ClickHouseArgs, reads: Reads) -> Result<Self, Error> {
        let database = identifier("--clickhouse-database", &args.clickhouse_database)?;
        let events = identifier("--events-table", &args.events_table)?;
        let checkpoints = identifier("--checkpoints-table", &args.checkpoints_table)?;
        let forks = identifier("--forks-table", &args.forks_table)?;
        if !(args.clickhouse_url.starts_with("http://")
            || args.clickhouse_url.starts_with("https://"))
        {
            return Err(Error::Usage(format!(
                "--clickhouse-url {:?} must be an http:// or https:// URL",
                args.clickhouse_url
            )));
        }
        let mut client = Client::default()
            .with_url(&args.clickhouse_url)
            .with_database(&database)
            .with_user(&args.clickhouse_user)
            // ClickHouse 18.16 has no RowBinaryWithNamesAndTypes (see design.md).
            .with_validation(false);
        if let Some(pw) = args.clickhouse_password.as_ref().filter(|p| !p.is_empty()) {
            client = client.with_password(pw.expose());
        }
        Ok(Self {
            client,
            url: args.clickhouse_url.clone(),
            database,
            events,
            checkpoints,
            forks,
            reads,
        })
    }

    /// One whole query, retried on transient errors (each attempt reads every row again).
    async fn fetch_all<T>(&self, sql: &str, doing: String) -> Result<Vec<T>, Error>
    where
        T: clickhouse::RowOwned + clickhouse::RowRead,
    {
        self.reads
            .run(&doing, || {
                let (client, doing) = (&self.client, &doing);
                async move {
                    client
                        .query(sql)
                        .fetch_all::<T>()
                        .await
                        .map_err(Error::ch(doing.clone()))
                }
            })
            .await
    }

    /// Forks the sink recorded (a later copy of a stored (partition, seq) with a different
    /// hash, refused and kept aside in `audit_forks`), one `fork` finding each. A database
    /// without the table (older than the sink's migration 0003) gives a warning on stderr.
    pub async fn forks(
        &self,
        partitions: &[u32],
    ) -> Result<Vec<integrity::verify::Finding>, Error> {
        let exists: Vec<u64> = self
            .fetch_all(
                &format!(
                    "SELECT count() FROM system.tables WHERE database = '{}' AND name = '{}'",
                    self.database, self.forks
                ),
                format!("looking for table {}.{}", self.database, self.forks),
            )
            .await?;
        if exists.first().copied().unwrap_or(0) == 0 {
            eprintln!(
                "auditctl: warning: ClickHouse table {}.{} does not exist: forks the sink refused cannot be reported (is the sink's migration 0003 applied?)",
                self.database, self.forks
            );
            return Ok(Vec::new());
        }
        let sql = format!(
            "SELECT chain_partition, seq, stored_hash, offered_hash, offered_chained_offset, detected_at FROM {}{} ORDER BY chain_partition, seq, detected_at",
            self.forks,
            in_list(partitions)
        );
        let rows: Vec<ForkRow> = self
            .fetch_all(&sql, format!("reading {}.{}", self.database, self.forks))
            .await?;
        Ok(rows
            .into_iter()
            .map(|r| {
                let when = time::OffsetDateTime::from_unix_timestamp(i64::from(r.detected_at))
                    .ok()
                    .and_then(|t| {
                        t.format(&time::format_description::well_known::Rfc3339)
                            .ok()
                    })
                    .unwrap_or_else(|| r.detected_at.to_string());
                finding(
                    r.chain_partition,
                    r.seq,
                    FindingKind::Fork,
                    None,
                    format!(
                        "the ClickHouse sink was offered a different copy of this record (audit.chained offset {}, at {when}) and kept the stored one: stored hash {}, offered hash {} (two chainer instances disagreed; the offered copy is in {}.{})",
                        r.offered_chained_offset,
                        short_hex(&r.stored_hash),
                        short_hex(&r.offered_hash),
                        self.database,
                        self.forks
                    ),
                )
            })
            .collect())
    }

    pub fn describe(&self) -> String {
        format!("{} database {}", self.url, self.database)
    }

    /// Every checkpoint row of these partitions (all if empty). Rows that cannot be read back
    /// into a checkpoint become findings in `collector_findings`.
    pub async fn checkpoints(
        &self,
        partitions: &[u32],
    ) -> Result<(Vec<Checkpoint>, Vec<integrity::verify::Finding>), Error> {
        let sql = format!(
            "{}{} ORDER BY chain_partition, seq",
            CheckpointRow::select_sql(&self.checkpoints),
            in_list(partitions)
        );
        let rows: Vec<CheckpointRow> = self
            .fetch_all(
                &sql,
                format!("reading {}.{}", self.database, self.checkpoints),
            )
            .await?;
        let mut cps = Vec::with_capacity(rows.len());
        let mut bad = Vec::new();
        for row in rows {
            match row.to_checkpoint() {
                Ok(cp) => cps.push(cp),
                Err(e) => bad.push(finding(
                    row.chain_partition,
                    row.seq,
                    FindingKind::MalformedCheckpoint,
                    None,
                    format!("checkpoint row (key {:?}) unreadable: {e}", row.key_id),
                )),
            }
        }
        Ok((cps, bad))
    }

    /// Stream every event row of these partitions (all if empty) into the collector, in
    /// (chain_partition, seq) order.
    ///
    /// Read per partition in windows of `window` seqs, one query each: ClickHouse 18.16 cannot
    /// read a MergeTree in key order without sorting, so one `ORDER BY` over the whole table
    /// would sort it all in server memory. A window (`seq >= lo AND seq <= hi`) is a primary-key
    /// range: each read touches only its granules and is retried whole on a transient error.
    /// An empty window is followed by a keyset jump (`min(seq)` of `seq > hi`) to the next
    /// stored row, so the number of queries is bounded by the rows, not by the seq span: one
    /// row inserted at a seq near `i64::MAX` costs two queries, not 10^15 empty windows.
    pub async fn stream_into(
        &self,
        partitions: &[u32],
        window: i64,
        c: &mut Collector,
        workers: usize,
    ) -> Result<bool, Error> {
        let window = window.max(1);
        let sql = format!(
            "SELECT chain_partition, count() AS n, min(seq) AS lo FROM {}{} GROUP BY chain_partition ORDER BY chain_partition",
            self.events,
            in_list(partitions)
        );
        let parts: Vec<PartitionRows> = self
            .fetch_all(
                &sql,
                format!("counting the rows of {}.{}", self.database, self.events),
            )
            .await?;
        c.set_total(parts.iter().map(|r| r.n).sum());
        let workers = workers.min(parts.len());
        if workers <= 1 || parts.iter().any(|r| r.chain_partition < 0) {
            for r in parts {
                c.set_stage(&format!("partition {}", r.chain_partition));
                self.stream_partition(r.chain_partition, r.lo, window, c)
                    .await?;
            }
            return Ok(true);
        }
        // Partitions verified `workers` at a time, each into its own split of the collector,
        // joined in partition order (see `ArchiveStore::stream_into`).
        let jobs: Vec<(i32, i64, Collector)> = parts
            .iter()
            .map(|r| {
                (
                    r.chain_partition,
                    r.lo,
                    c.split(r.chain_partition.unsigned_abs()),
                )
            })
            .collect();
        let mut done = futures::stream::iter(jobs.into_iter().map(|(part, lo, mut sub)| {
            let store = self.clone();
            async move {
                let mut task = AbortOnDrop(tokio::spawn(async move {
                    sub.set_stage(&format!("partition {part}"));
                    store
                        .stream_partition(part, lo, window, &mut sub)
                        .await
                        .map(|()| sub)
                }));
                (&mut task.0)
                    .await
                    .map_err(|e| Error::Service(format!("partition verifier task failed: {e}")))?
            }
        }))
        .buffered(workers);
        while let Some(sub) = done.next().await {
            if !c.join(sub?) {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// The rows of partition `part` from seq `lo` on, into the collector, window by window.
    async fn stream_partition(
        &self,
        part: i32,
        lo: i64,
        window: i64,
        c: &mut Collector,
    ) -> Result<(), Error> {
        // Windows read ahead of the verifier: each its own task (query, then rows rebuilt
        // into canonical bytes on a blocking thread), fed in seq order. Ahead windows are
        // a guess that the next window holds rows; after an empty one they are dropped
        // (aborted) and reading resumes at the next stored seq, so every row is fed once.
        let mut next_lo = Some(lo);
        let mut ahead: VecDeque<(i64, WindowTask)> = VecDeque::new();
        loop {
            while ahead.len() <= WINDOWS_AHEAD {
                let Some(lo) = next_lo else { break };
                let hi = lo.saturating_add(window - 1);
                let task = tokio::spawn(self.clone().window(part, lo, hi));
                ahead.push_back((hi, AbortOnDrop(task)));
                next_lo = (hi < i64::MAX).then(|| hi + 1);
            }
            let Some((hi, mut task)) = ahead.pop_front() else {
                break;
            };
            let rows = (&mut task.0)
                .await
                .map_err(|e| Error::Service(format!("ClickHouse reader task failed: {e}")))??;
            for row in &rows {
                c.push_prepared(row);
            }
            c.sync_progress();
            if hi == i64::MAX || !rows.is_empty() {
                continue;
            }
            ahead.clear();
            // A gap of at least a window: jump to the next stored seq, if any.
            let sql = format!(
                "SELECT chain_partition, count() AS n, min(seq) AS lo FROM {} WHERE chain_partition = {part} AND seq > {hi} GROUP BY chain_partition",
                self.events
            );
            let doing = format!(
                "looking for rows of partition {part} after seq {hi} in {}.{}",
                self.database, self.events
            );
            let next: Vec<PartitionRows> = self.fetch_all(&sql, doing).await?;
            next_lo = match next.first() {
                Some(n) if n.n > 0 && n.lo > hi => Some(n.lo),
                _ => None,
            };
        }
        Ok(())
    }

    /// The rows of one window of a partition in seq order, rebuilt for the verifier (off the
    /// runtime: the re-encoding is most of the per-row work).
    ///
    /// The rows are rebuilt as they arrive, [`PREPARE_CHUNK`] at a time, into a vector sized
    /// for the window up front. Collecting the whole window's rows first (`fetch_all`: ~90
    /// columns, about 2 KB a row, 25,000 a window) grew a ~50 MB vector by doubling, and
    /// copying it and faulting in its fresh pages was a third of the verifier's samples.
    ///
    /// Sorted here, not by the server: for an `ORDER BY`, ClickHouse 18.16 sorts the whole
    /// window's rows (every column) in its memory, which doubled the server's time for a
    /// window (245 vs 130 ms for 25,000 rows of ~600 bytes), while each part is read in key
    /// order anyway. The sort is stable, so copies of one seq (a fork) stay in the server's
    /// order, which an `ORDER BY seq` left to the server too.
    async fn window(self, part: i32, lo: i64, hi: i64) -> Result<Vec<Prepared>, Error> {
        let sql = format!(
            "{} WHERE chain_partition = {part} AND seq >= {lo} AND seq <= {hi}",
            AuditRow::select_sql(&self.events),
        );
        let doing = format!(
            "reading partition {part} seq {lo}..={hi} of {}.{}",
            self.database, self.events
        );
        // One row per seq unless the sink recorded forks (kept elsewhere): the window's size.
        let expected = usize::try_from(hi.saturating_sub(lo).saturating_add(1))
            .unwrap_or(usize::MAX)
            .min(MAX_WINDOW_RESERVE);
        let mut prepared = self
            .reads
            .run(&doing, || {
                let (client, sql, doing) = (&self.client, &sql, &doing);
                async move {
                    let failed = |e: clickhouse::error::Error| Error::ch(doing.clone())(e);
                    let mut cursor = client.query(sql).fetch::<AuditRow>().map_err(failed)?;
                    let mut prepared: Vec<Prepared> = Vec::with_capacity(expected);
                    let mut rows: Vec<AuditRow> = Vec::with_capacity(PREPARE_CHUNK);
                    loop {
                        let row = cursor.next().await.map_err(failed)?;
                        let end = row.is_none();
                        rows.extend(row);
                        if rows.len() == PREPARE_CHUNK || (end && !rows.is_empty()) {
                            // The chunk's vector comes back empty, to be filled again.
                            let (done, emptied) = tokio::task::spawn_blocking(move || {
                                let done: Vec<Prepared> = rows.drain(..).map(prepare_row).collect();
                                (done, rows)
                            })
                            .await
                            .map_err(|e| {
                                Error::Service(format!("ClickHouse row decoder task failed: {e}"))
                            })?;
                            prepared.extend(done);
                            rows = emptied;
                        }
                        if end {
                            break;
                        }
                    }
                    Ok(prepared)
                }
            })
            .await?;
        if !prepared.is_sorted_by_key(Prepared::seq) {
            prepared.sort_by_key(Prepared::seq);
        }
        Ok(prepared)
    }

    /// Where the event with this id is stored: (partition, seq) of each copy.
    pub async fn locate(
        &self,
        event_id: &str,
        partition: Option<u32>,
    ) -> Result<Vec<(i32, i64)>, Error> {
        let filter = partition.map_or_else(String::new, |p| format!(" AND chain_partition = {p}"));
        let sql = format!(
            "SELECT chain_partition, seq FROM {} WHERE event_id = ?{filter} ORDER BY chain_partition, seq",
            self.events
        );
        let doing = format!("looking up event {event_id:?}");
        let rows: Vec<Located> = self
            .reads
            .run(&doing, || {
                let (client, sql, doing) = (&self.client, &sql, &doing);
                async move {
                    client
                        .query(sql)
                        .bind(event_id)
                        .fetch_all()
                        .await
                        .map_err(Error::ch(doing.clone()))
                }
            })
            .await?;
        let mut out: Vec<(i32, i64)> = rows
            .into_iter()
            .map(|r| (r.chain_partition, r.seq))
            .collect();
        out.dedup();
        Ok(out)
    }

    /// Rows of `partition` with `first ..= last`, in seq order.
    pub async fn range(
        &self,
        partition: u32,
        first: i64,
        last: i64,
    ) -> Result<Vec<AuditRow>, Error> {
        let sql = format!(
            "{} WHERE chain_partition = {partition} AND seq >= {first} AND seq <= {last} ORDER BY seq",
            AuditRow::select_sql(&self.events)
        );
        self.fetch_all(
            &sql,
            format!(
                "reading partition {partition} seq {first}..={last} of {}.{}",
                self.database, self.events
            ),
        )
        .await
    }
}

fn short_hex(h: &str) -> &str {
    h.get(..16).unwrap_or(h)
}

/// Rebuild the chained event from its row (moving its strings) and re-encode it; an
/// unreadable row is kept as one, to be reported.
pub fn prepare_row(row: AuditRow) -> Prepared {
    match row.into_chained() {
        Ok(ev) => Prepared::from_chained(ev),
        Err((e, row)) => Prepared::Unreadable {
            partition: row.chain_partition,
            seq: row.seq,
            prev_hash: hex::decode(&row.prev_hash).unwrap_or_default(),
            hash: hex::decode(&row.hash).unwrap_or_default(),
            event_id: row.event_id,
            why: format!("row cannot be read back into an event: {e}"),
        },
    }
}

/// A window being read: its rows, rebuilt.
type WindowTask = AbortOnDrop<Result<Vec<Prepared>, Error>>;

/// Windows read ahead of the one being verified (memory: this many plus one windows of rows).
const WINDOWS_AHEAD: usize = 1;
/// Rows rebuilt per blocking task while a window is read (~2 MB of rows).
const PREPARE_CHUNK: usize = 1024;
/// The most rows a window's vector is sized for up front (more still fit: it grows).
const MAX_WINDOW_RESERVE: usize = 1 << 20;
