//! The command line of `auditctl hold`: the action and how the held events are selected
//! (a partition's seq range, or a query resolved in ClickHouse), with the stores it reaches.

use clap::{Args, ValueEnum};
use serde::Serialize;
use worker_runtime::kafka::KafkaArgs;

use crate::cli::{ArchiveStoreArgs, ClickHouseArgs, ReadArgs};
use crate::rehydrate::{parse_range, parse_time_us};

use super::selection::parse_query_term;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HoldAction {
    /// Set the legal hold on the covering objects, then record it in the chain.
    On,
    /// Release it, then record the release in the chain.
    Off,
    /// Report the legal-hold status of each covering object (changes nothing).
    Status,
}

#[derive(Debug, Clone, Args)]
pub struct HoldArgs {
    /// on, off, or status.
    #[arg(value_enum)]
    pub action: HoldAction,
    /// The partition whose archive objects to hold. With --query (or --from/--to): only the
    /// events of this partition.
    #[arg(long, required_unless_present_any = ["query", "from", "to"])]
    pub partition: Option<u32>,
    /// Seq range `A..B` (inclusive; `A..` = to the end). Default: the whole partition (the
    /// objects there now: segments archived later are not held).
    #[arg(long, visible_alias = "range", value_parser = parse_range, requires = "partition")]
    pub seq: Option<(i64, i64)>,
    /// Hold the events a case is about: `FIELD=VALUE`, resolved in ClickHouse to the
    /// (partition, seq) of every matching event. Fields: request_id, trace_id, target (the
    /// resource: target_id), target_type, actor (user, service or agent: actor_id),
    /// event_type, event_id, team, tenant. Repeat a field for any of several values; different
    /// fields must all match. Combines with --from/--to, --partition, --seq.
    #[arg(long = "query", value_name = "FIELD=VALUE", value_parser = parse_query_term)]
    pub query: Vec<(&'static str, String)>,
    /// With --query: only events at or after this event time (UTC: `2024-06-01`,
    /// `2024-06-01 10:00:00`, `2024-06-01T10:00:00Z`). Alone: every event from then on.
    #[arg(long, value_parser = parse_time_us)]
    pub from: Option<i64>,
    /// Only events before this event time (UTC, same forms).
    #[arg(long, value_parser = parse_time_us)]
    pub to: Option<i64>,
    /// Why (recorded in the chained event). Required for on/off.
    #[arg(long)]
    pub reason: Option<String>,
    /// The legal case or matter id (recorded in the chained event and the case register
    /// `_holds/<case>.json`). `off` releases only what no other case holds. Default: `on`
    /// derives `selection-<hash>` from the selection; `off` takes the one case that holds
    /// the selection.
    #[arg(long = "case")]
    pub case_id: Option<String>,
    /// Who sets or releases the hold (recorded in the event). Default: $USER.
    #[arg(long = "held-by", env = "AUDITCTL_HELD_BY")]
    pub held_by: Option<String>,
    /// Only list the covering objects; change and record nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Same as the `status` action: report each covering object's legal hold.
    #[arg(long)]
    pub check: bool,
    /// Print the outcome as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub reads: ReadArgs,
    #[command(flatten)]
    pub kafka: KafkaArgs,
    #[command(flatten)]
    pub archive: ArchiveStoreArgs,
    /// Do not flag the rows in ClickHouse (archive only): they then stay subject to
    /// sink-clickhouse's retention TTL. A --query is still resolved in ClickHouse.
    #[arg(long)]
    pub no_clickhouse: bool,
    /// How long to wait for ClickHouse to apply the flag mutation (seconds).
    #[arg(long, default_value_t = 300)]
    pub clickhouse_mutation_timeout_secs: u64,
    #[command(flatten)]
    pub clickhouse: ClickHouseArgs,
}

impl HoldArgs {
    /// The selection is resolved in ClickHouse (a query, or event times), not a seq range.
    pub fn is_query(&self) -> bool {
        !self.query.is_empty() || self.from.is_some() || self.to.is_some()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_command_line_takes_a_partition_or_a_query() {
        use clap::Parser;
        let parse = |args: &[&str]| {
            crate::Cli::try_parse_from(["auditctl", "hold"].iter().chain(args)).map(|c| {
                match c.command {
                    crate::Command::Hold(h) => h,
                    other => panic!("{other:?}"),
                }
            })
        };
        let h = parse(&["on", "--query", "request_id=r1", "--query", "actor=u"]).expect("query");
        assert!(h.is_query() && h.partition.is_none());
        assert_eq!(
            h.query,
            [("request_id", "r1".into()), ("actor_id", "u".into())]
        );
        let h = parse(&["status", "--partition", "2", "--range", "3..4"]).expect("range");
        assert!(!h.is_query());
        assert_eq!((h.partition, h.seq), (Some(2), Some((3, 4))));
        assert!(parse(&["on", "--from", "2024-06-01"])
            .expect("times")
            .is_query());
        assert!(
            parse(&["on"]).is_err(),
            "a partition or a query is required"
        );
        assert!(
            parse(&["on", "--seq", "1..2", "--query", "trace=t"]).is_err(),
            "--seq needs --partition"
        );
        assert!(parse(&["on", "--query", "colour=red"]).is_err());
    }
}
