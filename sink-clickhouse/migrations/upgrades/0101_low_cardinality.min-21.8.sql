-- Optional upgrade (server >= 21.8; LowCardinality exists earlier but is avoided before 21.8):
-- dictionary-encode the low-cardinality string columns. RowBinary reads and writes
-- LowCardinality(String) exactly like String, so AuditRow and the queries are unchanged.
ALTER TABLE audit_events
    MODIFY COLUMN event_type LowCardinality(String),
    MODIFY COLUMN category LowCardinality(String),
    MODIFY COLUMN severity LowCardinality(String),
    MODIFY COLUMN outcome LowCardinality(String),
    MODIFY COLUMN source_component LowCardinality(String),
    MODIFY COLUMN ingress_channel LowCardinality(String),
    MODIFY COLUMN ingress_format LowCardinality(String),
    MODIFY COLUMN actor_type LowCardinality(String),
    MODIFY COLUMN source_topic LowCardinality(String);
