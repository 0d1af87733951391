-- Optional upgrade (server >= 21.8, where the sink sets a retention TTL): the retention
-- policies applied to audit_events, newest last. The sink compares the configured policy with
-- the newest row at start; a different one is published to the chain
-- (audit.retention.policy_set, event_id here), then set as the table's TTL, then recorded here.
CREATE TABLE IF NOT EXISTS audit_retention_policy
(
    applied_at_us Int64,
    store String,
    policy String,
    ttl String,
    event_id String,
    server_version String
)
ENGINE = MergeTree()
ORDER BY applied_at_us;
