//! The per-partition state machine: one input record in, one [`Decision`] out. Pure (no I/O,
//! no clock), so two instances fed the same log decide the same and write the same bytes.
//!
//! State: the chain head `(seq, hash)`, the dedup window (ids of the last W chained records),
//! and `expected`, the next source offset to chain. `expected` comes from the durable chain
//! (source offset of its last record + 1), never from the committed consumer offset:
//! - `offset < expected`: already chained in an earlier life → [`Decision::Skip`].
//! - `offset > expected` on the first record of an assignment: the committed offset ran ahead of
//!   the chain → [`Decision::Seek`] back; records still queued from before the seek are
//!   [`Decision::Discard`]ed until the consumer delivers from the target.
//! - once a record of this assignment has been taken in order, the consumer delivers in order,
//!   so a later jump is a hole in the input log (transaction markers, retention), not a skip.

use schemas::avro::{canonical_bytes_into, CANONICAL_VERSION};
use schemas::chain::{seq_i64, ChainError, ChainHead, DedupWindow, Hash32};
use schemas::event::ChainedEvent;
use schemas::framing::{decode_event, encode_single_object_chained};

/// After a seek, how many stale records (fetched before the seek) are discarded before the
/// seek is assumed lost and issued again.
pub const MAX_STALE_AFTER_SEEK: u64 = 100_000;

/// Reason codes on `audit.rejected` for what the chainer dead-letters.
pub mod reason {
    pub const NULL_VALUE: &str = "chainer_null_value";
    pub const UNDECODABLE: &str = "chainer_undecodable";
    pub const CANONICAL: &str = "chainer_canonical_encoding";
    pub const ENCODE_OUTPUT: &str = "chainer_output_encoding";
}

/// A record to chain, as the state machine needs it.
#[derive(Debug, Clone, Copy)]
pub struct Input<'a> {
    pub offset: i64,
    pub payload: Option<&'a [u8]>,
}

/// One new link, ready to produce to `chained`/p.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chained {
    pub seq: u64,
    pub hash: Hash32,
    /// Single-object `ChainedEvent`.
    pub payload: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Produce this record; the head advanced.
    Chain(Chained),
    /// The event id is in the window: drop it (its offset is done).
    Duplicate { event_id: String },
    /// Not chainable: dead-letter the original bytes (its offset is done, no seq consumed).
    DeadLetter { code: &'static str, message: String },
    /// Below `expected`: already in the chain.
    Skip,
    /// Seek the consumer of this partition back to `to`.
    Seek { to: i64 },
    /// Fetched before a pending seek took effect: ignore.
    Discard,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct PendingSeek {
    /// The offset that made us seek: every record fetched before the seek is above it, every
    /// record after it is at most it (the first existing offset ≥ the target).
    trigger: i64,
    discarded: u64,
}

/// Where a partition's chain resumes (from the tail of `chained`/p).
#[derive(Debug, Clone)]
pub struct Resume {
    pub head: ChainHead,
    pub dedup: DedupWindow,
    /// Next source offset to chain.
    pub expected: i64,
}

#[derive(Debug)]
pub struct PartitionChain {
    partition: i32,
    source_topic: String,
    head: ChainHead,
    dedup: DedupWindow,
    expected: i64,
    /// A record of this assignment was taken at `expected`: the consumer is positioned.
    anchored: bool,
    seek: Option<PendingSeek>,
    canonical: Vec<u8>,
}

impl PartitionChain {
    pub fn new(partition: i32, source_topic: impl Into<String>, resume: Resume) -> Self {
        Self {
            partition,
            source_topic: source_topic.into(),
            head: resume.head,
            dedup: resume.dedup,
            expected: resume.expected,
            anchored: false,
            seek: None,
            canonical: Vec::with_capacity(1024),
        }
    }

    /// A partition whose chain is empty, reading `source_topic` from `first_offset`.
    pub fn genesis(
        partition: i32,
        source_topic: impl Into<String>,
        window: usize,
        first_offset: i64,
    ) -> Result<Self, ChainError> {
        let head = ChainHead::genesis(schemas::chain::partition_u32(partition)?);
        Ok(Self::new(
            partition,
            source_topic,
            Resume {
                head,
                dedup: DedupWindow::new(window),
                expected: first_offset,
            },
        ))
    }

    pub fn head(&self) -> &ChainHead {
        &self.head
    }

    pub fn expected(&self) -> i64 {
        self.expected
    }

    pub fn process(&mut self, input: Input<'_>) -> Result<Decision, ChainError> {
        let offset = input.offset;
        if offset < self.expected {
            return Ok(Decision::Skip);
        }
        if offset > self.expected && !self.anchored {
            match &mut self.seek {
                None => {
                    self.seek = Some(PendingSeek {
                        trigger: offset,
                        discarded: 0,
                    });
                    return Ok(Decision::Seek { to: self.expected });
                }
                Some(s) if offset > s.trigger => {
                    s.discarded += 1;
                    if s.discarded > MAX_STALE_AFTER_SEEK {
                        *s = PendingSeek {
                            trigger: offset,
                            discarded: 0,
                        };
                        return Ok(Decision::Seek { to: self.expected });
                    }
                    return Ok(Decision::Discard);
                }
                // The seek landed on the first offset that exists at or after `expected`:
                // the offsets in between are not in the log (markers or retention).
                Some(_) => tracing::warn!(
                    partition = self.partition,
                    expected = self.expected,
                    offset,
                    "offsets missing from the input log after the chain's last source offset \
                     (transaction markers or retention); chaining from the first existing one"
                ),
            }
        }
        self.seek = None;
        self.anchored = true;
        self.expected = offset + 1;
        self.decide(offset, input.payload)
    }

    fn decide(&mut self, offset: i64, payload: Option<&[u8]>) -> Result<Decision, ChainError> {
        let Some(bytes) = payload else {
            return Ok(dead(
                reason::NULL_VALUE,
                "record has no value (tombstone)".into(),
            ));
        };
        let event = match decode_event(bytes, None) {
            Ok(e) => e,
            Err(e) => return Ok(dead(reason::UNDECODABLE, format!("not an AuditEvent: {e}"))),
        };
        if self.dedup.contains(&event.event_id) {
            return Ok(Decision::Duplicate {
                event_id: event.event_id,
            });
        }
        self.canonical.clear();
        if let Err(e) = canonical_bytes_into(&event, &mut self.canonical) {
            return Ok(dead(
                reason::CANONICAL,
                format!("canonical encoding failed: {e}"),
            ));
        }
        // Compute the link on a copy: the head advances only once the output is encoded.
        let mut next = self.head.clone();
        let link = next.next(&self.canonical);
        let event_id = event.event_id.clone();
        let record = ChainedEvent {
            chain_partition: self.partition,
            seq: seq_i64(link.seq)?,
            prev_hash: link.prev_hash.to_vec(),
            hash: link.hash.to_vec(),
            canonical_version: CANONICAL_VERSION,
            source_topic: self.source_topic.clone(),
            source_partition: self.partition,
            source_offset: offset,
            event,
        };
        let payload = match encode_single_object_chained(&record) {
            Ok(p) => p,
            Err(e) => {
                return Ok(dead(
                    reason::ENCODE_OUTPUT,
                    format!("encoding ChainedEvent: {e}"),
                ))
            }
        };
        self.head = next;
        self.dedup.insert(&event_id);
        Ok(Decision::Chain(Chained {
            seq: link.seq,
            hash: link.hash,
            payload,
        }))
    }
}

fn dead(code: &'static str, message: String) -> Decision {
    Decision::DeadLetter { code, message }
}
