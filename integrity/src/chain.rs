//! The per-partition hash chain: the link rule and the chainer's running head.
//!
//! Two versions of the rule exist; a partition's chain uses one of them from its first link to
//! its last ([`ChainRule`]). The chainer starts every new partition with v2 and continues an
//! existing one under the rule its records use.
//!
//! `audit-chain/v2` (docs/architecture.md, "The chain"), byte for byte:
//!
//! ```text
//! hash = SHA-256( "audit-chain/v2"          14 ASCII bytes, no length prefix, no terminator
//!               ‖ partition                 u32, big-endian
//!               ‖ seq                       u64, big-endian (1-based)
//!               ‖ schema fingerprint        u64, big-endian: CRC-64-AVRO (Rabin) fingerprint
//!                                           of the AuditEvent schema of `canonical_version`
//!               ‖ prev_hash                 32 bytes
//!               ‖ canonical(event) )        the event's Avro binary encoding, to the end
//!
//! prev_hash of seq 1 = SHA-256( "audit-chain/v2 genesis" ‖ u32 BE len ‖ chain id ‖ u32 BE partition )
//! ```
//!
//! So the chain id is bound into the first link (a partition of another chain, even one signed
//! by the same key, has another genesis and fails), and the schema the canonical bytes were
//! encoded with is bound into every link (bytes re-read under another schema version never
//! verify). `audit-chain/v1` is the same without the fingerprint, with 32 zero bytes as the
//! prev_hash of seq 1 ([`GENESIS`]).
//!
//! Every field before the event has a fixed width, so the concatenation is unambiguous even
//! though the event bytes are not length-prefixed. Everything here takes the canonical bytes as
//! `&[u8]`, so it does not depend on how they were produced; [`link_hash_event`] and
//! [`ChainHead::next_event`] are the thin wrappers over `avro::canonical_bytes`.

use sha2::{Digest, Sha256};
use thiserror::Error;

/// A SHA-256 output.
pub use crate::tree::Hash32;

/// `prev_hash` of seq 1.
pub const GENESIS: Hash32 = [0u8; 32];

/// Domain tag hashed first in every link, so a link hash can never be confused with a hash of
/// anything else this system (or another one) computes over similar bytes.
pub const CHAIN_DOMAIN: &[u8] = b"audit-chain/v1";

/// Domain tag of `audit-chain/v2` links (same length as v1's, so the header layout only grows
/// by the fingerprint).
pub const CHAIN_DOMAIN_V2: &[u8] = b"audit-chain/v2";

/// Domain tag of the v2 genesis value (the prev_hash of seq 1).
pub const GENESIS_DOMAIN_V2: &[u8] = b"audit-chain/v2 genesis";

/// The version of the link rule a partition's chain uses (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub enum ChainRule {
    /// `audit-chain/v1`: chains written before v2 (continued under v1 forever).
    V1,
    /// `audit-chain/v2`: the chain id in the genesis, the schema fingerprint in every link.
    #[default]
    V2,
}

impl ChainRule {
    /// `1` or `2` (the number in the rule's name; also the value of the chainer's
    /// `audit.chain_rule` checkpoint header).
    pub fn number(self) -> u8 {
        match self {
            ChainRule::V1 => 1,
            ChainRule::V2 => 2,
        }
    }

    pub fn from_number(n: u8) -> Option<Self> {
        match n {
            1 => Some(ChainRule::V1),
            2 => Some(ChainRule::V2),
            _ => None,
        }
    }

    /// The prev_hash of seq 1 (and the head of an empty chain) in partition `partition` of
    /// chain `chain_id`.
    pub fn genesis(self, chain_id: &str, partition: u32) -> Hash32 {
        match self {
            ChainRule::V1 => GENESIS,
            ChainRule::V2 => genesis_v2(chain_id, partition),
        }
    }

    /// The link hash under this rule; `schema_fingerprint` is ignored by v1.
    #[inline]
    pub fn link(
        self,
        partition: u32,
        seq: u64,
        schema_fingerprint: u64,
        prev: &Hash32,
        canonical: &[u8],
    ) -> Hash32 {
        match self {
            ChainRule::V1 => link_hash(partition, seq, prev, canonical),
            ChainRule::V2 => link_hash_v2(partition, seq, schema_fingerprint, prev, canonical),
        }
    }

    /// The rule under which a stored record's `hash` recomputes from its own `prev_hash` and
    /// canonical bytes (v2 tried first), or `None` if under neither (a tampered record).
    pub fn detect(
        partition: u32,
        seq: u64,
        schema_fingerprint: u64,
        prev: &Hash32,
        canonical: &[u8],
        stored_hash: &[u8],
    ) -> Option<Self> {
        [ChainRule::V2, ChainRule::V1]
            .into_iter()
            .find(|r| r.link(partition, seq, schema_fingerprint, prev, canonical) == stored_hash)
    }
}

impl std::fmt::Display for ChainRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "audit-chain/v{}", self.number())
    }
}

/// `audit-chain/v2`'s prev_hash of seq 1 for (`chain_id`, `partition`) (module docs).
pub fn genesis_v2(chain_id: &str, partition: u32) -> Hash32 {
    let mut h = Sha256::new();
    h.update(GENESIS_DOMAIN_V2);
    // Chain ids are short strings; a longer one cannot occur (the chainer's config), and a
    // saturated length still keeps distinct ids distinct (the bytes follow).
    h.update(
        u32::try_from(chain_id.len())
            .unwrap_or(u32::MAX)
            .to_be_bytes(),
    );
    h.update(chain_id.as_bytes());
    h.update(partition.to_be_bytes());
    h.finalize().into()
}

/// The `audit-chain/v2` link hash (module docs); header on the stack, event bytes streamed.
#[inline]
pub fn link_hash_v2(
    partition: u32,
    seq: u64,
    schema_fingerprint: u64,
    prev: &Hash32,
    canonical: &[u8],
) -> Hash32 {
    let mut header = [0u8; 66];
    header[..14].copy_from_slice(CHAIN_DOMAIN_V2);
    header[14..18].copy_from_slice(&partition.to_be_bytes());
    header[18..26].copy_from_slice(&seq.to_be_bytes());
    header[26..34].copy_from_slice(&schema_fingerprint.to_be_bytes());
    header[34..].copy_from_slice(prev);
    let mut h = Sha256::new();
    h.update(header);
    h.update(canonical);
    h.finalize().into()
}

/// The schema fingerprint v2 binds for canonical version `version` (the catalog's AuditEvent
/// schema of that version), or `None` for a version this build does not know.
pub fn schema_fingerprint(version: i32) -> Option<u64> {
    schemas::avro::catalog()
        .ok()?
        .by_version(schemas::avro::RecordKind::AuditEvent, version)
        .map(|e| e.fingerprint)
}

/// Recomputes a stored record's link hash from its event (re-encoded under its recorded
/// canonical version) and its stored `prev_hash`: under the rule its stored `hash` recomputes
/// with (v2 tried first), else under v2 (the caller sees the mismatch). For tools that rebuild
/// leaves record by record (proofs); the verifier fixes one rule per partition instead.
pub fn rehash_stored(
    partition: u32,
    ev: &schemas::event::ChainedEvent,
    buf: &mut Vec<u8>,
) -> Result<Hash32, String> {
    buf.clear();
    schemas::avro::canonical_bytes_version_into(&ev.event, ev.canonical_version, buf)
        .map_err(|e| format!("cannot re-encode the event: {e}"))?;
    let prev: Hash32 = ev
        .prev_hash
        .as_slice()
        .try_into()
        .map_err(|_| format!("prev_hash is {} bytes, not 32", ev.prev_hash.len()))?;
    let seq = u64::try_from(ev.seq).map_err(|_| format!("seq {} is negative", ev.seq))?;
    let fp = schema_fingerprint(ev.canonical_version).unwrap_or(0);
    let rule = ChainRule::detect(partition, seq, fp, &prev, buf, &ev.hash).unwrap_or_default();
    Ok(rule.link(partition, seq, fp, &prev, buf))
}

/// Errors of the chain's conversions between wire values and chain values.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ChainError {
    #[error("partition {0} is negative")]
    NegativePartition(i32),
    #[error("seq {0} is out of range (must be 1 ..= i64::MAX)")]
    SeqOutOfRange(i128),
    #[error("{field} must be 32 bytes, got {len}")]
    BadHashLength { field: &'static str, len: usize },
    /// An input record is framed with a schema this instance cannot resolve (unknown
    /// fingerprint, version or schema id, no registry configured): version skew or a
    /// configuration fault. Dead-lettering it would skip an event in the chain, so the worker
    /// must stop instead.
    #[error("input at offset {offset} uses a schema this chainer cannot read ({detail}); deploy a chainer that knows it, or fix the schema registry configuration")]
    UnknownSchema { offset: i64, detail: String },
}

/// The link hash of the record at (`partition`, `seq`) whose predecessor's hash is `prev`.
///
/// This is the verifier's inner loop: the 58-byte header is assembled on the stack and the
/// event bytes are streamed into SHA-256 after it, never copied into a joint buffer.
#[inline]
pub fn link_hash(partition: u32, seq: u64, prev: &Hash32, canonical: &[u8]) -> Hash32 {
    let mut header = [0u8; 58];
    header[..14].copy_from_slice(CHAIN_DOMAIN);
    header[14..18].copy_from_slice(&partition.to_be_bytes());
    header[18..26].copy_from_slice(&seq.to_be_bytes());
    header[26..].copy_from_slice(prev);
    let mut h = Sha256::new();
    h.update(header);
    h.update(canonical);
    h.finalize().into()
}

/// [`link_hash`] of an event, encoding it canonically (current canonical version).
pub fn link_hash_event(
    partition: u32,
    seq: u64,
    prev: &Hash32,
    event: &schemas::event::AuditEvent,
) -> Result<Hash32, schemas::SchemaError> {
    Ok(link_hash(
        partition,
        seq,
        prev,
        &schemas::avro::canonical_bytes(event)?,
    ))
}

/// Wire partition (Avro `int`) → chain partition. Negative partitions do not exist in Kafka; one
/// in stored data is corruption, not something to wrap around.
pub fn partition_u32(partition: i32) -> Result<u32, ChainError> {
    u32::try_from(partition).map_err(|_| ChainError::NegativePartition(partition))
}

/// Wire seq (Avro `long`) → chain seq. Seq 0 is "nothing chained yet", never a record's seq.
pub fn seq_u64(seq: i64) -> Result<u64, ChainError> {
    if seq >= 1 {
        Ok(seq as u64)
    } else {
        Err(ChainError::SeqOutOfRange(seq.into()))
    }
}

/// Chain seq → wire seq. Fails only past `i64::MAX`, which no chain reaches.
pub fn seq_i64(seq: u64) -> Result<i64, ChainError> {
    i64::try_from(seq).map_err(|_| ChainError::SeqOutOfRange(seq.into()))
}

/// A stored hash field (`Vec<u8>` on the wire) → `Hash32`.
pub fn hash32(field: &'static str, bytes: &[u8]) -> Result<Hash32, ChainError> {
    bytes.try_into().map_err(|_| ChainError::BadHashLength {
        field,
        len: bytes.len(),
    })
}

/// One new link, as the chainer writes it into `ChainedEvent`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Link {
    pub seq: u64,
    pub prev_hash: Hash32,
    pub hash: Hash32,
}

/// The chainer's running state for one partition: the last assigned seq and its hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainHead {
    pub partition: u32,
    /// Last assigned seq; 0 while the chain is empty.
    pub seq: u64,
    /// Hash of `seq`; the rule's genesis value while the chain is empty.
    pub head: Hash32,
    /// The link rule of this partition's chain.
    pub rule: ChainRule,
}

/// The fingerprint of the current canonical schema (what the chainer's links bind under v2).
fn current_fingerprint() -> u64 {
    // The catalog is compiled in and its current AuditEvent schema is tested to exist; 0
    // would only make every v2 link fail verification, never a wrong one pass.
    schema_fingerprint(schemas::avro::CANONICAL_VERSION).unwrap_or(0)
}

impl ChainHead {
    /// An empty `audit-chain/v1` chain: the next record gets seq 1 and links to [`GENESIS`].
    /// (Tests and tools that build v1 chains; the chainer starts new chains with
    /// [`ChainHead::genesis_v2`].)
    pub fn genesis(partition: u32) -> Self {
        Self {
            partition,
            seq: 0,
            head: GENESIS,
            rule: ChainRule::V1,
        }
    }

    /// An empty chain under `rule` in chain `chain_id`: seq 1 links to the rule's genesis.
    pub fn genesis_with(rule: ChainRule, chain_id: &str, partition: u32) -> Self {
        Self {
            partition,
            seq: 0,
            head: rule.genesis(chain_id, partition),
            rule,
        }
    }

    /// An empty `audit-chain/v2` chain of `chain_id` (what the chainer starts new partitions
    /// with).
    pub fn genesis_v2(chain_id: &str, partition: u32) -> Self {
        Self::genesis_with(ChainRule::V2, chain_id, partition)
    }

    /// [`ChainHead::resume`] under `rule`.
    pub fn resume_with(
        rule: ChainRule,
        partition: u32,
        seq: u64,
        head: Hash32,
    ) -> Result<Self, ChainError> {
        let mut h = Self::resume(partition, seq, head)?;
        h.rule = rule;
        Ok(h)
    }

    /// Resume after the record (`seq`, `head`) found at the tail of `audit.chained`, under v1
    /// (see [`ChainHead::resume_with`]).
    ///
    /// Bounded to `i64::MAX - 1` so that the next seq still fits the wire's `long`; a stored seq
    /// outside that range is corruption and must stop the chainer rather than wrap.
    pub fn resume(partition: u32, seq: u64, head: Hash32) -> Result<Self, ChainError> {
        if seq >= i64::MAX as u64 {
            return Err(ChainError::SeqOutOfRange(seq.into()));
        }
        Ok(Self {
            partition,
            seq,
            head,
            rule: ChainRule::V1,
        })
    }

    /// Chain one event (its canonical bytes, of the current canonical version) and advance
    /// the head.
    pub fn next(&mut self, canonical: &[u8]) -> Link {
        // Saturating: reaching u64::MAX would take 2^63 records after `resume`'s bound; it keeps
        // the function panic-free without an error path every caller would have to carry.
        let seq = self.seq.saturating_add(1);
        let prev_hash = self.head;
        let hash = self.rule.link(
            self.partition,
            seq,
            current_fingerprint(),
            &prev_hash,
            canonical,
        );
        self.seq = seq;
        self.head = hash;
        Link {
            seq,
            prev_hash,
            hash,
        }
    }

    /// [`ChainHead::next`] for an event, encoding it canonically into `buf` (reused between
    /// calls so the chainer allocates nothing per event). The head only advances on success.
    pub fn next_event(
        &mut self,
        event: &schemas::event::AuditEvent,
        buf: &mut Vec<u8>,
    ) -> Result<Link, schemas::SchemaError> {
        buf.clear();
        schemas::avro::canonical_bytes_into(event, buf)?;
        Ok(self.next(buf))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_hash_matches_the_concatenation() {
        let prev = [7u8; 32];
        let mut buf = Vec::new();
        buf.extend_from_slice(b"audit-chain/v1");
        buf.extend_from_slice(&3u32.to_be_bytes());
        buf.extend_from_slice(&42u64.to_be_bytes());
        buf.extend_from_slice(&prev);
        buf.extend_from_slice(b"event");
        let want: Hash32 = Sha256::digest(&buf).into();
        assert_eq!(link_hash(3, 42, &prev, b"event"), want);
    }

    #[test]
    fn known_vectors() {
        // Computed independently (Python hashlib) so that other languages' verifiers can check
        // their implementation against the same values, and any drift of the rule is caught.
        assert_eq!(
            hex::encode(link_hash(0, 1, &GENESIS, b"hello")),
            "f140e80b1e810325fb343b8b3bb64c4e54e6c51d4db7091410be4cb79fb7cb86"
        );
        assert_eq!(
            hex::encode(link_hash(3, 2, &[0xab; 32], b"")),
            "262c9990d90f140834ab0b0f9061e831ac31810dddbbc3dd1543affa5c46cc6d"
        );
    }

    #[test]
    fn head_advances_from_genesis() {
        let mut head = ChainHead::genesis(5);
        let a = head.next(b"a");
        let b = head.next(b"b");
        assert_eq!(a.seq, 1);
        assert_eq!(a.prev_hash, GENESIS);
        assert_eq!(a.hash, link_hash(5, 1, &GENESIS, b"a"));
        assert_eq!(b.seq, 2);
        assert_eq!(b.prev_hash, a.hash);
        assert_eq!(head.seq, 2);
        assert_eq!(head.head, b.hash);
        let mut resumed = ChainHead::resume(5, 1, a.hash).unwrap();
        assert_eq!(resumed.next(b"b"), b);
        assert!(ChainHead::resume(5, i64::MAX as u64, GENESIS).is_err());
    }

    #[test]
    fn conversions_reject_bad_wire_values() {
        assert_eq!(partition_u32(-1), Err(ChainError::NegativePartition(-1)));
        assert_eq!(partition_u32(7), Ok(7));
        assert!(seq_u64(0).is_err());
        assert!(seq_u64(-5).is_err());
        assert_eq!(seq_u64(9), Ok(9));
        assert!(seq_i64(u64::MAX).is_err());
        assert!(hash32("hash", &[0; 31]).is_err());
        assert_eq!(hash32("hash", &[1; 32]), Ok([1; 32]));
    }
}
