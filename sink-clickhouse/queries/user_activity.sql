-- What one user (or service/agent: any actor id) did in a time window, newest first.
-- Parameters: {actor_id:String}, {from:String}, {to:String} ('YYYY-MM-DD hh:mm:ss' UTC, to
-- exclusive), {limit:UInt64}
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
  AND event_time >= toDateTime({from:String}, 'UTC')
  AND event_time < toDateTime({to:String}, 'UTC')
ORDER BY event_time_us DESC, chain_partition, seq
LIMIT 1 BY chain_partition, seq
LIMIT {limit:UInt64}
