//! The pure state of a witness (c2sp.org/tlog-witness semantics, no HTTP).
//!
//! A witness keeps, per log origin, the last tree head it cosigned. It cosigns a new checkpoint
//! only if the checkpoint is signed by a key it trusts for that origin and a consistency proof
//! shows it extends the stored head. So once an auditor holds a cosigned checkpoint, the log
//! (or anyone with write access to its stores) cannot roll it back or present a different
//! history without the witness refusing, and every refusal names the reason.
//!
//! The checks, in order (tlog-witness `add-checkpoint`): the origin is known (else 404); a
//! trusted signature verifies (else 403); the checkpoint is not smaller than the stored head
//! (rollback); the client's old size is not above the checkpoint's (400) and equals the stored
//! size (409, returning the stored size); at equal sizes the roots are equal (fork, 409); the
//! proof verifies (422). Only then is the state updated and the cosignature returned: the
//! caller must persist [`Witness::state`] before publishing it, and serialise calls (the spec's
//! atomicity requirement).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::b64::B64Hash;
use crate::cosignature::{self, CosignatureError};
use crate::note::{KeyType, Note, NoteError, Signature, Signer, VerifierKey};
use crate::tlog::{parse_decimal, Checkpoint, CheckpointError};
use crate::tree::{empty_root, verify_consistency, Hash32, ProofError};

/// At most this many consistency proof lines in a request (tlog-witness).
pub const MAX_PROOF_LINES: usize = 63;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum WitnessError {
    #[error("unknown log origin {0:?}")]
    UnknownOrigin(String),
    #[error("checkpoint signature: {0}")]
    Signature(NoteError),
    #[error("malformed checkpoint: {0}")]
    Checkpoint(CheckpointError),
    #[error("malformed request: {0}")]
    BadRequest(&'static str),
    #[error("rollback: checkpoint size {got} is below the cosigned size {stored}")]
    Rollback { stored: u64, got: u64 },
    #[error("old size {old} is above the checkpoint size {size}")]
    OldSizeTooLarge { old: u64, size: u64 },
    #[error("old size {claimed} is not the cosigned size {stored}")]
    Conflict { claimed: u64, stored: u64 },
    #[error("fork: a different root at the cosigned size {size}")]
    Fork { size: u64 },
    #[error("not consistent with the cosigned head: {0}")]
    Inconsistent(ProofError),
    #[error("cosigning: {0}")]
    Cosign(CosignatureError),
    #[error("a witness signs with a cosignature/v1 (0x04) key, not {0:?}")]
    WrongKeyType(KeyType),
}

/// A tree head as the witness stores it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TreeHead {
    pub size: u64,
    #[serde(with = "b64_hash")]
    pub root: Hash32,
}

mod b64_hash {
    use super::*;
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(h: &Hash32, s: S) -> Result<S::Ok, S::Error> {
        B64Hash(*h).serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Hash32, D::Error> {
        B64Hash::deserialize(d).map(|h| h.0)
    }
}

/// What a witness persists: the last cosigned head per origin.
pub type WitnessState = BTreeMap<String, TreeHead>;

/// A witness: its cosigning key, the logs it follows, and their cosigned heads.
#[derive(Debug)]
pub struct Witness {
    signer: Signer,
    logs: BTreeMap<String, Vec<VerifierKey>>,
    state: WitnessState,
}

impl Witness {
    pub fn new(signer: Signer) -> Result<Self, WitnessError> {
        if signer.key_type() != KeyType::CosignatureV1 {
            return Err(WitnessError::WrongKeyType(signer.key_type()));
        }
        Ok(Witness {
            signer,
            logs: BTreeMap::new(),
            state: WitnessState::new(),
        })
    }

    /// Follows the log `origin`, trusting checkpoints signed by any of `keys`.
    pub fn add_log(&mut self, origin: &str, keys: Vec<VerifierKey>) {
        self.logs.insert(origin.to_owned(), keys);
    }

    /// Restores persisted state (from [`Witness::state`]).
    pub fn restore(&mut self, state: WitnessState) {
        self.state = state;
    }

    pub fn state(&self) -> &WitnessState {
        &self.state
    }

    /// The last cosigned head of `origin`.
    pub fn latest(&self, origin: &str) -> Option<&TreeHead> {
        self.state.get(origin)
    }

    /// The witness's public key, for the logs' and auditors' configuration.
    pub fn verifier_key(&self) -> &VerifierKey {
        self.signer.verifier_key()
    }

    /// Handles `add-checkpoint`: cosigns the signed checkpoint `msg` at time `now` if it is
    /// consistent (per `proof`, from `old_size`) with the stored head; see the module docs.
    pub fn add_checkpoint(
        &mut self,
        msg: &[u8],
        old_size: u64,
        proof: &[Hash32],
        now: u64,
    ) -> Result<Signature, WitnessError> {
        let note = Note::parse(msg).map_err(WitnessError::Signature)?;
        // The origin picks the trusted keys; the text is trusted only after they verify it.
        let origin = note.text().split('\n').next().unwrap_or_default();
        let keys = self
            .logs
            .get(origin)
            .ok_or_else(|| WitnessError::UnknownOrigin(origin.to_owned()))?;
        note.verify(keys).map_err(WitnessError::Signature)?;
        let cp = Checkpoint::parse_body(note.text()).map_err(WitnessError::Checkpoint)?;

        let stored = self.state.get(cp.origin()).copied().unwrap_or(TreeHead {
            size: 0,
            root: empty_root(),
        });
        if cp.size() < stored.size {
            return Err(WitnessError::Rollback {
                stored: stored.size,
                got: cp.size(),
            });
        }
        if old_size > cp.size() {
            return Err(WitnessError::OldSizeTooLarge {
                old: old_size,
                size: cp.size(),
            });
        }
        if old_size != stored.size {
            return Err(WitnessError::Conflict {
                claimed: old_size,
                stored: stored.size,
            });
        }
        match verify_consistency(stored.size, cp.size(), &stored.root, cp.root(), proof) {
            Ok(()) => {}
            Err(ProofError::RootsDiffer { size }) => return Err(WitnessError::Fork { size }),
            Err(e) => return Err(WitnessError::Inconsistent(e)),
        }
        // Sign before updating, so a failure leaves the state untouched.
        let sig =
            cosignature::cosign(&self.signer, note.text(), now).map_err(WitnessError::Cosign)?;
        self.state.insert(
            cp.origin().to_owned(),
            TreeHead {
                size: cp.size(),
                root: *cp.root(),
            },
        );
        Ok(sig)
    }

    /// [`Witness::add_checkpoint`] on a tlog-witness request body.
    pub fn handle_request(&mut self, body: &[u8], now: u64) -> Result<Signature, WitnessError> {
        let req = AddCheckpointRequest::parse(body)?;
        self.add_checkpoint(req.checkpoint.as_bytes(), req.old_size, &req.proof, now)
    }
}

/// The tlog-witness `add-checkpoint` request body: `old <size>`, up to 63 base64 proof lines,
/// a blank line, then the signed checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddCheckpointRequest {
    pub old_size: u64,
    pub proof: Vec<Hash32>,
    pub checkpoint: String,
}

impl AddCheckpointRequest {
    pub fn parse(body: &[u8]) -> Result<Self, WitnessError> {
        let bad = WitnessError::BadRequest;
        let body = std::str::from_utf8(body).map_err(|_| bad("not UTF-8"))?;
        let (head, checkpoint) = body
            .split_once("\n\n")
            .ok_or(bad("no blank line before the checkpoint"))?;
        let mut lines = head.split('\n');
        let old_size = lines
            .next()
            .and_then(|l| l.strip_prefix("old "))
            .and_then(parse_decimal)
            .ok_or(bad("first line must be `old <decimal size>`"))?;
        let proof = lines
            .map(|l| crate::b64::decode_hash(l).ok_or(bad("proof line is not a base64 hash")))
            .collect::<Result<Vec<_>, _>>()?;
        if proof.len() > MAX_PROOF_LINES {
            return Err(bad("more than 63 proof lines"));
        }
        if old_size == 0 && !proof.is_empty() {
            return Err(bad("the proof must be empty from size 0"));
        }
        Ok(AddCheckpointRequest {
            old_size,
            proof,
            checkpoint: checkpoint.to_owned(),
        })
    }

    pub fn to_text(&self) -> String {
        let mut s = format!("old {}\n", self.old_size);
        for h in &self.proof {
            s.push_str(&crate::b64::encode(h));
            s.push('\n');
        }
        s.push('\n');
        s.push_str(&self.checkpoint);
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tlog::{partition_origin, SignedCheckpoint};
    use crate::tree::{consistency_proof, leaf_hash, MemoryTree};

    struct Fixture {
        origin: String,
        log: Signer,
        tree: MemoryTree,
        witness: Witness,
    }

    impl Fixture {
        fn new() -> Self {
            let origin = partition_origin("chain-w", 3).unwrap();
            let log = Signer::from_seed(&origin, KeyType::Ed25519, &[7; 32]).unwrap();
            let (w, _) = Signer::generate("witness.example/w1", KeyType::CosignatureV1).unwrap();
            let mut witness = Witness::new(w).unwrap();
            witness.add_log(&origin, vec![log.verifier_key().clone()]);
            Fixture {
                origin,
                log,
                tree: MemoryTree::new(),
                witness,
            }
        }

        fn grow(&mut self, n: u64) {
            for _ in 0..n {
                let i = self.tree.size();
                self.tree.append(leaf_hash(&i.to_be_bytes()));
            }
        }

        fn checkpoint(&self, size: u64) -> String {
            let root = self.tree.root_at(size).unwrap();
            Checkpoint::new(&self.origin, size, root)
                .unwrap()
                .sign(&self.log)
                .unwrap()
                .to_text()
        }

        fn submit(&mut self, old: u64, size: u64, now: u64) -> Result<Signature, WitnessError> {
            let proof = consistency_proof(&self.tree, old, size).unwrap();
            let msg = self.checkpoint(size);
            self.witness
                .add_checkpoint(msg.as_bytes(), old, &proof, now)
        }
    }

    #[test]
    fn cosigns_consistent_growth_and_the_cosignature_verifies() {
        let mut f = Fixture::new();
        f.grow(5);
        let sig = f.submit(0, 5, 100).unwrap();
        let msg = f.checkpoint(5);
        let mut note = Note::parse(msg.as_bytes()).unwrap();
        note.add_signature(sig).unwrap();
        let v = note.verify(&[f.witness.verifier_key().clone()]).unwrap();
        assert_eq!(v.verified[0].timestamp, Some(100));
        assert_eq!(f.witness.latest(&f.origin).unwrap().size, 5);

        f.grow(8);
        f.submit(5, 13, 101).unwrap();
        // Same size, same root: cosigned again (a fresh timestamp).
        f.submit(13, 13, 102).unwrap();
        assert_eq!(
            f.witness.latest(&f.origin),
            Some(&TreeHead {
                size: 13,
                root: f.tree.root_at(13).unwrap()
            })
        );
        // The witness's log key check is what let the checkpoint in.
        let opened: SignedCheckpoint =
            Checkpoint::open(msg.as_bytes(), &f.origin, &[f.log.verifier_key().clone()]).unwrap();
        assert_eq!(opened.checkpoint.size(), 5);
    }

    #[test]
    fn refuses_rollback_conflicts_forks_and_bad_proofs_without_changing_state() {
        let mut f = Fixture::new();
        f.grow(10);
        f.submit(0, 10, 1).unwrap();
        let before = f.witness.state().clone();

        // Rollback: a smaller checkpoint.
        assert_eq!(
            f.submit(0, 6, 2),
            Err(WitnessError::Rollback { stored: 10, got: 6 })
        );
        // The client's old size is not the stored one.
        f.grow(4);
        assert_eq!(
            f.submit(8, 14, 2),
            Err(WitnessError::Conflict {
                claimed: 8,
                stored: 10
            })
        );
        let msg = f.checkpoint(14);
        assert_eq!(
            f.witness.add_checkpoint(msg.as_bytes(), 15, &[], 2),
            Err(WitnessError::OldSizeTooLarge { old: 15, size: 14 })
        );
        // A bad proof.
        let mut proof = consistency_proof(&f.tree, 10, 14).unwrap();
        proof[0][0] ^= 1;
        assert!(matches!(
            f.witness.add_checkpoint(msg.as_bytes(), 10, &proof, 2),
            Err(WitnessError::Inconsistent(_))
        ));

        // A fork: the log signs another history (leaf 3 rewritten) at the same and a larger size.
        let mut forked = Fixture {
            origin: f.origin.clone(),
            log: Signer::from_seed(&f.origin, KeyType::Ed25519, &[7; 32]).unwrap(),
            tree: MemoryTree::new(),
            witness: Witness::new(Signer::generate("x", KeyType::CosignatureV1).unwrap().0)
                .unwrap(),
        };
        for i in 0..14u64 {
            let leaf = if i == 3 { 999u64 } else { i };
            forked.tree.append(leaf_hash(&leaf.to_be_bytes()));
        }
        let fork10 = forked.checkpoint(10);
        assert_eq!(
            f.witness.add_checkpoint(fork10.as_bytes(), 10, &[], 2),
            Err(WitnessError::Fork { size: 10 })
        );
        let fork14 = forked.checkpoint(14);
        let fork_proof = consistency_proof(&forked.tree, 10, 14).unwrap();
        assert_eq!(
            f.witness
                .add_checkpoint(fork14.as_bytes(), 10, &fork_proof, 2),
            Err(WitnessError::Inconsistent(ProofError::OldRootMismatch))
        );
        assert_eq!(f.witness.state(), &before, "refusals leave the state alone");

        // And the honest extension still goes through.
        f.submit(10, 14, 3).unwrap();
    }

    #[test]
    fn refuses_unknown_logs_and_untrusted_signatures() {
        let mut f = Fixture::new();
        f.grow(3);
        let other = partition_origin("chain-w", 4).unwrap();
        let other_log = Signer::from_seed(&other, KeyType::Ed25519, &[7; 32]).unwrap();
        let msg = Checkpoint::new(&other, 3, f.tree.root_at(3).unwrap())
            .unwrap()
            .sign(&other_log)
            .unwrap()
            .to_text();
        assert_eq!(
            f.witness.add_checkpoint(msg.as_bytes(), 0, &[], 1),
            Err(WitnessError::UnknownOrigin(other))
        );
        // Right origin, signed by someone else.
        let impostor = Signer::generate(&f.origin, KeyType::Ed25519).unwrap().0;
        let msg = Checkpoint::new(&f.origin, 3, f.tree.root_at(3).unwrap())
            .unwrap()
            .sign(&impostor)
            .unwrap()
            .to_text();
        assert_eq!(
            f.witness.add_checkpoint(msg.as_bytes(), 0, &[], 1),
            Err(WitnessError::Signature(NoteError::NoTrustedSignature))
        );
        assert!(f.witness.state().is_empty());
        assert!(matches!(
            Witness::new(Signer::generate("w", KeyType::Ed25519).unwrap().0),
            Err(WitnessError::WrongKeyType(KeyType::Ed25519))
        ));
    }

    #[test]
    fn requests_round_trip_and_state_persists() {
        let mut f = Fixture::new();
        f.grow(9);
        f.submit(0, 4, 1).unwrap();
        let req = AddCheckpointRequest {
            old_size: 4,
            proof: consistency_proof(&f.tree, 4, 9).unwrap(),
            checkpoint: f.checkpoint(9),
        };
        let text = req.to_text();
        assert_eq!(AddCheckpointRequest::parse(text.as_bytes()).unwrap(), req);
        f.witness.handle_request(text.as_bytes(), 2).unwrap();

        let json = serde_json::to_string(f.witness.state()).unwrap();
        let mut again =
            Witness::new(Signer::generate("w2", KeyType::CosignatureV1).unwrap().0).unwrap();
        again.restore(serde_json::from_str(&json).unwrap());
        assert_eq!(again.state(), f.witness.state());

        for bad in [
            "old 01\n\nx".to_string(),
            "old 4\nnot base64\n\nx".to_string(),
            "new 4\n\nx".to_string(),
            "old 4\n".to_string(),
            format!("old 0\n{}\n\nx", crate::b64::encode(&[0u8; 32])),
            format!("old 4\n{}\nx", "A".repeat(44)),
        ] {
            assert!(
                matches!(
                    AddCheckpointRequest::parse(bad.as_bytes()),
                    Err(WitnessError::BadRequest(_))
                ),
                "{bad:?}"
            );
        }
        let too_long = format!(
            "old 4\n{}\nx",
            format!("{}\n", crate::b64::encode(&[0u8; 32])).repeat(64)
        );
        assert!(AddCheckpointRequest::parse(too_long.as_bytes()).is_err());
    }
}
