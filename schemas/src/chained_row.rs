//! The [`AuditRow`] of a chained datum, serialized straight from the datum's bytes.
//!
//! Why: sink-clickhouse turns every chained record into its row's `RowBinary`. Decoding it into
//! a `ChainedEvent`, moving the strings into an `AuditRow` and serializing that made and freed
//! some 45 heap blocks per row: under `perf` about a quarter of the sink's samples were in
//! `malloc` and `free`, and decoding and flattening as much again. The datum's fields come in
//! `chained_event.v1.avsc`'s order, which is the table's column order, so one walk over the
//! bytes hands each column to the serializer as it is read, borrowed from the datum.
//!
//! The contract, property-tested below on valid, re-blocked and mutated datums: for any bytes,
//! [`ChainedRow`] makes exactly the serializer calls that
//! `AuditRow::from_chained_owned(decode_chained(bytes)?, offset)` makes, and fails exactly when
//! that decode fails. A failure carries no detail (it may come from the decoder or the
//! serializer): callers take the decoding path for the error they report.
//!
//! The same walk, writing nothing, tells a datum that is exactly its record's encoding
//! ([`CanonicalDatum`]), which sink-archive appends to a segment as it is instead of decoding
//! and encoding it again.

use std::cell::Cell;

use serde::ser::{Error as _, Serialize, SerializeSeq, SerializeStruct, Serializer};

use crate::canonical_decode::{self as cd, DecodeError, Reader};
use crate::event::EventCategory;
use crate::flat::{self, AuditRow};

/// The row of one chained datum (no framing), for [`Serialize`].
#[derive(Debug)]
pub struct ChainedRow<'a> {
    datum: &'a [u8],
    chained_offset: i64,
    keys: Cell<Option<RowKeys<'a>>>,
}

/// What a sink keeps of a row beside its bytes, read while it was serialized.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RowKeys<'a> {
    pub chain_partition: i32,
    pub seq: i64,
    pub prev_hash: &'a [u8],
    /// The chain hash's bytes.
    pub hash: &'a [u8],
    pub canonical_version: i32,
    pub category: EventCategory,
    pub event_time_us: i64,
    pub event_time: u32,
    pub receive_time_us: i64,
}

impl<'a> ChainedRow<'a> {
    /// `None` when the catalog's chained schema is not the one this reads
    /// ([`cd::chained_applies`]); callers then decode.
    pub fn new(datum: &'a [u8], chained_offset: i64) -> Option<Self> {
        cd::chained_applies().then(|| ChainedRow {
            datum,
            chained_offset,
            keys: Cell::new(None),
        })
    }

    /// The row's keys, once it was serialized without an error.
    pub fn keys(&self) -> Option<RowKeys<'a>> {
        self.keys.get()
    }
}

/// A chained datum that is exactly what an encoder writes for the record it decodes to
/// (`encode(decode(datum)) == datum`), with its keys: it can be stored as it is where a
/// record's encoding is stored (an archive segment's block). Only [`CanonicalDatum::new`]
/// makes one.
#[derive(Debug, Clone, Copy)]
pub struct CanonicalDatum<'a> {
    datum: &'a [u8],
    keys: RowKeys<'a>,
}

impl<'a> CanonicalDatum<'a> {
    /// `None` when the datum does not decode, or decodes but is encoded otherwise (a varint
    /// longer than needed, an array in several blocks): the caller decodes (and re-encodes)
    /// it, as before.
    pub fn new(datum: &'a [u8]) -> Option<Self> {
        canonical_keys(datum).map(|keys| CanonicalDatum { datum, keys })
    }

    pub fn bytes(&self) -> &'a [u8] {
        self.datum
    }

    pub fn keys(&self) -> &RowKeys<'a> {
        &self.keys
    }
}

/// The keys of a datum that is its record's encoding, else `None` (see [`CanonicalDatum`]).
/// Property-tested below against decoding and encoding again.
pub fn canonical_keys(datum: &[u8]) -> Option<RowKeys<'_>> {
    if !cd::chained_applies() {
        return None;
    }
    let mut r = Reader::new(datum);
    let keys = walk(&mut r, &mut Skip, 0).ok()?;
    r.finish().ok()?;
    r.is_minimal().then_some(keys)
}

/// A row nobody writes: [`walk`] for its reads and checks alone.
pub(crate) struct Skip;

impl SerializeStruct for Skip {
    type Ok = ();
    type Error = serde::de::value::Error;

    fn serialize_field<T: ?Sized + Serialize>(
        &mut self,
        _: &'static str,
        _: &T,
    ) -> Result<(), Self::Error> {
        Ok(())
    }

    fn end(self) -> Result<(), Self::Error> {
        Ok(())
    }
}

/// Lowercase hex, as `flat::hex_lower` writes it, without allocating for hashes up to 64 bytes.
struct Hex<'a>(&'a [u8]);

impl Serialize for Hex<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut buf = [0u8; 128];
        if self.0.len() * 2 > buf.len() {
            return s.serialize_str(&flat::hex_lower(self.0));
        }
        for (pair, &b) in buf.chunks_exact_mut(2).zip(self.0) {
            pair.copy_from_slice(&flat::hex_pair(b));
        }
        let hex = std::str::from_utf8(&buf[..self.0.len() * 2]).map_err(S::Error::custom)?;
        s.serialize_str(hex)
    }
}

/// Which strings of an array's items a [`Strings`] hands on: the items themselves, or the key
/// or the value of `{key, value}` records (the attributes, stored as two parallel arrays).
#[derive(Clone, Copy)]
enum Items {
    Strings,
    Keys,
    Values,
}

/// An array of strings in the datum, checked and counted; serialized by walking it again.
struct Strings<'a> {
    start: Reader<'a>,
    field: &'static str,
    items: Items,
    count: usize,
}

impl<'a> Strings<'a> {
    /// Reads past the array at `r` (its blocks and every item, UTF-8 checked), counting its
    /// items. An array in more than one block, or in a block of negative count, is read as
    /// the decoder reads it, and marks the input as not an encoder's own output.
    fn scan(r: &mut Reader<'a>, field: &'static str, records: bool) -> Result<Self, DecodeError> {
        let start = r.clone();
        let mut count = 0usize;
        let mut blocks = 0;
        loop {
            let signed = r.long(field)?;
            if signed < 0 {
                r.long(field)?; // the block's byte size, read and ignored as `block` does
                r.not_minimal();
            }
            let block = signed.unsigned_abs();
            if block == 0 {
                break;
            }
            blocks += 1;
            if blocks > 1 {
                r.not_minimal();
            }
            for _ in 0..block {
                r.str_ref(field)?;
                if records {
                    r.str_ref(field)?;
                }
                // Every item took at least one byte, so this cannot pass the input's length.
                count += 1;
            }
        }
        Ok(Strings {
            start,
            field,
            items: if records { Items::Keys } else { Items::Strings },
            count,
        })
    }

    /// The same array's values (after its keys).
    fn values(&self) -> Self {
        Strings {
            start: self.start.clone(),
            field: self.field,
            items: Items::Values,
            count: self.count,
        }
    }
}

impl Serialize for Strings<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(self.count))?;
        let mut r = self.start.clone();
        let field = self.field;
        loop {
            let block = r.block(field).map_err(S::Error::custom)?;
            if block == 0 {
                break;
            }
            for _ in 0..block {
                let item = match self.items {
                    Items::Strings => r.str_ref(field),
                    Items::Keys => r.str_ref(field).and_then(|k| r.bytes(field).map(|_| k)),
                    Items::Values => r.bytes(field).and_then(|_| r.str_ref(field)),
                }
                .map_err(S::Error::custom)?;
                seq.serialize_element(item)?;
            }
        }
        seq.end()
    }
}

impl Serialize for ChainedRow<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut r = Reader::new(self.datum);
        let mut st = s.serialize_struct("AuditRow", AuditRow::COLUMNS.len())?;
        // Field by field in `chained_event.v1.avsc`'s order, which is `AuditRow`'s; every
        // `serialize_field` below is the one `AuditRow`'s derive makes, with the same value.
        let keys = walk(&mut r, &mut st, self.chained_offset).map_err(|e| match e {
            Walk::Decode(e) => S::Error::custom(e),
            Walk::Ser(e) => e,
        })?;
        r.finish().map_err(S::Error::custom)?;
        let ok = st.end()?;
        self.keys.set(Some(keys));
        Ok(ok)
    }
}

pub(crate) enum Walk<E> {
    Decode(DecodeError),
    Ser(E),
}

impl<E> From<DecodeError> for Walk<E> {
    fn from(e: DecodeError) -> Self {
        Walk::Decode(e)
    }
}

/// `st.serialize_field` with the serializer's error kept apart from the decoder's.
macro_rules! col {
    ($st:ident, $name:literal, $value:expr) => {
        $st.serialize_field($name, &$value).map_err(Walk::Ser)?
    };
}

fn walk<'a, T: SerializeStruct>(
    r: &mut Reader<'a>,
    st: &mut T,
    chained_offset: i64,
) -> Result<RowKeys<'a>, Walk<T::Error>> {
    // ---- the chain ----
    let chain_partition = r.int("chain_partition")?;
    col!(st, "chain_partition", chain_partition);
    let seq = r.long("seq")?;
    col!(st, "seq", seq);
    let prev_hash = r.bytes("prev_hash")?;
    col!(st, "prev_hash", Hex(prev_hash));
    let hash = r.bytes("hash")?;
    col!(st, "hash", Hex(hash));
    let canonical_version = r.int("canonical_version")?;
    col!(st, "canonical_version", canonical_version);
    col!(st, "source_topic", r.str_ref("source_topic")?);
    col!(st, "source_partition", r.int("source_partition")?);
    col!(st, "source_offset", r.long("source_offset")?);
    col!(st, "chained_offset", chained_offset);
    // ---- the event (`audit_event.v1.avsc`) ----
    let head = event_head(r, st)?;
    actor_and_tenant(r, st)?;
    event_middle(r, st)?;
    attributes(r, st)?;
    Ok(RowKeys {
        chain_partition,
        seq,
        prev_hash,
        hash,
        canonical_version,
        category: head.category,
        event_time_us: head.event_time_us,
        event_time: head.event_time,
        receive_time_us: head.receive_time_us,
    })
}

/// The keys [`event_head`] reads.
pub(crate) struct HeadKeys {
    category: EventCategory,
    event_time_us: i64,
    event_time: u32,
    receive_time_us: i64,
}

/// The event's fields before `actor` (`event_id` to `ingress`).
pub(crate) fn event_head<T: SerializeStruct>(
    r: &mut Reader<'_>,
    st: &mut T,
) -> Result<HeadKeys, Walk<T::Error>> {
    col!(st, "event_id", r.str_ref("event_id")?);
    col!(st, "event_type", r.str_ref("event_type")?);
    let category = cd::category(r.enum_index("category", 7)?);
    col!(st, "category", flat::category_symbol(category));
    col!(
        st,
        "severity",
        flat::severity_symbol(cd::severity(r.enum_index("severity", 6)?))
    );
    col!(
        st,
        "outcome",
        flat::outcome_symbol(cd::outcome(r.enum_index("outcome", 5)?))
    );
    let event_time_us = r.long("event_time_us")?;
    col!(st, "event_time_us", event_time_us);
    let event_time = flat::event_time_seconds(event_time_us);
    col!(st, "event_time", event_time);
    let receive_time_us = r.long("receive_time_us")?;
    col!(st, "receive_time_us", receive_time_us);
    col!(st, "source_component", r.str_ref("source_component")?);
    col!(
        st,
        "ingress_channel",
        flat::ingress_channel_symbol(cd::channel(r.enum_index("ingress.channel", 3)?))
    );
    col!(st, "ingress_topic", r.opt_str_ref("ingress.topic")?);
    col!(st, "ingress_partition", r.opt_int("ingress.partition")?);
    col!(st, "ingress_offset", r.opt_long("ingress.offset")?);
    col!(st, "ingress_format", r.str_ref("ingress.format")?);
    Ok(HeadKeys {
        category,
        event_time_us,
        event_time,
        receive_time_us,
    })
}

/// The event's `actor` and `tenant` fields.
fn actor_and_tenant<T: SerializeStruct>(
    r: &mut Reader<'_>,
    st: &mut T,
) -> Result<(), Walk<T::Error>> {
    col!(
        st,
        "actor_type",
        flat::actor_type_symbol(cd::actor_type(r.enum_index("actor.actor_type", 4)?))
    );
    col!(st, "actor_id", r.str_ref("actor.id")?);
    col!(st, "actor_name", r.opt_str_ref("actor.name")?);
    col!(st, "actor_email", r.opt_str_ref("actor.email")?);
    col!(st, "actor_ip", r.opt_str_ref("actor.ip")?);
    col!(st, "actor_user_agent", r.opt_str_ref("actor.user_agent")?);
    col!(st, "actor_session_id", r.opt_str_ref("actor.session_id")?);
    col!(st, "actor_roles", Strings::scan(r, "actor.roles", false)?);
    col!(st, "tenant_id", r.opt_str_ref("tenant.tenant_id")?);
    col!(st, "team_id", r.opt_str_ref("tenant.team_id")?);
    col!(st, "team_name", r.opt_str_ref("tenant.team_name")?);
    col!(st, "project_id", r.opt_str_ref("tenant.project_id")?);
    col!(st, "business_unit", r.opt_str_ref("tenant.business_unit")?);
    col!(st, "cost_center", r.opt_str_ref("tenant.cost_center")?);
    col!(
        st,
        "enriched",
        u8::from(r.boolean("tenant.enrichment.enriched")?)
    );
    col!(
        st,
        "user_found",
        u8::from(r.boolean("tenant.enrichment.user_found")?)
    );
    col!(
        st,
        "team_found",
        u8::from(r.boolean("tenant.enrichment.team_found")?)
    );
    Ok(())
}

/// The event's fields from `target` to `performance`: all but the head, the actor and tenant,
/// and the attributes.
pub(crate) fn event_middle<T: SerializeStruct>(
    r: &mut Reader<'_>,
    st: &mut T,
) -> Result<(), Walk<T::Error>> {
    if r.branch("target")? {
        col!(st, "target_type", Some(r.str_ref("target.target_type")?));
        col!(st, "target_id", Some(r.str_ref("target.id")?));
        col!(st, "target_name", r.opt_str_ref("target.name")?);
    } else {
        col!(st, "target_type", None::<&str>);
        col!(st, "target_id", None::<&str>);
        col!(st, "target_name", None::<&str>);
    }
    col!(st, "action_verb", r.str_ref("action.verb")?);
    col!(
        st,
        "action_description",
        r.opt_str_ref("action.description")?
    );
    col!(st, "action_status", r.opt_str_ref("action.status")?);
    col!(st, "action_error", r.opt_str_ref("action.error")?);
    col!(st, "trace_id", r.opt_str_ref("trace.trace_id")?);
    col!(st, "span_id", r.opt_str_ref("trace.span_id")?);
    col!(st, "parent_span_id", r.opt_str_ref("trace.parent_span_id")?);
    col!(st, "request_id", r.opt_str_ref("request_id")?);
    col!(st, "parent_event_id", r.opt_str_ref("parent_event_id")?);
    col!(st, "reason", r.opt_str_ref("reason")?);
    col!(st, "payload_json", r.opt_str_ref("data.payload_json")?);
    col!(st, "result_json", r.opt_str_ref("data.result_json")?);
    col!(st, "metadata_json", r.opt_str_ref("data.metadata_json")?);
    col!(st, "before_json", r.opt_str_ref("data.before_json")?);
    col!(st, "after_json", r.opt_str_ref("data.after_json")?);
    col!(st, "changes", Strings::scan(r, "data.changes", false)?);
    // An absent sub-record is its `has_*` flag at 0 and its columns null or empty, as
    // `from_chained_owned` writes its `Default`.
    let ai = r.branch("ai")?;
    col!(st, "has_ai", u8::from(ai));
    if ai {
        col!(st, "ai_agent_type", r.opt_str_ref("ai.agent_type")?);
        col!(st, "ai_model", r.opt_str_ref("ai.model")?);
        col!(st, "ai_prompt_tokens", r.opt_long("ai.prompt_tokens")?);
        col!(
            st,
            "ai_completion_tokens",
            r.opt_long("ai.completion_tokens")?
        );
        col!(st, "ai_confidence", r.opt_double("ai.confidence")?);
        col!(st, "ai_reasoning", r.opt_str_ref("ai.reasoning")?);
        col!(st, "ai_tools", Strings::scan(r, "ai.tools", false)?);
        col!(
            st,
            "ai_execution_time_ms",
            r.opt_long("ai.execution_time_ms")?
        );
    } else {
        col!(st, "ai_agent_type", None::<&str>);
        col!(st, "ai_model", None::<&str>);
        col!(st, "ai_prompt_tokens", None::<i64>);
        col!(st, "ai_completion_tokens", None::<i64>);
        col!(st, "ai_confidence", None::<f64>);
        col!(st, "ai_reasoning", None::<&str>);
        col!(st, "ai_tools", NO_STRINGS);
        col!(st, "ai_execution_time_ms", None::<i64>);
    }
    let compliance = r.branch("compliance")?;
    col!(st, "has_compliance", u8::from(compliance));
    if compliance {
        col!(
            st,
            "compliance_regulations",
            Strings::scan(r, "compliance.regulations", false)?
        );
        col!(
            st,
            "compliance_traffic_light",
            r.opt_str_ref("compliance.traffic_light")?
        );
        col!(
            st,
            "compliance_issues_found",
            r.opt_int("compliance.issues_found")?
        );
        col!(
            st,
            "compliance_critical_issues",
            r.opt_int("compliance.critical_issues")?
        );
        col!(
            st,
            "compliance_findings_json",
            r.opt_str_ref("compliance.findings_json")?
        );
    } else {
        col!(st, "compliance_regulations", NO_STRINGS);
        col!(st, "compliance_traffic_light", None::<&str>);
        col!(st, "compliance_issues_found", None::<i32>);
        col!(st, "compliance_critical_issues", None::<i32>);
        col!(st, "compliance_findings_json", None::<&str>);
    }
    let security = r.branch("security")?;
    col!(st, "has_security", u8::from(security));
    if security {
        col!(
            st,
            "security_data_classification",
            r.opt_str_ref("security.data_classification")?
        );
        col!(
            st,
            "security_encryption_used",
            r.opt_bool("security.encryption_used")?.map(u8::from)
        );
        col!(
            st,
            "security_pii_detected",
            r.opt_bool("security.pii_detected")?.map(u8::from)
        );
        col!(
            st,
            "security_retention_days",
            r.opt_int("security.retention_days")?
        );
    } else {
        col!(st, "security_data_classification", None::<&str>);
        col!(st, "security_encryption_used", None::<u8>);
        col!(st, "security_pii_detected", None::<u8>);
        col!(st, "security_retention_days", None::<i32>);
    }
    let performance = r.branch("performance")?;
    col!(st, "has_performance", u8::from(performance));
    if performance {
        col!(
            st,
            "perf_processing_time_ms",
            r.opt_long("performance.processing_time_ms")?
        );
        col!(
            st,
            "perf_response_time_ms",
            r.opt_long("performance.response_time_ms")?
        );
        col!(
            st,
            "perf_db_query_time_ms",
            r.opt_long("performance.db_query_time_ms")?
        );
        col!(
            st,
            "perf_external_api_time_ms",
            r.opt_long("performance.external_api_time_ms")?
        );
        col!(
            st,
            "perf_memory_used_mb",
            r.opt_long("performance.memory_used_mb")?
        );
        col!(
            st,
            "perf_resource_count",
            r.opt_long("performance.resource_count")?
        );
    } else {
        for name in [
            "perf_processing_time_ms",
            "perf_response_time_ms",
            "perf_db_query_time_ms",
            "perf_external_api_time_ms",
            "perf_memory_used_mb",
            "perf_resource_count",
        ] {
            st.serialize_field(name, &None::<i64>).map_err(Walk::Ser)?;
        }
    }
    Ok(())
}

/// The event's `attributes` (its last field), as two columns.
fn attributes<T: SerializeStruct>(r: &mut Reader<'_>, st: &mut T) -> Result<(), Walk<T::Error>> {
    let attributes = Strings::scan(r, "attributes", true)?;
    col!(st, "attribute_keys", attributes);
    col!(st, "attribute_values", attributes.values());
    Ok(())
}

/// An empty `Vec<String>` column, as an absent sub-record's `Default` serializes it.
const NO_STRINGS: &[&str] = &[];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::avro::{encode_chained_datum, RecordKind};
    use crate::canonical_decode::decode_chained;
    use crate::canonical_decode::tests::{mutate, mutation, reblock};
    use crate::testing::arb_chained_event;
    use proptest::collection::vec;
    use proptest::prelude::*;
    use serde_json::Value;

    /// A row as JSON, and its keys (partition, seq, hash, event time µs and s, receive time).
    type Made = (Value, (i32, i64, Vec<u8>, i64, u32, i64));

    /// The row the decoding path makes.
    fn decoded(bytes: &[u8], offset: i64) -> Option<Made> {
        let c = decode_chained(bytes).ok()?;
        let keys = (
            c.chain_partition,
            c.seq,
            c.hash.clone(),
            c.event.event_time_us,
            flat::event_time_seconds(c.event.event_time_us),
            c.event.receive_time_us,
        );
        let row = AuditRow::from_chained_owned(c, offset);
        Some((serde_json::to_value(row).expect("a row is JSON"), keys))
    }

    /// The same from the bytes directly.
    fn direct(bytes: &[u8], offset: i64) -> Option<Made> {
        let row = ChainedRow::new(bytes, offset).expect("the catalog's chained schema is read");
        let json = serde_json::to_value(&row).ok();
        let keys = row.keys();
        // Keys are set exactly when the row was serialized whole.
        assert_eq!(json.is_some(), keys.is_some());
        let k = keys?;
        Some((
            json?,
            (
                k.chain_partition,
                k.seq,
                k.hash.to_vec(),
                k.event_time_us,
                k.event_time,
                k.receive_time_us,
            ),
        ))
    }

    fn same(bytes: &[u8], offset: i64) -> std::result::Result<(), TestCaseError> {
        let want = decoded(bytes, offset);
        let got = direct(bytes, offset);
        prop_assert_eq!(got, want);
        Ok(())
    }

    proptest! {
        // Boxed strategies: the unboxed value trees overflow a test thread's stack in debug.
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Any chained event: the same row, column by column, and the same keys.
        #[test]
        fn rows_from_bytes_are_the_decoded_rows(c in arb_chained_event().boxed(), offset in any::<i64>()) {
            let bytes = encode_chained_datum(&c).expect("encodes");
            prop_assert!(decoded(&bytes, offset).is_some());
            same(&bytes, offset)?;
        }

        /// Arrays in any blocks (negative counts with byte sizes included), as the Avro spec
        /// allows a writer to split them.
        #[test]
        fn reblocked_arrays_give_the_same_rows(c in arb_chained_event().boxed(), seed in any::<u64>()) {
            let bytes = reblock(RecordKind::ChainedEvent, &encode_chained_datum(&c).expect("encodes"), seed);
            prop_assert!(decoded(&bytes, 7).is_some());
            same(&bytes, 7)?;
        }

        /// Corrupted bytes: a row exactly when the decoder reads the bytes, and then the same.
        #[test]
        fn corrupted_bytes_fail_exactly_when_decoding_fails(
            c in arb_chained_event().boxed(),
            ms in vec(mutation(), 1..4),
        ) {
            let bytes = mutate(encode_chained_datum(&c).expect("encodes"), &ms);
            same(&bytes, 1)?;
        }
    }

    /// `canonical_keys` says yes exactly when the bytes are the encoding of what they decode to.
    fn canonical_iff_re_encoding_gives_the_bytes(
        bytes: &[u8],
    ) -> std::result::Result<(), TestCaseError> {
        let decoded = decode_chained(bytes).ok();
        let canonical = decoded
            .as_ref()
            .is_some_and(|c| encode_chained_datum(c).expect("encodes") == bytes);
        let keys = canonical_keys(bytes);
        prop_assert_eq!(keys.is_some(), canonical, "canonical_keys {:?}", keys);
        if let (Some(k), Some(c)) = (keys, decoded) {
            prop_assert_eq!(
                (
                    k.chain_partition,
                    k.seq,
                    k.prev_hash,
                    k.hash,
                    k.canonical_version
                ),
                (
                    c.chain_partition,
                    c.seq,
                    &c.prev_hash[..],
                    &c.hash[..],
                    c.canonical_version
                )
            );
            prop_assert_eq!(
                (k.category, k.event_time_us, k.receive_time_us),
                (
                    c.event.category,
                    c.event.event_time_us,
                    c.event.receive_time_us
                )
            );
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn an_encoders_output_is_canonical(c in arb_chained_event().boxed()) {
            let bytes = encode_chained_datum(&c).expect("encodes");
            prop_assert!(canonical_keys(&bytes).is_some());
            canonical_iff_re_encoding_gives_the_bytes(&bytes)?;
        }

        /// Re-blocked arrays decode to the same record but are not its encoding (unless every
        /// array was left in one block).
        #[test]
        fn reblocked_datums_are_canonical_only_when_unchanged(
            c in arb_chained_event().boxed(),
            seed in any::<u64>(),
        ) {
            let bytes = reblock(RecordKind::ChainedEvent, &encode_chained_datum(&c).expect("encodes"), seed);
            canonical_iff_re_encoding_gives_the_bytes(&bytes)?;
        }

        /// Corrupted bytes, over-long varints included (the mutations splice hostile ones).
        #[test]
        fn corrupted_datums_are_canonical_only_when_re_encoding_gives_them(
            c in arb_chained_event().boxed(),
            ms in vec(mutation(), 1..4),
        ) {
            canonical_iff_re_encoding_gives_the_bytes(&mutate(encode_chained_datum(&c).expect("encodes"), &ms))?;
        }
    }

    /// The shortest varint of each value is canonical; the same value padded is not, nor a
    /// 10th byte with bits that are shifted out.
    #[test]
    fn over_long_varints_are_not_canonical() {
        let c = chained_with_hashes(vec![1; 32], vec![2; 32]);
        let bytes = encode_chained_datum(&c).expect("encodes");
        assert!(canonical_keys(&bytes).is_some());
        // chain_partition 2 is zig-zag 4: one byte, first in the datum.
        assert_eq!(bytes[0], 4);
        let padded = [&[0x84, 0x00][..], &bytes[1..]].concat();
        assert_eq!(decode_chained(&padded).expect("still decodes"), c);
        assert!(canonical_keys(&padded).is_none());
        let ten = [
            &[0x84, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x00][..],
            &bytes[1..],
        ]
        .concat();
        assert!(canonical_keys(&ten).is_none());
        // seq -1 (zig-zag 1) padded to ten bytes whose last has a shifted-out bit.
        let mut neg = c.clone();
        neg.seq = i64::MIN;
        let b = encode_chained_datum(&neg).expect("encodes");
        assert!(
            canonical_keys(&b).is_some(),
            "i64::MIN's ten bytes end in 1"
        );
        let at = b
            .iter()
            .position(|&x| x == 0x01)
            .expect("the 10th byte of seq");
        let mut shifted = b.clone();
        shifted[at] = 0x03;
        assert_eq!(decode_chained(&shifted).expect("decodes").seq, i64::MIN);
        assert!(canonical_keys(&shifted).is_none());
    }

    fn chained_with_hashes(prev_hash: Vec<u8>, hash: Vec<u8>) -> crate::event::ChainedEvent {
        crate::event::ChainedEvent {
            chain_partition: 2,
            seq: 9,
            prev_hash,
            hash,
            canonical_version: 1,
            source_topic: "audit.enriched".to_owned(),
            source_partition: 2,
            source_offset: 41,
            event: crate::testing::sample_event(),
        }
    }

    #[test]
    fn long_hashes_are_written_in_full() {
        // Hashes are 32 bytes; a row still writes whatever length a record holds.
        let c = chained_with_hashes((0..=255u8).collect(), vec![0xab; 65]);
        let bytes = encode_chained_datum(&c).expect("encodes");
        let (row, _) = direct(&bytes, 3).expect("a row");
        assert_eq!(row["prev_hash"], Value::from(flat::hex_lower(&c.prev_hash)));
        assert_eq!(row["hash"], Value::from("ab".repeat(65)));
        assert_eq!(Some(row), decoded(&bytes, 3).map(|(v, _)| v));
    }
}
