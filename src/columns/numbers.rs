//! Numbers from JSON values: integers and floats from numbers or numeric
//! strings, and decimals parsed exactly (never rounded) at a column's
//! precision and scale.

use crate::json::{Kind, Parser, SyntaxError};

/// An integer from a JSON integer, an integral float, or a digit string;
/// `None` when the value is not one.
pub(super) fn integer(p: &mut Parser<'_>, kind: Kind, buf: &mut String) -> Result<Option<i64>, SyntaxError> {
    let text = match kind {
        Kind::Number => p.number()?,
        Kind::String => p.string(buf)?.trim(),
        _ => return Ok(None),
    };
    Ok(text.parse::<i64>().ok().or_else(|| {
        let f: f64 = text.parse().ok()?;
        (f.fract() == 0.0 && f.abs() < 9.2e18).then_some(f as i64)
    }))
}

/// A float from a JSON number or a numeric string.
pub(super) fn float(p: &mut Parser<'_>, kind: Kind, buf: &mut String) -> Result<Option<f64>, SyntaxError> {
    let text = match kind {
        Kind::Number => p.number()?,
        Kind::String => p.string(buf)?.trim(),
        _ => return Ok(None),
    };
    Ok(text.parse().ok())
}

/// Parses decimal text (`-12.345`, `1e3`) into an unscaled i128 at `scale`,
/// refusing to round away non-zero digits or to exceed `precision`. Costs
/// time in proportion to the text, whatever its exponent (`1e2000000000`).
pub fn parse_decimal(text: &str, precision: u8, scale: i8) -> Result<i128, &'static str> {
    let (mantissa, exp) = match text.find(['e', 'E']) {
        Some(i) => (&text[..i], parse_exponent(&text[i + 1..]).ok_or("not a number")?),
        None => (text, 0),
    };
    let (neg, m) = match mantissa.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, mantissa.strip_prefix('+').unwrap_or(mantissa)),
    };
    let (int_part, frac_part) = m.split_once('.').unwrap_or((m, ""));
    if (int_part.is_empty() && frac_part.is_empty())
        || !int_part.bytes().chain(frac_part.bytes()).all(|c| c.is_ascii_digit())
    {
        return Err("not a number");
    }
    // The value is digits * 10^(exp - frac_len); we want it * 10^scale, as
    // significant digits (no leading or trailing zeros) * 10^zeros.
    let digits = || int_part.bytes().chain(frac_part.bytes());
    let len = int_part.len() + frac_part.len();
    let Some(first) = digits().position(|d| d != b'0') else { return Ok(0) };
    let last = len - 1 - digits().rev().position(|d| d != b'0').expect("a non-zero digit");
    let trailing = (len - 1 - last) as i64;
    let zeros = trailing + exp - frac_part.len() as i64 + i64::from(scale);
    if zeros < 0 {
        // Some non-zero digit would sit past the scale.
        return Err("more decimal places than the column's scale");
    }
    if (last + 1 - first) as i64 + zeros > i64::from(precision) {
        return Err("too many digits for the column's precision");
    }
    let mut n: i128 = 0;
    for d in digits().skip(first).take(last + 1 - first) {
        n = n * 10 + i128::from(d - b'0');
    }
    for _ in 0..zeros {
        n *= 10;
    }
    Ok(if neg { -n } else { n })
}

/// An exponent's value, saturated far beyond any decimal's range (so that
/// `1e99999999999999999999` is "too many digits", not "not a number").
fn parse_exponent(text: &str) -> Option<i64> {
    let (neg, digits) = match text.strip_prefix('-') {
        Some(d) => (true, d),
        None => (false, text.strip_prefix('+').unwrap_or(text)),
    };
    if digits.is_empty() || !digits.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    const FAR: i64 = 1 << 40;
    let v = digits.bytes().fold(0i64, |v, d| (v * 10 + i64::from(d - b'0')).min(FAR));
    Some(if neg { -v } else { v })
}
