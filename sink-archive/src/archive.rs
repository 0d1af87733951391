//! The archive's storage operations: write a segment and its manifest write-once, find where a
//! partition resumes (repairing missing manifests), store checkpoints. Every call goes through
//! `worker_runtime::retry` with [`StoreError`]'s classification.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::TryStreamExt;
use integrity::checkpoint::CheckpointJson;
use object_store::path::Path;
use object_store::{ObjectStore, PutMode, PutOptions, PutPayload};
use schemas::segment::{self, Manifest, SegmentBuilder, SegmentKey, SegmentMeta};
use schemas::{ChainedEvent, Checkpoint, EventCategory};
use time::OffsetDateTime;
use worker_runtime::retry::{retry_reporting, DependencyCheck, RetryError, RetryPolicy};
use worker_runtime::CancellationToken;

use crate::lock::LockedBucket;
use crate::retention::{Retention, RetentionMode};

use crate::resume::{classify_existing, plan_resume, Existing};
use crate::store::StoreError;
use crate::Error;

/// `sink-archive/<version>`, written into every segment.
pub const WRITER: &str = concat!("sink-archive/", env!("CARGO_PKG_VERSION"));

/// How a write-once put ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// We created the object.
    Written,
    /// It existed with the same content (a retry after a crash): nothing to do.
    AlreadyThere,
    /// It existed with different content: fork alarm raised, the stored object kept.
    Fork,
}

/// A segment as stored (ours, or the one that was already there).
#[derive(Debug, Clone)]
pub struct StoredSegment {
    pub key: SegmentKey,
    /// The metadata of the object now at the key (for a fork: the *stored* one's, if readable).
    pub meta: Option<SegmentMeta>,
    pub outcome: Outcome,
}

/// Where a partition's archive ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResumePoint {
    pub last_seq: i64,
    /// `hash` of the record at `last_seq`, when the segment could be read.
    pub last_hash: Option<Vec<u8>>,
    /// The chained Kafka offset to continue from (last stored offset + 1), when known and
    /// recorded for the same topic.
    pub next_offset: Option<i64>,
}

/// The archive: an object store plus retry settings.
#[derive(Debug, Clone)]
pub struct Archive {
    store: Arc<dyn ObjectStore>,
    retry: RetryPolicy,
    cancel: CancellationToken,
    /// The object store's readiness condition, kept by every retry loop that calls it.
    check: Option<DependencyCheck>,
    /// Object Lock on every put (`--retention-mode` compliance/governance on S3).
    lock: Option<ArchiveLock>,
}

/// How the archive's puts are locked: the policy, the bucket to put through with the lock
/// headers (crate::lock), and per chain partition the latest retain-until of the segments
/// archived by this process (a checkpoint lives at least that long).
#[derive(Debug, Clone)]
struct ArchiveLock {
    retention: Retention,
    bucket: Arc<LockedBucket>,
    covered: Arc<Mutex<HashMap<i32, OffsetDateTime>>>,
}

/// The readiness condition naming the object store: false while a call to it is retried.
pub const CHECK_OBJECT_STORE: &str = "object_store";

fn fork_alarm(kind: &'static str, partition: i32, key: &str, detail: &str) {
    tracing::error!(kind, partition, key, detail, "FORK: the archive already holds different content under this name; keeping the stored object");
    metrics::counter!("audit_archive_forks_total", "kind" => kind, "partition" => partition.to_string())
        .increment(1);
}

/// Both checkpoints sign the same range and head of the same chain (their times, keys and
/// signatures may differ).
fn same_range(a: &CheckpointJson, b: &CheckpointJson) -> bool {
    (
        a.chain_id.as_str(),
        a.first_seq,
        a.head_hash.as_str(),
        a.merkle_root.as_str(),
    ) == (
        b.chain_id.as_str(),
        b.first_seq,
        b.head_hash.as_str(),
        b.merkle_root.as_str(),
    )
}

fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

impl Archive {
    pub fn new(store: Arc<dyn ObjectStore>, retry: RetryPolicy, cancel: CancellationToken) -> Self {
        Archive {
            store,
            retry,
            cancel,
            check: None,
            lock: None,
        }
    }

    /// Puts every object through `bucket` with Object Lock as `retention` says (from
    /// `retention::prepare`). A mode of off changes nothing.
    pub fn locking(mut self, retention: Retention, bucket: Arc<LockedBucket>) -> Self {
        if retention.mode != RetentionMode::Off {
            self.lock = Some(ArchiveLock {
                retention,
                bucket,
                covered: Arc::default(),
            });
        }
        self
    }

    /// The retention in force on this archive's puts (`None`: not locked).
    pub fn retention(&self) -> Option<&Retention> {
        self.lock.as_ref().map(|l| &l.retention)
    }

    /// The lock of an object whose retention ends at `until`.
    fn lock_for(&self, until: Option<OffsetDateTime>) -> Option<(RetentionMode, OffsetDateTime)> {
        let l = self.lock.as_ref()?;
        let lock = l.retention.lock(until, OffsetDateTime::now_utc());
        if lock.is_none() && until.is_some() {
            // Events older than their retention: nothing left to retain, and S3 refuses a
            // retain-until date in the past.
            metrics::counter!("audit_archive_unlocked_objects_total", "reason" => "retention_past")
                .increment(1);
        }
        lock
    }

    /// Retain-until of a segment whose latest event time per class is `latest`, under the
    /// policy in force.
    fn segment_until(&self, latest: &[(EventCategory, i64)]) -> Option<OffsetDateTime> {
        self.lock
            .as_ref()?
            .retention
            .policy
            .retain_until_latest(latest.iter().copied())
    }

    /// Retain-until of a stored segment of `events`.
    fn events_until(&self, events: &[ChainedEvent]) -> Option<OffsetDateTime> {
        self.lock.as_ref()?.retention.policy.retain_until(events)
    }

    /// Retain-until of the segment `bytes` (a stored one: its own events decide).
    fn stored_until(&self, bytes: &[u8]) -> Option<OffsetDateTime> {
        self.lock.as_ref()?;
        let (_, events) = segment::read_segment(bytes).ok()?;
        self.events_until(&events)
    }

    fn note_covered(&self, partition: i32, until: Option<OffsetDateTime>) {
        let (Some(l), Some(until)) = (&self.lock, until) else {
            return;
        };
        if let Ok(mut m) = l.covered.lock() {
            let e = m.entry(partition).or_insert(until);
            *e = (*e).max(until);
        }
    }

    /// Retain-until of a checkpoint of `partition` signed at `time_us`.
    fn checkpoint_until(&self, partition: i32, time_us: i64) -> Option<OffsetDateTime> {
        let l = self.lock.as_ref()?;
        let covered = l
            .covered
            .lock()
            .ok()
            .and_then(|m| m.get(&partition).copied());
        Some(l.retention.checkpoint_until(time_us, covered))
    }

    /// Reports the store's health to `check` as calls fail and succeed.
    pub fn reporting(mut self, check: DependencyCheck) -> Self {
        self.check = Some(check);
        self
    }

    /// The readiness condition this archive's calls keep, if any (for calls made beside it).
    pub fn check(&self) -> Option<&DependencyCheck> {
        self.check.as_ref()
    }

    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    fn store_err(what: String) -> impl FnOnce(RetryError<StoreError>) -> Error {
        move |e| match e {
            RetryError::Failed(e) => Error::Store { what, source: e.0 },
            RetryError::Cancelled(e) => Error::Cancelled {
                what,
                last: e.0.to_string(),
            },
        }
    }

    /// Put `bytes` at `key` only if nothing is there. `Ok(false)` = it already exists. On a
    /// locking archive the object is locked for the longest span of the policy from now.
    pub async fn put_create(&self, key: &str, bytes: Bytes) -> Result<bool, Error> {
        let until = self
            .lock
            .as_ref()
            .map(|l| l.retention.policy.longest_after(OffsetDateTime::now_utc()));
        self.put_create_until(key, bytes, until).await
    }

    /// [`Self::put_create`] of an object to retain until `until` (on a locking archive; a
    /// date already past puts it unlocked).
    pub async fn put_create_until(
        &self,
        key: &str,
        bytes: Bytes,
        until: Option<OffsetDateTime>,
    ) -> Result<bool, Error> {
        let path = Path::from(key);
        let what = format!("create {key}");
        let lock = self.lock_for(until);
        let r = retry_reporting(
            &what,
            &self.retry,
            &self.cancel,
            self.check.as_ref(),
            || {
                let payload = PutPayload::from(bytes.clone());
                let opts = PutOptions::from(PutMode::Create);
                let store = &self.store;
                let path = &path;
                let bytes = bytes.clone();
                async move {
                    match &self.lock {
                        // Through our own signed PUT: object_store cannot send lock headers.
                        Some(l) => l.bucket.put_create(key, bytes, lock).await,
                        None => store.put_opts(path, payload, opts).await.map(|_| ()),
                    }
                    .map_err(StoreError)
                }
            },
        )
        .await;
        match r {
            Ok(_) => Ok(true),
            Err(RetryError::Failed(StoreError(object_store::Error::AlreadyExists { .. }))) => {
                Ok(false)
            }
            Err(e) => Err(Self::store_err(what)(e)),
        }
    }

    pub async fn get(&self, key: &str) -> Result<Bytes, Error> {
        let path = Path::from(key);
        let what = format!("get {key}");
        retry_reporting(
            &what,
            &self.retry,
            &self.cancel,
            self.check.as_ref(),
            || {
                let store = &self.store;
                let path = &path;
                async move {
                    let r = store.get(path).await.map_err(StoreError)?;
                    r.bytes().await.map_err(StoreError)
                }
            },
        )
        .await
        .map_err(Self::store_err(what))
    }

    /// Every object name under `prefix` (relative to the archive root). A missing folder (local
    /// backend) is an empty listing.
    pub async fn list(&self, prefix: &str) -> Result<Vec<String>, Error> {
        let path = Path::from(prefix);
        let what = format!("list {prefix}");
        retry_reporting(
            &what,
            &self.retry,
            &self.cancel,
            self.check.as_ref(),
            || {
                let store = &self.store;
                let path = &path;
                async move {
                    match store
                        .list(Some(path))
                        .map_ok(|m| m.location.to_string())
                        .try_collect()
                        .await
                    {
                        Ok(v) => Ok(v),
                        Err(object_store::Error::NotFound { .. }) => Ok(Vec::new()),
                        Err(e) => Err(StoreError(e)),
                    }
                }
            },
        )
        .await
        .map_err(Self::store_err(what))
    }

    /// [`Self::write_segment`] of decoded `events` (one partition, contiguous, one day).
    pub async fn write_events(
        &self,
        events: &[ChainedEvent],
        chained_topic: &str,
        first_offset: i64,
        last_offset: i64,
    ) -> Result<StoredSegment, Error> {
        let mut records = SegmentBuilder::new();
        let mut latest: Vec<(EventCategory, i64)> = Vec::new();
        for e in events {
            records.push(e)?;
            crate::buffer::note_latest(&mut latest, e.event.category, e.event.event_time_us);
        }
        self.write_segment(records, &latest, chained_topic, first_offset, last_offset)
            .await
    }

    /// Writes the segment of `records` (one partition, contiguous, one day; `latest`: the
    /// latest event time per event class, for its retention) read from `chained_topic` at
    /// offsets `first_offset..=last_offset`, then its manifest, both write-once. Safe to
    /// repeat after a crash at any point.
    pub async fn write_segment(
        &self,
        records: SegmentBuilder,
        latest: &[(EventCategory, i64)],
        chained_topic: &str,
        first_offset: i64,
        last_offset: i64,
    ) -> Result<StoredSegment, Error> {
        let topic = chained_topic.to_owned();
        // Compressing the last block and joining the rest is CPU work: off the async threads.
        let (meta, bytes) = tokio::task::spawn_blocking(move || {
            records.finish(&topic, first_offset, last_offset, WRITER)
        })
        .await
        .map_err(|e| Error::Task(format!("encoding a segment: {e}")))??;
        let key = meta.key()?;
        let object_key = key.object_key();
        let bytes = Bytes::from(bytes);
        let until = self.segment_until(latest);
        if self
            .put_create_until(&object_key, bytes.clone(), until)
            .await?
        {
            self.note_covered(meta.partition, until);
            self.ensure_manifest(&meta, &bytes, until).await?;
            metrics::counter!("audit_archive_segments_total", "outcome" => "written").increment(1);
            metrics::counter!("audit_archive_events_total").increment(meta.count);
            tracing::info!(key = %object_key, count = meta.count, size = bytes.len(), "segment written");
            return Ok(StoredSegment {
                key,
                meta: Some(meta),
                outcome: Outcome::Written,
            });
        }
        let existing = self.get(&object_key).await?;
        match classify_existing(&bytes, &existing) {
            Existing::Identical => {
                tracing::info!(key = %object_key, "segment already stored with the same bytes (retry after a crash)");
                self.note_covered(meta.partition, until);
                self.ensure_manifest(&meta, &existing, until).await?;
                metrics::counter!("audit_archive_segments_total", "outcome" => "already_there")
                    .increment(1);
                Ok(StoredSegment {
                    key,
                    meta: Some(meta),
                    outcome: Outcome::AlreadyThere,
                })
            }
            Existing::Equivalent(stored) => {
                tracing::warn!(key = %object_key, stored_writer = %stored.writer, "segment already stored with the same records, other bytes; keeping it");
                // The same records: the same retention.
                self.note_covered(meta.partition, until);
                self.ensure_manifest(&stored, &existing, until).await?;
                metrics::counter!("audit_archive_segments_total", "outcome" => "already_there")
                    .increment(1);
                Ok(StoredSegment {
                    key,
                    meta: Some(stored),
                    outcome: Outcome::AlreadyThere,
                })
            }
            Existing::Fork {
                detail,
                existing: stored,
            } => {
                fork_alarm("segment", meta.partition, &object_key, &detail);
                if let Some(stored) = &stored {
                    let stored_until = self.stored_until(&existing);
                    self.note_covered(meta.partition, stored_until);
                    self.ensure_manifest(stored, &existing, stored_until)
                        .await?;
                }
                Ok(StoredSegment {
                    key,
                    meta: stored,
                    outcome: Outcome::Fork,
                })
            }
        }
    }

    /// Writes the manifest of the stored segment `bytes` (described by `meta`) unless an
    /// equivalent one exists; a different one is a fork alarm and is kept. `until`: the
    /// segment's retain-until (a manifest lives as long as its segment).
    pub async fn ensure_manifest(
        &self,
        meta: &SegmentMeta,
        bytes: &[u8],
        until: Option<OffsetDateTime>,
    ) -> Result<Outcome, Error> {
        let manifest = Manifest::for_segment(meta, bytes, &now_rfc3339())?;
        let key = meta.key()?.manifest_key();
        if self
            .put_create_until(&key, Bytes::from(manifest.to_json()), until)
            .await?
        {
            return Ok(Outcome::Written);
        }
        let existing = self.get(&key).await?;
        match Manifest::from_json(&existing) {
            Ok(m) if m.same_content(&manifest) => Ok(Outcome::AlreadyThere),
            Ok(m) => {
                fork_alarm(
                    "manifest",
                    meta.partition,
                    &key,
                    &format!(
                        "stored manifest sha256 {} vs object {}",
                        m.sha256, manifest.sha256
                    ),
                );
                Ok(Outcome::Fork)
            }
            Err(e) => {
                fork_alarm(
                    "manifest",
                    meta.partition,
                    &key,
                    &format!("stored manifest unreadable: {e}"),
                );
                Ok(Outcome::Fork)
            }
        }
    }

    /// Where `partition` resumes: the highest `last_seq` among the segment names, with its last
    /// hash and chained offset. Writes missing manifests on the way (a crash between the two
    /// puts). `None` = nothing archived yet for the partition.
    pub async fn resume(
        &self,
        partition: i32,
        chained_topic: &str,
    ) -> Result<Option<ResumePoint>, Error> {
        let names = self.list(&segment::partition_prefix(partition)).await?;
        let plan = plan_resume(partition, names.iter().map(String::as_str));
        for (a, b) in &plan.overlaps {
            tracing::warn!(partition, first = %a, second = %b, "overlapping segments in the archive (two writers?)");
            metrics::counter!("audit_archive_overlaps_total", "partition" => partition.to_string())
                .increment(1);
        }
        let mut latest_meta: Option<SegmentMeta> = None;
        for key in &plan.missing_manifests {
            let bytes = self.get(&key.object_key()).await?;
            match segment::read_segment(&bytes) {
                Ok((meta, events)) => {
                    tracing::warn!(key = %key, "segment without manifest (crash between the two puts): writing it now");
                    let until = self.events_until(&events);
                    self.ensure_manifest(&meta, &bytes, until).await?;
                    if plan.latest.as_ref() == Some(key) {
                        latest_meta = Some(meta);
                    }
                }
                Err(e) => fork_alarm(
                    "segment",
                    partition,
                    &key.object_key(),
                    &format!("unreadable: {e}"),
                ),
            }
        }
        let Some(latest) = plan.latest else {
            return Ok(None);
        };
        if latest_meta.is_none() && !plan.missing_manifests.contains(&latest) {
            let bytes = self.get(&latest.manifest_key()).await?;
            match Manifest::from_json(&bytes) {
                Ok(m) => {
                    return Ok(Some(ResumePoint {
                        last_seq: latest.last_seq,
                        last_hash: hex::decode(&m.last_hash).ok(),
                        next_offset: (m.chained_topic == chained_topic)
                            .then_some(m.last_offset + 1),
                    }))
                }
                Err(e) => {
                    tracing::warn!(key = %latest.manifest_key(), error = %e, "unreadable manifest; reading the segment instead");
                    let bytes = self.get(&latest.object_key()).await?;
                    latest_meta = segment::read_segment(&bytes).ok().map(|(m, _)| m);
                }
            }
        }
        Ok(Some(match latest_meta {
            Some(m) => ResumePoint {
                last_seq: latest.last_seq,
                last_hash: Some(m.last_hash),
                next_offset: (m.chained_topic == chained_topic).then_some(m.last_offset + 1),
            },
            // Unreadable latest segment: its name still bounds the range; the consumer's
            // committed offset decides where reading restarts.
            None => ResumePoint {
                last_seq: latest.last_seq,
                last_hash: None,
                next_offset: None,
            },
        }))
    }

    /// The highest `last_seq` archived for `partition` (from the segment names alone; no
    /// repair, no object read). For checkpoints of chain partitions another instance archives.
    pub async fn archived_seq(&self, partition: i32) -> Result<Option<i64>, Error> {
        let names = self.list(&segment::partition_prefix(partition)).await?;
        Ok(plan_resume(partition, names.iter().map(String::as_str))
            .latest
            .map(|k| k.last_seq))
    }

    /// Stores a checkpoint as `checkpoints/chain=<p>/<seq>-<key_id>.json`, write-once. A later
    /// signature over the same range and head with another time (a heartbeat: the chainer
    /// re-signs an idle partition's head) is stored next to it under
    /// [`segment::checkpoint_heartbeat_key`], so that the archive shows the partition was alive
    /// then; the same record again is already there. A different head at the same seq is a
    /// fork alarm.
    pub async fn store_checkpoint(&self, cp: &Checkpoint) -> Result<Outcome, Error> {
        let key = segment::checkpoint_key(cp.partition, cp.seq, &cp.key_id);
        let json = CheckpointJson::from(cp);
        let mut body = serde_json::to_vec_pretty(&json)
            .map_err(|e| Error::Task(format!("checkpoint JSON: {e}")))?;
        body.push(b'\n');
        let body = Bytes::from(body);
        // A checkpoint seals every earlier record of its partition.
        let until = self.checkpoint_until(cp.partition, cp.time_us);
        if self.put_create_until(&key, body.clone(), until).await? {
            metrics::counter!("audit_archive_checkpoints_total", "outcome" => "written")
                .increment(1);
            return Ok(Outcome::Written);
        }
        let existing = self.get(&key).await?;
        match serde_json::from_slice::<CheckpointJson>(&existing) {
            Ok(stored) if stored == json => Ok(Outcome::AlreadyThere),
            Ok(stored) if stored.time_us != json.time_us && same_range(&stored, &json) => {
                let hb =
                    segment::checkpoint_heartbeat_key(cp.partition, cp.seq, &cp.key_id, cp.time_us);
                if self.put_create_until(&hb, body, until).await? {
                    metrics::counter!("audit_archive_checkpoints_total", "outcome" => "heartbeat")
                        .increment(1);
                    return Ok(Outcome::Written);
                }
                // Written before (a redelivery): write-once, the first copy stays.
                Ok(Outcome::AlreadyThere)
            }
            Ok(stored) if same_range(&stored, &json) => {
                tracing::info!(%key, "another signature over the same checkpoint head; keeping the stored one");
                Ok(Outcome::AlreadyThere)
            }
            Ok(stored) => {
                fork_alarm(
                    "checkpoint",
                    cp.partition,
                    &key,
                    &format!(
                        "stored head {} vs received {}",
                        stored.head_hash, json.head_hash
                    ),
                );
                Ok(Outcome::Fork)
            }
            Err(e) => {
                fork_alarm(
                    "checkpoint",
                    cp.partition,
                    &key,
                    &format!("stored checkpoint unreadable: {e}"),
                );
                Ok(Outcome::Fork)
            }
        }
    }
}
