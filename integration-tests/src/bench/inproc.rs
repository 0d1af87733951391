//! What the in-process benches (`integration-tests/benches/*`) share: their knobs, the
//! best-of-N timer, and the demo stream's events chained as the chainer would chain them.

use std::hint::black_box;
use std::time::{Duration, Instant};

use schemas::json::event_from_json;
use schemas::ChainedEvent;
use sha2::{Digest, Sha256};

use crate::demo;

/// A knob from the environment (`AUDIT_BENCH_EVENTS`, `AUDIT_BENCH_REPS`), or its default.
pub fn knob(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The best time of `reps` runs of `f`, with that run's result (kept from the optimiser).
pub fn best_of(reps: usize, mut f: impl FnMut() -> u64) -> (Duration, u64) {
    let mut best = (Duration::MAX, 0);
    for _ in 0..reps.max(1) {
        let t = Instant::now();
        let out = black_box(f());
        best = best.min((t.elapsed(), out));
    }
    best
}

/// `n` demo events of one day from `t0_us` (a millisecond apart), chained on partition 0
/// with real SHA-256 link hashes (32 incompressible bytes each, twice per record).
pub fn chained_demo_events(n: usize, t0_us: i64) -> Vec<ChainedEvent> {
    let raw = demo::lifecycle(n / 5 + 1, 7, t0_us);
    let jctx = demo::kafka_json_context(t0_us);
    let mut prev = vec![0u8; 32];
    raw.iter()
        .cycle()
        .take(n)
        .enumerate()
        .map(|(i, r)| {
            let mut event = event_from_json(&r.value, &jctx).expect("a demo record maps");
            event.event_time_us = t0_us + i as i64 * 1000;
            event.receive_time_us = event.event_time_us + 5_000;
            let hash = Sha256::digest((i as u64).to_le_bytes()).to_vec();
            ChainedEvent {
                chain_partition: 0,
                seq: i as i64 + 1,
                prev_hash: std::mem::replace(&mut prev, hash.clone()),
                hash,
                canonical_version: schemas::avro::CANONICAL_VERSION,
                source_topic: "audit.enriched".into(),
                source_partition: 0,
                source_offset: i as i64,
                event,
            }
        })
        .collect()
}
