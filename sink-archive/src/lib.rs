//! `sink-archive`: archives `audit.chained` into write-once, per-partition Avro segments with
//! manifests, plus the signed checkpoints of `audit.checkpoints`, in S3 or a local folder.
//!
//! - Layout and file formats: [`schemas::segment`] (shared with the verifier), re-exported with
//!   the reader as [`segment`].
//! - Closing rules and gap/duplicate handling: [`buffer`].
//! - Write-once puts, fork detection, resume from the archive: [`archive`], [`resume`].
//! - The write-once anchor (`--anchor-url`): every checkpoint also copied where the stores'
//!   writers cannot delete it: [`anchor`].
//! - Retention under S3 Object Lock, per event class, and the record of each policy change
//!   in the chain: [`retention`] (the policy, recording), [`lock`] (the locked puts).
//! - The consume loop (offsets stored only after the segment and manifest are durable, seek to
//!   the archive's end on every assignment): [`worker`].

pub mod anchor;
pub mod archive;
pub mod buffer;
pub mod lock;
pub mod pending;
pub mod resume;
pub mod retention;
pub mod store;
pub mod worker;

use std::path::Path;
use std::time::Duration;

use schemas::segment::BlockCodec;
use serde::{Deserialize, Serialize};
use worker_runtime::config::{CommonArgs, WorkerConfig};
use worker_runtime::kafka::KafkaArgs;
use worker_runtime::retry::RetryPolicy;
use worker_runtime::shutdown::TaskSet;
use worker_runtime::Shutdown;

pub use anchor::{Anchor, AnchorArgs};
pub use archive::{Archive, Outcome, ResumePoint, StoredSegment};
pub use retention::{RetentionArgs, RetentionMode};
pub use store::{build_store, ArchiveStoreArgs};

/// The segment format (from `schemas::segment`, so the verifier shares it without depending on
/// this crate): reading a segment and checking it against its manifest.
pub mod segment {
    pub use schemas::segment::*;
}

/// Stage name in dead letters, logs and metrics.
pub const STAGE: &str = "sink-archive";

#[derive(Debug, Clone, clap::Parser, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[command(
    name = "sink-archive",
    about = "Archives audit.chained into write-once Avro segments (S3 or a local folder)."
)]
pub struct Config {
    #[command(flatten)]
    pub common: CommonArgs,
    #[command(flatten)]
    pub kafka: KafkaArgs,
    #[command(flatten)]
    pub archive: ArchiveStoreArgs,
    #[command(flatten)]
    pub anchor: AnchorArgs,
    #[command(flatten)]
    pub retention: RetentionArgs,
    #[command(flatten)]
    pub retry: RetryPolicy,
    /// Consumer group of the archive sink.
    #[arg(
        long,
        env = "AUDIT_SINK_ARCHIVE_GROUP_ID",
        default_value = "audit-sink-archive"
    )]
    pub group_id: String,
    /// A segment closes at this many events. Memory: an open segment is held encoded and
    /// compressed block by block (~0.2 KB per 0.9 KB demo event, plus one 256 KB block being
    /// filled), per partition this instance holds.
    #[arg(
        long,
        env = "AUDIT_SINK_ARCHIVE_SEGMENT_MAX_EVENTS",
        default_value_t = 10_000
    )]
    pub segment_max_events: usize,
    /// A segment closes at this many bytes of input records (before compression).
    #[arg(long, env = "AUDIT_SINK_ARCHIVE_SEGMENT_MAX_BYTES", default_value_t = 64 * 1024 * 1024)]
    pub segment_max_bytes: usize,
    /// A segment closes this many seconds after its first record was read (wall clock; the
    /// resume point comes from the archive, so this never affects correctness).
    #[arg(
        long,
        env = "AUDIT_SINK_ARCHIVE_SEGMENT_MAX_AGE_SECS",
        default_value_t = 30
    )]
    pub segment_max_age_secs: u64,
    /// How segment blocks are compressed: `deflate` (the default; a codec every Avro reader
    /// must support) or `zstandard` (an optional Avro codec: Avro 1.9+, fastavro, apache-avro
    /// with its feature; 1% larger for a third of deflate's CPU, the largest part of this
    /// worker's own work). `auditctl verify` reads both, so a change applies to new
    /// segments only and an archive may hold both.
    #[arg(
        long,
        env = "AUDIT_SINK_ARCHIVE_SEGMENT_CODEC",
        default_value_t = BlockCodec::Deflate
    )]
    pub segment_codec: BlockCodec,
}

impl WorkerConfig for Config {
    fn config_file(&self) -> Option<&Path> {
        self.common.config.as_deref()
    }
}

impl Config {
    pub fn limits(&self) -> buffer::Limits {
        buffer::Limits {
            max_events: self.segment_max_events.max(1),
            max_bytes: self.segment_max_bytes.max(1),
            max_age: Duration::from_secs(self.segment_max_age_secs),
            codec: self.segment_codec,
        }
    }
}

/// Errors of the archive sink, each saying what was being done.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("configuration: {0}")]
    Config(String),
    #[error("object store: {what}: {source}")]
    Store {
        what: String,
        #[source]
        source: object_store::Error,
    },
    #[error("object store: {what}: cancelled by shutdown while retrying (last error: {last})")]
    Cancelled { what: String, last: String },
    #[error("segment: {0}")]
    Segment(#[from] schemas::segment::SegmentError),
    #[error("decoding {what}: {source} (a worker configuration problem, not a bad record)")]
    Schema {
        what: String,
        #[source]
        source: schemas::SchemaError,
    },
    #[error(
        "retention mode {mode}: the archive bucket {bucket} does not have S3 Object Lock \
         enabled, so its objects cannot be locked. Object Lock is set when a bucket is \
         created: create the bucket with Object Lock enabled (e.g. `aws s3api create-bucket \
         --bucket {bucket} --object-lock-enabled-for-bucket`; on AWS an existing versioned \
         bucket can also get it with put-object-lock-configuration) and point --archive-url \
         at it, or run with --retention-mode off to archive without retention \
         (docs/retention.md)"
    )]
    ObjectLockDisabled { bucket: String, mode: &'static str },
    #[error(transparent)]
    Runtime(#[from] worker_runtime::RuntimeError),
    #[error("{0}")]
    Task(String),
}

/// Runs the sink until shutdown (then flushes open segments and commits) or a fatal error.
pub async fn run(config: Config, shutdown: Shutdown) -> Result<(), Error> {
    let store = build_store(&config.archive)?;
    let ready = worker_runtime::health::Readiness::default();
    // The health server first: while the start-up below retries an unreachable store,
    // `/readyz` answers 503 naming it, instead of not answering at all.
    let mut tasks = TaskSet::new(shutdown.clone());
    let addr = config.common.health_addr.clone();
    let (r, s) = (ready.clone(), shutdown.clone());
    tasks.spawn("health", async move {
        worker_runtime::health::serve(&addr, r, s).await
    });
    let archive = Archive::new(store, config.retry, shutdown.token().clone()).reporting(
        worker_runtime::retry::DependencyCheck::new(ready.clone(), archive::CHECK_OBJECT_STORE),
    );
    // Before anything is archived: the bucket can lock, and the policy in force is in the
    // chain (docs/retention.md).
    let archive = retention::prepare(
        &config.retention,
        &config.archive,
        &config.kafka,
        archive,
        &config.retry,
        shutdown.token(),
    )
    .await?;
    let anchor = Anchor::build(
        &config.anchor,
        &config.archive,
        config.retry,
        shutdown.token().clone(),
    )?
    .map(|a| {
        a.reporting(worker_runtime::retry::DependencyCheck::new(
            ready.clone(),
            anchor::CHECK_ANCHOR_STORE,
        ))
    });
    let worker = worker::Worker::new(&config, archive, anchor)?;
    // Consumer watchdog: `/readyz` says why when this sink holds nothing (or nothing moves)
    // while the chained topic has lag, and the consumer re-joins its group (healing a group
    // the broker's coordinator left stuck: docs/local-stack.md, tansu 0.6.0).
    let settings = worker::Worker::consumer_settings(&config);
    tasks.spawn(
        "consumer-watchdog",
        worker_runtime::kafka::liveness::watch_resubscribing(
            worker.consumer(),
            vec![config.kafka.topics().chained],
            STAGE,
            worker_runtime::kafka::liveness::LivenessSettings::for_consumer(
                &config.kafka,
                &settings,
            ),
            ready.clone(),
            shutdown.clone(),
        ),
    );
    tasks.spawn("archive", worker.run(ready, shutdown));
    tasks
        .join(Duration::from_secs(config.common.shutdown_timeout_secs))
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn config_defaults_and_secrets_are_redacted() {
        let c = Config::parse_from([
            "sink-archive",
            "--health-addr",
            "",
            "--archive-url",
            "s3://audit-archive",
            "--s3-secret-access-key",
            "hunter2",
            "--s3-allow-http",
        ]);
        assert_eq!(c.group_id, "audit-sink-archive");
        assert_eq!(c.segment_max_events, 10_000);
        assert_eq!(c.segment_max_age_secs, 30);
        assert_eq!(c.limits().codec, BlockCodec::Deflate);
        assert!(c.archive.s3_allow_http);
        assert!(!format!("{c:?}").contains("hunter2"));
    }

    #[test]
    fn anchor_flags_are_their_own_and_redacted() {
        let c = Config::parse_from([
            "sink-archive",
            "--health-addr",
            "",
            "--anchor-url",
            "s3://audit-anchor/prod",
            "--anchor-s3-access-key-id",
            "anchor-id",
            "--anchor-s3-secret-access-key",
            "anchor-hunter2",
        ]);
        assert!(c.anchor.enabled());
        assert_eq!(c.anchor.anchor_s3_access_key_id.expose(), "anchor-id");
        assert!(c.archive.s3_access_key_id.is_empty(), "not the archive's");
        let shown = format!("{c:?}");
        assert!(!shown.contains("anchor-hunter2") && !shown.contains("anchor-id"));
        assert!(!Config::parse_from(["sink-archive"]).anchor.enabled());
        // `--help` says why the anchor needs its own credentials and Object Lock.
        let help = <Config as clap::CommandFactory>::command()
            .render_long_help()
            .to_string();
        for needle in ["COMPLIANCE", "OWN credentials", "default retention"] {
            assert!(help.contains(needle), "{needle}");
        }
    }

    /// Retention: defaults (seven years, COMPLIANCE), flags, `--help`, and a bad policy
    /// refused by the parser.
    #[test]
    fn retention_flags_and_help() {
        let c = Config::parse_from(["sink-archive"]);
        assert_eq!(c.retention.retention, "default=7y");
        assert_eq!(c.retention.retention_mode, RetentionMode::Compliance);
        let c = Config::parse_from([
            "sink-archive",
            "--retention",
            "default=7y,security=10y",
            "--retention-mode",
            "governance",
        ]);
        assert_eq!(
            c.retention.policy().expect("policy").canonical(),
            "default=7y,security=10y"
        );
        assert_eq!(c.retention.retention_mode, RetentionMode::Governance);
        assert!(Config::try_parse_from(["sink-archive", "--retention", "secret=1y"]).is_err());
        // The shared grammar's `forever` is refused here (Object Lock needs a date), ...
        let e = Config::try_parse_from(["sink-archive", "--retention", "governance=forever"])
            .expect_err("forever")
            .to_string();
        assert!(e.contains("retain-until"), "{e}");
        // ... its months are accepted.
        let c = Config::parse_from(["sink-archive", "--retention", "Telemetry=18MO"]);
        assert_eq!(
            c.retention.policy().expect("policy").canonical(),
            "default=7y,telemetry=18mo"
        );
        assert!(Config::try_parse_from(["sink-archive", "--retention-mode", "lax"]).is_err());
        let help = <Config as clap::CommandFactory>::command()
            .render_long_help()
            .to_string();
        for needle in [
            "--retention <RETENTION>",
            "security=10y",
            "audit.retention.policy_set",
            "--retention-mode",
            "governance",
            "Object Lock",
        ] {
            assert!(help.contains(needle), "{needle}");
        }
    }

    /// The `[archive]` section of a config file holds the archive store's keys, optional ones
    /// included.
    #[test]
    fn config_file_archive_section() {
        let dir = std::env::temp_dir().join(format!(
            "sink-archive-config-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0)
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let file = dir.join("sink-archive.toml");
        std::fs::write(
            &file,
            "[archive]\narchive_local_dir = \"/srv/archive\"\ns3_region = \"eu-west-1\"\n\
             s3_request_retry_secs = 5\ns3_virtual_hosted_style = true\n",
        )
        .expect("write config");
        let path = file.to_str().expect("utf8 path").to_owned();
        let c: Config =
            worker_runtime::config::load_from(["sink-archive", "--config", &path]).expect("load");
        assert_eq!(
            c.archive.archive_local_dir.as_deref(),
            Some(Path::new("/srv/archive"))
        );
        assert_eq!(c.archive.s3_region.as_deref(), Some("eu-west-1"));
        assert_eq!(c.archive.s3_request_retry_secs, Some(5));
        assert!(c.archive.s3_virtual_hosted_style);
        // Absent optional keys stay absent (the sink's defaults apply when the store is built).
        std::fs::write(&file, "segment_max_events = 7\n").expect("write config");
        let c: Config =
            worker_runtime::config::load_from(["sink-archive", "--config", &path]).expect("load");
        assert_eq!(c.segment_max_events, 7);
        assert_eq!(c.archive.s3_request_retry_secs, None);
        // The anchor's settings are a section of their own.
        std::fs::write(
            &file,
            "[anchor]\nanchor_url = \"file:///srv/anchor\"\nanchor_s3_region = \"eu-west-1\"\n",
        )
        .expect("write config");
        let c: Config =
            worker_runtime::config::load_from(["sink-archive", "--config", &path]).expect("load");
        assert_eq!(c.anchor.anchor_url, "file:///srv/anchor");
        assert_eq!(c.anchor.anchor_s3_region.as_deref(), Some("eu-west-1"));
        // So are the retention settings; an unknown key there is refused.
        std::fs::write(
            &file,
            "[retention]\nretention = \"default=1y,security=2y\"\nretention_mode = \"off\"\n",
        )
        .expect("write config");
        let c: Config =
            worker_runtime::config::load_from(["sink-archive", "--config", &path]).expect("load");
        assert_eq!(c.retention.retention, "default=1y,security=2y");
        assert_eq!(c.retention.retention_mode, RetentionMode::Off);
        std::fs::write(&file, "[retention]\nretention_days = 3\n").expect("write config");
        assert!(worker_runtime::config::load_from::<Config, _, _>([
            "sink-archive",
            "--config",
            &path
        ])
        .is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
