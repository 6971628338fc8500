//! Timestamp parsing and calendar fields, on the hot path of every record.
//!
//! Accepts what Firehose users send as event time: RFC 3339 strings
//! (`2024-03-15T07:12:01.123Z`, `+01:00` offsets, a space instead of `T`, or no
//! zone meaning UTC), epoch seconds and epoch milliseconds (numbers or digit
//! strings). Hand-written because chrono's general parser is several times
//! slower than this fixed layout; the tests cross-check it against chrono.

/// Milliseconds in one day.
const MS_PER_DAY: i64 = 86_400_000;

/// Numbers at or above this magnitude are epoch milliseconds, below it epoch
/// seconds. 1e11 seconds is the year 5138; 1e11 ms is March 1973.
const EPOCH_MILLIS_THRESHOLD: f64 = 1e11;

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's
/// `days_from_civil`).
pub fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The (year, month, day) of a day number since 1970-01-01.
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Calendar fields of a UTC instant, for partition paths.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UtcFields {
    /// Four-digit (or longer) year.
    pub year: i64,
    /// 1..=12
    pub month: u32,
    /// 1..=31
    pub day: u32,
    /// 0..=23
    pub hour: u32,
    /// 0..=59
    pub minute: u32,
    /// 0..=59
    pub second: u32,
}

impl UtcFields {
    /// Splits epoch milliseconds into UTC calendar fields.
    pub fn from_epoch_millis(ms: i64) -> Self {
        let days = ms.div_euclid(MS_PER_DAY);
        let in_day = ms.rem_euclid(MS_PER_DAY) / 1000;
        let (year, month, day) = civil_from_days(days);
        UtcFields {
            year,
            month,
            day,
            hour: (in_day / 3600) as u32,
            minute: (in_day / 60 % 60) as u32,
            second: (in_day % 60) as u32,
        }
    }
}

/// Formats epoch milliseconds as RFC 3339 UTC with milliseconds
/// (`2026-11-22T07:00:00.000Z`).
pub fn format_rfc3339_millis(ms: i64) -> String {
    let f = UtcFields::from_epoch_millis(ms);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        f.year,
        f.month,
        f.day,
        f.hour,
        f.minute,
        f.second,
        ms.rem_euclid(1000)
    )
}

fn digits(b: &[u8], at: usize, n: usize) -> Option<u32> {
    let s = b.get(at..at + n)?;
    let mut v = 0u32;
    for &c in s {
        if !c.is_ascii_digit() {
            return None;
        }
        v = v * 10 + u32::from(c - b'0');
    }
    Some(v)
}

/// Parses an RFC 3339 / ISO 8601 date-time into epoch milliseconds (UTC).
/// Fractions beyond milliseconds are truncated. Returns `None` when the text
/// is not such a timestamp.
pub fn parse_rfc3339_millis(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 19 || b[4] != b'-' || b[7] != b'-' || b[13] != b':' || b[16] != b':' {
        return None;
    }
    if !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    let year = digits(b, 0, 4)?;
    let month = digits(b, 5, 2)?;
    let day = digits(b, 8, 2)?;
    let hour = digits(b, 11, 2)?;
    let minute = digits(b, 14, 2)?;
    let second = digits(b, 17, 2)?;
    if !(1..=12).contains(&month) || day == 0 || day > days_in_month(i64::from(year), month) {
        return None;
    }
    // 60 allows a leap second, which folds into the next minute like chrono does.
    if hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let mut i = 19;
    let mut millis = 0i64;
    if b.get(i) == Some(&b'.') || b.get(i) == Some(&b',') {
        i += 1;
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            if i - start < 3 {
                millis = millis * 10 + i64::from(b[i] - b'0');
            }
            i += 1;
        }
        let n = i - start;
        if n == 0 {
            return None;
        }
        for _ in n..3 {
            millis *= 10;
        }
    }
    let offset_minutes: i64 = match b.get(i) {
        None => 0,
        Some(b'Z' | b'z') if i + 1 == b.len() => 0,
        Some(&sign @ (b'+' | b'-')) => {
            let oh = digits(b, i + 1, 2)?;
            let (om, end) = match b.get(i + 3) {
                Some(b':') => (digits(b, i + 4, 2)?, i + 6),
                Some(_) => (digits(b, i + 3, 2)?, i + 5),
                None => (0, i + 3),
            };
            if end != b.len() || oh > 23 || om > 59 {
                return None;
            }
            let m = i64::from(oh * 60 + om);
            if sign == b'+' { m } else { -m }
        }
        Some(_) => return None,
    };
    let days = days_from_civil(i64::from(year), month, day);
    let secs = days * 86_400 + i64::from(hour * 3600 + minute * 60 + second) - offset_minutes * 60;
    Some(secs * 1000 + millis)
}

/// Parses `YYYY-MM-DD` into days since the epoch.
pub fn parse_date_days(s: &str) -> Option<i32> {
    let b = s.as_bytes();
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let (y, m, d) = (digits(b, 0, 4)?, digits(b, 5, 2)?, digits(b, 8, 2)?);
    if !(1..=12).contains(&m) || d == 0 || d > days_in_month(i64::from(y), m) {
        return None;
    }
    i32::try_from(days_from_civil(i64::from(y), m, d)).ok()
}

fn days_in_month(year: i64, month: u32) -> u32 {
    match month {
        2 if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Epoch milliseconds from a JSON number of epoch seconds or milliseconds
/// (see [`EPOCH_MILLIS_THRESHOLD`]). Rejects NaN and values out of range.
pub fn epoch_number_to_millis(n: f64) -> Option<i64> {
    if !n.is_finite() {
        return None;
    }
    let ms = if n.abs() >= EPOCH_MILLIS_THRESHOLD { n } else { n * 1000.0 };
    // Year ±292 million is where i64 milliseconds end; stay far inside it.
    if ms.abs() > 8.64e15 {
        return None;
    }
    Some(ms.floor() as i64)
}

/// Epoch milliseconds from a timestamp string: RFC 3339, or a string of
/// epoch seconds / milliseconds digits.
pub fn parse_timestamp_str_millis(s: &str) -> Option<i64> {
    if let Some(ms) = parse_rfc3339_millis(s) {
        return Some(ms);
    }
    let t = s.trim();
    let body = t.strip_prefix('-').unwrap_or(t);
    if body.is_empty() || !body.bytes().all(|c| c.is_ascii_digit() || c == b'.') {
        return None;
    }
    epoch_number_to_millis(t.parse::<f64>().ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{DateTime, Datelike, Timelike};

    #[test]
    fn rfc3339_matches_chrono() {
        for s in [
            "2024-03-15T07:12:01.123Z",
            "2024-03-15T07:12:01Z",
            "2024-02-29T23:59:59.999+01:00",
            "1969-12-31T23:59:59.5-05:30",
            "2000-01-01T00:00:00.123456789Z",
            "2262-04-11T23:47:16Z",
            "1900-03-01T00:00:00+00:00",
        ] {
            let want = DateTime::parse_from_rfc3339(s).unwrap().timestamp_millis();
            assert_eq!(parse_rfc3339_millis(s), Some(want), "{s}");
        }
    }

    #[test]
    fn formats_rfc3339_like_chrono() {
        for ms in [0i64, 1_710_486_721_123, -1, 951_868_799_999] {
            let want = DateTime::from_timestamp_millis(ms).unwrap().format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string();
            assert_eq!(format_rfc3339_millis(ms), want);
            assert_eq!(parse_rfc3339_millis(&want), Some(ms));
        }
    }

    #[test]
    fn rfc3339_accepts_space_and_no_zone_as_utc() {
        let want = parse_rfc3339_millis("2024-03-15T07:12:01Z").unwrap();
        assert_eq!(parse_rfc3339_millis("2024-03-15 07:12:01"), Some(want));
        assert_eq!(parse_rfc3339_millis("2024-03-15T07:12:01"), Some(want));
    }

    #[test]
    fn rfc3339_rejects_garbage() {
        for s in [
            "",
            "2024-03-15",
            "2024-13-15T00:00:00Z",
            "2024-02-30T00:00:00Z",
            "2024-03-15T24:00:00Z",
            "2024-03-15T07:12:01.Z",
            "2024-03-15T07:12:01Zjunk",
            "2024-03-15T07:12:01+25:00",
            "hello world, friends",
        ] {
            assert_eq!(parse_rfc3339_millis(s), None, "{s:?}");
        }
    }

    #[test]
    fn epoch_seconds_and_millis() {
        assert_eq!(epoch_number_to_millis(1_710_486_721.0), Some(1_710_486_721_000));
        assert_eq!(epoch_number_to_millis(1_710_486_721_123.0), Some(1_710_486_721_123));
        assert_eq!(epoch_number_to_millis(1.5), Some(1500));
        assert_eq!(epoch_number_to_millis(f64::NAN), None);
        assert_eq!(parse_timestamp_str_millis("1710486721"), Some(1_710_486_721_000));
        assert_eq!(parse_timestamp_str_millis("soon"), None);
    }

    #[test]
    fn civil_round_trip_matches_chrono() {
        for ms in [-86_400_001i64, 0, 951_782_400_000, 1_710_486_721_123, 4_102_444_800_000] {
            let f = UtcFields::from_epoch_millis(ms);
            let c = DateTime::from_timestamp_millis(ms).unwrap();
            assert_eq!(
                (f.year, f.month, f.day, f.hour, f.minute, f.second),
                (i64::from(c.year()), c.month(), c.day(), c.hour(), c.minute(), c.second())
            );
        }
        for d in -1000..1000 {
            let (y, m, dd) = civil_from_days(d * 37);
            assert_eq!(days_from_civil(y, m, dd), d * 37);
        }
    }

    #[test]
    fn dates() {
        assert_eq!(parse_date_days("1970-01-02"), Some(1));
        assert_eq!(parse_date_days("2024-02-30"), None);
        assert_eq!(parse_date_days("2024-2-3"), None);
    }
}
