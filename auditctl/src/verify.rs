//! `auditctl verify`: read a store, feed `schemas::verify`, print the report.

use std::collections::BTreeSet;
use std::io::{IsTerminal, Write};
use std::path::Path;

use schemas::checkpoint::KeySet;
use schemas::verify::{Finding, FindingKind, Report};
use serde::Serialize;

use crate::archive::ArchiveStore;
use crate::cli::{SourceKind, VerifyArgs};
use crate::clickhouse::ClickHouseStore;
use crate::collect::{finding, CollectOptions, Collector, StoredHash};
use crate::error::Error;
use crate::reads::Reads;
use crate::Outcome;

/// `--source both`: does each (partition, seq) present in both stores have the same hash?
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CrossCheck {
    /// (partition, seq) pairs present in both stores and compared.
    pub compared: u64,
    /// Present only in ClickHouse (normal for the newest records: the archive writes segments
    /// periodically).
    pub only_clickhouse: u64,
    /// Present only in the archive.
    pub only_archive: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_disagreement: Option<Disagreement>,
    /// `store_disagreement` findings: the first differing hash (as above), and every partition
    /// present in one store (records or checkpoints) and absent from the other. A partition
    /// deleted whole from one store leaves that store's own report clean (nothing of it is
    /// left to check), so only the other store can tell.
    pub findings: Vec<Finding>,
    pub ok: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Disagreement {
    pub partition: i32,
    pub seq: i64,
    pub clickhouse_hash: String,
    pub archive_hash: String,
}

/// `--json` output of `--source both`.
#[derive(Debug, Clone, Serialize)]
pub struct BothReport {
    pub ok: bool,
    pub clickhouse: Report,
    pub archive: Report,
    pub cross_check: CrossCheck,
}

pub fn load_keys(path: &Path) -> Result<KeySet, Error> {
    KeySet::load(path).map_err(|e| Error::KeySet {
        path: path.to_owned(),
        reason: e.to_string(),
    })
}

fn reads(args: &VerifyArgs) -> Reads {
    Reads::new(args.reads.retry_attempts)
}

/// Progress only for a person watching: never with --json (machines), --quiet, or when
/// stderr is not a terminal (CI logs, redirects).
pub fn show_progress(args: &VerifyArgs, stderr_is_terminal: bool) -> bool {
    stderr_is_terminal && !args.quiet && !args.json
}

fn collect_options(
    args: &VerifyArgs,
    label: &'static str,
    keep_hashes: bool,
) -> Result<CollectOptions, Error> {
    let (keys, check) = match &args.keys {
        Some(p) => (load_keys(p)?, true),
        None => (KeySet::default(), false),
    };
    Ok(CollectOptions {
        keys,
        check_checkpoints: check,
        chain_id: args.chain_id.clone(),
        clock_skew_us: i64::try_from(args.clock_skew_ms.saturating_mul(1000)).unwrap_or(i64::MAX),
        max_findings: args.max_findings.max(1),
        partitions: args.partitions.iter().copied().collect(),
        keep_hashes,
        progress: show_progress(args, std::io::stderr().is_terminal()),
        label,
    })
}

pub async fn verify_clickhouse(
    args: &VerifyArgs,
    keep_hashes: bool,
) -> Result<(Report, Vec<StoredHash>), Error> {
    let store = ClickHouseStore::new(&args.clickhouse, reads(args))?;
    let opts = collect_options(args, "clickhouse", keep_hashes)?;
    let parts: Vec<u32> = opts.partitions.iter().copied().collect();
    let (cps, bad) = if opts.check_checkpoints {
        store.checkpoints(&parts).await?
    } else {
        (Vec::new(), Vec::new())
    };
    let mut c = Collector::new(opts, cps);
    for f in bad {
        c.add_finding(f);
    }
    store.stream_into(&parts, args.window, &mut c).await?;
    for f in store.forks(&parts).await? {
        c.add_finding(f);
    }
    Ok(c.finish())
}

pub async fn verify_archive(
    args: &VerifyArgs,
    keep_hashes: bool,
) -> Result<(Report, Vec<StoredHash>), Error> {
    let store = ArchiveStore::open(&args.archive, reads(args))?;
    let opts = collect_options(args, "archive", keep_hashes)?;
    let parts: BTreeSet<u32> = opts.partitions.clone();
    let check = opts.check_checkpoints;
    let (cps, bad) = if check {
        store.checkpoints(&parts).await?
    } else {
        (Vec::new(), Vec::new())
    };
    let mut c = Collector::new(opts, cps);
    for f in bad {
        c.add_finding(f);
    }
    store.stream_into(&parts, &mut c).await?;
    Ok(c.finish())
}

/// Merge-walk the two sorted lists of stored hashes, and compare which partitions each store
/// holds at all.
pub fn cross_check(
    ch_report: &Report,
    ar_report: &Report,
    ch: Vec<StoredHash>,
    ar: Vec<StoredHash>,
) -> CrossCheck {
    let mut out = cross_check_hashes(ch, ar);
    if let Some(d) = &out.first_disagreement {
        out.findings.push(finding(
            d.partition,
            d.seq,
            FindingKind::StoreDisagreement,
            None,
            format!(
                "clickhouse holds hash {}, archive holds {}",
                d.clickhouse_hash, d.archive_hash
            ),
        ));
    }
    let parts =
        |r: &Report| -> BTreeSet<i32> { r.partitions.iter().map(|p| p.partition).collect() };
    let (cp, ap) = (parts(ch_report), parts(ar_report));
    for (p, here, there) in cp
        .difference(&ap)
        .map(|p| (*p, "clickhouse", "archive"))
        .chain(ap.difference(&cp).map(|p| (*p, "archive", "clickhouse")))
    {
        out.findings.push(finding(
            p,
            0,
            FindingKind::StoreDisagreement,
            None,
            format!(
                "partition {p} is in the {here} (records or checkpoints) but absent from the {there}: deleted whole from the {there}?"
            ),
        ));
    }
    out.findings.sort_by_key(|f| (f.partition, f.seq));
    out.ok = out.findings.is_empty();
    out
}

fn cross_check_hashes(mut ch: Vec<StoredHash>, mut ar: Vec<StoredHash>) -> CrossCheck {
    let key = |h: &StoredHash| (h.0, h.1);
    ch.sort_by_key(key);
    ch.dedup_by_key(|h| key(h));
    ar.sort_by_key(key);
    ar.dedup_by_key(|h| key(h));
    let mut out = CrossCheck {
        compared: 0,
        only_clickhouse: 0,
        only_archive: 0,
        first_disagreement: None,
        findings: Vec::new(),
        ok: true,
    };
    let (mut i, mut j) = (0, 0);
    while i < ch.len() || j < ar.len() {
        match (ch.get(i), ar.get(j)) {
            (Some(a), Some(b)) if key(a) == key(b) => {
                out.compared += 1;
                if a.2 != b.2 && out.first_disagreement.is_none() {
                    out.first_disagreement = Some(Disagreement {
                        partition: a.0,
                        seq: a.1,
                        clickhouse_hash: hex::encode(&a.2),
                        archive_hash: hex::encode(&b.2),
                    });
                    out.ok = false;
                }
                i += 1;
                j += 1;
            }
            (Some(a), Some(b)) if key(a) < key(b) => {
                out.only_clickhouse += 1;
                i += 1;
            }
            (Some(_), None) => {
                out.only_clickhouse += 1;
                i += 1;
            }
            _ => {
                out.only_archive += 1;
                j += 1;
            }
        }
    }
    out
}

/// The snake_case name of a finding kind, as in the JSON report.
pub fn kind_name(k: FindingKind) -> String {
    serde_json::to_value(k)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_else(|| format!("{k:?}"))
}

/// The human summary of one store's report.
pub fn write_human(out: &mut dyn Write, title: &str, r: &Report) -> std::io::Result<()> {
    writeln!(out, "{title}:")?;
    if r.partitions.is_empty() {
        writeln!(out, "  no records and no checkpoints found")?;
    }
    for p in &r.partitions {
        let range = match (p.first_seq, p.last_seq) {
            (Some(a), Some(b)) => format!("seq {a}..={b}"),
            _ => "no records".to_owned(),
        };
        let sealed = p
            .sealed_through
            .map_or_else(String::new, |s| format!(", sealed through seq {s}"));
        write!(
            out,
            "  partition {}: {range}, {} records, head seq {} {}{sealed}: ",
            p.partition, p.events, p.head_seq, p.head
        )?;
        let errors: Vec<_> = p
            .findings
            .iter()
            .filter(|f| f.severity == schemas::verify::Severity::Error)
            .collect();
        if p.ok {
            let warnings = p.findings.len();
            if warnings > 0 {
                let plural = if warnings == 1 { "" } else { "s" };
                writeln!(out, "OK ({warnings} warning{plural})")?;
            } else {
                writeln!(out, "OK")?;
            }
        } else {
            let total = p.findings.len() as u64 + p.findings_dropped;
            let plural = if total == 1 { "" } else { "s" };
            writeln!(out, "FAILED ({total} finding{plural})")?;
            if let Some(f) = errors.first() {
                writeln!(
                    out,
                    "    partition {} seq {}: {}: {}",
                    f.partition,
                    f.seq,
                    kind_name(f.kind),
                    f.detail
                )?;
            }
            if total > 1 {
                writeln!(out, "    ({} more; --json lists them all)", total - 1)?;
            }
        }
    }
    Ok(())
}

fn summary(out: &mut dyn Write, ok: bool, reports: &[&Report]) -> std::io::Result<()> {
    let parts: usize = reports.iter().map(|r| r.partitions.len()).sum();
    let events: u64 = reports
        .iter()
        .flat_map(|r| &r.partitions)
        .map(|p| p.events)
        .sum();
    let bad: usize = reports
        .iter()
        .flat_map(|r| &r.partitions)
        .filter(|p| !p.ok)
        .count();
    if ok {
        writeln!(
            out,
            "result: OK ({parts} partitions, {events} records verified)"
        )
    } else {
        writeln!(
            out,
            "result: INTEGRITY FINDINGS ({bad} of {parts} partitions failed, {events} records read)"
        )
    }
}

fn io(e: std::io::Error) -> Error {
    Error::file("writing output to", "<stdout>")(e)
}

pub async fn run(args: &VerifyArgs, out: &mut dyn Write) -> Result<Outcome, Error> {
    let unsealed = args.keys.is_none();
    if unsealed {
        eprintln!(
            "auditctl: warning: no --keys given: no signature is checked, so a consistent rewrite or a truncated tail cannot be detected{}",
            if args.no_signatures {
                ""
            } else {
                " (exit 4, unsealed; --no-signatures accepts this)"
            }
        );
    }
    let ok = match args.source {
        SourceKind::Clickhouse => {
            let (r, _) = verify_clickhouse(args, false).await?;
            if args.json {
                serde_json::to_writer_pretty(&mut *out, &r).map_err(|e| io(e.into()))?;
                writeln!(out).map_err(io)?;
            } else {
                let title = format!(
                    "clickhouse ({})",
                    ClickHouseStore::new(&args.clickhouse, reads(args))?.describe()
                );
                write_human(out, &title, &r).map_err(io)?;
                summary(out, r.ok, &[&r]).map_err(io)?;
            }
            r.ok
        }
        SourceKind::Archive => {
            let (r, _) = verify_archive(args, false).await?;
            if args.json {
                serde_json::to_writer_pretty(&mut *out, &r).map_err(|e| io(e.into()))?;
                writeln!(out).map_err(io)?;
            } else {
                let title = format!(
                    "archive ({})",
                    ArchiveStore::open(&args.archive, reads(args))?.describe()
                );
                write_human(out, &title, &r).map_err(io)?;
                summary(out, r.ok, &[&r]).map_err(io)?;
            }
            r.ok
        }
        SourceKind::Both => {
            // Both configurations are checked before reading anything.
            ArchiveStore::open(&args.archive, reads(args))?;
            let (ch, ch_h) = verify_clickhouse(args, true).await?;
            let (ar, ar_h) = verify_archive(args, true).await?;
            let x = cross_check(&ch, &ar, ch_h, ar_h);
            let ok = ch.ok && ar.ok && x.ok;
            if args.json {
                let both = BothReport {
                    ok,
                    clickhouse: ch,
                    archive: ar,
                    cross_check: x,
                };
                serde_json::to_writer_pretty(&mut *out, &both).map_err(|e| io(e.into()))?;
                writeln!(out).map_err(io)?;
            } else {
                write_human(out, "clickhouse", &ch).map_err(io)?;
                write_human(out, "archive", &ar).map_err(io)?;
                write!(
                    out,
                    "cross-check: {} seqs in both stores, {} only in clickhouse, {} only in archive: ",
                    x.compared, x.only_clickhouse, x.only_archive
                )
                .map_err(io)?;
                if x.findings.is_empty() {
                    writeln!(out, "OK").map_err(io)?;
                } else {
                    writeln!(out, "FAILED").map_err(io)?;
                    for f in &x.findings {
                        writeln!(
                            out,
                            "    partition {} seq {}: {}: {}",
                            f.partition,
                            f.seq,
                            kind_name(f.kind),
                            f.detail
                        )
                        .map_err(io)?;
                    }
                }
                summary(out, ok, &[&ch, &ar]).map_err(io)?;
            }
            ok
        }
    };
    if !ok {
        return Ok(Outcome::Findings);
    }
    if unsealed && !args.no_signatures {
        if !args.json {
            writeln!(
                out,
                "unsealed: no --keys given, so no signature was checked (exit 4; --no-signatures accepts this)"
            )
            .map_err(io)?;
        }
        return Ok(Outcome::Unsealed);
    }
    Ok(Outcome::Ok)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command};
    use clap::Parser;

    fn verify_args(extra: &[&str]) -> VerifyArgs {
        let argv = ["auditctl", "verify"]
            .into_iter()
            .chain(extra.iter().copied());
        match Cli::parse_from(argv).command {
            Command::Verify(a) => a,
            other => panic!("not verify: {other:?}"),
        }
    }

    #[test]
    fn progress_only_for_a_terminal_without_json_or_quiet() {
        assert!(show_progress(&verify_args(&[]), true));
        assert!(!show_progress(&verify_args(&[]), false));
        assert!(!show_progress(&verify_args(&["--json"]), true));
        assert!(!show_progress(&verify_args(&["--quiet"]), true));
    }
}
