//! A schema-registry REST fixture: the subset of the Confluent Schema Registry API that
//! `schema_registry_converter` (ingest) and confluent-kafka's `SchemaRegistryClient` /
//! `AvroSerializer` (Python producers) call, served on 127.0.0.1:0.
//!
//! No Confluent-compatible registry can be installed on this machine (design doc, "Schema
//! registry"): this fixture is the accepted stand-in. It keeps real registry semantics where
//! the clients can see them: global ids from 1 in registration order, the same schema gets the
//! same id under every subject, versions per subject from 1, re-registering a subject's
//! existing schema returns its id and version, Confluent error codes (40401 subject, 40402
//! version, 40403 schema not found, 42201 invalid schema, 40101 unauthorized) with their HTTP
//! statuses. It does not check compatibility on registration (ingest's decision is what the
//! tests exercise) and ignores `normalize` and `deleted`.
//!
//! Schema references as Confluent serves them: a registration may carry
//! `"references": [{"name", "subject", "version"}]` (each must name a registered subject
//! version, else 42201); they are part of the schema's identity (the same text with other
//! references is another schema) and come back with the schema from `GET /schemas/ids/{id}`
//! and `GET /subjects/{subject}/versions/{version}` (omitted when empty, as Confluent does).
//! [`RegistryFixture::register_dangling`] stores references that resolve to nothing or to a
//! cycle, which a real registry refuses at registration but can still end up holding (a
//! referenced version hard-deleted later): what ingest must survive.
//!
//! Endpoints: `POST /subjects/{subject}/versions` (register), `POST /subjects/{subject}`
//! (lookup), `GET /subjects`, `GET /subjects/{subject}/versions`,
//! `GET /subjects/{subject}/versions/{version|latest}`, `GET /schemas/ids/{id}`.
//!
//! Test controls: basic-auth credentials to require, an outage switch (every request answers
//! 503 while it is off), and per-id and per-subject-version fetch counts (to see ingest's cache
//! and retries).

use anyhow::Context as _;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use base64::Engine as _;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::task::JoinHandle;

const CONTENT_TYPE: &str = "application/vnd.schemaregistry.v1+json";

/// One entry of a schema's `references`: the type `name` is defined by `version` of `subject`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Reference {
    pub name: String,
    pub subject: String,
    pub version: u32,
}

impl Reference {
    pub fn new(name: &str, subject: &str, version: u32) -> Self {
        Reference {
            name: name.to_owned(),
            subject: subject.to_owned(),
            version,
        }
    }
}

#[derive(Debug)]
struct Stored {
    text: String,
    /// `None` for Avro (Confluent omits `schemaType` for Avro).
    schema_type: Option<String>,
    /// The schema as JSON (or the raw text for non-JSON schemas): two registrations of the
    /// same schema with other whitespace get the same id.
    canonical: Value,
    references: Vec<Reference>,
}

#[derive(Debug, Default)]
struct Store {
    /// Id `i + 1` is `schemas[i]`.
    schemas: Vec<Stored>,
    /// Subject → ids of its versions (version `v` is `[v - 1]`).
    subjects: BTreeMap<String, Vec<u32>>,
    /// `GET /schemas/ids/{id}` requests per id (including refused ones).
    id_fetches: HashMap<u32, usize>,
    /// `GET /subjects/{subject}/versions/{version}` requests (including refused ones).
    version_fetches: HashMap<(String, String), usize>,
}

#[derive(Debug)]
struct Shared {
    store: Mutex<Store>,
    available: AtomicBool,
    /// The `Authorization` header value to require, if any.
    authorization: Option<String>,
}

impl Shared {
    fn store(&self) -> MutexGuard<'_, Store> {
        // A poisoned lock only means a handler panicked; the maps are still consistent.
        self.store.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A running fixture; stops when dropped.
#[derive(Debug)]
pub struct RegistryFixture {
    url: String,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl Drop for RegistryFixture {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl RegistryFixture {
    /// A fixture that needs no credentials.
    pub async fn start() -> anyhow::Result<Self> {
        Self::serve(None).await
    }

    /// A fixture that refuses requests without these basic-auth credentials (401, 40101).
    pub async fn start_with_basic_auth(user: &str, password: &str) -> anyhow::Result<Self> {
        let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        Self::serve(Some(format!("Basic {token}"))).await
    }

    async fn serve(authorization: Option<String>) -> anyhow::Result<Self> {
        let shared = Arc::new(Shared {
            store: Mutex::new(Store::default()),
            available: AtomicBool::new(true),
            authorization,
        });
        let app = Router::new()
            .route("/subjects", get(list_subjects))
            .route("/subjects/{subject}", post(lookup))
            .route("/subjects/{subject}/versions", post(register).get(versions))
            .route("/subjects/{subject}/versions/{version}", get(version))
            .route("/schemas/ids/{id}", get(schema_by_id))
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding the registry fixture")?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::warn!(error = %e, "registry fixture stopped");
            }
        });
        Ok(RegistryFixture {
            url: format!("http://{addr}"),
            shared,
            task,
        })
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Registers `schema` (Avro JSON text) under `subject` as a producer would; its id.
    pub fn register(&self, subject: &str, schema: &str) -> anyhow::Result<u32> {
        self.register_with_references(subject, schema, &[])
    }

    /// Registers `schema` with schema references, each of which must name a registered subject
    /// version (as over HTTP); its id.
    pub fn register_with_references(
        &self,
        subject: &str,
        schema: &str,
        references: &[Reference],
    ) -> anyhow::Result<u32> {
        let mut store = self.shared.store();
        check_references(&store, references)
            .map_err(|e| anyhow::anyhow!("registering under {subject}: {e}"))?;
        let (id, _) = register_in(&mut store, subject, schema, None, references.to_vec())
            .map_err(|e| anyhow::anyhow!("registering under {subject}: {e}"))?;
        Ok(id)
    }

    /// Registers `schema` with references that are not checked: they may name versions that do
    /// not exist (yet), so a missing reference or a cycle can be set up. Its (id, version).
    pub fn register_dangling(
        &self,
        subject: &str,
        schema: &str,
        references: &[Reference],
    ) -> anyhow::Result<(u32, u32)> {
        register_in(
            &mut self.shared.store(),
            subject,
            schema,
            None,
            references.to_vec(),
        )
        .map_err(|e| anyhow::anyhow!("registering under {subject}: {e}"))
    }

    /// Off: every request answers 503 (a registry outage); on: normal service.
    pub fn set_available(&self, available: bool) {
        self.shared.available.store(available, Ordering::SeqCst);
    }

    /// How often `GET /schemas/ids/{id}` was asked for `id`.
    pub fn fetches_of(&self, id: u32) -> usize {
        self.shared
            .store()
            .id_fetches
            .get(&id)
            .copied()
            .unwrap_or(0)
    }

    /// How often `GET /subjects/{subject}/versions/{version}` was asked for this version.
    pub fn fetches_of_version(&self, subject: &str, version: u32) -> usize {
        self.shared
            .store()
            .version_fetches
            .get(&(subject.to_owned(), version.to_string()))
            .copied()
            .unwrap_or(0)
    }

    /// The ids of `subject`'s versions, in version order.
    pub fn versions_of(&self, subject: &str) -> Vec<u32> {
        self.shared
            .store()
            .subjects
            .get(subject)
            .cloned()
            .unwrap_or_default()
    }
}

fn reply(status: StatusCode, body: Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, CONTENT_TYPE)],
        body.to_string(),
    )
        .into_response()
}

fn error(status: StatusCode, code: u32, message: String) -> Response {
    reply(status, json!({"error_code": code, "message": message}))
}

/// An error answer decided before the endpoint's own work (small, unlike a `Response`).
struct Refusal {
    status: StatusCode,
    code: u32,
    message: String,
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        error(self.status, self.code, self.message)
    }
}

fn refuse(status: StatusCode, code: u32, message: String) -> Refusal {
    Refusal {
        status,
        code,
        message,
    }
}

/// Outage and credentials, checked before every endpoint.
fn admit(shared: &Shared, headers: &HeaderMap) -> Result<(), Refusal> {
    if !shared.available.load(Ordering::SeqCst) {
        return Err(refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            50301,
            "schema registry fixture: outage switched on".into(),
        ));
    }
    if let Some(expected) = &shared.authorization {
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        if given != Some(expected.as_str()) {
            return Err(refuse(
                StatusCode::UNAUTHORIZED,
                40101,
                "Unauthorized".into(),
            ));
        }
    }
    Ok(())
}

fn canonical(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_owned()))
}

/// A registry resolves references when a schema is registered: each must exist.
fn check_references(store: &Store, references: &[Reference]) -> Result<(), String> {
    for r in references {
        let exists = store
            .subjects
            .get(&r.subject)
            .is_some_and(|v| (1..=v.len()).contains(&(r.version as usize)));
        if !exists {
            return Err(format!(
                "Invalid schema: reference {} (subject {} version {}) not found",
                r.name, r.subject, r.version
            ));
        }
    }
    Ok(())
}

/// Registers; returns (id, version). Errors are (status, code, message).
fn register_in(
    store: &mut Store,
    subject: &str,
    text: &str,
    schema_type: Option<String>,
    references: Vec<Reference>,
) -> Result<(u32, u32), String> {
    let schema_type = schema_type.filter(|t| t != "AVRO");
    if schema_type.is_none() && serde_json::from_str::<Value>(text).is_err() {
        return Err("Invalid schema: not JSON".into());
    }
    let canon = canonical(text);
    let id = match store.schemas.iter().position(|s| {
        s.canonical == canon && s.schema_type == schema_type && s.references == references
    }) {
        Some(i) => i as u32 + 1,
        None => {
            store.schemas.push(Stored {
                text: text.to_owned(),
                schema_type,
                canonical: canon,
                references,
            });
            store.schemas.len() as u32
        }
    };
    let versions = store.subjects.entry(subject.to_owned()).or_default();
    let version = match versions.iter().position(|v| *v == id) {
        Some(i) => i as u32 + 1,
        None => {
            versions.push(id);
            versions.len() as u32
        }
    };
    Ok((id, version))
}

/// What a register or lookup request asks about.
struct Request {
    text: String,
    schema_type: Option<String>,
    references: Vec<Reference>,
}

/// The body of a register or lookup request.
fn parse_request(body: &[u8]) -> Result<Request, Refusal> {
    let v: Value = serde_json::from_slice(body).map_err(|e| {
        refuse(
            StatusCode::UNPROCESSABLE_ENTITY,
            42201,
            format!("Invalid request body: {e}"),
        )
    })?;
    let Some(text) = v.get("schema").and_then(Value::as_str) else {
        return Err(refuse(
            StatusCode::UNPROCESSABLE_ENTITY,
            42201,
            "Invalid schema: no `schema` string".into(),
        ));
    };
    let schema_type = v
        .get("schemaType")
        .and_then(Value::as_str)
        .map(str::to_owned);
    let references = match v.get("references") {
        None | Some(Value::Null) => Vec::new(),
        Some(r) => serde_json::from_value(r.clone()).map_err(|e| {
            refuse(
                StatusCode::UNPROCESSABLE_ENTITY,
                42201,
                format!("Invalid schema: bad `references`: {e}"),
            )
        })?,
    };
    Ok(Request {
        text: text.to_owned(),
        schema_type,
        references,
    })
}

/// `schema`, `schemaType` (not for Avro) and `references` (when there are any) of a stored
/// schema, as Confluent writes them.
fn describe(s: &Stored, body: &mut Value) {
    body["schema"] = json!(s.text);
    if let Some(t) = &s.schema_type {
        body["schemaType"] = json!(t);
    }
    if !s.references.is_empty() {
        body["references"] = json!(s.references);
    }
}

fn schema_body(store: &Store, subject: &str, version: u32, id: u32) -> Value {
    let mut body = json!({"subject": subject, "version": version, "id": id});
    describe(&store.schemas[(id - 1) as usize], &mut body);
    body
}

async fn register(
    State(shared): State<Arc<Shared>>,
    Path(subject): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(r) = admit(&shared, &headers) {
        return r.into_response();
    }
    let req = match parse_request(&body) {
        Ok(v) => v,
        Err(r) => return r.into_response(),
    };
    let mut store = shared.store();
    if let Err(message) = check_references(&store, &req.references) {
        return error(StatusCode::UNPROCESSABLE_ENTITY, 42201, message);
    }
    match register_in(
        &mut store,
        &subject,
        &req.text,
        req.schema_type,
        req.references,
    ) {
        Ok((id, version)) => reply(
            StatusCode::OK,
            json!({"id": id, "subject": subject, "version": version}),
        ),
        Err(message) => error(StatusCode::UNPROCESSABLE_ENTITY, 42201, message),
    }
}

async fn lookup(
    State(shared): State<Arc<Shared>>,
    Path(subject): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(r) = admit(&shared, &headers) {
        return r.into_response();
    }
    let req = match parse_request(&body) {
        Ok(v) => v,
        Err(r) => return r.into_response(),
    };
    let schema_type = req.schema_type.filter(|t| t != "AVRO");
    let canon = canonical(&req.text);
    let store = shared.store();
    let Some(versions) = store.subjects.get(&subject) else {
        return error(
            StatusCode::NOT_FOUND,
            40401,
            format!("Subject '{subject}' not found."),
        );
    };
    let found = versions.iter().enumerate().find(|(_, id)| {
        let s = &store.schemas[(**id - 1) as usize];
        s.canonical == canon && s.schema_type == schema_type && s.references == req.references
    });
    match found {
        Some((i, id)) => reply(
            StatusCode::OK,
            schema_body(&store, &subject, i as u32 + 1, *id),
        ),
        None => error(StatusCode::NOT_FOUND, 40403, "Schema not found".into()),
    }
}

async fn list_subjects(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    if let Err(r) = admit(&shared, &headers) {
        return r.into_response();
    }
    let subjects: Vec<String> = shared.store().subjects.keys().cloned().collect();
    reply(StatusCode::OK, json!(subjects))
}

async fn versions(
    State(shared): State<Arc<Shared>>,
    Path(subject): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = admit(&shared, &headers) {
        return r.into_response();
    }
    match shared.store().subjects.get(&subject) {
        Some(v) => reply(StatusCode::OK, json!((1..=v.len()).collect::<Vec<_>>())),
        None => error(
            StatusCode::NOT_FOUND,
            40401,
            format!("Subject '{subject}' not found."),
        ),
    }
}

async fn version(
    State(shared): State<Arc<Shared>>,
    Path((subject, version)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    *shared
        .store()
        .version_fetches
        .entry((subject.clone(), version.clone()))
        .or_default() += 1;
    if let Err(r) = admit(&shared, &headers) {
        return r.into_response();
    }
    let store = shared.store();
    let Some(versions) = store.subjects.get(&subject) else {
        return error(
            StatusCode::NOT_FOUND,
            40401,
            format!("Subject '{subject}' not found."),
        );
    };
    let n = if version == "latest" || version == "-1" {
        Some(versions.len())
    } else {
        version.parse::<usize>().ok()
    };
    match n.filter(|n| (1..=versions.len()).contains(n)) {
        Some(n) => reply(
            StatusCode::OK,
            schema_body(&store, &subject, n as u32, versions[n - 1]),
        ),
        None => error(
            StatusCode::NOT_FOUND,
            40402,
            format!("Version {version} not found."),
        ),
    }
}

async fn schema_by_id(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let id: u32 = match id.parse() {
        Ok(id) => id,
        Err(_) => return error(StatusCode::NOT_FOUND, 40403, "Schema not found".into()),
    };
    *shared.store().id_fetches.entry(id).or_default() += 1;
    if let Err(r) = admit(&shared, &headers) {
        return r.into_response();
    }
    let store = shared.store();
    match id
        .checked_sub(1)
        .and_then(|i| store.schemas.get(i as usize))
    {
        Some(s) => {
            let mut body = json!({});
            describe(s, &mut body);
            reply(StatusCode::OK, body)
        }
        None => error(
            StatusCode::NOT_FOUND,
            40403,
            format!("Schema {id} not found"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_global_and_versions_per_subject() {
        let mut s = Store::default();
        let a = r#"{"type":"record","name":"A","fields":[]}"#;
        let a_spaced = r#"{ "type": "record", "name": "A", "fields": [] }"#;
        let b = r#"{"type":"record","name":"B","fields":[]}"#;
        assert_eq!(register_in(&mut s, "t-value", a, None, vec![]), Ok((1, 1)));
        assert_eq!(
            register_in(&mut s, "t-value", a_spaced, None, vec![]),
            Ok((1, 1))
        );
        assert_eq!(register_in(&mut s, "t-value", b, None, vec![]), Ok((2, 2)));
        assert_eq!(
            register_in(&mut s, "u-value", b, Some("AVRO".into()), vec![]),
            Ok((2, 1))
        );
        assert!(register_in(&mut s, "t-value", "{nope", None, vec![]).is_err());
    }

    #[test]
    fn references_are_part_of_a_schema_and_must_exist() {
        let mut s = Store::default();
        let actor = r#"{"type":"record","name":"Actor","namespace":"x","fields":[]}"#;
        let event = r#"{"type":"record","name":"E","namespace":"x","fields":[{"name":"a","type":"x.Actor"}]}"#;
        let r = vec![Reference::new("x.Actor", "actor", 1)];
        assert!(check_references(&s, &r).is_err(), "nothing registered yet");
        assert_eq!(
            register_in(&mut s, "actor", actor, None, vec![]),
            Ok((1, 1))
        );
        assert_eq!(check_references(&s, &r), Ok(()));
        assert!(check_references(&s, &[Reference::new("x.Actor", "actor", 2)]).is_err());
        assert_eq!(
            register_in(&mut s, "e-value", event, None, r.clone()),
            Ok((2, 1))
        );
        assert_eq!(register_in(&mut s, "e-value", event, None, r), Ok((2, 1)));
        // The same text without its references is another schema.
        assert_eq!(
            register_in(&mut s, "e-value", event, None, vec![]),
            Ok((3, 2))
        );
        let mut body = json!({});
        describe(&s.schemas[1], &mut body);
        assert_eq!(
            body["references"],
            json!([{"name": "x.Actor", "subject": "actor", "version": 1}])
        );
        let mut body = json!({});
        describe(&s.schemas[0], &mut body);
        assert!(body.get("references").is_none(), "omitted when empty");
    }
}
