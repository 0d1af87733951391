//! Inclusion proofs: build one from a checkpoint's range, and check one offline with only the
//! public key set.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::chain::{ChainRule, Hash32};
use crate::merkle;

use super::error::CheckpointError;
use super::keyset::KeySet;
use super::signing::{verify_signed, SignedCheckpoint};
use super::wire::{hex32, CheckpointJson};

/// The event itself, optionally carried in a proof so the checker can tie content to the hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProvenEvent {
    /// Hex of the stored predecessor hash the link was computed from.
    pub prev_hash: String,
    /// Schema version of `canonical`.
    pub canonical_version: i32,
    /// Base64 of the event's canonical (Avro binary) bytes.
    pub canonical: String,
}

impl ProvenEvent {
    /// From a chained record as stored, re-encoding the event under its recorded canonical
    /// version (so the checker needs no Avro code, only the bytes).
    pub fn from_chained(ev: &schemas::event::ChainedEvent) -> Result<Self, schemas::SchemaError> {
        let mut canonical = Vec::with_capacity(512);
        schemas::avro::canonical_bytes_version_into(
            &ev.event,
            ev.canonical_version,
            &mut canonical,
        )?;
        Ok(Self {
            prev_hash: hex::encode(&ev.prev_hash),
            canonical_version: ev.canonical_version,
            canonical: B64.encode(&canonical),
        })
    }
}

/// `auditctl prove`'s output: everything needed to check one event offline with the key set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InclusionProof {
    pub event_id: String,
    pub chain_partition: i32,
    pub seq: i64,
    /// Hex of the event's link hash (the Merkle leaf).
    pub event_hash: String,
    /// `seq - checkpoint.first_seq`.
    pub leaf_index: u64,
    /// `checkpoint.seq - checkpoint.first_seq + 1`.
    pub tree_size: u64,
    /// Hex sibling hashes, deepest first (RFC 6962 PATH).
    pub merkle_path: Vec<String>,
    pub checkpoint: CheckpointJson,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<ProvenEvent>,
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ProofError {
    #[error("checkpoint: {0}")]
    Checkpoint(#[from] CheckpointError),
    #[error("malformed proof: {0}")]
    Malformed(String),
    #[error("proof is for partition {proof} but the checkpoint is for partition {checkpoint}")]
    PartitionMismatch { proof: i32, checkpoint: i32 },
    #[error("seq {seq} is outside the checkpoint's range {first_seq}..={last_seq}")]
    SeqOutsideCheckpoint {
        seq: i64,
        first_seq: i64,
        last_seq: i64,
    },
    #[error("leaf_index {got} does not match seq - first_seq = {expected}")]
    LeafIndexMismatch { expected: u64, got: u64 },
    #[error("tree_size {got} does not match the checkpoint's range size {expected}")]
    TreeSizeMismatch { expected: u64, got: u64 },
    #[error("the Merkle path does not lead from event_hash to the signed merkle_root")]
    PathMismatch,
    #[error("event_hash is not the checkpoint's head_hash although seq is the checkpoint's seq")]
    HeadMismatch,
    #[error("the supplied event bytes and prev_hash do not hash to event_hash")]
    EventHashMismatch,
    /// The proof carries no event bytes: it proves a link hash, not which event id it is.
    #[error("the proof carries no event bytes: it proves event_hash {event_hash}, not that it is event {event_id:?} (the event id is only proven through the event bytes)")]
    EventBytesMissing {
        event_id: String,
        event_hash: String,
    },
    #[error("the proven event bytes are event {actual:?}, but the proof names {claimed:?}")]
    EventIdMismatch { claimed: String, actual: String },
}

impl InclusionProof {
    /// Build the proof of the event at `seq`, given the link hashes of the checkpoint's whole
    /// range (`range_hashes[i]` = hash of seq `first_seq + i`). Refuses to produce a proof that
    /// would not check against the checkpoint (stored data that disagrees with it).
    pub fn build(
        event_id: &str,
        seq: u64,
        range_hashes: &[Hash32],
        checkpoint: &SignedCheckpoint,
        event: Option<ProvenEvent>,
    ) -> Result<Self, ProofError> {
        let f = &checkpoint.fields;
        if seq < f.first_seq || seq > f.seq {
            return Err(ProofError::SeqOutsideCheckpoint {
                seq: i64::try_from(seq).unwrap_or(i64::MAX),
                first_seq: i64::try_from(f.first_seq).unwrap_or(i64::MAX),
                last_seq: i64::try_from(f.seq).unwrap_or(i64::MAX),
            });
        }
        if range_hashes.len() as u64 != f.tree_size() {
            return Err(ProofError::TreeSizeMismatch {
                expected: f.tree_size(),
                got: range_hashes.len() as u64,
            });
        }
        if merkle::root(range_hashes) != f.merkle_root {
            return Err(ProofError::PathMismatch);
        }
        let leaf_index = seq - f.first_seq;
        let path = merkle::inclusion_proof(range_hashes, leaf_index)
            .map_err(|e| ProofError::Malformed(e.to_string()))?;
        let cp = CheckpointJson::from(checkpoint);
        Ok(Self {
            event_id: event_id.to_owned(),
            chain_partition: cp.partition,
            seq: i64::try_from(seq).unwrap_or(i64::MAX),
            event_hash: hex::encode(range_hashes[leaf_index as usize]),
            leaf_index,
            tree_size: f.tree_size(),
            merkle_path: path.iter().map(hex::encode).collect(),
            checkpoint: cp,
            event,
        })
    }
}

/// Check that the proof proves *the event with its `event_id`*: [`check_proof`], and the proof
/// must carry the event bytes, which must decode (under their canonical version) to an event
/// with that id. Without the bytes a proof only proves a hash; its `event_id` is a label anyone
/// can change, so it is refused here ([`ProofError::EventBytesMissing`]).
pub fn check_event_proof(keys: &KeySet, proof: &InclusionProof) -> Result<(), ProofError> {
    check_proof(keys, proof)?;
    let Some(ev) = &proof.event else {
        return Err(ProofError::EventBytesMissing {
            event_id: proof.event_id.clone(),
            event_hash: proof.event_hash.clone(),
        });
    };
    let bytes = B64
        .decode(ev.canonical.trim())
        .map_err(|_| ProofError::Malformed("event.canonical is not base64".into()))?;
    let decoded: schemas::event::AuditEvent =
        schemas::avro::decode_datum_version(&bytes, ev.canonical_version).map_err(|e| {
            ProofError::Malformed(format!("event.canonical does not decode as an event: {e}"))
        })?;
    if decoded.event_id != proof.event_id {
        return Err(ProofError::EventIdMismatch {
            claimed: proof.event_id.clone(),
            actual: decoded.event_id,
        });
    }
    Ok(())
}

/// Check an inclusion proof with only the public key set.
///
/// Success proves: a key of the set, valid at the checkpoint's time, signed a tree over the
/// link hashes of `first_seq ..= seq` of this partition, and `event_hash` is the leaf at this
/// event's position. Link hashes commit to (partition, seq, predecessor, event bytes), so the
/// event hash names exactly one event at that place in the chain.
///
/// If the proof carries `event` (canonical bytes and prev hash), this also proves that those
/// exact bytes are the event that was chained at `seq` (they hash to `event_hash` with the
/// partition and seq). Whether the bytes decode to an event with the claimed `event_id` is
/// checked by [`check_event_proof`], which a caller asking about an id must use: without
/// `event`, `event_id` is an unproven label.
pub fn check_proof(keys: &KeySet, proof: &InclusionProof) -> Result<(), ProofError> {
    let cp = SignedCheckpoint::try_from(&proof.checkpoint)?;
    verify_signed(keys, &cp)?;
    let f = &cp.fields;
    if proof.chain_partition != proof.checkpoint.partition {
        return Err(ProofError::PartitionMismatch {
            proof: proof.chain_partition,
            checkpoint: proof.checkpoint.partition,
        });
    }
    let outside = || ProofError::SeqOutsideCheckpoint {
        seq: proof.seq,
        first_seq: proof.checkpoint.first_seq,
        last_seq: proof.checkpoint.seq,
    };
    let seq = u64::try_from(proof.seq).map_err(|_| outside())?;
    if seq < f.first_seq || seq > f.seq {
        return Err(outside());
    }
    if proof.leaf_index != seq - f.first_seq {
        return Err(ProofError::LeafIndexMismatch {
            expected: seq - f.first_seq,
            got: proof.leaf_index,
        });
    }
    if proof.tree_size != f.tree_size() {
        return Err(ProofError::TreeSizeMismatch {
            expected: f.tree_size(),
            got: proof.tree_size,
        });
    }
    let event_hash = hex32("event_hash", &proof.event_hash).map_err(ProofError::Malformed)?;
    // Bounded before decoding: a path never exceeds 64 hashes, whatever the file says.
    if proof.merkle_path.len() > 64 {
        return Err(ProofError::PathMismatch);
    }
    let path = proof
        .merkle_path
        .iter()
        .map(|h| hex32("merkle_path entry", h))
        .collect::<Result<Vec<_>, _>>()
        .map_err(ProofError::Malformed)?;
    let implied = merkle::root_from_inclusion(
        merkle::leaf_hash(&event_hash),
        proof.leaf_index,
        f.tree_size(),
        &path,
    );
    if implied != Some(f.merkle_root) {
        return Err(ProofError::PathMismatch);
    }
    if seq == f.seq && event_hash != f.head_hash {
        return Err(ProofError::HeadMismatch);
    }
    if let Some(ev) = &proof.event {
        let prev = hex32("event.prev_hash", &ev.prev_hash).map_err(ProofError::Malformed)?;
        let canonical = B64
            .decode(ev.canonical.trim())
            .map_err(|_| ProofError::Malformed("event.canonical is not base64".into()))?;
        // The bytes must recompute to the proven leaf under a chain rule (v2 binds the schema
        // of `canonical_version`); two rules cannot give one hash for different inputs (their
        // domain tags differ), so accepting either proves exactly these bytes.
        let fp = crate::chain::schema_fingerprint(ev.canonical_version).unwrap_or(0);
        if ChainRule::detect(f.partition, seq, fp, &prev, &canonical, &event_hash).is_none() {
            return Err(ProofError::EventHashMismatch);
        }
    }
    Ok(())
}
