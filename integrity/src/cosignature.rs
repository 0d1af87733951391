//! Witness cosignatures: C2SP tlog-cosignature `cosignature/v1` (timestamped Ed25519).
//!
//! A cosignature is a note signature line (signature type 0x04) on a checkpoint. Its key ID is
//! `SHA-256(name ‖ "\n" ‖ 0x04 ‖ public key)[:4]`, its bytes are `timestamp (u64 big-endian) ‖
//! Ed25519 signature (64 bytes)`, and the signed message is
//!
//! ```text
//! cosignature/v1
//! time <timestamp, decimal, no leading zeroes>
//! <the whole checkpoint note text, including extension lines and the final newline>
//! ```
//!
//! It states: "as of `timestamp`, the largest consistent tree I have seen for this origin has
//! this root". The header line separates it from any 0x01 note signature, so one Ed25519 key
//! cannot be tricked into making one kind of signature look like the other. Timestamps above
//! 2^63 - 1 are invalid (spec).

use thiserror::Error;

use crate::note::{KeyType, NoteError, Signature, Signer, VerifierKey};

/// Bytes after the key ID: 8-byte timestamp and 64-byte Ed25519 signature.
const COSIGNATURE_LEN: usize = 8 + 64;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CosignatureError {
    #[error("a {0:?} key cannot cosign (cosignature/v1 keys are type 0x04)")]
    WrongKeyType(KeyType),
    #[error("timestamp {0} exceeds 2^63 - 1")]
    TimestampTooLarge(u64),
    #[error("a cosignature is 72 bytes after the key ID, got {0}")]
    WrongLength(usize),
    #[error("the cosignature does not verify")]
    BadSignature,
    #[error(transparent)]
    Note(#[from] NoteError),
}

/// The signed message for `body` (a checkpoint's note text) at `timestamp`.
pub fn message(body: &str, timestamp: u64) -> String {
    format!("cosignature/v1\ntime {timestamp}\n{body}")
}

/// Cosigns checkpoint note text `body` at `timestamp` (POSIX seconds).
pub fn cosign(signer: &Signer, body: &str, timestamp: u64) -> Result<Signature, CosignatureError> {
    if signer.key_type() != KeyType::CosignatureV1 {
        return Err(CosignatureError::WrongKeyType(signer.key_type()));
    }
    if timestamp > i64::MAX as u64 {
        return Err(CosignatureError::TimestampTooLarge(timestamp));
    }
    // Same text rules as any note (non-empty, newline-terminated, no control characters).
    crate::note::Note::new(body)?;
    let mut bytes = timestamp.to_be_bytes().to_vec();
    bytes.extend(signer.sign_bytes(message(body, timestamp).as_bytes()));
    Ok(signer.raw_signature(bytes))
}

/// The timestamp a cosignature claims, read without verifying it.
pub fn timestamp(sig: &Signature) -> Result<u64, CosignatureError> {
    split(&sig.bytes).map(|(t, _)| t)
}

fn split(bytes: &[u8]) -> Result<(u64, &[u8]), CosignatureError> {
    if bytes.len() != COSIGNATURE_LEN {
        return Err(CosignatureError::WrongLength(bytes.len()));
    }
    let (ts, sig) = bytes.split_at(8);
    let mut t = [0u8; 8];
    t.copy_from_slice(ts);
    let t = u64::from_be_bytes(t);
    if t > i64::MAX as u64 {
        return Err(CosignatureError::TimestampTooLarge(t));
    }
    Ok((t, sig))
}

/// Verifies cosignature bytes (after the key ID) by `key` over `body`; returns the timestamp.
pub fn verify_bytes(key: &VerifierKey, body: &str, bytes: &[u8]) -> Result<u64, CosignatureError> {
    if key.key_type() != KeyType::CosignatureV1 {
        return Err(CosignatureError::WrongKeyType(key.key_type()));
    }
    let (t, sig) = split(bytes)?;
    if crate::note::ed25519_verify(key.public_key(), message(body, t).as_bytes(), sig) {
        Ok(t)
    } else {
        Err(CosignatureError::BadSignature)
    }
}

/// Verifies a whole signature line: it must be `key`'s (name and key ID) and valid.
pub fn verify(key: &VerifierKey, body: &str, sig: &Signature) -> Result<u64, CosignatureError> {
    if sig.name != key.name() || sig.key_id != key.key_id() {
        return Err(CosignatureError::BadSignature);
    }
    verify_bytes(key, body, &sig.bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::b64;
    use crate::note::{open, Note};

    const BODY: &str =
        "example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n";

    fn sig_from_base64(name: &str, s: &str) -> Signature {
        let raw = b64::decode(s).unwrap();
        Signature {
            name: name.into(),
            key_id: u32::from_be_bytes(raw[..4].try_into().unwrap()),
            bytes: raw[4..].to_vec(),
        }
    }

    #[test]
    fn message_is_the_spec_example() {
        // c2sp.org/tlog-cosignature, "Ed25519 signed message".
        assert_eq!(
            message(BODY, 1679315147),
            "cosignature/v1\ntime 1679315147\nexample.com/behind-the-sofa\n20852163\n\
             CsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n"
        );
    }

    #[test]
    fn timestamps_of_published_cosignatures() {
        // The spec's example cosignature line carries the example's time 1679315147.
        let spec = sig_from_base64(
            "witness.example.com/w1",
            "jWbPPwAAAABkGFDLEZMHwSRaJNiIDoe9DYn/zXcrtPHeolMI5OWXEhZCB9dlrDJsX3b2oyin1nPZqhf5nNo0xUe+mbIUBkBIfZ+qnA==",
        );
        assert_eq!(timestamp(&spec), Ok(1679315147));
        // transparency-dev/formats note/note_cosigv1_test.go TestCosignatureTimestamp.
        let td = sig_from_base64(
            "w",
            "ZGhGuQAAAABm/qTPeyKXD+R2rzyQsxPiP8mXum7qq/iF0u4vanlqJyocWODBt97w9uL+8qT7S5gxEHWWOworDcFiEBYJXORmnFBOBA==",
        );
        assert_eq!(timestamp(&td), Ok(1727964367));
        // A plain Ed25519 note signature is not a cosignature.
        let ed = sig_from_base64(
            "w",
            "eQjRQm6eSKzFoiYalgwCPXu2y3ijtg68is9M46JKxuZB+dRfTmeQeDBoXnvxZx2ugnkyV+MUMLXpWs1hPb/W/4xkNQY=",
        );
        assert_eq!(timestamp(&ed), Err(CosignatureError::WrongLength(64)));
    }

    #[test]
    fn cosign_verify_and_open_as_a_note() {
        let (w, _) = Signer::generate("witness.example/w1", KeyType::CosignatureV1).unwrap();
        let wk = w.verifier_key().clone();
        let sig = cosign(&w, BODY, 1_700_000_000).unwrap();
        assert_eq!(verify(&wk, BODY, &sig), Ok(1_700_000_000));
        assert_eq!(
            sig.key_id,
            crate::note::key_id(w.name(), KeyType::CosignatureV1, wk.public_key())
        );

        // Through the generic note path: the cosignature is the trusted signature.
        let mut note = Note::new(BODY).unwrap();
        note.add_signature(sig.clone()).unwrap();
        let v = open(note.to_text().as_bytes(), std::slice::from_ref(&wk)).unwrap();
        assert_eq!(v.verified[0].timestamp, Some(1_700_000_000));

        // Another body, another time, or a flipped bit: no.
        let other = BODY.replace("20852163", "20852164");
        assert_eq!(
            verify(&wk, &other, &sig),
            Err(CosignatureError::BadSignature)
        );
        let mut later = sig.clone();
        later.bytes[..8].copy_from_slice(&1_700_000_001u64.to_be_bytes());
        assert_eq!(
            verify(&wk, BODY, &later),
            Err(CosignatureError::BadSignature)
        );
        let mut flipped = sig.clone();
        flipped.bytes[40] ^= 1;
        assert_eq!(
            verify(&wk, BODY, &flipped),
            Err(CosignatureError::BadSignature)
        );

        // The same Ed25519 key as a 0x01 verifier does not accept the cosignature (and the key
        // ID differs, so a note verifier ignores it).
        let as_ed = VerifierKey::new(w.name(), KeyType::Ed25519, *wk.public_key()).unwrap();
        assert_ne!(as_ed.key_id(), wk.key_id());
        assert!(as_ed.verify(BODY, &sig.bytes).is_none());
    }

    #[test]
    fn bad_inputs() {
        let (w, _) = Signer::generate("w", KeyType::CosignatureV1).unwrap();
        let (log, _) = Signer::generate("log", KeyType::Ed25519).unwrap();
        assert_eq!(
            cosign(&log, BODY, 1),
            Err(CosignatureError::WrongKeyType(KeyType::Ed25519))
        );
        assert_eq!(
            cosign(&w, BODY, 1 << 63),
            Err(CosignatureError::TimestampTooLarge(1 << 63))
        );
        assert!(cosign(&w, "no newline", 1).is_err());
        let mut sig = cosign(&w, BODY, 5).unwrap();
        sig.bytes[0] = 0x80;
        assert!(matches!(
            verify(w.verifier_key(), BODY, &sig),
            Err(CosignatureError::TimestampTooLarge(_))
        ));
        sig.bytes.pop();
        assert_eq!(
            verify(w.verifier_key(), BODY, &sig),
            Err(CosignatureError::WrongLength(71))
        );
    }
}
