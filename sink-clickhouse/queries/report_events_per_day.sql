-- Report view: events, failures and denials per day (report_activity_daily, migration 0020);
-- the data of the "events over time" chart. Days as in report_activity.
-- @param from DateTime start (inclusive), UTC; its day is included
-- @param to DateTime end (exclusive), UTC
SELECT
    day,
    uniqExactMerge(events) AS events,
    uniqExactIfMerge(failures) AS failures,
    uniqExactIfMerge(denials) AS denials
FROM report_activity_daily
WHERE day >= toDate({from:DateTime})
  AND day <= toDate(addSeconds({to:DateTime}, -1))
GROUP BY day
ORDER BY day
