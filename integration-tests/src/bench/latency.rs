//! End-to-end latency (issue 10, `worker-bench --latency`): the five worker release binaries
//! as processes on the bench's own stack, fed realistic demo records at a fraction (default
//! half) of the pipeline's measured maximum rate; for each record, the time from publish to
//! queryable in ClickHouse and to archived in S3, and where that time goes hop by hop.
//!
//! 1. **Maximum rate.** `--burst-events` demo records are pre-filled into `raw` before the
//!    workers start; the rate is the lower of the ClickHouse row rate and the `chained`
//!    record rate, each between 10% and 90% of the burst (so neither the group joins nor the
//!    last batch's age count). The row count alone grows in steps of a whole insert (up to
//!    `--batch-max-rows` rows every `--batch-max-age-ms`), so on a burst of a few batches
//!    10% → 90% could be one or two steps a fraction of a second apart: 15,784 rows/s was
//!    read where the Kafka hops sustained a fraction of that, and "half load" then saturated
//!    the pipeline. `--rate` skips this.
//! 2. **Paced publish.** Records go out every 5 ms tick at `fraction × max` per second for
//!    `--latency-secs`; each one's send time and acknowledgement time are kept.
//! 3. **Observation.** ClickHouse is polled every `--poll-ms` for rows above each partition's
//!    contiguous seq (a row is queryable at the start of the first poll that returns it); the
//!    archive is listed every 5 polls (a record is archived when a manifest covering its
//!    (partition, seq) is listed). A tracker consumer (read_committed, `fetch.wait.max.ms`
//!    20) reads `validated`, `enriched` and `chained`: the Kafka timestamps of the first two
//!    are when ingest and enrich produced each record (CreateTime, ms); the chainer copies the
//!    enriched timestamp, so `chained` counts from the tracker's arrival time instead.
//!
//! Nothing here asserts a time.

use super::{procfs, Child};
use crate::harness::Pipeline;
use crate::procs::Worker;
use crate::{demo, stack};
use anyhow::{bail, Context as _};
use clap::Parser as _;
use futures::TryStreamExt as _;
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::message::Message as _;
use rdkafka::{Offset, TopicPartitionList};
use serde_json::{json, Value};
use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use worker_runtime::kafka::producer::SendParts;

/// What the caller chose.
#[derive(Debug, Clone)]
pub struct LatencyOptions {
    pub partitions: i32,
    pub seed: u64,
    /// Length of the paced phase.
    pub secs: f64,
    /// Publish rate; `None`: `fraction` of the measured maximum.
    pub rate: Option<f64>,
    pub fraction: f64,
    /// Records of the pre-filled burst that measures the maximum rate.
    pub burst_events: usize,
    /// ClickHouse poll interval (the queryable time's resolution).
    pub poll: Duration,
    pub timeout: Duration,
    pub log_dir: PathBuf,
    /// librdkafka properties (`key=value`) for every worker, e.g. `linger.ms=5`.
    pub kafka_properties: Vec<String>,
    /// sink-clickhouse `--batch-max-age-ms` (`None`: its default).
    pub ch_batch_max_age_ms: Option<u64>,
    /// sink-archive `--segment-max-age-secs`.
    pub archive_segment_max_age_secs: u64,
}

/// Nearest-rank percentiles of a sample, in the sample's unit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    pub n: usize,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
    pub mean: f64,
}

/// The `p`-th percentile (0 < p ≤ 100) of sorted `v` by nearest rank: the smallest value with
/// at least p% of the sample at or below it (a value that occurred, never an interpolation).
pub fn nearest_rank(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

impl Summary {
    pub fn of(mut v: Vec<f64>) -> Option<Summary> {
        v.retain(|x| x.is_finite());
        v.sort_by(f64::total_cmp);
        Some(Summary {
            n: v.len(),
            p50: nearest_rank(&v, 50.0)?,
            p90: nearest_rank(&v, 90.0)?,
            p99: nearest_rank(&v, 99.0)?,
            max: *v.last()?,
            mean: v.iter().sum::<f64>() / v.len() as f64,
        })
    }

    fn to_json(self) -> Value {
        json!({"n": self.n, "p50": self.p50, "p90": self.p90, "p99": self.p99,
               "max": self.max, "mean": self.mean})
    }
}

/// The rate between `lo` and `hi` (fractions of `total`) of a stored-count series
/// `(seconds, count)`, counts non-decreasing: the steady rate without start-up and tail.
pub fn steady_rate(samples: &[(f64, u64)], total: u64, lo: f64, hi: f64) -> Option<f64> {
    let first_at = |f: f64| {
        let want = (total as f64 * f).ceil() as u64;
        samples.iter().find(|(_, c)| *c >= want).copied()
    };
    let (t0, c0) = first_at(lo)?;
    let (t1, c1) = first_at(hi)?;
    (t1 > t0 && c1 > c0).then(|| (c1 - c0) as f64 / (t1 - t0))
}

/// `args` with `flag`'s value set to `value`: replaced where the flag is, appended otherwise
/// (clap refuses a single-valued flag given twice).
pub fn set_flag(args: &mut Vec<String>, flag: &str, value: &str) {
    match args.iter().position(|a| a == flag) {
        Some(i) if i + 1 < args.len() => args[i + 1] = value.to_owned(),
        _ => args.extend([flag.to_owned(), value.to_owned()]),
    }
}

/// Manifests listed so far: when each (partition, seq range) was first seen.
#[derive(Debug, Default)]
pub struct ArchiveRanges {
    seen: HashMap<(i32, i64, i64), i64>,
}

impl ArchiveRanges {
    /// Records a manifest listed at `at_us`; the first listing wins.
    pub fn saw(&mut self, partition: i32, first: i64, last: i64, at_us: i64) {
        self.seen.entry((partition, first, last)).or_insert(at_us);
    }

    /// When a manifest covering `(partition, seq)` was first listed.
    pub fn archived_at(&self, partition: i32, seq: i64) -> Option<i64> {
        self.seen
            .iter()
            .filter(|((p, f, l), _)| *p == partition && (*f..=*l).contains(&seq))
            .map(|(_, at)| *at)
            .min()
    }

    /// Records covered by the manifests listed (ranges never overlap within a partition).
    pub fn events(&self) -> u64 {
        self.seen.keys().map(|(_, f, l)| (l - f + 1) as u64).sum()
    }
}

/// Per partition, the highest seq below which every row was seen, and the seqs seen above it
/// (rows of one partition can become visible out of order across inserts).
#[derive(Debug, Default)]
pub struct SeenSeqs {
    contiguous: HashMap<i32, i64>,
    above: HashMap<i32, BTreeSet<i64>>,
}

impl SeenSeqs {
    /// Starts partition `p` at `contiguous` (every seq up to it already stored).
    pub fn start(&mut self, p: i32, contiguous: i64) {
        self.contiguous.insert(p, contiguous);
    }

    /// Marks `(p, seq)` seen; false if it was already.
    pub fn insert(&mut self, p: i32, seq: i64) -> bool {
        let c = self.contiguous.entry(p).or_insert(0);
        if seq <= *c {
            return false;
        }
        let above = self.above.entry(p).or_default();
        if !above.insert(seq) {
            return false;
        }
        while above.remove(&(*c + 1)) {
            *c += 1;
        }
        true
    }

    /// The WHERE clause selecting rows not below any partition's contiguous seq (partitions
    /// in `0..partitions`).
    pub fn where_clause(&self, partitions: i32) -> String {
        (0..partitions)
            .map(|p| {
                format!(
                    "(chain_partition = {p} AND seq > {})",
                    self.contiguous.get(&p).copied().unwrap_or(0)
                )
            })
            .collect::<Vec<_>>()
            .join(" OR ")
    }
}

/// One measured record's timeline, wall-clock µs since the epoch.
#[derive(Debug, Clone, Default)]
pub struct Timeline {
    pub sent: Option<i64>,
    pub acked: Option<i64>,
    pub validated: Option<i64>,
    pub enriched: Option<i64>,
    pub chained: Option<i64>,
    pub chain: Option<(i32, i64)>,
    pub queryable: Option<i64>,
    pub archived: Option<i64>,
}

fn ms(a: Option<i64>, b: Option<i64>) -> Option<f64> {
    Some((b? - a?) as f64 / 1000.0)
}

/// The latency paths and hops reported, each as (name, from, to) over a timeline.
pub type Path = (&'static str, fn(&Timeline) -> Option<f64>);

pub const PATHS: &[Path] = &[
    ("publish (ack) → queryable", |t| ms(t.acked, t.queryable)),
    ("publish (ack) → archived", |t| ms(t.acked, t.archived)),
    ("publish (send) → queryable", |t| ms(t.sent, t.queryable)),
    ("publish (send) → archived", |t| ms(t.sent, t.archived)),
];

pub const HOPS: &[Path] = &[
    ("send → ack (raw)", |t| ms(t.sent, t.acked)),
    ("send → validated produced", |t| ms(t.sent, t.validated)),
    ("validated → enriched produced", |t| {
        ms(t.validated, t.enriched)
    }),
    ("enriched → chained visible", |t| {
        ms(t.enriched, t.chained)
    }),
    ("chained → queryable", |t| ms(t.chained, t.queryable)),
    ("chained → archived", |t| ms(t.chained, t.archived)),
];

/// Summaries of `paths` over `timelines`, in ms.
pub fn summarise(timelines: &[Timeline], paths: &[Path]) -> Vec<(&'static str, Option<Summary>)> {
    paths
        .iter()
        .map(|(name, f)| (*name, Summary::of(timelines.iter().filter_map(f).collect())))
        .collect()
}

fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

/// What the tracker consumer saw of one record.
#[derive(Debug)]
struct Seen {
    topic: usize,
    event_id: String,
    ts_ms: Option<i64>,
    arrival_us: i64,
    chain: Option<(i32, i64)>,
}

/// Reads `topics` (validated, enriched, chained) from their current ends until `stop`.
fn track(
    consumer: BaseConsumer,
    topics: Vec<String>,
    out: Arc<Mutex<Vec<Seen>>>,
    stop: Arc<AtomicBool>,
) {
    while !stop.load(Ordering::Relaxed) {
        let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) else {
            continue;
        };
        let arrival_us = now_us();
        let Some(topic) = topics.iter().position(|t| t == m.topic()) else {
            continue;
        };
        let payload = m.payload().unwrap_or_default();
        let (event_id, chain) = if topic == 2 {
            match schemas::framing::decode_chained(payload, None) {
                Ok(c) => (c.event.event_id, Some((c.chain_partition, c.seq))),
                Err(_) => continue,
            }
        } else {
            match schemas::framing::decode_event(payload, None) {
                Ok(e) => (e.event_id, None),
                Err(_) => continue,
            }
        };
        if let Ok(mut v) = out.lock() {
            v.push(Seen {
                topic,
                event_id,
                ts_ms: m.timestamp().to_millis(),
                arrival_us,
                chain,
            });
        }
    }
}

/// Stored-count of `db.audit_events`.
async fn row_count(ch: &clickhouse::Client, db: &str) -> u64 {
    // A table not created yet holds nothing.
    ch.query(&format!("SELECT count() FROM {db}.audit_events"))
        .fetch_one::<u64>()
        .await
        .unwrap_or(0)
}

async fn list_manifests(
    store: &Arc<dyn object_store::ObjectStore>,
    ranges: &mut ArchiveRanges,
    at_us: i64,
) -> anyhow::Result<()> {
    let objects: Vec<object_store::ObjectMeta> = store.list(None).try_collect().await?;
    for o in objects {
        if let Some((k, schemas::segment::ObjectKind::Manifest)) =
            schemas::segment::parse_key(o.location.as_ref())
        {
            ranges.saw(k.partition, k.first_seq, k.last_seq, at_us);
        }
    }
    Ok(())
}

fn records(n: usize, seed: u64) -> Vec<demo::RawEvent> {
    // Event times one second apart per request, all in the past (ingest refuses the future).
    let requests = n / 5 + 1;
    let mut v = demo::lifecycle(
        requests,
        seed,
        now_us() - (requests as i64 + 120) * 1_000_000,
    );
    v.truncate(n);
    v
}

/// Runs the latency bench against the stack the environment points at; returns its JSON.
pub async fn run(opts: &LatencyOptions) -> anyhow::Result<Value> {
    std::fs::create_dir_all(&opts.log_dir)
        .with_context(|| format!("creating {}", opts.log_dir.display()))?;
    let p = Pipeline::new("wblat", opts.partitions)
        .await?
        .production_defaults();
    let topics = p.kafka.topics();
    let db = p.database.clone();
    let ch = clickhouse::Client::default()
        .with_url(stack::clickhouse_url())
        .with_validation(false);

    // The workers' arguments and the settings that dominate latency, as the workers parse them.
    let extra: Vec<String> = opts
        .kafka_properties
        .iter()
        .flat_map(|kv| ["--kafka-property".to_owned(), kv.clone()])
        .collect();
    let mut worker_args: Vec<(Worker, Vec<String>)> = Vec::new();
    for w in Worker::ALL {
        let mut a = w.args(&p);
        a.extend(extra.iter().cloned());
        match w {
            Worker::SinkClickhouse => {
                if let Some(age) = opts.ch_batch_max_age_ms {
                    set_flag(&mut a, "--batch-max-age-ms", &age.to_string());
                }
            }
            Worker::SinkArchive => set_flag(
                &mut a,
                "--segment-max-age-secs",
                &opts.archive_segment_max_age_secs.to_string(),
            ),
            _ => {}
        }
        worker_args.push((w, a));
    }
    let args_of = |w: Worker| {
        worker_args
            .iter()
            .find(|(x, _)| *x == w)
            .map(|(_, a)| a.clone())
            .unwrap_or_default()
    };
    let ch_cfg = sink_clickhouse::Config::try_parse_from(
        std::iter::once("sink-clickhouse".to_owned()).chain(args_of(Worker::SinkClickhouse)),
    )?;
    let archive_cfg = sink_archive::Config::try_parse_from(
        std::iter::once("sink-archive".to_owned()).chain(args_of(Worker::SinkArchive)),
    )?;
    let mut kafka = p.kafka.clone();
    kafka
        .properties
        .extend(opts.kafka_properties.iter().cloned());
    let linger = worker_runtime::kafka::Producer::client_config(&kafka, "wb-latency")
        .get("linger.ms")
        .map(str::to_owned);
    let config = json!({
        "sink_clickhouse_batch_max_age_ms": ch_cfg.batch_max_age_ms,
        "sink_clickhouse_batch_max_rows": ch_cfg.batch_max_rows,
        "sink_archive_segment_max_age_secs": archive_cfg.segment_max_age_secs,
        "sink_archive_segment_max_events": archive_cfg.segment_max_events,
        "workers_linger_ms": linger,
        "kafka_properties": opts.kafka_properties,
        "clickhouse_poll_ms": opts.poll.as_millis() as u64,
        "archive_list_every_ms": opts.poll.as_millis() as u64 * 5,
        "partitions": opts.partitions,
    });
    println!(
        "[worker-bench --latency] prefix {}, config {config}",
        p.kafka.topic_prefix
    );

    // Context, then the burst, pre-filled before any worker runs.
    let producer = stack::producer(&p.kafka.brokers)?;
    let ctx = |v: Vec<(String, Vec<u8>)>| v.into_iter().map(|(k, v)| (Some(k), v));
    stack::produce_all(&producer, &topics.context_users, ctx(demo::context_users())).await?;
    stack::produce_all(&producer, &topics.context_teams, ctx(demo::context_teams())).await?;
    let burst = records(opts.burst_events.max(1), opts.seed.wrapping_add(1));
    let burst_n = burst.len() as u64;
    stack::produce_all(
        &producer,
        &topics.raw,
        burst.into_iter().map(|e| (e.key, e.value)),
    )
    .await?;

    let bin_dir = crate::procs::bin_dir()?;
    let mut children = Vec::new();
    for (w, a) in &worker_args {
        let name = w.binary_name();
        let log = opts.log_dir.join(format!("latency-{name}.log"));
        children.push((name, Child::spawn(&bin_dir.join(name), a, log)?));
    }
    // The paced publisher is a producer as the workers' are (their settings and send gate): a
    // plain idempotent librdkafka producer spins its broker thread while it waits for acks
    // (see `worker_runtime::kafka::gate`), which took 85% of a core at 2,200 records/s here and
    // left the pipeline the rest of this two-core machine.
    let publisher = worker_runtime::kafka::Producer::new(&kafka, "wb-latency-publisher")
        .context("the paced publisher")?;
    let outcome = measure(opts, &p, &ch, &publisher, &mut children, burst_n).await;
    for (_, c) in children {
        c.stop(Duration::from_secs(45)).await;
    }
    let _ = ch
        .query(&format!("DROP DATABASE IF EXISTS {db}"))
        .execute()
        .await;
    let mut report = outcome?;
    report["config"] = config;
    Ok(report)
}

fn ensure_alive(
    children: &mut [(&'static str, Child)],
    log_dir: &std::path::Path,
) -> anyhow::Result<()> {
    for (name, c) in children.iter_mut() {
        if let Some(status) = c.exited() {
            bail!(
                "{name} exited ({status}):\n{}",
                crate::procs::tail(&log_dir.join(format!("latency-{name}.log")), 30)
            );
        }
    }
    Ok(())
}

async fn measure(
    opts: &LatencyOptions,
    p: &Pipeline,
    ch: &clickhouse::Client,
    producer: &worker_runtime::kafka::Producer,
    children: &mut [(&'static str, Child)],
    burst_n: u64,
) -> anyhow::Result<Value> {
    let topics = p.kafka.topics();
    let db = &p.database;

    // 1. The maximum rate: rows stored and records chained between 10% and 90% of the burst.
    let monitor: BaseConsumer = p
        .kafka
        .client_config("wb-latency-monitor")
        .create()
        .context("monitor client")?;
    let chained_count = |m: &BaseConsumer| -> u64 {
        (0..opts.partitions)
            .filter_map(|part| {
                m.fetch_watermarks(&topics.chained, part, Duration::from_secs(10))
                    .ok()
            })
            .map(|(_, high)| high.max(0) as u64)
            .sum()
    };
    let start = Instant::now();
    let mut samples = Vec::new();
    let mut chained_samples = Vec::new();
    loop {
        let c = row_count(ch, db).await;
        samples.push((start.elapsed().as_secs_f64(), c));
        chained_samples.push((start.elapsed().as_secs_f64(), chained_count(&monitor)));
        if c >= burst_n {
            break;
        }
        ensure_alive(children, &opts.log_dir)?;
        if start.elapsed() > opts.timeout {
            bail!("the burst: {c} of {burst_n} rows after {:?}", opts.timeout);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let rows_rate = steady_rate(&samples, burst_n, 0.1, 0.9);
    let chained_rate = steady_rate(&chained_samples, burst_n, 0.1, 0.9);
    let max_rate = match (rows_rate, chained_rate) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    println!(
        "[worker-bench --latency] burst steady rates: ClickHouse rows {}/s, chained records {}/s",
        rows_rate.map_or_else(|| "-".into(), |r| format!("{r:.0}")),
        chained_rate.map_or_else(|| "-".into(), |r| format!("{r:.0}")),
    );
    let burst_secs = start.elapsed().as_secs_f64();
    let rate = match (opts.rate, max_rate) {
        (Some(r), _) => r,
        (None, Some(m)) => m * opts.fraction,
        (None, None) => bail!("no steady rate from the burst's samples {samples:?}"),
    };
    anyhow::ensure!(rate > 0.0, "rate {rate}");
    println!(
        "[worker-bench --latency] burst of {burst_n}: all rows in {burst_secs:.1} s, steady max {} rows/s; publishing at {rate:.0}/s for {} s",
        max_rate.map_or_else(|| "-".into(), |r| format!("{r:.0}")),
        opts.secs
    );

    // 2. Observers from the current state: the tracker from every partition's end, the
    //    ClickHouse poll above each partition's (complete) seq.
    let tracked = vec![
        topics.validated.clone(),
        topics.enriched.clone(),
        topics.chained.clone(),
    ];
    let consumer: BaseConsumer = p
        .kafka
        .client_config("wb-latency-tracker")
        .set("group.id", format!("{}.latency-tracker", p.ns))
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .set("fetch.wait.max.ms", "20")
        .create()
        .context("tracker consumer")?;
    let mut tpl = TopicPartitionList::new();
    for t in &tracked {
        for part in 0..opts.partitions {
            let (_, high) = consumer
                .fetch_watermarks(t, part, Duration::from_secs(10))
                .with_context(|| format!("watermarks of {t}/{part}"))?;
            tpl.add_partition_offset(t, part, Offset::Offset(high))?;
        }
    }
    consumer.assign(&tpl).context("assigning the tracker")?;
    let seen = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let tracker = {
        let (seen, stop) = (seen.clone(), stop.clone());
        std::thread::spawn(move || track(consumer, tracked, seen, stop))
    };

    let mut seqs = SeenSeqs::default();
    let per_part: Vec<(i32, i64)> = ch
        .query(&format!(
            "SELECT chain_partition, max(seq) FROM {db}.audit_events GROUP BY chain_partition"
        ))
        .fetch_all::<(i32, i64)>()
        .await?;
    for (part, max) in per_part {
        seqs.start(part, max);
    }
    let store = sink_archive::build_store(&p.archive_config().archive)
        .map_err(|e| anyhow::anyhow!("archive store: {e}"))?;
    let mut ranges = ArchiveRanges::default();

    // 3. The paced publish, observed as it goes.
    let n = ((rate * opts.secs).round() as usize).max(1);
    let events = records(n, opts.seed.wrapping_add(2));
    let index: HashMap<String, usize> = events
        .iter()
        .enumerate()
        .filter_map(|(i, e)| Some((e.event_id.clone()?, i)))
        .collect();
    anyhow::ensure!(
        index.len() == n,
        "{} distinct ids for {n} records",
        index.len()
    );
    let mut t: Vec<Timeline> = vec![Timeline::default(); n];
    let cpu_before: Vec<_> = children.iter().map(|(_, c)| procfs::cpu(&c.pid)).collect();
    // The publisher runs as a task of its own so that the observers' queries never delay it.
    let acks = Arc::new(Mutex::new(Vec::with_capacity(n)));
    let started = Instant::now();
    let publisher = {
        let (acks, producer, raw) = (acks.clone(), producer.clone(), topics.raw.clone());
        let records: Vec<(Option<String>, Vec<u8>)> =
            events.into_iter().map(|e| (e.key, e.value)).collect();
        tokio::spawn(publish(records, rate, raw, producer, acks, started))
    };
    let mut polls = 0u64;
    let mut last_poll = Instant::now() - opts.poll;
    let mut visible = HashSet::new();
    let want_archived = burst_n + n as u64;
    loop {
        // Observe.
        if last_poll.elapsed() >= opts.poll {
            last_poll = Instant::now();
            let at = now_us();
            let rows: Vec<(i32, i64, String)> = ch
                .query(&format!(
                    "SELECT chain_partition, seq, event_id FROM {db}.audit_events WHERE {}",
                    seqs.where_clause(opts.partitions)
                ))
                .fetch_all::<(i32, i64, String)>()
                .await
                .unwrap_or_default();
            for (part, seq, id) in rows {
                if seqs.insert(part, seq) {
                    if let Some(&i) = index.get(&id) {
                        t[i].queryable.get_or_insert(at);
                        visible.insert(i);
                    }
                }
            }
            if polls % 5 == 0 {
                list_manifests(&store, &mut ranges, now_us()).await?;
                ensure_alive(children, &opts.log_dir)?;
            }
            polls += 1;
            if publisher.is_finished() && visible.len() == n && ranges.events() >= want_archived {
                break;
            }
        }
        if started.elapsed() > opts.timeout + Duration::from_secs_f64(opts.secs) {
            bail!(
                "after {:?}: {} of {n} queryable, {} of {want_archived} archived",
                started.elapsed(),
                visible.len(),
                ranges.events()
            );
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let cpu_after: Vec<_> = children.iter().map(|(_, c)| procfs::cpu(&c.pid)).collect();
    let wall = started.elapsed().as_secs_f64();
    let (sent, published_at) = publisher.await??;
    for (i, at) in sent.into_iter().enumerate() {
        t[i].sent = Some(at);
    }
    stop.store(true, Ordering::Relaxed);
    let _ = tokio::task::spawn_blocking(move || tracker.join()).await;

    for (i, at) in acks.lock().map(|a| a.clone()).unwrap_or_default() {
        t[i].acked = Some(at);
    }
    let seen = std::mem::take(&mut *seen.lock().map_err(|_| anyhow::anyhow!("poisoned"))?);
    for s in seen {
        let Some(&i) = index.get(&s.event_id) else {
            continue;
        };
        let tl = &mut t[i];
        match s.topic {
            0 => tl.validated = tl.validated.or(s.ts_ms.map(|m| m * 1000)),
            1 => tl.enriched = tl.enriched.or(s.ts_ms.map(|m| m * 1000)),
            _ => {
                tl.chained = tl.chained.or(Some(s.arrival_us));
                tl.chain = tl.chain.or(s.chain);
            }
        }
    }
    for tl in &mut t {
        if let Some((part, seq)) = tl.chain {
            tl.archived = ranges.archived_at(part, seq);
        }
    }

    let paths = summarise(&t, PATHS);
    let hops = summarise(&t, HOPS);
    let actual_rate = n as f64 / published_at.max(1e-9);
    print_table(rate, max_rate, n, &paths, &hops);
    let names: Vec<&str> = children.iter().map(|(n, _)| *n).collect();
    let cpu: Vec<Value> = names
        .iter()
        .zip(cpu_before.iter().zip(&cpu_after))
        .map(|(name, (b, a))| {
            let used = a.zip(*b).map(|(a, b)| a.since(&b).total());
            json!({"worker": name, "cpu_share_of_one_core": used.map(|u| u / wall),
                   "cpu_us_per_event": used.map(|u| u * 1e6 / n as f64)})
        })
        .collect();
    let as_json = |v: &[(&str, Option<Summary>)]| {
        v.iter()
            .map(|(k, s)| json!({"path": k, "ms": s.map(Summary::to_json)}))
            .collect::<Vec<_>>()
    };
    Ok(json!({
        "burst_events": burst_n,
        "burst_secs_to_all_rows": (samples.last().map(|s| s.0)),
        "max_rows_per_sec": max_rate,
        "burst_rows_per_sec": rows_rate,
        "burst_chained_per_sec": chained_rate,
        "fraction": opts.fraction,
        "rate_target": rate,
        "rate_achieved": actual_rate,
        "events": n,
        "secs": opts.secs,
        "latency_ms": as_json(&paths),
        "hops_ms": as_json(&hops),
        "workers_cpu_during_paced_phase": cpu,
        "clickhouse_polls": polls,
    }))
}

/// Publishes `records` at `rate` per second from `started` (every 5 ms tick, what is due);
/// returns each record's send time and when the last was sent (seconds after `started`).
/// Acknowledgement times go to `acks` as (index, µs) from a task per record.
async fn publish(
    records: Vec<(Option<String>, Vec<u8>)>,
    rate: f64,
    topic: String,
    producer: worker_runtime::kafka::Producer,
    acks: Arc<Mutex<Vec<(usize, i64)>>>,
    started: Instant,
) -> anyhow::Result<(Vec<i64>, f64)> {
    let n = records.len();
    let mut sent = vec![0i64; n];
    let mut pending = Vec::with_capacity(n);
    let mut next = 0usize;
    let mut tick = tokio::time::interval(Duration::from_millis(5));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    while next < n {
        tick.tick().await;
        let due = ((started.elapsed().as_secs_f64() * rate) as usize).min(n);
        while next < due {
            let (key, value) = &records[next];
            sent[next] = now_us();
            // Waits (in the send gate) while a wave of the partition's records is unacknowledged,
            // as a worker's sends do: that wait is part of send → ack.
            let delivery = producer
                .enqueue_parts(SendParts {
                    topic: &topic,
                    key: key.as_deref().map(str::as_bytes),
                    payload: Some(value.into()),
                    ..SendParts::default()
                })
                .await
                .with_context(|| format!("producing to {topic}"))?;
            let (acks, i) = (acks.clone(), next);
            pending.push(tokio::spawn(async move {
                if let Ok(Ok(_)) = delivery.await {
                    let at = now_us();
                    if let Ok(mut a) = acks.lock() {
                        a.push((i, at));
                    }
                }
            }));
            next += 1;
        }
    }
    let published_at = started.elapsed().as_secs_f64();
    for h in pending {
        let _ = h.await;
    }
    Ok((sent, published_at))
}

fn cell(s: Option<Summary>, f: fn(&Summary) -> f64) -> String {
    s.map_or_else(|| "-".into(), |s| format!("{:.0}", f(&s)))
}

fn print_table(
    rate: f64,
    max: Option<f64>,
    n: usize,
    paths: &[(&str, Option<Summary>)],
    hops: &[(&str, Option<Summary>)],
) {
    println!(
        "\nLatency at {rate:.0} events/s (max {} rows/s), {n} events, ms:",
        max.map_or_else(|| "-".into(), |m| format!("{m:.0}"))
    );
    println!("| path | n | p50 | p90 | p99 | max |");
    println!("|---|---|---|---|---|---|");
    for (name, s) in paths.iter().chain(hops) {
        println!(
            "| {name} | {} | {} | {} | {} | {} |",
            s.map_or(0, |s| s.n),
            cell(*s, |s| s.p50),
            cell(*s, |s| s.p90),
            cell(*s, |s| s.p99),
            cell(*s, |s| s.max),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        let s = Summary::of(v).expect("non-empty");
        assert_eq!((s.p50, s.p90, s.p99, s.max), (50.0, 90.0, 99.0, 100.0));
        assert!((s.mean - 50.5).abs() < 1e-9);
        // Order does not matter; one sample is every percentile; NaN is dropped.
        let s = Summary::of(vec![3.0, f64::NAN, 1.0, 2.0]).expect("non-empty");
        assert_eq!((s.n, s.p50, s.p99, s.max), (3, 2.0, 3.0, 3.0));
        let s = Summary::of(vec![7.0]).expect("non-empty");
        assert_eq!((s.p50, s.p99), (7.0, 7.0));
        assert_eq!(Summary::of(Vec::new()), None);
        // p99 of 10 samples is the largest (rank ceil(9.9) = 10), not an interpolation.
        let ten: Vec<f64> = (1..=10).map(f64::from).collect();
        assert_eq!(nearest_rank(&ten, 99.0), Some(10.0));
        assert_eq!(nearest_rank(&ten, 50.0), Some(5.0));
    }

    #[test]
    fn steady_rate_skips_start_and_tail() {
        // Nothing for 2 s (group joins), then 100/s, then a slow tail.
        let mut s = vec![(0.0, 0), (1.0, 0), (2.0, 0)];
        s.extend((1..=10).map(|i| (2.0 + f64::from(i), 100 * i as u64)));
        s.push((20.0, 1000));
        assert_eq!(steady_rate(&s, 1000, 0.1, 0.9), Some(100.0));
        // Never reaching 90%: no rate.
        assert_eq!(steady_rate(&s[..8], 1000, 0.1, 0.9), None);
    }

    #[test]
    fn set_flag_replaces_or_appends() {
        let mut a: Vec<String> = ["--x", "1", "--segment-max-age-secs", "1"]
            .map(String::from)
            .to_vec();
        set_flag(&mut a, "--segment-max-age-secs", "30");
        assert_eq!(a, ["--x", "1", "--segment-max-age-secs", "30"]);
        set_flag(&mut a, "--batch-max-age-ms", "200");
        assert_eq!(a[4..], ["--batch-max-age-ms", "200"]);
    }

    #[test]
    fn archived_at_is_the_first_listing_of_a_covering_manifest() {
        let mut r = ArchiveRanges::default();
        r.saw(0, 1, 100, 5_000);
        r.saw(0, 101, 150, 9_000);
        r.saw(0, 1, 100, 7_000); // listed again later: the first listing stands
        r.saw(1, 1, 10, 1_000);
        assert_eq!(r.archived_at(0, 1), Some(5_000));
        assert_eq!(r.archived_at(0, 100), Some(5_000));
        assert_eq!(r.archived_at(0, 101), Some(9_000));
        assert_eq!(r.archived_at(0, 151), None);
        assert_eq!(r.archived_at(1, 5), Some(1_000));
        assert_eq!(r.archived_at(2, 5), None);
        assert_eq!(r.events(), 160);
    }

    #[test]
    fn seen_seqs_survive_out_of_order_inserts() {
        let mut s = SeenSeqs::default();
        s.start(0, 10);
        assert!(!s.insert(0, 10), "at or below the start: already stored");
        assert!(s.insert(0, 13));
        assert!(s.insert(0, 12));
        // 11 missing: the clause still asks for everything above 10.
        assert_eq!(
            s.where_clause(2),
            "(chain_partition = 0 AND seq > 10) OR (chain_partition = 1 AND seq > 0)"
        );
        assert!(!s.insert(0, 13), "seen twice");
        assert!(s.insert(0, 11));
        assert!(s.where_clause(1).contains("seq > 13"));
        assert!(s.insert(1, 1));
        assert!(s
            .where_clause(2)
            .ends_with("(chain_partition = 1 AND seq > 1)"));
    }

    #[test]
    fn hops_and_paths_from_a_timeline() {
        let t = Timeline {
            sent: Some(1_000_000),
            acked: Some(1_010_000),
            validated: Some(1_060_000),
            enriched: Some(1_120_000),
            chained: Some(1_200_000),
            chain: Some((0, 1)),
            queryable: Some(2_200_000),
            archived: None,
        };
        let p = summarise(std::slice::from_ref(&t), PATHS);
        assert_eq!(p[0].1.map(|s| s.p50), Some(1190.0));
        assert_eq!(p[1].1, None, "not archived: no sample");
        assert_eq!(p[2].1.map(|s| s.p99), Some(1200.0));
        let h = summarise(&[t], HOPS);
        let p50: Vec<Option<f64>> = h.iter().map(|(_, s)| s.map(|s| s.p50)).collect();
        assert_eq!(
            p50,
            [
                Some(10.0),
                Some(60.0),
                Some(60.0),
                Some(80.0),
                Some(1000.0),
                None
            ]
        );
    }
}
