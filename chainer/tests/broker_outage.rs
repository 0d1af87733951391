//! The chainer rides out a broker outage longer than `message.timeout.ms` by itself (issue 6):
//! its deliveries fail, librdkafka declares the idempotent producer fatal
//! (`enable.gapless.guarantee`), and each affected partition stops, drains, is recovered again
//! from the chained tail (with back-off while the broker is away) on a new producer, and chains
//! on. The worker never exits; every event is chained once per (partition, seq) with unbroken
//! links, and the checkpoints stay contiguous and verify.
//!
//! The outage is a TCP proxy the test cuts (the shared broker is never restarted). A broker
//! tells its clients where to reconnect (its advertised listener), so the test runs a private
//! tansu whose advertised address is the proxy; every client, the chainer's and the test's,
//! goes through it. Fails when the `tansu` binary is not installed (the local stack installs it).

mod common;

use worker_runtime::testing::proxy;

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use common::{ev, produce_pipelined as produce, TestKey};
use integrity::verify::{verify_partition, OwnedRecord, VerifyOptions};
use rdkafka::consumer::{BaseConsumer, Consumer};
use schemas::framing::{decode_chained, decode_checkpoint};
use worker_runtime::kafka::admin::{ensure_topics, pipeline_topic_specs};
use worker_runtime::kafka::{KafkaArgs, Producer};

const PARTITIONS: i32 = 2;
/// Events per partition: many in-flight windows' worth (the chained topic's high watermark
/// moves a window at a time), so that the cut finds partition 0 part way.
const N: i64 = 10_000;
/// The chainer's `message.timeout.ms`: the outage lasts several times this.
const MESSAGE_TIMEOUT_MS: u64 = 3000;

fn tansu_bin() -> Option<PathBuf> {
    let home = std::env::var("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|_| std::env::var("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .ok()?;
    let candidate = home.join("bin").join("tansu");
    if candidate.is_file() {
        return Some(candidate);
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("tansu"))
            .find(|p| p.is_file())
    })
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

/// A tansu of the test's own (SQLite in a temporary directory), killed when dropped.
struct Broker {
    child: Child,
    dir: PathBuf,
}

impl Broker {
    fn start(bin: &PathBuf, port: u16, advertised: u16, tag: &str) -> Broker {
        let dir = std::env::temp_dir().join(format!("chainer-outage-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("broker dir");
        let log = std::fs::File::create(dir.join("tansu.log")).expect("broker log");
        let child = Command::new(bin)
            .args([
                "broker",
                "--cluster-id",
                "chainer-outage",
                "--listener-url",
                &format!("tcp://127.0.0.1:{port}"),
                "--advertised-listener-url",
                &format!("tcp://127.0.0.1:{advertised}"),
                "--storage-engine",
                &format!("sqlite:///{}", dir.join("tansu.db").display()),
            ])
            // tansu reads these from the environment too: keep a caller's away from it.
            .env_remove("LISTENER_URL")
            .env_remove("ADVERTISED_LISTENER_URL")
            .env_remove("STORAGE_ENGINE")
            .env_remove("CLUSTER_ID")
            .env_remove("SCHEMA_REGISTRY")
            .env_remove("DATA_LAKE")
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start tansu");
        Broker { child, dir }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = std::fs::read_to_string(self.dir.join("tansu.log")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!("tansu: {:?}; its log ends with:", self.child.try_wait());
            for l in tail.iter().rev() {
                eprintln!("  {l}");
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// How long a read of a partition waits for more records.
const SCAN_IDLE: Duration = Duration::from_secs(30);

async fn read_all(args: &KafkaArgs, topic: &str, p: i32) -> Vec<Vec<u8>> {
    common::read_all(args, topic, p, SCAN_IDLE).await
}

/// Polls `f` every 200 ms until it holds (see [`common::until`]).
async fn until<F, Fut>(what: &str, limit: Duration, f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    common::until(what, limit, Duration::from_millis(200), f).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_outage_longer_than_the_message_timeout_is_ridden_out_without_exiting() {
    worker_runtime::telemetry::init_for_tests();
    // The local stack installs tansu (deploy/local/stack.sh install): without it this test
    // fails rather than passing without having run.
    let bin = tansu_bin().expect("the tansu binary (deploy/local/stack.sh install)");
    let tansu_port = free_port();
    let proxy = proxy::Proxy::start(&format!("127.0.0.1:{tansu_port}")).await;
    let _broker = Broker::start(&bin, tansu_port, proxy.port(), "timeout");
    let brokers = format!("127.0.0.1:{}", proxy.port());
    let prefix = "audit.";
    let args = KafkaArgs::local(&brokers, prefix);
    let topics = args.topics();
    // tansu takes a moment to listen.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match ensure_topics(&args, &pipeline_topic_specs(&args, PARTITIONS), 1).await {
            Ok(_) => break,
            Err(e) => {
                assert!(
                    Instant::now() < deadline,
                    "private tansu did not start: {e}"
                );
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
    let producer = Producer::new(&args, "outage-test").unwrap();
    for p in 0..PARTITIONS {
        let inputs: Vec<Vec<u8>> = (0..N).map(|i| ev(&format!("p{p}-{i}"))).collect();
        produce(&producer, &topics.enriched, p, &inputs).await;
    }

    let key = TestKey::new(
        std::env::temp_dir().join(format!("chainer-outage-key-{}", std::process::id())),
    );

    let timeout = format!("message.timeout.ms={MESSAGE_TIMEOUT_MS}");
    let config = chainer::Config::parse_from([
        "chainer",
        "--kafka-brokers",
        &brokers,
        "--topic-prefix",
        prefix,
        "--kafka-property",
        &timeout,
        "--health-addr",
        "",
        "--partitions",
        "all",
        "--dedup-window",
        "100000",
        // A window of a few produce requests, so that the cut finds many records in flight.
        "--max-in-flight",
        "1000",
        "--checkpoint-key-file",
        key.path.to_str().unwrap(),
        "--checkpoint-key-id",
        "k1",
        "--checkpoint-every-events",
        "50",
        "--scan-idle-timeout-secs",
        "5",
        "--shutdown-timeout-secs",
        "20",
    ]);
    let common::RunningChainer {
        status,
        shutdown,
        task,
    } = common::spawn_chainer(config);

    // Cut while the chainer chains: part of partition 0 is in the log, the rest in flight.
    // The watermark is read with one client, every few milliseconds, and the cut follows the
    // reading that saw chaining under way at once: a fresh client per reading (a connection
    // and a metadata round trip each) once let the chainer finish partition 0 in between.
    let watermarks: Arc<BaseConsumer> = Arc::new(
        args.client_config("outage-watermarks")
            .set("group.id", "outage-watermarks-unused")
            .create()
            .unwrap(),
    );
    let chained_high = |p: i32| {
        let (c, t) = (watermarks.clone(), topics.chained.clone());
        async move {
            tokio::task::spawn_blocking(move || c.fetch_watermarks(&t, p, Duration::from_secs(5)))
                .await
                .unwrap()
                .map_or(-1, |(_, h)| h)
        }
    };
    let started = Instant::now();
    let at_cut = loop {
        let h = chained_high(0).await;
        if h >= 200 {
            proxy.cut();
            break h;
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "chaining did not start: partition 0's chained high watermark is {h}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    // Gone before the outage's refusals are counted (they are the chainer's), and off the
    // runtime: a client's destruction waits for its threads.
    tokio::task::spawn_blocking(move || drop(watermarks))
        .await
        .unwrap();
    assert!(
        at_cut < N,
        "partition 0 was chained ({at_cut} records) before the cut: the test proves nothing"
    );
    let cut_at = Instant::now();
    // Several times the message timeout, and until the chainer saw a delivery fail and kept
    // trying to reach the broker (its recovery, with back-off) while it is away.
    let mut reasons = Vec::new();
    let refused = proxy.refused();
    loop {
        assert!(
            !task.is_finished(),
            "the chainer exited during the outage: {:?}",
            task.await
        );
        let r = status.reason();
        if !r.is_empty() && reasons.last() != Some(&r) {
            reasons.push(r);
        }
        if cut_at.elapsed() > Duration::from_millis(4 * MESSAGE_TIMEOUT_MS)
            && status.rerecoveries() > 0
            && proxy.refused() >= refused + 5
        {
            break;
        }
        assert!(
            cut_at.elapsed() < Duration::from_secs(120),
            "no delivery failure seen in {:?} of outage (reasons: {reasons:?})",
            cut_at.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!status.ready(), "ready while the broker is away");
    eprintln!(
        "outage of {:?}; chained at the cut: {at_cut}; not-ready reasons: {reasons:#?}",
        cut_at.elapsed()
    );
    proxy.restore();

    // The chain reaches the end of the input, all acknowledged.
    until("all chained", Duration::from_secs(300), || {
        let s = status.clone();
        let done = !task.is_finished();
        async move {
            assert!(done, "the chainer exited after the outage");
            let parts = s.partitions();
            s.ready()
                && parts.len() == PARTITIONS as usize
                && parts.values().all(|v| v.next_offset == Some(N))
        }
    })
    .await;
    eprintln!("re-recoveries: {}", status.rerecoveries());
    shutdown.trigger();
    task.await
        .unwrap()
        .expect("the chainer ended with an error");

    for p in 0..PARTITIONS {
        // One record per seq: identical copies of a record that landed although its delivery
        // was reported failed are harmless (the sinks keep one); two different ones are a fork.
        let mut by_seq: BTreeMap<i64, Vec<u8>> = BTreeMap::new();
        let mut copies = 0;
        for b in read_all(&args, &topics.chained, p).await {
            let seq = decode_chained(&b, None).unwrap().seq;
            match by_seq.get(&seq) {
                Some(prev) => {
                    assert_eq!(
                        prev, &b,
                        "partition {p}: two different records at seq {seq}"
                    );
                    copies += 1;
                }
                None => {
                    by_seq.insert(seq, b);
                }
            }
        }
        let seqs: Vec<i64> = by_seq.keys().copied().collect();
        assert_eq!(seqs, (1..=N).collect::<Vec<_>>(), "partition {p}");
        let recs: Vec<_> = by_seq
            .values()
            .map(|b| decode_chained(b, None).unwrap())
            .collect();
        let ids: HashSet<_> = recs.iter().map(|r| r.event.event_id.clone()).collect();
        let want: HashSet<_> = (0..N).map(|i| format!("p{p}-{i}")).collect();
        assert_eq!(ids, want, "partition {p}: events missing or chained twice");

        // Checkpoints: contiguous from seq 1, and every one verifies against the records (head
        // and Merkle root at its seq). A range may be signed twice with different ends: a
        // checkpoint whose delivery the chainer gave up on during the outage can still land
        // when the broker is back, and the recovered task, which did not see it, signs its
        // range again from the same first seq up to where its own trigger fires. Both are
        // signed prefixes of the same chain (the verifier checks each), never a fork.
        let mut cps: Vec<schemas::Checkpoint> = Vec::new();
        for b in read_all(&args, &topics.checkpoints, p).await {
            let c = decode_checkpoint(&b, None).unwrap();
            // A genesis checkpoint (seq 0) covers nothing: not a range.
            if c.partition == p && c.seq != 0 {
                cps.push(c);
            }
        }
        let mut ends: BTreeMap<i64, BTreeSet<i64>> = BTreeMap::new();
        for c in &cps {
            ends.entry(c.first_seq).or_default().insert(c.seq);
        }
        let mut next = 1;
        for (first, seqs) in &ends {
            assert!(
                *first <= next,
                "partition {p}: no checkpoint covers seqs {next}..{first}"
            );
            next = next.max(seqs.last().copied().unwrap_or(0) + 1);
        }
        assert_eq!(next, N + 1, "partition {p}: checkpoints end before seq {N}");
        let resigned = ends.values().filter(|s| s.len() > 1).count();
        let owned: Vec<OwnedRecord> = recs
            .iter()
            .map(|r| OwnedRecord::from_chained(r).unwrap())
            .collect();
        let report = verify_partition(
            p as u32,
            &key.keys,
            &cps,
            VerifyOptions {
                chain_id: Some(topics.chained.clone()),
                ..Default::default()
            },
            owned.iter().map(|r| r.as_stored()),
        );
        assert!(report.ok, "partition {p}: {report:#?}");
        assert_eq!(report.sealed_through, Some(N), "partition {p}");
        eprintln!(
            "partition {p}: {N} records, {copies} identical copies, {} checkpoints, {resigned} \
             ranges signed again with another end",
            cps.len()
        );
    }
    key.remove();
}
