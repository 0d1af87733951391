//! `/healthz` (the process is alive), `/readyz` (the worker holds its inputs and outputs and is
//! processing) and `/metrics` (Prometheus text) for Kubernetes probes and scraping.
//!
//! Readiness is a flag the worker's main loop sets (`set`/`get`) plus named conditions that
//! other tasks report (the consumer watchdog's `kafka_assignment`, `kafka_progress`): the worker
//! is ready only when the flag is set and every condition holds. `/readyz` answers 200 or 503
//! with a JSON body naming each condition and why it fails, so an operator (or a test) reads the
//! reason instead of guessing it.

use crate::error::RuntimeError;
use crate::shutdown::Shutdown;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// One named readiness condition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    pub ok: bool,
    /// Why it fails (or what it saw when it holds); free text for humans.
    pub detail: String,
}

#[derive(Debug, Default)]
struct Inner {
    flag: AtomicBool,
    checks: Mutex<BTreeMap<String, Check>>,
}

/// Readiness of a worker: the main loop's flag and named conditions reported by other tasks.
/// Clones share the same state.
#[derive(Debug, Clone, Default)]
pub struct Readiness(Arc<Inner>);

/// The `/readyz` body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReadinessReport {
    pub ready: bool,
    pub checks: BTreeMap<String, Check>,
}

impl Readiness {
    /// The main loop's flag: set once connected and consuming, cleared when it stops.
    pub fn set(&self, ready: bool) {
        self.0.flag.store(ready, Ordering::Release);
    }

    /// Ready: the flag is set and every named condition holds.
    pub fn get(&self) -> bool {
        self.0.flag.load(Ordering::Acquire) && self.lock().values().all(|c| c.ok)
    }

    /// Reports the named condition `name` (replacing its previous state).
    pub fn set_check(&self, name: &str, ok: bool, detail: impl Into<String>) {
        let check = Check {
            ok,
            detail: detail.into(),
        };
        self.lock().insert(name.to_owned(), check);
    }

    /// Forgets a named condition (it no longer applies).
    pub fn clear_check(&self, name: &str) {
        self.lock().remove(name);
    }

    /// The named condition `name`, if reported.
    pub fn check(&self, name: &str) -> Option<Check> {
        self.lock().get(name).cloned()
    }

    /// What `/readyz` answers.
    pub fn report(&self) -> ReadinessReport {
        let checks = self.lock().clone();
        let ready = self.0.flag.load(Ordering::Acquire) && checks.values().all(|c| c.ok);
        ReadinessReport { ready, checks }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Check>> {
        // A poisoned lock only means a reporter panicked mid-insert; the map is still usable.
        self.0.checks.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The routes, for embedding into another axum app (ingest's HTTP front door serves them too).
pub fn router(ready: Readiness) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route(
            "/metrics",
            get(|| async { crate::telemetry::metrics_handle().render() }),
        )
        .with_state(ready)
}

async fn readyz(State(ready): State<Readiness>) -> impl IntoResponse {
    let report = ready.report();
    let status = if report.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = serde_json::to_string(&report)
        .unwrap_or_else(|_| format!("{{\"ready\":{}}}", report.ready));
    (status, [(header::CONTENT_TYPE, "application/json")], body)
}

/// Serves the health routes on `addr` until shutdown. An empty `addr` disables the server.
pub async fn serve(addr: &str, ready: Readiness, shutdown: Shutdown) -> Result<(), RuntimeError> {
    if addr.is_empty() {
        return Ok(());
    }
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| RuntimeError::Health {
            addr: addr.to_owned(),
            source,
        })?;
    tracing::info!(%addr, "health server listening");
    axum::serve(listener, router(ready))
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
        .map_err(|source| RuntimeError::Health {
            addr: addr.to_owned(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flag_and_checks_both_decide() {
        let r = Readiness::default();
        assert!(!r.get(), "not ready before the loop says so");
        r.set(true);
        assert!(r.get(), "no conditions: the flag decides");
        r.set_check("kafka_assignment", false, "no partition assigned for 75s");
        assert!(!r.get());
        let report = r.report();
        assert!(!report.ready);
        assert_eq!(
            serde_json::to_value(&report).expect("json"),
            serde_json::json!({"ready": false, "checks": {"kafka_assignment":
                {"ok": false, "detail": "no partition assigned for 75s"}}})
        );
        r.set_check("kafka_assignment", true, "");
        assert!(r.get());
        r.set(false);
        assert!(!r.get(), "a failing flag wins over passing checks");
        r.set(true);
        r.set_check("x", false, "");
        r.clear_check("x");
        assert!(r.get());
        assert_eq!(r.check("kafka_assignment").map(|c| c.ok), Some(true));
    }

    #[tokio::test]
    async fn readyz_answers_json_with_the_reason() {
        let r = Readiness::default();
        r.set(true);
        r.set_check("kafka_progress", false, "t/0: lag 5, no progress for 61s");
        let resp = readyz(State(r.clone())).await.into_response();
        assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
        let body = axum::body::to_bytes(resp.into_body(), 1 << 16)
            .await
            .expect("body");
        let v: serde_json::Value = serde_json::from_slice(&body).expect("json body");
        assert_eq!(v["ready"], false);
        assert_eq!(v["checks"]["kafka_progress"]["ok"], false);
        r.set_check("kafka_progress", true, "");
        let resp = readyz(State(r)).await.into_response();
        assert_eq!(resp.status(), StatusCode::OK);
    }
}
