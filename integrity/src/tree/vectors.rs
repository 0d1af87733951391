//! The Certificate Transparency reference vectors (RFC 6962 test data).
//!
//! Source: github.com/transparency-dev/merkle, `proof/verify_test.go` (commit 02194e9a), the
//! 8-leaf set every CT implementation tests against (also in google/certificate-transparency).
//! There `inclusionProofs[i].leaf` is 1-based; here indices are 0-based. The corruptions below
//! mirror that file's `corruptInclusionProof` / `corruptConsistencyProof`.

use super::proof::root_at;
use super::*;

fn h(s: &str) -> Hash32 {
    hex::decode(s).unwrap().try_into().unwrap()
}

pub(crate) const LEAVES: [&str; 8] = [
    "",
    "00",
    "10",
    "2021",
    "3031",
    "40414243",
    "5051525354555657",
    "606162636465666768696a6b6c6d6e6f",
];

/// ROOTS[n] is the root of the first n leaves.
pub(crate) const ROOTS: [&str; 9] = [
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

/// (index, size, path)
const INCLUSION: [(u64, u64, &[&str]); 4] = [
    (
        0,
        8,
        &[
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ],
    ),
    (
        5,
        8,
        &[
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
    (
        2,
        3,
        &["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"],
    ),
    (
        1,
        5,
        &[
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        ],
    ),
];

/// (old size, new size, proof)
const CONSISTENCY: [(u64, u64, &[&str]); 5] = [
    (1, 1, &[]),
    (
        1,
        8,
        &[
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ],
    ),
    (
        6,
        8,
        &[
            "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
    (
        2,
        5,
        &[
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        ],
    ),
    (
        6,
        7,
        &[
            "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
];

fn leaves() -> Vec<Vec<u8>> {
    LEAVES.iter().map(|s| hex::decode(s).unwrap()).collect()
}

fn leaf_hashes() -> Vec<Hash32> {
    leaves().iter().map(|l| leaf_hash(l)).collect()
}

fn memory_tree() -> MemoryTree {
    let mut t = MemoryTree::new();
    for l in leaf_hashes() {
        t.append(l);
    }
    t
}

fn hashes(p: &[&str]) -> Vec<Hash32> {
    p.iter().map(|s| h(s)).collect()
}

/// (what, index or old size, size or new size, root(s), leaf or root, proof)
type Probe = (&'static str, u64, u64, Hash32, Hash32, Vec<Hash32>);

const SOME_HASH: &str = "abacaba000000000000000000000000000000000000000000060061e00123456";

#[test]
fn roots_at_every_size() {
    let leaves = leaves();
    let lh = leaf_hashes();
    let mt = memory_tree();
    let mut cr = CompactRange::new();
    for (n, want) in ROOTS.iter().enumerate() {
        let want = h(want);
        assert_eq!(cr.root(), want, "compact range, size {n}");
        assert_eq!(root_of(&lh[..n]), want, "root_of, size {n}");
        assert_eq!(mt.root_at(n as u64).unwrap(), want, "memory tree, size {n}");
        assert_eq!(root_at(lh.as_slice(), n as u64).unwrap(), want);
        assert_eq!(naive::mth(&leaves[..n]), want, "naive, size {n}");
        if n < 8 {
            cr.append(lh[n]).unwrap();
        }
    }
}

#[test]
fn inclusion_vectors_generate_verify_and_resist_corruption() {
    let lh = leaf_hashes();
    let mt = memory_tree();
    for (index, size, path) in INCLUSION {
        let want = hashes(path);
        let root = h(ROOTS[size as usize]);
        let leaf = lh[index as usize];
        assert_eq!(inclusion_proof(lh.as_slice(), index, size).unwrap(), want);
        assert_eq!(inclusion_proof(&mt, index, size).unwrap(), want);
        assert_eq!(
            naive::path(index as usize, &leaves()[..size as usize]),
            want
        );
        assert_eq!(root_from_inclusion(&leaf, index, size, &want), Ok(root));
        verify_inclusion(&leaf, index, size, &want, &root).unwrap();

        let some = h(SOME_HASH);
        let mut probes: Vec<Probe> = vec![
            (
                "index - 1",
                index.wrapping_sub(1),
                size,
                root,
                leaf,
                want.clone(),
            ),
            ("index + 1", index + 1, size, root, leaf, want.clone()),
            ("index ^ 2", index ^ 2, size, root, leaf, want.clone()),
            ("size * 2", index, size * 2, root, leaf, want.clone()),
            ("size / 2", index, size / 2, root, leaf, want.clone()),
            (
                "wrong leaf",
                index,
                size,
                root,
                leaf_hash(b"WrongLeaf"),
                want.clone(),
            ),
            ("empty root", index, size, empty_root(), leaf, want.clone()),
            ("random root", index, size, some, leaf, want.clone()),
            (
                "trailing root",
                index,
                size,
                root,
                leaf,
                [want.clone(), vec![root]].concat(),
            ),
            (
                "preceding root",
                index,
                size,
                root,
                leaf,
                [vec![root], want.clone()].concat(),
            ),
        ];
        for i in 0..want.len() {
            let mut p = want.clone();
            p[i][0] ^= 8;
            probes.push(("modified component", index, size, root, leaf, p));
        }
        probes.push((
            "removed component",
            index,
            size,
            root,
            leaf,
            want[..want.len() - 1].to_vec(),
        ));
        if want.len() > 1 {
            let p = [vec![want[0], some], want[1..].to_vec()].concat();
            probes.push(("inserted component", index, size, root, leaf, p));
        }
        for (what, i, s, r, l, p) in probes {
            assert!(
                verify_inclusion(&l, i, s, &p, &r).is_err(),
                "{what} ({index}, {size})"
            );
        }
    }
}

#[test]
fn consistency_vectors_generate_verify_and_resist_corruption() {
    let lh = leaf_hashes();
    let mt = memory_tree();
    for (old, new, proof) in CONSISTENCY {
        let want = hashes(proof);
        let (r1, r2) = (h(ROOTS[old as usize]), h(ROOTS[new as usize]));
        assert_eq!(consistency_proof(lh.as_slice(), old, new).unwrap(), want);
        assert_eq!(consistency_proof(&mt, old, new).unwrap(), want);
        assert_eq!(naive::proof(old as usize, &leaves()[..new as usize]), want);
        verify_consistency(old, new, &r1, &r2, &want).unwrap();
        if want.is_empty() {
            continue;
        }
        let wrong = leaf_hash(b"WrongRoot");
        let mut probes: Vec<Probe> = vec![
            ("old - 1", old - 1, new, r1, r2, want.clone()),
            ("old + 1", old + 1, new, r1, r2, want.clone()),
            ("old ^ 2", old ^ 2, new, r1, r2, want.clone()),
            ("new * 2", old, new * 2, r1, r2, want.clone()),
            ("new / 2", old, new / 2, r1, r2, want.clone()),
            ("wrong old root", old, new, wrong, r2, want.clone()),
            ("wrong new root", old, new, r1, wrong, want.clone()),
            ("swapped roots", old, new, r2, r1, want.clone()),
            ("empty proof", old, new, r1, r2, vec![]),
            (
                "trailing old root",
                old,
                new,
                r1,
                r2,
                [want.clone(), vec![r1]].concat(),
            ),
            (
                "trailing new root",
                old,
                new,
                r1,
                r2,
                [want.clone(), vec![r2]].concat(),
            ),
            (
                "preceding old root",
                old,
                new,
                r1,
                r2,
                [vec![r1], want.clone()].concat(),
            ),
            (
                "preceding new root",
                old,
                new,
                r1,
                r2,
                [vec![r2], want.clone()].concat(),
            ),
            (
                "preceding proof[0]",
                old,
                new,
                r1,
                r2,
                [vec![want[0]], want.clone()].concat(),
            ),
            (
                "truncated",
                old,
                new,
                r1,
                r2,
                want[..want.len() - 1].to_vec(),
            ),
        ];
        for i in 0..want.len() {
            let mut p = want.clone();
            p[i][0] ^= 16;
            probes.push(("modified component", old, new, r1, r2, p));
        }
        for (what, o, n, a, b, p) in probes {
            assert!(
                verify_consistency(o, n, &a, &b, &p).is_err(),
                "{what} ({old}, {new})"
            );
        }
    }
}

#[test]
fn consistency_edges_from_the_reference_tests() {
    let (r1, r2) = (leaf_hash(b"don't care 1"), leaf_hash(b"don't care 2"));
    let e = empty_root();
    // Equal sizes need equal roots; different roots at one size are a fork.
    assert_eq!(
        verify_consistency(1, 1, &r1, &r2, &[]),
        Err(ProofError::RootsDiffer { size: 1 })
    );
    verify_consistency(1, 1, &r2, &r2, &[]).unwrap();
    // The empty tree is extended by everything, but only if its root is the empty root
    // (stricter than the Go reference, which ignores root1 at size 0).
    verify_consistency(0, 0, &e, &e, &[]).unwrap();
    verify_consistency(0, 1, &e, &r2, &[]).unwrap();
    assert_eq!(
        verify_consistency(0, 1, &r1, &r2, &[]),
        Err(ProofError::OldRootMismatch)
    );
    // Time travel to the past.
    assert_eq!(
        verify_consistency(1, 0, &r1, &r2, &[]),
        Err(ProofError::SizeRollback { old: 1, new: 0 })
    );
    assert!(verify_consistency(2, 1, &r1, &r2, &[]).is_err());
    // Empty proof where one is needed; non-empty proof where none is.
    assert_eq!(
        verify_consistency(1, 2, &r1, &r2, &[]),
        Err(ProofError::WrongLength {
            expected: 1,
            got: 0
        })
    );
    for (o, n) in [(0, 0), (0, 1), (1, 1)] {
        assert!(verify_consistency(o, n, &e, &e, &[e]).is_err(), "{o} {n}");
    }
}

#[test]
fn inclusion_edges_from_the_reference_tests() {
    let some = h(SOME_HASH);
    for (index, size) in [(0, 0), (1, 0), (2, 1)] {
        assert!(verify_inclusion(&some, index, size, &[], &empty_root()).is_err());
    }
    // A one-leaf tree: the root is the leaf hash and the proof is empty.
    let lh = leaf_hash(b"data");
    verify_inclusion(&lh, 0, 1, &[], &lh).unwrap();
    assert_eq!(
        verify_inclusion(&lh, 0, 1, &[], &some),
        Err(ProofError::RootMismatch)
    );
}
