//! Governance events the pipeline writes about itself: an operator's erasure, reveal or legal
//! hold (`auditctl`), a sink's retention policy change. They go into the chain like any
//! producer's event, so the trail shows its own gaps and exceptions were intended. One builder,
//! so that every such event has the same shape: category `governance`, outcome `success`,
//! who did it (`actor`), to what (`target`), why (`reason`), and the facts as sorted
//! attributes.

use crate::event::{
    Action, Actor, ActorType, AuditEvent, ComplianceContext, EnrichmentStatus, EventCategory,
    EventData, Ingress, IngressChannel, KeyValue, Outcome as EventOutcome, Severity, Target,
    TenantContext, TraceContext,
};

/// What a governance event says. The caller chooses the id (fresh, or derived from what the
/// event records, so that a retry after a crash publishes the same event).
#[derive(Debug, Clone)]
pub struct GovernanceEvent<'a> {
    pub event_id: String,
    pub event_type: &'a str,
    pub time_us: i64,
    /// The program that writes it: the event's `source_component` and the actor's user agent.
    pub component: &'a str,
    /// A person (`auditctl` run by an operator) or a service (a sink at start).
    pub actor_type: ActorType,
    pub actor_id: &'a str,
    pub verb: &'a str,
    pub description: String,
    pub target_type: &'a str,
    pub target_id: &'a str,
    pub reason: String,
    pub attributes: Vec<(&'a str, String)>,
    /// State before and after (JSON), for changes of a setting.
    pub before_json: Option<String>,
    pub after_json: Option<String>,
    /// Regulations the action serves (e.g. GDPR for an erasure); none: no compliance context.
    pub regulations: Vec<String>,
}

impl GovernanceEvent<'_> {
    /// `<prefix>-<UUIDv7>`: a fresh, time-ordered event id.
    pub fn fresh_id(prefix: &str) -> String {
        format!("{prefix}-{}", uuid::Uuid::now_v7())
    }

    pub fn build(self) -> AuditEvent {
        let mut attributes: Vec<KeyValue> = self
            .attributes
            .into_iter()
            .map(|(key, value)| KeyValue {
                key: key.into(),
                value,
            })
            .collect();
        attributes.sort();
        AuditEvent {
            event_id: self.event_id,
            event_type: self.event_type.into(),
            category: EventCategory::Governance,
            severity: Severity::Notice,
            outcome: EventOutcome::Success,
            event_time_us: self.time_us,
            receive_time_us: self.time_us,
            source_component: self.component.into(),
            ingress: Ingress {
                channel: IngressChannel::Kafka,
                topic: None,
                partition: None,
                offset: None,
                format: "avro-single-object".into(),
            },
            actor: Actor {
                actor_type: self.actor_type,
                id: self.actor_id.into(),
                name: None,
                email: None,
                ip: None,
                user_agent: Some(self.component.into()),
                session_id: None,
                roles: vec![],
            },
            tenant: TenantContext {
                tenant_id: None,
                team_id: None,
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
                target_type: self.target_type.into(),
                id: self.target_id.into(),
                name: None,
            }),
            action: Action {
                verb: self.verb.into(),
                description: Some(self.description),
                status: Some("success".into()),
                error: None,
            },
            trace: TraceContext {
                trace_id: None,
                span_id: None,
                parent_span_id: None,
            },
            request_id: None,
            parent_event_id: None,
            reason: Some(self.reason),
            data: EventData {
                payload_json: None,
                result_json: None,
                metadata_json: None,
                before_json: self.before_json,
                after_json: self.after_json,
                changes: vec![],
            },
            ai: None,
            compliance: (!self.regulations.is_empty()).then_some(ComplianceContext {
                regulations: self.regulations,
                traffic_light: None,
                issues_found: None,
                critical_issues: None,
                findings_json: None,
            }),
            security: None,
            performance: None,
            attributes,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> GovernanceEvent<'static> {
        GovernanceEvent {
            event_id: GovernanceEvent::fresh_id("test"),
            event_type: "audit.test.done",
            time_us: 1_700_000_000_000_000,
            component: "auditctl",
            actor_type: ActorType::User,
            actor_id: "alice",
            verb: "do",
            description: "did it".into(),
            target_type: "thing",
            target_id: "t1",
            reason: "because".into(),
            attributes: vec![("b", "2".into()), ("a", "1".into())],
            before_json: None,
            after_json: None,
            regulations: vec![],
        }
    }

    /// Every governance event is a valid audit event (it passes ingest's validation and
    /// encodes under the canonical schema), with sorted attributes.
    #[test]
    fn builds_a_valid_canonical_event() {
        let e = sample().build();
        assert!(e.event_id.starts_with("test-"));
        assert_eq!(e.category, EventCategory::Governance);
        assert_eq!(e.actor.user_agent.as_deref(), Some("auditctl"));
        let keys: Vec<&str> = e.attributes.iter().map(|kv| kv.key.as_str()).collect();
        assert_eq!(keys, ["a", "b"]);
        assert!(e.compliance.is_none());
        crate::validate::validate_event(&e, &crate::json::JsonLimits::default(), e.receive_time_us)
            .expect("valid");
        crate::avro::canonical_bytes(&e).expect("encodes");
        let gdpr = GovernanceEvent {
            regulations: vec!["GDPR".into()],
            ..sample()
        }
        .build();
        assert_eq!(gdpr.compliance.expect("context").regulations, ["GDPR"]);
    }
}
