//! A small pull parser over one JSON record, used to decode records straight
//! into column builders without building a document tree first (the tree was
//! most of the cost of conversion). The caller validates UTF-8 once per
//! record, so strings are handed out as `&str` slices when they have no
//! escapes.
//!
//! The parts: [`Parser`] itself (`parser`), its byte scans (`scan`), the
//! keys a schema declares and how a member matches one (`keys`), finding a
//! value by its dotted path without the parser where it can (`path`), and the
//! syntax error with the nesting limit (`error`).

mod error;
mod keys;
mod parser;
mod path;
mod scan;

pub use error::{MAX_DEPTH, SyntaxError};
pub use keys::{DeclaredKey, Member};
pub use parser::{Kind, Parser};
pub use path::find_path;
pub use scan::short_eq;

#[cfg(test)]
mod tests;
