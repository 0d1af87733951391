-- Events per type and category in a time window.
-- Counts distinct (chain_partition, seq), so a duplicate row could never inflate a figure.
-- @param from DateTime start (inclusive), UTC
-- @param to DateTime end (exclusive), UTC
SELECT
    event_type,
    category,
    uniqExact(chain_partition, seq) AS events,
    min(event_time) AS first_seen,
    max(event_time) AS last_seen
FROM audit_events
WHERE event_time >= {from:DateTime}
  AND event_time < {to:DateTime}
GROUP BY event_type, category
ORDER BY events DESC, event_type, category
