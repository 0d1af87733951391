//! What the caller tells the verifier about the stored range.

use crate::chain::{Hash32, GENESIS};

/// Where the stored range is expected to begin: after `seq` (0 = genesis), whose hash is
/// `prev_hash`. A whole-chain store uses [`ExpectedStart::GENESIS`]; one archive segment uses the
/// previous segment's last (seq, hash), e.g. from its manifest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExpectedStart {
    pub seq: u64,
    pub prev_hash: Hash32,
}

impl ExpectedStart {
    pub const GENESIS: Self = Self {
        seq: 0,
        prev_hash: GENESIS,
    };

    pub fn after(seq: u64, hash: Hash32) -> Self {
        Self {
            seq,
            prev_hash: hash,
        }
    }
}

#[derive(Debug, Clone)]
pub struct VerifyOptions {
    pub start: ExpectedStart,
    /// The range must end exactly here (e.g. an archive manifest's last seq). Checkpoints past
    /// it are then not expected in this store.
    pub expected_last_seq: Option<u64>,
    /// Checkpoints of another chain id are reported as mismatches.
    pub chain_id: Option<String>,
    /// Findings kept per partition (the rest are counted in `findings_dropped`).
    pub max_findings: usize,
    /// Out-of-order records held while waiting for a missing seq before declaring it missing.
    pub reorder_window: usize,
    /// Also recompute each checkpoint's Merkle root. Tamper detection does not need it (a
    /// matching head commits to every link before it); it proves the signed roots are right,
    /// i.e. that inclusion proofs for these ranges will check. Costs about three small SHA-256
    /// compressions per record.
    pub check_merkle_roots: bool,
    /// How far (µs) a checkpoint's signed time may lie before the newest `receive_time_us` it
    /// covers (or before an earlier checkpoint's time) without a `CheckpointBackdated`
    /// finding: tolerance for the clocks of producers and chainer instances. It is also how
    /// far a holder of a retired key could backdate a checkpoint undetected.
    pub clock_skew_us: i64,
    /// The link rule of the partition's chain; `None`: detected from the first record (the
    /// rule under which its stored hash recomputes; a tampered first record falls back to v1
    /// if it links to 32 zero bytes at seq 1, else v2). For `audit-chain/v2`, `chain_id` (if
    /// given) fixes the genesis seq 1 must link to.
    pub rule: Option<crate::chain::ChainRule>,
}

impl Default for VerifyOptions {
    fn default() -> Self {
        Self {
            start: ExpectedStart::GENESIS,
            expected_last_seq: None,
            chain_id: None,
            max_findings: 1000,
            reorder_window: 1024,
            check_merkle_roots: true,
            clock_skew_us: 0,
            rule: None,
        }
    }
}
