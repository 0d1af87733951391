//! The RFC 6962 / RFC 9162 Merkle tree (the Certificate Transparency tree).
//!
//! One tree per partition: leaf `i` is the 32-byte link hash of the record with seq `i + 1`, so
//! the tree size is the seq of the newest record. Using the standard tree (leaf prefix 0x00,
//! node prefix 0x01, empty tree = SHA-256(""), split at the largest power of two below n) means
//! any transparency-log tool can check our roots and proofs; the CT reference vectors in
//! `vectors.rs` pin that.
//!
//! - [`CompactRange`]: the growing tree in O(log n) memory (what the chainer keeps).
//! - [`proof`]: inclusion and consistency proofs, generated from a [`NodeSource`] and verified
//!   with the RFC 9162 §2.1.3.2 / §2.1.4.2 algorithms.

mod compact;
pub mod proof;

#[cfg(test)]
mod naive;
#[cfg(test)]
mod props;
#[cfg(test)]
mod vectors;

use sha2::{Digest, Sha256};
use thiserror::Error;

pub use compact::CompactRange;
pub use proof::{
    consistency_proof, inclusion_proof, root_at, root_from_inclusion, verify_consistency,
    verify_inclusion, verify_inclusion_of_data, MemoryTree, NodeSource, ProofError,
};

/// A SHA-256 output: leaf hashes, node hashes and roots.
pub type Hash32 = [u8; 32];

/// Errors of tree state and proof generation (bad arguments, not bad proofs: those are
/// [`ProofError`]).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TreeError {
    #[error("leaf index {index} is outside a tree of {size} leaves")]
    IndexOutOfRange { index: u64, size: u64 },
    #[error("a consistency proof needs 0 < old size ({old}) <= new size ({new})")]
    BadSizes { old: u64, new: u64 },
    #[error("the node source holds {available} leaves, the request needs {needed}")]
    NotEnoughLeaves { needed: u64, available: u64 },
    #[error("a compact range of size {size} has {expected} subtree roots, got {got}")]
    BadCompactRange {
        size: u64,
        expected: usize,
        got: usize,
    },
    #[error("the tree is full (u64::MAX leaves)")]
    Full,
}

/// RFC 9162 §2.1.1: MTH({d}) = SHA-256(0x00 ‖ d).
pub fn leaf_hash(data: &[u8]) -> Hash32 {
    let mut h = Sha256::new();
    h.update([0x00]);
    h.update(data);
    h.finalize().into()
}

/// RFC 9162 §2.1.1: `MTH(D[n]) = SHA-256(0x01 ‖ MTH(D[0:k]) ‖ MTH(D[k:n]))`.
pub fn node_hash(left: &Hash32, right: &Hash32) -> Hash32 {
    let mut h = Sha256::new();
    h.update([0x01]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// RFC 9162 §2.1.1: MTH({}) = SHA-256("").
pub fn empty_root() -> Hash32 {
    Sha256::digest([]).into()
}

/// The root of a tree over already hashed leaves (O(n) time, O(log n) memory).
pub fn root_of(leaf_hashes: &[Hash32]) -> Hash32 {
    let mut r = CompactRange::new();
    for h in leaf_hashes {
        // A slice cannot hold u64::MAX hashes, so the range cannot be full.
        r.append(*h).expect("a slice is shorter than u64::MAX");
    }
    r.root()
}

/// The largest power of two strictly below `n` (n ≥ 2): RFC 9162's split point `k`.
pub(crate) fn split_point(n: u64) -> u64 {
    debug_assert!(n >= 2);
    1u64 << (63 - (n - 1).leading_zeros())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_point_is_largest_power_of_two_below() {
        assert_eq!(split_point(2), 1);
        assert_eq!(split_point(3), 2);
        assert_eq!(split_point(4), 2);
        assert_eq!(split_point(5), 4);
        assert_eq!(split_point(8), 4);
        assert_eq!(split_point(9), 8);
        assert_eq!(split_point(u64::MAX), 1 << 63);
        assert_eq!(split_point((1 << 63) + 1), 1 << 63);
        assert_eq!(split_point(1 << 63), 1 << 62);
    }
}
