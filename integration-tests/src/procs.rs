//! Runs the real worker binaries (`target/<profile>/{ingest,enrich,chainer,sink-clickhouse,
//! sink-archive}`) as child processes, so that tests can do to them what happens in production:
//! `kill -9`, SIGSTOP/SIGCONT (a paused "zombie"), SIGTERM (graceful stop).
//!
//! Each process logs (stdout and stderr) to its own file under a per-test directory; when a test
//! fails, [`Procs::finish`] prints the tail of every log and keeps the directory. A process that
//! exits while a test waits on a condition fails the wait at once, with its log tail.

use crate::stack;
use anyhow::{bail, Context as _};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::fmt::Write as _;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::Duration;
use tokio::sync::watch;

use crate::harness::Pipeline;

/// Flags every worker process gets on top of the in-process harness's: fast group membership
/// (a `kill -9`ed member is evicted after 6 s instead of 10), and uncoloured text logs. Not
/// longer: a restarted chainer joins ~9-12 s after its predecessor's kill, and when its join
/// beats the dead member's session expiry, tansu 0.6 completes the rebalance with the dead
/// member holding every partition and later evicts it without a new generation, leaving the
/// new member idle until its liveness watchdog re-joins (tried with 10 s: it hit that race).
/// No `--log-filter`: the workers' default is `info`, and `AUDIT_LOG` in the environment reaches
/// them (e.g. `AUDIT_LOG=info,sink_clickhouse=debug` shows each flush's query and INSERT times).
pub const PROCESS_FLAGS: &[&str] = &[
    "--kafka-property",
    "session.timeout.ms=6000",
    "--kafka-property",
    "heartbeat.interval.ms=1000",
    "--shutdown-timeout-secs",
    "30",
    "--log-format",
    "text",
];

/// The directory holding the worker binaries: a test executable is
/// `target/<profile>/deps/it-<hash>`, a binary of this crate (the fault battery) is
/// `target/<profile>/fault-battery`; the workers are in `target/<profile>/`.
pub fn bin_dir() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("locating the running executable")?;
    let dir = exe
        .parent()
        .with_context(|| format!("no directory above {}", exe.display()))?;
    Ok(if dir.file_name().is_some_and(|n| n == "deps") {
        dir.parent().unwrap_or(dir).to_path_buf()
    } else {
        dir.to_path_buf()
    })
}

/// The path of worker binary `name`, or a clear error saying how to (re)build it.
pub fn binary(name: &str) -> anyhow::Result<PathBuf> {
    let path = bin_dir()?.join(name);
    if !path.is_file() {
        bail!(
            "worker binary {} not found: the crash tests run the real worker binaries as \
             processes; build them first with `cargo build --workspace --bins` \
             (deploy/local/test.sh does)",
            path.display()
        );
    }
    // The battery is a binary of this crate; the workers each have their own crate.
    let crate_dir = if name == "fault-battery" {
        "integration-tests"
    } else {
        name
    };
    ensure_fresh(&path, crate_dir)?;
    Ok(path)
}

/// Fails if a source the binary is built from (its crate, `worker-runtime`, `schemas`,
/// `integrity`) changed
/// after the binary was linked: testing an old binary would test old code.
fn ensure_fresh(bin: &Path, crate_dir: &str) -> anyhow::Result<()> {
    fn newest(dir: &Path, best: &mut Option<(std::time::SystemTime, PathBuf)>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let path = e.path();
            match e.metadata() {
                Ok(m) if m.is_dir() => newest(&path, best),
                Ok(m) => {
                    if let Ok(t) = m.modified() {
                        if best.as_ref().is_none_or(|(b, _)| t > *b) {
                            *best = Some((t, path));
                        }
                    }
                }
                Err(_) => {}
            }
        }
    }
    let built = std::fs::metadata(bin)
        .and_then(|m| m.modified())
        .with_context(|| format!("reading the modification time of {}", bin.display()))?;
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("no workspace above integration-tests")?;
    let mut latest = None;
    for dir in [crate_dir, "worker-runtime", "schemas", "integrity"] {
        newest(&root.join(dir).join("src"), &mut latest);
    }
    newest(&root.join("schemas").join("avro"), &mut latest);
    if let Some((changed, file)) = latest {
        if changed > built {
            bail!(
                "worker binary {} is older than {}: rebuild the workers with \
                 `cargo build --workspace --bins` before running the crash tests",
                bin.display(),
                file.display()
            );
        }
    }
    Ok(())
}

/// The worker binaries a test can run, with the flags the in-process harness builds for them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Worker {
    Ingest,
    Enrich,
    Chainer,
    SinkClickhouse,
    SinkArchive,
}

impl Worker {
    /// The five worker kinds, in pipeline order.
    pub const ALL: [Worker; 5] = [
        Worker::Ingest,
        Worker::Enrich,
        Worker::Chainer,
        Worker::SinkClickhouse,
        Worker::SinkArchive,
    ];

    pub fn binary_name(self) -> &'static str {
        match self {
            Worker::Ingest => "ingest",
            Worker::Enrich => "enrich",
            Worker::Chainer => "chainer",
            Worker::SinkClickhouse => "sink-clickhouse",
            Worker::SinkArchive => "sink-archive",
        }
    }

    /// The harness's arguments for this worker, without argv\[0\], plus [`PROCESS_FLAGS`].
    pub fn args(self, p: &Pipeline) -> Vec<String> {
        let with_argv0 = match self {
            Worker::Ingest => p.ingest_args(),
            Worker::Enrich => p.enrich_args(),
            Worker::Chainer => p.chainer_args(),
            Worker::SinkClickhouse => p.clickhouse_args(),
            Worker::SinkArchive => p.archive_args(),
        };
        with_argv0
            .into_iter()
            .skip(1)
            .chain(PROCESS_FLAGS.iter().map(|s| (*s).to_owned()))
            .collect()
    }
}

/// The processes of one test: where their logs go, and every log written (for failure reports).
#[derive(Debug)]
pub struct Procs {
    dir: PathBuf,
    /// Each worker's binary, checked (present, not older than its sources) once, when the
    /// harness was made: a source edited later (another session's work) must not stop a run
    /// midway, as a restart after a kill would otherwise.
    bins: Vec<(Worker, PathBuf)>,
    logs: Mutex<Vec<(String, PathBuf)>>,
}

impl Procs {
    /// A fresh log directory for the test named `ns`; checks the binaries exist.
    pub fn new(ns: &str) -> anyhow::Result<Self> {
        Self::in_dir(std::env::temp_dir().join(format!("audit-it-{ns}-procs")))
    }

    /// Like [`Procs::new`], with the logs in `dir`.
    pub fn in_dir(dir: PathBuf) -> anyhow::Result<Self> {
        let bins = Worker::ALL
            .iter()
            .map(|w| Ok((*w, binary(w.binary_name())?)))
            .collect::<anyhow::Result<Vec<_>>>()?;
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("creating the log directory {}", dir.display()))?;
        Ok(Procs {
            dir,
            bins,
            logs: Mutex::new(Vec::new()),
        })
    }

    /// Starts `worker` with the pipeline's flags (plus `extra`) as a process labelled `label`
    /// (e.g. `chainer-a`); its log is `<dir>/<label>.<n>.log`.
    pub fn start(
        &self,
        p: &Pipeline,
        worker: Worker,
        label: &str,
        extra: &[&str],
    ) -> anyhow::Result<Proc> {
        let mut args = worker.args(p);
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        self.spawn(worker, label, args)
    }

    /// The directory the logs are written to.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Starts `worker` with exactly `args` (without argv\[0\]) as a process labelled `label`.
    pub fn spawn(&self, worker: Worker, label: &str, args: Vec<String>) -> anyhow::Result<Proc> {
        let bin = match self.bins.iter().find(|(w, _)| *w == worker) {
            Some((_, path)) => path.clone(),
            None => binary(worker.binary_name())?,
        };
        let mut logs = self.logs.lock().unwrap_or_else(|e| e.into_inner());
        let name = format!("{label}.{}", logs.len() + 1);
        let log = self.dir.join(format!("{name}.log"));
        let file = std::fs::File::create(&log)
            .with_context(|| format!("creating log file {}", log.display()))?;
        let mut cmd = tokio::process::Command::new(&bin);
        cmd.args(&args)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::from(file.try_clone()?))
            .stderr(Stdio::from(file))
            .kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let pid = child
            .id()
            .with_context(|| format!("{name} has no pid right after spawn"))?;
        let pid = Pid::from_raw(i32::try_from(pid).context("pid out of range")?);
        let (tx, rx) = watch::channel(None);
        // The waiter owns the child: it reaps it and publishes its exit status, so liveness is
        // known without a `&mut` borrow. Dropping it (test ends) kills the child.
        tokio::spawn(async move {
            let status = child.wait().await.ok();
            let _ = tx.send(Some(status));
        });
        logs.push((name.clone(), log.clone()));
        tracing::info!(%name, %pid, "started {}", bin.display());
        Ok(Proc {
            name,
            pid,
            log,
            exit: rx,
        })
    }

    /// Prints every log's tail (on failure) and keeps them; removes the directory on success
    /// (unless `AUDIT_KEEP_PROCESS_LOGS` is set).
    pub fn finish<T>(&self, result: &anyhow::Result<T>) {
        match result {
            Ok(_) if std::env::var_os("AUDIT_KEEP_PROCESS_LOGS").is_some() => {
                eprintln!("worker process logs kept in {}", self.dir.display());
            }
            Ok(_) => {
                let _ = std::fs::remove_dir_all(&self.dir);
            }
            Err(e) => {
                let logs = self.logs.lock().unwrap_or_else(|e| e.into_inner());
                let mut out = format!(
                    "\n==== test failed: {e:#}\n==== worker process logs are kept in {}\n",
                    self.dir.display()
                );
                for (name, path) in logs.iter() {
                    let _ = writeln!(out, "---- {name} (last 40 lines)\n{}", tail(path, 40));
                }
                eprintln!("{out}");
            }
        }
    }
}

/// The last `n` lines of a file.
pub fn tail(path: &Path, n: usize) -> String {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(n)..].join("\n")
        }
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}

/// One worker process. Dropping it kills the process (SIGKILL) if it still runs.
#[derive(Debug)]
pub struct Proc {
    pub name: String,
    pid: Pid,
    log: PathBuf,
    /// `None` while running; `Some(status)` once reaped (`Some(None)`: wait failed).
    exit: watch::Receiver<Option<Option<ExitStatus>>>,
}

impl Proc {
    fn signal(&self, sig: Signal) -> anyhow::Result<()> {
        if self.has_exited() {
            bail!(
                "{} already exited ({}), cannot send {sig}\n{}",
                self.name,
                self.status_text(),
                tail(&self.log, 40)
            );
        }
        kill(self.pid, sig).with_context(|| format!("sending {sig} to {}", self.name))
    }

    /// The process id.
    pub fn pid(&self) -> i32 {
        self.pid.as_raw()
    }

    /// Its log file.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The exit status text once it exited (`running` before).
    pub fn exit_text(&self) -> String {
        self.status_text()
    }

    pub fn has_exited(&self) -> bool {
        self.exit.borrow().is_some()
    }

    fn status_text(&self) -> String {
        match &*self.exit.borrow() {
            None => "running".into(),
            Some(None) => "exit status unknown".into(),
            Some(Some(s)) => s.to_string(),
        }
    }

    /// Fails (with the log tail) if the process is no longer running.
    pub fn ensure_running(&self) -> anyhow::Result<()> {
        if self.has_exited() {
            bail!(
                "{} exited unexpectedly ({})\n---- last lines of its log:\n{}",
                self.name,
                self.status_text(),
                tail(&self.log, 60)
            );
        }
        Ok(())
    }

    async fn wait_exit(&mut self, within: Duration) -> anyhow::Result<Option<ExitStatus>> {
        let status = tokio::time::timeout(within, self.exit.wait_for(Option::is_some))
            .await
            .with_context(|| format!("{} still running {within:?} after the signal", self.name))?
            .with_context(|| format!("{}'s waiter is gone", self.name))?;
        Ok(status.flatten())
    }

    /// `kill -9`: no drain, no commit, in-flight deliveries lost. Waits until it is reaped.
    pub async fn kill9(mut self) -> anyhow::Result<()> {
        self.signal(Signal::SIGKILL)?;
        self.wait_exit(Duration::from_secs(10)).await?;
        Ok(())
    }

    /// Graceful stop (SIGTERM): the worker drains, stores and commits; it must exit 0.
    pub async fn terminate(mut self) -> anyhow::Result<()> {
        self.signal(Signal::SIGTERM)?;
        let status = match self.wait_exit(Duration::from_secs(45)).await {
            Ok(s) => s,
            Err(e) => {
                let _ = kill(self.pid, Signal::SIGKILL);
                bail!(
                    "{e:#}: graceful stop hung (killed now)\n{}",
                    tail(&self.log, 60)
                );
            }
        };
        if !status.is_some_and(|s| s.success()) {
            bail!(
                "{} did not exit cleanly after SIGTERM ({})\n---- last lines of its log:\n{}",
                self.name,
                self.status_text(),
                tail(&self.log, 60)
            );
        }
        Ok(())
    }

    /// SIGSTOP: the process freezes (no heartbeats, no deliveries) but keeps its state.
    pub fn pause(&self) -> anyhow::Result<()> {
        self.signal(Signal::SIGSTOP)
    }

    /// SIGCONT: a paused process resumes where it was.
    pub fn resume(&self) -> anyhow::Result<()> {
        self.signal(Signal::SIGCONT)
    }

    /// The lines of its log containing `needle`.
    pub fn log_lines(&self, needle: &str) -> Vec<String> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(needle))
            .map(str::to_owned)
            .collect()
    }

    /// How many log lines contain `needle`.
    pub fn log_count(&self, needle: &str) -> usize {
        self.log_lines(needle).len()
    }

    /// The partitions of `topic` its consumer holds as far as its log says (the latest
    /// "partitions assigned" line, or nothing after a later "partitions revoked"), or `None` if
    /// it never got an assignment.
    pub fn assignment(&self, topic: &str) -> Option<Vec<i32>> {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let mut current = None;
        for line in text.lines() {
            if line.contains("partitions assigned") {
                current = Some(partitions_in(line, topic));
            } else if line.contains("partitions revoked") && current.is_some() {
                current = Some(Vec::new());
            }
        }
        current
    }
}

/// The partition numbers of `topic` listed in a rebalance log line (`<topic>/<n>@<offset>`).
fn partitions_in(line: &str, topic: &str) -> Vec<i32> {
    let prefix = format!("{topic}/");
    line.match_indices(&prefix)
        .filter_map(|(i, _)| {
            let rest = &line[i + prefix.len()..];
            let end = rest.find(|c: char| !c.is_ascii_digit())?;
            rest[..end].parse().ok()
        })
        .collect()
}

impl Drop for Proc {
    fn drop(&mut self) {
        if !self.has_exited() {
            // A paused process dies of SIGKILL too; the waiter reaps it.
            let _ = kill(self.pid, Signal::SIGKILL);
        }
    }
}

/// [`stack::poll_until`], failing at once (with the log tail) if one of `procs` exits.
pub async fn poll_alive<T, S, F, Fut>(
    what: &str,
    deadline: Duration,
    procs: &[&Proc],
    mut check: F,
) -> anyhow::Result<T>
where
    S: std::fmt::Debug,
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Result<T, S>>>,
{
    // `Ok(Err(e))` out of poll_until: a process died; stop polling and report it.
    let outcome: Result<T, anyhow::Error> = stack::poll_until(what, deadline, || {
        let died = procs.iter().find_map(|p| p.ensure_running().err());
        let fut = check();
        async move {
            if let Some(e) = died {
                return Ok(Ok(Err(e)));
            }
            Ok(fut.await?.map(Ok))
        }
    })
    .await?;
    outcome.with_context(|| format!("while waiting for {what}"))
}
