//! Ed25519-signed checkpoints, the public key set, and inclusion proofs.
//!
//! A checkpoint says: "in chain `chain_id`, partition `p`, the record at `seq` has hash
//! `head_hash`, and the link hashes of seqs `first_seq ..= seq` form the RFC 6962 tree with root
//! `merkle_root`", signed at `time_us` by key `key_id`.
//!
//! # Signing input (v1) — reproduce byte for byte to verify in another language
//!
//! ```text
//! u32 BE 19 ‖ "audit-checkpoint/v1"     domain tag, length-prefixed like the strings below
//! u32 BE len ‖ chain_id                 UTF-8 bytes
//! u32 BE     partition                  0 ..= 2^31-1
//! u64 BE     first_seq                  1 ..= seq
//! u64 BE     seq                        ≤ 2^63-1
//! 32 bytes   head_hash                  link hash of `seq`
//! 32 bytes   merkle_root                RFC 6962 root over the link hashes of first_seq ..= seq
//! i64 BE     time_us                    two's complement, µs since the Unix epoch
//! u32 BE len ‖ key_id                   UTF-8 bytes
//! ```
//!
//! The signature is plain Ed25519 (RFC 8032, not Ed25519ph) over exactly those bytes: 64 bytes.
//! Every variable-length field is length-prefixed and every other field has a fixed width, so no
//! two different field tuples give the same input; the tag keeps a checkpoint signature from
//! ever being valid for anything else the same key might sign.
//!
//! # Keys and rotation
//!
//! A [`KeySet`] lists public keys with a validity window `[not_before_us, not_after_us)` on
//! the checkpoint's `time_us`. Rotating = adding a new key valid from T and closing the old key's
//! window at T: checkpoints signed before T still verify with the old key forever, and a
//! retired key can no longer sign checkpoints that would be accepted as newer.

use std::fmt;
use std::path::Path;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use ring::rand::SystemRandom;
use ring::signature::{self, Ed25519KeyPair, KeyPair as _};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::chain::{link_hash, Hash32};
use crate::checkpoint_record::Checkpoint;
use crate::merkle;

/// Domain tag of the v1 signing input.
pub const CHECKPOINT_DOMAIN: &[u8] = b"audit-checkpoint/v1";

/// Ed25519 signature length.
pub const SIGNATURE_LEN: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CheckpointError {
    /// A field is out of range or has the wrong length: the checkpoint cannot even be checked.
    #[error("malformed checkpoint: {0}")]
    Malformed(String),
    #[error("checkpoint signed with unknown key id {key_id:?}")]
    UnknownKey { key_id: String },
    /// Correctly signed, but at a time the key was not valid for (retired or not yet active).
    #[error(
        "key {key_id:?} is not valid at time_us {time_us} (valid from {not_before_us} until {})",
        not_after_us.map_or_else(|| "no end".to_owned(), |t| t.to_string())
    )]
    KeyNotValidAt {
        key_id: String,
        time_us: i64,
        not_before_us: i64,
        not_after_us: Option<i64>,
    },
    #[error("bad signature on checkpoint (key {key_id:?}): the signed fields were altered or the signature is forged")]
    BadSignature { key_id: String },
    /// Never carries key material, only where it came from and why it was refused.
    #[error("signing key: {0}")]
    InvalidKey(String),
    #[error("key set: {0}")]
    InvalidKeySet(String),
}

fn malformed(msg: impl Into<String>) -> CheckpointError {
    CheckpointError::Malformed(msg.into())
}

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
}

impl CheckpointFields {
    /// Number of leaves under `merkle_root`.
    pub fn tree_size(&self) -> u64 {
        self.seq.saturating_sub(self.first_seq).saturating_add(1)
    }

    fn validate(&self, key_id: &str) -> Result<(), CheckpointError> {
        if self.partition > i32::MAX as u32 {
            return Err(malformed(format!(
                "partition {} exceeds i32",
                self.partition
            )));
        }
        if self.first_seq == 0 || self.first_seq > self.seq || self.seq > i64::MAX as u64 {
            return Err(malformed(format!(
                "range {}..={} is not 1 ≤ first_seq ≤ seq ≤ i64::MAX",
                self.first_seq, self.seq
            )));
        }
        if self.chain_id.is_empty() || u32::try_from(self.chain_id.len()).is_err() {
            return Err(malformed("chain_id is empty or too long"));
        }
        if key_id.is_empty() || u32::try_from(key_id.len()).is_err() {
            return Err(malformed("key_id is empty or too long"));
        }
        Ok(())
    }

    /// The exact bytes signed (see the module docs). Callers validate first, so the length
    /// prefixes fit in u32.
    pub fn signing_input(&self, key_id: &str) -> Vec<u8> {
        let mut out = Vec::with_capacity(
            4 + CHECKPOINT_DOMAIN.len()
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
        put_str(&mut out, CHECKPOINT_DOMAIN);
        put_str(&mut out, self.chain_id.as_bytes());
        out.extend_from_slice(&self.partition.to_be_bytes());
        out.extend_from_slice(&self.first_seq.to_be_bytes());
        out.extend_from_slice(&self.seq.to_be_bytes());
        out.extend_from_slice(&self.head_hash);
        out.extend_from_slice(&self.merkle_root);
        out.extend_from_slice(&self.time_us.to_be_bytes());
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

// ---------------------------------------------------------------------------------------------
// Secrets and signing keys
// ---------------------------------------------------------------------------------------------

/// Secret bytes (a PKCS#8 document). Debug prints "[redacted]"; the buffer is wiped on drop
/// (best effort: the allocator may have copied it before).
pub struct SecretBytes(Vec<u8>);

impl SecretBytes {
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
    /// Base64 (standard alphabet) of the secret, e.g. for an env var. The caller owns the
    /// returned copy.
    pub fn to_base64(&self) -> String {
        B64.encode(&self.0)
    }
}

impl fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl Drop for SecretBytes {
    fn drop(&mut self) {
        self.0.fill(0);
        std::hint::black_box(&self.0);
    }
}

/// A new Ed25519 private key as PKCS#8 v2 (for the keygen command).
pub fn generate_pkcs8() -> Result<SecretBytes, CheckpointError> {
    let doc = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
        .map_err(|_| CheckpointError::InvalidKey("system RNG failed".into()))?;
    Ok(SecretBytes(doc.as_ref().to_vec()))
}

/// The chainer's checkpoint signing key with its key id.
pub struct SigningKey {
    key_id: String,
    pair: Ed25519KeyPair,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("key_id", &self.key_id)
            .field("public_key", &B64.encode(self.public_key()))
            .field("secret", &format_args!("[redacted]"))
            .finish()
    }
}

impl SigningKey {
    /// From PKCS#8 DER (v1 as written by `openssl genpkey -algorithm ed25519`, or v2 as
    /// written by [`generate_pkcs8`]).
    pub fn from_pkcs8(key_id: &str, der: &[u8]) -> Result<Self, CheckpointError> {
        if key_id.is_empty() {
            return Err(CheckpointError::InvalidKey("key id is empty".into()));
        }
        let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(der)
            .map_err(|e| CheckpointError::InvalidKey(format!("not an Ed25519 PKCS#8 key ({e})")))?;
        Ok(Self {
            key_id: key_id.to_owned(),
            pair,
        })
    }

    /// From base64 PKCS#8 text (surrounding whitespace and PEM armour lines are ignored).
    pub fn from_base64(key_id: &str, text: &str) -> Result<Self, CheckpointError> {
        let b64: String = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.starts_with("-----"))
            .collect();
        let der =
            SecretBytes(B64.decode(b64.as_bytes()).map_err(|_| {
                CheckpointError::InvalidKey("key text is not base64 PKCS#8".into())
            })?);
        Self::from_pkcs8(key_id, der.expose())
    }

    /// From a file holding PKCS#8 as DER, as base64, or as PEM.
    pub fn from_pkcs8_file(key_id: &str, path: &Path) -> Result<Self, CheckpointError> {
        let raw = SecretBytes(std::fs::read(path).map_err(|e| {
            CheckpointError::InvalidKey(format!("cannot read {}: {e}", path.display()))
        })?);
        // DER starts with a SEQUENCE tag; text files never start with 0x30 followed by a length.
        if raw.expose().first() == Some(&0x30) {
            if let Ok(k) = Self::from_pkcs8(key_id, raw.expose()) {
                return Ok(k);
            }
        }
        let text = std::str::from_utf8(raw.expose()).map_err(|_| {
            CheckpointError::InvalidKey(format!("{} is neither DER nor text", path.display()))
        })?;
        Self::from_base64(key_id, text)
            .map_err(|e| CheckpointError::InvalidKey(format!("{}: {e}", path.display())))
    }

    /// From an environment variable holding base64 PKCS#8.
    pub fn from_env(key_id: &str, var: &str) -> Result<Self, CheckpointError> {
        let val = std::env::var(var).map_err(|_| {
            CheckpointError::InvalidKey(format!(
                "environment variable {var} is not set or not UTF-8"
            ))
        })?;
        let res = Self::from_base64(key_id, &val);
        let mut val = val.into_bytes();
        val.fill(0);
        std::hint::black_box(&val);
        res.map_err(|e| CheckpointError::InvalidKey(format!("${var}: {e}")))
    }

    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    pub fn public_key(&self) -> [u8; 32] {
        let mut out = [0u8; 32];
        out.copy_from_slice(self.pair.public_key().as_ref());
        out
    }

    /// This key's entry for the public key set.
    pub fn public_entry(&self, not_before_us: i64, not_after_us: Option<i64>) -> PublicKeyEntry {
        PublicKeyEntry {
            key_id: self.key_id.clone(),
            public_key: B64.encode(self.public_key()),
            not_before_us,
            not_after_us,
        }
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

// ---------------------------------------------------------------------------------------------
// Public key set
// ---------------------------------------------------------------------------------------------

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
    entries: Vec<(PublicKeyEntry, [u8; 32])>,
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

    pub fn entries(&self) -> impl Iterator<Item = &PublicKeyEntry> {
        self.entries.iter().map(|(e, _)| e)
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
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

impl TryFrom<&Checkpoint> for SignedCheckpoint {
    type Error = CheckpointError;
    fn try_from(c: &Checkpoint) -> Result<Self, CheckpointError> {
        let h = |field: &str, v: &[u8]| -> Result<Hash32, CheckpointError> {
            v.try_into()
                .map_err(|_| malformed(format!("{field} must be 32 bytes, got {}", v.len())))
        };
        let signature: [u8; SIGNATURE_LEN] = c.signature.as_slice().try_into().map_err(|_| {
            malformed(format!(
                "signature must be 64 bytes, got {}",
                c.signature.len()
            ))
        })?;
        Ok(SignedCheckpoint {
            fields: CheckpointFields {
                chain_id: c.chain_id.clone(),
                partition: u32::try_from(c.partition)
                    .map_err(|_| malformed(format!("negative partition {}", c.partition)))?,
                first_seq: u64::try_from(c.first_seq)
                    .map_err(|_| malformed(format!("negative first_seq {}", c.first_seq)))?,
                seq: u64::try_from(c.seq)
                    .map_err(|_| malformed(format!("negative seq {}", c.seq)))?,
                head_hash: h("head_hash", &c.head_hash)?,
                merkle_root: h("merkle_root", &c.merkle_root)?,
                time_us: c.time_us,
            },
            key_id: c.key_id.clone(),
            signature,
        })
    }
}

impl From<&SignedCheckpoint> for Checkpoint {
    fn from(cp: &SignedCheckpoint) -> Self {
        let f = &cp.fields;
        Checkpoint {
            chain_id: f.chain_id.clone(),
            // Validated ranges (sign/verify refuse anything else); saturate rather than wrap.
            partition: i32::try_from(f.partition).unwrap_or(i32::MAX),
            first_seq: i64::try_from(f.first_seq).unwrap_or(i64::MAX),
            seq: i64::try_from(f.seq).unwrap_or(i64::MAX),
            head_hash: f.head_hash.to_vec(),
            merkle_root: f.merkle_root.to_vec(),
            time_us: f.time_us,
            key_id: cp.key_id.clone(),
            signature: cp.signature.to_vec(),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// JSON form and inclusion proofs
// ---------------------------------------------------------------------------------------------

/// A checkpoint in JSON documents: hashes as lowercase hex, the signature as base64.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointJson {
    pub chain_id: String,
    pub partition: i32,
    pub first_seq: i64,
    pub seq: i64,
    pub head_hash: String,
    pub merkle_root: String,
    pub time_us: i64,
    pub key_id: String,
    pub signature: String,
}

fn hex32(field: &str, s: &str) -> Result<Hash32, String> {
    let v = hex::decode(s).map_err(|_| format!("{field} is not hex"))?;
    v.try_into()
        .map_err(|v: Vec<u8>| format!("{field} must be 32 bytes, got {}", v.len()))
}

impl From<&Checkpoint> for CheckpointJson {
    fn from(c: &Checkpoint) -> Self {
        Self {
            chain_id: c.chain_id.clone(),
            partition: c.partition,
            first_seq: c.first_seq,
            seq: c.seq,
            head_hash: hex::encode(&c.head_hash),
            merkle_root: hex::encode(&c.merkle_root),
            time_us: c.time_us,
            key_id: c.key_id.clone(),
            signature: B64.encode(&c.signature),
        }
    }
}

impl From<&SignedCheckpoint> for CheckpointJson {
    fn from(cp: &SignedCheckpoint) -> Self {
        let f = &cp.fields;
        Self {
            chain_id: f.chain_id.clone(),
            // Validated ranges (sign/verify refuse anything else); saturate rather than wrap.
            partition: i32::try_from(f.partition).unwrap_or(i32::MAX),
            first_seq: i64::try_from(f.first_seq).unwrap_or(i64::MAX),
            seq: i64::try_from(f.seq).unwrap_or(i64::MAX),
            head_hash: hex::encode(f.head_hash),
            merkle_root: hex::encode(f.merkle_root),
            time_us: f.time_us,
            key_id: cp.key_id.clone(),
            signature: B64.encode(cp.signature),
        }
    }
}

impl TryFrom<&CheckpointJson> for SignedCheckpoint {
    type Error = CheckpointError;
    fn try_from(j: &CheckpointJson) -> Result<Self, CheckpointError> {
        let sig = B64
            .decode(j.signature.trim())
            .map_err(|_| malformed("signature is not base64"))?;
        let signature: [u8; SIGNATURE_LEN] = sig.try_into().map_err(|v: Vec<u8>| {
            malformed(format!("signature must be 64 bytes, got {}", v.len()))
        })?;
        Ok(SignedCheckpoint {
            fields: CheckpointFields {
                chain_id: j.chain_id.clone(),
                partition: u32::try_from(j.partition)
                    .map_err(|_| malformed(format!("negative partition {}", j.partition)))?,
                first_seq: u64::try_from(j.first_seq)
                    .map_err(|_| malformed(format!("negative first_seq {}", j.first_seq)))?,
                seq: u64::try_from(j.seq)
                    .map_err(|_| malformed(format!("negative seq {}", j.seq)))?,
                head_hash: hex32("head_hash", &j.head_hash).map_err(malformed)?,
                merkle_root: hex32("merkle_root", &j.merkle_root).map_err(malformed)?,
                time_us: j.time_us,
            },
            key_id: j.key_id.clone(),
            signature,
        })
    }
}

/// The event itself, optionally carried in a proof so the checker can tie content to the hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProvenEvent {
    /// Hex of the stored predecessor hash the link was computed from.
    pub prev_hash: String,
    /// Schema version of `canonical`.
    pub canonical_version: i32,
    /// Base64 of the event's canonical (Avro binary) bytes.
    pub canonical: String,
}

impl ProvenEvent {
    /// From a chained record as stored, re-encoding the event under its recorded canonical
    /// version (so the checker needs no Avro code, only the bytes).
    pub fn from_chained(ev: &crate::event::ChainedEvent) -> Result<Self, crate::SchemaError> {
        let mut canonical = Vec::with_capacity(512);
        crate::avro::canonical_bytes_version_into(&ev.event, ev.canonical_version, &mut canonical)?;
        Ok(Self {
            prev_hash: hex::encode(&ev.prev_hash),
            canonical_version: ev.canonical_version,
            canonical: B64.encode(&canonical),
        })
    }
}

/// `auditctl prove`'s output: everything needed to check one event offline with the key set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InclusionProof {
    pub event_id: String,
    pub chain_partition: i32,
    pub seq: i64,
    /// Hex of the event's link hash (the Merkle leaf).
    pub event_hash: String,
    /// `seq - checkpoint.first_seq`.
    pub leaf_index: u64,
    /// `checkpoint.seq - checkpoint.first_seq + 1`.
    pub tree_size: u64,
    /// Hex sibling hashes, deepest first (RFC 6962 PATH).
    pub merkle_path: Vec<String>,
    pub checkpoint: CheckpointJson,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<ProvenEvent>,
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ProofError {
    #[error("checkpoint: {0}")]
    Checkpoint(#[from] CheckpointError),
    #[error("malformed proof: {0}")]
    Malformed(String),
    #[error("proof is for partition {proof} but the checkpoint is for partition {checkpoint}")]
    PartitionMismatch { proof: i32, checkpoint: i32 },
    #[error("seq {seq} is outside the checkpoint's range {first_seq}..={last_seq}")]
    SeqOutsideCheckpoint {
        seq: i64,
        first_seq: i64,
        last_seq: i64,
    },
    #[error("leaf_index {got} does not match seq - first_seq = {expected}")]
    LeafIndexMismatch { expected: u64, got: u64 },
    #[error("tree_size {got} does not match the checkpoint's range size {expected}")]
    TreeSizeMismatch { expected: u64, got: u64 },
    #[error("the Merkle path does not lead from event_hash to the signed merkle_root")]
    PathMismatch,
    #[error("event_hash is not the checkpoint's head_hash although seq is the checkpoint's seq")]
    HeadMismatch,
    #[error("the supplied event bytes and prev_hash do not hash to event_hash")]
    EventHashMismatch,
}

impl InclusionProof {
    /// Build the proof of the event at `seq`, given the link hashes of the checkpoint's whole
    /// range (`range_hashes[i]` = hash of seq `first_seq + i`). Refuses to produce a proof that
    /// would not check against the checkpoint (stored data that disagrees with it).
    pub fn build(
        event_id: &str,
        seq: u64,
        range_hashes: &[Hash32],
        checkpoint: &SignedCheckpoint,
        event: Option<ProvenEvent>,
    ) -> Result<Self, ProofError> {
        let f = &checkpoint.fields;
        if seq < f.first_seq || seq > f.seq {
            return Err(ProofError::SeqOutsideCheckpoint {
                seq: i64::try_from(seq).unwrap_or(i64::MAX),
                first_seq: i64::try_from(f.first_seq).unwrap_or(i64::MAX),
                last_seq: i64::try_from(f.seq).unwrap_or(i64::MAX),
            });
        }
        if range_hashes.len() as u64 != f.tree_size() {
            return Err(ProofError::TreeSizeMismatch {
                expected: f.tree_size(),
                got: range_hashes.len() as u64,
            });
        }
        if merkle::root(range_hashes) != f.merkle_root {
            return Err(ProofError::PathMismatch);
        }
        let leaf_index = seq - f.first_seq;
        let path = merkle::inclusion_proof(range_hashes, leaf_index)
            .map_err(|e| ProofError::Malformed(e.to_string()))?;
        let cp = CheckpointJson::from(checkpoint);
        Ok(Self {
            event_id: event_id.to_owned(),
            chain_partition: cp.partition,
            seq: i64::try_from(seq).unwrap_or(i64::MAX),
            event_hash: hex::encode(range_hashes[leaf_index as usize]),
            leaf_index,
            tree_size: f.tree_size(),
            merkle_path: path.iter().map(hex::encode).collect(),
            checkpoint: cp,
            event,
        })
    }
}

/// Check an inclusion proof with only the public key set.
///
/// Success proves: a key of the set, valid at the checkpoint's time, signed a tree over the
/// link hashes of `first_seq ..= seq` of this partition, and `event_hash` is the leaf at this
/// event's position. Link hashes commit to (partition, seq, predecessor, event bytes), so the
/// event hash names exactly one event at that place in the chain.
///
/// If the proof carries `event` (canonical bytes and prev hash), this also proves that those
/// exact bytes are the event that was chained at `seq` (they hash to `event_hash` with the
/// partition and seq). Whether the bytes decode to an event with the claimed `event_id` is up to
/// the caller, who can decode them; without `event`, `event_id` is an unproven label.
pub fn check_proof(keys: &KeySet, proof: &InclusionProof) -> Result<(), ProofError> {
    let cp = SignedCheckpoint::try_from(&proof.checkpoint)?;
    verify_signed(keys, &cp)?;
    let f = &cp.fields;
    if proof.chain_partition != proof.checkpoint.partition {
        return Err(ProofError::PartitionMismatch {
            proof: proof.chain_partition,
            checkpoint: proof.checkpoint.partition,
        });
    }
    let outside = || ProofError::SeqOutsideCheckpoint {
        seq: proof.seq,
        first_seq: proof.checkpoint.first_seq,
        last_seq: proof.checkpoint.seq,
    };
    let seq = u64::try_from(proof.seq).map_err(|_| outside())?;
    if seq < f.first_seq || seq > f.seq {
        return Err(outside());
    }
    if proof.leaf_index != seq - f.first_seq {
        return Err(ProofError::LeafIndexMismatch {
            expected: seq - f.first_seq,
            got: proof.leaf_index,
        });
    }
    if proof.tree_size != f.tree_size() {
        return Err(ProofError::TreeSizeMismatch {
            expected: f.tree_size(),
            got: proof.tree_size,
        });
    }
    let event_hash = hex32("event_hash", &proof.event_hash).map_err(ProofError::Malformed)?;
    // Bounded before decoding: a path never exceeds 64 hashes, whatever the file says.
    if proof.merkle_path.len() > 64 {
        return Err(ProofError::PathMismatch);
    }
    let path = proof
        .merkle_path
        .iter()
        .map(|h| hex32("merkle_path entry", h))
        .collect::<Result<Vec<_>, _>>()
        .map_err(ProofError::Malformed)?;
    let implied = merkle::root_from_inclusion(
        merkle::leaf_hash(&event_hash),
        proof.leaf_index,
        f.tree_size(),
        &path,
    );
    if implied != Some(f.merkle_root) {
        return Err(ProofError::PathMismatch);
    }
    if seq == f.seq && event_hash != f.head_hash {
        return Err(ProofError::HeadMismatch);
    }
    if let Some(ev) = &proof.event {
        let prev = hex32("event.prev_hash", &ev.prev_hash).map_err(ProofError::Malformed)?;
        let canonical = B64
            .decode(ev.canonical.trim())
            .map_err(|_| ProofError::Malformed("event.canonical is not base64".into()))?;
        if link_hash(f.partition, seq, &prev, &canonical) != event_hash {
            return Err(ProofError::EventHashMismatch);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chain::ChainHead;

    fn key(id: &str) -> SigningKey {
        let doc = generate_pkcs8().unwrap();
        SigningKey::from_pkcs8(id, doc.expose()).unwrap()
    }

    fn fields() -> CheckpointFields {
        CheckpointFields {
            chain_id: "prod-eu".into(),
            partition: 3,
            first_seq: 1,
            seq: 10,
            head_hash: [1; 32],
            merkle_root: [2; 32],
            time_us: 1_700_000_000_000_000,
        }
    }

    fn set_of(entries: &[PublicKeyEntry]) -> KeySet {
        let mut s = KeySet::default();
        for e in entries {
            s.add(e.clone()).unwrap();
        }
        s
    }

    #[test]
    fn signing_input_layout_is_pinned() {
        let f = CheckpointFields {
            chain_id: "c".into(),
            partition: 2,
            first_seq: 1,
            seq: 3,
            head_hash: [0xaa; 32],
            merkle_root: [0xbb; 32],
            time_us: -1,
        };
        let mut want = Vec::new();
        want.extend_from_slice(&[0, 0, 0, 19]);
        want.extend_from_slice(b"audit-checkpoint/v1");
        want.extend_from_slice(&[0, 0, 0, 1, b'c']);
        want.extend_from_slice(&[0, 0, 0, 2]);
        want.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 1]);
        want.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 3]);
        want.extend_from_slice(&[0xaa; 32]);
        want.extend_from_slice(&[0xbb; 32]);
        want.extend_from_slice(&[0xff; 8]);
        want.extend_from_slice(&[0, 0, 0, 2, b'k', b'1']);
        assert_eq!(f.signing_input("k1"), want);
        // Moving a byte between the two strings changes the input (length prefixes).
        let mut g = f.clone();
        g.chain_id = "ck".into();
        assert_ne!(g.signing_input("1"), f.signing_input("k1"));
    }

    #[test]
    fn sign_and_verify_roundtrip_and_each_field_is_covered() {
        let k = key("k1");
        let keys = set_of(&[k.public_entry(0, None)]);
        let cp = sign_fields(&k, &fields()).unwrap();
        assert_eq!(verify_signed(&keys, &cp), Ok(()));

        type Mutation = Box<dyn Fn(&mut SignedCheckpoint)>;
        let mutations: Vec<Mutation> = vec![
            Box::new(|c| c.fields.chain_id.push('x')),
            Box::new(|c| c.fields.partition += 1),
            Box::new(|c| c.fields.first_seq += 1),
            Box::new(|c| c.fields.seq += 1),
            Box::new(|c| c.fields.head_hash[5] ^= 1),
            Box::new(|c| c.fields.merkle_root[31] ^= 0x80),
            Box::new(|c| c.fields.time_us += 1),
            Box::new(|c| c.signature[0] ^= 1),
        ];
        for (i, m) in mutations.iter().enumerate() {
            let mut bad = cp.clone();
            m(&mut bad);
            assert_eq!(
                verify_signed(&keys, &bad),
                Err(CheckpointError::BadSignature {
                    key_id: "k1".into()
                }),
                "mutation {i}"
            );
        }
        let mut other = cp.clone();
        other.key_id = "k2".into();
        assert_eq!(
            verify_signed(&keys, &other),
            Err(CheckpointError::UnknownKey {
                key_id: "k2".into()
            })
        );
        let mut bad_range = cp.clone();
        bad_range.fields.first_seq = 11;
        assert!(matches!(
            verify_signed(&keys, &bad_range),
            Err(CheckpointError::Malformed(_))
        ));
    }

    #[test]
    fn a_key_of_the_same_id_but_other_material_is_a_bad_signature() {
        let k = key("k1");
        let impostor = key("k1");
        let keys = set_of(&[impostor.public_entry(0, None)]);
        let cp = sign_fields(&k, &fields()).unwrap();
        assert_eq!(
            verify_signed(&keys, &cp),
            Err(CheckpointError::BadSignature {
                key_id: "k1".into()
            })
        );
    }

    #[test]
    fn rotation_keeps_old_checkpoints_valid_and_refuses_retired_keys() {
        let t = 1_000_000;
        let old = key("k1");
        let new = key("k2");
        let mut keys = set_of(&[old.public_entry(0, None)]);
        keys.add(new.public_entry(t, None)).unwrap();
        keys.retire("k1", t).unwrap();
        let json = keys.to_json_pretty();
        let keys = KeySet::from_json(&json).unwrap();
        assert_eq!(keys.get("k1").unwrap().not_after_us, Some(t));

        let at = |time_us| CheckpointFields {
            time_us,
            ..fields()
        };
        assert_eq!(
            verify_signed(&keys, &sign_fields(&old, &at(t - 1)).unwrap()),
            Ok(())
        );
        assert_eq!(
            verify_signed(&keys, &sign_fields(&new, &at(t)).unwrap()),
            Ok(())
        );
        assert!(matches!(
            verify_signed(&keys, &sign_fields(&old, &at(t)).unwrap()),
            Err(CheckpointError::KeyNotValidAt { time_us, not_after_us: Some(end), .. })
                if time_us == t && end == t
        ));
        assert!(matches!(
            verify_signed(&keys, &sign_fields(&new, &at(t - 1)).unwrap()),
            Err(CheckpointError::KeyNotValidAt { .. })
        ));
    }

    #[test]
    fn key_set_file_format_and_validation() {
        let json = r#"{"keys":[{"key_id":"k1","public_key":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=","not_before_us":5,"not_after_us":null}]}"#;
        let ks = KeySet::from_json(json).unwrap();
        assert_eq!(serde_json::to_string(&ks).unwrap(), json);
        let dup = r#"{"keys":[
            {"key_id":"k","public_key":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=","not_before_us":0,"not_after_us":null},
            {"key_id":"k","public_key":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=","not_before_us":0,"not_after_us":null}]}"#;
        assert!(KeySet::from_json(dup).is_err());
        let short = r#"{"keys":[{"key_id":"k","public_key":"AAAA","not_before_us":0,"not_after_us":null}]}"#;
        assert!(KeySet::from_json(short).is_err());
        let empty_window = r#"{"keys":[{"key_id":"k","public_key":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=","not_before_us":5,"not_after_us":5}]}"#;
        assert!(KeySet::from_json(empty_window).is_err());
    }

    #[test]
    fn secrets_never_reach_debug_output() {
        let doc = generate_pkcs8().unwrap();
        let k = SigningKey::from_pkcs8("k1", doc.expose()).unwrap();
        let dbg = format!("{k:?} {doc:?}");
        assert!(dbg.contains("[redacted]"));
        let b64 = doc.to_base64();
        assert!(!dbg.contains(&b64));
        // The 32-byte seed sits at the end of a PKCS#8 v2 document's private key OCTET STRING;
        // no run of 8 secret bytes may appear in the output, in any common encoding.
        for w in doc.expose().windows(8).skip(16).take(32) {
            assert!(!dbg.contains(&hex::encode(w)));
        }
    }

    #[test]
    fn keys_load_from_file_and_env_in_several_encodings() {
        let doc = generate_pkcs8().unwrap();
        let want = SigningKey::from_pkcs8("k", doc.expose())
            .unwrap()
            .public_key();
        let dir = std::env::temp_dir().join(format!("schemas-ckpt-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let der = dir.join("k.der");
        std::fs::write(&der, doc.expose()).unwrap();
        let pem = dir.join("k.pem");
        std::fs::write(
            &pem,
            format!(
                "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
                doc.to_base64()
            ),
        )
        .unwrap();
        for p in [&der, &pem] {
            assert_eq!(
                SigningKey::from_pkcs8_file("k", p).unwrap().public_key(),
                want
            );
        }
        let var = format!("SCHEMAS_TEST_CKPT_KEY_{}", std::process::id());
        std::env::set_var(&var, doc.to_base64());
        assert_eq!(SigningKey::from_env("k", &var).unwrap().public_key(), want);
        std::env::remove_var(&var);
        assert!(matches!(
            SigningKey::from_env("k", &var),
            Err(CheckpointError::InvalidKey(_))
        ));
        std::fs::write(&der, b"garbage").unwrap();
        let err = SigningKey::from_pkcs8_file("k", &der)
            .unwrap_err()
            .to_string();
        assert!(!err.contains("garbage"));
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// (prev hash, event bytes, hash) per seq.
    type Links = Vec<(Hash32, Vec<u8>, Hash32)>;

    fn chain_with_checkpoint(n: usize) -> (SigningKey, KeySet, Links, SignedCheckpoint) {
        let k = key("k1");
        let keys = set_of(&[k.public_entry(0, None)]);
        let mut head = ChainHead::genesis(4);
        let links: Links = (0..n)
            .map(|i| {
                let ev = format!("event-{i}").into_bytes();
                let l = head.next(&ev);
                (l.prev_hash, ev, l.hash)
            })
            .collect();
        let hashes: Vec<Hash32> = links.iter().map(|l| l.2).collect();
        let cp = sign_fields(
            &k,
            &CheckpointFields {
                chain_id: "c".into(),
                partition: 4,
                first_seq: 1,
                seq: n as u64,
                head_hash: head.head,
                merkle_root: merkle::root(&hashes),
                time_us: 10,
            },
        )
        .unwrap();
        (k, keys, links, cp)
    }

    #[test]
    fn inclusion_proofs_check_offline_and_name_what_is_wrong() {
        let (_k, keys, links, cp) = chain_with_checkpoint(13);
        let hashes: Vec<Hash32> = links.iter().map(|l| l.2).collect();
        for seq in 1..=13u64 {
            let l = &links[seq as usize - 1];
            let ev = ProvenEvent {
                prev_hash: hex::encode(l.0),
                canonical_version: 1,
                canonical: B64.encode(&l.1),
            };
            let p = InclusionProof::build("e", seq, &hashes, &cp, Some(ev)).unwrap();
            let json = serde_json::to_string_pretty(&p).unwrap();
            let back: InclusionProof = serde_json::from_str(&json).unwrap();
            assert_eq!(check_proof(&keys, &back), Ok(()), "seq {seq}");
        }
        let good = InclusionProof::build("e", 5, &hashes, &cp, None).unwrap();
        let check = |f: &dyn Fn(&mut InclusionProof)| {
            let mut p = good.clone();
            f(&mut p);
            check_proof(&keys, &p)
        };
        assert_eq!(
            check(&|p| p.event_hash = hex::encode(hashes[5])),
            Err(ProofError::PathMismatch)
        );
        assert_eq!(
            check(&|p| p.merkle_path[1] = hex::encode([9u8; 32])),
            Err(ProofError::PathMismatch)
        );
        assert_eq!(
            check(&|p| {
                p.merkle_path.pop();
            }),
            Err(ProofError::PathMismatch)
        );
        assert_eq!(
            check(&|p| p.leaf_index = 3),
            Err(ProofError::LeafIndexMismatch {
                expected: 4,
                got: 3
            })
        );
        assert_eq!(
            check(&|p| p.tree_size = 12),
            Err(ProofError::TreeSizeMismatch {
                expected: 13,
                got: 12
            })
        );
        assert!(matches!(
            check(&|p| p.seq = 14),
            Err(ProofError::SeqOutsideCheckpoint { .. })
        ));
        assert!(matches!(
            check(&|p| p.chain_partition = 5),
            Err(ProofError::PartitionMismatch { .. })
        ));
        assert!(matches!(
            check(&|p| p.checkpoint.time_us += 1),
            Err(ProofError::Checkpoint(CheckpointError::BadSignature { .. }))
        ));
        assert!(matches!(
            check(&|p| p.checkpoint.key_id = "zz".into()),
            Err(ProofError::Checkpoint(CheckpointError::UnknownKey { .. }))
        ));
        assert!(matches!(
            check(&|p| p.event_hash = "zz".into()),
            Err(ProofError::Malformed(_))
        ));
        assert!(matches!(
            check(&|p| p.checkpoint.signature = "!!".into()),
            Err(ProofError::Checkpoint(CheckpointError::Malformed(_)))
        ));
        let wrong_event = ProvenEvent {
            prev_hash: hex::encode(links[4].0),
            canonical_version: 1,
            canonical: B64.encode(b"event-X"),
        };
        assert_eq!(
            check(&|p| p.event = Some(wrong_event.clone())),
            Err(ProofError::EventHashMismatch)
        );
        // Building refuses a range that disagrees with the checkpoint.
        let mut forged = hashes.clone();
        forged[2][0] ^= 1;
        assert_eq!(
            InclusionProof::build("e", 5, &forged, &cp, None),
            Err(ProofError::PathMismatch)
        );
    }
}
