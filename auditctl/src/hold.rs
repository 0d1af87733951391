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

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write;

use clap::{Args, ValueEnum};
use futures::{StreamExt, TryStreamExt};
use md5::{Digest as _, Md5};
use object_store::ObjectStore;
use schemas::segment::{self, parse_key, ObjectKind, CHECKPOINT_SUFFIX, SEQ_WIDTH};
use schemas::AuditEvent;
use serde::{Deserialize, Serialize};
use worker_runtime::kafka::KafkaArgs;
use worker_runtime::object_store::signed::{self, s3_generic, xml_text, SendError, SignedS3};
use worker_runtime::object_store::{build_store, Access};

use crate::archive::store_config_error;
use crate::cli::{ArchiveStoreArgs, ClickHouseArgs, ReadArgs};
use crate::erase::{client, events_table, operator_event, publish, who, OperatorEvent, Published};
use crate::error::Error;
use crate::reads::Reads;
use crate::rehydrate::{parse_range, parse_time_us};
use crate::Outcome;

/// Event type of a hold set.
pub const HOLD_SET_EVENT_TYPE: &str = "audit.legal_hold.set";
/// Event type of a hold released.
pub const HOLD_RELEASED_EVENT_TYPE: &str = "audit.legal_hold.released";
/// Attributes of the hold events.
pub const ATTR_PARTITION: &str = "audit.legal_hold.partition";
pub const ATTR_SEQ_RANGE: &str = "audit.legal_hold.seq_range";
pub const ATTR_COVERED: &str = "audit.legal_hold.covered_seq_range";
pub const ATTR_CASE: &str = "audit.legal_hold.case_id";
pub const ATTR_OBJECTS: &str = "audit.legal_hold.objects";
pub const ATTR_SEGMENTS: &str = "audit.legal_hold.segments";
pub const ATTR_MANIFESTS: &str = "audit.legal_hold.manifests";
pub const ATTR_CHECKPOINTS: &str = "audit.legal_hold.checkpoints";
pub const ATTR_FAILED: &str = "audit.legal_hold.failed";
pub const ATTR_ARCHIVE: &str = "audit.legal_hold.archive";
/// SHA-256 (hex) of the sorted object keys, one a line: which objects, without listing them.
pub const ATTR_OBJECTS_SHA256: &str = "audit.legal_hold.objects_sha256";
/// A query hold: the selection as JSON (keys sorted), e.g. `{"request_id":["req-42"]}`.
pub const ATTR_QUERY: &str = "audit.legal_hold.query";
/// A query hold: events it matched in ClickHouse.
pub const ATTR_MATCHED: &str = "audit.legal_hold.matched_events";
/// A query hold: the matched seqs, `partition:ranges` (`0:3..=4,7 1:2`), cut past 8 KiB.
pub const ATTR_MATCHED_RANGES: &str = "audit.legal_hold.matched_seq_ranges";
/// A query hold: SHA-256 (hex) of the matched `partition seq` pairs, one a line, in order.
pub const ATTR_MATCHED_SHA256: &str = "audit.legal_hold.matched_sha256";
/// A query hold: matched events no archived segment holds yet.
pub const ATTR_UNARCHIVED: &str = "audit.legal_hold.unarchived_events";
/// `rehydrate --hold`: rows it loaded into ClickHouse (already flagged) before the hold.
pub const ATTR_REHYDRATED: &str = "audit.legal_hold.rehydrated_rows";
/// ClickHouse: `<database>.<table>` whose rows were flagged, or `skipped` / `failed: …`.
pub const ATTR_CLICKHOUSE: &str = "audit.legal_hold.clickhouse";
/// ClickHouse: rows of the range flagged held (on) or released (off).
pub const ATTR_CLICKHOUSE_ROWS: &str = "audit.legal_hold.clickhouse_rows";
/// The ClickHouse column that spares a row from retention TTL (sink-clickhouse 0007).
pub const HOLD_COLUMN: &str = "legal_hold";

/// Concurrent legal-hold requests.
const PARALLEL: usize = 8;

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

    fn bind_all(&self, mut q: clickhouse::query::Query) -> clickhouse::query::Query {
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

/// Longest `audit.legal_hold.matched_seq_ranges` text recorded; past it the text is cut (the
/// exact set is `audit.legal_hold.matched_sha256`).
const MAX_RANGES_TEXT: usize = 8 * 1024;

/// What an archive object is, for the covering set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Segment,
    Manifest,
    Checkpoint,
}

/// One covering object: its key relative to the archive root, and the seqs it holds (a
/// checkpoint: its seq twice).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Covered {
    pub key: String,
    pub partition: i32,
    pub kind: Kind,
    pub first_seq: i64,
    pub last_seq: i64,
}

/// The seq of a checkpoint object `checkpoints/chain=<p>/<seq:020>-<key id>[@t<time>].json`
/// of `partition`.
fn checkpoint_seq(key: &str, partition: i32) -> Option<i64> {
    let rest = key.strip_prefix(&segment::checkpoint_prefix(partition))?;
    if !rest.ends_with(CHECKPOINT_SUFFIX) || rest.contains('/') {
        return None;
    }
    let digits = rest.get(..SEQ_WIDTH)?;
    if !digits.bytes().all(|b| b.is_ascii_digit()) || rest.as_bytes().get(SEQ_WIDTH) != Some(&b'-')
    {
        return None;
    }
    digits.parse().ok()
}

/// The objects covering `range` of `partition` (`None`: the whole partition), from the keys
/// listed under the partition's segment folder and its checkpoint folder. Checkpoints that
/// seal the range are those at seqs `A..=S`, S the first checkpoint seq at or after B: each
/// signs (the tree of) every record up to its seq, so S is the one a verification of B needs.
pub fn covering(
    segment_keys: &[String],
    checkpoint_keys: &[String],
    partition: i32,
    range: Option<(i64, i64)>,
) -> Vec<Covered> {
    let r = range.unwrap_or((i64::MIN, i64::MAX));
    covering_ranges(segment_keys, checkpoint_keys, partition, &[r])
}

/// Sorted, overlapping or adjacent ranges merged.
fn merged(ranges: &[(i64, i64)]) -> Vec<(i64, i64)> {
    let mut v: Vec<(i64, i64)> = ranges.iter().copied().filter(|(a, b)| a <= b).collect();
    v.sort_unstable();
    let mut out: Vec<(i64, i64)> = Vec::new();
    for (a, b) in v {
        match out.last_mut() {
            Some((_, e)) if a <= e.saturating_add(1) => *e = (*e).max(b),
            _ => out.push((a, b)),
        }
    }
    out
}

/// [`covering`] of several ranges of one partition: the union of each range's covering
/// objects, each object once (a query's matched seqs, grouped by [`seq_ranges`]).
pub fn covering_ranges(
    segment_keys: &[String],
    checkpoint_keys: &[String],
    partition: i32,
    ranges: &[(i64, i64)],
) -> Vec<Covered> {
    let ranges = merged(ranges);
    // Does [first, last] meet a range? Ranges are sorted and disjoint, so their ends are too.
    let meets = |first: i64, last: i64| {
        let i = ranges.partition_point(|r| r.1 < first);
        ranges.get(i).is_some_and(|r| r.0 <= last)
    };
    let mut out = Vec::new();
    for k in segment_keys {
        let Some((key, kind)) = parse_key(k) else {
            continue;
        };
        if key.partition != partition || !meets(key.first_seq, key.last_seq) {
            continue;
        }
        out.push(Covered {
            key: k.clone(),
            partition,
            kind: match kind {
                ObjectKind::Segment => Kind::Segment,
                ObjectKind::Manifest => Kind::Manifest,
            },
            first_seq: key.first_seq,
            last_seq: key.last_seq,
        });
    }
    let mut cps: Vec<(i64, &String)> = checkpoint_keys
        .iter()
        .filter_map(|k| checkpoint_seq(k, partition).map(|s| (s, k)))
        .collect();
    cps.sort();
    // Per range A..B: the checkpoints at A..=S, S the first checkpoint seq >= B (none: to the
    // end, as nothing seals the range yet).
    let mut take = vec![false; cps.len()];
    for &(a, b) in &ranges {
        let from = cps.partition_point(|(s, _)| *s < a);
        let seal = cps
            .get(cps.partition_point(|(s, _)| *s < b))
            .map_or(i64::MAX, |(s, _)| *s);
        let to = cps.partition_point(|(s, _)| *s <= seal);
        for t in take.iter_mut().take(to).skip(from) {
            *t = true;
        }
    }
    for ((s, k), taken) in cps.into_iter().zip(take) {
        if taken {
            out.push(Covered {
                key: k.clone(),
                partition,
                kind: Kind::Checkpoint,
                first_seq: s,
                last_seq: s,
            });
        }
    }
    out.sort_by(|x, y| (x.first_seq, x.kind, &x.key).cmp(&(y.first_seq, y.kind, &y.key)));
    out
}

/// How many seqs of `ranges` no segment of `partition` holds (not archived yet).
pub fn unarchived(segment_keys: &[String], partition: i32, ranges: &[(i64, i64)]) -> u64 {
    let segs: Vec<(i64, i64)> = segment_keys
        .iter()
        .filter_map(|k| parse_key(k))
        .filter(|(key, kind)| key.partition == partition && *kind == ObjectKind::Segment)
        .map(|(key, _)| (key.first_seq, key.last_seq))
        .collect();
    let segs = merged(&segs);
    let mut missing = 0u64;
    for &(a, b) in &merged(ranges) {
        let mut held = 0i64;
        for &(f, l) in &segs {
            let (lo, hi) = (a.max(f), b.min(l));
            if lo <= hi {
                held = held.saturating_add(hi - lo + 1);
            }
        }
        let len = b.saturating_sub(a).saturating_add(1);
        missing = missing.saturating_add(u64::try_from(len - held).unwrap_or(0));
    }
    missing
}

/// The request body of PUT `?legal-hold`.
pub fn legal_hold_body(on: bool) -> String {
    format!(
        "<LegalHold xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><Status>{}</Status></LegalHold>",
        if on { "ON" } else { "OFF" }
    )
}

/// An S3 error as an object store error, so that `Reads` retries it for the same reasons as
/// every other archive request (5xx, 408/429 and network errors: yes; other 4xx: no).
fn s3_error(doing: String, message: String) -> Error {
    Error::ObjectStore {
        doing,
        source: s3_generic(message),
    }
}

/// The archive's S3 bucket: legal holds need one.
fn open_bucket(args: &ArchiveStoreArgs) -> Result<SignedS3, Error> {
    let bucket = SignedS3::open(args).map_err(store_config_error)?;
    bucket.ok_or_else(|| {
        Error::Usage(format!(
            "a legal hold needs an S3 archive (--archive-url s3://bucket[/prefix]), not {:?}",
            args.archive_url.trim()
        ))
    })
}

/// A request that got no answer, in the words `hold` reports it (the credential provider's
/// error is named as such; the rest as the HTTP stack words them).
fn send_failure(e: SendError) -> String {
    match e {
        SendError::Credentials(e) => format!("S3 credentials: {e}"),
        SendError::Header { source, .. } => source.to_string(),
        SendError::Send(e) | SendError::Read(e) => e.to_string(),
        e @ SendError::Url { .. } => e.to_string(),
    }
}

/// One signed `?legal-hold` request on `key`; a body (PUT) goes with the integrity header S3
/// requires on PutObjectLegalHold.
async fn send_hold(
    bucket: &SignedS3,
    method: http::Method,
    key: &str,
    body: Option<String>,
) -> Result<(http::StatusCode, String), String> {
    let headers = match &body {
        Some(b) => vec![
            (
                "content-md5",
                base64::Engine::encode(
                    &base64::engine::general_purpose::STANDARD,
                    Md5::digest(b.as_bytes()),
                ),
            ),
            ("content-type", "application/xml".to_owned()),
        ],
        None => Vec::new(),
    };
    bucket
        .send(
            method,
            Some(key),
            "legal-hold=",
            &headers,
            body.map(bytes::Bytes::from),
        )
        .await
        .map_err(send_failure)
}

/// Sets or clears the legal hold of the current version of `key`.
async fn put_hold(bucket: &SignedS3, key: &str, on: bool) -> Result<(), Error> {
    let doing = format!("setting the legal hold of {key}");
    let (status, body) = send_hold(bucket, http::Method::PUT, key, Some(legal_hold_body(on)))
        .await
        .map_err(|e| s3_error(doing.clone(), e))?;
    if status.is_success() {
        return Ok(());
    }
    Err(s3_error(doing, non_2xx(status, &body)))
}

/// The legal hold of the current version of `key`: `ON`, `OFF`, or `none` (never set).
async fn get_hold(bucket: &SignedS3, key: &str) -> Result<String, Error> {
    let doing = format!("reading the legal hold of {key}");
    let (status, body) = send_hold(bucket, http::Method::GET, key, None)
        .await
        .map_err(|e| s3_error(doing.clone(), e))?;
    if status.is_success() {
        return xml_text(&body, "Status")
            .map(str::to_owned)
            .ok_or_else(|| s3_error(doing, format!("no <Status> in the answer: {body}")));
    }
    if xml_text(&body, "Code") == Some("NoSuchObjectLegalHold") {
        return Ok("none".to_owned());
    }
    Err(s3_error(doing, non_2xx(status, &body)))
}

/// An S3 error answer in the object_store client's words (which `Reads` classifies), with a
/// hint when the bucket cannot hold.
fn non_2xx(status: http::StatusCode, body: &str) -> String {
    let code = xml_text(body, "Code").unwrap_or("");
    let message = xml_text(body, "Message").unwrap_or("");
    let hint = if code == "InvalidRequest" || message.contains("Object Lock") {
        " (legal hold needs a bucket created with Object Lock enabled)"
    } else {
        ""
    };
    format!("{}{hint}", signed::non_2xx(status, body))
}

/// The range's rows in ClickHouse.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ClickHouseHold {
    /// `<database>.<table>`.
    pub table: String,
    /// Rows of the range there.
    pub rows: u64,
    /// Of those, flagged `legal_hold = 1`.
    pub held: u64,
}

/// The rows of `partition`'s `range` (`None`: all of them), as a SQL condition (integers
/// only: nothing to escape).
pub fn range_condition(partition: i32, range: Option<(i64, i64)>) -> String {
    match range {
        None => format!("chain_partition = {partition}"),
        Some((a, i64::MAX)) => format!("chain_partition = {partition} AND seq >= {a}"),
        Some((a, b)) => format!("chain_partition = {partition} AND seq >= {a} AND seq <= {b}"),
    }
}

/// The mutation that flags (`on`) or clears the range's rows; only rows not already so.
pub fn hold_mutation(table: &str, partition: i32, range: Option<(i64, i64)>, on: bool) -> String {
    hold_mutation_where(table, &range_condition(partition, range), on)
}

/// The mutation that flags (`on`) or clears the rows of `condition`; only rows not already so.
pub fn hold_mutation_where(table: &str, condition: &str, on: bool) -> String {
    let v = u8::from(on);
    format!("ALTER TABLE {table} UPDATE {HOLD_COLUMN} = {v} WHERE ({condition}) AND {HOLD_COLUMN} != {v}")
}

#[derive(Debug, clickhouse::Row, serde::Deserialize)]
struct Counts {
    rows: u64,
    held: u64,
}

/// Counts the range's rows and held rows; with `set`, first flags (`Some((true, rows))`) or
/// clears (`Some((false, rows))`: `off` clears only what no other case holds) rows and waits until ClickHouse has applied the mutation (18.16 runs mutations in the
/// background and has no `mutations_sync`).
async fn clickhouse_hold(
    a: &HoldArgs,
    rows: &Cond,
    set: Option<(bool, &Cond)>,
) -> Result<ClickHouseHold, Error> {
    let ch = &a.clickhouse;
    let table = events_table(ch)?;
    // A release names every other case's row ranges: allow long conditions (default 256 KiB).
    let c = client(ch).with_setting("max_query_size", "16777216");
    let qualified = format!("{}.{table}", ch.clickhouse_database);
    let has_column: u64 = c
        .query("SELECT count() FROM system.columns WHERE database = ? AND table = ? AND name = ?")
        .bind(&ch.clickhouse_database)
        .bind(table)
        .bind(HOLD_COLUMN)
        .fetch_one()
        .await
        .map_err(Error::ch(format!("looking up {qualified}.{HOLD_COLUMN}")))?;
    if has_column == 0 {
        return Err(Error::Service(format!(
            "{qualified} has no {HOLD_COLUMN} column: start sink-clickhouse once (its migration 0007 adds it), or pass --no-clickhouse to hold the archive only"
        )));
    }
    if let Some((on, target)) = set {
        target
            .bind_all(c.query(&hold_mutation_where(table, &target.sql, on)))
            .execute()
            .await
            .map_err(Error::ch(format!("flagging the held rows of {qualified}")))?;
        // Done when no flag mutation of the table is pending (a count of unflagged rows could
        // stay above zero for ever while the sink keeps storing rows of an open range).
        let deadline = std::time::Instant::now()
            + std::time::Duration::from_secs(a.clickhouse_mutation_timeout_secs);
        loop {
            let pending: u64 = c
                .query(
                    "SELECT count() FROM system.mutations WHERE database = ? AND table = ?                      AND is_done = 0 AND position(command, ?) > 0",
                )
                .bind(&ch.clickhouse_database)
                .bind(table)
                .bind(HOLD_COLUMN)
                .fetch_one()
                .await
                .map_err(Error::ch(format!("waiting for the mutation of {qualified}")))?;
            if pending == 0 {
                break;
            }
            if std::time::Instant::now() >= deadline {
                return Err(Error::Service(format!(
                    "the {HOLD_COLUMN} mutation of {qualified} is not applied after {} s                      (see system.mutations); run the same command again",
                    a.clickhouse_mutation_timeout_secs
                )));
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    }
    let counts: Counts = rows
        .bind_all(c.query(&format!(
            "SELECT count() AS rows, countIf({HOLD_COLUMN} = 1) AS held FROM {table} WHERE {}",
            rows.sql
        )))
        .fetch_one()
        .await
        .map_err(Error::ch(format!("counting the held rows of {qualified}")))?;
    Ok(ClickHouseHold {
        table: qualified,
        rows: counts.rows,
        held: counts.held,
    })
}

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

fn range_text(r: Option<(i64, i64)>) -> String {
    match r {
        None => "whole partition".to_owned(),
        Some((a, i64::MAX)) => format!("{a}.."),
        Some((a, b)) => format!("{a}..={b}"),
    }
}

fn counts_of(objects: &[Covered]) -> BTreeMap<String, u64> {
    let mut c = BTreeMap::new();
    for k in ["segment", "manifest", "checkpoint"] {
        c.insert(format!("{k}s"), 0);
    }
    for o in objects {
        let k = match o.kind {
            Kind::Segment => "segments",
            Kind::Manifest => "manifests",
            Kind::Checkpoint => "checkpoints",
        };
        *c.entry(k.to_owned()).or_default() += 1;
    }
    c
}

/// What the hold event says.
#[derive(Debug)]
pub struct HoldEvent<'a> {
    pub on: bool,
    pub operator: &'a str,
    pub reason: &'a str,
    pub case_id: Option<&'a str>,
    pub partition: u32,
    pub range: Option<(i64, i64)>,
    /// A query hold: what it selected (then `partition` and `range` are not used).
    pub query: Option<&'a QuerySelection>,
    /// More attributes (`rehydrate --hold` says how many rows it loaded).
    pub extra: &'a [(&'static str, String)],
    /// The objects whose hold changed.
    pub objects: &'a [Covered],
    pub failed: u64,
    pub archive: &'a str,
    /// What happened in ClickHouse: the rows flagged, or why not.
    pub clickhouse: ClickHouseOutcome<'a>,
}

/// The ClickHouse side of a hold, for its event.
#[derive(Debug, Clone, Copy)]
pub enum ClickHouseOutcome<'a> {
    Skipped,
    Failed,
    Done(&'a ClickHouseHold),
}

/// The chained event of a hold set or released: governance, by the operator, about the
/// partition's range.
pub fn hold_event(h: &HoldEvent<'_>) -> AuditEvent {
    let counts = counts_of(h.objects);
    // Per partition, the seqs the objects hold: `a..=b`, or `p:a..=b …` for a query.
    let mut spans: BTreeMap<i32, (i64, i64)> = BTreeMap::new();
    for o in h.objects {
        let e = spans
            .entry(o.partition)
            .or_insert((o.first_seq, o.last_seq));
        *e = (e.0.min(o.first_seq), e.1.max(o.last_seq));
    }
    let covered = match (h.query, spans.len()) {
        (None, 1) => spans
            .values()
            .map(|(a, b)| format!("{a}..={b}"))
            .collect::<String>(),
        (None, _) => String::new(),
        (Some(_), _) => spans
            .iter()
            .map(|(p, (a, b))| format!("{p}:{a}..={b}"))
            .collect::<Vec<_>>()
            .join(" "),
    };
    let mut keys: Vec<&str> = h.objects.iter().map(|o| o.key.as_str()).collect();
    keys.sort_unstable();
    let listing: String = keys.iter().map(|k| format!("{k}\n")).collect();
    let count = |k: &str| counts.get(k).copied().unwrap_or(0).to_string();
    let (partition, seq_range) = match h.query {
        None => (h.partition.to_string(), range_text(h.range)),
        Some(q) => (
            q.ranges
                .keys()
                .map(i32::to_string)
                .collect::<Vec<_>>()
                .join(","),
            "query".to_owned(),
        ),
    };
    let mut attributes = vec![
        (ATTR_ARCHIVE, h.archive.to_owned()),
        (ATTR_CHECKPOINTS, count("checkpoints")),
        (ATTR_COVERED, covered),
        (ATTR_FAILED, h.failed.to_string()),
        (ATTR_MANIFESTS, count("manifests")),
        (ATTR_OBJECTS, h.objects.len().to_string()),
        (ATTR_OBJECTS_SHA256, segment::sha256_hex(listing.as_bytes())),
        (ATTR_PARTITION, partition),
        (ATTR_SEGMENTS, count("segments")),
        (ATTR_SEQ_RANGE, seq_range),
    ];
    if let Some(q) = h.query {
        let mut ranges = ranges_text(&q.ranges);
        if ranges.len() > MAX_RANGES_TEXT {
            let mut cut = MAX_RANGES_TEXT;
            while !ranges.is_char_boundary(cut) {
                cut -= 1;
            }
            ranges.truncate(cut);
            ranges.push_str(" …(cut; the exact set: audit.legal_hold.matched_sha256)");
        }
        attributes.extend([
            (ATTR_QUERY, q.query.to_string()),
            (ATTR_MATCHED, q.matched.to_string()),
            (ATTR_MATCHED_RANGES, ranges),
            (ATTR_MATCHED_SHA256, q.matched_sha256()),
            (ATTR_UNARCHIVED, q.unarchived.to_string()),
        ]);
    }
    attributes.extend(h.extra.iter().cloned());
    if let Some(c) = h.case_id.filter(|c| !c.is_empty()) {
        attributes.push((ATTR_CASE, c.to_owned()));
    }
    match h.clickhouse {
        ClickHouseOutcome::Skipped => attributes.push((ATTR_CLICKHOUSE, "skipped".to_owned())),
        ClickHouseOutcome::Failed => attributes.push((ATTR_CLICKHOUSE, "failed".to_owned())),
        ClickHouseOutcome::Done(ch) => {
            attributes.push((ATTR_CLICKHOUSE, ch.table.clone()));
            // on: the rows now held; off: the rows now free.
            let n = if h.on { ch.held } else { ch.rows - ch.held };
            attributes.push((ATTR_CLICKHOUSE_ROWS, n.to_string()));
        }
    }
    let (target_type, target) = match h.query {
        None => (
            "archive_range",
            format!("chain={}/{}", h.partition, range_text(h.range)),
        ),
        Some(q) => ("archive_selection", format!("query:{}", q.query)),
    };
    let mut e = operator_event(OperatorEvent {
        id_prefix: "legal-hold",
        event_type: if h.on {
            HOLD_SET_EVENT_TYPE
        } else {
            HOLD_RELEASED_EVENT_TYPE
        },
        verb: if h.on { "hold" } else { "release" },
        description: match (h.on, h.query.is_some()) {
            (true, false) => {
                "S3 Object Lock legal hold set on the archive objects of the range; its \
                 ClickHouse rows are exempt from retention TTL"
            }
            (false, false) => {
                "S3 Object Lock legal hold released on the archive objects of the range; its \
                 ClickHouse rows are subject to retention TTL again"
            }
            (true, true) => {
                "S3 Object Lock legal hold set on the archive objects holding the events the \
                 query selects; their ClickHouse rows are exempt from retention TTL"
            }
            (false, true) => {
                "S3 Object Lock legal hold released on the archive objects holding the events \
                 the query selects; their ClickHouse rows are subject to retention TTL again"
            }
        },
        operator: h.operator,
        target_type,
        target_id: &target,
        reason: h.reason,
        attributes,
    });
    // A legal hold is not a privacy action: no regulation is implied.
    e.compliance = None;
    e
}

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
        match publish(&a.kafka, &event).await {
            Ok(published) => {
                report.recorded = Some(Recorded {
                    event_id: event.event_id.clone(),
                    event_type: event.event_type.clone(),
                    published,
                })
            }
            Err(e) => record_error = Some(e),
        }
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

/// What `off` works with, read once by [`execute`].
struct OffContext<'a> {
    reads: &'a Reads,
    bucket: &'a SignedS3,
    describe: &'a str,
    registers: &'a [CaseRegister],
    selection: &'a serde_json::Value,
    operator: Option<&'a str>,
    reason: &'a str,
    changes: bool,
}

/// `off`: releases one registered hold (the selection's, of the case) except what any other
/// registered hold covers; records the release with what was kept and for which cases; then
/// drops the hold from the case's register.
async fn release(
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
        match publish(&a.kafka, &event).await {
            Ok(published) => {
                report.recorded = Some(Recorded {
                    event_id: event.event_id.clone(),
                    event_type: event.event_type.clone(),
                    published,
                })
            }
            Err(e) => record_error = Some(e),
        }
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

// ---- the case register ------------------------------------------------------------------------
//
// An S3 legal hold is one ON/OFF switch per object version and the ClickHouse flag one bit per
// row: neither says WHO holds. The register says it: one JSON object per case under
// `_holds/` in the archive (beside what is held), listing each hold of the case (its
// selection, the objects it holds, the (partition, seq) ranges of the rows it flagged). A
// release only switches off what no other registered hold covers. The register is
// bookkeeping for the tool; the chain is the record.

/// Reserved folder of the case register, relative to the archive root.
pub const REGISTER_DIR: &str = "_holds";
/// Version of the register format.
pub const REGISTER_FORMAT: u32 = 1;
/// `off`: objects of the released hold kept ON because another case holds them.
pub const ATTR_KEPT_OBJECTS: &str = "audit.legal_hold.kept_objects";
/// `off`: which cases kept them, `CASE:objects` space-separated.
pub const ATTR_KEPT_BY: &str = "audit.legal_hold.kept_by_cases";
/// `off`: rows of the released hold still flagged because another case holds them.
pub const ATTR_KEPT_ROWS: &str = "audit.legal_hold.kept_clickhouse_rows";
/// `true` when no `--case` was given and the case id was derived from the selection.
pub const ATTR_CASE_DERIVED: &str = "audit.legal_hold.case_id_derived";
/// Longest case id accepted.
const MAX_CASE_LEN: usize = 200;

/// Per partition, inclusive seq ranges (`(i64::MIN, i64::MAX)`: the whole partition).
pub type RowRanges = BTreeMap<i32, Vec<(i64, i64)>>;

/// One hold of a case: what `hold on` over one selection held.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RegisteredHold {
    /// The selection, canonical (keys sorted): `hold off` names the hold by it.
    pub selection: serde_json::Value,
    pub reason: String,
    pub held_by: String,
    /// RFC 3339 UTC of the first `hold on` of this selection.
    pub held_at: String,
    /// The range selection given (partition, seq), for the release event.
    pub partition: Option<u32>,
    pub seq: Option<(i64, i64)>,
    /// A query selection: what it matched.
    pub query: Option<QuerySelection>,
    /// The archive objects set ON by this hold.
    pub objects: Vec<Covered>,
    /// The ClickHouse rows it flagged (empty with --no-clickhouse).
    pub rows: RowRanges,
}

/// `_holds/<case>.json`: the active holds of one case.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CaseRegister {
    pub format: u32,
    pub case_id: String,
    pub holds: Vec<RegisteredHold>,
}

impl CaseRegister {
    /// This register with `hold` added; a hold of the same selection is merged into (a rerun
    /// of `on`): the objects and rows of both, the first time, reason and holder kept.
    pub fn with_hold(mut self, hold: RegisteredHold) -> Self {
        match self
            .holds
            .iter_mut()
            .find(|h| h.selection == hold.selection)
        {
            Some(h) => {
                for o in hold.objects {
                    if !h.objects.iter().any(|x| x.key == o.key) {
                        h.objects.push(o);
                    }
                }
                h.objects.sort_by(|x, y| {
                    (x.partition, x.first_seq, x.kind, &x.key).cmp(&(
                        y.partition,
                        y.first_seq,
                        y.kind,
                        &y.key,
                    ))
                });
                for (p, rs) in hold.rows {
                    let e = h.rows.entry(p).or_default();
                    e.extend(rs);
                    *e = merged(e);
                }
                if hold.query.is_some() {
                    h.query = hold.query;
                }
            }
            None => self.holds.push(hold),
        }
        self
    }
}

/// The register key of a case (relative to the archive root). Characters outside
/// `[A-Za-z0-9._-]` become `_` and a hash of the id is added, so two ids never share a key;
/// the id itself is inside the object.
pub fn register_key(case_id: &str) -> String {
    let safe: String = case_id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if safe == case_id && !safe.starts_with('.') {
        format!("{REGISTER_DIR}/{safe}.json")
    } else {
        let h = segment::sha256_hex(case_id.as_bytes());
        format!("{REGISTER_DIR}/{safe}-{}.json", &h[..16])
    }
}

/// A `--case` as given: trimmed, not empty, no control characters, at most 200 characters.
pub fn check_case_id(case_id: &str) -> Result<String, Error> {
    let c = case_id.trim();
    if c.is_empty() || c.chars().count() > MAX_CASE_LEN || c.chars().any(char::is_control) {
        return Err(Error::Usage(format!(
            "--case {case_id:?}: a case id is 1 to {MAX_CASE_LEN} printable characters"
        )));
    }
    Ok(c.to_owned())
}

/// The case id of a hold given no `--case`: `selection-` and 16 hex digits of the SHA-256 of
/// the canonical selection, so the same selection always names the same case.
pub fn derived_case_id(selection: &serde_json::Value) -> String {
    let h = segment::sha256_hex(selection.to_string().as_bytes());
    format!("selection-{}", &h[..16])
}

/// The selection of the command line, canonical: a range `{"chain_partition":P,"seq":"A..=B"}`,
/// a query as [`HoldQuery::canonical`] (resolving it in ClickHouse is not needed to name it).
pub fn selection_of(a: &HoldArgs) -> serde_json::Value {
    if a.is_query() {
        let partition = a.partition.and_then(|p| i32::try_from(p).ok());
        HoldQuery::new(&a.query, partition, a.seq, a.from, a.to).canonical()
    } else {
        serde_json::json!({
            "chain_partition": a.partition,
            "seq": range_text(a.seq),
        })
    }
}

/// The rows of `ranges` as a SQL condition (integers only: nothing to escape).
pub fn rows_sql(ranges: &RowRanges) -> String {
    let mut parts = Vec::new();
    for (p, rs) in ranges {
        let rs = merged(rs);
        if rs.is_empty() {
            continue;
        }
        if rs.iter().any(|&(a, b)| a == i64::MIN && b == i64::MAX) {
            parts.push(format!("(chain_partition = {p})"));
            continue;
        }
        let seqs: Vec<String> = rs
            .iter()
            .map(|&(a, b)| match (a, b) {
                (i64::MIN, b) => format!("seq <= {b}"),
                (a, i64::MAX) => format!("seq >= {a}"),
                (a, b) if a == b => format!("seq = {a}"),
                (a, b) => format!("(seq >= {a} AND seq <= {b})"),
            })
            .collect();
        parts.push(format!(
            "(chain_partition = {p} AND ({}))",
            seqs.join(" OR ")
        ));
    }
    if parts.is_empty() {
        "0".to_owned()
    } else {
        parts.join(" OR ")
    }
}

/// Do two row sets share a (partition, seq)?
pub fn rows_meet(x: &RowRanges, y: &RowRanges) -> bool {
    x.iter().any(|(p, xs)| {
        y.get(p).is_some_and(|ys| {
            xs.iter()
                .any(|&(a, b)| ys.iter().any(|&(c, d)| a <= d && c <= b))
        })
    })
}

/// What releasing one hold does, given every other active hold (of other cases, and the
/// other selections of the same case).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Release {
    /// Objects no other hold covers: set OFF.
    pub release: Vec<Covered>,
    /// Objects another hold covers: left ON, with the cases holding them.
    pub kept: Vec<(Covered, Vec<String>)>,
    /// Per case, how many of the hold's objects it keeps ON.
    pub kept_by: BTreeMap<String, u64>,
    /// The rows to clear: the hold's, minus every other hold's.
    pub clear_rows_sql: String,
}

/// The release of `mine` against `others` (case id, hold): objects by set difference of
/// their keys, rows by excluding every other hold's ranges.
pub fn release_of(mine: &RegisteredHold, others: &[(&str, &RegisteredHold)]) -> Release {
    let mut r = Release::default();
    for o in &mine.objects {
        let mut by: Vec<String> = others
            .iter()
            .filter(|(_, h)| h.objects.iter().any(|x| x.key == o.key))
            .map(|(c, _)| (*c).to_owned())
            .collect();
        by.sort();
        by.dedup();
        if by.is_empty() {
            r.release.push(o.clone());
        } else {
            for c in &by {
                *r.kept_by.entry(c.clone()).or_default() += 1;
            }
            r.kept.push((o.clone(), by));
        }
    }
    let mut other_rows: RowRanges = BTreeMap::new();
    for (_, h) in others {
        for (p, rs) in &h.rows {
            other_rows.entry(*p).or_default().extend(rs.iter().copied());
        }
    }
    let mine_sql = rows_sql(&mine.rows);
    r.clear_rows_sql = if other_rows.values().all(Vec::is_empty) {
        mine_sql
    } else {
        format!("({mine_sql}) AND NOT ({})", rows_sql(&other_rows))
    };
    r
}

/// `B:3 C:1`.
fn kept_by_text(kept_by: &BTreeMap<String, u64>) -> String {
    kept_by
        .iter()
        .map(|(c, n)| format!("{c}:{n}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Which case an `off` releases: `--case` if given; else the one case holding this selection
/// (none: nothing to release; several: the operator must say which).
pub fn case_for_off(
    registers: &[CaseRegister],
    selection: &serde_json::Value,
    given: Option<&str>,
) -> Result<Option<String>, Error> {
    if let Some(c) = given {
        return Ok(Some(check_case_id(c)?));
    }
    let cases: Vec<&str> = registers
        .iter()
        .filter(|r| r.holds.iter().any(|h| &h.selection == selection))
        .map(|r| r.case_id.as_str())
        .collect();
    match cases.as_slice() {
        [] => Ok(None),
        [one] => Ok(Some((*one).to_owned())),
        many => Err(Error::Usage(format!(
            "several cases hold the selection {selection}: {}; say which with --case",
            many.join(", ")
        ))),
    }
}

/// GETs or PUTs or DELETEs a register object with the archive's signed client.
async fn register_request(
    bucket: &SignedS3,
    method: http::Method,
    key: &str,
    body: Option<String>,
) -> Result<(http::StatusCode, String), Error> {
    let doing = format!("{method} {key}");
    // Content-MD5: S3 wants it on any PUT to a bucket whose default retention applies.
    let headers = match &body {
        Some(b) => vec![
            (
                "content-md5",
                base64::Engine::encode(
                    &base64::engine::general_purpose::STANDARD,
                    Md5::digest(b.as_bytes()),
                ),
            ),
            ("content-type", "application/json".to_owned()),
        ],
        None => Vec::new(),
    };
    bucket
        .send(
            method,
            Some(key),
            "",
            &headers,
            body.map(bytes::Bytes::from),
        )
        .await
        .map_err(|e| s3_error(doing, send_failure(e)))
}

/// Every register of the archive (a listing, then each object).
async fn read_registers(
    bucket: &SignedS3,
    store: &dyn ObjectStore,
    reads: &Reads,
    describe: &str,
) -> Result<Vec<CaseRegister>, Error> {
    let keys = list(store, REGISTER_DIR, reads, describe).await?;
    let mut out = Vec::new();
    for key in keys.iter().filter(|k| k.ends_with(".json")) {
        let doing = format!("reading the hold register {key}");
        let got = reads
            .run(&doing, || async {
                let (status, body) = register_request(bucket, http::Method::GET, key, None).await?;
                if status == http::StatusCode::NOT_FOUND {
                    return Ok(None);
                }
                if !status.is_success() {
                    return Err(s3_error(doing.clone(), non_2xx(status, &body)));
                }
                Ok(Some(body))
            })
            .await?;
        // Gone between the listing and the read: released meanwhile.
        let Some(body) = got else { continue };
        let reg: CaseRegister = serde_json::from_str(&body).map_err(|e| {
            Error::Archive(format!(
                "the hold register {key} is not readable ({e}): fix or remove it by hand \
                 (the chain has every hold and release)"
            ))
        })?;
        out.push(reg);
    }
    out.sort_by(|x, y| x.case_id.cmp(&y.case_id));
    Ok(out)
}

/// Writes (some holds) or removes (none) a case's register.
async fn write_register(bucket: &SignedS3, reads: &Reads, reg: &CaseRegister) -> Result<(), Error> {
    let key = register_key(&reg.case_id);
    let doing = format!("writing the hold register {key}");
    let body = if reg.holds.is_empty() {
        None
    } else {
        Some(
            serde_json::to_string_pretty(reg)
                .map_err(|e| Error::Archive(format!("{doing}: {e}")))?,
        )
    };
    reads
        .run(&doing, || async {
            let method = if body.is_some() {
                http::Method::PUT
            } else {
                http::Method::DELETE
            };
            let (status, text) = register_request(bucket, method, &key, body.clone()).await?;
            // A DELETE of what is not there is done.
            if status.is_success() || (body.is_none() && status == http::StatusCode::NOT_FOUND) {
                Ok(())
            } else {
                Err(s3_error(doing.clone(), non_2xx(status, &text)))
            }
        })
        .await
}

/// A case and what of a selection it holds, for `status` and the reports.
#[derive(Debug, Clone, Serialize)]
pub struct CaseSummary {
    pub case_id: String,
    /// The selections of the case's holds.
    pub selections: Vec<serde_json::Value>,
    pub reasons: Vec<String>,
    pub held_by: Vec<String>,
    pub held_at: Vec<String>,
    /// Objects of this command's selection the case holds.
    pub objects: u64,
    /// Does the case hold rows of this command's selection?
    pub rows: bool,
}

/// The cases whose holds cover some of `objects` or `rows`.
fn cases_covering(
    registers: &[CaseRegister],
    objects: &[Covered],
    rows: &RowRanges,
) -> Vec<CaseSummary> {
    let mut out = Vec::new();
    for reg in registers {
        let keys: std::collections::BTreeSet<&str> = reg
            .holds
            .iter()
            .flat_map(|h| h.objects.iter().map(|o| o.key.as_str()))
            .collect();
        let n = objects
            .iter()
            .filter(|o| keys.contains(o.key.as_str()))
            .count() as u64;
        let meets = reg.holds.iter().any(|h| rows_meet(&h.rows, rows));
        if n == 0 && !meets {
            continue;
        }
        out.push(CaseSummary {
            case_id: reg.case_id.clone(),
            selections: reg.holds.iter().map(|h| h.selection.clone()).collect(),
            reasons: reg.holds.iter().map(|h| h.reason.clone()).collect(),
            held_by: reg.holds.iter().map(|h| h.held_by.clone()).collect(),
            held_at: reg.holds.iter().map(|h| h.held_at.clone()).collect(),
            objects: n,
            rows: meets,
        });
    }
    out
}

/// Now, RFC 3339 UTC.
fn now_rfc3339() -> String {
    let now = time::OffsetDateTime::now_utc();
    now.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| now.unix_timestamp().to_string())
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

    fn seg(p: i32, a: i64, b: i64) -> [String; 2] {
        let k = segment::SegmentKey::new(p, "2024-06-01", a, b).expect("key");
        [k.object_key(), k.manifest_key()]
    }

    #[test]
    fn covering_takes_the_intersecting_segments_and_the_sealing_checkpoints() {
        let mut segs: Vec<String> = [seg(0, 1, 10), seg(0, 11, 20), seg(0, 21, 30)]
            .into_iter()
            .flatten()
            .collect();
        segs.push("chain=0/date=2024-06-01/foreign.txt".into());
        let cps = vec![
            segment::checkpoint_key(0, 0, "k1"),
            segment::checkpoint_key(0, 10, "k1"),
            segment::checkpoint_key(0, 20, "k1"),
            segment::checkpoint_heartbeat_key(0, 20, "k1", 5),
            segment::checkpoint_key(0, 30, "k1"),
            segment::checkpoint_key(1, 20, "k1"),
        ];
        let got = covering(&segs, &cps, 0, Some((12, 15)));
        let names: Vec<&str> = got.iter().map(|c| c.key.as_str()).collect();
        let s = seg(0, 11, 20);
        assert_eq!(
            names,
            [
                s[0].as_str(),
                s[1].as_str(),
                &segment::checkpoint_key(0, 20, "k1"),
                &segment::checkpoint_heartbeat_key(0, 20, "k1", 5),
            ]
        );
        // A range across a boundary: both segments, checkpoints 10 and 20 (20 seals 11).
        let got = covering(&segs, &cps, 0, Some((10, 11)));
        assert_eq!(got.iter().filter(|c| c.kind == Kind::Segment).count(), 2);
        let cp_seqs: Vec<i64> = got
            .iter()
            .filter(|c| c.kind == Kind::Checkpoint)
            .map(|c| c.first_seq)
            .collect();
        assert_eq!(cp_seqs, [10, 20, 20]);
        // Past the last checkpoint: every checkpoint from A on (none seals it yet).
        let got = covering(&segs, &cps, 0, Some((29, 40)));
        assert_eq!(got.len(), 3, "{got:?}");
        // The whole partition: everything of partition 0, genesis checkpoint included.
        let got = covering(&segs, &cps, 0, None);
        assert_eq!(got.len(), 6 + 5);
        assert!(covering(&segs, &cps, 2, None).is_empty());
    }

    #[test]
    fn checkpoint_names() {
        assert_eq!(
            checkpoint_seq(&segment::checkpoint_key(3, 42, "key/1"), 3),
            Some(42)
        );
        assert_eq!(
            checkpoint_seq(&segment::checkpoint_heartbeat_key(3, 42, "k", 9), 3),
            Some(42)
        );
        assert_eq!(
            checkpoint_seq(&segment::checkpoint_key(3, 42, "k"), 30),
            None
        );
        assert_eq!(checkpoint_seq("checkpoints/chain=3/x.json", 3), None);
        assert_eq!(checkpoint_seq("checkpoints/chain=3/a/b.json", 3), None);
    }

    #[test]
    fn a_hold_needs_an_s3_archive_and_a_readable_secret_file() {
        let folder = ArchiveStoreArgs {
            archive_url: "file:///tmp/archive".into(),
            ..Default::default()
        };
        let e = open_bucket(&folder).unwrap_err();
        assert!(
            matches!(&e, Error::Usage(m) if m.contains("needs an S3 archive")),
            "{e}"
        );
        let unreadable = ArchiveStoreArgs {
            archive_url: "s3://bkt".into(),
            s3_secret_access_key_file: Some("/no/such/secret-file".into()),
            ..Default::default()
        };
        let e = open_bucket(&unreadable).unwrap_err();
        assert!(matches!(e, Error::File { .. }), "{e}");
    }

    #[test]
    fn s3_answers_are_read() {
        let body = "<?xml version=\"1.0\"?><LegalHold><Status>ON</Status></LegalHold>";
        assert_eq!(xml_text(body, "Status"), Some("ON"));
        assert!(legal_hold_body(false).contains("<Status>OFF</Status>"));
        let err = non_2xx(
            http::StatusCode::BAD_REQUEST,
            "<Error><Code>InvalidRequest</Code><Message>Bucket is missing Object Lock Configuration</Message></Error>",
        );
        assert!(
            err.contains("400") && err.contains("Object Lock enabled"),
            "{err}"
        );
        // 4xx is final, 5xx is retried, like every other archive request.
        let e = s3_error("x".into(), err);
        assert!(!worker_runtime::retry::Retryable::is_retryable(&e));
        let e = s3_error(
            "x".into(),
            non_2xx(
                http::StatusCode::SERVICE_UNAVAILABLE,
                "<Error><Code>SlowDown</Code></Error>",
            ),
        );
        assert!(worker_runtime::retry::Retryable::is_retryable(&e));
    }

    #[test]
    fn the_hold_event_is_valid_and_says_what_was_held() {
        let objects = covering(
            &seg(0, 11, 20),
            &[segment::checkpoint_key(0, 20, "k")],
            0,
            Some((12, 15)),
        );
        let e = hold_event(&HoldEvent {
            on: true,
            operator: "ops-1",
            reason: "litigation hold",
            case_id: Some("CASE-7"),
            partition: 0,
            range: Some((12, 15)),
            query: None,
            extra: &[],
            objects: &objects,
            failed: 0,
            archive: "s3://b at http://x, prefix p/",
            clickhouse: ClickHouseOutcome::Done(&ClickHouseHold {
                table: "audit.audit_events".into(),
                rows: 4,
                held: 4,
            }),
        });
        schemas::validate::validate_event(
            &e,
            &schemas::json::JsonLimits::default(),
            e.receive_time_us,
        )
        .unwrap_or_else(|err| panic!("{err:?}"));
        assert_eq!(e.event_type, HOLD_SET_EVENT_TYPE);
        assert_eq!(e.actor.id, "ops-1");
        assert_eq!(e.reason.as_deref(), Some("litigation hold"));
        let attr = |k: &str| {
            e.attributes
                .iter()
                .find(|kv| kv.key == k)
                .map(|kv| kv.value.as_str())
        };
        assert_eq!(attr(ATTR_CASE), Some("CASE-7"));
        assert_eq!(attr(ATTR_PARTITION), Some("0"));
        assert_eq!(attr(ATTR_SEQ_RANGE), Some("12..=15"));
        assert_eq!(attr(ATTR_COVERED), Some("11..=20"));
        assert_eq!(attr(ATTR_OBJECTS), Some("3"));
        assert_eq!(attr(ATTR_SEGMENTS), Some("1"));
        assert_eq!(attr(ATTR_CHECKPOINTS), Some("1"));
        assert_eq!(attr(ATTR_CLICKHOUSE), Some("audit.audit_events"));
        assert_eq!(attr(ATTR_CLICKHOUSE_ROWS), Some("4"));
        let off = hold_event(&HoldEvent {
            on: false,
            operator: "ops-1",
            reason: "case closed",
            case_id: None,
            partition: 0,
            range: None,
            query: None,
            extra: &[],
            objects: &objects,
            failed: 0,
            archive: "a",
            clickhouse: ClickHouseOutcome::Skipped,
        });
        assert_eq!(off.event_type, HOLD_RELEASED_EVENT_TYPE);
        assert_eq!(
            off.attributes
                .iter()
                .find(|kv| kv.key == ATTR_SEQ_RANGE)
                .map(|kv| kv.value.as_str()),
            Some("whole partition")
        );
        assert!(off
            .attributes
            .iter()
            .any(|kv| kv.key == ATTR_CLICKHOUSE && kv.value == "skipped"));
    }

    #[test]
    fn a_query_hold_event_is_valid_and_records_the_query() {
        let mut objects = covering(&seg(0, 1, 10), &[], 0, Some((3, 4)));
        objects.extend(covering(&seg(1, 21, 30), &[], 1, Some((25, 25))));
        let q = HoldQuery::new(&[("request_id", "r-7".into())], None, None, None, None);
        let sel = QuerySelection {
            query: q.canonical(),
            matched: 3,
            ranges: BTreeMap::from([(0, vec![(3, 4)]), (1, vec![(25, 25)])]),
            unarchived: 0,
        };
        let e = hold_event(&HoldEvent {
            on: true,
            operator: "ops",
            reason: "case",
            case_id: None,
            partition: 0,
            range: None,
            query: Some(&sel),
            extra: &[(ATTR_REHYDRATED, "2".into())],
            objects: &objects,
            failed: 0,
            archive: "a",
            clickhouse: ClickHouseOutcome::Skipped,
        });
        schemas::validate::validate_event(
            &e,
            &schemas::json::JsonLimits::default(),
            e.receive_time_us,
        )
        .unwrap_or_else(|err| panic!("{err:?}"));
        let attr = |k: &str| {
            e.attributes
                .iter()
                .find(|kv| kv.key == k)
                .map(|kv| kv.value.as_str())
        };
        assert_eq!(attr(ATTR_QUERY), Some(r#"{"request_id":["r-7"]}"#));
        assert_eq!(attr(ATTR_PARTITION), Some("0,1"));
        assert_eq!(attr(ATTR_SEQ_RANGE), Some("query"));
        assert_eq!(attr(ATTR_COVERED), Some("0:1..=10 1:21..=30"));
        assert_eq!(attr(ATTR_MATCHED_RANGES), Some("0:3..=4 1:25"));
        assert_eq!(attr(ATTR_REHYDRATED), Some("2"));
        assert_eq!(
            e.target.as_ref().map(|t| t.id.as_str()),
            Some(r#"query:{"request_id":["r-7"]}"#)
        );
    }

    #[test]
    fn the_clickhouse_flag_mutation_covers_exactly_the_range() {
        assert_eq!(
            hold_mutation("audit_events", 0, Some((12, 15)), true),
            "ALTER TABLE audit_events UPDATE legal_hold = 1 WHERE (chain_partition = 0 AND seq >= 12 AND seq <= 15) AND legal_hold != 1"
        );
        assert_eq!(
            hold_mutation("audit_events", 3, Some((21, i64::MAX)), false),
            "ALTER TABLE audit_events UPDATE legal_hold = 0 WHERE (chain_partition = 3 AND seq >= 21) AND legal_hold != 0"
        );
        assert_eq!(range_condition(2, None), "chain_partition = 2");
    }

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

    #[test]
    fn seqs_group_into_runs() {
        assert_eq!(seq_ranges(&[7, 3, 4, 4, 9, 8, 1]), [(1, 1), (3, 4), (7, 9)]);
        assert!(seq_ranges(&[]).is_empty());
    }

    #[test]
    fn covering_several_ranges_is_the_union_of_each_range_s_cover() {
        let segs: Vec<String> = [
            seg(0, 1, 10),
            seg(0, 11, 20),
            seg(0, 21, 30),
            seg(0, 31, 35),
        ]
        .into_iter()
        .flatten()
        .collect();
        let cps: Vec<String> = [0, 10, 20, 30]
            .iter()
            .map(|s| segment::checkpoint_key(0, *s, "k1"))
            .chain([segment::checkpoint_heartbeat_key(0, 20, "k1", 5)])
            .collect();
        let cases: &[&[(i64, i64)]] = &[
            &[(3, 3), (25, 26)],
            &[(3, 4), (5, 5), (12, 12)],
            &[(10, 11), (33, 34)],
            &[(31, 31)],
            &[(1, 35)],
            &[(20, 20), (21, 21)],
        ];
        for ranges in cases {
            let mut want: Vec<Covered> = Vec::new();
            for r in ranges.iter() {
                for c in covering(&segs, &cps, 0, Some(*r)) {
                    if !want.iter().any(|w| w.key == c.key) {
                        want.push(c);
                    }
                }
            }
            want.sort_by(|x, y| (x.first_seq, x.kind, &x.key).cmp(&(y.first_seq, y.kind, &y.key)));
            assert_eq!(covering_ranges(&segs, &cps, 0, ranges), want, "{ranges:?}");
        }
        // 3 and 25..=26: segments 1..=10 and 21..=30, checkpoints 10 (seals 3) and 30.
        let got = covering_ranges(&segs, &cps, 0, &[(3, 3), (25, 26)]);
        let seqs: Vec<(Kind, i64)> = got.iter().map(|c| (c.kind, c.first_seq)).collect();
        assert_eq!(
            seqs,
            [
                (Kind::Segment, 1),
                (Kind::Manifest, 1),
                (Kind::Checkpoint, 10),
                (Kind::Segment, 21),
                (Kind::Manifest, 21),
                (Kind::Checkpoint, 30)
            ]
        );
        // Seqs 34..=40: 36..=40 are in no segment.
        assert_eq!(unarchived(&segs, 0, &[(3, 3), (34, 40)]), 5);
        assert_eq!(unarchived(&segs, 1, &[(3, 3)]), 1);
    }

    fn held(selection: &str, objects: &[&str], rows: &[(i32, i64, i64)]) -> RegisteredHold {
        let mut r: RowRanges = BTreeMap::new();
        for &(p, a, b) in rows {
            r.entry(p).or_default().push((a, b));
        }
        RegisteredHold {
            selection: serde_json::json!({ "s": selection }),
            reason: "r".into(),
            held_by: "ops".into(),
            held_at: "2026-01-01T00:00:00Z".into(),
            partition: Some(0),
            seq: None,
            query: None,
            objects: objects
                .iter()
                .enumerate()
                .map(|(i, k)| Covered {
                    key: (*k).to_owned(),
                    partition: 0,
                    kind: Kind::Segment,
                    first_seq: i as i64,
                    last_seq: i as i64,
                })
                .collect(),
            rows: r,
        }
    }

    #[test]
    fn releasing_one_case_keeps_what_another_case_holds() {
        let a = held("a", &["s1", "s2", "cp20"], &[(0, 1, 20)]);
        let b = held("b", &["s2", "cp20", "s3"], &[(0, 11, 30)]);
        let c = held("c", &["s2"], &[(1, 1, 5)]);
        let r = release_of(&a, &[("B", &b), ("C", &c)]);
        let released: Vec<&str> = r.release.iter().map(|o| o.key.as_str()).collect();
        assert_eq!(released, ["s1"]);
        let kept: Vec<(&str, Vec<String>)> = r
            .kept
            .iter()
            .map(|(o, by)| (o.key.as_str(), by.clone()))
            .collect();
        assert_eq!(
            kept,
            [
                ("s2", vec!["B".to_owned(), "C".to_owned()]),
                ("cp20", vec!["B".to_owned()])
            ]
        );
        assert_eq!(
            r.kept_by,
            BTreeMap::from([("B".to_owned(), 2), ("C".to_owned(), 1)])
        );
        assert_eq!(
            r.clear_rows_sql,
            "((chain_partition = 0 AND ((seq >= 1 AND seq <= 20)))) AND NOT ((chain_partition = 0 AND ((seq >= 11 AND seq <= 30))) OR (chain_partition = 1 AND ((seq >= 1 AND seq <= 5))))"
        );
        // Alone, everything goes.
        let r = release_of(&a, &[]);
        assert_eq!(r.release.len(), 3);
        assert!(r.kept.is_empty() && r.kept_by.is_empty());
        assert_eq!(
            r.clear_rows_sql,
            "(chain_partition = 0 AND ((seq >= 1 AND seq <= 20)))"
        );
    }

    #[test]
    fn row_ranges_as_sql_and_overlap() {
        let m = BTreeMap::from([
            (0, vec![(i64::MIN, i64::MAX)]),
            (1, vec![(5, 5), (7, 9), (8, 12), (20, i64::MAX)]),
            (2, vec![]),
        ]);
        assert_eq!(
            rows_sql(&m),
            "(chain_partition = 0) OR (chain_partition = 1 AND (seq = 5 OR (seq >= 7 AND seq <= 12) OR seq >= 20))"
        );
        assert_eq!(rows_sql(&BTreeMap::new()), "0");
        let x = BTreeMap::from([(1, vec![(3, 4)])]);
        assert!(!rows_meet(&x, &BTreeMap::from([(1, vec![(5, 9)])])));
        assert!(!rows_meet(&x, &BTreeMap::from([(0, vec![(3, 4)])])));
        assert!(rows_meet(&x, &BTreeMap::from([(1, vec![(4, 9)])])));
        assert!(
            rows_meet(&BTreeMap::from([(0, vec![(3, 4)])]), &m),
            "whole partition"
        );
        assert!(!rows_meet(&x, &m));
    }

    #[test]
    fn a_rerun_of_on_merges_into_the_case_s_register() {
        let reg = CaseRegister {
            format: REGISTER_FORMAT,
            case_id: "A".into(),
            holds: Vec::new(),
        };
        let first = held("x", &["s1", "s2"], &[(0, 1, 5)]);
        let reg = reg.with_hold(first.clone());
        let reg = reg.with_hold(held("x", &["s2", "s3"], &[(0, 4, 9)]));
        assert_eq!(reg.holds.len(), 1);
        let keys: Vec<&str> = reg.holds[0]
            .objects
            .iter()
            .map(|o| o.key.as_str())
            .collect();
        assert_eq!(keys, ["s1", "s2", "s3"]);
        assert_eq!(reg.holds[0].rows, BTreeMap::from([(0, vec![(1, 9)])]));
        assert_eq!(reg.holds[0].held_at, first.held_at);
        let reg = reg.with_hold(held("y", &["s9"], &[]));
        assert_eq!(reg.holds.len(), 2);
        // It round-trips through its JSON (the register object).
        let text = serde_json::to_string(&reg).expect("json");
        let back: CaseRegister = serde_json::from_str(&text).expect("parse");
        assert_eq!(back, reg);
    }

    #[test]
    fn case_ids_name_their_register_and_selections_name_a_case() {
        assert_eq!(register_key("LIT-2024.17_a"), "_holds/LIT-2024.17_a.json");
        let odd = register_key("Doe v. Roe/2024");
        assert!(odd.starts_with("_holds/Doe_v._Roe_2024-") && odd.ends_with(".json"));
        assert_ne!(register_key("a/b"), register_key("a_b"), "{odd}");
        assert_ne!(register_key(".."), "_holds/...json");
        assert!(check_case_id("  ").is_err());
        assert!(check_case_id("a\nb").is_err());
        assert_eq!(check_case_id(" C-1 ").ok().as_deref(), Some("C-1"));
        let sel = serde_json::json!({"chain_partition": 0, "seq": "1..=5"});
        let d = derived_case_id(&sel);
        assert!(d.starts_with("selection-") && d.len() == "selection-".len() + 16);
        assert_eq!(d, derived_case_id(&sel.clone()));
        let regs = vec![
            CaseRegister {
                format: 1,
                case_id: "A".into(),
                holds: vec![held("x", &[], &[])],
            },
            CaseRegister {
                format: 1,
                case_id: "B".into(),
                holds: vec![held("x", &[], &[]), held("y", &[], &[])],
            },
        ];
        let x = serde_json::json!({"s": "x"});
        let y = serde_json::json!({"s": "y"});
        let z = serde_json::json!({"s": "z"});
        assert_eq!(case_for_off(&regs, &y, None).ok(), Some(Some("B".into())));
        assert_eq!(case_for_off(&regs, &z, None).ok(), Some(None));
        assert!(
            matches!(case_for_off(&regs, &x, None), Err(Error::Usage(m)) if m.contains("A, B"))
        );
        assert_eq!(
            case_for_off(&regs, &x, Some("A")).ok(),
            Some(Some("A".into()))
        );
    }

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
