-- Events per team and day (UTC), with the outcome split. Events without a team count under ''.
-- @param from DateTime start (inclusive), UTC
-- @param to DateTime end (exclusive), UTC
SELECT
    toDate(event_time) AS day,
    ifNull(team_id, '') AS team,
    anyLast(team_name) AS team_name,
    uniqExact(chain_partition, seq) AS events,
    uniqExactIf(chain_partition, seq, outcome = 'FAILURE') AS failures,
    uniqExactIf(chain_partition, seq, outcome = 'DENIED') AS denials,
    uniqExact(actor_id) AS actors
FROM audit_events
WHERE event_time >= {from:DateTime}
  AND event_time < {to:DateTime}
GROUP BY day, team
ORDER BY day, team
