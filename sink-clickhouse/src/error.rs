//! The sink's errors, and which are worth retrying (the ClickHouse failures that
//! `worker_runtime::clickhouse::is_retryable` classifies as transient).

use thiserror::Error;
use worker_runtime::retry::Retryable;

#[derive(Debug, Error)]
pub enum Error {
    /// A ClickHouse call failed; `context` says what was being done, with which input.
    #[error("clickhouse: {context}: {source}")]
    ClickHouse {
        context: String,
        #[source]
        source: clickhouse::error::Error,
    },
    /// A migration statement was refused by the server.
    #[error("migration {version} ({name}) failed: {source}")]
    Migration {
        version: u32,
        name: &'static str,
        #[source]
        source: clickhouse::error::Error,
    },
    /// A row read back from ClickHouse does not describe a record (tampering or a schema bug).
    #[error("stored row {context}: {source}")]
    StoredRow {
        context: String,
        #[source]
        source: schemas::flat::FlatError,
    },
    /// A row does not fit `audit_events` as the server has it (its columns, their types):
    /// the table is not the one the migrations make. Not a bad record: nothing is committed.
    #[error("audit_events: {0}")]
    RowLayout(#[from] crate::rowbinary::RowBinaryError),
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("unsupported server version {0:?}")]
    ServerVersion(String),
    #[error(transparent)]
    Runtime(Box<worker_runtime::RuntimeError>),
    #[error("kafka seek of {topic}/{partition} to {offset}: {source}")]
    Seek {
        topic: String,
        partition: i32,
        offset: String,
        #[source]
        source: Box<rdkafka::error::KafkaError>,
    },
}

impl From<worker_runtime::RuntimeError> for Error {
    fn from(e: worker_runtime::RuntimeError) -> Self {
        Error::Runtime(Box::new(e))
    }
}

impl Error {
    pub fn ch(context: impl Into<String>, source: clickhouse::error::Error) -> Self {
        Error::ClickHouse {
            context: context.into(),
            source,
        }
    }
}

impl Retryable for Error {
    fn is_retryable(&self) -> bool {
        match self {
            // A migration statement cut by a network failure is retried (migrations are
            // idempotent); one the server refuses is not.
            Error::ClickHouse { source, .. } | Error::Migration { source, .. } => {
                worker_runtime::clickhouse::is_retryable(source)
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clickhouse::error::Error as E;

    /// Only ClickHouse failures are retried, as `worker_runtime::clickhouse` classifies them
    /// (its own tests cover the codes).
    #[test]
    fn classifies_errors() {
        let syntax = "Code: 62, e.displayText() = DB::Exception: Syntax error";
        assert!(!Error::ch("q", E::BadResponse(syntax.into())).is_retryable());
        let parts = "Code: 252. DB::Exception: Too many parts (300). (TOO_MANY_PARTS)";
        assert!(Error::ch("q", E::BadResponse(parts.into())).is_retryable());
        assert!(Error::ch("q", E::TimedOut).is_retryable());
        assert!(!Error::Config("x".into()).is_retryable());
    }
}
