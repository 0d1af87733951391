-- Denied actions (outcome DENIED) in a time window, with who asked, for what, and why.
-- For blocked and escalated requests as well, see policy_violations.
-- @param from DateTime start (inclusive), UTC
-- @param to DateTime end (exclusive), UTC
SELECT
    event_time,
    event_type,
    actor_type,
    actor_id,
    actor_name,
    team_id,
    action_verb,
    action_status,
    action_error,
    target_type,
    target_id,
    reason,
    compliance_traffic_light,
    trace_id,
    event_id
FROM audit_events
WHERE outcome = 'DENIED'
  AND event_time >= {from:DateTime}
  AND event_time < {to:DateTime}
ORDER BY event_time_us, chain_partition, seq
LIMIT 1 BY chain_partition, seq
