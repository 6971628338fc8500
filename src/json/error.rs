//! The one error of JSON parsing, a syntax error at a byte offset, and the
//! nesting limit that bounds the stack every recursion over a record uses
//! (a record nested deeper is a syntax error of its own kind).

use std::fmt;

/// How deeply arrays and objects may nest in a record (the record itself is
/// level 1), as in serde_json. Every recursion over a record's values (the
/// parser's skip, the column builders, `_extra`, schema inference) is driven
/// by the parser's opening brackets, so this one limit bounds the stack they
/// use; a record nested deeper goes to the error output as `too_deep`.
pub const MAX_DEPTH: usize = 128;

/// What [`SyntaxError::expected`] says when a record nests deeper than
/// [`MAX_DEPTH`].
pub(super) const TOO_DEEP: &str = "at most 128 levels of nested arrays and objects (MAX_DEPTH)";

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

/// What the parser's steps return.
pub(super) type R<T> = Result<T, SyntaxError>;
