//! The Rust form of the `AuditEvent` and `ChainedEvent` Avro records.
//!
//! Field order and names here mirror `avro/audit_event.v1.avsc` one to one: the canonical bytes
//! of an event (what the chain hashes) are its Avro binary encoding under that schema, so any
//! change here is a schema change and follows Avro evolution rules (new fields need defaults,
//! and a new canonical schema version is recorded in `ChainedEvent::canonical_version`).
//!
//! Free-form JSON (payload, before/after state, results, findings) is carried as normalised JSON
//! text (object keys sorted, no insignificant whitespace) so that the bytes are deterministic and
//! every store can keep it losslessly. There are no Avro maps anywhere: map iteration order is
//! not stable in the Avro library, so string maps are sorted `Vec<KeyValue>` instead.

use serde::{Deserialize, Serialize};

/// Who/what emitted the event, what was done, to what, when, where, how and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEvent {
    /// Stable id: the producer's (any non-empty string, e.g. `evt-…`), or derived
    /// deterministically at ingest for events without one.
    pub event_id: String,
    /// Producer-defined type, e.g. `infrastructure_request`, `policy_evaluated`.
    pub event_type: String,
    pub category: EventCategory,
    pub severity: Severity,
    pub outcome: Outcome,
    /// When it happened, microseconds since the Unix epoch (UTC).
    pub event_time_us: i64,
    /// When the pipeline accepted it, microseconds since the Unix epoch (UTC). For Kafka input
    /// this is the record's timestamp, so a redelivery yields the same value.
    pub receive_time_us: i64,
    /// Component that emitted the event, e.g. `natural_language_interface`, `policy_engine`.
    pub source_component: String,
    /// How the event entered the pipeline.
    pub ingress: Ingress,
    pub actor: Actor,
    pub tenant: TenantContext,
    pub target: Option<Target>,
    pub action: Action,
    pub trace: TraceContext,
    pub request_id: Option<String>,
    pub parent_event_id: Option<String>,
    /// Why the action was taken, when the producer says.
    pub reason: Option<String>,
    pub data: EventData,
    pub ai: Option<AiContext>,
    pub compliance: Option<ComplianceContext>,
    pub security: Option<SecurityContext>,
    pub performance: Option<Performance>,
    /// Free-form string attributes, sorted by key, keys unique.
    pub attributes: Vec<KeyValue>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum EventCategory {
    UserInteraction,
    SystemProcessing,
    Governance,
    Infrastructure,
    Security,
    Telemetry,
    Other,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Severity {
    Debug,
    Info,
    Notice,
    Warning,
    Error,
    Critical,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Outcome {
    Success,
    Failure,
    Denied,
    Pending,
    Unknown,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum IngressChannel {
    Kafka,
    Http,
    Otlp,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ingress {
    pub channel: IngressChannel,
    /// Kafka input: where the raw record was read. HTTP/OTLP: `None`.
    pub topic: Option<String>,
    pub partition: Option<i32>,
    pub offset: Option<i64>,
    /// Input encoding as received: `json`, `avro-confluent`, `avro-single-object`, `otlp`.
    pub format: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ActorType {
    User,
    Service,
    System,
    AiAgent,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Actor {
    pub actor_type: ActorType,
    pub id: String,
    pub name: Option<String>,
    /// Filled by enrich from the user context.
    pub email: Option<String>,
    pub ip: Option<String>,
    pub user_agent: Option<String>,
    pub session_id: Option<String>,
    /// Filled by enrich from the user context, sorted.
    pub roles: Vec<String>,
}

/// Tenant, team and business context. Ids come from the producer; names and business fields are
/// filled by enrich from the compacted context topics.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TenantContext {
    pub tenant_id: Option<String>,
    pub team_id: Option<String>,
    pub team_name: Option<String>,
    pub project_id: Option<String>,
    pub business_unit: Option<String>,
    pub cost_center: Option<String>,
    /// What enrich found: `NONE` until enriched, then e.g. user and team lookups' results.
    pub enrichment: EnrichmentStatus,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EnrichmentStatus {
    pub enriched: bool,
    pub user_found: bool,
    pub team_found: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Target {
    pub target_type: String,
    pub id: String,
    pub name: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Action {
    /// What was done, e.g. `create_api_server`, `approve`, `deploy`.
    pub verb: String,
    pub description: Option<String>,
    /// Producer's status string as sent (e.g. `success`, `blocked`).
    pub status: Option<String>,
    pub error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TraceContext {
    pub trace_id: Option<String>,
    pub span_id: Option<String>,
    pub parent_span_id: Option<String>,
}

/// Free-form content, each as normalised JSON text.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventData {
    /// The producer's `data` object.
    pub payload_json: Option<String>,
    /// The producer's `result` object.
    pub result_json: Option<String>,
    /// The producer's `metadata` object (after the known fields were lifted out).
    pub metadata_json: Option<String>,
    pub before_json: Option<String>,
    pub after_json: Option<String>,
    /// Names of changed fields, in producer order.
    pub changes: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AiContext {
    pub agent_type: Option<String>,
    pub model: Option<String>,
    pub prompt_tokens: Option<i64>,
    pub completion_tokens: Option<i64>,
    /// 0.0 ..= 1.0
    pub confidence: Option<f64>,
    pub reasoning: Option<String>,
    pub tools: Vec<String>,
    pub execution_time_ms: Option<i64>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ComplianceContext {
    pub regulations: Vec<String>,
    /// `GREEN`, `AMBER`, `RED` or the producer's value.
    pub traffic_light: Option<String>,
    pub issues_found: Option<i32>,
    pub critical_issues: Option<i32>,
    pub findings_json: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SecurityContext {
    pub data_classification: Option<String>,
    pub encryption_used: Option<bool>,
    pub pii_detected: Option<bool>,
    pub retention_days: Option<i32>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Performance {
    pub processing_time_ms: Option<i64>,
    pub response_time_ms: Option<i64>,
    pub db_query_time_ms: Option<i64>,
    pub external_api_time_ms: Option<i64>,
    pub memory_used_mb: Option<i64>,
    pub resource_count: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct KeyValue {
    pub key: String,
    pub value: String,
}

/// One link of a partition's hash chain, as published on `audit.chained`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChainedEvent {
    /// Partition number of `audit.enriched` (and of `audit.chained`) this chain belongs to.
    pub chain_partition: i32,
    /// 1-based, contiguous per partition.
    pub seq: i64,
    /// 32 bytes; all zero for seq 1.
    #[serde(with = "serde_bytes_vec")]
    pub prev_hash: Vec<u8>,
    /// 32 bytes: see `chain::link_hash`.
    #[serde(with = "serde_bytes_vec")]
    pub hash: Vec<u8>,
    /// Version of the AuditEvent schema whose binary encoding was hashed.
    pub canonical_version: i32,
    /// Where the chainer read the event (`audit.enriched` topic, partition, offset).
    pub source_topic: String,
    pub source_partition: i32,
    pub source_offset: i64,
    pub event: AuditEvent,
}

/// Serialise `Vec<u8>` as Avro `bytes` (serde's default would be an array of ints).
pub(crate) mod serde_bytes_vec {
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(v)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Vec<u8>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("bytes")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
                Ok(v.to_vec())
            }
            fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
                Ok(v)
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut a: A,
            ) -> Result<Vec<u8>, A::Error> {
                let mut out = Vec::new();
                while let Some(b) = a.next_element::<u8>()? {
                    out.push(b);
                }
                Ok(out)
            }
        }
        d.deserialize_bytes(V)
    }
}
