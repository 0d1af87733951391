//! Encryption for a data subject (AES-256-GCM, ring) and the wrapping of subject keys by the
//! master key.
//!
//! # The field ciphertext: `enc:v1:<key ref>:<nonce>:<ciphertext+tag>`
//!
//! `key ref` = `<subject token>.<key generation>` names the subject key (see
//! [`super::store`]); nonce and ciphertext are base64url. The string replaces the field's value
//! in the event, so the chain hashes the ciphertext and erasing the key never changes a stored
//! byte.
//!
//! **Deterministic (synthetic) nonce.** Stages before the chainer are at-least-once, and the
//! chainer drops a redelivered event only if its content is identical; a random nonce would turn
//! every redelivery into an id conflict. So the nonce is an HMAC (under a key derived from the
//! subject key) of the associated data and the plaintext, as in SIV constructions: the same
//! (key, event, field, value) always gives the same bytes, and two different plaintexts get the
//! same nonce only with probability 2⁻⁹⁶ — GCM's nonce-reuse failure needs *different*
//! plaintexts under one nonce. The associated data binds the ciphertext to its key ref, event id
//! and field path, so it cannot be moved to another event or field unnoticed.
//!
//! Every failure (wrong key, altered bytes, wrong event or field) is one opaque error: the
//! caller shows the field as erased/unreadable, never a partial plaintext.

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine as _;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};

use super::keys::NamedKey;
use super::PrivacyError;

/// Prefix of every field ciphertext.
pub const CIPHERTEXT_PREFIX: &str = "enc:v1:";

/// A subject's data key (32 bytes) and its reference `<subject token>.<generation>`.
#[derive(Clone)]
pub struct SubjectKey {
    key_ref: String,
    bytes: [u8; 32],
}

impl std::fmt::Debug for SubjectKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SubjectKey")
            .field("key_ref", &self.key_ref)
            .finish_non_exhaustive()
    }
}

impl SubjectKey {
    pub fn new(key_ref: String, bytes: [u8; 32]) -> Self {
        SubjectKey { key_ref, bytes }
    }

    /// A fresh random key.
    pub fn generate(subject_token: &str) -> Result<Self, PrivacyError> {
        let rng = SystemRandom::new();
        let mut bytes = [0u8; 32];
        let mut generation = [0u8; 6];
        rng.fill(&mut bytes).map_err(|_| PrivacyError::Random)?;
        rng.fill(&mut generation)
            .map_err(|_| PrivacyError::Random)?;
        Ok(SubjectKey {
            key_ref: format!("{subject_token}.{}", B64.encode(generation)),
            bytes,
        })
    }

    pub fn key_ref(&self) -> &str {
        &self.key_ref
    }

    #[cfg(test)]
    pub(crate) fn bytes(&self) -> &[u8; 32] {
        &self.bytes
    }

    fn derived(&self, label: &[u8]) -> [u8; 32] {
        let k = hmac::Key::new(hmac::HMAC_SHA256, &self.bytes);
        let mut out = [0u8; 32];
        out.copy_from_slice(hmac::sign(&k, label).as_ref());
        out
    }
}

/// The parts of a field ciphertext string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sealed<'a> {
    pub key_ref: &'a str,
    pub nonce: &'a str,
    pub ciphertext: &'a str,
}

impl<'a> Sealed<'a> {
    /// Splits `enc:v1:<key ref>:<nonce>:<ct>`; `None` if `s` is not a ciphertext.
    pub fn parse(s: &'a str) -> Option<Self> {
        let rest = s.strip_prefix(CIPHERTEXT_PREFIX)?;
        let mut it = rest.split(':');
        let (key_ref, nonce, ciphertext) = (it.next()?, it.next()?, it.next()?);
        if it.next().is_some() || key_ref.is_empty() {
            return None;
        }
        Some(Sealed {
            key_ref,
            nonce,
            ciphertext,
        })
    }

    /// The subject token part of the key ref (without the key generation).
    pub fn subject_token(&self) -> &'a str {
        self.key_ref
            .rsplit_once('.')
            .map_or(self.key_ref, |(subject, _)| subject)
    }
}

/// Whether `s` is shaped exactly like a field ciphertext (key ref, a 12-byte nonce, at least
/// a tag): a producer's value that merely starts with `enc:v1:` is still protected.
pub fn is_ciphertext(s: &str) -> bool {
    Sealed::parse(s).is_some_and(|p| {
        p.key_ref.contains('.')
            && B64.decode(p.nonce).is_ok_and(|n| n.len() == NONCE_LEN)
            && B64.decode(p.ciphertext).is_ok_and(|c| c.len() >= 16)
    })
}

fn field_aad(key_ref: &str, event_id: &str, field: &str) -> Vec<u8> {
    let mut aad = b"audit-pii/v1\0".to_vec();
    for part in [key_ref, event_id, field] {
        aad.extend_from_slice(part.as_bytes());
        aad.push(0);
    }
    aad
}

fn gcm_key(bytes: &[u8; 32]) -> LessSafeKey {
    // 32 bytes is always a valid AES-256 key, so this cannot fail.
    LessSafeKey::new(UnboundKey::new(&AES_256_GCM, bytes).unwrap_or_else(|_| unreachable!()))
}

/// Encrypts `plaintext` of `field` in event `event_id` for the subject of `key`.
pub fn seal(key: &SubjectKey, event_id: &str, field: &str, plaintext: &str) -> String {
    let aad = field_aad(&key.key_ref, event_id, field);
    let iv_key = hmac::Key::new(hmac::HMAC_SHA256, &key.derived(b"audit-pii/iv"));
    let mut ctx = hmac::Context::with_key(&iv_key);
    ctx.update(&(aad.len() as u64).to_be_bytes());
    ctx.update(&aad);
    ctx.update(plaintext.as_bytes());
    let mut nonce = [0u8; NONCE_LEN];
    nonce.copy_from_slice(&ctx.sign().as_ref()[..NONCE_LEN]);
    let mut buf = plaintext.as_bytes().to_vec();
    gcm_key(&key.derived(b"audit-pii/enc"))
        .seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(&aad),
            &mut buf,
        )
        // Sealing fails only for inputs over ~64 GB; an event field is bounded far below.
        .unwrap_or_else(|_| unreachable!());
    format!(
        "{CIPHERTEXT_PREFIX}{}:{}:{}",
        key.key_ref,
        B64.encode(nonce),
        B64.encode(buf)
    )
}

/// Decrypts a field ciphertext: `Err(Unreadable)` for anything but the right key, event and
/// field (fails closed).
pub fn open(
    key: &SubjectKey,
    event_id: &str,
    field: &str,
    sealed: &str,
) -> Result<String, PrivacyError> {
    let s = Sealed::parse(sealed).ok_or(PrivacyError::Unreadable)?;
    if s.key_ref != key.key_ref {
        return Err(PrivacyError::Unreadable);
    }
    let nonce: [u8; NONCE_LEN] = B64
        .decode(s.nonce)
        .ok()
        .and_then(|n| n.try_into().ok())
        .ok_or(PrivacyError::Unreadable)?;
    let mut buf = B64
        .decode(s.ciphertext)
        .map_err(|_| PrivacyError::Unreadable)?;
    let aad = field_aad(s.key_ref, event_id, field);
    let plain = gcm_key(&key.derived(b"audit-pii/enc"))
        .open_in_place(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(&aad),
            &mut buf,
        )
        .map_err(|_| PrivacyError::Unreadable)?;
    String::from_utf8(plain.to_vec()).map_err(|_| PrivacyError::Unreadable)
}

/// A subject key wrapped by the master key: what the key store holds.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WrappedKey {
    pub version: u32,
    pub key_ref: String,
    pub master_key_id: String,
    /// base64url
    pub nonce: String,
    /// base64url: AES-256-GCM(master key, subject key) with its tag.
    pub wrapped: String,
}

fn wrap_aad(key_ref: &str) -> Vec<u8> {
    let mut aad = b"audit-subject-key/v1\0".to_vec();
    aad.extend_from_slice(key_ref.as_bytes());
    aad
}

/// Wraps `key` under `master` (random nonce: each wrap is stored once).
pub fn wrap(master: &NamedKey, key: &SubjectKey) -> Result<WrappedKey, PrivacyError> {
    let mut nonce = [0u8; NONCE_LEN];
    SystemRandom::new()
        .fill(&mut nonce)
        .map_err(|_| PrivacyError::Random)?;
    let mut buf = key.bytes.to_vec();
    gcm_key(master.bytes())
        .seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(wrap_aad(&key.key_ref)),
            &mut buf,
        )
        .unwrap_or_else(|_| unreachable!());
    Ok(WrappedKey {
        version: 1,
        key_ref: key.key_ref.clone(),
        master_key_id: master.id().to_owned(),
        nonce: B64.encode(nonce),
        wrapped: B64.encode(buf),
    })
}

/// Unwraps a stored key with the master key whose id it names (`masters` holds the current
/// and any retired master keys).
pub fn unwrap(masters: &[NamedKey], w: &WrappedKey) -> Result<SubjectKey, PrivacyError> {
    let master = masters
        .iter()
        .find(|m| m.id() == w.master_key_id)
        .ok_or_else(|| PrivacyError::UnknownMasterKey(w.master_key_id.clone()))?;
    let nonce: [u8; NONCE_LEN] = B64
        .decode(&w.nonce)
        .ok()
        .and_then(|n| n.try_into().ok())
        .ok_or(PrivacyError::CorruptStoredKey)?;
    let mut buf = B64
        .decode(&w.wrapped)
        .map_err(|_| PrivacyError::CorruptStoredKey)?;
    let plain = gcm_key(master.bytes())
        .open_in_place(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(wrap_aad(&w.key_ref)),
            &mut buf,
        )
        .map_err(|_| PrivacyError::CorruptStoredKey)?;
    let bytes: [u8; 32] = plain
        .try_into()
        .map_err(|_| PrivacyError::CorruptStoredKey)?;
    Ok(SubjectKey::new(w.key_ref.clone(), bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key(b: u8, r: &str) -> SubjectKey {
        SubjectKey::new(r.into(), [b; 32])
    }

    proptest! {
        #[test]
        fn round_trips_and_fails_closed(
            plain in ".{0,80}", k in any::<u8>(), other in any::<u8>(),
            event in "[a-z0-9-]{1,12}", flip in any::<usize>(),
        ) {
            let good = key(k, "k.s.g1");
            let sealed = seal(&good, &event, "actor.email", &plain);
            prop_assert!(is_ciphertext(&sealed));
            prop_assert_eq!(open(&good, &event, "actor.email", &sealed).ok(), Some(plain.clone()));
            // Deterministic: redeliveries give the same bytes.
            prop_assert_eq!(&seal(&good, &event, "actor.email", &plain), &sealed);
            // Wrong key (same ref, other bytes; or another ref), other event, other field: refused.
            if other != k {
                prop_assert!(open(&key(other, "k.s.g1"), &event, "actor.email", &sealed).is_err());
            }
            prop_assert!(open(&key(k, "k.s.g2"), &event, "actor.email", &sealed).is_err());
            let other_event = format!("{event}x");
            prop_assert!(open(&good, &other_event, "actor.email", &sealed).is_err());
            prop_assert!(open(&good, &event, "actor.name", &sealed).is_err());
            // Any altered ciphertext character: refused, never a partial plaintext.
            let s = Sealed::parse(&sealed).expect("parse");
            let mut ct: Vec<char> = s.ciphertext.chars().collect();
            let i = flip % ct.len();
            ct[i] = if ct[i] == 'A' { 'B' } else { 'A' };
            let altered = format!("{CIPHERTEXT_PREFIX}{}:{}:{}", s.key_ref, s.nonce, ct.into_iter().collect::<String>());
            prop_assert!(open(&good, &event, "actor.email", &altered).is_err());
        }

        #[test]
        fn wrapped_keys_round_trip_only_with_their_master(k in any::<[u8; 32]>()) {
            let m1 = NamedKey::new("m1", [1; 32]).expect("m1");
            let m1_other_bytes = NamedKey::new("m1", [9; 32]).expect("m1'");
            let sk = SubjectKey::new("t.abc.g".into(), k);
            let w = wrap(&m1, &sk).expect("wrap");
            let back = unwrap(std::slice::from_ref(&m1), &w).expect("unwrap");
            prop_assert_eq!(back.bytes(), &k);
            prop_assert!(unwrap(&[m1_other_bytes], &w).is_err());
            prop_assert!(unwrap(&[], &w).is_err());
            let mut moved = w.clone();
            moved.key_ref = "t.other.g".into();
            prop_assert!(unwrap(&[m1], &moved).is_err(), "a wrapped key cannot be moved to another subject");
        }
    }

    #[test]
    fn parse_splits_the_key_ref() {
        let sealed = seal(&key(3, "tk1.AbC-_.gen1"), "e", "f", "ada@example.com");
        let s = Sealed::parse(&sealed).expect("parse");
        assert_eq!(s.key_ref, "tk1.AbC-_.gen1");
        assert_eq!(s.subject_token(), "tk1.AbC-_");
        assert!(!sealed.contains("ada"));
        assert!(Sealed::parse("tok:k:abc").is_none());
        assert!(is_ciphertext(&sealed));
        for fake in ["enc:v1:ada@example.com", "enc:v1:a.b:xx:yy", "enc:v1:a.b::"] {
            assert!(!is_ciphertext(fake), "{fake}");
        }
    }
}
