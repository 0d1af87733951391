//! `auditctl rehydrate`: load a range of one partition back from the archive (the record)
//! into ClickHouse, e.g. after hot storage dropped old rows.
//!
//! 1. Verify first: the partition is verified in the archive exactly as `auditctl verify
//!    --source archive --partition P` would (hash chain from genesis, manifests, signed
//!    checkpoints with `--keys`); any other outcome than verified stops here, with its report.
//! 2. Read the range (`ArchiveStore::range`: segments checked against their manifests,
//!    overlapping copies must agree).
//! 3. Idempotent and resumable: the seqs of the range already in ClickHouse are read first; a
//!    stored row with the same hash is skipped, one with another hash is a fork (exit 1, nothing
//!    written); the rest is inserted in batches. A crash part-way leaves whole batches, and the
//!    next run skips them.
//!
//! 4. `--hold`: rows past their class's retention would be deleted again by the next merge on
//!    a server with TTL (sink-clickhouse's rules delete rows with `legal_hold = 0`). So the
//!    missing rows are inserted already flagged `legal_hold = 1`: each batch goes into a
//!    session's temporary table first, then `INSERT … SELECT …, 1` into the events table, so
//!    no row is ever stored unflagged (one block per batch: a crash leaves whole batches, all
//!    flagged). Then, as `auditctl hold on` would (`crate::hold`): S3 legal hold on the archive
//!    objects covering the range, the range's rows already there flagged too, and an
//!    `audit.legal_hold.set` event chained with the rows loaded
//!    (`audit.legal_hold.rehydrated_rows`). Running it again loads nothing, flags nothing new
//!    and records the hold again, like `hold on`.
//!
//! A rehydrated row has `chained_offset = -1`: it was not read from Kafka. That column is sink
//! bookkeeping (where to resume); a sink resuming at such a row starts from the beginning of
//! the retained topic and skips what is stored, so it can re-read but never skip a record.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;

use clap::{Args, Parser};
use schemas::flat::AuditRow;
use serde::{Deserialize, Serialize};

use worker_runtime::kafka::KafkaArgs;

use crate::archive::ArchiveStore;
use crate::cli::{ArchiveStoreArgs, ClickHouseArgs, Command, ReadArgs};
use crate::error::Error;
use crate::hold::{self, HoldAction, HoldArgs};
use crate::reads::Reads;
use crate::{query, verify, Cli, Outcome};

#[derive(Debug, Clone, Args)]
pub struct RehydrateArgs {
    /// The partition to load.
    #[arg(long)]
    pub partition: u32,
    /// Seq range `A..B` (inclusive; `A..` = to the end). Default: the whole partition.
    #[arg(long, value_parser = parse_range)]
    pub seq: Option<(i64, i64)>,
    /// Only events with an event time at or after this (UTC: `2024-06-01`,
    /// `2024-06-01 10:00:00`, `2024-06-01T10:00:00Z`); combines with --seq.
    #[arg(long, value_parser = parse_time_us)]
    pub from: Option<i64>,
    /// Only events with an event time before this (UTC, same forms).
    #[arg(long, value_parser = parse_time_us)]
    pub to: Option<i64>,
    /// Public key set (JSON): checkpoints must verify with it. Required unless
    /// --no-signatures.
    #[arg(long, env = "AUDIT_KEYSET")]
    pub keys: Option<PathBuf>,
    /// Load without checking signatures (the chain is still recomputed).
    #[arg(long, env = "AUDITCTL_NO_SIGNATURES")]
    pub no_signatures: bool,
    /// Rows per INSERT.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub batch: u64,
    /// Print the outcome as JSON.
    #[arg(long)]
    pub json: bool,
    /// Put what is loaded under legal hold, as `auditctl hold on` over the same selection:
    /// rows stored flagged `legal_hold = 1` (so TTL never deletes them), archive objects held,
    /// the hold chained. Needs --reason and an S3 archive with Object Lock.
    #[arg(long)]
    pub hold: bool,
    /// With --hold: why (recorded in the chained event).
    #[arg(long, requires = "hold")]
    pub reason: Option<String>,
    /// With --hold: the legal case or matter id (recorded in the chained event).
    #[arg(long = "case", requires = "hold")]
    pub case_id: Option<String>,
    /// With --hold: who holds (recorded in the event). Default: $USER.
    #[arg(long = "held-by", env = "AUDITCTL_HELD_BY")]
    pub held_by: Option<String>,
    /// With --hold: how long to wait for ClickHouse to apply the flag mutation (seconds).
    #[arg(long, default_value_t = 300)]
    pub clickhouse_mutation_timeout_secs: u64,
    #[command(flatten)]
    pub clickhouse: ClickHouseArgs,
    #[command(flatten)]
    pub archive: ArchiveStoreArgs,
    /// With --hold: where the hold is recorded (`<prefix>validated`).
    #[command(flatten)]
    pub kafka: KafkaArgs,
}

impl RehydrateArgs {
    /// The `hold on` that `--hold` runs after loading: the same partition, seqs and times.
    fn hold_args(&self) -> HoldArgs {
        HoldArgs {
            action: HoldAction::On,
            partition: Some(self.partition),
            seq: self.seq,
            query: Vec::new(),
            from: self.from,
            to: self.to,
            reason: self.reason.clone(),
            case_id: self.case_id.clone(),
            held_by: self.held_by.clone(),
            dry_run: false,
            check: false,
            json: self.json,
            reads: ReadArgs { retry_attempts: 5 },
            kafka: self.kafka.clone(),
            archive: self.archive.clone(),
            no_clickhouse: false,
            clickhouse_mutation_timeout_secs: self.clickhouse_mutation_timeout_secs,
            clickhouse: self.clickhouse.clone(),
        }
    }
}

/// `A..B`, `A..` or `A`.
pub fn parse_range(s: &str) -> Result<(i64, i64), String> {
    let num = |t: &str| {
        t.trim()
            .parse::<i64>()
            .ok()
            .filter(|v| *v >= 1)
            .ok_or_else(|| format!("{s:?}: seqs are integers >= 1"))
    };
    let (a, b) = match s.split_once("..") {
        Some((a, "")) => (num(a)?, i64::MAX),
        Some((a, b)) => (num(a)?, num(b.trim_start_matches('='))?),
        None => (num(s)?, num(s)?),
    };
    if a > b {
        return Err(format!("{s:?}: empty range"));
    }
    Ok((a, b))
}

/// A UTC time (the recipe parameter forms) as microseconds since the epoch.
pub fn parse_time_us(s: &str) -> Result<i64, String> {
    let text = sink_clickhouse::queries::utc_datetime(s)
        .ok_or_else(|| format!("{s:?}: expected YYYY-MM-DD[ hh:mm:ss] or RFC 3339 ...Z (UTC)"))?;
    let fmt = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second]");
    let t = time::PrimitiveDateTime::parse(&text, &fmt).map_err(|e| format!("{s:?}: {e}"))?;
    Ok(t.assume_utc().unix_timestamp() * 1_000_000)
}

/// What a run did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    pub partition: u32,
    pub first_seq: i64,
    pub last_seq: i64,
    /// Records of the range in the archive.
    pub archived: u64,
    /// Already in ClickHouse with the same hash (skipped).
    pub present: u64,
    pub inserted: u64,
    /// `--hold`: the hold's report (as `auditctl hold on --json` prints it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hold: Option<serde_json::Value>,
}

#[derive(Debug, clickhouse::Row, Deserialize)]
struct SeqHash {
    seq: i64,
    hash: String,
}

pub async fn run(args: &RehydrateArgs, out: &mut dyn Write) -> Result<Outcome, Error> {
    if args.keys.is_none() && !args.no_signatures {
        return Err(Error::Usage(
            "rehydrate verifies the archive first: give --keys (or --no-signatures)".into(),
        ));
    }
    if args.hold {
        // Refuse before loading anything: a held rehydrate must be able to record its hold.
        if args.reason.as_deref().is_none_or(|r| r.trim().is_empty()) {
            return Err(Error::Usage(
                "rehydrate --hold: say why (--reason; recorded in the chain)".into(),
            ));
        }
        crate::erase::who(args.held_by.as_deref(), "--held-by")?;
    }
    // 1. Verify the partition in the archive, with verify's own defaults for everything else.
    let partition = args.partition.to_string();
    let parsed = Cli::try_parse_from([
        "auditctl",
        "verify",
        "--source",
        "archive",
        "--partition",
        partition.as_str(),
        "--quiet",
    ])
    .map_err(|e| Error::Usage(format!("building the verification: {e}")))?;
    let Command::Verify(mut v) = parsed.command else {
        return Err(Error::Usage("building the verification".into()));
    };
    v.keys = args.keys.clone();
    v.no_signatures = args.no_signatures;
    v.json = args.json;
    v.archive = args.archive.clone();
    v.clickhouse = args.clickhouse.clone();
    let mut report = Vec::new();
    let verified = verify::run(&v, &mut report).await?;
    if verified != Outcome::Ok {
        out.write_all(&report)
            .map_err(Error::file("writing output to", "<stdout>"))?;
        eprintln!(
            "auditctl: the archive's partition {} does not verify: nothing loaded",
            args.partition
        );
        return Ok(verified);
    }

    // 2. The range from the archive.
    let (first, last) = args.seq.unwrap_or((1, i64::MAX));
    let archive = ArchiveStore::open(&args.archive, Reads::default())?;
    let in_time = |us: i64| args.from.is_none_or(|f| us >= f) && args.to.is_none_or(|t| us < t);
    let events: Vec<_> = archive
        .range(args.partition, first, last)
        .await?
        .into_iter()
        .filter(|e| in_time(e.event.event_time_us))
        .collect();
    let last_seen = events.last().map_or(first - 1, |e| e.seq);
    let summary_last = if last == i64::MAX { last_seen } else { last };

    // 3. What ClickHouse already holds.
    let client = query::client(&args.clickhouse)?;
    let stored: Vec<SeqHash> = client
        .query(
            "SELECT seq, hash FROM audit_events WHERE chain_partition = ? \
             AND seq >= ? AND seq <= ?",
        )
        .bind(args.partition)
        .bind(first)
        .bind(last)
        .fetch_all()
        .await
        .map_err(Error::ch(format!(
            "reading the stored seqs of partition {}",
            args.partition
        )))?;
    let mut stored_by_seq: BTreeMap<i64, Vec<String>> = BTreeMap::new();
    for r in stored {
        stored_by_seq.entry(r.seq).or_default().push(r.hash);
    }
    let mut missing = Vec::new();
    let mut present = 0u64;
    for e in &events {
        let hash = hex::encode(&e.hash);
        match stored_by_seq.get(&e.seq) {
            None => missing.push(e),
            Some(hs) if hs.iter().all(|h| *h == hash) => present += 1,
            Some(hs) => {
                let other = hs.iter().find(|h| **h != hash).cloned().unwrap_or_default();
                return Err(Error::Integrity(format!(
                    "partition {} seq {}: ClickHouse holds hash {other}, the verified archive {hash}: fork; nothing loaded (run `auditctl verify --source both`)",
                    args.partition, e.seq
                )));
            }
        }
    }
    let mut inserted = 0u64;
    let batch = usize::try_from(args.batch).unwrap_or(usize::MAX);
    // A progress bar on a terminal only (not in --json runs or pipes).
    let bar = (std::io::stderr().is_terminal() && !args.json).then(|| {
        let b = indicatif::ProgressBar::new(missing.len() as u64);
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "loading partition {msg} {bar:40} {human_pos}/{human_len} ({per_sec}, eta {eta})",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        b.set_message(args.partition.to_string());
        b
    });
    // --hold: a session of its own, for its temporary staging table.
    let held = args.hold.then(|| held_session(&client));
    for chunk in missing.chunks(batch) {
        match &held {
            None => insert_rows(&client, "audit_events", chunk).await?,
            Some(session) => insert_held(session, chunk).await?,
        }
        inserted += chunk.len() as u64;
        if let Some(b) = &bar {
            b.inc(chunk.len() as u64);
        }
    }
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    // 4. --hold: the archive objects and the rows already there, then the chained event.
    let mut hold_error = None;
    let mut hold_report = None;
    if args.hold {
        if events.is_empty() {
            return Err(Error::Usage(format!(
                "rehydrate --hold: the archive holds no event of partition {} in the range \
                 and times given: nothing loaded, nothing held",
                args.partition
            )));
        }
        let extra = [(hold::ATTR_REHYDRATED, inserted.to_string())];
        let (report, error) = hold::execute(&args.hold_args(), &extra).await?;
        hold_error = error;
        hold_report = Some(report);
    }
    let summary = Summary {
        partition: args.partition,
        first_seq: first,
        last_seq: summary_last,
        archived: events.len() as u64,
        present,
        inserted,
        hold: hold_report
            .as_ref()
            .map(serde_json::to_value)
            .transpose()
            .map_err(|e| Error::Usage(format!("serializing the hold report: {e}")))?,
    };
    let text = if args.json {
        serde_json::to_string_pretty(&summary)
            .map_err(|e| Error::Usage(format!("serializing the summary: {e}")))?
    } else {
        format!(
            "partition {} seq {}..={}: {} archived records verified, {} already in ClickHouse, {} loaded",
            summary.partition,
            summary.first_seq,
            summary.last_seq,
            summary.archived,
            summary.present,
            summary.inserted
        )
    };
    writeln!(out, "{text}").map_err(Error::file("writing output to", "<stdout>"))?;
    if let (Some(report), false) = (&hold_report, args.json) {
        hold::write_report(report, false, out)?;
    }
    match hold_error {
        Some(e) => Err(e),
        None => Ok(Outcome::Ok),
    }
}

/// One INSERT of `events` into `table`.
async fn insert_rows(
    client: &clickhouse::Client,
    table: &str,
    events: &[&schemas::ChainedEvent],
) -> Result<(), Error> {
    let mut ins = client
        .insert::<AuditRow>(table)
        .await
        .map_err(Error::ch(format!("starting an insert into {table}")))?;
    for e in events {
        ins.write(&AuditRow::from_chained(e, -1))
            .await
            .map_err(Error::ch(format!("inserting seq {} into {table}", e.seq)))?;
    }
    ins.end()
        .await
        .map_err(Error::ch(format!("finishing an insert into {table}")))
}

/// The temporary staging table of `rehydrate --hold` (one per session).
const STAGE: &str = "auditctl_rehydrate_stage";

/// The statement that copies the staged rows into the events table, flagged held.
pub fn held_insert_sql() -> String {
    let cols = <AuditRow as clickhouse::Row>::COLUMN_NAMES.join(", ");
    format!(
        "INSERT INTO audit_events ({cols}, {}) SELECT {cols}, 1 FROM {STAGE}",
        hold::HOLD_COLUMN
    )
}

/// `client` in a ClickHouse session of its own (for [`insert_held`]'s temporary table).
pub fn held_session(client: &clickhouse::Client) -> clickhouse::Client {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let session = format!("auditctl-rehydrate-{}-{nanos}", std::process::id());
    client.clone().with_setting("session_id", session)
}

/// Inserts `events` into the events table with `legal_hold = 1` from the start: staged in a
/// temporary table of `session` (AuditRow has no hold column and the table's default is 0),
/// then copied with one `INSERT … SELECT` (a single block: all of the batch or none of it).
pub async fn insert_held(
    session: &clickhouse::Client,
    events: &[&schemas::ChainedEvent],
) -> Result<(), Error> {
    let exec = |sql: String, doing: &'static str| async move {
        session
            .query(&sql)
            .execute()
            .await
            .map_err(Error::ch(doing))
    };
    exec(
        format!("DROP TEMPORARY TABLE IF EXISTS {STAGE}"),
        "dropping the staging table",
    )
    .await?;
    exec(
        format!("CREATE TEMPORARY TABLE {STAGE} AS audit_events"),
        "creating the staging table (a temporary copy of audit_events)",
    )
    .await?;
    insert_rows(session, STAGE, events).await?;
    exec(
        held_insert_sql(),
        "copying the staged rows into audit_events, held",
    )
    .await?;
    exec(
        format!("DROP TEMPORARY TABLE IF EXISTS {STAGE}"),
        "dropping the staging table",
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(parse_range("3..7"), Ok((3, 7)));
        assert_eq!(parse_range("3..=7"), Ok((3, 7)));
        assert_eq!(parse_range("3.."), Ok((3, i64::MAX)));
        assert_eq!(parse_range("5"), Ok((5, 5)));
        assert!(parse_range("7..3").is_err());
        assert!(parse_range("0..3").is_err());
        assert!(parse_range("a..b").is_err());
        assert_eq!(parse_time_us("2024-06-01"), Ok(1_717_200_000_000_000));
        assert_eq!(
            parse_time_us("2024-06-01T00:00:01Z"),
            Ok(1_717_200_001_000_000)
        );
        assert!(parse_time_us("June").is_err());
    }

    #[test]
    fn held_rows_are_copied_with_the_hold_flag_set() {
        let sql = held_insert_sql();
        let cols = <AuditRow as clickhouse::Row>::COLUMN_NAMES;
        assert!(sql.starts_with(&format!(
            "INSERT INTO audit_events ({}, legal_hold) SELECT {}, 1 FROM",
            cols.join(", "),
            cols.join(", ")
        )));
        assert!(!cols.contains(&"legal_hold"), "AuditRow has no hold column");
    }
}
