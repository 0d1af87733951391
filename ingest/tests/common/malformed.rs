//! Malformed inputs shared by the front-door robustness tests (`malformed_doors.rs`: HTTP and
//! OTLP; `malformed_kafka_door.rs`: the Kafka input): a seeded generator, the kinds of
//! malformed input with the reason codes each door must give them, and valid events and spans.

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use prost::Message as _;
use serde_json::{json, Value};

use super::seed_event;

/// Small, so "huge" inputs are cheap to make and send.
pub const MAX_EVENT_BYTES: usize = 16_384;

/// splitmix64: deterministic inputs without a dev-dependency.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    /// `min` plus up to `spread - 1` random bytes.
    pub fn some_bytes(&mut self, min: usize, spread: usize) -> Vec<u8> {
        let n = min + self.below(spread);
        self.bytes(n)
    }
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

/// The kinds of malformed input, with the reason codes each may get (a generic code, or one
/// outside the set, fails the test).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Truncated,
    WrongType,
    MissingField,
    Huge,
    DeeplyNested,
    InvalidUtf8,
    NotAnObject,
    WrongMagic,
    UnknownFingerprint,
    UnknownSchemaId,
    TruncatedAvro,
    ProtobufGarbage,
    Empty,
    Tombstone,
}

impl Kind {
    pub fn kafka_codes(self) -> &'static [&'static str] {
        match self {
            Kind::Truncated => &["invalid_json"],
            Kind::WrongType => &["wrong_type"],
            Kind::MissingField => &["missing_field"],
            Kind::Huge => &["too_large"],
            Kind::DeeplyNested => &["too_deep"],
            Kind::InvalidUtf8 => &["not_utf8"],
            // Valid JSON, not an object: the same code as the HTTP door's.
            Kind::NotAnObject => &["not_an_object"],
            Kind::WrongMagic => &["unknown_format"],
            Kind::UnknownFingerprint => &["unknown_fingerprint"],
            Kind::UnknownSchemaId => &["unknown_schema_id"],
            Kind::TruncatedAvro => &["decode"],
            Kind::ProtobufGarbage => &["unknown_format"],
            Kind::Empty | Kind::Tombstone => &["empty_payload"],
        }
    }
    pub fn http_codes(self) -> &'static [&'static str] {
        match self {
            // A binary line is not JSON, or not UTF-8, whichever the parser meets first.
            Kind::WrongMagic | Kind::ProtobufGarbage | Kind::TruncatedAvro => {
                &["invalid_json", "not_utf8"]
            }
            k => k.kafka_codes(),
        }
    }
}

pub const KAFKA_KINDS: [Kind; 14] = [
    Kind::Truncated,
    Kind::WrongType,
    Kind::MissingField,
    Kind::Huge,
    Kind::DeeplyNested,
    Kind::InvalidUtf8,
    Kind::NotAnObject,
    Kind::WrongMagic,
    Kind::UnknownFingerprint,
    Kind::UnknownSchemaId,
    Kind::TruncatedAvro,
    Kind::ProtobufGarbage,
    Kind::Empty,
    Kind::Tombstone,
];

/// The kinds an NDJSON line can be (no empty lines: the door skips blank lines).
pub const HTTP_KINDS: [Kind; 10] = [
    Kind::Truncated,
    Kind::WrongType,
    Kind::MissingField,
    Kind::Huge,
    Kind::DeeplyNested,
    Kind::InvalidUtf8,
    Kind::NotAnObject,
    Kind::WrongMagic,
    Kind::TruncatedAvro,
    Kind::ProtobufGarbage,
];

pub fn good_event(request_id: &str) -> Value {
    seed_event(json!({ "requestId": request_id }))
}

pub fn any_span_request() -> Vec<u8> {
    span_request(&[good_span(1, 1)]).encode_to_vec()
}

/// One malformed payload of `kind` (`None`: a tombstone). Never contains `\n` or `\r` when
/// `line` (an NDJSON line).
pub fn malformed(kind: Kind, i: usize, rng: &mut Rng, line: bool) -> Option<Vec<u8>> {
    let rid = format!("bad-{i}");
    let valid = good_event(&rid).to_string().into_bytes();
    let binary = |rng: &mut Rng, mut b: Vec<u8>| {
        if line {
            for x in b.iter_mut() {
                if *x == b'\n' || *x == b'\r' {
                    *x = 0xfe;
                }
            }
        }
        // A binary NDJSON line must not be blank (the door skips blank lines).
        if b.is_empty() {
            b.push(rng.next() as u8 | 0x80);
        }
        // Garbage that happens to be a JSON value (a lone digit) would rightly be
        // `not_an_object`, not the binary kind's code.
        if serde_json::from_slice::<Value>(&b).is_ok() {
            b.push(0xff);
        }
        b
    };
    Some(match kind {
        Kind::Truncated => {
            let cut = 1 + rng.below(valid.len() - 1);
            valid[..cut].to_vec()
        }
        Kind::WrongType => {
            let (field, v) = match rng.below(4) {
                0 => ("userId", json!({"nested": true})),
                1 => ("eventType", json!(42)),
                2 => ("timestamp", json!([1, 2])),
                _ => ("action", json!(false)),
            };
            good_event_with(&rid, field, v)
        }
        Kind::MissingField => {
            let mut e = good_event(&rid);
            let field = ["timestamp", "eventType"][rng.below(2)];
            e["event"].as_object_mut().expect("object").remove(field);
            e.to_string().into_bytes()
        }
        Kind::Huge => {
            let pad = "x".repeat(MAX_EVENT_BYTES + rng.below(1024));
            good_event_with(&rid, "data", json!({ "pad": pad }))
        }
        Kind::DeeplyNested => {
            let depth = 40 + rng.below(400);
            let nested = format!("{}1{}", "[".repeat(depth), "]".repeat(depth));
            let text = good_event_with(&rid, "data", json!("@"));
            String::from_utf8(text)
                .expect("utf-8")
                .replacen("\"@\"", &nested, 1)
                .into_bytes()
        }
        Kind::InvalidUtf8 => {
            let text = good_event_with(&rid, "userId", json!("user-@"));
            let at = text
                .windows(6)
                .position(|w| w == b"user-@")
                .expect("marker")
                + 5;
            let mut b = text;
            b[at] = 0x80 | (rng.next() as u8 & 0x7f);
            b
        }
        Kind::NotAnObject => match rng.below(3) {
            0 => b"[1, 2, 3]".to_vec(),
            1 => format!("\"{rid}\"").into_bytes(),
            _ => b"12345".to_vec(),
        },
        Kind::WrongMagic => {
            // Not '{', whitespace, a BOM, 0x00 (Confluent) or C3 01 (single object).
            let mut b = rng.some_bytes(1, 64);
            b[0] = match b[0] {
                b'{' | b' ' | b'\t' | b'\r' | b'\n' | 0x00 | 0xEF | 0xC3 => 0xC4,
                x => x,
            };
            if rng.below(4) == 0 {
                // A near miss of the single-object magic.
                b.splice(0..1, [0xC3, 0x02]);
            }
            binary(rng, b)
        }
        Kind::UnknownFingerprint => {
            let mut b = vec![0xC3, 0x01];
            b.extend(rng.some_bytes(8, 40));
            b
        }
        Kind::UnknownSchemaId => {
            let mut b = vec![0x00];
            b.extend((1000 + rng.below(1 << 30) as u32).to_be_bytes());
            b.extend(rng.some_bytes(0, 40));
            b
        }
        Kind::TruncatedAvro => {
            let full = if rng.below(2) == 0 {
                schemas::framing::encode_single_object_event(&schemas::testing::sample_event())
            } else {
                schemas::framing::encode_confluent_event(&schemas::testing::sample_event(), 1)
            }
            .expect("encode");
            let header = 10;
            let cut = header + rng.below(full.len() - header);
            binary(rng, full[..cut].to_vec())
        }
        Kind::ProtobufGarbage => {
            let b = if rng.below(2) == 0 {
                any_span_request()
            } else {
                let mut b = rng.some_bytes(2, 64);
                b[0] = 0x0a; // field 1, length-delimited: how an OTLP request starts
                             // 0x0a is JSON whitespace: what follows must not look like a JSON object.
                if matches!(b[1], b'{' | b' ' | b'\t' | b'\r' | b'\n') {
                    b[1] = 0x80;
                }
                b
            };
            binary(rng, b)
        }
        Kind::Empty => Vec::new(),
        Kind::Tombstone => return None,
    })
}

pub fn good_event_with(rid: &str, field: &str, v: Value) -> Vec<u8> {
    let mut e = good_event(rid);
    e["event"][field] = v;
    e.to_string().into_bytes()
}

pub fn kv(key: &str, v: &str) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(v.into())),
        }),
        ..Default::default()
    }
}

pub fn good_span(n: u64, salt: u64) -> Span {
    let start = 1_705_314_600_000_000_000 + n * 1000;
    let mut trace_id = vec![0u8; 16];
    trace_id[..8].copy_from_slice(&(n + 1).to_be_bytes());
    trace_id[8..].copy_from_slice(&salt.to_be_bytes());
    Span {
        trace_id,
        span_id: (n + 1).to_be_bytes().to_vec(),
        name: format!("op-{n}"),
        kind: 2,
        start_time_unix_nano: start,
        end_time_unix_nano: start + 1000,
        ..Default::default()
    }
}

pub const OTLP_HTTP_SERVICE: &str = "svc-malformed";

pub fn span_request(spans: &[Span]) -> ExportTraceServiceRequest {
    service_request(OTLP_HTTP_SERVICE, spans)
}

pub fn service_request(service: &str, spans: &[Span]) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![kv("service.name", service)],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                spans: spans.to_vec(),
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}
