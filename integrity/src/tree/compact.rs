//! The growing tree in O(log n) memory.
//!
//! The chainer needs the root of the whole partition tree at every checkpoint, and the
//! verifier needs to recompute it while streaming a partition, without either holding all the
//! leaves. A tree of `n` leaves is a sequence of perfect subtrees, one per set bit of `n` from
//! the highest (leftmost) down (the right edge of the tree; transparency-dev calls this a
//! "compact range" [0, n)). Appending a leaf merges equal-sized subtrees like a binary
//! counter; the root folds them right to left, which is exactly RFC 9162's split rule (the left
//! part of every split is the largest perfect power of two).

use serde::{Deserialize, Serialize};

use super::{empty_root, node_hash, Hash32, TreeError};

/// The roots of the perfect subtrees on the right edge of a tree of `size` leaves.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "CompactRangeRepr", into = "CompactRangeRepr")]
pub struct CompactRange {
    size: u64,
    /// One root per set bit of `size`, largest subtree first.
    peaks: Vec<Hash32>,
}

impl CompactRange {
    /// The empty tree.
    pub fn new() -> Self {
        Self::default()
    }

    /// Rebuilds a range persisted with [`size`](Self::size) and [`peaks`](Self::peaks); the
    /// number of peaks must be the number of set bits of `size`.
    pub fn from_parts(size: u64, peaks: Vec<Hash32>) -> Result<Self, TreeError> {
        let expected = size.count_ones() as usize;
        if peaks.len() != expected {
            return Err(TreeError::BadCompactRange {
                size,
                expected,
                got: peaks.len(),
            });
        }
        Ok(Self { size, peaks })
    }

    /// Number of leaves appended so far (the tree size).
    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn is_empty(&self) -> bool {
        self.size == 0
    }

    /// The perfect-subtree roots, largest subtree first.
    pub fn peaks(&self) -> &[Hash32] {
        &self.peaks
    }

    /// Appends a leaf hash (already prefixed and hashed, see [`super::leaf_hash`]).
    pub fn append(&mut self, leaf_hash: Hash32) -> Result<(), TreeError> {
        let new_size = self.size.checked_add(1).ok_or(TreeError::Full)?;
        // Each trailing one bit of the old size is a subtree as large as the one being carried:
        // merge them, as a binary increment carries.
        let mut node = leaf_hash;
        for _ in 0..self.size.trailing_ones() {
            // `from_parts` and `append` keep peaks.len() == popcount(size) ≥ trailing_ones.
            if let Some(left) = self.peaks.pop() {
                node = node_hash(&left, &node);
            }
        }
        self.peaks.push(node);
        self.size = new_size;
        Ok(())
    }

    /// MTH of the leaves appended so far.
    pub fn root(&self) -> Hash32 {
        let mut it = self.peaks.iter().rev();
        let Some(&last) = it.next() else {
            return empty_root();
        };
        it.fold(last, |right, left| node_hash(left, &right))
    }
}

/// Persisted form: the size and the base64 peaks (the same encoding as checkpoint roots).
#[derive(Serialize, Deserialize)]
struct CompactRangeRepr {
    size: u64,
    peaks: Vec<crate::b64::B64Hash>,
}

impl TryFrom<CompactRangeRepr> for CompactRange {
    type Error = TreeError;
    fn try_from(r: CompactRangeRepr) -> Result<Self, TreeError> {
        CompactRange::from_parts(r.size, r.peaks.into_iter().map(|h| h.0).collect())
    }
}

impl From<CompactRange> for CompactRangeRepr {
    fn from(c: CompactRange) -> Self {
        CompactRangeRepr {
            size: c.size,
            peaks: c.peaks.into_iter().map(crate::b64::B64Hash).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{leaf_hash, naive};
    use super::*;

    #[test]
    fn matches_the_recursive_definition_at_every_size() {
        let leaves: Vec<Vec<u8>> = (0..130u32).map(|i| i.to_be_bytes().to_vec()).collect();
        let mut r = CompactRange::new();
        assert_eq!(r.root(), empty_root());
        for n in 1..=leaves.len() {
            r.append(leaf_hash(&leaves[n - 1])).unwrap();
            assert_eq!(r.root(), naive::mth(&leaves[..n]), "size {n}");
            assert_eq!(r.size(), n as u64);
            assert_eq!(r.peaks().len(), (n as u64).count_ones() as usize);
        }
    }

    #[test]
    fn persisted_form_round_trips_and_is_validated() {
        let mut r = CompactRange::new();
        for i in 0..11u8 {
            r.append(leaf_hash(&[i])).unwrap();
        }
        let json = serde_json::to_string(&r).unwrap();
        let back: CompactRange = serde_json::from_str(&json).unwrap();
        assert_eq!(back, r);
        assert_eq!(back.root(), r.root());

        // 11 = 0b1011 needs 3 peaks.
        let bad = CompactRange::from_parts(11, r.peaks()[..2].to_vec());
        assert_eq!(
            bad,
            Err(TreeError::BadCompactRange {
                size: 11,
                expected: 3,
                got: 2
            })
        );
        let tampered = json.replace("\"size\":11", "\"size\":12");
        assert!(serde_json::from_str::<CompactRange>(&tampered).is_err());
    }

    #[test]
    fn a_full_tree_refuses_to_grow() {
        let mut r = CompactRange::from_parts(u64::MAX, vec![[7; 32]; 64]).unwrap();
        assert_eq!(r.append([0; 32]), Err(TreeError::Full));
        assert_eq!(r.size(), u64::MAX);
    }
}
