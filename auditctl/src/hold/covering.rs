//! Which archive objects a hold must cover: the segments and manifests whose seqs meet the
//! selection, and the checkpoints that seal it (without them the held segments could not be
//! verified later). Pure functions of the listed keys, so they are tested without a store.

use std::collections::BTreeMap;

use schemas::segment::{self, parse_key, ObjectKind, CHECKPOINT_SUFFIX, SEQ_WIDTH};
use serde::{Deserialize, Serialize};

/// What an archive object is, for the covering set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Segment,
    Manifest,
    Checkpoint,
}

/// One covering object: its key relative to the archive root, and the seqs it holds (a
/// checkpoint: its seq twice).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Covered {
    pub key: String,
    pub partition: i32,
    pub kind: Kind,
    pub first_seq: i64,
    pub last_seq: i64,
}

/// The seq of a checkpoint object `checkpoints/chain=<p>/<seq:020>-<key id>[@t<time>].json`
/// of `partition`.
fn checkpoint_seq(key: &str, partition: i32) -> Option<i64> {
    let rest = key.strip_prefix(&segment::checkpoint_prefix(partition))?;
    if !rest.ends_with(CHECKPOINT_SUFFIX) || rest.contains('/') {
        return None;
    }
    let digits = rest.get(..SEQ_WIDTH)?;
    if !digits.bytes().all(|b| b.is_ascii_digit()) || rest.as_bytes().get(SEQ_WIDTH) != Some(&b'-')
    {
        return None;
    }
    digits.parse().ok()
}

/// The objects covering `range` of `partition` (`None`: the whole partition), from the keys
/// listed under the partition's segment folder and its checkpoint folder. Checkpoints that
/// seal the range are those at seqs `A..=S`, S the first checkpoint seq at or after B: each
/// signs (the tree of) every record up to its seq, so S is the one a verification of B needs.
pub fn covering(
    segment_keys: &[String],
    checkpoint_keys: &[String],
    partition: i32,
    range: Option<(i64, i64)>,
) -> Vec<Covered> {
    let r = range.unwrap_or((i64::MIN, i64::MAX));
    covering_ranges(segment_keys, checkpoint_keys, partition, &[r])
}

/// Sorted, overlapping or adjacent ranges merged.
pub(super) fn merged(ranges: &[(i64, i64)]) -> Vec<(i64, i64)> {
    let mut v: Vec<(i64, i64)> = ranges.iter().copied().filter(|(a, b)| a <= b).collect();
    v.sort_unstable();
    let mut out: Vec<(i64, i64)> = Vec::new();
    for (a, b) in v {
        match out.last_mut() {
            Some((_, e)) if a <= e.saturating_add(1) => *e = (*e).max(b),
            _ => out.push((a, b)),
        }
    }
    out
}

/// [`covering`] of several ranges of one partition: the union of each range's covering
/// objects, each object once (a query's matched seqs, grouped by [`seq_ranges`]).
pub fn covering_ranges(
    segment_keys: &[String],
    checkpoint_keys: &[String],
    partition: i32,
    ranges: &[(i64, i64)],
) -> Vec<Covered> {
    let ranges = merged(ranges);
    // Does [first, last] meet a range? Ranges are sorted and disjoint, so their ends are too.
    let meets = |first: i64, last: i64| {
        let i = ranges.partition_point(|r| r.1 < first);
        ranges.get(i).is_some_and(|r| r.0 <= last)
    };
    let mut out = Vec::new();
    for k in segment_keys {
        let Some((key, kind)) = parse_key(k) else {
            continue;
        };
        if key.partition != partition || !meets(key.first_seq, key.last_seq) {
            continue;
        }
        out.push(Covered {
            key: k.clone(),
            partition,
            kind: match kind {
                ObjectKind::Segment => Kind::Segment,
                ObjectKind::Manifest => Kind::Manifest,
            },
            first_seq: key.first_seq,
            last_seq: key.last_seq,
        });
    }
    let mut cps: Vec<(i64, &String)> = checkpoint_keys
        .iter()
        .filter_map(|k| checkpoint_seq(k, partition).map(|s| (s, k)))
        .collect();
    cps.sort();
    // Per range A..B: the checkpoints at A..=S, S the first checkpoint seq >= B (none: to the
    // end, as nothing seals the range yet).
    let mut take = vec![false; cps.len()];
    for &(a, b) in &ranges {
        let from = cps.partition_point(|(s, _)| *s < a);
        let seal = cps
            .get(cps.partition_point(|(s, _)| *s < b))
            .map_or(i64::MAX, |(s, _)| *s);
        let to = cps.partition_point(|(s, _)| *s <= seal);
        for t in take.iter_mut().take(to).skip(from) {
            *t = true;
        }
    }
    for ((s, k), taken) in cps.into_iter().zip(take) {
        if taken {
            out.push(Covered {
                key: k.clone(),
                partition,
                kind: Kind::Checkpoint,
                first_seq: s,
                last_seq: s,
            });
        }
    }
    out.sort_by(|x, y| (x.first_seq, x.kind, &x.key).cmp(&(y.first_seq, y.kind, &y.key)));
    out
}

/// How many seqs of `ranges` no segment of `partition` holds (not archived yet).
pub fn unarchived(segment_keys: &[String], partition: i32, ranges: &[(i64, i64)]) -> u64 {
    let segs: Vec<(i64, i64)> = segment_keys
        .iter()
        .filter_map(|k| parse_key(k))
        .filter(|(key, kind)| key.partition == partition && *kind == ObjectKind::Segment)
        .map(|(key, _)| (key.first_seq, key.last_seq))
        .collect();
    let segs = merged(&segs);
    let mut missing = 0u64;
    for &(a, b) in &merged(ranges) {
        let mut held = 0i64;
        for &(f, l) in &segs {
            let (lo, hi) = (a.max(f), b.min(l));
            if lo <= hi {
                held = held.saturating_add(hi - lo + 1);
            }
        }
        let len = b.saturating_sub(a).saturating_add(1);
        missing = missing.saturating_add(u64::try_from(len - held).unwrap_or(0));
    }
    missing
}

pub(super) fn counts_of(objects: &[Covered]) -> BTreeMap<String, u64> {
    let mut c = BTreeMap::new();
    for k in ["segment", "manifest", "checkpoint"] {
        c.insert(format!("{k}s"), 0);
    }
    for o in objects {
        let k = match o.kind {
            Kind::Segment => "segments",
            Kind::Manifest => "manifests",
            Kind::Checkpoint => "checkpoints",
        };
        *c.entry(k.to_owned()).or_default() += 1;
    }
    c
}

/// Test keys: the segment and manifest of `p`'s seqs `a..=b` (other parts' tests use it too).
#[cfg(test)]
pub(super) fn seg(p: i32, a: i64, b: i64) -> [String; 2] {
    let k = segment::SegmentKey::new(p, "2024-06-01", a, b).expect("key");
    [k.object_key(), k.manifest_key()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn covering_takes_the_intersecting_segments_and_the_sealing_checkpoints() {
        let mut segs: Vec<String> = [seg(0, 1, 10), seg(0, 11, 20), seg(0, 21, 30)]
            .into_iter()
            .flatten()
            .collect();
        segs.push("chain=0/date=2024-06-01/foreign.txt".into());
        let cps = vec![
            segment::checkpoint_key(0, 0, "k1"),
            segment::checkpoint_key(0, 10, "k1"),
            segment::checkpoint_key(0, 20, "k1"),
            segment::checkpoint_heartbeat_key(0, 20, "k1", 5),
            segment::checkpoint_key(0, 30, "k1"),
            segment::checkpoint_key(1, 20, "k1"),
        ];
        let got = covering(&segs, &cps, 0, Some((12, 15)));
        let names: Vec<&str> = got.iter().map(|c| c.key.as_str()).collect();
        let s = seg(0, 11, 20);
        assert_eq!(
            names,
            [
                s[0].as_str(),
                s[1].as_str(),
                &segment::checkpoint_key(0, 20, "k1"),
                &segment::checkpoint_heartbeat_key(0, 20, "k1", 5),
            ]
        );
        // A range across a boundary: both segments, checkpoints 10 and 20 (20 seals 11).
        let got = covering(&segs, &cps, 0, Some((10, 11)));
        assert_eq!(got.iter().filter(|c| c.kind == Kind::Segment).count(), 2);
        let cp_seqs: Vec<i64> = got
            .iter()
            .filter(|c| c.kind == Kind::Checkpoint)
            .map(|c| c.first_seq)
            .collect();
        assert_eq!(cp_seqs, [10, 20, 20]);
        // Past the last checkpoint: every checkpoint from A on (none seals it yet).
        let got = covering(&segs, &cps, 0, Some((29, 40)));
        assert_eq!(got.len(), 3, "{got:?}");
        // The whole partition: everything of partition 0, genesis checkpoint included.
        let got = covering(&segs, &cps, 0, None);
        assert_eq!(got.len(), 6 + 5);
        assert!(covering(&segs, &cps, 2, None).is_empty());
    }

    #[test]
    fn checkpoint_names() {
        assert_eq!(
            checkpoint_seq(&segment::checkpoint_key(3, 42, "key/1"), 3),
            Some(42)
        );
        assert_eq!(
            checkpoint_seq(&segment::checkpoint_heartbeat_key(3, 42, "k", 9), 3),
            Some(42)
        );
        assert_eq!(
            checkpoint_seq(&segment::checkpoint_key(3, 42, "k"), 30),
            None
        );
        assert_eq!(checkpoint_seq("checkpoints/chain=3/x.json", 3), None);
        assert_eq!(checkpoint_seq("checkpoints/chain=3/a/b.json", 3), None);
    }

    #[test]
    fn covering_several_ranges_is_the_union_of_each_range_s_cover() {
        let segs: Vec<String> = [
            seg(0, 1, 10),
            seg(0, 11, 20),
            seg(0, 21, 30),
            seg(0, 31, 35),
        ]
        .into_iter()
        .flatten()
        .collect();
        let cps: Vec<String> = [0, 10, 20, 30]
            .iter()
            .map(|s| segment::checkpoint_key(0, *s, "k1"))
            .chain([segment::checkpoint_heartbeat_key(0, 20, "k1", 5)])
            .collect();
        let cases: &[&[(i64, i64)]] = &[
            &[(3, 3), (25, 26)],
            &[(3, 4), (5, 5), (12, 12)],
            &[(10, 11), (33, 34)],
            &[(31, 31)],
            &[(1, 35)],
            &[(20, 20), (21, 21)],
        ];
        for ranges in cases {
            let mut want: Vec<Covered> = Vec::new();
            for r in ranges.iter() {
                for c in covering(&segs, &cps, 0, Some(*r)) {
                    if !want.iter().any(|w| w.key == c.key) {
                        want.push(c);
                    }
                }
            }
            want.sort_by(|x, y| (x.first_seq, x.kind, &x.key).cmp(&(y.first_seq, y.kind, &y.key)));
            assert_eq!(covering_ranges(&segs, &cps, 0, ranges), want, "{ranges:?}");
        }
        // 3 and 25..=26: segments 1..=10 and 21..=30, checkpoints 10 (seals 3) and 30.
        let got = covering_ranges(&segs, &cps, 0, &[(3, 3), (25, 26)]);
        let seqs: Vec<(Kind, i64)> = got.iter().map(|c| (c.kind, c.first_seq)).collect();
        assert_eq!(
            seqs,
            [
                (Kind::Segment, 1),
                (Kind::Manifest, 1),
                (Kind::Checkpoint, 10),
                (Kind::Segment, 21),
                (Kind::Manifest, 21),
                (Kind::Checkpoint, 30)
            ]
        );
        // Seqs 34..=40: 36..=40 are in no segment.
        assert_eq!(unarchived(&segs, 0, &[(3, 3), (34, 40)]), 5);
        assert_eq!(unarchived(&segs, 1, &[(3, 3)]), 1);
    }
}
