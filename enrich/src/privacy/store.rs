//! The subject key store: one object per data subject, `subjects/<subject token>.json`, holding
//! the subject's key wrapped by the master key ([`super::crypto::WrappedKey`]), in a store of
//! its own (docs/privacy.md: a dedicated S3 bucket without versioning, never the archive
//! bucket, with credentials of its own; or a local folder for tests and single-host setups).
//!
//! Erasure overwrites the object with a tombstone (no key material; in a bucket without
//! versioning the old content is gone from the API at once). The tombstone, rather than a plain
//! delete, keeps a later event of the subject (or a redelivered old one) from getting a fresh
//! key: its personal fields are written as `[erased]` instead. Lookups are cached in each
//! process (moka) for at most `ttl`, which bounds how long an erased key can still be used by a
//! running worker. Keys are created on first use with a write-once put (`PutMode::Create`), so
//! two workers that meet a new subject at once agree on one key (the loser reads the
//! winner's), and a tombstone written meanwhile wins over both.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use moka::future::Cache;
use object_store::aws::{AmazonS3Builder, S3ConditionalPut};
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjPath;
use object_store::prefix::PrefixStore;
use object_store::{ObjectStore, PutMode, PutOptions, PutPayload, RetryConfig};
use serde::{Deserialize, Serialize};

use super::crypto::{self, SubjectKey, WrappedKey};
use super::keys::NamedKey;
use super::PrivacyError;

/// Where the key store is and how to reach it.
#[derive(Clone)]
pub struct StoreLocation {
    /// `s3://bucket[/prefix]`, `file:///dir`, or a folder path.
    pub url: String,
    /// S3 endpoint (empty: `AWS_ENDPOINT`, else AWS).
    pub s3_endpoint: String,
    /// Credentials of the key store (empty: the standard `AWS_*` environment).
    pub s3_access_key_id: String,
    pub s3_secret_access_key: String,
}

impl std::fmt::Debug for StoreLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreLocation")
            .field("url", &self.url)
            .field("s3_endpoint", &self.s3_endpoint)
            .finish_non_exhaustive()
    }
}

impl StoreLocation {
    pub fn build(&self) -> Result<Arc<dyn ObjectStore>, PrivacyError> {
        let bad = |why: String| PrivacyError::KeyStoreConfig(format!("{}: {why}", self.url));
        if let Some(rest) = self.url.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(bad("no bucket".into()));
            }
            // Key creation relies on write-once puts. Requests sit on the event path, so the
            // client's own retries are kept short: a store that stays down stops the worker
            // (fail closed) rather than stalling it for minutes.
            let mut b = AmazonS3Builder::from_env()
                .with_bucket_name(bucket)
                .with_virtual_hosted_style_request(false)
                .with_conditional_put(S3ConditionalPut::ETagMatch)
                .with_retry(RetryConfig {
                    max_retries: 5,
                    retry_timeout: Duration::from_secs(30),
                    ..RetryConfig::default()
                });
            if !self.s3_endpoint.is_empty() {
                b = b
                    .with_endpoint(&self.s3_endpoint)
                    .with_allow_http(self.s3_endpoint.starts_with("http://"));
            }
            if !self.s3_access_key_id.is_empty() {
                b = b
                    .with_access_key_id(&self.s3_access_key_id)
                    .with_secret_access_key(&self.s3_secret_access_key);
            }
            let s3: Arc<dyn ObjectStore> = Arc::new(b.build().map_err(|e| bad(e.to_string()))?);
            return with_prefix(s3, prefix).map_err(bad);
        }
        let dir = PathBuf::from(self.url.strip_prefix("file://").unwrap_or(&self.url));
        if dir.as_os_str().is_empty() {
            return Err(bad("empty location".into()));
        }
        std::fs::create_dir_all(&dir).map_err(|e| bad(format!("creating the folder: {e}")))?;
        let local = LocalFileSystem::new_with_prefix(&dir).map_err(|e| bad(e.to_string()))?;
        Ok(Arc::new(local))
    }
}

fn with_prefix(store: Arc<dyn ObjectStore>, prefix: &str) -> Result<Arc<dyn ObjectStore>, String> {
    let prefix = prefix.trim_matches('/');
    if prefix.is_empty() {
        return Ok(store);
    }
    let p = ObjPath::parse(prefix).map_err(|e| format!("prefix {prefix:?}: {e}"))?;
    Ok(Arc::new(PrefixStore::new(store, p)))
}

/// What the store holds for a subject.
#[derive(Debug, Clone)]
pub enum KeyState {
    Active(Arc<SubjectKey>),
    /// Erased: a tombstone, no key.
    Erased,
}

/// The object left in place of an erased subject's key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tombstone {
    pub version: u32,
    pub erased: bool,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Stored {
    Key(WrappedKey),
    Erased(Tombstone),
}

/// The key store with its cache.
#[derive(Clone)]
pub struct SubjectKeys {
    store: Arc<dyn ObjectStore>,
    /// The current master key first (new keys are wrapped with it), then retired ones.
    masters: Arc<Vec<NamedKey>>,
    cache: Cache<String, KeyState>,
    ttl: Duration,
}

impl std::fmt::Debug for SubjectKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SubjectKeys")
            .field("store", &self.store.to_string())
            .field("cached", &self.cache.entry_count())
            .field("ttl", &self.ttl)
            .finish()
    }
}

fn object_path(subject_token: &str) -> ObjPath {
    ObjPath::from(format!("subjects/{subject_token}.json"))
}

fn store_err(op: &'static str) -> impl FnOnce(object_store::Error) -> PrivacyError {
    // The subject token is pseudonymous, but errors name only the operation: they end up in
    // logs and the worker's exit message.
    move |e| PrivacyError::KeyStore {
        op,
        message: e.to_string(),
    }
}

impl SubjectKeys {
    /// `masters`: current first. `ttl`: how long a looked-up key is reused without asking the
    /// store again (the erasure bound for running workers).
    pub fn new(store: Arc<dyn ObjectStore>, masters: Vec<NamedKey>, ttl: Duration) -> Self {
        SubjectKeys {
            store,
            masters: Arc::new(masters),
            cache: Cache::builder()
                .name("privacy.subject-keys")
                .max_capacity(100_000)
                .time_to_live(ttl)
                .build(),
            ttl,
        }
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Checks at start that the store answers, by reading a probe name (absent is fine): a
    /// wrong bucket, endpoint or credentials stop the worker before the first event instead of
    /// at it. (A wrong master key shows at the first subject whose key it cannot open.)
    pub async fn check(&self) -> Result<(), PrivacyError> {
        self.load("_probe").await.map(|_| ())
    }

    async fn load(&self, subject_token: &str) -> Result<Option<KeyState>, PrivacyError> {
        let got = match self.store.get(&object_path(subject_token)).await {
            Ok(g) => g,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(store_err("reading a subject key")(e)),
        };
        let bytes = got
            .bytes()
            .await
            .map_err(store_err("reading a subject key"))?;
        match serde_json::from_slice(&bytes).map_err(|_| PrivacyError::CorruptStoredKey)? {
            Stored::Key(w) => Ok(Some(KeyState::Active(Arc::new(crypto::unwrap(
                &self.masters,
                &w,
            )?)))),
            Stored::Erased(t) if t.erased => Ok(Some(KeyState::Erased)),
            Stored::Erased(_) => Err(PrivacyError::CorruptStoredKey),
        }
    }

    /// The subject's key, created (and stored) if the subject has none; `Erased` after an
    /// erasure (never a new key then).
    pub async fn get_or_create(&self, subject_token: &str) -> Result<KeyState, PrivacyError> {
        self.cache
            .try_get_with(subject_token.to_owned(), async {
                if let Some(state) = self.load(subject_token).await? {
                    return Ok(state);
                }
                let master = self.masters.first().ok_or(PrivacyError::NoMasterKey)?;
                let key = SubjectKey::generate(subject_token)?;
                let w = crypto::wrap(master, &key)?;
                let body = serde_json::to_vec(&w).map_err(|_| PrivacyError::CorruptStoredKey)?;
                let opts = PutOptions {
                    mode: PutMode::Create,
                    ..Default::default()
                };
                match self
                    .store
                    .put_opts(&object_path(subject_token), PutPayload::from(body), opts)
                    .await
                {
                    Ok(_) => {
                        metrics::counter!("audit_privacy_subject_keys_created_total").increment(1);
                        Ok(KeyState::Active(Arc::new(key)))
                    }
                    // Another worker created it first (or it was erased meanwhile): theirs wins.
                    Err(object_store::Error::AlreadyExists { .. }) => self
                        .load(subject_token)
                        .await?
                        .ok_or(PrivacyError::KeyStore {
                            op: "creating a subject key",
                            message: "exists and vanished at once".into(),
                        }),
                    Err(e) => Err(store_err("creating a subject key")(e)),
                }
            })
            .await
            .map_err(PrivacyError::Shared)
    }

    /// The subject's key if it exists and is not erased (never creates one): the read path.
    pub async fn get(&self, subject_token: &str) -> Result<Option<Arc<SubjectKey>>, PrivacyError> {
        let state = match self.cache.get(subject_token).await {
            Some(s) => Some(s),
            None => {
                let found = self.load(subject_token).await?;
                if let Some(s) = &found {
                    self.cache.insert(subject_token.to_owned(), s.clone()).await;
                }
                found
            }
        };
        Ok(match state {
            Some(KeyState::Active(k)) => Some(k),
            Some(KeyState::Erased) | None => None,
        })
    }

    /// What the store says now, bypassing the cache: `None` (no key ever), active, erased.
    pub async fn status(&self, subject_token: &str) -> Result<Option<KeyState>, PrivacyError> {
        self.load(subject_token).await
    }

    /// Erasure: overwrites the subject's key with a tombstone and drops it from this process's
    /// cache. Returns the key ref destroyed (`None`: the subject had no key, or was erased
    /// before). Other processes stop using the key within their cache TTL.
    pub async fn destroy(&self, subject_token: &str) -> Result<Option<String>, PrivacyError> {
        let existing = match self.load(subject_token).await? {
            Some(KeyState::Active(k)) => Some(k.key_ref().to_owned()),
            Some(KeyState::Erased) | None => None,
        };
        let body = serde_json::to_vec(&Tombstone {
            version: 1,
            erased: true,
        })
        .map_err(|_| PrivacyError::CorruptStoredKey)?;
        self.store
            .put(&object_path(subject_token), PutPayload::from(body))
            .await
            .map_err(store_err("erasing a subject key"))?;
        self.cache.invalidate(subject_token).await;
        // Read back: the key must be gone before erasure is reported done.
        if !matches!(self.load(subject_token).await?, Some(KeyState::Erased)) {
            return Err(PrivacyError::KeyStore {
                op: "erasing a subject key",
                message: "the key is still readable after the overwrite".into(),
            });
        }
        metrics::counter!("audit_privacy_subject_keys_erased_total").increment(1);
        Ok(existing)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(dir: &std::path::Path, ttl: Duration) -> SubjectKeys {
        let loc = StoreLocation {
            url: dir.display().to_string(),
            s3_endpoint: String::new(),
            s3_access_key_id: String::new(),
            s3_secret_access_key: String::new(),
        };
        let m = NamedKey::new("m1", [5; 32]).expect("master");
        SubjectKeys::new(loc.build().expect("store"), vec![m], ttl)
    }

    #[tokio::test]
    async fn created_once_shared_and_destroyed() {
        let dir = tempfile::tempdir().expect("tmp");
        let a = keys(dir.path(), Duration::from_secs(60));
        let b = keys(dir.path(), Duration::from_millis(50));
        let active = |s: KeyState| match s {
            KeyState::Active(k) => k,
            KeyState::Erased => panic!("erased"),
        };
        let k1 = active(a.get_or_create("t1.subj").await.expect("create"));
        let k2 = active(b.get_or_create("t1.subj").await.expect("read"));
        assert_eq!(k1.key_ref(), k2.key_ref());
        assert_eq!(k1.bytes(), k2.bytes());
        let sealed = crypto::seal(&k1, "e1", "actor.email", "ada@example.com");
        assert_eq!(
            a.destroy("t1.subj").await.expect("destroy"),
            Some(k1.key_ref().to_owned())
        );
        assert!(a.get("t1.subj").await.expect("get").is_none());
        // The object left holds no key material at all.
        let left =
            std::fs::read_to_string(dir.path().join("subjects/t1.subj.json")).expect("tombstone");
        assert_eq!(left, r#"{"version":1,"erased":true}"#);
        // b cached the key: it is gone from b once its TTL has passed (polled, no fixed sleep).
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while b.get("t1.subj").await.expect("get").is_some() {
            assert!(
                std::time::Instant::now() < deadline,
                "erased key survived the TTL"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // No new key for an erased subject, in any process; the old ciphertext stays shut.
        assert!(matches!(
            a.get_or_create("t1.subj").await.expect("state"),
            KeyState::Erased
        ));
        let c = keys(dir.path(), Duration::from_secs(60));
        assert!(matches!(
            c.get_or_create("t1.subj").await.expect("state"),
            KeyState::Erased
        ));
        assert!(c.get("t1.subj").await.expect("get").is_none());
        let _ = sealed;
        // Erasing twice, or a subject that never had a key: nothing destroyed, tombstone kept.
        assert_eq!(a.destroy("t1.subj").await.expect("again"), None);
        assert_eq!(a.destroy("t-none.x").await.expect("absent"), None);
        assert!(matches!(
            a.status("t-none.x").await.expect("status"),
            Some(KeyState::Erased)
        ));
    }

    #[tokio::test]
    async fn wrong_master_key_fails_closed() {
        let dir = tempfile::tempdir().expect("tmp");
        let a = keys(dir.path(), Duration::from_secs(60));
        a.get_or_create("t1.s").await.expect("create");
        assert!(a.get("t1.s").await.expect("own master").is_some());
        let loc = StoreLocation {
            url: dir.path().display().to_string(),
            s3_endpoint: String::new(),
            s3_access_key_id: String::new(),
            s3_secret_access_key: String::new(),
        };
        let other = SubjectKeys::new(
            loc.build().expect("store"),
            vec![NamedKey::new("m1", [6; 32]).expect("m")],
            Duration::from_secs(1),
        );
        assert!(other.get("t1.s").await.is_err());
    }
}
