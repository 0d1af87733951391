-- Report view: deployments and cost estimates per team and cost center in a time window
-- (report_deployments, migration 0020). deployments: distinct deployment ids reported;
-- estimated_cost: the sum of result.estimatedCost over the events that report one.
-- @param from DateTime start (inclusive), UTC
-- @param to DateTime end (exclusive), UTC
SELECT
    team_id,
    cost_center,
    uniqExactIf(deployment_id, deployment_id != '') AS deployments,
    countIf(has_cost = 1) AS costed_events,
    sumIf(estimated_cost, has_cost = 1) AS estimated_cost
FROM
(
    SELECT team_id, cost_center, deployment_id, has_cost, estimated_cost
    FROM report_deployments
    WHERE event_time_us >= toInt64(toDateTime({from:DateTime})) * 1000000
      AND event_time_us < toInt64(toDateTime({to:DateTime})) * 1000000
    LIMIT 1 BY chain_partition, seq
)
GROUP BY team_id, cost_center
ORDER BY estimated_cost DESC, team_id, cost_center
