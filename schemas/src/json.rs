//! JSON → [`AuditEvent`] mapping, used by ingest to validate what platform components publish.
//!
//! # Accepted shapes
//!
//! - The envelope `{"event": {…}}` (the structure platform components already publish), or
//! - the same fields as a flat object (no envelope).
//!
//! Field names are camelCase; the snake_case spelling is accepted as an alias for every field
//! below (`eventType` / `event_type`, …). `null` counts as absent.
//!
//! # Mapping (paths relative to the event object)
//!
//! | JSON | `AuditEvent` | notes |
//! |---|---|---|
//! | `id` / `eventId` | `event_id` | optional; else `JsonContext::derived_event_id`. Non-empty, ≤ 256 bytes, no control characters; any string (`evt-…` is fine, not a UUID) |
//! | `eventType` | `event_type` | **required**, non-empty string |
//! | `timestamp` / `eventTime` | `event_time_us` | **required**, RFC 3339 with any offset and fraction (sub-µs digits truncated); not before 2000-01-01, not more than `max_future_skew_us` after receive time |
//! | — | `receive_time_us`, `ingress` | from `JsonContext` |
//! | `source` / `sourceComponent` | `source_component` | **required**, non-empty string |
//! | `category` | `category` | any value ([labels](#labels)): `user_interaction`, `system_processing`, `governance`, `infrastructure`, `security`, `telemetry`, `other`; anything else → `OTHER` + original; absent = `OTHER` |
//! | `severity` | `severity` | any value: `debug`, `info`, `notice`, `warning`, `error`, `critical`; synonyms `warn`, `trace`, `information(al)`, `err`, `crit`, `fatal`, `alert`, `emerg(ency)`; anything else → `INFO` + original; absent = `INFO` |
//! | `outcome` | `outcome` | any value: `success`, `failure`, `denied`, `pending`, `unknown`; synonyms succeeded/successful/ok/completed, failed/error, blocked/rejected/forbidden, in_progress/awaiting_approval; anything else → `UNKNOWN` + original; absent = derived from `result.status`, else `action.status`, with the same words (no original: the status is kept where it was), else UNKNOWN |
//! | `actor.id`, else `userId`, else `serviceId` | `actor.id` | **one required**; if several are given they must agree |
//! | `actor.type`, else `actorType` | `actor.actor_type` | any value: `user`, `service`, `system`, `ai_agent`; anything else → `SYSTEM` + original; absent = USER (SERVICE when the id came from `serviceId`) |
//! | `actor.name`, else `userName` | `actor.name` | |
//! | `actor.email`, `actor.roles[]` | `actor.email`, `actor.roles` | usually filled by enrich |
//! | `actor.ip`, else `metadata.clientIp` | `actor.ip` | |
//! | `actor.userAgent`, else `metadata.userAgent` | `actor.user_agent` | |
//! | `sessionId`, else `actor.sessionId`, else `metadata.sessionId` | `actor.session_id` | |
//! | `tenantId`, `teamId`, `projectId`, `teamName`, `businessUnit`, `costCenter` | `tenant.*` | strings; names/business fields are normally filled by enrich |
//! | `target {type, id, name}` | `target` | `type` and `id` required inside; `targetType` alias for `type` |
//! | `action` (string) | `action.verb` | |
//! | `action {verb, description, status, error}` | `action` | `verb` required inside |
//! | — | `action.verb` | absent `action` = the event type |
//! | — | `action.status`, `action.error` | absent = `result.status` / `result.error` when those are strings |
//! | `traceId`, `spanId`, `parentId` / `parentSpanId` | `trace.*` | |
//! | `requestId`, `parentEventId`, `reason` | same | strings |
//! | `data` (any JSON) | `data.payload_json` | verbatim, normalised |
//! | `result` (any JSON) | `data.result_json` | verbatim, normalised |
//! | `metadata` (object) | `data.metadata_json` | after lifting `clientIp`, `userAgent`, `sessionId`, `processingTime`, `resourceCount`; a lifted key is removed only when its value was used (or equals the value used), so nothing is lost; empty remainder = none |
//! | `before`, `after` (any JSON) | `data.before_json`, `data.after_json` | normalised |
//! | `changes[]` | `data.changes` | strings, producer order |
//! | `ai {agentType, model, promptTokens, completionTokens, confidence, reasoning, tools[], executionTimeMs}` | `ai` | strict types; `confidence` in 0..=1 |
//! | `data.{agentType, model, promptTokens, completionTokens, confidence, reasoning, tools, executionTimeMs}` | `ai.*` | lenient fallback for fields `ai` does not give: lifted only when well-typed (confidence in 0..=1), never an error, and they stay in `payload_json` too |
//! | `compliance {regulations[], trafficLight, issuesFound, criticalIssues, findings}` | `compliance` | `findings` any JSON, normalised |
//! | `security {dataClassification, encryptionUsed, piiDetected, retentionDays}` | `security` | |
//! | `performance {processingTimeMs, responseTimeMs, dbQueryTimeMs, externalApiTimeMs, memoryUsedMb, resourceCount}` | `performance` | |
//! | `metadata.processingTime`, `metadata.resourceCount` | `performance.processing_time_ms`, `.resource_count` | when `performance` does not give them |
//! | `attributes` (object of string → string) | `attributes` | sorted by key; non-string value = `wrong_type`; a key starting `audit.original.` or `audit.enrich.` is kept as `producer.<key>` (prefixed again while taken) |
//! | — | `attributes` `audit.original.{category,severity,outcome,actor_type}` | the producer's label text when it is not an enum name ([labels](#labels)); not counted against `max_attributes` |
//! | `receiveTime`, `ingress`, `enrichment` | — | written by [`event_to_json`] only; ignored on input (the pipeline owns them) |
//! | any other key (beside the envelope, in the event, or inside a known object) | `data.metadata_json` under `_unmapped` | kept, with the same nesting, so an audit record never silently drops producer data |
//!
//! # Labels
//!
//! Category, severity, outcome and actor type are closed vocabularies, but a producer's label is
//! never a reason to lose its event: an enum name (any case, `_`/`-`/space insensitive) maps to
//! its value; a synonym maps to its value and keeps the text; anything else (any string, `""`
//! included) gets the fallback the Avro schema already names for unknown symbols (`OTHER`,
//! `INFO`, `UNKNOWN`, `SYSTEM`) and keeps the text. The text is kept in `attributes` under
//! `audit.original.<field>` (no schema change, so the chain's canonical bytes keep their form);
//! [`labels::producer_text`] reads it back. [`JsonContext::strict_labels`] (ingest
//! `--strict-labels`) rejects unknown text `invalid_value` instead. A label that is not a string
//! (`"severity": 3`) is an unknown label whose original is its normalised JSON text (`3`); in
//! strict mode it is `wrong_type`. Details and the reserved namespace: [`labels`].
//! [`event_to_json`] writes a kept original back as the label, so the JSON maps back exactly.
//!
//! Integers accept JSON integers (and floats with no fractional part). Normalised JSON text is
//! compact with object keys sorted at every level, written by this module (not by relying on
//! serde_json's map order, which a `preserve_order` feature elsewhere in the build could change).
//!
//! # Errors
//!
//! [`JsonError`] carries a machine code ([`JsonErrorCode::as_str`]), the JSON path of the
//! offending field (`event.timestamp`, `event.attributes.env`, `event.changes[2]`; empty for the
//! whole document) and a human message.

use std::borrow::Cow;
use std::fmt;
use std::rc::Rc;

use serde_json::{Map, Number, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::event::{
    Action, Actor, ActorType, AiContext, AuditEvent, ComplianceContext, EnrichmentStatus,
    EventCategory, EventData, Ingress, IngressChannel, KeyValue, Outcome, Performance,
    SecurityContext, Severity, Target, TenantContext, TraceContext,
};
use crate::validate;

mod fields;
pub mod labels;

use fields::Fields;
use labels::LabelKind;

pub use crate::validate::MIN_EVENT_TIME_US;

/// Size and sanity limits for JSON input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonLimits {
    /// Whole document, bytes.
    pub max_total_bytes: usize,
    /// Any single mapped string field, bytes.
    pub max_string_bytes: usize,
    pub max_attributes: usize,
    /// Nesting depth of the document; the root object is depth 1.
    pub max_depth: usize,
    /// How far after the receive time an event time may be.
    pub max_future_skew_us: i64,
}

impl Default for JsonLimits {
    fn default() -> Self {
        JsonLimits {
            max_total_bytes: 1024 * 1024,
            max_string_bytes: 64 * 1024,
            max_attributes: 256,
            max_depth: 32,
            max_future_skew_us: 24 * 3600 * 1_000_000,
        }
    }
}

/// What ingest knows about a record besides its bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct JsonContext {
    pub receive_time_us: i64,
    pub ingress: Ingress,
    /// Used as `event_id` when the producer gives none.
    pub derived_event_id: String,
    pub limits: JsonLimits,
    /// Strict label mode: a category, severity, outcome or actor type outside its vocabulary is
    /// rejected `invalid_value` instead of kept with its original ([`labels`]). Off by default.
    pub strict_labels: bool,
}

impl JsonContext {
    pub fn new(receive_time_us: i64, ingress: Ingress, derived_event_id: String) -> Self {
        JsonContext {
            receive_time_us,
            ingress,
            derived_event_id,
            limits: JsonLimits::default(),
            strict_labels: false,
        }
    }
}

/// Machine-readable reason of a [`JsonError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum JsonErrorCode {
    InvalidJson,
    NotUtf8,
    MissingField,
    WrongType,
    InvalidValue,
    TooLarge,
    /// Nested deeper than [`JsonLimits::max_depth`] (or serde_json's own recursion limit): its
    /// own code, so a producer can tell "too big" from "too deep".
    TooDeep,
    TimestampOutOfRange,
    NotAnObject,
}

impl JsonErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            JsonErrorCode::InvalidJson => "invalid_json",
            JsonErrorCode::NotUtf8 => "not_utf8",
            JsonErrorCode::MissingField => "missing_field",
            JsonErrorCode::WrongType => "wrong_type",
            JsonErrorCode::InvalidValue => "invalid_value",
            JsonErrorCode::TooLarge => "too_large",
            JsonErrorCode::TooDeep => "too_deep",
            JsonErrorCode::TimestampOutOfRange => "timestamp_out_of_range",
            JsonErrorCode::NotAnObject => "not_an_object",
        }
    }
}

impl std::fmt::Display for JsonErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A precise validation failure: code, JSON path, human message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code} at {}: {message}", if path.is_empty() { "(document)" } else { path.as_str() })]
pub struct JsonError {
    pub code: JsonErrorCode,
    /// Dotted path of the offending field, e.g. `event.timestamp`; empty for the whole document.
    pub path: String,
    pub message: String,
}

impl JsonError {
    pub(crate) fn new(
        code: JsonErrorCode,
        path: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        JsonError {
            code,
            path: path.into(),
            message: message.into(),
        }
    }
}

type JResult<T> = Result<T, JsonError>;

// ---- parsing -----------------------------------------------------------------------------------

/// Validates a JSON record and maps it to an [`AuditEvent`] (see the module docs for the table).
pub fn event_from_json(bytes: &[u8], ctx: &JsonContext) -> Result<AuditEvent, JsonError> {
    let limits = &ctx.limits;
    if bytes.len() > limits.max_total_bytes {
        return Err(JsonError::new(
            JsonErrorCode::TooLarge,
            "",
            format!(
                "document is {} bytes, limit {}",
                bytes.len(),
                limits.max_total_bytes
            ),
        ));
    }
    let text = std::str::from_utf8(bytes).map_err(|e| {
        JsonError::new(
            JsonErrorCode::NotUtf8,
            "",
            format!("invalid UTF-8 at byte {}", e.valid_up_to()),
        )
    })?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let root: Value = serde_json::from_str(text).map_err(|e| classify_parse_error(text, &e))?;
    check_depth(&root, limits.max_depth)?;
    let Value::Object(mut root) = root else {
        return Err(JsonError::new(
            JsonErrorCode::NotAnObject,
            "",
            format!("expected a JSON object, got {}", type_name(&root)),
        ));
    };

    // Envelope or flat. A flat object never has an `event` key in this mapping, so its presence
    // decides.
    let (event_map, prefix, envelope_rest) = match root.remove("event") {
        Some(Value::Object(m)) => (m, "event", root),
        Some(other) => {
            return Err(JsonError::new(
                JsonErrorCode::WrongType,
                "event",
                format!("expected the event object, got {}", type_name(&other)),
            ))
        }
        None => (root, "", Map::new()),
    };
    let mut unmapped = Map::new();
    for (k, v) in envelope_rest {
        unmapped.insert(k, v);
    }
    let mut ev = Obj::new(event_map, prefix, limits);
    map_event(&mut ev, ctx, unmapped)
}

fn map_event(
    ev: &mut Obj<'_>,
    ctx: &JsonContext,
    mut unmapped: Map<String, Value>,
) -> JResult<AuditEvent> {
    let limits = ev.limits;

    // Output-only keys written by `event_to_json`: the pipeline, not the producer, owns them.
    for k in ["receiveTime", "receive_time", "ingress", "enrichment"] {
        ev.map.remove(k);
    }

    let event_id = match ev.str(&["id", "eventId", "event_id"])? {
        Some((p, id)) => {
            validate::check_event_id(&id, &p.as_str())?;
            id
        }
        None => ctx.derived_event_id.clone(),
    };
    let event_type = ev.required_nonempty_str(&["eventType", "event_type"])?;
    let event_time_us = {
        let (p, ts) = ev
            .str(&["timestamp", "eventTime", "event_time"])?
            .ok_or_else(|| ev.missing("timestamp"))?;
        parse_event_time(&ts, &p.as_str(), ctx)?
    };
    let source_component =
        ev.required_nonempty_str(&["source", "sourceComponent", "source_component"])?;
    let strict = ctx.strict_labels;
    let (category, category_original) = match ev.label(&["category"], strict)? {
        Some((p, s)) => labels::map_category(s, &p.as_str(), strict)?,
        None => (EventCategory::Other, None),
    };
    let (severity, severity_original) = match ev.label(&["severity"], strict)? {
        Some((p, s)) => labels::map_severity(s, &p.as_str(), strict)?,
        None => (Severity::Info, None),
    };
    let explicit_outcome = match ev.label(&["outcome"], strict)? {
        Some((p, s)) => Some(labels::map_outcome(s, &p.as_str(), strict)?),
        None => None,
    };

    // ---- actor
    let mut actor_obj = ev.object(&["actor"])?;
    let actor_id_obj = match actor_obj.as_mut() {
        Some(a) => a.str(&["id"])?,
        None => None,
    };
    let user_id = ev.str(&["userId", "user_id"])?;
    let service_id = ev.str(&["serviceId", "service_id"])?;
    let (actor_id, default_type) = {
        let mut chosen: Option<(FieldPath, String, ActorType)> = None;
        for (cand, ty) in [
            (actor_id_obj, ActorType::User),
            (user_id, ActorType::User),
            (service_id, ActorType::Service),
        ] {
            if let Some((p, id)) = cand {
                match &chosen {
                    None => chosen = Some((p, id, ty)),
                    Some((cp, cid, _)) if *cid != id => {
                        return Err(JsonError::new(
                            JsonErrorCode::InvalidValue,
                            p,
                            format!("actor id {id:?} conflicts with {cp} = {cid:?}"),
                        ))
                    }
                    Some(_) => {}
                }
            }
        }
        match chosen {
            Some((_, id, ty)) => (id, ty),
            None => {
                return Err(JsonError::new(
                    JsonErrorCode::MissingField,
                    ev.path("userId"),
                    format!(
                        "an actor id is required: one of {}, {} or {}",
                        ev.path("userId"),
                        ev.path("actor.id"),
                        ev.path("serviceId")
                    ),
                ))
            }
        }
    };
    let actor_type_obj = match actor_obj.as_mut() {
        Some(a) => a.label(&["type", "actorType", "actor_type"], strict)?,
        None => None,
    };
    let actor_type_top = ev.label(&["actorType", "actor_type"], strict)?;
    let (actor_type, actor_type_original) = match actor_type_obj.or(actor_type_top) {
        Some((p, s)) => labels::map_actor_type(s, &p.as_str(), strict)?,
        None => (default_type, None),
    };
    let mut actor = Actor {
        actor_type,
        id: actor_id,
        name: None,
        email: None,
        ip: None,
        user_agent: None,
        session_id: None,
        roles: Vec::new(),
    };
    if let Some(a) = actor_obj.as_mut() {
        actor.name = a.opt_str(&["name"])?;
        actor.email = a.opt_str(&["email"])?;
        actor.ip = a.opt_str(&["ip", "clientIp", "client_ip"])?;
        actor.user_agent = a.opt_str(&["userAgent", "user_agent"])?;
        actor.session_id = a.opt_str(&["sessionId", "session_id"])?;
        actor.roles = a.str_array(&["roles"])?.unwrap_or_default();
    }
    if actor.name.is_none() {
        actor.name = ev.opt_str(&["userName", "user_name", "actorName", "actor_name"])?;
    }
    if let Some(s) = ev.opt_str(&["sessionId", "session_id"])? {
        actor.session_id = Some(s);
    }

    // ---- tenant
    let tenant = TenantContext {
        tenant_id: ev.opt_str(&["tenantId", "tenant_id"])?,
        team_id: ev.opt_str(&["teamId", "team_id"])?,
        team_name: ev.opt_str(&["teamName", "team_name"])?,
        project_id: ev.opt_str(&["projectId", "project_id"])?,
        business_unit: ev.opt_str(&["businessUnit", "business_unit"])?,
        cost_center: ev.opt_str(&["costCenter", "cost_center"])?,
        enrichment: EnrichmentStatus {
            enriched: false,
            user_found: false,
            team_found: false,
        },
    };

    // ---- target
    let target = match ev.object(&["target"])? {
        Some(mut t) => {
            let target_type = t.required_str(&["type", "targetType", "target_type"])?;
            let id = t.required_str(&["id"])?;
            let name = t.opt_str(&["name"])?;
            t.finish_into(&mut unmapped, "target");
            Some(Target {
                target_type,
                id,
                name,
            })
        }
        None => None,
    };

    // ---- free-form content
    let payload = ev.take_value(&["data"]);
    let result = ev.take_value(&["result"]);

    // ---- action
    let mut action = match ev.take_value(&["action"]) {
        None => Action {
            verb: event_type.clone(),
            description: None,
            status: None,
            error: None,
        },
        Some((p, Value::String(s))) => {
            ev.check_len(&s, &p)?;
            if s.is_empty() {
                validate::check_nonempty(&s, &p.to_string())?;
            }
            Action {
                verb: s,
                description: None,
                status: None,
                error: None,
            }
        }
        Some((p, Value::Object(m))) => {
            let mut a = Obj::new(m, &p.to_string(), limits);
            let verb = a.required_nonempty_str(&["verb", "name"])?;
            let description = a.opt_str(&["description"])?;
            let status = a.opt_str(&["status"])?;
            let error = a.opt_str(&["error"])?;
            a.finish_into(&mut unmapped, "action");
            Action {
                verb,
                description,
                status,
                error,
            }
        }
        Some((p, other)) => {
            return Err(JsonError::new(
                JsonErrorCode::WrongType,
                p,
                format!("expected a string or an object, got {}", type_name(&other)),
            ))
        }
    };
    let result_obj = match &result {
        Some((_, Value::Object(m))) => Some(m),
        _ => None,
    };
    let result_str = |key: &str| -> Option<String> {
        result_obj
            .and_then(|m| m.get(key))
            .and_then(Value::as_str)
            .filter(|s| s.len() <= limits.max_string_bytes)
            .map(str::to_owned)
    };
    if action.status.is_none() {
        action.status = result_str("status");
    }
    if action.error.is_none() {
        action.error = result_str("error");
    }
    let (outcome, outcome_original) = match explicit_outcome {
        Some(o) => o,
        None => {
            let status = result_str("status").or_else(|| action.status.clone());
            let derived = status
                .as_deref()
                .map_or(Outcome::Unknown, labels::derive_outcome);
            (derived, None)
        }
    };

    // ---- trace and references
    let trace = TraceContext {
        trace_id: ev.opt_str(&["traceId", "trace_id"])?,
        span_id: ev.opt_str(&["spanId", "span_id"])?,
        parent_span_id: ev.opt_str(&["parentId", "parent_id", "parentSpanId", "parent_span_id"])?,
    };
    let request_id = ev.opt_str(&["requestId", "request_id"])?;
    let parent_event_id = ev.opt_str(&["parentEventId", "parent_event_id"])?;
    let reason = ev.opt_str(&["reason"])?;

    // ---- performance (explicit object first; metadata fills the gaps below)
    let mut performance = match ev.object(&["performance"])? {
        Some(mut p) => {
            let perf = Performance {
                processing_time_ms: p.i64(&["processingTimeMs", "processing_time_ms"])?,
                response_time_ms: p.i64(&["responseTimeMs", "response_time_ms"])?,
                db_query_time_ms: p.i64(&["dbQueryTimeMs", "db_query_time_ms"])?,
                external_api_time_ms: p.i64(&["externalApiTimeMs", "external_api_time_ms"])?,
                memory_used_mb: p.i64(&["memoryUsedMb", "memory_used_mb"])?,
                resource_count: p.i64(&["resourceCount", "resource_count"])?,
            };
            p.finish_into(&mut unmapped, "performance");
            Some(perf)
        }
        None => None,
    };

    // ---- metadata: lift the known fields
    let metadata_json = match ev.object(&["metadata"])? {
        Some(mut m) => {
            lift_str(&mut m, &["clientIp", "client_ip"], &mut actor.ip)?;
            lift_str(&mut m, &["userAgent", "user_agent"], &mut actor.user_agent)?;
            lift_str(&mut m, &["sessionId", "session_id"], &mut actor.session_id)?;
            let mut processing = performance.as_ref().and_then(|p| p.processing_time_ms);
            let mut resources = performance.as_ref().and_then(|p| p.resource_count);
            lift_i64(
                &mut m,
                &["processingTime", "processing_time"],
                &mut processing,
            )?;
            lift_i64(&mut m, &["resourceCount", "resource_count"], &mut resources)?;
            if processing.is_some() || resources.is_some() {
                let p = performance.get_or_insert(Performance {
                    processing_time_ms: None,
                    response_time_ms: None,
                    db_query_time_ms: None,
                    external_api_time_ms: None,
                    memory_used_mb: None,
                    resource_count: None,
                });
                p.processing_time_ms = processing;
                p.resource_count = resources;
            }
            Some(m.map.into_map())
        }
        None => None,
    };

    let before_json = ev.take_value(&["before"]).map(|(_, v)| normalized_json(&v));
    let after_json = ev.take_value(&["after"]).map(|(_, v)| normalized_json(&v));
    let changes = ev.str_array(&["changes"])?.unwrap_or_default();

    // ---- AI
    let mut ai = match ev.object(&["ai"])? {
        Some(mut a) => {
            let ctx_ai = AiContext {
                agent_type: a.opt_str(&["agentType", "agent_type"])?,
                model: a.opt_str(&["model"])?,
                prompt_tokens: a.i64(&["promptTokens", "prompt_tokens"])?,
                completion_tokens: a.i64(&["completionTokens", "completion_tokens"])?,
                confidence: a.confidence(&["confidence"])?,
                reasoning: a.opt_str(&["reasoning"])?,
                tools: a.str_array(&["tools"])?.unwrap_or_default(),
                execution_time_ms: a.i64(&["executionTimeMs", "execution_time_ms"])?,
            };
            a.finish_into(&mut unmapped, "ai");
            Some(ctx_ai)
        }
        None => None,
    };
    if let Some((_, Value::Object(data))) = &payload {
        lift_ai_from_data(data, &mut ai, limits);
    }

    // ---- compliance / security
    let compliance = match ev.object(&["compliance"])? {
        Some(mut c) => {
            let cc = ComplianceContext {
                regulations: c.str_array(&["regulations"])?.unwrap_or_default(),
                traffic_light: c.opt_str(&["trafficLight", "traffic_light"])?,
                issues_found: c.i32(&["issuesFound", "issues_found"])?,
                critical_issues: c.i32(&["criticalIssues", "critical_issues"])?,
                findings_json: c
                    .take_value(&["findings"])
                    .map(|(_, v)| normalized_json(&v)),
            };
            c.finish_into(&mut unmapped, "compliance");
            Some(cc)
        }
        None => None,
    };
    let security = match ev.object(&["security"])? {
        Some(mut s) => {
            let sc = SecurityContext {
                data_classification: s.opt_str(&["dataClassification", "data_classification"])?,
                encryption_used: s.bool(&["encryptionUsed", "encryption_used"])?,
                pii_detected: s.bool(&["piiDetected", "pii_detected"])?,
                retention_days: s.i32(&["retentionDays", "retention_days"])?,
            };
            s.finish_into(&mut unmapped, "security");
            Some(sc)
        }
        None => None,
    };

    // ---- attributes
    let mut attributes = match ev.take_value(&["attributes"]) {
        None => Vec::new(),
        Some((p, Value::Object(m))) => {
            validate::check_attribute_count(m.len(), limits, &p.as_str())?;
            let mut out = Vec::with_capacity(m.len());
            for (k, v) in m {
                let vp = || format!("{p}.{k}");
                ev.check_len_at(&k, vp)?;
                match v {
                    Value::String(s) => {
                        ev.check_len_at(&s, vp)?;
                        out.push(KeyValue { key: k, value: s });
                    }
                    other => {
                        return Err(JsonError::new(
                            JsonErrorCode::WrongType,
                            vp(),
                            format!(
                                "attribute values must be strings, got {}",
                                type_name(&other)
                            ),
                        ))
                    }
                }
            }
            // The `audit.original.` namespace is the pipeline's: a producer's key there is kept
            // under `producer.…` (sorted by key as well, whatever the JSON map implementation).
            labels::protect_reserved(&mut out, |_| false);
            for kv in out
                .iter()
                .filter(|kv| kv.key.starts_with(labels::PRODUCER_PREFIX))
            {
                ev.check_len(&kv.key, &format!("{p}.{}", kv.key))?;
            }
            out
        }
        Some((p, other)) => {
            return Err(JsonError::new(
                JsonErrorCode::WrongType,
                p,
                format!("expected an object of strings, got {}", type_name(&other)),
            ))
        }
    };

    labels::add_originals(
        &mut attributes,
        [
            (LabelKind::Category, category_original),
            (LabelKind::Severity, severity_original),
            (LabelKind::Outcome, outcome_original),
            (LabelKind::ActorType, actor_type_original),
        ],
    );

    // ---- what is left is kept, not dropped
    if let Some(a) = actor_obj {
        a.finish_into(&mut unmapped, "actor");
    }
    for (k, v) in std::mem::take(&mut ev.map).into_remaining() {
        unmapped.insert(k, v);
    }
    let metadata_json =
        merge_unmapped(metadata_json, unmapped).map(|m| normalized_json(&Value::Object(m)));

    Ok(AuditEvent {
        event_id,
        event_type,
        category,
        severity,
        outcome,
        event_time_us,
        receive_time_us: ctx.receive_time_us,
        source_component,
        ingress: ctx.ingress.clone(),
        actor,
        tenant,
        target,
        action,
        trace,
        request_id,
        parent_event_id,
        reason,
        data: EventData {
            payload_json: payload.map(|(_, v)| normalized_json(&v)),
            result_json: result.map(|(_, v)| normalized_json(&v)),
            metadata_json,
            before_json,
            after_json,
            changes,
        },
        ai,
        compliance,
        security,
        performance,
        attributes,
    })
}

/// Puts unmapped producer keys into the metadata remainder under the first free `_unmapped*`
/// key. Returns `None` when there is nothing to keep.
fn merge_unmapped(
    metadata: Option<Map<String, Value>>,
    unmapped: Map<String, Value>,
) -> Option<Map<String, Value>> {
    let mut metadata = metadata.unwrap_or_default();
    if !unmapped.is_empty() {
        let mut key = "_unmapped".to_owned();
        let mut n = 1;
        while metadata.contains_key(&key) {
            n += 1;
            key = format!("_unmapped{n}");
        }
        metadata.insert(key, Value::Object(unmapped));
    }
    if metadata.is_empty() {
        None
    } else {
        Some(metadata)
    }
}

/// A JSON object being consumed: typed accessors remove what they read, so whatever remains at
/// the end is, by construction, what the mapping did not use.
struct Obj<'l> {
    map: Fields,
    /// Path of this object (`actor`, `event.tenant`); `None` at the top level without an
    /// envelope. Shared by the [`FieldPath`]s of its fields.
    prefix: Option<Rc<str>>,
    limits: &'l JsonLimits,
}

/// Where a field is (`actor.id`), formatted only when an error names it: a field read that
/// succeeds allocates nothing for its path (formatting every nested field's path was 5% of
/// ingest's CPU under `perf`).
#[derive(Debug, Clone)]
struct FieldPath {
    prefix: Option<Rc<str>>,
    key: &'static str,
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.prefix {
            Some(prefix) => write!(f, "{prefix}.{}", self.key),
            None => f.write_str(self.key),
        }
    }
}

impl FieldPath {
    /// For the checks that take a `&str` path: borrowed at the top level.
    fn as_str(&self) -> Cow<'static, str> {
        match &self.prefix {
            None => Cow::Borrowed(self.key),
            Some(_) => Cow::Owned(self.to_string()),
        }
    }
}

impl From<FieldPath> for String {
    fn from(p: FieldPath) -> String {
        p.to_string()
    }
}

impl<'l> Obj<'l> {
    /// `prefix`: this object's path; empty at the top level.
    fn new(map: Map<String, Value>, prefix: &str, limits: &'l JsonLimits) -> Self {
        Obj {
            map: Fields::new(map),
            prefix: (!prefix.is_empty()).then(|| Rc::from(prefix)),
            limits,
        }
    }

    fn path(&self, key: &str) -> String {
        match &self.prefix {
            None => key.to_owned(),
            Some(prefix) => format!("{prefix}.{key}"),
        }
    }

    fn missing(&self, key: &str) -> JsonError {
        JsonError::new(
            JsonErrorCode::MissingField,
            self.path(key),
            "required field is missing",
        )
    }

    /// The [`FieldPath`] of a key read.
    fn at(&self, key: &'static str) -> FieldPath {
        FieldPath {
            prefix: self.prefix.clone(),
            key,
        }
    }

    /// Removes the first present alias; `null` counts as absent.
    fn take_value(&mut self, names: &[&'static str]) -> Option<(FieldPath, Value)> {
        for name in names {
            if let Some(v) = self.map.remove(name) {
                if v.is_null() {
                    continue;
                }
                return Some((self.at(name), v));
            }
        }
        None
    }

    fn check_len(&self, s: &str, path: &dyn fmt::Display) -> JResult<()> {
        self.check_len_at(s, || path.to_string())
    }

    /// [`Self::check_len`] with the path made only if the string is too long.
    fn check_len_at(&self, s: &str, path: impl FnOnce() -> String) -> JResult<()> {
        validate::check_string_len(s, self.limits.max_string_bytes, path)
    }

    fn str(&mut self, names: &[&'static str]) -> JResult<Option<(FieldPath, String)>> {
        match self.take_value(names) {
            None => Ok(None),
            Some((p, Value::String(s))) => {
                self.check_len(&s, &p)?;
                Ok(Some((p, s)))
            }
            Some((p, other)) => Err(wrong_type(p, "a string", &other)),
        }
    }

    /// A label (category, severity, outcome, actor type): a string, or, outside strict label
    /// mode, any other JSON value as its normalised JSON text (`3`, `true`, `{"level":3}`), which
    /// is then an unknown label kept as the original: a label is never a reason to lose an event.
    fn label(
        &mut self,
        names: &[&'static str],
        strict: bool,
    ) -> JResult<Option<(FieldPath, String)>> {
        match self.take_value(names) {
            None => Ok(None),
            Some((p, Value::String(s))) => {
                self.check_len(&s, &p)?;
                Ok(Some((p, s)))
            }
            Some((p, other)) if strict => Err(wrong_type(p, "a string", &other)),
            Some((p, other)) => {
                let text = normalized_json(&other);
                self.check_len(&text, &p)?;
                Ok(Some((p, text)))
            }
        }
    }

    fn opt_str(&mut self, names: &[&'static str]) -> JResult<Option<String>> {
        Ok(self.str(names)?.map(|(_, s)| s))
    }

    fn required_str(&mut self, names: &[&'static str]) -> JResult<String> {
        let first = names.first().copied().unwrap_or("");
        self.opt_str(names)?.ok_or_else(|| self.missing(first))
    }

    fn required_nonempty_str(&mut self, names: &[&'static str]) -> JResult<String> {
        let first = names.first().copied().unwrap_or("");
        match self.str(names)? {
            Some((p, s)) if s.is_empty() => {
                validate::check_nonempty(&s, &p.to_string()).map(|()| s)
            }
            Some((_, s)) => Ok(s),
            None => Err(self.missing(first)),
        }
    }

    fn i64(&mut self, names: &[&'static str]) -> JResult<Option<i64>> {
        match self.take_value(names) {
            None => Ok(None),
            Some((p, v)) => integer(&v, &p).map(Some),
        }
    }

    fn i32(&mut self, names: &[&'static str]) -> JResult<Option<i32>> {
        match self.take_value(names) {
            None => Ok(None),
            Some((p, v)) => {
                let n = integer(&v, &p)?;
                i32::try_from(n).map(Some).map_err(|_| {
                    JsonError::new(
                        JsonErrorCode::InvalidValue,
                        p,
                        format!("{n} is out of range for a 32-bit integer"),
                    )
                })
            }
        }
    }

    fn bool(&mut self, names: &[&'static str]) -> JResult<Option<bool>> {
        match self.take_value(names) {
            None => Ok(None),
            Some((_, Value::Bool(b))) => Ok(Some(b)),
            Some((p, other)) => Err(wrong_type(p, "a boolean", &other)),
        }
    }

    fn confidence(&mut self, names: &[&'static str]) -> JResult<Option<f64>> {
        match self.take_value(names) {
            None => Ok(None),
            Some((p, Value::Number(n))) => {
                // NaN (no f64 for the number) is out of range too.
                let f = n.as_f64().unwrap_or(f64::NAN);
                validate::check_confidence(f, &n, &p.to_string()).map(|()| Some(f))
            }
            Some((p, other)) => Err(wrong_type(p, "a number", &other)),
        }
    }

    fn str_array(&mut self, names: &[&'static str]) -> JResult<Option<Vec<String>>> {
        match self.take_value(names) {
            None => Ok(None),
            Some((p, Value::Array(items))) => {
                let mut out = Vec::with_capacity(items.len());
                for (i, item) in items.into_iter().enumerate() {
                    match item {
                        Value::String(s) => {
                            self.check_len_at(&s, || format!("{p}[{i}]"))?;
                            out.push(s);
                        }
                        other => return Err(wrong_type(format!("{p}[{i}]"), "a string", &other)),
                    }
                }
                Ok(Some(out))
            }
            Some((p, other)) => Err(wrong_type(p, "an array of strings", &other)),
        }
    }

    fn object(&mut self, names: &[&'static str]) -> JResult<Option<Obj<'l>>> {
        match self.take_value(names) {
            None => Ok(None),
            Some((p, Value::Object(m))) => Ok(Some(Obj::new(m, &p.to_string(), self.limits))),
            Some((p, other)) => Err(wrong_type(p, "an object", &other)),
        }
    }

    /// Moves the unread keys into `unmapped` under `name`.
    fn finish_into(self, unmapped: &mut Map<String, Value>, name: &str) {
        if !self.map.is_empty() {
            unmapped.insert(name.to_owned(), Value::Object(self.map.into_map()));
        }
    }
}

/// Lifts a metadata string into `slot` when the slot is empty (the key is removed), or removes
/// it when it equals the slot's value; a different value stays in the metadata remainder.
fn lift_str(m: &mut Obj<'_>, names: &[&'static str], slot: &mut Option<String>) -> JResult<()> {
    for name in names {
        match m.map.get(name) {
            None | Some(Value::Null) => continue,
            Some(Value::String(s)) => {
                m.check_len_at(s, || m.path(name))?;
                if slot.is_none() || slot.as_deref() == Some(s.as_str()) {
                    if let Some(Value::String(s)) = m.map.remove(name) {
                        *slot = Some(s);
                    }
                }
                return Ok(());
            }
            Some(other) => return Err(wrong_type(m.path(name), "a string", other)),
        }
    }
    Ok(())
}

fn lift_i64(m: &mut Obj<'_>, names: &[&'static str], slot: &mut Option<i64>) -> JResult<()> {
    for name in names {
        match m.map.get(name) {
            None | Some(Value::Null) => continue,
            Some(v) => {
                let n = integer(v, &m.at(name))?;
                if slot.is_none() || *slot == Some(n) {
                    m.map.remove(name);
                    *slot = Some(n);
                }
                return Ok(());
            }
        }
    }
    Ok(())
}

/// Lenient: producer-defined `data` is never a reason to reject an event.
fn lift_ai_from_data(data: &Map<String, Value>, ai: &mut Option<AiContext>, limits: &JsonLimits) {
    let s = |names: &[&str]| -> Option<String> {
        names
            .iter()
            .find_map(|n| data.get(*n).and_then(Value::as_str))
            .filter(|s| s.len() <= limits.max_string_bytes)
            .map(str::to_owned)
    };
    let int = |names: &[&str]| -> Option<i64> {
        names
            .iter()
            .find_map(|n| data.get(*n))
            .and_then(|v| integer(v, &"").ok())
    };
    let confidence = data
        .get("confidence")
        .and_then(Value::as_f64)
        .filter(|f| (0.0..=1.0).contains(f));
    let tools: Option<Vec<String>> = data.get("tools").and_then(Value::as_array).and_then(|a| {
        a.iter()
            .map(|t| t.as_str().map(str::to_owned))
            .collect::<Option<Vec<_>>>()
    });
    let agent_type = s(&["agentType", "agent_type"]);
    let model = s(&["model"]);
    let reasoning = s(&["reasoning"]);
    let prompt_tokens = int(&["promptTokens", "prompt_tokens"]);
    let completion_tokens = int(&["completionTokens", "completion_tokens"]);
    let execution_time_ms = int(&["executionTimeMs", "execution_time_ms"]);
    let anything = confidence.is_some()
        || tools.is_some()
        || agent_type.is_some()
        || model.is_some()
        || reasoning.is_some()
        || prompt_tokens.is_some()
        || completion_tokens.is_some()
        || execution_time_ms.is_some();
    if !anything {
        return;
    }
    let a = ai.get_or_insert(AiContext {
        agent_type: None,
        model: None,
        prompt_tokens: None,
        completion_tokens: None,
        confidence: None,
        reasoning: None,
        tools: Vec::new(),
        execution_time_ms: None,
    });
    fill(&mut a.agent_type, agent_type);
    fill(&mut a.model, model);
    fill(&mut a.reasoning, reasoning);
    fill(&mut a.prompt_tokens, prompt_tokens);
    fill(&mut a.completion_tokens, completion_tokens);
    fill(&mut a.execution_time_ms, execution_time_ms);
    fill(&mut a.confidence, confidence);
    if a.tools.is_empty() {
        if let Some(t) = tools {
            a.tools = t;
        }
    }
}

fn fill<T>(slot: &mut Option<T>, v: Option<T>) {
    if slot.is_none() {
        *slot = v;
    }
}

fn integer(v: &Value, path: &dyn fmt::Display) -> JResult<i64> {
    match v {
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                return Ok(i);
            }
            if n.is_u64() {
                return Err(JsonError::new(
                    JsonErrorCode::InvalidValue,
                    path.to_string(),
                    format!("{n} is out of range for a 64-bit integer"),
                ));
            }
            match n.as_f64() {
                // Exactly representable integral floats (e.g. `1250.0`) are accepted.
                Some(f)
                    if f.fract() == 0.0
                        && (-9.007_199_254_740_992e15..=9.007_199_254_740_992e15).contains(&f) =>
                {
                    Ok(f as i64)
                }
                _ => Err(JsonError::new(
                    JsonErrorCode::WrongType,
                    path.to_string(),
                    format!("expected an integer, got {n}"),
                )),
            }
        }
        other => Err(wrong_type(path.to_string(), "an integer", other)),
    }
}

fn wrong_type(path: impl Into<String>, expected: &str, got: &Value) -> JsonError {
    JsonError::new(
        JsonErrorCode::WrongType,
        path,
        format!("expected {expected}, got {}", type_name(got)),
    )
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn parse_event_time(ts: &str, path: &str, ctx: &JsonContext) -> JResult<i64> {
    let t = OffsetDateTime::parse(ts, &Rfc3339).map_err(|e| {
        JsonError::new(
            JsonErrorCode::InvalidValue,
            path,
            format!("not an RFC 3339 timestamp ({e}): {ts:?}"),
        )
    })?;
    // Sub-microsecond digits are truncated (floor), the documented precision of the model.
    let us = t.unix_timestamp_nanos().div_euclid(1000);
    let us = i64::try_from(us).map_err(|_| {
        JsonError::new(
            JsonErrorCode::TimestampOutOfRange,
            path,
            format!("{ts:?} is out of range"),
        )
    })?;
    validate::check_event_time(us, || ts.to_owned(), path, &ctx.limits, ctx.receive_time_us)?;
    Ok(us)
}

fn classify_parse_error(text: &str, e: &serde_json::Error) -> JsonError {
    let msg = e.to_string();
    if msg.contains("recursion limit exceeded") {
        return JsonError::new(
            JsonErrorCode::TooDeep,
            "",
            format!("nesting too deep ({msg})"),
        );
    }
    // serde_json rejects escaped lone surrogates (`"\ud800"`) as a syntax error; they are
    // invalid Unicode, so report them as such.
    if let Some(at) = find_lone_surrogate(text) {
        return JsonError::new(
            JsonErrorCode::NotUtf8,
            "",
            format!("lone UTF-16 surrogate escape at byte {at}"),
        );
    }
    JsonError::new(JsonErrorCode::InvalidJson, "", msg)
}

/// Byte offset of the first `\uD800`–`\uDFFF` escape that is not a valid surrogate pair.
fn find_lone_surrogate(text: &str) -> Option<usize> {
    let b = text.as_bytes();
    let hex4 = |at: usize| -> Option<u32> {
        let s = text.get(at..at + 4)?;
        u32::from_str_radix(s, 16).ok()
    };
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'\\' {
            i += 1;
            continue;
        }
        if b.get(i + 1) != Some(&b'u') {
            i += 2; // any other escape: skip the escaped character (handles `\\`)
            continue;
        }
        let Some(cu) = hex4(i + 2) else {
            i += 2;
            continue;
        };
        if (0xD800..0xDC00).contains(&cu) {
            let low = if b.get(i + 6) == Some(&b'\\') && b.get(i + 7) == Some(&b'u') {
                hex4(i + 8)
            } else {
                None
            };
            match low {
                Some(lo) if (0xDC00..0xE000).contains(&lo) => i += 12,
                _ => return Some(i),
            }
        } else if (0xDC00..0xE000).contains(&cu) {
            return Some(i);
        } else {
            i += 6;
        }
    }
    None
}

fn check_depth(v: &Value, max: usize) -> JResult<()> {
    /// One step of the path to the first value nested too deep.
    enum Seg<'v> {
        Key(&'v str),
        Index(usize),
    }
    // Nothing is allocated on the way down (every record is walked whole): the path is built
    // only on the way back up from a value that is too deep.
    fn walk(v: &Value, depth: usize, max: usize) -> Option<Vec<Seg<'_>>> {
        match v {
            Value::Object(_) | Value::Array(_) if depth > max => Some(Vec::new()),
            Value::Object(m) => m.iter().find_map(|(k, child)| {
                walk(child, depth + 1, max).map(|mut path| {
                    path.push(Seg::Key(k));
                    path
                })
            }),
            Value::Array(a) => a.iter().enumerate().find_map(|(i, child)| {
                walk(child, depth + 1, max).map(|mut path| {
                    path.push(Seg::Index(i));
                    path
                })
            }),
            _ => None,
        }
    }
    match walk(v, 1, max) {
        None => Ok(()),
        Some(rev) => {
            let mut path = String::new();
            for seg in rev.iter().rev() {
                match seg {
                    Seg::Key(k) => {
                        if !path.is_empty() && !k.starts_with('[') {
                            path.push('.');
                        }
                        path.push_str(k);
                    }
                    Seg::Index(i) => path.push_str(&format!("[{i}]")),
                }
            }
            Err(JsonError::new(
                JsonErrorCode::TooDeep,
                path,
                format!("nesting deeper than {max} levels"),
            ))
        }
    }
}

// ---- normalised JSON text ----------------------------------------------------------------------

/// Compact JSON with object keys sorted (byte order) at every level: deterministic text for the
/// `*_json` fields, so the canonical bytes of an event do not depend on producer key order.
pub fn normalized_json(v: &Value) -> String {
    let mut out = Vec::with_capacity(128);
    write_normalized(v, &mut out);
    // serde_json writes UTF-8 only; the lossy path is never taken.
    String::from_utf8(out).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// Parses and normalises JSON text (e.g. to normalise an already-stored `*_json` field).
pub fn normalize_json_text(text: &str) -> Result<String, serde_json::Error> {
    let v: Value = serde_json::from_str(text)?;
    Ok(normalized_json(&v))
}

/// Writes straight into `out` with serde_json's own compact serializer (the same text as
/// `Value`'s `Display`, without a copy of each string and a formatted `String` per value: this
/// runs for every attribute of every event).
fn write_normalized(v: &Value, out: &mut Vec<u8>) {
    match v {
        Value::Object(m) => {
            let mut entries: Vec<(&String, &Value)> = m.iter().collect();
            entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
            out.push(b'{');
            for (i, (k, child)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_scalar(k, out);
                out.push(b':');
                write_normalized(child, out);
            }
            out.push(b'}');
        }
        Value::Array(a) => {
            out.push(b'[');
            for (i, child) in a.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_normalized(child, out);
            }
            out.push(b']');
        }
        // Strings and scalars: serde_json's own text (numbers round-trip with
        // `float_roundtrip`).
        other => write_scalar(other, out),
    }
}

fn write_scalar<T: serde::Serialize + ?Sized>(v: &T, out: &mut Vec<u8>) {
    // Writing a string, number, bool or null into a Vec cannot fail.
    let _ = serde_json::to_writer(out, v);
}

// ---- event → JSON ------------------------------------------------------------------------------

/// RFC 3339 UTC with exactly six fractional digits, or `None` when out of the representable
/// range (years 1..9999 are formatted; others are not valid RFC 3339).
pub fn format_time_us(us: i64) -> Option<String> {
    let t = OffsetDateTime::from_unix_timestamp_nanos(i128::from(us) * 1000).ok()?;
    if !(1..=9999).contains(&t.year()) {
        return None;
    }
    Some(format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.microsecond()
    ))
}

fn time_value(us: i64) -> Value {
    format_time_us(us).map_or(Value::Number(us.into()), Value::String)
}

fn json_text_value(text: &str) -> Value {
    // Stored text is normally valid JSON (this module wrote it); keep anything else as a string
    // rather than fail a read path.
    serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_owned()))
}

fn channel_str(c: IngressChannel) -> &'static str {
    match c {
        IngressChannel::Kafka => "kafka",
        IngressChannel::Http => "http",
        IngressChannel::Otlp => "otlp",
    }
}

struct Out(Map<String, Value>);

impl Out {
    fn new() -> Self {
        Out(Map::new())
    }
    fn s(&mut self, k: &str, v: &str) {
        self.0.insert(k.to_owned(), Value::String(v.to_owned()));
    }
    fn os(&mut self, k: &str, v: &Option<String>) {
        if let Some(v) = v {
            self.s(k, v);
        }
    }
    fn oi(&mut self, k: &str, v: Option<i64>) {
        if let Some(v) = v {
            self.0.insert(k.to_owned(), Value::Number(v.into()));
        }
    }
    fn ob(&mut self, k: &str, v: Option<bool>) {
        if let Some(v) = v {
            self.0.insert(k.to_owned(), Value::Bool(v));
        }
    }
    fn v(&mut self, k: &str, v: Value) {
        self.0.insert(k.to_owned(), v);
    }
    fn strs(&mut self, k: &str, v: &[String]) {
        self.v(
            k,
            Value::Array(v.iter().cloned().map(Value::String).collect()),
        );
    }
    fn done(self) -> Value {
        Value::Object(self.0)
    }
}

/// The event in the envelope shape [`event_from_json`] accepts (`{"event": {…}}`), for the demo
/// and HTTP responses. `event_from_json(event_to_json(e))` gives `e` back for every field the JSON
/// form carries (pipeline-owned fields — receive time, ingress, enrichment — come from the
/// context on input).
pub fn event_to_json(e: &AuditEvent) -> Value {
    let mut o = Out::new();
    o.s("id", &e.event_id);
    o.s("eventType", &e.event_type);
    o.v("timestamp", time_value(e.event_time_us));
    o.s("source", &e.source_component);
    // A kept original is written back as the label, so the JSON maps back to the same event.
    o.s("category", labels::json_text(e, LabelKind::Category));
    o.s("severity", labels::json_text(e, LabelKind::Severity));
    o.s("outcome", labels::json_text(e, LabelKind::Outcome));

    if e.actor.actor_type == ActorType::User {
        o.s("userId", &e.actor.id);
    }
    let mut actor = Out::new();
    actor.s("id", &e.actor.id);
    actor.s("type", labels::json_text(e, LabelKind::ActorType));
    actor.os("name", &e.actor.name);
    actor.os("email", &e.actor.email);
    if !e.actor.roles.is_empty() {
        actor.strs("roles", &e.actor.roles);
    }
    o.v("actor", actor.done());
    o.os("sessionId", &e.actor.session_id);

    o.os("tenantId", &e.tenant.tenant_id);
    o.os("teamId", &e.tenant.team_id);
    o.os("teamName", &e.tenant.team_name);
    o.os("projectId", &e.tenant.project_id);
    o.os("businessUnit", &e.tenant.business_unit);
    o.os("costCenter", &e.tenant.cost_center);

    if let Some(t) = &e.target {
        let mut target = Out::new();
        target.s("type", &t.target_type);
        target.s("id", &t.id);
        target.os("name", &t.name);
        o.v("target", target.done());
    }
    let mut action = Out::new();
    action.s("verb", &e.action.verb);
    action.os("description", &e.action.description);
    action.os("status", &e.action.status);
    action.os("error", &e.action.error);
    o.v("action", action.done());

    o.os("traceId", &e.trace.trace_id);
    o.os("spanId", &e.trace.span_id);
    o.os("parentId", &e.trace.parent_span_id);
    o.os("requestId", &e.request_id);
    o.os("parentEventId", &e.parent_event_id);
    o.os("reason", &e.reason);

    if let Some(p) = &e.data.payload_json {
        o.v("data", json_text_value(p));
    }
    if let Some(r) = &e.data.result_json {
        o.v("result", json_text_value(r));
    }
    let mut metadata = match e.data.metadata_json.as_deref().map(json_text_value) {
        Some(Value::Object(m)) => m,
        Some(other) => {
            let mut m = Map::new();
            m.insert("_value".to_owned(), other);
            m
        }
        None => Map::new(),
    };
    if let Some(ip) = &e.actor.ip {
        metadata.insert("clientIp".to_owned(), Value::String(ip.clone()));
    }
    if let Some(ua) = &e.actor.user_agent {
        metadata.insert("userAgent".to_owned(), Value::String(ua.clone()));
    }
    if !metadata.is_empty() {
        o.v("metadata", Value::Object(metadata));
    }
    if let Some(b) = &e.data.before_json {
        o.v("before", json_text_value(b));
    }
    if let Some(a) = &e.data.after_json {
        o.v("after", json_text_value(a));
    }
    if !e.data.changes.is_empty() {
        o.strs("changes", &e.data.changes);
    }

    if let Some(ai) = &e.ai {
        let mut a = Out::new();
        a.os("agentType", &ai.agent_type);
        a.os("model", &ai.model);
        a.oi("promptTokens", ai.prompt_tokens);
        a.oi("completionTokens", ai.completion_tokens);
        if let Some(c) = ai.confidence.and_then(Number::from_f64) {
            a.v("confidence", Value::Number(c));
        }
        a.os("reasoning", &ai.reasoning);
        a.strs("tools", &ai.tools);
        a.oi("executionTimeMs", ai.execution_time_ms);
        o.v("ai", a.done());
    }
    if let Some(c) = &e.compliance {
        let mut x = Out::new();
        x.strs("regulations", &c.regulations);
        x.os("trafficLight", &c.traffic_light);
        x.oi("issuesFound", c.issues_found.map(i64::from));
        x.oi("criticalIssues", c.critical_issues.map(i64::from));
        if let Some(f) = &c.findings_json {
            x.v("findings", json_text_value(f));
        }
        o.v("compliance", x.done());
    }
    if let Some(s) = &e.security {
        let mut x = Out::new();
        x.os("dataClassification", &s.data_classification);
        x.ob("encryptionUsed", s.encryption_used);
        x.ob("piiDetected", s.pii_detected);
        x.oi("retentionDays", s.retention_days.map(i64::from));
        o.v("security", x.done());
    }
    if let Some(p) = &e.performance {
        let mut x = Out::new();
        x.oi("processingTimeMs", p.processing_time_ms);
        x.oi("responseTimeMs", p.response_time_ms);
        x.oi("dbQueryTimeMs", p.db_query_time_ms);
        x.oi("externalApiTimeMs", p.external_api_time_ms);
        x.oi("memoryUsedMb", p.memory_used_mb);
        x.oi("resourceCount", p.resource_count);
        o.v("performance", x.done());
    }
    // Originals written back as labels above are not attributes of the producer's. (An
    // inconsistent one, which no accepted event holds, stays an attribute: nothing is lost.)
    let m: Map<String, Value> = e
        .attributes
        .iter()
        .filter(|kv| {
            LabelKind::from_attribute_key(&kv.key)
                .is_none_or(|kind| !labels::is_consistent_original(e, kind, &kv.value))
        })
        .map(|kv| (kv.key.clone(), Value::String(kv.value.clone())))
        .collect();
    if !m.is_empty() {
        o.v("attributes", Value::Object(m));
    }

    // Pipeline-owned, output only.
    o.v("receiveTime", time_value(e.receive_time_us));
    let mut ingress = Out::new();
    ingress.s("channel", channel_str(e.ingress.channel));
    ingress.os("topic", &e.ingress.topic);
    ingress.oi("partition", e.ingress.partition.map(i64::from));
    ingress.oi("offset", e.ingress.offset);
    ingress.s("format", &e.ingress.format);
    o.v("ingress", ingress.done());
    let mut enrichment = Out::new();
    enrichment.ob("enriched", Some(e.tenant.enrichment.enriched));
    enrichment.ob("userFound", Some(e.tenant.enrichment.user_found));
    enrichment.ob("teamFound", Some(e.tenant.enrichment.team_found));
    o.v("enrichment", enrichment.done());

    let mut envelope = Map::new();
    envelope.insert("event".to_owned(), o.done());
    Value::Object(envelope)
}
