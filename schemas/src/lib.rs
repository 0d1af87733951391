//! The audit pipeline's event contract: the `AuditEvent`/`ChainedEvent`/`Checkpoint` Avro schemas
//! and their Rust types, both Avro framings, the JSON → event mapping, event identity and the
//! chainer's dedup window, the flat ClickHouse rows and the archive's object format. Pure logic,
//! no I/O.
//!
//! What is *proven* about these records (the chain rule, Merkle trees, signed checkpoints,
//! proofs and the verifier) is the `integrity` crate, which depends on this one.

pub mod avro;
pub mod canonical;
pub mod canonical_decode;
pub mod chained_row;
pub mod checkpoint_record;
pub mod context;
pub mod dedup;
pub mod enrich_splice;
pub mod error;
pub mod event;
pub mod flat;
pub mod framing;
pub mod governance;
pub mod identity;
pub mod json;
pub mod raw_segment;
pub mod retention;
pub mod segment;
pub mod validate;

/// A realistic event stream for benchmarks, shared via the `testing` feature.
#[cfg(any(test, feature = "testing"))]
pub mod realistic;
/// Proptest strategies, shared with other crates' tests via the `testing` feature.
#[cfg(any(test, feature = "testing"))]
pub mod testing;

pub use checkpoint_record::Checkpoint;
pub use error::SchemaError;
pub use event::*;
