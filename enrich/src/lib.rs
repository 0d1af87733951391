//! Enrich: fills user and team context into validated events.
//!
//! The compacted context topics (`<prefix>context.users`, key = user id, and
//! `<prefix>context.teams`, key = team id) are followed in the background into two bounded
//! caches. Events from `<prefix>validated` are consumed only once both caches have caught up
//! with the end the topics had at start, then each is looked up (user by actor id, team by the
//! event's team id, else the user's), enriched with `schemas::context::apply_context`, and
//! written to `<prefix>enriched` with the same key and the **same partition number** as its
//! input, so per-key order and each partition's content carry over unchanged to the chainer.
//!
//! With a tokenization key configured, the [`privacy`] rules run on each event after its
//! context is merged and before it is encoded for the chainer: fields dropped, masked,
//! tokenized or encrypted for their data subject (docs/privacy.md).

mod config;
pub mod context;
mod loader;
pub mod privacy;
pub mod processor;

use std::sync::Arc;
use std::time::Duration;

use schemas::framing::CatalogIdResolver;
use tokio::sync::watch;
use worker_runtime::health::{self, Readiness};
use worker_runtime::kafka::liveness::LivenessSettings;
use worker_runtime::kafka::pipeline::{self, PipelineSettings};
use worker_runtime::kafka::{admin, consumer, ConsumerSettings, Producer};
use worker_runtime::shutdown::TaskSet;
use worker_runtime::{RuntimeError, Shutdown};

pub use config::Config;
pub use context::{Applied, ContextCaches, ContextKind};
pub use processor::EnrichProcessor;

/// Errors that stop the enrich worker.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("loading the compiled-in Avro schema catalog: {0}")]
    Catalog(#[source] schemas::SchemaError),
    #[error("topic {topic} is not usable (create the pipeline topics first): {source}")]
    Topic {
        topic: String,
        #[source]
        source: Box<RuntimeError>,
    },
    #[error("context topic {topic} does not exist (create the pipeline topics first)")]
    ContextTopicMissing { topic: String },
    #[error(
        "{enriched} has {enriched_partitions} partitions but {validated} has \
         {validated_partitions}: enrich writes each event to its input's partition number, so \
         {enriched} needs at least as many partitions"
    )]
    PartitionMismatch {
        validated: String,
        validated_partitions: i32,
        enriched: String,
        enriched_partitions: i32,
    },
    #[error(
        "context topics not loaded within {after:?} (still loading: {pending}); \
         raise --catch-up-timeout-secs"
    )]
    CatchUpTimeout { after: Duration, pending: String },
    #[error(transparent)]
    Privacy(#[from] privacy::PrivacyError),
    #[error(transparent)]
    Runtime(Box<RuntimeError>),
}

impl From<RuntimeError> for Error {
    fn from(e: RuntimeError) -> Self {
        Error::Runtime(Box::new(e))
    }
}

/// Runs the worker until `shutdown` fires (then drains, commits and returns) or a fatal error.
pub async fn run(config: Config, shutdown: Shutdown) -> Result<(), Error> {
    let topics = config.kafka.topics();
    schemas::avro::catalog().map_err(Error::Catalog)?;
    let resolver = Arc::new(CatalogIdResolver::new().map_err(Error::Catalog)?);
    let count = |topic: String| {
        let kafka = config.kafka.clone();
        let cancel = shutdown.token().clone();
        async move {
            admin::partition_count(&kafka, &topic, &cancel)
                .await
                .map_err(|source| Error::Topic {
                    topic,
                    source: Box::new(source),
                })
        }
    };
    let validated_partitions = count(topics.validated.clone()).await?;
    let enriched_partitions = count(topics.enriched.clone()).await?;
    count(topics.rejected.clone()).await?;
    if enriched_partitions < validated_partitions {
        return Err(Error::PartitionMismatch {
            validated: topics.validated,
            validated_partitions,
            enriched: topics.enriched,
            enriched_partitions,
        });
    }

    // Built before anything runs: a half-configured privacy setup stops the worker at start
    // rather than letting one event through in the clear.
    let privacy = config.privacy.build()?;
    if let Some(p) = &privacy {
        if let Some(keys) = p.subject_keys() {
            keys.check().await?;
        }
        tracing::info!(rules = ?config.privacy.privacy_rules_file, "privacy rules on");
    }
    let caches = ContextCaches::new(config.users_cache_max_bytes, config.teams_cache_max_bytes);
    let producer = Producer::new(&config.kafka, "audit-enrich")?;
    let ready = Readiness::default();
    let mut tasks = TaskSet::new(shutdown.clone());
    let health_addr = config.common.health_addr.clone();
    let (r, s) = (ready.clone(), shutdown.clone());
    tasks.spawn(
        "health",
        async move { health::serve(&health_addr, r, s).await },
    );

    let mut caught_up = Vec::new();
    for (kind, topic) in [
        (ContextKind::Users, topics.context_users.clone()),
        (ContextKind::Teams, topics.context_teams.clone()),
    ] {
        let (tx, rx) = watch::channel(false);
        caught_up.push((topic.clone(), rx));
        tasks.spawn(
            format!("context-{}", kind.name()),
            loader::follow(
                config.kafka.clone(),
                topic,
                kind,
                caches.clone(),
                tx,
                shutdown.clone(),
            ),
        );
    }

    // The main loop is a task too, so that a failing context loader stops the worker even while
    // the main loop is still waiting for the caches.
    let processor = Arc::new(
        EnrichProcessor::new(
            caches,
            topics.enriched.clone(),
            topics.rejected.clone(),
            resolver,
        )
        .with_privacy(privacy),
    );
    let settings = PipelineSettings {
        stage: processor::STAGE,
        max_in_flight: config.max_in_flight.max(1),
        drain_timeout: Duration::from_secs(config.common.shutdown_timeout_secs),
        kafka: config.kafka.clone(),
        dead_letter_scan_records: pipeline::DEFAULT_DEAD_LETTER_SCAN_RECORDS,
    };
    let catch_up_timeout = Duration::from_secs(config.catch_up_timeout_secs);
    let consumer_settings = ConsumerSettings::new(
        config.group_id.clone(),
        "audit-enrich",
        vec![topics.validated.clone()],
    );
    let kafka = config.kafka.clone();
    let main_shutdown = shutdown.clone();
    tasks.spawn("pipeline", async move {
        if !wait_for_context(caught_up, catch_up_timeout, &main_shutdown).await? {
            return Ok(());
        }
        let (consumer, rebalance) = consumer::subscribe(&kafka, &consumer_settings)?;
        tracing::info!(input = %consumer_settings.topics[0], group = %consumer_settings.group_id,
            "context loaded; consuming validated events");
        let liveness = LivenessSettings::for_consumer(&kafka, &consumer_settings);
        pipeline::run_with_liveness(
            consumer,
            rebalance,
            producer,
            processor,
            settings,
            liveness,
            ready,
            main_shutdown,
        )
        .await?;
        Ok::<(), Error>(())
    });
    tasks
        .join(Duration::from_secs(config.common.shutdown_timeout_secs))
        .await?;
    Ok(())
}

/// Waits until every loader reports caught up. `Ok(false)`: shutdown came first (or a loader
/// ended, which stops the worker anyway).
async fn wait_for_context(
    mut loaders: Vec<(String, watch::Receiver<bool>)>,
    timeout: Duration,
    shutdown: &Shutdown,
) -> Result<bool, Error> {
    let all = async {
        for (_, rx) in loaders.iter_mut() {
            let ok = rx.wait_for(|caught_up| *caught_up).await.is_ok();
            if !ok {
                return false;
            }
        }
        true
    };
    let outcome = tokio::select! {
        _ = shutdown.cancelled() => return Ok(false),
        r = tokio::time::timeout(timeout, all) => r,
    };
    match outcome {
        Ok(all_loaded) => Ok(all_loaded),
        Err(_) => Err(Error::CatchUpTimeout {
            after: timeout,
            pending: loaders
                .iter()
                .filter(|(_, rx)| !*rx.borrow())
                .map(|(t, _)| t.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        }),
    }
}

#[cfg(test)]
mod tests;
