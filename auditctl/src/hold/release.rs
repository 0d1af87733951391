//! `hold off`: releases one registered hold of a case, except what any other registered
//! hold covers (an S3 legal hold and the ClickHouse flag are one bit each: releasing blindly
//! would free what another case still holds), records the release, and only then drops the
//! hold from the case's register, so an interrupted release can be run again.

use std::collections::BTreeMap;

use futures::StreamExt;
use worker_runtime::object_store::signed::SignedS3;

use crate::erase::{client, events_table};
use crate::error::Error;
use crate::reads::Reads;

use super::args::{HoldAction, HoldArgs};
use super::clickhouse::{clickhouse_hold, HOLD_COLUMN};
use super::covering::{counts_of, Covered};
use super::event::{hold_event, ClickHouseOutcome, HoldEvent};
use super::objects::put_hold;
use super::register::{
    case_for_off, kept_by_text, register_key, release_of, rows_meet, rows_sql, write_register,
    CaseRegister, RegisteredHold, RowRanges, ATTR_KEPT_BY, ATTR_KEPT_OBJECTS, ATTR_KEPT_ROWS,
};
use super::report::{HoldReport, ObjectOutcome};
use super::selection::Cond;
use super::{finish, FinishErrors, PARALLEL};

/// What `off` works with, read once by [`execute`].
pub(super) struct OffContext<'a> {
    pub(super) reads: &'a Reads,
    pub(super) bucket: &'a SignedS3,
    pub(super) describe: &'a str,
    pub(super) registers: &'a [CaseRegister],
    pub(super) selection: &'a serde_json::Value,
    pub(super) operator: Option<&'a str>,
    pub(super) reason: &'a str,
    pub(super) changes: bool,
}

/// `off`: releases one registered hold (the selection's, of the case) except what any other
/// registered hold covers; records the release with what was kept and for which cases; then
/// drops the hold from the case's register.
pub(super) async fn release(
    a: &HoldArgs,
    ctx: &OffContext<'_>,
    extra: &[(&'static str, String)],
) -> Result<(HoldReport, Option<Error>), Error> {
    let case = case_for_off(ctx.registers, ctx.selection, a.case_id.as_deref())?;
    let mut report = HoldReport {
        action: HoldAction::Off,
        dry_run: a.dry_run,
        archive: ctx.describe.to_owned(),
        partition: a.partition,
        seq: a.seq,
        query: None,
        counts: counts_of(&[]),
        changed: 0,
        failed: 0,
        recorded: None,
        objects: Vec::new(),
        clickhouse: None,
        clickhouse_error: None,
        case_id: case.clone(),
        cases: Vec::new(),
        kept_by: BTreeMap::new(),
        kept_rows_by: BTreeMap::new(),
        register: None,
        note: None,
    };
    let reg = case
        .as_ref()
        .and_then(|c| ctx.registers.iter().find(|r| &r.case_id == c));
    let mine = reg.and_then(|r| r.holds.iter().find(|h| &h.selection == ctx.selection));
    let (Some(case), Some(reg), Some(mine)) = (&case, reg, mine) else {
        // Nothing registered: released already (a rerun), or never held. Changes nothing.
        report.note = Some(match (&case, reg) {
            (None, _) => format!(
                "no active case holds the selection {}: nothing to release",
                ctx.selection
            ),
            (Some(c), None) => format!("case {c} has no active hold: nothing to release"),
            (Some(c), Some(r)) => format!(
                "case {c} holds no hold of the selection {}: nothing to release (its holds: {})",
                ctx.selection,
                r.holds
                    .iter()
                    .map(|h| h.selection.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        });
        return Ok((report, None));
    };
    let others: Vec<(&str, &RegisteredHold)> = ctx
        .registers
        .iter()
        .flat_map(|r| {
            r.holds
                .iter()
                .filter(move |h| !(r.case_id == *case && &h.selection == ctx.selection))
                .map(move |h| (r.case_id.as_str(), h))
        })
        .collect();
    let plan = release_of(mine, &others);
    report.partition = mine.partition;
    report.seq = mine.seq;
    report.query = mine.query.clone();
    report.counts = counts_of(&mine.objects);
    report.kept_by = plan.kept_by.clone();
    let scope = format!("case {case}");

    // 1. OFF on the objects no other hold covers.
    let results: Vec<(Covered, Result<Option<String>, Error>)> = if ctx.changes {
        futures::stream::iter(plan.release.clone())
            .map(|o| async move {
                let doing = format!("releasing the legal hold of {}", o.key);
                let r = ctx
                    .reads
                    .run(&doing, || put_hold(ctx.bucket, &o.key, false))
                    .await;
                (o, r.map(|()| Some("OFF".to_owned())))
            })
            .buffered(PARALLEL)
            .collect()
            .await
    } else {
        plan.release
            .iter()
            .cloned()
            .map(|o| (o, Ok(None)))
            .collect()
    };
    let mut changed = Vec::new();
    let mut first_error = None;
    for (o, r) in results {
        match r {
            Ok(status) => {
                if ctx.changes {
                    changed.push(o.clone());
                }
                report.objects.push(ObjectOutcome {
                    object: o,
                    legal_hold: status,
                    error: None,
                    cases: Vec::new(),
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
                    cases: Vec::new(),
                });
            }
        }
    }
    for (o, by) in &plan.kept {
        report.objects.push(ObjectOutcome {
            object: o.clone(),
            legal_hold: Some("ON".to_owned()),
            error: None,
            cases: by.clone(),
        });
    }
    report.changed = changed.len() as u64;

    // 2. Clear the rows no other hold covers; count what other cases keep flagged.
    let mut ch_error = None;
    let refused_all = ctx.changes && changed.is_empty() && !plan.release.is_empty();
    let has_rows = !mine.rows.is_empty();
    if !a.no_clickhouse && has_rows && !refused_all {
        let mine_rows = Cond {
            sql: rows_sql(&mine.rows),
            binds: Vec::new(),
        };
        let clear = Cond {
            sql: plan.clear_rows_sql.clone(),
            binds: Vec::new(),
        };
        let set = ctx.changes.then_some((false, &clear));
        match clickhouse_hold(a, &mine_rows, set).await {
            Ok(ch) => {
                if ch.held > 0 {
                    match kept_rows(a, &mine.rows, &others).await {
                        Ok(k) => report.kept_rows_by = k,
                        Err(e) => {
                            report.clickhouse_error = Some(e.to_string());
                            ch_error = Some(e);
                        }
                    }
                }
                report.clickhouse = Some(ch);
            }
            Err(e) => {
                report.clickhouse_error = Some(e.to_string());
                ch_error = Some(e);
            }
        }
    }
    let ch_outcome = match (&report.clickhouse, a.no_clickhouse || !has_rows) {
        (Some(ch), _) => ClickHouseOutcome::Done(ch),
        (None, true) => ClickHouseOutcome::Skipped,
        (None, false) => ClickHouseOutcome::Failed,
    };

    // 3. Record the release: every change, and also a release that changed no object (all
    // kept by other cases): the case's hold still ends, and the trail must say so.
    let mut record_error = None;
    let record = !changed.is_empty() || (report.failed == 0 && !refused_all);
    if let (Some(operator), true, true) = (ctx.operator, ctx.changes, record) {
        let mut attrs = extra.to_vec();
        let kept_objects: u64 = plan.kept.len() as u64;
        attrs.push((ATTR_KEPT_OBJECTS, kept_objects.to_string()));
        if !plan.kept_by.is_empty() {
            attrs.push((ATTR_KEPT_BY, kept_by_text(&plan.kept_by)));
        }
        if let Some(ch) = &report.clickhouse {
            attrs.push((ATTR_KEPT_ROWS, ch.held.to_string()));
        }
        let event = hold_event(&HoldEvent {
            on: false,
            operator,
            reason: ctx.reason,
            case_id: Some(case),
            partition: mine.partition.unwrap_or(0),
            range: mine.seq,
            query: mine.query.as_ref(),
            extra: &attrs,
            objects: &changed,
            failed: report.failed,
            archive: ctx.describe,
            clickhouse: ch_outcome,
        });
        record_error = super::record_hold(&a.kafka, &event, &mut report).await;
    }

    // 4. Only a complete, recorded release leaves the register: otherwise the hold stays
    // registered (its objects stay protected from other releases) and a rerun finishes it.
    if report.recorded.is_some()
        && report.failed == 0
        && ch_error.is_none()
        && record_error.is_none()
    {
        let mut left = reg.clone();
        left.holds.retain(|h| &h.selection != ctx.selection);
        if let Err(e) = write_register(ctx.bucket, ctx.reads, &left).await {
            let e = Error::Service(format!(
                "the legal hold of {scope} IS RELEASED and recorded in the chain, but removing \
                 it from the register {} failed: {e}. Run the same command again.",
                register_key(case)
            ));
            return Ok((report, Some(e)));
        }
        report.register = Some(register_key(case));
    }
    let total = plan.release.len();
    finish(
        report,
        FinishErrors {
            record: record_error,
            clickhouse: ch_error,
            first: first_error,
        },
        "RELEASED",
        &scope,
        total,
    )
}

/// Per other case, the rows of `mine` it keeps flagged.
async fn kept_rows(
    a: &HoldArgs,
    mine: &RowRanges,
    others: &[(&str, &RegisteredHold)],
) -> Result<BTreeMap<String, u64>, Error> {
    let ch = &a.clickhouse;
    let table = events_table(ch)?;
    let c = client(ch).with_setting("max_query_size", "16777216");
    let mut by_case: BTreeMap<&str, RowRanges> = BTreeMap::new();
    for (case, h) in others {
        if rows_meet(mine, &h.rows) {
            let e = by_case.entry(case).or_default();
            for (p, rs) in &h.rows {
                e.entry(*p).or_default().extend(rs.iter().copied());
            }
        }
    }
    let mut out = BTreeMap::new();
    for (case, theirs) in by_case {
        let n: u64 = c
            .query(&format!(
                "SELECT count() FROM {table} WHERE ({}) AND ({}) AND {HOLD_COLUMN} = 1",
                rows_sql(mine),
                rows_sql(&theirs)
            ))
            .fetch_one()
            .await
            .map_err(Error::ch(format!(
                "counting the rows case {case} keeps held in {}.{table}",
                ch.clickhouse_database
            )))?;
        if n > 0 {
            out.insert(case.to_owned(), n);
        }
    }
    Ok(out)
}
