//! Malformed input through every front door against the real broker (127.0.0.1:9092; FAILS
//! when it is absent): one ingest `run` with the Kafka input, the HTTP door and the OTLP
//! receiver (HTTP and gRPC), fed seeded malformed inputs (truncated, wrong types, huge, deeply
//! nested, invalid UTF-8, wrong magic bytes, unknown schema ids, protobuf garbage, …) mixed
//! with a few hundred valid events: ≥10,000 per door, except the Kafka door (see `KAFKA_BAD`).
//! Ingest never stops; every bad Kafka record is dead-lettered exactly once with the reason code
//! its kind calls for; every bad HTTP item and OTLP span/request is refused with a precise code
//! (whole OTLP requests: the status and the `google.rpc.ErrorInfo` reason); every good event
//! lands exactly once; the counts add up.
//!
//! It loads the shared local broker for about a minute, so it runs alone:
//! `.config/nextest.toml` gives it every test thread (it starved the crash tests beside it).

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use futures::StreamExt;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use prost::Message as _;
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use schemas::{AuditEvent, IngressChannel};
use serde_json::{json, Value};
use tonic_types::{RpcStatusExt, StatusExt};
use worker_runtime::kafka::dlq::{HEADER_REASON_CODE, HEADER_STAGE};
use worker_runtime::kafka::tail::{scan, ScanStart};
use worker_runtime::kafka::KafkaArgs;

const TOKEN: &str = "tok-malformed-5e1a";
const BAD_PER_DOOR: usize = 10_000;
/// The Kafka door's malformed records: far fewer than the other doors', because the local
/// broker (tansu on SQLite) is the bottleneck, not ingest. 10,000 raw records plus their dead
/// letters took over 5 minutes (issue 8 asks for 10,000); with its database at ~900 MB a fetch
/// takes 7-12 s, and at 2,000 ingest's consumer made no progress at all in 5 minutes. At 200
/// the whole test ran in 43 s, at 500 in 70 s, at 1,000 in 83 s (2 cores shared with builds).
/// `MALFORMED_KAFKA_BAD=10000` runs the full count against a healthy broker.
const KAFKA_BAD: usize = 300;

fn kafka_bad_count() -> usize {
    std::env::var("MALFORMED_KAFKA_BAD")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(KAFKA_BAD)
}
const GOOD_PER_DOOR: usize = 300;
/// Bad spans through OTLP/gRPC (requests of five bad spans and one good, as for OTLP/HTTP).
const GRPC_BAD_SPANS: usize = 10_000;
/// Small, so "huge" inputs are cheap to make and send.
const MAX_EVENT_BYTES: usize = 16_384;
const OTLP_MAX_REQUEST_BYTES: usize = 65_536;
/// Small enough that an oversize body, refused from its Content-Length before it is read, fits
/// in the socket buffers (a larger one breaks the client's write before it sees the 413).
const HTTP_MAX_BODY: usize = 400 * 1024;

/// splitmix64: deterministic inputs without a dev-dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    /// `min` plus up to `spread - 1` random bytes.
    fn some_bytes(&mut self, min: usize, spread: usize) -> Vec<u8> {
        let n = min + self.below(spread);
        self.bytes(n)
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

/// The kinds of malformed input, with the reason codes each may get (a generic code, or one
/// outside the set, fails the test).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Kind {
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
    fn kafka_codes(self) -> &'static [&'static str] {
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
    fn http_codes(self) -> &'static [&'static str] {
        match self {
            // A binary line is not JSON, or not UTF-8, whichever the parser meets first.
            Kind::WrongMagic | Kind::ProtobufGarbage | Kind::TruncatedAvro => {
                &["invalid_json", "not_utf8"]
            }
            k => k.kafka_codes(),
        }
    }
}

const KAFKA_KINDS: [Kind; 14] = [
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
const HTTP_KINDS: [Kind; 10] = [
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

fn good_event(request_id: &str) -> Value {
    seed_event(json!({ "requestId": request_id }))
}

fn any_span_request() -> Vec<u8> {
    span_request(&[good_span(1, 1)]).encode_to_vec()
}

/// One malformed payload of `kind` (`None`: a tombstone). Never contains `\n` or `\r` when
/// `line` (an NDJSON line).
fn malformed(kind: Kind, i: usize, rng: &mut Rng, line: bool) -> Option<Vec<u8>> {
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

fn good_event_with(rid: &str, field: &str, v: Value) -> Vec<u8> {
    let mut e = good_event(rid);
    e["event"][field] = v;
    e.to_string().into_bytes()
}

/// Every record of `topic`: key, reason code and stage headers.
async fn read_dead_letters(
    kafka: &KafkaArgs,
    topic: &str,
) -> Vec<(String, Option<String>, Option<String>)> {
    let all = Arc::new(Mutex::new(Vec::new()));
    for p in 0..PARTITIONS {
        let sink = Arc::clone(&all);
        let _ = scan(
            kafka,
            topic,
            p,
            ScanStart::Offset(0),
            Duration::from_secs(30),
            move |m: &BorrowedMessage<'_>| {
                let header = |name: &str| {
                    m.headers().and_then(|h| {
                        h.iter()
                            .find(|x| x.key == name)
                            .and_then(|x| x.value)
                            .map(|v| String::from_utf8_lossy(v).into_owned())
                    })
                };
                let key = String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned();
                sink.lock().expect("lock").push((
                    key,
                    header(HEADER_REASON_CODE),
                    header(HEADER_STAGE),
                ));
            },
        )
        .await
        .unwrap_or_else(|e| panic!("scanning {topic}/{p}: {e}"));
    }
    let mut all = all.lock().expect("lock");
    std::mem::take(&mut *all)
}

/// Kafka door: produces the inputs (pipelined); returns kind per bad key and the good keys.
async fn feed_kafka(kafka: &KafkaArgs, rng: &mut Rng) -> (HashMap<String, Kind>, usize) {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", BROKERS)
        .set("linger.ms", "5")
        .create()
        .expect("producer");
    let topic = kafka.topics().raw;
    let mut bad = HashMap::new();
    let mut inputs: Vec<(String, Option<Vec<u8>>)> = Vec::new();
    let total = kafka_bad_count() + GOOD_PER_DOOR;
    let mut good = 0;
    for i in 0..total {
        if good < GOOD_PER_DOOR && i % (total / GOOD_PER_DOOR) == 0 {
            let rid = format!("kafka-good-{good}");
            inputs.push((rid.clone(), Some(good_event(&rid).to_string().into_bytes())));
            good += 1;
        } else {
            let kind = KAFKA_KINDS[rng.below(KAFKA_KINDS.len())];
            let key = format!("kafka-bad-{i}");
            inputs.push((key.clone(), malformed(kind, i, rng, false)));
            bad.insert(key, kind);
        }
    }
    // In chunks, each delivered before the next is queued: 10,000 records queued at once
    // stalled the local broker (tansu) with no delivery report for minutes.
    for chunk in inputs.chunks(1000) {
        let sends = futures::stream::iter(chunk.iter().map(|(key, payload)| {
            let mut rec: FutureRecord<'_, String, Vec<u8>> = FutureRecord::to(&topic).key(key);
            if let Some(p) = payload {
                rec = rec.payload(p);
            }
            producer.send(rec, Duration::from_secs(60))
        }))
        .buffer_unordered(1000)
        .collect::<Vec<_>>()
        .await;
        for s in sends {
            s.unwrap_or_else(|(e, _)| panic!("producing to the raw topic: {e}"));
        }
    }
    (bad, good)
}

struct HttpTally {
    bad_items: usize,
    bad_requests: usize,
    good: usize,
    codes: BTreeMap<String, usize>,
}

/// HTTP door: NDJSON batches of bad lines with good ones between, and whole-request refusals.
async fn feed_http(base: &str, rng: &mut Rng) -> HttpTally {
    let client = reqwest::Client::new();
    let url = format!("{base}/v1/events");
    let mut t = HttpTally {
        bad_items: 0,
        bad_requests: 0,
        good: 0,
        codes: BTreeMap::new(),
    };
    let per_batch = 100;
    let goods_per_batch = GOOD_PER_DOOR / (BAD_PER_DOOR / per_batch);
    let stride = (per_batch + goods_per_batch) / goods_per_batch;
    let mut i = 0;
    let mut goods_made = 0;
    while t.bad_items < BAD_PER_DOOR {
        let mut body = Vec::new();
        let mut expect: Vec<Option<Kind>> = Vec::new();
        for n in 0..per_batch + goods_per_batch {
            if n % stride == 0 {
                let rid = format!("http-good-{goods_made}");
                goods_made += 1;
                body.extend(good_event(&rid).to_string().into_bytes());
                expect.push(None);
            } else {
                let kind = HTTP_KINDS[rng.below(HTTP_KINDS.len())];
                body.extend(malformed(kind, i, rng, true).expect("a line"));
                expect.push(Some(kind));
            }
            body.push(b'\n');
            i += 1;
        }
        let resp = client
            .post(&url)
            .bearer_auth(TOKEN)
            .header("content-type", "application/x-ndjson")
            .body(body)
            .send()
            .await
            .expect("send");
        let status = resp.status().as_u16();
        let answer: Value = resp.json().await.expect("JSON answer");
        assert!(status == 202 || status == 422, "{status}: {answer}");
        let accepted: HashSet<u64> = answer["accepted"]
            .as_array()
            .expect("accepted[]")
            .iter()
            .map(|a| a["index"].as_u64().expect("index"))
            .collect();
        let errors: HashMap<u64, String> = answer["errors"]
            .as_array()
            .expect("errors[]")
            .iter()
            .map(|e| {
                (
                    e["index"].as_u64().expect("index"),
                    e["code"].as_str().expect("code").to_owned(),
                )
            })
            .collect();
        assert_eq!(accepted.len() + errors.len(), expect.len(), "{answer}");
        for (idx, kind) in expect.iter().enumerate() {
            let idx = idx as u64;
            match kind {
                None => {
                    assert!(
                        accepted.contains(&idx),
                        "good item {idx} refused: {:?}",
                        errors.get(&idx)
                    );
                    t.good += 1;
                }
                Some(kind) => {
                    let code = errors
                        .get(&idx)
                        .unwrap_or_else(|| panic!("bad item {idx} ({kind:?}) accepted"));
                    assert!(
                        kind.http_codes().contains(&code.as_str()),
                        "{kind:?} got {code}"
                    );
                    *t.codes.entry(format!("{kind:?}:{code}")).or_default() += 1;
                    t.bad_items += 1;
                }
            }
        }
    }
    // Whole-request refusals, each with its own code.
    for n in 0..100 {
        let (req, want_status, want_code) = match n % 5 {
            0 => (
                client
                    .post(&url)
                    .bearer_auth(TOKEN)
                    .header("content-type", "application/x-protobuf")
                    .body(any_span_request()),
                415,
                "unsupported_media_type",
            ),
            1 => (
                client
                    .post(&url)
                    .bearer_auth(TOKEN)
                    .header("content-type", "application/json")
                    .body(b"[{\"event\": {\"eventType\": ".to_vec()),
                400,
                "invalid_body",
            ),
            2 => (
                client
                    .post(&url)
                    .bearer_auth(TOKEN)
                    .header("content-type", "application/json")
                    .body(vec![b' '; HTTP_MAX_BODY + 1]),
                413,
                "body_too_large",
            ),
            3 => (
                client
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(good_event("never").to_string()),
                401,
                "unauthorized",
            ),
            _ => (
                client
                    .post(&url)
                    .bearer_auth(TOKEN)
                    .header("content-type", "application/json")
                    .body(
                        rng.bytes(16)
                            .into_iter()
                            .map(|b| b | 0x80)
                            .collect::<Vec<u8>>(),
                    ),
                400,
                "invalid_body",
            ),
        };
        let resp = match req.send().await {
            Ok(r) => r,
            // The door answers from the headers alone (413 for a declared length over the
            // limit, 401, 415) and closes the connection without reading the body; a client
            // still writing it may see the connection end instead of the answer (a known limit,
            // noted on issue 8). Any other transport error is a failure.
            Err(e)
                if matches!(
                    want_code,
                    "body_too_large" | "unauthorized" | "unsupported_media_type"
                ) && e.is_request() =>
            {
                *t.codes
                    .entry(format!(
                        "request:{want_code} (connection closed while sending)"
                    ))
                    .or_default() += 1;
                t.bad_requests += 1;
                continue;
            }
            Err(e) => panic!("send: {e:?}"),
        };
        let status = resp.status().as_u16();
        let answer: Value = resp.json().await.expect("JSON answer");
        assert_eq!(status, want_status, "{answer}");
        let code = answer["error"]["code"].as_str().unwrap_or_default();
        assert_eq!(code, want_code, "{answer}");
        *t.codes.entry(format!("request:{code}")).or_default() += 1;
        t.bad_requests += 1;
    }
    t
}

fn kv(key: &str, v: &str) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(v.into())),
        }),
        ..Default::default()
    }
}

fn good_span(n: u64, salt: u64) -> Span {
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

const OTLP_HTTP_SERVICE: &str = "svc-malformed";
const OTLP_GRPC_SERVICE: &str = "svc-malformed-grpc";
/// gRPC spans are numbered from here: span ids (the landed events' keys) differ from OTLP/HTTP's.
const GRPC_SPAN_BASE: u64 = 1 << 32;

fn span_request(spans: &[Span]) -> ExportTraceServiceRequest {
    service_request(OTLP_HTTP_SERVICE, spans)
}

fn service_request(service: &str, spans: &[Span]) -> ExportTraceServiceRequest {
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

/// A span broken one way, with the `code: path` its rejection must name.
fn bad_span(n: u64, rng: &mut Rng) -> (Span, &'static str) {
    let mut s = good_span(n, 7);
    let why = match rng.below(7) {
        0 => {
            s.trace_id.clear();
            "invalid_value: span.trace_id"
        }
        1 => {
            s.trace_id.truncate(1 + rng.below(15));
            "invalid_value: span.trace_id"
        }
        2 => {
            s.trace_id = vec![0; 16];
            "invalid_value: span.trace_id"
        }
        3 => {
            s.span_id = rng.some_bytes(1, 20);
            if s.span_id.len() == 8 {
                s.span_id.push(1);
            }
            "invalid_value: span.span_id"
        }
        4 => {
            s.parent_span_id = vec![1; 1 + rng.below(7)];
            "invalid_value: span.parent_span_id"
        }
        5 => {
            s.name.clear();
            "missing_field: span.name"
        }
        _ => {
            s.end_time_unix_nano = s.start_time_unix_nano - 1 - rng.below(1000) as u64;
            "invalid_value: span.end_time_unix_nano"
        }
    };
    (s, why)
}

/// An OTLP/HTTP request: body, content type, content encoding, and the `spans[i]: code: path`
/// rejections its answer must name (none: the whole request must be refused).
type OtlpJob = (Vec<u8>, &'static str, Option<&'static str>, Vec<String>);

struct OtlpTally {
    bad_spans: usize,
    bad_requests: usize,
    good: usize,
    codes: BTreeMap<String, usize>,
}

/// One request's spans: five bad ones (with the reason each must be refused for, by its index
/// in the request) and one good one at a random place, until the door's good quota is full.
fn five_bad_one_good(n: &mut u64, t: &mut OtlpTally, rng: &mut Rng) -> (Vec<Span>, Vec<String>) {
    let mut spans = Vec::new();
    let mut whys = Vec::new();
    let good_at = rng.below(6);
    for k in 0..6 {
        *n += 1;
        if k == good_at && t.good < GOOD_PER_DOOR {
            spans.push(good_span(*n, 1));
            t.good += 1;
        } else if k != good_at {
            let (s, why) = bad_span(*n, rng);
            whys.push(format!(
                "resource_spans[0].scope_spans[0].spans[{}]: {why}",
                spans.len()
            ));
            spans.push(s);
            t.bad_spans += 1;
        }
    }
    (spans, whys)
}

/// OTLP/HTTP protobuf: requests of five bad spans and one good (the partial-success message
/// names up to five rejections, so each bad span's reason is checked), and whole requests that
/// are garbage, truncated, too large, of the wrong type or badly compressed.
async fn feed_otlp(http: &str, rng: &mut Rng) -> OtlpTally {
    let client = reqwest::Client::new();
    let url = format!("{http}/v1/traces");
    let mut jobs: Vec<OtlpJob> = Vec::new();
    let mut t = OtlpTally {
        bad_spans: 0,
        bad_requests: 0,
        good: 0,
        codes: BTreeMap::new(),
    };
    let mut n = 0u64;
    while t.bad_spans < BAD_PER_DOOR {
        let (spans, whys) = five_bad_one_good(&mut n, &mut t, rng);
        jobs.push((
            span_request(&spans).encode_to_vec(),
            "application/x-protobuf",
            None,
            whys,
        ));
        // Every fifth request, one that is refused whole.
        if jobs.len() % 5 == 0 {
            let valid = span_request(&[good_span(n, 3)]).encode_to_vec();
            let job = match rng.below(5) {
                0 => {
                    // Garbage that is really not an OTLP request (checked with prost).
                    let g = loop {
                        let g = rng.some_bytes(1, 200);
                        if ExportTraceServiceRequest::decode(g.as_slice()).is_err() {
                            break g;
                        }
                    };
                    (g, "application/x-protobuf", None)
                }
                1 => {
                    let g = loop {
                        let cut = 1 + rng.below(valid.len() - 1);
                        if ExportTraceServiceRequest::decode(&valid[..cut]).is_err() {
                            break valid[..cut].to_vec();
                        }
                    };
                    (g, "application/x-protobuf", None)
                }
                2 => (
                    vec![0x0a; OTLP_MAX_REQUEST_BYTES + 1],
                    "application/x-protobuf",
                    None,
                ),
                3 => (valid, "text/plain", None),
                _ => (rng.bytes(32), "application/x-protobuf", Some("gzip")),
            };
            jobs.push((job.0, job.1, job.2, Vec::new()));
        }
    }
    let answers = futures::stream::iter(jobs.into_iter().map(|(body, ct, enc, whys)| {
        let mut req = client.post(&url).header("content-type", ct).body(body);
        if let Some(enc) = enc {
            req = req.header("content-encoding", enc);
        }
        async move {
            let resp = req.send().await.expect("send");
            let status = resp.status().as_u16();
            (status, resp.bytes().await.expect("body"), whys)
        }
    }))
    .buffer_unordered(8)
    .collect::<Vec<_>>()
    .await;
    for (status, body, whys) in answers {
        if whys.is_empty() {
            let st = tonic_types::Status::decode(body).expect("a google.rpc.Status body");
            assert!(!st.message.is_empty(), "{status} without a reason");
            let reason = st
                .get_details_error_info()
                .map(|i| {
                    assert_eq!(i.domain, "audit-ingest");
                    i.reason
                })
                .unwrap_or_default();
            let (want_code, want_reason) = match status {
                400 => (tonic::Code::InvalidArgument, "invalid_body"),
                413 => (tonic::Code::ResourceExhausted, "body_too_large"),
                415 => (tonic::Code::InvalidArgument, "unsupported_media_type"),
                _ => panic!("{status}: {}", st.message),
            };
            assert_eq!(st.code, want_code as i32, "{status}: {}", st.message);
            assert_eq!(reason, want_reason, "{status}: {}", st.message);
            *t.codes
                .entry(format!("request:{status}:{reason}"))
                .or_default() += 1;
            t.bad_requests += 1;
        } else {
            assert_eq!(status, 200);
            let r = ExportTraceServiceResponse::decode(body).expect("protobuf answer");
            let p = r.partial_success.expect("partial success");
            assert_eq!(p.rejected_spans as usize, whys.len());
            for why in &whys {
                assert!(
                    p.error_message.contains(why.as_str()),
                    "{why} not in {}",
                    p.error_message
                );
                let code = why.rsplit(": ").nth(1).unwrap_or_default();
                *t.codes.entry(format!("span:{code}")).or_default() += 1;
            }
        }
    }
    t
}

/// Sends raw bytes as the Export request (garbage a typed client cannot make) and decodes the
/// answer as OTLP's.
#[derive(Debug, Clone, Copy, Default)]
struct RawCodec;

impl tonic::codec::Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = ExportTraceServiceResponse;
    type Encoder = RawCodec;
    type Decoder = RawCodec;
    fn encoder(&mut self) -> Self::Encoder {
        RawCodec
    }
    fn decoder(&mut self) -> Self::Decoder {
        RawCodec
    }
}

impl tonic::codec::Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(
        &mut self,
        item: Vec<u8>,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        use prost::bytes::BufMut;
        dst.put_slice(&item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawCodec {
    type Item = ExportTraceServiceResponse;
    type Error = tonic::Status;
    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<ExportTraceServiceResponse>, tonic::Status> {
        ExportTraceServiceResponse::decode(src)
            .map(Some)
            .map_err(|e| tonic::Status::internal(e.to_string()))
    }
}

/// A gRPC export that the receiver refuses whole, with the status code and reason it must give.
enum GrpcRefusal {
    /// Bytes that are not an Export request, sent through [`RawCodec`].
    Raw(Vec<u8>),
    /// A valid request over the limit.
    TooLarge(ExportTraceServiceRequest),
    /// A valid request that gzips under the limit and inflates over it.
    Bomb(ExportTraceServiceRequest),
}

/// OTLP/gRPC through the generated client: requests of five bad spans and one good, as for
/// OTLP/HTTP, and whole requests refused with a precise status and `ErrorInfo` reason
/// (garbage and truncated requests: INVALID_ARGUMENT `invalid_body`; over the limit, also
/// after decompression: RESOURCE_EXHAUSTED `body_too_large`).
async fn feed_grpc(addr: &str, rng: &mut Rng) -> OtlpTally {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("endpoint")
        .connect()
        .await
        .expect("gRPC connect");
    let client = TraceServiceClient::new(channel.clone());
    let mut t = OtlpTally {
        bad_spans: 0,
        bad_requests: 0,
        good: 0,
        codes: BTreeMap::new(),
    };
    let mut exports: Vec<(ExportTraceServiceRequest, Vec<String>)> = Vec::new();
    let mut refusals: Vec<GrpcRefusal> = Vec::new();
    let mut n = GRPC_SPAN_BASE;
    while t.bad_spans < GRPC_BAD_SPANS {
        let (spans, whys) = five_bad_one_good(&mut n, &mut t, rng);
        exports.push((service_request(OTLP_GRPC_SERVICE, &spans), whys));
        if exports.len() % 5 == 0 {
            let valid = service_request(OTLP_GRPC_SERVICE, &[good_span(n, 3)]).encode_to_vec();
            refusals.push(match rng.below(4) {
                0 => GrpcRefusal::Raw(loop {
                    let g = rng.some_bytes(1, 200);
                    if ExportTraceServiceRequest::decode(g.as_slice()).is_err() {
                        break g;
                    }
                }),
                1 => GrpcRefusal::Raw(loop {
                    let cut = 1 + rng.below(valid.len() - 1);
                    if ExportTraceServiceRequest::decode(&valid[..cut]).is_err() {
                        break valid[..cut].to_vec();
                    }
                }),
                2 => {
                    let mut s = good_span(n, 3);
                    s.name = "x".repeat(OTLP_MAX_REQUEST_BYTES + rng.below(4096));
                    GrpcRefusal::TooLarge(service_request(OTLP_GRPC_SERVICE, &[s]))
                }
                _ => {
                    // Compresses about a hundredfold: well under the limit on the wire.
                    let mut s = good_span(n, 3);
                    s.name = "z".repeat(2 * OTLP_MAX_REQUEST_BYTES);
                    GrpcRefusal::Bomb(service_request(OTLP_GRPC_SERVICE, &[s]))
                }
            });
        }
    }
    let answers = futures::stream::iter(exports.into_iter().map(|(req, whys)| {
        let mut client = client.clone();
        async move {
            let resp = client.export(req).await.expect("gRPC export");
            (resp.into_inner(), whys)
        }
    }))
    .buffer_unordered(8)
    .collect::<Vec<_>>()
    .await;
    for (resp, whys) in answers {
        let p = resp.partial_success.expect("partial success");
        assert_eq!(p.rejected_spans as usize, whys.len());
        for why in &whys {
            assert!(
                p.error_message.contains(why.as_str()),
                "{why} not in {}",
                p.error_message
            );
            let code = why.rsplit(": ").nth(1).unwrap_or_default();
            *t.codes.entry(format!("span:{code}")).or_default() += 1;
        }
    }
    let path = tonic::codegen::http::uri::PathAndQuery::from_static(
        "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
    );
    let refused = futures::stream::iter(refusals.into_iter().map(|r| {
        let (mut client, channel, path) = (client.clone(), channel.clone(), path.clone());
        async move {
            let (err, want) = match r {
                GrpcRefusal::Raw(bytes) => {
                    let mut raw = tonic::client::Grpc::new(channel);
                    raw.ready().await.expect("channel ready");
                    let err = raw
                        .unary(tonic::Request::new(bytes), path, RawCodec)
                        .await
                        .expect_err("garbage refused");
                    (err, (tonic::Code::InvalidArgument, "invalid_body"))
                }
                GrpcRefusal::TooLarge(req) => (
                    client.export(req).await.expect_err("over the limit"),
                    (tonic::Code::ResourceExhausted, "body_too_large"),
                ),
                GrpcRefusal::Bomb(req) => (
                    client
                        .send_compressed(tonic::codec::CompressionEncoding::Gzip)
                        .export(req)
                        .await
                        .expect_err("inflates over the limit"),
                    (tonic::Code::ResourceExhausted, "body_too_large"),
                ),
            };
            (err, want)
        }
    }))
    .buffer_unordered(8)
    .collect::<Vec<_>>()
    .await;
    for (err, (want_code, want_reason)) in refused {
        assert_eq!(err.code(), want_code, "{err}");
        assert!(!err.message().is_empty(), "{err}");
        let info = err.get_details_error_info().expect("an ErrorInfo detail");
        assert_eq!(info.reason, want_reason, "{err}");
        assert_eq!(info.domain, "audit-ingest");
        *t.codes
            .entry(format!("request:{want_code:?}:{}", info.reason))
            .or_default() += 1;
        t.bad_requests += 1;
    }
    t
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_malformed_inputs_per_door_never_stop_ingest() {
    let started = Instant::now();
    let (grpc, http) = (free_addr(), free_addr());
    let max_event = MAX_EVENT_BYTES.to_string();
    let otlp_max = OTLP_MAX_REQUEST_BYTES.to_string();
    let http_max_body = HTTP_MAX_BODY.to_string();
    let run = start_ingest(
        &token_entry(TOKEN, "acme", ""),
        &[
            "--strict-labels=false",
            "--max-event-bytes",
            &max_event,
            "--http-max-batch",
            "1000",
            "--http-max-body-bytes",
            &http_max_body,
            "--http-rate-per-sec",
            "1000000",
            "--http-rate-burst",
            "1000000",
            "--otlp",
            "--otlp-grpc-addr",
            &grpc,
            "--otlp-http-addr",
            &http,
            "--otlp-max-request-bytes",
            &otlp_max,
        ],
    )
    .await;
    let kafka = run.kafka.clone();
    let topics = kafka.topics();
    eprintln!("feeding at {:?}", started.elapsed());
    let mut rng = Rng(0x5EED_0008);

    let (kafka_bad, kafka_good) = feed_kafka(&kafka, &mut rng).await;
    assert!(!run.handle.is_finished(), "ingest stopped");
    eprintln!("kafka fed at {:?}", started.elapsed());
    let http_tally = feed_http(&run.base, &mut rng).await;
    assert!(!run.handle.is_finished(), "ingest stopped");
    eprintln!("http fed at {:?}", started.elapsed());
    // Both OTLP transports at once (one receiver behind them); gRPC with its own inputs.
    let mut grpc_rng = Rng(0x5EED_0008_6770);
    let otlp_base = format!("http://{http}");
    let (otlp_tally, grpc_tally) = tokio::join!(
        feed_otlp(&otlp_base, &mut rng),
        feed_grpc(&grpc, &mut grpc_rng)
    );
    assert!(!run.handle.is_finished(), "ingest stopped");
    eprintln!("otlp fed at {:?}", started.elapsed());

    // Kafka output: one record per input (valid or dead letter), polled with a deadline.
    let want_validated = (kafka_good + http_tally.good + otlp_tally.good + grpc_tally.good) as i64;
    let want_rejected = kafka_bad.len() as i64;
    let deadline = Instant::now() + Duration::from_secs(240);
    loop {
        // A watermark fetch that fails (a loaded broker) is retried until the deadline.
        let (v, r) = (
            try_count(&kafka, &topics.validated).await.unwrap_or(-1),
            try_count(&kafka, &topics.rejected).await.unwrap_or(-1),
        );
        if v >= want_validated && r >= want_rejected {
            break;
        }
        assert!(!run.handle.is_finished(), "ingest stopped");
        assert!(
            Instant::now() < deadline,
            "{v} validated of {want_validated}, {r} dead letters of {want_rejected}"
        );
        eprintln!(
            "{v} validated of {want_validated}, {r} dead letters of {want_rejected} at {:?}",
            started.elapsed()
        );
        // Not faster: each poll opens consumers on the (shared, busy) broker.
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    assert!(!run.handle.is_finished(), "ingest stopped");
    run.stop().await;

    // Every malformed Kafka record: dead-lettered once, by ingest, with its kind's code.
    let dead = read_dead_letters(&kafka, &topics.rejected).await;
    assert_eq!(
        dead.len(),
        kafka_bad.len(),
        "one dead letter per bad record"
    );
    let mut seen = HashSet::new();
    let mut kafka_codes: BTreeMap<String, usize> = BTreeMap::new();
    for (key, code, stage) in &dead {
        assert!(seen.insert(key.clone()), "{key} dead-lettered twice");
        let kind = kafka_bad
            .get(key)
            .unwrap_or_else(|| panic!("{key} dead-lettered but not malformed"));
        assert_eq!(stage.as_deref(), Some("ingest"));
        let code = code
            .as_deref()
            .unwrap_or_else(|| panic!("{key}: no reason code"));
        assert!(
            kind.kafka_codes().contains(&code),
            "{key} ({kind:?}) got {code}"
        );
        *kafka_codes.entry(format!("{kind:?}:{code}")).or_default() += 1;
    }

    // Every valid event of every door: on the validated topic exactly once.
    let events: Vec<AuditEvent> = validated_events(&kafka).await;
    assert_eq!(events.len() as i64, want_validated);
    let mut by_channel: BTreeMap<String, usize> = BTreeMap::new();
    let mut keys = HashSet::new();
    for e in &events {
        // The OTLP transports apart by the service name each one sends.
        let door = match e.ingress.channel {
            IngressChannel::Otlp if e.source_component == OTLP_GRPC_SERVICE => "OtlpGrpc".into(),
            c => format!("{c:?}"),
        };
        *by_channel.entry(door).or_default() += 1;
        let key = match e.ingress.channel {
            IngressChannel::Otlp => e.trace.span_id.clone().expect("span id"),
            _ => e.request_id.clone().expect("request id"),
        };
        assert!(keys.insert(key.clone()), "{key} landed twice");
        match e.ingress.channel {
            IngressChannel::Kafka => assert!(key.starts_with("kafka-good-"), "{key}"),
            IngressChannel::Http => assert!(key.starts_with("http-good-"), "{key}"),
            IngressChannel::Otlp => assert!(
                [OTLP_HTTP_SERVICE, OTLP_GRPC_SERVICE].contains(&e.source_component.as_str()),
                "{}",
                e.source_component
            ),
        }
    }
    assert_eq!(by_channel.get("Kafka").copied().unwrap_or(0), kafka_good);
    assert_eq!(
        by_channel.get("Http").copied().unwrap_or(0),
        http_tally.good
    );
    assert_eq!(
        by_channel.get("Otlp").copied().unwrap_or(0),
        otlp_tally.good
    );
    assert_eq!(
        by_channel.get("OtlpGrpc").copied().unwrap_or(0),
        grpc_tally.good
    );
    // The counts add up: Kafka inputs = valid + dead letters.
    assert_eq!(kafka_good + dead.len(), kafka_bad_count() + GOOD_PER_DOOR);
    assert!(http_tally.bad_items >= BAD_PER_DOOR);
    assert!(otlp_tally.bad_spans >= BAD_PER_DOOR);
    assert!(grpc_tally.bad_spans >= GRPC_BAD_SPANS);
    assert!(grpc_tally.bad_requests > 0 && otlp_tally.bad_requests > 0);

    eprintln!(
        "kafka: {} good, {} dead letters {kafka_codes:?}\n\
         http: {} good, {} bad items, {} bad requests {:?}\n\
         otlp/http: {} good, {} bad spans, {} bad requests {:?}\n\
         otlp/grpc: {} good, {} bad spans, {} bad requests {:?}\n\
         runtime {:?}",
        kafka_good,
        dead.len(),
        http_tally.good,
        http_tally.bad_items,
        http_tally.bad_requests,
        http_tally.codes,
        otlp_tally.good,
        otlp_tally.bad_spans,
        otlp_tally.bad_requests,
        otlp_tally.codes,
        grpc_tally.good,
        grpc_tally.bad_spans,
        grpc_tally.bad_requests,
        grpc_tally.codes,
        started.elapsed()
    );
}
