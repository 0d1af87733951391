-- Report view: activity per day, team and actor (report_activity_daily, migration 0020).
-- The view is per day: from/to are widened to the whole days they fall in (to exclusive:
-- `--to 2024-06-03` ends with 2024-06-02).
-- @param from DateTime start (inclusive), UTC; its day is included
-- @param to DateTime end (exclusive), UTC
SELECT
    day,
    team_id,
    actor_id,
    actor_type,
    uniqExactMerge(events) AS events,
    uniqExactIfMerge(failures) AS failures,
    uniqExactIfMerge(denials) AS denials
FROM report_activity_daily
WHERE day >= toDate({from:DateTime})
  AND day <= toDate(addSeconds({to:DateTime}, -1))
GROUP BY day, team_id, actor_id, actor_type
ORDER BY day, team_id, actor_id, actor_type
