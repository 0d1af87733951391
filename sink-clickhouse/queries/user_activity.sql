-- What one user (or service/agent: any actor id) did in a time window, newest first.
-- @param actor_id String the actor id (user, service or agent)
-- @param from DateTime start (inclusive), UTC
-- @param to DateTime end (exclusive), UTC
-- @param limit UInt64 = 1000 at most this many rows
SELECT
    event_time_us,
    event_time,
    event_type,
    category,
    action_verb,
    outcome,
    target_type,
    target_id,
    team_id,
    actor_ip,
    actor_session_id,
    trace_id,
    event_id
FROM audit_events
WHERE actor_id = {actor_id:String}
  AND event_time >= {from:DateTime}
  AND event_time < {to:DateTime}
ORDER BY event_time_us DESC, chain_partition, seq
LIMIT 1 BY chain_partition, seq
LIMIT {limit:UInt64}
