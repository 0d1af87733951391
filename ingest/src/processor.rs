//! The Kafka front door: one raw record in, one record out (validated event or dead letter).
//!
//! The output is a pure function of the input record (its bytes, key, headers, timestamp and
//! position), so a redelivered record produces byte-identical output.

use std::sync::Arc;

use schemas::framing::{self, Framing, SchemaIdResolver};
use schemas::json::JsonLimits;
use schemas::{AuditEvent, Ingress, IngressChannel};
use worker_runtime::kafka::dlq::dead_letter;
use worker_runtime::kafka::pipeline::Processor;
use worker_runtime::kafka::trace_context;
use worker_runtime::kafka::{InputRecord, OutputRecord};
use worker_runtime::retry::RetryError;
use worker_runtime::RuntimeError;

use crate::registry::{FetchError, PinnedId, RegistryResolver, Verdict};

use crate::validate::{codes, derived_event_id, validate_raw, Rejection, ValidationContext};

/// The stage name in DLQ headers, logs and metrics.
pub const STAGE: &str = "ingest";

/// W3C trace-context headers copied from the raw record to the validated one, so the event's
/// journey through the pipeline joins the producer's trace.
pub const PROPAGATED_HEADERS: [&str; 2] = ["traceparent", "tracestate"];

/// Validates raw records into `validated`, dead-letters the rest into `rejected`.
pub struct IngestProcessor {
    validated_topic: String,
    rejected_topic: String,
    limits: JsonLimits,
    strict_labels: bool,
    resolver: Arc<dyn SchemaIdResolver>,
    /// With `--schema-registry-url`: Confluent ids are resolved through the registry (and
    /// waited for while it is down, until this token, the worker's shutdown, fires).
    registry: Option<(Arc<RegistryResolver>, tokio_util::sync::CancellationToken)>,
    /// `audit_ingest_accepted_total{channel="kafka"}`, registered once (it moves for every
    /// record; a `counter!` call builds its labels and searches the registry each time).
    accepted: metrics::Counter,
}

impl std::fmt::Debug for IngestProcessor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IngestProcessor")
            .field("validated_topic", &self.validated_topic)
            .field("rejected_topic", &self.rejected_topic)
            .field("limits", &self.limits)
            .field("strict_labels", &self.strict_labels)
            .field("registry", &self.registry.as_ref().map(|(r, _)| r))
            .finish_non_exhaustive()
    }
}

impl IngestProcessor {
    pub fn new(
        validated_topic: impl Into<String>,
        rejected_topic: impl Into<String>,
        limits: JsonLimits,
        resolver: Arc<dyn SchemaIdResolver>,
    ) -> Self {
        IngestProcessor {
            validated_topic: validated_topic.into(),
            rejected_topic: rejected_topic.into(),
            limits,
            strict_labels: false,
            resolver,
            registry: None,
            accepted: metrics::counter!("audit_ingest_accepted_total", "channel" => "kafka"),
        }
    }

    /// Resolves Confluent schema ids through `registry` instead of the static resolver; a
    /// registry outage holds the record until the registry answers or `shutdown` fires.
    pub fn with_registry(
        mut self,
        registry: Arc<RegistryResolver>,
        shutdown: tokio_util::sync::CancellationToken,
    ) -> Self {
        self.registry = Some((registry, shutdown));
        self
    }

    /// Strict label mode (`--strict-labels`): unknown labels are dead-lettered `invalid_value`
    /// instead of kept with their originals.
    pub fn with_strict_labels(mut self, strict: bool) -> Self {
        self.strict_labels = strict;
        self
    }

    /// The one output record for `input`.
    pub fn handle(&self, input: &InputRecord) -> OutputRecord {
        self.handle_with(input, self.resolver.as_ref())
    }

    /// [`Self::handle`] with the registry's verdict for Confluent-framed input: the record
    /// decoded with its writer schema, or dead-lettered for an unknown id or an incompatible
    /// schema. `Err` only when the registry stayed unavailable until shutdown (or the retry
    /// policy's attempts ran out): the record is then not acknowledged, and read again.
    pub async fn handle_async(&self, input: &InputRecord) -> Result<OutputRecord, RuntimeError> {
        let Some((registry, shutdown)) = &self.registry else {
            return Ok(self.handle(input));
        };
        let Some(Framing::Confluent { schema_id }) = input.payload.as_deref().map(framing::detect)
        else {
            return Ok(self.handle(input));
        };
        Ok(match registry.resolve(schema_id, shutdown).await {
            Ok(Verdict::Accepted(schema)) => self.handle_with(
                input,
                &PinnedId {
                    id: schema_id,
                    schema,
                },
            ),
            Ok(Verdict::Incompatible(why)) => self.reject(
                input,
                Rejection::new(codes::INCOMPATIBLE_SCHEMA, "", why.to_string()),
            ),
            Ok(Verdict::Unresolved(why)) => self.reject(
                input,
                Rejection::new(codes::SCHEMA_REFERENCE_UNRESOLVED, "", why.to_string()),
            ),
            Err(RetryError::Failed(e @ FetchError::NotFound { .. })) => self.reject(
                input,
                Rejection::new(codes::UNKNOWN_SCHEMA_ID, "", e.to_string()),
            ),
            Err(RetryError::Failed(e @ FetchError::ReferenceNotFound { .. })) => self.reject(
                input,
                Rejection::new(codes::SCHEMA_REFERENCE_UNRESOLVED, "", e.to_string()),
            ),
            Err(e) => {
                return Err(RuntimeError::Task {
                    task: STAGE.to_owned(),
                    message: format!(
                        "{}/{}@{} not processed (not acknowledged; read again after restart): {e}",
                        input.topic, input.partition, input.offset
                    ),
                })
            }
        })
    }

    fn handle_with(&self, input: &InputRecord, resolver: &dyn SchemaIdResolver) -> OutputRecord {
        match self.accept(input, resolver) {
            Ok(out) => {
                self.accepted.increment(1);
                out
            }
            Err(r) => self.reject(input, r),
        }
    }

    fn reject(&self, input: &InputRecord, r: Rejection) -> OutputRecord {
        metrics::counter!("audit_ingest_rejected_total", "channel" => "kafka", "code" => r.code)
            .increment(1);
        tracing::debug!(
            topic = %input.topic, partition = input.partition, offset = input.offset,
            code = r.code, reason = %r.describe(), "record rejected"
        );
        dead_letter(&self.rejected_topic, input, STAGE, r.code, &r.describe())
    }

    fn accept(
        &self,
        input: &InputRecord,
        resolver: &dyn SchemaIdResolver,
    ) -> Result<OutputRecord, Rejection> {
        let Some(bytes) = input.payload.as_deref() else {
            return Err(Rejection::new(
                codes::EMPTY_PAYLOAD,
                "",
                "null record value (tombstone)",
            ));
        };
        let ctx = ValidationContext {
            receive_time_us: receive_time_us(input),
            ingress: Ingress {
                channel: IngressChannel::Kafka,
                topic: Some(input.topic.clone()),
                partition: Some(input.partition),
                offset: Some(input.offset),
                format: String::new(), // set by validate_raw from the detected framing
            },
            derived_event_id: derived_event_id(
                &input.topic,
                input.partition,
                input.offset,
                input.timestamp_ms,
            ),
            limits: self.limits.clone(),
            strict_labels: self.strict_labels,
            resolver,
        };
        let event = validate_raw(bytes, &ctx)?;
        if input.header(PROPAGATED_HEADERS[0]).is_none() {
            // No `traceparent`: the trace the event names in its own fields (if any) is linked
            // from this record's `process` span, in which the pipeline runs us.
            trace_context::link_current(
                event.trace.trace_id.as_deref(),
                event.trace.span_id.as_deref(),
            );
        }
        let payload = framing::encode_single_object_event(&event)?;
        let mut out = OutputRecord::new(
            &self.validated_topic,
            Some(partition_key(&event).as_bytes().to_vec()),
            payload,
        );
        for name in PROPAGATED_HEADERS {
            if let Some(v) = input.header(name) {
                out = out.with_header(name, v);
            }
        }
        Ok(out)
    }
}

impl Processor for IngestProcessor {
    async fn process(&self, input: &InputRecord) -> Result<Vec<OutputRecord>, RuntimeError> {
        Ok(vec![self.handle_async(input).await?])
    }
}

/// The key of `audit.validated` (design doc): tenant id, else team id, else event id, so all
/// events of a tenant stay in one partition (one chain, in order).
pub fn partition_key(event: &AuditEvent) -> &str {
    fn non_empty(s: &Option<String>) -> Option<&str> {
        s.as_deref().filter(|s| !s.is_empty())
    }
    non_empty(&event.tenant.tenant_id)
        .or_else(|| non_empty(&event.tenant.team_id))
        .unwrap_or(&event.event_id)
}

/// The record's timestamp (create or log-append time), so that a redelivery gets the same
/// receive time; the wall clock only for a record without one.
fn receive_time_us(input: &InputRecord) -> i64 {
    match input.timestamp_ms {
        Some(ms) if ms >= 0 => ms.saturating_mul(1000),
        _ => now_us(),
    }
}

fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}
