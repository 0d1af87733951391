//! The per-partition verifier: its state, the record intake (with the reorder buffer), and the
//! final report. How each record is judged lives in the sibling modules: `pending` (what is
//! known about the record under judgement), `arrival` (the next record's seq decides what
//! happens), `verdict` (the successor decides what the pending record was), `checkpoints`.

use std::collections::BTreeMap;

use crate::chain::{genesis_v2, schema_fingerprint, ChainRule, Hash32, GENESIS};
use crate::checkpoint::KeySet;
use schemas::checkpoint_record::Checkpoint;

use super::checkpoints::{CpCheck, CpTime, RangeTree};
use super::finding::{Finding, FindingKind, Severity};
use super::options::VerifyOptions;
use super::pending::Pending;
use super::record::{OwnedRecord, StoredRecord};
use super::report::PartitionReport;

/// Verifies one partition. See the module docs.
#[derive(Debug)]
pub struct PartitionVerifier {
    // `pub(super)`: the judging steps are `impl` blocks in the sibling modules.
    pub(super) partition: u32,
    pub(super) partition_i32: i32,
    pub(super) opts: VerifyOptions,
    /// Committed hash of `resolved_seq`.
    pub(super) head: Hash32,
    pub(super) resolved_seq: u64,
    /// stored seq − true seq, after detected renumbering.
    pub(super) offset: i64,
    pub(super) pending: Option<Pending>,
    pub(super) pending_id: String,
    pub(super) max_seen: Option<i64>,
    pub(super) buffer: BTreeMap<(i64, u64), OwnedRecord>,
    pub(super) arrivals: u64,
    pub(super) events: u64,
    pub(super) first_seq: Option<i64>,
    pub(super) last_seq: Option<i64>,
    pub(super) cps: BTreeMap<u64, Vec<CpCheck>>,
    pub(super) trees: BTreeMap<u64, RangeTree>,
    pub(super) active: Vec<u64>,
    /// Smallest seq ≥ the current one at which a checkpoint ends or a tree starts.
    pub(super) next_mark: u64,
    pub(super) latest_valid_cp: Option<u64>,
    /// Valid checkpoints (signature, partition, chain id) by seq: their ranges and signed
    /// times, for the coverage and backdating checks at the end.
    pub(super) cp_times: BTreeMap<u64, Vec<CpTime>>,
    /// Every checkpoint record handed in (valid or not), as seq -> lowest first seq: the
    /// ranges the store claims to have signed, for the coverage check. An invalid one is
    /// reported for itself; it must not also count as missing.
    pub(super) cp_cover: BTreeMap<u64, u64>,
    /// Newest `receive_time_us` seen among the records each checkpoint (by seq) covers.
    pub(super) recv_max: BTreeMap<u64, i64>,
    pub(super) sealed_through: Option<u64>,
    /// The partition's whole tree (leaves: link hashes from seq 1) through `resolved_seq`,
    /// for v3 checkpoints' `tree_root`. `None` when verification starts mid-chain (its left
    /// part is unknown) or after a hole in the accepted chain (reported for itself).
    pub(super) whole: Option<crate::tree::CompactRange>,
    /// The chain's link rule, fixed at the first record (see [`VerifyOptions::rule`]).
    pub(super) rule: Option<ChainRule>,
    /// Chain ids named by the valid checkpoints (see `chain_id`).
    pub(super) cp_chain_ids: std::collections::BTreeSet<String>,
    pub(super) findings: Vec<Finding>,
    pub(super) dropped: u64,
    pub(super) dropped_errors: bool,
}

impl PartitionVerifier {
    /// `checkpoints`: every checkpoint known for this partition (wire records, any order).
    pub fn new(
        partition: u32,
        keys: &KeySet,
        checkpoints: &[Checkpoint],
        opts: VerifyOptions,
    ) -> Self {
        let opts_start_seq = opts.start.seq;
        let mut v = Self {
            partition,
            partition_i32: i32::try_from(partition).unwrap_or(i32::MAX),
            head: opts.start.prev_hash,
            resolved_seq: opts.start.seq,
            opts,
            offset: 0,
            pending: None,
            pending_id: String::new(),
            max_seen: None,
            buffer: BTreeMap::new(),
            arrivals: 0,
            events: 0,
            first_seq: None,
            last_seq: None,
            cps: BTreeMap::new(),
            trees: BTreeMap::new(),
            active: Vec::new(),
            next_mark: 0,
            latest_valid_cp: None,
            cp_times: BTreeMap::new(),
            cp_cover: BTreeMap::new(),
            recv_max: BTreeMap::new(),
            sealed_through: None,
            whole: (opts_start_seq == 0).then(crate::tree::CompactRange::new),
            rule: None,
            cp_chain_ids: std::collections::BTreeSet::new(),
            findings: Vec::new(),
            dropped: 0,
            dropped_errors: false,
        };
        for cp in checkpoints {
            v.add_checkpoint(cp, keys);
        }
        v.next_mark = v.mark_from(v.resolved_seq.saturating_add(1));
        v
    }

    pub(super) fn finding(
        &mut self,
        seq: i64,
        kind: FindingKind,
        event_id: Option<&str>,
        detail: String,
    ) {
        if self.findings.len() >= self.opts.max_findings {
            self.dropped += 1;
            self.dropped_errors |= kind.severity() == Severity::Error;
            return;
        }
        self.findings.push(Finding {
            partition: self.partition_i32,
            seq,
            kind,
            severity: kind.severity(),
            event_id: event_id.filter(|s| !s.is_empty()).map(str::to_owned),
            detail,
        });
    }

    /// A finding about the pending record (uses its event id).
    pub(super) fn pending_finding(&mut self, seq: i64, kind: FindingKind, detail: String) {
        let id = std::mem::take(&mut self.pending_id);
        self.finding(seq, kind, Some(&id), detail);
        self.pending_id = id;
    }

    /// Stored label of true seq `t`.
    pub(super) fn stored(&self, t: u64) -> i64 {
        let v = i128::from(t) + i128::from(self.offset);
        i64::try_from(v).unwrap_or(if v < 0 { i64::MIN } else { i64::MAX })
    }

    pub(super) fn true_seq(&self, s: i64) -> Option<u64> {
        let v = i128::from(s) - i128::from(self.offset);
        u64::try_from(v)
            .ok()
            .filter(|&t| t >= 1 && t <= i64::MAX as u64)
    }

    pub(super) fn expected_stored(&self) -> i64 {
        match &self.pending {
            Some(p) => p.s.saturating_add(1),
            None => self.stored(self.resolved_seq.saturating_add(1)),
        }
    }

    /// [`Self::push`], with the record's `receive_time_us` (when the store can give it): the
    /// checkpoint covering the record must not be signed before it (`CheckpointBackdated`).
    pub fn push_timed(&mut self, r: &StoredRecord<'_>, receive_time_us: Option<i64>) {
        if let (Some(t), Ok(s)) = (receive_time_us, u64::try_from(r.seq)) {
            // Ranges are contiguous: the first checkpoint ending at or after `s` covers it.
            if let Some((&cs, list)) = self.cp_times.range(s..).next() {
                if list.iter().any(|c| c.first_seq <= s) {
                    let e = self.recv_max.entry(cs).or_insert(t);
                    *e = (*e).max(t);
                }
            }
        }
        self.push(r);
    }

    /// The link hash of `r` as true seq `t` after `prev`, under the chain's rule.
    pub(super) fn link(&self, t: u64, prev: &Hash32, r: &StoredRecord<'_>) -> Hash32 {
        // An unknown canonical version cannot have produced `r.canonical` (the store decoding
        // fails first); 0 only makes the v2 link not match.
        let fp = schema_fingerprint(r.canonical_version).unwrap_or(0);
        self.rule
            .unwrap_or_default()
            .link(self.partition, t, fp, prev, r.canonical)
    }

    /// Fixes the chain's rule at the first record, and for `audit-chain/v2` from genesis the
    /// head seq 1 must link to: the chain id's genesis (or, without a chain id, whatever the
    /// stored seq 1 links to: the binding is then not checked).
    fn resolve_rule(&mut self, r: &StoredRecord<'_>) {
        // The rule under which the record recomputes, at its seq or one off (a store renumbered
        // or swapped around a deleted record), from its stored prev_hash or, at seq 1, from the
        // rule's genesis (a prev_hash field altered). A record that recomputes under no rule
        // (its content was altered) leaves the choice to the fallback below; either way a
        // wrong choice can only add findings, never make a link match.
        let detected = || {
            let s = u64::try_from(r.seq).ok()?;
            let stored_prev: Hash32 = r.prev_hash.try_into().ok()?;
            let fp = schema_fingerprint(r.canonical_version)?;
            let chain_id = self.chain_id();
            [ChainRule::V2, ChainRule::V1].into_iter().find(|rule| {
                [s, s.saturating_add(1), s.saturating_sub(1)]
                    .into_iter()
                    .filter(|&t| t >= 1)
                    .any(|t| {
                        let genesis = match (t, rule, chain_id) {
                            (1, ChainRule::V1, _) => Some(GENESIS),
                            (1, ChainRule::V2, Some(c)) => Some(genesis_v2(c, self.partition)),
                            _ => None,
                        };
                        std::iter::once(stored_prev).chain(genesis).any(|prev| {
                            rule.link(self.partition, t, fp, &prev, r.canonical) == r.hash
                        })
                    })
            })
        };
        let rule = self.opts.rule.or_else(detected).unwrap_or({
            if r.seq == 1 && r.prev_hash == GENESIS {
                ChainRule::V1
            } else {
                ChainRule::V2
            }
        });
        self.rule = Some(rule);
        let from_genesis = self.opts.start.seq == 0 && self.opts.start.prev_hash == GENESIS;
        if rule == ChainRule::V2 && from_genesis && self.resolved_seq == 0 {
            self.head = match self.chain_id() {
                Some(c) => genesis_v2(c, self.partition),
                None if r.seq == 1 => r.prev_hash.try_into().unwrap_or(GENESIS),
                None => GENESIS,
            };
        }
    }

    /// The chain id the records belong to: the one given, else the one every valid checkpoint
    /// of the partition names (they are signed), if they agree.
    pub(super) fn chain_id(&self) -> Option<&str> {
        self.opts.chain_id.as_deref().or_else(|| {
            let mut ids = self.cp_chain_ids.iter();
            match (ids.next(), ids.next()) {
                (Some(one), None) => Some(one.as_str()),
                _ => None,
            }
        })
    }

    /// The chain's rule, once a record was seen.
    pub fn rule(&self) -> Option<ChainRule> {
        self.rule
    }

    /// Feed the next record in store order.
    pub fn push(&mut self, r: &StoredRecord<'_>) {
        if self.rule.is_none() {
            self.resolve_rule(r);
        }
        self.events += 1;
        self.first_seq = Some(self.first_seq.map_or(r.seq, |f| f.min(r.seq)));
        self.last_seq = Some(self.last_seq.map_or(r.seq, |l| l.max(r.seq)));
        let late = self.max_seen.is_some_and(|m| r.seq < m);
        if late {
            let m = self.max_seen.unwrap_or(r.seq);
            self.finding(
                r.seq,
                FindingKind::Reordered,
                Some(r.event_id),
                format!("seq {} is stored after seq {m}", r.seq),
            );
        }
        self.max_seen = Some(self.max_seen.map_or(r.seq, |m| m.max(r.seq)));
        let exp = self.expected_stored();
        if r.seq > exp {
            self.arrivals += 1;
            self.buffer
                .insert((r.seq, self.arrivals), OwnedRecord::from_stored(r));
            while self.buffer.len() > self.opts.reorder_window {
                self.pop_buffered();
                self.drain();
            }
            return;
        }
        if late && r.seq < exp {
            // Behind what was already judged; reported as reordered above.
            return;
        }
        self.process(r);
        self.drain();
    }

    fn pop_buffered(&mut self) {
        if let Some((_, rec)) = self.buffer.pop_first() {
            self.process(&rec.as_stored());
        }
    }

    fn drain(&mut self) {
        while let Some((&(s, _), _)) = self.buffer.first_key_value() {
            if s > self.expected_stored() {
                break;
            }
            self.pop_buffered();
        }
    }

    /// End of the store's records: judge the last record, check the tail, and report.
    pub fn finish(mut self) -> PartitionReport {
        while !self.buffer.is_empty() {
            self.pop_buffered();
            self.drain();
        }
        if let Some(p) = self.pending.take() {
            self.resolve(p, None);
        }
        let last = self.resolved_seq;
        let target = match (self.latest_valid_cp, self.opts.expected_last_seq) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        if let Some(target) = target.filter(|&t| t > last) {
            let a = self.stored(last + 1);
            let why = if self.latest_valid_cp == Some(target) {
                "a valid signed checkpoint covers seq"
            } else {
                "the range is expected to end at seq"
            };
            self.finding(
                a,
                FindingKind::TruncatedTail,
                None,
                format!(
                    "the store ends at seq {} but {why} {target}",
                    self.stored(last)
                ),
            );
        }
        self.check_checkpoint_coverage_and_times();
        let ok =
            !self.dropped_errors && !self.findings.iter().any(|f| f.severity == Severity::Error);
        PartitionReport {
            partition: self.partition_i32,
            first_seq: self.first_seq,
            last_seq: self.last_seq,
            events: self.events,
            head_seq: self.stored(self.resolved_seq),
            head: hex::encode(self.head),
            sealed_through: self.sealed_through.map(|s| self.stored(s)),
            findings: self.findings,
            findings_dropped: self.dropped,
            ok,
        }
    }
}

/// Verify one partition's records (store order) against its checkpoints.
pub fn verify_partition<'a, I>(
    partition: u32,
    keys: &KeySet,
    checkpoints: &[Checkpoint],
    opts: VerifyOptions,
    records: I,
) -> PartitionReport
where
    I: IntoIterator<Item = StoredRecord<'a>>,
{
    let mut v = PartitionVerifier::new(partition, keys, checkpoints, opts);
    for r in records {
        v.push(&r);
    }
    v.finish()
}
