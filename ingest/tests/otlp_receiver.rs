//! The OTLP traces receiver end to end against the real broker (127.0.0.1:9092; FAILS when it
//! is absent): ingest's `run` with `--otlp`, the real OpenTelemetry Python SDK exporters (gRPC
//! and HTTP/protobuf, `otlp_export.py`; PyPI opentelemetry-sdk, opentelemetry-exporter-otlp)
//! sending nested spans, uncompressed and gzip, and the validated topic read back. Also partial success, limits and
//! retries through OTLP/HTTP (protobuf and JSON) and OTLP/gRPC (tonic client).

mod common;

use std::collections::HashMap;
use std::path::Path;

use common::*;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use prost::Message;
use schemas::{identity, ActorType, AuditEvent, IngressChannel, Outcome};

struct Started {
    run: Running,
    grpc: String,
    http: String,
}

async fn start(extra: &[&str]) -> Started {
    let (grpc, http) = (free_addr(), free_addr());
    let mut args = vec![
        "--strict-labels=false",
        "--otlp",
        "--otlp-grpc-addr",
        &grpc,
        "--otlp-http-addr",
        &http,
    ];
    args.extend_from_slice(extra);
    let run = start_ingest(&token_entry("unused", "t", ""), &args).await;
    Started {
        run,
        grpc: format!("http://{grpc}"),
        http: format!("http://{http}"),
    }
}

#[derive(Debug, Clone, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct Exported {
    name: String,
    trace_id: String,
    span_id: String,
    parent_span_id: Option<String>,
    start: u64,
    end: u64,
}

async fn python_export(
    protocol: &str,
    endpoint: &str,
    run_id: &str,
    compression: &str,
) -> Vec<Exported> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/otlp_export.py");
    let args = [
        script.display().to_string(),
        protocol.to_owned(),
        endpoint.to_owned(),
        run_id.to_owned(),
        compression.to_owned(),
    ];
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("python3").args(args).output()
    })
    .await
    .expect("join")
    .expect("python3 runs (pip install opentelemetry-sdk opentelemetry-exporter-otlp)");
    assert!(
        out.status.success(),
        "{protocol} export failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("utf-8")
        .lines()
        .map(|l| serde_json::from_str(l).expect("manifest line"))
        .collect()
}

fn attr<'a>(e: &'a AuditEvent, k: &str) -> Option<&'a str> {
    e.attributes
        .iter()
        .find(|kv| kv.key == k)
        .map(|kv| kv.value.as_str())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_sdk_exporters_over_grpc_and_http_land_as_audit_events() {
    let st = start(&[]).await;
    let run_id = uuid::Uuid::new_v4().to_string();
    let exports = [
        ("grpc", &st.grpc, "none"),
        ("http", &st.http, "none"),
        ("grpc", &st.grpc, "gzip"),
        ("http", &st.http, "gzip"),
    ];
    let mut sent = Vec::new();
    for (protocol, endpoint, compression) in exports {
        sent.extend(python_export(protocol, endpoint, &run_id, compression).await);
    }
    assert_eq!(sent.len(), 16, "four traces of four spans");
    // The exporters got SUCCESS, which is sent after the broker acknowledged.
    let kafka = st.run.kafka.clone();
    st.run.stop().await;
    let events = validated_events(&kafka).await;
    assert_eq!(events.len(), sent.len());
    assert_eq!(count(&kafka, &kafka.topics().rejected).await, 0);
    let by_span: HashMap<&str, &AuditEvent> = events
        .iter()
        .map(|e| (e.trace.span_id.as_deref().expect("span id"), e))
        .collect();

    for (protocol, _, compression) in exports {
        let service = format!("checkout-{protocol}-{compression}");
        // One trace's timeline: its events by start time, with their nesting.
        let mut timeline: Vec<&AuditEvent> = events
            .iter()
            .filter(|e| e.source_component == service)
            .collect();
        timeline.sort_by_key(|e| e.event_time_us);
        let names: Vec<&str> = timeline.iter().map(|e| e.action.verb.as_str()).collect();
        assert_eq!(
            names,
            [
                "POST /orders",
                "reserve stock",
                "UPDATE stock",
                "charge card"
            ]
        );
        let trace_ids: std::collections::BTreeSet<_> =
            timeline.iter().map(|e| e.trace.trace_id.clone()).collect();
        assert_eq!(trace_ids.len(), 1, "one trace per export");
        let root = timeline[0];
        assert_eq!(root.trace.parent_span_id, None);
        assert_eq!(timeline[1].trace.parent_span_id, root.trace.span_id);
        assert_eq!(timeline[2].trace.parent_span_id, timeline[1].trace.span_id);
        assert_eq!(timeline[3].trace.parent_span_id, root.trace.span_id);
        // Semantic conventions.
        assert_eq!(root.actor.actor_type, ActorType::User);
        assert_eq!(root.actor.id, format!("user-{protocol}"));
        assert_eq!(root.actor.ip.as_deref(), Some("10.1.2.3"));
        assert_eq!(root.outcome, Outcome::Success);
        assert_eq!(
            root.target
                .as_ref()
                .map(|t| (t.target_type.as_str(), t.id.as_str())),
            Some(("http_route", "/orders"))
        );
        assert_eq!(attr(root, "http.response.status_code"), Some("201"));
        assert_eq!(attr(root, "resource.run.id"), Some(run_id.as_str()));
        assert_eq!(attr(root, "otel.scope.name"), Some("audit.test"));
        assert_eq!(attr(root, "otel.span.kind"), Some("SPAN_KIND_SERVER"));
        let db = timeline[2];
        assert_eq!(
            db.target
                .as_ref()
                .map(|t| (t.target_type.as_str(), t.id.as_str())),
            Some(("db", "shop.stock"))
        );
        assert_eq!(db.actor.actor_type, ActorType::Service);
        assert_eq!(db.actor.id, service);
        assert!(db
            .data
            .payload_json
            .as_deref()
            .is_some_and(|p| p.contains("row locked")));
        let charge = timeline[3];
        assert_eq!(charge.outcome, Outcome::Failure);
        assert_eq!(charge.action.error.as_deref(), Some("card declined"));
        assert_eq!(
            charge.target.as_ref().map(|t| t.target_type.as_str()),
            Some("cloud_resource")
        );
    }
    for s in &sent {
        let e = by_span[s.span_id.as_str()];
        assert_eq!(e.trace.trace_id.as_deref(), Some(s.trace_id.as_str()));
        assert_eq!(e.trace.parent_span_id, s.parent_span_id);
        assert_eq!(e.action.verb, s.name);
        assert_eq!(e.event_time_us, (s.start / 1000) as i64);
        assert_eq!(
            attr(e, "otel.span.duration_ns"),
            Some((s.end - s.start).to_string().as_str())
        );
        assert_eq!(e.ingress.channel, IngressChannel::Otlp);
        assert_eq!(
            identity::namespace(e),
            identity::IdNamespace::Door(IngressChannel::Otlp)
        );
    }
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

fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_nanos() as u64
}

/// One good span and one without a trace id, under `service`.
fn request(service: &str, seed: u8) -> ExportTraceServiceRequest {
    let start = now_ns();
    let good = Span {
        trace_id: vec![seed; 16],
        span_id: vec![seed; 8],
        name: format!("op-{seed}"),
        kind: 2,
        start_time_unix_nano: start,
        end_time_unix_nano: start + 1000,
        ..Default::default()
    };
    let bad = Span {
        trace_id: vec![],
        ..good.clone()
    };
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![kv("service.name", service)],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                spans: vec![good, bad],
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

fn assert_partial(resp: &ExportTraceServiceResponse) {
    let p = resp.partial_success.as_ref().expect("partial success");
    assert_eq!(p.rejected_spans, 1);
    assert!(
        p.error_message
            .contains("resource_spans[0].scope_spans[0].spans[1]: invalid_value: span.trace_id"),
        "{}",
        p.error_message
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partial_success_limits_and_retries_on_every_transport() {
    let st = start(&["--otlp-max-request-bytes", "65536"]).await;
    let client = reqwest::Client::new();
    let url = format!("{}/v1/traces", st.http);
    let post = |ct: &'static str, body: Vec<u8>| {
        client
            .post(&url)
            .header("content-type", ct)
            .body(body)
            .send()
    };

    // HTTP/protobuf, twice (an exporter's retry of the same request): same event both times.
    let pb_request = request("svc-pb", 1).encode_to_vec();
    for _ in 0..2 {
        let resp = post("application/x-protobuf", pb_request.clone())
            .await
            .expect("send");
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["content-type"], "application/x-protobuf");
        let body = resp.bytes().await.expect("body");
        assert_partial(&ExportTraceServiceResponse::decode(body).expect("protobuf answer"));
    }
    // HTTP/JSON.
    let json = serde_json::to_vec(&request("svc-json", 2)).expect("json");
    let resp = post("application/json", json).await.expect("send");
    assert_eq!(resp.status(), 200);
    let body: ExportTraceServiceResponse = resp.json().await.expect("JSON answer");
    assert_partial(&body);
    // gRPC.
    let mut grpc = TraceServiceClient::connect(st.grpc.clone())
        .await
        .expect("gRPC connect");
    let resp = grpc
        .export(request("svc-grpc", 3))
        .await
        .expect("gRPC export");
    assert_partial(resp.get_ref());

    // Refusals with reasons, and the receiver keeps going.
    // Each with its machine code: a google.rpc.ErrorInfo (domain audit-ingest) in the Status.
    let reason_of = |body: &[u8]| {
        use tonic_types::RpcStatusExt;
        let st = tonic_types::Status::decode(body).expect("a google.rpc.Status body");
        let info = st.get_details_error_info().expect("an ErrorInfo detail");
        assert_eq!(info.domain, "audit-ingest");
        (st.message, info.reason)
    };
    let huge = vec![0u8; 70_000];
    let resp = post("application/x-protobuf", huge).await.expect("send");
    assert_eq!(resp.status(), 413);
    let (_, reason) = reason_of(&resp.bytes().await.expect("body"));
    assert_eq!(reason, "body_too_large");
    let resp = post("application/x-protobuf", b"\xff\xff\xff\xff".to_vec())
        .await
        .expect("send");
    assert_eq!(resp.status(), 400);
    let (message, reason) = reason_of(&resp.bytes().await.expect("body"));
    assert!(message.contains("protobuf"), "{message}");
    assert_eq!(reason, "invalid_body");
    let resp = post("application/json", b"{\"resourceSpans\": 7}".to_vec())
        .await
        .expect("send");
    assert_eq!(resp.status(), 400);
    let body: serde_json::Value = resp.json().await.expect("JSON Status");
    assert_eq!(body["details"][0]["reason"], "invalid_body", "{body}");
    let resp = post("text/plain", b"x".to_vec()).await.expect("send");
    assert_eq!(resp.status(), 415);
    let (_, reason) = reason_of(&resp.bytes().await.expect("body"));
    assert_eq!(reason, "unsupported_media_type");
    // gRPC: tonic's own refusal of an oversized message, RESOURCE_EXHAUSTED (not OUT_OF_RANGE,
    // which exporters retry) with the same machine code.
    let mut big = request("svc-grpc", 4);
    big.resource_spans[0].scope_spans[0].spans[0].name = "x".repeat(70_000);
    let err = grpc.export(big).await.expect_err("over the limit");
    assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err}");
    let info = tonic_types::StatusExt::get_details_error_info(&err).expect("ErrorInfo");
    assert_eq!(
        (info.reason.as_str(), info.domain.as_str()),
        ("body_too_large", "audit-ingest")
    );

    let kafka = st.run.kafka.clone();
    st.run.stop().await;
    let events = validated_events(&kafka).await;
    let services: Vec<&str> = {
        let mut v: Vec<&str> = events.iter().map(|e| e.source_component.as_str()).collect();
        v.sort_unstable();
        v
    };
    assert_eq!(services, ["svc-grpc", "svc-json", "svc-pb", "svc-pb"]);
    let pb: Vec<&AuditEvent> = events
        .iter()
        .filter(|e| e.source_component == "svc-pb")
        .collect();
    assert_eq!(
        pb[0].event_id, pb[1].event_id,
        "a retry keeps the span's id"
    );
    assert_eq!(identity::dedup_key(pb[0]), identity::dedup_key(pb[1]));
    assert_eq!(
        identity::content_digest(pb[0]).expect("digest"),
        identity::content_digest(pb[1]).expect("digest")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_require_token_exporters_authenticate_and_keep_to_their_tenant() {
    const TOKEN: &str = "otlp-token-5d1e";
    let (grpc_addr, http_addr) = (free_addr(), free_addr());
    let run = start_ingest(
        &token_entry(TOKEN, "acme", ""),
        &[
            "--strict-labels=false",
            "--otlp",
            "--otlp-require-token",
            "--otlp-grpc-addr",
            &grpc_addr,
            "--otlp-http-addr",
            &http_addr,
        ],
    )
    .await;
    let mut own = request("svc-auth", 5);
    own.resource_spans[0].scope_spans[0].spans.truncate(1);
    let mut other = own.clone();
    other.resource_spans[0].scope_spans[0].spans[0].span_id = vec![6; 8];
    other.resource_spans[0].scope_spans[0].spans[0]
        .attributes
        .push(kv("tenant.id", "evil"));
    let mut both = own.clone();
    both.resource_spans[0].scope_spans[0]
        .spans
        .extend(other.resource_spans[0].scope_spans[0].spans.clone());

    // gRPC: refused without a token (and with a wrong one), held to the tenant with one.
    let mut grpc = TraceServiceClient::connect(format!("http://{grpc_addr}"))
        .await
        .expect("connect");
    let err = grpc.export(own.clone()).await.expect_err("no token");
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
    let info = tonic_types::StatusExt::get_details_error_info(&err).expect("ErrorInfo");
    assert_eq!(info.reason, "unauthorized");
    let mut req = tonic::Request::new(own.clone());
    req.metadata_mut()
        .insert("authorization", "Bearer wrong".parse().expect("ascii"));
    let err = grpc.export(req).await.expect_err("wrong token");
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
    let mut req = tonic::Request::new(both);
    req.metadata_mut().insert(
        "authorization",
        format!("Bearer {TOKEN}").parse().expect("ascii"),
    );
    let resp = grpc.export(req).await.expect("export");
    let p = resp.get_ref().partial_success.as_ref().expect("partial");
    assert_eq!(p.rejected_spans, 1);
    assert!(
        p.error_message
            .contains("spans[1]: tenant_mismatch: span.attributes[tenant.id]"),
        "{}",
        p.error_message
    );

    // HTTP: 401 without a token.
    let client = reqwest::Client::new();
    let url = format!("http://{http_addr}/v1/traces");
    let resp = client
        .post(&url)
        .header("content-type", "application/x-protobuf")
        .body(own.encode_to_vec())
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 401);
    let body = resp.bytes().await.expect("body");
    let st = tonic_types::Status::decode(body).expect("a google.rpc.Status body");
    let info = tonic_types::RpcStatusExt::get_details_error_info(&st).expect("ErrorInfo");
    assert_eq!(info.reason, "unauthorized");

    let kafka = run.kafka.clone();
    run.stop().await;
    let events = validated_events(&kafka).await;
    assert_eq!(events.len(), 1, "only the own-tenant span");
    assert_eq!(
        events[0].tenant.tenant_id.as_deref(),
        Some("acme"),
        "stamped"
    );
}

/// An OTLP/HTTP export far over the request limit, sent by Python's own HTTP client (a third
/// party to this code), streamed (chunked) or declared: the exporter gets the 413 with its
/// JSON refusal, not a broken pipe while it is still sending.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversize_export_gets_its_413_not_a_broken_pipe() {
    const SCRIPT: &str = r#"
import http.client, json, sys, urllib.parse
base, size, chunked = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1"
u = urllib.parse.urlsplit(base)
c = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
body = b'{"resourceSpans": [], "pad": "' + b"x" * size + b'"}'
headers = {"Content-Type": "application/json"}
try:
    if chunked:
        parts = (body[i:i + 65536] for i in range(0, len(body), 65536))
        c.request("POST", "/v1/traces", body=parts, headers=headers, encode_chunked=True)
    else:
        c.request("POST", "/v1/traces", body=body, headers=headers)
    r = c.getresponse()
    print(json.dumps({"status": r.status, "body": r.read().decode()}))
except Exception as e:
    print(json.dumps({"error": type(e).__name__ + ": " + str(e)}))
"#;
    let st = start(&["--otlp-max-request-bytes", "65536"]).await;
    for chunked in ["0", "1"] {
        let out = std::process::Command::new("python3")
            .args(["-c", SCRIPT, &st.http, &(8 << 20).to_string(), chunked])
            .output()
            .expect("python3");
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "python output {e}: {}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
        assert_eq!(v["status"], 413, "chunked {chunked}: {v}");
        assert!(
            v["body"]
                .as_str()
                .is_some_and(|b| b.contains("body_too_large")),
            "chunked {chunked}: {v}"
        );
    }
    st.run.stop().await;
}
