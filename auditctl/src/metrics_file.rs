//! `verify --metrics-file`: the run's outcome in the Prometheus text exposition format, for
//! node_exporter's textfile collector (`--collector.textfile.directory`).
//!
//! auditctl is a CLI run from cron or a Kubernetes CronJob: there is no process to scrape, so
//! the run leaves a `.prom` file that the node's exporter serves until the next run replaces
//! it. The file is written atomically (a temporary file beside it, then a rename): the
//! collector reads the old or the new file, never half of one. The temporary name starts with
//! a dot and does not end in `.prom`, so the collector never reads it.
//!
//! Every metric is a gauge describing the last run (a count of findings is not monotonic
//! across runs). A run that fails before a report exists (store unreachable, exit 3) leaves
//! the previous file: alert on `time() - audit_verify_last_run_timestamp_seconds` too.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use integrity::verify::{FindingKind, Report};

use crate::anchors::{self, AnchorKind, AnchorReport};
use crate::cli::SourceKind;
use crate::error::Error;
use crate::freshness::{FreshnessKind, FreshnessReport};
use crate::verify::{kind_name, CrossCheck, StoreRun};

/// Every verifier finding kind, so that each has a series (0 when absent): an alert on
/// `audit_verify_findings{kind="fork"} > 0` then evaluates on every run, not only after the
/// first fork. The test `finding_kinds_are_all_listed` keeps this list complete.
const FINDING_KINDS: [FindingKind; 22] = [
    FindingKind::ModifiedEvent,
    FindingKind::ModifiedHash,
    FindingKind::BrokenLink,
    FindingKind::MissingSeq,
    FindingKind::InsertedEvent,
    FindingKind::Reordered,
    FindingKind::DuplicateSeq,
    FindingKind::Fork,
    FindingKind::TruncatedTail,
    FindingKind::CheckpointMismatch,
    FindingKind::BadCheckpointSignature,
    FindingKind::UnknownKey,
    FindingKind::KeyNotValidAt,
    FindingKind::MalformedCheckpoint,
    FindingKind::MalformedRecord,
    FindingKind::GenesisMismatch,
    FindingKind::SegmentReplaced,
    FindingKind::SegmentWithoutManifest,
    FindingKind::MalformedManifest,
    FindingKind::MissingCheckpoint,
    FindingKind::CheckpointBackdated,
    FindingKind::StoreDisagreement,
];

const ANCHOR_KINDS: [AnchorKind; 4] = [
    AnchorKind::TrustedPartitionMissing,
    AnchorKind::RollbackBelowTrusted,
    AnchorKind::TrustedCheckpointMismatch,
    AnchorKind::TrustedCheckpointInvalid,
];

const FRESHNESS_KINDS: [FreshnessKind; 6] = [
    FreshnessKind::PartitionMissingFromSignedSet,
    FreshnessKind::PartitionCountDecreased,
    FreshnessKind::PartitionCountChanged,
    FreshnessKind::CheckpointStale,
    FreshnessKind::GenesisCheckpointSuperseded,
    FreshnessKind::CheckpointSuperseded,
];

/// The `source` label of the `--source both` cross-check (findings `store_disagreement`).
pub const CROSS_CHECK_SOURCE: &str = "cross_check";

/// What one store's run contributes.
#[derive(Debug, Clone, Copy)]
pub struct SourceMetrics<'a> {
    /// `clickhouse` or `archive`.
    pub source: &'a str,
    pub report: &'a Report,
    /// Present when pins were checked (their kinds are then listed, 0 when absent).
    pub anchors: Option<&'a AnchorReport>,
    /// Present with --keys (freshness kinds and checkpoint ages are then known).
    pub freshness: Option<&'a FreshnessReport>,
}

/// One run's metrics.
#[derive(Debug, Clone)]
pub struct RunMetrics<'a> {
    pub sources: Vec<SourceMetrics<'a>>,
    pub cross_check: Option<&'a CrossCheck>,
    /// When the run ended.
    pub finished: SystemTime,
    pub duration: Duration,
}

/// Writes `path` for a `verify` run: `runs` in the order [`crate::verify::run`] makes them
/// (ClickHouse first with `--source both`).
pub fn write_run(
    path: &Path,
    source: SourceKind,
    runs: &[StoreRun],
    cross_check: Option<&CrossCheck>,
    started: Instant,
) -> Result<(), Error> {
    let names: &[&str] = match source {
        SourceKind::Clickhouse => &["clickhouse"],
        SourceKind::Archive => &["archive"],
        SourceKind::Both => &["clickhouse", "archive"],
    };
    let m = RunMetrics {
        sources: names
            .iter()
            .zip(runs)
            .map(|(name, r)| SourceMetrics {
                source: name,
                report: &r.report,
                anchors: r.anchors.as_ref(),
                freshness: r.freshness.as_ref(),
            })
            .collect(),
        cross_check,
        finished: SystemTime::now(),
        duration: started.elapsed(),
    };
    anchors::write_atomic(path, render(&m).as_bytes())
}

/// Escapes a label value: backslash, double quote and line feed, per the text format.
pub fn escape_label(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// A sample value as the text format spells it (Go's ParseFloat reads these).
pub fn format_value(v: f64) -> String {
    if v.is_nan() {
        "NaN".to_owned()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.to_owned()
    } else {
        format!("{v}")
    }
}

/// One metric family: HELP and TYPE once, then its samples (the format requires a family's
/// lines to be contiguous).
struct Family {
    name: &'static str,
    help: &'static str,
    samples: Vec<(Vec<(&'static str, String)>, f64)>,
}

impl Family {
    fn new(name: &'static str, help: &'static str) -> Self {
        Self {
            name,
            help,
            samples: Vec::new(),
        }
    }

    fn add(&mut self, labels: Vec<(&'static str, String)>, v: f64) {
        self.samples.push((labels, v));
    }

    fn write(&self, out: &mut String) {
        // HELP text escapes only backslash and line feed.
        let help = self.help.replace('\\', "\\\\").replace('\n', "\\n");
        let _ = writeln!(out, "# HELP {} {help}", self.name);
        let _ = writeln!(out, "# TYPE {} gauge", self.name);
        for (labels, v) in &self.samples {
            out.push_str(self.name);
            if !labels.is_empty() {
                out.push('{');
                for (i, (k, val)) in labels.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    let _ = write!(out, "{k}=\"{}\"", escape_label(val));
                }
                out.push('}');
            }
            let _ = writeln!(out, " {}", format_value(*v));
        }
    }
}

/// Findings by kind name of one store: every verifier kind (0 when absent), the anchor kinds
/// when pins were checked, the freshness kinds when freshness was.
fn count_findings(s: &SourceMetrics<'_>) -> BTreeMap<String, u64> {
    let mut by_kind: BTreeMap<String, u64> =
        FINDING_KINDS.iter().map(|k| (kind_name(*k), 0)).collect();
    for f in s.report.partitions.iter().flat_map(|p| &p.findings) {
        *by_kind.entry(kind_name(f.kind)).or_default() += 1;
    }
    if let Some(a) = s.anchors {
        for k in ANCHOR_KINDS {
            by_kind.entry(k.name().to_owned()).or_default();
        }
        for f in &a.findings {
            *by_kind.entry(f.kind.name().to_owned()).or_default() += 1;
        }
    }
    if let Some(fr) = s.freshness {
        for k in FRESHNESS_KINDS {
            by_kind.entry(k.name().to_owned()).or_default();
        }
        for f in &fr.findings {
            *by_kind.entry(f.kind.name().to_owned()).or_default() += 1;
        }
    }
    by_kind
}

fn src(s: &str) -> Vec<(&'static str, String)> {
    vec![("source", s.to_owned())]
}

/// The file's text.
pub fn render(m: &RunMetrics<'_>) -> String {
    let mut findings = Family::new(
        "audit_verify_findings",
        "Findings of the last auditctl verify run, by store and finding kind (kinds beyond --max-findings per partition are in audit_verify_findings_dropped).",
    );
    let mut dropped = Family::new(
        "audit_verify_findings_dropped",
        "Findings of the last run not kept (over --max-findings per partition), kind unknown.",
    );
    let mut events = Family::new(
        "audit_verify_events",
        "Records read by the last auditctl verify run, by store.",
    );
    let mut ok = Family::new(
        "audit_verify_ok",
        "1 if the last auditctl verify run found no integrity error in the store (pins and freshness included), else 0.",
    );
    let mut head = Family::new(
        "audit_verify_head_seq",
        "Seq of the verified chain head per store and partition, as of the last run.",
    );
    let mut age = Family::new(
        "audit_verify_newest_checkpoint_age_seconds",
        "Age of the newest validly signed checkpoint per store and partition at the last run (only with --keys).",
    );
    for s in &m.sources {
        for (kind, n) in count_findings(s) {
            findings.add(
                vec![("source", s.source.to_owned()), ("kind", kind)],
                n as f64,
            );
        }
        let lost: u64 = s.report.partitions.iter().map(|p| p.findings_dropped).sum();
        dropped.add(src(s.source), lost as f64);
        let read: u64 = s.report.partitions.iter().map(|p| p.events).sum();
        events.add(src(s.source), read as f64);
        ok.add(src(s.source), if s.report.ok { 1.0 } else { 0.0 });
        // A partition known only from a checkpoint or a pin has no verified head.
        for p in s.report.partitions.iter().filter(|p| p.last_seq.is_some()) {
            head.add(
                vec![
                    ("source", s.source.to_owned()),
                    ("partition", p.partition.to_string()),
                ],
                p.head_seq as f64,
            );
        }
        for p in s.freshness.iter().flat_map(|f| &f.partitions) {
            if let Some(a) = p.checkpoint_age_secs {
                age.add(
                    vec![
                        ("source", s.source.to_owned()),
                        ("partition", p.partition.to_string()),
                    ],
                    a as f64,
                );
            }
        }
    }
    if let Some(x) = m.cross_check {
        findings.add(
            vec![
                ("source", CROSS_CHECK_SOURCE.to_owned()),
                ("kind", kind_name(FindingKind::StoreDisagreement)),
            ],
            x.findings.len() as f64,
        );
        ok.add(src(CROSS_CHECK_SOURCE), if x.ok { 1.0 } else { 0.0 });
    }
    let mut last = Family::new(
        "audit_verify_last_run_timestamp_seconds",
        "Unix time at which the last auditctl verify run ended.",
    );
    let ts = m
        .finished
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    last.add(Vec::new(), ts);
    let mut duration = Family::new(
        "audit_verify_duration_seconds",
        "Wall time of the last auditctl verify run.",
    );
    duration.add(Vec::new(), m.duration.as_secs_f64());

    let mut out = String::new();
    for f in [
        &findings, &dropped, &events, &ok, &head, &age, &last, &duration,
    ] {
        if f.name == age.name && f.samples.is_empty() {
            // Unknown without --keys: no family rather than an empty one.
            continue;
        }
        f.write(&mut out);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use integrity::verify::{Finding, PartitionReport, Severity};

    /// Exhaustive on purpose: a new `FindingKind` fails to compile here until it is added to
    /// [`FINDING_KINDS`] (and so gets its zero series).
    fn position(k: FindingKind) -> usize {
        use FindingKind::*;
        match k {
            ModifiedEvent => 0,
            ModifiedHash => 1,
            BrokenLink => 2,
            MissingSeq => 3,
            InsertedEvent => 4,
            Reordered => 5,
            DuplicateSeq => 6,
            Fork => 7,
            TruncatedTail => 8,
            CheckpointMismatch => 9,
            BadCheckpointSignature => 10,
            UnknownKey => 11,
            KeyNotValidAt => 12,
            MalformedCheckpoint => 13,
            MalformedRecord => 14,
            GenesisMismatch => 15,
            SegmentReplaced => 16,
            SegmentWithoutManifest => 17,
            MalformedManifest => 18,
            MissingCheckpoint => 19,
            CheckpointBackdated => 20,
            StoreDisagreement => 21,
        }
    }

    #[test]
    fn finding_kinds_are_all_listed() {
        for (i, k) in FINDING_KINDS.iter().enumerate() {
            assert_eq!(position(*k), i, "{k:?}");
        }
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape_label(r#"a"b\c"#), r#"a\"b\\c"#);
        assert_eq!(escape_label("x\ny"), "x\\ny");
        assert_eq!(escape_label("plain_1"), "plain_1");
        let mut f = Family::new("m", "help with \\ and\nnewline");
        f.add(vec![("l", "q\"\\\n".to_owned())], 1.0);
        let mut out = String::new();
        f.write(&mut out);
        assert_eq!(
            out,
            "# HELP m help with \\\\ and\\nnewline\n# TYPE m gauge\nm{l=\"q\\\"\\\\\\n\"} 1\n"
        );
    }

    #[test]
    fn values_use_the_text_format_spelling() {
        assert_eq!(format_value(0.0), "0");
        assert_eq!(format_value(3.0), "3");
        assert_eq!(format_value(0.25), "0.25");
        assert_eq!(format_value(f64::NAN), "NaN");
        assert_eq!(format_value(f64::INFINITY), "+Inf");
        assert_eq!(format_value(f64::NEG_INFINITY), "-Inf");
        // No exponent notation for large timestamps.
        assert_eq!(format_value(1_764_521_059.5), "1764521059.5");
    }

    fn partition(p: i32, findings: Vec<FindingKind>) -> PartitionReport {
        PartitionReport {
            partition: p,
            first_seq: Some(1),
            last_seq: Some(40),
            events: 40,
            head_seq: 40,
            head: "00".repeat(32),
            sealed_through: Some(40),
            ok: findings.is_empty(),
            findings: findings
                .into_iter()
                .map(|kind| Finding {
                    partition: p,
                    seq: 17,
                    kind,
                    severity: Severity::Error,
                    event_id: None,
                    detail: String::new(),
                })
                .collect(),
            findings_dropped: 0,
        }
    }

    /// Sample lines by name and labels, every family with HELP and TYPE before its samples,
    /// each family contiguous.
    fn parse(text: &str) -> BTreeMap<String, f64> {
        let mut seen: Vec<String> = Vec::new();
        let mut out = BTreeMap::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let name = rest.split(' ').next().expect("name").to_owned();
                assert!(!seen.contains(&name), "{name} twice:\n{text}");
                seen.push(name);
                continue;
            }
            if line.starts_with('#') {
                continue;
            }
            let (series, v) = line.rsplit_once(' ').expect("value");
            let name = series.split('{').next().expect("name");
            assert_eq!(seen.last().map(String::as_str), Some(name), "{text}");
            out.insert(series.to_owned(), v.parse().expect("number"));
        }
        out
    }

    #[test]
    fn render_counts_findings_per_kind_and_marks_ok() {
        let clean = Report::new(vec![partition(0, vec![])]);
        let bad = Report::new(vec![
            partition(0, vec![]),
            partition(
                1,
                vec![FindingKind::ModifiedEvent, FindingKind::ModifiedEvent],
            ),
        ]);
        let anchors = AnchorReport {
            checked: 1,
            findings: Vec::new(),
            ok: true,
        };
        let m = RunMetrics {
            sources: vec![
                SourceMetrics {
                    source: "clickhouse",
                    report: &clean,
                    anchors: None,
                    freshness: None,
                },
                SourceMetrics {
                    source: "archive",
                    report: &bad,
                    anchors: Some(&anchors),
                    freshness: None,
                },
            ],
            cross_check: None,
            finished: SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_250),
            duration: Duration::from_millis(1500),
        };
        let text = render(&m);
        let s = parse(&text);
        let get = |k: &str| *s.get(k).unwrap_or_else(|| panic!("{k} missing:\n{text}"));
        assert_eq!(
            get(r#"audit_verify_findings{source="archive",kind="modified_event"}"#),
            2.0
        );
        assert_eq!(
            get(r#"audit_verify_findings{source="clickhouse",kind="modified_event"}"#),
            0.0
        );
        assert_eq!(
            get(r#"audit_verify_findings{source="archive",kind="rollback_below_trusted"}"#),
            0.0
        );
        // Pins were not checked against clickhouse here: their kinds are not claimed as 0.
        assert!(!text.contains(r#"source="clickhouse",kind="rollback_below_trusted""#));
        assert_eq!(get(r#"audit_verify_ok{source="clickhouse"}"#), 1.0);
        assert_eq!(get(r#"audit_verify_ok{source="archive"}"#), 0.0);
        assert_eq!(get(r#"audit_verify_events{source="archive"}"#), 80.0);
        assert_eq!(
            get(r#"audit_verify_head_seq{source="archive",partition="1"}"#),
            40.0
        );
        assert_eq!(
            get("audit_verify_last_run_timestamp_seconds"),
            1_700_000_000.25
        );
        assert_eq!(get("audit_verify_duration_seconds"), 1.5);
        // Without --keys the ages are unknown: no family at all.
        assert!(!text.contains("audit_verify_newest_checkpoint_age_seconds"));
    }

    #[test]
    fn cross_check_of_both_stores_is_its_own_source() {
        let clean = Report::new(vec![partition(0, vec![])]);
        let x = CrossCheck {
            compared: 40,
            only_clickhouse: 0,
            only_archive: 0,
            first_disagreement: None,
            findings: vec![partition(0, vec![FindingKind::StoreDisagreement]).findings[0].clone()],
            ok: false,
        };
        let one = |source| SourceMetrics {
            source,
            report: &clean,
            anchors: None,
            freshness: None,
        };
        let m = RunMetrics {
            sources: vec![one("clickhouse"), one("archive")],
            cross_check: Some(&x),
            finished: SystemTime::UNIX_EPOCH,
            duration: Duration::ZERO,
        };
        let text = render(&m);
        let s = parse(&text);
        assert_eq!(
            s[r#"audit_verify_findings{source="cross_check",kind="store_disagreement"}"#],
            1.0
        );
        assert_eq!(s[r#"audit_verify_ok{source="cross_check"}"#], 0.0);
        assert_eq!(s[r#"audit_verify_ok{source="archive"}"#], 1.0);
    }
}
