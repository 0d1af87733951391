-- Labels as the pipeline normalised them next to what the producers wrote, in a time window.
-- @param from DateTime start (inclusive), UTC
-- @param to DateTime end (exclusive), UTC
--
-- Ingest keeps an event whose category, severity, outcome or actor type is outside its
-- vocabulary: the column holds the fallback (OTHER, INFO, UNKNOWN, SYSTEM) or the synonym's
-- value, and the producer's text is in the attribute `audit.original.<column>` (see
-- schemas/src/json/labels.rs). `original` is that text, or, when none was kept, the column's
-- value in lowercase (the producer wrote that name). `kept_original` = 1 marks the rows that
-- the enum alone would misreport, e.g. category OTHER / original 'ai_processing'.
-- One column only: add `WHERE label = 'category'` around it, or read one attribute directly:
--   attribute_values[indexOf(attribute_keys, 'audit.original.category')]  ('' when absent).
-- Counts distinct (chain_partition, seq), so a duplicate row could never inflate a figure.
SELECT
    label,
    normalized,
    original,
    kept_original,
    uniqExact(chain_partition, seq) AS events
FROM
(
    SELECT
        chain_partition,
        seq,
        arrayJoin([
            ('category', toString(category)),
            ('severity', toString(severity)),
            ('outcome', toString(outcome)),
            ('actor_type', toString(actor_type))
        ]) AS labelled,
        tupleElement(labelled, 1) AS label,
        tupleElement(labelled, 2) AS normalized,
        indexOf(attribute_keys, concat('audit.original.', label)) AS at,
        at > 0 AS kept_original,
        if(at > 0, arrayElement(attribute_values, at), lower(normalized)) AS original
    FROM audit_events
    WHERE event_time >= {from:DateTime}
      AND event_time < {to:DateTime}
)
GROUP BY label, normalized, original, kept_original
ORDER BY label, events DESC, normalized, original
