//! enrich's own work per record, in process (no broker): the demo stream's events as ingest
//! writes them (single-object, the current schema), with the demo's user and team context
//! loaded in enrich's caches, from Kafka payload to the enriched payload:
//!
//! - decode each payload (`framing::decode_event`), a floor of the decoding path;
//! - the decoding path, what enrich did up to the seventeenth session and still does with the
//!   privacy rules on or for any other encoding: decode, look the context up, apply it
//!   (`ContextCaches::enrich`), encode (`framing::encode_single_object_event`);
//! - since the seventeenth: the splice (`schemas::enrich_splice`): the datum read once, only
//!   the actor, tenant and attributes decoded and written anew, the rest copied. The same bytes
//!   (checked here, and property-tested in `schemas`).
//!
//! `worker-bench --perf enrich --perf-call-graph dwarf` put about a fifth of enrich's samples in
//! its processor, most of it decoding the event (strings made and freed) and encoding it again.
//!
//! `cargo bench -p integration-tests --bench enrich_record` (knobs `AUDIT_BENCH_EVENTS`, default
//! 40000, and `AUDIT_BENCH_REPS`, default 5; best of the reps). Prints µs per record and the
//! ratio to decoding alone; nothing here asserts a time.

use std::hint::black_box;
use std::time::Duration;

use enrich::{ContextCaches, ContextKind};
use integration_tests::bench::inproc::{best_of, knob};
use integration_tests::demo;
use schemas::enrich_splice::EnrichSplice;
use schemas::framing::{self, CatalogIdResolver};
use schemas::json::event_from_json;

fn main() {
    let n = knob("AUDIT_BENCH_EVENTS", 40_000).max(1);
    let reps = knob("AUDIT_BENCH_REPS", 5);
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let t0_us = 1_780_000_000_000_000;
    let raw = demo::lifecycle(n / 5 + 1, 7, t0_us);
    let jctx = demo::kafka_json_context(t0_us);
    let payloads: Vec<Vec<u8>> = raw
        .iter()
        .cycle()
        .take(n)
        .map(|r| {
            let event = event_from_json(&r.value, &jctx).expect("a demo record maps");
            framing::encode_single_object_event(&event).expect("encodes")
        })
        .collect();
    let bytes: usize = payloads.iter().map(Vec::len).sum();
    let caches = ContextCaches::new(64 << 20, 64 << 20);
    rt.block_on(async {
        for (key, value) in demo::context_users() {
            caches
                .apply(ContextKind::Users, Some(key.as_bytes()), Some(&value))
                .await;
        }
        for (key, value) in demo::context_teams() {
            caches
                .apply(ContextKind::Teams, Some(key.as_bytes()), Some(&value))
                .await;
        }
    });
    let resolver = CatalogIdResolver::new().expect("catalog");

    let decoding_path = |p: &[u8]| -> Vec<u8> {
        let mut event = framing::decode_event(black_box(p), Some(&resolver)).expect("decodes");
        rt.block_on(caches.enrich(&mut event));
        framing::encode_single_object_event(&event).expect("encodes")
    };
    let spliced = |p: &[u8]| -> Vec<u8> {
        let datum = &black_box(p)[framing::SINGLE_OBJECT_HEADER_LEN..];
        let mut splice = EnrichSplice::new(datum).expect("ingest's output is spliced");
        let (user, team) = rt.block_on(caches.lookup(splice.actor_id(), splice.team_id()));
        splice.apply_context(user.as_deref(), team.as_deref());
        splice.encode_single_object()
    };
    // The same bytes either way, and the context was found for some.
    let mut found = 0;
    for p in &payloads {
        let out = spliced(p);
        assert_eq!(
            out,
            decoding_path(p),
            "the splice writes the decoding path's bytes"
        );
        let e = framing::decode_event(&out, None).expect("decodes");
        found += usize::from(e.tenant.enrichment.user_found);
    }
    assert!(found > 0, "the demo's users are found");

    let floor = best_of(reps, || {
        payloads
            .iter()
            .map(|p| {
                framing::decode_event(black_box(p), Some(&resolver))
                    .expect("decodes")
                    .event_time_us as u64
            })
            .sum()
    });
    let decoded = best_of(reps, || {
        payloads
            .iter()
            .map(|p| black_box(decoding_path(p)).len() as u64)
            .sum()
    });
    let splice = best_of(reps, || {
        payloads
            .iter()
            .map(|p| black_box(spliced(p)).len() as u64)
            .sum()
    });

    let per = |d: Duration| d.as_secs_f64() * 1e6 / n as f64;
    println!(
        "enrich_record: {n} demo events, {:.0} B mean payload, {found} with their user found, best of {reps}",
        bytes as f64 / n as f64
    );
    println!("{:<58} {:>8} {:>8}", "", "µs/rec", "× decode");
    for (name, (d, _)) in [
        ("decode alone (floor)", floor),
        (
            "decode, look up and apply context, encode (decoding path)",
            decoded,
        ),
        (
            "splice: actor, tenant, attributes anew, the rest copied",
            splice,
        ),
    ] {
        println!("{name:<58} {:>8.2} {:>8.2}", per(d), per(d) / per(floor.0));
    }
}
