//! Values between `spin:postgres` and Postgres's binary wire format: a guest's parameters bound
//! to whatever type the server expects for them (an integer to any integer column it fits,
//! text to text, numeric, uuid or json), and each column read back as the interface's value
//! for it (as Spin maps them; `json` also reads as `jsonb`, and a type the interface lacks is
//! `unsupported` with its raw bytes). `numeric` travels as decimal text, with no precision lost.

use std::error::Error as StdError;

use bytes::{BufMut, BytesMut};
use chrono::{DateTime, Datelike, NaiveDate, NaiveDateTime, NaiveTime, Timelike, Utc};
use tokio_postgres::Row;
use tokio_postgres::types::{FromSql, IsNull, Kind, ToSql, Type, to_sql_checked};

use super::bindings::spin::postgres::postgres::{Column, DbDataType, DbValue, Interval, ParameterValue};

type BoxError = Box<dyn StdError + Sync + Send>;

/// A parameter that does not fit the type the server expects: the guest's `bad-parameter`.
#[derive(Debug)]
pub struct ParamError(String);

impl std::fmt::Display for ParamError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl StdError for ParamError {}

fn refuse(what: &str, ty: &Type) -> BoxError {
    Box::new(ParamError(format!(
        "a {what} parameter cannot be bound to a value of type {ty}: pass the type the statement expects, or cast in SQL"
    )))
}

/// A guest's parameter, always bound (never interpolated into the statement).
#[derive(Debug, Clone)]
pub struct Param(pub ParameterValue);

impl ToSql for Param {
    fn to_sql(&self, ty: &Type, out: &mut BytesMut) -> Result<IsNull, BoxError> {
        use ParameterValue as P;
        match &self.0 {
            P::DbNull => return Ok(IsNull::Yes),
            P::Boolean(v) if *ty == Type::BOOL => out.put_u8(u8::from(*v)),
            P::Boolean(_) => return Err(refuse("boolean", ty)),
            P::Int8(v) => integer(i64::from(*v), ty, out)?,
            P::Int16(v) => integer(i64::from(*v), ty, out)?,
            P::Int32(v) => integer(i64::from(*v), ty, out)?,
            P::Int64(v) => integer(*v, ty, out)?,
            P::Floating32(v) if *ty == Type::FLOAT4 => out.put_f32(*v),
            P::Floating32(v) => float(f64::from(*v), ty, out)?,
            P::Floating64(v) => float(*v, ty, out)?,
            P::Str(v) => text(v, ty, out)?,
            P::Binary(v) if *ty == Type::BYTEA => out.put_slice(v),
            P::Binary(_) => return Err(refuse("binary", ty)),
            P::Date((y, m, d)) => date(*y, *m, *d).ok_or_else(|| bad("date"))?.to_sql_checked(ty, out).map(drop)?,
            P::Time((h, m, s, ns)) => {
                time(*h, *m, *s, *ns).ok_or_else(|| bad("time"))?.to_sql_checked(ty, out).map(drop)?
            }
            P::Datetime((y, mo, d, h, mi, s, ns)) => {
                let at = date(*y, *mo, *d).zip(time(*h, *mi, *s, *ns)).ok_or_else(|| bad("datetime"))?;
                instant(NaiveDateTime::new(at.0, at.1), ty, out)?
            }
            P::Timestamp(secs) => {
                instant(DateTime::from_timestamp(*secs, 0).ok_or_else(|| bad("timestamp"))?.naive_utc(), ty, out)?
            }
            P::Uuid(v) if *ty == Type::UUID => {
                out.put_slice(uuid::Uuid::parse_str(v).map_err(|_| bad("uuid"))?.as_bytes())
            }
            P::Uuid(v) => text(v, ty, out)?,
            P::Jsonb(v) => json(v, ty, out)?,
            P::Decimal(v) if *ty == Type::NUMERIC => numeric_to_sql(v, out)?,
            P::Decimal(_) => return Err(refuse("decimal", ty)),
            P::ArrayInt32(v) => array(v.iter().map(|x| x.map_or(P::DbNull, P::Int32)), ty, out)?,
            P::ArrayInt64(v) => array(v.iter().map(|x| x.map_or(P::DbNull, P::Int64)), ty, out)?,
            P::ArrayDecimal(v) => array(v.iter().map(|x| x.clone().map_or(P::DbNull, P::Decimal)), ty, out)?,
            P::ArrayStr(v) => array(v.iter().map(|x| x.clone().map_or(P::DbNull, P::Str)), ty, out)?,
            P::Interval(v) if *ty == Type::INTERVAL => {
                out.put_i64(v.micros);
                out.put_i32(v.days);
                out.put_i32(v.months);
            }
            P::Interval(_) => return Err(refuse("interval", ty)),
            P::RangeInt32(_) | P::RangeInt64(_) | P::RangeDecimal(_) => {
                return Err(Box::new(ParamError(
                    "range parameters are not supported by this host: pass the bounds as two parameters and build the range in SQL (int4range($1, $2))".into(),
                )));
            }
        }
        Ok(IsNull::No)
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    to_sql_checked!();
}

fn bad(what: &str) -> BoxError {
    Box::new(ParamError(format!("the {what} parameter is not a valid {what}")))
}

fn integer(v: i64, ty: &Type, out: &mut BytesMut) -> Result<(), BoxError> {
    let range = || -> BoxError { Box::new(ParamError(format!("{v} does not fit a value of type {ty}"))) };
    match *ty {
        Type::INT2 => out.put_i16(i16::try_from(v).map_err(|_| range())?),
        Type::INT4 => out.put_i32(i32::try_from(v).map_err(|_| range())?),
        Type::INT8 => out.put_i64(v),
        Type::OID => out.put_u32(u32::try_from(v).map_err(|_| range())?),
        Type::CHAR => out.put_i8(i8::try_from(v).map_err(|_| range())?),
        Type::FLOAT4 | Type::FLOAT8 => float(v as f64, ty, out)?,
        Type::NUMERIC => numeric_to_sql(&v.to_string(), out)?,
        _ => return Err(refuse("integer", ty)),
    }
    Ok(())
}

fn float(v: f64, ty: &Type, out: &mut BytesMut) -> Result<(), BoxError> {
    match *ty {
        Type::FLOAT8 => out.put_f64(v),
        Type::FLOAT4 => out.put_f32(v as f32),
        Type::NUMERIC if v.is_finite() => numeric_to_sql(&v.to_string(), out)?,
        _ => return Err(refuse("floating-point", ty)),
    }
    Ok(())
}

/// Text goes to any text-like type (text, varchar, char(n), name, an enum, citext, …) as its
/// bytes, and to numeric, uuid and json parsed.
fn text(v: &str, ty: &Type, out: &mut BytesMut) -> Result<(), BoxError> {
    match *ty {
        Type::NUMERIC => numeric_to_sql(v, out)?,
        Type::UUID => out.put_slice(uuid::Uuid::parse_str(v).map_err(|_| bad("uuid"))?.as_bytes()),
        Type::JSON | Type::JSONB => json(v.as_bytes(), ty, out)?,
        Type::BOOL
        | Type::INT2
        | Type::INT4
        | Type::INT8
        | Type::FLOAT4
        | Type::FLOAT8
        | Type::BYTEA
        | Type::DATE
        | Type::TIME
        | Type::TIMESTAMP
        | Type::TIMESTAMPTZ
        | Type::INTERVAL
        | Type::OID => return Err(refuse("str", ty)),
        _ if matches!(ty.kind(), Kind::Array(_)) => return Err(refuse("str", ty)),
        _ => out.put_slice(v.as_bytes()),
    }
    Ok(())
}

fn json(v: &[u8], ty: &Type, out: &mut BytesMut) -> Result<(), BoxError> {
    match *ty {
        Type::JSONB => out.put_u8(1),
        Type::JSON => {}
        _ => return Err(refuse("jsonb", ty)),
    }
    out.put_slice(v);
    Ok(())
}

fn instant(at: NaiveDateTime, ty: &Type, out: &mut BytesMut) -> Result<(), BoxError> {
    match *ty {
        Type::TIMESTAMP => at.to_sql(ty, out)?,
        Type::TIMESTAMPTZ => at.and_utc().to_sql(ty, out)?,
        _ => return Err(refuse("datetime", ty)),
    };
    Ok(())
}

fn array(items: impl Iterator<Item = ParameterValue>, ty: &Type, out: &mut BytesMut) -> Result<(), BoxError> {
    if !matches!(ty.kind(), Kind::Array(_)) {
        return Err(refuse("array", ty));
    }
    let items: Vec<Param> = items.map(Param).collect();
    items.to_sql(ty, out)?;
    Ok(())
}

fn date(y: i32, m: u8, d: u8) -> Option<NaiveDate> {
    NaiveDate::from_ymd_opt(y, m.into(), d.into())
}

fn time(h: u8, m: u8, s: u8, ns: u32) -> Option<NaiveTime> {
    NaiveTime::from_hms_nano_opt(h.into(), m.into(), s.into(), ns)
}

/// The interface's type for a column, as Spin names it.
pub fn column(column: &tokio_postgres::Column) -> Column {
    let ty = column.type_();
    let data_type = match *ty {
        Type::BOOL => DbDataType::Boolean,
        Type::CHAR => DbDataType::Int8,
        Type::INT2 => DbDataType::Int16,
        Type::INT4 => DbDataType::Int32,
        Type::INT8 => DbDataType::Int64,
        Type::FLOAT4 => DbDataType::Floating32,
        Type::FLOAT8 => DbDataType::Floating64,
        Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME => DbDataType::Str,
        Type::BYTEA => DbDataType::Binary,
        Type::DATE => DbDataType::Date,
        Type::TIME => DbDataType::Time,
        Type::TIMESTAMP | Type::TIMESTAMPTZ => DbDataType::Datetime,
        Type::UUID => DbDataType::Uuid,
        Type::JSON | Type::JSONB => DbDataType::Jsonb,
        Type::NUMERIC => DbDataType::Decimal,
        Type::INT4_ARRAY => DbDataType::ArrayInt32,
        Type::INT8_ARRAY => DbDataType::ArrayInt64,
        Type::NUMERIC_ARRAY => DbDataType::ArrayDecimal,
        Type::TEXT_ARRAY | Type::VARCHAR_ARRAY | Type::BPCHAR_ARRAY => DbDataType::ArrayStr,
        Type::INTERVAL => DbDataType::Interval,
        _ => DbDataType::Other(ty.name().to_string()),
    };
    Column { name: column.name().to_string(), data_type }
}

/// A column's bytes as they came, whatever its type.
struct Raw<'a>(&'a [u8]);

impl<'a> FromSql<'a> for Raw<'a> {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Self, BoxError> {
        Ok(Raw(raw))
    }

    fn accepts(_: &Type) -> bool {
        true
    }
}

/// A row's values, and how many bytes the server sent for them.
pub fn row_values(row: &Row) -> Result<(Vec<super::bindings::spin::postgres::postgres::DbValue>, usize), String> {
    let mut values = Vec::with_capacity(row.len());
    let mut bytes = 0;
    for (i, column) in row.columns().iter().enumerate() {
        let raw: Option<Raw> = row.try_get(i).map_err(|e| format!("column {}: {e}", column.name()))?;
        let value = match raw {
            None => DbValue::DbNull,
            Some(Raw(raw)) => {
                bytes += raw.len();
                value(column.type_(), raw).map_err(|e| format!("column {} ({}): {e}", column.name(), column.type_()))?
            }
        };
        values.push(value);
    }
    Ok((values, bytes))
}

/// One non-null value of type `ty` from its binary form.
fn value(ty: &Type, raw: &[u8]) -> Result<DbValue, BoxError> {
    Ok(match *ty {
        Type::BOOL => DbValue::Boolean(bool::from_sql(ty, raw)?),
        Type::CHAR => DbValue::Int8(i8::from_sql(ty, raw)?),
        Type::INT2 => DbValue::Int16(i16::from_sql(ty, raw)?),
        Type::INT4 => DbValue::Int32(i32::from_sql(ty, raw)?),
        Type::INT8 => DbValue::Int64(i64::from_sql(ty, raw)?),
        Type::FLOAT4 => DbValue::Floating32(f32::from_sql(ty, raw)?),
        Type::FLOAT8 => DbValue::Floating64(f64::from_sql(ty, raw)?),
        Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME => DbValue::Str(String::from_utf8(raw.to_vec())?),
        Type::BYTEA => DbValue::Binary(raw.to_vec()),
        Type::DATE => {
            let d = NaiveDate::from_sql(ty, raw)?;
            DbValue::Date((d.year(), d.month() as u8, d.day() as u8))
        }
        Type::TIME => DbValue::Time(time_tuple(NaiveTime::from_sql(ty, raw)?)),
        Type::TIMESTAMP => DbValue::Datetime(datetime_tuple(NaiveDateTime::from_sql(ty, raw)?)),
        Type::TIMESTAMPTZ => DbValue::Datetime(datetime_tuple(DateTime::<Utc>::from_sql(ty, raw)?.naive_utc())),
        Type::UUID => DbValue::Uuid(uuid::Uuid::from_sql(ty, raw)?.to_string()),
        Type::JSONB => match raw.split_first() {
            Some((1, json)) => DbValue::Jsonb(json.to_vec()),
            _ => return Err("a jsonb value of an unknown version".into()),
        },
        Type::JSON => DbValue::Jsonb(raw.to_vec()),
        Type::NUMERIC => DbValue::Decimal(numeric_from_sql(raw)?),
        Type::INT4_ARRAY => DbValue::ArrayInt32(Vec::<Option<i32>>::from_sql(ty, raw)?),
        Type::INT8_ARRAY => DbValue::ArrayInt64(Vec::<Option<i64>>::from_sql(ty, raw)?),
        Type::NUMERIC_ARRAY => DbValue::ArrayDecimal(
            Vec::<Option<Numeric>>::from_sql(ty, raw)?.into_iter().map(|n| n.map(|n| n.0)).collect(),
        ),
        Type::TEXT_ARRAY | Type::VARCHAR_ARRAY | Type::BPCHAR_ARRAY => {
            DbValue::ArrayStr(Vec::<Option<String>>::from_sql(ty, raw)?)
        }
        Type::INTERVAL => {
            let [m0, m1, m2, m3, m4, m5, m6, m7, d0, d1, d2, d3, n0, n1, n2, n3] =
                <[u8; 16]>::try_from(raw).map_err(|_| "an interval of the wrong size")?;
            DbValue::Interval(Interval {
                micros: i64::from_be_bytes([m0, m1, m2, m3, m4, m5, m6, m7]),
                days: i32::from_be_bytes([d0, d1, d2, d3]),
                months: i32::from_be_bytes([n0, n1, n2, n3]),
            })
        }
        _ => DbValue::Unsupported(raw.to_vec()),
    })
}

fn time_tuple(t: NaiveTime) -> (u8, u8, u8, u32) {
    (t.hour() as u8, t.minute() as u8, t.second() as u8, t.nanosecond())
}

fn datetime_tuple(at: NaiveDateTime) -> (i32, u8, u8, u8, u8, u8, u32) {
    let (h, mi, s, ns) = time_tuple(at.time());
    (at.year(), at.month() as u8, at.day() as u8, h, mi, s, ns)
}

/// A numeric as decimal text (the members of a numeric array).
struct Numeric(String);

impl<'a> FromSql<'a> for Numeric {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Self, BoxError> {
        numeric_from_sql(raw).map(Numeric)
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::NUMERIC
    }
}

const NUMERIC_POS: u16 = 0x0000;
const NUMERIC_NEG: u16 = 0x4000;
const NUMERIC_NAN: u16 = 0xC000;

/// Decimal text (`-12.3400`, `NaN`) as Postgres's binary numeric: base-10000 digits, the
/// weight of the first, the sign and the scale (digits after the point, kept as written).
pub fn numeric_to_sql(text: &str, out: &mut BytesMut) -> Result<(), BoxError> {
    let text = text.trim();
    if text.eq_ignore_ascii_case("nan") {
        out.put_slice(&[0, 0, 0, 0]);
        out.put_u16(NUMERIC_NAN);
        out.put_u16(0);
        return Ok(());
    }
    let invalid = || -> BoxError {
        Box::new(ParamError(format!(
            "'{text}' is not a decimal number (digits, one optional point, an optional sign; no exponent)"
        )))
    };
    let (negative, unsigned) = match text.as_bytes().first() {
        Some(b'-') => (true, &text[1..]),
        Some(b'+') => (false, &text[1..]),
        _ => (false, text),
    };
    let (int, frac) = unsigned.split_once('.').unwrap_or((unsigned, ""));
    if (int.is_empty() && frac.is_empty()) || !int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit()) {
        return Err(invalid());
    }
    let scale = u16::try_from(frac.len()).map_err(|_| invalid())?;
    let int = int.trim_start_matches('0');
    // Pad the integer part on the left and the fraction on the right to whole groups of four.
    let int_pad = (4 - int.len() % 4) % 4;
    let frac_pad = (4 - frac.len() % 4) % 4;
    let digits: Vec<u8> = std::iter::repeat_n(b'0', int_pad)
        .chain(int.bytes())
        .chain(frac.bytes())
        .chain(std::iter::repeat_n(b'0', frac_pad))
        .map(|b| b - b'0')
        .collect();
    let mut groups: Vec<i16> = digits.chunks(4).map(|c| c.iter().fold(0i16, |n, d| n * 10 + i16::from(*d))).collect();
    let mut weight = i32::try_from((int.len() + int_pad) / 4).map_err(|_| invalid())? - 1;
    // Leading zero groups lower the weight; trailing ones carry nothing.
    let leading = groups.iter().take_while(|g| **g == 0).count();
    groups.drain(..leading);
    weight -= leading as i32;
    while groups.last() == Some(&0) {
        groups.pop();
    }
    if groups.is_empty() {
        weight = 0;
    }
    out.put_i16(i16::try_from(groups.len()).map_err(|_| invalid())?);
    out.put_i16(i16::try_from(weight).map_err(|_| invalid())?);
    out.put_u16(if negative && !groups.is_empty() { NUMERIC_NEG } else { NUMERIC_POS });
    out.put_u16(scale);
    for g in groups {
        out.put_i16(g);
    }
    Ok(())
}

/// Postgres's binary numeric as decimal text, with exactly its scale's digits after the point.
pub fn numeric_from_sql(raw: &[u8]) -> Result<String, BoxError> {
    let word = |at: usize| -> Result<i16, BoxError> {
        raw.get(at..at + 2).map(|b| i16::from_be_bytes([b[0], b[1]])).ok_or_else(|| "a numeric value cut short".into())
    };
    let (count, weight, sign, scale) = (word(0)?, word(2)?, word(4)? as u16, word(6)? as u16);
    match sign {
        NUMERIC_NAN => return Ok("NaN".into()),
        0xD000 => return Ok("Infinity".into()),
        0xF000 => return Ok("-Infinity".into()),
        _ => {}
    }
    let groups = (0..count.max(0) as usize).map(|i| word(8 + 2 * i)).collect::<Result<Vec<_>, _>>()?;
    let group = |i: i32| if i >= 0 { groups.get(i as usize).copied().unwrap_or(0) } else { 0 };
    let mut text = String::new();
    if sign == NUMERIC_NEG {
        text.push('-');
    }
    if weight < 0 {
        text.push('0');
    } else {
        text.push_str(&group(0).to_string());
        for i in 1..=i32::from(weight) {
            text.push_str(&format!("{:04}", group(i)));
        }
    }
    if scale > 0 {
        let mut fraction = String::new();
        let mut i = i32::from(weight) + 1;
        while fraction.len() < usize::from(scale) {
            fraction.push_str(&format!("{:04}", group(i)));
            i += 1;
        }
        fraction.truncate(usize::from(scale));
        text.push('.');
        text.push_str(&fraction);
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(text: &str) -> String {
        let mut out = BytesMut::new();
        numeric_to_sql(text, &mut out).unwrap_or_else(|e| panic!("{text}: {e}"));
        numeric_from_sql(&out).unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    #[test]
    fn numerics_round_trip_as_written() {
        for text in ["0", "1", "-1", "12345678901234567890.123456789", "0.0001", "-0.5", "10000", "1.10", "NaN", "0.00"]
        {
            assert_eq!(round_trip(text), text);
        }
        assert_eq!(round_trip("+007.50"), "7.50");
        assert_eq!(round_trip("-0"), "0");
    }

    #[test]
    fn a_malformed_numeric_is_a_bad_parameter() {
        for text in ["", "-", "1e5", "1.2.3", "abc", "."] {
            assert!(numeric_to_sql(text, &mut BytesMut::new()).is_err(), "{text:?} was accepted");
        }
    }

    #[test]
    fn integers_fit_or_are_refused() {
        let mut out = BytesMut::new();
        assert!(integer(70_000, &Type::INT2, &mut out).is_err());
        assert!(integer(7, &Type::INT2, &mut out).is_ok());
        assert!(integer(7, &Type::TEXT, &mut out).is_err());
    }
}
