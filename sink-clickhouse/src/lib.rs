//! ClickHouse sink: `<prefix>chained` → `audit_events` (one row per chained event, exactly once
//! per `(partition, seq)`), `<prefix>checkpoints` → `audit_checkpoints`, fork alarms →
//! `audit_forks`. Applies its idempotent migrations at startup (`migrations/`) and ships the
//! analyst query recipes (`queries/`).
//!
//! Row shape: `schemas::flat` (shared with auditctl), written as `RowBinary` when each record
//! arrives ([`rowbinary`]). Exactly-once algorithm: [`sink`].

pub mod batch;
pub mod error;
pub mod migrations;
pub mod queries;
pub mod retention;
pub mod rowbinary;
pub mod sink;
pub mod store;
pub mod writer;

use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use worker_runtime::config::{CommonArgs, WorkerConfig};
use worker_runtime::health::Readiness;
use worker_runtime::kafka::liveness::{self, LivenessSettings};
use worker_runtime::kafka::{consumer, ConsumerSettings, KafkaArgs, Producer};
use worker_runtime::retry::RetryPolicy;
use worker_runtime::shutdown::TaskSet;
use worker_runtime::{Secret, Shutdown};

pub use error::Error;
pub use store::{Store, StoreSettings};

/// ClickHouse connection options.
#[derive(Debug, Clone, clap::Args, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClickHouseArgs {
    /// ClickHouse HTTP endpoint.
    #[arg(
        long = "clickhouse-url",
        env = "AUDIT_CLICKHOUSE_URL",
        default_value = "http://127.0.0.1:8123"
    )]
    pub clickhouse_url: String,
    /// Database of the audit tables (created if missing).
    #[arg(
        long = "clickhouse-database",
        env = "AUDIT_CLICKHOUSE_DATABASE",
        default_value = "audit"
    )]
    pub clickhouse_database: String,
    /// ClickHouse user.
    #[arg(
        long = "clickhouse-user",
        env = "AUDIT_CLICKHOUSE_USER",
        default_value = "default"
    )]
    pub clickhouse_user: String,
    /// ClickHouse password (never logged); prefer the environment variable.
    #[arg(
        long = "clickhouse-password",
        env = "AUDIT_CLICKHOUSE_PASSWORD",
        hide_env_values = true,
        default_value = ""
    )]
    pub clickhouse_password: Secret,
}

impl ClickHouseArgs {
    pub fn store_settings(&self) -> StoreSettings {
        StoreSettings {
            url: self.clickhouse_url.clone(),
            database: self.clickhouse_database.clone(),
            user: self.clickhouse_user.clone(),
            password: self.clickhouse_password.clone(),
        }
    }
}

#[derive(Debug, Clone, clap::Parser, Serialize, Deserialize)]
#[command(
    name = "sink-clickhouse",
    about = "Stores chained audit events and checkpoints in ClickHouse"
)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[command(flatten)]
    pub common: CommonArgs,
    #[command(flatten)]
    pub kafka: KafkaArgs,
    #[command(flatten)]
    pub clickhouse: ClickHouseArgs,
    #[command(flatten)]
    pub retry: RetryPolicy,
    /// Retention per event class (`[retention]` in the config file).
    #[command(flatten)]
    #[serde(default)]
    pub retention: retention::RetentionArgs,
    /// Consumer group of the sink (both input topics).
    #[arg(
        long = "group-id",
        env = "AUDIT_SINK_CLICKHOUSE_GROUP_ID",
        default_value = "audit-sink-clickhouse"
    )]
    pub group_id: String,
    /// Rows held (decoded, all partitions together) that trigger an insert of everything held.
    /// This bounds the sink's memory: about 3.5 KB per row held for the demo's events.
    #[arg(
        long = "batch-max-rows",
        env = "AUDIT_SINK_CLICKHOUSE_BATCH_MAX_ROWS",
        default_value_t = 10_000
    )]
    pub batch_max_rows: usize,
    /// Age (milliseconds) of the oldest unstored record that triggers an insert of everything
    /// held. It is most of this hop's latency at low load; one INSERT for all partitions
    /// every 250 ms is as many INSERTs as one per partition every second was with 4.
    #[arg(
        long = "batch-max-age-ms",
        env = "AUDIT_SINK_CLICKHOUSE_BATCH_MAX_AGE_MS",
        default_value_t = 250
    )]
    pub batch_max_age_ms: u64,
    /// How long (seconds) a checkpoint waits for the events it covers to be stored before it is
    /// stored anyway (with a warning).
    #[arg(
        long = "checkpoint-max-defer-secs",
        env = "AUDIT_SINK_CLICKHOUSE_CHECKPOINT_MAX_DEFER_SECS",
        default_value_t = 300
    )]
    pub checkpoint_max_defer_secs: u64,
}

impl WorkerConfig for Config {
    fn config_file(&self) -> Option<&Path> {
        self.common.config.as_deref()
    }
}

/// Connects, migrates, and runs the sink until `shutdown`.
pub async fn run(config: Config, shutdown: Shutdown) -> Result<(), Error> {
    if config.batch_max_rows == 0 {
        return Err(Error::Config("--batch-max-rows must be at least 1".into()));
    }
    // A bad retention option stops the sink before it connects to anything.
    let retention_policy = retention::RetentionPolicy::from_args(&config.retention)?;
    let ready = Readiness::default();
    let mut tasks = TaskSet::new(shutdown.clone());
    {
        let (addr, ready, s) = (
            config.common.health_addr.clone(),
            ready.clone(),
            shutdown.clone(),
        );
        tasks.spawn("health", async move {
            worker_runtime::health::serve(&addr, ready, s).await
        });
    }

    let (store, report) = migrations::connect_and_migrate(
        &config.clickhouse.store_settings(),
        &config.retry,
        shutdown.token(),
    )
    .await?;
    tracing::info!(applied = ?report.applied, skipped = ?report.skipped, "migrations up to date");

    let topics = config.kafka.topics();
    let producer = Producer::new(&config.kafka, "sink-clickhouse-dlq")?;
    // Before consuming: a changed policy is chained, then applied (or, on a server without
    // TTL, reported as unsupported, once).
    retention::ensure(&store, &retention_policy, &producer, &topics.validated).await?;
    let settings = ConsumerSettings::new(
        config.group_id.clone(),
        "sink-clickhouse",
        vec![topics.chained.clone(), topics.checkpoints.clone()],
    );
    let (consumer, rebalance) = consumer::subscribe(&config.kafka, &settings)?;
    // Consumer watchdog: `/readyz` says why when this sink holds nothing (or nothing moves)
    // while the chained topic has lag, and the consumer then leaves and re-joins its group,
    // which the loop handles as any rebalance (docs/local-stack.md, tansu 0.6.0).
    tasks.spawn(
        "consumer-watchdog",
        liveness::watch_resubscribing(
            consumer.clone(),
            vec![topics.chained.clone()],
            sink::STAGE,
            LivenessSettings::for_consumer(&config.kafka, &settings),
            ready.clone(),
            shutdown.clone(),
        ),
    );
    tokio::spawn(worker_runtime::kafka::admin::warn_on_finite_retention(
        config.kafka.clone(),
    ));
    let resolver = schemas::framing::CatalogIdResolver::new()
        .map_err(|e| Error::Config(format!("compiled-in schema catalog: {e}")))?;
    // Read when the store was migrated: the columns each row is written for.
    let layout = store.row_layout().await?;
    let sink = sink::SinkLoop::new(
        store,
        layout,
        consumer,
        rebalance,
        producer,
        topics,
        resolver,
        sink::LoopSettings {
            batch_max_rows: config.batch_max_rows,
            batch_max_age: Duration::from_millis(config.batch_max_age_ms),
            checkpoint_max_defer: Duration::from_secs(config.checkpoint_max_defer_secs),
            retry: config.retry,
        },
        shutdown.clone(),
    );
    tasks.spawn("sink", sink.run(ready));
    tasks
        .join(Duration::from_secs(config.common.shutdown_timeout_secs))
        .await?;
    Ok(())
}
