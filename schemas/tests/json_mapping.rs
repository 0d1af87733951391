//! JSON → AuditEvent mapping: the seed's example event, every error code with its path,
//! timestamp offsets and fractions, labels outside their vocabulary (kept with the producer's
//! original, or rejected in strict mode) and the reserved `audit.original.` namespace.

use proptest::prelude::*;
use schemas::json::labels::{self, LabelKind, LabelMatch};
use schemas::json::{event_from_json, event_to_json, JsonContext, JsonErrorCode, JsonLimits};
use schemas::*;

/// 2024-01-15T10:30:01Z, one second after the seed example's timestamp.
const RECEIVE_US: i64 = 1_705_314_601_000_000;

fn ctx() -> JsonContext {
    JsonContext::new(
        RECEIVE_US,
        Ingress {
            channel: IngressChannel::Kafka,
            topic: Some("audit.raw".into()),
            partition: Some(3),
            offset: Some(17),
            format: "json".into(),
        },
        "audit.raw-3-17".into(),
    )
}

/// The event structure platform components publish (seed 000, §3.2), with `evt-…` style ids.
const SEED_EVENT: &str = r#"{
  "event": {
    "id": "evt-7f3a9c2e",
    "eventType": "infrastructure_request",
    "timestamp": "2024-01-15T10:30:00Z",
    "userId": "user-123",
    "teamId": "team-456",
    "sessionId": "session-789",
    "requestId": "req-5d1e",
    "source": "natural_language_interface",
    "category": "user_interaction",
    "action": "create_api_server",
    "data": {
      "naturalLanguageRequest": "I need a new API server for user management",
      "extractedParameters": {
        "name": "user-management-api",
        "runtime": "nodejs",
        "database": "postgres-small"
      },
      "confidence": 0.95,
      "tools": ["create_api_server", "create_database"]
    },
    "result": {
      "status": "success",
      "desiredStateId": "ds-41b2",
      "estimatedCost": 85.00,
      "approvalRequired": false,
      "deploymentId": "dep-9e07"
    },
    "metadata": {
      "clientIp": "192.168.1.100",
      "userAgent": "Mozilla/5.0...",
      "sessionId": "session-789",
      "processingTime": 1250,
      "resourceCount": 3
    },
    "traceId": "trace-0a1b",
    "spanId": "span-2c3d",
    "parentId": "parent-span-4e5f"
  }
}"#;

#[test]
fn seed_example_maps_field_by_field() {
    let e = event_from_json(SEED_EVENT.as_bytes(), &ctx()).expect("seed event");
    assert_eq!(e.event_id, "evt-7f3a9c2e");
    assert_eq!(e.event_type, "infrastructure_request");
    assert_eq!(e.event_time_us, 1_705_314_600_000_000);
    assert_eq!(e.receive_time_us, RECEIVE_US);
    assert_eq!(e.ingress, ctx().ingress);
    assert_eq!(e.source_component, "natural_language_interface");
    assert_eq!(e.category, EventCategory::UserInteraction);
    assert_eq!(e.severity, Severity::Info);
    assert_eq!(e.outcome, Outcome::Success);
    assert_eq!(e.actor.actor_type, ActorType::User);
    assert_eq!(e.actor.id, "user-123");
    assert_eq!(e.actor.ip.as_deref(), Some("192.168.1.100"));
    assert_eq!(e.actor.user_agent.as_deref(), Some("Mozilla/5.0..."));
    assert_eq!(e.actor.session_id.as_deref(), Some("session-789"));
    assert_eq!(e.tenant.team_id.as_deref(), Some("team-456"));
    assert_eq!(e.request_id.as_deref(), Some("req-5d1e"));
    assert_eq!(e.action.verb, "create_api_server");
    assert_eq!(e.action.status.as_deref(), Some("success"));
    assert_eq!(e.trace.trace_id.as_deref(), Some("trace-0a1b"));
    assert_eq!(e.trace.span_id.as_deref(), Some("span-2c3d"));
    assert_eq!(e.trace.parent_span_id.as_deref(), Some("parent-span-4e5f"));
    // Payload verbatim, normalised: keys sorted, compact.
    assert_eq!(
        e.data.payload_json.as_deref(),
        Some(
            r#"{"confidence":0.95,"extractedParameters":{"database":"postgres-small","name":"user-management-api","runtime":"nodejs"},"naturalLanguageRequest":"I need a new API server for user management","tools":["create_api_server","create_database"]}"#
        )
    );
    assert_eq!(
        e.data.result_json.as_deref(),
        Some(
            r#"{"approvalRequired":false,"deploymentId":"dep-9e07","desiredStateId":"ds-41b2","estimatedCost":85.0,"status":"success"}"#
        )
    );
    // Every metadata field was lifted, so no remainder.
    assert_eq!(e.data.metadata_json, None);
    let perf = e.performance.as_ref().expect("performance");
    assert_eq!(perf.processing_time_ms, Some(1250));
    assert_eq!(perf.resource_count, Some(3));
    let ai = e.ai.as_ref().expect("ai");
    assert_eq!(ai.confidence, Some(0.95));
    assert_eq!(ai.tools, vec!["create_api_server", "create_database"]);
    assert!(e.attributes.is_empty());
    assert!(!e.tenant.enrichment.enriched);

    // Same fields without the envelope give the same event.
    let v: serde_json::Value = serde_json::from_str(SEED_EVENT).expect("json");
    let flat = serde_json::to_vec(&v["event"]).expect("flat");
    assert_eq!(event_from_json(&flat, &ctx()).expect("flat event"), e);

    // And the event's own JSON form maps back to it.
    let again = serde_json::to_vec(&event_to_json(&e)).expect("to_json");
    assert_eq!(event_from_json(&again, &ctx()).expect("again"), e);

    // And it round-trips through Avro.
    let bytes = schemas::framing::encode_single_object_event(&e).expect("avro");
    assert_eq!(
        schemas::framing::decode_event(&bytes, None).expect("decode"),
        e
    );
}

#[test]
fn snake_case_aliases_and_derived_id() {
    let json = r#"{"event_type":"x","timestamp":"2024-01-15T10:30:00Z","source_component":"s",
        "user_id":"u","team_id":"t","trace_id":"tr","parent_span_id":"p","request_id":"r"}"#;
    let e = event_from_json(json.as_bytes(), &ctx()).expect("event");
    assert_eq!(
        e.event_id, "audit.raw-3-17",
        "no id: the derived one is used"
    );
    assert_eq!(e.actor.id, "u");
    assert_eq!(e.tenant.team_id.as_deref(), Some("t"));
    assert_eq!(e.trace.parent_span_id.as_deref(), Some("p"));
    assert_eq!(e.category, EventCategory::Other);
    assert_eq!(e.outcome, Outcome::Unknown);
    assert_eq!(e.action.verb, "x", "no action: the event type");
}

#[test]
fn action_object_target_and_explicit_blocks() {
    let json = r#"{"event":{"id":"evt-1","eventType":"policy_evaluated","timestamp":"2024-01-15T10:00:00Z",
        "source":"policy_engine","category":"GOVERNANCE","severity":"Warning","serviceId":"svc-policy",
        "action":{"verb":"evaluate","description":"cost policy","status":"blocked","error":"over budget"},
        "target":{"type":"deployment","id":"dep-1","name":"api"},
        "compliance":{"regulations":["SOC2","GDPR"],"trafficLight":"RED","issuesFound":2,"criticalIssues":1,"findings":[{"b":1,"a":2}]},
        "security":{"dataClassification":"confidential","encryptionUsed":true,"piiDetected":false,"retentionDays":2555},
        "before":{"replicas":1},"after":{"replicas":3},"changes":["replicas"],
        "attributes":{"z":"1","a":"2"},
        "metadata":{"clientIp":"10.0.0.1","extra":{"k":"v"}},
        "actor":{"name":"Policy Engine"},
        "unknownField":42}}"#;
    let e = event_from_json(json.as_bytes(), &ctx()).expect("event");
    assert_eq!(e.actor.actor_type, ActorType::Service);
    assert_eq!(e.actor.id, "svc-policy");
    assert_eq!(e.actor.name.as_deref(), Some("Policy Engine"));
    assert_eq!(e.category, EventCategory::Governance);
    assert_eq!(e.severity, Severity::Warning);
    assert_eq!(
        e.outcome,
        Outcome::Denied,
        "derived from action.status blocked"
    );
    assert_eq!(e.action.error.as_deref(), Some("over budget"));
    let t = e.target.as_ref().expect("target");
    assert_eq!(
        (t.target_type.as_str(), t.id.as_str()),
        ("deployment", "dep-1")
    );
    let c = e.compliance.as_ref().expect("compliance");
    assert_eq!(c.regulations, vec!["SOC2", "GDPR"]);
    assert_eq!(c.findings_json.as_deref(), Some(r#"[{"a":2,"b":1}]"#));
    assert_eq!(
        e.security.as_ref().and_then(|s| s.retention_days),
        Some(2555)
    );
    assert_eq!(e.data.before_json.as_deref(), Some(r#"{"replicas":1}"#));
    assert_eq!(e.data.changes, vec!["replicas"]);
    assert_eq!(
        e.attributes,
        vec![
            KeyValue {
                key: "a".into(),
                value: "2".into()
            },
            KeyValue {
                key: "z".into(),
                value: "1".into()
            },
        ]
    );
    assert_eq!(e.actor.ip.as_deref(), Some("10.0.0.1"));
    // Unknown keys are kept, not dropped.
    assert_eq!(
        e.data.metadata_json.as_deref(),
        Some(r#"{"_unmapped":{"unknownField":42},"extra":{"k":"v"}}"#)
    );
}

#[test]
fn timestamps_with_offsets_and_fractions() {
    let cases = [
        ("2024-01-15T10:30:00Z", 1_705_314_600_000_000),
        ("2024-01-15T10:30:00.5Z", 1_705_314_600_500_000),
        ("2024-01-15T10:30:00.123456Z", 1_705_314_600_123_456),
        // Sub-microsecond digits are truncated.
        ("2024-01-15T10:30:00.123456789Z", 1_705_314_600_123_456),
        ("2024-01-15T16:00:00+05:30", 1_705_314_600_000_000),
        ("2024-01-15T02:30:00.25-08:00", 1_705_314_600_250_000),
        ("2024-01-15t10:30:00z", 1_705_314_600_000_000),
    ];
    for (ts, want) in cases {
        let json = format!(r#"{{"eventType":"x","timestamp":"{ts}","source":"s","userId":"u"}}"#);
        let e =
            event_from_json(json.as_bytes(), &ctx()).unwrap_or_else(|err| panic!("{ts}: {err}"));
        assert_eq!(e.event_time_us, want, "{ts}");
    }
}

fn err(json: &str) -> (JsonErrorCode, String) {
    let e = event_from_json(json.as_bytes(), &ctx()).expect_err(json);
    assert!(!e.message.is_empty());
    (e.code, e.path)
}

const OK_FIELDS: &str =
    r#""eventType":"x","timestamp":"2024-01-15T10:30:00Z","source":"s","userId":"u""#;

fn with(extra: &str) -> String {
    format!(r#"{{"event":{{{OK_FIELDS},{extra}}}}}"#)
}

#[test]
fn every_error_code_with_its_path() {
    use JsonErrorCode::*;
    assert_eq!(err("{not json"), (InvalidJson, String::new()));
    assert_eq!(
        event_from_json(b"{\"event\":\"\xff\"}", &ctx())
            .expect_err("utf8")
            .code,
        NotUtf8
    );
    assert_eq!(err(r#"{"event":{"eventType":"\ud800"}}"#).0, NotUtf8);
    assert_eq!(err(r#"{"event":{"eventType":"\udc00x"}}"#).0, NotUtf8);
    assert_eq!(err("[1,2]"), (NotAnObject, String::new()));
    assert_eq!(err(r#"{"event":[]}"#), (WrongType, "event".into()));

    assert_eq!(
        err(r#"{"event":{"timestamp":"2024-01-15T10:30:00Z","source":"s","userId":"u"}}"#),
        (MissingField, "event.eventType".into())
    );
    assert_eq!(
        err(r#"{"event":{"eventType":"x","source":"s","userId":"u"}}"#),
        (MissingField, "event.timestamp".into())
    );
    assert_eq!(
        err(r#"{"event":{"eventType":"x","timestamp":"2024-01-15T10:30:00Z","userId":"u"}}"#),
        (MissingField, "event.source".into())
    );
    assert_eq!(
        err(r#"{"event":{"eventType":"x","timestamp":"2024-01-15T10:30:00Z","source":"s"}}"#),
        (MissingField, "event.userId".into())
    );
    assert_eq!(
        err(&with(r#""target":{"type":"t"}"#)),
        (MissingField, "event.target.id".into())
    );

    assert_eq!(
        err(&with(r#""teamId":5"#)),
        (WrongType, "event.teamId".into())
    );
    assert_eq!(
        err(&with(r#""metadata":[]"#)),
        (WrongType, "event.metadata".into())
    );
    assert_eq!(
        err(&with(r#""metadata":{"processingTime":"fast"}"#)),
        (WrongType, "event.metadata.processingTime".into())
    );
    assert_eq!(
        err(&with(r#""attributes":{"env":"prod","n":1}"#)),
        (WrongType, "event.attributes.n".into())
    );
    assert_eq!(
        err(&with(r#""changes":["a",2]"#)),
        (WrongType, "event.changes[1]".into())
    );
    assert_eq!(
        err(&with(r#""security":{"piiDetected":"yes"}"#)),
        (WrongType, "event.security.piiDetected".into())
    );

    // Labels outside their vocabulary, and labels that are not strings, are rejected only in
    // strict label mode (see `strict_label_mode_rejects_unknown_labels`).
    assert_eq!(err(&with(r#""id":"""#)), (InvalidValue, "event.id".into()));
    assert_eq!(
        err(&with(r#""id":"a\u0007b""#)),
        (InvalidValue, "event.id".into())
    );
    let long_id = "x".repeat(257);
    assert_eq!(
        err(&with(&format!(r#""id":"{long_id}""#))),
        (InvalidValue, "event.id".into())
    );
    assert_eq!(
        err(&with(r#""ai":{"confidence":1.5}"#)),
        (InvalidValue, "event.ai.confidence".into())
    );
    assert_eq!(
        err(&with(r#""compliance":{"issuesFound":9999999999}"#)),
        (InvalidValue, "event.compliance.issuesFound".into())
    );
    assert_eq!(
        err(&with(r#""actor":{"id":"other"}"#)),
        (InvalidValue, "event.userId".into())
    );
    assert_eq!(
        err(r#"{"event":{"eventType":"x","timestamp":"yesterday","source":"s","userId":"u"}}"#),
        (InvalidValue, "event.timestamp".into())
    );

    assert_eq!(
        err(
            r#"{"event":{"eventType":"x","timestamp":"1999-12-31T23:59:59Z","source":"s","userId":"u"}}"#
        ),
        (TimestampOutOfRange, "event.timestamp".into())
    );
    assert_eq!(
        err(
            r#"{"event":{"eventType":"x","timestamp":"2024-01-16T10:30:02Z","source":"s","userId":"u"}}"#
        ),
        (TimestampOutOfRange, "event.timestamp".into())
    );
}

#[test]
fn limits() {
    use JsonErrorCode::*;
    let mut small = ctx();
    small.limits = JsonLimits {
        max_total_bytes: 400,
        max_string_bytes: 24,
        max_attributes: 2,
        max_depth: 4,
        ..JsonLimits::default()
    };
    let run = |json: &str| {
        let e = event_from_json(json.as_bytes(), &small).expect_err(json);
        (e.code, e.path)
    };
    assert_eq!(run(&" ".repeat(401)), (TooLarge, String::new()));
    assert_eq!(
        run(&with(r#""reason":"this reason is far too long""#)),
        (TooLarge, "event.reason".into())
    );
    assert_eq!(
        run(&with(r#""attributes":{"a":"1","b":"2","c":"3"}"#)),
        (TooLarge, "event.attributes".into())
    );
    // Depth has its own code: a producer can tell "too deep" from "too big".
    assert_eq!(
        run(&with(r#""data":{"a":{"b":{"c":1}}}"#)),
        (TooDeep, "event.data.a.b".into())
    );
    // The path through arrays names the index; a key that starts with `[` takes no dot.
    assert_eq!(
        run(&with(r#""data":{"a":[1,{"b":[]}]}"#)),
        (TooDeep, "event.data.a[1]".into())
    );
    assert_eq!(
        run(&with(r#""data":{"[k]":{"b":[]}}"#)),
        (TooDeep, "event.data[k].b".into())
    );
    // Beyond serde_json's own recursion limit it is still `too_deep`, not `invalid_json`.
    let deep = format!("{}{}", "[".repeat(300), "]".repeat(300));
    assert_eq!(err(&format!(r#"{{"event":{{"data":{deep}}}}}"#)).0, TooDeep);
    assert_eq!(JsonErrorCode::TooDeep.as_str(), "too_deep");
}

// ---- labels outside their vocabulary -----------------------------------------------------------

fn strict_ctx() -> JsonContext {
    let mut c = ctx();
    c.strict_labels = true;
    c
}

/// The seed event with its category replaced and extra fields added (raw JSON members).
fn seed_with(category: &str, extra: &str) -> String {
    let cat = serde_json::to_string(category).expect("json string");
    SEED_EVENT
        .replace(
            r#""category": "user_interaction""#,
            &format!(r#""category": {cat}"#),
        )
        .replace(r#""source": "#, &format!(r#"{extra}"source": "#))
}

fn attr<'a>(e: &'a AuditEvent, key: &str) -> Option<&'a str> {
    e.attributes
        .iter()
        .find(|kv| kv.key == key)
        .map(|kv| kv.value.as_str())
}

/// The JSON form and the Avro form of an event with kept originals give the event back.
fn assert_roundtrips(e: &AuditEvent) {
    let again = serde_json::to_vec(&event_to_json(e)).expect("to_json");
    assert_eq!(&event_from_json(&again, &ctx()).expect("json again"), e);
    let bytes = schemas::framing::encode_single_object_event(e).expect("avro");
    assert_eq!(
        &schemas::framing::decode_event(&bytes, None).expect("decode"),
        e
    );
}

/// The categories platform components use that the enum lacks (issue 6: 800 of 1000 such events
/// were dead-lettered `invalid_value`).
const PRODUCER_CATEGORIES: [&str; 4] =
    ["ai_processing", "policy_decision", "approval", "deployment"];

#[test]
fn unknown_category_is_kept_as_other_with_its_original() {
    for cat in PRODUCER_CATEGORIES {
        let e = event_from_json(seed_with(cat, "").as_bytes(), &ctx())
            .unwrap_or_else(|err| panic!("{cat}: {err}"));
        assert_eq!(e.category, EventCategory::Other, "{cat}");
        assert_eq!(attr(&e, "audit.original.category"), Some(cat));
        assert_eq!(labels::original(&e, LabelKind::Category), Some(cat));
        assert_eq!(labels::producer_text(&e, LabelKind::Category), cat);
        assert_eq!(e.attributes.len(), 1, "only the original was added");
        schemas::validate::validate_event(&e, &JsonLimits::default(), RECEIVE_US)
            .expect("the semantic gate accepts it");
        assert_roundtrips(&e);
    }
    // A known category keeps no original, whatever its case and separators.
    let e = event_from_json(seed_with("User-Interaction", "").as_bytes(), &ctx()).expect("known");
    assert_eq!(e.category, EventCategory::UserInteraction);
    assert!(e.attributes.is_empty());
    assert_eq!(
        labels::producer_text(&e, LabelKind::Category),
        "user_interaction"
    );
}

#[test]
fn every_label_kind_keeps_unknown_text_with_its_fallback() {
    let doc = seed_with(
        "",
        r#""severity": "loud", "outcome": "partially_applied", "actor": {"type": "robot"},"#,
    );
    let e = event_from_json(doc.as_bytes(), &ctx()).expect("kept");
    assert_eq!(
        e.category,
        EventCategory::Other,
        "an empty string is a text too"
    );
    assert_eq!(e.severity, Severity::Info);
    assert_eq!(
        e.outcome,
        Outcome::Unknown,
        "not derived from result.status"
    );
    assert_eq!(e.actor.actor_type, ActorType::System);
    assert_eq!(e.actor.id, "user-123");
    let got: Vec<(&str, &str)> = e
        .attributes
        .iter()
        .map(|kv| (kv.key.as_str(), kv.value.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            ("audit.original.actor_type", "robot"),
            ("audit.original.category", ""),
            ("audit.original.outcome", "partially_applied"),
            ("audit.original.severity", "loud"),
        ]
    );
    for (kind, text) in [
        (LabelKind::Category, ""),
        (LabelKind::Severity, "loud"),
        (LabelKind::Outcome, "partially_applied"),
        (LabelKind::ActorType, "robot"),
    ] {
        assert_eq!(labels::producer_text(&e, kind), text, "{kind:?}");
    }
    assert_roundtrips(&e);

    // The top-level `actorType` spelling, and a service actor, too.
    let json = r#"{"eventType":"x","timestamp":"2024-01-15T10:30:00Z","source":"s",
        "serviceId":"svc-1","actorType":"cron-job"}"#;
    let e = event_from_json(json.as_bytes(), &ctx()).expect("kept");
    assert_eq!(e.actor.actor_type, ActorType::System);
    assert_eq!(attr(&e, "audit.original.actor_type"), Some("cron-job"));
    assert_roundtrips(&e);
}

/// A label that is not a string (OpenTelemetry's numeric severity, a flag, an object) is an
/// unknown label too: kept, with its JSON text as the original.
#[test]
fn non_string_labels_are_kept_as_their_json_text() {
    let doc =
        with(r#""category":{"b":1,"a":[true]},"severity":17,"outcome":false,"actor":{"type":2.5}"#);
    let e = event_from_json(doc.as_bytes(), &ctx()).expect("kept");
    assert_eq!(e.category, EventCategory::Other);
    assert_eq!(e.severity, Severity::Info);
    assert_eq!(e.outcome, Outcome::Unknown);
    assert_eq!(e.actor.actor_type, ActorType::System);
    assert_eq!(
        labels::original(&e, LabelKind::Category),
        Some(r#"{"a":[true],"b":1}"#)
    );
    assert_eq!(labels::original(&e, LabelKind::Severity), Some("17"));
    assert_eq!(labels::original(&e, LabelKind::Outcome), Some("false"));
    assert_eq!(labels::original(&e, LabelKind::ActorType), Some("2.5"));
    // Written back as strings, they map to the same event.
    assert_roundtrips(&e);
    // Over the string limit it is `too_large`, like any string.
    let mut small = ctx();
    small.limits.max_string_bytes = 24; // the timestamp is 20 bytes
    let big = r#""severity":{"level":"abcdefghijklmnopqrstuvwxyz"}"#;
    let e = event_from_json(with(big).as_bytes(), &small).expect_err("big");
    assert_eq!(
        (e.code, e.path.as_str()),
        (JsonErrorCode::TooLarge, "event.severity")
    );
}

#[test]
fn synonyms_map_to_their_value_and_keep_the_text() {
    let doc = seed_with(
        "governance",
        r#""severity": "FATAL", "outcome": "blocked", "actor": {"type": "AI-Agent"},"#,
    );
    let e = event_from_json(doc.as_bytes(), &strict_ctx()).expect("synonyms pass strict mode");
    assert_eq!(e.category, EventCategory::Governance);
    assert_eq!(
        e.severity,
        Severity::Critical,
        "a fatal event is not filed as INFO"
    );
    assert_eq!(e.outcome, Outcome::Denied);
    assert_eq!(e.actor.actor_type, ActorType::AiAgent);
    assert_eq!(attr(&e, "audit.original.severity"), Some("FATAL"));
    assert_eq!(attr(&e, "audit.original.outcome"), Some("blocked"));
    assert_eq!(attr(&e, "audit.original.actor_type"), None, "an enum name");
    assert_eq!(attr(&e, "audit.original.category"), None);
    assert_roundtrips(&e);
}

#[test]
fn strict_label_mode_rejects_unknown_labels() {
    use JsonErrorCode::*;
    let strict = |doc: &str| {
        let e = event_from_json(doc.as_bytes(), &strict_ctx()).expect_err(doc);
        (e.code, e.path, e.message)
    };
    for cat in PRODUCER_CATEGORIES {
        let (code, path, msg) = strict(&seed_with(cat, ""));
        assert_eq!(
            (code, path.as_str()),
            (InvalidValue, "event.category"),
            "{cat}"
        );
        assert!(
            msg.contains("user_interaction") && msg.contains("telemetry"),
            "{msg}"
        );
        assert!(msg.contains("strict label mode"), "{msg}");
    }
    let (code, path, _) = strict(&with(r#""severity":"loud""#));
    assert_eq!((code, path.as_str()), (InvalidValue, "event.severity"));
    let (code, path, _) = strict(&with(r#""outcome":"partial""#));
    assert_eq!((code, path.as_str()), (InvalidValue, "event.outcome"));
    let (code, path, _) = strict(&with(r#""actor":{"type":"robot"}"#));
    assert_eq!((code, path.as_str()), (InvalidValue, "event.actor.type"));
    let (code, path, _) = strict(&with(r#""actorType":"robot""#));
    assert_eq!((code, path.as_str()), (InvalidValue, "event.actorType"));
    let (code, path, _) = strict(&with(r#""category":7"#));
    assert_eq!((code, path.as_str()), (WrongType, "event.category"));
    // Known labels pass strict mode unchanged.
    let e = event_from_json(SEED_EVENT.as_bytes(), &strict_ctx()).expect("seed event");
    assert_eq!(
        e,
        event_from_json(SEED_EVENT.as_bytes(), &ctx()).expect("lenient")
    );
}

#[test]
fn reserved_attribute_namespace_cannot_be_spoofed() {
    // A producer claims its (known) category was originally something else, and writes the
    // other originals too: all kept, under `producer.…`, and the event's labels are its own.
    let doc = seed_with(
        "security",
        r#""attributes": {"audit.original.category": "governance",
            "audit.original.severity": "fatal", "audit.original.whatever": "x",
            "producer.audit.original.severity": "taken", "env": "prod"},"#,
    );
    let e = event_from_json(doc.as_bytes(), &ctx()).expect("kept");
    assert_eq!(e.category, EventCategory::Security);
    assert_eq!(labels::original(&e, LabelKind::Category), None);
    assert_eq!(labels::original(&e, LabelKind::Severity), None);
    assert_eq!(labels::producer_text(&e, LabelKind::Category), "security");
    let keys: Vec<&str> = e.attributes.iter().map(|kv| kv.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "env",
            "producer.audit.original.category",
            "producer.audit.original.severity",
            "producer.audit.original.whatever",
            "producer.producer.audit.original.severity",
        ]
    );
    assert_eq!(attr(&e, "producer.audit.original.severity"), Some("taken"));
    assert_eq!(
        attr(&e, "producer.producer.audit.original.severity"),
        Some("fatal")
    );
    assert_roundtrips(&e);

    // With an unknown category, the pipeline's original and the producer's renamed one coexist.
    let doc = seed_with(
        "ai_processing",
        r#""attributes": {"audit.original.category": "spoof"},"#,
    );
    let e = event_from_json(doc.as_bytes(), &ctx()).expect("kept");
    assert_eq!(
        labels::original(&e, LabelKind::Category),
        Some("ai_processing")
    );
    assert_eq!(attr(&e, "producer.audit.original.category"), Some("spoof"));
    assert_roundtrips(&e);
}

#[test]
fn kept_originals_do_not_count_against_the_attribute_limit() {
    let mut c = ctx();
    c.limits.max_attributes = 2;
    let doc = seed_with(
        "deployment",
        r#""severity": "loud", "attributes": {"a": "1", "b": "2"},"#,
    );
    let e = event_from_json(doc.as_bytes(), &c).expect("two producer attributes + originals");
    assert_eq!(e.attributes.len(), 4);
    schemas::validate::validate_event(&e, &c.limits, RECEIVE_US).expect("gate agrees");
}

fn label_doc(category: &str, severity: &str, outcome: &str, actor_type: &str, top: bool) -> String {
    let mut ev = serde_json::json!({
        "eventType": "x", "timestamp": "2024-01-15T10:30:00Z", "source": "s", "userId": "u",
        "category": category, "severity": severity, "outcome": outcome,
    });
    if top {
        ev["actorType"] = actor_type.into();
    } else {
        ev["actor"] = serde_json::json!({ "type": actor_type });
    }
    serde_json::to_string(&serde_json::json!({ "event": ev })).expect("json")
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Any category, severity, outcome and actor-type string gives an accepted event (lenient
    /// mode) from which the producer's text is recoverable, and which the semantic gate, the
    /// JSON form and Avro all keep as is.
    #[test]
    fn any_label_strings_are_accepted_and_recoverable(
        category in any::<String>(),
        severity in prop_oneof![any::<String>(), Just("warn".to_owned()), Just("Error".to_owned())],
        outcome in any::<String>(),
        actor_type in prop_oneof![any::<String>(), Just("ai_agent".to_owned())],
        top in any::<bool>(),
    ) {
        let doc = label_doc(&category, &severity, &outcome, &actor_type, top);
        let e = event_from_json(doc.as_bytes(), &ctx());
        prop_assert!(e.is_ok(), "{:?}", e);
        let e = e.expect("checked");
        for (kind, text) in [
            (LabelKind::Category, &category),
            (LabelKind::Severity, &severity),
            (LabelKind::Outcome, &outcome),
            (LabelKind::ActorType, &actor_type),
        ] {
            prop_assert_eq!(kind.name_in(&e), kind.normalized_name(text));
            match kind.classify(text) {
                // An enum name: the value says it (case and separators aside).
                LabelMatch::Name => {
                    prop_assert_eq!(labels::original(&e, kind), None);
                    prop_assert_eq!(kind.name_in(&e), kind.normalized_name(text));
                }
                _ => prop_assert_eq!(labels::producer_text(&e, kind), text.as_str()),
            }
            // Strict mode accepts exactly the names and synonyms.
            let strict = event_from_json(doc.as_bytes(), &strict_ctx());
            if kind.classify(text) == LabelMatch::Unknown {
                prop_assert_eq!(
                    strict.map_err(|e| e.code).err(),
                    Some(JsonErrorCode::InvalidValue)
                );
            }
        }
        prop_assert!(schemas::validate::validate_event(&e, &JsonLimits::default(), RECEIVE_US).is_ok());
        let again = serde_json::to_vec(&event_to_json(&e)).expect("to_json");
        prop_assert_eq!(&event_from_json(&again, &ctx()).expect("again"), &e);
        let bytes = schemas::framing::encode_single_object_event(&e).expect("avro");
        prop_assert_eq!(&schemas::framing::decode_event(&bytes, None).expect("decode"), &e);
    }
}

/// The text `normalized_json` wrote before it serialized in place: sorted keys, every string
/// and scalar as `Value`'s own `Display` (kept here as the reference).
fn normalized_reference(v: &serde_json::Value) -> String {
    use serde_json::Value;
    match v {
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort_unstable();
            let parts: Vec<String> = keys
                .into_iter()
                .map(|k| {
                    format!(
                        "{}:{}",
                        Value::String(k.clone()),
                        normalized_reference(&m[k])
                    )
                })
                .collect();
            format!("{{{}}}", parts.join(","))
        }
        Value::Array(a) => {
            let parts: Vec<String> = a.iter().map(normalized_reference).collect();
            format!("[{}]", parts.join(","))
        }
        other => other.to_string(),
    }
}

fn arb_any_json() -> impl Strategy<Value = serde_json::Value> {
    use serde_json::Value;
    // Strings with what JSON must escape (quotes, backslashes, control characters) and
    // characters outside ASCII.
    let text = "[\\x00-\\x1f\"\\\\/a-z é\u{2028}😀]{0,8}";
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|i| Value::Number(i.into())),
        any::<u64>().prop_map(|u| Value::Number(u.into())),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        text.prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 5, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::btree_map(text, inner, 0..5)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #[test]
    fn normalized_json_writes_what_the_display_based_version_wrote(v in arb_any_json()) {
        let text = schemas::json::normalized_json(&v);
        prop_assert_eq!(&text, &normalized_reference(&v));
        // And it is still the same value.
        let back: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
        prop_assert_eq!(back, v);
    }
}

/// Fields of nested objects are named by their full path in errors, with and without the
/// `event` envelope: the paths are formatted only when an error names them.
#[test]
fn nested_fields_are_named_by_their_full_path() {
    use JsonErrorCode::*;
    let cases: [(&str, JsonErrorCode, &str); 7] = [
        (
            r#""actor":{"id":"u","roles":["a",3]}"#,
            WrongType,
            "actor.roles[1]",
        ),
        (r#""actor":{"id":"u","name":5}"#, WrongType, "actor.name"),
        (
            r#""performance":{"processingTimeMs":"slow"}"#,
            WrongType,
            "performance.processingTimeMs",
        ),
        (
            r#""performance":{"memoryUsedMb":1.5}"#,
            WrongType,
            "performance.memoryUsedMb",
        ),
        (r#""ai":{"confidence":1.5}"#, InvalidValue, "ai.confidence"),
        (
            r#""compliance":{"issuesFound":4294967296}"#,
            InvalidValue,
            "compliance.issuesFound",
        ),
        (
            r#""security":{"piiDetected":"yes"}"#,
            WrongType,
            "security.piiDetected",
        ),
    ];
    for (field, code, path) in cases {
        let plain = format!("{{{OK_FIELDS},{field}}}");
        assert_eq!(err(&plain), (code, path.to_owned()), "{plain}");
        let enveloped = format!("{{\"event\":{{{OK_FIELDS},{field}}}}}");
        assert_eq!(
            err(&enveloped),
            (code, format!("event.{path}")),
            "{enveloped}"
        );
    }
    // The same fields, well typed, are accepted.
    let fine = format!(
        r#"{{{OK_FIELDS},"actor":{{"id":"u","roles":["a","b"],"name":"n"}},"performance":{{"processingTimeMs":3}},"ai":{{"confidence":0.5}},"security":{{"piiDetected":true}}}}"#
    );
    let e = event_from_json(fine.as_bytes(), &ctx()).expect("well-typed nested fields");
    assert_eq!(e.actor.roles, vec!["a".to_owned(), "b".to_owned()]);
}
