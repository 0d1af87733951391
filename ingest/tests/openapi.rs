//! `ingest/openapi.yaml` against the real router: every documented path, method and status has
//! a sample request here that gets exactly that status, with a body that satisfies the
//! documented schema and the documented headers; and every sample is documented. The 202 sample
//! goes through the real broker (127.0.0.1:9092; FAILS when it is absent); the 503 sample
//! through a producer whose broker does not exist.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use futures::StreamExt;
use ingest::http::{token_hash, Door, DoorLimits, RateLimiter, TokenTable};
use schemas::framing::CatalogIdResolver;
use schemas::json::JsonLimits;
use serde_json::{json, Value};
use tower::ServiceExt;
use worker_runtime::health::Readiness;
use worker_runtime::kafka::{KafkaArgs, Producer};

const TOKEN: &str = "openapi-token";
const SLOW: &str = "openapi-slow-token";

fn door(kafka: &KafkaArgs, ready: Readiness) -> Arc<Door> {
    let tokens = TokenTable::parse(&format!(
        "sha256:{} acme\nsha256:{} slowco",
        hex::encode(token_hash(TOKEN)),
        hex::encode(token_hash(SLOW))
    ))
    .expect("tokens");
    Arc::new(Door {
        producer: Producer::new(kafka, "openapi-test").expect("producer"),
        validated_topic: kafka.topics().validated,
        limits: JsonLimits::default(),
        strict_labels: false,
        resolver: Arc::new(CatalogIdResolver::new().expect("catalog")),
        tokens,
        // Five events per token, then (practically) none: TOKEN's samples take three, SLOW's
        // two batches of three get 202 and 429.
        limiter: RateLimiter::new(0.001, 5.0),
        door_limits: DoorLimits {
            max_body_bytes: 4096,
            max_batch: 3,
            // Short, for the 408 sample (a body that never completes).
            body_timeout: std::time::Duration::from_secs(1),
        },
        ready,
    })
}

fn events(token: Option<&str>, content_type: &str, body: impl Into<String>) -> Request<Body> {
    let mut b = Request::post("/v1/events").header("content-type", content_type);
    if let Some(t) = token {
        b = b.header("authorization", format!("Bearer {t}"));
    }
    b.body(Body::from(body.into())).expect("request")
}

fn health() -> Request<Body> {
    Request::get("/v1/health")
        .body(Body::empty())
        .expect("request")
}

/// Resolves `{"$ref": "#/components/schemas/X"}`.
fn resolve<'a>(schema: &'a Value, doc: &'a Value) -> &'a Value {
    match schema.get("$ref").and_then(Value::as_str) {
        Some(r) => {
            let ptr = r.strip_prefix('#').expect("local $ref");
            resolve(doc.pointer(ptr).expect("$ref target exists"), doc)
        }
        None => schema,
    }
}

/// Checks `value` against the subset of JSON Schema the document uses.
fn check(schema: &Value, value: &Value, doc: &Value, at: &str) {
    let schema = resolve(schema, doc);
    if let Some(t) = schema.get("type").and_then(Value::as_str) {
        let ok = match t {
            "object" => value.is_object(),
            "array" => value.is_array(),
            "string" => value.is_string(),
            "integer" => value.is_i64() || value.is_u64(),
            "boolean" => value.is_boolean(),
            other => panic!("{at}: type {other} not handled by this check"),
        };
        assert!(ok, "{at}: expected {t}, got {value}");
    }
    if let Some(allowed) = schema.get("enum").and_then(Value::as_array) {
        assert!(allowed.contains(value), "{at}: {value} not in {allowed:?}");
    }
    for key in schema
        .get("required")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let key = key.as_str().expect("required names");
        assert!(
            value.get(key).is_some(),
            "{at}: required {key} missing in {value}"
        );
    }
    if let (Some(props), Some(obj)) = (
        schema.get("properties").and_then(Value::as_object),
        value.as_object(),
    ) {
        for (k, s) in props {
            if let Some(v) = obj.get(k) {
                check(s, v, doc, &format!("{at}.{k}"));
            }
        }
    }
    if let (Some(extra), Some(obj)) = (schema.get("additionalProperties"), value.as_object()) {
        if extra.is_object() {
            for (k, v) in obj {
                check(extra, v, doc, &format!("{at}.{k}"));
            }
        }
    }
    if let (Some(items), Some(arr)) = (schema.get("items"), value.as_array()) {
        for (i, v) in arr.iter().enumerate() {
            check(items, v, doc, &format!("{at}[{i}]"));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_document_matches_the_router() {
    let text = include_str!("../openapi.yaml");
    let doc: Value = serde_yaml::from_str(text).expect("openapi.yaml is YAML");
    assert!(doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")));

    let (kafka, _) = common::fresh_topics().await;
    let ready = Readiness::default();
    let app = ingest::http::router(door(&kafka, ready.clone()));
    let mut dead_kafka = KafkaArgs::local("127.0.0.1:1", "nobroker.");
    dead_kafka.properties = vec!["message.timeout.ms=1500".into()];
    let dead_app = ingest::http::router(door(&dead_kafka, ready.clone()));

    let good = common::seed_event(json!({})).to_string();
    let evil = common::seed_event(json!({"tenantId": "evil"})).to_string();
    let ct = "application/json";
    // (path, method, status) → the request that must get it, and on which app.
    let samples: Vec<(&str, &str, u16, Request<Body>, bool)> = vec![
        (
            "/v1/events",
            "post",
            202,
            events(Some(TOKEN), ct, good.clone()),
            true,
        ),
        (
            "/v1/events",
            "post",
            400,
            events(Some(TOKEN), ct, "[{"),
            true,
        ),
        (
            "/v1/events",
            "post",
            401,
            events(None, ct, good.clone()),
            true,
        ),
        (
            "/v1/events",
            "post",
            403,
            events(Some(TOKEN), ct, evil),
            true,
        ),
        (
            "/v1/events",
            "post",
            413,
            events(Some(TOKEN), ct, "[{},{},{},{}]"),
            true,
        ),
        (
            "/v1/events",
            "post",
            415,
            events(Some(TOKEN), "text/csv", "a,b"),
            true,
        ),
        (
            "/v1/events",
            "post",
            422,
            events(Some(TOKEN), ct, "{\"x\": 1}"),
            true,
        ),
        (
            "/v1/events",
            "post",
            503,
            events(Some(TOKEN), ct, good.clone()),
            false,
        ),
        ("/v1/health", "get", 503, health(), true),
    ];
    // A body that starts and then never completes: 408 once the body timeout passes.
    let stalled = futures::stream::once(async { Ok::<_, std::io::Error>("[{".to_owned()) })
        .chain(futures::stream::pending());
    let samples = samples.into_iter().chain([(
        "/v1/events",
        "post",
        408,
        Request::post("/v1/events")
            .header("content-type", ct)
            .header("authorization", format!("Bearer {TOKEN}"))
            .body(Body::from_stream(stalled))
            .expect("request"),
        true,
    )]);
    let mut checked = BTreeSet::new();
    for (path, method, status, req, live) in samples {
        let app = if live { app.clone() } else { dead_app.clone() };
        run_sample(&doc, app, path, method, status, req).await;
        checked.insert((path.to_owned(), method.to_owned(), status));
    }
    // Samples that need state: the 429 after the slow token's one event, 200 once ready.
    let slow = || {
        events(
            Some(SLOW),
            "application/x-ndjson",
            format!("{good}\n{good}\n{good}\n"),
        )
    };
    let first = app.clone().oneshot(slow()).await.expect("answer");
    assert_eq!(first.status(), StatusCode::ACCEPTED);
    run_sample(&doc, app.clone(), "/v1/events", "post", 429, slow()).await;
    checked.insert(("/v1/events".into(), "post".into(), 429));
    ready.set(true);
    run_sample(&doc, app.clone(), "/v1/health", "get", 200, health()).await;
    checked.insert(("/v1/health".into(), "get".into(), 200));

    // Every documented (path, method, status) was sampled, and nothing else was.
    let mut documented = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for (method, op) in item.as_object().expect("path item") {
            for status in op["responses"].as_object().expect("responses").keys() {
                documented.insert((
                    path.clone(),
                    method.clone(),
                    status.parse::<u16>().expect("numeric status"),
                ));
            }
        }
    }
    assert_eq!(documented, checked);

    // An undocumented method on a documented path is refused by the router.
    let resp = app
        .clone()
        .oneshot(Request::get("/v1/events").body(Body::empty()).expect("req"))
        .await
        .expect("answer");
    assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED);
}

async fn run_sample(
    doc: &Value,
    app: axum::Router,
    path: &str,
    method: &str,
    status: u16,
    req: Request<Body>,
) {
    assert_eq!(req.uri().path(), path);
    assert!(req.method().as_str().eq_ignore_ascii_case(method));
    let resp = app.oneshot(req).await.expect("answer");
    let at = format!("{method} {path} {status}");
    assert_eq!(resp.status().as_u16(), status, "{at}");
    let spec = &doc["paths"][path][method]["responses"][status.to_string()];
    assert!(spec.is_object(), "{at} is documented");
    for name in spec
        .get("headers")
        .and_then(Value::as_object)
        .into_iter()
        .flat_map(|h| h.keys())
    {
        assert!(
            resp.headers().contains_key(name.as_str()),
            "{at}: header {name}"
        );
    }
    let ct = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .expect("body");
    let media = spec["content"]
        .as_object()
        .and_then(|c| c.get(ct.split(';').next().unwrap_or("")))
        .unwrap_or_else(|| panic!("{at}: content type {ct:?} documented"));
    let value: Value = serde_json::from_slice(&body).expect("JSON body");
    check(&media["schema"], &value, doc, &at);
}
