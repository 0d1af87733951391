use super::*;
use crate::chain::ChainHead;
use crate::checkpoint::KeySet;
use crate::event::ChainedEvent;
use crate::testing::sample_event;

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
                canonical_version: crate::avro::CANONICAL_VERSION,
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
