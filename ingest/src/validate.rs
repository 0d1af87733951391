//! The one validation entry point of ingest: raw bytes in, a normalised [`AuditEvent`] or a
//! [`Rejection`] (machine code, JSON path, human message) out.
//!
//! Every front door calls [`validate_raw`]: the Kafka path now, the HTTP and OTLP doors later
//! (a door that builds an `AuditEvent` itself, like OTLP, calls [`validate_event`] directly).
//! JSON goes through `schemas::json::event_from_json`; Avro (single-object or Confluent framing)
//! is decoded, its pipeline-owned fields are overwritten, and it is normalised. Both then pass
//! the same semantic gate, [`validate_event`], so an event is accepted or rejected for the same
//! reasons whatever its encoding.

use schemas::framing::{self, Framing, SchemaIdResolver};
use schemas::identity;
use schemas::json::{self, labels, JsonContext, JsonError, JsonErrorCode, JsonLimits};
use schemas::{AuditEvent, EnrichmentStatus, Ingress, SchemaError};

/// Rejection codes that ingest adds to those of `schemas::json::JsonErrorCode` (for JSON input)
/// and `schemas::SchemaError::code` (for Avro input).
pub mod codes {
    /// A null (tombstone) or zero-length record value.
    pub const EMPTY_PAYLOAD: &str = "empty_payload";
    /// Neither JSON nor one of the two Avro framings.
    pub const UNKNOWN_FORMAT: &str = "unknown_format";
    /// The same codes as the JSON mapping (and `schemas::validate`) use, for the same problems
    /// in Avro input.
    pub const INVALID_VALUE: &str = "invalid_value";
    pub const TOO_LARGE: &str = "too_large";
    pub const TIMESTAMP_OUT_OF_RANGE: &str = "timestamp_out_of_range";
    /// Confluent framing whose schema id the schema registry does not know (HTTP 404); the
    /// same code as `SchemaError::UnknownSchemaId` for the compiled-in id table.
    pub const UNKNOWN_SCHEMA_ID: &str = "unknown_schema_id";
    /// Confluent framing whose registered writer schema the `AuditEvent` reader schema cannot
    /// read (Avro schema resolution), or that is not an Avro schema.
    pub const INCOMPATIBLE_SCHEMA: &str = "incompatible_schema";
    /// Confluent framing whose registered writer schema uses schema references that cannot be
    /// resolved: a referenced subject version the registry does not have, a reference cycle, a
    /// chain too deep, or a target that defines another type than the reference names. The
    /// reason names the schema id and the reference chain.
    pub const SCHEMA_REFERENCE_UNRESOLVED: &str = "schema_reference_unresolved";
}

/// The event id of a Kafka record whose event carries none: UUIDv5 in
/// `schemas::identity::DERIVED_ID_NAMESPACE` over `"{topic}/{partition}/{offset}/{timestamp_ms}"` of the raw record. A pure function of
/// the record, so a redelivery gets the same id (and the chainer drops the duplicate); the
/// record timestamp is in it because a deleted and recreated raw topic restarts its offsets,
/// and the old topic's ids must not be handed to different events. The same derivation as
/// `schemas::identity::derived_kafka_event_id`, by which the chainer recognises derived ids.
///
/// A record without a timestamp (`None`, or librdkafka's `-1`) gets the offset-only form
/// `"{topic}/{partition}/{offset}"` (the derivation before the timestamp was added,
/// `schemas::identity::legacy_derived_kafka_event_id`): nothing else about the record is both
/// stable across redeliveries and known here, and the wall clock would give a redelivery a new
/// id. Such records keep the recreated-topic weakness; brokers since Kafka 0.10 stamp every
/// record, so they are rare.
pub fn derived_event_id(
    topic: &str,
    partition: i32,
    offset: i64,
    timestamp_ms: Option<i64>,
) -> String {
    // One derivation for ingest and the chainer, which recognises derived ids by recomputing it.
    match timestamp_ms {
        Some(ms) if ms >= 0 => identity::derived_kafka_event_id(topic, partition, offset, ms),
        _ => identity::legacy_derived_kafka_event_id(topic, partition, offset),
    }
}

/// Why a record was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {}", self.describe())]
pub struct Rejection {
    /// Stable machine code (DLQ reason header, metric label).
    pub code: &'static str,
    /// JSON path of the offending field (`event.timestamp`); empty for the whole record.
    pub path: String,
    pub message: String,
}

impl Rejection {
    pub fn new(code: &'static str, path: impl Into<String>, message: impl Into<String>) -> Self {
        Rejection {
            code,
            path: path.into(),
            message: message.into(),
        }
    }

    /// `path: message` (or just the message for whole-record problems): the DLQ message header.
    pub fn describe(&self) -> String {
        if self.path.is_empty() {
            self.message.clone()
        } else {
            format!("{}: {}", self.path, self.message)
        }
    }
}

impl From<JsonError> for Rejection {
    fn from(e: JsonError) -> Self {
        Rejection {
            code: e.code.as_str(),
            path: e.path,
            message: e.message,
        }
    }
}

impl From<SchemaError> for Rejection {
    fn from(e: SchemaError) -> Self {
        Rejection {
            code: e.code(),
            path: String::new(),
            message: e.to_string(),
        }
    }
}

/// What a front door knows about a record besides its bytes.
pub struct ValidationContext<'a> {
    /// When the pipeline received the record (µs since the epoch). Kafka: the record timestamp.
    pub receive_time_us: i64,
    /// Where the record came from; `format` is overwritten with the detected framing.
    pub ingress: Ingress,
    /// The event id for an event that carries none (see [`derived_event_id`]).
    pub derived_event_id: String,
    pub limits: JsonLimits,
    /// Strict label mode (`--strict-labels`): an unknown category, severity, outcome or actor
    /// type is rejected `invalid_value` instead of kept with its original.
    pub strict_labels: bool,
    /// Resolves Confluent schema ids (the compiled-in catalog for now; a registry later).
    pub resolver: &'a dyn SchemaIdResolver,
}

impl std::fmt::Debug for ValidationContext<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ValidationContext")
            .field("receive_time_us", &self.receive_time_us)
            .field("ingress", &self.ingress)
            .field("derived_event_id", &self.derived_event_id)
            .field("limits", &self.limits)
            .field("strict_labels", &self.strict_labels)
            .finish_non_exhaustive()
    }
}

/// Validates one raw record (JSON or Avro in either framing) and returns the normalised event.
pub fn validate_raw(bytes: &[u8], ctx: &ValidationContext<'_>) -> Result<AuditEvent, Rejection> {
    if bytes.is_empty() {
        return Err(Rejection::new(
            codes::EMPTY_PAYLOAD,
            "",
            "the record has no payload",
        ));
    }
    let detected = framing::detect(bytes);
    let mut ingress = ctx.ingress.clone();
    ingress.format = detected.format_name().to_owned();
    let event = match detected {
        Framing::Json => {
            let jctx = JsonContext {
                receive_time_us: ctx.receive_time_us,
                ingress,
                derived_event_id: ctx.derived_event_id.clone(),
                limits: ctx.limits.clone(),
                strict_labels: ctx.strict_labels,
            };
            json::event_from_json(bytes, &jctx)?
        }
        Framing::SingleObject { .. } | Framing::Confluent { .. } => {
            if bytes.len() > ctx.limits.max_total_bytes {
                return Err(Rejection::new(
                    codes::TOO_LARGE,
                    "",
                    format!(
                        "record is {} bytes, limit {}",
                        bytes.len(),
                        ctx.limits.max_total_bytes
                    ),
                ));
            }
            let mut event = framing::decode_event(bytes, Some(ctx.resolver))?;
            adopt_avro_event(&mut event, ctx, ingress)?;
            event
        }
        Framing::Unknown => {
            // Valid JSON that is not an object (`[1,2]`, `"x"`, `42`, `null`) gets the code the
            // HTTP door gives it (`not_an_object`, or `too_deep` for a deep array), not
            // `unknown_format`: the producer sent JSON, just not an event.
            if let Some(r) = json_but_not_an_object(bytes, ctx) {
                return Err(r);
            }
            let n = bytes.len().min(8);
            return Err(Rejection::new(
                codes::UNKNOWN_FORMAT,
                "",
                format!(
                    "neither a JSON object nor Avro (single-object C3 01 or Confluent 00 framing); \
                     {} bytes starting {}",
                    bytes.len(),
                    hex::encode(&bytes[..n])
                ),
            ));
        }
    };
    validate_event(&event, &ctx.limits, ctx.receive_time_us)?;
    Ok(event)
}

/// The JSON mapping's rejection of `bytes` when they start like a JSON value other than an
/// object and the mapping says so (`not_an_object`, `too_deep`); `None` for anything else, which
/// stays `unknown_format` (binary that merely starts with a digit or `[` is not JSON).
fn json_but_not_an_object(bytes: &[u8], ctx: &ValidationContext<'_>) -> Option<Rejection> {
    let body = bytes.strip_prefix(&[0xEF, 0xBB, 0xBF]).unwrap_or(bytes);
    let first = body
        .iter()
        .find(|b| !matches!(b, b' ' | b'\t' | b'\r' | b'\n'))?;
    if !matches!(first, b'[' | b'"' | b'-' | b'0'..=b'9' | b't' | b'f' | b'n') {
        return None;
    }
    let jctx = JsonContext {
        receive_time_us: ctx.receive_time_us,
        ingress: ctx.ingress.clone(),
        derived_event_id: ctx.derived_event_id.clone(),
        limits: ctx.limits.clone(),
        strict_labels: ctx.strict_labels,
    };
    match json::event_from_json(bytes, &jctx) {
        Err(e) if matches!(e.code, JsonErrorCode::NotAnObject | JsonErrorCode::TooDeep) => {
            Some(e.into())
        }
        _ => None,
    }
}

/// Makes a decoded Avro event look like one the JSON mapping would build: the pipeline owns the
/// receive time, ingress and enrichment flags; an empty event id means "none given" (the Avro
/// field is not optional); attributes are sorted, and a producer's keys in the pipeline's
/// `audit.original.` namespace are renamed `producer.…` unless they are exactly the originals
/// the mapping would have kept for this event (`schemas::json::labels`); free-form JSON text is
/// normalised.
///
/// Avro enums are closed by the schema: a decoded event's labels are always enum values (a
/// writer schema with more symbols has another fingerprint). Only a kept original can say that
/// the producer's label was unknown, so strict label mode checks those.
fn adopt_avro_event(
    event: &mut AuditEvent,
    ctx: &ValidationContext<'_>,
    ingress: Ingress,
) -> Result<(), Rejection> {
    event.receive_time_us = ctx.receive_time_us;
    event.ingress = ingress;
    event.tenant.enrichment = EnrichmentStatus {
        enriched: false,
        user_found: false,
        team_found: false,
    };
    if event.event_id.is_empty() {
        event.event_id = ctx.derived_event_id.clone();
    }
    labels::protect_reserved_in_event(event);
    if ctx.strict_labels {
        labels::check_strict(event)?;
    }
    let d = &mut event.data;
    let texts: [(&str, &mut Option<String>); 5] = [
        ("event.data", &mut d.payload_json),
        ("event.result", &mut d.result_json),
        ("event.metadata", &mut d.metadata_json),
        ("event.before", &mut d.before_json),
        ("event.after", &mut d.after_json),
    ];
    for (path, slot) in texts {
        normalize_json_slot(slot, path)?;
    }
    if let Some(c) = event.compliance.as_mut() {
        normalize_json_slot(&mut c.findings_json, "event.compliance.findings")?;
    }
    Ok(())
}

fn normalize_json_slot(slot: &mut Option<String>, path: &str) -> Result<(), Rejection> {
    if let Some(text) = slot.as_mut() {
        *text = json::normalize_json_text(text).map_err(|e| {
            Rejection::new(
                codes::INVALID_VALUE,
                path,
                format!("not valid JSON text: {e}"),
            )
        })?;
    }
    Ok(())
}

/// The semantic gate every accepted event passes, whatever its encoding:
/// `schemas::validate::validate_event` (event id rules, required fields non-empty, event time
/// sanity, string sizes, attribute count and order, AI confidence range), as a [`Rejection`].
/// Free-form JSON text is not re-parsed here (the JSON mapping writes it normalised; Avro input
/// is normalised before this runs).
pub fn validate_event(
    event: &AuditEvent,
    limits: &JsonLimits,
    receive_time_us: i64,
) -> Result<(), Rejection> {
    schemas::validate::validate_event(event, limits, receive_time_us).map_err(Rejection::from)
}
