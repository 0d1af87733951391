//! # integrity: what an auditor reads
//!
//! The transparency-log core of the audit pipeline, free of Kafka, ClickHouse and S3 so that an
//! auditor can read (and re-implement) exactly what is checked:
//!
//! - [`tree`]: the RFC 6962 / RFC 9162 Merkle tree over 32-byte leaves, the O(log n) growing
//!   tree state ([`tree::CompactRange`]), inclusion and consistency proofs.
//! - [`note`]: C2SP signed notes (c2sp.org/signed-note): Ed25519 note signatures, key IDs,
//!   `vkey` verifier keys, strict parsing.
//! - [`checkpoint`]: C2SP tlog-checkpoint bodies (c2sp.org/tlog-checkpoint) and our origin
//!   naming `<chain id>/partition/<p>`.
//! - [`cosignature`]: C2SP tlog-cosignature `cosignature/v1` (timestamped Ed25519).
//! - [`pin`]: trusted chain heads (what an auditor or witness saw before) as tlog-checkpoint
//!   notes, and the pin file that holds several.
//! - [`witness`]: the pure state of a witness that cosigns only consistent growth.
//!
//! Nothing here does I/O; callers (chainer, auditctl) own storage and transport.

pub mod b64;
pub mod checkpoint;
pub mod cosignature;
pub mod note;
pub mod pin;
pub mod tree;
pub mod witness;

pub use tree::Hash32;
