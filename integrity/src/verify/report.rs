//! What verification returns: one report per partition, and their roll-up.

use serde::Serialize;

use super::finding::Finding;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PartitionReport {
    pub partition: i32,
    /// Lowest and highest stored seq seen.
    pub first_seq: Option<i64>,
    pub last_seq: Option<i64>,
    /// Records read (including duplicates).
    pub events: u64,
    /// Seq of the verified head and its hash (hex): what the next record must link to.
    pub head_seq: i64,
    pub head: String,
    /// Highest seq at which a valid checkpoint matched the recomputed chain.
    pub sealed_through: Option<i64>,
    pub findings: Vec<Finding>,
    pub findings_dropped: u64,
    pub ok: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Report {
    pub partitions: Vec<PartitionReport>,
    pub ok: bool,
}

impl Report {
    pub fn new(partitions: Vec<PartitionReport>) -> Self {
        let ok = partitions.iter().all(|p| p.ok);
        Self { partitions, ok }
    }
}
