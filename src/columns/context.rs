//! Per-record state shared by every builder: fields the schema does not
//! list, handled once by the unknown-field policy (an error, dropped, or kept
//! under their dotted path for `_extra`).

use super::error::{CoerceError, DecodeError};
use crate::json::Parser;
use crate::schema::UnknownFieldPolicy;

/// Per-record state shared by all builders: the unknown-field policy and the
/// unknown fields collected for `_extra`.
#[derive(Debug)]
pub struct RecordContext {
    /// What to do with fields the schema does not list.
    pub policy: UnknownFieldPolicy,
    /// JSON object text of the unknown fields of the current record, under
    /// their dotted paths, when the policy is `keep`.
    pub extra: String,
    /// Unknown fields dropped under the `drop` policy (running total).
    pub dropped_fields: u64,
}

impl RecordContext {
    /// A context for `policy`.
    pub fn new(policy: UnknownFieldPolicy) -> Self {
        RecordContext { policy, extra: String::new(), dropped_fields: 0 }
    }

    /// Handles a field the schema does not list, at `prefix` + `key`: reads
    /// past its value (the parser is at it) and applies the policy.
    pub fn unknown(&mut self, p: &mut Parser<'_>, prefix: &str, key: &str) -> Result<(), DecodeError> {
        let raw = p.skip()?;
        match self.policy {
            // The path grows with the parents' names as the error unwinds.
            UnknownFieldPolicy::Error => return Err(CoerceError::Unknown { path: key.to_string() }.into()),
            UnknownFieldPolicy::Drop => self.dropped_fields += 1,
            UnknownFieldPolicy::Keep | UnknownFieldPolicy::Evolve => {
                self.extra.push(if self.extra.is_empty() { '{' } else { ',' });
                self.extra.push_str(&serde_json::to_string(&join_path(prefix, key)).expect("strings serialize"));
                self.extra.push(':');
                self.extra.push_str(raw);
            }
        }
        Ok(())
    }
}

pub(super) fn join_path(parent: &str, key: &str) -> String {
    if parent.is_empty() { key.to_string() } else { format!("{parent}.{key}") }
}
