-- One request's timeline: every event carrying the request id, in event-time order.
-- A request can span several traces (retries, async follow-ups); trace_id shows which.
-- @param request_id String the request id
SELECT
    event_time_us,
    event_time,
    event_id,
    event_type,
    source_component,
    actor_type,
    actor_id,
    action_verb,
    outcome,
    target_type,
    target_id,
    trace_id,
    span_id,
    parent_event_id,
    chain_partition,
    seq
FROM audit_events
WHERE request_id = {request_id:String}
ORDER BY event_time_us, chain_partition, seq
LIMIT 1 BY chain_partition, seq
