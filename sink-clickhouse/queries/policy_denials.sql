-- Denied actions (outcome DENIED) in a time window, with who asked, for what, and why.
-- Parameters: {from:String}, {to:String} ('YYYY-MM-DD hh:mm:ss' UTC, to exclusive)
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
  AND event_time >= toDateTime({from:String}, 'UTC')
  AND event_time < toDateTime({to:String}, 'UTC')
ORDER BY event_time_us, chain_partition, seq
LIMIT 1 BY chain_partition, seq
