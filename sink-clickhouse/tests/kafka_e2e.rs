//! The worker end to end against the local stack (Kafka API on 127.0.0.1:9092, ClickHouse on
//! 8123; `deploy/local/stack.sh up`). FAILS when either is absent.
//!
//! Covers: both framings decoded; an undecodable record dead-lettered with stage
//! `sink-clickhouse`; an identical second copy dropped; a different copy recorded as a fork and
//! not stored; a checkpoint stored; and a restart under a NEW consumer group (no committed
//! offsets at all) resuming from ClickHouse without a single duplicate row. Also: a partly
//! applied insert over several months resumed without a gap, and ClickHouse outages (through
//! a proxy the test cuts) survived without loss or duplicates.

mod common;

use worker_runtime::testing::proxy;
use worker_runtime::testing::topic::read_topic;

use std::time::{Duration, Instant};

use clap::Parser;
use common::{ch_url, connect_when_created, count, drop_db, month_us, settings};
use schemas::framing::{self, CatalogIdResolver};
use schemas::testing::sample_event;
use schemas::{ChainedEvent, Checkpoint};
use sink_clickhouse::store::Store;
use sink_clickhouse::{run, Config};
use worker_runtime::kafka::admin::{ensure_topics, TopicSpec};
use worker_runtime::kafka::dlq::HEADER_STAGE;
use worker_runtime::kafka::{KafkaArgs, OutputRecord, Producer};
use worker_runtime::Shutdown;

const BROKERS: &str = "127.0.0.1:9092";

fn chained(p: i32, seq: i64, hash_byte: u8) -> ChainedEvent {
    let mut event = sample_event();
    event.event_id = format!("evt-{p}-{seq}");
    ChainedEvent {
        chain_partition: p,
        seq,
        prev_hash: vec![hash_byte.wrapping_sub(1); 32],
        hash: vec![hash_byte; 32],
        canonical_version: 1,
        source_topic: "x.enriched".into(),
        source_partition: p,
        source_offset: seq,
        event,
    }
}

async fn send(producer: &Producer, topic: &str, p: i32, payload: Vec<u8>) {
    producer
        .send(
            &OutputRecord::new(topic, Some(p.to_string().into_bytes()), payload).with_partition(p),
        )
        .await
        .expect("produce");
}

/// Sends `chained(p, s, s)` for each seq `s` of `seqs` to `topic`/`p`, single-object framed.
async fn send_seqs(producer: &Producer, topic: &str, p: i32, seqs: std::ops::RangeInclusive<i64>) {
    for s in seqs {
        send(
            producer,
            topic,
            p,
            framing::encode_single_object_chained(&chained(p, s, s as u8)).expect("enc"),
        )
        .await;
    }
}

/// A checkpoint of partition 0 through `seq` (head hash all `seq`), as the e2e tests send it:
/// the sink stores it without verifying the signature.
fn checkpoint_through(seq: i64) -> Checkpoint {
    Checkpoint {
        chain_id: "e2e".into(),
        partition: 0,
        first_seq: 1,
        seq,
        head_hash: vec![seq as u8; 32],
        merkle_root: vec![0; 32],
        time_us: 1_717_200_000_000_000,
        partition_count: 0,
        key_id: "k1".into(),
        signature: vec![9; 64],
        tree_root: Vec::new(),
    }
}

/// A proxy to the local ClickHouse that the test can cut, and the URL the sink reaches
/// ClickHouse by through it.
async fn clickhouse_proxy() -> (proxy::Proxy, String) {
    let upstream = ch_url()
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_owned();
    let proxy = proxy::Proxy::start(&upstream).await;
    let url = format!("http://127.0.0.1:{}", proxy.port());
    (proxy, url)
}

/// Creates the chained, checkpoints and rejected topics of `kafka`'s prefix, `partitions` each.
async fn create_topics(kafka: &KafkaArgs, partitions: i32) {
    let topics = kafka.topics();
    let specs: Vec<TopicSpec> = [&topics.chained, &topics.checkpoints, &topics.rejected]
        .into_iter()
        .map(|t| TopicSpec {
            name: t.clone(),
            partitions,
            compacted: false,
        })
        .collect();
    ensure_topics(kafka, &specs, 1)
        .await
        .expect("Kafka must be running (deploy/local/stack.sh up)");
}

type Running = (
    Shutdown,
    tokio::task::JoinHandle<Result<(), sink_clickhouse::Error>>,
);

fn start(prefix: &str, db: &str, group: &str) -> Running {
    start_with(prefix, db, group, &ch_url(), &["--retry-max-attempts", "5"])
}

fn start_with(prefix: &str, db: &str, group: &str, url: &str, extra: &[&str]) -> Running {
    let mut args = vec!["sink-clickhouse"];
    if !extra.contains(&"--health-addr") {
        args.extend(["--health-addr", ""]);
    }
    args.extend([
        "--kafka-brokers",
        BROKERS,
        "--topic-prefix",
        prefix,
        "--clickhouse-url",
        url,
        "--clickhouse-database",
        db,
        "--group-id",
        group,
        "--batch-max-rows",
        "3",
        "--batch-max-age-ms",
        "200",
        "--checkpoint-max-defer-secs",
        "60",
    ]);
    args.extend_from_slice(extra);
    let config = Config::parse_from(args);
    let shutdown = Shutdown::new();
    let handle = tokio::spawn(run(config, shutdown.clone()));
    (shutdown, handle)
}

async fn wait_for(store: &Store, sql: &str, want: u64) {
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut last = 0;
    while Instant::now() < deadline {
        if let Ok(n) = store.client().query_raw(sql).fetch_one::<u64>().await {
            last = n;
            if n == want {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("{sql}: wanted {want}, last saw {last}");
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("free port");
    l.local_addr().expect("addr").port()
}

/// Polls the sink's `/readyz` until its JSON body satisfies `want`; returns that body.
async fn wait_readyz(addr: &str, want: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = serde_json::Value::Null;
    while Instant::now() < deadline {
        if let Ok(r) = reqwest::get(format!("http://{addr}/readyz")).await {
            if let Ok(body) = r.json::<serde_json::Value>().await {
                if want(&body) {
                    return body;
                }
                last = body;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("/readyz never matched; last body: {last}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sink_end_to_end_with_restart_under_a_new_group() {
    let id = uuid::Uuid::new_v4().simple().to_string();
    let prefix = format!("t{}.", &id[..12]);
    let db = format!("audit_e2e_{}", &id[..12]);
    let kafka = KafkaArgs::local(BROKERS, &prefix);
    let topics = kafka.topics();
    create_topics(&kafka, 2).await;
    let producer = Producer::new(&kafka, "e2e-producer").expect("producer");
    let ids = CatalogIdResolver::new().expect("ids");
    let chained_id = ids
        .id_of(schemas::avro::RecordKind::ChainedEvent)
        .expect("id");

    // Partition 0: seqs 1..=5 single-object, garbage, an identical copy of 2, a fork of 3.
    send_seqs(&producer, &topics.chained, 0, 1..=5).await;
    send(&producer, &topics.chained, 0, b"not avro".to_vec()).await;
    send(
        &producer,
        &topics.chained,
        0,
        framing::encode_single_object_chained(&chained(0, 2, 2)).expect("enc"),
    )
    .await;
    send(
        &producer,
        &topics.chained,
        0,
        framing::encode_single_object_chained(&chained(0, 3, 0xEE)).expect("enc"),
    )
    .await;
    // Partition 1: seqs 1..=3, Confluent framing.
    for s in 1..=3 {
        send(
            &producer,
            &topics.chained,
            1,
            framing::encode_confluent_chained(&chained(1, s, s as u8), chained_id).expect("enc"),
        )
        .await;
    }
    let cp = checkpoint_through(5);
    send(
        &producer,
        &topics.checkpoints,
        0,
        framing::encode_single_object_checkpoint(&cp).expect("enc"),
    )
    .await;

    let (shutdown, handle) = start(&prefix, &db, &format!("g1-{id}"));
    // The worker creates the database; connect once it is there.
    let store = connect_when_created(&db).await;
    wait_for(&store, "SELECT count() FROM audit_events", 8).await;
    wait_for(&store, "SELECT count() FROM audit_forks", 1).await;
    wait_for(&store, "SELECT count() FROM audit_checkpoints", 1).await;
    let stored3: String = store
        .client()
        .query_raw("SELECT hash FROM audit_events WHERE chain_partition = 0 AND seq = 3")
        .fetch_one()
        .await
        .expect("seq 3");
    assert_eq!(stored3, hex::encode([3u8; 32]), "the first copy is kept");
    shutdown.trigger();
    handle.await.expect("join").expect("clean stop");

    // The garbage record is on the dead-letter topic, original bytes, stage header set.
    let rejected = read_partition(&kafka, &topics.rejected).await;
    assert_eq!(rejected.len(), 1, "{rejected:?}");
    assert_eq!(rejected[0].0, b"not avro".to_vec());
    assert_eq!(rejected[0].1.as_deref(), Some("sink-clickhouse"));

    // More records, then a restart under a brand-new group (nothing committed): the sink must
    // resume from ClickHouse, not from the beginning, and store each seq exactly once.
    send_seqs(&producer, &topics.chained, 0, 6..=7).await;
    let (shutdown, handle) = start(&prefix, &db, &format!("g2-{id}"));
    wait_for(&store, "SELECT count() FROM audit_events", 10).await;
    // Give it time to (wrongly) re-insert anything, then check there are no duplicates.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(count(&store, "SELECT count() FROM audit_events").await, 10);
    assert_eq!(
        count(
            &store,
            "SELECT uniqExact(chain_partition, seq) FROM audit_events"
        )
        .await,
        10
    );
    assert_eq!(count(&store, "SELECT count() FROM audit_forks").await, 1);
    assert_eq!(
        count(&store, "SELECT count() FROM audit_checkpoints").await,
        1
    );
    shutdown.trigger();
    handle.await.expect("join").expect("clean stop");
    drop_db(&store, &db).await;
}

/// Every record of both partitions of `topic`: (payload, stage header).
async fn read_partition(kafka: &KafkaArgs, topic: &str) -> Vec<(Vec<u8>, Option<String>)> {
    read_topic(kafka, topic, 2, Duration::from_secs(10))
        .await
        .expect("scan")
        .into_iter()
        .map(|r| {
            let stage = r.header(HEADER_STAGE);
            (r.payload, stage)
        })
        .collect()
}

/// Topics of a fresh prefix (one partition each) and the ids a test needs.
async fn setup(tag: &str) -> (String, String, String, KafkaArgs) {
    let id = uuid::Uuid::new_v4().simple().to_string();
    let prefix = format!("t{tag}{}.", &id[..12]);
    let db = format!("audit_{tag}_{}", &id[..12]);
    let kafka = KafkaArgs::local(BROKERS, &prefix);
    create_topics(&kafka, 1).await;
    (id, prefix, db, kafka)
}

/// An older sink inserted seqs 1..=9 (three months) in one INSERT, which ClickHouse applies
/// per partition: the February and March parts landed, January's did not, and the sink
/// crashed. A new sink (fresh group: nothing committed) must store 1..=3 too, not resume after
/// the highest stored seq and leave a gap forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partly_applied_insert_over_months_is_resumed_without_a_gap() {
    let (id, prefix, db, kafka) = setup("gap").await;
    let topics = kafka.topics();
    let producer = Producer::new(&kafka, "e2e-producer").expect("producer");
    let mut rows = Vec::new();
    for s in 1..=9i64 {
        let mut c = chained(0, s, s as u8);
        c.event.event_time_us = month_us((s - 1) / 3);
        let d = producer
            .send(
                &OutputRecord::new(
                    &topics.chained,
                    Some(b"0".to_vec()),
                    framing::encode_single_object_chained(&c).expect("enc"),
                )
                .with_partition(0),
            )
            .await
            .expect("produce");
        rows.push(schemas::flat::AuditRow::from_chained(&c, d.offset));
    }
    let store = Store::connect(&settings(&db)).await.expect("ClickHouse");
    sink_clickhouse::migrations::apply(&store)
        .await
        .expect("migrate");
    let layout = store.row_layout().await.expect("audit_events' columns");
    let landed: Vec<sink_clickhouse::batch::Entry> = rows[3..]
        .iter()
        .map(|r| {
            sink_clickhouse::batch::Entry::new(r.clone(), &layout, &mut Vec::new()).expect("entry")
        })
        .collect();
    let landed: Vec<&sink_clickhouse::batch::Entry> = landed.iter().collect();
    store.insert_events(&landed).await.expect("partial landing");

    let (shutdown, handle) = start(&prefix, &db, &format!("g-{id}"));
    wait_for(
        &store,
        "SELECT uniqExact(seq) FROM audit_events WHERE seq <= 3",
        3,
    )
    .await;
    assert_eq!(count(&store, "SELECT count() FROM audit_events").await, 9);
    shutdown.trigger();
    handle.await.expect("join").expect("clean stop");
    drop_db(&store, &db).await;
}

/// ClickHouse goes away three times (the sink reaches it through a proxy the test cuts): at
/// the sink's start, with a batch and a checkpoint due, and with live connections cut. Each
/// time the sink keeps retrying (the proxy counts its refused attempts), then resumes; every
/// seq ends up stored exactly once and the worker never stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clickhouse_outages_are_survived_without_loss_or_duplicates() {
    let (id, prefix, db, kafka) = setup("out").await;
    let topics = kafka.topics();
    let producer = Producer::new(&kafka, "e2e-producer").expect("producer");
    let (proxy, url) = clickhouse_proxy().await;
    let health = format!("127.0.0.1:{}", free_port());
    let fast = [
        "--retry-min-delay-ms",
        "20",
        "--retry-max-delay-ms",
        "200",
        "--health-addr",
        &health,
    ];
    let produce = |range: std::ops::RangeInclusive<i64>| {
        let producer = producer.clone();
        let topic = topics.chained.clone();
        async move { send_seqs(&producer, &topic, 0, range).await }
    };

    // 1. Away at start: the sink must wait for it, not exit.
    proxy.cut();
    produce(1..=4).await;
    let (shutdown, handle) = start_with(&prefix, &db, &format!("g-{id}"), &url, &fast);
    proxy.wait_refused(0, 5).await;
    assert!(!handle.is_finished(), "the sink stopped during the outage");
    proxy.restore();
    let store = connect_when_created(&db).await;
    wait_for(&store, "SELECT count() FROM audit_events", 4).await;

    // 2. Away with a batch and a checkpoint due.
    let refused = proxy.refused();
    proxy.cut();
    produce(5..=8).await;
    let cp = checkpoint_through(8);
    send(
        &producer,
        &topics.checkpoints,
        0,
        framing::encode_single_object_checkpoint(&cp).expect("enc"),
    )
    .await;
    proxy.wait_refused(refused, 5).await;
    assert!(!handle.is_finished(), "the sink stopped during the outage");
    // Not ready while it retries ClickHouse, and `/readyz` names it.
    let during = wait_readyz(&health, |r| r["checks"]["clickhouse"]["ok"] == false).await;
    assert_eq!(during["ready"], false, "{during}");
    proxy.restore();
    wait_for(&store, "SELECT count() FROM audit_events", 8).await;
    let after = wait_readyz(&health, |r| r["ready"] == true).await;
    assert_eq!(after["checks"]["clickhouse"]["ok"], true, "{after}");
    wait_for(&store, "SELECT count() FROM audit_checkpoints", 1).await;

    // 3. Cut while records flow (live connections aborted, requests fail part-way).
    let refused = proxy.refused();
    let flow = tokio::spawn(produce(9..=30));
    tokio::time::sleep(Duration::from_millis(300)).await;
    proxy.cut();
    proxy.wait_refused(refused, 5).await;
    proxy.restore();
    flow.await.expect("producer task");
    wait_for(&store, "SELECT count() FROM audit_events", 30).await;
    assert!(!handle.is_finished(), "the sink stopped");
    assert_eq!(
        count(
            &store,
            "SELECT uniqExact(chain_partition, seq) FROM audit_events"
        )
        .await,
        30
    );
    assert_eq!(count(&store, "SELECT count() FROM audit_forks").await, 0);
    shutdown.trigger();
    handle.await.expect("join").expect("clean stop");
    drop_db(&store, &db).await;
}

/// An outage longer than the consumer's `max.poll.interval.ms` (lowered to 10 s here; 5
/// minutes by default): the sink, blocked retrying, stops polling, so librdkafka leaves the
/// group; once ClickHouse is back the sink rejoins, resumes from ClickHouse, and stores every
/// seq exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_longer_than_the_poll_interval_is_survived() {
    // The sink's own account of the outage, shown when this test fails (it runs in process).
    let _ = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_env_filter("info,sink_clickhouse=debug,worker_runtime=debug")
        .with_test_writer()
        .try_init();
    let (id, prefix, db, kafka) = setup("long").await;
    let topics = kafka.topics();
    let producer = Producer::new(&kafka, "e2e-producer").expect("producer");
    let (proxy, url) = clickhouse_proxy().await;
    let args = [
        "--retry-min-delay-ms",
        "100",
        "--retry-max-delay-ms",
        "100",
        "--kafka-property",
        "max.poll.interval.ms=10000",
    ];
    send_seqs(&producer, &topics.chained, 0, 1..=3).await;
    let (shutdown, handle) = start_with(&prefix, &db, &format!("g-{id}"), &url, &args);
    let store = connect_when_created(&db).await;
    wait_for(&store, "SELECT count() FROM audit_events", 3).await;
    proxy.cut();
    send_seqs(&producer, &topics.chained, 0, 4..=9).await;
    // About 20 s of refused attempts (one per 100 ms): twice the poll interval.
    proxy.wait_refused(0, 200).await;
    assert!(!handle.is_finished(), "the sink stopped during the outage");
    proxy.restore();
    send_seqs(&producer, &topics.chained, 0, 10..=12).await;
    wait_for(&store, "SELECT count() FROM audit_events", 12).await;
    assert_eq!(
        count(&store, "SELECT uniqExact(seq) FROM audit_events").await,
        12
    );
    assert!(!handle.is_finished(), "the sink stopped");
    shutdown.trigger();
    handle.await.expect("join").expect("clean stop");
    drop_db(&store, &db).await;
}

/// The rows held over all partitions trigger the insert, not each partition's own count: a
/// sink holding P partitions used to hold up to P × `--batch-max-rows` decoded rows (its peak
/// RSS at max load was 114 MB against 32 MB for the raw consume+insert path). Here two
/// partitions hold 5 rows each with a budget of 10 and a batch age of an hour: only the
/// budget over both can store them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rows_held_over_all_partitions_trigger_the_insert() {
    let id = uuid::Uuid::new_v4().simple().to_string();
    let prefix = format!("tbud{}.", &id[..12]);
    let db = format!("audit_bud_{}", &id[..12]);
    let kafka = KafkaArgs::local(BROKERS, &prefix);
    create_topics(&kafka, 2).await;
    let topics = kafka.topics();
    let producer = Producer::new(&kafka, "e2e-producer").expect("producer");
    send_seqs(&producer, &topics.chained, 0, 1..=5).await;
    send_seqs(&producer, &topics.chained, 1, 1..=5).await;
    let group = format!("g-{id}");
    let config = Config::parse_from([
        "sink-clickhouse",
        "--health-addr",
        "",
        "--kafka-brokers",
        BROKERS,
        "--topic-prefix",
        &prefix,
        "--clickhouse-url",
        &ch_url(),
        "--clickhouse-database",
        &db,
        "--group-id",
        &group,
        "--batch-max-rows",
        "10",
        "--batch-max-age-ms",
        "3600000",
    ]);
    let shutdown = Shutdown::new();
    let handle = tokio::spawn(run(config, shutdown.clone()));
    let store = connect_when_created(&db).await;
    wait_for(
        &store,
        "SELECT uniqExact(chain_partition, seq) FROM audit_events",
        10,
    )
    .await;
    assert_eq!(count(&store, "SELECT count() FROM audit_events").await, 10);
    shutdown.trigger();
    handle.await.expect("join").expect("clean stop");
    drop_db(&store, &db).await;
}
