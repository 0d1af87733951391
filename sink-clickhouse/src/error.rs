//! The sink's errors, and which ClickHouse failures are worth retrying.

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
            Error::ClickHouse { source, .. } => is_retryable_clickhouse(source),
            _ => false,
        }
    }
}

/// ClickHouse server error codes that describe a transient condition (overload, timeouts,
/// network trouble between servers, too many parts while merges catch up, …).
const RETRYABLE_CODES: &[u32] = &[
    3,    // UNEXPECTED_END_OF_FILE (connection cut mid-request)
    159,  // TIMEOUT_EXCEEDED
    164,  // READONLY (e.g. during a restart / replica recovery)
    202,  // TOO_MANY_SIMULTANEOUS_QUERIES
    203,  // NO_FREE_CONNECTION
    209,  // SOCKET_TIMEOUT
    210,  // NETWORK_ERROR
    236,  // ABORTED
    241,  // MEMORY_LIMIT_EXCEEDED
    242,  // TABLE_IS_READ_ONLY
    252,  // TOO_MANY_PARTS
    285,  // TOO_FEW_LIVE_REPLICAS
    319,  // UNKNOWN_STATUS_OF_INSERT
    394,  // QUERY_WAS_CANCELLED
    425,  // SYSTEM_ERROR
    439,  // CANNOT_SCHEDULE_TASK
    999,  // KEEPER_EXCEPTION
    1000, // POCO_EXCEPTION
];

/// Network failures, timeouts and the server's transient error codes are retryable; anything
/// about the request itself (unknown table or column, syntax, type mismatch, auth) is not: a
/// retry would fail the same way, so the worker stops without storing offsets instead.
pub fn is_retryable_clickhouse(e: &clickhouse::error::Error) -> bool {
    use clickhouse::error::Error as E;
    match e {
        E::Network(_) | E::TimedOut => true,
        E::BadResponse(text) => match server_error_code(text) {
            Some(code) => RETRYABLE_CODES.contains(&code),
            // No ClickHouse exception in the body: a proxy/load balancer error page (502, 503…).
            None => true,
        },
        _ => false,
    }
}

/// The `Code: N` of a ClickHouse exception text (`Code: 60, e.displayText() = DB::Exception…`
/// on old servers, `Code: 60. DB::Exception…` on new ones).
pub fn server_error_code(text: &str) -> Option<u32> {
    let rest = &text[text.find("Code: ")? + "Code: ".len()..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use clickhouse::error::Error as E;

    #[test]
    fn classifies_server_errors() {
        let old = "Code: 60, e.displayText() = DB::Exception: Table audit.x doesn't exist., e.what() = DB::Exception";
        assert_eq!(server_error_code(old), Some(60));
        assert!(!is_retryable_clickhouse(&E::BadResponse(old.into())));
        let new = "Code: 252. DB::Exception: Too many parts (300). (TOO_MANY_PARTS)";
        assert!(is_retryable_clickhouse(&E::BadResponse(new.into())));
        assert!(is_retryable_clickhouse(&E::BadResponse(
            "502 Bad Gateway".into()
        )));
        assert!(is_retryable_clickhouse(&E::TimedOut));
        assert!(!is_retryable_clickhouse(&E::NotEnoughData));
        let syntax = "Code: 62, e.displayText() = DB::Exception: Syntax error";
        assert!(!Error::ch("q", E::BadResponse(syntax.into())).is_retryable());
        assert!(!Error::Config("x".into()).is_retryable());
    }
}
