//! The raw path of each hop: what a worker's hop costs at least, run as a process of its own
//! (`worker-bench raw-hop …`) so that the bench measures it exactly as it measures a worker.
//!
//! - `kafka`: consume the worker's input with the workers' consumer settings
//!   (`worker_runtime::kafka::consumer::subscribe`) and produce every record unchanged (key,
//!   value, headers) with the workers' producer (`worker_runtime::kafka::Producer`: its
//!   settings and its send gate), at most as many unacknowledged as a worker
//!   (`--max-in-flight`), until N are acknowledged.
//! - `clickhouse`: consume and insert (partition, offset, value) rows in batches of the sink's
//!   default size and age (10,000 rows, 1 s).
//! - `s3`: consume and put one object per partition per 10,000 records or 1 s (the archive
//!   sink's default segment size and the age the bench gives it), the values concatenated.
//!
//! When N are stored it prints `raw-hop done N` and waits to be measured and killed.

use anyhow::{bail, Context as _};
use clap::Parser as _;
use futures::stream::FuturesUnordered;
use futures::StreamExt as _;
use rdkafka::message::{Message as _, OwnedMessage};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use worker_runtime::kafka::consumer::{subscribe, ConsumerSettings};
use worker_runtime::kafka::producer::SendParts;
use worker_runtime::kafka::{KafkaArgs, Producer};

/// Rows per ClickHouse insert and records per object: the sinks' defaults.
pub const BATCH_RECORDS: usize = 10_000;
/// Age at which a batch or object is written anyway.
pub const BATCH_AGE: Duration = Duration::from_secs(1);
/// The raw ClickHouse path's table (in a database of its own).
pub const RAW_TABLE: &str = "raw_hop";

/// Where the hop writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum HopKind {
    Kafka,
    Clickhouse,
    S3,
}

/// `worker-bench raw-hop`.
#[derive(Debug, Clone, clap::Args)]
pub struct RawArgs {
    #[arg(long, value_enum)]
    pub kind: HopKind,
    /// Input topic.
    #[arg(long)]
    pub input: String,
    /// Output: a topic (kafka), a database (clickhouse) or an `s3://bucket/prefix` URL (s3).
    #[arg(long)]
    pub output: String,
    /// Records to store before reporting done.
    #[arg(long)]
    pub events: u64,
    /// Consumer group.
    #[arg(long)]
    pub group: String,
    /// Unacknowledged records at most (kafka; the workers' default is 1000).
    #[arg(long, default_value_t = 1000)]
    pub max_in_flight: usize,
    #[command(flatten)]
    pub kafka: KafkaArgs,
}

/// Runs the hop until N are stored, says so, then waits forever (the bench kills it).
pub async fn run(a: RawArgs) -> anyhow::Result<()> {
    let settings = ConsumerSettings::new(&a.group, "raw-hop", vec![a.input.clone()]);
    let (consumer, _state) = subscribe(&a.kafka, &settings).context("raw-hop consumer")?;
    let stored = match a.kind {
        HopKind::Kafka => kafka(&a, &consumer).await?,
        HopKind::Clickhouse => clickhouse(&a, &consumer).await?,
        HopKind::S3 => s3(&a, &consumer).await?,
    };
    println!("raw-hop done {stored}");
    std::future::pending::<()>().await;
    Ok(())
}

async fn kafka(
    a: &RawArgs,
    consumer: &worker_runtime::kafka::AuditConsumer,
) -> anyhow::Result<u64> {
    // The workers' producer (settings and send gate), so the hop costs what theirs does.
    let producer = Producer::new(&a.kafka, "raw-hop-producer").context("raw-hop producer")?;
    let mut pending = FuturesUnordered::new();
    let mut acked = 0u64;
    while acked < a.events {
        tokio::select! {
            m = consumer.recv(), if pending.len() < a.max_in_flight => {
                // Detached as the workers' InputRecord is: the record outlives the poll.
                let m: OwnedMessage = m.context("raw-hop consume")?.detach();
                let d = producer
                    .enqueue_parts(SendParts {
                        topic: &a.output,
                        key: m.key(),
                        payload: m.payload().map(Into::into),
                        headers: m.headers().cloned(),
                        ..SendParts::default()
                    })
                    .await
                    .context("raw-hop produce")?;
                pending.push(d);
            }
            Some(d) = pending.next() => {
                match d {
                    Ok(Ok(_)) => acked += 1,
                    Ok(Err((e, _))) => bail!("raw-hop delivery: {e}"),
                    Err(_) => bail!("raw-hop delivery cancelled"),
                }
            }
        }
    }
    Ok(acked)
}

#[derive(Debug, serde::Serialize, clickhouse::Row)]
struct RawRow {
    partition: i32,
    offset: i64,
    #[serde(with = "serde_bytes")]
    payload: Vec<u8>,
}

/// The raw ClickHouse path's client on `database` (created with its table if missing).
pub async fn raw_clickhouse(database: &str) -> anyhow::Result<clickhouse::Client> {
    let admin = clickhouse::Client::default()
        .with_url(crate::stack::clickhouse_url())
        .with_validation(false);
    admin
        .query(&format!("CREATE DATABASE IF NOT EXISTS {database}"))
        .execute()
        .await
        .context("creating the raw path's database")?;
    admin
        .query(&format!(
            "CREATE TABLE IF NOT EXISTS {database}.{RAW_TABLE} (partition Int32, offset Int64, \
             payload String) ENGINE = MergeTree ORDER BY (partition, offset)"
        ))
        .execute()
        .await
        .context("creating the raw path's table")?;
    Ok(admin.with_database(database))
}

async fn clickhouse(
    a: &RawArgs,
    consumer: &worker_runtime::kafka::AuditConsumer,
) -> anyhow::Result<u64> {
    let client = raw_clickhouse(&a.output).await?;
    let mut batch: Vec<RawRow> = Vec::with_capacity(BATCH_RECORDS);
    let mut since = Instant::now();
    let mut stored = 0u64;
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    while stored < a.events {
        let full = tokio::select! {
            m = consumer.recv() => {
                let m = m.context("raw-hop consume")?;
                if batch.is_empty() {
                    since = Instant::now();
                }
                batch.push(RawRow {
                    partition: m.partition(),
                    offset: m.offset(),
                    payload: m.payload().unwrap_or_default().to_vec(),
                });
                batch.len() >= BATCH_RECORDS
            }
            _ = tick.tick() => false,
        };
        if !batch.is_empty() && (full || since.elapsed() >= BATCH_AGE) {
            let mut insert = client.insert::<RawRow>(RAW_TABLE).await?;
            for r in &batch {
                insert.write(r).await?;
            }
            insert.end().await.context("raw-hop insert")?;
            stored += batch.len() as u64;
            batch.clear();
        }
    }
    Ok(stored)
}

/// One partition's object being filled.
struct Object {
    first_offset: i64,
    count: u64,
    since: Instant,
    data: Vec<u8>,
}

/// The object store of an `s3://bucket/prefix` URL on the stack's S3 endpoint.
pub fn raw_store(url: &str) -> anyhow::Result<std::sync::Arc<dyn object_store::ObjectStore>> {
    let cfg = sink_archive::Config::parse_from([
        "sink-archive",
        "--archive-url",
        url,
        "--s3-endpoint",
        &crate::stack::s3_endpoint(),
        "--s3-allow-http",
        "true",
    ]);
    sink_archive::build_store(&cfg.archive).map_err(|e| anyhow::anyhow!("raw-hop store: {e}"))
}

/// Records in the raw path's objects (named `<partition>/<first offset>-<count>`).
pub fn raw_objects_count(keys: impl Iterator<Item = String>) -> u64 {
    keys.filter_map(|k| {
        let name = k.rsplit('/').next()?.to_owned();
        name.split_once('-')?.1.parse::<u64>().ok()
    })
    .sum()
}

async fn s3(a: &RawArgs, consumer: &worker_runtime::kafka::AuditConsumer) -> anyhow::Result<u64> {
    let store = raw_store(&a.output)?;
    let mut open: BTreeMap<i32, Object> = BTreeMap::new();
    let mut stored = 0u64;
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    while stored < a.events {
        tokio::select! {
            m = consumer.recv() => {
                let m = m.context("raw-hop consume")?;
                let o = open.entry(m.partition()).or_insert_with(|| Object {
                    first_offset: m.offset(),
                    count: 0,
                    since: Instant::now(),
                    data: Vec::new(),
                });
                o.data.extend_from_slice(m.payload().unwrap_or_default());
                o.count += 1;
            }
            _ = tick.tick() => {}
        }
        let due: Vec<i32> = open
            .iter()
            .filter(|(_, o)| o.count as usize >= BATCH_RECORDS || o.since.elapsed() >= BATCH_AGE)
            .map(|(p, _)| *p)
            .collect();
        for p in due {
            if let Some(o) = open.remove(&p) {
                let key =
                    object_store::path::Path::from(format!("{p}/{}-{}", o.first_offset, o.count));
                store
                    .put(&key, o.data.into())
                    .await
                    .context("raw-hop put")?;
                stored += o.count;
            }
        }
    }
    Ok(stored)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_objects_are_counted_from_their_names() {
        let keys = ["pre/0/0-10000", "pre/0/10000-77", "pre/3/5-1", "pre/3/junk"];
        assert_eq!(
            raw_objects_count(keys.iter().map(|s| s.to_string())),
            10_078
        );
    }
}
