//! What a running chainer reports about itself (for tests and diagnostics; the same facts go
//! to `/readyz` and `/metrics`).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// One held partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionView {
    pub epoch: u64,
    pub recovering: bool,
    /// Next source offset the chain expects (`None` while recovering).
    pub next_offset: Option<i64>,
}

#[derive(Debug, Default)]
struct Inner {
    ready: AtomicBool,
    consumer_restarts: AtomicU64,
    rerecoveries: AtomicU64,
    holds: AtomicU64,
    pauses: AtomicU64,
    partitions: Mutex<BTreeMap<i32, PartitionView>>,
    reason: Mutex<String>,
}

/// Shared, cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct WorkerStatus(Arc<Inner>);

impl WorkerStatus {
    pub fn ready(&self) -> bool {
        self.0.ready.load(Ordering::Acquire)
    }
    /// Why the worker is not ready (empty when ready).
    pub fn reason(&self) -> String {
        lock(&self.0.reason).clone()
    }
    /// Times the consumer was recreated because the worker was stuck.
    pub fn consumer_restarts(&self) -> u64 {
        self.0.consumer_restarts.load(Ordering::Acquire)
    }
    /// Times a partition stopped on a delivery failure and was recovered again from the
    /// chained tail (all partitions together).
    pub fn rerecoveries(&self) -> u64 {
        self.0.rerecoveries.load(Ordering::Acquire)
    }
    /// Times a partition task's full queue held the router, which then stopped receiving.
    pub fn holds(&self) -> u64 {
        self.0.holds.load(Ordering::Acquire)
    }
    /// Times a partition was paused in the consumer: its queue had been full for a second.
    pub fn pauses(&self) -> u64 {
        self.0.pauses.load(Ordering::Acquire)
    }
    /// Held partitions.
    pub fn partitions(&self) -> BTreeMap<i32, PartitionView> {
        lock(&self.0.partitions).clone()
    }
    pub fn recovering(&self, p: i32) -> bool {
        self.partitions().get(&p).is_some_and(|v| v.recovering)
    }

    pub(crate) fn set_ready(&self, ready: bool, reason: &str) {
        self.0.ready.store(ready, Ordering::Release);
        *lock(&self.0.reason) = reason.to_owned();
    }
    pub(crate) fn set_partitions(&self, partitions: BTreeMap<i32, PartitionView>) {
        *lock(&self.0.partitions) = partitions;
    }
    pub(crate) fn rerecovered(&self) {
        self.0.rerecoveries.fetch_add(1, Ordering::AcqRel);
    }
    pub(crate) fn held(&self) {
        self.0.holds.fetch_add(1, Ordering::AcqRel);
    }
    pub(crate) fn paused(&self) {
        self.0.pauses.fetch_add(1, Ordering::AcqRel);
    }
    pub(crate) fn restarted(&self) {
        self.0.consumer_restarts.fetch_add(1, Ordering::AcqRel);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Poisoning only means a panic elsewhere mid-update of plain data.
    m.lock().unwrap_or_else(|e| e.into_inner())
}
