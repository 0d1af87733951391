//! The chained operator event of a hold set or released (`audit.legal_hold.*`): the trail
//! must say who held what, for which case and why, so it records the selection, the objects
//! (counts and a hash of their keys) and the ClickHouse rows. The attribute names are
//! constants because tests and other commands read them back.

use std::collections::BTreeMap;

use schemas::segment;
use schemas::AuditEvent;

use crate::erase::{operator_event, OperatorEvent};

use super::clickhouse::ClickHouseHold;
use super::covering::{counts_of, Covered};
use super::selection::{range_text, ranges_text, QuerySelection};

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

/// Longest `audit.legal_hold.matched_seq_ranges` text recorded; past it the text is cut (the
/// exact set is `audit.legal_hold.matched_sha256`).
const MAX_RANGES_TEXT: usize = 8 * 1024;

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hold::clickhouse::ClickHouseHold;
    use crate::hold::covering::{covering, seg};
    use crate::hold::selection::HoldQuery;
    use crate::hold::ATTR_REHYDRATED;

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
}
