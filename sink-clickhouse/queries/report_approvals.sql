-- Report view: approvals and their latency, per request whose approval was asked for in the
-- time window (report_approvals, migration 0020). requested_us: first request for approval
-- (an escalation, approval_requested, review_requested/created); decided_us: first decision
-- at or after it (approved or rejected); latency_s: the time between in seconds; both NULL
-- while pending.
-- @param from DateTime start (inclusive), UTC
-- @param to DateTime end (exclusive), UTC
SELECT
    request_id,
    team_id,
    requested_us,
    decision,
    if(decided > 0, decided, NULL) AS decided_us,
    if(decided > 0, (decided - requested_us) / 1000000, NULL) AS latency_s
FROM
(
    SELECT
        request_id,
        any(team_id) AS team_id,
        minIf(event_time_us, stage = 'requested') AS requested_us,
        arrayFilter(x -> tupleElement(x, 1) >= requested_us, groupArrayIf((event_time_us, stage), stage != 'requested')) AS decisions,
        if(empty(decisions), 0, tupleElement(arrayReduce('min', decisions), 1)) AS decided,
        if(empty(decisions), 'pending', tupleElement(arrayReduce('min', decisions), 2)) AS decision
    FROM
    (
        SELECT request_id, team_id, event_time_us, stage
        FROM report_approvals
        LIMIT 1 BY chain_partition, seq
    )
    GROUP BY request_id
    HAVING countIf(stage = 'requested') > 0
)
WHERE requested_us >= toUInt64(toDateTime({from:DateTime})) * 1000000
  AND requested_us < toUInt64(toDateTime({to:DateTime})) * 1000000
ORDER BY requested_us, request_id
