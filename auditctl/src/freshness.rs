//! The signed partition set and freshness, checked on top of a store's verification report.
//!
//! Every checkpoint the chainer signs since checkpoint v2 carries the chain's partition count
//! (`partition_count`, inside the signature), and the chainer re-signs an idle partition's last
//! checkpoint every heartbeat period. From the valid checkpoints a store holds:
//!
//! - **Signed set.** A partition below the highest signed count of which the store holds
//!   nothing (no record, no checkpoint) is `partition_missing_from_signed_set`: it was deleted
//!   whole, rows and checkpoints, which the store alone otherwise cannot show (no pin needed).
//!   A count that goes down between checkpoints is `partition_count_decreased` (Kafka cannot
//!   shrink a topic); one that goes up is `partition_count_changed`, a warning (the input topic
//!   was given partitions, a deliberate operator action, shown once per partition).
//! - **Freshness.** Per partition, the newest valid checkpoint's time and age, and the unsealed
//!   tail (stored records after the last checkpoint that matched the chain). With
//!   `--max-checkpoint-age`, a partition whose newest valid checkpoint is older (or that has
//!   none) is `checkpoint_stale`. With heartbeats on, an idle partition stays fresh, so a tail
//!   cut together with its newest checkpoints (and the heartbeats after them) shows as stale.
//! - **Superseded genesis.** A partition whose newest valid checkpoint is its genesis
//!   checkpoint (size 0) and of which the store holds no record looks like one that never
//!   received an event. Heartbeats keep a truly empty partition's genesis as fresh as the other
//!   partitions' checkpoints, while a partition that got events stops re-signing its genesis.
//!   So when that genesis is older than the newest valid checkpoint of any other partition by
//!   more than `--max-partition-lag` (default 10m), it is `genesis_checkpoint_superseded`: the
//!   partition's records and every later checkpoint were deleted, keeping only the genesis
//!   ones (or its chainer stopped heartbeating while the others ran).
//! - **Superseded head.** The same holds for every partition: the chainer re-signs an idle
//!   partition's head every heartbeat period, and a busy one gets range checkpoints more
//!   often, so each partition's newest valid checkpoint keeps up with the chain's newest. One
//!   that lags it by more than `--max-partition-lag` is `checkpoint_superseded`: its newer
//!   checkpoints were deleted (with its tail: a rollback of one partition, caught with no pin
//!   and no clock), or its chainer stopped while the others ran. This is what a signed
//!   statement over all partitions' heads would give, made from the per-partition statements
//!   the chainer already signs (each carrying the partition count): the signers of a chain are
//!   several chainer instances, one per group member, and none of them holds every head. A
//!   rollback of every partition at once leaves nothing newer to compare with: the clock
//!   (`--max-checkpoint-age`), a pin or a witness (`rollback_below_trusted`) and the
//!   write-once anchor (`verify --anchor`) catch that.
//!
//! Signatures are checked here again (one Ed25519 verification per checkpoint) rather than
//! taken from the verifier, so that this check depends only on the key set and the chain id.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use integrity::checkpoint::{verify_signed, KeySet, SignedCheckpoint};
use integrity::verify::Report;
use schemas::Checkpoint;
use serde::Serialize;

use crate::anchors::mark_failed;

/// One valid checkpoint, as far as freshness needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Signed {
    time_us: i64,
    seq: u64,
    partition_count: u32,
    /// A genesis checkpoint (size 0): what an empty partition is re-signed as.
    genesis: bool,
}

/// The valid checkpoints of one store, by partition (from [`summarize`]).
#[derive(Debug, Clone, Default)]
pub struct SignedSummary {
    /// `false` when no key set was given: nothing was checked.
    pub checked: bool,
    by_partition: BTreeMap<u32, Vec<Signed>>,
}

/// Keeps the checkpoints that verify with `keys` (and name `chain_id`, if given).
pub fn summarize(cps: &[Checkpoint], keys: &KeySet, chain_id: Option<&str>) -> SignedSummary {
    let mut out = SignedSummary {
        checked: true,
        by_partition: BTreeMap::new(),
    };
    for cp in cps {
        let Ok(s) = SignedCheckpoint::try_from(cp) else {
            continue;
        };
        if verify_signed(keys, &s).is_err() || chain_id.is_some_and(|c| c != s.fields.chain_id) {
            continue;
        }
        out.by_partition
            .entry(s.fields.partition)
            .or_default()
            .push(Signed {
                time_us: s.fields.time_us,
                seq: s.fields.seq,
                partition_count: s.fields.partition_count,
                genesis: s.fields.is_genesis(),
            });
    }
    for list in out.by_partition.values_mut() {
        list.sort_by_key(|c| (c.time_us, c.seq));
    }
    out
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FreshnessKind {
    /// The signed partition count names a partition the store holds nothing of.
    PartitionMissingFromSignedSet,
    /// The signed partition count went down between two checkpoints of a partition.
    PartitionCountDecreased,
    /// The signed partition count went up (warning: the input topic was extended).
    PartitionCountChanged,
    /// The newest valid checkpoint is older than `--max-checkpoint-age`, or there is none.
    CheckpointStale,
    /// A partition without records whose newest valid checkpoint is its genesis one, older than
    /// another partition's newest valid checkpoint by more than `--max-partition-lag`.
    GenesisCheckpointSuperseded,
    /// A partition with records whose newest valid checkpoint is older than another
    /// partition's newest valid checkpoint by more than `--max-partition-lag`.
    CheckpointSuperseded,
}

impl FreshnessKind {
    pub fn name(self) -> &'static str {
        match self {
            FreshnessKind::PartitionMissingFromSignedSet => "partition_missing_from_signed_set",
            FreshnessKind::PartitionCountDecreased => "partition_count_decreased",
            FreshnessKind::PartitionCountChanged => "partition_count_changed",
            FreshnessKind::CheckpointStale => "checkpoint_stale",
            FreshnessKind::GenesisCheckpointSuperseded => "genesis_checkpoint_superseded",
            FreshnessKind::CheckpointSuperseded => "checkpoint_superseded",
        }
    }

    /// Only an increase of the count is a warning; everything else fails the run.
    pub fn is_error(self) -> bool {
        self != FreshnessKind::PartitionCountChanged
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FreshnessFinding {
    pub partition: u32,
    /// The seq the finding is about (the checkpoint's, or the store's last seq; 0 if none).
    pub seq: u64,
    pub kind: FreshnessKind,
    pub error: bool,
    pub detail: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PartitionFreshness {
    pub partition: u32,
    /// Highest stored seq.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_seq: Option<i64>,
    /// Highest seq a valid checkpoint matched (the verifier's `sealed_through`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sealed_through: Option<i64>,
    /// Stored records after `sealed_through`: the unsealed tail.
    pub unsealed_records: u64,
    /// The newest valid checkpoint (by signing time): its seq, time and age.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub newest_checkpoint_seq: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub newest_checkpoint_time_us: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checkpoint_age_secs: Option<u64>,
    /// The partition count that checkpoint signs (absent: a v1 checkpoint).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signed_partition_count: Option<u32>,
}

/// `--json`: the `freshness` object of a store.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FreshnessReport {
    /// The highest partition count any valid checkpoint signs (absent: only v1 checkpoints,
    /// or none).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signed_partition_count: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_checkpoint_age_secs: Option<u64>,
    /// `--max-genesis-lag` (absent: the check is off).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_partition_lag_secs: Option<u64>,
    pub partitions: Vec<PartitionFreshness>,
    pub findings: Vec<FreshnessFinding>,
    pub ok: bool,
}

/// Parses `--max-checkpoint-age`: a whole number with a unit `s`, `m`, `h` or `d` (`90s`,
/// `5m`, `2h`, `1d`), or plain seconds.
pub fn parse_age(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 90s, 5m, 2h or 1d"))?;
    let mul = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (s, m, h or d)")),
    };
    n.checked_mul(mul)
        .filter(|&secs| secs > 0)
        .map(Duration::from_secs)
        .ok_or_else(|| format!("{s:?} must be above zero and fit in u64 seconds"))
}

/// The default `--max-genesis-lag`: ten default heartbeat periods (`--checkpoint-heartbeat-secs`
/// 60), so that a missed beat or two, the sinks' lag and clock skew between chainer instances
/// never reach it.
pub const DEFAULT_MAX_PARTITION_LAG: &str = "10m";

/// Parses `--max-genesis-lag`: a duration as [`parse_age`], or `0` / `off` (the check is off:
/// [`Duration::ZERO`]).
pub fn parse_lag(s: &str) -> Result<Duration, String> {
    match s.trim() {
        "0" | "off" => Ok(Duration::ZERO),
        _ => parse_age(s),
    }
}

/// The limits of [`check`] (from the verify flags).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    /// `--max-checkpoint-age` (`None`: no age limit).
    pub max_age: Option<Duration>,
    /// `--max-partition-lag` (`None` or zero: off).
    pub max_partition_lag: Option<Duration>,
}

/// `genesis_checkpoint_superseded` and `checkpoint_superseded`: for each partition asked about
/// (`wanted`), compares the time of its newest valid checkpoint with the newest valid
/// checkpoint of every other partition the store holds. A chainer re-signs an idle
/// partition's head (an empty partition's genesis) every heartbeat period, so a partition
/// whose newest statement is far behind the others' is missing its newer checkpoints: when the
/// store holds no record of it and that statement is its genesis, the partition got events
/// and they were deleted with every checkpoint but the genesis ones; otherwise its newer
/// checkpoints (and the tail they sealed) were deleted. Either way, or its chainer stopped
/// while the others ran.
fn superseded(
    summary: &SignedSummary,
    report: &Report,
    wanted: impl Fn(u32) -> bool,
    max_lag: Duration,
) -> Vec<FreshnessFinding> {
    let max_us = i64::try_from(max_lag.as_micros()).unwrap_or(i64::MAX);
    let with_records: BTreeMap<u32, i64> = report
        .partitions
        .iter()
        .filter(|r| r.events > 0)
        .filter_map(|r| Some((u32::try_from(r.partition).ok()?, r.last_seq.unwrap_or(0))))
        .collect();
    let newest: BTreeMap<u32, Signed> = summary
        .by_partition
        .iter()
        .filter_map(|(&p, l)| l.iter().max_by_key(|c| (c.time_us, c.seq)).map(|c| (p, *c)))
        .collect();
    let mut out = Vec::new();
    for (&p, g) in &newest {
        if !wanted(p) {
            continue;
        }
        let Some((&q, o)) = newest
            .iter()
            .filter(|(&q, _)| q != p)
            .max_by_key(|(_, c)| (c.time_us, c.seq))
        else {
            continue;
        };
        let lag = o.time_us.saturating_sub(g.time_us);
        if lag <= max_us {
            continue;
        }
        let behind = format!(
            "partition {q}'s newest valid checkpoint (seq {}, time_us {}) is {}s newer, more than --max-partition-lag {}s",
            o.seq,
            o.time_us,
            lag / 1_000_000,
            max_lag.as_secs()
        );
        let (kind, detail) = match with_records.get(&p) {
            None if g.genesis => (
                FreshnessKind::GenesisCheckpointSuperseded,
                format!(
                    "the store holds no record of partition {p} and its newest valid checkpoint is its genesis checkpoint (size 0, time_us {}), but {behind}: heartbeats re-sign an empty partition's genesis, so this partition's records and later checkpoints were deleted (or its chainer stopped heartbeating while the others ran)",
                    g.time_us
                ),
            ),
            last => (
                FreshnessKind::CheckpointSuperseded,
                format!(
                    "partition {p}'s newest valid checkpoint (seq {}, time_us {}) is older than the chain's: {behind}; heartbeats re-sign an idle partition's head, so this partition's newer checkpoints were deleted{} (or its chainer stopped while the others ran)",
                    g.seq,
                    g.time_us,
                    match last {
                        Some(&l) if l > i64::try_from(g.seq).unwrap_or(i64::MAX) => format!(
                            ", and the records after seq {} (the store holds up to seq {l}) are sealed by nothing",
                            g.seq
                        ),
                        _ => ", with the tail they sealed if it is gone too".to_owned(),
                    }
                ),
            ),
        };
        out.push(FreshnessFinding {
            partition: p,
            seq: g.seq,
            kind,
            error: true,
            detail,
        });
    }
    out
}

/// Checks the signed set and freshness of one store's `report` (partitions in `only`, all if
/// empty), adding failed or missing partitions to it like every other finding.
///
/// A partition that never received an event still has its genesis checkpoint (size 0, signed
/// by the chainer that took it over), so one of which the store holds nothing was deleted
/// whole: `partition_missing_from_signed_set` is an error when `all_written` (the default;
/// `--allow-unattested-partitions` clears it, for stores from chainers before genesis
/// checkpoints), and pins (`trusted_partition_missing`) catch the deletion of a partition seen
/// before. A partition deleted but for its genesis checkpoints, or rolled back together with
/// its newest checkpoints, is caught by [`superseded`] under `limits.max_partition_lag`.
pub fn check(
    summary: &SignedSummary,
    report: &mut Report,
    limits: Limits,
    now_us: i64,
    only: &BTreeSet<u32>,
    all_written: bool,
) -> FreshnessReport {
    let wanted = |p: u32| only.is_empty() || only.contains(&p);
    let max_age = limits.max_age;
    let max_partition_lag = limits.max_partition_lag.filter(|d| !d.is_zero());
    let mut findings = Vec::new();
    let signed_count = summary
        .by_partition
        .iter()
        .filter(|(p, _)| wanted(**p))
        .flat_map(|(_, l)| l.iter().map(|c| c.partition_count))
        .filter(|&n| n > 0)
        .max();
    // Count changes, in signing order per partition.
    for (&p, list) in summary.by_partition.iter().filter(|(p, _)| wanted(**p)) {
        let mut prev: Option<Signed> = None;
        for c in list.iter().filter(|c| c.partition_count > 0) {
            if let Some(b) = prev.filter(|b| b.partition_count != c.partition_count) {
                let kind = if c.partition_count < b.partition_count {
                    FreshnessKind::PartitionCountDecreased
                } else {
                    FreshnessKind::PartitionCountChanged
                };
                findings.push(FreshnessFinding {
                    partition: p,
                    seq: c.seq,
                    kind,
                    error: kind.is_error(),
                    detail: format!(
                        "the checkpoint at seq {} (time_us {}) signs {} partitions, the one before it (seq {}, time_us {}) signed {}",
                        c.seq, c.time_us, c.partition_count, b.seq, b.time_us, b.partition_count
                    ),
                });
            }
            prev = Some(*c);
        }
    }
    // The signed set: every partition below the count must be in the store.
    // A valid checkpoint of the partition (its genesis one at least) or a record.
    let present: BTreeSet<u32> = report
        .partitions
        .iter()
        .filter(|r| r.events > 0)
        .filter_map(|r| u32::try_from(r.partition).ok())
        .chain(summary.by_partition.keys().copied())
        .collect();
    if let Some(n) = signed_count {
        for p in (0..n).filter(|p| wanted(*p) && !present.contains(p)) {
            findings.push(FreshnessFinding {
                partition: p,
                seq: 0,
                kind: FreshnessKind::PartitionMissingFromSignedSet,
                error: all_written,
                detail: format!(
                    "signed checkpoints say the chain has {n} partitions, but the store holds no record and no checkpoint of partition {p}, not even its genesis checkpoint: deleted whole{}",
                    if all_written { "" } else { " (a warning under --allow-unattested-partitions)" }
                ),
            });
        }
    }
    if let Some(lag) = max_partition_lag {
        findings.extend(superseded(summary, report, wanted, lag));
    }
    // Freshness per partition the store holds.
    let mut partitions = Vec::new();
    for r in &report.partitions {
        let Ok(p) = u32::try_from(r.partition) else {
            continue;
        };
        if !wanted(p) || (r.events == 0 && !summary.by_partition.contains_key(&p)) {
            continue;
        }
        let newest = summary
            .by_partition
            .get(&p)
            .and_then(|l| l.iter().max_by_key(|c| (c.time_us, c.seq)));
        let age_us = newest.map(|c| now_us.saturating_sub(c.time_us).max(0));
        let sealed = r.sealed_through.unwrap_or(0);
        let unsealed = r
            .last_seq
            .map_or(0, |l| u64::try_from(l.saturating_sub(sealed)).unwrap_or(0));
        if let Some(max) = max_age {
            let max_us = i64::try_from(max.as_micros()).unwrap_or(i64::MAX);
            let stale = match (newest, age_us) {
                (Some(c), Some(a)) if a > max_us => Some(format!(
                    "the newest valid checkpoint (seq {}, time_us {}) is {}s old, more than --max-checkpoint-age {}s: newer records and checkpoints were cut, or the chainer stopped signing ({} unsealed records after it)",
                    c.seq,
                    c.time_us,
                    a / 1_000_000,
                    max.as_secs(),
                    unsealed
                )),
                (None, _) => Some(format!(
                    "no valid checkpoint of partition {p}, and --max-checkpoint-age {}s asks for one",
                    max.as_secs()
                )),
                _ => None,
            };
            if let Some(detail) = stale {
                findings.push(FreshnessFinding {
                    partition: p,
                    seq: newest.map_or(0, |c| c.seq),
                    kind: FreshnessKind::CheckpointStale,
                    error: true,
                    detail,
                });
            }
        }
        partitions.push(PartitionFreshness {
            partition: p,
            last_seq: r.last_seq,
            sealed_through: r.sealed_through,
            unsealed_records: unsealed,
            newest_checkpoint_seq: newest.map(|c| c.seq),
            newest_checkpoint_time_us: newest.map(|c| c.time_us),
            checkpoint_age_secs: age_us.map(|a| u64::try_from(a / 1_000_000).unwrap_or(0)),
            signed_partition_count: newest.map(|c| c.partition_count).filter(|&n| n > 0),
        });
    }
    findings.sort_by_key(|f| (f.partition, f.seq));
    for f in findings.iter().filter(|f| f.error) {
        mark_failed(report, f.partition);
    }
    FreshnessReport {
        signed_partition_count: signed_count,
        max_checkpoint_age_secs: max_age.map(|d| d.as_secs()),
        max_partition_lag_secs: max_partition_lag.map(|d| d.as_secs()),
        partitions,
        ok: findings.iter().all(|f| !f.error),
        findings,
    }
}

/// The human lines after a store's report.
pub fn write_human(out: &mut dyn std::io::Write, f: &FreshnessReport) -> std::io::Result<()> {
    let count = f.signed_partition_count.map_or_else(
        || "no signed partition count".to_owned(),
        |n| format!("signed partition count {n}"),
    );
    writeln!(
        out,
        "freshness ({count}{}{}): {}",
        f.max_checkpoint_age_secs
            .map_or_else(String::new, |s| format!(", max checkpoint age {s}s")),
        f.max_partition_lag_secs
            .map_or_else(String::new, |s| format!(", max partition lag {s}s")),
        if f.ok { "OK" } else { "FAILED" }
    )?;
    for p in &f.partitions {
        let age = match (p.newest_checkpoint_seq, p.checkpoint_age_secs) {
            (Some(s), Some(a)) => format!("newest checkpoint seq {s}, {a}s old"),
            _ => "no valid checkpoint".to_owned(),
        };
        writeln!(
            out,
            "    partition {}: {age}, {} unsealed records",
            p.partition, p.unsealed_records
        )?;
    }
    for x in &f.findings {
        writeln!(
            out,
            "    partition {} seq {}: {}: {}",
            x.partition,
            x.seq,
            x.kind.name(),
            x.detail
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use integrity::checkpoint::{generate_pkcs8, sign, CheckpointFields, SigningKey};
    use integrity::verify::PartitionReport;

    const T0: i64 = 1_700_000_000_000_000;
    const HOUR_US: i64 = 3_600_000_000;

    /// The limits of a default run (no age limit, `--max-genesis-lag` at its default).
    fn lim(max_age: Option<Duration>) -> Limits {
        Limits {
            max_age,
            max_partition_lag: Some(parse_lag(DEFAULT_MAX_PARTITION_LAG).unwrap()),
        }
    }

    fn key() -> (SigningKey, KeySet) {
        let pkcs8 = generate_pkcs8().unwrap();
        let k = SigningKey::from_pkcs8("k1", pkcs8.expose()).unwrap();
        let mut ks = KeySet::default();
        ks.add(k.public_entry(0, None)).unwrap();
        (k, ks)
    }

    fn cp(k: &SigningKey, p: u32, seq: u64, time_us: i64, count: u32) -> Checkpoint {
        sign(
            k,
            &CheckpointFields {
                chain_id: "c".into(),
                partition: p,
                first_seq: 1,
                seq,
                head_hash: [1; 32],
                merkle_root: [2; 32],
                time_us,
                partition_count: count,
                tree_root: None,
            },
        )
        .unwrap()
    }

    fn part(p: i32, last: i64, sealed: i64) -> PartitionReport {
        PartitionReport {
            partition: p,
            first_seq: Some(1),
            last_seq: Some(last),
            events: last as u64,
            head_seq: last,
            head: String::new(),
            sealed_through: Some(sealed),
            findings: Vec::new(),
            findings_dropped: 0,
            ok: true,
        }
    }

    #[test]
    fn ages_parse() {
        assert_eq!(parse_age("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_age("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_age("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_age("1d"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_age("45"), Ok(Duration::from_secs(45)));
        for bad in ["", "5x", "m", "0", "-5m", "1.5h"] {
            assert!(parse_age(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_partition_the_signed_count_names_but_the_store_lacks_is_a_finding() {
        let (k, ks) = key();
        let cps = vec![cp(&k, 0, 5, T0, 3), cp(&k, 2, 7, T0, 3)];
        let s = summarize(&cps, &ks, Some("c"));
        // A warning under --allow-unattested-partitions …
        let mut r = Report::new(vec![part(0, 5, 5), part(2, 7, 7)]);
        let f = check(&s, &mut r, lim(None), T0, &BTreeSet::new(), false);
        assert_eq!(f.findings.len(), 1, "{:?}", f.findings);
        assert!(!f.findings[0].error && f.ok && r.ok, "{f:?}");
        // … an error by default: an empty partition has its genesis checkpoint.
        let mut r = Report::new(vec![part(0, 5, 5), part(2, 7, 7)]);
        let f = check(&s, &mut r, lim(None), T0, &BTreeSet::new(), true);
        assert_eq!(f.signed_partition_count, Some(3));
        assert_eq!(f.findings.len(), 1, "{:?}", f.findings);
        assert_eq!(
            (f.findings[0].partition, f.findings[0].kind),
            (1, FreshnessKind::PartitionMissingFromSignedSet)
        );
        assert!(!r.ok);
        assert!(r.partitions.iter().any(|p| p.partition == 1 && !p.ok));
        // Restricted to other partitions: not asked about, no finding.
        let mut r = Report::new(vec![part(0, 5, 5)]);
        let only: BTreeSet<u32> = [0].into();
        assert!(check(&s, &mut r, lim(None), T0, &only, true).ok);
    }

    #[test]
    fn an_empty_partition_attested_by_its_genesis_checkpoint_is_present() {
        let (k, ks) = key();
        let genesis = sign(&k, &CheckpointFields::genesis("c", 1, T0, 3)).unwrap();
        let cps = vec![cp(&k, 0, 5, T0, 3), genesis, cp(&k, 2, 7, T0, 3)];
        let s = summarize(&cps, &ks, Some("c"));
        // Partition 1 holds no record, and the report does not even list it.
        let mut r = Report::new(vec![part(0, 5, 5), part(2, 7, 7)]);
        let f = check(&s, &mut r, lim(None), T0, &BTreeSet::new(), true);
        assert!(f.findings.is_empty() && f.ok && r.ok, "{f:?}");
    }

    #[test]
    fn v1_checkpoints_sign_no_set_and_forged_counts_do_not_count() {
        let (k, ks) = key();
        let (other, _) = key();
        // v1 (count 0) checkpoints: no set to check; a count signed by an unknown key is
        // ignored (it fails its signature).
        let cps = vec![cp(&k, 0, 5, T0, 0), cp(&other, 0, 5, T0, 9)];
        let s = summarize(&cps, &ks, None);
        let mut r = Report::new(vec![part(0, 5, 5)]);
        let f = check(&s, &mut r, lim(None), T0, &BTreeSet::new(), true);
        assert!(f.ok && r.ok, "{f:?}");
        assert_eq!(f.signed_partition_count, None);
    }

    #[test]
    fn count_changes_are_reported_a_decrease_fails() {
        let (k, ks) = key();
        let cps = vec![
            cp(&k, 0, 5, T0, 2),
            cp(&k, 0, 6, T0 + 1, 4),
            cp(&k, 0, 7, T0 + 2, 3),
        ];
        let s = summarize(&cps, &ks, None);
        let mut r = Report::new(vec![
            part(0, 7, 7),
            part(1, 1, 0),
            part(2, 1, 0),
            part(3, 1, 0),
        ]);
        let f = check(&s, &mut r, lim(None), T0, &BTreeSet::new(), true);
        let kinds: Vec<_> = f.findings.iter().map(|x| (x.seq, x.kind)).collect();
        assert_eq!(
            kinds,
            vec![
                (6, FreshnessKind::PartitionCountChanged),
                (7, FreshnessKind::PartitionCountDecreased)
            ]
        );
        assert!(!f.ok && !r.ok);
    }

    #[test]
    fn stale_newest_checkpoint_fails_only_past_the_max_age() {
        let (k, ks) = key();
        // A heartbeat (same seq, later time) is the newest.
        let cps = vec![cp(&k, 0, 5, T0, 1), cp(&k, 0, 5, T0 + 60_000_000, 1)];
        let s = summarize(&cps, &ks, None);
        let now = T0 + 120_000_000;
        let mut r = Report::new(vec![part(0, 8, 5)]);
        let f = check(&s, &mut r, lim(None), now, &BTreeSet::new(), true);
        assert!(f.ok);
        let p = &f.partitions[0];
        assert_eq!(
            (
                p.newest_checkpoint_seq,
                p.checkpoint_age_secs,
                p.unsealed_records
            ),
            (Some(5), Some(60), 3)
        );
        let mut r = Report::new(vec![part(0, 8, 5)]);
        let f = check(
            &s,
            &mut r,
            lim(Some(Duration::from_secs(90))),
            now,
            &BTreeSet::new(),
            true,
        );
        assert!(f.ok && r.ok);
        let mut r = Report::new(vec![part(0, 8, 5)]);
        let f = check(
            &s,
            &mut r,
            lim(Some(Duration::from_secs(30))),
            now,
            &BTreeSet::new(),
            true,
        );
        assert_eq!(f.findings[0].kind, FreshnessKind::CheckpointStale);
        assert!(!f.ok && !r.ok);
        // No valid checkpoint at all is stale too when an age is asked for.
        let mut r = Report::new(vec![part(1, 8, 0)]);
        let f = check(
            &SignedSummary::default(),
            &mut r,
            lim(Some(Duration::from_secs(30))),
            now,
            &BTreeSet::new(),
            true,
        );
        assert_eq!(f.findings[0].kind, FreshnessKind::CheckpointStale);
    }

    fn genesis(k: &SigningKey, p: u32, time_us: i64, count: u32) -> Checkpoint {
        sign(k, &CheckpointFields::genesis("c", p, time_us, count)).unwrap()
    }

    fn kinds(f: &FreshnessReport) -> Vec<(u32, FreshnessKind)> {
        f.findings.iter().map(|x| (x.partition, x.kind)).collect()
    }

    #[test]
    fn genesis_lags_parse_and_zero_or_off_disable() {
        assert_eq!(parse_lag("off"), Ok(Duration::ZERO));
        assert_eq!(parse_lag("0"), Ok(Duration::ZERO));
        assert_eq!(parse_lag("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(
            parse_lag(DEFAULT_MAX_PARTITION_LAG),
            Ok(Duration::from_secs(600))
        );
        for bad in ["", "on", "5x", "-1m"] {
            assert!(parse_lag(bad).is_err(), "{bad}");
        }
    }

    /// Partition 1 kept only its genesis checkpoint (signed an hour before partition 0's
    /// newest): its records and later checkpoints were deleted.
    #[test]
    fn a_genesis_far_behind_another_partitions_newest_checkpoint_is_superseded() {
        let (k, ks) = key();
        let cps = vec![
            cp(&k, 0, 5, T0, 2),
            cp(&k, 0, 9, T0 + HOUR_US, 2),
            genesis(&k, 1, T0, 2),
        ];
        let s = summarize(&cps, &ks, Some("c"));
        let mut r = Report::new(vec![part(0, 9, 9)]);
        let f = check(&s, &mut r, lim(None), T0 + HOUR_US, &BTreeSet::new(), true);
        assert_eq!(
            kinds(&f),
            vec![(1, FreshnessKind::GenesisCheckpointSuperseded)]
        );
        let x = &f.findings[0];
        assert!(x.error && x.seq == 0, "{x:?}");
        for part in [
            format!("time_us {T0}"),
            format!(
                "partition 0's newest valid checkpoint (seq 9, time_us {})",
                T0 + HOUR_US
            ),
            "3600s newer".to_owned(),
            "--max-partition-lag 600s".to_owned(),
        ] {
            assert!(x.detail.contains(&part), "{part} not in {}", x.detail);
        }
        assert_eq!(f.max_partition_lag_secs, Some(600));
        assert!(!f.ok && !r.ok);
        assert!(r.partitions.iter().any(|p| p.partition == 1 && !p.ok));
        // Just within the lag: no finding; a larger lag or the check off: none either.
        let cps2 = vec![cp(&k, 0, 9, T0 + 600_000_000, 2), genesis(&k, 1, T0, 2)];
        let s2 = summarize(&cps2, &ks, Some("c"));
        let mut r = Report::new(vec![part(0, 9, 9)]);
        assert!(check(&s2, &mut r, lim(None), T0, &BTreeSet::new(), true).ok);
        for off in [None, Some(Duration::ZERO), Some(Duration::from_secs(7200))] {
            let mut r = Report::new(vec![part(0, 9, 9)]);
            let limits = Limits {
                max_age: None,
                max_partition_lag: off,
            };
            let f = check(&s, &mut r, limits, T0, &BTreeSet::new(), true);
            assert!(f.findings.is_empty() && f.ok && r.ok, "{off:?}: {f:?}");
            assert_eq!(
                f.max_partition_lag_secs,
                off.filter(|d| !d.is_zero()).map(|d| d.as_secs())
            );
        }
        // Not asked about partition 1: no finding.
        let mut r = Report::new(vec![part(0, 9, 9)]);
        let only: BTreeSet<u32> = [0].into();
        assert!(check(&s, &mut r, lim(None), T0, &only, true).ok);
    }

    /// A partition with records whose newest valid checkpoint lags the chain's newest by more
    /// than the limit: its newer checkpoints were deleted (a one-partition rollback), found
    /// with no pin and no clock. The records past it are named as sealed by nothing.
    #[test]
    fn a_partition_head_far_behind_the_chains_newest_checkpoint_is_superseded() {
        let (k, ks) = key();
        // Partition 1 was heartbeated up to T0 + 1h like partition 0, then its checkpoints
        // after seq 40 (and the heartbeats of its head) were deleted.
        let cps = vec![cp(&k, 0, 9, T0 + HOUR_US, 2), cp(&k, 1, 40, T0, 2)];
        let s = summarize(&cps, &ks, Some("c"));
        let mut r = Report::new(vec![part(0, 9, 9), part(1, 55, 40)]);
        let f = check(&s, &mut r, lim(None), T0 + HOUR_US, &BTreeSet::new(), true);
        assert_eq!(kinds(&f), vec![(1, FreshnessKind::CheckpointSuperseded)]);
        let x = &f.findings[0];
        assert!(x.error && x.seq == 40, "{x:?}");
        for part in [
            "partition 1's newest valid checkpoint (seq 40".to_owned(),
            "3600s newer".to_owned(),
            "the records after seq 40 (the store holds up to seq 55) are sealed by nothing"
                .to_owned(),
        ] {
            assert!(x.detail.contains(&part), "{part} not in {}", x.detail);
        }
        assert!(!f.ok && !r.ok);
        // Heartbeats keep an idle partition's head fresh: no finding.
        let mut beat = cps.clone();
        beat.push(cp(&k, 1, 40, T0 + HOUR_US - 60_000_000, 2));
        let s = summarize(&beat, &ks, Some("c"));
        let mut r = Report::new(vec![part(0, 9, 9), part(1, 40, 40)]);
        assert!(check(&s, &mut r, lim(None), T0 + HOUR_US, &BTreeSet::new(), true).ok);
        // A single partition has nothing to lag behind (the clock and pins cover it).
        let s = summarize(&[cp(&k, 0, 40, T0, 1)], &ks, Some("c"));
        let mut r = Report::new(vec![part(0, 55, 40)]);
        assert!(check(&s, &mut r, lim(None), T0 + HOUR_US, &BTreeSet::new(), true).ok);
    }

    /// An empty partition whose genesis heartbeats keep up with the other partitions (the
    /// chainer re-signs it every heartbeat period) is no finding, nor is an old genesis
    /// followed by real checkpoints. Another empty partition's fresh genesis heartbeat is a
    /// newest checkpoint like any other.
    #[test]
    fn heartbeated_genesis_and_genesis_followed_by_checkpoints_are_no_finding() {
        let (k, ks) = key();
        let cps = vec![
            cp(&k, 0, 9, T0 + HOUR_US, 3),
            genesis(&k, 1, T0, 3),
            genesis(&k, 1, T0 + HOUR_US - 60_000_000, 3),
            genesis(&k, 2, T0, 3),
            cp(&k, 2, 4, T0 + HOUR_US, 3),
        ];
        let s = summarize(&cps, &ks, Some("c"));
        let mut r = Report::new(vec![part(0, 9, 9), part(2, 4, 4)]);
        let f = check(&s, &mut r, lim(None), T0 + HOUR_US, &BTreeSet::new(), true);
        assert!(f.findings.is_empty() && f.ok && r.ok, "{f:?}");
        // Only empty partitions: the one whose genesis stopped being re-signed is found.
        let cps = vec![
            genesis(&k, 0, T0, 2),
            genesis(&k, 1, T0, 2),
            genesis(&k, 1, T0 + HOUR_US, 2),
        ];
        let s = summarize(&cps, &ks, Some("c"));
        let mut r = Report::new(Vec::new());
        let f = check(&s, &mut r, lim(None), T0 + HOUR_US, &BTreeSet::new(), true);
        assert_eq!(
            kinds(&f),
            vec![(0, FreshnessKind::GenesisCheckpointSuperseded)]
        );
    }

    /// One partition only: nothing to compare its genesis with (`--max-checkpoint-age` is the
    /// check then). Records present: the chain verifier judges them, not this rule.
    #[test]
    fn a_single_partition_or_one_with_records_is_no_genesis_finding() {
        let (k, ks) = key();
        let s = summarize(&[genesis(&k, 0, T0, 1)], &ks, Some("c"));
        let mut r = Report::new(Vec::new());
        let f = check(
            &s,
            &mut r,
            lim(None),
            T0 + 24 * HOUR_US,
            &BTreeSet::new(),
            true,
        );
        assert!(f.findings.is_empty() && f.ok && r.ok, "{f:?}");

        let cps = vec![cp(&k, 0, 9, T0 + HOUR_US, 2), genesis(&k, 1, T0, 2)];
        let s = summarize(&cps, &ks, Some("c"));
        let mut r = Report::new(vec![part(0, 9, 9), part(1, 3, 0)]);
        let f = check(&s, &mut r, lim(None), T0 + HOUR_US, &BTreeSet::new(), true);
        assert!(
            !kinds(&f)
                .iter()
                .any(|(_, k)| *k == FreshnessKind::GenesisCheckpointSuperseded),
            "{f:?}"
        );
    }
}
