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

/// Which store errors are transient is decided where the sinks decide it
/// (`worker_runtime::clickhouse` and `worker_runtime::object_store`), so a read and a write of
/// the same store are retried for the same reasons.
impl Retryable for Error {
    fn is_retryable(&self) -> bool {
        match self {
            Error::ClickHouse { source, .. } => worker_runtime::clickhouse::is_retryable(source),
            Error::ObjectStore { source, .. } => worker_runtime::object_store::is_retryable(source),
            _ => false,
        }
    }
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
