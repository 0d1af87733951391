//! The archive's object store. Its configuration ([`ArchiveStoreArgs`]: the same flags and
//! environment variables as auditctl's), the builder and the retry classification of its
//! errors live in `worker_runtime::object_store`; this module adapts them to the sink.

use std::sync::Arc;

use object_store::ObjectStore;
use worker_runtime::object_store::Access;
pub use worker_runtime::object_store::ArchiveStoreArgs;
use worker_runtime::retry::Retryable;

use crate::Error;

/// The sink's store (the writer's: a local folder is created if missing, only `s3://` and
/// `file://` URLs), wrapped in the configured key prefix.
pub fn build_store(args: &ArchiveStoreArgs) -> Result<Arc<dyn ObjectStore>, Error> {
    worker_runtime::object_store::build_store(args, Access::Write)
        .map_err(|e| Error::Config(e.to_string()))
}

/// An object store error, classified for `worker_runtime::retry` by
/// `worker_runtime::object_store::is_retryable`.
#[derive(Debug)]
pub struct StoreError(pub object_store::Error);

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl Retryable for StoreError {
    fn is_retryable(&self) -> bool {
        worker_runtime::object_store::is_retryable(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification_is_the_runtimes() {
        let generic = |msg: &str| {
            StoreError(object_store::Error::Generic {
                store: "S3",
                source: msg.to_owned().into(),
            })
        };
        assert!(
            generic("Server returned non-2xx status code: 500 Internal Server Error")
                .is_retryable()
        );
        assert!(!generic("Server returned non-2xx status code: 400 Bad Request").is_retryable());
        let exists = StoreError(object_store::Error::AlreadyExists {
            path: "k".into(),
            source: "x".to_owned().into(),
        });
        assert!(!exists.is_retryable());
    }

    #[test]
    fn unknown_scheme_is_a_config_error() {
        let args = ArchiveStoreArgs {
            archive_url: "gs://x".into(),
            ..Default::default()
        };
        assert!(matches!(build_store(&args), Err(Error::Config(_))));
    }
}
