-- Optional upgrade (server >= 21.8): the server itself drops a retried INSERT whose block is
-- identical to one of the last 1000 (an extra guard behind the sink's re-query-before-retry).
ALTER TABLE audit_events MODIFY SETTING non_replicated_deduplication_window = 1000;
