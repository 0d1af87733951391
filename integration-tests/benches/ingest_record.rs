//! ingest's own work per record, in process (no broker, so no noise from one): the demo
//! stream's raw JSON records through `IngestProcessor::handle` (detect the framing, parse and
//! map the JSON, validate, encode the validated event, copy the propagated headers), next to
//! floors measured in the same run on the same records:
//!
//! - copying each record's bytes (what the raw consume+produce path does to a record besides
//!   Kafka itself);
//! - parsing each record into a `serde_json::Value` (the least any JSON validation does);
//! - `schemas::json::event_from_json` alone (the mapping, without validation and encoding).
//!
//! `cargo bench -p integration-tests --bench ingest_record` (knobs `AUDIT_BENCH_EVENTS`,
//! default 20000, and `AUDIT_BENCH_REPS`, default 5; best of the reps). Prints µs per record
//! and each step's ratio to the parse floor; nothing here asserts a time. To see where the time
//! goes: `perf record -g target/release/deps/ingest_record-*`.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use ingest::processor::IngestProcessor;
use integration_tests::bench::inproc::{best_of, knob};
use integration_tests::demo;
use schemas::framing::CatalogIdResolver;
use schemas::json::{event_from_json, JsonLimits};
use worker_runtime::kafka::record::InputRecord;

fn main() {
    let n = knob("AUDIT_BENCH_EVENTS", 20_000).max(1);
    let reps = knob("AUDIT_BENCH_REPS", 5);
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    // Event times in the hour before now, as worker-bench's demo records.
    let raw = demo::lifecycle(n / 5 + 1, 7, (now_ms - 3_600_000) * 1000);
    let inputs: Vec<InputRecord> = raw
        .iter()
        .cycle()
        .take(n)
        .enumerate()
        .map(|(i, r)| InputRecord {
            topic: "audit.raw".into(),
            partition: (i % 4) as i32,
            offset: i as i64,
            key: r.key.clone().map(String::into_bytes),
            payload: Some(r.value.clone()),
            headers: Vec::new(),
            timestamp_ms: Some(now_ms),
        })
        .collect();
    let bytes: usize = inputs
        .iter()
        .map(|i| i.payload.as_ref().map_or(0, Vec::len))
        .sum();
    let resolver = Arc::new(CatalogIdResolver::new().expect("catalog"));
    let processor = IngestProcessor::new(
        "audit.validated",
        "audit.rejected",
        JsonLimits::default(),
        resolver,
    );
    // Every demo record is valid: a rejected one would measure the dead-letter path instead.
    for i in &inputs {
        let out = processor.handle(i);
        assert_eq!(out.topic, "audit.validated", "a demo record was rejected");
    }
    let jctx = demo::kafka_json_context(now_ms * 1000);
    let payload = |i: &InputRecord| i.payload.as_deref().unwrap_or_default().to_vec();

    let copy = best_of(reps, || {
        inputs
            .iter()
            .map(|i| black_box(payload(i)).len() as u64)
            .sum()
    })
    .0;
    let parse = best_of(reps, || {
        inputs
            .iter()
            .map(|i| {
                let v: serde_json::Value =
                    serde_json::from_slice(black_box(i.payload.as_deref().unwrap_or_default()))
                        .expect("json");
                u64::from(black_box(v).is_object())
            })
            .sum()
    })
    .0;
    let map = best_of(reps, || {
        inputs
            .iter()
            .map(|i| {
                let e = event_from_json(black_box(i.payload.as_deref().unwrap_or_default()), &jctx)
                    .expect("maps");
                black_box(e).event_time_us as u64
            })
            .sum()
    })
    .0;
    let handle = best_of(reps, || {
        inputs
            .iter()
            .map(|i| black_box(processor.handle(black_box(i))).headers.len() as u64)
            .sum()
    })
    .0;

    println!(
        "{n} demo records, mean {} B of JSON, best of {reps}",
        bytes / n
    );
    println!("{:<52} {:>10} {:>12}", "step", "µs/record", "× parse");
    let per = |d: Duration| d.as_secs_f64() * 1e6 / n as f64;
    let line = |name: &str, d: Duration| {
        println!(
            "{name:<52} {:>10.2} {:>12.2}",
            per(d),
            d.as_secs_f64() / parse.as_secs_f64().max(1e-12)
        );
    };
    line("copy the record's bytes (raw path floor)", copy);
    line("parse into serde_json::Value (JSON floor)", parse);
    line("schemas::json::event_from_json (map)", map);
    line("IngestProcessor::handle (the worker's own work)", handle);
}
