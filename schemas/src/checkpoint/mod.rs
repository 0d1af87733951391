//! Ed25519-signed checkpoints, the public key set, and inclusion proofs.
//!
//! A checkpoint says: "in chain `chain_id`, partition `p`, the record at `seq` has hash
//! `head_hash`, and the link hashes of seqs `first_seq ..= seq` form the RFC 6962 tree with root
//! `merkle_root`", signed at `time_us` by key `key_id`.
//!
//! # Signing input (v1) — reproduce byte for byte to verify in another language
//!
//! ```text
//! u32 BE 19 ‖ "audit-checkpoint/v1"     domain tag, length-prefixed like the strings below
//! u32 BE len ‖ chain_id                 UTF-8 bytes
//! u32 BE     partition                  0 ..= 2^31-1
//! u64 BE     first_seq                  1 ..= seq
//! u64 BE     seq                        ≤ 2^63-1
//! 32 bytes   head_hash                  link hash of `seq`
//! 32 bytes   merkle_root                RFC 6962 root over the link hashes of first_seq ..= seq
//! i64 BE     time_us                    two's complement, µs since the Unix epoch
//! u32 BE len ‖ key_id                   UTF-8 bytes
//! ```
//!
//! # Signing input (v2): the signed partition set
//!
//! A checkpoint with `partition_count > 0` (every checkpoint the chainer signs since the
//! heartbeat change) is signed over the v1 layout with two differences: the domain tag is
//! `u32 BE 19 ‖ "audit-checkpoint/v2"`, and `u32 BE partition_count` (1 ..= 2^31-1, and
//! `partition < partition_count`) follows `time_us`, before `key_id`. `partition_count = 0`
//! means "not signed" and selects v1, so checkpoints signed before the field existed (decoded
//! with the Avro default 0) verify unchanged, and a v2 checkpoint whose count is removed or
//! changed fails its signature.
//!
//! The signature is plain Ed25519 (RFC 8032, not Ed25519ph) over exactly those bytes: 64 bytes.
//! Every variable-length field is length-prefixed and every other field has a fixed width, so no
//! two different field tuples give the same input; the tag keeps a checkpoint signature from
//! ever being valid for anything else the same key might sign.
//!
//! # Keys and rotation
//!
//! A [`KeySet`] lists public keys with a validity window `[not_before_us, not_after_us)` on
//! the checkpoint's `time_us`. Rotating = adding a new key valid from T and closing the old key's
//! window at T: checkpoints signed before T still verify with the old key forever, and a
//! retired key can no longer sign checkpoints that would be accepted as newer.

mod error;
mod keys;
mod keyset;
mod proof;
mod signing;
mod wire;

#[cfg(test)]
mod tests;

pub use error::CheckpointError;
pub use keys::{generate_pkcs8, SecretBytes, SigningKey};
pub use keyset::{KeySet, PublicKeyEntry};
pub use proof::{check_event_proof, check_proof, InclusionProof, ProofError, ProvenEvent};
pub use signing::{
    sign, sign_fields, verify, verify_signed, CheckpointFields, SignedCheckpoint,
    CHECKPOINT_DOMAIN, CHECKPOINT_DOMAIN_V2, SIGNATURE_LEN,
};
pub use wire::CheckpointJson;
