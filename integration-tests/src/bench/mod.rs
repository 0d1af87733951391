//! The per-worker bench (issue 10): each worker's release binary alone as a process on a
//! pre-filled input, against the raw path of its hop on the same records and broker
//! ([`raw`]), both measured the same way: time from spawn until the output holds N, CPU
//! user/system from `/proc/<pid>/stat` and peak RSS (`VmHWM`) read just before the process is
//! stopped, plus the broker's CPU over the same span.
//!
//! The stages run in pipeline order, each on the previous one's output: ingest reads the demo
//! lifecycle's raw JSON (published first), enrich the `validated` ingest wrote, the chainer the
//! `enriched`, both sinks the `chained`. Each raw hop runs just before its worker, on the same
//! input topic with a group of its own.

pub mod inproc;
pub mod latency;
pub mod procfs;
pub mod raw;

use crate::harness::Pipeline;
use crate::procs::Worker;
use crate::{demo, stack};
use anyhow::{bail, Context as _};
use futures::TryStreamExt as _;
use procfs::CpuTimes;
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};
use worker_runtime::kafka::admin::{ensure_topics, TopicSpec};

/// What the caller chose.
#[derive(Debug, Clone)]
pub struct Options {
    pub events: usize,
    pub partitions: i32,
    pub seed: u64,
    /// How long one process may take to store N.
    pub timeout: Duration,
    /// Where the processes' logs go.
    pub log_dir: PathBuf,
    /// The worker to record with `perf record` while it runs, and the output file.
    pub perf: Option<(Worker, PathBuf)>,
    /// perf's call-graph mode: `fp` (small files; librdkafka's C frames) or `dwarf` (Rust's
    /// inlined frames too, at megabytes per second).
    pub perf_call_graph: String,
    /// perf's sampling frequency, Hz.
    pub perf_freq: u32,
    /// The broker's pid file (its CPU is reported beside each process's).
    pub broker_pid_file: PathBuf,
    /// librdkafka properties (`key=value`) given to every worker and raw path on top of the
    /// workers' own (to try a setting on both sides before changing the workers' defaults).
    pub kafka_properties: Vec<String>,
}

/// One process measured.
#[derive(Debug, Clone, Default)]
pub struct Measure {
    /// Seconds from spawn until its output held N (`None`: it never did).
    pub all: Option<f64>,
    /// Seconds from spawn until its first output.
    pub first: Option<f64>,
    pub cpu: CpuTimes,
    pub peak_rss_kb: Option<u64>,
    /// The broker's CPU over the same span.
    pub broker_cpu: Option<f64>,
    /// Output records when it was stopped.
    pub stored: u64,
    /// CPU over the middle of the run (see [`Window`]).
    pub window: Window,
}

/// CPU per output record between the first poll at which the output held ≥ 10% of N and the
/// first at which it held ≥ 90%: the steady state, without start-up (a Python interpreter's
/// imports, a worker's recovery and group join) and without the tail. Whole-life CPU over a
/// small N is mostly start-up for some processes (the Python pass-through: ~25 µs/event at
/// 20,000 records, ~12 at 60,000), which skews ratios between processes.
///
/// A window of fewer than [`Window::MIN_POLLS`] polls gives nothing: a sink's output grows in
/// whole batches or segments, so its count can jump from under 10% to over 90% while the work
/// was done before the window opened.
#[derive(Debug, Clone, Copy, Default)]
pub struct Window {
    start: Option<(u64, CpuTimes)>,
    end: Option<(u64, CpuTimes)>,
    polls: u32,
}

impl Window {
    /// A poll: `stored` output records so far, the process's `cpu` so far.
    pub fn observe(&mut self, n: u64, stored: u64, cpu: Option<CpuTimes>) {
        let Some(cpu) = cpu else { return };
        if self.start.is_none() && stored * 10 >= n {
            self.start = Some((stored, cpu));
        } else if self.start.is_some() && self.end.is_none() {
            self.polls += 1;
            if stored * 10 >= n * 9 {
                self.end = Some((stored, cpu));
            }
        }
    }

    /// Polls a window must span to count (about half a second at the bench's 100 ms).
    pub const MIN_POLLS: u32 = 5;

    /// CPU seconds per output record in the window (`None`: it never closed, or was empty).
    pub fn per_record(&self) -> Option<CpuTimes> {
        if self.polls < Self::MIN_POLLS {
            return None;
        }
        let ((a, ca), (b, cb)) = (self.start?, self.end?);
        let records = b.checked_sub(a).filter(|r| *r > 0)? as f64;
        let d = cb.since(&ca);
        Some(CpuTimes {
            user: d.user / records,
            sys: d.sys / records,
        })
    }
}

impl Measure {
    fn rate(&self, n: u64) -> Option<f64> {
        self.all.filter(|s| *s > 0.0).map(|s| n as f64 / s)
    }

    /// Steady-state CPU µs per record ([`Window`]).
    fn steady_cpu(&self) -> Option<f64> {
        self.window.per_record().map(|c| c.total() * 1e6)
    }

    /// N over the time from the first output to the N-th: the rate without start-up.
    fn steady_rate(&self, n: u64) -> Option<f64> {
        match (self.first, self.all) {
            (Some(f), Some(a)) if a > f => Some(n as f64 / (a - f)),
            _ => None,
        }
    }

    fn to_json(&self, n: u64) -> Value {
        let per = |s: f64| s * 1e6 / n as f64;
        json!({
            "secs_to_all": self.all,
            "secs_to_first": self.first,
            "events_per_sec": self.rate(n),
            "steady_events_per_sec": self.steady_rate(n),
            "cpu_user_us_per_event": per(self.cpu.user),
            "cpu_sys_us_per_event": per(self.cpu.sys),
            "cpu_us_per_event": per(self.cpu.total()),
            "peak_rss_mb": self.peak_rss_kb.map(|kb| kb as f64 / 1024.0),
            "broker_cpu_us_per_event": self.broker_cpu.map(per),
            "steady_cpu_user_us_per_event": self.window.per_record().map(|c| c.user * 1e6),
            "steady_cpu_sys_us_per_event": self.window.per_record().map(|c| c.sys * 1e6),
            "steady_cpu_us_per_event": self.steady_cpu(),
            "stored": self.stored,
        })
    }
}

/// How the bench counts a stage's output.
enum Output {
    Topic(String),
    Rows { database: String, table: String },
    Archive(Arc<dyn object_store::ObjectStore>),
    RawObjects(Arc<dyn object_store::ObjectStore>),
}

struct Counter {
    monitor: Arc<BaseConsumer>,
    partitions: i32,
}

impl Counter {
    async fn count(&self, out: &Output) -> anyhow::Result<u64> {
        match out {
            Output::Topic(t) => {
                let (m, t, parts) = (self.monitor.clone(), t.clone(), self.partitions);
                tokio::task::spawn_blocking(move || {
                    (0..parts).try_fold(0u64, |acc, p| {
                        let (_, high) = m
                            .fetch_watermarks(&t, p, Duration::from_secs(10))
                            .with_context(|| format!("watermarks of {t}/{p}"))?;
                        Ok(acc + high.max(0) as u64)
                    })
                })
                .await?
            }
            Output::Rows { database, table } => {
                let ch = clickhouse::Client::default()
                    .with_url(stack::clickhouse_url())
                    .with_validation(false);
                // A table not created yet holds nothing.
                Ok(ch
                    .query(&format!("SELECT count() FROM {database}.{table}"))
                    .fetch_one::<u64>()
                    .await
                    .unwrap_or(0))
            }
            Output::Archive(store) => {
                let objects: Vec<object_store::ObjectMeta> = store.list(None).try_collect().await?;
                Ok(objects
                    .iter()
                    .filter_map(|o| schemas::segment::parse_key(o.location.as_ref()))
                    .filter(|(_, kind)| *kind == schemas::segment::ObjectKind::Manifest)
                    .map(|(k, _)| k.len())
                    .sum())
            }
            Output::RawObjects(store) => {
                let objects: Vec<object_store::ObjectMeta> = store.list(None).try_collect().await?;
                Ok(raw::raw_objects_count(
                    objects.into_iter().map(|o| o.location.to_string()),
                ))
            }
        }
    }
}

/// A process the bench started; killed when dropped.
struct Child {
    child: tokio::process::Child,
    pid: String,
}

impl Child {
    fn spawn(bin: &Path, args: &[String], log: PathBuf) -> anyhow::Result<Child> {
        let file = std::fs::File::create(&log)
            .with_context(|| format!("creating log file {}", log.display()))?;
        let child = tokio::process::Command::new(bin)
            .args(args)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::from(file.try_clone()?))
            .stderr(Stdio::from(file))
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let pid = child.id().context("no pid right after spawn")?.to_string();
        Ok(Child { child, pid })
    }

    fn exited(&mut self) -> Option<String> {
        match self.child.try_wait() {
            Ok(Some(s)) => Some(s.to_string()),
            Ok(None) => None,
            Err(e) => Some(format!("wait failed: {e}")),
        }
    }

    /// SIGTERM, then SIGKILL if it has not exited within `grace`.
    async fn stop(mut self, grace: Duration) {
        if let Ok(pid) = self.pid.parse::<i32>() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        if tokio::time::timeout(grace, self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}

/// Spawns `bin args`, polls `out` until it holds `n`, reads the process's figures, stops it.
#[allow(clippy::too_many_arguments)]
async fn measure(
    label: &str,
    bin: &Path,
    args: &[String],
    out: &Output,
    counter: &Counter,
    n: u64,
    opts: &Options,
    perf_out: Option<&Path>,
) -> anyhow::Result<Measure> {
    let broker = std::fs::read_to_string(&opts.broker_pid_file)
        .ok()
        .map(|s| s.trim().to_owned());
    let broker_before = broker.as_deref().and_then(procfs::cpu);
    let log = opts.log_dir.join(format!("{label}.log"));
    let start = Instant::now();
    let mut child = Child::spawn(bin, args, log.clone())?;
    let mut perf: Option<tokio::process::Child> = None;
    let mut m = Measure::default();
    let mut failure = None;
    loop {
        let at = start.elapsed().as_secs_f64();
        let c = counter.count(out).await.unwrap_or(0);
        m.stored = c;
        m.window.observe(n, c, procfs::cpu(&child.pid));
        if c > 0 && m.first.is_none() {
            m.first = Some(at);
            // Attached now, not at spawn: `perf record -p` follows only the threads that
            // exist when it attaches, and librdkafka's start once the worker is running.
            if let Some(file) = perf_out {
                perf = Some(
                    tokio::process::Command::new("perf")
                        .args(["record", "--call-graph", &opts.perf_call_graph])
                        .args(["-F", &opts.perf_freq.to_string(), "-o"])
                        .arg(file)
                        .args(["-p", &child.pid])
                        .stdin(Stdio::null())
                        .stdout(Stdio::null())
                        .stderr(Stdio::null())
                        .kill_on_drop(true)
                        .spawn()
                        .context("starting perf record")?,
                );
            }
        }
        if c >= n {
            m.all = Some(at);
            break;
        }
        if let Some(status) = child.exited() {
            failure = Some(format!(
                "{label} exited ({status}) at {c} of {n}:\n{}",
                crate::procs::tail(&log, 30)
            ));
            break;
        }
        if start.elapsed() > opts.timeout {
            failure = Some(format!(
                "{label} stored {c} of {n} in {:?}; log {}",
                opts.timeout,
                log.display()
            ));
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Read just before stopping: the process's whole life, start-up included.
    m.cpu = procfs::cpu(&child.pid).unwrap_or_default();
    m.peak_rss_kb = procfs::peak_rss_kb(&child.pid);
    m.broker_cpu = broker
        .as_deref()
        .and_then(procfs::cpu)
        .zip(broker_before)
        .map(|(a, b)| a.since(&b).total());
    if let Some(mut perf) = perf {
        if let Some(pid) = perf.id().and_then(|p| i32::try_from(p).ok()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGINT,
            );
        }
        let _ = tokio::time::timeout(Duration::from_secs(60), perf.wait()).await;
    }
    child.stop(Duration::from_secs(45)).await;
    if let Some(f) = failure {
        bail!(f);
    }
    Ok(m)
}

/// The independent baseline (`passthrough.py`: confluent-kafka consume and produce
/// unchanged, idempotent, acks=all, linger 5 ms, lz4) on the raw demo records, measured like a
/// worker. `None` (with a warning) if Python or confluent-kafka is missing: the workers' own
/// rows do not depend on it.
async fn python_passthrough(
    p: &Pipeline,
    input: &str,
    output: &str,
    counter: &Counter,
    n: u64,
    opts: &Options,
) -> Option<Measure> {
    let python = std::env::var_os("AUDIT_PYTHON").unwrap_or_else(|| "python3".into());
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/bench/passthrough.py");
    let mut args = vec![
        script.display().to_string(),
        p.kafka.brokers.clone(),
        input.to_owned(),
        output.to_owned(),
        format!("{}.rawhop.python", p.ns),
    ];
    args.extend(opts.kafka_properties.iter().cloned());
    let out = Output::Topic(output.to_owned());
    match measure(
        "python-passthrough",
        Path::new(&python),
        &args,
        &out,
        counter,
        n,
        opts,
        None,
    )
    .await
    {
        Ok(m) => {
            let per = |s: f64| s * 1e6 / n as f64;
            println!(
                "[worker-bench] Python pass-through: {} ev/s, {:.0} µs/event CPU ({:.0} user + {:.0} sys), {} MB peak RSS",
                f0(m.rate(n)),
                per(m.cpu.total()),
                per(m.cpu.user),
                per(m.cpu.sys),
                f0(m.peak_rss_kb.map(|k| k as f64 / 1024.0)),
            );
            Some(m)
        }
        Err(e) => {
            eprintln!("[worker-bench] Python pass-through not measured: {e:#}");
            None
        }
    }
}

/// One worker's row.
#[derive(Debug, Clone)]
pub struct Row {
    pub worker: &'static str,
    pub hop: &'static str,
    pub worker_m: Measure,
    pub raw_m: Measure,
}

fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    }
}

impl Row {
    fn ratios(&self, n: u64) -> Value {
        let (w, r) = (&self.worker_m, &self.raw_m);
        json!({
            "events_per_sec": ratio(w.rate(n), r.rate(n)),
            "steady_events_per_sec": ratio(w.steady_rate(n), r.steady_rate(n)),
            "cpu_per_event": ratio(Some(w.cpu.total()), Some(r.cpu.total())),
            "cpu_user_per_event": ratio(Some(w.cpu.user), Some(r.cpu.user)),
            "cpu_sys_per_event": ratio(Some(w.cpu.sys), Some(r.cpu.sys)),
            "peak_rss": ratio(w.peak_rss_kb.map(|k| k as f64), r.peak_rss_kb.map(|k| k as f64)),
            "broker_cpu_per_event": ratio(w.broker_cpu, r.broker_cpu),
            "steady_cpu_per_event": ratio(w.steady_cpu(), r.steady_cpu()),
        })
    }
}

/// The machine, for the record.
pub fn machine() -> Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mem_kb = procfs::parse_status_kb(
        &std::fs::read_to_string("/proc/meminfo").unwrap_or_default(),
        "MemTotal",
    );
    json!({
        "cpus": std::thread::available_parallelism().map(|n| n.get()).ok(),
        "model": model,
        "kernel": kernel.trim(),
        "mem_gb": mem_kb.map(|k| (k as f64 / 1024.0 / 1024.0).round()),
        "loadavg": std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim(),
    })
}

/// Runs the bench against the stack the environment points at; returns the JSON report.
pub async fn run(opts: &Options) -> anyhow::Result<Value> {
    let n = opts.events as u64;
    std::fs::create_dir_all(&opts.log_dir)
        .with_context(|| format!("creating {}", opts.log_dir.display()))?;
    let machine_before = machine();
    let now_us = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .context("clock before 1970")?
        .as_micros() as i64;
    let mut events = demo::lifecycle(opts.events / 5 + 1, opts.seed, now_us - 3_600_000_000);
    events.truncate(opts.events);
    anyhow::ensure!(
        events.len() == opts.events,
        "generator gave {}",
        events.len()
    );
    let bytes: usize = events.iter().map(|e| e.value.len()).sum();

    // Production batch, segment and checkpoint sizes (not the tests' short ones).
    let p = Pipeline::new("wbench", opts.partitions)
        .await?
        .production_defaults();
    let topics = p.kafka.topics();
    let raw_topic = |w: Worker| format!("{}rawhop.{}", p.kafka.topic_prefix, w.binary_name());
    let python_topic = format!("{}rawhop.python", p.kafka.topic_prefix);
    let kafka_hops = [Worker::Ingest, Worker::Enrich, Worker::Chainer];
    ensure_topics(
        &p.kafka,
        &kafka_hops
            .iter()
            .map(|w| raw_topic(*w))
            .chain([python_topic.clone()])
            .map(|name| TopicSpec {
                name,
                partitions: opts.partitions,
                compacted: false,
            })
            .collect::<Vec<_>>(),
        1,
    )
    .await
    .context("creating the raw path's topics")?;
    println!(
        "[worker-bench] {n} demo events (raw JSON mean {} B), {} partitions, prefix {}, logs in {}",
        bytes / events.len(),
        opts.partitions,
        p.kafka.topic_prefix,
        opts.log_dir.display()
    );

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
    stack::produce_all(
        &test_producer,
        &topics.raw,
        events.iter().map(|e| (e.key.clone(), e.value.clone())),
    )
    .await?;
    drop(test_producer);
    drop(events);

    let counter = Counter {
        monitor: Arc::new(
            p.kafka
                .client_config("worker-bench-monitor")
                .create()
                .context("monitor client")?,
        ),
        partitions: opts.partitions,
    };
    let bin_dir = crate::procs::bin_dir()?;
    let me = std::env::current_exe().context("locating worker-bench")?;
    let python = python_passthrough(&p, &topics.raw, &python_topic, &counter, n, opts).await;
    let raw_db = format!("{}_raw", p.database);
    let raw_url = format!("{}-rawhop", p.archive_url());
    let mut rows = Vec::new();
    for w in Worker::ALL {
        let (input, hop, raw_kind, raw_output, raw_out, out) = match w {
            Worker::Ingest | Worker::Enrich | Worker::Chainer => {
                let (input, output) = match w {
                    Worker::Ingest => (&topics.raw, &topics.validated),
                    Worker::Enrich => (&topics.validated, &topics.enriched),
                    _ => (&topics.enriched, &topics.chained),
                };
                (
                    input.clone(),
                    "consume+produce",
                    "kafka",
                    raw_topic(w),
                    Output::Topic(raw_topic(w)),
                    Output::Topic(output.clone()),
                )
            }
            Worker::SinkClickhouse => (
                topics.chained.clone(),
                "consume+insert",
                "clickhouse",
                raw_db.clone(),
                Output::Rows {
                    database: raw_db.clone(),
                    table: raw::RAW_TABLE.into(),
                },
                Output::Rows {
                    database: p.database.clone(),
                    table: "audit_events".into(),
                },
            ),
            Worker::SinkArchive => (
                topics.chained.clone(),
                "consume+put",
                "s3",
                raw_url.clone(),
                Output::RawObjects(raw::raw_store(&raw_url)?),
                Output::Archive(
                    sink_archive::build_store(&p.archive_config().archive)
                        .map_err(|e| anyhow::anyhow!("archive store: {e}"))?,
                ),
            ),
        };
        let name = w.binary_name();
        let mut raw_args: Vec<String> = vec![
            "raw-hop".into(),
            "--kind".into(),
            raw_kind.into(),
            "--input".into(),
            input,
            "--output".into(),
            raw_output,
            "--events".into(),
            n.to_string(),
            "--group".into(),
            format!("{}.rawhop.{name}", p.ns),
            "--kafka-brokers".into(),
            p.kafka.brokers.clone(),
        ];
        // The workers' process flags include their consumer session settings.
        raw_args.extend(
            crate::procs::PROCESS_FLAGS
                .chunks(2)
                .filter(|kv| kv[0] == "--kafka-property")
                .flat_map(|kv| [kv[0].to_owned(), kv[1].to_owned()]),
        );
        let extra = opts
            .kafka_properties
            .iter()
            .flat_map(|kv| ["--kafka-property".to_owned(), kv.clone()]);
        raw_args.extend(extra.clone());
        let mut worker_args = w.args(&p);
        worker_args.extend(extra);
        let raw_m = measure(
            &format!("raw-{name}"),
            &me,
            &raw_args,
            &raw_out,
            &counter,
            n,
            opts,
            None,
        )
        .await?;
        let perf_out = opts
            .perf
            .as_ref()
            .filter(|(pw, _)| *pw == w)
            .map(|(_, f)| f.as_path());
        let worker_m = measure(
            name,
            &bin_dir.join(name),
            &worker_args,
            &out,
            &counter,
            n,
            opts,
            perf_out,
        )
        .await?;
        let row = Row {
            worker: name,
            hop,
            worker_m,
            raw_m,
        };
        print_row(&row, n, rows.is_empty());
        rows.push(row);
    }

    // Leave nothing behind in ClickHouse (topics and objects are under unique names).
    let admin = clickhouse::Client::default()
        .with_url(stack::clickhouse_url())
        .with_validation(false);
    for db in [&p.database, &raw_db] {
        let _ = admin
            .query(&format!("DROP DATABASE IF EXISTS {db}"))
            .execute()
            .await;
    }

    println!();
    print_table(&rows, n, python.as_ref());
    Ok(json!({
        "events": n,
        "partitions": opts.partitions,
        "seed": opts.seed,
        "kafka_properties": opts.kafka_properties,
        "raw_json_mean_bytes": bytes / opts.events.max(1),
        "machine_at_start": machine_before,
        "machine_at_end": machine(),
        "python_passthrough": python.as_ref().map(|m| m.to_json(n)),
        "workers": rows.iter().map(|r| json!({
            "worker": r.worker,
            "raw_path": r.hop,
            "worker_process": r.worker_m.to_json(n),
            "raw_process": r.raw_m.to_json(n),
            "ratio_to_raw": r.ratios(n),
            "cpu_per_event_to_python": python
                .as_ref()
                .and_then(|py| ratio(Some(r.worker_m.cpu.total()), Some(py.cpu.total()))),
            "steady_cpu_per_event_to_python": python
                .as_ref()
                .and_then(|py| ratio(r.worker_m.steady_cpu(), py.steady_cpu())),
        })).collect::<Vec<_>>(),
    }))
}

fn f0(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v:.0}"))
}

fn f1(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v:.1}"))
}

fn f2(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v:.2}"))
}

fn print_row(r: &Row, n: u64, header: bool) {
    if header {
        println!(
            "{:<16} {:<8} {:>7} {:>8} {:>7} {:>7} {:>7} {:>7} {:>9}",
            "", "process", "secs", "ev/s", "µs/ev", "user", "sys", "RSS MB", "broker µs"
        );
    }
    for (what, m) in [(r.worker, &r.worker_m), ("  raw path", &r.raw_m)] {
        let per = |s: f64| Some(s * 1e6 / n as f64);
        println!(
            "{:<16} {:<8} {:>7} {:>8} {:>7} {:>7} {:>7} {:>7} {:>9}",
            what,
            if what == r.worker { "worker" } else { "raw" },
            f2(m.all),
            f0(m.rate(n)),
            f0(per(m.cpu.total())),
            f0(per(m.cpu.user)),
            f0(per(m.cpu.sys)),
            f0(m.peak_rss_kb.map(|k| k as f64 / 1024.0)),
            f0(m.broker_cpu.and_then(per)),
        );
    }
}

/// The README's table: each worker's figures and their ratio to its raw path.
fn print_table(rows: &[Row], n: u64, python: Option<&Measure>) {
    println!("| worker (raw path) | events/s (× raw) | CPU µs/event user + sys (× raw) | user × raw | sys × raw | peak RSS MB (× raw) | broker CPU µs/event (× raw) | CPU × Python pass-through | steady CPU µs/event (× raw, × Python) |");
    println!("|---|---|---|---|---|---|---|---|---|");
    for r in rows {
        let (w, raw) = (&r.worker_m, &r.raw_m);
        let per = |s: f64| s * 1e6 / n as f64;
        println!(
            "| {} ({}) | {} ({}) | {:.0} + {:.0} ({}) | {} | {} | {} ({}) | {} ({}) | {} | {} ({}, {}) |",
            r.worker,
            r.hop,
            f0(w.rate(n)),
            f2(ratio(w.rate(n), raw.rate(n))),
            per(w.cpu.user),
            per(w.cpu.sys),
            f2(ratio(Some(w.cpu.total()), Some(raw.cpu.total()))),
            f2(ratio(Some(w.cpu.user), Some(raw.cpu.user))),
            f2(ratio(Some(w.cpu.sys), Some(raw.cpu.sys))),
            f0(w.peak_rss_kb.map(|k| k as f64 / 1024.0)),
            f2(ratio(
                w.peak_rss_kb.map(|k| k as f64),
                raw.peak_rss_kb.map(|k| k as f64)
            )),
            f0(w.broker_cpu.map(per)),
            f2(ratio(w.broker_cpu, raw.broker_cpu)),
            f2(python.and_then(|py| ratio(Some(w.cpu.total()), Some(py.cpu.total())))),
            f1(w.steady_cpu()),
            f2(ratio(w.steady_cpu(), raw.steady_cpu())),
            f2(python.and_then(|py| ratio(w.steady_cpu(), py.steady_cpu()))),
        );
    }
    if let Some(py) = python {
        let per = |s: f64| s * 1e6 / n as f64;
        println!(
            "| Python pass-through (consume+produce) | {} | {:.0} + {:.0} | | | {} | {} | 1.00 | {} (-, 1.00) |",
            f0(py.rate(n)),
            per(py.cpu.user),
            per(py.cpu.sys),
            f0(py.peak_rss_kb.map(|k| k as f64 / 1024.0)),
            f0(py.broker_cpu.map(per)),
            f1(py.steady_cpu()),
        );
    }
    println!(
        "| raw paths | {} | {} | | | {} | {} | | {} |",
        rows.iter()
            .map(|r| f0(r.raw_m.rate(n)))
            .collect::<Vec<_>>()
            .join(" / "),
        rows.iter()
            .map(|r| format!("{:.0}", r.raw_m.cpu.total() * 1e6 / n as f64))
            .collect::<Vec<_>>()
            .join(" / "),
        rows.iter()
            .map(|r| f0(r.raw_m.peak_rss_kb.map(|k| k as f64 / 1024.0)))
            .collect::<Vec<_>>()
            .join(" / "),
        rows.iter()
            .map(|r| f0(r.raw_m.broker_cpu.map(|s| s * 1e6 / n as f64)))
            .collect::<Vec<_>>()
            .join(" / "),
        rows.iter()
            .map(|r| f1(r.raw_m.steady_cpu()))
            .collect::<Vec<_>>()
            .join(" / "),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cpu(user: f64, sys: f64) -> Option<CpuTimes> {
        Some(CpuTimes { user, sys })
    }

    #[test]
    fn the_window_spans_ten_to_ninety_percent_of_the_output() {
        let mut w = Window::default();
        // Start-up: much CPU, no output.
        w.observe(1000, 0, cpu(0.5, 0.1));
        w.observe(1000, 50, cpu(0.6, 0.1));
        assert!(w.per_record().is_none());
        w.observe(1000, 120, cpu(0.7, 0.2));
        for _ in 0..4 {
            w.observe(1000, 500, cpu(0.8, 0.2));
        }
        assert!(w.per_record().is_none(), "not closed before 90%");
        w.observe(1000, 920, cpu(1.5, 0.4));
        w.observe(1000, 1000, cpu(9.0, 9.0));
        let c = w.per_record().expect("closed");
        // (1.5 - 0.7) / 800 and (0.4 - 0.2) / 800 seconds per record.
        assert!((c.user - 0.001).abs() < 1e-12, "{c:?}");
        assert!((c.sys - 0.000_25).abs() < 1e-12, "{c:?}");
        // A process gone (no CPU figure) changes nothing; an empty window gives nothing.
        let mut w = Window::default();
        w.observe(10, 5, None);
        w.observe(10, 10, cpu(1.0, 0.0));
        for _ in 0..6 {
            w.observe(10, 10, cpu(2.0, 0.0));
        }
        assert!(w.per_record().is_none(), "start and end at the same count");
        // Output in one jump (a sink's batch): too few polls to mean anything.
        let mut w = Window::default();
        w.observe(1000, 50, cpu(1.0, 0.0));
        w.observe(1000, 400, cpu(2.0, 0.0));
        w.observe(1000, 1000, cpu(2.1, 0.0));
        assert!(w.per_record().is_none(), "two polls");
    }
}
