//! A signed checkpoint's two serialised forms: the Avro wire record published on
//! `audit.checkpoints`, and the JSON form used in documents (inclusion proofs, archive
//! manifests).

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::chain::Hash32;
use schemas::checkpoint_record::Checkpoint;

use super::error::{malformed, CheckpointError};
use super::signing::{CheckpointFields, SignedCheckpoint, SIGNATURE_LEN};

impl TryFrom<&Checkpoint> for SignedCheckpoint {
    type Error = CheckpointError;
    fn try_from(c: &Checkpoint) -> Result<Self, CheckpointError> {
        let h = |field: &str, v: &[u8]| -> Result<Hash32, CheckpointError> {
            v.try_into()
                .map_err(|_| malformed(format!("{field} must be 32 bytes, got {}", v.len())))
        };
        let signature: [u8; SIGNATURE_LEN] = c.signature.as_slice().try_into().map_err(|_| {
            malformed(format!(
                "signature must be 64 bytes, got {}",
                c.signature.len()
            ))
        })?;
        Ok(SignedCheckpoint {
            fields: CheckpointFields {
                chain_id: c.chain_id.clone(),
                partition: u32::try_from(c.partition)
                    .map_err(|_| malformed(format!("negative partition {}", c.partition)))?,
                first_seq: u64::try_from(c.first_seq)
                    .map_err(|_| malformed(format!("negative first_seq {}", c.first_seq)))?,
                seq: u64::try_from(c.seq)
                    .map_err(|_| malformed(format!("negative seq {}", c.seq)))?,
                head_hash: h("head_hash", &c.head_hash)?,
                merkle_root: h("merkle_root", &c.merkle_root)?,
                time_us: c.time_us,
                partition_count: u32::try_from(c.partition_count).map_err(|_| {
                    malformed(format!("negative partition_count {}", c.partition_count))
                })?,
                tree_root: if c.tree_root.is_empty() {
                    None
                } else {
                    Some(h("tree_root", &c.tree_root)?)
                },
            },
            key_id: c.key_id.clone(),
            signature,
        })
    }
}

impl From<&SignedCheckpoint> for Checkpoint {
    fn from(cp: &SignedCheckpoint) -> Self {
        let f = &cp.fields;
        Checkpoint {
            chain_id: f.chain_id.clone(),
            // Validated ranges (sign/verify refuse anything else); saturate rather than wrap.
            partition: i32::try_from(f.partition).unwrap_or(i32::MAX),
            first_seq: i64::try_from(f.first_seq).unwrap_or(i64::MAX),
            seq: i64::try_from(f.seq).unwrap_or(i64::MAX),
            head_hash: f.head_hash.to_vec(),
            merkle_root: f.merkle_root.to_vec(),
            time_us: f.time_us,
            partition_count: i32::try_from(f.partition_count).unwrap_or(i32::MAX),
            tree_root: f.tree_root.map(|r| r.to_vec()).unwrap_or_default(),
            key_id: cp.key_id.clone(),
            signature: cp.signature.to_vec(),
        }
    }
}

/// A checkpoint in JSON documents: hashes as lowercase hex, the signature as base64.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointJson {
    pub chain_id: String,
    pub partition: i32,
    pub first_seq: i64,
    pub seq: i64,
    pub head_hash: String,
    pub merkle_root: String,
    pub time_us: i64,
    /// The signed partition count; absent (0) in checkpoints signed before it existed.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub partition_count: i32,
    /// The whole-tree root (hex), v3; absent in range-only checkpoints.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub tree_root: String,
    pub key_id: String,
    pub signature: String,
}

fn is_zero(n: &i32) -> bool {
    *n == 0
}

pub(super) fn hex32(field: &str, s: &str) -> Result<Hash32, String> {
    let v = hex::decode(s).map_err(|_| format!("{field} is not hex"))?;
    v.try_into()
        .map_err(|v: Vec<u8>| format!("{field} must be 32 bytes, got {}", v.len()))
}

impl From<&Checkpoint> for CheckpointJson {
    fn from(c: &Checkpoint) -> Self {
        Self {
            chain_id: c.chain_id.clone(),
            partition: c.partition,
            first_seq: c.first_seq,
            seq: c.seq,
            head_hash: hex::encode(&c.head_hash),
            merkle_root: hex::encode(&c.merkle_root),
            time_us: c.time_us,
            partition_count: c.partition_count,
            tree_root: hex::encode(&c.tree_root),
            key_id: c.key_id.clone(),
            signature: B64.encode(&c.signature),
        }
    }
}

impl From<&SignedCheckpoint> for CheckpointJson {
    fn from(cp: &SignedCheckpoint) -> Self {
        let f = &cp.fields;
        Self {
            chain_id: f.chain_id.clone(),
            // Validated ranges (sign/verify refuse anything else); saturate rather than wrap.
            partition: i32::try_from(f.partition).unwrap_or(i32::MAX),
            first_seq: i64::try_from(f.first_seq).unwrap_or(i64::MAX),
            seq: i64::try_from(f.seq).unwrap_or(i64::MAX),
            head_hash: hex::encode(f.head_hash),
            merkle_root: hex::encode(f.merkle_root),
            time_us: f.time_us,
            partition_count: i32::try_from(f.partition_count).unwrap_or(i32::MAX),
            tree_root: f.tree_root.map(hex::encode).unwrap_or_default(),
            key_id: cp.key_id.clone(),
            signature: B64.encode(cp.signature),
        }
    }
}

impl TryFrom<&CheckpointJson> for SignedCheckpoint {
    type Error = CheckpointError;
    fn try_from(j: &CheckpointJson) -> Result<Self, CheckpointError> {
        let sig = B64
            .decode(j.signature.trim())
            .map_err(|_| malformed("signature is not base64"))?;
        let signature: [u8; SIGNATURE_LEN] = sig.try_into().map_err(|v: Vec<u8>| {
            malformed(format!("signature must be 64 bytes, got {}", v.len()))
        })?;
        Ok(SignedCheckpoint {
            fields: CheckpointFields {
                chain_id: j.chain_id.clone(),
                partition: u32::try_from(j.partition)
                    .map_err(|_| malformed(format!("negative partition {}", j.partition)))?,
                first_seq: u64::try_from(j.first_seq)
                    .map_err(|_| malformed(format!("negative first_seq {}", j.first_seq)))?,
                seq: u64::try_from(j.seq)
                    .map_err(|_| malformed(format!("negative seq {}", j.seq)))?,
                head_hash: hex32("head_hash", &j.head_hash).map_err(malformed)?,
                merkle_root: hex32("merkle_root", &j.merkle_root).map_err(malformed)?,
                time_us: j.time_us,
                partition_count: u32::try_from(j.partition_count).map_err(|_| {
                    malformed(format!("negative partition_count {}", j.partition_count))
                })?,
                tree_root: if j.tree_root.is_empty() {
                    None
                } else {
                    Some(hex32("tree_root", &j.tree_root).map_err(malformed)?)
                },
            },
            key_id: j.key_id.clone(),
            signature,
        })
    }
}
