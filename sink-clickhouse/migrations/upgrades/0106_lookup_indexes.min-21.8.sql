-- Optional upgrade (server >= 21.8): skip indexes for the other recipe lookups that do not
-- follow the primary key (request timeline, resource history, event type). Same build note
-- as 0103.
ALTER TABLE audit_events
    ADD INDEX IF NOT EXISTS idx_request_id request_id TYPE bloom_filter(0.01) GRANULARITY 4,
    ADD INDEX IF NOT EXISTS idx_target_id target_id TYPE bloom_filter(0.01) GRANULARITY 4,
    ADD INDEX IF NOT EXISTS idx_event_type event_type TYPE set(256) GRANULARITY 4;
