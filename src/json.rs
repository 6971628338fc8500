//! A small pull parser over one JSON record, used to decode records straight
//! into column builders without building a document tree first (the tree was
//! most of the cost of conversion). The caller validates UTF-8 once per
//! record, so strings are handed out as `&str` slices when they have no
//! escapes.

use std::fmt;

/// How deeply arrays and objects may nest in a record (the record itself is
/// level 1), as in serde_json. Every recursion over a record's values (the
/// parser's skip, the column builders, `_extra`, schema inference) is driven
/// by the parser's opening brackets, so this one limit bounds the stack they
/// use; a record nested deeper goes to the error output as `too_deep`.
pub const MAX_DEPTH: usize = 128;

/// What [`SyntaxError::expected`] says when a record nests deeper than
/// [`MAX_DEPTH`].
const TOO_DEEP: &str = "at most 128 levels of nested arrays and objects (MAX_DEPTH)";

/// A JSON syntax error at a byte offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyntaxError {
    /// Byte offset in the record.
    pub offset: usize,
    /// What was expected.
    pub expected: &'static str,
}

impl SyntaxError {
    /// Whether the record is nested deeper than [`MAX_DEPTH`] (it may be
    /// valid JSON; it is refused before it can cost more stack).
    pub fn is_too_deep(&self) -> bool {
        self.expected == TOO_DEEP
    }
}

impl fmt::Display for SyntaxError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_too_deep() {
            return write!(
                f,
                "nesting deeper than {MAX_DEPTH} levels of arrays and objects at byte {}; flatten the record",
                self.offset
            );
        }
        write!(f, "invalid JSON at byte {}: expected {}", self.offset, self.expected)
    }
}

/// The kind of the next value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `null`
    Null,
    /// `true` / `false`
    Bool,
    /// A number.
    Number,
    /// A string.
    String,
    /// An array.
    Array,
    /// An object.
    Object,
}

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGHS: u64 = 0x8080_8080_8080_8080;

/// Bytes of `x` that are zero, as their high bit (exact for the lowest one).
#[inline]
fn zero_bytes(x: u64) -> u64 {
    x.wrapping_sub(ONES) & !x & HIGHS
}

/// Bits set for the bytes of `chunk` that are `"`, `\` or control
/// characters, with SSE2 (part of every x86_64 CPU).
#[cfg(target_arch = "x86_64")]
#[inline]
fn special_mask16(chunk: [u8; 16]) -> u32 {
    use safe_arch::{bitor_m128i, cmp_eq_mask_i8_m128i, m128i, min_u8_m128i, move_mask_i8_m128i, set_splat_i8_m128i};
    let v = m128i::from(chunk);
    let quote = cmp_eq_mask_i8_m128i(v, set_splat_i8_m128i(b'"' as i8));
    let backslash = cmp_eq_mask_i8_m128i(v, set_splat_i8_m128i(b'\\' as i8));
    // c <= 0x1f exactly when min(c, 0x1f) == c (unsigned).
    let control = cmp_eq_mask_i8_m128i(min_u8_m128i(v, set_splat_i8_m128i(0x1f)), v);
    move_mask_i8_m128i(bitor_m128i(bitor_m128i(quote, backslash), control)) as u32
}

/// Offset of the first `"`, `\` or control character at or after `from`
/// (or the length of `b`), sixteen bytes at a time on x86_64, then eight.
#[inline]
fn special_byte(b: &[u8], from: usize) -> usize {
    let mut i = from;
    #[cfg(target_arch = "x86_64")]
    while let Some(chunk) = b.get(i..i + 16) {
        let mask = special_mask16(chunk.try_into().expect("16 bytes"));
        if mask != 0 {
            return i + mask.trailing_zeros() as usize;
        }
        i += 16;
    }
    while let Some(chunk) = b.get(i..i + 8) {
        let x = u64::from_le_bytes(chunk.try_into().expect("8 bytes"));
        let mask = zero_bytes(x ^ (ONES * u64::from(b'"')))
            | zero_bytes(x ^ (ONES * u64::from(b'\\')))
            // Bytes below 0x20: subtracting 0x20 borrows into their high bit.
            | (x.wrapping_sub(ONES * 0x20) & !x & HIGHS);
        if mask != 0 {
            return i + (mask.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    while let Some(&c) = b.get(i) {
        if c == b'"' || c == b'\\' || c < 0x20 {
            break;
        }
        i += 1;
    }
    i
}

/// Equality of short byte strings without a call to `memcmp`: keys are
/// compared for every field of every record.
#[inline]
pub fn short_eq(a: &[u8], b: &[u8]) -> bool {
    let n = a.len();
    if n != b.len() {
        return false;
    }
    if n >= 8 {
        let word = |s: &[u8], at: usize| u64::from_le_bytes(s[at..at + 8].try_into().expect("8 bytes"));
        return match n {
            8..=16 => word(a, 0) == word(b, 0) && word(a, n - 8) == word(b, n - 8),
            17..=32 => {
                word(a, 0) == word(b, 0)
                    && word(a, 8) == word(b, 8)
                    && word(a, n - 16) == word(b, n - 16)
                    && word(a, n - 8) == word(b, n - 8)
            }
            _ => a == b,
        };
    }
    if n >= 4 {
        let word = |s: &[u8], at: usize| u32::from_le_bytes(s[at..at + 4].try_into().expect("4 bytes"));
        return word(a, 0) == word(b, 0) && word(a, n - 4) == word(b, n - 4);
    }
    a.iter().zip(b).all(|(x, y)| x == y)
}

/// A key an object is declared to have (a schema column or struct field):
/// its name, and its member as compact JSON writes it, `,"name":`, so that
/// the separator, the key and the colon of the expected next member are
/// matched in one comparison (`Parser::member_is`).
#[derive(Debug, Clone)]
pub struct DeclaredKey {
    name: Box<str>,
    member: Box<[u8]>,
}

impl DeclaredKey {
    /// The key `name`. A name that JSON writes escaped gets a member that
    /// never matches (such keys take the general path).
    pub fn new(name: &str) -> Self {
        let member = if special_byte(name.as_bytes(), 0) < name.len() {
            Box::default()
        } else {
            format!(",\"{name}\":").into_bytes().into_boxed_slice()
        };
        DeclaredKey { name: name.into(), member }
    }

    /// The key's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// The next member of an object, as [`Parser::next_declared`] finds it.
#[derive(Debug, PartialEq)]
pub enum Member<'s> {
    /// The declared key at this index; the parser is at its value.
    Declared(usize),
    /// A key that is not declared; the parser is at its value.
    Unknown(&'s str),
}

/// How many declared keys past the expected one `Parser::next_declared`
/// tries: sparse records skip a few optional fields.
const MEMBER_LOOKAHEAD: usize = 4;

/// A pull parser over one record.
#[derive(Debug)]
pub struct Parser<'a> {
    text: &'a str,
    b: &'a [u8],
    i: usize,
    /// Arrays and objects open at `i`, at most [`MAX_DEPTH`].
    depth: usize,
}

type R<T> = Result<T, SyntaxError>;

impl<'a> Parser<'a> {
    /// A parser at the start of `text`.
    pub fn new(text: &'a str) -> Self {
        Self::at(text, 0)
    }

    /// A parser at byte `offset` of `text`, as if at the top level (its depth
    /// counts from there).
    fn at(text: &'a str, offset: usize) -> Self {
        Parser { text, b: text.as_bytes(), i: offset, depth: 0 }
    }

    fn err<T>(&self, expected: &'static str) -> R<T> {
        Err(SyntaxError { offset: self.i, expected })
    }

    /// Current byte offset.
    pub fn offset(&self) -> usize {
        self.i
    }

    /// Bytes left after the current offset.
    pub fn remaining(&self) -> usize {
        self.b.len() - self.i
    }

    /// The text between two offsets.
    pub fn slice(&self, from: usize, to: usize) -> &'a str {
        &self.text[from..to]
    }

    #[inline]
    fn ws(&mut self) {
        while let Some(&c) = self.b.get(self.i) {
            if !matches!(c, b' ' | b'\n' | b'\r' | b'\t') {
                break;
            }
            self.i += 1;
        }
    }

    /// Skips whitespace and tells what kind of value comes next.
    #[inline]
    pub fn peek(&mut self) -> R<Kind> {
        self.ws();
        Ok(match self.b.get(self.i) {
            Some(b'"') => Kind::String,
            Some(b'{') => Kind::Object,
            Some(b'[') => Kind::Array,
            Some(b't' | b'f') => Kind::Bool,
            Some(b'n') => Kind::Null,
            Some(b'-' | b'0'..=b'9') => Kind::Number,
            _ => return self.err("a value"),
        })
    }

    /// Whether only whitespace is left.
    pub fn at_end(&mut self) -> bool {
        self.ws();
        self.i == self.b.len()
    }

    fn literal(&mut self, word: &'static [u8], expected: &'static str) -> R<()> {
        if self.b[self.i..].starts_with(word) {
            self.i += word.len();
            Ok(())
        } else {
            self.err(expected)
        }
    }

    /// Consumes `null`.
    pub fn null(&mut self) -> R<()> {
        self.ws();
        self.literal(b"null", "null")
    }

    /// Consumes `true` or `false`.
    pub fn boolean(&mut self) -> R<bool> {
        self.ws();
        if self.b.get(self.i) == Some(&b't') {
            self.literal(b"true", "true").map(|_| true)
        } else {
            self.literal(b"false", "false").map(|_| false)
        }
    }

    /// Consumes a number and returns its text (JSON grammar checked).
    pub fn number(&mut self) -> R<&'a str> {
        self.ws();
        let start = self.i;
        let b = self.b;
        let digits = |mut j: usize| {
            while b.get(j).is_some_and(u8::is_ascii_digit) {
                j += 1;
            }
            j
        };
        let mut i = self.i;
        if b.get(i) == Some(&b'-') {
            i += 1;
        }
        match b.get(i) {
            Some(b'0') => i += 1,
            Some(b'1'..=b'9') => i = digits(i),
            _ => {
                self.i = i;
                return self.err("a digit");
            }
        }
        if b.get(i) == Some(&b'.') {
            let d = i + 1;
            i = digits(d);
            if i == d {
                self.i = i;
                return self.err("a digit after `.`");
            }
        }
        if matches!(b.get(i), Some(b'e' | b'E')) {
            let d = i + 1 + usize::from(matches!(b.get(i + 1), Some(b'+' | b'-')));
            i = digits(d);
            if i == d {
                self.i = i;
                return self.err("a digit in the exponent");
            }
        }
        self.i = i;
        Ok(&self.text[start..i])
    }

    /// Consumes a string. Without escapes it is borrowed from the record;
    /// with escapes it is decoded into `scratch`, which is returned.
    #[inline(always)]
    pub fn string<'s>(&mut self, scratch: &'s mut String) -> R<&'s str>
    where
        'a: 's,
    {
        // Inlined: most strings have no escape and follow their `:` or `,`
        // directly.
        if self.b.get(self.i) == Some(&b'"') {
            let start = self.i + 1;
            let end = special_byte(self.b, start);
            if self.b.get(end) == Some(&b'"') {
                self.i = end + 1;
                return Ok(&self.text[start..end]);
            }
        }
        self.string_general(scratch)
    }

    #[inline(never)]
    fn string_general<'s>(&mut self, scratch: &'s mut String) -> R<&'s str>
    where
        'a: 's,
    {
        self.ws();
        if self.b.get(self.i) != Some(&b'"') {
            return self.err("a string");
        }
        self.i += 1;
        let start = self.i;
        let end = special_byte(self.b, start);
        if self.b.get(end) == Some(&b'"') {
            self.i = end + 1;
            return Ok(&self.text[start..end]);
        }
        scratch.clear();
        scratch.push_str(&self.text[start..end]);
        self.decode_escaped(end, scratch)?;
        Ok(scratch.as_str())
    }

    fn decode_escaped(&mut self, start: usize, out: &mut String) -> R<()> {
        let mut i = start;
        let mut run = start;
        loop {
            let Some(&c) = self.b.get(i) else {
                self.i = i;
                return self.err("a closing `\"`");
            };
            match c {
                b'"' => {
                    out.push_str(&self.text[run..i]);
                    self.i = i + 1;
                    return Ok(());
                }
                b'\\' => {
                    out.push_str(&self.text[run..i]);
                    let esc = self.b.get(i + 1).copied();
                    i += 2;
                    match esc {
                        Some(b'"') => out.push('"'),
                        Some(b'\\') => out.push('\\'),
                        Some(b'/') => out.push('/'),
                        Some(b'b') => out.push('\u{8}'),
                        Some(b'f') => out.push('\u{c}'),
                        Some(b'n') => out.push('\n'),
                        Some(b'r') => out.push('\r'),
                        Some(b't') => out.push('\t'),
                        Some(b'u') => {
                            self.i = i;
                            let hi = self.hex4()?;
                            i = self.i;
                            let cp = if (0xD800..0xDC00).contains(&hi) {
                                if self.b.get(i) != Some(&b'\\') || self.b.get(i + 1) != Some(&b'u') {
                                    return self.err("a low surrogate after a high surrogate");
                                }
                                self.i = i + 2;
                                let lo = self.hex4()?;
                                i = self.i;
                                if !(0xDC00..0xE000).contains(&lo) {
                                    return self.err("a low surrogate");
                                }
                                0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00)
                            } else if (0xDC00..0xE000).contains(&hi) {
                                return self.err("a high surrogate before a low one");
                            } else {
                                hi
                            };
                            out.push(char::from_u32(cp).expect("valid code point"));
                        }
                        _ => {
                            self.i = i - 1;
                            return self.err("a valid escape");
                        }
                    }
                    run = i;
                }
                0..0x20 => {
                    self.i = i;
                    return self.err("no raw control characters in strings");
                }
                _ => i += 1,
            }
        }
    }

    fn hex4(&mut self) -> R<u32> {
        let Some(h) = self.b.get(self.i..self.i + 4) else { return self.err("4 hex digits") };
        let mut v = 0;
        for &c in h {
            let d = match c {
                b'0'..=b'9' => c - b'0',
                b'a'..=b'f' => c - b'a' + 10,
                b'A'..=b'F' => c - b'A' + 10,
                _ => return self.err("4 hex digits"),
            };
            v = v * 16 + u32::from(d);
        }
        self.i += 4;
        Ok(v)
    }

    /// Consumes a string without copying it; escapes are still checked.
    #[inline]
    fn skip_string(&mut self, scratch: &mut String) -> R<()> {
        let end = special_byte(self.b, self.i + 1);
        if self.b.get(end) == Some(&b'"') {
            self.i = end + 1;
            return Ok(());
        }
        self.string(scratch).map(|_| ())
    }

    /// Consumes the byte `open` (`{` or `[`), one level deeper.
    #[inline]
    fn open(&mut self, open: u8, expected: &'static str) -> R<()> {
        self.ws();
        if self.b.get(self.i) != Some(&open) {
            return self.err(expected);
        }
        if self.depth == MAX_DEPTH {
            return self.err(TOO_DEEP);
        }
        self.depth += 1;
        self.i += 1;
        Ok(())
    }

    /// Moves past the `,` before the next member of an object or array, or
    /// consumes its `close` byte and returns `false`. `first` is true right
    /// after the opening byte.
    #[inline]
    fn next_member(&mut self, first: bool, close: u8, expected: &'static str) -> R<bool> {
        self.ws();
        match self.b.get(self.i) {
            Some(&c) if c == close => {
                self.i += 1;
                self.depth = self.depth.saturating_sub(1);
                Ok(false)
            }
            Some(b',') if !first => {
                self.i += 1;
                Ok(true)
            }
            _ if first => Ok(true),
            _ => self.err(expected),
        }
    }

    /// Consumes a string without escapes, found with `memchr`: fast for long
    /// values such as base64 payloads. `None`, consuming nothing, when it has
    /// an escape. Control characters are not rejected: for values the caller
    /// validates itself (a base64 decoder rejects them).
    pub fn unescaped_string(&mut self) -> R<Option<&'a str>> {
        self.ws();
        if self.b.get(self.i) != Some(&b'"') {
            return self.err("a string");
        }
        let start = self.i + 1;
        match memchr::memchr2(b'"', b'\\', &self.b[start..]) {
            Some(n) if self.b[start + n] == b'"' => {
                self.i = start + n + 1;
                Ok(Some(&self.text[start..start + n]))
            }
            Some(_) => Ok(None),
            None => {
                self.i = self.b.len();
                self.err("`\"`")
            }
        }
    }

    /// Consumes `{`.
    pub fn object_start(&mut self) -> R<()> {
        self.open(b'{', "`{`")
    }

    /// Moves to the next key of an object (after `{` or a value): `false`
    /// at its closing `}`, which is consumed. `first` is true right after `{`.
    #[inline]
    pub fn next_field(&mut self, first: bool) -> R<bool> {
        self.next_member(first, b'}', "`,` or `}`")
    }

    /// Whether the next member of an object (after `{` or a value) starts
    /// with `token`'s key, written compactly; if so, up to its `:` is
    /// consumed. The fastest path for keys in their usual order: `false`
    /// says nothing, and the caller goes on with `next_field`.
    #[inline(always)]
    pub fn member_is(&mut self, key: &DeclaredKey, first: bool) -> bool {
        let Some(t) = key.member.get(usize::from(first)..).filter(|t| t.len() > 2) else {
            return false;
        };
        if self.b.get(self.i..self.i + t.len()).is_some_and(|here| short_eq(here, t)) {
            self.i += t.len();
            return true;
        }
        false
    }

    /// Which of `keys[next..]` (looking a few ahead: keys in order, some
    /// absent) the next member is, consumed as by `member_is`.
    #[inline(always)]
    fn member_among(&mut self, keys: &[DeclaredKey], next: usize, first: bool) -> Option<usize> {
        let ahead = keys.len().min(next + MEMBER_LOOKAHEAD);
        (next..ahead).find(|&j| self.member_is(&keys[j], first))
    }

    /// Moves to the next member of an object (after `{`, `first`, or a
    /// value) and reads its key, matched against the declared `keys`: first
    /// the compact members of the keys after the last one found (`next`),
    /// then the key after it written with spaces, then by name (an escaped
    /// key is decoded into `scratch`). `None` at the end of the object.
    #[inline(always)]
    pub fn next_declared<'s>(
        &mut self,
        keys: &[DeclaredKey],
        next: usize,
        first: bool,
        scratch: &'s mut String,
    ) -> R<Option<Member<'s>>>
    where
        'a: 's,
    {
        if let Some(i) = self.member_among(keys, next, first) {
            return Ok(Some(Member::Declared(i)));
        }
        if !self.next_field(first)? {
            return Ok(None);
        }
        if keys.get(next).is_some_and(|k| self.key_is(k.name.as_bytes())) {
            return Ok(Some(Member::Declared(next)));
        }
        let key = self.key(scratch)?;
        Ok(Some(match keys.iter().position(|k| short_eq(k.name.as_bytes(), key.as_bytes())) {
            Some(i) => Member::Declared(i),
            None => Member::Unknown(key),
        }))
    }

    /// Whether the key here is `name` written without escapes; if so it is
    /// consumed with its `:`. The fast path for keys in their usual order.
    #[inline]
    pub fn key_is(&mut self, name: &[u8]) -> bool {
        self.ws();
        let end = self.i + 1 + name.len();
        if self.b.get(self.i) != Some(&b'"') || self.b.get(end) != Some(&b'"') {
            return false;
        }
        if !short_eq(&self.b[self.i + 1..end], name) {
            return false;
        }
        let mut j = end + 1;
        while matches!(self.b.get(j), Some(b' ' | b'\n' | b'\r' | b'\t')) {
            j += 1;
        }
        if self.b.get(j) != Some(&b':') {
            return false;
        }
        self.i = j + 1;
        true
    }

    /// Reads the key here and its `:`.
    #[inline]
    pub fn key<'s>(&mut self, scratch: &'s mut String) -> R<&'s str>
    where
        'a: 's,
    {
        let key = self.string(scratch)?;
        self.ws();
        if self.b.get(self.i) != Some(&b':') {
            return self.err("`:`");
        }
        self.i += 1;
        Ok(key)
    }

    /// Reads the next key of an object (after `{` or a value), or `None` at
    /// its closing `}`. `first` is true right after `{`.
    #[inline]
    pub fn next_key<'s>(&mut self, first: bool, scratch: &'s mut String) -> R<Option<&'s str>>
    where
        'a: 's,
    {
        if self.next_field(first)? { self.key(scratch).map(Some) } else { Ok(None) }
    }

    /// Consumes `[`.
    pub fn array_start(&mut self) -> R<()> {
        self.open(b'[', "`[`")
    }

    /// Whether another element follows (consuming `,`), or the array ends
    /// (consuming `]`). `first` is true right after `[`.
    #[inline]
    pub fn next_element(&mut self, first: bool) -> R<bool> {
        self.next_member(first, b']', "`,` or `]`")
    }

    /// Skips one value of any kind, checking its syntax; returns its text.
    pub fn skip(&mut self) -> R<&'a str> {
        let kind = self.peek()?;
        let start = self.i;
        let mut scratch = String::new();
        match kind {
            Kind::Null => self.null()?,
            Kind::Bool => {
                self.boolean()?;
            }
            Kind::Number => {
                self.number()?;
            }
            Kind::String => self.skip_string(&mut scratch)?,
            Kind::Array => {
                self.array_start()?;
                let mut first = true;
                while self.next_element(first)? {
                    first = false;
                    self.skip()?;
                }
            }
            Kind::Object => {
                self.object_start()?;
                let mut first = true;
                while self.next_key(first, &mut scratch)?.is_some() {
                    first = false;
                    self.skip()?;
                }
            }
        }
        Ok(&self.text[start..self.i])
    }
}

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
fn find_top_level_fast<'a>(text: &'a str, key: &[u8]) -> Option<Option<&'a str>> {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn skip_all(s: &str) -> R<()> {
        let mut p = Parser::new(s);
        p.skip()?;
        if p.at_end() { Ok(()) } else { p.err("end of input") }
    }

    #[test]
    fn accepts_what_serde_json_accepts() {
        for s in [
            r#"{"a":[1,-2.5e+3,0.0,true,false,null,"x\"y\u00e9\ud83d\ude00"],"b":{}, "c" : [ ] }"#,
            "0",
            "-0",
            "1E5",
            "\"\"",
            "  [1 , 2]  ",
        ] {
            assert!(serde_json::from_str::<serde_json::Value>(s).is_ok());
            assert!(skip_all(s).is_ok(), "{s}");
        }
    }

    #[test]
    fn rejects_what_serde_json_rejects() {
        for s in [
            "{",
            "[1,]",
            "{\"a\" 1}",
            "01",
            "1.",
            "-",
            "1e",
            "tru",
            "\"\\x\"",
            "\"a\nb\"",
            "{\"a\":1,}",
            "[1 2]",
            "\"\\ud800\"",
            "\"abc",
            "{1:2}",
        ] {
            assert!(serde_json::from_str::<serde_json::Value>(s).is_err(), "{s}");
            assert!(skip_all(s).is_err(), "{s} was accepted");
        }
    }

    #[test]
    fn unescaped_strings_are_found_with_memchr_and_escaped_ones_left_to_string() {
        let mut p = Parser::new(r#"["QUJD+/==", "a\/b", "open"#);
        p.array_start().unwrap();
        assert!(p.next_element(true).unwrap());
        assert_eq!(p.unescaped_string().unwrap(), Some("QUJD+/=="));
        assert!(p.next_element(false).unwrap());
        assert_eq!(p.unescaped_string().unwrap(), None);
        assert_eq!(p.string(&mut String::new()).unwrap(), "a/b");
        assert!(p.next_element(false).unwrap());
        assert!(p.unescaped_string().is_err());
    }

    #[test]
    fn special_byte_and_short_eq() {
        for (s, want) in [("abcdefghij\"", 10), ("ab\\c", 2), ("abcdefgh\u{1}xyz", 8), ("plain", 5), ("", 0)] {
            assert_eq!(special_byte(s.as_bytes(), 0), want, "{s:?}");
        }
        assert_eq!(special_byte(b"\"0123456789abcdef\"", 1), 17);
        for (a, b) in
            [("ts", "ts"), ("event_id", "event_id"), ("session_id", "session_ie"), ("abcd", "abce"), ("x", "y")]
        {
            assert_eq!(short_eq(a.as_bytes(), b.as_bytes()), a == b, "{a} {b}");
        }
        assert!(!short_eq(b"abc", b"abcd"));
        let long = "a_rather_long_field_name";
        assert!(short_eq(long.as_bytes(), long.as_bytes()));
        // Every length, with a difference at every position.
        for n in 0..40usize {
            let a: Vec<u8> = (0..n as u8).collect();
            assert!(short_eq(&a, &a.clone()), "{n}");
            for at in 0..n {
                let mut b = a.clone();
                b[at] ^= 0x40;
                assert!(!short_eq(&a, &b), "length {n}, difference at {at}");
            }
        }
    }

    #[test]
    fn member_tokens_match_compact_keys_only() {
        let id = DeclaredKey::new("id");
        let mut p = Parser::new(r#"{"id":1,"id":2, "id":3,"idx":4}"#);
        p.object_start().unwrap();
        assert!(p.member_is(&id, true));
        assert_eq!(p.number().unwrap(), "1");
        assert!(!p.member_is(&id, true), "the first member has no comma");
        assert!(p.member_is(&id, false));
        assert_eq!(p.number().unwrap(), "2");
        assert!(!p.member_is(&id, false), "a space after the comma takes the general path");
        assert!(p.next_field(false).unwrap() && p.key_is(b"id"));
        assert_eq!(p.number().unwrap(), "3");
        assert!(!p.member_is(&id, false), "a longer key");
        let mut p = Parser::new(r#"{"a\"b":1}"#);
        p.object_start().unwrap();
        assert!(!p.member_is(&DeclaredKey::new("a\"b"), true), "escaped names never match");
    }

    #[test]
    fn special_byte_finds_every_byte_value_at_every_offset() {
        let reference = |b: &[u8], from: usize| {
            b[from..].iter().position(|&c| c == b'"' || c == b'\\' || c < 0x20).map_or(b.len(), |p| from + p)
        };
        for len in [1, 7, 8, 15, 16, 17, 31, 32, 40] {
            for at in 0..len {
                for byte in 0..=255u8 {
                    let mut b = vec![b'a'; len];
                    b[at] = byte;
                    for from in [0, 1, 3].into_iter().filter(|&f| f <= at) {
                        assert_eq!(special_byte(&b, from), reference(&b, from), "byte {byte:#x} at {at} of {len}");
                    }
                }
            }
        }
    }

    #[test]
    fn strings_decode_escapes() {
        let mut scratch = String::new();
        let mut p = Parser::new(r#""plain" "a\"b\\c\/\n\u00e9\ud83d\ude00""#);
        assert_eq!(p.string(&mut scratch).unwrap(), "plain");
        assert_eq!(p.string(&mut scratch).unwrap(), "a\"b\\c/\né😀");
    }

    #[test]
    fn find_path_walks_nested_objects() {
        let rec = r#"{"x":[1,{"ts":0}],"meta":{"a":"b","ts":"2024"},"ts":17}"#;
        assert_eq!(find_path(rec, &["ts".into()]).unwrap(), Some("17"));
        assert_eq!(find_path(rec, &["meta".into(), "ts".into()]).unwrap(), Some("\"2024\""));
        assert_eq!(find_path(rec, &["nope".into()]).unwrap(), None);
        assert_eq!(find_path(rec, &["x".into(), "ts".into()]).unwrap(), None);
        assert!(find_path(r#"{"a":[tru]}"#, &["b".into()]).is_err());
        // The fast path and the parser agree.
        for rec in [
            r#"{"a":"x","b":-1.5e3,"c":null,"ts":"t"}"#,
            r#"{ "a" : true , "ts" : 5 }"#,
            r#"{"a":1}"#,
            "{}",
            r#"{"ts":1,"a":2,"ts":3}"#,
        ] {
            let slow = {
                let mut p = Parser::new(rec);
                let mut scratch = String::new();
                p.object_start().unwrap();
                let mut found = None;
                let mut first = true;
                while let Some(k) = p.next_key(first, &mut scratch).unwrap() {
                    first = false;
                    let is_ts = k == "ts";
                    let v = p.skip().unwrap();
                    if is_ts {
                        found = Some(v);
                    }
                }
                found
            };
            assert_eq!(find_top_level_fast(rec, b"ts"), Some(slow), "{rec}");
        }
        assert_eq!(
            find_top_level_fast(r#"{"a":{"ts":1},"ts":2}"#, b"ts"),
            Some(Some("2")),
            "nested values are skipped"
        );
        assert_eq!(find_top_level_fast(r#"{"a":[1,{"b":"\u0074"}],"ts":2}"#, b"ts"), Some(Some("2")));
        assert_eq!(find_top_level_fast(r#"{"a":[1,2,"ts":2}"#, b"ts"), None, "broken values defer to the parser");
        assert_eq!(find_top_level_fast(r#"{"a":"\u0074","ts":2}"#, b"ts"), None, "escapes defer to the parser");
    }

    #[test]
    fn the_last_of_duplicate_keys_wins_at_every_level() {
        let path = |p: &str| p.split('.').map(str::to_string).collect::<Vec<_>>();
        for (rec, want) in [
            (r#"{"ts":1,"ts":2}"#, Some("2")),
            (r#"{"ts":1,"\u0074s":2}"#, Some("2")),
            (r#"{"\u0074s":1,"ts":2}"#, Some("2")),
            (r#"{"ts":1,"x":{},"ts":2}"#, Some("2")),
        ] {
            assert_eq!(find_path(rec, &path("ts")).unwrap(), want, "{rec}");
        }
        for (rec, want) in [
            (r#"{"meta":{"t":"A","t":"B"}}"#, Some("\"B\"")),
            (r#"{"meta":{"t":"A"},"meta":{"t":"B"}}"#, Some("\"B\"")),
            (r#"{"meta":{"t":"A"},"meta":{"x":1}}"#, None),
            (r#"{"meta":{"\u0074":"A","t":"B","\u0074":"C"}}"#, Some("\"C\"")),
        ] {
            assert_eq!(find_path(rec, &path("meta.t")).unwrap(), want, "{rec}");
        }
    }

    #[test]
    fn nesting_is_limited_on_every_path() {
        let deep = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
        assert!(skip_all(&deep(MAX_DEPTH)).is_ok());
        let err = skip_all(&deep(MAX_DEPTH + 1)).unwrap_err();
        assert!(err.is_too_deep() && err.to_string().contains("deeper than 128"), "{err}");
        // Closed or not, 20,000 levels fail fast without using the stack.
        for rec in [
            format!(r#"{{"event_id":"a","ts":"2024-03-15T01:00:00Z","x":{}"#, "[".repeat(20_000)),
            format!(r#"{{"x":{}}}"#, deep(20_000)),
            "{\"a\":".repeat(20_000),
        ] {
            assert!(skip_all(&rec).unwrap_err().is_too_deep());
            assert!(find_path(&rec, &["ts".to_string()]).unwrap_err().is_too_deep());
        }
        // Objects and arrays count alike; depth returns as they close.
        let ok = format!("[{},{}]", deep(MAX_DEPTH - 1), deep(MAX_DEPTH - 1));
        assert!(skip_all(&ok).is_ok());
        let mixed = format!("{}1{}", "{\"a\":[".repeat(64), "]}".repeat(64));
        assert!(skip_all(&mixed).is_ok(), "128 levels");
        assert!(skip_all(&format!("[{mixed}]")).unwrap_err().is_too_deep(), "129 levels");
    }

    proptest::proptest! {
        #[test]
        fn string_round_trip(s in proptest::prelude::any::<String>()) {
            let json = serde_json::to_string(&s).unwrap();
            let mut scratch = String::new();
            let mut p = Parser::new(&json);
            proptest::prop_assert_eq!(p.string(&mut scratch).unwrap(), s.as_str());
        }
    }
}
