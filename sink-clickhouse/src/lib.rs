//! ClickHouse sink: `<prefix>chained` → `audit_events` (one row per chained event, exactly once
//! per `(partition, seq)`), `<prefix>checkpoints` → `audit_checkpoints`, fork alarms →
//! `audit_forks`. Applies its idempotent migrations at startup (`migrations/`) and ships the
//! analyst query recipes (`queries/`).
//!
//! Row shape: `schemas::flat` (shared with auditctl). Exactly-once algorithm: [`sink`].

pub mod batch;
pub mod error;
pub mod migrations;
pub mod queries;
pub mod retention;
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

/// librdkafka's pre-fetch queue for this sink unless `--kafka-property` sets it: 16 MB
/// instead of its default 64 MB. While an INSERT runs the sink reads nothing, so with a
/// backlog librdkafka fills the whole queue; 16 MB is ~20,000 demo records, two full batches.
/// Measured on 66,537 chained records: peak RSS 147 → 123 MB with 8 MB, rate unchanged.
pub const QUEUED_MAX_KBYTES: &str = "16384";

/// Most a fetch response may carry (all partitions together) unless `--kafka-property` sets
/// it: 2 MB. Otherwise librdkafka lowers its 50 MB default only to the queue cap (16 MB): a
/// whole response is received, then its lz4 batches are decompressed into buffers that live
/// until their last record is read, and the broker threads' malloc arena peaked at ~24 MB
/// (heaptrack: `rd_kafka_lz4_decompress` the largest consumer, 18 MB at its peak; 9.7 MB
/// now). worker-bench, 20,000 events: the sink's peak RSS was 69–71 MB in 12 of 14 runs
/// (59, 62 in the others), 59–62 MB in 12 of 12 with 2 MB (the arena ~14.5 MB), events/s and
/// CPU per event within noise. 1 MB was ~30% slower; 4 MB saved nothing. Never below
/// `message.max.bytes`, which librdkafka refuses.
pub const FETCH_MAX_BYTES: u64 = 2 * 1024 * 1024;

/// The value `args` sets for librdkafka property `key` (the last one wins, as in librdkafka).
fn property<'a>(args: &'a KafkaArgs, key: &str) -> Option<&'a str> {
    args.properties.iter().rev().find_map(|kv| {
        kv.split_once('=')
            .filter(|(k, _)| k.trim() == key)
            .map(|(_, v)| v.trim())
    })
}

/// The Kafka settings of the sink's consumer: `args` plus [`QUEUED_MAX_KBYTES`] and
/// [`FETCH_MAX_BYTES`] unless set.
pub fn consumer_args(args: &KafkaArgs) -> KafkaArgs {
    let mut a = args.clone();
    if property(args, "queued.max.messages.kbytes").is_none() {
        a.properties
            .push(format!("queued.max.messages.kbytes={QUEUED_MAX_KBYTES}"));
    }
    if property(args, "fetch.max.bytes").is_none() {
        // librdkafka refuses a `fetch.max.bytes` below `message.max.bytes` (default 1 MB).
        let message_max = property(args, "message.max.bytes")
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
        a.properties.push(format!(
            "fetch.max.bytes={}",
            FETCH_MAX_BYTES.max(message_max)
        ));
    }
    a
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
    let (consumer, rebalance) = consumer::subscribe(&consumer_args(&config.kafka), &settings)?;
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
    let sink = sink::SinkLoop::new(
        store,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_consumer_queue_is_capped_unless_the_operator_sets_it() {
        let mut args = KafkaArgs::local("127.0.0.1:9092", "x.");
        let capped = consumer_args(&args);
        assert!(capped
            .properties
            .contains(&format!("queued.max.messages.kbytes={QUEUED_MAX_KBYTES}")));
        args.properties
            .push(" queued.max.messages.kbytes = 1024".into());
        let own = consumer_args(&args);
        let mut expected = args.properties.clone();
        expected.push(format!("fetch.max.bytes={FETCH_MAX_BYTES}"));
        assert_eq!(own.properties, expected);
    }

    #[test]
    fn the_fetch_size_is_capped_unless_the_operator_sets_it() {
        let mut args = KafkaArgs::local("127.0.0.1:9092", "x.");
        assert!(consumer_args(&args)
            .properties
            .contains(&format!("fetch.max.bytes={FETCH_MAX_BYTES}")));
        // Never below message.max.bytes, which librdkafka would refuse.
        args.properties.push("message.max.bytes=5000000".into());
        assert!(consumer_args(&args)
            .properties
            .contains(&"fetch.max.bytes=5000000".to_owned()));
        args.properties.push("fetch.max.bytes = 9000000".into());
        let own = consumer_args(&args);
        assert_eq!(
            own.properties
                .iter()
                .filter(|kv| kv.contains("fetch.max.bytes"))
                .count(),
            1
        );
    }
}
