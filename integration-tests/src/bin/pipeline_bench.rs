//! Pipeline throughput against the running local stack, as ratios to the raw broker rate
//! measured in the same run (these machines are noisy; the broker is the ceiling).
//!
//! ```sh
//! source deploy/local/env.sh && deploy/local/stack.sh status
//! cargo run --release -p integration-tests --bin pipeline-bench -- --events 20000
//! ```
//!
//! 1. Baseline: N records with the same keys and bytes as the realistic raw events (the demo
//!    lifecycle, ~700 B of JSON each) produced to a fresh topic with the workers' producer
//!    settings, then consumed with the workers' consumer settings (rdkafka directly).
//! 2. Pipeline: the same N raw events published to a fresh `<prefix>raw` (plus the identity
//!    context), then the five workers started in-process (the `run` their binaries call) and
//!    each stage boundary watched until it holds N: `validated`, `enriched`, `chained` (topic
//!    high watermarks), rows in ClickHouse, events in archive manifests.
//! 3. Peak RSS of this process (`VmHWM`), which holds all five workers.
//!
//! Rates are N / (time from start until the boundary holds N), start being the subscribe call
//! for the baseline consumer and the workers' start for the pipeline (both include consumer
//! group joins); "first→all" is N / (time from the first record seen there until N), i.e. the
//! steady rate without start-up. Nothing here asserts a time.

use anyhow::{bail, Context as _};
use clap::Parser;
use futures::TryStreamExt as _;
use integration_tests::harness::Pipeline;
use integration_tests::{demo, stack};
use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::producer::FutureProducer;
use rdkafka::ClientConfig;
use std::sync::Arc;
use std::time::{Duration, Instant};
use worker_runtime::kafka::admin::{ensure_topics, TopicSpec};
use worker_runtime::kafka::KafkaArgs;

#[derive(Debug, Parser)]
#[command(
    about = "Measure pipeline throughput against the local stack, relative to the raw broker rate"
)]
struct Args {
    /// Number of events (raw records) per measurement.
    #[arg(long, default_value_t = 20_000)]
    events: usize,
    /// Partitions of every topic.
    #[arg(long, default_value_t = 4)]
    partitions: i32,
    /// Give up waiting for the pipeline after this many seconds.
    #[arg(long, default_value_t = 600)]
    timeout_secs: u64,
    /// Seed of the event generator.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Keep the run's ClickHouse database (dropped by default).
    #[arg(long)]
    keep: bool,
}

/// Where a stage boundary stands: when it saw its first record and when it held all N.
#[derive(Debug, Clone, Copy, Default)]
struct Mark {
    count: u64,
    first: Option<Duration>,
    all: Option<Duration>,
}

impl Mark {
    fn update(&mut self, count: u64, n: u64, at: Duration) {
        self.count = count;
        if count > 0 && self.first.is_none() {
            self.first = Some(at);
        }
        if count >= n && self.all.is_none() {
            self.all = Some(at);
        }
    }
}

/// One table line.
struct Line {
    what: String,
    first: Option<Duration>,
    all: Option<Duration>,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 4)]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(
        args.events > 0 && args.partitions > 0,
        "--events and --partitions must be > 0"
    );
    worker_runtime::telemetry::init_for_tests();
    let n = args.events as u64;

    // The realistic stream: 5–6 events per request; take exactly N.
    let now_us = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .context("clock before 1970")?
        .as_micros() as i64;
    let mut events = demo::lifecycle(args.events / 5 + 1, args.seed, now_us - 3_600_000_000);
    events.truncate(args.events);
    anyhow::ensure!(
        events.len() == args.events,
        "generator gave {} events",
        events.len()
    );
    let records: Vec<(Option<String>, Vec<u8>)> = events
        .iter()
        .map(|e| (e.key.clone(), e.value.clone()))
        .collect();
    let bytes: usize = records.iter().map(|r| r.1.len()).sum();
    let (min, max) = records
        .iter()
        .map(|r| r.1.len())
        .fold((usize::MAX, 0), |(a, b), l| (a.min(l), b.max(l)));

    // The workers with their production defaults (not the tests' short batch/checkpoint ages).
    let p = Pipeline::new("pbench", args.partitions)
        .await?
        .production_defaults();
    println!(
        "pipeline-bench: {n} events, raw JSON {min}..{max} B (mean {} B), {} partitions, prefix {}",
        bytes / records.len(),
        args.partitions,
        p.kafka.topic_prefix
    );

    // ---- 1. baseline: the broker alone -----------------------------------------------------
    let baseline_topic = format!("{}baseline", p.kafka.topic_prefix);
    ensure_topics(
        &p.kafka,
        &[TopicSpec {
            name: baseline_topic.clone(),
            partitions: args.partitions,
            compacted: false,
        }],
        1,
    )
    .await
    .context("creating the baseline topic")?;
    let producer: FutureProducer = worker_producer_config(&p.kafka, "bench-baseline")
        .create()
        .context("baseline producer")?;
    let stack_pids = StackPids::read();
    let cpu_baseline_start = stack_pids.cpu();
    let t = Instant::now();
    stack::produce_all(&producer, &baseline_topic, records.iter().cloned()).await?;
    let produce = t.elapsed();
    drop(producer);
    let (consume_first, consume_all) = consume_baseline(&p.kafka, &baseline_topic, n).await?;
    let cpu_baseline = stack_pids.cpu().since(&cpu_baseline_start);
    let hwm_baseline = vm_kb("VmHWM");

    // ---- 2. the pipeline ---------------------------------------------------------------------
    let topics = p.kafka.topics();
    let test_producer = stack::producer(&p.kafka.brokers)?;
    let ctx = |v: Vec<(String, Vec<u8>)>| v.into_iter().map(|(k, v)| (Some(k), v));
    stack::produce_all(
        &test_producer,
        &topics.context_users,
        ctx(demo::context_users()),
    )
    .await?;
    stack::produce_all(
        &test_producer,
        &topics.context_teams,
        ctx(demo::context_teams()),
    )
    .await?;
    let t = Instant::now();
    stack::produce_all(&test_producer, &topics.raw, records.iter().cloned()).await?;
    let publish = t.elapsed();
    drop(test_producer);

    let cpu_pipeline_start = stack_pids.cpu();
    let start = Instant::now();
    let workers = vec![
        p.start_ingest(),
        p.start_enrich(),
        p.start_chainer(),
        p.start_sink_clickhouse(),
        p.start_sink_archive(),
    ];
    let monitor: Arc<BaseConsumer> = Arc::new(
        p.kafka
            .client_config("bench-monitor")
            .create()
            .context("monitor client")?,
    );
    let ch = p.clickhouse();
    let archive = sink_archive::build_store(&p.archive_config().archive)
        .map_err(|e| anyhow::anyhow!("archive store: {e}"))?;
    let deadline = Duration::from_secs(args.timeout_secs);
    let stage_topics = [
        topics.validated.clone(),
        topics.enriched.clone(),
        topics.chained.clone(),
    ];
    let mut marks = [Mark::default(); 5];
    let mut tick = 0u64;
    let mut failure = None;
    loop {
        let at = start.elapsed();
        let hw = {
            let (m, ts, parts) = (monitor.clone(), stage_topics.clone(), args.partitions);
            tokio::task::spawn_blocking(move || high_watermarks(&m, &ts, parts)).await??
        };
        for (i, c) in hw.into_iter().enumerate() {
            marks[i].update(c, n, at);
        }
        let rows = ch
            .query("SELECT count() FROM audit_events")
            .fetch_one::<u64>()
            .await
            .unwrap_or(0);
        marks[3].update(rows, n, at);
        if tick % 4 == 0 || marks[4].first.is_some() {
            marks[4].update(archived(&archive).await.unwrap_or(0), n, at);
        }
        tick += 1;
        if marks.iter().all(|m| m.all.is_some()) {
            break;
        }
        if let Some(w) = workers.iter().find(|w| w.task.is_finished()) {
            failure = Some(format!("worker {} exited early", w.name));
            break;
        }
        if at > deadline {
            failure = Some(format!("timed out after {deadline:?}"));
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let cpu_pipeline = stack_pids.cpu().since(&cpu_pipeline_start);
    let per_partition = {
        let (m, t, parts) = (monitor.clone(), topics.chained.clone(), args.partitions);
        tokio::task::spawn_blocking(move || {
            (0..parts)
                .map(|p| {
                    m.fetch_watermarks(&t, p, Duration::from_secs(10))
                        .map_or(-1, |w| w.1)
                })
                .collect::<Vec<i64>>()
        })
        .await?
    };
    let hwm_end = vm_kb("VmHWM");
    let rss_end = vm_kb("VmRSS");
    let mut stop_errors = Vec::new();
    for w in workers {
        let name = w.name;
        if let Err(e) = w.stop().await {
            stop_errors.push(format!("{name}: {e:#}"));
        }
    }

    // ---- 3. report -------------------------------------------------------------------------
    let raw_consume = rate(n, Some(consume_all));
    let lines = [
        Line {
            what: "baseline: raw produce (worker producer)".into(),
            first: None,
            all: Some(produce),
        },
        Line {
            what: "baseline: raw consume (worker consumer)".into(),
            first: Some(consume_first),
            all: Some(consume_all),
        },
        Line {
            what: "publish raw events (test producer)".into(),
            first: None,
            all: Some(publish),
        },
        Line {
            what: "ingest → validated".into(),
            first: marks[0].first,
            all: marks[0].all,
        },
        Line {
            what: "enrich → enriched".into(),
            first: marks[1].first,
            all: marks[1].all,
        },
        Line {
            what: "chainer → chained".into(),
            first: marks[2].first,
            all: marks[2].all,
        },
        Line {
            what: "sink-clickhouse → rows".into(),
            first: marks[3].first,
            all: marks[3].all,
        },
        Line {
            what: "sink-archive → segments".into(),
            first: marks[4].first,
            all: marks[4].all,
        },
    ];
    println!(
        "{:<42} {:>8} {:>8} {:>9} {:>8} {:>11} {:>8}",
        "stage boundary", "first s", "all N s", "events/s", "×consume", "first→all/s", "×consume"
    );
    for l in &lines {
        let r = rate(n, l.all);
        let steady = match (l.first, l.all) {
            (Some(f), Some(a)) if a > f => rate(n, Some(a - f)),
            _ => None,
        };
        let steady_base = rate(n, Some(consume_all.saturating_sub(consume_first)));
        println!(
            "{:<42} {:>8} {:>8} {:>9} {:>8} {:>11} {:>8}",
            l.what,
            secs(l.first),
            secs(l.all),
            num(r),
            ratio(r, raw_consume),
            num(steady),
            ratio(steady, steady_base),
        );
    }
    // Issue 10's whole-pipeline target: a raw hop (produce N, then consume them) runs at
    // N / (produce + consume); each event crosses the broker in three such hops before it is
    // chained (raw → validated → enriched → chained) and is read once more by each sink, so the
    // pipeline's rate to rows should be at least 0.8 × hop rate ÷ 3.
    let hop = rate(n, Some(produce + consume_all));
    let target = hop.map(|h| 0.8 * h / 3.0);
    let to_rows = rate(n, marks[3].all);
    let to_archive = rate(n, marks[4].all);
    println!(
        "whole pipeline vs the raw hop rate ({} ev/s) ÷ 3 Kafka hops: rows {} ev/s = {} of it, archive {} ev/s = {} (target ≥ 0.80, i.e. ≥ {} ev/s)",
        num(hop),
        num(to_rows),
        ratio(to_rows, hop.map(|h| h / 3.0)),
        num(to_archive),
        ratio(to_archive, hop.map(|h| h / 3.0)),
        num(target),
    );
    println!(
        "rows in ClickHouse: {} (of {n}); archived: {}; chained per partition (keys are team ids): {per_partition:?}",
        marks[3].count, marks[4].count,
    );
    println!(
        "CPU µs per event — baseline (produce + consume, {:.1} s wall): {}; pipeline ({:.1} s wall): {}",
        (produce + consume_all).as_secs_f64(),
        cpu_baseline.per_event(n),
        marks.iter().filter_map(|m| m.all).max().unwrap_or_default().as_secs_f64(),
        cpu_pipeline.per_event(n),
    );
    println!(
        "memory: peak RSS (VmHWM) {} after the baseline, {} at the end (all five workers in this process); RSS at the end {}",
        mb(hwm_baseline),
        mb(hwm_end),
        mb(rss_end),
    );

    if !args.keep {
        let _ = p
            .clickhouse()
            .query(&format!("DROP DATABASE IF EXISTS {}", p.database))
            .execute()
            .await;
    }
    if let Some(f) = failure {
        bail!(
            "pipeline did not deliver all {n} events: {f}; stages at {:?}",
            marks.map(|m| m.count)
        );
    }
    if marks[3].count != n {
        bail!("ClickHouse holds {} rows for {n} events", marks[3].count);
    }
    if !stop_errors.is_empty() {
        bail!("workers failed to stop: {}", stop_errors.join("; "));
    }
    Ok(())
}

// ---- baseline --------------------------------------------------------------------------------

/// The workers' producer settings.
fn worker_producer_config(kafka: &KafkaArgs, client_id: &str) -> ClientConfig {
    worker_runtime::kafka::Producer::client_config(kafka, client_id)
}

/// Reads `n` records of `topic` with a fresh group and the workers' consumer settings; returns
/// the time from subscribing to the first record and to the n-th.
async fn consume_baseline(
    kafka: &KafkaArgs,
    topic: &str,
    n: u64,
) -> anyhow::Result<(Duration, Duration)> {
    let consumer: StreamConsumer = kafka
        .client_config("bench-baseline-consumer")
        .set("group.id", stack::unique("bench_baseline"))
        .set("enable.auto.commit", "true")
        .set("auto.commit.interval.ms", "1000")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("isolation.level", "read_committed")
        .set("enable.partition.eof", "false")
        .create()
        .context("baseline consumer")?;
    let t = Instant::now();
    consumer.subscribe(&[topic])?;
    let mut first = None;
    let mut count = 0u64;
    while count < n {
        let m = tokio::time::timeout(Duration::from_secs(60), consumer.recv())
            .await
            .with_context(|| format!("baseline consume stalled at {count} of {n}"))??;
        std::hint::black_box(&m);
        first.get_or_insert_with(|| t.elapsed());
        count += 1;
    }
    let all = t.elapsed();
    consumer.unsubscribe();
    Ok((first.unwrap_or(all), all))
}

// ---- watching the stages -----------------------------------------------------------------------

/// Sum over partitions of each topic's high watermark (no transactions, so = records written).
fn high_watermarks(
    c: &BaseConsumer,
    topics: &[String],
    partitions: i32,
) -> anyhow::Result<Vec<u64>> {
    topics
        .iter()
        .map(|t| {
            (0..partitions).try_fold(0u64, |acc, p| {
                let (_, high) = c
                    .fetch_watermarks(t, p, Duration::from_secs(10))
                    .with_context(|| format!("watermarks of {t}/{p}"))?;
                Ok(acc + high.max(0) as u64)
            })
        })
        .collect()
}

/// Events covered by the archive's manifests.
async fn archived(store: &Arc<dyn object_store::ObjectStore>) -> anyhow::Result<u64> {
    let objects: Vec<object_store::ObjectMeta> = store.list(None).try_collect().await?;
    Ok(objects
        .iter()
        .filter_map(|o| schemas::segment::parse_key(o.location.as_ref()))
        .filter(|(_, kind)| *kind == schemas::segment::ObjectKind::Manifest)
        .map(|(k, _)| k.len())
        .sum())
}

// ---- figures -----------------------------------------------------------------------------------

fn rate(n: u64, d: Option<Duration>) -> Option<f64> {
    d.filter(|d| !d.is_zero())
        .map(|d| n as f64 / d.as_secs_f64())
}

fn ratio(r: Option<f64>, base: Option<f64>) -> String {
    match (r, base) {
        (Some(r), Some(b)) if b > 0.0 => format!("{:.2}", r / b),
        _ => "-".into(),
    }
}

fn num(r: Option<f64>) -> String {
    r.map_or_else(|| "-".into(), |r| format!("{r:.0}"))
}

fn secs(d: Option<Duration>) -> String {
    d.map_or_else(|| "-".into(), |d| format!("{:.2}", d.as_secs_f64()))
}

fn mb(kb: Option<u64>) -> String {
    kb.map_or_else(|| "?".into(), |kb| format!("{:.0} MB", kb as f64 / 1024.0))
}

/// A `Vm*` line of /proc/self/status, in kB.
fn vm_kb(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// User + system CPU seconds of a process (/proc/<pid>/stat, USER_HZ = 100 on Linux).
fn cpu_secs(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which is in parentheses and may hold spaces).
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 12 and 13 after the name.
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / 100.0)
}

/// This process and the local stack's services (pid files of `deploy/local/stack.sh`).
struct StackPids(Vec<(&'static str, String)>);

impl StackPids {
    fn read() -> Self {
        let dir = std::env::var("AUDIT_STACK_DIR").unwrap_or_else(|_| ".local".into());
        let mut v = vec![("bench process (5 workers)", "self".to_owned())];
        for (name, file) in [
            ("broker", "kafka"),
            ("ClickHouse", "clickhouse"),
            ("S3", "s3"),
        ] {
            if let Ok(pid) = std::fs::read_to_string(format!("{dir}/run/{file}.pid")) {
                v.push((name, pid.trim().to_owned()));
            }
        }
        StackPids(v)
    }

    fn cpu(&self) -> Cpu {
        Cpu(self
            .0
            .iter()
            .map(|(name, pid)| (*name, cpu_secs(pid)))
            .collect())
    }
}

/// CPU seconds per process.
struct Cpu(Vec<(&'static str, Option<f64>)>);

impl Cpu {
    fn since(&self, before: &Cpu) -> Cpu {
        Cpu(self
            .0
            .iter()
            .zip(&before.0)
            .map(|((name, a), (_, b))| (*name, a.zip(*b).map(|(a, b)| a - b)))
            .collect())
    }

    fn per_event(&self, n: u64) -> String {
        let parts: Vec<String> = self
            .0
            .iter()
            .filter_map(|(name, s)| s.map(|s| format!("{name} {:.0}", s * 1e6 / n as f64)))
            .collect();
        let total: f64 = self.0.iter().filter_map(|(_, s)| *s).sum();
        format!("{} (total {:.0})", parts.join(", "), total * 1e6 / n as f64)
    }
}
