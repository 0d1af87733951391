//! `/healthz` (the process is alive), `/readyz` (the worker holds its inputs and outputs and is
//! processing) and `/metrics` (Prometheus text) for Kubernetes probes and scraping.

use crate::error::RuntimeError;
use crate::shutdown::Shutdown;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Readiness flag a worker flips once it is connected and consuming.
#[derive(Debug, Clone, Default)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    pub fn set(&self, ready: bool) {
        self.0.store(ready, Ordering::Release);
    }
    pub fn get(&self) -> bool {
        self.0.load(Ordering::Acquire)
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

async fn readyz(State(ready): State<Readiness>) -> (StatusCode, &'static str) {
    if ready.get() {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready")
    }
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
