//! Building the object store from configuration (S3 or a local folder, one function), and the
//! retry classification of its errors.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use object_store::aws::{AmazonS3Builder, S3ConditionalPut};
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::prefix::PrefixStore;
use object_store::{ObjectStore, RetryConfig};
use serde::{Deserialize, Serialize};
use worker_runtime::retry::Retryable;
use worker_runtime::Secret;

use crate::Error;

/// Where the archive lives.
#[derive(Debug, Clone, clap::Args, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArchiveArgs {
    /// Archive location: `s3://<bucket>[/<path>]`, or `file:///<dir>`; empty = the embedded
    /// default, a local folder (`--archive-local-dir`) with the same layout.
    #[arg(long, env = "AUDIT_SINK_ARCHIVE_URL", default_value = "")]
    pub archive_url: String,
    /// Folder of the local archive when `--archive-url` is empty.
    #[arg(
        long,
        env = "AUDIT_SINK_ARCHIVE_LOCAL_DIR",
        default_value = "./audit-archive"
    )]
    pub archive_local_dir: PathBuf,
    /// Key prefix inside the bucket/folder (e.g. `prod/`); tests use a unique one each.
    #[arg(long, env = "AUDIT_SINK_ARCHIVE_PREFIX", default_value = "")]
    pub archive_prefix: String,
    /// S3 endpoint, e.g. `http://127.0.0.1:8333` (SeaweedFS, MinIO); empty = AWS.
    #[arg(long, env = "AUDIT_S3_ENDPOINT", default_value = "")]
    pub s3_endpoint: String,
    /// S3 region.
    #[arg(long, env = "AUDIT_S3_REGION", default_value = "us-east-1")]
    pub s3_region: String,
    /// S3 access key id; empty = the standard AWS environment/instance credentials.
    #[arg(
        long,
        env = "AUDIT_S3_ACCESS_KEY_ID",
        hide_env_values = true,
        default_value = ""
    )]
    pub s3_access_key_id: Secret,
    /// S3 secret access key (never logged). Prefer the environment or `--s3-secret-access-key-file`.
    #[arg(
        long,
        env = "AUDIT_S3_SECRET_ACCESS_KEY",
        hide_env_values = true,
        default_value = ""
    )]
    pub s3_secret_access_key: Secret,
    /// File holding the S3 secret access key (e.g. a mounted Kubernetes secret); wins over
    /// `--s3-secret-access-key`.
    #[arg(long, env = "AUDIT_S3_SECRET_ACCESS_KEY_FILE", default_value = "")]
    pub s3_secret_access_key_file: String,
    /// Allow plain-HTTP endpoints (local stack only).
    #[arg(long, env = "AUDIT_S3_ALLOW_HTTP", default_value_t = false, num_args = 0..=1,
          default_missing_value = "true", action = clap::ArgAction::Set)]
    pub s3_allow_http: bool,
    /// Virtual-hosted-style addressing (`bucket.host`); the default is path-style, which
    /// SeaweedFS and MinIO need.
    #[arg(long, env = "AUDIT_S3_VIRTUAL_HOSTED_STYLE", default_value_t = false, num_args = 0..=1,
          default_missing_value = "true", action = clap::ArgAction::Set)]
    pub s3_virtual_hosted_style: bool,
    /// How long the S3 client itself retries one request (5xx, timeouts) before handing the
    /// error to the worker's own retry loop (seconds).
    #[arg(long, env = "AUDIT_S3_REQUEST_RETRY_SECS", default_value_t = 30)]
    pub s3_request_retry_secs: u64,
}

impl Default for ArchiveArgs {
    fn default() -> Self {
        ArchiveArgs {
            archive_url: String::new(),
            archive_local_dir: PathBuf::from("./audit-archive"),
            archive_prefix: String::new(),
            s3_endpoint: String::new(),
            s3_region: "us-east-1".into(),
            s3_access_key_id: Secret::default(),
            s3_secret_access_key: Secret::default(),
            s3_secret_access_key_file: String::new(),
            s3_allow_http: false,
            s3_virtual_hosted_style: false,
            s3_request_retry_secs: 30,
        }
    }
}

/// Builds the archive's object store: S3 for `s3://…`, a local folder otherwise, wrapped in
/// the configured key prefix. Both backends support `PutMode::Create` (write-once).
pub fn build_store(args: &ArchiveArgs) -> Result<Arc<dyn ObjectStore>, Error> {
    let config_err = |reason: String| Error::Config(reason);
    let url = args.archive_url.trim();
    let (store, url_prefix): (Arc<dyn ObjectStore>, String) = if let Some(rest) =
        url.strip_prefix("s3://")
    {
        let (bucket, path) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(config_err(format!("no bucket in archive URL {url:?}")));
        }
        let mut b = AmazonS3Builder::from_env()
            .with_bucket_name(bucket)
            .with_region(&args.s3_region)
            .with_allow_http(args.s3_allow_http)
            .with_virtual_hosted_style_request(args.s3_virtual_hosted_style)
            .with_conditional_put(S3ConditionalPut::ETagMatch)
            .with_retry(RetryConfig {
                retry_timeout: Duration::from_secs(args.s3_request_retry_secs),
                ..RetryConfig::default()
            });
        if !args.s3_endpoint.is_empty() {
            b = b.with_endpoint(&args.s3_endpoint);
        }
        if !args.s3_access_key_id.is_empty() {
            b = b.with_access_key_id(args.s3_access_key_id.expose());
        }
        let secret = if args.s3_secret_access_key_file.is_empty() {
            args.s3_secret_access_key.clone()
        } else {
            let text = std::fs::read_to_string(&args.s3_secret_access_key_file).map_err(|e| {
                config_err(format!(
                    "reading S3 secret key file {}: {e}",
                    args.s3_secret_access_key_file
                ))
            })?;
            Secret::new(text.trim())
        };
        if !secret.is_empty() {
            b = b.with_secret_access_key(secret.expose());
        }
        let s3 = b
            .build()
            .map_err(|e| config_err(format!("S3 store for bucket {bucket}: {e}")))?;
        (Arc::new(s3), path.to_owned())
    } else {
        let dir = match url.strip_prefix("file://") {
            Some(p) => PathBuf::from(p),
            None if url.is_empty() => args.archive_local_dir.clone(),
            None => {
                return Err(config_err(format!(
                    "unsupported archive URL {url:?} (s3:// or file://)"
                )))
            }
        };
        std::fs::create_dir_all(&dir)
            .map_err(|e| config_err(format!("creating archive folder {}: {e}", dir.display())))?;
        let local = LocalFileSystem::new_with_prefix(&dir)
            .map_err(|e| config_err(format!("archive folder {}: {e}", dir.display())))?;
        (Arc::new(local), String::new())
    };
    let prefix = [
        url_prefix.trim_matches('/'),
        args.archive_prefix.trim_matches('/'),
    ]
    .iter()
    .filter(|s| !s.is_empty())
    .copied()
    .collect::<Vec<_>>()
    .join("/");
    if prefix.is_empty() {
        return Ok(store);
    }
    let prefix =
        Path::parse(&prefix).map_err(|e| config_err(format!("archive prefix {prefix:?}: {e}")))?;
    Ok(Arc::new(PrefixStore::new(store, prefix)))
}

/// An object store error, classified for `worker_runtime::retry`.
#[derive(Debug)]
pub struct StoreError(pub object_store::Error);

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl Retryable for StoreError {
    /// `Generic` covers 5xx, timeouts and connection errors (the S3 client has already retried
    /// those for `--s3-request-retry-secs`; SeaweedFS answers 500 for ~15 s after start), and
    /// the local backend's I/O errors: retried. A `Generic` that is a 4xx other than 408/429
    /// is a request the server will never accept: not retried. Everything else (NotFound,
    /// AlreadyExists, Precondition, permission, unsupported) is an answer, not a failure.
    fn is_retryable(&self) -> bool {
        match &self.0 {
            object_store::Error::Generic { .. } => !is_permanent_client_error(&self.0.to_string()),
            object_store::Error::JoinError { .. } => true,
            _ => false,
        }
    }
}

/// The S3 client's `RetryError` is not a public type, so its status is read from the message
/// (`Server returned non-2xx status code: 400 Bad Request`).
fn is_permanent_client_error(message: &str) -> bool {
    let Some(i) = message.find("status code: ") else {
        return false;
    };
    let code = &message[i + "status code: ".len()..];
    code.starts_with('4') && !code.starts_with("408") && !code.starts_with("429")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn generic(msg: &str) -> StoreError {
        StoreError(object_store::Error::Generic {
            store: "S3",
            source: msg.to_owned().into(),
        })
    }

    #[test]
    fn classification() {
        assert!(
            generic("Server returned non-2xx status code: 500 Internal Server Error")
                .is_retryable()
        );
        assert!(generic("error sending request: connection refused").is_retryable());
        assert!(
            generic("Server returned non-2xx status code: 429 Too Many Requests").is_retryable()
        );
        assert!(!generic("Server returned non-2xx status code: 400 Bad Request").is_retryable());
        let exists = StoreError(object_store::Error::AlreadyExists {
            path: "k".into(),
            source: "x".to_owned().into(),
        });
        assert!(!exists.is_retryable());
        let nf = StoreError(object_store::Error::NotFound {
            path: "k".into(),
            source: "x".to_owned().into(),
        });
        assert!(!nf.is_retryable());
        let denied = StoreError(object_store::Error::PermissionDenied {
            path: "k".into(),
            source: "x".to_owned().into(),
        });
        assert!(!denied.is_retryable());
    }

    #[test]
    fn unknown_scheme_is_a_config_error() {
        let args = ArchiveArgs {
            archive_url: "gs://x".into(),
            ..Default::default()
        };
        assert!(matches!(build_store(&args), Err(Error::Config(_))));
    }
}
