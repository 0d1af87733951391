//! The HTTP front door: `POST /v1/events` (one event, a JSON array, or NDJSON) and
//! `GET /v1/health`, documented in `ingest/openapi.yaml`.
//!
//! Every item goes through the same gate as Kafka input ([`validate_raw`], i.e. the JSON mapping
//! and `schemas::validate`, with `--strict-labels`), then the caller's tenant is checked and
//! stamped, and the valid items are produced to `<prefix>validated` (ingress channel `HTTP`). The
//! answer is sent only after the broker acknowledged them, so a 202 means "durable".
//!
//! Event ids: the caller's id is kept; an item without one gets an id assigned here and
//! returned. Both live in the chainer's "door" id namespace (`schemas::identity`: channel +
//! `source_component` + id), so a caller that retries with the returned ids sends idempotent
//! duplicates, which the chainer drops. A 503 (`not_delivered`) does not mean "not written":
//! the broker may still store an event whose acknowledgement came too late, so an id-less item
//! retried as it was would be chained twice under two ids. Two ways out, both idempotent:
//! retry with the returned `eventId`s, or send an `Idempotency-Key` header (IETF
//! draft-ietf-httpapi-idempotency-key-header): the ids of id-less items are then UUIDv5s of
//! (token, key, item index) ([`idempotent_event_id`]) instead of fresh UUIDv7s, so the same
//! request retried with the same key carries the same ids.
//!
//! Authentication: `Authorization: Bearer <token>`. Ingest holds only SHA-256 hashes of the
//! tokens ([`TokenTable`]); each maps to a tenant (and optionally teams). An event naming another
//! tenant (or a team the token does not hold) is rejected (403 for that item), never rewritten;
//! an event naming none gets the token's tenant (and its team when the token has exactly one).
//!
//! The health routes of `worker_runtime::health` (`/healthz`, `/readyz`, `/metrics`) are served
//! on this listener too, besides the worker's own `--health-addr` server.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use futures::StreamExt;
use schemas::framing::{self, Framing, SchemaIdResolver};
use schemas::json::JsonLimits;
use schemas::{AuditEvent, Ingress, IngressChannel};
use serde::Serialize;
use sha2::{Digest, Sha256};
use worker_runtime::health::{self, Readiness};
use worker_runtime::kafka::producer::await_delivery;
use worker_runtime::kafka::trace_context::{self, KeyValue};
use worker_runtime::kafka::{OutputRecord, Producer};

use crate::processor::partition_key;
use crate::validate::{validate_raw, Rejection, ValidationContext};

/// Item and request error codes this door adds to the validation codes.
pub mod codes {
    /// The event names a tenant other than the token's.
    pub const TENANT_MISMATCH: &str = "tenant_mismatch";
    /// The event names a team the token does not hold.
    pub const TEAM_NOT_ALLOWED: &str = "team_not_allowed";
    /// The broker did not acknowledge the event; retry it with the same id.
    pub const NOT_DELIVERED: &str = "not_delivered";
    pub const UNAUTHORIZED: &str = "unauthorized";
    pub const BODY_TOO_LARGE: &str = "body_too_large";
    pub const BATCH_TOO_LARGE: &str = "batch_too_large";
    pub const INVALID_BODY: &str = "invalid_body";
    /// The body did not arrive within `--http-body-timeout-secs`.
    pub const BODY_TIMEOUT: &str = "body_timeout";
    pub const UNSUPPORTED_MEDIA_TYPE: &str = "unsupported_media_type";
    pub const RATE_LIMITED: &str = "rate_limited";
    /// The `Idempotency-Key` header is empty, too long, or not printable ASCII.
    pub const INVALID_IDEMPOTENCY_KEY: &str = "invalid_idempotency_key";
}

/// UUIDv5 namespace of the ids of id-less items sent with an `Idempotency-Key`.
pub const IDEMPOTENCY_ID_NAMESPACE: uuid::Uuid =
    uuid::Uuid::from_u128(0x8b2f_61c4_0d9e_4a7b_b3e5_5c18_f2a6_d047);

/// The longest `Idempotency-Key` taken (the draft leaves the length to the server).
pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 255;

/// The id of item `index` of a request sent with `Idempotency-Key: key` under the token whose
/// hash is `token_hash`: the same for every retry of that request, different across tokens,
/// keys and items.
pub fn idempotent_event_id(token_hash: &[u8; 32], key: &str, index: usize) -> String {
    let mut name = Vec::with_capacity(32 + key.len() + 24);
    name.extend_from_slice(token_hash);
    name.extend_from_slice(&(key.len() as u64).to_be_bytes());
    name.extend_from_slice(key.as_bytes());
    name.extend_from_slice(&(index as u64).to_be_bytes());
    uuid::Uuid::new_v5(&IDEMPOTENCY_ID_NAMESPACE, &name).to_string()
}

/// The `Idempotency-Key` of a request: `None` when absent, `Err` with the reason when present
/// but unusable. The draft's form is a structured-field string (`"…"`); a bare token is taken
/// too, as most clients send one.
pub fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, String> {
    let Some(v) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let raw = v
        .to_str()
        .map_err(|_| "Idempotency-Key must be printable ASCII".to_owned())?
        .trim();
    let key = match raw.strip_prefix('"').and_then(|r| r.strip_suffix('"')) {
        Some(inner) => inner,
        None => raw,
    };
    if key.is_empty() || key.len() > MAX_IDEMPOTENCY_KEY_LEN {
        return Err(format!(
            "Idempotency-Key must hold 1 to {MAX_IDEMPOTENCY_KEY_LEN} characters"
        ));
    }
    if !key.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        return Err("Idempotency-Key must be printable ASCII".to_owned());
    }
    Ok(Some(key.to_owned()))
}

/// How the ids of id-less items of one request are made.
#[derive(Debug, Clone, Copy)]
pub enum ItemIds<'a> {
    /// A fresh UUIDv7 per item.
    Fresh,
    /// [`idempotent_event_id`] of the request's token and key.
    Idempotent {
        token_hash: &'a [u8; 32],
        key: &'a str,
    },
}

impl ItemIds<'_> {
    fn id(&self, index: usize) -> String {
        match self {
            ItemIds::Fresh => uuid::Uuid::now_v7().to_string(),
            ItemIds::Idempotent { token_hash, key } => idempotent_event_id(token_hash, key, index),
        }
    }
}

/// Errors loading the door's configuration.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("reading the token file {path}: {source}")]
    TokenFile {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("token entry {entry:?}: {reason}")]
    TokenEntry { entry: String, reason: String },
    #[error("the HTTP door or --otlp-require-token needs bearer tokens, but none is configured (--http-tokens-file, --http-tokens / AUDIT_INGEST_HTTP_TOKENS)")]
    NoTokens,
    #[error("binding the HTTP door on {addr}: {source}")]
    Bind {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("serving the HTTP door on {addr}: {source}")]
    Serve {
        addr: String,
        #[source]
        source: std::io::Error,
    },
}

/// Who a token speaks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub tenant: String,
    /// Teams the token may write for; empty = any team of the tenant.
    pub teams: Vec<String>,
}

/// SHA-256 of a bearer token: what the token table stores instead of the token.
pub fn token_hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Token hash → principal. Entries are `sha256:<64 hex> <tenant> [team1,team2]` (file: one per
/// line, `#` comments; environment: separated by `;`). Only hashes are ever configured, so
/// neither the config nor a dump of this table reveals a token
/// (`printf %s "$TOKEN" | sha256sum` gives the hex).
#[derive(Debug, Clone, Default)]
pub struct TokenTable(HashMap<[u8; 32], Arc<Principal>>);

impl TokenTable {
    /// Parses entries from `text` separated by newlines or `;`.
    pub fn parse(text: &str) -> Result<Self, HttpError> {
        let mut table = HashMap::new();
        for raw in text.split(['\n', ';']) {
            let entry = raw.split('#').next().unwrap_or("").trim();
            if entry.is_empty() {
                continue;
            }
            let bad = |reason: &str| HttpError::TokenEntry {
                // Only the hash is in an entry, so echoing it is safe.
                entry: entry.to_owned(),
                reason: reason.to_owned(),
            };
            let mut parts = entry.split_whitespace();
            let hash = parts.next().unwrap_or("");
            let hex_hash = hash
                .strip_prefix("sha256:")
                .ok_or_else(|| bad("the token must be given as sha256:<hex of its SHA-256>"))?;
            let mut digest = [0u8; 32];
            hex::decode_to_slice(hex_hash, &mut digest)
                .map_err(|_| bad("sha256: needs 64 hex digits"))?;
            let tenant = parts
                .next()
                .filter(|t| !t.is_empty())
                .ok_or_else(|| bad("missing tenant"))?;
            let teams: Vec<String> = parts
                .next()
                .map(|t| {
                    t.split(',')
                        .filter(|s| !s.is_empty())
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default();
            if parts.next().is_some() {
                return Err(bad("expected `sha256:<hex> <tenant> [team,…]`"));
            }
            let principal = Principal {
                tenant: tenant.to_owned(),
                teams,
            };
            if table.insert(digest, Arc::new(principal)).is_some() {
                return Err(bad("the same token hash is listed twice"));
            }
        }
        Ok(TokenTable(table))
    }

    /// The file's entries, then the environment's (`inline`).
    pub fn load(file: Option<&Path>, inline: &str) -> Result<Self, HttpError> {
        let mut text = String::new();
        if let Some(path) = file {
            text = std::fs::read_to_string(path).map_err(|source| HttpError::TokenFile {
                path: path.display().to_string(),
                source,
            })?;
            text.push('\n');
        }
        text.push_str(inline);
        Self::parse(&text)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// The principal of `token`, with the token's hash (the rate limiter's key).
    pub fn lookup(&self, token: &str) -> Option<([u8; 32], Arc<Principal>)> {
        let h = token_hash(token);
        self.0.get(&h).map(|p| (h, Arc::clone(p)))
    }
}

/// Per-token token buckets counted in events: `rate` per second, up to `burst` saved.
#[derive(Debug)]
pub struct RateLimiter {
    rate: f64,
    burst: f64,
    buckets: Mutex<HashMap<[u8; 32], (f64, Instant)>>,
}

impl RateLimiter {
    /// `rate` ≤ 0 disables limiting.
    pub fn new(rate: f64, burst: f64) -> Self {
        RateLimiter {
            rate,
            burst: burst.max(1.0),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes `n` events from `key`'s bucket at `now`; if they are not there, takes nothing and
    /// says how long until they are (a batch larger than the burst waits for a full bucket and
    /// is then let through, so it is never refused forever).
    pub fn take(&self, key: [u8; 32], n: usize, now: Instant) -> Result<(), Duration> {
        if self.rate <= 0.0 || n == 0 {
            return Ok(());
        }
        let need = (n as f64).min(self.burst);
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        let (tokens, last) = buckets.entry(key).or_insert((self.burst, now));
        let elapsed = now.saturating_duration_since(*last).as_secs_f64();
        *tokens = (*tokens + elapsed * self.rate).min(self.burst);
        *last = now;
        if *tokens >= need {
            *tokens -= need;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((need - *tokens) / self.rate))
        }
    }
}

/// The door's limits.
#[derive(Debug, Clone)]
pub struct DoorLimits {
    pub max_body_bytes: usize,
    pub max_batch: usize,
    /// How long a whole request body may take to arrive (`--http-body-timeout-secs`).
    pub body_timeout: std::time::Duration,
}

/// Shared state of the HTTP door.
pub struct Door {
    pub producer: Producer,
    pub validated_topic: String,
    pub limits: JsonLimits,
    pub strict_labels: bool,
    pub resolver: Arc<dyn SchemaIdResolver>,
    pub tokens: TokenTable,
    pub limiter: RateLimiter,
    pub door_limits: DoorLimits,
    pub ready: Readiness,
}

impl std::fmt::Debug for Door {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Door")
            .field("validated_topic", &self.validated_topic)
            .field("tokens", &self.tokens.len())
            .field("door_limits", &self.door_limits)
            .finish_non_exhaustive()
    }
}

/// The HTTP app: the door's routes plus the worker's health routes.
pub fn router(door: Arc<Door>) -> Router {
    let ready = door.ready.clone();
    Router::new()
        .route("/v1/events", post(post_events))
        .route("/v1/health", get(get_health))
        .with_state(door)
        .merge(health::router(ready))
}

/// Serves [`router`] on `listener` until `shutdown`; in-flight requests finish first (their
/// events are acknowledged or reported before the answer).
pub async fn serve(
    listener: tokio::net::TcpListener,
    door: Arc<Door>,
    shutdown: worker_runtime::Shutdown,
) -> Result<(), HttpError> {
    let addr = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    tracing::info!(%addr, "HTTP door listening");
    axum::serve(listener, router(door))
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
        .map_err(|source| HttpError::Serve { addr, source })
}

// ---- responses ---------------------------------------------------------------------------------

/// A whole-request error body: `{"error": {"code", "message"}}`.
#[derive(Debug, Serialize)]
struct ErrorBody<'a> {
    error: ErrorDetail<'a>,
}

#[derive(Debug, Serialize)]
struct ErrorDetail<'a> {
    code: &'a str,
    message: String,
}

fn request_error(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    metrics::counter!("audit_ingest_http_requests_total", "status" => status.as_u16().to_string())
        .increment(1);
    let body = ErrorBody {
        error: ErrorDetail {
            code,
            message: message.into(),
        },
    };
    (status, axum::Json(body)).into_response()
}

/// One accepted item.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct AcceptedItem {
    pub index: usize,
    pub event_id: String,
}

/// One rejected item: its index in the request, an HTTP status for the item (422 invalid,
/// 403 tenant/team, 503 not delivered), the reason code and the JSON path of the problem.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ItemError {
    pub index: usize,
    pub status: u16,
    pub code: String,
    pub path: String,
    pub message: String,
}

/// The `POST /v1/events` answer body (every status but the whole-request errors).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct EventsResponse {
    pub accepted: Vec<AcceptedItem>,
    pub errors: Vec<ItemError>,
}

impl EventsResponse {
    /// 202 if anything was accepted; otherwise 403 when every item was refused for its tenant
    /// or team, 503 when any was valid but not delivered, else 422.
    pub fn status(&self) -> StatusCode {
        if !self.accepted.is_empty() {
            StatusCode::ACCEPTED
        } else if self.errors.iter().any(|e| e.status == 503) {
            StatusCode::SERVICE_UNAVAILABLE
        } else if !self.errors.is_empty() && self.errors.iter().all(|e| e.status == 403) {
            StatusCode::FORBIDDEN
        } else {
            StatusCode::UNPROCESSABLE_ENTITY
        }
    }
}

// ---- handlers ----------------------------------------------------------------------------------

#[derive(Debug, Serialize)]
struct HealthBody {
    status: &'static str,
    ready: bool,
    checks: std::collections::BTreeMap<String, health::Check>,
}

async fn get_health(State(door): State<Arc<Door>>) -> Response {
    let report = door.ready.report();
    let (status, text) = if report.ready {
        (StatusCode::OK, "ok")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "unavailable")
    };
    let body = HealthBody {
        status: text,
        ready: report.ready,
        checks: report.checks,
    };
    (status, axum::Json(body)).into_response()
}

/// How the body is split into items.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    Json,
    Ndjson,
}

/// The body kind named by `Content-Type` (parameters such as `charset` are ignored).
pub fn body_kind(content_type: Option<&HeaderValue>) -> Option<BodyKind> {
    let ct = content_type?.to_str().ok()?;
    let mime = ct.split(';').next()?.trim().to_ascii_lowercase();
    match mime.as_str() {
        "application/json" => Some(BodyKind::Json),
        "application/x-ndjson" | "application/ndjson" | "application/jsonl" => {
            Some(BodyKind::Ndjson)
        }
        _ => None,
    }
}

/// Why a body could not be split into items.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SplitError {
    /// Not one JSON object or array (400).
    Invalid(String),
    /// More items than `max_batch` (413).
    TooMany(usize),
}

/// Splits a body into item byte slices. JSON: one object (the whole body is the item, so its
/// own errors are reported as item 0) or an array of items; NDJSON: one item per non-blank line
/// (a bad line is that item's error, not the request's).
pub fn split_items(
    body: &[u8],
    kind: BodyKind,
    max_batch: usize,
) -> Result<Vec<&[u8]>, SplitError> {
    let items: Vec<&[u8]> = match kind {
        BodyKind::Ndjson => body
            .split(|b| *b == b'\n')
            .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
            .filter(|l| l.iter().any(|b| !b.is_ascii_whitespace()))
            .collect(),
        BodyKind::Json => {
            let first = body.iter().find(|b| !b.is_ascii_whitespace());
            match first {
                Some(b'{') => vec![body],
                Some(b'[') => {
                    let text = std::str::from_utf8(body).map_err(|e| {
                        SplitError::Invalid(format!("invalid UTF-8 at byte {}", e.valid_up_to()))
                    })?;
                    let raw: Vec<&serde_json::value::RawValue> = serde_json::from_str(text)
                        .map_err(|e| SplitError::Invalid(format!("not a JSON array: {e}")))?;
                    raw.into_iter().map(|r| r.get().as_bytes()).collect()
                }
                Some(_) => {
                    return Err(SplitError::Invalid(
                        "expected one JSON object or an array of them".into(),
                    ))
                }
                None => return Err(SplitError::Invalid("empty body".into())),
            }
        }
    };
    if items.is_empty() {
        return Err(SplitError::Invalid("no events in the body".into()));
    }
    if items.len() > max_batch {
        return Err(SplitError::TooMany(items.len()));
    }
    Ok(items)
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    bearer_value(headers.get(header::AUTHORIZATION)?.to_str().ok()?)
}

/// The token of an `Authorization: Bearer <token>` value.
pub fn bearer_value(v: &str) -> Option<&str> {
    let (scheme, token) = v.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// Reads the whole body, at most `limit` bytes and `timeout` long: a sender trickling a
/// normal-size body gets 408 and the connection closes (an oversize one is bounded by
/// [`drain_oversize`]).
async fn read_body(
    body: Body,
    limit: usize,
    timeout: std::time::Duration,
) -> Result<Vec<u8>, Response> {
    let read = async {
        let mut out = Vec::new();
        let mut stream = body.into_data_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| {
                request_error(
                    StatusCode::BAD_REQUEST,
                    codes::INVALID_BODY,
                    format!("reading the body: {e}"),
                )
            })?;
            if out.len() + chunk.len() > limit {
                return Err(drain_then_too_large(stream, out.len() + chunk.len(), limit).await);
            }
            out.extend_from_slice(&chunk);
        }
        Ok(out)
    };
    match tokio::time::timeout(timeout, read).await {
        Ok(read) => read,
        Err(_) => Err(closing(request_error(
            StatusCode::REQUEST_TIMEOUT,
            codes::BODY_TIMEOUT,
            format!(
                "the request body did not arrive within {} s (--http-body-timeout-secs)",
                timeout.as_secs()
            ),
        ))),
    }
}

/// How far past the limit an oversize body is read (and thrown away) before the 413: a client
/// still sending when the door answers and hangs up sees a broken pipe instead of the 413
/// (Python's http.client, curl), and never learns why. Beyond this the door stops reading and
/// answers with `Connection: close` (the bound keeps a huge body from costing more than this
/// much input).
const OVERSIZE_DRAIN_BYTES: usize = 16 << 20;

/// Reads the rest of an oversize body (up to [`OVERSIZE_DRAIN_BYTES`] past the limit, `seen`
/// bytes already read) and answers 413; past the bound, 413 with `Connection: close`.
async fn drain_then_too_large(
    stream: axum::body::BodyDataStream,
    seen: usize,
    limit: usize,
) -> Response {
    let resp = body_too_large(limit);
    if drain_oversize(stream, seen, limit).await {
        resp
    } else {
        closing(resp)
    }
}

/// Reads and discards the rest of an oversize body, at most [`OVERSIZE_DRAIN_BYTES`] past
/// `limit` (`seen` bytes already read): `true` if it ended (or broke off) within that bound,
/// `false` if the door stopped reading (answer with [`closing`]). Shared by the OTLP door.
pub(crate) async fn drain_oversize(
    mut stream: axum::body::BodyDataStream,
    mut seen: usize,
    limit: usize,
) -> bool {
    let bound = limit.saturating_add(OVERSIZE_DRAIN_BYTES);
    let drain = async {
        while seen <= bound {
            match stream.next().await {
                Some(Ok(chunk)) => seen = seen.saturating_add(chunk.len()),
                Some(Err(_)) | None => return true,
            }
        }
        false
    };
    // A sender trickling its oversize body does not hold the request open for long: past
    // this, the door answers and closes as for a body past the byte bound.
    tokio::time::timeout(OVERSIZE_DRAIN_TIME, drain)
        .await
        .unwrap_or(false)
}

/// How long an oversize body is drained at most (see [`OVERSIZE_DRAIN_BYTES`]).
const OVERSIZE_DRAIN_TIME: std::time::Duration = std::time::Duration::from_secs(10);

/// `resp` with `Connection: close` (the rest of the request body is not read).
pub(crate) fn closing(mut resp: Response) -> Response {
    resp.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    resp
}

fn body_too_large(limit: usize) -> Response {
    request_error(
        StatusCode::PAYLOAD_TOO_LARGE,
        codes::BODY_TOO_LARGE,
        format!("the body is larger than {limit} bytes"),
    )
}

async fn post_events(State(door): State<Arc<Door>>, headers: HeaderMap, body: Body) -> Response {
    let Some((key, principal)) = bearer(&headers).and_then(|t| door.tokens.lookup(t)) else {
        let mut resp = request_error(
            StatusCode::UNAUTHORIZED,
            codes::UNAUTHORIZED,
            "a valid `Authorization: Bearer <token>` is required",
        );
        resp.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return resp;
    };
    let Some(kind) = body_kind(headers.get(header::CONTENT_TYPE)) else {
        return request_error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            codes::UNSUPPORTED_MEDIA_TYPE,
            "Content-Type must be application/json or application/x-ndjson",
        );
    };
    let idempotency = match idempotency_key(&headers) {
        Ok(k) => k,
        Err(m) => return request_error(StatusCode::BAD_REQUEST, codes::INVALID_IDEMPOTENCY_KEY, m),
    };
    let ids = match &idempotency {
        Some(k) => ItemIds::Idempotent {
            token_hash: &key,
            key: k,
        },
        None => ItemIds::Fresh,
    };
    let limit = door.door_limits.max_body_bytes;
    // Refuse a declared oversize body before reading it.
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if let Some(n) = declared.filter(|&n| n > limit) {
        // Read a bounded overshoot first (see `OVERSIZE_DRAIN_BYTES`), so the sender gets
        // the answer rather than a broken pipe; a declared size past the bound is refused
        // without reading it.
        if n - limit > OVERSIZE_DRAIN_BYTES {
            return closing(body_too_large(limit));
        }
        return drain_then_too_large(body.into_data_stream(), 0, limit).await;
    }
    let bytes = match read_body(body, limit, door.door_limits.body_timeout).await {
        Ok(b) => b,
        Err(resp) => return resp,
    };
    let items = match split_items(&bytes, kind, door.door_limits.max_batch) {
        Ok(items) => items,
        Err(SplitError::Invalid(m)) => {
            return request_error(StatusCode::BAD_REQUEST, codes::INVALID_BODY, m)
        }
        Err(SplitError::TooMany(n)) => {
            return request_error(
                StatusCode::PAYLOAD_TOO_LARGE,
                codes::BATCH_TOO_LARGE,
                format!("{n} events, limit {}", door.door_limits.max_batch),
            )
        }
    };
    if let Err(wait) = door.limiter.take(key, items.len(), Instant::now()) {
        let secs = wait.as_secs_f64().ceil().max(1.0) as u64;
        let mut resp = request_error(
            StatusCode::TOO_MANY_REQUESTS,
            codes::RATE_LIMITED,
            format!("rate limit exceeded; retry in {secs} s"),
        );
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        return resp;
    }
    // The caller's `traceparent` (if any) is the parent of this request's span, and so of
    // every record it produces.
    let span = trace_context::server_span(
        crate::processor::STAGE,
        "POST /v1/events",
        headers.get("traceparent").map(HeaderValue::as_bytes),
        headers.get("tracestate").map(HeaderValue::as_bytes),
    );
    let response =
        trace_context::in_span(&span, accept_items(&door, &principal, &items, ids)).await;
    let status = response.status();
    span.set_attribute(|| KeyValue::new("http.response.status_code", i64::from(status.as_u16())));
    span.end();
    metrics::counter!("audit_ingest_http_requests_total", "status" => status.as_u16().to_string())
        .increment(1);
    (status, axum::Json(response)).into_response()
}

/// Validates, stamps and produces `items`; answers after the broker acknowledged them.
pub async fn accept_items(
    door: &Door,
    principal: &Principal,
    items: &[&[u8]],
    ids: ItemIds<'_>,
) -> EventsResponse {
    let receive_time_us = now_us();
    let mut errors = Vec::new();
    let mut pending = Vec::new();
    for (index, bytes) in items.iter().enumerate() {
        match door.check_item_with_id(bytes, principal, receive_time_us, ids.id(index)) {
            Ok(event) => match door.record(&event) {
                Ok(record) => {
                    // The trace the event names in its own fields, linked from its send span.
                    let link = trace_context::enabled()
                        .then(|| {
                            trace_context::remote_span_context(
                                event.trace.trace_id.as_deref(),
                                event.trace.span_id.as_deref(),
                            )
                        })
                        .flatten();
                    pending.push((index, event.event_id, record, link))
                }
                Err(r) => errors.push(item_error(index, 422, &r)),
            },
            Err((status, r)) => {
                metrics::counter!("audit_ingest_rejected_total", "channel" => "http", "code" => r.code)
                    .increment(1);
                errors.push(item_error(index, status, &r));
            }
        }
    }
    // Enqueue all, then wait for all: the broker batches them, and the answer waits for the
    // slowest acknowledgement.
    let mut deliveries = Vec::with_capacity(pending.len());
    let request = trace_context::current();
    for (index, id, mut record, link) in pending {
        let send = trace_context::send_span(
            crate::processor::STAGE,
            &request,
            &door.validated_topic,
            None,
        );
        if let Some(sc) = link {
            send.add_link(sc, "event_trace");
        }
        send.inject(&mut record.headers);
        let d = door.producer.enqueue(&record).await;
        send.end_with(&d);
        deliveries.push((index, id, d));
    }
    let mut accepted = Vec::with_capacity(deliveries.len());
    for (index, event_id, d) in deliveries {
        let result = match d {
            Ok(d) => await_delivery(d, &door.validated_topic).await,
            Err(e) => Err(e),
        };
        match result {
            Ok(_) => {
                metrics::counter!("audit_ingest_accepted_total", "channel" => "http").increment(1);
                accepted.push(AcceptedItem { index, event_id });
            }
            Err(e) => {
                tracing::warn!(error = %e, %event_id, "HTTP event not delivered");
                errors.push(ItemError {
                    index,
                    status: 503,
                    code: codes::NOT_DELIVERED.into(),
                    path: String::new(),
                    message: format!(
                        "not acknowledged by the broker ({e}); it may still be stored: retry \
                         with eventId {event_id} (or the same Idempotency-Key)"
                    ),
                });
            }
        }
    }
    errors.sort_by_key(|e| e.index);
    EventsResponse { accepted, errors }
}

fn item_error(index: usize, status: u16, r: &Rejection) -> ItemError {
    ItemError {
        index,
        status,
        code: r.code.to_owned(),
        path: r.path.clone(),
        message: r.message.clone(),
    }
}

impl Door {
    /// The gate for one item: the Kafka path's validation, then the tenant check and stamp.
    /// `Err` carries the item's HTTP status (422 or 403). An id-less item gets a fresh UUIDv7.
    pub fn check_item(
        &self,
        bytes: &[u8],
        principal: &Principal,
        receive_time_us: i64,
    ) -> Result<AuditEvent, (u16, Rejection)> {
        let id = uuid::Uuid::now_v7().to_string();
        self.check_item_with_id(bytes, principal, receive_time_us, id)
    }

    /// [`Self::check_item`], an id-less item getting `derived_event_id`.
    pub fn check_item_with_id(
        &self,
        bytes: &[u8],
        principal: &Principal,
        receive_time_us: i64,
        derived_event_id: String,
    ) -> Result<AuditEvent, (u16, Rejection)> {
        let ctx = ValidationContext {
            receive_time_us,
            ingress: Ingress {
                channel: IngressChannel::Http,
                topic: None,
                partition: None,
                offset: None,
                format: String::new(),
            },
            // Assigned at acceptance, returned to the caller; used only if the item has no id.
            derived_event_id,
            limits: self.limits.clone(),
            strict_labels: self.strict_labels,
            resolver: self.resolver.as_ref(),
        };
        // This door takes JSON only: anything else gets the JSON mapping's precise reason
        // (not_utf8, invalid_json, not_an_object) instead of being tried as Avro.
        let event = if framing::detect(bytes) == Framing::Json {
            validate_raw(bytes, &ctx)
        } else {
            let jctx = schemas::json::JsonContext {
                receive_time_us,
                ingress: ctx.ingress.clone(),
                derived_event_id: ctx.derived_event_id.clone(),
                limits: ctx.limits.clone(),
                strict_labels: ctx.strict_labels,
            };
            schemas::json::event_from_json(bytes, &jctx).map_err(Rejection::from)
        }
        .map_err(|r| (422, r))?;
        stamp_principal(event, principal, bytes)
    }

    fn record(&self, event: &AuditEvent) -> Result<OutputRecord, Rejection> {
        let payload = framing::encode_single_object_event(event)?;
        Ok(OutputRecord::new(
            &self.validated_topic,
            Some(partition_key(event).as_bytes().to_vec()),
            payload,
        ))
    }
}

/// Checks the event's tenant and team against the token's and stamps them where absent.
pub fn stamp_principal(
    event: AuditEvent,
    principal: &Principal,
    bytes: &[u8],
) -> Result<AuditEvent, (u16, Rejection)> {
    let prefix = if has_envelope(bytes) { "event." } else { "" };
    check_principal(
        event,
        principal,
        &format!("{prefix}tenantId"),
        &format!("{prefix}teamId"),
    )
}

/// [`stamp_principal`] with the paths to name in a refusal (the OTLP receiver names the span
/// attribute).
pub fn check_principal(
    mut event: AuditEvent,
    principal: &Principal,
    tenant_path: &str,
    team_path: &str,
) -> Result<AuditEvent, (u16, Rejection)> {
    match event.tenant.tenant_id.as_deref() {
        Some(t) if t != principal.tenant => {
            return Err((
                403,
                Rejection::new(
                    codes::TENANT_MISMATCH,
                    tenant_path,
                    format!(
                        "the event names tenant {t:?}; this token writes for tenant {:?} only",
                        principal.tenant
                    ),
                ),
            ))
        }
        Some(_) => {}
        None => event.tenant.tenant_id = Some(principal.tenant.clone()),
    }
    match event.tenant.team_id.as_deref() {
        Some(t) if !principal.teams.is_empty() && !principal.teams.iter().any(|x| x == t) => {
            return Err((
                403,
                Rejection::new(
                    codes::TEAM_NOT_ALLOWED,
                    team_path,
                    format!("this token does not write for team {t:?}"),
                ),
            ))
        }
        Some(_) => {}
        None if principal.teams.len() == 1 => {
            event.tenant.team_id = Some(principal.teams[0].clone());
        }
        None => {}
    }
    Ok(event)
}

/// Whether the item is in the `{"event": {…}}` envelope (for error paths only).
fn has_envelope(bytes: &[u8]) -> bool {
    serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(bytes)
        .map(|m| m.get("event").is_some_and(|v| v.is_object()))
        .unwrap_or(false)
}

fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idempotent_ids_are_stable_and_scoped_to_token_key_and_item() {
        let (t1, t2) = (token_hash("a"), token_hash("b"));
        let id = idempotent_event_id(&t1, "k", 0);
        assert_eq!(id, idempotent_event_id(&t1, "k", 0));
        for other in [
            idempotent_event_id(&t2, "k", 0),
            idempotent_event_id(&t1, "k2", 0),
            idempotent_event_id(&t1, "k", 1),
        ] {
            assert_ne!(id, other);
        }
        // Length-prefixed: a key cannot borrow the index's bytes.
        assert_ne!(
            idempotent_event_id(&t1, "k\0\0\0\0\0\0\0\0", 1),
            idempotent_event_id(&t1, "k", 0)
        );
        let u = uuid::Uuid::parse_str(&id).expect("uuid");
        assert_eq!(u.get_version_num(), 5);
    }

    #[test]
    fn idempotency_keys_are_parsed_quoted_or_bare_and_bounded() {
        let key = |v: &[u8]| {
            let mut h = HeaderMap::new();
            h.insert(
                "idempotency-key",
                HeaderValue::from_bytes(v).expect("value"),
            );
            idempotency_key(&h)
        };
        assert_eq!(idempotency_key(&HeaderMap::new()), Ok(None));
        assert_eq!(key(b"\"abc-1\""), Ok(Some("abc-1".into())));
        assert_eq!(key(b"abc-1"), Ok(Some("abc-1".into())));
        assert_eq!(key(b" abc-1 "), Ok(Some("abc-1".into())));
        assert!(key(&[b'k'; 255]).is_ok());
        for bad in [&b"\"\""[..], b"", &[b'k'; 256], b"caf\xc3\xa9", b"a\tb"] {
            assert!(key(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn token_table_holds_hashes_only() {
        let h = hex::encode(token_hash("s3cret"));
        let t = TokenTable::parse(&format!(
            "# comment\nsha256:{h} acme team-a,team-b\n; sha256:{} other",
            hex::encode(token_hash("x"))
        ))
        .expect("parse");
        assert_eq!(t.len(), 2);
        let (_, p) = t.lookup("s3cret").expect("known token");
        assert_eq!(p.tenant, "acme");
        assert_eq!(p.teams, vec!["team-a", "team-b"]);
        assert!(t.lookup("S3cret").is_none());
        assert!(!format!("{t:?}").contains("s3cret"));
        for bad in [
            "s3cret acme",
            "sha256:abcd acme",
            &format!("sha256:{h}"),
            &format!("sha256:{h} a b c"),
            &format!("sha256:{h} a;sha256:{h} b"),
        ] {
            assert!(TokenTable::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn rate_limiter_refills_and_says_when() {
        let l = RateLimiter::new(10.0, 20.0);
        let k = [1u8; 32];
        let t0 = Instant::now();
        assert!(l.take(k, 20, t0).is_ok());
        let wait = l.take(k, 5, t0).expect_err("bucket empty");
        assert!((wait.as_secs_f64() - 0.5).abs() < 1e-6, "{wait:?}");
        assert!(l.take(k, 5, t0 + Duration::from_millis(500)).is_ok());
        // Another token has its own bucket.
        assert!(l.take([2u8; 32], 20, t0).is_ok());
        // A batch above the burst waits for a full bucket, then passes.
        assert!(l.take(k, 100, t0 + Duration::from_secs(1)).is_err());
        assert!(l.take(k, 100, t0 + Duration::from_secs(10)).is_ok());
        assert!(RateLimiter::new(0.0, 1.0).take(k, 1_000_000, t0).is_ok());
    }

    #[test]
    fn bodies_split_by_content_type() {
        let ct = |s: &'static str| HeaderValue::from_static(s);
        assert_eq!(
            body_kind(Some(&ct("application/json; charset=utf-8"))),
            Some(BodyKind::Json)
        );
        assert_eq!(
            body_kind(Some(&ct("application/x-ndjson"))),
            Some(BodyKind::Ndjson)
        );
        assert_eq!(body_kind(Some(&ct("text/plain"))), None);
        assert_eq!(body_kind(None), None);

        let one = br#" {"a":1} "#;
        assert_eq!(split_items(one, BodyKind::Json, 10).expect("one").len(), 1);
        let arr = br#"[{"a":1}, {"b":[1,2]}, 3]"#;
        let items = split_items(arr, BodyKind::Json, 10).expect("array");
        assert_eq!(items, vec![&br#"{"a":1}"#[..], br#"{"b":[1,2]}"#, b"3"]);
        assert_eq!(
            split_items(arr, BodyKind::Json, 2),
            Err(SplitError::TooMany(3))
        );
        assert!(matches!(
            split_items(b"[{", BodyKind::Json, 9),
            Err(SplitError::Invalid(_))
        ));
        assert!(matches!(
            split_items(b"  ", BodyKind::Json, 9),
            Err(SplitError::Invalid(_))
        ));
        assert!(matches!(
            split_items(b"[]", BodyKind::Json, 9),
            Err(SplitError::Invalid(_))
        ));
        let nd = b"{\"a\":1}\r\n\n  \n{broken\n";
        let items = split_items(nd, BodyKind::Ndjson, 10).expect("ndjson");
        assert_eq!(items, vec![&b"{\"a\":1}"[..], b"{broken"]);
    }

    #[test]
    fn bearer_tokens_are_read_case_insensitively() {
        let mut h = HeaderMap::new();
        assert_eq!(bearer(&h), None);
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("bearer abc"),
        );
        assert_eq!(bearer(&h), Some("abc"));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic abc"));
        assert_eq!(bearer(&h), None);
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer "));
        assert_eq!(bearer(&h), None);
    }

    fn event_with(tenant: Option<&str>, team: Option<&str>) -> AuditEvent {
        let mut e = schemas::testing::sample_event();
        e.tenant.tenant_id = tenant.map(Into::into);
        e.tenant.team_id = team.map(Into::into);
        e
    }

    #[test]
    fn tenants_are_stamped_never_rewritten() {
        let p = Principal {
            tenant: "acme".into(),
            teams: vec!["red".into()],
        };
        let e = stamp_principal(event_with(None, None), &p, b"{}").expect("stamped");
        assert_eq!(e.tenant.tenant_id.as_deref(), Some("acme"));
        assert_eq!(e.tenant.team_id.as_deref(), Some("red"));
        let (status, r) = stamp_principal(event_with(Some("evil"), None), &p, br#"{"event":{}}"#)
            .expect_err("mismatch");
        assert_eq!(
            (status, r.code, r.path.as_str()),
            (403, codes::TENANT_MISMATCH, "event.tenantId")
        );
        let (status, r) =
            stamp_principal(event_with(Some("acme"), Some("blue")), &p, b"{}").expect_err("team");
        assert_eq!(
            (status, r.code, r.path.as_str()),
            (403, codes::TEAM_NOT_ALLOWED, "teamId")
        );
        let any_team = Principal {
            tenant: "acme".into(),
            teams: vec![],
        };
        let e = stamp_principal(event_with(Some("acme"), Some("blue")), &any_team, b"{}")
            .expect("any team");
        assert_eq!(e.tenant.team_id.as_deref(), Some("blue"));
        let e = stamp_principal(event_with(None, None), &any_team, b"{}").expect("no team");
        assert_eq!(e.tenant.team_id, None);
    }

    #[test]
    fn response_status_summarises_items() {
        let err = |status| ItemError {
            index: 0,
            status,
            code: String::new(),
            path: String::new(),
            message: String::new(),
        };
        let ok = AcceptedItem {
            index: 1,
            event_id: "e".into(),
        };
        let r = |accepted: Vec<AcceptedItem>, errors| EventsResponse { accepted, errors };
        assert_eq!(
            r(vec![ok.clone()], vec![err(422)]).status(),
            StatusCode::ACCEPTED
        );
        assert_eq!(r(vec![], vec![err(403)]).status(), StatusCode::FORBIDDEN);
        assert_eq!(
            r(vec![], vec![err(403), err(422)]).status(),
            StatusCode::UNPROCESSABLE_ENTITY
        );
        assert_eq!(
            r(vec![], vec![err(503), err(422)]).status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
    }
}
