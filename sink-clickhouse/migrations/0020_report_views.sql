-- Report views (seed 000 §6.2), kept by materialized views as rows arrive, so that reports
-- read a small table instead of scanning audit_events. Works on 18.16 and current servers.
--
-- Exactly once without trusting the insert path: a (chain_partition, seq) can reach a view
-- twice (a fork copy, the backfill below overlapping rows the view already saw, a migration
-- retried after a crash). So every view either
--   - keeps one row per event, ordered by (…, chain_partition, seq), and is read with
--     `LIMIT 1 BY chain_partition, seq` (the report_* recipes do), or
--   - aggregates with uniqExact(chain_partition, seq) states, which a duplicate cannot move.
-- Views see rows inserted after they exist; the INSERT … SELECT after each view fills in what
-- was there before (safe to repeat, for the reason above).
--
-- Derived columns (target_metadata, department) are recomputed here from the chained columns
-- rather than read from audit_events' MATERIALIZED columns, which a view's SELECT does not get
-- on every server.

-- ---- activity per user, team and day ---------------------------------------------------------
CREATE TABLE IF NOT EXISTS report_activity_daily
(
    day Date,
    team_id String,
    actor_id String,
    actor_type String,
    events AggregateFunction(uniqExact, Int32, Int64),
    failures AggregateFunction(uniqExactIf, Int32, Int64, UInt8),
    denials AggregateFunction(uniqExactIf, Int32, Int64, UInt8)
)
ENGINE = AggregatingMergeTree()
PARTITION BY toYYYYMM(day)
ORDER BY (day, team_id, actor_id, actor_type);

CREATE MATERIALIZED VIEW IF NOT EXISTS report_activity_daily_mv TO report_activity_daily AS
SELECT
    toDate(event_time) AS day,
    ifNull(team_id, '') AS team_id,
    actor_id,
    actor_type,
    uniqExactState(chain_partition, seq) AS events,
    uniqExactIfState(chain_partition, seq, toUInt8(outcome = 'FAILURE')) AS failures,
    uniqExactIfState(chain_partition, seq, toUInt8(outcome = 'DENIED')) AS denials
FROM audit_events
GROUP BY day, team_id, actor_id, actor_type;

INSERT INTO report_activity_daily
SELECT
    toDate(event_time) AS day,
    ifNull(team_id, '') AS team_id,
    actor_id,
    actor_type,
    uniqExactState(chain_partition, seq) AS events,
    uniqExactIfState(chain_partition, seq, toUInt8(outcome = 'FAILURE')) AS failures,
    uniqExactIfState(chain_partition, seq, toUInt8(outcome = 'DENIED')) AS denials
FROM audit_events
GROUP BY day, team_id, actor_id, actor_type;

-- ---- policy violations and escalations --------------------------------------------------------
-- kind: blocked (`*_blocked`), escalated (`*_escalated`), denied (any other outcome DENIED).
CREATE TABLE IF NOT EXISTS report_violations
(
    day Date,
    event_time DateTime('UTC'),
    event_time_us Int64,
    chain_partition Int32,
    seq Int64,
    kind String,
    event_type String,
    outcome String,
    team_id String,
    department String,
    actor_id String,
    source_component String,
    target_type String,
    target_id String,
    reason String,
    request_id String,
    trace_id String,
    event_id String
)
ENGINE = ReplacingMergeTree()
PARTITION BY toYYYYMM(day)
ORDER BY (day, chain_partition, seq);

CREATE MATERIALIZED VIEW IF NOT EXISTS report_violations_mv TO report_violations AS
SELECT
    toDate(event_time) AS day,
    event_time,
    event_time_us,
    chain_partition,
    seq,
    multiIf(match(event_type, '_blocked$'), 'blocked', match(event_type, '_escalated$'), 'escalated', 'denied') AS kind,
    event_type,
    outcome,
    ifNull(team_id, '') AS team_id,
    if(indexOf(attribute_keys, 'audit.enrich.department') > 0, arrayElement(attribute_values, indexOf(attribute_keys, 'audit.enrich.department')), '') AS department,
    actor_id,
    source_component,
    ifNull(target_type, '') AS target_type,
    ifNull(target_id, '') AS target_id,
    ifNull(reason, '') AS reason,
    ifNull(request_id, '') AS request_id,
    ifNull(trace_id, '') AS trace_id,
    event_id
FROM audit_events
WHERE outcome = 'DENIED' OR match(event_type, '_(blocked|escalated)$');

INSERT INTO report_violations
SELECT
    toDate(event_time) AS day,
    event_time,
    event_time_us,
    chain_partition,
    seq,
    multiIf(match(event_type, '_blocked$'), 'blocked', match(event_type, '_escalated$'), 'escalated', 'denied') AS kind,
    event_type,
    outcome,
    ifNull(team_id, '') AS team_id,
    if(indexOf(attribute_keys, 'audit.enrich.department') > 0, arrayElement(attribute_values, indexOf(attribute_keys, 'audit.enrich.department')), '') AS department,
    actor_id,
    source_component,
    ifNull(target_type, '') AS target_type,
    ifNull(target_id, '') AS target_id,
    ifNull(reason, '') AS reason,
    ifNull(request_id, '') AS request_id,
    ifNull(trace_id, '') AS trace_id,
    event_id
FROM audit_events
WHERE outcome = 'DENIED' OR match(event_type, '_(blocked|escalated)$');

-- ---- approvals --------------------------------------------------------------------------------
-- One row per approval-workflow event of a request; latency is computed per request at read
-- time (first decision − first request for approval). stage: requested (`*_escalated`,
-- `approval_requested`, `review_requested`, `review_created`), approved (`*_approved`,
-- `approval_granted`), rejected (`*_rejected`, `approval_denied`).
CREATE TABLE IF NOT EXISTS report_approvals
(
    day Date,
    event_time_us Int64,
    chain_partition Int32,
    seq Int64,
    request_id String,
    stage String,
    event_type String,
    team_id String,
    actor_id String,
    event_id String
)
ENGINE = ReplacingMergeTree()
PARTITION BY toYYYYMM(day)
ORDER BY (day, chain_partition, seq);

CREATE MATERIALIZED VIEW IF NOT EXISTS report_approvals_mv TO report_approvals AS
SELECT
    toDate(event_time) AS day,
    event_time_us,
    chain_partition,
    seq,
    ifNull(request_id, event_id) AS request_id,
    multiIf(match(event_type, '(_escalated|approval_requested|review_requested|review_created)$'), 'requested', match(event_type, '(_approved|approval_granted)$'), 'approved', 'rejected') AS stage,
    event_type,
    ifNull(team_id, '') AS team_id,
    actor_id,
    event_id
FROM audit_events
WHERE match(event_type, '(_escalated|approval_requested|review_requested|review_created|_approved|approval_granted|_rejected|approval_denied)$');

INSERT INTO report_approvals
SELECT
    toDate(event_time) AS day,
    event_time_us,
    chain_partition,
    seq,
    ifNull(request_id, event_id) AS request_id,
    multiIf(match(event_type, '(_escalated|approval_requested|review_requested|review_created)$'), 'requested', match(event_type, '(_approved|approval_granted)$'), 'approved', 'rejected') AS stage,
    event_type,
    ifNull(team_id, '') AS team_id,
    actor_id,
    event_id
FROM audit_events
WHERE match(event_type, '(_escalated|approval_requested|review_requested|review_created|_approved|approval_granted|_rejected|approval_denied)$');

-- ---- deployments and their cost estimates ----------------------------------------------------
-- Events that report a deployment or a cost estimate in their result (seed 000:
-- `result.deploymentId`, `result.estimatedCost`) or whose type names a deployment.
CREATE TABLE IF NOT EXISTS report_deployments
(
    day Date,
    event_time_us Int64,
    chain_partition Int32,
    seq Int64,
    team_id String,
    cost_center String,
    project_id String,
    deployment_id String,
    target_type String,
    target_id String,
    outcome String,
    has_cost UInt8,
    estimated_cost Float64,
    event_type String,
    event_id String
)
ENGINE = ReplacingMergeTree()
PARTITION BY toYYYYMM(day)
ORDER BY (day, chain_partition, seq);

CREATE MATERIALIZED VIEW IF NOT EXISTS report_deployments_mv TO report_deployments AS
SELECT
    toDate(event_time) AS day,
    event_time_us,
    chain_partition,
    seq,
    ifNull(team_id, '') AS team_id,
    ifNull(cost_center, '') AS cost_center,
    ifNull(project_id, '') AS project_id,
    visitParamExtractString(ifNull(result_json, ''), 'deploymentId') AS deployment_id,
    ifNull(target_type, '') AS target_type,
    ifNull(target_id, '') AS target_id,
    outcome,
    toUInt8(visitParamHas(ifNull(result_json, ''), 'estimatedCost')) AS has_cost,
    visitParamExtractFloat(ifNull(result_json, ''), 'estimatedCost') AS estimated_cost,
    event_type,
    event_id
FROM audit_events
WHERE visitParamHas(ifNull(result_json, ''), 'estimatedCost')
   OR visitParamHas(ifNull(result_json, ''), 'deploymentId')
   OR match(event_type, 'deploy');

INSERT INTO report_deployments
SELECT
    toDate(event_time) AS day,
    event_time_us,
    chain_partition,
    seq,
    ifNull(team_id, '') AS team_id,
    ifNull(cost_center, '') AS cost_center,
    ifNull(project_id, '') AS project_id,
    visitParamExtractString(ifNull(result_json, ''), 'deploymentId') AS deployment_id,
    ifNull(target_type, '') AS target_type,
    ifNull(target_id, '') AS target_id,
    outcome,
    toUInt8(visitParamHas(ifNull(result_json, ''), 'estimatedCost')) AS has_cost,
    visitParamExtractFloat(ifNull(result_json, ''), 'estimatedCost') AS estimated_cost,
    event_type,
    event_id
FROM audit_events
WHERE visitParamHas(ifNull(result_json, ''), 'estimatedCost')
   OR visitParamHas(ifNull(result_json, ''), 'deploymentId')
   OR match(event_type, 'deploy');

-- ---- failures by component and error ----------------------------------------------------------
CREATE TABLE IF NOT EXISTS report_failures
(
    day Date,
    event_time_us Int64,
    chain_partition Int32,
    seq Int64,
    source_component String,
    event_type String,
    error String,
    team_id String,
    trace_id String,
    event_id String
)
ENGINE = ReplacingMergeTree()
PARTITION BY toYYYYMM(day)
ORDER BY (day, chain_partition, seq);

CREATE MATERIALIZED VIEW IF NOT EXISTS report_failures_mv TO report_failures AS
SELECT
    toDate(event_time) AS day,
    event_time_us,
    chain_partition,
    seq,
    source_component,
    event_type,
    ifNull(action_error, '') AS error,
    ifNull(team_id, '') AS team_id,
    ifNull(trace_id, '') AS trace_id,
    event_id
FROM audit_events
WHERE outcome = 'FAILURE';

INSERT INTO report_failures
SELECT
    toDate(event_time) AS day,
    event_time_us,
    chain_partition,
    seq,
    source_component,
    event_type,
    ifNull(action_error, '') AS error,
    ifNull(team_id, '') AS team_id,
    ifNull(trace_id, '') AS trace_id,
    event_id
FROM audit_events
WHERE outcome = 'FAILURE';

-- ---- AI activity: model, tokens, confidence ---------------------------------------------------
CREATE TABLE IF NOT EXISTS report_ai_activity
(
    day Date,
    event_time_us Int64,
    chain_partition Int32,
    seq Int64,
    team_id String,
    actor_id String,
    agent_type String,
    model String,
    prompt_tokens Nullable(Int64),
    completion_tokens Nullable(Int64),
    confidence Nullable(Float64),
    execution_time_ms Nullable(Int64),
    outcome String,
    event_id String
)
ENGINE = ReplacingMergeTree()
PARTITION BY toYYYYMM(day)
ORDER BY (day, chain_partition, seq);

CREATE MATERIALIZED VIEW IF NOT EXISTS report_ai_activity_mv TO report_ai_activity AS
SELECT
    toDate(event_time) AS day,
    event_time_us,
    chain_partition,
    seq,
    ifNull(team_id, '') AS team_id,
    actor_id,
    ifNull(ai_agent_type, '') AS agent_type,
    ifNull(ai_model, '') AS model,
    ai_prompt_tokens AS prompt_tokens,
    ai_completion_tokens AS completion_tokens,
    ai_confidence AS confidence,
    ai_execution_time_ms AS execution_time_ms,
    outcome,
    event_id
FROM audit_events
WHERE has_ai = 1;

INSERT INTO report_ai_activity
SELECT
    toDate(event_time) AS day,
    event_time_us,
    chain_partition,
    seq,
    ifNull(team_id, '') AS team_id,
    actor_id,
    ifNull(ai_agent_type, '') AS agent_type,
    ifNull(ai_model, '') AS model,
    ai_prompt_tokens AS prompt_tokens,
    ai_completion_tokens AS completion_tokens,
    ai_confidence AS confidence,
    ai_execution_time_ms AS execution_time_ms,
    outcome,
    event_id
FROM audit_events
WHERE has_ai = 1;
