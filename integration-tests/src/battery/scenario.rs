//! Scenario mode: one fault reproduced as an issue describes it, measured, then the battery's
//! usual end checks.
//!
//! `broker-restart` is issue 6's "Done when" case (item 2): the five workers run as processes,
//! about 15,000 demo lifecycle events are published, and once the chainer has chained a good
//! part of them (its partitions hold a real tail) tansu is SIGKILLed, kept down 10 s and
//! started again. Measured: the time from the restart until every valid event is in ClickHouse
//! and in the archive (the bound is 3 minutes, with no manual step) and the time until
//! each worker answers `/readyz` 200 again. Unlike the battery, nothing restarts a worker here:
//! a worker that exits is a failure, reported with its last log lines.

use super::load::{Load, Sent};
use super::{
    checks, exit_reason, health_port, ready, Battery, FaultRecord, Findings, Options, Plan, Server,
    Slot, UnexpectedExit, PARTITIONS,
};
use crate::demo::Rng;
use crate::harness::Pipeline;
use crate::procs::{Procs, Worker};
use anyhow::{bail, Context as _};
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use serde_json::{json, Value};
use std::collections::HashSet;
use std::time::{Duration, Instant};

/// The scenarios `--scenario` knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    /// Issue 6 item 2: SIGKILL tansu mid-chaining, 10 s down, start it again.
    BrokerRestart,
}

impl Scenario {
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "broker-restart" => Some(Scenario::BrokerRestart),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Scenario::BrokerRestart => "broker-restart",
        }
    }
}

/// Valid events to publish before the fault (the run published 15,565).
const EVENTS: usize = 15_000;
/// The fault waits until this share of them is on the chained topic.
const CHAINED_SHARE: f64 = 0.4;
/// How long tansu stays down.
const DOWN: Duration = Duration::from_secs(10);
/// Issue 6: every event delivered within 3 minutes of the restart.
const DELIVERY_BOUND: Duration = Duration::from_secs(180);
/// How long the scenario keeps measuring past the bound, to report the real figure.
const GIVE_UP: Duration = Duration::from_secs(600);

/// What the scenario measured (seconds are from the moment `stack.sh start kafka` was run).
#[derive(Debug, Default)]
struct Figures {
    events: usize,
    invalid: usize,
    publish_secs: f64,
    chained_at_kill: u64,
    clickhouse_at_kill: u64,
    kill_secs: f64,
    down_secs: f64,
    start_secs: f64,
    clickhouse_complete: Option<f64>,
    archive_complete: Option<f64>,
    /// Per worker: first /readyz 200 after the restart, the last time it turned 200 again
    /// (after a not-ready spell past the first), not-ready probes after the first 200, and
    /// whether a probe during the outage saw it not ready.
    ready: Vec<ReadyFigures>,
    exits: Vec<String>,
}

#[derive(Debug, Default, Clone)]
struct ReadyFigures {
    worker: &'static str,
    first: Option<f64>,
    last_turned_ready: Option<f64>,
    not_ready_after_first: usize,
    not_ready_during_outage: bool,
}

impl ReadyFigures {
    /// Ready for good: the last time it turned 200 again, else its first 200 (the scenario
    /// ends only once every worker answers 200, so this is the readiness that stayed).
    fn stable(&self) -> Option<f64> {
        self.last_turned_ready.or(self.first)
    }
}

impl Figures {
    fn delivered(&self) -> Option<f64> {
        Some(self.clickhouse_complete?.max(self.archive_complete?))
    }

    fn to_json(&self) -> Value {
        let ready: Vec<Value> = self
            .ready
            .iter()
            .map(|r| {
                json!({"worker": r.worker, "ready_secs": r.stable(), "first_ready_secs": r.first,
                       "last_turned_ready_secs": r.last_turned_ready,
                       "not_ready_probes_after_ready": r.not_ready_after_first,
                       "not_ready_during_outage": r.not_ready_during_outage})
            })
            .collect();
        json!({
            "name": Scenario::BrokerRestart.name(),
            "valid_events": self.events,
            "invalid_records": self.invalid,
            "publish_secs": self.publish_secs,
            "chained_records_at_kill": self.chained_at_kill,
            "clickhouse_events_at_kill": self.clickhouse_at_kill,
            "kill_secs": self.kill_secs,
            "down_secs": self.down_secs,
            "broker_start_secs": self.start_secs,
            "clickhouse_complete_secs": self.clickhouse_complete,
            "archive_complete_secs": self.archive_complete,
            "delivered_secs": self.delivered(),
            "delivery_bound_secs": DELIVERY_BOUND.as_secs_f64(),
            "ready": ready,
            "worker_exits": self.exits,
        })
    }

    fn print(&self) {
        let opt = |v: Option<f64>| v.map_or("never".to_owned(), |s| format!("{s:.1}s"));
        println!();
        println!(
            "broker-restart: {} valid + {} invalid published in {:.1}s; at the SIGKILL {} \
             chained records, {} events in ClickHouse; tansu down {:.1}s, start took {:.1}s",
            self.events,
            self.invalid,
            self.publish_secs,
            self.chained_at_kill,
            self.clickhouse_at_kill,
            self.down_secs,
            self.start_secs
        );
        println!("{:<36} {:>10}", "after the restart (start run)", "secs");
        println!(
            "{:<36} {:>10}",
            "all events in ClickHouse",
            opt(self.clickhouse_complete)
        );
        println!(
            "{:<36} {:>10}",
            "all events in the archive",
            opt(self.archive_complete)
        );
        println!(
            "{:<36} {:>10}  (bound {:?})",
            "every event in both stores",
            opt(self.delivered()),
            DELIVERY_BOUND
        );
        for r in &self.ready {
            println!(
                "{:<36} {:>10}  (first 200 {}, not-ready probes after it {}, not ready \
                 during the outage: {})",
                format!("{} /readyz 200 for good", r.worker),
                opt(r.stable()),
                opt(r.first),
                r.not_ready_after_first,
                r.not_ready_during_outage
            );
        }
        for e in &self.exits {
            println!("WORKER EXIT: {e}");
        }
    }
}

/// Runs one scenario against the stack the environment points at; returns the JSON report
/// (the battery's, with a `scenario` object) and whether every check passed.
pub async fn run_scenario(opts: &Options, scenario: Scenario) -> anyhow::Result<(Value, bool)> {
    // The full form's bounds (a worker not ready 180 s after the restart is a failure).
    let plan = Plan::new(false, opts.chainer_mode);
    let p = Pipeline::new("battery_scenario", PARTITIONS).await?;
    std::fs::create_dir_all(&opts.log_dir)
        .with_context(|| format!("creating {}", opts.log_dir.display()))?;
    let procs = Procs::in_dir(opts.log_dir.join(&p.ns))?;
    let stack_log = opts.log_dir.join(format!("{}-stack.log", p.ns));
    println!(
        "[battery] scenario {}, chainer mode {}, namespace {}, logs in {}",
        scenario.name(),
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
        plan,
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
    let mut fig = Figures::default();
    let outcome = match scenario {
        Scenario::BrokerRestart => broker_restart(&mut b, &mut fig).await,
    };
    let findings = match outcome {
        Ok(f) => f,
        Err(e) => {
            let mut f = Findings::default();
            f.fail(format!("the scenario could not complete: {e:#}"));
            f
        }
    };
    // Whatever still runs (an early error) is stopped; dropping a Proc SIGKILLs it.
    for s in &mut b.slots {
        s.proc.take();
    }
    let passed = findings.passed();
    let mut report = b.report(&findings);
    report["scenario"] = fig.to_json();
    b.print_summary(&findings);
    fig.print();
    if passed {
        println!("[battery] scenario {} PASSED", scenario.name());
    } else {
        println!(
            "[battery] scenario {} FAILED ({} failures); worker logs kept in {}",
            scenario.name(),
            findings.failures.len(),
            b.procs.dir().display()
        );
    }
    Ok((report, passed))
}

/// Records (without restarting anything) every worker that exited; true if one did.
fn exited(b: &mut Battery<'_>, fig: &mut Figures, findings: &mut Findings) -> bool {
    let mut any = false;
    for i in 0..b.slots.len() {
        let gone = b.slots[i]
            .proc
            .as_ref()
            .filter(|p| p.has_exited())
            .map(|p| (p.exit_text(), exit_reason(p.log_path())));
        if let Some((status, log_tail)) = gone {
            let worker = b.slots[i].worker.binary_name();
            b.say(&format!("WORKER EXIT: {worker} ({status})"));
            let what = format!(
                "{worker} exited at {:.1}s ({status}) and the scenario does not restart \
                 workers; its last log lines:\n{log_tail}",
                b.secs()
            );
            findings.fail(what.clone());
            fig.exits.push(what);
            b.exits.push(UnexpectedExit {
                worker,
                at: b.secs(),
                status,
                log_tail,
            });
            // Kept as exited: recorded once.
            b.slots[i].proc = None;
            any = true;
        }
    }
    any
}

/// Records on the chained topic (sum of the partitions' high watermarks).
async fn chained_records(p: &Pipeline) -> anyhow::Result<u64> {
    let kafka = p.kafka.clone();
    let topic = p.kafka.topics().chained;
    tokio::task::spawn_blocking(move || -> anyhow::Result<u64> {
        let probe: BaseConsumer = kafka
            .client_config("battery-scenario-watermarks")
            .create()
            .context("creating a watermark client")?;
        let mut n = 0;
        for part in 0..PARTITIONS {
            let (low, high) = probe
                .fetch_watermarks(&topic, part, Duration::from_secs(5))
                .with_context(|| format!("watermarks of {topic}/{part}"))?;
            n += u64::try_from(high - low).unwrap_or(0);
        }
        Ok(n)
    })
    .await?
}

async fn clickhouse_distinct(p: &Pipeline) -> anyhow::Result<u64> {
    Ok(p.clickhouse()
        .query("SELECT uniqExact(event_id) FROM audit_events")
        .fetch_one::<u64>()
        .await?)
}

/// Distinct expected event ids in the archive.
async fn archive_holds(p: &Pipeline, expected: &HashSet<String>) -> anyhow::Result<usize> {
    let rows = checks::archive_rows(p).await?;
    let ids: HashSet<&str> = rows.iter().map(|r| r.2.as_str()).collect();
    Ok(expected
        .iter()
        .filter(|id| ids.contains(id.as_str()))
        .count())
}

async fn broker_restart(b: &mut Battery<'_>, fig: &mut Figures) -> anyhow::Result<Findings> {
    let mut findings = Findings::default();
    for i in 0..b.slots.len() {
        b.start(i)?;
    }
    // Ready before the load (no restart on exit, unlike the battery's wait_ready).
    let t0 = Instant::now();
    loop {
        if exited(b, fig, &mut findings) {
            bail!("a worker exited before the fault: {:?}", fig.exits);
        }
        let mut all = true;
        for s in &b.slots {
            all &= ready(&s.health).await;
        }
        if all {
            b.say(&format!(
                "all five workers ready after {:.1}s",
                t0.elapsed().as_secs_f64()
            ));
            break;
        }
        if t0.elapsed() > b.plan.ready_bound {
            bail!("workers never became ready at the start");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Publish: the battery's load in large chunks, as fast as the broker takes them.
    let t_pub = Instant::now();
    let load = Load::start(b.p, 500, Duration::from_millis(1), b.opts.seed).await?;
    while load.snapshot().valid.len() < EVENTS {
        if exited(b, fig, &mut findings) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let sent: Sent = load.stop().await?;
    fig.publish_secs = t_pub.elapsed().as_secs_f64();
    let expected: HashSet<String> = sent.valid.iter().cloned().collect();
    let n = expected.len();
    fig.events = n;
    fig.invalid = sent.invalid.len();
    b.sent = Some((sent.valid.len(), sent.invalid.len(), sent.retries));
    b.say(&format!(
        "published {n} valid events and {} invalid records in {:.1}s",
        sent.invalid.len(),
        fig.publish_secs
    ));
    if !fig.exits.is_empty() {
        bail!("a worker exited while the events were published");
    }

    // The fault once the chainer has chained a good part: its partitions hold a real tail.
    let want = (n as f64 * CHAINED_SHARE) as u64;
    let t_wait = Instant::now();
    loop {
        if exited(b, fig, &mut findings) {
            bail!("a worker exited before the fault");
        }
        let chained = chained_records(b.p).await.unwrap_or(0);
        if chained >= want {
            fig.chained_at_kill = chained;
            break;
        }
        if t_wait.elapsed() > b.plan.settle {
            bail!(
                "the chainer chained only {chained} of {n} events in {:?} before any fault",
                b.plan.settle
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    fig.clickhouse_at_kill = clickhouse_distinct(b.p).await.unwrap_or(0);
    b.say(&format!(
        "{} records chained (≥ {want}), {} events in ClickHouse: SIGKILL tansu",
        fig.chained_at_kill, fig.clickhouse_at_kill
    ));
    let at = b.secs();
    let t_kill = Instant::now();
    b.stack("kill", Server::Kafka).await?;
    fig.kill_secs = t_kill.elapsed().as_secs_f64();
    let mut ready_fig: Vec<ReadyFigures> = b
        .slots
        .iter()
        .map(|s| ReadyFigures {
            worker: s.worker.binary_name(),
            ..ReadyFigures::default()
        })
        .collect();
    // Down for DOWN, probing readiness (a worker may or may not report the outage).
    let down_until = Instant::now() + DOWN;
    while Instant::now() < down_until {
        exited(b, fig, &mut findings);
        for (i, s) in b.slots.iter().enumerate() {
            if s.proc.is_some() && !ready(&s.health).await {
                ready_fig[i].not_ready_during_outage = true;
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    fig.down_secs = t_kill.elapsed().as_secs_f64();
    let t_restart = Instant::now();
    b.stack("start", Server::Kafka).await?;
    fig.start_secs = t_restart.elapsed().as_secs_f64();
    b.say(&format!(
        "tansu started again ({:.1}s after it was killed; start took {:.1}s)",
        fig.down_secs, fig.start_secs
    ));

    // Measure until both stores hold every event and every worker is ready, or GIVE_UP.
    let mut last = (0u64, 0usize);
    let mut was_ready = vec![false; b.slots.len()];
    let mut next_say = Instant::now();
    loop {
        let secs = t_restart.elapsed().as_secs_f64();
        if exited(b, fig, &mut findings) {
            break;
        }
        for (i, s) in b.slots.iter().enumerate() {
            let ok = ready(&s.health).await;
            let r = &mut ready_fig[i];
            if ok {
                if r.first.is_none() {
                    r.first = Some(secs);
                } else if !was_ready[i] {
                    r.last_turned_ready = Some(secs);
                }
            } else if r.first.is_some() {
                r.not_ready_after_first += 1;
            }
            was_ready[i] = ok;
        }
        if fig.clickhouse_complete.is_none() {
            last.0 = clickhouse_distinct(b.p).await.unwrap_or(last.0);
            if last.0 >= n as u64 {
                fig.clickhouse_complete = Some(t_restart.elapsed().as_secs_f64());
                b.say(&format!(
                    "ClickHouse holds all {n} events {:.1}s after the restart",
                    fig.clickhouse_complete.unwrap_or_default()
                ));
            }
        }
        if fig.archive_complete.is_none() {
            last.1 = archive_holds(b.p, &expected).await.unwrap_or(last.1);
            if last.1 >= n {
                fig.archive_complete = Some(t_restart.elapsed().as_secs_f64());
                b.say(&format!(
                    "the archive holds all {n} events {:.1}s after the restart",
                    fig.archive_complete.unwrap_or_default()
                ));
            }
        }
        let all_ready = was_ready.iter().all(|r| *r);
        if fig.delivered().is_some() && all_ready {
            break;
        }
        if t_restart.elapsed() > GIVE_UP {
            break;
        }
        if Instant::now() >= next_say {
            let chained = chained_records(b.p).await.unwrap_or(0);
            let not: Vec<&str> = ready_fig
                .iter()
                .zip(&was_ready)
                .filter(|(_, r)| !**r)
                .map(|(f, _)| f.worker)
                .collect();
            b.say(&format!(
                "{secs:.0}s after the restart: chained {chained}, ClickHouse {}, archive {} of \
                 {n}; not ready: {not:?}",
                last.0, last.1
            ));
            next_say = Instant::now() + Duration::from_secs(15);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    fig.ready = ready_fig.clone();

    match fig.delivered() {
        Some(s) if s <= DELIVERY_BOUND.as_secs_f64() => findings.note(format!(
            "every event in both stores {s:.1}s after the broker restart (bound {DELIVERY_BOUND:?})"
        )),
        Some(s) => findings.fail(format!(
            "every event reached both stores only {s:.1}s after the broker restart (bound \
             {DELIVERY_BOUND:?})"
        )),
        None => findings.fail(format!(
            "not every event delivered {:.0}s after the broker restart: {n} sent, ClickHouse \
             holds {} distinct, the archive {} (ClickHouse complete: {:?}, archive complete: \
             {:?})",
            t_restart.elapsed().as_secs_f64(),
            last.0,
            last.1,
            fig.clickhouse_complete,
            fig.archive_complete
        )),
    }
    let bound = b.plan.ready_bound.as_secs_f64();
    let mut not_ready = Vec::new();
    for r in &ready_fig {
        match r.stable() {
            Some(s) if s <= bound => {}
            Some(s) => findings.fail(format!(
                "{} answered /readyz 200 only {s:.1}s after the broker restart (bound {bound}s)",
                r.worker
            )),
            None => {
                not_ready.push(r.worker.to_owned());
                findings.fail(format!(
                    "{} never answered /readyz 200 after the broker restart",
                    r.worker
                ));
            }
        }
    }
    let ready_after = ready_fig
        .iter()
        .map(ReadyFigures::stable)
        .try_fold(0f64, |m, s| s.map(|s| m.max(s)));
    b.faults.push(FaultRecord {
        kind: "restart kafka".into(),
        detail: format!(
            "SIGKILL with {} of {n} events chained, down {:.1}s, then start",
            fig.chained_at_kill, fig.down_secs
        ),
        at,
        lasted: fig.down_secs,
        ready_after,
        not_ready,
    });

    // Stop every worker gracefully, so that nothing lands after the checks.
    for i in 0..b.slots.len() {
        if let Some(proc) = b.slots[i].proc.take() {
            let name = proc.name.clone();
            if let Err(e) = proc.terminate().await {
                findings.fail(format!("{name} did not stop cleanly: {e:#}"));
            }
        }
    }
    checks::check_all(b.p, &sent, &mut findings).await;
    Ok(findings)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scenario_names_round_trip() {
        assert_eq!(
            Scenario::parse("broker-restart"),
            Some(Scenario::BrokerRestart)
        );
        assert_eq!(Scenario::BrokerRestart.name(), "broker-restart");
        assert_eq!(Scenario::parse("nope"), None);
    }

    #[test]
    fn delivered_needs_both_stores() {
        let mut f = Figures {
            clickhouse_complete: Some(3.0),
            ..Figures::default()
        };
        assert_eq!(f.delivered(), None);
        f.archive_complete = Some(5.0);
        assert_eq!(f.delivered(), Some(5.0));
    }

    #[test]
    fn stable_readiness_is_the_last_turn_to_ready() {
        let mut r = ReadyFigures {
            first: Some(0.8),
            ..ReadyFigures::default()
        };
        assert_eq!(r.stable(), Some(0.8));
        r.last_turned_ready = Some(7.3);
        assert_eq!(r.stable(), Some(7.3));
    }
}
