//! One store read record by record, for the commands that work on a single source
//! (`prove`, `consistency`, `checkpoints`): the event lookup, the checkpoints and seq ranges,
//! the same way from ClickHouse or from the archive.

use std::collections::BTreeSet;

use schemas::{ChainedEvent, Checkpoint};

use crate::archive::ArchiveStore;
use crate::cli::{ArchiveStoreArgs, ClickHouseArgs, ReadArgs, SingleSource};
use crate::clickhouse::ClickHouseStore;
use crate::error::Error;
use crate::reads::Reads;

pub(crate) enum Source {
    ClickHouse(Box<ClickHouseStore>),
    Archive(ArchiveStore),
}

impl Source {
    pub(crate) fn open(
        kind: SingleSource,
        reads: &ReadArgs,
        ch: &ClickHouseArgs,
        archive: &ArchiveStoreArgs,
    ) -> Result<Self, Error> {
        let r = Reads::new(reads.retry_attempts);
        Ok(match kind {
            SingleSource::Clickhouse => Source::ClickHouse(Box::new(ClickHouseStore::new(ch, r)?)),
            SingleSource::Archive => Source::Archive(ArchiveStore::open(archive, r)?),
        })
    }

    pub(crate) fn name(&self) -> String {
        match self {
            Source::ClickHouse(s) => format!("clickhouse ({})", s.describe()),
            Source::Archive(s) => format!("archive ({})", s.describe()),
        }
    }

    /// Where the event `id` is stored: (partition, seq), possibly several.
    pub(crate) async fn locate(
        &self,
        id: &str,
        partition: Option<u32>,
    ) -> Result<Vec<(i32, i64)>, Error> {
        match self {
            Source::ClickHouse(s) => s.locate(id, partition).await,
            Source::Archive(s) => s.locate(id, partition).await,
        }
    }

    /// The stored checkpoints of `partitions` (all if empty). Unreadable ones are not
    /// candidates here (`verify` reports them).
    pub(crate) async fn checkpoints(&self, partitions: &[u32]) -> Result<Vec<Checkpoint>, Error> {
        match self {
            Source::ClickHouse(s) => Ok(s.checkpoints(partitions).await?.0),
            Source::Archive(s) => {
                let set: BTreeSet<u32> = partitions.iter().copied().collect();
                Ok(s.checkpoints(&set).await?.0)
            }
        }
    }

    /// The stored records of `partition` with seq in `first ..= last`, in seq order.
    pub(crate) async fn range(
        &self,
        partition: u32,
        first: i64,
        last: i64,
    ) -> Result<Vec<ChainedEvent>, Error> {
        match self {
            Source::ClickHouse(s) => s
                .range(partition, first, last)
                .await?
                .iter()
                .map(|row| {
                    row.to_chained().map_err(|e| {
                        Error::Integrity(format!(
                            "partition {partition} seq {}: row cannot be read back into an event: {e}",
                            row.seq
                        ))
                    })
                })
                .collect(),
            Source::Archive(s) => s.range(partition, first, last).await,
        }
    }
}
