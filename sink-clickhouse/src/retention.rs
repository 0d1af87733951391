//! Retention of `audit_events` per event class (the `category` column), by ClickHouse TTL.
//!
//! - The policy: a default period (seven years, as the seed schema's retention policy says) and
//!   per-class overrides, from the sink's configuration (`--retention-default`,
//!   `--retention-class CLASS=PERIOD`, or `[retention]` in the config file).
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
use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use clickhouse::Row;
use schemas::flat::category_symbol;
use schemas::{
    Action, Actor, ActorType, AuditEvent, EnrichmentStatus, EventCategory, EventData, Ingress,
    IngressChannel, KeyValue, Outcome, Severity, Target, TenantContext, TraceContext,
};
use serde::{Deserialize, Serialize};
use worker_runtime::kafka::{OutputRecord, Producer};

use crate::error::Error;
use crate::store::{Store, EVENTS_TABLE};

/// Oldest server the TTL is set on: `TTL … DELETE WHERE` needs 20.x; 21.8 is the floor of
/// every other upgrade here, and the one the chDB check covers.
pub const TTL_MIN_VERSION: (u32, u32) = (21, 8);
/// Table of the policies applied (migration 0107, on servers with TTL only).
pub const POLICY_TABLE: &str = "audit_retention_policy";
/// Event type of a retention policy change.
pub const POLICY_SET_EVENT_TYPE: &str = "audit.retention.policy_set";
pub const ATTR_STORE: &str = "audit.retention.store";
pub const ATTR_OLD_POLICY: &str = "audit.retention.old_policy";
pub const ATTR_NEW_POLICY: &str = "audit.retention.new_policy";
pub const ATTR_TTL: &str = "audit.retention.ttl";
pub const ATTR_TABLE: &str = "audit.retention.table";
pub const ATTR_SERVER: &str = "audit.retention.server_version";
/// How the policy reads when none was ever applied (the table keeps everything).
pub const NO_POLICY: &str = "none (keep everything)";
/// The default period: seven years (seed 004's `add_retention_policy(… INTERVAL '7 years')`).
pub const DEFAULT_PERIOD: &str = "7y";

const CATEGORIES: [EventCategory; 7] = [
    EventCategory::UserInteraction,
    EventCategory::SystemProcessing,
    EventCategory::Governance,
    EventCategory::Infrastructure,
    EventCategory::Security,
    EventCategory::Telemetry,
    EventCategory::Other,
];

/// Retention options of the sink.
#[derive(Debug, Clone, clap::Args, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionArgs {
    /// How long ClickHouse keeps an event of a class without its own period: `<n>d` (days),
    /// `<n>mo` (months), `<n>y` (years) after its event time, or `forever`. Applied as a TTL on
    /// servers 21.8+ (18.16 has no TTL: everything is kept, and the sink says so at start).
    /// Rows under legal hold (`auditctl hold on`) are never deleted. Only ClickHouse: the
    /// archive is never touched. A change is recorded in the chain
    /// (`audit.retention.policy_set`) before it is applied.
    #[arg(
        long = "retention-default",
        env = "AUDIT_SINK_CLICKHOUSE_RETENTION_DEFAULT",
        default_value = DEFAULT_PERIOD
    )]
    pub retention_default: String,
    /// Period of one event class (the `category` column), overriding the default:
    /// `CLASS=PERIOD`, e.g. `TELEMETRY=90d`, `SECURITY=10y`, `GOVERNANCE=forever`. Repeat the
    /// flag, or comma-separate in the environment. Classes: USER_INTERACTION,
    /// SYSTEM_PROCESSING, GOVERNANCE, INFRASTRUCTURE, SECURITY, TELEMETRY, OTHER.
    #[arg(
        long = "retention-class",
        env = "AUDIT_SINK_CLICKHOUSE_RETENTION_CLASSES",
        value_delimiter = ','
    )]
    #[serde(default)]
    pub retention_class: Vec<String>,
}

impl Default for RetentionArgs {
    fn default() -> Self {
        Self {
            retention_default: DEFAULT_PERIOD.to_owned(),
            retention_class: Vec::new(),
        }
    }
}

/// A retention period after the event time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Period {
    Days(u32),
    Months(u32),
    Years(u32),
    Forever,
}

impl Period {
    pub fn parse(text: &str) -> Result<Self, Error> {
        let t = text.trim().to_ascii_lowercase();
        if t == "forever" {
            return Ok(Period::Forever);
        }
        let bad = || {
            Error::Config(format!(
                "retention period {text:?}: expected <n>d, <n>mo, <n>y (n ≥ 1) or forever"
            ))
        };
        let (digits, unit) = t.split_at(t.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?);
        let n: u32 = digits.parse().map_err(|_| bad())?;
        if n == 0 {
            return Err(bad());
        }
        match unit {
            "d" => Ok(Period::Days(n)),
            "mo" => Ok(Period::Months(n)),
            "y" => Ok(Period::Years(n)),
            _ => Err(bad()),
        }
    }

    /// `event_time + <interval>`, or `None` for forever.
    fn expiry(self) -> Option<String> {
        let (f, n) = match self {
            Period::Days(n) => ("toIntervalDay", n),
            Period::Months(n) => ("toIntervalMonth", n),
            Period::Years(n) => ("toIntervalYear", n),
            Period::Forever => return None,
        };
        Some(format!("event_time + {f}({n})"))
    }
}

impl fmt::Display for Period {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Period::Days(n) => write!(f, "{n}d"),
            Period::Months(n) => write!(f, "{n}mo"),
            Period::Years(n) => write!(f, "{n}y"),
            Period::Forever => f.write_str("forever"),
        }
    }
}

/// The retention of every event class.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetentionPolicy {
    pub default: Period,
    /// Class (category symbol) → its own period.
    pub classes: BTreeMap<String, Period>,
}

impl RetentionPolicy {
    pub fn from_args(a: &RetentionArgs) -> Result<Self, Error> {
        let default = Period::parse(&a.retention_default)?;
        let known: Vec<&str> = CATEGORIES.iter().map(|c| category_symbol(*c)).collect();
        let mut classes = BTreeMap::new();
        for entry in a.retention_class.iter().filter(|e| !e.trim().is_empty()) {
            let (class, period) = entry.split_once('=').ok_or_else(|| {
                Error::Config(format!(
                    "--retention-class {entry:?}: expected CLASS=PERIOD"
                ))
            })?;
            let class = class.trim().to_ascii_uppercase();
            if !known.contains(&class.as_str()) {
                return Err(Error::Config(format!(
                    "--retention-class {entry:?}: unknown class {class:?} (one of {})",
                    known.join(", ")
                )));
            }
            let period = Period::parse(period)?;
            if classes.insert(class.clone(), period).is_some() {
                return Err(Error::Config(format!(
                    "--retention-class: class {class} given twice"
                )));
            }
        }
        Ok(Self { default, classes })
    }

    /// Canonical text (what is recorded and compared): `default=7y` then `CLASS=PERIOD` in
    /// class order, `; `-separated.
    pub fn text(&self) -> String {
        let mut parts = vec![format!("default={}", self.default)];
        parts.extend(self.classes.iter().map(|(c, p)| format!("{c}={p}")));
        parts.join("; ")
    }

    /// The TTL rules (`None`: every class is kept forever, no TTL). One rule per distinct
    /// period; the classes with their own period are excluded from the default's rule. Every
    /// rule spares held rows.
    pub fn ttl(&self) -> Option<String> {
        let mut by_period: BTreeMap<Period, Vec<&str>> = BTreeMap::new();
        for (class, period) in &self.classes {
            by_period.entry(*period).or_default().push(class);
        }
        let mut rules = Vec::new();
        for (period, classes) in &by_period {
            if let Some(expiry) = period.expiry() {
                rules.push(format!(
                    "{expiry} DELETE WHERE legal_hold = 0 AND category IN ({})",
                    quoted(classes)
                ));
            }
        }
        if let Some(expiry) = self.default.expiry() {
            let overridden: Vec<&str> = self.classes.keys().map(String::as_str).collect();
            rules.push(if overridden.is_empty() {
                format!("{expiry} DELETE WHERE legal_hold = 0")
            } else {
                format!(
                    "{expiry} DELETE WHERE legal_hold = 0 AND category NOT IN ({})",
                    quoted(&overridden)
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
        store: "clickhouse".to_owned(),
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
    let now = now_us();
    let mut attributes: Vec<KeyValue> = [
        (ATTR_STORE, "clickhouse"),
        (ATTR_OLD_POLICY, c.old),
        (ATTR_NEW_POLICY, c.new),
        (ATTR_TTL, c.ttl),
        (ATTR_TABLE, c.table),
        (ATTR_SERVER, c.server),
    ]
    .into_iter()
    .map(|(key, value)| KeyValue {
        key: key.into(),
        value: value.into(),
    })
    .collect();
    attributes.sort();
    AuditEvent {
        event_id: format!("retention-{}", uuid::Uuid::now_v7()),
        event_type: POLICY_SET_EVENT_TYPE.into(),
        category: EventCategory::Governance,
        severity: Severity::Notice,
        outcome: Outcome::Success,
        event_time_us: now,
        receive_time_us: now,
        source_component: "sink-clickhouse".into(),
        ingress: Ingress {
            channel: IngressChannel::Kafka,
            topic: None,
            partition: None,
            offset: None,
            format: "avro-single-object".into(),
        },
        actor: Actor {
            actor_type: ActorType::Service,
            id: "sink-clickhouse".into(),
            name: None,
            email: None,
            ip: None,
            user_agent: None,
            session_id: None,
            roles: vec![],
        },
        tenant: TenantContext {
            tenant_id: None,
            team_id: None,
            team_name: None,
            project_id: None,
            business_unit: None,
            cost_center: None,
            enrichment: EnrichmentStatus {
                enriched: false,
                user_found: false,
                team_found: false,
            },
        },
        target: Some(Target {
            target_type: "clickhouse_table".into(),
            id: c.table.into(),
            name: None,
        }),
        action: Action {
            verb: "set_retention".into(),
            description: Some(format!(
                "ClickHouse retention (TTL) policy changed from \"{}\" to \"{}\"; held rows are \
                 kept; the archive is not affected",
                c.old, c.new
            )),
            status: Some("success".into()),
            error: None,
        },
        trace: TraceContext {
            trace_id: None,
            span_id: None,
            parent_span_id: None,
        },
        request_id: None,
        parent_event_id: None,
        reason: Some("retention policy configured for sink-clickhouse".into()),
        data: EventData {
            payload_json: None,
            result_json: None,
            metadata_json: None,
            before_json: None,
            after_json: None,
            changes: vec![],
        },
        ai: None,
        compliance: None,
        security: None,
        performance: None,
        attributes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(default: &str, classes: &[&str]) -> RetentionArgs {
        RetentionArgs {
            retention_default: default.into(),
            retention_class: classes.iter().map(|s| (*s).to_owned()).collect(),
        }
    }

    #[test]
    fn periods_parse_and_print() {
        assert_eq!(Period::parse("7y").expect("p"), Period::Years(7));
        assert_eq!(Period::parse(" 90D ").expect("p"), Period::Days(90));
        assert_eq!(Period::parse("13mo").expect("p"), Period::Months(13));
        assert_eq!(Period::parse("Forever").expect("p"), Period::Forever);
        for bad in [
            "",
            "7",
            "y",
            "0d",
            "7m",
            "7 y",
            "-1d",
            "1.5y",
            "99999999999d",
        ] {
            assert!(Period::parse(bad).is_err(), "{bad:?}");
        }
        for p in ["7y", "90d", "13mo", "forever"] {
            assert_eq!(Period::parse(p).expect("p").to_string(), p);
        }
    }

    #[test]
    fn policy_from_args_checks_the_classes() {
        let p = RetentionPolicy::from_args(&args("7y", &["telemetry=90d", "SECURITY=10y", " "]))
            .expect("policy");
        assert_eq!(p.default, Period::Years(7));
        assert_eq!(p.classes["TELEMETRY"], Period::Days(90));
        assert_eq!(p.text(), "default=7y; SECURITY=10y; TELEMETRY=90d");
        assert!(RetentionPolicy::from_args(&args("7y", &["AUDIT=1y"])).is_err());
        assert!(RetentionPolicy::from_args(&args("7y", &["SECURITY"])).is_err());
        assert!(RetentionPolicy::from_args(&args("7y", &["SECURITY=1y", "security=2y"])).is_err());
        assert!(RetentionPolicy::from_args(&args("soon", &[])).is_err());
        let d = RetentionPolicy::from_args(&RetentionArgs::default()).expect("default");
        assert_eq!(d.text(), "default=7y");
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
