//! The one retry helper: exponential backoff with jitter, only for errors the caller declares
//! retryable, stopped by shutdown. Every external call that may fail transiently (ClickHouse,
//! S3, Kafka admin) goes through it, so retry behaviour is the same everywhere.

use crate::health::Readiness;
use backon::{BackoffBuilder, ExponentialBuilder};
use serde::{Deserialize, Serialize};
use std::fmt::Display;
use std::future::Future;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Whether an error is worth retrying (the caller's classification).
pub trait Retryable {
    fn is_retryable(&self) -> bool;
}

#[derive(Debug, Clone, Copy, clap::Args, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryPolicy {
    /// First retry delay (milliseconds); doubles each attempt, with jitter.
    #[arg(
        long = "retry-min-delay-ms",
        env = "AUDIT_RETRY_MIN_DELAY_MS",
        default_value_t = 100
    )]
    pub min_delay_ms: u64,
    /// Longest delay between two attempts (milliseconds).
    #[arg(
        long = "retry-max-delay-ms",
        env = "AUDIT_RETRY_MAX_DELAY_MS",
        default_value_t = 10_000
    )]
    pub max_delay_ms: u64,
    /// Attempts before giving up (the worker then stops, without storing offsets, so the
    /// input is redelivered after restart). 0 = retry until shutdown.
    #[arg(
        long = "retry-max-attempts",
        env = "AUDIT_RETRY_MAX_ATTEMPTS",
        default_value_t = 0
    )]
    pub max_attempts: usize,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            min_delay_ms: 100,
            max_delay_ms: 10_000,
            max_attempts: 0,
        }
    }
}

/// Why [`retry`] gave up.
#[derive(Debug)]
pub enum RetryError<E> {
    /// A non-retryable error, or the attempts ran out: the last error.
    Failed(E),
    /// Shutdown fired while waiting to retry; the last error is kept for the log.
    Cancelled(E),
}

impl<E: Display> Display for RetryError<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RetryError::Failed(e) => write!(f, "{e}"),
            RetryError::Cancelled(e) => write!(f, "cancelled by shutdown while retrying: {e}"),
        }
    }
}

impl<E: std::error::Error + 'static> std::error::Error for RetryError<E> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            RetryError::Failed(e) | RetryError::Cancelled(e) => Some(e),
        }
    }
}

impl<E> RetryError<E> {
    pub fn into_inner(self) -> E {
        match self {
            RetryError::Failed(e) | RetryError::Cancelled(e) => e,
        }
    }
}

/// Runs `op` until it succeeds, fails with a non-retryable error, runs out of attempts, or
/// `cancel` fires. `what` names the operation in logs.
pub async fn retry<T, E, F, Fut>(
    what: &str,
    policy: &RetryPolicy,
    cancel: &CancellationToken,
    op: F,
) -> Result<T, RetryError<E>>
where
    E: Retryable + Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    retry_reporting(what, policy, cancel, None, op).await
}

/// A dependency's named readiness condition (e.g. `clickhouse`), kept by the retry loops that
/// call it: false from the first failed attempt, true again at the next success. A worker
/// stuck retrying its store is then not ready, and `/readyz` says which store and why, instead
/// of answering 200 until a stall timeout notices.
#[derive(Debug, Clone)]
pub struct DependencyCheck {
    ready: Readiness,
    name: &'static str,
}

impl DependencyCheck {
    /// Reports healthy until a call fails with a retryable error.
    pub fn new(ready: Readiness, name: &'static str) -> Self {
        ready.set_check(name, true, "no failed call");
        DependencyCheck { ready, name }
    }

    fn failing(&self, what: &str, attempt: usize, err: &dyn Display) {
        self.ready.set_check(
            self.name,
            false,
            format!("{what}: attempt {attempt} failed, retrying: {err}"),
        );
    }

    fn succeeded(&self, what: &str) {
        // Rewritten only when it was failing: the happy path just reads it.
        if self.ready.check(self.name).is_some_and(|c| !c.ok) {
            self.ready.set_check(
                self.name,
                true,
                format!("{what}: the dependency answers again"),
            );
        }
    }
}

/// [`retry`], keeping `check` (when given) up to date with the outcome of each attempt.
pub async fn retry_reporting<T, E, F, Fut>(
    what: &str,
    policy: &RetryPolicy,
    cancel: &CancellationToken,
    check: Option<&DependencyCheck>,
    mut op: F,
) -> Result<T, RetryError<E>>
where
    E: Retryable + Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut builder = ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(policy.min_delay_ms))
        .with_max_delay(Duration::from_millis(
            policy.max_delay_ms.max(policy.min_delay_ms),
        ))
        .with_jitter();
    builder = if policy.max_attempts == 0 {
        builder.without_max_times()
    } else {
        builder.with_max_times(policy.max_attempts.saturating_sub(1))
    };
    let mut delays = builder.build();
    let mut attempt = 1usize;
    loop {
        let err = match op().await {
            Ok(v) => {
                if let Some(c) = check {
                    c.succeeded(what);
                }
                return Ok(v);
            }
            Err(e) => e,
        };
        if !err.is_retryable() {
            // Not the dependency failing but an answer (e.g. "already exists", "no such
            // schema") for the caller: the dependency is up.
            if let Some(c) = check {
                c.succeeded(what);
            }
            return Err(RetryError::Failed(err));
        }
        if let Some(c) = check {
            c.failing(what, attempt, &err);
        }
        let Some(delay) = delays.next() else {
            tracing::error!(operation = what, attempt, error = %err, "giving up after retries");
            return Err(RetryError::Failed(err));
        };
        tracing::warn!(operation = what, attempt, ?delay, error = %err, "retrying");
        metrics::counter!("audit_retries_total", "operation" => what.to_owned()).increment(1);
        tokio::select! {
            _ = cancel.cancelled() => return Err(RetryError::Cancelled(err)),
            _ = tokio::time::sleep(delay) => {}
        }
        attempt += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[derive(Debug)]
    struct E(bool);
    impl Display for E {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "e({})", self.0)
        }
    }
    impl Retryable for E {
        fn is_retryable(&self) -> bool {
            self.0
        }
    }

    fn fast(max_attempts: usize) -> RetryPolicy {
        RetryPolicy {
            min_delay_ms: 1,
            max_delay_ms: 2,
            max_attempts,
        }
    }

    #[tokio::test]
    async fn retries_retryable_errors_until_success() {
        let calls = AtomicUsize::new(0);
        let out = retry("t", &fast(0), &CancellationToken::new(), || async {
            if calls.fetch_add(1, Ordering::SeqCst) < 3 {
                Err(E(true))
            } else {
                Ok(42)
            }
        })
        .await
        .expect("succeeds");
        assert_eq!(out, 42);
        assert_eq!(calls.load(Ordering::SeqCst), 4);
    }

    #[tokio::test]
    async fn a_dependency_is_not_ready_while_its_calls_fail_and_ready_after_a_success() {
        let ready = Readiness::default();
        ready.set(true);
        let check = DependencyCheck::new(ready.clone(), "store");
        assert!(ready.get());
        let calls = AtomicUsize::new(0);
        let seen_while_failing = std::sync::Mutex::new(Vec::new());
        retry_reporting(
            "store put",
            &fast(0),
            &CancellationToken::new(),
            Some(&check),
            || {
                let n = calls.fetch_add(1, Ordering::SeqCst);
                seen_while_failing
                    .lock()
                    .expect("lock")
                    .push((n, ready.get()));
                async move {
                    if n < 2 {
                        Err(E(true))
                    } else {
                        Ok(())
                    }
                }
            },
        )
        .await
        .expect("succeeds");
        // Attempt 0 ran while healthy; attempts 1 and 2 ran after a failure was reported.
        assert_eq!(
            *seen_while_failing.lock().expect("lock"),
            vec![(0, true), (1, false), (2, false)]
        );
        let c = ready.check("store").expect("reported");
        assert!(
            c.ok && ready.get(),
            "not ready again after a success: {c:?}"
        );
    }

    #[tokio::test]
    async fn the_failing_dependency_is_named_with_its_error() {
        let ready = Readiness::default();
        ready.set(true);
        let check = DependencyCheck::new(ready.clone(), "clickhouse");
        let _ = retry_reporting(
            "clickhouse insert",
            &fast(2),
            &CancellationToken::new(),
            Some(&check),
            || async { Err::<(), _>(E(true)) },
        )
        .await;
        let c = ready.check("clickhouse").expect("reported");
        assert!(!c.ok && !ready.get());
        assert!(
            c.detail.contains("clickhouse insert") && c.detail.contains("e(true)"),
            "{c:?}"
        );
    }

    #[tokio::test]
    async fn a_permanent_answer_after_an_outage_means_the_dependency_is_back() {
        let ready = Readiness::default();
        ready.set(true);
        let check = DependencyCheck::new(ready.clone(), "registry");
        let calls = AtomicUsize::new(0);
        let err = retry_reporting(
            "registry fetch",
            &fast(0),
            &CancellationToken::new(),
            Some(&check),
            || {
                let n = calls.fetch_add(1, Ordering::SeqCst);
                // Unreachable twice, then "no such id": an answer, so the registry is up.
                async move { Err::<(), _>(E(n < 2)) }
            },
        )
        .await
        .expect_err("the permanent error is the caller's");
        assert!(matches!(err, RetryError::Failed(E(false))));
        let c = ready.check("registry").expect("reported");
        assert!(c.ok && ready.get(), "still failing after an answer: {c:?}");
    }

    #[tokio::test]
    async fn does_not_retry_permanent_errors() {
        let calls = AtomicUsize::new(0);
        let err = retry("t", &fast(0), &CancellationToken::new(), || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err::<(), _>(E(false))
        })
        .await
        .expect_err("fails");
        assert!(matches!(err, RetryError::Failed(E(false))));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn stops_after_max_attempts() {
        let calls = AtomicUsize::new(0);
        let err = retry("t", &fast(3), &CancellationToken::new(), || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err::<(), _>(E(true))
        })
        .await
        .expect_err("fails");
        assert!(matches!(err, RetryError::Failed(E(true))));
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn shutdown_interrupts_the_wait() {
        let cancel = CancellationToken::new();
        cancel.cancel();
        let policy = RetryPolicy {
            min_delay_ms: 60_000,
            max_delay_ms: 60_000,
            max_attempts: 0,
        };
        let err = retry("t", &policy, &cancel, || async { Err::<(), _>(E(true)) })
            .await
            .expect_err("cancelled");
        assert!(matches!(err, RetryError::Cancelled(_)));
    }
}
