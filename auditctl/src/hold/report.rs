//! What a run of `hold` reports: per object, the hold set, read or failed (and which cases
//! hold it), the ClickHouse rows, the cases involved and the chained event, as text for an
//! operator or as JSON for scripts.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write;

use serde::Serialize;

use crate::erase::Published;
use crate::error::Error;

use super::args::HoldAction;
use super::clickhouse::ClickHouseHold;
use super::covering::{Covered, Kind};
use super::register::CaseSummary;
use super::selection::{range_text, ranges_text, QuerySelection};

/// Per-object outcome.
#[derive(Debug, Clone, Serialize)]
pub struct ObjectOutcome {
    #[serde(flatten)]
    pub object: Covered,
    /// `status`: ON / OFF / none; on/off: the status now set; absent with --dry-run or when
    /// the request failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub legal_hold: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// `status`: the cases whose registered holds cover the object; `off`: the cases that
    /// keep it ON.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub cases: Vec<String>,
}

/// The report of one run.
#[derive(Debug, Clone, Serialize)]
pub struct HoldReport {
    pub action: HoldAction,
    pub dry_run: bool,
    pub archive: String,
    /// The partition given (`null`: a query over every partition).
    pub partition: Option<u32>,
    /// The requested range (`null`: the whole partition).
    pub seq: Option<(i64, i64)>,
    /// With --query (or --from/--to): what it matched.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub query: Option<QuerySelection>,
    pub counts: BTreeMap<String, u64>,
    /// Objects whose hold was set/released (on/off).
    pub changed: u64,
    pub failed: u64,
    /// The chained event (on/off, when something changed and it was published).
    pub recorded: Option<Recorded>,
    pub objects: Vec<ObjectOutcome>,
    /// The range's rows in ClickHouse after the command (absent with --no-clickhouse or when
    /// ClickHouse failed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub clickhouse: Option<ClickHouseHold>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub clickhouse_error: Option<String>,
    /// The case the hold belongs to (`on`: `--case`, or derived from the selection; `off`:
    /// the case released, `null` when none holds the selection).
    pub case_id: Option<String>,
    /// The active cases (registered holds) covering the selection's objects or rows.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub cases: Vec<CaseSummary>,
    /// `off`: per case, objects of the released hold it keeps ON.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub kept_by: BTreeMap<String, u64>,
    /// `off`: per case, rows of the released hold it keeps flagged.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub kept_rows_by: BTreeMap<String, u64>,
    /// The register object written (`on`) or updated/removed (`off`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub register: Option<String>,
    /// Why nothing was done (`off` of a selection no case holds).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Recorded {
    pub event_id: String,
    pub event_type: String,
    #[serde(flatten)]
    pub published: Published,
}

pub(crate) fn write_report(r: &HoldReport, json: bool, out: &mut dyn Write) -> Result<(), Error> {
    let text = if json {
        serde_json::to_string_pretty(r)
            .map_err(|e| Error::Usage(format!("serializing the report: {e}")))?
    } else {
        let c = |k: &str| r.counts.get(k).copied().unwrap_or(0);
        let selected = match &r.query {
            None => format!(
                "partition {} ({})",
                r.partition
                    .map_or_else(|| "?".to_owned(), |p| p.to_string()),
                range_text(r.seq)
            ),
            Some(q) => format!(
                "the {} event(s) of query {} ({})",
                q.matched,
                q.query,
                ranges_text(&q.ranges)
            ),
        };
        let what = format!(
            "{selected}: {} object(s): {} segment(s), {} manifest(s), {} checkpoint(s) in {}",
            r.objects.len(),
            c("segments"),
            c("manifests"),
            c("checkpoints"),
            r.archive
        );
        let mut t = match (r.action, r.dry_run) {
            (HoldAction::Status, _) => format!("legal hold status of {what}\n"),
            (_, true) => {
                let state = if r.action == HoldAction::On {
                    "ON"
                } else {
                    "OFF"
                };
                format!("dry run: would set legal hold {state} on {what}\n")
            }
            (HoldAction::On, false) => {
                format!("legal hold ON set on {} of {what}\n", r.changed)
            }
            (HoldAction::Off, false) => {
                format!("legal hold released (OFF) on {} of {what}\n", r.changed)
            }
        };
        if let Some(note) = &r.note {
            t = format!("legal hold: {note}\n");
        }
        if let (Some(c), None) = (&r.case_id, &r.note) {
            let _ = writeln!(t, "case {c}");
        }
        for o in &r.objects {
            let state = match (&o.legal_hold, &o.error) {
                (_, Some(e)) => format!(" FAILED: {e}"),
                (Some(s), None) => format!(" {s}"),
                (None, None) => String::new(),
            };
            let cases = match (r.action, o.cases.is_empty()) {
                (_, true) => String::new(),
                (HoldAction::Off, false) => format!(" (kept: held by {})", o.cases.join(", ")),
                (_, false) => format!(" (cases: {})", o.cases.join(", ")),
            };
            let _ = writeln!(
                t,
                "  {:<10} {}{state}{cases}",
                kind_name(o.object.kind),
                o.object.key
            );
        }
        if !r.kept_by.is_empty() || !r.kept_rows_by.is_empty() {
            let mut by: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
            for (c, n) in &r.kept_by {
                by.entry(c).or_default().0 = *n;
            }
            for (c, n) in &r.kept_rows_by {
                by.entry(c).or_default().1 = *n;
            }
            for (c, (objects, rows)) in by {
                let _ = writeln!(
                    t,
                    "kept held for case {c}: {objects} object(s), {rows} ClickHouse row(s)"
                );
            }
        }
        for c in &r.cases {
            let sels: Vec<String> = c.selections.iter().map(|v| v.to_string()).collect();
            let _ = writeln!(
                t,
                "active case {}: {} object(s) of this selection{}; holds {} (held by {}, since {})",
                c.case_id,
                c.objects,
                if c.rows { " and rows" } else { "" },
                sels.join(", "),
                c.held_by.join(", "),
                c.held_at.join(", ")
            );
        }
        if let Some(q) = r.query.as_ref().filter(|q| q.unarchived > 0) {
            let _ = writeln!(
                t,
                "warning: {} matched event(s) are in no archived segment yet (their rows are \
                 flagged; run the same command again once they are archived)",
                q.unarchived
            );
        }
        match (&r.clickhouse, &r.clickhouse_error) {
            (Some(ch), _) => {
                let _ = writeln!(
                    t,
                    "clickhouse {}: {} row(s) of the range, {} held (exempt from retention TTL)",
                    ch.table, ch.rows, ch.held
                );
            }
            (None, Some(e)) => {
                let _ = writeln!(t, "clickhouse: FAILED: {e}");
            }
            (None, None) => {}
        }
        if let Some(k) = &r.register {
            let _ = writeln!(t, "case register: {k}");
        }
        if let Some(rec) = &r.recorded {
            let _ = write!(
                t,
                "recorded in the chain: {} {} ({} partition {} offset {})",
                rec.event_type,
                rec.event_id,
                rec.published.topic,
                rec.published.partition,
                rec.published.offset
            );
        }
        t.trim_end().to_owned()
    };
    writeln!(out, "{text}").map_err(Error::file("writing output to", "<stdout>"))
}

fn kind_name(k: Kind) -> &'static str {
    match k {
        Kind::Segment => "segment",
        Kind::Manifest => "manifest",
        Kind::Checkpoint => "checkpoint",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hold::covering::{counts_of, covering, seg};
    use crate::hold::register::register_key;

    #[test]
    fn the_text_report_says_what_was_kept_for_whom() {
        let objects = covering(&seg(0, 11, 20), &[], 0, Some((12, 15)));
        let mut r = HoldReport {
            action: HoldAction::Off,
            dry_run: false,
            archive: "s3://b".into(),
            partition: Some(0),
            seq: Some((12, 15)),
            query: None,
            counts: counts_of(&objects),
            changed: 1,
            failed: 0,
            recorded: None,
            objects: vec![
                ObjectOutcome {
                    object: objects[0].clone(),
                    legal_hold: Some("OFF".into()),
                    error: None,
                    cases: Vec::new(),
                },
                ObjectOutcome {
                    object: objects[1].clone(),
                    legal_hold: Some("ON".into()),
                    error: None,
                    cases: vec!["B".into()],
                },
            ],
            clickhouse: None,
            clickhouse_error: None,
            case_id: Some("A".into()),
            cases: Vec::new(),
            kept_by: BTreeMap::from([("B".into(), 1)]),
            kept_rows_by: BTreeMap::from([("B".into(), 4)]),
            register: Some(register_key("A")),
            note: None,
        };
        let mut out = Vec::new();
        write_report(&r, false, &mut out).expect("report");
        let text = String::from_utf8(out).expect("utf-8");
        assert!(text.contains("case A\n"), "{text}");
        assert!(text.contains("ON (kept: held by B)"), "{text}");
        assert!(
            text.contains("kept held for case B: 1 object(s), 4 ClickHouse row(s)"),
            "{text}"
        );
        assert!(text.contains("case register: _holds/A.json"), "{text}");
        r.note = Some("case A has no active hold: nothing to release".into());
        r.objects.clear();
        r.kept_by.clear();
        r.kept_rows_by.clear();
        let mut out = Vec::new();
        write_report(&r, false, &mut out).expect("report");
        let text = String::from_utf8(out).expect("utf-8");
        assert!(
            text.starts_with("legal hold: case A has no active hold"),
            "{text}"
        );
    }
}
