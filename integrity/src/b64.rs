//! Strict standard base64 (RFC 4648 §4, padded), as C2SP notes and checkpoints use it.
//!
//! "Strict" means one encoding per value: non-canonical trailing bits, missing padding or
//! embedded whitespace are rejected rather than normalised. A verifier that accepted several
//! spellings of one checkpoint would let two different byte strings carry the same meaning
//! (Go's `encoding/base64` StdEncoding, used by the reference note code, does accept
//! non-zero trailing bits). base64 0.22's `STANDARD` engine already decodes canonically; the
//! re-encode comparison keeps that guarantee independent of the engine's configuration.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::tree::Hash32;

pub fn encode(bytes: &[u8]) -> String {
    STANDARD.encode(bytes)
}

/// Decodes `s` only if it is the canonical encoding of its bytes.
pub fn decode(s: &str) -> Option<Vec<u8>> {
    let bytes = STANDARD.decode(s).ok()?;
    (STANDARD.encode(&bytes) == s).then_some(bytes)
}

pub fn decode_hash(s: &str) -> Option<Hash32> {
    decode(s)?.try_into().ok()
}

/// A hash serialised as its canonical base64 string (persisted state, JSON reports).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct B64Hash(pub Hash32);

impl Serialize for B64Hash {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&encode(&self.0))
    }
}

impl<'de> Deserialize<'de> for B64Hash {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        decode_hash(&s)
            .map(B64Hash)
            .ok_or_else(|| serde::de::Error::custom("not the canonical base64 of 32 bytes"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_canonical_encodings_decode() {
        let h = [0xabu8; 32];
        let s = encode(&h);
        assert_eq!(decode_hash(&s), Some(h));
        assert_eq!(
            decode_hash(s.trim_end_matches('=')),
            None,
            "padding required"
        );
        assert_eq!(decode_hash(&format!(" {s}")), None);
        assert_eq!(decode_hash(&format!("{s}\n")), None);
        // "q6s=" is the canonical "\xab\xab"; "q6t=" has non-zero trailing bits.
        assert_eq!(decode("q6s="), Some(vec![0xab, 0xab]));
        assert_eq!(decode("q6t="), None);
        assert_eq!(
            decode_hash(&encode(&[1u8; 31])),
            None,
            "31 bytes is not a hash"
        );
        assert_eq!(
            decode("-_8="),
            None,
            "URL-safe alphabet is not standard base64"
        );
    }
}
