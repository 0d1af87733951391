//! The chainer's dedup window: which event ids were chained recently, and with what content.
//!
//! Keyed by a 128-bit digest of the event id ([`IdDigest`]); defined on the chained log itself
//! (the last W records), so every instance rebuilding from the same log makes the same decision.

use std::hash::{BuildHasher, Hash, Hasher};

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

/// One chained record in the ring: 32 bytes, its key and content stored once.
///
/// The content digest stays 128 bits for the same reason as the key (see [`IdDigest`]): a
/// content collision turns an id conflict (another event reusing an id, always chained) into a
/// duplicate, i.e. a dropped audit record. Accidentally that needs a conflict *and* a collision
/// (2^-128 per comparison); adversarially, making someone else's event drop needs its content
/// in advance and a second preimage of truncated SHA-256 (2^128 work). At 64 bits the latter
/// would be 2^64 work, within reach of a determined attacker, hence no shorter.
#[derive(Debug, Clone, Copy)]
struct Rec {
    key: IdDigest,
    content: ContentDigest,
}

/// Largest window: ring slots are indexed by `u32` in the table (slot + 1, 0 meaning empty).
/// A window that large would hold 128 GiB of records; larger requests are clamped to it, the
/// same way on every instance, so decisions stay identical across instances.
pub const MAX_DEDUP_WINDOW: usize = u32::MAX as usize;

/// The dedup keys (and content digests) of the last `capacity` chained records of one
/// partition. Keys are [`crate::identity::dedup_key`]s, contents
/// [`crate::identity::content_digest`]s.
///
/// Defined on the log, never on time, so every chainer instance that reads the same log makes
/// the same keep/drop decision. Every occurrence of a key in the window counts (a conflict, or
/// a log written before dedup existed, repeats keys), so the window is exactly the last
/// `capacity` records whatever their history: a recovered instance that rebuilds it from the
/// last W chained records answers exactly as the live one.
///
/// Memory: about 40 bytes per record (41.6 MB at the 1 M default, measured by
/// `cargo bench -p schemas --bench dedup`); size W to the memory budget times the partitions
/// an instance may own. Layout:
/// - a ring of [`Rec`]s (32 bytes each), in log order, grown on demand up to `capacity`
///   exactly: evictions overwrite the oldest, so they go in log order;
/// - an open-addressing table (linear probing, load ≤ 1/2, so ≤ 8.4 bytes per record) of
///   `u32` entries, one per record: the ring slot + 1 in the low bits, some hash bits above
///   them as a tag that spares most ring reads on a probe. A key's occurrences are all in its
///   probe cluster; a lookup scans the cluster to the first empty entry. Removal shifts the
///   cluster back (no tombstones, so the table never degrades).
///
/// The table's hash is seeded per window at random (producers choose ids, so a fixed hash
/// would let them pile keys into one cluster). The seed changes only where entries sit, never
/// an answer: every answer is a function of the ring's contents alone.
#[derive(Clone)]
pub struct DedupWindow {
    capacity: usize,
    /// Log order from `head` (the oldest) once full; `0..len` in log order before.
    ring: Vec<Rec>,
    head: usize,
    /// Power-of-two length (0 until the first record), never more than half full.
    table: Vec<u32>,
    /// `64 - log2(table.len())`: the home index is the top bits of the hash.
    shift: u32,
    /// Bits of an entry holding slot + 1; the rest holds the tag.
    slot_mask: u32,
    seed: (u64, u64),
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

/// Ring growth step floor: small windows allocate once, large ones double up to capacity.
const MIN_RING_ALLOC: usize = 64;
/// Smallest table once anything is recorded.
const MIN_TABLE: usize = 16;

impl DedupWindow {
    /// A window over the last `capacity` records (at most [`MAX_DEDUP_WINDOW`]); 0 disables
    /// dedup (nothing is ever "seen"). Allocates nothing until the first record.
    pub fn new(capacity: usize) -> Self {
        // Two random words per window from std's per-process random keys (no extra crate).
        let rs = std::collections::hash_map::RandomState::new();
        let seed = (rs.hash_one(0x5eed_u64), rs.hash_one(0x5eed_0001_u64));
        Self::with_seed(capacity, seed)
    }

    fn with_seed(capacity: usize, seed: (u64, u64)) -> Self {
        let capacity = capacity.min(MAX_DEDUP_WINDOW);
        // Enough low bits for slot + 1 ≤ capacity.
        let slot_bits = (u64::BITS - (capacity as u64).leading_zeros()).max(1);
        let slot_mask = if slot_bits >= 32 {
            u32::MAX
        } else {
            (1u32 << slot_bits) - 1
        };
        Self {
            capacity,
            ring: Vec::new(),
            head: 0,
            table: Vec::new(),
            shift: 64,
            slot_mask,
            seed,
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

    /// Bytes this window holds on the heap (allocated capacity, whether touched or not).
    pub fn heap_bytes(&self) -> usize {
        self.ring.capacity() * std::mem::size_of::<Rec>()
            + self.table.capacity() * std::mem::size_of::<u32>()
    }

    /// New, duplicate or conflicting (see [`Seen`]); changes nothing.
    pub fn check(&self, key: &IdDigest, content: &ContentDigest) -> Seen {
        let mut found = false;
        let done = self.each_occurrence(key, |r| {
            found = true;
            r.content == *content
        });
        match (done, found) {
            (true, _) => Seen::Duplicate,
            (false, true) => Seen::Conflict,
            (false, false) => Seen::New,
        }
    }

    /// Calls `f` on every record in the window with `key` (in no particular order) until it
    /// returns `true`; returns whether it did.
    fn each_occurrence(&self, key: &IdDigest, mut f: impl FnMut(&Rec) -> bool) -> bool {
        if self.table.is_empty() {
            return false;
        }
        let h = self.hash(key);
        let tag = h as u32 & !self.slot_mask;
        let mask = self.table.len() - 1;
        let mut i = self.home(h);
        loop {
            let e = self.table[i];
            if e == 0 {
                return false;
            }
            if e & !self.slot_mask == tag {
                let r = &self.ring[self.slot_of(e)];
                if r.key == *key && f(r) {
                    return true;
                }
            }
            i = (i + 1) & mask;
        }
    }

    /// Record that a record with `key` and `content` was chained (appended to the log),
    /// evicting the oldest if full.
    pub fn record(&mut self, key: IdDigest, content: ContentDigest) {
        if self.capacity == 0 {
            return;
        }
        let rec = Rec { key, content };
        let slot = if self.ring.len() < self.capacity {
            if self.ring.len() == self.ring.capacity() {
                // Exact steps, so a full window holds `capacity` records and not the next
                // power of two.
                let len = self.ring.len();
                let step = len.max(MIN_RING_ALLOC).min(self.capacity - len);
                self.ring.reserve_exact(step);
            }
            self.ring.push(rec);
            if self.ring.len() * 2 > self.table.len() {
                self.grow_table();
                return;
            }
            self.ring.len() - 1
        } else {
            // Full: the oldest record leaves (log order) and its slot takes the new one.
            let slot = self.head;
            self.remove_entry(slot);
            self.ring[slot] = rec;
            self.head = if slot + 1 == self.capacity {
                0
            } else {
                slot + 1
            };
            slot
        };
        self.insert_entry(slot);
    }

    fn hash(&self, key: &IdDigest) -> u64 {
        // Folded 64×64→128 multiply of the seeded halves: cheap, and with an unknown seed a
        // producer cannot aim keys at one cluster.
        let p = u128::from(key.0 ^ self.seed.0) * u128::from(key.1 ^ self.seed.1);
        (p as u64) ^ ((p >> 64) as u64)
    }

    fn home(&self, h: u64) -> usize {
        // The tag uses bits of the low 32, the home index the top ones: independent for any
        // table under 2^32 entries.
        h.checked_shr(self.shift).unwrap_or(0) as usize
    }

    fn slot_of(&self, e: u32) -> usize {
        (e & self.slot_mask) as usize - 1
    }

    /// Adds the table entry of ring slot `slot` (the table has room: load ≤ 1/2).
    fn insert_entry(&mut self, slot: usize) {
        let h = self.hash(&self.ring[slot].key);
        let e = (slot as u32 + 1) | (h as u32 & !self.slot_mask);
        let mask = self.table.len() - 1;
        let mut i = self.home(h);
        while self.table[i] != 0 {
            i = (i + 1) & mask;
        }
        self.table[i] = e;
    }

    /// Removes the table entry of ring slot `slot`, shifting the rest of its cluster back so
    /// every entry stays reachable from its home without crossing an empty one.
    fn remove_entry(&mut self, slot: usize) {
        let h = self.hash(&self.ring[slot].key);
        let want = slot as u32 + 1;
        let mask = self.table.len() - 1;
        let mut i = self.home(h);
        loop {
            let e = self.table[i];
            if e == 0 {
                // Every ring slot has an entry: unreachable, and harmless if it were.
                return;
            }
            if e & self.slot_mask == want {
                break;
            }
            i = (i + 1) & mask;
        }
        let mut hole = i;
        let mut j = (i + 1) & mask;
        loop {
            let e = self.table[j];
            if e == 0 {
                break;
            }
            let home = self.home(self.hash(&self.ring[self.slot_of(e)].key));
            // `e` may fill the hole iff the hole lies on its probe path, i.e. in [home, j).
            if (j.wrapping_sub(home) & mask) >= (j.wrapping_sub(hole) & mask) {
                self.table[hole] = e;
                hole = j;
            }
            j = (j + 1) & mask;
        }
        self.table[hole] = 0;
    }

    /// Doubles the table (to at least twice the records) and re-enters every ring slot.
    fn grow_table(&mut self) {
        let want = (self.ring.len() * 2).next_power_of_two().max(MIN_TABLE);
        self.table = vec![0; want];
        self.shift = 64 - want.trailing_zeros();
        for slot in 0..self.ring.len() {
            self.insert_entry(slot);
        }
    }

    /// Whether the raw id `event_id` (keyed by [`IdDigest::of`], without namespace or content)
    /// is among the last `capacity` records. For tests and tools; the chainer uses
    /// [`DedupWindow::check`].
    pub fn contains(&self, event_id: &str) -> bool {
        self.each_occurrence(&IdDigest::of(event_id), |_| true)
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
        self.head = 0;
        self.table.fill(0);
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

    use proptest::prelude::*;
    use std::collections::VecDeque;

    /// The window as the contract states it: the last `capacity` records, scanned linearly.
    struct Model {
        capacity: usize,
        recs: VecDeque<(IdDigest, ContentDigest)>,
    }

    impl Model {
        fn check(&self, k: &IdDigest, c: &ContentDigest) -> Seen {
            let mut seen = Seen::New;
            for (rk, rc) in &self.recs {
                if rk == k {
                    if rc == c {
                        return Seen::Duplicate;
                    }
                    seen = Seen::Conflict;
                }
            }
            seen
        }
        fn record(&mut self, k: IdDigest, c: ContentDigest) {
            if self.capacity == 0 {
                return;
            }
            if self.recs.len() == self.capacity {
                self.recs.pop_front();
            }
            self.recs.push_back((k, c));
        }
    }

    /// A known seed, so tests can build keys that all hash to 0 (`IdDigest(SEED.0, _)`): one
    /// home, one tag, every probe compares full keys.
    const SEED: (u64, u64) = (0x0123_4567_89ab_cdef, 0x0fed_cba9_8765_4321);

    fn key(i: u8) -> IdDigest {
        if i % 2 == 0 {
            IdDigest(SEED.0, u64::from(i))
        } else {
            IdDigest::of(&format!("k{i}"))
        }
    }

    /// Every ring slot has exactly one entry, reachable from its home without an empty entry.
    fn assert_table_sound(w: &DedupWindow) {
        let live = w.table.iter().filter(|&&e| e != 0).count();
        assert_eq!(live, w.ring.len());
        assert!(w.table.is_empty() || w.ring.len() * 2 <= w.table.len());
        let mask = w.table.len().wrapping_sub(1);
        let mut slots = std::collections::HashSet::new();
        for (i, &e) in w.table.iter().enumerate() {
            if e == 0 {
                continue;
            }
            let slot = w.slot_of(e);
            assert!(slots.insert(slot), "slot {slot} entered twice");
            let h = w.hash(&w.ring[slot].key);
            assert_eq!(
                e & !w.slot_mask,
                h as u32 & !w.slot_mask,
                "tag of slot {slot}"
            );
            let mut j = w.home(h);
            while j != i {
                assert_ne!(w.table[j], 0, "slot {slot} cut off from its home");
                j = (j + 1) & mask;
            }
        }
    }

    #[derive(Debug, Clone)]
    enum Op {
        /// The chainer's step: check, then record unless a duplicate.
        Chain(u8, u8),
        /// Recovery and pre-dedup logs: record whatever it is.
        Record(u8, u8),
    }

    fn ops() -> impl Strategy<Value = Vec<Op>> {
        let op = prop_oneof![
            (0u8..10, 0u8..3).prop_map(|(k, c)| Op::Chain(k, c)),
            (0u8..10, 0u8..3).prop_map(|(k, c)| Op::Record(k, c)),
        ];
        prop::collection::vec(op, 0..400)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        #[test]
        fn window_answers_as_the_linear_model(
            capacity in prop_oneof![Just(0usize), Just(1), Just(2), 0usize..48],
            ops in ops(),
            random_seed in any::<bool>(),
        ) {
            let mut w = if random_seed {
                DedupWindow::new(capacity)
            } else {
                DedupWindow::with_seed(capacity, SEED)
            };
            let mut m = Model { capacity, recs: VecDeque::new() };
            let c = |b: u8| ContentDigest([b; 16]);
            for op in &ops {
                let (k, ct, always) = match *op {
                    Op::Chain(k, ct) => (key(k), c(ct), false),
                    Op::Record(k, ct) => (key(k), c(ct), true),
                };
                let seen = w.check(&k, &ct);
                prop_assert_eq!(seen, m.check(&k, &ct));
                if always || seen != Seen::Duplicate {
                    w.record(k, ct);
                    m.record(k, ct);
                }
                prop_assert_eq!(w.len(), m.recs.len());
                assert_table_sound(&w);
            }
            // A window rebuilt from the last W records (another instance: another seed)
            // answers as the live one, for every key and content.
            let mut r = DedupWindow::new(capacity);
            for &(k, ct) in &m.recs {
                r.record(k, ct);
            }
            assert_table_sound(&r);
            for k in 0..11 {
                for ct in 0..4 {
                    let expect = m.check(&key(k), &c(ct));
                    prop_assert_eq!(w.check(&key(k), &c(ct)), expect);
                    prop_assert_eq!(r.check(&key(k), &c(ct)), expect);
                }
            }
        }

        #[test]
        fn raw_id_api_answers_as_the_linear_model(
            capacity in 0usize..20,
            ids in prop::collection::vec(0u8..12, 0..120),
            split in 0usize..120,
        ) {
            let names: Vec<String> = ids.iter().map(|i| format!("id-{i}")).collect();
            let split = split.min(names.len());
            let mut w = DedupWindow::new(capacity);
            // Rebuild from a prefix (possibly longer than the window), then live traffic.
            w.rebuild(&names[..split]);
            let mut m = Model { capacity, recs: VecDeque::new() };
            for n in &names[..split] {
                m.record(IdDigest::of(n), ContentDigest::default());
            }
            for n in &names[split..] {
                let known = m.check(&IdDigest::of(n), &ContentDigest::default()) != Seen::New;
                prop_assert_eq!(w.contains(n), known);
                prop_assert_eq!(w.check_and_insert(n), !known);
                if !known {
                    m.record(IdDigest::of(n), ContentDigest::default());
                }
                assert_table_sound(&w);
            }
        }
    }

    #[test]
    fn a_full_window_holds_exactly_its_capacity() {
        let mut w = DedupWindow::new(1000);
        assert_eq!(
            w.heap_bytes(),
            0,
            "nothing allocated before the first record"
        );
        for i in 0..5000u32 {
            w.record(IdDigest::of(&i.to_string()), ContentDigest::default());
        }
        assert_eq!(w.len(), 1000);
        // 1000 records of 32 bytes, a 2048-entry table of u32.
        assert_eq!(w.heap_bytes(), 1000 * 32 + 2048 * 4);
        assert_table_sound(&w);
    }

    #[test]
    fn huge_windows_are_clamped_alike() {
        let w = DedupWindow::new(usize::MAX);
        assert_eq!(w.capacity(), MAX_DEDUP_WINDOW);
        assert_eq!(w.slot_mask, u32::MAX);
        let mut w = DedupWindow::new(MAX_DEDUP_WINDOW);
        w.record(key(1), ContentDigest([1; 16]));
        assert_eq!(w.check(&key(1), &ContentDigest([1; 16])), Seen::Duplicate);
        assert_eq!(w.check(&key(1), &ContentDigest([2; 16])), Seen::Conflict);
    }
}
