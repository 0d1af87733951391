-- Head of each partition's chain as stored here, with a quick completeness check (a full
-- verification recomputes every hash: `auditctl verify`), and the latest stored checkpoint.
SELECT
    chain_partition,
    head_seq,
    head_hash,
    rows,
    distinct_seqs,
    head_seq - distinct_seqs AS missing_seqs,
    rows - distinct_seqs AS duplicate_rows,
    last_event_time,
    checkpoint_seq,
    if(checkpoint_seq = 0, NULL, checkpoint_time) AS last_checkpoint_time
FROM
(
    SELECT
        chain_partition,
        max(seq) AS head_seq,
        argMax(hash, seq) AS head_hash,
        count() AS rows,
        uniqExact(seq) AS distinct_seqs,
        max(event_time) AS last_event_time
    FROM audit_events
    GROUP BY chain_partition
) AS e
ANY LEFT JOIN
(
    SELECT
        chain_partition,
        max(seq) AS checkpoint_seq,
        argMax(time, seq) AS checkpoint_time
    FROM audit_checkpoints
    GROUP BY chain_partition
) AS c USING (chain_partition)
ORDER BY chain_partition
