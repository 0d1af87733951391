//! sink-clickhouse's own work per record, in process (no broker, no server): the demo stream's
//! events, chained and framed as `<prefix>chained` holds them, from Kafka payload to what a
//! batch holds until it is stored, in batches of the sink's default 10,000 rows freed when
//! "flushed":
//!
//! - decode each payload (`framing::decode_chained`), the floor every way of storing shares;
//! - held rows, what the sink did up to the twelfth session: decode, flatten
//!   (`AuditRow::from_chained`, today's), hold the boxed row; the `clickhouse` crate then
//!   serialized each held row at insert time (not counted here, so this understates that
//!   path);
//! - since the thirteenth: decode, flatten by moving the strings
//!   (`AuditRow::from_chained_owned`), write the row's `RowBinary` (`batch::Entry::new`,
//!   checked against the first migration's column types) and hold those bytes; at flush, the
//!   bytes are copied into one INSERT body, as the insert's buffer does;
//! - since the sixteenth: the row's `RowBinary` straight from the datum's bytes
//!   (`batch::Entry::from_datum`, `schemas::chained_row`: no decoded event, no flattened row),
//!   the same bytes (checked here, and row by row in the unit tests).
//!
//! The worker-bench profiles that led here: about a third of sink-clickhouse's samples were in
//! glibc's free path (`malloc_consolidate`, `unlink_chunk`, `_int_free`) as flushed batches of
//! held rows were dropped; then, with rows held as bytes, a quarter in `malloc`/`free` for the
//! decoded event's strings and as much again decoding and flattening it.
//!
//! `cargo bench -p integration-tests --bench clickhouse_row` (knobs `AUDIT_BENCH_EVENTS`,
//! default 40000, and `AUDIT_BENCH_REPS`, default 5; best of the reps). Prints µs per record
//! and the ratio to decoding alone; nothing here asserts a time.

use std::hint::black_box;
use std::time::Duration;

use integration_tests::bench::inproc::{best_of, chained_demo_events, knob};
use schemas::avro::RecordKind;
use schemas::flat::AuditRow;
use schemas::framing::{self, CatalogIdResolver};
use sink_clickhouse::batch::Entry;
use sink_clickhouse::rowbinary::first_migration_layout;

/// The sink's default `--batch-max-rows`.
const BATCH: usize = 10_000;

fn main() {
    let n = knob("AUDIT_BENCH_EVENTS", 40_000).max(1);
    let reps = knob("AUDIT_BENCH_REPS", 5);
    let payloads: Vec<Vec<u8>> = chained_demo_events(n, 1_780_000_000_000_000)
        .iter()
        .map(|c| framing::encode_single_object_chained(c).expect("encodes"))
        .collect();
    let bytes: usize = payloads.iter().map(Vec::len).sum();
    let resolver = CatalogIdResolver::new().expect("catalog");
    let layout = first_migration_layout().expect("layout");
    let decode =
        |p: &[u8]| framing::decode_chained(black_box(p), Some(&resolver)).expect("decodes");

    let floor = best_of(reps, || {
        payloads
            .iter()
            .map(|p| black_box(decode(p)).seq as u64)
            .sum()
    });
    let rows = best_of(reps, || {
        let mut held: Vec<Box<AuditRow>> = Vec::new();
        let mut total = 0;
        for (i, p) in payloads.iter().enumerate() {
            held.push(Box::new(AuditRow::from_chained(&decode(p), i as i64)));
            if held.len() == BATCH {
                total += held.len() as u64;
                held = Vec::new(); // flushed: the batch is freed
            }
        }
        total + held.len() as u64
    });
    let mut row_bytes = 0;
    let entries = best_of(reps, || {
        let mut held: Vec<Entry> = Vec::new();
        let mut scratch = Vec::new();
        let mut body: Vec<u8> = Vec::new();
        let mut total = 0;
        for (i, p) in payloads.iter().enumerate() {
            let row = AuditRow::from_chained_owned(decode(p), i as i64);
            held.push(Entry::new(row, &layout, &mut scratch).expect("fits the table"));
            if held.len() == BATCH {
                total += flush_into(&mut held, &mut body);
            }
        }
        total += flush_into(&mut held, &mut body);
        row_bytes = total;
        total
    });
    let mut direct_bytes = 0;
    let direct = best_of(reps, || {
        let mut held: Vec<Entry> = Vec::new();
        let mut scratch = Vec::new();
        let mut body: Vec<u8> = Vec::new();
        let mut total = 0;
        for (i, p) in payloads.iter().enumerate() {
            let datum =
                framing::current_datum(black_box(p), RecordKind::ChainedEvent, Some(&resolver))
                    .expect("the current chained schema");
            held.push(
                Entry::from_datum(datum, i as i64, &layout, &mut scratch).expect("fits the table"),
            );
            if held.len() == BATCH {
                total += flush_into(&mut held, &mut body);
            }
        }
        total += flush_into(&mut held, &mut body);
        direct_bytes = total;
        total
    });
    // The same bytes either way (the unit tests check it row by row).
    assert_eq!(
        direct_bytes, row_bytes,
        "both ways write the same RowBinary"
    );

    println!(
        "{n} demo events chained, mean {} B per Kafka payload, {} B of RowBinary per row, \
         batches of {BATCH}, best of {reps}",
        bytes / n,
        row_bytes / n as u64
    );
    println!("{:<62} {:>10} {:>10}", "step", "µs/record", "× decode");
    let line = |name: &str, (d, _): (Duration, u64)| {
        println!(
            "{name:<62} {:>10.2} {:>10.2}",
            d.as_secs_f64() * 1e6 / n as f64,
            d.as_secs_f64() / floor.0.as_secs_f64().max(1e-12)
        );
    };
    line("decode the payload (the decoding ways' floor)", floor);
    line(
        "decode, flatten, hold boxed rows, free (before; no serialize)",
        rows,
    );
    line(
        "decode, flatten by move, hold RowBinary, INSERT body (before)",
        entries,
    );
    line(
        "RowBinary straight from the datum, hold, INSERT body (now)",
        direct,
    );
}

/// What a flush does with the held rows: one INSERT body, then the batch is freed.
fn flush_into(held: &mut Vec<Entry>, body: &mut Vec<u8>) -> u64 {
    body.clear();
    for e in held.iter() {
        body.extend_from_slice(&e.bytes);
    }
    *held = Vec::new();
    body.len() as u64
}
