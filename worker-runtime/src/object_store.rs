//! The archive's object store (feature `object-store`): its configuration (one set of flags
//! and environment variables for the archive sink and auditctl), building it (S3 or a local
//! folder, wrapped in the key prefix), and the retry classification of its errors.
//!
//! S3 settings not given fall back to the standard `AWS_*` environment (credentials, region,
//! endpoint, `AWS_ALLOW_HTTP`), as `AmazonS3Builder::from_env` reads it.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ::object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey, S3ConditionalPut};
use ::object_store::local::LocalFileSystem;
use ::object_store::path::Path as ObjPath;
use ::object_store::prefix::PrefixStore;
use ::object_store::{ObjectStore, RetryConfig};
use serde::{Deserialize, Serialize};

use crate::Secret;

pub mod signed;

/// Folder of the archive sink's local archive when neither `--archive-url` nor
/// `--archive-local-dir` is given.
pub const DEFAULT_LOCAL_DIR: &str = "./audit-archive";

/// How long the S3 client retries one request of a writer before the error goes to the
/// worker's own retry loop, when `--s3-request-retry-secs` is not given.
pub const WRITE_REQUEST_RETRY_SECS: u64 = 30;

/// The same for a reader that retries whole reads itself (auditctl): short, and at most
/// [`READ_REQUEST_MAX_RETRIES`] retries.
pub const READ_REQUEST_RETRY_SECS: u64 = 15;
pub const READ_REQUEST_MAX_RETRIES: usize = 2;

/// Where the archive lives, and how to reach it.
#[derive(Debug, Clone, Default, clap::Args, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArchiveStoreArgs {
    /// Archive location: `s3://<bucket>[/<path>]`, `file:///<dir>`, or (auditctl only) a local
    /// folder path; empty = the local folder of `--archive-local-dir`.
    #[arg(long, env = "AUDIT_SINK_ARCHIVE_URL", default_value = "")]
    pub archive_url: String,
    /// Folder of the local archive when `--archive-url` is empty. Default: `./audit-archive`
    /// for the archive sink; auditctl then needs one of the two.
    #[arg(long, env = "AUDIT_SINK_ARCHIVE_LOCAL_DIR")]
    pub archive_local_dir: Option<PathBuf>,
    /// Key prefix inside the bucket/folder (e.g. `prod/`), after the URL's own path; tests use
    /// a unique one each.
    #[arg(long, env = "AUDIT_SINK_ARCHIVE_PREFIX", default_value = "")]
    pub archive_prefix: String,
    /// S3 endpoint, e.g. `http://127.0.0.1:8333` (SeaweedFS, MinIO); empty = `AWS_ENDPOINT`,
    /// else AWS. An `http://` endpoint implies `--s3-allow-http`.
    #[arg(long, env = "AUDIT_S3_ENDPOINT", default_value = "")]
    pub s3_endpoint: String,
    /// S3 region; default: `AWS_REGION` / `AWS_DEFAULT_REGION`, else us-east-1.
    #[arg(long, env = "AUDIT_S3_REGION")]
    pub s3_region: Option<String>,
    /// S3 access key id; empty = the standard AWS environment/instance credentials
    /// (`AWS_ACCESS_KEY_ID`, …).
    #[arg(
        long,
        env = "AUDIT_S3_ACCESS_KEY_ID",
        hide_env_values = true,
        default_value = ""
    )]
    pub s3_access_key_id: Secret,
    /// S3 secret access key; empty = `AWS_SECRET_ACCESS_KEY`. Never printed (not in --help,
    /// errors or debug output). Prefer the environment or `--s3-secret-access-key-file`.
    #[arg(
        long,
        env = "AUDIT_S3_SECRET_ACCESS_KEY",
        hide_env_values = true,
        default_value = ""
    )]
    pub s3_secret_access_key: Secret,
    /// File holding the S3 secret access key (e.g. a mounted Kubernetes secret); wins over
    /// `--s3-secret-access-key`.
    #[arg(long, env = "AUDIT_S3_SECRET_ACCESS_KEY_FILE")]
    pub s3_secret_access_key_file: Option<PathBuf>,
    /// Allow plain-HTTP endpoints (local stack only; implied by an `http://` --s3-endpoint).
    #[arg(long, env = "AUDIT_S3_ALLOW_HTTP", default_value_t = false, num_args = 0..=1,
          default_missing_value = "true", action = clap::ArgAction::Set)]
    pub s3_allow_http: bool,
    /// Virtual-hosted-style addressing (`bucket.host`); the default is path-style, which
    /// SeaweedFS and MinIO need.
    #[arg(long, env = "AUDIT_S3_VIRTUAL_HOSTED_STYLE", default_value_t = false, num_args = 0..=1,
          default_missing_value = "true", action = clap::ArgAction::Set)]
    pub s3_virtual_hosted_style: bool,
    /// How long the S3 client itself retries one request (5xx, timeouts) before handing the
    /// error to the caller's own retry loop (seconds). Default: 30 for the archive sink; 15
    /// (and at most 2 retries) for auditctl, which retries whole reads itself.
    #[arg(long, env = "AUDIT_S3_REQUEST_RETRY_SECS")]
    pub s3_request_retry_secs: Option<u64>,
}

/// What the caller does with the store: the only place where the sink and auditctl differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// The archive sink: a local folder is created if missing (default
    /// [`DEFAULT_LOCAL_DIR`]); only `s3://` and `file://` URLs, so that a mistyped URL never
    /// becomes a local folder that silently receives the archive.
    Write,
    /// auditctl: a local folder (a `file://` URL, a bare path or `--archive-local-dir`) must
    /// exist; no default folder. The S3 client retries briefly, since whole reads are retried.
    Read,
}

/// The archive configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum StoreConfigError {
    /// A bad or missing setting (URL, bucket, folder, prefix, S3 client options).
    #[error("{0}")]
    Invalid(String),
    /// `--s3-secret-access-key-file` could not be read.
    #[error("reading the S3 secret key file {}: {source}", path.display())]
    SecretKeyFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The location an [`ArchiveStoreArgs`] names, before any client is built.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Location {
    /// `s3://bucket[/path]`: the bucket and the URL's path (a key prefix).
    S3 { bucket: String, path: String },
    /// A local folder, and the flag that named it (for messages).
    Local { dir: PathBuf, flag: &'static str },
}

impl ArchiveStoreArgs {
    fn location(&self, access: Access) -> Result<Location, StoreConfigError> {
        let url = self.archive_url.trim();
        if let Some(rest) = url.strip_prefix("s3://") {
            let (bucket, path) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(StoreConfigError::Invalid(format!(
                    "--archive-url {url:?} names no bucket"
                )));
            }
            return Ok(Location::S3 {
                bucket: bucket.to_owned(),
                path: path.to_owned(),
            });
        }
        let flag = "--archive-url";
        if let Some(dir) = url.strip_prefix("file://") {
            return Ok(Location::Local {
                dir: PathBuf::from(dir),
                flag,
            });
        }
        if !url.is_empty() {
            return match access {
                Access::Read => Ok(Location::Local {
                    dir: PathBuf::from(url),
                    flag,
                }),
                Access::Write => Err(StoreConfigError::Invalid(format!(
                    "unsupported archive URL {url:?} (s3:// or file://)"
                ))),
            };
        }
        let flag = "--archive-local-dir";
        match (&self.archive_local_dir, access) {
            (Some(dir), _) => Ok(Location::Local {
                dir: dir.clone(),
                flag,
            }),
            (None, Access::Write) => Ok(Location::Local {
                dir: PathBuf::from(DEFAULT_LOCAL_DIR),
                flag,
            }),
            (None, Access::Read) => Err(StoreConfigError::Invalid(
                "the archive source needs --archive-url (s3://bucket[/prefix] or a local folder)"
                    .into(),
            )),
        }
    }

    /// The key prefix inside the bucket/folder: the URL's path, then `--archive-prefix`,
    /// without surrounding slashes (empty for none).
    pub fn key_prefix(&self) -> String {
        let url_path = match self.archive_url.trim().strip_prefix("s3://") {
            Some(rest) => rest.split_once('/').map_or("", |(_, p)| p),
            None => "",
        };
        [
            url_path.trim_matches('/'),
            self.archive_prefix.trim_matches('/'),
        ]
        .into_iter()
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join("/")
    }

    /// A human description of the store for messages: `s3://bucket at <endpoint>` or
    /// `folder <dir>`, then `, prefix <p>/` when there is one.
    pub fn describe(&self, access: Access) -> String {
        let base = match self.location(access) {
            Ok(Location::S3 { bucket, .. }) => {
                let endpoint = if self.s3_endpoint.is_empty() {
                    AmazonS3Builder::from_env()
                        .get_config_value(&AmazonS3ConfigKey::Endpoint)
                        .unwrap_or_else(|| "the AWS default endpoint".to_owned())
                } else {
                    self.s3_endpoint.clone()
                };
                format!("s3://{bucket} at {endpoint}")
            }
            Ok(Location::Local { dir, .. }) => format!("folder {}", dir.display()),
            Err(_) => "an unusable archive location".to_owned(),
        };
        let prefix = self.key_prefix();
        if prefix.is_empty() {
            base
        } else {
            format!("{base}, prefix {prefix}/")
        }
    }

    /// The S3 client settings of these flags for `bucket`, explicit flags first, then whatever
    /// `from_env` read from `AWS_*`: one definition for the archive's object store and
    /// [`signed::SignedS3`] (its requests object_store has no call for).
    pub(crate) fn s3_builder(&self, bucket: &str) -> Result<AmazonS3Builder, StoreConfigError> {
        let mut b = AmazonS3Builder::from_env()
            .with_bucket_name(bucket)
            .with_virtual_hosted_style_request(self.s3_virtual_hosted_style);
        if let Some(region) = self.s3_region.as_deref().filter(|r| !r.is_empty()) {
            b = b.with_region(region);
        }
        if !self.s3_endpoint.is_empty() {
            b = b.with_endpoint(&self.s3_endpoint);
        }
        if !self.s3_access_key_id.is_empty() {
            b = b.with_access_key_id(self.s3_access_key_id.expose());
        }
        let secret = secret_or_file(
            self.s3_secret_access_key_file.as_deref(),
            &self.s3_secret_access_key,
        )?;
        if !secret.is_empty() {
            b = b.with_secret_access_key(secret.expose());
        }
        Ok(b)
    }

    fn s3_store(
        &self,
        bucket: &str,
        access: Access,
    ) -> Result<Arc<dyn ObjectStore>, StoreConfigError> {
        let retry = match access {
            Access::Write => RetryConfig {
                retry_timeout: Duration::from_secs(
                    self.s3_request_retry_secs
                        .unwrap_or(WRITE_REQUEST_RETRY_SECS),
                ),
                ..RetryConfig::default()
            },
            Access::Read => RetryConfig {
                max_retries: READ_REQUEST_MAX_RETRIES,
                retry_timeout: Duration::from_secs(
                    self.s3_request_retry_secs
                        .unwrap_or(READ_REQUEST_RETRY_SECS),
                ),
                ..RetryConfig::default()
            },
        };
        let mut b = self
            .s3_builder(bucket)?
            .with_conditional_put(S3ConditionalPut::ETagMatch)
            .with_retry(retry);
        if self.s3_endpoint.starts_with("http://") || self.s3_allow_http {
            b = b.with_allow_http(true);
        }
        let s3 = b
            .build()
            .map_err(|e| StoreConfigError::Invalid(format!("S3 store for bucket {bucket}: {e}")))?;
        Ok(Arc::new(s3))
    }
}

/// A secret given as a flag or in a file: the file's contents (trimmed) when a file is named
/// (it wins), else `value`. The error names the file, never its contents.
pub fn secret_or_file(file: Option<&Path>, value: &Secret) -> Result<Secret, StoreConfigError> {
    match file.filter(|p| !p.as_os_str().is_empty()) {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|source| {
                StoreConfigError::SecretKeyFile {
                    path: path.to_owned(),
                    source,
                }
            })?;
            Ok(Secret::new(text.trim()))
        }
        None => Ok(value.clone()),
    }
}

fn local_store(
    dir: &Path,
    flag: &str,
    access: Access,
) -> Result<Arc<dyn ObjectStore>, StoreConfigError> {
    let invalid = |what: String| StoreConfigError::Invalid(format!("{flag} {dir:?}: {what}"));
    match access {
        Access::Write => std::fs::create_dir_all(dir)
            .map_err(|e| invalid(format!("creating the archive folder: {e}")))?,
        Access::Read if !dir.is_dir() => return Err(invalid("no such folder".into())),
        Access::Read => {}
    }
    let local = LocalFileSystem::new_with_prefix(dir).map_err(|e| invalid(e.to_string()))?;
    Ok(Arc::new(local))
}

/// Builds the archive's object store: S3 for `s3://…`, a local folder otherwise (see
/// [`Access`] for the differences between writer and reader), wrapped in the key prefix of
/// [`ArchiveStoreArgs::key_prefix`]. Both backends support `PutMode::Create` (write-once).
pub fn build_store(
    args: &ArchiveStoreArgs,
    access: Access,
) -> Result<Arc<dyn ObjectStore>, StoreConfigError> {
    let store = match args.location(access)? {
        Location::S3 { bucket, .. } => args.s3_store(&bucket, access)?,
        Location::Local { dir, flag } => local_store(&dir, flag, access)?,
    };
    let prefix = args.key_prefix();
    if prefix.is_empty() {
        return Ok(store);
    }
    let prefix = ObjPath::parse(&prefix)
        .map_err(|e| StoreConfigError::Invalid(format!("archive prefix {prefix:?}: {e}")))?;
    Ok(Arc::new(PrefixStore::new(store, prefix)))
}

/// Retry classification of object store errors, for `worker_runtime::retry`.
///
/// `Generic` covers 5xx, timeouts and connection errors (the S3 client has already retried
/// those for `--s3-request-retry-secs`; SeaweedFS answers 500 for ~15 s after start), and the
/// local backend's I/O errors: retried. A `Generic` that is a 4xx other than 408/429 is a
/// request the server will never accept (e.g. 403 for wrong credentials): not retried.
/// Everything else (NotFound, AlreadyExists, Precondition, permission, unsupported) is an
/// answer, not a failure.
pub fn is_retryable(e: &::object_store::Error) -> bool {
    match e {
        ::object_store::Error::Generic { .. } => !is_permanent_client_error(&e.to_string()),
        ::object_store::Error::JoinError { .. } => true,
        _ => false,
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

    fn generic(msg: &str) -> ::object_store::Error {
        ::object_store::Error::Generic {
            store: "S3",
            source: msg.to_owned().into(),
        }
    }

    #[test]
    fn classification() {
        assert!(is_retryable(&generic(
            "Server returned non-2xx status code: 500 Internal Server Error"
        )));
        assert!(is_retryable(&generic(
            "Server returned non-2xx status code: 503 Slow Down"
        )));
        assert!(is_retryable(&generic(
            "error sending request: connection refused"
        )));
        assert!(is_retryable(&generic(
            "Server returned non-2xx status code: 429 Too Many Requests"
        )));
        assert!(!is_retryable(&generic(
            "Server returned non-2xx status code: 400 Bad Request"
        )));
        assert!(!is_retryable(&generic(
            "Server returned non-2xx status code: 403 Forbidden"
        )));
        let exists = ::object_store::Error::AlreadyExists {
            path: "k".into(),
            source: "x".to_owned().into(),
        };
        assert!(!is_retryable(&exists));
        let nf = ::object_store::Error::NotFound {
            path: "k".into(),
            source: "x".to_owned().into(),
        };
        assert!(!is_retryable(&nf));
        let denied = ::object_store::Error::PermissionDenied {
            path: "k".into(),
            source: "x".to_owned().into(),
        };
        assert!(!is_retryable(&denied));
    }

    fn args(url: &str) -> ArchiveStoreArgs {
        ArchiveStoreArgs {
            archive_url: url.into(),
            ..Default::default()
        }
    }

    #[test]
    fn unknown_scheme_is_a_config_error_for_the_writer_and_a_folder_for_the_reader() {
        for (url, access, says) in [
            ("gs://x", Access::Write, "unsupported archive URL"),
            ("/no/such/folder/x", Access::Read, "no such folder"),
            ("s3:///p", Access::Read, "names no bucket"),
            ("", Access::Read, "needs --archive-url"),
        ] {
            let e = build_store(&args(url), access).err();
            assert!(
                matches!(&e, Some(StoreConfigError::Invalid(m)) if m.contains(says)),
                "{url:?}: {e:?}"
            );
        }
    }

    #[test]
    fn prefix_is_the_url_path_then_the_prefix_flag() {
        let mut a = args("s3://bucket/a/b/");
        a.archive_prefix = "/c/".into();
        assert_eq!(a.key_prefix(), "a/b/c");
        assert_eq!(args("s3://bucket").key_prefix(), "");
        assert_eq!(args("file:///tmp/x").key_prefix(), "");
        let mut a = args("s3://bucket/p");
        a.s3_endpoint = "http://127.0.0.1:1".into();
        assert_eq!(
            a.describe(Access::Read),
            "s3://bucket at http://127.0.0.1:1, prefix p/"
        );
    }

    #[test]
    fn unreadable_secret_key_file_is_its_own_error() {
        let a = ArchiveStoreArgs {
            archive_url: "s3://bucket".into(),
            s3_secret_access_key_file: Some("/no/such/secret-file".into()),
            ..Default::default()
        };
        assert!(matches!(
            build_store(&a, Access::Read),
            Err(StoreConfigError::SecretKeyFile { .. })
        ));
    }

    #[test]
    fn local_writer_creates_its_folder_and_applies_the_prefix() {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let dir =
            std::env::temp_dir().join(format!("wr-object-store-{}-{nanos}", std::process::id()));
        let a = ArchiveStoreArgs {
            archive_url: format!("file://{}", dir.display()),
            archive_prefix: "pre".into(),
            ..Default::default()
        };
        let store = build_store(&a, Access::Write).expect("local store");
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        rt.block_on(async {
            store
                .put(&ObjPath::from("k"), b"v".to_vec().into())
                .await
                .expect("put");
        });
        assert!(dir.join("pre").join("k").is_file());
        let read = build_store(&a, Access::Read);
        assert!(read.is_ok());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
