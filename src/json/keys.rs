//! Keys an object is declared to have (schema columns, struct fields), kept
//! in the compact form records usually write them, so that the parser can
//! match a whole member (`,"name":`) in one comparison.

use super::scan::special_byte;

/// A key an object is declared to have (a schema column or struct field):
/// its name, and its member as compact JSON writes it, `,"name":`, so that
/// the separator, the key and the colon of the expected next member are
/// matched in one comparison (`Parser::member_is`).
#[derive(Debug, Clone)]
pub struct DeclaredKey {
    pub(super) name: Box<str>,
    pub(super) member: Box<[u8]>,
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

/// The next member of an object, as [`Parser::next_declared`](super::Parser::next_declared) finds it.
#[derive(Debug, PartialEq)]
pub enum Member<'s> {
    /// The declared key at this index; the parser is at its value.
    Declared(usize),
    /// A key that is not declared; the parser is at its value.
    Unknown(&'s str),
}
