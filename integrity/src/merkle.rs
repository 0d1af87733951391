//! The range tree of a checkpoint: RFC 6962 / RFC 9162 (the Certificate Transparency tree) over
//! the link hashes of `first_seq ..= seq`, with [`crate::tree`]'s hashing.
//!
//! A checkpoint signs the root of the tree whose leaves are the 32-byte link hashes of the
//! events of its range, in seq order, so one event can be proven with O(log n) hashes. Using the
//! standard tree (leaf prefix 0x00, node prefix 0x01, empty tree = SHA-256(""), split at the
//! largest power of two below n) means any CT-compatible verifier in any language can check our
//! proofs; the CT reference vectors in the tests pin that.

use thiserror::Error;

use crate::tree::Hash32;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum MerkleError {
    #[error("leaf index {index} is outside a tree of {size} leaves")]
    IndexOutOfRange { index: u64, size: u64 },
}

// One definition of the RFC 9162 hashing for the whole crate: the range tree and the
// partition's whole tree must agree bit for bit.
pub use crate::tree::{empty_root, leaf_hash, node_hash};

/// The Merkle tree hash of `leaves` (leaf data, hashed here with the 0x00 prefix).
pub fn root<L: AsRef<[u8]>>(leaves: &[L]) -> Hash32 {
    let mut b = MerkleBuilder::new();
    for l in leaves {
        b.push(l.as_ref());
    }
    b.root()
}

/// Largest power of two strictly below `n` (n ≥ 2): RFC 6962's split point.
fn split(n: usize) -> usize {
    debug_assert!(n >= 2);
    let p = n.next_power_of_two();
    if p == n {
        n / 2
    } else {
        p / 2
    }
}

/// MTH over already-hashed leaves.
fn subtree_root(hashes: &[Hash32]) -> Hash32 {
    match hashes.len() {
        0 => empty_root(),
        1 => hashes[0],
        n => {
            let k = split(n);
            node_hash(&subtree_root(&hashes[..k]), &subtree_root(&hashes[k..]))
        }
    }
}

/// RFC 6962 §2.1.1 PATH(index, leaves), deepest sibling first.
pub fn inclusion_proof<L: AsRef<[u8]>>(
    leaves: &[L],
    index: u64,
) -> Result<Vec<Hash32>, MerkleError> {
    let size = leaves.len() as u64;
    let idx = usize::try_from(index)
        .ok()
        .filter(|&i| i < leaves.len())
        .ok_or(MerkleError::IndexOutOfRange { index, size })?;
    let hashes: Vec<Hash32> = leaves.iter().map(|l| leaf_hash(l.as_ref())).collect();
    let mut path = Vec::new();
    path_rec(&hashes, idx, &mut path);
    Ok(path)
}

fn path_rec(hashes: &[Hash32], m: usize, out: &mut Vec<Hash32>) {
    let n = hashes.len();
    if n <= 1 {
        return;
    }
    let k = split(n);
    if m < k {
        path_rec(&hashes[..k], m, out);
        out.push(subtree_root(&hashes[k..]));
    } else {
        path_rec(&hashes[k..], m - k, out);
        out.push(subtree_root(&hashes[..k]));
    }
}

/// RFC 9162 §2.1.3.2: does `proof` show that `leaf` (leaf data) is at `index` in the tree of
/// `tree_size` leaves whose root is `root`?
pub fn verify_inclusion(
    leaf: &[u8],
    index: u64,
    tree_size: u64,
    proof: &[Hash32],
    root: &Hash32,
) -> bool {
    root_from_inclusion(leaf_hash(leaf), index, tree_size, proof).as_ref() == Some(root)
}

/// The root that `proof` implies for the leaf hash at `index`, or `None` if the proof's shape
/// cannot fit a tree of `tree_size` (too long, too short, index out of range): RFC 9162
/// §2.1.3.2 as [`crate::tree::root_from_inclusion`] computes it.
pub fn root_from_inclusion(
    leaf_hash: Hash32,
    index: u64,
    tree_size: u64,
    proof: &[Hash32],
) -> Option<Hash32> {
    crate::tree::root_from_inclusion(&leaf_hash, index, tree_size, proof).ok()
}

/// Streaming tree hash: push leaves in order, read the root of everything pushed so far.
/// O(log n) memory, one leaf hash plus amortised one node hash per leaf; used by the chainer to
/// build a checkpoint's root and by the verifier to recompute it without keeping the range.
#[derive(Debug, Clone, Default)]
pub struct MerkleBuilder {
    /// Roots of complete subtrees, strictly decreasing sizes (the binary digits of `len`).
    stack: Vec<(u64, Hash32)>,
    len: u64,
}

impl MerkleBuilder {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Append leaf data (hashed with the 0x00 prefix).
    pub fn push(&mut self, leaf: &[u8]) {
        self.push_leaf_hash(leaf_hash(leaf));
    }

    /// Append an already prefixed-and-hashed leaf.
    pub fn push_leaf_hash(&mut self, h: Hash32) {
        let mut node = (1u64, h);
        while let Some(&(size, left)) = self.stack.last() {
            if size != node.0 {
                break;
            }
            self.stack.pop();
            node = (size * 2, node_hash(&left, &node.1));
        }
        self.stack.push(node);
        self.len += 1;
    }

    /// MTH of the leaves pushed so far. Folding the complete subtrees right to left is exactly
    /// RFC 6962's split rule: the left part of every split is the largest complete power of two.
    pub fn root(&self) -> Hash32 {
        let mut it = self.stack.iter().rev();
        let Some(&(_, mut r)) = it.next() else {
            return empty_root();
        };
        for (_, left) in it {
            r = node_hash(left, &r);
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest, Sha256};

    fn unhex(s: &str) -> Vec<u8> {
        hex::decode(s).unwrap()
    }
    fn h32(s: &str) -> Hash32 {
        unhex(s).try_into().unwrap()
    }

    // Certificate Transparency's reference leaves and tree heads (RFC 6962 test data, as used by
    // the CT implementations' own tests).
    const CT_LEAVES: [&str; 8] = [
        "",
        "00",
        "10",
        "2021",
        "3031",
        "40414243",
        "5051525354555657",
        "606162636465666768696a6b6c6d6e6f",
    ];
    const CT_ROOTS: [&str; 9] = [
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
        "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
        "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
    ];

    fn ct_leaves() -> Vec<Vec<u8>> {
        CT_LEAVES.iter().map(|s| unhex(s)).collect()
    }

    #[test]
    fn ct_reference_roots() {
        let leaves = ct_leaves();
        for (n, want) in CT_ROOTS.iter().enumerate() {
            assert_eq!(hex::encode(root(&leaves[..n])), *want, "size {n}");
        }
    }

    #[test]
    fn ct_reference_inclusion_proofs() {
        let leaves = ct_leaves();
        let root8 = h32(CT_ROOTS[8]);
        let cases: [(u64, [&str; 3]); 2] = [
            (
                0,
                [
                    "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
                    "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                    "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
                ],
            ),
            (
                5,
                [
                    "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
                    "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
                ],
            ),
        ];
        for (index, path) in cases {
            let want: Vec<Hash32> = path.iter().map(|s| h32(s)).collect();
            assert_eq!(inclusion_proof(&leaves, index).unwrap(), want);
            assert!(verify_inclusion(
                &leaves[index as usize],
                index,
                8,
                &want,
                &root8
            ));
        }
    }

    #[test]
    fn out_of_range_is_an_error_not_a_panic() {
        let leaves = ct_leaves();
        assert_eq!(
            inclusion_proof(&leaves, 8),
            Err(MerkleError::IndexOutOfRange { index: 8, size: 8 })
        );
        assert!(inclusion_proof::<Vec<u8>>(&[], 0).is_err());
        assert!(!verify_inclusion(b"", 0, 0, &[], &empty_root()));
        assert!(!verify_inclusion(
            b"",
            u64::MAX,
            u64::MAX,
            &[],
            &empty_root()
        ));
    }

    #[test]
    fn single_leaf_tree_has_empty_proof() {
        let r = root(&[b"x"]);
        assert_eq!(r, leaf_hash(b"x"));
        assert_eq!(inclusion_proof(&[b"x"], 0).unwrap(), Vec::<Hash32>::new());
        assert!(verify_inclusion(b"x", 0, 1, &[], &r));
        // A longer proof than the tree allows must not verify.
        assert!(!verify_inclusion(b"x", 0, 1, &[r], &r));
    }

    #[test]
    fn builder_matches_recursive_definition() {
        let leaves: Vec<Hash32> = (0..70u8).map(|i| [i; 32]).collect();
        let hashes: Vec<Hash32> = leaves.iter().map(|l| leaf_hash(l)).collect();
        let mut b = MerkleBuilder::new();
        assert_eq!(b.root(), empty_root());
        for n in 1..=leaves.len() {
            b.push(&leaves[n - 1]);
            assert_eq!(b.root(), subtree_root(&hashes[..n]), "size {n}");
            assert_eq!(b.len(), n as u64);
        }
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn every_index_verifies_and_any_bit_flip_fails(
                n in 1usize..80,
                seed in any::<u64>(),
                pick in any::<prop::sample::Index>(),
                bit in 0usize..256,
            ) {
                let leaves: Vec<Hash32> = (0..n as u64)
                    .map(|i| Sha256::digest((seed ^ i).to_be_bytes()).into())
                    .collect();
                let r = root(&leaves);
                for i in 0..n {
                    let p = inclusion_proof(&leaves, i as u64).unwrap();
                    prop_assert!(verify_inclusion(&leaves[i], i as u64, n as u64, &p, &r));
                }
                let i = pick.index(n);
                let proof = inclusion_proof(&leaves, i as u64).unwrap();
                let (byte, mask) = (bit / 8, 1u8 << (bit % 8));

                let mut leaf = leaves[i];
                leaf[byte] ^= mask;
                prop_assert!(!verify_inclusion(&leaf, i as u64, n as u64, &proof, &r));

                let mut bad_root = r;
                bad_root[byte] ^= mask;
                prop_assert!(!verify_inclusion(&leaves[i], i as u64, n as u64, &proof, &bad_root));

                if !proof.is_empty() {
                    let mut bad = proof.clone();
                    let k = bit % bad.len();
                    bad[k][byte] ^= mask;
                    prop_assert!(!verify_inclusion(&leaves[i], i as u64, n as u64, &bad, &r));
                    // Truncated or extended paths fail too.
                    prop_assert!(!verify_inclusion(
                        &leaves[i], i as u64, n as u64, &proof[..proof.len() - 1], &r));
                }
                let mut longer = proof.clone();
                longer.push(r);
                prop_assert!(!verify_inclusion(&leaves[i], i as u64, n as u64, &longer, &r));

                // Flipping any bit of the index gives another position (or one outside the
                // tree); the same leaf cannot also be there (all leaves distinct).
                let bad_index = (i as u64) ^ (1u64 << (bit % 64));
                prop_assert!(!verify_inclusion(&leaves[i], bad_index, n as u64, &proof, &r));
            }
        }
    }
}
