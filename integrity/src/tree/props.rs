//! Property tests: the production proofs against the independent recursive implementation in
//! `naive.rs`, mutated proofs, and bogus `u64` sizes (must fail cleanly, never panic or loop).

use proptest::prelude::*;

use super::proof::root_at;
use super::*;

/// Distinct leaves (so a proof for one position cannot also be valid for another).
fn leaves(n: usize, seed: u64) -> Vec<Vec<u8>> {
    (0..n as u64)
        .map(|i| [seed.to_be_bytes(), i.to_be_bytes()].concat())
        .collect()
}

fn flip(p: &[Hash32], which: usize, bit: usize) -> Vec<Hash32> {
    let mut p = p.to_vec();
    let k = which % p.len();
    p[k][bit / 8 % 32] ^= 1 << (bit % 8);
    p
}

/// Sizes an attacker might send: small, around powers of two, and near u64::MAX.
fn any_size() -> impl Strategy<Value = u64> {
    prop_oneof![
        0u64..300,
        (0u32..64, -2i64..=2).prop_map(|(p, d)| (1u64 << p).wrapping_add_signed(d)),
        (0u64..4).prop_map(|d| u64::MAX - d),
        any::<u64>(),
    ]
}

/// A tree whose leaves are all equal: every perfect subtree of a level has the same root, so
/// trees of up to u64::MAX leaves have O(1)-computable nodes and real, verifiable proofs.
struct Uniform {
    size: u64,
    levels: Vec<Hash32>,
}

impl Uniform {
    fn new(size: u64) -> Self {
        let mut levels = vec![leaf_hash(b"uniform")];
        for l in 1..64 {
            let below = levels[l - 1];
            levels.push(node_hash(&below, &below));
        }
        Uniform { size, levels }
    }
}

impl NodeSource for Uniform {
    type Error = TreeError;
    fn size(&self) -> u64 {
        self.size
    }
    fn perfect_node(&self, level: u32, index: u64) -> Result<Hash32, TreeError> {
        let end = index
            .checked_add(1)
            .and_then(|i| i.checked_mul(1u64.checked_shl(level)?));
        match end {
            Some(end) if end <= self.size => Ok(self.levels[level as usize]),
            _ => Err(TreeError::NotEnoughLeaves {
                needed: end.unwrap_or(u64::MAX),
                available: self.size,
            }),
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn inclusion_proofs_match_the_rfc_definition_and_mutations_fail(
        n in 1usize..200,
        seed in any::<u64>(),
        pick in any::<prop::sample::Index>(),
        which in any::<usize>(),
        bit in 0usize..256,
    ) {
        let data = leaves(n, seed);
        let lh: Vec<Hash32> = data.iter().map(|d| leaf_hash(d)).collect();
        let root = naive::mth(&data);
        let i = pick.index(n);
        let (index, size) = (i as u64, n as u64);

        let proof = inclusion_proof(lh.as_slice(), index, size).unwrap();
        prop_assert_eq!(&proof, &naive::path(i, &data));
        let mut mt = MemoryTree::new();
        lh.iter().for_each(|h| mt.append(*h));
        prop_assert_eq!(&inclusion_proof(&mt, index, size).unwrap(), &proof);
        prop_assert_eq!(verify_inclusion(&lh[i], index, size, &proof, &root), Ok(()));
        prop_assert_eq!(verify_inclusion_of_data(&data[i], index, size, &proof, &root), Ok(()));

        if !proof.is_empty() {
            let bad = flip(&proof, which, bit);
            prop_assert!(verify_inclusion(&lh[i], index, size, &bad, &root).is_err());
            prop_assert!(verify_inclusion(&lh[i], index, size, &proof[1..], &root).is_err());
        }
        let longer = [proof.clone(), vec![root]].concat();
        prop_assert!(verify_inclusion(&lh[i], index, size, &longer, &root).is_err());
        let other = (i + 1 + which % n.max(2)) % n;
        if other != i {
            prop_assert!(verify_inclusion(&lh[i], other as u64, size, &proof, &root).is_err());
            prop_assert!(verify_inclusion(&lh[other], index, size, &proof, &root).is_err());
        }
        let mut bad_root = root;
        bad_root[bit / 8] ^= 1 << (bit % 8);
        prop_assert!(verify_inclusion(&lh[i], index, size, &proof, &bad_root).is_err());
    }

    #[test]
    fn consistency_proofs_match_the_rfc_definition_and_mutations_fail(
        n in 1usize..200,
        seed in any::<u64>(),
        pick in any::<prop::sample::Index>(),
        which in any::<usize>(),
        bit in 0usize..256,
    ) {
        let data = leaves(n, seed);
        let lh: Vec<Hash32> = data.iter().map(|d| leaf_hash(d)).collect();
        let m = pick.index(n + 1);
        let (old, new) = (m as u64, n as u64);
        let (r1, r2) = (naive::mth(&data[..m]), naive::mth(&data));

        let proof = consistency_proof(lh.as_slice(), old, new).unwrap();
        let want = if m == 0 { vec![] } else { naive::proof(m, &data) };
        prop_assert_eq!(&proof, &want);
        let mut mt = MemoryTree::new();
        lh.iter().for_each(|h| mt.append(*h));
        prop_assert_eq!(&consistency_proof(&mt, old, new).unwrap(), &proof);
        prop_assert_eq!(mt.root_at(old).unwrap(), r1);
        prop_assert_eq!(root_at(lh.as_slice(), new).unwrap(), r2);
        prop_assert_eq!(verify_consistency(old, new, &r1, &r2, &proof), Ok(()));

        if !proof.is_empty() {
            let bad = flip(&proof, which, bit);
            prop_assert!(verify_consistency(old, new, &r1, &r2, &bad).is_err());
            prop_assert!(verify_consistency(old, new, &r1, &r2, &proof[..proof.len() - 1]).is_err());
            prop_assert!(verify_consistency(old, new, &r2, &r1, &proof).is_err());
            prop_assert!(verify_consistency(old - 1, new, &r1, &r2, &proof).is_err());
            prop_assert!(verify_consistency(old + 1, new, &r1, &r2, &proof).is_err());
        }
        let longer = [proof.clone(), vec![r2]].concat();
        prop_assert!(verify_consistency(old, new, &r1, &r2, &longer).is_err());
        // A rewritten tail: same old prefix, one changed leaf after it. The new root differs,
        // so the honest proof for the rewritten tree cannot link it to the original head.
        if 0 < m && m < n {
            let mut forged = lh.clone();
            forged[n - 1][bit / 8] ^= 1 << (bit % 8);
            let forged_root = root_of(&forged);
            prop_assert!(verify_consistency(old, new, &r1, &forged_root, &proof).is_err());
        }
        // A rewritten prefix: the forged tree's own proof does not lead to the old root.
        if m > 0 {
            let mut forged = lh.clone();
            forged[which % m][0] ^= 1;
            let fp = consistency_proof(forged.as_slice(), old, new).unwrap();
            prop_assert!(verify_consistency(old, new, &r1, &root_of(&forged), &fp).is_err());
        }
    }

    #[test]
    fn bogus_sizes_and_proofs_are_rejected_without_panic(
        old in any_size(),
        new in any_size(),
        index in any_size(),
        proof in prop::collection::vec(any::<[u8; 32]>(), 0..140),
        r1 in any::<[u8; 32]>(),
        r2 in any::<[u8; 32]>(),
    ) {
        prop_assert!(verify_consistency(old, new, &r1, &r2, &proof).is_err());
        prop_assert!(verify_inclusion(&r1, index, new, &proof, &r2).is_err());
        // Generation with sizes beyond what a source holds is an error, not a panic.
        let small = Uniform::new(old.min(1000));
        let _ = consistency_proof(&small, old, new);
        let _ = inclusion_proof(&small, index, new);
    }

    #[test]
    fn huge_trees_prove_and_verify(
        new in prop_oneof![(0u64..4).prop_map(|d| u64::MAX - d), (1u64 << 40)..u64::MAX],
        old_frac in any::<u64>(),
        index_frac in any::<u64>(),
        which in any::<usize>(),
        bit in 0usize..256,
    ) {
        let src = Uniform::new(new);
        let old = old_frac % new + 1;
        let index = index_frac % new;
        let (r1, r2) = (root_at(&src, old).unwrap(), root_at(&src, new).unwrap());
        let cp = consistency_proof(&src, old, new).unwrap();
        prop_assert!(cp.len() <= 128);
        prop_assert_eq!(verify_consistency(old, new, &r1, &r2, &cp), Ok(()));
        if !cp.is_empty() {
            prop_assert!(verify_consistency(old, new, &r1, &r2, &flip(&cp, which, bit)).is_err());
        }
        let ip = inclusion_proof(&src, index, new).unwrap();
        prop_assert!(ip.len() <= 64);
        let leaf = src.levels[0];
        prop_assert_eq!(verify_inclusion(&leaf, index, new, &ip, &r2), Ok(()));
        if !ip.is_empty() {
            prop_assert!(verify_inclusion(&leaf, index, new, &flip(&ip, which, bit), &r2).is_err());
        }
    }
}

#[test]
fn generation_rejects_bad_requests() {
    let lh: Vec<Hash32> = (0..5u8).map(|i| leaf_hash(&[i])).collect();
    let src = lh.as_slice();
    assert_eq!(
        inclusion_proof(src, 5, 5),
        Err(TreeError::IndexOutOfRange { index: 5, size: 5 })
    );
    assert_eq!(
        inclusion_proof(src, 0, 6),
        Err(TreeError::NotEnoughLeaves {
            needed: 6,
            available: 5
        })
    );
    assert_eq!(
        consistency_proof(src, 4, 3),
        Err(TreeError::BadSizes { old: 4, new: 3 })
    );
    assert_eq!(consistency_proof(src, 0, 5), Ok(vec![]));
    assert_eq!(consistency_proof(src, 5, 5), Ok(vec![]));
    assert_eq!(
        src.perfect_node(63, 3),
        Err(TreeError::NotEnoughLeaves {
            needed: u64::MAX,
            available: 5
        })
    );
}
