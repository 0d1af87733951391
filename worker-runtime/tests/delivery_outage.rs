//! A broker outage longer than `message.timeout.ms` does not stop a pipeline worker.
//!
//! The test runs its own broker (tansu on SQLite in a temporary directory: the shared one must
//! never go away) that advertises a TCP proxy's address, so every connection of the worker goes
//! through the proxy. The proxy is cut while the worker has deliveries in flight and kept cut
//! well past the producer's `message.timeout.ms`, then restored: the worker must not exit,
//! must report the outage on `/readyz` meanwhile, and every input must land (valid ones at
//! least once, dead letters exactly once). Needs `tansu` on the PATH or in ~/.cargo/bin
//! (`deploy/local/stack.sh up` installs it).

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use worker_runtime::health::Readiness;
use worker_runtime::kafka::admin::{ensure_topics, TopicSpec};
use worker_runtime::kafka::consumer::{subscribe, ConsumerSettings};
use worker_runtime::kafka::dlq::{dead_letter, source_offset_of};
use worker_runtime::kafka::liveness::LivenessSettings;
use worker_runtime::kafka::pipeline::{
    run_with_liveness, PipelineSettings, Processor, CHECK_DELIVERY,
};
use worker_runtime::kafka::{InputRecord, KafkaArgs, OutputRecord, Producer};
use worker_runtime::testing::proxy::Proxy;
use worker_runtime::testing::topic::read_topic;
use worker_runtime::{RuntimeError, Shutdown};

const STAGE: &str = "t-outage";

fn unique() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{}-{nanos}", std::process::id())
}

fn tansu_bin() -> PathBuf {
    let on_path = Command::new("sh")
        .args(["-c", "command -v tansu"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
    on_path.unwrap_or_else(|| {
        PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| "/root".into()))
            .join(".cargo/bin/tansu")
    })
}

/// A private tansu broker; killed and its directory removed on drop.
struct Broker {
    child: Child,
    dir: PathBuf,
}

impl Broker {
    fn start(port: u16, advertised_port: u16, id: &str) -> Broker {
        let dir = std::env::temp_dir().join(format!("t-outage-tansu-{id}"));
        std::fs::create_dir_all(&dir).expect("broker dir");
        let log = std::fs::File::create(dir.join("tansu.log")).expect("broker log");
        let child = Command::new(tansu_bin())
            // Settings meant for workers must not reach the broker (stack.sh does the same).
            .env_remove("SCHEMA_REGISTRY")
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .env_remove("DATA_LAKE")
            .env_remove("STORAGE_ENGINE")
            .env_remove("CLUSTER_ID")
            .env_remove("LISTENER_URL")
            .env_remove("ADVERTISED_LISTENER_URL")
            .env_remove("RUST_LOG")
            .arg("broker")
            .args(["--cluster-id", "t-outage"])
            .args(["--listener-url", &format!("tcp://127.0.0.1:{port}")])
            .args([
                "--advertised-listener-url",
                &format!("tcp://127.0.0.1:{advertised_port}"),
            ])
            .args([
                "--storage-engine",
                &format!("sqlite:///{}/tansu.db", dir.display()),
            ])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start tansu (deploy/local/stack.sh up installs it)");
        Broker { child, dir }
    }
}

impl Broker {
    /// The panic lines in the broker's log.
    fn panics(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.join("tansu.log"))
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("panicked at"))
            .map(str::to_owned)
            .collect()
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("free port");
    l.local_addr().expect("addr").port()
}

/// A private broker behind a proxy that it advertises (so every client connection goes through
/// the proxy), and client settings for it: prefix `t-{name}.`, with `properties` added.
async fn private_broker(name: &str, properties: &[String]) -> (Arc<Proxy>, Broker, KafkaArgs) {
    let broker_port = free_port();
    let proxy = Arc::new(Proxy::start(&format!("127.0.0.1:{broker_port}")).await);
    let broker = Broker::start(broker_port, proxy.port(), &format!("{name}-{}", unique()));
    let mut args = KafkaArgs::local(
        &format!("127.0.0.1:{}", proxy.port()),
        &format!("t-{name}."),
    );
    args.properties.extend(properties.iter().cloned());
    (proxy, broker, args)
}

/// Creates `topics` (name, partitions) once the private broker listens (it takes a moment).
async fn create_topics(args: &KafkaArgs, topics: &[(&str, i32)]) {
    let specs: Vec<TopicSpec> = topics
        .iter()
        .map(|(t, partitions)| TopicSpec {
            name: (*t).to_owned(),
            partitions: *partitions,
            compacted: false,
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    while let Err(e) = ensure_topics(args, &specs, 1).await {
        assert!(
            Instant::now() < deadline,
            "private broker never answered: {e}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Copies `ok…` payloads to the output and dead-letters the rest; cuts the proxy when it
/// reaches input number `cut_at`, so the outage starts with deliveries in flight.
struct Judge {
    out: String,
    rejected: String,
    seen: AtomicUsize,
    cut_at: usize,
    proxy: Arc<Proxy>,
}

impl Processor for Judge {
    async fn process(&self, input: &InputRecord) -> Result<Vec<OutputRecord>, RuntimeError> {
        if self.seen.fetch_add(1, Ordering::SeqCst) + 1 == self.cut_at {
            self.proxy.cut();
        }
        if input
            .payload
            .as_deref()
            .is_some_and(|p| p.starts_with(b"ok"))
        {
            return Ok(vec![OutputRecord {
                topic: self.out.clone(),
                key: input.key.clone(),
                payload: input.payload.clone(),
                ..Default::default()
            }]);
        }
        Ok(vec![dead_letter(
            &self.rejected,
            input,
            STAGE,
            "bad",
            "not ok",
        )])
    }
}

async fn wait_until<F: FnMut() -> bool>(what: &str, within: Duration, mut f: F) {
    let deadline = Instant::now() + within;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Every record of a topic (key and headers), or `None` if the broker did not answer.
async fn read_all(
    args: &KafkaArgs,
    topic: &str,
    partitions: i32,
) -> Option<Vec<(Option<Vec<u8>>, Vec<(String, Vec<u8>)>)>> {
    let records = read_topic(args, topic, partitions, Duration::from_secs(20))
        .await
        .ok()?;
    Some(records.into_iter().map(|r| (r.key, r.headers)).collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_outage_longer_than_the_message_timeout_is_ridden_out() {
    const N: usize = 200;
    const MESSAGE_TIMEOUT_MS: u64 = 4000;
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let id = unique();
    let (proxy, broker, args) = private_broker(
        "outage",
        &[format!("message.timeout.ms={MESSAGE_TIMEOUT_MS}")],
    )
    .await;
    let topics = args.topics();
    let (input, output, rejected) = ("t-outage.in".to_owned(), topics.validated, topics.rejected);
    create_topics(&args, &[(&input, 2), (&output, 1), (&rejected, 1)]).await;
    let producer = Producer::new(&args, "t-outage-producer").expect("producer");
    let (mut valid, mut invalid) = (HashSet::new(), HashSet::new());
    for i in 0..N {
        let ok = i % 3 == 0;
        let key = format!("k{i}");
        let rec = OutputRecord {
            topic: input.clone(),
            key: Some(key.clone().into_bytes()),
            payload: Some(format!("{}{i}", if ok { "ok" } else { "bad" }).into_bytes()),
            partition: Some((i % 2) as i32),
            ..Default::default()
        };
        let d = producer.send(&rec).await.expect("produce input");
        if ok {
            valid.insert(key);
        } else {
            invalid.insert((d.partition, d.offset));
        }
    }

    let mut cs = ConsumerSettings::new(
        format!("t-outage-{id}"),
        "t-outage-worker",
        vec![input.clone()],
    );
    cs.session_timeout_ms = 6000;
    let (consumer, rebalance) = subscribe(&args, &cs).expect("subscribe");
    let ready = Readiness::default();
    let shutdown = Shutdown::new();
    let worker = tokio::spawn(run_with_liveness(
        consumer,
        rebalance,
        Producer::new(&args, "t-outage-worker").expect("producer"),
        Arc::new(Judge {
            out: output.clone(),
            rejected: rejected.clone(),
            seen: AtomicUsize::new(0),
            cut_at: N / 2,
            proxy: proxy.clone(),
        }),
        PipelineSettings {
            stage: STAGE,
            max_in_flight: 50,
            drain_timeout: Duration::from_secs(20),
            kafka: args.clone(),
            dead_letter_scan_records: 10_000,
        },
        LivenessSettings {
            stall_after: Duration::from_secs(20),
            check_every: Duration::from_secs(1),
            probe_timeout: Duration::from_secs(5),
            ..LivenessSettings::default()
        },
        ready.clone(),
        shutdown.clone(),
    ));

    // The worker cuts the proxy half-way; its deliveries then time out and it says so.
    wait_until(
        "the worker to report failed deliveries",
        Duration::from_secs(120),
        || {
            assert!(!worker.is_finished(), "the worker exited during the outage");
            ready.check(CHECK_DELIVERY).is_some_and(|c| !c.ok)
        },
    )
    .await;
    let cut_at = Instant::now();
    // Keep the broker away for several message timeouts while the worker keeps trying.
    let since = proxy.refused();
    proxy.wait_refused(since, 5).await;
    while cut_at.elapsed() < Duration::from_millis(3 * MESSAGE_TIMEOUT_MS) {
        assert!(!worker.is_finished(), "the worker exited during the outage");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(!ready.get(), "ready while the broker is away");
    proxy.restore();

    // Everything lands: valid inputs at least once, invalid ones exactly once.
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        assert!(!worker.is_finished(), "the worker exited after the outage");
        let (Some(out), Some(rej)) = (
            read_all(&args, &output, 1).await,
            read_all(&args, &rejected, 1).await,
        ) else {
            assert!(
                Instant::now() < deadline,
                "the broker never answered after the outage"
            );
            continue;
        };
        let out: HashSet<String> = out
            .into_iter()
            .filter_map(|(k, _)| k.map(|k| String::from_utf8_lossy(&k).into_owned()))
            .collect();
        let mut dl: HashMap<(i32, i64), usize> = HashMap::new();
        for (_, headers) in rej {
            for p in 0..2 {
                let pairs = headers.iter().map(|(k, v)| (k.as_str(), v.as_slice()));
                if let Some(o) = source_offset_of(pairs, STAGE, &input, p) {
                    *dl.entry((p, o)).or_insert(0) += 1;
                }
            }
        }
        let repeated: Vec<_> = dl.iter().filter(|(_, n)| **n > 1).collect();
        assert!(
            repeated.is_empty(),
            "dead letters written more than once: {repeated:?}"
        );
        let got: HashSet<(i32, i64)> = dl.keys().copied().collect();
        if out == valid && got == invalid {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "after the outage: {}/{} valid, {}/{} dead letters",
            out.len(),
            valid.len(),
            got.len(),
            invalid.len()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    wait_until("readiness to return", Duration::from_secs(60), || {
        ready.check(CHECK_DELIVERY).is_some_and(|c| c.ok)
    })
    .await;
    shutdown.trigger();
    worker
        .await
        .expect("join")
        .expect("the worker ends cleanly on shutdown");
    // Records that timed out inside librdkafka would have made it bump its producer epoch
    // locally, and tansu's storage task panics on the first batch under that epoch (after
    // which it serves nothing). The deadline is ours, so that never happens.
    let panics = broker.panics();
    assert!(panics.is_empty(), "the broker panicked: {panics:?}");
}

/// A record that timed out must not change the producer id/epoch the next records are sent
/// under: librdkafka's idempotent producer bumps its epoch locally when *it* times a record
/// out, and tansu's storage task panics on the first batch under an epoch it never handed out
/// (after which the broker serves nothing). The deadline is ours, so a producer that outlives
/// a failed delivery (the HTTP and OTLP doors keep theirs) goes on under its old epoch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_producer_that_outlives_a_timed_out_record_keeps_its_epoch() {
    let (proxy, broker, args) = private_broker(
        "epoch",
        &[
            "message.timeout.ms=5000".into(),
            // Reconnect quickly once the proxy is back, well within the next record's deadline.
            "reconnect.backoff.max.ms=500".into(),
        ],
    )
    .await;
    let topic = "t-epoch.out".to_owned();
    create_topics(&args, &[(&topic, 1)]).await;
    let rec = |k: &str| OutputRecord {
        topic: topic.clone(),
        partition: Some(0),
        key: Some(k.as_bytes().to_vec()),
        payload: Some(k.as_bytes().to_vec()),
        headers: Vec::new(),
    };
    let producer = Producer::new(&args, "t-epoch-producer").expect("producer");
    // Until the broker has the topic's metadata and has handed out a producer id.
    let deadline = Instant::now() + Duration::from_secs(60);
    while let Err(e) = producer.send(&rec("first")).await {
        assert!(
            Instant::now() < deadline,
            "first record never delivered: {e}"
        );
    }

    proxy.cut();
    let a = producer.enqueue(&rec("a")).await.expect("enqueue a");
    let failed = worker_runtime::kafka::producer::await_delivery(a, &topic).await;
    assert!(failed.is_err(), "delivered through a cut proxy: {failed:?}");
    // Same producer, after the failure: this record must go out under the epoch the broker
    // knows.
    let b = producer.enqueue(&rec("b")).await.expect("enqueue b");
    proxy.restore();
    let delivered = worker_runtime::kafka::producer::await_delivery(b, &topic).await;
    let panics = broker.panics();
    assert!(panics.is_empty(), "the broker panicked: {panics:?}");
    delivered.expect("the record after a timed-out one is delivered");
    // And the broker still serves a fresh client.
    let fresh = Producer::new(&args, "t-epoch-fresh").expect("producer");
    fresh
        .send(&rec("after"))
        .await
        .expect("the broker serves after the outage");
}

/// A broker that stops answering at shutdown (it accepts connections and reads requests, and
/// answers nothing: a wedged broker, seen from tansu under load) must not keep a worker from
/// ending. librdkafka's consumer close waits for the group coordinator without a bound, so the
/// worker gives its consumer a bounded time to close on a thread of its own and then goes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_whose_broker_stops_answering_still_shuts_down() {
    const N: usize = 30;
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let id = unique();
    let (proxy, _broker, args) = private_broker("stall", &[]).await;
    let topics = args.topics();
    let (input, output) = ("t-stall.in".to_owned(), topics.validated.clone());
    create_topics(&args, &[(&input, 1), (&output, 1), (&topics.rejected, 1)]).await;
    let producer = Producer::new(&args, "t-stall-producer").expect("producer");
    for i in 0..N {
        let rec = OutputRecord::new(input.clone(), None, format!("ok{i}").into_bytes());
        producer.send(&rec).await.expect("produce input");
    }
    let mut cs = ConsumerSettings::new(format!("t-stall-{id}"), "t-stall-worker", vec![input]);
    cs.session_timeout_ms = 6000;
    let (consumer, rebalance) = subscribe(&args, &cs).expect("subscribe");
    let shutdown = Shutdown::new();
    let drain_timeout = Duration::from_secs(5);
    let worker = tokio::spawn(run_with_liveness(
        consumer,
        rebalance,
        Producer::new(&args, "t-stall-worker").expect("producer"),
        Arc::new(Judge {
            out: output.clone(),
            rejected: topics.rejected.clone(),
            seen: AtomicUsize::new(0),
            cut_at: usize::MAX,
            proxy: proxy.clone(),
        }),
        PipelineSettings {
            stage: STAGE,
            max_in_flight: 50,
            drain_timeout,
            kafka: args.clone(),
            dead_letter_scan_records: 10_000,
        },
        LivenessSettings {
            check_every: Duration::from_secs(1),
            probe_timeout: Duration::from_secs(2),
            ..LivenessSettings::default()
        },
        Readiness::default(),
        shutdown.clone(),
    ));
    // The worker is a working group member with its outputs delivered...
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        assert!(!worker.is_finished(), "the worker exited early");
        let got = read_all(&args, &output, 1).await.map_or(0, |v| v.len());
        if got >= N {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{got}/{N} outputs before the stall"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // ...when its broker stops answering: shutdown must still end the worker.
    proxy.stall();
    let held = proxy.held();
    // The worker's consumer (its broker and group coordinator connections) and producer,
    // and the test's producer: several of them have reconnected to a broker that answers
    // nothing, so the coordinator is not known to be down, only silent.
    wait_until(
        "the worker's clients to reach the stalled broker",
        Duration::from_secs(60),
        || proxy.held() >= held + 3,
    )
    .await;
    shutdown.trigger();
    // Bounded by the drain, the final commit, the watchdog's probe and the close, each a few
    // seconds here; a minute means the worker waits on the broker without a bound.
    let ended = tokio::time::timeout(Duration::from_secs(90), worker).await;
    let joined = ended.expect("the worker did not end while its broker was not answering");
    joined
        .expect("join")
        .expect("the worker ends cleanly although its broker does not answer");
}
