//! A hand-written Avro binary decoder of [`AuditEvent`] (`audit_event.v1.avsc`) and
//! [`ChainedEvent`] (`chained_event.v1.avsc`), the mirror of [`crate::canonical`]'s encoder.
//!
//! Why: every worker after ingest decodes each record, and apache-avro's schema-aware serde
//! reader costs most of the chainer's time per record (it dispatches on the schema for every
//! value and reads through `io::Read` one byte at a time for varints). This reads the same
//! bytes straight from the slice: zig-zag varints, length-prefixed strings (UTF-8 checked),
//! `["null", T]` unions by branch index, arrays in blocks, enums by index, records field by
//! field in schema order.
//!
//! It must accept exactly what apache-avro 0.22's reader accepts, with the same value, for the
//! case writer schema = reader schema = the canonical one, because [`crate::avro`] uses it in
//! place of that reader. What that reader does, and what this file matches:
//! - varints: at most 10 bytes; the 10th contributes only its lowest bit (the rest is shifted
//!   out); a 10th byte with the continuation bit set is an overflow error;
//! - `int`: a varint outside `i32` is an error;
//! - `string`/`bytes`: a negative length is an error, a length above apache-avro's allocation
//!   limit ([`apache_avro::util::max_allocation_bytes`]) is an error, fewer bytes left than the
//!   length is an error, and a string must be valid UTF-8;
//! - `boolean`: one byte, 0 or 1, anything else is an error;
//! - unions: the branch index must be 0 or 1 (an index outside `i32` is an error too);
//! - enums: the index must be below the number of symbols;
//! - arrays: any sequence of blocks: a positive count, or a negative count followed by the
//!   block's byte size (read and ignored), until a zero count;
//! - bytes left after the datum are an error ([`crate::avro`] checks that for its reader too).
//!
//! Hostile lengths are checked against the bytes left before anything is allocated, and array
//! preallocation is bounded by the bytes left, so no input makes this allocate more than a small
//! multiple of its own size. Property tests below compare with apache-avro on encodings,
//! re-blocked encodings and mutated bytes.
//!
//! Guard: [`applies`] / [`chained_applies`] check the catalog's schemas by fingerprint (the
//! constants of [`crate::canonical`], whose test fails when a schema changes); when they do not
//! apply, callers use apache-avro.

use std::fmt;
use std::sync::LazyLock;

use thiserror::Error;

use crate::avro::{self, RecordKind, CANONICAL_VERSION};
use crate::canonical::{AUDIT_EVENT_V1_FINGERPRINT, CHAINED_EVENT_V1_FINGERPRINT};
use crate::error::SchemaError;
use crate::event::*;

static APPLIES: LazyLock<bool> = LazyLock::new(|| {
    avro::current_schema(RecordKind::AuditEvent).is_ok_and(|e| {
        e.version == CANONICAL_VERSION && e.fingerprint == AUDIT_EVENT_V1_FINGERPRINT
    })
});

static CHAINED_APPLIES: LazyLock<bool> = LazyLock::new(|| {
    // The chained fingerprint covers the embedded AuditEvent record too, so equal fingerprints
    // mean the leading fields and the event are the shapes this file reads.
    *APPLIES
        && avro::current_schema(RecordKind::ChainedEvent)
            .is_ok_and(|e| e.fingerprint == CHAINED_EVENT_V1_FINGERPRINT)
});

/// Whether [`decode_event`] reads the catalog's current `AuditEvent` schema (the canonical one
/// this decoder was written for). Checked once.
pub fn applies() -> bool {
    *APPLIES
}

/// Whether [`decode_chained`] reads the catalog's current `ChainedEvent` schema. Checked once.
pub fn chained_applies() -> bool {
    *CHAINED_APPLIES
}

/// apache-avro's limit on one `string`/`bytes` length (process-wide, set once), read once.
static MAX_LEN: LazyLock<usize> = LazyLock::new(|| {
    apache_avro::util::max_allocation_bytes(apache_avro::util::DEFAULT_MAX_ALLOCATION_BYTES)
});

/// Why a datum does not decode.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DecodeError {
    /// The value of `field` (a path in the record, e.g. `actor.roles`) is malformed.
    #[error("field {field}: {problem}")]
    Field {
        field: &'static str,
        problem: Problem,
    },
    /// The datum decoded, but bytes were left over.
    #[error("{0} trailing bytes after the datum")]
    Trailing(usize),
}

/// What was wrong with a field's bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// The input ends inside the value.
    Truncated {
        needed: u64,
        left: usize,
    },
    /// A varint whose 10th byte has the continuation bit set.
    VarintOverflow,
    /// An `int` varint outside `i32`.
    IntOutOfRange(i64),
    NegativeLength(i64),
    /// A length above apache-avro's allocation limit.
    LengthOverLimit {
        length: u64,
        limit: usize,
    },
    InvalidUtf8 {
        valid_up_to: usize,
    },
    InvalidBoolean(u8),
    /// A `["null", T]` union branch other than 0 or 1.
    UnionBranch(i64),
    EnumIndex {
        index: i64,
        symbols: usize,
    },
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::Truncated { needed, left } => {
                write!(f, "truncated: needs {needed} bytes, {left} left")
            }
            Problem::VarintOverflow => f.write_str("varint longer than 10 bytes"),
            Problem::IntOutOfRange(n) => write!(f, "int {n} does not fit 32 bits"),
            Problem::NegativeLength(n) => write!(f, "negative length {n}"),
            Problem::LengthOverLimit { length, limit } => {
                write!(f, "length {length} over the allocation limit {limit}")
            }
            Problem::InvalidUtf8 { valid_up_to } => {
                write!(f, "string is not UTF-8 (valid up to byte {valid_up_to})")
            }
            Problem::InvalidBoolean(b) => write!(f, "boolean byte {b}, expected 0 or 1"),
            Problem::UnionBranch(i) => write!(f, "union branch {i}, expected 0 (null) or 1"),
            Problem::EnumIndex { index, symbols } => {
                write!(f, "enum index {index}, the enum has {symbols} symbols")
            }
        }
    }
}

impl DecodeError {
    /// The crate's error for this failure: [`SchemaError::TrailingBytes`] for leftovers (as
    /// [`crate::avro`] reports them), [`SchemaError::Decode`] otherwise, so that error codes on
    /// `audit.rejected` are the same whichever decoder ran.
    pub fn into_schema_error(self, record: &'static str, writer: String) -> SchemaError {
        match self {
            DecodeError::Trailing(trailing) => SchemaError::TrailingBytes {
                record,
                writer,
                trailing,
            },
            field @ DecodeError::Field { .. } => SchemaError::Decode {
                record,
                writer,
                source: Box::new(apache_avro::Error::new(
                    apache_avro::error::Details::DeserializeValue(field.to_string()),
                )),
            },
        }
    }
}

type Result<T> = std::result::Result<T, DecodeError>;

/// Decodes an `AuditEvent` datum (canonical bytes, no framing). The whole slice must be the
/// datum. Only meaningful when [`applies`].
pub fn decode_event(bytes: &[u8]) -> Result<AuditEvent> {
    let mut r = Reader::new(bytes);
    let e = r.event()?;
    r.finish()?;
    Ok(e)
}

/// Decodes a `ChainedEvent` datum (no framing). The whole slice must be the datum. Only
/// meaningful when [`chained_applies`].
pub fn decode_chained(bytes: &[u8]) -> Result<ChainedEvent> {
    let mut r = Reader::new(bytes);
    // chained_event.v1.avsc, in schema order (struct expressions evaluate in written order).
    let c = ChainedEvent {
        chain_partition: r.int("chain_partition")?,
        seq: r.long("seq")?,
        prev_hash: r.bytes("prev_hash")?.to_vec(),
        hash: r.bytes("hash")?.to_vec(),
        canonical_version: r.int("canonical_version")?,
        source_topic: r.string("source_topic")?,
        source_partition: r.int("source_partition")?,
        source_offset: r.long("source_offset")?,
        event: r.event()?,
    };
    r.finish()?;
    Ok(c)
}

fn err<T>(field: &'static str, problem: Problem) -> Result<T> {
    Err(DecodeError::Field { field, problem })
}

#[derive(Clone)]
pub(crate) struct Reader<'a> {
    rest: &'a [u8],
    max_len: usize,
    /// No varint so far was longer than its value needs (what every Avro encoder writes, and
    /// what the readers also accept); see [`Self::is_minimal`].
    minimal: bool,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(bytes: &'a [u8]) -> Self {
        Reader {
            rest: bytes,
            max_len: *MAX_LEN,
            minimal: true,
        }
    }

    /// Whether every varint read so far was the shortest for its value (an encoder's output,
    /// which an encoding of the decoded value gives back byte for byte).
    pub(crate) fn is_minimal(&self) -> bool {
        self.minimal
    }

    /// Marks the input as not an encoder's own output (an array in several blocks, say).
    pub(crate) fn not_minimal(&mut self) {
        self.minimal = false;
    }

    /// How many bytes are left to read.
    pub(crate) fn remaining(&self) -> usize {
        self.rest.len()
    }

    pub(crate) fn finish(&self) -> Result<()> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::Trailing(self.rest.len()))
        }
    }

    /// An unsigned varint, exactly as apache-avro's `decode_variable`.
    #[inline]
    fn varint(&mut self, field: &'static str) -> Result<u64> {
        // One-byte varints (small numbers, lengths < 64, branch indexes, enums) dominate.
        if let Some((&b, rest)) = self.rest.split_first() {
            if b < 0x80 {
                self.rest = rest;
                return Ok(u64::from(b));
            }
        }
        self.varint_slow(field)
    }

    #[cold]
    fn varint_slow(&mut self, field: &'static str) -> Result<u64> {
        let mut z = 0u64;
        for j in 0..10 {
            let Some(&b) = self.rest.get(j) else {
                return err(
                    field,
                    Problem::Truncated {
                        needed: j as u64 + 1,
                        left: self.rest.len(),
                    },
                );
            };
            // At j = 9 the shift is 63: only the lowest bit survives, as in apache-avro.
            z |= u64::from(b & 0x7f) << (7 * j);
            if b < 0x80 {
                self.rest = &self.rest[j + 1..];
                // The shortest form ends in a byte that adds bits: never 0, and at the 10th
                // byte exactly 1 (any other bit there is shifted out).
                if b == 0 || (j == 9 && b != 1) {
                    self.minimal = false;
                }
                return Ok(z);
            }
        }
        err(field, Problem::VarintOverflow)
    }

    /// Avro `long` (zig-zag).
    #[inline]
    pub(crate) fn long(&mut self, field: &'static str) -> Result<i64> {
        let z = self.varint(field)?;
        Ok(((z >> 1) as i64) ^ -((z & 1) as i64))
    }

    /// Avro `int`: a `long` that must fit `i32`.
    #[inline]
    pub(crate) fn int(&mut self, field: &'static str) -> Result<i32> {
        let n = self.long(field)?;
        i32::try_from(n).or_else(|_| err(field, Problem::IntOutOfRange(n)))
    }

    #[inline]
    pub(crate) fn boolean(&mut self, field: &'static str) -> Result<bool> {
        match self.rest.split_first() {
            Some((&b, rest)) if b <= 1 => {
                self.rest = rest;
                Ok(b == 1)
            }
            Some((&b, _)) => err(field, Problem::InvalidBoolean(b)),
            None => err(field, Problem::Truncated { needed: 1, left: 0 }),
        }
    }

    pub(crate) fn double(&mut self, field: &'static str) -> Result<f64> {
        match self.rest.split_first_chunk::<8>() {
            Some((b, rest)) => {
                self.rest = rest;
                Ok(f64::from_le_bytes(*b))
            }
            None => err(
                field,
                Problem::Truncated {
                    needed: 8,
                    left: self.rest.len(),
                },
            ),
        }
    }

    /// Avro `bytes`: the length is checked against what is left before anything is copied.
    #[inline]
    pub(crate) fn bytes(&mut self, field: &'static str) -> Result<&'a [u8]> {
        let n = self.long(field)?;
        if n < 0 {
            return err(field, Problem::NegativeLength(n));
        }
        let len = n as u64;
        if len > self.rest.len() as u64 {
            return err(
                field,
                Problem::Truncated {
                    needed: len,
                    left: self.rest.len(),
                },
            );
        }
        let len = len as usize;
        if len > self.max_len {
            return err(
                field,
                Problem::LengthOverLimit {
                    length: len as u64,
                    limit: self.max_len,
                },
            );
        }
        let (b, rest) = self.rest.split_at(len);
        self.rest = rest;
        Ok(b)
    }

    #[inline]
    pub(crate) fn string(&mut self, field: &'static str) -> Result<String> {
        self.str_ref(field).map(str::to_owned)
    }

    /// A `string` borrowed from the input (UTF-8 checked): what [`Self::string`] copies.
    #[inline]
    pub(crate) fn str_ref(&mut self, field: &'static str) -> Result<&'a str> {
        let b = self.bytes(field)?;
        std::str::from_utf8(b).or_else(|e| {
            err(
                field,
                Problem::InvalidUtf8 {
                    valid_up_to: e.valid_up_to(),
                },
            )
        })
    }

    /// An optional `string`, borrowed.
    #[inline]
    pub(crate) fn opt_str_ref(&mut self, field: &'static str) -> Result<Option<&'a str>> {
        Ok(if self.branch(field)? {
            Some(self.str_ref(field)?)
        } else {
            None
        })
    }

    /// The branch of a `["null", T]` union: `false` for null.
    #[inline]
    pub(crate) fn branch(&mut self, field: &'static str) -> Result<bool> {
        match self.long(field)? {
            0 => Ok(false),
            1 => Ok(true),
            i => err(field, Problem::UnionBranch(i)),
        }
    }

    #[inline]
    fn opt_string(&mut self, field: &'static str) -> Result<Option<String>> {
        Ok(if self.branch(field)? {
            Some(self.string(field)?)
        } else {
            None
        })
    }

    #[inline]
    pub(crate) fn opt_long(&mut self, field: &'static str) -> Result<Option<i64>> {
        Ok(if self.branch(field)? {
            Some(self.long(field)?)
        } else {
            None
        })
    }

    #[inline]
    pub(crate) fn opt_int(&mut self, field: &'static str) -> Result<Option<i32>> {
        Ok(if self.branch(field)? {
            Some(self.int(field)?)
        } else {
            None
        })
    }

    pub(crate) fn opt_bool(&mut self, field: &'static str) -> Result<Option<bool>> {
        Ok(if self.branch(field)? {
            Some(self.boolean(field)?)
        } else {
            None
        })
    }

    pub(crate) fn opt_double(&mut self, field: &'static str) -> Result<Option<f64>> {
        Ok(if self.branch(field)? {
            Some(self.double(field)?)
        } else {
            None
        })
    }

    /// An enum symbol's index, which must be below `symbols`.
    #[inline]
    pub(crate) fn enum_index(&mut self, field: &'static str, symbols: usize) -> Result<usize> {
        let i = self.long(field)?;
        match usize::try_from(i) {
            Ok(u) if u < symbols => Ok(u),
            _ => err(field, Problem::EnumIndex { index: i, symbols }),
        }
    }

    /// An array block header: the item count of the next block, 0 at the end. A negative count
    /// is followed by the block's size in bytes, which is read (it must be a valid varint, as
    /// apache-avro reads it) and ignored.
    #[inline]
    pub(crate) fn block(&mut self, field: &'static str) -> Result<u64> {
        let count = self.long(field)?;
        if count < 0 {
            self.long(field)?;
        }
        Ok(count.unsigned_abs())
    }

    /// An array: blocks of items read by `item` until the zero block. Every item takes at least
    /// one byte, so preallocation is bounded by what is left (a hostile count of 2^62 allocates
    /// nothing more than the input could fill, and fails when the input runs out).
    fn array<T>(
        &mut self,
        field: &'static str,
        mut item: impl FnMut(&mut Self) -> Result<T>,
    ) -> Result<Vec<T>> {
        let mut count = self.block(field)?;
        if count == 0 {
            return Ok(Vec::new());
        }
        let mut out = Vec::new();
        while count > 0 {
            out.reserve(count.min(self.rest.len() as u64).min(4096) as usize);
            for _ in 0..count {
                out.push(item(self)?);
            }
            count = self.block(field)?;
        }
        Ok(out)
    }

    fn strings(&mut self, field: &'static str) -> Result<Vec<String>> {
        self.array(field, |r| r.string(field))
    }

    /// `audit_event.v1.avsc`, field by field in schema order.
    fn event(&mut self) -> Result<AuditEvent> {
        Ok(AuditEvent {
            event_id: self.string("event_id")?,
            event_type: self.string("event_type")?,
            category: category(self.enum_index("category", 7)?),
            severity: severity(self.enum_index("severity", 6)?),
            outcome: outcome(self.enum_index("outcome", 5)?),
            event_time_us: self.long("event_time_us")?,
            receive_time_us: self.long("receive_time_us")?,
            source_component: self.string("source_component")?,
            ingress: Ingress {
                channel: channel(self.enum_index("ingress.channel", 3)?),
                topic: self.opt_string("ingress.topic")?,
                partition: self.opt_int("ingress.partition")?,
                offset: self.opt_long("ingress.offset")?,
                format: self.string("ingress.format")?,
            },
            actor: self.actor()?,
            tenant: self.tenant()?,
            target: if self.branch("target")? {
                Some(Target {
                    target_type: self.string("target.target_type")?,
                    id: self.string("target.id")?,
                    name: self.opt_string("target.name")?,
                })
            } else {
                None
            },
            action: Action {
                verb: self.string("action.verb")?,
                description: self.opt_string("action.description")?,
                status: self.opt_string("action.status")?,
                error: self.opt_string("action.error")?,
            },
            trace: TraceContext {
                trace_id: self.opt_string("trace.trace_id")?,
                span_id: self.opt_string("trace.span_id")?,
                parent_span_id: self.opt_string("trace.parent_span_id")?,
            },
            request_id: self.opt_string("request_id")?,
            parent_event_id: self.opt_string("parent_event_id")?,
            reason: self.opt_string("reason")?,
            data: EventData {
                payload_json: self.opt_string("data.payload_json")?,
                result_json: self.opt_string("data.result_json")?,
                metadata_json: self.opt_string("data.metadata_json")?,
                before_json: self.opt_string("data.before_json")?,
                after_json: self.opt_string("data.after_json")?,
                changes: self.strings("data.changes")?,
            },
            ai: if self.branch("ai")? {
                Some(AiContext {
                    agent_type: self.opt_string("ai.agent_type")?,
                    model: self.opt_string("ai.model")?,
                    prompt_tokens: self.opt_long("ai.prompt_tokens")?,
                    completion_tokens: self.opt_long("ai.completion_tokens")?,
                    confidence: self.opt_double("ai.confidence")?,
                    reasoning: self.opt_string("ai.reasoning")?,
                    tools: self.strings("ai.tools")?,
                    execution_time_ms: self.opt_long("ai.execution_time_ms")?,
                })
            } else {
                None
            },
            compliance: if self.branch("compliance")? {
                Some(ComplianceContext {
                    regulations: self.strings("compliance.regulations")?,
                    traffic_light: self.opt_string("compliance.traffic_light")?,
                    issues_found: self.opt_int("compliance.issues_found")?,
                    critical_issues: self.opt_int("compliance.critical_issues")?,
                    findings_json: self.opt_string("compliance.findings_json")?,
                })
            } else {
                None
            },
            security: if self.branch("security")? {
                Some(SecurityContext {
                    data_classification: self.opt_string("security.data_classification")?,
                    encryption_used: self.opt_bool("security.encryption_used")?,
                    pii_detected: self.opt_bool("security.pii_detected")?,
                    retention_days: self.opt_int("security.retention_days")?,
                })
            } else {
                None
            },
            performance: if self.branch("performance")? {
                Some(Performance {
                    processing_time_ms: self.opt_long("performance.processing_time_ms")?,
                    response_time_ms: self.opt_long("performance.response_time_ms")?,
                    db_query_time_ms: self.opt_long("performance.db_query_time_ms")?,
                    external_api_time_ms: self.opt_long("performance.external_api_time_ms")?,
                    memory_used_mb: self.opt_long("performance.memory_used_mb")?,
                    resource_count: self.opt_long("performance.resource_count")?,
                })
            } else {
                None
            },
            attributes: self.attributes()?,
        })
    }

    /// The event's `actor` field.
    pub(crate) fn actor(&mut self) -> Result<Actor> {
        Ok(Actor {
            actor_type: actor_type(self.enum_index("actor.actor_type", 4)?),
            id: self.string("actor.id")?,
            name: self.opt_string("actor.name")?,
            email: self.opt_string("actor.email")?,
            ip: self.opt_string("actor.ip")?,
            user_agent: self.opt_string("actor.user_agent")?,
            session_id: self.opt_string("actor.session_id")?,
            roles: self.strings("actor.roles")?,
        })
    }

    /// The event's `tenant` field.
    pub(crate) fn tenant(&mut self) -> Result<TenantContext> {
        Ok(TenantContext {
            tenant_id: self.opt_string("tenant.tenant_id")?,
            team_id: self.opt_string("tenant.team_id")?,
            team_name: self.opt_string("tenant.team_name")?,
            project_id: self.opt_string("tenant.project_id")?,
            business_unit: self.opt_string("tenant.business_unit")?,
            cost_center: self.opt_string("tenant.cost_center")?,
            enrichment: EnrichmentStatus {
                enriched: self.boolean("tenant.enrichment.enriched")?,
                user_found: self.boolean("tenant.enrichment.user_found")?,
                team_found: self.boolean("tenant.enrichment.team_found")?,
            },
        })
    }

    /// The event's `attributes` field (its last).
    pub(crate) fn attributes(&mut self) -> Result<Vec<KeyValue>> {
        self.array("attributes", |r| {
            Ok(KeyValue {
                key: r.string("attributes.key")?,
                value: r.string("attributes.value")?,
            })
        })
    }
}

// Symbol index → variant, spelled out per symbol in schema order (the inverse of
// `crate::canonical`'s `*_index`); callers have checked the index against the symbol count.

pub(crate) fn category(i: usize) -> EventCategory {
    match i {
        0 => EventCategory::UserInteraction,
        1 => EventCategory::SystemProcessing,
        2 => EventCategory::Governance,
        3 => EventCategory::Infrastructure,
        4 => EventCategory::Security,
        5 => EventCategory::Telemetry,
        _ => EventCategory::Other,
    }
}

pub(crate) fn severity(i: usize) -> Severity {
    match i {
        0 => Severity::Debug,
        1 => Severity::Info,
        2 => Severity::Notice,
        3 => Severity::Warning,
        4 => Severity::Error,
        _ => Severity::Critical,
    }
}

pub(crate) fn outcome(i: usize) -> Outcome {
    match i {
        0 => Outcome::Success,
        1 => Outcome::Failure,
        2 => Outcome::Denied,
        3 => Outcome::Pending,
        _ => Outcome::Unknown,
    }
}

pub(crate) fn channel(i: usize) -> IngressChannel {
    match i {
        0 => IngressChannel::Kafka,
        1 => IngressChannel::Http,
        _ => IngressChannel::Otlp,
    }
}

pub(crate) fn actor_type(i: usize) -> ActorType {
    match i {
        0 => ActorType::User,
        1 => ActorType::Service,
        2 => ActorType::System,
        _ => ActorType::AiAgent,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::avro::{decode_datum_avro, encode_chained_datum};
    use crate::canonical::tests::arb_stretched_event;
    use crate::canonical::{encode_event, long};
    use crate::framing::{self, CatalogIdResolver};
    use crate::testing::{arb_audit_event, arb_chained_event, sample_event};
    use apache_avro::reader::datum::GenericDatumReader;
    use apache_avro::types::Value;
    use proptest::collection::vec;
    use proptest::prelude::*;
    use proptest::sample::Index;

    fn enc(e: &AuditEvent) -> Vec<u8> {
        let mut out = Vec::new();
        encode_event(e, &mut out);
        out
    }

    fn enc_chained(c: &ChainedEvent) -> Vec<u8> {
        encode_chained_datum(c).expect("apache-avro encodes the chained record")
    }

    fn hand<T>(r: Result<T>, record: &'static str) -> std::result::Result<T, SchemaError> {
        r.map_err(|e| e.into_schema_error(record, "test".to_owned()))
    }

    /// Both decoders agree: both fail with the same error code, or both succeed with the same
    /// value. Values are compared by their encodings (`same`), bit for bit, so that a NaN
    /// confidence compares equal to itself.
    fn agree<T: std::fmt::Debug>(
        hand: std::result::Result<T, SchemaError>,
        avro: std::result::Result<T, SchemaError>,
        same: impl Fn(&T, &T) -> bool,
    ) -> std::result::Result<(), TestCaseError> {
        match (hand, avro) {
            (Ok(h), Ok(a)) => prop_assert!(same(&h, &a), "values differ:\n{h:?}\n{a:?}"),
            (Err(h), Err(a)) => prop_assert_eq!(h.code(), a.code(), "hand: {}; avro: {}", h, a),
            (h, a) => prop_assert!(
                false,
                "hand {:?} but apache-avro {:?}",
                h.map(|_| "Ok").map_err(|e| e.to_string()),
                a.map(|_| "Ok").map_err(|e| e.to_string())
            ),
        }
        Ok(())
    }

    fn agree_event(bytes: &[u8]) -> std::result::Result<(), TestCaseError> {
        agree(
            hand(decode_event(bytes), "AuditEvent"),
            decode_datum_avro::<AuditEvent>(bytes),
            |a, b| enc(a) == enc(b),
        )
    }

    fn agree_chained(bytes: &[u8]) -> std::result::Result<(), TestCaseError> {
        agree(
            hand(decode_chained(bytes), "ChainedEvent"),
            decode_datum_avro::<ChainedEvent>(bytes),
            |a, b| enc_chained(a) == enc_chained(b),
        )
    }

    // ---- mutations -------------------------------------------------------------------------

    /// Varints a fuzzer would not find by flipping bytes: huge and negative lengths and counts,
    /// values just outside `i32`, and the 10-byte edge cases of apache-avro's varint reader.
    fn hostile_varint() -> impl Strategy<Value = Vec<u8>> {
        let zz = |n: i64| {
            let mut v = Vec::new();
            long(&mut v, n);
            v
        };
        prop_oneof![
            prop::sample::select(vec![
                1i64 << 62,
                -(1i64 << 62),
                i64::MAX,
                i64::MIN,
                -1,
                -2,
                2,
                3,
                64,
                1 << 20,
                i64::from(i32::MAX) + 1,
                i64::from(i32::MIN) - 1,
                i64::from(i32::MAX),
                i64::from(i32::MIN),
            ])
            .prop_map(zz),
            any::<i64>().prop_map(zz),
            Just(vec![0xff; 10]),
            Just([&[0xff; 9][..], &[0x7f]].concat()),
            Just([&[0x80; 9][..], &[0x01]].concat()),
            Just([&[0x80; 9][..], &[0x02]].concat()),
            Just([&[0xfe; 9][..], &[0x03]].concat()),
            Just(vec![0x80; 9]),
        ]
    }

    #[derive(Debug, Clone)]
    pub(crate) enum Mutation {
        Set(Index, u8),
        Xor(Index, u8),
        Cut(Index),
        Insert(Index, Vec<u8>),
        /// Replace `n` bytes at the index with a hostile varint.
        Splice(Index, usize, Vec<u8>),
        Append(Vec<u8>),
    }

    pub(crate) fn mutation() -> impl Strategy<Value = Mutation> {
        prop_oneof![
            (any::<Index>(), any::<u8>()).prop_map(|(i, b)| Mutation::Set(i, b)),
            (any::<Index>(), 1u8..).prop_map(|(i, b)| Mutation::Xor(i, b)),
            any::<Index>().prop_map(Mutation::Cut),
            (any::<Index>(), vec(any::<u8>(), 1..4)).prop_map(|(i, b)| Mutation::Insert(i, b)),
            (any::<Index>(), 0usize..3, hostile_varint())
                .prop_map(|(i, n, v)| Mutation::Splice(i, n, v)),
            vec(any::<u8>(), 1..3).prop_map(Mutation::Append),
        ]
        .boxed()
    }

    pub(crate) fn mutate(mut b: Vec<u8>, ms: &[Mutation]) -> Vec<u8> {
        for m in ms {
            if b.is_empty() {
                break;
            }
            match m {
                Mutation::Set(i, v) => {
                    let i = i.index(b.len());
                    b[i] = *v;
                }
                Mutation::Xor(i, v) => {
                    let i = i.index(b.len());
                    b[i] ^= *v;
                }
                Mutation::Cut(i) => b.truncate(i.index(b.len())),
                Mutation::Insert(i, v) => {
                    let i = i.index(b.len() + 1);
                    b.splice(i..i, v.iter().copied());
                }
                Mutation::Splice(i, n, v) => {
                    let i = i.index(b.len());
                    let end = (i + n).min(b.len());
                    b.splice(i..end, v.iter().copied());
                }
                Mutation::Append(v) => b.extend_from_slice(v),
            }
        }
        b
    }

    // ---- re-blocking: the same values with arrays in arbitrary blocks --------------------------

    /// Writes an apache-avro `Value` (as its reader returns it for these schemas) with every
    /// array split into blocks chosen by `rng`, half of them with a negative count and the
    /// block's byte size, as the Avro spec allows and apache-avro reads.
    fn write_reblocked(v: &Value, rng: &mut u64, out: &mut Vec<u8>) {
        // xorshift64: deterministic per proptest seed.
        fn next(rng: &mut u64) -> u64 {
            *rng ^= *rng << 13;
            *rng ^= *rng >> 7;
            *rng ^= *rng << 17;
            *rng
        }
        match v {
            Value::Null => {}
            Value::Boolean(b) => out.push(u8::from(*b)),
            Value::Int(n) => long(out, i64::from(*n)),
            Value::Long(n) | Value::TimestampMicros(n) => long(out, *n),
            Value::Double(d) => out.extend_from_slice(&d.to_le_bytes()),
            Value::String(s) => crate::canonical::bytes(out, s.as_bytes()),
            Value::Bytes(b) => crate::canonical::bytes(out, b),
            Value::Enum(i, _) => long(out, i64::from(*i)),
            Value::Union(i, v) => {
                long(out, i64::from(*i));
                write_reblocked(v, rng, out);
            }
            Value::Record(fields) => {
                for (_, v) in fields {
                    write_reblocked(v, rng, out);
                }
            }
            Value::Array(items) => {
                let mut at = 0;
                while at < items.len() {
                    let k = 1 + (next(rng) as usize) % (items.len() - at);
                    let negative = next(rng) & 1 == 1;
                    let mut block = Vec::new();
                    for item in &items[at..at + k] {
                        write_reblocked(item, rng, &mut block);
                    }
                    if negative {
                        long(out, -(k as i64));
                        long(out, block.len() as i64);
                    } else {
                        long(out, k as i64);
                    }
                    out.extend_from_slice(&block);
                    at += k;
                }
                out.push(0);
            }
            other => panic!("no such value in these schemas: {other:?}"),
        }
    }

    pub(crate) fn reblock(kind: RecordKind, bytes: &[u8], seed: u64) -> Vec<u8> {
        let schema = &avro::current_schema(kind).expect("catalog").schema;
        let value = GenericDatumReader::builder(schema)
            .build()
            .expect("reader")
            .read_value(&mut &bytes[..])
            .expect("apache-avro reads its own encoding");
        let mut out = Vec::new();
        write_reblocked(&value, &mut (seed | 1), &mut out);
        out
    }

    // ---- tests -----------------------------------------------------------------------------

    /// If this fails, a schema changed shape: update this decoder field by field (and
    /// `crate::canonical`'s encoder and constants) before it is used again.
    #[test]
    fn the_guard_fingerprints_are_the_catalogs() {
        let c = avro::catalog().expect("catalog");
        let audit = c
            .by_version(RecordKind::AuditEvent, CANONICAL_VERSION)
            .expect("audit v1");
        let chained = c.current(RecordKind::ChainedEvent).expect("chained");
        assert_eq!(audit.fingerprint, AUDIT_EVENT_V1_FINGERPRINT);
        assert_eq!(chained.fingerprint, CHAINED_EVENT_V1_FINGERPRINT);
        assert!(applies() && chained_applies());
    }

    #[test]
    fn sample_event_round_trips() {
        let e = sample_event();
        let b = enc(&e);
        assert_eq!(decode_event(&b).expect("decodes"), e);
        assert_eq!(decode_datum_avro::<AuditEvent>(&b).expect("apache-avro"), e);
    }

    /// Every single-byte substitution of a whole event's encoding: each union branch, enum
    /// index, boolean, length and varint byte takes every value once.
    #[test]
    fn every_single_byte_substitution_agrees_with_apache_avro() {
        let b = enc(&sample_event());
        for i in 0..b.len() {
            for v in 0..=255u8 {
                let mut m = b.clone();
                m[i] = v;
                if let Err(e) = agree_event(&m) {
                    panic!("byte {i} set to {v:#04x}: {e}");
                }
            }
        }
    }

    /// Where `actor.roles` starts in the encoding of `e` (which has no roles).
    fn roles_at(e: &AuditEvent) -> usize {
        let mut with = e.clone();
        with.actor.roles = vec!["x".to_owned()];
        let (a, b) = (enc(e), enc(&with));
        a.iter().zip(&b).take_while(|(x, y)| x == y).count()
    }

    #[test]
    fn hostile_lengths_and_counts_fail_without_allocating_them() {
        let mut e = sample_event();
        e.actor.roles.clear();
        let b = enc(&e);
        let at = roles_at(&e);
        assert_eq!(b[at], 0, "the empty roles array is one zero block");
        for n in [1i64 << 62, i64::MAX, i64::MIN, -(1i64 << 62), -1] {
            // As a string length (event_id's, the first field).
            let mut m = Vec::new();
            long(&mut m, n);
            m.extend_from_slice(&b[1..]);
            let err = decode_event(&m).expect_err("hostile length");
            assert!(
                matches!(
                    err,
                    DecodeError::Field {
                        field: "event_id",
                        ..
                    }
                ),
                "{n}: {err}"
            );
            agree_event(&m).expect("agrees");
        }
        for n in [1i64 << 62, i64::MAX, i64::MIN, -(1i64 << 62)] {
            // As an array count (a negative one followed by a byte size of 1): the items run
            // into the rest of the event and then past its end.
            let mut m = b[..at].to_vec();
            long(&mut m, n);
            if n < 0 {
                long(&mut m, 1);
            }
            m.extend_from_slice(&b[at + 1..]);
            let err = decode_event(&m).expect_err("hostile count");
            assert!(err.to_string().contains("actor.roles"), "{n}: {err}");
            agree_event(&m).expect("agrees");
        }
    }

    #[test]
    fn errors_name_the_field_and_the_problem() {
        let b = enc(&sample_event());
        let err = decode_event(&b[..b.len() - 1]).expect_err("cut");
        assert!(err.to_string().starts_with("field attributes"), "{err}");
        let mut m = b.clone();
        m.push(0);
        assert_eq!(decode_event(&m), Err(DecodeError::Trailing(1)));
        // event_id "…" then event_type with a lone continuation byte.
        let mut m = Vec::new();
        long(&mut m, 1);
        m.push(b'a');
        long(&mut m, 1);
        m.push(0x80);
        let err = decode_event(&m).expect_err("not UTF-8");
        assert_eq!(
            err.to_string(),
            "field event_type: string is not UTF-8 (valid up to byte 0)"
        );
    }

    /// The decoder is what the framings and `avro::decode_*_datum` use for the canonical
    /// schemas: its field-naming errors come back through each of them (apache-avro's do not
    /// name the field).
    #[test]
    fn framings_and_datum_helpers_use_the_hand_decoder() {
        let e = sample_event();
        let mut so = framing::encode_single_object_event(&e).expect("so");
        let ids = CatalogIdResolver::new().expect("ids");
        let mut cf = framing::encode_confluent_event(&e, 1).expect("cf");
        let c = ChainedEvent {
            chain_partition: 3,
            seq: 7,
            prev_hash: vec![1; 32],
            hash: vec![2; 32],
            canonical_version: CANONICAL_VERSION,
            source_topic: "t".to_owned(),
            source_partition: 3,
            source_offset: 6,
            event: e.clone(),
        };
        let mut cso = framing::encode_single_object_chained(&c).expect("chained so");
        let mut datum = avro::encode_event_datum(&e).expect("datum");
        // Cut inside the last field: the error names it.
        for b in [&mut so, &mut cf, &mut cso, &mut datum] {
            b.pop();
        }
        let errs = [
            framing::decode_event(&so, None).expect_err("so"),
            framing::decode_event(&cf, Some(&ids)).expect_err("cf"),
            framing::decode_chained(&cso, None).expect_err("chained"),
            avro::decode_event_datum(&datum).expect_err("datum"),
        ];
        for err in errs {
            assert_eq!(err.code(), "decode");
            assert!(err.to_string().contains("field attributes"), "{err}");
        }
        assert_eq!(
            framing::decode_event(&framing::encode_single_object_event(&e).unwrap(), None)
                .expect("whole"),
            e
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// decode(encode(e)) == e, and apache-avro reads the same value.
        #[test]
        fn decodes_what_the_encoder_writes(e in arb_audit_event()) {
            let b = enc(&e);
            let d = decode_event(&b).expect("decodes");
            prop_assert_eq!(enc(&d), b.clone());
            agree_event(&b)?;
        }

        #[test]
        fn mutated_events_agree_with_apache_avro(
            e in arb_audit_event().boxed(),
            ms in vec(mutation(), 1..4),
        ) {
            agree_event(&mutate(enc(&e), &ms))?;
        }

        #[test]
        fn chained_events_round_trip_and_agree(c in arb_chained_event()) {
            let b = enc_chained(&c);
            let d = decode_chained(&b).expect("decodes");
            prop_assert_eq!(enc_chained(&d), b.clone());
            agree_chained(&b)?;
        }

        #[test]
        fn mutated_chained_events_agree_with_apache_avro(
            // Boxed: the unboxed value trees overflow a test thread's stack in debug.
            c in arb_chained_event().boxed(),
            ms in vec(mutation(), 1..4),
        ) {
            agree_chained(&mutate(enc_chained(&c), &ms))?;
        }
    }

    proptest! {
        // Fewer cases: each is large (hundreds of array items, long strings).
        #![proptest_config(ProptestConfig::with_cases(128))]

        /// Long arrays and strings, extreme numbers, NaN confidences; arrays in arbitrary
        /// blocks (negative counts with byte sizes included) decode to the same event.
        #[test]
        fn stretched_and_reblocked_events_decode_like_apache_avro(
            e in arb_stretched_event(),
            seed in any::<u64>(),
        ) {
            let b = enc(&e);
            prop_assert_eq!(enc(&decode_event(&b).expect("decodes")), b.clone());
            agree_event(&b)?;
            let r = reblock(RecordKind::AuditEvent, &b, seed);
            prop_assert_eq!(enc(&decode_event(&r).expect("reblocked decodes")), b);
            agree_event(&r)?;
        }

        #[test]
        fn mutated_stretched_and_reblocked_events_agree(
            e in arb_stretched_event(),
            seed in any::<u64>(),
            ms in vec(mutation(), 1..4),
        ) {
            let r = reblock(RecordKind::AuditEvent, &enc(&e), seed);
            agree_event(&mutate(r, &ms))?;
        }

        #[test]
        fn reblocked_chained_events_agree(
            // Boxed: the unboxed value trees overflow a test thread's stack in debug.
            c in arb_chained_event().boxed(),
            seed in any::<u64>(),
            ms in vec(mutation(), 0..3),
        ) {
            let b = enc_chained(&c);
            let r = reblock(RecordKind::ChainedEvent, &b, seed);
            prop_assert_eq!(enc_chained(&decode_chained(&r).expect("decodes")), b);
            agree_chained(&mutate(r, &ms))?;
        }
    }
}
