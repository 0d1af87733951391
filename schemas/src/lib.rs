//! The audit pipeline's shared data model: the `AuditEvent`/`ChainedEvent` Avro schemas and their
//! Rust types, both Avro framings, the JSON → event mapping, and the hash chain with its Merkle
//! trees and signed checkpoints. Pure logic only: no I/O beyond reading key files.

pub mod avro;
pub mod chain;
pub mod checkpoint;
pub mod checkpoint_record;
pub mod context;
pub mod error;
pub mod event;
pub mod flat;
pub mod framing;
pub mod identity;
pub mod json;
pub mod merkle;
pub mod segment;
pub mod validate;
pub mod verify;

/// Proptest strategies, shared with other crates' tests via the `testing` feature.
#[cfg(any(test, feature = "testing"))]
pub mod testing;

pub use checkpoint_record::Checkpoint;
pub use error::SchemaError;
pub use event::*;
