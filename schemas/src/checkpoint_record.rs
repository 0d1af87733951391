//! The signed checkpoint record published on `audit.checkpoints` (schema
//! `avro/checkpoint.v3.avsc`; v1 lacks `partition_count`, v2 `tree_root`). Signing and verification live in `integrity::checkpoint`; this is only the
//! data shape, so that every worker can decode checkpoints without pulling in the signing code.

use serde::{Deserialize, Serialize};

/// A signed statement "partition `partition` of chain `chain_id` had head `head_hash` at `seq`".
///
/// Field order mirrors the Avro schema one to one (the schema-aware serializer writes fields in
/// the order serde visits them).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// Identifies the chain (deployment / topic), so checkpoints of two pipelines never mix.
    pub chain_id: String,
    pub partition: i32,
    /// First seq covered by `merkle_root`.
    pub first_seq: i64,
    /// Seq of the chain head at this checkpoint.
    pub seq: i64,
    /// Hash of the link at `seq` (32 bytes).
    #[serde(with = "crate::event::serde_bytes_vec")]
    pub head_hash: Vec<u8>,
    /// Merkle root over the link hashes `first_seq..=seq`.
    #[serde(with = "crate::event::serde_bytes_vec")]
    pub merkle_root: Vec<u8>,
    /// Microseconds since the Unix epoch (UTC).
    pub time_us: i64,
    /// Partition count of the chained topic when the checkpoint was signed: the signed
    /// partition set, so a verifier can tell a partition deleted whole (records and
    /// checkpoints) from one that never existed. 0 = not recorded (v1 checkpoints, whose
    /// signature does not cover it; `serde(default)` and the Avro default keep them readable).
    #[serde(default)]
    pub partition_count: i32,
    /// RFC 9162 root of the partition's whole tree at `seq` (32 bytes; v3, signed as a C2SP
    /// tlog-checkpoint note body). Empty in range-only checkpoints signed before v3.
    #[serde(default, with = "crate::event::serde_bytes_vec")]
    pub tree_root: Vec<u8>,
    /// Id of the signing key in the key set.
    pub key_id: String,
    /// Ed25519 signature (64 bytes).
    #[serde(with = "crate::event::serde_bytes_vec")]
    pub signature: Vec<u8>,
}
