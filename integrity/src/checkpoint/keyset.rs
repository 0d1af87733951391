//! The verifiers' public key set, with each key's validity window (rotation: see the module
//! docs of `checkpoint`).

use std::path::Path;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde::{Deserialize, Serialize};

use super::error::CheckpointError;

/// One key of the key set file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublicKeyEntry {
    pub key_id: String,
    /// Base64 (standard alphabet) of the 32-byte Ed25519 public key.
    pub public_key: String,
    /// First `time_us` this key may sign at (inclusive).
    pub not_before_us: i64,
    /// First `time_us` this key may no longer sign at (exclusive); `null` = still active.
    pub not_after_us: Option<i64>,
}

impl PublicKeyEntry {
    pub fn valid_at(&self, time_us: i64) -> bool {
        self.not_before_us <= time_us && self.not_after_us.is_none_or(|end| time_us < end)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct KeySetFile {
    keys: Vec<PublicKeyEntry>,
}

/// The verifiers' public key set: `{"keys":[{"key_id","public_key","not_before_us","not_after_us"}]}`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(try_from = "KeySetFile", into = "KeySetFile")]
pub struct KeySet {
    // `pub(super)` for `verify_signed` (signing.rs): the decoded key next to its entry.
    pub(super) entries: Vec<(PublicKeyEntry, [u8; 32])>,
}

impl TryFrom<KeySetFile> for KeySet {
    type Error = CheckpointError;
    fn try_from(f: KeySetFile) -> Result<Self, CheckpointError> {
        let mut set = KeySet::default();
        for e in f.keys {
            set.add(e)?;
        }
        Ok(set)
    }
}

impl From<KeySet> for KeySetFile {
    fn from(s: KeySet) -> Self {
        KeySetFile {
            keys: s.entries.into_iter().map(|(e, _)| e).collect(),
        }
    }
}

impl KeySet {
    pub fn from_json(json: &str) -> Result<Self, CheckpointError> {
        serde_json::from_str(json).map_err(|e| CheckpointError::InvalidKeySet(e.to_string()))
    }

    pub fn load(path: &Path) -> Result<Self, CheckpointError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            CheckpointError::InvalidKeySet(format!("cannot read {}: {e}", path.display()))
        })?;
        Self::from_json(&text)
    }

    pub fn to_json_pretty(&self) -> String {
        // Serialising plain strings and integers cannot fail.
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// Add a key (rotation: add the new key with `not_before_us = T`, and close the old one's
    /// window with [`KeySet::retire`] at the same T).
    pub fn add(&mut self, entry: PublicKeyEntry) -> Result<(), CheckpointError> {
        let bad = |m: String| CheckpointError::InvalidKeySet(m);
        if entry.key_id.is_empty() {
            return Err(bad("empty key_id".into()));
        }
        if self.get(&entry.key_id).is_some() {
            return Err(bad(format!("duplicate key_id {:?}", entry.key_id)));
        }
        if entry
            .not_after_us
            .is_some_and(|end| end <= entry.not_before_us)
        {
            return Err(bad(format!(
                "key {:?}: empty validity window",
                entry.key_id
            )));
        }
        let pk: [u8; 32] = B64
            .decode(entry.public_key.trim())
            .ok()
            .and_then(|v| v.try_into().ok())
            .ok_or_else(|| {
                bad(format!(
                    "key {:?}: public_key is not base64 of 32 bytes",
                    entry.key_id
                ))
            })?;
        self.entries.push((entry, pk));
        Ok(())
    }

    /// Close `key_id`'s window at `not_after_us` (exclusive).
    pub fn retire(&mut self, key_id: &str, not_after_us: i64) -> Result<(), CheckpointError> {
        let (e, _) = self
            .entries
            .iter_mut()
            .find(|(e, _)| e.key_id == key_id)
            .ok_or_else(|| CheckpointError::UnknownKey {
                key_id: key_id.to_owned(),
            })?;
        if not_after_us <= e.not_before_us {
            return Err(CheckpointError::InvalidKeySet(format!(
                "key {key_id:?}: retiring before it starts"
            )));
        }
        e.not_after_us = Some(not_after_us);
        Ok(())
    }

    pub fn get(&self, key_id: &str) -> Option<&PublicKeyEntry> {
        self.entries
            .iter()
            .find(|(e, _)| e.key_id == key_id)
            .map(|(e, _)| e)
    }

    /// The raw Ed25519 public key of `key_id` (what a note's key hash and vkey commit to).
    pub fn public_key(&self, key_id: &str) -> Option<[u8; 32]> {
        self.entries
            .iter()
            .find(|(e, _)| e.key_id == key_id)
            .map(|(_, pk)| *pk)
    }

    pub fn entries(&self) -> impl Iterator<Item = &PublicKeyEntry> {
        self.entries.iter().map(|(e, _)| e)
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}
