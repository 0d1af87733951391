//! Reading an archive segment's records **as stored bytes**: what the verifier needs, without
//! decoding each event into Rust values and encoding it again.
//!
//! A `ChainedEvent` datum is its chain fields followed by the `event` field, the last one. Avro
//! binary encoding is the concatenation of the fields, so the bytes of the `event` field are
//! the event's Avro datum under the `AuditEvent` schema embedded in the segment's writer schema:
//! when that is the canonical schema of the record's `canonical_version` (the current
//! `chained_event` schema embeds `audit_event.v1`), those bytes *are* the canonical bytes the
//! chainer hashed. Where they are not (an older writer schema, another canonical version), the
//! record is decoded and re-encoded as before ([`RawChained::from_chained`]).
//!
//! Safety of the shortcut: the bytes are only hashed. If they are exactly what the chainer
//! hashed, any decoder reads them as the chainer's event; if a single byte differs, the link
//! hash fails. So this path can report a record malformed that `apache-avro` would read (it is
//! strict: no over-long varints, no negative lengths, no trailing bytes), never the reverse.
//!
//! The container (Avro object container file, spec 1.11 "Object Container Files") is read
//! block by block from any reader: memory is one block (the writer's blocks are 256 KiB; a
//! block claiming more than [`MAX_BLOCK`] is refused) plus one record.

use std::io::Read;

use apache_avro::schema::{InnerDecimalSchema, Name, NamesRef, ResolvedSchema, UuidSchema};
use apache_avro::Schema;

use crate::avro::{self, RecordKind, CANONICAL_VERSION};
use crate::event::ChainedEvent;
use crate::segment::{SegmentError, SegmentMeta};

/// Largest block (compressed or not) read into memory.
pub const MAX_BLOCK: usize = 64 * 1024 * 1024;

/// One stored record: the chain fields as stored, the event's id and receive time (read from
/// the front of its datum), and the event's Avro bytes (canonical bytes when
/// `canonical_version` is the one the segment's schema embeds).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawChained {
    pub chain_partition: i32,
    pub seq: i64,
    pub prev_hash: Vec<u8>,
    pub hash: Vec<u8>,
    pub canonical_version: i32,
    pub source_topic: String,
    pub source_partition: i32,
    pub source_offset: i64,
    pub event_id: String,
    pub receive_time_us: i64,
    /// The event's canonical bytes.
    pub canonical: Vec<u8>,
}

impl RawChained {
    /// A decoded record, re-encoded (the slow path: old writer schemas, other canonical
    /// versions).
    pub fn from_chained(e: &ChainedEvent) -> Result<Self, crate::SchemaError> {
        let mut canonical = Vec::with_capacity(512);
        avro::canonical_bytes_version_into(&e.event, e.canonical_version, &mut canonical)?;
        Ok(Self {
            chain_partition: e.chain_partition,
            seq: e.seq,
            prev_hash: e.prev_hash.clone(),
            hash: e.hash.clone(),
            canonical_version: e.canonical_version,
            source_topic: e.source_topic.clone(),
            source_partition: e.source_partition,
            source_offset: e.source_offset,
            event_id: e.event.event_id.clone(),
            receive_time_us: e.event.receive_time_us,
            canonical,
        })
    }
}

/// How to step over one value of a schema without building it.
#[derive(Debug, Clone)]
enum Skip {
    Nothing,
    Varint,
    Fixed(usize),
    Bytes,
    Union(Vec<Skip>),
    Array(Box<Skip>),
    /// Map values (keys are strings).
    Map(Box<Skip>),
    Record(Vec<Skip>),
}

/// Compiles `schema` into a [`Skip`]; `None` for what it cannot step over (a recursive type).
fn compile<'s>(
    schema: &'s Schema,
    names: &NamesRef<'s>,
    enclosing: Option<&'s str>,
    stack: &mut Vec<Name>,
) -> Option<Skip> {
    Some(match schema {
        Schema::Null => Skip::Nothing,
        Schema::Boolean => Skip::Fixed(1),
        Schema::Int
        | Schema::Long
        | Schema::Enum(_)
        | Schema::Date
        | Schema::TimeMillis
        | Schema::TimeMicros
        | Schema::TimestampMillis
        | Schema::TimestampMicros
        | Schema::TimestampNanos
        | Schema::LocalTimestampMillis
        | Schema::LocalTimestampMicros
        | Schema::LocalTimestampNanos => Skip::Varint,
        Schema::Float => Skip::Fixed(4),
        Schema::Double => Skip::Fixed(8),
        Schema::Bytes | Schema::String | Schema::BigDecimal => Skip::Bytes,
        Schema::Uuid(UuidSchema::Bytes | UuidSchema::String) => Skip::Bytes,
        Schema::Uuid(UuidSchema::Fixed(f)) | Schema::Fixed(f) | Schema::Duration(f) => {
            Skip::Fixed(f.size)
        }
        Schema::Decimal(d) => match &d.inner {
            InnerDecimalSchema::Bytes => Skip::Bytes,
            InnerDecimalSchema::Fixed(f) => Skip::Fixed(f.size),
        },
        Schema::Array(a) => Skip::Array(Box::new(compile(&a.items, names, enclosing, stack)?)),
        Schema::Map(m) => Skip::Map(Box::new(compile(&m.types, names, enclosing, stack)?)),
        Schema::Union(u) => Skip::Union(
            u.variants()
                .iter()
                .map(|v| compile(v, names, enclosing, stack))
                .collect::<Option<_>>()?,
        ),
        Schema::Record(r) => {
            if stack.contains(&r.name) {
                return None;
            }
            stack.push(r.name.clone());
            let ns = r.name.namespace();
            let fields = r
                .fields
                .iter()
                .map(|f| compile(&f.schema, names, ns, stack))
                .collect::<Option<_>>();
            stack.pop();
            Skip::Record(fields?)
        }
        Schema::Ref { name } => {
            let full = name.fully_qualified_name(enclosing);
            if stack.contains(&full) {
                return None;
            }
            let target = names.get(full.as_ref())?;
            compile(target, names, enclosing, stack)?
        }
    })
}

/// A cursor over one decompressed block.
struct Cur<'a> {
    buf: &'a [u8],
    pos: usize,
}

fn bad(what: impl Into<String>) -> SegmentError {
    SegmentError::Invalid(what.into())
}

impl<'a> Cur<'a> {
    /// A zig-zag varint (Avro int/long), at most 10 bytes, no over-long form.
    fn long(&mut self) -> Result<i64, SegmentError> {
        let mut v: u64 = 0;
        for i in 0..10 {
            let b = *self
                .buf
                .get(self.pos)
                .ok_or_else(|| bad("record truncated in a number"))?;
            self.pos += 1;
            if i == 9 && b > 1 {
                return Err(bad("number longer than 64 bits"));
            }
            v |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                if i > 0 && b == 0 {
                    return Err(bad("number in an over-long form"));
                }
                return Ok(((v >> 1) as i64) ^ -((v & 1) as i64));
            }
        }
        Err(bad("number longer than 10 bytes"))
    }

    fn int(&mut self) -> Result<i32, SegmentError> {
        i32::try_from(self.long()?).map_err(|_| bad("int out of range"))
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], SegmentError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or_else(|| bad("record truncated"))?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn len(&mut self) -> Result<usize, SegmentError> {
        usize::try_from(self.long()?).map_err(|_| bad("negative length"))
    }

    fn bytes(&mut self) -> Result<&'a [u8], SegmentError> {
        let n = self.len()?;
        self.take(n)
    }

    fn string(&mut self) -> Result<String, SegmentError> {
        String::from_utf8(self.bytes()?.to_vec()).map_err(|_| bad("string is not UTF-8"))
    }

    fn skip(&mut self, s: &Skip) -> Result<(), SegmentError> {
        match s {
            Skip::Nothing => Ok(()),
            Skip::Varint => self.long().map(drop),
            Skip::Fixed(n) => self.take(*n).map(drop),
            Skip::Bytes => self.bytes().map(drop),
            Skip::Union(branches) => {
                let i = usize::try_from(self.long()?).map_err(|_| bad("negative union index"))?;
                self.skip(
                    branches
                        .get(i)
                        .ok_or_else(|| bad("union index out of range"))?,
                )
            }
            Skip::Record(fields) => fields.iter().try_for_each(|f| self.skip(f)),
            Skip::Array(items) => self.blocks(|c| c.skip(items)),
            Skip::Map(values) => self.blocks(|c| {
                c.bytes()?;
                c.skip(values)
            }),
        }
    }

    /// Array/map blocks: a count, then items; a negative count is followed by the block's byte
    /// size (which is checked, not trusted); a zero count ends.
    fn blocks(
        &mut self,
        mut item: impl FnMut(&mut Self) -> Result<(), SegmentError>,
    ) -> Result<(), SegmentError> {
        loop {
            let n = self.long()?;
            if n == 0 {
                return Ok(());
            }
            let size = if n < 0 { Some(self.len()?) } else { None };
            let start = self.pos;
            for _ in 0..n.unsigned_abs() {
                item(self)?;
            }
            if size.is_some_and(|s| start + s != self.pos) {
                return Err(bad("array/map block size does not match its items"));
            }
        }
    }
}

/// The segment's writer schema, checked to be the current `ChainedEvent` schema with its
/// fields in the order this reader assumes (else `None`: use the decoding reader).
fn event_skip(writer: &Schema) -> Option<Skip> {
    let current = avro::current_schema(RecordKind::ChainedEvent).ok()?;
    if *writer != *current.schema {
        return None;
    }
    let Schema::Record(r) = writer else {
        return None;
    };
    let names: Vec<&str> = r.fields.iter().map(|f| f.name.as_str()).collect();
    let want = [
        "chain_partition",
        "seq",
        "prev_hash",
        "hash",
        "canonical_version",
        "source_topic",
        "source_partition",
        "source_offset",
        "event",
    ];
    if names != want {
        return None;
    }
    let event = &r.fields[8].schema;
    let Schema::Record(e) = event else {
        return None;
    };
    let head: Vec<&str> = e.fields.iter().take(7).map(|f| f.name.as_str()).collect();
    if head
        != [
            "event_id",
            "event_type",
            "category",
            "severity",
            "outcome",
            "event_time_us",
            "receive_time_us",
        ]
    {
        return None;
    }
    // The embedded event schema must be the canonical one, so its bytes are canonical bytes.
    let canonical = avro::current_schema(RecordKind::AuditEvent).ok()?;
    if *event != *canonical.schema {
        return None;
    }
    let resolved = ResolvedSchema::try_from(writer).ok()?;
    compile(event, resolved.get_names(), None, &mut Vec::new())
}

fn parse_record(c: &mut Cur<'_>, event: &Skip) -> Result<RawChained, SegmentError> {
    let chain_partition = c.int()?;
    let seq = c.long()?;
    let prev_hash = c.bytes()?.to_vec();
    let hash = c.bytes()?.to_vec();
    let canonical_version = c.int()?;
    let source_topic = c.string()?;
    let source_partition = c.int()?;
    let source_offset = c.long()?;
    let start = c.pos;
    let event_id = c.string()?;
    c.bytes()?; // event_type
    c.long()?; // category
    c.long()?; // severity
    c.long()?; // outcome
    c.long()?; // event_time_us
    let receive_time_us = c.long()?;
    c.pos = start;
    c.skip(event)?;
    Ok(RawChained {
        chain_partition,
        seq,
        prev_hash,
        hash,
        canonical_version,
        source_topic,
        source_partition,
        source_offset,
        event_id,
        receive_time_us,
        canonical: c.buf[start..c.pos].to_vec(),
    })
}

/// Reads exactly `n` bytes (a short read is a truncated object).
fn read_n<R: Read>(r: &mut R, n: usize, what: &str) -> Result<Vec<u8>, SegmentError> {
    let mut v = vec![0u8; n];
    r.read_exact(&mut v)
        .map_err(|e| bad(format!("segment truncated in {what}: {e}")))?;
    Ok(v)
}

/// A varint read straight from the stream (header and block framing).
fn read_long<R: Read>(r: &mut R) -> Result<i64, SegmentError> {
    let mut bytes = Vec::with_capacity(10);
    loop {
        let b = read_n(r, 1, "a number")?[0];
        bytes.push(b);
        if b & 0x80 == 0 || bytes.len() == 10 {
            break;
        }
    }
    Cur {
        buf: &bytes,
        pos: 0,
    }
    .long()
}

fn read_len<R: Read>(r: &mut R, what: &str) -> Result<usize, SegmentError> {
    usize::try_from(read_long(r)?)
        .ok()
        .filter(|&n| n <= MAX_BLOCK)
        .ok_or_else(|| bad(format!("{what}: negative or larger than {MAX_BLOCK} bytes")))
}

/// The stored records of a segment, block by block (see the module docs).
pub struct RawRecords<R> {
    reader: R,
    marker: [u8; 16],
    deflate: bool,
    event: Skip,
    block: Vec<u8>,
    pos: usize,
    left: u64,
    done: bool,
}

impl<R> std::fmt::Debug for RawRecords<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawRecords")
            .field("deflate", &self.deflate)
            .field("left_in_block", &self.left)
            .finish_non_exhaustive()
    }
}

impl<R: Read> RawRecords<R> {
    fn next_block(&mut self) -> Result<bool, SegmentError> {
        // End of the object: no more block.
        let mut first = [0u8; 1];
        match self.reader.read(&mut first) {
            Ok(0) => return Ok(false),
            Ok(_) => {}
            Err(e) => return Err(bad(format!("reading the segment: {e}"))),
        }
        let mut chained = std::io::Read::chain(&first[..], &mut self.reader);
        let count =
            u64::try_from(read_long(&mut chained)?).map_err(|_| bad("negative block count"))?;
        let size = read_len(&mut chained, "block size")?;
        let data = read_n(&mut chained, size, "a block")?;
        let sync = read_n(&mut chained, 16, "a sync marker")?;
        if sync[..] != self.marker[..] {
            return Err(bad("block sync marker does not match the header's"));
        }
        self.block.clear();
        if self.deflate {
            let mut d = flate2::read::DeflateDecoder::new(&data[..]).take(MAX_BLOCK as u64 + 1);
            d.read_to_end(&mut self.block)
                .map_err(|e| bad(format!("block does not inflate: {e}")))?;
            if self.block.len() > MAX_BLOCK {
                return Err(bad(format!("block inflates past {MAX_BLOCK} bytes")));
            }
        } else {
            self.block = data;
        }
        self.pos = 0;
        self.left = count;
        Ok(true)
    }

    fn next_record(&mut self) -> Result<Option<RawChained>, SegmentError> {
        while self.left == 0 {
            if self.pos != self.block.len() {
                return Err(bad("bytes after the last record of a block"));
            }
            if !self.next_block()? {
                return Ok(None);
            }
        }
        let mut c = Cur {
            buf: &self.block,
            pos: self.pos,
        };
        let r = parse_record(&mut c, &self.event)?;
        self.pos = c.pos;
        self.left -= 1;
        Ok(Some(r))
    }
}

impl<R: Read> Iterator for RawRecords<R> {
    type Item = Result<RawChained, SegmentError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let r = self.next_record().transpose();
        if !matches!(r, Some(Ok(_))) {
            self.done = true;
        }
        r
    }
}

/// Opens a segment for [`RawRecords`]: the header's metadata, and the records if this reader
/// can take the shortcut (the current writer schema, codec `deflate` or `null`); `Err(header
/// bytes)` otherwise, so the caller decodes the object with [`crate::segment::stream_segment`]
/// from those bytes followed by the rest of `reader`.
#[allow(clippy::type_complexity)]
pub fn open<R: Read>(
    mut reader: R,
) -> Result<(SegmentMeta, Result<RawRecords<R>, (Vec<u8>, R)>), SegmentError> {
    // Keep the header bytes, so the decoding reader can be handed the whole object.
    let mut header = Vec::new();
    let mut tee = Tee {
        inner: &mut reader,
        copy: &mut header,
    };
    let magic = read_n(&mut tee, 4, "the magic")?;
    if magic != b"Obj\x01" {
        return Err(bad("not an Avro object container (bad magic)"));
    }
    let mut meta = std::collections::HashMap::new();
    loop {
        let n = read_long(&mut tee)?;
        if n == 0 {
            break;
        }
        if n < 0 {
            read_long(&mut tee)?;
        }
        for _ in 0..n.unsigned_abs() {
            let k = read_len(&mut tee, "metadata key")?;
            let k = String::from_utf8(read_n(&mut tee, k, "a metadata key")?)
                .map_err(|_| bad("metadata key is not UTF-8"))?;
            let v = read_len(&mut tee, "metadata value")?;
            let v = read_n(&mut tee, v, "a metadata value")?;
            meta.insert(k, v);
        }
    }
    let marker: [u8; 16] = read_n(&mut tee, 16, "the sync marker")?
        .try_into()
        .map_err(|_| bad("sync marker"))?;
    let seg = SegmentMeta::from_entries(&meta)?;
    let codec = meta.get("avro.codec").map(Vec::as_slice).unwrap_or(b"null");
    let skip = meta
        .get("avro.schema")
        .and_then(|s| std::str::from_utf8(s).ok())
        .and_then(|s| Schema::parse_str(s).ok())
        .and_then(|w| event_skip(&w))
        .filter(|_| codec == b"deflate" || codec == b"null");
    match skip {
        Some(event) => Ok((
            seg,
            Ok(RawRecords {
                reader,
                marker,
                deflate: codec == b"deflate",
                event,
                block: Vec::new(),
                pos: 0,
                left: 0,
                done: false,
            }),
        )),
        None => Ok((seg, Err((header, reader)))),
    }
}

/// Copies what it reads.
struct Tee<'a, R> {
    inner: &'a mut R,
    copy: &'a mut Vec<u8>,
}

impl<R: Read> Read for Tee<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.copy.extend_from_slice(&buf[..n]);
        Ok(n)
    }
}

/// The records of [`stream`], one at a time.
pub type RawStream<'r> = Box<dyn Iterator<Item = Result<RawChained, SegmentError>> + Send + 'r>;

/// Every record of a segment as [`RawChained`], whichever reader applies: the shortcut, or
/// decoding (older writer schema) and re-encoding. Records whose canonical version is not the
/// embedded schema's are re-encoded too.
pub fn stream<'r, R: Read + Send + 'r>(
    reader: R,
) -> Result<(SegmentMeta, RawStream<'r>), SegmentError> {
    let (meta, records) = open(reader)?;
    match records {
        Ok(raw) => Ok((
            meta,
            Box::new(raw.map(|r| {
                let r = r?;
                if r.canonical_version == CANONICAL_VERSION {
                    return Ok(r);
                }
                reencode(&r)
            })),
        )),
        Err((header, rest)) => {
            let (meta, decoded) = crate::segment::stream_segment(std::io::Read::chain(
                std::io::Cursor::new(header),
                rest,
            ))?;
            Ok((
                meta,
                Box::new(
                    decoded.map(|e| RawChained::from_chained(&e?).map_err(SegmentError::from)),
                ),
            ))
        }
    }
}

/// A record whose canonical version is not the one its stored bytes were written with: decode
/// the stored event and encode it under its canonical version.
fn reencode(r: &RawChained) -> Result<RawChained, SegmentError> {
    let event = avro::decode_event_datum(&r.canonical)?;
    let mut canonical = Vec::with_capacity(r.canonical.len());
    avro::canonical_bytes_version_into(&event, r.canonical_version, &mut canonical)?;
    Ok(RawChained {
        canonical,
        ..r.clone()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::segment::{read_segment, write_segment};
    use crate::testing::arb_chained_event;
    use proptest::prelude::*;

    fn segment_of(mut events: Vec<ChainedEvent>) -> (Vec<u8>, Vec<ChainedEvent>) {
        for (i, e) in events.iter_mut().enumerate() {
            e.chain_partition = 3;
            e.seq = i as i64 + 1;
            e.canonical_version = CANONICAL_VERSION;
            e.event.event_time_us = 1_700_000_000_000_000;
        }
        let meta =
            SegmentMeta::for_events(&events, "audit.chained", 0, events.len() as i64 - 1, "test")
                .expect("meta");
        (write_segment(&meta, &events).expect("write"), events)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        /// The shortcut yields, for every record, the canonical bytes the encoder makes and the
        /// chain fields as stored: the same as decoding and re-encoding.
        #[test]
        fn stored_bytes_are_the_canonical_bytes(events in proptest::collection::vec(arb_chained_event(), 1..40)) {
            let (bytes, events) = segment_of(events);
            let (meta, recs) = open(&bytes[..]).expect("open");
            let raw: Vec<RawChained> = recs.expect("the shortcut applies").collect::<Result<_, _>>().expect("read");
            let (meta2, decoded) = read_segment(&bytes).expect("decode");
            prop_assert_eq!(meta, meta2);
            prop_assert_eq!(&decoded, &events);
            let want: Vec<RawChained> = decoded.iter().map(|e| RawChained::from_chained(e).expect("encode")).collect();
            prop_assert_eq!(raw, want);
        }

        /// Any corruption of a segment is an error or other records, never a panic or a hang.
        #[test]
        fn corrupted_segments_never_panic(events in proptest::collection::vec(arb_chained_event(), 1..8), at in any::<prop::sample::Index>(), byte in any::<u8>()) {
            let (mut bytes, _) = segment_of(events);
            let i = at.index(bytes.len());
            bytes[i] = byte;
            if let Ok((_, Ok(recs))) = open(&bytes[..]) {
                for r in recs.take(1000) {
                    let _ = r;
                }
            }
        }
    }

    #[test]
    fn truncation_and_trailing_bytes_are_errors() {
        let events: Vec<ChainedEvent> = (0..5)
            .map(|i| ChainedEvent {
                chain_partition: 3,
                seq: i + 1,
                prev_hash: vec![i as u8; 32],
                hash: vec![i as u8 + 1; 32],
                canonical_version: CANONICAL_VERSION,
                source_topic: "audit.enriched".into(),
                source_partition: 3,
                source_offset: i,
                event: crate::testing::sample_event(),
            })
            .collect();
        let (bytes, _) = segment_of(events);
        let cut = &bytes[..bytes.len() - 20];
        let (_, recs) = open(cut).expect("header intact");
        assert!(recs.expect("shortcut").any(|r| r.is_err()));
        let mut longer = bytes.clone();
        longer.extend_from_slice(&[1, 2, 3]);
        let (_, recs) = open(&longer[..]).expect("header intact");
        assert!(recs.expect("shortcut").any(|r| r.is_err()));
    }

    #[test]
    fn varints_are_strict() {
        let long = |b: &[u8]| Cur { buf: b, pos: 0 }.long();
        assert_eq!(long(&[0x02]).unwrap(), 1);
        assert_eq!(long(&[0x01]).unwrap(), -1);
        assert!(long(&[0x82, 0x00]).is_err(), "over-long");
        assert!(long(&[0x80]).is_err(), "truncated");
        assert!(long(&[0xff; 11]).is_err(), "too long");
        assert_eq!(
            long(&[0xfe, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]).unwrap(),
            i64::MAX
        );
    }
}
