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
use serde::Serialize;
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
    /// The legal case or matter id (recorded in the chained event).
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
#[derive(Debug, Clone, PartialEq, Serialize)]
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Segment,
    Manifest,
    Checkpoint,
}

/// One covering object: its key relative to the archive root, and the seqs it holds (a
/// checkpoint: its seq twice).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
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

/// Counts the range's rows and held rows; with `set`, first flags (`Some(true)`) or clears
/// them and waits until ClickHouse has applied the mutation (18.16 runs mutations in the
/// background and has no `mutations_sync`).
async fn clickhouse_hold(
    a: &HoldArgs,
    rows: &Cond,
    set: Option<bool>,
) -> Result<ClickHouseHold, Error> {
    let ch = &a.clickhouse;
    let table = events_table(ch)?;
    let c = client(ch);
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
    if let Some(on) = set {
        rows.bind_all(c.query(&hold_mutation_where(table, &rows.sql, on)))
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
        query: Some(selection),
        scope: format!("the query's partition(s) {}", parts.join(",")),
    })
}

/// Runs a hold. `Err`: nothing was changed (bad arguments, unreadable listing). `Ok((report,
/// Some(e)))`: the report of what changed, and the failure to report after it (exit 3).
/// `extra`: more attributes for the chained event.
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
    let reads = Reads::new(a.reads.retry_attempts);
    let bucket = open_bucket(&a.archive)?;
    let describe = a.archive.describe(Access::Read);

    // 1. The covering objects (a query: resolved in ClickHouse first).
    let store = build_store(&a.archive, Access::Read).map_err(|e| Error::Usage(e.to_string()))?;
    let plan = plan(a, &*store, &reads, &describe).await?;
    let objects = plan.objects.clone();

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
    };
    let mut changed = Vec::new();
    let mut first_error = None;
    for (o, r) in results {
        match r {
            Ok(status) => {
                if changes {
                    changed.push(o.clone());
                }
                report.objects.push(ObjectOutcome {
                    object: o,
                    legal_hold: status,
                    error: None,
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
                });
            }
        }
    }
    report.changed = changed.len() as u64;

    // 3. ClickHouse: flag or clear the rows (status / dry run: count them). Not when the
    // archive refused every object: the command then changed nothing anywhere.
    let mut ch_error = None;
    let archive_refused_all = changes && changed.is_empty();
    if !a.no_clickhouse && !archive_refused_all {
        let set = changes.then_some(on);
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

    // 4. Record every change (also a partial one: the trail must show each hold that
    // changed), after the hold itself.
    let mut record_error = None;
    if let (Some(operator), false) = (&operator, changed.is_empty()) {
        let event = hold_event(&HoldEvent {
            on,
            operator,
            reason,
            case_id: a.case_id.as_deref(),
            partition: a.partition.unwrap_or(0),
            range: a.seq,
            query: plan.query.as_ref(),
            extra,
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
    let state = if on { "SET" } else { "RELEASED" };
    let scope = &plan.scope;
    if let Some(e) = record_error {
        let e = Error::Service(format!(
            "the legal hold IS {state} on {} object(s) of {scope}, but recording it in the chain failed: {e}. Run the same command again to record it (the hold itself is idempotent).",
            report.changed
        ));
        return Ok((report, Some(e)));
    }
    if let Some(e) = ch_error {
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
    if let Some(e) = first_error {
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
            report.failed,
            objects.len()
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
        for o in &r.objects {
            let state = match (&o.legal_hold, &o.error) {
                (_, Some(e)) => format!(" FAILED: {e}"),
                (Some(s), None) => format!(" {s}"),
                (None, None) => String::new(),
            };
            let _ = writeln!(
                t,
                "  {:<10} {}{state}",
                kind_name(o.object.kind),
                o.object.key
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
}
