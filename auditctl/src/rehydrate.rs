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
//! A rehydrated row has `chained_offset = -1`: it was not read from Kafka. That column is sink
//! bookkeeping (where to resume); a sink resuming at such a row starts from the beginning of
//! the retained topic and skips what is stored, so it can re-read but never skip a record.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;

use clap::{Args, Parser};
use schemas::flat::AuditRow;
use serde::{Deserialize, Serialize};

use crate::archive::ArchiveStore;
use crate::cli::{ArchiveStoreArgs, ClickHouseArgs, Command};
use crate::error::Error;
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
    #[command(flatten)]
    pub clickhouse: ClickHouseArgs,
    #[command(flatten)]
    pub archive: ArchiveStoreArgs,
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
    for chunk in missing.chunks(batch) {
        let mut ins = client
            .insert::<AuditRow>("audit_events")
            .await
            .map_err(Error::ch("starting an insert into audit_events"))?;
        for e in chunk {
            ins.write(&AuditRow::from_chained(e, -1))
                .await
                .map_err(Error::ch(format!("inserting seq {}", e.seq)))?;
        }
        ins.end()
            .await
            .map_err(Error::ch("finishing an insert into audit_events"))?;
        inserted += chunk.len() as u64;
        if let Some(b) = &bar {
            b.inc(chunk.len() as u64);
        }
    }
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    let summary = Summary {
        partition: args.partition,
        first_seq: first,
        last_seq: summary_last,
        archived: events.len() as u64,
        present,
        inserted,
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
    Ok(Outcome::Ok)
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
}
