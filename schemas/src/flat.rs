//! The flat (one row per chained event) form of the audit data, shared by the ClickHouse sink
//! (which writes it) and `auditctl` (which reads it back to verify): [`AuditRow`] for the
//! `audit_events` table and [`CheckpointRow`] for `audit_checkpoints`.
//!
//! # Lossless, and strict on the way back
//!
//! The verifier never trusts a stored hash: it rebuilds the `ChainedEvent` from the stored
//! columns with [`AuditRow::to_chained`] and recomputes `canonical(event)` from it. So:
//!
//! - `to_chained(from_chained(x)) == x` for every `x` (property-tested below with
//!   `testing::arb_chained_event`): every field of `AuditEvent` has its own column(s), `Option`
//!   becomes `Nullable`, `Vec<String>` an `Array(String)`, the attribute list two parallel arrays
//!   (order kept), enums their Avro symbol, bools `UInt8`, hashes lowercase hex `String` (hex
//!   rather than `FixedString(32)` so that any byte length round-trips and analysts can read and
//!   paste them).
//! - Optional sub-records (`ai`, `compliance`, `security`, `performance`) have a `has_*` flag,
//!   because `None` and `Some` with every field empty are different events (different bytes).
//!   `target` is present exactly when `target_type`/`target_id` are non-null.
//! - **No column is ignored by `to_chained`.** Every event column feeds the rebuilt event, and
//!   the columns that are derived or redundant are checked, not skipped: `event_time` must equal
//!   the one derived from `event_time_us`, hex must be canonical lowercase, `UInt8` flags must
//!   be 0 or 1, the attribute arrays must have equal lengths, and the columns of an absent
//!   sub-record (`has_ai = 0`, null target, …) must be empty. Any other value is an error, so an
//!   analyst-visible column that was altered either changes the rebuilt event (and so its hash)
//!   or makes the row unreadable; both are findings, never silently dropped.
//!
//! Columns that are not part of the chained record are sink bookkeeping and say so:
//! `chained_offset` (the Kafka offset of the record in `<prefix>chained`, used by the sink to
//! resume) and, in the DDL only, `inserted_at`. Changing them cannot hide a change to an event.
//!
//! The column order of the structs is the table's column order for `RowBinary` (positional):
//! [`AuditRow::COLUMNS`] and [`AuditRow::select_sql`] are the one definition both the sink and
//! the verifier use.

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::checkpoint_record::Checkpoint;
use crate::event::*;

/// A stored row that cannot be turned back into the record it claims to be.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("column `{column}`: {reason}")]
pub struct FlatError {
    pub column: &'static str,
    pub reason: String,
}

impl FlatError {
    fn new(column: &'static str, reason: impl Into<String>) -> Self {
        FlatError {
            column,
            reason: reason.into(),
        }
    }
}

/// One row of `audit_events`: a chained event with its chain fields, flattened.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "clickhouse", derive(clickhouse::Row))]
pub struct AuditRow {
    // ---- chain ----
    pub chain_partition: i32,
    pub seq: i64,
    /// Lowercase hex.
    pub prev_hash: String,
    /// Lowercase hex.
    pub hash: String,
    pub canonical_version: i32,
    pub source_topic: String,
    pub source_partition: i32,
    pub source_offset: i64,
    /// Sink bookkeeping: offset of this record in `<prefix>chained` (not part of the chain).
    pub chained_offset: i64,
    // ---- event ----
    pub event_id: String,
    pub event_type: String,
    pub category: String,
    pub severity: String,
    pub outcome: String,
    pub event_time_us: i64,
    /// `DateTime` (seconds, UTC): `event_time_us` floored to seconds, clamped to `DateTime`'s
    /// range (1970 ..= 2106). Derived, for partitioning and analysts; checked on the way back.
    pub event_time: u32,
    pub receive_time_us: i64,
    pub source_component: String,
    pub ingress_channel: String,
    pub ingress_topic: Option<String>,
    pub ingress_partition: Option<i32>,
    pub ingress_offset: Option<i64>,
    pub ingress_format: String,
    pub actor_type: String,
    pub actor_id: String,
    pub actor_name: Option<String>,
    pub actor_email: Option<String>,
    pub actor_ip: Option<String>,
    pub actor_user_agent: Option<String>,
    pub actor_session_id: Option<String>,
    pub actor_roles: Vec<String>,
    pub tenant_id: Option<String>,
    pub team_id: Option<String>,
    pub team_name: Option<String>,
    pub project_id: Option<String>,
    pub business_unit: Option<String>,
    pub cost_center: Option<String>,
    pub enriched: u8,
    pub user_found: u8,
    pub team_found: u8,
    pub target_type: Option<String>,
    pub target_id: Option<String>,
    pub target_name: Option<String>,
    pub action_verb: String,
    pub action_description: Option<String>,
    pub action_status: Option<String>,
    pub action_error: Option<String>,
    pub trace_id: Option<String>,
    pub span_id: Option<String>,
    pub parent_span_id: Option<String>,
    pub request_id: Option<String>,
    pub parent_event_id: Option<String>,
    pub reason: Option<String>,
    pub payload_json: Option<String>,
    pub result_json: Option<String>,
    pub metadata_json: Option<String>,
    pub before_json: Option<String>,
    pub after_json: Option<String>,
    pub changes: Vec<String>,
    pub has_ai: u8,
    pub ai_agent_type: Option<String>,
    pub ai_model: Option<String>,
    pub ai_prompt_tokens: Option<i64>,
    pub ai_completion_tokens: Option<i64>,
    pub ai_confidence: Option<f64>,
    pub ai_reasoning: Option<String>,
    pub ai_tools: Vec<String>,
    pub ai_execution_time_ms: Option<i64>,
    pub has_compliance: u8,
    pub compliance_regulations: Vec<String>,
    pub compliance_traffic_light: Option<String>,
    pub compliance_issues_found: Option<i32>,
    pub compliance_critical_issues: Option<i32>,
    pub compliance_findings_json: Option<String>,
    pub has_security: u8,
    pub security_data_classification: Option<String>,
    pub security_encryption_used: Option<u8>,
    pub security_pii_detected: Option<u8>,
    pub security_retention_days: Option<i32>,
    pub has_performance: u8,
    pub perf_processing_time_ms: Option<i64>,
    pub perf_response_time_ms: Option<i64>,
    pub perf_db_query_time_ms: Option<i64>,
    pub perf_external_api_time_ms: Option<i64>,
    pub perf_memory_used_mb: Option<i64>,
    pub perf_resource_count: Option<i64>,
    /// Attribute keys, in the event's order (sorted, unique); parallel to `attribute_values`.
    pub attribute_keys: Vec<String>,
    pub attribute_values: Vec<String>,
}

/// Lowercase hex of `bytes` (`hex::encode` builds it a `char` at a time, which was a few
/// per cent of the ClickHouse sink's CPU for the two hashes of every row).
pub fn hex_lower(bytes: &[u8]) -> String {
    let mut out = Vec::with_capacity(bytes.len() * 2);
    for &b in bytes {
        out.extend_from_slice(&hex_pair(b));
    }
    // Only ASCII digits were pushed.
    String::from_utf8(out).unwrap_or_default()
}

/// The two lowercase hex digits of `b` (what [`hex_lower`] writes per byte).
pub(crate) fn hex_pair(b: u8) -> [u8; 2] {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    [DIGITS[usize::from(b >> 4)], DIGITS[usize::from(b & 0x0f)]]
}

/// `event_time` (DateTime seconds) for an event time in microseconds: floored, clamped to the
/// `DateTime` range.
pub fn event_time_seconds(event_time_us: i64) -> u32 {
    let secs = event_time_us.div_euclid(1_000_000);
    secs.clamp(0, i64::from(u32::MAX)) as u32
}

// ---- enums as their Avro symbols --------------------------------------------------------------

macro_rules! symbols {
    ($ty:ty, $to:ident, $from:ident, $column:literal, [$($variant:ident => $sym:literal),+ $(,)?]) => {
        /// The Avro symbol (also the JSON / column value).
        pub fn $to(v: $ty) -> &'static str {
            match v {
                $(<$ty>::$variant => $sym,)+
            }
        }

        fn $from(s: &str) -> Result<$ty, FlatError> {
            match s {
                $($sym => Ok(<$ty>::$variant),)+
                other => Err(FlatError::new($column, format!("unknown symbol {other:?}"))),
            }
        }
    };
}

symbols!(EventCategory, category_symbol, parse_category, "category", [
    UserInteraction => "USER_INTERACTION",
    SystemProcessing => "SYSTEM_PROCESSING",
    Governance => "GOVERNANCE",
    Infrastructure => "INFRASTRUCTURE",
    Security => "SECURITY",
    Telemetry => "TELEMETRY",
    Other => "OTHER",
]);

symbols!(Severity, severity_symbol, parse_severity, "severity", [
    Debug => "DEBUG",
    Info => "INFO",
    Notice => "NOTICE",
    Warning => "WARNING",
    Error => "ERROR",
    Critical => "CRITICAL",
]);

symbols!(Outcome, outcome_symbol, parse_outcome, "outcome", [
    Success => "SUCCESS",
    Failure => "FAILURE",
    Denied => "DENIED",
    Pending => "PENDING",
    Unknown => "UNKNOWN",
]);

symbols!(IngressChannel, ingress_channel_symbol, parse_ingress_channel, "ingress_channel", [
    Kafka => "KAFKA",
    Http => "HTTP",
    Otlp => "OTLP",
]);

symbols!(ActorType, actor_type_symbol, parse_actor_type, "actor_type", [
    User => "USER",
    Service => "SERVICE",
    System => "SYSTEM",
    AiAgent => "AI_AGENT",
]);

// ---- strict readers ---------------------------------------------------------------------------

fn flag(column: &'static str, v: u8) -> Result<bool, FlatError> {
    match v {
        0 => Ok(false),
        1 => Ok(true),
        other => Err(FlatError::new(
            column,
            format!("flag must be 0 or 1, found {other}"),
        )),
    }
}

fn opt_flag(column: &'static str, v: Option<u8>) -> Result<Option<bool>, FlatError> {
    v.map(|v| flag(column, v)).transpose()
}

/// Lowercase hex → bytes; anything else (uppercase, odd length, other characters) is an error,
/// so that a stored hash has exactly one spelling.
pub fn parse_hex(column: &'static str, s: &str) -> Result<Vec<u8>, FlatError> {
    let bytes = hex::decode(s).map_err(|e| FlatError::new(column, format!("not hex: {e}")))?;
    // `hex` also reads uppercase digits: what it read is lowercase iff no letter is uppercase.
    if s.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err(FlatError::new(column, "hex must be lowercase"));
    }
    Ok(bytes)
}

/// Fails if a column of an absent sub-record holds a value.
fn must_be_empty<T>(column: &'static str, present: &Option<T>, of: &str) -> Result<(), FlatError> {
    if present.is_some() {
        return Err(FlatError::new(column, format!("set, but {of} is absent")));
    }
    Ok(())
}

fn must_be_empty_vec(column: &'static str, v: &[String], of: &str) -> Result<(), FlatError> {
    if !v.is_empty() {
        return Err(FlatError::new(
            column,
            format!("non-empty, but {of} is absent"),
        ));
    }
    Ok(())
}

impl AuditRow {
    /// Column names in struct (= `RowBinary`) order.
    pub const COLUMNS: &'static [&'static str] = &[
        "chain_partition",
        "seq",
        "prev_hash",
        "hash",
        "canonical_version",
        "source_topic",
        "source_partition",
        "source_offset",
        "chained_offset",
        "event_id",
        "event_type",
        "category",
        "severity",
        "outcome",
        "event_time_us",
        "event_time",
        "receive_time_us",
        "source_component",
        "ingress_channel",
        "ingress_topic",
        "ingress_partition",
        "ingress_offset",
        "ingress_format",
        "actor_type",
        "actor_id",
        "actor_name",
        "actor_email",
        "actor_ip",
        "actor_user_agent",
        "actor_session_id",
        "actor_roles",
        "tenant_id",
        "team_id",
        "team_name",
        "project_id",
        "business_unit",
        "cost_center",
        "enriched",
        "user_found",
        "team_found",
        "target_type",
        "target_id",
        "target_name",
        "action_verb",
        "action_description",
        "action_status",
        "action_error",
        "trace_id",
        "span_id",
        "parent_span_id",
        "request_id",
        "parent_event_id",
        "reason",
        "payload_json",
        "result_json",
        "metadata_json",
        "before_json",
        "after_json",
        "changes",
        "has_ai",
        "ai_agent_type",
        "ai_model",
        "ai_prompt_tokens",
        "ai_completion_tokens",
        "ai_confidence",
        "ai_reasoning",
        "ai_tools",
        "ai_execution_time_ms",
        "has_compliance",
        "compliance_regulations",
        "compliance_traffic_light",
        "compliance_issues_found",
        "compliance_critical_issues",
        "compliance_findings_json",
        "has_security",
        "security_data_classification",
        "security_encryption_used",
        "security_pii_detected",
        "security_retention_days",
        "has_performance",
        "perf_processing_time_ms",
        "perf_response_time_ms",
        "perf_db_query_time_ms",
        "perf_external_api_time_ms",
        "perf_memory_used_mb",
        "perf_resource_count",
        "attribute_keys",
        "attribute_values",
    ];

    /// `SELECT <every column, in order> FROM <table>`; append `WHERE …`/`ORDER BY …`. Reading
    /// rows with this select list and `RowBinary` yields `AuditRow`s.
    pub fn select_sql(table: &str) -> String {
        format!("SELECT {} FROM {table}", Self::COLUMNS.join(", "))
    }

    /// The row for `c`, read at `chained_offset` of `<prefix>chained`.
    pub fn from_chained(c: &ChainedEvent, chained_offset: i64) -> Self {
        Self::from_chained_owned(c.clone(), chained_offset)
    }

    /// [`Self::from_chained`], moving the record's strings into the row instead of copying
    /// them (the ClickHouse sink flattens every record it stores).
    pub fn from_chained_owned(c: ChainedEvent, chained_offset: i64) -> Self {
        let e = c.event;
        let (target_type, target_id, target_name) = match e.target {
            Some(t) => (Some(t.target_type), Some(t.id), t.name),
            None => (None, None, None),
        };
        let has_ai = u8::from(e.ai.is_some());
        let ai = e.ai.unwrap_or_default();
        let has_compliance = u8::from(e.compliance.is_some());
        let co = e.compliance.unwrap_or_default();
        let has_security = u8::from(e.security.is_some());
        let se = e.security.unwrap_or_default();
        let has_performance = u8::from(e.performance.is_some());
        let pf = e.performance.unwrap_or_default();
        let (attribute_keys, attribute_values) = e
            .attributes
            .into_iter()
            .map(|kv| (kv.key, kv.value))
            .unzip();
        AuditRow {
            chain_partition: c.chain_partition,
            seq: c.seq,
            prev_hash: hex_lower(&c.prev_hash),
            hash: hex_lower(&c.hash),
            canonical_version: c.canonical_version,
            source_topic: c.source_topic,
            source_partition: c.source_partition,
            source_offset: c.source_offset,
            chained_offset,
            event_id: e.event_id,
            event_type: e.event_type,
            category: category_symbol(e.category).to_owned(),
            severity: severity_symbol(e.severity).to_owned(),
            outcome: outcome_symbol(e.outcome).to_owned(),
            event_time_us: e.event_time_us,
            event_time: event_time_seconds(e.event_time_us),
            receive_time_us: e.receive_time_us,
            source_component: e.source_component,
            ingress_channel: ingress_channel_symbol(e.ingress.channel).to_owned(),
            ingress_topic: e.ingress.topic,
            ingress_partition: e.ingress.partition,
            ingress_offset: e.ingress.offset,
            ingress_format: e.ingress.format,
            actor_type: actor_type_symbol(e.actor.actor_type).to_owned(),
            actor_id: e.actor.id,
            actor_name: e.actor.name,
            actor_email: e.actor.email,
            actor_ip: e.actor.ip,
            actor_user_agent: e.actor.user_agent,
            actor_session_id: e.actor.session_id,
            actor_roles: e.actor.roles,
            tenant_id: e.tenant.tenant_id,
            team_id: e.tenant.team_id,
            team_name: e.tenant.team_name,
            project_id: e.tenant.project_id,
            business_unit: e.tenant.business_unit,
            cost_center: e.tenant.cost_center,
            enriched: u8::from(e.tenant.enrichment.enriched),
            user_found: u8::from(e.tenant.enrichment.user_found),
            team_found: u8::from(e.tenant.enrichment.team_found),
            target_type,
            target_id,
            target_name,
            action_verb: e.action.verb,
            action_description: e.action.description,
            action_status: e.action.status,
            action_error: e.action.error,
            trace_id: e.trace.trace_id,
            span_id: e.trace.span_id,
            parent_span_id: e.trace.parent_span_id,
            request_id: e.request_id,
            parent_event_id: e.parent_event_id,
            reason: e.reason,
            payload_json: e.data.payload_json,
            result_json: e.data.result_json,
            metadata_json: e.data.metadata_json,
            before_json: e.data.before_json,
            after_json: e.data.after_json,
            changes: e.data.changes,
            has_ai,
            ai_agent_type: ai.agent_type,
            ai_model: ai.model,
            ai_prompt_tokens: ai.prompt_tokens,
            ai_completion_tokens: ai.completion_tokens,
            ai_confidence: ai.confidence,
            ai_reasoning: ai.reasoning,
            ai_tools: ai.tools,
            ai_execution_time_ms: ai.execution_time_ms,
            has_compliance,
            compliance_regulations: co.regulations,
            compliance_traffic_light: co.traffic_light,
            compliance_issues_found: co.issues_found,
            compliance_critical_issues: co.critical_issues,
            compliance_findings_json: co.findings_json,
            has_security,
            security_data_classification: se.data_classification,
            security_encryption_used: se.encryption_used.map(u8::from),
            security_pii_detected: se.pii_detected.map(u8::from),
            security_retention_days: se.retention_days,
            has_performance,
            perf_processing_time_ms: pf.processing_time_ms,
            perf_response_time_ms: pf.response_time_ms,
            perf_db_query_time_ms: pf.db_query_time_ms,
            perf_external_api_time_ms: pf.external_api_time_ms,
            perf_memory_used_mb: pf.memory_used_mb,
            perf_resource_count: pf.resource_count,
            attribute_keys,
            attribute_values,
        }
    }

    /// The chained record this row stores. Strict: every column is used or checked (see the
    /// module docs); a row that does not describe exactly one record is an error.
    pub fn to_chained(&self) -> Result<ChainedEvent, FlatError> {
        self.clone().into_chained().map_err(|(e, _)| e)
    }

    /// [`Self::to_chained`], moving the row's strings into the record instead of copying them
    /// (the verifier rebuilds every row it reads). On error the row is handed back whole.
    pub fn into_chained(self) -> Result<ChainedEvent, (FlatError, Box<Self>)> {
        match self.check() {
            Ok(k) => Ok(self.build(k)),
            Err(e) => Err((e, Box::new(self))),
        }
    }

    /// Every check of [`Self::to_chained`], and what the checks parse, before anything is moved.
    fn check(&self) -> Result<Checked, FlatError> {
        let derived = event_time_seconds(self.event_time_us);
        if self.event_time != derived {
            return Err(FlatError::new(
                "event_time",
                format!(
                    "{} does not match event_time_us {} (expected {derived})",
                    self.event_time, self.event_time_us
                ),
            ));
        }
        if self.attribute_keys.len() != self.attribute_values.len() {
            return Err(FlatError::new(
                "attribute_values",
                format!(
                    "{} values for {} keys",
                    self.attribute_values.len(),
                    self.attribute_keys.len()
                ),
            ));
        }
        Ok(Checked {
            category: parse_category(&self.category)?,
            severity: parse_severity(&self.severity)?,
            outcome: parse_outcome(&self.outcome)?,
            channel: parse_ingress_channel(&self.ingress_channel)?,
            actor_type: parse_actor_type(&self.actor_type)?,
            enrichment: EnrichmentStatus {
                enriched: flag("enriched", self.enriched)?,
                user_found: flag("user_found", self.user_found)?,
                team_found: flag("team_found", self.team_found)?,
            },
            target: self.check_target()?,
            ai: self.check_ai()?,
            compliance: self.check_compliance()?,
            security: self.check_security()?,
            performance: self.check_performance()?,
            prev_hash: parse_hex("prev_hash", &self.prev_hash)?,
            hash: parse_hex("hash", &self.hash)?,
        })
    }

    /// The record, from a row that passed [`Self::check`]: nothing here can fail.
    fn build(self, k: Checked) -> ChainedEvent {
        let AuditRow {
            chain_partition,
            seq,
            prev_hash: _,
            hash: _,
            canonical_version,
            source_topic,
            source_partition,
            source_offset,
            chained_offset: _,
            event_id,
            event_type,
            category: _,
            severity: _,
            outcome: _,
            event_time_us,
            event_time: _,
            receive_time_us,
            source_component,
            ingress_channel: _,
            ingress_topic,
            ingress_partition,
            ingress_offset,
            ingress_format,
            actor_type: _,
            actor_id,
            actor_name,
            actor_email,
            actor_ip,
            actor_user_agent,
            actor_session_id,
            actor_roles,
            tenant_id,
            team_id,
            team_name,
            project_id,
            business_unit,
            cost_center,
            enriched: _,
            user_found: _,
            team_found: _,
            target_type,
            target_id,
            target_name,
            action_verb,
            action_description,
            action_status,
            action_error,
            trace_id,
            span_id,
            parent_span_id,
            request_id,
            parent_event_id,
            reason,
            payload_json,
            result_json,
            metadata_json,
            before_json,
            after_json,
            changes,
            has_ai: _,
            ai_agent_type,
            ai_model,
            ai_prompt_tokens,
            ai_completion_tokens,
            ai_confidence,
            ai_reasoning,
            ai_tools,
            ai_execution_time_ms,
            has_compliance: _,
            compliance_regulations,
            compliance_traffic_light,
            compliance_issues_found,
            compliance_critical_issues,
            compliance_findings_json,
            has_security: _,
            security_data_classification,
            security_encryption_used: _,
            security_pii_detected: _,
            security_retention_days,
            has_performance: _,
            perf_processing_time_ms,
            perf_response_time_ms,
            perf_db_query_time_ms,
            perf_external_api_time_ms,
            perf_memory_used_mb,
            perf_resource_count,
            attribute_keys,
            attribute_values,
        } = self;
        let target = match (k.target, target_type, target_id) {
            (true, Some(target_type), Some(id)) => Some(Target {
                target_type,
                id,
                name: target_name,
            }),
            _ => None,
        };
        let event = AuditEvent {
            event_id,
            event_type,
            category: k.category,
            severity: k.severity,
            outcome: k.outcome,
            event_time_us,
            receive_time_us,
            source_component,
            ingress: Ingress {
                channel: k.channel,
                topic: ingress_topic,
                partition: ingress_partition,
                offset: ingress_offset,
                format: ingress_format,
            },
            actor: Actor {
                actor_type: k.actor_type,
                id: actor_id,
                name: actor_name,
                email: actor_email,
                ip: actor_ip,
                user_agent: actor_user_agent,
                session_id: actor_session_id,
                roles: actor_roles,
            },
            tenant: TenantContext {
                tenant_id,
                team_id,
                team_name,
                project_id,
                business_unit,
                cost_center,
                enrichment: k.enrichment,
            },
            target,
            action: Action {
                verb: action_verb,
                description: action_description,
                status: action_status,
                error: action_error,
            },
            trace: TraceContext {
                trace_id,
                span_id,
                parent_span_id,
            },
            request_id,
            parent_event_id,
            reason,
            data: EventData {
                payload_json,
                result_json,
                metadata_json,
                before_json,
                after_json,
                changes,
            },
            ai: k.ai.then_some(AiContext {
                agent_type: ai_agent_type,
                model: ai_model,
                prompt_tokens: ai_prompt_tokens,
                completion_tokens: ai_completion_tokens,
                confidence: ai_confidence,
                reasoning: ai_reasoning,
                tools: ai_tools,
                execution_time_ms: ai_execution_time_ms,
            }),
            compliance: k.compliance.then_some(ComplianceContext {
                regulations: compliance_regulations,
                traffic_light: compliance_traffic_light,
                issues_found: compliance_issues_found,
                critical_issues: compliance_critical_issues,
                findings_json: compliance_findings_json,
            }),
            security: k
                .security
                .map(|(encryption_used, pii_detected)| SecurityContext {
                    data_classification: security_data_classification,
                    encryption_used,
                    pii_detected,
                    retention_days: security_retention_days,
                }),
            performance: k.performance.then_some(Performance {
                processing_time_ms: perf_processing_time_ms,
                response_time_ms: perf_response_time_ms,
                db_query_time_ms: perf_db_query_time_ms,
                external_api_time_ms: perf_external_api_time_ms,
                memory_used_mb: perf_memory_used_mb,
                resource_count: perf_resource_count,
            }),
            attributes: attribute_keys
                .into_iter()
                .zip(attribute_values)
                .map(|(key, value)| KeyValue { key, value })
                .collect(),
        };
        ChainedEvent {
            chain_partition,
            seq,
            prev_hash: k.prev_hash,
            hash: k.hash,
            canonical_version,
            source_topic,
            source_partition,
            source_offset,
            event,
        }
    }

    /// Whether the row holds a target (both its type and id, or neither and no name).
    fn check_target(&self) -> Result<bool, FlatError> {
        match (&self.target_type, &self.target_id) {
            (Some(_), Some(_)) => Ok(true),
            (None, None) => {
                must_be_empty("target_name", &self.target_name, "the target")?;
                Ok(false)
            }
            (Some(_), None) => Err(FlatError::new("target_id", "null, but target_type is set")),
            (None, Some(_)) => Err(FlatError::new("target_type", "null, but target_id is set")),
        }
    }

    fn check_ai(&self) -> Result<bool, FlatError> {
        if flag("has_ai", self.has_ai)? {
            return Ok(true);
        }
        let of = "has_ai = 0";
        must_be_empty("ai_agent_type", &self.ai_agent_type, of)?;
        must_be_empty("ai_model", &self.ai_model, of)?;
        must_be_empty("ai_prompt_tokens", &self.ai_prompt_tokens, of)?;
        must_be_empty("ai_completion_tokens", &self.ai_completion_tokens, of)?;
        must_be_empty("ai_confidence", &self.ai_confidence, of)?;
        must_be_empty("ai_reasoning", &self.ai_reasoning, of)?;
        must_be_empty_vec("ai_tools", &self.ai_tools, of)?;
        must_be_empty("ai_execution_time_ms", &self.ai_execution_time_ms, of)?;
        Ok(false)
    }

    fn check_compliance(&self) -> Result<bool, FlatError> {
        if flag("has_compliance", self.has_compliance)? {
            return Ok(true);
        }
        let of = "has_compliance = 0";
        must_be_empty_vec("compliance_regulations", &self.compliance_regulations, of)?;
        must_be_empty(
            "compliance_traffic_light",
            &self.compliance_traffic_light,
            of,
        )?;
        must_be_empty("compliance_issues_found", &self.compliance_issues_found, of)?;
        must_be_empty(
            "compliance_critical_issues",
            &self.compliance_critical_issues,
            of,
        )?;
        must_be_empty(
            "compliance_findings_json",
            &self.compliance_findings_json,
            of,
        )?;
        Ok(false)
    }

    /// `Some((encryption_used, pii_detected))` if the row holds a security context.
    #[allow(clippy::type_complexity)]
    fn check_security(&self) -> Result<Option<(Option<bool>, Option<bool>)>, FlatError> {
        if flag("has_security", self.has_security)? {
            return Ok(Some((
                opt_flag("security_encryption_used", self.security_encryption_used)?,
                opt_flag("security_pii_detected", self.security_pii_detected)?,
            )));
        }
        let of = "has_security = 0";
        must_be_empty(
            "security_data_classification",
            &self.security_data_classification,
            of,
        )?;
        must_be_empty(
            "security_encryption_used",
            &self.security_encryption_used,
            of,
        )?;
        must_be_empty("security_pii_detected", &self.security_pii_detected, of)?;
        must_be_empty("security_retention_days", &self.security_retention_days, of)?;
        Ok(None)
    }

    fn check_performance(&self) -> Result<bool, FlatError> {
        if flag("has_performance", self.has_performance)? {
            return Ok(true);
        }
        let of = "has_performance = 0";
        must_be_empty("perf_processing_time_ms", &self.perf_processing_time_ms, of)?;
        must_be_empty("perf_response_time_ms", &self.perf_response_time_ms, of)?;
        must_be_empty("perf_db_query_time_ms", &self.perf_db_query_time_ms, of)?;
        must_be_empty(
            "perf_external_api_time_ms",
            &self.perf_external_api_time_ms,
            of,
        )?;
        must_be_empty("perf_memory_used_mb", &self.perf_memory_used_mb, of)?;
        must_be_empty("perf_resource_count", &self.perf_resource_count, of)?;
        Ok(false)
    }
}

/// What [`AuditRow::check`] parsed: the enums, flags and hashes, and which optional parts the
/// row holds.
struct Checked {
    category: EventCategory,
    severity: Severity,
    outcome: Outcome,
    channel: IngressChannel,
    actor_type: ActorType,
    enrichment: EnrichmentStatus,
    target: bool,
    ai: bool,
    compliance: bool,
    security: Option<(Option<bool>, Option<bool>)>,
    performance: bool,
    prev_hash: Vec<u8>,
    hash: Vec<u8>,
}

/// One row of `audit_checkpoints`: a signed checkpoint, every field kept (bytes as lowercase
/// hex), plus its offset in `<prefix>checkpoints` (sink bookkeeping).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "clickhouse", derive(clickhouse::Row))]
pub struct CheckpointRow {
    pub chain_id: String,
    pub chain_partition: i32,
    pub first_seq: i64,
    pub seq: i64,
    pub head_hash: String,
    pub merkle_root: String,
    pub time_us: i64,
    /// `DateTime` seconds derived from `time_us` (checked on the way back).
    pub time: u32,
    pub key_id: String,
    pub signature: String,
    pub checkpoint_offset: i64,
    /// The signed partition count (0: a v1 checkpoint without one). Last, so that the
    /// column added by sink-clickhouse's migration 5 lines up with the struct.
    pub partition_count: i32,
    /// The whole-tree root, hex ('' in range-only checkpoints); migration 6, after
    /// `partition_count` for the same reason.
    pub tree_root: String,
}

impl CheckpointRow {
    pub const COLUMNS: &'static [&'static str] = &[
        "chain_id",
        "chain_partition",
        "first_seq",
        "seq",
        "head_hash",
        "merkle_root",
        "time_us",
        "time",
        "key_id",
        "signature",
        "checkpoint_offset",
        "partition_count",
        "tree_root",
    ];

    /// `SELECT <every column, in order> FROM <table>`.
    pub fn select_sql(table: &str) -> String {
        format!("SELECT {} FROM {table}", Self::COLUMNS.join(", "))
    }

    pub fn from_checkpoint(c: &Checkpoint, checkpoint_offset: i64) -> Self {
        CheckpointRow {
            chain_id: c.chain_id.clone(),
            chain_partition: c.partition,
            first_seq: c.first_seq,
            seq: c.seq,
            head_hash: hex::encode(&c.head_hash),
            merkle_root: hex::encode(&c.merkle_root),
            time_us: c.time_us,
            time: event_time_seconds(c.time_us),
            key_id: c.key_id.clone(),
            signature: hex::encode(&c.signature),
            checkpoint_offset,
            partition_count: c.partition_count,
            tree_root: hex::encode(&c.tree_root),
        }
    }

    pub fn to_checkpoint(&self) -> Result<Checkpoint, FlatError> {
        if self.time != event_time_seconds(self.time_us) {
            return Err(FlatError::new("time", "does not match time_us"));
        }
        Ok(Checkpoint {
            chain_id: self.chain_id.clone(),
            partition: self.chain_partition,
            first_seq: self.first_seq,
            seq: self.seq,
            head_hash: parse_hex("head_hash", &self.head_hash)?,
            merkle_root: parse_hex("merkle_root", &self.merkle_root)?,
            time_us: self.time_us,
            partition_count: self.partition_count,
            tree_root: parse_hex("tree_root", &self.tree_root)?,
            key_id: self.key_id.clone(),
            signature: parse_hex("signature", &self.signature)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{arb_chained_event, arb_checkpoint, sample_event};
    use proptest::prelude::*;

    fn sample_chained() -> ChainedEvent {
        ChainedEvent {
            chain_partition: 3,
            seq: 7,
            prev_hash: vec![0; 32],
            hash: vec![0xab; 32],
            canonical_version: 1,
            source_topic: "audit.enriched".into(),
            source_partition: 3,
            source_offset: 41,
            event: sample_event(),
        }
    }

    /// Runs a property on a thread with a large stack: the full `ChainedEvent` strategy is
    /// deep enough to overflow the default 2 MiB test-thread stack in debug builds.
    fn check<S, M, F>(make: M, test: F)
    where
        S: Strategy,
        S::Value: std::fmt::Debug,
        M: FnOnce() -> S + Send + 'static,
        F: Fn(S::Value) -> Result<(), TestCaseError> + Send + 'static,
    {
        let handle = std::thread::Builder::new()
            .stack_size(256 << 20)
            .spawn(move || {
                let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
                    cases: 256,
                    failure_persistence: None,
                    ..ProptestConfig::default()
                });
                runner.run(&make(), test).map_err(|e| e.to_string())
            })
            .expect("spawn property thread");
        if let Err(e) = handle.join().expect("property thread panicked") {
            panic!("{e}");
        }
    }

    proptest! {
        #[test]
        fn hashes_are_lowercase_hex_as_hex_writes_them(bytes in proptest::collection::vec(any::<u8>(), 0..80)) {
            prop_assert_eq!(hex_lower(&bytes), hex::encode(&bytes));
        }
    }

    #[test]
    fn chained_roundtrips_exactly() {
        check(
            || (arb_chained_event(), any::<i64>()),
            |(c, off)| {
                let row = AuditRow::from_chained(&c, off);
                prop_assert_eq!(row.chained_offset, off);
                prop_assert_eq!(row.to_chained().expect("to_chained"), c);
                Ok(())
            },
        );
    }

    #[test]
    fn checkpoint_roundtrips_exactly() {
        check(
            || (arb_checkpoint(), any::<i64>()),
            |(c, off)| {
                let row = CheckpointRow::from_checkpoint(&c, off);
                prop_assert_eq!(row.to_checkpoint().expect("to_checkpoint"), c);
                Ok(())
            },
        );
    }

    #[test]
    fn select_lists_every_column_once() {
        let sql = AuditRow::select_sql("audit_events");
        assert!(sql.starts_with("SELECT chain_partition, seq, prev_hash"));
        let mut seen = std::collections::HashSet::new();
        assert!(AuditRow::COLUMNS.iter().all(|c| seen.insert(*c)));
        // Same set as the struct's fields (the order is checked against the `Row` derive in
        // the sink's tests, which enable the `clickhouse` feature).
        let row = AuditRow::from_chained(&sample_chained(), 0);
        let json = serde_json::to_value(&row).expect("to json");
        let fields: std::collections::BTreeSet<&str> = json
            .as_object()
            .expect("object")
            .keys()
            .map(String::as_str)
            .collect();
        let columns: std::collections::BTreeSet<&str> = AuditRow::COLUMNS.iter().copied().collect();
        assert_eq!(fields, columns);
        let cp = Checkpoint {
            chain_id: "c".into(),
            partition: 0,
            first_seq: 1,
            seq: 2,
            head_hash: vec![1; 32],
            merkle_root: vec![2; 32],
            time_us: 3,
            partition_count: 4,
            key_id: "k".into(),
            signature: vec![4; 64],
            tree_root: Vec::new(),
        };
        let cp = CheckpointRow::from_checkpoint(&cp, 0);
        let json = serde_json::to_value(&cp).expect("to json");
        assert_eq!(
            json.as_object().expect("object").len(),
            CheckpointRow::COLUMNS.len()
        );
    }

    #[test]
    fn event_time_is_floored_and_clamped() {
        assert_eq!(event_time_seconds(1_705_314_600_999_999), 1_705_314_600);
        assert_eq!(event_time_seconds(-1), 0);
        assert_eq!(event_time_seconds(i64::MAX), u32::MAX);
    }

    /// Every kind of tampering with a column is either an error or a different event.
    #[test]
    fn altered_columns_are_never_ignored() {
        let c = sample_chained();
        let row = AuditRow::from_chained(&c, 10);
        let changed = |f: &dyn Fn(&mut AuditRow)| {
            let mut r = row.clone();
            f(&mut r);
            r.to_chained().map(|x| x != c)
        };
        // Different event.
        assert_eq!(changed(&|r| r.actor_id = "mallory".into()), Ok(true));
        assert_eq!(changed(&|r| r.attribute_values[0] = "dev".into()), Ok(true));
        assert_eq!(changed(&|r| r.perf_resource_count = None), Ok(true));
        // Unreadable row.
        assert!(changed(&|r| r.event_time += 1).is_err());
        assert!(changed(&|r| r.enriched = 2).is_err());
        assert!(changed(&|r| r.severity = "info".into()).is_err());
        assert!(changed(&|r| r.hash = r.hash.to_uppercase()).is_err());
        assert!(changed(&|r| r.attribute_keys.push("x".into())).is_err());
        assert!(changed(&|r| r.compliance_traffic_light = Some("GREEN".into())).is_err());
        assert!(changed(&|r| r.security_retention_days = Some(1)).is_err());
        assert!(changed(&|r| r.target_id = None).is_err());
        // has_ai = 0 while ai fields are set.
        assert!(changed(&|r| r.has_ai = 0).is_err());
        // Sink bookkeeping is not part of the record.
        assert_eq!(changed(&|r| r.chained_offset = 99), Ok(false));
        // The moving form gives the same record, and a row it refuses back whole.
        assert_eq!(row.clone().into_chained().ok(), Some(c));
        let mut bad = row.clone();
        bad.has_ai = 0;
        let (e, back) = bad
            .clone()
            .into_chained()
            .expect_err("has_ai = 0 with ai fields");
        assert!(e.column.starts_with("ai_"), "{e:?}");
        assert_eq!(*back, bad);
    }

    #[test]
    fn absent_and_empty_subrecords_differ() {
        let mut c = sample_chained();
        c.event.security = Some(SecurityContext {
            data_classification: None,
            encryption_used: None,
            pii_detected: None,
            retention_days: None,
        });
        let row = AuditRow::from_chained(&c, 0);
        assert_eq!(row.has_security, 1);
        assert_eq!(row.to_chained().expect("back"), c);
        c.event.security = None;
        assert_eq!(AuditRow::from_chained(&c, 0).has_security, 0);
    }
}
