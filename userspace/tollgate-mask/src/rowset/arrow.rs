//! Arrow IPC streams: the inline `rowsetBase64` and streamed chunk bodies.
//!
//! The input is cut into whole IPC messages here (so errors carry byte offsets, the memory
//! held is one message, and an end-of-stream marker is seen), each message is decoded by
//! `arrow_ipc`'s `StreamDecoder`, every record batch is masked column by column, and the
//! result is written by a `StreamWriter`: the (rewritten) schema once, then each batch as soon
//! as it is decoded, then an end-of-stream marker if the input had one.

use std::borrow::Cow;
use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use arrow_array::builder::{GenericStringBuilder, StringViewBuilder};
use arrow_array::cast::AsArray;
use arrow_array::types::{
    ArrowPrimitiveType, Date32Type, Date64Type, Decimal128Type, Float32Type, Float64Type,
    Int16Type, Int32Type, Int64Type, Int8Type, TimestampMicrosecondType, TimestampMillisecondType,
    TimestampNanosecondType, TimestampSecondType,
};
use arrow_array::{
    new_null_array, Array, ArrayRef, GenericStringArray, OffsetSizeTrait, RecordBatch,
    RecordBatchOptions,
};
use arrow_buffer::{Buffer, NullBufferBuilder, OffsetBuffer, ScalarBuffer};
use arrow_ipc::convert::try_fb_to_schema;
use arrow_ipc::reader::{read_dictionary, RecordBatchDecoder};
use arrow_ipc::writer::{IpcWriteOptions, StreamWriter};
use arrow_ipc::MessageHeader;
use arrow_schema::{DataType, Field, Metadata, Schema, SchemaRef, TimeUnit};

use super::error::describe_arrow_error;
use super::plan::{Column, Op, Plan, TEXT_LENGTH};
use super::value::{
    default_scale, generalized_year, pow10, push_date, push_decimal, push_float, push_hex,
    push_time, push_timestamp, tz_offset, SfType,
};
use super::{ColumnCount, ColumnCounts, DetectRule, RowsetError};
use crate::method::{push_year, Method, REDACTED};
use crate::text::mask_text_by_kind;

/// Largest IPC message header (flatbuffer) accepted; real schema messages are a few KiB.
const MAX_METADATA: usize = 64 << 20;

/// Upper bound on what is reserved up front for a message body whose length is declared.
const MAX_PREALLOC: usize = 64 << 20;

const CONTINUATION: [u8; 4] = [0xff; 4];

/// Batches larger than this (in memory) are masked and written in slices of about this size.
const SLICE_BYTES: usize = 1 << 20;

/// Output a call writes of a big batch before it leaves the rest to `drain`.
const OUTPUT_STEP: usize = 2 << 20;

/// A decoded batch being written slice by slice.
struct Held {
    batch: RecordBatch,
    /// Its input batch's number, for errors.
    number: usize,
    /// The first row not written yet.
    next: usize,
    /// Rows per slice.
    step: usize,
}

/// How to render a masked column's values as text.
#[derive(Debug, Clone, Copy)]
enum Conv {
    /// Utf8, LargeUtf8, Utf8View: the text as is.
    Str,
    /// Int8–Int64 holding `value / 10^scale` (FIXED).
    Int { scale: u32 },
    /// Decimal128 (FIXED).
    Decimal { scale: u32 },
    /// Float32/Float64 (REAL).
    Float,
    /// Date32 (days) or Date64 (milliseconds).
    Date,
    /// Int32/Int64 holding `seconds since midnight * 10^scale` (TIME).
    Time { scale: u32 },
    /// Int64 holding `seconds since the epoch * 10^unit`, or an Arrow Timestamp.
    Ts { unit: u32, scale: u32, zone: Zone },
    /// Snowflake's timestamp struct: `epoch` (seconds, or `* 10^unit` without `fraction`),
    /// optional `fraction` (nanoseconds), optional `timezone` (index: minutes + 1440).
    TsStruct {
        epoch: usize,
        fraction: Option<usize>,
        timezone: Option<usize>,
        unit: u32,
        scale: u32,
        zone: Zone,
    },
    /// Boolean.
    Bool,
    /// Binary, LargeBinary, FixedSizeBinary, BinaryView: upper-case hex.
    Binary,
}

/// How a timestamp's zone is rendered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Zone {
    /// No zone (TIMESTAMP_NTZ).
    None,
    /// UTC, written ` +00:00` (TIMESTAMP_LTZ).
    Utc,
    /// The struct's `timezone` field (TIMESTAMP_TZ).
    Field,
}

/// What happens to one column of every record batch.
#[derive(Debug, Clone)]
enum ArrowOp {
    Keep,
    Null,
    Text { method: Method, conv: Conv },
    Detect(DetectRule),
}

fn is_string(dt: &DataType) -> bool {
    matches!(
        dt,
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
    )
}

fn unit_digits(unit: TimeUnit) -> u32 {
    match unit {
        TimeUnit::Second => 0,
        TimeUnit::Millisecond => 3,
        TimeUnit::Microsecond => 6,
        TimeUnit::Nanosecond => 9,
    }
}

/// The conversion for a masked column of logical type `t` stored as `dt`, if supported.
fn conv_for(t: SfType, dt: &DataType, scale: u32) -> Option<Conv> {
    use DataType as D;
    let ts_zone = match t {
        SfType::TimestampNtz => Some(Zone::None),
        SfType::TimestampLtz => Some(Zone::Utc),
        SfType::TimestampTz => Some(Zone::Utc),
        _ => None,
    };
    Some(match (t, dt) {
        (_, d) if is_string(d) => Conv::Str,
        (SfType::Fixed, D::Int8 | D::Int16 | D::Int32 | D::Int64) => Conv::Int { scale },
        (SfType::Fixed, D::Decimal128(_, s)) if *s >= 0 => Conv::Decimal { scale: *s as u32 },
        (SfType::Real, D::Float32 | D::Float64) => Conv::Float,
        (SfType::Date, D::Date32 | D::Date64) => Conv::Date,
        (SfType::Time, D::Int32 | D::Int64) if scale <= 9 => Conv::Time { scale },
        (SfType::TimestampNtz | SfType::TimestampLtz, D::Int64) if scale <= 9 => Conv::Ts {
            unit: scale,
            scale,
            zone: ts_zone?,
        },
        (_, D::Timestamp(unit, tz)) if ts_zone.is_some() => Conv::Ts {
            unit: unit_digits(*unit),
            scale: scale.min(9),
            zone: if tz.is_some() { Zone::Utc } else { Zone::None },
        },
        (_, D::Struct(fields)) if ts_zone.is_some() && scale <= 9 => {
            let find = |name: &str, want: &DataType| {
                fields
                    .iter()
                    .position(|f| f.name() == name)
                    .filter(|&i| fields[i].data_type() == want)
            };
            let epoch = find("epoch", &D::Int64)?;
            let fraction = find("fraction", &D::Int32);
            let timezone = find("timezone", &D::Int32);
            Conv::TsStruct {
                epoch,
                fraction,
                timezone,
                unit: if fraction.is_some() { 0 } else { scale },
                scale,
                zone: if timezone.is_some() {
                    Zone::Field
                } else {
                    ts_zone?
                },
            }
        }
        (SfType::Boolean | SfType::Other, D::Boolean) => Conv::Bool,
        (
            SfType::Binary | SfType::Other,
            D::Binary | D::LargeBinary | D::FixedSizeBinary(_) | D::BinaryView,
        ) => Conv::Binary,
        _ => return None,
    })
}

/// Field metadata for a column that became TEXT: Snowflake's TEXT keys (as in captured
/// results) replace the old type's; other keys are kept.
fn text_metadata(old: &Metadata) -> Metadata {
    const TYPE_KEYS: [&str; 7] = [
        "logicalType",
        "charLength",
        "byteLength",
        "precision",
        "scale",
        "physicalType",
        "finalType",
    ];
    let mut m = old.clone();
    for k in TYPE_KEYS {
        m.remove(k);
    }
    let len = TEXT_LENGTH.to_string();
    m.insert("logicalType", "TEXT");
    m.insert("charLength", len.clone());
    m.insert("byteLength", len);
    m.insert("precision", "38");
    m.insert("scale", "0");
    m
}

/// Resolves a column against its Arrow field: the operation and the output field.
fn resolve(column: &Column, field: &Field) -> Result<(ArrowOp, Field), RowsetError> {
    let meta = field.metadata();
    let logical = meta
        .get("logicalType")
        .map(|s| SfType::parse(s))
        .or(column.sf_type);
    let scale = meta
        .get("scale")
        .and_then(|s| s.parse::<u32>().ok())
        .map(|s| s.min(38))
        .unwrap_or_else(|| {
            if logical == column.sf_type {
                column.scale
            } else {
                logical.map_or(0, default_scale)
            }
        });
    let unsupported = |action: &'static str| RowsetError::UnsupportedType {
        column: column.index,
        name: column.name.clone(),
        action,
        logical: meta
            .get("logicalType")
            .cloned()
            .unwrap_or_else(|| format!("{:?}", logical.unwrap_or(SfType::Other)).to_uppercase()),
        physical: format!("Arrow {}", field.data_type()),
    };
    Ok(match Plan::op(column, logical) {
        Op::Keep => (ArrowOp::Keep, field.clone()),
        Op::Mask(Method::Null) => (ArrowOp::Null, field.clone().with_nullable(true)),
        Op::Mask(method) => {
            let conv = conv_for(logical.unwrap_or(SfType::Other), field.data_type(), scale)
                .ok_or_else(|| unsupported("mask"))?;
            let out = if logical == Some(SfType::Text) {
                field.clone().with_data_type(DataType::Utf8)
            } else {
                Field::new(field.name(), DataType::Utf8, true).with_metadata(text_metadata(meta))
            };
            (
                ArrowOp::Text {
                    method: method.clone(),
                    conv,
                },
                out,
            )
        }
        Op::Detect(rule) => {
            if !is_string(field.data_type()) {
                return Err(unsupported("scan"));
            }
            (ArrowOp::Detect(rule.clone()), field.clone())
        }
    })
}

/// Calls `sink(row, text)` for every row of `array`, `None` for NULL.
fn for_each_text(
    array: &dyn Array,
    conv: Conv,
    scratch: &mut String,
    bad: &dyn Fn(usize, &'static str) -> RowsetError,
    sink: &mut dyn FnMut(Option<&str>) -> Result<(), RowsetError>,
) -> Result<(), RowsetError> {
    use DataType as D;
    match (conv, array.data_type()) {
        (Conv::Str, D::Utf8) => strings(array.as_string::<i32>().iter(), sink),
        (Conv::Str, D::LargeUtf8) => strings(array.as_string::<i64>().iter(), sink),
        (Conv::Str, D::Utf8View) => strings(array.as_string_view().iter(), sink),
        (Conv::Int { scale }, D::Int8) => prim::<Int8Type>(array, scratch, bad, sink, |v, s| {
            push_decimal(s, i128::from(v), scale);
            Ok(())
        }),
        (Conv::Int { scale }, D::Int16) => prim::<Int16Type>(array, scratch, bad, sink, |v, s| {
            push_decimal(s, i128::from(v), scale);
            Ok(())
        }),
        (Conv::Int { scale }, D::Int32) => prim::<Int32Type>(array, scratch, bad, sink, |v, s| {
            push_decimal(s, i128::from(v), scale);
            Ok(())
        }),
        (Conv::Int { scale }, D::Int64) => prim::<Int64Type>(array, scratch, bad, sink, |v, s| {
            push_decimal(s, i128::from(v), scale);
            Ok(())
        }),
        (Conv::Decimal { scale }, _) => {
            prim::<Decimal128Type>(array, scratch, bad, sink, |v, s| {
                push_decimal(s, v, scale);
                Ok(())
            })
        }
        (Conv::Float, D::Float32) => prim::<Float32Type>(array, scratch, bad, sink, |v, s| {
            push_float(s, f64::from(v));
            Ok(())
        }),
        (Conv::Float, _) => prim::<Float64Type>(array, scratch, bad, sink, |v, s| {
            push_float(s, v);
            Ok(())
        }),
        (Conv::Date, D::Date32) => prim::<Date32Type>(array, scratch, bad, sink, |v, s| {
            push_date(s, i64::from(v));
            Ok(())
        }),
        (Conv::Date, _) => prim::<Date64Type>(array, scratch, bad, sink, |v, s| {
            push_date(s, v.div_euclid(86_400_000));
            Ok(())
        }),
        (Conv::Time { scale }, D::Int32) => prim::<Int32Type>(array, scratch, bad, sink, |v, s| {
            let nanos = i128::from(v) * i128::from(pow10(9 - scale));
            push_time(s, nanos, scale).ok_or("not a TIME of day")
        }),
        (Conv::Time { scale }, _) => prim::<Int64Type>(array, scratch, bad, sink, |v, s| {
            let nanos = i128::from(v) * i128::from(pow10(9 - scale));
            push_time(s, nanos, scale).ok_or("not a TIME of day")
        }),
        (Conv::Ts { unit, scale, zone }, dt) => {
            let offset = (zone == Zone::Utc).then_some(0);
            let render = |v: i64, s: &mut String| {
                let nanos = i128::from(v) * i128::from(pow10(9 - unit));
                push_timestamp(s, nanos, scale, offset).ok_or("not a TIMESTAMP")
            };
            match dt {
                D::Timestamp(TimeUnit::Second, _) => {
                    prim::<TimestampSecondType>(array, scratch, bad, sink, render)
                }
                D::Timestamp(TimeUnit::Millisecond, _) => {
                    prim::<TimestampMillisecondType>(array, scratch, bad, sink, render)
                }
                D::Timestamp(TimeUnit::Microsecond, _) => {
                    prim::<TimestampMicrosecondType>(array, scratch, bad, sink, render)
                }
                D::Timestamp(TimeUnit::Nanosecond, _) => {
                    prim::<TimestampNanosecondType>(array, scratch, bad, sink, render)
                }
                _ => prim::<Int64Type>(array, scratch, bad, sink, render),
            }
        }
        (
            Conv::TsStruct {
                epoch,
                fraction,
                timezone,
                unit,
                scale,
                zone,
            },
            _,
        ) => {
            let s = array.as_struct();
            let epoch = s.column(epoch).as_primitive::<Int64Type>();
            let fraction = fraction.map(|f| s.column(f).as_primitive::<Int32Type>());
            let timezone = timezone.map(|t| s.column(t).as_primitive::<Int32Type>());
            for i in 0..s.len() {
                if s.is_null(i) || epoch.is_null(i) {
                    sink(None)?;
                    continue;
                }
                let mut nanos = i128::from(epoch.value(i)) * i128::from(pow10(9 - unit));
                if let Some(f) = fraction {
                    nanos += i128::from(if f.is_null(i) { 0 } else { f.value(i) });
                }
                let offset = match (zone, timezone) {
                    (Zone::None, _) => None,
                    (Zone::Field, Some(tz)) if !tz.is_null(i) => Some(
                        tz_offset(i64::from(tz.value(i)))
                            .ok_or_else(|| bad(i, "not a TIMESTAMP_TZ (time zone out of range)"))?,
                    ),
                    _ => Some(0),
                };
                scratch.clear();
                push_timestamp(scratch, nanos, scale, offset)
                    .ok_or_else(|| bad(i, "not a TIMESTAMP"))?;
                sink(Some(scratch))?;
            }
            Ok(())
        }
        (Conv::Bool, _) => {
            for v in array.as_boolean().iter() {
                sink(v.map(|b| if b { "true" } else { "false" }))?;
            }
            Ok(())
        }
        (Conv::Binary, dt) => {
            let mut each = |v: Option<&[u8]>| match v {
                None => sink(None),
                Some(b) => {
                    scratch.clear();
                    push_hex(scratch, b);
                    sink(Some(scratch))
                }
            };
            match dt {
                D::Binary => array.as_binary::<i32>().iter().try_for_each(&mut each),
                D::LargeBinary => array.as_binary::<i64>().iter().try_for_each(&mut each),
                D::FixedSizeBinary(_) => {
                    array.as_fixed_size_binary().iter().try_for_each(&mut each)
                }
                _ => array.as_binary_view().iter().try_for_each(&mut each),
            }
        }
        _ => Err(bad(0, "stored in an unexpected Arrow type")),
    }
}

fn strings<'a>(
    values: impl Iterator<Item = Option<&'a str>>,
    sink: &mut dyn FnMut(Option<&str>) -> Result<(), RowsetError>,
) -> Result<(), RowsetError> {
    values.into_iter().try_for_each(sink)
}

fn prim<T: ArrowPrimitiveType>(
    array: &dyn Array,
    scratch: &mut String,
    bad: &dyn Fn(usize, &'static str) -> RowsetError,
    sink: &mut dyn FnMut(Option<&str>) -> Result<(), RowsetError>,
    render: impl Fn(T::Native, &mut String) -> Result<(), &'static str>,
) -> Result<(), RowsetError> {
    let a = array.as_primitive::<T>();
    for i in 0..a.len() {
        if a.is_null(i) {
            sink(None)?;
            continue;
        }
        scratch.clear();
        render(a.value(i), scratch).map_err(|p| bad(i, p))?;
        sink(Some(scratch))?;
    }
    Ok(())
}

/// Safe Harbor generalisation of a DATE column: the year, computed from the day count without
/// rendering the date. A year outside what [`Method::Generalize`] recognises as a date takes the
/// general path (render, then generalise), so the output is the same as that path's.
fn generalize_dates(
    array: &dyn Array,
    count: &mut ColumnCount,
    too_large: impl Fn() -> RowsetError,
) -> Result<ArrayRef, RowsetError> {
    let days: Box<dyn Iterator<Item = Option<i64>>> = match array.data_type() {
        DataType::Date32 => Box::new(
            array
                .as_primitive::<Date32Type>()
                .iter()
                .map(|v| v.map(i64::from)),
        ),
        _ => Box::new(
            array
                .as_primitive::<Date64Type>()
                .iter()
                .map(|v| v.map(|ms| ms.div_euclid(86_400_000))),
        ),
    };
    let mut b = TextColumn::with_capacity(array.len(), array.len() * 4);
    let mut text = String::new();
    for day in days {
        let Some(day) = day else {
            b.null();
            continue;
        };
        count.masked += 1;
        if let Some(year) = generalized_year(day) {
            push_year(year, &mut b.values);
        } else {
            text.clear();
            push_date(&mut text, day);
            Method::Generalize.apply_bytes(&text, &mut b.values);
        }
        b.end_value().ok_or_else(&too_large)?;
    }
    b.finish().ok_or_else(too_large)
}

/// A Utf8 column assembled as bytes: each value appended to `values` by the masking methods,
/// then ended with [`end_value`](Self::end_value); the bytes are checked as UTF-8 once, when
/// the array is built, instead of value by value.
struct TextColumn {
    offsets: Vec<i32>,
    values: Vec<u8>,
    nulls: NullBufferBuilder,
}

impl TextColumn {
    fn with_capacity(len: usize, bytes: usize) -> Self {
        let mut offsets = Vec::with_capacity(len + 1);
        offsets.push(0);
        TextColumn {
            offsets,
            values: Vec::with_capacity(bytes),
            nulls: NullBufferBuilder::new(len),
        }
    }

    /// Ends the value written since the last one; `None` if the column outgrew 32-bit offsets.
    fn end_value(&mut self) -> Option<()> {
        self.offsets.push(i32::try_from(self.values.len()).ok()?);
        self.nulls.append_non_null();
        Some(())
    }

    fn null(&mut self) {
        let end = *self.offsets.last().expect("offsets start with 0");
        self.values.truncate(end as usize);
        self.offsets.push(end);
        self.nulls.append_null();
    }

    /// The array; `None` if its bytes are not UTF-8 (the methods write whole characters, so
    /// this does not happen: failing closed if it did).
    fn finish(mut self) -> Option<ArrayRef> {
        let array = GenericStringArray::<i32>::try_new(
            OffsetBuffer::new(ScalarBuffer::from(self.offsets)),
            Buffer::from_vec(self.values),
            self.nulls.finish(),
        )
        .ok()?;
        Some(Arc::new(array))
    }
}

/// Rebuilds a string array of the same type with some values replaced.
fn rebuild_strings<'a>(
    dt: &DataType,
    len: usize,
    get: impl Fn(usize) -> Option<&'a str>,
    replacements: &[(usize, String)],
    too_large: impl Fn() -> RowsetError,
) -> Result<ArrayRef, RowsetError> {
    let mut next = replacements.iter().peekable();
    let mut value = |i: usize| -> Option<Cow<'a, str>> {
        match next.peek() {
            Some((r, _)) if *r == i => next.next().map(|(_, s)| Cow::Owned(s.clone())),
            _ => get(i).map(Cow::Borrowed),
        }
    };
    fn offsets<'a, O: OffsetSizeTrait>(
        len: usize,
        value: &mut dyn FnMut(usize) -> Option<Cow<'a, str>>,
        too_large: &dyn Fn() -> RowsetError,
    ) -> Result<ArrayRef, RowsetError> {
        let mut b = GenericStringBuilder::<O>::with_capacity(len, 0);
        let mut total: u64 = 0;
        for i in 0..len {
            match value(i) {
                None => b.append_null(),
                Some(s) => {
                    total += s.len() as u64;
                    if O::from_usize(total as usize).is_none() || total > i64::MAX as u64 {
                        return Err(too_large());
                    }
                    b.append_value(s);
                }
            }
        }
        Ok(Arc::new(b.finish()))
    }
    match dt {
        DataType::Utf8 => offsets::<i32>(len, &mut value, &too_large),
        DataType::LargeUtf8 => offsets::<i64>(len, &mut value, &too_large),
        _ => {
            let mut b = StringViewBuilder::with_capacity(len);
            for i in 0..len {
                match value(i) {
                    None => b.append_null(),
                    Some(s) => b.append_value(s),
                }
            }
            Ok(Arc::new(b.finish()))
        }
    }
}

/// Masks one column of one record batch.
fn mask_column(
    op: &ArrowOp,
    array: &ArrayRef,
    column: &Column,
    batch: usize,
    count: &mut ColumnCount,
    scratch: &mut String,
) -> Result<ArrayRef, RowsetError> {
    let bad = |row: usize, problem: &'static str| RowsetError::BadValue {
        column: column.index,
        name: column.name.clone(),
        location: format!("record batch {batch}, row {row}"),
        problem,
    };
    let too_large = || RowsetError::OutputTooLarge {
        batch,
        column: column.index,
        name: column.name.clone(),
    };
    match op {
        ArrowOp::Keep => Ok(Arc::clone(array)),
        ArrowOp::Null => {
            count.masked += (array.len() - array.logical_null_count()) as u64;
            Ok(new_null_array(array.data_type(), array.len()))
        }
        ArrowOp::Text {
            method: Method::Redact,
            ..
        } => {
            // The output does not depend on the value: no need to render it.
            let nulls = array.logical_nulls();
            let mut b = GenericStringBuilder::<i32>::with_capacity(
                array.len(),
                array.len() * REDACTED.len(),
            );
            for i in 0..array.len() {
                if nulls.as_ref().is_some_and(|n| n.is_null(i)) {
                    b.append_null();
                } else {
                    b.append_value(REDACTED);
                    count.masked += 1;
                }
            }
            Ok(Arc::new(b.finish()))
        }
        ArrowOp::Text {
            method: Method::Generalize,
            conv: Conv::Date,
        } => generalize_dates(array.as_ref(), count, too_large),
        ArrowOp::Text { method, conv } => {
            let mut b = TextColumn::with_capacity(array.len(), array.len() * 8);
            let mut masked = 0;
            // `scratch` holds the rendered input; the methods write into the column's bytes.
            for_each_text(array.as_ref(), *conv, scratch, &bad, &mut |v| {
                match v {
                    None => b.null(),
                    Some(text) => {
                        masked += 1;
                        if method.apply_bytes(text, &mut b.values) {
                            b.end_value().ok_or_else(too_large)?;
                        } else {
                            b.null();
                        }
                    }
                }
                Ok(())
            })?;
            count.masked += masked;
            b.finish().ok_or_else(too_large)
        }
        ArrowOp::Detect(rule) => {
            let mut replacements: Vec<(usize, String)> = Vec::new();
            let mut row = 0;
            let mut scan = |v: Option<&str>| {
                if let Some(text) = v {
                    if let Some(s) = mask_text_by_kind(
                        text,
                        &rule.detectors,
                        |k| rule.method_for(k),
                        &mut count.findings,
                    ) {
                        replacements.push((row, s));
                    }
                }
                row += 1;
                Ok(())
            };
            for_each_text(array.as_ref(), Conv::Str, scratch, &bad, &mut scan)?;
            if replacements.is_empty() {
                return Ok(Arc::clone(array));
            }
            count.masked += replacements.len() as u64;
            let dt = array.data_type();
            match dt {
                DataType::Utf8 => {
                    let a = array.as_string::<i32>();
                    rebuild_strings(
                        dt,
                        a.len(),
                        |i| a.is_valid(i).then(|| a.value(i)),
                        &replacements,
                        too_large,
                    )
                }
                DataType::LargeUtf8 => {
                    let a = array.as_string::<i64>();
                    rebuild_strings(
                        dt,
                        a.len(),
                        |i| a.is_valid(i).then(|| a.value(i)),
                        &replacements,
                        too_large,
                    )
                }
                _ => {
                    let a = array.as_string_view();
                    rebuild_strings(
                        dt,
                        a.len(),
                        |i| a.is_valid(i).then(|| a.value(i)),
                        &replacements,
                        too_large,
                    )
                }
            }
        }
    }
}

/// Where the framer is in the input.
#[derive(Debug, Clone, Copy)]
enum Frame {
    /// Reading a message's length prefix (with or without the continuation marker).
    Prefix,
    /// Reading the message header of `meta` bytes after a `prefix`-byte length prefix.
    Meta { prefix: usize, meta: usize },
    /// Reading the rest of a `total`-byte message.
    Body {
        prefix: usize,
        meta: usize,
        total: usize,
        kind: Kind,
    },
    /// Dropping a message body after the row limit.
    Skip { remaining: u64 },
    /// After the end-of-stream marker.
    Eos,
}

/// A message's kind, for error messages.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Schema,
    Batch,
    Dictionary,
    Other,
}

/// Streaming masker for one Arrow chunk body (an IPC stream: schema message, record batches,
/// optional end-of-stream marker), already gunzipped; also does the one-shot
/// [`ResultMasker::mask_arrow_stream`](super::ResultMasker::mask_arrow_stream).
///
/// [`push`](Self::push) writes the rewritten schema as soon as it is read and each masked
/// record batch as soon as it is complete; [`finish`](Self::finish) writes the end-of-stream
/// marker if the input had one and fails if the input ended inside a message. Memory holds at
/// most one message and its masked batch. After an error every call fails with
/// [`RowsetError::Failed`].
pub struct ArrowChunkMasker {
    plan: Arc<Plan>,
    limit: Option<u64>,
    frame: Frame,
    /// The current message's bytes read so far.
    pending: Vec<u8>,
    /// Bytes consumed so far: the byte offset of the next input byte.
    offset: u64,
    /// Byte offset where the current message started.
    msg_start: u64,
    /// The input's schema, once read.
    in_schema: Option<SchemaRef>,
    dictionaries: HashMap<i64, ArrayRef>,
    writer: Option<StreamWriter<Vec<u8>>>,
    schema: Option<SchemaRef>,
    ops: Vec<ArrowOp>,
    batches: usize,
    /// Rows taken into the output so far (written, or held to be written).
    accepted: u64,
    /// A decoded batch whose slices are still to be written.
    held: Option<Held>,
    counts: ColumnCounts,
    eos: bool,
    failed: bool,
    scratch: String,
}

impl std::fmt::Debug for ArrowChunkMasker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ArrowChunkMasker")
            .field("limit", &self.limit)
            .field("offset", &self.offset)
            .field("batches", &self.batches)
            .field("rows", &self.accepted)
            .field("failed", &self.failed)
            .finish_non_exhaustive()
    }
}

impl ArrowChunkMasker {
    pub(crate) fn new(plan: Arc<Plan>) -> Self {
        let n = plan.columns.len();
        ArrowChunkMasker {
            plan,
            limit: None,
            frame: Frame::Prefix,
            pending: Vec::new(),
            offset: 0,
            msg_start: 0,
            in_schema: None,
            dictionaries: HashMap::new(),
            writer: None,
            schema: None,
            ops: Vec::new(),
            batches: 0,
            accepted: 0,
            held: None,
            counts: ColumnCounts::new(n),
            eos: false,
            failed: false,
            scratch: String::new(),
        }
    }

    /// Emits at most `rows` rows: the batch that crosses the limit is cut, later batches are
    /// dropped without being decoded (and [`ColumnCounts::truncated`] is set); the output stays
    /// a well-formed stream.
    pub fn with_row_limit(mut self, rows: u64) -> Self {
        self.limit = Some(rows);
        self
    }

    /// Feeds the next piece of the stream; appends the schema and every masked record batch
    /// it completes to `out`. Nothing of a batch that fails is appended.
    pub fn push(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<(), RowsetError> {
        if self.failed {
            return Err(RowsetError::Failed);
        }
        let r = self.feed(input, out);
        if r.is_err() {
            self.fail();
        }
        r
    }

    /// Ends the stream: fails if it ended inside a message or without a schema (an empty input
    /// is accepted and gives an empty output); writes the end-of-stream marker if the input had
    /// one. Returns what was masked.
    pub fn finish(mut self, out: &mut Vec<u8>) -> Result<ColumnCounts, RowsetError> {
        if self.failed {
            return Err(RowsetError::Failed);
        }
        self.write_held(out, None)?;
        let limit_reached = self.limit_reached();
        let complete = match self.frame {
            Frame::Prefix => self.pending.is_empty(),
            Frame::Eos => true,
            Frame::Skip { .. } | Frame::Meta { .. } | Frame::Body { .. } => false,
        };
        let Some(mut writer) = self.writer.take() else {
            if self.offset == 0 {
                return Ok(self.counts);
            }
            return Err(RowsetError::Truncated {
                format: "Arrow IPC stream",
                what: "schema".into(),
                offset: self.msg_start.min(self.offset),
            });
        };
        if !complete && !limit_reached {
            let what = match self.frame {
                Frame::Body { kind, .. } => self.kind_name(kind),
                _ => "message".into(),
            };
            return Err(RowsetError::Truncated {
                format: "Arrow IPC stream",
                what,
                offset: self.msg_start,
            });
        }
        if self.eos {
            writer.finish().map_err(|e| RowsetError::Encode {
                batch: self.batches,
                problem: describe_arrow_error(&e),
            })?;
            move_out(writer.get_mut(), out);
        }
        Ok(self.counts)
    }

    fn limit_reached(&self) -> bool {
        self.limit.is_some_and(|l| self.accepted >= l)
    }

    fn kind_name(&self, kind: Kind) -> String {
        match kind {
            Kind::Schema => "schema message".into(),
            Kind::Batch => format!("record batch {}", self.batches),
            Kind::Dictionary => "dictionary batch".into(),
            Kind::Other => "message".into(),
        }
    }

    fn malformed(&self, location: String, problem: impl Into<String>) -> RowsetError {
        RowsetError::MalformedIpc {
            location,
            problem: problem.into(),
        }
    }

    /// Moves up to `need - pending.len()` bytes from `input` into `pending`.
    fn take(&mut self, input: &mut &[u8], need: usize) {
        let k = need.saturating_sub(self.pending.len()).min(input.len());
        self.pending.extend_from_slice(&input[..k]);
        *input = &input[k..];
        self.offset += k as u64;
    }

    fn feed(&mut self, mut input: &[u8], out: &mut Vec<u8>) -> Result<(), RowsetError> {
        loop {
            match self.frame {
                Frame::Eos => {
                    if input.is_empty() {
                        return Ok(());
                    }
                    return Err(self.malformed(
                        format!("byte offset {}", self.offset),
                        "data after the end-of-stream marker",
                    ));
                }
                Frame::Skip { remaining } => {
                    if input.is_empty() {
                        return Ok(());
                    }
                    let k = remaining.min(input.len() as u64);
                    input = &input[k as usize..];
                    self.offset += k;
                    self.frame = if remaining == k {
                        Frame::Prefix
                    } else {
                        Frame::Skip {
                            remaining: remaining - k,
                        }
                    };
                }
                Frame::Prefix => {
                    if input.is_empty() {
                        return Ok(());
                    }
                    if self.pending.is_empty() {
                        self.msg_start = self.offset;
                    }
                    let need = if self.pending.len() >= 4 && self.pending[..4] == CONTINUATION {
                        8
                    } else {
                        4
                    };
                    self.take(&mut input, need);
                    if self.pending.len() < need {
                        return Ok(());
                    }
                    if need == 4 && self.pending[..4] == CONTINUATION {
                        continue;
                    }
                    let len = u32::from_le_bytes(
                        self.pending[need - 4..need].try_into().expect("four bytes"),
                    ) as usize;
                    if len == 0 {
                        self.pending.clear();
                        self.frame = Frame::Eos;
                        self.eos = true;
                        continue;
                    }
                    if len > MAX_METADATA {
                        return Err(self.malformed(
                            format!("message at byte offset {}", self.msg_start),
                            format!("message header of {len} bytes exceeds the {MAX_METADATA}-byte limit"),
                        ));
                    }
                    self.frame = Frame::Meta {
                        prefix: need,
                        meta: len,
                    };
                }
                Frame::Meta { prefix, meta } => {
                    self.take(&mut input, prefix + meta);
                    if self.pending.len() < prefix + meta {
                        return Ok(());
                    }
                    let location = || format!("message at byte offset {}", self.msg_start);
                    let message = arrow_ipc::root_as_message(&self.pending[prefix..])
                        .map_err(|_| self.malformed(location(), "invalid message header"))?;
                    let body = u64::try_from(message.bodyLength())
                        .ok()
                        .and_then(|b| usize::try_from(b).ok())
                        .and_then(|b| b.checked_add(prefix + meta))
                        .ok_or_else(|| self.malformed(location(), "invalid body length"))?;
                    let body_len = (body - prefix - meta) as u64;
                    let kind = match message.header_type() {
                        MessageHeader::Schema => Kind::Schema,
                        MessageHeader::RecordBatch => Kind::Batch,
                        MessageHeader::DictionaryBatch => Kind::Dictionary,
                        _ => Kind::Other,
                    };
                    if self.limit_reached() && matches!(kind, Kind::Batch | Kind::Dictionary) {
                        let rows = message.header_as_record_batch().map_or(0, |b| b.length());
                        if rows > 0 {
                            self.counts.set_truncated();
                        }
                        self.pending.clear();
                        self.frame = if body_len == 0 {
                            Frame::Prefix
                        } else {
                            Frame::Skip {
                                remaining: body_len,
                            }
                        };
                        continue;
                    }
                    self.pending
                        .reserve(body.min(MAX_PREALLOC).saturating_sub(self.pending.len()));
                    self.frame = Frame::Body {
                        prefix,
                        meta,
                        total: body,
                        kind,
                    };
                }
                Frame::Body {
                    prefix,
                    meta,
                    total,
                    kind,
                } => {
                    self.take(&mut input, total);
                    if self.pending.len() < total {
                        return Ok(());
                    }
                    // The output stays in order: a batch not drained yet is written first.
                    self.write_held(out, None)?;
                    let bytes = std::mem::take(&mut self.pending);
                    self.message(bytes, prefix, meta, kind, out)?;
                    self.frame = Frame::Prefix;
                }
            }
        }
    }

    /// Decodes one complete message (`prefix` + `meta` header bytes, then the body) and writes
    /// what it yields.
    fn message(
        &mut self,
        bytes: Vec<u8>,
        prefix: usize,
        meta: usize,
        kind: Kind,
        out: &mut Vec<u8>,
    ) -> Result<(), RowsetError> {
        let location = format!("{} at byte offset {}", self.kind_name(kind), self.msg_start);
        let malformed = |problem: String| RowsetError::MalformedIpc {
            location: location.clone(),
            problem,
        };
        let buf = Buffer::from_vec(bytes);
        let message = arrow_ipc::root_as_message(&buf.as_slice()[prefix..prefix + meta])
            .map_err(|_| malformed("invalid message header".into()))?;
        let body = buf.slice_with_length(prefix + meta, buf.len() - prefix - meta);
        let version = message.version();
        match message.header_type() {
            MessageHeader::Schema => {
                if self.in_schema.is_some() {
                    return Err(malformed("a second schema message".into()));
                }
                let fb = message
                    .header_as_schema()
                    .ok_or_else(|| malformed("invalid schema message".into()))?;
                let schema = guard(|| try_fb_to_schema(fb)).map_err(malformed)?;
                if let Some(f) = schema.fields().iter().find(|f| has_union(f.data_type())) {
                    return Err(malformed(format!(
                        "field `{}` has a union type, which Snowflake never sends",
                        f.name()
                    )));
                }
                self.start(schema, out)
            }
            MessageHeader::RecordBatch => {
                let schema = self
                    .in_schema
                    .clone()
                    .ok_or_else(|| malformed("record batch before the schema".into()))?;
                let rb = message
                    .header_as_record_batch()
                    .ok_or_else(|| malformed("invalid record batch message".into()))?;
                check_batch(rb, body.len()).map_err(|p| malformed(p.into()))?;
                let dictionaries = &self.dictionaries;
                let batch = guard(|| {
                    RecordBatchDecoder::try_new(&body, rb, schema, dictionaries, &version)?
                        .read_record_batch()
                })
                .map_err(malformed)?;
                self.batch(batch, body.len(), out)
            }
            MessageHeader::DictionaryBatch => {
                let schema = self
                    .in_schema
                    .clone()
                    .ok_or_else(|| malformed("dictionary batch before the schema".into()))?;
                let db = message
                    .header_as_dictionary_batch()
                    .ok_or_else(|| malformed("invalid dictionary batch message".into()))?;
                let data = db
                    .data()
                    .ok_or_else(|| malformed("dictionary batch without data".into()))?;
                check_batch(data, body.len()).map_err(|p| malformed(p.into()))?;
                let dictionaries = &mut self.dictionaries;
                guard(|| read_dictionary(&body, db, &schema, dictionaries, &version))
                    .map_err(malformed)
            }
            MessageHeader::NONE => Ok(()),
            _ => Err(malformed("unsupported message type".into())),
        }
    }

    /// Resolves every column against the schema and writes the rewritten schema.
    fn start(&mut self, schema: Schema, out: &mut Vec<u8>) -> Result<(), RowsetError> {
        if schema.fields().len() != self.plan.columns.len() {
            return Err(RowsetError::ColumnCount {
                rules: self.plan.columns.len(),
                columns: schema.fields().len(),
                what: "Arrow schema",
            });
        }
        let mut fields = Vec::with_capacity(schema.fields().len());
        let mut ops = Vec::with_capacity(schema.fields().len());
        for (column, field) in self.plan.columns.iter().zip(schema.fields()) {
            let (op, f) = resolve(column, field)?;
            ops.push(op);
            fields.push(f);
        }
        let out_schema = Arc::new(Schema::new_with_metadata(fields, schema.metadata().clone()));
        let mut writer =
            StreamWriter::try_new_with_options(Vec::new(), &out_schema, IpcWriteOptions::default())
                .map_err(|e| RowsetError::Encode {
                    batch: 0,
                    problem: describe_arrow_error(&e),
                })?;
        move_out(writer.get_mut(), out);
        self.writer = Some(writer);
        self.schema = Some(out_schema);
        self.in_schema = Some(Arc::new(schema));
        self.ops = ops;
        Ok(())
    }

    /// Masks and writes a decoded batch whose message body had `body_len` bytes.
    fn batch(
        &mut self,
        batch: RecordBatch,
        body_len: usize,
        out: &mut Vec<u8>,
    ) -> Result<(), RowsetError> {
        let number = self.batches;
        self.batches += 1;
        let mut batch = batch;
        let all_rows = batch.num_rows().max(1);
        if let Some(limit) = self.limit {
            let remaining = limit.saturating_sub(self.accepted);
            if batch.num_rows() as u64 > remaining {
                batch = batch.slice(0, remaining as usize);
                self.counts.set_truncated();
            }
        }
        // A big batch is masked and written in slices of about `SLICE_BYTES`, at most
        // `OUTPUT_STEP` bytes per call: what is held beside the input is one slice's masked
        // columns and a few slices of output, not a second copy of the whole batch (the output
        // stream has more, smaller batches of the same rows). The rest waits for `drain`.
        let rows = batch.num_rows();
        self.accepted += rows as u64;
        let size = (body_len as u128 * rows as u128 / all_rows as u128) as usize;
        let pieces = size.div_ceil(SLICE_BYTES).clamp(1, rows.max(1));
        self.held = Some(Held {
            batch,
            number,
            next: 0,
            step: rows.div_ceil(pieces).max(1),
        });
        self.write_held(out, Some(OUTPUT_STEP))
    }

    /// Writes slices of the held batch until `out` has grown by `limit` bytes (all of them
    /// with `None`).
    fn write_held(&mut self, out: &mut Vec<u8>, limit: Option<usize>) -> Result<(), RowsetError> {
        let start = out.len();
        while let Some(held) = self.held.take() {
            let rows = held.batch.num_rows();
            let len = held.step.min(rows - held.next);
            let piece = if len == rows {
                held.batch.clone()
            } else {
                held.batch.slice(held.next, len)
            };
            self.write_piece(&piece, held.number, out)?;
            let next = held.next + len;
            if next < rows {
                self.held = Some(Held { next, ..held });
            }
            if limit.is_some_and(|l| out.len() - start >= l) {
                break;
            }
        }
        Ok(())
    }

    /// Whether output of an already decoded batch waits for [`drain`](Self::drain).
    pub fn has_pending_output(&self) -> bool {
        self.held.is_some()
    }

    /// Appends the next few MiB of output that a big batch still holds (see
    /// [`has_pending_output`](Self::has_pending_output)).
    pub fn drain(&mut self, out: &mut Vec<u8>) -> Result<(), RowsetError> {
        if self.failed {
            return Err(RowsetError::Failed);
        }
        let r = self.write_held(out, Some(OUTPUT_STEP));
        if r.is_err() {
            self.fail();
        }
        r
    }

    fn fail(&mut self) {
        self.failed = true;
        self.pending = Vec::new();
        self.held = None;
        if let Some(w) = &mut self.writer {
            w.get_mut().clear();
        }
    }

    /// Masks and writes one batch (or slice of one); `number` is its input batch's, for errors.
    fn write_piece(
        &mut self,
        batch: &RecordBatch,
        number: usize,
        out: &mut Vec<u8>,
    ) -> Result<(), RowsetError> {
        let rows = batch.num_rows();
        let (Some(schema), Some(writer)) = (&self.schema, &mut self.writer) else {
            return Err(RowsetError::MalformedIpc {
                location: format!("record batch {number}"),
                problem: "record batch before the schema".into(),
            });
        };
        let mut counts = vec![ColumnCount::default(); self.ops.len()];
        let mut columns = Vec::with_capacity(self.ops.len());
        for (((op, array), column), count) in self
            .ops
            .iter()
            .zip(batch.columns())
            .zip(&self.plan.columns)
            .zip(&mut counts)
        {
            columns.push(mask_column(
                op,
                array,
                column,
                number,
                count,
                &mut self.scratch,
            )?);
        }
        let masked = RecordBatch::try_new_with_options(
            Arc::clone(schema),
            columns,
            &RecordBatchOptions::new().with_row_count(Some(rows)),
        )
        .map_err(|e| RowsetError::Encode {
            batch: number,
            problem: describe_arrow_error(&e),
        })?;
        writer.write(&masked).map_err(|e| RowsetError::Encode {
            batch: number,
            problem: describe_arrow_error(&e),
        })?;
        move_out(writer.get_mut(), out);
        for (i, c) in counts.iter().enumerate() {
            let mine = self.counts.column_mut(i);
            mine.masked += c.masked;
            mine.findings.merge(&c.findings);
        }
        self.counts.add_rows(rows as u64);
        Ok(())
    }
}

/// Appends what the writer produced to `out` (moving the buffer when `out` has no room, so that
/// a big output is never held twice).
fn move_out(written: &mut Vec<u8>, out: &mut Vec<u8>) {
    if out.is_empty() && out.capacity() < written.len() {
        std::mem::swap(written, out);
    } else {
        out.append(written);
    }
}

/// Runs an Arrow decoding step, turning both its errors and its panics (the IPC reader still
/// slices some buffers unchecked) into a description.
fn guard<T>(f: impl FnOnce() -> Result<T, arrow_schema::ArrowError>) -> Result<T, String> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(describe_arrow_error(&e)),
        Err(_) => Err("the Arrow decoder rejected the message".into()),
    }
}

/// Checks a record batch header against its body before the Arrow reader slices buffers out
/// of it (it does not check offsets itself).
fn check_batch(rb: arrow_ipc::RecordBatch<'_>, body_len: usize) -> Result<(), &'static str> {
    if rb.length() < 0 {
        return Err("negative row count");
    }
    if rb.compression().is_some() {
        return Err("compressed record batches are not supported");
    }
    for b in rb.buffers().iter().flatten() {
        let end = u64::try_from(b.offset())
            .ok()
            .zip(u64::try_from(b.length()).ok())
            .and_then(|(o, l)| o.checked_add(l));
        if end.is_none_or(|end| end > body_len as u64) {
            return Err("a buffer lies outside the message body");
        }
    }
    if rb
        .nodes()
        .iter()
        .flatten()
        .any(|n| n.length() < 0 || n.null_count() < 0)
    {
        return Err("negative array length");
    }
    Ok(())
}

fn has_union(dt: &DataType) -> bool {
    match dt {
        DataType::Union(..) => true,
        DataType::Dictionary(_, v) => has_union(v),
        DataType::List(f)
        | DataType::LargeList(f)
        | DataType::ListView(f)
        | DataType::LargeListView(f)
        | DataType::FixedSizeList(f, _)
        | DataType::Map(f, _) => has_union(f.data_type()),
        DataType::Struct(fields) => fields.iter().any(|f| has_union(f.data_type())),
        DataType::RunEndEncoded(r, v) => has_union(r.data_type()) || has_union(v.data_type()),
        _ => false,
    }
}

/// The first `limit` rows of an Arrow IPC stream (as Tollgate hands it to the agent: a
/// stream it wrote itself) as text, each value rendered as the masker renders it (see the
/// module docs), `None` for NULL. Columns of a type without a text rendering show `<type>`.
/// For the audit record of what the agent received.
pub fn arrow_rows_as_text(
    ipc: &[u8],
    rowtype: &[serde_json::Value],
    limit: usize,
) -> Result<Vec<Vec<Option<String>>>, RowsetError> {
    let malformed = |problem: String| RowsetError::MalformedIpc {
        location: "stream".into(),
        problem,
    };
    if ipc.is_empty() || limit == 0 {
        return Ok(Vec::new());
    }
    let batches = guard(|| {
        arrow_ipc::reader::StreamReader::try_new(std::io::Cursor::new(ipc), None)?
            .collect::<Result<Vec<_>, _>>()
    })
    .map_err(malformed)?;
    let mut rows: Vec<Vec<Option<String>>> = Vec::new();
    let mut scratch = String::new();
    for batch in batches {
        let n = batch.num_rows().min(limit - rows.len());
        if n == 0 {
            break;
        }
        let mut columns: Vec<Vec<Option<String>>> = Vec::with_capacity(batch.num_columns());
        for (i, array) in batch.columns().iter().enumerate() {
            let entry = rowtype.get(i);
            let t = entry
                .and_then(|e| e.get("type"))
                .and_then(serde_json::Value::as_str)
                .map_or(SfType::Other, SfType::parse);
            let scale = entry
                .and_then(|e| e.get("scale"))
                .and_then(serde_json::Value::as_u64)
                .map_or_else(|| default_scale(t), |s| s as u32);
            let sliced = array.slice(0, n);
            let mut values = Vec::with_capacity(n);
            match conv_for(t, sliced.data_type(), scale) {
                Some(conv) => {
                    let bad = |row: usize, what: &'static str| RowsetError::MalformedIpc {
                        location: format!("column {i} row {row}"),
                        problem: what.into(),
                    };
                    for_each_text(&*sliced, conv, &mut scratch, &bad, &mut |v| {
                        values.push(v.map(str::to_owned));
                        Ok(())
                    })?;
                }
                None => {
                    let label = format!("<{}>", sliced.data_type());
                    values.extend((0..n).map(|r| (!sliced.is_null(r)).then(|| label.clone())));
                }
            }
            columns.push(values);
        }
        for r in 0..n {
            rows.push(
                columns
                    .iter()
                    .map(|c| c.get(r).cloned().flatten())
                    .collect(),
            );
        }
        if rows.len() >= limit {
            break;
        }
    }
    Ok(rows)
}
