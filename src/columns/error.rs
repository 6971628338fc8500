//! What goes wrong while a record is decoded into columns: a syntax error,
//! or a value that does not fit its column (with the field's dotted path,
//! built up as the error unwinds through nested builders).

use crate::json::{Parser, SyntaxError};
use crate::schema::HiveType;

/// A value that does not fit its column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CoerceError {
    /// The value has the wrong type or is out of range.
    Mismatch {
        /// Dotted path of the field (`device.version`, `tags[]`).
        path: String,
        /// The column type.
        expected: String,
        /// The value, shortened, and why it was rejected.
        found: String,
    },
    /// A field not in the schema under the `error` policy.
    Unknown {
        /// Dotted path of the field.
        path: String,
    },
}

impl CoerceError {
    /// Prefixes the field path with its parent's name as the error unwinds.
    pub fn under(mut self, parent: &str) -> Self {
        let path = match &mut self {
            CoerceError::Mismatch { path, .. } | CoerceError::Unknown { path } => path,
        };
        *path = if path.is_empty() {
            parent.to_string()
        } else if path.starts_with('[') {
            format!("{parent}{path}")
        } else {
            format!("{parent}.{path}")
        };
        self
    }

    /// The dotted field path.
    pub fn path(&self) -> &str {
        match self {
            CoerceError::Mismatch { path, .. } | CoerceError::Unknown { path } => path,
        }
    }
}

/// A syntax error or a coercion error while decoding a record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// The record is not valid JSON.
    Syntax(SyntaxError),
    /// A value does not fit its column.
    Coerce(CoerceError),
}

impl From<SyntaxError> for DecodeError {
    fn from(e: SyntaxError) -> Self {
        DecodeError::Syntax(e)
    }
}

impl From<CoerceError> for DecodeError {
    fn from(e: CoerceError) -> Self {
        DecodeError::Coerce(e)
    }
}

impl DecodeError {
    /// Prefixes a coercion error's path with its parent's name.
    pub fn under(self, parent: &str) -> Self {
        match self {
            DecodeError::Coerce(c) => DecodeError::Coerce(c.under(parent)),
            s => s,
        }
    }
}

/// A mismatch error quoting the value that starts at `start` (consumed or not).
pub(super) fn mismatch(ty: &HiveType, p: &mut Parser<'_>, start: usize, why: &str) -> CoerceError {
    let text = if p.offset() > start { p.slice(start, p.offset()) } else { p.skip().unwrap_or("(invalid JSON)") };
    let mut found = text.to_string();
    if found.len() > 60 {
        found.truncate(found.floor_char_boundary(57));
        found.push_str("...");
    }
    if !why.is_empty() {
        found = format!("{found} ({why})");
    }
    CoerceError::Mismatch { path: String::new(), expected: ty.to_string(), found }
}
