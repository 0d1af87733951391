-- One trace's timeline: every event carrying the trace id, in event-time order (microseconds),
-- with what the chain says about where each one is stored.
-- @param trace_id String the trace id
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
    span_id,
    parent_span_id,
    parent_event_id,
    target_type,
    target_id,
    chain_partition,
    seq
FROM audit_events
WHERE trace_id = {trace_id:String}
ORDER BY event_time_us, chain_partition, seq
LIMIT 1 BY chain_partition, seq
