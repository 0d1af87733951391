-- History of one resource (the event's target): who did what to it, with the state before and
-- after and the producer's target metadata, oldest first.
-- @param target_id String the target (resource) id
SELECT
    event_time_us,
    event_time,
    target_type,
    target_name,
    event_type,
    action_verb,
    outcome,
    actor_type,
    actor_id,
    team_id,
    before_json,
    after_json,
    changes,
    target_metadata,
    trace_id,
    event_id
FROM audit_events
WHERE target_id = {target_id:String}
ORDER BY event_time_us, chain_partition, seq
LIMIT 1 BY chain_partition, seq
