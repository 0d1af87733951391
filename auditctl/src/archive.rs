//! Reading the chain back from the archive: S3 (`s3://bucket[/prefix]`) or a local folder with
//! the same layout (see `schemas::segment` for names, manifests and the container format).
//!
//! Per partition, segments are verified one at a time in seq order, while the next few are
//! already being read and decoded (bounded read-ahead, see `ReadAhead`). Each segment object is
//! checked against its manifest (size and SHA-256: a replaced or altered object is a finding), its
//! metadata against its name and records, and its records are fed to the chain verifier, which
//! recomputes every hash. Checkpoints come from the archive's `checkpoints/` objects
//! (`CheckpointJson`: hashes in hex, signature in base64).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use futures::{StreamExt, TryStreamExt};
use integrity::checkpoint::{CheckpointJson, SignedCheckpoint};
use integrity::verify::{Finding, FindingKind};
use object_store::path::Path as ObjPath;
use object_store::ObjectStore;
use schemas::raw_segment::{self, BlockBuffers, RawBlock, RawChained};
use schemas::segment::{
    self, parse_key, read_segment, verify_segment_digest, verify_segment_digest_of, Manifest,
    ObjectDigest, ObjectKind, SegmentKey, SegmentMeta, CHECKPOINTS_DIR,
};
use schemas::{ChainedEvent, Checkpoint};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use worker_runtime::object_store::{build_store, Access, ArchiveStoreArgs, StoreConfigError};

use crate::collect::{finding, Collector};
use crate::error::Error;
use crate::reads::Reads;

#[derive(Debug, Clone)]
pub struct ArchiveStore {
    store: Arc<dyn ObjectStore>,
    /// Key prefix inside the bucket (empty for none), without surrounding slashes.
    prefix: String,
    describe: String,
    reads: Reads,
    /// Block buffers the verifier is done with, decompressed into again by later blocks of any
    /// segment of the run (`raw_segment::BlockBuffers`).
    buffers: BlockBuffers,
}

/// A segment as listed: its object and its manifest, either of which may be missing.
#[derive(Debug, Clone)]
struct Listed {
    key: SegmentKey,
    segment: bool,
    manifest: bool,
    /// The segment object's size as listed (decides whether it may be read ahead).
    size: Option<u64>,
}

/// An unusable archive configuration: an unreadable secret key file is a file error, the
/// rest are usage errors (shared by the archive reader and `hold`'s signed requests).
pub(crate) fn store_config_error(e: StoreConfigError) -> Error {
    match e {
        StoreConfigError::SecretKeyFile { path, source } => Error::File {
            doing: "reading the S3 secret key file",
            path,
            source,
        },
        other => Error::Usage(other.to_string()),
    }
}

impl ArchiveStore {
    /// The archive named by `--archive-url` (or `--archive-local-dir`), with the key prefix of
    /// the URL's path followed by `--archive-prefix`: the store the sink writes, built by the
    /// same `worker_runtime::object_store::build_store` (for reading: a local folder must
    /// exist, and the S3 client retries briefly since `reads` retries whole reads).
    pub fn open(args: &ArchiveStoreArgs, reads: Reads) -> Result<Self, Error> {
        let store = build_store(args, Access::Read).map_err(store_config_error)?;
        Ok(Self {
            store,
            // The store is already wrapped in the key prefix.
            prefix: String::new(),
            describe: args.describe(Access::Read),
            reads,
            buffers: BlockBuffers::new(BLOCK_BUFFERS, KEPT_BUFFER_BYTES),
        })
    }

    /// A store and prefix given directly (tests, embedding).
    pub fn from_store(store: Arc<dyn ObjectStore>, prefix: &str, describe: &str) -> Self {
        Self {
            store,
            prefix: prefix.trim_matches('/').to_owned(),
            describe: describe.to_owned(),
            reads: Reads::default(),
            buffers: BlockBuffers::new(BLOCK_BUFFERS, KEPT_BUFFER_BYTES),
        }
    }

    pub fn describe(&self) -> String {
        self.describe.clone()
    }

    fn abs(&self, key: &str) -> ObjPath {
        if self.prefix.is_empty() {
            ObjPath::from(key)
        } else {
            ObjPath::from(format!("{}/{key}", self.prefix))
        }
    }

    fn rel<'a>(&self, loc: &'a str) -> Option<&'a str> {
        if self.prefix.is_empty() {
            Some(loc)
        } else {
            loc.strip_prefix(self.prefix.as_str())?.strip_prefix('/')
        }
    }

    /// Keys (relative to the archive root) of every object under `dir` (relative, e.g.
    /// `chain=3/`).
    async fn list(&self, dir: &str) -> Result<Vec<String>, Error> {
        Ok(self
            .list_sized(dir)
            .await?
            .into_iter()
            .map(|(k, _)| k)
            .collect())
    }

    /// [`Self::list`] with each object's size.
    async fn list_sized(&self, dir: &str) -> Result<Vec<(String, u64)>, Error> {
        let dir = dir.trim_end_matches('/');
        let p = if dir.is_empty() && self.prefix.is_empty() {
            None
        } else {
            Some(self.abs(dir))
        };
        let doing = format!("listing {dir}/ in {}", self.describe);
        let metas: Vec<object_store::ObjectMeta> = self
            .reads
            .run(&doing, || {
                let (store, p, doing) = (&self.store, &p, &doing);
                async move {
                    match store.list(p.as_ref()).try_collect().await {
                        Ok(v) => Ok(v),
                        Err(object_store::Error::NotFound { .. }) => Ok(Vec::new()),
                        Err(e) => Err(Error::os(doing.clone())(e)),
                    }
                }
            })
            .await?;
        Ok(metas
            .iter()
            .filter_map(|m| {
                self.rel(m.location.as_ref())
                    .map(|k| (k.to_owned(), m.size))
            })
            .collect())
    }

    async fn get(&self, key: &str) -> Result<bytes::Bytes, Error> {
        let doing = format!("reading {key} from {}", self.describe);
        let path = self.abs(key);
        self.reads
            .run(&doing, || {
                let (store, path, doing) = (&self.store, &path, &doing);
                async move {
                    let r = store.get(path).await.map_err(Error::os(doing.clone()))?;
                    r.bytes().await.map_err(Error::os(doing.clone()))
                }
            })
            .await
    }

    /// Segments per partition (only `partitions` if not empty), sorted by seq range.
    async fn segments(
        &self,
        partitions: &BTreeSet<u32>,
    ) -> Result<BTreeMap<i32, Vec<Listed>>, Error> {
        let mut keys = Vec::new();
        if partitions.is_empty() {
            keys = self.list_sized("").await?;
        } else {
            for p in partitions {
                let p = i32::try_from(*p)
                    .map_err(|_| Error::Usage(format!("--partition {p} is out of range")))?;
                keys.extend(self.list_sized(&segment::partition_prefix(p)).await?);
            }
        }
        let mut found: BTreeMap<SegmentKey, Listed> = BTreeMap::new();
        for (k, size) in keys {
            if let Some((key, kind)) = parse_key(&k) {
                let e = found.entry(key.clone()).or_insert(Listed {
                    key,
                    segment: false,
                    manifest: false,
                    size: None,
                });
                match kind {
                    ObjectKind::Segment => {
                        e.segment = true;
                        e.size = Some(size);
                    }
                    ObjectKind::Manifest => e.manifest = true,
                }
            }
        }
        let mut out: BTreeMap<i32, Vec<Listed>> = BTreeMap::new();
        for (k, l) in found {
            out.entry(k.partition).or_default().push(l);
        }
        for v in out.values_mut() {
            // Dates sort by day, seqs within a day; across days seq order is what matters.
            v.sort_by_key(|l| (l.key.first_seq, l.key.last_seq));
        }
        Ok(out)
    }

    /// Every stored checkpoint of these partitions (all if empty), plus findings for
    /// checkpoint objects that cannot be read.
    pub async fn checkpoints(
        &self,
        partitions: &BTreeSet<u32>,
    ) -> Result<(Vec<Checkpoint>, Vec<Finding>), Error> {
        let mut keys = Vec::new();
        if partitions.is_empty() {
            keys = self.list(CHECKPOINTS_DIR).await?;
        } else {
            for p in partitions {
                let p = i32::try_from(*p)
                    .map_err(|_| Error::Usage(format!("--partition {p} is out of range")))?;
                keys.extend(self.list(&segment::checkpoint_prefix(p)).await?);
            }
        }
        keys.sort();
        let mut cps = Vec::new();
        let mut bad = Vec::new();
        // One small object per checkpoint (a thousand-event chain signs every 1000 by
        // default): read CHECKPOINT_READS at a time, in key order, instead of one round trip
        // after another.
        let wanted: Vec<(String, i32)> = keys
            .into_iter()
            .filter_map(|k| checkpoint_partition(&k).map(|p| (k, p)))
            .collect();
        let mut reads = futures::stream::iter(wanted)
            .map(|(k, p)| async move {
                let bytes = self.get(&k).await;
                (k, p, bytes)
            })
            .buffered(CHECKPOINT_READS);
        while let Some((k, partition, bytes)) = reads.next().await {
            let bytes = bytes?;
            let parsed = serde_json::from_slice::<CheckpointJson>(&bytes)
                .map_err(|e| e.to_string())
                .and_then(|j| SignedCheckpoint::try_from(&j).map_err(|e| e.to_string()));
            match parsed {
                Ok(s) => {
                    let cp = Checkpoint::from(&s);
                    // The first checkpoint at a seq, or a heartbeat re-signing it later.
                    if segment::checkpoint_key(cp.partition, cp.seq, &cp.key_id) != k
                        && segment::checkpoint_heartbeat_key(
                            cp.partition,
                            cp.seq,
                            &cp.key_id,
                            cp.time_us,
                        ) != k
                    {
                        bad.push(finding(
                            partition,
                            cp.seq,
                            FindingKind::MalformedCheckpoint,
                            None,
                            format!(
                                "checkpoint object {k} holds the checkpoint of partition {} seq {} key {:?}",
                                cp.partition, cp.seq, cp.key_id
                            ),
                        ));
                    }
                    cps.push(cp);
                }
                Err(e) => bad.push(finding(
                    partition,
                    0,
                    FindingKind::MalformedCheckpoint,
                    None,
                    format!("checkpoint object {k} cannot be read: {e}"),
                )),
            }
        }
        Ok((cps, bad))
    }

    /// The manifest of a listed segment (if it has one and it can be read), with findings when
    /// it is missing, unreadable, or describes another segment.
    async fn manifest_of(
        &self,
        l: &Listed,
        findings: &mut Vec<Finding>,
    ) -> Result<Option<Manifest>, Error> {
        let raw = self.manifest_bytes(l).await?;
        Ok(judge_manifest(l, raw.as_deref(), findings))
    }

    /// The stored manifest of a listed segment, if it has one.
    async fn manifest_bytes(&self, l: &Listed) -> Result<Option<bytes::Bytes>, Error> {
        if l.manifest {
            self.get(&l.key.manifest_key()).await.map(Some)
        } else {
            Ok(None)
        }
    }

    /// Read one listed segment whole: its manifest and records, with findings about the
    /// objects. Only for `prove` (one checkpoint range); `verify` streams ([`Self::stream_into`]).
    async fn read_listed(
        &self,
        l: &Listed,
        findings: &mut Vec<Finding>,
    ) -> Result<Option<Vec<ChainedEvent>>, Error> {
        let k = &l.key;
        if !l.segment {
            findings.push(missing_segment(k));
            return Ok(None);
        }
        let bytes = self.get(&k.object_key()).await?;
        let manifest = self.manifest_of(l, findings).await?;
        let (p, first) = (k.partition, k.first_seq);
        let mut f = |kind, detail: String| findings.push(finding(p, first, kind, None, detail));
        if let Some(m) = &manifest {
            if let Err(e) = verify_segment_digest(m, &bytes) {
                f(FindingKind::SegmentReplaced, replaced(k, &e));
            }
        }
        let (meta, events) = match read_segment(&bytes) {
            Ok(x) => x,
            Err(e) => {
                f(
                    FindingKind::MalformedRecord,
                    format!("segment {} cannot be read: {e}", k.object_key()),
                );
                return Ok(None);
            }
        };
        for (kind, detail) in meta_findings(k, &meta, meta.check_events(&events)) {
            f(kind, detail);
        }
        Ok(Some(events))
    }

    /// Open a segment object as a stream of records. The body is read chunk by chunk and
    /// hashed on the way; a blocking task decodes it (the Avro reader is synchronous) and hands
    /// over records in batches (bounded channel). The body read ahead of the decoder is bounded
    /// in bytes ([`SEGMENT_BUFFER`], a semaphore per segment: a segment waiting behind another
    /// can never take the buffer its predecessor needs), so a segment up to that size is read
    /// whole as soon as it is opened, and memory is that buffer, one container block and a few
    /// batches of records, whatever the segment's size.
    ///
    /// The GET is retried like every read. A body that breaks off is resumed by the S3 client
    /// itself (object_store re-requests the rest with a range and checks the ETag is the same);
    /// if that fails too, the run ends (exit 3): records already fed to the verifier cannot be
    /// taken back, so the whole segment is not read again.
    async fn open_stream(&self, key: &str) -> Result<SegmentStream, Error> {
        let doing = format!("reading {key} from {}", self.describe);
        let path = self.abs(key);
        let get = self
            .reads
            .run(&doing, || {
                let (store, path, doing) = (&self.store, &path, &doing);
                async move { store.get(path).await.map_err(Error::os(doing.clone())) }
            })
            .await?;
        let mut body = get.into_stream();
        // Unbounded in messages, bounded in bytes: each chunk carries permits for its size.
        let (chunk_tx, chunk_rx) =
            mpsc::unbounded_channel::<(bytes::Bytes, OwnedSemaphorePermit)>();
        let buffer = Arc::new(Semaphore::new(SEGMENT_BUFFER));
        let forward = tokio::spawn(async move {
            let mut digest = ObjectDigest::default();
            let mut tx = Some(chunk_tx);
            while let Some(chunk) = body.next().await {
                let chunk = chunk.map_err(Error::os(doing.clone()))?;
                digest.update(&chunk);
                // The decoder stops at a malformed record: keep hashing the rest regardless.
                if let Some(t) = &tx {
                    // A chunk larger than the whole buffer takes all of it (one chunk over).
                    let n = chunk.len().clamp(1, SEGMENT_BUFFER);
                    let permit = Arc::clone(&buffer)
                        .acquire_many_owned(u32::try_from(n).unwrap_or(u32::MAX))
                        .await
                        .map_err(|e| Error::Archive(format!("segment read-ahead buffer: {e}")))?;
                    if t.send((chunk, permit)).is_err() {
                        tx = None;
                    }
                }
            }
            Ok::<_, Error>(digest.finish())
        });
        let (rec_tx, rec_rx) = mpsc::channel::<Decoded>(STREAM_BLOCKS);
        let buffers = self.buffers.clone();
        let decode = tokio::task::spawn_blocking(move || {
            let reader = ChunkReader {
                rx: chunk_rx,
                cur: bytes::Bytes::new(),
                _held: None,
            };
            // Records as stored bytes (no decode and re-encode of each event where the
            // segment's schema allows it), handed over a container block at a time (the
            // records borrowed from it: nothing is allocated per record).
            match raw_segment::stream_blocks_recycling(reader, buffers) {
                Err(e) => {
                    let _ = rec_tx.blocking_send(Decoded::Meta(Err(e.to_string())));
                }
                Ok((meta, blocks)) => {
                    if rec_tx.blocking_send(Decoded::Meta(Ok(meta))).is_err() {
                        return;
                    }
                    for b in blocks {
                        let stop = b.is_err();
                        let msg = Decoded::Records(b.map_err(|e| e.to_string()));
                        if rec_tx.blocking_send(msg).is_err() || stop {
                            return;
                        }
                    }
                }
            }
        });
        Ok(SegmentStream {
            rx: rec_rx,
            forward: AbortOnDrop(forward),
            decode,
        })
    }

    /// Feed every record of these partitions (all if empty) to the collector, segment by
    /// segment in seq order, each segment streamed (see [`Self::open_stream`]).
    ///
    /// Partitions are independent chains: with `workers` > 1 they are verified that many at a
    /// time, each into its own split of the collector (`Collector::split`), joined back in
    /// partition order, so the report is the one a sequential run makes. `false` if that
    /// cannot hold (a segment holds a record of another partition, see `Collector::join`):
    /// the caller then runs again with one worker, on a fresh collector.
    ///
    /// Segments should tile each partition, but two writers (or a repair) can leave segments
    /// that overlap. The first copy of each (partition, seq), in segment order, is the one
    /// verified; a later copy is compared with it: identical copies are one
    /// `duplicate_seq` warning per segment, a different copy is a `fork` finding at its seq.
    pub async fn stream_into(
        &self,
        partitions: &BTreeSet<u32>,
        c: &mut Collector,
        workers: usize,
    ) -> Result<bool, Error> {
        let segs = self.segments(partitions).await?;
        let total: u64 = segs
            .values()
            .flatten()
            .filter(|l| l.segment)
            .map(|l| l.key.len())
            .sum();
        c.set_total(total);
        let workers = workers.min(segs.len());
        if workers <= 1 || segs.keys().any(|p| *p < 0) {
            // Segments are read ahead of the verifier, in the order it takes them (across
            // partitions too), so their round trips, bodies and decoding overlap its work.
            let mut ahead =
                ReadAhead::new(self, segs.values().flatten().cloned().collect(), READ_AHEAD);
            for (p, listed) in &segs {
                c.set_stage(&format!("partition {p}"));
                self.verify_partition(*p, listed, &mut ahead, c).await?;
            }
            return Ok(true);
        }
        // The read-ahead is shared out between the partitions being read: bodies held are
        // at most `workers` × (depth + 1) × SEGMENT_BUFFER (48 MiB for 2 workers).
        let depth = (READ_AHEAD / workers).max(1);
        let jobs: Vec<(i32, Vec<Listed>, Collector)> = segs
            .into_iter()
            .map(|(p, listed)| (p, listed, c.split(p.unsigned_abs())))
            .collect();
        let mut done = futures::stream::iter(jobs.into_iter().map(|(p, listed, mut sub)| {
            let store = self.clone();
            async move {
                let mut task = AbortOnDrop(tokio::spawn(async move {
                    let mut ahead = ReadAhead::new(&store, listed.clone(), depth);
                    sub.set_stage(&format!("partition {p}"));
                    store
                        .verify_partition(p, &listed, &mut ahead, &mut sub)
                        .await
                        .map(|()| sub)
                }));
                (&mut task.0)
                    .await
                    .map_err(|e| Error::Archive(format!("partition verifier task failed: {e}")))?
            }
        }))
        .buffered(workers);
        while let Some(sub) = done.next().await {
            if !c.join(sub?) {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Feed the listed segments of partition `p` (from `ahead`, which hands them over in this
    /// order) to the collector.
    async fn verify_partition(
        &self,
        p: i32,
        listed: &[Listed],
        ahead: &mut ReadAhead,
        c: &mut Collector,
    ) -> Result<(), Error> {
        // First copies that a later segment may repeat: seq -> (record, its segment).
        let mut kept: BTreeMap<i64, (RawChained, Arc<str>)> = BTreeMap::new();
        for (i, l) in listed.iter().enumerate() {
            let k = &l.key;
            let fetched = ahead.next().await?;
            if !l.segment {
                c.add_finding(missing_segment(k));
                continue;
            }
            let mut findings = Vec::new();
            let manifest = judge_manifest(l, fetched.manifest.as_deref(), &mut findings);
            for f in findings.drain(..) {
                c.add_finding(f);
            }
            let Some(mut seg) = fetched.stream else {
                return Err(Error::Archive(format!(
                    "segment {} was not opened",
                    k.object_key()
                )));
            };
            let meta = match seg.rx.recv().await {
                Some(Decoded::Meta(Ok(m))) => Some(m),
                Some(Decoded::Meta(Err(e))) => {
                    c.add_finding(finding(
                        k.partition,
                        k.first_seq,
                        FindingKind::MalformedRecord,
                        None,
                        format!("segment {} cannot be read: {e}", k.object_key()),
                    ));
                    None
                }
                _ => None,
            };
            let mut check = meta.as_ref().map(SegmentMeta::events_check);
            // Segments are sorted by first seq: only copies at or after this segment's
            // first seq can be repeated from here on, and of this segment's records only
            // those at or after the next one's first seq.
            kept = kept.split_off(&k.first_seq);
            let keep_from = listed.get(i + 1).map_or(i64::MAX, |n| n.key.first_seq);
            let name: Arc<str> = Arc::from(k.object_key());
            let mut same: Option<(i64, i64, Arc<str>)> = None;
            let mut read_ok = meta.is_some();
            'segment: while let Some(msg) = seg.rx.recv().await {
                let block = match msg {
                    Decoded::Records(Ok(block)) => block,
                    Decoded::Records(Err(e)) => {
                        read_ok = false;
                        c.add_finding(finding(
                            k.partition,
                            k.first_seq,
                            FindingKind::MalformedRecord,
                            None,
                            format!("segment {} cannot be read: {e}", k.object_key()),
                        ));
                        break 'segment;
                    }
                    Decoded::Meta(_) => continue,
                };
                for ev in block.iter() {
                    if let Some(ch) = &mut check {
                        ch.observe_parts(ev.chain_partition, ev.seq, ev.prev_hash, ev.hash);
                    }
                    if let Some((first, first_in)) = kept.get(&ev.seq) {
                        if first.as_raw_ref() == ev {
                            same = Some(match same.take() {
                                Some((a, _, s)) => (a, ev.seq, s),
                                None => (ev.seq, ev.seq, first_in.clone()),
                            });
                        } else {
                            c.add_finding(finding(
                            ev.chain_partition,
                            ev.seq,
                            FindingKind::Fork,
                            Some(ev.event_id),
                            format!(
                                "segment {name} holds a different record at this seq than segment {first_in} (hash {} vs {}); the first copy is the one verified",
                                short_hex(ev.hash),
                                short_hex(&first.hash)
                            ),
                        ));
                        }
                        continue;
                    }
                    c.push_raw_ref(&ev);
                    if ev.seq >= keep_from {
                        kept.insert(ev.seq, (ev.to_owned_record(), name.clone()));
                    }
                }
                // Its records are taken: a later block of the run is decompressed into its
                // buffer (one the pool does not keep is freed).
                self.buffers.give(block.into_buffer());
            }
            let (sha, size) = seg.finish().await?;
            if let Some(m) = &manifest {
                if let Err(e) = verify_segment_digest_of(m, &sha, size) {
                    c.add_finding(finding(
                        k.partition,
                        k.first_seq,
                        FindingKind::SegmentReplaced,
                        None,
                        replaced(k, &e),
                    ));
                }
            }
            if let (Some(meta), Some(check), true) = (&meta, &check, read_ok) {
                for (kind, detail) in meta_findings(k, meta, check.finish()) {
                    c.add_finding(finding(k.partition, k.first_seq, kind, None, detail));
                }
            }
            c.sync_progress();
            if let Some((a, b, other)) = same {
                c.add_finding(finding(
                    p,
                    a,
                    FindingKind::DuplicateSeq,
                    None,
                    format!(
                        "segment {name} overlaps segment {other} on seq {a}..={b} with identical records (two writers?); the copies were compared and skipped"
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Where the event is: scans the segments (the archive has no index by event id).
    pub async fn locate(&self, id: &str, partition: Option<u32>) -> Result<Vec<(i32, i64)>, Error> {
        let parts: BTreeSet<u32> = partition.into_iter().collect();
        let segs = self.segments(&parts).await?;
        let mut out = Vec::new();
        for l in segs.values().flatten().filter(|l| l.segment) {
            let bytes = self.get(&l.key.object_key()).await?;
            let (_, events) = read_segment(&bytes).map_err(|e| {
                Error::Integrity(format!(
                    "segment {} cannot be read: {e}",
                    l.key.object_key()
                ))
            })?;
            out.extend(
                events
                    .iter()
                    .filter(|e| e.event.event_id == id)
                    .map(|e| (e.chain_partition, e.seq)),
            );
            if !out.is_empty() {
                break;
            }
        }
        Ok(out)
    }

    /// The records of `partition` with seq in `first ..= last`, from segments whose objects
    /// match their manifests.
    pub async fn range(
        &self,
        partition: u32,
        first: i64,
        last: i64,
    ) -> Result<Vec<ChainedEvent>, Error> {
        let segs = self.segments(&[partition].into_iter().collect()).await?;
        let mut out = Vec::new();
        let p = i32::try_from(partition).unwrap_or(i32::MAX);
        for l in segs.get(&p).into_iter().flatten() {
            if l.key.last_seq < first || l.key.first_seq > last {
                continue;
            }
            let mut findings = Vec::new();
            let events = self.read_listed(l, &mut findings).await?;
            if let Some(f) = findings
                .iter()
                .find(|f| f.severity == integrity::verify::Severity::Error)
            {
                return Err(Error::Integrity(format!(
                    "partition {} seq {}: {}; run `auditctl verify --source archive`",
                    f.partition, f.seq, f.detail
                )));
            }
            out.extend(
                events
                    .into_iter()
                    .flatten()
                    .filter(|e| e.seq >= first && e.seq <= last),
            );
        }
        // Overlapping segments: identical copies collapse; different ones are a fork.
        out.sort_by_key(|e| e.seq);
        let mut deduped: Vec<ChainedEvent> = Vec::with_capacity(out.len());
        for e in out {
            match deduped.last() {
                Some(prev) if prev.seq == e.seq && *prev == e => {}
                Some(prev) if prev.seq == e.seq => {
                    return Err(Error::Integrity(format!(
                        "partition {partition} seq {}: fork: two archive segments hold different records; run `auditctl verify --source archive`",
                        e.seq
                    )))
                }
                _ => deduped.push(e),
            }
        }
        Ok(deduped)
    }
}

/// What was read of a listed segment before its turn.
struct Fetched {
    /// The stored manifest (`None`: not listed).
    manifest: Option<bytes::Bytes>,
    /// The opened segment object (`None`: not listed).
    stream: Option<SegmentStream>,
}

impl ArchiveStore {
    /// Reads a listed segment's manifest and opens its object (see [`Self::open_stream`]).
    async fn fetch(self, l: Listed) -> Result<Fetched, Error> {
        if !l.segment {
            // A missing object is a finding; its manifest is not needed for it.
            return Ok(Fetched {
                manifest: None,
                stream: None,
            });
        }
        let manifest = self.manifest_bytes(&l).await?;
        let stream = self.open_stream(&l.key.object_key()).await?;
        Ok(Fetched {
            manifest,
            stream: Some(stream),
        })
    }
}

/// Listed segments fetched in order with up to [`READ_AHEAD`] of them opened ahead of the one
/// being verified, each in a task of its own (so it progresses while the verifier works).
/// Only a segment listed at most [`SEGMENT_BUFFER`] bytes is opened ahead: its body is then
/// read whole at once and never waits mid-body behind another segment; a larger one (or one
/// listed without a size) is opened at its turn and streamed as it is verified. Tasks still
/// running when this is dropped (the run stopped early) are aborted.
struct ReadAhead {
    store: ArchiveStore,
    /// Segments opened ahead of the one handed over (at most).
    depth: usize,
    todo: std::collections::VecDeque<Listed>,
    opened: std::collections::VecDeque<AbortOnDrop<Result<Fetched, Error>>>,
}

impl ReadAhead {
    fn new(store: &ArchiveStore, listed: Vec<Listed>, depth: usize) -> Self {
        Self {
            store: store.clone(),
            depth,
            todo: listed.into(),
            opened: std::collections::VecDeque::new(),
        }
    }

    /// The next listed segment, fetched; opens the ones after it that may be read ahead.
    async fn next(&mut self) -> Result<Fetched, Error> {
        if self.opened.is_empty() {
            self.open_next();
        }
        let Some(mut first) = self.opened.pop_front() else {
            return Err(Error::Archive("read past the last listed segment".into()));
        };
        while self.opened.len() < self.depth
            && self
                .todo
                .front()
                .is_some_and(|l| !l.segment || l.size.is_some_and(|n| n <= SEGMENT_BUFFER as u64))
        {
            self.open_next();
        }
        (&mut first.0)
            .await
            .map_err(|e| Error::Archive(format!("segment reader task failed: {e}")))?
    }

    fn open_next(&mut self) {
        if let Some(l) = self.todo.pop_front() {
            let task = tokio::spawn(self.store.clone().fetch(l));
            self.opened.push_back(AbortOnDrop(task));
        }
    }
}

/// A task aborted when its handle is dropped.
#[derive(Debug)]
pub(crate) struct AbortOnDrop<T>(pub(crate) tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Bytes of one segment's body read ahead of its decoder (see `ArchiveStore::open_stream`);
/// a segment up to this size may be opened before its turn.
const SEGMENT_BUFFER: usize = 8 * 1024 * 1024;
/// Segments opened ahead of the one being verified (their GETs, bodies and decoding overlap
/// its verification). Memory: at most this many plus one times [`SEGMENT_BUFFER`] of bodies
/// for one reader; partitions read at once share it out (see `ArchiveStore::stream_into`).
const READ_AHEAD: usize = 4;
/// Checkpoint objects read at once.
const CHECKPOINT_READS: usize = 16;
/// Decoded container blocks in flight to the verifier, per segment (the writer's blocks are
/// 256 KiB; one is refused past `raw_segment::MAX_BLOCK`).
const STREAM_BLOCKS: usize = 4;
/// Block buffers kept for reuse: as many as the segments read ahead hold at once (each
/// decoder runs up to `STREAM_BLOCKS` + 1 blocks ahead), ~0.4 MB each.
const BLOCK_BUFFERS: usize = (READ_AHEAD + 1) * (STREAM_BLOCKS + 2);
/// The largest block buffer kept: the sink's blocks (256 KiB of records) inflate into 384 or
/// 768 KiB; a block of another writer's up to `raw_segment::MAX_BLOCK` is freed after use, so
/// what the reuse keeps is at most ~30 × 4 MiB whatever the archive holds.
const KEPT_BUFFER_BYTES: usize = 4 * 1024 * 1024;

/// What the decoding task hands over: the segment's metadata first, then its records.
enum Decoded {
    Meta(Result<SegmentMeta, String>),
    /// A block of records as stored; an error ends the segment.
    Records(Result<RawBlock, String>),
}

/// A segment being streamed (see `ArchiveStore::open_stream`).
struct SegmentStream {
    rx: mpsc::Receiver<Decoded>,
    /// Reads and hashes the body; aborted if the segment is dropped unread (a run that
    /// stopped early does not go on downloading).
    forward: AbortOnDrop<Result<(String, u64), Error>>,
    decode: tokio::task::JoinHandle<()>,
}

impl SegmentStream {
    /// Wait for both tasks; the object's (SHA-256 hex, size), or why its body could not be
    /// read to the end.
    async fn finish(self) -> Result<(String, u64), Error> {
        let SegmentStream {
            rx,
            mut forward,
            decode,
        } = self;
        // Closing the receiver unblocks a decoder still sending (the caller stopped early).
        drop(rx);
        let digest = (&mut forward.0)
            .await
            .map_err(|e| Error::Archive(format!("segment reader task failed: {e}")))??;
        decode
            .await
            .map_err(|e| Error::Archive(format!("segment decoder task failed: {e}")))?;
        Ok(digest)
    }
}

/// A synchronous `Read` over the chunks the async side receives (for the Avro reader).
struct ChunkReader {
    rx: mpsc::UnboundedReceiver<(bytes::Bytes, OwnedSemaphorePermit)>,
    cur: bytes::Bytes,
    /// The buffer space `cur` holds, given back when the next chunk is taken.
    _held: Option<OwnedSemaphorePermit>,
}

impl std::io::Read for ChunkReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.cur.is_empty() {
            match self.rx.blocking_recv() {
                Some((b, permit)) => {
                    self.cur = b;
                    self._held = Some(permit);
                }
                // The body ended (or failed: the forwarding task reports that).
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.cur.len());
        buf[..n].copy_from_slice(&self.cur[..n]);
        self.cur = self.cur.slice(n..);
        Ok(n)
    }
}

/// The manifest of a listed segment from its stored bytes (`None`: not listed), with findings
/// when it is missing, unreadable, or describes another segment.
fn judge_manifest(l: &Listed, raw: Option<&[u8]>, findings: &mut Vec<Finding>) -> Option<Manifest> {
    let k = &l.key;
    let (p, first) = (k.partition, k.first_seq);
    let mut f = |kind, detail: String| findings.push(finding(p, first, kind, None, detail));
    let Some(raw) = raw.filter(|_| l.manifest) else {
        f(
            FindingKind::SegmentWithoutManifest,
            format!(
                "segment {} has no manifest: its digest cannot be checked (its records are still verified)",
                k.object_key()
            ),
        );
        return None;
    };
    match Manifest::from_json(raw) {
        Ok(m) => {
            if m.object_key != k.object_key()
                || m.partition != k.partition
                || m.first_seq != k.first_seq
                || m.last_seq != k.last_seq
            {
                f(
                    FindingKind::MalformedManifest,
                    format!(
                        "manifest {} describes {} (partition {} seq {}..={})",
                        k.manifest_key(),
                        m.object_key,
                        m.partition,
                        m.first_seq,
                        m.last_seq
                    ),
                );
            }
            Some(m)
        }
        Err(e) => {
            f(
                FindingKind::MalformedManifest,
                format!("manifest {} cannot be read: {e}", k.manifest_key()),
            );
            None
        }
    }
}

fn missing_segment(k: &SegmentKey) -> Finding {
    finding(
        k.partition,
        k.first_seq,
        FindingKind::MissingSeq,
        None,
        format!(
            "segment object {} is missing (its manifest covers seq {}..={})",
            k.object_key(),
            k.first_seq,
            k.last_seq
        ),
    )
}

fn replaced(k: &SegmentKey, e: &segment::SegmentError) -> String {
    format!(
        "segment object {} replaced or altered after it was written: {e}",
        k.object_key()
    )
}

/// Findings about a segment's metadata: it must name the segment its object key says, and
/// agree with its records (`records`: the outcome of `SegmentMeta::check_events`).
fn meta_findings(
    k: &SegmentKey,
    meta: &SegmentMeta,
    records: Result<(), segment::SegmentError>,
) -> Vec<(FindingKind, String)> {
    let mut out = Vec::new();
    match meta.key() {
        Ok(mk) if mk == *k => {}
        Ok(mk) => out.push((
            FindingKind::SegmentReplaced,
            format!(
                "segment object {} is not what was written there: its metadata says it is {}",
                k.object_key(),
                mk.object_key()
            ),
        )),
        Err(e) => out.push((
            FindingKind::SegmentReplaced,
            format!("segment {} metadata: {e}", k.object_key()),
        )),
    }
    if let Err(e) = records {
        out.push((
            FindingKind::SegmentReplaced,
            format!(
                "segment {} records disagree with its metadata: {e}",
                k.object_key()
            ),
        ));
    }
    out
}

fn short_hex(h: &[u8]) -> String {
    hex::encode(&h[..h.len().min(8)])
}

/// The partition of a `checkpoints/chain=<p>/….json` key.
fn checkpoint_partition(key: &str) -> Option<i32> {
    let rest = key.strip_prefix(CHECKPOINTS_DIR)?.strip_prefix("/chain=")?;
    let (p, file) = rest.split_once('/')?;
    if !file.ends_with(segment::CHECKPOINT_SUFFIX) || file.contains('/') {
        return None;
    }
    p.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::memory::InMemory;
    use object_store::PutPayload;

    /// Read-ahead hands segments over in listing order (across partitions, missing objects
    /// included), each with its own manifest, and never opens a segment listed larger than the
    /// per-segment buffer before its turn.
    #[tokio::test]
    async fn read_ahead_keeps_listing_order_and_opens_large_segments_only_at_their_turn() {
        let store = Arc::new(InMemory::new());
        let mut listed = Vec::new();
        for (p, first, present, size) in [
            (0, 1, true, 10),
            (0, 11, false, 0),
            (0, 21, true, 10),
            (1, 1, true, SEGMENT_BUFFER as u64 + 1),
            (1, 11, true, 10),
            (1, 21, true, 10),
        ] {
            let key = SegmentKey {
                partition: p,
                date: "2024-06-01".into(),
                first_seq: first,
                last_seq: first + 9,
            };
            let manifest = format!("manifest of {}", key.object_key());
            store
                .put(
                    &ObjPath::from(key.manifest_key()),
                    PutPayload::from(manifest),
                )
                .await
                .expect("put manifest");
            if present {
                store
                    .put(
                        &ObjPath::from(key.object_key()),
                        PutPayload::from("not avro"),
                    )
                    .await
                    .expect("put segment");
            }
            listed.push(Listed {
                key,
                segment: present,
                manifest: true,
                size: present.then_some(size),
            });
        }
        let archive = ArchiveStore::from_store(store, "", "memory");
        let mut ahead = ReadAhead::new(&archive, listed.clone(), READ_AHEAD);
        for (i, l) in listed.iter().enumerate() {
            let f = ahead.next().await.expect("fetched");
            if l.segment {
                let want = format!("manifest of {}", l.key.object_key());
                assert_eq!(f.manifest.as_deref(), Some(want.as_bytes()), "segment {i}");
                let seg = f.stream.expect("opened");
                // Not Avro: the decoder says so, and the object is still hashed whole.
                let (_, size) = seg.finish().await.expect("read to the end");
                assert_eq!(size, 8);
            } else {
                assert!(f.manifest.is_none() && f.stream.is_none(), "segment {i}");
            }
            // The large segment (index 3) waits until everything before it was handed over.
            let large_opened = ahead.todo.len() < listed.len() - 3;
            assert!(i >= 2 || !large_opened, "large segment opened ahead at {i}");
            assert!(ahead.opened.len() <= READ_AHEAD);
        }
        assert!(ahead.next().await.is_err(), "nothing after the last");
    }

    #[test]
    fn checkpoint_keys_name_their_partition() {
        let k = segment::checkpoint_key(7, 42, "k1");
        assert_eq!(checkpoint_partition(&k), Some(7));
        assert_eq!(checkpoint_partition("checkpoints/chain=7/x.txt"), None);
        assert_eq!(checkpoint_partition("chain=7/date=2024-01-01/x.json"), None);
    }
}
