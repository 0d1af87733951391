-- Report view: failures by component and error in a time window (report_failures, migration
-- 0020).
-- @param from DateTime start (inclusive), UTC
-- @param to DateTime end (exclusive), UTC
SELECT
    source_component,
    error,
    count() AS failures,
    uniqExact(event_type) AS event_types,
    min(event_time_us) AS first_us,
    max(event_time_us) AS last_us
FROM
(
    SELECT source_component, error, event_type, event_time_us
    FROM report_failures
    WHERE event_time_us >= toInt64(toDateTime({from:DateTime})) * 1000000
      AND event_time_us < toInt64(toDateTime({to:DateTime})) * 1000000
    LIMIT 1 BY chain_partition, seq
)
GROUP BY source_component, error
ORDER BY failures DESC, source_component, error
