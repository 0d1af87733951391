//! Where the chainer's CPU goes per record, in-process (no broker): what `PartitionChain`
//! does to one enriched record, step by step, next to SHA-256 over the same input bytes
//! measured in the same run (the machines are noisy: compare the ratios).
//!
//! `cargo bench -p chainer --bench chain_record` (`BENCH_EVENTS`, default 20,000 realistic
//! enriched events as enrich writes them; best of `BENCH_REPS`, default 5).

use std::time::Duration;

use chainer::partition::{Decision, Input, PartitionChain};
use integrity::chain::ChainHead;
use schemas::avro::{
    canonical_bytes_into, canonical_bytes_version_into_avro, decode_datum_avro, CANONICAL_VERSION,
};
use schemas::canonical_decode;
use schemas::dedup::DEFAULT_DEDUP_WINDOW;
use schemas::framing::{
    decode_event, encode_single_object_chained, encode_single_object_chained_with_canonical,
    encode_single_object_event, SINGLE_OBJECT_HEADER_LEN,
};
use schemas::identity::{content_digest, content_digest_avro, dedup_key};
use schemas::realistic::{best_of, env_usize, realistic_event, Rng};
use schemas::{AuditEvent, ChainedEvent};
use sha2::{Digest, Sha256};

fn main() {
    let n = env_usize("BENCH_EVENTS", 20_000);
    let reps = env_usize("BENCH_REPS", 5);
    let mut rng = Rng(0x5eed_c4a1);
    let events: Vec<AuditEvent> = (0..n)
        .map(|i| realistic_event(&mut rng, i as u64, 0))
        .collect();
    let inputs: Vec<Vec<u8>> = events
        .iter()
        .map(|e| encode_single_object_event(e).expect("encode"))
        .collect();
    let bytes: usize = inputs.iter().map(Vec::len).sum();
    let mut canonical = Vec::with_capacity(2048);
    let chained: Vec<ChainedEvent> = {
        let mut head = ChainHead::genesis(0);
        events
            .iter()
            .map(|e| {
                canonical.clear();
                canonical_bytes_into(e, &mut canonical).expect("canonical");
                let link = head.next(&canonical);
                ChainedEvent {
                    chain_partition: 0,
                    seq: link.seq as i64,
                    prev_hash: link.prev_hash.to_vec(),
                    hash: link.hash.to_vec(),
                    canonical_version: schemas::avro::CANONICAL_VERSION,
                    source_topic: "bench.enriched".into(),
                    source_partition: 0,
                    source_offset: link.seq as i64 - 1,
                    event: e.clone(),
                }
            })
            .collect()
    };

    let canonicals: Vec<Vec<u8>> = events
        .iter()
        .map(|e| schemas::avro::canonical_bytes(e).expect("canonical"))
        .collect();

    let sha = best_of(reps, || {
        inputs.iter().map(|b| u64::from(Sha256::digest(b)[0])).sum()
    });
    let rows: Vec<(&str, Duration)> = vec![
        (
            "decode the enriched record, apache-avro serde reader (before)",
            best_of(reps, || {
                inputs
                    .iter()
                    .map(|b| {
                        decode_datum_avro::<AuditEvent>(&b[SINGLE_OBJECT_HEADER_LEN..])
                            .expect("decode")
                            .event_time_us as u64
                    })
                    .sum()
            }),
        ),
        (
            "decode the enriched record, hand decoder (datum only)",
            best_of(reps, || {
                inputs
                    .iter()
                    .map(|b| {
                        canonical_decode::decode_event(&b[SINGLE_OBJECT_HEADER_LEN..])
                            .expect("decode")
                            .event_time_us as u64
                    })
                    .sum()
            }),
        ),
        (
            "decode the enriched record (framing::decode_event, as the chainer does)",
            best_of(reps, || {
                inputs
                    .iter()
                    .map(|b| decode_event(b, None).expect("decode").event_time_us as u64)
                    .sum()
            }),
        ),
        (
            "dedup key (scoped id digest)",
            best_of(reps, || {
                events
                    .iter()
                    .map(|e| u64::from(dedup_key(e) == dedup_key(e)))
                    .sum()
            }),
        ),
        (
            "content digest, apache-avro (producer view clone + encode + SHA-256; before)",
            best_of(reps, || {
                events
                    .iter()
                    .map(|e| u64::from(content_digest_avro(e).expect("digest").0[0]))
                    .sum()
            }),
        ),
        (
            "content digest (producer view encoded directly + SHA-256)",
            best_of(reps, || {
                events
                    .iter()
                    .map(|e| u64::from(content_digest(e).expect("digest").0[0]))
                    .sum()
            }),
        ),
        (
            "canonical bytes, apache-avro serde writer (before)",
            best_of(reps, || {
                events
                    .iter()
                    .map(|e| {
                        canonical.clear();
                        canonical_bytes_version_into_avro(e, CANONICAL_VERSION, &mut canonical)
                            .expect("canonical");
                        canonical.len() as u64
                    })
                    .sum()
            }),
        ),
        (
            "canonical bytes (AuditEvent → Avro, hand encoder)",
            best_of(reps, || {
                events
                    .iter()
                    .map(|e| {
                        canonical.clear();
                        canonical_bytes_into(e, &mut canonical).expect("canonical");
                        canonical.len() as u64
                    })
                    .sum()
            }),
        ),
        (
            "link hash (SHA-256 over header + canonical)",
            best_of(reps, || {
                let mut head = ChainHead::genesis(0);
                events
                    .iter()
                    .map(|e| {
                        canonical.clear();
                        canonical_bytes_into(e, &mut canonical).expect("canonical");
                        u64::from(head.next(&canonical).hash[0])
                    })
                    .sum()
            }),
        ),
        (
            "encode the chained record (ChainedEvent → Avro, apache-avro; before)",
            best_of(reps, || {
                chained
                    .iter()
                    .map(|c| encode_single_object_chained(c).expect("encode").len() as u64)
                    .sum()
            }),
        ),
        (
            "encode the chained record (leading fields + canonical bytes spliced)",
            best_of(reps, || {
                chained
                    .iter()
                    .zip(&canonicals)
                    .map(|(c, b)| {
                        encode_single_object_chained_with_canonical(c, b)
                            .expect("encode")
                            .len() as u64
                    })
                    .sum()
            }),
        ),
        (
            "PartitionChain::process, whole (W = default)",
            best_of(reps, || {
                let mut p = PartitionChain::genesis(0, "bench.enriched", DEFAULT_DEDUP_WINDOW, 0)
                    .expect("partition");
                inputs
                    .iter()
                    .enumerate()
                    .map(|(i, b)| {
                        match p
                            .process(Input {
                                offset: i as i64,
                                payload: Some(b),
                            })
                            .expect("process")
                        {
                            Decision::Chain(c) => c.payload.len() as u64,
                            other => panic!("record {i}: {other:?}"),
                        }
                    })
                    .sum()
            }),
        ),
    ];
    let per = |d: Duration| d.as_secs_f64() * 1e6 / n as f64;
    println!(
        "chainer, per record, in-process: {n} realistic enriched events, mean {} B, best of {reps}",
        bytes / n
    );
    println!("| step | µs/record | × SHA-256 of the input |");
    println!("|---|---|---|");
    println!(
        "| SHA-256 over the input bytes (baseline) | {:.2} | 1.00 |",
        per(sha)
    );
    for (name, d) in rows {
        println!(
            "| {name} | {:.2} | {:.2} |",
            per(d),
            d.as_secs_f64() / sha.as_secs_f64()
        );
    }
}
