-- Report view: violations per team and kind in a time window (report_violations, migration
-- 0020); the data of the "violations per team" chart. Events without a team count under ''.
-- @param from DateTime start (inclusive), UTC
-- @param to DateTime end (exclusive), UTC
SELECT
    team_id,
    count() AS violations,
    countIf(kind = 'blocked') AS blocked,
    countIf(kind = 'escalated') AS escalated,
    countIf(kind = 'denied') AS denied
FROM
(
    SELECT team_id, kind
    FROM report_violations
    WHERE event_time >= {from:DateTime}
      AND event_time < {to:DateTime}
    LIMIT 1 BY chain_partition, seq
)
GROUP BY team_id
ORDER BY violations DESC, team_id
