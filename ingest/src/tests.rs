//! The Kafka front door without a broker: processor in, output records out.

use std::sync::Arc;

use schemas::framing::{self, CatalogIdResolver};
use schemas::json::JsonLimits;
use schemas::testing::sample_event;
use schemas::{AuditEvent, IngressChannel, KeyValue};
use worker_runtime::kafka::dlq::{
    HEADER_REASON_CODE, HEADER_REASON_MESSAGE, HEADER_SOURCE_OFFSET, HEADER_SOURCE_PARTITION,
    HEADER_SOURCE_TOPIC, HEADER_STAGE,
};
use worker_runtime::kafka::pipeline::Processor;
use worker_runtime::kafka::{InputRecord, OutputRecord};

use crate::{derived_event_id, IngestProcessor};

/// 2024-01-15T10:30:01Z (ms), one second after the seed example's timestamp.
const RECORD_TS_MS: i64 = 1_705_314_601_000;

/// The event structure platform components publish (seed 000, §3.2).
const SEED_EVENT: &str = r#"{
  "event": {
    "id": "evt-7f3a9c2e",
    "eventType": "infrastructure_request",
    "timestamp": "2024-01-15T10:30:00Z",
    "userId": "user-123",
    "teamId": "team-456",
    "sessionId": "session-789",
    "source": "natural_language_interface",
    "category": "user_interaction",
    "action": "create_api_server",
    "data": {
      "naturalLanguageRequest": "I need a new API server for user management",
      "extractedParameters": {"name": "user-management-api", "runtime": "nodejs"},
      "confidence": 0.95,
      "tools": ["create_api_server", "create_database"]
    },
    "result": {"status": "success", "deploymentId": "dep-9e07"},
    "metadata": {"clientIp": "192.168.1.100", "userAgent": "Mozilla/5.0...", "processingTime": 1250},
    "traceId": "trace-0a1b",
    "spanId": "span-2c3d",
    "parentId": "parent-span-4e5f"
  }
}"#;

fn processor() -> IngestProcessor {
    IngestProcessor::new(
        "t.validated",
        "t.rejected",
        JsonLimits::default(),
        Arc::new(CatalogIdResolver::new().expect("catalog resolver")),
    )
}

fn input(payload: Option<&[u8]>) -> InputRecord {
    InputRecord {
        topic: "t.raw".into(),
        partition: 2,
        offset: 41,
        key: Some(b"producer-key".to_vec()),
        payload: payload.map(<[u8]>::to_vec),
        headers: vec![
            (
                "traceparent".into(),
                b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".to_vec(),
            ),
            ("x-other".into(), b"dropped".to_vec()),
        ],
        timestamp_ms: Some(RECORD_TS_MS),
    }
}

async fn process_one(p: &IngestProcessor, input: &InputRecord) -> OutputRecord {
    let mut out = p
        .process(input)
        .await
        .expect("processing never fails on input");
    assert_eq!(out.len(), 1, "exactly one output per input");
    out.remove(0)
}

fn header<'a>(out: &'a OutputRecord, name: &str) -> Option<&'a str> {
    out.headers
        .iter()
        .find(|(k, _)| k == name)
        .and_then(|(_, v)| std::str::from_utf8(v).ok())
}

fn decode(out: &OutputRecord) -> AuditEvent {
    let bytes = out.payload.as_deref().expect("payload");
    assert!(
        bytes.starts_with(&framing::SINGLE_OBJECT_MAGIC),
        "single-object framing"
    );
    framing::decode_event(bytes, None).expect("decodable validated payload")
}

#[tokio::test]
async fn seed_example_is_validated_with_its_partition_key() {
    let p = processor();
    let out = process_one(&p, &input(Some(SEED_EVENT.as_bytes()))).await;
    assert_eq!(out.topic, "t.validated");
    assert_eq!(out.partition, None, "the partitioner picks by key");
    // No tenant id in the seed event: the team id is the partition key.
    assert_eq!(out.key.as_deref(), Some(&b"team-456"[..]));
    assert_eq!(header(&out, "traceparent").map(str::len), Some(55));
    assert_eq!(header(&out, "x-other"), None);
    let e = decode(&out);
    assert_eq!(e.event_id, "evt-7f3a9c2e");
    assert_eq!(e.actor.id, "user-123");
    assert_eq!(e.receive_time_us, RECORD_TS_MS * 1000);
    assert_eq!(e.ingress.channel, IngressChannel::Kafka);
    assert_eq!(e.ingress.topic.as_deref(), Some("t.raw"));
    assert_eq!((e.ingress.partition, e.ingress.offset), (Some(2), Some(41)));
    assert_eq!(e.ingress.format, "json");
}

#[tokio::test]
async fn partition_key_prefers_tenant_then_team_then_event_id() {
    let p = processor();
    let with_tenant = SEED_EVENT.replace(r#""teamId""#, r#""tenantId": "acme", "teamId""#);
    let out = process_one(&p, &input(Some(with_tenant.as_bytes()))).await;
    assert_eq!(out.key.as_deref(), Some(&b"acme"[..]));
    let no_team = SEED_EVENT.replace(r#""teamId": "team-456","#, "");
    let out = process_one(&p, &input(Some(no_team.as_bytes()))).await;
    assert_eq!(out.key.as_deref(), Some(&b"evt-7f3a9c2e"[..]));
}

#[tokio::test]
async fn redelivery_gives_byte_identical_output() {
    let p = processor();
    // Without an id the event id is derived from the record's position: still deterministic.
    let no_id = SEED_EVENT.replace(r#""id": "evt-7f3a9c2e","#, "");
    for doc in [SEED_EVENT.to_owned(), no_id] {
        let rec = input(Some(doc.as_bytes()));
        let a = process_one(&p, &rec).await;
        let b = process_one(&processor(), &rec.clone()).await;
        assert_eq!(a.payload, b.payload);
        assert_eq!(a.key, b.key);
        assert_eq!(a.headers, b.headers);
        assert_eq!(a.topic, b.topic);
    }
    let no_id = SEED_EVENT.replace(r#""id": "evt-7f3a9c2e","#, "");
    let e = decode(&process_one(&p, &input(Some(no_id.as_bytes()))).await);
    assert_eq!(e.event_id, derived_event_id("t.raw", 2, 41));
    assert_ne!(e.event_id, derived_event_id("t.raw", 2, 42));
    assert_eq!(e.event_id.len(), 36, "a UUID");
}

/// Feeds `payload`, expects a dead letter with `code` and untouched bytes; returns the message.
async fn expect_rejected(payload: Option<&[u8]>, code: &str) -> String {
    let rec = input(payload);
    let out = process_one(&processor(), &rec).await;
    assert_eq!(out.topic, "t.rejected", "{code}");
    assert_eq!(out.payload.as_deref(), payload, "original bytes, untouched");
    assert_eq!(
        out.key.as_deref(),
        Some(&b"producer-key"[..]),
        "original key"
    );
    assert_eq!(header(&out, HEADER_REASON_CODE), Some(code));
    assert_eq!(header(&out, HEADER_STAGE), Some("ingest"));
    assert_eq!(header(&out, HEADER_SOURCE_TOPIC), Some("t.raw"));
    assert_eq!(header(&out, HEADER_SOURCE_PARTITION), Some("2"));
    assert_eq!(header(&out, HEADER_SOURCE_OFFSET), Some("41"));
    assert_eq!(
        header(&out, "x-other"),
        Some("dropped"),
        "input headers kept"
    );
    header(&out, HEADER_REASON_MESSAGE)
        .expect("message header")
        .to_owned()
}

#[tokio::test]
async fn each_rejection_code_gives_one_dead_letter() {
    expect_rejected(None, "empty_payload").await;
    expect_rejected(Some(b""), "empty_payload").await;
    let m = expect_rejected(Some(b"hello"), "unknown_format").await;
    assert!(m.contains("68656c6c6f"), "{m}");
    expect_rejected(Some(b"[1,2]"), "unknown_format").await;
    expect_rejected(Some(b"{\"event\": {"), "invalid_json").await;
    expect_rejected(Some(&[b'{', 0xff, 0xfe, b'}']), "not_utf8").await;
    let m = expect_rejected(
        Some(
            SEED_EVENT
                .replace(r#""eventType""#, r#""eventTypo""#)
                .as_bytes(),
        ),
        "missing_field",
    )
    .await;
    assert!(m.starts_with("event.eventType: "), "{m}");
    let m = expect_rejected(
        Some(
            SEED_EVENT
                .replace("2024-01-15T10:30:00Z", "1999-12-31T23:59:59Z")
                .as_bytes(),
        ),
        "timestamp_out_of_range",
    )
    .await;
    assert!(m.starts_with("event.timestamp: "), "{m}");
    let m = expect_rejected(
        Some(
            SEED_EVENT
                .replace("2024-01-15T10:30:00Z", "2024-01-17T10:30:00Z")
                .as_bytes(),
        ),
        "timestamp_out_of_range",
    )
    .await;
    assert!(m.contains("after the receive time"), "{m}");
    expect_rejected(
        Some(
            SEED_EVENT
                .replace(r#""teamId": "team-456""#, r#""teamId": 456"#)
                .as_bytes(),
        ),
        "wrong_type",
    )
    .await;
    let big = format!("{{\"pad\": \"{}\"}}", "x".repeat(1024 * 1024));
    expect_rejected(Some(big.as_bytes()), "too_large").await;

    // Avro: unknown fingerprint, unknown schema id, corrupt datum.
    let mut so = framing::SINGLE_OBJECT_MAGIC.to_vec();
    so.extend_from_slice(&42u64.to_le_bytes());
    so.push(0);
    expect_rejected(Some(&so), "unknown_fingerprint").await;
    expect_rejected(Some(&[0, 0, 0, 0, 99, 1, 2]), "unknown_schema_id").await;
    let good = framing::encode_single_object_event(&avro_event()).expect("encode");
    expect_rejected(Some(&good[..good.len() / 2]), "decode").await;
}

#[tokio::test]
async fn avro_input_gets_the_same_semantic_checks() {
    let encode = |e: &AuditEvent| framing::encode_single_object_event(e).expect("encode");
    let mut e = avro_event();
    e.actor.id = String::new();
    let m = expect_rejected(Some(&encode(&e)), "invalid_value").await;
    assert!(m.starts_with("event.actor.id: "), "{m}");
    let mut e = avro_event();
    e.event_time_us = 900_000_000_000_000; // 1998
    let m = expect_rejected(Some(&encode(&e)), "timestamp_out_of_range").await;
    assert!(m.starts_with("event.timestamp: "), "{m}");
    let mut e = avro_event();
    e.event_id = "evt\u{7}".into();
    let m = expect_rejected(Some(&encode(&e)), "invalid_value").await;
    assert!(m.starts_with("event.id: "), "{m}");
    let mut e = avro_event();
    e.reason = Some("r".repeat(64 * 1024 + 1));
    let m = expect_rejected(Some(&encode(&e)), "too_large").await;
    assert!(m.starts_with("event.reason: "), "{m}");
    let mut e = avro_event();
    e.attributes.push(KeyValue {
        key: "env".into(),
        value: "dev".into(),
    });
    let m = expect_rejected(Some(&encode(&e)), "invalid_value").await;
    assert!(m.contains("duplicate key"), "{m}");
    let mut e = avro_event();
    e.data.payload_json = Some("{not json".into());
    let m = expect_rejected(Some(&encode(&e)), "invalid_value").await;
    assert!(m.starts_with("event.data: "), "{m}");
    let mut e = avro_event();
    if let Some(ai) = e.ai.as_mut() {
        ai.confidence = Some(1.5);
    }
    expect_rejected(Some(&encode(&e)), "invalid_value").await;
}

/// The sample event, as a producer would send it in Avro.
fn avro_event() -> AuditEvent {
    let mut e = sample_event();
    e.ingress.format = "whatever the producer wrote".into();
    e.receive_time_us = 1; // pipeline-owned: overwritten
    e.tenant.enrichment.enriched = true; // pipeline-owned: reset
    e
}

fn assert_adopted(e: &AuditEvent, format: &str) {
    let sample = sample_event();
    assert_eq!(e.event_id, sample.event_id);
    assert_eq!(e.receive_time_us, RECORD_TS_MS * 1000);
    assert_eq!(e.ingress.format, format);
    assert_eq!(e.ingress.topic.as_deref(), Some("t.raw"));
    assert_eq!(e.ingress.offset, Some(41));
    assert!(!e.tenant.enrichment.enriched);
    assert_eq!(e.actor, sample.actor);
    assert_eq!(e.data, sample.data);
}

#[tokio::test]
async fn avro_single_object_input_is_accepted() {
    let mut e = avro_event();
    // Unsorted attributes are sorted; an empty event id means "none given" → derived.
    e.attributes.insert(
        0,
        KeyValue {
            key: "zone".into(),
            value: "eu".into(),
        },
    );
    let bytes = framing::encode_single_object_event(&e).expect("encode");
    let out = process_one(&processor(), &input(Some(&bytes))).await;
    assert_eq!(out.topic, "t.validated");
    assert_eq!(out.key.as_deref(), Some(&b"team-456"[..]));
    let got = decode(&out);
    assert_adopted(&got, "avro-single-object");
    let keys: Vec<&str> = got.attributes.iter().map(|kv| kv.key.as_str()).collect();
    assert_eq!(keys, ["env", "zone"]);

    let mut e = avro_event();
    e.event_id = String::new();
    let bytes = framing::encode_single_object_event(&e).expect("encode");
    let got = decode(&process_one(&processor(), &input(Some(&bytes))).await);
    assert_eq!(got.event_id, derived_event_id("t.raw", 2, 41));
}

#[tokio::test]
async fn avro_confluent_input_with_the_catalog_resolver_is_accepted() {
    let resolver = CatalogIdResolver::new().expect("resolver");
    let id = resolver
        .id_of(schemas::avro::RecordKind::AuditEvent)
        .expect("AuditEvent has an id");
    let bytes = framing::encode_confluent_event(&avro_event(), id).expect("encode");
    let out = process_one(&processor(), &input(Some(&bytes))).await;
    assert_eq!(out.topic, "t.validated");
    assert_adopted(&decode(&out), "avro-confluent");
}

#[tokio::test]
async fn a_record_without_timestamp_still_validates() {
    let mut rec = input(Some(SEED_EVENT.as_bytes()));
    rec.timestamp_ms = None;
    let out = process_one(&processor(), &rec).await;
    assert_eq!(out.topic, "t.validated");
    assert!(decode(&out).receive_time_us > RECORD_TS_MS * 1000);
}
