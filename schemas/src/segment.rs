//! The archive's segment format, shared by the writer (`sink-archive`) and the verifier
//! (`auditctl`), so both use one definition. Pure: bytes in, bytes out, no I/O.
//!
//! # Layout (relative to the archive root; a deployment may put everything under a prefix)
//!
//! ```text
//! chain=<p>/date=<YYYY-MM-DD>/<first_seq:020>-<last_seq:020>.avro            segment
//! chain=<p>/date=<YYYY-MM-DD>/<first_seq:020>-<last_seq:020>.manifest.json   its manifest
//! checkpoints/chain=<p>/<seq:020>-<key_id>.json                              signed checkpoint
//! checkpoints/chain=<p>/<seq:020>-<key_id>@t<time_us>.json                   a heartbeat of it
//! ```
//!
//! - `<p>` is the chain partition in plain decimal; `date` is the UTC day of the *first* event's
//!   `event_time_us` (from the data, never the wall clock), and a segment never spans two days.
//! - Seqs are zero-padded to 20 digits, so within a directory lexicographic order is seq order,
//!   and a segment's range can be read from its name without opening it.
//! - A segment holds the `ChainedEvent` records `first_seq..=last_seq` of one partition,
//!   contiguous, as an Avro object container file. Codec ([`BlockCodec`]): `deflate` by default,
//!   which every Avro implementation must support (an archive kept for years should not need
//!   optional codecs to be read), or `zstandard` where the writer is set to it (1% larger for a
//!   third of the sink's compression CPU; readers must support that optional codec). Readers
//!   here take both. The
//!   writer schema in the header is the compiled-in `chained_event.vN.avsc` text.
//! - The container's user metadata (`audit.segment.*`, UTF-8 text values) repeats the range and
//!   the chain ends, so a segment alone (plus the public key set and its checkpoints) is enough
//!   to verify its range offline.
//! - Segments are deterministic: the header metadata is written sorted and the sync marker is
//!   derived from the segment's identity, so re-writing the same records yields the same bytes
//!   (what makes a write-once retry after a crash recognisable as "already done").

use std::collections::HashMap;
use std::fmt;
use std::io::Read;

use apache_avro::Reader;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use thiserror::Error;

use crate::avro::{self, RecordKind};
use crate::chained_row::CanonicalDatum;
use crate::event::ChainedEvent;

/// Format id written into every segment (`audit.segment.format`).
pub const SEGMENT_FORMAT: &str = "audit-archive-segment/v1";
/// Format id written into every manifest (`format`).
pub const MANIFEST_FORMAT: &str = "audit-archive-manifest/v1";

pub const SEGMENT_SUFFIX: &str = ".avro";
pub const MANIFEST_SUFFIX: &str = ".manifest.json";
pub const CHECKPOINT_SUFFIX: &str = ".json";
/// Top-level folder of stored checkpoints.
pub const CHECKPOINTS_DIR: &str = "checkpoints";
/// Width of zero-padded seqs in object names (`i64::MAX` has 19 digits).
pub const SEQ_WIDTH: usize = 20;

/// Container metadata keys (values are UTF-8 text: decimal numbers, lowercase hex hashes).
pub const META_FORMAT: &str = "audit.segment.format";
pub const META_PARTITION: &str = "audit.segment.partition";
pub const META_DATE: &str = "audit.segment.date";
pub const META_FIRST_SEQ: &str = "audit.segment.first_seq";
pub const META_LAST_SEQ: &str = "audit.segment.last_seq";
pub const META_COUNT: &str = "audit.segment.count";
pub const META_FIRST_PREV_HASH: &str = "audit.segment.first_prev_hash";
pub const META_LAST_HASH: &str = "audit.segment.last_hash";
pub const META_CANONICAL_VERSION: &str = "audit.segment.canonical_version";
pub const META_CHAINED_SCHEMA_VERSION: &str = "audit.segment.chained_schema_version";
pub const META_CHAINED_TOPIC: &str = "audit.segment.chained_topic";
pub const META_FIRST_OFFSET: &str = "audit.segment.first_offset";
pub const META_LAST_OFFSET: &str = "audit.segment.last_offset";
pub const META_WRITER: &str = "audit.segment.writer";

/// Uncompressed bytes per container block before it is compressed and written.
const BLOCK_SIZE: usize = 256 * 1024;
/// Domain separator of the derived sync marker.
const MARKER_DOMAIN: &[u8] = b"audit-archive-segment-marker/v1";

/// What went wrong with a segment, a manifest or an object name.
#[derive(Debug, Error)]
pub enum SegmentError {
    /// The records handed to the writer do not form one segment.
    #[error("invalid segment: {0}")]
    Invalid(String),
    /// A block could not be compressed (not expected: see `compress_block`).
    #[error("compressing a segment block ({codec}): {detail}")]
    Compress { codec: &'static str, detail: String },
    #[error("decoding segment: {source}")]
    Decode {
        #[source]
        source: Box<apache_avro::Error>,
    },
    #[error("segment metadata {key}: {reason}")]
    Metadata { key: &'static str, reason: String },
    #[error(transparent)]
    Schema(#[from] crate::SchemaError),
    #[error("manifest JSON: {0}")]
    ManifestJson(String),
    /// The object's bytes do not match its manifest.
    #[error("digest mismatch for {key}: manifest says {expected}, object has {actual}")]
    DigestMismatch {
        key: String,
        expected: String,
        actual: String,
    },
}

// ---- object names ------------------------------------------------------------------------------

/// The identity of a segment: everything its object name encodes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SegmentKey {
    pub partition: i32,
    /// `YYYY-MM-DD` (UTC) of the first event's `event_time_us`.
    pub date: String,
    pub first_seq: i64,
    pub last_seq: i64,
}

/// Which object of a segment a name denotes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ObjectKind {
    Segment,
    Manifest,
}

impl SegmentKey {
    pub fn new(
        partition: i32,
        date: &str,
        first_seq: i64,
        last_seq: i64,
    ) -> Result<Self, SegmentError> {
        if partition < 0 {
            return Err(SegmentError::Invalid(format!(
                "negative partition {partition}"
            )));
        }
        if first_seq < 1 || last_seq < first_seq {
            return Err(SegmentError::Invalid(format!(
                "bad seq range {first_seq}..={last_seq} (seqs start at 1)"
            )));
        }
        if !is_date(date) {
            return Err(SegmentError::Invalid(format!("bad date {date:?}")));
        }
        Ok(SegmentKey {
            partition,
            date: date.to_owned(),
            first_seq,
            last_seq,
        })
    }

    /// Number of seqs the name covers.
    pub fn len(&self) -> u64 {
        (self.last_seq - self.first_seq) as u64 + 1
    }

    pub fn is_empty(&self) -> bool {
        false
    }

    fn stem(&self) -> String {
        format!(
            "{}date={}/{:0w$}-{:0w$}",
            partition_prefix(self.partition),
            self.date,
            self.first_seq,
            self.last_seq,
            w = SEQ_WIDTH
        )
    }

    /// `chain=<p>/date=<day>/<first>-<last>.avro`
    pub fn object_key(&self) -> String {
        format!("{}{SEGMENT_SUFFIX}", self.stem())
    }

    /// `chain=<p>/date=<day>/<first>-<last>.manifest.json`
    pub fn manifest_key(&self) -> String {
        format!("{}{MANIFEST_SUFFIX}", self.stem())
    }
}

impl fmt::Display for SegmentKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.object_key())
    }
}

/// `chain=<p>/`: the folder of one partition's segments (the trailing slash keeps `chain=1/`
/// from matching `chain=10/` in a prefix listing).
pub fn partition_prefix(partition: i32) -> String {
    format!("chain={partition}/")
}

/// Parses a segment or manifest name relative to the archive root. Anything else (checkpoints,
/// foreign objects, non-canonical spellings such as `chain=01`) is `None`.
pub fn parse_key(key: &str) -> Option<(SegmentKey, ObjectKind)> {
    let mut parts = key.split('/');
    let (chain, date, file) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let partition = parse_canonical_i32(chain.strip_prefix("chain=")?)?;
    let date = date.strip_prefix("date=")?;
    let (stem, kind) = if let Some(s) = file.strip_suffix(SEGMENT_SUFFIX) {
        (s, ObjectKind::Segment)
    } else if let Some(s) = file.strip_suffix(MANIFEST_SUFFIX) {
        (s, ObjectKind::Manifest)
    } else {
        return None;
    };
    let (first, last) = stem.split_once('-')?;
    let first_seq = parse_padded_seq(first)?;
    let last_seq = parse_padded_seq(last)?;
    SegmentKey::new(partition, date, first_seq, last_seq)
        .ok()
        .map(|k| (k, kind))
}

fn parse_canonical_i32(s: &str) -> Option<i32> {
    let v: i32 = s.parse().ok()?;
    (v >= 0 && v.to_string() == s).then_some(v)
}

fn parse_padded_seq(s: &str) -> Option<i64> {
    if s.len() != SEQ_WIDTH || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

fn is_date(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 10
        && b[4] == b'-'
        && b[7] == b'-'
        && b.iter()
            .enumerate()
            .all(|(i, c)| i == 4 || i == 7 || c.is_ascii_digit())
}

/// The UTC day (`YYYY-MM-DD`) of a timestamp in microseconds. Total: times outside years
/// 0000..=9999 clamp to the first/last day, so a bad timestamp can never stop archiving.
pub fn day_of(event_time_us: i64) -> String {
    const MIN: &str = "0000-01-01";
    const MAX: &str = "9999-12-31";
    let days = event_time_us.div_euclid(86_400_000_000);
    // Julian day number of 1970-01-01.
    let Some(jd) = days
        .checked_add(2_440_588)
        .and_then(|d| i32::try_from(d).ok())
    else {
        return if days < 0 { MIN } else { MAX }.to_owned();
    };
    match time::Date::from_julian_day(jd) {
        Ok(d) if d.year() < 0 => MIN.to_owned(),
        Ok(d) if d.year() > 9999 => MAX.to_owned(),
        Ok(d) => format!("{:04}-{:02}-{:02}", d.year(), u8::from(d.month()), d.day()),
        Err(_) => if days < 0 { MIN } else { MAX }.to_owned(),
    }
}

/// `checkpoints/chain=<p>/<seq:020>-<key_id>.json`. Bytes of `key_id` outside `[A-Za-z0-9.-]`
/// (including `_` itself) are written as `_XX` (uppercase hex), so any key id gives one path
/// segment made of characters every object store keeps as they are (`%` would be re-encoded).
pub fn checkpoint_key(partition: i32, seq: i64, key_id: &str) -> String {
    let mut id = String::with_capacity(key_id.len());
    for b in key_id.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-') {
            id.push(char::from(b));
        } else {
            id.push_str(&format!("_{b:02X}"));
        }
    }
    if id.is_empty() {
        id.push('_');
    }
    format!(
        "{}{seq:0w$}-{id}{CHECKPOINT_SUFFIX}",
        checkpoint_prefix(partition),
        w = SEQ_WIDTH
    )
}

/// `checkpoints/chain=<p>/<seq:020>-<key_id>@t<time_us>.json`: a later checkpoint over the same
/// seq by the same key (a heartbeat, re-signed with a fresh time) next to the first one, which
/// keeps [`checkpoint_key`]. `@` never comes out of the key id escaping, so the name is
/// unambiguous; every name stays write-once. (Not `~`: object_store percent-encodes it, and a
/// listed `%7E` is encoded again on the next request, so the object is never found.)
pub fn checkpoint_heartbeat_key(partition: i32, seq: i64, key_id: &str, time_us: i64) -> String {
    let base = checkpoint_key(partition, seq, key_id);
    let stem = base.strip_suffix(CHECKPOINT_SUFFIX).unwrap_or(&base);
    format!("{stem}@t{time_us}{CHECKPOINT_SUFFIX}")
}

/// `checkpoints/chain=<p>/`
pub fn checkpoint_prefix(partition: i32) -> String {
    format!("{CHECKPOINTS_DIR}/chain={partition}/")
}

/// Top folder of the write-once anchor (sink-archive `--anchor-url`, auditctl `verify --anchor`).
pub const ANCHOR_DIR: &str = "anchor";

/// `anchor/<chain id>/`, the chain id escaped like a key id in [`checkpoint_key`].
pub fn anchor_chain_prefix(chain_id: &str) -> String {
    format!("{ANCHOR_DIR}/{}/", escape_name(chain_id))
}

/// `anchor/<chain id>/partition=<p>/<seq:020>-<key_id>@t<time_us>.json`: one name per signed
/// checkpoint (heartbeats included: the time is part of the name), so each is written once.
pub fn anchor_key(chain_id: &str, partition: i32, seq: i64, key_id: &str, time_us: i64) -> String {
    let hb = checkpoint_heartbeat_key(partition, seq, key_id, time_us);
    let file = hb
        .strip_prefix(&checkpoint_prefix(partition))
        .unwrap_or(&hb);
    format!(
        "{}partition={partition}/{file}",
        anchor_chain_prefix(chain_id)
    )
}

fn escape_name(s: &str) -> String {
    let mut id = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-') {
            id.push(char::from(b));
        } else {
            id.push_str(&format!("_{b:02X}"));
        }
    }
    if id.is_empty() {
        id.push('_');
    }
    id
}

// ---- metadata ----------------------------------------------------------------------------------

/// What a segment says about itself (its container metadata).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentMeta {
    pub format: String,
    pub partition: i32,
    pub date: String,
    pub first_seq: i64,
    pub last_seq: i64,
    pub count: u64,
    /// `prev_hash` of the first record (links the segment to its predecessor).
    pub first_prev_hash: Vec<u8>,
    /// `hash` of the last record.
    pub last_hash: Vec<u8>,
    pub canonical_version: i32,
    /// Catalog version of the `ChainedEvent` schema the records are written with.
    pub chained_schema_version: i32,
    /// Where the records were read (Kafka topic and offset range of `audit.chained`).
    pub chained_topic: String,
    pub first_offset: i64,
    pub last_offset: i64,
    /// Who wrote it, e.g. `sink-archive/0.1.0`.
    pub writer: String,
}

impl SegmentMeta {
    /// Metadata for `events` (one partition, contiguous seqs, one day, one canonical version)
    /// read from `chained_topic` at Kafka offsets `first_offset..=last_offset`.
    pub fn for_events(
        events: &[ChainedEvent],
        chained_topic: &str,
        first_offset: i64,
        last_offset: i64,
        writer: &str,
    ) -> Result<Self, SegmentError> {
        let (Some(first), Some(last)) = (events.first(), events.last()) else {
            return Err(SegmentError::Invalid("no records".into()));
        };
        let date = day_of(first.event.event_time_us);
        for pair in events.windows(2) {
            let (a, b) = (&pair[0], &pair[1]);
            if b.seq != a.seq.saturating_add(1) {
                return Err(SegmentError::Invalid(format!(
                    "seqs not contiguous: {} then {}",
                    a.seq, b.seq
                )));
            }
        }
        for e in events {
            if e.chain_partition != first.chain_partition {
                return Err(SegmentError::Invalid(format!(
                    "records of partitions {} and {}",
                    first.chain_partition, e.chain_partition
                )));
            }
            if e.canonical_version != first.canonical_version {
                return Err(SegmentError::Invalid(format!(
                    "canonical versions {} and {}",
                    first.canonical_version, e.canonical_version
                )));
            }
            let d = day_of(e.event.event_time_us);
            if d != date {
                return Err(SegmentError::Invalid(format!("days {date} and {d}")));
            }
        }
        SegmentMeta::for_ends(
            Ends {
                partition: first.chain_partition,
                date,
                first_seq: first.seq,
                last_seq: last.seq,
                count: events.len() as u64,
                first_prev_hash: first.prev_hash.clone(),
                last_hash: last.hash.clone(),
                canonical_version: first.canonical_version,
            },
            chained_topic,
            first_offset,
            last_offset,
            writer,
        )
    }

    /// The metadata of a segment whose records (already checked to be one segment) have these
    /// ends.
    fn for_ends(
        ends: Ends,
        chained_topic: &str,
        first_offset: i64,
        last_offset: i64,
        writer: &str,
    ) -> Result<Self, SegmentError> {
        // Validates partition and range.
        SegmentKey::new(ends.partition, &ends.date, ends.first_seq, ends.last_seq)?;
        Ok(SegmentMeta {
            format: SEGMENT_FORMAT.to_owned(),
            partition: ends.partition,
            date: ends.date,
            first_seq: ends.first_seq,
            last_seq: ends.last_seq,
            count: ends.count,
            first_prev_hash: ends.first_prev_hash,
            last_hash: ends.last_hash,
            canonical_version: ends.canonical_version,
            chained_schema_version: avro::current_schema(RecordKind::ChainedEvent)?.version,
            chained_topic: chained_topic.to_owned(),
            first_offset,
            last_offset,
            writer: writer.to_owned(),
        })
    }

    pub fn key(&self) -> Result<SegmentKey, SegmentError> {
        SegmentKey::new(self.partition, &self.date, self.first_seq, self.last_seq)
    }

    /// The metadata entries, sorted by key.
    pub fn to_entries(&self) -> Vec<(&'static str, String)> {
        let mut v = vec![
            (META_CANONICAL_VERSION, self.canonical_version.to_string()),
            (
                META_CHAINED_SCHEMA_VERSION,
                self.chained_schema_version.to_string(),
            ),
            (META_CHAINED_TOPIC, self.chained_topic.clone()),
            (META_COUNT, self.count.to_string()),
            (META_DATE, self.date.clone()),
            (META_FIRST_OFFSET, self.first_offset.to_string()),
            (META_FIRST_PREV_HASH, hex::encode(&self.first_prev_hash)),
            (META_FIRST_SEQ, self.first_seq.to_string()),
            (META_FORMAT, self.format.clone()),
            (META_LAST_HASH, hex::encode(&self.last_hash)),
            (META_LAST_OFFSET, self.last_offset.to_string()),
            (META_LAST_SEQ, self.last_seq.to_string()),
            (META_PARTITION, self.partition.to_string()),
            (META_WRITER, self.writer.clone()),
        ];
        v.sort_by(|a, b| a.0.cmp(b.0));
        v
    }

    /// Reads the metadata back from a container's user metadata.
    pub fn from_entries(meta: &HashMap<String, Vec<u8>>) -> Result<Self, SegmentError> {
        fn text<'a>(
            m: &'a HashMap<String, Vec<u8>>,
            key: &'static str,
        ) -> Result<&'a str, SegmentError> {
            let v = m.get(key).ok_or(SegmentError::Metadata {
                key,
                reason: "missing".into(),
            })?;
            std::str::from_utf8(v).map_err(|_| SegmentError::Metadata {
                key,
                reason: "not UTF-8".into(),
            })
        }
        fn num<T: std::str::FromStr>(
            m: &HashMap<String, Vec<u8>>,
            key: &'static str,
        ) -> Result<T, SegmentError> {
            let t = text(m, key)?;
            t.parse().map_err(|_| SegmentError::Metadata {
                key,
                reason: format!("not a number: {t:?}"),
            })
        }
        fn hash(m: &HashMap<String, Vec<u8>>, key: &'static str) -> Result<Vec<u8>, SegmentError> {
            let t = text(m, key)?;
            hex::decode(t).map_err(|_| SegmentError::Metadata {
                key,
                reason: format!("not hex: {t:?}"),
            })
        }
        Ok(SegmentMeta {
            format: text(meta, META_FORMAT)?.to_owned(),
            partition: num(meta, META_PARTITION)?,
            date: text(meta, META_DATE)?.to_owned(),
            first_seq: num(meta, META_FIRST_SEQ)?,
            last_seq: num(meta, META_LAST_SEQ)?,
            count: num(meta, META_COUNT)?,
            first_prev_hash: hash(meta, META_FIRST_PREV_HASH)?,
            last_hash: hash(meta, META_LAST_HASH)?,
            canonical_version: num(meta, META_CANONICAL_VERSION)?,
            chained_schema_version: num(meta, META_CHAINED_SCHEMA_VERSION)?,
            chained_topic: text(meta, META_CHAINED_TOPIC)?.to_owned(),
            first_offset: num(meta, META_FIRST_OFFSET)?,
            last_offset: num(meta, META_LAST_OFFSET)?,
            writer: text(meta, META_WRITER)?.to_owned(),
        })
    }

    /// Checks that `events` are what the metadata claims (count, range, chain ends, partition).
    /// The verifier reports a mismatch; the writer never produces one.
    pub fn check_events(&self, events: &[ChainedEvent]) -> Result<(), SegmentError> {
        let mut c = self.events_check();
        for e in events {
            c.observe(e);
        }
        c.finish()
    }

    /// [`Self::check_events`] one record at a time, for a segment read as a stream.
    pub fn events_check(&self) -> EventsCheck {
        EventsCheck {
            meta: self.clone(),
            count: 0,
            first: None,
            last_seq: 0,
            last_hash: Vec::new(),
            other_partition: None,
        }
    }
}

/// Incremental [`SegmentMeta::check_events`]: memory is one hash, not the segment.
#[derive(Debug, Clone)]
pub struct EventsCheck {
    meta: SegmentMeta,
    count: u64,
    /// (seq, prev_hash) of the first record.
    first: Option<(i64, Vec<u8>)>,
    last_seq: i64,
    last_hash: Vec<u8>,
    other_partition: Option<i32>,
}

impl EventsCheck {
    pub fn observe(&mut self, e: &ChainedEvent) {
        self.observe_parts(e.chain_partition, e.seq, &e.prev_hash, &e.hash);
    }

    /// [`Self::observe`] of a record's chain fields (e.g. a [`crate::raw_segment::RawChained`]).
    pub fn observe_parts(&mut self, partition: i32, seq: i64, prev_hash: &[u8], hash: &[u8]) {
        self.count += 1;
        if self.first.is_none() {
            self.first = Some((seq, prev_hash.to_vec()));
        }
        self.last_seq = seq;
        self.last_hash.clear();
        self.last_hash.extend_from_slice(hash);
        if partition != self.meta.partition && self.other_partition.is_none() {
            self.other_partition = Some(partition);
        }
    }

    pub fn finish(&self) -> Result<(), SegmentError> {
        let m = &self.meta;
        let bad = |what: String| Err(SegmentError::Invalid(what));
        if self.count != m.count {
            return bad(format!(
                "metadata says {} records, found {}",
                m.count, self.count
            ));
        }
        let Some((first_seq, first_prev)) = &self.first else {
            return bad("no records".into());
        };
        if *first_seq != m.first_seq || self.last_seq != m.last_seq {
            return bad(format!(
                "metadata says seqs {}..={}, records have {}..={}",
                m.first_seq, m.last_seq, first_seq, self.last_seq
            ));
        }
        if *first_prev != m.first_prev_hash || self.last_hash != m.last_hash {
            return bad("chain ends differ from the metadata".into());
        }
        if let Some(p) = self.other_partition {
            return bad(format!(
                "record of partition {p} in segment of {}",
                m.partition
            ));
        }
        Ok(())
    }
}

// ---- container write / read -------------------------------------------------------------------

/// The sync marker of a segment: derived from its identity, so equal segments are equal bytes.
fn sync_marker(meta: &SegmentMeta) -> [u8; 16] {
    let mut h = Sha256::new();
    h.update(MARKER_DOMAIN);
    h.update(meta.partition.to_be_bytes());
    h.update(meta.first_seq.to_be_bytes());
    h.update(meta.last_seq.to_be_bytes());
    h.update(&meta.last_hash);
    let d = h.finalize();
    let mut m = [0u8; 16];
    m.copy_from_slice(&d[..16]);
    m
}

fn put_long(out: &mut Vec<u8>, v: i64) {
    let mut z = ((v << 1) ^ (v >> 63)) as u64;
    loop {
        let b = (z & 0x7f) as u8;
        z >>= 7;
        if z == 0 {
            out.push(b);
            break;
        }
        out.push(b | 0x80);
    }
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    put_long(out, b.len() as i64);
    out.extend_from_slice(b);
}

/// The container header (magic, metadata map written in sorted key order, sync marker).
/// Written here rather than by `apache_avro::Writer`, whose metadata map has a random order.
fn header(avsc: &str, codec: BlockCodec, entries: &[(&str, String)], marker: &[u8; 16]) -> Vec<u8> {
    let mut all: Vec<(&str, &[u8])> = vec![
        ("avro.codec", codec.avro_name().as_bytes()),
        ("avro.schema", avsc.as_bytes()),
    ];
    all.extend(entries.iter().map(|(k, v)| (*k, v.as_bytes())));
    all.sort_by(|a, b| a.0.cmp(b.0));
    let mut out = Vec::with_capacity(avsc.len() + 1024);
    out.extend_from_slice(b"Obj\x01");
    put_long(&mut out, all.len() as i64);
    for (k, v) in all {
        put_bytes(&mut out, k.as_bytes());
        put_bytes(&mut out, v);
    }
    put_long(&mut out, 0);
    out.extend_from_slice(marker);
    out
}

/// Writes `events` (which `meta` describes, see [`SegmentMeta::for_events`]) as an Avro object
/// container with the default codec: what [`SegmentBuilder::new`] writes for them, byte for
/// byte. Deterministic: the same metadata and records give the same bytes.
pub fn write_segment(meta: &SegmentMeta, events: &[ChainedEvent]) -> Result<Vec<u8>, SegmentError> {
    write_segment_with(meta, events, BlockCodec::default())
}

/// [`write_segment`] with `codec`: what [`SegmentBuilder::with_codec`] writes.
pub fn write_segment_with(
    meta: &SegmentMeta,
    events: &[ChainedEvent],
    codec: BlockCodec,
) -> Result<Vec<u8>, SegmentError> {
    write_segment_with_block_size(meta, events, BLOCK_SIZE, codec)
}

fn write_segment_with_block_size(
    meta: &SegmentMeta,
    events: &[ChainedEvent],
    block_size: usize,
    codec: BlockCodec,
) -> Result<Vec<u8>, SegmentError> {
    meta.check_events(events)?;
    let entry = avro::current_schema(RecordKind::ChainedEvent)?;
    if meta.chained_schema_version != entry.version {
        return Err(SegmentError::Invalid(format!(
            "segments are written in the current ChainedEvent schema (v{}), not v{}",
            entry.version, meta.chained_schema_version
        )));
    }
    let marker = sync_marker(meta);
    let mut out = header(entry.avsc, codec, &meta.to_entries(), &marker);
    // Records as given (tests write odd segments through here too), blocks cut as
    // `SegmentBuilder` cuts them.
    let mut raw = Vec::new();
    let mut count = 0;
    for (i, e) in events.iter().enumerate() {
        crate::framing::chained_datum_into(e, &mut raw)?;
        count += 1;
        if raw.len() >= block_size || i + 1 == events.len() {
            compress_block(&mut raw, codec)?;
            put_block(&mut out, count, &raw, &marker);
            raw.clear();
            count = 0;
        }
    }
    Ok(out)
}

/// Appends a container block: its record count, its compressed size and bytes, the marker.
fn put_block(out: &mut Vec<u8>, count: u64, compressed: &[u8], marker: &[u8; 16]) {
    put_long(out, count as i64);
    put_long(out, compressed.len() as i64);
    out.extend_from_slice(compressed);
    out.extend_from_slice(marker);
}

/// The ends of a run of records that form one segment.
#[derive(Debug, Clone)]
/// What appending a record needs of it besides its bytes.
struct Link<'r> {
    partition: i32,
    seq: i64,
    event_time_us: i64,
    canonical_version: i32,
    prev_hash: &'r [u8],
    hash: &'r [u8],
}

struct Ends {
    partition: i32,
    date: String,
    first_seq: i64,
    last_seq: i64,
    count: u64,
    first_prev_hash: Vec<u8>,
    last_hash: Vec<u8>,
    canonical_version: i32,
}

/// A segment built one record at a time, for a writer that keeps its open segment in memory
/// (the archive sink holds up to `--segment-max-events` records per partition). Each record
/// is encoded as it arrives and each container block is compressed as soon as it fills, so an
/// open segment costs its compressed bytes plus one block, not its decoded records.
///
/// Its output is checked against apache-avro's own container writer (tests below): the same
/// header and sync marker, the same blocks (a block ends after the record that takes it to
/// [`BLOCK_SIZE`] bytes, as apache-avro's writer flushes) holding the same datum bytes
/// ([`crate::framing::chained_datum_into`]) once decompressed; only the compressed streams
/// differ (zlib-rs at [`DEFLATE_LEVEL`], zstd at [`ZSTD_LEVEL`]). And it is deterministic,
/// whichever blocks were compressed elsewhere and in which order, so a retry after a crash, or
/// another instance, still finds "identical bytes".
///
/// Compression can run elsewhere (a blocking thread): [`Self::take_full_block`] hands out a
/// full block and reserves its place, [`Self::put_block`] puts it back compressed.
#[derive(Default)]
pub struct SegmentBuilder {
    ends: Option<Ends>,
    /// Records of the block being filled, encoded, and how many.
    raw: Vec<u8>,
    raw_count: u64,
    /// Closed blocks in order; `None`: handed out by `take_full_block`, not yet put back.
    blocks: Vec<Option<CompressedBlock>>,
    compressed_len: usize,
    block_size: usize,
    codec: BlockCodec,
}

/// Without the bytes (an open segment holds up to megabytes).
impl fmt::Debug for SegmentBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SegmentBuilder")
            .field("records", &self.len())
            .field("first_seq", &self.first_seq())
            .field("last_seq", &self.last_seq())
            .field("blocks", &self.blocks.len())
            .field("held_bytes", &self.held_bytes())
            .finish()
    }
}

/// A full container block, before compression (see [`SegmentBuilder::take_full_block`]).
#[derive(Debug)]
pub struct RawBlock {
    slot: usize,
    count: u64,
    data: Vec<u8>,
    codec: BlockCodec,
}

/// A container block after compression.
#[derive(Debug)]
pub struct CompressedBlock {
    slot: usize,
    count: u64,
    data: Vec<u8>,
}

impl RawBlock {
    /// Compresses the block with its segment's codec. CPU work per 256 KiB block: about 2 ms
    /// deflated, 0.5 ms with zstd.
    pub fn compress(self) -> Result<CompressedBlock, SegmentError> {
        let RawBlock {
            slot,
            count,
            mut data,
            codec,
        } = self;
        compress_block(&mut data, codec)?;
        Ok(CompressedBlock { slot, count, data })
    }
}

/// How a segment's container blocks are compressed: the header's `avro.codec`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BlockCodec {
    /// Raw deflate (RFC 1951), a codec every Avro implementation must read.
    #[default]
    Deflate,
    /// Zstandard frames, an optional Avro codec (Avro 1.9+, fastavro, apache-avro with its
    /// `zstandard` feature): the demo stream's blocks to about the size deflate gives (0.219
    /// vs 0.214 of the input) for a third to a quarter of deflate's CPU ([`ZSTD_LEVEL`]).
    Zstandard,
}

impl BlockCodec {
    /// The codec's name in the Avro container header.
    pub fn avro_name(self) -> &'static str {
        match self {
            BlockCodec::Deflate => "deflate",
            BlockCodec::Zstandard => "zstandard",
        }
    }
}

impl fmt::Display for BlockCodec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.avro_name())
    }
}

/// The header's names (what `--segment-codec` takes).
impl std::str::FromStr for BlockCodec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "deflate" => Ok(BlockCodec::Deflate),
            "zstandard" => Ok(BlockCodec::Zstandard),
            other => Err(format!(
                "unknown segment codec {other:?}: deflate or zstandard"
            )),
        }
    }
}

/// Deflate level of segment blocks. zlib-rs at 6 compresses the demo stream's blocks to the
/// same size as apache-avro's codec at its default (miniz_oxide, level 6: 0.214 vs 0.217 of
/// the input) in a third of the time (4.0 vs 12.1 µs per record,
/// `cargo bench -p integration-tests --bench segment_block`); that codec was 62% of the archive
/// sink's CPU. Level 1 would be 1.2 µs at 0.280: a third more storage, kept for years.
pub const DEFLATE_LEVEL: i32 = 6;

/// Zstandard level of segment blocks ([`BlockCodec::Zstandard`]). In process (the same bench)
/// levels 1 and 3 cost about the same (0.9-1.2 µs per record, output 0.219 and 0.215 of the
/// input; deflate at 6: 4.1-5.1 µs, 0.214). In the running sink, sharing two cores with the
/// broker, level 3 took 2.5 µs per record under `perf` and level 1 0.9 µs (likely level 3's
/// match tables, ~768 KiB, against tens of KiB for level 1, losing the cache to the broker).
pub const ZSTD_LEVEL: i32 = 1;

/// Replaces `data` by its compressed form under `codec`.
fn compress_block(data: &mut Vec<u8>, codec: BlockCodec) -> Result<(), SegmentError> {
    match codec {
        BlockCodec::Deflate => deflate_block(data),
        BlockCodec::Zstandard => zstd_block(data),
    }
}

/// Replaces `data` by one zstd frame of it at [`ZSTD_LEVEL`], with its content size in the
/// frame header (what a reader sizes its buffer by) and no checksum (the segment's digest in
/// its manifest and the chain's hashes cover the bytes). The same zstd version gives the same
/// bytes; another version may not, which the archive sink reads as "same records, other bytes"
/// (`Existing::Equivalent`), never as a fork.
fn zstd_block(data: &mut Vec<u8>) -> Result<(), SegmentError> {
    // Per thread, as for deflate: the compression context (allocated once) and a scratch
    // buffer for the worst case; only the compressed bytes are kept.
    struct Zstd {
        compressor: zstd::bulk::Compressor<'static>,
        scratch: Vec<u8>,
    }
    thread_local! {
        static ZSTD: std::cell::RefCell<Option<Zstd>> = const { std::cell::RefCell::new(None) };
    }
    let failed = |e: std::io::Error| SegmentError::Compress {
        codec: "zstandard",
        detail: e.to_string(),
    };
    ZSTD.with_borrow_mut(|slot| {
        let z = match slot {
            Some(z) => z,
            None => slot.insert(Zstd {
                compressor: zstd::bulk::Compressor::new(ZSTD_LEVEL).map_err(failed)?,
                scratch: Vec::new(),
            }),
        };
        z.scratch.clear();
        z.scratch
            .reserve(zstd::zstd_safe::compress_bound(data.len()));
        z.compressor
            .compress_to_buffer(data.as_slice(), &mut z.scratch)
            .map_err(failed)?;
        *data = z.scratch.as_slice().to_vec();
        Ok(())
    })
}

/// Replaces `data` by its raw deflate stream (RFC 1951, no zlib header or checksum: what
/// Avro's `deflate` codec holds), as zlib-rs writes it at [`DEFLATE_LEVEL`]. The same zlib-rs
/// version gives the same bytes on every CPU (its SIMD paths compute the same matches); another
/// version may not, which the archive sink reads as "same records, other bytes"
/// (`Existing::Equivalent`), never as a fork.
fn deflate_block(data: &mut Vec<u8>) -> Result<(), SegmentError> {
    // Per thread: the compressor's state (about 300 KB, zeroed when allocated: page faults on
    // every block when it was allocated per block) and a scratch buffer for the worst case.
    // Only the compressed bytes are kept: an open segment holds its blocks for up to
    // `--segment-max-age-secs`, and a `compress_bound`-sized Vec per block held four times
    // what it used.
    struct Deflater {
        stream: zlib_rs::Deflate,
        scratch: Vec<u8>,
    }
    thread_local! {
        static DEFLATER: std::cell::RefCell<Option<Deflater>> = const { std::cell::RefCell::new(None) };
    }
    DEFLATER.with_borrow_mut(|slot| {
        let d = slot.get_or_insert_with(|| Deflater {
            stream: zlib_rs::Deflate::new(DEFLATE_LEVEL, false, 15),
            scratch: Vec::new(),
        });
        d.stream.reset();
        d.scratch.resize(zlib_rs::compress_bound(data.len()), 0);
        let status = d
            .stream
            .compress(data, &mut d.scratch, zlib_rs::DeflateFlush::Finish);
        match status {
            Ok(zlib_rs::Status::StreamEnd) => {
                let n = usize::try_from(d.stream.total_out()).unwrap_or(usize::MAX);
                *data = d.scratch[..n].to_vec();
                Ok(())
            }
            // Not expected: the output has room for `compress_bound` bytes.
            other => Err(SegmentError::Compress {
                codec: "deflate",
                detail: format!("zlib-rs returned {other:?}"),
            }),
        }
    })
}

impl SegmentBuilder {
    /// A builder with the default codec ([`BlockCodec::Deflate`]).
    pub fn new() -> Self {
        Self::with_codec(BlockCodec::default())
    }

    pub fn with_codec(codec: BlockCodec) -> Self {
        Self::with_block_size(BLOCK_SIZE, codec)
    }

    /// A builder with another block size (tests: many blocks from few records).
    fn with_block_size(block_size: usize, codec: BlockCodec) -> Self {
        SegmentBuilder {
            block_size,
            codec,
            ..SegmentBuilder::default()
        }
    }

    pub fn codec(&self) -> BlockCodec {
        self.codec
    }

    /// Records so far.
    pub fn len(&self) -> u64 {
        self.ends.as_ref().map_or(0, |e| e.count)
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_none()
    }

    pub fn first_seq(&self) -> Option<i64> {
        self.ends.as_ref().map(|e| e.first_seq)
    }

    pub fn last_seq(&self) -> Option<i64> {
        self.ends.as_ref().map(|e| e.last_seq)
    }

    pub fn last_hash(&self) -> Option<&[u8]> {
        self.ends.as_ref().map(|e| e.last_hash.as_slice())
    }

    pub fn canonical_version(&self) -> Option<i32> {
        self.ends.as_ref().map(|e| e.canonical_version)
    }

    /// Bytes held: compressed blocks plus the block being filled.
    pub fn held_bytes(&self) -> usize {
        self.compressed_len + self.raw.len()
    }

    /// Appends `e`, which must continue the segment: same partition, day and canonical version,
    /// the next seq (what [`SegmentMeta::for_events`] requires). A block left full by a caller
    /// that did not take it is compressed here, so the bytes stay right either way.
    pub fn push(&mut self, e: &ChainedEvent) -> Result<(), SegmentError> {
        let link = Link {
            partition: e.chain_partition,
            seq: e.seq,
            event_time_us: e.event.event_time_us,
            canonical_version: e.canonical_version,
            prev_hash: &e.prev_hash,
            hash: &e.hash,
        };
        self.append(&link, |raw| {
            crate::framing::chained_datum_into(e, raw).map_err(SegmentError::from)
        })
    }

    /// [`Self::push`] of a record given as its own encoding: the same bytes, copied rather
    /// than encoded again.
    pub fn push_canonical(&mut self, d: &CanonicalDatum<'_>) -> Result<(), SegmentError> {
        let k = d.keys();
        let link = Link {
            partition: k.chain_partition,
            seq: k.seq,
            event_time_us: k.event_time_us,
            canonical_version: k.canonical_version,
            prev_hash: k.prev_hash,
            hash: k.hash,
        };
        self.append(&link, |raw| {
            raw.extend_from_slice(d.bytes());
            Ok(())
        })
    }

    /// Appends the record `link` describes, written by `write`.
    fn append(
        &mut self,
        e: &Link<'_>,
        write: impl FnOnce(&mut Vec<u8>) -> Result<(), SegmentError>,
    ) -> Result<(), SegmentError> {
        let date = day_of(e.event_time_us);
        match &self.ends {
            None => {
                SegmentKey::new(e.partition, &date, e.seq, e.seq)?;
            }
            Some(ends) => {
                let invalid = |what: String| Err(SegmentError::Invalid(what));
                if e.seq != ends.last_seq.saturating_add(1) {
                    return invalid(format!(
                        "seqs not contiguous: {} then {}",
                        ends.last_seq, e.seq
                    ));
                }
                if e.partition != ends.partition {
                    return invalid(format!(
                        "records of partitions {} and {}",
                        ends.partition, e.partition
                    ));
                }
                if e.canonical_version != ends.canonical_version {
                    return invalid(format!(
                        "canonical versions {} and {}",
                        ends.canonical_version, e.canonical_version
                    ));
                }
                if date != ends.date {
                    return invalid(format!("days {} and {date}", ends.date));
                }
            }
        }
        if let Some(full) = self.take_full_block() {
            self.put_block(full.compress()?)?;
        }
        if self.raw.capacity() == 0 {
            // One block and the record that ends it, without growing by doubling past it.
            self.raw.reserve(self.block_size + 16 * 1024);
        }
        let before = self.raw.len();
        if let Err(err) = write(&mut self.raw) {
            self.raw.truncate(before);
            return Err(err);
        }
        self.raw_count += 1;
        match &mut self.ends {
            None => {
                self.ends = Some(Ends {
                    partition: e.partition,
                    date,
                    first_seq: e.seq,
                    last_seq: e.seq,
                    count: 1,
                    first_prev_hash: e.prev_hash.to_vec(),
                    last_hash: e.hash.to_vec(),
                    canonical_version: e.canonical_version,
                })
            }
            Some(ends) => {
                ends.last_seq = e.seq;
                ends.count += 1;
                ends.last_hash.clear();
                ends.last_hash.extend_from_slice(e.hash);
            }
        }
        Ok(())
    }

    /// The block being filled, if it is full: to compress (e.g. on a blocking thread) and hand
    /// back with [`Self::put_block`] before [`Self::finish`].
    pub fn take_full_block(&mut self) -> Option<RawBlock> {
        if self.raw.len() < self.block_size || self.raw_count == 0 {
            return None;
        }
        let slot = self.blocks.len();
        self.blocks.push(None);
        let data = std::mem::take(&mut self.raw);
        let count = std::mem::take(&mut self.raw_count);
        Some(RawBlock {
            slot,
            count,
            data,
            codec: self.codec,
        })
    }

    /// Puts back a block taken by [`Self::take_full_block`], compressed.
    pub fn put_block(&mut self, block: CompressedBlock) -> Result<(), SegmentError> {
        match self.blocks.get_mut(block.slot) {
            Some(slot @ None) => {
                self.compressed_len += block.data.len();
                *slot = Some(block);
                Ok(())
            }
            _ => Err(SegmentError::Invalid(format!(
                "block {} put back twice or never taken",
                block.slot
            ))),
        }
    }

    /// The segment's metadata and bytes (records read from `chained_topic` at offsets
    /// `first_offset..=last_offset`). Compresses the last block here.
    pub fn finish(
        mut self,
        chained_topic: &str,
        first_offset: i64,
        last_offset: i64,
        writer: &str,
    ) -> Result<(SegmentMeta, Vec<u8>), SegmentError> {
        let Some(ends) = self.ends.take() else {
            return Err(SegmentError::Invalid("no records".into()));
        };
        let meta = SegmentMeta::for_ends(ends, chained_topic, first_offset, last_offset, writer)?;
        let entry = avro::current_schema(RecordKind::ChainedEvent)?;
        let marker = sync_marker(&meta);
        if self.raw_count > 0 {
            let count = self.raw_count;
            let mut data = std::mem::take(&mut self.raw);
            compress_block(&mut data, self.codec)?;
            self.compressed_len += data.len();
            let slot = self.blocks.len();
            self.blocks
                .push(Some(CompressedBlock { slot, count, data }));
        }
        let mut out = header(entry.avsc, self.codec, &meta.to_entries(), &marker);
        out.reserve(self.compressed_len + self.blocks.len() * (20 + marker.len()));
        for (i, block) in self.blocks.iter().enumerate() {
            let Some(b) = block else {
                return Err(SegmentError::Invalid(format!(
                    "block {i} was taken and not put back"
                )));
            };
            put_block(&mut out, b.count, &b.data, &marker);
        }
        Ok((meta, out))
    }
}

/// Reads a segment: its metadata and records, as stored (no consistency check: see
/// [`SegmentMeta::check_events`] and the chain verifier for that).
pub fn read_segment(bytes: &[u8]) -> Result<(SegmentMeta, Vec<ChainedEvent>), SegmentError> {
    let (meta, records) = stream_segment(bytes)?;
    let events = records.collect::<Result<Vec<_>, _>>()?;
    Ok((meta, events))
}

/// The records of a segment, one at a time.
pub type SegmentRecords<'r> =
    Box<dyn Iterator<Item = Result<ChainedEvent, SegmentError>> + Send + 'r>;

/// Reads a segment from any reader (a streaming object body, a file): the metadata from the
/// header, then the records one at a time, so memory is one container block plus one record,
/// whatever the segment's size. Records of an older `ChainedEvent` schema are resolved to the
/// current one (slow path, old data only).
pub fn stream_segment<'r, R: Read + Send + 'r>(
    reader: R,
) -> Result<(SegmentMeta, SegmentRecords<'r>), SegmentError> {
    let decode_err = |e: apache_avro::Error| SegmentError::Decode {
        source: Box::new(e),
    };
    let current = avro::current_schema(RecordKind::ChainedEvent)?;
    // No reader schema at build time: with one, apache-avro's serde path panics, and a stream
    // cannot be opened twice. An older writer schema is resolved value by value instead.
    let reader = Reader::builder(reader)
        .human_readable(false)
        .build()
        .map_err(decode_err)?;
    let meta = SegmentMeta::from_entries(reader.user_metadata())?;
    let records: SegmentRecords<'r> = if *reader.writer_schema() == *current.schema {
        Box::new(
            reader
                .into_deser_iter::<ChainedEvent>()
                .map(move |r| r.map_err(decode_err)),
        )
    } else {
        let target: &'static apache_avro::Schema = &current.schema;
        Box::new(reader.map(move |v| {
            let v = v.and_then(|v| v.resolve(target)).map_err(decode_err)?;
            apache_avro::from_value::<ChainedEvent>(&v).map_err(decode_err)
        }))
    };
    Ok((meta, records))
}

// ---- manifest ----------------------------------------------------------------------------------

/// The JSON document next to each segment. Hashes are lowercase hex; `object_key` is relative
/// to the archive root (the same as the manifest's own name minus the suffix).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: String,
    pub partition: i32,
    pub date: String,
    pub first_seq: i64,
    pub last_seq: i64,
    pub count: u64,
    pub first_prev_hash: String,
    pub last_hash: String,
    pub object_key: String,
    pub object_size: u64,
    /// SHA-256 of the segment object's bytes.
    pub sha256: String,
    pub chained_topic: String,
    pub first_offset: i64,
    pub last_offset: i64,
    pub canonical_version: i32,
    pub chained_schema_version: i32,
    /// Writer of the segment (from its metadata).
    pub writer: String,
    /// When this manifest was written (RFC 3339, UTC): informational, not part of the identity.
    pub created_at: String,
}

impl Manifest {
    /// The manifest of a stored segment (`bytes` are the object, `meta` read from it or the one
    /// it was written with).
    pub fn for_segment(
        meta: &SegmentMeta,
        bytes: &[u8],
        created_at: &str,
    ) -> Result<Self, SegmentError> {
        Ok(Manifest {
            format: MANIFEST_FORMAT.to_owned(),
            partition: meta.partition,
            date: meta.date.clone(),
            first_seq: meta.first_seq,
            last_seq: meta.last_seq,
            count: meta.count,
            first_prev_hash: hex::encode(&meta.first_prev_hash),
            last_hash: hex::encode(&meta.last_hash),
            object_key: meta.key()?.object_key(),
            object_size: bytes.len() as u64,
            sha256: sha256_hex(bytes),
            chained_topic: meta.chained_topic.clone(),
            first_offset: meta.first_offset,
            last_offset: meta.last_offset,
            canonical_version: meta.canonical_version,
            chained_schema_version: meta.chained_schema_version,
            writer: meta.writer.clone(),
            created_at: created_at.to_owned(),
        })
    }

    pub fn to_json(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec_pretty(self).unwrap_or_default();
        v.push(b'\n');
        v
    }

    pub fn from_json(bytes: &[u8]) -> Result<Self, SegmentError> {
        serde_json::from_slice(bytes).map_err(|e| SegmentError::ManifestJson(e.to_string()))
    }

    /// Equal in everything but `created_at` (two writers of the same segment agree).
    pub fn same_content(&self, other: &Manifest) -> bool {
        Manifest {
            created_at: String::new(),
            ..self.clone()
        } == Manifest {
            created_at: String::new(),
            ..other.clone()
        }
    }
}

/// Lowercase hex SHA-256.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Checks a segment object's bytes against its manifest (size and SHA-256).
pub fn verify_segment_digest(manifest: &Manifest, bytes: &[u8]) -> Result<(), SegmentError> {
    verify_segment_digest_of(manifest, &sha256_hex(bytes), bytes.len() as u64)
}

/// SHA-256 and size of an object read in chunks (a streamed segment).
#[derive(Debug, Clone, Default)]
pub struct ObjectDigest {
    hasher: Sha256,
    size: u64,
}

impl ObjectDigest {
    pub fn update(&mut self, chunk: &[u8]) {
        self.hasher.update(chunk);
        self.size += chunk.len() as u64;
    }

    /// (lowercase hex SHA-256, size in bytes)
    pub fn finish(self) -> (String, u64) {
        (hex::encode(self.hasher.finalize()), self.size)
    }
}

/// [`verify_segment_digest`] from a digest computed while streaming (see [`ObjectDigest`]).
pub fn verify_segment_digest_of(
    manifest: &Manifest,
    sha256: &str,
    size: u64,
) -> Result<(), SegmentError> {
    let actual = sha256.to_owned();
    if actual != manifest.sha256.to_ascii_lowercase() || size != manifest.object_size {
        return Err(SegmentError::DigestMismatch {
            key: manifest.object_key.clone(),
            expected: format!("{} ({} bytes)", manifest.sha256, manifest.object_size),
            actual: format!("{actual} ({size} bytes)"),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::arb_chained_event;
    use proptest::prelude::*;

    #[test]
    fn names_encode_the_range_and_parse_back() {
        let k = SegmentKey::new(3, "2024-06-01", 1, 10_000).expect("valid");
        assert_eq!(
            k.object_key(),
            "chain=3/date=2024-06-01/00000000000000000001-00000000000000010000.avro"
        );
        assert_eq!(
            k.manifest_key(),
            "chain=3/date=2024-06-01/00000000000000000001-00000000000000010000.manifest.json"
        );
        assert_eq!(
            parse_key(&k.object_key()),
            Some((k.clone(), ObjectKind::Segment))
        );
        assert_eq!(
            parse_key(&k.manifest_key()),
            Some((k, ObjectKind::Manifest))
        );
        for bad in [
            "chain=03/date=2024-06-01/00000000000000000001-00000000000000000002.avro",
            "chain=3/date=2024-6-01/00000000000000000001-00000000000000000002.avro",
            "chain=3/date=2024-06-01/1-2.avro",
            "chain=3/date=2024-06-01/00000000000000000002-00000000000000000001.avro",
            "chain=3/date=2024-06-01/00000000000000000000-00000000000000000001.avro",
            "chain=3/date=2024-06-01/00000000000000000001-00000000000000000002.avro.tmp",
            "checkpoints/chain=3/00000000000000000001-k1.json",
            "x/chain=3/date=2024-06-01/00000000000000000001-00000000000000000002.avro",
        ] {
            assert_eq!(parse_key(bad), None, "{bad}");
        }
    }

    #[test]
    fn days_come_from_the_timestamp_in_utc() {
        assert_eq!(day_of(0), "1970-01-01");
        assert_eq!(day_of(-1), "1969-12-31");
        assert_eq!(day_of(1_717_200_000_000_000), "2024-06-01");
        assert_eq!(day_of(1_717_286_399_999_999), "2024-06-01");
        assert_eq!(day_of(1_717_286_400_000_000), "2024-06-02");
        assert_eq!(day_of(i64::MIN), "0000-01-01");
        assert_eq!(day_of(i64::MAX), "9999-12-31");
    }

    #[test]
    fn heartbeat_names_sit_next_to_the_first_checkpoint() {
        assert_eq!(
            checkpoint_heartbeat_key(2, 42, "k-1", 1_700_000_000_000_000),
            "checkpoints/chain=2/00000000000000000042-k-1@t1700000000000000.json"
        );
        // Never equal to a plain name, whatever the key id.
        assert_ne!(
            checkpoint_heartbeat_key(2, 42, "k", 5),
            checkpoint_key(2, 42, "k@t5")
        );
        // Only characters object stores keep as they are (object_store encodes `~`, `%`, …).
        let key = checkpoint_heartbeat_key(2, 42, "k~1%", 5);
        assert!(
            key.chars()
                .all(|c| c.is_ascii_alphanumeric() || "/=.-_@".contains(c)),
            "{key}"
        );
    }

    #[test]
    fn anchor_names_carry_chain_partition_seq_key_and_time() {
        assert_eq!(
            anchor_key("prod/eu", 2, 42, "k-1", 7),
            "anchor/prod_2Feu/partition=2/00000000000000000042-k-1@t7.json"
        );
        assert!(anchor_key("c", 1, 1, "k", 1).starts_with(&anchor_chain_prefix("c")));
    }

    #[test]
    fn checkpoint_names_escape_key_ids() {
        assert_eq!(
            checkpoint_key(2, 42, "k-2024.a"),
            "checkpoints/chain=2/00000000000000000042-k-2024.a.json"
        );
        assert_eq!(
            checkpoint_key(2, 42, "a/b c_d"),
            "checkpoints/chain=2/00000000000000000042-a_2Fb_20c_5Fd.json"
        );
    }

    proptest! {
        /// Lexicographic order of names is seq order (within a partition and day).
        #[test]
        fn name_order_is_seq_order(a in 1i64..i64::MAX, b in 1i64..i64::MAX, la in 0i64..1000, lb in 0i64..1000) {
            let ka = SegmentKey::new(0, "2024-01-01", a, a.saturating_add(la)).expect("valid");
            let kb = SegmentKey::new(0, "2024-01-01", b, b.saturating_add(lb)).expect("valid");
            if a != b {
                prop_assert_eq!(a < b, ka.object_key() < kb.object_key());
            }
            prop_assert_eq!(parse_key(&ka.object_key()).map(|x| x.0), Some(ka));
        }

        #[test]
        fn day_of_is_monotonic(a in any::<i64>(), b in any::<i64>()) {
            let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
            prop_assert!(day_of(lo) <= day_of(hi));
        }

        /// Any records made into a valid segment read back identical, with the metadata, and
        /// writing is deterministic.
        #[test]
        fn segment_round_trip(
            mut events in proptest::collection::vec(arb_chained_event(), 1..6),
            partition in 0i32..1000,
            start in 1i64..1_000_000_000,
            day_us in 0i64..100_000_000_000_000,
            offset in 0i64..1_000_000,
        ) {
            let day_start = day_us - day_us.rem_euclid(86_400_000_000);
            for (i, e) in events.iter_mut().enumerate() {
                e.chain_partition = partition;
                e.seq = start + i as i64;
                e.canonical_version = 1;
                e.event.event_time_us = day_start + (e.event.event_time_us.rem_euclid(86_400_000_000));
            }
            let n = events.len() as i64;
            let meta = SegmentMeta::for_events(&events, "audit.chained", offset, offset + n - 1, "test/1").expect("valid segment");
            let bytes = write_segment(&meta, &events).expect("write");
            prop_assert_eq!(&bytes, &write_segment(&meta, &events).expect("write again"));
            let (meta2, events2) = read_segment(&bytes).expect("read");
            prop_assert_eq!(&meta2, &meta);
            prop_assert_eq!(&events2, &events);
            meta2.check_events(&events2).expect("consistent");
            let m = Manifest::for_segment(&meta, &bytes, "2024-01-01T00:00:00Z").expect("manifest");
            verify_segment_digest(&m, &bytes).expect("digest");
            prop_assert_eq!(Manifest::from_json(&m.to_json()).expect("json"), m.clone());
            let mut tampered = bytes.clone();
            let last = tampered.len() - 1;
            tampered[last] ^= 1;
            prop_assert!(verify_segment_digest(&m, &tampered).is_err());
        }
    }

    /// Record `seq` of partition `p` holding `event` (made-up hashes).
    fn record(p: i32, seq: i64, event: crate::event::AuditEvent) -> ChainedEvent {
        ChainedEvent {
            chain_partition: p,
            seq,
            prev_hash: vec![0; 32],
            hash: vec![1; 32],
            canonical_version: 1,
            source_topic: "audit.enriched".into(),
            source_partition: p,
            source_offset: seq,
            event,
        }
    }

    /// `events` made into one valid segment of `partition` from `start`, all on one day.
    fn as_one_segment(events: &mut [ChainedEvent], partition: i32, start: i64, day_us: i64) {
        let day_start = day_us - day_us.rem_euclid(86_400_000_000);
        for (i, e) in events.iter_mut().enumerate() {
            e.chain_partition = partition;
            e.seq = start + i as i64;
            e.canonical_version = 1;
            e.event.event_time_us = day_start + e.event.event_time_us.rem_euclid(86_400_000_000);
        }
    }

    /// The builder's segment, compressing the blocks it hands out when `offload` says so (as
    /// the sink does on a blocking thread) and leaving the others to `push`.
    fn built(
        events: &[ChainedEvent],
        block_size: usize,
        codec: BlockCodec,
        offload: &[bool],
        offset: i64,
    ) -> (SegmentMeta, Vec<u8>) {
        let mut b = SegmentBuilder::with_block_size(block_size, codec);
        let mut out = Vec::new();
        for (i, e) in events.iter().enumerate() {
            // Every other record as its own encoding (as sink-archive appends what the chainer
            // wrote), the others encoded here: the same bytes either way.
            if i % 2 == 1 {
                let datum = avro::encode_chained_datum(e).expect("datum");
                let d = CanonicalDatum::new(&datum).expect("an encoder's output");
                b.push_canonical(&d).expect("push");
            } else {
                b.push(e).expect("push");
            }
            if offload.get(i).copied().unwrap_or(false) {
                if let Some(raw) = b.take_full_block() {
                    out.push(raw);
                }
            }
            // Blocks come back later and out of order; their slots keep the order.
            if out.len() > 1 {
                let first = out.remove(0);
                let second = out.remove(0);
                b.put_block(second.compress().expect("compress"))
                    .expect("put");
                b.put_block(first.compress().expect("compress"))
                    .expect("put");
            }
        }
        for raw in out {
            b.put_block(raw.compress().expect("compress")).expect("put");
        }
        assert_eq!(b.len(), events.len() as u64);
        let n = events.len() as i64;
        b.finish("audit.chained", offset, offset + n - 1, "test/1")
            .expect("finish")
    }

    /// apache-avro's own container writer on the same header, marker and block size: the
    /// independent reference for everything but the compressed streams.
    fn reference_segment(
        meta: &SegmentMeta,
        events: &[ChainedEvent],
        block_size: usize,
        codec: BlockCodec,
    ) -> Vec<u8> {
        use apache_avro::{Codec, DeflateSettings, Writer, ZstandardSettings};
        let entry = avro::current_schema(RecordKind::ChainedEvent).expect("schema");
        let marker = sync_marker(meta);
        let buf = header(entry.avsc, codec, &meta.to_entries(), &marker);
        let mut writer = Writer::builder()
            .schema(&entry.schema)
            .writer(buf)
            .codec(match codec {
                BlockCodec::Deflate => Codec::Deflate(DeflateSettings::default()),
                BlockCodec::Zstandard => Codec::Zstandard(ZstandardSettings::default()),
            })
            .block_size(block_size)
            .marker(marker)
            .has_header(true)
            .human_readable(false)
            .build()
            .expect("writer");
        for e in events {
            writer.append_ser(e).expect("append");
        }
        writer.into_inner().expect("flush")
    }

    /// A container's header bytes and its blocks (record count, decompressed bytes), each
    /// block checked to end with the header's sync marker. Inflated with flate2 (miniz_oxide),
    /// not the zlib-rs that wrote ours; zstd frames with zstd's streaming decoder.
    fn container(bytes: &[u8], codec: BlockCodec) -> (Vec<u8>, Vec<(i64, Vec<u8>)>) {
        fn long(b: &[u8], at: &mut usize) -> i64 {
            let (mut z, mut shift) = (0u64, 0);
            loop {
                let byte = b[*at];
                *at += 1;
                z |= u64::from(byte & 0x7f) << shift;
                if byte & 0x80 == 0 {
                    return (z >> 1) as i64 ^ -((z & 1) as i64);
                }
                shift += 7;
            }
        }
        assert_eq!(&bytes[..4], b"Obj\x01");
        let mut at = 4;
        loop {
            let mut n = long(bytes, &mut at);
            if n == 0 {
                break;
            }
            if n < 0 {
                n = -n;
                long(bytes, &mut at);
            }
            for _ in 0..2 * n {
                let len = long(bytes, &mut at) as usize;
                at += len;
            }
        }
        let marker = bytes[at..at + 16].to_vec();
        at += 16;
        let head = bytes[..at].to_vec();
        let mut blocks = Vec::new();
        while at < bytes.len() {
            let count = long(bytes, &mut at);
            let len = long(bytes, &mut at) as usize;
            let data = match codec {
                BlockCodec::Deflate => {
                    let mut data = Vec::new();
                    flate2::read::DeflateDecoder::new(&bytes[at..at + len])
                        .read_to_end(&mut data)
                        .expect("inflate");
                    data
                }
                BlockCodec::Zstandard => {
                    zstd::stream::decode_all(&bytes[at..at + len]).expect("zstd frame")
                }
            };
            at += len;
            assert_eq!(bytes[at..at + 16], marker[..], "sync marker after a block");
            at += 16;
            blocks.push((count, data));
        }
        (head, blocks)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// The builder writes apache-avro's container (same header, marker, block boundaries and
        /// datum bytes; only the compressed streams are ours), whatever the block size and
        /// codec, and the same bytes as [`write_segment`] whichever blocks are compressed
        /// elsewhere.
        #[test]
        fn the_builder_writes_apache_avros_container(
            mut events in proptest::collection::vec(
                proptest::strategy::Strategy::boxed(arb_chained_event()), 1..12),
            partition in 0i32..1000,
            start in 1i64..1_000_000_000,
            day_us in 0i64..100_000_000_000_000,
            block_size in 1usize..3_000,
            offload in proptest::collection::vec(any::<bool>(), 12),
            zstandard in any::<bool>(),
        ) {
            let codec = if zstandard { BlockCodec::Zstandard } else { BlockCodec::Deflate };
            as_one_segment(&mut events, partition, start, day_us);
            let n = events.len() as i64;
            let meta = SegmentMeta::for_events(&events, "audit.chained", 7, 7 + n - 1, "test/1")
                .expect("valid segment");
            let reference = reference_segment(&meta, &events, block_size, codec);
            let (meta2, bytes) = built(&events, block_size, codec, &offload, 7);
            prop_assert_eq!(&meta2, &meta);
            prop_assert_eq!(container(&bytes, codec), container(&reference, codec));
            prop_assert!(
                bytes == write_segment_with_block_size(&meta, &events, block_size, codec)
                    .expect("write"),
                "builder bytes differ from write_segment's"
            );
            let (_, back) = read_segment(&bytes).expect("read");
            prop_assert_eq!(&back, &events);
            // A record that fills a block exactly ends it, as apache-avro's writer does.
            let exact = avro::encode_datum(&events[0]).expect("datum").len();
            prop_assert_eq!(
                container(&built(&events, exact, codec, &offload, 7).1, codec),
                container(&reference_segment(&meta, &events, exact, codec), codec),
                "at an exact fill"
            );
        }
    }

    /// A block's bytes do not depend on what the thread compressed before (the compressors are
    /// kept per thread and reset): each is zlib-rs's one-shot raw deflate of it at the level, or
    /// zstd's one-shot frame at its level.
    #[test]
    fn a_block_compresses_the_same_whatever_came_before() {
        let mut rng = crate::realistic::Rng(11);
        let blocks: Vec<Vec<u8>> = (0..3u64)
            .map(|b| {
                let mut raw = Vec::new();
                for i in 0..200 {
                    let e = record(
                        1,
                        i + 1,
                        crate::realistic::realistic_event(&mut rng, b * 1000 + i as u64, 1),
                    );
                    crate::framing::chained_datum_into(&e, &mut raw).expect("encode");
                }
                raw
            })
            .collect();
        for raw in blocks.iter().chain(blocks.iter().rev()) {
            let mut ours = raw.clone();
            compress_block(&mut ours, BlockCodec::Deflate).expect("deflate");
            let config = zlib_rs::DeflateConfig {
                window_bits: -15,
                ..zlib_rs::DeflateConfig::new(DEFLATE_LEVEL)
            };
            let mut out = vec![0u8; zlib_rs::compress_bound(raw.len())];
            let (one_shot, rc) = zlib_rs::compress_slice(&mut out, raw, config);
            assert_eq!(rc, zlib_rs::ReturnCode::Ok);
            assert_eq!(ours, one_shot);
            assert_eq!(
                ours.capacity(),
                ours.len(),
                "only the compressed bytes are held"
            );
            let mut back = Vec::new();
            flate2::read::DeflateDecoder::new(&ours[..])
                .read_to_end(&mut back)
                .expect("inflate");
            assert_eq!(&back, raw);

            let mut ours = raw.clone();
            compress_block(&mut ours, BlockCodec::Zstandard).expect("zstd");
            let one_shot = zstd::bulk::compress(raw, ZSTD_LEVEL).expect("zstd one-shot");
            assert_eq!(ours, one_shot);
            assert_eq!(ours.capacity(), ours.len(), "only the compressed bytes");
            assert_eq!(
                zstd::zstd_safe::get_frame_content_size(&ours).ok(),
                Some(Some(raw.len() as u64)),
                "the frame says its size"
            );
            assert_eq!(&zstd::stream::decode_all(&ours[..]).expect("zstd"), raw);
        }
    }

    /// At the real block size, realistic records over several blocks: apache-avro's container
    /// too, and about the size its codec gives (zlib-rs and miniz_oxide at the same level; zstd
    /// at the same level, one frame per block or streamed). Zstandard blocks are no larger
    /// than deflated ones (what makes it worth offering).
    #[test]
    fn the_builder_matches_at_the_real_block_size() {
        let mut rng = crate::realistic::Rng(7);
        let mut events: Vec<ChainedEvent> = (0..700i64)
            .map(|i| {
                let mut e = record(
                    2,
                    i + 1,
                    crate::realistic::realistic_event(&mut rng, i as u64, 2),
                );
                e.hash = vec![(i + 1) as u8; 32];
                e
            })
            .collect();
        as_one_segment(&mut events, 2, 1, 1_717_200_000_000_000);
        let meta =
            SegmentMeta::for_events(&events, "audit.chained", 0, 699, "test/1").expect("valid");
        let mut sizes = Vec::new();
        for codec in [BlockCodec::Deflate, BlockCodec::Zstandard] {
            let reference = reference_segment(&meta, &events, BLOCK_SIZE, codec);
            let (meta2, bytes) = built(&events, BLOCK_SIZE, codec, &[true; 700], 0);
            assert_eq!(meta2, meta);
            assert_eq!(
                bytes,
                write_segment_with(&meta, &events, codec).expect("write")
            );
            let (head, blocks) = container(&bytes, codec);
            assert_eq!((head, blocks.clone()), container(&reference, codec));
            assert!(blocks.len() > 1, "several blocks");
            let ratio = bytes.len() as f64 / reference.len() as f64;
            assert!(
                (0.9..1.1).contains(&ratio),
                "{codec}: {} bytes, apache-avro's codec {}",
                bytes.len(),
                reference.len()
            );
            let (_, records) = stream_segment(&bytes[..]).expect("read");
            let back = records.collect::<Result<Vec<_>, _>>().expect("records");
            assert_eq!(back, events, "{codec}: apache-avro's reader");
            sizes.push(bytes.len());
        }
        assert_eq!(
            write_segment(&meta, &events).expect("write").len(),
            sizes[0],
            "deflate is the default"
        );
        assert!(
            sizes[1] <= sizes[0] + sizes[0] / 20,
            "zstandard {} bytes against deflate's {}",
            sizes[1],
            sizes[0]
        );
        // More than one block, and the open segment was held compressed.
        let mut b = SegmentBuilder::new();
        let mut max_held = 0;
        for e in &events {
            b.push(e).expect("push");
            max_held = max_held.max(b.held_bytes());
        }
        let raw_total: usize = events
            .iter()
            .map(|e| avro::encode_datum(e).expect("datum").len())
            .sum();
        assert!(
            raw_total > 2 * BLOCK_SIZE,
            "{raw_total}: needs several blocks"
        );
        assert!(max_held < raw_total / 2, "held {max_held} of {raw_total}");
    }

    #[test]
    fn the_builder_refuses_what_is_not_one_segment() {
        let mut events: Vec<ChainedEvent> = (0..2)
            .map(|i| record(1, i, crate::testing::sample_event()))
            .collect();
        as_one_segment(&mut events, 1, 5, 1_717_200_000_000_000);
        type Change = fn(&mut ChainedEvent);
        let cases: [(&str, Change); 4] = [
            ("seqs not contiguous", |e| e.seq += 1),
            ("partitions", |e| e.chain_partition = 2),
            ("canonical versions", |e| e.canonical_version = 2),
            ("days", |e| e.event.event_time_us += 86_400_000_000),
        ];
        for (what, change) in cases {
            let mut b = SegmentBuilder::new();
            b.push(&events[0]).expect("first");
            let mut second = events[1].clone();
            change(&mut second);
            let err = b.push(&second).expect_err(what).to_string();
            assert!(err.contains(what), "{what}: {err}");
            // The refused record left nothing behind.
            assert_eq!(b.len(), 1);
            b.push(&events[1]).expect("the right one still fits");
            let (meta, _) = b.finish("t", 0, 1, "w").expect("finish");
            assert_eq!((meta.first_seq, meta.last_seq, meta.count), (5, 6, 2));
        }
        assert!(SegmentBuilder::new().finish("t", 0, 0, "w").is_err());
        let mut b = SegmentBuilder::with_block_size(1, BlockCodec::Zstandard);
        b.push(&events[0]).expect("push");
        let taken = b.take_full_block().expect("full");
        b.push(&events[1]).expect("push");
        assert!(
            b.finish("t", 0, 1, "w").is_err(),
            "a block was never put back"
        );
        drop(taken);
    }

    /// A reader that hands out one byte per call: the streaming reader must not depend on
    /// how the body is chunked (S3 bodies arrive in arbitrary pieces).
    struct Trickle<'a>(&'a [u8]);

    impl std::io::Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            match (self.0.split_first(), buf.first_mut()) {
                (Some((b, rest)), Some(out)) => {
                    *out = *b;
                    self.0 = rest;
                    Ok(1)
                }
                _ => Ok(0),
            }
        }
    }

    #[test]
    fn a_segment_streams_from_any_chunking_and_checks_incrementally() {
        let mut events: Vec<ChainedEvent> = (0..40)
            .map(|i| {
                let mut e = ChainedEvent {
                    chain_partition: 2,
                    seq: 10 + i,
                    prev_hash: vec![i as u8; 32],
                    hash: vec![i as u8 + 1; 32],
                    canonical_version: 1,
                    source_topic: "audit.enriched".into(),
                    source_partition: 2,
                    source_offset: i,
                    event: crate::testing::sample_event(),
                };
                e.event.event_time_us = 1_717_200_000_000_000 + i;
                e
            })
            .collect();
        let meta = SegmentMeta::for_events(&events, "t", 0, 39, "w").expect("meta");
        let bytes = write_segment(&meta, &events).expect("write");
        let (m2, records) = stream_segment(Trickle(&bytes)).expect("header");
        assert_eq!(m2, meta);
        let mut check = m2.events_check();
        let mut digest = ObjectDigest::default();
        for chunk in bytes.chunks(7) {
            digest.update(chunk);
        }
        let mut n = 0;
        for (r, want) in records.zip(&events) {
            let r = r.expect("record");
            assert_eq!(&r, want);
            check.observe(&r);
            n += 1;
        }
        assert_eq!(n, events.len());
        check.finish().expect("consistent");
        let (sha, size) = digest.finish();
        let manifest = Manifest::for_segment(&meta, &bytes, "x").expect("manifest");
        verify_segment_digest_of(&manifest, &sha, size).expect("digest");
        assert!(verify_segment_digest_of(&manifest, &sha, size + 1).is_err());
        // The incremental check names what the whole-slice one names.
        events[39].hash[0] ^= 1;
        let mut check = meta.events_check();
        events.iter().for_each(|e| check.observe(e));
        assert_eq!(
            check.finish().map_err(|e| e.to_string()),
            meta.check_events(&events).map_err(|e| e.to_string())
        );
        assert!(meta.check_events(&events).is_err());
    }

    #[test]
    fn for_events_refuses_what_is_not_one_segment() {
        let mut a = crate::testing::sample_event();
        a.event_time_us = 1_717_200_000_000_000;
        let mk = |seq: i64, t: i64| {
            let mut e = record(0, seq, a.clone());
            e.event.event_time_us = t;
            e
        };
        let day = 1_717_200_000_000_000;
        assert!(SegmentMeta::for_events(&[mk(1, day), mk(2, day)], "t", 0, 1, "w").is_ok());
        assert!(
            SegmentMeta::for_events(&[mk(1, day), mk(3, day)], "t", 0, 1, "w").is_err(),
            "gap"
        );
        assert!(
            SegmentMeta::for_events(&[mk(1, day), mk(2, day + 86_400_000_000)], "t", 0, 1, "w")
                .is_err(),
            "two days"
        );
        assert!(SegmentMeta::for_events(&[], "t", 0, 1, "w").is_err());
    }
}
