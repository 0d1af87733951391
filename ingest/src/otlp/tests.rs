use super::*;
use opentelemetry_proto::tonic::common::v1::InstrumentationScope;
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Status};

fn kv(key: &str, v: any_value::Value) -> OtelKeyValue {
    OtelKeyValue {
        key: key.into(),
        value: Some(AnyValue { value: Some(v) }),
        ..Default::default()
    }
}

fn s(key: &str, v: &str) -> OtelKeyValue {
    kv(key, any_value::Value::StringValue(v.into()))
}

const START: u64 = 1_705_314_600_123_456_789;

pub(crate) fn span(name: &str, span_id: u8, parent: Option<u8>) -> Span {
    Span {
        trace_id: vec![0xab; 16],
        span_id: vec![span_id; 8],
        parent_span_id: parent.map(|p| vec![p; 8]).unwrap_or_default(),
        name: name.into(),
        kind: span::SpanKind::Server as i32,
        start_time_unix_nano: START,
        end_time_unix_nano: START + 2_500_000,
        ..Default::default()
    }
}

fn ctx(resource: &[OtelKeyValue]) -> SpanContext<'_> {
    SpanContext {
        resource,
        scope_name: "my.lib",
        scope_version: "1.2",
        receive_time_us: 1_705_314_601_000_000,
    }
}

fn attr<'a>(e: &'a AuditEvent, k: &str) -> Option<&'a str> {
    e.attributes
        .iter()
        .find(|kv| kv.key == k)
        .map(|kv| kv.value.as_str())
}

#[test]
fn a_server_span_maps_to_an_audit_event() {
    let resource = [
        s("service.name", "checkout"),
        s("cloud.provider", "aws"),
        s("deployment.environment", "prod"),
    ];
    let mut sp = span("GET /orders/{id}", 2, Some(1));
    sp.attributes = vec![
        s("enduser.id", "user-42"),
        s("session.id", "sess-9"),
        s("client.address", "10.0.0.7"),
        s("user_agent.original", "curl/8"),
        s("http.request.method", "GET"),
        s("http.route", "/orders/{id}"),
        kv("http.response.status_code", any_value::Value::IntValue(500)),
        kv("retry", any_value::Value::BoolValue(true)),
        s("tenant.id", "acme"),
    ];
    sp.status = Some(Status {
        code: status::StatusCode::Error as i32,
        message: "boom".into(),
    });
    sp.events = vec![span::Event {
        name: "exception".into(),
        time_unix_nano: START + 1000,
        attributes: vec![s("exception.type", "IOError")],
        ..Default::default()
    }];
    let e = span_event(&sp, &ctx(&resource)).expect("maps");
    validate_event(&e, &JsonLimits::default(), 1_705_314_601_000_000).expect("valid");
    assert_eq!(e.event_id, span_event_id(&[0xab; 16], &[2; 8]));
    assert_eq!(
        Uuid::parse_str(&e.event_id).map(|u| u.get_version_num()),
        Ok(5)
    );
    assert_eq!(e.event_type, "otel_span");
    assert_eq!(e.category, EventCategory::Telemetry);
    assert_eq!((e.outcome, e.severity), (Outcome::Failure, Severity::Error));
    assert_eq!(e.event_time_us, 1_705_314_600_123_456);
    assert_eq!(e.source_component, "checkout");
    assert_eq!(e.ingress.channel, IngressChannel::Otlp);
    assert_eq!(e.ingress.format, "otlp");
    assert_eq!(
        (e.actor.actor_type, e.actor.id.as_str()),
        (ActorType::User, "user-42")
    );
    assert_eq!(e.actor.session_id.as_deref(), Some("sess-9"));
    assert_eq!(e.actor.ip.as_deref(), Some("10.0.0.7"));
    assert_eq!(e.actor.user_agent.as_deref(), Some("curl/8"));
    assert_eq!(e.tenant.tenant_id.as_deref(), Some("acme"));
    let t = e.target.as_ref().expect("target");
    assert_eq!(
        (t.target_type.as_str(), t.id.as_str(), t.name.as_deref()),
        ("http_route", "/orders/{id}", Some("GET"))
    );
    assert_eq!(e.action.verb, "GET /orders/{id}");
    assert_eq!(e.action.description.as_deref(), Some("SPAN_KIND_SERVER"));
    assert_eq!(e.action.status.as_deref(), Some("STATUS_CODE_ERROR"));
    assert_eq!(e.action.error.as_deref(), Some("boom"));
    assert_eq!(e.trace.trace_id.as_deref(), Some(&"ab".repeat(16)[..]));
    assert_eq!(e.trace.span_id.as_deref(), Some("0202020202020202"));
    assert_eq!(e.trace.parent_span_id.as_deref(), Some("0101010101010101"));
    assert_eq!(
        e.performance.as_ref().and_then(|p| p.processing_time_ms),
        Some(2)
    );
    assert_eq!(attr(&e, "otel.span.duration_ns"), Some("2500000"));
    assert_eq!(
        attr(&e, "otel.span.end_time_unix_nano"),
        Some((START + 2_500_000).to_string().as_str())
    );
    assert_eq!(attr(&e, "http.response.status_code"), Some("500"));
    assert_eq!(attr(&e, "retry"), Some("true"));
    assert_eq!(attr(&e, "resource.deployment.environment"), Some("prod"));
    assert_eq!(attr(&e, "otel.scope.name"), Some("my.lib"));
    assert!(
        e.attributes.windows(2).all(|w| w[0].key < w[1].key),
        "sorted"
    );
    let payload: Value =
        serde_json::from_str(e.data.payload_json.as_deref().expect("events")).expect("json");
    assert_eq!(payload["events"][0]["name"], "exception");
    assert_eq!(
        payload["events"][0]["attributes"]["exception.type"],
        "IOError"
    );
}

#[test]
fn db_and_cloud_targets_and_a_service_actor() {
    let mut sp = span("SELECT orders", 3, None);
    sp.kind = span::SpanKind::Client as i32;
    sp.attributes = vec![
        s("db.system", "postgresql"),
        s("db.name", "shop"),
        s("db.sql.table", "orders"),
    ];
    sp.status = Some(Status {
        code: status::StatusCode::Ok as i32,
        message: String::new(),
    });
    let e = span_event(&sp, &ctx(&[])).expect("maps");
    assert_eq!(e.source_component, UNKNOWN_SERVICE);
    assert_eq!(
        (e.actor.actor_type, e.actor.id.as_str()),
        (ActorType::Service, UNKNOWN_SERVICE)
    );
    assert_eq!(e.outcome, Outcome::Success);
    assert_eq!(e.trace.parent_span_id, None);
    let t = e.target.expect("db target");
    assert_eq!(
        (t.target_type.as_str(), t.id.as_str(), t.name.as_deref()),
        ("db", "shop.orders", Some("postgresql"))
    );

    let mut sp = span("RunInstances", 4, None);
    sp.attributes = vec![s("cloud.resource_id", "arn:aws:ec2:i-1")];
    let e = span_event(&sp, &ctx(&[s("service.name", "infra")])).expect("maps");
    assert_eq!(e.outcome, Outcome::Unknown, "UNSET status");
    let t = e.target.expect("cloud target");
    assert_eq!(
        (t.target_type.as_str(), t.id.as_str()),
        ("cloud_resource", "arn:aws:ec2:i-1")
    );
}

#[test]
fn bad_spans_get_precise_reasons_and_good_ones_pass() {
    let mut no_trace = span("a", 1, None);
    no_trace.trace_id = vec![];
    let mut zero_span = span("b", 0, None);
    zero_span.span_id = vec![0; 8];
    let mut short_parent = span("c", 3, None);
    short_parent.parent_span_id = vec![1, 2];
    let mut backwards = span("d", 4, None);
    backwards.end_time_unix_nano = START - 1;
    let mut ancient = span("e", 5, None);
    ancient.start_time_unix_nano = 5;
    ancient.end_time_unix_nano = 6;
    let mut unnamed = span("", 6, None);
    unnamed.name.clear();
    let mut reserved = span("f", 7, None);
    reserved.attributes = vec![s("audit.original.category", "x")];
    let req = ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![s("service.name", "svc")],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope {
                    name: "lib".into(),
                    ..Default::default()
                }),
                spans: vec![
                    span("ok", 9, None),
                    no_trace,
                    zero_span,
                    short_parent,
                    backwards,
                    ancient,
                    unnamed,
                    reserved,
                ],
                ..Default::default()
            }],
            ..Default::default()
        }],
    };
    let (events, rejected) = map_request(&req, &JsonLimits::default(), 1_705_314_601_000_000);
    assert_eq!(events.len(), 2, "{rejected:?}");
    let reserved = &events[1];
    assert_eq!(attr(reserved, "audit.original.category"), None);
    assert_eq!(
        attr(reserved, "producer.audit.original.category"),
        Some("x")
    );
    let prefix = "resource_spans[0].scope_spans[0].spans";
    let expected = [
        (1, "invalid_value: span.trace_id"),
        (2, "invalid_value: span.span_id"),
        (3, "invalid_value: span.parent_span_id"),
        (4, "invalid_value: span.end_time_unix_nano"),
        (5, "timestamp_out_of_range"),
        (6, "missing_field: span.name"),
    ];
    assert_eq!(rejected.len(), expected.len(), "{rejected:?}");
    for ((k, what), got) in expected.iter().zip(&rejected) {
        assert!(
            got.starts_with(&format!("{prefix}[{k}]: {what}")),
            "{got} vs {what}"
        );
    }
}

#[test]
fn span_ids_are_stable_and_distinct() {
    let a = span_event_id(&[1; 16], &[2; 8]);
    assert_eq!(a, span_event_id(&[1; 16], &[2; 8]));
    assert_ne!(a, span_event_id(&[1; 16], &[3; 8]));
    assert_ne!(a, span_event_id(&[3; 16], &[2; 8]));
}

#[test]
fn http_bodies_decode_from_protobuf_and_json() {
    let req = ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            scope_spans: vec![ScopeSpans {
                spans: vec![span("x", 1, None)],
                ..Default::default()
            }],
            ..Default::default()
        }],
    };
    let pb = req.encode_to_vec();
    assert_eq!(decode_http_body(&pb, false).expect("protobuf"), req);
    let js = serde_json::to_vec(&req).expect("json");
    assert_eq!(decode_http_body(&js, true).expect("json"), req);
    // OTLP/JSON as the spec writes it: hex ids, nanos as strings, enums as integers.
    let text = r#"{"resourceSpans":[{"resource":{"attributes":[{"key":"service.name","value":{"stringValue":"svc"}}]},
        "scopeSpans":[{"spans":[{"traceId":"5b8efff798038103d269b633813fc60c","spanId":"eee19b7ec3c1b174",
        "name":"op","kind":2,"startTimeUnixNano":"1705314600000000000","endTimeUnixNano":"1705314600000001000",
        "attributes":[{"key":"n","value":{"intValue":"7"}}]}]}]}]}"#;
    let r = decode_http_body(text.as_bytes(), true).expect("spec JSON");
    let sp = &r.resource_spans[0].scope_spans[0].spans[0];
    assert_eq!(
        hex::encode(&sp.trace_id),
        "5b8efff798038103d269b633813fc60c"
    );
    assert_eq!(sp.start_time_unix_nano, 1_705_314_600_000_000_000);
    let e = map_request(&r, &JsonLimits::default(), 1_705_314_601_000_000);
    assert_eq!(e.0.len(), 1, "{:?}", e.1);
    assert_eq!(attr(&e.0[0], "n"), Some("7"));
    assert!(decode_http_body(b"\xff\xff\xff", false).is_err());
    assert!(decode_http_body(b"{\"resourceSpans\": 3}", true).is_err());
}

#[test]
fn gzip_bodies_inflate_within_the_limit_only() {
    use std::io::Write;
    let gz = |data: &[u8]| {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(data).expect("gzip");
        e.finish().expect("gzip")
    };
    assert_eq!(gunzip_bounded(&gz(b"hello"), 5).expect("fits"), b"hello");
    // A bomb: 1 MiB of zeros compresses to about a kilobyte.
    let bomb = gz(&vec![0u8; 1 << 20]);
    assert!(bomb.len() < 4096);
    assert!(matches!(
        gunzip_bounded(&bomb, 1000),
        Err(GunzipError::TooLarge)
    ));
    assert!(matches!(
        gunzip_bounded(b"not gzip", 1000),
        Err(GunzipError::Invalid(_))
    ));
}
