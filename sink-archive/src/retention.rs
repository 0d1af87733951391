//! Retention of the archive (docs/retention.md): how long each archived object is kept under
//! S3 Object Lock, per event class, and the record of every policy change in the chain.
//!
//! - The policy: a default span (seven years, seed 004) and overrides keyed by the event's
//!   `category` (`--retention default=7y,security=10y`), in a mode (`compliance`, the default;
//!   `governance`; `off`).
//! - Each segment is locked until the latest of (event time + its class's span) over its
//!   events; its manifest until the same date (a manifest must live as long as its segment).
//!   A checkpoint seals every earlier record of its chain partition, so it is locked until its
//!   own time + the longest span of the policy, or later if a segment of that partition
//!   archived by this process is locked longer (an event dated after the checkpoint).
//! - A date already past (events older than their retention) is not sent: S3 refuses it, and
//!   there is nothing left to retain. The object is then written unlocked (or under the
//!   bucket's default retention, if it has one).
//! - At start ([`prepare`]): the bucket must have Object Lock enabled unless the mode is
//!   `off`; then the effective policy is compared with the last one recorded in the archive
//!   (`_retention/policy-<n>.json`); a different one is published as an operator event
//!   `audit.retention.policy_set` to `<prefix>validated`, and only after the broker's ack is
//!   the record written. A crash in between publishes again at the next start, with the same
//!   event id (derived from the archive, n and the policy), so the repeat is recognisable.

use std::sync::Arc;

use bytes::Bytes;
use schemas::governance::GovernanceEvent;
use schemas::{ActorType, AuditEvent, ChainedEvent, EventCategory};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use worker_runtime::kafka::{KafkaArgs, OutputRecord, Producer};
use worker_runtime::object_store::{Access, ArchiveStoreArgs};
use worker_runtime::retry::{retry_reporting, RetryPolicy};
use worker_runtime::CancellationToken;

use crate::archive::Archive;
use crate::lock::{LockConfig, LockedBucket};
use crate::store::StoreError;
use crate::Error;

/// Event type of a retention policy change (the same for every store).
pub use schemas::retention::POLICY_SET_EVENT_TYPE;
/// The value of [`ATTR_STORE`] in this sink's events.
pub const STORE: &str = "archive";
// Archive-only attributes; the shared ones (store, old and new policy) are
// `schemas::retention::ATTR_*`, re-exported below.
pub const ATTR_MODE: &str = "audit.retention.mode";
pub const ATTR_OLD_MODE: &str = "audit.retention.old_mode";
pub const ATTR_ARCHIVE: &str = "audit.retention.archive";
pub const ATTR_RECORD: &str = "audit.retention.record";
/// Folder of the policy records, relative to the archive root.
pub const POLICY_DIR: &str = "_retention";
/// Default policy: seven years for every class (seed 004), as sink-clickhouse's.
pub use schemas::retention::DEFAULT_POLICY;
/// A retain-until date closer than this is not worth a lock (and S3 refuses past ones).
const MIN_LOCK_SECS: i64 = 60;

/// How the archive's objects are locked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RetentionMode {
    /// Object Lock COMPLIANCE: no one, root included, can delete or shorten it before the date.
    #[default]
    Compliance,
    /// Object Lock GOVERNANCE: holders of `s3:BypassGovernanceRetention` can.
    Governance,
    /// No lock headers (the bucket's default retention, if any, still applies).
    Off,
}

impl RetentionMode {
    pub fn as_str(self) -> &'static str {
        match self {
            RetentionMode::Compliance => "compliance",
            RetentionMode::Governance => "governance",
            RetentionMode::Off => "off",
        }
    }

    /// The `x-amz-object-lock-mode` value (`None` for off).
    pub fn header(self) -> Option<&'static str> {
        match self {
            RetentionMode::Compliance => Some("COMPLIANCE"),
            RetentionMode::Governance => Some("GOVERNANCE"),
            RetentionMode::Off => None,
        }
    }
}

pub use schemas::retention::{
    class_name, from_us, Span, ATTR_NEW_POLICY, ATTR_OLD_POLICY, ATTR_STORE, CLASSES, NO_POLICY,
};

/// The policy of the archive: the shared grammar ([`schemas::retention`]) minus `forever`.
/// S3 Object Lock needs a retain-until date and has no "indefinite" retention mode (only a
/// legal hold, which is an operator's act, not a policy), and a made-up far date would be a
/// lock the operator did not ask for and nobody can ever shorten. So a policy naming
/// `forever` is refused at start with a message saying so (docs/retention.md).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy(schemas::retention::Policy);

impl Policy {
    /// Parses the shared policy grammar; refuses `forever` (see the type's docs).
    pub fn parse(text: &str) -> Result<Policy, String> {
        let p = schemas::retention::Policy::parse(text).map_err(|e| e.to_string())?;
        Policy::new(p)
    }

    pub fn new(p: schemas::retention::Policy) -> Result<Policy, String> {
        if p.has_forever() {
            return Err(format!(
                "retention policy {:?}: the archive cannot keep a class `forever`: S3 Object \
                 Lock needs a retain-until date and cannot be shortened once set, so the sink \
                 will not invent one; give a number of years (up to 1000y, e.g. 100y), or keep \
                 the objects with a legal hold (`auditctl hold on`)",
                p.canonical()
            ));
        }
        Ok(Policy(p))
    }

    /// The shared policy.
    pub fn shared(&self) -> &schemas::retention::Policy {
        &self.0
    }

    /// The canonical text ([`schemas::retention::Policy::canonical`]).
    pub fn canonical(&self) -> String {
        self.0.canonical()
    }

    pub fn span(&self, c: EventCategory) -> Span {
        self.0.span(c)
    }

    /// The latest end of retention of an event of any class at `t`.
    pub fn longest_after(&self, t: OffsetDateTime) -> OffsetDateTime {
        // `new` refused forever, so every span has an end; `t` is a floor never reached.
        self.0.longest_after(t).unwrap_or(t)
    }

    /// max over `events` of (event time + its class's span); `None` for no events.
    pub fn retain_until<'a>(
        &self,
        events: impl IntoIterator<Item = &'a ChainedEvent>,
    ) -> Option<OffsetDateTime> {
        events
            .into_iter()
            .filter_map(|e| {
                self.0
                    .retain_until(e.event.category, from_us(e.event.event_time_us))
            })
            .max()
    }

    /// [`Self::retain_until`] from the latest event time of each class: the same date, since
    /// an end of retention never decreases with the event time (spans are added to it; a
    /// calendar month added to the 31st clamps to the month's end, still in order).
    pub fn retain_until_latest(
        &self,
        latest: impl IntoIterator<Item = (EventCategory, i64)>,
    ) -> Option<OffsetDateTime> {
        latest
            .into_iter()
            .filter_map(|(class, t)| self.0.retain_until(class, from_us(t)))
            .max()
    }
}

/// RFC 3339 in whole seconds, rounded up (a lock never ends before the policy says).
pub fn rfc3339_seconds(t: OffsetDateTime) -> String {
    let whole = t.replace_nanosecond(0).unwrap_or(t);
    let up = if whole < t {
        whole + time::Duration::seconds(1)
    } else {
        whole
    };
    up.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// Retention settings of the archive sink.
#[derive(Debug, Clone, clap::Args, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionArgs {
    /// Retention of archived objects under S3 Object Lock, per event class (the event's
    /// `category`), in the grammar sink-clickhouse's `--retention` shares:
    /// `default=<span>[,<class>=<span>…]`, spans `<n>y` / `<n>mo` (calendar years / months),
    /// `<n>d` or `<n>h` (`forever` is refused: Object Lock needs a date); classes: user_interaction, system_processing, governance, infrastructure,
    /// security, telemetry, other. E.g. `default=7y,security=10y`. Each segment is locked
    /// until the latest (event time + its class's span) of its events, its manifest as long
    /// as its segment, each checkpoint until its time + the longest span. A change is
    /// recorded in the chain at start (event `audit.retention.policy_set`, published to
    /// `<prefix>validated`) before anything is archived under it (docs/retention.md).
    #[arg(long, env = "AUDIT_SINK_ARCHIVE_RETENTION", default_value = DEFAULT_POLICY,
          value_parser = parse_policy_text)]
    pub retention: String,
    /// Object Lock mode of the archive's puts: `compliance` (nobody can delete or shorten the
    /// retention, root included), `governance` (principals with
    /// s3:BypassGovernanceRetention can) or `off` (no lock headers). Unless off, the sink
    /// refuses to start on a bucket without Object Lock (which can only be enabled when the
    /// bucket is created). A local-folder archive cannot be locked: there the mode is
    /// treated as off, with a warning.
    #[arg(long, env = "AUDIT_SINK_ARCHIVE_RETENTION_MODE", value_enum,
          default_value_t = RetentionMode::Compliance)]
    pub retention_mode: RetentionMode,
    /// Who the policy events name as having set the policy; empty = this worker
    /// (`sink-archive@<host>`, the pod name in Kubernetes).
    #[arg(long, env = "AUDIT_SINK_ARCHIVE_RETENTION_SET_BY", default_value = "")]
    pub retention_set_by: String,
}

impl Default for RetentionArgs {
    fn default() -> Self {
        RetentionArgs {
            retention: DEFAULT_POLICY.into(),
            retention_mode: RetentionMode::Compliance,
            retention_set_by: String::new(),
        }
    }
}

fn parse_policy_text(s: &str) -> Result<String, String> {
    // Kept as the operator wrote it (a config round-trips); compared in canonical form.
    Policy::parse(s).map(|_| s.to_owned())
}

impl RetentionArgs {
    pub fn policy(&self) -> Result<Policy, Error> {
        Policy::parse(&self.retention).map_err(Error::Config)
    }

    /// `sink-archive@<host>` unless `--retention-set-by` names someone.
    pub fn set_by(&self) -> String {
        if !self.retention_set_by.trim().is_empty() {
            return self.retention_set_by.trim().to_owned();
        }
        let host = std::env::var("HOSTNAME")
            .ok()
            .filter(|h| !h.trim().is_empty())
            .or_else(|| {
                std::fs::read_to_string("/etc/hostname")
                    .ok()
                    .map(|h| h.trim().to_owned())
                    .filter(|h| !h.is_empty())
            })
            .unwrap_or_else(|| "unknown-host".into());
        format!("sink-archive@{host}")
    }
}

/// The policy in force, and what it locks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retention {
    pub mode: RetentionMode,
    pub policy: Policy,
}

impl Retention {
    /// The lock to put an object with, if its retention ends after `now` (+ a minute).
    pub fn lock(
        &self,
        until: Option<OffsetDateTime>,
        now: OffsetDateTime,
    ) -> Option<(RetentionMode, OffsetDateTime)> {
        let until = until?;
        self.mode.header()?;
        (until - now >= time::Duration::seconds(MIN_LOCK_SECS)).then_some((self.mode, until))
    }

    /// Retain-until of a checkpoint signed at `time_us`: its time + the longest span, or
    /// `covered` (the latest lock of its partition's segments seen here) if later.
    pub fn checkpoint_until(
        &self,
        time_us: i64,
        covered: Option<OffsetDateTime>,
    ) -> OffsetDateTime {
        let own = self.policy.longest_after(from_us(time_us));
        covered.map_or(own, |c| c.max(own))
    }
}

/// The policy record `_retention/policy-<n>.json` (write-once).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyRecord {
    pub n: u64,
    pub mode: RetentionMode,
    /// Canonical policy text ([`Policy::canonical`]).
    pub policy: String,
    pub set_by: String,
    pub archive: String,
    pub event_id: String,
    pub recorded_at: String,
}

pub fn record_key(n: u64) -> String {
    format!("{POLICY_DIR}/policy-{n:010}.json")
}

/// `n` of a record key (`None` for anything else).
pub fn record_n(key: &str) -> Option<u64> {
    let digits = key
        .strip_prefix(POLICY_DIR)?
        .strip_prefix("/policy-")?
        .strip_suffix(".json")?;
    if digits.len() != 10 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Whether `new` must be recorded after `last`. No record at all means no retention was ever
/// applied by this sink (mode off), so starting with `off` records nothing.
pub fn needs_record(last: Option<&PolicyRecord>, new: &Retention) -> bool {
    match last {
        None => new.mode != RetentionMode::Off,
        Some(r) => r.mode != new.mode || r.policy != new.policy.canonical(),
    }
}

/// Stable id of the event recording policy `n` of `archive`: a republish after a crash
/// between the ack and the record carries the same id.
pub fn event_id(archive: &str, n: u64, r: &Retention) -> String {
    let mut h = Sha256::new();
    for part in [
        archive,
        &n.to_string(),
        r.mode.as_str(),
        &r.policy.canonical(),
    ] {
        h.update(part.as_bytes());
        h.update([0]);
    }
    format!("retention-{}", &hex::encode(h.finalize())[..32])
}

fn policy_json(mode: RetentionMode, canonical: &str) -> String {
    // Keys in order and no whitespace: the normalised JSON the event schema wants.
    serde_json::json!({ "mode": mode.as_str(), "policy": canonical }).to_string()
}

/// What the policy event says.
#[derive(Debug)]
pub struct PolicyChange<'a> {
    pub previous: Option<&'a PolicyRecord>,
    pub new: &'a Retention,
    pub set_by: &'a str,
    pub archive: &'a str,
    pub record: &'a str,
    pub event_id: String,
    pub now_us: i64,
}

/// The chained event of a policy change: governance, by the worker (or `--retention-set-by`),
/// about the archive; old and new policy in before/after and in attributes.
pub fn policy_event(c: &PolicyChange<'_>) -> AuditEvent {
    let canonical = c.new.policy.canonical();
    let (prev_mode, prev_policy) = match c.previous {
        Some(p) => (p.mode.as_str().to_owned(), p.policy.clone()),
        None => (NO_POLICY.to_owned(), NO_POLICY.to_owned()),
    };
    GovernanceEvent {
        event_id: c.event_id.clone(),
        event_type: POLICY_SET_EVENT_TYPE,
        time_us: c.now_us,
        component: "sink-archive",
        actor_type: ActorType::Service,
        actor_id: c.set_by,
        verb: "set_retention",
        description: format!(
            "archive retention set to {} ({})",
            canonical,
            c.new.mode.as_str()
        ),
        target_type: "archive",
        target_id: c.archive,
        reason: "sink-archive started with a retention policy other than the last recorded one"
            .into(),
        attributes: vec![
            (ATTR_STORE, STORE.to_owned()),
            (ATTR_OLD_POLICY, prev_policy),
            (ATTR_NEW_POLICY, canonical.clone()),
            (ATTR_ARCHIVE, c.archive.to_owned()),
            (ATTR_MODE, c.new.mode.as_str().to_owned()),
            (ATTR_OLD_MODE, prev_mode),
            (ATTR_RECORD, c.record.to_owned()),
        ],
        before_json: c.previous.map(|p| policy_json(p.mode, &p.policy)),
        after_json: Some(policy_json(c.new.mode, &canonical)),
        regulations: vec![],
    }
    .build()
}

fn now_us() -> i64 {
    i64::try_from(OffsetDateTime::now_utc().unix_timestamp_nanos() / 1000).unwrap_or(i64::MAX)
}

/// At start: the effective policy (checking the bucket's Object Lock unless the mode is off),
/// recorded in the chain and the archive if it changed. Returns `archive` locking its puts
/// as the policy says; only then may archiving begin.
pub async fn prepare(
    args: &RetentionArgs,
    store_args: &ArchiveStoreArgs,
    kafka: &KafkaArgs,
    archive: Archive,
    retry_policy: &RetryPolicy,
    cancel: &CancellationToken,
) -> Result<Archive, Error> {
    let policy = args.policy()?;
    let mut mode = args.retention_mode;
    let bucket = match mode {
        RetentionMode::Off => None,
        _ => match LockedBucket::open(store_args)? {
            None => {
                tracing::warn!(
                    mode = mode.as_str(),
                    "the archive is a local folder, which cannot be locked: retention is NOT enforced (use an S3 bucket with Object Lock)"
                );
                mode = RetentionMode::Off;
                None
            }
            Some(b) => {
                let what = format!(
                    "reading the Object Lock configuration of bucket {}",
                    b.bucket()
                );
                let config =
                    retry_reporting(&what, retry_policy, cancel, archive.check(), || async {
                        b.lock_config().await.map_err(StoreError)
                    })
                    .await
                    .map_err(|e| match e {
                        worker_runtime::retry::RetryError::Failed(e) => Error::Store {
                            what: what.clone(),
                            source: e.0,
                        },
                        worker_runtime::retry::RetryError::Cancelled(e) => Error::Cancelled {
                            what: what.clone(),
                            last: e.0.to_string(),
                        },
                    })?;
                if config != LockConfig::Enabled {
                    return Err(Error::ObjectLockDisabled {
                        bucket: b.bucket().to_owned(),
                        mode: mode.as_str(),
                    });
                }
                Some(Arc::new(b))
            }
        },
    };
    let retention = Retention { mode, policy };
    let archive = match bucket {
        Some(b) => archive.locking(retention.clone(), b),
        None => archive,
    };
    let archive_name = store_args.describe(Access::Write);
    record(args, &retention, &archive_name, kafka, &archive).await?;
    tracing::info!(
        mode = retention.mode.as_str(),
        policy = %retention.policy.canonical(),
        "archive retention"
    );
    Ok(archive)
}

/// The last policy record in the archive, if any.
pub async fn last_record(archive: &Archive) -> Result<Option<PolicyRecord>, Error> {
    let keys = archive.list(&format!("{POLICY_DIR}/")).await?;
    let Some(key) = keys
        .iter()
        .filter_map(|k| record_n(k).map(|n| (n, k)))
        .max()
        .map(|(_, k)| k.clone())
    else {
        return Ok(None);
    };
    let bytes = archive.get(&key).await?;
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| Error::Task(format!("policy record {key} is unreadable: {e}")))
}

async fn record(
    args: &RetentionArgs,
    retention: &Retention,
    archive_name: &str,
    kafka: &KafkaArgs,
    archive: &Archive,
) -> Result<(), Error> {
    let last = last_record(archive).await?;
    if !needs_record(last.as_ref(), retention) {
        tracing::info!("retention policy unchanged since its last record");
        return Ok(());
    }
    let n = last.as_ref().map_or(1, |r| r.n + 1);
    let key = record_key(n);
    let set_by = args.set_by();
    let id = event_id(archive_name, n, retention);
    let now = now_us();
    let event = policy_event(&PolicyChange {
        previous: last.as_ref(),
        new: retention,
        set_by: &set_by,
        archive: archive_name,
        record: &key,
        event_id: id.clone(),
        now_us: now,
    });
    // The event first, acknowledged: the record then claims only what the chain will show.
    let payload =
        schemas::framing::encode_single_object_event(&event).map_err(|e| Error::Schema {
            what: format!("the {POLICY_SET_EVENT_TYPE} event"),
            source: e,
        })?;
    let topic = kafka.topics().validated;
    let producer = Producer::new(kafka, "sink-archive-retention")?;
    let delivered = producer
        .send(&OutputRecord::new(
            &topic,
            Some(id.clone().into_bytes()),
            payload,
        ))
        .await?;
    tracing::info!(event_id = %id, %topic, partition = delivered.partition, offset = delivered.offset, "retention policy change recorded in the chain");
    metrics::counter!("audit_archive_retention_policy_events_total").increment(1);
    let rec = PolicyRecord {
        n,
        mode: retention.mode,
        policy: retention.policy.canonical(),
        set_by,
        archive: archive_name.to_owned(),
        event_id: id,
        recorded_at: time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default(),
    };
    let mut body = serde_json::to_vec_pretty(&rec)
        .map_err(|e| Error::Task(format!("policy record JSON: {e}")))?;
    body.push(b'\n');
    // On a locking archive, the record lives as long as anything archived under it may.
    let until = retention.policy.longest_after(from_us(now));
    if !archive
        .put_create_until(&key, Bytes::from(body), Some(until))
        .await?
    {
        // Another instance recorded the same change at the same time: its record stands.
        tracing::info!(%key, "policy record written by another instance meanwhile");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> OffsetDateTime {
        OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).unwrap()
    }

    #[test]
    fn policies_parse_canonically() {
        let p = Policy::parse("security=10y, default=7y,User-Interaction=1y").unwrap();
        assert_eq!(p.shared().default, Span::Years(7));
        assert_eq!(p.span(EventCategory::Security), Span::Years(10));
        assert_eq!(p.span(EventCategory::UserInteraction), Span::Years(1));
        assert_eq!(p.span(EventCategory::Telemetry), Span::Years(7));
        assert_eq!(p.canonical(), "default=7y,security=10y,user_interaction=1y");
        assert_eq!(Policy::parse("").unwrap().canonical(), "default=7y");
        assert_eq!(
            Policy::parse("security=1d").unwrap().shared().default,
            Span::Years(7)
        );
        for bad in [
            "default",
            "default=7y,default=8y",
            "secret=1y",
            "security=1y,security=2y",
            "security=1w",
        ] {
            assert!(Policy::parse(bad).is_err(), "{bad}");
        }
        let e = Policy::parse("secret=1y").unwrap_err();
        assert!(e.contains("security") && e.contains("secret"), "{e}");
        // The shared grammar's months are calendar months here too.
        assert_eq!(
            Policy::parse("default=18mo")
                .unwrap()
                .longest_after(t("2026-01-31T00:00:00Z")),
            t("2027-07-31T00:00:00Z")
        );
        // S3 Object Lock has no "forever": refused, saying why and what to do instead.
        for bad in ["default=forever", "default=7y,governance=forever"] {
            let e = Policy::parse(bad).unwrap_err();
            assert!(
                e.contains("forever") && e.contains("retain-until") && e.contains("100y"),
                "{e}"
            );
        }
        // Every category has a name.
        for (name, c) in CLASSES {
            assert_eq!(class_name(c), name);
        }
    }

    fn event(category: EventCategory, time: &str) -> ChainedEvent {
        let mut event = schemas::testing::sample_event();
        event.category = category;
        event.event_time_us = (t(time).unix_timestamp_nanos() / 1000) as i64;
        ChainedEvent {
            chain_partition: 0,
            seq: 1,
            prev_hash: vec![0; 32],
            hash: vec![0; 32],
            canonical_version: 1,
            source_topic: "t".into(),
            source_partition: 0,
            source_offset: 0,
            event,
        }
    }

    #[test]
    fn retain_until_is_the_max_over_events_of_their_class() {
        let p = Policy::parse("default=1d,security=3d").unwrap();
        let evs = [
            event(EventCategory::UserInteraction, "2026-01-05T00:00:00Z"),
            event(EventCategory::Security, "2026-01-01T00:00:00Z"),
            event(EventCategory::Telemetry, "2026-01-02T00:00:00Z"),
        ];
        // security at 01-01 + 3d = 01-04 < user_interaction at 01-05 + 1d = 01-06
        assert_eq!(p.retain_until(&evs), Some(t("2026-01-06T00:00:00Z")));
        // without the late user event, the old security event decides
        assert_eq!(p.retain_until(&evs[1..]), Some(t("2026-01-04T00:00:00Z")));
        assert_eq!(p.retain_until(&evs[..0]), None);
        let latest = |evs: &[ChainedEvent]| {
            evs.iter()
                .map(|e| (e.event.category, e.event.event_time_us))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            p.retain_until_latest(latest(&evs)),
            Some(t("2026-01-06T00:00:00Z"))
        );
        assert_eq!(p.retain_until_latest([]), None);
        assert_eq!(
            p.longest_after(t("2026-01-01T00:00:00Z")),
            t("2026-01-04T00:00:00Z")
        );
    }

    proptest::proptest! {
        /// The latest time per class gives the date the whole list gives, month ends and leap
        /// days included (what lets an open segment keep one time per class, not its events).
        #[test]
        fn the_latest_per_class_decides(
            items in proptest::collection::vec(
                (schemas::testing::arb_category(), 0i64..4_000_000_000_000_000), 0..20),
        ) {
            let p = Policy::parse("default=1mo,security=1y,telemetry=3d,governance=18mo").unwrap();
            let evs: Vec<ChainedEvent> = items
                .iter()
                .map(|(c, t)| {
                    let mut e = event(*c, "2026-01-01T00:00:00Z");
                    e.event.event_time_us = *t;
                    e
                })
                .collect();
            let mut latest: Vec<(EventCategory, i64)> = Vec::new();
            for (c, t) in &items {
                match latest.iter_mut().find(|(k, _)| k == c) {
                    Some((_, l)) => *l = (*l).max(*t),
                    None => latest.push((*c, *t)),
                }
            }
            proptest::prop_assert_eq!(p.retain_until(&evs), p.retain_until_latest(latest));
        }
    }

    #[test]
    fn locks_and_checkpoints() {
        let r = Retention {
            mode: RetentionMode::Compliance,
            policy: Policy::parse("default=1d,security=2d").unwrap(),
        };
        let now = t("2026-01-01T00:00:00Z");
        let later = t("2026-01-02T00:00:00Z");
        assert_eq!(
            r.lock(Some(later), now),
            Some((RetentionMode::Compliance, later))
        );
        // Past (and nearly past) dates are not sent: S3 refuses them.
        assert_eq!(r.lock(Some(now), now), None);
        assert_eq!(r.lock(Some(now + time::Duration::seconds(30)), now), None);
        assert_eq!(r.lock(None, now), None);
        let off = Retention {
            mode: RetentionMode::Off,
            ..r.clone()
        };
        assert_eq!(off.lock(Some(later), now), None);
        let cp_us = (now.unix_timestamp_nanos() / 1000) as i64;
        assert_eq!(r.checkpoint_until(cp_us, None), t("2026-01-03T00:00:00Z"));
        let far = t("2026-02-01T00:00:00Z");
        assert_eq!(r.checkpoint_until(cp_us, Some(far)), far);
        assert_eq!(
            r.checkpoint_until(cp_us, Some(later)),
            t("2026-01-03T00:00:00Z")
        );
    }

    #[test]
    fn dates_round_up_to_seconds() {
        assert_eq!(
            rfc3339_seconds(t("2026-01-01T00:00:00.000001Z")),
            "2026-01-01T00:00:01Z"
        );
        assert_eq!(
            rfc3339_seconds(t("2026-01-01T00:00:00Z")),
            "2026-01-01T00:00:00Z"
        );
    }

    #[test]
    fn records_and_when_to_write_them() {
        assert_eq!(record_key(3), "_retention/policy-0000000003.json");
        assert_eq!(record_n(&record_key(3)), Some(3));
        for bad in [
            "_retention/policy-3.json",
            "_retention/x.json",
            "policy-0000000003.json",
        ] {
            assert_eq!(record_n(bad), None, "{bad}");
        }
        let r = Retention {
            mode: RetentionMode::Compliance,
            policy: Policy::parse("default=7y").unwrap(),
        };
        assert!(needs_record(None, &r));
        let off = Retention {
            mode: RetentionMode::Off,
            ..r.clone()
        };
        assert!(!needs_record(None, &off), "never locked, still not locked");
        let rec = PolicyRecord {
            n: 1,
            mode: RetentionMode::Compliance,
            policy: "default=7y".into(),
            set_by: "x".into(),
            archive: "a".into(),
            event_id: "e".into(),
            recorded_at: "t".into(),
        };
        assert!(!needs_record(Some(&rec), &r));
        assert!(needs_record(Some(&rec), &off), "turning it off is recorded");
        let longer = Retention {
            policy: Policy::parse("default=7y,security=10y").unwrap(),
            ..r.clone()
        };
        assert!(needs_record(Some(&rec), &longer));
        assert_eq!(event_id("a", 1, &r), event_id("a", 1, &r));
        assert_ne!(event_id("a", 1, &r), event_id("a", 2, &r));
        assert_ne!(event_id("a", 1, &r), event_id("b", 1, &r));
    }

    #[test]
    fn the_policy_event() {
        let r = Retention {
            mode: RetentionMode::Governance,
            policy: Policy::parse("default=7y,security=10y").unwrap(),
        };
        let prev = PolicyRecord {
            n: 1,
            mode: RetentionMode::Compliance,
            policy: "default=7y".into(),
            set_by: "x".into(),
            archive: "a".into(),
            event_id: "e".into(),
            recorded_at: "t".into(),
        };
        let e = policy_event(&PolicyChange {
            previous: Some(&prev),
            new: &r,
            set_by: "sink-archive@pod-1",
            archive: "s3://b at http://s3, prefix p/",
            record: "_retention/policy-0000000002.json",
            event_id: "retention-x".into(),
            now_us: 5,
        });
        assert_eq!(e.event_type, POLICY_SET_EVENT_TYPE);
        assert_eq!(e.category, EventCategory::Governance);
        assert_eq!(e.actor.id, "sink-archive@pod-1");
        let attr = |k: &str| {
            e.attributes
                .iter()
                .find(|a| a.key == k)
                .map(|a| a.value.as_str())
        };
        assert_eq!(attr(ATTR_STORE), Some("archive"));
        assert_eq!(attr(ATTR_NEW_POLICY), Some("default=7y,security=10y"));
        assert_eq!(attr(ATTR_MODE), Some("governance"));
        assert_eq!(attr(ATTR_OLD_POLICY), Some("default=7y"));
        assert_eq!(attr(ATTR_OLD_MODE), Some("compliance"));
        assert!(e.attributes.windows(2).all(|w| w[0].key < w[1].key));
        assert_eq!(
            e.data.before_json.as_deref(),
            Some(r#"{"mode":"compliance","policy":"default=7y"}"#)
        );
        // It encodes as any event does.
        let bytes = schemas::framing::encode_single_object_event(&e).unwrap();
        assert_eq!(schemas::framing::decode_event(&bytes, None).unwrap(), e);
    }
}
