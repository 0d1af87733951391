//! An independent implementation straight from the RFC's recursive definitions, for tests.
//!
//! It shares nothing with the production code but SHA-256: no node sources, no compact
//! ranges, no bit tricks; slices of leaf *data* split at the largest power of two below n,
//! exactly as RFC 9162 §2.1.1 (MTH), §2.1.3.1 (PATH) and §2.1.4.1 (PROOF/SUBPROOF) read.

use sha2::{Digest, Sha256};

use super::Hash32;

fn sha256(parts: &[&[u8]]) -> Hash32 {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p);
    }
    h.finalize().into()
}

/// The largest power of two smaller than n, by counting up.
fn k_of(n: usize) -> usize {
    let mut k = 1;
    while k * 2 < n {
        k *= 2;
    }
    k
}

/// MTH(D[n]).
pub(crate) fn mth<L: AsRef<[u8]>>(d: &[L]) -> Hash32 {
    match d.len() {
        0 => sha256(&[]),
        1 => sha256(&[&[0x00], d[0].as_ref()]),
        n => {
            let k = k_of(n);
            sha256(&[&[0x01], &mth(&d[..k]), &mth(&d[k..])])
        }
    }
}

/// PATH(m, D[n]).
pub(crate) fn path<L: AsRef<[u8]>>(m: usize, d: &[L]) -> Vec<Hash32> {
    let n = d.len();
    if n <= 1 {
        return vec![];
    }
    let k = k_of(n);
    if m < k {
        let mut p = path(m, &d[..k]);
        p.push(mth(&d[k..]));
        p
    } else {
        let mut p = path(m - k, &d[k..]);
        p.push(mth(&d[..k]));
        p
    }
}

/// PROOF(m, D[n]) for 0 < m <= n.
pub(crate) fn proof<L: AsRef<[u8]>>(m: usize, d: &[L]) -> Vec<Hash32> {
    subproof(m, d, true)
}

fn subproof<L: AsRef<[u8]>>(m: usize, d: &[L], b: bool) -> Vec<Hash32> {
    let n = d.len();
    if m == n {
        return if b { vec![] } else { vec![mth(d)] };
    }
    let k = k_of(n);
    if m <= k {
        let mut p = subproof(m, &d[..k], b);
        p.push(mth(&d[k..]));
        p
    } else {
        let mut p = subproof(m - k, &d[k..], false);
        p.push(mth(&d[..k]));
        p
    }
}
