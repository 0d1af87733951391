//! The chainer's signing key and the secret bytes it is loaded from. Key material never reaches
//! Debug output or error messages.

use std::fmt;
use std::path::Path;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use ring::rand::SystemRandom;
use ring::signature::{Ed25519KeyPair, KeyPair as _};

use super::error::CheckpointError;
use super::keyset::PublicKeyEntry;

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
    // `pub(super)` for `sign_fields` (signing.rs); never leaves the module.
    pub(super) key_id: String,
    pub(super) pair: Ed25519KeyPair,
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
