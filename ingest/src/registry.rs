//! Confluent-framed Avro through a real schema registry (`--schema-registry-url`).
//!
//! A Confluent-framed record (`00`, 4-byte big-endian schema id, datum) names its writer schema
//! by registry id. [`RegistryResolver`] fetches that schema with `schema_registry_converter`
//! (`GET /schemas/ids/{id}`), decides once whether the current `AuditEvent` reader schema of the
//! compiled-in catalog can read it (Avro schema resolution: added optional fields, another
//! field order, widened types are fine), and caches the verdict (moka, bounded): a schema id
//! names an immutable schema, so the verdict never changes.
//!
//! Schema references (Confluent's `"references": [{"name", "subject", "version"}]`, e.g. a
//! shared `io.auditpipe.Actor` record kept in its own subject, as confluent-kafka's and Java's
//! Avro serializers register them) are resolved before the verdict: [`fetch_with_references`]
//! follows them depth first through `GET /subjects/{subject}/versions/{version}` (each subject
//! version once; at most [`MAX_REFERENCE_DEPTH`] levels and [`MAX_REFERENCED_SCHEMAS`]
//! schemas; a cycle stops the walk), then [`judge_resolved`] parses the writer schema together
//! with them (`apache_avro::Schema::parse_str_with_list`) and inlines them
//! (`Schema::denormalize`) into one self-contained schema, which is judged, cached and decoded
//! with exactly like a flat one: the same record gives the same validated event whether its
//! producer registered the flat schema or the split one. The converter's own resolution
//! (`async_impl::avro::get_avro_schema`) is not used: it does not match a reference used by its
//! full name (what those serializers write), loops on a cycle, and reports a missing reference
//! and a registry outage alike as a non-retryable error.
//!
//! What happens to a record, by what the registry says:
//! - a compatible writer schema: the datum is decoded with it and resolved to the reader
//!   schema, then validated like every other input;
//! - an incompatible writer schema (or not Avro, or not parsable, also with its references):
//!   dead letter `incompatible_schema` naming the id and the first incompatibility;
//! - an id the registry does not know (HTTP 404): dead letter `unknown_schema_id`;
//! - references that do not resolve: dead letter `schema_reference_unresolved` naming the id
//!   and the reference chain (`io.auditpipe.Actor (subject s version 1) → …`): a referenced
//!   subject version the registry does not have (HTTP 404; like an unknown id, asked again for
//!   the next record), a reference cycle, a chain deeper than [`MAX_REFERENCE_DEPTH`], more
//!   than [`MAX_REFERENCED_SCHEMAS`] schemas, or a target that defines another type than the
//!   reference names (these are cached with the id);
//! - anything else (registry unreachable, 5xx, 401/403, a garbled answer), for the id or any of
//!   its references: the record waits and the whole resolution is retried with the shared
//!   retry helper, while `/readyz` reports
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
use schema_registry_converter::async_impl::schema_registry::{
    get_schema_by_id, get_schema_by_subject_and_version, SrSettings,
};
use schema_registry_converter::error::SRCError;
use schema_registry_converter::schema_registry_common::{RawError, RegisteredSchema, SchemaType};
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
    /// The id's schema references a subject version the registry does not have (HTTP 404):
    /// permanent for this record, like an unknown id (and, like it, not cached: the registry
    /// may learn the version).
    #[error("schema id {id}: reference {reference} is {detail}")]
    ReferenceNotFound {
        id: u32,
        /// The reference's chain from the id's schema, e.g. `A (subject a version 1) → B (…)`.
        reference: String,
        detail: String,
    },
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
    /// Named references to other registered schemas (Confluent's `references`), resolved by
    /// [`RegistryResolver`] before the schema is judged.
    pub references: Vec<SchemaReference>,
}

/// One entry of a registered schema's `references`: the type `name` the schema uses (for Avro
/// the full name, e.g. `io.auditpipe.Actor`) is defined by version `version` of `subject`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SchemaReference {
    pub name: String,
    pub subject: String,
    pub version: u32,
}

impl fmt::Display for SchemaReference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} (subject {} version {})",
            self.name, self.subject, self.version
        )
    }
}

/// Why a subject version (a reference's target) could not be fetched. The resolver turns it
/// into a [`FetchError`] naming the record's schema id and the reference.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VersionFetchError {
    /// The registry does not have the subject or the version (HTTP 404): permanent.
    #[error("not registered: {0}")]
    NotFound(String),
    /// Unreachable, 5xx, refused credentials, a garbled answer: retried.
    #[error("{0}")]
    Unavailable(String),
}

/// Where schemas come from: the registry client, or a table in unit tests.
pub trait SchemaSource: Send + Sync + fmt::Debug {
    /// `GET /schemas/ids/{id}`: the schema a record's Confluent header names.
    fn fetch(&self, id: u32) -> BoxFuture<'_, Result<FetchedSchema, FetchError>>;
    /// `GET /subjects/{subject}/versions/{version}`: the target of a schema reference.
    fn fetch_version<'a>(
        &'a self,
        subject: &'a str,
        version: u32,
    ) -> BoxFuture<'a, Result<FetchedSchema, VersionFetchError>>;
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
            Ok(fetched(registered))
        })
    }

    fn fetch_version<'a>(
        &'a self,
        subject: &'a str,
        version: u32,
    ) -> BoxFuture<'a, Result<FetchedSchema, VersionFetchError>> {
        Box::pin(async move {
            let registered =
                get_schema_by_subject_and_version(&self.settings, subject, Some(version))
                    .await
                    .map_err(|e| classify_version(&e))?;
            Ok(fetched(registered))
        })
    }
}

fn fetched(registered: RegisteredSchema) -> FetchedSchema {
    let schema_type = match registered.schema_type {
        SchemaType::Avro => "AVRO".to_owned(),
        SchemaType::Protobuf => "PROTOBUF".to_owned(),
        SchemaType::Json => "JSON".to_owned(),
        SchemaType::Other(t) => t,
        // The enum is non-exhaustive: a type this crate does not know is not Avro.
        other => format!("{other:?}"),
    };
    FetchedSchema {
        schema_type,
        text: registered.schema,
        references: registered
            .references
            .into_iter()
            .map(|r| SchemaReference {
                name: r.name,
                subject: r.subject,
                version: r.version,
            })
            .collect(),
    }
}

/// Confluent's error codes (with HTTP 404) for "subject not found", "version not found",
/// "schema not found".
const SUBJECT_NOT_FOUND: u32 = 40401;
const VERSION_NOT_FOUND: u32 = 40402;
const SCHEMA_NOT_FOUND: u32 = 40403;

/// Sorts a client error into "the id does not exist" and "try again". Only a 404 (Confluent
/// error code 40403, or the status when the body is not the registry's error JSON) is
/// permanent; everything else says nothing about the record.
pub fn classify(id: u32, e: &SRCError) -> FetchError {
    let (not_found, detail) = sort(e, &[SCHEMA_NOT_FOUND]);
    if not_found {
        FetchError::NotFound { id, detail }
    } else {
        FetchError::Unavailable { id, detail }
    }
}

/// [`classify`] for a subject version: 40401 (no such subject) and 40402 (no such version)
/// are permanent, like any 404.
pub fn classify_version(e: &SRCError) -> VersionFetchError {
    match sort(e, &[SUBJECT_NOT_FOUND, VERSION_NOT_FOUND, SCHEMA_NOT_FOUND]) {
        (true, detail) => VersionFetchError::NotFound(detail),
        (false, detail) => VersionFetchError::Unavailable(detail),
    }
}

/// (is it a 404, the error's text).
fn sort(e: &SRCError, not_found_codes: &[u32]) -> (bool, String) {
    let raw = std::error::Error::source(e).and_then(|s| s.downcast_ref::<RawError>());
    let not_found = match raw {
        Some(r) if not_found_codes.contains(&r.error_code) => true,
        // The client reports the HTTP status only in its message.
        _ => e.error.contains("status 404"),
    };
    let detail = match &e.cause {
        Some(c) => format!("{}: {c}", e.error),
        None => e.error.clone(),
    };
    (not_found, detail)
}

/// What a schema id means for the records that carry it. Cached per id.
#[derive(Debug, Clone)]
pub enum Verdict {
    /// The reader schema can read data written with this writer schema (self-contained: its
    /// references are inlined).
    Accepted(Arc<Schema>),
    /// It cannot: why (bounded text, names the id).
    Incompatible(Arc<str>),
    /// Its references cannot be resolved into one schema: a cycle, a chain deeper than
    /// [`MAX_REFERENCE_DEPTH`], more than [`MAX_REFERENCED_SCHEMAS`] schemas, or a reference
    /// whose target defines another name. Why (bounded text, names the id and the reference).
    Unresolved(Arc<str>),
}

/// Longest chain of references followed from a record's schema (A → B → … ): deeper is
/// [`Verdict::Unresolved`]. Real schemas nest a few levels; the bound keeps a misconfigured
/// registry from holding a record through thousands of fetches.
pub const MAX_REFERENCE_DEPTH: usize = 32;
/// Most distinct subject versions one schema id may pull in (all levels together).
pub const MAX_REFERENCED_SCHEMAS: usize = 256;

/// A schema id's schema with everything its references lead to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resolved {
    pub root: FetchedSchema,
    /// Every referenced subject version once, each after those it references (post-order), with
    /// the reference that first led to it.
    pub referenced: Vec<(SchemaReference, FetchedSchema)>,
    /// Why the references cannot be resolved (cycle, too deep, too many), if so.
    pub unresolved: Option<String>,
}

impl Default for FetchedSchema {
    fn default() -> Self {
        FetchedSchema {
            schema_type: "AVRO".to_owned(),
            text: String::new(),
            references: Vec::new(),
        }
    }
}

/// Fetches `id`'s schema and, depth first, every subject version its references lead to: each
/// once (a diamond A → B, A → C, B → D, C → D fetches D once), a cycle or a chain deeper than
/// [`MAX_REFERENCE_DEPTH`] ends the walk with [`Resolved::unresolved`] instead of looping.
/// A missing reference target is [`FetchError::ReferenceNotFound`]; a registry that fails
/// meanwhile is [`FetchError::Unavailable`] (retried, like the id's own fetch).
pub async fn fetch_with_references(
    source: &dyn SchemaSource,
    id: u32,
) -> Result<Resolved, FetchError> {
    /// A schema being walked: the reference that led to it (none for the root), its
    /// references not yet followed.
    struct Frame {
        via: Option<SchemaReference>,
        schema: FetchedSchema,
        next: usize,
    }
    let chain = |stack: &[Frame], last: &SchemaReference| {
        let mut parts: Vec<String> = stack
            .iter()
            .filter_map(|f| f.via.as_ref().map(ToString::to_string))
            .collect();
        parts.push(last.to_string());
        parts.join(" → ")
    };
    let root = source.fetch(id).await?;
    let mut resolved = Resolved::default();
    let mut done: std::collections::HashSet<(String, u32)> = std::collections::HashSet::new();
    let mut stack = vec![Frame {
        via: None,
        schema: root,
        next: 0,
    }];
    while let Some(top) = stack.last_mut() {
        let Some(reference) = top.schema.references.get(top.next).cloned() else {
            // All of its references are in: the schema follows them (post-order).
            let Some(Frame { via, schema, .. }) = stack.pop() else {
                break;
            };
            match via {
                Some(via) => {
                    done.insert((via.subject.clone(), via.version));
                    resolved.referenced.push((via, schema));
                }
                None => resolved.root = schema,
            }
            continue;
        };
        top.next += 1;
        let key = (reference.subject.clone(), reference.version);
        if done.contains(&key) {
            continue;
        }
        let on_path = stack.iter().any(|f| {
            f.via
                .as_ref()
                .is_some_and(|v| v.subject == key.0 && v.version == key.1)
        });
        let problem = if on_path {
            Some(format!("reference cycle: {}", chain(&stack, &reference)))
        } else if stack.len() > MAX_REFERENCE_DEPTH {
            Some(format!(
                "references nested deeper than {MAX_REFERENCE_DEPTH}: {}",
                chain(&stack, &reference)
            ))
        } else if done.len() + stack.len() > MAX_REFERENCED_SCHEMAS {
            Some(format!(
                "more than {MAX_REFERENCED_SCHEMAS} referenced schemas (at {reference})"
            ))
        } else {
            None
        };
        if let Some(problem) = problem {
            resolved.unresolved = Some(problem);
            return Ok(resolved);
        }
        let schema = source
            .fetch_version(&reference.subject, reference.version)
            .await
            .map_err(|e| match e {
                VersionFetchError::NotFound(detail) => FetchError::ReferenceNotFound {
                    id,
                    reference: bounded(chain(&stack, &reference)),
                    detail: bounded(format!("not registered: {detail}")),
                },
                VersionFetchError::Unavailable(detail) => FetchError::Unavailable {
                    id,
                    detail: format!("fetching reference {}: {detail}", chain(&stack, &reference)),
                },
            })?;
        stack.push(Frame {
            via: Some(reference),
            schema,
            next: 0,
        });
    }
    Ok(resolved)
}

/// Decides whether `reader` can read data written with `fetched` (Avro schema resolution).
/// A schema without references; [`judge_resolved`] for one with them.
pub fn judge(id: u32, fetched: &FetchedSchema, reader: &Schema) -> Verdict {
    judge_resolved(
        id,
        &Resolved {
            root: fetched.clone(),
            ..Resolved::default()
        },
        reader,
    )
}

/// Decides whether `reader` can read data written with the id's schema and its referenced
/// schemas: parsed together (`Schema::parse_str_with_list`), then made self-contained
/// (`Schema::denormalize`: the first use of a referenced type is its definition, later uses
/// name it), so records decode with one schema exactly as if the producer had registered the
/// flat schema.
pub fn judge_resolved(id: u32, resolved: &Resolved, reader: &Schema) -> Verdict {
    let fetched = &resolved.root;
    let no =
        |why: String| Verdict::Incompatible(Arc::from(bounded(format!("schema id {id}: {why}"))));
    let unresolved =
        |why: String| Verdict::Unresolved(Arc::from(bounded(format!("schema id {id}: {why}"))));
    if let Some(why) = &resolved.unresolved {
        return unresolved(why.clone());
    }
    if !fetched.schema_type.eq_ignore_ascii_case("AVRO") {
        return no(format!("a {} schema, not Avro", fetched.schema_type));
    }
    if let Some((r, s)) = resolved
        .referenced
        .iter()
        .find(|(_, s)| !s.schema_type.eq_ignore_ascii_case("AVRO"))
    {
        return no(format!(
            "reference {r} is a {} schema, not Avro",
            s.schema_type
        ));
    }
    let writer = if resolved.referenced.is_empty() {
        match Schema::parse_str(&fetched.text) {
            Ok(w) => w,
            Err(e) => return no(format!("not a valid Avro schema: {e}")),
        }
    } else {
        // Each target must define the type its reference names; otherwise the parse below
        // would only report an unknown type.
        for (r, s) in &resolved.referenced {
            let defined = defined_name(&s.text);
            let short = defined.rsplit('.').next().unwrap_or_default();
            if r.name != defined && r.name != short {
                return unresolved(format!(
                    "reference {r} defines {} instead",
                    if defined.is_empty() {
                        "no named type"
                    } else {
                        &defined
                    }
                ));
            }
        }
        let texts = resolved.referenced.iter().map(|(_, s)| s.text.as_str());
        let (mut writer, schemata) = match Schema::parse_str_with_list(&fetched.text, texts) {
            Ok(parsed) => parsed,
            Err(e) => {
                return no(format!(
                    "not a valid Avro schema with its {} referenced schemas: {}",
                    resolved.referenced.len(),
                    error_chain(&e)
                ))
            }
        };
        if let Err(e) = writer.denormalize(&schemata) {
            return unresolved(format!(
                "a referenced type is not defined by its references: {}",
                error_chain(&e)
            ));
        }
        writer
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

/// The full name of the named type a schema text defines at its top (`namespace.name`, or
/// `name` when it is already dotted); empty when it defines none (not JSON, not an object, a
/// primitive or a union).
fn defined_name(text: &str) -> String {
    let Ok(serde_json::Value::Object(o)) = serde_json::from_str::<serde_json::Value>(text) else {
        return String::new();
    };
    let name = o.get("name").and_then(|v| v.as_str()).unwrap_or_default();
    match o.get("namespace").and_then(|v| v.as_str()) {
        Some(ns) if !ns.is_empty() && !name.contains('.') && !name.is_empty() => {
            format!("{ns}.{name}")
        }
        _ => name.to_owned(),
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
                let resolved = fetch_with_references(source.as_ref(), id).await?;
                let v = judge_resolved(id, &resolved, &reader);
                match &v {
                    Verdict::Incompatible(why) => {
                        tracing::warn!(schema_id = id, reason = %why, "incompatible writer schema")
                    }
                    Verdict::Unresolved(why) => {
                        tracing::warn!(schema_id = id, reason = %why, "unresolvable schema references")
                    }
                    Verdict::Accepted(_) => {}
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
            references: Vec::new(),
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
            references: Vec::new(),
        };
        let Verdict::Incompatible(why) = judge(44, &proto, &r) else {
            panic!("protobuf accepted");
        };
        assert!(why.contains("PROTOBUF"), "{why}");
        let garbage = FetchedSchema {
            schema_type: "AVRO".into(),
            text: "{not json".into(),
            references: Vec::new(),
        };
        assert!(matches!(judge(45, &garbage, &r), Verdict::Incompatible(_)));
    }

    /// A table of schemas (by id, and subject versions for references) with switchable
    /// outages and fetch counters.
    #[derive(Debug, Default)]
    struct Table {
        schemas: Mutex<HashMap<u32, FetchedSchema>>,
        versions: Mutex<HashMap<(String, u32), FetchedSchema>>,
        down: AtomicBool,
        /// Only `GET /subjects/…/versions/…` fails (an outage in the middle of a resolution).
        versions_down: AtomicBool,
        fetches: AtomicUsize,
        version_fetches: Mutex<HashMap<(String, u32), usize>>,
    }

    impl Table {
        fn version_fetches(&self, subject: &str, version: u32) -> usize {
            let f = self.version_fetches.lock().expect("lock");
            f.get(&(subject.to_owned(), version)).copied().unwrap_or(0)
        }

        fn all_version_fetches(&self) -> usize {
            self.version_fetches.lock().expect("lock").values().sum()
        }

        fn put_version(&self, subject: &str, version: u32, schema: FetchedSchema) {
            let mut v = self.versions.lock().expect("lock");
            v.insert((subject.to_owned(), version), schema);
        }
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

        fn fetch_version<'a>(
            &'a self,
            subject: &'a str,
            version: u32,
        ) -> BoxFuture<'a, Result<FetchedSchema, VersionFetchError>> {
            Box::pin(async move {
                let key = (subject.to_owned(), version);
                *self
                    .version_fetches
                    .lock()
                    .expect("lock")
                    .entry(key.clone())
                    .or_default() += 1;
                if self.down.load(Ordering::SeqCst) || self.versions_down.load(Ordering::SeqCst) {
                    return Err(VersionFetchError::Unavailable("connection refused".into()));
                }
                let found = self.versions.lock().expect("lock").get(&key).cloned();
                found.ok_or(VersionFetchError::NotFound(
                    "40402 Version not found".into(),
                ))
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

    // ---- schema references ----

    const NS: &str = "io.auditpipe";

    /// Cuts the first definition of the named type `name` out of `v`, leaving its full name in
    /// its place (as a producer with a shared type in its own subject writes it); the cut-out
    /// definition, with its namespace made explicit (it inherited the enclosing one).
    fn cut_out(v: &mut serde_json::Value, name: &str) -> Option<serde_json::Value> {
        use serde_json::Value;
        let is_def = |o: &serde_json::Map<String, Value>| {
            o.get("name").and_then(Value::as_str) == Some(name)
                && matches!(
                    o.get("type").and_then(Value::as_str),
                    Some("record" | "enum" | "fixed")
                )
        };
        match v {
            Value::Object(o) if is_def(o) => {
                let mut def = Value::Object(o.clone());
                def["namespace"] = serde_json::json!(NS);
                *v = Value::String(format!("{NS}.{name}"));
                Some(def)
            }
            Value::Object(o) => o.values_mut().find_map(|c| cut_out(c, name)),
            Value::Array(a) => a.iter_mut().find_map(|c| cut_out(c, name)),
            _ => None,
        }
    }

    fn reference(name: &str, subject: &str, version: u32) -> SchemaReference {
        SchemaReference {
            name: format!("{NS}.{name}"),
            subject: subject.into(),
            version,
        }
    }

    fn with_refs(v: &serde_json::Value, references: Vec<SchemaReference>) -> FetchedSchema {
        FetchedSchema {
            references,
            ..avro(v)
        }
    }

    /// The reader schema split three ways, nested: `AuditEvent` (id 20) → `Actor` (subject
    /// `shared-actor` v1) → `ActorType` (subject `shared-actor-type` v1); the flat schema is
    /// id 21.
    fn nested_table() -> Arc<Table> {
        let mut root = reader_json();
        let mut actor = cut_out(&mut root, "Actor").expect("Actor in the reader schema");
        let actor_type = cut_out(&mut actor, "ActorType").expect("ActorType in Actor");
        let table = Arc::new(Table::default());
        table.put_version("shared-actor-type", 1, avro(&actor_type));
        table.put_version(
            "shared-actor",
            1,
            with_refs(&actor, vec![reference("ActorType", "shared-actor-type", 1)]),
        );
        table.schemas.lock().expect("lock").extend([
            (
                20,
                with_refs(&root, vec![reference("Actor", "shared-actor", 1)]),
            ),
            (21, avro(&reader_json())),
        ]);
        table
    }

    fn processor_over(table: Arc<Table>) -> crate::IngestProcessor {
        crate::IngestProcessor::new(
            "t.validated",
            "t.rejected",
            schemas::json::JsonLimits::default(),
            Arc::new(schemas::framing::CatalogIdResolver::new().expect("catalog")),
        )
        .with_registry(
            Arc::new(RegistryResolver::new(table, reader(), 10, fast(0))),
            CancellationToken::new(),
        )
    }

    fn raw_record(payload: Vec<u8>) -> worker_runtime::kafka::InputRecord {
        worker_runtime::kafka::InputRecord {
            topic: "t.raw".into(),
            partition: 0,
            offset: 9,
            key: None,
            payload: Some(payload),
            headers: Vec::new(),
            timestamp_ms: Some(1_705_314_601_000),
        }
    }

    fn reason_of(out: &worker_runtime::kafka::OutputRecord) -> (String, String, String) {
        use worker_runtime::kafka::dlq::{HEADER_REASON_CODE, HEADER_REASON_MESSAGE};
        let h = |name: &str| {
            out.headers
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
                .unwrap_or_default()
        };
        (
            out.topic.clone(),
            h(HEADER_REASON_CODE),
            h(HEADER_REASON_MESSAGE),
        )
    }

    #[tokio::test]
    async fn nested_references_resolve_to_the_flat_schema_and_the_same_event_comes_out() {
        let table = nested_table();
        let resolved = fetch_with_references(table.as_ref(), 20)
            .await
            .expect("resolved");
        // Post-order: a referenced schema comes after those it references.
        let order: Vec<&str> = resolved
            .referenced
            .iter()
            .map(|(r, _)| r.subject.as_str())
            .collect();
        assert_eq!(order, ["shared-actor-type", "shared-actor"]);
        assert_eq!(resolved.unresolved, None);
        let Verdict::Accepted(writer) = judge_resolved(20, &resolved, &reader()) else {
            panic!("the split schema must be accepted");
        };
        // Self-contained and the same schema as the flat one.
        assert_eq!(*writer, *reader());

        // Through the processor: the same record bytes under the flat id and under the split
        // id give the same validated record.
        let processor = processor_over(table.clone());
        let event = schemas::testing::sample_event();
        let flat = processor
            .handle_async(&raw_record(framing_of(&event, 21)))
            .await
            .expect("flat");
        let split = processor
            .handle_async(&raw_record(framing_of(&event, 20)))
            .await
            .expect("split");
        assert_eq!(split.topic, "t.validated", "{:?}", reason_of(&split));
        assert_eq!(split.payload, flat.payload, "the same event out");
        assert_eq!(split.key, flat.key);
        let got = schemas::framing::decode_event(split.payload.as_deref().expect("payload"), None)
            .expect("decodes");
        assert_eq!(got.actor, event.actor);

        // The verdict is cached per id: more records fetch nothing more.
        let before = table.all_version_fetches();
        processor
            .handle_async(&raw_record(framing_of(&event, 20)))
            .await
            .expect("again");
        assert_eq!(table.all_version_fetches(), before);
        // Once by the direct walk above, once by the processor's resolver.
        assert_eq!(table.version_fetches("shared-actor-type", 1), 2);
    }

    #[tokio::test]
    async fn a_schema_reached_twice_is_fetched_once_and_defined_once() {
        // A → B, A → C, B → D, C → D: D once, before B and C.
        let d = serde_json::json!({"type": "record", "name": "D", "namespace": NS,
            "fields": [{"name": "d", "type": "long"}]});
        let b = serde_json::json!({"type": "record", "name": "B", "namespace": NS,
            "fields": [{"name": "d", "type": format!("{NS}.D")}]});
        let c = serde_json::json!({"type": "record", "name": "C", "namespace": NS,
            "fields": [{"name": "d", "type": format!("{NS}.D")}]});
        let a = serde_json::json!({"type": "record", "name": "A", "namespace": NS,
            "fields": [{"name": "b", "type": format!("{NS}.B")},
                       {"name": "c", "type": format!("{NS}.C")}]});
        let table = Table::default();
        table.put_version("d", 1, avro(&d));
        table.put_version("b", 1, with_refs(&b, vec![reference("D", "d", 1)]));
        table.put_version("c", 1, with_refs(&c, vec![reference("D", "d", 1)]));
        table.schemas.lock().expect("lock").insert(
            30,
            with_refs(&a, vec![reference("B", "b", 1), reference("C", "c", 1)]),
        );
        let resolved = fetch_with_references(&table, 30).await.expect("resolved");
        let order: Vec<&str> = resolved
            .referenced
            .iter()
            .map(|(r, _)| r.subject.as_str())
            .collect();
        assert_eq!(order, ["d", "b", "c"]);
        assert_eq!(table.version_fetches("d", 1), 1);
        // Not an AuditEvent, so incompatible; but it parses (D defined once, then named).
        let Verdict::Incompatible(why) = judge_resolved(30, &resolved, &reader()) else {
            panic!("A is not an AuditEvent");
        };
        assert!(why.contains("reader schema cannot read"), "{why}");
    }

    #[tokio::test]
    async fn a_reference_cycle_is_unresolved_after_a_bounded_walk_and_cached() {
        // id 40 = A (subject a v1) → B (subject b v1) → A (subject a v1) → …
        let a = serde_json::json!({"type": "record", "name": "A", "namespace": NS,
            "fields": [{"name": "b", "type": ["null", format!("{NS}.B")], "default": null}]});
        let b = serde_json::json!({"type": "record", "name": "B", "namespace": NS,
            "fields": [{"name": "a", "type": ["null", format!("{NS}.A")], "default": null}]});
        let table = Arc::new(Table::default());
        let a_refs = with_refs(&a, vec![reference("B", "b", 1)]);
        table.put_version("a", 1, a_refs.clone());
        table.put_version("b", 1, with_refs(&b, vec![reference("A", "a", 1)]));
        table.schemas.lock().expect("lock").insert(40, a_refs);
        let resolver = RegistryResolver::new(table.clone(), reader(), 10, fast(0));
        let Ok(Verdict::Unresolved(why)) = resolver.verdict(40).await else {
            panic!("a cycle must be unresolved");
        };
        assert!(
            why.contains("schema id 40") && why.contains("reference cycle"),
            "{why}"
        );
        assert!(
            why.contains("io.auditpipe.B (subject b version 1) → io.auditpipe.A (subject a version 1) → io.auditpipe.B (subject b version 1)"),
            "{why}"
        );
        // Each subject version was fetched once, and the verdict is cached.
        assert_eq!(table.all_version_fetches(), 2);
        resolver.verdict(40).await.expect("cached");
        assert_eq!(table.all_version_fetches(), 2);
        assert_eq!(table.fetches.load(Ordering::SeqCst), 1);

        // A schema that references itself.
        table.put_version("self", 1, with_refs(&a, vec![reference("A", "self", 1)]));
        table
            .schemas
            .lock()
            .expect("lock")
            .insert(41, with_refs(&a, vec![reference("A", "self", 1)]));
        assert!(matches!(
            resolver.verdict(41).await,
            Ok(Verdict::Unresolved(why)) if why.contains("reference cycle")
        ));
    }

    #[tokio::test]
    async fn a_chain_deeper_than_the_bound_is_unresolved() {
        let table = Table::default();
        let link = |n: usize| {
            serde_json::json!({"type": "record", "name": format!("L{n}"), "namespace": NS,
                "fields": [{"name": "next", "type": format!("{NS}.L{}", n + 1)}]})
        };
        let depth = MAX_REFERENCE_DEPTH + 5;
        for n in 1..=depth {
            table.put_version(
                &format!("l{n}"),
                1,
                with_refs(
                    &link(n),
                    vec![reference(&format!("L{}", n + 1), &format!("l{}", n + 1), 1)],
                ),
            );
        }
        table
            .schemas
            .lock()
            .expect("lock")
            .insert(50, with_refs(&link(0), vec![reference("L1", "l1", 1)]));
        let resolved = fetch_with_references(&table, 50).await.expect("walk");
        let why = resolved.unresolved.as_deref().expect("too deep");
        assert!(why.contains("deeper than 32"), "{why}");
        assert_eq!(table.all_version_fetches(), MAX_REFERENCE_DEPTH);
        assert!(matches!(
            judge_resolved(50, &resolved, &reader()),
            Verdict::Unresolved(_)
        ));
    }

    #[tokio::test]
    async fn a_missing_reference_is_a_specific_dead_letter_and_is_asked_again() {
        let table = nested_table();
        // id 60: the nested schema with its Actor reference pointing at a version that was
        // never registered; id 61: Actor's own reference points at a subject that does not
        // exist (the missing one is two levels down).
        let mut root = reader_json();
        cut_out(&mut root, "Actor").expect("Actor");
        table.schemas.lock().expect("lock").insert(
            60,
            with_refs(&root, vec![reference("Actor", "shared-actor", 7)]),
        );
        let mut actor_root = reader_json();
        let mut actor = cut_out(&mut actor_root, "Actor").expect("Actor");
        cut_out(&mut actor, "ActorType").expect("ActorType");
        table.put_version(
            "shared-actor",
            2,
            with_refs(&actor, vec![reference("ActorType", "gone-subject", 1)]),
        );
        table.schemas.lock().expect("lock").insert(
            61,
            with_refs(&actor_root, vec![reference("Actor", "shared-actor", 2)]),
        );
        let resolver = RegistryResolver::new(table.clone(), reader(), 10, fast(0));
        let err = resolver
            .resolve(61, &CancellationToken::new())
            .await
            .expect_err("missing");
        let RetryError::Failed(e @ FetchError::ReferenceNotFound { .. }) = &err else {
            panic!("{err}");
        };
        let text = e.to_string();
        assert!(
            text.contains("schema id 61")
                && text.contains("io.auditpipe.Actor (subject shared-actor version 2) → io.auditpipe.ActorType (subject gone-subject version 1)")
                && text.contains("not registered"),
            "{text}"
        );
        assert!(!e.is_retryable());
        resolver.verdict(61).await.expect_err("still missing");
        assert_eq!(
            table.version_fetches("gone-subject", 1),
            2,
            "a missing reference is not cached"
        );

        let processor = processor_over(table.clone());
        let event = schemas::testing::sample_event();
        for id in [60, 61] {
            let out = processor
                .handle_async(&raw_record(framing_of(&event, id)))
                .await
                .expect("dead letter");
            let (topic, code, message) = reason_of(&out);
            assert_eq!(
                (topic.as_str(), code.as_str()),
                ("t.rejected", "schema_reference_unresolved"),
                "{message}"
            );
            assert!(message.contains("io.auditpipe.Actor"), "{message}");
        }
    }

    #[tokio::test]
    async fn a_reference_naming_another_type_than_its_target_defines_is_unresolved() {
        let table = nested_table();
        let mut root = reader_json();
        cut_out(&mut root, "Actor").expect("Actor");
        // The reference says Actor, but the version holds ActorType.
        table.schemas.lock().expect("lock").insert(
            70,
            with_refs(&root, vec![reference("Actor", "shared-actor-type", 1)]),
        );
        let processor = processor_over(table);
        let out = processor
            .handle_async(&raw_record(framing_of(
                &schemas::testing::sample_event(),
                70,
            )))
            .await
            .expect("dead letter");
        let (_, code, message) = reason_of(&out);
        assert_eq!(code, "schema_reference_unresolved", "{message}");
        assert!(
            message.contains("defines io.auditpipe.ActorType instead"),
            "{message}"
        );
    }

    #[tokio::test]
    async fn an_outage_while_fetching_references_is_retried_never_dead_lettered() {
        let table = nested_table();
        table.versions_down.store(true, Ordering::SeqCst);
        let ready = Readiness::default();
        ready.set(true);
        let resolver = Arc::new(
            RegistryResolver::new(table.clone(), reader(), 10, fast(0))
                .with_readiness(ready.clone()),
        );
        let task = {
            let r = resolver.clone();
            tokio::spawn(async move { r.resolve(20, &CancellationToken::new()).await })
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while table.version_fetches("shared-actor", 1) < 3 {
            assert!(tokio::time::Instant::now() < deadline, "no retries seen");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let check = ready.check(CHECK_SCHEMA_REGISTRY).expect("reported");
        assert!(
            !check.ok
                && check.detail.contains("schema id 20")
                && check.detail.contains("shared-actor"),
            "{check:?}"
        );
        assert!(!task.is_finished(), "an outage must not end in a verdict");
        table.versions_down.store(false, Ordering::SeqCst);
        let verdict = task
            .await
            .expect("task")
            .expect("resolved after the outage");
        assert!(matches!(verdict, Verdict::Accepted(_)));
        assert!(ready.get());
    }

    #[test]
    fn subject_version_errors_are_sorted_into_not_found_and_retry() {
        for (code, status) in [(40401, "404 Not Found"), (40402, "404 Not Found")] {
            let raw: RawError =
                serde_json::from_str(&format!(r#"{{"error_code":{code},"message":"not found"}}"#))
                    .expect("raw error");
            let e = SRCError::non_retryable_with_cause(
                raw,
                &format!("HTTP request to schema registry failed with status {status}"),
            );
            assert!(matches!(
                classify_version(&e),
                VersionFetchError::NotFound(_)
            ));
        }
        let e = SRCError::non_retryable_with_cause(
            "boom",
            "HTTP request to schema registry failed with status 503 Service Unavailable",
        );
        assert!(matches!(
            classify_version(&e),
            VersionFetchError::Unavailable(_)
        ));
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
