//! `auditctl hold on|off|status --partition P [--seq A..B]` or `--query FIELD=VALUE …
//! [--from T] [--to T]`: S3 Object Lock **legal hold** on the archive objects that hold a
//! partition's seq range, or the events a case is about (docs/runbook.md, "Legal hold").
//!
//! 1. The covering objects: the segments and manifests of partition P whose seq range meets
//!    A..B, and the checkpoints that seal it (those at seqs A..=S, S the first checkpoint seq
//!    at or after B); without `--seq`, every segment, manifest and checkpoint of P.
//!    A query (`--query`, or event times alone) is first resolved in ClickHouse to the
//!    distinct (partition, seq) of its events, every value bound (never spliced into SQL);
//!    per partition the seqs are grouped into runs of consecutive seqs and the hold covers
//!    the union of each run's objects, as for a range. Nothing matched: a usage error (exit
//!    2), like a range no archived object covers.
//! 2. `on` / `off`: PUT `?legal-hold` (`<LegalHold><Status>ON|OFF</Status></LegalHold>`) on
//!    the current version of each. `status`: GET `?legal-hold` of each. `--dry-run` lists them.
//! 3. ClickHouse (unless `--no-clickhouse`): `on` / `off` set / clear the `legal_hold` flag
//!    of the range's rows (a query: the rows it matched, bounded per partition by the seqs
//!    it resolved) in the events table (sink-clickhouse migration 0007) with an
//!    `ALTER TABLE … UPDATE` mutation, and wait until it is applied. Every retention TTL rule
//!    of sink-clickhouse requires `legal_hold = 0`, so held rows are never deleted by TTL.
//!    The flag is not part of the chain: no verifier reads it. Rows of the range stored later
//!    (not yet sunk, rehydrated) are not flagged: run `hold on` again after them (idempotent).
//!    `status` and `--dry-run` count the range's rows and the held ones.
//! 4. `on` / `off` then append an operator event to the chain (published to
//!    `<prefix>validated`, as `erase` does): `audit.legal_hold.set` / `.released`, with who,
//!    the partition and range (a query: the query as JSON, the events matched and their
//!    seqs), reason, case id, object counts and ClickHouse rows. The hold
//!    comes first: an event must never claim a hold that is not there. If recording fails,
//!    the command says the hold IS changed and exits 3; running it again records it (a hold
//!    is idempotent). A ClickHouse failure is recorded as such, and exits 3 after recording.
//! 5. Holds are per **case**: S3 legal hold is one ON/OFF bit per object version and the flag
//!    one bit per row, so the register `_holds/<case>.json` in the archive says which case
//!    holds what (each hold of the case: selection, reason, who, when, objects, flagged
//!    (partition, seq) ranges). `on` writes it after the hold and before the chain; `off`
//!    releases only the objects (set difference of keys) and rows (outside every other
//!    hold's ranges) no other registered hold covers, records what it kept for which cases,
//!    and removes the hold from the register last. No `--case`: `on` uses
//!    `selection-<sha256 of the selection>`; `off` the one case holding the selection. See
//!    [`execute`] for what a crash between the steps leaves.
//!
//! `object_store` has no legal-hold call, so the requests are signed with its own SigV4 signer
//! (`AwsAuthorizer`, the code that signs every archive read and write) with the credentials
//! its S3 client resolves (flags, `AWS_*`, instance/web identity), and sent with its HTTP
//! client (`worker_runtime::object_store::signed`, shared with the archive sink's locked
//! puts): no second S3 stack. Credentials never appear in output or errors.
//!
//! The command's parts, one concern a file:
//! - [`args`]: the command line; [`selection`]: what `--query`/`--from`/`--to` select, as
//!   bound SQL, and the canonical selection a hold is named by;
//! - [`covering`]: which archive objects cover a seq range; [`objects`]: the signed S3
//!   `?legal-hold` requests on them; [`clickhouse`]: the `legal_hold` flag of their rows;
//! - [`event`]: the chained event of a hold; [`register`]: the per-case register;
//!   [`release`]: `off`; [`report`]: what a run prints.
//!
//! This file runs `on` and `status` ([`execute`]): it resolves the selection (`plan`),
//! then changes the archive, ClickHouse, the register and the chain in that order.

mod args;
mod clickhouse;
mod covering;
mod event;
mod objects;
mod register;
mod release;
mod report;
mod selection;

// Every public item keeps its `crate::hold::…` path (the CLI, `rehydrate` and the tests use
// them there).
pub use self::args::*;
pub use self::clickhouse::*;
pub use self::covering::*;
pub use self::event::*;
pub use self::objects::*;
pub use self::register::*;
pub use self::report::*;
pub use self::selection::*;

use std::collections::BTreeMap;
use std::io::Write;

use futures::{StreamExt, TryStreamExt};
use object_store::ObjectStore;
use schemas::segment;
use worker_runtime::object_store::{build_store, Access};

use crate::erase::{client, events_table, publish, who};
use crate::error::Error;
use crate::reads::Reads;
use crate::Outcome;

use self::release::{release, OffContext};

/// Concurrent legal-hold requests.
const PARALLEL: usize = 8;

pub async fn run(a: &HoldArgs, out: &mut dyn Write) -> Result<Outcome, Error> {
    let (report, error) = execute(a, &[]).await?;
    write_report(&report, a.json, out)?;
    match error {
        Some(e) => Err(e),
        None => Ok(Outcome::Ok),
    }
}

/// What a hold covers once resolved.
struct Plan {
    objects: Vec<Covered>,
    /// The ClickHouse rows it flags.
    rows: Cond,
    /// The same rows as (partition, seq) ranges, for the register.
    ranges: RowRanges,
    query: Option<QuerySelection>,
    /// `partition 3`, or `the query's partitions 0,1`, for messages.
    scope: String,
}

/// The matched (partition, seq) of a query, per partition, in order.
async fn resolve(a: &HoldArgs, q: &HoldQuery) -> Result<BTreeMap<i32, Vec<i64>>, Error> {
    let ch = &a.clickhouse;
    let table = events_table(ch)?;
    let cond = q.condition();
    let sql = format!(
        "SELECT DISTINCT chain_partition, seq FROM {table} WHERE {} ORDER BY chain_partition, seq",
        cond.sql
    );
    let c = client(ch);
    let doing = format!(
        "selecting the events of {} in {}.{table}",
        q.canonical(),
        ch.clickhouse_database
    );
    let reads = Reads::new(a.reads.retry_attempts);
    let rows: Vec<(i32, i64)> = reads
        .run(&doing, || {
            let (c, cond, sql, doing) = (&c, &cond, &sql, &doing);
            async move {
                cond.bind_all(c.query(sql))
                    .fetch_all()
                    .await
                    .map_err(Error::ch(doing.clone()))
            }
        })
        .await?;
    let mut out: BTreeMap<i32, Vec<i64>> = BTreeMap::new();
    for (p, s) in rows {
        out.entry(p).or_default().push(s);
    }
    Ok(out)
}

/// The covering objects (and rows) of the selection.
async fn plan(
    a: &HoldArgs,
    store: &dyn ObjectStore,
    reads: &Reads,
    describe: &str,
) -> Result<Plan, Error> {
    let partition = a
        .partition
        .map(|p| {
            i32::try_from(p).map_err(|_| Error::Usage(format!("--partition {p} is out of range")))
        })
        .transpose()?;
    let listing = |p: i32| async move {
        let segs = list(store, &segment::partition_prefix(p), reads, describe).await?;
        let cps = list(store, &segment::checkpoint_prefix(p), reads, describe).await?;
        Ok::<_, Error>((segs, cps))
    };
    if !a.is_query() {
        let Some(p) = partition else {
            return Err(Error::Usage(
                "hold: give --partition P [--seq A..B], or --query FIELD=VALUE".into(),
            ));
        };
        let (segs, cps) = listing(p).await?;
        let objects = covering(&segs, &cps, p, a.seq);
        if objects.is_empty() {
            return Err(Error::Usage(format!(
                "no archived object of partition {p} covers {} in {describe}",
                range_text(a.seq)
            )));
        }
        return Ok(Plan {
            objects,
            rows: Cond {
                sql: range_condition(p, a.seq),
                binds: Vec::new(),
            },
            ranges: BTreeMap::from([(p, vec![a.seq.unwrap_or((i64::MIN, i64::MAX))])]),
            query: None,
            scope: format!("partition {p}"),
        });
    }
    let q = HoldQuery::new(&a.query, partition, a.seq, a.from, a.to);
    if let (Some(f), Some(t)) = (q.from_us, q.to_us) {
        if f >= t {
            return Err(Error::Usage("--from must be before --to".into()));
        }
    }
    let matched = resolve(a, &q).await?;
    let events: usize = matched.values().map(Vec::len).sum();
    if events == 0 {
        // Nothing to do, as for a seq range no archived object covers: a usage error, so a
        // typo in a case's request id never passes for a hold in place.
        return Err(Error::Usage(format!(
            "the query {} matches no event in {}.{}: nothing to hold (rows already deleted \
             from ClickHouse by retention are not seen: load them back first with `auditctl \
             rehydrate --hold`)",
            q.canonical(),
            a.clickhouse.clickhouse_database,
            a.clickhouse.events_table
        )));
    }
    let mut objects = Vec::new();
    let mut ranges = BTreeMap::new();
    let mut missing = 0u64;
    for (p, seqs) in &matched {
        let rs = seq_ranges(seqs);
        let (segs, cps) = listing(*p).await?;
        objects.extend(covering_ranges(&segs, &cps, *p, &rs));
        missing += unarchived(&segs, *p, &rs);
        ranges.insert(*p, rs);
    }
    let selection = QuerySelection {
        query: q.canonical(),
        matched: events as u64,
        ranges,
        unarchived: missing,
    };
    let parts: Vec<String> = matched.keys().map(i32::to_string).collect();
    if objects.is_empty() {
        return Err(Error::Usage(format!(
            "no archived object holds the {events} event(s) the query {} matches (partitions \
             {}: {}) in {describe}: not archived yet? Run it again once sink-archive has \
             stored them",
            selection.query,
            parts.join(","),
            ranges_text(&selection.ranges)
        )));
    }
    Ok(Plan {
        objects,
        rows: selection.row_condition(&q),
        ranges: selection.ranges.clone(),
        query: Some(selection),
        scope: format!("the query's partition(s) {}", parts.join(",")),
    })
}

/// Runs a hold. `Err`: nothing was changed (bad arguments, unreadable listing). `Ok((report,
/// Some(e)))`: the report of what changed, and the failure to report after it (exit 3).
/// `extra`: more attributes for the chained event.
///
/// Order, and what a crash between two steps leaves (every step is idempotent, so running
/// the same command again converges):
/// - `on`: S3 hold ON → rows flagged → the case's register written → chained. Crash before
///   the register: held but not registered (another case's `off` could release it): the
///   command said so (exit 3) and a rerun registers and records it. Crash after the
///   register: a rerun merges the same hold into it and records it.
/// - `off`: S3 hold OFF on what no other hold covers → those rows cleared → chained → the
///   hold removed from its register. The register goes LAST so that a rerun still knows what
///   the case held; until then the case still protects its objects from other releases (the
///   safe side: a hold kept too long, never one lost). A rerun after the register is gone
///   does nothing.
pub(crate) async fn execute(
    a: &HoldArgs,
    extra: &[(&'static str, String)],
) -> Result<(HoldReport, Option<Error>), Error> {
    let action = if a.check {
        HoldAction::Status
    } else {
        a.action
    };
    let changes = action != HoldAction::Status && !a.dry_run;
    let reason = a.reason.as_deref().map(str::trim).unwrap_or("");
    let operator = if changes {
        if reason.is_empty() {
            return Err(Error::Usage(
                "hold on/off: say why (--reason; recorded in the chain)".into(),
            ));
        }
        Some(who(a.held_by.as_deref(), "--held-by")?)
    } else {
        None
    };
    let given_case = a.case_id.as_deref().map(check_case_id).transpose()?;
    let reads = Reads::new(a.reads.retry_attempts);
    let bucket = open_bucket(&a.archive)?;
    let describe = a.archive.describe(Access::Read);
    let store = build_store(&a.archive, Access::Read).map_err(|e| Error::Usage(e.to_string()))?;
    let selection = selection_of(a);
    // Which cases hold what: read before anything changes.
    let registers = read_registers(&bucket, &*store, &reads, &describe).await?;
    if action == HoldAction::Off {
        let ctx = OffContext {
            reads: &reads,
            bucket: &bucket,
            describe: &describe,
            registers: &registers,
            selection: &selection,
            operator: operator.as_deref(),
            reason,
            changes,
        };
        return release(a, &ctx, extra).await;
    }
    let derived = given_case.is_none() && action == HoldAction::On;
    let case_id = match (given_case, action) {
        (Some(c), _) => Some(c),
        (None, HoldAction::On) => Some(derived_case_id(&selection)),
        (None, _) => None,
    };

    // 1. The covering objects (a query: resolved in ClickHouse first).
    let plan = plan(a, &*store, &reads, &describe).await?;
    let objects = plan.objects.clone();
    let cases = cases_covering(&registers, &objects, &plan.ranges);

    // 2. Requests, a few at a time; each one retried like any archive read.
    let on = action == HoldAction::On;
    let results: Vec<(Covered, Result<Option<String>, Error>)> = if action == HoldAction::Status {
        futures::stream::iter(objects.clone())
            .map(|o| {
                let (bucket, reads) = (&bucket, &reads);
                async move {
                    let doing = format!("reading the legal hold of {}", o.key);
                    let r = reads.run(&doing, || get_hold(bucket, &o.key)).await;
                    (o, r.map(Some))
                }
            })
            .buffered(PARALLEL)
            .collect()
            .await
    } else if a.dry_run {
        objects.iter().cloned().map(|o| (o, Ok(None))).collect()
    } else {
        futures::stream::iter(objects.clone())
            .map(|o| {
                let (bucket, reads) = (&bucket, &reads);
                async move {
                    let doing = format!("setting the legal hold of {}", o.key);
                    let r = reads.run(&doing, || put_hold(bucket, &o.key, on)).await;
                    let set = if on { "ON" } else { "OFF" };
                    (o, r.map(|()| Some(set.to_owned())))
                }
            })
            .buffered(PARALLEL)
            .collect()
            .await
    };
    let mut report = HoldReport {
        action,
        dry_run: a.dry_run,
        archive: describe.clone(),
        partition: a.partition,
        seq: a.seq,
        query: plan.query.clone(),
        counts: counts_of(&objects),
        changed: 0,
        failed: 0,
        recorded: None,
        objects: Vec::new(),
        clickhouse: None,
        clickhouse_error: None,
        case_id: case_id.clone(),
        cases: cases.clone(),
        kept_by: BTreeMap::new(),
        kept_rows_by: BTreeMap::new(),
        register: None,
        note: None,
    };
    let mut changed = Vec::new();
    let mut first_error = None;
    for (o, r) in results {
        let holders: Vec<String> = registers
            .iter()
            .filter(|reg| {
                reg.holds
                    .iter()
                    .any(|h| h.objects.iter().any(|x| x.key == o.key))
            })
            .map(|reg| reg.case_id.clone())
            .collect();
        match r {
            Ok(status) => {
                if changes {
                    changed.push(o.clone());
                }
                report.objects.push(ObjectOutcome {
                    object: o,
                    legal_hold: status,
                    error: None,
                    cases: holders,
                });
            }
            Err(e) => {
                report.failed += 1;
                let text = e.to_string();
                first_error.get_or_insert(e);
                report.objects.push(ObjectOutcome {
                    object: o,
                    legal_hold: None,
                    error: Some(text),
                    cases: holders,
                });
            }
        }
    }
    report.changed = changed.len() as u64;

    // 3. ClickHouse: flag the rows (status / dry run: count them). Not when the archive
    // refused every object: the command then changed nothing anywhere.
    let mut ch_error = None;
    let archive_refused_all = changes && changed.is_empty();
    if !a.no_clickhouse && !archive_refused_all {
        let set = changes.then_some((true, &plan.rows));
        match clickhouse_hold(a, &plan.rows, set).await {
            Ok(ch) => report.clickhouse = Some(ch),
            Err(e) => {
                report.clickhouse_error = Some(e.to_string());
                ch_error = Some(e);
            }
        }
    }
    let ch_outcome = match (&report.clickhouse, a.no_clickhouse) {
        (Some(ch), _) => ClickHouseOutcome::Done(ch),
        (None, _) if a.no_clickhouse => ClickHouseOutcome::Skipped,
        (None, _) => ClickHouseOutcome::Failed,
    };
    let state = "SET";
    let scope = &plan.scope;

    // 4. The case's register: after the hold (it lists only what is held), before the chain
    // (an event in the chain then always has its register entry). Rows are registered even
    // when flagging failed: a register claiming a row only keeps it held longer.
    if let (Some(operator), Some(case), false) = (&operator, &case_id, changed.is_empty()) {
        let hold = RegisteredHold {
            selection: selection.clone(),
            reason: reason.to_owned(),
            held_by: operator.clone(),
            held_at: now_rfc3339(),
            partition: a.partition,
            seq: a.seq,
            query: plan.query.clone(),
            objects: changed.clone(),
            rows: if a.no_clickhouse {
                BTreeMap::new()
            } else {
                plan.ranges.clone()
            },
        };
        let reg = registers
            .iter()
            .find(|r| &r.case_id == case)
            .cloned()
            .unwrap_or_else(|| CaseRegister {
                format: REGISTER_FORMAT,
                case_id: case.clone(),
                holds: Vec::new(),
            })
            .with_hold(hold);
        if let Err(e) = write_register(&bucket, &reads, &reg).await {
            let e = Error::Service(format!(
                "the legal hold IS {state} on {} object(s) of {scope}, but writing the \
                 register of case {case} failed: {e}. Nothing was recorded in the chain. Run \
                 the same command again (the hold itself is idempotent).",
                report.changed
            ));
            return Ok((report, Some(e)));
        }
        report.register = Some(register_key(case));
    }

    // 5. Record every change (also a partial one: the trail must show each hold that
    // changed), after the hold itself.
    let mut record_error = None;
    if let (Some(operator), false) = (&operator, changed.is_empty()) {
        let mut attrs = extra.to_vec();
        if derived {
            attrs.push((ATTR_CASE_DERIVED, "true".to_owned()));
        }
        let event = hold_event(&HoldEvent {
            on,
            operator,
            reason,
            case_id: case_id.as_deref(),
            partition: a.partition.unwrap_or(0),
            range: a.seq,
            query: plan.query.as_ref(),
            extra: &attrs,
            objects: &changed,
            failed: report.failed,
            archive: &describe,
            clickhouse: ch_outcome,
        });
        record_error = record_hold(&a.kafka, &event, &mut report).await;
    }
    finish(
        report,
        FinishErrors {
            record: record_error,
            clickhouse: ch_error,
            first: first_error,
        },
        state,
        scope,
        objects.len(),
    )
}

/// The failures of a run, reported after what changed.
/// Publishes the hold's `event` to the chain's input topic: the report says where it went, or
/// the error comes back for [`finish`] (the hold itself is already changed).
pub(super) async fn record_hold(
    kafka: &worker_runtime::kafka::KafkaArgs,
    event: &schemas::AuditEvent,
    report: &mut HoldReport,
) -> Option<Error> {
    match publish(kafka, event).await {
        Ok(published) => {
            report.recorded = Some(Recorded {
                event_id: event.event_id.clone(),
                event_type: event.event_type.clone(),
                published,
            });
            None
        }
        Err(e) => Some(e),
    }
}

struct FinishErrors {
    record: Option<Error>,
    clickhouse: Option<Error>,
    first: Option<Error>,
}

/// The report and the first failure to report after it, in the words that say what IS in
/// place.
fn finish(
    report: HoldReport,
    errors: FinishErrors,
    state: &str,
    scope: &str,
    total: usize,
) -> Result<(HoldReport, Option<Error>), Error> {
    let on = report.action == HoldAction::On;
    if let Some(e) = errors.record {
        let e = Error::Service(format!(
            "the legal hold IS {state} on {} object(s) of {scope}, but recording it in the chain failed: {e}. Run the same command again to record it (the hold itself is idempotent).",
            report.changed
        ));
        return Ok((report, Some(e)));
    }
    if let Some(e) = errors.clickhouse {
        let e = Error::Service(format!(
            "the legal hold IS {state} on {} archive object(s) of {scope}{}, but its \
             ClickHouse rows were not {}: {e}. Run the same command again (it is idempotent).",
            report.changed,
            if report.recorded.is_some() {
                " and recorded in the chain"
            } else {
                ""
            },
            if on { "flagged" } else { "released" }
        ));
        return Ok((report, Some(e)));
    }
    if let Some(e) = errors.first {
        let recorded = if report.recorded.is_some() {
            format!(
                "; the {} that succeeded are recorded in the chain",
                report.changed
            )
        } else {
            String::new()
        };
        let e = Error::Archive(format!(
            "{} of {} object(s) failed (first: {e}){recorded}; run the same command again",
            report.failed, total
        ));
        return Ok((report, Some(e)));
    }
    Ok((report, None))
}

/// Keys (relative to the archive root) under `dir`.
async fn list(
    store: &dyn ObjectStore,
    dir: &str,
    reads: &Reads,
    describe: &str,
) -> Result<Vec<String>, Error> {
    let p = object_store::path::Path::from(dir.trim_end_matches('/'));
    let doing = format!("listing {dir} in {describe}");
    let metas: Vec<object_store::ObjectMeta> = reads
        .run(&doing, || {
            let (p, doing) = (&p, &doing);
            async move {
                match store.list(Some(p)).try_collect().await {
                    Ok(v) => Ok(v),
                    Err(object_store::Error::NotFound { .. }) => Ok(Vec::new()),
                    Err(e) => Err(Error::os(doing.clone())(e)),
                }
            }
        })
        .await?;
    Ok(metas.iter().map(|m| m.location.to_string()).collect())
}
