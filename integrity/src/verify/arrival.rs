//! A record arrives: by its seq relative to the pending record it is the first record, a copy
//! of the pending one (duplicate or fork), a late one, the successor, or past a gap.

use super::finding::FindingKind;
use super::partition::PartitionVerifier;
use super::pending::{to_h, Pending};
use super::record::StoredRecord;

impl PartitionVerifier {
    pub(super) fn process(&mut self, r: &StoredRecord<'_>) {
        let Some(t) = self.true_seq(r.seq) else {
            self.finding(
                r.seq,
                FindingKind::MalformedRecord,
                Some(r.event_id),
                format!("seq {} is outside 1..=i64::MAX", r.seq),
            );
            return;
        };
        if let Some(e) = self.opts.expected_last_seq {
            if t > e {
                self.finding(
                    r.seq,
                    FindingKind::InsertedEvent,
                    Some(r.event_id),
                    format!("record beyond the expected last seq {e} of this range"),
                );
                return;
            }
        }
        let Some(p) = self.pending.take() else {
            self.first(r, t);
            return;
        };
        if t == p.t {
            self.duplicate(p, r);
        } else if t < p.t {
            self.pending = Some(p);
            self.finding(
                r.seq,
                FindingKind::Reordered,
                Some(r.event_id),
                format!(
                    "seq {} comes after seq {}",
                    r.seq,
                    self.expected_stored() - 1
                ),
            );
        } else if t > p.t + 1 {
            let from = p.t + 1;
            self.resolve(p, None);
            let (a, b) = (self.stored(from), self.stored(t - 1));
            let n = t - from;
            self.finding(
                a,
                FindingKind::MissingSeq,
                None,
                if n == 1 {
                    format!("seq {a} is missing")
                } else {
                    format!("seqs {a}..={b} are missing ({n} records)")
                },
            );
            // Unverifiable across the gap: continue from what the next record links to.
            let head = to_h(r.prev_hash).unwrap_or(self.head);
            let np = self.analyze(r, t, head, false, true);
            self.set_pending(np, r.event_id);
        } else {
            self.successor(p, r, t);
        }
    }

    fn first(&mut self, r: &StoredRecord<'_>, t: u64) {
        let expected = self.resolved_seq + 1;
        if t < expected {
            self.finding(
                r.seq,
                FindingKind::GenesisMismatch,
                Some(r.event_id),
                format!(
                    "record at seq {} precedes the expected start seq {expected}",
                    r.seq
                ),
            );
            return;
        }
        if t > expected {
            let (a, b) = (self.stored(expected), self.stored(t - 1));
            self.finding(
                a,
                FindingKind::GenesisMismatch,
                None,
                format!(
                    "the store starts at seq {} instead of {a}: seqs {a}..={b} are missing",
                    r.seq
                ),
            );
            let head = to_h(r.prev_hash).unwrap_or(self.head);
            let np = self.analyze(r, t, head, false, true);
            self.set_pending(np, r.event_id);
            return;
        }
        // A first record that belongs one seq later (seq 1 deleted and the rest renumbered, or
        // seqs 1 and 2 swapped) is told apart by its successor, in `successor`.
        let np = self.analyze(r, t, self.head, true, false);
        self.set_pending(np, r.event_id);
    }

    fn duplicate(&mut self, p: Pending, r: &StoredRecord<'_>) {
        let sp = to_h(r.prev_hash);
        let sh = to_h(r.hash);
        let rr = self.link(p.t, &p.head_before, r);
        let copies = format!(
            "copies {} and {}",
            p.copy.map_or_else(|| "first".to_owned(), |c| c.to_string()),
            r.copy.map_or_else(|| "next".to_owned(), |c| c.to_string())
        );
        if rr == p.recomputed && sp == p.stored_prev && sh == p.stored_hash {
            self.finding(
                r.seq,
                FindingKind::DuplicateSeq,
                Some(r.event_id),
                format!("identical duplicate of seq {} ({copies})", r.seq),
            );
            self.pending = Some(p);
            return;
        }
        let n_good = sp == Some(p.head_before) && sh == Some(rr);
        let p_good = p.good();
        let detail = format!(
            "two different records at seq {} ({copies}; event ids {:?} and {:?}); the first {} the chain, the second {}",
            r.seq,
            self.pending_id,
            r.event_id,
            if p_good { "fits" } else { "does not fit" },
            if n_good { "fits" } else { "does not fit" },
        );
        self.finding(r.seq, FindingKind::Fork, Some(r.event_id), detail);
        if n_good && !p_good {
            let mut np = self.analyze(r, p.t, p.head_before, p.is_first, false);
            np.alt = p.stored_hash;
            self.set_pending(np, r.event_id);
        } else {
            let mut p = p;
            p.alt = sh.filter(|h| Some(*h) != p.stored_hash).or(p.alt);
            self.pending = Some(p);
        }
    }
}
