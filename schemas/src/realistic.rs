//! A realistic stream of enriched events for benchmarks (the verifier's and the chainer's): the
//! steps of a platform request's lifecycle (request, intent, policy, approval, IaC, deployment)
//! by a handful of users and agents, with the fields enrich fills. About 0.9 KB canonical each.
//! Also the benches' small shared helpers (settings from the environment, best-of timing).

use crate::testing::sample_event;

/// Event time of the stream's first event (2024-06-01); event `i` is 10 ms after event `i - 1`.
pub const START_US: i64 = 1_717_200_000_000_000;
use crate::{
    Action, Actor, ActorType, AiContext, AuditEvent, ComplianceContext, EventCategory, KeyValue,
    Outcome, SecurityContext, Severity, Target,
};

/// A bench setting from the environment: `name` parsed as a positive count, else `default`.
pub fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&v| v > 0)
        .unwrap_or(default)
}

/// The fastest of `reps` runs of `f` (its result is kept from being optimised away): the
/// least disturbed run on a noisy machine.
pub fn best_of(reps: usize, mut f: impl FnMut() -> u64) -> std::time::Duration {
    (0..reps)
        .map(|_| {
            let t = std::time::Instant::now();
            std::hint::black_box(f());
            t.elapsed()
        })
        .min()
        .unwrap_or_default()
}

/// Two draws of `rng` as a 16-byte digest (dedup keys and contents in benches).
pub fn digest16(rng: &mut Rng) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&rng.next_u64().to_le_bytes());
    b[8..].copy_from_slice(&rng.next_u64().to_le_bytes());
    b
}

/// xorshift64*: deterministic, dependency-free.
#[derive(Debug, Clone)]
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
    pub fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[self.below(xs.len() as u64) as usize]
    }
    pub fn hex(&mut self, bytes: usize) -> String {
        let mut s = String::with_capacity(bytes * 2);
        while s.len() < bytes * 2 {
            s.push_str(&format!("{:016x}", self.next_u64()));
        }
        s.truncate(bytes * 2);
        s
    }
}

/// (id, name, email, team, team name, business unit, cost center, roles)
type User = (
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    &'static [&'static str],
);

const USERS: &[User] = &[
    (
        "user-alice",
        "Alice Martin",
        "alice.martin@example.com",
        "team-payments",
        "Payments",
        "Retail Banking",
        "CC-1001",
        &["developer"],
    ),
    (
        "user-bob",
        "Bob Keller",
        "bob.keller@example.com",
        "team-payments",
        "Payments",
        "Retail Banking",
        "CC-1001",
        &["approver", "developer"],
    ),
    (
        "user-chen",
        "Chen Wei",
        "chen.wei@example.com",
        "team-risk",
        "Risk Analytics",
        "Risk",
        "CC-2040",
        &["analyst"],
    ),
    (
        "user-dana",
        "Dana Okafor",
        "dana.okafor@example.com",
        "team-platform",
        "Platform Engineering",
        "Technology",
        "CC-3300",
        &["approver", "sre"],
    ),
    (
        "user-emil",
        "Emil Novak",
        "emil.novak@example.com",
        "team-data",
        "Data Services",
        "Technology",
        "CC-3310",
        &["developer"],
    ),
];

const REQUESTS: &[(&str, &str, &str)] = &[
    (
        "I need a new API server for user management",
        "create_api_server",
        "api_server",
    ),
    (
        "Spin up a Postgres database for the ledger service",
        "create_database",
        "database",
    ),
    (
        "Add a Redis cache in front of the pricing service",
        "create_cache",
        "cache",
    ),
    (
        "Create a staging environment for fraud-scoring",
        "create_environment",
        "environment",
    ),
    (
        "Scale the payments API to 6 replicas",
        "scale_service",
        "service",
    ),
];

/// Event `i` of the stream: one step of a platform request's lifecycle, as enrich leaves it.
pub fn realistic_event(rng: &mut Rng, i: u64, partition: i32) -> AuditEvent {
    let user = *rng.pick(USERS);
    let (text, intent, kind) = *rng.pick(REQUESTS);
    let mut e = sample_event();
    let step = i % 6;
    let (event_type, category, source, verb) = match step {
        0 => (
            "infrastructure_request",
            EventCategory::UserInteraction,
            "natural_language_interface",
            intent,
        ),
        1 => (
            "intent_recognized",
            EventCategory::SystemProcessing,
            "intent_recognition",
            "classify_intent",
        ),
        2 => (
            "policy_evaluated",
            EventCategory::Governance,
            "policy_engine",
            "evaluate_policy",
        ),
        3 => (
            "approval_granted",
            EventCategory::Governance,
            "approval_service",
            "approve",
        ),
        4 => (
            "iac_generated",
            EventCategory::SystemProcessing,
            "iac_generator",
            "generate_terraform",
        ),
        _ => (
            "deployment_completed",
            EventCategory::Infrastructure,
            "deployment_service",
            "deploy",
        ),
    };
    let trace = rng.hex(16);
    let target_id = format!("{kind}-{}", rng.hex(4));
    e.event_id = format!("evt-{}", rng.hex(12));
    e.event_type = event_type.into();
    e.category = category;
    e.severity = if rng.below(20) == 0 {
        Severity::Warning
    } else {
        Severity::Info
    };
    e.outcome = if rng.below(25) == 0 {
        Outcome::Failure
    } else {
        Outcome::Success
    };
    e.event_time_us = START_US + i as i64 * 10_000;
    e.receive_time_us = e.event_time_us + 150_000 + rng.below(200_000) as i64;
    e.source_component = source.into();
    e.ingress.partition = Some(partition);
    e.ingress.offset = Some(i as i64);
    e.actor = Actor {
        actor_type: if step == 1 || step == 4 {
            ActorType::AiAgent
        } else {
            ActorType::User
        },
        id: user.0.into(),
        name: Some(user.1.into()),
        email: Some(user.2.into()),
        ip: Some(format!("10.20.{}.{}", rng.below(250), rng.below(250))),
        user_agent: Some("idp-portal/2.4 (Mozilla/5.0; X11; Linux x86_64)".into()),
        session_id: Some(format!("session-{}", &trace[..8])),
        roles: user.7.iter().map(|r| (*r).to_owned()).collect(),
    };
    e.tenant.tenant_id = Some("bank-eu".into());
    e.tenant.team_id = Some(user.3.into());
    e.tenant.team_name = Some(user.4.into());
    e.tenant.project_id = Some(format!("proj-{}", &user.3[5..]));
    e.tenant.business_unit = Some(user.5.into());
    e.tenant.cost_center = Some(user.6.into());
    e.tenant.enrichment.enriched = true;
    e.tenant.enrichment.user_found = true;
    e.tenant.enrichment.team_found = true;
    e.target = Some(Target {
        target_type: kind.into(),
        id: target_id.clone(),
        name: Some(format!("{} for {}", kind.replace('_', " "), user.4)),
    });
    e.action = Action {
        verb: verb.into(),
        description: Some(format!("{verb} on behalf of {} ({})", user.1, user.3)),
        status: Some(
            if e.outcome == Outcome::Success {
                "success"
            } else {
                "failed"
            }
            .into(),
        ),
        error: (e.outcome == Outcome::Failure).then(|| "upstream timeout after 30s".into()),
    };
    e.trace.trace_id = Some(trace.clone());
    e.trace.span_id = Some(rng.hex(8));
    e.trace.parent_span_id = (step > 0).then(|| rng.hex(8));
    e.request_id = Some(format!("req-{}", rng.hex(6)));
    e.parent_event_id = (step > 0).then(|| format!("evt-{}", rng.hex(12)));
    e.reason = (step == 3).then(|| "within team budget; change window open".into());
    e.data.payload_json = Some(match step {
        0 => format!(r#"{{"text":"{text}","channel":"portal","locale":"en-GB"}}"#),
        1 => format!(
            r#"{{"text":"{text}","candidates":[{{"intent":"{intent}","score":0.{}}}]}}"#,
            80 + rng.below(19)
        ),
        2 => format!(
            r#"{{"policies":["cost-limit","data-residency","naming"],"resource":"{target_id}"}}"#
        ),
        3 => format!(
            r#"{{"approver":"{}","ticket":"CHG-{}"}}"#,
            user.0,
            rng.below(100_000)
        ),
        4 => format!(
            r#"{{"module":"{kind}","provider":"aws","region":"eu-central-1","lines":{}}}"#,
            40 + rng.below(400)
        ),
        _ => format!(
            r#"{{"environment":"staging","replicas":{},"strategy":"rolling"}}"#,
            1 + rng.below(6)
        ),
    });
    e.data.result_json = Some(format!(
        r#"{{"status":"success","durationMs":{}}}"#,
        20 + rng.below(2000)
    ));
    e.data.metadata_json = Some(format!(
        r#"{{"clientIp":"10.20.{}.{}","processingTime":{}}}"#,
        rng.below(250),
        rng.below(250),
        20 + rng.below(2000)
    ));
    if step == 5 {
        e.data.before_json = Some(r#"{"replicas":2,"image":"payments-api:1.41.0"}"#.into());
        e.data.after_json = Some(r#"{"replicas":6,"image":"payments-api:1.42.0"}"#.into());
        e.data.changes = vec!["image".into(), "replicas".into()];
    }
    e.ai = (step == 1 || step == 4).then(|| AiContext {
        agent_type: Some(
            if step == 1 {
                "intent_classifier"
            } else {
                "iac_generator"
            }
            .into(),
        ),
        model: Some("gpt-4o-2024-08-06".into()),
        prompt_tokens: Some(300 + rng.below(3000) as i64),
        completion_tokens: Some(50 + rng.below(1500) as i64),
        confidence: Some(0.8 + rng.below(19) as f64 / 100.0),
        reasoning: Some(format!("request matches {intent}; parameters complete")),
        tools: vec!["terraform_validate".into(), "cost_estimate".into()],
        execution_time_ms: Some(200 + rng.below(5000) as i64),
    });
    e.compliance = (step == 2).then(|| ComplianceContext {
        regulations: vec!["GDPR".into(), "SOX".into()],
        traffic_light: Some("GREEN".into()),
        issues_found: Some(rng.below(3) as i32),
        critical_issues: Some(0),
        findings_json: Some(r#"[{"rule":"naming","level":"info"}]"#.into()),
    });
    e.security = (step >= 2).then(|| SecurityContext {
        data_classification: Some("internal".into()),
        encryption_used: Some(true),
        pii_detected: Some(false),
        retention_days: Some(2555),
    });
    if let Some(p) = e.performance.as_mut() {
        p.processing_time_ms = Some(20 + rng.below(2000) as i64);
        p.response_time_ms = Some(30 + rng.below(3000) as i64);
    }
    e.attributes = vec![
        KeyValue {
            key: "env".into(),
            value: "prod".into(),
        },
        KeyValue {
            key: "region".into(),
            value: "eu-central-1".into(),
        },
        KeyValue {
            key: "service.version".into(),
            value: "2.4.1".into(),
        },
    ];
    e
}
