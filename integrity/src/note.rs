//! C2SP signed notes (c2sp.org/signed-note, v1.0.0), Ed25519 via ring.
//!
//! A note is UTF-8 text ending in a newline, a blank line, then signature lines
//! `— <key name> <base64(key ID (4 bytes, big-endian) ‖ signature)>`. The text is separated from
//! the signatures by the *last* blank line. The key ID of an Ed25519 key is
//! `SHA-256(key name ‖ 0x0A ‖ 0x01 ‖ 32-byte public key)[:4]`; a verifier key ("vkey") is shared
//! as `<name>+<hex key ID>+<base64(type ‖ public key)>`.
//!
//! Verification follows the spec's rules: signatures from unknown keys (name or ID differ) are
//! ignored; a signature from a known key must verify or the whole note is rejected; a note with
//! no verified signature from a known key is rejected. Parsing is strict (one byte string per
//! meaning): canonical base64 only, no control characters but newline, no stray spaces, at most
//! [`MAX_SIGNATURES`] signature lines (the spec requires accepting at least 16; Go's
//! golang.org/x/mod/sumdb/note caps at 100, as we do).
//!
//! Byte-for-byte compatibility with the Go reference implementation is pinned by its test
//! vectors (sumdb/note/note_test.go) in the tests below.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{Ed25519KeyPair, KeyPair, UnparsedPublicKey, ED25519};
use sha2::{Digest, Sha256};
use thiserror::Error;

use crate::b64;
use crate::cosignature;

/// Most signature lines a note may carry.
pub const MAX_SIGNATURES: usize = 100;

/// The separator that starts every signature line: U+2014 EM DASH, then a space.
const SIG_PREFIX: &str = "\u{2014} ";

/// Signature type identifier bytes (c2sp.org/signed-note "Signature types") that we support.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum KeyType {
    /// 0x01: Ed25519 over the note text (a log's checkpoint signature).
    Ed25519,
    /// 0x04: timestamped Ed25519 witness cosignature (c2sp.org/tlog-cosignature).
    CosignatureV1,
}

impl KeyType {
    pub fn id(self) -> u8 {
        match self {
            KeyType::Ed25519 => 0x01,
            KeyType::CosignatureV1 => 0x04,
        }
    }

    pub fn from_id(id: u8) -> Option<Self> {
        match id {
            0x01 => Some(KeyType::Ed25519),
            0x04 => Some(KeyType::CosignatureV1),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum NoteError {
    #[error("malformed note: {0}")]
    Malformed(&'static str),
    #[error("malformed signature line {line}: {reason}")]
    BadSignatureLine { line: usize, reason: &'static str },
    #[error("note has {0} signatures, more than the {MAX_SIGNATURES} accepted")]
    TooManySignatures(usize),
    #[error("invalid key name {0:?} (empty, a space or '+')")]
    BadKeyName(String),
    #[error("invalid verifier key: {0}")]
    BadVerifierKey(&'static str),
    #[error("invalid signing key: {0}")]
    BadSigningKey(&'static str),
    #[error("a {have:?} key cannot make a {want:?} signature")]
    WrongKeyType { have: KeyType, want: KeyType },
    #[error("two trusted keys share name and ID {name}+{key_id:08x}")]
    AmbiguousKey { name: String, key_id: u32 },
    #[error("invalid signature by trusted key {name}+{key_id:08x}")]
    InvalidSignature { name: String, key_id: u32 },
    #[error("no signature by a trusted key")]
    NoTrustedSignature,
    #[error("signing failed")]
    SigningFailed,
}

/// Key names: non-empty, no Unicode space, no '+' (they are also the first field of a vkey).
pub fn is_valid_key_name(name: &str) -> bool {
    !name.is_empty() && !name.chars().any(|c| c.is_whitespace() || c == '+')
}

/// `SHA-256(key name ‖ 0x0A ‖ type ‖ public key)[:4]` as a big-endian u32.
pub fn key_id(name: &str, key_type: KeyType, public_key: &[u8]) -> u32 {
    let mut h = Sha256::new();
    h.update(name.as_bytes());
    h.update([b'\n', key_type.id()]);
    h.update(public_key);
    let d = h.finalize();
    u32::from_be_bytes([d[0], d[1], d[2], d[3]])
}

/// One signature line: who signed (name, key ID) and the signature bytes after the key ID.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Signature {
    pub name: String,
    pub key_id: u32,
    pub bytes: Vec<u8>,
}

impl Signature {
    /// The base64 field of the line: key ID ‖ signature.
    pub fn base64(&self) -> String {
        let mut raw = self.key_id.to_be_bytes().to_vec();
        raw.extend_from_slice(&self.bytes);
        b64::encode(&raw)
    }

    /// `— <name> <base64>\n`
    pub fn line(&self) -> String {
        format!("{SIG_PREFIX}{} {}\n", self.name, self.base64())
    }

    /// Parses one line without its newline.
    fn parse_line(line: &str, n: usize) -> Result<Self, NoteError> {
        let bad = |reason| NoteError::BadSignatureLine { line: n, reason };
        let rest = line
            .strip_prefix(SIG_PREFIX)
            .ok_or(bad("does not start with an em dash and a space"))?;
        let (name, sig) = rest
            .split_once(' ')
            .ok_or(bad("no space between name and signature"))?;
        if !is_valid_key_name(name) {
            return Err(bad("invalid key name"));
        }
        let raw = b64::decode(sig).ok_or(bad("not canonical base64"))?;
        if raw.len() < 5 {
            return Err(bad("shorter than a key ID and one signature byte"));
        }
        Ok(Signature {
            name: name.to_owned(),
            key_id: u32::from_be_bytes([raw[0], raw[1], raw[2], raw[3]]),
            bytes: raw[4..].to_vec(),
        })
    }
}

/// A note: text plus signature lines, not yet verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    text: String,
    signatures: Vec<Signature>,
}

/// Text rules shared by parsing and signing: non-empty, ends in a newline, no control
/// characters but newline.
fn check_text(text: &str) -> Result<(), NoteError> {
    if text.is_empty() || !text.ends_with('\n') {
        return Err(NoteError::Malformed(
            "text must be non-empty and end in a newline",
        ));
    }
    if text.bytes().any(|b| b < 0x20 && b != b'\n') {
        return Err(NoteError::Malformed("control character other than newline"));
    }
    Ok(())
}

impl Note {
    /// An unsigned note over `text`.
    pub fn new(text: impl Into<String>) -> Result<Self, NoteError> {
        let text = text.into();
        check_text(&text)?;
        Ok(Note {
            text,
            signatures: Vec::new(),
        })
    }

    /// Parses a signed note (syntax only; see [`Note::verify`]).
    pub fn parse(msg: &[u8]) -> Result<Self, NoteError> {
        let msg = std::str::from_utf8(msg).map_err(|_| NoteError::Malformed("not UTF-8"))?;
        if msg.bytes().any(|b| b < 0x20 && b != b'\n') {
            return Err(NoteError::Malformed("control character other than newline"));
        }
        let split = msg
            .rfind("\n\n")
            .ok_or(NoteError::Malformed("no blank line before the signatures"))?;
        let (text, sigs) = (&msg[..split + 1], &msg[split + 2..]);
        check_text(text)?;
        let body = sigs
            .strip_suffix('\n')
            .ok_or(NoteError::Malformed("signatures must end in a newline"))?;
        if body.is_empty() {
            return Err(NoteError::Malformed("no signature lines"));
        }
        let lines: Vec<&str> = body.split('\n').collect();
        if lines.len() > MAX_SIGNATURES {
            return Err(NoteError::TooManySignatures(lines.len()));
        }
        let signatures = lines
            .iter()
            .enumerate()
            .map(|(i, l)| Signature::parse_line(l, i + 1))
            .collect::<Result<_, _>>()?;
        Ok(Note {
            text: text.to_owned(),
            signatures,
        })
    }

    /// The signed text, including its final newline.
    pub fn text(&self) -> &str {
        &self.text
    }

    pub fn signatures(&self) -> &[Signature] {
        &self.signatures
    }

    /// Adds a signature line (a log's signature, or a witness's cosignature).
    pub fn add_signature(&mut self, sig: Signature) -> Result<(), NoteError> {
        if !is_valid_key_name(&sig.name) {
            return Err(NoteError::BadKeyName(sig.name));
        }
        if sig.bytes.is_empty() {
            return Err(NoteError::Malformed("empty signature"));
        }
        if self.signatures.len() >= MAX_SIGNATURES {
            return Err(NoteError::TooManySignatures(self.signatures.len() + 1));
        }
        self.signatures.push(sig);
        Ok(())
    }

    /// Signs the text with `signer` (type 0x01) and adds the line.
    pub fn sign(&mut self, signer: &Signer) -> Result<(), NoteError> {
        let sig = signer.sign(&self.text)?;
        self.add_signature(sig)
    }

    /// The wire form: text, blank line, signature lines.
    pub fn to_text(&self) -> String {
        let mut s = self.text.clone();
        s.push('\n');
        for sig in &self.signatures {
            s.push_str(&sig.line());
        }
        s
    }

    /// Checks the signatures against `trusted` keys (see the module docs for the rules).
    pub fn verify(&self, trusted: &[VerifierKey]) -> Result<Verified, NoteError> {
        let mut verified = Vec::new();
        let mut seen = BTreeSet::new();
        let mut unverified = Vec::new();
        for sig in &self.signatures {
            let mut matching = trusted
                .iter()
                .filter(|k| k.name == sig.name && k.key_id == sig.key_id);
            let Some(key) = matching.next() else {
                if !unverified.contains(sig) {
                    unverified.push(sig.clone());
                }
                continue;
            };
            if matching.any(|other| other != key) {
                return Err(NoteError::AmbiguousKey {
                    name: sig.name.clone(),
                    key_id: sig.key_id,
                });
            }
            let timestamp =
                key.verify(&self.text, &sig.bytes)
                    .ok_or_else(|| NoteError::InvalidSignature {
                        name: sig.name.clone(),
                        key_id: sig.key_id,
                    })?;
            if seen.insert((key.name.clone(), key.key_id)) {
                verified.push(VerifiedSignature {
                    key: key.clone(),
                    timestamp,
                });
            }
        }
        if verified.is_empty() {
            return Err(NoteError::NoTrustedSignature);
        }
        Ok(Verified {
            text: self.text.clone(),
            verified,
            unverified,
        })
    }
}

/// Parses `msg` and verifies it against `trusted` keys.
pub fn open(msg: &[u8], trusted: &[VerifierKey]) -> Result<Verified, NoteError> {
    Note::parse(msg)?.verify(trusted)
}

/// A note whose text is vouched for by at least one trusted key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub text: String,
    /// One entry per trusted key that signed, in note order.
    pub verified: Vec<VerifiedSignature>,
    /// Signatures from keys not in the trusted list (ignored, kept for reports).
    pub unverified: Vec<Signature>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedSignature {
    pub key: VerifierKey,
    /// The cosignature's timestamp (POSIX seconds) for type 0x04; `None` for 0x01.
    pub timestamp: Option<u64>,
}

/// A public key trusted for one name: what a verifier is configured with.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct VerifierKey {
    name: String,
    key_type: KeyType,
    public_key: [u8; 32],
    key_id: u32,
}

impl VerifierKey {
    pub fn new(name: &str, key_type: KeyType, public_key: [u8; 32]) -> Result<Self, NoteError> {
        if !is_valid_key_name(name) {
            return Err(NoteError::BadKeyName(name.to_owned()));
        }
        Ok(VerifierKey {
            name: name.to_owned(),
            key_type,
            key_id: key_id(name, key_type, &public_key),
            public_key,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn key_type(&self) -> KeyType {
        self.key_type
    }

    pub fn key_id(&self) -> u32 {
        self.key_id
    }

    pub fn public_key(&self) -> &[u8; 32] {
        &self.public_key
    }

    /// Verifies `sig` (the bytes after the key ID) over note `text`: `Some(None)` for a valid
    /// Ed25519 signature, `Some(Some(t))` for a valid cosignature made at `t`, `None` if invalid.
    pub fn verify(&self, text: &str, sig: &[u8]) -> Option<Option<u64>> {
        match self.key_type {
            KeyType::Ed25519 => {
                ed25519_verify(&self.public_key, text.as_bytes(), sig).then_some(None)
            }
            KeyType::CosignatureV1 => cosignature::verify_bytes(self, text, sig).ok().map(Some),
        }
    }
}

pub(crate) fn ed25519_verify(public_key: &[u8; 32], msg: &[u8], sig: &[u8]) -> bool {
    sig.len() == 64
        && UnparsedPublicKey::new(&ED25519, public_key)
            .verify(msg, sig)
            .is_ok()
}

/// The vkey form `<name>+<8 lowercase hex key ID>+<base64(type ‖ public key)>`.
impl fmt::Display for VerifierKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut raw = vec![self.key_type.id()];
        raw.extend_from_slice(&self.public_key);
        write!(f, "{}+{:08x}+{}", self.name, self.key_id, b64::encode(&raw))
    }
}

impl FromStr for VerifierKey {
    type Err = NoteError;

    /// Parses a vkey; the key ID must be the one the name and key imply.
    fn from_str(s: &str) -> Result<Self, NoteError> {
        let bad = NoteError::BadVerifierKey;
        // The name cannot contain '+', the base64 can: split at the first two.
        let (name, rest) = s.split_once('+').ok_or(bad("no '+' after the name"))?;
        let (hex, key) = rest.split_once('+').ok_or(bad("no '+' after the key ID"))?;
        if !is_valid_key_name(name) {
            return Err(bad("invalid key name"));
        }
        let id = parse_key_id(hex).ok_or(bad("key ID is not 8 lowercase hex digits"))?;
        let raw = b64::decode(key).ok_or(bad("key is not canonical base64"))?;
        let (&type_id, public_key) = raw.split_first().ok_or(bad("empty key"))?;
        let key_type = KeyType::from_id(type_id).ok_or(bad("unsupported signature type"))?;
        let public_key: [u8; 32] = public_key
            .try_into()
            .map_err(|_| bad("an Ed25519 public key is 32 bytes"))?;
        let vk = VerifierKey::new(name, key_type, public_key)?;
        if vk.key_id != id {
            return Err(bad("key ID does not match the name and key"));
        }
        Ok(vk)
    }
}

fn parse_key_id(hex: &str) -> Option<u32> {
    let ok = hex.len() == 8 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    ok.then(|| u32::from_str_radix(hex, 16).ok()).flatten()
}

/// An Ed25519 private key with its name and signature type.
pub struct Signer {
    name: String,
    key_type: KeyType,
    key_pair: Ed25519KeyPair,
    verifier: VerifierKey,
}

/// Never prints the private key.
impl fmt::Debug for Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Signer")
            .field("verifier", &self.verifier.to_string())
            .finish_non_exhaustive()
    }
}

impl Signer {
    /// A signer from a 32-byte Ed25519 seed (RFC 8032 private key).
    pub fn from_seed(name: &str, key_type: KeyType, seed: &[u8; 32]) -> Result<Self, NoteError> {
        let key_pair = Ed25519KeyPair::from_seed_unchecked(seed)
            .map_err(|_| NoteError::BadSigningKey("not an Ed25519 seed"))?;
        let public_key: [u8; 32] = key_pair
            .public_key()
            .as_ref()
            .try_into()
            .map_err(|_| NoteError::BadSigningKey("public key is not 32 bytes"))?;
        let verifier = VerifierKey::new(name, key_type, public_key)?;
        Ok(Signer {
            name: name.to_owned(),
            key_type,
            key_pair,
            verifier,
        })
    }

    /// A new random key; returns the seed too, for the caller to store.
    pub fn generate(name: &str, key_type: KeyType) -> Result<(Self, [u8; 32]), NoteError> {
        let mut seed = [0u8; 32];
        SystemRandom::new()
            .fill(&mut seed)
            .map_err(|_| NoteError::BadSigningKey("no system randomness"))?;
        Ok((Self::from_seed(name, key_type, &seed)?, seed))
    }

    /// Go's signer key text `PRIVATE+KEY+<name>+<hex key ID>+<base64(0x01 ‖ seed)>` for a seed:
    /// the inverse of [`Signer::from_skey`], so a key made here is usable by Go tooling and
    /// can be stored as one line of text.
    pub fn skey(name: &str, seed: &[u8; 32]) -> Result<String, NoteError> {
        let ed = Self::from_seed(name, KeyType::Ed25519, seed)?;
        let mut raw = vec![KeyType::Ed25519.id()];
        raw.extend_from_slice(seed);
        Ok(format!(
            "PRIVATE+KEY+{name}+{:08x}+{}",
            ed.verifier.key_id,
            b64::encode(&raw)
        ))
    }

    /// Parses Go's signer key format `PRIVATE+KEY+<name>+<hex key ID>+<base64(0x01 ‖ seed)>`
    /// (golang.org/x/mod/sumdb/note `NewSigner`), for keys made with Go tooling. `key_type`
    /// picks how it will sign: a cosigner reuses an 0x01 key under the 0x04 key ID.
    pub fn from_skey(skey: &str, key_type: KeyType) -> Result<Self, NoteError> {
        let bad = NoteError::BadSigningKey;
        let rest = skey
            .strip_prefix("PRIVATE+KEY+")
            .ok_or(bad("no PRIVATE+KEY+ prefix"))?;
        let (name, rest) = rest.split_once('+').ok_or(bad("no '+' after the name"))?;
        let (hex, key) = rest.split_once('+').ok_or(bad("no '+' after the key ID"))?;
        let id = parse_key_id(hex).ok_or(bad("key ID is not 8 lowercase hex digits"))?;
        let raw = b64::decode(key).ok_or(bad("key is not canonical base64"))?;
        let (&type_id, seed) = raw.split_first().ok_or(bad("empty key"))?;
        if type_id != KeyType::Ed25519.id() {
            return Err(bad("not an Ed25519 (0x01) key"));
        }
        let seed: [u8; 32] = seed.try_into().map_err(|_| bad("seed is not 32 bytes"))?;
        let ed = Self::from_seed(name, KeyType::Ed25519, &seed)?;
        if ed.verifier.key_id != id {
            return Err(bad("key ID does not match the name and key"));
        }
        Self::from_seed(name, key_type, &seed)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn key_type(&self) -> KeyType {
        self.key_type
    }

    /// What verifiers of this signer are configured with.
    pub fn verifier_key(&self) -> &VerifierKey {
        &self.verifier
    }

    /// A type 0x01 signature line over note `text`.
    pub fn sign(&self, text: &str) -> Result<Signature, NoteError> {
        if self.key_type != KeyType::Ed25519 {
            return Err(NoteError::WrongKeyType {
                have: self.key_type,
                want: KeyType::Ed25519,
            });
        }
        check_text(text)?;
        Ok(self.raw_signature(self.key_pair.sign(text.as_bytes()).as_ref().to_vec()))
    }

    /// Ed25519 over arbitrary bytes (the cosignature module builds its own message).
    pub(crate) fn sign_bytes(&self, msg: &[u8]) -> Vec<u8> {
        self.key_pair.sign(msg).as_ref().to_vec()
    }

    pub(crate) fn raw_signature(&self, bytes: Vec<u8>) -> Signature {
        Signature {
            name: self.name.clone(),
            key_id: self.verifier.key_id,
            bytes,
        }
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn skey_round_trips_through_from_skey() {
        let (w, seed) = Signer::generate("witness.example/w1", KeyType::CosignatureV1).unwrap();
        let text = Signer::skey(w.name(), &seed).unwrap();
        assert!(
            text.starts_with("PRIVATE+KEY+witness.example/w1+"),
            "{text}"
        );
        let back = Signer::from_skey(&text, KeyType::CosignatureV1).unwrap();
        assert_eq!(back.verifier_key(), w.verifier_key());
    }
    use super::*;

    // golang.org/x/mod/sumdb/note/note_test.go (TestSign, TestOpen, TestNewVerifier).
    const PETER_SKEY: &str =
        "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz";
    const PETER_VKEY: &str = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW";
    const ENOCH_VKEY: &str = "EnochRoot+af0cfe78+ATtqJ7zOtqQtYqOo0CpvDXNlMhV3HeJDpjrASKGLWdop";
    const TEXT: &str = "If you think cryptography is the answer to your problem,\n\
                        then you don't know what your problem is.\n";
    const PETER_SIG: &str = "\u{2014} PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n";
    const ENOCH_SIG: &str = "\u{2014} EnochRoot rwz+eBzmZa0SO3NbfRGzPCpDckykFXSdeX+MNtCOXm2/5n2tiOHp+vAF1aGrQ5ovTG01oOTGwnWLox33WWd1RvMc+QQ=\n";

    fn peter() -> VerifierKey {
        PETER_VKEY.parse().unwrap()
    }
    fn enoch() -> VerifierKey {
        ENOCH_VKEY.parse().unwrap()
    }

    #[test]
    fn signs_byte_for_byte_like_the_go_reference() {
        let signer = Signer::from_skey(PETER_SKEY, KeyType::Ed25519).unwrap();
        assert_eq!(signer.verifier_key().to_string(), PETER_VKEY);
        let mut note = Note::new(TEXT).unwrap();
        note.sign(&signer).unwrap();
        assert_eq!(note.to_text(), format!("{TEXT}\n{PETER_SIG}"));
    }

    #[test]
    fn vkeys_round_trip_and_key_ids_follow_the_spec() {
        for vk in [
            PETER_VKEY,
            ENOCH_VKEY,
            // transparency-dev/formats note_cosigv1_test.go: a '+' inside the base64, and a
            // native 0x04 (cosignature/v1) key.
            "TEST+7997405c+AQcC+FTVKf0jlTdHDY3rbevmnKxxPjigCXlVtGe6RIr6",
            "remora.n621.de+da77ade7+BOvN63jn/bLvkieywe8R6UYAtVtNbZpXh34x7onlmtw2",
        ] {
            let k: VerifierKey = vk.parse().unwrap();
            assert_eq!(k.to_string(), vk);
            assert_eq!(k.key_id(), key_id(k.name(), k.key_type(), k.public_key()));
        }
        let remora: VerifierKey =
            "remora.n621.de+da77ade7+BOvN63jn/bLvkieywe8R6UYAtVtNbZpXh34x7onlmtw2"
                .parse()
                .unwrap();
        assert_eq!(remora.key_type(), KeyType::CosignatureV1);
    }

    #[test]
    fn mangled_vkeys_are_rejected() {
        // As Go's TestNewVerifier: every proper substring and every one-byte change fails.
        let b = PETER_VKEY.as_bytes();
        for i in 0..=b.len() {
            for j in i + 1..=b.len() {
                if (i, j) != (0, b.len()) {
                    if let Ok(s) = std::str::from_utf8(&b[i..j]) {
                        assert!(s.parse::<VerifierKey>().is_err(), "{s}");
                    }
                }
            }
        }
        for i in 0..b.len() {
            let mut m = b.to_vec();
            m[i] = m[i].wrapping_add(1);
            if let Ok(s) = std::str::from_utf8(&m) {
                assert!(s.parse::<VerifierKey>().is_err(), "{s}");
            }
        }
        for bad in [
            // Wrong length key with adjusted key hash; unknown algorithm with adjusted hash.
            "PeterNeumann+cc469956+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TWBADKEY==",
            "PeterNeumann+173116ae+ZRpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
            // Upper-case hex is not the canonical form.
            "PeterNeumann+C74F20A3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
            " PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
        ] {
            assert!(bad.parse::<VerifierKey>().is_err(), "{bad}");
        }
    }

    #[test]
    fn open_follows_the_reference_semantics() {
        let msg = format!("{TEXT}\n{PETER_SIG}{ENOCH_SIG}");
        // One trusted key: it verifies, the other is ignored (kept as unverified).
        let v = open(msg.as_bytes(), &[peter()]).unwrap();
        assert_eq!(v.text, TEXT);
        assert_eq!(v.verified.len(), 1);
        assert_eq!(v.verified[0].key, peter());
        assert_eq!(v.unverified.len(), 1);
        assert_eq!(v.unverified[0].name, "EnochRoot");
        assert_eq!(v.unverified[0].key_id, 0xaf0cfe78);
        // Both trusted.
        let v = open(msg.as_bytes(), &[peter(), enoch()]).unwrap();
        assert_eq!(v.verified.len(), 2);
        // None trusted.
        assert_eq!(
            open(msg.as_bytes(), &[]),
            Err(NoteError::NoTrustedSignature)
        );
        // A corrupted signature by a trusted key rejects the whole note.
        let bad = format!("{TEXT}\n{}ABCD{}", &PETER_SIG[..60], &PETER_SIG[60..]);
        assert!(matches!(
            open(bad.as_bytes(), &[peter()]),
            Err(NoteError::InvalidSignature {
                key_id: 0xc74f20a3,
                ..
            })
        ));
        // Duplicated signatures count once.
        let dup = format!("{TEXT}\n{PETER_SIG}{PETER_SIG}{ENOCH_SIG}{ENOCH_SIG}");
        let v = open(dup.as_bytes(), &[peter()]).unwrap();
        assert_eq!((v.verified.len(), v.unverified.len()), (1, 1));
        // Same name, other key: ignored, not a failure.
        let other = Signer::generate("PeterNeumann", KeyType::Ed25519)
            .unwrap()
            .0;
        assert!(open(msg.as_bytes(), &[other.verifier_key().clone()]).is_err());
        let v = open(msg.as_bytes(), &[other.verifier_key().clone(), peter()]).unwrap();
        assert_eq!(v.verified.len(), 1);
    }

    #[test]
    fn malformed_notes_are_rejected() {
        let ok = format!("{TEXT}\n{PETER_SIG}");
        assert!(open(ok.as_bytes(), &[peter()]).is_ok());
        let too_many = format!("{TEXT}\n{}", PETER_SIG.repeat(101));
        let bad_msgs = [
            TEXT.to_owned(),
            format!("{TEXT}\n"),
            format!("{TEXT}\n{}", &PETER_SIG[..PETER_SIG.len() - 1]),
            format!("\x01{TEXT}\n{PETER_SIG}"),
            format!("{TEXT}\n{}", PETER_SIG.replace("PeterNeumann", "Bad Name")),
            format!("{TEXT}\n{PETER_SIG}Unexpected line.\n"),
            format!("{TEXT}\n{}", PETER_SIG.replace(' ', "  ")),
            format!("{TEXT}\n{}", PETER_SIG.replace('\u{2014}', "-")),
            format!("{TEXT}\n{}", PETER_SIG.replace("\n", " \n")),
            format!("{TEXT}\n{}", PETER_SIG.replace("AM=", "AN=")),
            format!("{TEXT}\n{}", PETER_SIG.replace("AM=", "AM")),
            format!("{}\t\n\n{PETER_SIG}", TEXT.trim_end()),
            format!("{TEXT}\r\n{PETER_SIG}"),
            too_many,
        ];
        for m in &bad_msgs {
            assert!(open(m.as_bytes(), &[peter()]).is_err(), "{m:?}");
        }
        assert!(open(b"\xff\n\n", &[peter()]).is_err());
        assert!(Note::new("no newline").is_err());
        assert!(Note::new("").is_err());
        assert!(Note::new("tab\there\n").is_err());
    }

    #[test]
    fn signer_round_trip_and_wrong_type() {
        let (s, seed) = Signer::generate("example.com/log", KeyType::Ed25519).unwrap();
        let again = Signer::from_seed("example.com/log", KeyType::Ed25519, &seed).unwrap();
        assert_eq!(s.verifier_key(), again.verifier_key());
        let mut n = Note::new("hello\n").unwrap();
        n.sign(&s).unwrap();
        let v = open(n.to_text().as_bytes(), &[s.verifier_key().clone()]).unwrap();
        assert_eq!(v.text, "hello\n");
        assert!(!format!("{s:?}").contains(&b64::encode(&seed)));
        let (c, _) = Signer::generate("w", KeyType::CosignatureV1).unwrap();
        assert!(matches!(c.sign("x\n"), Err(NoteError::WrongKeyType { .. })));
        assert!(matches!(
            Signer::generate("bad name", KeyType::Ed25519),
            Err(NoteError::BadKeyName(_))
        ));
    }
}

#[cfg(test)]
mod props {
    use super::*;
    use proptest::prelude::*;

    fn signer() -> Signer {
        Signer::from_seed("log.example/p", KeyType::Ed25519, &[3; 32]).unwrap()
    }

    proptest! {
        #[test]
        fn parsing_arbitrary_input_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..400)) {
            let _ = Note::parse(&bytes);
            let _ = open(&bytes, &[signer().verifier_key().clone()]);
            if let Ok(s) = std::str::from_utf8(&bytes) {
                let _ = s.parse::<VerifierKey>();
                let _ = Signer::from_skey(s, KeyType::Ed25519);
            }
        }

        #[test]
        fn near_miss_notes_never_panic(
            text in "[a-z\n ]{1,40}\n",
            cut in any::<prop::sample::Index>(),
            byte in any::<u8>(),
        ) {
            let mut n = Note::new(text).unwrap();
            n.sign(&signer()).unwrap();
            let mut wire = n.to_text().into_bytes();
            let i = cut.index(wire.len());
            wire[i] = byte;
            let _ = open(&wire, &[signer().verifier_key().clone()]);
            let _ = open(&wire[..i], &[signer().verifier_key().clone()]);
        }

        #[test]
        fn signed_notes_round_trip(text in "[ -~\n]{0,80}\n") {
            let mut n = Note::new(text.clone()).unwrap();
            n.sign(&signer()).unwrap();
            let wire = n.to_text();
            prop_assert_eq!(Note::parse(wire.as_bytes()).unwrap(), n);
            let v = open(wire.as_bytes(), &[signer().verifier_key().clone()]).unwrap();
            prop_assert_eq!(v.text, text);
        }
    }
}
