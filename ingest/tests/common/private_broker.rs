//! A private Kafka broker (tansu on a fresh SQLite database) for one test, started with
//! `deploy/local/stack.sh start kafka` in its own state directory on a free port, the way the
//! fault battery and worker-bench run their own stacks.
//!
//! Why: the shared broker's database grows during the suite (to ~1 GB) and its fetches slow to
//! 7-12 s, so a test pushing tens of thousands of records through it measures the suite's
//! history, not the code; a fresh database (with the header index tansu lacks, which
//! `stack.sh start kafka` adds: `kafka_index_headers`) answers in milliseconds and nobody else's tests load it.
//! The shared stack (9092/8123/8333) is never touched.
//!
//! The broker is stopped when the guard drops, also when the test panics. A reaper process in
//! its own process group also stops it if the test process dies without unwinding (nextest
//! kills a timed-out test's whole process group with SIGKILL; tansu, started with `setsid`,
//! would outlive it).

use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

pub struct PrivateBroker {
    /// `127.0.0.1:<port>`, for `bootstrap.servers` and `--kafka-brokers`.
    pub brokers: String,
    port: u16,
    dir: PathBuf,
    reaper: Option<Child>,
}

fn stack_sh() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from(".."), Path::to_path_buf)
        .join("deploy/local/stack.sh")
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    l.local_addr().expect("local addr").port()
}

/// `bash stack.sh ARGS` for the private stack: its state dir and Kafka port, and the derived
/// broker address set explicitly (env.sh keeps values already in the environment, and the test
/// runner's environment points at the shared broker).
fn stack_command(dir: &Path, port: u16) -> Command {
    let mut c = Command::new("bash");
    c.arg(stack_sh());
    with_stack_env(&mut c, dir, port);
    c
}

fn with_stack_env(c: &mut Command, dir: &Path, port: u16) {
    c.env("AUDIT_STACK_DIR", dir)
        .env("AUDIT_KAFKA_PORT", port.to_string())
        .env("KAFKA_BROKERS", format!("127.0.0.1:{port}"))
        .env("AUDIT_KAFKA_BROKERS", format!("127.0.0.1:{port}"));
}

impl PrivateBroker {
    /// Starts the broker and returns once it answers a Metadata request (stack.sh waits);
    /// panics when it cannot (tansu not installed: `deploy/local/stack.sh install`).
    ///
    /// The free port is from the ephemeral range, which every outgoing connection of the
    /// parallel tests draws from too, so it can be taken before tansu binds it; tansu then
    /// logs `AddrInUse` and exits. Only that is retried, on another port, a few times.
    pub fn start() -> PrivateBroker {
        const ATTEMPTS: usize = 3;
        let mut attempt = 1;
        loop {
            match Self::try_start() {
                Ok(broker) => return broker,
                Err(broker) if attempt < ATTEMPTS && broker.port_was_taken() => {
                    eprintln!(
                        "private broker: port {} was taken before tansu bound it; another port",
                        broker.port
                    );
                    // Dropping stops what is left and removes the state dir.
                    attempt += 1;
                }
                Err(broker) => panic!(
                    "deploy/local/stack.sh start kafka failed for the private broker on port {} \
                     (is tansu installed? deploy/local/stack.sh install)",
                    broker.port
                ),
            }
        }
    }

    /// Whether tansu's log says its port was in use.
    fn port_was_taken(&self) -> bool {
        std::fs::read_to_string(self.dir.join("logs/kafka.log"))
            .is_ok_and(|log| log.contains("AddrInUse"))
    }

    fn try_start() -> Result<PrivateBroker, PrivateBroker> {
        let port = free_port();
        let id = uuid::Uuid::new_v4().simple().to_string();
        let dir = std::env::temp_dir().join(format!("audit-private-kafka-{}", &id[..12]));
        // The reaper first: a test killed while the broker starts leaves nothing behind either.
        // It polls this process (1 s) and, once it is gone, stops the broker and removes its
        // state dir.
        let mut reaper = Command::new("bash");
        with_stack_env(&mut reaper, &dir, port);
        let reaper = reaper
            .arg("-c")
            .arg(
                r#"while kill -0 "$1" 2>/dev/null; do sleep 1; done
                   bash "$2" stop kafka >/dev/null 2>&1
                   rm -rf -- "$3""#,
            )
            .arg("private-broker-reaper")
            .arg(std::process::id().to_string())
            .arg(stack_sh())
            .arg(&dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Out of the test's process group, so that a kill of the group spares it.
            .process_group(0)
            .spawn()
            .expect("spawn the private broker's reaper");
        let broker = PrivateBroker {
            brokers: format!("127.0.0.1:{port}"),
            port,
            dir,
            reaper: Some(reaper),
        };
        let ok = stack_command(&broker.dir, port)
            .args(["start", "kafka"])
            .status()
            .expect("run deploy/local/stack.sh");
        if ok.success() {
            Ok(broker)
        } else {
            Err(broker)
        }
    }
}

impl Drop for PrivateBroker {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // The broker's side of a failure: the last lines of its log, before it goes.
            let log = self.dir.join("logs/kafka.log");
            if let Ok(text) = std::fs::read_to_string(&log) {
                let lines: Vec<&str> = text.lines().collect();
                let from = lines.len().saturating_sub(30);
                eprintln!(
                    "---- private broker log ({}), last lines ----\n{}",
                    log.display(),
                    lines[from..].join("\n")
                );
            }
        }
        match stack_command(&self.dir, self.port)
            .args(["stop", "kafka"])
            .stdout(Stdio::null())
            .status()
        {
            Ok(s) if s.success() => {
                if let Err(e) = std::fs::remove_dir_all(&self.dir) {
                    eprintln!("removing {}: {e}", self.dir.display());
                }
                // Stopped: the reaper (our child) has nothing left to do.
                if let Some(mut reaper) = self.reaper.take() {
                    let _ = reaper.kill();
                    let _ = reaper.wait();
                }
            }
            // No panic in drop, and the reaper stays: it stops the broker (and removes the
            // dir) once this process exits.
            Ok(s) => eprintln!("stopping the private broker: stack.sh {s}"),
            Err(e) => eprintln!("stopping the private broker: {e}"),
        }
    }
}
