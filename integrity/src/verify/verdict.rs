//! The pending record's verdict, given its successor (or a checkpoint, when there is none):
//! this is where one mutation is told apart from another (see the table in the module docs of
//! `verify`).

use crate::chain::{ChainRule, Hash32};

use super::finding::{short, short_opt, FindingKind};
use super::partition::PartitionVerifier;
use super::pending::{to_h, Pending};
use super::record::StoredRecord;

impl PartitionVerifier {
    pub(super) fn successor(&mut self, p: Pending, r: &StoredRecord<'_>, t: u64) {
        let x = to_h(r.prev_hash);
        if p.good() && x == Some(p.recomputed) {
            self.accept(p.t, p.recomputed);
            let np = self.analyze(r, t, p.recomputed, false, false);
            self.set_pending(np, r.event_id);
            return;
        }
        if x.is_some() && x == p.alt {
            // Forked seq (already reported): the chain went on through the other copy.
            self.accept(p.t, p.alt.unwrap_or(p.recomputed));
            let np = self.analyze(r, t, self.head, false, false);
            self.set_pending(np, r.event_id);
            return;
        }
        let shn = to_h(r.hash);
        // Does the successor's content belong at p's seq, after p's predecessor?
        let n_at_p =
            x == Some(p.head_before) && shn.is_some_and(|h| self.link(p.t, &p.head_before, r) == h);
        if n_at_p && p.as_next && p.stored_prev == shn {
            if let (Some(shn), Some(psh)) = (shn, p.stored_hash) {
                self.pending_finding(
                    p.s,
                    FindingKind::Reordered,
                    format!(
                        "the records stored at seq {} and {} are each other's (their seqs were swapped)",
                        p.s, r.seq
                    ),
                );
                self.accept(p.t, shn);
                // `p`'s content is the record of seq t; it links to `shn` and hashes to psh.
                let swapped = Pending {
                    t,
                    s: r.seq,
                    stored_prev: Some(shn),
                    stored_hash: Some(psh),
                    head_before: shn,
                    recomputed: psh,
                    link_ok: true,
                    hash_ok: true,
                    self_consistent: false,
                    as_next: false,
                    is_first: false,
                    copy: p.copy,
                    alt: None,
                };
                self.pending = Some(swapped);
                return;
            }
        }
        if n_at_p {
            self.pending_finding(
                p.s,
                FindingKind::InsertedEvent,
                format!(
                    "not part of the chain: the next record (stored as seq {}) is the real seq {} and links to seq {}; later records are renumbered up by one",
                    r.seq,
                    p.s,
                    p.s - 1
                ),
            );
            self.offset += 1;
            let np = self.analyze(r, p.t, p.head_before, p.is_first, false);
            self.set_pending(np, r.event_id);
            return;
        }
        if p.as_next {
            // Not a swap (ruled out above): p's own seq was deleted and it was renumbered down.
            let moved = self.renumbered_down(p);
            match self.true_seq(r.seq) {
                Some(t2) if t2 == moved.t + 1 => self.successor(moved, r, t2),
                _ => {
                    // Whatever follows no longer fits after the shift: judge it afresh.
                    self.pending = Some(moved);
                    self.process(r);
                }
            }
            return;
        }
        if p.good() {
            if let (Some(xv), Some(shn)) = (x, shn) {
                if self.link(t, &xv, r) == shn {
                    self.pending_finding(
                        p.s,
                        FindingKind::ModifiedEvent,
                        format!(
                            "event and its stored hash were rewritten consistently; the next record still links to the original hash {}",
                            short(&xv)
                        ),
                    );
                    self.accept(p.t, xv);
                    let np = self.analyze(r, t, xv, false, false);
                    self.set_pending(np, r.event_id);
                    return;
                }
            }
        }
        self.resolve(p, Some(x));
        let np = self.analyze(r, t, self.head, false, false);
        self.set_pending(np, r.event_id);
    }

    /// `p` hashes correctly as the record one seq later: its seq was deleted and the records
    /// from it on were renumbered down by one. Report it and shift.
    fn renumbered_down(&mut self, p: Pending) -> Pending {
        let kind = if p.is_first {
            FindingKind::GenesisMismatch
        } else {
            FindingKind::MissingSeq
        };
        self.pending_finding(
            p.s,
            kind,
            format!(
                "seq {} is missing: the record stored there is seq {}'s, and the records after it are renumbered down by one",
                p.s,
                p.s.saturating_add(1)
            ),
        );
        self.offset -= 1;
        Pending {
            t: p.t + 1,
            head_before: p.stored_prev.unwrap_or(p.head_before),
            recomputed: p.stored_hash.unwrap_or(p.recomputed),
            link_ok: true,
            hash_ok: true,
            self_consistent: false,
            as_next: false,
            is_first: false,
            ..p
        }
    }

    /// Give `p` its verdict and accept the hash the chain continues from. `next_prev` is the
    /// successor's stored prev_hash (`Some(None)` if it is not 32 bytes), `None` if there is no
    /// successor to ask.
    pub(super) fn resolve(&mut self, p: Pending, next_prev: Option<Option<Hash32>>) {
        let cp_says = |v: &Self, t: u64, h: &Hash32| {
            v.cps
                .get(&t)
                .is_some_and(|l| l.iter().any(|c| c.head == *h))
        };
        if p.good() {
            // A fork with no successor to ask: a checkpoint may say which copy is the chain's.
            let h = match p.alt {
                Some(alt) if cp_says(self, p.t, &alt) && !cp_says(self, p.t, &p.recomputed) => alt,
                _ => p.recomputed,
            };
            self.accept(p.t, h);
            return;
        }
        if p.as_next && next_prev.is_none() {
            let moved = self.renumbered_down(p);
            self.accept(moved.t, moved.recomputed);
            return;
        }
        let stored_or_re = p.stored_hash.unwrap_or(p.recomputed);
        if p.link_ok {
            // Content and stored hash disagree: which one did the chain continue from?
            let cp_says = |h: &Hash32| cp_says(self, p.t, h);
            let (kind, committed, why) = match next_prev {
                Some(Some(x)) if x == p.recomputed => (
                    FindingKind::ModifiedHash,
                    p.recomputed,
                    "the next record links to the recomputed hash: the stored hash field was altered",
                ),
                Some(Some(x)) if Some(x) == p.stored_hash => (
                    FindingKind::ModifiedEvent,
                    stored_or_re,
                    "the next record links to the stored hash: the event was altered after chaining",
                ),
                Some(_) => (
                    FindingKind::ModifiedEvent,
                    stored_or_re,
                    "and the next record links to neither",
                ),
                None if cp_says(&p.recomputed) => (
                    FindingKind::ModifiedHash,
                    p.recomputed,
                    "a signed checkpoint confirms the recomputed hash: the stored hash field was altered",
                ),
                None if p.stored_hash.as_ref().is_some_and(cp_says) => (
                    FindingKind::ModifiedEvent,
                    stored_or_re,
                    "a signed checkpoint confirms the stored hash: the event was altered after chaining",
                ),
                None => (
                    FindingKind::ModifiedEvent,
                    stored_or_re,
                    "no later record or checkpoint tells whether the event or the stored hash was altered",
                ),
            };
            let detail = format!(
                "event content hashes to {}, stored hash is {}; {why}",
                short(&p.recomputed),
                short_opt(&p.stored_hash)
            );
            self.pending_finding(p.s, kind, detail);
            self.accept(p.t, committed);
            return;
        }
        let kind = if p.is_first {
            FindingKind::GenesisMismatch
        } else {
            FindingKind::BrokenLink
        };
        let (committed, why) = if p.hash_ok {
            (p.recomputed, "the event hashes correctly from the true predecessor: the prev_hash field was altered")
        } else if p.self_consistent {
            (stored_or_re, "the record is consistent with a different predecessor (its predecessor was replaced)")
        } else {
            (
                stored_or_re,
                "and the event does not match its stored hash either",
            )
        };
        let mut detail = format!(
            "stored prev_hash {} ≠ hash of seq {} {}; {why}",
            short_opt(&p.stored_prev),
            self.stored(p.t - 1),
            short(&p.head_before)
        );
        if p.is_first && p.t == 1 && p.self_consistent && self.rule == Some(ChainRule::V2) {
            // Under v2 seq 1's predecessor is the chain id's genesis: name what it means.
            detail.push_str(&format!(
                "; seq 1 does not link to the audit-chain/v2 genesis of chain {:?} partition {}: \
                 these records belong to another chain or partition",
                self.chain_id().unwrap_or("?"),
                self.partition
            ));
        }
        self.pending_finding(p.s, kind, detail);
        self.accept(p.t, committed);
    }
}
