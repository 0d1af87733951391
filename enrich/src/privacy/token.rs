//! Keyed tokenization: `tok:<key id>:<base64url(HMAC-SHA-256(key, value))>`.
//!
//! Equal values give equal tokens under one key (joinable across events and fields, as Vault's
//! audit devices do), different keys give unrelated tokens, and without the key a token says
//! nothing about the value beyond equality. The key id in the token tells which key made it, so
//! a rotation leaves old tokens attributable (re-tokenize a value under the old key to join).

use base64::Engine as _;
use ring::hmac;

use super::keys::NamedKey;

/// Prefix of every token.
pub const TOKEN_PREFIX: &str = "tok:";

/// Domain separation: a subject's key-store name is an HMAC of the subject id under the same
/// key, and must never equal the token of a field holding the same string.
const SUBJECT_DOMAIN: &[u8] = b"audit-subject/v1\0";

fn mac(key: &NamedKey, parts: &[&[u8]]) -> String {
    let k = hmac::Key::new(hmac::HMAC_SHA256, key.bytes());
    let mut ctx = hmac::Context::with_key(&k);
    for p in parts {
        ctx.update(p);
    }
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(ctx.sign().as_ref())
}

/// The token of `value` under `key`.
pub fn tokenize(key: &NamedKey, value: &str) -> String {
    format!(
        "{TOKEN_PREFIX}{}:{}",
        key.id(),
        mac(key, &[value.as_bytes()])
    )
}

/// Whether `s` is shaped exactly like a token (`tok:<key id>:<43 base64url characters>`):
/// rules never tokenize a token twice, so re-running them on their own output changes
/// nothing, while a producer's value that merely starts with `tok:` is still protected.
pub fn is_token(s: &str) -> bool {
    let Some(rest) = s.strip_prefix(TOKEN_PREFIX) else {
        return false;
    };
    let Some((id, mac)) = rest.split_once(':') else {
        return false;
    };
    super::keys::check_key_id(id).is_ok()
        && mac.len() == 43
        && mac
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The pseudonymous name of a data subject (user id, or the email of an unknown user):
/// `<key id>.<base64url HMAC>`. It names the subject's key in the key store and marks the
/// subject's events (`audit.privacy.subject`), so erasure can find both from the subject id
/// without the id itself being stored anywhere.
pub fn subject_token(key: &NamedKey, subject_id: &str) -> String {
    format!(
        "{}.{}",
        key.id(),
        mac(key, &[SUBJECT_DOMAIN, subject_id.as_bytes()])
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key(id: &str, b: u8) -> NamedKey {
        NamedKey::new(id, [b; 32]).expect("key")
    }

    proptest! {
        #[test]
        fn stable_per_key_and_different_across_keys(v in ".{0,64}", w in ".{0,64}") {
            let (k1, k2) = (key("k1", 1), key("k2", 2));
            prop_assert_eq!(tokenize(&k1, &v), tokenize(&k1, &v));
            prop_assert_ne!(tokenize(&k1, &v), tokenize(&k2, &v));
            prop_assert_ne!(subject_token(&k1, &v), subject_token(&k2, &v));
            prop_assert!(tokenize(&k1, &v).starts_with("tok:k1:"));
            if v != w {
                prop_assert_ne!(tokenize(&k1, &v), tokenize(&k1, &w));
            }
            // A subject's store name is never the token of the same string.
            prop_assert!(!tokenize(&k1, &v).ends_with(subject_token(&k1, &v).split('.').nth(1).unwrap_or("")));
        }
    }

    #[test]
    fn same_key_bytes_other_id_is_another_token_prefix() {
        let t = tokenize(&key("a", 1), "10.0.0.1");
        assert!(t.starts_with("tok:a:") && t.len() == "tok:a:".len() + 43);
        assert!(is_token(&t));
        for not_a_token in ["tok:ada@example.com", "tok:a:short", "tok::", "tok"] {
            assert!(!is_token(not_a_token), "{not_a_token}");
        }
    }
}
