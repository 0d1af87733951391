//! The chainer's dedup window: which event ids were chained recently, and with what content.
//!
//! Keyed by a 128-bit digest of the event id ([`IdDigest`]); defined on the chained log itself
//! (the last W records), so every instance rebuilding from the same log makes the same decision.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hash, Hasher};

use sha2::{Digest, Sha256};

use crate::identity::ContentDigest;

/// Default dedup window: the last 1 M chained records of a partition (design.md).
pub const DEFAULT_DEDUP_WINDOW: usize = 1_000_000;

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
