//! Ingest: validates what platform components publish on `<prefix>raw` (JSON, or Avro in
//! single-object or Confluent framing), writes normalised `AuditEvent`s (Avro single-object) to
//! `<prefix>validated` keyed by partition key, and dead-letters everything else, untouched, to
//! `<prefix>rejected` with a reason code and the JSON path of the problem.
//!
//! [`validate_raw`] is the one validation entry point; the HTTP/OTLP front doors (later) call
//! it too.

mod config;
pub mod processor;
pub mod validate;

use std::sync::Arc;
use std::time::Duration;

use schemas::framing::CatalogIdResolver;
use worker_runtime::health::{self, Readiness};
use worker_runtime::kafka::pipeline::{self, PipelineSettings};
use worker_runtime::kafka::{admin, consumer, ConsumerSettings, Producer};
use worker_runtime::shutdown::TaskSet;
use worker_runtime::{RuntimeError, Shutdown};

pub use config::Config;
pub use processor::{partition_key, IngestProcessor};
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
    Runtime(#[from] RuntimeError),
}

/// Runs the worker until `shutdown` fires (then drains, commits and returns) or a fatal error.
pub async fn run(config: Config, shutdown: Shutdown) -> Result<(), Error> {
    let topics = config.kafka.topics();
    // A broken catalog would reject every Avro record; fail at start instead.
    schemas::avro::catalog().map_err(Error::Catalog)?;
    let resolver = Arc::new(CatalogIdResolver::new().map_err(Error::Catalog)?);
    for topic in [&topics.validated, &topics.rejected] {
        admin::partition_count(&config.kafka, topic)
            .await
            .map_err(|source| Error::OutputTopic {
                topic: topic.clone(),
                source,
            })?;
    }

    let processor = Arc::new(IngestProcessor::new(
        topics.validated.clone(),
        topics.rejected.clone(),
        config.limits(),
        resolver,
    ));
    let producer = Producer::new(&config.kafka, "audit-ingest")?;
    let (consumer, rebalance) = consumer::subscribe(
        &config.kafka,
        &ConsumerSettings::new(
            config.group_id.clone(),
            "audit-ingest",
            vec![topics.raw.clone()],
        ),
    )?;
    tracing::info!(input = %topics.raw, output = %topics.validated, rejected = %topics.rejected,
        group = %config.group_id, "ingest starting");

    let ready = Readiness::default();
    let mut tasks = TaskSet::new(shutdown.clone());
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
    };
    tasks.spawn(
        "pipeline",
        pipeline::run(
            consumer, rebalance, producer, processor, settings, ready, shutdown,
        ),
    );
    tasks
        .join(Duration::from_secs(config.common.shutdown_timeout_secs))
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests;
