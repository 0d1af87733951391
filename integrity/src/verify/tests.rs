use super::*;
use crate::chain::ChainHead;
use crate::checkpoint::KeySet;
use schemas::event::ChainedEvent;
use schemas::testing::sample_event;

#[test]
fn archive_finding_kinds_have_stable_names_and_severities() {
    let name = |k: FindingKind| serde_json::to_value(k).unwrap();
    assert_eq!(name(FindingKind::SegmentReplaced), "segment_replaced");
    assert_eq!(
        name(FindingKind::SegmentWithoutManifest),
        "segment_without_manifest"
    );
    assert_eq!(name(FindingKind::MalformedManifest), "malformed_manifest");
    assert_eq!(FindingKind::SegmentReplaced.severity(), Severity::Error);
    assert_eq!(FindingKind::MalformedManifest.severity(), Severity::Error);
    assert_eq!(
        FindingKind::SegmentWithoutManifest.severity(),
        Severity::Warning
    );
    assert_eq!(FindingKind::Fork.severity(), Severity::Error);
}

/// End to end with real events: chain with the canonical Avro bytes, rebuild records the way
/// a store would hand them back, verify; then alter one stored field.
#[test]
fn real_events_verify_and_a_changed_field_is_named() {
    let mut head = ChainHead::genesis(2);
    let mut buf = Vec::new();
    let chained: Vec<ChainedEvent> = (0..5)
        .map(|i| {
            let mut ev = sample_event();
            ev.event_id = format!("evt-{i}");
            let l = head.next_event(&ev, &mut buf).unwrap();
            ChainedEvent {
                chain_partition: 2,
                seq: l.seq as i64,
                prev_hash: l.prev_hash.to_vec(),
                hash: l.hash.to_vec(),
                canonical_version: schemas::avro::CANONICAL_VERSION,
                source_topic: "audit.enriched".into(),
                source_partition: 2,
                source_offset: i,
                event: ev,
            }
        })
        .collect();
    let verify = |evs: &[ChainedEvent]| {
        let recs: Vec<OwnedRecord> = evs
            .iter()
            .map(|c| OwnedRecord::from_chained(c).unwrap())
            .collect();
        verify_partition(
            2,
            &KeySet::default(),
            &[],
            VerifyOptions::default(),
            recs.iter().map(OwnedRecord::as_stored),
        )
    };
    let r = verify(&chained);
    assert!(r.ok && r.findings.is_empty(), "{:?}", r.findings);
    assert_eq!(r.head, hex::encode(head.head));

    let mut tampered = chained.clone();
    tampered[2].event.actor.id = "someone-else".into();
    let r = verify(&tampered);
    let got: Vec<_> = r.findings.iter().map(|f| (f.kind, f.seq)).collect();
    assert_eq!(got, vec![(FindingKind::ModifiedEvent, 3)]);
    assert_eq!(r.findings[0].event_id.as_deref(), Some("evt-2"));
}

/// A chain of `n` real events (receive times `recv0 + i`), its link hashes, and a signer.
struct Signed {
    recs: Vec<(OwnedRecord, i64)>,
    hashes: Vec<crate::chain::Hash32>,
}

fn signed_chain(n: u64, recv0: i64) -> Signed {
    let mut head = ChainHead::genesis(0);
    let mut buf = Vec::new();
    let mut recs = Vec::new();
    let mut hashes = Vec::new();
    for i in 0..n {
        let mut ev = sample_event();
        ev.event_id = format!("evt-{i}");
        ev.receive_time_us = recv0 + i as i64;
        let l = head.next_event(&ev, &mut buf).unwrap();
        hashes.push(l.hash);
        let c = ChainedEvent {
            chain_partition: 0,
            seq: l.seq as i64,
            prev_hash: l.prev_hash.to_vec(),
            hash: l.hash.to_vec(),
            canonical_version: schemas::avro::CANONICAL_VERSION,
            source_topic: "audit.enriched".into(),
            source_partition: 0,
            source_offset: i as i64,
            event: ev,
        };
        recs.push((OwnedRecord::from_chained(&c).unwrap(), recv0 + i as i64));
    }
    Signed { recs, hashes }
}

fn key(id: &str) -> crate::checkpoint::SigningKey {
    let doc = crate::checkpoint::generate_pkcs8().unwrap();
    crate::checkpoint::SigningKey::from_pkcs8(id, doc.expose()).unwrap()
}

fn cp(
    s: &Signed,
    k: &crate::checkpoint::SigningKey,
    first: u64,
    last: u64,
    time_us: i64,
) -> schemas::Checkpoint {
    let fields = crate::checkpoint::CheckpointFields {
        chain_id: "c".into(),
        partition: 0,
        first_seq: first,
        seq: last,
        head_hash: s.hashes[last as usize - 1],
        merkle_root: crate::merkle::root(&s.hashes[first as usize - 1..last as usize]),
        time_us,
        partition_count: 0,
        tree_root: None,
    };
    crate::checkpoint::sign(k, &fields).unwrap()
}

fn run_timed(
    s: &Signed,
    keys: &KeySet,
    cps: &[schemas::Checkpoint],
    timed: bool,
) -> PartitionReport {
    let mut v = PartitionVerifier::new(0, keys, cps, VerifyOptions::default());
    for (r, t) in &s.recs {
        v.push_timed(&r.as_stored(), timed.then_some(*t));
    }
    v.finish()
}

fn kinds(r: &PartitionReport) -> Vec<(FindingKind, i64)> {
    r.findings.iter().map(|f| (f.kind, f.seq)).collect()
}

/// Checkpoint ranges are contiguous; a deleted middle (or first) checkpoint leaves a gap.
#[test]
fn a_deleted_middle_checkpoint_is_a_missing_checkpoint() {
    let s = signed_chain(30, 1_000);
    let k = key("k1");
    let mut keys = KeySet::default();
    keys.add(k.public_entry(0, None)).unwrap();
    let all = vec![
        cp(&s, &k, 1, 10, 2_000),
        cp(&s, &k, 11, 20, 2_001),
        cp(&s, &k, 21, 30, 2_002),
    ];
    let r = run_timed(&s, &keys, &all, true);
    assert!(r.ok && r.findings.is_empty(), "{:?}", r.findings);
    assert_eq!(r.sealed_through, Some(30));
    let r = run_timed(&s, &keys, &[all[0].clone(), all[2].clone()], true);
    assert_eq!(kinds(&r), vec![(FindingKind::MissingCheckpoint, 11)]);
    let r = run_timed(&s, &keys, &[all[1].clone(), all[2].clone()], true);
    assert_eq!(kinds(&r), vec![(FindingKind::MissingCheckpoint, 1)]);
    assert_eq!(
        serde_json::to_value(FindingKind::MissingCheckpoint).unwrap(),
        "missing_checkpoint"
    );
}

/// The same range signed twice with different ends (a checkpoint that landed after its writer
/// gave up on it, then the recovered task's own): both are prefixes of the chain and verify; a
/// shorter one whose root does not match is still a mismatch.
#[test]
fn a_range_signed_again_with_another_end_verifies_and_a_wrong_root_does_not() {
    let s = signed_chain(30, 1_000);
    let k = key("k1");
    let mut keys = KeySet::default();
    keys.add(k.public_entry(0, None)).unwrap();
    let both = vec![
        cp(&s, &k, 1, 10, 2_000),
        cp(&s, &k, 11, 17, 2_001),
        cp(&s, &k, 11, 30, 2_002),
    ];
    let r = run_timed(&s, &keys, &both, true);
    assert!(r.ok && r.findings.is_empty(), "{:?}", r.findings);
    assert_eq!(r.sealed_through, Some(30));
    // The short one over other leaves: named at its seq.
    let mut bad = crate::checkpoint::SignedCheckpoint::try_from(&both[1]).unwrap();
    bad.fields.merkle_root = crate::merkle::root(&s.hashes[11..17]);
    let bad = crate::checkpoint::sign(&k, &bad.fields).unwrap();
    let r = run_timed(&s, &keys, &[both[0].clone(), bad, both[2].clone()], true);
    assert_eq!(kinds(&r), vec![(FindingKind::CheckpointMismatch, 17)]);
}

/// A retired key's holder re-seals the tail with a checkpoint whose time is set back into the
/// key's validity window: the signature and key window check, but the time is before the
/// events it covers were received and before the previous checkpoint.
#[test]
fn a_checkpoint_backdated_into_a_retired_keys_window_is_found() {
    let retired_at = 5_000;
    let s = signed_chain(30, 10_000);
    let (old, new) = (key("old"), key("new"));
    let mut keys = KeySet::default();
    keys.add(old.public_entry(0, Some(retired_at))).unwrap();
    keys.add(new.public_entry(retired_at, None)).unwrap();
    let honest = vec![
        cp(&s, &new, 1, 10, 20_000),
        cp(&s, &new, 11, 20, 20_001),
        cp(&s, &new, 21, 30, 20_002),
    ];
    assert!(run_timed(&s, &keys, &honest, true).ok);
    let mut forged = honest.clone();
    forged[2] = cp(&s, &old, 21, 30, retired_at - 1);
    let r = run_timed(&s, &keys, &forged, true);
    let got = kinds(&r);
    assert!(!r.ok);
    assert!(
        got.iter()
            .all(|k| *k == (FindingKind::CheckpointBackdated, 30)),
        "{got:?}"
    );
    assert_eq!(
        got.len(),
        2,
        "receive time and previous checkpoint: {got:?}"
    );
    // Without receive times (a store that cannot give them), the order of checkpoint times
    // alone still catches it.
    let r = run_timed(&s, &keys, &forged, false);
    assert_eq!(kinds(&r), vec![(FindingKind::CheckpointBackdated, 30)]);
    // A first checkpoint backdated is caught by the receive times.
    let mut first = honest.clone();
    first[0] = cp(&s, &old, 1, 10, retired_at - 1);
    let r = run_timed(&s, &keys, &first, true);
    assert_eq!(kinds(&r), vec![(FindingKind::CheckpointBackdated, 10)]);
}

/// v3 checkpoints sign the root of the partition's whole tree: each must be the RFC 9162 root
/// over the link hashes of seqs 1..=seq, recomputed while streaming. A consistent rewrite of
/// an earlier range under a later valid checkpoint cannot keep the later whole-tree root.
#[test]
fn whole_tree_roots_of_v3_checkpoints_are_recomputed() {
    let s = signed_chain(30, 1_000);
    let k = key("k1");
    let mut keys = KeySet::default();
    keys.add(k.public_entry(0, None)).unwrap();
    let v3 = |first: u64, last: u64, time: i64, tree: crate::chain::Hash32| {
        let mut f = crate::checkpoint::SignedCheckpoint::try_from(&cp(&s, &k, first, last, time))
            .unwrap()
            .fields;
        f.tree_root = Some(tree);
        crate::checkpoint::sign(&k, &f).unwrap()
    };
    let whole = |n: usize| crate::tree::root_of(&leaves(&s.hashes[..n]));
    let good = vec![
        v3(1, 10, 2_000, whole(10)),
        v3(11, 20, 2_001, whole(20)),
        v3(21, 30, 2_002, whole(30)),
    ];
    let r = run_timed(&s, &keys, &good, true);
    assert!(r.ok && r.findings.is_empty(), "{:?}", r.findings);
    assert_eq!(r.sealed_through, Some(30));

    // Signed by the key, but over another tree (here: only the range's leaves, the v2 root).
    let wrong = v3(
        11,
        20,
        2_001,
        crate::tree::root_of(&leaves(&s.hashes[10..20])),
    );
    let r = run_timed(&s, &keys, &[good[0].clone(), wrong, good[2].clone()], true);
    assert_eq!(kinds(&r), vec![(FindingKind::CheckpointMismatch, 20)]);
    assert!(
        r.findings[0].detail.contains("tree root"),
        "{:?}",
        r.findings
    );
    assert_eq!(r.sealed_through, Some(30));

    // Verifying from a trusted mid-chain start: the left part of the tree is unknown, so the
    // whole-tree root is not checked (and not failed).
    let opts = VerifyOptions {
        start: crate::verify::ExpectedStart {
            seq: 10,
            prev_hash: s.hashes[9],
        },
        ..VerifyOptions::default()
    };
    let mut v = PartitionVerifier::new(0, &keys, &good, opts);
    for (r, t) in &s.recs[10..] {
        v.push_timed(&r.as_stored(), Some(*t));
    }
    let r = v.finish();
    assert!(r.ok && r.findings.is_empty(), "{:?}", r.findings);
}

fn leaves(hashes: &[crate::chain::Hash32]) -> Vec<crate::chain::Hash32> {
    hashes.iter().map(|h| crate::tree::leaf_hash(h)).collect()
}
