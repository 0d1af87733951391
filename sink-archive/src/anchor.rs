//! The write-once anchor: a copy of every checkpoint outside the stores' writers' reach.
//!
//! Someone with write access to the archive bucket and to ClickHouse can delete checkpoints
//! from both, and with them the evidence of a deleted tail or partition. The anchor is a second
//! location, with its **own** credentials, where every checkpoint is also written once:
//! `anchor/<chain id>/partition=<p>/<seq:020>-<key_id>@t<time_us>.json`
//! ([`schemas::segment::anchor_key`]), the same `CheckpointJson` as the archive's copy.
//! `auditctl verify --anchor` reads it back as trusted heads.
//!
//! - `s3://bucket[/prefix]`: meant for a bucket with Object Lock in COMPLIANCE mode and a
//!   default retention. The bucket's default retention applies to every object put into it,
//!   so this writer sends no per-object lock headers; it sends a SHA-256 checksum
//!   (`x-amz-checksum-sha256`) with each put, since S3 wants a content checksum on puts into
//!   a bucket with Object Lock. Its credentials never
//!   fall back to the `AWS_*` environment or the archive's `--s3-*` settings: those are the
//!   archive writer's, which the anchor must be out of reach of.
//! - `file:///dir`: the local default. Each file is created no-clobber (object_store's local
//!   store links a finished staging file to the name, failing if it exists) and then made
//!   read-only (0444): write-once as far as a local folder can be.
//!
//! A put is create-only; an identical object already there is a redelivery, a different one is
//! a fork alarm (the stored object is kept). Failures are retried with the worker's retry
//! policy and reported in `/readyz` as the `anchor_store` condition: the worker stalls and the
//! checkpoint's offset is not stored, so an anchor outage never skips a checkpoint.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use integrity::checkpoint::CheckpointJson;
use object_store::aws::{AmazonS3Builder, S3ConditionalPut};
use object_store::local::LocalFileSystem;
use object_store::prefix::PrefixStore;
use object_store::{ObjectStore, RetryConfig};
use schemas::segment;
use schemas::Checkpoint;
use serde::{Deserialize, Serialize};
use worker_runtime::object_store::{secret_or_file, StoreConfigError};
use worker_runtime::retry::{DependencyCheck, RetryPolicy};
use worker_runtime::{CancellationToken, Secret};

use crate::archive::{Archive, Outcome};
use crate::Error;

/// The readiness condition naming the anchor: false while a call to it is retried.
pub const CHECK_ANCHOR_STORE: &str = "anchor_store";

/// Where the write-once anchor lives, and how to reach it (its own S3 settings).
#[derive(Debug, Clone, Default, clap::Args, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnchorArgs {
    /// Write-once anchor for checkpoints: `s3://<bucket>[/<prefix>]` or `file:///<dir>`;
    /// empty = none. Every checkpoint is also written here, once, and its offset is stored only
    /// after both the archive and the anchor hold it (an anchor outage stalls the sink, it
    /// never skips). For S3 use a bucket with Object Lock in COMPLIANCE mode and a default
    /// retention: the bucket's default retention applies to every put, so the sink needs no
    /// per-object headers; and give the anchor its OWN credentials (--anchor-s3-*), which
    /// may put objects but not delete them or change retention: whoever holds the archive's
    /// credentials must not be able to remove what the anchor holds — that is its whole point
    /// (`auditctl verify --anchor`).
    #[arg(long, env = "AUDIT_ARCHIVE_ANCHOR_URL", default_value = "")]
    pub anchor_url: String,
    /// The anchor's S3 endpoint (e.g. `http://127.0.0.1:8333`); empty = AWS. An `http://`
    /// endpoint implies --anchor-s3-allow-http. Not taken from AWS_ENDPOINT.
    #[arg(long, env = "AUDIT_ARCHIVE_ANCHOR_S3_ENDPOINT", default_value = "")]
    pub anchor_s3_endpoint: String,
    /// The anchor's S3 region (default us-east-1).
    #[arg(long, env = "AUDIT_ARCHIVE_ANCHOR_S3_REGION")]
    pub anchor_s3_region: Option<String>,
    /// The anchor's S3 access key id (required for an s3:// anchor; never the archive's:
    /// the AWS_* environment is not read for the anchor).
    #[arg(
        long,
        env = "AUDIT_ARCHIVE_ANCHOR_S3_ACCESS_KEY_ID",
        hide_env_values = true,
        default_value = ""
    )]
    pub anchor_s3_access_key_id: Secret,
    /// The anchor's S3 secret access key. Never printed. Prefer the environment or
    /// --anchor-s3-secret-access-key-file.
    #[arg(
        long,
        env = "AUDIT_ARCHIVE_ANCHOR_S3_SECRET_ACCESS_KEY",
        hide_env_values = true,
        default_value = ""
    )]
    pub anchor_s3_secret_access_key: Secret,
    /// File holding the anchor's S3 secret access key; wins over
    /// --anchor-s3-secret-access-key.
    #[arg(long, env = "AUDIT_ARCHIVE_ANCHOR_S3_SECRET_ACCESS_KEY_FILE")]
    pub anchor_s3_secret_access_key_file: Option<PathBuf>,
    /// Allow a plain-HTTP anchor endpoint (local stack only).
    #[arg(long, env = "AUDIT_ARCHIVE_ANCHOR_S3_ALLOW_HTTP", default_value_t = false, num_args = 0..=1,
          default_missing_value = "true", action = clap::ArgAction::Set)]
    pub anchor_s3_allow_http: bool,
    /// Virtual-hosted-style addressing for the anchor (default: path-style).
    #[arg(long, env = "AUDIT_ARCHIVE_ANCHOR_S3_VIRTUAL_HOSTED_STYLE", default_value_t = false,
          num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set)]
    pub anchor_s3_virtual_hosted_style: bool,
    /// How long the S3 client retries one anchor request before the sink's own retry loop
    /// takes over (seconds; default 30).
    #[arg(long, env = "AUDIT_ARCHIVE_ANCHOR_S3_REQUEST_RETRY_SECS")]
    pub anchor_s3_request_retry_secs: Option<u64>,
}

/// Where an anchor URL points.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Location {
    S3 { bucket: String, prefix: String },
    Local(PathBuf),
}

fn location(url: &str) -> Result<Location, Error> {
    let url = url.trim();
    if let Some(rest) = url.strip_prefix("s3://") {
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(Error::Config(format!(
                "--anchor-url {url:?} names no bucket"
            )));
        }
        return Ok(Location::S3 {
            bucket: bucket.to_owned(),
            prefix: prefix.trim_matches('/').to_owned(),
        });
    }
    if let Some(dir) = url.strip_prefix("file://") {
        if dir.is_empty() {
            return Err(Error::Config(format!(
                "--anchor-url {url:?} names no folder"
            )));
        }
        return Ok(Location::Local(PathBuf::from(dir)));
    }
    Err(Error::Config(format!(
        "unsupported --anchor-url {url:?} (s3://bucket[/prefix] or file:///dir)"
    )))
}

impl AnchorArgs {
    /// Whether an anchor is configured.
    pub fn enabled(&self) -> bool {
        !self.anchor_url.trim().is_empty()
    }

    /// `s3://bucket/prefix at <endpoint>` or `folder <dir>`, for logs (no credentials).
    pub fn describe(&self) -> String {
        match location(&self.anchor_url) {
            Ok(Location::S3 { bucket, prefix }) => format!(
                "s3://{bucket}/{prefix} at {}",
                if self.anchor_s3_endpoint.is_empty() {
                    "the AWS default endpoint"
                } else {
                    &self.anchor_s3_endpoint
                }
            ),
            Ok(Location::Local(dir)) => format!("folder {}", dir.display()),
            Err(_) => "an unusable anchor location".into(),
        }
    }

    fn s3_store(&self, bucket: &str) -> Result<Arc<dyn ObjectStore>, Error> {
        let secret = secret_or_file(
            self.anchor_s3_secret_access_key_file.as_deref(),
            &self.anchor_s3_secret_access_key,
        )
        .map_err(|e| match e {
            StoreConfigError::SecretKeyFile { path, source } => Error::Config(format!(
                "reading the anchor's S3 secret key file {}: {source}",
                path.display()
            )),
            other => Error::Config(other.to_string()),
        })?;
        if self.anchor_s3_access_key_id.is_empty() || secret.is_empty() {
            return Err(Error::Config(
                "an s3:// --anchor-url needs the anchor's own credentials \
                 (--anchor-s3-access-key-id and --anchor-s3-secret-access-key[-file]); \
                 the archive's and the AWS_* environment are never used for it"
                    .into(),
            ));
        }
        // A fresh builder, not `from_env`: nothing of the archive's AWS_* environment leaks in.
        let mut b = AmazonS3Builder::new()
            .with_bucket_name(bucket)
            .with_region(
                self.anchor_s3_region
                    .as_deref()
                    .filter(|r| !r.is_empty())
                    .unwrap_or("us-east-1"),
            )
            .with_access_key_id(self.anchor_s3_access_key_id.expose())
            .with_secret_access_key(secret.expose())
            .with_virtual_hosted_style_request(self.anchor_s3_virtual_hosted_style)
            .with_conditional_put(S3ConditionalPut::ETagMatch)
            // S3 wants a content checksum on puts into an Object Lock bucket.
            .with_checksum_algorithm(object_store::aws::Checksum::SHA256)
            .with_retry(RetryConfig {
                retry_timeout: Duration::from_secs(
                    self.anchor_s3_request_retry_secs
                        .unwrap_or(worker_runtime::object_store::WRITE_REQUEST_RETRY_SECS),
                ),
                ..RetryConfig::default()
            });
        if !self.anchor_s3_endpoint.is_empty() {
            b = b.with_endpoint(&self.anchor_s3_endpoint);
            if self.anchor_s3_endpoint.starts_with("http://") {
                b = b.with_allow_http(true);
            }
        }
        if self.anchor_s3_allow_http {
            b = b.with_allow_http(true);
        }
        let s3 = b
            .build()
            .map_err(|e| Error::Config(format!("anchor S3 store for bucket {bucket}: {e}")))?;
        Ok(Arc::new(s3))
    }
}

/// The anchor writer: a create-only store, plus the folder when it is local (to make each
/// file read-only).
#[derive(Debug, Clone)]
pub struct Anchor {
    store: Archive,
    local_root: Option<PathBuf>,
}

impl Anchor {
    /// Builds the anchor of `args` (`None` when no `--anchor-url` is given). `archive` is the
    /// archive's own store settings, to warn when both use the same access key.
    pub fn build(
        args: &AnchorArgs,
        archive: &worker_runtime::object_store::ArchiveStoreArgs,
        retry: RetryPolicy,
        cancel: CancellationToken,
    ) -> Result<Option<Anchor>, Error> {
        if !args.enabled() {
            return Ok(None);
        }
        let (store, local_root): (Arc<dyn ObjectStore>, _) = match location(&args.anchor_url)? {
            Location::S3 { bucket, prefix } => {
                if !archive.s3_access_key_id.is_empty()
                    && archive.s3_access_key_id == args.anchor_s3_access_key_id
                {
                    tracing::warn!("the anchor uses the archive's S3 access key: whoever can write the archive can then also reach the anchor; give it its own credentials");
                }
                let s3 = args.s3_store(&bucket)?;
                let store: Arc<dyn ObjectStore> = if prefix.is_empty() {
                    s3
                } else {
                    Arc::new(PrefixStore::new(s3, prefix.as_str()))
                };
                (store, None)
            }
            Location::Local(dir) => {
                std::fs::create_dir_all(&dir).map_err(|e| {
                    Error::Config(format!(
                        "--anchor-url: creating the anchor folder {}: {e}",
                        dir.display()
                    ))
                })?;
                let fs = LocalFileSystem::new_with_prefix(&dir).map_err(|e| {
                    Error::Config(format!("--anchor-url: folder {}: {e}", dir.display()))
                })?;
                (Arc::new(fs) as Arc<dyn ObjectStore>, Some(dir))
            }
        };
        tracing::info!(anchor = %args.describe(), "checkpoints are also written to the write-once anchor");
        Ok(Some(Anchor {
            store: Archive::new(store, retry, cancel),
            local_root,
        }))
    }

    /// Reports the anchor's health to `check` (`/readyz`) as calls fail and succeed.
    pub fn reporting(mut self, check: DependencyCheck) -> Self {
        self.store = self.store.reporting(check);
        self
    }

    /// The anchor's store (relative to its root/prefix).
    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        self.store.store()
    }

    /// Writes `cp` once at its [`segment::anchor_key`]. The same object already there is a
    /// redelivery (`AlreadyThere`); another one at the same name is a fork alarm (`Fork`,
    /// the stored one kept).
    pub async fn store_checkpoint(&self, cp: &Checkpoint) -> Result<Outcome, Error> {
        let key = segment::anchor_key(&cp.chain_id, cp.partition, cp.seq, &cp.key_id, cp.time_us);
        let json = CheckpointJson::from(cp);
        let mut body = serde_json::to_vec_pretty(&json)
            .map_err(|e| Error::Task(format!("checkpoint JSON: {e}")))?;
        body.push(b'\n');
        if self.store.put_create(&key, Bytes::from(body)).await? {
            self.seal(&key)?;
            metrics::counter!("audit_archive_anchor_checkpoints_total", "outcome" => "written")
                .increment(1);
            return Ok(Outcome::Written);
        }
        let existing = self.store.get(&key).await?;
        match serde_json::from_slice::<CheckpointJson>(&existing) {
            Ok(stored) if stored == json => {
                // A crash between the put and the chmod leaves a writable file: seal it now.
                self.seal(&key)?;
                Ok(Outcome::AlreadyThere)
            }
            Ok(stored) => {
                anchor_fork(
                    cp.partition,
                    &key,
                    &format!(
                        "stored head {} at seq {} vs received {} at seq {}",
                        stored.head_hash, stored.seq, json.head_hash, json.seq
                    ),
                );
                Ok(Outcome::Fork)
            }
            Err(e) => {
                anchor_fork(
                    cp.partition,
                    &key,
                    &format!("stored checkpoint unreadable: {e}"),
                );
                Ok(Outcome::Fork)
            }
        }
    }

    /// Makes a local anchor file read-only (0444).
    fn seal(&self, key: &str) -> Result<(), Error> {
        let Some(root) = &self.local_root else {
            return Ok(());
        };
        let path = root.join(key);
        let mut perms = std::fs::metadata(&path)
            .map_err(|e| Error::Task(format!("anchor file {}: {e}", path.display())))?
            .permissions();
        if !perms.readonly() {
            set_read_only(&mut perms);
            std::fs::set_permissions(&path, perms)
                .map_err(|e| Error::Task(format!("making {} read-only: {e}", path.display())))?;
        }
        Ok(())
    }
}

#[cfg(unix)]
fn set_read_only(perms: &mut std::fs::Permissions) {
    use std::os::unix::fs::PermissionsExt;
    perms.set_mode(0o444);
}

#[cfg(not(unix))]
fn set_read_only(perms: &mut std::fs::Permissions) {
    perms.set_readonly(true);
}

fn anchor_fork(partition: i32, key: &str, detail: &str) {
    tracing::error!(partition, key, detail, "FORK: the anchor already holds a different checkpoint under this name; keeping the stored one");
    metrics::counter!("audit_archive_forks_total", "kind" => "anchor_checkpoint", "partition" => partition.to_string())
        .increment(1);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(url: &str) -> AnchorArgs {
        AnchorArgs {
            anchor_url: url.into(),
            ..Default::default()
        }
    }

    #[test]
    fn urls() {
        assert_eq!(
            location("s3://b/p/q/").unwrap(),
            Location::S3 {
                bucket: "b".into(),
                prefix: "p/q".into()
            }
        );
        assert_eq!(
            location("file:///srv/anchor").unwrap(),
            Location::Local("/srv/anchor".into())
        );
        for bad in ["s3://", "file://", "/srv/anchor", "gs://b"] {
            assert!(matches!(location(bad), Err(Error::Config(_))), "{bad}");
        }
        assert!(!args("").enabled());
    }

    /// An s3:// anchor never borrows credentials (the AWS_* environment is the archive's).
    #[test]
    fn s3_anchor_needs_its_own_credentials() {
        let r = Anchor::build(
            &args("s3://anchor"),
            &Default::default(),
            RetryPolicy::default(),
            CancellationToken::new(),
        );
        match r {
            Err(Error::Config(m)) => assert!(m.contains("own credentials"), "{m}"),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn local_anchor_is_write_once_and_read_only() {
        let dir = tempfile::tempdir().unwrap();
        let a = Anchor::build(
            &args(&format!("file://{}", dir.path().display())),
            &Default::default(),
            RetryPolicy {
                max_attempts: 2,
                ..Default::default()
            },
            CancellationToken::new(),
        )
        .unwrap()
        .unwrap();
        let cp = Checkpoint {
            chain_id: "c/1".into(),
            partition: 2,
            first_seq: 1,
            seq: 5,
            head_hash: vec![5; 32],
            merkle_root: vec![0; 32],
            time_us: 9,
            partition_count: 4,
            tree_root: vec![1; 32],
            key_id: "k1".into(),
            signature: vec![0; 64],
        };
        assert_eq!(a.store_checkpoint(&cp).await.unwrap(), Outcome::Written);
        assert_eq!(
            a.store_checkpoint(&cp).await.unwrap(),
            Outcome::AlreadyThere
        );
        let path = dir
            .path()
            .join("anchor/c_2F1/partition=2/00000000000000000005-k1@t9.json");
        let meta = std::fs::metadata(&path).expect("anchored file");
        assert!(meta.permissions().readonly());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(meta.permissions().mode() & 0o777, 0o444);
        }
        let stored: CheckpointJson =
            serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(stored, CheckpointJson::from(&cp));
        let forked = Checkpoint {
            head_hash: vec![6; 32],
            ..cp.clone()
        };
        assert_eq!(a.store_checkpoint(&forked).await.unwrap(), Outcome::Fork);
        let again: CheckpointJson = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(again, stored, "never overwritten");
    }
}
