//! Unit tests of the column builders: validity bits, coercion of every
//! type, exact decimals, nested values, rollback and unknown fields.

use super::*;
use arrow_array::cast::AsArray;
use arrow_array::types::{Decimal128Type, Int32Type, Int64Type, TimestampMillisecondType};
use arrow_array::{Array, ArrayRef};

use crate::json::Parser;
use crate::schema::{HiveType, UnknownFieldPolicy};

proptest::proptest! {
    /// Appends and truncations against a `Vec<bool>`, across word
    /// boundaries, then the null buffer Arrow gets.
    #[test]
    fn validity_matches_a_vector_of_bools(ops in proptest::collection::vec((proptest::bool::ANY, 0usize..150), 1..40)) {
        let mut v = Validity::default();
        let mut model: Vec<bool> = Vec::new();
        for (valid, n) in ops {
            if n < 20 {
                let len = model.len().saturating_sub(n);
                v.truncate(len);
                model.truncate(len);
            } else {
                for i in 0..n {
                    let bit = valid ^ (i % 3 == 0);
                    if bit { v.append_non_null() } else { v.append_null() }
                    model.push(bit);
                }
            }
            proptest::prop_assert_eq!(v.len(), model.len());
            for (i, &bit) in model.iter().enumerate() {
                proptest::prop_assert_eq!(v.is_valid(i), bit);
            }
        }
        let nulls = v.finish();
        proptest::prop_assert!(v.is_empty());
        match nulls {
            None => proptest::prop_assert!(model.iter().all(|&b| b)),
            Some(n) => {
                proptest::prop_assert_eq!(n.len(), model.len());
                proptest::prop_assert_eq!(n.null_count(), model.iter().filter(|&&b| !b).count());
                for (i, &bit) in model.iter().enumerate() {
                    proptest::prop_assert_eq!(n.is_valid(i), bit);
                }
            }
        }
    }
}

fn build(ty: &str, values: &[&str]) -> (ArrayRef, Vec<Option<CoerceError>>) {
    let ty: HiveType = ty.parse().unwrap();
    let mut b = ColumnBuilder::new(&ty, "c");
    let mut ctx = RecordContext::new(UnknownFieldPolicy::Keep);
    let mut errs = Vec::new();
    for s in values {
        let len = b.len();
        let r = b.push(&mut Parser::new(s), &mut ctx);
        if r.is_err() {
            b.truncate(len);
        }
        errs.push(r.err().map(|e| match e {
            DecodeError::Coerce(c) => c,
            DecodeError::Syntax(s) => panic!("{s}"),
        }));
    }
    (b.finish(), errs)
}

#[test]
fn coerces_scalars() {
    let (a, e) = build("bigint", &["1", "2.0", "\"3\"", "null", "2.5", "true"]);
    assert_eq!(a.len(), 4);
    assert_eq!(a.as_primitive::<Int64Type>().values().as_ref(), &[1, 2, 3, 0]);
    assert!(a.is_null(3));
    assert!(e[4].is_some() && e[5].is_some());
    let (_, e) = build("int", &["3000000000"]);
    assert!(matches!(&e[0], Some(CoerceError::Mismatch { found, .. }) if found.contains("out of range")));
    let (a, _) = build("string", &["\"x\"", "12", "true", "{\"a\":1}"]);
    let s = a.as_string::<i32>();
    assert_eq!((s.value(1), s.value(2), s.value(3)), ("12", "true", "{\"a\":1}"));
    let (a, _) = build("timestamp", &["\"2024-03-15T07:12:01.123Z\"", "1710486721", "1710486721123"]);
    let t = a.as_primitive::<TimestampMillisecondType>();
    assert_eq!(t.values().as_ref(), &[1_710_486_721_123, 1_710_486_721_000, 1_710_486_721_123]);
    let (a, e) = build("boolean", &["true", "\"FALSE\"", "1"]);
    assert_eq!(a.len(), 2);
    assert!(e[2].is_some());
    // JSON has no infinity: values out of range are refused, not stored as inf.
    let (a, e) = build("double", &["1e308", "1e400", "-1e400", "\"inf\"", "\"NaN\""]);
    assert_eq!(a.len(), 1);
    assert!(
        e[1..].iter().all(|e| matches!(e, Some(CoerceError::Mismatch { found, .. }) if found.contains("out of range")))
    );
    let (a, e) = build("float", &["3.4e38", "1e39"]);
    assert_eq!(a.len(), 1);
    assert!(e[1].is_some());
}

#[test]
fn decimals_are_exact() {
    assert_eq!(parse_decimal("12.34", 10, 2), Ok(1234));
    assert_eq!(parse_decimal("-0.5", 10, 2), Ok(-50));
    assert_eq!(parse_decimal("1e3", 10, 2), Ok(100_000));
    assert_eq!(parse_decimal("12.340", 10, 2), Ok(1234));
    assert!(parse_decimal("12.345", 10, 2).is_err());
    assert!(parse_decimal("123456789", 8, 0).is_err());
    assert!(parse_decimal("abc", 8, 0).is_err());
    assert_eq!(parse_decimal("0.000e2000000000", 10, 2), Ok(0));
    assert_eq!(parse_decimal("10e-1", 10, 0), Ok(1));
    assert_eq!(parse_decimal("-1.50E+1", 10, 2), Ok(-1500));
    assert_eq!(parse_decimal("99999999999999999999999999999999999999", 38, 0), Ok(10i128.pow(38) - 1));
    // Huge exponents cost nothing: refused by counting digits, never by building them.
    for (text, why) in [
        ("1e2000000000", "precision"),
        ("1e99999999999999999999999999", "precision"),
        ("1e-2000000000", "scale"),
        ("1e-99999999999999999999999999", "scale"),
    ] {
        let started = std::time::Instant::now();
        assert!(parse_decimal(text, 10, 2).unwrap_err().contains(why), "{text}");
        assert!(started.elapsed() < std::time::Duration::from_secs(1), "{text}");
    }
    assert!(parse_decimal("1e", 10, 2).is_err() && parse_decimal("1e+", 10, 2).is_err());
    let (a, _) = build("decimal(10,2)", &["19.99", "\"0.01\""]);
    assert_eq!(a.as_primitive::<Decimal128Type>().values().as_ref(), &[1999, 1]);
}

#[test]
fn nested_values_and_rollback() {
    let (a, e) = build(
        "array<struct<a:int,b:map<string,bigint>>>",
        &[r#"[{"a":1,"b":{"x":1,"y":2}},null]"#, r#"[{"a":2},{"a":"bad"}]"#, r#"[{"a":3,"b":{"z":3}}]"#],
    );
    assert_eq!(a.len(), 2, "the bad row is rolled back whole");
    let err = e[1].as_ref().unwrap();
    assert_eq!(err.path(), "[].a");
    let list = a.as_list::<i32>();
    assert_eq!(list.value_offsets(), &[0, 2, 3]);
    let items = list.values().as_struct();
    assert_eq!(items.column(0).as_primitive::<Int32Type>().values().as_ref(), &[1, 0, 3]);
    assert!(items.is_null(1));
    let maps = items.column(1).as_map();
    assert_eq!(maps.value_offsets(), &[0, 2, 2, 3]);
}

#[test]
fn unknown_nested_fields_follow_the_policy() {
    let ty: HiveType = "struct<a:int>".parse().unwrap();
    let v = r#"{"a":1,"b":[true]}"#;
    let mut keep = RecordContext::new(UnknownFieldPolicy::Keep);
    ColumnBuilder::new(&ty, "dev").push(&mut Parser::new(v), &mut keep).unwrap();
    assert_eq!(keep.extra, r#"{"dev.b":[true]"#);
    let mut err = RecordContext::new(UnknownFieldPolicy::Error);
    let DecodeError::Coerce(e) = ColumnBuilder::new(&ty, "dev").push(&mut Parser::new(v), &mut err).unwrap_err() else {
        panic!("expected a coercion error")
    };
    assert_eq!(e.under("dev"), CoerceError::Unknown { path: "dev.b".into() });
    let mut drop = RecordContext::new(UnknownFieldPolicy::Drop);
    ColumnBuilder::new(&ty, "dev").push(&mut Parser::new(v), &mut drop).unwrap();
    assert_eq!(drop.dropped_fields, 1);
}
