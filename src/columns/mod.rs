//! Schema-driven column builders that coerce JSON values into Arrow arrays.
//!
//! Unlike Arrow's builders these can be truncated, so a record that fails
//! half-way (a bad value in its ninth column) is rolled back and sent whole to
//! the error output while the batch stays consistent.
//!
//! The parts: [`ColumnBuilder`], one per column, reading each value from the
//! parser (`builder`); the truncatable buffers it fills (`buffers`); turning
//! JSON numbers and strings into integers, floats and exact decimals
//! (`numbers`); the per-record state for fields the schema does not list
//! (`context`); and what a value that does not fit is (`error`).

mod buffers;
mod builder;
mod context;
mod error;
mod numbers;

pub use buffers::{Prim, Utf8, Validity};
pub use builder::ColumnBuilder;
pub use context::RecordContext;
pub use error::{CoerceError, DecodeError};
pub use numbers::parse_decimal;

#[cfg(test)]
mod tests;
