//! Semantic validation of an [`AuditEvent`], whatever built it: the rules every accepted event
//! satisfies (event id, required fields non-empty, event time sanity, string sizes, attribute
//! count and order, the reserved `audit.original.` attribute namespace, AI confidence range).
//!
//! [`validate_event`] checks a whole event (ingest runs it on every event, JSON or Avro, so an
//! event is accepted or rejected for the same reasons whatever its encoding). The single-field
//! rules it is made of are public too: the JSON mapping (`crate::json`) applies them while it
//! maps, at the path of the field the producer actually wrote (`event.eventId`, `event.user_name`,
//! …). Errors are [`JsonError`]s: a machine code, the path, a human message.

use std::fmt::Display;

use crate::event::AuditEvent;
use crate::json::labels;
use crate::json::{format_time_us, JsonError, JsonErrorCode, JsonLimits};

/// 2000-01-01T00:00:00Z in microseconds: earlier event times are producer clock bugs.
pub const MIN_EVENT_TIME_US: i64 = 946_684_800_000_000;

/// Longest event id, bytes.
pub const MAX_EVENT_ID_BYTES: usize = 256;

/// Checks an already-built event (see the module docs). Paths are the canonical JSON ones
/// (`event.id`, `event.timestamp`, `event.actor.id`, …). Free-form JSON text is not re-parsed
/// here (the JSON mapping writes it normalised; ingest normalises Avro input before this runs).
pub fn validate_event(
    event: &AuditEvent,
    limits: &JsonLimits,
    receive_time_us: i64,
) -> Result<(), JsonError> {
    check_event_id(&event.event_id, "event.id")?;
    for (path, value) in [
        ("event.eventType", &event.event_type),
        ("event.source", &event.source_component),
        ("event.actor.id", &event.actor.id),
        ("event.action.verb", &event.action.verb),
    ] {
        check_nonempty(value, path)?;
    }
    check_event_time(
        event.event_time_us,
        || show_time(event.event_time_us),
        "event.timestamp",
        limits,
        receive_time_us,
    )?;
    check_string_sizes(event, limits.max_string_bytes)?;
    // The pipeline's kept originals (at most four) do not count against the producer's limit.
    check_attribute_count(
        labels::producer_attribute_count(event),
        limits,
        "event.attributes",
    )?;
    if let Some(w) = event.attributes.windows(2).find(|w| w[0].key >= w[1].key) {
        let message = if w[0].key == w[1].key {
            format!("duplicate key {:?}", w[0].key)
        } else {
            format!("keys not sorted: {:?} before {:?}", w[0].key, w[1].key)
        };
        return Err(JsonError::new(
            JsonErrorCode::InvalidValue,
            "event.attributes",
            message,
        ));
    }
    // Only originals the mapping itself would write live under `audit.original.`.
    labels::check_reserved(event)?;
    if let Some(c) = event.ai.as_ref().and_then(|a| a.confidence) {
        check_confidence(c, &c, "event.ai.confidence")?;
    }
    Ok(())
}

/// Event id: non-empty, at most [`MAX_EVENT_ID_BYTES`], no control characters; any string
/// otherwise (`evt-…` is fine, not only UUIDs).
pub fn check_event_id(id: &str, path: &str) -> Result<(), JsonError> {
    let problem = if id.is_empty() {
        Some("event id must not be empty".to_owned())
    } else if id.len() > MAX_EVENT_ID_BYTES {
        Some(format!(
            "event id is {} bytes, limit {MAX_EVENT_ID_BYTES}",
            id.len()
        ))
    } else {
        id.chars()
            .position(char::is_control)
            .map(|i| format!("event id contains a control character at character {i}"))
    };
    match problem {
        Some(m) => Err(JsonError::new(JsonErrorCode::InvalidValue, path, m)),
        None => Ok(()),
    }
}

/// A required string field must not be empty.
pub fn check_nonempty(value: &str, path: &str) -> Result<(), JsonError> {
    if value.is_empty() {
        Err(JsonError::new(
            JsonErrorCode::InvalidValue,
            path,
            "must not be empty",
        ))
    } else {
        Ok(())
    }
}

/// Event time sanity: not before 2000-01-01, not more than `limits.max_future_skew_us` after
/// the receive time. `shown` is how the message names the event time (the producer's own
/// text when there is one).
pub fn check_event_time(
    event_time_us: i64,
    shown: impl FnOnce() -> String,
    path: &str,
    limits: &JsonLimits,
    receive_time_us: i64,
) -> Result<(), JsonError> {
    if event_time_us < MIN_EVENT_TIME_US {
        return Err(JsonError::new(
            JsonErrorCode::TimestampOutOfRange,
            path,
            format!("{} is before 2000-01-01T00:00:00Z", shown()),
        ));
    }
    if event_time_us > receive_time_us.saturating_add(limits.max_future_skew_us) {
        return Err(JsonError::new(
            JsonErrorCode::TimestampOutOfRange,
            path,
            format!(
                "{} is more than {} s after the receive time {}",
                shown(),
                limits.max_future_skew_us / 1_000_000,
                show_time(receive_time_us)
            ),
        ));
    }
    Ok(())
}

/// RFC 3339, or the raw number for a time outside what RFC 3339 can write.
fn show_time(us: i64) -> String {
    format_time_us(us).unwrap_or_else(|| format!("{us} µs"))
}

/// A mapped string field is at most `max` bytes. The path is built only for an offending field.
pub fn check_string_len(
    s: &str,
    max: usize,
    path: impl FnOnce() -> String,
) -> Result<(), JsonError> {
    if s.len() > max {
        Err(JsonError::new(
            JsonErrorCode::TooLarge,
            path(),
            format!("string is {} bytes, limit {max}", s.len()),
        ))
    } else {
        Ok(())
    }
}

/// At most `limits.max_attributes` attributes.
pub fn check_attribute_count(n: usize, limits: &JsonLimits, path: &str) -> Result<(), JsonError> {
    if n > limits.max_attributes {
        Err(JsonError::new(
            JsonErrorCode::TooLarge,
            path,
            format!("{n} attributes, limit {}", limits.max_attributes),
        ))
    } else {
        Ok(())
    }
}

/// An AI confidence is in 0..=1. `shown` is how the message writes the value (the producer's
/// JSON number when there is one).
pub fn check_confidence(c: f64, shown: &dyn Display, path: &str) -> Result<(), JsonError> {
    if (0.0..=1.0).contains(&c) {
        Ok(())
    } else {
        Err(JsonError::new(
            JsonErrorCode::InvalidValue,
            path,
            format!("confidence must be between 0 and 1, got {shown}"),
        ))
    }
}

/// Checks every scalar string of the event against `max` bytes (not the free-form JSON texts,
/// which only the document limit bounds, as in the JSON mapping).
fn check_string_sizes(e: &AuditEvent, max: usize) -> Result<(), JsonError> {
    let a = &e.actor;
    let t = &e.tenant;
    let target = e.target.as_ref();
    let ai = e.ai.as_ref();
    let compliance = e.compliance.as_ref();
    let optional: [(&str, Option<&String>); 26] = [
        ("event.actor.name", a.name.as_ref()),
        ("event.actor.email", a.email.as_ref()),
        ("event.actor.ip", a.ip.as_ref()),
        ("event.actor.userAgent", a.user_agent.as_ref()),
        ("event.sessionId", a.session_id.as_ref()),
        ("event.tenantId", t.tenant_id.as_ref()),
        ("event.teamId", t.team_id.as_ref()),
        ("event.teamName", t.team_name.as_ref()),
        ("event.projectId", t.project_id.as_ref()),
        ("event.businessUnit", t.business_unit.as_ref()),
        ("event.costCenter", t.cost_center.as_ref()),
        ("event.action.description", e.action.description.as_ref()),
        ("event.action.status", e.action.status.as_ref()),
        ("event.action.error", e.action.error.as_ref()),
        ("event.traceId", e.trace.trace_id.as_ref()),
        ("event.spanId", e.trace.span_id.as_ref()),
        ("event.parentSpanId", e.trace.parent_span_id.as_ref()),
        ("event.requestId", e.request_id.as_ref()),
        ("event.parentEventId", e.parent_event_id.as_ref()),
        ("event.reason", e.reason.as_ref()),
        ("event.target.name", target.and_then(|x| x.name.as_ref())),
        ("event.ai.agentType", ai.and_then(|x| x.agent_type.as_ref())),
        ("event.ai.model", ai.and_then(|x| x.model.as_ref())),
        ("event.ai.reasoning", ai.and_then(|x| x.reasoning.as_ref())),
        (
            "event.compliance.trafficLight",
            compliance.and_then(|x| x.traffic_light.as_ref()),
        ),
        (
            "event.security.dataClassification",
            e.security
                .as_ref()
                .and_then(|x| x.data_classification.as_ref()),
        ),
    ];
    let required = [
        ("event.eventType", Some(&e.event_type)),
        ("event.source", Some(&e.source_component)),
        ("event.actor.id", Some(&a.id)),
        ("event.action.verb", Some(&e.action.verb)),
        ("event.target.type", target.map(|x| &x.target_type)),
        ("event.target.id", target.map(|x| &x.id)),
    ];
    for (path, value) in optional.into_iter().chain(required) {
        if let Some(s) = value {
            check_string_len(s, max, || path.to_owned())?;
        }
    }
    let empty: &[String] = &[];
    let lists: [(&str, &[String]); 4] = [
        ("event.actor.roles", &a.roles),
        ("event.changes", &e.data.changes),
        ("event.ai.tools", ai.map_or(empty, |x| &x.tools)),
        (
            "event.compliance.regulations",
            compliance.map_or(empty, |x| &x.regulations),
        ),
    ];
    for (path, items) in lists {
        for (i, s) in items.iter().enumerate() {
            check_string_len(s, max, || format!("{path}[{i}]"))?;
        }
    }
    for kv in &e.attributes {
        check_string_len(&kv.key, max, || "event.attributes".to_owned())?;
        check_string_len(&kv.value, max, || format!("event.attributes.{}", kv.key))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::KeyValue;
    use crate::testing::sample_event;

    /// 2024-01-15T10:30:00Z, after the sample event's time.
    const RECEIVE_US: i64 = 1_705_314_600_000_000;

    fn check(e: &AuditEvent) -> Result<(), (&'static str, String, String)> {
        validate_event(e, &JsonLimits::default(), RECEIVE_US.max(e.event_time_us))
            .map_err(|e| (e.code.as_str(), e.path, e.message))
    }

    fn rejected(e: &AuditEvent) -> (&'static str, String) {
        let (code, path, message) = check(e).expect_err("must be rejected");
        assert!(!message.is_empty());
        (code, path)
    }

    #[test]
    fn the_sample_event_is_valid() {
        assert_eq!(check(&sample_event()), Ok(()));
    }

    /// The codes and paths ingest's dead letters carry (its door tests assert them too).
    #[test]
    fn each_rule_with_its_code_and_path() {
        let mut e = sample_event();
        e.actor.id = String::new();
        assert_eq!(rejected(&e), ("invalid_value", "event.actor.id".into()));

        let mut e = sample_event();
        e.event_type = String::new();
        assert_eq!(rejected(&e), ("invalid_value", "event.eventType".into()));

        for id in ["", "evt\u{7}", &"x".repeat(257)] {
            let mut e = sample_event();
            e.event_id = id.into();
            assert_eq!(rejected(&e), ("invalid_value", "event.id".into()), "{id:?}");
        }

        let mut e = sample_event();
        e.event_time_us = 900_000_000_000_000; // 1998
        let (code, path, message) = check(&e).expect_err("1998");
        assert_eq!(
            (code, path.as_str()),
            ("timestamp_out_of_range", "event.timestamp")
        );
        assert!(
            message.ends_with("is before 2000-01-01T00:00:00Z"),
            "{message}"
        );

        let e = sample_event();
        let skew = JsonLimits::default().max_future_skew_us;
        let err = validate_event(&e, &JsonLimits::default(), e.event_time_us - skew - 1)
            .expect_err("future");
        assert_eq!(err.code, JsonErrorCode::TimestampOutOfRange);
        assert!(
            err.message.contains("after the receive time"),
            "{}",
            err.message
        );

        let mut e = sample_event();
        e.reason = Some("r".repeat(64 * 1024 + 1));
        assert_eq!(rejected(&e), ("too_large", "event.reason".into()));

        let mut e = sample_event();
        e.data.changes = vec!["ok".into(), "c".repeat(64 * 1024 + 1)];
        assert_eq!(rejected(&e), ("too_large", "event.changes[1]".into()));

        let mut e = sample_event();
        e.attributes = vec![KeyValue {
            key: "big".into(),
            value: "v".repeat(64 * 1024 + 1),
        }];
        assert_eq!(rejected(&e), ("too_large", "event.attributes.big".into()));

        let mut e = sample_event();
        e.attributes = (0..257)
            .map(|i| KeyValue {
                key: format!("k{i:04}"),
                value: "v".into(),
            })
            .collect();
        assert_eq!(rejected(&e), ("too_large", "event.attributes".into()));

        let mut e = sample_event();
        e.attributes = vec![
            KeyValue {
                key: "env".into(),
                value: "a".into(),
            },
            KeyValue {
                key: "env".into(),
                value: "b".into(),
            },
        ];
        let (code, path, message) = check(&e).expect_err("duplicate");
        assert_eq!((code, path.as_str()), ("invalid_value", "event.attributes"));
        assert!(message.contains("duplicate key"), "{message}");

        // The `audit.original.` namespace holds only originals the mapping would write.
        let original = |key: &str, value: &str| {
            let mut e = sample_event();
            e.attributes.push(KeyValue {
                key: key.into(),
                value: value.into(),
            });
            e.attributes.sort_by(|a, b| a.key.cmp(&b.key));
            e
        };
        let e = original("audit.original.severity", "loud"); // the sample's severity: INFO
        assert_eq!(check(&e), Ok(()));
        assert_eq!(
            rejected(&original("audit.original.severity", "fatal")),
            (
                "invalid_value",
                "event.attributes.audit.original.severity".into()
            ),
            "fatal maps to CRITICAL, not the event's INFO"
        );
        assert_eq!(
            rejected(&original("audit.original.severity", "info")).0,
            "invalid_value",
            "an enum name is never an original"
        );
        assert_eq!(
            rejected(&original("audit.original.colour", "red")),
            (
                "invalid_value",
                "event.attributes.audit.original.colour".into()
            )
        );
        // Kept originals do not count against the producer's attribute limit.
        let limits = JsonLimits {
            max_attributes: 1,
            ..JsonLimits::default()
        };
        assert_eq!(validate_event(&e, &limits, RECEIVE_US), Ok(()));

        let mut e = sample_event();
        if let Some(ai) = e.ai.as_mut() {
            ai.confidence = Some(1.5);
        }
        assert_eq!(
            rejected(&e),
            ("invalid_value", "event.ai.confidence".into())
        );
    }
}
