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
//!
//! Dedup is by scoped id and content ([`schemas::identity`]): a redelivery is dropped, another
//! event reusing an id is chained and alarmed ([`Chained::id_conflict`]).
//!
//! Records below the partition's committed consumer offset ([`PartitionChain::replay_below`])
//! were fully handled by an earlier instance: their decisions are recomputed identically, but a
//! dead letter there was already sent, so it becomes [`Decision::Skip`] instead of a second
//! copy on the rejected topic.
//!
//! Input framed with a schema this instance cannot resolve is a configuration fault
//! ([`ChainError::UnknownSchema`]), never a dead letter: dead-lettering would skip an event.

use integrity::chain::{seq_i64, ChainError, ChainHead, Hash32};
use schemas::avro::{canonical_bytes_into, CANONICAL_VERSION};
use schemas::dedup::{DedupWindow, Seen};
use schemas::event::ChainedEvent;
use schemas::framing::{decode_event, encode_single_object_chained_with_canonical};
use schemas::identity::{content_digest, dedup_key};
use schemas::SchemaError;

use crate::metrics as m;

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
    /// The event's scoped id was in the dedup window with different content: another event
    /// reusing an id. It is chained (never dropped); the alarm (error log and
    /// `audit_chainer_id_conflicts_total`) is already raised by the state machine.
    pub id_conflict: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Produce this record; the head advanced.
    Chain(Chained),
    /// The event id is in the window: drop it (its offset is done).
    Duplicate { event_id: String },
    /// Not chainable: dead-letter the original bytes (its offset is done, no seq consumed).
    DeadLetter { code: &'static str, message: String },
    /// Below `expected`: already in the chain. Also a dead letter below the committed offset
    /// on a replay: already on the rejected topic.
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
    /// The committed consumer offset at recovery: records below it were handled before.
    replay_below: Option<i64>,
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
            replay_below: None,
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
        let head = ChainHead::genesis(integrity::chain::partition_u32(partition)?);
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

    /// Marks records below `committed` (the partition's committed consumer offset) as a
    /// replay: their dead letters were already sent. `None`: nothing committed.
    pub fn replay_below(mut self, committed: Option<i64>) -> Self {
        self.replay_below = committed;
        self
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
        let before = (self.seek, self.anchored, self.expected);
        self.seek = None;
        self.anchored = true;
        self.expected = offset + 1;
        let decision = match self.decide(offset, input.payload) {
            Ok(d) => d,
            Err(e) => {
                // Nothing was taken: a retry (or another instance) decides this record again.
                (self.seek, self.anchored, self.expected) = before;
                return Err(e);
            }
        };
        if let Decision::DeadLetter { code, .. } = &decision {
            if self.replay_below.is_some_and(|c| offset < c) {
                tracing::debug!(
                    partition = self.partition,
                    offset,
                    code,
                    "dead letter below the committed offset: already sent, not sent again"
                );
                metrics::counter!(m::DEAD_LETTERS_REPLAYED, "partition" => self.partition.to_string())
                    .increment(1);
                return Ok(Decision::Skip);
            }
        }
        Ok(decision)
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
            Err(e) if is_schema_fault(&e) => {
                return Err(ChainError::UnknownSchema {
                    offset,
                    detail: e.to_string(),
                })
            }
            Err(e) => return Ok(dead(reason::UNDECODABLE, format!("not an AuditEvent: {e}"))),
        };
        let key = dedup_key(&event);
        let content = match content_digest(&event) {
            Ok(c) => c,
            Err(e) => {
                return Ok(dead(
                    reason::CANONICAL,
                    format!("canonical encoding failed: {e}"),
                ))
            }
        };
        let id_conflict = match self.dedup.check(&key, &content) {
            Seen::New => false,
            Seen::Duplicate => {
                return Ok(Decision::Duplicate {
                    event_id: event.event_id,
                })
            }
            Seen::Conflict => true,
        };
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
        // The output embeds the event: splice in the canonical bytes just hashed rather than
        // encoding the event again (same bytes; `schemas::framing` falls back when it cannot).
        let payload = match encode_single_object_chained_with_canonical(&record, &self.canonical) {
            Ok(p) => p,
            Err(e) => {
                return Ok(dead(
                    reason::ENCODE_OUTPUT,
                    format!("encoding ChainedEvent: {e}"),
                ))
            }
        };
        self.head = next;
        self.dedup.record(key, content);
        if id_conflict {
            // The alarm: no payload in the log, only where to look.
            tracing::error!(
                partition = self.partition,
                offset,
                seq = link.seq,
                %event_id,
                "event id conflict: an event with this scoped id and different content is in \
                 the dedup window; chained both (never dropped), investigate the producer"
            );
            metrics::counter!(m::ID_CONFLICTS, "partition" => self.partition.to_string())
                .increment(1);
        }
        Ok(Decision::Chain(Chained {
            seq: link.seq,
            hash: link.hash,
            payload,
            id_conflict,
        }))
    }
}

/// Decode errors that mean "this instance cannot resolve the writer's schema" (version skew,
/// registry configuration), as opposed to bytes that are not an event at all.
fn is_schema_fault(e: &SchemaError) -> bool {
    matches!(
        e,
        SchemaError::UnknownFingerprint { .. }
            | SchemaError::UnknownVersion { .. }
            | SchemaError::UnknownSchemaId { .. }
            | SchemaError::NoResolver { .. }
            | SchemaError::WrongRecordKind { .. }
    )
}

fn dead(code: &'static str, message: String) -> Decision {
    Decision::DeadLetter { code, message }
}

#[cfg(test)]
mod tests {
    use super::*;
    use integrity::chain::ChainError;
    use schemas::framing::{decode_chained, encode_single_object_event};
    use schemas::testing::sample_event;

    fn event(id: &str, n: i64) -> schemas::AuditEvent {
        let mut e = sample_event();
        e.event_id = id.to_owned();
        e.event_time_us += n;
        e
    }

    fn bytes(e: &schemas::AuditEvent) -> Vec<u8> {
        encode_single_object_event(e).unwrap()
    }

    fn feed(m: &mut PartitionChain, offset: i64, b: &[u8]) -> Result<Decision, ChainError> {
        m.process(Input {
            offset,
            payload: Some(b),
        })
    }

    #[test]
    fn a_redelivery_is_dropped_but_another_event_reusing_the_id_is_chained_and_flagged() {
        let mut m = PartitionChain::genesis(0, "t", 10, 0).unwrap();
        let a = event("a", 0);
        let Decision::Chain(c) = feed(&mut m, 0, &bytes(&a)).unwrap() else {
            panic!()
        };
        assert!(!c.id_conflict);
        // Redelivered and re-enriched with newer context: still the same event.
        let mut again = a.clone();
        again.actor.email = Some("new@example.com".into());
        again.tenant.team_name = Some("Renamed".into());
        assert_eq!(
            feed(&mut m, 1, &bytes(&again)).unwrap(),
            Decision::Duplicate {
                event_id: "a".into()
            }
        );
        // Same id, different content: never dropped.
        let other = event("a", 99);
        let Decision::Chain(c) = feed(&mut m, 2, &bytes(&other)).unwrap() else {
            panic!("a conflicting event must be chained")
        };
        assert!(c.id_conflict);
        assert_eq!(c.seq, 2);
        assert_eq!(decode_chained(&c.payload, None).unwrap().event, other);
        // Both versions are now duplicates of something chained.
        assert!(matches!(
            feed(&mut m, 3, &bytes(&a)).unwrap(),
            Decision::Duplicate { .. }
        ));
        // The same id from another source is another event.
        let mut elsewhere = a.clone();
        elsewhere.source_component = "other-component".into();
        let Decision::Chain(c) = feed(&mut m, 4, &bytes(&elsewhere)).unwrap() else {
            panic!()
        };
        assert!(!c.id_conflict);
    }

    #[test]
    fn an_unknown_schema_stops_the_worker_but_garbage_is_dead_lettered() {
        let mut m = PartitionChain::genesis(0, "t", 10, 0).unwrap();
        // Single-object framing with a fingerprint this build does not know (a newer schema).
        let mut skew = vec![0xC3, 0x01];
        skew.extend_from_slice(&0x1234_5678_9abc_def0u64.to_le_bytes());
        skew.extend_from_slice(&bytes(&event("x", 0))[10..]);
        let err = feed(&mut m, 0, &skew).unwrap_err();
        assert!(
            matches!(err, ChainError::UnknownSchema { offset: 0, .. }),
            "{err}"
        );
        // Confluent framing without a registry: a configuration fault too.
        let err = feed(&mut m, 0, &[0, 0, 0, 0, 7, 1, 2, 3]).unwrap_err();
        assert!(matches!(err, ChainError::UnknownSchema { .. }), "{err}");
        // A known fingerprint with corrupt bytes: a dead letter, the chain goes on.
        let mut corrupt = bytes(&event("x", 0));
        corrupt.truncate(14);
        assert!(matches!(
            feed(&mut m, 0, &corrupt).unwrap(),
            Decision::DeadLetter {
                code: reason::UNDECODABLE,
                ..
            }
        ));
        assert!(matches!(
            feed(&mut m, 1, b"not avro at all").unwrap(),
            Decision::DeadLetter { .. }
        ));
        assert!(matches!(
            feed(&mut m, 2, &bytes(&event("x", 0))).unwrap(),
            Decision::Chain(_)
        ));
    }

    #[test]
    fn dead_letters_below_the_committed_offset_are_not_sent_again() {
        // Chain ends at source offset 4; offsets 5 and 7 were dead-lettered and the group
        // committed 8 before the restart.
        let resume = |committed| {
            PartitionChain::genesis(0, "t", 10, 5)
                .unwrap()
                .replay_below(committed)
        };
        let log: Vec<Vec<u8>> = vec![
            b"garbage".to_vec(),
            bytes(&event("e6", 6)),
            b"garbage".to_vec(),
            b"more garbage".to_vec(),
        ];
        let mut replay = resume(Some(8));
        let mut fresh = resume(None);
        for (i, b) in log.iter().enumerate() {
            let o = 5 + i as i64;
            let r = feed(&mut replay, o, b).unwrap();
            let f = feed(&mut fresh, o, b).unwrap();
            match (o, &f) {
                (5 | 7, Decision::DeadLetter { .. }) => assert_eq!(r, Decision::Skip, "offset {o}"),
                // Chain decisions are recomputed identically, and from the committed offset on
                // dead letters are sent as usual.
                _ => assert_eq!(r, f, "offset {o}"),
            }
        }
        assert_eq!(replay.head(), fresh.head());
    }
}
