//! The chainer: reads `<prefix>enriched`, keeps one hash chain per partition, and writes each
//! event exactly once into `<prefix>chained` (same partition number), with signed checkpoints
//! on `<prefix>checkpoints`. See `shared/design.md`, "The chain".
//!
//! - [`partition`]: the pure per-partition state machine (seq, head, dedup window, resume point).
//! - [`recovery`]: rebuilding that state from the tail of the chained and checkpoints topics.
//! - [`checkpoints`]: Merkle ranges over acknowledged link hashes, signed with Ed25519.
//! - [`acks`]: in-order acknowledgement → offsets to store and links to checkpoint.
//! - [`task`]: one task per assigned partition: recovery, chaining, acknowledgements and
//!   checkpoints of that partition.
//! - [`router`]: the Kafka loop of the default path; it only polls and routes records to the
//!   partition tasks (group membership, or static assignment with `--partitions`).
//! - [`liveness`]: readiness that tells the truth, and when to recreate a stuck consumer.
//! - [`worker`]: what both loops share (settings, the Kafka side of a task).
//! - [`txn`] + [`txn_worker`]: the optional Kafka transactions mode (`--transactional-id`, off
//!   by default), a single loop since one transaction spans partitions.

pub mod acks;
pub mod checkpoints;
pub mod error;
pub mod liveness;
pub mod metrics;
pub mod partition;
pub mod recovery;
pub mod router;
pub mod status;
pub mod task;
pub mod txn;
pub mod txn_worker;
pub mod worker;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use integrity::checkpoint::SigningKey;
use serde::{Deserialize, Serialize};
use worker_runtime::config::{CommonArgs, WorkerConfig};
use worker_runtime::health::{self, Readiness};
use worker_runtime::kafka::admin::partition_count;
use worker_runtime::kafka::consumer::{subscribe, ConsumerSettings};
use worker_runtime::kafka::{KafkaArgs, Producer};
use worker_runtime::shutdown::TaskSet;
use worker_runtime::Shutdown;

pub use error::Error;

use checkpoints::Signer;
use router::{Assignment, Router, RouterConfig};
use status::WorkerStatus;
use txn::{KafkaTransactions, Transactor, TxnSettings};
use txn_worker::Worker;
use worker::Settings;

#[derive(Debug, Clone, clap::Parser, Serialize, Deserialize)]
#[command(
    name = "chainer",
    about = "Hash-chains audit.enriched into audit.chained, exactly once, with signed checkpoints"
)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[command(flatten)]
    pub common: CommonArgs,
    #[command(flatten)]
    pub kafka: KafkaArgs,
    /// Which partitions of the enriched topic this instance chains. Empty (the default): a
    /// consumer group (`--group-id`) shares them among instances and rebalances. `all`, or a
    /// list such as `0,2`: static assignment (`assign()`), no group membership, so no group
    /// coordinator can ever strand the chainer and no rebalance pauses it. The chain's
    /// exactly-once never rests on the group (every start resumes from the chained tail), but
    /// with static assignment each partition must be listed by exactly one running instance
    /// (e.g. a StatefulSet whose ordinal maps to a partition list) and nothing moves a
    /// partition to another instance when one dies: the orchestrator restarts it. Two instances
    /// listing the same partition are safe (identical records; sinks keep the first copy) but
    /// wasteful. Offsets are still committed under `--group-id`, for lag monitoring only.
    /// Not with `--transactional-id` (its fencing needs the group).
    #[arg(long, env = "AUDIT_CHAINER_PARTITIONS", default_value = "")]
    pub partitions: String,
    /// Group mode: `session.timeout.ms` of the consumer. Kafka's own default (45 s, KIP-735)
    /// rather than the other workers' 10 s: the chainer's recovery reads a large tail, and on
    /// a slow broker (tansu on SQLite, measured) that scan can hold up the coordinator's answers
    /// to heartbeats for more than 10 s, which cost the whole assignment. A dead chainer's
    /// partitions move after this long.
    #[arg(
        long,
        env = "AUDIT_CHAINER_SESSION_TIMEOUT_MS",
        default_value_t = 45_000
    )]
    pub session_timeout_ms: u32,
    /// Consumer group of the chainer on the enriched topic.
    #[arg(long, env = "AUDIT_CHAINER_GROUP_ID", default_value = "audit-chainer")]
    pub group_id: String,
    /// Kafka client id (the producer gets `<client-id>-producer`).
    #[arg(long, env = "AUDIT_CHAINER_CLIENT_ID", default_value = "audit-chainer")]
    pub client_id: String,
    /// Dedup window W: an event whose id is among the last W chained records of its partition
    /// is dropped. Defined on the log, so every instance decides the same; 0 disables dedup.
    /// Recovery reads the last W records of the chained partition (~41 MB of memory per
    /// partition at the default).
    #[arg(long, env = "AUDIT_CHAINER_DEDUP_WINDOW", default_value_t = 1_000_000)]
    pub dedup_window: usize,
    /// Input records whose output is not yet acknowledged by the broker, at most, per
    /// partition (with transactions: in all). Each costs its input and output records in
    /// memory (~2.3 KB for the demo events): 2,000 is two produce requests' worth per
    /// partition, which keeps the broker busy; 10,000 (the default up to the twentieth session)
    /// took the chainer to 82 MB on a backlog, for no more throughput.
    #[arg(long, env = "AUDIT_CHAINER_MAX_IN_FLIGHT", default_value_t = 2_000)]
    pub max_in_flight: usize,
    /// Records queued for one partition's task (while it recovers, for instance). When full,
    /// the consumer waits for room; a partition without room for a second is paused in the
    /// consumer, which goes on with the others.
    #[arg(long, env = "AUDIT_CHAINER_PARTITION_QUEUE", default_value_t = 2_000)]
    pub partition_queue: usize,
    /// Checkpoint a partition every N chained events (0: only by time).
    #[arg(
        long,
        env = "AUDIT_CHAINER_CHECKPOINT_EVERY_EVENTS",
        default_value_t = 1000
    )]
    pub checkpoint_every_events: u64,
    /// …or T seconds after its previous checkpoint, if events were chained since (0: only by count).
    #[arg(
        long,
        env = "AUDIT_CHAINER_CHECKPOINT_INTERVAL_SECS",
        default_value_t = 10
    )]
    pub checkpoint_interval_secs: u64,
    /// Heartbeat: re-sign an idle partition's last checkpoint with a fresh time every T
    /// seconds (0: off), so `auditctl verify --max-checkpoint-age` can tell an idle partition
    /// from one whose newest records were cut together with their checkpoints.
    #[arg(
        long,
        env = "AUDIT_CHAINER_CHECKPOINT_HEARTBEAT_SECS",
        default_value_t = 60
    )]
    pub checkpoint_heartbeat_secs: u64,
    /// File holding the Ed25519 checkpoint signing key (PKCS#8 as DER, base64 or PEM).
    /// Without a key (file or env), checkpoints are disabled.
    #[arg(long, env = "AUDIT_CHAINER_CHECKPOINT_KEY_FILE", default_value = "")]
    pub checkpoint_key_file: String,
    /// Name of an environment variable holding the signing key as base64 PKCS#8 (alternative
    /// to the file; the key itself never goes on the command line).
    #[arg(long, env = "AUDIT_CHAINER_CHECKPOINT_KEY_ENV", default_value = "")]
    pub checkpoint_key_env: String,
    /// Id of the signing key in the public key set (required with a key).
    #[arg(long, env = "AUDIT_CHAINER_CHECKPOINT_KEY_ID", default_value = "")]
    pub checkpoint_key_id: String,
    /// Chain id signed into checkpoints; empty = the chained topic's name.
    #[arg(long, env = "AUDIT_CHAINER_CHAIN_ID", default_value = "")]
    pub chain_id: String,
    /// How many trailing records of the checkpoints partition recovery reads to find a
    /// partition's last checkpoint.
    #[arg(
        long,
        env = "AUDIT_CHAINER_CHECKPOINT_SCAN_RECORDS",
        default_value_t = 10_000
    )]
    pub checkpoint_scan_records: i64,
    /// Recovery scans fail if no record arrives for this long (seconds).
    #[arg(
        long,
        env = "AUDIT_CHAINER_SCAN_IDLE_TIMEOUT_SECS",
        default_value_t = 30
    )]
    pub scan_idle_timeout_secs: u64,
    /// Kafka transactions: consume → chain → produce with offsets committed in the transaction
    /// (EOS v2, KIP-447: brokers ≥ Kafka 2.5, Redpanda, MSK). Empty = off (the default;
    /// correctness never depends on them, and the local broker has none). Use one id per
    /// instance, stable across its restarts (e.g. the pod name): a restart fences its
    /// predecessor; two live instances with the same id fence each other.
    #[arg(long, env = "AUDIT_CHAINER_TRANSACTIONAL_ID", default_value = "")]
    pub transactional_id: String,
    /// With transactions: commit after this many input records…
    #[arg(
        long,
        env = "AUDIT_CHAINER_TRANSACTION_MAX_RECORDS",
        default_value_t = 1000
    )]
    pub transaction_max_records: usize,
    /// …or this many milliseconds after the transaction began.
    #[arg(long, env = "AUDIT_CHAINER_TRANSACTION_MAX_MS", default_value_t = 100)]
    pub transaction_max_ms: u64,
    /// With transactions: `transaction.timeout.ms` (and `message.timeout.ms`), and the bound of
    /// every transactional call and of the start-up check that the broker supports them.
    #[arg(
        long,
        env = "AUDIT_CHAINER_TRANSACTION_TIMEOUT_MS",
        default_value_t = 60_000
    )]
    pub transaction_timeout_ms: u64,
    /// Fault injection (tests, the fault battery): `partition=milliseconds,…` makes each
    /// recovery of those partitions take that much longer, as a huge tail scan would, without
    /// loading the broker. Empty (the default) in production.
    #[arg(
        long,
        env = "AUDIT_CHAINER_FAULT_RECOVERY_DELAY",
        default_value = "",
        hide = true
    )]
    pub fault_recovery_delay: String,
}

impl WorkerConfig for Config {
    fn config_file(&self) -> Option<&Path> {
        self.common.config.as_deref()
    }
}

impl Config {
    /// `--partitions` against the enriched topic's partition count: `None` = consumer group.
    pub fn static_partitions(&self, enriched_partitions: i32) -> Result<Option<Vec<i32>>, Error> {
        parse_partitions(&self.partitions, enriched_partitions)
    }

    /// The chain id checkpoints are signed with.
    pub fn effective_chain_id(&self) -> String {
        if self.chain_id.is_empty() {
            self.kafka.topics().chained
        } else {
            self.chain_id.clone()
        }
    }
}

/// Parses `--fault-recovery-delay` (`partition=milliseconds,…`).
pub fn parse_recovery_delays(spec: &str) -> Result<HashMap<i32, Duration>, Error> {
    let mut out = HashMap::new();
    for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let parsed = item
            .split_once('=')
            .and_then(|(p, ms)| Some((p.trim().parse().ok()?, ms.trim().parse().ok()?)));
        let Some((p, ms)) = parsed else {
            return Err(Error::Config(format!(
                "--fault-recovery-delay {spec:?}: expected partition=milliseconds, got {item:?}"
            )));
        };
        out.insert(p, Duration::from_millis(ms));
    }
    Ok(out)
}

/// Parses `--partitions`: empty = group (`None`), `all`, or a comma-separated list of
/// partition numbers below `count` (sorted, without repeats).
pub fn parse_partitions(spec: &str, count: i32) -> Result<Option<Vec<i32>>, Error> {
    let spec = spec.trim();
    if spec.is_empty() {
        return Ok(None);
    }
    if spec.eq_ignore_ascii_case("all") {
        return Ok(Some((0..count).collect()));
    }
    let mut out = Vec::new();
    for part in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let p: i32 = part.parse().map_err(|_| {
            Error::Config(format!(
                "--partitions {spec:?}: {part:?} is not a partition number (use `all` or e.g. `0,2`)"
            ))
        })?;
        if !(0..count).contains(&p) {
            return Err(Error::Config(format!(
                "--partitions {spec:?}: the enriched topic has partitions 0..{count}, not {p}"
            )));
        }
        out.push(p);
    }
    out.sort_unstable();
    out.dedup();
    if out.is_empty() {
        return Err(Error::Config(format!(
            "--partitions {spec:?} lists no partition"
        )));
    }
    Ok(Some(out))
}

/// Loads the signing key, or `None` (checkpoints disabled, with a warning).
pub fn load_signer(config: &Config) -> Result<Option<Signer>, Error> {
    let file = config.checkpoint_key_file.trim();
    let var = config.checkpoint_key_env.trim();
    let key_id = config.checkpoint_key_id.trim();
    let key = match (file.is_empty(), var.is_empty()) {
        (true, true) => {
            tracing::warn!(
                "no checkpoint signing key configured (--checkpoint-key-file or --checkpoint-key-env): \
                 checkpoints are DISABLED; events are still chained, but truncation of the chain's \
                 tail cannot be detected"
            );
            return Ok(None);
        }
        (false, false) => {
            return Err(Error::Config(
                "set --checkpoint-key-file or --checkpoint-key-env, not both".into(),
            ))
        }
        _ if key_id.is_empty() => {
            return Err(Error::Config("--checkpoint-key-id is required with a signing key".into()))
        }
        (false, true) => SigningKey::from_pkcs8_file(key_id, Path::new(file)),
        (true, false) => SigningKey::from_env(key_id, var),
    }
    .map_err(Error::SigningKey)?;
    if config.checkpoint_every_events == 0 && config.checkpoint_interval_secs == 0 {
        return Err(Error::Config(
            "--checkpoint-every-events and --checkpoint-interval-secs are both 0".into(),
        ));
    }
    let chain_id = config.effective_chain_id();
    // Checkpoints are C2SP tlog-checkpoints named `<chain id>/partition/<p>` and signed by a
    // key named in their extension line: both must be note key names (see integrity::checkpoint).
    for (what, name) in [("--chain-id", chain_id.as_str()), ("the key id", key_id)] {
        if !integrity::note::is_valid_key_name(name) {
            return Err(Error::Config(format!(
                "{what} {name:?} cannot name a transparency log: no spaces and no '+'"
            )));
        }
    }
    tracing::info!(key_id, public_key = %hex::encode(key.public_key()), %chain_id,
        every_events = config.checkpoint_every_events, interval_secs = config.checkpoint_interval_secs,
        heartbeat_secs = config.checkpoint_heartbeat_secs,
        "checkpoints enabled");
    Ok(Some(Signer {
        key,
        chain_id,
        every_events: config.checkpoint_every_events,
        interval: Duration::from_secs(config.checkpoint_interval_secs),
        heartbeat: Duration::from_secs(config.checkpoint_heartbeat_secs),
        // Set by `run` once the input topic's partition count is known.
        partition_count: 0,
    }))
}

/// Runs the chainer until `shutdown` fires (then drains in-flight deliveries, stores and commits
/// offsets — with `--transactional-id`, commits the open transaction instead) or a fatal error
/// (a chain that cannot be resumed safely, a configuration fault such as an unknown schema, a
/// fenced transactional producer, a broker without transactions when they are asked for). On
/// the default path a delivery the broker refused or a broker that is away is not fatal: the
/// partition is recovered again from its chained tail, with back-off, for as long as it takes
/// (see [`task`]). The transactions mode keeps its own handling (see [`txn_worker`]). Another `run` on the same
/// topics continues each chain from its durable tail.
pub async fn run(config: Config, shutdown: Shutdown) -> Result<(), Error> {
    run_with_status(config, shutdown, WorkerStatus::default()).await
}

/// [`run`], reporting into `status` (readiness and its reason, held partitions, recoveries,
/// consumer restarts) as it goes.
pub async fn run_with_status(
    config: Config,
    shutdown: Shutdown,
    status: WorkerStatus,
) -> Result<(), Error> {
    let signer = load_signer(&config)?;
    let txn_settings = TxnSettings::from_config(&config)?;
    let topics = config.kafka.topics();

    let enriched_partitions =
        partition_count(&config.kafka, &topics.enriched, shutdown.token()).await?;
    let chained_partitions =
        partition_count(&config.kafka, &topics.chained, shutdown.token()).await?;
    if chained_partitions < enriched_partitions {
        return Err(Error::TooFewChainedPartitions {
            enriched: topics.enriched.clone(),
            enriched_partitions,
            chained: topics.chained.clone(),
            chained_partitions,
        });
    }
    // The signed partition set: every input partition is chained into the same partition
    // number, so the chain has exactly as many partitions as the input topic (extra chained
    // partitions never receive a record).
    let signer = signer.map(|mut s| {
        s.partition_count = u32::try_from(enriched_partitions).unwrap_or(0);
        Arc::new(s)
    });
    // Fail at startup, not at the first bad record, if the dead-letter topic is missing.
    partition_count(&config.kafka, &topics.rejected, shutdown.token()).await?;
    // The chain and its checkpoints must outlive every retention policy: warn (without
    // delaying the start) when the broker says they don't.
    tokio::spawn(worker_runtime::kafka::admin::warn_on_finite_retention(
        config.kafka.clone(),
    ));
    let checkpoint_partitions = match signer {
        Some(_) => partition_count(&config.kafka, &topics.checkpoints, shutdown.token()).await?,
        None => 1,
    };

    if let Some(t) = &txn_settings {
        // Before any client exists: a broker without transactions must fail here, fast.
        txn::check_broker_support(&config.kafka, t.timeout).await?;
    }

    // Without transactions the producer gets `enable.gapless.guarantee`; with them it gets
    // the transactional id and the consumer stops auto-committing (see `txn::client_args`).
    let (producer_args, consumer_args) = txn::client_args(&config, txn_settings.as_ref());
    let static_partitions = config.static_partitions(enriched_partitions)?;
    if static_partitions.is_some() && txn_settings.is_some() {
        return Err(Error::Config(
            "--partitions (static assignment) cannot be combined with --transactional-id: \
             transactional offset commits are fenced by consumer group membership"
                .into(),
        ));
    }
    let producer = Producer::new(&producer_args, &format!("{}-producer", config.client_id))?;
    let mut consumer_settings = ConsumerSettings::new(
        &config.group_id,
        &config.client_id,
        vec![topics.enriched.clone()],
    );
    consumer_settings.session_timeout_ms = config.session_timeout_ms;

    let drain = Duration::from_secs(config.common.shutdown_timeout_secs);
    let settings = Settings {
        chain_id: config.effective_chain_id(),
        window: config.dedup_window,
        max_in_flight: config.max_in_flight.max(1),
        scan_idle_timeout: Duration::from_secs(config.scan_idle_timeout_secs.max(1)),
        checkpoint_scan_records: config.checkpoint_scan_records.max(1),
        // Leave the task set some of its own bound to see us finish.
        drain_timeout: drain.mul_f32(0.8),
    };

    // A child token: a failing task stops this run without cancelling the caller's token
    // (tests run several workers on one token).
    let shutdown = shutdown.child();
    let ready = Readiness::default();
    let mut tasks = TaskSet::new(shutdown.clone());
    let addr = config.common.health_addr.clone();
    let (r, s) = (ready.clone(), shutdown.clone());
    tasks.spawn("health", async move { health::serve(&addr, r, s).await });

    match txn_settings {
        None => {
            let assignment = match static_partitions {
                None => Assignment::Group,
                Some(parts) => Assignment::Static(parts),
            };
            let router = Router::new(
                RouterConfig {
                    consumer_args,
                    consumer_settings,
                    assignment,
                    enriched_partitions,
                    signer,
                    checkpoint_partitions,
                    settings,
                    queue: config.partition_queue.max(1),
                    // One knob for every worker's watchdog (`--consumer-stall-timeout-secs`, see
                    // `liveness`).
                    stall_timeout: Duration::from_secs(config.kafka.consumer_stall_timeout_secs),
                    commit_offsets: true,
                    recovery_delays: parse_recovery_delays(&config.fault_recovery_delay)?,
                    producer_args: producer_args.clone(),
                    producer_client_id: format!("{}-producer", config.client_id),
                },
                producer,
                ready,
                status,
            )?;
            let s = shutdown.clone();
            tasks.spawn("chain", router.run(s));
        }
        Some(t) => {
            let (consumer, rebalance) = subscribe(&consumer_args, &consumer_settings)?;
            let transactor = Transactor::new(
                KafkaTransactions::new(producer.inner().clone(), consumer.clone()),
                t,
            );
            if let Err(e) = transactor.init().await {
                // The consumer's close waits for its group coordinator: let the clients go on
                // a thread of its own rather than on the runtime.
                std::thread::spawn(move || drop((transactor, producer)));
                shutdown.trigger();
                let _ = tasks.join(drain).await;
                return Err(e);
            }
            let worker = Worker::new(
                config.kafka.clone(),
                consumer,
                rebalance,
                producer,
                signer,
                checkpoint_partitions,
                settings,
                transactor,
            );
            let s = shutdown.clone();
            tasks.spawn("chain", worker.run(ready, s));
        }
    }
    tasks.join(drain).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn partitions_option_selects_group_or_static_assignment() {
        assert_eq!(parse_partitions("", 4).unwrap(), None);
        assert_eq!(parse_partitions("  ", 4).unwrap(), None);
        assert_eq!(parse_partitions("all", 3).unwrap(), Some(vec![0, 1, 2]));
        assert_eq!(parse_partitions("ALL", 1).unwrap(), Some(vec![0]));
        assert_eq!(parse_partitions("2, 0,2", 4).unwrap(), Some(vec![0, 2]));
        for bad in ["4", "-1", "x", "0,,y", ","] {
            assert!(
                matches!(parse_partitions(bad, 4), Err(Error::Config(_))),
                "{bad:?}"
            );
        }
        let c = Config::parse_from(["chainer", "--partitions", "0,2"]);
        assert_eq!(c.static_partitions(3).unwrap(), Some(vec![0, 2]));
        let c = Config::parse_from(["chainer"]);
        assert_eq!(c.static_partitions(3).unwrap(), None);
        assert_eq!(c.session_timeout_ms, 45_000);
        assert_eq!(c.partition_queue, 2_000);
    }

    #[test]
    fn fault_recovery_delays_parse() {
        assert!(parse_recovery_delays("").unwrap().is_empty());
        let d = parse_recovery_delays("0=20000, 3=5").unwrap();
        assert_eq!(d.get(&0), Some(&Duration::from_secs(20)));
        assert_eq!(d.get(&3), Some(&Duration::from_millis(5)));
        assert!(parse_recovery_delays("0:20").is_err());
    }
}
