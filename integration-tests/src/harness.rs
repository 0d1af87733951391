//! Starts the five workers in-process (the same `run` their binaries call) against the local
//! stack, with names of their own, and reads back what landed.

use crate::stack;
use anyhow::Context as _;
use clap::Parser as _;
use std::path::PathBuf;
use std::time::Duration;
use tokio::task::JoinHandle;
use worker_runtime::kafka::KafkaArgs;
use worker_runtime::Shutdown;

/// A running worker: its shutdown and its task.
#[derive(Debug)]
pub struct Running {
    pub name: &'static str,
    pub shutdown: Shutdown,
    pub task: JoinHandle<anyhow::Result<()>>,
}

impl Running {
    /// Graceful stop (SIGTERM path): drains, stores offsets, returns the worker's result.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.shutdown.trigger();
        tokio::time::timeout(Duration::from_secs(60), self.task)
            .await
            .with_context(|| format!("{} did not stop within 60 s", self.name))?
            .with_context(|| format!("{} task panicked", self.name))?
    }
}

/// One pipeline instance: names and settings every worker of a test shares.
#[derive(Debug)]
pub struct Pipeline {
    pub kafka: KafkaArgs,
    pub ns: String,
    pub database: String,
    pub archive_prefix: String,
    pub key_dir: PathBuf,
    pub keyset: PathBuf,
    pub key_file: PathBuf,
    pub chain_id: String,
    /// Short batch, segment and checkpoint ages so tests finish quickly; off for benchmarks.
    pub test_tuning: bool,
}

impl Pipeline {
    /// Fresh topics (`partitions` each), database name, archive prefix and signing key.
    pub async fn new(test: &str, partitions: i32) -> anyhow::Result<Self> {
        worker_runtime::telemetry::init_for_tests();
        let kafka = stack::fresh_topics(test, partitions).await?;
        let ns = kafka.topic_prefix.trim_end_matches('.').to_owned();
        let key_dir = std::env::temp_dir().join(format!("audit-it-{ns}"));
        std::fs::create_dir_all(&key_dir)?;
        let key_file = key_dir.join("checkpoint.pk8");
        let keyset = key_dir.join("keyset.json");
        let out = run_auditctl(&[
            "keygen",
            "--key-id",
            "it-key-1",
            "--out",
            path(&key_file)?,
            "--keyset",
            path(&keyset)?,
        ])
        .await?;
        anyhow::ensure!(out.0 == 0, "keygen failed: {}", out.1);
        Ok(Pipeline {
            database: format!("it_{ns}"),
            archive_prefix: format!("it/{ns}"),
            chain_id: format!("it-{ns}"),
            kafka,
            ns,
            test_tuning: true,
            key_dir,
            keyset,
            key_file,
        })
    }

    /// The workers' production defaults for batch, segment and checkpoint sizes and ages
    /// (benchmarks); the archive's segment age stays short so a run's last segment closes.
    pub fn production_defaults(mut self) -> Self {
        self.test_tuning = false;
        self
    }

    fn base_args(&self, worker: &str) -> Vec<String> {
        vec![
            worker.to_owned(),
            "--kafka-brokers".into(),
            self.kafka.brokers.clone(),
            "--topic-prefix".into(),
            self.kafka.topic_prefix.clone(),
            "--health-addr".into(),
            String::new(),
            "--group-id".into(),
            format!("{}.{worker}", self.ns),
        ]
    }

    pub fn ingest_args(&self) -> Vec<String> {
        self.base_args("ingest")
    }

    pub fn enrich_args(&self) -> Vec<String> {
        self.base_args("enrich")
    }

    pub fn chainer_args(&self) -> Vec<String> {
        let mut a = self.base_args("chainer");
        a.extend([
            "--checkpoint-key-file".into(),
            self.key_file.display().to_string(),
            "--checkpoint-key-id".into(),
            "it-key-1".into(),
            "--chain-id".into(),
            self.chain_id.clone(),
        ]);
        if self.test_tuning {
            a.extend([
                "--checkpoint-every-events".into(),
                "50".into(),
                "--checkpoint-interval-secs".into(),
                "1".into(),
            ]);
        }
        a
    }

    pub fn clickhouse_args(&self) -> Vec<String> {
        let mut a = self.base_args("sink-clickhouse");
        a.extend([
            "--clickhouse-url".into(),
            stack::clickhouse_url(),
            "--clickhouse-database".into(),
            self.database.clone(),
        ]);
        if self.test_tuning {
            a.extend(["--batch-max-age-ms".into(), "200".into()]);
        }
        a
    }

    pub fn archive_args(&self) -> Vec<String> {
        let mut a = self.base_args("sink-archive");
        a.extend(self.archive_store_args());
        a.extend(["--segment-max-age-secs".into(), "1".into()]);
        // The shared local bucket has no Object Lock (sink-archive/tests/retention.rs tests
        // locking on buckets of its own), and tests must not leave undeletable objects.
        a.extend(["--retention-mode".into(), "off".into()]);
        if self.test_tuning {
            a.extend(["--segment-max-events".into(), "100".into()]);
        }
        a
    }

    /// The archive sink's configuration (the bench reads the archive through its store).
    pub fn archive_config(&self) -> sink_archive::Config {
        sink_archive::Config::parse_from(self.archive_args())
    }

    /// The archive location (bucket plus this test's prefix), as the sink and auditctl take it.
    pub fn archive_url(&self) -> String {
        format!("s3://{}/{}", stack::s3_bucket(), self.archive_prefix)
    }

    /// The sink's archive flags.
    pub fn archive_store_args(&self) -> Vec<String> {
        vec![
            "--archive-url".into(),
            self.archive_url(),
            "--s3-endpoint".into(),
            stack::s3_endpoint(),
            "--s3-allow-http".into(),
            "true".into(),
        ]
    }

    pub fn start_ingest(&self) -> Running {
        self.start_ingest_with(&[])
    }
    /// ingest with `extra` flags after the harness's (e.g. the OTLP receiver's).
    pub fn start_ingest_with(&self, extra: &[String]) -> Running {
        let mut args = self.ingest_args();
        args.extend(extra.iter().cloned());
        let cfg = ingest::Config::parse_from(args);
        spawn("ingest", |s| async move { Ok(ingest::run(cfg, s).await?) })
    }
    /// enrich with `extra` flags after the harness's (e.g. the privacy options).
    pub fn start_enrich_with(&self, extra: &[String]) -> Running {
        let mut args = self.enrich_args();
        args.extend(extra.iter().cloned());
        let cfg = enrich::Config::parse_from(args);
        spawn("enrich", |s| async move { Ok(enrich::run(cfg, s).await?) })
    }
    pub fn start_enrich(&self) -> Running {
        let cfg = enrich::Config::parse_from(self.enrich_args());
        spawn("enrich", |s| async move { Ok(enrich::run(cfg, s).await?) })
    }
    pub fn start_chainer(&self) -> Running {
        let cfg = chainer::Config::parse_from(self.chainer_args());
        spawn(
            "chainer",
            |s| async move { Ok(chainer::run(cfg, s).await?) },
        )
    }
    pub fn start_sink_clickhouse(&self) -> Running {
        let cfg = sink_clickhouse::Config::parse_from(self.clickhouse_args());
        spawn("sink-clickhouse", |s| async move {
            Ok(sink_clickhouse::run(cfg, s).await?)
        })
    }
    pub fn start_sink_archive(&self) -> Running {
        let cfg = sink_archive::Config::parse_from(self.archive_args());
        spawn("sink-archive", |s| async move {
            Ok(sink_archive::run(cfg, s).await?)
        })
    }

    /// ClickHouse client on this test's database.
    pub fn clickhouse(&self) -> clickhouse::Client {
        clickhouse::Client::default()
            .with_url(stack::clickhouse_url())
            .with_database(&self.database)
            .with_validation(false)
    }

    /// `auditctl verify --source <source> --json` on this pipeline's stores.
    pub async fn verify(&self, source: &str) -> anyhow::Result<(u8, serde_json::Value)> {
        let (code, out) = self
            .auditctl_on_store(&["verify", "--source", source, "--json", "--quiet"])
            .await?;
        let json = serde_json::from_str(&out)
            .with_context(|| format!("auditctl verify output is not JSON (exit {code}): {out}"))?;
        Ok((code, json))
    }

    /// Runs an auditctl command that reads the stores (`verify`, `consistency`, …) with this
    /// pipeline's key set, chain id and store addresses appended to `args`.
    pub async fn auditctl_on_store(&self, args: &[&str]) -> anyhow::Result<(u8, String)> {
        let mut all: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        all.extend([
            "--keys".into(),
            self.keyset.display().to_string(),
            "--chain-id".into(),
            self.chain_id.clone(),
            "--clickhouse-url".into(),
            stack::clickhouse_url(),
            "--clickhouse-database".into(),
            self.database.clone(),
            "--archive-url".into(),
            self.archive_url(),
            "--s3-endpoint".into(),
            stack::s3_endpoint(),
        ]);
        let refs: Vec<&str> = all.iter().map(String::as_str).collect();
        run_auditctl(&refs).await
    }

    /// The key set file the chainer's checkpoints verify with.
    pub fn keyset_path(&self) -> &std::path::Path {
        &self.keyset
    }
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.key_dir);
    }
}

fn path(p: &std::path::Path) -> anyhow::Result<&str> {
    p.to_str().context("non-UTF-8 temp path")
}

fn spawn<F, Fut>(name: &'static str, f: F) -> Running
where
    F: FnOnce(Shutdown) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let shutdown = Shutdown::new();
    let task = tokio::spawn(f(shutdown.clone()));
    Running {
        name,
        shutdown,
        task,
    }
}

/// Runs `auditctl ARGS` in-process; returns its exit code and stdout.
pub async fn run_auditctl(args: &[&str]) -> anyhow::Result<(u8, String)> {
    let cli =
        auditctl::Cli::try_parse_from(std::iter::once("auditctl").chain(args.iter().copied()))
            .context("auditctl arguments")?;
    let mut out = Vec::new();
    let res = auditctl::run(cli, &mut out).await;
    if let Err(e) = &res {
        eprintln!("auditctl error: {e}");
    }
    Ok((
        auditctl::exit_code(&res),
        String::from_utf8_lossy(&out).into_owned(),
    ))
}

/// Total events over the partitions of an `auditctl verify --json` report of one store (the
/// objects that carry both `partition` and `events`).
pub fn report_events(report: &serde_json::Value) -> u64 {
    fn walk(v: &serde_json::Value, total: &mut u64) {
        match v {
            serde_json::Value::Object(m) => {
                if let (Some(serde_json::Value::Number(n)), true) =
                    (m.get("events"), m.contains_key("partition"))
                {
                    *total += n.as_u64().unwrap_or(0);
                    return;
                }
                m.values().for_each(|x| walk(x, total));
            }
            serde_json::Value::Array(a) => a.iter().for_each(|x| walk(x, total)),
            _ => {}
        }
    }
    let mut total = 0;
    walk(report, &mut total);
    total
}
