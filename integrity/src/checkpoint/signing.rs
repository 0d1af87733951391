//! The v1 signing input (layout in the module docs of `checkpoint`), signing, and verifying
//! against the key set.

use ring::signature;

use crate::chain::{genesis_v2, ChainRule, Hash32, GENESIS};
use schemas::checkpoint_record::Checkpoint;

use super::error::{malformed, CheckpointError};
use super::keys::SigningKey;
use super::keyset::KeySet;

/// Domain tag of the v1 signing input.
pub const CHECKPOINT_DOMAIN: &[u8] = b"audit-checkpoint/v1";

/// Domain tag of the v2 signing input: v1 plus the signed partition count (see the module
/// docs). Used exactly when `partition_count > 0`, so v1 checkpoints keep verifying.
pub const CHECKPOINT_DOMAIN_V2: &[u8] = b"audit-checkpoint/v2";

/// First word of the v3 extension line (see the module docs): the signed fields that the
/// C2SP tlog-checkpoint body does not already hold.
pub const CHECKPOINT_EXTENSION_V3: &str = "audit-checkpoint/v3";

/// Ed25519 signature length.
pub const SIGNATURE_LEN: usize = 64;

/// What the chainer decides to checkpoint (everything signed except the key id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointFields {
    pub chain_id: String,
    pub partition: u32,
    pub first_seq: u64,
    pub seq: u64,
    pub head_hash: Hash32,
    pub merkle_root: Hash32,
    pub time_us: i64,
    /// Partition count of the chained topic at signing time (the signed partition set);
    /// 0 = not signed (v1 layout).
    pub partition_count: u32,
    /// RFC 9162 root of the partition's whole tree (leaves: the link hashes of seqs `1..=seq`);
    /// `Some` selects the v3 signing input, a C2SP tlog-checkpoint note body (module docs).
    /// `None`: a range-only checkpoint (v1/v2, signed before whole-tree roots existed).
    pub tree_root: Option<Hash32>,
}

impl CheckpointFields {
    /// The genesis checkpoint of a partition: nothing chained yet (`first_seq` 1, `seq` 0, the
    /// head [`GENESIS`], the empty tree's root). The chainer signs one when it takes over a
    /// partition that holds no record, so that a verifier can require a signed statement for
    /// every partition of the signed partition set, and a partition deleted whole (records
    /// and checkpoints) cannot pass for one that never received an event.
    pub fn genesis(chain_id: &str, partition: u32, time_us: i64, partition_count: u32) -> Self {
        Self::genesis_of(ChainRule::V1, chain_id, partition, time_us, partition_count)
    }

    /// [`Self::genesis`] of a chain under `rule`: the head is the rule's genesis value (for
    /// `audit-chain/v2`, bound to the chain id and partition).
    pub fn genesis_of(
        rule: ChainRule,
        chain_id: &str,
        partition: u32,
        time_us: i64,
        partition_count: u32,
    ) -> Self {
        CheckpointFields {
            chain_id: chain_id.to_owned(),
            partition,
            first_seq: 1,
            seq: 0,
            head_hash: rule.genesis(chain_id, partition),
            merkle_root: crate::merkle::empty_root(),
            time_us,
            partition_count,
            tree_root: Some(crate::merkle::empty_root()),
        }
    }

    /// Whether this is a [`Self::genesis`] checkpoint (an empty range, size 0).
    pub fn is_genesis(&self) -> bool {
        self.seq == 0
    }

    /// Number of leaves under `merkle_root` (0 for a genesis checkpoint).
    pub fn tree_size(&self) -> u64 {
        self.seq.saturating_add(1).saturating_sub(self.first_seq)
    }

    fn validate(&self, key_id: &str) -> Result<(), CheckpointError> {
        if self.partition > i32::MAX as u32 {
            return Err(malformed(format!(
                "partition {} exceeds i32",
                self.partition
            )));
        }
        if self.seq == 0 {
            // Genesis: exactly the empty range at the start of the chain.
            if self.first_seq != 1
                || (self.head_hash != GENESIS
                    && self.head_hash != genesis_v2(&self.chain_id, self.partition))
                || self.merkle_root != crate::merkle::empty_root()
                || self
                    .tree_root
                    .is_some_and(|r| r != crate::merkle::empty_root())
            {
                return Err(malformed(format!(
                    "a checkpoint at seq 0 must be the genesis checkpoint (range 1..=0, head \
                     the chain rule's genesis, the empty tree's root); got range {}..=0",
                    self.first_seq
                )));
            }
        } else if self.first_seq == 0 || self.first_seq > self.seq || self.seq > i64::MAX as u64 {
            return Err(malformed(format!(
                "range {}..={} is not 1 ≤ first_seq ≤ seq ≤ i64::MAX",
                self.first_seq, self.seq
            )));
        }
        if self.partition_count > i32::MAX as u32
            || (self.partition_count > 0 && self.partition >= self.partition_count)
        {
            return Err(malformed(format!(
                "partition {} is not below the signed partition count {}",
                self.partition, self.partition_count
            )));
        }
        if self.chain_id.is_empty() || u32::try_from(self.chain_id.len()).is_err() {
            return Err(malformed("chain_id is empty or too long"));
        }
        if key_id.is_empty() || u32::try_from(key_id.len()).is_err() {
            return Err(malformed("key_id is empty or too long"));
        }
        if self.tree_root.is_some() {
            // The note body has one text per checkpoint only if the origin is a valid note key
            // name and the key id cannot break or blur the extension line.
            if !crate::note::is_valid_key_name(&self.chain_id) {
                return Err(malformed(format!(
                    "chain_id {:?} cannot name a transparency log (no spaces, no '+')",
                    self.chain_id
                )));
            }
            if !crate::note::is_valid_key_name(key_id) {
                return Err(malformed(format!(
                    "key_id {key_id:?} has spaces or '+' (not allowed in v3 checkpoints)"
                )));
            }
        }
        Ok(())
    }

    /// The log origin of this partition: `<chain id>/partition/<p>` (C2SP tlog-checkpoint).
    pub fn origin(&self) -> String {
        format!("{}/partition/{}", self.chain_id, self.partition)
    }

    /// The v3 note body (C2SP tlog-checkpoint): origin, size (= seq), base64 whole-tree root,
    /// and one extension line with the other signed fields. `None` for a range-only checkpoint.
    pub fn note_body(&self, key_id: &str) -> Option<String> {
        let root = self.tree_root?;
        Some(format!(
            "{origin}\n{size}\n{root}\n{ext} {first} {head} {range} {time} {count} {key_id}\n",
            origin = self.origin(),
            size = self.seq,
            root = crate::b64::encode(&root),
            ext = CHECKPOINT_EXTENSION_V3,
            first = self.first_seq,
            head = crate::b64::encode(&self.head_hash),
            range = crate::b64::encode(&self.merkle_root),
            time = self.time_us,
            count = self.partition_count,
        ))
    }

    /// The exact bytes signed (see the module docs): the v3 note body when `tree_root` is set;
    /// otherwise the v1 layout when `partition_count` is 0, else v2 (its own domain tag, and the count after `time_us`). A v2 signature never
    /// verifies as v1 or the other way round, so the count cannot be stripped or added.
    /// Callers validate first, so the length prefixes fit in u32.
    pub fn signing_input(&self, key_id: &str) -> Vec<u8> {
        if let Some(body) = self.note_body(key_id) {
            return body.into_bytes();
        }
        let mut out = Vec::with_capacity(
            4 + CHECKPOINT_DOMAIN_V2.len()
                + 4
                + 4
                + self.chain_id.len()
                + 4
                + 8
                + 8
                + 32
                + 32
                + 8
                + 4
                + key_id.len(),
        );
        let put_str = |out: &mut Vec<u8>, s: &[u8]| {
            out.extend_from_slice(&(s.len() as u32).to_be_bytes());
            out.extend_from_slice(s);
        };
        let v2 = self.partition_count > 0;
        put_str(
            &mut out,
            if v2 {
                CHECKPOINT_DOMAIN_V2
            } else {
                CHECKPOINT_DOMAIN
            },
        );
        put_str(&mut out, self.chain_id.as_bytes());
        out.extend_from_slice(&self.partition.to_be_bytes());
        out.extend_from_slice(&self.first_seq.to_be_bytes());
        out.extend_from_slice(&self.seq.to_be_bytes());
        out.extend_from_slice(&self.head_hash);
        out.extend_from_slice(&self.merkle_root);
        out.extend_from_slice(&self.time_us.to_be_bytes());
        if v2 {
            out.extend_from_slice(&self.partition_count.to_be_bytes());
        }
        put_str(&mut out, key_id.as_bytes());
        out
    }
}

/// A checkpoint with typed fields (the wire record has `Vec<u8>`/`i64`; see the conversions).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedCheckpoint {
    pub fields: CheckpointFields,
    pub key_id: String,
    pub signature: [u8; SIGNATURE_LEN],
}

impl SignedCheckpoint {
    /// The checkpoint as a C2SP signed note (`tlog-checkpoint` body, blank line, one Ed25519
    /// note signature by the key named after the origin), readable by any transparency-log
    /// tool holding the vkey `<origin>+<key hash>+<base64(0x01 ‖ public key)>` (see
    /// [`crate::tlog::log_key`]). `None` for a range-only (v1/v2) checkpoint.
    ///
    /// `public_key` is the signer's raw Ed25519 key, which the note's key hash commits to.
    pub fn to_note(&self, public_key: [u8; 32]) -> Option<String> {
        let body = self.fields.note_body(&self.key_id)?;
        let origin = self.fields.origin();
        let key_hash = crate::note::key_id(&origin, crate::note::KeyType::Ed25519, &public_key);
        let sig = crate::note::Signature {
            name: origin,
            key_id: key_hash,
            bytes: self.signature.to_vec(),
        };
        Some(format!("{body}\n{}", sig.line()))
    }
}

/// Sign `fields` with `key`, giving the wire record published on `audit.checkpoints`.
pub fn sign(key: &SigningKey, fields: &CheckpointFields) -> Result<Checkpoint, CheckpointError> {
    sign_fields(key, fields).map(|cp| Checkpoint::from(&cp))
}

/// [`sign`], typed.
pub fn sign_fields(
    key: &SigningKey,
    fields: &CheckpointFields,
) -> Result<SignedCheckpoint, CheckpointError> {
    fields.validate(&key.key_id)?;
    let sig = key.pair.sign(&fields.signing_input(&key.key_id));
    let mut signature = [0u8; SIGNATURE_LEN];
    signature.copy_from_slice(sig.as_ref());
    Ok(SignedCheckpoint {
        fields: fields.clone(),
        key_id: key.key_id.clone(),
        signature,
    })
}

/// Check a wire checkpoint against the key set (see [`verify_signed`]).
pub fn verify(keys: &KeySet, cp: &Checkpoint) -> Result<(), CheckpointError> {
    verify_signed(keys, &SignedCheckpoint::try_from(cp)?)
}

/// Check a checkpoint against the key set.
///
/// Order matters for precise errors: the signature is checked before the validity window, so a
/// tampered `time_us` reports [`CheckpointError::BadSignature`] (tampering) while a genuinely
/// signed checkpoint outside its key's window reports [`CheckpointError::KeyNotValidAt`]
/// (a retired or not-yet-active key was used: key management, or a stolen old key).
pub fn verify_signed(keys: &KeySet, cp: &SignedCheckpoint) -> Result<(), CheckpointError> {
    cp.fields.validate(&cp.key_id)?;
    let (entry, pk) = keys
        .entries
        .iter()
        .find(|(e, _)| e.key_id == cp.key_id)
        .ok_or_else(|| CheckpointError::UnknownKey {
            key_id: cp.key_id.clone(),
        })?;
    signature::UnparsedPublicKey::new(&signature::ED25519, pk)
        .verify(&cp.fields.signing_input(&cp.key_id), &cp.signature)
        .map_err(|_| CheckpointError::BadSignature {
            key_id: cp.key_id.clone(),
        })?;
    if !entry.valid_at(cp.fields.time_us) {
        return Err(CheckpointError::KeyNotValidAt {
            key_id: cp.key_id.clone(),
            time_us: cp.fields.time_us,
            not_before_us: entry.not_before_us,
            not_after_us: entry.not_after_us,
        });
    }
    Ok(())
}
