//! Events/s through each front door (Kafka, HTTP, OTLP/HTTP, OTLP/gRPC) next to the raw broker
//! produce rate, measured in the same run on the real broker (127.0.0.1:9092; FAILS when it is
//! absent). The broker is the ceiling on this machine (design.md), so the figure that means
//! something is the ratio. Prints the figures; asserts only that every event landed (no
//! wall-clock assertions).
//!
//! CPU per event is this process's user+system time over the phase: it includes the client
//! (building and sending the JSON or protobuf; for the Kafka door, producing the raw records),
//! so it is an upper bound for the door. Debug build: compare ratios, not absolute figures
//! (`worker-bench` measures the Kafka door's release binary against its raw path).

mod common;

use std::time::Instant;

use common::*;
use futures::future::join_all;
use serde_json::json;
use worker_runtime::kafka::admin::{ensure_topics, TopicSpec};
use worker_runtime::kafka::producer::await_delivery;
use worker_runtime::kafka::{OutputRecord, Producer};

/// Events per door (the four phases and the two raw measurements write 6·N records to the
/// shared broker, whose database every later test reads: kept moderate).
const N: usize = 10_000;
const BATCH: usize = 500;
const CLIENTS: usize = 4;
const TOKEN: &str = "rate-token";

/// This process's CPU time (user + system) in seconds, from /proc/self/stat.
fn cpu_secs() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which may contain spaces) start after the last ')'.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime, stime are fields 14 and 15 (1-based); `rest` starts at field 3.
    (ticks(11) + ticks(12)) / 100.0
}

fn event(i: usize) -> serde_json::Value {
    seed_event(json!({"requestId": format!("rate-{i}"), "id": format!("evt-rate-{i}")}))
}

async fn raw_rate(kafka: &worker_runtime::kafka::KafkaArgs, payload: &[u8]) -> (f64, f64) {
    let producer = Producer::new(kafka, "rate-raw").expect("producer");
    // Its own topic: ingest consumes `raw`, and must not turn these into validated events.
    let topic = format!("{}bench", kafka.topic_prefix);
    let spec = TopicSpec {
        name: topic.clone(),
        partitions: PARTITIONS,
        compacted: false,
    };
    ensure_topics(kafka, &[spec], 1).await.expect("bench topic");
    let (t0, c0) = (Instant::now(), cpu_secs());
    let mut pending = Vec::with_capacity(N);
    for i in 0..N {
        let rec = OutputRecord::new(&topic, Some(format!("k{i}").into_bytes()), payload.to_vec());
        pending.push(producer.enqueue(&rec).await.expect("enqueue"));
    }
    for d in join_all(pending.into_iter().map(|d| await_delivery(d, &topic))).await {
        d.expect("acknowledged");
    }
    let secs = t0.elapsed().as_secs_f64();
    (N as f64 / secs, (cpu_secs() - c0) / N as f64)
}

/// `bodies` posted by `CLIENTS` concurrent clients; events accepted (from `count`) and seconds.
async fn post_all(
    url: &str,
    content_type: &'static str,
    bodies: Vec<Vec<u8>>,
    count: fn(&[u8]) -> usize,
) -> (usize, f64) {
    let client = reqwest::Client::new();
    let t0 = Instant::now();
    let chunks: Vec<Vec<Vec<u8>>> = (0..CLIENTS)
        .map(|c| bodies.iter().skip(c).step_by(CLIENTS).cloned().collect())
        .collect();
    let tasks = chunks.into_iter().map(|chunk| {
        let client = client.clone();
        let url = url.to_owned();
        tokio::spawn(async move {
            let mut accepted = 0usize;
            for body in chunk {
                let resp = client
                    .post(&url)
                    .bearer_auth(TOKEN)
                    .header("content-type", content_type)
                    .body(body)
                    .send()
                    .await
                    .expect("request");
                assert!(resp.status().is_success(), "{}", resp.status());
                accepted += count(&resp.bytes().await.expect("body"));
            }
            accepted
        })
    });
    let accepted = join_all(tasks)
        .await
        .into_iter()
        .map(|r| r.expect("client task"))
        .sum();
    (accepted, t0.elapsed().as_secs_f64())
}

/// Encoded export requests sent over OTLP/gRPC by `CLIENTS` concurrent clients (one channel
/// each, as exporters do); spans accepted and seconds.
async fn export_all(endpoint: &str, requests: Vec<Vec<u8>>) -> (usize, f64) {
    use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use prost::Message;
    let requests: Vec<ExportTraceServiceRequest> = requests
        .iter()
        .map(|b| ExportTraceServiceRequest::decode(b.as_slice()).expect("request"))
        .collect();
    let t0 = Instant::now();
    let tasks = (0..CLIENTS).map(|c| {
        let chunk: Vec<_> = requests.iter().skip(c).step_by(CLIENTS).cloned().collect();
        let endpoint = endpoint.to_owned();
        tokio::spawn(async move {
            let mut client = TraceServiceClient::connect(endpoint)
                .await
                .expect("gRPC connect");
            let mut accepted = 0usize;
            for request in chunk {
                let spans: usize = request
                    .resource_spans
                    .iter()
                    .flat_map(|r| &r.scope_spans)
                    .map(|s| s.spans.len())
                    .sum();
                let r = client.export(request).await.expect("export").into_inner();
                accepted += spans - r.partial_success.map_or(0, |p| p.rejected_spans as usize);
            }
            accepted
        })
    });
    let accepted = join_all(tasks)
        .await
        .into_iter()
        .map(|r| r.expect("client task"))
        .sum();
    (accepted, t0.elapsed().as_secs_f64())
}

fn otlp_body(b: usize) -> Vec<u8> {
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
    use opentelemetry_proto::tonic::resource::v1::Resource;
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
    use prost::Message;
    let start = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_nanos() as u64;
    let spans = (b * BATCH..(b + 1) * BATCH)
        .map(|i| Span {
            trace_id: (i as u128 + 1).to_be_bytes().to_vec(),
            span_id: (i as u64 + 1).to_be_bytes().to_vec(),
            name: "GET /orders".into(),
            kind: 2,
            start_time_unix_nano: start,
            end_time_unix_nano: start + 1_000_000,
            attributes: vec![KeyValue {
                key: "http.route".into(),
                value: Some(AnyValue {
                    value: Some(any_value::Value::StringValue("/orders".into())),
                }),
                ..Default::default()
            }],
            ..Default::default()
        })
        .collect();
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![KeyValue {
                    key: "service.name".into(),
                    value: Some(AnyValue {
                        value: Some(any_value::Value::StringValue("bench".into())),
                    }),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
    .encode_to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_door_rate_next_to_raw_produce_rate() {
    let (otlp_addr, grpc_addr) = (free_addr(), free_addr());
    let run = start_ingest(
        &token_entry(TOKEN, "acme", ""),
        &[
            "--otlp",
            "--otlp-grpc-addr",
            &grpc_addr,
            "--otlp-http-addr",
            &otlp_addr,
            "--strict-labels=false",
            "--http-rate-per-sec",
            "0",
            "--http-max-batch",
            &BATCH.to_string(),
        ],
    )
    .await;
    let kafka = run.kafka.clone();
    // The raw hop carries what the door writes: the validated Avro of such an event.
    let sample = schemas::testing::sample_event();
    let payload = schemas::framing::encode_single_object_event(&sample).expect("encode");
    let (raw_before, raw_cpu) = raw_rate(&kafka, &payload).await;

    let bodies: Vec<Vec<u8>> = (0..N / BATCH)
        .map(|b| {
            serde_json::Value::Array((b * BATCH..(b + 1) * BATCH).map(event).collect())
                .to_string()
                .into_bytes()
        })
        .collect();
    let c0 = cpu_secs();
    let (accepted, http_secs) = post_all(
        &format!("{}/v1/events", run.base),
        "application/json",
        bodies,
        |b| {
            let v: serde_json::Value = serde_json::from_slice(b).expect("JSON");
            v["accepted"].as_array().map_or(0, Vec::len)
        },
    )
    .await;
    let http_cpu = (cpu_secs() - c0) / N as f64;
    let http_rate = N as f64 / http_secs;

    let bodies: Vec<Vec<u8>> = (0..N / BATCH).map(otlp_body).collect();
    let c0 = cpu_secs();
    let (otlp_ok, otlp_secs) = post_all(
        &format!("http://{otlp_addr}/v1/traces"),
        "application/x-protobuf",
        bodies,
        // A full success has no partial_success: every span of the batch was accepted.
        |b| {
            use prost::Message;
            let r = opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse::decode(b)
                .expect("OTLP answer");
            BATCH - r.partial_success.map_or(0, |p| p.rejected_spans as usize)
        },
    )
    .await;
    let otlp_cpu = (cpu_secs() - c0) / N as f64;
    let otlp_rate = N as f64 / otlp_secs;

    // OTLP/gRPC: the same spans (other ids), the same concurrency.
    let requests: Vec<Vec<u8>> = (N / BATCH..2 * N / BATCH).map(otlp_body).collect();
    let c0 = cpu_secs();
    let (grpc_ok, grpc_secs) = export_all(&format!("http://{grpc_addr}"), requests).await;
    let grpc_cpu = (cpu_secs() - c0) / N as f64;
    let grpc_rate = N as f64 / grpc_secs;

    // The Kafka door: N raw JSON records produced to the raw topic; the phase ends when
    // ingest has validated all of them (its output is acknowledged by the broker).
    let validated = &kafka.topics().validated;
    let before = count(&kafka, validated).await;
    let raw_producer = Producer::new(&kafka, "rate-kafka-door").expect("producer");
    let raw_topic = kafka.topics().raw;
    let (t0, c0) = (Instant::now(), cpu_secs());
    let mut pending = Vec::with_capacity(N);
    for i in 0..N {
        let body = event(N + i).to_string().into_bytes();
        let rec = OutputRecord::new(&raw_topic, Some(format!("k{i}").into_bytes()), body);
        pending.push(raw_producer.enqueue(&rec).await.expect("enqueue"));
    }
    for d in join_all(pending.into_iter().map(|d| await_delivery(d, &raw_topic))).await {
        d.expect("acknowledged");
    }
    let deadline = Instant::now() + std::time::Duration::from_secs(300);
    while count(&kafka, validated).await < before + N as i64 {
        assert!(
            Instant::now() < deadline,
            "the Kafka door did not validate {N} records"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let kafka_secs = t0.elapsed().as_secs_f64();
    let kafka_cpu = (cpu_secs() - c0) / N as f64;
    let kafka_rate = N as f64 / kafka_secs;
    let (raw_after, _) = raw_rate(&kafka, &payload).await;

    assert_eq!(accepted, N);
    assert_eq!(otlp_ok, N);
    assert_eq!(grpc_ok, N);
    run.stop().await;
    assert_eq!(count(&kafka, &kafka.topics().validated).await, 4 * N as i64);
    let raw = (raw_before + raw_after) / 2.0;
    println!(
        "raw produce: {raw_before:.0} / {raw_after:.0} events/s (before/after), CPU/event {:.1} µs\n\
         HTTP door:   {http_rate:.0} events/s, ratio {:.2}, CPU/event {:.1} µs (incl. client)\n\
         OTLP/HTTP:   {otlp_rate:.0} spans/s, ratio {:.2}, CPU/event {:.1} µs (incl. client)\n\
         OTLP/gRPC:   {grpc_rate:.0} spans/s, ratio {:.2}, CPU/event {:.1} µs (incl. client)\n\
         Kafka door:  {kafka_rate:.0} events/s, ratio {:.2}, CPU/event {:.1} µs (incl. the raw producer)\n\
         ({CLIENTS} clients, batches of {BATCH}; N = {N} per door)",
        raw_cpu * 1e6,
        http_rate / raw,
        http_cpu * 1e6,
        otlp_rate / raw,
        otlp_cpu * 1e6,
        grpc_rate / raw,
        grpc_cpu * 1e6,
        kafka_rate / raw,
        kafka_cpu * 1e6
    );
}
