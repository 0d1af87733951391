-- Policy violations in a time window: denied actions, blocked requests/responses and
-- escalations for review (event types `*_blocked`, `*_escalated`, seed 001), newest first.
-- kind: blocked | escalated | denied (a blocked or escalated event counts under that kind
-- whatever its outcome).
-- @param from DateTime start (inclusive), UTC
-- @param to DateTime end (exclusive), UTC
SELECT
    event_time,
    multiIf(match(event_type, '_blocked$'), 'blocked', match(event_type, '_escalated$'), 'escalated', 'denied') AS kind,
    event_type,
    outcome,
    actor_type,
    actor_id,
    team_id,
    department,
    source_component,
    action_verb,
    target_type,
    target_id,
    reason,
    action_error,
    compliance_traffic_light,
    request_id,
    trace_id,
    event_id
FROM audit_events
WHERE (outcome = 'DENIED' OR match(event_type, '_(blocked|escalated)$'))
  AND event_time >= {from:DateTime}
  AND event_time < {to:DateTime}
ORDER BY event_time_us DESC, chain_partition, seq
LIMIT 1 BY chain_partition, seq
