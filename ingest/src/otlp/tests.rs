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

fn receiver(max_request_bytes: usize) -> Arc<OtlpReceiver> {
    Arc::new(OtlpReceiver {
        // Never used: every request below is refused before anything is produced, and
        // creating a producer does not connect.
        producer: Producer::new(&worker_runtime::kafka::KafkaArgs::default(), "otlp-test")
            .expect("producer"),
        validated_topic: "t.validated".into(),
        limits: JsonLimits::default(),
        max_request_bytes,
        tokens: None,
    })
}

/// POSTs to the OTLP/HTTP router: status, content type, body.
async fn post(
    router: &Router,
    ct: &str,
    encoding: Option<&str>,
    body: Vec<u8>,
) -> (StatusCode, String, Vec<u8>) {
    use tower::ServiceExt;
    let mut req = axum::http::Request::post("/v1/traces").header(header::CONTENT_TYPE, ct);
    if let Some(enc) = encoding {
        req = req.header(header::CONTENT_ENCODING, enc);
    }
    let resp = router
        .clone()
        .oneshot(req.body(Body::from(body)).expect("request"))
        .await
        .expect("infallible");
    let status = resp.status();
    let ct = resp.headers()[header::CONTENT_TYPE]
        .to_str()
        .expect("ascii")
        .to_owned();
    let body = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .expect("body");
    (status, ct, body.to_vec())
}

/// Content type, content encoding, body, HTTP status, gRPC code, reason.
type RefusalCase<'a> = (&'a str, Option<&'a str>, Vec<u8>, u16, tonic::Code, &'a str);

#[tokio::test]
async fn http_refusals_carry_a_machine_code() {
    use tonic_types::RpcStatusExt;
    let router = http_router(receiver(1000));
    let valid = ExportTraceServiceRequest::default().encode_to_vec();
    let cases: Vec<RefusalCase<'_>> = vec![
        (
            "text/plain",
            None,
            valid.clone(),
            415,
            tonic::Code::InvalidArgument,
            "unsupported_media_type",
        ),
        (
            PROTOBUF,
            Some("br"),
            valid.clone(),
            415,
            tonic::Code::InvalidArgument,
            "unsupported_media_type",
        ),
        (
            PROTOBUF,
            None,
            b"\xff\xff\xff\xff".to_vec(),
            400,
            tonic::Code::InvalidArgument,
            "invalid_body",
        ),
        (
            PROTOBUF,
            Some("gzip"),
            b"not gzip".to_vec(),
            400,
            tonic::Code::InvalidArgument,
            "invalid_body",
        ),
        (
            PROTOBUF,
            None,
            vec![0x0a; 1001],
            413,
            tonic::Code::ResourceExhausted,
            "body_too_large",
        ),
    ];
    for (ct, enc, body, want_status, want_code, want_reason) in cases {
        let (status, answer_ct, answer) = post(&router, ct, enc, body).await;
        assert_eq!(status.as_u16(), want_status, "{ct} {enc:?}");
        assert_eq!(answer_ct, PROTOBUF);
        let st = tonic_types::Status::decode(answer.as_slice()).expect("a google.rpc.Status");
        assert_eq!(st.code, want_code as i32, "{}", st.message);
        assert!(!st.message.is_empty());
        let info = st.get_details_error_info().expect("an ErrorInfo detail");
        assert_eq!(info.reason, want_reason, "{}", st.message);
        assert_eq!(info.domain, ERROR_DOMAIN);
    }
    // OTLP/JSON: the same Status in the protobuf JSON mapping.
    for (enc, body, want_status, want_reason) in [
        (
            None,
            b"{\"resourceSpans\": 7}".to_vec(),
            400,
            "invalid_body",
        ),
        (None, vec![b' '; 1001], 413, "body_too_large"),
        (
            Some("deflate"),
            b"{}".to_vec(),
            415,
            "unsupported_media_type",
        ),
    ] {
        let (status, answer_ct, answer) = post(&router, JSON, enc, body).await;
        assert_eq!(status.as_u16(), want_status);
        assert_eq!(answer_ct, JSON);
        let v: Value = serde_json::from_slice(&answer).expect("JSON");
        assert_eq!(
            v["details"][0]["@type"],
            "type.googleapis.com/google.rpc.ErrorInfo"
        );
        assert_eq!(v["details"][0]["reason"], want_reason, "{v}");
        assert_eq!(v["details"][0]["domain"], ERROR_DOMAIN);
        assert!(v["code"].as_i64().is_some_and(|c| c > 0), "{v}");
    }
}

#[test]
fn grpc_refusals_made_by_tonic_get_a_machine_code_and_a_code_not_retried() {
    use tonic_types::StatusExt;
    let fix = |st: tonic::Status| {
        let resp = with_refusal_code(st.into_http());
        tonic::Status::from_header_map(resp.headers()).expect("a status")
    };
    for (tonic_says, want_code, want_reason) in [
        // Undecodable protobuf (tonic-prost), a stream ending early, bad compression.
        (
            tonic::Status::internal("failed to decode Protobuf message: invalid wire type"),
            tonic::Code::InvalidArgument,
            "invalid_body",
        ),
        // Over `max_decoding_message_size`: OUT_OF_RANGE would be retried by exporters.
        (
            tonic::Status::out_of_range("Error, decoded message length too large"),
            tonic::Code::ResourceExhausted,
            "body_too_large",
        ),
        (
            tonic::Status::resource_exhausted("size limit exceeded while decompressing"),
            tonic::Code::ResourceExhausted,
            "body_too_large",
        ),
        (
            tonic::Status::unimplemented("Content is compressed with `br` which isn't supported"),
            tonic::Code::Unimplemented,
            "unsupported_media_type",
        ),
    ] {
        let message = tonic_says.message().to_owned();
        let st = fix(tonic_says);
        assert_eq!(st.code(), want_code, "{message}");
        assert_eq!(st.message(), message, "the text is kept");
        let info = st.get_details_error_info().expect("an ErrorInfo detail");
        assert_eq!(info.reason, want_reason);
        assert_eq!(info.domain, ERROR_DOMAIN);
    }
    // The handler's own refusals already carry their code: kept as they are.
    let own = refusal_status(tonic::Code::Unavailable, "not_delivered", "broker down");
    let st = fix(own);
    assert_eq!(st.code(), tonic::Code::Unavailable);
    assert_eq!(
        st.get_details_error_info().expect("ErrorInfo").reason,
        "not_delivered"
    );
    // Codes tonic does not refuse a request with are left alone.
    let st = fix(tonic::Status::cancelled("gone"));
    assert_eq!(st.code(), tonic::Code::Cancelled);
    assert!(st.details().is_empty());
}
