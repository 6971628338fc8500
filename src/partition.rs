//! Firehose-compatible partition templates: `!{timestamp:yyyy}`, `MM`, `dd`,
//! `HH`, `mm` (and any mix such as `!{timestamp:yyyy-MM-dd}`) from the record's
//! time, and `!{field:path.to.key}` from a record field. Rendered values are
//! escaped the way Hive escapes partition values, so no value can add a path
//! level, climb out with `..`, or break a reader.

use std::fmt::Write as _;

use crate::error::{Error, Result};
use crate::json::{Kind, Parser, find_path};
use crate::time::{UtcFields, epoch_number_to_millis, parse_timestamp_str_millis};

/// The default template: hourly hive partitions of the record time.
pub const DEFAULT_TEMPLATE: &str =
    "year=!{timestamp:yyyy}/month=!{timestamp:MM}/day=!{timestamp:dd}/hour=!{timestamp:HH}/";

/// What a missing or null value renders as (what Hive and Athena use).
pub const HIVE_DEFAULT_PARTITION: &str = "__HIVE_DEFAULT_PARTITION__";

/// One piece of a timestamp pattern.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TimeToken {
    Year4,
    Year2,
    Month,
    Day,
    Hour,
    Minute,
    Second,
    Literal(char),
}

/// One piece of a template.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Literal(String),
    Time(Vec<TimeToken>),
    Field(Vec<String>),
}

/// What a named partition key (`name=!{...}`) holds; used for DDL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyKind {
    /// A timestamp pattern such as `yyyy` or `yyyy-MM-dd`.
    Time(String),
    /// A record field path.
    Field(String),
}

/// A `name=!{...}` path segment: a partition column for Athena, Spark, DuckDB.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionKey {
    /// The column name before `=`.
    pub name: String,
    /// Where its value comes from.
    pub kind: KeyKind,
}

/// A parsed partition template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionTemplate {
    source: String,
    pieces: Vec<Piece>,
    keys: Vec<PartitionKey>,
}

fn parse_time_pattern(pattern: &str) -> std::result::Result<Vec<TimeToken>, String> {
    let mut out = Vec::new();
    let mut rest = pattern;
    while !rest.is_empty() {
        let (tok, len) = if rest.starts_with("yyyy") {
            (TimeToken::Year4, 4)
        } else if rest.starts_with("yy") {
            (TimeToken::Year2, 2)
        } else if rest.starts_with("MM") {
            (TimeToken::Month, 2)
        } else if rest.starts_with("dd") {
            (TimeToken::Day, 2)
        } else if rest.starts_with("HH") {
            (TimeToken::Hour, 2)
        } else if rest.starts_with("mm") {
            (TimeToken::Minute, 2)
        } else if rest.starts_with("ss") {
            (TimeToken::Second, 2)
        } else {
            let c = rest.chars().next().unwrap_or('-');
            if c.is_ascii_alphabetic() || !matches!(c, '-' | '_' | '.' | ' ') {
                return Err(format!(
                    "unsupported timestamp pattern `{pattern}` at `{rest}`; use yyyy, yy, MM, dd, HH, mm, ss \
                     separated by - _ . or space"
                ));
            }
            (TimeToken::Literal(c), c.len_utf8())
        };
        out.push(tok);
        rest = &rest[len..];
    }
    // Separators alone (`!{timestamp:..}`) could render a `.` or `..` level.
    if out.iter().all(|t| matches!(t, TimeToken::Literal(_))) {
        return Err(format!("timestamp pattern `{pattern}` has no yyyy, yy, MM, dd, HH, mm or ss; write e.g. yyyy"));
    }
    Ok(out)
}

fn check_literal(lit: &str, template: &str) -> Result<()> {
    let bad =
        lit.contains('\\') || lit.chars().any(char::is_control) || lit.split('/').any(|seg| seg == "." || seg == "..");
    if bad {
        return Err(Error::Config(format!(
            "partition template `{template}`: literal text `{lit}` may not contain `.` or `..` path segments, \
             backslashes or control characters"
        )));
    }
    // `${timestamp:yyyy}`, `{field:x}`: an expression missing its `!`, which
    // would be written as a literal folder name.
    if lit.contains(['{', '}']) {
        return Err(Error::Config(format!(
            "partition template `{template}`: literal text `{lit}` has a brace; write expressions as \
             !{{timestamp:yyyy}} or !{{field:name}}"
        )));
    }
    Ok(())
}

impl PartitionTemplate {
    /// Parses a template. A template that does not end in `/` gets one, since
    /// the file name follows it; leading `/` is not allowed.
    pub fn parse(template: &str) -> Result<Self> {
        let cfg = |msg: String| Error::Config(format!("partition template `{template}`: {msg}"));
        if template.starts_with('/') {
            return Err(cfg("must be relative (no leading `/`)".into()));
        }
        let mut pieces = Vec::new();
        let mut rest = template;
        while let Some(start) = rest.find("!{") {
            if start > 0 {
                check_literal(&rest[..start], template)?;
                pieces.push(Piece::Literal(rest[..start].to_string()));
            }
            let after = &rest[start + 2..];
            let end = after.find('}').ok_or_else(|| cfg("`!{` without a closing `}`".into()))?;
            let expr = &after[..end];
            let (ns, arg) = expr.split_once(':').ok_or_else(|| {
                cfg(format!("`!{{{expr}}}` needs a namespace: !{{timestamp:yyyy}} or !{{field:name}}"))
            })?;
            let piece = match ns.trim() {
                "timestamp" => Piece::Time(parse_time_pattern(arg.trim()).map_err(cfg)?),
                "field" => {
                    let path: Vec<String> = arg.trim().split('.').map(str::to_string).collect();
                    if path.iter().any(String::is_empty) {
                        return Err(cfg(format!("`!{{field:{arg}}}` has an empty path element")));
                    }
                    Piece::Field(path)
                }
                "partitionKeyFromQuery" | "partitionKeyFromLambda" => {
                    return Err(cfg(format!(
                        "`{ns}` needs a Firehose query; shardlake reads the field directly: write !{{field:{arg}}}"
                    )));
                }
                other => return Err(cfg(format!("unknown namespace `{other}`; use `timestamp` or `field`"))),
            };
            pieces.push(piece);
            rest = &after[end + 1..];
        }
        let mut tail = rest.to_string();
        if !template.is_empty() && !tail.ends_with('/') {
            tail.push('/');
        }
        if !tail.is_empty() {
            check_literal(&tail, template)?;
            pieces.push(Piece::Literal(tail));
        }
        let keys = named_keys(template);
        Ok(PartitionTemplate { source: template.to_string(), pieces, keys })
    }

    /// The template text as given.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The named partition keys (`name=!{...}` segments), in path order.
    pub fn keys(&self) -> &[PartitionKey] {
        &self.keys
    }

    /// The partition key values of a path this template rendered (e.g.
    /// `year=2026/month=11/`), unescaped, in key order: what a catalog
    /// registers for the partition. `None` when the path does not follow the
    /// template's `name=` segments.
    pub fn key_values(&self, path: &str) -> Option<Vec<String>> {
        let template: Vec<&str> = self.source.split('/').filter(|s| !s.is_empty()).collect();
        let rendered: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        if template.len() != rendered.len() {
            return None;
        }
        let mut values = Vec::with_capacity(self.keys.len());
        for (t, r) in template.iter().zip(&rendered) {
            let Some(key) =
                self.keys.iter().find(|k| t.strip_prefix(k.name.as_str()).is_some_and(|e| e.starts_with("=!{")))
            else {
                continue;
            };
            let value = r.strip_prefix(key.name.as_str()).and_then(|v| v.strip_prefix('='))?;
            values.push(if value == HIVE_DEFAULT_PARTITION {
                value.to_string()
            } else {
                unescape_partition_value(value)
            });
        }
        (values.len() == self.keys.len()).then_some(values)
    }

    /// For templates made only of literals and timestamp patterns, the
    /// length in milliseconds of the finest time unit they show: records whose
    /// times fall in the same such bucket render the same path. `None` when
    /// the template reads record fields.
    pub fn time_bucket_ms(&self) -> Option<i64> {
        let mut finest = 86_400_000; // days, months and years all change at day boundaries
        for piece in &self.pieces {
            match piece {
                Piece::Field(_) => return None,
                Piece::Literal(_) => {}
                Piece::Time(tokens) => {
                    for t in tokens {
                        let unit = match t {
                            TimeToken::Second => 1000,
                            TimeToken::Minute => 60_000,
                            TimeToken::Hour => 3_600_000,
                            _ => 86_400_000,
                        };
                        finest = finest.min(unit);
                    }
                }
            }
        }
        Some(finest)
    }

    /// Whether rendering needs the record time.
    pub fn uses_time(&self) -> bool {
        self.pieces.iter().any(|p| matches!(p, Piece::Time(_)))
    }

    /// Renders the partition path of one record (JSON object text; ending in
    /// `/`, or empty for an empty template) into `out`. `time_ms` is the
    /// record time; `None` renders the default partition.
    pub fn render(&self, time_ms: Option<i64>, record: &str, out: &mut String) {
        out.clear();
        let fields = time_ms.map(UtcFields::from_epoch_millis);
        for piece in &self.pieces {
            match piece {
                Piece::Literal(s) => out.push_str(s),
                Piece::Time(tokens) => match fields {
                    None => out.push_str(HIVE_DEFAULT_PARTITION),
                    Some(f) => render_time(tokens, &f, out),
                },
                Piece::Field(path) => match lookup(record, path) {
                    None => out.push_str(HIVE_DEFAULT_PARTITION),
                    Some(v) => escape_partition_value(&v, out),
                },
            }
        }
    }
}

/// Finds `name=!{...}` segments, whose value is exactly one expression.
fn named_keys(template: &str) -> Vec<PartitionKey> {
    let mut keys = Vec::new();
    for seg in template.split('/') {
        let Some((name, expr)) = seg.split_once('=') else { continue };
        let Some(inner) = expr.strip_prefix("!{").and_then(|e| e.strip_suffix('}')) else { continue };
        if name.is_empty() || inner.contains("!{") {
            continue;
        }
        let kind = match inner.split_once(':') {
            Some(("timestamp", p)) => KeyKind::Time(p.trim().to_string()),
            Some(("field", p)) => KeyKind::Field(p.trim().to_string()),
            _ => continue,
        };
        keys.push(PartitionKey { name: name.to_string(), kind });
    }
    keys
}

fn render_time(tokens: &[TimeToken], f: &UtcFields, out: &mut String) {
    for t in tokens {
        // Writing into a String cannot fail.
        let _ = match t {
            TimeToken::Year4 => write!(out, "{:04}", f.year),
            TimeToken::Year2 => write!(out, "{:02}", f.year.rem_euclid(100)),
            TimeToken::Month => write!(out, "{:02}", f.month),
            TimeToken::Day => write!(out, "{:02}", f.day),
            TimeToken::Hour => write!(out, "{:02}", f.hour),
            TimeToken::Minute => write!(out, "{:02}", f.minute),
            TimeToken::Second => write!(out, "{:02}", f.second),
            TimeToken::Literal(c) => {
                out.push(*c);
                Ok(())
            }
        };
    }
}

/// The text of the value at a dotted path: strings decoded, other values as
/// their JSON text. Missing, `null`, or unreadable (the record then fails as
/// invalid JSON) gives `None`.
pub fn lookup(record: &str, path: &[String]) -> Option<String> {
    let raw = find_path(record, path).ok()??;
    let mut p = Parser::new(raw);
    match p.peek().ok()? {
        Kind::Null => None,
        Kind::String => {
            let mut buf = String::new();
            p.string(&mut buf).ok().map(str::to_string)
        }
        _ => Some(raw.to_string()),
    }
}

/// Whether Hive's `FileUtils.escapePathName` escapes this character.
fn hive_escapes(c: char) -> bool {
    matches!(
        c,
        '\u{0}'
            ..='\u{1F}'
                | '"'
                | '#'
                | '%'
                | '\''
                | '*'
                | '/'
                | ':'
                | '='
                | '?'
                | '\\'
                | '\u{7F}'
                | '{'
                | '['
                | ']'
                | '^'
    )
}

/// Appends a partition value escaped the Hive way (`%2F` for `/` and so on).
/// Empty values become [`HIVE_DEFAULT_PARTITION`]; values made only of dots
/// are escaped whole so they can never be a `.` or `..` path segment.
pub fn escape_partition_value(value: &str, out: &mut String) {
    if value.is_empty() {
        out.push_str(HIVE_DEFAULT_PARTITION);
        return;
    }
    let all_dots = value.bytes().all(|b| b == b'.');
    for c in value.chars() {
        if hive_escapes(c) || (all_dots && c == '.') {
            let _ = write!(out, "%{:02X}", c as u32);
        } else if c.is_control() {
            // C1 controls (U+0080..U+009F), which no store or reader wants in a
            // path: each UTF-8 byte, as readers that decode bytes expect.
            for b in c.encode_utf8(&mut [0; 4]).bytes() {
                let _ = write!(out, "%{b:02X}");
            }
        } else {
            out.push(c);
        }
    }
}

/// Reverses [`escape_partition_value`] (what Hive-aware readers do).
pub fn unescape_partition_value(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    let hex = |c: u8| (c as char).to_digit(16);
    while i < b.len() {
        // Bytes, not `&str` slices: the two after a `%` may be inside a character.
        if b[i] == b'%'
            && let (Some(hi), Some(lo)) = (b.get(i + 1).and_then(|&c| hex(c)), b.get(i + 2).and_then(|&c| hex(c)))
        {
            out.push((hi * 16 + lo) as u8);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Where the record time used by `!{timestamp:...}` comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TimeSource {
    /// A record field (event time): RFC 3339, epoch seconds or epoch millis.
    Field(Vec<String>),
    /// The Kinesis `ApproximateArrivalTimestamp`.
    Arrival,
}

impl TimeSource {
    /// `arrival`, or a dotted field path.
    pub fn parse(s: &str) -> Result<Self> {
        let s = s.trim();
        if s == "arrival" {
            return Ok(TimeSource::Arrival);
        }
        let path: Vec<String> = s.split('.').map(str::to_string).collect();
        if path.iter().any(String::is_empty) {
            return Err(Error::Config(format!(
                "time source `{s}`: write `arrival` or a field path such as `ts` or `meta.time`"
            )));
        }
        Ok(TimeSource::Field(path))
    }
}

/// Why a record's time field could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadTime {
    /// The dotted field path.
    pub field: String,
    /// The offending value, shortened.
    pub value: String,
}

/// Reads the event time of a record from `path`: `Ok(None)` when missing or
/// null (the default partition), `Err` when present but not a time.
pub fn event_time_millis(record: &str, path: &[String]) -> std::result::Result<Option<i64>, BadTime> {
    let bad = |value: &str| {
        let mut value = value.to_string();
        value.truncate(value.floor_char_boundary(80));
        BadTime { field: path.join("."), value }
    };
    let raw = match find_path(record, path) {
        Ok(Some(raw)) => raw,
        Ok(None) => return Ok(None),
        Err(e) => return Err(bad(&e.to_string())),
    };
    let mut p = Parser::new(raw);
    let mut buf = String::new();
    let ms = match p.peek() {
        Ok(Kind::Null) => return Ok(None),
        Ok(Kind::Number) => p.number().ok().and_then(|n| n.parse::<f64>().ok()).and_then(epoch_number_to_millis),
        Ok(Kind::String) => p.string(&mut buf).ok().and_then(parse_timestamp_str_millis),
        _ => None,
    };
    ms.map(Some).ok_or_else(|| bad(raw))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn render(t: &str, time: Option<i64>, rec: &str) -> String {
        let t = PartitionTemplate::parse(t).unwrap();
        let mut out = String::new();
        t.render(time, rec, &mut out);
        out
    }

    const T0: i64 = 1_710_486_721_123; // 2024-03-15T07:12:01.123Z

    #[test]
    fn renders_default_template() {
        assert_eq!(render(DEFAULT_TEMPLATE, Some(T0), "{}"), "year=2024/month=03/day=15/hour=07/");
        assert_eq!(
            render(DEFAULT_TEMPLATE, None, "{}"),
            "year=__HIVE_DEFAULT_PARTITION__/month=__HIVE_DEFAULT_PARTITION__/\
             day=__HIVE_DEFAULT_PARTITION__/hour=__HIVE_DEFAULT_PARTITION__/"
        );
    }

    #[test]
    fn renders_fields_patterns_and_adds_trailing_slash() {
        let rec = r#"{"a":{"b":"x/y"},"n":7,"z":null}"#;
        assert_eq!(render("dt=!{timestamp:yyyy-MM-dd}/k=!{field:a.b}", Some(T0), rec), "dt=2024-03-15/k=x%2Fy/");
        assert_eq!(render("!{field:n}/!{field:z}/!{timestamp:mm}", Some(T0), rec), "7/__HIVE_DEFAULT_PARTITION__/12/");
        assert_eq!(render("", Some(T0), rec), "");
        assert_eq!(render("!{field:n}/..x/", None, r#"{"n":".."}"#), "%2E%2E/..x/");
    }

    #[test]
    fn key_values_reverse_rendering() {
        let t = PartitionTemplate::parse("data/k=!{field:a.b}/dt=!{timestamp:yyyy-MM-dd}/").unwrap();
        let rec = r#"{"a":{"b":"x/y=%z"}}"#;
        let mut path = String::new();
        t.render(Some(T0), rec, &mut path);
        assert_eq!(t.key_values(&path).unwrap(), ["x/y=%z", "2024-03-15"]);
        t.render(Some(T0), "{}", &mut path);
        assert_eq!(t.key_values(&path).unwrap(), [HIVE_DEFAULT_PARTITION, "2024-03-15"]);
        assert_eq!(t.key_values("data/k=1/"), None);
        assert_eq!(t.key_values("data/j=1/dt=2024-03-15/"), None);
    }

    #[test]
    fn time_buckets_follow_the_finest_unit() {
        let bucket = |t: &str| PartitionTemplate::parse(t).unwrap().time_bucket_ms();
        assert_eq!(bucket(DEFAULT_TEMPLATE), Some(3_600_000));
        assert_eq!(bucket("dt=!{timestamp:yyyy-MM-dd}/"), Some(86_400_000));
        assert_eq!(bucket("!{timestamp:yyyy}/!{timestamp:mm}/"), Some(60_000));
        assert_eq!(bucket("raw/"), Some(86_400_000));
        assert_eq!(bucket("k=!{field:a}/!{timestamp:HH}/"), None);
    }

    #[test]
    fn names_keys_for_ddl() {
        let t = PartitionTemplate::parse("region=!{field:geo.region}/dt=!{timestamp:yyyy-MM-dd}/raw/").unwrap();
        assert_eq!(
            t.keys(),
            [
                PartitionKey { name: "region".into(), kind: KeyKind::Field("geo.region".into()) },
                PartitionKey { name: "dt".into(), kind: KeyKind::Time("yyyy-MM-dd".into()) },
            ]
        );
    }

    #[test]
    fn rejects_bad_templates_clearly() {
        for (t, want) in [
            ("/abs/!{timestamp:yyyy}", "relative"),
            ("!{timestamp:yyyy", "closing"),
            ("!{nope:x}", "unknown namespace `nope`"),
            ("!{timestamp:YYYY}", "unsupported timestamp pattern"),
            ("../!{timestamp:yyyy}", "`..`"),
            ("!{partitionKeyFromQuery:customer}", "!{field:customer}"),
            ("!{field:a..b}", "empty path element"),
        ] {
            let err = PartitionTemplate::parse(t).unwrap_err().to_string();
            assert!(err.contains(want), "{t}: {err}");
        }
    }

    /// Inputs the fuzzer (`scripts/fuzz partition_template`, `record_decoder`)
    /// found; their files are in `fuzz/regressions/`.
    #[test]
    fn fuzzer_findings_stay_fixed() {
        // A C1 control character (U+009F, U+0085) made a key the store refused,
        // so the upload was retried for ever: now escaped as its UTF-8 bytes.
        for value in ["\u{9f}", "a\u{85}b"] {
            let rec = serde_json::json!({ "v": value }).to_string();
            let path = render("v=!{field:v}", None, &rec);
            assert!(!path.chars().any(char::is_control), "{path:?}");
            assert!(crate::store::check_key(&format!("{path}f.parquet")).is_ok(), "{path:?}");
            assert_eq!(unescape_partition_value(path.trim_start_matches("v=").trim_end_matches('/')), value);
        }
        assert_eq!(render("v=!{field:v}", None, r#"{"v":"\u0085"}"#), "v=%C2%85/");
        // Time patterns of separators only rendered `.` and `..` levels.
        for t in ["x/!{timestamp:.}/y", "!{timestamp:..}/", "!{timestamp: - }"] {
            let err = PartitionTemplate::parse(t).unwrap_err().to_string();
            assert!(err.contains("has no yyyy"), "{t}: {err}");
        }
        assert!(PartitionTemplate::parse("!{timestamp:yyyy.MM}").is_ok());
        // `%` followed by part of a multi-byte character panicked.
        for s in ["%\u{aa}", "%a\u{e9}", "%", "%4", "100%"] {
            assert_eq!(unescape_partition_value(s), s);
        }
        assert_eq!(unescape_partition_value("%41%2f"), "A/");
    }

    #[test]
    fn event_time_accepts_three_forms() {
        let p = vec!["ts".to_string()];
        assert_eq!(event_time_millis(r#"{"ts":"2024-03-15T07:12:01.123Z"}"#, &p), Ok(Some(T0)));
        assert_eq!(event_time_millis(r#"{"ts":1710486721.123}"#, &p), Ok(Some(T0)));
        assert_eq!(event_time_millis(r#"{"ts":1710486721123}"#, &p), Ok(Some(T0)));
        assert_eq!(event_time_millis(r#"{"ts":null}"#, &p), Ok(None));
        assert_eq!(event_time_millis(r#"{}"#, &p), Ok(None));
        let bad = event_time_millis(r#"{"ts":"yesterday"}"#, &p).unwrap_err();
        assert_eq!(bad.value, "\"yesterday\"");
    }

    proptest! {
        #[test]
        fn no_value_escapes_its_partition_level(value in any::<String>()) {
            let rec = serde_json::json!({ "k": value.clone() }).to_string();
            let out = render("a=!{field:k}/b=!{timestamp:HH}/", Some(T0), &rec);
            let segs: Vec<&str> = out.trim_end_matches('/').split('/').collect();
            prop_assert_eq!(segs.len(), 2);
            prop_assert!(segs[0].starts_with("a="));
            prop_assert_eq!(segs[1], "b=07");
            let v = &segs[0][2..];
            prop_assert!(!v.contains('=') && !v.chars().any(char::is_control) && v != "." && v != "..");
            let want = if value.is_empty() { HIVE_DEFAULT_PARTITION.to_string() } else { value };
            prop_assert_eq!(unescape_partition_value(v), want);
        }

        #[test]
        fn bare_values_are_never_dot_segments(value in "[./]{1,6}") {
            let rec = serde_json::json!({ "k": value }).to_string();
            let out = render("!{field:k}/", None, &rec);
            prop_assert_eq!(out.matches('/').count(), 1);
            prop_assert!(out != "./" && out != "../");
        }
    }
}
