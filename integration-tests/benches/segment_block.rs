//! sink-archive's own work per record, in process (no broker, no S3): the demo stream's events,
//! chained, through `schemas::segment::SegmentBuilder` (encode each record, compress each
//! 256 KiB container block, finish the segment), and each block's compression alone with
//! other deflate settings, on the same blocks in the same run:
//!
//! - apache-avro's `deflate` codec at its default level (miniz_oxide level 6): what the
//!   builder used up to the eleventh session (and what the tests' reference writer uses);
//! - zlib-rs raw deflate at levels 1, 4 and 6 (the builder's since the twelfth: level 6,
//!   `schemas::segment::DEFLATE_LEVEL`);
//! - and the builder again with `BlockCodec::Zstandard` (`--segment-codec zstandard`, zstd at
//!   `schemas::segment::ZSTD_LEVEL`), its output's size beside deflate's;
//! - from the Kafka payloads, as the sink gets them, with either codec: decoded and encoded
//!   again (up to the fifteenth session), or appended as read (`SegmentBuilder::push_canonical`
//!   of a `schemas::chained_row::CanonicalDatum`, since the sixteenth).
//!
//! The worker-bench profile that led here: 62% of sink-archive's samples were in
//! `miniz_oxide::deflate::core::compress_inner`.
//!
//! `cargo bench -p integration-tests --bench segment_block` (knobs `AUDIT_BENCH_EVENTS`,
//! default 20000, and `AUDIT_BENCH_REPS`, default 5; best of the reps). Prints µs per record,
//! MB/s of uncompressed block bytes and the compressed size as a share of the input; nothing
//! here asserts a time.

use std::hint::black_box;
use std::time::Duration;

use apache_avro::{Codec, DeflateSettings};
use integration_tests::bench::inproc::{best_of, chained_demo_events, knob};
use schemas::avro::RecordKind;
use schemas::chained_row::CanonicalDatum;
use schemas::segment::{BlockCodec, SegmentBuilder};

/// Raw deflate (RFC 1951, what Avro's `deflate` codec holds) with zlib-rs at `level`.
fn zlib_rs_deflate(data: &[u8], level: i32) -> usize {
    let config = zlib_rs::DeflateConfig {
        window_bits: -15,
        ..zlib_rs::DeflateConfig::new(level)
    };
    let mut out = vec![0u8; zlib_rs::compress_bound(data.len())];
    let (written, rc) = zlib_rs::compress_slice(&mut out, data, config);
    assert_eq!(rc, zlib_rs::ReturnCode::Ok, "zlib-rs deflate");
    written.len()
}

fn main() {
    let n = knob("AUDIT_BENCH_EVENTS", 20_000).max(1);
    let reps = knob("AUDIT_BENCH_REPS", 5);
    // A fixed day (a segment never spans two), events a millisecond apart within it.
    const T0: i64 = 1_780_000_000_000_000;
    let events = chained_demo_events(n, T0);

    // The blocks the builder compresses: its own encoding, cut where it cuts.
    let mut blocks: Vec<Vec<u8>> = vec![Vec::new()];
    for ev in &events {
        let last = blocks.last_mut().expect("one block");
        schemas::framing::chained_datum_into(ev, last).expect("encodes");
        if last.len() >= 256 * 1024 {
            blocks.push(Vec::new());
        }
    }
    blocks.retain(|b| !b.is_empty());
    let input: usize = blocks.iter().map(Vec::len).sum();

    let encode = best_of(reps, || {
        let mut out = Vec::with_capacity(64 * 1024);
        let mut total = 0;
        for ev in &events {
            out.clear();
            schemas::framing::chained_datum_into(black_box(ev), &mut out).expect("encodes");
            total += out.len() as u64;
        }
        total
    });
    let build = |codec: BlockCodec| {
        best_of(reps, || {
            let mut b = SegmentBuilder::with_codec(codec);
            for ev in &events {
                b.push(black_box(ev)).expect("push");
            }
            let (_, bytes) = b
                .finish("audit.chained", 0, n as i64 - 1, "bench")
                .expect("finish");
            bytes.len() as u64
        })
    };
    let build_deflate = build(BlockCodec::Deflate);
    let build_zstd = build(BlockCodec::Zstandard);
    // From the Kafka payloads, as the sink gets them: decoded and encoded again (up to the
    // fifteenth session), or appended as read when they are their record's own encoding.
    let payloads: Vec<Vec<u8>> = events
        .iter()
        .map(|e| schemas::framing::encode_single_object_chained(e).expect("encodes"))
        .collect();
    let from_payloads = |codec: BlockCodec, as_read: bool| {
        best_of(reps, || {
            let mut b = SegmentBuilder::with_codec(codec);
            for p in &payloads {
                let p = black_box(p);
                if as_read {
                    let datum = schemas::framing::current_datum(p, RecordKind::ChainedEvent, None)
                        .expect("the current chained schema");
                    let d = CanonicalDatum::new(datum).expect("the chainer's encoding");
                    b.push_canonical(&d).expect("push");
                } else {
                    let ev = schemas::framing::decode_chained(p, None).expect("decodes");
                    b.push(&ev).expect("push");
                }
            }
            let (_, bytes) = b
                .finish("audit.chained", 0, n as i64 - 1, "bench")
                .expect("finish");
            bytes.len() as u64
        })
    };
    let decoded_deflate = from_payloads(BlockCodec::Deflate, false);
    let as_read_deflate = from_payloads(BlockCodec::Deflate, true);
    let decoded_zstd = from_payloads(BlockCodec::Zstandard, false);
    let as_read_zstd = from_payloads(BlockCodec::Zstandard, true);
    // Same segment either way.
    assert_eq!(decoded_deflate.1, as_read_deflate.1);
    assert_eq!(decoded_zstd.1, as_read_zstd.1);
    let avro_default = best_of(reps, || {
        blocks
            .iter()
            .map(|b| {
                let mut data = b.clone();
                Codec::Deflate(DeflateSettings::default())
                    .compress(&mut data)
                    .expect("deflate");
                data.len() as u64
            })
            .sum()
    });
    let zlib = |level: i32| {
        best_of(reps, || {
            blocks
                .iter()
                .map(|b| zlib_rs_deflate(black_box(b), level) as u64)
                .sum()
        })
    };

    println!(
        "{n} demo events chained, {} blocks, mean {} B encoded per record, best of {reps}",
        blocks.len(),
        input / n
    );
    println!(
        "{:<58} {:>10} {:>8} {:>12}",
        "step", "µs/record", "MB/s", "out / input"
    );
    let line = |name: &str, (d, out): (Duration, u64)| {
        println!(
            "{name:<58} {:>10.2} {:>8.0} {:>12.3}",
            d.as_secs_f64() * 1e6 / n as f64,
            input as f64 / d.as_secs_f64().max(1e-12) / 1e6,
            out as f64 / input as f64
        );
    };
    line("encode each record (chained_datum_into)", encode);
    line(
        "SegmentBuilder: push all, finish (the sink's own work)",
        build_deflate,
    );
    line(
        &format!(
            "SegmentBuilder, --segment-codec zstandard (zstd level {})",
            schemas::segment::ZSTD_LEVEL
        ),
        build_zstd,
    );
    line(
        "payloads: decode, push, finish (deflate; before)",
        decoded_deflate,
    );
    line(
        "payloads: as read, push_canonical, finish (deflate; now)",
        as_read_deflate,
    );
    line(
        "payloads: decode, push, finish (zstandard; before)",
        decoded_zstd,
    );
    line(
        "payloads: as read, push_canonical, finish (zstandard; now)",
        as_read_zstd,
    );
    line(
        "deflate blocks: apache-avro default (miniz_oxide 6)",
        avro_default,
    );
    for level in [1, 4, 6] {
        line(
            &format!("deflate blocks: zlib-rs level {level}"),
            zlib(level),
        );
    }
}
