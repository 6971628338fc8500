//! Finding one value in a record by its dotted path (the partition template's
//! `!{field:...}`) without decoding the record: a one-pass scan for a
//! top-level key in the common case, the parser otherwise.

use super::error::R;
use super::parser::{Kind, Parser};
use super::scan::{short_eq, special_byte};

/// Finds the value at a dotted path in an object record and returns its text
/// (`None` when missing, or when the record is not an object there). Of keys
/// that appear more than once (also written with escapes, `"\u0074s"`), the
/// last wins at every level, as when the record is decoded into its columns,
/// so a record is partitioned by the value it stores. The objects on the
/// path are read whole, so a syntax error in them is an error here.
pub fn find_path<'a>(text: &'a str, path: &[String]) -> R<Option<&'a str>> {
    if let [key] = path
        && let Some(found) = find_top_level_fast(text, key.as_bytes())
    {
        return Ok(found);
    }
    let mut p = Parser::new(text);
    let mut scratch = String::new();
    for (level, key) in path.iter().enumerate() {
        if p.peek()? != Kind::Object {
            return Ok(None);
        }
        p.object_start()?;
        let mut found = None;
        let mut first = true;
        while let Some(k) = p.next_key(first, &mut scratch)? {
            first = false;
            let is_key = short_eq(k.as_bytes(), key.as_bytes());
            let at = p.offset();
            let value = p.skip()?;
            if is_key {
                found = Some((at, value));
            }
        }
        let Some((at, value)) = found else { return Ok(None) };
        if level + 1 == path.len() {
            return Ok(Some(value));
        }
        // Descend into the winning value (its own depth counts from there).
        p = Parser::at(text, at);
    }
    Ok(None)
}

/// The common case of [`find_path`] for a top-level key: unescaped keys,
/// string values without escapes, numbers, literals and nested values (read
/// past with the parser). `None` means "not decided here" (an escape, odd
/// syntax): use the parser.
pub(super) fn find_top_level_fast<'a>(text: &'a str, key: &[u8]) -> Option<Option<&'a str>> {
    let b = text.as_bytes();
    let ws = |mut i: usize| {
        while matches!(b.get(i), Some(b' ' | b'\n' | b'\r' | b'\t')) {
            i += 1;
        }
        i
    };
    let mut i = ws(0);
    if b.get(i) != Some(&b'{') {
        return None;
    }
    i = ws(i + 1);
    if b.get(i) == Some(&b'}') {
        return Some(None);
    }
    let mut found = None;
    loop {
        if b.get(i) != Some(&b'"') {
            return None;
        }
        let key_end = special_byte(b, i + 1);
        if b.get(key_end) != Some(&b'"') {
            return None;
        }
        let k = &b[i + 1..key_end];
        i = ws(key_end + 1);
        if b.get(i) != Some(&b':') {
            return None;
        }
        i = ws(i + 1);
        let start = i;
        match b.get(i)? {
            b'"' => {
                let end = special_byte(b, i + 1);
                if b.get(end) != Some(&b'"') {
                    return None;
                }
                i = end + 1;
            }
            b'-' | b'0'..=b'9' | b't' | b'f' | b'n' => {
                while b.get(i).is_some_and(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'+' | b'.')) {
                    i += 1;
                }
            }
            // A nested value: skipped by the parser (depth-limited), so that a
            // key after it is still found in one pass over the record.
            b'{' | b'[' => {
                let mut p = Parser::at(text, i);
                p.skip().ok()?;
                i = p.offset();
            }
            _ => return None,
        }
        if short_eq(k, key) {
            // Only ASCII delimiters were crossed, so these are char boundaries.
            // A later duplicate replaces it.
            found = Some(&text[start..i]);
        }
        i = ws(i);
        match b.get(i) {
            Some(b',') => i = ws(i + 1),
            // Every key and value was read: the last match is the answer.
            Some(b'}') => return Some(found),
            _ => return None,
        }
    }
}
