//! The Kafka front door without a broker: processor in, output records out.

use std::sync::Arc;

use schemas::framing::{self, CatalogIdResolver};
use schemas::json::labels::{self, LabelKind};
use schemas::json::JsonLimits;
use schemas::testing::sample_event;
use schemas::{AuditEvent, EventCategory, IngressChannel, KeyValue, Severity};
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

fn strict_processor() -> IngestProcessor {
    processor().with_strict_labels(true)
}

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
    assert_eq!(
        e.event_id,
        derived_event_id("t.raw", 2, 41, Some(RECORD_TS_MS))
    );
    assert_ne!(
        e.event_id,
        derived_event_id("t.raw", 2, 42, Some(RECORD_TS_MS))
    );
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
    // Valid JSON that is not an object: the HTTP door's code, not `unknown_format`.
    for doc in [
        &b"[1,2]"[..],
        b"\"x\"",
        b"42",
        b"null",
        b" \n-1.5e3",
        b"true",
    ] {
        expect_rejected(Some(doc), "not_an_object").await;
    }
    // Binary that only starts like a JSON value (a digit, `[`, `n`) is still no format we know.
    for doc in [
        &b"7\xff\x00garbage"[..],
        b"[\x01\x02",
        b"nope",
        b"\xef\xbb\xbf",
    ] {
        expect_rejected(Some(doc), "unknown_format").await;
    }
    // Too deep has its own code, whether the object is deep or an array at the top is.
    let deep = format!("{}1{}", "[".repeat(40), "]".repeat(40));
    expect_rejected(Some(deep.as_bytes()), "too_deep").await;
    let deep_event =
        SEED_EVENT.replace(r#""confidence": 0.95"#, &format!(r#""confidence": {deep}"#));
    let m = expect_rejected(Some(deep_event.as_bytes()), "too_deep").await;
    assert!(m.starts_with("event.data.confidence"), "{m}");
    let deeper = format!("{}{}", "[".repeat(300), "]".repeat(300));
    expect_rejected(Some(deeper.as_bytes()), "too_deep").await;
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
    assert_eq!(
        got.event_id,
        derived_event_id("t.raw", 2, 41, Some(RECORD_TS_MS))
    );
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

// ---- labels outside their vocabulary -----------------------------------------------------------

fn with_category(category: &str) -> String {
    SEED_EVENT.replace(
        r#""category": "user_interaction""#,
        &format!(r#""category": {}"#, serde_json_string(category)),
    )
}

/// A JSON string literal for `s` (no serde_json dependency in this crate's library tests).
fn serde_json_string(s: &str) -> String {
    let mut out = String::from('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[tokio::test]
async fn unknown_labels_are_validated_with_their_originals() {
    for cat in ["ai_processing", "policy_decision", "approval", "deployment"] {
        let doc = with_category(cat).replace(
            r#""source": "#,
            r#""severity": "sev-9", "actor": {"type": "robot"}, "source": "#,
        );
        let out = process_one(&processor(), &input(Some(doc.as_bytes()))).await;
        assert_eq!(
            out.topic,
            "t.validated",
            "{cat}: {:?}",
            header(&out, HEADER_REASON_MESSAGE)
        );
        let e = decode(&out);
        assert_eq!(e.category, EventCategory::Other);
        assert_eq!(e.severity, Severity::Info);
        assert_eq!(labels::producer_text(&e, LabelKind::Category), cat);
        assert_eq!(labels::producer_text(&e, LabelKind::Severity), "sev-9");
        assert_eq!(labels::producer_text(&e, LabelKind::ActorType), "robot");
    }
}

#[tokio::test]
async fn strict_labels_dead_letter_unknown_labels() {
    for cat in ["ai_processing", "deployment"] {
        let doc = with_category(cat);
        let rec = input(Some(doc.as_bytes()));
        let out = process_one(&strict_processor(), &rec).await;
        assert_eq!(out.topic, "t.rejected");
        assert_eq!(out.payload.as_deref(), Some(doc.as_bytes()), "untouched");
        assert_eq!(header(&out, HEADER_REASON_CODE), Some("invalid_value"));
        let m = header(&out, HEADER_REASON_MESSAGE).expect("message");
        assert!(m.starts_with("event.category: "), "{m}");
    }
    // Known labels and synonyms pass strict mode.
    let doc = SEED_EVENT.replace(r#""source": "#, r#""severity": "warn", "source": "#);
    let out = process_one(&strict_processor(), &input(Some(doc.as_bytes()))).await;
    assert_eq!(out.topic, "t.validated");
}

#[tokio::test]
async fn avro_reserved_attributes_are_renamed_unless_the_mapping_would_write_them() {
    let orig = |v: &str| KeyValue {
        key: "audit.original.category".into(),
        value: v.into(),
    };
    // Consistent with the event (OTHER, and the text maps to OTHER): what ingest itself writes.
    let mut e = avro_event();
    e.category = EventCategory::Other;
    e.attributes.push(orig("ai_processing"));
    let bytes = framing::encode_single_object_event(&e).expect("encode");
    let got = decode(&process_one(&processor(), &input(Some(&bytes))).await);
    assert_eq!(
        labels::original(&got, LabelKind::Category),
        Some("ai_processing")
    );
    // Strict mode: that original says the label was unknown, so it is rejected.
    let m = expect_rejected_by(&strict_processor(), &bytes, "invalid_value").await;
    assert!(m.starts_with("event.category: "), "{m}");

    // Inconsistent (the event says GOVERNANCE): the producer's attribute, renamed.
    let mut e = avro_event();
    e.category = EventCategory::Governance;
    e.attributes.push(orig("ai_processing"));
    let bytes = framing::encode_single_object_event(&e).expect("encode");
    let got = decode(&process_one(&processor(), &input(Some(&bytes))).await);
    assert_eq!(labels::original(&got, LabelKind::Category), None);
    let keys: Vec<&str> = got.attributes.iter().map(|kv| kv.key.as_str()).collect();
    assert_eq!(keys, ["env", "producer.audit.original.category"]);

    // An enum name is never an original.
    let mut e = avro_event();
    e.category = EventCategory::Governance;
    e.attributes.push(orig("governance"));
    let bytes = framing::encode_single_object_event(&e).expect("encode");
    let got = decode(&process_one(&processor(), &input(Some(&bytes))).await);
    assert_eq!(labels::original(&got, LabelKind::Category), None);
}

/// Ingest applied to its own output gives the same event: a validated event replayed into the
/// raw topic keeps its originals (they are what the mapping writes), nothing is renamed.
#[tokio::test]
async fn ingesting_a_validated_event_again_changes_nothing() {
    let doc = with_category("policy_decision")
        .replace(r#""source": "#, r#""outcome": "partial", "source": "#);
    let rec = input(Some(doc.as_bytes()));
    let first = process_one(&processor(), &rec).await;
    let mut again = rec.clone();
    again.payload = first.payload.clone();
    let second = process_one(&processor(), &again).await;
    assert_eq!(second.topic, "t.validated");
    let (a, mut b) = (decode(&first), decode(&second));
    assert_eq!(b.ingress.format, "avro-single-object");
    b.ingress.format = a.ingress.format.clone();
    assert_eq!(a, b);
}

async fn expect_rejected_by(p: &IngestProcessor, payload: &[u8], code: &str) -> String {
    let out = process_one(p, &input(Some(payload))).await;
    assert_eq!(out.topic, "t.rejected");
    assert_eq!(header(&out, HEADER_REASON_CODE), Some(code));
    header(&out, HEADER_REASON_MESSAGE)
        .expect("message")
        .to_owned()
}

// ---- derived event ids -------------------------------------------------------------------------

const VECTOR_WITH_TS: &str = "fa7322a0-a098-5719-a12d-f1dffdd5383a";
const VECTOR_OFFSET_ONLY: &str = "95441655-6931-5341-a358-6e0e25e438b9";

#[test]
fn derived_ids_include_the_record_timestamp() {
    let ts = Some(RECORD_TS_MS);
    // A redelivery (same position, same timestamp) keeps its id ...
    assert_eq!(
        derived_event_id("t.raw", 2, 41, ts),
        derived_event_id("t.raw", 2, 41, ts)
    );
    // ... a recreated topic's record at the same offset (another timestamp) does not get it.
    assert_ne!(
        derived_event_id("t.raw", 2, 41, ts),
        derived_event_id("t.raw", 2, 41, Some(RECORD_TS_MS + 1))
    );
    // Fixed vectors: the chainer recomputes derived ids (schemas::identity) to recognise them,
    // so the derivation must never drift. UUIDv5 over "t.raw/2/41/1705314601000" and
    // "t.raw/2/41" in DERIVED_ID_NAMESPACE.
    assert_eq!(derived_event_id("t.raw", 2, 41, ts), VECTOR_WITH_TS);
    assert_eq!(derived_event_id("t.raw", 2, 41, None), VECTOR_OFFSET_ONLY);
    // No timestamp (None, or librdkafka's -1): the offset-only form, the same for both.
    let legacy = VECTOR_OFFSET_ONLY;
    assert_eq!(derived_event_id("t.raw", 2, 41, None), legacy);
    assert_eq!(derived_event_id("t.raw", 2, 41, Some(-1)), legacy);
    assert_ne!(derived_event_id("t.raw", 2, 41, ts), legacy);
}

#[tokio::test]
async fn a_record_without_timestamp_gets_the_offset_only_id() {
    let no_id = SEED_EVENT.replace(r#""id": "evt-7f3a9c2e","#, "");
    let mut rec = input(Some(no_id.as_bytes()));
    rec.timestamp_ms = None;
    let a = decode(&process_one(&processor(), &rec).await);
    assert_eq!(a.event_id, derived_event_id("t.raw", 2, 41, None));
    // The receive time comes from the wall clock here, the id does not: a redelivery keeps it.
    let b = decode(&process_one(&processor(), &rec).await);
    assert_eq!(a.event_id, b.event_id);
}
