//! `auditctl report <name> --from --to --format …`: reports over the report views that the
//! ClickHouse sink keeps with materialized views (migration 0020). A report is a list of
//! sections, each a `report_*` query recipe (so each section also runs alone with
//! `auditctl query`), plus charts drawn from sections in the HTML format.

use clap::{Args, ValueEnum};
use serde_json::Value;
use sink_clickhouse::queries;

use crate::cli::ClickHouseArgs;
use crate::error::Error;
use crate::output::{self, Chart, Format, Table};
use crate::query;
use crate::Outcome;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ReportName {
    /// Compliance summary: events over time, violations per team, approvals, failures.
    Compliance,
    /// Activity per day, team and actor.
    Activity,
    /// Policy violations and escalations, per team and listed.
    Violations,
    /// Deployments and cost estimates per team and cost center.
    Cost,
    /// Approvals and their latency.
    Approvals,
    /// Failures by component and error.
    Failures,
    /// AI activity: model, tokens, confidence.
    Ai,
}

/// A chart: bars from a section's `label` and `value` columns.
struct ChartSpec {
    title: &'static str,
    recipe: &'static str,
    label: &'static str,
    value: &'static str,
}

struct Spec {
    title: &'static str,
    /// (recipe, section title).
    sections: &'static [(&'static str, &'static str)],
    charts: &'static [ChartSpec],
}

const EVENTS_OVER_TIME: ChartSpec = ChartSpec {
    title: "Events per day",
    recipe: "report_events_per_day",
    label: "day",
    value: "events",
};
const VIOLATIONS_PER_TEAM: ChartSpec = ChartSpec {
    title: "Violations per team",
    recipe: "report_violations_by_team",
    label: "team_id",
    value: "violations",
};

fn spec(name: ReportName) -> Spec {
    match name {
        ReportName::Compliance => Spec {
            title: "Compliance summary",
            sections: &[
                ("report_events_per_day", "Events per day"),
                ("report_violations_by_team", "Violations per team"),
                ("report_approvals", "Approvals and latency"),
                ("report_failures", "Failures by component and error"),
            ],
            charts: &[EVENTS_OVER_TIME, VIOLATIONS_PER_TEAM],
        },
        ReportName::Activity => Spec {
            title: "Activity",
            sections: &[
                ("report_events_per_day", "Events per day"),
                ("report_activity", "Activity per day, team and actor"),
            ],
            charts: &[EVENTS_OVER_TIME],
        },
        ReportName::Violations => Spec {
            title: "Policy violations and escalations",
            sections: &[
                ("report_violations_by_team", "Violations per team"),
                ("report_violations", "Violations and escalations"),
            ],
            charts: &[VIOLATIONS_PER_TEAM],
        },
        ReportName::Cost => Spec {
            title: "Deployments and cost estimates",
            sections: &[(
                "report_cost",
                "Deployments and cost per team and cost center",
            )],
            charts: &[ChartSpec {
                title: "Estimated cost per team",
                recipe: "report_cost",
                label: "team_id",
                value: "estimated_cost",
            }],
        },
        ReportName::Approvals => Spec {
            title: "Approvals and latency",
            sections: &[("report_approvals", "Approvals and latency")],
            charts: &[],
        },
        ReportName::Failures => Spec {
            title: "Failures by component and error",
            sections: &[("report_failures", "Failures by component and error")],
            charts: &[],
        },
        ReportName::Ai => Spec {
            title: "AI activity",
            sections: &[("report_ai_activity", "AI activity per model")],
            charts: &[],
        },
    }
}

#[derive(Debug, Clone, Args)]
pub struct ReportArgs {
    /// Which report.
    #[arg(value_enum)]
    pub report: ReportName,
    /// Start (inclusive), UTC: `2024-06-01`, `2024-06-01 10:00:00` or `2024-06-01T10:00:00Z`.
    #[arg(long)]
    pub from: String,
    /// End (exclusive), UTC, same forms.
    #[arg(long)]
    pub to: String,
    /// Output format (HTML: one self-contained page with charts).
    #[arg(long, value_enum, env = "AUDITCTL_FORMAT", default_value = "table")]
    pub format: Format,
    #[command(flatten)]
    pub clickhouse: ClickHouseArgs,
}

/// Bars from `t`'s `label`/`value` columns (an empty label shows as "(none)").
fn chart(title: &str, t: &Table, label: &str, value: &str) -> Option<Chart> {
    let (l, v) = (t.col(label)?, t.col(value)?);
    let bars = t
        .rows
        .iter()
        .map(|r| {
            let name = match &r[l] {
                Value::String(s) if s.is_empty() => "(none)".to_owned(),
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            let n = match &r[v] {
                Value::Number(n) => n.as_f64().unwrap_or(0.0),
                Value::String(s) => s.parse().unwrap_or(0.0),
                _ => 0.0,
            };
            (name, n)
        })
        .collect();
    Some(Chart {
        title: title.to_owned(),
        bars,
    })
}

pub async fn run(args: &ReportArgs, out: &mut dyn std::io::Write) -> Result<Outcome, Error> {
    let spec = spec(args.report);
    let client = query::client(&args.clickhouse)?;
    let params = vec![
        ("from".to_owned(), args.from.clone()),
        ("to".to_owned(), args.to.clone()),
    ];
    let mut tables: Vec<(&str, Table)> = Vec::new();
    for (name, title) in spec.sections {
        let recipe = queries::recipe(name)
            .ok_or_else(|| Error::Usage(format!("report section {name} is not a recipe")))?;
        let mut t = query::run_recipe(&client, recipe, &params).await?;
        t.title = (*title).to_owned();
        tables.push((name, t));
    }
    let charts: Vec<Chart> = spec
        .charts
        .iter()
        .filter_map(|c| {
            let (_, t) = tables.iter().find(|(n, _)| *n == c.recipe)?;
            chart(c.title, t, c.label, c.value)
        })
        .collect();
    let title = format!("{} ({} to {})", spec.title, args.from, args.to);
    let tables: Vec<Table> = tables.into_iter().map(|(_, t)| t).collect();
    let text = output::render(args.format, &title, &tables, &charts);
    out.write_all(text.as_bytes())
        .map_err(Error::file("writing output to", "<stdout>"))?;
    Ok(Outcome::Ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_section_is_a_recipe_over_from_and_to() {
        for name in ReportName::value_variants() {
            let s = spec(*name);
            for (section, _) in s.sections {
                let r = queries::recipe(section).unwrap_or_else(|| panic!("{section}"));
                let params: Vec<String> = r
                    .header()
                    .expect("header")
                    .params
                    .into_iter()
                    .map(|p| p.name)
                    .collect();
                assert_eq!(params, vec!["from", "to"], "{section}");
            }
            for c in s.charts {
                assert!(
                    s.sections.iter().any(|(r, _)| *r == c.recipe),
                    "{}",
                    c.title
                );
            }
        }
    }
}
