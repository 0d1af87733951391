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
//! # Signing input (v3): a C2SP tlog-checkpoint of the partition's whole tree
//!
//! A checkpoint with a `tree_root` (every checkpoint the chainer signs since whole-tree roots)
//! is signed over a C2SP tlog-checkpoint note body (c2sp.org/tlog-checkpoint), UTF-8:
//!
//! ```text
//! <chain_id>/partition/<partition>\n      origin: one log per partition
//! <seq>\n                                 tree size, ASCII decimal ("0" for genesis)
//! <base64 tree_root>\n                    RFC 9162 root over the link hashes of 1 ..= seq
//! audit-checkpoint/v3 <first_seq> <base64 head_hash> <base64 merkle_root> <time_us> <partition_count> <key_id>\n
//! ```
//!
//! (one space between the extension line's fields; numbers in ASCII decimal, `time_us` with a
//! `-` when negative; base64 standard and padded). The chain id and key id must be valid note
//! key names (no spaces, no `+`). The signature is Ed25519 over exactly that text, so the
//! checkpoint is also a C2SP signed note whose signer's key name is the origin:
//! [`SignedCheckpoint::to_note`] renders it, and any note verifier holding the vkey (key hash =
//! SHA-256(origin ‖ `\n` ‖ 0x01 ‖ public key)[:4]) accepts it. Consecutive checkpoints of a
//! partition are then consistent trees, provable with RFC 9162 consistency proofs. A v1/v2
//! input starts with the bytes `00 00 00 13`, which no note text does (the origin has no
//! control characters), so one key signing both never signs one message twice in two
//! meanings.
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
    CHECKPOINT_DOMAIN, CHECKPOINT_DOMAIN_V2, CHECKPOINT_EXTENSION_V3, SIGNATURE_LEN,
};
pub use wire::CheckpointJson;
