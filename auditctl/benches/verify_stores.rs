//! Verification speed against the real stores, as ratios to raw SHA-256 measured in the same
//! run (these machines are noisy: ratios travel, absolute rates do not).
//!
//! `cargo bench -p auditctl --bench verify_stores` (needs the local stack: deploy/local/stack.sh
//! up, and `source deploy/local/env.sh`) writes a chain of N events over P partitions, with
//! signed v3 checkpoints every 1000 events, into a fresh ClickHouse database and an archive
//! prefix on the local SeaweedFS, exactly as the auditctl tests do, then times, best of R:
//!
//! - the baseline: SHA-256 over the events' canonical bytes (one digest per event);
//! - each store's floor, for scale: what only reading the stored bytes costs, with nothing
//!   decoded or checked. For the archive, listing the prefix and GETting every object (four at
//!   a time) with one SHA-256 over each body; for ClickHouse, the verifier's select list (every
//!   column) of each partition, all partitions at once, as `RowBinary`, with SHA-256 over the
//!   body. Nothing reading from that store can be faster on the same machine, so `verify ÷
//!   floor` is the share of the reachable speed the verifier gets, and `floor ÷ baseline` the
//!   most any verifier could get against raw SHA-256;
//! - `auditctl verify --source clickhouse --keys …` (SQL reads over HTTP, row decode, canonical
//!   re-encoding, links, whole-tree roots, signatures, freshness);
//! - `auditctl verify --source archive --keys …` (S3 GETs, segment digests, Avro decode, the
//!   same checks).
//!
//! Knobs: `AUDIT_BENCH_EVENTS` (default 100000), `AUDIT_BENCH_PARTITIONS` (default 4),
//! `AUDIT_BENCH_REPS` (default 3), `AUDIT_BENCH_SEGMENT_CODEC` (`deflate`, the default, or
//! `zstandard`: the archive's segments), `AUDIT_BENCH_KEEP=1` (keep the database too, to profile
//! `auditctl verify` alone against both stores: their names are printed on stderr). Nothing here
//! asserts a time. The database and prefix are dropped/left as the tests leave theirs.

#[path = "../tests/common/mod.rs"]
mod common;

use std::hint::black_box;
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use object_store::{path::Path as ObjPath, ObjectStore};
use sha2::{Digest, Sha256};

fn knob(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// CPU time (user + system, every thread) of this process so far, from /proc (Linux).
fn cpu_time() -> Duration {
    let ticks = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            // Fields after the command name (which may hold spaces) end with ')'.
            let rest = s.rsplit_once(')')?.1.to_owned();
            let f: Vec<&str> = rest.split_whitespace().collect();
            Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
        })
        .unwrap_or(0);
    // USER_HZ is 100 on Linux.
    Duration::from_millis(ticks * 10)
}

/// Best wall time of `reps` runs, and the CPU time of that run (CPU ÷ wall > 1: it used more
/// than one core; well under 1: it waited, on a store or on the machine's other load).
fn best<F: FnMut()>(reps: usize, mut f: F) -> (Duration, Duration) {
    (0..reps.max(1))
        .map(|_| {
            let (t, c) = (Instant::now(), cpu_time());
            f();
            (t.elapsed(), cpu_time().saturating_sub(c))
        })
        .min()
        .unwrap_or_default()
}

/// The archive's floor: every object under `prefix`, four GETs at a time, one SHA-256 over each
/// body. Returns the bytes read.
async fn read_archive(store: &dyn ObjectStore, prefix: &str) -> usize {
    let objects: Vec<_> = store
        .list(Some(&ObjPath::from(prefix)))
        .try_collect()
        .await
        .expect("list the archive prefix");
    assert!(!objects.is_empty(), "nothing under {prefix}");
    futures::stream::iter(objects)
        .map(|meta| async move {
            let body = store
                .get(&meta.location)
                .await
                .expect("GET")
                .bytes()
                .await
                .expect("body");
            black_box(Sha256::digest(&body));
            body.len()
        })
        .buffer_unordered(4)
        .fold(0, |sum, n| async move { sum + n })
        .await
}

/// ClickHouse's floor: the verifier's select list over each partition, all at once, as
/// `RowBinary`, SHA-256 over each body. Returns the bytes read.
async fn read_clickhouse(client: &clickhouse::Client, partitions: u32) -> usize {
    let reads = (0..partitions).map(|p| async move {
        let sql = format!(
            "{} WHERE chain_partition = {p}",
            schemas::flat::AuditRow::select_sql("audit_events")
        );
        let mut cursor = client.query(&sql).fetch_bytes("RowBinary").expect("query");
        let mut hasher = Sha256::new();
        let mut n = 0;
        while let Some(chunk) = cursor.next().await.expect("read rows") {
            n += chunk.len();
            hasher.update(&chunk);
        }
        black_box(hasher.finalize());
        n
    });
    futures::future::join_all(reads).await.into_iter().sum()
}

fn main() {
    let events = knob("AUDIT_BENCH_EVENTS", 100_000);
    let partitions = knob("AUDIT_BENCH_PARTITIONS", 4).max(1) as u32;
    let reps = knob("AUDIT_BENCH_REPS", 3);
    // The archive's segment codec (`AUDIT_BENCH_SEGMENT_CODEC`: deflate, the sink's default,
    // or zstandard).
    let codec: schemas::segment::BlockCodec = std::env::var("AUDIT_BENCH_SEGMENT_CODEC")
        .unwrap_or_else(|_| "deflate".into())
        .parse()
        .expect("AUDIT_BENCH_SEGMENT_CODEC: deflate or zstandard");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");

    let dir = tempfile::tempdir().expect("tempdir");
    let (key, keyset) = common::test_key(dir.path(), "bench");
    let per = events / partitions as usize;
    let chains: Vec<common::Chain> = (0..partitions)
        .map(|p| common::build_chain(p, per as u64, &key, 1000, common::BASE_US))
        .collect();
    let canonical: Vec<Vec<u8>> = chains
        .iter()
        .flat_map(|c| c.events.iter())
        .map(|e| schemas::avro::canonical_bytes(&e.event).expect("canonical"))
        .collect();
    let n = canonical.len();
    let bytes: usize = canonical.iter().map(Vec::len).sum();

    let prefix = common::unique("bench-verify");
    let db = rt.block_on(async {
        let db = common::TestDb::new("bench_verify").await;
        let store = common::s3_store();
        for c in &chains {
            db.insert_chain(c).await;
            common::write_archive_with(store.as_ref(), &prefix, c, 10_000, &[codec]).await;
        }
        db
    });
    eprintln!(
        "archive prefix {prefix}, clickhouse database {} (AUDIT_BENCH_KEEP=1 keeps it)",
        db.name
    );

    let (sha, _) = best(reps, || {
        for c in &canonical {
            black_box(Sha256::digest(black_box(c)));
        }
    });
    let keys = keyset.display().to_string();
    let base = common::s(&[
        "--keys",
        &keys,
        "--chain-id",
        common::CHAIN_ID,
        "--json",
        "--quiet",
    ]);
    let mut ch_args = common::s(&["verify", "--source", "clickhouse"]);
    ch_args.extend(base.clone());
    ch_args.extend(db.args());
    let mut ar_args = common::s(&["verify", "--source", "archive"]);
    ar_args.extend(base);
    ar_args.extend(common::s3_args(&prefix));
    let run = |args: &[String]| {
        best(reps, || {
            let (code, out) = rt.block_on(common::auditctl(args));
            assert_eq!(code, 0, "verify failed: {out}");
        })
    };
    let ch = run(&ch_args);
    let ar = run(&ar_args);
    let store = common::s3_store();
    let (mut ch_bytes, mut ar_bytes) = (0, 0);
    let ch_floor = best(reps, || {
        ch_bytes = rt.block_on(read_clickhouse(&db.client, partitions));
    });
    let ar_floor = best(reps, || {
        ar_bytes = rt.block_on(read_archive(store.as_ref(), &prefix));
    });

    println!(
        "{n} events over {partitions} partitions, {:.1} MB of canonical bytes (mean {} B), v3 checkpoints every 1000, segments {codec}, best of {reps}",
        bytes as f64 / 1e6,
        bytes / n.max(1)
    );
    println!(
        "{:<44} {:>10} {:>9} {:>11} {:>9}",
        "stage", "events/s", "MB/s", "vs sha256", "cpu/wall"
    );
    let line = |name: &str, (d, cpu): (Duration, Duration)| {
        let s = d.as_secs_f64().max(1e-9);
        println!(
            "{name:<44} {:>10.0} {:>9.1} {:>10.4}x {:>9.2}",
            n as f64 / s,
            bytes as f64 / 1e6 / s,
            sha.as_secs_f64() / s,
            cpu.as_secs_f64() / s
        );
    };
    line("sha256 of canonical bytes (baseline)", (sha, sha));
    line("clickhouse floor: SELECT + sha256", ch_floor);
    line("auditctl verify --source clickhouse", ch);
    line("archive floor: GET + sha256", ar_floor);
    line("auditctl verify --source archive", ar);
    println!("(MB/s counts canonical bytes on every line; 'vs sha256' = throughput ÷ baseline throughput)");
    println!(
        "floors read {:.1} MB of RowBinary and {:.1} MB of archive objects; verify ÷ its store's floor: clickhouse {:.3}x, archive {:.3}x",
        ch_bytes as f64 / 1e6,
        ar_bytes as f64 / 1e6,
        ch_floor.0.as_secs_f64() / ch.0.as_secs_f64().max(1e-9),
        ar_floor.0.as_secs_f64() / ar.0.as_secs_f64().max(1e-9),
    );
    if std::env::var("AUDIT_BENCH_KEEP").as_deref() == Ok("1") {
        // To profile one store alone, e.g. `perf record target/release/auditctl <these>`.
        let kept = dir.keep();
        eprintln!("kept {}", kept.display());
        eprintln!("clickhouse: auditctl {}", ch_args.join(" "));
        eprintln!("archive: auditctl {}", ar_args.join(" "));
    } else {
        rt.block_on(db.drop());
    }
}
