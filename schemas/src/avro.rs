//! The schema catalog and Avro datum encoding/decoding.
//!
//! The `.avsc` files under `schemas/avro/` are compiled in and parsed once. Each schema is known
//! by record kind, version and Rabin fingerprint (CRC-64-AVRO of its Parsing Canonical Form, the
//! fingerprint single-object encoding carries).
//!
//! Encoding uses apache-avro's schema-aware serializer, which writes straight from the Rust value
//! into bytes (no intermediate `Value` tree): the chainer hashes every event and a verifier
//! re-encodes millions, so this path matters. Unit enum variants are written as Avro enum symbols
//! by that serializer (it matches the variant name, which `SCREAMING_SNAKE_CASE` makes equal to
//! the symbol), `Option` as the `["null", T]` union, and `serde_bytes_vec` fields as `bytes`.
//! The canonical bytes of the current version are the exception: [`crate::canonical`] writes
//! them by hand, byte-identical (property-tested against this path), several times faster.
//!
//! Decoding with the current schema as writer (fast path) uses the hand decoder of
//! [`crate::canonical_decode`] for `AuditEvent` and `ChainedEvent` when it applies (checked by
//! fingerprint; same accepted inputs and values, property-tested against apache-avro), and the
//! schema-aware deserializer otherwise.
//! Decoding data written with another schema (an older version, or whatever a registry returns)
//! goes through Avro schema resolution into a `Value` and then serde, which is slower but only
//! happens for old data.
//!
//! Why not `to_value`/`from_value` everywhere: `to_value` maps a unit variant to
//! `Value::String`, which fails validation against an enum schema, and it builds a whole tree
//! per event.

use std::fmt;
use std::sync::{Arc, LazyLock};

use apache_avro::rabin::Rabin;
use apache_avro::reader::datum::GenericDatumReader;
use apache_avro::schema::ResolvedSchema;
use apache_avro::writer::datum::GenericDatumWriter;
use apache_avro::Schema;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::checkpoint_record::Checkpoint;
use crate::error::SchemaError;
use crate::event::{AuditEvent, ChainedEvent};

/// Version of the `AuditEvent` schema whose binary encoding the hash chain hashes
/// (`ChainedEvent::canonical_version`). Bump only together with a new `audit_event.vN.avsc`.
pub const CANONICAL_VERSION: i32 = 1;

/// Raw schema texts, compiled in.
pub const AUDIT_EVENT_V1_AVSC: &str = include_str!("../avro/audit_event.v1.avsc");
pub const CHAINED_EVENT_V1_AVSC: &str = include_str!("../avro/chained_event.v1.avsc");
pub const CHECKPOINT_V1_AVSC: &str = include_str!("../avro/checkpoint.v1.avsc");
/// v2 adds `partition_count` (default 0), so v1 checkpoints still decode (schema resolution).
pub const CHECKPOINT_V2_AVSC: &str = include_str!("../avro/checkpoint.v2.avsc");
/// v3 adds `tree_root` (default empty: a range-only checkpoint), the whole-tree root.
pub const CHECKPOINT_V3_AVSC: &str = include_str!("../avro/checkpoint.v3.avsc");

/// The record kinds the catalog knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RecordKind {
    AuditEvent,
    ChainedEvent,
    Checkpoint,
}

impl RecordKind {
    pub const ALL: [RecordKind; 3] = [
        RecordKind::AuditEvent,
        RecordKind::ChainedEvent,
        RecordKind::Checkpoint,
    ];

    /// The Avro record name (without namespace), e.g. `AuditEvent`.
    pub fn name(self) -> &'static str {
        match self {
            RecordKind::AuditEvent => "AuditEvent",
            RecordKind::ChainedEvent => "ChainedEvent",
            RecordKind::Checkpoint => "Checkpoint",
        }
    }

    /// Subject name used with a schema registry (`TopicRecordNameStrategy`-style full name).
    pub fn full_name(self) -> &'static str {
        match self {
            RecordKind::AuditEvent => "io.auditpipe.AuditEvent",
            RecordKind::ChainedEvent => "io.auditpipe.ChainedEvent",
            RecordKind::Checkpoint => "io.auditpipe.Checkpoint",
        }
    }
}

impl fmt::Display for RecordKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A Rust type with a schema in the catalog.
pub trait AvroRecord: Serialize + DeserializeOwned {
    const KIND: RecordKind;

    /// Decodes a datum of the kind's current schema without apache-avro, when a hand decoder
    /// exists for that schema ([`crate::canonical_decode`]); `None` means use apache-avro.
    /// A hand decoder accepts exactly what apache-avro's reader accepts, with the same value.
    fn decode_by_hand(_bytes: &[u8]) -> Option<Result<Self, crate::canonical_decode::DecodeError>> {
        None
    }
}

impl AvroRecord for AuditEvent {
    const KIND: RecordKind = RecordKind::AuditEvent;

    fn decode_by_hand(bytes: &[u8]) -> Option<Result<Self, crate::canonical_decode::DecodeError>> {
        crate::canonical_decode::applies().then(|| crate::canonical_decode::decode_event(bytes))
    }
}
impl AvroRecord for ChainedEvent {
    const KIND: RecordKind = RecordKind::ChainedEvent;

    fn decode_by_hand(bytes: &[u8]) -> Option<Result<Self, crate::canonical_decode::DecodeError>> {
        crate::canonical_decode::chained_applies()
            .then(|| crate::canonical_decode::decode_chained(bytes))
    }
}
impl AvroRecord for Checkpoint {
    const KIND: RecordKind = RecordKind::Checkpoint;
}

/// One compiled-in schema.
#[derive(Debug)]
pub struct SchemaEntry {
    pub kind: RecordKind,
    pub version: i32,
    /// File name under `schemas/avro/`.
    pub file: &'static str,
    /// The `.avsc` text as compiled in (with docs), e.g. to register with a schema registry.
    pub avsc: &'static str,
    pub schema: Arc<Schema>,
    /// Rabin (CRC-64-AVRO) fingerprint of the Parsing Canonical Form, as a number; its
    /// little-endian bytes are what single-object encoding writes after `C3 01`.
    pub fingerprint: u64,
}

/// All compiled-in schemas, every version of every record kind.
#[derive(Debug)]
pub struct Catalog {
    entries: Vec<SchemaEntry>,
}

/// (kind, version, file, text). Old versions stay listed forever so old data stays readable.
const SOURCES: &[(RecordKind, i32, &str, &str)] = &[
    (
        RecordKind::AuditEvent,
        1,
        "audit_event.v1.avsc",
        AUDIT_EVENT_V1_AVSC,
    ),
    (
        RecordKind::ChainedEvent,
        1,
        "chained_event.v1.avsc",
        CHAINED_EVENT_V1_AVSC,
    ),
    (
        RecordKind::Checkpoint,
        1,
        "checkpoint.v1.avsc",
        CHECKPOINT_V1_AVSC,
    ),
    (
        RecordKind::Checkpoint,
        2,
        "checkpoint.v2.avsc",
        CHECKPOINT_V2_AVSC,
    ),
    (
        RecordKind::Checkpoint,
        3,
        "checkpoint.v3.avsc",
        CHECKPOINT_V3_AVSC,
    ),
];

/// Current (newest) version per kind: what encoders write.
const fn current_version(kind: RecordKind) -> i32 {
    match kind {
        RecordKind::AuditEvent => CANONICAL_VERSION,
        RecordKind::ChainedEvent => 1,
        RecordKind::Checkpoint => 3,
    }
}

impl Catalog {
    fn load() -> Result<Catalog, SchemaError> {
        let mut entries = Vec::with_capacity(SOURCES.len());
        for &(kind, version, file, avsc) in SOURCES {
            let schema = Schema::parse_str(avsc).map_err(|e| SchemaError::CatalogSchema {
                file,
                reason: e.to_string(),
            })?;
            let fingerprint = fingerprint_of(&schema);
            entries.push(SchemaEntry {
                kind,
                version,
                file,
                avsc,
                schema: Arc::new(schema),
                fingerprint,
            });
        }
        Ok(Catalog { entries })
    }

    pub fn entries(&self) -> &[SchemaEntry] {
        &self.entries
    }

    pub fn by_fingerprint(&self, fingerprint: u64) -> Option<&SchemaEntry> {
        self.entries.iter().find(|e| e.fingerprint == fingerprint)
    }

    pub fn by_version(&self, kind: RecordKind, version: i32) -> Option<&SchemaEntry> {
        self.entries
            .iter()
            .find(|e| e.kind == kind && e.version == version)
    }

    /// The schema encoders write for `kind`.
    pub fn current(&self, kind: RecordKind) -> Result<&SchemaEntry, SchemaError> {
        let version = current_version(kind);
        self.by_version(kind, version)
            .ok_or(SchemaError::UnknownVersion {
                record: kind.name(),
                version,
            })
    }
}

// A parse failure is kept as text: `apache_avro::Error` is not `Clone`, and every caller needs
// its own copy of the error.
static CATALOG: LazyLock<Result<Catalog, (&'static str, String)>> = LazyLock::new(|| {
    Catalog::load().map_err(|e| match e {
        SchemaError::CatalogSchema { file, reason } => (file, reason),
        other => ("catalog", other.to_string()),
    })
});

/// The compiled-in catalog, parsed on first use.
pub fn catalog() -> Result<&'static Catalog, SchemaError> {
    match &*CATALOG {
        Ok(c) => Ok(c),
        Err((file, reason)) => Err(SchemaError::CatalogSchema {
            file,
            reason: reason.clone(),
        }),
    }
}

/// The current schema entry of a kind.
pub fn current_schema(kind: RecordKind) -> Result<&'static SchemaEntry, SchemaError> {
    catalog()?.current(kind)
}

/// Rabin fingerprint of a schema's Parsing Canonical Form, as a `u64` (little-endian bytes).
pub fn fingerprint_of(schema: &Schema) -> u64 {
    let fp = schema.fingerprint::<Rabin>();
    let mut le = [0u8; 8];
    // Rabin output is always 8 bytes; copy defensively rather than index.
    for (dst, src) in le.iter_mut().zip(fp.bytes.iter()) {
        *dst = *src;
    }
    u64::from_le_bytes(le)
}

/// Pre-built writers/readers for the current schema of each kind, so that the per-datum cost is
/// only the serialisation (building one resolves all named types of the schema).
struct Codec {
    entry: &'static SchemaEntry,
    writer: GenericDatumWriter<'static>,
    reader: GenericDatumReader<'static>,
}

struct Codecs {
    by_kind: Vec<Codec>,
}

static CODECS: LazyLock<Result<Codecs, String>> = LazyLock::new(build_codecs);

fn build_codecs() -> Result<Codecs, String> {
    let catalog = catalog().map_err(|e| e.to_string())?;
    let mut by_kind = Vec::new();
    for kind in RecordKind::ALL {
        let entry = catalog.current(kind).map_err(|e| e.to_string())?;
        let schema: &'static Schema = &entry.schema;
        let resolved = ResolvedSchema::try_from(schema).map_err(|e| e.to_string())?;
        let writer = GenericDatumWriter::builder(schema)
            .resolved_schemata(resolved)
            // Fixed, not the library-wide global, so that bytes never depend on process state.
            .human_readable(false)
            // The schema-aware serializer checks every value against the schema as it writes;
            // the separate `Value` validation pass only applies to `write_value`.
            .validate(true)
            .build()
            .map_err(|e| e.to_string())?;
        let resolved = ResolvedSchema::try_from(schema).map_err(|e| e.to_string())?;
        let reader = GenericDatumReader::builder(schema)
            .resolved_writer_schemata(resolved)
            .human_readable(false)
            .build()
            .map_err(|e| e.to_string())?;
        by_kind.push(Codec {
            entry,
            writer,
            reader,
        });
    }
    Ok(Codecs { by_kind })
}

fn codec(kind: RecordKind) -> Result<&'static Codec, SchemaError> {
    let codecs = CODECS
        .as_ref()
        .map_err(|reason| SchemaError::CatalogSchema {
            file: "catalog",
            reason: reason.clone(),
        })?;
    codecs
        .by_kind
        .iter()
        .find(|c| c.entry.kind == kind)
        .ok_or(SchemaError::UnknownVersion {
            record: kind.name(),
            version: current_version(kind),
        })
}

/// Appends the Avro binary datum of `value` (current schema of its kind) to `out`.
pub fn encode_datum_into<T: AvroRecord>(value: &T, out: &mut Vec<u8>) -> Result<(), SchemaError> {
    let codec = codec(T::KIND)?;
    codec
        .writer
        .write_ser(out, value)
        .map(|_| ())
        .map_err(|e| SchemaError::Encode {
            record: T::KIND.name(),
            version: codec.entry.version,
            source: Box::new(e),
        })
}

/// The Avro binary datum of `value` under the current schema of its kind.
pub fn encode_datum<T: AvroRecord>(value: &T) -> Result<Vec<u8>, SchemaError> {
    let mut out = Vec::with_capacity(512);
    encode_datum_into(value, &mut out)?;
    Ok(out)
}

/// Decodes a datum written with the current schema of `T`'s kind.
pub fn decode_datum<T: AvroRecord>(bytes: &[u8]) -> Result<T, SchemaError> {
    let codec = codec(T::KIND)?;
    read_fast(codec, bytes, || format!("version {}", codec.entry.version))
}

/// Decodes a datum written with `writer` (any schema that resolves to the current one by Avro
/// rules). `writer_label` names where the writer schema came from, for error messages.
pub fn decode_datum_with_writer<T: AvroRecord>(
    bytes: &[u8],
    writer: &Schema,
    writer_label: &dyn Fn() -> String,
) -> Result<T, SchemaError> {
    let codec = codec(T::KIND)?;
    // Structural comparison is much cheaper than resolving, and the current schema is by far the
    // common case.
    if std::ptr::eq(writer, &*codec.entry.schema) || *writer == *codec.entry.schema {
        return read_fast(codec, bytes, writer_label);
    }
    read_resolving(codec, bytes, writer, writer_label)
}

/// Decodes a datum written with catalog version `version` of `T`'s kind.
pub fn decode_datum_version<T: AvroRecord>(bytes: &[u8], version: i32) -> Result<T, SchemaError> {
    let entry = catalog()?
        .by_version(T::KIND, version)
        .ok_or(SchemaError::UnknownVersion {
            record: T::KIND.name(),
            version,
        })?;
    decode_datum_with_writer(bytes, &entry.schema, &|| format!("version {version}"))
}

/// Decodes a datum written with the current schema of `T`'s kind always through apache-avro's
/// serde reader, never a hand decoder: the reference [`crate::canonical_decode`] is tested
/// against.
pub fn decode_datum_avro<T: AvroRecord>(bytes: &[u8]) -> Result<T, SchemaError> {
    let codec = codec(T::KIND)?;
    read_avro(codec, bytes, || format!("version {}", codec.entry.version))
}

/// The writer is the current schema of `T`'s kind (every path that decodes without schema
/// resolution ends here: `decode_datum`, single-object and Confluent framing whose writer is
/// the current schema). Uses the hand decoder when there is one for that schema (several times
/// faster, same accepted inputs and values by its property tests), apache-avro otherwise.
fn read_fast<T: AvroRecord>(
    codec: &Codec,
    bytes: &[u8],
    writer_label: impl Fn() -> String,
) -> Result<T, SchemaError> {
    match T::decode_by_hand(bytes) {
        Some(r) => r.map_err(|e| e.into_schema_error(T::KIND.name(), writer_label())),
        None => read_avro(codec, bytes, writer_label),
    }
}

fn read_avro<T: AvroRecord>(
    codec: &Codec,
    bytes: &[u8],
    writer_label: impl Fn() -> String,
) -> Result<T, SchemaError> {
    let mut rest = bytes;
    let value: T = codec
        .reader
        .read_deser(&mut rest)
        .map_err(|e| SchemaError::Decode {
            record: T::KIND.name(),
            writer: writer_label(),
            source: Box::new(e),
        })?;
    check_consumed(T::KIND, rest, writer_label)?;
    Ok(value)
}

fn read_resolving<T: AvroRecord>(
    codec: &Codec,
    bytes: &[u8],
    writer: &Schema,
    writer_label: &dyn Fn() -> String,
) -> Result<T, SchemaError> {
    let decode_err = |e: apache_avro::Error| SchemaError::Decode {
        record: T::KIND.name(),
        writer: writer_label(),
        source: Box::new(e),
    };
    let reader = GenericDatumReader::builder(writer)
        .reader_schema(&codec.entry.schema)
        .human_readable(false)
        .build()
        .map_err(decode_err)?;
    let mut rest = bytes;
    let value = reader.read_value(&mut rest).map_err(decode_err)?;
    check_consumed(T::KIND, rest, writer_label)?;
    apache_avro::from_value::<T>(&value).map_err(decode_err)
}

fn check_consumed(
    kind: RecordKind,
    rest: &[u8],
    writer_label: impl Fn() -> String,
) -> Result<(), SchemaError> {
    if rest.is_empty() {
        Ok(())
    } else {
        Err(SchemaError::TrailingBytes {
            record: kind.name(),
            writer: writer_label(),
            trailing: rest.len(),
        })
    }
}

// ---- typed helpers -----------------------------------------------------------------------------

pub fn encode_event_datum(event: &AuditEvent) -> Result<Vec<u8>, SchemaError> {
    encode_datum(event)
}

pub fn decode_event_datum(bytes: &[u8]) -> Result<AuditEvent, SchemaError> {
    decode_datum(bytes)
}

pub fn encode_chained_datum(chained: &ChainedEvent) -> Result<Vec<u8>, SchemaError> {
    encode_datum(chained)
}

pub fn decode_chained_datum(bytes: &[u8]) -> Result<ChainedEvent, SchemaError> {
    decode_datum(bytes)
}

pub fn encode_checkpoint_datum(checkpoint: &Checkpoint) -> Result<Vec<u8>, SchemaError> {
    encode_datum(checkpoint)
}

pub fn decode_checkpoint_datum(bytes: &[u8]) -> Result<Checkpoint, SchemaError> {
    decode_datum(bytes)
}

/// What the hash chain hashes: the Avro binary datum of `event` under `AuditEvent` schema
/// version [`CANONICAL_VERSION`]. Avro binary encoding of a record is a pure function of the
/// value and the schema (fields in schema order, no maps, no padding), so it is deterministic.
pub fn canonical_bytes(event: &AuditEvent) -> Result<Vec<u8>, SchemaError> {
    let mut out = Vec::with_capacity(512);
    canonical_bytes_into(event, &mut out)?;
    Ok(out)
}

/// [`canonical_bytes`] appended to a caller-owned buffer (lets the chainer reuse one allocation).
pub fn canonical_bytes_into(event: &AuditEvent, out: &mut Vec<u8>) -> Result<(), SchemaError> {
    canonical_bytes_version_into(event, CANONICAL_VERSION, out)
}

/// Canonical bytes under a given canonical version, as recorded in
/// `ChainedEvent::canonical_version` (a verifier must use the version the chainer used).
///
/// The current version is written by the hand encoder ([`crate::canonical`], several times
/// faster, byte-identical by its property tests) when it applies to the catalog's schema;
/// anything else goes through apache-avro.
pub fn canonical_bytes_version_into(
    event: &AuditEvent,
    version: i32,
    out: &mut Vec<u8>,
) -> Result<(), SchemaError> {
    if version == CANONICAL_VERSION && crate::canonical::applies() {
        crate::canonical::encode_event(event, out);
        return Ok(());
    }
    canonical_bytes_version_into_avro(event, version, out)
}

/// [`canonical_bytes_version_into`] always through apache-avro's serde writer: the reference
/// the hand encoder is tested against, and the path for other canonical versions.
pub fn canonical_bytes_version_into_avro(
    event: &AuditEvent,
    version: i32,
    out: &mut Vec<u8>,
) -> Result<(), SchemaError> {
    let codec = codec(RecordKind::AuditEvent)?;
    if codec.entry.version == version {
        return encode_datum_into(event, out);
    }
    // An older canonical version: encode against that schema directly. Only reachable once a v2
    // exists; the writer is built per call because this is the rare path.
    let entry = catalog()?
        .by_version(RecordKind::AuditEvent, version)
        .ok_or(SchemaError::UnknownVersion {
            record: RecordKind::AuditEvent.name(),
            version,
        })?;
    let encode_err = |e: apache_avro::Error| SchemaError::Encode {
        record: RecordKind::AuditEvent.name(),
        version,
        source: Box::new(e),
    };
    let writer = GenericDatumWriter::builder(&entry.schema)
        .human_readable(false)
        .build()
        .map_err(encode_err)?;
    writer.write_ser(out, event).map(|_| ()).map_err(encode_err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catalog_parses_and_fingerprints_are_distinct() {
        let c = catalog().expect("catalog");
        assert_eq!(c.entries().len(), SOURCES.len());
        for (i, a) in c.entries().iter().enumerate() {
            for b in &c.entries()[i + 1..] {
                assert_ne!(a.fingerprint, b.fingerprint, "{} vs {}", a.file, b.file);
            }
            assert_eq!(a.fingerprint, fingerprint_of(&a.schema));
        }
        for kind in RecordKind::ALL {
            let e = current_schema(kind).expect("current");
            assert_eq!(e.kind, kind);
        }
    }

    /// The chained schema embeds the AuditEvent record; both files must describe the same
    /// record, or `audit.chained` would carry a different event shape than `audit.enriched`.
    #[test]
    fn chained_schema_embeds_the_same_audit_event() {
        let c = catalog().expect("catalog");
        let audit = &c.current(RecordKind::AuditEvent).expect("audit").schema;
        let chained = &c.current(RecordKind::ChainedEvent).expect("chained").schema;
        let Schema::Record(rec) = &**chained else {
            panic!("ChainedEvent is not a record");
        };
        let event_field = rec
            .fields
            .iter()
            .find(|f| f.name == "event")
            .expect("event field");
        assert_eq!(
            event_field.schema.canonical_form(),
            audit.canonical_form(),
            "chained_event.v1.avsc embeds a different AuditEvent than audit_event.v1.avsc"
        );
    }

    /// Every field of every compiled-in schema carries a doc.
    #[test]
    fn every_field_has_a_doc() {
        fn walk(v: &serde_json::Value, path: &str) {
            match v {
                serde_json::Value::Object(m) => {
                    if m.contains_key("type") && m.contains_key("name") && path.ends_with("]") {
                        assert!(m.contains_key("doc"), "field without doc at {path}");
                    }
                    for (k, v) in m {
                        walk(v, &format!("{path}.{k}"));
                    }
                }
                serde_json::Value::Array(a) => {
                    for (i, v) in a.iter().enumerate() {
                        walk(v, &format!("{path}[{i}]"));
                    }
                }
                _ => {}
            }
        }
        for (_, _, file, text) in SOURCES {
            let v: serde_json::Value = serde_json::from_str(text).expect("json");
            walk(&v, file);
            assert!(!text.contains("\"map\""), "{file} uses an Avro map");
        }
    }
}
