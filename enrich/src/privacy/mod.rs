//! Privacy rules applied in enrich, after the context is merged and before the event leaves
//! for the chainer, so the chain covers exactly what is stored (docs/privacy.md):
//!
//! - [`rules`]: which field is dropped, masked, tokenized or encrypted for its data subject,
//!   and which free text is scanned for emails/phones/cards ([`mask`]);
//! - [`token`]: keyed HMAC-SHA-256 tokens, stable per key;
//! - [`crypto`] + [`store`]: per-subject AES-256-GCM keys, wrapped by a master key, held in a
//!   key store whose deletion is the erasure (crypto-shredding).
//!
//! Tokens and ciphertexts replace the field's value as strings (`tok:<key id>:…`,
//! `enc:v1:<key ref>:…`), so the event schema and the canonical bytes contract are unchanged;
//! the subject of an event with ciphertexts is named by the reserved attribute
//! [`SUBJECT_ATTRIBUTE`] (its pseudonymous subject token), which is how erasure finds the
//! events of a subject in ClickHouse.

pub mod crypto;
pub mod keys;
pub mod mask;
pub mod rules;
pub mod store;
pub mod token;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use schemas::{ActorType, AuditEvent, KeyValue};
use serde::{Deserialize, Serialize};
use worker_runtime::Secret;

use crypto::Sealed;
use keys::NamedKey;
use rules::{Action, Rules};
use store::{KeyState, StoreLocation, SubjectKeys};

/// Attribute naming an event's data subject (its subject token) when a field was encrypted.
pub const SUBJECT_ATTRIBUTE: &str = "audit.privacy.subject";
/// What a field whose subject was erased reads as.
pub const ERASED: &str = "[erased]";

/// Errors of the privacy rules. None of them carries a field value or key material.
#[derive(Debug, thiserror::Error)]
pub enum PrivacyError {
    #[error("privacy rules: {0}")]
    Rules(String),
    #[error("reading the privacy rules file {}: {source}", path.display())]
    RulesFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("reading the {what} file {}: {source}", path.display())]
    KeyFile {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the {what} is unusable: {reason}")]
    BadKey {
        what: &'static str,
        reason: &'static str,
    },
    #[error("key id {0:?}: use 1-32 characters of A-Z a-z 0-9 _ -")]
    BadKeyId(String),
    #[error(
        "privacy: the rules encrypt for data subjects, which needs --privacy-master-key(-file) \
         and --privacy-key-store-url; refusing to start rather than store {0} in the clear"
    )]
    EncryptionNotConfigured(&'static str),
    #[error("privacy: no tokenization key (--privacy-token-key-file or AUDIT_PRIVACY_TOKEN_KEY)")]
    NoTokenKey,
    #[error("privacy: no master key configured")]
    NoMasterKey,
    #[error("subject key store: {0}")]
    KeyStoreConfig(String),
    #[error("subject key store: {op}: {message}")]
    KeyStore { op: &'static str, message: String },
    #[error("a stored subject key is corrupt or was wrapped by another master key")]
    CorruptStoredKey,
    #[error("a stored subject key names master key {0:?}, which is not configured")]
    UnknownMasterKey(String),
    #[error("the system random generator failed")]
    Random,
    #[error("unreadable: no usable key for this ciphertext")]
    Unreadable,
    #[error(transparent)]
    Shared(Arc<PrivacyError>),
}

/// The privacy options, shared by enrich and `auditctl erase` (one set of flags and
/// environment variables).
#[derive(Debug, Clone, Default, clap::Args, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrivacyArgs {
    /// Rules file (TOML, docs/privacy.md); replaces the default rules. The rules are applied
    /// only when a tokenization key is configured.
    #[arg(long, env = "AUDIT_PRIVACY_RULES_FILE")]
    pub privacy_rules_file: Option<PathBuf>,
    /// File holding the tokenization (HMAC) key: 32 bytes as base64 or hex. Setting it (or
    /// AUDIT_PRIVACY_TOKEN_KEY) turns the privacy rules on.
    #[arg(long, env = "AUDIT_PRIVACY_TOKEN_KEY_FILE")]
    pub privacy_token_key_file: Option<PathBuf>,
    /// The tokenization key itself (base64/hex); prefer the file. Never printed.
    #[arg(
        long,
        env = "AUDIT_PRIVACY_TOKEN_KEY",
        hide_env_values = true,
        default_value = ""
    )]
    pub privacy_token_key: Secret,
    /// Id of the tokenization key, written into every token (`tok:<id>:…`) so tokens can be
    /// rotated.
    #[arg(long, env = "AUDIT_PRIVACY_TOKEN_KEY_ID", default_value = "t1")]
    pub privacy_token_key_id: String,
    /// File holding the master key that wraps subject keys (32 bytes, base64/hex).
    #[arg(long, env = "AUDIT_PRIVACY_MASTER_KEY_FILE")]
    pub privacy_master_key_file: Option<PathBuf>,
    /// The master key itself (base64/hex); prefer the file. Never printed.
    #[arg(
        long,
        env = "AUDIT_PRIVACY_MASTER_KEY",
        hide_env_values = true,
        default_value = ""
    )]
    pub privacy_master_key: Secret,
    /// Id of the master key, recorded with every wrapped subject key.
    #[arg(long, env = "AUDIT_PRIVACY_MASTER_KEY_ID", default_value = "m1")]
    pub privacy_master_key_id: String,
    /// Subject key store: `s3://<bucket>[/<prefix>]` (a dedicated bucket without versioning,
    /// never the archive's) or a local folder (`file:///dir`).
    #[arg(long, env = "AUDIT_PRIVACY_KEY_STORE_URL", default_value = "")]
    pub privacy_key_store_url: String,
    /// S3 endpoint of the key store (empty: `AWS_ENDPOINT`, else AWS).
    #[arg(long, env = "AUDIT_PRIVACY_KEY_STORE_S3_ENDPOINT", default_value = "")]
    pub privacy_key_store_s3_endpoint: String,
    /// Access key id for the key store (its own credentials: the archive writer must not
    /// reach it); empty = the standard AWS environment.
    #[arg(
        long,
        env = "AUDIT_PRIVACY_KEY_STORE_S3_ACCESS_KEY_ID",
        hide_env_values = true,
        default_value = ""
    )]
    pub privacy_key_store_s3_access_key_id: Secret,
    /// Secret access key for the key store. Never printed.
    #[arg(
        long,
        env = "AUDIT_PRIVACY_KEY_STORE_S3_SECRET_ACCESS_KEY",
        hide_env_values = true,
        default_value = ""
    )]
    pub privacy_key_store_s3_secret_access_key: Secret,
    /// Retired tokenization keys, `ID=FILE` (repeatable; comma-separated in the environment):
    /// not used for new tokens, but `auditctl erase`/`subject-report` also find a subject's
    /// keys and events made under them, so a rotation never hides a subject from erasure.
    #[arg(
        long = "privacy-retired-token-key-file",
        env = "AUDIT_PRIVACY_RETIRED_TOKEN_KEY_FILES",
        value_delimiter = ','
    )]
    #[serde(default)]
    pub privacy_retired_token_key_files: Vec<String>,
    /// Retired master keys, `ID=FILE` (repeatable; comma-separated in the environment): subject
    /// keys wrapped by them stay usable until re-wrapped.
    #[arg(
        long = "privacy-retired-master-key-file",
        env = "AUDIT_PRIVACY_RETIRED_MASTER_KEY_FILES",
        value_delimiter = ','
    )]
    #[serde(default)]
    pub privacy_retired_master_key_files: Vec<String>,
    /// How long a worker reuses a subject key it looked up (seconds): the bound on how long an
    /// erased key keeps working in a running worker.
    #[arg(long, env = "AUDIT_PRIVACY_KEY_CACHE_TTL_SECS", default_value_t = 60)]
    pub privacy_key_cache_ttl_secs: u64,
}

impl PrivacyArgs {
    pub fn token_key(&self) -> Result<Option<NamedKey>, PrivacyError> {
        NamedKey::load(
            &self.privacy_token_key_id,
            self.privacy_token_key_file.as_deref(),
            self.privacy_token_key.expose(),
            "tokenization key",
        )
    }

    pub fn master_key(&self) -> Result<Option<NamedKey>, PrivacyError> {
        NamedKey::load(
            &self.privacy_master_key_id,
            self.privacy_master_key_file.as_deref(),
            self.privacy_master_key.expose(),
            "master key",
        )
    }

    /// The current tokenization key first, then the retired ones (empty: privacy off).
    pub fn token_keys(&self) -> Result<Vec<NamedKey>, PrivacyError> {
        let mut keys: Vec<NamedKey> = self.token_key()?.into_iter().collect();
        keys.extend(retired(
            &self.privacy_retired_token_key_files,
            "retired tokenization key",
        )?);
        Ok(keys)
    }

    /// The key store, if one is configured (with the current and retired master keys).
    pub fn subject_keys(&self) -> Result<Option<SubjectKeys>, PrivacyError> {
        let master = self.master_key()?;
        if self.privacy_key_store_url.is_empty() {
            return Ok(None);
        }
        let mut masters = vec![master.ok_or(PrivacyError::NoMasterKey)?];
        masters.extend(retired(
            &self.privacy_retired_master_key_files,
            "retired master key",
        )?);
        let location = StoreLocation {
            url: self.privacy_key_store_url.clone(),
            s3_endpoint: self.privacy_key_store_s3_endpoint.clone(),
            s3_access_key_id: self.privacy_key_store_s3_access_key_id.expose().to_owned(),
            s3_secret_access_key: self
                .privacy_key_store_s3_secret_access_key
                .expose()
                .to_owned(),
        };
        Ok(Some(SubjectKeys::new(
            location.build()?,
            masters,
            Duration::from_secs(self.privacy_key_cache_ttl_secs),
        )))
    }

    /// The rule engine enrich runs, or `None` when privacy is off (no tokenization key).
    pub fn build(&self) -> Result<Option<Privacy>, PrivacyError> {
        let Some(token_key) = self.token_key()? else {
            if self.privacy_rules_file.is_some() {
                return Err(PrivacyError::NoTokenKey);
            }
            return Ok(None);
        };
        let rules = match &self.privacy_rules_file {
            Some(p) => Rules::load(p)?,
            None => Rules::default(),
        };
        let subjects = self.subject_keys()?;
        if rules.encrypts() && subjects.is_none() {
            return Err(PrivacyError::EncryptionNotConfigured("personal fields"));
        }
        Ok(Some(Privacy::new(rules, token_key, subjects)))
    }
}

/// Parses `ID=FILE` entries and reads each key.
fn retired(entries: &[String], what: &'static str) -> Result<Vec<NamedKey>, PrivacyError> {
    entries
        .iter()
        .filter(|e| !e.trim().is_empty())
        .map(|e| {
            let (id, path) = e.split_once('=').ok_or(PrivacyError::BadKey {
                what,
                reason: "expected ID=FILE",
            })?;
            NamedKey::load(id.trim(), Some(std::path::Path::new(path.trim())), "", what)?.ok_or(
                PrivacyError::BadKey {
                    what,
                    reason: "empty",
                },
            )
        })
        .collect()
}

/// The rules with their keys: what enrich applies to each event.
#[derive(Debug, Clone)]
pub struct Privacy {
    rules: Arc<Rules>,
    token_key: NamedKey,
    subjects: Option<SubjectKeys>,
}

/// What applying the rules did to one event (counted in metrics; never values).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Outcome {
    pub dropped: u32,
    pub masked: u32,
    pub tokenized: u32,
    pub encrypted: u32,
    pub text_masked: u32,
    /// Personal fields of an erased subject, written as [`ERASED`].
    pub erased: u32,
}

/// An event's data subject: the user id of a user actor, else the actor's email (an unknown
/// user), else none.
pub fn subject_of(e: &AuditEvent) -> Option<String> {
    if e.actor.actor_type == ActorType::User && !e.actor.id.is_empty() && !is_protected(&e.actor.id)
    {
        return Some(e.actor.id.clone());
    }
    e.actor
        .email
        .clone()
        .filter(|m| !m.is_empty() && !is_protected(m))
}

/// Already a token or ciphertext: rules never apply twice.
fn is_protected(s: &str) -> bool {
    token::is_token(s) || crypto::is_ciphertext(s) || s == ERASED
}

/// Sets an attribute, keeping the list sorted by key with unique keys (a producer's value
/// under a reserved key is replaced: it must not name another subject).
fn set_attribute(e: &mut AuditEvent, key: &str, value: String) {
    match e.attributes.binary_search_by(|kv| kv.key.as_str().cmp(key)) {
        Ok(i) => e.attributes[i].value = value,
        Err(i) => e.attributes.insert(
            i,
            KeyValue {
                key: key.to_owned(),
                value,
            },
        ),
    }
}

impl Privacy {
    pub fn new(rules: Rules, token_key: NamedKey, subjects: Option<SubjectKeys>) -> Self {
        Privacy {
            rules: Arc::new(rules),
            token_key,
            subjects,
        }
    }

    pub fn token_key(&self) -> &NamedKey {
        &self.token_key
    }

    pub fn subject_keys(&self) -> Option<&SubjectKeys> {
        self.subjects.as_ref()
    }

    /// Applies the rules to `e` in place. Deterministic for a given event, rules and keys
    /// (redeliveries give identical bytes). An `Err` (key store unreachable) means the event
    /// must not leave enrich: the caller stops instead of writing PII in the clear.
    pub async fn apply(&self, e: &mut AuditEvent) -> Result<Outcome, PrivacyError> {
        let mut out = Outcome::default();
        // The subject is decided before any rule rewrites the fields it comes from.
        let subject = subject_of(e);
        // (subject token, its key state) once an encrypt rule met a value.
        let mut subject_key: Option<(String, KeyState)> = None;
        for (field, action) in &self.rules.fields {
            let Some(value) = field.get(e) else { continue };
            if is_protected(&value) {
                continue;
            }
            let new = match action {
                Action::Drop => {
                    out.dropped += 1;
                    None
                }
                Action::MaskKeepLast(n) => {
                    out.masked += 1;
                    Some(mask::keep_last(&value, *n))
                }
                Action::MaskEmailDomain => {
                    out.masked += 1;
                    Some(mask::email_domain(&value))
                }
                Action::Tokenize => {
                    out.tokenized += 1;
                    Some(token::tokenize(&self.token_key, &value))
                }
                Action::Encrypt => match (&subject, &self.subjects) {
                    (Some(id), Some(keys)) => {
                        if subject_key.is_none() {
                            let t = token::subject_token(&self.token_key, id);
                            let state = keys.get_or_create(&t).await?;
                            subject_key = Some((t, state));
                        }
                        match subject_key
                            .as_ref()
                            .map(|(_, s)| s)
                            .ok_or(PrivacyError::NoMasterKey)?
                        {
                            KeyState::Active(key) => {
                                out.encrypted += 1;
                                Some(crypto::seal(key, &e.event_id, &field.name(), &value))
                            }
                            // The subject was erased: later (or redelivered) events of theirs
                            // never get a readable copy again.
                            KeyState::Erased => {
                                out.erased += 1;
                                Some(ERASED.to_owned())
                            }
                        }
                    }
                    // Nobody to encrypt for (a service actor without an email): the value is
                    // still protected, by a token.
                    _ => {
                        out.tokenized += 1;
                        Some(token::tokenize(&self.token_key, &value))
                    }
                },
            };
            field.set(e, new);
        }
        for field in &self.rules.text_fields {
            let Some(value) = field.get(e) else { continue };
            let masked = if field.is_json() {
                mask::scan_json(&value, self.rules.text)
            } else {
                mask::scan_text(&value, self.rules.text)
            };
            if let Some(m) = masked {
                out.text_masked += 1;
                field.set(e, Some(m));
            }
        }
        // The subject attribute names the subject whose key the event's personal fields need
        // (or needed: an erased subject's events keep naming it, so a redelivery after the
        // erasure is the same content to the chainer, and the subject report still finds them).
        // It comes from this run's encryption, else from the ciphertexts or `[erased]` values
        // already there (re-applying the rules to their output changes nothing); a producer's
        // own value, which could point erasure elsewhere, never survives.
        let encrypted_values: Vec<String> = self
            .rules
            .fields
            .iter()
            .filter(|(_, a)| *a == Action::Encrypt)
            .filter_map(|(f, _)| f.get(e))
            .collect();
        let named = subject_key
            .map(|(t, _)| t)
            .or_else(|| {
                encrypted_values
                    .iter()
                    .find_map(|v| Sealed::parse(v).map(|s| s.subject_token().to_owned()))
            })
            .or_else(|| {
                let erased = encrypted_values.iter().any(|v| v == ERASED);
                subject
                    .as_deref()
                    .filter(|_| erased)
                    .map(|id| token::subject_token(&self.token_key, id))
            });
        e.attributes.retain(|kv| kv.key != SUBJECT_ATTRIBUTE);
        if let Some(t) = named {
            set_attribute(e, SUBJECT_ATTRIBUTE, t);
        }
        Ok(out)
    }
}

/// What a protected field reads as for someone with access to the key store: the plaintext, or
/// [`ERASED`] when the subject's key is gone (or does not open it). Tokens and plain values
/// are returned as they are.
pub async fn reveal(
    keys: &SubjectKeys,
    event_id: &str,
    field: &str,
    value: &str,
) -> Result<String, PrivacyError> {
    let Some(sealed) = Sealed::parse(value) else {
        return Ok(value.to_owned());
    };
    let Some(key) = keys.get(sealed.subject_token()).await? else {
        return Ok(ERASED.to_owned());
    };
    Ok(crypto::open(&key, event_id, field, value).unwrap_or_else(|_| ERASED.to_owned()))
}

#[cfg(test)]
mod tests;
