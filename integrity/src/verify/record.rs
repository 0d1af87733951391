//! The records the verifier is fed: borrowed from the store's buffers on the normal path, owned
//! where they must outlive them (reorder buffer, rebuilt events).

/// One stored record, borrowed from whatever the store handed back.
#[derive(Debug, Clone, Copy)]
pub struct StoredRecord<'a> {
    pub seq: i64,
    pub prev_hash: &'a [u8],
    pub hash: &'a [u8],
    /// Canonical bytes recomputed from the stored event fields (never a stored copy of them,
    /// unless the store keeps the Avro bytes themselves).
    pub canonical: &'a [u8],
    /// The canonical schema version `canonical` was encoded with (bound into `audit-chain/v2`
    /// links through its schema's fingerprint).
    pub canonical_version: i32,
    pub event_id: &'a str,
    /// Which copy this is when the store keeps duplicates (e.g. ClickHouse before merges).
    pub copy: Option<u32>,
}

/// An owned [`StoredRecord`] (reorder buffer, tests, callers that rebuild records).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnedRecord {
    pub seq: i64,
    pub prev_hash: Vec<u8>,
    pub hash: Vec<u8>,
    pub canonical: Vec<u8>,
    pub canonical_version: i32,
    pub event_id: String,
    pub copy: Option<u32>,
}

impl OwnedRecord {
    pub fn as_stored(&self) -> StoredRecord<'_> {
        StoredRecord {
            seq: self.seq,
            prev_hash: &self.prev_hash,
            hash: &self.hash,
            canonical: &self.canonical,
            canonical_version: self.canonical_version,
            event_id: &self.event_id,
            copy: self.copy,
        }
    }

    pub fn from_stored(r: &StoredRecord<'_>) -> Self {
        Self {
            seq: r.seq,
            prev_hash: r.prev_hash.to_vec(),
            hash: r.hash.to_vec(),
            canonical: r.canonical.to_vec(),
            canonical_version: r.canonical_version,
            event_id: r.event_id.to_owned(),
            copy: r.copy,
        }
    }

    /// Rebuild from a `ChainedEvent` as a store returns it, re-encoding the event under the
    /// canonical version the chainer recorded.
    pub fn from_chained(ev: &schemas::event::ChainedEvent) -> Result<Self, schemas::SchemaError> {
        let mut canonical = Vec::with_capacity(512);
        schemas::avro::canonical_bytes_version_into(
            &ev.event,
            ev.canonical_version,
            &mut canonical,
        )?;
        Ok(Self {
            seq: ev.seq,
            prev_hash: ev.prev_hash.clone(),
            hash: ev.hash.clone(),
            canonical,
            canonical_version: ev.canonical_version,
            event_id: ev.event.event_id.clone(),
            copy: None,
        })
    }
}
