//! Proptest strategies and fixtures for the event model, for this crate's tests and (with the
//! `testing` feature) other crates' tests:
//!
//! ```toml
//! [dev-dependencies]
//! schemas = { workspace = true, features = ["testing"] }
//! ```
//!
//! - [`arb_audit_event`]: any event the Avro schema can carry (arbitrary Unicode, any integers,
//!   finite floats).
//! - [`arb_chained_event`], [`arb_checkpoint`].
//! - [`arb_json_event`]: events whose JSON form round-trips exactly through
//!   [`crate::json::event_to_json`] / [`crate::json::event_from_json`] with [`json_context`].

use std::collections::BTreeMap;

use proptest::collection::{btree_map, vec};
use proptest::option;
use proptest::prelude::*;
use serde_json::Value;

use crate::checkpoint_record::Checkpoint;
use crate::event::*;
use crate::json::{normalized_json, JsonContext, MIN_EVENT_TIME_US};

/// A fixed, fully populated example event (handy for unit tests of other stages).
pub fn sample_event() -> AuditEvent {
    AuditEvent {
        event_id: "evt-0001".into(),
        event_type: "infrastructure_request".into(),
        category: EventCategory::UserInteraction,
        severity: Severity::Info,
        outcome: Outcome::Success,
        event_time_us: 1_705_314_600_000_000,
        receive_time_us: 1_705_314_600_250_000,
        source_component: "natural_language_interface".into(),
        ingress: Ingress {
            channel: IngressChannel::Kafka,
            topic: Some("audit.raw".into()),
            partition: Some(0),
            offset: Some(42),
            format: "json".into(),
        },
        actor: Actor {
            actor_type: ActorType::User,
            id: "user-123".into(),
            name: None,
            email: None,
            ip: Some("192.168.1.100".into()),
            user_agent: Some("Mozilla/5.0".into()),
            session_id: Some("session-789".into()),
            roles: vec![],
        },
        tenant: TenantContext {
            tenant_id: None,
            team_id: Some("team-456".into()),
            team_name: None,
            project_id: None,
            business_unit: None,
            cost_center: None,
            enrichment: EnrichmentStatus {
                enriched: false,
                user_found: false,
                team_found: false,
            },
        },
        target: Some(Target {
            target_type: "api_server".into(),
            id: "user-management-api".into(),
            name: None,
        }),
        action: Action {
            verb: "create_api_server".into(),
            description: None,
            status: Some("success".into()),
            error: None,
        },
        trace: TraceContext {
            trace_id: Some("trace-1".into()),
            span_id: Some("span-1".into()),
            parent_span_id: None,
        },
        request_id: Some("req-1".into()),
        parent_event_id: None,
        reason: None,
        data: EventData {
            payload_json: Some(r#"{"confidence":0.95}"#.into()),
            result_json: Some(r#"{"status":"success"}"#.into()),
            metadata_json: None,
            before_json: None,
            after_json: None,
            changes: vec![],
        },
        ai: Some(AiContext {
            agent_type: None,
            model: None,
            prompt_tokens: None,
            completion_tokens: None,
            confidence: Some(0.95),
            reasoning: None,
            tools: vec![],
            execution_time_ms: None,
        }),
        compliance: None,
        security: None,
        performance: Some(Performance {
            processing_time_ms: Some(1250),
            response_time_ms: None,
            db_query_time_ms: None,
            external_api_time_ms: None,
            memory_used_mb: None,
            resource_count: Some(3),
        }),
        attributes: vec![KeyValue {
            key: "env".into(),
            value: "prod".into(),
        }],
    }
}

// ---- building blocks ---------------------------------------------------------------------------

fn any_string() -> impl Strategy<Value = String> {
    // Any Unicode scalar values, including controls: Avro strings carry them all.
    ".{0,12}"
}

fn opt_string() -> impl Strategy<Value = Option<String>> {
    option::of(any_string())
}

fn id_string() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9][a-zA-Z0-9_.:-]{0,24}"
}

pub fn arb_category() -> impl Strategy<Value = EventCategory> {
    prop_oneof![
        Just(EventCategory::UserInteraction),
        Just(EventCategory::SystemProcessing),
        Just(EventCategory::Governance),
        Just(EventCategory::Infrastructure),
        Just(EventCategory::Security),
        Just(EventCategory::Telemetry),
        Just(EventCategory::Other),
    ]
}

pub fn arb_severity() -> impl Strategy<Value = Severity> {
    prop_oneof![
        Just(Severity::Debug),
        Just(Severity::Info),
        Just(Severity::Notice),
        Just(Severity::Warning),
        Just(Severity::Error),
        Just(Severity::Critical),
    ]
}

pub fn arb_outcome() -> impl Strategy<Value = Outcome> {
    prop_oneof![
        Just(Outcome::Success),
        Just(Outcome::Failure),
        Just(Outcome::Denied),
        Just(Outcome::Pending),
        Just(Outcome::Unknown),
    ]
}

pub fn arb_actor_type() -> impl Strategy<Value = ActorType> {
    prop_oneof![
        Just(ActorType::User),
        Just(ActorType::Service),
        Just(ActorType::System),
        Just(ActorType::AiAgent),
    ]
}

pub fn arb_channel() -> impl Strategy<Value = IngressChannel> {
    prop_oneof![
        Just(IngressChannel::Kafka),
        Just(IngressChannel::Http),
        Just(IngressChannel::Otlp),
    ]
}

fn arb_ingress() -> impl Strategy<Value = Ingress> {
    (
        arb_channel(),
        opt_string(),
        option::of(any::<i32>()),
        option::of(any::<i64>()),
        any_string(),
    )
        .prop_map(|(channel, topic, partition, offset, format)| Ingress {
            channel,
            topic,
            partition,
            offset,
            format,
        })
}

/// A JSON value with keys drawn from `key` (so callers can keep clear of mapped names).
fn arb_json_value(key: &'static str) -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|i| Value::Number(i.into())),
        (-1.0e12f64..1.0e12)
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        ".{0,8}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 16, 4, move |inner| {
        prop_oneof![
            vec(inner.clone(), 0..4).prop_map(Value::Array),
            btree_map(key, inner, 0..4).prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Normalised JSON text of any non-null value (`null` means "absent" on JSON input).
fn arb_json_text() -> impl Strategy<Value = String> {
    arb_json_value("k[a-z]{0,3}")
        .prop_filter("null is absent", |v| !v.is_null())
        .prop_map(|v| normalized_json(&v))
}

/// Normalised JSON text of an object whose top-level keys match `key`.
fn arb_json_object_text(key: &'static str, min: usize) -> impl Strategy<Value = String> {
    btree_map(key, arb_json_value(key), min..4)
        .prop_map(|m| normalized_json(&Value::Object(m.into_iter().collect())))
}

fn arb_attributes() -> impl Strategy<Value = Vec<KeyValue>> {
    btree_map(any_string(), any_string(), 0..5).prop_map(|m: BTreeMap<String, String>| {
        m.into_iter()
            .map(|(key, value)| KeyValue { key, value })
            .collect()
    })
}

// ---- AuditEvent (Avro-complete) ----------------------------------------------------------------

/// Any event the Avro schema can carry.
pub fn arb_audit_event() -> impl Strategy<Value = AuditEvent> {
    let head = (
        any_string(),
        any_string(),
        arb_category(),
        arb_severity(),
        arb_outcome(),
        any::<i64>(),
        any::<i64>(),
        any_string(),
        arb_ingress(),
    );
    let who = (
        (
            arb_actor_type(),
            any_string(),
            opt_string(),
            opt_string(),
            opt_string(),
            opt_string(),
            opt_string(),
            vec(any_string(), 0..3),
        )
            .prop_map(
                |(actor_type, id, name, email, ip, user_agent, session_id, roles)| Actor {
                    actor_type,
                    id,
                    name,
                    email,
                    ip,
                    user_agent,
                    session_id,
                    roles,
                },
            ),
        (
            opt_string(),
            opt_string(),
            opt_string(),
            opt_string(),
            opt_string(),
            opt_string(),
            any::<(bool, bool, bool)>(),
        )
            .prop_map(
                |(tenant_id, team_id, team_name, project_id, business_unit, cost_center, f)| {
                    TenantContext {
                        tenant_id,
                        team_id,
                        team_name,
                        project_id,
                        business_unit,
                        cost_center,
                        enrichment: EnrichmentStatus {
                            enriched: f.0,
                            user_found: f.1,
                            team_found: f.2,
                        },
                    }
                },
            ),
        option::of((any_string(), any_string(), opt_string()).prop_map(
            |(target_type, id, name)| Target {
                target_type,
                id,
                name,
            },
        )),
        (any_string(), opt_string(), opt_string(), opt_string()).prop_map(
            |(verb, description, status, error)| Action {
                verb,
                description,
                status,
                error,
            },
        ),
        (opt_string(), opt_string(), opt_string()).prop_map(
            |(trace_id, span_id, parent_span_id)| TraceContext {
                trace_id,
                span_id,
                parent_span_id,
            },
        ),
        (opt_string(), opt_string(), opt_string()),
    );
    let what = (
        (
            opt_string(),
            opt_string(),
            opt_string(),
            opt_string(),
            opt_string(),
            vec(any_string(), 0..3),
        )
            .prop_map(
                |(payload_json, result_json, metadata_json, before_json, after_json, changes)| {
                    EventData {
                        payload_json,
                        result_json,
                        metadata_json,
                        before_json,
                        after_json,
                        changes,
                    }
                },
            ),
        option::of(arb_ai(
            any_string().sboxed(),
            (-1.0e300f64..1.0e300).sboxed(),
        )),
        option::of(arb_compliance(opt_string())),
        option::of(arb_security(any_string().sboxed())),
        option::of(arb_performance()),
        arb_attributes(),
    );
    (head, who, what).prop_map(
        |(
            (
                event_id,
                event_type,
                category,
                severity,
                outcome,
                event_time_us,
                receive_time_us,
                source_component,
                ingress,
            ),
            (actor, tenant, target, action, trace, (request_id, parent_event_id, reason)),
            (data, ai, compliance, security, performance, attributes),
        )| AuditEvent {
            event_id,
            event_type,
            category,
            severity,
            outcome,
            event_time_us,
            receive_time_us,
            source_component,
            ingress,
            actor,
            tenant,
            target,
            action,
            trace,
            request_id,
            parent_event_id,
            reason,
            data,
            ai,
            compliance,
            security,
            performance,
            attributes,
        },
    )
}

fn arb_ai(
    s: SBoxedStrategy<String>,
    conf: SBoxedStrategy<f64>,
) -> impl Strategy<Value = AiContext> {
    (
        option::of(s.clone()),
        option::of(s.clone()),
        option::of(any::<i64>()),
        option::of(any::<i64>()),
        option::of(conf),
        option::of(s.clone()),
        vec(s, 0..3),
        option::of(any::<i64>()),
    )
        .prop_map(
            |(
                agent_type,
                model,
                prompt_tokens,
                completion_tokens,
                confidence,
                reasoning,
                tools,
                execution_time_ms,
            )| AiContext {
                agent_type,
                model,
                prompt_tokens,
                completion_tokens,
                confidence,
                reasoning,
                tools,
                execution_time_ms,
            },
        )
}

fn arb_compliance(
    findings: impl Strategy<Value = Option<String>>,
) -> impl Strategy<Value = ComplianceContext> {
    (
        vec(any_string(), 0..3),
        opt_string(),
        option::of(any::<i32>()),
        option::of(any::<i32>()),
        findings,
    )
        .prop_map(
            |(regulations, traffic_light, issues_found, critical_issues, findings_json)| {
                ComplianceContext {
                    regulations,
                    traffic_light,
                    issues_found,
                    critical_issues,
                    findings_json,
                }
            },
        )
}

fn arb_security(s: SBoxedStrategy<String>) -> impl Strategy<Value = SecurityContext> {
    (
        option::of(s),
        option::of(any::<bool>()),
        option::of(any::<bool>()),
        option::of(any::<i32>()),
    )
        .prop_map(
            |(data_classification, encryption_used, pii_detected, retention_days)| {
                SecurityContext {
                    data_classification,
                    encryption_used,
                    pii_detected,
                    retention_days,
                }
            },
        )
}

fn arb_performance() -> impl Strategy<Value = Performance> {
    (
        option::of(any::<i64>()),
        option::of(any::<i64>()),
        option::of(any::<i64>()),
        option::of(any::<i64>()),
        option::of(any::<i64>()),
        option::of(any::<i64>()),
    )
        .prop_map(|(a, b, c, d, e, f)| Performance {
            processing_time_ms: a,
            response_time_ms: b,
            db_query_time_ms: c,
            external_api_time_ms: d,
            memory_used_mb: e,
            resource_count: f,
        })
}

fn hash32() -> impl Strategy<Value = Vec<u8>> {
    vec(any::<u8>(), 32)
}

/// Any chained record (chain fields are arbitrary; see `chain` for valid chains).
pub fn arb_chained_event() -> impl Strategy<Value = ChainedEvent> {
    (
        any::<i32>(),
        any::<i64>(),
        hash32(),
        hash32(),
        any::<i32>(),
        any_string(),
        any::<i32>(),
        any::<i64>(),
        arb_audit_event(),
    )
        .prop_map(
            |(
                chain_partition,
                seq,
                prev_hash,
                hash,
                canonical_version,
                source_topic,
                source_partition,
                source_offset,
                event,
            )| ChainedEvent {
                chain_partition,
                seq,
                prev_hash,
                hash,
                canonical_version,
                source_topic,
                source_partition,
                source_offset,
                event,
            },
        )
}

/// Any checkpoint record (not validly signed).
pub fn arb_checkpoint() -> impl Strategy<Value = Checkpoint> {
    (
        any_string(),
        any::<i32>(),
        any::<i64>(),
        any::<i64>(),
        hash32(),
        hash32(),
        any::<i64>(),
        any::<i32>(),
        prop_oneof![Just(Vec::new()), hash32()],
        any_string(),
        vec(any::<u8>(), 0..80),
    )
        .prop_map(
            |(
                chain_id,
                partition,
                first_seq,
                seq,
                head_hash,
                merkle_root,
                time_us,
                partition_count,
                tree_root,
                key_id,
                signature,
            )| {
                Checkpoint {
                    chain_id,
                    partition,
                    first_seq,
                    seq,
                    head_hash,
                    merkle_root,
                    time_us,
                    partition_count,
                    tree_root,
                    key_id,
                    signature,
                }
            },
        )
}

// ---- JSON-roundtrippable events ----------------------------------------------------------------

/// Receive time used by [`json_context`]: 2024-06-01T00:00:00Z.
pub const JSON_TEST_RECEIVE_US: i64 = 1_717_200_000_000_000;

/// The context [`arb_json_event`] events are built for.
pub fn json_context() -> JsonContext {
    JsonContext::new(
        JSON_TEST_RECEIVE_US,
        Ingress {
            channel: IngressChannel::Http,
            topic: None,
            partition: None,
            offset: None,
            format: "json".into(),
        },
        "derived-0001".into(),
    )
}

/// Events whose JSON form maps back exactly: pipeline-owned fields (receive time, ingress,
/// enrichment flags) equal [`json_context`]'s, required strings non-empty, event time within the
/// accepted window, and free-form JSON with keys (`k…`) that never collide with lifted names
/// (`status`, `error`, `confidence`, `clientIp`, …).
pub fn arb_json_event() -> impl Strategy<Value = AuditEvent> {
    let ctx = json_context();
    let text = "\\PC{0,10}".sboxed();
    let ne_text = "\\PC{1,10}";
    let head = (
        id_string(),
        ne_text,
        arb_category(),
        arb_severity(),
        arb_outcome(),
        MIN_EVENT_TIME_US..=JSON_TEST_RECEIVE_US,
        ne_text,
    );
    let who = (
        (
            arb_actor_type(),
            ne_text,
            option::of(text.clone()),
            option::of(text.clone()),
            option::of(text.clone()),
            option::of(text.clone()),
            option::of(text.clone()),
            vec(text.clone(), 0..3),
        ),
        vec(option::of(text.clone()), 6),
        option::of((ne_text, ne_text, option::of(text.clone()))),
        (
            ne_text,
            option::of(text.clone()),
            option::of(text.clone()),
            option::of(text.clone()),
        ),
        vec(option::of(text.clone()), 6),
    );
    let what = (
        option::of(arb_json_object_text("k[a-z]{0,3}", 0)),
        option::of(arb_json_object_text("k[a-z]{0,3}", 0)),
        option::of(arb_json_object_text("m[a-z]{0,3}", 1)),
        option::of(arb_json_text()),
        option::of(arb_json_text()),
        vec(text.clone(), 0..3),
        option::of(arb_ai(text.clone(), (0.0f64..=1.0).sboxed())),
        option::of(arb_compliance(option::of(arb_json_text()))),
        option::of(arb_security(text.clone())),
        option::of(arb_performance()),
        btree_map("\\PC{0,6}", text, 0..5),
    );
    (head, who, what).prop_map(
        move |(
            (event_id, event_type, category, severity, outcome, event_time_us, source_component),
            (
                (actor_type, actor_id, name, email, ip, user_agent, session_id, roles),
                tenant,
                target,
                (verb, description, status, error),
                refs,
            ),
            (
                payload_json,
                result_json,
                metadata_json,
                before_json,
                after_json,
                changes,
                ai,
                compliance,
                security,
                performance,
                attributes,
            ),
        )| {
            let mut tenant = tenant.into_iter();
            let mut refs = refs.into_iter();
            let next = |it: &mut std::vec::IntoIter<Option<String>>| it.next().flatten();
            AuditEvent {
                event_id,
                event_type,
                category,
                severity,
                outcome,
                event_time_us,
                receive_time_us: ctx.receive_time_us,
                source_component,
                ingress: ctx.ingress.clone(),
                actor: Actor {
                    actor_type,
                    id: actor_id,
                    name,
                    email,
                    ip,
                    user_agent,
                    session_id,
                    roles,
                },
                tenant: TenantContext {
                    tenant_id: next(&mut tenant),
                    team_id: next(&mut tenant),
                    team_name: next(&mut tenant),
                    project_id: next(&mut tenant),
                    business_unit: next(&mut tenant),
                    cost_center: next(&mut tenant),
                    enrichment: EnrichmentStatus {
                        enriched: false,
                        user_found: false,
                        team_found: false,
                    },
                },
                target: target.map(|(target_type, id, name)| Target {
                    target_type,
                    id,
                    name,
                }),
                action: Action {
                    verb,
                    description,
                    status,
                    error,
                },
                trace: TraceContext {
                    trace_id: next(&mut refs),
                    span_id: next(&mut refs),
                    parent_span_id: next(&mut refs),
                },
                request_id: next(&mut refs),
                parent_event_id: next(&mut refs),
                reason: next(&mut refs),
                data: EventData {
                    payload_json,
                    result_json,
                    metadata_json,
                    before_json,
                    after_json,
                    changes,
                },
                ai,
                compliance,
                security,
                performance,
                attributes: attributes
                    .into_iter()
                    .map(|(key, value)| KeyValue { key, value })
                    .collect(),
            }
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::avro::{self, canonical_bytes, CANONICAL_VERSION};
    use crate::framing::{self, CatalogIdResolver};
    use crate::json::{event_from_json, event_to_json};

    /// Other crates keep strategies in statics or move them across threads.
    #[test]
    fn avro_strategies_are_send_and_sync() {
        fn check<T: Send + Sync>(_: &T) {}
        check(&arb_audit_event());
        check(&arb_chained_event());
        check(&arb_checkpoint());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        #[test]
        fn event_roundtrips_through_both_framings(e in arb_audit_event()) {
            let so = framing::encode_single_object_event(&e).expect("encode so");
            prop_assert_eq!(&framing::decode_event(&so, None).expect("decode so"), &e);
            let ids = CatalogIdResolver::new().expect("ids");
            let id = ids.id_of(avro::RecordKind::AuditEvent).expect("id");
            let cf = framing::encode_confluent_event(&e, id).expect("encode cf");
            prop_assert_eq!(&framing::decode_event(&cf, Some(&ids)).expect("decode cf"), &e);
            // Same datum after either header.
            prop_assert_eq!(&so[10..], &cf[5..]);
        }

        #[test]
        fn chained_roundtrips_through_both_framings(c in arb_chained_event()) {
            let so = framing::encode_single_object_chained(&c).expect("encode so");
            prop_assert_eq!(&framing::decode_chained(&so, None).expect("decode so"), &c);
            let ids = CatalogIdResolver::new().expect("ids");
            let cf = framing::encode_confluent_chained(&c, 2).expect("encode cf");
            prop_assert_eq!(&framing::decode_chained(&cf, Some(&ids)).expect("decode cf"), &c);
        }

        #[test]
        fn checkpoint_roundtrips(c in arb_checkpoint()) {
            let so = framing::encode_single_object_checkpoint(&c).expect("encode");
            prop_assert_eq!(&framing::decode_checkpoint(&so, None).expect("decode"), &c);
            let ids = CatalogIdResolver::new().expect("ids");
            let cf = framing::encode_confluent_checkpoint(&c, 3).expect("encode cf");
            prop_assert_eq!(&framing::decode_checkpoint(&cf, Some(&ids)).expect("decode cf"), &c);
        }

        #[test]
        fn canonical_bytes_are_deterministic(e in arb_audit_event()) {
            let a = canonical_bytes(&e).expect("a");
            let b = canonical_bytes(&e.clone()).expect("b");
            prop_assert_eq!(&a, &b);
            let decoded = avro::decode_event_datum(&a).expect("decode");
            prop_assert_eq!(&canonical_bytes(&decoded).expect("c"), &a);
            // And through the resolving (old-writer) path too.
            let via_version: AuditEvent =
                avro::decode_datum_version(&a, CANONICAL_VERSION).expect("version");
            prop_assert_eq!(&canonical_bytes(&via_version).expect("d"), &a);
        }

        #[test]
        fn json_roundtrip_is_exact(e in arb_json_event()) {
            let ctx = json_context();
            let text = serde_json::to_vec(&event_to_json(&e)).expect("to_vec");
            let back = event_from_json(&text, &ctx);
            prop_assert_eq!(back.as_ref(), Ok(&e), "json: {}", String::from_utf8_lossy(&text));
        }
    }
}
