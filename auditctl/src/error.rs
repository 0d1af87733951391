//! The crate's one error type. Every variant maps to one of the documented exit codes, so the
//! caller (main.rs, or a test) never has to guess what kind of failure it was.

use std::path::PathBuf;

use thiserror::Error;

/// Exit code: everything verified (or the command did what it was asked).
pub const EXIT_OK: u8 = 0;
/// Exit code: a tampering / integrity finding (or a proof that does not check).
pub const EXIT_FINDINGS: u8 = 1;
/// Exit code: usage or configuration error (bad flag, unreadable key set, unknown event id).
pub const EXIT_USAGE: u8 = 2;
/// Exit code: the store (ClickHouse, the archive) or a local file could not be read or written.
pub const EXIT_IO: u8 = 3;
/// Exit code of `verify` without `--keys` (and without `--no-signatures`) when the chain holds:
/// "unsealed", nothing signed was checked, so a consistent rewrite would go unnoticed.
pub const EXIT_UNSEALED: u8 = 4;

#[derive(Debug, Error)]
pub enum Error {
    /// Bad arguments or configuration.
    #[error("{0}")]
    Usage(String),

    /// The key set (or another configuration file) is unusable.
    #[error("key set {path}: {reason}")]
    KeySet { path: PathBuf, reason: String },

    /// A local file could not be read or written.
    #[error("{doing} {path}: {source}")]
    File {
        doing: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// ClickHouse could not be queried.
    #[error("ClickHouse: {doing}: {source}")]
    ClickHouse {
        doing: String,
        #[source]
        source: clickhouse::error::Error,
    },

    /// The archive's object store could not be listed or read.
    #[error("archive: {doing}: {source}")]
    ObjectStore {
        doing: String,
        #[source]
        source: object_store::Error,
    },

    /// The archive could be read, but a structural problem prevents going on (e.g. the
    /// archive client could not be configured).
    #[error("archive: {0}")]
    Archive(String),

    /// The store holds data that contradicts the chain or a checkpoint (e.g. `prove` over a
    /// range that does not hash to the signed root). Exit code 1, like a verify finding.
    #[error("integrity: {0}")]
    Integrity(String),

    /// The subject key store or the broker could not be reached (erase, subject-report,
    /// reveal).
    #[error("{0}")]
    Service(String),

    /// Key generation or signing failed.
    #[error("keys: {0}")]
    Key(#[from] integrity::checkpoint::CheckpointError),
}

impl Error {
    /// The process exit code for this error (see the constants and `--help`).
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Usage(_) | Error::KeySet { .. } | Error::Key(_) => EXIT_USAGE,
            Error::File { .. }
            | Error::ClickHouse { .. }
            | Error::ObjectStore { .. }
            | Error::Archive(_)
            | Error::Service(_) => EXIT_IO,
            Error::Integrity(_) => EXIT_FINDINGS,
        }
    }

    pub(crate) fn ch(doing: impl Into<String>) -> impl FnOnce(clickhouse::error::Error) -> Self {
        let doing = doing.into();
        move |source| Error::ClickHouse { doing, source }
    }

    pub(crate) fn os(doing: impl Into<String>) -> impl FnOnce(object_store::Error) -> Self {
        let doing = doing.into();
        move |source| Error::ObjectStore { doing, source }
    }

    pub(crate) fn file(
        doing: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| Error::File {
            doing,
            path,
            source,
        }
    }
}
