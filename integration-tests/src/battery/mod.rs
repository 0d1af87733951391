//! The fault battery (issue 6): the five real worker binaries run as processes under a steady
//! load of valid and invalid events, while the battery SIGKILLs workers of every kind, restarts
//! tansu, ClickHouse and SeaweedFS (gracefully and by SIGKILL), holds a broker outage longer
//! than the workers' `message.timeout.ms`, SIGSTOPs workers past their group session and deletes
//! the head of a chained partition. After each fault it measures how long until every worker
//! answers `/readyz` 200 again. Afterwards it checks that every valid event is exactly once in
//! ClickHouse and in the archive, that the chain verifies from each store, and that the
//! dead-letter topic holds exactly the invalid inputs; it prints what it did and found and
//! writes a JSON report.
//!
//! It restarts servers, so it must run against a stack of its own (`deploy/local/stack.sh` with
//! its own `AUDIT_STACK_DIR` and ports): the `fault-battery` command starts one.

mod checks;
mod load;
mod scenario;

use crate::demo::Rng;
use crate::harness::Pipeline;
use crate::procs::{Proc, Procs, Worker};
use anyhow::{bail, Context as _};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

pub use checks::Findings;
pub use scenario::{run_scenario, Scenario};

const PARTITIONS: i32 = 4;
/// The workers' group session (crate::procs::PROCESS_FLAGS sets it): a pause must outlast it.
const SESSION: Duration = Duration::from_secs(6);

/// How the chainer takes its partitions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChainerMode {
    /// A consumer group (the default before the static option exists).
    Group,
    /// `--partitions all`: a static assignment, no group.
    Static,
}

impl ChainerMode {
    /// `Static` if the chainer binary knows `--partitions`, else `Group` (also if asking fails).
    pub fn detect() -> Self {
        let help = crate::procs::binary("chainer")
            .ok()
            .and_then(|bin| std::process::Command::new(bin).arg("--help").output().ok());
        match help {
            Some(out) if String::from_utf8_lossy(&out.stdout).contains("--partitions") => {
                ChainerMode::Static
            }
            _ => ChainerMode::Group,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            ChainerMode::Group => "group",
            ChainerMode::Static => "static",
        }
    }
}

/// What the caller chose.
#[derive(Debug, Clone)]
pub struct Options {
    /// The shortened form CI runs.
    pub quick: bool,
    pub seed: u64,
    pub chainer_mode: ChainerMode,
    /// `deploy/local/stack.sh`, run with the battery's own stack in the environment.
    pub stack_script: PathBuf,
    /// Where the worker logs and the stack commands' output go.
    pub log_dir: PathBuf,
    /// The tansu SQLite database of the battery's stack (for deleting records).
    pub tansu_db: PathBuf,
}

/// How much of each fault, and how long things may take.
#[derive(Debug, Clone)]
struct Plan {
    kills_per_kind: usize,
    restarts_per_server: usize,
    outage: Duration,
    /// Passed to every worker as `message.timeout.ms` when set (the workers' default is
    /// 300 000 ms; the full outage of 6 min outlasts it).
    message_timeout_ms: Option<u64>,
    /// Workers SIGSTOPped (one fault each).
    pauses: Vec<Worker>,
    pause_for: Duration,
    /// Valid events per load chunk, and the pause between chunks.
    chunk: usize,
    chunk_every: Duration,
    /// Random pause between faults.
    gap_ms: (u64, u64),
    /// A worker not ready this long after a fault ended is a failure.
    ready_bound: Duration,
    /// How long everything sent may take to land once the load stops.
    settle: Duration,
}

impl Plan {
    fn new(quick: bool, mode: ChainerMode) -> Self {
        // A static chainer has no group session to outlast: pause enrich then.
        let grouped = if mode == ChainerMode::Group {
            Worker::Chainer
        } else {
            Worker::Enrich
        };
        if quick {
            Plan {
                kills_per_kind: 2,
                restarts_per_server: 1,
                outage: Duration::from_secs(20),
                message_timeout_ms: Some(10_000),
                pauses: vec![grouped],
                pause_for: SESSION + Duration::from_secs(4),
                chunk: 10,
                chunk_every: Duration::from_millis(400),
                gap_ms: (500, 2000),
                ready_bound: Duration::from_secs(120),
                settle: Duration::from_secs(180),
            }
        } else {
            Plan {
                kills_per_kind: 11,
                restarts_per_server: 2,
                outage: Duration::from_secs(360),
                message_timeout_ms: None,
                pauses: Worker::ALL.to_vec(),
                pause_for: SESSION + Duration::from_secs(10),
                chunk: 20,
                chunk_every: Duration::from_millis(400),
                gap_ms: (2000, 6000),
                ready_bound: Duration::from_secs(180),
                settle: Duration::from_secs(600),
            }
        }
    }
}

/// A server of the stack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Server {
    Kafka,
    Clickhouse,
    S3,
}

impl Server {
    fn name(self) -> &'static str {
        match self {
            Server::Kafka => "kafka",
            Server::Clickhouse => "clickhouse",
            Server::S3 => "s3",
        }
    }
}

/// One fault to inject.
#[derive(Debug, Clone, Copy)]
enum Action {
    Kill(Worker),
    /// `crash`: SIGKILL then start; else a graceful restart.
    Restart(Server, bool),
    Outage,
    Pause(Worker),
    DeleteRecords,
}

impl Action {
    /// The row of the summary table it counts in.
    fn kind(self) -> String {
        match self {
            Action::Kill(w) => format!("SIGKILL {}", w.binary_name()),
            Action::Restart(s, _) => format!("restart {}", s.name()),
            Action::Outage => "broker outage".into(),
            Action::Pause(w) => format!("SIGSTOP {}", w.binary_name()),
            Action::DeleteRecords => "delete chained records".into(),
        }
    }
}

/// What one fault did and how the pipeline came back.
#[derive(Debug, Clone)]
struct FaultRecord {
    kind: String,
    detail: String,
    /// Seconds since the battery began, when the fault began.
    at: f64,
    /// How long the fault itself lasted (process down, server down, paused).
    lasted: f64,
    /// Seconds from the end of the fault until every worker answered /readyz 200; `None` if
    /// not within the bound.
    ready_after: Option<f64>,
    /// Workers not ready at the bound.
    not_ready: Vec<String>,
}

/// A worker process that exited without being told to (the battery restarts it, as an
/// orchestrator would, and reports it).
#[derive(Debug, Clone)]
struct UnexpectedExit {
    worker: &'static str,
    at: f64,
    status: String,
    log_tail: String,
}

/// One worker kind: its health address and its current process.
struct Slot {
    worker: Worker,
    health: String,
    proc: Option<Proc>,
}

struct Battery<'a> {
    opts: &'a Options,
    plan: Plan,
    p: &'a Pipeline,
    procs: Procs,
    slots: Vec<Slot>,
    began: Instant,
    faults: Vec<FaultRecord>,
    exits: Vec<UnexpectedExit>,
    rng: Rng,
    stack_log: PathBuf,
    /// Valid events, invalid records and chunk retries of the load, once it stopped.
    sent: Option<(usize, usize, usize)>,
}

/// Runs the battery against the stack the environment points at; returns the JSON report and
/// whether every check passed. Errors only when the battery itself cannot go on.
pub async fn run(opts: &Options) -> anyhow::Result<(Value, bool)> {
    let plan = Plan::new(opts.quick, opts.chainer_mode);
    let p = Pipeline::new("battery", PARTITIONS).await?;
    std::fs::create_dir_all(&opts.log_dir)
        .with_context(|| format!("creating {}", opts.log_dir.display()))?;
    let procs = Procs::in_dir(opts.log_dir.join(&p.ns))?;
    let stack_log = opts.log_dir.join(format!("{}-stack.log", p.ns));
    println!(
        "[battery] {} form, seed {}, chainer mode {}, namespace {}, logs in {}",
        if opts.quick { "quick" } else { "full" },
        opts.seed,
        opts.chainer_mode.name(),
        p.ns,
        procs.dir().display()
    );
    let slots = Worker::ALL
        .iter()
        .enumerate()
        .map(|(i, w)| Slot {
            worker: *w,
            health: format!("127.0.0.1:{}", health_port(i)),
            proc: None,
        })
        .collect();
    let mut b = Battery {
        opts,
        plan: plan.clone(),
        p: &p,
        procs,
        slots,
        began: Instant::now(),
        faults: Vec::new(),
        exits: Vec::new(),
        rng: Rng::new(opts.seed),
        stack_log,
        sent: None,
    };
    let outcome = b.run_all().await;
    let passed_run = outcome.as_ref().is_ok_and(|f| f.passed());
    let findings = match outcome {
        Ok(f) => f,
        Err(e) => {
            let mut f = Findings::default();
            f.fail(format!("the battery could not complete: {e:#}"));
            f
        }
    };
    let report = b.report(&findings);
    b.print_summary(&findings);
    let logs = b.procs.dir().to_path_buf();
    if passed_run {
        println!("[battery] PASSED");
    } else {
        println!(
            "[battery] FAILED ({} failures); worker logs kept in {}",
            findings.failures.len(),
            logs.display()
        );
    }
    Ok((report, passed_run))
}

/// Why a worker exited, from its log: its final `Error:` line (the worker's main returns the
/// error) and the last warning or error before it, else the last lines.
fn exit_reason(log: &std::path::Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| !l.contains("librdkafka") && !l.trim_start().starts_with("at "))
        .collect();
    match lines.iter().rposition(|l| l.starts_with("Error:")) {
        Some(i) => {
            let before = lines[..i]
                .iter()
                .rev()
                .find(|l| l.contains(" WARN ") || l.contains(" ERROR "))
                .map_or(String::new(), |l| format!("{l}\n"));
            format!("{before}{}", lines[i])
        }
        None => lines[lines.len().saturating_sub(6)..].join("\n"),
    }
}

/// Health ports of the five workers (distinct from both stacks' ports).
fn health_port(i: usize) -> u16 {
    let base: u16 = std::env::var("AUDIT_BATTERY_HEALTH_PORT_BASE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(29_500);
    base + i as u16
}

/// Replaces the value of `flag` in `args` (clap refuses a repeated single-value flag).
fn set_flag(args: &mut Vec<String>, flag: &str, value: &str) {
    match args.iter().position(|a| a == flag) {
        Some(i) if i + 1 < args.len() => args[i + 1] = value.to_owned(),
        _ => args.extend([flag.to_owned(), value.to_owned()]),
    }
}

/// `GET /readyz` with a raw HTTP/1.0 request: true on a 200 within a second.
async fn ready(addr: &str) -> bool {
    let probe = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
        s.write_all(b"GET /readyz HTTP/1.0\r\nHost: battery\r\n\r\n")
            .await
            .ok()?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.ok()?;
        let text = String::from_utf8_lossy(&buf);
        Some(text.lines().next().is_some_and(|l| l.contains(" 200 ")))
    };
    tokio::time::timeout(Duration::from_secs(1), probe)
        .await
        .ok()
        .flatten()
        .unwrap_or(false)
}

impl Battery<'_> {
    fn secs(&self) -> f64 {
        self.began.elapsed().as_secs_f64()
    }

    fn say(&self, what: &str) {
        println!("[battery {:7.1}s] {what}", self.secs());
    }

    fn worker_args(&self, w: Worker, health: &str) -> Vec<String> {
        let mut args = w.args(self.p);
        set_flag(&mut args, "--health-addr", health);
        if let Some(ms) = self.plan.message_timeout_ms {
            args.extend([
                "--kafka-property".into(),
                format!("message.timeout.ms={ms}"),
            ]);
        }
        if w == Worker::Chainer && self.opts.chainer_mode == ChainerMode::Static {
            args.extend(["--partitions".into(), "all".into()]);
        }
        args
    }

    fn start(&mut self, i: usize) -> anyhow::Result<()> {
        let (w, health) = (self.slots[i].worker, self.slots[i].health.clone());
        let args = self.worker_args(w, &health);
        let proc = self.procs.spawn(w, w.binary_name(), args)?;
        self.slots[i].proc = Some(proc);
        Ok(())
    }

    fn slot_of(&self, w: Worker) -> usize {
        self.slots
            .iter()
            .position(|s| s.worker == w)
            .unwrap_or_default()
    }

    /// Restarts (and records) every worker process that exited on its own.
    fn reap_exits(&mut self) -> anyhow::Result<()> {
        for i in 0..self.slots.len() {
            let exited = self.slots[i]
                .proc
                .as_ref()
                .filter(|p| p.has_exited())
                .map(|p| (p.exit_text(), exit_reason(p.log_path())));
            if let Some((status, log_tail)) = exited {
                let worker = self.slots[i].worker.binary_name();
                self.say(&format!(
                    "UNEXPECTED EXIT of {worker} ({status}); restarting it"
                ));
                self.exits.push(UnexpectedExit {
                    worker,
                    at: self.secs(),
                    status,
                    log_tail,
                });
                self.slots[i].proc = None;
                self.start(i)?;
            }
        }
        Ok(())
    }

    /// Waits until every worker answers /readyz 200 (restarting any that exits); returns the
    /// time it took, or the workers still not ready at the bound.
    async fn wait_ready(&mut self) -> anyhow::Result<Result<f64, Vec<String>>> {
        let t0 = Instant::now();
        loop {
            self.reap_exits()?;
            let mut not_ready = Vec::new();
            for s in &self.slots {
                if !ready(&s.health).await {
                    not_ready.push(s.worker.binary_name().to_owned());
                }
            }
            if not_ready.is_empty() {
                return Ok(Ok(t0.elapsed().as_secs_f64()));
            }
            if t0.elapsed() > self.plan.ready_bound {
                return Ok(Err(not_ready));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `stack.sh CMD SERVICE` on the battery's stack; its output goes to the stack log.
    async fn stack(&self, cmd: &str, server: Server) -> anyhow::Result<()> {
        use std::fs::OpenOptions;
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.stack_log)
            .with_context(|| format!("opening {}", self.stack_log.display()))?;
        let status = tokio::process::Command::new("bash")
            .arg(&self.opts.stack_script)
            .arg(cmd)
            .arg(server.name())
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .status()
            .await
            .with_context(|| format!("running stack.sh {cmd} {}", server.name()))?;
        if !status.success() {
            bail!(
                "stack.sh {cmd} {} failed ({status}); see {}",
                server.name(),
                self.stack_log.display()
            );
        }
        Ok(())
    }

    fn schedule(&mut self) -> Vec<Action> {
        let mut actions = Vec::new();
        for w in Worker::ALL {
            actions.extend((0..self.plan.kills_per_kind).map(|_| Action::Kill(w)));
        }
        for s in [Server::Kafka, Server::Clickhouse, Server::S3] {
            actions
                .extend((0..self.plan.restarts_per_server).map(|i| Action::Restart(s, i % 2 == 1)));
        }
        actions.extend(self.plan.pauses.iter().map(|w| Action::Pause(*w)));
        actions.push(Action::DeleteRecords);
        // Fisher-Yates with the seeded generator: the same seed replays the same order.
        for i in (1..actions.len()).rev() {
            let j = self.rng.below(i as u64 + 1) as usize;
            actions.swap(i, j);
        }
        // The long outage in the middle of the run, with load before and after it.
        let mid = actions.len() / 2;
        actions.insert(mid, Action::Outage);
        actions
    }

    async fn run_all(&mut self) -> anyhow::Result<Findings> {
        for i in 0..self.slots.len() {
            self.start(i)?;
        }
        let load = load::Load::start(
            self.p,
            self.plan.chunk,
            self.plan.chunk_every,
            self.opts.seed,
        )
        .await?;
        match self.wait_ready().await? {
            Ok(s) => self.say(&format!("all five workers ready after {s:.1}s")),
            Err(not) => bail!("workers never became ready at the start: {not:?}"),
        }
        let actions = self.schedule();
        self.say(&format!("{} faults scheduled", actions.len()));
        for (n, a) in actions.iter().enumerate() {
            let gap = self.plan.gap_ms.0 + self.rng.below(self.plan.gap_ms.1 - self.plan.gap_ms.0);
            tokio::time::sleep(Duration::from_millis(gap)).await;
            self.reap_exits()?;
            let rec = self.inject(*a).await?;
            let ready = match rec.ready_after {
                Some(s) => format!("ready again after {s:.1}s"),
                None => format!(
                    "NOT READY after {:?}: {:?}",
                    self.plan.ready_bound, rec.not_ready
                ),
            };
            let sent = load.snapshot();
            self.say(&format!(
                "fault {}/{}: {} ({}) lasted {:.1}s, {ready}; load: {} valid + {} invalid sent",
                n + 1,
                actions.len(),
                rec.kind,
                rec.detail,
                rec.lasted,
                sent.valid.len(),
                sent.invalid.len()
            ));
            self.faults.push(rec);
        }
        // A little load after the last fault, then stop it.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let sent = load.stop().await?;
        self.say(&format!(
            "load stopped: {} valid and {} invalid events sent ({} chunk retries)",
            sent.valid.len(),
            sent.invalid.len(),
            sent.retries
        ));
        self.sent = Some((sent.valid.len(), sent.invalid.len(), sent.retries));
        let mut findings = Findings::default();
        checks::settle(self, &sent, &mut findings).await?;
        // Stop every worker gracefully, so that nothing lands after the checks.
        for i in 0..self.slots.len() {
            if let Some(proc) = self.slots[i].proc.take() {
                let name = proc.name.clone();
                if let Err(e) = proc.terminate().await {
                    findings.fail(format!("{name} did not stop cleanly: {e:#}"));
                }
            }
        }
        checks::check_all(self.p, &sent, &mut findings).await;
        for f in &self.faults {
            if f.ready_after.is_none() {
                findings.fail(format!(
                    "after {} at {:.1}s ({}): {:?} not ready within {:?}",
                    f.kind, f.at, f.detail, f.not_ready, self.plan.ready_bound
                ));
            }
        }
        Ok(findings)
    }

    async fn inject(&mut self, a: Action) -> anyhow::Result<FaultRecord> {
        let at = self.secs();
        let t0 = Instant::now();
        let detail = match a {
            Action::Kill(w) => {
                let i = self.slot_of(w);
                if let Some(proc) = self.slots[i].proc.take() {
                    let pid = proc.pid();
                    proc.kill9().await?;
                    self.start(i)?;
                    format!("pid {pid}")
                } else {
                    "no process".into()
                }
            }
            Action::Restart(s, crash) => {
                if crash {
                    self.stack("kill", s).await?;
                    self.stack("start", s).await?;
                    "SIGKILL, then start".into()
                } else {
                    self.stack("restart", s).await?;
                    "graceful stop, then start".into()
                }
            }
            Action::Outage => {
                self.stack("stop", Server::Kafka).await?;
                let until = Instant::now() + self.plan.outage;
                // Workers may exit during the outage: restart them as an orchestrator would.
                while Instant::now() < until {
                    self.reap_exits()?;
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                self.stack("start", Server::Kafka).await?;
                format!(
                    "tansu stopped for {:?} (workers' message.timeout.ms {})",
                    self.plan.outage,
                    self.plan
                        .message_timeout_ms
                        .map_or("300000 (default)".into(), |m| m.to_string())
                )
            }
            Action::Pause(w) => {
                let i = self.slot_of(w);
                match &self.slots[i].proc {
                    Some(proc) => {
                        proc.pause()?;
                        tokio::time::sleep(self.plan.pause_for).await;
                        proc.resume()?;
                        format!("paused {:?} (session {:?})", self.plan.pause_for, SESSION)
                    }
                    None => "no process".into(),
                }
            }
            Action::DeleteRecords => {
                let note = match checks::chained_head_to_cut(self.p).await? {
                    None => {
                        "nothing deleted: no chained partition had records both sinks committed"
                            .to_owned()
                    }
                    Some(cut) => {
                        // tansu's store takes no second writer (see `delete_chained_head`):
                        // the broker is stopped while the records go, as for an outage.
                        self.stack("stop", Server::Kafka).await?;
                        let deleted = checks::delete_chained_head(&self.opts.tansu_db, &cut).await;
                        self.stack("start", Server::Kafka).await?;
                        let deleted = deleted?;
                        format!(
                            "{}; broker stopped for the deletion",
                            checks::describe_cut(self.p, &cut, &deleted).await?
                        )
                    }
                };
                // Restart what reads the chained log, so that their recovery meets the gap.
                for w in [Worker::Chainer, Worker::SinkClickhouse, Worker::SinkArchive] {
                    let i = self.slot_of(w);
                    if let Some(proc) = self.slots[i].proc.take() {
                        proc.kill9().await?;
                    }
                    self.start(i)?;
                }
                format!("{note}; chainer and both sinks then SIGKILLed and restarted")
            }
        };
        let lasted = t0.elapsed().as_secs_f64();
        let (ready_after, not_ready) = match self.wait_ready().await? {
            Ok(s) => (Some(s), Vec::new()),
            Err(not) => (None, not),
        };
        Ok(FaultRecord {
            kind: a.kind(),
            detail,
            at,
            lasted,
            ready_after,
            not_ready,
        })
    }

    /// Per fault kind: count and time back to ready (min/median/max).
    fn table(&self) -> BTreeMap<String, (usize, Vec<f64>, usize)> {
        let mut rows: BTreeMap<String, (usize, Vec<f64>, usize)> = BTreeMap::new();
        for f in &self.faults {
            let r = rows.entry(f.kind.clone()).or_default();
            r.0 += 1;
            match f.ready_after {
                Some(s) => r.1.push(s),
                None => r.2 += 1,
            }
        }
        for r in rows.values_mut() {
            r.1.sort_by(f64::total_cmp);
        }
        rows
    }

    fn print_summary(&self, findings: &Findings) {
        println!();
        println!(
            "{:<28} {:>5} {:>9} {:>9} {:>9} {:>10}",
            "fault kind", "count", "ready min", "median", "max", "not ready"
        );
        let mut kills = 0;
        for (kind, (count, times, missed)) in self.table() {
            if kind.starts_with("SIGKILL") {
                kills += count;
            }
            let (min, med, max) = stats(&times);
            println!("{kind:<28} {count:>5} {min:>8.1}s {med:>8.1}s {max:>8.1}s {missed:>10}");
        }
        println!("SIGKILLs of workers: {kills} (plus 3 per chained-record deletion)");
        println!(
            "unexpected worker exits (restarted by the battery): {}",
            self.exits.len()
        );
        for e in &self.exits {
            println!(
                "  {} at {:.1}s: {}\n    {}",
                e.worker,
                e.at,
                e.status,
                e.log_tail.replace('\n', "\n    ")
            );
        }
        for n in &findings.notes {
            println!("note: {n}");
        }
        for f in &findings.failures {
            println!("FAILURE: {f}");
        }
    }

    fn report(&self, findings: &Findings) -> Value {
        let table: Vec<Value> = self
            .table()
            .into_iter()
            .map(|(kind, (count, times, missed))| {
                let (min, med, max) = stats(&times);
                json!({"kind": kind, "count": count, "ready_secs_min": min,
                       "ready_secs_median": med, "ready_secs_max": max, "not_ready": missed})
            })
            .collect();
        let faults: Vec<Value> = self
            .faults
            .iter()
            .map(|f| {
                json!({"kind": f.kind, "detail": f.detail, "at_secs": f.at,
                       "lasted_secs": f.lasted, "ready_after_secs": f.ready_after,
                       "not_ready": f.not_ready})
            })
            .collect();
        let exits: Vec<Value> = self
            .exits
            .iter()
            .map(|e| json!({"worker": e.worker, "at_secs": e.at, "status": e.status, "log_tail": e.log_tail}))
            .collect();
        let kills = self
            .faults
            .iter()
            .filter(|f| f.kind.starts_with("SIGKILL"))
            .count();
        let (valid, invalid, retries) = self.sent.unwrap_or_default();
        json!({
            "form": if self.opts.quick { "quick" } else { "full" },
            "totals": {"worker_sigkills": kills, "faults": self.faults.len(),
                       "valid_events_sent": valid, "invalid_records_sent": invalid,
                       "load_chunk_retries": retries,
                       "unexpected_worker_exits": self.exits.len()},
            "seed": self.opts.seed,
            "chainer_mode": self.opts.chainer_mode.name(),
            "namespace": self.p.ns,
            "duration_secs": self.secs(),
            "ready_bound_secs": self.plan.ready_bound.as_secs_f64(),
            "passed": findings.passed(),
            "summary": table,
            "faults": faults,
            "unexpected_exits": exits,
            "checks": findings.to_json(),
            "worker_logs": self.procs.dir().display().to_string(),
        })
    }
}

fn stats(sorted: &[f64]) -> (f64, f64, f64) {
    if sorted.is_empty() {
        return (f64::NAN, f64::NAN, f64::NAN);
    }
    (
        sorted[0],
        sorted[sorted.len() / 2],
        sorted[sorted.len() - 1],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_flag_replaces_or_appends() {
        let mut a: Vec<String> = ["--health-addr", "", "--x", "1"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        set_flag(&mut a, "--health-addr", "127.0.0.1:1");
        assert_eq!(a[1], "127.0.0.1:1");
        set_flag(&mut a, "--y", "2");
        assert_eq!(a[a.len() - 2..], ["--y".to_string(), "2".to_string()]);
    }

    #[test]
    fn full_plan_meets_the_issue() {
        let p = Plan::new(false, ChainerMode::Group);
        assert!(p.kills_per_kind * 5 >= 50);
        assert!(p.restarts_per_server >= 2);
        assert!(p.outage >= Duration::from_secs(360));
        assert!(p.pause_for > SESSION);
        let q = Plan::new(true, ChainerMode::Group);
        assert!(q.outage.as_millis() > u128::from(q.message_timeout_ms.unwrap_or(u64::MAX)));
    }

    #[test]
    fn stats_of_sorted_times() {
        assert_eq!(stats(&[1.0, 2.0, 9.0]), (1.0, 2.0, 9.0));
        assert!(stats(&[]).0.is_nan());
    }
}
