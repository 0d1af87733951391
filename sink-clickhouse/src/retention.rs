//! Retention of `audit_events` per event class (the `category` column), by ClickHouse TTL.
//!
//! - The policy: a default span (seven years, as the seed schema's retention policy says) and
//!   per-class overrides, in the policy language both sinks share (`schemas::retention`):
//!   `--retention default=7y,telemetry=90d`, or `[retention] retention = "…"` in the config
//!   file. The canonical text recorded and chained is the one sink-archive uses.
//! - Applied as one `ALTER TABLE audit_events MODIFY TTL …` with one `DELETE WHERE` rule per
//!   period, each rule also requiring `legal_hold = 0`: rows that `auditctl hold on` marked are
//!   never deleted while held (`legal_hold` is sink bookkeeping, like `inserted_at`: not part
//!   of the chain, not read by any verifier).
//! - Only on servers of [`TTL_MIN_VERSION`] or newer (`TTL … DELETE WHERE` is not in 18.16,
//!   which has no TTL at all): on an older server the sink says once, at startup, that
//!   retention is unsupported and every row is kept.
//! - A change is recorded in the chain first: when the configured policy differs from the one
//!   last recorded in `audit_retention_policy`, the sink publishes one
//!   `audit.retention.policy_set` event to `<prefix>validated`, waits for the broker's ack,
//!   then alters the TTL, then records the policy. A crash in between re-publishes at the next
//!   start (the trail may say it twice, never zero times).
//! - Deleting from ClickHouse never touches the archive, which stays the record.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use clickhouse::Row;
use schemas::flat::category_symbol;
use schemas::governance::GovernanceEvent;
use schemas::retention::class_from_name;
pub use schemas::retention::{
    Policy, Span, ATTR_NEW_POLICY, ATTR_OLD_POLICY, ATTR_STORE, DEFAULT_POLICY, NO_POLICY,
    POLICY_SET_EVENT_TYPE,
};
use schemas::{ActorType, AuditEvent};
use serde::{Deserialize, Serialize};
use worker_runtime::kafka::{OutputRecord, Producer};

use crate::error::Error;
use crate::store::{Store, EVENTS_TABLE};

/// Oldest server the TTL is set on: `TTL … DELETE WHERE` needs 20.x; 21.8 is the floor of
/// every other upgrade here, and the one the chDB check covers.
pub const TTL_MIN_VERSION: (u32, u32) = (21, 8);
/// Table of the policies applied (migration 0107, on servers with TTL only).
pub const POLICY_TABLE: &str = "audit_retention_policy";
/// The value of [`ATTR_STORE`] in this sink's events and policy rows.
pub const STORE: &str = "clickhouse";
// ClickHouse-only attributes; the shared ones (store, old and new policy) are
// `schemas::retention::ATTR_*`, re-exported above.
pub const ATTR_TTL: &str = "audit.retention.ttl";
pub const ATTR_TABLE: &str = "audit.retention.table";
pub const ATTR_SERVER: &str = "audit.retention.server_version";

/// Retention options of the sink.
#[derive(Debug, Clone, clap::Args, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionArgs {
    /// How long ClickHouse keeps events, per event class (the `category` column), in the
    /// grammar sink-archive's `--retention` shares: `default=<span>[,<class>=<span>…]`, spans
    /// `<n>y`, `<n>mo`, `<n>d`, `<n>h` after the event time, or `forever`; classes:
    /// user_interaction, system_processing, governance, infrastructure, security, telemetry,
    /// other. E.g. `default=7y,telemetry=90d,governance=forever`. Applied as a TTL on servers
    /// 21.8+ (18.16 has no TTL: everything is kept, and the sink says so at start). Rows under
    /// legal hold (`auditctl hold on`) are never deleted. Only ClickHouse: the archive is
    /// never touched. A change is recorded in the chain (`audit.retention.policy_set`) before
    /// it is applied.
    #[arg(
        long = "retention",
        env = "AUDIT_SINK_CLICKHOUSE_RETENTION",
        default_value = DEFAULT_POLICY,
        value_parser = parse_policy_text
    )]
    pub retention: String,
}

impl Default for RetentionArgs {
    fn default() -> Self {
        Self {
            retention: DEFAULT_POLICY.to_owned(),
        }
    }
}

fn parse_policy_text(s: &str) -> Result<String, String> {
    // Kept as written (a config round-trips); compared and recorded in canonical form.
    Policy::parse(s)
        .map(|_| s.to_owned())
        .map_err(|e| e.to_string())
}

/// `event_time + <interval>` of a span, or `None` for forever. ClickHouse's month and year
/// intervals clamp to the month's last day (31 January + 1 month = 28/29 February), where the
/// archive rolls to 1 March: a row may go up to 3 days before the archive's lock ends, never
/// earlier than the policy's whole months count (docs/retention.md).
fn expiry(span: Span) -> Option<String> {
    let (f, n) = match span {
        Span::Hours(n) => ("toIntervalHour", n),
        Span::Days(n) => ("toIntervalDay", n),
        Span::Months(n) => ("toIntervalMonth", n),
        Span::Years(n) => ("toIntervalYear", n),
        Span::Forever => return None,
    };
    Some(format!("event_time + {f}({n})"))
}

/// The retention of every event class, as this sink applies it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetentionPolicy(pub Policy);

impl RetentionPolicy {
    pub fn from_args(a: &RetentionArgs) -> Result<Self, Error> {
        Policy::parse(&a.retention)
            .map(Self)
            .map_err(|e| Error::Config(format!("--retention: {e}")))
    }

    /// Canonical text (what is recorded, compared and chained): the shared
    /// [`Policy::canonical`], the same text sink-archive records for the same policy.
    pub fn text(&self) -> String {
        self.0.canonical()
    }

    /// Class symbols (the `category` column's values) with their own span.
    fn overridden(&self) -> BTreeMap<&'static str, Span> {
        self.0
            .overrides
            .iter()
            .filter_map(|(name, span)| Some((category_symbol(class_from_name(name)?), *span)))
            .collect()
    }

    /// The TTL rules (`None`: every class is kept forever, no TTL). One rule per distinct
    /// span; the classes with their own span are excluded from the default's rule. Every
    /// rule spares held rows.
    pub fn ttl(&self) -> Option<String> {
        let overridden = self.overridden();
        let mut by_span: BTreeMap<Span, Vec<&str>> = BTreeMap::new();
        for (class, span) in &overridden {
            by_span.entry(*span).or_default().push(class);
        }
        let mut rules = Vec::new();
        for (span, classes) in &by_span {
            if let Some(expiry) = expiry(*span) {
                rules.push(format!(
                    "{expiry} DELETE WHERE legal_hold = 0 AND category IN ({})",
                    quoted(classes)
                ));
            }
        }
        if let Some(expiry) = expiry(self.0.default) {
            let others: Vec<&str> = overridden.keys().copied().collect();
            rules.push(if others.is_empty() {
                format!("{expiry} DELETE WHERE legal_hold = 0")
            } else {
                format!(
                    "{expiry} DELETE WHERE legal_hold = 0 AND category NOT IN ({})",
                    quoted(&others)
                )
            });
        }
        (!rules.is_empty()).then(|| rules.join(", "))
    }

    /// The statement that puts this policy on the events table.
    pub fn ttl_statement(&self) -> String {
        match self.ttl() {
            Some(rules) => format!("ALTER TABLE {EVENTS_TABLE} MODIFY TTL {rules}"),
            None => format!("ALTER TABLE {EVENTS_TABLE} REMOVE TTL"),
        }
    }
}

/// `'A', 'B'` (class symbols: upper-case letters and `_`, checked against the known list).
fn quoted(v: &[&str]) -> String {
    v.iter()
        .map(|s| format!("'{s}'"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// One applied policy (`audit_retention_policy`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Row)]
pub struct PolicyRow {
    pub applied_at_us: i64,
    pub store: String,
    pub policy: String,
    pub ttl: String,
    pub event_id: String,
    pub server_version: String,
}

/// What [`ensure`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RetentionOutcome {
    /// The server has no `TTL … DELETE WHERE`: nothing is deleted.
    Unsupported { server: String },
    /// The configured policy is the one recorded.
    Unchanged { policy: String },
    /// A new policy was chained, applied and recorded.
    Applied {
        old: String,
        new: String,
        event_id: String,
    },
}

/// The policy last recorded in `audit_retention_policy` (`None`: never).
pub async fn recorded_policy(store: &Store) -> Result<Option<String>, Error> {
    let rows: Vec<String> = store
        .client()
        .query(&format!(
            "SELECT policy FROM {POLICY_TABLE} WHERE store = 'clickhouse' \
             ORDER BY applied_at_us DESC LIMIT 1"
        ))
        .fetch_all()
        .await
        .map_err(|e| Error::ch(format!("reading {POLICY_TABLE}"), e))?;
    Ok(rows.into_iter().next())
}

/// The policy `policy` replaces (`None`: nothing to change), given the one last recorded.
/// Never recorded and keeping everything is no change (the table has no TTL), so a sink
/// configured `forever` says nothing.
pub fn change_from(recorded: Option<&str>, policy: &RetentionPolicy) -> Option<String> {
    match recorded {
        Some(r) if r == policy.text() => None,
        Some(r) => Some(r.to_owned()),
        None if policy.ttl().is_none() => None,
        None => Some(NO_POLICY.to_owned()),
    }
}

/// Makes the table's TTL the configured policy (see the module docs): on a server without
/// TTL, logs that once and keeps everything; otherwise, if the policy differs from the one
/// recorded, publishes the change to `topic` (waiting for the ack), alters the TTL, records it.
pub async fn ensure(
    store: &Store,
    policy: &RetentionPolicy,
    producer: &Producer,
    topic: &str,
) -> Result<RetentionOutcome, Error> {
    if !store.version().supports(TTL_MIN_VERSION) {
        tracing::warn!(
            server = %store.version(),
            configured = %policy.text(),
            "retention: ClickHouse {} has no TTL (needs {}.{}+): no row is deleted, every event is kept",
            store.version(),
            TTL_MIN_VERSION.0,
            TTL_MIN_VERSION.1
        );
        return Ok(RetentionOutcome::Unsupported {
            server: store.version().to_string(),
        });
    }
    let new = policy.text();
    let recorded = recorded_policy(store).await?;
    let Some(old) = change_from(recorded.as_deref(), policy) else {
        tracing::info!(policy = %new, "retention policy unchanged");
        return Ok(RetentionOutcome::Unchanged { policy: new });
    };
    let ttl = policy.ttl().unwrap_or_else(|| "none".to_owned());
    let table = format!("{}.{EVENTS_TABLE}", store.database());
    let event = policy_event(&PolicyChange {
        old: &old,
        new: &new,
        ttl: &ttl,
        table: &table,
        server: &store.version().to_string(),
    });
    let payload = schemas::framing::encode_single_object_event(&event)
        .map_err(|e| Error::Config(format!("encoding the {POLICY_SET_EVENT_TYPE} event: {e}")))?;
    // The trail first: a TTL must never delete rows the chain does not say it may.
    let delivered = producer
        .send(&OutputRecord::new(
            topic,
            Some(event.event_id.clone().into_bytes()),
            payload,
        ))
        .await?;
    tracing::info!(
        event_id = %event.event_id, topic, partition = delivered.partition,
        offset = delivered.offset, "retention policy change recorded in the chain"
    );
    store
        .client()
        .query(&policy.ttl_statement())
        .execute()
        .await
        .map_err(|e| Error::ch(format!("setting the retention TTL of {EVENTS_TABLE}"), e))?;
    let row = PolicyRow {
        applied_at_us: event.event_time_us,
        store: STORE.to_owned(),
        policy: new.clone(),
        ttl,
        event_id: event.event_id.clone(),
        server_version: store.version().to_string(),
    };
    let what = || format!("recording the retention policy in {POLICY_TABLE}");
    let mut insert = store
        .client()
        .insert::<PolicyRow>(POLICY_TABLE)
        .await
        .map_err(|e| Error::ch(what(), e))?;
    insert.write(&row).await.map_err(|e| Error::ch(what(), e))?;
    insert.end().await.map_err(|e| Error::ch(what(), e))?;
    tracing::info!(%old, %new, "retention policy applied");
    Ok(RetentionOutcome::Applied {
        old,
        new,
        event_id: event.event_id,
    })
}

/// What the policy event says.
#[derive(Debug, Clone, Copy)]
pub struct PolicyChange<'a> {
    pub old: &'a str,
    pub new: &'a str,
    pub ttl: &'a str,
    /// `database.table`.
    pub table: &'a str,
    pub server: &'a str,
}

fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// The chained event of a policy change: governance, by the sink (the configuration it was
/// started with is the operator's decision), about the events table.
pub fn policy_event(c: &PolicyChange<'_>) -> AuditEvent {
    GovernanceEvent {
        event_id: GovernanceEvent::fresh_id("retention"),
        event_type: POLICY_SET_EVENT_TYPE,
        time_us: now_us(),
        component: "sink-clickhouse",
        actor_type: ActorType::Service,
        actor_id: "sink-clickhouse",
        verb: "set_retention",
        description: format!(
            "ClickHouse retention (TTL) policy changed from \"{}\" to \"{}\"; held rows are \
             kept; the archive is not affected",
            c.old, c.new
        ),
        target_type: "clickhouse_table",
        target_id: c.table,
        reason: "retention policy configured for sink-clickhouse".into(),
        attributes: vec![
            (ATTR_STORE, STORE.into()),
            (ATTR_OLD_POLICY, c.old.into()),
            (ATTR_NEW_POLICY, c.new.into()),
            (ATTR_TTL, c.ttl.into()),
            (ATTR_TABLE, c.table.into()),
            (ATTR_SERVER, c.server.into()),
        ],
        before_json: None,
        after_json: None,
        regulations: vec![],
    }
    .build()
}

#[cfg(test)]
mod tests {
    use super::*;
    use schemas::EventCategory;

    fn args(default: &str, classes: &[&str]) -> RetentionArgs {
        let mut text = format!("default={default}");
        for c in classes {
            text.push(',');
            text.push_str(c);
        }
        RetentionArgs { retention: text }
    }

    #[test]
    fn policy_from_args_is_the_shared_grammar() {
        let p = RetentionPolicy::from_args(&args("7y", &["telemetry=90d", "SECURITY=10y", " "]))
            .expect("policy");
        assert_eq!(p.0.default, Span::Years(7));
        assert_eq!(p.0.span(EventCategory::Telemetry), Span::Days(90));
        // The shared canonical text: lower-case classes, sorted, `,`-separated.
        assert_eq!(p.text(), "default=7y,security=10y,telemetry=90d");
        for bad in [
            "AUDIT=1y",
            "SECURITY",
            "SECURITY=1y,security=2y",
            "SECURITY=0d",
        ] {
            let e = RetentionPolicy::from_args(&args("7y", &[bad])).expect_err(bad);
            assert!(e.to_string().contains("--retention"), "{e}");
        }
        assert!(RetentionPolicy::from_args(&args("soon", &[])).is_err());
        let d = RetentionPolicy::from_args(&RetentionArgs::default()).expect("default");
        assert_eq!(d.text(), "default=7y");
        assert_eq!(d.text(), DEFAULT_POLICY);
    }

    #[test]
    fn ttl_rules_spare_held_rows_and_exclude_overridden_classes() {
        let d = RetentionPolicy::from_args(&RetentionArgs::default()).expect("p");
        assert_eq!(
            d.ttl_statement(),
            "ALTER TABLE audit_events MODIFY TTL event_time + toIntervalYear(7) DELETE WHERE legal_hold = 0"
        );
        let p = RetentionPolicy::from_args(&args(
            "7y",
            &[
                "TELEMETRY=90d",
                "OTHER=90d",
                "SECURITY=10y",
                "GOVERNANCE=forever",
            ],
        ))
        .expect("p");
        assert_eq!(
            p.ttl().expect("rules"),
            "event_time + toIntervalDay(90) DELETE WHERE legal_hold = 0 AND category IN ('OTHER', 'TELEMETRY'), \
             event_time + toIntervalYear(10) DELETE WHERE legal_hold = 0 AND category IN ('SECURITY'), \
             event_time + toIntervalYear(7) DELETE WHERE legal_hold = 0 AND category NOT IN ('GOVERNANCE', 'OTHER', 'SECURITY', 'TELEMETRY')"
        );
        // Everything forever but one class.
        let p = RetentionPolicy::from_args(&args("forever", &["TELEMETRY=30d"])).expect("p");
        assert_eq!(
            p.ttl().expect("rules"),
            "event_time + toIntervalDay(30) DELETE WHERE legal_hold = 0 AND category IN ('TELEMETRY')"
        );
        // Hours and months map to their ClickHouse intervals.
        let p = RetentionPolicy::from_args(&args("18mo", &["telemetry=36h"])).expect("p");
        assert_eq!(
            p.ttl().expect("rules"),
            "event_time + toIntervalHour(36) DELETE WHERE legal_hold = 0 AND category IN ('TELEMETRY'), \
             event_time + toIntervalMonth(18) DELETE WHERE legal_hold = 0 AND category NOT IN ('TELEMETRY')"
        );
        let p = RetentionPolicy::from_args(&args("forever", &[])).expect("p");
        assert_eq!(p.ttl(), None);
        assert_eq!(p.ttl_statement(), "ALTER TABLE audit_events REMOVE TTL");
    }

    #[test]
    fn a_policy_is_chained_only_when_it_changes() {
        let seven = RetentionPolicy::from_args(&RetentionArgs::default()).expect("p");
        let forever = RetentionPolicy::from_args(&args("forever", &[])).expect("p");
        assert_eq!(change_from(None, &seven).as_deref(), Some(NO_POLICY));
        assert_eq!(change_from(Some("default=7y"), &seven), None);
        assert_eq!(
            change_from(Some("default=5y"), &seven).as_deref(),
            Some("default=5y")
        );
        assert_eq!(change_from(None, &forever), None);
        // Back to keeping everything after a TTL: a change (the TTL is removed).
        assert_eq!(
            change_from(Some("default=7y"), &forever).as_deref(),
            Some("default=7y")
        );
    }

    #[test]
    fn the_policy_event_is_valid_and_says_old_and_new() {
        let e = policy_event(&PolicyChange {
            old: NO_POLICY,
            new: "default=7y",
            ttl: "event_time + toIntervalYear(7) DELETE WHERE legal_hold = 0",
            table: "audit.audit_events",
            server: "24.8.1",
        });
        schemas::validate::validate_event(
            &e,
            &schemas::json::JsonLimits::default(),
            e.receive_time_us,
        )
        .unwrap_or_else(|err| panic!("{err:?}"));
        assert_eq!(e.event_type, POLICY_SET_EVENT_TYPE);
        let attr = |k: &str| {
            e.attributes
                .iter()
                .find(|kv| kv.key == k)
                .map(|kv| kv.value.as_str())
        };
        assert_eq!(attr(ATTR_STORE), Some("clickhouse"));
        assert_eq!(attr(ATTR_OLD_POLICY), Some(NO_POLICY));
        assert_eq!(attr(ATTR_NEW_POLICY), Some("default=7y"));
        assert!(e.attributes.windows(2).all(|w| w[0].key < w[1].key));
        // It survives the wire format the chain's input uses.
        let bytes = schemas::framing::encode_single_object_event(&e).expect("encode");
        assert_eq!(
            schemas::framing::decode_event(&bytes, None).expect("decode"),
            e
        );
    }
}
