-- Report view: policy violations and escalations in a time window, newest first
-- (report_violations, migration 0020). kind: blocked | escalated | denied.
-- @param from DateTime start (inclusive), UTC
-- @param to DateTime end (exclusive), UTC
SELECT
    event_time,
    kind,
    event_type,
    outcome,
    team_id,
    department,
    actor_id,
    source_component,
    target_type,
    target_id,
    reason,
    request_id,
    trace_id,
    event_id
FROM report_violations
WHERE event_time >= {from:DateTime}
  AND event_time < {to:DateTime}
ORDER BY event_time_us DESC, chain_partition, seq
LIMIT 1 BY chain_partition, seq
