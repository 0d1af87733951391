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
//! block claiming more than [`MAX_BLOCK`] is refused) plus one record. Blocks of the codecs
//! the archive sink writes (`deflate`, `zstandard`) and `null` are read here; another codec
//! goes to apache-avro's reader ([`open`]).

use std::io::Read;
use std::sync::{Arc, Mutex};

use apache_avro::schema::{InnerDecimalSchema, Name, NamesRef, ResolvedSchema, UuidSchema};
use apache_avro::Schema;

use crate::avro::{self, RecordKind, CANONICAL_VERSION};
use crate::event::ChainedEvent;
use crate::segment::{BlockCodec, SegmentError, SegmentMeta};

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

/// A [`Skip`] compiled for speed: nested records inlined into one flat list of steps (a record
/// is only its fields one after the other), and the optional scalars every event is full of
/// (`["null", string]`, `["null", long]`) made single steps. Walking an event's ~90 fields was
/// a tenth of reading a segment as a tree of `Skip`s. Accepts exactly what [`Cur::skip`] does
/// (property-tested against it).
#[derive(Debug, Clone)]
enum Op {
    Varint,
    Fixed(usize),
    Bytes,
    /// Union index 0 is `null`, 1 is a varint; any other index is out of range.
    NullOrVarint,
    /// Union index 0 is `null`, 1 is a length-prefixed value.
    NullOrBytes,
    Union(Box<[Box<[Op]>]>),
    Array(Box<[Op]>),
    Map(Box<[Op]>),
}

/// The steps of `s`, appended to `out`.
fn flatten(s: &Skip, out: &mut Vec<Op>) {
    match s {
        Skip::Nothing => {}
        Skip::Varint => out.push(Op::Varint),
        Skip::Fixed(0) => {}
        Skip::Fixed(n) => out.push(Op::Fixed(*n)),
        Skip::Bytes => out.push(Op::Bytes),
        Skip::Record(fields) => fields.iter().for_each(|f| flatten(f, out)),
        Skip::Array(items) => out.push(Op::Array(program(items))),
        Skip::Map(values) => out.push(Op::Map(program(values))),
        Skip::Union(branches) => out.push(match branches.as_slice() {
            [Skip::Nothing, Skip::Varint] => Op::NullOrVarint,
            [Skip::Nothing, Skip::Bytes] => Op::NullOrBytes,
            _ => Op::Union(branches.iter().map(program).collect()),
        }),
    }
}

fn program(s: &Skip) -> Box<[Op]> {
    let mut out = Vec::new();
    flatten(s, &mut out);
    out.into_boxed_slice()
}

/// A cursor over one decompressed block.
struct Cur<'a> {
    buf: &'a [u8],
    pos: usize,
}

fn bad(what: impl Into<String>) -> SegmentError {
    SegmentError::Invalid(what.into())
}

/// A union index the union does not have: the same messages as the tree walk's.
fn union_index(i: i64) -> SegmentError {
    if i < 0 {
        bad("negative union index")
    } else {
        bad("union index out of range")
    }
}

impl<'a> Cur<'a> {
    /// A zig-zag varint (Avro int/long), at most 10 bytes, no over-long form.
    #[inline]
    fn long(&mut self) -> Result<i64, SegmentError> {
        // One byte: most lengths, union indexes, enum symbols and small ints. The walk over
        // every event's fields is mostly these (a fifth of a segment read in the profile).
        if let Some(&b) = self.buf.get(self.pos) {
            if b & 0x80 == 0 {
                self.pos += 1;
                return Ok(i64::from(b >> 1) ^ -i64::from(b & 1));
            }
        }
        self.long_multi()
    }

    /// [`Self::long`] of more than one byte (or none left).
    fn long_multi(&mut self) -> Result<i64, SegmentError> {
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

    /// A length-prefixed byte string: where it lies.
    fn range(&mut self) -> Result<(usize, usize), SegmentError> {
        let n = self.len()?;
        let a = self.pos;
        self.take(n)?;
        Ok((a, self.pos))
    }

    /// [`Self::range`] of a string, checked to be UTF-8.
    fn str_range(&mut self) -> Result<(usize, usize), SegmentError> {
        let (a, b) = self.range()?;
        std::str::from_utf8(&self.buf[a..b]).map_err(|_| bad("string is not UTF-8"))?;
        Ok((a, b))
    }

    /// Steps over one value compiled into `ops` (see [`Op`]).
    fn run(&mut self, ops: &[Op]) -> Result<(), SegmentError> {
        for op in ops {
            match op {
                Op::Varint => {
                    self.long()?;
                }
                Op::Fixed(n) => {
                    self.take(*n)?;
                }
                Op::Bytes => {
                    self.bytes()?;
                }
                Op::NullOrVarint => match self.long()? {
                    0 => {}
                    1 => {
                        self.long()?;
                    }
                    i => return Err(union_index(i)),
                },
                Op::NullOrBytes => match self.long()? {
                    0 => {}
                    1 => {
                        self.bytes()?;
                    }
                    i => return Err(union_index(i)),
                },
                Op::Union(branches) => {
                    let i = self.long()?;
                    let branch = usize::try_from(i)
                        .ok()
                        .and_then(|i| branches.get(i))
                        .ok_or_else(|| union_index(i))?;
                    self.run(branch)?;
                }
                Op::Array(items) => self.blocks(|c| c.run(items))?,
                Op::Map(values) => self.blocks(|c| {
                    c.bytes()?;
                    c.run(values)
                })?,
            }
        }
        Ok(())
    }

    /// The tree walk [`Self::run`] replaced, kept as its reference in tests.
    #[cfg(test)]
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

/// The steps over the event of a segment written with this schema (its JSON as the header
/// holds it), or `None` if the shortcut does not apply (see [`event_skip`]). Remembered per
/// schema text: every segment of an archive has the same few, and parsing one (apache-avro
/// checks each name with a regex) and comparing it with the current schema cost as much as
/// reading a few hundred records.
fn event_program(schema_json: &[u8]) -> Option<Arc<[Op]>> {
    type Seen = Vec<(Vec<u8>, Option<Arc<[Op]>>)>;
    static SEEN: Mutex<Seen> = Mutex::new(Vec::new());
    const KEEP: usize = 8;
    if let Ok(seen) = SEEN.lock() {
        if let Some((_, p)) = seen.iter().find(|(k, _)| k.as_slice() == schema_json) {
            return p.clone();
        }
    }
    let program: Option<Arc<[Op]>> = std::str::from_utf8(schema_json)
        .ok()
        .and_then(|s| Schema::parse_str(s).ok())
        .and_then(|w| event_skip(&w))
        .map(|skip| Arc::from(program(&skip)));
    if let Ok(mut seen) = SEEN.lock() {
        if seen.len() >= KEEP {
            seen.remove(0);
        }
        seen.push((schema_json.to_vec(), program.clone()));
    }
    program
}

/// Where one record's fields lie in its block, and its fixed-width fields (see [`RawBlock`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Span {
    chain_partition: i32,
    seq: i64,
    canonical_version: i32,
    source_partition: i32,
    source_offset: i64,
    receive_time_us: i64,
    prev_hash: (usize, usize),
    hash: (usize, usize),
    /// Checked to be UTF-8 when parsed.
    source_topic: (usize, usize),
    /// Checked to be UTF-8 when parsed.
    event_id: (usize, usize),
    canonical: (usize, usize),
}

/// One record's fields as positions in the block (no copy, no allocation).
fn parse_span(c: &mut Cur<'_>, event: &[Op]) -> Result<Span, SegmentError> {
    let chain_partition = c.int()?;
    let seq = c.long()?;
    let prev_hash = c.range()?;
    let hash = c.range()?;
    let canonical_version = c.int()?;
    let source_topic = c.str_range()?;
    let source_partition = c.int()?;
    let source_offset = c.long()?;
    let start = c.pos;
    let event_id = c.str_range()?;
    c.bytes()?; // event_type
    c.long()?; // category
    c.long()?; // severity
    c.long()?; // outcome
    c.long()?; // event_time_us
    let receive_time_us = c.long()?;
    c.pos = start;
    c.run(event)?;
    Ok(Span {
        chain_partition,
        seq,
        canonical_version,
        source_partition,
        source_offset,
        receive_time_us,
        prev_hash,
        hash,
        source_topic,
        event_id,
        canonical: (start, c.pos),
    })
}

fn parse_record(c: &mut Cur<'_>, event: &[Op]) -> Result<RawChained, SegmentError> {
    let span = parse_span(c, event)?;
    Ok(RawBlock::view(c.buf, &span).to_owned_record())
}

/// A record of a [`RawBlock`], borrowed from it: the fields of [`RawChained`] without a copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawRef<'a> {
    pub chain_partition: i32,
    pub seq: i64,
    pub prev_hash: &'a [u8],
    pub hash: &'a [u8],
    pub canonical_version: i32,
    pub source_topic: &'a str,
    pub source_partition: i32,
    pub source_offset: i64,
    pub event_id: &'a str,
    pub receive_time_us: i64,
    /// The event's canonical bytes.
    pub canonical: &'a [u8],
}

impl RawRef<'_> {
    pub fn to_owned_record(&self) -> RawChained {
        RawChained {
            chain_partition: self.chain_partition,
            seq: self.seq,
            prev_hash: self.prev_hash.to_vec(),
            hash: self.hash.to_vec(),
            canonical_version: self.canonical_version,
            source_topic: self.source_topic.to_owned(),
            source_partition: self.source_partition,
            source_offset: self.source_offset,
            event_id: self.event_id.to_owned(),
            receive_time_us: self.receive_time_us,
            canonical: self.canonical.to_vec(),
        }
    }
}

impl RawChained {
    /// This record borrowed as a [`RawRef`] (to compare it with one).
    pub fn as_raw_ref(&self) -> RawRef<'_> {
        RawRef {
            chain_partition: self.chain_partition,
            seq: self.seq,
            prev_hash: &self.prev_hash,
            hash: &self.hash,
            canonical_version: self.canonical_version,
            source_topic: &self.source_topic,
            source_partition: self.source_partition,
            source_offset: self.source_offset,
            event_id: &self.event_id,
            receive_time_us: self.receive_time_us,
            canonical: &self.canonical,
        }
    }
}

/// The records of one container block, as one buffer and where each record's fields lie in
/// it: the decompressed block itself on the shortcut (records are borrowed from it, nothing is
/// copied or allocated per record), or records appended to it (re-encoded events, the
/// decoding reader). What [`stream_blocks`] hands over.
#[derive(Debug, Clone, Default)]
pub struct RawBlock {
    buf: Vec<u8>,
    spans: Vec<Span>,
}

impl RawBlock {
    pub fn len(&self) -> usize {
        self.spans.len()
    }

    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    /// The block's buffer, once its records are done with: give it back
    /// ([`BlockBuffers::give`]) and a later block is decompressed into it.
    pub fn into_buffer(self) -> Vec<u8> {
        self.buf
    }

    /// The records, in stored order.
    pub fn iter(&self) -> impl Iterator<Item = RawRef<'_>> + '_ {
        self.spans.iter().map(|s| Self::view(&self.buf, s))
    }

    fn view<'a>(buf: &'a [u8], s: &Span) -> RawRef<'a> {
        let at = |(a, b): (usize, usize)| &buf[a..b];
        // Both were checked to be UTF-8 when the span was made; "" is unreachable.
        let text = |r| std::str::from_utf8(at(r)).unwrap_or_default();
        RawRef {
            chain_partition: s.chain_partition,
            seq: s.seq,
            prev_hash: at(s.prev_hash),
            hash: at(s.hash),
            canonical_version: s.canonical_version,
            source_topic: text(s.source_topic),
            source_partition: s.source_partition,
            source_offset: s.source_offset,
            event_id: text(s.event_id),
            receive_time_us: s.receive_time_us,
            canonical: at(s.canonical),
        }
    }

    /// Appends bytes to the buffer; where they lie.
    fn append(&mut self, b: &[u8]) -> (usize, usize) {
        let a = self.buf.len();
        self.buf.extend_from_slice(b);
        (a, self.buf.len())
    }

    /// Appends an owned record (the decoding reader's records).
    fn push_owned(&mut self, r: &RawChained) {
        let span = Span {
            chain_partition: r.chain_partition,
            seq: r.seq,
            canonical_version: r.canonical_version,
            source_partition: r.source_partition,
            source_offset: r.source_offset,
            receive_time_us: r.receive_time_us,
            prev_hash: self.append(&r.prev_hash),
            hash: self.append(&r.hash),
            source_topic: self.append(r.source_topic.as_bytes()),
            event_id: self.append(r.event_id.as_bytes()),
            canonical: self.append(&r.canonical),
        };
        self.spans.push(span);
    }
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

/// Inflates a raw deflate block (RFC 1951, the Avro `deflate` codec) into `out`, with zlib-rs
/// (through flate2's `zlib-rs` backend): 1.4-1.6x as fast as flate2's default backend
/// (miniz_oxide) on 256 KiB blocks of events, and inflating is the largest cost of reading a
/// segment after hashing. (Since the twelfth session the writer deflates with zlib-rs too,
/// `segment::DEFLATE_LEVEL`; older segments were written by apache-avro's codec, miniz_oxide:
/// any raw deflate stream reads.)
///
/// The output goes into `out`'s spare capacity, which is never zeroed first: zeroing a fresh
/// buffer for every block (and faulting its pages in to do so) was 8% of `auditctl verify
/// --source archive`'s samples, more than the inflating it made room for. The room starts at
/// `hint` (the largest block of the segment so far: blocks are alike) or [`FIRST_GUESS`] and
/// doubles while the block goes on, the stream carrying on where it stopped, up to
/// [`MAX_BLOCK`].
fn inflate(data: &[u8], out: &mut Vec<u8>, hint: usize) -> Result<(), SegmentError> {
    use flate2::{Decompress, FlushDecompress, Status};
    // `false`: a raw stream, no zlib header or trailer.
    let mut z = Decompress::new(false);
    out.clear();
    let first = hint
        .max(data.len().saturating_mul(4))
        .clamp(FIRST_GUESS, MAX_BLOCK + 1);
    out.reserve_exact(first);
    let result = loop {
        let read = usize::try_from(z.total_in())
            .unwrap_or(data.len())
            .min(data.len());
        let before = out.len();
        let status = z.decompress_vec(&data[read..], out, FlushDecompress::Finish);
        if out.len() > MAX_BLOCK {
            break Err(bad(format!("block inflates past {MAX_BLOCK} bytes")));
        }
        match status {
            Ok(Status::StreamEnd) => break Ok(()),
            Err(e) => break Err(bad(format!("block does not inflate: {e}"))),
            Ok(Status::Ok | Status::BufError) => {}
        }
        if out.len() < out.capacity() {
            // Room was left: the stream wants input it has not got.
            if out.len() == before && usize::try_from(z.total_in()).ok() == Some(read) {
                break Err(bad(
                    "block does not inflate: the deflate stream is cut short",
                ));
            }
            continue;
        }
        // Full: twice the room, never past one byte over the limit (which tells a block of
        // exactly MAX_BLOCK bytes from a larger one).
        let room = out.capacity().min(MAX_BLOCK + 1 - out.len()).max(1);
        out.reserve_exact(room);
    };
    if result.is_err() {
        out.clear();
    }
    result
}

/// Decompresses a block of the Avro `zstandard` codec (one or more zstd frames) into `out`,
/// refusing more than [`MAX_BLOCK`] bytes and windows past [`ZSTD_WINDOW_LOG_MAX`] (what a
/// frame makes the decoder allocate), so a hostile object cannot exhaust the verifier's
/// memory. The writer's frames carry their content size: the buffer is sized by it up front.
fn unzstd(data: &[u8], out: &mut Vec<u8>) -> Result<(), SegmentError> {
    let failed = |e: std::io::Error| bad(format!("block does not decompress (zstandard): {e}"));
    out.clear();
    if let Ok(Some(size)) = zstd::zstd_safe::get_frame_content_size(data) {
        out.reserve_exact(usize::try_from(size).unwrap_or(MAX_BLOCK).min(MAX_BLOCK));
    }
    let mut decoder = zstd::stream::read::Decoder::with_buffer(data).map_err(failed)?;
    decoder
        .window_log_max(ZSTD_WINDOW_LOG_MAX)
        .map_err(failed)?;
    let n = decoder
        .take(MAX_BLOCK as u64 + 1)
        .read_to_end(out)
        .map_err(failed)?;
    if n > MAX_BLOCK {
        out.clear();
        return Err(bad(format!("block decompresses past {MAX_BLOCK} bytes")));
    }
    Ok(())
}

/// The largest zstd window a block may ask for: 32 MiB (the writer's frames use at most the
/// block's size, ~256 KiB; other zstd writers' defaults stay under 8 MiB).
const ZSTD_WINDOW_LOG_MAX: u32 = 25;

/// Room first given to an inflated block: the writer's blocks are 256 KiB of records (a block
/// ends at the first record past that), so most fit at the first try.
const FIRST_GUESS: usize = 384 * 1024;

/// The stored records of a segment, block by block (see the module docs).
pub struct RawRecords<R> {
    reader: R,
    marker: [u8; 16],
    /// The blocks' codec; `None`: stored as they are (`null`).
    codec: Option<BlockCodec>,
    event: Arc<[Op]>,
    block: Vec<u8>,
    pos: usize,
    left: u64,
    done: bool,
    /// Why reading stopped, to be reported after the records before it ([`stream_blocks`]).
    failed: Option<SegmentError>,
    /// The largest block inflated so far (the first guess of the next one's size).
    hint: usize,
    /// Buffers of blocks the reader is done with ([`RawBlock::into_buffer`]), to decompress
    /// the next blocks into: memory already faulted in, instead of fresh pages for each block.
    spares: Option<BlockBuffers>,
}

impl<R> std::fmt::Debug for RawRecords<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawRecords")
            .field("codec", &self.codec)
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
        if self.block.capacity() == 0 && self.codec.is_some() {
            if let Some(spare) = self.spares.as_ref().and_then(BlockBuffers::take) {
                self.block = spare;
            }
        }
        match self.codec {
            Some(BlockCodec::Deflate) => {
                inflate(&data, &mut self.block, self.hint)?;
                self.hint = self.hint.max(self.block.len());
            }
            Some(BlockCodec::Zstandard) => unzstd(&data, &mut self.block)?,
            None => self.block = data,
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

impl<R: Read> RawRecords<R> {
    /// The records of the next non-empty block, or where reading stopped: a malformed record
    /// ends the segment after the block's records before it (as the record iterator does).
    fn next_raw_block(&mut self) -> Option<Result<RawBlock, SegmentError>> {
        if let Some(e) = self.failed.take() {
            return Some(Err(e));
        }
        if self.done {
            return None;
        }
        loop {
            // Any rest of a block the record iterator left is not ours to skip.
            if self.left != 0 || self.pos != self.block.len() {
                self.done = true;
                return Some(Err(bad("bytes after the last record of a block")));
            }
            match self.next_block() {
                Ok(true) => {}
                Ok(false) => {
                    self.done = true;
                    return None;
                }
                Err(e) => {
                    self.done = true;
                    return Some(Err(e));
                }
            }
            let mut spans =
                Vec::with_capacity(usize::try_from(self.left).unwrap_or(0).min(1 << 16));
            let mut c = Cur {
                buf: &self.block,
                pos: 0,
            };
            while self.left > 0 {
                match parse_span(&mut c, &self.event) {
                    Ok(s) => {
                        spans.push(s);
                        self.left -= 1;
                    }
                    Err(e) => {
                        self.failed = Some(e);
                        break;
                    }
                }
            }
            if self.failed.is_none() && c.pos != self.block.len() {
                self.failed = Some(bad("bytes after the last record of a block"));
            }
            if self.failed.is_some() {
                self.done = true;
            }
            // The block's buffer goes with its records (no copy); the next block inflates
            // into a new one.
            let buf = std::mem::take(&mut self.block);
            self.pos = 0;
            self.left = 0;
            if spans.is_empty() {
                if let Some(e) = self.failed.take() {
                    return Some(Err(e));
                }
                continue;
            }
            return Some(Ok(RawBlock { buf, spans }));
        }
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
/// can take the shortcut (the current writer schema, codec `deflate`, `zstandard` or `null`); `Err(header
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
    let codec = match meta.get("avro.codec").map(Vec::as_slice) {
        None | Some(b"null") => Some(None),
        Some(b"deflate") => Some(Some(BlockCodec::Deflate)),
        Some(b"zstandard") => Some(Some(BlockCodec::Zstandard)),
        Some(_) => None,
    };
    let skip = meta
        .get("avro.schema")
        .and_then(|s| event_program(s))
        .zip(codec);
    match skip {
        Some((event, codec)) => Ok((
            seg,
            Ok(RawRecords {
                reader,
                marker,
                codec,
                event,
                block: Vec::new(),
                pos: 0,
                left: 0,
                done: false,
                failed: None,
                hint: 0,
                spares: None,
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

/// What [`stream_blocks`] hands over: the records block by block; an error ends the segment.
pub type RawBlockStream<'r> = Box<dyn Iterator<Item = Result<RawBlock, SegmentError>> + Send + 'r>;

/// Records per [`RawBlock`] when they come from the decoding reader (which has no blocks of
/// its own to hand over).
const DECODED_PER_BLOCK: usize = 256;

/// [`stream`], block by block: each block's records borrowed from one buffer (the
/// decompressed block itself on the shortcut), so that reading a segment allocates per block,
/// not per record or field.
pub fn stream_blocks<'r, R: Read + Send + 'r>(
    reader: R,
) -> Result<(SegmentMeta, RawBlockStream<'r>), SegmentError> {
    stream_blocks_with(reader, None)
}

/// Buffers of blocks whose records are done with ([`RawBlock::into_buffer`]), for later blocks
/// to be decompressed into ([`stream_blocks_recycling`]): memory already faulted in. A block
/// takes ~0.4 MB, and reading every block into fresh pages (faulted in, then given back to the
/// kernel when freed) was 5-8% of `auditctl verify --source archive`'s samples. Shared by all
/// the segments of a run (a segment is often decoded whole, ahead of the verifier, before any
/// of its own blocks come back); cheap to clone; holds at most `max` buffers, none larger
/// than `largest` bytes (a hostile segment's huge blocks are freed, not kept for the run).
#[derive(Debug, Clone)]
pub struct BlockBuffers {
    free: Arc<std::sync::Mutex<Vec<Vec<u8>>>>,
    max: usize,
    largest: usize,
}

impl BlockBuffers {
    pub fn new(max: usize, largest: usize) -> Self {
        BlockBuffers {
            free: Arc::default(),
            max,
            largest,
        }
    }

    fn free(&self) -> std::sync::MutexGuard<'_, Vec<Vec<u8>>> {
        // A panic elsewhere cannot leave a list of buffers inconsistent.
        self.free
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A buffer given back, if there is one.
    pub fn take(&self) -> Option<Vec<u8>> {
        self.free().pop()
    }

    /// Gives a buffer back (kept if fewer than `max` are held and it is no larger than
    /// `largest`, else freed).
    pub fn give(&self, mut buf: Vec<u8>) {
        if buf.capacity() == 0 || buf.capacity() > self.largest {
            return;
        }
        buf.clear();
        let mut free = self.free();
        if free.len() < self.max {
            free.push(buf);
        }
    }

    /// Buffers held now.
    pub fn held(&self) -> usize {
        self.free().len()
    }
}

/// [`stream_blocks`], decompressing blocks into the buffers given back to `spares` when
/// there are any.
pub fn stream_blocks_recycling<'r, R: Read + Send + 'r>(
    reader: R,
    spares: BlockBuffers,
) -> Result<(SegmentMeta, RawBlockStream<'r>), SegmentError> {
    stream_blocks_with(reader, Some(spares))
}

fn stream_blocks_with<'r, R: Read + Send + 'r>(
    reader: R,
    spares: Option<BlockBuffers>,
) -> Result<(SegmentMeta, RawBlockStream<'r>), SegmentError> {
    let (meta, records) = open(reader)?;
    match records {
        Ok(mut raw) => {
            raw.spares = spares;
            Ok((
                meta,
                Box::new(std::iter::from_fn(move || {
                    let block = match raw.next_raw_block()? {
                        Ok(b) => b,
                        Err(e) => return Some(Err(e)),
                    };
                    let block = reencode_block(block, &mut raw.failed);
                    if raw.failed.is_some() {
                        raw.done = true;
                    }
                    if block.is_empty() {
                        return raw.failed.take().map(Err);
                    }
                    Some(Ok(block))
                })),
            ))
        }
        Err((header, rest)) => {
            let (meta, decoded) = crate::segment::stream_segment(std::io::Read::chain(
                std::io::Cursor::new(header),
                rest,
            ))?;
            let mut decoded =
                decoded.map(|e| RawChained::from_chained(&e?).map_err(SegmentError::from));
            let mut failed: Option<SegmentError> = None;
            let mut done = false;
            Ok((
                meta,
                Box::new(std::iter::from_fn(move || {
                    if let Some(e) = failed.take() {
                        return Some(Err(e));
                    }
                    if done {
                        return None;
                    }
                    let mut block = RawBlock::default();
                    while block.len() < DECODED_PER_BLOCK {
                        match decoded.next() {
                            Some(Ok(r)) => block.push_owned(&r),
                            Some(Err(e)) => {
                                failed = Some(e);
                                done = true;
                                break;
                            }
                            None => {
                                done = true;
                                break;
                            }
                        }
                    }
                    if block.is_empty() {
                        return failed.take().map(Err);
                    }
                    Some(Ok(block))
                })),
            ))
        }
    }
}

/// Records of a block whose canonical version is not the one the stored bytes were written
/// with get their event re-encoded (appended to the block's buffer). One that cannot be ends
/// the segment there: the block keeps the records before it, `failed` says why.
fn reencode_block(mut block: RawBlock, failed: &mut Option<SegmentError>) -> RawBlock {
    for i in 0..block.spans.len() {
        let s = block.spans[i];
        if s.canonical_version == CANONICAL_VERSION {
            continue;
        }
        let owned = RawBlock::view(&block.buf, &s).to_owned_record();
        match reencode(&owned) {
            Ok(r) => {
                let canonical = block.append(&r.canonical);
                block.spans[i].canonical = canonical;
            }
            Err(e) => {
                // Earlier in the segment than any error after the block's last record.
                block.spans.truncate(i);
                *failed = Some(e);
                break;
            }
        }
    }
    block
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
    use crate::segment::{read_segment, write_segment_with};
    use crate::testing::arb_chained_event;
    use proptest::prelude::*;

    fn segment_of(
        mut events: Vec<ChainedEvent>,
        codec: BlockCodec,
    ) -> (Vec<u8>, Vec<ChainedEvent>) {
        for (i, e) in events.iter_mut().enumerate() {
            e.chain_partition = 3;
            e.seq = i as i64 + 1;
            e.canonical_version = CANONICAL_VERSION;
            e.event.event_time_us = 1_700_000_000_000_000;
        }
        let meta =
            SegmentMeta::for_events(&events, "audit.chained", 0, events.len() as i64 - 1, "test")
                .expect("meta");
        (
            write_segment_with(&meta, &events, codec).expect("write"),
            events,
        )
    }

    fn codec(zstandard: bool) -> BlockCodec {
        if zstandard {
            BlockCodec::Zstandard
        } else {
            BlockCodec::Deflate
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        /// The shortcut yields, for every record, the canonical bytes the encoder makes and the
        /// chain fields as stored: the same as decoding and re-encoding.
        #[test]
        fn stored_bytes_are_the_canonical_bytes(events in proptest::collection::vec(arb_chained_event(), 1..40), zstandard in any::<bool>()) {
            let (bytes, events) = segment_of(events, codec(zstandard));
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
        fn corrupted_segments_never_panic(events in proptest::collection::vec(arb_chained_event(), 1..8), at in any::<prop::sample::Index>(), byte in any::<u8>(), zstandard in any::<bool>()) {
            let (mut bytes, _) = segment_of(events, codec(zstandard));
            let i = at.index(bytes.len());
            bytes[i] = byte;
            if let Ok((_, Ok(recs))) = open(&bytes[..]) {
                for r in recs.take(1000) {
                    let _ = r;
                }
            }
        }
    }

    /// Where a walk over `bytes` ended, or its error.
    fn walk(
        bytes: &[u8],
        f: impl FnOnce(&mut Cur<'_>) -> Result<(), SegmentError>,
    ) -> Result<usize, String> {
        let mut c = Cur { buf: bytes, pos: 0 };
        f(&mut c).map(|()| c.pos).map_err(|e| e.to_string())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        /// The flat program steps over exactly what the tree walk does: the same end on every
        /// event, and on damaged bytes the same end or the same error. Every byte of the datum
        /// is damaged in turn, with the values that make other union indexes, lengths and
        /// varint forms; and the datum is cut at every length.
        #[test]
        fn the_flat_program_walks_as_the_tree_does(e in arb_chained_event().boxed()) {
            let writer = avro::current_schema(RecordKind::ChainedEvent).expect("schema");
            let tree = event_skip(&writer.schema).expect("the current schema has a shortcut");
            let flat = program(&tree);
            let bytes = avro::canonical_bytes(&e.event).expect("encode");
            let whole = walk(&bytes, |c| c.run(&flat));
            prop_assert_eq!(&whole, &Ok(bytes.len()));
            prop_assert_eq!(walk(&bytes, |c| c.skip(&tree)), whole);
            let mut damaged = bytes.clone();
            for i in 0..bytes.len() {
                for b in [0u8, 1, 2, 3, 4, 5, 6, 0x7f, 0x80, 0x81, 0xff] {
                    damaged[i] = b;
                    prop_assert_eq!(
                        walk(&damaged, |c| c.run(&flat)),
                        walk(&damaged, |c| c.skip(&tree)),
                        "byte {} set to {:#x}", i, b
                    );
                }
                damaged[i] = bytes[i];
            }
            for n in 0..bytes.len() {
                let short = &bytes[..n];
                prop_assert_eq!(walk(short, |c| c.run(&flat)), walk(short, |c| c.skip(&tree)));
            }
        }
    }

    /// What a reader gave: the records before the first error, and whether there was one.
    fn by_records(bytes: &[u8]) -> Option<(Vec<RawChained>, bool)> {
        let (_, recs) = stream(bytes).ok()?;
        let mut out = Vec::new();
        for r in recs.take(10_000) {
            match r {
                Ok(r) => out.push(r),
                Err(_) => return Some((out, true)),
            }
        }
        Some((out, false))
    }

    fn by_blocks(bytes: &[u8]) -> Option<(Vec<RawChained>, bool)> {
        let (_, blocks) = stream_blocks(bytes).ok()?;
        let mut out = Vec::new();
        for b in blocks.take(10_000) {
            match b {
                Ok(b) => {
                    assert!(!b.is_empty(), "no empty block is handed over");
                    out.extend(b.iter().map(|r| r.to_owned_record()));
                }
                Err(_) => return Some((out, true)),
            }
        }
        Some((out, false))
    }

    /// [`by_blocks`], each block's buffer given back (dirty) once its records are copied out,
    /// for the next block to be decompressed into.
    fn by_blocks_recycling(bytes: &[u8]) -> Option<(Vec<RawChained>, bool)> {
        let spares = BlockBuffers::new(4, 1 << 20);
        // Dirty, as a block of another segment leaves it.
        spares.give(b"a block of another segment".repeat(100));
        let (_, blocks) = stream_blocks_recycling(bytes, spares.clone()).ok()?;
        let mut out = Vec::new();
        for b in blocks.take(10_000) {
            match b {
                Ok(b) => {
                    out.extend(b.iter().map(|r| r.to_owned_record()));
                    spares.give(b.into_buffer());
                }
                Err(_) => return Some((out, true)),
            }
        }
        Some((out, false))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// Block by block, the same records as one by one, in order, and the same end: a
        /// record of an unknown canonical version or a corrupted byte stops both at the same
        /// record. Blocks decompressed into recycled buffers too.
        #[test]
        fn blocks_hold_the_records_the_record_reader_reads(
            events in proptest::collection::vec(arb_chained_event(), 1..60),
            unknown in proptest::option::of(any::<prop::sample::Index>()),
            corrupt in proptest::option::of((any::<prop::sample::Index>(), any::<u8>())),
            zstandard in any::<bool>(),
        ) {
            let n = events.len();
            let codec = codec(zstandard);
            let (mut bytes, mut events) = segment_of(events, codec);
            if let Some(i) = unknown {
                // The metadata of the segment as written; one record's version changed after.
                let meta = SegmentMeta::for_events(&events, "audit.chained", 0, n as i64 - 1, "test").expect("meta");
                events[i.index(n)].canonical_version = 99;
                bytes = write_segment_with(&meta, &events, codec).expect("write");
            }
            if let Some((at, byte)) = corrupt {
                let i = at.index(bytes.len());
                bytes[i] = byte;
            }
            let want = by_records(&bytes);
            prop_assert_eq!(by_blocks(&bytes), want.clone());
            prop_assert_eq!(by_blocks_recycling(&bytes), want.clone());
            if corrupt.is_none() {
                let (recs, failed) = want.expect("opens");
                prop_assert_eq!(failed, unknown.is_some());
                prop_assert_eq!(recs.len(), unknown.map_or(n, |i| i.index(n)));
            }
        }
    }

    /// A segment of several container blocks: every block handed over, in order.
    #[test]
    fn several_blocks_are_read_in_order() {
        let events: Vec<ChainedEvent> = (0..3000)
            .map(|i| ChainedEvent {
                chain_partition: 3,
                seq: i + 1,
                prev_hash: vec![(i % 200) as u8; 32],
                hash: vec![(i % 200) as u8 + 1; 32],
                canonical_version: CANONICAL_VERSION,
                source_topic: "audit.enriched".into(),
                source_partition: 3,
                source_offset: i,
                event: crate::testing::sample_event(),
            })
            .collect();
        for codec in [BlockCodec::Deflate, BlockCodec::Zstandard] {
            let (bytes, _) = segment_of(events.clone(), codec);
            let (_, blocks) = stream_blocks(&bytes[..]).expect("open");
            let sizes: Vec<usize> = blocks.map(|b| b.expect("block").len()).collect();
            assert!(sizes.len() > 1, "{codec}: several blocks: {sizes:?}");
            let (recs, failed) = by_records(&bytes).expect("open");
            assert!(!failed);
            assert_eq!(recs.len(), events.len());
            assert_eq!(by_blocks(&bytes), Some((recs.clone(), false)));
            assert_eq!(by_blocks_recycling(&bytes), Some((recs, false)));
            // A buffer given back is the one the next block is decompressed into.
            let spares = BlockBuffers::new(1, 1 << 20);
            let (_, mut blocks) =
                stream_blocks_recycling(&bytes[..], spares.clone()).expect("open");
            let first = blocks.next().expect("a block").expect("reads");
            let (at, room) = (first.buf.as_ptr(), first.buf.capacity());
            spares.give(first.into_buffer());
            spares.give(vec![0; 10]);
            assert_eq!(spares.held(), 1, "at most max buffers are held");
            let other = BlockBuffers::new(4, 1 << 20);
            other.give(Vec::with_capacity((1 << 20) + 1));
            other.give(Vec::new());
            assert_eq!(other.held(), 0, "too large, or no buffer at all: freed");
            let second = blocks.next().expect("a second block").expect("reads");
            assert_eq!(spares.held(), 0, "taken");
            // Unless the second block needs more room than the first had (zstd sizes the
            // buffer to the frame's content size, exactly).
            assert!(
                second.buf.as_ptr() == at
                    || (codec == BlockCodec::Zstandard && second.buf.len() > room),
                "{codec}: the buffer is reused ({} bytes into {room})",
                second.buf.len()
            );
        }
    }

    /// Zstandard blocks: frames from any writer (with or without their content size, several
    /// in a row), up to [`MAX_BLOCK`] bytes; a bomb past it, garbage or a truncated frame is an
    /// error.
    #[test]
    fn zstandard_blocks_decompress_within_bounds() {
        let plain: Vec<u8> = (0..1_000_000u32).map(|i| (i % 7) as u8).collect();
        let mut out = Vec::new();
        let sized = zstd::bulk::compress(&plain, 3).expect("zstd");
        unzstd(&sized, &mut out).expect("a frame with its size");
        assert_eq!(out, plain);
        // A streaming writer does not know the size up front.
        let mut streamed = zstd::stream::encode_all(&plain[..500_000], 1).expect("zstd");
        assert_eq!(
            zstd::zstd_safe::get_frame_content_size(&streamed).ok(),
            Some(None),
            "no content size"
        );
        streamed.extend_from_slice(&zstd::stream::encode_all(&plain[500_000..], 1).expect("zstd"));
        unzstd(&streamed, &mut out).expect("two frames");
        assert_eq!(out, plain);
        let bomb = zstd::bulk::compress(&vec![0u8; MAX_BLOCK + 1], 1).expect("zstd");
        let err = unzstd(&bomb, &mut out).expect_err("past MAX_BLOCK");
        assert!(err.to_string().contains("past"), "{err}");
        assert!(out.is_empty());
        assert!(unzstd(&[0xff; 64], &mut out).is_err(), "garbage");
        assert!(
            unzstd(&sized[..sized.len() / 2], &mut out).is_err(),
            "truncated"
        );
    }

    fn deflated(plain: &[u8]) -> Vec<u8> {
        use std::io::Write;
        let mut enc =
            flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
        enc.write_all(plain).expect("deflate");
        enc.finish().expect("deflate")
    }

    /// Blocks larger than the first guess of the inflated size are inflated whole (the output
    /// buffer grows, the stream carrying on), whatever was in the buffer before; a block that
    /// is not deflate, or is cut short, is an error and leaves the buffer empty.
    #[test]
    fn inflate_grows_its_buffer_and_refuses_garbage() {
        let plain: Vec<u8> = (0..1_000_000u32).map(|i| (i % 7) as u8).collect();
        let packed = deflated(&plain);
        let mut out = b"left over from the block before".to_vec();
        inflate(&packed, &mut out, 0).expect("inflates");
        assert_eq!(out, plain);
        inflate(&packed, &mut out, plain.len()).expect("inflates into exactly its size");
        assert_eq!(out, plain);
        inflate(&packed, &mut out, plain.len() - 1).expect("one byte short of room grows");
        assert_eq!(out, plain);
        assert!(inflate(&[0xff; 64], &mut out, 0).is_err());
        assert!(out.is_empty());
        for cut in [1, packed.len() / 2, packed.len() - 1] {
            assert!(
                inflate(&packed[..cut], &mut out, 0).is_err(),
                "truncated at {cut}"
            );
            assert!(out.is_empty());
        }
        inflate(&deflated(&[]), &mut out, 0).expect("an empty block");
        assert!(out.is_empty());
    }

    /// A deflate bomb stops at [`MAX_BLOCK`]: a block of exactly that size reads, one byte more
    /// is an error (the output is never allowed past one byte over).
    #[test]
    fn inflate_stops_at_max_block() {
        let mut plain = vec![0u8; MAX_BLOCK];
        let mut out = Vec::new();
        inflate(&deflated(&plain), &mut out, 0).expect("exactly MAX_BLOCK");
        assert_eq!(out.len(), MAX_BLOCK);
        plain.push(0);
        let err = inflate(&deflated(&plain), &mut out, 0).expect_err("past MAX_BLOCK");
        assert!(err.to_string().contains("past"), "{err}");
        assert!(out.is_empty());
        assert!(
            out.capacity() <= MAX_BLOCK + 1 + FIRST_GUESS,
            "{}",
            out.capacity()
        );
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
        let (bytes, _) = segment_of(events, BlockCodec::Zstandard);
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
