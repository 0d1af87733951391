//! The producer's send gate against the real broker (tansu on 127.0.0.1:9092, or
//! `KAFKA_BROKERS`; `deploy/local/stack.sh up`). FAILS when the broker is absent.
//!
//! The gate holds a lane's records while a wave of them is unacknowledged (see
//! `worker_runtime::kafka::gate`). What must hold whatever it does: every record lands exactly
//! once, in enqueue order per partition, at the partition and offset its delivery reports; a
//! record librdkafka refuses fails alone without holding up the ones behind it; `flush` waits for
//! held records too; a transactional producer bypasses the gate.

use std::collections::HashMap;
use std::time::Duration;

use worker_runtime::kafka::admin::{ensure_topics, TopicSpec};
use worker_runtime::kafka::producer::{await_delivery, Delivered, SendParts};
use worker_runtime::kafka::{KafkaArgs, OutputRecord, Producer};
use worker_runtime::testing::topic::read_topic;

fn brokers() -> String {
    std::env::var("KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

fn unique(name: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("t-gate-{name}-{}-{nanos}", std::process::id())
}

fn args() -> KafkaArgs {
    KafkaArgs {
        brokers: brokers(),
        ..KafkaArgs::default()
    }
}

async fn topic(args: &KafkaArgs, name: &str, partitions: i32) -> String {
    let t = unique(name);
    ensure_topics(
        args,
        &[TopicSpec {
            name: t.clone(),
            partitions,
            compacted: false,
        }],
        1,
    )
    .await
    .expect("create topic");
    t
}

/// partition → (offset, payload) in log order.
async fn read(args: &KafkaArgs, topic: &str, partitions: i32) -> HashMap<i32, Vec<(i64, Vec<u8>)>> {
    let mut out: HashMap<i32, Vec<(i64, Vec<u8>)>> =
        (0..partitions).map(|p| (p, Vec::new())).collect();
    for r in read_topic(args, topic, partitions, Duration::from_secs(30))
        .await
        .expect("scan")
    {
        out.entry(r.partition)
            .or_default()
            .push((r.offset, r.payload));
    }
    out
}

/// Whether the record numbered in `payload` (`r00042`) was produced with a key.
fn is_keyed(payload: &[u8]) -> bool {
    std::str::from_utf8(&payload[1..])
        .ok()
        .and_then(|n| n.parse::<usize>().ok())
        .is_some_and(|i| i % 3 == 0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gated_records_land_once_in_order_where_their_deliveries_say() {
    // Waves of at most 100 records: a lane's 101st record arrives while the wave before it is
    // unacknowledged, and waits. (With the default cap of 10,000, a machine that enqueued all
    // 3,000 within the linger window once sent every lane's records in one wave, held none.)
    let mut args = args();
    args.properties.push("batch.num.messages=100".into());
    let partitions = 3;
    let t = topic(&args, "order", partitions).await;
    let producer = Producer::new(&args, "t-gate").expect("producer");
    assert!(producer.gate_stats().is_some(), "a plain producer is gated");

    // Enqueued as a worker does (many outstanding at once): explicit partitions and keyed
    // records (the partitioner's lane) mixed, so that waves form and records wait.
    let n = 3000usize;
    let mut pending = Vec::with_capacity(n);
    for i in 0..n {
        let payload = format!("r{i:05}").into_bytes();
        let rec = if i % 3 == 0 {
            OutputRecord::new(t.clone(), Some(format!("k{}", i % 7).into_bytes()), payload)
        } else {
            OutputRecord::new(t.clone(), None, payload).with_partition((i % 2) as i32)
        };
        pending.push((i, producer.enqueue(&rec).await.expect("enqueue")));
    }
    let mut delivered: HashMap<Vec<u8>, Delivered> = HashMap::new();
    for (i, d) in pending {
        let at = await_delivery(d, &t).await.expect("delivered");
        delivered.insert(format!("r{i:05}").into_bytes(), at);
    }
    let stats = producer.gate_stats().expect("gated");
    eprintln!("{stats:?}");
    assert_eq!(stats.submitted, n as u64, "{stats:?}");
    assert!(
        stats.held > 0 && stats.waves > 1,
        "records enqueued while a wave was unacknowledged were held: {stats:?}"
    );

    let log = read(&args, &t, partitions).await;
    let mut seen = 0;
    for (p, records) in &log {
        // Exactly once, where the delivery said.
        for (offset, payload) in records {
            let at = delivered.get(payload).expect("a record we produced");
            assert_eq!((at.partition, at.offset), (*p, *offset), "{payload:?}");
        }
        seen += records.len();
        // Enqueue order within each lane of the partition (payloads number the enqueue order;
        // keyed records, every third, are one lane per topic, the others one per partition).
        for keyed in [true, false] {
            let order: Vec<&Vec<u8>> = records
                .iter()
                .map(|(_, v)| v)
                .filter(|v| is_keyed(v) == keyed)
                .collect();
            let mut sorted = order.clone();
            sorted.sort();
            assert!(
                order == sorted,
                "partition {p} (keyed: {keyed}) out of enqueue order"
            );
        }
    }
    assert_eq!(seen, n, "every record exactly once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_record_fails_alone_and_flush_waits_for_held_records() {
    let args = args();
    let t = topic(&args, "refused", 1).await;
    let producer = Producer::new(&args, "t-gate-refused").expect("producer");
    // Warm up the metadata so librdkafka knows the partition count.
    let first = producer
        .enqueue(&OutputRecord::new(t.clone(), None, b"warm".to_vec()).with_partition(0))
        .await
        .expect("enqueue");
    await_delivery(first, &t).await.expect("warm-up delivered");

    let mut pending = Vec::new();
    for i in 0..200 {
        // Partition 5 does not exist: librdkafka refuses it; partition 0 records behind it
        // must still go.
        let partition = if i % 50 == 10 { 5 } else { 0 };
        let d = producer
            .enqueue_parts(SendParts {
                topic: &t,
                partition: Some(partition),
                payload: Some(format!("x{i:03}").into_bytes().into()),
                timestamp_ms: Some(1_700_000_000_000 + i),
                ..SendParts::default()
            })
            .await
            .expect("enqueue");
        pending.push((partition, d));
    }
    producer
        .flush(Duration::from_secs(60))
        .await
        .expect("flush waits for everything, held records included");
    let mut ok = 0;
    for (partition, d) in pending {
        // Resolved by the flush: no waiting here.
        let r = tokio::time::timeout(Duration::from_millis(1), await_delivery(d, &t))
            .await
            .expect("flush returned before this delivery resolved");
        match partition {
            0 => {
                r.expect("partition 0 delivered");
                ok += 1;
            }
            _ => {
                let e = r.expect_err("partition 5 does not exist");
                assert!(e.to_string().contains("partition"), "{e}");
            }
        }
    }
    assert_eq!(ok, 196);
    let log = read(&args, &t, 1).await;
    assert_eq!(log[&0].len(), 197, "warm-up + 196");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wave_is_at_most_one_requests_worth() {
    // librdkafka sends at most `batch.num.messages` records of a partition per request; a
    // larger wave would leave its tail queued behind the first request (the spin the gate is
    // there to prevent). With 50 per request, 1,000 records take at least 20 waves.
    let mut a = args();
    a.properties.push("batch.num.messages=50".into());
    let t = topic(&a, "cap", 1).await;
    let producer = Producer::new(&a, "t-gate-cap").expect("producer");
    let mut pending = Vec::new();
    for i in 0..1000 {
        let rec =
            OutputRecord::new(t.clone(), None, format!("c{i:04}").into_bytes()).with_partition(0);
        pending.push(producer.enqueue(&rec).await.expect("enqueue"));
    }
    for d in pending {
        await_delivery(d, &t).await.expect("delivered");
    }
    let stats = producer.gate_stats().expect("gated");
    assert_eq!(stats.submitted, 1000);
    assert!(stats.waves >= 20, "waves of at most 50 records: {stats:?}");
    let log = read(&a, &t, 1).await;
    let payloads: Vec<Vec<u8>> = log[&0].iter().map(|(_, v)| v.clone()).collect();
    let expected: Vec<Vec<u8>> = (0..1000).map(|i| format!("c{i:04}").into_bytes()).collect();
    assert_eq!(payloads, expected, "in order, each once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactional_producers_bypass_the_gate() {
    let mut txn = args();
    txn.properties.extend([
        "transactional.id=t-gate-txn".to_owned(),
        "message.timeout.ms=30000".to_owned(),
    ]);
    let producer = Producer::new(&txn, "t-gate-txn").expect("producer");
    assert!(
        producer.gate_stats().is_none(),
        "a transaction's commit must see every record in librdkafka's queue"
    );
}
