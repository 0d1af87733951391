//! `audit_events` rows as ClickHouse `RowBinary` bytes, written when a record arrives.
//!
//! Why the sink writes its own: a batch is held until it is stored (every retry sends it
//! again), and held as ~90-field `AuditRow`s it cost about a third of the sink's CPU just to
//! free them when the batch was flushed (some 35 heap blocks per row, freed long after they
//! were made). Held as one exact-size buffer per row, each row's decoded fields are freed as
//! soon as its bytes are written. The `clickhouse` crate's own row serializer is private to
//! it, so the sink sends these bytes with `insert_formatted`. In the common case there is no
//! decoded row at all: `schemas::chained_row` hands this serializer a chained datum's columns
//! straight from its bytes (`batch::Entry::from_datum`), the same calls with the same values.
//!
//! Every value is checked against its column's type as the server reports it ([`Layout`],
//! read from `system.columns` after the migrations), which is what the crate's row
//! validation does: a row that does not match the table is an error, never bytes the server
//! would read as something else. [`read_row`] reads the bytes back (a fork alarm needs the
//! offered record; the tests check the round trip).
//!
//! The format (ClickHouse docs, "RowBinary"): columns back to back in the INSERT's column
//! order; integers and floats little-endian at their width; `String` as a LEB128 length and
//! the bytes; `Nullable(T)` as one byte, 1 for NULL, else 0 and the value; `Array(T)` as a
//! LEB128 count and the elements. `DateTime` is its `UInt32` seconds.

use std::fmt;

use serde::de::{self, DeserializeOwned, SeqAccess, Visitor};
use serde::ser::{self, Impossible, Serialize};
use thiserror::Error;

/// Why a row could not be written or read.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RowBinaryError {
    #[error(
        "column `{column}` is `{table_type}` in the table, which a {value} cannot be written as"
    )]
    Mismatch {
        column: &'static str,
        table_type: String,
        value: &'static str,
    },
    #[error("the table has no column `{0}` (are the migrations applied?)")]
    MissingColumn(&'static str),
    #[error("column `{column}`: type `{table_type}` is not one rows are written as")]
    UnsupportedType {
        column: &'static str,
        table_type: String,
    },
    #[error("the row's field `{found}` comes where column `{expected}` was expected")]
    FieldOrder {
        expected: &'static str,
        found: &'static str,
    },
    #[error("the row has {found} fields for {expected} columns")]
    FieldCount { expected: usize, found: usize },
    #[error("row bytes: {0}")]
    Read(String),
    #[error("{0}")]
    Custom(String),
}

impl ser::Error for RowBinaryError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        RowBinaryError::Custom(msg.to_string())
    }
}

impl de::Error for RowBinaryError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        RowBinaryError::Read(msg.to_string())
    }
}

/// The shape of a column's values in `RowBinary`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ColumnType {
    Int { bytes: u8, signed: bool },
    Float { bytes: u8 },
    String,
    Nullable(Box<ColumnType>),
    Array(Box<ColumnType>),
}

impl ColumnType {
    /// Parses a type as `system.columns` spells it. `None` for types rows are not written as.
    pub fn parse(t: &str) -> Option<ColumnType> {
        let t = t.trim();
        let inner = |prefix: &str| {
            t.strip_prefix(prefix)
                .and_then(|r| r.strip_prefix('('))
                .and_then(|r| r.strip_suffix(')'))
        };
        if let Some(i) = inner("Nullable") {
            return Some(ColumnType::Nullable(Box::new(ColumnType::parse(i)?)));
        }
        if let Some(i) = inner("Array") {
            return Some(ColumnType::Array(Box::new(ColumnType::parse(i)?)));
        }
        // Same bytes as the dictionary's type.
        if let Some(i) = inner("LowCardinality") {
            return ColumnType::parse(i);
        }
        // `DateTime` and `DateTime('zone')`: UInt32 seconds.
        if t == "DateTime" || inner("DateTime").is_some() {
            return Some(ColumnType::Int {
                bytes: 4,
                signed: false,
            });
        }
        let int = |bytes, signed| Some(ColumnType::Int { bytes, signed });
        match t {
            "String" => Some(ColumnType::String),
            "Int8" => int(1, true),
            "Int16" => int(2, true),
            "Int32" => int(4, true),
            "Int64" => int(8, true),
            "UInt8" | "Bool" => int(1, false),
            "UInt16" => int(2, false),
            "UInt32" => int(4, false),
            "UInt64" => int(8, false),
            "Float32" => Some(ColumnType::Float { bytes: 4 }),
            "Float64" => Some(ColumnType::Float { bytes: 8 }),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
struct Column {
    name: &'static str,
    table_type: String,
    ty: ColumnType,
}

/// The columns a row type is written to, in its fields' order, with the table's types.
#[derive(Debug, Clone, PartialEq)]
pub struct Layout {
    columns: Vec<Column>,
}

impl Layout {
    /// `names`: the row type's columns in field order (`clickhouse::Row::COLUMN_NAMES`);
    /// `table`: (name, type) of the table's columns, as `system.columns` lists them. The
    /// table may have more columns (defaults, materialized ones); every name must be there.
    pub fn new<'a>(
        names: &[&'static str],
        table: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Layout, RowBinaryError> {
        let table: Vec<(&str, &str)> = table.into_iter().collect();
        let columns = names
            .iter()
            .map(|&name| {
                let (_, t) = table
                    .iter()
                    .find(|(n, _)| *n == name)
                    .ok_or(RowBinaryError::MissingColumn(name))?;
                let ty = ColumnType::parse(t).ok_or_else(|| RowBinaryError::UnsupportedType {
                    column: name,
                    table_type: (*t).to_owned(),
                })?;
                Ok(Column {
                    name,
                    table_type: (*t).to_owned(),
                    ty,
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(Layout { columns })
    }

    /// `a,b,…` (backquoted) for `INSERT INTO t(…) FORMAT RowBinary`.
    pub fn column_list(&self) -> String {
        let names: Vec<String> = self
            .columns
            .iter()
            .map(|c| format!("`{}`", c.name.replace('`', "\\`")))
            .collect();
        names.join(",")
    }
}

/// Appends `row` (a struct whose fields are the layout's columns, in order) to `out`. On an
/// error `out` is left as it was.
pub fn write_row<T: Serialize>(
    row: &T,
    layout: &Layout,
    out: &mut Vec<u8>,
) -> Result<(), RowBinaryError> {
    let start = out.len();
    let r = row.serialize(ValueSer {
        out: &mut *out,
        target: Target::Row(layout),
    });
    if r.is_err() {
        out.truncate(start);
    }
    r
}

/// Reads one row written by [`write_row`]; all of `bytes` must be that row.
pub fn read_row<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, RowBinaryError> {
    let mut de = Reader { input: bytes };
    let v = T::deserialize(&mut de)?;
    if !de.input.is_empty() {
        return Err(RowBinaryError::Read(format!(
            "{} bytes left after the row",
            de.input.len()
        )));
    }
    Ok(v)
}

fn put_leb128(out: &mut Vec<u8>, mut v: u64) {
    loop {
        let b = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(b);
            return;
        }
        out.push(b | 0x80);
    }
}

// ---- writing -----------------------------------------------------------------------------

/// What a value is written as: the whole row (a struct of the layout's columns, in order), or
/// one value of `column`, of (table) type `ty` (the column's, or inside it).
#[derive(Clone, Copy)]
enum Target<'a> {
    Row(&'a Layout),
    Value {
        column: &'a Column,
        ty: &'a ColumnType,
    },
}

struct ValueSer<'a> {
    out: &'a mut Vec<u8>,
    target: Target<'a>,
}

impl<'a> ValueSer<'a> {
    fn mismatch(&self, value: &'static str) -> RowBinaryError {
        match self.target {
            Target::Row(_) => {
                RowBinaryError::Custom(format!("a row is a struct of its columns, not a {value}"))
            }
            Target::Value { column, .. } => RowBinaryError::Mismatch {
                column: column.name,
                table_type: column.table_type.clone(),
                value,
            },
        }
    }
    /// The bytes of a fixed-width value, if the target is a column of exactly its type.
    fn fixed(self, want: ColumnType, le: &[u8], value: &'static str) -> Result<(), RowBinaryError> {
        match self.target {
            Target::Value { ty, .. } if *ty == want => {
                self.out.extend_from_slice(le);
                Ok(())
            }
            _ => Err(self.mismatch(value)),
        }
    }
    fn int(
        self,
        bytes: u8,
        signed: bool,
        le: &[u8],
        value: &'static str,
    ) -> Result<(), RowBinaryError> {
        self.fixed(ColumnType::Int { bytes, signed }, le, value)
    }
    /// Inside a column: the same column, at type `ty`.
    fn inner(out: &'a mut Vec<u8>, column: &'a Column, ty: &'a ColumnType) -> Self {
        ValueSer {
            out,
            target: Target::Value { column, ty },
        }
    }
}

fn unsupported(what: &str) -> RowBinaryError {
    RowBinaryError::Custom(format!("a {what} is not written as a column value"))
}

impl<'a> ser::Serializer for ValueSer<'a> {
    type Ok = ();
    type Error = RowBinaryError;
    type SerializeSeq = Elements<'a>;
    type SerializeTuple = Impossible<(), RowBinaryError>;
    type SerializeTupleStruct = Impossible<(), RowBinaryError>;
    type SerializeTupleVariant = Impossible<(), RowBinaryError>;
    type SerializeMap = Impossible<(), RowBinaryError>;
    type SerializeStruct = RowSer<'a>;
    type SerializeStructVariant = Impossible<(), RowBinaryError>;

    fn serialize_bool(self, v: bool) -> Result<(), RowBinaryError> {
        self.int(1, false, &[u8::from(v)], "bool")
    }
    fn serialize_i8(self, v: i8) -> Result<(), RowBinaryError> {
        self.int(1, true, &v.to_le_bytes(), "i8")
    }
    fn serialize_i16(self, v: i16) -> Result<(), RowBinaryError> {
        self.int(2, true, &v.to_le_bytes(), "i16")
    }
    fn serialize_i32(self, v: i32) -> Result<(), RowBinaryError> {
        self.int(4, true, &v.to_le_bytes(), "i32")
    }
    fn serialize_i64(self, v: i64) -> Result<(), RowBinaryError> {
        self.int(8, true, &v.to_le_bytes(), "i64")
    }
    fn serialize_u8(self, v: u8) -> Result<(), RowBinaryError> {
        self.int(1, false, &v.to_le_bytes(), "u8")
    }
    fn serialize_u16(self, v: u16) -> Result<(), RowBinaryError> {
        self.int(2, false, &v.to_le_bytes(), "u16")
    }
    fn serialize_u32(self, v: u32) -> Result<(), RowBinaryError> {
        self.int(4, false, &v.to_le_bytes(), "u32")
    }
    fn serialize_u64(self, v: u64) -> Result<(), RowBinaryError> {
        self.int(8, false, &v.to_le_bytes(), "u64")
    }
    fn serialize_f32(self, v: f32) -> Result<(), RowBinaryError> {
        self.fixed(ColumnType::Float { bytes: 4 }, &v.to_le_bytes(), "f32")
    }
    fn serialize_f64(self, v: f64) -> Result<(), RowBinaryError> {
        self.fixed(ColumnType::Float { bytes: 8 }, &v.to_le_bytes(), "f64")
    }
    fn serialize_char(self, _: char) -> Result<(), RowBinaryError> {
        Err(self.mismatch("char"))
    }
    fn serialize_str(self, v: &str) -> Result<(), RowBinaryError> {
        self.serialize_bytes(v.as_bytes())
    }
    fn serialize_bytes(self, v: &[u8]) -> Result<(), RowBinaryError> {
        match self.target {
            Target::Value {
                ty: ColumnType::String,
                ..
            } => {
                put_leb128(self.out, v.len() as u64);
                self.out.extend_from_slice(v);
                Ok(())
            }
            _ => Err(self.mismatch("string")),
        }
    }
    fn serialize_none(self) -> Result<(), RowBinaryError> {
        match self.target {
            Target::Value {
                ty: ColumnType::Nullable(_),
                ..
            } => {
                self.out.push(1);
                Ok(())
            }
            _ => Err(self.mismatch("missing (None) value")),
        }
    }
    fn serialize_some<T: ?Sized + Serialize>(self, value: &T) -> Result<(), RowBinaryError> {
        match self.target {
            Target::Value {
                column,
                ty: ColumnType::Nullable(inner),
            } => {
                self.out.push(0);
                value.serialize(ValueSer::inner(self.out, column, inner))
            }
            _ => Err(self.mismatch("optional value")),
        }
    }
    fn serialize_unit(self) -> Result<(), RowBinaryError> {
        Err(self.mismatch("unit"))
    }
    fn serialize_unit_struct(self, _: &'static str) -> Result<(), RowBinaryError> {
        Err(self.mismatch("unit struct"))
    }
    fn serialize_unit_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
    ) -> Result<(), RowBinaryError> {
        Err(self.mismatch("enum"))
    }
    fn serialize_newtype_struct<T: ?Sized + Serialize>(
        self,
        _: &'static str,
        value: &T,
    ) -> Result<(), RowBinaryError> {
        value.serialize(self)
    }
    fn serialize_newtype_variant<T: ?Sized + Serialize>(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: &T,
    ) -> Result<(), RowBinaryError> {
        Err(self.mismatch("enum"))
    }
    fn serialize_seq(self, len: Option<usize>) -> Result<Elements<'a>, RowBinaryError> {
        let Target::Value {
            column,
            ty: ColumnType::Array(inner),
        } = self.target
        else {
            return Err(self.mismatch("sequence"));
        };
        let len = len.ok_or_else(|| unsupported("sequence of unknown length"))?;
        put_leb128(self.out, len as u64);
        Ok(Elements {
            out: self.out,
            column,
            ty: inner,
            left: len,
        })
    }
    fn serialize_tuple(self, _: usize) -> Result<Self::SerializeTuple, RowBinaryError> {
        Err(self.mismatch("tuple"))
    }
    fn serialize_tuple_struct(
        self,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleStruct, RowBinaryError> {
        Err(self.mismatch("tuple struct"))
    }
    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleVariant, RowBinaryError> {
        Err(self.mismatch("enum"))
    }
    fn serialize_map(self, _: Option<usize>) -> Result<Self::SerializeMap, RowBinaryError> {
        Err(self.mismatch("map"))
    }
    fn serialize_struct(self, _: &'static str, len: usize) -> Result<RowSer<'a>, RowBinaryError> {
        let Target::Row(layout) = self.target else {
            return Err(self.mismatch("struct"));
        };
        if len != layout.columns.len() {
            return Err(RowBinaryError::FieldCount {
                expected: layout.columns.len(),
                found: len,
            });
        }
        Ok(RowSer {
            out: self.out,
            layout,
            next: 0,
        })
    }
    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeStructVariant, RowBinaryError> {
        Err(self.mismatch("enum"))
    }
}

/// The row's fields, one per column of the layout, in its order.
struct RowSer<'a> {
    out: &'a mut Vec<u8>,
    layout: &'a Layout,
    next: usize,
}

impl ser::SerializeStruct for RowSer<'_> {
    type Ok = ();
    type Error = RowBinaryError;

    fn serialize_field<T: ?Sized + Serialize>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<(), RowBinaryError> {
        let column = self
            .layout
            .columns
            .get(self.next)
            .ok_or(RowBinaryError::FieldCount {
                expected: self.layout.columns.len(),
                found: self.next + 1,
            })?;
        // The same literal most of the time (both derives name the field): skip the compare.
        if !std::ptr::eq(column.name, key) && column.name != key {
            return Err(RowBinaryError::FieldOrder {
                expected: column.name,
                found: key,
            });
        }
        self.next += 1;
        value.serialize(ValueSer::inner(&mut *self.out, column, &column.ty))
    }

    fn end(self) -> Result<(), RowBinaryError> {
        if self.next != self.layout.columns.len() {
            return Err(RowBinaryError::FieldCount {
                expected: self.layout.columns.len(),
                found: self.next,
            });
        }
        Ok(())
    }
}

/// An array's elements; exactly the announced count must follow.
struct Elements<'a> {
    out: &'a mut Vec<u8>,
    column: &'a Column,
    ty: &'a ColumnType,
    left: usize,
}

impl ser::SerializeSeq for Elements<'_> {
    type Ok = ();
    type Error = RowBinaryError;

    fn serialize_element<T: ?Sized + Serialize>(
        &mut self,
        value: &T,
    ) -> Result<(), RowBinaryError> {
        self.left = self
            .left
            .checked_sub(1)
            .ok_or_else(|| unsupported("sequence longer than its announced length"))?;
        value.serialize(ValueSer::inner(&mut *self.out, self.column, self.ty))
    }

    fn end(self) -> Result<(), RowBinaryError> {
        if self.left == 0 {
            Ok(())
        } else {
            Err(unsupported("sequence shorter than its announced length"))
        }
    }
}

// ---- reading -----------------------------------------------------------------------------

/// Reads by the Rust type (the bytes were written against the table's types from the same
/// type's values, so its shape is theirs).
struct Reader<'de> {
    input: &'de [u8],
}

impl<'de> Reader<'de> {
    fn take(&mut self, n: usize) -> Result<&'de [u8], RowBinaryError> {
        if self.input.len() < n {
            return Err(RowBinaryError::Read(format!(
                "{n} bytes wanted, {} left",
                self.input.len()
            )));
        }
        let (head, rest) = self.input.split_at(n);
        self.input = rest;
        Ok(head)
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], RowBinaryError> {
        let mut a = [0; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }
    fn leb128(&mut self) -> Result<u64, RowBinaryError> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.array::<1>()?[0];
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(RowBinaryError::Read("length longer than 64 bits".into()))
    }
    fn len(&mut self) -> Result<usize, RowBinaryError> {
        let n = self.leb128()?;
        usize::try_from(n)
            .ok()
            .filter(|&n| n <= self.input.len())
            .ok_or_else(|| RowBinaryError::Read(format!("length {n} past the row's end")))
    }
    fn str(&mut self) -> Result<&'de str, RowBinaryError> {
        let n = self.len()?;
        std::str::from_utf8(self.take(n)?).map_err(|e| RowBinaryError::Read(e.to_string()))
    }
}

macro_rules! read_number {
    ($($method:ident $ty:ty => $visit:ident),+ $(,)?) => {$(
        fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, RowBinaryError> {
            visitor.$visit(<$ty>::from_le_bytes(self.array()?))
        }
    )+};
}

impl<'de> de::Deserializer<'de> for &mut Reader<'de> {
    type Error = RowBinaryError;

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, RowBinaryError> {
        Err(RowBinaryError::Read(
            "RowBinary is not self-describing: read as a concrete type".into(),
        ))
    }

    read_number! {
        deserialize_i8 i8 => visit_i8,
        deserialize_i16 i16 => visit_i16,
        deserialize_i32 i32 => visit_i32,
        deserialize_i64 i64 => visit_i64,
        deserialize_u8 u8 => visit_u8,
        deserialize_u16 u16 => visit_u16,
        deserialize_u32 u32 => visit_u32,
        deserialize_u64 u64 => visit_u64,
        deserialize_f32 f32 => visit_f32,
        deserialize_f64 f64 => visit_f64,
    }

    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, RowBinaryError> {
        match self.array::<1>()?[0] {
            0 => visitor.visit_bool(false),
            1 => visitor.visit_bool(true),
            b => Err(RowBinaryError::Read(format!("bool byte {b}"))),
        }
    }
    fn deserialize_char<V: Visitor<'de>>(self, _: V) -> Result<V::Value, RowBinaryError> {
        Err(unsupported("char"))
    }
    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, RowBinaryError> {
        visitor.visit_borrowed_str(self.str()?)
    }
    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, RowBinaryError> {
        self.deserialize_str(visitor)
    }
    fn deserialize_bytes<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, RowBinaryError> {
        let n = self.len()?;
        visitor.visit_borrowed_bytes(self.take(n)?)
    }
    fn deserialize_byte_buf<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, RowBinaryError> {
        self.deserialize_bytes(visitor)
    }
    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, RowBinaryError> {
        match self.array::<1>()?[0] {
            1 => visitor.visit_none(),
            0 => visitor.visit_some(self),
            b => Err(RowBinaryError::Read(format!("Nullable flag byte {b}"))),
        }
    }
    fn deserialize_unit<V: Visitor<'de>>(self, _: V) -> Result<V::Value, RowBinaryError> {
        Err(unsupported("unit"))
    }
    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        _: V,
    ) -> Result<V::Value, RowBinaryError> {
        Err(unsupported("unit struct"))
    }
    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        visitor: V,
    ) -> Result<V::Value, RowBinaryError> {
        visitor.visit_newtype_struct(self)
    }
    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, RowBinaryError> {
        let left = usize::try_from(self.leb128()?)
            .map_err(|_| RowBinaryError::Read("array count past usize".into()))?;
        visitor.visit_seq(Counted { de: self, left })
    }
    fn deserialize_tuple<V: Visitor<'de>>(
        self,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, RowBinaryError> {
        visitor.visit_seq(Counted {
            de: self,
            left: len,
        })
    }
    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, RowBinaryError> {
        self.deserialize_tuple(len, visitor)
    }
    fn deserialize_map<V: Visitor<'de>>(self, _: V) -> Result<V::Value, RowBinaryError> {
        Err(unsupported("map"))
    }
    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, RowBinaryError> {
        self.deserialize_tuple(fields.len(), visitor)
    }
    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _: &'static str,
        _: &'static [&'static str],
        _: V,
    ) -> Result<V::Value, RowBinaryError> {
        Err(unsupported("enum"))
    }
    fn deserialize_identifier<V: Visitor<'de>>(self, _: V) -> Result<V::Value, RowBinaryError> {
        Err(unsupported("identifier"))
    }
    fn deserialize_ignored_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, RowBinaryError> {
        Err(unsupported("ignored value"))
    }
}

/// `left` more values (a struct's fields, a tuple's or an array's elements).
struct Counted<'a, 'de> {
    de: &'a mut Reader<'de>,
    left: usize,
}

impl<'de> SeqAccess<'de> for Counted<'_, 'de> {
    type Error = RowBinaryError;

    fn next_element_seed<T: de::DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, RowBinaryError> {
        if self.left == 0 {
            return Ok(None);
        }
        self.left -= 1;
        seed.deserialize(&mut *self.de).map(Some)
    }

    fn size_hint(&self) -> Option<usize> {
        // Never trust a count from the bytes for preallocation beyond what they can hold.
        Some(self.left.min(self.de.input.len()))
    }
}

/// `audit_events`' columns as its first migration creates them, for tests and benches that
/// have no server (the sink reads the server's, [`crate::store::Store::row_layout`]). Later
/// upgrades only make some of them `LowCardinality`, which is written the same way.
pub fn first_migration_layout() -> Result<Layout, RowBinaryError> {
    Layout::new(
        <schemas::flat::AuditRow as clickhouse::Row>::COLUMN_NAMES,
        first_migration_columns(),
    )
}

/// (name, type) of `audit_events`' columns in its first migration's `CREATE TABLE`.
pub(crate) fn first_migration_columns() -> Vec<(&'static str, &'static str)> {
    let sql = crate::migrations::MIGRATIONS
        .first()
        .map(|m| m.sql)
        .unwrap_or_default();
    let create = sql.find("CREATE TABLE").map_or("", |i| &sql[i..]);
    let body = match (create.find('('), create.find("\n)")) {
        (Some(a), Some(b)) if a < b => &create[a + 1..b],
        _ => "",
    };
    body.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("--"))
        .filter_map(|l| {
            let (name, rest) = l.split_once(' ')?;
            let ty = rest.split(" DEFAULT").next()?.trim_end_matches(',');
            Some((name, ty))
        })
        .collect()
}

#[cfg(test)]
pub(crate) fn migrated_layout() -> Layout {
    first_migration_layout().expect("the first migration's audit_events")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use schemas::flat::AuditRow;
    use schemas::testing::arb_chained_event;
    use serde::Deserialize;

    #[derive(Debug, PartialEq, serde::Serialize, Deserialize)]
    struct Small {
        a: i32,
        s: String,
        n: Option<i64>,
        none: Option<String>,
        v: Vec<String>,
        t: u32,
        f: f64,
        flag: u8,
    }

    const SMALL: &[&str] = &["a", "s", "n", "none", "v", "t", "f", "flag"];

    fn small_layout() -> Layout {
        Layout::new(
            SMALL,
            [
                ("flag", "UInt8"),
                ("a", "Int32"),
                ("s", "LowCardinality(String)"),
                ("n", "Nullable(Int64)"),
                ("none", "Nullable(String)"),
                ("v", "Array(String)"),
                ("t", "DateTime('UTC')"),
                ("f", "Float64"),
                ("inserted_at", "DateTime('UTC')"),
            ],
        )
        .expect("layout")
    }

    fn small() -> Small {
        Small {
            a: -2,
            s: "é".into(),
            n: Some(300),
            none: None,
            v: vec!["x".into(), String::new()],
            t: 0x0102_0304,
            f: 1.5,
            flag: 1,
        }
    }

    /// The bytes, spelled out from the format's definition.
    #[test]
    fn a_row_is_clickhouses_rowbinary_byte_for_byte() {
        let mut out = vec![0xEE]; // appended after what is there
        write_row(&small(), &small_layout(), &mut out).expect("write");
        let mut want = vec![0xEE];
        want.extend_from_slice(&(-2i32).to_le_bytes()); // Int32
        want.extend_from_slice(&[2, 0xC3, 0xA9]); // String: length, UTF-8
        want.push(0); // Nullable: not NULL…
        want.extend_from_slice(&300i64.to_le_bytes()); // …then the value
        want.push(1); // NULL
        want.extend_from_slice(&[2, 1, b'x', 0]); // Array(String): count, elements
        want.extend_from_slice(&[4, 3, 2, 1]); // DateTime: UInt32 LE
        want.extend_from_slice(&1.5f64.to_le_bytes());
        want.push(1);
        assert_eq!(out, want);
        assert_eq!(read_row::<Small>(&out[1..]).expect("read"), small());
        assert_eq!(
            small_layout().column_list(),
            "`a`,`s`,`n`,`none`,`v`,`t`,`f`,`flag`"
        );
    }

    #[test]
    fn lengths_are_leb128() {
        for (n, prefix) in [
            (0usize, vec![0u8]),
            (127, vec![0x7f]),
            (128, vec![0x80, 0x01]),
            (300, vec![0xAC, 0x02]),
            (1 << 21, vec![0x80, 0x80, 0x80, 0x01]),
        ] {
            let mut row = small();
            row.s = "a".repeat(n);
            let mut out = Vec::new();
            write_row(&row, &small_layout(), &mut out).expect("write");
            assert_eq!(&out[4..4 + prefix.len()], &prefix[..], "length {n}");
            assert_eq!(read_row::<Small>(&out).expect("read").s.len(), n);
        }
    }

    #[test]
    fn a_value_the_column_cannot_hold_is_refused_and_nothing_written() {
        let table = |over: (&'static str, &'static str)| {
            let mut t: Vec<(&str, &str)> = vec![
                ("a", "Int32"),
                ("s", "String"),
                ("n", "Nullable(Int64)"),
                ("none", "Nullable(String)"),
                ("v", "Array(String)"),
                ("t", "DateTime"),
                ("f", "Float64"),
                ("flag", "UInt8"),
            ];
            for c in &mut t {
                if c.0 == over.0 {
                    c.1 = over.1;
                }
            }
            Layout::new(SMALL, t).expect("layout")
        };
        for (over, value) in [
            (("a", "Int64"), "i32"),
            (("a", "UInt32"), "i32"),
            (("s", "Array(String)"), "string"),
            (("n", "Int64"), "optional value"),
            (("n", "Nullable(Int32)"), "i64"),
            (("none", "String"), "missing (None) value"),
            (("v", "String"), "sequence"),
            (("v", "Array(Int64)"), "string"),
            (("t", "Int32"), "u32"),
            (("f", "Float32"), "f64"),
        ] {
            let mut out = vec![7];
            let e = write_row(&small(), &table(over), &mut out).expect_err("mismatch");
            assert_eq!(
                e,
                RowBinaryError::Mismatch {
                    column: over.0,
                    table_type: over.1.to_owned(),
                    value,
                },
                "{over:?}"
            );
            assert_eq!(out, vec![7], "nothing of the row is left behind");
        }
        assert_eq!(
            Layout::new(SMALL, [("a", "Int32")]).expect_err("missing"),
            RowBinaryError::MissingColumn("s")
        );
        let mut t: Vec<(&str, &str)> = SMALL.iter().map(|n| (*n, "String")).collect();
        t[0].1 = "Enum8('x' = 1)";
        assert!(matches!(
            Layout::new(SMALL, t).expect_err("unsupported"),
            RowBinaryError::UnsupportedType { column: "a", .. }
        ));
        // Only a struct is a row.
        let mut out = vec![7];
        assert!(matches!(
            write_row(&5i32, &small_layout(), &mut out).expect_err("not a row"),
            RowBinaryError::Custom(m) if m.contains("a row is a struct")
        ));
        assert_eq!(out, vec![7]);
        // Fields in another order than the layout's columns.
        let swapped = Layout {
            columns: {
                let mut c = small_layout().columns;
                c.swap(0, 1);
                c
            },
        };
        assert_eq!(
            write_row(&small(), &swapped, &mut Vec::new()).expect_err("order"),
            RowBinaryError::FieldOrder {
                expected: "s",
                found: "a"
            }
        );
    }

    #[test]
    fn damaged_bytes_are_an_error_not_a_row() {
        let mut out = Vec::new();
        write_row(&small(), &small_layout(), &mut out).expect("write");
        for cut in 0..out.len() {
            assert!(read_row::<Small>(&out[..cut]).is_err(), "cut at {cut}");
        }
        let mut long = out.clone();
        long.push(0);
        assert!(read_row::<Small>(&long).is_err());
        let mut bad_flag = out.clone();
        bad_flag[4 + 3] = 2; // `n`'s Nullable byte
        assert!(read_row::<Small>(&bad_flag).is_err());
    }

    #[test]
    fn column_types_parse_as_the_server_spells_them() {
        let int = |bytes, signed| Some(ColumnType::Int { bytes, signed });
        assert_eq!(ColumnType::parse("DateTime('UTC')"), int(4, false));
        assert_eq!(ColumnType::parse("DateTime"), int(4, false));
        assert_eq!(
            ColumnType::parse("LowCardinality(Nullable(String))"),
            Some(ColumnType::Nullable(Box::new(ColumnType::String)))
        );
        assert_eq!(
            ColumnType::parse("Array(Nullable(Int64))"),
            Some(ColumnType::Array(Box::new(ColumnType::Nullable(Box::new(
                ColumnType::Int {
                    bytes: 8,
                    signed: true
                }
            )))))
        );
        for t in [
            "DateTime64(6, 'UTC')",
            "UUID",
            "Map(String, String)",
            "Enum8('a' = 1)",
        ] {
            assert_eq!(ColumnType::parse(t), None, "{t}");
        }
    }

    /// Any chained event's row fits the migrated table's types and reads back as itself. (The
    /// event strategy is deep: run on a thread with a big stack, as the other users of it do.)
    #[test]
    fn every_audit_row_is_written_and_read_back_exactly() {
        std::thread::Builder::new()
            .stack_size(256 << 20)
            .spawn(|| {
                let layout = migrated_layout();
                let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
                    cases: 64,
                    ..ProptestConfig::default()
                });
                runner
                    .run(&(arb_chained_event(), any::<i64>()), |(c, offset)| {
                        let row = AuditRow::from_chained(&c, offset);
                        let mut out = Vec::new();
                        write_row(&row, &layout, &mut out).expect("write");
                        prop_assert_eq!(read_row::<AuditRow>(&out).expect("read"), row);
                        Ok(())
                    })
                    .expect("property");
            })
            .expect("spawn")
            .join()
            .expect("property holds");
    }
}
