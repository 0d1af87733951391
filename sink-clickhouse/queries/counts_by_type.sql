-- Events per type and category in a time window.
-- Parameters: {from:String}, {to:String} as 'YYYY-MM-DD hh:mm:ss' (UTC), to exclusive.
-- Counts distinct (chain_partition, seq), so a duplicate row could never inflate a figure.
SELECT
    event_type,
    category,
    uniqExact(chain_partition, seq) AS events,
    min(event_time) AS first_seen,
    max(event_time) AS last_seen
FROM audit_events
WHERE event_time >= toDateTime({from:String}, 'UTC')
  AND event_time < toDateTime({to:String}, 'UTC')
GROUP BY event_type, category
ORDER BY events DESC, event_type, category
