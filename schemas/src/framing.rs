//! The two Avro framings of the design doc, and detection of what a raw record holds.
//!
//! - Avro single-object encoding: `C3 01`, the writer schema's 8-byte CRC-64-AVRO (Rabin)
//!   fingerprint in little-endian order, then the datum. Used without a schema registry; the
//!   fingerprint is resolved against the compiled-in catalog.
//! - Confluent wire format: `00`, the 4-byte big-endian schema id, then the datum. Used with a
//!   schema registry; ids are resolved through a [`SchemaIdResolver`] (the registry client
//!   implements it; [`CatalogIdResolver`] maps ids onto the catalog for tests and demos).
//!
//! Decoders accept both, so a topic can switch framing without a flag day.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use apache_avro::Schema;

use crate::avro::{self, catalog, AvroRecord, RecordKind};
use crate::checkpoint_record::Checkpoint;
use crate::error::SchemaError;
use crate::event::{AuditEvent, ChainedEvent};

pub const SINGLE_OBJECT_MAGIC: [u8; 2] = [0xC3, 0x01];
pub const SINGLE_OBJECT_HEADER_LEN: usize = 10;
pub const CONFLUENT_MAGIC: u8 = 0x00;
pub const CONFLUENT_HEADER_LEN: usize = 5;

/// What a raw record looks like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// First non-whitespace byte is `{` (after an optional UTF-8 byte order mark).
    Json,
    Confluent {
        schema_id: u32,
    },
    SingleObject {
        fingerprint: u64,
    },
    Unknown,
}

impl Framing {
    /// The value for `Ingress::format`.
    pub fn format_name(&self) -> &'static str {
        match self {
            Framing::Json => "json",
            Framing::Confluent { .. } => "avro-confluent",
            Framing::SingleObject { .. } => "avro-single-object",
            Framing::Unknown => "unknown",
        }
    }
}

/// Classifies raw bytes. Cheap: looks at the header only.
pub fn detect(bytes: &[u8]) -> Framing {
    if bytes.len() >= SINGLE_OBJECT_HEADER_LEN && bytes[..2] == SINGLE_OBJECT_MAGIC {
        let mut fp = [0u8; 8];
        fp.copy_from_slice(&bytes[2..SINGLE_OBJECT_HEADER_LEN]);
        return Framing::SingleObject {
            fingerprint: u64::from_le_bytes(fp),
        };
    }
    if bytes.len() >= CONFLUENT_HEADER_LEN && bytes[0] == CONFLUENT_MAGIC {
        let mut id = [0u8; 4];
        id.copy_from_slice(&bytes[1..CONFLUENT_HEADER_LEN]);
        return Framing::Confluent {
            schema_id: u32::from_be_bytes(id),
        };
    }
    let body = bytes.strip_prefix(&[0xEF, 0xBB, 0xBF]).unwrap_or(bytes);
    match body
        .iter()
        .find(|b| !matches!(b, b' ' | b'\t' | b'\r' | b'\n'))
    {
        Some(b'{') => Framing::Json,
        _ => Framing::Unknown,
    }
}

/// Resolves Confluent schema ids to writer schemas. The schema registry client implements this
/// (and should cache: it is called once per message).
pub trait SchemaIdResolver: Send + Sync {
    fn schema_for_id(&self, id: u32) -> Result<Arc<Schema>, SchemaError>;
}

/// A fixed id → schema table over the compiled-in catalog, for tests, the demo and deployments
/// without a registry that still want Confluent framing.
#[derive(Debug, Clone)]
pub struct CatalogIdResolver {
    ids: HashMap<u32, Arc<Schema>>,
}

impl CatalogIdResolver {
    /// Default ids: 1 = AuditEvent, 2 = ChainedEvent, 3 = Checkpoint (current versions).
    pub fn new() -> Result<Self, SchemaError> {
        let mut ids = HashMap::new();
        for (id, kind) in (1u32..).zip(RecordKind::ALL) {
            ids.insert(id, Arc::clone(&avro::current_schema(kind)?.schema));
        }
        Ok(CatalogIdResolver { ids })
    }

    /// An empty table.
    pub fn empty() -> Self {
        CatalogIdResolver {
            ids: HashMap::new(),
        }
    }

    /// Maps `id` to `schema` (replacing a previous mapping).
    pub fn with(mut self, id: u32, schema: Arc<Schema>) -> Self {
        self.ids.insert(id, schema);
        self
    }

    /// The id mapped to the current schema of `kind`, if any (lowest id wins).
    pub fn id_of(&self, kind: RecordKind) -> Option<u32> {
        let current = avro::current_schema(kind).ok()?;
        self.ids
            .iter()
            .filter(|(_, s)| Arc::ptr_eq(s, &current.schema))
            .map(|(id, _)| *id)
            .min()
    }
}

impl SchemaIdResolver for CatalogIdResolver {
    fn schema_for_id(&self, id: u32) -> Result<Arc<Schema>, SchemaError> {
        self.ids
            .get(&id)
            .cloned()
            .ok_or_else(|| SchemaError::UnknownSchemaId {
                id,
                reason: "not in the static id table".to_owned(),
            })
    }
}

// ---- generic encoders / decoders ---------------------------------------------------------------

/// Single-object encoding of `value` under the current schema of its kind.
pub fn encode_single_object<T: AvroRecord>(value: &T) -> Result<Vec<u8>, SchemaError> {
    let entry = avro::current_schema(T::KIND)?;
    let mut out = Vec::with_capacity(512);
    out.extend_from_slice(&SINGLE_OBJECT_MAGIC);
    out.extend_from_slice(&entry.fingerprint.to_le_bytes());
    avro::encode_datum_into(value, &mut out)?;
    Ok(out)
}

/// Confluent wire format of `value` under the current schema of its kind. `schema_id` must be
/// the registry id of that schema (the registry client registers/looks it up).
pub fn encode_confluent<T: AvroRecord>(value: &T, schema_id: u32) -> Result<Vec<u8>, SchemaError> {
    let mut out = Vec::with_capacity(512);
    out.push(CONFLUENT_MAGIC);
    out.extend_from_slice(&schema_id.to_be_bytes());
    avro::encode_datum_into(value, &mut out)?;
    Ok(out)
}

/// Decodes a single-object encoded record, resolving the fingerprint against the catalog.
pub fn decode_single_object<T: AvroRecord>(bytes: &[u8]) -> Result<T, SchemaError> {
    let Framing::SingleObject { fingerprint } = detect(bytes) else {
        return Err(SchemaError::Framing {
            framing: "single-object",
            reason: header_problem(bytes, &SINGLE_OBJECT_MAGIC, SINGLE_OBJECT_HEADER_LEN),
        });
    };
    let entry = catalog()?
        .by_fingerprint(fingerprint)
        .ok_or(SchemaError::UnknownFingerprint {
            record: T::KIND.name(),
            fingerprint,
        })?;
    if entry.kind != T::KIND {
        return Err(SchemaError::WrongRecordKind {
            fingerprint,
            expected: T::KIND.name(),
            found: entry.kind.name(),
        });
    }
    avro::decode_datum_with_writer(&bytes[SINGLE_OBJECT_HEADER_LEN..], &entry.schema, &|| {
        format!(
            "fingerprint {fingerprint:#018x} (version {})",
            entry.version
        )
    })
}

/// Decodes a Confluent-framed record, resolving the schema id through `resolver`.
pub fn decode_confluent<T: AvroRecord>(
    bytes: &[u8],
    resolver: &dyn SchemaIdResolver,
) -> Result<T, SchemaError> {
    let Framing::Confluent { schema_id } = detect(bytes) else {
        return Err(SchemaError::Framing {
            framing: "confluent",
            reason: header_problem(bytes, &[CONFLUENT_MAGIC], CONFLUENT_HEADER_LEN),
        });
    };
    let writer = resolver.schema_for_id(schema_id)?;
    avro::decode_datum_with_writer(&bytes[CONFLUENT_HEADER_LEN..], &writer, &|| {
        format!("schema id {schema_id}")
    })
}

/// The datum of a record framed under the current schema of `kind`: what a hand decoder reads
/// as it is, without resolving. `None` for any other schema, an unknown id or fingerprint, or a
/// header problem; [`decode`] then reads the record (or says what is wrong with it).
pub fn current_datum<'b>(
    bytes: &'b [u8],
    kind: RecordKind,
    resolver: Option<&dyn SchemaIdResolver>,
) -> Option<&'b [u8]> {
    let current = avro::current_schema(kind).ok()?;
    match detect(bytes) {
        Framing::SingleObject { fingerprint } if fingerprint == current.fingerprint => {
            bytes.get(SINGLE_OBJECT_HEADER_LEN..)
        }
        Framing::Confluent { schema_id } => {
            let writer = resolver?.schema_for_id(schema_id).ok()?;
            (Arc::ptr_eq(&writer, &current.schema) || *writer == *current.schema)
                .then(|| &bytes[CONFLUENT_HEADER_LEN..])
        }
        _ => None,
    }
}

/// Decodes either framing. `resolver` is needed only for Confluent-framed input.
pub fn decode<T: AvroRecord>(
    bytes: &[u8],
    resolver: Option<&dyn SchemaIdResolver>,
) -> Result<T, SchemaError> {
    match detect(bytes) {
        Framing::SingleObject { .. } => decode_single_object(bytes),
        Framing::Confluent { schema_id } => match resolver {
            Some(r) => decode_confluent(bytes, r),
            None => Err(SchemaError::NoResolver { id: schema_id }),
        },
        Framing::Json => Err(SchemaError::Framing {
            framing: "avro",
            reason: "the record is JSON, not Avro".to_owned(),
        }),
        Framing::Unknown => Err(SchemaError::Framing {
            framing: "avro",
            reason: format!(
                "neither single-object (C3 01) nor Confluent (00) header; first bytes {}",
                HexPrefix(bytes)
            ),
        }),
    }
}

fn header_problem(bytes: &[u8], magic: &[u8], header_len: usize) -> String {
    if bytes.len() >= magic.len() && bytes.starts_with(magic) {
        format!(
            "{} bytes, shorter than the {header_len}-byte header",
            bytes.len()
        )
    } else {
        format!(
            "expected magic {}, got {}",
            HexPrefix(magic),
            HexPrefix(bytes)
        )
    }
}

/// Hex of at most the first 10 bytes, for error messages.
struct HexPrefix<'a>(&'a [u8]);

impl fmt::Display for HexPrefix<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("(empty)");
        }
        let n = self.0.len().min(10);
        f.write_str(&hex::encode(&self.0[..n]))?;
        if self.0.len() > n {
            f.write_str("…")?;
        }
        Ok(())
    }
}

// ---- typed helpers -----------------------------------------------------------------------------

/// The single-object encoding of `event` under the current `AuditEvent` schema (what ingest
/// and enrich write). That schema is the canonical one, so its datum is the event's canonical
/// bytes: written by the hand encoder ([`crate::canonical`]) when it applies, by apache-avro
/// otherwise (the same bytes: property test `event_with_the_hand_encoder_equals_apache_avro`).
pub fn encode_single_object_event(event: &AuditEvent) -> Result<Vec<u8>, SchemaError> {
    let entry = avro::current_schema(RecordKind::AuditEvent)?;
    if entry.version != avro::CANONICAL_VERSION || !crate::canonical::applies() {
        return encode_single_object(event);
    }
    let mut out = Vec::with_capacity(1024);
    out.extend_from_slice(&SINGLE_OBJECT_MAGIC);
    out.extend_from_slice(&entry.fingerprint.to_le_bytes());
    crate::canonical::encode_event(event, &mut out);
    Ok(out)
}

pub fn encode_single_object_chained(chained: &ChainedEvent) -> Result<Vec<u8>, SchemaError> {
    encode_single_object(chained)
}

/// [`encode_single_object_chained`] from the event's canonical bytes, already computed by the
/// caller (the chainer hashes them), instead of encoding the event a second time.
///
/// `canonical` must be the canonical bytes of `chained.event` under
/// `chained.canonical_version` (`avro::canonical_bytes_version_into`). When that version is the
/// current one and the current `ChainedEvent` schema is the one the splice was written for (its
/// leading fields, then an `event` field holding the canonical `AuditEvent` schema: the same
/// fact `raw_segment` reads in reverse), the datum is the leading fields followed by exactly
/// those bytes. Otherwise the record is encoded by apache-avro, as
/// [`encode_single_object_chained`] does.
pub fn encode_single_object_chained_with_canonical(
    chained: &ChainedEvent,
    canonical: &[u8],
) -> Result<Vec<u8>, SchemaError> {
    let entry = avro::current_schema(RecordKind::ChainedEvent)?;
    if chained.canonical_version != avro::CANONICAL_VERSION || !splice_applies() {
        return encode_single_object_chained(chained);
    }
    let mut out = Vec::with_capacity(
        SINGLE_OBJECT_HEADER_LEN + 96 + chained.source_topic.len() + canonical.len(),
    );
    out.extend_from_slice(&SINGLE_OBJECT_MAGIC);
    out.extend_from_slice(&entry.fingerprint.to_le_bytes());
    chained_leading_fields(chained, &mut out);
    out.extend_from_slice(canonical);
    Ok(out)
}

/// Appends the Avro datum of `chained` under the current `ChainedEvent` schema to `out`: the
/// bytes apache-avro writes for it (`avro::encode_datum_into`), by the splice of
/// [`encode_single_object_chained_with_canonical`] and the hand encoder of the canonical event
/// when both apply (several times faster; what the archive's segment builder writes per record).
pub fn chained_datum_into(chained: &ChainedEvent, out: &mut Vec<u8>) -> Result<(), SchemaError> {
    if chained.canonical_version != avro::CANONICAL_VERSION
        || !splice_applies()
        || !crate::canonical::applies()
    {
        return avro::encode_datum_into(chained, out);
    }
    chained_leading_fields(chained, out);
    crate::canonical::encode_event(&chained.event, out);
    Ok(())
}

/// The fields of `chained_event.v1.avsc` before `event`, in schema order (only under
/// [`splice_applies`]).
fn chained_leading_fields(chained: &ChainedEvent, out: &mut Vec<u8>) {
    let long = crate::canonical::long;
    let bytes = crate::canonical::bytes;
    long(out, i64::from(chained.chain_partition));
    long(out, chained.seq);
    bytes(out, &chained.prev_hash);
    bytes(out, &chained.hash);
    long(out, i64::from(chained.canonical_version));
    bytes(out, chained.source_topic.as_bytes());
    long(out, i64::from(chained.source_partition));
    long(out, chained.source_offset);
}

/// Whether the current `ChainedEvent` schema is the one
/// [`encode_single_object_chained_with_canonical`] splices (by fingerprint: `crate::canonical`'s
/// tests fail when it changes), and its `event` field is the canonical `AuditEvent` schema.
/// Checked once.
fn splice_applies() -> bool {
    static APPLIES: std::sync::LazyLock<bool> = std::sync::LazyLock::new(|| {
        let (Ok(chained), Ok(audit)) = (
            avro::current_schema(RecordKind::ChainedEvent),
            avro::current_schema(RecordKind::AuditEvent),
        ) else {
            return false;
        };
        if chained.fingerprint != crate::canonical::CHAINED_EVENT_V1_FINGERPRINT
            || audit.version != avro::CANONICAL_VERSION
        {
            return false;
        }
        let Schema::Record(r) = &*chained.schema else {
            return false;
        };
        r.fields
            .last()
            .is_some_and(|f| f.name == "event" && f.schema == *audit.schema)
    });
    *APPLIES
}

pub fn encode_single_object_checkpoint(checkpoint: &Checkpoint) -> Result<Vec<u8>, SchemaError> {
    encode_single_object(checkpoint)
}

pub fn encode_confluent_event(event: &AuditEvent, schema_id: u32) -> Result<Vec<u8>, SchemaError> {
    encode_confluent(event, schema_id)
}

pub fn encode_confluent_chained(
    chained: &ChainedEvent,
    schema_id: u32,
) -> Result<Vec<u8>, SchemaError> {
    encode_confluent(chained, schema_id)
}

pub fn encode_confluent_checkpoint(
    checkpoint: &Checkpoint,
    schema_id: u32,
) -> Result<Vec<u8>, SchemaError> {
    encode_confluent(checkpoint, schema_id)
}

pub fn decode_event(
    bytes: &[u8],
    resolver: Option<&dyn SchemaIdResolver>,
) -> Result<AuditEvent, SchemaError> {
    decode(bytes, resolver)
}

pub fn decode_chained(
    bytes: &[u8],
    resolver: Option<&dyn SchemaIdResolver>,
) -> Result<ChainedEvent, SchemaError> {
    decode(bytes, resolver)
}

pub fn decode_checkpoint(
    bytes: &[u8],
    resolver: Option<&dyn SchemaIdResolver>,
) -> Result<Checkpoint, SchemaError> {
    decode(bytes, resolver)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detect_classifies() {
        assert_eq!(detect(b"  \n{\"a\":1}"), Framing::Json);
        assert_eq!(detect(b"\xEF\xBB\xBF{}"), Framing::Json);
        assert_eq!(detect(b"[1]"), Framing::Unknown);
        assert_eq!(detect(b""), Framing::Unknown);
        assert_eq!(
            detect(&[0, 0, 0, 1, 2, 9]),
            Framing::Confluent { schema_id: 258 }
        );
        assert_eq!(detect(&[0, 0, 0]), Framing::Unknown);
        let mut so = vec![0xC3, 0x01];
        so.extend_from_slice(&0x0102_0304_0506_0708u64.to_le_bytes());
        assert_eq!(
            detect(&so),
            Framing::SingleObject {
                fingerprint: 0x0102_0304_0506_0708
            }
        );
        assert_eq!(detect(&so[..9]), Framing::Unknown);
    }

    #[test]
    fn unknown_fingerprint_is_a_specific_error() {
        let mut so = vec![0xC3, 0x01];
        so.extend_from_slice(&42u64.to_le_bytes());
        so.push(0);
        let err = decode_event(&so, None).unwrap_err();
        assert!(
            matches!(
                err,
                SchemaError::UnknownFingerprint {
                    fingerprint: 42,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn confluent_without_resolver_and_unknown_id() {
        let err = decode_event(&[0, 0, 0, 0, 7, 1, 2], None).unwrap_err();
        assert!(matches!(err, SchemaError::NoResolver { id: 7 }), "{err}");
        let r = CatalogIdResolver::new().expect("resolver");
        let err = decode_event(&[0, 0, 0, 0, 99, 1, 2], Some(&r)).unwrap_err();
        assert!(
            matches!(err, SchemaError::UnknownSchemaId { id: 99, .. }),
            "{err}"
        );
        assert_eq!(r.id_of(RecordKind::ChainedEvent), Some(2));
    }

    #[test]
    fn the_splice_applies_to_the_current_catalog() {
        assert!(splice_applies());
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

        /// Events as ingest and enrich write them: byte for byte apache-avro's.
        #[test]
        fn event_with_the_hand_encoder_equals_apache_avro(
            e in proptest::strategy::Strategy::boxed(crate::testing::arb_audit_event()),
        ) {
            proptest::prop_assert_eq!(
                encode_single_object_event(&e).unwrap(),
                encode_single_object(&e).unwrap()
            );
        }

        /// The spliced encoding is byte for byte apache-avro's, for the current canonical
        /// version (spliced) and for any other (the fallback).
        #[test]
        fn chained_with_canonical_equals_apache_avro(
            // Boxed: the unboxed value tree overflows a test thread's stack in debug.
            mut c in proptest::strategy::Strategy::boxed(crate::testing::arb_chained_event()),
            current in proptest::prelude::any::<bool>(),
        ) {
            if current {
                c.canonical_version = avro::CANONICAL_VERSION;
            }
            let mut canonical = Vec::new();
            // Another (unknown) version has no canonical bytes: the fallback ignores them.
            let _ = avro::canonical_bytes_version_into(
                &c.event,
                c.canonical_version,
                &mut canonical,
            );
            proptest::prop_assert_eq!(
                encode_single_object_chained_with_canonical(&c, &canonical).unwrap(),
                encode_single_object_chained(&c).unwrap()
            );
        }

        /// The datum the segment builder writes is apache-avro's, spliced or not.
        #[test]
        fn chained_datum_equals_apache_avro(
            mut c in proptest::strategy::Strategy::boxed(crate::testing::arb_chained_event()),
            current in proptest::prelude::any::<bool>(),
        ) {
            if current {
                c.canonical_version = avro::CANONICAL_VERSION;
            }
            let mut ours = b"kept".to_vec();
            chained_datum_into(&c, &mut ours).unwrap();
            proptest::prop_assert_eq!(&ours[..4], b"kept");
            proptest::prop_assert_eq!(&ours[4..], &avro::encode_datum(&c).unwrap()[..]);
        }
    }
}
