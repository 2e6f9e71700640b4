//! The per-column masking plan shared by the JSON and Arrow maskers.

use serde_json::Value;

use super::value::{default_scale, SfType};
use super::{ColumnRule, DetectRule, RowsetError};
use crate::method::Method;

/// One result column: its rowtype facts and what to do with it.
#[derive(Debug)]
pub(crate) struct Column {
    pub(crate) index: usize,
    /// Name from the rowtype (for error messages).
    pub(crate) name: String,
    /// Type from the rowtype; `None` if the entry has none (allowed for kept columns only).
    pub(crate) sf_type: Option<SfType>,
    /// `scale` from the rowtype, or the type's default.
    pub(crate) scale: u32,
    pub(crate) rule: ColumnRule,
}

/// What a column's values go through, resolved against the rowtype.
#[derive(Debug)]
pub(crate) enum Op<'a> {
    Keep,
    /// Values are masked by `method`; the output type stays (Null) or becomes TEXT.
    Mask(&'a Method),
    /// Free text scanned by detectors.
    Detect(&'a DetectRule),
}

#[derive(Debug)]
pub(crate) struct Plan {
    pub(crate) columns: Vec<Column>,
}

impl Plan {
    pub(crate) fn new(rules: Vec<ColumnRule>, rowtype: &[Value]) -> Result<Plan, RowsetError> {
        if rules.len() != rowtype.len() {
            return Err(RowsetError::ColumnCount {
                rules: rules.len(),
                columns: rowtype.len(),
                what: "rowtype",
            });
        }
        let columns = rules
            .into_iter()
            .zip(rowtype)
            .enumerate()
            .map(|(index, (rule, entry))| {
                let name = entry
                    .get("name")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_owned();
                let sf_type = entry.get("type").and_then(Value::as_str).map(SfType::parse);
                if sf_type.is_none() && !matches!(rule, ColumnRule::Keep) {
                    return Err(RowsetError::MissingType {
                        column: index,
                        name,
                    });
                }
                let scale = entry
                    .get("scale")
                    .and_then(Value::as_u64)
                    .map_or_else(|| sf_type.map_or(0, default_scale), |s| s.min(38) as u32);
                Ok(Column {
                    index,
                    name,
                    sf_type,
                    scale,
                    rule,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Plan { columns })
    }

    /// The operation for a column whose logical type is `t` (rowtype for JSON, field metadata
    /// for Arrow): `Detect` on a column that is not free text keeps it.
    pub(crate) fn op(column: &Column, t: Option<SfType>) -> Op<'_> {
        match &column.rule {
            ColumnRule::Keep => Op::Keep,
            ColumnRule::Mask(m) => Op::Mask(m),
            ColumnRule::Detect(d) if t.is_some_and(SfType::is_textual) => Op::Detect(d),
            ColumnRule::Detect(_) => Op::Keep,
        }
    }

    pub(crate) fn is_noop(&self) -> bool {
        self.columns
            .iter()
            .all(|c| matches!(Plan::op(c, c.sf_type), Op::Keep))
    }

    pub(crate) fn rewrite_rowtype(&self, rowtype: &mut [Value]) {
        for (column, entry) in self.columns.iter().zip(rowtype.iter_mut()) {
            let Some(obj) = entry.as_object_mut() else {
                continue;
            };
            match Plan::op(column, column.sf_type) {
                Op::Mask(Method::Null) => {
                    obj.insert("nullable".into(), Value::Bool(true));
                }
                Op::Mask(_) if column.sf_type != Some(SfType::Text) => {
                    obj.insert("type".into(), Value::from("text"));
                    obj.insert("length".into(), Value::from(TEXT_LENGTH));
                    obj.insert("byteLength".into(), Value::from(TEXT_LENGTH));
                    obj.insert("precision".into(), Value::Null);
                    obj.insert("scale".into(), Value::Null);
                    obj.insert("nullable".into(), Value::Bool(true));
                }
                _ => {}
            }
        }
    }
}

/// Length Snowflake gives an unbounded VARCHAR (16 MiB), in characters and bytes.
pub(crate) const TEXT_LENGTH: u64 = 16_777_216;
