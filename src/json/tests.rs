//! Unit tests of the JSON pull parser: what it accepts and rejects (as
//! serde_json does), its byte scans, declared keys and path lookups.

use super::error::R;
use super::path::find_top_level_fast;
use super::scan::special_byte;
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
    for (a, b) in [("ts", "ts"), ("event_id", "event_id"), ("session_id", "session_ie"), ("abcd", "abce"), ("x", "y")] {
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
    assert_eq!(find_top_level_fast(r#"{"a":{"ts":1},"ts":2}"#, b"ts"), Some(Some("2")), "nested values are skipped");
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
