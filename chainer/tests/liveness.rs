//! Liveness against a real Kafka API (the local stack's tansu, or `CHAINER_SMOKE_BROKERS`).
//! Skipped (passes with a note) when no broker answers.
//!
//! - A partition whose recovery takes long (a real tail, made 20 s slower by the chainer's
//!   fault injection, since a truly huge scan would saturate the shared test broker) does not
//!   hold up the others: they keep chaining meanwhile, the consumer keeps its assignment, and
//!   readiness says "recovering" until it is done.
//! - Static assignment (`--partitions`) chains every event exactly once and resumes after a
//!   restart, without any consumer group membership.
//! - A group member that dies without leaving (SIGKILL) does not strand its partitions.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{brokers_or_skip, chainer_config, ev, fresh_prefix, produce_pipelined as produce};
use common::{read_checkpoints, TestKey};
use integrity::verify::{verify_partition, OwnedRecord, VerifyOptions};
use rdkafka::consumer::{BaseConsumer, Consumer};
use schemas::framing::decode_chained;
use worker_runtime::kafka::admin::{ensure_topics, pipeline_topic_specs};
use worker_runtime::kafka::{KafkaArgs, Producer};

const PARTITIONS: i32 = 2;
/// How long a read of a partition waits for more records.
const SCAN_IDLE: Duration = Duration::from_secs(30);

async fn setup(tag: &str) -> Option<(String, KafkaArgs, Producer)> {
    let brokers = brokers_or_skip()?;
    let prefix = fresh_prefix(&format!("chainer-{tag}"));
    let args = KafkaArgs::local(&brokers, &prefix);
    ensure_topics(&args, &pipeline_topic_specs(&args, PARTITIONS), 1)
        .await
        .unwrap();
    let producer = Producer::new(&args, "liveness-test").unwrap();
    Some((prefix, args, producer))
}

/// High watermark of `topic`/`p`; -1 when the busy broker does not answer in time.
async fn high(args: &KafkaArgs, topic: &str, p: i32) -> i64 {
    common::high(
        args,
        "liveness-watermarks",
        topic,
        p,
        Duration::from_secs(10),
    )
    .await
}

/// Polls `f` every 100 ms until it holds (see [`common::until`]).
async fn until<F, Fut>(what: &str, limit: Duration, f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    common::until(what, limit, Duration::from_millis(100), f).await
}

/// The group's committed offsets of the enriched partitions.
async fn committed(args: &KafkaArgs, group: &str) -> Vec<Option<i64>> {
    let c: BaseConsumer = args
        .client_config("liveness-committed")
        .set("group.id", group)
        .create()
        .unwrap();
    let topic = args.topics().enriched;
    tokio::task::spawn_blocking(move || {
        let mut tpl = rdkafka::TopicPartitionList::new();
        for p in 0..PARTITIONS {
            tpl.add_partition(&topic, p);
        }
        let got = c.committed_offsets(tpl, Duration::from_secs(10)).unwrap();
        got.elements()
            .iter()
            .map(|e| match e.offset() {
                rdkafka::Offset::Offset(o) => Some(o),
                _ => None,
            })
            .collect()
    })
    .await
    .unwrap()
}

/// Every record of `chained`/p: seqs 1..=n exactly once, distinct event ids.
async fn assert_exactly_once(args: &KafkaArgs, p: i32, n: i64) -> Vec<schemas::ChainedEvent> {
    let recs: Vec<_> = common::read_all(args, &args.topics().chained, p, SCAN_IDLE)
        .await
        .iter()
        .map(|b| decode_chained(b, None).unwrap())
        .collect();
    let seqs: Vec<i64> = recs.iter().map(|r| r.seq).collect();
    assert_eq!(seqs, (1..=n).collect::<Vec<_>>(), "partition {p}");
    let ids: std::collections::HashSet<_> = recs.iter().map(|r| r.event.event_id.clone()).collect();
    assert_eq!(ids.len() as i64, n, "partition {p}: an event chained twice");
    recs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slow_recovery_does_not_hold_up_the_other_partitions() {
    worker_runtime::telemetry::init_for_tests();
    let Some((prefix, args, producer)) = setup("slowrecovery").await else {
        return;
    };
    let topics = args.topics();
    // Partition 0 already has a chain (written here exactly as the chainer writes it), so its
    // recovery reads a real tail; the fault injection makes that recovery take 20 s more.
    const N: i64 = 300;
    let inputs: Vec<Vec<u8>> = (0..N).map(|i| ev(&format!("a{i}"))).collect();
    produce(&producer, &topics.enriched, 0, &inputs).await;
    let mut chain =
        chainer::partition::PartitionChain::genesis(0, &topics.enriched, N as usize, 0).unwrap();
    let chained: Vec<Vec<u8>> = inputs
        .iter()
        .enumerate()
        .map(|(o, v)| {
            match chain
                .process(chainer::partition::Input {
                    offset: o as i64,
                    payload: Some(v),
                })
                .unwrap()
            {
                chainer::partition::Decision::Chain(c) => c.payload,
                d => panic!("{d:?}"),
            }
        })
        .collect();
    produce(&producer, &topics.chained, 0, &chained).await;
    // New input on both partitions: more for partition 0 than its task's queue takes, so the
    // router, held by that full queue, pauses it and goes on with partition 1.
    const MORE: i64 = 40;
    let more0: Vec<Vec<u8>> = (N..N + MORE).map(|i| ev(&format!("a{i}"))).collect();
    produce(&producer, &topics.enriched, 0, &more0).await;
    let p1: Vec<Vec<u8>> = (0..50).map(|i| ev(&format!("b{i}"))).collect();
    produce(&producer, &topics.enriched, 1, &p1).await;

    let group = format!("{prefix}chainer");
    let window = N.to_string();
    let config = chainer_config(
        &args.brokers,
        &prefix,
        &group,
        &[
            "--dedup-window",
            &window,
            "--partition-queue",
            "16",
            "--fault-recovery-delay",
            "0=20000",
            "--shutdown-timeout-secs",
            "20",
        ],
    );
    let common::RunningChainer {
        status,
        shutdown,
        task,
    } = common::spawn_chainer(config);

    until("partition 0 recovering", Duration::from_secs(60), || {
        let s = status.clone();
        async move { s.recovering(0) }
    })
    .await;
    assert!(!status.ready(), "ready while recovering");
    assert!(
        status.reason().contains("recovering"),
        "{}",
        status.reason()
    );
    let epochs = status.partitions();
    // Partition 1 is chained while partition 0 is still reading its tail.
    until("partition 1 chained", Duration::from_secs(60), || {
        let (a, t) = (args.clone(), topics.chained.clone());
        async move { high(&a, &t, 1).await == 50 }
    })
    .await;
    assert!(
        status.recovering(0),
        "partition 0 finished recovering before partition 1 was chained: the test proves nothing"
    );
    assert_eq!(high(&args, &topics.chained, 0).await, N);
    // Partition 0's full queue held the router for a second at most, then it was paused.
    until("partition 0 paused", Duration::from_secs(15), || {
        let s = status.clone();
        async move { s.pauses() >= 1 }
    })
    .await;
    assert!(
        status.recovering(0),
        "partition 0 finished recovering before it was paused: the test proves nothing"
    );
    // Then partition 0 continues its chain.
    let t = Instant::now();
    until("partition 0 continued", Duration::from_secs(180), || {
        let (a, t) = (args.clone(), topics.chained.clone());
        async move { high(&a, &t, 0).await == N + MORE }
    })
    .await;
    eprintln!("partition 0 continued after {:?}", t.elapsed());
    until("ready", Duration::from_secs(30), || {
        let s = status.clone();
        async move { s.ready() }
    })
    .await;
    eprintln!("ready after {:?}", t.elapsed());
    // The assignment never changed: no rebalance, no consumer restart.
    let now: Vec<(i32, u64)> = status
        .partitions()
        .iter()
        .map(|(p, v)| (*p, v.epoch))
        .collect();
    let before: Vec<(i32, u64)> = epochs.iter().map(|(p, v)| (*p, v.epoch)).collect();
    assert_eq!(now, before);
    assert_eq!(status.consumer_restarts(), 0);
    shutdown.trigger();
    task.await.unwrap().unwrap();

    assert_exactly_once(&args, 0, N + MORE).await;
    assert_exactly_once(&args, 1, 50).await;
}

/// A task busy chaining holds the router when its queue is full, and the router waits for it
/// instead of pausing the partition: a pause drops what librdkafka prefetched, which the broker
/// then serves again (pausing at every full queue made it serve the input about five times).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_busy_partition_holds_the_router_without_pausing() {
    let Some((prefix, args, producer)) = setup("busyqueue").await else {
        return;
    };
    let topics = args.topics();
    const N: i64 = 1_500;
    for (p, tag) in [(0, "a"), (1, "b")] {
        let inputs: Vec<Vec<u8>> = (0..N).map(|i| ev(&format!("{tag}{i}"))).collect();
        produce(&producer, &topics.enriched, p, &inputs).await;
    }
    let group = format!("{prefix}chainer");
    let config = chainer_config(
        &args.brokers,
        &prefix,
        &group,
        &["--partition-queue", "16", "--shutdown-timeout-secs", "20"],
    );
    let common::RunningChainer {
        status,
        shutdown,
        task,
    } = common::spawn_chainer(config);
    until("both partitions chained", Duration::from_secs(120), || {
        let (a, t) = (args.clone(), topics.chained.clone());
        async move { high(&a, &t, 0).await == N && high(&a, &t, 1).await == N }
    })
    .await;
    let (holds, pauses) = (status.holds(), status.pauses());
    eprintln!("{holds} holds, {pauses} pauses");
    shutdown.trigger();
    task.await.unwrap().unwrap();
    // 3,000 records through queues of 16: the queues filled over and over.
    assert!(
        holds >= 20,
        "only {holds} holds: the queues never filled, the test proves nothing"
    );
    // A pause only after a second without room: none here, unless this machine stalled a task
    // that long now and then.
    assert!(
        pauses * 20 <= holds,
        "{pauses} pauses for {holds} holds: full queues pause their partitions"
    );
    assert_exactly_once(&args, 0, N).await;
    assert_exactly_once(&args, 1, N).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn static_assignment_chains_exactly_once_and_resumes_after_a_restart() {
    let Some((prefix, args, producer)) = setup("static").await else {
        return;
    };
    let topics = args.topics();
    let key = TestKey::new(std::env::temp_dir().join(prefix.trim_end_matches('.')));
    let group = format!("{prefix}chainer");
    let config = |partitions: &str| {
        let mut extra = vec!["--partitions", partitions, "--dedup-window", "100"];
        extra.extend(key.args());
        extra.extend([
            "--checkpoint-every-events",
            "7",
            "--shutdown-timeout-secs",
            "20",
        ]);
        chainer_config(&args.brokers, &prefix, &group, &extra)
    };
    let run_until = |config: chainer::Config, want: [i64; 2]| {
        let args = args.clone();
        async move {
            let common::RunningChainer {
                status,
                shutdown,
                task,
            } = common::spawn_chainer(config);
            until("chained", Duration::from_secs(90), || {
                let a = args.clone();
                async move {
                    let t = a.topics().chained;
                    [high(&a, &t, 0).await, high(&a, &t, 1).await] == want
                }
            })
            .await;
            until("ready", Duration::from_secs(30), || {
                let s = status.clone();
                async move { s.ready() }
            })
            .await;
            assert_eq!(status.partitions().len(), 2);
            shutdown.trigger();
            task.await.unwrap().unwrap();
        }
    };

    let e = |tag: &str, r: std::ops::Range<i32>| -> Vec<Vec<u8>> {
        r.map(|i| ev(&format!("{tag}{i}"))).collect()
    };
    produce(&producer, &topics.enriched, 0, &e("a", 0..20)).await;
    produce(&producer, &topics.enriched, 1, &e("b", 0..10)).await;
    run_until(config("all"), [20, 10]).await;
    // Offsets are committed under the group id even without membership (lag monitoring).
    assert_eq!(committed(&args, &group).await, vec![Some(20), Some(10)]);

    // More input, one event repeating an id chained in the first run.
    let mut more = e("a", 20..30);
    more.push(ev("a5"));
    produce(&producer, &topics.enriched, 0, &more).await;
    produce(&producer, &topics.enriched, 1, &e("b", 10..15)).await;
    run_until(config("0,1"), [30, 15]).await;

    let cps = read_checkpoints(&args, PARTITIONS, SCAN_IDLE).await;
    for (p, n) in [(0, 30i64), (1, 15)] {
        let recs = assert_exactly_once(&args, p, n).await;
        let owned: Vec<OwnedRecord> = recs
            .iter()
            .map(|r| OwnedRecord::from_chained(r).unwrap())
            .collect();
        let mine: Vec<_> = cps.iter().filter(|c| c.partition == p).cloned().collect();
        let opts = VerifyOptions {
            chain_id: Some(topics.chained.clone()),
            ..Default::default()
        };
        let report = verify_partition(
            p as u32,
            &key.keys,
            &mine,
            opts,
            owned.iter().map(|r| r.as_stored()),
        );
        assert!(report.ok, "{report:#?}");
        assert_eq!(report.sealed_through, Some(n), "partition {p}");
    }
    key.remove();
}

/// Run as a child process by `a_member_dying_without_leaving_does_not_strand_its_partitions`
/// (a no-op otherwise): a plain group member that takes partitions and is then SIGKILLed, so
/// that it never leaves its group.
#[test]
fn ghost_member() {
    use rdkafka::ClientConfig;
    use std::io::Write;
    let (Ok(group), Ok(topic), Ok(brokers)) = (
        std::env::var("LIVENESS_GHOST_GROUP"),
        std::env::var("LIVENESS_GHOST_TOPIC"),
        std::env::var("LIVENESS_GHOST_BROKERS"),
    ) else {
        return;
    };
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("group.id", &group)
        // Sorts before the chainer's member id: the range assignor gives it partition 0.
        .set("client.id", "aaa-ghost")
        .set("session.timeout.ms", "6000")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    c.subscribe(&[&topic]).unwrap();
    let mut last = usize::MAX;
    loop {
        let _ = c.poll(Duration::from_millis(100));
        let n = c.assignment().map(|a| a.count()).unwrap_or(0);
        if n != last {
            last = n;
            println!("GHOST-ASSIGNED {n}");
            let _ = std::io::stdout().flush();
        }
    }
}

/// tansu does not re-assign the partitions of a member that died without leaving (see
/// docs/local-stack.md) until a member joins or leaves. The chainer notices partitions with
/// lag that nobody chains and recreates its consumer (leave + join), which re-assigns them.
/// (The decision itself is unit-tested in `chainer::liveness`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_member_dying_without_leaving_does_not_strand_its_partitions() {
    use std::io::BufRead;
    use std::sync::atomic::{AtomicI64, Ordering};
    worker_runtime::telemetry::init_for_tests();
    let Some((prefix, args, producer)) = setup("stranded").await else {
        return;
    };
    let topics = args.topics();
    let group = format!("{prefix}chainer");
    let ghost_assigned = Arc::new(AtomicI64::new(-1));
    let mut ghost = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "ghost_member",
            "--exact",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env("LIVENESS_GHOST_GROUP", &group)
        .env("LIVENESS_GHOST_TOPIC", &topics.enriched)
        .env("LIVENESS_GHOST_BROKERS", &args.brokers)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let out = ghost.stdout.take().unwrap();
    let g = ghost_assigned.clone();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            // (The harness may print "test ghost_member ... " on the same line.)
            if let Some((_, n)) = line.split_once("GHOST-ASSIGNED ") {
                g.store(n.trim().parse().unwrap_or(-1), Ordering::SeqCst);
            }
        }
    });
    until(
        "the ghost holds both partitions",
        Duration::from_secs(60),
        || {
            let g = ghost_assigned.clone();
            async move { g.load(Ordering::SeqCst) == PARTITIONS as i64 }
        },
    )
    .await;

    let config = chainer_config(
        &args.brokers,
        &prefix,
        &group,
        &[
            "--session-timeout-ms",
            "6000",
            "--consumer-stall-timeout-secs",
            "8",
            "--shutdown-timeout-secs",
            "20",
        ],
    );
    let common::RunningChainer {
        status,
        shutdown,
        task,
    } = common::spawn_chainer(config);
    until("the group split", Duration::from_secs(60), || {
        let (s, g) = (status.clone(), ghost_assigned.clone());
        async move { s.partitions().len() == 1 && g.load(Ordering::SeqCst) == 1 }
    })
    .await;
    // The ghost dies without leaving; then input arrives on both partitions.
    ghost.kill().unwrap();
    ghost.wait().unwrap();
    let e = |tag: &str| -> Vec<Vec<u8>> { (0..20).map(|i| ev(&format!("{tag}{i}"))).collect() };
    produce(&producer, &topics.enriched, 0, &e("a")).await;
    produce(&producer, &topics.enriched, 1, &e("b")).await;
    until("both partitions chained", Duration::from_secs(120), || {
        let a = args.clone();
        async move {
            let t = a.topics().chained;
            high(&a, &t, 0).await == 20 && high(&a, &t, 1).await == 20
        }
    })
    .await;
    // Whether the chainer had to recreate its consumer depends on the broker: tansu sometimes
    // re-assigns by itself (when the chainer's own session lapses on a busy broker and it
    // rejoins). Either way nothing is lost and nothing is stuck.
    eprintln!("consumer restarts: {}", status.consumer_restarts());
    shutdown.trigger();
    task.await.unwrap().unwrap();
    assert_exactly_once(&args, 0, 20).await;
    assert_exactly_once(&args, 1, 20).await;
}
