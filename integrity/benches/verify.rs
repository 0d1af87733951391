//! Where verification time goes, per event, on a realistic chain.
//!
//! `cargo bench -p integrity --bench verify` builds a chain of realistic enriched events (the
//! platform lifecycle of the seeds: request → intent → policy → approval → IaC → deployment,
//! 0.5–1.5 KB of canonical bytes each), over several partitions with signed checkpoints, stores
//! it the way both sinks do (ClickHouse rows via `flat::AuditRow`, archive segments via
//! `segment::write_segment`), then times, best of a few repetitions:
//!
//! - the baseline: raw SHA-256 over exactly the same canonical bytes (one digest per event);
//! - the chain rule alone (`chain::link_hash`);
//! - `verify` from precomputed canonical bytes (links, seq continuity, checkpoint signatures and
//!   Merkle roots);
//! - the pieces of the per-event work: canonical encoding, `AuditRow::to_chained`, segment
//!   digest + Avro decode;
//! - what `auditctl verify` does per event, from each store: decode → canonical bytes → verify.
//!
//! Figures are events/s, MB/s of canonical bytes (the same denominator for every line, so lines
//! compare), µs/event and the ratio to the SHA-256 baseline measured in the same run: these
//! machines are noisy, ratios travel better than absolute rates. Nothing here asserts a time.
//!
//! Knobs (environment): `AUDIT_BENCH_EVENTS` (default 100000), `AUDIT_BENCH_REPS` (default 3),
//! `AUDIT_BENCH_PARTITIONS` (default 4). Run without `--bench` (`cargo test --benches`) it checks
//! itself on a 2000-event chain instead.

use std::hint::black_box;
use std::time::{Duration, Instant};

use integrity::chain::{link_hash, ChainHead, Hash32};
use integrity::checkpoint::{generate_pkcs8, sign, CheckpointFields, KeySet, SigningKey};
use integrity::merkle::MerkleBuilder;
use integrity::verify::{
    OwnedRecord, PartitionReport, PartitionVerifier, StoredRecord, VerifyOptions,
};
use schemas::avro::{canonical_bytes_into, CANONICAL_VERSION};
use schemas::flat::AuditRow;
use schemas::raw_segment;
use schemas::realistic::{best_of, env_usize, realistic_event, Rng};
use schemas::segment::{read_segment, verify_segment_digest, write_segment, Manifest, SegmentMeta};
use schemas::{ChainedEvent, Checkpoint};
use sha2::{Digest, Sha256};

/// Checkpoint every this many events per partition (the chainer's default).
const CHECKPOINT_EVERY: usize = 1000;
/// Events per archive segment (the archive sink's default `--segment-max-events`).
const SEGMENT_EVENTS: usize = 10_000;
const CHAIN_ID: &str = "bench-chain";
const KEY_ID: &str = "bench-key-1";
const ENRICHED_TOPIC: &str = "audit.enriched";
const CHAINED_TOPIC: &str = "audit.chained";

// ---- the stored chain ----------------------------------------------------------------------

struct Partition {
    id: u32,
    /// Canonical bytes of each event, in seq order (what verify hashes).
    canonical: Vec<Vec<u8>>,
    /// The chained records (what `audit.chained` carries).
    chained: Vec<ChainedEvent>,
    /// The ClickHouse rows.
    rows: Vec<AuditRow>,
    /// The archive: (manifest, segment object) in seq order.
    segments: Vec<(Manifest, Vec<u8>)>,
    checkpoints: Vec<Checkpoint>,
}

fn build(events: usize, partitions: u32, key: &SigningKey) -> Vec<Partition> {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut out = Vec::new();
    for p in 0..partitions {
        let n =
            events / partitions as usize + usize::from((p as usize) < events % partitions as usize);
        let mut head = ChainHead::genesis(p);
        let mut tree = MerkleBuilder::new();
        // The whole partition's tree: checkpoints are v3, as the chainer signs them, so
        // `verify` also recomputes every whole-tree root.
        let mut whole = integrity::tree::CompactRange::new();
        let mut first_seq = 1u64;
        let (mut canonical, mut chained, mut checkpoints) = (Vec::new(), Vec::new(), Vec::new());
        for i in 0..n {
            let ev = realistic_event(&mut rng, i as u64, p as i32);
            let mut buf = Vec::with_capacity(1024);
            let link = head.next_event(&ev, &mut buf).expect("canonical encoding");
            tree.push(&link.hash);
            whole
                .append(integrity::merkle::leaf_hash(&link.hash))
                .expect("far from full");
            if tree.len() as usize == CHECKPOINT_EVERY || i + 1 == n {
                let fields = CheckpointFields {
                    chain_id: CHAIN_ID.into(),
                    partition: p,
                    first_seq,
                    seq: link.seq,
                    head_hash: link.hash,
                    merkle_root: tree.root(),
                    time_us: ev.receive_time_us,
                    partition_count: 0,
                    tree_root: Some(whole.root()),
                };
                checkpoints.push(sign(key, &fields).expect("signing"));
                tree = MerkleBuilder::new();
                first_seq = link.seq + 1;
            }
            canonical.push(buf);
            chained.push(ChainedEvent {
                chain_partition: p as i32,
                seq: link.seq as i64,
                prev_hash: link.prev_hash.to_vec(),
                hash: link.hash.to_vec(),
                canonical_version: CANONICAL_VERSION,
                source_topic: ENRICHED_TOPIC.into(),
                source_partition: p as i32,
                source_offset: i as i64,
                event: ev,
            });
        }
        let rows = chained
            .iter()
            .enumerate()
            .map(|(i, c)| AuditRow::from_chained(c, i as i64))
            .collect();
        let segments = chained
            .chunks(SEGMENT_EVENTS)
            .enumerate()
            .map(|(k, chunk)| {
                let first = (k * SEGMENT_EVENTS) as i64;
                let meta = SegmentMeta::for_events(
                    chunk,
                    CHAINED_TOPIC,
                    first,
                    first + chunk.len() as i64 - 1,
                    "bench",
                )
                .expect("segment metadata");
                let bytes = write_segment(&meta, chunk).expect("segment");
                let manifest =
                    Manifest::for_segment(&meta, &bytes, "2024-06-01T00:00:00Z").expect("manifest");
                (manifest, bytes)
            })
            .collect();
        out.push(Partition {
            id: p,
            canonical,
            chained,
            rows,
            segments,
            checkpoints,
        });
    }
    out
}

// ---- measuring -----------------------------------------------------------------------------

fn verifier(p: &Partition, keys: &KeySet) -> PartitionVerifier {
    PartitionVerifier::new(
        p.id,
        keys,
        &p.checkpoints,
        VerifyOptions {
            chain_id: Some(CHAIN_ID.into()),
            ..VerifyOptions::default()
        },
    )
}

/// A clean chain must verify clean; anything else means the bench measured the wrong thing.
fn check(report: PartitionReport, n: usize) -> u64 {
    assert!(
        report.ok && report.findings.is_empty() && report.events == n as u64,
        "partition {} did not verify: {:?}",
        report.partition,
        report.findings.first()
    );
    assert_eq!(
        report.sealed_through,
        Some(n as i64),
        "not sealed to the end"
    );
    report.events
}

fn main() {
    // `cargo bench` passes `--bench`; without it (`cargo test --benches`, a debug build) run a
    // small smoke-sized chain so the bench is still exercised end to end.
    let full = std::env::args().any(|a| a == "--bench");
    let events = env_usize("AUDIT_BENCH_EVENTS", if full { 100_000 } else { 2_000 });
    let reps = env_usize("AUDIT_BENCH_REPS", if full { 3 } else { 1 });
    let partitions = env_usize("AUDIT_BENCH_PARTITIONS", 4) as u32;

    let key = SigningKey::from_pkcs8(KEY_ID, generate_pkcs8().expect("key").expose()).expect("key");
    let mut keys = KeySet::default();
    keys.add(key.public_entry(0, None)).expect("key set");

    let t = Instant::now();
    let data = build(events, partitions, &key);
    let build_secs = t.elapsed().as_secs_f64();

    let mut sizes: Vec<usize> = data
        .iter()
        .flat_map(|p| p.canonical.iter().map(Vec::len))
        .collect();
    sizes.sort_unstable();
    let canonical_total: usize = sizes.iter().sum();
    let segment_total: usize = data
        .iter()
        .flat_map(|p| p.segments.iter().map(|s| s.1.len()))
        .sum();
    let segments: usize = data.iter().map(|p| p.segments.len()).sum();
    let checkpoints: usize = data.iter().map(|p| p.checkpoints.len()).sum();
    println!(
        "chain: {events} events over {partitions} partitions, built in {build_secs:.1}s; \
         canonical bytes min {} / p50 {} / mean {} / max {} (total {:.1} MB); \
         {segments} archive segments ({:.1} MB deflated); {checkpoints} signed checkpoints; \
         best of {reps}",
        sizes[0],
        sizes[sizes.len() / 2],
        canonical_total / sizes.len(),
        sizes[sizes.len() - 1],
        canonical_total as f64 / 1e6,
        segment_total as f64 / 1e6,
    );

    let mut rows: Vec<(&str, Duration)> = Vec::new();

    rows.push((
        "sha256 of canonical bytes (baseline)",
        best_of(reps, || {
            let mut acc = 0u64;
            for p in &data {
                for c in &p.canonical {
                    acc = acc.wrapping_add(u64::from(Sha256::digest(c)[0]));
                }
            }
            acc
        }),
    ));

    rows.push((
        "chain rule link_hash only",
        best_of(reps, || {
            let mut acc = 0u64;
            for p in &data {
                let mut prev: Hash32 = [0; 32];
                for (i, c) in p.canonical.iter().enumerate() {
                    prev = link_hash(p.id, i as u64 + 1, &prev, c);
                }
                acc = acc.wrapping_add(u64::from(prev[0]));
            }
            acc
        }),
    ));

    rows.push((
        "verify from canonical bytes",
        best_of(reps, || {
            let mut n = 0;
            for p in &data {
                let mut v = verifier(p, &keys);
                for (c, ce) in p.canonical.iter().zip(&p.chained) {
                    v.push(&StoredRecord {
                        seq: ce.seq,
                        prev_hash: &ce.prev_hash,
                        hash: &ce.hash,
                        canonical: c,
                        event_id: &ce.event.event_id,
                        copy: None,
                        canonical_version: schemas::avro::CANONICAL_VERSION,
                    });
                }
                n += check(v.finish(), p.chained.len());
            }
            n
        }),
    ));

    rows.push((
        "canonical encoding (Avro datum)",
        best_of(reps, || {
            let mut buf = Vec::with_capacity(2048);
            let mut n = 0u64;
            for p in &data {
                for c in &p.chained {
                    buf.clear();
                    canonical_bytes_into(&c.event, &mut buf).expect("encode");
                    n += buf.len() as u64;
                }
            }
            n
        }),
    ));

    rows.push((
        "row decode (AuditRow::to_chained)",
        best_of(reps, || {
            let mut n = 0u64;
            for p in &data {
                for r in &p.rows {
                    n += black_box(r.to_chained().expect("row")).seq as u64;
                }
            }
            n
        }),
    ));

    rows.push((
        "segment decode (digest + read_segment)",
        best_of(reps, || {
            let mut n = 0u64;
            for p in &data {
                for (m, bytes) in &p.segments {
                    verify_segment_digest(m, bytes).expect("digest");
                    n += read_segment(bytes).expect("segment").1.len() as u64;
                }
            }
            n
        }),
    ));

    rows.push((
        "full verify from ClickHouse rows",
        best_of(reps, || {
            let mut n = 0;
            for p in &data {
                let mut v = verifier(p, &keys);
                for r in &p.rows {
                    let c = r.to_chained().expect("row");
                    let rec = OwnedRecord::from_chained(&c).expect("canonical");
                    v.push(&rec.as_stored());
                }
                n += check(v.finish(), p.rows.len());
            }
            n
        }),
    ));

    rows.push((
        "full verify from archive segments (decoded)",
        best_of(reps, || {
            let mut n = 0;
            for p in &data {
                let mut v = verifier(p, &keys);
                for (m, bytes) in &p.segments {
                    verify_segment_digest(m, bytes).expect("digest");
                    let (_, evs) = read_segment(bytes).expect("segment");
                    for c in &evs {
                        let rec = OwnedRecord::from_chained(c).expect("canonical");
                        v.push(&rec.as_stored());
                    }
                }
                n += check(v.finish(), p.chained.len());
            }
            n
        }),
    ));

    rows.push((
        "segment read as stored bytes (raw_segment)",
        best_of(reps, || {
            let mut n = 0u64;
            for p in &data {
                for (m, bytes) in &p.segments {
                    verify_segment_digest(m, bytes).expect("digest");
                    let (_, recs) = raw_segment::stream(&bytes[..]).expect("segment");
                    for r in recs {
                        n += black_box(r.expect("record")).seq as u64 & 1;
                    }
                }
            }
            n
        }),
    ));

    // What `auditctl verify --source archive` does since raw_segment: the stored event bytes
    // are hashed as they are.
    rows.push((
        "full verify from archive segments (raw)",
        best_of(reps, || {
            let mut n = 0;
            for p in &data {
                let mut v = verifier(p, &keys);
                for (m, bytes) in &p.segments {
                    verify_segment_digest(m, bytes).expect("digest");
                    let (_, recs) = raw_segment::stream(&bytes[..]).expect("segment");
                    for r in recs {
                        let r = r.expect("record");
                        v.push(&StoredRecord {
                            seq: r.seq,
                            prev_hash: &r.prev_hash,
                            hash: &r.hash,
                            canonical: &r.canonical,
                            canonical_version: r.canonical_version,
                            event_id: &r.event_id,
                            copy: None,
                        });
                    }
                }
                n += check(v.finish(), p.chained.len());
            }
            n
        }),
    ));

    let base = rows[0].1.as_secs_f64();
    println!(
        "{:<40} {:>12} {:>9} {:>9} {:>12}",
        "stage", "events/s", "MB/s", "µs/event", "vs sha256"
    );
    for (name, d) in &rows {
        let s = d.as_secs_f64();
        println!(
            "{:<40} {:>12.0} {:>9.1} {:>9.2} {:>11.3}x",
            name,
            events as f64 / s,
            canonical_total as f64 / 1e6 / s,
            s * 1e6 / events as f64,
            base / s,
        );
    }
    println!("(MB/s counts canonical bytes on every line; 'vs sha256' = throughput ÷ baseline throughput)");
    if !full {
        println!(
            "(smoke run without --bench: use `cargo bench -p integrity --bench verify` for figures)"
        );
    }
}
