-- Chain status of one partition as stored here: head, holes and duplicates, time span, the
-- latest signed checkpoint and how far the head is past it, and fork alarms. A quick look;
-- `auditctl verify --partition P` recomputes every hash.
-- @param partition Int64 the chain partition
SELECT
    e.chain_partition AS chain_partition,
    head_seq,
    head_hash,
    rows,
    distinct_seqs,
    head_seq - distinct_seqs AS missing_seqs,
    rows - distinct_seqs AS duplicate_rows,
    first_event_time,
    last_event_time,
    checkpoint_seq,
    if(checkpoint_seq = 0, NULL, checkpoint_time) AS last_checkpoint_time,
    head_seq - checkpoint_seq AS unsealed_seqs,
    (SELECT count() FROM audit_forks WHERE chain_partition = {partition:Int64}) AS forks
FROM
(
    SELECT
        chain_partition,
        max(seq) AS head_seq,
        argMax(hash, seq) AS head_hash,
        count() AS rows,
        uniqExact(seq) AS distinct_seqs,
        min(event_time) AS first_event_time,
        max(event_time) AS last_event_time
    FROM audit_events
    WHERE chain_partition = {partition:Int64}
    GROUP BY chain_partition
) AS e
ANY LEFT JOIN
(
    SELECT
        chain_partition,
        max(seq) AS checkpoint_seq,
        argMax(time, seq) AS checkpoint_time
    FROM audit_checkpoints
    WHERE chain_partition = {partition:Int64}
    GROUP BY chain_partition
) AS c USING (chain_partition)
