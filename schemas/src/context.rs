//! Records of the compacted context topics and how enrich applies them to an event.
//!
//! `audit.context.users` (key: user id) carries [`UserContext`], `audit.context.teams` (key: team
//! id) carries [`TeamContext`], both as JSON with camelCase names; a null value is a tombstone
//! (handled by the consumer, not here).
//!
//! [`apply_context`] is deterministic (a pure function of the event and the two records), which
//! the chain needs: a redelivered event enriched twice must give the same canonical bytes.

use serde::{Deserialize, Serialize};

use crate::error::SchemaError;
use crate::event::{Actor, AuditEvent, KeyValue, TenantContext};

/// Attribute in which enrich records the user's department. The event model has no department
/// field; an attribute keeps the Avro schema (and so every canonical encoding) unchanged, and
/// the ClickHouse sink exposes it as its own `department` column (migration 0004).
pub const DEPARTMENT_ATTRIBUTE: &str = "audit.enrich.department";

/// Sets `key` in the sorted, unique attribute list (replacing a value already there).
fn set_attribute(attributes: &mut Vec<KeyValue>, key: &str, value: &str) {
    match attributes.binary_search_by(|kv| kv.key.as_str().cmp(key)) {
        Ok(i) => attributes[i].value = value.to_owned(),
        Err(i) => attributes.insert(
            i,
            KeyValue {
                key: key.to_owned(),
                value: value.to_owned(),
            },
        ),
    }
}

/// One user, as published by identity sync.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UserContext {
    pub user_id: String,
    pub name: String,
    pub email: String,
    #[serde(default)]
    pub roles: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub team_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub department: Option<String>,
}

/// One team, as published by identity sync.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TeamContext {
    pub team_id: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub business_unit: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost_center: Option<String>,
}

/// Parses a user record. `key` is the Kafka record key (for error context and a consistency
/// check: a record whose `userId` differs from its key would poison the compacted topic).
pub fn parse_user_context(key: &str, bytes: &[u8]) -> Result<UserContext, SchemaError> {
    let user: UserContext = serde_json::from_slice(bytes).map_err(|e| SchemaError::Context {
        record: "user",
        key: key.to_owned(),
        reason: e.to_string(),
    })?;
    if user.user_id.is_empty() {
        return Err(SchemaError::Context {
            record: "user",
            key: key.to_owned(),
            reason: "userId is empty".to_owned(),
        });
    }
    if !key.is_empty() && user.user_id != key {
        return Err(SchemaError::Context {
            record: "user",
            key: key.to_owned(),
            reason: format!("userId {:?} does not match the record key", user.user_id),
        });
    }
    Ok(user)
}

/// Parses a team record (see [`parse_user_context`] for `key`).
pub fn parse_team_context(key: &str, bytes: &[u8]) -> Result<TeamContext, SchemaError> {
    let team: TeamContext = serde_json::from_slice(bytes).map_err(|e| SchemaError::Context {
        record: "team",
        key: key.to_owned(),
        reason: e.to_string(),
    })?;
    if team.team_id.is_empty() {
        return Err(SchemaError::Context {
            record: "team",
            key: key.to_owned(),
            reason: "teamId is empty".to_owned(),
        });
    }
    if !key.is_empty() && team.team_id != key {
        return Err(SchemaError::Context {
            record: "team",
            key: key.to_owned(),
            reason: format!("teamId {:?} does not match the record key", team.team_id),
        });
    }
    Ok(team)
}

fn fill(slot: &mut Option<String>, value: Option<&String>) {
    if slot.is_none() {
        if let Some(v) = value {
            *slot = Some(v.clone());
        }
    }
}

/// Fills context into `event`. Producer-given values win: context only fills what is missing,
/// except `email` and `roles`, which the identity source owns (roles sorted and de-duplicated
/// so the result does not depend on the sync's ordering). Sets the enrichment flags.
pub fn apply_context(
    event: &mut AuditEvent,
    user: Option<&UserContext>,
    team: Option<&TeamContext>,
) {
    apply_to_parts(
        &mut event.actor,
        &mut event.tenant,
        &mut event.attributes,
        user,
        team,
    );
}

/// [`apply_context`] on the only fields it writes (`crate::enrich_splice` holds just those).
pub(crate) fn apply_to_parts(
    actor: &mut Actor,
    tenant: &mut TenantContext,
    attributes: &mut Vec<KeyValue>,
    user: Option<&UserContext>,
    team: Option<&TeamContext>,
) {
    if let Some(u) = user {
        fill(&mut actor.name, Some(&u.name));
        actor.email = Some(u.email.clone());
        let mut roles = u.roles.clone();
        roles.sort_unstable();
        roles.dedup();
        actor.roles = roles;
        // The user's team is a fallback for events that name no team.
        fill(&mut tenant.team_id, u.team_id.as_ref());
        // Identity-owned like email: the directory's value wins over a producer's attribute.
        if let Some(d) = &u.department {
            set_attribute(attributes, DEPARTMENT_ATTRIBUTE, d);
        }
    }
    if let Some(t) = team {
        fill(&mut tenant.team_name, Some(&t.name));
        fill(&mut tenant.tenant_id, t.tenant_id.as_ref());
        fill(&mut tenant.project_id, t.project_id.as_ref());
        fill(&mut tenant.business_unit, t.business_unit.as_ref());
        fill(&mut tenant.cost_center, t.cost_center.as_ref());
    }
    tenant.enrichment.enriched = true;
    tenant.enrichment.user_found = user.is_some();
    tenant.enrichment.team_found = team.is_some();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::sample_event;

    #[test]
    fn parse_and_apply() {
        let u = parse_user_context(
            "user-123",
            br#"{"userId":"user-123","name":"Ada","email":"ada@example.com","roles":["dev","admin","dev"],"teamId":"team-456","department":"eng"}"#,
        )
        .expect("user");
        let t = parse_team_context(
            "team-456",
            br#"{"teamId":"team-456","name":"Platform","tenantId":"acme","businessUnit":"R&D","costCenter":"CC-1"}"#,
        )
        .expect("team");
        let mut e = sample_event();
        e.actor.name = None;
        e.tenant.tenant_id = None;
        e.tenant.project_id = Some("producer-project".into());
        apply_context(&mut e, Some(&u), Some(&t));
        assert_eq!(e.actor.name.as_deref(), Some("Ada"));
        assert_eq!(e.actor.email.as_deref(), Some("ada@example.com"));
        assert_eq!(e.actor.roles, vec!["admin".to_owned(), "dev".to_owned()]);
        assert_eq!(e.tenant.team_name.as_deref(), Some("Platform"));
        assert_eq!(e.tenant.tenant_id.as_deref(), Some("acme"));
        assert_eq!(e.tenant.project_id.as_deref(), Some("producer-project"));
        assert_eq!(e.tenant.business_unit.as_deref(), Some("R&D"));
        assert_eq!(e.tenant.cost_center.as_deref(), Some("CC-1"));
        assert!(e.tenant.enrichment.enriched);
        assert!(e.tenant.enrichment.user_found && e.tenant.enrichment.team_found);
        // The department is kept (as an attribute), in sorted position.
        let dep = e
            .attributes
            .iter()
            .find(|kv| kv.key == DEPARTMENT_ATTRIBUTE);
        assert_eq!(dep.map(|kv| kv.value.as_str()), Some("eng"));
        assert!(e.attributes.windows(2).all(|w| w[0].key < w[1].key));

        // Producer-given name wins; applying twice is idempotent.
        let mut e2 = sample_event();
        e2.actor.name = Some("Producer Name".into());
        apply_context(&mut e2, Some(&u), None);
        let once = e2.clone();
        apply_context(&mut e2, Some(&u), None);
        assert_eq!(e2, once);
        assert_eq!(e2.actor.name.as_deref(), Some("Producer Name"));
        assert!(e2.tenant.enrichment.user_found && !e2.tenant.enrichment.team_found);
    }

    #[test]
    fn parse_errors_have_context() {
        let err = parse_user_context("u1", b"{\"userId\":\"u1\"}").unwrap_err();
        assert!(
            err.to_string().contains("u1") && err.to_string().contains("name"),
            "{err}"
        );
        let err = parse_team_context("t1", br#"{"teamId":"t2","name":"x"}"#).unwrap_err();
        assert!(err.to_string().contains("does not match"), "{err}");
        assert_eq!(err.code(), "invalid_context");
    }
}
