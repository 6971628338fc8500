//! A Kinesis sequence number, with the order Kinesis gives it.

use std::cmp::Ordering;
use std::fmt;
use std::ops::Deref;

use serde::{Deserialize, Serialize};

/// A record's position in its shard: a decimal string of up to 128 digits
/// without leading zeros, so it orders by length, then lexically (never as
/// plain strings: "9" < "10"). Stored as the string Kinesis gave.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SequenceNumber(String);

impl SequenceNumber {
    /// The order of two sequence numbers as Kinesis gives them.
    pub fn compare(a: &str, b: &str) -> Ordering {
        a.len().cmp(&b.len()).then_with(|| a.cmp(b))
    }
}

impl Ord for SequenceNumber {
    fn cmp(&self, other: &Self) -> Ordering {
        SequenceNumber::compare(&self.0, &other.0)
    }
}

impl PartialOrd for SequenceNumber {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Deref for SequenceNumber {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SequenceNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for SequenceNumber {
    fn from(s: &str) -> Self {
        SequenceNumber(s.to_string())
    }
}

impl From<String> for SequenceNumber {
    fn from(s: String) -> Self {
        SequenceNumber(s)
    }
}

impl From<&SequenceNumber> for String {
    fn from(s: &SequenceNumber) -> Self {
        s.0.clone()
    }
}

impl From<SequenceNumber> for String {
    fn from(s: SequenceNumber) -> Self {
        s.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequence_numbers_order_by_value_not_by_text() {
        let n = |s: &str| SequenceNumber::from(s);
        assert!(n("9") < n("10"));
        assert!(
            n("49590338271490256608559692538361571095921575989136588898")
                > n("4959033827149025660855969253836157109592157598913658889")
        );
        assert_eq!(n("12").cmp(&n("12")), Ordering::Equal);
        assert_eq!(serde_json::to_string(&n("123")).unwrap(), "\"123\"", "stored as the string");
    }
}
