//! What a hold selects, in ClickHouse's terms: `--query FIELD=VALUE` terms and event times
//! as a SQL condition whose values are all bound (a case's request id is never spliced into
//! SQL), the matched seqs grouped into runs, and the canonical JSON a hold records and is
//! named by (the same selection always gives the same text).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use schemas::segment;
use serde::{Deserialize, Serialize};

/// `--query` field names (and their aliases) and the events-table column each selects on.
/// Columns of the analysts' recipes (request_timeline, trace_timeline, resource_history,
/// user_activity), so a hold selects what the recipes show.
pub const QUERY_FIELDS: &[(&str, &str)] = &[
    ("request_id", "request_id"),
    ("request", "request_id"),
    ("trace_id", "trace_id"),
    ("trace", "trace_id"),
    ("target", "target_id"),
    ("target_id", "target_id"),
    ("resource", "target_id"),
    ("target_type", "target_type"),
    ("actor", "actor_id"),
    ("actor_id", "actor_id"),
    ("user", "actor_id"),
    ("event_type", "event_type"),
    ("type", "event_type"),
    ("event_id", "event_id"),
    ("team", "team_id"),
    ("team_id", "team_id"),
    ("tenant", "tenant_id"),
    ("tenant_id", "tenant_id"),
];

/// `FIELD=VALUE` of `--query`: the column and the value (exact match, never empty).
pub fn parse_query_term(s: &str) -> Result<(&'static str, String), String> {
    let (field, value) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?}: expected FIELD=VALUE, e.g. request_id=req-42"))?;
    let field = field.trim().to_ascii_lowercase();
    let column = QUERY_FIELDS
        .iter()
        .find(|(name, _)| *name == field)
        .map(|(_, c)| *c)
        .ok_or_else(|| {
            let names: Vec<&str> = QUERY_FIELDS.iter().map(|(n, _)| *n).collect();
            format!(
                "{s:?}: unknown field {field:?} (one of {})",
                names.join(", ")
            )
        })?;
    if value.is_empty() {
        return Err(format!("{s:?}: empty value"));
    }
    Ok((column, value.to_owned()))
}

/// A value bound to a `?` of a condition (escaped by the client, never spliced).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Bind {
    Str(String),
    Int(i64),
}

/// A SQL condition with its bound values, in `?` order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Cond {
    pub sql: String,
    pub binds: Vec<Bind>,
}

impl Cond {
    fn and(mut self, other: Cond) -> Cond {
        self.sql = format!("({}) AND ({})", self.sql, other.sql);
        self.binds.extend(other.binds);
        self
    }

    pub(super) fn bind_all(&self, mut q: clickhouse::query::Query) -> clickhouse::query::Query {
        for b in &self.binds {
            q = match b {
                Bind::Str(s) => q.bind(s.as_str()),
                Bind::Int(v) => q.bind(*v),
            };
        }
        q
    }
}

/// What a `--query` hold selects: events matching every field (any of a field's values),
/// within the event-time window, partition and seq range given.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HoldQuery {
    /// Column -> accepted values (deduplicated, sorted).
    pub terms: BTreeMap<&'static str, Vec<String>>,
    pub partition: Option<i32>,
    pub seq: Option<(i64, i64)>,
    /// Event time, microseconds: `from <= t < to`.
    pub from_us: Option<i64>,
    pub to_us: Option<i64>,
}

impl HoldQuery {
    pub fn new(
        terms: &[(&'static str, String)],
        partition: Option<i32>,
        seq: Option<(i64, i64)>,
        from_us: Option<i64>,
        to_us: Option<i64>,
    ) -> Self {
        let mut map: BTreeMap<&'static str, Vec<String>> = BTreeMap::new();
        for (c, v) in terms {
            map.entry(c).or_default().push(v.clone());
        }
        for v in map.values_mut() {
            v.sort();
            v.dedup();
        }
        HoldQuery {
            terms: map,
            partition,
            seq,
            from_us,
            to_us,
        }
    }

    /// The SQL condition (every value bound).
    pub fn condition(&self) -> Cond {
        let mut parts = Vec::new();
        let mut binds = Vec::new();
        for (column, values) in &self.terms {
            let marks = vec!["?"; values.len()].join(", ");
            parts.push(format!("{column} IN ({marks})"));
            binds.extend(values.iter().cloned().map(Bind::Str));
        }
        if let Some(p) = self.partition {
            parts.push("chain_partition = ?".to_owned());
            binds.push(Bind::Int(i64::from(p)));
        }
        if let Some((a, b)) = self.seq {
            parts.push("seq >= ?".to_owned());
            binds.push(Bind::Int(a));
            if b != i64::MAX {
                parts.push("seq <= ?".to_owned());
                binds.push(Bind::Int(b));
            }
        }
        if let Some(f) = self.from_us {
            parts.push("event_time_us >= ?".to_owned());
            binds.push(Bind::Int(f));
        }
        if let Some(t) = self.to_us {
            parts.push("event_time_us < ?".to_owned());
            binds.push(Bind::Int(t));
        }
        if parts.is_empty() {
            parts.push("1".to_owned());
        }
        Cond {
            sql: parts.join(" AND "),
            binds,
        }
    }

    /// The selection as JSON with sorted keys: what the chained event records, so the trail
    /// says what was held and why (times as RFC 3339 UTC).
    pub fn canonical(&self) -> serde_json::Value {
        let mut m = serde_json::Map::new();
        for (column, values) in &self.terms {
            m.insert((*column).to_owned(), serde_json::json!(values));
        }
        if let Some(p) = self.partition {
            m.insert("chain_partition".into(), serde_json::json!(p));
        }
        if let Some(r) = self.seq {
            m.insert("seq".into(), serde_json::json!(range_text(Some(r))));
        }
        if let Some(f) = self.from_us {
            m.insert("from".into(), serde_json::json!(rfc3339(f)));
        }
        if let Some(t) = self.to_us {
            m.insert("to".into(), serde_json::json!(rfc3339(t)));
        }
        serde_json::Value::Object(m)
    }
}

/// Microseconds since the epoch as RFC 3339 UTC (the raw number if out of range).
fn rfc3339(us: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(us) * 1000)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| us.to_string())
}

/// Sorted seqs grouped into runs of consecutive seqs (inclusive ranges).
pub fn seq_ranges(seqs: &[i64]) -> Vec<(i64, i64)> {
    let mut sorted = seqs.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let mut out: Vec<(i64, i64)> = Vec::new();
    for s in sorted {
        match out.last_mut() {
            Some((_, b)) if s.checked_sub(1) == Some(*b) => *b = s,
            _ => out.push((s, s)),
        }
    }
    out
}

/// `0:3..=4,7 1:2` (partition: ranges, a single seq alone).
pub fn ranges_text(ranges: &BTreeMap<i32, Vec<(i64, i64)>>) -> String {
    ranges
        .iter()
        .map(|(p, rs)| {
            let list: Vec<String> = rs
                .iter()
                .map(|&(a, b)| {
                    if a == b {
                        a.to_string()
                    } else {
                        format!("{a}..={b}")
                    }
                })
                .collect();
            format!("{p}:{}", list.join(","))
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// What a query selected, for the report and the event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QuerySelection {
    /// The selection (canonical JSON, keys sorted).
    pub query: serde_json::Value,
    /// Events (distinct partition, seq) matched in ClickHouse.
    pub matched: u64,
    /// The matched seqs per partition, as ranges of consecutive seqs.
    pub ranges: BTreeMap<i32, Vec<(i64, i64)>>,
    /// Matched events no archived segment holds yet (not archived: nothing of theirs to hold
    /// in the archive; their rows are flagged).
    pub unarchived: u64,
}

impl QuerySelection {
    /// SHA-256 (hex) of the matched `partition seq` pairs, one a line, in order.
    pub fn matched_sha256(&self) -> String {
        let mut listing = String::new();
        for (p, rs) in &self.ranges {
            for &(a, b) in rs {
                for s in a..=b {
                    let _ = writeln!(listing, "{p} {s}");
                }
            }
        }
        segment::sha256_hex(listing.as_bytes())
    }

    /// The rows the hold flags: the query's, bounded per partition by the seqs it matched
    /// (rows stored later with higher seqs were not resolved, so their objects are not held).
    pub fn row_condition(&self, q: &HoldQuery) -> Cond {
        let mut parts = Vec::new();
        let mut binds = Vec::new();
        for (p, rs) in &self.ranges {
            let (Some(first), Some(last)) = (rs.first(), rs.last()) else {
                continue;
            };
            parts.push("(chain_partition = ? AND seq >= ? AND seq <= ?)".to_owned());
            binds.extend([
                Bind::Int(i64::from(*p)),
                Bind::Int(first.0),
                Bind::Int(last.1),
            ]);
        }
        if parts.is_empty() {
            parts.push("0".to_owned());
        }
        q.condition().and(Cond {
            sql: parts.join(" OR "),
            binds,
        })
    }
}

pub(super) fn range_text(r: Option<(i64, i64)>) -> String {
    match r {
        None => "whole partition".to_owned(),
        Some((a, i64::MAX)) => format!("{a}.."),
        Some((a, b)) => format!("{a}..={b}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_terms_are_parsed_to_columns() {
        assert_eq!(
            parse_query_term("request_id=req=1"),
            Ok(("request_id", "req=1".to_owned()))
        );
        assert_eq!(
            parse_query_term("Resource=vm-7"),
            Ok(("target_id", "vm-7".into()))
        );
        assert_eq!(
            parse_query_term("user=alice"),
            Ok(("actor_id", "alice".into()))
        );
        assert_eq!(parse_query_term("type=x"), Ok(("event_type", "x".into())));
        assert!(parse_query_term("payload=x").is_err());
        assert!(parse_query_term("request_id=").is_err());
        assert!(parse_query_term("request_id").is_err());
    }

    #[test]
    fn a_query_binds_every_value_and_records_itself_canonically() {
        let q = HoldQuery::new(
            &[
                ("trace_id", "t' OR 1=1 --".to_owned()),
                ("request_id", "r2".to_owned()),
                ("request_id", "r1".to_owned()),
                ("request_id", "r2".to_owned()),
            ],
            Some(1),
            Some((5, i64::MAX)),
            Some(1_717_200_000_000_000),
            None,
        );
        let c = q.condition();
        assert_eq!(
            c.sql,
            "request_id IN (?, ?) AND trace_id IN (?) AND chain_partition = ? AND seq >= ? AND event_time_us >= ?"
        );
        assert!(!c.sql.contains("OR 1=1"), "values are bound, never spliced");
        assert_eq!(
            c.binds,
            [
                Bind::Str("r1".into()),
                Bind::Str("r2".into()),
                Bind::Str("t' OR 1=1 --".into()),
                Bind::Int(1),
                Bind::Int(5),
                Bind::Int(1_717_200_000_000_000),
            ]
        );
        assert_eq!(
            q.canonical().to_string(),
            r#"{"chain_partition":1,"from":"2024-06-01T00:00:00Z","request_id":["r1","r2"],"seq":"5..","trace_id":["t' OR 1=1 --"]}"#
        );
        let sel = QuerySelection {
            query: q.canonical(),
            matched: 3,
            ranges: BTreeMap::from([(1, vec![(5, 6), (9, 9)])]),
            unarchived: 0,
        };
        let rows = sel.row_condition(&q);
        assert!(rows
            .sql
            .ends_with("AND ((chain_partition = ? AND seq >= ? AND seq <= ?))"));
        assert_eq!(
            rows.binds[c.binds.len()..],
            [Bind::Int(1), Bind::Int(5), Bind::Int(9)]
        );
        assert_eq!(ranges_text(&sel.ranges), "1:5..=6,9");
        assert_eq!(
            sel.matched_sha256(),
            segment::sha256_hex(b"1 5\n1 6\n1 9\n")
        );
    }

    #[test]
    fn seqs_group_into_runs() {
        assert_eq!(seq_ranges(&[7, 3, 4, 4, 9, 8, 1]), [(1, 1), (3, 4), (7, 9)]);
        assert!(seq_ranges(&[]).is_empty());
    }
}
