//! Ingest: validates what platform components publish on `<prefix>raw` (JSON, or Avro in
//! single-object or Confluent framing), writes normalised `AuditEvent`s (Avro single-object) to
//! `<prefix>validated` keyed by partition key, and dead-letters everything else, untouched, to
//! `<prefix>rejected` with a reason code and the JSON path of the problem.
//!
//! [`validate_raw`] is the one validation entry point; the HTTP front door ([`http`],
//! `--http-addr`) calls it too.

mod config;
pub mod http;
pub mod otlp;
pub mod processor;
pub mod registry;
pub mod validate;

use std::sync::Arc;
use std::time::Duration;

use schemas::framing::CatalogIdResolver;
use worker_runtime::health::{self, Readiness};
use worker_runtime::kafka::liveness::LivenessSettings;
use worker_runtime::kafka::pipeline::{self, PipelineSettings};
use worker_runtime::kafka::{admin, consumer, ConsumerSettings, Producer};
use worker_runtime::shutdown::TaskSet;
use worker_runtime::{RuntimeError, Shutdown};

pub use config::{Config, HttpArgs, OtlpArgs};
pub use processor::{partition_key, IngestProcessor};
pub use registry::{RegistryArgs, RegistryResolver};
pub use validate::{derived_event_id, validate_event, validate_raw, Rejection, ValidationContext};

/// Errors that stop the ingest worker.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("loading the compiled-in Avro schema catalog: {0}")]
    Catalog(#[source] schemas::SchemaError),
    #[error("output topic {topic} is not usable (create the pipeline topics first): {source}")]
    OutputTopic {
        topic: String,
        #[source]
        source: RuntimeError,
    },
    #[error(transparent)]
    Http(#[from] http::HttpError),
    #[error(transparent)]
    Otlp(#[from] otlp::OtlpError),
    #[error(transparent)]
    Registry(#[from] registry::RegistryError),
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
}

/// Runs the worker until `shutdown` fires (then drains, commits and returns) or a fatal error.
pub async fn run(config: Config, shutdown: Shutdown) -> Result<(), Error> {
    let topics = config.kafka.topics();
    // A broken catalog would reject every Avro record; fail at start instead.
    schemas::avro::catalog().map_err(Error::Catalog)?;
    let resolver = Arc::new(CatalogIdResolver::new().map_err(Error::Catalog)?);
    for topic in [&topics.validated, &topics.rejected] {
        admin::partition_count(&config.kafka, topic, shutdown.token())
            .await
            .map_err(|source| Error::OutputTopic {
                topic: topic.clone(),
                source,
            })?;
    }

    let ready = Readiness::default();
    let mut processor = IngestProcessor::new(
        topics.validated.clone(),
        topics.rejected.clone(),
        config.limits(),
        resolver.clone(),
    )
    .with_strict_labels(config.strict_labels);
    if config.registry.enabled() {
        // The compiled-in id table stays the default; with a registry, every Confluent id is
        // the registry's (its ids and the table's would collide).
        let registry = RegistryResolver::connect(&config.registry)?.with_readiness(ready.clone());
        tracing::info!(url = %config.registry.url_for_logs(), "resolving Confluent schema ids through the schema registry");
        processor = processor.with_registry(Arc::new(registry), shutdown.token().clone());
    }
    let processor = Arc::new(processor);
    let producer = Producer::new(&config.kafka, "audit-ingest")?;
    let consumer_settings = ConsumerSettings::new(
        config.group_id.clone(),
        "audit-ingest",
        vec![topics.raw.clone()],
    );
    let (consumer, rebalance) = consumer::subscribe(&config.kafka, &consumer_settings)?;
    let liveness = LivenessSettings::for_consumer(&config.kafka, &consumer_settings);
    tracing::info!(input = %topics.raw, output = %topics.validated, rejected = %topics.rejected,
        group = %config.group_id, strict_labels = config.strict_labels, "ingest starting");

    // The HTTP door is bound before anything runs, so a bad address or token file stops the
    // start instead of a half-working worker.
    let http_door = if config.http.addr.is_empty() {
        None
    } else {
        let door = http_door(&config, &producer, &resolver, &ready)?;
        let addr = config.http.addr.clone();
        let listener = tokio::net::TcpListener::bind(&addr)
            .await
            .map_err(|source| http::HttpError::Bind { addr, source })?;
        Some((listener, door))
    };
    let otlp = if config.otlp.enabled {
        Some(otlp_listeners(&config, &producer).await?)
    } else {
        None
    };
    let mut tasks = TaskSet::new(shutdown.clone());
    if let Some((receiver, grpc, http_listener)) = otlp {
        if let Some(l) = grpc {
            tasks.spawn(
                "otlp-grpc",
                otlp::serve_grpc(l, receiver.clone(), shutdown.clone()),
            );
        }
        if let Some(l) = http_listener {
            tasks.spawn("otlp-http", otlp::serve_http(l, receiver, shutdown.clone()));
        }
    }
    if let Some((listener, door)) = http_door {
        let s = shutdown.clone();
        tasks.spawn("http", http::serve(listener, door, s));
    }
    let health_addr = config.common.health_addr.clone();
    let (r, s) = (ready.clone(), shutdown.clone());
    tasks.spawn(
        "health",
        async move { health::serve(&health_addr, r, s).await },
    );
    let settings = PipelineSettings {
        stage: processor::STAGE,
        max_in_flight: config.max_in_flight.max(1),
        drain_timeout: Duration::from_secs(config.common.shutdown_timeout_secs),
        kafka: config.kafka.clone(),
        dead_letter_scan_records: pipeline::DEFAULT_DEAD_LETTER_SCAN_RECORDS,
    };
    tasks.spawn(
        "pipeline",
        pipeline::run_with_liveness(
            consumer, rebalance, producer, processor, settings, liveness, ready, shutdown,
        ),
    );
    tasks
        .join(Duration::from_secs(config.common.shutdown_timeout_secs))
        .await?;
    Ok(())
}

type OtlpListeners = (
    Arc<otlp::OtlpReceiver>,
    Option<tokio::net::TcpListener>,
    Option<tokio::net::TcpListener>,
);

/// The OTLP receiver's state and its bound listeners (gRPC, HTTP; an empty address = none).
async fn otlp_listeners(config: &Config, producer: &Producer) -> Result<OtlpListeners, Error> {
    let o = &config.otlp;
    let tokens = if o.require_token {
        let t = http::TokenTable::load(config.http.tokens_file.as_deref(), &config.http.tokens)?;
        if t.is_empty() {
            return Err(http::HttpError::NoTokens.into());
        }
        Some(t)
    } else {
        None
    };
    let receiver = Arc::new(otlp::OtlpReceiver {
        producer: producer.clone(),
        validated_topic: config.kafka.topics().validated,
        limits: config.limits(),
        max_request_bytes: o.max_request_bytes,
        tokens,
    });
    let mut bound = [None, None];
    for (slot, (transport, addr)) in bound
        .iter_mut()
        .zip([("gRPC", &o.grpc_addr), ("HTTP", &o.http_addr)])
    {
        if addr.is_empty() {
            continue;
        }
        let l = tokio::net::TcpListener::bind(addr.as_str())
            .await
            .map_err(|source| otlp::OtlpError::Bind {
                transport,
                addr: addr.clone(),
                source,
            })?;
        tracing::info!(%addr, transport, "OTLP receiver listening");
        *slot = Some(l);
    }
    let [grpc, http] = bound;
    Ok((receiver, grpc, http))
}

/// The HTTP door's state: validation as for Kafka input, its own clone of the producer.
fn http_door(
    config: &Config,
    producer: &Producer,
    resolver: &Arc<CatalogIdResolver>,
    ready: &Readiness,
) -> Result<Arc<http::Door>, http::HttpError> {
    let h = &config.http;
    let tokens = http::TokenTable::load(h.tokens_file.as_deref(), &h.tokens)?;
    if tokens.is_empty() {
        return Err(http::HttpError::NoTokens);
    }
    let resolver: Arc<dyn schemas::framing::SchemaIdResolver> = resolver.clone();
    Ok(Arc::new(http::Door {
        producer: producer.clone(),
        validated_topic: config.kafka.topics().validated,
        limits: config.limits(),
        strict_labels: config.strict_labels,
        resolver,
        tokens,
        limiter: http::RateLimiter::new(h.rate_per_sec, h.rate_burst),
        door_limits: http::DoorLimits {
            max_body_bytes: h.max_body_bytes,
            max_batch: h.max_batch.max(1),
            body_timeout: std::time::Duration::from_secs(h.body_timeout_secs),
        },
        ready: ready.clone(),
    }))
}

#[cfg(test)]
mod tests;
