//! `auditctl verify`: read a store, feed `integrity::verify`, print the report.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};

use integrity::checkpoint::KeySet;
use integrity::pin::Pin;
use integrity::verify::{Finding, FindingKind, Report};
use serde::Serialize;

use crate::anchors::{self, AnchorReport, PinKeys, TrustedSet};
use crate::archive::ArchiveStore;
use crate::cli::{SourceKind, VerifyArgs};
use crate::clickhouse::ClickHouseStore;
use crate::collect::{finding, Captured, CollectOptions, Collector, StoredHash};
use crate::error::Error;
use crate::freshness::{self, FreshnessReport, SignedSummary};
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
    /// With --trusted-checkpoint / --witness-state: the pins checked against each store.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trusted_checkpoints: Option<BothAnchors>,
    /// With --keys: the signed partition set and checkpoint freshness of each store.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub freshness: Option<BothFreshness>,
}

#[derive(Debug, Clone, Serialize)]
pub struct BothFreshness {
    pub clickhouse: FreshnessReport,
    pub archive: FreshnessReport,
}

#[derive(Debug, Clone, Serialize)]
pub struct BothAnchors {
    pub clickhouse: AnchorReport,
    pub archive: AnchorReport,
}

/// `--json` output of one source: the verifier's report (its `ok` includes the pins), plus
/// the pins checked when there were any.
#[derive(Debug, Clone, Serialize)]
pub struct SingleReport {
    #[serde(flatten)]
    pub report: Report,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trusted_checkpoints: Option<AnchorReport>,
    /// With --keys: the signed partition set and checkpoint freshness.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub freshness: Option<FreshnessReport>,
}

/// What one store's run gives: the report, the stored hashes (for `--source both`), and the
/// stored hashes at the seqs asked for ([`RunExtras`]).
#[derive(Debug)]
pub struct StoreRun {
    pub report: Report,
    pub hashes: Vec<StoredHash>,
    pub captured: Captured,
    /// The store's valid checkpoints (with --keys), for the signed set and freshness.
    pub signed: SignedSummary,
    /// The pins checked against this store, and its freshness (for --metrics-file).
    pub anchors: Option<AnchorReport>,
    pub freshness: Option<FreshnessReport>,
}

/// What a run must capture beyond the report (see [`CollectOptions::capture`]).
#[derive(Debug, Clone, Default)]
pub struct RunExtras {
    pub capture: BTreeMap<u32, BTreeSet<u64>>,
    pub capture_checkpoint_seqs: bool,
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
    extras: &RunExtras,
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
        capture: extras.capture.clone(),
        capture_checkpoint_seqs: extras.capture_checkpoint_seqs,
    })
}

pub async fn verify_clickhouse(
    args: &VerifyArgs,
    keep_hashes: bool,
    extras: &RunExtras,
) -> Result<StoreRun, Error> {
    let store = ClickHouseStore::new(&args.clickhouse, reads(args))?;
    let opts = collect_options(args, "clickhouse", keep_hashes, extras)?;
    let parts: Vec<u32> = opts.partitions.iter().copied().collect();
    let (cps, bad) = if opts.check_checkpoints {
        store.checkpoints(&parts).await?
    } else {
        (Vec::new(), Vec::new())
    };
    let signed = summarize(&opts, &cps);
    let fresh = || {
        let mut c = Collector::new(opts.clone(), cps.clone());
        for f in &bad {
            c.add_finding(f.clone());
        }
        c
    };
    let mut c = fresh();
    if !store
        .stream_into(&parts, args.window, &mut c, workers())
        .await?
    {
        // Rows are read by partition, so this cannot happen; if it did, a sequential run
        // is the reference.
        c = fresh();
        store.stream_into(&parts, args.window, &mut c, 1).await?;
    }
    for f in store.forks(&parts).await? {
        c.add_finding(f);
    }
    Ok(finish(c, signed))
}

/// The valid checkpoints for the signed-set and freshness checks (none without --keys).
fn summarize(opts: &CollectOptions, cps: &[schemas::Checkpoint]) -> SignedSummary {
    if opts.check_checkpoints {
        freshness::summarize(cps, &opts.keys, opts.chain_id.as_deref())
    } else {
        SignedSummary::default()
    }
}

fn finish(mut c: Collector, signed: SignedSummary) -> StoreRun {
    let captured = c.take_captured();
    let (report, hashes) = c.finish();
    StoreRun {
        report,
        hashes,
        captured,
        signed,
        anchors: None,
        freshness: None,
    }
}

/// The signed set and freshness of one store's run (only with --keys: without, no signature
/// is checked and a signed count means nothing).
fn check_freshness(
    args: &VerifyArgs,
    run: &mut StoreRun,
    only: &BTreeSet<u32>,
) -> Option<FreshnessReport> {
    if !run.signed.checked {
        return None;
    }
    let now_us = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX));
    Some(freshness::check(
        &run.signed,
        &mut run.report,
        freshness::Limits {
            max_age: args.max_checkpoint_age,
            max_partition_lag: Some(args.max_partition_lag),
        },
        now_us,
        only,
        !args.allow_unattested_partitions,
    ))
}

pub async fn verify_archive(
    args: &VerifyArgs,
    keep_hashes: bool,
    extras: &RunExtras,
) -> Result<StoreRun, Error> {
    let store = ArchiveStore::open(&args.archive, reads(args))?;
    let opts = collect_options(args, "archive", keep_hashes, extras)?;
    let parts: BTreeSet<u32> = opts.partitions.clone();
    let check = opts.check_checkpoints;
    let (cps, bad) = if check {
        store.checkpoints(&parts).await?
    } else {
        (Vec::new(), Vec::new())
    };
    let signed = summarize(&opts, &cps);
    let fresh = || {
        let mut c = Collector::new(opts.clone(), cps.clone());
        for f in &bad {
            c.add_finding(f.clone());
        }
        c
    };
    let mut c = fresh();
    if !store.stream_into(&parts, &mut c, workers()).await? {
        // A segment holds a record of another partition (tampered): only a sequential run
        // places it where the report has always placed it.
        c = fresh();
        store.stream_into(&parts, &mut c, 1).await?;
    }
    Ok(finish(c, signed))
}

/// Partitions verified at once: one per core (they are independent chains; see
/// `Collector::split`).
pub(crate) fn workers() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
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
            .filter(|f| f.severity == integrity::verify::Severity::Error)
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
            if total == 0 {
                // Failed only through a trusted checkpoint (listed after the partitions).
                writeln!(out, "FAILED (trusted checkpoint finding below)")?;
                continue;
            }
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

/// The pins of `--trusted-checkpoint` and `--witness-state`, each checked with the keys given.
pub fn load_trusted(args: &VerifyArgs) -> Result<TrustedSet, Error> {
    let keyset = args.keys.as_deref().map(load_keys).transpose()?;
    let mut witnesses = args
        .witness_keys
        .iter()
        .map(|k| {
            k.parse()
                .map_err(|e| Error::Usage(format!("--witness-key {k:?}: {e}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut files: Vec<PathBuf> = args.trusted_checkpoints.clone();
    for dir in &args.witness_states {
        let (vkey, checkpoints) = crate::witness::state_for_verify(dir)?;
        witnesses.push(vkey);
        files.push(checkpoints);
    }
    let keys = PinKeys {
        keyset: keyset.as_ref(),
        witnesses,
    };
    let set = anchors::load(&files, &keys)?;
    if let Some(want) = &args.chain_id {
        if let Some(t) = set.pins.iter().find(|t| &t.head.chain_id != want) {
            return Err(Error::Usage(format!(
                "{} pins chain {:?}, but --chain-id is {want:?}",
                t.from, t.head.chain_id
            )));
        }
    }
    Ok(set)
}

fn write_anchors(out: &mut dyn Write, a: &AnchorReport) -> std::io::Result<()> {
    write!(out, "trusted checkpoints: {} pins checked: ", a.checked)?;
    if a.ok {
        return writeln!(out, "OK");
    }
    writeln!(out, "FAILED")?;
    for f in &a.findings {
        writeln!(
            out,
            "    partition {} seq {}: {}: {} [{}]",
            f.partition,
            f.seq,
            f.kind.name(),
            f.detail,
            f.pin
        )?;
    }
    Ok(())
}

fn write_json<T: Serialize>(out: &mut dyn Write, v: &T) -> Result<(), Error> {
    serde_json::to_writer_pretty(&mut *out, v).map_err(|e| io(e.into()))?;
    writeln!(out).map_err(io)
}

/// One store's run with the pins checked against it.
async fn single(
    args: &VerifyArgs,
    trusted: &TrustedSet,
    extras: &RunExtras,
    clickhouse: bool,
    out: &mut dyn Write,
) -> Result<(bool, StoreRun), Error> {
    let (mut run, title) = if clickhouse {
        let run = verify_clickhouse(args, false, extras).await?;
        let d = ClickHouseStore::new(&args.clickhouse, reads(args))?.describe();
        (run, format!("clickhouse ({d})"))
    } else {
        let run = verify_archive(args, false, extras).await?;
        let d = ArchiveStore::open(&args.archive, reads(args))?.describe();
        (run, format!("archive ({d})"))
    };
    let only: BTreeSet<u32> = args.partitions.iter().copied().collect();
    let anchors = (!trusted.is_empty())
        .then(|| anchors::check(trusted, &mut run.report, &run.captured, &only));
    let fresh = check_freshness(args, &mut run, &only);
    if args.json {
        write_json(
            out,
            &SingleReport {
                report: run.report.clone(),
                trusted_checkpoints: anchors.clone(),
                freshness: fresh.clone(),
            },
        )?;
    } else {
        write_human(out, &title, &run.report).map_err(io)?;
        if let Some(a) = &anchors {
            write_anchors(out, a).map_err(io)?;
        }
        if let Some(f) = &fresh {
            freshness::write_human(out, f).map_err(io)?;
        }
        summary(out, run.report.ok, &[&run.report]).map_err(io)?;
    }
    run.anchors = anchors;
    run.freshness = fresh;
    Ok((run.report.ok, run))
}

pub async fn run(args: &VerifyArgs, out: &mut dyn Write) -> Result<Outcome, Error> {
    let started = std::time::Instant::now();
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
    if args.max_checkpoint_age.is_some() && args.keys.is_none() {
        return Err(Error::Usage(
            "--max-checkpoint-age needs --keys (a checkpoint's age is only known from its signature)"
                .into(),
        ));
    }
    let mut trusted = load_trusted(args)?;
    // `--anchor`: the write-once anchor's newest valid checkpoints, pinned like the above.
    anchors::add_anchored(args, &mut trusted).await?;
    // Pins name their chain: without --chain-id, checkpoints of another chain id than the
    // pins' are then mismatches too (a partition of another chain signed by the same key).
    let pinned_chain;
    let args = match (&args.chain_id, trusted.chain_id()) {
        (None, Some(c)) => {
            pinned_chain = VerifyArgs {
                chain_id: Some(c.to_owned()),
                ..args.clone()
            };
            &pinned_chain
        }
        _ => args,
    };
    let extras = RunExtras {
        capture: trusted.capture(),
        capture_checkpoint_seqs: false,
    };
    let only: BTreeSet<u32> = args.partitions.iter().copied().collect();
    let (ok, runs, cross) = match args.source {
        SourceKind::Clickhouse => {
            let (ok, run) = single(args, &trusted, &extras, true, out).await?;
            (ok, vec![run], None)
        }
        SourceKind::Archive => {
            let (ok, run) = single(args, &trusted, &extras, false, out).await?;
            (ok, vec![run], None)
        }
        SourceKind::Both => {
            // Both configurations are checked before reading anything.
            ArchiveStore::open(&args.archive, reads(args))?;
            let mut ch = verify_clickhouse(args, true, &extras).await?;
            let mut ar = verify_archive(args, true, &extras).await?;
            let x = cross_check(
                &ch.report,
                &ar.report,
                std::mem::take(&mut ch.hashes),
                std::mem::take(&mut ar.hashes),
            );
            // After the cross-check: a pinned partition missing from a store is added to that
            // store's report by the anchor check, and must not count as "present" there.
            let anchors = (!trusted.is_empty()).then(|| BothAnchors {
                clickhouse: anchors::check(&trusted, &mut ch.report, &ch.captured, &only),
                archive: anchors::check(&trusted, &mut ar.report, &ar.captured, &only),
            });
            let fresh = match (
                check_freshness(args, &mut ch, &only),
                check_freshness(args, &mut ar, &only),
            ) {
                (Some(clickhouse), Some(archive)) => Some(BothFreshness {
                    clickhouse,
                    archive,
                }),
                _ => None,
            };
            let ok = ch.report.ok && ar.report.ok && x.ok;
            if args.json {
                write_json(
                    out,
                    &BothReport {
                        ok,
                        clickhouse: ch.report.clone(),
                        archive: ar.report.clone(),
                        cross_check: x.clone(),
                        trusted_checkpoints: anchors.clone(),
                        freshness: fresh.clone(),
                    },
                )?;
            } else {
                write_human(out, "clickhouse", &ch.report).map_err(io)?;
                if let Some(a) = &anchors {
                    write_anchors(out, &a.clickhouse).map_err(io)?;
                }
                if let Some(f) = &fresh {
                    freshness::write_human(out, &f.clickhouse).map_err(io)?;
                }
                write_human(out, "archive", &ar.report).map_err(io)?;
                if let Some(a) = &anchors {
                    write_anchors(out, &a.archive).map_err(io)?;
                }
                if let Some(f) = &fresh {
                    freshness::write_human(out, &f.archive).map_err(io)?;
                }
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
                summary(out, ok, &[&ch.report, &ar.report]).map_err(io)?;
            }
            if let Some(a) = anchors {
                ch.anchors = Some(a.clickhouse);
                ar.anchors = Some(a.archive);
            }
            if let Some(f) = fresh {
                ch.freshness = Some(f.clickhouse);
                ar.freshness = Some(f.archive);
            }
            (ok, vec![ch, ar], Some(x))
        }
    };
    if let Some(path) = &args.metrics_file {
        if let Err(e) =
            crate::metrics_file::write_run(path, args.source, &runs, cross.as_ref(), started)
        {
            // Tampering keeps its exit code 1; the file's failure is then only reported.
            if ok {
                return Err(e);
            }
            eprintln!("auditctl: {e}");
        }
    }
    if let Some(path) = &args.save_checkpoints {
        if ok {
            save_pins(args, &trusted, &runs, path)?;
        } else {
            eprintln!(
                "auditctl: not writing {}: the run has findings, and a pin must only name a verified head",
                path.display()
            );
        }
    }
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

/// The chain id pins are written under: --chain-id, else the pins' one chain id, else the one
/// chain id the stores' valid checkpoints name.
pub fn pin_chain_id(
    explicit: Option<&str>,
    trusted: &TrustedSet,
    captured: &[&Captured],
) -> Result<String, Error> {
    if let Some(c) = explicit.or_else(|| trusted.chain_id()) {
        return Ok(c.to_owned());
    }
    let ids: BTreeSet<&String> = captured.iter().flat_map(|c| &c.chain_ids).collect();
    match ids.len() {
        1 => Ok(ids.into_iter().next().cloned().unwrap_or_default()),
        0 => Err(Error::Usage(
            "cannot tell the chain id to pin (no checkpoint read: no --keys?): give --chain-id"
                .into(),
        )),
        _ => Err(Error::Usage(format!(
            "the store's checkpoints name several chain ids {ids:?}: give --chain-id"
        ))),
    }
}

fn save_pins(
    args: &VerifyArgs,
    trusted: &TrustedSet,
    runs: &[StoreRun],
    path: &Path,
) -> Result<(), Error> {
    let captured: Vec<&Captured> = runs.iter().map(|r| &r.captured).collect();
    let chain_id = pin_chain_id(args.chain_id.as_deref(), trusted, &captured)?;
    let reports: Vec<&Report> = runs.iter().map(|r| &r.report).collect();
    let heads = anchors::heads_to_save(&chain_id, &reports)?;
    // With the key set: the chainer's own signed notes, which anyone with the keys can check;
    // without: the verified heads, trusted on first use (the file's safekeeping is the trust).
    let pins = match &args.keys {
        Some(k) => {
            let (pins, unsigned) =
                anchors::signed_pins(&chain_id, &load_keys(k)?, &reports, &captured, heads)?;
            if !unsigned.is_empty() {
                eprintln!(
                    "auditctl: partitions {unsigned:?} have no signed whole-tree (v3) checkpoint at their sealed seq: pinned their verified heads unsigned"
                );
            }
            pins
        }
        None => heads
            .into_iter()
            .map(Pin::unsigned)
            .collect::<Result<_, _>>()
            .map_err(|e| Error::Usage(e.to_string()))?,
    };
    let written = anchors::save(path, pins)?;
    let list: Vec<String> = written
        .iter()
        .map(|h| format!("{}@{}", h.partition, h.seq))
        .collect();
    // stderr: stdout may be the JSON report.
    eprintln!(
        "auditctl: pinned {} partition heads of chain {chain_id} in {} ({}){}",
        written.len(),
        path.display(),
        list.join(", "),
        if args.keys.is_none() {
            "; without --keys they record what the store held, trusted on first use"
        } else {
            ""
        }
    );
    Ok(())
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
