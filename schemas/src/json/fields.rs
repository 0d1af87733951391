//! The keys of a JSON object being mapped, as a vector the mapping takes values out of.
//!
//! The mapping reads every known field by each of its aliases (most of them absent) and removes
//! what it reads, so that what remains is what it did not use: some 150 lookups per event. On
//! serde_json's `BTreeMap` each was a tree search of `memcmp` calls, and each hit a removal
//! with rebalancing: 7% of ingest's CPU under `perf`, and a binary search over sorted keys was
//! no cheaper (the `memcmp` calls were the cost). Here each key carries a signature (its length
//! and first bytes in one word) and a lookup scans the signatures, comparing bytes only on a
//! signature match; a hit leaves a hole, so nothing moves.

use serde_json::{Map, Value};

/// An object's entries in the map's order; a taken value leaves `None`.
#[derive(Debug, Default)]
pub(crate) struct Fields {
    entries: Vec<Entry>,
    /// Entries still holding a value.
    live: usize,
}

#[derive(Debug)]
struct Entry {
    sig: u64,
    key: String,
    value: Option<Value>,
}

/// The key's length and its first seven bytes: equal keys have equal signatures, and keys of
/// the mapping's vocabulary almost never share one unless equal.
fn signature(key: &str) -> u64 {
    let b = key.as_bytes();
    let mut word = [0u8; 8];
    let n = b.len().min(7);
    word[..n].copy_from_slice(&b[..n]);
    word[7] = b.len().min(255) as u8;
    u64::from_le_bytes(word)
}

impl Fields {
    /// Takes the entries of `map`.
    pub fn new(map: Map<String, Value>) -> Self {
        let entries: Vec<Entry> = map
            .into_iter()
            .map(|(key, v)| Entry {
                sig: signature(&key),
                key,
                value: Some(v),
            })
            .collect();
        let live = entries.len();
        Fields { entries, live }
    }

    fn slot(&self, key: &str) -> Option<usize> {
        let sig = signature(key);
        self.entries
            .iter()
            .position(|e| e.sig == sig && e.key == key)
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.slot(key).and_then(|i| self.entries[i].value.as_ref())
    }

    /// Removes and returns the value of `key`.
    pub fn remove(&mut self, key: &str) -> Option<Value> {
        let i = self.slot(key)?;
        let v = self.entries[i].value.take();
        if v.is_some() {
            self.live -= 1;
        }
        v
    }

    pub fn is_empty(&self) -> bool {
        self.live == 0
    }

    /// What was not taken, in the map's order.
    pub fn into_remaining(self) -> impl Iterator<Item = (String, Value)> {
        self.entries
            .into_iter()
            .filter_map(|e| e.value.map(|v| (e.key, v)))
    }

    /// What was not taken, as a JSON object.
    pub fn into_map(self) -> Map<String, Value> {
        self.into_remaining().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Any sequence of reads and removals gives what the same on serde_json's map gives,
        /// and the remainder is the same object.
        #[test]
        fn behaves_as_the_json_map(
            keys in proptest::collection::btree_set("[a-e]{0,9}", 0..12),
            ops in proptest::collection::vec((any::<bool>(), "[a-e]{0,9}"), 0..40),
        ) {
            let map: Map<String, Value> = keys
                .iter()
                .enumerate()
                .map(|(i, k)| (k.clone(), if i % 3 == 0 { Value::Null } else { Value::from(i) }))
                .collect();
            let mut want = map.clone();
            let mut got = Fields::new(map);
            for (remove, key) in ops {
                if remove {
                    prop_assert_eq!(got.remove(&key), want.remove(&key));
                } else {
                    prop_assert_eq!(got.get(&key), want.get(&key));
                }
                prop_assert_eq!(got.is_empty(), want.is_empty());
            }
            prop_assert_eq!(got.into_map(), want);
        }
    }

    #[test]
    fn keys_sharing_a_signature_are_told_apart() {
        // Same length, same first seven bytes.
        let map: Map<String, Value> = [("abcdefgX", 1), ("abcdefgY", 2), ("", 3), ("abcdefg", 4)]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), Value::from(v)))
            .collect();
        assert_eq!(signature("abcdefgX"), signature("abcdefgY"));
        let mut f = Fields::new(map);
        assert_eq!(f.get("abcdefgY"), Some(&Value::from(2)));
        assert_eq!(f.remove("abcdefgX"), Some(Value::from(1)));
        assert_eq!(f.get("abcdefgX"), None);
        assert_eq!(f.get("abcdefgZ"), None);
        assert_eq!(f.remove(""), Some(Value::from(3)));
        assert_eq!(f.get("abcdefg"), Some(&Value::from(4)));
        assert!(!f.is_empty());
        assert_eq!(f.into_map().len(), 2);
    }
}
