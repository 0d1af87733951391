//! Avro framing round-trips, canonical determinism and schema evolution.

use std::sync::Arc;

use apache_avro::Schema;
use schemas::avro::{self, canonical_bytes, fingerprint_of, RecordKind, CANONICAL_VERSION};
use schemas::framing::{self, CatalogIdResolver, Framing};
use schemas::testing::sample_event;
use schemas::*;

#[test]
fn canonical_bytes_are_stable_across_calls_and_decode() {
    let e = sample_event();
    let a = canonical_bytes(&e).expect("a");
    let b = canonical_bytes(&e).expect("b");
    assert_eq!(a, b);
    let back = avro::decode_event_datum(&a).expect("decode");
    assert_eq!(back, e);
    assert_eq!(canonical_bytes(&back).expect("c"), a);
    assert_eq!(CANONICAL_VERSION, 1);
}

#[test]
fn single_object_header_is_c3_01_and_le_fingerprint() {
    let e = sample_event();
    let bytes = framing::encode_single_object_event(&e).expect("encode");
    assert_eq!(&bytes[..2], &[0xC3, 0x01]);
    let entry = avro::current_schema(RecordKind::AuditEvent).expect("entry");
    assert_eq!(&bytes[2..10], &entry.fingerprint.to_le_bytes());
    // Same bytes as apache-avro's own fingerprint output (little-endian per the spec).
    let fp = entry.schema.fingerprint::<apache_avro::rabin::Rabin>();
    assert_eq!(&bytes[2..10], fp.bytes.as_slice());
    assert_eq!(
        framing::detect(&bytes),
        Framing::SingleObject {
            fingerprint: entry.fingerprint
        }
    );
    assert_eq!(
        &bytes[10..],
        canonical_bytes(&e).expect("canonical").as_slice()
    );
}

#[test]
fn confluent_header_is_big_endian_id() {
    let e = sample_event();
    let bytes = framing::encode_confluent_event(&e, 0x0102_0304).expect("encode");
    assert_eq!(&bytes[..5], &[0, 1, 2, 3, 4]);
    let r = CatalogIdResolver::empty().with(
        0x0102_0304,
        Arc::clone(
            &avro::current_schema(RecordKind::AuditEvent)
                .expect("e")
                .schema,
        ),
    );
    assert_eq!(framing::decode_event(&bytes, Some(&r)).expect("decode"), e);
}

#[test]
fn wrong_kind_and_trailing_bytes_are_reported() {
    let cp = Checkpoint {
        chain_id: "c".into(),
        partition: 0,
        first_seq: 1,
        seq: 2,
        head_hash: vec![1; 32],
        merkle_root: vec![2; 32],
        time_us: 3,
        partition_count: 0,
        key_id: "k".into(),
        signature: vec![4; 64],
        tree_root: Vec::new(),
    };
    let bytes = framing::encode_single_object_checkpoint(&cp).expect("encode");
    let err = framing::decode_event(&bytes, None).expect_err("kind");
    assert!(matches!(err, SchemaError::WrongRecordKind { .. }), "{err}");
    let mut extra = bytes.clone();
    extra.push(0);
    let err = framing::decode_checkpoint(&extra, None).expect_err("trailing");
    assert!(
        matches!(err, SchemaError::TrailingBytes { trailing: 1, .. }),
        "{err}"
    );
    let err = framing::decode_checkpoint(&bytes[..bytes.len() - 3], None).expect_err("short");
    assert!(matches!(err, SchemaError::Decode { .. }), "{err}");
    assert!(err.to_string().contains("fingerprint"), "{err}");
}

/// A "v0" writer: AuditEvent before `reason`, `ai`, `performance` and `attributes` existed, with
/// a smaller `Severity` enum. Data written with it must still decode under the current schema
/// (new fields take their defaults).
fn v0_schema() -> Schema {
    let mut v: serde_json::Value =
        serde_json::from_str(avro::AUDIT_EVENT_V1_AVSC).expect("avsc json");
    let fields = v["fields"].as_array_mut().expect("fields");
    fields.retain(|f| {
        !matches!(
            f["name"].as_str(),
            Some("reason" | "ai" | "performance" | "attributes")
        )
    });
    for f in fields.iter_mut() {
        if f["name"] == "severity" {
            f["type"]["symbols"] = serde_json::json!(["INFO", "ERROR"]);
        }
        if f["name"] == "data" {
            let inner = f["type"]["fields"].as_array_mut().expect("data fields");
            inner.retain(|g| g["name"] != "changes");
        }
    }
    Schema::parse_str(&v.to_string()).expect("v0 schema")
}

#[test]
fn old_writer_schema_still_decodes() {
    let v0 = v0_schema();
    let mut e = sample_event();
    e.severity = Severity::Error;
    // Encode with the v0 writer, via the generic Value path (no Rust type for v0).
    let mut value = apache_avro::to_value(&e).expect("to_value");
    if let apache_avro::types::Value::Record(fields) = &mut value {
        fields
            .retain(|(n, _)| !matches!(n.as_str(), "reason" | "ai" | "performance" | "attributes"));
        for (n, v) in fields.iter_mut() {
            match (n.as_str(), v) {
                ("severity", v) => *v = apache_avro::types::Value::Enum(1, "ERROR".into()),
                ("category", v) => {
                    *v = apache_avro::types::Value::Enum(0, "USER_INTERACTION".into())
                }
                ("outcome", v) => *v = apache_avro::types::Value::Enum(0, "SUCCESS".into()),
                ("data", apache_avro::types::Value::Record(inner)) => {
                    inner.retain(|(n, _)| n != "changes")
                }
                _ => {}
            }
        }
    }
    let value = value.resolve(&v0).expect("resolve to v0");
    let datum = apache_avro::writer::datum::GenericDatumWriter::builder(&v0)
        .build()
        .expect("writer")
        .write_value_to_vec(value)
        .expect("write v0");

    let decoded: AuditEvent =
        avro::decode_datum_with_writer(&datum, &v0, &|| "v0 test schema".to_owned())
            .expect("v0 datum decodes under v1");
    let mut want = e.clone();
    want.reason = None;
    want.ai = None;
    want.performance = None;
    want.attributes = vec![];
    assert_eq!(decoded, want);

    // Through Confluent framing with a registry that returns the v0 schema for id 7.
    let mut framed = vec![0, 0, 0, 0, 7];
    framed.extend_from_slice(&datum);
    let r = CatalogIdResolver::empty().with(7, Arc::new(v0.clone()));
    assert_eq!(
        framing::decode_event(&framed, Some(&r)).expect("confluent v0"),
        want
    );

    // The fingerprint of v0 differs from v1, and an unknown fingerprint is a specific error.
    assert_ne!(
        fingerprint_of(&v0),
        avro::current_schema(RecordKind::AuditEvent)
            .expect("v1")
            .fingerprint
    );
    let mut so = vec![0xC3, 0x01];
    so.extend_from_slice(&fingerprint_of(&v0).to_le_bytes());
    so.extend_from_slice(&datum);
    let err = framing::decode_event(&so, None).expect_err("unknown fp");
    assert!(
        matches!(err, SchemaError::UnknownFingerprint { .. }),
        "{err}"
    );
}
