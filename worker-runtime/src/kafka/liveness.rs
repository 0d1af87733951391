//! Liveness owned by the worker: a watchdog that notices when a group consumer holds nothing, or
//! holds partitions that do not move, while its input has lag — and makes the worker report it
//! (`/readyz`) and restart its consumer.
//!
//! Why the worker and not the broker: a coordinator may leave a group without a working leader
//! (measured on tansu 0.6.0 after a broker restart, see docs/local-stack.md) and never assign its
//! partitions again. librdkafka keeps heartbeating and rejoining, the worker keeps answering
//! `/readyz` 200, and nothing is processed. Only the worker can see both sides: the lag on its
//! input and whether anyone (itself or a group-mate) commits progress on it.
//!
//! The decision is pure ([`StallDetector`], fed [`PartitionObservation`]s); [`observe_consumer`]
//! measures a consumer (group committed offsets via OffsetFetch, which works while the consumer
//! is unassigned, and high watermarks); [`watch`] runs both every few seconds, reports the
//! readiness conditions `kafka_assignment` and `kafka_progress`, and calls the owner's restart
//! hook when stalled. Metrics: `audit_consumer_lag{topic,partition}`,
//! `audit_consumer_stalls_total{stage}`, `audit_consumer_restarts_total{stage}`.

use super::consumer::AuditConsumer;
use crate::error::RuntimeError;
use crate::health::{Check, Readiness};
use crate::shutdown::Shutdown;
use rdkafka::consumer::{Consumer, ConsumerContext};
use rdkafka::{Offset, TopicPartitionList};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Readiness condition: the consumer holds partitions whenever its input has lag nobody consumes.
pub const CHECK_ASSIGNMENT: &str = "kafka_assignment";
/// Readiness condition: the partitions it holds move (committed offsets advance).
pub const CHECK_PROGRESS: &str = "kafka_progress";

/// How the watchdog judges a consumer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LivenessSettings {
    /// Lag without progress for this long is a stall. Zero disables the watchdog.
    pub stall_after: Duration,
    /// How often the consumer is measured.
    pub check_every: Duration,
    /// Timeout of each broker query of a measurement.
    pub probe_timeout: Duration,
    /// The group to heal when a restart did not bring an assignment ([`heal_ghost_leader`]);
    /// `None`: restarts only.
    pub heal: Option<HealTarget>,
}

impl LivenessSettings {
    /// From `--consumer-stall-timeout-secs`: checks every quarter of it, between 1 and 5 s.
    pub fn from_secs(stall_timeout_secs: u64) -> Self {
        let stall_after = Duration::from_secs(stall_timeout_secs);
        LivenessSettings {
            stall_after,
            check_every: (stall_after / 4).clamp(Duration::from_secs(1), Duration::from_secs(5)),
            probe_timeout: Duration::from_secs(10),
            heal: None,
        }
    }

    /// For a group consumer set up with `settings`: the stall timeout from `args`, and the
    /// group to heal.
    pub fn for_consumer(args: &super::KafkaArgs, settings: &super::ConsumerSettings) -> Self {
        LivenessSettings {
            heal: HealTarget::for_group(args, &settings.group_id, settings.session_timeout_ms),
            ..Self::from_args(args)
        }
    }

    /// From the worker's Kafka options (`--consumer-stall-timeout-secs`).
    pub fn from_args(args: &super::KafkaArgs) -> Self {
        Self::from_secs(args.consumer_stall_timeout_secs)
    }

    pub fn enabled(&self) -> bool {
        !self.stall_after.is_zero()
    }
}

impl Default for LivenessSettings {
    fn default() -> Self {
        Self::from_secs(super::DEFAULT_CONSUMER_STALL_TIMEOUT_SECS)
    }
}

/// One input partition as measured at one check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionObservation {
    pub topic: String,
    pub partition: i32,
    /// Assigned to this consumer.
    pub assigned: bool,
    /// The group's committed offset (next offset to read); `None` if the group never committed.
    pub committed: Option<i64>,
    /// This consumer's position (next offset it will hand to the worker), when assigned.
    pub position: Option<i64>,
    pub low: i64,
    pub high: i64,
}

impl PartitionObservation {
    /// Records not yet committed by the group. A group without a commit starts at the low
    /// watermark (`auto.offset.reset=earliest`, the workers' setting).
    pub fn lag(&self) -> i64 {
        let from = self.committed.unwrap_or(self.low).max(self.low);
        (self.high - from).max(0)
    }

    /// Records this consumer has neither committed nor read, for a partition it holds: a
    /// stateful worker resumes from its own store (seeking past the committed offset) and
    /// stores offsets only when it writes, so an idle partition may keep a committed lag.
    pub fn pending(&self) -> i64 {
        let read = self.position.unwrap_or(i64::MIN);
        let from = self.committed.unwrap_or(self.low).max(self.low).max(read);
        (self.high - from).max(0)
    }
}

/// What one check concluded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assessment {
    pub assignment: Check,
    pub progress: Check,
    /// Why the consumer should be restarted, if it should.
    pub restart: Option<String>,
    /// Partitions held by this consumer.
    pub held: usize,
}

#[derive(Debug, Clone)]
struct Track {
    committed: Option<i64>,
    position: Option<i64>,
    /// When `committed` last moved (or the partition last had no lag).
    committed_since: Instant,
    /// When `position` last moved (or the partition was last unassigned / without lag).
    position_since: Instant,
}

/// The pure stall decision. Feed it every measurement with the time it was taken.
///
/// - A partition is *stuck* when it has lag and its committed offset has not moved for
///   `stall_after`, whoever owns it.
/// - Holding no partition for `stall_after` while a partition is stuck: nobody consumes it
///   (the group has no working assignment) → `kafka_assignment` fails, restart.
/// - Holding partitions while another partition is stuck: only reported in the detail (a
///   group-mate resuming from its own store may keep a committed lag on an idle partition).
/// - A held partition is judged on what this consumer has neither committed nor read
///   ([`PartitionObservation::pending`]); stuck → `kafka_progress` fails; restart only if it does not
///   deliver records either (its position stuck too). Records delivered but not committed mean
///   the output side is slow or down, which a new consumer would not fix.
/// - After a restart, `kafka_assignment` fails until the new consumer holds a partition (or the
///   lag is gone), and the next restart waits another `stall_after`.
#[derive(Debug, Clone)]
pub struct StallDetector {
    stall_after: Duration,
    partitions: HashMap<(String, i32), Track>,
    unassigned_since: Option<Instant>,
    restarted_at: Option<Instant>,
}

impl StallDetector {
    pub fn new(stall_after: Duration) -> Self {
        StallDetector {
            stall_after,
            partitions: HashMap::new(),
            unassigned_since: None,
            restarted_at: None,
        }
    }

    /// The consumer was restarted at `now`: every timer starts again.
    pub fn restarted(&mut self, now: Instant) {
        for t in self.partitions.values_mut() {
            t.committed_since = now;
            t.position_since = now;
        }
        // A new member holds nothing until the coordinator assigns it something.
        self.unassigned_since = Some(now);
        self.restarted_at = Some(now);
    }

    /// No measurement was possible at `now` (the broker does not answer): time without
    /// measurements does not count towards a stall, so a consumer is not restarted the moment
    /// its broker is back.
    pub fn unobserved(&mut self, now: Instant) {
        for t in self.partitions.values_mut() {
            t.committed_since = now;
            t.position_since = now;
        }
        if self.unassigned_since.is_some() {
            self.unassigned_since = Some(now);
        }
    }

    pub fn observe(&mut self, now: Instant, parts: &[PartitionObservation]) -> Assessment {
        let stall = self.stall_after;
        let assigned_any = parts.iter().any(|p| p.assigned);
        if assigned_any {
            self.unassigned_since = None;
        } else if self.unassigned_since.is_none() {
            self.unassigned_since = Some(now);
        }
        let seen: HashSet<(String, i32)> = parts
            .iter()
            .map(|p| (p.topic.clone(), p.partition))
            .collect();
        self.partitions.retain(|k, _| seen.contains(k));

        // Per topic: total lag, and stuck partitions (held or not).
        let mut lag_by_topic: BTreeMap<&str, i64> = BTreeMap::new();
        let mut stuck_held = Vec::new();
        let mut stuck_held_silent = false;
        let mut stuck_unheld = Vec::new();
        for p in parts {
            *lag_by_topic.entry(p.topic.as_str()).or_default() += p.lag();
            let lag = if p.assigned { p.pending() } else { p.lag() };
            let t = self
                .partitions
                .entry((p.topic.clone(), p.partition))
                .or_insert_with(|| Track {
                    committed: p.committed,
                    position: p.position,
                    committed_since: now,
                    position_since: now,
                });
            if lag == 0 || t.committed != p.committed {
                t.committed = p.committed;
                t.committed_since = now;
            }
            if lag == 0 || !p.assigned || t.position != p.position {
                t.position = p.position;
                t.position_since = now;
            }
            let stalled_for = now.saturating_duration_since(t.committed_since);
            if lag == 0 || stalled_for < stall {
                continue;
            }
            let what = format!(
                "{}/{}: lag {lag}, no progress for {}s",
                p.topic,
                p.partition,
                stalled_for.as_secs()
            );
            if p.assigned {
                if now.saturating_duration_since(t.position_since) >= stall {
                    stuck_held_silent = true;
                    stuck_held.push(format!("{what}, no record received either"));
                } else {
                    stuck_held.push(format!("{what}, records arrive but are not committed"));
                }
            } else {
                stuck_unheld.push((p.topic.as_str(), what));
            }
        }

        let unassigned_for = self
            .unassigned_since
            .map(|s| now.saturating_duration_since(s));
        let mut restart = None;
        let assignment = if !stuck_unheld.is_empty() && unassigned_for.is_some_and(|u| u >= stall) {
            let topics: BTreeMap<&str, ()> = stuck_unheld.iter().map(|(t, _)| (*t, ())).collect();
            let detail = topics
                .keys()
                .map(|t| {
                    format!(
                        "no partition assigned for {}s while {t} has lag {}",
                        unassigned_for.unwrap_or_default().as_secs(),
                        lag_by_topic.get(t).copied().unwrap_or(0)
                    )
                })
                .collect::<Vec<_>>()
                .join("; ");
            restart = Some(detail.clone());
            fail(detail)
        } else if !stuck_unheld.is_empty() && assigned_any {
            // Reported, not acted on: a group-mate that resumes from its own store may keep a
            // committed lag on an idle partition, and restarting a healthy member for it would
            // rebalance the group every `stall_after`.
            pass(format!(
                "{} partition(s) assigned; not assigned here and without committed progress: {}",
                parts.iter().filter(|p| p.assigned).count(),
                stuck_unheld
                    .iter()
                    .map(|(_, w)| w.as_str())
                    .collect::<Vec<_>>()
                    .join("; ")
            ))
        } else if let (Some(at), false) = (self.restarted_at, assigned_any) {
            // A new member waits for the coordinator; past `stall_after` the stuck-partition
            // rules above decide (another restart), and without stuck partitions holding
            // nothing is fine (more members than partitions).
            let total: i64 = lag_by_topic.values().sum();
            if total > 0 && now.saturating_duration_since(at) < stall {
                let detail = lag_by_topic
                    .iter()
                    .filter(|(_, lag)| **lag > 0)
                    .map(|(t, lag)| {
                        format!(
                            "no partition assigned {}s after a consumer restart while {t} has lag {lag}",
                            now.saturating_duration_since(at).as_secs()
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("; ");
                fail(detail)
            } else {
                self.restarted_at = None;
                pass("no partition assigned; nothing stuck")
            }
        } else {
            if assigned_any {
                self.restarted_at = None;
            }
            let held = parts.iter().filter(|p| p.assigned).count();
            pass(format!("{held} partition(s) assigned"))
        };

        let progress = if stuck_held.is_empty() {
            pass("")
        } else {
            let detail = stuck_held.join("; ");
            if stuck_held_silent && restart.is_none() {
                restart = Some(detail.clone());
            }
            fail(detail)
        };
        Assessment {
            assignment,
            progress,
            restart,
            held: parts.iter().filter(|p| p.assigned).count(),
        }
    }
}

fn pass(detail: impl Into<String>) -> Check {
    Check {
        ok: true,
        detail: detail.into(),
    }
}

fn fail(detail: impl Into<String>) -> Check {
    Check {
        ok: false,
        detail: detail.into(),
    }
}

/// Measures `topics` for `consumer` (blocking: broker round trips). Committed offsets are the
/// group's (OffsetFetch), so this works while the consumer holds nothing.
pub fn observe_consumer<X, C>(
    consumer: &C,
    topics: &[String],
    timeout: Duration,
) -> Result<Vec<PartitionObservation>, RuntimeError>
where
    X: ConsumerContext,
    C: Consumer<X>,
{
    let mut all = TopicPartitionList::new();
    for topic in topics {
        let md = consumer
            .fetch_metadata(Some(topic), timeout)
            .map_err(|e| RuntimeError::kafka(format!("metadata of {topic}"), e))?;
        for t in md.topics() {
            for p in t.partitions() {
                all.add_partition(t.name(), p.id());
            }
        }
    }
    let assignment = consumer
        .assignment()
        .map_err(|e| RuntimeError::kafka("reading the assignment", e))?;
    let assigned: HashSet<(String, i32)> = assignment
        .elements()
        .iter()
        .map(|e| (e.topic().to_owned(), e.partition()))
        .collect();
    let positions: HashMap<(String, i32), i64> = consumer
        .position()
        .map(|tpl| {
            tpl.elements()
                .iter()
                .filter_map(|e| match e.offset() {
                    Offset::Offset(o) => Some(((e.topic().to_owned(), e.partition()), o)),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    let committed = consumer
        .committed_offsets(all.clone(), timeout)
        .map_err(|e| RuntimeError::kafka(format!("committed offsets of {topics:?}"), e))?;
    let mut out = Vec::with_capacity(all.count());
    for e in committed.elements() {
        let (topic, partition) = (e.topic().to_owned(), e.partition());
        let (low, high) = consumer
            .fetch_watermarks(&topic, partition, timeout)
            .map_err(|err| {
                RuntimeError::kafka(format!("watermarks of {topic}/{partition}"), err)
            })?;
        let key = (topic, partition);
        out.push(PartitionObservation {
            assigned: assigned.contains(&key),
            committed: match e.offset() {
                Offset::Offset(o) => Some(o),
                _ => None,
            },
            position: positions.get(&key).copied(),
            topic: key.0,
            partition: key.1,
            low,
            high,
        });
    }
    Ok(out)
}

/// Something the watchdog can measure.
pub trait Probe: Send + Sync + 'static {
    fn observe(
        &self,
    ) -> impl Future<Output = Result<Vec<PartitionObservation>, RuntimeError>> + Send;
}

/// Measures an [`AuditConsumer`]'s input topics (its subscription at each check).
#[derive(Clone)]
pub struct ConsumerProbe {
    consumer: Arc<AuditConsumer>,
    topics: Vec<String>,
    timeout: Duration,
}

impl std::fmt::Debug for ConsumerProbe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsumerProbe")
            .field("topics", &self.topics)
            .finish_non_exhaustive()
    }
}

impl ConsumerProbe {
    pub fn new(consumer: Arc<AuditConsumer>, topics: Vec<String>, timeout: Duration) -> Self {
        ConsumerProbe {
            consumer,
            topics,
            timeout,
        }
    }
}

impl Probe for ConsumerProbe {
    async fn observe(&self) -> Result<Vec<PartitionObservation>, RuntimeError> {
        let (c, topics, timeout) = (self.consumer.clone(), self.topics.clone(), self.timeout);
        tokio::task::spawn_blocking(move || observe_consumer(&*c, &topics, timeout))
            .await
            .map_err(|e| RuntimeError::Task {
                task: "consumer probe".into(),
                message: e.to_string(),
            })?
    }
}

/// The topics a consumer is subscribed to.
pub fn subscription(consumer: &AuditConsumer) -> Result<Vec<String>, RuntimeError> {
    let tpl = consumer
        .subscription()
        .map_err(|e| RuntimeError::kafka("reading the subscription", e))?;
    let mut topics: Vec<String> = tpl
        .elements()
        .iter()
        .map(|e| e.topic().to_owned())
        .collect();
    topics.dedup();
    Ok(topics)
}

/// Restarts a group consumer in place: leaves the group (revoking its partitions, which
/// commits the stored offsets) and joins it again as a new member, then counts the restart.
/// To the worker's loop this is an ordinary rebalance (new assignment epochs), which stateful
/// loops already handle by rebuilding their partitions' state from durable storage.
pub async fn resubscribe(consumer: &Arc<AuditConsumer>, stage: &str) -> Result<(), RuntimeError> {
    let c = consumer.clone();
    let topics = tokio::task::spawn_blocking(move || {
        let topics = subscription(&c)?;
        c.unsubscribe();
        let names: Vec<&str> = topics.iter().map(String::as_str).collect();
        c.subscribe(&names)
            .map_err(|e| RuntimeError::kafka(format!("resubscribing to {topics:?}"), e))?;
        Ok::<_, RuntimeError>(topics)
    })
    .await
    .map_err(|e| RuntimeError::Task {
        task: "consumer restart".into(),
        message: e.to_string(),
    })??;
    metrics::counter!("audit_consumer_restarts_total", "stage" => stage.to_owned()).increment(1);
    tracing::warn!(
        stage,
        ?topics,
        "consumer restarted (left and re-joined its group)"
    );
    Ok(())
}

/// Runs the watchdog until `shutdown`: measures `probe` every `settings.check_every`, reports
/// [`CHECK_ASSIGNMENT`] and [`CHECK_PROGRESS`] on `ready`, and calls `on_stall(reason)` when the
/// consumer should be restarted (the owner restarts it; the watchdog then gives the new
/// consumer `stall_after` before judging again). A failed measurement is logged and skipped: a
/// broker that cannot answer is not a reason to restart a consumer that cannot reach it either.
pub async fn watch<P, F>(
    probe: P,
    stage: &'static str,
    settings: LivenessSettings,
    ready: Readiness,
    mut on_stall: F,
    shutdown: Shutdown,
) -> Result<(), RuntimeError>
where
    P: Probe,
    F: FnMut(String) + Send,
{
    if !settings.enabled() {
        return Ok(());
    }
    let mut detector = StallDetector::new(settings.stall_after);
    // Stalls in a row without holding anything: from the second one on, the group is healed
    // before the restart (a restart alone does not help a group without a working leader).
    let mut empty_stalls = 0u32;
    let mut tick = tokio::time::interval(settings.check_every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tick.tick() => {}
        }
        let observed = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            r = probe.observe() => r,
        };
        let parts = match observed {
            Ok(p) => p,
            Err(e) => {
                tracing::debug!(stage, error = %e, "consumer probe failed; skipping this check");
                detector.unobserved(Instant::now());
                continue;
            }
        };
        for p in &parts {
            metrics::gauge!("audit_consumer_lag", "topic" => p.topic.clone(),
                "partition" => p.partition.to_string())
            .set(p.lag() as f64);
        }
        let now = Instant::now();
        let a = detector.observe(now, &parts);
        ready.set_check(CHECK_ASSIGNMENT, a.assignment.ok, a.assignment.detail);
        ready.set_check(CHECK_PROGRESS, a.progress.ok, a.progress.detail);
        if a.held > 0 {
            empty_stalls = 0;
        }
        if let Some(reason) = a.restart {
            metrics::counter!("audit_consumer_stalls_total", "stage" => stage).increment(1);
            tracing::warn!(stage, %reason, "consumer stalled; asking for a restart");
            if a.held == 0 {
                empty_stalls += 1;
            }
            if let (Some(target), true) = (settings.heal.clone(), empty_stalls >= 2) {
                heal(target, settings.probe_timeout, stage).await;
            }
            detector.restarted(Instant::now());
            on_stall(reason);
        }
    }
}

async fn heal(target: HealTarget, timeout: Duration, stage: &'static str) {
    let group = target.group_id.clone();
    match tokio::task::spawn_blocking(move || heal_ghost_leader(&target, timeout)).await {
        Ok(Ok(outcome)) => {
            tracing::warn!(stage, %group, ?outcome, "group healed before the restart")
        }
        Ok(Err(e)) => tracing::warn!(stage, %group, error = %e, "group heal failed"),
        Err(e) => tracing::warn!(stage, %group, error = %e, "group heal task failed"),
    }
}

/// [`watch`] for a loop that cannot select on a restart request (the sinks): on a stall the
/// watchdog itself restarts the consumer in place ([`resubscribe`]), which the loop sees as an
/// ordinary rebalance. `topics`: the inputs whose lag matters (a subset of the subscription).
pub async fn watch_resubscribing(
    consumer: Arc<AuditConsumer>,
    topics: Vec<String>,
    stage: &'static str,
    settings: LivenessSettings,
    ready: Readiness,
    shutdown: Shutdown,
) -> Result<(), RuntimeError> {
    let probe = ConsumerProbe::new(consumer.clone(), topics, settings.probe_timeout);
    let on_stall = move |_reason: String| {
        let c = consumer.clone();
        tokio::spawn(async move {
            if let Err(e) = resubscribe(&c, stage).await {
                tracing::error!(stage, error = %e, "consumer restart failed");
            }
        });
    };
    watch(probe, stage, settings, ready, on_stall, shutdown).await
}

/// Where and whom the watchdog may heal (see [`heal_ghost_leader`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealTarget {
    /// Bootstrap brokers, `host:port[,…]`.
    pub brokers: String,
    pub group_id: String,
    /// Session timeout the heal's temporary members ask for (ms).
    pub session_timeout_ms: i32,
}

impl HealTarget {
    /// Only over plaintext: the heal speaks the Kafka protocol itself, without TLS or SASL.
    pub fn for_group(
        args: &super::KafkaArgs,
        group_id: &str,
        session_timeout_ms: u32,
    ) -> Option<Self> {
        args.security_protocol
            .eq_ignore_ascii_case("plaintext")
            .then(|| HealTarget {
                brokers: args.brokers.clone(),
                group_id: group_id.to_owned(),
                session_timeout_ms: i32::try_from(session_timeout_ms).unwrap_or(i32::MAX),
            })
    }
}

/// What [`heal_ghost_leader`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HealOutcome {
    /// The coordinator named a leader other than the probe: it was re-joined under that
    /// member id, so that the coordinator expires it *as leader* after the session timeout.
    RejoinedAsLeader { leader: String },
    /// The probe itself was made leader: the group had none; the probe expires as leader.
    NoOtherLeader,
    /// The coordinator answered something else (e.g. an error code); nothing done.
    Skipped { why: String },
}

/// Clears tansu 0.6.0's "ghost leader" (docs/local-stack.md): a group in its forming state
/// whose recorded leader is no longer a member. The coordinator then answers every member as a
/// follower, forever: it only ever clears a leader that is a member and misses its heartbeats.
/// The heal joins once with an empty member id (a temporary member, never synced, which
/// expires), reads the leader's id from the JoinGroup response, and joins once more *as that
/// leader*; it then stays silent, so the coordinator expires it as leader one session timeout
/// later and the next member that (re)joins leads and assigns the partitions.
///
/// Blocking. Only called for a consumer that held nothing for a whole stall and again after a
/// restart; on a broker whose coordinator is sound a stray join costs at most one rebalance.
pub fn heal_ghost_leader(
    target: &HealTarget,
    timeout: Duration,
) -> Result<HealOutcome, RuntimeError> {
    use group_protocol::{Conn, MEMBER_ID_REQUIRED};
    let err = |what: &str, e: std::io::Error| RuntimeError::Task {
        task: format!("healing group {}", target.group_id),
        message: format!("{what}: {e}"),
    };
    let bootstrap = target.brokers.split(',').next().unwrap_or_default().trim();
    let mut conn =
        Conn::connect(bootstrap, "audit-group-heal", timeout).map_err(|e| err("connecting", e))?;
    let coordinator = match conn.find_coordinator(&target.group_id) {
        Ok((0, host, port)) => format!("{host}:{port}"),
        Ok((code, _, _)) => {
            return Ok(HealOutcome::Skipped {
                why: format!("FindCoordinator error {code}"),
            })
        }
        Err(e) => return Err(err("finding the coordinator", e)),
    };
    let mut conn = Conn::connect(&coordinator, "audit-group-heal", timeout)
        .map_err(|e| err("connecting to the coordinator", e))?;
    let session = target.session_timeout_ms;
    let first = conn
        .join(&target.group_id, "", session)
        .map_err(|e| err("joining", e))?;
    if first.error != MEMBER_ID_REQUIRED {
        return Ok(HealOutcome::Skipped {
            why: format!("JoinGroup without member id answered error {}", first.error),
        });
    }
    let probe = conn
        .join(&target.group_id, &first.member_id, session)
        .map_err(|e| err("joining with a member id", e))?;
    if probe.error != 0 {
        return Ok(HealOutcome::Skipped {
            why: format!("JoinGroup answered error {}", probe.error),
        });
    }
    if probe.leader.is_empty() || probe.leader == probe.member_id {
        return Ok(HealOutcome::NoOtherLeader);
    }
    conn.join(&target.group_id, &probe.leader, session)
        .map_err(|e| err("joining as the leader", e))?;
    Ok(HealOutcome::RejoinedAsLeader {
        leader: probe.leader,
    })
}

pub mod group_protocol;

#[cfg(test)]
mod tests {
    use super::*;

    const STALL: Duration = Duration::from_secs(60);

    fn part(
        assigned: bool,
        committed: Option<i64>,
        position: Option<i64>,
        high: i64,
    ) -> PartitionObservation {
        PartitionObservation {
            topic: "audit.validated".into(),
            partition: 0,
            assigned,
            committed,
            position,
            low: 0,
            high,
        }
    }

    fn at(t0: Instant, secs: u64) -> Instant {
        t0 + Duration::from_secs(secs)
    }

    #[test]
    fn lag_counts_from_the_low_watermark_without_a_commit() {
        let mut p = part(false, None, None, 100);
        p.low = 40;
        assert_eq!(p.lag(), 60);
        p.committed = Some(10);
        assert_eq!(
            p.lag(),
            60,
            "a commit below the low watermark reads from low"
        );
        p.committed = Some(100);
        assert_eq!(p.lag(), 0);
        p.committed = Some(120);
        assert_eq!(p.lag(), 0);
    }

    #[test]
    fn unassigned_with_lag_nobody_consumes_is_a_stall() {
        let t0 = Instant::now();
        let mut d = StallDetector::new(STALL);
        let obs = [part(false, Some(10), None, 1244)];
        for s in [0, 30, 59] {
            let a = d.observe(at(t0, s), &obs);
            assert!(
                a.assignment.ok && a.progress.ok && a.restart.is_none(),
                "{s}s: {a:?}"
            );
        }
        let a = d.observe(at(t0, 75), &obs);
        assert!(!a.assignment.ok);
        assert_eq!(
            a.assignment.detail,
            "no partition assigned for 75s while audit.validated has lag 1234"
        );
        assert!(a.restart.is_some());
    }

    #[test]
    fn unassigned_standby_while_group_mates_progress_is_fine() {
        let t0 = Instant::now();
        let mut d = StallDetector::new(STALL);
        for s in 0..20u64 {
            let committed = 10 + s as i64 * 50;
            let a = d.observe(
                at(t0, s * 10),
                &[part(false, Some(committed), None, committed + 500)],
            );
            assert!(a.assignment.ok && a.restart.is_none(), "{s}: {a:?}");
        }
    }

    #[test]
    fn assigned_without_records_or_commits_restarts_but_slow_output_does_not() {
        let t0 = Instant::now();
        // Nothing arrives: the consumer is stuck → restart.
        let mut d = StallDetector::new(STALL);
        d.observe(t0, &[part(true, Some(5), Some(5), 50)]);
        let a = d.observe(at(t0, 61), &[part(true, Some(5), Some(5), 50)]);
        assert!(!a.progress.ok, "{a:?}");
        assert!(a
            .progress
            .detail
            .contains("audit.validated/0: lag 45, no progress for 61s"));
        assert!(a.assignment.ok);
        assert!(a.restart.is_some());
        // Records arrive (position moves) but nothing is committed: not ready, no restart.
        let mut d = StallDetector::new(STALL);
        for s in 0..=7u64 {
            let a = d.observe(
                at(t0, s * 10),
                &[part(true, Some(5), Some(6 + s as i64), 50)],
            );
            assert!(a.restart.is_none(), "{s}: {a:?}");
            assert_eq!(a.progress.ok, s * 10 < 60, "{s}: {a:?}");
        }
    }

    #[test]
    fn progress_or_no_lag_resets_the_clock() {
        let t0 = Instant::now();
        let mut d = StallDetector::new(STALL);
        d.observe(t0, &[part(true, Some(5), Some(5), 50)]);
        d.observe(at(t0, 50), &[part(true, Some(6), Some(6), 50)]);
        let a = d.observe(at(t0, 100), &[part(true, Some(6), Some(6), 50)]);
        assert!(a.progress.ok && a.restart.is_none(), "moved at 50s: {a:?}");
        // Idle (no lag) for long, then new records: the clock starts when the lag appears.
        let mut d = StallDetector::new(STALL);
        d.observe(t0, &[part(true, Some(50), Some(50), 50)]);
        d.observe(at(t0, 300), &[part(true, Some(50), Some(50), 50)]);
        let a = d.observe(at(t0, 310), &[part(true, Some(50), Some(50), 60)]);
        assert!(a.progress.ok && a.restart.is_none(), "{a:?}");
        let a = d.observe(at(t0, 371), &[part(true, Some(50), Some(50), 60)]);
        assert!(!a.progress.ok && a.restart.is_some(), "{a:?}");
    }

    #[test]
    fn a_held_partition_read_to_the_end_is_not_stuck_whatever_its_commit() {
        let t0 = Instant::now();
        let mut d = StallDetector::new(STALL);
        // A sink resumed from its store past the committed offset and has nothing new.
        let idle = [part(true, Some(10), Some(100), 100)];
        d.observe(t0, &idle);
        let a = d.observe(at(t0, 600), &idle);
        assert!(
            a.assignment.ok && a.progress.ok && a.restart.is_none(),
            "{a:?}"
        );
    }

    #[test]
    fn a_partition_orphaned_by_a_dead_member_is_reported_not_restarted() {
        let t0 = Instant::now();
        let mut d = StallDetector::new(STALL);
        let mut mine = part(true, Some(100), Some(100), 100);
        mine.partition = 1;
        let orphan = part(false, Some(7), None, 70);
        d.observe(t0, &[mine.clone(), orphan.clone()]);
        let a = d.observe(at(t0, 61), &[mine, orphan]);
        assert!(a.assignment.ok && a.restart.is_none(), "{a:?}");
        assert!(
            a.assignment.detail.contains("audit.validated/0: lag 63"),
            "{a:?}"
        );
    }

    #[test]
    fn after_a_restart_not_ready_until_assigned_and_the_next_restart_waits() {
        let t0 = Instant::now();
        let mut d = StallDetector::new(STALL);
        let unheld = [part(false, Some(10), None, 100)];
        d.observe(t0, &unheld);
        assert!(d.observe(at(t0, 60), &unheld).restart.is_some());
        d.restarted(at(t0, 60));
        let a = d.observe(at(t0, 65), &unheld);
        assert!(!a.assignment.ok && a.restart.is_none(), "{a:?}");
        assert_eq!(
            a.assignment.detail,
            "no partition assigned 5s after a consumer restart while audit.validated has lag 90"
        );
        let a = d.observe(at(t0, 119), &unheld);
        assert!(!a.assignment.ok && a.restart.is_none(), "{a:?}");
        let a = d.observe(at(t0, 121), &unheld);
        assert!(
            a.restart.is_some(),
            "still stuck a stall later: restart again: {a:?}"
        );
        d.restarted(at(t0, 121));
        let a = d.observe(at(t0, 125), &[part(true, Some(10), Some(10), 100)]);
        assert!(
            a.assignment.ok && a.progress.ok && a.restart.is_none(),
            "{a:?}"
        );
    }

    #[test]
    fn time_without_measurements_does_not_count() {
        let t0 = Instant::now();
        let mut d = StallDetector::new(STALL);
        let unheld = [part(false, Some(10), None, 100)];
        d.observe(t0, &unheld);
        // The broker is away from 10 s to 300 s.
        d.unobserved(at(t0, 300));
        let a = d.observe(at(t0, 305), &unheld);
        assert!(a.assignment.ok && a.restart.is_none(), "{a:?}");
        assert!(d.observe(at(t0, 361), &unheld).restart.is_some());
    }

    #[test]
    fn settings_from_secs() {
        let s = LivenessSettings::from_secs(60);
        assert_eq!(s.check_every, Duration::from_secs(5));
        assert_eq!(
            LivenessSettings::from_secs(2).check_every,
            Duration::from_secs(1)
        );
        assert!(!LivenessSettings::from_secs(0).enabled());
        assert_eq!(LivenessSettings::default(), s);
        let mut args = crate::kafka::KafkaArgs::local("b:9092", "p.");
        args.consumer_stall_timeout_secs = 30;
        let c = crate::kafka::ConsumerSettings::new("g", "c", vec!["t".into()]);
        let s = LivenessSettings::for_consumer(&args, &c);
        assert_eq!(s.stall_after, Duration::from_secs(30));
        assert_eq!(s.heal.map(|h| h.group_id), Some("g".to_owned()));
        args.security_protocol = "sasl_ssl".into();
        assert_eq!(LivenessSettings::for_consumer(&args, &c).heal, None);
    }
}
