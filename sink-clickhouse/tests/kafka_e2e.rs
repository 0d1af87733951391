//! The worker end to end against the local stack (Kafka API on 127.0.0.1:9092, ClickHouse on
//! 8123; `deploy/local/stack.sh up`). FAILS when either is absent.
//!
//! Covers: both framings decoded; an undecodable record dead-lettered with stage
//! `sink-clickhouse`; an identical second copy dropped; a different copy recorded as a fork and
//! not stored; a checkpoint stored; and a restart under a NEW consumer group (no committed
//! offsets at all) resuming from ClickHouse without a single duplicate row.

use std::time::{Duration, Instant};

use clap::Parser;
use rdkafka::Message;
use schemas::framing::{self, CatalogIdResolver};
use schemas::testing::sample_event;
use schemas::{ChainedEvent, Checkpoint};
use sink_clickhouse::store::{Store, StoreSettings};
use sink_clickhouse::{run, Config};
use worker_runtime::kafka::admin::{ensure_topics, TopicSpec};
use worker_runtime::kafka::dlq::HEADER_STAGE;
use worker_runtime::kafka::tail::{scan, ScanStart};
use worker_runtime::kafka::{KafkaArgs, OutputRecord, Producer};
use worker_runtime::{Secret, Shutdown};

const BROKERS: &str = "127.0.0.1:9092";

fn ch_url() -> String {
    std::env::var("AUDIT_CLICKHOUSE_URL").unwrap_or_else(|_| "http://127.0.0.1:8123".into())
}

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

fn start(
    prefix: &str,
    db: &str,
    group: &str,
) -> (
    Shutdown,
    tokio::task::JoinHandle<Result<(), sink_clickhouse::Error>>,
) {
    let config = Config::parse_from([
        "sink-clickhouse",
        "--health-addr",
        "",
        "--kafka-brokers",
        BROKERS,
        "--topic-prefix",
        prefix,
        "--clickhouse-url",
        &ch_url(),
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
        "--retry-max-attempts",
        "5",
    ]);
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

async fn count(store: &Store, sql: &str) -> u64 {
    store
        .client()
        .query_raw(sql)
        .fetch_one::<u64>()
        .await
        .expect(sql)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sink_end_to_end_with_restart_under_a_new_group() {
    let id = uuid::Uuid::new_v4().simple().to_string();
    let prefix = format!("t{}.", &id[..12]);
    let db = format!("audit_e2e_{}", &id[..12]);
    let kafka = KafkaArgs::local(BROKERS, &prefix);
    let topics = kafka.topics();
    let specs: Vec<TopicSpec> = [&topics.chained, &topics.checkpoints, &topics.rejected]
        .into_iter()
        .map(|t| TopicSpec {
            name: t.clone(),
            partitions: 2,
            compacted: false,
        })
        .collect();
    ensure_topics(&kafka, &specs, 1)
        .await
        .expect("Kafka must be running (deploy/local/stack.sh up)");
    let producer = Producer::new(&kafka, "e2e-producer").expect("producer");
    let ids = CatalogIdResolver::new().expect("ids");
    let chained_id = ids
        .id_of(schemas::avro::RecordKind::ChainedEvent)
        .expect("id");

    // Partition 0: seqs 1..=5 single-object, garbage, an identical copy of 2, a fork of 3.
    for s in 1..=5 {
        send(
            &producer,
            &topics.chained,
            0,
            framing::encode_single_object_chained(&chained(0, s, s as u8)).expect("enc"),
        )
        .await;
    }
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
    let cp = Checkpoint {
        chain_id: "e2e".into(),
        partition: 0,
        first_seq: 1,
        seq: 5,
        head_hash: vec![5; 32],
        merkle_root: vec![0; 32],
        time_us: 1_717_200_000_000_000,
        key_id: "k1".into(),
        signature: vec![9; 64],
    };
    send(
        &producer,
        &topics.checkpoints,
        0,
        framing::encode_single_object_checkpoint(&cp).expect("enc"),
    )
    .await;

    let (shutdown, handle) = start(&prefix, &db, &format!("g1-{id}"));
    let store = loop {
        // The worker creates the database; connect once it is there.
        let s = StoreSettings {
            url: ch_url(),
            database: db.clone(),
            user: "default".into(),
            password: Secret::default(),
        };
        if let Ok(store) = Store::connect(&s).await {
            break store;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
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
    for s in 6..=7 {
        send(
            &producer,
            &topics.chained,
            0,
            framing::encode_single_object_chained(&chained(0, s, s as u8)).expect("enc"),
        )
        .await;
    }
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
    let _ = store
        .client()
        .query(&format!("DROP DATABASE IF EXISTS {db}"))
        .execute()
        .await;
}

/// Every record of both partitions of `topic`: (payload, stage header).
async fn read_partition(kafka: &KafkaArgs, topic: &str) -> Vec<(Vec<u8>, Option<String>)> {
    let out = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = out.clone();
    let mut all = Vec::new();
    for p in 0..2 {
        let sink = sink.clone();
        let _ = scan(
            kafka,
            topic,
            p,
            ScanStart::Offset(0),
            Duration::from_secs(10),
            move |m| {
                use rdkafka::message::Headers;
                let stage = m.headers().and_then(|h| {
                    h.iter()
                        .find(|x| x.key == HEADER_STAGE)
                        .and_then(|x| x.value.map(|v| String::from_utf8_lossy(v).into_owned()))
                });
                sink.lock()
                    .expect("lock")
                    .push((m.payload().unwrap_or_default().to_vec(), stage));
            },
        )
        .await
        .expect("scan");
    }
    all.append(&mut out.lock().expect("lock"));
    all
}
