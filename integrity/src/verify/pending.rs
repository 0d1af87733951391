//! The record under judgement. Its verdict waits for its successor (see the module docs of
//! `verify`), so what was recomputed about it is kept here until then.

use crate::chain::Hash32;

use super::partition::PartitionVerifier;
use super::record::StoredRecord;

/// A record being judged; its verdict waits for the next record (see the module docs).
#[derive(Debug, Clone)]
pub(super) struct Pending {
    /// True seq (stored seq minus the renumbering offset).
    pub(super) t: u64,
    /// Stored seq.
    pub(super) s: i64,
    pub(super) stored_prev: Option<Hash32>,
    pub(super) stored_hash: Option<Hash32>,
    /// The hash this record should link to.
    pub(super) head_before: Hash32,
    /// link_hash(t, head_before, content).
    pub(super) recomputed: Hash32,
    pub(super) link_ok: bool,
    pub(super) hash_ok: bool,
    /// Only computed on the anomaly path: content+hash agree with the *stored* prev at t...
    pub(super) self_consistent: bool,
    /// ...or at t + 1 (the record belongs one seq later: renumbered or swapped).
    pub(super) as_next: bool,
    pub(super) is_first: bool,
    pub(super) copy: Option<u32>,
    /// Stored hash of a different copy at the same seq (a fork already reported): if the
    /// successor links to it, the chain continued through that copy.
    pub(super) alt: Option<Hash32>,
}

impl Pending {
    pub(super) fn good(&self) -> bool {
        self.link_ok && self.hash_ok
    }
}

/// A stored hash field as a hash, if it is 32 bytes.
pub(super) fn to_h(b: &[u8]) -> Option<Hash32> {
    b.try_into().ok()
}

impl PartitionVerifier {
    pub(super) fn analyze(
        &self,
        r: &StoredRecord<'_>,
        t: u64,
        head_before: Hash32,
        is_first: bool,
        resync: bool,
    ) -> Pending {
        let stored_prev = to_h(r.prev_hash);
        let stored_hash = to_h(r.hash);
        let recomputed = self.link(t, &head_before, r);
        let link_ok = resync || stored_prev == Some(head_before);
        let hash_ok = stored_hash == Some(recomputed);
        let (mut self_consistent, mut as_next) = (false, false);
        if !link_ok && !hash_ok {
            if let (Some(sp), Some(sh)) = (stored_prev, stored_hash) {
                self_consistent = self.link(t, &sp, r) == sh;
                if !self_consistent {
                    as_next = self.link(t.saturating_add(1), &sp, r) == sh;
                }
            }
        }
        Pending {
            t,
            s: r.seq,
            stored_prev,
            stored_hash,
            head_before,
            recomputed,
            link_ok,
            hash_ok,
            self_consistent,
            as_next,
            is_first,
            copy: r.copy,
            alt: None,
        }
    }

    pub(super) fn set_pending(&mut self, p: Pending, event_id: &str) {
        self.pending = Some(p);
        self.pending_id.clear();
        self.pending_id.push_str(event_id);
    }
}
