//! Property tests of the chain verifier: valid chains always verify, and every single mutation
//! of stored data is detected *and named* (kind and seq), not merely "something is wrong".
//!
//! Events are random byte strings standing in for canonical Avro bytes: the chain rule and the
//! verifier only ever see bytes.

use std::sync::OnceLock;

use integrity::chain::{ChainHead, ChainRule, Hash32};
use integrity::checkpoint::{
    generate_pkcs8, sign, CheckpointFields, KeySet, PublicKeyEntry, SignedCheckpoint, SigningKey,
};
use integrity::merkle;
use integrity::verify::{
    verify_partition, ExpectedStart, FindingKind, OwnedRecord, PartitionReport, VerifyOptions,
};
use proptest::prelude::*;
use schemas::Checkpoint;

const P: u32 = 7;

fn key() -> &'static SigningKey {
    static K: OnceLock<SigningKey> = OnceLock::new();
    K.get_or_init(|| {
        let doc = generate_pkcs8().expect("keygen");
        SigningKey::from_pkcs8("k1", doc.expose()).expect("key")
    })
}

fn keys() -> KeySet {
    let mut ks = KeySet::default();
    let e: PublicKeyEntry = key().public_entry(0, None);
    ks.add(e).expect("key set");
    ks
}

#[derive(Debug, Clone)]
struct Fixture {
    records: Vec<OwnedRecord>,
    checkpoints: Vec<Checkpoint>,
    hashes: Vec<Hash32>,
}

impl Fixture {
    fn cp_seqs(&self) -> Vec<i64> {
        self.checkpoints.iter().map(|c| c.seq).collect()
    }
    fn last_cp(&self) -> Option<i64> {
        self.cp_seqs().into_iter().max()
    }
}

/// A chain of `events` with a checkpoint every `every` records and, if `seal_tail`, one at the
/// last record too.
fn build(events: &[Vec<u8>], every: usize, seal_tail: bool) -> Fixture {
    build_in(events, every, seal_tail, ChainRule::V1)
}

/// [`build`] under `rule` (v2 chains belong to chain id "test", like the checkpoints).
fn build_in(events: &[Vec<u8>], every: usize, seal_tail: bool, rule: ChainRule) -> Fixture {
    let mut head = ChainHead::genesis_with(rule, "test", P);
    let mut records = Vec::new();
    let mut hashes = Vec::new();
    for (i, ev) in events.iter().enumerate() {
        let l = head.next(ev);
        hashes.push(l.hash);
        records.push(OwnedRecord {
            seq: l.seq as i64,
            prev_hash: l.prev_hash.to_vec(),
            hash: l.hash.to_vec(),
            canonical: ev.clone(),
            event_id: format!("evt-{i}"),
            copy: None,
            canonical_version: schemas::avro::CANONICAL_VERSION,
        });
    }
    let n = events.len();
    let mut ends: Vec<usize> = (1..=n).filter(|s| s % every == 0).collect();
    if seal_tail && ends.last() != Some(&n) && n > 0 {
        ends.push(n);
    }
    let mut checkpoints = Vec::new();
    let mut first = 1usize;
    for end in ends {
        checkpoints.push(
            sign(
                key(),
                &CheckpointFields {
                    chain_id: "test".into(),
                    partition: P,
                    first_seq: first as u64,
                    seq: end as u64,
                    head_hash: hashes[end - 1],
                    merkle_root: merkle::root(&hashes[first - 1..end]),
                    time_us: 1_000 + end as i64,
                    partition_count: 0,
                    tree_root: None,
                },
            )
            .expect("sign"),
        );
        first = end + 1;
    }
    Fixture {
        records,
        checkpoints,
        hashes,
    }
}

/// The link hash under `rule` (the current canonical schema's fingerprint for v2).
fn link(rule: ChainRule, seq: u64, prev: &Hash32, content: &[u8]) -> Hash32 {
    let fp = integrity::chain::schema_fingerprint(schemas::avro::CANONICAL_VERSION).unwrap();
    rule.link(P, seq, fp, prev, content)
}

fn run_with(records: &[OwnedRecord], cps: &[Checkpoint], opts: VerifyOptions) -> PartitionReport {
    verify_partition(
        P,
        &keys(),
        cps,
        opts,
        records.iter().map(OwnedRecord::as_stored),
    )
}

/// Verifies as auditctl does with `--chain-id test` (for v2 chains the chain id fixes the
/// genesis seq 1 must link to).
fn run(fx: &Fixture, records: &[OwnedRecord]) -> PartitionReport {
    run_with(records, &fx.checkpoints, opts())
}

fn opts() -> VerifyOptions {
    VerifyOptions {
        chain_id: Some("test".into()),
        ..VerifyOptions::default()
    }
}

fn kinds(r: &PartitionReport) -> Vec<(FindingKind, i64)> {
    r.findings.iter().map(|f| (f.kind, f.seq)).collect()
}

/// Events, checkpoint spacing, whether the tail is sealed, and the chain rule: every property
/// holds under both rules.
fn arb_chain() -> impl Strategy<Value = (Vec<Vec<u8>>, usize, bool, ChainRule)> {
    (
        prop::collection::vec(prop::collection::vec(any::<u8>(), 1..48), 1..40),
        1usize..12,
        any::<bool>(),
        prop_oneof![Just(ChainRule::V1), Just(ChainRule::V2)],
    )
}

fn pick(i: prop::sample::Index, n: usize) -> usize {
    i.index(n)
}

proptest! {
    #[test]
    fn valid_chains_verify((events, every, seal, rule) in arb_chain()) {
        let fx = build_in(&events, every, seal, rule);
        let r = run(&fx, &fx.records);
        prop_assert!(r.findings.is_empty(), "{:?}", r.findings);
        prop_assert!(r.ok);
        prop_assert_eq!(r.head_seq, events.len() as i64);
        prop_assert_eq!(r.head.clone(), hex::encode(fx.hashes[events.len() - 1]));
        prop_assert_eq!(r.sealed_through, fx.last_cp());
        prop_assert_eq!(r.events, events.len() as u64);
    }

    #[test]
    fn flipped_event_byte_is_a_modified_event(
        (events, every, seal, rule) in arb_chain(), i in any::<prop::sample::Index>(),
        j in any::<prop::sample::Index>(), bit in 0u8..8,
    ) {
        let fx = build_in(&events, every, seal, rule);
        let k = pick(i, events.len());
        let mut recs = fx.records.clone();
        let b = pick(j, recs[k].canonical.len());
        recs[k].canonical[b] ^= 1 << bit;
        let r = run(&fx, &recs);
        prop_assert_eq!(kinds(&r), vec![(FindingKind::ModifiedEvent, k as i64 + 1)]);
        prop_assert_eq!(r.findings[0].event_id.clone(), Some(format!("evt-{k}")));
        prop_assert!(!r.ok);
    }

    #[test]
    fn changed_stored_hash_is_a_modified_hash(
        (events, every, seal, rule) in arb_chain(), i in any::<prop::sample::Index>(),
        j in 0usize..32, truncate in any::<bool>(),
    ) {
        let fx = build_in(&events, every, seal, rule);
        let n = events.len();
        let k = pick(i, n);
        let mut recs = fx.records.clone();
        if truncate { recs[k].hash.pop(); } else { recs[k].hash[j] ^= 0x40; }
        let r = run(&fx, &recs);
        let seq = k as i64 + 1;
        // The last record has no successor to tell a changed hash from a changed event; a
        // checkpoint at that seq does.
        let expected = if k + 1 < n || fx.cp_seqs().contains(&seq) {
            FindingKind::ModifiedHash
        } else {
            FindingKind::ModifiedEvent
        };
        prop_assert_eq!(kinds(&r), vec![(expected, seq)]);
    }

    #[test]
    fn changed_prev_hash_is_a_broken_link(
        (events, every, seal, rule) in arb_chain(), i in any::<prop::sample::Index>(), j in 0usize..32,
    ) {
        let fx = build_in(&events, every, seal, rule);
        let k = pick(i, events.len());
        let mut recs = fx.records.clone();
        recs[k].prev_hash[j] ^= 0x01;
        let r = run(&fx, &recs);
        let expected = if k == 0 { FindingKind::GenesisMismatch } else { FindingKind::BrokenLink };
        prop_assert_eq!(kinds(&r), vec![(expected, k as i64 + 1)]);
    }

    #[test]
    fn deleted_record_is_missing(
        (events, every, seal, rule) in arb_chain(), i in any::<prop::sample::Index>(),
        renumber in any::<bool>(),
    ) {
        let fx = build_in(&events, every, seal, rule);
        let n = events.len();
        let k = pick(i, n);
        let mut recs = fx.records.clone();
        recs.remove(k);
        if renumber {
            for r in recs.iter_mut().skip(k) { r.seq -= 1; }
        }
        let r = run(&fx, &recs);
        let seq = k as i64 + 1;
        let got = kinds(&r);
        if k + 1 == n {
            // The last record: only a checkpoint covering it can tell it was there.
            if fx.last_cp() == Some(n as i64) {
                prop_assert_eq!(got, vec![(FindingKind::TruncatedTail, seq)]);
            } else {
                prop_assert!(got.is_empty(), "{:?}", got);
            }
        } else if k == 0 {
            prop_assert_eq!(got, vec![(FindingKind::GenesisMismatch, 1)]);
        } else {
            prop_assert_eq!(got, vec![(FindingKind::MissingSeq, seq)]);
        }
    }

    #[test]
    fn inserted_record_is_named(
        (events, every, seal, rule) in arb_chain(), i in any::<prop::sample::Index>(),
        forged in prop::collection::vec(any::<u8>(), 1..32), valid_hash in any::<bool>(),
        renumber in any::<bool>(),
    ) {
        let fx = build_in(&events, every, seal, rule);
        let n = events.len();
        let k = pick(i, n); // index the forged record takes
        let prev: Hash32 = if k == 0 { rule.genesis("test", P) } else { fx.hashes[k - 1] };
        let mut content = b"forged:".to_vec();
        content.extend_from_slice(&forged);
        let seq = k as i64 + 1;
        let hash = if valid_hash { link(rule, seq as u64, &prev, &content) } else { [0x5a; 32] };
        let mut recs = fx.records.clone();
        recs.insert(k, OwnedRecord {
            seq, prev_hash: prev.to_vec(), hash: hash.to_vec(), canonical: content,
            event_id: "forged".into(), copy: None,
            canonical_version: schemas::avro::CANONICAL_VERSION,
        });
        if renumber {
            for r in recs.iter_mut().skip(k + 1) { r.seq += 1; }
        }
        let r = run(&fx, &recs);
        // Renumbered: a record whose successor links past it. Not renumbered: it shares a seq
        // with the real record.
        let expected = if renumber { FindingKind::InsertedEvent } else { FindingKind::Fork };
        prop_assert_eq!(kinds(&r), vec![(expected, seq)]);
    }

    #[test]
    fn swapped_adjacent_records_are_reordered(
        (events, every, seal, rule) in arb_chain(), i in any::<prop::sample::Index>(),
        swap_seqs in any::<bool>(),
    ) {
        prop_assume!(events.len() >= 2);
        let fx = build_in(&events, every, seal, rule);
        let k = pick(i, events.len() - 1);
        let mut recs = fx.records.clone();
        recs.swap(k, k + 1);
        if swap_seqs {
            // The records keep their places in seq order, but trade seq numbers (what swapping
            // two rows looks like in a table sorted by seq).
            let s = recs[k].seq;
            recs[k].seq = recs[k + 1].seq;
            recs[k + 1].seq = s;
        }
        prop_assume!(recs[k].canonical != recs[k + 1].canonical);
        let r = run(&fx, &recs);
        prop_assert_eq!(kinds(&r), vec![(FindingKind::Reordered, k as i64 + 1)]);
    }

    #[test]
    fn duplicates_are_told_apart_from_forks(
        (events, every, seal, rule) in arb_chain(), i in any::<prop::sample::Index>(),
        change in any::<bool>(), before in any::<bool>(), j in any::<prop::sample::Index>(),
    ) {
        let fx = build_in(&events, every, seal, rule);
        let k = pick(i, events.len());
        let mut dup = fx.records[k].clone();
        dup.copy = Some(2);
        if change {
            let b = pick(j, dup.canonical.len());
            dup.canonical[b] ^= 0x80;
        }
        let mut recs = fx.records.clone();
        recs.insert(if before { k } else { k + 1 }, dup);
        let r = run(&fx, &recs);
        let seq = k as i64 + 1;
        if change {
            prop_assert_eq!(kinds(&r), vec![(FindingKind::Fork, seq)]);
            prop_assert!(!r.ok);
        } else {
            prop_assert_eq!(kinds(&r), vec![(FindingKind::DuplicateSeq, seq)]);
            prop_assert!(r.ok, "an identical copy is only a warning");
        }
    }

    #[test]
    fn truncation_past_a_checkpoint_is_named(
        (events, every, _seal, rule) in arb_chain(), cut in any::<prop::sample::Index>(),
    ) {
        let fx = build_in(&events, every, true, rule);
        let last_cp = fx.last_cp().unwrap_or(0) as usize;
        let keep = pick(cut, last_cp.max(1)); // keep 0..last_cp-1 records
        let recs = fx.records[..keep].to_vec();
        let r = run(&fx, &recs);
        prop_assert_eq!(kinds(&r), vec![(FindingKind::TruncatedTail, keep as i64 + 1)]);
    }

    #[test]
    fn tampered_checkpoints_are_named(
        (events, every, seal, rule) in arb_chain(), c in any::<prop::sample::Index>(), what in 0usize..11,
        j in 0usize..32,
    ) {
        let fx = build_in(&events, every, seal, rule);
        prop_assume!(!fx.checkpoints.is_empty());
        let ci = pick(c, fx.checkpoints.len());
        let mut cps = fx.checkpoints.clone();
        let cp = &mut cps[ci];
        let expected = match what {
            0 => { cp.chain_id.push('x'); FindingKind::BadCheckpointSignature }
            1 => { cp.partition += 1; FindingKind::BadCheckpointSignature }
            2 => {
                // Another valid range start (or, for a one-record range, an invalid one).
                if cp.seq > 1 { cp.first_seq = if cp.first_seq > 1 { cp.first_seq - 1 } else { 2 }; FindingKind::BadCheckpointSignature }
                else { cp.first_seq = 2; FindingKind::MalformedCheckpoint }
            }
            3 => { cp.seq += 1; FindingKind::BadCheckpointSignature }
            4 => { cp.head_hash[j] ^= 1; FindingKind::BadCheckpointSignature }
            5 => { cp.merkle_root[j] ^= 1; FindingKind::BadCheckpointSignature }
            6 => { cp.time_us += 1; FindingKind::BadCheckpointSignature }
            7 => { cp.key_id = "k9".into(); FindingKind::UnknownKey }
            8 => { cp.signature[j] ^= 4; FindingKind::BadCheckpointSignature }
            9 => { cp.signature.pop(); FindingKind::MalformedCheckpoint }
            _ => { cp.head_hash.truncate(j); FindingKind::MalformedCheckpoint }
        };
        let label = cp.seq;
        let r = run_with(&fx.records, &cps, VerifyOptions::default());
        prop_assert_eq!(kinds(&r), vec![(expected, label)]);
    }

    #[test]
    fn consistent_rewrite_is_caught_by_the_next_checkpoint(
        (events, every, seal, rule) in arb_chain(), i in any::<prop::sample::Index>(),
    ) {
        // The strongest attacker without the key: rewrite an event and recompute every hash
        // after it. Links all check; only a signed checkpoint at or after it can tell.
        let fx = build_in(&events, every, seal, rule);
        let k = pick(i, events.len());
        let mut evs = events.clone();
        evs[k].push(0xee);
        let forged = build_in(&evs, usize::MAX, false, rule);
        let r = run_with(&forged.records, &fx.checkpoints, VerifyOptions::default());
        let next_cp = fx.cp_seqs().into_iter().find(|&s| s > k as i64);
        match next_cp {
            Some(s) => prop_assert_eq!(
                kinds(&r).first().copied(), Some((FindingKind::CheckpointMismatch, s))),
            None => prop_assert!(r.findings.is_empty()),
        }
    }

    #[test]
    fn a_range_store_verifies_from_a_given_start(
        (events, every, seal, rule) in arb_chain(), a in any::<prop::sample::Index>(),
        b in any::<prop::sample::Index>(), bad_start in any::<bool>(),
    ) {
        let fx = build_in(&events, every, seal, rule);
        let n = events.len();
        let lo = pick(a, n);
        let hi = lo + pick(b, n - lo); // records lo..=hi (0-based)
        let mut prev = if lo == 0 { rule.genesis("test", P) } else { fx.hashes[lo - 1] };
        if bad_start { prev[0] ^= 1; }
        let opts = VerifyOptions {
            start: ExpectedStart::after(lo as u64, prev),
            expected_last_seq: Some(hi as u64 + 1),
            ..VerifyOptions::default()
        };
        let r = run_with(&fx.records[lo..=hi], &fx.checkpoints, opts);
        let got = kinds(&r);
        if bad_start {
            prop_assert_eq!(got.iter().find(|f| f.0 == FindingKind::GenesisMismatch).copied(),
                Some((FindingKind::GenesisMismatch, lo as i64 + 1)), "{:?}", got);
        } else {
            prop_assert!(got.is_empty(), "{:?}", got);
            // A segment missing its last record is truncated w.r.t. its manifest.
            if hi > lo {
                let opts = VerifyOptions {
                    start: ExpectedStart::after(lo as u64, prev),
                    expected_last_seq: Some(hi as u64 + 1),
                    ..VerifyOptions::default()
                };
                let r = run_with(&fx.records[lo..hi], &fx.checkpoints, opts);
                prop_assert_eq!(kinds(&r), vec![(FindingKind::TruncatedTail, hi as i64 + 1)]);
            }
        }
    }
}

#[test]
fn report_serialises_for_json_output() {
    let fx = build(&[b"a".to_vec(), b"b".to_vec(), b"c".to_vec()], 2, true);
    let mut recs = fx.records.clone();
    recs[1].canonical[0] ^= 1;
    let r = integrity::verify::Report::new(vec![run(&fx, &recs)]);
    let json = serde_json::to_value(&r).expect("json");
    assert_eq!(json["ok"], false);
    assert_eq!(
        json["partitions"][0]["findings"][0]["kind"],
        "modified_event"
    );
    assert_eq!(json["partitions"][0]["findings"][0]["seq"], 2);
    assert_eq!(json["partitions"][0]["findings"][0]["severity"], "error");
}

proptest! {
    /// Whatever a store returns, the verifier reports and never panics.
    #[test]
    fn arbitrary_store_contents_never_panic(
        recs in prop::collection::vec(
            (-3i64..60, prop::collection::vec(any::<u8>(), 0..40),
             prop::collection::vec(any::<u8>(), 0..40), prop::collection::vec(any::<u8>(), 0..8)),
            0..60),
        window in 0usize..4,
    ) {
        let fx = build(&[b"a".to_vec(), b"b".to_vec(), b"c".to_vec(), b"d".to_vec()], 2, true);
        let owned: Vec<OwnedRecord> = recs.into_iter().map(|(seq, p, h, c)| OwnedRecord {
            seq, prev_hash: p, hash: h, canonical: c, event_id: String::new(), copy: None,
            canonical_version: schemas::avro::CANONICAL_VERSION,
        }).collect();
        let opts = VerifyOptions { reorder_window: window, ..VerifyOptions::default() };
        let r = run_with(&owned, &fx.checkpoints, opts);
        prop_assert!(r.findings.len() <= 1000);
    }

    /// Several mutations at once: never a panic, and any change at or before the last checkpoint
    /// is noticed.
    #[test]
    fn combined_mutations_never_panic_and_are_noticed(
        (events, every, _seal, rule) in arb_chain(),
        ops in prop::collection::vec((0u8..7, any::<prop::sample::Index>(), any::<u8>()), 1..6),
    ) {
        let fx = build_in(&events, every, true, rule);
        let mut recs = fx.records.clone();
        for (op, i, b) in ops {
            if recs.is_empty() { break; }
            let k = i.index(recs.len());
            match op {
                0 => { let l = recs[k].canonical.len(); recs[k].canonical[usize::from(b) % l] ^= 1; }
                1 => recs[k].hash[usize::from(b) % 32] ^= 1,
                2 => recs[k].prev_hash[usize::from(b) % 32] ^= 1,
                3 => { recs.remove(k); }
                4 => { let d = recs[k].clone(); recs.insert(k, d); }
                5 => { if k + 1 < recs.len() { recs.swap(k, k + 1); } }
                _ => recs[k].seq += i64::from(b % 3) - 1,
            }
        }
        let r = run(&fx, &recs);
        let identical = recs.len() == fx.records.len()
            && recs.iter().zip(&fx.records).all(|(a, b)| a == b);
        if !identical {
            // Duplicates alone are only warnings; anything else must make the report not ok.
            let only_dups = recs.len() > fx.records.len() && {
                let mut d = recs.clone();
                d.dedup();
                d == fx.records
            };
            prop_assert!(only_dups || !r.ok, "undetected: {:?}", r.findings);
        }
    }
}

#[test]
fn stream_reordering_farther_than_adjacent_is_reordered() {
    let events: Vec<Vec<u8>> = (0..10u8).map(|i| vec![i]).collect();
    let fx = build(&events, 3, true);
    let mut recs = fx.records.clone();
    let moved = recs.remove(2); // seq 3 stored after seq 7
    recs.insert(6, moved);
    let r = run(&fx, &recs);
    assert_eq!(kinds(&r), vec![(FindingKind::Reordered, 3)]);
    // With no room to wait for it, the same store reads as a gap and a late record.
    let opts = VerifyOptions {
        reorder_window: 1,
        ..VerifyOptions::default()
    };
    let r = run_with(&recs, &fx.checkpoints, opts);
    assert_eq!(r.findings[0].kind, FindingKind::MissingSeq);
    assert_eq!(r.findings[0].seq, 3);
}

#[test]
fn checkpoint_signed_outside_its_key_window_and_other_chain_ids() {
    let events: Vec<Vec<u8>> = (0..4u8).map(|i| vec![i]).collect();
    let fx = build(&events, 2, true);
    // Key set in which k1 was retired before these checkpoints were signed.
    let mut ks = KeySet::default();
    ks.add(key().public_entry(0, Some(500))).expect("key");
    let r = verify_partition(
        P,
        &ks,
        &fx.checkpoints,
        VerifyOptions::default(),
        fx.records.iter().map(OwnedRecord::as_stored),
    );
    assert_eq!(
        kinds(&r),
        vec![
            (FindingKind::KeyNotValidAt, 2),
            (FindingKind::KeyNotValidAt, 4)
        ]
    );
    let opts = VerifyOptions {
        chain_id: Some("other".into()),
        ..VerifyOptions::default()
    };
    let r = run_with(&fx.records, &fx.checkpoints, opts);
    assert!(r
        .findings
        .iter()
        .all(|f| f.kind == FindingKind::CheckpointMismatch));
    assert_eq!(r.findings.len(), 2);
}

#[test]
fn empty_store_with_checkpoints_is_truncated_and_findings_are_bounded() {
    let events: Vec<Vec<u8>> = (0..50u8).map(|i| vec![i]).collect();
    let fx = build(&events, 10, true);
    let r = run(&fx, &[]);
    assert_eq!(kinds(&r), vec![(FindingKind::TruncatedTail, 1)]);
    assert_eq!(r.head_seq, 0);

    let mut recs = fx.records.clone();
    for r in &mut recs {
        r.prev_hash[0] ^= 1;
    }
    let opts = VerifyOptions {
        max_findings: 5,
        ..VerifyOptions::default()
    };
    let r = run_with(&recs, &fx.checkpoints, opts);
    assert_eq!(r.findings.len(), 5);
    assert_eq!(r.findings_dropped, 45);
    assert!(!r.ok);
}

proptest! {
    /// Checkpoint ranges are contiguous: removing any checkpoint but the newest leaves a gap,
    /// one `MissingCheckpoint` at the removed range's first seq. (Removing the newest one, with
    /// the tail it seals, is the truncation that needs heartbeats.)
    #[test]
    fn a_deleted_checkpoint_leaves_a_gap_unless_it_is_the_newest(
        (events, every, seal, rule) in arb_chain(), c in any::<prop::sample::Index>(),
    ) {
        let fx = build_in(&events, every, seal, rule);
        prop_assume!(!fx.checkpoints.is_empty());
        let ci = pick(c, fx.checkpoints.len());
        let mut cps = fx.checkpoints.clone();
        let gone = cps.remove(ci);
        let r = run_with(&fx.records, &cps, VerifyOptions::default());
        if ci + 1 == fx.checkpoints.len() {
            prop_assert!(r.findings.is_empty(), "{:?}", r.findings);
        } else {
            prop_assert_eq!(kinds(&r), vec![(FindingKind::MissingCheckpoint, gone.first_seq)]);
        }
    }

    /// A checkpoint re-signed (with a valid key) at a time before an earlier checkpoint's is
    /// `CheckpointBackdated`, and nothing else.
    #[test]
    fn a_checkpoint_signed_before_an_earlier_one_is_backdated(
        (events, every, seal, rule) in arb_chain(), c in any::<prop::sample::Index>(), back in 1i64..1_000,
    ) {
        let fx = build_in(&events, every, seal, rule);
        prop_assume!(fx.checkpoints.len() >= 2);
        let ci = 1 + pick(c, fx.checkpoints.len() - 1);
        let mut cps = fx.checkpoints.clone();
        let mut fields = SignedCheckpoint::try_from(&cps[ci]).expect("valid").fields;
        fields.time_us = cps[ci - 1].time_us - back;
        cps[ci] = sign(key(), &fields).expect("sign");
        let r = run_with(&fx.records, &cps, VerifyOptions::default());
        prop_assert_eq!(kinds(&r), vec![(FindingKind::CheckpointBackdated, cps[ci].seq)]);
    }
}

/// `audit-chain/v2` binds the chain id into the first link: records of another chain's
/// partition (even with no checkpoint to give them away) fail at seq 1 when verified for this
/// chain, while the same records verify for their own chain.
#[test]
fn a_v2_partition_of_another_chain_fails_at_its_genesis() {
    let events: Vec<Vec<u8>> = (0..6u8).map(|i| vec![i; 20]).collect();
    let mut head = ChainHead::genesis_v2("other", P);
    let records: Vec<OwnedRecord> = events
        .iter()
        .enumerate()
        .map(|(i, ev)| {
            let l = head.next(ev);
            OwnedRecord {
                seq: l.seq as i64,
                prev_hash: l.prev_hash.to_vec(),
                hash: l.hash.to_vec(),
                canonical: ev.clone(),
                canonical_version: schemas::avro::CANONICAL_VERSION,
                event_id: format!("evt-{i}"),
                copy: None,
            }
        })
        .collect();
    let own = run_with(
        &records,
        &[],
        VerifyOptions {
            chain_id: Some("other".into()),
            ..VerifyOptions::default()
        },
    );
    assert!(own.findings.is_empty(), "{:?}", own.findings);
    let r = run_with(&records, &[], opts());
    assert_eq!(kinds(&r), vec![(FindingKind::GenesisMismatch, 1)]);
}

/// v2 binds the canonical schema into every link: the same bytes presented as encoded under
/// another canonical version do not verify; and a v2 chain does not verify under v1.
#[test]
fn v2_links_bind_the_schema_and_the_rule() {
    let events: Vec<Vec<u8>> = (0..5u8).map(|i| vec![i; 30]).collect();
    let fx = build_in(&events, 2, true, ChainRule::V2);
    assert!(run(&fx, &fx.records).findings.is_empty());
    let mut recs = fx.records.clone();
    recs[2].canonical_version = 99;
    let got = kinds(&run(&fx, &recs));
    assert_eq!(
        got.first(),
        Some(&(FindingKind::ModifiedEvent, 3)),
        "{got:?}"
    );
    let as_v1 = run_with(
        &fx.records,
        &fx.checkpoints,
        VerifyOptions {
            rule: Some(ChainRule::V1),
            ..opts()
        },
    );
    assert!(
        !as_v1.ok,
        "a v2 chain verified under v1: {:?}",
        as_v1.findings
    );
    // Same events, v1 and v2: different hashes from the first link on.
    let v1 = build_in(&events, 2, true, ChainRule::V1);
    assert_ne!(v1.hashes[0], fx.hashes[0]);
}
