//! Storing batches exactly once per `(partition, seq)`.
//!
//! Every attempt (the first one and each retry) first asks ClickHouse which of the batches'
//! seqs are already stored (one query for every partition), then inserts only the missing
//! ones ([`crate::batch::plan`]). A failed insert may have landed fully, partly or not at all;
//! re-asking before the retry makes that irrelevant. The missing rows of all partitions go in
//! together, one INSERT per run of same-month rows ([`crate::batch::insert_groups`]), so each
//! INSERT touches one table partition and each chain partition's rows go in in seq order.
//! Forks are recorded in `audit_forks` (once per offered hash), never written over the stored
//! row.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use worker_runtime::retry::{retry_reporting, DependencyCheck, RetryError, RetryPolicy};
use worker_runtime::CancellationToken;

use crate::batch::{insert_groups, plan, Entry, Plan};
use crate::error::Error;
use crate::store::{ForkRow, Store};

/// What storing a batch did.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct StoreOutcome {
    /// Rows this call inserted (over all attempts).
    pub inserted: usize,
    /// Copies already stored identically (redeliveries, a zombie chainer's identical output).
    pub duplicates: usize,
    /// Copies that differ from the stored one.
    pub forks: Vec<ForkRow>,
    /// Highest seq stored for the partition among this batch's seqs.
    pub max_seq: Option<i64>,
}

/// Distinct seqs of `entries`, ascending.
fn seqs_of(entries: &[Entry]) -> Vec<i64> {
    let mut s: Vec<i64> = entries.iter().map(Entry::seq).collect();
    s.sort_unstable();
    s.dedup();
    s
}

/// The offered copy of a fork, as a Kafka payload (single-object framing): re-encoded from
/// its row (read back from the entry's bytes), which holds the whole record, so that batches
/// need not keep every payload for the rare fork. The original bytes stay at
/// `offered_chained_offset` in `<prefix>chained`.
fn offered_payload_hex(entry: &Entry) -> String {
    entry
        .row()
        .ok()
        .and_then(|row| row.to_chained().ok())
        .and_then(|c| schemas::framing::encode_single_object_chained(&c).ok())
        .map(hex::encode)
        .unwrap_or_default()
}

async fn attempt(
    store: &Store,
    parts: &[(i32, &[Entry])],
    attempted: &Mutex<HashSet<(i32, i64)>>,
) -> Result<Vec<StoreOutcome>, Error> {
    let seqs: Vec<(i32, Vec<i64>)> = parts.iter().map(|(p, e)| (*p, seqs_of(e))).collect();
    let started = std::time::Instant::now();
    let stored = store.stored_hashes_of(&seqs).await?;
    let checked = started.elapsed();
    let empty = HashMap::new();
    let plans: Vec<Plan> = parts
        .iter()
        .map(|(p, entries)| plan(entries, stored.get(p).unwrap_or(&empty)))
        .collect();
    // Per partition in seq order; all partitions together, one INSERT per run of same-month
    // rows (see `insert_groups`): each INSERT is atomic and a failure part-way leaves every
    // partition's stored seqs a contiguous prefix.
    let rows: Vec<Vec<&Entry>> = parts
        .iter()
        .zip(&plans)
        .map(|((_, entries), pl)| {
            let mut r: Vec<&Entry> = pl.insert.iter().map(|&i| &entries[i]).collect();
            r.sort_by_key(|r| r.seq);
            r
        })
        .collect();
    {
        let mut a = attempted.lock().unwrap_or_else(|e| e.into_inner());
        for ((p, _), r) in parts.iter().zip(&rows) {
            a.extend(r.iter().map(|r| (*p, r.seq)));
        }
    }
    let groups = insert_groups(&rows);
    let n_groups = groups.len();
    for group in groups {
        store.insert_events(&group).await?;
    }
    // Where a flush's time goes (the stored-seq query, the INSERTs with their views): the
    // sink's hop in end-to-end latency is its batch age plus these.
    tracing::debug!(
        check_ms = checked.as_millis() as u64,
        insert_ms = (started.elapsed() - checked).as_millis() as u64,
        inserts = n_groups,
        rows = rows.iter().map(Vec::len).sum::<usize>(),
        "batch attempt"
    );

    let mut outcomes = Vec::with_capacity(parts.len());
    for (((partition, entries), pl), (rows, (_, seqs))) in
        parts.iter().zip(&plans).zip(rows.iter().zip(&seqs))
    {
        let partition = *partition;
        let forks: Vec<ForkRow> = pl
            .forks
            .iter()
            .map(|(i, stored_hash)| {
                let e = &entries[*i];
                ForkRow {
                    chain_partition: partition,
                    seq: e.seq(),
                    stored_hash: stored_hash.clone(),
                    offered_hash: e.hash.clone(),
                    offered_chained_offset: e.offset(),
                    offered_payload_hex: offered_payload_hex(e),
                }
            })
            .collect();
        if !forks.is_empty() {
            let fork_seqs: Vec<i64> = forks.iter().map(|f| f.seq).collect();
            let recorded = store.recorded_forks(partition, &fork_seqs).await?;
            let new: Vec<ForkRow> = forks
                .iter()
                .filter(|f| !recorded.contains(&(f.seq, f.offered_hash.clone())))
                .cloned()
                .collect();
            store.insert_forks(&new).await?;
        }

        // Rows an earlier attempt of this call inserted show up as "duplicates" now: count
        // them as inserted.
        let a = attempted.lock().unwrap_or_else(|e| e.into_inner());
        let first_copies_earlier = {
            // Only the first copy of a seq was inserted; later in-batch copies are duplicates.
            let mut seen = HashSet::new();
            pl.duplicates
                .iter()
                .filter(|&&i| {
                    let s = entries[i].seq();
                    a.contains(&(partition, s))
                        && !rows.iter().any(|r| r.seq == s)
                        && seen.insert(s)
                })
                .count()
        };
        outcomes.push(StoreOutcome {
            inserted: rows.len() + first_copies_earlier,
            duplicates: pl.duplicates.len() - first_copies_earlier,
            forks,
            max_seq: seqs.last().copied(),
        });
    }
    Ok(outcomes)
}

/// Stores `entries` (all of partition `partition`), retrying transient ClickHouse failures
/// under `policy` until `cancel` fires. On success every seq of the batch is stored exactly
/// once (the first copy ever offered), so the caller may store the batch's input offsets.
pub async fn store_batch(
    store: &Store,
    partition: i32,
    entries: &[Entry],
    policy: &RetryPolicy,
    cancel: &CancellationToken,
) -> Result<StoreOutcome, Error> {
    store_batch_reporting(store, partition, entries, policy, cancel, None).await
}

/// [`store_batch`], reporting ClickHouse's health to the worker's readiness as it retries.
pub async fn store_batch_reporting(
    store: &Store,
    partition: i32,
    entries: &[Entry],
    policy: &RetryPolicy,
    cancel: &CancellationToken,
    check: Option<&DependencyCheck>,
) -> Result<StoreOutcome, Error> {
    let mut out =
        store_batches_reporting(store, &[(partition, entries)], policy, cancel, check).await?;
    Ok(out.pop().unwrap_or_default())
}

/// [`store_batch`] for the batches of several partitions (each partition once) at once: one
/// "what is stored" query and, in the common case, one INSERT for all of them. The outcomes
/// are in the order of `parts`. All or nothing for the caller: on success every batch is
/// stored, on error none may be committed (some may be stored; the next attempt skips them).
pub async fn store_batches_reporting(
    store: &Store,
    parts: &[(i32, &[Entry])],
    policy: &RetryPolicy,
    cancel: &CancellationToken,
    check: Option<&DependencyCheck>,
) -> Result<Vec<StoreOutcome>, Error> {
    let attempted = Mutex::new(HashSet::new());
    let out = retry_reporting("clickhouse store batch", policy, cancel, check, || {
        attempt(store, parts, &attempted)
    })
    .await
    .map_err(RetryError::into_inner)?;
    for ((p, _), o) in parts.iter().zip(&out) {
        report(*p, o);
    }
    Ok(out)
}

fn report(partition: i32, out: &StoreOutcome) {
    let p = partition.to_string();
    metrics::counter!("audit_sink_rows_inserted_total", "stage" => "sink-clickhouse", "partition" => p.clone())
        .increment(out.inserted as u64);
    if out.duplicates > 0 {
        tracing::info!(
            partition,
            duplicates = out.duplicates,
            "identical copies already stored: skipped"
        );
        metrics::counter!("audit_sink_duplicates_total", "stage" => "sink-clickhouse", "partition" => p.clone())
            .increment(out.duplicates as u64);
    }
    for f in &out.forks {
        tracing::error!(
            partition,
            seq = f.seq,
            stored_hash = %f.stored_hash,
            offered_hash = %f.offered_hash,
            offered_chained_offset = f.offered_chained_offset,
            "FORK: a different record for an already stored (partition, seq); kept the stored one, recorded in audit_forks"
        );
    }
    if !out.forks.is_empty() {
        metrics::counter!("audit_sink_forks_total", "stage" => "sink-clickhouse", "partition" => p)
            .increment(out.forks.len() as u64);
    }
}
