//! Snowflake value encodings → the text a masking method sees.
//!
//! Both result formats render a value to the same text, so a token of a date or a number is
//! the same whether the driver asked for JSON or Arrow:
//! - FIXED: decimal text with exactly `scale` fraction digits (`-12.50`); REAL: Rust's
//!   shortest round-trip form (`1.5`, `1e300`);
//! - DATE: `YYYY-MM-DD`; TIME: `HH:MM:SS[.f]` with `scale` fraction digits;
//! - TIMESTAMP_NTZ: `YYYY-MM-DD HH:MM:SS[.f]`; TIMESTAMP_LTZ: the same in UTC + ` +00:00`;
//!   TIMESTAMP_TZ: local time + ` +HH:MM`;
//! - BOOLEAN: `true`/`false`; BINARY: upper-case hex (Snowflake's default output format);
//! - TEXT, VARIANT, OBJECT, ARRAY and unknown types: the text as is.

use std::fmt::Write as _;

use crate::detect::DATE_YEARS;

/// A Snowflake logical type, from a rowtype `type` or an Arrow field's `logicalType`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SfType {
    Fixed,
    Real,
    Text,
    Date,
    Time,
    TimestampNtz,
    TimestampLtz,
    TimestampTz,
    Boolean,
    Binary,
    Variant,
    Object,
    Array,
    /// Anything else (GEOGRAPHY, VECTOR, …): masked as text when it arrives as text.
    Other,
}

impl SfType {
    /// Parses a type name, case-insensitively (rowtypes say `fixed`, Arrow metadata `FIXED`).
    pub(crate) fn parse(name: &str) -> SfType {
        const NAMES: [(&str, SfType); 13] = [
            ("fixed", SfType::Fixed),
            ("real", SfType::Real),
            ("text", SfType::Text),
            ("date", SfType::Date),
            ("time", SfType::Time),
            ("timestamp_ntz", SfType::TimestampNtz),
            ("timestamp_ltz", SfType::TimestampLtz),
            ("timestamp_tz", SfType::TimestampTz),
            ("boolean", SfType::Boolean),
            ("binary", SfType::Binary),
            ("variant", SfType::Variant),
            ("object", SfType::Object),
            ("array", SfType::Array),
        ];
        NAMES
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map_or(SfType::Other, |&(_, t)| t)
    }

    /// Whether values of this type are free text that detectors may scan.
    pub(crate) fn is_textual(self) -> bool {
        matches!(
            self,
            SfType::Text | SfType::Variant | SfType::Object | SfType::Array
        )
    }
}

/// The `scale` to use for a type when the rowtype or metadata gives none.
pub(crate) fn default_scale(t: SfType) -> u32 {
    match t {
        SfType::Time | SfType::TimestampNtz | SfType::TimestampLtz | SfType::TimestampTz => 9,
        _ => 0,
    }
}

const NANOS_PER_SEC: i128 = 1_000_000_000;

/// `10^n` for `n <= 9`.
pub(crate) fn pow10(n: u32) -> i64 {
    10_i64.pow(n.min(18))
}

/// Appends `v / 10^scale` as decimal text with exactly `scale` fraction digits.
pub(crate) fn push_decimal(out: &mut String, v: i128, scale: u32) {
    if scale == 0 {
        let _ = write!(out, "{v}");
        return;
    }
    let digits = v.unsigned_abs().to_string();
    if v < 0 {
        out.push('-');
    }
    let scale = scale as usize;
    if digits.len() <= scale {
        out.push_str("0.");
        out.extend(std::iter::repeat_n('0', scale - digits.len()));
        out.push_str(&digits);
    } else {
        let (int, frac) = digits.split_at(digits.len() - scale);
        out.push_str(int);
        out.push('.');
        out.push_str(frac);
    }
}

/// Appends a float in its shortest round-trip form (`1.5`, `100.0`, `1e300`, `NaN`, `inf`).
pub(crate) fn push_float(out: &mut String, v: f64) {
    let _ = write!(out, "{v:?}");
}

/// `(year, month, day)` of a day count since 1970-01-01 (proleptic Gregorian).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    // Howard Hinnant's `civil_from_days`.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// The year [`Method::Generalize`](crate::Method::Generalize) keeps of the DATE `days` (since
/// 1970-01-01), computed without rendering the date, when the rendered date is one it
/// recognises (a year of [`DATE_YEARS`]); `None` otherwise, for the general path (render, then
/// generalise), which gives the same output.
pub(crate) fn generalized_year(days: i64) -> Option<u32> {
    // Far outside any calendar date (and out of `civil_from_days`'s range).
    if days.unsigned_abs() > 1 << 40 {
        return None;
    }
    let year = u32::try_from(civil_from_days(days).0).ok()?;
    DATE_YEARS.contains(&year).then_some(year)
}

/// Appends `YYYY-MM-DD` for a day count since the epoch.
pub(crate) fn push_date(out: &mut String, days: i64) {
    let (y, m, d) = civil_from_days(days);
    if (0..=9999).contains(&y) {
        let _ = write!(out, "{y:04}-{m:02}-{d:02}");
    } else {
        let _ = write!(out, "{y}-{m:02}-{d:02}");
    }
}

/// Appends `.` and the first `scale` digits of `nanos` (nothing for scale 0).
fn push_fraction(out: &mut String, nanos: u32, scale: u32) {
    let scale = scale.min(9);
    if scale == 0 {
        return;
    }
    let v = i64::from(nanos) / pow10(9 - scale);
    let _ = write!(out, ".{v:0width$}", width = scale as usize);
}

/// Appends `HH:MM:SS[.f]`; `None` if `nanos_of_day` is not within one day.
pub(crate) fn push_time(out: &mut String, nanos_of_day: i128, scale: u32) -> Option<()> {
    if !(0..86_400 * NANOS_PER_SEC).contains(&nanos_of_day) {
        return None;
    }
    let secs = (nanos_of_day / NANOS_PER_SEC) as i64;
    let nanos = (nanos_of_day % NANOS_PER_SEC) as u32;
    let _ = write!(
        out,
        "{:02}:{:02}:{:02}",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    );
    push_fraction(out, nanos, scale);
    Some(())
}

/// Appends a timestamp given as nanoseconds since the epoch (UTC). With `offset_minutes`, the
/// local time at that offset is written, followed by ` +HH:MM`.
pub(crate) fn push_timestamp(
    out: &mut String,
    epoch_nanos: i128,
    scale: u32,
    offset_minutes: Option<i32>,
) -> Option<()> {
    let local = epoch_nanos + i128::from(offset_minutes.unwrap_or(0)) * 60 * NANOS_PER_SEC;
    let secs = i64::try_from(local.div_euclid(NANOS_PER_SEC)).ok()?;
    let nanos = local.rem_euclid(NANOS_PER_SEC) as u32;
    // Keep years printable (±292 billion years fit i64 seconds; dates that far out are junk).
    if secs.unsigned_abs() > 1 << 50 {
        return None;
    }
    push_date(out, secs.div_euclid(86_400));
    let sod = secs.rem_euclid(86_400);
    let _ = write!(
        out,
        " {:02}:{:02}:{:02}",
        sod / 3600,
        sod / 60 % 60,
        sod % 60
    );
    push_fraction(out, nanos, scale);
    if let Some(off) = offset_minutes {
        let sign = if off < 0 { '-' } else { '+' };
        let a = off.unsigned_abs();
        let _ = write!(out, " {sign}{:02}:{:02}", a / 60, a % 60);
    }
    Some(())
}

/// Appends bytes as upper-case hex.
pub(crate) fn push_hex(out: &mut String, bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    out.reserve(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 0xf)]));
    }
}

/// Parses Snowflake's JSON encoding of seconds (`"1704164645.123000000"`, `"-1.5"`) into
/// nanoseconds. Fraction digits past the ninth are ignored.
pub(crate) fn parse_seconds(s: &str) -> Option<i128> {
    let (neg, s) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s),
    };
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    let digits = |p: &str| p.bytes().all(|b| b.is_ascii_digit());
    if int.is_empty() || int.len() > 20 || !digits(int) || !digits(frac) {
        return None;
    }
    let mut nanos: i128 = int.parse::<i128>().ok()? * NANOS_PER_SEC;
    let mut unit = NANOS_PER_SEC / 10;
    for b in frac.bytes().take(9) {
        nanos += i128::from(b - b'0') * unit;
        unit /= 10;
    }
    Some(if neg { -nanos } else { nanos })
}

/// Renders one JSON rowset value (Snowflake's string encoding of `t`) as masking text.
/// `Err` names what the value should have been.
pub(crate) fn json_text(
    t: SfType,
    scale: u32,
    s: &str,
    out: &mut String,
) -> Result<(), &'static str> {
    match t {
        SfType::Text
        | SfType::Variant
        | SfType::Object
        | SfType::Array
        | SfType::Other
        | SfType::Fixed
        | SfType::Real => out.push_str(s),
        SfType::Date => {
            let days: i64 = s
                .parse()
                .map_err(|_| "not a DATE (days since 1970-01-01)")?;
            if days.unsigned_abs() > 1 << 40 {
                return Err("not a DATE (days since 1970-01-01)");
            }
            push_date(out, days);
        }
        SfType::Time => {
            let nanos = parse_seconds(s).ok_or("not a TIME (seconds since midnight)")?;
            push_time(out, nanos, scale).ok_or("not a TIME (seconds since midnight)")?;
        }
        SfType::TimestampNtz | SfType::TimestampLtz => {
            const WHAT: &str = "not a TIMESTAMP (seconds since the epoch)";
            let nanos = parse_seconds(s).ok_or(WHAT)?;
            let offset = (t == SfType::TimestampLtz).then_some(0);
            push_timestamp(out, nanos, scale, offset).ok_or(WHAT)?;
        }
        SfType::TimestampTz => {
            const WHAT: &str = "not a TIMESTAMP_TZ (seconds since the epoch, then a time zone)";
            let (secs, tz) = match s.split_once(' ') {
                Some((secs, tz)) => (secs, Some(tz)),
                None => (s, None),
            };
            let nanos = parse_seconds(secs).ok_or(WHAT)?;
            let offset = match tz {
                Some(tz) => tz_offset(tz.trim().parse().map_err(|_| WHAT)?).ok_or(WHAT)?,
                None => 0,
            };
            push_timestamp(out, nanos, scale, Some(offset)).ok_or(WHAT)?;
        }
        SfType::Boolean => {
            let v = if s == "1" || s.eq_ignore_ascii_case("true") {
                "true"
            } else if s == "0" || s.eq_ignore_ascii_case("false") {
                "false"
            } else {
                return Err("not a BOOLEAN (`1`/`0`)");
            };
            out.push_str(v);
        }
        SfType::Binary => {
            if s.len() % 2 != 0 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err("not a BINARY (hex)");
            }
            out.extend(s.chars().map(|c| c.to_ascii_uppercase()));
        }
    }
    Ok(())
}

/// Snowflake's time zone index (minutes east of UTC + 1440) → offset in minutes.
pub(crate) fn tz_offset(index: i64) -> Option<i32> {
    let off = index - 1440;
    (-1440..=1440).contains(&off).then_some(off as i32)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(t: SfType, scale: u32, s: &str) -> Result<String, &'static str> {
        let mut out = String::new();
        json_text(t, scale, s, &mut out).map(|()| out)
    }

    #[test]
    fn decimals() {
        let f = |v, s| {
            let mut o = String::new();
            push_decimal(&mut o, v, s);
            o
        };
        assert_eq!(f(1050, 2), "10.50");
        assert_eq!(f(-5, 2), "-0.05");
        assert_eq!(f(0, 2), "0.00");
        assert_eq!(f(-123, 0), "-123");
        assert_eq!(f(i128::MIN, 3).len(), 41);
    }

    #[test]
    fn dates_and_times() {
        assert_eq!(json(SfType::Date, 0, "7367").unwrap(), "1990-03-04");
        assert_eq!(json(SfType::Date, 0, "-1").unwrap(), "1969-12-31");
        assert_eq!(json(SfType::Date, 0, "0").unwrap(), "1970-01-01");
        assert_eq!(json(SfType::Date, 0, "11016").unwrap(), "2000-02-29");
        assert!(json(SfType::Date, 0, "x").is_err());
        assert_eq!(
            json(SfType::TimestampNtz, 9, "1704164645.000000000").unwrap(),
            "2024-01-02 03:04:05.000000000"
        );
        assert_eq!(
            json(SfType::TimestampNtz, 3, "-0.5").unwrap(),
            "1969-12-31 23:59:59.500"
        );
        assert_eq!(
            json(SfType::TimestampTz, 0, "1704164645.000000000 1500").unwrap(),
            "2024-01-02 04:04:05 +01:00"
        );
        assert_eq!(
            json(SfType::TimestampTz, 0, "0 1380").unwrap(),
            "1969-12-31 23:00:00 -01:00"
        );
        assert_eq!(
            json(SfType::TimestampLtz, 0, "0").unwrap(),
            "1970-01-01 00:00:00 +00:00"
        );
        assert_eq!(json(SfType::Time, 3, "3723.5").unwrap(), "01:02:03.500");
        assert!(json(SfType::Time, 3, "86400").is_err());
        assert!(json(SfType::TimestampNtz, 3, "1e5").is_err());
        assert!(json(SfType::TimestampNtz, 3, "").is_err());
    }

    #[test]
    fn booleans_binary_and_text() {
        assert_eq!(json(SfType::Boolean, 0, "1").unwrap(), "true");
        assert_eq!(json(SfType::Boolean, 0, "0").unwrap(), "false");
        assert!(json(SfType::Boolean, 0, "2").is_err());
        assert_eq!(json(SfType::Binary, 0, "6162ff").unwrap(), "6162FF");
        assert!(json(SfType::Binary, 0, "616").is_err());
        assert_eq!(json(SfType::Fixed, 2, "1.25").unwrap(), "1.25");
        assert_eq!(json(SfType::Variant, 0, "{\"a\":1}").unwrap(), "{\"a\":1}");
        assert_eq!(SfType::parse("TIMESTAMP_NTZ"), SfType::TimestampNtz);
        assert_eq!(SfType::parse("geography"), SfType::Other);
    }
}
