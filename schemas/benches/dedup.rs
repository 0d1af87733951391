//! What the chainer's dedup window costs: bytes per record and nanoseconds per operation.
//!
//! `cargo bench -p schemas --bench dedup` measures, in one run, the window as it is
//! (`schemas::dedup::DedupWindow`) next to the layout it replaced (a ring of keys plus a
//! `HashMap<IdDigest, Entry>`, copied below as `Legacy`), each in a child process of its own so
//! one's freed memory cannot flatter the other's figures:
//!
//! - memory: the resident set (`VmRSS`) added by a full window of W records, and the peak
//!   (`VmHWM`, reset through `/proc/self/clear_refs` when allowed) while filling it, per record;
//!   the compact window also reports the heap it allocated (`heap_bytes`);
//! - time, at steady state (full window, every record evicting the oldest): `check` of a new
//!   key (the common case), `check` of a duplicate, and the chainer's step for a new event
//!   (`check` + `record`); plus filling from empty.
//!
//! Memory is read from `/proc` rather than a counting global allocator: the workspace forbids
//! `unsafe`, which a `GlobalAlloc` impl needs. Keys are uniformly random 128-bit values, as
//! SHA-256 prefixes are; generated before the baseline so they are not counted.
//!
//! Knobs (environment): `AUDIT_BENCH_DEDUP_WINDOW` (default 1000000), `AUDIT_BENCH_OPS`
//! (default 1000000). Run without `--bench` (`cargo test --benches`) it checks itself on a
//! 1000-record window instead. Nothing here asserts a time.

use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasherDefault;
use std::hint::black_box;
use std::process::Command;
use std::time::Instant;

use schemas::dedup::{DedupWindow, DigestHasher, IdDigest, Seen};
use schemas::identity::ContentDigest;
use schemas::realistic::{digest16, env_usize, Rng};

const CHILD_ENV: &str = "AUDIT_BENCH_DEDUP_CHILD";

/// The window before it was made compact, verbatim in behaviour: a ring of keys and a map
/// key → every occurrence (first inline, the rest in a `Vec`).
#[derive(Debug, Clone)]
struct Entry {
    pos: u64,
    content: ContentDigest,
    more: Vec<(u64, ContentDigest)>,
}

#[derive(Debug)]
struct Legacy {
    capacity: usize,
    ring: VecDeque<IdDigest>,
    latest: HashMap<IdDigest, Entry, BuildHasherDefault<DigestHasher>>,
    front_pos: u64,
}

impl Legacy {
    fn new(capacity: usize) -> Self {
        Self {
            capacity,
            ring: VecDeque::new(),
            latest: HashMap::default(),
            front_pos: 0,
        }
    }
    fn check(&self, key: &IdDigest, content: &ContentDigest) -> Seen {
        match self.latest.get(key) {
            None => Seen::New,
            Some(e) if e.content == *content || e.more.iter().any(|(_, x)| x == content) => {
                Seen::Duplicate
            }
            Some(_) => Seen::Conflict,
        }
    }
    fn record(&mut self, key: IdDigest, content: ContentDigest) {
        if self.ring.len() == self.capacity {
            if let Some(old) = self.ring.pop_front() {
                let pos = self.front_pos;
                if let Some(e) = self.latest.get_mut(&old) {
                    if e.pos == pos {
                        if e.more.is_empty() {
                            self.latest.remove(&old);
                        } else {
                            let (p, c) = e.more.remove(0);
                            e.pos = p;
                            e.content = c;
                        }
                    }
                }
                self.front_pos += 1;
            }
        }
        let pos = self.front_pos + self.ring.len() as u64;
        self.ring.push_back(key);
        match self.latest.get_mut(&key) {
            Some(e) => e.more.push((pos, content)),
            None => {
                self.latest.insert(
                    key,
                    Entry {
                        pos,
                        content,
                        more: Vec::new(),
                    },
                );
            }
        }
    }
}

trait Window {
    fn new(capacity: usize) -> Self;
    fn check(&self, key: &IdDigest, content: &ContentDigest) -> Seen;
    fn record(&mut self, key: IdDigest, content: ContentDigest);
    fn heap_bytes(&self) -> Option<usize>;
}

impl Window for Legacy {
    fn new(capacity: usize) -> Self {
        Legacy::new(capacity)
    }
    fn check(&self, key: &IdDigest, content: &ContentDigest) -> Seen {
        Legacy::check(self, key, content)
    }
    fn record(&mut self, key: IdDigest, content: ContentDigest) {
        Legacy::record(self, key, content)
    }
    fn heap_bytes(&self) -> Option<usize> {
        None
    }
}

impl Window for DedupWindow {
    fn new(capacity: usize) -> Self {
        DedupWindow::new(capacity)
    }
    fn check(&self, key: &IdDigest, content: &ContentDigest) -> Seen {
        DedupWindow::check(self, key, content)
    }
    fn record(&mut self, key: IdDigest, content: ContentDigest) {
        DedupWindow::record(self, key, content)
    }
    fn heap_bytes(&self) -> Option<usize> {
        Some(DedupWindow::heap_bytes(self))
    }
}

/// A `/proc/self/status` field in bytes (its value is in kB).
fn status_bytes(field: &str) -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with(field))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Resets `VmHWM` to the current RSS; false where the kernel or sandbox refuses.
fn reset_peak() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

fn content_of(i: usize) -> ContentDigest {
    let mut r = Rng(i as u64 ^ 0x9E37_79B9_7F4A_7C15);
    ContentDigest(digest16(&mut r))
}

/// Measures one implementation; prints `name key=value ...` on one line for the parent.
fn measure<W: Window>(name: &str, w_cap: usize, ops: usize) {
    let mut rng = Rng(0x5EED);
    // Fill with 2W (steady state), then `ops` fresh keys for the timed steps.
    let keys: Vec<IdDigest> = (0..2 * w_cap + ops)
        .map(|_| IdDigest::from_bytes(digest16(&mut rng)))
        .collect();
    let peak_reset = reset_peak();
    let rss0 = status_bytes("VmRSS:");
    let t = Instant::now();
    let mut w = W::new(w_cap);
    for (i, k) in keys[..2 * w_cap].iter().enumerate() {
        w.record(*k, content_of(i));
    }
    let fill_ns = t.elapsed().as_nanos() as f64 / (2 * w_cap) as f64;
    let rss1 = status_bytes("VmRSS:");
    let hwm = status_bytes("VmHWM:");
    let per = |a: Option<u64>, b: Option<u64>| match (a, b) {
        (Some(a), Some(b)) => format!("{:.1}", a.saturating_sub(b) as f64 / w_cap as f64),
        _ => "n/a".to_owned(),
    };
    let rss_per = per(rss1, rss0);
    let peak_per = if peak_reset {
        per(hwm, rss0)
    } else {
        "n/a".to_owned()
    };
    let heap_per = w.heap_bytes().map_or("n/a".to_owned(), |b| {
        format!("{:.1}", b as f64 / w_cap as f64)
    });

    let fresh = &keys[2 * w_cap..];
    let t = Instant::now();
    let mut news = 0usize;
    for (i, k) in fresh.iter().enumerate() {
        news += usize::from(w.check(k, &content_of(i)) == Seen::New);
    }
    let miss_ns = t.elapsed().as_nanos() as f64 / ops as f64;
    assert_eq!(news, ops, "fresh keys are new");

    // The window holds keys[w_cap..2 w_cap] with contents content_of(index).
    let t = Instant::now();
    let mut dups = 0usize;
    for j in 0..ops {
        let i = w_cap + j % w_cap;
        dups += usize::from(w.check(&keys[i], &content_of(i)) == Seen::Duplicate);
    }
    let dup_ns = t.elapsed().as_nanos() as f64 / ops as f64;
    assert_eq!(dups, ops, "keys in the window are duplicates");

    let t = Instant::now();
    for (i, k) in fresh.iter().enumerate() {
        let c = content_of(2 * w_cap + i);
        if w.check(k, &c) != Seen::Duplicate {
            w.record(*k, c);
        }
    }
    let step_ns = t.elapsed().as_nanos() as f64 / ops as f64;
    black_box(&w);
    println!(
        "{name} rss_per_rec={rss_per} peak_per_rec={peak_per} heap_per_rec={heap_per} \
         fill_ns={fill_ns:.1} check_new_ns={miss_ns:.1} check_dup_ns={dup_ns:.1} \
         chain_step_ns={step_ns:.1}"
    );
}

fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    let (w_cap, ops) = if bench {
        (
            env_usize("AUDIT_BENCH_DEDUP_WINDOW", 1_000_000),
            env_usize("AUDIT_BENCH_OPS", 1_000_000),
        )
    } else {
        (1000, 1000)
    };
    if let Ok(which) = std::env::var(CHILD_ENV) {
        match which.as_str() {
            "legacy" => measure::<Legacy>("legacy", w_cap, ops),
            _ => measure::<DedupWindow>("compact", w_cap, ops),
        }
        return;
    }
    let exe = std::env::current_exe().expect("the bench's own path");
    println!("dedup window W = {w_cap}, {ops} timed ops each; per-record figures in bytes");
    println!(
        "{:<8} {:>9} {:>9} {:>9} {:>9} {:>12} {:>12} {:>12}",
        "layout",
        "RSS/rec",
        "peak/rec",
        "heap/rec",
        "fill ns",
        "check new",
        "check dup",
        "chain step"
    );
    for which in ["legacy", "compact"] {
        let mut cmd = Command::new(&exe);
        cmd.env(CHILD_ENV, which)
            .env("AUDIT_BENCH_DEDUP_WINDOW", w_cap.to_string())
            .env("AUDIT_BENCH_OPS", ops.to_string());
        if bench {
            cmd.arg("--bench");
        }
        let out = cmd.output().expect("run the measuring child");
        assert!(
            out.status.success(),
            "{which} child failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let line = String::from_utf8_lossy(&out.stdout);
        let field = |k: &str| {
            line.split_whitespace()
                .find_map(|f| f.strip_prefix(k).and_then(|v| v.strip_prefix('=')))
                .unwrap_or("?")
                .to_owned()
        };
        println!(
            "{:<8} {:>9} {:>9} {:>9} {:>9} {:>12} {:>12} {:>12}",
            which,
            field("rss_per_rec"),
            field("peak_per_rec"),
            field("heap_per_rec"),
            field("fill_ns"),
            field("check_new_ns"),
            field("check_dup_ns"),
            field("chain_step_ns"),
        );
    }
}
