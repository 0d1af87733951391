//! # integrity: what an auditor reads
//!
//! The integrity core of the audit pipeline, free of Kafka, ClickHouse and S3 so that an
//! auditor can read (and re-implement) exactly what is checked. The event contract it proves
//! things about is the `schemas` crate; everything about hashes, signatures and proofs is here.
//!
//! - [`chain`]: the per-partition hash chain: the link rule (`audit-chain/v1`, `/v2`), its
//!   genesis, and the running head the chainer extends.
//! - [`tree`]: the RFC 6962 / RFC 9162 Merkle tree over 32-byte leaves, the O(log n) growing
//!   tree state ([`tree::CompactRange`]), inclusion and consistency proofs.
//! - [`merkle`]: the range tree a checkpoint's `merkle_root` signs (leaves = link hashes of
//!   `first_seq ..= seq`), built on [`tree`]'s hashing.
//! - [`checkpoint`]: Ed25519-signed checkpoints (signing inputs v1, v2, v3), signing keys and
//!   the public key set with validity windows, event inclusion proofs, the Avro record mapping.
//! - [`verify`]: the verifier over a stream of stored records and checkpoints, with one
//!   precise finding per kind of tampering (docs/verification.md).
//! - [`note`]: C2SP signed notes (c2sp.org/signed-note): Ed25519 note signatures, key IDs,
//!   `vkey` verifier keys, strict parsing.
//! - [`tlog`]: C2SP tlog-checkpoint bodies (c2sp.org/tlog-checkpoint) and our origin
//!   naming `<chain id>/partition/<p>`.
//! - [`cosignature`]: C2SP tlog-cosignature `cosignature/v1` (timestamped Ed25519).
//! - [`pin`]: trusted chain heads (what an auditor or witness saw before) as tlog-checkpoint
//!   notes, and the pin file that holds several.
//! - [`witness`]: the pure state of a witness that cosigns only consistent growth.
//!
//! Nothing here does I/O beyond reading key files; callers (chainer, sinks, auditctl) own
//! storage and transport.

pub mod b64;
pub mod chain;
pub mod checkpoint;
pub mod cosignature;
pub mod merkle;
pub mod note;
pub mod pin;
pub mod tlog;
pub mod tree;
pub mod verify;
pub mod witness;

pub use tree::Hash32;
