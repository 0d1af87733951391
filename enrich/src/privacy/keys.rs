//! Key material for the privacy rules: the tokenization key and the master key, each 32 bytes
//! with an id, read from a file or an environment value (base64 or hex text). The bytes never
//! appear in `Debug` output or error messages.

use std::path::Path;

use base64::Engine as _;

use super::PrivacyError;

/// A 32-byte secret key with a public id. The id is recorded next to what the key produced
/// (tokens, wrapped subject keys), so keys can rotate while old outputs stay attributable.
#[derive(Clone)]
pub struct NamedKey {
    id: String,
    bytes: [u8; 32],
}

impl std::fmt::Debug for NamedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NamedKey")
            .field("id", &self.id)
            .field("bytes", &"[redacted]")
            .finish()
    }
}

impl NamedKey {
    /// `id`: 1–32 characters of `[A-Za-z0-9_-]` (it is embedded in `:`- and `.`-separated
    /// token and ciphertext strings, so those separators are excluded).
    pub fn new(id: &str, bytes: [u8; 32]) -> Result<Self, PrivacyError> {
        check_key_id(id)?;
        Ok(NamedKey {
            id: id.to_owned(),
            bytes,
        })
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub(crate) fn bytes(&self) -> &[u8; 32] {
        &self.bytes
    }

    /// Parses key text: 32 bytes as standard/url-safe base64 (padded or not) or 64 hex digits,
    /// surrounding whitespace ignored. `what` names the key in errors (never the text).
    pub fn parse(id: &str, text: &str, what: &'static str) -> Result<Self, PrivacyError> {
        let t = text.trim();
        let decoded = if t.len() == 64 && t.bytes().all(|b| b.is_ascii_hexdigit()) {
            hex::decode(t).ok()
        } else {
            [
                &base64::engine::general_purpose::STANDARD,
                &base64::engine::general_purpose::STANDARD_NO_PAD,
                &base64::engine::general_purpose::URL_SAFE,
                &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            ]
            .iter()
            .find_map(|e| e.decode(t).ok())
        };
        let bytes: [u8; 32] =
            decoded
                .and_then(|v| v.try_into().ok())
                .ok_or(PrivacyError::BadKey {
                    what,
                    reason: "expected 32 bytes as base64 or 64 hex digits",
                })?;
        NamedKey::new(id, bytes)
    }

    /// Reads a key from `file` if given, else from `env_text` (the value of an environment
    /// variable or config entry); `Ok(None)` when neither is set.
    pub fn load(
        id: &str,
        file: Option<&Path>,
        env_text: &str,
        what: &'static str,
    ) -> Result<Option<Self>, PrivacyError> {
        let text = match file {
            Some(p) => std::fs::read_to_string(p).map_err(|source| PrivacyError::KeyFile {
                what,
                path: p.to_owned(),
                source,
            })?,
            None if env_text.trim().is_empty() => return Ok(None),
            None => env_text.to_owned(),
        };
        NamedKey::parse(id, &text, what).map(Some)
    }
}

pub(crate) fn check_key_id(id: &str) -> Result<(), PrivacyError> {
    let ok = !id.is_empty()
        && id.len() <= 32
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(PrivacyError::BadKeyId(id.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_base64_and_hex_and_hides_bytes() {
        let hex_text = "00".repeat(31) + "ff";
        let k = NamedKey::parse("k1", &hex_text, "token key").expect("hex");
        assert_eq!(k.bytes()[31], 0xff);
        let b64 = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
        let k = NamedKey::parse("k1", &format!(" {b64}\n"), "token key").expect("b64");
        assert_eq!(k.bytes(), &[7u8; 32]);
        assert!(!format!("{k:?}").contains(&b64));
        assert!(NamedKey::parse("k1", "short", "token key").is_err());
        assert!(NamedKey::parse("bad:id", &hex_text, "token key").is_err());
        assert!(NamedKey::load("k1", None, "  ", "token key")
            .expect("empty")
            .is_none());
    }
}
