//! The pull parser: [`Parser`] steps through one record value by value,
//! checking the JSON grammar and the nesting limit as it goes; the caller
//! asks for what it expects next (a key, a string, a number) and reads it.

use super::error::{MAX_DEPTH, R, SyntaxError, TOO_DEEP};
use super::keys::{DeclaredKey, Member};
use super::scan::{short_eq, special_byte};

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

impl<'a> Parser<'a> {
    /// A parser at the start of `text`.
    pub fn new(text: &'a str) -> Self {
        Self::at(text, 0)
    }

    /// A parser at byte `offset` of `text`, as if at the top level (its depth
    /// counts from there).
    pub(super) fn at(text: &'a str, offset: usize) -> Self {
        Parser { text, b: text.as_bytes(), i: offset, depth: 0 }
    }

    pub(super) fn err<T>(&self, expected: &'static str) -> R<T> {
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
