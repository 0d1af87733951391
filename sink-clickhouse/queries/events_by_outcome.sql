-- Every event with one outcome (SUCCESS, FAILURE, DENIED, PENDING, UNKNOWN) in a time window,
-- newest first.
-- @param outcome String SUCCESS | FAILURE | DENIED | PENDING | UNKNOWN
-- @param from DateTime start (inclusive), UTC
-- @param to DateTime end (exclusive), UTC
-- @param limit UInt64 = 1000 at most this many rows
SELECT
    event_time_us,
    event_time,
    event_type,
    category,
    source_component,
    actor_id,
    team_id,
    action_verb,
    action_error,
    target_type,
    target_id,
    trace_id,
    event_id
FROM audit_events
WHERE outcome = {outcome:String}
  AND event_time >= {from:DateTime}
  AND event_time < {to:DateTime}
ORDER BY event_time_us DESC, chain_partition, seq
LIMIT 1 BY chain_partition, seq
LIMIT {limit:UInt64}
