//! Proptest-driven fuzzing of the front doors' decoders (no broker needed): the HTTP door's body
//! splitting and per-item gate, and the OTLP/HTTP decoders (protobuf and JSON) with the span
//! mapping. Whatever the input, nothing panics, and every refusal carries a known reason code
//! (and, for OTLP, the span's position).

use std::sync::Arc;

use ingest::http::{self, BodyKind, Door, DoorLimits, Principal, RateLimiter, SplitError};
use ingest::otlp::{decode_http_body, map_request};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status};
use proptest::prelude::*;
use prost::Message;
use schemas::framing::CatalogIdResolver;
use schemas::json::{JsonErrorCode, JsonLimits};
use worker_runtime::health::Readiness;
use worker_runtime::kafka::{KafkaArgs, Producer};

const NOW_US: i64 = 1_705_400_000_000_000;

fn known_codes() -> Vec<&'static str> {
    let mut v: Vec<&str> = [
        JsonErrorCode::InvalidJson,
        JsonErrorCode::NotUtf8,
        JsonErrorCode::MissingField,
        JsonErrorCode::WrongType,
        JsonErrorCode::InvalidValue,
        JsonErrorCode::TooLarge,
        JsonErrorCode::TooDeep,
        JsonErrorCode::TimestampOutOfRange,
        JsonErrorCode::NotAnObject,
    ]
    .iter()
    .map(|c| c.as_str())
    .collect();
    v.extend([
        http::codes::TENANT_MISMATCH,
        http::codes::TEAM_NOT_ALLOWED,
        "empty_payload",
        "unknown_format",
    ]);
    v
}

/// One door for every case (creating a Kafka producer per case would dominate the run).
static DOOR: std::sync::LazyLock<Door> = std::sync::LazyLock::new(make_door);

fn door() -> &'static Door {
    &DOOR
}

fn make_door() -> Door {
    Door {
        // Never used: items are checked, not produced. Creating a producer does not connect.
        producer: Producer::new(&KafkaArgs::default(), "fuzz").expect("producer"),
        validated_topic: "fuzz.validated".into(),
        limits: JsonLimits {
            max_total_bytes: 4096,
            ..JsonLimits::default()
        },
        strict_labels: false,
        resolver: Arc::new(CatalogIdResolver::new().expect("catalog")),
        tokens: http::TokenTable::default(),
        limiter: RateLimiter::new(0.0, 1.0),
        door_limits: DoorLimits {
            max_body_bytes: 1 << 20,
            max_batch: 64,
            body_timeout: std::time::Duration::from_secs(30),
        },
        ready: Readiness::default(),
    }
}

fn principal() -> Principal {
    Principal {
        tenant: "acme".into(),
        teams: vec!["red".into()],
    }
}

/// JSON-ish text: valid and broken fragments of events.
fn jsonish() -> impl Strategy<Value = Vec<u8>> {
    let leaf = prop_oneof![
        Just("null".to_owned()),
        Just("true".to_owned()),
        any::<i64>().prop_map(|n| n.to_string()),
        "[a-zA-Z0-9 _:.-]{0,12}".prop_map(|s| format!("{s:?}")),
        Just("\"2024-01-15T10:30:00Z\"".to_owned()),
        Just("\"acme\"".to_owned()),
        Just("\"evil\"".to_owned()),
    ];
    let value = leaf.prop_recursive(4, 32, 6, |inner| {
        let keys = prop_oneof![
            Just("event"),
            Just("eventType"),
            Just("timestamp"),
            Just("userId"),
            Just("source"),
            Just("tenantId"),
            Just("teamId"),
            Just("category"),
            Just("severity"),
            Just("attributes"),
            Just("actor"),
            Just("id"),
            Just("x"),
        ];
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(|v| format!("[{}]", v.join(","))),
            prop::collection::vec((keys, inner), 0..6).prop_map(|kv| {
                let body: Vec<String> = kv.iter().map(|(k, v)| format!("{k:?}:{v}")).collect();
                format!("{{{}}}", body.join(","))
            }),
        ]
    });
    (value, any::<u8>(), 0usize..64).prop_map(|(v, junk, cut)| {
        let mut b = v.into_bytes();
        // Sometimes truncate or inject a byte (invalid UTF-8 included).
        match junk % 4 {
            0 => b.truncate(b.len().saturating_sub(cut)),
            1 => {
                let at = cut.min(b.len());
                b.insert(at, junk);
            }
            _ => {}
        }
        b
    })
}

fn check_body(door: &Door, body: &[u8]) {
    let codes = known_codes();
    for kind in [BodyKind::Json, BodyKind::Ndjson] {
        match http::split_items(body, kind, door.door_limits.max_batch) {
            Ok(items) => {
                assert!(!items.is_empty() && items.len() <= door.door_limits.max_batch);
                for item in items {
                    match door.check_item(item, &principal(), NOW_US) {
                        Ok(e) => {
                            assert_eq!(e.tenant.tenant_id.as_deref(), Some("acme"));
                            assert!(!e.event_id.is_empty());
                        }
                        Err((status, r)) => {
                            assert!(status == 422 || status == 403, "{status}");
                            assert!(codes.contains(&r.code), "unknown code {}", r.code);
                            assert!(!r.message.is_empty());
                        }
                    }
                }
            }
            Err(SplitError::Invalid(m)) => assert!(!m.is_empty()),
            Err(SplitError::TooMany(n)) => assert!(n > door.door_limits.max_batch),
        }
    }
}

fn arb_any_value() -> impl Strategy<Value = AnyValue> {
    prop_oneof![
        ".{0,16}".prop_map(any_value::Value::StringValue),
        any::<bool>().prop_map(any_value::Value::BoolValue),
        any::<i64>().prop_map(any_value::Value::IntValue),
        any::<f64>().prop_map(any_value::Value::DoubleValue),
        prop::collection::vec(any::<u8>(), 0..8).prop_map(any_value::Value::BytesValue),
    ]
    .prop_map(|v| AnyValue { value: Some(v) })
}

fn arb_kv() -> impl Strategy<Value = KeyValue> {
    let key = prop_oneof![
        Just("service.name".to_owned()),
        Just("enduser.id".to_owned()),
        Just("db.system".to_owned()),
        Just("http.route".to_owned()),
        Just("audit.original.category".to_owned()),
        "[a-z.]{0,10}",
    ];
    (key, proptest::option::of(arb_any_value())).prop_map(|(key, value)| KeyValue {
        key,
        value,
        ..Default::default()
    })
}

fn arb_span() -> impl Strategy<Value = Span> {
    (
        prop_oneof![Just(16usize), 0usize..20],
        prop_oneof![Just(8usize), 0usize..10],
        prop_oneof![Just(0usize), Just(8usize), 0usize..10],
        any::<u8>(),
        ".{0,12}",
        -1i32..8,
        prop_oneof![Just(1_705_300_000_000_000_000u64), any::<u64>()],
        any::<u32>(),
        prop::collection::vec(arb_kv(), 0..6),
        proptest::option::of((-1i32..4, ".{0,8}")),
    )
        .prop_map(
            |(tl, sl, pl, fill, name, kind, start, dur, attributes, status)| Span {
                trace_id: vec![fill; tl],
                span_id: vec![fill.wrapping_add(1); sl],
                parent_span_id: vec![fill; pl],
                name,
                kind,
                start_time_unix_nano: start,
                end_time_unix_nano: start.wrapping_add(u64::from(dur)),
                attributes,
                status: status.map(|(code, message)| Status { code, message }),
                ..Default::default()
            },
        )
}

fn arb_request() -> impl Strategy<Value = ExportTraceServiceRequest> {
    (
        prop::collection::vec(arb_kv(), 0..4),
        prop::collection::vec(arb_span(), 0..6),
    )
        .prop_map(|(resource, spans)| ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(Resource {
                    attributes: resource,
                    ..Default::default()
                }),
                scope_spans: vec![ScopeSpans {
                    spans,
                    ..Default::default()
                }],
                ..Default::default()
            }],
        })
}

fn check_otlp(req: &ExportTraceServiceRequest) {
    let codes = known_codes();
    let limits = JsonLimits::default();
    let total: usize = req
        .resource_spans
        .iter()
        .flat_map(|r| &r.scope_spans)
        .map(|s| s.spans.len())
        .sum();
    let (events, rejected) = map_request(req, &limits, NOW_US);
    assert_eq!(
        events.len() + rejected.len(),
        total,
        "every span is counted once"
    );
    for e in &events {
        ingest::validate_event(e, &limits, NOW_US).expect("accepted events pass the gate");
        assert!(e
            .attributes
            .iter()
            .all(|kv| !kv.key.starts_with("audit.original.")));
    }
    for r in &rejected {
        // `resource_spans[i].scope_spans[j].spans[k]: code: …`
        let (pos, rest) = r.split_once(": ").expect("position first");
        assert!(pos.starts_with("resource_spans["), "{r}");
        let code = rest.split(':').next().unwrap_or("");
        assert!(codes.contains(&code), "unknown code in {r}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn http_door_never_panics_on_bytes(body in prop::collection::vec(any::<u8>(), 0..256)) {
        check_body(door(), &body);
    }

    #[test]
    fn http_door_gives_known_reasons_for_json_like_input(
        items in prop::collection::vec(jsonish(), 1..6),
        as_array in any::<bool>(),
    ) {
        let sep: &[u8] = if as_array { b"," } else { b"\n" };
        let mut body = Vec::new();
        if as_array { body.push(b'['); }
        for (i, it) in items.iter().enumerate() {
            if i > 0 { body.extend_from_slice(sep); }
            body.extend_from_slice(it);
        }
        if as_array { body.push(b']'); }
        check_body(door(), &body);
    }

    #[test]
    fn otlp_decoders_never_panic_on_bytes(body in prop::collection::vec(any::<u8>(), 0..512)) {
        for json in [false, true] {
            if let Ok(req) = decode_http_body(&body, json) {
                check_otlp(&req);
            }
        }
    }

    #[test]
    fn otlp_mapping_accounts_for_every_span(req in arb_request()) {
        check_otlp(&req);
        // Round trips through both encodings decode to the same request.
        let pb = req.encode_to_vec();
        prop_assert_eq!(&decode_http_body(&pb, false).expect("protobuf"), &req);
    }

    #[test]
    fn mangled_protobuf_is_an_error_or_a_request(
        req in arb_request(), cut in 0usize..64, flip in any::<(u16, u8)>(),
    ) {
        let mut pb = req.encode_to_vec();
        if !pb.is_empty() {
            let at = usize::from(flip.0) % pb.len();
            pb[at] ^= flip.1;
        }
        pb.truncate(pb.len().saturating_sub(cut));
        match decode_http_body(&pb, false) {
            Ok(r) => check_otlp(&r),
            Err(m) => prop_assert!(m.starts_with("not an OTLP protobuf")),
        }
    }
}
