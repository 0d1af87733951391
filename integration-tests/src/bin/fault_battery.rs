//! The fault battery (issue 6): faults of every kind injected into the real worker processes
//! and servers under a steady load, then exactly-once, chain, dead-letter and readiness checks.
//!
//! ```text
//! cargo build --workspace --bins
//! cargo run --release -p integration-tests --bin fault-battery -- [--quick] [--seed N] [--report out.json]
//! ```
//!
//! It restarts tansu, ClickHouse and SeaweedFS, so it never touches the shared local stack: it
//! starts a second one with `deploy/local/stack.sh` in its own state directory
//! (`.local/battery`) on ports of its own, runs itself again inside that stack's environment
//! (`deploy/local/env.sh`), and stops that stack at the end (`--keep-stack` leaves it up).
//! Exit status: 0 when every check passed, 1 when one failed, 2 when the battery could not run.

use clap::Parser;
use integration_tests::battery::{self, ChainerMode, Options, Scenario};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

/// The battery stack's ports: none is a port of the default stack (9092, 8123, 9000, 8333,
/// 9333, 8080, 8888, 18080, 18333, 18888, 19333). SeaweedFS's gRPC ports are set too, below
/// Linux's ephemeral range (32768+): weed's default (HTTP port + 10000 = 38080, …) lies inside
/// it, and once an outgoing connection (weed's own, between its components) held 38080 just
/// as the volume server bound it, so the battery's stack did not start.
const PORTS: &[(&str, &str)] = &[
    ("AUDIT_KAFKA_PORT", "29092"),
    ("AUDIT_CLICKHOUSE_HTTP_PORT", "28123"),
    ("AUDIT_CLICKHOUSE_TCP_PORT", "29000"),
    ("AUDIT_S3_PORT", "28333"),
    ("AUDIT_S3_MASTER_PORT", "29333"),
    ("AUDIT_S3_VOLUME_PORT", "28080"),
    ("AUDIT_S3_FILER_PORT", "28888"),
    ("AUDIT_S3_GRPC_PORT", "28433"),
    ("AUDIT_S3_MASTER_GRPC_PORT", "29433"),
    ("AUDIT_S3_VOLUME_GRPC_PORT", "28180"),
    ("AUDIT_S3_FILER_GRPC_PORT", "28988"),
];

/// Variables env.sh derives from the ports: cleared so that a caller's (default stack's)
/// values do not win over the battery's ports.
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
];

const CHILD: &str = "AUDIT_BATTERY_CHILD";

#[derive(Debug, Parser)]
#[command(
    name = "fault-battery",
    about = "Fault battery of the audit pipeline (issue 6)"
)]
struct Args {
    /// The shortened form CI runs (a few kills per worker, one restart per server, a 20 s
    /// outage with message.timeout.ms=10000, one SIGSTOP).
    #[arg(long)]
    quick: bool,
    /// Seed of the fault order and timing (default: the clock); printed, to replay a run.
    #[arg(long)]
    seed: Option<u64>,
    /// Write the JSON report here.
    #[arg(long)]
    report: Option<PathBuf>,
    /// The chainer's partition assignment: group, static (`--partitions all`), or auto
    /// (static if the chainer has `--partitions`, else group).
    #[arg(long, default_value = "auto")]
    chainer_mode: String,
    /// State directory of the battery's own stack.
    #[arg(long)]
    stack_dir: Option<PathBuf>,
    /// Leave the battery's stack running at the end.
    #[arg(long)]
    keep_stack: bool,
    /// Run one scenario instead of the battery: `broker-restart` (issue 6 item 2: ~15,000
    /// events, SIGKILL tansu once 40% are chained, 10 s down, start it; every event must be in
    /// both stores within 3 minutes, no worker restarted).
    #[arg(long)]
    scenario: Option<String>,
    /// Added to every port of the battery's stack and to the workers' health ports, so that
    /// two batteries (each with its own --stack-dir) can run side by side.
    #[arg(long, default_value_t = 0)]
    port_offset: u16,
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

fn stack_script() -> PathBuf {
    repo_root().join("deploy/local/stack.sh")
}

/// A command with the battery stack's environment (before env.sh derives the rest).
fn with_battery_env(mut cmd: Command, stack_dir: &Path, offset: u16) -> Command {
    for v in DERIVED {
        cmd.env_remove(v);
    }
    for (k, v) in PORTS {
        cmd.env(k, port(v, offset));
    }
    if offset != 0 {
        cmd.env("AUDIT_BATTERY_HEALTH_PORT_BASE", port("29500", offset));
    }
    cmd.env("AUDIT_STACK_DIR", stack_dir);
    cmd
}

/// `base` (one of [`PORTS`]) moved by `offset`.
fn port(base: &str, offset: u16) -> String {
    base.parse::<u16>()
        .map_or_else(|_| base.to_owned(), |p| (p + offset).to_string())
}

fn stack(cmd: &str, stack_dir: &Path, offset: u16) -> std::io::Result<bool> {
    let mut c = Command::new("bash");
    c.arg(stack_script()).arg(cmd);
    Ok(with_battery_env(c, stack_dir, offset).status()?.success())
}

/// Parent: starts the battery's stack, runs the battery in it, stops the stack.
fn parent(args: &Args) -> ExitCode {
    let stack_dir = args
        .stack_dir
        .clone()
        .unwrap_or_else(|| repo_root().join(".local/battery"));
    println!(
        "[battery] starting its own stack in {} (kafka {}, clickhouse {}, s3 {})",
        stack_dir.display(),
        port(PORTS[0].1, args.port_offset),
        port(PORTS[1].1, args.port_offset),
        port(PORTS[3].1, args.port_offset)
    );
    match stack("up", &stack_dir, args.port_offset) {
        Ok(true) => {}
        Ok(false) => {
            eprintln!(
                "[battery] deploy/local/stack.sh up failed for {}",
                stack_dir.display()
            );
            // Stop what did start, so no server of a failed stack outlives the run.
            if let Err(e) = stack("down", &stack_dir, args.port_offset) {
                eprintln!("[battery] stopping its stack: {e}");
            }
            return ExitCode::from(2);
        }
        Err(e) => {
            eprintln!("[battery] cannot run deploy/local/stack.sh: {e}");
            return ExitCode::from(2);
        }
    }
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => {
            eprintln!("[battery] cannot locate itself: {e}");
            return ExitCode::from(2);
        }
    };
    // `source env.sh` derives every endpoint from the ports, then runs this binary again.
    let mut c = Command::new("bash");
    c.arg("-c")
        .arg("source \"$AUDIT_ENV_SH\" && exec \"$@\"")
        .arg("battery")
        .arg(exe)
        .args(std::env::args_os().skip(1))
        .env("AUDIT_ENV_SH", repo_root().join("deploy/local/env.sh"))
        .env(CHILD, "1");
    let status = with_battery_env(c, &stack_dir, args.port_offset).status();
    if !args.keep_stack {
        if let Err(e) = stack("down", &stack_dir, args.port_offset) {
            eprintln!("[battery] stopping its stack: {e}");
        }
    }
    match status {
        Ok(s) => ExitCode::from(u8::try_from(s.code().unwrap_or(2)).unwrap_or(2)),
        Err(e) => {
            eprintln!("[battery] cannot run itself: {e}");
            ExitCode::from(2)
        }
    }
}

/// Child: the stack's environment is set; runs the battery.
fn child(args: &Args) -> ExitCode {
    let chainer_mode = match args.chainer_mode.as_str() {
        "group" => ChainerMode::Group,
        "static" => ChainerMode::Static,
        _ => ChainerMode::detect(),
    };
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_micros() as u64)
            .unwrap_or(1)
    });
    let stack_dir = std::env::var_os("AUDIT_STACK_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join(".local/battery"));
    let opts = Options {
        quick: args.quick,
        seed,
        chainer_mode,
        stack_script: stack_script(),
        log_dir: stack_dir.join("battery-logs"),
        tansu_db: stack_dir.join("kafka/tansu.db"),
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("[battery] cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let scenario = match args.scenario.as_deref() {
        None => None,
        Some(name) => match Scenario::parse(name) {
            Some(s) => Some(s),
            None => {
                eprintln!("[battery] unknown scenario {name:?} (known: broker-restart)");
                return ExitCode::from(2);
            }
        },
    };
    let outcome = match scenario {
        Some(s) => rt.block_on(battery::run_scenario(&opts, s)),
        None => rt.block_on(battery::run(&opts)),
    };
    match outcome {
        Ok((report, passed)) => {
            if let Some(path) = &args.report {
                let text = serde_json::to_string_pretty(&report).unwrap_or_default();
                if let Err(e) = std::fs::write(path, text) {
                    eprintln!("[battery] cannot write {}: {e}", path.display());
                    return ExitCode::from(2);
                }
                println!("[battery] report written to {}", path.display());
            }
            if passed {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("[battery] could not run: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    if std::env::var_os(CHILD).is_some() {
        child(&args)
    } else {
        parent(&args)
    }
}
