//! Logs, traces and metrics.
//!
//! Logs go to stderr (text or JSON). When an OTLP endpoint is configured, spans are also
//! exported over OTLP/gRPC, so a worker's processing shows up in the same traces as the
//! platform components whose audit events it carries. Metrics use the `metrics` facade with a
//! Prometheus recorder rendered by the health server at `/metrics`.

use crate::error::RuntimeError;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
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
            crate::kafka::trace_context::set_enabled(false);
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
        Some(install_tracer_provider(&args.otlp_endpoint, service_name)?)
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

/// Builds an OTLP/gRPC span exporter to `endpoint` and a batching tracer provider around it,
/// installs it as the global provider (the one [`crate::kafka::trace_context`] makes the
/// record spans with) and turns record spans on. The sampler is the SDK's default
/// configuration, which reads `OTEL_TRACES_SAMPLER` and `OTEL_TRACES_SAMPLER_ARG` (always_on,
/// always_off, traceidratio, parentbased_* — parent-based always-on when unset).
///
/// [`init`] calls it when `OTEL_EXPORTER_OTLP_ENDPOINT` is set; a test that runs several
/// workers in one process calls it once for all of them (the global provider is process-wide;
/// each worker's spans carry its name as instrumentation scope). Must run inside a Tokio
/// runtime (the gRPC channel). Shut the returned provider down to flush.
pub fn install_tracer_provider(
    endpoint: &str,
    service_name: &'static str,
) -> Result<SdkTracerProvider, RuntimeError> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint.to_owned())
        .build()
        .map_err(|e| RuntimeError::Telemetry(format!("OTLP exporter: {e}")))?;
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(service_name)
        .build();
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build();
    opentelemetry::global::set_tracer_provider(provider.clone());
    crate::kafka::trace_context::set_parent_decides(
        crate::kafka::trace_context::sampler_is_parent_based(
            std::env::var("OTEL_TRACES_SAMPLER").ok().as_deref(),
        ),
    );
    crate::kafka::trace_context::set_enabled(true);
    Ok(provider)
}

/// Undoes [`install_tracer_provider`]: record spans off, a no-op global provider, and
/// `provider` flushed and shut down.
pub fn uninstall_tracer_provider(provider: SdkTracerProvider) -> Result<(), RuntimeError> {
    crate::kafka::trace_context::set_enabled(false);
    opentelemetry::global::set_tracer_provider(
        opentelemetry::trace::noop::NoopTracerProvider::new(),
    );
    provider
        .shutdown()
        .map_err(|e| RuntimeError::Telemetry(format!("flushing traces: {e}")))
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
        let recorder = prometheus_builder().build_recorder();
        let handle = recorder.handle();
        // Fails only if another recorder is installed already; then ours just stays unused.
        let _ = metrics::set_global_recorder(recorder);
        handle
    })
}

/// Histogram buckets (Prometheus `_bucket` series, so dashboards can aggregate quantiles over
/// instances): latencies in seconds, batch sizes in records. Other histograms stay summaries.
fn prometheus_builder() -> PrometheusBuilder {
    const SECONDS: &[f64] = &[
        0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0,
        3600.0,
    ];
    const RECORDS: &[f64] = &[
        1.0, 10.0, 50.0, 100.0, 500.0, 1000.0, 5000.0, 10000.0, 50000.0,
    ];
    let builder = PrometheusBuilder::new();
    let with = |b: PrometheusBuilder, m: Matcher, v: &[f64]| {
        // Fails only for an empty bucket list, which these are not.
        match b.set_buckets_for_metric(m, v) {
            Ok(b) => b,
            Err(_) => PrometheusBuilder::new(),
        }
    };
    let builder = with(builder, Matcher::Suffix("_seconds".into()), SECONDS);
    with(builder, Matcher::Suffix("_records".into()), RECORDS)
}

/// Name of the end-to-end latency histogram: from the event's time, and from its receive
/// time, to stored (labels `sink`, `from`).
pub const END_TO_END_LATENCY: &str = "audit_end_to_end_latency_seconds";

/// The end-to-end latency histograms ([`END_TO_END_LATENCY`]) of one sink, looked up once: a
/// sink records every stored event, and a `histogram!` per event built its labels and searched
/// the registry for them (4% of sink-clickhouse's samples under `perf`).
#[derive(Clone)]
pub struct StoredLatency {
    from_event_time: metrics::Histogram,
    from_receive_time: metrics::Histogram,
}

impl StoredLatency {
    pub fn new(sink: &'static str) -> Self {
        StoredLatency {
            from_event_time: metrics::histogram!(END_TO_END_LATENCY, "sink" => sink, "from" => "event_time"),
            from_receive_time: metrics::histogram!(END_TO_END_LATENCY, "sink" => sink, "from" => "receive_time"),
        }
    }

    /// Records one stored event's latency at `now_us`. Times in microseconds since the epoch; a
    /// time in the future (clock skew) counts as zero.
    pub fn record(&self, event_time_us: i64, receive_time_us: i64, now_us: i64) {
        let secs = |from: i64| (now_us.saturating_sub(from)).max(0) as f64 / 1e6;
        self.from_event_time.record(secs(event_time_us));
        self.from_receive_time.record(secs(receive_time_us));
    }
}

impl std::fmt::Debug for StoredLatency {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredLatency").finish_non_exhaustive()
    }
}

/// Microseconds since the Unix epoch, by the wall clock (0 before 1970).
pub fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod stored_latency_tests {
    use super::*;

    #[test]
    fn each_stored_event_is_counted_once_per_clock_with_skew_as_zero() {
        let recorder = prometheus_builder().build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            let latency = StoredLatency::new("test_sink");
            let now = 10_000_000;
            // 2 s since the event, 0.5 s since it was received.
            latency.record(now - 2_000_000, now - 500_000, now);
            // Both in the future: zero.
            latency.record(now + 5_000_000, now + 1, now);
        });
        let text = handle.render();
        let series = |from: &str, suffix: &str| {
            let key =
                format!("{END_TO_END_LATENCY}_{suffix}{{sink=\"test_sink\",from=\"{from}\"}} ");
            text.lines()
                .find_map(|l| l.strip_prefix(key.as_str()))
                .unwrap_or_else(|| panic!("no {key} in:\n{text}"))
                .to_owned()
        };
        assert_eq!(series("event_time", "count"), "2");
        assert_eq!(series("event_time", "sum"), "2");
        assert_eq!(series("receive_time", "count"), "2");
        assert_eq!(series("receive_time", "sum"), "0.5");
    }
}
