-- Estimated cost per team and cost center in a time window: the sum of `estimatedCost` that
-- producers report in an event's result (seed 000: `result.estimatedCost`), over the events
-- that report one. Events without a team or cost center count under ''.
-- @param from DateTime start (inclusive), UTC
-- @param to DateTime end (exclusive), UTC
SELECT
    team,
    cost_center,
    count() AS costed_events,
    sum(cost) AS estimated_cost
FROM
(
    SELECT
        ifNull(team_id, '') AS team,
        ifNull(cost_center, '') AS cost_center,
        visitParamExtractFloat(ifNull(result_json, ''), 'estimatedCost') AS cost
    FROM audit_events
    WHERE visitParamHas(ifNull(result_json, ''), 'estimatedCost')
      AND event_time >= {from:DateTime}
      AND event_time < {to:DateTime}
    LIMIT 1 BY chain_partition, seq
)
GROUP BY team, cost_center
ORDER BY estimated_cost DESC, team, cost_center
