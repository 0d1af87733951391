//! Pure decisions over what the archive holds: where a partition resumes (from a listing), and
//! what an already-existing object means for a write-once retry (same, equivalent, or a fork).

use schemas::segment::{self, ObjectKind, SegmentKey, SegmentMeta};
use std::collections::{BTreeMap, HashSet};

/// What a listing of `chain=<p>/` says.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ResumePlan {
    /// The segment with the highest `last_seq` (the resume point), if any.
    pub latest: Option<SegmentKey>,
    /// Segments without a manifest (a crash between the two puts): repair these. Sorted by seq.
    pub missing_manifests: Vec<SegmentKey>,
    /// Segments whose seq ranges overlap an earlier one (only two writers of one partition can
    /// cause that; their content is identical if the chain is deterministic). For alarms.
    pub overlaps: Vec<(SegmentKey, SegmentKey)>,
}

/// Plans the resume of `partition` from the object names under `chain=<partition>/` (relative
/// to the archive root). Only the names are used: they encode the ranges, so no object is read.
pub fn plan_resume<'a>(partition: i32, keys: impl IntoIterator<Item = &'a str>) -> ResumePlan {
    let mut segments = BTreeMap::new();
    let mut manifests = HashSet::new();
    for k in keys {
        let Some((key, kind)) = segment::parse_key(k) else {
            continue;
        };
        if key.partition != partition {
            continue;
        }
        match kind {
            ObjectKind::Segment => {
                segments.insert((key.first_seq, key.last_seq, key.date.clone()), key);
            }
            ObjectKind::Manifest => {
                manifests.insert(key);
            }
        }
    }
    let mut plan = ResumePlan::default();
    let mut prev: Option<&SegmentKey> = None;
    for key in segments.values() {
        if !manifests.contains(key) {
            plan.missing_manifests.push(key.clone());
        }
        if let Some(p) = prev {
            if key.first_seq <= p.last_seq {
                plan.overlaps.push((p.clone(), key.clone()));
            }
        }
        // Highest last_seq wins; among equals, the one with a manifest, then the longest.
        let better = match &plan.latest {
            None => true,
            Some(l) => {
                (
                    key.last_seq,
                    manifests.contains(key),
                    std::cmp::Reverse(key.first_seq),
                ) > (
                    l.last_seq,
                    manifests.contains(l),
                    std::cmp::Reverse(l.first_seq),
                )
            }
        };
        if better {
            plan.latest = Some(key.clone());
        }
        if prev.is_none_or(|p| key.last_seq > p.last_seq) {
            prev = Some(key);
        }
    }
    plan
}

/// What an object found at a segment's key (after `PutMode::Create` said it exists) means.
#[derive(Debug, Clone, PartialEq)]
pub enum Existing {
    /// Byte-identical: our earlier attempt (or an identical writer) got there first.
    Identical,
    /// Different bytes, same records (e.g. written by another writer version): fine.
    Equivalent(SegmentMeta),
    /// Different records under the same name: a fork. Never overwritten; alarm.
    Fork {
        detail: String,
        /// The stored segment's metadata, if it could be read.
        existing: Option<SegmentMeta>,
    },
}

/// Compares our segment `ours` with the stored `existing` bytes: decoded, record by record,
/// when the bytes differ (rare: a retry after a crash finds identical bytes).
pub fn classify_existing(ours: &[u8], existing: &[u8]) -> Existing {
    if ours == existing {
        return Existing::Identical;
    }
    let events = match segment::read_segment(ours) {
        Ok((_, events)) => events,
        // Not expected (the writer's segments read back, tested); never overwrite on it.
        Err(e) => {
            return Existing::Fork {
                detail: format!("our own segment does not read back ({e}); keeping the stored one"),
                existing: segment::read_segment(existing).ok().map(|(m, _)| m),
            }
        }
    };
    let events = events.as_slice();
    match segment::read_segment(existing) {
        Ok((meta, stored)) if stored == events => Existing::Equivalent(meta),
        Ok((meta, stored)) => {
            let first_diff = stored
                .iter()
                .zip(events)
                .find(|(a, b)| a != b)
                .map(|(a, _)| format!("first differing record: seq {}", a.seq))
                .unwrap_or_else(|| {
                    format!("{} stored records, {} ours", stored.len(), events.len())
                });
            Existing::Fork {
                detail: first_diff,
                existing: Some(meta),
            }
        }
        Err(e) => Existing::Fork {
            detail: format!("stored object is not a readable segment: {e}"),
            existing: None,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use schemas::segment::{write_segment, write_segment_with, BlockCodec, SegmentMeta};
    use schemas::ChainedEvent;

    fn key(p: i32, date: &str, a: i64, b: i64) -> SegmentKey {
        SegmentKey::new(p, date, a, b).expect("valid")
    }

    #[test]
    fn resume_from_the_highest_last_seq_across_days() {
        let k1 = key(0, "2024-06-01", 1, 100);
        let k2 = key(0, "2024-06-02", 101, 150);
        // A late event made a segment in an older day folder with higher seqs.
        let k3 = key(0, "2024-05-30", 151, 151);
        let names = [
            k1.object_key(),
            k1.manifest_key(),
            k2.object_key(),
            k2.manifest_key(),
            k3.object_key(),
            k3.manifest_key(),
            "chain=0/date=2024-06-01/junk.txt".to_owned(),
            key(1, "2024-06-09", 1, 999).object_key(), // another partition
        ];
        let plan = plan_resume(0, names.iter().map(String::as_str));
        assert_eq!(plan.latest, Some(k3));
        assert!(plan.missing_manifests.is_empty());
        assert!(plan.overlaps.is_empty());
    }

    #[test]
    fn a_missing_manifest_is_planned_for_repair() {
        let k1 = key(2, "2024-06-01", 1, 10);
        let k2 = key(2, "2024-06-01", 11, 20);
        let names = [k1.object_key(), k1.manifest_key(), k2.object_key()];
        let plan = plan_resume(2, names.iter().map(String::as_str));
        assert_eq!(plan.latest, Some(k2.clone()));
        assert_eq!(plan.missing_manifests, vec![k2]);
    }

    #[test]
    fn a_manifest_without_its_segment_is_ignored_and_empty_means_no_resume_point() {
        let k = key(0, "2024-06-01", 1, 10);
        let plan = plan_resume(0, [k.manifest_key().as_str()]);
        assert_eq!(plan, ResumePlan::default());
    }

    #[test]
    fn overlaps_are_reported() {
        let a = key(0, "2024-06-01", 1, 50);
        let b = key(0, "2024-06-01", 1, 80);
        let names = [
            a.object_key(),
            a.manifest_key(),
            b.object_key(),
            b.manifest_key(),
        ];
        let plan = plan_resume(0, names.iter().map(String::as_str));
        assert_eq!(plan.latest, Some(b.clone()));
        assert_eq!(plan.overlaps, vec![(a, b)]);
    }

    fn events(n: i64) -> Vec<ChainedEvent> {
        let mut ev = schemas::testing::sample_event();
        ev.event_time_us = 1_717_200_000_000_000;
        (1..=n)
            .map(|seq| ChainedEvent {
                chain_partition: 0,
                seq,
                prev_hash: vec![seq as u8 - 1; 32],
                hash: vec![seq as u8; 32],
                canonical_version: 1,
                source_topic: "audit.enriched".into(),
                source_partition: 0,
                source_offset: seq,
                event: ev.clone(),
            })
            .collect()
    }

    fn bytes(events: &[ChainedEvent], writer: &str) -> Vec<u8> {
        let n = events.len() as i64;
        let meta =
            SegmentMeta::for_events(events, "audit.chained", 0, n - 1, writer).expect("meta");
        write_segment(&meta, events).expect("write")
    }

    #[test]
    fn fork_detection() {
        let ours = events(3);
        let b = bytes(&ours, "sink-archive/1");
        assert_eq!(classify_existing(&b, &b), Existing::Identical);
        // Another writer version: other bytes, same records.
        let other_writer = bytes(&ours, "sink-archive/2");
        assert!(matches!(
            classify_existing(&b, &other_writer),
            Existing::Equivalent(_)
        ));
        // A sink set to the other codec (a retry after `--segment-codec` changed): other
        // bytes, same records, both ways.
        let meta =
            SegmentMeta::for_events(&ours, "audit.chained", 0, 2, "sink-archive/1").expect("meta");
        let zstd = write_segment_with(&meta, &ours, BlockCodec::Zstandard).expect("write");
        assert_ne!(zstd, b);
        assert!(matches!(
            classify_existing(&zstd, &b),
            Existing::Equivalent(_)
        ));
        assert!(matches!(
            classify_existing(&b, &zstd),
            Existing::Equivalent(_)
        ));
        // Same range, different content: fork.
        let mut theirs = ours.clone();
        theirs[1].event.event_id = "evt-zombie".into();
        let t = bytes(&theirs, "sink-archive/1");
        match classify_existing(&b, &t) {
            Existing::Fork { detail, existing } => {
                assert!(detail.contains("seq 2"), "{detail}");
                assert!(existing.is_some());
            }
            other => panic!("expected a fork, got {other:?}"),
        }
        // Garbage at the key: also a fork (never overwritten).
        assert!(matches!(
            classify_existing(&b, b"not avro"),
            Existing::Fork { existing: None, .. }
        ));
    }
}
