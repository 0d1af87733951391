//! Storing one partition's batch exactly once per `(partition, seq)`.
//!
//! Every attempt (the first one and each retry) first asks ClickHouse which of the batch's
//! seqs are already stored, then inserts only the missing ones ([`crate::batch::plan`]). A
//! failed insert may have landed fully, partly or not at all; re-asking before the retry makes
//! that irrelevant. The missing rows go in as one INSERT per run of same-month rows, in seq
//! order ([`crate::batch::month_runs`]), so each INSERT touches one table partition. Forks are recorded in `audit_forks` (once per offered hash), never written
//! over the stored row.

use std::collections::HashSet;
use std::sync::Mutex;

use worker_runtime::retry::{retry_reporting, DependencyCheck, RetryError, RetryPolicy};
use worker_runtime::CancellationToken;

use crate::batch::{month_runs, plan, Entry};
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

async fn attempt(
    store: &Store,
    partition: i32,
    entries: &[Entry],
    attempted: &Mutex<HashSet<i64>>,
) -> Result<StoreOutcome, Error> {
    let seqs: Vec<i64> = {
        let mut s: Vec<i64> = entries.iter().map(Entry::seq).collect();
        s.sort_unstable();
        s.dedup();
        s
    };
    let stored = store.stored_hashes(partition, &seqs).await?;
    let p = plan(entries, &stored);
    let mut rows: Vec<_> = p.insert.iter().map(|&i| &entries[i].row).collect();
    // In seq order, one INSERT per run of same-month rows (see `month_runs`): each INSERT is
    // atomic and a failure part-way leaves a contiguous prefix stored.
    rows.sort_by_key(|r| r.seq);
    {
        let mut a = attempted.lock().unwrap_or_else(|e| e.into_inner());
        a.extend(rows.iter().map(|r| r.seq));
    }
    for run in month_runs(&rows) {
        store.insert_events(run).await?;
    }

    let forks: Vec<ForkRow> = p
        .forks
        .iter()
        .map(|(i, stored_hash)| {
            let e = &entries[*i];
            ForkRow {
                chain_partition: partition,
                seq: e.seq(),
                stored_hash: stored_hash.clone(),
                offered_hash: e.row.hash.clone(),
                offered_chained_offset: e.offset(),
                offered_payload_hex: hex::encode(&e.payload),
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

    // Rows an earlier attempt of this call inserted show up as "duplicates" now: count them as
    // inserted.
    let a = attempted.lock().unwrap_or_else(|e| e.into_inner());
    let first_copies_earlier = {
        // Only the first copy of a seq was inserted; later in-batch copies are duplicates.
        let mut seen = HashSet::new();
        p.duplicates
            .iter()
            .filter(|&&i| {
                let s = entries[i].seq();
                a.contains(&s) && !rows.iter().any(|r| r.seq == s) && seen.insert(s)
            })
            .count()
    };
    Ok(StoreOutcome {
        inserted: rows.len() + first_copies_earlier,
        duplicates: p.duplicates.len() - first_copies_earlier,
        forks,
        max_seq: seqs.last().copied(),
    })
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
    let attempted = Mutex::new(HashSet::new());
    let out = retry_reporting("clickhouse store batch", policy, cancel, check, || {
        attempt(store, partition, entries, &attempted)
    })
    .await
    .map_err(RetryError::into_inner)?;
    report(partition, &out);
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
