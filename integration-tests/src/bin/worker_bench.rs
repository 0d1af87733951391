//! Per-worker bench (issue 10): each worker's release binary alone as a process on N
//! pre-filled realistic records, against the raw path of its hop (consume+produce,
//! consume+insert, consume+put) on the same records and broker, in the same run. Reports
//! events/s, CPU µs per event (user, system, from `/proc/<pid>/stat`), peak RSS (`VmHWM`) and
//! the broker's CPU, each as a ratio to the raw path; prints a table, writes JSON.
//!
//! ```text
//! cargo build --release -p ingest -p enrich -p chainer -p sink-clickhouse -p sink-archive
//! cargo run --release -p integration-tests --bin worker-bench -- --events 20000 --out wb.json
//! ```
//!
//! It never touches the shared local stack: like the fault battery it starts a stack of its
//! own with `deploy/local/stack.sh` in `.local/worker-bench` on the battery's ports moved by
//! `--port-offset` (default 300: Kafka 29392, ClickHouse 28423, S3 28633), runs itself again
//! inside that stack's environment, and stops the stack at the end (`--keep-stack` keeps it).
//! `--perf WORKER` records that worker with `perf record` (`--perf-call-graph fp|dwarf`) while
//! it runs. Nothing asserts a time. See `src/bench/`.
//!
//! `--latency` runs the end-to-end latency bench instead (`src/bench/latency.rs`): all five
//! workers at once, as a deployment runs them, which the per-worker stages (each worker
//! alone on a pre-filled input) cannot show; it is a mode of this binary rather than a new
//! one to share its private stack, process handling and report:
//!
//! ```text
//! target/release/worker-bench --latency --latency-secs 30 --out latency.json
//! target/release/worker-bench --latency --ch-batch-max-age-ms 200 --kafka-property linger.ms=5
//! ```

use clap::Parser;
use integration_tests::bench::{self, raw};
use integration_tests::procs::Worker;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Duration;

/// The fault battery's stack ports (none is a port of the default stack), moved by
/// `--port-offset`; SeaweedFS's gRPC ports below the ephemeral range, as the battery's.
const PORTS: &[(&str, u16)] = &[
    ("AUDIT_KAFKA_PORT", 29092),
    ("AUDIT_CLICKHOUSE_HTTP_PORT", 28123),
    ("AUDIT_CLICKHOUSE_TCP_PORT", 29000),
    ("AUDIT_S3_PORT", 28333),
    ("AUDIT_S3_MASTER_PORT", 29333),
    ("AUDIT_S3_VOLUME_PORT", 28080),
    ("AUDIT_S3_FILER_PORT", 28888),
    ("AUDIT_S3_GRPC_PORT", 28433),
    ("AUDIT_S3_MASTER_GRPC_PORT", 29433),
    ("AUDIT_S3_VOLUME_GRPC_PORT", 28180),
    ("AUDIT_S3_FILER_GRPC_PORT", 28988),
];

/// Variables env.sh derives from the ports: cleared so that the caller's (default stack's)
/// values do not win over the bench's ports.
const DERIVED: &[&str] = &[
    "AUDIT_STACK_DIR",
    "KAFKA_BROKERS",
    "AUDIT_KAFKA_BROKERS",
    "CLICKHOUSE_URL",
    "AUDIT_CLICKHOUSE_URL",
    "S3_ENDPOINT",
    "AUDIT_S3_ENDPOINT",
    "AWS_ENDPOINT",
    "AWS_ENDPOINT_URL",
    "AUDIT_S3_GRPC_PORT",
    "AUDIT_S3_MASTER_GRPC_PORT",
    "AUDIT_S3_VOLUME_GRPC_PORT",
    "AUDIT_S3_FILER_GRPC_PORT",
    "AUDIT_KAFKA_PROPERTIES",
];

const CHILD: &str = "AUDIT_WORKER_BENCH_CHILD";

#[derive(Debug, Parser)]
#[command(
    name = "worker-bench",
    about = "Each worker alone against the raw path of its hop (issue 10)"
)]
struct Args {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    /// Records per stage.
    #[arg(long, default_value_t = 20_000)]
    events: usize,
    /// Partitions of every topic.
    #[arg(long, default_value_t = 4)]
    partitions: i32,
    /// Seed of the demo generator.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Give up on a process that has not stored N after this many seconds.
    #[arg(long, default_value_t = 600)]
    timeout_secs: u64,
    /// Write the JSON report here.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Record this worker (ingest, enrich, chainer, sink-clickhouse, sink-archive) with
    /// `perf record` while it runs, into `--perf-out`.
    #[arg(long)]
    perf: Option<String>,
    #[arg(long, default_value = "worker-bench.perf.data")]
    perf_out: PathBuf,
    /// perf's call-graph mode for `--perf`: `fp` (small files; good for librdkafka's C frames)
    /// or `dwarf` (Rust's inlined frames too, at megabytes of samples per second).
    #[arg(long, default_value = "fp")]
    perf_call_graph: String,
    /// perf's sampling frequency for `--perf`, Hz (more samples for a short run; dwarf
    /// call graphs at 5000 Hz write tens of megabytes a second).
    #[arg(long, default_value_t = 999)]
    perf_freq: u32,
    /// An extra librdkafka property `key=value` for every worker and raw path (repeatable).
    #[arg(long = "kafka-property")]
    kafka_property: Vec<String>,
    /// State directory of the bench's own stack.
    #[arg(long)]
    stack_dir: Option<PathBuf>,
    /// Added to every port of the bench's stack.
    #[arg(long, default_value_t = 300)]
    port_offset: u16,
    /// Leave the bench's stack running at the end.
    #[arg(long)]
    keep_stack: bool,
    /// Keep the bench's ClickHouse data in this directory (e.g. `/dev/shm/wb-clickhouse`, a
    /// tmpfs) instead of under `--stack-dir`: linked as `<stack-dir>/clickhouse` before the
    /// stack starts. On a journal-less ext4 (this machine's disk) two thirds of ClickHouse's
    /// CPU in the latency bench went to the kernel's inode allocator, which there scans
    /// recently deleted inodes on every file a part creates (docs/local-stack.md); a tmpfs
    /// takes the disk out of the figure.
    #[arg(long)]
    clickhouse_data_dir: Option<PathBuf>,
    /// Instead of the per-worker stages: end-to-end latency with all five workers running
    /// (publish → queryable in ClickHouse and → archived, per hop) at `--load` of the
    /// pipeline's maximum rate measured on a pre-filled burst of `--burst-events`.
    #[arg(long)]
    latency: bool,
    /// Seconds of paced publishing (latency).
    #[arg(long, default_value_t = 30.0)]
    latency_secs: f64,
    /// Fraction of the measured maximum rate to publish at (latency).
    #[arg(long, default_value_t = 0.5)]
    load: f64,
    /// Publish at this many records/s instead (latency; the burst's rate is still measured).
    #[arg(long)]
    rate: Option<f64>,
    /// Records of the burst that measures the maximum rate (latency).
    #[arg(long, default_value_t = 20_000)]
    burst_events: usize,
    /// ClickHouse poll interval, ms: the queryable time's resolution (latency).
    #[arg(long, default_value_t = 50)]
    poll_ms: u64,
    /// sink-clickhouse --batch-max-age-ms for the latency run (default: the sink's default).
    #[arg(long)]
    ch_batch_max_age_ms: Option<u64>,
    /// sink-archive --segment-max-age-secs for the latency run (default: the sink's default).
    #[arg(long, default_value_t = 30)]
    archive_segment_max_age_secs: u64,
}

#[derive(Debug, clap::Subcommand)]
enum Cmd {
    /// (internal) The raw path of one hop, as a process the bench measures.
    RawHop(raw::RawArgs),
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

fn with_stack_env(mut cmd: Command, stack_dir: &Path, offset: u16) -> Command {
    for v in DERIVED {
        cmd.env_remove(v);
    }
    for (k, base) in PORTS {
        cmd.env(k, (base + offset).to_string());
    }
    cmd.env("AUDIT_STACK_DIR", stack_dir);
    cmd
}

/// Makes `<stack_dir>/clickhouse` a link to `data` (created if missing). A real directory
/// there is left alone: it may hold an earlier run's data.
fn link_clickhouse_data(stack_dir: &Path, data: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(data)?;
    std::fs::create_dir_all(stack_dir)?;
    let link = stack_dir.join("clickhouse");
    match std::fs::symlink_metadata(&link) {
        Ok(m) if m.file_type().is_symlink() => {
            if std::fs::read_link(&link)? == data {
                return Ok(());
            }
            std::fs::remove_file(&link)?;
        }
        Ok(_) => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                format!(
                    "{} is a directory of its own; remove it or use another --stack-dir",
                    link.display()
                ),
            ))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    std::os::unix::fs::symlink(data, &link)
}

fn stack(cmd: &str, stack_dir: &Path, offset: u16) -> std::io::Result<bool> {
    let mut c = Command::new("bash");
    c.arg(repo_root().join("deploy/local/stack.sh")).arg(cmd);
    Ok(with_stack_env(c, stack_dir, offset).status()?.success())
}

/// Parent: starts the bench's stack, runs the bench in it, stops the stack.
fn parent(args: &Args) -> ExitCode {
    let offset = args.port_offset;
    if PORTS
        .iter()
        .any(|(_, p)| u32::from(*p) + u32::from(offset) + 10_000 > u32::from(u16::MAX))
    {
        eprintln!("[worker-bench] --port-offset too large");
        return ExitCode::from(2);
    }
    let stack_dir = args
        .stack_dir
        .clone()
        .unwrap_or_else(|| repo_root().join(".local/worker-bench"));
    println!(
        "[worker-bench] starting its own stack in {} (kafka {}, clickhouse {}, s3 {})",
        stack_dir.display(),
        PORTS[0].1 + offset,
        PORTS[1].1 + offset,
        PORTS[3].1 + offset
    );
    if let Some(dir) = &args.clickhouse_data_dir {
        if let Err(e) = link_clickhouse_data(&stack_dir, dir) {
            eprintln!("[worker-bench] --clickhouse-data-dir: {e}");
            return ExitCode::from(2);
        }
    }
    match stack("up", &stack_dir, offset) {
        Ok(true) => {}
        Ok(false) => {
            eprintln!("[worker-bench] deploy/local/stack.sh up failed");
            return ExitCode::from(2);
        }
        Err(e) => {
            eprintln!("[worker-bench] cannot run deploy/local/stack.sh: {e}");
            return ExitCode::from(2);
        }
    }
    let status = std::env::current_exe().and_then(|exe| {
        let mut c = Command::new("bash");
        c.arg("-c")
            .arg("source \"$AUDIT_ENV_SH\" && exec \"$@\"")
            .arg("worker-bench")
            .arg(exe)
            .args(std::env::args_os().skip(1))
            .env("AUDIT_ENV_SH", repo_root().join("deploy/local/env.sh"))
            .env(CHILD, "1");
        with_stack_env(c, &stack_dir, offset).status()
    });
    if !args.keep_stack {
        match stack("down", &stack_dir, offset) {
            Ok(true) => {}
            Ok(false) => eprintln!("[worker-bench] stopping its stack failed"),
            Err(e) => eprintln!("[worker-bench] stopping its stack: {e}"),
        }
    }
    match status {
        Ok(s) if s.success() => ExitCode::SUCCESS,
        Ok(_) => ExitCode::from(1),
        Err(e) => {
            eprintln!("[worker-bench] cannot run itself: {e}");
            ExitCode::from(2)
        }
    }
}

fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
}

/// Child: the stack's environment is set; runs the bench.
fn child(args: &Args) -> ExitCode {
    let perf = match args.perf.as_deref() {
        None => None,
        Some(name) => match Worker::ALL.iter().find(|w| w.binary_name() == name) {
            Some(w) => Some((*w, args.perf_out.clone())),
            None => {
                eprintln!("[worker-bench] --perf: unknown worker {name:?}");
                return ExitCode::from(2);
            }
        },
    };
    let stack_dir = std::env::var_os("AUDIT_STACK_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join(".local/worker-bench"));
    if args.latency {
        let opts = bench::latency::LatencyOptions {
            partitions: args.partitions.max(1),
            seed: args.seed,
            secs: args.latency_secs.max(1.0),
            rate: args.rate,
            fraction: args.load,
            burst_events: args.burst_events,
            poll: Duration::from_millis(args.poll_ms.max(1)),
            timeout: Duration::from_secs(args.timeout_secs),
            log_dir: stack_dir.join("worker-bench-logs"),
            kafka_properties: args.kafka_property.clone(),
            ch_batch_max_age_ms: args.ch_batch_max_age_ms,
            archive_segment_max_age_secs: args.archive_segment_max_age_secs,
        };
        let outcome = match runtime() {
            Ok(rt) => rt.block_on(bench::latency::run(&opts)),
            Err(e) => Err(e.into()),
        };
        return report(outcome, args);
    }
    let opts = bench::Options {
        events: args.events.max(1),
        partitions: args.partitions.max(1),
        seed: args.seed,
        timeout: Duration::from_secs(args.timeout_secs),
        log_dir: stack_dir.join("worker-bench-logs"),
        perf,
        perf_call_graph: args.perf_call_graph.clone(),
        perf_freq: args.perf_freq,
        broker_pid_file: stack_dir.join("run/kafka.pid"),
        kafka_properties: args.kafka_property.clone(),
    };
    let outcome = match runtime() {
        Ok(rt) => rt.block_on(bench::run(&opts)),
        Err(e) => Err(e.into()),
    };
    report(outcome, args)
}

/// Writes the JSON report if asked; the exit code.
fn report(outcome: anyhow::Result<serde_json::Value>, args: &Args) -> ExitCode {
    match outcome {
        Ok(report) => {
            if let Some(path) = &args.out {
                let text = serde_json::to_string_pretty(&report).unwrap_or_default();
                if let Err(e) = std::fs::write(path, text) {
                    eprintln!("[worker-bench] cannot write {}: {e}", path.display());
                    return ExitCode::from(2);
                }
                println!("[worker-bench] report written to {}", path.display());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("[worker-bench] failed: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Some(Cmd::RawHop(raw_args)) = args.cmd {
        return match runtime().map(|rt| rt.block_on(raw::run(raw_args))) {
            Ok(Ok(())) => ExitCode::SUCCESS,
            Ok(Err(e)) => {
                eprintln!("raw-hop failed: {e:#}");
                ExitCode::from(1)
            }
            Err(e) => {
                eprintln!("raw-hop: cannot start the runtime: {e}");
                ExitCode::from(2)
            }
        };
    }
    if std::env::var_os(CHILD).is_some() {
        child(&args)
    } else {
        parent(&args)
    }
}

#[cfg(test)]
mod tests {
    use super::link_clickhouse_data;

    #[test]
    fn clickhouse_data_is_linked_once_and_a_real_directory_is_left_alone() {
        let tmp = tempfile::tempdir().unwrap();
        let stack = tmp.path().join("stack");
        let (a, b) = (tmp.path().join("tmpfs-a"), tmp.path().join("tmpfs-b"));
        let link = stack.join("clickhouse");

        link_clickhouse_data(&stack, &a).unwrap();
        assert_eq!(std::fs::read_link(&link).unwrap(), a);
        assert!(a.is_dir(), "the data directory is created");
        std::fs::write(a.join("part"), b"x").unwrap();
        // Again with the same target: kept, contents and all.
        link_clickhouse_data(&stack, &a).unwrap();
        assert_eq!(std::fs::read(link.join("part")).unwrap(), b"x");
        // Another target: the link moves, the old data stays where it was.
        link_clickhouse_data(&stack, &b).unwrap();
        assert_eq!(std::fs::read_link(&link).unwrap(), b);
        assert!(a.join("part").exists());

        // A stack whose ClickHouse data is a real directory keeps it.
        let other = tmp.path().join("other");
        std::fs::create_dir_all(other.join("clickhouse")).unwrap();
        std::fs::write(other.join("clickhouse/part"), b"y").unwrap();
        let err = link_clickhouse_data(&other, &a).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read(other.join("clickhouse/part")).unwrap(), b"y");
    }
}
