//! The OTLP traces receiver: OTLP/gRPC (tonic, default `:4317`) and OTLP/HTTP `POST /v1/traces`
//! (protobuf or JSON, default `:4318`), with the message types of `opentelemetry-proto`.
//!
//! Bodies may be gzip-compressed on both transports; `--otlp-max-request-bytes` bounds the
//! request before and after decompression.
//!
//! A request refused as a whole carries a machine code besides its status and text: a
//! `google.rpc.ErrorInfo` detail (domain [`ERROR_DOMAIN`], reason = the code) in the gRPC status,
//! and in the `google.rpc.Status` body of an OTLP/HTTP error. The codes are the HTTP door's
//! ([`crate::http::codes`]):
//!
//! | refusal | OTLP/HTTP | gRPC | reason |
//! |---|---|---|---|
//! | not protobuf/JSON, unsupported compression | 415 | UNIMPLEMENTED (compression) | `unsupported_media_type` |
//! | undecodable body, bad gzip, empty gRPC message | 400 | INVALID_ARGUMENT | `invalid_body` |
//! | over the request limit (before or after decompression) | 413 | RESOURCE_EXHAUSTED | `body_too_large` |
//! | no or wrong token (`--otlp-require-token`) | 401 | UNAUTHENTICATED | `unauthorized` |
//! | broker did not acknowledge (retryable) | 503 | UNAVAILABLE | `not_delivered` |
//!
//! Each span becomes one audit event ([`span_event`]), passes the same semantic gate as every
//! other door (`validate_event`), and is produced to `<prefix>validated` (ingress channel
//! `OTLP`). The answer is sent after the broker acknowledged the accepted spans; rejected spans
//! are counted in OTLP's partial success with their reasons. If the broker does not acknowledge,
//! the whole export fails retryably (gRPC UNAVAILABLE, HTTP 503): the exporter retries, and
//! since a span's event id is derived from its trace and span ids, the chainer drops the copies.
//!
//! # Mapping
//!
//! | span | `AuditEvent` |
//! |---|---|
//! | trace id, span id, parent span id (hex) | `trace.*` |
//! | UUIDv5 over `"{trace_id}/{span_id}"` ([`OTLP_ID_NAMESPACE`]) | `event_id` (in the chainer's door namespace for OTLP) |
//! | resource `service.name` (else `unknown_service`) | `source_component` |
//! | span name | `action.verb` |
//! | span kind | `action.description` (`SPAN_KIND_SERVER`…) and attribute `otel.span.kind` |
//! | status: OK / ERROR / UNSET | `outcome` SUCCESS / FAILURE / UNKNOWN; `action.status`; `action.error` = status message; severity ERROR on ERROR, else INFO |
//! | start time | `event_time_us`; end time in attribute `otel.span.end_time_unix_nano`, duration in `otel.span.duration_ns` and `performance.processing_time_ms` |
//! | `enduser.id` | actor USER with that id (else SERVICE = service name); `session.id`, `client.address` (`http.client_ip`, `net.sock.peer.addr`), `user_agent.original` (`http.user_agent`) fill the actor |
//! | `db.system`, `db.namespace`/`db.name`, `db.collection.name`/`db.sql.table` | target (`db`), preferred |
//! | `cloud.resource_id` (span or resource) | target (`cloud_resource`) |
//! | `http.route` / `url.path` / `http.target` | target (`http_route`) |
//! | `tenant.id` (span or resource) | `tenant.tenant_id`; with `--otlp-require-token`, checked against the token's tenant (a mismatch rejects the span `tenant_mismatch`) and stamped when absent |
//! | every span attribute | attribute with its own key (values: strings as is, others as JSON text) |
//! | every resource attribute | attribute `resource.<key>` |
//! | scope name / version | attributes `otel.scope.name`, `otel.scope.version` |
//! | span events and links | `data.payload_json` (`{"events": […], "links": […]}`) |
//!
//! Category is TELEMETRY, event type `otel_span`, format `otlp`.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use futures::StreamExt;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTracePartialSuccess, ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue as OtelKeyValue};
use opentelemetry_proto::tonic::trace::v1::{span, status, Span};
use prost::Message;
use schemas::json::{labels, JsonLimits};
use schemas::{
    Action, Actor, ActorType, AuditEvent, EnrichmentStatus, EventCategory, EventData, Ingress,
    IngressChannel, KeyValue, Outcome, Performance, Severity, Target, TenantContext, TraceContext,
};
use serde_json::{json, Value};
use uuid::Uuid;
use worker_runtime::kafka::producer::await_delivery;
use worker_runtime::kafka::trace_context;
use worker_runtime::kafka::{OutputRecord, Producer};

use crate::http::codes as refusal;
use crate::processor::partition_key;
use crate::validate::{codes, validate_event, Rejection};

/// `google.rpc.ErrorInfo.domain` of the receiver's whole-request refusals (the reason is the
/// machine code).
pub const ERROR_DOMAIN: &str = "audit-ingest";

/// A gRPC status whose details carry `reason` as a `google.rpc.ErrorInfo` (domain
/// [`ERROR_DOMAIN`]). Its `details()` are the encoded `google.rpc.Status` (code, message,
/// detail), which is also the OTLP/HTTP error body.
pub fn refusal_status(
    code: tonic::Code,
    reason: &str,
    message: impl Into<String>,
) -> tonic::Status {
    refusal_status_with_metadata(code, reason, message, tonic::metadata::MetadataMap::new())
}

fn refusal_status_with_metadata(
    code: tonic::Code,
    reason: &str,
    message: impl Into<String>,
    metadata: tonic::metadata::MetadataMap,
) -> tonic::Status {
    use tonic_types::{ErrorDetails, StatusExt};
    tonic::Status::with_error_details_and_metadata(
        code,
        message,
        ErrorDetails::with_error_info(
            reason,
            ERROR_DOMAIN,
            std::collections::HashMap::<String, String>::new(),
        ),
        metadata,
    )
}

/// UUIDv5 namespace of event ids derived from a span's trace and span ids.
pub const OTLP_ID_NAMESPACE: Uuid = Uuid::from_u128(0x3c1d_9a5e_7b20_4f6e_8d41_a2c5_e9b0_7f13);

/// The `source_component` of a span whose resource names no service (the OTel SDKs' own default).
pub const UNKNOWN_SERVICE: &str = "unknown_service";

/// Errors of the OTLP receiver's servers.
#[derive(Debug, thiserror::Error)]
pub enum OtlpError {
    #[error("binding the OTLP {transport} receiver on {addr}: {source}")]
    Bind {
        transport: &'static str,
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("serving OTLP/HTTP: {0}")]
    Http(#[source] std::io::Error),
    #[error("serving OTLP/gRPC: {0}")]
    Grpc(#[source] tonic::transport::Error),
}

/// The event id of a span: UUIDv5 over `"{trace_id_hex}/{span_id_hex}"`, so an exporter's retry
/// of the same span gets the same id.
pub fn span_event_id(trace_id: &[u8], span_id: &[u8]) -> String {
    let name = format!("{}/{}", hex::encode(trace_id), hex::encode(span_id));
    Uuid::new_v5(&OTLP_ID_NAMESPACE, name.as_bytes()).to_string()
}

/// An attribute value as text: strings as they are, everything else as JSON text.
pub fn any_value_text(v: &AnyValue) -> String {
    match &v.value {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        _ => any_value_json(v).to_string(),
    }
}

fn any_value_json(v: &AnyValue) -> Value {
    match &v.value {
        None => Value::Null,
        Some(any_value::Value::StringValue(s)) => Value::String(s.clone()),
        Some(any_value::Value::BoolValue(b)) => Value::Bool(*b),
        Some(any_value::Value::IntValue(i)) => json!(i),
        Some(any_value::Value::DoubleValue(d)) => serde_json::Number::from_f64(*d)
            .map_or_else(|| Value::String(d.to_string()), Value::Number),
        Some(any_value::Value::ArrayValue(a)) => {
            Value::Array(a.values.iter().map(any_value_json).collect())
        }
        Some(any_value::Value::KvlistValue(l)) => Value::Object(kv_json(&l.values)),
        Some(any_value::Value::BytesValue(b)) => Value::String(hex::encode(b)),
        // An index into a profiles string table, which traces do not have: kept as given.
        Some(any_value::Value::StringValueStrindex(i)) => json!({"stringValueStrindex": i}),
    }
}

fn kv_json(kvs: &[OtelKeyValue]) -> serde_json::Map<String, Value> {
    kvs.iter()
        .map(|kv| {
            let v = kv.value.as_ref().map_or(Value::Null, any_value_json);
            (kv.key.clone(), v)
        })
        .collect()
}

/// What the receiver knows about a span besides the span itself.
#[derive(Debug, Clone, Copy)]
pub struct SpanContext<'a> {
    pub resource: &'a [OtelKeyValue],
    pub scope_name: &'a str,
    pub scope_version: &'a str,
    pub receive_time_us: i64,
}

fn find(kvs: &[OtelKeyValue], key: &str) -> Option<String> {
    kvs.iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .map(any_value_text)
        .filter(|s| !s.is_empty())
}

/// Maps one span to an audit event (module docs); checks only what the mapping itself needs
/// (id lengths). The semantic gate is [`validate_event`], run by the caller.
pub fn span_event(s: &Span, ctx: &SpanContext<'_>) -> Result<AuditEvent, Rejection> {
    if s.trace_id.len() != 16 || s.trace_id.iter().all(|b| *b == 0) {
        return Err(Rejection::new(
            codes::INVALID_VALUE,
            "span.trace_id",
            format!(
                "a trace id is 16 bytes, not all zero (got {} bytes)",
                s.trace_id.len()
            ),
        ));
    }
    if s.span_id.len() != 8 || s.span_id.iter().all(|b| *b == 0) {
        return Err(Rejection::new(
            codes::INVALID_VALUE,
            "span.span_id",
            format!(
                "a span id is 8 bytes, not all zero (got {} bytes)",
                s.span_id.len()
            ),
        ));
    }
    if !s.parent_span_id.is_empty() && s.parent_span_id.len() != 8 {
        return Err(Rejection::new(
            codes::INVALID_VALUE,
            "span.parent_span_id",
            format!(
                "a parent span id is empty or 8 bytes (got {})",
                s.parent_span_id.len()
            ),
        ));
    }
    if s.name.is_empty() {
        return Err(Rejection::new(
            schemas::json::JsonErrorCode::MissingField.as_str(),
            "span.name",
            "a span needs a name (it is the audit event's action)",
        ));
    }
    if s.end_time_unix_nano < s.start_time_unix_nano {
        return Err(Rejection::new(
            codes::INVALID_VALUE,
            "span.end_time_unix_nano",
            "the span ends before it starts",
        ));
    }
    let attr = |key: &str| find(&s.attributes, key);
    let attr_any = |keys: &[&str]| keys.iter().find_map(|k| attr(k));
    let res = |key: &str| find(ctx.resource, key);

    let service = res("service.name").unwrap_or_else(|| UNKNOWN_SERVICE.to_owned());
    let kind = span::SpanKind::try_from(s.kind).unwrap_or(span::SpanKind::Unspecified);
    let st = s.status.as_ref();
    let code = st
        .and_then(|st| status::StatusCode::try_from(st.code).ok())
        .unwrap_or(status::StatusCode::Unset);
    let (outcome, severity) = match code {
        status::StatusCode::Ok => (Outcome::Success, Severity::Info),
        status::StatusCode::Error => (Outcome::Failure, Severity::Error),
        status::StatusCode::Unset => (Outcome::Unknown, Severity::Info),
    };
    let status_message = st.map(|st| st.message.clone()).filter(|m| !m.is_empty());

    let actor = match attr("enduser.id") {
        Some(id) => (ActorType::User, id),
        None => (ActorType::Service, service.clone()),
    };
    let target = if let Some(system) = attr("db.system.name").or_else(|| attr("db.system")) {
        let ns = attr_any(&["db.namespace", "db.name"]);
        let coll = attr_any(&[
            "db.collection.name",
            "db.sql.table",
            "db.mongodb.collection",
        ]);
        let id = match (ns, coll) {
            (Some(n), Some(c)) => format!("{n}.{c}"),
            (Some(n), None) => n,
            (None, Some(c)) => c,
            (None, None) => system.clone(),
        };
        Some(Target {
            target_type: "db".into(),
            id,
            name: Some(system),
        })
    } else if let Some(id) = attr("cloud.resource_id").or_else(|| res("cloud.resource_id")) {
        Some(Target {
            target_type: "cloud_resource".into(),
            id,
            name: res("cloud.provider"),
        })
    } else {
        attr_any(&["http.route", "url.path", "http.target"]).map(|route| Target {
            target_type: "http_route".into(),
            id: route,
            name: attr_any(&["http.request.method", "http.method"]),
        })
    };

    let duration_ns = s.end_time_unix_nano - s.start_time_unix_nano;
    let mut attributes: BTreeMap<String, String> = BTreeMap::new();
    for kv in ctx.resource {
        let v = kv.value.as_ref().map(any_value_text).unwrap_or_default();
        attributes.insert(format!("resource.{}", kv.key), v);
    }
    for kv in &s.attributes {
        let v = kv.value.as_ref().map(any_value_text).unwrap_or_default();
        attributes.insert(kv.key.clone(), v);
    }
    let mut put = |k: &str, v: String| {
        attributes.insert(k.to_owned(), v);
    };
    put("otel.span.kind", kind.as_str_name().to_owned());
    put(
        "otel.span.end_time_unix_nano",
        s.end_time_unix_nano.to_string(),
    );
    put("otel.span.duration_ns", duration_ns.to_string());
    if !ctx.scope_name.is_empty() {
        put("otel.scope.name", ctx.scope_name.to_owned());
    }
    if !ctx.scope_version.is_empty() {
        put("otel.scope.version", ctx.scope_version.to_owned());
    }
    if !s.trace_state.is_empty() {
        put("otel.trace_state", s.trace_state.clone());
    }

    let payload = {
        let events: Vec<Value> = s
            .events
            .iter()
            .map(|e| {
                json!({"name": e.name, "timeUnixNano": e.time_unix_nano.to_string(),
                       "attributes": kv_json(&e.attributes)})
            })
            .collect();
        let links: Vec<Value> = s
            .links
            .iter()
            .map(|l| {
                json!({"traceId": hex::encode(&l.trace_id), "spanId": hex::encode(&l.span_id),
                       "attributes": kv_json(&l.attributes)})
            })
            .collect();
        (!events.is_empty() || !links.is_empty())
            .then(|| schemas::json::normalized_json(&json!({"events": events, "links": links})))
    };

    let start_us = i64::try_from(s.start_time_unix_nano / 1000).unwrap_or(i64::MAX);
    let mut event = AuditEvent {
        event_id: span_event_id(&s.trace_id, &s.span_id),
        event_type: "otel_span".into(),
        category: EventCategory::Telemetry,
        severity,
        outcome,
        event_time_us: start_us,
        receive_time_us: ctx.receive_time_us,
        source_component: service,
        ingress: Ingress {
            channel: IngressChannel::Otlp,
            topic: None,
            partition: None,
            offset: None,
            format: "otlp".into(),
        },
        actor: Actor {
            actor_type: actor.0,
            id: actor.1,
            name: None,
            email: None,
            ip: attr_any(&["client.address", "http.client_ip", "net.sock.peer.addr"]),
            user_agent: attr_any(&["user_agent.original", "http.user_agent"]),
            session_id: attr("session.id"),
            roles: vec![],
        },
        tenant: TenantContext {
            tenant_id: attr("tenant.id").or_else(|| res("tenant.id")),
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
        target,
        action: Action {
            verb: s.name.clone(),
            description: Some(kind.as_str_name().to_owned()),
            status: Some(code.as_str_name().to_owned()),
            error: if code == status::StatusCode::Error {
                status_message
            } else {
                None
            },
        },
        trace: TraceContext {
            trace_id: Some(hex::encode(&s.trace_id)),
            span_id: Some(hex::encode(&s.span_id)),
            parent_span_id: (!s.parent_span_id.is_empty()).then(|| hex::encode(&s.parent_span_id)),
        },
        request_id: None,
        parent_event_id: None,
        reason: None,
        data: EventData {
            payload_json: payload,
            result_json: None,
            metadata_json: None,
            before_json: None,
            after_json: None,
            changes: vec![],
        },
        ai: None,
        compliance: None,
        security: None,
        performance: Some(Performance {
            processing_time_ms: Some(i64::try_from(duration_ns / 1_000_000).unwrap_or(i64::MAX)),
            response_time_ms: None,
            db_query_time_ms: None,
            external_api_time_ms: None,
            memory_used_mb: None,
            resource_count: None,
        }),
        attributes: attributes
            .into_iter()
            .map(|(key, value)| KeyValue { key, value })
            .collect(),
    };
    // A span attribute in the pipeline's `audit.original.` namespace is the producer's, not a
    // kept label: renamed as for every other door.
    labels::protect_reserved_in_event(&mut event);
    Ok(event)
}

/// Shared state of both OTLP transports.
pub struct OtlpReceiver {
    pub producer: Producer,
    pub validated_topic: String,
    pub limits: JsonLimits,
    /// Largest request (bytes, before and after decompression).
    pub max_request_bytes: usize,
    /// `--otlp-require-token`: exporters must send `Authorization: Bearer <token>` (HTTP header
    /// or gRPC metadata) from the HTTP door's token table; a span's `tenant.id` is then checked
    /// and stamped as for HTTP events. `None`: no authentication, `tenant.id` is taken as sent.
    pub tokens: Option<crate::http::TokenTable>,
}

/// Why an export was refused as a whole.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("a valid `Authorization: Bearer <token>` is required")]
    Unauthenticated,
    #[error(transparent)]
    NotDelivered(#[from] NotDelivered),
}

impl std::fmt::Debug for OtlpReceiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OtlpReceiver")
            .field("validated_topic", &self.validated_topic)
            .field("max_request_bytes", &self.max_request_bytes)
            .finish_non_exhaustive()
    }
}

/// The broker did not acknowledge every accepted span; the export is to be retried.
#[derive(Debug, thiserror::Error)]
#[error("{failed} spans not acknowledged by the broker: {first}")]
pub struct NotDelivered {
    pub failed: usize,
    pub first: String,
}

/// Maps and validates every span of `req`: accepted events and rejection reasons (per span,
/// `resource_spans[i].scope_spans[j].spans[k]: code: path: message`).
pub fn map_request(
    req: &ExportTraceServiceRequest,
    limits: &JsonLimits,
    receive_time_us: i64,
) -> (Vec<AuditEvent>, Vec<String>) {
    map_request_for(req, limits, receive_time_us, None)
}

/// [`map_request`] for an authenticated exporter: each span's tenant (and team) is checked
/// against the token's and stamped where absent (`crate::http::check_principal`).
pub fn map_request_for(
    req: &ExportTraceServiceRequest,
    limits: &JsonLimits,
    receive_time_us: i64,
    principal: Option<&crate::http::Principal>,
) -> (Vec<AuditEvent>, Vec<String>) {
    let mut events = Vec::new();
    let mut rejected = Vec::new();
    for (i, rs) in req.resource_spans.iter().enumerate() {
        let resource = rs.resource.as_ref().map_or(&[][..], |r| &r.attributes[..]);
        for (j, ss) in rs.scope_spans.iter().enumerate() {
            let (scope_name, scope_version) = ss
                .scope
                .as_ref()
                .map_or(("", ""), |s| (s.name.as_str(), s.version.as_str()));
            let ctx = SpanContext {
                resource,
                scope_name,
                scope_version,
                receive_time_us,
            };
            for (k, s) in ss.spans.iter().enumerate() {
                let result = span_event(s, &ctx)
                    .and_then(|e| validate_event(&e, limits, receive_time_us).map(|()| e))
                    .and_then(|e| match principal {
                        None => Ok(e),
                        Some(p) => {
                            crate::http::check_principal(e, p, "span.attributes[tenant.id]", "")
                                .map_err(|(_, r)| r)
                        }
                    });
                match result {
                    Ok(e) => events.push(e),
                    Err(r) => {
                        metrics::counter!("audit_ingest_rejected_total", "channel" => "otlp", "code" => r.code)
                            .increment(1);
                        rejected.push(format!(
                            "resource_spans[{i}].scope_spans[{j}].spans[{k}]: {}: {}",
                            r.code,
                            r.describe()
                        ));
                    }
                }
            }
        }
    }
    (events, rejected)
}

impl OtlpReceiver {
    /// The whole export: map, validate, produce, wait for the broker, answer.
    pub async fn export(
        &self,
        req: &ExportTraceServiceRequest,
        authorization: Option<&str>,
    ) -> Result<ExportTraceServiceResponse, ExportError> {
        let principal = match &self.tokens {
            None => None,
            Some(table) => {
                let (_, p) = authorization
                    .and_then(crate::http::bearer_value)
                    .and_then(|t| table.lookup(t))
                    .ok_or(ExportError::Unauthenticated)?;
                Some(p)
            }
        };
        let (events, rejected) = map_request_for(req, &self.limits, now_us(), principal.as_deref());
        let mut deliveries = Vec::with_capacity(events.len());
        let mut failed = Vec::new();
        let request = trace_context::current();
        for e in &events {
            let record = schemas::framing::encode_single_object_event(e).map(|payload| {
                OutputRecord::new(
                    &self.validated_topic,
                    Some(partition_key(e).as_bytes().to_vec()),
                    payload,
                )
            });
            match record {
                Ok(mut r) => {
                    // Each event is one of the caller's spans: its send span links to it.
                    let send = trace_context::send_span(
                        crate::processor::STAGE,
                        &request,
                        &self.validated_topic,
                        None,
                    );
                    if let Some(sc) = send.context().and_then(|_| {
                        trace_context::remote_span_context(
                            e.trace.trace_id.as_deref(),
                            e.trace.span_id.as_deref(),
                        )
                    }) {
                        send.add_link(sc, "event_trace");
                    }
                    send.inject(&mut r.headers);
                    let enqueued = self.producer.enqueue(&r).await;
                    send.end_with(&enqueued);
                    match enqueued {
                        Ok(d) => deliveries.push(d),
                        Err(err) => failed.push(err.to_string()),
                    }
                }
                Err(err) => failed.push(err.to_string()),
            }
        }
        for d in deliveries {
            if let Err(err) = await_delivery(d, &self.validated_topic).await {
                failed.push(err.to_string());
            }
        }
        if let Some(first) = failed.first() {
            return Err(NotDelivered {
                failed: failed.len(),
                first: first.clone(),
            }
            .into());
        }
        metrics::counter!("audit_ingest_accepted_total", "channel" => "otlp")
            .increment(events.len() as u64);
        let partial_success = (!rejected.is_empty()).then(|| {
            // The first reasons are enough to fix a producer; the count is exact.
            let mut message = rejected
                .iter()
                .take(5)
                .cloned()
                .collect::<Vec<_>>()
                .join("; ");
            if rejected.len() > 5 {
                message.push_str(&format!("; and {} more", rejected.len() - 5));
            }
            ExportTracePartialSuccess {
                rejected_spans: rejected.len() as i64,
                error_message: message,
            }
        });
        Ok(ExportTraceServiceResponse { partial_success })
    }
}

// ---- gRPC --------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct Grpc(Arc<OtlpReceiver>);

#[tonic::async_trait]
impl TraceService for Grpc {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let auth = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok());
        // The caller's `traceparent` metadata (if any) is the parent of the request's span.
        let span = trace_context::server_span(
            crate::processor::STAGE,
            "opentelemetry.proto.collector.trace.v1.TraceService/Export",
            request.metadata().get("traceparent").map(|v| v.as_bytes()),
            request.metadata().get("tracestate").map(|v| v.as_bytes()),
        );
        let result = trace_context::in_span(&span, self.0.export(request.get_ref(), auth)).await;
        span.end_with(&result);
        match result {
            Ok(resp) => Ok(tonic::Response::new(resp)),
            Err(e @ ExportError::Unauthenticated) => Err(refusal_status(
                tonic::Code::Unauthenticated,
                refusal::UNAUTHORIZED,
                e.to_string(),
            )),
            // UNAVAILABLE is retryable for OTLP exporters.
            Err(e) => Err(refusal_status(
                tonic::Code::Unavailable,
                refusal::NOT_DELIVERED,
                e.to_string(),
            )),
        }
    }
}

/// The gRPC service with a machine code on the refusals tonic makes itself, before the handler
/// runs (an undecodable, oversized or oddly compressed request): the same `ErrorInfo` as the
/// handler's own refusals. Their codes change too: tonic answers an undecodable message
/// INTERNAL and an oversized one OUT_OF_RANGE, and OTLP exporters retry OUT_OF_RANGE (the
/// same refused request, forever) while INTERNAL says the fault is ours. INVALID_ARGUMENT and
/// RESOURCE_EXHAUSTED (without RetryInfo) are the client's fault and not retried.
#[derive(Debug, Clone)]
struct WithRefusalCodes<S>(S);

impl<S: tonic::server::NamedService> tonic::server::NamedService for WithRefusalCodes<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, B> tonic::codegen::Service<axum::http::Request<B>> for WithRefusalCodes<S>
where
    S: tonic::codegen::Service<
        axum::http::Request<B>,
        Response = axum::http::Response<tonic::body::Body>,
        Error = std::convert::Infallible,
    >,
    S::Future: Send + 'static,
{
    type Response = axum::http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = futures::future::BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, req: axum::http::Request<B>) -> Self::Future {
        let answer = self.0.call(req);
        Box::pin(async move { Ok(with_refusal_code(answer.await?)) })
    }
}

/// `resp` with its status's machine code added (see [`WithRefusalCodes`]). A status that
/// already has details (the handler's), a success and codes tonic does not refuse requests
/// with are left as they are.
fn with_refusal_code(
    resp: axum::http::Response<tonic::body::Body>,
) -> axum::http::Response<tonic::body::Body> {
    // tonic keeps the status it answered with (trailers-only) in the response's extensions.
    let Some(status) = resp.extensions().get::<tonic::Status>() else {
        return resp;
    };
    if !status.details().is_empty() {
        return resp;
    }
    let (code, reason) = match status.code() {
        // Undecodable protobuf, a missing message, bad compression or framing.
        tonic::Code::Internal | tonic::Code::InvalidArgument => {
            (tonic::Code::InvalidArgument, refusal::INVALID_BODY)
        }
        // Over `max_decoding_message_size`, before or after decompression.
        tonic::Code::OutOfRange | tonic::Code::ResourceExhausted => {
            (tonic::Code::ResourceExhausted, refusal::BODY_TOO_LARGE)
        }
        // A `grpc-encoding` the server does not accept (tonic adds `grpc-accept-encoding`).
        tonic::Code::Unimplemented => (tonic::Code::Unimplemented, refusal::UNSUPPORTED_MEDIA_TYPE),
        _ => return resp,
    };
    refusal_status_with_metadata(code, reason, status.message(), status.metadata().clone())
        .into_http()
}

/// Serves OTLP/gRPC on `listener` until `shutdown`.
pub async fn serve_grpc(
    listener: tokio::net::TcpListener,
    receiver: Arc<OtlpReceiver>,
    shutdown: worker_runtime::Shutdown,
) -> Result<(), OtlpError> {
    let max = receiver.max_request_bytes;
    // gzip: what the OpenTelemetry Collector's exporters send by default. The decoding limit
    // applies to the decompressed message.
    let service = WithRefusalCodes(
        TraceServiceServer::new(Grpc(receiver))
            .max_decoding_message_size(max)
            .accept_compressed(tonic::codec::CompressionEncoding::Gzip),
    );
    let incoming = tonic::transport::server::TcpIncoming::from(listener);
    tonic::transport::Server::builder()
        .add_service(service)
        .serve_with_incoming_shutdown(incoming, async move { shutdown.cancelled().await })
        .await
        .map_err(OtlpError::Grpc)
}

// ---- HTTP --------------------------------------------------------------------------------------

const PROTOBUF: &str = "application/x-protobuf";
const JSON: &str = "application/json";

/// OTLP/HTTP: `POST /v1/traces`.
pub fn http_router(receiver: Arc<OtlpReceiver>) -> Router {
    Router::new()
        .route("/v1/traces", post(post_traces))
        .with_state(receiver)
}

/// Serves OTLP/HTTP on `listener` until `shutdown`.
pub async fn serve_http(
    listener: tokio::net::TcpListener,
    receiver: Arc<OtlpReceiver>,
    shutdown: worker_runtime::Shutdown,
) -> Result<(), OtlpError> {
    axum::serve(listener, http_router(receiver))
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
        .map_err(OtlpError::Http)
}

/// An OTLP/HTTP error answer: a `google.rpc.Status` in the request's encoding, its machine code
/// `reason` in a `google.rpc.ErrorInfo` detail (domain [`ERROR_DOMAIN`]).
fn http_error(status: StatusCode, json_body: bool, reason: &str, message: String) -> Response {
    let code = match status {
        StatusCode::SERVICE_UNAVAILABLE => tonic::Code::Unavailable,
        StatusCode::UNAUTHORIZED => tonic::Code::Unauthenticated,
        StatusCode::PAYLOAD_TOO_LARGE => tonic::Code::ResourceExhausted,
        StatusCode::INTERNAL_SERVER_ERROR => tonic::Code::Internal,
        _ => tonic::Code::InvalidArgument,
    };
    if json_body {
        // The protobuf JSON mapping of google.rpc.Status: an `Any` detail is its message's
        // fields beside `@type`.
        let body = json!({
            "code": code as i32,
            "message": message,
            "details": [{
                "@type": tonic_types::ErrorInfo::TYPE_URL,
                "reason": reason,
                "domain": ERROR_DOMAIN,
            }],
        })
        .to_string();
        (status, [(header::CONTENT_TYPE, JSON)], body).into_response()
    } else {
        let body = refusal_status(code, reason, message).details().to_vec();
        (status, [(header::CONTENT_TYPE, PROTOBUF)], body).into_response()
    }
}

/// Decodes an OTLP/HTTP body: protobuf, or JSON (OTLP's JSON mapping, hex ids).
pub fn decode_http_body(
    bytes: &[u8],
    json_body: bool,
) -> Result<ExportTraceServiceRequest, String> {
    if json_body {
        serde_json::from_slice(bytes).map_err(|e| format!("not an OTLP/JSON trace export: {e}"))
    } else {
        ExportTraceServiceRequest::decode(bytes)
            .map_err(|e| format!("not an OTLP protobuf trace export: {e}"))
    }
}

async fn post_traces(
    State(rx): State<Arc<OtlpReceiver>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|v| v.trim().to_ascii_lowercase())
        .unwrap_or_default();
    let json_body = match ct.as_str() {
        PROTOBUF => false,
        JSON => true,
        _ => {
            return http_error(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                false,
                refusal::UNSUPPORTED_MEDIA_TYPE,
                format!("Content-Type must be {PROTOBUF} or {JSON}"),
            )
        }
    };
    let gzip = match headers
        .get(header::CONTENT_ENCODING)
        .map(|v| v.to_str().unwrap_or("?").trim().to_ascii_lowercase())
        .as_deref()
    {
        None | Some("identity") | Some("") => false,
        Some("gzip") => true,
        Some(enc) => {
            return http_error(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                json_body,
                refusal::UNSUPPORTED_MEDIA_TYPE,
                format!("Content-Encoding {enc} is not supported (gzip or none)"),
            )
        }
    };
    let limit = rx.max_request_bytes;
    let mut bytes = Vec::new();
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let Ok(chunk) = chunk else {
            return http_error(
                StatusCode::BAD_REQUEST,
                json_body,
                refusal::INVALID_BODY,
                "reading the body".into(),
            );
        };
        if bytes.len() + chunk.len() > limit {
            // Read a bounded overshoot first, so the exporter gets the 413 (and its
            // ErrorInfo) rather than a connection torn down while it is still sending.
            let seen = bytes.len() + chunk.len();
            let resp = too_large(json_body, limit);
            return if crate::http::drain_oversize(stream, seen, limit).await {
                resp
            } else {
                crate::http::closing(resp)
            };
        }
        bytes.extend_from_slice(&chunk);
    }
    if gzip {
        bytes = match gunzip_bounded(&bytes, limit) {
            Ok(b) => b,
            Err(GunzipError::TooLarge) => return too_large(json_body, limit),
            Err(GunzipError::Invalid(e)) => {
                return http_error(
                    StatusCode::BAD_REQUEST,
                    json_body,
                    refusal::INVALID_BODY,
                    format!("invalid gzip body: {e}"),
                )
            }
        };
    }
    let req = match decode_http_body(&bytes, json_body) {
        Ok(r) => r,
        Err(m) => return http_error(StatusCode::BAD_REQUEST, json_body, refusal::INVALID_BODY, m),
    };
    let auth = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let span = trace_context::server_span(
        crate::processor::STAGE,
        "POST /v1/traces",
        headers.get("traceparent").map(|v| v.as_bytes()),
        headers.get("tracestate").map(|v| v.as_bytes()),
    );
    let result = trace_context::in_span(&span, rx.export(&req, auth)).await;
    span.end_with(&result);
    match result {
        Ok(resp) if json_body => match serde_json::to_vec(&resp) {
            Ok(b) => (StatusCode::OK, [(header::CONTENT_TYPE, JSON)], b).into_response(),
            Err(e) => http_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                true,
                "internal",
                e.to_string(),
            ),
        },
        Ok(resp) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, PROTOBUF)],
            resp.encode_to_vec(),
        )
            .into_response(),
        Err(e @ ExportError::Unauthenticated) => http_error(
            StatusCode::UNAUTHORIZED,
            json_body,
            refusal::UNAUTHORIZED,
            e.to_string(),
        ),
        Err(e) => http_error(
            StatusCode::SERVICE_UNAVAILABLE,
            json_body,
            refusal::NOT_DELIVERED,
            e.to_string(),
        ),
    }
}

fn too_large(json_body: bool, limit: usize) -> Response {
    http_error(
        StatusCode::PAYLOAD_TOO_LARGE,
        json_body,
        refusal::BODY_TOO_LARGE,
        format!("the request is larger than {limit} bytes"),
    )
}

/// Why a gzip body was refused.
#[derive(Debug)]
pub enum GunzipError {
    /// It inflates beyond the request limit (a compression bomb is stopped there).
    TooLarge,
    Invalid(std::io::Error),
}

/// Inflates `bytes`, reading at most `limit` bytes of output (the request limit applies to the
/// decompressed request too).
pub fn gunzip_bounded(bytes: &[u8], limit: usize) -> Result<Vec<u8>, GunzipError> {
    use std::io::Read;
    let mut out = Vec::new();
    let cap = u64::try_from(limit).unwrap_or(u64::MAX).saturating_add(1);
    flate2::read::MultiGzDecoder::new(bytes)
        .take(cap)
        .read_to_end(&mut out)
        .map_err(GunzipError::Invalid)?;
    if out.len() > limit {
        return Err(GunzipError::TooLarge);
    }
    Ok(out)
}

fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests;
