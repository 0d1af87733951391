-- Optional upgrade (server >= 21.8): bloom-filter skip indexes for the analyst lookups that do
-- not follow the primary key (one trace, one user, one event id). New parts get them; run
-- `ALTER TABLE audit_events MATERIALIZE INDEX …` to build them for old parts.
ALTER TABLE audit_events
    ADD INDEX IF NOT EXISTS idx_trace_id trace_id TYPE bloom_filter(0.01) GRANULARITY 4,
    ADD INDEX IF NOT EXISTS idx_actor_id actor_id TYPE bloom_filter(0.01) GRANULARITY 4,
    ADD INDEX IF NOT EXISTS idx_event_id event_id TYPE bloom_filter(0.01) GRANULARITY 4;
