//! The HTTP front door end to end against the real broker (127.0.0.1:9092; FAILS when it is
//! absent): ingest's `run` with `--http-addr`, a real HTTP client, and the validated topic read
//! back. A 202 is sent after the broker acknowledged, so the events are on the topic when the
//! answer arrives; no polling is needed for them.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::*;
use reqwest::StatusCode;
use schemas::{identity, IngressChannel};
use serde_json::{json, Value};

const TOKEN: &str = "tok-acme-3b8f";
const TEAM_TOKEN: &str = "tok-acme-red-91c2";
const SLOW_TOKEN: &str = "tok-slow-77aa";

fn tokens() -> String {
    [
        token_entry(TOKEN, "acme", ""),
        token_entry(TEAM_TOKEN, "acme", "red"),
        token_entry(SLOW_TOKEN, "slowco", ""),
    ]
    .join(";")
}

async fn post(
    base: &str,
    token: Option<&str>,
    content_type: &str,
    body: impl Into<reqwest::Body>,
) -> (StatusCode, Value, reqwest::header::HeaderMap) {
    let mut req = reqwest::Client::new()
        .post(format!("{base}/v1/events"))
        .header("content-type", content_type)
        .body(body);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.expect("request");
    let status = resp.status();
    let headers = resp.headers().clone();
    let body: Value = resp.json().await.expect("JSON answer");
    (status, body, headers)
}

fn ids(body: &Value) -> Vec<(u64, String)> {
    body["accepted"]
        .as_array()
        .expect("accepted[]")
        .iter()
        .map(|a| {
            (
                a["index"].as_u64().expect("index"),
                a["eventId"].as_str().expect("eventId").to_owned(),
            )
        })
        .collect()
}

fn errors(body: &Value) -> Vec<(u64, u64, String, String)> {
    body["errors"]
        .as_array()
        .expect("errors[]")
        .iter()
        .map(|e| {
            (
                e["index"].as_u64().expect("index"),
                e["status"].as_u64().expect("status"),
                e["code"].as_str().expect("code").to_owned(),
                e["path"].as_str().expect("path").to_owned(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_are_validated_stamped_and_acknowledged() {
    let run = start_ingest(
        &tokens(),
        &[
            "--strict-labels=false",
            "--http-max-batch",
            "150",
            "--http-max-body-bytes",
            "262144",
            "--http-rate-per-sec",
            "0.01",
            "--http-rate-burst",
            "200",
        ],
    )
    .await;
    let base = run.base.clone();
    let json_ct = "application/json";

    // One event in seed 000's structure, with its own id.
    let one = seed_event(json!({"id": "evt-own-1", "requestId": "r1"}));
    let (status, body, _) = post(&base, Some(TOKEN), json_ct, one.to_string()).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(ids(&body), vec![(0, "evt-own-1".to_owned())]);
    assert!(errors(&body).is_empty());

    // An array: valid without id, invalid, another tenant, a flat event of the own tenant.
    let arr = json!([
        seed_event(json!({"requestId": "r2"})),
        seed_event(json!({"requestId": "r3", "timestamp": null})),
        seed_event(json!({"requestId": "r4", "tenantId": "evil"})),
        {"eventType": "login", "timestamp": "2024-01-15T10:31:00Z", "userId": "u9",
         "source": "portal", "tenantId": "acme", "requestId": "r5"},
    ]);
    let (status, body, _) = post(&base, Some(TOKEN), json_ct, arr.to_string()).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let accepted = ids(&body);
    assert_eq!(
        accepted.iter().map(|a| a.0).collect::<Vec<_>>(),
        vec![0, 3],
        "{body}"
    );
    let assigned = uuid::Uuid::parse_str(&accepted[0].1).expect("assigned id is a UUID");
    assert_eq!(
        assigned.get_version_num(),
        7,
        "UUIDv7 assigned at acceptance"
    );
    assert_eq!(
        errors(&body),
        vec![
            (1, 422, "missing_field".into(), "event.timestamp".into()),
            (2, 403, "tenant_mismatch".into(), "event.tenantId".into()),
        ]
    );

    // NDJSON with a broken line, invalid UTF-8 and a blank line; a team token.
    let mut nd = Vec::new();
    nd.extend_from_slice(
        seed_event(json!({"requestId": "r6"}))
            .to_string()
            .as_bytes(),
    );
    nd.extend_from_slice(b"\n{\"event\": {\"eventType\": \n\n");
    nd.extend_from_slice(b"{\"event\": \"\xff\xfe\"}\n");
    nd.extend_from_slice(
        seed_event(json!({"requestId": "r7", "teamId": "blue"}))
            .to_string()
            .as_bytes(),
    );
    nd.push(b'\n');
    let (status, body, _) = post(&base, Some(TEAM_TOKEN), "application/x-ndjson", nd).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(ids(&body).iter().map(|a| a.0).collect::<Vec<_>>(), vec![0]);
    assert_eq!(
        errors(&body),
        vec![
            (1, 422, "invalid_json".into(), String::new()),
            (2, 422, "not_utf8".into(), String::new()),
            (3, 403, "team_not_allowed".into(), "event.teamId".into()),
        ]
    );

    // Nothing accepted: 422, 403.
    let (status, body, _) = post(&base, Some(TOKEN), json_ct, "[1, {\"a\": 2}]").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(errors(&body)[0].2, "not_an_object");
    let evil = seed_event(json!({"tenantId": "evil"})).to_string();
    let (status, _, _) = post(&base, Some(TOKEN), json_ct, evil).await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    // A retry with the returned ids is the same event for the chainer's dedup.
    let retry = json!([seed_event(json!({"requestId": "r2", "id": accepted[0].1}))]);
    let (status, body, _) = post(&base, Some(TOKEN), json_ct, retry.to_string()).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(ids(&body)[0].1, accepted[0].1);

    // Whole-request errors.
    let (status, body, headers) = post(&base, None, json_ct, "{}").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["error"]["code"], "unauthorized");
    assert_eq!(headers["www-authenticate"], "Bearer");
    let (status, _, _) = post(&base, Some("wrong"), json_ct, "{}").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, body, _) = post(&base, Some(TOKEN), "text/plain", "{}").await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_eq!(body["error"]["code"], "unsupported_media_type");
    let (status, body, _) = post(&base, Some(TOKEN), json_ct, "[{\"a\":").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"]["code"], "invalid_body");
    let many = Value::Array(vec![json!({}); 151]).to_string();
    let (status, body, _) = post(&base, Some(TOKEN), json_ct, many).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(body["error"]["code"], "batch_too_large");
    let huge = format!("{{\"pad\": \"{}\"}}", "x".repeat(300_000));
    let (status, body, _) = post(&base, Some(TOKEN), json_ct, huge).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(body["error"]["code"], "body_too_large");

    // Rate limit: 200 events of burst, 0.01/s refill.
    let batch = |prefix: &str, n: usize| {
        Value::Array(
            (0..n)
                .map(|i| seed_event(json!({"requestId": format!("{prefix}{i}")})))
                .collect(),
        )
        .to_string()
    };
    let (status, body, _) = post(&base, Some(SLOW_TOKEN), json_ct, batch("s", 150)).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(ids(&body).len(), 150);
    let (status, body, headers) = post(&base, Some(SLOW_TOKEN), json_ct, batch("s", 100)).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert_eq!(body["error"]["code"], "rate_limited");
    let retry_after: u64 = headers["retry-after"]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("seconds");
    assert!(retry_after >= 1, "{retry_after}");
    // Another token's budget is its own.
    let (status, _, _) = post(&base, Some(TEAM_TOKEN), json_ct, batch("t", 1)).await;
    assert_eq!(status, StatusCode::ACCEPTED);

    // Health on the door's listener, once the Kafka pipeline is ready; metrics beside it.
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let r = client
            .get(format!("{base}/v1/health"))
            .send()
            .await
            .expect("health");
        let status = r.status();
        let body: Value = r.json().await.expect("health JSON");
        if status == StatusCode::OK {
            assert_eq!(body["status"], "ok");
            break;
        }
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body["ready"], false);
        assert!(Instant::now() < deadline, "never ready: {body}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let metrics = client
        .get(format!("{base}/metrics"))
        .send()
        .await
        .expect("metrics");
    assert_eq!(metrics.status(), StatusCode::OK);

    // What landed: exactly the accepted events, stamped, from the HTTP door; no dead letters.
    let kafka = run.kafka.clone();
    run.stop().await;
    let events = validated_events(&kafka).await;
    assert_eq!(
        events.len(),
        1 + 2 + 1 + 1 + 150 + 1,
        "one record per accepted item"
    );
    assert_eq!(count(&kafka, &kafka.topics().rejected).await, 0);
    let by_request: HashMap<&str, Vec<&schemas::AuditEvent>> =
        events.iter().fold(HashMap::new(), |mut m, e| {
            m.entry(e.request_id.as_deref().unwrap_or(""))
                .or_default()
                .push(e);
            m
        });
    for e in &events {
        assert_eq!(e.ingress.channel, IngressChannel::Http);
        assert_eq!(e.ingress.format, "json");
        assert_eq!(e.ingress.topic, None);
        assert!(e.tenant.tenant_id.is_some());
    }
    assert_eq!(by_request["r1"][0].event_id, "evt-own-1");
    assert_eq!(
        by_request["r1"][0].tenant.tenant_id.as_deref(),
        Some("acme")
    );
    assert_eq!(
        by_request["r5"][0].tenant.tenant_id.as_deref(),
        Some("acme")
    );
    let r6 = by_request["r6"][0];
    assert_eq!(
        r6.tenant.team_id.as_deref(),
        Some("red"),
        "the token's one team"
    );
    assert_eq!(
        by_request["s0"][0].tenant.tenant_id.as_deref(),
        Some("slowco")
    );
    // The first delivery and the retry of r2: same id, same dedup key and content.
    let r2 = &by_request["r2"];
    assert_eq!(r2.len(), 2);
    assert_eq!(r2[0].event_id, accepted[0].1);
    assert_eq!(r2[1].event_id, accepted[0].1);
    assert_eq!(
        identity::namespace(r2[0]),
        identity::IdNamespace::Door(IngressChannel::Http)
    );
    assert_eq!(identity::dedup_key(r2[0]), identity::dedup_key(r2[1]));
    assert_eq!(
        identity::content_digest(r2[0]).expect("digest"),
        identity::content_digest(r2[1]).expect("digest")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_labels_apply_to_the_http_door() {
    let run = start_ingest(&tokens(), &["--strict-labels=true"]).await;
    let body = json!([
        seed_event(json!({"category": "ai_processing"})),
        seed_event(json!({"category": "governance"})),
    ]);
    let (status, body, _) =
        post(&run.base, Some(TOKEN), "application/json", body.to_string()).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(ids(&body).iter().map(|a| a.0).collect::<Vec<_>>(), vec![1]);
    assert_eq!(
        errors(&body),
        vec![(0, 422, "invalid_value".into(), "event.category".into())]
    );
    run.stop().await;
}

async fn post_with_key(
    base: &str,
    key: &str,
    body: &Value,
) -> (StatusCode, Value, reqwest::header::HeaderMap) {
    let resp = reqwest::Client::new()
        .post(format!("{base}/v1/events"))
        .header("content-type", "application/json")
        .header("idempotency-key", key)
        .bearer_auth(TOKEN)
        .body(body.to_string())
        .send()
        .await
        .expect("request");
    let status = resp.status();
    let headers = resp.headers().clone();
    (status, resp.json().await.expect("JSON answer"), headers)
}

/// A 503 item may still be stored by the broker; a caller that retries the whole request
/// unchanged with its `Idempotency-Key` must not create a second event. The door gives the
/// retry's id-less items the same ids, so the chainer's dedup sees one event each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotency_key_gives_a_retried_request_the_same_ids() {
    let run = start_ingest(&tokens(), &["--strict-labels=false"]).await;
    let base = run.base.clone();
    let batch = json!([
        seed_event(json!({"requestId": "k1"})),
        seed_event(json!({"requestId": "k2", "id": "evt-own-k2"})),
        seed_event(json!({"requestId": "k3"})),
    ]);

    let (status, first, _) = post_with_key(&base, "\"order-7731\"", &batch).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{first}");
    let first = ids(&first);
    assert_eq!(first.len(), 3);
    assert_eq!(first[1].1, "evt-own-k2", "the caller's own id is kept");
    assert_ne!(
        first[0].1, first[2].1,
        "items of one request get their own ids"
    );
    assert_eq!(
        uuid::Uuid::parse_str(&first[0].1)
            .expect("UUID")
            .get_version_num(),
        5,
        "derived from token, key and index"
    );

    // The same request, the same key (bare this time: the same key): the same ids.
    let (status, again, _) = post_with_key(&base, "order-7731", &batch).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{again}");
    assert_eq!(ids(&again), first);

    // Another key: other ids. A key that is not printable ASCII or too long: refused whole.
    let (_, other, _) = post_with_key(&base, "order-7732", &batch).await;
    let other = ids(&other);
    assert_ne!(other[0].1, first[0].1);
    assert_ne!(other[2].1, first[2].1);
    for bad in ["\"\"".to_owned(), "k".repeat(256), "caf\u{e9}".to_owned()] {
        let resp = reqwest::Client::new()
            .post(format!("{base}/v1/events"))
            .header("content-type", "application/json")
            .header(
                "idempotency-key",
                reqwest::header::HeaderValue::from_bytes(bad.as_bytes()).expect("header"),
            )
            .bearer_auth(TOKEN)
            .body(batch.to_string())
            .send()
            .await
            .expect("request");
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "{bad:?}");
        let body: Value = resp.json().await.expect("JSON");
        assert_eq!(body["error"]["code"], "invalid_idempotency_key");
    }

    // On the topic: 9 records, and the retry's records are the first's duplicates for the
    // chainer (same dedup key, same content digest).
    let kafka = run.kafka.clone();
    run.stop().await;
    let events = validated_events(&kafka).await;
    assert_eq!(events.len(), 9);
    for (request, id) in [("k1", &first[0].1), ("k3", &first[2].1)] {
        let mut keys: HashMap<_, Vec<&schemas::AuditEvent>> = HashMap::new();
        for e in events
            .iter()
            .filter(|e| e.request_id.as_deref() == Some(request))
        {
            keys.entry(identity::dedup_key(e)).or_default().push(e);
        }
        assert_eq!(keys.len(), 2, "{request}: the two keys' events");
        let twice: Vec<_> = keys.values().filter(|v| v.len() == 2).collect();
        assert_eq!(twice.len(), 1, "{request}: the retried event, twice");
        let (a, b) = (twice[0][0], twice[0][1]);
        assert_eq!(&a.event_id, id);
        assert_eq!(
            identity::content_digest(a).expect("digest"),
            identity::content_digest(b).expect("digest")
        );
    }
}

/// What Python's own HTTP client (`http.client`, a third party to this code) sees when it
/// sends `size` bytes of JSON to the door: `(status, error code)`, or the client-side error
/// (e.g. "BrokenPipeError") if the door hung up while the body was still being sent.
fn python_post(base: &str, size: usize, chunked: bool) -> Result<(u16, String), String> {
    const SCRIPT: &str = r#"
import http.client, json, sys, urllib.parse
base, token, size, chunked = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4] == "1"
u = urllib.parse.urlsplit(base)
c = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
body = b'{"pad": "' + b"x" * size + b'"}'
headers = {"Authorization": "Bearer " + token, "Content-Type": "application/json"}
try:
    if chunked:
        parts = (body[i:i + 65536] for i in range(0, len(body), 65536))
        c.request("POST", "/v1/events", body=parts, headers=headers, encode_chunked=True)
    else:
        c.request("POST", "/v1/events", body=body, headers=headers)
    r = c.getresponse()
    print(json.dumps({"status": r.status, "body": r.read().decode()}))
except Exception as e:
    print(json.dumps({"error": type(e).__name__ + ": " + str(e)}))
"#;
    let out = std::process::Command::new("python3")
        .args(["-c", SCRIPT, base, TOKEN, &size.to_string()])
        .arg(if chunked { "1" } else { "0" })
        .output()
        .expect("python3");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "python output {e}: {} {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    if let Some(e) = v["error"].as_str() {
        return Err(e.to_owned());
    }
    let body: Value = serde_json::from_str(v["body"].as_str().unwrap_or("")).unwrap_or(Value::Null);
    Ok((
        v["status"].as_u64().unwrap_or(0) as u16,
        body["error"]["code"].as_str().unwrap_or("").to_owned(),
    ))
}

/// A body well over the limit gets its 413 with the `body_too_large` code, not a connection
/// torn down under the sender: the door reads and discards a bounded overshoot before
/// answering, whether the size was declared (Content-Length) or streamed (chunked).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversize_body_gets_its_413_not_a_broken_pipe() {
    let run = start_ingest(&tokens(), &["--http-max-body-bytes", "262144"]).await;
    for chunked in [false, true] {
        for size in [300_000, 8 << 20] {
            let got = python_post(&run.base, size, chunked);
            assert_eq!(
                got,
                Ok((413, "body_too_large".to_owned())),
                "{size} bytes, chunked {chunked}"
            );
        }
    }
    run.stop().await;
}

/// A sender that trickles a normal-size body (here: declares 1,000 bytes, sends 10 and stalls)
/// gets 408 `body_timeout` after `--http-body-timeout-secs` and the door closes the
/// connection, instead of holding it open for as long as the sender likes. Driven from
/// Python's socket module (a third-party client that can stall mid-body).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickled_body_gets_408_and_the_connection_closes() {
    let run = start_ingest(&tokens(), &["--http-body-timeout-secs", "1"]).await;
    const SCRIPT: &str = r#"
import json, socket, sys, urllib.parse
base, token = sys.argv[1], sys.argv[2]
u = urllib.parse.urlsplit(base)
s = socket.create_connection((u.hostname, u.port), timeout=60)
s.sendall(("POST /v1/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + token +
           "\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n").encode())
s.sendall(b'{"pad": "xx')
data = b""
while True:
    chunk = s.recv(65536)
    if not chunk:
        break
    data += chunk
head, _, body = data.partition(b"\r\n\r\n")
status = int(head.split(b" ")[1])
closed = b"connection: close" in head.lower()
print(json.dumps({"status": status, "closed": closed, "body": body.decode(errors="replace")}))
"#;
    let base = run.base.clone();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("python3")
            .args(["-c", SCRIPT, &base, TOKEN])
            .output()
            .expect("python3")
    })
    .await
    .expect("join");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "python output {e}: {} {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert_eq!(v["status"], 408, "{v}");
    assert_eq!(v["closed"], true, "{v}");
    let body = v["body"].as_str().unwrap_or("");
    // The body may be chunk-framed; the code is in it either way.
    assert!(body.contains("\"body_timeout\""), "{v}");
    // The door still serves well-behaved senders.
    let (status, _, _) = post(&run.base, Some(TOKEN), "application/json", "[]").await;
    assert_ne!(status, StatusCode::REQUEST_TIMEOUT);
    run.stop().await;
}
