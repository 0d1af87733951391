//! One cancellation token per worker, signals, and named tasks that stop together.
//!
//! The first SIGTERM/SIGINT cancels the token: loops stop taking input, drain what is in
//! flight, store and commit offsets, and return. A second signal exits the process at once
//! (exit code 130), for an operator who cannot wait. A task that fails cancels the token too,
//! so a worker never keeps running half alive (e.g. consuming while its producer task is dead).

use crate::error::RuntimeError;
use std::fmt::Display;
use std::future::Future;
use std::time::Duration;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// The worker's shutdown signal. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Shutdown {
    token: CancellationToken,
}

impl Shutdown {
    pub fn new() -> Self {
        Self::default()
    }

    /// A shutdown that fires on the first SIGTERM/SIGINT; the second one exits the process.
    /// Must be called inside a tokio runtime.
    pub fn from_signals() -> Self {
        let shutdown = Self::new();
        let token = shutdown.token.clone();
        tokio::spawn(async move {
            wait_for_signal().await;
            tracing::info!("shutdown requested: draining in-flight work and committing offsets");
            token.cancel();
            wait_for_signal().await;
            tracing::warn!("second signal: exiting now without draining");
            std::process::exit(130);
        });
        shutdown
    }

    pub fn token(&self) -> &CancellationToken {
        &self.token
    }

    pub fn trigger(&self) {
        self.token.cancel();
    }

    pub fn is_triggered(&self) -> bool {
        self.token.is_cancelled()
    }

    pub async fn cancelled(&self) {
        self.token.cancelled().await
    }

    /// A child that is cancelled with this one but can also be cancelled on its own.
    pub fn child(&self) -> Shutdown {
        Shutdown {
            token: self.token.child_token(),
        }
    }
}

impl From<CancellationToken> for Shutdown {
    fn from(token: CancellationToken) -> Self {
        Shutdown { token }
    }
}

#[cfg(unix)]
async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGTERM; only Ctrl-C will stop the worker");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

#[cfg(not(unix))]
async fn wait_for_signal() {
    let _ = tokio::signal::ctrl_c().await;
}

/// Named tasks of one worker. If any task fails or panics, the shutdown is triggered so the
/// others wind down; [`TaskSet::join`] then reports the first failure.
#[derive(Debug)]
pub struct TaskSet {
    set: JoinSet<(String, Result<(), String>)>,
    shutdown: Shutdown,
}

impl TaskSet {
    pub fn new(shutdown: Shutdown) -> Self {
        TaskSet {
            set: JoinSet::new(),
            shutdown,
        }
    }

    pub fn spawn<F, E>(&mut self, name: impl Into<String>, fut: F)
    where
        F: Future<Output = Result<(), E>> + Send + 'static,
        E: Display,
    {
        let name = name.into();
        let task_name = name.clone();
        self.set.spawn(async move {
            let result = fut.await.map_err(|e| format!("{e:#}"));
            (task_name, result)
        });
        tracing::debug!(task = %name, "task started");
    }

    /// Waits for every task. After the shutdown fires (signal or a failed task), the rest get
    /// `drain` to finish before they are aborted.
    pub async fn join(mut self, drain: Duration) -> Result<(), RuntimeError> {
        let mut first_error: Option<RuntimeError> = None;
        loop {
            let next = if self.shutdown.is_triggered() {
                match tokio::time::timeout(drain, self.set.join_next()).await {
                    Ok(next) => next,
                    Err(_) => {
                        self.set.abort_all();
                        return Err(first_error.unwrap_or(RuntimeError::ShutdownTimeout(drain)));
                    }
                }
            } else {
                tokio::select! {
                    next = self.set.join_next() => next,
                    _ = self.shutdown.cancelled() => continue,
                }
            };
            let Some(joined) = next else { break };
            let failure = match joined {
                Ok((name, Ok(()))) => {
                    tracing::debug!(task = %name, "task finished");
                    None
                }
                Ok((name, Err(message))) => {
                    tracing::error!(task = %name, error = %message, "task failed; stopping the worker");
                    Some(RuntimeError::Task {
                        task: name,
                        message,
                    })
                }
                Err(e) if e.is_panic() => {
                    tracing::error!("a task panicked; stopping the worker");
                    Some(RuntimeError::TaskPanicked {
                        task: format!("{:?}", e.id()),
                    })
                }
                Err(_) => None, // aborted by us
            };
            if let Some(err) = failure {
                self.shutdown.trigger();
                first_error.get_or_insert(err);
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_failing_task_stops_the_others() {
        let shutdown = Shutdown::new();
        let mut tasks = TaskSet::new(shutdown.clone());
        let s = shutdown.clone();
        tasks.spawn("long-running", async move {
            s.cancelled().await;
            Ok::<_, String>(())
        });
        tasks.spawn("failing", async { Err::<(), _>("boom".to_string()) });
        let err = tasks
            .join(Duration::from_secs(5))
            .await
            .expect_err("must fail");
        assert!(
            matches!(err, RuntimeError::Task { ref task, .. } if task == "failing"),
            "{err}"
        );
        assert!(shutdown.is_triggered());
    }

    #[tokio::test]
    async fn a_task_that_ignores_shutdown_is_aborted_after_the_drain_bound() {
        let shutdown = Shutdown::new();
        let mut tasks = TaskSet::new(shutdown.clone());
        tasks.spawn("stuck", async {
            std::future::pending::<()>().await;
            Ok::<_, String>(())
        });
        shutdown.trigger();
        let err = tasks
            .join(Duration::from_millis(50))
            .await
            .expect_err("must time out");
        assert!(matches!(err, RuntimeError::ShutdownTimeout(_)), "{err}");
    }

    #[tokio::test]
    async fn clean_shutdown_is_ok() {
        let shutdown = Shutdown::new();
        let mut tasks = TaskSet::new(shutdown.clone());
        for i in 0..3 {
            let s = shutdown.clone();
            tasks.spawn(format!("t{i}"), async move {
                s.cancelled().await;
                Ok::<_, String>(())
            });
        }
        shutdown.trigger();
        tasks.join(Duration::from_secs(5)).await.expect("clean");
    }
}
