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
use schemas::json::{self, JsonContext, JsonError, JsonLimits};
use schemas::{AuditEvent, EnrichmentStatus, Ingress, SchemaError};
use uuid::Uuid;

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
}

/// Namespace of derived event ids (a fixed, randomly chosen UUID; never change it, or a
/// redelivered record would get a new id and slip past the chainer's dedup window).
pub const DERIVED_ID_NAMESPACE: Uuid = Uuid::from_u128(0x6f0c_2b9e_4d1a_4c57_9a3e_1f8b_7d25_c640);

/// The event id of a Kafka record whose event carries none: UUIDv5 in [`DERIVED_ID_NAMESPACE`]
/// over `"{topic}/{partition}/{offset}"` of the raw record. A pure function of where the record
/// sits in the log, so a redelivery gets the same id (and the chainer drops the duplicate).
pub fn derived_event_id(topic: &str, partition: i32, offset: i64) -> String {
    let name = format!("{topic}/{partition}/{offset}");
    Uuid::new_v5(&DERIVED_ID_NAMESPACE, name.as_bytes()).to_string()
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

/// Makes a decoded Avro event look like one the JSON mapping would build: the pipeline owns the
/// receive time, ingress and enrichment flags; an empty event id means "none given" (the Avro
/// field is not optional); attributes are sorted; free-form JSON text is normalised.
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
    event.attributes.sort();
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
