//! JSON rowsets: the inline `data.rowset` and streamed chunk bodies.
//!
//! A chunk body is the rows of a rowset without the outer brackets: `["1","a"],["2",null]`
//! (the drivers wrap it in `[` … `]` and parse it as one array, so any JSON whitespace around
//! the commas is allowed). The chunk masker copies unmasked rows byte for byte and rewrites
//! only the masked values inside a row, so separators and spacing stay as the server sent them.

use std::borrow::Cow;
use std::sync::Arc;

use serde_json::Value;

use super::plan::{Column, Op, Plan};
use super::value::{json_text, SfType};
use super::{ColumnCount, ColumnCounts, RowsetError};
use crate::method::{MaskedValue, Method, REDACTED};
use crate::text::mask_text_by_kind;

/// Deepest nesting accepted inside a row (VARIANT values are strings, so real rows have 1).
const MAX_DEPTH: u32 = 64;

/// Most separator bytes kept between two rows; longer runs of whitespace are shortened.
const MAX_SEPARATOR: usize = 16;

/// A masked cell.
enum Cell {
    /// Unchanged.
    Same,
    /// Becomes `null`.
    Null,
    /// Becomes this text.
    Text(String),
}

/// Masks one non-null value of `column`. `Err` describes what the value should have been.
fn mask_cell(
    column: &Column,
    value: &str,
    count: &mut ColumnCount,
    scratch: &mut String,
) -> Result<Cell, &'static str> {
    match Plan::op(column, column.sf_type) {
        Op::Keep => Ok(Cell::Same),
        Op::Mask(Method::Null) => {
            count.masked += 1;
            Ok(Cell::Null)
        }
        Op::Mask(Method::Redact) => {
            // The output does not depend on the value: no need to render it.
            count.masked += 1;
            Ok(Cell::Text(REDACTED.to_owned()))
        }
        Op::Mask(method) => {
            scratch.clear();
            let t = column.sf_type.unwrap_or(SfType::Other);
            json_text(t, column.scale, value, scratch)?;
            count.masked += 1;
            Ok(match method.apply(scratch) {
                MaskedValue::Text(s) => Cell::Text(s),
                MaskedValue::Null => Cell::Null,
            })
        }
        Op::Detect(rule) => {
            match mask_text_by_kind(
                value,
                &rule.detectors,
                |k| rule.method_for(k),
                &mut count.findings,
            ) {
                Some(s) => {
                    count.masked += 1;
                    Ok(Cell::Text(s))
                }
                None => Ok(Cell::Same),
            }
        }
    }
}

fn bad_value(column: &Column, location: String, problem: &'static str) -> RowsetError {
    RowsetError::BadValue {
        column: column.index,
        name: column.name.clone(),
        location,
        problem,
    }
}

/// One-shot masking of `data.rowset`.
pub(crate) fn mask_rowset(
    plan: &Plan,
    rowset: &mut Value,
    counts: &mut ColumnCounts,
) -> Result<(), RowsetError> {
    let mut mine = ColumnCounts::new(plan.columns.len());
    match mask_rowset_inner(plan, rowset, &mut mine) {
        Ok(()) => {
            counts.merge(&mine);
            Ok(())
        }
        Err(e) => {
            *rowset = Value::Array(Vec::new());
            Err(e)
        }
    }
}

fn mask_rowset_inner(
    plan: &Plan,
    rowset: &mut Value,
    counts: &mut ColumnCounts,
) -> Result<(), RowsetError> {
    let rows = match rowset {
        Value::Null => return Ok(()),
        Value::Array(rows) => rows,
        _ => {
            return Err(RowsetError::MalformedJson {
                location: "rowset".into(),
                problem: "not an array of rows",
            })
        }
    };
    let width = plan.columns.len();
    let mut scratch = String::new();
    for (r, row) in rows.iter_mut().enumerate() {
        let Some(cells) = row.as_array_mut() else {
            return Err(RowsetError::MalformedJson {
                location: format!("row {r}"),
                problem: "row is not an array",
            });
        };
        if cells.len() != width {
            return Err(RowsetError::RowWidth {
                location: format!("row {r}"),
                found: cells.len(),
                expected: width,
            });
        }
        for (column, cell) in plan.columns.iter().zip(cells.iter_mut()) {
            if matches!(Plan::op(column, column.sf_type), Op::Keep) {
                continue;
            }
            let out = match cell {
                Value::Null => continue,
                Value::String(s) => {
                    mask_cell(column, s, counts.column_mut(column.index), &mut scratch)
                        .map_err(|p| bad_value(column, format!("row {r}"), p))?
                }
                _ => {
                    return Err(bad_value(
                        column,
                        format!("row {r}"),
                        "not a string or null",
                    ))
                }
            };
            match out {
                Cell::Same => {}
                Cell::Null => *cell = Value::Null,
                Cell::Text(t) => *cell = Value::String(t),
            }
        }
        counts.add_rows(1);
    }
    Ok(())
}

/// Where the chunk scanner is.
#[derive(Debug, Clone, Copy)]
enum State {
    /// Before the first row: whitespace, then `[`.
    Start,
    /// After a row: whitespace, then `,` or the end.
    AfterRow,
    /// After a `,`: whitespace, then `[`.
    AfterComma,
    /// Inside a row starting at `start` (an index into the buffer).
    InRow {
        start: usize,
        depth: u32,
        in_str: bool,
        esc: bool,
    },
    /// The row limit was reached: the rest of the input is dropped unread.
    Discard,
}

/// Streaming masker for one JSON chunk body: rows without the outer brackets
/// (`["1","a"],["2",null]`), already gunzipped.
///
/// [`push`](Self::push) appends the masked form of every row completed so far to `out`, with
/// the separators between rows as the input had them; [`finish`](Self::finish) checks that the
/// body did not end inside a row or after a trailing `,`. Memory holds at most one row plus the
/// last pushed piece. After an error every call fails with [`RowsetError::Failed`].
#[derive(Debug)]
pub struct JsonChunkMasker {
    plan: Arc<Plan>,
    noop: bool,
    limit: Option<u64>,
    buf: Vec<u8>,
    /// Byte offset of `buf[0]` in the whole input.
    base: u64,
    /// Scan position in `buf`.
    pos: usize,
    state: State,
    /// Separator bytes since the last emitted row.
    sep: Vec<u8>,
    emitted: u64,
    /// Rows parsed so far (row numbers in errors).
    seen: u64,
    counts: ColumnCounts,
    failed: bool,
    spans: Vec<(usize, usize)>,
    scratch: String,
    row_out: Vec<u8>,
}

impl JsonChunkMasker {
    pub(crate) fn new(plan: Arc<Plan>) -> Self {
        let n = plan.columns.len();
        JsonChunkMasker {
            noop: plan.is_noop(),
            plan,
            limit: None,
            buf: Vec::new(),
            base: 0,
            pos: 0,
            state: State::Start,
            sep: Vec::new(),
            emitted: 0,
            seen: 0,
            counts: ColumnCounts::new(n),
            failed: false,
            spans: Vec::with_capacity(n),
            scratch: String::new(),
            row_out: Vec::new(),
        }
    }

    /// Emits at most `rows` rows; later rows are dropped (and [`ColumnCounts::truncated`] is
    /// set), and the output stays well-formed.
    pub fn with_row_limit(mut self, rows: u64) -> Self {
        self.limit = Some(rows);
        self
    }

    /// Feeds the next piece of the chunk body; appends the masked form of every row it
    /// completes to `out`. Nothing of a row that fails is appended.
    pub fn push(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<(), RowsetError> {
        if self.failed {
            return Err(RowsetError::Failed);
        }
        if matches!(self.state, State::Discard) {
            if !self.counts.truncated() && input.contains(&b'[') {
                self.counts.set_truncated();
            }
            return Ok(());
        }
        self.buf.extend_from_slice(input);
        let r = self.scan(out);
        if r.is_err() {
            self.failed = true;
            self.buf = Vec::new();
        }
        r
    }

    /// Always `false`: every row's output is appended by the [`push`](Self::push) that
    /// completes it (the same interface as the Arrow masker's).
    pub fn has_pending_output(&self) -> bool {
        false
    }

    /// Appends nothing: no output ever waits (see [`has_pending_output`](Self::has_pending_output)).
    pub fn drain(&mut self, _out: &mut Vec<u8>) -> Result<(), RowsetError> {
        Ok(())
    }

    /// Ends the chunk: fails if it ended inside a row or after a trailing `,`. Returns what
    /// was masked.
    pub fn finish(self, _out: &mut Vec<u8>) -> Result<ColumnCounts, RowsetError> {
        if self.failed {
            return Err(RowsetError::Failed);
        }
        match self.state {
            State::Start | State::AfterRow | State::Discard => Ok(self.counts),
            State::AfterComma => Err(RowsetError::Truncated {
                format: "JSON chunk",
                what: format!("row {} (after a trailing `,`)", self.seen),
                offset: self.base + self.pos as u64,
            }),
            State::InRow { start, .. } => Err(RowsetError::Truncated {
                format: "JSON chunk",
                what: format!("row {}", self.seen),
                offset: self.base + start as u64,
            }),
        }
    }

    fn location(&self, at: usize) -> String {
        format!("row {} at byte offset {}", self.seen, self.base + at as u64)
    }

    fn push_sep(&mut self, b: u8) {
        if b == b',' || self.sep.len() < MAX_SEPARATOR {
            self.sep.push(b);
        }
    }

    fn scan(&mut self, out: &mut Vec<u8>) -> Result<(), RowsetError> {
        while self.pos < self.buf.len() {
            match self.state {
                State::Start | State::AfterComma => {
                    let b = self.buf[self.pos];
                    if is_ws(b) {
                        if matches!(self.state, State::AfterComma) {
                            self.push_sep(b);
                        }
                        self.pos += 1;
                        continue;
                    }
                    if b != b'[' {
                        return Err(RowsetError::MalformedJson {
                            location: self.location(self.pos),
                            problem: "expected `[` to start a row",
                        });
                    }
                    if self.limit.is_some_and(|l| self.emitted >= l) {
                        self.counts.set_truncated();
                        self.state = State::Discard;
                        self.buf = Vec::new();
                        self.pos = 0;
                        return Ok(());
                    }
                    self.state = State::InRow {
                        start: self.pos,
                        depth: 0,
                        in_str: false,
                        esc: false,
                    };
                }
                State::AfterRow => {
                    let b = self.buf[self.pos];
                    if is_ws(b) {
                        self.push_sep(b);
                    } else if b == b',' {
                        self.push_sep(b);
                        self.state = State::AfterComma;
                    } else {
                        return Err(RowsetError::MalformedJson {
                            location: self.location(self.pos),
                            problem: "expected `,` between rows",
                        });
                    }
                    self.pos += 1;
                }
                State::InRow {
                    start,
                    mut depth,
                    mut in_str,
                    mut esc,
                } => {
                    let mut complete = false;
                    let bytes = &self.buf;
                    let mut pos = self.pos;
                    while pos < bytes.len() {
                        let b = bytes[pos];
                        pos += 1;
                        if in_str {
                            if esc {
                                esc = false;
                            } else if b == b'\\' {
                                esc = true;
                            } else if b == b'"' {
                                in_str = false;
                            }
                            continue;
                        }
                        match b {
                            b'"' => in_str = true,
                            b'[' | b'{' => {
                                depth += 1;
                                if depth > MAX_DEPTH {
                                    return Err(RowsetError::MalformedJson {
                                        location: self.location(start),
                                        problem: "row nests too deeply",
                                    });
                                }
                            }
                            b']' | b'}' => {
                                depth -= 1;
                                if depth == 0 {
                                    complete = true;
                                    break;
                                }
                            }
                            _ => {}
                        }
                    }
                    self.pos = pos;
                    if !complete {
                        self.state = State::InRow {
                            start,
                            depth,
                            in_str,
                            esc,
                        };
                        break;
                    }
                    self.row(start, pos, out)?;
                    self.state = State::AfterRow;
                }
                State::Discard => return Ok(()),
            }
        }
        // Drop what has been consumed; keep an incomplete row.
        let keep_from = match &mut self.state {
            State::InRow { start, .. } => std::mem::replace(start, 0),
            _ => self.pos,
        };
        if keep_from > 0 {
            self.buf.drain(..keep_from);
            self.base += keep_from as u64;
            self.pos -= keep_from;
        }
        Ok(())
    }

    /// Masks the complete row `buf[start..end]` and appends it to `out`.
    fn row(&mut self, start: usize, end: usize, out: &mut Vec<u8>) -> Result<(), RowsetError> {
        let raw = &self.buf[start..end];
        let location = || {
            format!(
                "row {} at byte offset {}",
                self.seen,
                self.base + start as u64
            )
        };
        let text = std::str::from_utf8(raw).map_err(|_| RowsetError::MalformedJson {
            location: location(),
            problem: "row is not valid UTF-8",
        })?;
        self.spans.clear();
        parse_row(text.as_bytes(), &mut self.spans).map_err(|problem| {
            RowsetError::MalformedJson {
                location: location(),
                problem,
            }
        })?;
        if self.spans.len() != self.plan.columns.len() {
            return Err(RowsetError::RowWidth {
                location: location(),
                found: self.spans.len(),
                expected: self.plan.columns.len(),
            });
        }
        let mut replaced = false;
        if !self.noop {
            self.row_out.clear();
            let mut copied = 0;
            for (column, &(s, e)) in self.plan.columns.iter().zip(&self.spans) {
                if matches!(Plan::op(column, column.sf_type), Op::Keep) {
                    continue;
                }
                let cell = &text[s..e];
                if cell == "null" {
                    continue;
                }
                if !cell.starts_with('"') {
                    return Err(bad_value(column, location(), "not a string or null"));
                }
                let value: Cow<'_, str> = if cell.contains('\\') {
                    Cow::Owned(serde_json::from_str::<String>(cell).map_err(|_| {
                        RowsetError::MalformedJson {
                            location: location(),
                            problem: "invalid string escape",
                        }
                    })?)
                } else {
                    Cow::Borrowed(&cell[1..cell.len() - 1])
                };
                let count = self.counts.column_mut(column.index);
                let masked = mask_cell(column, &value, count, &mut self.scratch)
                    .map_err(|p| bad_value(column, location(), p))?;
                let replacement = match masked {
                    Cell::Same => continue,
                    Cell::Null => None,
                    Cell::Text(t) => Some(t),
                };
                self.row_out.extend_from_slice(&raw[copied..s]);
                match replacement {
                    None => self.row_out.extend_from_slice(b"null"),
                    Some(t) => serde_json::to_writer(&mut self.row_out, &t)
                        .expect("writing a string to a Vec cannot fail"),
                }
                copied = e;
                replaced = true;
            }
            if replaced {
                self.row_out.extend_from_slice(&raw[copied..]);
            }
        }
        self.seen += 1;
        if self.emitted > 0 {
            out.extend_from_slice(&self.sep);
        }
        self.sep.clear();
        out.extend_from_slice(if replaced { &self.row_out } else { raw });
        self.emitted += 1;
        self.counts.add_rows(1);
        Ok(())
    }
}

fn is_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

/// Parses one row (`[v, v, …]`, strict JSON) and records each value's byte span.
fn parse_row(b: &[u8], spans: &mut Vec<(usize, usize)>) -> Result<(), &'static str> {
    let mut p = 0;
    if b.first() != Some(&b'[') {
        return Err("expected `[` to start a row");
    }
    p += 1;
    skip_ws(b, &mut p);
    if b.get(p) == Some(&b']') {
        p += 1;
    } else {
        loop {
            skip_ws(b, &mut p);
            let s = p;
            parse_value(b, &mut p, 1)?;
            spans.push((s, p));
            skip_ws(b, &mut p);
            match b.get(p) {
                Some(b',') => p += 1,
                Some(b']') => {
                    p += 1;
                    break;
                }
                _ => return Err("expected `,` or `]` after a value"),
            }
        }
    }
    if p != b.len() {
        return Err("unexpected bytes after the row");
    }
    Ok(())
}

fn skip_ws(b: &[u8], p: &mut usize) {
    while b.get(*p).copied().is_some_and(is_ws) {
        *p += 1;
    }
}

fn parse_value(b: &[u8], p: &mut usize, depth: u32) -> Result<(), &'static str> {
    if depth > MAX_DEPTH {
        return Err("row nests too deeply");
    }
    match b.get(*p) {
        Some(b'"') => parse_string(b, p),
        Some(b'n') => literal(b, p, b"null"),
        Some(b't') => literal(b, p, b"true"),
        Some(b'f') => literal(b, p, b"false"),
        Some(b'-' | b'0'..=b'9') => parse_number(b, p),
        Some(b'[') => {
            *p += 1;
            skip_ws(b, p);
            if b.get(*p) == Some(&b']') {
                *p += 1;
                return Ok(());
            }
            loop {
                skip_ws(b, p);
                parse_value(b, p, depth + 1)?;
                skip_ws(b, p);
                match b.get(*p) {
                    Some(b',') => *p += 1,
                    Some(b']') => {
                        *p += 1;
                        return Ok(());
                    }
                    _ => return Err("expected `,` or `]` in an array"),
                }
            }
        }
        Some(b'{') => {
            *p += 1;
            skip_ws(b, p);
            if b.get(*p) == Some(&b'}') {
                *p += 1;
                return Ok(());
            }
            loop {
                skip_ws(b, p);
                if b.get(*p) != Some(&b'"') {
                    return Err("expected a string key in an object");
                }
                parse_string(b, p)?;
                skip_ws(b, p);
                if b.get(*p) != Some(&b':') {
                    return Err("expected `:` in an object");
                }
                *p += 1;
                skip_ws(b, p);
                parse_value(b, p, depth + 1)?;
                skip_ws(b, p);
                match b.get(*p) {
                    Some(b',') => *p += 1,
                    Some(b'}') => {
                        *p += 1;
                        return Ok(());
                    }
                    _ => return Err("expected `,` or `}` in an object"),
                }
            }
        }
        _ => Err("expected a JSON value"),
    }
}

fn literal(b: &[u8], p: &mut usize, lit: &[u8]) -> Result<(), &'static str> {
    if b[*p..].starts_with(lit) {
        *p += lit.len();
        Ok(())
    } else {
        Err("expected a JSON value")
    }
}

fn parse_string(b: &[u8], p: &mut usize) -> Result<(), &'static str> {
    *p += 1;
    loop {
        match b.get(*p) {
            None => return Err("unterminated string"),
            Some(b'"') => {
                *p += 1;
                return Ok(());
            }
            Some(b'\\') => match b.get(*p + 1) {
                Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => *p += 2,
                Some(b'u') => {
                    let hex = b.get(*p + 2..*p + 6).ok_or("invalid string escape")?;
                    if !hex.iter().all(u8::is_ascii_hexdigit) {
                        return Err("invalid string escape");
                    }
                    *p += 6;
                }
                _ => return Err("invalid string escape"),
            },
            Some(&c) if c < 0x20 => return Err("control character in a string"),
            Some(_) => *p += 1,
        }
    }
}

fn parse_number(b: &[u8], p: &mut usize) -> Result<(), &'static str> {
    const BAD: &str = "invalid number";
    let digits = |p: &mut usize| {
        let s = *p;
        while b.get(*p).is_some_and(u8::is_ascii_digit) {
            *p += 1;
        }
        *p - s
    };
    if b.get(*p) == Some(&b'-') {
        *p += 1;
    }
    match b.get(*p) {
        Some(b'0') => *p += 1,
        Some(b'1'..=b'9') => {
            digits(p);
        }
        _ => return Err(BAD),
    }
    if b.get(*p) == Some(&b'.') {
        *p += 1;
        if digits(p) == 0 {
            return Err(BAD);
        }
    }
    if matches!(b.get(*p), Some(b'e' | b'E')) {
        *p += 1;
        if matches!(b.get(*p), Some(b'+' | b'-')) {
            *p += 1;
        }
        if digits(p) == 0 {
            return Err(BAD);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(s: &str) -> Result<Vec<&str>, &'static str> {
        let mut spans = Vec::new();
        parse_row(s.as_bytes(), &mut spans)?;
        Ok(spans.iter().map(|&(a, b)| &s[a..b]).collect())
    }

    #[test]
    fn rows_parse_strictly() {
        assert_eq!(
            row(r#"["1", null,"a\"b"]"#).unwrap(),
            [r#""1""#, "null", r#""a\"b""#]
        );
        assert_eq!(row("[ ]").unwrap(), Vec::<&str>::new());
        assert_eq!(row(r#"[1.5e3,{"a":[true,false]}]"#).unwrap().len(), 2);
        for bad in [
            "[",
            "[1,]",
            "[,1]",
            "[01]",
            "[1.]",
            "[\"\\x\"]",
            "[\"a\nb\"]",
            "[nul]",
            "[1]x",
            "[{1:2}]",
            "[\"\\u12\"]",
        ] {
            assert!(row(bad).is_err(), "{bad}");
        }
    }
}
