//! Store reads with a small bounded retry (`worker_runtime::retry`): a transient failure
//! (network, timeout, 5xx, server overload) is retried a few times with backoff before the run
//! gives up with exit 3; anything about the request itself (unknown table, bad credentials,
//! missing object) fails at once.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};

use worker_runtime::retry::{retry, RetryPolicy, Retryable};
use worker_runtime::CancellationToken;

use crate::error::Error;

/// Retry settings shared by every read of one command.
#[derive(Debug, Clone)]
pub struct Reads {
    policy: RetryPolicy,
    /// Never cancelled: an interactive run is stopped with Ctrl-C, which ends the process.
    cancel: CancellationToken,
}

impl Default for Reads {
    fn default() -> Self {
        Self::new(5)
    }
}

impl Reads {
    /// At most `attempts` tries per read (at least one), 200 ms doubling up to 5 s between them.
    pub fn new(attempts: u16) -> Self {
        Self::with_policy(RetryPolicy {
            min_delay_ms: 200,
            max_delay_ms: 5_000,
            max_attempts: usize::from(attempts.max(1)),
        })
    }

    pub fn with_policy(policy: RetryPolicy) -> Self {
        let mut policy = policy;
        // 0 means "forever" in the workers' policy; a command must end.
        policy.max_attempts = policy.max_attempts.max(1);
        Self {
            policy,
            cancel: CancellationToken::new(),
        }
    }

    pub fn attempts(&self) -> usize {
        self.policy.max_attempts
    }

    /// Run `op` (one complete, repeatable read) until it succeeds, fails for good, or the
    /// attempts run out. Each retried failure is a warning on stderr (there is no log
    /// subscriber in the CLI).
    pub async fn run<T, F, Fut>(&self, what: &str, mut op: F) -> Result<T, Error>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, Error>>,
    {
        let attempt = AtomicUsize::new(0);
        let max = self.policy.max_attempts;
        retry(what, &self.policy, &self.cancel, || {
            let n = attempt.fetch_add(1, Ordering::Relaxed) + 1;
            let fut = op();
            async move {
                let r = fut.await;
                if let Err(e) = &r {
                    if e.is_retryable() && n < max {
                        eprintln!("auditctl: warning: {e} (attempt {n} of {max}; retrying)");
                    }
                }
                r
            }
        })
        .await
        .map_err(|e| e.into_inner())
    }
}

impl Retryable for Error {
    fn is_retryable(&self) -> bool {
        match self {
            Error::ClickHouse { source, .. } => is_retryable_clickhouse(source),
            Error::ObjectStore { source, .. } => is_retryable_object_store(source),
            _ => false,
        }
    }
}

/// ClickHouse server error codes of transient conditions (the same list as the ClickHouse
/// sink's: overload, timeouts, network trouble between servers, a restart in progress).
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
    285,  // TOO_FEW_LIVE_REPLICAS
    394,  // QUERY_WAS_CANCELLED
    425,  // SYSTEM_ERROR
    439,  // CANNOT_SCHEDULE_TASK
    999,  // KEEPER_EXCEPTION
    1000, // POCO_EXCEPTION
];

/// Network failures, timeouts and transient server codes are retried; a server exception
/// about the query (unknown table or column, syntax, authentication) is not. A response
/// without a ClickHouse exception (a proxy's 502/503 page) is retried.
pub fn is_retryable_clickhouse(e: &clickhouse::error::Error) -> bool {
    use clickhouse::error::Error as E;
    match e {
        E::Network(_) | E::TimedOut => true,
        E::BadResponse(text) => {
            server_error_code(text).is_none_or(|c| RETRYABLE_CODES.contains(&c))
        }
        _ => false,
    }
}

/// The `Code: N` of a ClickHouse exception text (`Code: 60, e.displayText() = …` on old
/// servers, `Code: 60. DB::Exception…` on new ones).
fn server_error_code(text: &str) -> Option<u32> {
    let i = text.find("Code: ")?;
    let digits: String = text[i + "Code: ".len()..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

/// `Generic` covers 5xx, timeouts and connection errors (and the local backend's I/O errors):
/// retried, unless the message carries a 4xx status other than 408/429 (a request the server
/// will never accept, e.g. 403 for wrong credentials). Everything else (NotFound,
/// PermissionDenied, …) is an answer, not a failure. Same rule as the archive sink.
pub fn is_retryable_object_store(e: &object_store::Error) -> bool {
    match e {
        object_store::Error::Generic { .. } => !is_permanent_client_error(&e.to_string()),
        object_store::Error::JoinError { .. } => true,
        _ => false,
    }
}

/// The S3 client's `RetryError` is not a public type, so its status is read from the message
/// (`Server returned non-2xx status code: 403 Forbidden`).
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

    fn generic(msg: &str) -> object_store::Error {
        object_store::Error::Generic {
            store: "S3",
            source: msg.to_owned().into(),
        }
    }

    fn os(e: object_store::Error) -> Error {
        Error::ObjectStore {
            doing: "t".into(),
            source: e,
        }
    }

    fn ch(e: clickhouse::error::Error) -> Error {
        Error::ClickHouse {
            doing: "t".into(),
            source: e,
        }
    }

    #[test]
    fn classification() {
        assert!(os(generic(
            "Server returned non-2xx status code: 503 Slow Down"
        ))
        .is_retryable());
        assert!(os(generic("error sending request: connection refused")).is_retryable());
        assert!(!os(generic(
            "Server returned non-2xx status code: 403 Forbidden"
        ))
        .is_retryable());
        assert!(!os(object_store::Error::NotFound {
            path: "k".into(),
            source: "x".to_owned().into(),
        })
        .is_retryable());
        assert!(ch(clickhouse::error::Error::TimedOut).is_retryable());
        assert!(ch(clickhouse::error::Error::BadResponse(
            "Code: 202, e.displayText() = DB::Exception: Too many simultaneous queries".into()
        ))
        .is_retryable());
        assert!(!ch(clickhouse::error::Error::BadResponse(
            "Code: 60, e.displayText() = DB::Exception: Table x.audit_events doesn't exist.".into()
        ))
        .is_retryable());
        assert!(ch(clickhouse::error::Error::BadResponse(
            "502 Bad Gateway".into()
        ))
        .is_retryable());
        assert!(!Error::Usage("x".into()).is_retryable());
    }

    #[tokio::test]
    async fn transient_errors_are_retried_a_bounded_number_of_times() {
        let reads = Reads::with_policy(RetryPolicy {
            min_delay_ms: 1,
            max_delay_ms: 2,
            max_attempts: 3,
        });
        let calls = AtomicUsize::new(0);
        let r: Result<(), Error> = reads
            .run("t", || async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err(ch(clickhouse::error::Error::TimedOut))
            })
            .await;
        assert!(matches!(r, Err(Error::ClickHouse { .. })));
        assert_eq!(calls.load(Ordering::SeqCst), 3);

        let calls = AtomicUsize::new(0);
        let r = reads
            .run("t", || async {
                if calls.fetch_add(1, Ordering::SeqCst) == 0 {
                    Err(ch(clickhouse::error::Error::TimedOut))
                } else {
                    Ok(7)
                }
            })
            .await;
        assert_eq!(r.ok(), Some(7));

        let calls = AtomicUsize::new(0);
        let r: Result<(), Error> = reads
            .run("t", || async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err(Error::Usage("no".into()))
            })
            .await;
        assert!(r.is_err());
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }
}
