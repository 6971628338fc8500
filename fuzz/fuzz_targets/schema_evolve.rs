//! Additive schema evolution on fuzzed JSON Lines, each line one Kinesis
//! record. Invariants: the columns a watch proposes are new (ignoring case),
//! validly named and nullable, and the next version validates and survives
//! its TOML round trip; the record that asked for them, watched again under
//! the new version, asks for nothing (the reader relies on it to move on);
//! and decoded with the new version, no error of that record names a new
//! column (its type came from that very value). The quick key scan finds
//! the same new fields as a full parse. Some lines are watched with the
//! window closed (`evolve_interval`), so deferred fields ride along with a
//! later record's; no proposed type is longer than the cap.

#![no_main]

use libfuzzer_sys::fuzz_target;
use shardlake::partition::TimeSource;
use shardlake::schema::{
    FieldWatch, MAX_COLUMN_TYPE_CHARS, Schema, UnknownFieldPolicy, valid_column_name, with_columns,
};
use shardlake_fuzz::{T0, check_outputs, run_pipeline, spec};

/// Lines per input at most.
const MAX_LINES: usize = 64;

const START: &str = "[[columns]]\nname = \"id\"\ntype = \"string\"\n[[columns]]\nname = \"n\"\ntype = \"bigint\"\n";

fuzz_target!(|data: &[u8]| {
    let Some((&first, data)) = data.split_first() else { return };
    let min_records = u64::from(first % 3) + 1;
    // 0: the window is always open; n: every line but each (n+1)-th is closed.
    let closed = usize::from(first >> 2) % 4;
    let keys = ["region".to_string()];
    let mut schema = Schema::parse(START, false).unwrap();
    let mut watch = FieldWatch::new(&schema, &keys, min_records);
    for (i, line) in data.split(|&b| b == b'\n').take(MAX_LINES).enumerate() {
        watch.set_open(closed == 0 || i % (closed + 1) == 0);
        if let Ok(text) = std::str::from_utf8(line) {
            let (quick, full) = (watch.candidate_names(text, true), watch.candidate_names(text, false));
            assert_eq!(quick, full, "the quick scan and the full parse disagree");
        }
        let columns = watch.observe(&[line]);
        if columns.is_empty() {
            continue;
        }
        for c in &columns {
            assert!(valid_column_name(&c.name), "proposed `{}`", c.name);
            assert!(!c.required, "`{}` is required", c.name);
            assert!(c.ty.to_string().len() <= MAX_COLUMN_TYPE_CHARS, "`{}` has a type over the cap", c.name);
            assert!(c.name != "region", "a partition key became a column");
            assert!(!schema.columns.iter().any(|o| o.name.eq_ignore_ascii_case(&c.name)), "`{}` exists", c.name);
        }
        let next = with_columns(&schema, &columns);
        assert_eq!(next.columns.len(), schema.columns.len() + columns.len(), "{columns:?}");
        next.validate().unwrap_or_else(|e| panic!("next version does not validate: {e}"));
        let toml = next.to_toml();
        assert_eq!(Schema::parse(&toml, false).as_ref(), Ok(&next), "TOML round trip:\n{toml}");
        watch = FieldWatch::new(&next, &keys, min_records);
        let again = watch.observe(&[line]);
        assert!(again.is_empty(), "the record asks again under the new version: {again:?}");

        let spec = spec(next.clone(), "region=!{field:region}/", TimeSource::Arrival, UnknownFieldPolicy::Evolve);
        let (stats, outputs) = run_pipeline(spec, &[line], Some(T0));
        let fates = check_outputs(&[line], &stats, &outputs, 1);
        if let Some((kind, message)) = fates.errors.get(&1) {
            for c in &columns {
                let named = [":", ".", "["].iter().any(|sep| message.starts_with(&format!("{}{sep}", c.name)));
                assert!(!named, "the new column `{}` ({}) refuses its own value: {} {message}", c.name, c.ty, kind.as_str());
            }
        }
        schema = next;
    }
});
