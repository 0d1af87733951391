//! Logs, traces and metrics.
//!
//! Logs go to stderr (text or JSON). When an OTLP endpoint is configured, spans are also
//! exported over OTLP/gRPC, so a worker's processing shows up in the same traces as the
//! platform components whose audit events it carries. Metrics use the `metrics` facade with a
//! Prometheus recorder rendered by the health server at `/metrics`.

use crate::error::RuntimeError;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use serde::{Deserialize, Serialize};
use std::sync::OnceLock;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

#[derive(Debug, Clone, clap::Args, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetryArgs {
    /// Log filter in `tracing` syntax, e.g. `info` or `info,rdkafka=warn`.
    #[arg(long, env = "AUDIT_LOG", default_value = "info")]
    pub log_filter: String,
    /// Log line format: `text` or `json`.
    #[arg(long, env = "AUDIT_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,
    /// OTLP/gRPC endpoint for traces (e.g. `http://otel-collector:4317`); empty disables export.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT", default_value = "")]
    pub otlp_endpoint: String,
}

/// Keeps the trace exporter alive; flushes it on drop.
#[derive(Debug)]
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take() {
            if let Err(e) = provider.shutdown() {
                eprintln!("flushing traces at exit failed: {e}");
            }
        }
    }
}

/// Installs the global subscriber and metrics recorder. Call once, from `main`.
pub fn init(
    args: &TelemetryArgs,
    service_name: &'static str,
) -> Result<TelemetryGuard, RuntimeError> {
    let filter = EnvFilter::try_new(&args.log_filter)
        .map_err(|e| RuntimeError::Telemetry(format!("log filter {:?}: {e}", args.log_filter)))?;
    let provider = if args.otlp_endpoint.is_empty() {
        None
    } else {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(args.otlp_endpoint.clone())
            .build()
            .map_err(|e| RuntimeError::Telemetry(format!("OTLP exporter: {e}")))?;
        let resource = opentelemetry_sdk::Resource::builder()
            .with_service_name(service_name)
            .build();
        Some(
            SdkTracerProvider::builder()
                .with_batch_exporter(exporter)
                .with_resource(resource)
                .build(),
        )
    };
    let otel_layer = provider
        .as_ref()
        .map(|p| tracing_opentelemetry::layer().with_tracer(p.tracer(service_name)));
    let registry = tracing_subscriber::registry().with(filter).with(otel_layer);
    let result = if args.log_format == "json" {
        registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_writer(std::io::stderr),
            )
            .try_init()
    } else {
        registry
            .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
            .try_init()
    };
    result.map_err(|e| RuntimeError::Telemetry(format!("installing subscriber: {e}")))?;
    metrics_handle();
    Ok(TelemetryGuard { provider })
}

/// Installs a tracing subscriber for tests (idempotent; honours `RUST_LOG`).
pub fn init_for_tests() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn")),
        )
        .with_test_writer()
        .try_init();
    metrics_handle();
}

/// The process-wide Prometheus recorder, installed on first use. Several workers may run in
/// one process (integration tests), so this must be idempotent.
pub fn metrics_handle() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        // Fails only if another recorder is installed already; then ours just stays unused.
        let _ = metrics::set_global_recorder(recorder);
        handle
    })
}
