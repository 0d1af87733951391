-- Report view: AI activity per model and agent type in a time window (report_ai_activity,
-- migration 0020): events, tokens, confidence.
-- @param from DateTime start (inclusive), UTC
-- @param to DateTime end (exclusive), UTC
SELECT
    model,
    agent_type,
    count() AS events,
    sum(ifNull(prompt_tokens, 0)) AS prompt_tokens,
    sum(ifNull(completion_tokens, 0)) AS completion_tokens,
    avg(confidence) AS avg_confidence,
    min(confidence) AS min_confidence
FROM
(
    SELECT model, agent_type, prompt_tokens, completion_tokens, confidence
    FROM report_ai_activity
    WHERE event_time_us >= toInt64(toDateTime({from:DateTime})) * 1000000
      AND event_time_us < toInt64(toDateTime({to:DateTime})) * 1000000
    LIMIT 1 BY chain_partition, seq
)
GROUP BY model, agent_type
ORDER BY events DESC, model, agent_type
