//! JSON rowsets: the inline `data.rowset` and streamed chunk bodies.
//!
//! A chunk body is the rows of a rowset without the outer brackets: `["1","a"],["2",null]`
//! (the drivers wrap it in `[` … `]` and parse it as one array, so any JSON whitespace around
//! the commas is allowed). The chunk masker copies unmasked rows byte for byte and rewrites
//! only the masked values inside a row, so separators and spacing stay as the server sent them.

use std::sync::Arc;

use serde_json::Value;

use super::json_scan::{
    has_backslash, is_ws, parse_row, scan_row, unescape, write_json_str, BadEscape, RowEnd, TooDeep,
};
use super::plan::{Column, Op, Plan};
use super::value::{generalized_year, json_text, SfType};
use super::{ColumnCount, ColumnCounts, RowsetError};
use crate::method::{push_year, Method};
use crate::text::mask_text_by_kind;

/// Most separator bytes kept between two rows; longer runs of whitespace are shortened.
const MAX_SEPARATOR: usize = 16;

/// What masking makes of a cell.
enum Cell {
    /// Unchanged.
    Same,
    /// Becomes `null`.
    Null,
    /// Becomes the text [`mask_cell`] left in its `masked` buffer.
    Text,
}

/// Masks one non-null string value of `column` (its text, unescaped), leaving a replacement
/// text in `masked`. The one place where both JSON paths (whole rowsets, streamed chunks)
/// decide a cell. `Err` says what the value should have been.
fn mask_cell(
    column: &Column,
    value: &str,
    count: &mut ColumnCount,
    rendered: &mut String,
    masked: &mut String,
) -> Result<Cell, &'static str> {
    match Plan::op(column, column.sf_type) {
        Op::Keep => Ok(Cell::Same),
        Op::Mask(method) => {
            masked.clear();
            // A DATE's year without rendering the date, where that gives the same output.
            let year = match (method, column.sf_type) {
                (Method::Generalize, Some(SfType::Date)) => {
                    value.parse().ok().and_then(generalized_year)
                }
                _ => None,
            };
            let text = if let Some(year) = year {
                push_year(year, masked);
                true
            } else if matches!(method, Method::Null | Method::Redact) {
                // The output does not depend on the value: it is not rendered (nor, in a
                // chunk, unescaped).
                method.apply_into("", masked)
            } else {
                rendered.clear();
                let t = column.sf_type.unwrap_or(SfType::Other);
                json_text(t, column.scale, value, rendered)?;
                method.apply_into(rendered, masked)
            };
            count.masked += 1;
            Ok(if text { Cell::Text } else { Cell::Null })
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
                    *masked = s;
                    Ok(Cell::Text)
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
    let (mut rendered, mut masked) = (String::new(), String::new());
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
                Value::String(s) => mask_cell(
                    column,
                    s,
                    counts.column_mut(column.index),
                    &mut rendered,
                    &mut masked,
                )
                .map_err(|p| bad_value(column, format!("row {r}"), p))?,
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
                Cell::Text => *cell = Value::String(std::mem::take(&mut masked)),
            }
        }
        counts.add_rows(1);
    }
    Ok(())
}

/// Where the chunk scanner is between rows.
#[derive(Debug, Clone, Copy)]
enum State {
    /// Before the first row: whitespace, then `[`.
    Start,
    /// After a row: whitespace, then `,` or the end.
    AfterRow,
    /// After a `,`: whitespace, then `[`.
    AfterComma,
    /// Inside a row that goes on past the last piece; its bytes so far are in `buf`.
    InRow(RowEnd),
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
    /// Indices of the columns whose values may change.
    masked: Vec<usize>,
    limit: Option<u64>,
    /// The bytes so far of a row that goes on past the last piece.
    buf: Vec<u8>,
    /// Byte offset in the whole input of the row in `buf`.
    row_at: u64,
    /// Bytes pushed so far (before the piece being scanned).
    offset: u64,
    state: State,
    /// Separator bytes since the last emitted row.
    sep: Vec<u8>,
    emitted: u64,
    /// Rows parsed so far (row numbers in errors).
    seen: u64,
    counts: ColumnCounts,
    failed: bool,
    spans: Vec<(usize, usize)>,
    scratch: Scratch,
}

/// Buffers reused from cell to cell.
#[derive(Debug, Default)]
struct Scratch {
    /// The unescaped value.
    value: String,
    /// The value rendered as masking text.
    rendered: String,
    /// The masked text.
    masked: String,
}

/// Why a cell could not be masked.
enum CellError {
    Malformed(&'static str),
    Value(&'static str),
}

impl JsonChunkMasker {
    pub(crate) fn new(plan: Arc<Plan>) -> Self {
        let n = plan.columns.len();
        let masked = plan
            .columns
            .iter()
            .filter(|c| !matches!(Plan::op(c, c.sf_type), Op::Keep))
            .map(|c| c.index)
            .collect();
        JsonChunkMasker {
            plan,
            masked,
            limit: None,
            buf: Vec::new(),
            row_at: 0,
            offset: 0,
            state: State::Start,
            sep: Vec::new(),
            emitted: 0,
            seen: 0,
            counts: ColumnCounts::new(n),
            failed: false,
            spans: Vec::with_capacity(n),
            scratch: Scratch::default(),
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
        let r = self.push_inner(input, out);
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
                offset: self.offset,
            }),
            State::InRow(_) => Err(RowsetError::Truncated {
                format: "JSON chunk",
                what: format!("row {}", self.seen),
                offset: self.row_at,
            }),
        }
    }

    fn location(&self, offset: u64) -> String {
        format!("row {} at byte offset {offset}", self.seen)
    }

    fn push_sep(&mut self, b: u8) {
        if b == b',' || self.sep.len() < MAX_SEPARATOR {
            self.sep.push(b);
        }
    }

    fn push_inner(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<(), RowsetError> {
        let mut from = 0;
        if let State::InRow(mut end) = self.state {
            // Only the rest of the pending row is buffered; the rows after it are scanned
            // where they are.
            let found = end
                .find(input)
                .map_err(|TooDeep| RowsetError::MalformedJson {
                    location: self.location(self.row_at),
                    problem: "row nests too deeply",
                })?;
            let Some(k) = found else {
                self.buf.extend_from_slice(input);
                self.state = State::InRow(end);
                self.offset += input.len() as u64;
                return Ok(());
            };
            self.buf.extend_from_slice(&input[..k]);
            let row = std::mem::take(&mut self.buf);
            let r = self.checked_row(&row, self.row_at, out);
            self.buf = row;
            self.buf.clear();
            r?;
            self.state = State::AfterRow;
            from = k;
        }
        // One UTF-8 check for the rest of the piece; rows past its valid prefix (a code point
        // split at the end, or bad bytes) are checked on their own.
        let rest = &input[from..];
        let text = match std::str::from_utf8(rest) {
            Ok(t) => t,
            Err(e) => std::str::from_utf8(&rest[..e.valid_up_to()]).unwrap_or_default(),
        };
        let r = self.scan(input, text, from, out);
        self.offset += input.len() as u64;
        r
    }

    /// Scans `data[from..]` (the current piece, at `self.offset`; the valid UTF-8 prefix of
    /// `data[from..]` is `text`), emitting each complete row.
    fn scan(
        &mut self,
        data: &[u8],
        text: &str,
        from: usize,
        out: &mut Vec<u8>,
    ) -> Result<(), RowsetError> {
        let mut pos = from;
        while pos < data.len() {
            let b = data[pos];
            match self.state {
                State::Start | State::AfterComma => {
                    if is_ws(b) {
                        if matches!(self.state, State::AfterComma) {
                            self.push_sep(b);
                        }
                        pos += 1;
                        continue;
                    }
                    if b != b'[' {
                        return Err(RowsetError::MalformedJson {
                            location: self.location(self.offset + pos as u64),
                            problem: "expected `[` to start a row",
                        });
                    }
                    if self.limit.is_some_and(|l| self.emitted >= l) {
                        self.counts.set_truncated();
                        self.state = State::Discard;
                        self.buf = Vec::new();
                        return Ok(());
                    }
                    let row_at = self.offset + pos as u64;
                    let rest = &data[pos..];
                    self.spans.clear();
                    if let Ok(n) = scan_row(rest, &mut self.spans) {
                        let text = match text.get(pos - from..pos - from + n) {
                            Some(t) => t,
                            None => self.utf8(&rest[..n], row_at)?,
                        };
                        self.emit_row(text, row_at, out)?;
                        pos += n;
                        self.state = State::AfterRow;
                        continue;
                    }
                    // Incomplete or malformed: where the row ends decides which (and a
                    // malformed row is reported with the problem its complete bytes show).
                    let mut end = RowEnd::default();
                    let found = end
                        .find(rest)
                        .map_err(|TooDeep| RowsetError::MalformedJson {
                            location: self.location(row_at),
                            problem: "row nests too deeply",
                        })?;
                    match found {
                        Some(n) => {
                            self.checked_row(&rest[..n], row_at, out)?;
                            pos += n;
                            self.state = State::AfterRow;
                        }
                        None => {
                            self.buf.clear();
                            self.buf.extend_from_slice(rest);
                            self.row_at = row_at;
                            self.state = State::InRow(end);
                            return Ok(());
                        }
                    }
                }
                State::AfterRow => {
                    if is_ws(b) {
                        self.push_sep(b);
                    } else if b == b',' {
                        self.push_sep(b);
                        self.state = State::AfterComma;
                    } else {
                        return Err(RowsetError::MalformedJson {
                            location: self.location(self.offset + pos as u64),
                            problem: "expected `,` between rows",
                        });
                    }
                    pos += 1;
                }
                // `push` settles these states before scanning; should that ever change, the
                // chunk fails (and is withheld) rather than the process panicking.
                State::InRow(_) | State::Discard => return Err(RowsetError::Failed),
            }
        }
        Ok(())
    }

    /// Validates and emits the complete row `row` (UTF-8 first, then the grammar).
    fn checked_row(
        &mut self,
        row: &[u8],
        row_at: u64,
        out: &mut Vec<u8>,
    ) -> Result<(), RowsetError> {
        let text = self.utf8(row, row_at)?;
        self.spans.clear();
        parse_row(row, &mut self.spans).map_err(|problem| RowsetError::MalformedJson {
            location: self.location(row_at),
            problem,
        })?;
        self.emit_row(text, row_at, out)
    }

    fn utf8<'a>(&self, row: &'a [u8], row_at: u64) -> Result<&'a str, RowsetError> {
        std::str::from_utf8(row).map_err(|_| RowsetError::MalformedJson {
            location: self.location(row_at),
            problem: "row is not valid UTF-8",
        })
    }

    /// Masks the complete row `text`, whose value spans are in `spans`, and appends it to
    /// `out`.
    fn emit_row(&mut self, text: &str, row_at: u64, out: &mut Vec<u8>) -> Result<(), RowsetError> {
        let row = text.as_bytes();
        if self.spans.len() != self.plan.columns.len() {
            return Err(RowsetError::RowWidth {
                location: self.location(row_at),
                found: self.spans.len(),
                expected: self.plan.columns.len(),
            });
        }
        let mark = out.len();
        if self.emitted > 0 {
            out.extend_from_slice(&self.sep);
        }
        let mut copied = 0;
        for &i in &self.masked {
            let column = &self.plan.columns[i];
            let (s, e) = self.spans[i];
            let cell = &row[s..e];
            let r = match cell[0] {
                b'n' => continue,
                b'"' => {
                    // Everything before the cell goes out first; an unchanged cell is
                    // copied with what follows it.
                    out.extend_from_slice(&row[copied..s]);
                    copied = s;
                    mask_string_cell(
                        column,
                        &text[s + 1..e - 1],
                        self.counts.column_mut(i),
                        &mut self.scratch,
                        out,
                    )
                }
                _ => Err(CellError::Value("not a string or null")),
            };
            match r {
                Ok(true) => copied = e,
                Ok(false) => {}
                Err(err) => {
                    out.truncate(mark);
                    let location = self.location(row_at);
                    return Err(match err {
                        CellError::Malformed(problem) => {
                            RowsetError::MalformedJson { location, problem }
                        }
                        CellError::Value(problem) => bad_value(column, location, problem),
                    });
                }
            }
        }
        out.extend_from_slice(&row[copied..]);
        self.sep.clear();
        self.seen += 1;
        self.emitted += 1;
        self.counts.add_rows(1);
        Ok(())
    }
}

/// Masks the string cell whose raw contents (between the quotes) are `text` and, if it
/// changes, appends its replacement to `out` and returns `true`.
fn mask_string_cell(
    column: &Column,
    text: &str,
    count: &mut ColumnCount,
    scratch: &mut Scratch,
    out: &mut Vec<u8>,
) -> Result<bool, CellError> {
    let Scratch {
        value: unescaped,
        rendered,
        masked,
    } = scratch;
    let raw = text.as_bytes();
    let value = match Plan::op(column, column.sf_type) {
        Op::Keep => return Ok(false),
        // The output does not depend on the value: it is read only if it has escapes, to
        // check that they stand for characters.
        Op::Mask(Method::Null | Method::Redact) if !has_backslash(raw) => "",
        _ if has_backslash(raw) => {
            unescape(text, unescaped)
                .map_err(|BadEscape| CellError::Malformed("invalid string escape"))?;
            unescaped.as_str()
        }
        _ => text,
    };
    match mask_cell(column, value, count, rendered, masked).map_err(CellError::Value)? {
        Cell::Same => return Ok(false),
        Cell::Null => out.extend_from_slice(b"null"),
        Cell::Text => write_json_str(out, masked),
    }
    Ok(true)
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
