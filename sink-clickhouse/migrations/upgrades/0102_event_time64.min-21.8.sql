-- Optional upgrade (server >= 21.8): microsecond event time as a DateTime64 for analysts.
-- An ALIAS column is computed from event_time_us on read: not stored, not insertable, so it
-- can never disagree with the chained value, and it is not part of AuditRow.
ALTER TABLE audit_events
    ADD COLUMN IF NOT EXISTS event_time64 DateTime64(6, 'UTC') ALIAS fromUnixTimestamp64Micro(event_time_us);
