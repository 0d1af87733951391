//! Errors of the Avro side of the crate (schemas, framings, context records).
//!
//! Every variant says what was being done and with which input (record kind, schema version,
//! fingerprint, schema id), because these errors end up as reason headers on `audit.rejected`
//! and in operator logs, where "invalid datum" alone is useless.

use thiserror::Error;

/// Failure while encoding, decoding or framing an Avro record, or resolving its schema.
#[derive(Debug, Error)]
pub enum SchemaError {
    /// One of the `.avsc` files compiled into the crate does not parse. This is a build defect,
    /// reported instead of panicking so that a worker can log it and exit cleanly.
    #[error("compiled-in schema {file} does not parse: {reason}")]
    CatalogSchema { file: &'static str, reason: String },

    /// Serialising a Rust value against its schema failed.
    #[error("encoding {record} under schema version {version}: {source}")]
    Encode {
        record: &'static str,
        version: i32,
        #[source]
        source: Box<apache_avro::Error>,
    },

    /// Reading an Avro datum failed (truncated or corrupt bytes, or a writer schema that cannot
    /// be resolved to the reader's).
    #[error("decoding {record} (writer schema {writer}): {source}")]
    Decode {
        record: &'static str,
        /// Where the writer schema came from, e.g. `fingerprint 0x…`, `schema id 42`, `version 1`.
        writer: String,
        #[source]
        source: Box<apache_avro::Error>,
    },

    /// The datum decoded, but bytes were left over: the writer schema was not the one used.
    #[error(
        "decoding {record} (writer schema {writer}): {trailing} trailing bytes after the datum"
    )]
    TrailingBytes {
        record: &'static str,
        writer: String,
        trailing: usize,
    },

    /// A single-object encoded message names a schema fingerprint the catalog does not know.
    #[error(
        "unknown schema fingerprint {fingerprint:#018x} for {record} (single-object encoding)"
    )]
    UnknownFingerprint {
        record: &'static str,
        fingerprint: u64,
    },

    /// The fingerprint is known, but belongs to a different record kind than asked for.
    #[error("schema fingerprint {fingerprint:#018x} belongs to {found}, expected {expected}")]
    WrongRecordKind {
        fingerprint: u64,
        expected: &'static str,
        found: &'static str,
    },

    /// No schema of that record kind and version is compiled in.
    #[error("no {record} schema version {version} in the catalog")]
    UnknownVersion { record: &'static str, version: i32 },

    /// A Confluent schema id could not be resolved (registry unreachable, id unknown, ...).
    #[error("schema id {id} could not be resolved: {reason}")]
    UnknownSchemaId { id: u32, reason: String },

    /// A Confluent-framed message arrived but no schema id resolver is configured.
    #[error("Confluent-framed message with schema id {id}, but no schema registry is configured")]
    NoResolver { id: u32 },

    /// The bytes are not in the framing the caller asked for, or too short for it.
    #[error("bad {framing} framing: {reason}")]
    Framing {
        framing: &'static str,
        reason: String,
    },

    /// A context record on `audit.context.users` / `audit.context.teams` does not parse.
    #[error("invalid {record} context record (key {key:?}): {reason}")]
    Context {
        record: &'static str,
        key: String,
        reason: String,
    },
}

impl SchemaError {
    /// A short stable code for metrics and DLQ reason headers.
    pub fn code(&self) -> &'static str {
        match self {
            SchemaError::CatalogSchema { .. } => "catalog_schema",
            SchemaError::Encode { .. } => "encode",
            SchemaError::Decode { .. } => "decode",
            SchemaError::TrailingBytes { .. } => "trailing_bytes",
            SchemaError::UnknownFingerprint { .. } => "unknown_fingerprint",
            SchemaError::WrongRecordKind { .. } => "wrong_record_kind",
            SchemaError::UnknownVersion { .. } => "unknown_version",
            SchemaError::UnknownSchemaId { .. } => "unknown_schema_id",
            SchemaError::NoResolver { .. } => "no_schema_registry",
            SchemaError::Framing { .. } => "bad_framing",
            SchemaError::Context { .. } => "invalid_context",
        }
    }
}
