//! Inclusion and consistency proofs (RFC 9162 §2.1.3 and §2.1.4).
//!
//! Generation is written against a [`NodeSource`] (anything that can give the root of a
//! perfect, aligned subtree), so the same code serves a verifier holding leaf hashes in memory
//! (`[Hash32]`, O(n) per proof since the proof's subtrees are disjoint), an auditor that keeps
//! every interior node ([`MemoryTree`], O(log n) per proof) and, later, a store of persisted
//! nodes. Every subtree a proof names is a range `[start, end)` of the RFC's recursion; its
//! hash is assembled from perfect subtrees exactly as MTH splits it.
//!
//! Verification follows the RFC's algorithms step by step, after checking the proof length
//! the sizes imply (so a wrong-length proof gets a precise error, and the work is bounded by
//! the proof length: sizes are attacker-controlled `u64`s and must never panic or loop).

use thiserror::Error;

use super::{empty_root, leaf_hash, node_hash, split_point, Hash32, TreeError};

/// Why a proof does not verify.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ProofError {
    #[error("leaf index {index} is outside a tree of {size} leaves")]
    IndexOutOfRange { index: u64, size: u64 },
    #[error("the new tree ({new}) is smaller than the old one ({old}): not an extension")]
    SizeRollback { old: u64, new: u64 },
    #[error("the sizes imply a proof of {expected} hashes, got {got}")]
    WrongLength { expected: usize, got: usize },
    #[error("two trees of size {size} with different roots (a fork)")]
    RootsDiffer { size: u64 },
    #[error("the proof does not lead to the old root")]
    OldRootMismatch,
    #[error("the proof does not lead to the new root")]
    NewRootMismatch,
    #[error("the proof does not lead to the root")]
    RootMismatch,
}

/// Roots of perfect, aligned subtrees of one tree.
pub trait NodeSource {
    /// A source's own failures (I/O), plus bad requests.
    type Error: From<TreeError>;

    /// Number of leaves available.
    fn size(&self) -> u64;

    /// The root of the perfect subtree of `2^level` leaves whose first leaf is
    /// `index << level` (the whole subtree must lie below [`size`](Self::size)).
    fn perfect_node(&self, level: u32, index: u64) -> Result<Hash32, Self::Error>;
}

/// Leaf hashes in memory: perfect nodes are recomputed from the leaves.
impl NodeSource for [Hash32] {
    type Error = TreeError;

    fn size(&self) -> u64 {
        self.len() as u64
    }

    fn perfect_node(&self, level: u32, index: u64) -> Result<Hash32, TreeError> {
        let (start, end) = perfect_bounds(level, index, self.size())?;
        // Bounds were checked against self.len(), so they fit in usize.
        Ok(super::root_of(&self[start as usize..end as usize]))
    }
}

impl NodeSource for Vec<Hash32> {
    type Error = TreeError;

    fn size(&self) -> u64 {
        self.as_slice().size()
    }

    fn perfect_node(&self, level: u32, index: u64) -> Result<Hash32, TreeError> {
        self.as_slice().perfect_node(level, index)
    }
}

/// `[start, end)` of a perfect subtree, checked against `available` leaves.
fn perfect_bounds(level: u32, index: u64, available: u64) -> Result<(u64, u64), TreeError> {
    let width = 1u64.checked_shl(level);
    let start = width.and_then(|w| index.checked_mul(w));
    let end = start.zip(width).and_then(|(s, w)| s.checked_add(w));
    match (start, end) {
        (Some(start), Some(end)) if end <= available => Ok((start, end)),
        _ => Err(TreeError::NotEnoughLeaves {
            needed: end.unwrap_or(u64::MAX),
            available,
        }),
    }
}

/// Every perfect subtree's root kept in memory (≈ 2n hashes): O(log n) proofs for an auditor
/// that has read a whole partition.
#[derive(Debug, Clone, Default)]
pub struct MemoryTree {
    /// `levels[l][i]` is the root of leaves `[i·2^l, (i+1)·2^l)`.
    levels: Vec<Vec<Hash32>>,
}

impl MemoryTree {
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends a leaf hash.
    pub fn append(&mut self, leaf_hash: Hash32) {
        let mut node = leaf_hash;
        let mut level = 0;
        loop {
            if self.levels.len() == level {
                self.levels.push(Vec::new());
            }
            let row = &mut self.levels[level];
            row.push(node);
            // A row with an even count just completed a pair: its parent is now known.
            if row.len() % 2 == 1 {
                break;
            }
            node = node_hash(&row[row.len() - 2], &row[row.len() - 1]);
            level += 1;
        }
    }

    /// Number of leaves appended.
    pub fn size(&self) -> u64 {
        self.levels.first().map_or(0, |l| l.len() as u64)
    }

    /// Root of the first `size` leaves (any earlier tree head, not only the latest).
    pub fn root_at(&self, size: u64) -> Result<Hash32, TreeError> {
        root_at(self, size)
    }
}

impl NodeSource for MemoryTree {
    type Error = TreeError;

    fn size(&self) -> u64 {
        MemoryTree::size(self)
    }

    fn perfect_node(&self, level: u32, index: u64) -> Result<Hash32, TreeError> {
        perfect_bounds(level, index, self.size())?;
        self.levels
            .get(level as usize)
            .and_then(|row| row.get(usize::try_from(index).ok()?))
            .copied()
            .ok_or(TreeError::NotEnoughLeaves {
                needed: u64::MAX,
                available: self.size(),
            })
    }
}

/// `MTH(D[start:end])` for `start < end`, from perfect subtrees along the RFC's split rule.
fn range_hash<S: NodeSource + ?Sized>(src: &S, start: u64, end: u64) -> Result<Hash32, S::Error> {
    let n = end - start;
    if n == 0 {
        return Ok(empty_root());
    }
    if n.is_power_of_two() && start % n == 0 {
        let level = n.trailing_zeros();
        return src.perfect_node(level, start >> level);
    }
    let k = split_point(n);
    Ok(node_hash(
        &range_hash(src, start, start + k)?,
        &range_hash(src, start + k, end)?,
    ))
}

fn check_available<S: NodeSource + ?Sized>(src: &S, needed: u64) -> Result<(), TreeError> {
    if needed > src.size() {
        return Err(TreeError::NotEnoughLeaves {
            needed,
            available: src.size(),
        });
    }
    Ok(())
}

/// RFC 9162 §2.1.3.1 `PATH(index, D[size])`: the inclusion proof of leaf `index` in the tree of
/// the first `size` leaves of `src`, deepest sibling first.
pub fn inclusion_proof<S: NodeSource + ?Sized>(
    src: &S,
    index: u64,
    size: u64,
) -> Result<Vec<Hash32>, S::Error> {
    check_available(src, size)?;
    if index >= size {
        return Err(TreeError::IndexOutOfRange { index, size }.into());
    }
    let mut out = Vec::new();
    path(src, index, 0, size, &mut out)?;
    Ok(out)
}

fn path<S: NodeSource + ?Sized>(
    src: &S,
    m: u64,
    start: u64,
    end: u64,
    out: &mut Vec<Hash32>,
) -> Result<(), S::Error> {
    let n = end - start;
    if n <= 1 {
        return Ok(());
    }
    let k = split_point(n);
    if m < start + k {
        path(src, m, start, start + k, out)?;
        out.push(range_hash(src, start + k, end)?);
    } else {
        path(src, m, start + k, end, out)?;
        out.push(range_hash(src, start, start + k)?);
    }
    Ok(())
}

/// RFC 9162 §2.1.4.1 `PROOF(old, D[new])`: shows the tree of the first `new` leaves extends the
/// tree of the first `old`. Empty when `old == new` or `old == 0` (the empty tree is a prefix
/// of every tree; c2sp.org/tlog-witness sends an empty proof from size 0).
pub fn consistency_proof<S: NodeSource + ?Sized>(
    src: &S,
    old: u64,
    new: u64,
) -> Result<Vec<Hash32>, S::Error> {
    check_available(src, new)?;
    if old > new {
        return Err(TreeError::BadSizes { old, new }.into());
    }
    let mut out = Vec::new();
    if old > 0 {
        subproof(src, old, 0, new, true, &mut out)?;
    }
    Ok(out)
}

/// `SUBPROOF(m, D[start:end], b)` with `m` counted from `start`.
fn subproof<S: NodeSource + ?Sized>(
    src: &S,
    m: u64,
    start: u64,
    end: u64,
    b: bool,
    out: &mut Vec<Hash32>,
) -> Result<(), S::Error> {
    let n = end - start;
    if m == n {
        if !b {
            out.push(range_hash(src, start, end)?);
        }
        return Ok(());
    }
    let k = split_point(n);
    if m <= k {
        subproof(src, m, start, start + k, b, out)?;
        out.push(range_hash(src, start + k, end)?);
    } else {
        subproof(src, m - k, start + k, end, false, out)?;
        out.push(range_hash(src, start, start + k)?);
    }
    Ok(())
}

/// Bit length of `x` (Go's `bits.Len64`).
fn bit_len(x: u64) -> u32 {
    64 - x.leading_zeros()
}

/// Length of `PATH(index, D[size])` for `index < size`: the levels where the paths to `index`
/// and to the last leaf differ (`inner`), plus one left sibling per set bit above them
/// (`border`).
fn inclusion_len(index: u64, size: u64) -> (u32, u32) {
    let inner = bit_len(index ^ (size - 1));
    let border = index.checked_shr(inner).unwrap_or(0).count_ones();
    (inner, border)
}

/// RFC 9162 §2.1.3.2: the root that `proof` implies for `leaf_hash` at `index` in a tree of
/// `size` leaves.
pub fn root_from_inclusion(
    leaf_hash: &Hash32,
    index: u64,
    size: u64,
    proof: &[Hash32],
) -> Result<Hash32, ProofError> {
    // Step 1.
    if index >= size {
        return Err(ProofError::IndexOutOfRange { index, size });
    }
    let (inner, border) = inclusion_len(index, size);
    let expected = (inner + border) as usize;
    if proof.len() != expected {
        return Err(ProofError::WrongLength {
            expected,
            got: proof.len(),
        });
    }
    // Steps 2-4.
    let (mut fnode, mut snode) = (index, size - 1);
    let mut r = *leaf_hash;
    for p in proof {
        if snode == 0 {
            return Err(ProofError::WrongLength {
                expected,
                got: proof.len(),
            });
        }
        if fnode & 1 == 1 || fnode == snode {
            r = node_hash(p, &r);
            if fnode & 1 == 0 {
                while fnode & 1 == 0 && fnode != 0 {
                    fnode >>= 1;
                    snode >>= 1;
                }
            }
        } else {
            r = node_hash(&r, p);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    // Step 5 (the root comparison is the caller's).
    if snode != 0 {
        return Err(ProofError::WrongLength {
            expected,
            got: proof.len(),
        });
    }
    Ok(r)
}

/// RFC 9162 §2.1.3.2: does `proof` show `leaf_hash` at `index` in the tree (`size`, `root`)?
pub fn verify_inclusion(
    leaf_hash: &Hash32,
    index: u64,
    size: u64,
    proof: &[Hash32],
    root: &Hash32,
) -> Result<(), ProofError> {
    if root_from_inclusion(leaf_hash, index, size, proof)? == *root {
        Ok(())
    } else {
        Err(ProofError::RootMismatch)
    }
}

/// [`verify_inclusion`] for leaf data (hashed here with the 0x00 prefix).
pub fn verify_inclusion_of_data(
    leaf: &[u8],
    index: u64,
    size: u64,
    proof: &[Hash32],
    root: &Hash32,
) -> Result<(), ProofError> {
    verify_inclusion(&leaf_hash(leaf), index, size, proof, root)
}

/// RFC 9162 §2.1.4.2: does `proof` show that the tree (`new`, `new_root`) extends the tree
/// (`old`, `old_root`)?
///
/// The RFC's algorithm covers `0 < old < new`; the edges are decided here: equal sizes need
/// equal roots and an empty proof (different roots are a fork), and the empty tree (whose root
/// must be SHA-256("")) is extended by every tree with an empty proof.
pub fn verify_consistency(
    old: u64,
    new: u64,
    old_root: &Hash32,
    new_root: &Hash32,
    proof: &[Hash32],
) -> Result<(), ProofError> {
    if old > new {
        return Err(ProofError::SizeRollback { old, new });
    }
    if old == 0 || old == new {
        if !proof.is_empty() {
            return Err(ProofError::WrongLength {
                expected: 0,
                got: proof.len(),
            });
        }
        if old == 0 && *old_root != empty_root() {
            return Err(ProofError::OldRootMismatch);
        }
        if old == new && old_root != new_root {
            return Err(ProofError::RootsDiffer { size: old });
        }
        return Ok(());
    }

    // The proof names the old tree's last perfect subtree (of 2^shift leaves) unless the old
    // tree is that subtree itself, in which case the verifier already knows its root.
    let shift = old.trailing_zeros();
    let (inner, border) = inclusion_len(old - 1, new);
    let old_is_power_of_two = old == 1u64 << shift;
    let expected = usize::from(!old_is_power_of_two) + (inner - shift + border) as usize;
    if proof.len() != expected {
        return Err(ProofError::WrongLength {
            expected,
            got: proof.len(),
        });
    }
    let wrong_length = ProofError::WrongLength {
        expected,
        got: proof.len(),
    };

    // Step 1 (cannot trigger after the length check, kept as the RFC writes it).
    if proof.is_empty() {
        return Err(wrong_length);
    }
    // Step 2: if `old` is an exact power of 2, prepend old_root to the path.
    let seed = old_is_power_of_two.then_some(old_root);
    let mut path = seed.into_iter().chain(proof.iter());
    // Step 3.
    let (mut fnode, mut snode) = (old - 1, new - 1);
    // Step 4.
    while fnode & 1 == 1 {
        fnode >>= 1;
        snode >>= 1;
    }
    // Step 5.
    let Some(&first) = path.next() else {
        return Err(wrong_length);
    };
    let (mut fr, mut sr) = (first, first);
    // Step 6.
    for c in path {
        if snode == 0 {
            return Err(wrong_length);
        }
        if fnode & 1 == 1 || fnode == snode {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            if fnode & 1 == 0 {
                while fnode & 1 == 0 && fnode != 0 {
                    fnode >>= 1;
                    snode >>= 1;
                }
            }
        } else {
            sr = node_hash(&sr, c);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    // Step 7.
    if snode != 0 {
        return Err(wrong_length);
    }
    if fr != *old_root {
        return Err(ProofError::OldRootMismatch);
    }
    if sr != *new_root {
        return Err(ProofError::NewRootMismatch);
    }
    Ok(())
}

/// The root of the first `size` leaves of `src`.
pub fn root_at<S: NodeSource + ?Sized>(src: &S, size: u64) -> Result<Hash32, S::Error> {
    check_available(src, size)?;
    if size == 0 {
        return Ok(empty_root());
    }
    range_hash(src, 0, size)
}
