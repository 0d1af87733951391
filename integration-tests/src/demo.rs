//! A realistic audit stream of the internal developer platform: for each request, a user's
//! natural-language request → intent recognition → policy evaluation → (approval) → IaC
//! generation → deployment, all sharing one trace id, spread over several teams and users,
//! in the JSON envelope platform components publish today. Plus invalid events of every kind
//! ingest must dead-letter, and the identity-sync context records enrich reads.
//!
//! Deterministic for a given seed, so tests can count exactly what must land.

use serde_json::{json, Value};

/// The context ingest maps a demo record's JSON in, as read from partition 0 of `audit.raw`
/// (the in-process benches map records without a broker).
pub fn kafka_json_context(receive_time_us: i64) -> schemas::json::JsonContext {
    use schemas::event::{Ingress, IngressChannel};
    schemas::json::JsonContext {
        receive_time_us,
        ingress: Ingress {
            channel: IngressChannel::Kafka,
            topic: Some("audit.raw".into()),
            partition: Some(0),
            offset: Some(0),
            format: "json".into(),
        },
        derived_event_id: "derived".into(),
        limits: schemas::json::JsonLimits::default(),
        strict_labels: false,
    }
}

/// A tiny deterministic generator (xorshift64*): the demo needs variety, not statistics.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
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

pub const TEAMS: &[(&str, &str, &str, &str)] = &[
    ("team-payments", "Payments", "Retail Banking", "CC-1001"),
    ("team-risk", "Risk Analytics", "Risk", "CC-2040"),
    (
        "team-platform",
        "Platform Engineering",
        "Technology",
        "CC-3300",
    ),
    ("team-data", "Data Services", "Technology", "CC-3310"),
];

/// (user id, name, email, team, roles)
pub const USERS: &[(&str, &str, &str, &str, &[&str])] = &[
    (
        "user-alice",
        "Alice Martin",
        "alice.martin@example.com",
        "team-payments",
        &["developer"],
    ),
    (
        "user-bob",
        "Bob Keller",
        "bob.keller@example.com",
        "team-payments",
        &["developer", "approver"],
    ),
    (
        "user-chen",
        "Chen Wei",
        "chen.wei@example.com",
        "team-risk",
        &["analyst"],
    ),
    (
        "user-dana",
        "Dana Okafor",
        "dana.okafor@example.com",
        "team-platform",
        &["sre", "approver"],
    ),
    (
        "user-emil",
        "Emil Novak",
        "emil.novak@example.com",
        "team-data",
        &["developer"],
    ),
    (
        "user-fatima",
        "Fatima Haddad",
        "fatima.haddad@example.com",
        "team-risk",
        &["approver", "security"],
    ),
];

const REQUESTS: &[(&str, &str, &[&str])] = &[
    (
        "I need a new API server for user management",
        "create_api_server",
        &["create_api_server", "create_database"],
    ),
    (
        "Spin up a Postgres database for the ledger service",
        "create_database",
        &["create_database"],
    ),
    (
        "Add a Redis cache in front of the pricing service",
        "create_cache",
        &["create_cache"],
    ),
    (
        "Create a staging environment for fraud-scoring",
        "create_environment",
        &["create_environment", "create_network"],
    ),
    (
        "Scale the payments API to 6 replicas",
        "scale_service",
        &["scale_service"],
    ),
];

pub const TENANT: &str = "bank-eu";

/// Identity-sync context records: (key, JSON value) for the users and teams topics.
pub fn context_users() -> Vec<(String, Vec<u8>)> {
    USERS
        .iter()
        .map(|(id, name, email, team, roles)| {
            let v =
                json!({"userId": id, "name": name, "email": email, "teamId": team, "roles": roles});
            (id.to_string(), v.to_string().into_bytes())
        })
        .collect()
}

pub fn context_teams() -> Vec<(String, Vec<u8>)> {
    TEAMS
        .iter()
        .map(|(id, name, bu, cc)| {
            let v = json!({"teamId": id, "name": name, "tenantId": TENANT, "businessUnit": bu, "costCenter": cc});
            (id.to_string(), v.to_string().into_bytes())
        })
        .collect()
}

/// One raw record for `audit.raw`.
#[derive(Debug, Clone)]
pub struct RawEvent {
    pub key: Option<String>,
    pub value: Vec<u8>,
    /// The producer's event id (valid events), for assertions.
    pub event_id: Option<String>,
    pub trace_id: Option<String>,
}

fn rfc3339(unix_us: i64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(unix_us as i128 * 1000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| "1970-01-01T00:00:00Z".into())
}

#[allow(clippy::too_many_arguments)]
fn envelope(
    rng: &mut Rng,
    id: &str,
    event_type: &str,
    category: &str,
    source: &str,
    action: &str,
    user: &(&str, &str, &str, &str, &[&str]),
    at_us: i64,
    trace_id: &str,
    parent_span: Option<&str>,
    request_id: &str,
    data: Value,
    result: Value,
) -> (Value, String) {
    let span = rng.hex(8);
    let mut event = json!({
        "id": id,
        "eventType": event_type,
        "timestamp": rfc3339(at_us),
        "userId": user.0,
        "teamId": user.3,
        "sessionId": format!("session-{}", &trace_id[..8]),
        "requestId": request_id,
        "source": source,
        "category": category,
        "action": action,
        "data": data,
        "result": result,
        "metadata": {
            "clientIp": format!("10.20.{}.{}", rng.below(250), rng.below(250)),
            "userAgent": "idp-portal/2.4 (Mozilla/5.0)",
            "processingTime": 20 + rng.below(2000),
        },
        "traceId": trace_id,
        "spanId": span,
    });
    if let Some(p) = parent_span {
        event["parentId"] = json!(p);
    }
    (json!({ "event": event }), span)
}

/// `requests` complete lifecycles starting at `start_us` (one event per step; 5–6 events per
/// request). Keys are team ids, as a platform producer would choose.
pub fn lifecycle(requests: usize, seed: u64, start_us: i64) -> Vec<RawEvent> {
    let mut rng = Rng::new(seed);
    let mut out = Vec::with_capacity(requests * 6);
    for r in 0..requests {
        let user = *rng.pick(USERS);
        let (text, intent, tools) = *rng.pick(REQUESTS);
        let trace_id = rng.hex(16);
        let request_id = format!("req-{}", rng.hex(6));
        let mut at = start_us + (r as i64) * 1_000_000;
        let push = |out: &mut Vec<RawEvent>, id: String, value: Value| {
            out.push(RawEvent {
                key: Some(user.3.to_string()),
                value: value.to_string().into_bytes(),
                event_id: Some(id),
                trace_id: Some(trace_id.clone()),
            });
        };
        let id = |rng: &mut Rng| format!("evt-{}", rng.hex(12));

        let eid = id(&mut rng);
        let (v, root) = envelope(
            &mut rng,
            &eid,
            "infrastructure_request",
            "user_interaction",
            "natural_language_interface",
            intent,
            &user,
            at,
            &trace_id,
            None,
            &request_id,
            json!({"naturalLanguageRequest": text}),
            json!({"status": "success"}),
        );
        push(&mut out, eid, v);

        at += 150_000;
        let eid = id(&mut rng);
        let confidence = 0.80 + (rng.below(20) as f64) / 100.0;
        let (v, _) = envelope(
            &mut rng,
            &eid,
            "intent_recognized",
            "ai_processing",
            "intent_recognition",
            intent,
            &user,
            at,
            &trace_id,
            Some(&root),
            &request_id,
            json!({"intent": intent, "confidence": confidence, "tools": tools, "model": "idp-intent-v3",
                   "extractedParameters": {"name": format!("{}-{}", intent.replace('_', "-"), r), "runtime": "nodejs"}}),
            json!({"status": "success"}),
        );
        push(&mut out, eid, v);

        at += 80_000;
        let eid = id(&mut rng);
        let denied = rng.below(10) == 0;
        let cost = 20 + rng.below(400);
        let (v, _) = envelope(
            &mut rng,
            &eid,
            "policy_evaluated",
            "policy_decision",
            "policy_engine",
            "evaluate_policies",
            &user,
            at,
            &trace_id,
            Some(&root),
            &request_id,
            json!({"policies": ["cost-limit", "data-residency", "tagging"], "estimatedCost": cost}),
            json!({"status": if denied { "denied" } else { "success" }, "violations": if denied { 1 } else { 0 }}),
        );
        push(&mut out, eid, v);
        if denied {
            continue;
        }

        let approval = cost > 250;
        if approval {
            at += 3_600_000_000 / 60;
            let approver = *rng.pick(
                &USERS
                    .iter()
                    .filter(|u| u.4.contains(&"approver"))
                    .copied()
                    .collect::<Vec<_>>(),
            );
            let eid = id(&mut rng);
            let (v, _) = envelope(
                &mut rng,
                &eid,
                "approval_granted",
                "approval",
                "approval_service",
                "approve",
                &approver,
                at,
                &trace_id,
                Some(&root),
                &request_id,
                json!({"requestedBy": user.0, "estimatedCost": cost}),
                json!({"status": "success"}),
            );
            push(&mut out, eid, v);
        }

        at += 2_000_000;
        let eid = id(&mut rng);
        let (v, _) = envelope(
            &mut rng,
            &eid,
            "iac_generated",
            "infrastructure",
            "iac_generator",
            "generate_terraform",
            &user,
            at,
            &trace_id,
            Some(&root),
            &request_id,
            json!({"templates": tools, "resourceCount": tools.len()}),
            json!({"status": "success", "desiredStateId": format!("ds-{}", r)}),
        );
        push(&mut out, eid, v);

        at += 45_000_000;
        let eid = id(&mut rng);
        let failed = rng.below(8) == 0;
        let (v, _) = envelope(
            &mut rng,
            &eid,
            "deployment_completed",
            "deployment",
            "deployment_orchestrator",
            "deploy",
            &user,
            at,
            &trace_id,
            Some(&root),
            &request_id,
            json!({"environment": "staging", "resources": tools}),
            json!({"status": if failed { "failure" } else { "success" }, "deploymentId": format!("dep-{}", r)}),
        );
        push(&mut out, eid, v);
    }
    out
}

/// `count` invalid records, cycling through the kinds of bad input ingest must dead-letter.
pub fn invalid(count: usize) -> Vec<RawEvent> {
    let kinds: [&[u8]; 6] = [
        b"{not json",
        b"{\"event\": {\"id\": \"evt-bad-1\", \"source\": \"x\", \"category\": \"governance\", \"userId\": \"u\"}}",
        b"{\"event\": {\"id\": \"evt-bad-2\", \"eventType\": \"t\", \"timestamp\": \"yesterday\", \"source\": \"x\", \"category\": \"governance\", \"userId\": \"u\"}}",
        b"{\"event\": {\"id\": \"evt-bad-3\", \"eventType\": \"t\", \"timestamp\": \"1066-10-14T09:00:00Z\", \"source\": \"x\", \"category\": \"astrology\", \"userId\": \"u\"}}",
        b"\xff\xfe\x00garbage",
        b"[1, 2, 3]",
    ];
    (0..count)
        .map(|i| RawEvent {
            key: Some(format!("bad-{i}")),
            value: kinds[i % kinds.len()].to_vec(),
            event_id: None,
            trace_id: None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifecycle_is_deterministic_and_well_formed() {
        let a = lifecycle(20, 7, 1_700_000_000_000_000);
        let b = lifecycle(20, 7, 1_700_000_000_000_000);
        assert_eq!(a.len(), b.len());
        assert!(a.iter().zip(&b).all(|(x, y)| x.value == y.value));
        assert!(a.len() >= 20 * 3);
        for e in &a {
            let v: Value = serde_json::from_slice(&e.value).expect("valid JSON");
            assert!(v["event"]["id"]
                .as_str()
                .is_some_and(|s| s.starts_with("evt-")));
        }
        let ids: std::collections::HashSet<_> =
            a.iter().filter_map(|e| e.event_id.clone()).collect();
        assert_eq!(ids.len(), a.len(), "event ids are unique");
    }
}
