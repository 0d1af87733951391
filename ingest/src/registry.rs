//! Confluent-framed Avro through a real schema registry (`--schema-registry-url`).
//!
//! A Confluent-framed record (`00`, 4-byte big-endian schema id, datum) names its writer schema
//! by registry id. [`RegistryResolver`] fetches that schema with `schema_registry_converter`
//! (`GET /schemas/ids/{id}`), decides once whether the current `AuditEvent` reader schema of the
//! compiled-in catalog can read it (Avro schema resolution: added optional fields, another
//! field order, widened types are fine), and caches the verdict (moka, bounded): a schema id
//! names an immutable schema, so the verdict never changes.
//!
//! What happens to a record, by what the registry says:
//! - a compatible writer schema: the datum is decoded with it and resolved to the reader
//!   schema, then validated like every other input;
//! - an incompatible writer schema (or not Avro, or not parsable): dead letter
//!   `incompatible_schema` naming the id and the first incompatibility;
//! - an id the registry does not know (HTTP 404): dead letter `unknown_schema_id`;
//! - anything else (registry unreachable, 5xx, 401/403, a garbled answer): the record waits and
//!   the fetch is retried with the shared retry helper, while `/readyz` reports
//!   [`CHECK_SCHEMA_REGISTRY`] failing. A record is never dead-lettered because the registry is
//!   down: that would turn a valid event into a dead letter.
//!
//! Without a registry URL the compiled-in id table (`schemas::framing::CatalogIdResolver`)
//! stays the embedded default.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use apache_avro::schema_compatibility::SchemaCompatibility;
use apache_avro::Schema;
use futures::future::BoxFuture;
use schema_registry_converter::async_impl::schema_registry::{get_schema_by_id, SrSettings};
use schema_registry_converter::error::SRCError;
use schema_registry_converter::schema_registry_common::{RawError, SchemaType};
use schemas::error::SchemaError;
use schemas::framing::SchemaIdResolver;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use worker_runtime::health::Readiness;
use worker_runtime::retry::{retry_reporting, DependencyCheck, RetryError, RetryPolicy, Retryable};
use worker_runtime::secret::Secret;

/// The `/readyz` condition that fails while the registry cannot be reached.
pub const CHECK_SCHEMA_REGISTRY: &str = "schema_registry";

/// Longest reason text kept from a compatibility error (the DLQ message header carries it; the
/// library's messages can print whole schemas).
const MAX_REASON_CHARS: usize = 400;

/// Schema registry options of ingest (all optional; no URL = the compiled-in id table).
#[derive(Debug, Clone, clap::Args, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryArgs {
    /// Base URL of a Confluent-compatible schema registry (e.g. `http://registry:8081`).
    /// Confluent-framed records are then resolved through it; empty (the default) keeps the
    /// compiled-in id table.
    #[arg(
        long = "schema-registry-url",
        env = "AUDIT_SCHEMA_REGISTRY_URL",
        // A `user:password@` in the URL would otherwise show in `--help`.
        hide_env_values = true,
        default_value = ""
    )]
    pub url: String,
    /// Basic-auth user (Confluent Cloud: the API key); empty = no basic auth.
    #[arg(
        long = "schema-registry-username",
        env = "AUDIT_SCHEMA_REGISTRY_USERNAME",
        default_value = ""
    )]
    pub username: String,
    /// Basic-auth password (Confluent Cloud: the API secret). Never printed; prefer the
    /// environment variable or a config file readable only by the worker.
    #[arg(
        long = "schema-registry-password",
        env = "AUDIT_SCHEMA_REGISTRY_PASSWORD",
        hide_env_values = true,
        hide_default_value = true,
        default_value = ""
    )]
    pub password: Secret,
    /// Bearer token instead of basic auth (used when no username is set). Never printed.
    #[arg(
        long = "schema-registry-token",
        env = "AUDIT_SCHEMA_REGISTRY_TOKEN",
        hide_env_values = true,
        hide_default_value = true,
        default_value = ""
    )]
    pub token: Secret,
    /// Schema ids whose verdict is cached, at most.
    #[arg(
        long = "schema-registry-cache-capacity",
        env = "AUDIT_SCHEMA_REGISTRY_CACHE_CAPACITY",
        default_value_t = 10_000
    )]
    pub cache_capacity: u64,
    /// Timeout of one registry request (milliseconds); a timeout is retried like an outage.
    #[arg(
        long = "schema-registry-timeout-ms",
        env = "AUDIT_SCHEMA_REGISTRY_TIMEOUT_MS",
        default_value_t = 10_000
    )]
    pub timeout_ms: u64,
    /// Backoff of the registry fetch while the registry is unreachable (the shared retry
    /// options; `--retry-max-attempts 0`, the default, waits until it answers).
    #[command(flatten)]
    pub retry: RetryPolicy,
}

impl RegistryArgs {
    pub fn enabled(&self) -> bool {
        !self.url.trim().is_empty()
    }

    /// The URL without any `user:password@` part, for logs.
    pub fn url_for_logs(&self) -> String {
        redact_url(&self.url)
    }
}

/// `scheme://user:pass@host/…` → `scheme://[redacted]@host/…`.
fn redact_url(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => {
            let sep = if scheme.is_empty() { "" } else { "://" };
            format!("{scheme}{sep}[redacted]{}", &rest[at..])
        }
        None => url.to_owned(),
    }
}

/// Errors that stop ingest at start (a registry client that cannot be built).
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("schema registry client for {url}: {reason}")]
    Client { url: String, reason: String },
    #[error("loading the reader schema from the compiled-in catalog: {0}")]
    Catalog(#[source] SchemaError),
}

/// Why a fetch did not produce a schema.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FetchError {
    /// The registry answered that it does not know the id (HTTP 404): permanent.
    #[error("schema id {id} is not registered: {detail}")]
    NotFound { id: u32, detail: String },
    /// Anything else: unreachable, timeout, 5xx, refused credentials, a garbled answer. Not the
    /// record's fault, so it is retried, never dead-lettered.
    #[error("schema registry unavailable while resolving schema id {id}: {detail}")]
    Unavailable { id: u32, detail: String },
}

impl Retryable for FetchError {
    fn is_retryable(&self) -> bool {
        matches!(self, FetchError::Unavailable { .. })
    }
}

/// A schema as the registry returned it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchedSchema {
    /// `AVRO`, `PROTOBUF`, `JSON`, …
    pub schema_type: String,
    pub text: String,
    /// Named references to other registered schemas (not resolved here).
    pub references: usize,
}

/// Where schemas come from: the registry client, or a table in unit tests.
pub trait SchemaSource: Send + Sync + fmt::Debug {
    fn fetch(&self, id: u32) -> BoxFuture<'_, Result<FetchedSchema, FetchError>>;
}

/// [`SchemaSource`] over `schema_registry_converter`'s async client (`GET /schemas/ids/{id}`).
pub struct ConverterSource {
    settings: SrSettings,
}

impl fmt::Debug for ConverterSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // SrSettings' Debug would print the credentials.
        f.debug_struct("ConverterSource").finish_non_exhaustive()
    }
}

impl ConverterSource {
    pub fn new(args: &RegistryArgs) -> Result<Self, RegistryError> {
        // The client's reqwest uses rustls without a bundled crypto provider (see Cargo.toml)
        // and panics building a client unless one is installed process-wide; ring is the one
        // the workspace links. A provider installed earlier is kept.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let url = args.url.trim().trim_end_matches('/').to_owned();
        let mut builder = SrSettings::new_builder(url);
        builder.set_timeout(Duration::from_millis(args.timeout_ms.max(1)));
        if !args.username.is_empty() {
            let password = Some(args.password.expose()).filter(|p| !p.is_empty());
            builder.set_basic_authorization(&args.username, password);
        } else if !args.token.is_empty() {
            builder.set_token_authorization(args.token.expose());
        }
        let settings = builder.build().map_err(|e| RegistryError::Client {
            url: args.url_for_logs(),
            reason: e.error,
        })?;
        Ok(ConverterSource { settings })
    }
}

impl SchemaSource for ConverterSource {
    fn fetch(&self, id: u32) -> BoxFuture<'_, Result<FetchedSchema, FetchError>> {
        Box::pin(async move {
            let registered = get_schema_by_id(id, &self.settings)
                .await
                .map_err(|e| classify(id, &e))?;
            let schema_type = match registered.schema_type {
                SchemaType::Avro => "AVRO".to_owned(),
                SchemaType::Protobuf => "PROTOBUF".to_owned(),
                SchemaType::Json => "JSON".to_owned(),
                SchemaType::Other(t) => t,
                // The enum is non-exhaustive: a type this crate does not know is not Avro.
                other => format!("{other:?}"),
            };
            Ok(FetchedSchema {
                schema_type,
                text: registered.schema,
                references: registered.references.len(),
            })
        })
    }
}

/// Confluent's error code for "schema not found" (with HTTP 404).
const SCHEMA_NOT_FOUND: u32 = 40403;

/// Sorts a client error into "the id does not exist" and "try again". Only a 404 (Confluent
/// error code 40403, or the status when the body is not the registry's error JSON) is
/// permanent; everything else says nothing about the record.
pub fn classify(id: u32, e: &SRCError) -> FetchError {
    let raw = std::error::Error::source(e).and_then(|s| s.downcast_ref::<RawError>());
    let not_found = match raw {
        Some(r) if r.error_code == SCHEMA_NOT_FOUND => true,
        // The client reports the HTTP status only in its message.
        _ => e.error.contains("status 404"),
    };
    let detail = match &e.cause {
        Some(c) => format!("{}: {c}", e.error),
        None => e.error.clone(),
    };
    if not_found {
        FetchError::NotFound { id, detail }
    } else {
        FetchError::Unavailable { id, detail }
    }
}

/// What a schema id means for the records that carry it. Cached per id.
#[derive(Debug, Clone)]
pub enum Verdict {
    /// The reader schema can read data written with this writer schema.
    Accepted(Arc<Schema>),
    /// It cannot: why (bounded text, names the id).
    Incompatible(Arc<str>),
}

/// Decides whether `reader` can read data written with `fetched` (Avro schema resolution).
pub fn judge(id: u32, fetched: &FetchedSchema, reader: &Schema) -> Verdict {
    let no =
        |why: String| Verdict::Incompatible(Arc::from(bounded(format!("schema id {id}: {why}"))));
    if !fetched.schema_type.eq_ignore_ascii_case("AVRO") {
        return no(format!("a {} schema, not Avro", fetched.schema_type));
    }
    let writer = match Schema::parse_str(&fetched.text) {
        Ok(w) => w,
        Err(e) if fetched.references > 0 => {
            return no(format!(
                "uses {} schema references, which ingest does not resolve ({e})",
                fetched.references
            ))
        }
        Err(e) => return no(format!("not a valid Avro schema: {e}")),
    };
    if writer == *reader {
        return Verdict::Accepted(Arc::new(writer));
    }
    match SchemaCompatibility::can_read(&writer, reader) {
        Ok(_) => Verdict::Accepted(Arc::new(writer)),
        Err(e) => no(format!(
            "the AuditEvent reader schema cannot read it: {}",
            error_chain(&e)
        )),
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(inner) = cur {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        cur = inner.source();
    }
    s
}

fn bounded(mut s: String) -> String {
    if let Some((cut, _)) = s.char_indices().nth(MAX_REASON_CHARS) {
        s.truncate(cut);
        s.push('…');
    }
    s
}

/// Registry-backed schema id resolution with a bounded verdict cache.
pub struct RegistryResolver {
    source: Arc<dyn SchemaSource>,
    cache: moka::future::Cache<u32, Verdict>,
    reader: Arc<Schema>,
    policy: RetryPolicy,
    check: Option<DependencyCheck>,
    /// A fetch failed for lack of a registry and none has succeeded since.
    degraded: AtomicBool,
}

impl fmt::Debug for RegistryResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegistryResolver")
            .field("source", &self.source)
            .field("cached", &self.cache.entry_count())
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

impl RegistryResolver {
    /// Resolves against `source`; the reader schema is `reader`, verdicts of at most
    /// `capacity` ids are kept.
    pub fn new(
        source: Arc<dyn SchemaSource>,
        reader: Arc<Schema>,
        capacity: u64,
        policy: RetryPolicy,
    ) -> Self {
        RegistryResolver {
            source,
            cache: moka::future::Cache::builder()
                .max_capacity(capacity.max(1))
                .build(),
            reader,
            policy,
            check: None,
            degraded: AtomicBool::new(false),
        }
    }

    /// The registry client of `args`, reading into the catalog's current `AuditEvent` schema.
    pub fn connect(args: &RegistryArgs) -> Result<Self, RegistryError> {
        let reader = schemas::avro::current_schema(schemas::avro::RecordKind::AuditEvent)
            .map_err(RegistryError::Catalog)?;
        Ok(Self::new(
            Arc::new(ConverterSource::new(args)?),
            Arc::clone(&reader.schema),
            args.cache_capacity,
            args.retry,
        ))
    }

    /// Reports registry outages on `ready` ([`CHECK_SCHEMA_REGISTRY`]).
    pub fn with_readiness(mut self, ready: Readiness) -> Self {
        self.check = Some(DependencyCheck::new(ready, CHECK_SCHEMA_REGISTRY));
        self
    }

    /// The verdict for `id`: from the cache, or one fetch (concurrent callers for the same id
    /// share it). Errors are not cached.
    pub async fn verdict(&self, id: u32) -> Result<Verdict, FetchError> {
        let source = Arc::clone(&self.source);
        let reader = Arc::clone(&self.reader);
        self.cache
            .try_get_with(id, async move {
                let fetched = source.fetch(id).await?;
                let v = judge(id, &fetched, &reader);
                if let Verdict::Incompatible(why) = &v {
                    tracing::warn!(schema_id = id, reason = %why, "incompatible writer schema");
                }
                Ok::<_, FetchError>(v)
            })
            .await
            .map_err(|e: Arc<FetchError>| (*e).clone())
    }

    /// [`Self::verdict`], retried while the registry is unavailable (until it answers, the
    /// policy's attempts run out, or `cancel` fires), with `/readyz` saying so meanwhile
    /// (the shared [`retry_reporting`], as for every other dependency).
    pub async fn resolve(
        &self,
        id: u32,
        cancel: &CancellationToken,
    ) -> Result<Verdict, RetryError<FetchError>> {
        retry_reporting(
            "schema_registry_fetch",
            &self.policy,
            cancel,
            self.check.as_ref(),
            || async {
                let r = self.verdict(id).await;
                self.gauge(!matches!(r, Err(FetchError::Unavailable { .. })));
                r
            },
        )
        .await
    }

    /// `audit_ingest_schema_registry_up`, written on transitions only (this runs per record).
    fn gauge(&self, up: bool) {
        let was_down = self.degraded.swap(!up, Ordering::AcqRel);
        if was_down != up {
            // No transition: down and still down, or up and still up.
            return;
        }
        metrics::gauge!("audit_ingest_schema_registry_up").set(if up { 1.0 } else { 0.0 });
        if up {
            tracing::info!("schema registry reachable again");
        }
    }

    /// Cached verdicts (after pending cache maintenance), for tests and metrics.
    pub async fn cached_ids(&self) -> u64 {
        self.cache.run_pending_tasks().await;
        self.cache.entry_count()
    }
}

/// One id → schema pair: what a record's decoding needs once its verdict is in.
#[derive(Debug, Clone)]
pub struct PinnedId {
    pub id: u32,
    pub schema: Arc<Schema>,
}

impl SchemaIdResolver for PinnedId {
    fn schema_for_id(&self, id: u32) -> Result<Arc<Schema>, SchemaError> {
        if id == self.id {
            Ok(Arc::clone(&self.schema))
        } else {
            Err(SchemaError::UnknownSchemaId {
                id,
                reason: format!("resolved schema id {} instead", self.id),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::sync::atomic::AtomicUsize;
    use std::sync::Mutex;

    fn reader() -> Arc<Schema> {
        Arc::clone(
            &schemas::avro::current_schema(schemas::avro::RecordKind::AuditEvent)
                .expect("catalog")
                .schema,
        )
    }

    fn reader_json() -> serde_json::Value {
        let entry =
            schemas::avro::current_schema(schemas::avro::RecordKind::AuditEvent).expect("c");
        serde_json::from_str(entry.avsc).expect("avsc is JSON")
    }

    fn avro(v: &serde_json::Value) -> FetchedSchema {
        FetchedSchema {
            schema_type: "AVRO".into(),
            text: v.to_string(),
            references: 0,
        }
    }

    fn fields(v: &mut serde_json::Value) -> &mut Vec<serde_json::Value> {
        v["fields"].as_array_mut().expect("fields")
    }

    #[test]
    fn the_reader_schema_itself_and_compatible_evolutions_are_accepted() {
        let r = reader();
        assert!(matches!(
            judge(1, &avro(&reader_json()), &r),
            Verdict::Accepted(_)
        ));
        // A producer's newer schema: an extra optional field, fields in another order.
        let mut evolved = reader_json();
        fields(&mut evolved).reverse();
        fields(&mut evolved).push(serde_json::json!(
            {"name": "producer_build", "type": ["null", "string"], "default": null}));
        assert!(matches!(
            judge(2, &avro(&evolved), &r),
            Verdict::Accepted(_)
        ));
        // Even without a default: the reader ignores writer fields it does not know.
        let mut extra = reader_json();
        fields(&mut extra).push(serde_json::json!({"name": "shard", "type": "int"}));
        assert!(matches!(judge(3, &avro(&extra), &r), Verdict::Accepted(_)));
    }

    #[test]
    fn incompatible_writer_schemas_are_refused_with_the_id_and_the_field() {
        let r = reader();
        let mut retyped = reader_json();
        for f in fields(&mut retyped) {
            if f["name"] == "event_time_us" {
                f["type"] = serde_json::json!("string");
            }
        }
        let Verdict::Incompatible(why) = judge(41, &avro(&retyped), &r) else {
            panic!("a string event time must not be accepted");
        };
        assert!(why.contains("schema id 41"), "{why}");
        assert!(why.contains("event_time_us"), "{why}");
        assert!(why.chars().count() <= MAX_REASON_CHARS + 1, "{why}");

        // A required reader field (no default) missing from the writer.
        let mut missing = reader_json();
        fields(&mut missing).retain(|f| f["name"] != "event_type");
        let Verdict::Incompatible(why) = judge(42, &avro(&missing), &r) else {
            panic!("a writer without event_type must not be accepted");
        };
        assert!(why.contains("event_type"), "{why}");

        // Another record altogether.
        let chained = schemas::avro::current_schema(schemas::avro::RecordKind::ChainedEvent)
            .expect("catalog");
        let other = avro(&serde_json::from_str(chained.avsc).expect("json"));
        assert!(matches!(judge(43, &other, &r), Verdict::Incompatible(_)));

        let proto = FetchedSchema {
            schema_type: "PROTOBUF".into(),
            text: "syntax = \"proto3\";".into(),
            references: 0,
        };
        let Verdict::Incompatible(why) = judge(44, &proto, &r) else {
            panic!("protobuf accepted");
        };
        assert!(why.contains("PROTOBUF"), "{why}");
        let garbage = FetchedSchema {
            schema_type: "AVRO".into(),
            text: "{not json".into(),
            references: 0,
        };
        assert!(matches!(judge(45, &garbage, &r), Verdict::Incompatible(_)));
    }

    /// A table of schemas with a switchable outage and a fetch counter.
    #[derive(Debug, Default)]
    struct Table {
        schemas: Mutex<HashMap<u32, FetchedSchema>>,
        down: AtomicBool,
        fetches: AtomicUsize,
    }

    impl SchemaSource for Table {
        fn fetch(&self, id: u32) -> BoxFuture<'_, Result<FetchedSchema, FetchError>> {
            Box::pin(async move {
                self.fetches.fetch_add(1, Ordering::SeqCst);
                if self.down.load(Ordering::SeqCst) {
                    return Err(FetchError::Unavailable {
                        id,
                        detail: "connection refused".into(),
                    });
                }
                let found = self.schemas.lock().expect("lock").get(&id).cloned();
                found.ok_or(FetchError::NotFound {
                    id,
                    detail: "404".into(),
                })
            })
        }
    }

    fn fast(max_attempts: usize) -> RetryPolicy {
        RetryPolicy {
            min_delay_ms: 1,
            max_delay_ms: 5,
            max_attempts,
        }
    }

    #[tokio::test]
    async fn verdicts_are_cached_per_id_errors_are_not_and_the_cache_is_bounded() {
        let table = Arc::new(Table::default());
        table
            .schemas
            .lock()
            .expect("lock")
            .extend((1..=5).map(|id| (id, avro(&reader_json()))));
        let resolver = RegistryResolver::new(table.clone(), reader(), 2, fast(0));
        for _ in 0..3 {
            assert!(matches!(
                resolver.verdict(1).await,
                Ok(Verdict::Accepted(_))
            ));
        }
        assert_eq!(table.fetches.load(Ordering::SeqCst), 1, "one fetch per id");

        // An unknown id is asked again each time (the registry may learn it), never cached.
        for _ in 0..2 {
            assert!(matches!(
                resolver.verdict(99).await,
                Err(FetchError::NotFound { id: 99, .. })
            ));
        }
        assert_eq!(table.fetches.load(Ordering::SeqCst), 3);

        for id in 1..=5 {
            resolver.verdict(id).await.expect("known id");
        }
        assert!(
            resolver.cached_ids().await <= 2,
            "capacity 2 bounds the cache"
        );
    }

    #[tokio::test]
    async fn an_outage_is_retried_reported_on_readyz_and_cleared_when_it_ends() {
        let table = Arc::new(Table::default());
        table
            .schemas
            .lock()
            .expect("lock")
            .insert(7, avro(&reader_json()));
        table.down.store(true, Ordering::SeqCst);
        let ready = Readiness::default();
        ready.set(true);
        let resolver = Arc::new(
            RegistryResolver::new(table.clone(), reader(), 10, fast(0))
                .with_readiness(ready.clone()),
        );
        let cancel = CancellationToken::new();
        let task = {
            let (r, c) = (resolver.clone(), cancel.clone());
            tokio::spawn(async move { r.resolve(7, &c).await })
        };
        // Poll (no wall-clock assertion): the resolver keeps trying, readiness says why.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while ready.check(CHECK_SCHEMA_REGISTRY).is_none()
            || table.fetches.load(Ordering::SeqCst) < 3
        {
            assert!(tokio::time::Instant::now() < deadline, "no retries seen");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let check = ready.check(CHECK_SCHEMA_REGISTRY).expect("reported");
        assert!(
            !check.ok && check.detail.contains("schema id 7"),
            "{check:?}"
        );
        assert!(!ready.get());
        assert!(!task.is_finished(), "an outage must not end in a verdict");

        table.down.store(false, Ordering::SeqCst);
        let verdict = task
            .await
            .expect("task")
            .expect("resolved after the outage");
        assert!(matches!(verdict, Verdict::Accepted(_)));
        assert!(ready.check(CHECK_SCHEMA_REGISTRY).expect("check").ok);
        assert!(ready.get());

        // Shutdown ends the wait without a verdict; a 404 is not retried.
        table.down.store(true, Ordering::SeqCst);
        cancel.cancel();
        assert!(matches!(
            resolver.resolve(8, &cancel).await,
            Err(RetryError::Cancelled(_))
        ));
        table.down.store(false, Ordering::SeqCst);
        let before = table.fetches.load(Ordering::SeqCst);
        let err = resolver
            .resolve(8, &CancellationToken::new())
            .await
            .expect_err("unknown id");
        assert!(matches!(
            err,
            RetryError::Failed(FetchError::NotFound { id: 8, .. })
        ));
        assert_eq!(table.fetches.load(Ordering::SeqCst), before + 1);
    }

    #[test]
    fn client_errors_are_sorted_into_not_found_and_retry() {
        let raw: RawError =
            serde_json::from_str(r#"{"error_code":40403,"message":"Schema 9 not found"}"#)
                .expect("raw error");
        let e = SRCError::non_retryable_with_cause(
            raw,
            "HTTP request to schema registry failed with status 404 Not Found",
        );
        assert!(matches!(
            classify(9, &e),
            FetchError::NotFound { id: 9, .. }
        ));
        // A 404 whose body is not the registry's error JSON (a proxy's page).
        let e = SRCError::non_retryable_with_cause(
            "couldn't parse",
            "HTTP request to schema registry failed with status 404 Not Found",
        );
        assert!(matches!(classify(9, &e), FetchError::NotFound { .. }));
        // Refused credentials, a 500, a connection error: the registry's problem, not the
        // record's (the client marks some of these non-retryable; ingest retries them all).
        let unauthorized: RawError =
            serde_json::from_str(r#"{"error_code":40101,"message":"Unauthorized"}"#)
                .expect("raw error");
        for e in [
            SRCError::non_retryable_with_cause(
                unauthorized,
                "HTTP request to schema registry failed with status 401 Unauthorized",
            ),
            SRCError::non_retryable_with_cause(
                "boom",
                "HTTP request to schema registry failed with status 500 Internal Server Error",
            ),
            SRCError::retryable_with_cause(
                std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused"),
                "http call to schema registry failed",
            ),
        ] {
            let c = classify(9, &e);
            assert!(c.is_retryable(), "{c}");
        }
    }

    #[test]
    fn credentials_never_print() {
        let args = <RegistryArgs as clap::FromArgMatches>::from_arg_matches(
            &<RegistryArgs as clap::Args>::augment_args(clap::Command::new("t"))
                .try_get_matches_from([
                    "t",
                    "--schema-registry-url",
                    "http://svc:s3cr3t-in-url@registry:8081/x",
                    "--schema-registry-username",
                    "svc",
                    "--schema-registry-password",
                    "hunter2",
                    "--schema-registry-token",
                    "tok-123",
                ])
                .expect("parse"),
        )
        .expect("args");
        let dumped = format!("{args:?}");
        assert!(
            !dumped.contains("hunter2") && !dumped.contains("tok-123"),
            "{dumped}"
        );
        assert_eq!(args.url_for_logs(), "http://[redacted]@registry:8081/x");
        assert_eq!(redact_url("http://registry:8081"), "http://registry:8081");
        let source = ConverterSource::new(&args).expect("client");
        assert!(!format!("{source:?}").contains("hunter2"));
        let resolver =
            RegistryResolver::new(Arc::new(source), reader(), 10, RetryPolicy::default());
        assert!(!format!("{resolver:?}").contains("hunter2"));
        let cmd = <RegistryArgs as clap::Args>::augment_args(clap::Command::new("t"));
        for secret in ["password", "token"] {
            let arg = cmd
                .get_arguments()
                .find(|a| a.get_id() == secret)
                .expect("secret argument");
            assert!(
                arg.is_hide_env_values_set(),
                "{secret}: env value shown in --help"
            );
            assert!(
                arg.is_hide_default_value_set(),
                "{secret}: default shown in --help"
            );
        }
    }

    /// What a producer with `writer` puts on the wire: the event's fields by name, written in
    /// `writer`'s order, its extra fields with their defaults.
    fn confluent_with_writer(event: &schemas::AuditEvent, writer: &Schema, id: u32) -> Vec<u8> {
        let value = apache_avro::to_value(event)
            .expect("to value")
            .resolve(writer)
            .expect("resolve to the writer schema");
        let mut out = vec![0u8];
        out.extend_from_slice(&id.to_be_bytes());
        let datum = apache_avro::writer::datum::GenericDatumWriter::builder(writer)
            .build()
            .expect("writer")
            .write_value_to_vec(value)
            .expect("datum");
        out.extend(datum);
        out
    }

    #[tokio::test]
    async fn the_processor_decodes_evolved_writers_and_dead_letters_bad_ids() {
        use worker_runtime::kafka::dlq::HEADER_REASON_CODE;
        use worker_runtime::kafka::InputRecord;

        let mut evolved = reader_json();
        fields(&mut evolved).reverse();
        fields(&mut evolved).push(serde_json::json!(
            {"name": "producer_build", "type": ["null", "string"], "default": null}));
        let mut retyped = reader_json();
        for f in fields(&mut retyped) {
            if f["name"] == "event_time_us" {
                f["type"] = serde_json::json!("string");
            }
        }
        let table = Arc::new(Table::default());
        table.schemas.lock().expect("lock").extend([
            (10, avro(&reader_json())),
            (11, avro(&evolved)),
            (12, avro(&retyped)),
        ]);
        let resolver = Arc::new(RegistryResolver::new(table.clone(), reader(), 10, fast(0)));
        let processor = crate::IngestProcessor::new(
            "t.validated",
            "t.rejected",
            schemas::json::JsonLimits::default(),
            // The compiled-in table knows ids 1..3 only: every id here must come from the
            // registry.
            Arc::new(schemas::framing::CatalogIdResolver::new().expect("catalog")),
        )
        .with_registry(resolver, CancellationToken::new());

        let event = schemas::testing::sample_event();
        let evolved_schema = Schema::parse_str(&evolved.to_string()).expect("evolved");
        let record = |payload: Vec<u8>| InputRecord {
            topic: "t.raw".into(),
            partition: 0,
            offset: 7,
            key: None,
            payload: Some(payload),
            headers: Vec::new(),
            timestamp_ms: Some(event.event_time_us / 1000 + 1000),
        };
        for (id, bytes) in [
            (10, framing_of(&event, 10)),
            (11, confluent_with_writer(&event, &evolved_schema, 11)),
        ] {
            let out = processor.handle_async(&record(bytes)).await.expect("out");
            assert_eq!(
                out.topic, "t.validated",
                "schema id {id}: {:?}",
                out.headers
            );
            let got =
                schemas::framing::decode_event(out.payload.as_deref().expect("payload"), None)
                    .expect("validated event decodes");
            assert_eq!(got.event_id, event.event_id, "schema id {id}");
            assert_eq!(got.event_type, event.event_type);
            assert_eq!(got.actor, event.actor);
            assert_eq!(got.ingress.format, "avro-confluent");
        }
        let reason = |out: &worker_runtime::kafka::OutputRecord| {
            let code = out
                .headers
                .iter()
                .find(|(k, _)| k == HEADER_REASON_CODE)
                .map(|(_, v)| String::from_utf8_lossy(v).into_owned());
            (out.topic.clone(), code.unwrap_or_default())
        };
        let out = processor
            .handle_async(&record(framing_of(&event, 12)))
            .await
            .expect("out");
        assert_eq!(
            reason(&out),
            ("t.rejected".into(), "incompatible_schema".into())
        );
        let out = processor
            .handle_async(&record(framing_of(&event, 4242)))
            .await
            .expect("out");
        assert_eq!(
            reason(&out),
            ("t.rejected".into(), "unknown_schema_id".into())
        );
    }

    fn framing_of(event: &schemas::AuditEvent, id: u32) -> Vec<u8> {
        schemas::framing::encode_confluent_event(event, id).expect("encode")
    }

    #[tokio::test]
    async fn https_registries_are_spoken_to_over_tls() {
        use tokio::io::AsyncReadExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let server = tokio::spawn(async move {
            let (mut conn, _) = listener.accept().await.expect("accept");
            let mut first = [0u8; 1];
            conn.read_exact(&mut first).await.expect("read");
            first[0]
        });
        let args = <RegistryArgs as clap::FromArgMatches>::from_arg_matches(
            &<RegistryArgs as clap::Args>::augment_args(clap::Command::new("t"))
                .try_get_matches_from(["t", "--schema-registry-url", &format!("https://{addr}")])
                .expect("parse"),
        )
        .expect("args");
        let source = ConverterSource::new(&args).expect("client");
        let err = source.fetch(1).await.expect_err("no TLS server there");
        assert!(err.is_retryable(), "{err}");
        // 0x16: a TLS handshake record (the ClientHello), not plain HTTP.
        let first = tokio::time::timeout(Duration::from_secs(30), server)
            .await
            .expect("the client never connected: https unsupported?")
            .expect("server");
        assert_eq!(first, 0x16);
    }

    #[test]
    fn a_pinned_id_resolves_only_itself() {
        let p = PinnedId {
            id: 5,
            schema: reader(),
        };
        assert!(p.schema_for_id(5).is_ok());
        assert!(matches!(
            p.schema_for_id(6),
            Err(SchemaError::UnknownSchemaId { id: 6, .. })
        ));
    }
}
