//! Avro through a schema registry (issue 8): ingest (its lib `run`, `--schema-registry-url`)
//! against the schema-registry REST fixture and the real broker.
//!
//! - A real Confluent producer (confluent-kafka's `AvroSerializer` + `SchemaRegistryClient`,
//!   tests/it/registry_producer.py) registers the current and an evolved writer schema and
//!   publishes; the events reach the validated topic intact. An incompatible writer schema and
//!   an unknown schema id are dead-lettered with their reasons.
//! - A registry outage holds the records (no dead letter), `/readyz` says why, and they land
//!   once the registry answers; schema ids are fetched once (cache).
//! - Schema references: the same producer library registers the AuditEvent schema split into
//!   subjects (a shared `Actor` record one level down, and `Actor` → `ActorType` nested) and
//!   publishes with references (tests/it/registry_refs_producer.py); the events come out as
//!   those of the flat schema do. A reference to a version the registry does not have and a
//!   reference cycle are dead-lettered `schema_reference_unresolved`, and ingest goes on.

use anyhow::{ensure, Context as _};
use integration_tests::registry_fixture::{Reference, RegistryFixture};
use integration_tests::{demo, stack};
use schemas::json::{JsonContext, JsonLimits};
use schemas::{AuditEvent, Ingress, IngressChannel};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;
use tokio::task::JoinHandle;
use worker_runtime::kafka::dlq::{HEADER_REASON_CODE, HEADER_REASON_MESSAGE};
use worker_runtime::kafka::{InputRecord, KafkaArgs};
use worker_runtime::Shutdown;

const DEADLINE: Duration = Duration::from_secs(120);
const USER: &str = "ingest-sr";
const PASSWORD: &str = "registry-test-password";

struct Ingest {
    shutdown: Shutdown,
    task: JoinHandle<Result<(), ingest::Error>>,
}

impl Ingest {
    fn start(kafka: &KafkaArgs, registry: &RegistryFixture, health_addr: &str) -> Self {
        use clap::Parser as _;
        let group = format!("{}ingest", kafka.topic_prefix);
        let args: Vec<String> = [
            "ingest",
            "--kafka-brokers",
            &kafka.brokers,
            "--topic-prefix",
            &kafka.topic_prefix,
            "--group-id",
            &group,
            "--health-addr",
            health_addr,
            "--schema-registry-url",
            registry.url(),
            "--schema-registry-username",
            USER,
            "--schema-registry-password",
            PASSWORD,
            // Short backoff: the outage test waits for retries to be seen.
            "--retry-min-delay-ms",
            "20",
            "--retry-max-delay-ms",
            "200",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let config = ingest::Config::parse_from(args);
        let shutdown = Shutdown::new();
        let task = tokio::spawn(ingest::run(config, shutdown.clone()));
        Ingest { shutdown, task }
    }

    async fn stop(self) -> anyhow::Result<()> {
        self.shutdown.trigger();
        tokio::time::timeout(Duration::from_secs(60), self.task)
            .await
            .context("ingest did not stop within 60 s")?
            .context("ingest panicked")?
            .context("ingest failed")
    }
}

fn header(r: &InputRecord, name: &str) -> String {
    r.header(name)
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .unwrap_or_default()
}

fn audit_event_avsc() -> anyhow::Result<&'static str> {
    Ok(schemas::avro::current_schema(schemas::avro::RecordKind::AuditEvent)?.avsc)
}

async fn count(kafka: &KafkaArgs, topic: &str) -> anyhow::Result<usize> {
    Ok(stack::read_all(kafka, topic).await?.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn confluent_avro_producer_through_the_registry_lands_and_bad_schemas_are_dead_lettered(
) -> anyhow::Result<()> {
    worker_runtime::telemetry::init_for_tests();
    let registry = RegistryFixture::start_with_basic_auth(USER, PASSWORD).await?;
    let kafka = stack::fresh_topics("registry_py", 2).await?;
    let topics = kafka.topics();
    let ingest = Ingest::start(&kafka, &registry, "");

    let run_id = stack::unique("sr");
    let unknown_id: u32 = 4_242_424;
    let avsc = std::env::temp_dir().join(format!("{run_id}.avsc"));
    std::fs::write(&avsc, audit_event_avsc()?)?;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/it/registry_producer.py");
    let cfg = serde_json::json!({
        "brokers": kafka.brokers, "topic": topics.raw, "registry_url": registry.url(),
        "user": USER, "password": PASSWORD, "avsc": avsc, "run_id": run_id, "count": 3,
        "unknown_id": unknown_id,
    });
    let python = std::env::var("AUDIT_PYTHON").unwrap_or_else(|_| "python3".into());
    let out = tokio::process::Command::new(&python)
        .arg(script)
        .arg(cfg.to_string())
        .output()
        .await
        .with_context(|| {
            format!("running {python} (confluent-kafka[avro,schemaregistry]: deploy/local/stack.sh install)")
        })?;
    let _ = std::fs::remove_file(&avsc);
    ensure!(
        out.status.success(),
        "the Avro producer failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("producer output {}", String::from_utf8_lossy(&out.stdout)))?;
    let mut by_kind: BTreeMap<String, Vec<(String, u32)>> = BTreeMap::new();
    for s in report["sent"].as_array().context("sent")? {
        let kind = s["kind"].as_str().context("kind")?.to_owned();
        let id = s["event_id"].as_str().context("event_id")?.to_owned();
        let schema_id = s["schema_id"].as_u64().context("schema_id")? as u32;
        by_kind.entry(kind).or_default().push((id, schema_id));
    }
    let schema_of = |kind: &str| by_kind.get(kind).and_then(|v| v.first()).map(|v| v.1);
    let (current, evolved, incompatible) = (
        schema_of("current").context("current")?,
        schema_of("evolved").context("evolved")?,
        schema_of("incompatible").context("incompatible")?,
    );
    // Real registry bookkeeping: two versions of the topic's subject, distinct ids.
    let subject = format!("{}-value", topics.raw);
    ensure!(
        registry.versions_of(&subject) == vec![current, evolved],
        "versions of {subject}: {:?}",
        registry.versions_of(&subject)
    );
    ensure!(registry.versions_of(&format!("{}-legacy-value", topics.raw)) == vec![incompatible]);

    let expected: BTreeSet<String> = ["current", "evolved"]
        .iter()
        .flat_map(|k| by_kind[*k].iter().map(|(id, _)| id.clone()))
        .collect();
    ensure!(expected.len() == 6);
    let validated = stack::poll_until("Avro events validated", DEADLINE, || async {
        let v = stack::read_all(&kafka, &topics.validated).await?;
        Ok(if v.len() >= expected.len() {
            Ok(v)
        } else {
            Err(v.len())
        })
    })
    .await?;
    let mut got = BTreeSet::new();
    for r in &validated {
        let e: AuditEvent =
            schemas::framing::decode_event(r.payload.as_deref().context("payload")?, None)?;
        ensure!(e.event_type == "registry.avro_event", "{e:?}");
        ensure!(e.source_component == "registry-it-producer");
        ensure!(
            e.actor.id == "svc-avro-producer" && e.actor.name.as_deref() == Some("Avro producer")
        );
        ensure!(e.action.verb == "publish");
        ensure!(e.tenant.tenant_id.as_deref() == Some("tenant-avro"));
        ensure!(e.ingress.format == "avro-confluent", "{:?}", e.ingress);
        let writer = e
            .attributes
            .iter()
            .find(|kv| kv.key == "writer")
            .map(|kv| kv.value.as_str());
        ensure!(
            e.action.description.as_deref()
                == writer.map(|w| format!("{w} writer schema")).as_deref(),
            "{e:?}"
        );
        got.insert(e.event_id);
    }
    ensure!(got == expected, "validated {got:?}, expected {expected:?}");

    let rejected = stack::poll_until("two dead letters", DEADLINE, || async {
        let v = stack::read_all(&kafka, &topics.rejected).await?;
        Ok(if v.len() >= 2 { Ok(v) } else { Err(v.len()) })
    })
    .await?;
    let reasons: BTreeMap<String, String> = rejected
        .iter()
        .map(|r| {
            (
                header(r, HEADER_REASON_CODE),
                header(r, HEADER_REASON_MESSAGE),
            )
        })
        .collect();
    ensure!(rejected.len() == 2, "{reasons:?}");
    let incompatible_why = reasons
        .get("incompatible_schema")
        .context("incompatible_schema")?;
    ensure!(
        incompatible_why.contains(&format!("schema id {incompatible}"))
            && incompatible_why.contains("event_time_us"),
        "{incompatible_why}"
    );
    let unknown_why = reasons
        .get("unknown_schema_id")
        .context("unknown_schema_id")?;
    ensure!(
        unknown_why.contains(&unknown_id.to_string()),
        "{unknown_why}"
    );
    ensure!(
        registry.fetches_of(current) == 1 && registry.fetches_of(evolved) == 1,
        "each schema id is fetched once (cached): {} and {}",
        registry.fetches_of(current),
        registry.fetches_of(evolved)
    );
    ingest.stop().await
}

/// Confluent-framed copies of demo events under `schema_id`.
fn confluent_events(n: usize, schema_id: u32) -> anyhow::Result<Vec<(Option<String>, Vec<u8>)>> {
    let now_us = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_micros() as i64;
    let ingress = Ingress {
        channel: IngressChannel::Kafka,
        topic: None,
        partition: None,
        offset: None,
        format: String::new(),
    };
    demo::lifecycle(n, 5, now_us - 60_000_000)
        .into_iter()
        .take(n)
        .map(|raw| {
            let ctx = JsonContext {
                receive_time_us: now_us,
                ingress: ingress.clone(),
                derived_event_id: uuid::Uuid::new_v4().to_string(),
                limits: JsonLimits::default(),
                strict_labels: false,
            };
            let event = schemas::json::event_from_json(&raw.value, &ctx)
                .map_err(|e| anyhow::anyhow!("demo event: {e:?}"))?;
            Ok((
                raw.key,
                schemas::framing::encode_confluent_event(&event, schema_id)?,
            ))
        })
        .collect()
}

async fn readyz(client: &reqwest::Client, addr: &str) -> anyhow::Result<(u16, serde_json::Value)> {
    let r = client.get(format!("http://{addr}/readyz")).send().await?;
    let status = r.status().as_u16();
    Ok((status, r.json().await?))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_registry_outage_holds_records_without_dead_letters_and_readyz_says_why(
) -> anyhow::Result<()> {
    worker_runtime::telemetry::init_for_tests();
    let registry = RegistryFixture::start_with_basic_auth(USER, PASSWORD).await?;
    let kafka = stack::fresh_topics("registry_outage", 1).await?;
    let topics = kafka.topics();
    let schema_id = registry.register(&format!("{}-value", topics.raw), audit_event_avsc()?)?;
    registry.set_available(false);

    let health_addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0")?;
        l.local_addr()?.to_string()
    };
    let ingest = Ingest::start(&kafka, &registry, &health_addr);
    let producer = stack::producer(&kafka.brokers)?;
    stack::produce_all(&producer, &topics.raw, confluent_events(3, schema_id)?).await?;

    let client = reqwest::Client::new();
    let body = stack::poll_until("/readyz naming the registry outage", DEADLINE, || async {
        let (status, body) = readyz(&client, &health_addr).await?;
        let failing = body["checks"]["schema_registry"]["ok"] == false;
        Ok(
            if status == 503 && failing && registry.fetches_of(schema_id) >= 3 {
                Ok(body)
            } else {
                Err((status, body, registry.fetches_of(schema_id)))
            },
        )
    })
    .await?;
    let detail = body["checks"]["schema_registry"]["detail"]
        .as_str()
        .unwrap_or_default();
    ensure!(
        detail.contains(&format!("schema id {schema_id}")),
        "{detail}"
    );
    // Retried several times and still waiting: nothing was dead-lettered or passed through.
    ensure!(
        count(&kafka, &topics.rejected).await? == 0,
        "a dead letter for an outage"
    );
    ensure!(count(&kafka, &topics.validated).await? == 0);

    registry.set_available(true);
    stack::poll_until("the held events validated", DEADLINE, || async {
        let n = count(&kafka, &topics.validated).await?;
        Ok(if n >= 3 { Ok(n) } else { Err(n) })
    })
    .await?;
    stack::poll_until("/readyz: the registry answers again", DEADLINE, || async {
        let (_, body) = readyz(&client, &health_addr).await?;
        Ok(if body["checks"]["schema_registry"]["ok"] == true {
            Ok(())
        } else {
            Err(body)
        })
    })
    .await?;

    // Once resolved, the id is cached: more records cost no fetch.
    let fetches = registry.fetches_of(schema_id);
    stack::produce_all(&producer, &topics.raw, confluent_events(2, schema_id)?).await?;
    let n = stack::poll_until("the later events validated", DEADLINE, || async {
        let n = count(&kafka, &topics.validated).await?;
        Ok(if n >= 5 { Ok(n) } else { Err(n) })
    })
    .await?;
    ensure!(n == 5, "{n} validated events for 5 sent");
    ensure!(
        registry.fetches_of(schema_id) == fetches,
        "a cached id was fetched again"
    );
    ensure!(
        count(&kafka, &topics.rejected).await? == 0,
        "dead letters after the outage"
    );
    ingest.stop().await
}

/// Runs a Python producer script of tests/it with `cfg`; its JSON report.
async fn run_producer(script: &str, cfg: &serde_json::Value) -> anyhow::Result<serde_json::Value> {
    let script = format!("{}/tests/it/{script}", env!("CARGO_MANIFEST_DIR"));
    let python = std::env::var("AUDIT_PYTHON").unwrap_or_else(|_| "python3".into());
    let out = tokio::process::Command::new(&python)
        .arg(&script)
        .arg(cfg.to_string())
        .output()
        .await
        .with_context(|| {
            format!("running {python} (confluent-kafka[avro,schemaregistry]: deploy/local/stack.sh install)")
        })?;
    ensure!(
        out.status.success(),
        "{script} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout)
        .with_context(|| format!("producer output {}", String::from_utf8_lossy(&out.stdout)))
}

/// What does not depend on where a record sat in the raw topic or on its event id: the event
/// a producer's data becomes.
fn normalised(mut e: AuditEvent) -> AuditEvent {
    e.event_id = String::new();
    e.receive_time_us = 0;
    e.ingress.partition = None;
    e.ingress.offset = None;
    e
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn schema_references_resolve_like_the_flat_schema_and_broken_ones_are_dead_lettered(
) -> anyhow::Result<()> {
    worker_runtime::telemetry::init_for_tests();
    let registry = RegistryFixture::start_with_basic_auth(USER, PASSWORD).await?;
    let kafka = stack::fresh_topics("registry_refs", 1).await?;
    let topics = kafka.topics();
    let ingest = Ingest::start(&kafka, &registry, "");

    // A real producer: confluent-kafka registers the split schemas and serialises with
    // references.
    let run_id = stack::unique("srref");
    let avsc = std::env::temp_dir().join(format!("{run_id}.avsc"));
    std::fs::write(&avsc, audit_event_avsc()?)?;
    let count = 3;
    let report = run_producer(
        "registry_refs_producer.py",
        &serde_json::json!({
            "brokers": kafka.brokers, "topic": topics.raw, "registry_url": registry.url(),
            "user": USER, "password": PASSWORD, "avsc": avsc, "run_id": run_id, "count": count,
        }),
    )
    .await;
    let _ = std::fs::remove_file(&avsc);
    let report = report?;
    let mut sent: BTreeMap<String, Vec<(String, u32)>> = BTreeMap::new();
    for s in report["sent"].as_array().context("sent")? {
        sent.entry(s["kind"].as_str().context("kind")?.to_owned())
            .or_default()
            .push((
                s["event_id"].as_str().context("event_id")?.to_owned(),
                s["schema_id"].as_u64().context("schema_id")? as u32,
            ));
    }
    let id_of = |kind: &str| sent.get(kind).and_then(|v| v.first()).map(|v| v.1);
    let (flat_id, shared_id, nested_id) = (
        id_of("flat").context("flat")?,
        id_of("shared").context("shared")?,
        id_of("nested").context("nested")?,
    );
    ensure!(
        shared_id != nested_id && shared_id != flat_id,
        "distinct schemas: {flat_id} {shared_id} {nested_id}"
    );
    // The registry holds the references as the producer registered them.
    let value_subject = format!("{}-value", topics.raw);
    ensure!(
        registry.versions_of(&value_subject) == vec![shared_id, nested_id],
        "{value_subject}: {:?}",
        registry.versions_of(&value_subject)
    );

    // What no real producer library can send (it resolves references before serialising):
    // records whose schema references a version the registry does not have, or a cycle.
    let root = {
        let mut v: serde_json::Value = serde_json::from_str(audit_event_avsc()?)?;
        let fields = v["fields"].as_array_mut().context("fields")?;
        let actor = fields
            .iter_mut()
            .find(|f| f["name"] == "actor")
            .context("actor field")?;
        actor["type"] = serde_json::json!("io.auditpipe.Actor");
        v.to_string()
    };
    let missing_subject = format!("{}-never-registered", topics.raw);
    let (missing_id, _) = registry.register_dangling(
        &format!("{}-missing-value", topics.raw),
        &root,
        &[Reference::new("io.auditpipe.Actor", &missing_subject, 1)],
    )?;
    let (cyc_a, cyc_b) = (
        format!("{}-cycle-a", topics.raw),
        format!("{}-cycle-b", topics.raw),
    );
    let record = |name: &str, other: &str| {
        serde_json::json!({"type": "record", "name": name, "namespace": "io.auditpipe",
            "fields": [{"name": "next", "type": ["null", other], "default": null}]})
        .to_string()
    };
    registry.register_dangling(
        &cyc_b,
        &record("B", "io.auditpipe.A"),
        &[Reference::new("io.auditpipe.A", &cyc_a, 1)],
    )?;
    let (cycle_id, _) = registry.register_dangling(
        &cyc_a,
        &record("A", "io.auditpipe.B"),
        &[Reference::new("io.auditpipe.B", &cyc_b, 1)],
    )?;
    let producer = stack::producer(&kafka.brokers)?;
    let mut broken = confluent_events(1, missing_id)?;
    broken.extend(confluent_events(1, cycle_id)?);
    // And a good record after them: ingest did not stop at the cycle.
    broken.extend(confluent_events(1, nested_id)?);
    stack::produce_all(&producer, &topics.raw, broken).await?;

    let want = 3 * count + 1;
    let validated = stack::poll_until("referenced events validated", DEADLINE, || async {
        let v = stack::read_all(&kafka, &topics.validated).await?;
        Ok(if v.len() >= want { Ok(v) } else { Err(v.len()) })
    })
    .await?;
    ensure!(validated.len() == want, "{} validated", validated.len());
    let mut events: BTreeMap<String, AuditEvent> = BTreeMap::new();
    for r in &validated {
        let e: AuditEvent =
            schemas::framing::decode_event(r.payload.as_deref().context("payload")?, None)?;
        events.insert(e.event_id.clone(), e);
    }
    ensure!(
        sent.values().all(|v| v.len() == count),
        "{count} of each kind: {sent:?}"
    );
    for i in 0..count {
        let get = |kind: &str| {
            let id = sent.get(kind).and_then(|v| v.get(i)).map(|v| &v.0);
            id.and_then(|id| events.get(id))
                .cloned()
                .with_context(|| format!("{kind} event {i} ({id:?}) not validated"))
        };
        let flat = get("flat")?;
        ensure!(flat.actor.id == format!("svc-ref-producer-{i}"), "{flat:?}");
        ensure!(flat.actor.actor_type == schemas::ActorType::Service);
        ensure!(flat.ingress.format == "avro-confluent");
        for kind in ["shared", "nested"] {
            ensure!(
                normalised(get(kind)?) == normalised(flat.clone()),
                "{kind} event {i} differs from the flat one"
            );
        }
    }

    let rejected = stack::poll_until("two dead letters", DEADLINE, || async {
        let v = stack::read_all(&kafka, &topics.rejected).await?;
        Ok(if v.len() >= 2 { Ok(v) } else { Err(v.len()) })
    })
    .await?;
    ensure!(rejected.len() == 2, "{} dead letters", rejected.len());
    for r in &rejected {
        ensure!(
            header(r, HEADER_REASON_CODE) == "schema_reference_unresolved",
            "{}: {}",
            header(r, HEADER_REASON_CODE),
            header(r, HEADER_REASON_MESSAGE)
        );
    }
    // Told apart by the schema id their message names (the order of dead letters is not the
    // test's business).
    let message_naming = |id: u32| {
        rejected
            .iter()
            .map(|r| header(r, HEADER_REASON_MESSAGE))
            .find(|m| m.contains(&format!("schema id {id}:")))
            .with_context(|| format!("no dead letter names schema id {id}"))
    };
    let why = message_naming(missing_id)?;
    ensure!(
        why.contains(&format!(
            "io.auditpipe.Actor (subject {missing_subject} version 1)"
        )) && why.contains("not registered"),
        "{why}"
    );
    let why = message_naming(cycle_id)?;
    ensure!(
        why.contains("reference cycle")
            && why.contains(&format!("io.auditpipe.B (subject {cyc_b} version 1)")),
        "{why}"
    );
    // Each id was resolved once (the verdict is cached), references included.
    ensure!(
        registry.fetches_of(shared_id) == 1 && registry.fetches_of(nested_id) == 1,
        "ids fetched {} and {} times",
        registry.fetches_of(shared_id),
        registry.fetches_of(nested_id)
    );
    ensure!(
        registry.fetches_of_version(&cyc_a, 1) == 1 && registry.fetches_of_version(&cyc_b, 1) == 1
    );
    ingest.stop().await
}
