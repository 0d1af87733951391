//! The per-partition hash chain: the link rule, the chainer's running head, and the dedup window.
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

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hash, Hasher};

use sha2::{Digest, Sha256};
use thiserror::Error;

use crate::identity::ContentDigest;

/// A SHA-256 output.
pub type Hash32 = [u8; 32];

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
    crate::avro::catalog()
        .ok()?
        .by_version(crate::avro::RecordKind::AuditEvent, version)
        .map(|e| e.fingerprint)
}

/// Recomputes a stored record's link hash from its event (re-encoded under its recorded
/// canonical version) and its stored `prev_hash`: under the rule its stored `hash` recomputes
/// with (v2 tried first), else under v2 (the caller sees the mismatch). For tools that rebuild
/// leaves record by record (proofs); the verifier fixes one rule per partition instead.
pub fn rehash_stored(
    partition: u32,
    ev: &crate::event::ChainedEvent,
    buf: &mut Vec<u8>,
) -> Result<Hash32, String> {
    buf.clear();
    crate::avro::canonical_bytes_version_into(&ev.event, ev.canonical_version, buf)
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

/// Default dedup window: the last 1 M chained records of a partition (design.md).
pub const DEFAULT_DEDUP_WINDOW: usize = 1_000_000;

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
    event: &crate::event::AuditEvent,
) -> Result<Hash32, crate::SchemaError> {
    Ok(link_hash(
        partition,
        seq,
        prev,
        &crate::avro::canonical_bytes(event)?,
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
    schema_fingerprint(crate::avro::CANONICAL_VERSION).unwrap_or(0)
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
        event: &crate::event::AuditEvent,
        buf: &mut Vec<u8>,
    ) -> Result<Link, crate::SchemaError> {
        buf.clear();
        crate::avro::canonical_bytes_into(event, buf)?;
        Ok(self.next(buf))
    }
}

/// 128-bit digest of an event id: the first 16 bytes of SHA-256(id).
///
/// Why 128 bits, and why a cryptographic hash: a collision makes the chainer drop a *different*
/// event as a duplicate, i.e. silently lose an audit record.
/// - Accidental: with W ids in the window and N lookups over the system's life, the chance of
///   any false hit is about N·W / 2^128; for W = 2^20 and N = 2^40 that is 2^-68. A 64-bit
///   digest would give 2^-4 — not acceptable, hence 128.
/// - Adversarial: a producer who can choose ids could at best collide with ids it also chose
///   (birthday bound 2^64 work), i.e. drop its own event, which it could simply not send. Making
///   someone else's event drop needs a second preimage of a truncated SHA-256: 2^128 work. A fast
///   non-cryptographic 128-bit hash (or unkeyed SipHash) would not give that guarantee, and a
///   secret key would break "every instance makes the same decision" unless it were shared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdDigest(u64, u64);

impl IdDigest {
    /// From 16 digest bytes (e.g. [`crate::identity::dedup_key`]'s SHA-256 prefix).
    pub fn from_bytes(b: [u8; 16]) -> Self {
        let mut x = [0u8; 8];
        let mut y = [0u8; 8];
        x.copy_from_slice(&b[0..8]);
        y.copy_from_slice(&b[8..16]);
        Self(u64::from_le_bytes(x), u64::from_le_bytes(y))
    }

    pub fn of(event_id: &str) -> Self {
        let d = Sha256::digest(event_id.as_bytes());
        let mut a = [0u8; 8];
        let mut b = [0u8; 8];
        a.copy_from_slice(&d[0..8]);
        b.copy_from_slice(&d[8..16]);
        Self(u64::from_le_bytes(a), u64::from_le_bytes(b))
    }
}

impl Hash for IdDigest {
    fn hash<H: Hasher>(&self, state: &mut H) {
        // Already uniformly distributed: hand the table 64 of its bits instead of re-hashing.
        state.write_u64(self.0 ^ self.1.rotate_left(29));
    }
}

/// Pass-through hasher for [`IdDigest`] keys (see its `Hash` impl).
#[derive(Debug, Default, Clone, Copy)]
pub struct DigestHasher(u64);

impl Hasher for DigestHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only reached if something other than `IdDigest` is hashed; stay correct anyway.
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// What the dedup window says about an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// Its key is not in the window: chain it.
    New,
    /// Same key, same content as a record in the window: a redelivery, drop it.
    Duplicate,
    /// Same key, different content: another event reusing an id. Never dropped: the chainer
    /// chains it and raises an alarm.
    Conflict,
}

/// One key's occurrences in the window, oldest first: the first inline, the rest (only after
/// a conflict, or in a log written before dedup existed) in a `Vec` that stays unallocated in
/// the common case.
#[derive(Debug, Clone)]
struct Entry {
    pos: u64,
    content: ContentDigest,
    more: Vec<(u64, ContentDigest)>,
}

impl Entry {
    fn has(&self, c: &ContentDigest) -> bool {
        self.content == *c || self.more.iter().any(|(_, x)| x == c)
    }
}

/// The dedup keys (and content digests) of the last `capacity` chained records of one
/// partition. Keys are [`crate::identity::dedup_key`]s, contents
/// [`crate::identity::content_digest`]s.
///
/// Defined on the log, never on time, so every chainer instance that reads the same log makes
/// the same keep/drop decision. Memory: a ring of 16-byte keys plus a map key → entry (about
/// 90 bytes per record with table overhead, so ~90 MB at the 1 M default; size W to the memory
/// budget times the partitions an instance may own).
///
/// The map holds every occurrence of a key in the window (position and content), so the window
/// is exactly the last `capacity` records whatever their history: a recovered instance that
/// rebuilds it from the last W chained records answers exactly as the live one. Evictions go in
/// log order, so the evicted occurrence is always its key's oldest.
#[derive(Clone)]
pub struct DedupWindow {
    capacity: usize,
    ring: VecDeque<IdDigest>,
    latest: HashMap<IdDigest, Entry, BuildHasherDefault<DigestHasher>>,
    /// Log position of `ring[0]`.
    front_pos: u64,
}

impl std::fmt::Debug for DedupWindow {
    // A million digests are no use in a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DedupWindow")
            .field("capacity", &self.capacity)
            .field("len", &self.ring.len())
            .finish()
    }
}

impl Default for DedupWindow {
    fn default() -> Self {
        Self::new(DEFAULT_DEDUP_WINDOW)
    }
}

impl DedupWindow {
    /// A window over the last `capacity` records; 0 disables dedup (nothing is ever "seen").
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            ring: VecDeque::new(),
            latest: HashMap::default(),
            front_pos: 0,
        }
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    pub fn len(&self) -> usize {
        self.ring.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ring.is_empty()
    }

    /// New, duplicate or conflicting (see [`Seen`]); changes nothing.
    pub fn check(&self, key: &IdDigest, content: &ContentDigest) -> Seen {
        if self.capacity == 0 {
            return Seen::New;
        }
        match self.latest.get(key) {
            None => Seen::New,
            Some(e) if e.has(content) => Seen::Duplicate,
            Some(_) => Seen::Conflict,
        }
    }

    /// Record that a record with `key` and `content` was chained (appended to the log),
    /// evicting the oldest if full.
    pub fn record(&mut self, key: IdDigest, content: ContentDigest) {
        if self.capacity == 0 {
            return;
        }
        if self.ring.len() == self.capacity {
            if let Some(old) = self.ring.pop_front() {
                self.evict(old, self.front_pos);
                self.front_pos += 1;
            }
        }
        let pos = self.front_pos + self.ring.len() as u64;
        self.ring.push_back(key);
        match self.latest.get_mut(&key) {
            Some(e) => e.more.push((pos, content)),
            None => {
                self.latest.insert(
                    key,
                    Entry {
                        pos,
                        content,
                        more: Vec::new(),
                    },
                );
            }
        }
    }

    /// Drops the occurrence of `key` at `pos` (its oldest).
    fn evict(&mut self, key: IdDigest, pos: u64) {
        let Some(e) = self.latest.get_mut(&key) else {
            return;
        };
        if e.pos != pos {
            return;
        }
        if e.more.is_empty() {
            self.latest.remove(&key);
        } else {
            let (p, c) = e.more.remove(0);
            e.pos = p;
            e.content = c;
        }
    }

    /// Whether the raw id `event_id` (keyed by [`IdDigest::of`], without namespace or content)
    /// is among the last `capacity` records. For tests and tools; the chainer uses
    /// [`DedupWindow::check`].
    pub fn contains(&self, event_id: &str) -> bool {
        self.capacity > 0 && self.latest.contains_key(&IdDigest::of(event_id))
    }

    /// [`DedupWindow::record`] of a raw id with an empty content digest.
    pub fn insert(&mut self, event_id: &str) {
        self.record(IdDigest::of(event_id), ContentDigest::default());
    }

    /// `true` if the raw id is new (it is now recorded), `false` if it is in the window.
    pub fn check_and_insert(&mut self, event_id: &str) -> bool {
        if self.capacity == 0 {
            return true;
        }
        if self.contains(event_id) {
            return false;
        }
        self.insert(event_id);
        true
    }

    /// Rebuild from raw ids in log order (oldest first). Only the last `capacity` of them end
    /// up in the window, so the caller may pass more than needed.
    pub fn rebuild<I, S>(&mut self, ids: I)
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        self.ring.clear();
        self.latest.clear();
        self.front_pos = 0;
        for id in ids {
            self.insert(id.as_ref());
        }
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

    #[test]
    fn dedup_window_is_defined_on_the_log() {
        let mut w = DedupWindow::new(3);
        assert!(w.check_and_insert("a"));
        assert!(w.check_and_insert("b"));
        assert!(!w.check_and_insert("a"));
        assert!(w.check_and_insert("c"));
        assert!(w.check_and_insert("d")); // evicts a
        assert!(!w.contains("a"));
        assert!(w.contains("b") && w.contains("c") && w.contains("d"));
        assert_eq!(w.len(), 3);
        assert!(w.check_and_insert("a"));
        assert!(!w.contains("b"));
    }

    #[test]
    fn dedup_window_keeps_repeated_ids_until_their_last_occurrence_leaves() {
        let mut w = DedupWindow::new(3);
        w.rebuild(["x", "y", "x"]);
        w.insert("z"); // evicts the first x; the second is still in the window
        assert!(w.contains("x"));
        w.insert("q"); // evicts y
        assert!(!w.contains("y"));
        assert!(w.contains("x"));
        w.insert("r"); // evicts the second x
        assert!(!w.contains("x"));
    }

    #[test]
    fn dedup_rebuild_keeps_only_the_last_w() {
        let mut w = DedupWindow::new(2);
        w.rebuild(["a", "b", "c", "d"]);
        assert!(!w.contains("a") && !w.contains("b"));
        assert!(w.contains("c") && w.contains("d"));
        let mut off = DedupWindow::new(0);
        assert!(off.check_and_insert("a"));
        assert!(off.check_and_insert("a"));
        assert!(!off.contains("a"));
    }
    #[test]
    fn dedup_window_tells_duplicates_from_conflicts() {
        let k = |s: &str| IdDigest::of(s);
        let c = |b: u8| ContentDigest([b; 16]);
        let mut w = DedupWindow::new(3);
        assert_eq!(w.check(&k("a"), &c(1)), Seen::New);
        w.record(k("a"), c(1));
        assert_eq!(w.check(&k("a"), &c(1)), Seen::Duplicate);
        assert_eq!(w.check(&k("a"), &c(2)), Seen::Conflict);
        // The conflicting record is chained: both contents are now known under the key.
        w.record(k("a"), c(2));
        assert_eq!(w.check(&k("a"), &c(1)), Seen::Duplicate);
        assert_eq!(w.check(&k("a"), &c(2)), Seen::Duplicate);
        w.record(k("b"), c(3));
        w.record(k("d"), c(4)); // evicts the first a: its content leaves with it
        assert_eq!(w.check(&k("a"), &c(2)), Seen::Duplicate);
        assert_eq!(w.check(&k("a"), &c(1)), Seen::Conflict);
        // A window rebuilt from the last 3 records answers the same.
        let mut r = DedupWindow::new(3);
        for (key, content) in [("a", 2), ("b", 3), ("d", 4)] {
            r.record(k(key), c(content));
        }
        for content in [1, 2, 9] {
            assert_eq!(r.check(&k("a"), &c(content)), w.check(&k("a"), &c(content)));
        }
        w.record(k("e"), c(5)); // evicts the second a
        assert_eq!(w.check(&k("a"), &c(9)), Seen::New);
        let off = DedupWindow::new(0);
        assert_eq!(off.check(&k("a"), &c(1)), Seen::New);
    }
}
