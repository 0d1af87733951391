//! The consumer watchdog against the local stack's broker (tansu on 127.0.0.1:9092, or
//! `KAFKA_BROKERS`; `deploy/local/stack.sh up`). FAILS when the broker is absent. Needs
//! `python3` with confluent-kafka (the stack's own scripts use it) for the blocking member.
//!
//! A pipeline worker joins a group whose only partition a second member (another process,
//! librdkafka) holds and never consumes: `/readyz` must turn false and say why. The blocker is
//! then killed -9 (a silent death): tansu 0.6.0 expires it but keeps the group's stored
//! assignment, so a member that merely rejoins is handed nothing, forever (docs/local-stack.md).
//! The worker's watchdog restarts its consumer (leave + join), which makes the coordinator
//! elect a new leader; every input must then come out exactly once, and readiness return.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use worker_runtime::health::Readiness;
use worker_runtime::kafka::admin::{ensure_topics, TopicSpec};
use worker_runtime::kafka::consumer::{subscribe, ConsumerSettings};
use worker_runtime::kafka::liveness::group_protocol::{
    Conn, MEMBER_ID_REQUIRED, REBALANCE_IN_PROGRESS,
};
use worker_runtime::kafka::liveness::{HealTarget, LivenessSettings, CHECK_ASSIGNMENT};
use worker_runtime::kafka::pipeline::{run_with_liveness, PipelineSettings, Processor};
use worker_runtime::kafka::{InputRecord, KafkaArgs, OutputRecord, Producer};
use worker_runtime::testing::topic::read_topic;
use worker_runtime::{RuntimeError, Shutdown};

fn brokers() -> String {
    std::env::var("KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

fn unique() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{}-{nanos}", std::process::id())
}

/// Copies each input to the output topic.
struct Copy {
    out: String,
}

impl Processor for Copy {
    async fn process(&self, input: &InputRecord) -> Result<Vec<OutputRecord>, RuntimeError> {
        Ok(vec![OutputRecord {
            topic: self.out.clone(),
            key: input.key.clone(),
            payload: input.payload.clone(),
            ..Default::default()
        }])
    }
}

/// A group member that takes the partition (its client id sorts first, so the range assignor
/// gives it partition 0) and pauses it: it heartbeats but never consumes or commits.
const BLOCKER: &str = r#"
import sys, time
from confluent_kafka import Consumer
brokers, topic, group = sys.argv[1:4]
def on_assign(c, parts):
    c.pause(parts)
    print("ASSIGNED", [p.partition for p in parts], flush=True)
c = Consumer({"bootstrap.servers": brokers, "group.id": group, "client.id": "aaa-blocker",
              "session.timeout.ms": 6000, "auto.offset.reset": "earliest",
              "enable.auto.commit": False})
c.subscribe([topic], on_assign=on_assign)
while True:
    c.poll(0.2)
"#;

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts the blocker and waits until it holds partition 0.
fn start_blocker(topic: &str, group: &str) -> KillOnDrop {
    let mut child = Command::new("python3")
        .args(["-c", BLOCKER, &brokers(), topic, group])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("python3 (with confluent-kafka) for the blocking member");
    let stdout = child.stdout.take().expect("blocker stdout");
    let child = KillOnDrop(child);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        // Keeps reading after the test stopped listening: a closed pipe would kill the
        // blocker with an exception (and a graceful leave) at its next print.
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = rx.recv_timeout(left).expect("blocker assigned within 60 s");
        if line.starts_with("ASSIGNED [0]") {
            return child;
        }
    }
}

async fn wait_for<F: FnMut() -> bool>(what: &str, within: Duration, mut f: F) {
    let deadline = Instant::now() + within;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_left_without_partitions_reports_it_and_restarts_its_consumer() {
    const N: usize = 200;
    let id = unique();
    let args = KafkaArgs::local(&brokers(), &format!("t-live-{id}."));
    let (input, output) = (format!("t-live-{id}.in"), format!("t-live-{id}.out"));
    let group = format!("t-live-{id}");
    let specs: Vec<TopicSpec> = [&input, &output]
        .iter()
        .map(|t| TopicSpec {
            name: (*t).clone(),
            partitions: 1,
            compacted: false,
        })
        .collect();
    ensure_topics(&args, &specs, 1)
        .await
        .expect("topics (is Kafka up? deploy/local/stack.sh up)");
    let producer = Producer::new(&args, "t-live-producer").expect("producer");
    for i in 0..N {
        let rec = OutputRecord {
            topic: input.clone(),
            key: Some(format!("k{i}").into_bytes()),
            payload: Some(format!("v{i}").into_bytes()),
            ..Default::default()
        };
        producer.send(&rec).await.expect("produce input");
    }

    let blocker = start_blocker(&input, &group);

    let mut settings = ConsumerSettings::new(group.clone(), "zz-worker", vec![input.clone()]);
    settings.session_timeout_ms = 6000;
    let (consumer, rebalance) = subscribe(&args, &settings).expect("subscribe");
    let ready = Readiness::default();
    let shutdown = Shutdown::new();
    let liveness = LivenessSettings {
        stall_after: Duration::from_secs(8),
        check_every: Duration::from_secs(1),
        probe_timeout: Duration::from_secs(10),
        // The group has a live leader here (the blocker): restarts alone are what is tested.
        heal: None,
    };
    let worker = tokio::spawn(run_with_liveness(
        consumer,
        rebalance,
        Producer::new(&args, "t-live-worker").expect("producer"),
        Arc::new(Copy {
            out: output.clone(),
        }),
        PipelineSettings {
            stage: "t-live",
            max_in_flight: 100,
            drain_timeout: Duration::from_secs(10),
            kafka: args.clone(),
            dead_letter_scan_records: 10_000,
        },
        liveness,
        ready.clone(),
        shutdown.clone(),
    ));

    // Not ready, with the reason.
    let mut detail = String::new();
    wait_for(
        "readiness to report the stall",
        Duration::from_secs(90),
        || match ready.check(CHECK_ASSIGNMENT) {
            Some(c) if !c.ok => {
                detail = c.detail;
                true
            }
            _ => false,
        },
    )
    .await;
    assert!(!ready.get());
    assert!(
        detail.contains("no partition assigned")
            && detail.contains(&format!("{input} has lag {N}")),
        "{detail}"
    );

    // The blocker dies silently; the worker must get the partition and process everything.
    drop(blocker);
    let out_args = args.clone();
    let deadline = Instant::now() + Duration::from_secs(180);
    let copies = loop {
        let copies = count_payloads(&out_args, &output).await;
        if copies.len() == N || Instant::now() > deadline {
            break copies;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    assert_eq!(copies.len(), N, "every input reached the output");
    for i in 0..N {
        assert!(
            copies.contains_key(format!("v{i}").as_bytes()),
            "v{i} missing"
        );
    }
    let total: usize = copies.values().sum();
    // Nothing was processed before the restart, so nothing may be redelivered either.
    assert_eq!(total, N, "no duplicates: {total} records for {N} inputs");
    wait_for("readiness to come back", Duration::from_secs(30), || {
        ready.get()
    })
    .await;

    shutdown.trigger();
    worker
        .await
        .expect("worker task")
        .expect("worker ends cleanly");
}

/// Payload → copies in `topic`/0 (what could be read).
async fn count_payloads(args: &KafkaArgs, topic: &str) -> HashMap<Vec<u8>, usize> {
    let mut copies = HashMap::<Vec<u8>, usize>::new();
    match read_topic(args, topic, 1, Duration::from_secs(30)).await {
        Ok(records) => {
            for r in records {
                *copies.entry(r.payload).or_default() += 1;
            }
        }
        // The shared broker is slow at times; the caller polls again.
        Err(e) => eprintln!("reading {topic}: {e}"),
    }
    copies
}

/// Creates, with raw protocol requests, the group state measured after a tansu restart: member
/// A (leader) is expired by its own late heartbeat, then its client rejoins without a member id
/// (librdkafka does after its session timeout) as B. The group is left forming with the ghost A
/// as leader; every member is a follower from then on. Returns the ghost's member id.
fn make_ghost_leader_group(group: &str, session_ms: i32) -> String {
    let timeout = Duration::from_secs(15);
    let mut boot = Conn::connect(&brokers(), "t-ghost", timeout).expect("connect");
    let (err, host, port) = boot.find_coordinator(group).expect("find coordinator");
    assert_eq!(err, 0);
    let coordinator = format!("{host}:{port}");
    let join_new = |client: &str| {
        let mut c = Conn::connect(&coordinator, client, timeout).expect("connect");
        let first = c.join(group, "", session_ms).expect("join");
        assert_eq!(first.error, MEMBER_ID_REQUIRED, "{first:?}");
        let j = c.join(group, &first.member_id, session_ms).expect("join");
        assert_eq!(j.error, 0, "{j:?}");
        (c, j)
    };
    let (mut a, ja) = join_new("t-ghost-a");
    assert_eq!(ja.leader, ja.member_id, "A leads a new group");
    let (err, _) = a
        .sync(
            group,
            ja.generation,
            &ja.member_id,
            &[(ja.member_id.clone(), Vec::new())],
        )
        .expect("sync");
    assert_eq!(err, 0);
    std::thread::sleep(Duration::from_millis(session_ms as u64 + 1500));
    let late = a
        .heartbeat(group, ja.generation, &ja.member_id)
        .expect("heartbeat");
    assert_eq!(late, REBALANCE_IN_PROGRESS);
    let (_b, jb) = join_new("t-ghost-b");
    assert_eq!(jb.leader, ja.member_id, "B follows the ghost A");
    ja.member_id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_with_a_ghost_leader_is_healed_and_every_input_processed() {
    const N: usize = 100;
    const SESSION_MS: i32 = 6000;
    let id = unique();
    let args = KafkaArgs::local(&brokers(), &format!("t-ghost-{id}."));
    let (input, output) = (format!("t-ghost-{id}.in"), format!("t-ghost-{id}.out"));
    let group = format!("t-ghost-{id}");
    let specs: Vec<TopicSpec> = [&input, &output]
        .iter()
        .map(|t| TopicSpec {
            name: (*t).clone(),
            partitions: 1,
            compacted: false,
        })
        .collect();
    ensure_topics(&args, &specs, 1)
        .await
        .expect("topics (is Kafka up? deploy/local/stack.sh up)");
    let producer = Producer::new(&args, "t-ghost-producer").expect("producer");
    for i in 0..N {
        let rec = OutputRecord {
            topic: input.clone(),
            payload: Some(format!("v{i}").into_bytes()),
            ..Default::default()
        };
        producer.send(&rec).await.expect("produce input");
    }
    let g = group.clone();
    let ghost = tokio::task::spawn_blocking(move || make_ghost_leader_group(&g, SESSION_MS))
        .await
        .expect("ghost task");

    let mut settings = ConsumerSettings::new(group.clone(), "t-ghost-worker", vec![input.clone()]);
    settings.session_timeout_ms = SESSION_MS as u32;
    let (consumer, rebalance) = subscribe(&args, &settings).expect("subscribe");
    let ready = Readiness::default();
    let shutdown = Shutdown::new();
    let liveness = LivenessSettings {
        stall_after: Duration::from_secs(6),
        check_every: Duration::from_secs(1),
        probe_timeout: Duration::from_secs(10),
        heal: HealTarget::for_group(&args, &group, settings.session_timeout_ms),
    };
    assert!(liveness.heal.is_some());
    let worker = tokio::spawn(run_with_liveness(
        consumer,
        rebalance,
        Producer::new(&args, "t-ghost-worker").expect("producer"),
        Arc::new(Copy {
            out: output.clone(),
        }),
        PipelineSettings {
            stage: "t-ghost",
            max_in_flight: 100,
            drain_timeout: Duration::from_secs(10),
            kafka: args.clone(),
            dead_letter_scan_records: 10_000,
        },
        liveness,
        ready.clone(),
        shutdown.clone(),
    ));

    let mut detail = String::new();
    wait_for(
        "readiness to report the stall",
        Duration::from_secs(90),
        || match ready.check(CHECK_ASSIGNMENT) {
            Some(c) if !c.ok => {
                detail = c.detail;
                true
            }
            _ => false,
        },
    )
    .await;
    assert!(
        detail.contains("no partition assigned")
            && detail.contains(&format!("{input} has lag {N}")),
        "{detail} (ghost leader {ghost})"
    );

    let deadline = Instant::now() + Duration::from_secs(150);
    let copies = loop {
        let copies = count_payloads(&args, &output).await;
        if copies.len() == N || Instant::now() > deadline {
            break copies;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    assert_eq!(
        copies.len(),
        N,
        "every input reached the output (ghost leader {ghost})"
    );
    let total: usize = copies.values().sum();
    assert_eq!(total, N, "no duplicates: {total} records for {N} inputs");
    wait_for("readiness to come back", Duration::from_secs(30), || {
        ready.get()
    })
    .await;
    shutdown.trigger();
    worker
        .await
        .expect("worker task")
        .expect("worker ends cleanly");
}
